//! The adaptive tuner's place in the node: which configured settings it starts from, and
//! what each shard reports about it.
//!
//! The models and the safety rules live in the `shardraft-tuning` crate, which does no I/O.
//! Each shard that runs with `tuning.enabled` owns one [`shardraft_tuning::Tuner`]
//! (`shard/tuning.rs`). It feeds it samples every `tuning.interval_ms` and applies the
//! batching decisions to the groups it hosts: entries and bytes per AppendEntries and
//! AppendEntries in flight through `RaftNode::set_replication_limits`, and the proposal
//! linger in its own loop. With tuning off, no tuner exists and every setting is the static
//! value of [`NodeConfig`].
//!
//! Each shard also runs an accrual failure detector over the heartbeats of every peer. A
//! follower whose detector would suspect its leader sooner than its randomized election
//! timeout brings the election forward to that moment, never below
//! `election_timeout_ticks_min` (`RaftNode::shorten_election_timeout`): on a quiet network
//! a dead leader is replaced after about the minimum timeout, while on a noisy one the
//! wider spread of heartbeat gaps keeps the randomized timeout.
//!
//! Timing decisions (heartbeat interval, election timeout range) must be the same on every
//! replica of a group, so they cannot be applied by one shard alone.
//! TODO: carry timing decisions through the Raft log so that every replica applies them at
//! the same index; until then a shard only reports them in its metrics and logs.

use shardraft_tuning::{Knobs, Prediction};

use crate::config::NodeConfig;

/// Returns the settings of `config` as the tuner's knobs: the values that apply while
/// tuning is off or still in its cold start.
pub fn static_knobs(config: &NodeConfig) -> Knobs {
    let tick_micros = config.tick_interval_ms.saturating_mul(1_000);
    let ticks = |count: u32| u64::from(count).saturating_mul(tick_micros);
    let raft = &config.raft;
    Knobs {
        batch_entries_max: raft.max_entries_per_message as u64,
        batch_bytes_max: raft.max_bytes_per_message,
        linger_micros: config.proposal_linger_us,
        inflight_appends_max: raft.max_inflight_messages as u64,
        // Every linearizable read pending when a ReadIndex round starts joins that round, so
        // the engine has no limit to report here, and the tuner's own upper bound is used.
        read_batch_max: config.tuning.bounds.read_batch_max.max,
        heartbeat_interval_micros: ticks(raft.heartbeat_interval_ticks),
        election_timeout_min_micros: ticks(raft.election_timeout_ticks_min),
        election_timeout_max_micros: ticks(raft.election_timeout_ticks_max),
    }
}

/// The last decision and measurement of one shard's tuner, for the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct TuningReport {
    /// Tuning intervals completed.
    pub intervals: u64,
    /// Knobs in force in this shard; timing knobs as recommended, not applied.
    pub knobs: Knobs,
    /// The model's prediction for the knobs in force, once it has one.
    pub prediction: Option<Prediction>,
    /// Commit latency p50 and p99 and commits per second measured in the last interval.
    pub measured_p50_micros: u64,
    pub measured_p99_micros: u64,
    pub measured_commits_per_second: f64,
    /// Batching knob changes applied since the shard started.
    pub batching_changes: u64,
    /// Timing changes the tuner recommended since the shard started.
    pub timing_recommendations: u64,
    /// The lowest election timeout that the observed round trips and fdatasyncs allow.
    pub election_timeout_floor_micros: u64,
    /// The failure detector's view of each peer whose heartbeats this shard received, at
    /// the end of the last interval.
    pub peers: Vec<PeerSuspicion>,
}

/// How suspect one peer is to a shard's accrual failure detector.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerSuspicion {
    pub peer: shardraft_raft::NodeId,
    /// The suspicion level phi: -log10 of the probability that a heartbeat this late
    /// still comes, under the normal distribution fitted to the peer's heartbeat gaps.
    pub phi: f64,
    /// Silence after the last heartbeat at which phi reaches `tuning.phi_threshold`;
    /// `None` until the detector has seen enough gaps.
    pub suspicion_delay_micros: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_knobs_follow_the_config() {
        let mut config = NodeConfig {
            tick_interval_ms: 10,
            proposal_linger_us: 50,
            ..NodeConfig::default()
        };
        config.raft.heartbeat_interval_ticks = 3;
        config.raft.election_timeout_ticks_min = 15;
        config.raft.election_timeout_ticks_max = 30;

        let knobs = static_knobs(&config);

        assert_eq!(knobs.heartbeat_interval_micros, 30_000);
        assert_eq!(knobs.election_timeout_min_micros, 150_000);
        assert_eq!(knobs.election_timeout_max_micros, 300_000);
        assert_eq!(knobs.linger_micros, 50);
        assert_eq!(knobs.batch_entries_max, 512);
        assert_eq!(knobs.inflight_appends_max, 64);
    }
}
