//! Change-point detection on the arrival process with a two-sided Page–Hinkley test.
//!
//! The tuner feeds one value per interval: the natural logarithm of `1 + arrival rate per
//! second`. A log scale makes a doubling of the load the same step at 1 k/s as at 1 M/s,
//! so one threshold fits every load level.
//!
//! The Page–Hinkley test (Page, "Continuous Inspection Schemes", Biometrika 41, 1954, as
//! summarised in <https://cefet-rj-dal.github.io/harbinger/reference/hcp_page_hinkley.html>)
//! accumulates the deviations of each value from the running mean of the current regime,
//! minus a drift tolerance δ. For upward shifts the sum is `m_t = Σ (x_i − mean_t − δ)`
//! and an alarm fires when `m_t − min(m) > λ`; the downward test mirrors it with `+ δ` and
//! the running maximum. δ absorbs ordinary interval-to-interval noise, so the sums drift
//! away from an alarm on a stationary stream, and λ sets the trade-off between detection
//! delay and false alarms. A step of size `s > δ` in log rate is detected after about
//! `λ / (s − δ)` intervals; with the defaults (λ = 2, δ = 0.1) a doubling of the rate
//! (s ≈ 0.69) takes about 4 intervals.
//!
//! After an alarm the detector restarts with the alarming value as the first sample of the
//! new regime.

/// The direction of a detected shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shift {
    Up,
    Down,
}

/// Samples a regime needs before the test may fire, so the running mean has settled.
pub const MIN_REGIME_SAMPLES: u64 = 3;

/// A two-sided Page–Hinkley detector.
#[derive(Debug, Clone, PartialEq)]
pub struct PageHinkley {
    threshold: f64,
    drift: f64,
    count: u64,
    mean: f64,
    up_sum: f64,
    up_min: f64,
    down_sum: f64,
    down_max: f64,
}

impl PageHinkley {
    /// Creates a detector with alarm threshold λ and drift tolerance δ; non-finite or
    /// negative parameters are treated as 0.
    pub fn new(threshold: f64, drift: f64) -> Self {
        let clean = |value: f64| {
            if value.is_finite() {
                value.max(0.0)
            } else {
                0.0
            }
        };
        Self {
            threshold: clean(threshold),
            drift: clean(drift),
            count: 0,
            mean: 0.0,
            up_sum: 0.0,
            up_min: 0.0,
            down_sum: 0.0,
            down_max: 0.0,
        }
    }

    /// Forgets the current regime.
    pub fn reset(&mut self) {
        *self = Self::new(self.threshold, self.drift);
    }

    /// Returns the samples seen in the current regime.
    pub fn regime_samples(&self) -> u64 {
        self.count
    }

    /// Feeds the arrival rate of one interval, on the log scale described above.
    pub fn observe_rate(&mut self, rate_per_second: f64) -> Option<Shift> {
        let rate = if rate_per_second.is_finite() {
            rate_per_second.max(0.0)
        } else if rate_per_second == f64::INFINITY {
            f64::MAX
        } else {
            0.0
        };
        self.observe(rate.ln_1p())
    }

    /// Feeds one value and returns the shift it completes, if any; a non-finite value is
    /// ignored.
    pub fn observe(&mut self, value: f64) -> Option<Shift> {
        if !value.is_finite() {
            return None;
        }
        self.count = self.count.saturating_add(1);
        self.mean += (value - self.mean) / self.count as f64;
        self.up_sum += value - self.mean - self.drift;
        self.up_min = self.up_min.min(self.up_sum);
        self.down_sum += value - self.mean + self.drift;
        self.down_max = self.down_max.max(self.down_sum);
        if self.count < MIN_REGIME_SAMPLES {
            return None;
        }
        let shift = if self.up_sum - self.up_min > self.threshold {
            Some(Shift::Up)
        } else if self.down_max - self.down_sum > self.threshold {
            Some(Shift::Down)
        } else {
            None
        };
        if shift.is_some() {
            self.reset();
            self.count = 1;
            self.mean = value;
        }
        shift
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_stream_never_alarms() {
        let mut detector = PageHinkley::new(2.0, 0.1);
        for _ in 0..10_000 {
            assert_eq!(detector.observe_rate(50_000.0), None);
        }
    }

    #[test]
    fn step_up_and_down_detected() {
        let mut detector = PageHinkley::new(2.0, 0.1);
        for _ in 0..50 {
            assert_eq!(detector.observe_rate(1_000.0), None);
        }
        let up = (0..10).find_map(|i| detector.observe_rate(8_000.0).map(|shift| (i, shift)));
        assert_eq!(up.map(|(_, shift)| shift), Some(Shift::Up));
        for _ in 0..50 {
            let _ = detector.observe_rate(8_000.0);
        }
        let down = (0..10).find_map(|i| detector.observe_rate(1_000.0).map(|shift| (i, shift)));
        assert_eq!(down.map(|(_, shift)| shift), Some(Shift::Down));
    }

    #[test]
    fn non_finite_inputs_are_safe() {
        let mut detector = PageHinkley::new(f64::NAN, f64::INFINITY);
        assert_eq!(detector.observe(f64::NAN), None);
        let _ = detector.observe_rate(f64::INFINITY);
        let _ = detector.observe_rate(f64::NEG_INFINITY);
        let _ = detector.observe_rate(-5.0);
        assert!(detector.regime_samples() <= 3);
    }
}
