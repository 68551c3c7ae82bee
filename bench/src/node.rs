//! The in-process cluster benchmark: three nodes in this process, each with its own shard
//! executors, disk log (O_DIRECT and fdatasync) and loopback TCP connections, driven through
//! the embedding API by closed-loop proposers.
//!
//! Proposers run as tasks on one extra glommio executor and call
//! [`NodeHandle::propose_async`] on the node that leads their group, so a write's latency
//! spans the whole path: request channel, leader's core, log write and replication in
//! parallel, quorum, apply, reply. CPU time per write is the process's CPU time over the
//! run divided by the writes, so it includes all three replicas and the proposers.

use std::cell::RefCell;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use shardraft::config::{MemberConfig, NodeConfig};
use shardraft::kv::{Command, KvLimits, KvStateMachine};
use shardraft::log::{GroupId, StorageKind};
use shardraft::node::{Node, NodeError, NodeHandle};
use shardraft::raft::NodeId;

use crate::wal::{LatencySummary, new_latency_histogram};

/// Members of the benchmark cluster.
const NODE_COUNT: u64 = 3;

/// One benchmark cell.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct NodeSpec {
    pub proposers: usize,
    pub groups: u32,
    pub shards: usize,
    pub value_bytes: usize,
}

/// What one cell measured.
#[derive(Clone, Debug, Serialize)]
pub struct NodeOutcome {
    pub spec: NodeSpec,
    pub writes: u64,
    pub errors: u64,
    pub elapsed_secs: f64,
    pub writes_per_sec: f64,
    pub latency: LatencySummary,
    /// Process CPU time over the measured writes: three replicas and the proposers.
    pub cpu_micros_per_write: f64,
    /// fdatasync calls of all three nodes' logs during the cell, per write.
    pub syncs_per_write: f64,
}

type KvHandle = NodeHandle<KvStateMachine>;

fn free_addresses(count: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("binding loopback ports failed")?;
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .context("reading a bound address failed")
        })
        .collect()
}

fn cluster_configs(dir: &Path, spec: &NodeSpec) -> anyhow::Result<Vec<NodeConfig>> {
    let addresses = free_addresses(NODE_COUNT as usize * spec.shards)?;
    let members: Vec<MemberConfig> = (0..NODE_COUNT as usize)
        .map(|node| MemberConfig {
            id: node as u64 + 1,
            addresses: addresses[node * spec.shards..(node + 1) * spec.shards].to_vec(),
        })
        .collect();
    let mut configs = Vec::new();
    for node_id in 1..=NODE_COUNT {
        let data_dir = dir.join(format!("node-{node_id}"));
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {} failed", data_dir.display()))?;
        let mut config = NodeConfig {
            cluster_id: 0xbe9c,
            node_id,
            members: members.clone(),
            shards: Some(spec.shards),
            groups: spec.groups,
            ..NodeConfig::default()
        };
        config.log.storage = StorageKind::Disk;
        config.log.data_dir = data_dir;
        configs.push(config);
    }
    Ok(configs)
}

