//! The adaptive tuner's place in the node: which configured settings it starts from, and
//! what each shard reports about it.
//!
//! The models and the safety rules live in the `shardraft-tuning` crate, which does no I/O.
//! Each shard that runs with `tuning.enabled` owns one [`shardraft_tuning::Tuner`]
//! (`shard/tuning.rs`). It feeds it samples every `tuning.interval_ms` and applies the
//! batching decisions to the groups it hosts: entries and bytes per AppendEntries,
//! AppendEntries in flight and reads per ReadIndex round through
//! `RaftNode::set_replication_limits`, and the proposal linger in its own loop. With tuning off, no tuner exists and every setting is the static
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
//! replica of a group, so one shard cannot apply them alone. A shard converts the tuner's
//! timing to ticks ([`timing_in_ticks`]) and, in every group it leads, proposes it through
//! the log as a `MembershipChange::SetTiming`. Each replica of the group switches when it
//! appends that entry, and followers' shards never propose their own tuner's timing.
//!
//! A shard whose detector suspects a group's leader reports the group not ready on
//! `/health/ready`, so that a load balancer moves away from a node that lost its leader
//! before the election has even started.

use shardraft_raft::GroupTiming;
use shardraft_tuning::{Knobs, Prediction, TimingKnobs};

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
        read_batch_max: raft.read_batch_max as u64,
        heartbeat_interval_micros: ticks(raft.heartbeat_interval_ticks),
        election_timeout_min_micros: ticks(raft.election_timeout_ticks_min),
        election_timeout_max_micros: ticks(raft.election_timeout_ticks_max),
    }
}

/// Converts the tuner's timing, in microseconds, to the group timing in ticks of
/// `tick_interval_ms` ([`TimingKnobs::in_ticks`]). The result always passes
/// `GroupTiming::check`.
pub fn timing_in_ticks(knobs: &TimingKnobs, tick_interval_ms: u64) -> GroupTiming {
    let ticks = knobs.in_ticks(tick_interval_ms.saturating_mul(1_000));
    GroupTiming {
        heartbeat_interval_ticks: ticks.heartbeat_interval_ticks,
        election_timeout_ticks_min: ticks.election_timeout_ticks_min,
        election_timeout_ticks_max: ticks.election_timeout_ticks_max,
    }
}

/// The last decision and measurement of one shard's tuner, for the metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct TuningReport {
    /// Tuning intervals completed.
    pub intervals: u64,
    /// Knobs in force in this shard. The timing knobs are the tuner's; each group this
    /// shard leads switches to them once its leader appended the change.
    pub knobs: Knobs,
    /// The model's prediction for the knobs in force, once it has one.
    pub prediction: Option<Prediction>,
    /// Commit latency p50 and p99 and commits per second measured in the last interval.
    pub measured_p50_micros: u64,
    pub measured_p99_micros: u64,
    pub measured_commits_per_second: f64,
    /// Batching knob changes applied since the shard started.
    pub batching_changes: u64,
    /// Timing changes the tuner decided since the shard started.
    pub timing_decisions: u64,
    /// Timing changes this shard appended as the leader of a group, since it started.
    pub timing_proposals: u64,
    /// The lowest election timeout that the observed round trips, fdatasyncs and stalls of
    /// the shard's loop allow.
    pub election_timeout_floor_micros: u64,
    /// The maximum stall of the shard's loop in the last interval: the largest gap between
    /// two ticks it handled, less the tick interval.
    pub stall_max_micros: u64,
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
    fn timing_converts_to_valid_ticks() {
        let cases = [
            // (heartbeat, min, max in microseconds) -> (heartbeat, min, max in ticks)
            ((30_000, 150_000, 300_000), (3, 15, 30)),
            ((20_000, 55_000, 81_000), (2, 6, 9)),
            ((1_000, 10_000, 15_000), (1, 3, 4)),
            ((90_000, 100_000, 100_000), (3, 10, 11)),
        ];
        for ((heartbeat, min, max), expected) in cases {
            let knobs = TimingKnobs {
                heartbeat_interval_micros: heartbeat,
                election_timeout_min_micros: min,
                election_timeout_max_micros: max,
            };

            let timing = timing_in_ticks(&knobs, 10);

            let found = (
                timing.heartbeat_interval_ticks,
                timing.election_timeout_ticks_min,
                timing.election_timeout_ticks_max,
            );
            assert_eq!(found, expected, "{knobs:?}");
            assert_eq!(timing.check(), Ok(()), "{knobs:?}");
        }
    }

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
