//! The tuning policy: [`Tuner::observe`] turns one interval's samples into a [`Decision`].
//!
//! Per interval the tuner:
//!
//! 1. cleans the samples (non-finite or negative floats count as 0, rates are capped);
//! 2. feeds the arrival rate to the Page–Hinkley detector and, on a shift, makes the model
//!    forget the old regime and drops any pending change;
//! 3. folds the fdatasync, round-trip and entries-per-fdatasync measurements into the
//!    model's system estimate and, when the interval had at least `cold_start_commits_min`
//!    commits, records the measured latency of the arm in force;
//! 4. judges the last batching move while its trial is open (see the `trial` module):
//!    once the new arm has been measured for `hysteresis_intervals` intervals (at least 2),
//!    it is kept,
//!    or, when it measured worse than the previous arm by the margin beyond noise, the
//!    tuner moves back and rejects it at that rate for [`REJECTION_INTERVALS`] intervals.
//!    No other batching move happens while a trial is open;
//! 5. proposes new batching knobs once `cold_start_intervals` such intervals were seen. The
//!    first choice is the grid neighbour with the best predicted improvement. Else the
//!    tuner takes one step toward the best predicted arm within [`TARGET_RADIUS`] grid
//!    steps, through a neighbour predicted worse by at most the margin. Else it explores:
//!    the neighbour with the best optimistic prediction among those predicted no worse
//!    than the arm in force. Exploration waits [`EXPLORATION_SPACING_INTERVALS`]
//!    intervals after the last exploratory move, and never starts while the measured p99
//!    meets the latency objective's target. Rejected arms are never candidates. The move
//!    happens only if the same arm wins in `hysteresis_intervals` consecutive intervals
//!    and the rate limit allows it;
//! 6. proposes lower group timing when the election timeout exceeds the floor envelope by
//!    more than the margin for `hysteresis_intervals` intervals. The envelope is the
//!    [`FLOOR_ENVELOPE_QUANTILE`] of the floors of the last `timing_change_interval_min`
//!    intervals, and never below the latest floor, so one noisy interval does not hold the
//!    timeout up for the whole window;
//! 7. proposes `read_batch_max`: at once, or held for the reads of one quorum round trip,
//!    tried against each other by their measured read rates (see the `reads` module). It
//!    runs from the first interval that measured a round trip, since reads need no commits;
//! 8. passes the proposal through [`KnobGuard::apply`], which also raises the election
//!    timeout at once when the latest interval's floor requires it.
//!
//! Predictions for an arm never measured take the residual of the arm measured in this
//! interval, so they are relative to a measurement. [`Decision::prediction`] and each
//! batching reason report exactly the predictions the move compared: the arm in force and
//! the candidate (and the farther goal for a step toward one), or, for a move back, the two
//! measured p99 values.
//!
//! The floor that forces a raise is per interval: `safety_factor × (p99.9 RTT + p99.9
//! fdatasync)`, each p99.9 from the latest interval that measured it. A shard that leads
//! no group measures no round trip, so its floor follows its fdatasyncs and the round
//! trip it measured when it last led. A windowed statistic could be
//! lower than one interval's p99.9 and would then let the timeout sit below that interval's
//! floor, so it is used only for lowering. The floor is also at least
//! `stall_safety_factor` × the maximum stall of the shard's loop in the last
//! `stall_window_intervals` intervals. Stalls are rare, and one that outlasts the election
//! timeout of a leader's followers costs an election, so the window keeps the maximum.
//!
//! When `enabled = false` the tuner returns the static knobs unchanged and never proposes
//! anything. Until the cold start ends, the batching knobs stay at their static values,
//! but the election timeout floor already applies, because it protects against spurious
//! elections from the first measurement on.

use crate::change_point::PageHinkley;
use crate::config::{ConfigError, TuningConfig};
use crate::knobs::{Knob, Knobs};
use crate::model::grid::{Arm, ArmGrid};
use crate::model::{Context, Model, Prediction};
use crate::rng::SplitMix64;
use crate::safety::{KnobGuard, SafetyRules};
use crate::samples::IntervalSamples;
use std::collections::VecDeque;

mod batching;
mod decision;
mod reads;
mod reason;
mod timing;
mod trial;

