//! The server's config: a TOML file, overridden key by key by environment variables
//! (`SHARDRAFT_<KEY>`) and command-line flags (`--<key>`), flag winning over environment
//! over file. Every key has a unit in its name and a default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use shardraft::config::{InitialClusterState, MemberConfig, NodeConfig};
use shardraft::kv::KvLimits;
use shardraft::log::{StorageKind, SyncMethod};
use shardraft_tuning::TuningConfig;

/// One member of the cluster as the config file lists it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberEntry {
    pub id: u64,
    /// Peer address of the member's shard 0; shard `s` listens on the port plus `s`.
    pub peer_address: SocketAddr,
    /// The member's client address.
    pub client_address: SocketAddr,
    /// The member's HTTP address for metrics, health and status.
    pub http_address: Option<SocketAddr>,
}

/// The config file. Every field is optional here; defaults apply after the overrides.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<u64>,
    pub cluster_id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub storage: Option<StorageKind>,
    pub shards: Option<usize>,
    pub groups: Option<u32>,
    pub tick_interval_ms: Option<u64>,
    pub election_timeout_ticks_min: Option<u32>,
    pub election_timeout_ticks_max: Option<u32>,
    pub heartbeat_interval_ticks: Option<u32>,
    pub max_entries_per_message: Option<usize>,
    pub max_bytes_per_message: Option<u64>,
    pub max_inflight_messages: Option<usize>,
    pub max_inflight_bytes: Option<u64>,
    pub max_uncommitted_bytes: Option<u64>,
    pub promote_lag_entries_max: Option<u64>,
    pub campaign_when_leader_down: Option<bool>,
    pub request_timeout_ms: Option<u64>,
    pub key_bytes_max: Option<usize>,
    pub value_bytes_max: Option<usize>,
    pub segment_bytes: Option<u64>,
    pub sync_writes: Option<bool>,
    pub sync_method: Option<SyncMethod>,
    pub join: Option<bool>,
    pub initial_cluster_state: Option<InitialClusterState>,
    pub disk_transfer: Option<bool>,
    pub disk_transfer_ratio_percent: Option<u32>,
    pub disk_transfer_window_ms: Option<u64>,
    pub disk_transfer_samples_min: Option<u64>,
    pub snapshot_trigger_entries: Option<u64>,
    pub snapshot_trigger_log_bytes: Option<u64>,
    pub snapshot_log_tail_entries: Option<u64>,
    pub snapshot_transfer_bytes_per_second: Option<u64>,
    pub snapshot_transfer_progress_timeout_ms: Option<u64>,
    pub snapshot_transfer_chunk_bytes: Option<u32>,
    pub proposal_linger_us: Option<u64>,
    /// The `[tuning]` table, passed to the tuner as it is.
    pub tuning: Option<TuningConfig>,
    pub members: Option<Vec<MemberEntry>>,
}

/// Command-line flags and environment variables of `shardraft serve`, one per config key.
#[derive(Clone, Debug, Default, Args)]
pub struct ConfigOverrides {
    /// This node's id, 1 or above; it must be one of the members. [default: 1]
    #[arg(long, env = "SHARDRAFT_NODE_ID")]
    pub node_id: Option<u64>,

    /// The cluster's id; nodes and data directories of other clusters are rejected.
    /// [default: 1]
    #[arg(long, env = "SHARDRAFT_CLUSTER_ID")]
    pub cluster_id: Option<u64>,

    /// Directory that holds the node's write-ahead logs (one subdirectory per shard). It
    /// must exist and be on a disk-backed filesystem. [default: data]
    #[arg(long, env = "SHARDRAFT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// `disk` (O_DIRECT writes, each made durable) or `memory` (nothing survives a restart).
    /// [default: disk]
    #[arg(long, env = "SHARDRAFT_STORAGE")]
    pub storage: Option<StorageKind>,

    /// Executors (shards) per node; every node of a cluster must use the same number.
    /// [default: one per CPU in the process's affinity mask]
    #[arg(long, env = "SHARDRAFT_SHARDS")]
    pub shards: Option<usize>,

