//! Measured checks of batching moves: every move is a trial that the next intervals' own
//! measurements confirm or undo.
//!
//! The model predicts untried arms from a prior and the residual of the current arm, so a
//! move can be wrong however confident the prediction. After each move the tuner measures
//! the new arm for `hysteresis_intervals` intervals (at least 2) and compares its p99 with what the
//! previous arm measured before the move. Both sides are taken relative to the previous
//! arm's prior at each interval's load, so a change of the arrival rate alone does not
//! count for or against the new arm. When the new arm is worse by the hysteresis margin plus
//! [`REJECTION_STANDARD_ERRORS`] standard errors of the measured difference, the tuner
//! moves back and rejects the new arm at that rate for [`REJECTION_INTERVALS`]
//! intervals.

use crate::config::Objective;
use crate::model::grid::Arm;

/// Intervals for which a rejected arm stays excluded at a similar arrival rate.
pub const REJECTION_INTERVALS: u64 = 200;

/// The maximum number of rejections kept; the oldest is dropped first.
const REJECTIONS_MAX: usize = 32;

/// The cap on the sample count of an [`ArmRecord`], so the record follows recent intervals.
const RECORD_COUNT_MAX: f64 = 10.0;

/// A trial that has not completed after this many intervals times the intervals it needs
/// is accepted, so that a shard with too few commits does not block tuning forever.
const TRIAL_PATIENCE: u64 = 10;

/// The standard errors by which a trial must measure worse, beyond the margin, to be
/// rejected, so that interval-to-interval noise rarely undoes a good move.
const REJECTION_STANDARD_ERRORS: f64 = 2.0;

/// The smallest standard deviation assumed for one interval's log p99, because two or three
/// intervals can agree by chance.
const LOG_P99_STD_DEV_MIN: f64 = 0.05;

/// A running mean and variance with a capped count.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct RunningMean {
    count: f64,
    mean: f64,
    /// The population variance, weighted like the mean.
    variance: f64,
}

impl RunningMean {
    fn add(&mut self, value: f64, count_max: f64) {
        if !value.is_finite() {
            return;
        }
        self.count = (self.count + 1.0).min(count_max);
        let weight = 1.0 / self.count;
        let delta = value - self.mean;
        self.mean += weight * delta;
        self.variance = (1.0 - weight) * (self.variance + weight * delta * delta);
    }

    fn value(&self) -> Option<f64> {
        (self.count > 0.0).then_some(self.mean)
    }
}

/// Returns the standard error of the difference of the means of `a` and `b`, from their
/// pooled sample variance.
fn standard_error(a: &RunningMean, b: &RunningMean) -> f64 {
    let degrees = a.count + b.count - 2.0;
    let pooled = if degrees > 0.0 {
        (a.count * a.variance + b.count * b.variance) / degrees
    } else {
        0.0
    };
    let variance = pooled.max(LOG_P99_STD_DEV_MIN * LOG_P99_STD_DEV_MIN);
    (variance * (1.0 / a.count.max(1.0) + 1.0 / b.count.max(1.0))).sqrt()
}

/// One interval's measurement of the arm in force, relative to a reference prior.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Observation {
    /// `ln(measured p99 / reference prior p99)` at the interval's load.
    pub log_p99_excess: f64,
    pub log_p99: f64,
    /// `ln(commit rate)`, used when the throughput objective compares saturated arms.
    pub log_commit_rate: f64,
    pub saturated: bool,
}

/// The measurements of the arm in force since it came into force, relative to its prior.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ArmRecord {
    pub arm: Arm,
    excess: RunningMean,
    p99: RunningMean,
    commit_rate: RunningMean,
    all_saturated: bool,
}

impl ArmRecord {
    pub fn new(arm: Arm) -> Self {
        Self {
            arm,
            excess: RunningMean::default(),
            p99: RunningMean::default(),
            commit_rate: RunningMean::default(),
            all_saturated: true,
        }
    }

    pub fn add(&mut self, observation: &Observation) {
        self.excess
            .add(observation.log_p99_excess, RECORD_COUNT_MAX);
        self.p99.add(observation.log_p99, RECORD_COUNT_MAX);
        self.commit_rate
            .add(observation.log_commit_rate, RECORD_COUNT_MAX);
        self.all_saturated &= observation.saturated;
    }

