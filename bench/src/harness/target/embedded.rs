//! The embedded target: a 3-node shardraft cluster started inside the bench process.
//!
//! [`EmbeddedCluster::start`] starts three [`Node`]s, each with its own shard executors and
//! its own log, connected by real TCP on 127.0.0.1. Disk logs live in a fresh directory
//! under the run's data directory, removed when the cluster is dropped. Requests go
//! through [`NodeHandle`]s: a session routes each key to its group's leader, learns leader
//! changes from `NotLeader` errors, and serves stale reads from one replica per session.
//!
//! All three replicas and the load generator share one process, so the process's CPU time
//! (the cluster's [`ServerCounters::sample`]) covers all of them together.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use shardraft::config::{MemberConfig, NodeConfig};
use shardraft::kv::{Command, KvLimits, KvStateMachine};
use shardraft::log::{GroupId, StorageKind};
use shardraft::node::{self, Node, NodeError, NodeHandle};
use shardraft::raft::NodeId;

use super::{Request, RequestError, Response, Session, Target, TargetFacts};
use crate::harness::load::{CounterSample, ServerCounters, SnapshotCounters, SnapshotProbe};
use crate::harness::workload::{ClusterSpec, Durability, VALUE_BYTES_MAX};
use shardraft::snapshot::SnapshotActivityMark;

/// Members of the embedded cluster.
pub const NODE_COUNT: usize = 3;

/// Cluster id of the embedded cluster; any value works, because nothing else joins it.
const CLUSTER_ID: u64 = 0xbe9c;

/// Time the cluster has to elect a leader for every group after it starts.
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// Pause before a request is retried when no leader is known.
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(10);

/// Largest key the store accepts; the harness's keys are a few bytes.
const KEY_BYTES_MAX: usize = 1024;

type KvHandle = NodeHandle<KvStateMachine>;

/// A running 3-node cluster in this process, with the directory of its logs.
#[derive(Debug)]
pub struct EmbeddedCluster {
    nodes: Vec<Node<KvStateMachine>>,
    handles: Vec<KvHandle>,
    /// Leader of each group when the cluster had settled, as a position in `handles`.
    leaders: Vec<usize>,
    spec: ClusterSpec,
    /// The config each node started with, in the order of `nodes`.
    configs: Vec<NodeConfig>,
    /// The run's data directory, removed on drop; `None` for memory storage.
    run_dir: Option<ScratchDir>,
}

/// How long a node restarted on an empty disk may take to catch up with every group.
const CATCH_UP_WAIT: Duration = Duration::from_secs(300);

/// What bringing a node back from an empty disk took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InstallMeasurement {
    pub node_id: u64,
    /// Groups the node had applied before it was stopped, and caught up with after.
    pub groups: u32,
    /// Snapshots the restarted node installed.
    pub snapshots_installed: u64,
    /// Bytes of state machine data installed.
    pub installed_bytes: u64,
    /// Time the node spent receiving and restoring snapshots, summed over its groups.
    pub install_time: Duration,
    /// From the restart until every group had applied what the cluster had committed when
    /// the node stopped.
    pub catch_up_time: Duration,
}

impl EmbeddedCluster {
    /// Starts the nodes and waits until every group has a leader that all nodes agree on.
    ///
    /// # Errors
    ///
    /// When the data directory cannot be created, a node fails to start (its log, its
    /// ports), or the groups have no leader within 30 s.
    pub fn start(spec: &ClusterSpec) -> anyhow::Result<EmbeddedCluster> {
        let run_dir = match spec.durability {
            Durability::Memory => None,
            Durability::DiskSynced | Durability::DiskUnsynced => {
                Some(ScratchDir::create(&spec.dir)?)
            }
        };
        let configs = node_configs(spec, run_dir.as_ref().map(ScratchDir::path))?;
        let mut nodes = Vec::with_capacity(configs.len());
        for config in &configs {
            nodes.push(start_node(config)?);
        }
        let handles: Vec<KvHandle> = nodes.iter().map(Node::handle).collect();
        let leaders = wait_for_leaders(&handles, spec.groups)?;
        Ok(EmbeddedCluster {
            nodes,
            handles,
            leaders,
            spec: spec.clone(),
            configs,
            run_dir,
        })
    }