    /// Raft groups in the cluster, 1 or above. [default: 16]
    #[arg(long, env = "SHARDRAFT_GROUPS")]
    pub groups: Option<u32>,

    /// Length of one Raft tick, in milliseconds. [default: 10]
    #[arg(long, env = "SHARDRAFT_TICK_INTERVAL_MS")]
    pub tick_interval_ms: Option<u64>,

    /// Lower bound of the randomized election timeout, in ticks. [default: 15]
    #[arg(long, env = "SHARDRAFT_ELECTION_TIMEOUT_TICKS_MIN")]
    pub election_timeout_ticks_min: Option<u32>,

    /// Upper bound (exclusive) of the election timeout, in ticks. [default: 30]
    #[arg(long, env = "SHARDRAFT_ELECTION_TIMEOUT_TICKS_MAX")]
    pub election_timeout_ticks_max: Option<u32>,

    /// Ticks between heartbeats; at most a third of the minimum election timeout.
    /// [default: 3]
    #[arg(long, env = "SHARDRAFT_HEARTBEAT_INTERVAL_TICKS")]
    pub heartbeat_interval_ticks: Option<u32>,

    /// Entries per AppendEntries message, at most. [default: 512]
    #[arg(long, env = "SHARDRAFT_MAX_ENTRIES_PER_MESSAGE")]
    pub max_entries_per_message: Option<usize>,

    /// Payload bytes per AppendEntries message, at most. [default: 1048576]
    #[arg(long, env = "SHARDRAFT_MAX_BYTES_PER_MESSAGE")]
    pub max_bytes_per_message: Option<u64>,

    /// AppendEntries messages in flight to one follower, at most. [default: 64]
    #[arg(long, env = "SHARDRAFT_MAX_INFLIGHT_MESSAGES")]
    pub max_inflight_messages: Option<usize>,

    /// Entry bytes in flight to one follower, at most. [default: 16777216]
    #[arg(long, env = "SHARDRAFT_MAX_INFLIGHT_BYTES")]
    pub max_inflight_bytes: Option<u64>,

    /// Bytes of uncommitted entries at a leader before it rejects proposals.
    /// [default: 67108864]
    #[arg(long, env = "SHARDRAFT_MAX_UNCOMMITTED_BYTES")]
    pub max_uncommitted_bytes: Option<u64>,

    /// Entries a learner added by `member add` may lag behind the leader's log when the
    /// leader promotes it to voter; 0 waits until it holds every entry. [default: 64]
    #[arg(long, env = "SHARDRAFT_PROMOTE_LAG_ENTRIES_MAX")]
    pub promote_lag_entries_max: Option<u64>,

    /// Make followers campaign within a heartbeat interval once their leader refuses
    /// connections, because its process is gone. A leader that is only silent is still
    /// given the election timeout. [default: true]
    #[arg(long, env = "SHARDRAFT_CAMPAIGN_WHEN_LEADER_DOWN")]
    pub campaign_when_leader_down: Option<bool>,

    /// Time after which a request that has not completed fails, in milliseconds.
    /// [default: 10000]
    #[arg(long, env = "SHARDRAFT_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,

    /// Largest key accepted, in bytes. [default: 1024]
    #[arg(long, env = "SHARDRAFT_KEY_BYTES_MAX")]
    pub key_bytes_max: Option<usize>,

    /// Largest value accepted, in bytes. [default: 1048576]
    #[arg(long, env = "SHARDRAFT_VALUE_BYTES_MAX")]
    pub value_bytes_max: Option<usize>,

    /// Size of a write-ahead log segment file, in bytes; a multiple of 4096.
    /// [default: 67108864]
    #[arg(long, env = "SHARDRAFT_SEGMENT_BYTES")]
    pub segment_bytes: Option<u64>,

    /// fdatasync each log write before acknowledging it. `false` keeps O_DIRECT writes,
    /// which survive a process crash but not a power loss; for benchmarks only.
    /// [default: true]
    #[arg(long, env = "SHARDRAFT_SYNC_WRITES")]
    pub sync_writes: Option<bool>,

