//! The analytic queueing prior: what an arm should do at a given load before any
//! measurement of that arm exists.
//!
//! The leader forms a batch, makes it durable with one fdatasync and replicates it. The
//! batch commits after one round `S = f + r`, where `f` is the fdatasync latency and `r`
//! the round-trip time to the quorum's slowest needed follower. Each follower's own
//! fdatasync is inside its round trip. With `K` AppendEntries in flight and a batch limit
//! `B`, the prior models:
//!
//! - **Batch size** `n = clamp(max(1 + λL, λS/K), 1, B)`: linger `L` collects `λL` more
//!   entries, and when every pipeline slot is busy, entries accumulate for `S/K`.
//! - **Utilisation** `ρ = max(λf/n, λS/(KB))`: fdatasyncs on one device run one at a time,
//!   so the device is busy `λf/n` of the time, and the pipeline saturates when even full
//!   batches cannot keep up.
//! - **Waiting**: the first entry of a batch waits `min(L, (B − 1)/λ)` for the batch to
//!   fill, an entry waits for a free slot with probability `min(1, λS/K)` for `S/K`, and
//!   the device queue adds Kingman's G/G/1 approximation
//!   `W = ρ/(1 − ρ) · (c_a² + c_s²)/2 · f`, with the arrival index of dispersion as `c_a²`
//!   (formula as given in <https://hossfeld.github.io/performance-modeling/chapter5_nonmarkovianSystems/ch5-6-KingmanApproximation.html>).
//! - **Latency**: p50 = half the fill and slot waits + `S` + 0.7 W, and p99 = the full
//!   waits + `S` × the observed fdatasync p99/p50 ratio + ln(100) W, treating the queueing
//!   delay's tail as exponential.
//! - **Capacity** `min(KB/S, B/f)` entries per microsecond.
//!
//! At `ρ ≥` [`SATURATION_UTILISATION`] the queue grows without bound within an interval,
//! so latency is set to [`SATURATION_PENALTY`] × (S + L) × ρ, which ranks every saturated
//! arm behind every stable one. The prior is deliberately simple: per-byte fdatasync cost,
//! CPU cost and tail shape are left to the learned residuals in [`crate::model`].

use super::grid::ArmSetting;
use super::{Load, Prediction};

/// The utilisation from which an arm counts as saturated.
pub const SATURATION_UTILISATION: f64 = 0.98;

/// The latency multiplier for a saturated arm.
pub const SATURATION_PENALTY: f64 = 100.0;

/// The largest latency or rate the model produces, so that costs stay finite.
pub const VALUE_MAX: f64 = 1e15;

/// The squared coefficient of variation assumed for fdatasync service times.
const SERVICE_SCV: f64 = 0.5;

/// The system costs measured so far, smoothed across intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SystemEstimate {
    /// Median fdatasync latency.
    pub fsync_micros: f64,
    /// fdatasync p99 divided by p50, at least 1.
    pub fsync_tail_ratio: f64,
    /// Median round trip to the follower that completes a quorum.
    pub quorum_rtt_micros: f64,
}

impl Default for SystemEstimate {
    /// Returns a guess for a local NVMe device and a LAN: used only before any sample.
    fn default() -> Self {
        Self {
            fsync_micros: 200.0,
            fsync_tail_ratio: 2.0,
            quorum_rtt_micros: 100.0,
        }
    }
}

fn finite_in(value: f64, low: f64, high: f64) -> f64 {
    if value.is_nan() {
        low
    } else {
        value.clamp(low, high)
    }
}

