//! Failover: how long group 0 of the embedded cluster goes without a commit when its
//! leader dies.
//!
//! The cluster runs under a steady closed-loop write load for a warm-up, so that a tuner
//! (with `--tuning`) can learn the round trips and fdatasyncs and agree on a shorter
//! election timing. Then each trial kills group 0's leader at once, as a crashed process
//! would, and probes the surviving nodes with writes to group 0 until one commits. The
//! trial's figure is the time from the kill to that first commit: the old leader's
//! silence being noticed, the pre-vote and vote rounds, the new leader's no-op and the
//! probe itself. The killed node then restarts from its disk, and the load runs for
//! `--settle` seconds before the next trial.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use serde::Serialize;
use shardraft::kv::{Command, KvStateMachine};
use shardraft::log::GroupId;
use shardraft::node::NodeHandle;
use shardraft::raft::GroupTiming;

use super::target::embedded::EmbeddedCluster;
use super::workload::{RunArgs, Workload};

type KvHandle = NodeHandle<KvStateMachine>;

/// The group whose leader each trial kills.
const GROUP: GroupId = GroupId(0);

/// Maximum time a trial waits for the first commit after the kill.
const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Pause between two probe writes that found no leader.
const PROBE_INTERVAL: Duration = Duration::from_micros(200);

/// The options of `shardraft-bench failover`.
#[derive(Clone, Debug, clap::Args)]
pub struct FailoverArgs {
    /// Trials: each kills group 0's leader and restarts it afterwards.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,

    /// Seconds of load before the first trial, so that a tuner can settle.
    #[arg(long = "warmup-load", value_name = "SECS", default_value_t = 10.0)]
    pub warmup_load_secs: f64,

    /// Seconds of load between a restart and the next trial.
    #[arg(long = "settle", value_name = "SECS", default_value_t = 5.0)]
    pub settle_secs: f64,

    /// Closed-loop writers that load group 0 throughout.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,

    /// Also write the trials to this file as JSON.
    #[arg(long = "failover-json", value_name = "PATH")]
    pub trials_json: Option<std::path::PathBuf>,

    /// The embedded cluster's options, as `run` takes them (storage, groups, --tuning,
    /// --tuning-interval-ms, batching); its load options are not used.
    #[command(flatten)]
    pub run: RunArgs,
}

/// One trial: the leader killed and how long the group went without a commit.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverTrial {
    pub killed_node: u64,
    /// Group 0's timing in force at the killed leader.
    pub heartbeat_interval_ticks: u32,
    pub election_timeout_ticks_min: u32,
    pub election_timeout_ticks_max: u32,
    pub new_leader: u64,
    /// From the kill until a probe write committed at the new leader.
    pub commit_gap_millis: f64,
    /// Leader elections won in any group between the kill and the restarted node's
    /// settling.
    pub elections: u64,
}

/// The outcome of all trials.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverReport {
    pub tuning: bool,
    pub tick_interval_ms: u64,
    pub trials: Vec<FailoverTrial>,
    /// Leader elections won during the warm-up, when no leader was killed: each one
    /// replaced a healthy leader. Elections while a trial's node restarts and settles count
    /// in that trial.
    pub elections_without_kill: u64,
    /// Writes the background load committed.
    pub writes: u64,
}

impl FailoverReport {
    /// Returns the median and the longest commit gap of the trials, in milliseconds.
    pub fn gap_median_and_max_millis(&self) -> Option<(f64, f64)> {
        let mut gaps: Vec<f64> = self
            .trials
            .iter()
            .map(|trial| trial.commit_gap_millis)
            .collect();
        gaps.sort_by(f64::total_cmp);
        let median = *gaps.get(gaps.len() / 2)?;
        Some((median, *gaps.last()?))
    }
}