    /// Stops the node that leads the fewest groups, empties its data directory, starts it
    /// again with the same id and waits until every group has applied what the cluster had
    /// committed when it stopped. Groups whose leader compacted its log past that node's
    /// needs send it a snapshot; the others replay their log.
    ///
    /// # Errors
    ///
    /// When the cluster uses memory storage, the node cannot be stopped, emptied or
    /// started, or it does not catch up within 300 s.
    pub fn measure_snapshot_install(&mut self) -> anyhow::Result<InstallMeasurement> {
        anyhow::ensure!(
            self.run_dir.is_some(),
            "measuring snapshot installs needs disk storage"
        );
        let position = self.position_leading_fewest()?;
        let config = self.configs[position].clone();
        let node_id = config.node_id;
        let node = self.nodes.remove(position);
        self.handles.remove(position);
        node.shutdown()
            .with_context(|| format!("stopping embedded node {node_id} failed"))?;
        let committed = committed_indexes(&self.handles, self.spec.groups)?;
        std::fs::remove_dir_all(&config.log.data_dir)
            .and_then(|()| std::fs::create_dir_all(&config.log.data_dir))
            .with_context(|| format!("emptying {} failed", config.log.data_dir.display()))?;

        let restarted = Instant::now();
        let node = start_node(&config)?;
        let handle = node.handle();
        self.nodes.insert(position, node);
        self.handles.insert(position, handle.clone());
        wait_for_catch_up(&handle, &committed)?;
        let catch_up_time = restarted.elapsed();

        let metrics = handle
            .metrics(METRICS_TIMEOUT)
            .with_context(|| format!("reading the metrics of node {node_id} failed"))?;
        let mut stats = shardraft::snapshot::SnapshotStats::default();
        for shard in &metrics.shards {
            stats.merge(&shard.snapshots);
        }
        let counters = snapshot_counters(&stats);
        Ok(InstallMeasurement {
            node_id,
            groups: self.spec.groups,
            snapshots_installed: counters.installed,
            installed_bytes: counters.installed_bytes,
            install_time: Duration::from_nanos(counters.install_nanos),
            catch_up_time,
        })
    }

    /// Position in `nodes` of the node that leads the fewest groups now.
    fn position_leading_fewest(&self) -> anyhow::Result<usize> {
        let mut led = vec![0_u32; self.handles.len()];
        for (position, handle) in self.handles.iter().enumerate() {
            let status = handle
                .status()
                .context("reading an embedded node's status failed")?;
            led[position] = status
                .shards
                .iter()
                .flat_map(|shard| &shard.groups)
                .filter(|group| group.leader == Some(handle.node_id()))
                .count() as u32;
        }
        Ok((0..led.len())
            .min_by_key(|&position| led[position])
            .unwrap_or(0))
    }

    /// Returns the target through which clients reach this cluster.
    pub fn target(&self) -> EmbeddedTarget {
        EmbeddedTarget {
            handles: self.handles.clone(),
            leaders: self.leaders.clone(),
            durability: self.spec.durability,
            shards: self.spec.shards,
            groups: self.spec.groups,
        }
    }

    /// Returns the directory of the nodes' logs; `None` for memory storage.
    pub fn data_dir(&self) -> Option<&Path> {
        self.run_dir.as_ref().map(ScratchDir::path)
    }

    /// Returns a handle to each running node.
    pub fn handles(&self) -> &[KvHandle] {
        &self.handles
    }

    /// Stops the node at `position` at once, as a crashed process would, and returns its
    /// config for [`EmbeddedCluster::restart_node`]. Positions of the nodes after it shift
    /// down by one until the restart.
    pub fn kill_node(&mut self, position: usize) -> NodeConfig {
        let node = self.nodes.remove(position);
        self.handles.remove(position);
        node.kill();
        self.configs[position].clone()
    }

