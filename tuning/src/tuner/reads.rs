//! The read batching policy: how many linearizable reads may wait for the ReadIndex round
//! in flight instead of starting a round of their own (`read_batch_max`).
//!
//! A leader confirms reads in rounds: one heartbeat to every voter, then a quorum of
//! acknowledgements, which take about one quorum round trip `r`. With `read_batch_max` = 1 every
//! batch of reads starts a round at once, so a read waits about `r`, and at `λ` reads per
//! second the leader sends up to `λ` rounds per second (bounded by its loop turns), each a
//! message to and from every voter. With a larger `b`, reads that arrive while a round is in
//! flight wait for its acknowledgements and then go out together: while fewer than `b` reads wait,
//! one round at most is in flight. Rounds then drop to about `1 / r` per second, each
//! carrying `λ·r` reads, and a read waits up to one more round trip (half of one on average).
//!
//! Which is better depends on what the shard's executor has to spare. While it has idle
//! time, the extra messages delay nothing and the lowest latency wins: `b` = 1. Once it is
//! busy for [`BUSY_FRACTION_HOLD`] of the interval or more, the messages of extra rounds take
//! CPU time from everything else, and the throughput objective prefers fewer messages
//! whatever the load. Holding pays only when at least [`READS_PER_ROUND_TRIP_MIN`] reads
//! arrive per round trip; below that, rounds are rare anyway. The target is then the
//! expected reads per round trip, `ceil(λ·r)`: one round in flight covers the reads that
//! arrive during its own round trip, and a burst beyond that starts another round rather
//! than wait.
//!
//! This is a queueing argument, not a learned model: reads have no latency measurement of
//! their own in the samples, and the trade-off has one parameter that follows from two
//! measured values. A move happens when the target differs from the value in force by a
//! factor of at least [`CHANGE_RATIO_MIN`] (or returns to the minimum) in the same direction
//! for `hysteresis_intervals` consecutive intervals, and then passes the guard's rate, step
//! and bound rules like every other knob.

use super::decision::Measurement;
use super::{Active, Pending, advance_streak};
use crate::config::{ObjectiveKind, TuningConfig};
use crate::knobs::Knobs;

/// The executor busy fraction from which extra read rounds cost time that other work needs.
pub const BUSY_FRACTION_HOLD: f64 = 0.8;

/// Reads per quorum round trip below which holding reads saves too few rounds to matter.
pub const READS_PER_ROUND_TRIP_MIN: f64 = 2.0;

/// The smallest ratio between the target and the value in force that is worth a move.
pub const CHANGE_RATIO_MIN: f64 = 2.0;

/// The measurements behind a read batching move, for its logged reason.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct ReadBasis {
    pub reads_per_second: f64,
    pub round_trip_micros: f64,
    pub busy_fraction: f64,
}

impl ReadBasis {
    fn reads_per_round_trip(&self) -> f64 {
        self.reads_per_second * self.round_trip_micros / 1e6
    }
}

/// The direction of a pending move, so that a target that varies from one interval to the
/// next still counts as one streak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Up,
    Down,
}

/// Returns the unclamped `read_batch_max` that `basis` calls for under `objective`.
pub(super) fn read_batch_target(objective: ObjectiveKind, basis: &ReadBasis) -> u64 {
    let per_round_trip = basis.reads_per_round_trip();
    let executor_needs_time = match objective {
        ObjectiveKind::Throughput => true,
        ObjectiveKind::Latency => basis.busy_fraction >= BUSY_FRACTION_HOLD,
    };
    if executor_needs_time && per_round_trip >= READS_PER_ROUND_TRIP_MIN {
        // Finite and at least 2 here; the cast saturates at u64::MAX.
        per_round_trip.ceil() as u64
    } else {
        1
    }
}

