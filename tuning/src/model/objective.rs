//! Comparison of two predictions under the configured [`Objective`].
//!
//! [`improvement`] returns how much better a candidate is than the current setting, as a
//! fraction (0.1 = 10% better, negative = worse), which the hysteresis compares with its
//! margin.

use super::Prediction;
use crate::config::Objective;

/// How much the cost of a setting that cannot keep up with the arrival rate is inflated,
/// so that any setting that keeps up ranks ahead of it.
pub const INFEASIBLE_PENALTY: f64 = 1e3;

/// Returns the latency objective's cost of `prediction`: lower is better.
///
/// A setting whose capacity is below the arrival rate plus headroom costs
/// [`INFEASIBLE_PENALTY`] × its p99 × the shortfall. A setting that meets the p99 target
/// costs at most the target: 0.9 × target × (arrival rate / capacity) + 0.1 × p99, so more
/// headroom wins and p99 breaks ties at low load. Otherwise the cost is the p99.
pub fn latency_cost(
    prediction: &Prediction,
    arrival_rate_per_second: f64,
    headroom: f64,
    p99_target_micros: f64,
) -> f64 {
    let target = p99_target_micros.max(1.0);
    let p99 = prediction.p99_micros.max(1.0);
    let capacity = prediction.capacity_per_second.max(1e-9);
    let rate = arrival_rate_per_second.max(0.0);
    let needed = rate * (1.0 + headroom);
    if capacity < needed {
        return INFEASIBLE_PENALTY * p99.max(target) * (needed / capacity);
    }
    if p99 <= target {
        return 0.9 * target * (rate / capacity) + 0.1 * p99;
    }
    p99
}

/// Returns the relative improvement of `candidate` over `current` under `objective`.
///
/// For the throughput objective, a capacity gain or loss beyond `margin` decides; within
/// the margin the p99 decides.
pub fn improvement(
    objective: Objective,
    current: &Prediction,
    candidate: &Prediction,
    arrival_rate_per_second: f64,
    headroom: f64,
    margin: f64,
) -> f64 {
    let value = match objective {
        Objective::Latency { p99_target_micros } => {
            let target = p99_target_micros as f64;
            let now = latency_cost(current, arrival_rate_per_second, headroom, target);
            let next = latency_cost(candidate, arrival_rate_per_second, headroom, target);
            1.0 - next / now.max(1e-12)
        }
        Objective::Throughput => {
            let now = current.capacity_per_second.max(1e-9);
            let next = candidate.capacity_per_second.max(1e-9);
            let gain = next / now - 1.0;
            let loss = now / next - 1.0;
            if gain > margin {
                gain
            } else if loss > margin {
                -loss
            } else {
                1.0 - candidate.p99_micros.max(1.0) / current.p99_micros.max(1.0)
            }
        }
    };
    if value.is_finite() { value } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(p99: f64, capacity: f64) -> Prediction {
        Prediction {
            p50_micros: p99 / 2.0,
            p99_micros: p99,
            throughput_per_second: capacity.min(1_000.0),
            capacity_per_second: capacity,
        }
    }

    #[test]
    fn keeping_up_beats_lower_p99() {
        let slow_but_enough = prediction(5_000.0, 2_000.0);
        let fast_but_short = prediction(500.0, 900.0);
        let objective = Objective::Latency {
            p99_target_micros: 1_000,
        };
        let gain = improvement(
            objective,
            &fast_but_short,
            &slow_but_enough,
            1_000.0,
            0.1,
            0.1,
        );
        assert!(gain > 0.9, "{gain}");
    }

    #[test]
    fn within_target_more_headroom_wins() {
        let objective = Objective::Latency {
            p99_target_micros: 1_000,
        };
        let tight = prediction(800.0, 1_200.0);
        let roomy = prediction(900.0, 10_000.0);
        assert!(improvement(objective, &tight, &roomy, 1_000.0, 0.1, 0.1) > 0.0);
    }

    #[test]
    fn throughput_uses_p99_within_margin() {
        let a = prediction(1_000.0, 10_000.0);
        let b = prediction(500.0, 10_500.0);
        let gain = improvement(Objective::Throughput, &a, &b, 1_000.0, 0.1, 0.1);
        assert!((gain - 0.5).abs() < 1e-9, "{gain}");
        let bigger = prediction(5_000.0, 20_000.0);
        assert!(improvement(Objective::Throughput, &a, &bigger, 1_000.0, 0.1, 0.1) > 0.9);
    }
}