    /// Starts the node of `config` again from its data directory, at `position`.
    ///
    /// # Errors
    ///
    /// When the node fails to start.
    pub fn restart_node(&mut self, position: usize, config: &NodeConfig) -> anyhow::Result<()> {
        let node = start_node(config)?;
        self.handles.insert(position, node.handle());
        self.nodes.insert(position, node);
        Ok(())
    }

    /// Stops every node cleanly, then removes the data directory.
    ///
    /// # Errors
    ///
    /// When a shard's executor failed or the directory cannot be removed.
    pub fn shutdown(mut self) -> anyhow::Result<()> {
        self.handles.clear();
        for node in self.nodes.drain(..) {
            node.shutdown()
                .context("stopping an embedded node failed")?;
        }
        match self.run_dir.take() {
            Some(dir) => dir.remove(),
            None => Ok(()),
        }
    }
}

impl ServerCounters for EmbeddedCluster {
    /// Process CPU time, and fdatasyncs and durable entries summed over every shard of
    /// every node.
    fn sample(&self) -> anyhow::Result<CounterSample> {
        let mut fdatasyncs = 0;
        let mut log_entries = 0;
        let mut disk = false;
        let mut elections = 0;
        let mut stages = shardraft::metrics::WriteStageLatencies::default();
        let mut snapshots = shardraft::snapshot::SnapshotStats::default();
        for handle in &self.handles {
            let metrics = handle.metrics(METRICS_TIMEOUT).with_context(|| {
                format!("reading the metrics of node {} failed", handle.node_id().0)
            })?;
            stages.merge(&metrics.write_stages());
            for shard in &metrics.shards {
                snapshots.merge(&shard.snapshots);
            }
            let status = handle.status().with_context(|| {
                format!("reading the status of node {} failed", handle.node_id().0)
            })?;
            elections += status
                .shards
                .iter()
                .map(|shard| shard.elections_won)
                .sum::<u64>();
            for log in status.shards.iter().filter_map(|shard| shard.log.as_ref()) {
                disk = true;
                fdatasyncs += log.syncs;
                log_entries += log.entries;
            }
        }
        Ok(CounterSample {
            cpu: Some(cpu_time::ProcessTime::now().as_duration()),
            // Without per-batch syncs the only fdatasyncs are one checkpoint per segment;
            // dividing entries by those would read as an absurd batching factor.
            fdatasyncs: disk.then_some(if self.spec.durability == Durability::DiskSynced {
                fdatasyncs
            } else {
                0
            }),
            log_entries: disk.then_some(log_entries),
            write_stages: Some(stage_bucket_counts(&stages)),
            snapshots: Some(snapshot_counters(&snapshots)),
            elections: Some(elections),
        })
    }

    fn cpu_scope(&self) -> &'static str {
        "process CPU time, which covers all three replicas and the load generator"
    }

    fn disk_bytes(&self) -> anyhow::Result<Option<u64>> {
        match self.data_dir() {
            Some(dir) => allocated_bytes(dir).map(Some),
            None => Ok(None),
        }
    }

    fn snapshot_probe(&self) -> Option<SnapshotProbe> {
        let activities: Vec<_> = self
            .handles
            .iter()
            .map(KvHandle::snapshot_activity)
            .collect();
        Some(SnapshotProbe::new(move || {
            let mut mark = SnapshotActivityMark::default();
            for activity in &activities {
                mark.add(activity.mark());
            }
            mark
        }))
    }
}