    /// The way each log write is made durable: `dsync` (segment files opened with O_DSYNC, one
    /// operation per write) or `fdatasync` (a write, then an fdatasync). [default: dsync]
    #[arg(long, env = "SHARDRAFT_SYNC_METHOD")]
    pub sync_method: Option<SyncMethod>,

    /// Start as a learner of every group and wait for the cluster to add this node
    /// (`shardraft member add`); list the running members and this node in `members`. Once
    /// added, the membership follows the log. [default: false]
    #[arg(long, env = "SHARDRAFT_JOIN", num_args = 0..=1, default_missing_value = "true")]
    pub join: Option<bool>,

    /// `new` when this node founds a new cluster with the other members, `existing` when it
    /// restarts after its data directory was wiped (or its `memory` storage lost) or
    /// replaces a member. Only groups without data on this node use it, and under
    /// `existing` they catch up before they vote or count toward commit. A wiped node restarted with
    /// `new` counts as a founder, which can let a deposed leader commit over a newer
    /// leader's entries. A node started with `--join` always catches up. [default: new]
    #[arg(long, env = "SHARDRAFT_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<InitialClusterState>,

    /// Hand every group a shard leads to a follower when the shard's own fdatasync p99
    /// over a window exceeds disk_transfer_ratio_percent of the best follower's disk
    /// latency (its append round trip minus its heartbeat round trip). [default: false]
    #[arg(long, env = "SHARDRAFT_DISK_TRANSFER", num_args = 0..=1, default_missing_value = "true")]
    pub disk_transfer: Option<bool>,

    /// Time a leader's shard holds new proposals before handing them to the Raft cores,
    /// in microseconds, so that more of them share one AppendEntries and one log write; 0
    /// hands them over at once. [default: 0]
    #[arg(long, env = "SHARDRAFT_PROPOSAL_LINGER_US")]
    pub proposal_linger_us: Option<u64>,

    /// Run the adaptive tuner, which sets batching within the bounds of the `[tuning]`
    /// table of the config file; overrides `tuning.enabled`. [default: false]
    #[arg(long, env = "SHARDRAFT_TUNING", num_args = 0..=1, default_missing_value = "true")]
    pub tuning: Option<bool>,

    /// How much slower the leader's fdatasync p99 must be, in percent of the best
    /// follower's disk latency; 150 and above. [default: 400]
    #[arg(long, env = "SHARDRAFT_DISK_TRANSFER_RATIO_PERCENT")]
    pub disk_transfer_ratio_percent: Option<u32>,

    /// Length of one comparison window, in milliseconds; 100 and above. [default: 10000]
    #[arg(long, env = "SHARDRAFT_DISK_TRANSFER_WINDOW_MS")]
    pub disk_transfer_window_ms: Option<u64>,

    /// Samples of the leader's fdatasync and of a follower's round trips one window needs
    /// before it is compared; 1 and above. [default: 100]
    #[arg(long, env = "SHARDRAFT_DISK_TRANSFER_SAMPLES_MIN")]
    pub disk_transfer_samples_min: Option<u64>,

    /// Entries applied since a group's last snapshot after which it takes the next one; 0
    /// turns this trigger off. [default: 100000]
    #[arg(long, env = "SHARDRAFT_SNAPSHOT_TRIGGER_ENTRIES")]
    pub snapshot_trigger_entries: Option<u64>,

    /// Payload bytes applied since a group's last snapshot after which it takes the next
    /// one; 0 turns this trigger off (both off: no snapshots, the log grows without
    /// bound). [default: 67108864]
    #[arg(long, env = "SHARDRAFT_SNAPSHOT_TRIGGER_LOG_BYTES")]
    pub snapshot_trigger_log_bytes: Option<u64>,

    /// Entries kept in the log below a snapshot, 0 to 10000000. [default: 5000]
    #[arg(long, env = "SHARDRAFT_SNAPSHOT_LOG_TAIL_ENTRIES")]
    pub snapshot_log_tail_entries: Option<u64>,

