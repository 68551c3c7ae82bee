//! The read batching policy: how many linearizable reads may wait for the ReadIndex round
//! in flight instead of starting a round of their own (`read_batch_max`).
//!
//! A leader confirms reads in rounds: one heartbeat to every voter, then acknowledgements
//! from a quorum, which take about one quorum round trip `r`. With `read_batch_max` = 1
//! every batch of reads starts a round at once, so a read waits about `r`, and at `λ` reads
//! per second the leader sends up to `λ` rounds per second (bounded by its loop turns), each
//! a message to and from every voter. With a larger `b`, reads that arrive while a round is
//! in flight wait for its acknowledgements and then go out together: while fewer than `b`
//! reads wait, one round at most is in flight. Rounds then drop to about `1 / r` per second,
//! each carrying `λ·r` reads, and a read waits up to one more round trip.
//!
//! Which is better depends on whether the replicas' CPUs or the round trip limit the reads.
//! On the development machine, 90 % reads from 16 closed-loop clients ran 4 to 12 % slower
//! with `b` = 32 than with 1. With 256 clients one pair of runs was 21 % faster and another
//! 5 % slower. The shard's own busy fraction did not tell the cases apart (about 0.2 and
//! 0.3), because the replicas and the clients shared the CPUs. So the policy measures
//! instead of predicting. It chooses between two arms and tries the other one from time to
//! time. "At once" is the minimum. "Held" is `ceil(λ·r)`: one round in flight covers the
//! reads that arrive during its round trip, and a burst beyond that starts another round.
//!
//! 1. While at once, and once at least [`READS_PER_ROUND_TRIP_MIN`] reads arrive per round
//!    trip, it moves to the held arm after [`READ_TRIAL_SPACING_INTERVALS`] intervals at
//!    once. While held, it tries at once again every [`READ_RECHECK_INTERVALS`] intervals.
//! 2. A trial skips the first interval after the move and then averages the read rate of
//!    `hysteresis_intervals` intervals (at least 2) against the intervals before the move,
//!    counted from the last change of the read rate by [`CHANGE_RATIO_MIN`] or more.
//!    The trial arm stays if its read rate is higher by the `hysteresis_percent` margin. A
//!    read rate within the margin is a tie. The latency objective then compares the mean
//!    p99 read latency of the same intervals, counting those with at least
//!    [`READ_LATENCY_SAMPLES_MIN`] served reads. The trial arm stays if its p99 is lower
//!    by the margin, and loses if it is higher by the margin. A p99 within the margin, or
//!    too few samples, leaves the tie to the objective's preference: at once for latency,
//!    held for throughput. An arm that does not stay loses: the policy moves back and does
//!    not try that arm again for [`READ_REJECTION_INTERVALS`] intervals, unless the read
//!    rate changes by a factor of [`CHANGE_RATIO_MIN`] meanwhile (a new workload).
//! 3. While held, the value follows `ceil(λ·r)` when that differs by a factor of at least
//!    [`CHANGE_RATIO_MIN`], and drops to the minimum without a trial when fewer than
//!    [`READS_PER_ROUND_TRIP_MIN`] reads arrive per round trip.
//!
//! The read rate is a fair score for closed-loop clients, whose rate falls as their latency
//! rises, and for a saturated open-loop load. An open-loop load below saturation reads at
//! the same rate either way, which is a tie that the read latency decides. Every move passes the guard's rate limit and
//! bounds; the step limit lets this knob jump to its target (see [`Knob::step_unit`]).
//!
//! [`Knob::step_unit`]: crate::knobs::Knob::step_unit

use super::decision::Measurement;
use crate::config::{ObjectiveKind, TuningConfig};
use crate::knobs::KnobRange;

/// Reads per quorum round trip below which holding reads saves too few rounds to matter.
pub const READS_PER_ROUND_TRIP_MIN: f64 = 2.0;

/// The smallest ratio between the held target and the value in force that is worth a move.
pub const CHANGE_RATIO_MIN: f64 = 2.0;

/// Intervals at once before the held arm is tried.
pub const READ_TRIAL_SPACING_INTERVALS: u64 = 5;

/// Intervals held before at once is tried again.
pub const READ_RECHECK_INTERVALS: u64 = 60;

/// Intervals during which an arm that lost its trial is not tried again.
pub const READ_REJECTION_INTERVALS: u64 = 120;

/// Read rates kept from the intervals before a trial, to compare the trial against.
const BASELINE_INTERVALS: usize = 4;