fn snapshot_counters(stats: &shardraft::snapshot::SnapshotStats) -> SnapshotCounters {
    let receive_nanos = stats.receive.sum_nanos();
    let restore_nanos = u64::try_from(stats.install_time.as_nanos()).unwrap_or(u64::MAX);
    SnapshotCounters {
        taken: stats.taken,
        failed: stats.failed,
        creation_nanos: stats.creation.sum_nanos(),
        creation_buckets: stats.creation.bucket_counts(),
        installed: stats.installed,
        installed_bytes: stats.installed_bytes,
        install_nanos: receive_nanos.saturating_add(restore_nanos),
    }
}

/// Bytes allocated to the files under `dir`, counted in blocks so that preallocated log
/// segments count as the space they take. Files removed while the walk runs are skipped.
fn allocated_bytes(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt;

    let mut total = 0;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("listing {} failed", dir.display()));
            }
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                // `blocks` counts 512-byte units whatever the filesystem's block size.
                total += metadata.blocks() * 512;
            }
        }
    }
    Ok(total)
}

/// How long a node may take to return its metrics between points.
const METRICS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The histograms of every write stage, and of the total last.
fn stage_bucket_counts(
    stages: &shardraft::metrics::WriteStageLatencies,
) -> Vec<crate::harness::load::StageSample> {
    let sample = |name: &str, histogram: &shardraft::metrics::StageHistogram| {
        crate::harness::load::StageSample {
            stage: name.to_string(),
            bucket_counts: *histogram.bucket_counts(),
            sum_nanos: histogram.sum_nanos(),
        }
    };
    stages
        .stages()
        .map(|(stage, histogram)| sample(stage.name(), histogram))
        .chain(std::iter::once(sample("total", stages.total())))
        .collect()
}

fn start_node(config: &NodeConfig) -> anyhow::Result<Node<KvStateMachine>> {
    let limits = KvLimits {
        key_bytes_max: KEY_BYTES_MAX,
        value_bytes_max: VALUE_BYTES_MAX,
    };
    Node::start(config.clone(), move |_| KvStateMachine::new(limits))
        .with_context(|| format!("starting embedded node {} failed", config.node_id))
}

/// The highest commit index of each group that any of `handles` reports.
fn committed_indexes(handles: &[KvHandle], groups: u32) -> anyhow::Result<Vec<u64>> {
    let mut committed = vec![0; groups as usize];
    for handle in handles {
        let status = handle
            .status()
            .context("reading an embedded node's status failed")?;
        for group in status.shards.iter().flat_map(|shard| &shard.groups) {
            if let Some(slot) = committed.get_mut(group.group.0 as usize) {
                *slot = (*slot).max(group.commit_index.0);
            }
        }
    }
    Ok(committed)
}

