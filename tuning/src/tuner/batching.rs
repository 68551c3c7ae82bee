//! The batching policy of an enabled tuner: which arm to move to next, and the
//! bookkeeping of the trial that follows every move.

use super::reason::Basis;
use super::trial::{ArmRecord, Observation, Trial, Verdict};
use super::{Active, Measurement, advance_streak};
use crate::config::{Objective, TuningConfig};
use crate::knobs::{Knob, Knobs};
use crate::model::grid::Arm;
use crate::model::objective::improvement;
use crate::model::{Context, Load, Prediction};

/// The minimum number of intervals between two exploratory moves.
pub const EXPLORATION_SPACING_INTERVALS: u64 = 20;

/// The next arm a batching proposal moves to, with the predictions behind it.
#[derive(Debug, Clone, Copy)]
struct Step {
    arm: Arm,
    candidate: Prediction,
    /// The prediction of the farther arm this step heads for, if any.
    goal: Option<Prediction>,
    exploring: bool,
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

impl Active {
    /// Adds one measured interval of `arm` to its record and to the trial in progress.
    pub(super) fn observe_arm(
        &mut self,
        arm: Arm,
        load: Load,
        measured: &Measurement,
        saturated: bool,
    ) {
        let observation = |reference: Arm| {
            let prior = self.model.prior(&self.grid, reference, load);
            let p99 = (measured.commit_p99_micros as f64).max(1.0);
            Observation {
                log_p99_excess: (p99 / prior.p99_micros.max(1.0)).ln(),
                log_p99: p99.ln(),
                log_commit_rate: measured.commit_rate_per_second.max(1.0).ln(),
                saturated,
            }
        };
        if self.record.arm != arm {
            self.record = ArmRecord::new(arm);
        }
        let own = observation(arm);
        self.record.add(&own);
        let trial_from = self
            .trial
            .as_ref()
            .filter(|trial| trial.to == arm)
            .map(|trial| trial.from);
        if let Some(from) = trial_from {
            let relative = observation(from);
            if let Some(trial) = self.trial.as_mut() {
                trial.add(&relative);
            }
        }
    }

    /// Starts measuring the arm now in force after a batching move, and remembers a
    /// rejected arm after a move back.
    pub(super) fn after_move(
        &mut self,
        config: &TuningConfig,
        basis: Option<&Basis>,
        now_arm: Arm,
        measured: &Measurement,
        interval: u64,
    ) {
        match basis {
            Some(Basis::Measured { .. }) => {
                if let Some(trial) = self.trial.take() {
                    self.rejections
                        .add(trial.to, measured.arrival_rate_per_second, interval);
                }
            }
            Some(Basis::Predicted { exploring, .. }) => {
                if *exploring {
                    self.last_exploration = Some(interval);
                }
                let needed = config.hysteresis_intervals.max(2);
                self.trial = Trial::start(&self.record, now_arm, interval, needed);
            }
            None => self.trial = None,
        }
        self.record = ArmRecord::new(now_arm);
    }

    /// Returns whether every batching knob may change in `interval`.
    fn batching_allowed(&self, interval: u64) -> bool {
        [
            Knob::LingerMicros,
            Knob::BatchEntriesMax,
            Knob::InflightAppendsMax,
        ]
        .iter()
        .all(|&knob| self.guard.may_change(knob, interval))
    }

    /// Returns whether `arm` may be a candidate: it fits the memory budget and no recent
    /// trial rejected it at a similar rate.
    fn is_candidate(&self, arm: Arm, base: &Knobs, rate: f64, interval: u64) -> bool {
        self.fits_memory(arm, base) && !self.rejections.contains(arm, rate, interval)
    }

