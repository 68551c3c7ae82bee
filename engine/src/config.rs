//! The settings of a node, with the relations between them checked at startup by
//! [`NodeConfig::validate`]. Field names are the keys of the config file.

use std::net::SocketAddr;
use std::str::FromStr;

use serde::Deserialize;
use shardraft_tuning::TuningConfig;

use crate::log::LogConfig;

/// One member of the cluster and where its shards listen for peers.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    /// Peer addresses of the member's shards: one per shard, or a single address whose port
    /// is shard 0's, with shard `s` listening on that port plus `s`.
    pub addresses: Vec<SocketAddr>,
}

impl MemberConfig {
    /// Returns the peer address of shard `shard` of this member.
    pub fn shard_address(&self, shard: usize) -> Option<SocketAddr> {
        match self.addresses.as_slice() {
            [base] => {
                let port = u16::try_from(usize::from(base.port()) + shard).ok()?;
                Some(SocketAddr::new(base.ip(), port))
            }
            many => many.get(shard).copied(),
        }
    }
}

/// Whether a node founds a new cluster or starts into one that already exists, like etcd's
/// `initial-cluster-state`. It matters only for groups of which the node has no durable
/// state. No node can tell a new group from one whose data it lost, so the operator sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum InitialClusterState {
    /// A founding member of a new cluster. Each group without durable state starts as one
    /// of the group's founders, which votes as in plain Raft and whose acknowledgements
    /// count at once. A node restarted with its data may keep this value, because its
    /// groups ignore it. A node whose data was wiped must not: it could vote twice in a
    /// term.
    #[default]
    New,
    /// A node that replaces a member, lost its data directory, or restarted on `memory`
    /// storage. Each group without durable state catches up: it votes for no candidate
    /// with a log until it has stored a leader's committed log (`RaftNode::is_catching_up`),
    /// and a leader counts its acknowledgements only after confirming its own term.
    Existing,
}

impl FromStr for InitialClusterState {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "new" => Ok(InitialClusterState::New),
            "existing" => Ok(InitialClusterState::Existing),
            other => Err(format!(
                "invalid initial_cluster_state {other:?}: allowed \"new\" (a founding member \
                 of a new cluster) or \"existing\" (a node whose data directory was wiped, \
                 or that replaces a member)"
            )),
        }
    }
}

impl TryFrom<String> for InitialClusterState {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

/// Settings of the Raft core shared by every group of the node. Time is counted in ticks
/// of [`NodeConfig::tick_interval_ms`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub heartbeat_interval_ticks: u32,
    pub max_entries_per_message: usize,
    pub max_bytes_per_message: u64,
    pub max_inflight_messages: usize,
    pub max_inflight_bytes: u64,
    pub max_uncommitted_bytes: u64,
    pub max_pending_reads: usize,
    /// Linearizable reads that start a ReadIndex round at once while an earlier round of
    /// the group still awaits its quorum. Fewer reads wait and join the next round. The
    /// default, 1, gives the lowest read latency; a larger value saves heartbeats under
    /// heavy reads.
    pub read_batch_max: usize,
    /// A learner added to be promoted once caught up becomes a voter when its log is at
    /// most this many entries behind the leader's; 0 waits until it holds every entry.
    pub promote_lag_entries_max: u64,
    /// When a connection to a group's leader is refused, so that its process is gone rather
    /// than slow, the group's followers on this node campaign within one heartbeat interval
    /// instead of waiting out their election timeout. A dead host, or a partition that drops
    /// packets, refuses nothing, and the timeout still applies to them. A firewall that
    /// rejects connections with a reset reads as a refusal.
    pub campaign_when_leader_down: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            election_timeout_ticks_min: 15,
            election_timeout_ticks_max: 30,
            heartbeat_interval_ticks: 3,
            max_entries_per_message: 512,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 64,
            max_inflight_bytes: 16 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_pending_reads: 65_536,
            read_batch_max: 1,
            promote_lag_entries_max: 64,
            campaign_when_leader_down: true,
        }
    }
}

/// Settings of the peer transport.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// Largest frame payload accepted from a peer; larger frames close the connection.
    pub frame_bytes_max: u32,
    /// Bytes queued for one peer beyond which the shard stops taking proposals until the
    /// queue drains; at twice this, further messages to that peer are dropped, which Raft
    /// tolerates.
    pub send_queue_bytes_max: u64,
    /// First delay before reconnecting to a peer; doubled per failed attempt, with jitter.
    pub reconnect_backoff_ms_min: u64,
    pub reconnect_backoff_ms_max: u64,
    /// Time a new connection has to send its hello frame.
    pub hello_timeout_ms: u64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            frame_bytes_max: 64 << 20,
            send_queue_bytes_max: 32 << 20,
            reconnect_backoff_ms_min: 10,
            reconnect_backoff_ms_max: 1000,
            hello_timeout_ms: 2000,
        }
    }
}

