//! The settings the tuner controls ([`Knobs`]) and their configured limits ([`KnobBounds`]).
//!
//! The knobs fall into two groups that change on different paths. The batching knobs
//! ([`BatchingKnobs`]) are local to the leader and may change every few intervals. The
//! timing knobs ([`TimingKnobs`]) must agree on every node, so the engine carries their
//! changes through the Raft log and the tuner changes them rarely.
//!
//! This module only describes the values. The rules that every change must satisfy live in
//! [`crate::safety`].

use serde::Deserialize;
use std::fmt;

/// Every setting the tuner controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Knobs {
    /// Entries per AppendEntries message.
    pub batch_entries_max: u64,
    /// Payload bytes per AppendEntries message.
    pub batch_bytes_max: u64,
    /// How long the leader waits before flushing a batch that is not full; 0 flushes at once.
    pub linger_micros: u64,
    /// AppendEntries messages in flight per peer (pipelining depth).
    pub inflight_appends_max: u64,
    /// Linearizable reads that start a ReadIndex round while an earlier round awaits its
    /// quorum; fewer wait for it and join the next round.
    pub read_batch_max: u64,
    pub heartbeat_interval_micros: u64,
    pub election_timeout_min_micros: u64,
    pub election_timeout_max_micros: u64,
}

/// The leader-local batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchingKnobs {
    pub batch_entries_max: u64,
    pub batch_bytes_max: u64,
    pub linger_micros: u64,
    pub inflight_appends_max: u64,
    pub read_batch_max: u64,
}

/// The group timing settings, which all nodes of a group must share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimingKnobs {
    pub heartbeat_interval_micros: u64,
    pub election_timeout_min_micros: u64,
    pub election_timeout_max_micros: u64,
}

/// A group timing in whole ticks of the Raft core's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimingTicks {
    pub heartbeat_interval_ticks: u32,
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
}

impl TimingKnobs {
    /// Converts the timing to ticks of `tick_micros`. The election timeout rounds up and
    /// the heartbeat down, so neither moves toward an election sooner than the tuner chose.
    /// The result is always a timing the core accepts: a minimum of at least 3 ticks, a
    /// heartbeat of 1 tick up to a third of the minimum, and a maximum above the minimum.
    pub fn in_ticks(&self, tick_micros: u64) -> TimingTicks {
        let tick_micros = tick_micros.max(1);
        let ticks_up =
            |micros: u64| u32::try_from(micros.div_ceil(tick_micros)).unwrap_or(u32::MAX);
        let min = ticks_up(self.election_timeout_min_micros).clamp(3, u32::MAX - 1);
        let heartbeat = u32::try_from(self.heartbeat_interval_micros / tick_micros)
            .unwrap_or(u32::MAX)
            .clamp(1, min / 3);
        let max = ticks_up(self.election_timeout_max_micros).max(min + 1);
        TimingTicks {
            heartbeat_interval_ticks: heartbeat,
            election_timeout_ticks_min: min,
            election_timeout_ticks_max: max,
        }
    }
}

impl Knobs {
    /// Returns the batching group.
    pub fn batching(&self) -> BatchingKnobs {
        BatchingKnobs {
            batch_entries_max: self.batch_entries_max,
            batch_bytes_max: self.batch_bytes_max,
            linger_micros: self.linger_micros,
            inflight_appends_max: self.inflight_appends_max,
            read_batch_max: self.read_batch_max,
        }
    }

    /// Returns the timing group.
    pub fn timing(&self) -> TimingKnobs {
        TimingKnobs {
            heartbeat_interval_micros: self.heartbeat_interval_micros,
            election_timeout_min_micros: self.election_timeout_min_micros,
            election_timeout_max_micros: self.election_timeout_max_micros,
        }
    }

    /// Returns the value of `knob`.
    pub fn get(&self, knob: Knob) -> u64 {
        match knob {
            Knob::BatchEntriesMax => self.batch_entries_max,
            Knob::BatchBytesMax => self.batch_bytes_max,
            Knob::LingerMicros => self.linger_micros,
            Knob::InflightAppendsMax => self.inflight_appends_max,
            Knob::ReadBatchMax => self.read_batch_max,
            Knob::HeartbeatIntervalMicros => self.heartbeat_interval_micros,
            Knob::ElectionTimeoutMinMicros => self.election_timeout_min_micros,
            Knob::ElectionTimeoutMaxMicros => self.election_timeout_max_micros,
        }
    }