    /// Sets the batching knobs of `proposal` to the next arm once it has won for
    /// `hysteresis_intervals` intervals, or back to the previous arm when the last move
    /// measured worse. Returns the comparison behind the move.
    pub(super) fn propose_batching(
        &mut self,
        config: &TuningConfig,
        context: Context,
        current_arm: Arm,
        measured: &Measurement,
        interval: u64,
        proposal: &mut Knobs,
    ) -> Option<Basis> {
        let objective: Objective = config.objective();
        let headroom = config.throughput_headroom_percent / 100.0;
        let margin = config.hysteresis_percent / 100.0;
        let load = measured.load();
        let rate = load.arrival_rate_per_second;

        // A move under trial is judged on measurements before anything else may move.
        if let Some(trial) = &self.trial {
            match trial.verdict(objective, margin, interval) {
                Verdict::Pending => {
                    self.pending_arm = None;
                    return None;
                }
                Verdict::Accepted => self.trial = None,
                Verdict::Rejected {
                    from,
                    trial_p99_micros,
                    previous_p99_micros,
                } => {
                    self.pending_arm = None;
                    if !self.batching_allowed(interval) {
                        return None;
                    }
                    *proposal = self.knobs_for(from, proposal);
                    return Some(Basis::Measured {
                        trial_p99_micros,
                        previous_p99_micros,
                    });
                }
            }
        }

        let current = self
            .model
            .estimate(&self.grid, context, current_arm, current_arm, load);
        let gain = |estimate: &Prediction| {
            improvement(objective, &current.mean, estimate, rate, headroom, margin)
        };

        // Exploit, first greedily: the neighbour with the best predicted improvement.
        let mut greedy: Option<(Arm, Prediction, f64)> = None;
        for arm in self.grid.neighbours(current_arm) {
            if !self.is_candidate(arm, proposal, rate, interval) {
                continue;
            }
            let estimate = self
                .model
                .estimate(&self.grid, context, arm, current_arm, load);
            let value = gain(&estimate.mean);
            if greedy.is_none_or(|(_, _, best)| value > best) {
                greedy = Some((arm, estimate.mean, value));
            }
        }
        let mut step: Option<Step> =
            greedy
                .filter(|(_, _, value)| *value > margin)
                .map(|(arm, candidate, _)| Step {
                    arm,
                    candidate,
                    goal: None,
                    exploring: false,
                });

        // Then toward the best predicted arm farther away, one step at a time through
        // neighbours that the model predicts worse by at most the margin, so a valley of
        // the prior between two arms can be crossed.
        let mut target: Option<(Arm, Prediction, f64)> = None;
        for arm in self.grid.window(current_arm, TARGET_RADIUS) {
            if arm == current_arm || !self.is_candidate(arm, proposal, rate, interval) {
                continue;
            }
            let estimate = self
                .model
                .estimate(&self.grid, context, arm, current_arm, load);
            let value = gain(&estimate.mean);
            if target.is_none_or(|(_, _, best)| value > best) {
                target = Some((arm, estimate.mean, value));
            }
        }
        let goal = target.filter(|(_, _, value)| *value > margin && step.is_none());
        if let Some((goal, goal_prediction, _)) = goal {
            let mut best_step: Option<(Arm, Prediction, f64)> = None;
            for arm in self.grid.neighbours(current_arm) {
                if !approaches(current_arm, arm, goal)
                    || !self.is_candidate(arm, proposal, rate, interval)
                {
                    continue;
                }
                let estimate = self
                    .model
                    .estimate(&self.grid, context, arm, current_arm, load);
                let value = gain(&estimate.mean);
                if value >= -margin && best_step.is_none_or(|(_, _, best)| value > best) {
                    best_step = Some((arm, estimate.mean, value));
                }
            }
            step = best_step.map(|(arm, candidate, _)| Step {
                arm,
                candidate,
                goal: Some(goal_prediction),
                exploring: false,
            });
        }

        // Explore: the neighbour with the best optimistic prediction, if it beats the margin
        // and the model predicts it no worse than the arm in force.
        if step.is_none() && self.may_explore(objective, measured, interval) {
            let mut best: Option<(Arm, Prediction, f64, f64)> = None;
            let mut ties = 0u64;
            for arm in self.grid.neighbours(current_arm) {
                if !self.is_candidate(arm, proposal, rate, interval) {
                    continue;
                }
                let estimate = self
                    .model
                    .estimate(&self.grid, context, arm, current_arm, load);
                let expected = gain(&estimate.mean);
                if expected < 0.0 {
                    continue;
                }
                let optimistic = gain(&estimate.optimistic);
                match best {
                    Some((_, _, score, _)) if optimistic < score => {}
                    Some((_, _, score, _)) if optimistic == score => {
                        // Break exact ties uniformly with the seeded generator.
                        ties += 1;
                        if self.rng.below(ties + 1) == 0 {
                            best = Some((arm, estimate.mean, optimistic, expected));
                        }
                    }
                    _ => {
                        ties = 0;
                        best = Some((arm, estimate.mean, optimistic, expected));
                    }
                }
            }
            step = best
                .filter(|(_, _, optimistic, _)| *optimistic > margin)
                .map(|(arm, candidate, _, expected)| Step {
                    arm,
                    candidate,
                    goal: None,
                    exploring: expected <= margin,
                });
        }

        let streak = advance_streak(&mut self.pending_arm, step.map(|step| step.arm));
        let step = step?;
        if streak < config.hysteresis_intervals || !self.batching_allowed(interval) {
            return None;
        }
        *proposal = self.knobs_for(step.arm, proposal);
        Some(Basis::Predicted {
            current: current.mean,
            candidate: step.candidate,
            goal: step.goal,
            exploring: step.exploring,
        })
    }

    /// Returns whether an exploratory move may start in `interval`: the last one is at least
    /// [`EXPLORATION_SPACING_INTERVALS`] intervals old, and the measured p99 misses the
    /// latency objective's target.
    fn may_explore(&self, objective: Objective, measured: &Measurement, interval: u64) -> bool {
        let spaced = self
            .last_exploration
            .is_none_or(|last| interval.saturating_sub(last) >= EXPLORATION_SPACING_INTERVALS);
        let meets_target = match objective {
            Objective::Latency { p99_target_micros } => {
                measured.commits > 0 && measured.commit_p99_micros <= p99_target_micros
            }
            Objective::Throughput => false,
        };
        spaced && !meets_target
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
            // `read_batch_max` and the timing knobs lie outside the arm grid: the read
            // policy (`reads.rs`) and the timing rules set them, so they keep `base`'s.
            ..*base
        }
    }
}