pub use batching::{EXPLORATION_SPACING_INTERVALS, TARGET_RADIUS};
pub use decision::{Decision, Measurement, TimingDecision};
pub use reads::{
    CHANGE_RATIO_MIN, READ_RECHECK_INTERVALS, READ_REJECTION_INTERVALS,
    READ_TRIAL_SPACING_INTERVALS, READS_PER_ROUND_TRIP_MIN,
};
pub use timing::FLOOR_ENVELOPE_QUANTILE;
pub use trial::REJECTION_INTERVALS;

use reads::ReadPolicy;
use timing::floor_envelope;
use trial::{ArmRecord, Rejections, Trial};

/// A commit rate below this fraction of the arrival rate shows the arm's capacity.
const SATURATED_COMMIT_FRACTION: f64 = 0.9;

/// A change that needs to win for several intervals before it is made.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pending<T> {
    target: T,
    streak: u64,
}

fn advance_streak<T: PartialEq + Copy>(pending: &mut Option<Pending<T>>, target: Option<T>) -> u64 {
    match (target, pending.as_mut()) {
        (None, _) => {
            *pending = None;
            0
        }
        (Some(target), Some(current)) if current.target == target => {
            current.streak = current.streak.saturating_add(1);
            current.streak
        }
        (Some(target), _) => {
            *pending = Some(Pending { target, streak: 1 });
            1
        }
    }
}

/// The state that exists only while tuning is enabled.
#[derive(Debug, Clone)]
struct Active {
    guard: KnobGuard,
    grid: ArmGrid,
    model: Model,
    detector: PageHinkley,
    rng: SplitMix64,
    warm_intervals: u64,
    pending_arm: Option<Pending<Arm>>,
    pending_timing: Option<Pending<u64>>,
    reads: ReadPolicy,
    /// The measurements of the arm in force since it came into force.
    record: ArmRecord,
    /// The last move, while its measurements are still being compared.
    trial: Option<Trial>,
    rejections: Rejections,
    last_exploration: Option<u64>,
    /// Election timeout floors of recent intervals, newest last.
    floors: VecDeque<u64>,
    last_floor_micros: u64,
    /// The latest p99.9 of the quorum follower's round trip and of fdatasync, each from the
    /// last interval that measured it.
    last_rtt_p999_micros: Option<u64>,
    last_fsync_p999_micros: Option<u64>,
    /// The maximum stall of the shard's loop in each of the last `stall_window_intervals`
    /// intervals, newest last.
    stalls: VecDeque<u64>,
    /// The maximum stall in the window when its floor set the latest floor, for the reason
    /// of a forced raise.
    stall_binds_micros: Option<u64>,
    last_prediction: Option<Prediction>,
    /// Batch bytes per batch entry in the static knobs, kept when batch entries change.
    bytes_per_entry: u64,
    /// Election timeout min over heartbeat and max over min in the static knobs.
    heartbeat_divisor: u64,
    election_max_ratio: f64,
}

/// The adaptive tuner of one shard.
#[derive(Debug, Clone)]
pub struct Tuner {
    config: TuningConfig,
    static_knobs: Knobs,
    peers: u64,
    interval: u64,
    last_measurement: Option<Measurement>,
    active: Option<Active>,
}

impl Tuner {
    /// Creates a tuner for a leader with `peers` followers, starting from `static_knobs`.
    ///
    /// # Errors
    ///
    /// Returns a [`ConfigError`] when the configuration is invalid, or when tuning is
    /// enabled and the static knobs break a bound, the memory budget or the timing shape.
    pub fn new(
        config: TuningConfig,
        static_knobs: Knobs,
        peers: usize,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let peers = peers as u64;
        let active = if config.enabled {
            let rules = SafetyRules::from_config(&config, peers);
            let guard = KnobGuard::new(rules, static_knobs)?;
            let grid = ArmGrid::new(&config.bounds, config.step_ratio_max, &static_knobs);
            let static_arm = grid.nearest(&static_knobs);
            Some(Active {
                guard,
                grid,
                model: Model::new(),
                detector: PageHinkley::new(
                    config.change_point_threshold,
                    config.change_point_drift,
                ),
                rng: SplitMix64::new(config.seed),
                warm_intervals: 0,
                pending_arm: None,
                pending_timing: None,
                reads: ReadPolicy::default(),
                record: ArmRecord::new(static_arm),
                trial: None,
                rejections: Rejections::default(),
                last_exploration: None,
                floors: VecDeque::new(),
                last_floor_micros: 0,
                last_rtt_p999_micros: None,
                last_fsync_p999_micros: None,
                stalls: VecDeque::new(),
                stall_binds_micros: None,
                last_prediction: None,
                bytes_per_entry: (static_knobs.batch_bytes_max
                    / static_knobs.batch_entries_max.max(1))
                .max(1),
                heartbeat_divisor: (static_knobs.election_timeout_min_micros
                    / static_knobs.heartbeat_interval_micros.max(1))
                .max(3),
                election_max_ratio: static_knobs.election_timeout_max_micros as f64
                    / static_knobs.election_timeout_min_micros.max(1) as f64,
            })
        } else {
            None
        };
        Ok(Self {
            config,
            static_knobs,
            peers,
            interval: 0,
            last_measurement: None,
            active,
        })
    }