    /// Bytes per second one snapshot transfer to a follower sends at most; 0 for no limit,
    /// else 4096 and above. [default: 134217728]
    #[arg(long, env = "SHARDRAFT_SNAPSHOT_TRANSFER_BYTES_PER_SECOND")]
    pub snapshot_transfer_bytes_per_second: Option<u64>,

    /// A snapshot transfer through which no byte moved for this long, in milliseconds, is
    /// abandoned and resumed later; 100 to 600000. [default: 10000]
    #[arg(long, env = "SHARDRAFT_SNAPSHOT_TRANSFER_PROGRESS_TIMEOUT_MS")]
    pub snapshot_transfer_progress_timeout_ms: Option<u64>,

    /// Bytes per snapshot chunk frame, 4096 to half the peer frame limit.
    /// [default: 1048576]
    #[arg(long, env = "SHARDRAFT_SNAPSHOT_TRANSFER_CHUNK_BYTES")]
    pub snapshot_transfer_chunk_bytes: Option<u32>,

    /// Every member, this node included, as `ID=PEER_ADDRESS/CLIENT_ADDRESS[/HTTP_ADDRESS]`
    /// separated by commas, for example `1=127.0.0.1:7001/127.0.0.1:7101/127.0.0.1:7201`.
    /// [default: none; required from the file, the environment or this flag]
    #[arg(long, env = "SHARDRAFT_MEMBERS", value_parser = parse_members)]
    pub members: Option<Members>,
}

/// The `--members` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members(pub Vec<MemberEntry>);

fn parse_members(text: &str) -> Result<Members, String> {
    let mut members = Vec::new();
    for item in text.split(',').filter(|item| !item.trim().is_empty()) {
        let (id, addresses) = item
            .split_once('=')
            .ok_or_else(|| format!("member {item:?} is not ID=PEER/CLIENT[/HTTP]"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("member id {id:?} is not a number"))?;
        let mut parts = addresses.split('/');
        let mut address = |what: &str| -> Result<Option<SocketAddr>, String> {
            parts
                .next()
                .map(|part| {
                    part.trim()
                        .parse()
                        .map_err(|_| format!("{what} address {part:?} of member {id} is invalid"))
                })
                .transpose()
        };
        let peer_address =
            address("peer")?.ok_or_else(|| format!("member {id} has no peer address"))?;
        let client_address =
            address("client")?.ok_or_else(|| format!("member {id} has no client address"))?;
        let http_address = address("HTTP")?;
        members.push(MemberEntry {
            id,
            peer_address,
            client_address,
            http_address,
        });
    }
    Ok(Members(members))
}

/// A config that failed to load or validate: the key and what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("invalid config value {key}: {detail}")]
pub struct ServeConfigError {
    pub key: String,
    pub detail: String,
}

fn invalid(key: &str, detail: impl Into<String>) -> ServeConfigError {
    ServeConfigError {
        key: key.to_string(),
        detail: detail.into(),
    }
}

/// Everything `shardraft serve` runs with, after merging and validation.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub node: NodeConfig,
    pub kv_limits: KvLimits,
    pub members: Vec<MemberEntry>,
}

impl ServeConfig {
    pub fn own_member(&self) -> &MemberEntry {
        self.members
            .iter()
            .find(|member| member.id == self.node.node_id)
            .expect("validation checked that the node is a member")
    }
}

/// Reads the config file, if any.
pub fn read_file(path: Option<&std::path::Path>) -> Result<FileConfig, ServeConfigError> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    let text = std::fs::read_to_string(path).map_err(|error| {
        invalid(
            "config",
            format!("reading {} failed: {error}", path.display()),
        )
    })?;
    toml::from_str(&text).map_err(|error| {
        invalid(
            "config",
            format!("{} is not a valid config file: {error}", path.display()),
        )
    })
}

macro_rules! pick {
    ($overrides:ident, $file:ident, $key:ident, $default:expr) => {
        $overrides
            .$key
            .clone()
            .or($file.$key.clone())
            .unwrap_or($default)
    };
}

