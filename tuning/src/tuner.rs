//! The tuning policy: [`Tuner::observe`] turns one interval's samples into a [`Decision`].
//!
//! Per interval the tuner:
//!
//! 1. cleans the samples (non-finite or negative floats count as 0, rates are capped);
//! 2. feeds the arrival rate to the Page–Hinkley detector and, on a shift, makes the model
//!    forget the old regime and drops any pending change;
//! 3. folds the fdatasync and round-trip measurements into the model's system estimate and,
//!    when the interval had at least `cold_start_commits_min` commits, records the measured
//!    latency of the arm in force;
//! 4. proposes new batching knobs once `cold_start_intervals` such intervals were seen. The
//!    next arm is, in order of preference: the grid neighbour with the best predicted
//!    improvement; else one step toward the best predicted arm within [`TARGET_RADIUS`]
//!    grid steps, through a neighbour not predicted worse than the margin; else the
//!    neighbour with the best optimistic (exploration) prediction. The move happens only if
//!    the improvement beats `hysteresis_percent` for the same arm in `hysteresis_intervals`
//!    consecutive intervals and the rate limit allows it;
//! 5. proposes lower group timing when the election timeout exceeds the floor (the largest
//!    floor of the last `timing_change_interval_min` intervals) by more than the margin for
//!    `hysteresis_intervals` intervals;
//! 6. passes the proposal through [`KnobGuard::apply`], which also raises the election
//!    timeout at once when the latest floor requires it.
//!
//! When `enabled = false` the tuner returns the static knobs unchanged and never proposes
//! anything. Until the cold start ends, the batching knobs stay at their static values,
//! but the election timeout floor already applies, because it protects against spurious
//! elections from the first measurement on.

use crate::change_point::PageHinkley;
use crate::config::{ConfigError, Objective, TuningConfig};
use crate::knobs::{Knob, Knobs};
use crate::model::grid::{Arm, ArmGrid};
use crate::model::objective::improvement;
use crate::model::{Context, Load, Model, Prediction};
use crate::rng::SplitMix64;
use crate::safety::{FORCED_RAISE_HEADROOM, KnobGuard, SafetyRules, saturating_u64};
use crate::samples::IntervalSamples;
use std::collections::VecDeque;

mod decision;
mod reason;