    fn is_empty(&self) -> bool {
        self.excess.value().is_none()
    }
}

/// The outcome of a completed trial.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Verdict {
    /// The trial is still measuring.
    Pending,
    /// The new arm is not worse by the margin, or the trial ran out of patience.
    Accepted,
    /// The new arm measured worse: move back to `from`.
    Rejected {
        from: Arm,
        /// Measured p99 of the new arm and of the previous arm, in microseconds.
        trial_p99_micros: f64,
        previous_p99_micros: f64,
    },
}

/// A move under test: from the previous arm to the arm in force.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Trial {
    pub from: Arm,
    pub to: Arm,
    started: u64,
    intervals_needed: u64,
    /// The previous arm's measurements before the move, relative to its own prior.
    baseline: ArmRecord,
    /// The new arm's measurements, relative to the previous arm's prior.
    measured: ArmRecord,
}

impl Trial {
    /// Starts a trial of the move from `previous` to `to` in `interval`, or returns `None`
    /// when the previous arm has no measurement to compare with.
    pub fn start(
        previous: &ArmRecord,
        to: Arm,
        interval: u64,
        intervals_needed: u64,
    ) -> Option<Self> {
        if previous.is_empty() {
            return None;
        }
        Some(Self {
            from: previous.arm,
            to,
            started: interval,
            intervals_needed: intervals_needed.max(1),
            baseline: previous.clone(),
            measured: ArmRecord::new(to),
        })
    }

    /// Adds one interval of the new arm, measured relative to the previous arm's prior.
    pub fn add(&mut self, observation: &Observation) {
        self.measured.add(observation);
    }

    /// Returns the verdict in `interval` under `objective` with the hysteresis `margin`.
    pub fn verdict(&self, objective: Objective, margin: f64, interval: u64) -> Verdict {
        let enough = self.measured.excess.count >= self.intervals_needed as f64;
        if !enough {
            let patience = self.intervals_needed.saturating_mul(TRIAL_PATIENCE);
            return if interval.saturating_sub(self.started) > patience {
                Verdict::Accepted
            } else {
                Verdict::Pending
            };
        }
        let (Some(trial), Some(baseline)) =
            (self.measured.excess.value(), self.baseline.excess.value())
        else {
            return Verdict::Accepted;
        };
        let tolerance = (1.0 + margin).ln();
        let p99_noise = REJECTION_STANDARD_ERRORS
            * standard_error(&self.measured.excess, &self.baseline.excess);
        let rate_noise = REJECTION_STANDARD_ERRORS
            * standard_error(&self.measured.commit_rate, &self.baseline.commit_rate);
        let throughput_decides = matches!(objective, Objective::Throughput)
            && self.measured.all_saturated
            && self.baseline.all_saturated;
        let worse = if throughput_decides {
            match (
                self.measured.commit_rate.value(),
                self.baseline.commit_rate.value(),
            ) {
                (Some(trial_rate), Some(baseline_rate)) => {
                    trial_rate < baseline_rate - tolerance - rate_noise
                }
                _ => false,
            }
        } else {
            trial > baseline + tolerance + p99_noise
        };
        if !worse {
            return Verdict::Accepted;
        }
        let p99 = |record: &ArmRecord| record.p99.value().map_or(0.0, f64::exp);
        Verdict::Rejected {
            from: self.from,
            trial_p99_micros: p99(&self.measured),
            previous_p99_micros: p99(&self.baseline),
        }
    }
}

/// One arm that measured worse than the arm it replaced.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rejection {
    arm: Arm,
    arrival_rate_per_second: f64,
    until: u64,
}

/// The arms rejected by recent trials.
#[derive(Debug, Clone, PartialEq, Default)]
pub(super) struct Rejections {
    entries: Vec<Rejection>,
}

impl Rejections {
    /// Rejects `arm` at `rate` from `interval` on for [`REJECTION_INTERVALS`] intervals.
    pub fn add(&mut self, arm: Arm, rate: f64, interval: u64) {
        self.entries
            .retain(|entry| entry.arm != arm && entry.until > interval);
        if self.entries.len() >= REJECTIONS_MAX {
            self.entries.remove(0);
        }
        self.entries.push(Rejection {
            arm,
            arrival_rate_per_second: rate,
            until: interval.saturating_add(REJECTION_INTERVALS),
        });
    }