/// When each group takes a snapshot, how much log it keeps behind one, and how snapshots
/// travel to followers that need them. The keys of the `[snapshot]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Entries applied since a group's last snapshot after which it takes the next one;
    /// 0 leaves this trigger off.
    pub trigger_entries: u64,
    /// Payload bytes of entries applied since a group's last snapshot after which it takes
    /// the next one; 0 leaves this trigger off. With both triggers off nothing is ever
    /// snapshotted or compacted.
    pub trigger_log_bytes: u64,
    /// Entries kept in the log below a snapshot's index, so that a follower slightly
    /// behind still gets entries rather than the whole snapshot.
    pub log_tail_entries: u64,
    /// Segments a shard's disk log may hold before the groups whose entries keep its
    /// oldest segment compact past it, taking a snapshot first where they need one,
    /// whatever their triggers and tail. Without it, one entry of an idle group below its
    /// triggers keeps that segment, and so every later one, on disk for good. 0 turns this
    /// off; otherwise at least [`LOG_SEGMENTS_MAX_MIN`].
    pub log_segments_max: u64,
    /// Bytes per second one snapshot transfer sends at most; 0 sends as fast as the
    /// connection takes them.
    pub transfer_bytes_per_second: u64,
    /// A transfer through which no byte moved for this long is abandoned; the receiver keeps
    /// what it got and the next attempt resumes there.
    pub transfer_progress_timeout_ms: u64,
    /// Bytes of snapshot per chunk frame.
    pub transfer_chunk_bytes: u32,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        // At 100,000 writes/s over 16 groups, a group applies about 6,000 entries per
        // second and so snapshots about every 16 s. Its log then stays below about 105,000
        // entries (trigger plus tail) in memory, whatever the length of the run.
        SnapshotConfig {
            trigger_entries: 100_000,
            trigger_log_bytes: 64 << 20,
            log_tail_entries: 5_000,
            log_segments_max: 16,
            transfer_bytes_per_second: 128 << 20,
            transfer_progress_timeout_ms: 10_000,
            transfer_chunk_bytes: 1 << 20,
        }
    }
}

/// Moving leadership away from a leader whose own disk became slow: each shard that leads
/// a group compares, per window, the p99 of its own fdatasync with each follower's disk
/// latency, estimated as the follower's append round trip minus its heartbeat round trip
/// (a follower answers an append only once the entries are durable). When the leader's
/// p99 exceeds `ratio_percent` / 100 times the best follower's, the shard hands every
/// group it leads to that follower, before the slow disk makes followers time it out.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskTransferConfig {
    /// Off by default: a transfer costs an election's worth of unavailability per group.
    pub enabled: bool,
    /// How much slower, in percent of the best follower's latency, the leader's own
    /// fdatasync p99 must be; 150 and above.
    pub ratio_percent: u32,
    /// Length of one comparison window, in milliseconds.
    pub window_ms: u64,
    /// Samples a window needs of the leader's fdatasync and of a follower's append and
    /// heartbeat round trips before that follower is compared.
    pub samples_min: u64,
}

/// Smallest allowed [`DiskTransferConfig::ratio_percent`].
pub const DISK_TRANSFER_RATIO_PERCENT_MIN: u32 = 150;

impl Default for DiskTransferConfig {
    fn default() -> Self {
        DiskTransferConfig {
            enabled: false,
            ratio_percent: 400,
            window_ms: 10_000,
            samples_min: 100,
        }
    }
}