    /// Returns the knobs in force.
    pub fn current(&self) -> &Knobs {
        match &self.active {
            Some(active) => active.guard.current(),
            None => &self.static_knobs,
        }
    }

    /// Returns the configuration.
    pub fn config(&self) -> &TuningConfig {
        &self.config
    }

    /// Returns the number of intervals observed.
    pub fn intervals(&self) -> u64 {
        self.interval
    }

    /// Returns the latest prediction for the setting in force, if tuning is enabled.
    pub fn prediction(&self) -> Option<Prediction> {
        self.active
            .as_ref()
            .and_then(|active| active.last_prediction)
    }

    /// Returns the latest cleaned measurement.
    pub fn last_measurement(&self) -> Option<&Measurement> {
        self.last_measurement.as_ref()
    }

    /// Returns whether the cold start is over, so the batching knobs may change.
    pub fn is_warm(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|active| active.warm_intervals >= self.config.cold_start_intervals)
    }

    /// Returns the model's prediction for the batching knobs of `knobs` at the latest
    /// measured load, or `None` while disabled or before the first interval. The values
    /// are taken from the nearest grid arm.
    pub fn predict(&self, knobs: &Knobs) -> Option<Prediction> {
        let active = self.active.as_ref()?;
        let measurement = self.last_measurement?;
        let load = measurement.load();
        let current = active.grid.nearest(active.guard.current());
        let arm = active.grid.nearest(knobs);
        Some(
            active
                .model
                .estimate(&active.grid, Context::of(load), arm, current, load)
                .mean,
        )
    }

    /// Learns from one interval and returns the decision for the next one.
    pub fn observe(&mut self, samples: &IntervalSamples) -> Decision {
        self.interval = self.interval.saturating_add(1);
        let measured = Measurement::from_samples(samples, self.peers);
        self.last_measurement = Some(measured);
        let interval = self.interval;
        let config = &self.config;
        let peers = self.peers;
        match self.active.as_mut() {
            None => Decision::unchanged(measured),
            Some(active) => active.observe(config, peers, samples, measured, interval),
        }
    }
}

/// Returns whether a change of `knob` moves the batching arm, whose trial then starts;
/// `read_batch_max` and the timing knobs are outside the arm grid.
fn moves_arm(knob: Knob) -> bool {
    !knob.is_timing() && knob != Knob::ReadBatchMax
}

/// Returns the median round trip of the follower that completes a quorum: with `peers`
/// followers, the leader needs `(peers + 1) / 2` acknowledgements besides its own.
fn quorum_rtt_micros(samples: &IntervalSamples, peers: u64) -> Option<f64> {
    let mut medians: Vec<u64> = samples
        .peer_rtts
        .iter()
        .filter(|peer| peer.rtt.count > 0)
        .map(|peer| peer.rtt.p50_micros)
        .collect();
    if medians.is_empty() {
        return None;
    }
    medians.sort_unstable();
    let needed = peers.div_ceil(2).max(1) as usize;
    let index = needed.min(medians.len()) - 1;
    medians.get(index).map(|&rtt| rtt as f64)
}