/// Runs the trials of `args` and prints each as it ends.
///
/// # Errors
///
/// When the options are invalid, the cluster cannot start, a node cannot be restarted, or
/// no write commits within 30 s of a kill.
pub fn run_failover(args: &FailoverArgs) -> anyhow::Result<FailoverReport> {
    if args.trials == 0 {
        bail!("--trials 0 is invalid: run at least one trial");
    }
    if args.writers == 0 {
        bail!("--writers 0 is invalid: the load needs at least one writer");
    }
    let workload: Workload = args.run.validate()?;
    let spec = workload
        .cluster
        .context("failover needs --target embedded: it kills nodes of its own cluster")?;
    let mut cluster = EmbeddedCluster::start(&spec)?;
    let tick_interval_ms = shardraft::config::NodeConfig::default().tick_interval_ms;
    println!(
        "failover: 3 nodes in this process, {} group(s), {}, tuning {}; {} trials, {} writers",
        spec.groups,
        spec.durability.describe(),
        if spec.tuning { "on" } else { "off" },
        args.trials,
        args.writers
    );

    let live = Arc::new(RwLock::new(cluster.handles().to_vec()));
    let load = Load::start(&live, args.writers);
    let mut report = FailoverReport {
        tuning: spec.tuning,
        tick_interval_ms,
        trials: Vec::with_capacity(args.trials),
        elections_without_kill: 0,
        writes: 0,
    };
    let outcome = run_trials(args, &mut cluster, &live, &mut report);
    report.writes = load.stop();
    let stopped = cluster.shutdown();
    outcome?;
    stopped?;
    if let Some(path) = &args.trials_json {
        let text = serde_json::to_string_pretty(&report).context("encoding the trials failed")?;
        std::fs::write(path, text).with_context(|| format!("writing {} failed", path.display()))?;
        println!("trials written to {}", path.display());
    }
    Ok(report)
}

fn run_trials(
    args: &FailoverArgs,
    cluster: &mut EmbeddedCluster,
    live: &Arc<RwLock<Vec<KvHandle>>>,
    report: &mut FailoverReport,
) -> anyhow::Result<()> {
    let before_warmup = elections_won(cluster.handles())?;
    std::thread::sleep(Duration::from_secs_f64(args.warmup_load_secs));
    report.elections_without_kill += elections_won(cluster.handles())? - before_warmup;
    for trial in 1..=args.trials {
        let (position, timing) = leader_of_group(cluster.handles())?;
        let killed_node = cluster.handles()[position].node_id().0;
        let survivors_before = elections_won_except(cluster.handles(), killed_node)?;

        let killed_at = Instant::now();
        let config = cluster.kill_node(position);
        *live.write().unwrap_or_else(|poison| poison.into_inner()) = cluster.handles().to_vec();
        let (new_leader, gap) = first_commit(cluster.handles(), killed_at, trial)?;

        cluster.restart_node(position, &config)?;
        *live.write().unwrap_or_else(|poison| poison.into_inner()) = cluster.handles().to_vec();
        std::thread::sleep(Duration::from_secs_f64(args.settle_secs));
        // The restarted node's counters start at 0, so all of its wins came after the kill.
        let survivors_after = elections_won_except(cluster.handles(), killed_node)?;
        let restarted = elections_won(&cluster.handles()[position..=position])?;
        let elections = survivors_after.saturating_sub(survivors_before) + restarted;
        let result = FailoverTrial {
            killed_node,
            heartbeat_interval_ticks: timing.heartbeat_interval_ticks,
            election_timeout_ticks_min: timing.election_timeout_ticks_min,
            election_timeout_ticks_max: timing.election_timeout_ticks_max,
            new_leader,
            commit_gap_millis: gap.as_secs_f64() * 1e3,
            elections,
        };
        println!(
            "trial {trial}: killed leader n{killed_node} (heartbeat {} ticks, election \
             timeout {}..{} ticks); n{new_leader} committed {:.1} ms later; {elections} \
             election(s) won",
            result.heartbeat_interval_ticks,
            result.election_timeout_ticks_min,
            result.election_timeout_ticks_max,
            result.commit_gap_millis
        );
        report.trials.push(result);
    }
    Ok(())
}