    /// Sets `knob` to `value`; only [`crate::safety`] calls this on the tuner's knobs.
    pub fn set(&mut self, knob: Knob, value: u64) {
        let slot = match knob {
            Knob::BatchEntriesMax => &mut self.batch_entries_max,
            Knob::BatchBytesMax => &mut self.batch_bytes_max,
            Knob::LingerMicros => &mut self.linger_micros,
            Knob::InflightAppendsMax => &mut self.inflight_appends_max,
            Knob::ReadBatchMax => &mut self.read_batch_max,
            Knob::HeartbeatIntervalMicros => &mut self.heartbeat_interval_micros,
            Knob::ElectionTimeoutMinMicros => &mut self.election_timeout_min_micros,
            Knob::ElectionTimeoutMaxMicros => &mut self.election_timeout_max_micros,
        };
        *slot = value;
    }
}

impl Default for Knobs {
    /// Returns conservative static values: no linger, modest batches, a ReadIndex round for
    /// every batch of reads, 50 ms heartbeats and a 500–1000 ms election timeout.
    fn default() -> Self {
        Self {
            batch_entries_max: 64,
            batch_bytes_max: 1 << 20,
            linger_micros: 0,
            inflight_appends_max: 4,
            read_batch_max: 1,
            heartbeat_interval_micros: 50_000,
            election_timeout_min_micros: 500_000,
            election_timeout_max_micros: 1_000_000,
        }
    }
}

/// One knob, for per-knob bookkeeping and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Knob {
    BatchEntriesMax,
    BatchBytesMax,
    LingerMicros,
    InflightAppendsMax,
    ReadBatchMax,
    HeartbeatIntervalMicros,
    ElectionTimeoutMinMicros,
    ElectionTimeoutMaxMicros,
}

impl Knob {
    /// Every knob, in a fixed order used for indexing.
    pub const ALL: [Knob; 8] = [
        Knob::BatchEntriesMax,
        Knob::BatchBytesMax,
        Knob::LingerMicros,
        Knob::InflightAppendsMax,
        Knob::ReadBatchMax,
        Knob::HeartbeatIntervalMicros,
        Knob::ElectionTimeoutMinMicros,
        Knob::ElectionTimeoutMaxMicros,
    ];

    /// Returns the position of this knob in [`Knob::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Returns the configuration key of this knob, as used in `tuning.bounds`.
    pub fn name(self) -> &'static str {
        match self {
            Knob::BatchEntriesMax => "batch_entries_max",
            Knob::BatchBytesMax => "batch_bytes_max",
            Knob::LingerMicros => "linger_micros",
            Knob::InflightAppendsMax => "inflight_appends_max",
            Knob::ReadBatchMax => "read_batch_max",
            Knob::HeartbeatIntervalMicros => "heartbeat_interval_micros",
            Knob::ElectionTimeoutMinMicros => "election_timeout_min_micros",
            Knob::ElectionTimeoutMaxMicros => "election_timeout_max_micros",
        }
    }

    /// Returns whether the knob belongs to the group timing, which changes through the log.
    pub fn is_timing(self) -> bool {
        matches!(
            self,
            Knob::HeartbeatIntervalMicros
                | Knob::ElectionTimeoutMinMicros
                | Knob::ElectionTimeoutMaxMicros
        )
    }

    /// Returns the smallest step the step limit always allows, so that a knob at 0 (or at a
    /// value whose half rounds to itself) can still move by one grid step.
    ///
    /// `read_batch_max` may jump by up to [`READ_BATCH_STEP_UNIT`]: its policy tries two
    /// values against each other, and a wrong value costs at most one round trip of read
    /// latency, never safety.
    pub fn step_unit(self) -> u64 {
        match self {
            Knob::BatchEntriesMax | Knob::InflightAppendsMax => 1,
            Knob::ReadBatchMax => READ_BATCH_STEP_UNIT,
            Knob::BatchBytesMax => 4_096,
            Knob::LingerMicros => LINGER_STEP_MICROS,
            Knob::HeartbeatIntervalMicros
            | Knob::ElectionTimeoutMinMicros
            | Knob::ElectionTimeoutMaxMicros => 1_000,
        }
    }
}

