//! Snapshots of a node's counters, taken by each shard on request.

use std::time::Duration;

use shardraft_raft::NodeId;

use super::histogram::LatencyHistogram;
use super::stage_histogram::StageHistogram;
use super::write_stages::WriteStageLatencies;
use crate::log::GroupId;
use crate::node::{NodeStatus, ShardStatus};
use crate::snapshot::SnapshotStats;
use crate::transport::{PeerTransportStats, SnapshotTransferStats};
use crate::tuning::TuningReport;

/// Proposals that reached a group on this node, by how they ended. Proposals still waiting
/// are not counted, nor those failed because the shard stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProposalCounts {
    /// Applied on this node as the leader and returned to the proposer.
    pub applied: u64,
    /// Rejected because this node did not lead the group or was transferring leadership.
    pub not_leader: u64,
    /// Appended but replaced by another leader's entry, so they did not take effect.
    pub dropped: u64,
    /// Not applied within `request_timeout_ms`.
    pub timeout: u64,
    /// Rejected by the core's flow-control limits.
    pub busy: u64,
}

impl ProposalCounts {
    /// `(result label, count)` for every result.
    pub fn by_result(&self) -> [(&'static str, u64); 5] {
        [
            ("applied", self.applied),
            ("not_leader", self.not_leader),
            ("dropped", self.dropped),
            ("timeout", self.timeout),
            ("busy", self.busy),
        ]
    }

    /// Adds the counts of `other`.
    pub fn add(&mut self, other: &ProposalCounts) {
        self.applied += other.applied;
        self.not_leader += other.not_leader;
        self.dropped += other.dropped;
        self.timeout += other.timeout;
        self.busy += other.busy;
    }
}

/// Per-group counters and members, beyond the group's
/// [`GroupStatus`](crate::node::GroupStatus).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMetrics {
    pub group: GroupId,
    /// Times this node learned of a new leader: each distinct (term, leader) pair with a
    /// known leader that the group's role state went through since the shard started.
    pub leader_changes: u64,
    /// Voting members of the group, in node id order.
    pub voters: Vec<NodeId>,
    /// Non-voting members of the group, in node id order.
    pub learners: Vec<NodeId>,
}

/// Everything one shard reports for metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardMetrics {
    /// The same snapshot [`NodeHandle::status`](crate::node::NodeHandle::status) returns.
    pub status: ShardStatus,
    /// One entry per group, in the order of `status.groups`.
    pub groups: Vec<GroupMetrics>,
    /// Proposals by result, summed over the shard's groups.
    pub proposals: ProposalCounts,
    /// Time from the turn of the shard's loop that took a proposal until the proposal was
    /// applied at this node as the leader: the stages from `batched` to `applied`.
    pub commit_latency: LatencyHistogram,
    /// Time from the turn of the shard's loop that took a linearizable read until the read
    /// was served at this node as the leader. It covers the ReadIndex round and the wait
    /// for the state machine to apply up to the read index.
    pub read_latency: StageHistogram,
    /// Stages of the writes this shard completed as the leader of their group.
    pub write_stages: WriteStageLatencies,
    /// Time the shard's loop spent handling events and collecting ready work, as opposed
    /// to waiting for events.
    pub busy_time: Duration,
    /// Traffic with every peer, in node id order.
    pub peers: Vec<PeerTransportStats>,
    /// Snapshots the shard's groups took and installed.
    pub snapshots: SnapshotStats,
    /// Snapshot transfers of the shard, both directions.
    pub snapshot_transfers: SnapshotTransferStats,
    /// Groups the shard handed to a follower because its own fdatasync was far slower
    /// (`disk_transfer`).
    pub leader_disk_transfers: u64,
    /// Times the node's watchdog saw no guard tick from the shard's executor for
    /// [`STALL_MILLIS`](crate::wake_guard::STALL_MILLIS) and interrupted its sleep. The
    /// shard's timers, heartbeats among them, did not fire meanwhile.
    pub executor_stalls: u64,
    /// The adaptive tuner's state; `None` when tuning is off.
    pub tuning: Option<TuningReport>,
}

/// Everything the shards of one node report for metrics, in shard order.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeMetrics {
    pub node_id: NodeId,
    pub shards: Vec<ShardMetrics>,
}

impl NodeMetrics {
    /// The status part of the snapshot, as [`NodeHandle::status`] returns it.
    ///
    /// [`NodeHandle::status`]: crate::node::NodeHandle::status
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.node_id,
            shards: self
                .shards
                .iter()
                .map(|shard| shard.status.clone())
                .collect(),
        }
    }

    /// Merges the write stages of every shard.
    pub fn write_stages(&self) -> WriteStageLatencies {
        let mut merged = WriteStageLatencies::default();
        for shard in &self.shards {
            merged.merge(&shard.write_stages);
        }
        merged
    }

    /// Finds the metrics of `group`, if this node hosts it.
    pub fn group(&self, group: GroupId) -> Option<&GroupMetrics> {
        self.shards
            .iter()
            .flat_map(|shard| &shard.groups)
            .find(|metrics| metrics.group == group)
    }
}

/// Failure to take a snapshot of a node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("the node is stopped")]
    Stopped,
    #[error("shard {shard} did not answer within {timeout_ms} ms; it may be stuck or overloaded")]
    TimedOut { shard: u32, timeout_ms: u64 },
}