/// Everything a node needs to start.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Identifies the cluster; nodes and data directories of other clusters are rejected.
    pub cluster_id: u64,
    pub node_id: u64,
    /// Every member, this node included. Each member is a voter of every group, except
    /// this node when `join` is set.
    pub members: Vec<MemberConfig>,
    /// Start as a learner of every group, with the other members as voters, and wait
    /// for the cluster to add this node (`shardraft member add`). From then on the
    /// membership follows the log. Only a node with an empty data directory starts this
    /// way; once its log holds the group, the log decides.
    pub join: bool,
    /// `New` (the default) for the founding members of a new cluster, `Existing` for a node
    /// restarted after its data directory was wiped or its `memory` storage lost. Only
    /// groups without durable state use it, and under `Existing` leaders hold them back
    /// until they have confirmed their own term. A joining node's groups are always held
    /// back. A wiped node restarted with `New` counts as a founder and can help a deposed
    /// leader commit over a newer leader's entries.
    pub initial_cluster_state: InitialClusterState,
    /// Executors (one per shard). Unset: one per CPU in the process's affinity mask, which
    /// respects container CPU limits set through cpusets.
    pub shards: Option<usize>,
    /// Pin shard `s` to the `s`-th CPU of the affinity mask.
    pub pin_shards: bool,
    /// Raft groups in the cluster. Group `g` lives on shard `g % shards` of every node.
    pub groups: u32,
    pub tick_interval_ms: u64,
    /// Proposals and reads queued per shard before callers wait.
    pub request_queue_max: usize,
    /// Time after which a proposal or read that has not completed fails with a timeout.
    pub request_timeout_ms: u64,
    pub raft: RaftConfig,
    pub log: LogConfig,
    pub transport: TransportConfig,
    pub snapshot: SnapshotConfig,
    pub disk_transfer: DiskTransferConfig,
    /// Time a leader's shard holds new proposals before it hands them to the Raft cores,
    /// so that more of them share one AppendEntries and one log write; 0 hands them over
    /// at once. The tuner changes it when `tuning.enabled` is set.
    pub proposal_linger_us: u64,
    /// The adaptive tuner: off by default, and then every setting keeps its static value.
    pub tuning: TuningConfig,
}

/// Longest allowed [`NodeConfig::proposal_linger_us`]: beyond it the linger costs more
/// latency than any batch it forms can save.
pub const PROPOSAL_LINGER_US_MAX: u64 = 100_000;

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            cluster_id: 1,
            node_id: 1,
            members: Vec::new(),
            join: false,
            initial_cluster_state: InitialClusterState::New,
            shards: None,
            pin_shards: false,
            groups: 16,
            tick_interval_ms: 10,
            request_queue_max: 4096,
            request_timeout_ms: 10_000,
            raft: RaftConfig::default(),
            log: LogConfig::default(),
            transport: TransportConfig::default(),
            snapshot: SnapshotConfig::default(),
            disk_transfer: DiskTransferConfig::default(),
            proposal_linger_us: 0,
            tuning: TuningConfig::default(),
        }
    }
}

/// A config value out of range, naming the key and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid config value {key}: {detail}")]
pub struct ConfigError {
    pub key: &'static str,
    pub detail: String,
}

fn invalid(key: &'static str, detail: impl Into<String>) -> ConfigError {
    ConfigError {
        key,
        detail: detail.into(),
    }
}

/// Most entries a group keeps below its snapshot.
pub const LOG_TAIL_ENTRIES_MAX: u64 = 10_000_000;

/// Lowest `snapshot.log_segments_max` other than 0: the active segment and the one being
/// retired.
pub const LOG_SEGMENTS_MAX_MIN: u64 = 2;

/// Lowest snapshot transfer rate other than 0 (no limit): slower, a transfer of a large
/// state would take days.
pub const TRANSFER_BYTES_PER_SECOND_MIN: u64 = 4096;

/// Most shards a node runs; far more than any machine's cores, so only a typo reaches it.
pub const SHARDS_MAX: usize = 1024;

