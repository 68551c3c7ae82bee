//! A phi accrual failure detector per peer.
//!
//! The detector keeps a window of the gaps between recent heartbeat arrivals and fits a
//! normal distribution to them, as in the phi accrual detector of Hayashibara, Défago,
//! Yared and Katayama (2004), summarised in <https://arpitbhayani.me/blogs/phi-accrual/>.
//! For the time `t` elapsed since the last heartbeat,
//! `phi(t) = −log10(P(gap > t)) = −log10(1 − Φ((t − μ) / σ))`. A phi of 8 means that a gap
//! this long happens once in 10^8 heartbeats if the peer is alive. On a quiet network the
//! gaps barely vary, phi rises steeply once a heartbeat is late, and the suspicion comes
//! soon after one heartbeat interval. On a jittery network σ is larger and the same
//! threshold is reached later, so the detector adapts instead of firing falsely.
//!
//! # Numerical safety
//!
//! The tail `P(gap > t)` underflows to 0 in `f64` for `z = (t − μ)/σ` above about 38, which
//! would make phi infinite. The detector therefore computes `ln P(gap > t)` directly: for
//! `|z| ≤ 4` from the Maclaurin series of erf, and above that from the Laplace continued
//! fraction of the Mills ratio, `P(Z > z) = φ(z) / (z + 1/(z + 2/(z + 3/(z + …))))`, whose
//! logarithm needs no exponential. phi therefore grows like `z² / (2 ln 10)` and saturates
//! at [`PHI_MAX`]; it is never NaN or infinite.
//!
//! σ has a floor of [`MIN_STD_DEV_RATIO`] × μ (and 1 µs): perfectly regular heartbeats
//! would otherwise give σ = 0 and suspect a peer the first microsecond a heartbeat is late.
//!
//! # Cold start
//!
//! Until the window contains `min_gaps` gaps, [`PhiAccrualDetector::phi`] returns 0 and
//! [`PhiAccrualDetector::suspicion_delay_micros`] returns `None`, so the engine's fixed
//! election timeout applies.

use std::cell::Cell;
use std::collections::VecDeque;

/// The largest value [`PhiAccrualDetector::phi`] returns.
pub const PHI_MAX: f64 = 1e12;

/// The floor of σ as a fraction of the mean gap.
pub const MIN_STD_DEV_RATIO: f64 = 0.1;

/// The z-score above which the continued fraction replaces the series.
const SERIES_LIMIT: f64 = 4.0;

/// Returns `ln P(Z > z)` for a standard normal `Z`, finite for every finite `z`.
fn log_normal_tail(z: f64) -> f64 {
    if z.is_nan() {
        return 0.0;
    }
    if z <= -SERIES_LIMIT {
        // P(Z > z) = 1 − P(Z > −z), and P(Z > −z) is tiny here.
        return (-log_normal_tail(-z).exp()).ln_1p();
    }
    if z <= SERIES_LIMIT {
        // P(Z > z) = (1 − erf(z / √2)) / 2 with erf from its Maclaurin series, which
        // converges for all z and loses at most four digits for |z| ≤ 4.
        let x = z / std::f64::consts::SQRT_2;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs().max(1e-300) && n < 200.0 {
            n += 1.0;
            term *= -x * x / n;
            sum += term / (2.0 * n + 1.0);
        }
        let erf = (2.0 / std::f64::consts::PI.sqrt()) * sum;
        let tail = (0.5 * (1.0 - erf)).max(f64::MIN_POSITIVE);
        return tail.ln();
    }
    // Clamp z so that z² stays finite; phi saturates long before.
    let z = z.min(1e150);
    let mut fraction = z;
    for k in (1..=100).rev() {
        fraction = z + f64::from(k) / fraction;
    }
    let ln_density = -0.5 * z * z - 0.5 * (2.0 * std::f64::consts::PI).ln();
    ln_density - fraction.ln()
}

/// Returns phi for z-score `z`.
fn phi_of_z(z: f64) -> f64 {
    let phi = -log_normal_tail(z) / std::f64::consts::LN_10;
    if phi.is_nan() {
        return 0.0;
    }
    phi.clamp(0.0, PHI_MAX)
}