/// Served reads an interval needs for its read p99 to count in a trial.
pub const READ_LATENCY_SAMPLES_MIN: u64 = 20;

/// The cause of a proposed move, for its logged reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum ReadMove {
    /// A trial of the other arm starts.
    Trial {
        reads_per_second: f64,
        round_trip_micros: f64,
    },
    /// The trial arm read slower than the arm before it, or as fast with a higher p99
    /// read latency, or tied where the objective prefers the arm before.
    Back {
        trial_reads_per_second: f64,
        before_reads_per_second: f64,
        /// Mean p99 read latencies of the trial and of the intervals before, when both
        /// had enough samples.
        read_p99_micros: Option<(f64, f64)>,
    },
    /// The held value follows the reads per round trip.
    Follow {
        reads_per_second: f64,
        round_trip_micros: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct ReadTrial {
    from: u64,
    to: u64,
    before_reads_per_second: f64,
    /// Mean p99 read latency of the intervals before, if enough of them had one.
    before_read_p99_micros: Option<f64>,
    /// Whether the first interval at the trial value has been skipped.
    settled: bool,
    rates: Vec<f64>,
    /// p99 read latencies of the trial's intervals that had enough samples.
    read_p99s_micros: Vec<f64>,
}

/// The state of the read batching policy of one tuner.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct ReadPolicy {
    /// Read rates measured at the value in force, newest last.
    recent_rates: Vec<f64>,
    /// p99 read latencies measured at the value in force, newest last, from intervals
    /// with at least [`READ_LATENCY_SAMPLES_MIN`] served reads.
    recent_read_p99s_micros: Vec<f64>,
    trial: Option<ReadTrial>,
    /// The interval of the last move, or of the policy's first interval.
    last_move: Option<u64>,
    /// The held arm, or at once, lost a trial: not tried again before the interval given,
    /// unless the read rate moved by [`CHANGE_RATIO_MIN`] from the rate given.
    held_rejected: Option<Rejection>,
    at_once_rejected: Option<Rejection>,
    /// The move proposed in this interval, confirmed by [`ReadPolicy::after_apply`].
    proposed: Option<(u64, ReadMove, Option<ReadTrial>)>,
    /// A move back after a lost trial that the guard has not accepted yet.
    back_pending: Option<(u64, ReadMove)>,
}

/// An arm that lost its trial, at a read rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rejection {
    until_interval: u64,
    reads_per_second: f64,
}

impl Rejection {
    /// Returns whether the rejection is still in force in `interval` at `reads_per_second`.
    fn holds(rejection: Option<Rejection>, interval: u64, reads_per_second: f64) -> bool {
        rejection.is_some_and(|rejection| {
            let (low, high) = if reads_per_second < rejection.reads_per_second {
                (reads_per_second, rejection.reads_per_second)
            } else {
                (rejection.reads_per_second, reads_per_second)
            };
            interval < rejection.until_interval && high < low * CHANGE_RATIO_MIN
        })
    }
}

/// Returns the held arm's value: the reads that arrive per round trip, rounded up, in
/// `bounds`, or `None` when fewer than [`READS_PER_ROUND_TRIP_MIN`] arrive.
fn held_value(reads_per_second: f64, round_trip_micros: f64, bounds: KnobRange) -> Option<u64> {
    let per_round_trip = reads_per_second * round_trip_micros / 1e6;
    if !per_round_trip.is_finite() || per_round_trip < READS_PER_ROUND_TRIP_MIN {
        return None;
    }
    // At least 2 here; the cast saturates at u64::MAX.
    Some(bounds.clamp(per_round_trip.ceil() as u64)).filter(|&value| value > bounds.min)
}