/// The step the step limit always allows `read_batch_max`.
pub const READ_BATCH_STEP_UNIT: u64 = 4_096;

/// The first linger step above 0 in the candidate grid, in microseconds.
pub const LINGER_STEP_MICROS: u64 = 25;

impl fmt::Display for Knob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An inclusive range `[min, max]` for one knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnobRange {
    pub min: u64,
    pub max: u64,
}

impl KnobRange {
    /// Creates the range `[min, max]`.
    pub const fn new(min: u64, max: u64) -> Self {
        Self { min, max }
    }

    /// Returns `value` moved into the range; an inverted range yields `min`.
    pub fn clamp(&self, value: u64) -> u64 {
        value.min(self.max).max(self.min)
    }

    /// Returns whether `value` lies in the range.
    pub fn contains(&self, value: u64) -> bool {
        self.min <= value && value <= self.max
    }
}

/// The configured hard limits of every knob (`tuning.bounds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnobBounds {
    pub batch_entries_max: KnobRange,
    pub batch_bytes_max: KnobRange,
    pub linger_micros: KnobRange,
    pub inflight_appends_max: KnobRange,
    pub read_batch_max: KnobRange,
    pub heartbeat_interval_micros: KnobRange,
    pub election_timeout_min_micros: KnobRange,
    pub election_timeout_max_micros: KnobRange,
}

impl Default for KnobBounds {
    fn default() -> Self {
        Self {
            batch_entries_max: KnobRange::new(1, 4_096),
            batch_bytes_max: KnobRange::new(4_096, 16 << 20),
            linger_micros: KnobRange::new(0, 2_000),
            inflight_appends_max: KnobRange::new(1, 64),
            read_batch_max: KnobRange::new(1, 4_096),
            heartbeat_interval_micros: KnobRange::new(1_000, 1_000_000),
            election_timeout_min_micros: KnobRange::new(10_000, 10_000_000),
            election_timeout_max_micros: KnobRange::new(15_000, 20_000_000),
        }
    }
}

impl KnobBounds {
    /// Returns the range of `knob`.
    pub fn get(&self, knob: Knob) -> KnobRange {
        match knob {
            Knob::BatchEntriesMax => self.batch_entries_max,
            Knob::BatchBytesMax => self.batch_bytes_max,
            Knob::LingerMicros => self.linger_micros,
            Knob::InflightAppendsMax => self.inflight_appends_max,
            Knob::ReadBatchMax => self.read_batch_max,
            Knob::HeartbeatIntervalMicros => self.heartbeat_interval_micros,
            Knob::ElectionTimeoutMinMicros => self.election_timeout_min_micros,
            Knob::ElectionTimeoutMaxMicros => self.election_timeout_max_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_and_set_round_trip() {
        let mut knobs = Knobs::default();
        for (i, knob) in Knob::ALL.into_iter().enumerate() {
            knobs.set(knob, 1_000 + i as u64);
        }
        for (i, knob) in Knob::ALL.into_iter().enumerate() {
            assert_eq!(knobs.get(knob), 1_000 + i as u64, "{knob}");
            assert_eq!(knob.index(), i);
        }
    }

    #[test]
    fn groups_split_the_knobs() {
        let knobs = Knobs::default();
        assert_eq!(knobs.batching().linger_micros, knobs.linger_micros);
        assert_eq!(
            knobs.timing().election_timeout_min_micros,
            knobs.election_timeout_min_micros
        );
        let timing = Knob::ALL.iter().filter(|knob| knob.is_timing()).count();
        assert_eq!(timing, 3);
    }

    #[test]
    fn range_clamps_into_bounds() {
        let range = KnobRange::new(10, 20);
        assert_eq!(range.clamp(5), 10);
        assert_eq!(range.clamp(25), 20);
        assert_eq!(range.clamp(15), 15);
        assert!(range.contains(10));
        assert!(!range.contains(21));
    }
}