impl Active {
    /// Sets `proposal.read_batch_max` when the read policy's target has called for a move
    /// long enough, and returns the measurements behind it.
    pub(super) fn propose_read_batch(
        &mut self,
        config: &TuningConfig,
        measured: &Measurement,
        round_trip_micros: Option<f64>,
        proposal: &mut Knobs,
    ) -> Option<ReadBasis> {
        let Some(round_trip_micros) = round_trip_micros else {
            self.pending_read_batch = None;
            return None;
        };
        let basis = ReadBasis {
            reads_per_second: measured.read_rate_per_second,
            round_trip_micros,
            busy_fraction: measured.busy_fraction,
        };
        let bounds = config.bounds.read_batch_max;
        let target = bounds.clamp(read_batch_target(config.objective, &basis));
        let current = self.guard.current().read_batch_max;
        let ratio = target.max(current) as f64 / target.min(current).max(1) as f64;
        let direction = if target == current || (ratio < CHANGE_RATIO_MIN && target != bounds.min) {
            None
        } else if target > current {
            Some(Direction::Up)
        } else {
            Some(Direction::Down)
        };
        let streak = advance_streak(&mut self.pending_read_batch, direction);
        if direction.is_none() || streak < config.hysteresis_intervals.max(1) {
            return None;
        }
        proposal.read_batch_max = target;
        Some(basis)
    }

    /// Forgets a pending read batching move once a change was applied.
    pub(super) fn read_batch_moved(&mut self) {
        self.pending_read_batch = None::<Pending<Direction>>;
    }
}

/// Describes a `read_batch_max` change from `from` to `to` made on `basis`.
pub(super) fn describe(from: u64, to: u64, basis: Option<&ReadBasis>) -> String {
    let head = format!("read_batch_max {from} → {to}");
    let Some(basis) = basis else {
        return head;
    };
    let busy = basis.busy_fraction * 100.0;
    let rate = super::reason::format_rate(basis.reads_per_second);
    let round_trip = super::reason::format_micros(basis.round_trip_micros);
    let per_round_trip = basis.reads_per_round_trip();
    if to > from {
        format!(
            "{head}: reads {rate} × quorum round trip {round_trip} = {per_round_trip:.0} per \
             round trip, executor busy {busy:.0} %, so reads wait for the round in flight \
             and fewer heartbeats confirm them"
        )
    } else {
        format!(
            "{head}: reads {rate}, {per_round_trip:.1} per round trip of {round_trip}, \
             executor busy {busy:.0} %, so each batch of reads starts its round at once"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis(reads_per_second: f64, round_trip_micros: f64, busy_fraction: f64) -> ReadBasis {
        ReadBasis {
            reads_per_second,
            round_trip_micros,
            busy_fraction,
        }
    }

    #[test]
    fn target_is_one_on_an_idle_executor() {
        let idle = basis(100_000.0, 1_000.0, 0.3);
        assert_eq!(read_batch_target(ObjectiveKind::Latency, &idle), 1);
    }

    #[test]
    fn target_covers_one_round_trip_when_busy() {
        // 20,000 reads/s over a 1.5 ms round trip: 30 reads arrive per round trip.
        let busy = basis(20_000.0, 1_500.0, 0.95);
        assert_eq!(read_batch_target(ObjectiveKind::Latency, &busy), 30);
    }

    #[test]
    fn target_under_throughput_ignores_idle_time() {
        let idle = basis(20_000.0, 1_500.0, 0.1);
        assert_eq!(read_batch_target(ObjectiveKind::Throughput, &idle), 30);
    }

    #[test]
    fn target_is_one_for_rare_reads() {
        // One read per round trip: holding would save nothing.
        let rare = basis(1_000.0, 1_000.0, 1.0);
        assert_eq!(read_batch_target(ObjectiveKind::Throughput, &rare), 1);
    }

    #[test]
    fn target_saturates_on_extreme_values() {
        let extreme = basis(f64::MAX, f64::MAX, 1.0);
        assert_eq!(
            read_batch_target(ObjectiveKind::Latency, &extreme),
            u64::MAX
        );
    }

    #[test]
    fn describe_names_the_measurements() {
        let reason = describe(1, 30, Some(&basis(20_000.0, 1_500.0, 0.95)));
        assert_eq!(
            reason,
            "read_batch_max 1 → 30: reads 20k/s × quorum round trip 1.5 ms = 30 per round \
             trip, executor busy 95 %, so reads wait for the round in flight and fewer \
             heartbeats confirm them"
        );
    }
}