/// Returns the mean of the p99s of at least two intervals, or `None` with fewer.
fn latency_mean(p99s_micros: &[f64]) -> Option<f64> {
    (p99s_micros.len() >= 2).then(|| mean(p99s_micros))
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

impl ReadPolicy {
    /// Learns from one interval at `current` and returns the value to propose, if any.
    pub(super) fn propose(
        &mut self,
        config: &TuningConfig,
        measured: &Measurement,
        round_trip_micros: Option<f64>,
        current: u64,
        interval: u64,
    ) -> Option<u64> {
        self.proposed = None;
        if let Some((to, reason)) = self.back_pending.take()
            && to != current
        {
            self.proposed = Some((to, reason, None));
            return Some(to);
        }
        let last_move = *self.last_move.get_or_insert(interval);
        let rate = measured.read_rate_per_second;
        let bounds = config.bounds.read_batch_max;
        if let Some(trial) = self.trial.as_mut() {
            if current != trial.to {
                // The guard rejected or changed the move, so the trial never ran.
                self.trial = None;
            } else if !trial.settled {
                trial.settled = true;
                return None;
            } else {
                trial.rates.push(rate);
                if let Some(p99) = measured.read_p99_micros {
                    trial.read_p99s_micros.push(p99 as f64);
                }
                if (trial.rates.len() as u64) < config.hysteresis_intervals.max(2) {
                    return None;
                }
                return self.judge_trial(config, interval);
            }
        }

        // A read rate that moved by the change ratio is a new workload: the rates before it
        // would make any arm look better or worse than it is.
        let baseline = mean(&self.recent_rates);
        if !self.recent_rates.is_empty()
            && (rate >= baseline * CHANGE_RATIO_MIN || rate * CHANGE_RATIO_MIN <= baseline)
        {
            self.recent_rates.clear();
            self.recent_read_p99s_micros.clear();
        }
        self.recent_rates.push(rate);
        if self.recent_rates.len() > BASELINE_INTERVALS {
            self.recent_rates.remove(0);
        }
        if let Some(p99) = measured.read_p99_micros {
            self.recent_read_p99s_micros.push(p99 as f64);
            if self.recent_read_p99s_micros.len() > BASELINE_INTERVALS {
                self.recent_read_p99s_micros.remove(0);
            }
        }
        let round_trip_micros = round_trip_micros?;
        let held = held_value(rate, round_trip_micros, bounds);
        let since_move = interval.saturating_sub(last_move);
        let baseline_ready = self.recent_rates.len() as u64 >= config.hysteresis_intervals.max(2);
        let (to, trial) = match held {
            Some(held) if current == bounds.min => {
                if since_move < READ_TRIAL_SPACING_INTERVALS
                    || Rejection::holds(self.held_rejected, interval, rate)
                    || !baseline_ready
                {
                    return None;
                }
                (held, true)
            }
            Some(held) => {
                let ratio = held.max(current) as f64 / held.min(current).max(1) as f64;
                if ratio >= CHANGE_RATIO_MIN {
                    (held, false)
                } else if since_move >= READ_RECHECK_INTERVALS
                    && !Rejection::holds(self.at_once_rejected, interval, rate)
                    && baseline_ready
                {
                    (bounds.min, true)
                } else {
                    return None;
                }
            }
            None if current != bounds.min => (bounds.min, false),
            None => return None,
        };
        let reason = if trial {
            ReadMove::Trial {
                reads_per_second: rate,
                round_trip_micros,
            }
        } else {
            ReadMove::Follow {
                reads_per_second: rate,
                round_trip_micros,
            }
        };
        let trial = trial.then(|| ReadTrial {
            from: current,
            to,
            before_reads_per_second: mean(&self.recent_rates),
            before_read_p99_micros: latency_mean(&self.recent_read_p99s_micros),
            settled: false,
            rates: Vec::new(),
            read_p99s_micros: Vec::new(),
        });
        self.proposed = Some((to, reason, trial));
        Some(to)
    }

    /// Ends the trial in progress: keeps its arm, or proposes the move back.
    fn judge_trial(&mut self, config: &TuningConfig, interval: u64) -> Option<u64> {
        let trial = self.trial.take()?;
        let trial_rate = mean(&trial.rates);
        let before = trial.before_reads_per_second;
        let margin = config.hysteresis_percent / 100.0;
        let better = trial_rate > before * (1.0 + margin);
        let worse = trial_rate < before * (1.0 - margin);

        let trial_holds = trial.to > trial.from;
        let read_p99_micros =
            latency_mean(&trial.read_p99s_micros).zip(trial.before_read_p99_micros);
        let tie_prefers_trial = match (config.objective, read_p99_micros) {
            (ObjectiveKind::Latency, Some((trial_p99, before_p99)))
                if trial_p99 < before_p99 * (1.0 - margin) =>
            {
                true
            }
            (ObjectiveKind::Latency, Some((trial_p99, before_p99)))
                if trial_p99 > before_p99 * (1.0 + margin) =>
            {
                false
            }
            (ObjectiveKind::Latency, _) => !trial_holds,
            (ObjectiveKind::Throughput, _) => trial_holds,
        };
        if better || (!worse && tie_prefers_trial) {
            self.recent_rates = trial.rates;
            self.recent_read_p99s_micros = trial.read_p99s_micros;
            return None;
        }

        let rejection = Some(Rejection {
            until_interval: interval.saturating_add(READ_REJECTION_INTERVALS),
            reads_per_second: before,
        });
        if trial_holds {
            self.held_rejected = rejection;
        } else {
            self.at_once_rejected = rejection;
        }
        let reason = ReadMove::Back {
            trial_reads_per_second: trial_rate,
            before_reads_per_second: before,
            read_p99_micros,
        };
        self.proposed = Some((trial.from, reason, None));
        Some(trial.from)
    }

    /// Confirms the proposal of this interval once the guard applied `applied` (the new
    /// value, or `None` when `read_batch_max` did not change), and returns the reason of
    /// the move.
    pub(super) fn after_apply(&mut self, applied: Option<u64>, interval: u64) -> Option<ReadMove> {
        let (to, reason, trial) = self.proposed.take()?;
        if applied != Some(to) {
            if matches!(reason, ReadMove::Back { .. }) {
                // Proposed again at the next interval until the rate limit lets it pass.
                self.back_pending = Some((to, reason));
            }
            return None;
        }
        self.last_move = Some(interval);
        self.recent_rates.clear();
        self.recent_read_p99s_micros.clear();
        self.trial = trial;
        Some(reason)
    }
}

/// Describes a `read_batch_max` change from `from` to `to` made for `reason`.
pub(super) fn describe(from: u64, to: u64, reason: Option<&ReadMove>) -> String {
    let head = format!("read_batch_max {from} → {to}");
    let rate = super::reason::format_rate;
    let micros = super::reason::format_micros;
    match reason {
        None => head,
        Some(ReadMove::Trial {
            reads_per_second,
            round_trip_micros,
        }) => {
            let per_round_trip = reads_per_second * round_trip_micros / 1e6;
            format!(
                "{head}: reads {} × quorum round trip {} = {per_round_trip:.0} per round trip; \
                 trying whether {} serves more reads",
                rate(*reads_per_second),
                micros(*round_trip_micros),
                if to > from {
                    "holding reads for the round in flight"
                } else {
                    "a round per batch of reads"
                }
            )
        }
        Some(ReadMove::Back {
            trial_reads_per_second,
            before_reads_per_second,
            read_p99_micros,
        }) => {
            let latency = read_p99_micros.map_or_else(String::new, |(trial, before)| {
                format!(", read p99 {} against {}", micros(trial), micros(before))
            });
            format!(
                "{head}: reads {} on trial against {} before{latency} (moving back)",
                rate(*trial_reads_per_second),
                rate(*before_reads_per_second)
            )
        }
        Some(ReadMove::Follow {
            reads_per_second,
            round_trip_micros,
        }) => {
            let per_round_trip = reads_per_second * round_trip_micros / 1e6;
            format!(
                "{head}: reads {} × quorum round trip {} = {per_round_trip:.1} per round trip",
                rate(*reads_per_second),
                micros(*round_trip_micros)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUND_TRIP_MICROS: f64 = 500.0;

    fn config(objective: ObjectiveKind) -> TuningConfig {
        TuningConfig {
            enabled: true,
            objective,
            ..TuningConfig::default()
        }
    }

    fn reads(read_rate_per_second: f64) -> Measurement {
        Measurement {
            read_rate_per_second,
            ..Measurement::default()
        }
    }

    /// Runs the policy for `intervals` intervals with the read rate that `rate_at` gives
    /// for the value in force, applying every proposal at once, and returns the values in
    /// force after each interval with the reasons of the moves.
    fn run(
        config: &TuningConfig,
        policy: &mut ReadPolicy,
        start: u64,
        intervals: std::ops::Range<u64>,
        rate_at: impl Fn(u64) -> f64,
    ) -> (Vec<u64>, Vec<String>) {
        run_measured(config, policy, start, intervals, |value| {
            reads(rate_at(value))
        })
    }

    /// [`run`] with the whole measurement that `measured_at` gives for the value in force.
    fn run_measured(
        config: &TuningConfig,
        policy: &mut ReadPolicy,
        start: u64,
        intervals: std::ops::Range<u64>,
        measured_at: impl Fn(u64) -> Measurement,
    ) -> (Vec<u64>, Vec<String>) {
        let mut current = start;
        let mut values = Vec::new();
        let mut reasons = Vec::new();
        for interval in intervals {
            let measured = measured_at(current);
            let proposed = policy.propose(
                config,
                &measured,
                Some(ROUND_TRIP_MICROS),
                current,
                interval,
            );
            let applied = proposed.filter(|&to| to != current);
            if let Some(reason) = policy.after_apply(applied, interval) {
                reasons.push(describe(current, applied.unwrap_or(current), Some(&reason)));
            }
            current = applied.unwrap_or(current);
            values.push(current);
        }
        (values, reasons)
    }

    #[test]
    fn held_value_covers_one_round_trip() {
        let bounds = KnobRange::new(1, 4_096);

        assert_eq!(held_value(60_000.0, 500.0, bounds), Some(30));
        assert_eq!(held_value(2_000.0, 500.0, bounds), None);
        assert_eq!(held_value(f64::MAX, f64::MAX, bounds), None);
        assert_eq!(held_value(1e12, 1e6, bounds), Some(4_096));
    }

    #[test]
    fn held_arm_kept_when_it_reads_faster() {
        let config = config(ObjectiveKind::Latency);
        let mut policy = ReadPolicy::default();
        // 60,000 reads/s at once, 25 % more held: the CPUs were the limit.
        let rate_at = |value: u64| if value > 1 { 75_000.0 } else { 60_000.0 };

        let (values, reasons) = run(&config, &mut policy, 1, 0..40, rate_at);

        assert_eq!(values.last(), Some(&30), "{reasons:?}");
        assert!(reasons[0].contains("trying whether holding"), "{reasons:?}");
    }

    #[test]
    fn held_arm_undone_when_it_reads_slower() {
        let config = config(ObjectiveKind::Latency);
        let mut policy = ReadPolicy::default();
        // Holding costs 12 %: the round trip was the limit.
        let rate_at = |value: u64| if value > 1 { 52_800.0 } else { 60_000.0 };

        let (values, reasons) = run(&config, &mut policy, 1, 0..40, rate_at);

        assert_eq!(values.last(), Some(&1), "{reasons:?}");
        assert_eq!(reasons.len(), 2, "one trial and one move back: {reasons:?}");
        assert!(reasons[1].contains("moving back"), "{reasons:?}");
    }

    #[test]
    fn tie_goes_to_the_objective() {
        let flat = |_: u64| 60_000.0;

        let latency = config(ObjectiveKind::Latency);
        let (values, _) = run(&latency, &mut ReadPolicy::default(), 1, 0..40, flat);
        assert_eq!(values.last(), Some(&1), "latency keeps reads at once");

        let throughput = config(ObjectiveKind::Throughput);
        let (values, _) = run(&throughput, &mut ReadPolicy::default(), 1, 0..40, flat);
        assert_eq!(values.last(), Some(&30), "throughput keeps reads held");
    }

    /// 60,000 reads/s whatever the value, as from an open-loop load below saturation, with
    /// the p99 read latency `held_p99` held and `at_once_p99` at once.
    fn flat_rate_with_p99(held_p99: u64, at_once_p99: u64) -> impl Fn(u64) -> Measurement {
        move |value| Measurement {
            read_rate_per_second: 60_000.0,
            read_p99_micros: Some(if value > 1 { held_p99 } else { at_once_p99 }),
            ..Measurement::default()
        }
    }

    #[test]
    fn equal_rates_keep_lower_read_p99() {
        let config = config(ObjectiveKind::Latency);
        let (values, reasons) = run_measured(
            &config,
            &mut ReadPolicy::default(),
            1,
            0..40,
            flat_rate_with_p99(400, 800),
        );

        assert_eq!(values.last(), Some(&30), "{reasons:?}");
    }

    #[test]
    fn equal_rates_undo_higher_read_p99() {
        let config = config(ObjectiveKind::Latency);
        let (values, reasons) = run_measured(
            &config,
            &mut ReadPolicy::default(),
            1,
            0..40,
            flat_rate_with_p99(900, 600),
        );

        assert_eq!(values.last(), Some(&1), "{reasons:?}");
        assert!(
            reasons[1].contains("read p99 900 µs against 600 µs"),
            "{reasons:?}"
        );
    }

    #[test]
    fn throughput_objective_ignores_read_p99() {
        let config = config(ObjectiveKind::Throughput);
        let (values, reasons) = run_measured(
            &config,
            &mut ReadPolicy::default(),
            1,
            0..40,
            flat_rate_with_p99(900, 600),
        );

        assert_eq!(values.last(), Some(&30), "{reasons:?}");
    }

    #[test]
    fn held_arm_rechecked_after_the_workload_changes() {
        let config = config(ObjectiveKind::Latency);
        let mut policy = ReadPolicy::default();
        let heavy = |value: u64| if value > 1 { 75_000.0 } else { 60_000.0 };
        let (values, _) = run(&config, &mut policy, 1, 0..40, heavy);
        assert_eq!(values.last(), Some(&30));

        // Fewer clients: at once now reads 12 % faster, and 16 reads arrive per round trip.
        let light = |value: u64| if value > 1 { 28_000.0 } else { 32_000.0 };
        let (values, reasons) = run(&config, &mut policy, 30, 40..140, light);

        assert_eq!(values.last(), Some(&1), "{reasons:?}");
    }

    #[test]
    fn rejection_lapses_when_the_read_rate_changes() {
        let config = config(ObjectiveKind::Latency);
        let mut policy = ReadPolicy::default();
        let light = |value: u64| if value > 1 { 28_000.0 } else { 32_000.0 };
        let (values, _) = run(&config, &mut policy, 1, 0..20, light);
        assert_eq!(values.last(), Some(&1), "holding lost its trial");

        // Many more clients: five times the reads, and holding now serves more.
        let heavy = |value: u64| if value > 1 { 200_000.0 } else { 160_000.0 };
        let (values, reasons) = run(&config, &mut policy, 1, 20..40, heavy);

        assert_eq!(values.last(), Some(&80), "{reasons:?}");
    }

    #[test]
    fn baseline_restarts_with_a_new_workload() {
        let config = config(ObjectiveKind::Latency);
        let mut policy = ReadPolicy::default();
        let light = |value: u64| if value > 1 { 28_000.0 } else { 32_000.0 };
        let (values, _) = run(&config, &mut policy, 1, 0..20, light);
        assert_eq!(values.last(), Some(&1));

        // Five times the reads, and holding changes nothing: a tie, which the latency
        // objective gives to 1. Compared with the light intervals, holding would look
        // five times better.
        let (values, reasons) = run(&config, &mut policy, 1, 20..40, |_| 160_000.0);

        assert_eq!(values.last(), Some(&1), "{reasons:?}");
        assert!(
            reasons.iter().any(|reason| reason.contains("moving back")),
            "{reasons:?}"
        );
    }

    #[test]
    fn rejected_move_back_is_proposed_again() {
        let config = config(ObjectiveKind::Latency);
        let mut policy = ReadPolicy::default();
        let rate_at = |value: u64| if value > 1 { 52_800.0 } else { 60_000.0 };
        let mut current = 1;
        let mut rejected = 0;
        for interval in 0..20 {
            let measured = reads(rate_at(current));
            let proposed = policy.propose(
                &config,
                &measured,
                Some(ROUND_TRIP_MICROS),
                current,
                interval,
            );
            // The guard rejects the first two moves back to 1.
            let applied = match proposed {
                Some(1) if rejected < 2 => {
                    rejected += 1;
                    None
                }
                other => other.filter(|&to| to != current),
            };
            let _ = policy.after_apply(applied, interval);
            current = applied.unwrap_or(current);
        }

        assert_eq!(rejected, 2, "the move back was rejected twice");
        assert_eq!(current, 1, "the move back went through afterwards");
    }

    #[test]
    fn rare_reads_drop_to_the_minimum() {
        let config = config(ObjectiveKind::Throughput);
        let mut policy = ReadPolicy::default();
        // 1,000 reads/s over a 0.5 ms round trip: half a read per round trip.
        let (values, reasons) = run(&config, &mut policy, 30, 0..3, |_| 1_000.0);

        assert_eq!(values, [1, 1, 1], "{reasons:?}");
        assert!(reasons[0].ends_with("0.5 per round trip"), "{reasons:?}");
    }

    #[test]
    fn rejected_move_starts_no_trial() {
        let config = config(ObjectiveKind::Latency);
        let mut policy = ReadPolicy::default();
        let mut proposals = 0;
        for interval in 0..30 {
            let measured = reads(60_000.0);
            if policy
                .propose(&config, &measured, Some(ROUND_TRIP_MICROS), 1, interval)
                .is_some()
            {
                proposals += 1;
            }
            // The guard rejects every move.
            assert_eq!(policy.after_apply(None, interval), None);
        }

        assert!(policy.trial.is_none());
        assert!(proposals > 1, "the policy proposes again after a rejection");
    }
}