/// Merges flags and environment (already combined by clap) over the file, applies the
/// defaults and validates the result, relations between keys included.
pub fn merge(
    file: FileConfig,
    overrides: &ConfigOverrides,
) -> Result<ServeConfig, ServeConfigError> {
    let defaults = NodeConfig::default();
    let members = overrides
        .members
        .clone()
        .map(|members| members.0)
        .or(file.members.clone())
        .ok_or_else(|| {
            invalid(
                "members",
                "no members are configured; list every member, this node included",
            )
        })?;

    let mut node = NodeConfig {
        node_id: pick!(overrides, file, node_id, defaults.node_id),
        cluster_id: pick!(overrides, file, cluster_id, defaults.cluster_id),
        groups: pick!(overrides, file, groups, defaults.groups),
        tick_interval_ms: pick!(overrides, file, tick_interval_ms, defaults.tick_interval_ms),
        request_timeout_ms: pick!(
            overrides,
            file,
            request_timeout_ms,
            defaults.request_timeout_ms
        ),
        shards: overrides.shards.or(file.shards),
        members: members
            .iter()
            .map(|member| MemberConfig {
                id: member.id,
                addresses: vec![member.peer_address],
            })
            .collect(),
        ..defaults.clone()
    };
    let raft = &mut node.raft;
    raft.election_timeout_ticks_min = pick!(
        overrides,
        file,
        election_timeout_ticks_min,
        raft.election_timeout_ticks_min
    );
    raft.election_timeout_ticks_max = pick!(
        overrides,
        file,
        election_timeout_ticks_max,
        raft.election_timeout_ticks_max
    );
    raft.heartbeat_interval_ticks = pick!(
        overrides,
        file,
        heartbeat_interval_ticks,
        raft.heartbeat_interval_ticks
    );
    raft.max_entries_per_message = pick!(
        overrides,
        file,
        max_entries_per_message,
        raft.max_entries_per_message
    );
    raft.max_bytes_per_message = pick!(
        overrides,
        file,
        max_bytes_per_message,
        raft.max_bytes_per_message
    );
    raft.max_inflight_messages = pick!(
        overrides,
        file,
        max_inflight_messages,
        raft.max_inflight_messages
    );
    raft.max_inflight_bytes = pick!(overrides, file, max_inflight_bytes, raft.max_inflight_bytes);
    raft.max_uncommitted_bytes = pick!(
        overrides,
        file,
        max_uncommitted_bytes,
        raft.max_uncommitted_bytes
    );
    raft.promote_lag_entries_max = pick!(
        overrides,
        file,
        promote_lag_entries_max,
        raft.promote_lag_entries_max
    );
    raft.campaign_when_leader_down = pick!(
        overrides,
        file,
        campaign_when_leader_down,
        raft.campaign_when_leader_down
    );
    node.log.storage = pick!(overrides, file, storage, node.log.storage);
    node.log.data_dir = pick!(overrides, file, data_dir, node.log.data_dir.clone());
    node.log.segment_bytes = pick!(overrides, file, segment_bytes, node.log.segment_bytes);
    node.log.sync_writes = pick!(overrides, file, sync_writes, node.log.sync_writes);
    node.log.sync_method = pick!(overrides, file, sync_method, node.log.sync_method);
    node.join = pick!(overrides, file, join, node.join);
    node.initial_cluster_state = pick!(
        overrides,
        file,
        initial_cluster_state,
        node.initial_cluster_state
    );
    let disk_transfer = &mut node.disk_transfer;
    disk_transfer.enabled = pick!(overrides, file, disk_transfer, disk_transfer.enabled);
    disk_transfer.ratio_percent = pick!(
        overrides,
        file,
        disk_transfer_ratio_percent,
        disk_transfer.ratio_percent
    );
    disk_transfer.window_ms = pick!(
        overrides,
        file,
        disk_transfer_window_ms,
        disk_transfer.window_ms
    );
    disk_transfer.samples_min = pick!(
        overrides,
        file,
        disk_transfer_samples_min,
        disk_transfer.samples_min
    );
    let snapshot = &mut node.snapshot;
    snapshot.trigger_entries = pick!(
        overrides,
        file,
        snapshot_trigger_entries,
        snapshot.trigger_entries
    );
    snapshot.trigger_log_bytes = pick!(
        overrides,
        file,
        snapshot_trigger_log_bytes,
        snapshot.trigger_log_bytes
    );
    snapshot.log_tail_entries = pick!(
        overrides,
        file,
        snapshot_log_tail_entries,
        snapshot.log_tail_entries
    );
    snapshot.transfer_bytes_per_second = pick!(
        overrides,
        file,
        snapshot_transfer_bytes_per_second,
        snapshot.transfer_bytes_per_second
    );
    snapshot.transfer_progress_timeout_ms = pick!(
        overrides,
        file,
        snapshot_transfer_progress_timeout_ms,
        snapshot.transfer_progress_timeout_ms
    );
    snapshot.transfer_chunk_bytes = pick!(
        overrides,
        file,
        snapshot_transfer_chunk_bytes,
        snapshot.transfer_chunk_bytes
    );

    node.proposal_linger_us = pick!(overrides, file, proposal_linger_us, node.proposal_linger_us);
    node.tuning = file.tuning.clone().unwrap_or_default();
    if let Some(enabled) = overrides.tuning {
        node.tuning.enabled = enabled;
    }

    let kv_limits = KvLimits {
        key_bytes_max: pick!(overrides, file, key_bytes_max, 1024),
        value_bytes_max: pick!(overrides, file, value_bytes_max, 1 << 20),
    };
    let shard_count = node
        .shards
        .unwrap_or_else(shardraft::node::default_shard_count);
    node.validate(shard_count).map_err(|error| {
        // The server's keys are flat: `heartbeat_interval_ticks`, not
        // `raft.heartbeat_interval_ticks` as in the embedding config.
        let flat = |text: &str| {
            text.replace("raft.", "")
                .replace("transport.", "")
                .replace("snapshot.", "snapshot_")
                .replace("disk_transfer.", "disk_transfer_")
        };
        invalid(&flat(error.key), flat(&error.detail))
    })?;
    validate_limits(&kv_limits, &node)?;
    validate_addresses(&members, shard_count)?;
    Ok(ServeConfig {
        node,
        kv_limits,
        members,
    })
}