/// Waits until `handle`'s node has applied at least `committed[g]` in every group `g`.
fn wait_for_catch_up(handle: &KvHandle, committed: &[u64]) -> anyhow::Result<()> {
    let deadline = Instant::now() + CATCH_UP_WAIT;
    loop {
        let status = handle
            .status()
            .context("reading the restarted node's status failed")?;
        let behind = committed
            .iter()
            .enumerate()
            .filter(|(group, committed)| {
                status
                    .group(GroupId(*group as u32))
                    .is_none_or(|group| group.applied_index.0 < **committed)
            })
            .count();
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {} had not caught up with {behind} of {} group(s) within {} s of its \
             restart on an empty disk; check the log output above",
            handle.node_id().0,
            committed.len(),
            CATCH_UP_WAIT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Builds the three nodes' configs: one loopback port per shard of each node.
fn node_configs(spec: &ClusterSpec, data_dir: Option<&Path>) -> anyhow::Result<Vec<NodeConfig>> {
    let addresses = free_loopback_addresses(NODE_COUNT * spec.shards)?;
    let members: Vec<MemberConfig> = addresses
        .chunks(spec.shards)
        .enumerate()
        .map(|(position, addresses)| MemberConfig {
            id: position as u64 + 1,
            addresses: addresses.to_vec(),
        })
        .collect();
    let mut configs = Vec::with_capacity(NODE_COUNT);
    for member in &members {
        let mut config = NodeConfig {
            cluster_id: CLUSTER_ID,
            node_id: member.id,
            members: members.clone(),
            shards: Some(spec.shards),
            groups: spec.groups,
            ..NodeConfig::default()
        };
        if !spec.snapshots {
            config.snapshot.trigger_entries = 0;
            config.snapshot.trigger_log_bytes = 0;
        }
        config.tuning.enabled = spec.tuning;
        if let Some(interval_ms) = spec.tuning_interval_ms {
            config.tuning.interval_ms = interval_ms;
        }
        if let Some(factor) = spec.tuning_safety_factor {
            config.tuning.safety_factor = factor;
        }
        if let Some(linger_us) = spec.linger_us {
            config.proposal_linger_us = linger_us;
        }
        if let Some(inflight) = spec.max_inflight_messages {
            config.raft.max_inflight_messages = inflight;
        }
        if let Some(entries) = spec.max_entries_per_message {
            config.raft.max_entries_per_message = entries;
        }
        if let Some(reads) = spec.read_batch_max {
            config.raft.read_batch_max = reads;
        }
        if let Some(ticks) = spec.heartbeat_ticks {
            config.raft.heartbeat_interval_ticks = ticks;
        }
        if let Some(campaign) = spec.campaign_when_leader_down {
            config.raft.campaign_when_leader_down = campaign;
        }
        match data_dir {
            Some(dir) => {
                let node_dir = dir.join(format!("node-{}", member.id));
                std::fs::create_dir_all(&node_dir)
                    .with_context(|| format!("creating {} failed", node_dir.display()))?;
                config.log.storage = StorageKind::Disk;
                config.log.data_dir = node_dir;
                config.log.sync_writes = spec.durability == Durability::DiskSynced;
            }
            None => config.log.storage = StorageKind::Memory,
        }
        configs.push(config);
    }
    Ok(configs)
}

/// Finds `count` free TCP ports on 127.0.0.1 by binding and releasing them.
///
/// NOTE: another process may take a port between its release here and the node's bind,
/// and the node then fails to start.
fn free_loopback_addresses(count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding a free port on 127.0.0.1 failed")?;
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .context("reading a bound address failed")
        })
        .collect()
}

