//! The tuner's output types and the cleaning of measured samples.

use crate::knobs::{BatchingKnobs, TimingKnobs};
use crate::model::{Load, Prediction};
use crate::safety::KnobChange;
use crate::samples::IntervalSamples;

/// The largest arrival or commit rate the tuner takes at face value, per second.
const RATE_MAX_PER_SECOND: f64 = 1e12;

/// The measured values of one interval, cleaned.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Measurement {
    pub arrival_rate_per_second: f64,
    pub arrival_dispersion: f64,
    pub commit_rate_per_second: f64,
    /// Commits with a latency sample; the model needs enough of them to trust a p99.
    pub commits: u64,
    pub commit_p50_micros: u64,
    pub commit_p99_micros: u64,
    /// The p99.9 round-trip time of the follower that decides whether a quorum loses the
    /// leader ([`IntervalSamples::rtt_p999_quorum_micros`]), if any peer reported.
    pub rtt_p999_micros: Option<u64>,
    /// The p99.9 fdatasync latency, if any fdatasync completed.
    pub fsync_p999_micros: Option<u64>,
    pub read_rate_per_second: f64,
    /// The p99 read latency, if at least [`READ_LATENCY_SAMPLES_MIN`] reads were served.
    ///
    /// [`READ_LATENCY_SAMPLES_MIN`]: super::reads::READ_LATENCY_SAMPLES_MIN
    pub read_p99_micros: Option<u64>,
    /// The maximum stall of the shard's loop in the interval.
    pub stall_max_micros: u64,
}

fn clean_rate(value: f64) -> f64 {
    if value.is_nan() || value <= 0.0 {
        0.0
    } else {
        value.min(RATE_MAX_PER_SECOND)
    }
}

impl Measurement {
    /// Extracts and cleans the values the tuner uses from `samples` of a leader with
    /// `followers` followers.
    pub fn from_samples(samples: &IntervalSamples, followers: u64) -> Self {
        Self {
            arrival_rate_per_second: clean_rate(samples.arrival_rate_per_second),
            arrival_dispersion: clean_rate(samples.arrival_dispersion),
            commit_rate_per_second: clean_rate(samples.commit_rate_per_second),
            commits: samples.commit_latency.count,
            commit_p50_micros: samples.commit_latency.p50_micros,
            commit_p99_micros: samples.commit_latency.p99_micros,
            rtt_p999_micros: samples.rtt_p999_quorum_micros(followers),
            fsync_p999_micros: (samples.fsync_latency.count > 0)
                .then_some(samples.fsync_latency.p999_micros),
            read_rate_per_second: clean_rate(samples.read_rate_per_second),
            read_p99_micros: (samples.read_latency.count >= super::reads::READ_LATENCY_SAMPLES_MIN)
                .then_some(samples.read_latency.p99_micros),
            stall_max_micros: samples.stall_max_micros,
        }
    }

    pub(super) fn load(&self) -> Load {
        Load {
            arrival_rate_per_second: self.arrival_rate_per_second,
            dispersion: self.arrival_dispersion,
        }
    }
}

/// A change of the group timing, which the engine replicates through the Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimingDecision {
    pub knobs: TimingKnobs,
    /// Whether the election timeout floor forced the change.
    pub forced: bool,
}

/// The outcome of one [`Tuner::observe`](super::Tuner::observe) call.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new batching knobs, present only when one of them changed.
    pub batching: Option<BatchingKnobs>,
    /// The new group timing, present only when one of its knobs changed.
    pub timing: Option<TimingDecision>,
    /// The model's prediction for the setting now in force, at this interval's load; `None`
    /// while disabled.
    pub prediction: Option<Prediction>,
    pub measured: Measurement,
    /// Every knob that changed.
    pub changes: Vec<KnobChange>,
    /// One human-readable reason per change, in the order of `changes`.
    pub reasons: Vec<String>,
    /// The election timeout floor in force: safety_factor × (p99.9 RTT + p99.9 fdatasync).
    pub election_timeout_floor_micros: u64,
    /// Whether the floor exceeds the election timeout's max bound, which then applies.
    pub floor_unsatisfiable: bool,
}

impl Decision {
    pub(super) fn unchanged(measured: Measurement) -> Self {
        Self {
            batching: None,
            timing: None,
            prediction: None,
            measured,
            changes: Vec::new(),
            reasons: Vec::new(),
            election_timeout_floor_micros: 0,
            floor_unsatisfiable: false,
        }
    }
}