impl NodeConfig {
    /// Checks every value and the relations between them, for `shard_count` shards.
    ///
    /// # Errors
    /// The first key out of range, with the allowed range.
    pub fn validate(&self, shard_count: usize) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "0; node ids start at 1"));
        }
        if !(1..=SHARDS_MAX).contains(&shard_count) {
            return Err(invalid(
                "shards",
                format!("{shard_count}; allowed 1 to {SHARDS_MAX}"),
            ));
        }
        if self.groups == 0 {
            return Err(invalid("groups", "0; at least one group is needed"));
        }
        if self.tick_interval_ms == 0 {
            return Err(invalid("tick_interval_ms", "0; allowed 1 and above"));
        }
        if self.request_queue_max == 0 {
            return Err(invalid("request_queue_max", "0; allowed 1 and above"));
        }
        self.validate_members(shard_count)?;
        self.validate_raft()?;
        self.validate_transport()?;
        self.validate_snapshot()?;
        self.validate_disk_transfer()?;
        self.validate_tuning()?;
        self.log
            .validate()
            .map_err(|error| invalid("log", error.to_string()))
    }

    fn validate_tuning(&self) -> Result<(), ConfigError> {
        if self.proposal_linger_us > PROPOSAL_LINGER_US_MAX {
            return Err(invalid(
                "proposal_linger_us",
                format!(
                    "{}; allowed 0 to {PROPOSAL_LINGER_US_MAX}",
                    self.proposal_linger_us
                ),
            ));
        }
        let linger_max = self.tuning.bounds.linger_micros.max;
        if linger_max > PROPOSAL_LINGER_US_MAX {
            return Err(invalid(
                "tuning.bounds.linger_micros",
                format!("max {linger_max}; allowed up to {PROPOSAL_LINGER_US_MAX}"),
            ));
        }
        let followers = self.members.len().saturating_sub(1);
        // The tuner checks its table and, when enabled, that the static settings lie within
        // its bounds and memory budget, so a node never starts with a tuner it cannot run.
        shardraft_tuning::Tuner::new(
            self.tuning.clone(),
            crate::tuning::static_knobs(self),
            followers,
        )
        .map(|_| ())
        .map_err(|error| invalid("tuning", error.to_string()))
    }

    fn validate_members(&self, shard_count: usize) -> Result<(), ConfigError> {
        let mut ids: Vec<u64> = self.members.iter().map(|member| member.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(invalid("members", "a member id appears twice"));
        }
        if ids.first() == Some(&0) {
            return Err(invalid("members", "member id 0; ids start at 1"));
        }
        if !ids.contains(&self.node_id) {
            return Err(invalid(
                "members",
                format!("node_id {} is not among the members", self.node_id),
            ));
        }
        if self.join && self.members.len() < 2 {
            return Err(invalid(
                "join",
                "set, but the members list only this node; list the running members too, \
                 so that this node can reach them while it waits to be added",
            ));
        }
        for member in &self.members {
            let count = member.addresses.len();
            if count != 1 && count != shard_count {
                return Err(invalid(
                    "members",
                    format!(
                        "member {} lists {count} addresses; give one (shard 0's, the others \
                         on the following ports) or one per shard ({shard_count})",
                        member.id
                    ),
                ));
            }
            if member.shard_address(shard_count - 1).is_none() {
                return Err(invalid(
                    "members",
                    format!("member {}: shard ports would pass 65535", member.id),
                ));
            }
        }
        Ok(())
    }

    fn validate_raft(&self) -> Result<(), ConfigError> {
        let raft = &self.raft;
        if raft.heartbeat_interval_ticks == 0 {
            return Err(invalid(
                "raft.heartbeat_interval_ticks",
                "0; allowed 1 and above",
            ));
        }
        let heartbeat_max = raft.election_timeout_ticks_min / 3;
        if raft.heartbeat_interval_ticks > heartbeat_max {
            return Err(invalid(
                "raft.heartbeat_interval_ticks",
                format!(
                    "{} is not below a third of raft.election_timeout_ticks_min ({}); a \
                     follower would time out between heartbeats after one lost message",
                    raft.heartbeat_interval_ticks, raft.election_timeout_ticks_min
                ),
            ));
        }
        if raft.election_timeout_ticks_max <= raft.election_timeout_ticks_min {
            return Err(invalid(
                "raft.election_timeout_ticks_max",
                format!(
                    "{} must exceed raft.election_timeout_ticks_min ({}) so that timeouts \
                     are randomized",
                    raft.election_timeout_ticks_max, raft.election_timeout_ticks_min
                ),
            ));
        }
        if raft.read_batch_max == 0 {
            return Err(invalid(
                "raft.read_batch_max",
                "0; allowed 1 and above (1 starts a ReadIndex round for every batch of reads)",
            ));
        }
        if raft.max_bytes_per_message > u64::from(self.transport.frame_bytes_max) / 2 {
            return Err(invalid(
                "raft.max_bytes_per_message",
                format!(
                    "{} must be at most half of transport.frame_bytes_max ({}), so that one \
                     message with its framing fits a frame",
                    raft.max_bytes_per_message, self.transport.frame_bytes_max
                ),
            ));
        }
        Ok(())
    }

    fn validate_disk_transfer(&self) -> Result<(), ConfigError> {
        let transfer = &self.disk_transfer;
        if transfer.ratio_percent < DISK_TRANSFER_RATIO_PERCENT_MIN {
            return Err(invalid(
                "disk_transfer.ratio_percent",
                format!(
                    "{}; allowed {DISK_TRANSFER_RATIO_PERCENT_MIN} and above, so that two \
                     nodes with similar disks do not hand leadership back and forth",
                    transfer.ratio_percent
                ),
            ));
        }
        if transfer.window_ms < self.tick_interval_ms.max(100) {
            return Err(invalid(
                "disk_transfer.window_ms",
                format!(
                    "{}; allowed 100 and above, and at least tick_interval_ms",
                    transfer.window_ms
                ),
            ));
        }
        if transfer.samples_min == 0 {
            return Err(invalid(
                "disk_transfer.samples_min",
                "0; allowed 1 and above",
            ));
        }
        Ok(())
    }

    fn validate_transport(&self) -> Result<(), ConfigError> {
        let transport = &self.transport;
        if transport.reconnect_backoff_ms_min == 0
            || transport.reconnect_backoff_ms_max < transport.reconnect_backoff_ms_min
        {
            return Err(invalid(
                "transport.reconnect_backoff_ms_min",
                "must be at least 1 and at most transport.reconnect_backoff_ms_max",
            ));
        }
        if transport.send_queue_bytes_max < self.raft.max_bytes_per_message {
            return Err(invalid(
                "transport.send_queue_bytes_max",
                "must be at least raft.max_bytes_per_message",
            ));
        }
        Ok(())
    }

    fn validate_snapshot(&self) -> Result<(), ConfigError> {
        let snapshot = &self.snapshot;
        if snapshot.log_tail_entries > LOG_TAIL_ENTRIES_MAX {
            return Err(invalid(
                "snapshot.log_tail_entries",
                format!(
                    "{}; allowed 0 to {LOG_TAIL_ENTRIES_MAX}",
                    snapshot.log_tail_entries
                ),
            ));
        }
        if snapshot.log_segments_max != 0 && snapshot.log_segments_max < LOG_SEGMENTS_MAX_MIN {
            return Err(invalid(
                "snapshot.log_segments_max",
                format!(
                    "{}; allowed 0 (off) or {LOG_SEGMENTS_MAX_MIN} and above",
                    snapshot.log_segments_max
                ),
            ));
        }
        if snapshot.transfer_bytes_per_second != 0
            && snapshot.transfer_bytes_per_second < TRANSFER_BYTES_PER_SECOND_MIN
        {
            return Err(invalid(
                "snapshot.transfer_bytes_per_second",
                format!(
                    "{}; allowed 0 (no limit) or {TRANSFER_BYTES_PER_SECOND_MIN} and above",
                    snapshot.transfer_bytes_per_second
                ),
            ));
        }
        let timeout_ms = snapshot.transfer_progress_timeout_ms;
        if !(100..=600_000).contains(&timeout_ms) {
            return Err(invalid(
                "snapshot.transfer_progress_timeout_ms",
                format!("{timeout_ms}; allowed 100 to 600000"),
            ));
        }
        let chunk_max = self.transport.frame_bytes_max / 2;
        let chunk = snapshot.transfer_chunk_bytes;
        if chunk < 4096 || chunk > chunk_max {
            return Err(invalid(
                "snapshot.transfer_chunk_bytes",
                format!(
                    "{chunk}; allowed 4096 to half of transport.frame_bytes_max ({chunk_max}), \
                     so that a chunk with its framing fits a frame"
                ),
            ));
        }
        Ok(())
    }

    /// Returns whether this node's groups that have no durable state start as founding
    /// members of a new group (`RestoredState::founding`). They do only with
    /// `initial_cluster_state` `New` on a node that does not join, because the group adds a
    /// joining node later.
    pub fn founds_new_groups(&self) -> bool {
        self.initial_cluster_state == InitialClusterState::New && !self.join
    }

    /// The member entry of this node.
    pub fn own_member(&self) -> Option<&MemberConfig> {
        self.members.iter().find(|member| member.id == self.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_members() -> NodeConfig {
        let member = |id: u64, port: u16| MemberConfig {
            id,
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        };
        NodeConfig {
            members: vec![member(1, 7000), member(2, 7100), member(3, 7200)],
            ..NodeConfig::default()
        }
    }

    #[test]
    fn default_three_member_config_is_valid() {
        assert_eq!(three_members().validate(2), Ok(()));
    }

    #[test]
    fn tuner_linger_bound_above_maximum_is_rejected() {
        let mut config = three_members();
        config.tuning.enabled = true;
        config.tuning.bounds.linger_micros.max = PROPOSAL_LINGER_US_MAX + 1;

        let error = config.validate(1).unwrap_err();

        assert_eq!(error.key, "tuning.bounds.linger_micros");
    }

    #[test]
    fn tuning_with_static_settings_out_of_bounds_is_rejected() {
        let mut config = three_members();
        config.tuning.enabled = true;
        config.raft.max_inflight_messages = 1_000;

        let error = config.validate(1).unwrap_err();

        assert_eq!(error.key, "tuning");
        assert!(error.detail.contains("inflight"), "{}", error.detail);
    }

    #[test]
    fn single_address_expands_to_consecutive_ports() {
        let config = three_members();

        let address = config.members[1].shard_address(3).unwrap();

        assert_eq!(address.port(), 7103);
    }

    #[test]
    fn heartbeat_near_election_timeout_is_rejected() {
        let mut config = three_members();
        config.raft.heartbeat_interval_ticks = 6;

        let error = config.validate(2).unwrap_err();

        assert_eq!(error.key, "raft.heartbeat_interval_ticks");
    }

    #[test]
    fn oversized_snapshot_chunk_is_rejected() {
        let mut config = three_members();
        config.snapshot.transfer_chunk_bytes = config.transport.frame_bytes_max / 2 + 1;

        let error = config.validate(2).unwrap_err();

        assert_eq!(error.key, "snapshot.transfer_chunk_bytes");
        assert!(error.detail.contains("allowed 4096"), "{}", error.detail);
    }

    #[test]
    fn snapshot_rate_below_minimum_is_rejected() {
        let mut config = three_members();
        config.snapshot.transfer_bytes_per_second = 100;

        let error = config.validate(2).unwrap_err();

        assert_eq!(error.key, "snapshot.transfer_bytes_per_second");
        config.snapshot.transfer_bytes_per_second = 0;
        assert_eq!(config.validate(2), Ok(()));
    }

    #[test]
    fn single_segment_limit_is_rejected() {
        let mut config = three_members();
        config.snapshot.log_segments_max = 1;

        let error = config.validate(2).unwrap_err();

        assert_eq!(error.key, "snapshot.log_segments_max");
        config.snapshot.log_segments_max = 0;
        assert_eq!(config.validate(2), Ok(()));
        config.snapshot.log_segments_max = LOG_SEGMENTS_MAX_MIN;
        assert_eq!(config.validate(2), Ok(()));
    }

    #[test]
    fn node_outside_members_is_rejected() {
        let mut config = three_members();
        config.node_id = 9;

        let error = config.validate(2).unwrap_err();

        assert_eq!(error.key, "members");
    }

    #[test]
    fn cluster_state_parses_both_values() {
        assert_eq!("new".parse(), Ok(InitialClusterState::New));
        assert_eq!("existing".parse(), Ok(InitialClusterState::Existing));
        assert_eq!(
            NodeConfig::default().initial_cluster_state,
            InitialClusterState::New
        );
    }

    #[test]
    fn cluster_state_error_names_allowed_values() {
        let error = "restored".parse::<InitialClusterState>().unwrap_err();

        assert!(error.contains("initial_cluster_state"), "{error}");
        assert!(error.contains("\"restored\""), "{error}");
        assert!(error.contains("\"new\""), "{error}");
        assert!(error.contains("\"existing\""), "{error}");
    }

    #[test]
    fn invalid_cluster_state_in_file_rejected() {
        let error = toml::from_str::<NodeConfig>("initial_cluster_state = \"New\"\n")
            .expect_err("the value is case-sensitive");

        let message = error.to_string();
        assert!(message.contains("initial_cluster_state"), "{message}");
        assert!(message.contains("\"existing\""), "{message}");
    }

    #[test]
    fn cluster_state_read_from_file() {
        let config: NodeConfig =
            toml::from_str("initial_cluster_state = \"existing\"\n").expect("a valid value");

        assert_eq!(config.initial_cluster_state, InitialClusterState::Existing);
    }

    #[test]
    fn only_new_non_joining_node_founds_groups() {
        let mut config = three_members();
        assert!(config.founds_new_groups(), "the default founds");

        config.initial_cluster_state = InitialClusterState::Existing;
        assert!(!config.founds_new_groups(), "an existing node catches up");

        config.initial_cluster_state = InitialClusterState::New;
        config.join = true;
        assert!(!config.founds_new_groups(), "a joining node catches up");
    }

    #[test]
    fn address_count_must_match_shards() {
        let mut config = three_members();
        config.members[0]
            .addresses
            .push(SocketAddr::from(([127, 0, 0, 1], 1)));

        let error = config.validate(3).unwrap_err();

        assert_eq!(error.key, "members");
    }
}