/// Returns the election delay to schedule: the suspicion delay clamped into
/// `[election_timeout_min_micros, election_timeout_max_micros]`, or the caller's
/// `fixed_timeout_micros` (clamped the same way) when the detector is still cold.
///
/// Swapped bounds are put in order rather than rejected.
pub fn clamp_suspicion_delay(
    delay_micros: Option<u64>,
    fixed_timeout_micros: u64,
    election_timeout_min_micros: u64,
    election_timeout_max_micros: u64,
) -> u64 {
    let low = election_timeout_min_micros.min(election_timeout_max_micros);
    let high = election_timeout_max_micros.max(election_timeout_min_micros);
    delay_micros
        .unwrap_or(fixed_timeout_micros)
        .clamp(low, high)
}

/// A phi accrual failure detector for one peer's heartbeats.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiAccrualDetector {
    window: usize,
    min_gaps: usize,
    gaps_micros: VecDeque<u64>,
    last_heartbeat_micros: Option<u64>,
    /// The mean and floored standard deviation of the window, refreshed per heartbeat.
    mean_micros: f64,
    std_dev_micros: f64,
    /// The last threshold asked for (its bits) and the standard score at which phi
    /// reaches it. The score depends on the threshold alone, and finding it takes a few
    /// hundred evaluations of the normal tail, so it is found once, not per call.
    threshold_score: Cell<Option<(u64, f64)>>,
}

impl PhiAccrualDetector {
    /// Creates a detector that keeps `window` gaps and estimates after `min_gaps` of them.
    /// `window` is at least 2 and `min_gaps` is kept in `[2, window]`.
    pub fn new(window: usize, min_gaps: usize) -> Self {
        let window = window.max(2);
        Self {
            window,
            min_gaps: min_gaps.clamp(2, window),
            gaps_micros: VecDeque::with_capacity(window),
            last_heartbeat_micros: None,
            mean_micros: 0.0,
            std_dev_micros: 0.0,
            threshold_score: Cell::new(None),
        }
    }

    /// Records a heartbeat arrival; a time before the last heartbeat is treated as a repeat
    /// of it and records no gap.
    pub fn heartbeat(&mut self, now_micros: u64) {
        let Some(last) = self.last_heartbeat_micros else {
            self.last_heartbeat_micros = Some(now_micros);
            return;
        };
        if now_micros < last {
            return;
        }
        if self.gaps_micros.len() == self.window {
            self.gaps_micros.pop_front();
        }
        self.gaps_micros.push_back(now_micros - last);
        self.last_heartbeat_micros = Some(now_micros);
        self.refresh_statistics();
    }