/// Returns the prior prediction for `setting` at `load`.
pub fn predict(setting: ArmSetting, load: Load, system: &SystemEstimate) -> Prediction {
    let lambda = finite_in(load.arrival_rate_per_second / 1e6, 0.0, VALUE_MAX);
    let dispersion = finite_in(load.dispersion, 0.0, 1e6);
    let linger = setting.linger_micros as f64;
    let batch_max = (setting.batch_entries_max as f64).max(1.0);
    let inflight = (setting.inflight_appends_max as f64).max(1.0);
    let fsync = finite_in(system.fsync_micros, 1.0, VALUE_MAX);
    let round = fsync + finite_in(system.quorum_rtt_micros, 0.0, VALUE_MAX);
    let tail = finite_in(system.fsync_tail_ratio, 1.0, 20.0);

    let batch = (1.0 + lambda * linger)
        .max(lambda * round / inflight)
        .clamp(1.0, batch_max);
    let device_utilisation = lambda * fsync / batch;
    let pipeline_utilisation = lambda * round / (inflight * batch_max);
    let utilisation = device_utilisation.max(pipeline_utilisation);
    let capacity = (inflight * batch_max / round).min(batch_max / fsync);
    let capacity_per_second = finite_in(capacity * 1e6, 0.0, VALUE_MAX);
    let throughput_per_second =
        finite_in(load.arrival_rate_per_second, 0.0, VALUE_MAX).min(capacity_per_second);

    if utilisation >= SATURATION_UTILISATION {
        let latency = finite_in(
            SATURATION_PENALTY * (round + linger) * utilisation,
            1.0,
            VALUE_MAX,
        );
        return Prediction {
            p50_micros: latency,
            p99_micros: latency,
            throughput_per_second,
            capacity_per_second,
        };
    }

    let fill_wait = if lambda > 0.0 {
        linger.min((batch_max - 1.0) / lambda)
    } else {
        linger
    };
    let slot_wait = (lambda * round / inflight).min(1.0) * round / inflight;
    let queue_wait = utilisation / (1.0 - utilisation) * (dispersion + SERVICE_SCV) / 2.0 * fsync;
    let p50 = 0.5 * fill_wait + 0.5 * slot_wait + round + 0.7 * queue_wait;
    let p99 = fill_wait + slot_wait + round * tail + 100f64.ln() * queue_wait;
    Prediction {
        p50_micros: finite_in(p50, 1.0, VALUE_MAX),
        p99_micros: finite_in(p99, 1.0, VALUE_MAX),
        throughput_per_second,
        capacity_per_second,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(linger: u64, batch: u64, inflight: u64) -> ArmSetting {
        ArmSetting {
            linger_micros: linger,
            batch_entries_max: batch,
            inflight_appends_max: inflight,
        }
    }

    fn load(rate: f64) -> Load {
        Load {
            arrival_rate_per_second: rate,
            dispersion: 1.0,
        }
    }

    #[test]
    fn low_load_prefers_no_linger() {
        let system = SystemEstimate::default();
        let eager = predict(setting(0, 64, 4), load(1_000.0), &system);
        let lingering = predict(setting(400, 64, 4), load(1_000.0), &system);
        assert!(eager.p99_micros < lingering.p99_micros);
    }

    #[test]
    fn high_load_prefers_batching_over_deep_pipeline() {
        let system = SystemEstimate::default();
        let shallow = predict(setting(0, 256, 16), load(200_000.0), &system);
        let batched = predict(setting(400, 256, 4), load(200_000.0), &system);
        assert!(batched.p99_micros < shallow.p99_micros);
    }

    #[test]
    fn extreme_inputs_stay_finite() {
        let system = SystemEstimate {
            fsync_micros: f64::NAN,
            fsync_tail_ratio: f64::INFINITY,
            quorum_rtt_micros: -1.0,
        };
        let extreme = Load {
            arrival_rate_per_second: f64::INFINITY,
            dispersion: f64::NAN,
        };
        let prediction = predict(setting(u64::MAX, u64::MAX, u64::MAX), extreme, &system);
        assert!(prediction.p99_micros.is_finite());
        assert!(prediction.capacity_per_second.is_finite());
        let idle = predict(setting(0, 1, 1), load(0.0), &system);
        assert!(idle.p99_micros >= 1.0);
    }
}