impl Active {
    fn observe(
        &mut self,
        config: &TuningConfig,
        peers: u64,
        samples: &IntervalSamples,
        measured: Measurement,
        interval: u64,
    ) -> Decision {
        let load = measured.load();
        let shift = self.detector.observe_rate(measured.arrival_rate_per_second);
        if shift.is_some() {
            self.model.forget();
            self.pending_arm = None;
        }

        let fsync = &samples.fsync_latency;
        self.model.update_system(
            (fsync.count > 0).then_some(fsync.p50_micros as f64),
            (fsync.count > 0).then_some(fsync.p99_micros as f64),
            quorum_rtt_micros(samples, peers),
        );
        let current_arm = self.grid.nearest(self.guard.current());
        if samples.fsyncs > 0 && samples.arrivals > 0 {
            self.model
                .update_fsync_batch(&self.grid, current_arm, load, samples.entries_per_fsync);
        }

        let context = Context::of(load);
        let enough_commits =
            measured.commits >= config.cold_start_commits_min && measured.commits > 0;
        if enough_commits {
            let observed = Prediction {
                p50_micros: measured.commit_p50_micros as f64,
                p99_micros: measured.commit_p99_micros as f64,
                throughput_per_second: measured.commit_rate_per_second,
                capacity_per_second: measured.commit_rate_per_second,
            };
            let saturated = measured.commit_rate_per_second
                < SATURATED_COMMIT_FRACTION * measured.arrival_rate_per_second;
            self.model
                .record(&self.grid, context, current_arm, load, &observed, saturated);
            self.observe_arm(current_arm, load, &measured, saturated);
            self.warm_intervals = self.warm_intervals.saturating_add(1);
        }

        let floor = self.update_floor(config, measured);
        let mut proposal = *self.guard.current();
        let mut basis = None;
        if self.warm_intervals >= config.cold_start_intervals {
            basis = self.propose_batching(
                config,
                context,
                current_arm,
                &measured,
                interval,
                &mut proposal,
            );
        }
        self.propose_timing(config, interval, &mut proposal);
        if let Some(read_batch_max) = self.reads.propose(
            config,
            &measured,
            quorum_rtt_micros(samples, peers),
            self.guard.current().read_batch_max,
            interval,
        ) {
            proposal.read_batch_max = read_batch_max;
        }

        let before = *self.guard.current();
        let outcome = self.guard.apply(&proposal, floor, interval);
        let now_arm = self.grid.nearest(self.guard.current());
        // The arm measured in this interval lends its residual to the arm now in force, so
        // after a move this is the candidate prediction that the move was based on.
        let prediction = self
            .model
            .estimate(&self.grid, context, now_arm, current_arm, load)
            .mean;
        self.last_prediction = Some(prediction);
        if outcome.changes.iter().any(|change| moves_arm(change.knob)) {
            self.pending_arm = None;
            self.after_move(config, basis.as_ref(), now_arm, &measured, interval);
        }
        let read_batch_applied = outcome
            .changes
            .iter()
            .find(|change| change.knob == Knob::ReadBatchMax)
            .map(|change| change.to);
        let read_move = self.reads.after_apply(read_batch_applied, interval);
        if outcome.changes.iter().any(|change| change.knob.is_timing()) {
            self.pending_timing = None;
        }

        let reasons = outcome
            .changes
            .iter()
            .map(|change| {
                if change.knob == Knob::ReadBatchMax {
                    return reads::describe(change.from, change.to, read_move.as_ref());
                }
                reason::describe(
                    change,
                    &measured,
                    basis.as_ref(),
                    reason::Floor {
                        floor_micros: outcome.election_timeout_floor_micros,
                        envelope_micros: floor_envelope(&self.floors, self.last_floor_micros),
                        stall_micros: self.stall_binds_micros,
                    },
                )
            })
            .collect();
        let current = *self.guard.current();
        let batching_changed = outcome
            .changes
            .iter()
            .any(|change| !change.knob.is_timing());
        let timing_changed = outcome.changes.iter().any(|change| change.knob.is_timing());
        debug_assert!(before != current || outcome.changes.is_empty());
        Decision {
            batching: batching_changed.then(|| current.batching()),
            timing: timing_changed.then(|| TimingDecision {
                knobs: current.timing(),
                forced: outcome.changes.iter().any(|change| change.forced),
            }),
            prediction: Some(prediction),
            measured,
            changes: outcome.changes,
            reasons,
            election_timeout_floor_micros: outcome.election_timeout_floor_micros,
            floor_unsatisfiable: outcome.floor_unsatisfiable,
        }
    }
}

#[cfg(test)]
mod tests;