/// Waits until every group has one leader that all nodes agree on; returns, per group, the
/// position of the leader in `handles`.
fn wait_for_leaders(handles: &[KvHandle], groups: u32) -> anyhow::Result<Vec<usize>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders = vec![None; groups as usize];
        let mut agreed = true;
        for handle in handles {
            let status = handle.status().context("reading node status failed")?;
            for group in 0..groups {
                let Some(leader) = status.group(GroupId(group)).and_then(|g| g.leader) else {
                    agreed = false;
                    continue;
                };
                match leaders[group as usize] {
                    None => leaders[group as usize] = Some(leader),
                    Some(known) if known != leader => agreed = false,
                    Some(_) => {}
                }
            }
        }
        if agreed {
            let position = |leader: NodeId| handles.iter().position(|h| h.node_id() == leader);
            let positions: Option<Vec<usize>> = leaders
                .iter()
                .map(|leader| leader.and_then(position))
                .collect();
            if let Some(positions) = positions {
                return Ok(positions);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "groups had no agreed leaders within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put_command(proposer: usize, sequence: u64, value_bytes: usize) -> anyhow::Result<bytes::Bytes> {
    let mut value = format!("{sequence:016x}").into_bytes();
    value.resize(value_bytes, b'v');
    Command::Put {
        key: format!("p{proposer}-k{}", sequence % 1024).into_bytes(),
        value,
    }
    .encode()
    .context("encoding a put failed")
}

fn total_syncs(handles: &[KvHandle]) -> anyhow::Result<u64> {
    let mut syncs = 0;
    for handle in handles {
        let status = handle.status().context("reading node status failed")?;
        syncs += status
            .shards
            .iter()
            .filter_map(|shard| shard.log.map(|log| log.syncs))
            .sum::<u64>();
    }
    Ok(syncs)
}

/// Runs one cell: starts the cluster under `dir`, waits for leaders, runs the proposers for
/// `warmup` unmeasured and `duration` measured, then stops the cluster.
pub fn run_cell(
    dir: &Path,
    spec: NodeSpec,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<NodeOutcome> {
    let configs = cluster_configs(dir, &spec)?;
    let limits = KvLimits {
        key_bytes_max: 1024,
        value_bytes_max: 1 << 20,
    };
    let mut nodes = Vec::new();
    for config in &configs {
        let node = Node::start(config.clone(), move |_| KvStateMachine::new(limits))
            .with_context(|| format!("starting node {} failed", config.node_id))?;
        nodes.push(node);
    }
    let handles: Vec<KvHandle> = nodes.iter().map(Node::handle).collect();
    let leaders = wait_for_leaders(&handles, spec.groups)?;

    let stop = Arc::new(AtomicBool::new(false));
    let executor = glommio::LocalExecutorBuilder::default()
        .name("bench-proposers")
        .spawn({
            let handles = handles.clone();
            let stop = Arc::clone(&stop);
            move || drive_proposers(handles, leaders, spec, warmup, stop)
        })
        .map_err(std::io::Error::from)
        .context("starting the proposer executor failed")?;
    std::thread::sleep(warmup);
    let syncs_before = total_syncs(&handles)?;
    let cpu_before = cpu_time::ProcessTime::now();
    let started = Instant::now();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let (writes, errors, histogram) = executor
        .join()
        .map_err(|error| anyhow::anyhow!("the proposer executor failed: {error}"))??;
    let elapsed = started.elapsed();
    let cpu = cpu_before.elapsed();
    let syncs = total_syncs(&handles)? - syncs_before;

    drop(handles);
    for node in nodes {
        node.shutdown().context("stopping a node failed")?;
    }
    Ok(NodeOutcome {
        spec,
        writes,
        errors,
        elapsed_secs: elapsed.as_secs_f64(),
        writes_per_sec: writes as f64 / elapsed.as_secs_f64(),
        latency: LatencySummary::from_nanos(&histogram),
        cpu_micros_per_write: cpu.as_secs_f64() * 1e6 / writes.max(1) as f64,
        syncs_per_write: syncs as f64 / writes.max(1) as f64,
    })
}

/// Counts of the measured part of a run: writes, errors and their latencies.
type Measured = (u64, u64, Histogram<u64>);

async fn drive_proposers(
    handles: Vec<KvHandle>,
    leaders: Vec<usize>,
    spec: NodeSpec,
    warmup: Duration,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Measured> {
    let measuring_from = Instant::now() + warmup;
    let totals = Rc::new(RefCell::new((0u64, 0u64, new_latency_histogram())));
    let mut tasks = Vec::new();
    for proposer in 0..spec.proposers {
        let handles = handles.clone();
        let leaders = leaders.clone();
        let totals = Rc::clone(&totals);
        let stop = Arc::clone(&stop);
        tasks.push(glommio::spawn_local(async move {
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                sequence += 1;
                let group =
                    (proposer as u32 + sequence as u32 * spec.proposers as u32) % spec.groups;
                let handle = &handles[leaders[group as usize]];
                let command = put_command(proposer, sequence, spec.value_bytes)?;
                let started = Instant::now();
                let result = handle.propose_async(GroupId(group), command).await;
                if started < measuring_from {
                    continue;
                }
                let mut totals = totals.borrow_mut();
                match result {
                    Ok(_) => {
                        totals.0 += 1;
                        let nanos = started.elapsed().as_nanos() as u64;
                        totals.2.saturating_record(nanos.max(1));
                    }
                    Err(NodeError::Stopped) => return Ok::<(), anyhow::Error>(()),
                    Err(_) => totals.1 += 1,
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    let totals = Rc::try_unwrap(totals)
        .map_err(|_| anyhow::anyhow!("a proposer task outlived the run"))?
        .into_inner();
    Ok(totals)
}