    /// Returns whether `arm` is rejected in `interval` at an arrival rate within a factor
    /// of 2 of `rate`.
    pub fn contains(&self, arm: Arm, rate: f64, interval: u64) -> bool {
        self.entries.iter().any(|entry| {
            let similar = (rate.max(1.0) / entry.arrival_rate_per_second.max(1.0))
                .log2()
                .abs()
                <= 1.0;
            entry.arm == arm && interval < entry.until && similar
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LATENCY: Objective = Objective::Latency {
        p99_target_micros: 1,
    };

    fn arm(linger: u16) -> Arm {
        Arm {
            linger,
            batch: 0,
            inflight: 0,
        }
    }

    fn observation(p99: f64, prior: f64) -> Observation {
        Observation {
            log_p99_excess: (p99 / prior).ln(),
            log_p99: p99.ln(),
            log_commit_rate: 10_000f64.ln(),
            saturated: false,
        }
    }

    fn trial_after(before: f64) -> Trial {
        let mut previous = ArmRecord::new(arm(0));
        for _ in 0..3 {
            previous.add(&observation(before, 1_000.0));
        }
        match Trial::start(&previous, arm(1), 10, 2) {
            Some(trial) => trial,
            None => panic!("a measured arm starts no trial"),
        }
    }

    #[test]
    fn worse_measurement_rejects_move() {
        let mut trial = trial_after(2_000.0);
        trial.add(&observation(4_000.0, 1_000.0));
        assert_eq!(trial.verdict(LATENCY, 0.1, 11), Verdict::Pending);
        trial.add(&observation(4_000.0, 1_000.0));
        let verdict = trial.verdict(LATENCY, 0.1, 12);
        let Verdict::Rejected {
            from,
            trial_p99_micros,
            previous_p99_micros,
        } = verdict
        else {
            panic!("expected a rejection, got {verdict:?}");
        };
        assert_eq!(from, arm(0));
        assert!((trial_p99_micros - 4_000.0).abs() < 1e-6);
        assert!((previous_p99_micros - 2_000.0).abs() < 1e-6);
    }

    #[test]
    fn noise_sized_difference_is_not_worse() {
        // 20% worse is beyond the 10% margin but within two standard errors.
        let mut trial = trial_after(2_000.0);
        trial.add(&observation(2_000.0, 1_000.0));
        trial.add(&observation(2_800.0, 1_000.0));
        assert_eq!(trial.verdict(LATENCY, 0.1, 12), Verdict::Accepted);
    }

    #[test]
    fn load_change_alone_is_not_worse() {
        // The p99 doubles, but so does the previous arm's prior at the new load.
        let mut trial = trial_after(2_000.0);
        trial.add(&observation(4_000.0, 2_000.0));
        trial.add(&observation(4_000.0, 2_000.0));
        assert_eq!(trial.verdict(LATENCY, 0.1, 12), Verdict::Accepted);
    }

    #[test]
    fn unmeasured_previous_arm_starts_no_trial() {
        assert!(Trial::start(&ArmRecord::new(arm(0)), arm(1), 1, 2).is_none());
    }

    #[test]
    fn stalled_trial_is_accepted() {
        let trial = trial_after(2_000.0);
        assert_eq!(trial.verdict(LATENCY, 0.1, 30), Verdict::Pending);
        assert_eq!(trial.verdict(LATENCY, 0.1, 31), Verdict::Accepted);
    }

    #[test]
    fn rejection_applies_at_similar_rate_until_expiry() {
        let mut rejections = Rejections::default();
        rejections.add(arm(1), 60_000.0, 100);
        assert!(rejections.contains(arm(1), 40_000.0, 101));
        assert!(!rejections.contains(arm(1), 20_000.0, 101));
        assert!(!rejections.contains(arm(2), 60_000.0, 101));
        assert!(!rejections.contains(arm(1), 60_000.0, 100 + REJECTION_INTERVALS));
    }
}