fn validate_limits(limits: &KvLimits, node: &NodeConfig) -> Result<(), ServeConfigError> {
    if limits.key_bytes_max == 0 || limits.key_bytes_max > 64 * 1024 {
        return Err(invalid(
            "key_bytes_max",
            format!("{}; allowed 1 to 65536", limits.key_bytes_max),
        ));
    }
    let value_max_allowed = node.raft.max_bytes_per_message as usize;
    if limits.value_bytes_max == 0 || limits.value_bytes_max > value_max_allowed {
        return Err(invalid(
            "value_bytes_max",
            format!(
                "{}; allowed 1 to max_bytes_per_message ({value_max_allowed}), so that one \
                 entry fits a message",
                limits.value_bytes_max
            ),
        ));
    }
    Ok(())
}

/// Checks that no two listeners share an address, counting every shard's peer port.
fn validate_addresses(members: &[MemberEntry], shard_count: usize) -> Result<(), ServeConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for member in members {
        let peer_ports = (0..shard_count).filter_map(|shard| {
            let port = u16::try_from(usize::from(member.peer_address.port()) + shard).ok()?;
            Some(SocketAddr::new(member.peer_address.ip(), port))
        });
        let others = [Some(member.client_address), member.http_address]
            .into_iter()
            .flatten();
        for address in peer_ports.chain(others) {
            if !seen.insert(address) {
                return Err(invalid(
                    "members",
                    format!(
                        "address {address} is used twice (shard s of a member listens for \
                         peers on its peer port plus s); every listener needs its own port"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBERS: &str = r#"
node_id = 1
[[members]]
id = 1
peer_address = "127.0.0.1:7010"
client_address = "127.0.0.1:7101"
"#;

    #[test]
    fn tuning_table_reaches_the_node_config() {
        let text = format!(
            "{MEMBERS}
[tuning]
enabled = true
objective = \"latency\"
p99_target_micros = 2000
interval_ms = 1000

[tuning.bounds]
linger_micros = {{ min = 0, max = 500 }}
inflight_appends_max = {{ min = 4, max = 64 }}
"
        );
        let file: FileConfig = toml::from_str(&text).expect("the example parses");

        let config = merge(file, &ConfigOverrides::default()).expect("the example is valid");

        let tuning = &config.node.tuning;
        assert!(tuning.enabled);
        assert_eq!(tuning.p99_target_micros, 2000);
        assert_eq!(tuning.bounds.linger_micros.max, 500);
        assert_eq!(tuning.bounds.inflight_appends_max.min, 4);
    }

    #[test]
    fn tuning_flag_overrides_the_table() {
        let text = format!("{MEMBERS}\n[tuning]\nenabled = true\n");
        let file: FileConfig = toml::from_str(&text).expect("the config parses");
        let overrides = ConfigOverrides {
            tuning: Some(false),
            ..ConfigOverrides::default()
        };

        let config = merge(file, &overrides).expect("the config is valid");

        assert!(!config.node.tuning.enabled);
    }

    #[test]
    fn cluster_state_flag_overrides_file() {
        let text = format!("initial_cluster_state = \"existing\"\n{MEMBERS}");
        let file: FileConfig = toml::from_str(&text).expect("the config parses");

        let from_file = merge(file.clone(), &ConfigOverrides::default()).expect("valid");
        let overrides = ConfigOverrides {
            initial_cluster_state: Some(InitialClusterState::New),
            ..ConfigOverrides::default()
        };
        let from_flag = merge(file, &overrides).expect("valid");

        assert_eq!(
            from_file.node.initial_cluster_state,
            InitialClusterState::Existing
        );
        assert_eq!(
            from_flag.node.initial_cluster_state,
            InitialClusterState::New
        );
    }

    #[test]
    fn invalid_cluster_state_is_rejected() {
        let text = format!("initial_cluster_state = \"wiped\"\n{MEMBERS}");

        let error = toml::from_str::<FileConfig>(&text).expect_err("an invalid value");

        let message = error.to_string();
        assert!(message.contains("initial_cluster_state"), "{message}");
        assert!(message.contains("\"new\""), "{message}");
        assert!(message.contains("\"existing\""), "{message}");
    }

    #[test]
    fn sync_method_file_then_flag() {
        let default = merge(
            toml::from_str::<FileConfig>(MEMBERS).expect("the config parses"),
            &ConfigOverrides::default(),
        )
        .expect("valid");
        let text = format!("sync_method = \"fdatasync\"\n{MEMBERS}");
        let file: FileConfig = toml::from_str(&text).expect("the config parses");
        let from_file = merge(file.clone(), &ConfigOverrides::default()).expect("valid");
        let overrides = ConfigOverrides {
            sync_method: Some(SyncMethod::Dsync),
            ..ConfigOverrides::default()
        };
        let from_flag = merge(file, &overrides).expect("valid");

        assert_eq!(default.node.log.sync_method, SyncMethod::Dsync);
        assert_eq!(from_file.node.log.sync_method, SyncMethod::Fdatasync);
        assert_eq!(from_flag.node.log.sync_method, SyncMethod::Dsync);
        let error = toml::from_str::<FileConfig>(&format!("sync_method = \"fsync\"\n{MEMBERS}"))
            .expect_err("an invalid method");
        assert!(error.to_string().contains("fdatasync"), "{error}");
    }

    #[test]
    fn unknown_tuning_key_is_rejected() {
        let text = format!("{MEMBERS}\n[tuning]\nlinger = 5\n");

        let error = toml::from_str::<FileConfig>(&text).expect_err("an unknown key is rejected");

        assert!(error.to_string().contains("linger"), "{error}");
    }
}