/// Returns the position of group 0's leader in `handles` and the timing in force there.
fn leader_of_group(handles: &[KvHandle]) -> anyhow::Result<(usize, GroupTiming)> {
    let deadline = Instant::now() + COMMIT_WAIT;
    loop {
        for (position, handle) in handles.iter().enumerate() {
            let status = handle
                .status()
                .context("reading an embedded node's status failed")?;
            if let Some(group) = status.group(GROUP)
                && group.leader == Some(handle.node_id())
            {
                return Ok((position, group.timing));
            }
        }
        if Instant::now() >= deadline {
            bail!("group 0 had no leader for {} s", COMMIT_WAIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Probes `survivors` with writes to group 0 until one commits; returns the node that
/// committed it and the time since `killed_at`.
fn first_commit(
    survivors: &[KvHandle],
    killed_at: Instant,
    trial: usize,
) -> anyhow::Result<(u64, Duration)> {
    let command = put(&format!("failover-probe-{trial}"));
    loop {
        for handle in survivors {
            if handle.propose(GROUP, command.clone()).is_ok() {
                return Ok((handle.node_id().0, killed_at.elapsed()));
            }
        }
        if killed_at.elapsed() > COMMIT_WAIT {
            bail!(
                "no write to group 0 committed within {} s of killing its leader",
                COMMIT_WAIT.as_secs()
            );
        }
        std::thread::sleep(PROBE_INTERVAL);
    }
}

/// Leader elections won in any group on the nodes of `handles`, summed.
fn elections_won(handles: &[KvHandle]) -> anyhow::Result<u64> {
    elections_won_except(handles, 0)
}

/// Leader elections won in any group on the nodes of `handles` other than `node`, summed.
fn elections_won_except(handles: &[KvHandle], node: u64) -> anyhow::Result<u64> {
    let mut won = 0;
    for handle in handles.iter().filter(|handle| handle.node_id().0 != node) {
        let status = handle
            .status()
            .context("reading an embedded node's status failed")?;
        won += status
            .shards
            .iter()
            .map(|shard| shard.elections_won)
            .sum::<u64>();
    }
    Ok(won)
}

fn put(key: &str) -> Bytes {
    // A put of a short key and value always encodes.
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: b"v".to_vec(),
    }
    .encode()
    .unwrap_or_default()
}

/// Closed-loop writers to group 0 through whichever live node leads it.
struct Load {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(live: &Arc<RwLock<Vec<KvHandle>>>, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let threads = (0..writers)
            .map(|writer| {
                let live = Arc::clone(live);
                let stop = Arc::clone(&stop);
                let writes = Arc::clone(&writes);
                std::thread::spawn(move || write_until_stopped(writer, &live, &stop, &writes))
            })
            .collect();
        Load {
            stop,
            writes,
            threads,
        }
    }

    /// Stops the writers and returns the writes they committed.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.writes.load(Ordering::Relaxed)
    }
}

fn write_until_stopped(
    writer: usize,
    live: &RwLock<Vec<KvHandle>>,
    stop: &AtomicBool,
    writes: &AtomicU64,
) {
    let mut sequence = 0u64;
    let mut target = writer;
    while !stop.load(Ordering::Relaxed) {
        let handle = {
            let handles = live.read().unwrap_or_else(|poison| poison.into_inner());
            if handles.is_empty() {
                return;
            }
            handles[target % handles.len()].clone()
        };
        let command = put(&format!("load-{writer}-{sequence}"));
        match handle.propose(GROUP, command) {
            Ok(_) => {
                writes.fetch_add(1, Ordering::Relaxed);
                sequence += 1;
            }
            Err(_) => {
                // Not the leader, or the node was killed: try the next one shortly.
                target += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