/// Waits until every group has one leader that all nodes agree on; returns, per group, the
/// leader's position in `handles`.
fn wait_for_leaders(handles: &[KvHandle], groups: u32) -> anyhow::Result<Vec<usize>> {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(leaders) = agreed_leaders(handles, groups)? {
            return Ok(leaders);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the embedded cluster's {groups} group(s) had no agreed leader within {} s; \
             check the log output above for a node that failed",
            LEADER_WAIT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Finds each group's leader as a position in `handles`, when every node names the same
/// one.
fn agreed_leaders(handles: &[KvHandle], groups: u32) -> anyhow::Result<Option<Vec<usize>>> {
    let statuses = handles
        .iter()
        .map(|handle| {
            handle
                .status()
                .context("reading an embedded node's status failed")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut leaders = Vec::with_capacity(groups as usize);
    for group in 0..groups {
        let named: Vec<Option<NodeId>> = statuses
            .iter()
            .map(|status| status.group(GroupId(group)).and_then(|group| group.leader))
            .collect();
        let Some(Some(leader)) = named.first().copied() else {
            return Ok(None);
        };
        if named.iter().any(|other| *other != Some(leader)) {
            return Ok(None);
        }
        match handles.iter().position(|handle| handle.node_id() == leader) {
            Some(position) => leaders.push(position),
            None => return Ok(None),
        }
    }
    Ok(Some(leaders))
}

/// The embedded cluster as the harness drives it: the nodes' handles and facts.
#[derive(Clone, Debug)]
pub struct EmbeddedTarget {
    handles: Vec<KvHandle>,
    leaders: Vec<usize>,
    durability: Durability,
    shards: usize,
    groups: u32,
}

impl Target for EmbeddedTarget {
    type Session = EmbeddedSession;

    async fn open_session(&self, index: usize) -> anyhow::Result<EmbeddedSession> {
        Ok(EmbeddedSession {
            handles: self.handles.clone(),
            leaders: RefCell::new(self.leaders.clone()),
            replica: index % self.handles.len(),
            groups: self.groups,
        })
    }

    fn facts(&self) -> TargetFacts {
        TargetFacts {
            kind: "embedded".to_string(),
            system: format!("shardraft {}", env!("CARGO_PKG_VERSION")),
            durability: self.durability.describe().to_string(),
            reached_through: format!(
                "{NODE_COUNT} nodes in this process ({} shard(s) each, {} group(s)), TCP on \
                 127.0.0.1 between them; requests through NodeHandle",
                self.shards, self.groups
            ),
        }
    }
}

/// Requests through the nodes' handles, with this session's view of the groups' leaders.
#[derive(Debug)]
pub struct EmbeddedSession {
    handles: Vec<KvHandle>,
    /// Position in `handles` of the node believed to lead each group.
    leaders: RefCell<Vec<usize>>,
    /// Position in `handles` of the node that serves this session's stale reads.
    replica: usize,
    groups: u32,
}

/// The result of one attempt at a request.
enum Attempt<T> {
    Done(Result<T, RequestError>),
    /// No effect; try again at the node now believed to lead, after a pause when no node
    /// is known to lead.
    Retry {
        pause: bool,
    },
}

impl EmbeddedSession {
    /// Runs `attempt` at the group's leader until it succeeds, fails, or the request
    /// timeout of the node passes; retries only after errors that mean no effect.
    async fn at_leader<T, F, Fut>(&self, group: GroupId, mut attempt: F) -> Result<T, RequestError>
    where
        F: FnMut(KvHandle) -> Fut,
        Fut: std::future::Future<Output = Result<T, NodeError>>,
    {
        let timeout_ms = self.handles[0].request_timeout_ms();
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let position = self.leaders.borrow()[group.0 as usize];
            let result = attempt(self.handles[position].clone()).await;
            match self.judge(group, position, result) {
                Attempt::Done(result) => return result,
                Attempt::Retry { pause } if Instant::now() < deadline => {
                    if pause {
                        glommio::timer::sleep(NO_LEADER_BACKOFF).await;
                    }
                }
                Attempt::Retry { .. } => {
                    return Err(RequestError::Refused(format!(
                        "group {} had no leader that accepted the request within {timeout_ms} \
                         ms",
                        group.0
                    )));
                }
            }
        }
    }

    /// Sorts one attempt's error into retry, refused (no effect) or indeterminate, and
    /// updates the leader of `group`.
    fn judge<T>(
        &self,
        group: GroupId,
        position: usize,
        result: Result<T, NodeError>,
    ) -> Attempt<T> {
        let error = match result {
            Ok(value) => return Attempt::Done(Ok(value)),
            Err(error) => error,
        };
        match error {
            NodeError::NotLeader {
                leader: Some(leader),
                ..
            } => {
                let next = self.handles.iter().position(|h| h.node_id() == leader);
                match next {
                    // A redirect to another node: retry there at once.
                    Some(next) if next != position => {
                        self.leaders.borrow_mut()[group.0 as usize] = next;
                        Attempt::Retry { pause: false }
                    }
                    // A redirect to the node just asked, or to a node this target does not
                    // know: retrying at once would spin on the same answer.
                    _ => Attempt::Retry { pause: true },
                }
            }
            NodeError::NotLeader { leader: None, .. } => {
                // No node is known to lead: try the next one after a pause.
                self.leaders.borrow_mut()[group.0 as usize] = (position + 1) % self.handles.len();
                Attempt::Retry { pause: true }
            }
            // Another leader's entry took the index: the group is changing leaders, so give
            // the election a moment instead of retrying at once.
            NodeError::ProposalDropped { .. } => Attempt::Retry { pause: true },
            NodeError::UnknownGroup { .. } | NodeError::Busy { .. } | NodeError::Config(_) => {
                Attempt::Done(Err(RequestError::Refused(error.to_string())))
            }
            // Errors of membership changes and leadership transfers, which a workload of
            // reads and writes does not make.
            NodeError::ChangePending { .. }
            | NodeError::LeaderNotReady { .. }
            | NodeError::LeaderTransferring { .. }
            | NodeError::TransferInProgress { .. }
            | NodeError::InvalidChange { .. }
            | NodeError::InvalidTransfer { .. }
            | NodeError::TransferAbandoned { .. } => {
                Attempt::Done(Err(RequestError::Refused(error.to_string())))
            }
            NodeError::Timeout { .. }
            | NodeError::Stopped
            | NodeError::Storage(_)
            | NodeError::AddressFile(_)
            | NodeError::Startup { .. } => {
                Attempt::Done(Err(RequestError::Indeterminate(error.to_string())))
            }
        }
    }

    async fn put(&self, key: &Bytes, value: &Bytes) -> Result<Response, RequestError> {
        let command = Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }
        .encode()
        .map_err(|error| RequestError::Refused(format!("encoding the put failed: {error}")))?;
        let group = node::group_for_key(key, self.groups);
        let applied = self
            .at_leader(group, |handle| {
                let command = command.clone();
                async move { handle.propose_async(group, command).await }
            })
            .await?;
        match applied.output {
            Ok(_) => Ok(Response::Written),
            Err(error) => Err(RequestError::Refused(format!(
                "the store rejected the put: {error}"
            ))),
        }
    }

    async fn get_linearizable(&self, key: &Bytes) -> Result<Response, RequestError> {
        let group = node::group_for_key(key, self.groups);
        let value = self
            .at_leader(group, |handle| {
                let key = key.clone();
                async move {
                    let read = move |kv: &KvStateMachine| kv.get(&key).map(|found| found.value);
                    handle
                        .read_async(group, shardraft::node::ReadMode::Linearizable, read)
                        .await
                }
            })
            .await?;
        Ok(Response::Value(value))
    }

    async fn get_stale(&self, key: &Bytes) -> Result<Response, RequestError> {
        let group = node::group_for_key(key, self.groups);
        let key = key.clone();
        let read = move |kv: &KvStateMachine| kv.get(&key).map(|found| found.value);
        let handle = &self.handles[self.replica];
        match handle
            .read_async(group, shardraft::node::ReadMode::Stale, read)
            .await
        {
            Ok(value) => Ok(Response::Value(value)),
            Err(error) => Err(RequestError::Refused(error.to_string())),
        }
    }
}

impl Session for EmbeddedSession {
    async fn execute(&self, request: &Request) -> Result<Response, RequestError> {
        match request {
            Request::Put { key, value } => self.put(key, value).await,
            Request::Get {
                key,
                mode: super::ReadMode::Linearizable,
            } => self.get_linearizable(key).await,
            Request::Get {
                key,
                mode: super::ReadMode::Stale,
            } => self.get_stale(key).await,
        }
    }

    fn multiplexes(&self) -> bool {
        true
    }
}

/// A directory of one run inside the data directory, removed at the end and, as far as
/// possible, when the run fails.
///
/// NOTE: a run killed by a signal (Ctrl-C included) leaves its directory behind, because
/// nothing handles signals; the next runs do not reuse or remove it.
#[derive(Debug)]
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    fn create(parent: &Path) -> anyhow::Result<ScratchDir> {
        crate::wal::environment::prepare_data_dir(parent)?;
        let started_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let name = format!("run-{}-{started_nanos:09}", std::process::id());
        let path = parent.join(name);
        std::fs::create_dir(&path)
            .with_context(|| format!("creating {} failed", path.display()))?;
        Ok(ScratchDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove(self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.path)
            .with_context(|| format!("removing {} failed", self.path.display()))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Reached with the directory still present only when the run failed; the error
        // that ended it matters more than one from this cleanup.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