pub use decision::{Decision, Measurement, TimingDecision};

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
    /// Election timeout floors of recent intervals, newest last.
    floors: VecDeque<u64>,
    last_floor_micros: u64,
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
            Some(Active {
                guard,
                grid: ArmGrid::new(&config.bounds, config.step_ratio_max, &static_knobs),
                model: Model::new(),
                detector: PageHinkley::new(
                    config.change_point_threshold,
                    config.change_point_drift,
                ),
                rng: SplitMix64::new(config.seed),
                warm_intervals: 0,
                pending_arm: None,
                pending_timing: None,
                floors: VecDeque::new(),
                last_floor_micros: 0,
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
        let measured = Measurement::from_samples(samples);
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

/// The search radius, in grid steps per dimension, for a better arm to head for.
pub const TARGET_RADIUS: u16 = 8;

/// Returns whether `next` is no farther from `goal` than `from` in any dimension.
fn approaches(from: Arm, next: Arm, goal: Arm) -> bool {
    let closer = |a: u16, b: u16, g: u16| a.abs_diff(g) >= b.abs_diff(g);
    closer(from.linger, next.linger, goal.linger)
        && closer(from.batch, next.batch, goal.batch)
        && closer(from.inflight, next.inflight, goal.inflight)
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

        let context = Context::of(load);
        let current_arm = self.grid.nearest(self.guard.current());
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
            self.warm_intervals = self.warm_intervals.saturating_add(1);
        }

        let floor = self.update_floor(measured);
        let mut proposal = *self.guard.current();
        let mut explanation = None;
        if self.warm_intervals >= config.cold_start_intervals {
            explanation =
                self.propose_batching(config, context, current_arm, load, interval, &mut proposal);
        }
        self.propose_timing(config, interval, &mut proposal);

        let before = *self.guard.current();
        let outcome = self.guard.apply(&proposal, floor, interval);
        let now_arm = self.grid.nearest(self.guard.current());
        let prediction = self
            .model
            .estimate(&self.grid, context, now_arm, now_arm, load)
            .mean;
        self.last_prediction = Some(prediction);
        if outcome
            .changes
            .iter()
            .any(|change| !change.knob.is_timing())
        {
            self.pending_arm = None;
        }
        if outcome.changes.iter().any(|change| change.knob.is_timing()) {
            self.pending_timing = None;
        }

        let before_prediction = explanation.map(|(before, _)| before);
        let reasons = outcome
            .changes
            .iter()
            .map(|change| {
                reason::describe(
                    change,
                    &measured,
                    before_prediction.as_ref(),
                    &prediction,
                    explanation.is_some_and(|(_, exploring)| exploring),
                    outcome.election_timeout_floor_micros,
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

    /// Returns the election timeout floor to enforce now: from this interval's latencies
    /// when it measured both, else the previous floor, because an interval without
    /// measurements carries no information about the network.
    fn update_floor(&mut self, measured: Measurement) -> u64 {
        if let (Some(rtt), Some(fsync)) = (measured.rtt_p999_micros, measured.fsync_p999_micros) {
            self.last_floor_micros = self.guard.rules().election_timeout_floor_micros(rtt, fsync);
        } else if let Some(one) = measured.rtt_p999_micros.or(measured.fsync_p999_micros) {
            // One side alone is still a lower bound on the sum.
            let floor = self.guard.rules().election_timeout_floor_micros(one, 0);
            self.last_floor_micros = self.last_floor_micros.max(floor);
        }
        self.floors.push_back(self.last_floor_micros);
        let window = self
            .guard
            .rules()
            .timing_change_interval_min
            .clamp(1, 10_000) as usize;
        while self.floors.len() > window {
            self.floors.pop_front();
        }
        self.last_floor_micros
    }

    /// Sets the batching knobs of `proposal` to the next arm once it has won for
    /// `hysteresis_intervals` intervals. Returns the current arm's prediction and whether
    /// the move explores.
    fn propose_batching(
        &mut self,
        config: &TuningConfig,
        context: Context,
        current_arm: Arm,
        load: Load,
        interval: u64,
        proposal: &mut Knobs,
    ) -> Option<(Prediction, bool)> {
        let objective: Objective = config.objective();
        let headroom = config.throughput_headroom_percent / 100.0;
        let margin = config.hysteresis_percent / 100.0;
        let rate = load.arrival_rate_per_second;
        let current = self
            .model
            .estimate(&self.grid, context, current_arm, current_arm, load);
        let gain = |estimate: &Prediction| {
            improvement(objective, &current.mean, estimate, rate, headroom, margin)
        };

        // Exploit, first greedily: the neighbour with the best predicted improvement.
        let mut greedy: Option<(Arm, f64)> = None;
        for arm in self.grid.neighbours(current_arm) {
            if !self.fits_memory(arm, proposal) {
                continue;
            }
            let estimate = self
                .model
                .estimate(&self.grid, context, arm, current_arm, load);
            let value = gain(&estimate.mean);
            if greedy.is_none_or(|(_, best)| value > best) {
                greedy = Some((arm, value));
            }
        }
        let mut step: Option<(Arm, bool)> = greedy
            .filter(|(_, value)| *value > margin)
            .map(|(arm, _)| (arm, false));

        // Then toward the best predicted arm farther away, one step at a time through
        // neighbours that the model does not predict to be worse than the margin.
        let mut target: Option<(Arm, f64)> = None;
        for arm in self.grid.window(current_arm, TARGET_RADIUS) {
            if arm == current_arm || !self.fits_memory(arm, proposal) {
                continue;
            }
            let estimate = self
                .model
                .estimate(&self.grid, context, arm, current_arm, load);
            let value = gain(&estimate.mean);
            if target.is_none_or(|(_, best)| value > best) {
                target = Some((arm, value));
            }
        }
        let goal = target.filter(|(_, value)| *value > margin && step.is_none());
        if let Some((goal, _)) = goal {
            let mut best_step: Option<(Arm, f64)> = None;
            for arm in self.grid.neighbours(current_arm) {
                if !approaches(current_arm, arm, goal) || !self.fits_memory(arm, proposal) {
                    continue;
                }
                let estimate = self
                    .model
                    .estimate(&self.grid, context, arm, current_arm, load);
                let value = gain(&estimate.mean);
                if value >= -margin && best_step.is_none_or(|(_, best)| value > best) {
                    best_step = Some((arm, value));
                }
            }
            step = best_step.map(|(arm, _)| (arm, false));
        }

        // Explore: the neighbour with the best optimistic prediction, if it beats the margin.
        if step.is_none() {
            let mut best: Option<(Arm, f64, f64)> = None;
            let mut ties = 0u64;
            for arm in self.grid.neighbours(current_arm) {
                if !self.fits_memory(arm, proposal) {
                    continue;
                }
                let estimate = self
                    .model
                    .estimate(&self.grid, context, arm, current_arm, load);
                let optimistic = gain(&estimate.optimistic);
                let expected = gain(&estimate.mean);
                match best {
                    Some((_, score, _)) if optimistic < score => {}
                    Some((_, score, _)) if optimistic == score => {
                        // Break exact ties uniformly with the seeded generator.
                        ties += 1;
                        if self.rng.below(ties + 1) == 0 {
                            best = Some((arm, optimistic, expected));
                        }
                    }
                    _ => {
                        ties = 0;
                        best = Some((arm, optimistic, expected));
                    }
                }
            }
            step = best
                .filter(|(_, optimistic, _)| *optimistic > margin)
                .map(|(arm, _, expected)| (arm, expected <= margin));
        }

        let streak = advance_streak(&mut self.pending_arm, step.map(|(arm, _)| arm));
        let (arm, exploring) = step?;
        let allowed = [
            Knob::LingerMicros,
            Knob::BatchEntriesMax,
            Knob::InflightAppendsMax,
        ]
        .iter()
        .all(|&knob| self.guard.may_change(knob, interval));
        if streak < config.hysteresis_intervals || !allowed {
            return None;
        }
        *proposal = self.knobs_for(arm, proposal);
        Some((current.mean, exploring))
    }

    fn fits_memory(&self, arm: Arm, base: &Knobs) -> bool {
        self.guard.rules().memory_fits(&self.knobs_for(arm, base))
    }

    fn knobs_for(&self, arm: Arm, base: &Knobs) -> Knobs {
        let setting = self.grid.setting(arm);
        Knobs {
            linger_micros: setting.linger_micros,
            batch_entries_max: setting.batch_entries_max,
            batch_bytes_max: self.guard.rules().bounds.batch_bytes_max.clamp(
                setting
                    .batch_entries_max
                    .saturating_mul(self.bytes_per_entry),
            ),
            inflight_appends_max: setting.inflight_appends_max,
            // TODO: no read-path samples exist yet, so read_batch_max keeps its static value.
            ..*base
        }
    }

    // NOTE: the tuner only lowers timing here. After a forced raise the heartbeat keeps its
    // old value, which is safe but sends more heartbeats than the static ratio would.
    /// Lowers the group timing toward the floor envelope once the current election timeout
    /// has exceeded it by the margin for long enough.
    fn propose_timing(&mut self, config: &TuningConfig, interval: u64, proposal: &mut Knobs) {
        let rules = self.guard.rules();
        let bounds = rules.bounds;
        let envelope = self.floors.iter().copied().max().unwrap_or(0);
        let desired = bounds
            .election_timeout_min_micros
            .clamp(saturating_u64(envelope as f64 * FORCED_RAISE_HEADROOM));
        let current = *self.guard.current();
        let margin = 1.0 + config.hysteresis_percent / 100.0;
        let lower = (current.election_timeout_min_micros as f64) > desired as f64 * margin;
        let streak = advance_streak(&mut self.pending_timing, lower.then_some(desired));
        let allowed = [
            Knob::HeartbeatIntervalMicros,
            Knob::ElectionTimeoutMinMicros,
            Knob::ElectionTimeoutMaxMicros,
        ]
        .iter()
        .all(|&knob| self.guard.may_change(knob, interval));
        if !lower || streak < config.hysteresis_intervals || !allowed {
            return;
        }
        // Step the min first, then derive the others from it, so the shape holds after the
        // guard's per-knob step limit.
        let ratio = rules.step_ratio_max.max(2);
        let min = desired.max(current.election_timeout_min_micros / ratio);
        let heartbeat = bounds
            .heartbeat_interval_micros
            .clamp(min / self.heartbeat_divisor)
            .min(current.heartbeat_interval_micros);
        let max_floor = rules.election_timeout_max_floor_micros(min);
        let max = bounds
            .election_timeout_max_micros
            .clamp(saturating_u64(min as f64 * self.election_max_ratio).max(max_floor));
        proposal.election_timeout_min_micros = min;
        proposal.heartbeat_interval_micros = heartbeat;
        proposal.election_timeout_max_micros = max;
    }
}

#[cfg(test)]
mod tests;