    fn refresh_statistics(&mut self) {
        let n = self.gaps_micros.len() as f64;
        if n == 0.0 {
            return;
        }
        let mean = self.gaps_micros.iter().map(|&gap| gap as f64).sum::<f64>() / n;
        let variance = self
            .gaps_micros
            .iter()
            .map(|&gap| (gap as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        self.mean_micros = mean;
        self.std_dev_micros = variance.sqrt().max(mean * MIN_STD_DEV_RATIO).max(1.0);
    }

    /// Returns the number of gaps in the window.
    pub fn gaps(&self) -> usize {
        self.gaps_micros.len()
    }

    fn is_warm(&self) -> bool {
        self.gaps_micros.len() >= self.min_gaps
    }

    /// Returns phi at `now_micros`, a finite value in `[0, PHI_MAX]`.
    ///
    /// Phi is 0 before the first heartbeat and during the cold start. A time before the
    /// last heartbeat counts as 0 elapsed.
    pub fn phi(&self, now_micros: u64) -> f64 {
        let Some(last) = self.last_heartbeat_micros else {
            return 0.0;
        };
        if !self.is_warm() {
            return 0.0;
        }
        let elapsed = now_micros.saturating_sub(last) as f64;
        phi_of_z((elapsed - self.mean_micros) / self.std_dev_micros)
    }

    /// Returns whether phi at `now_micros` has reached `threshold`; never during cold start.
    pub fn is_suspected(&self, now_micros: u64, threshold: f64) -> bool {
        self.is_warm() && self.last_heartbeat_micros.is_some() && self.phi(now_micros) >= threshold
    }

    /// Returns the time after the last heartbeat at which phi reaches `threshold`, or
    /// `None` during cold start or for a NaN threshold. A threshold that phi already has at
    /// 0 elapsed time gives `Some(0)`, and one above [`PHI_MAX`] gives `Some(u64::MAX)`.
    pub fn suspicion_delay_micros(&self, threshold: f64) -> Option<u64> {
        if !self.is_warm() || threshold.is_nan() {
            return None;
        }
        if threshold > PHI_MAX {
            return Some(u64::MAX);
        }
        let z_at_zero = -self.mean_micros / self.std_dev_micros;
        if phi_of_z(z_at_zero) >= threshold {
            return Some(0);
        }
        let score = match self.threshold_score.get() {
            Some((bits, score)) if bits == threshold.to_bits() => score,
            _ => {
                let score = threshold_score(threshold);
                self.threshold_score.set(Some((threshold.to_bits(), score)));
                score
            }
        };
        let delay = self.mean_micros + score.max(z_at_zero) * self.std_dev_micros;
        Some(crate::safety::saturating_u64(delay.ceil()))
    }
}

/// Returns the smallest standard score at which phi reaches `threshold`, for a threshold
/// of at most [`PHI_MAX`]. phi is monotonic in the score, so a bisection finds it.
fn threshold_score(threshold: f64) -> f64 {
    // phi is below any positive threshold far left of the mean, where the tail is ~1.
    let mut low = -40.0f64;
    let mut high = 1.0f64;
    while phi_of_z(high) < threshold && high < 1e150 {
        high *= 2.0;
    }
    for _ in 0..200 {
        let middle = 0.5 * (low + high);
        if phi_of_z(middle) >= threshold {
            high = middle;
        } else {
            low = middle;
        }
    }
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_matches_known_values() {
        // P(Z > 0) = 0.5, P(Z > 1.96) ≈ 0.025, P(Z > 5) ≈ 2.8665e-7, P(Z > 10) ≈ 7.6199e-24.
        let cases = [
            (0.0, 0.5),
            (1.96, 0.024_997_9),
            (5.0, 2.866_515_7e-7),
            (10.0, 7.619_853e-24),
        ];
        for (z, expected) in cases {
            let got = log_normal_tail(z).exp();
            assert!(
                ((got - expected) / expected).abs() < 1e-4,
                "z {z}: {got} vs {expected}"
            );
        }
        let near_one = log_normal_tail(-6.0).exp();
        assert!((near_one - 1.0).abs() < 1e-8, "{near_one}");
    }

    #[test]
    fn tail_is_continuous_at_series_limit() {
        let below = log_normal_tail(SERIES_LIMIT - 1e-9);
        let above = log_normal_tail(SERIES_LIMIT + 1e-9);
        assert!((below - above).abs() < 1e-6, "{below} vs {above}");
    }

    #[test]
    fn phi_saturates_for_huge_elapsed() {
        let mut detector = PhiAccrualDetector::new(10, 2);
        for i in 0..10 {
            detector.heartbeat(i * 1_000);
        }
        let phi = detector.phi(u64::MAX);
        assert!(phi.is_finite());
        assert_eq!(phi, PHI_MAX);
    }

    #[test]
    fn clamp_keeps_delay_inside_range() {
        assert_eq!(clamp_suspicion_delay(Some(5), 170, 100, 200), 100);
        assert_eq!(clamp_suspicion_delay(Some(500), 170, 100, 200), 200);
        assert_eq!(clamp_suspicion_delay(Some(150), 170, 100, 200), 150);
        assert_eq!(clamp_suspicion_delay(None, 170, 100, 200), 170);
        assert_eq!(clamp_suspicion_delay(None, 999, 100, 200), 200);
        assert_eq!(clamp_suspicion_delay(Some(150), 170, 200, 100), 150);
    }
}
