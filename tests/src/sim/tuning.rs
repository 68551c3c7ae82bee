//! The engine's adaptive tuner inside simulated runs.
//!
//! A replica with a [`SimTuner`] runs the real [`Tuner`] on the virtual clock, as a shard
//! with `tuning.enabled` does. It measures heartbeat round trips to each peer, with one
//! open probe per peer as in the engine's transport, and the latency of each storage write.
//! Each interval it hands the samples to the tuner, and while it leads it proposes the
//! group timing the tuner chose through the log. So the tuner's timing meets partitions,
//! message loss, delay spikes, disk stalls and crashes, and the run's checks (safety, and
//! no election while the healed cluster is healthy) judge what it chose.
//!
//! Only the timing is applied. The tuner's batching decisions need commit samples from a
//! real load to mean anything, and they change no election.

use std::collections::BTreeMap;

use shardraft_raft::{Config, GroupTiming, Message, MessageBody, NodeId};
use shardraft_tuning::{KnobBounds, KnobRange, Knobs, SampleCollector, Tuner, TuningConfig};

use super::params::TICK_US;

/// Virtual length of one tuning interval. The engine's default is 1 s, which would leave
/// a run of a few seconds with only the tuner's first decisions.
pub const TUNING_INTERVAL_US: u64 = 100_000;

/// Intervals between two timing changes that lower the timing. The engine's default of
/// 30 would let a run lower it once at most, while 5 lowers it several times per run.
const TIMING_CHANGE_INTERVALS_MIN: u64 = 5;

/// Multiple of p99.9 round trip plus p99.9 write latency below which the election timeout
/// never goes. It is lower than the engine's default of 10, so the tuner's timing runs
/// closer to the messages' delays, and an election it causes shows sooner.
const SAFETY_FACTOR: f64 = 3.0;

/// Largest election timeout range the tuner may choose. The simulated disk stalls for up
/// to 200 ms and links spike by up to 300 ms, so the floor often exceeds it and the tuner
/// settles at these values. Higher ones would keep a group that lost its leader without
/// one past the run's liveness bound of 3 s.
const ELECTION_TIMEOUT_MIN_MICROS_MAX: u64 = 1_000_000;
const ELECTION_TIMEOUT_MAX_MICROS_MAX: u64 = 2_000_000;

/// One replica's tuner and the measurements it is fed.
#[derive(Debug)]
pub struct SimTuner {
    tuner: Tuner,
    collector: SampleCollector,
    next_interval_us: u64,
    /// Send time of the heartbeat probe open to each peer: the first heartbeat sent while
    /// none was open. The next heartbeat response from that peer closes it. A probe whose
    /// heartbeat was lost stays open until a later response, which then counts long. The
    /// engine's links lose no single message: they drop the probe with the connection. So
    /// the simulated round trips, and the floors they set, err high.
    probes: BTreeMap<NodeId, u64>,
    /// The timing the tuner chose, in ticks, once it chose one.
    timing: Option<GroupTiming>,
}

impl SimTuner {
    /// Starts a tuner from the settings of `config`, with `followers` peers to replicate to.
    ///
    /// # Errors
    /// Returns the tuner's message when the static settings break one of its rules.
    pub fn new(
        config: &Config,
        followers: usize,
        seed: u64,
        now_us: u64,
    ) -> Result<SimTuner, String> {
        let ticks = |count: u32| u64::from(count) * TICK_US;
        let static_knobs = Knobs {
            batch_entries_max: config.max_entries_per_message as u64,
            batch_bytes_max: config.max_bytes_per_message,
            linger_micros: 0,
            inflight_appends_max: config.max_inflight_messages as u64,
            read_batch_max: config.read_batch_max as u64,
            heartbeat_interval_micros: ticks(config.heartbeat_interval_ticks),
            election_timeout_min_micros: ticks(config.election_timeout_ticks_min),
            election_timeout_max_micros: ticks(config.election_timeout_ticks_max),
        };
        let tuning = TuningConfig {
            enabled: true,
            interval_ms: TUNING_INTERVAL_US / 1_000,
            // The simulator draws messages of as few as 64 bytes, below the engine's lower
            // bound of 4 KiB, which is sized for real payloads.
            bounds: KnobBounds {
                batch_bytes_max: KnobRange::new(1, 16 << 20),
                election_timeout_min_micros: KnobRange::new(
                    10_000,
                    ELECTION_TIMEOUT_MIN_MICROS_MAX,
                ),
                election_timeout_max_micros: KnobRange::new(
                    15_000,
                    ELECTION_TIMEOUT_MAX_MICROS_MAX,
                ),
                ..KnobBounds::default()
            },
            safety_factor: SAFETY_FACTOR,
            timing_change_interval_min: TIMING_CHANGE_INTERVALS_MIN,
            seed,
            ..TuningConfig::default()
        };
        let tuner =
            Tuner::new(tuning, static_knobs, followers).map_err(|error| error.to_string())?;
        Ok(SimTuner {
            tuner,
            collector: SampleCollector::new(now_us),
            next_interval_us: now_us + TUNING_INTERVAL_US,
            probes: BTreeMap::new(),
            timing: None,
        })
    }

    /// Opens a probe to the receiver of `message` when it is a heartbeat and none is open.
    pub fn record_sent(&mut self, message: &Message, now_us: u64) {
        if matches!(message.body, MessageBody::Heartbeat { .. }) {
            self.probes.entry(message.to).or_insert(now_us);
        }
    }

    /// Closes the sender's probe when `message` is a heartbeat response.
    pub fn record_received(&mut self, message: &Message, now_us: u64) {
        if !matches!(message.body, MessageBody::HeartbeatResponse { .. }) {
            return;
        }
        if let Some(sent_us) = self.probes.remove(&message.from) {
            self.collector
                .record_rtt(message.from.0, now_us.saturating_sub(sent_us));
        }
    }

    /// Records one storage write and sync of `entries` entries, from its submission to its
    /// completion.
    pub fn record_write(&mut self, entries: u64, latency_us: u64) {
        self.collector.record_fsync(entries, 0, latency_us);
    }

    /// Records that the replica handles a tick at `now_us`, and how much later than
    /// `tick_period_us` after the previous tick that is, as the engine's shard loop
    /// measures its stalls.
    pub fn record_tick(&mut self, now_us: u64, tick_period_us: u64) {
        self.collector.record_tick(now_us, tick_period_us);
    }

    /// Ends the interval once it is due and lets the tuner decide. Returns whether it
    /// ended one.
    pub fn finish_interval_if_due(&mut self, now_us: u64) -> bool {
        if now_us < self.next_interval_us {
            return false;
        }
        self.next_interval_us = now_us + TUNING_INTERVAL_US;
        let samples = self.collector.finish_interval(now_us);
        let decision = self.tuner.observe(&samples);
        if let Some(timing) = decision.timing {
            let ticks = timing.knobs.in_ticks(TICK_US);
            self.timing = Some(GroupTiming {
                heartbeat_interval_ticks: ticks.heartbeat_interval_ticks,
                election_timeout_ticks_min: ticks.election_timeout_ticks_min,
                election_timeout_ticks_max: ticks.election_timeout_ticks_max,
            });
        }
        true
    }

    /// Returns the group timing the tuner chose, once it chose one.
    pub fn timing(&self) -> Option<GroupTiming> {
        self.timing
    }
}
