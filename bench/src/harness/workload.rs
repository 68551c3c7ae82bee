//! The workload of a bench run: the command-line options of `shardraft-bench run`, their
//! validation into a [`Workload`], and the generators of keys, operations and values.
//!
//! Every option is checked once, here, before anything starts: a value out of range or a
//! combination that cannot work is an error that names the option, the value and the fix.
//! The rest of the harness reads only the validated [`Workload`], which is also what the
//! JSON result records as the run's configuration.
//!
//! Keys are `k` and a zero-padded decimal rank (`k0000042`), drawn uniformly or from a
//! zipfian distribution over the ranks. Each write's value starts with a tag that is unique
//! within the run (the writer and its sequence number, in hex), padded with `.` to
//! `--value-bytes`, so that the linearizability checker can tell every write apart.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure};
use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;

use super::target::{ReadMode, Request};

/// Default closed-loop clients: enough concurrent writes for group commit to batch many
/// entries per fdatasync, few enough that a small machine runs them on one thread.
pub const CLIENTS_DEFAULT: usize = 64;

/// Default measured seconds.
pub const DURATION_SECS_DEFAULT: f64 = 5.0;

/// Default unmeasured seconds at the start of every point: connections open, the log
/// prepares its next segment, and caches warm up.
pub const WARMUP_SECS_DEFAULT: f64 = 1.0;

/// Default keys.
pub const KEYS_DEFAULT: u64 = 10_000;

/// Largest key count, so that the zipfian constants (one pass over the ranks) stay cheap
/// and keys stay short.
pub const KEYS_MAX: u64 = 100_000_000;

/// Largest value, the key-value store's own limit in the embedded cluster.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// Default zipfian skew. With 10,000 keys, the 100 most frequent then take about 52 % of
/// the operations.
pub const ZIPF_THETA_DEFAULT: f64 = 0.99;

/// Default bound on the linearizability check, in seconds.
pub const CHECK_TIME_LIMIT_SECS_DEFAULT: f64 = 60.0;

/// Byte that pads a value's unique tag to `--value-bytes`; never part of a tag.
const VALUE_PADDING: u8 = b'.';

/// The system a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A 3-node shardraft cluster started inside this process.
    Embedded,
    /// A running shardraft cluster, through its client protocol.
    Endpoints,
    /// A running etcd cluster, through its JSON gateway.
    Etcd,
}

/// Distribution of the keys that operations choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum KeyDistributionKind {
    Uniform,
    Zipfian,
}

/// Consistency of reads, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadModeArg {
    Linearizable,
    Stale,
}

/// Log storage of the embedded cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StorageArg {
    Disk,
    Memory,
}

/// Whether the embedded cluster's disk logs fdatasync each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SyncArg {
    On,
    Off,
}

/// Whether the embedded cluster's groups take snapshots and compact their logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SnapshotsArg {
    On,
    Off,
}

/// Whether the embedded cluster's followers campaign at once when their leader refuses
/// connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LeaderDownArg {
    On,
    Off,
}

/// The options of `shardraft-bench run`, which is also the command without a subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// The system to measure: a 3-node cluster in this process, a running shardraft
    /// cluster (--endpoints), or a running etcd cluster (--endpoints).
    #[arg(long, value_enum, default_value_t = TargetKind::Embedded)]
    pub target: TargetKind,

    /// Client addresses of a running cluster, comma-separated, such as
    /// 127.0.0.1:7101,127.0.0.1:7102. Required by --target endpoints and etcd.
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,

    /// Concurrent clients in closed loop (each waits for its reply before the next
    /// request), or the maximum operations in flight with --rate. Default: 64.
    #[arg(long)]
    pub clients: Option<usize>,

    /// Sessions (connections) to the target, shared by the clients. Targets that serve one
    /// request at a time per connection (etcd over HTTP/1.1) get one per client instead.
    /// Default: one per load thread.
    #[arg(long)]
    pub connections: Option<usize>,

    /// Threads that run the clients, each a glommio executor. Default for the embedded
    /// target: the CPUs divided by one more than the cluster's shard threads, at least 1.
    /// Default for a running cluster: half the CPUs.
    #[arg(long)]
    pub load_threads: Option<usize>,

    /// Measured seconds per point. Default: 5.
    #[arg(long = "duration", value_name = "SECS", conflicts_with = "operations")]
    pub duration_secs: Option<f64>,

    /// Measured operations per point, instead of a duration.
    #[arg(long, value_name = "COUNT")]
    pub operations: Option<u64>,

    /// Unmeasured seconds at the start of every point.
    #[arg(long = "warmup", value_name = "SECS", default_value_t = WARMUP_SECS_DEFAULT)]
    pub warmup_secs: f64,

    /// Bytes of each written value.
    #[arg(long, default_value_t = 16)]
    pub value_bytes: usize,

    /// Distinct keys that operations choose from.
    #[arg(long, default_value_t = KEYS_DEFAULT)]
    pub keys: u64,

    /// Distribution of the keys that operations choose.
    #[arg(long, value_enum, default_value_t = KeyDistributionKind::Uniform)]
    pub key_distribution: KeyDistributionKind,

    /// Skew of --key-distribution zipfian, above 0 and below 1. Default: 0.99.
    #[arg(long)]
    pub zipf_theta: Option<f64>,

    /// Share of operations that are reads, from 0 to 1; the rest are writes.
    #[arg(long, default_value_t = 0.0)]
    pub read_fraction: f64,

    /// Consistency of reads.
    #[arg(long, value_enum, default_value_t = ReadModeArg::Linearizable)]
    pub read_mode: ReadModeArg,

    /// Raft groups of the embedded cluster. Default: 1.
    #[arg(long)]
    pub groups: Option<u32>,

    /// Shards (executor threads) per node of the embedded cluster. Default: 1.
    #[arg(long)]
    pub shards: Option<usize>,

    /// Log storage of the embedded cluster. Default: disk.
    #[arg(long, value_enum)]
    pub storage: Option<StorageArg>,

    /// Whether the embedded cluster's disk logs fdatasync each batch before they
    /// acknowledge it. Off: a write survives a crash of the process but not of the
    /// machine. Default: on.
    #[arg(long, value_enum)]
    pub sync: Option<SyncArg>,

    /// Whether the embedded cluster's groups take snapshots at the engine's default
    /// triggers and compact their logs behind them. Off: logs grow for the whole run, for
    /// comparing latency without snapshots. Default: on.
    #[arg(long, value_enum)]
    pub snapshots: Option<SnapshotsArg>,

    /// After the last point, replace one node's data directory of the embedded cluster with
    /// an empty one, restart the node, and measure the snapshot installs that bring it back:
    /// MiB/s and the time until it caught up. Needs disk storage with snapshots on.
    #[arg(long)]
    pub measure_install: bool,

    /// Run the engine's adaptive tuner in the embedded cluster's nodes, with its default
    /// `[tuning]` settings; its decisions are logged at info (RUST_LOG=shardraft=info).
    #[arg(long)]
    pub tuning: bool,

    /// Length of one tuning interval of the embedded nodes, in milliseconds (the engine's
    /// `tuning.interval_ms`), with --tuning. Shorter intervals let the tuner reach its
    /// settings sooner: it changes the election timing at most once per 30 intervals.
    /// Default: the engine's, 1000.
    #[arg(long, value_name = "MILLIS", requires = "tuning")]
    pub tuning_interval_ms: Option<u64>,

    /// Multiple of the p99.9 heartbeat round trip plus the p99.9 fdatasync below which the
    /// tuner never sets the minimum election timeout (the engine's `tuning.safety_factor`),
    /// with --tuning. Default: the engine's.
    #[arg(long, value_name = "FACTOR", requires = "tuning")]
    pub tuning_safety_factor: Option<f64>,

    /// Static proposal linger of the embedded nodes, in microseconds (the engine's
    /// `proposal_linger_us`). Default: the engine's, 0.
    #[arg(long, value_name = "MICROS")]
    pub linger_us: Option<u64>,

    /// AppendEntries in flight per follower in the embedded nodes (the engine's
    /// `raft.max_inflight_messages`). Default: the engine's, 64.
    #[arg(long, value_name = "COUNT")]
    pub max_inflight_messages: Option<usize>,

    /// Entries per AppendEntries in the embedded nodes (the engine's
    /// `raft.max_entries_per_message`). Default: the engine's, 512.
    #[arg(long, value_name = "COUNT")]
    pub max_entries_per_message: Option<usize>,

    /// Linearizable reads that start a ReadIndex round while another is in flight, in the
    /// embedded nodes (the engine's `raft.read_batch_max`). Default: the engine's, 1.
    #[arg(long, value_name = "COUNT")]
    pub read_batch_max: Option<usize>,

    /// Ticks between a leader's heartbeats in the embedded nodes (the engine's
    /// `raft.heartbeat_interval_ticks`), at most a third of the minimum election timeout.
    /// Default: the engine's, 3.
    #[arg(long, value_name = "TICKS")]
    pub heartbeat_ticks: Option<u32>,

    /// Whether followers in the embedded nodes campaign within a heartbeat interval once
    /// their leader refuses connections (the engine's `raft.campaign_when_leader_down`).
    /// Off: they wait out the election timeout, as after a host crash or a partition.
    /// Default: the engine's, on.
    #[arg(long, value_enum)]
    pub campaign_when_leader_down: Option<LeaderDownArg>,

    /// Open loop: start operations at this many per second, on a fixed schedule, and
    /// measure latency from each operation's intended start.
    #[arg(long, value_name = "OPS")]
    pub rate: Option<f64>,

    /// Run one point per client count, comma-separated, such as 1,4,16,64,256.
    #[arg(long, value_delimiter = ',', conflicts_with = "clients")]
    pub sweep_clients: Vec<usize>,

    /// Run one open-loop point per rate in operations per second, comma-separated.
    #[arg(long, value_delimiter = ',', conflicts_with = "rate")]
    pub sweep_rates: Vec<f64>,

    /// Add a closed-loop point of bursts after the others, written HIGH/LOW/PERIOD: in the
    /// first half of every PERIOD seconds HIGH clients run, in the second half LOW of them.
    /// For example 256/1/4 alternates 2 s of 256 clients with 2 s of one client.
    #[arg(long, value_name = "HIGH/LOW/PERIOD", value_parser = parse_burst, conflicts_with_all = ["rate", "sweep_rates"])]
    pub burst: Option<(usize, Burst)>,

    /// Parent of the embedded cluster's data directory, created if missing; the run's own
    /// directory inside it is removed afterwards. It must be on a disk, not tmpfs.
    /// Default: under the system temp directory, or under the cargo target directory
    /// when that is tmpfs.
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// Also write the result, histograms included, to this file as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,

    /// Also write one CSV row per point and operation kind to this file.
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,

    /// Also draw p50 and p99 latency against throughput, one mark per point, as SVG.
    #[arg(long, value_name = "PATH")]
    pub chart: Option<PathBuf>,

    /// Seed of the generators of keys and operations.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Record every operation and check the history for linearizability after each point.
    #[arg(long)]
    pub check: bool,

    /// Seconds the linearizability check of one point may take. Default: 60.
    #[arg(long = "check-time-limit", value_name = "SECS")]
    pub check_time_limit_secs: Option<f64>,

    /// Print no live progress line.
    #[arg(long)]
    pub no_progress: bool,
}

/// How long each point runs after its warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunLength {
    /// A fixed measured time.
    Duration { secs: f64 },
    /// A fixed count of measured operations.
    Operations { count: u64 },
}

/// Key distribution with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum KeyDistribution {
    Uniform,
    Zipfian { theta: f64 },
}

/// One load level of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct LoadLevel {
    /// Closed loop: concurrent clients. Open loop: maximum operations in flight.
    pub clients: usize,
    /// Open loop: intended operations per second; `None` in closed loop.
    pub rate_per_sec: Option<f64>,
    /// Closed loop only: bursts, in which `clients` alternate with fewer clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
}

impl LoadLevel {
    /// A closed-loop level of `clients` clients that all run for the whole point.
    pub fn closed(clients: usize) -> LoadLevel {
        LoadLevel {
            clients,
            rate_per_sec: None,
            burst: None,
        }
    }
}

/// A closed-loop load that alternates: in the first half of every period all of the
/// level's clients run, in the second half only the first `low_clients` of them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Burst {
    pub low_clients: usize,
    pub period_secs: f64,
}

impl Burst {
    /// Returns when `client` may start its next operation: at once (`None`) while it runs,
    /// or at the start of the next busy half-period while it pauses. `elapsed` counts from
    /// the point's start.
    pub fn pause_until(&self, client: u64, elapsed: Duration) -> Option<Duration> {
        if client < self.low_clients as u64 {
            return None;
        }
        let period = Duration::from_secs_f64(self.period_secs);
        // One division, so that the position in the period and the period's number agree
        // at a boundary.
        let periods = elapsed.as_secs_f64() / self.period_secs;
        let periods_done = periods.floor();
        if periods - periods_done < 0.5 {
            return None;
        }
        Some(period * (periods_done as u32 + 1))
    }
}

/// Storage of the embedded cluster's log, and the durability of an acknowledged write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// O_DIRECT writes made durable (O_DSYNC, the log's default) on a majority before
    /// acknowledgement.
    DiskSynced,
    /// O_DIRECT writes on a majority, no fdatasync.
    DiskUnsynced,
    /// No persistence at all.
    Memory,
}

impl Durability {
    /// Describes the durability class in words, as every report states it.
    pub fn describe(self) -> &'static str {
        match self {
            Durability::DiskSynced => {
                "disk: O_DIRECT write made durable (O_DSYNC) on a majority before \
                 acknowledgement"
            }
            Durability::DiskUnsynced => {
                "disk without fdatasync (--sync off): O_DIRECT write on a majority before \
                 acknowledgement; an acknowledged write survives a crash of the process, not \
                 a power loss"
            }
            Durability::Memory => {
                "memory (--storage memory): nothing persisted; an acknowledged write lives \
                 only while a majority of the nodes runs"
            }
        }
    }
}

/// The embedded cluster of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterSpec {
    pub groups: u32,
    pub shards: usize,
    pub durability: Durability,
    /// Whether groups take snapshots and compact their logs.
    pub snapshots: bool,
    /// Whether a node is restarted on an empty disk after the last point, to measure the
    /// snapshot installs that bring it back.
    pub measure_install: bool,
    /// Whether the nodes run the adaptive tuner.
    pub tuning: bool,
    /// The tuner's interval, replacing the engine's default.
    pub tuning_interval_ms: Option<u64>,
    /// The tuner's election-timeout safety factor, replacing the engine's default.
    pub tuning_safety_factor: Option<f64>,
    /// Static batching settings that replace the engine's defaults.
    pub linger_us: Option<u64>,
    pub max_inflight_messages: Option<usize>,
    pub max_entries_per_message: Option<usize>,
    pub read_batch_max: Option<usize>,
    pub heartbeat_ticks: Option<u32>,
    /// Whether followers campaign at once when their leader refuses connections; `None`
    /// keeps the engine's default.
    pub campaign_when_leader_down: Option<bool>,
    /// Parent of the run's data directory; used only by disk storage.
    pub dir: PathBuf,
}

/// A validated run configuration: what the harness executes and the JSON result records.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Workload {
    pub target: TargetKind,
    pub endpoints: Vec<String>,
    /// The embedded cluster; `None` for a running cluster.
    pub cluster: Option<ClusterSpec>,
    /// The load levels, run in this order against one target.
    pub points: Vec<LoadLevel>,
    /// Sessions requested; each load thread opens at least one.
    pub connections: usize,
    pub load_threads: usize,
    pub length: RunLength,
    pub warmup_secs: f64,
    pub value_bytes: usize,
    pub keys: u64,
    pub key_distribution: KeyDistribution,
    pub read_fraction: f64,
    pub read_mode: ReadMode,
    pub seed: u64,
    /// Time limit of each point's linearizability check; `None` without `--check`.
    pub check_time_limit_secs: Option<f64>,
    // The output paths and the progress display do not change what a run measures, so the
    // recorded config leaves them out. Repeated runs then merge, and `compare` does not list
    // their file names as differences.
    #[serde(skip)]
    pub progress: bool,
    #[serde(skip)]
    pub json: Option<PathBuf>,
    #[serde(skip)]
    pub csv: Option<PathBuf>,
    #[serde(skip)]
    pub chart: Option<PathBuf>,
}

impl RunArgs {
    /// Validates the options and fills in the defaults.
    ///
    /// # Errors
    ///
    /// The first option out of range or in conflict with another, naming the value and
    /// the fix.
    pub fn validate(&self) -> anyhow::Result<Workload> {
        let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
        self.validate_for_cpus(cpus)
    }

    /// [`RunArgs::validate`] for a machine with `cpus` CPUs, which sizes the defaults.
    pub fn validate_for_cpus(&self, cpus: usize) -> anyhow::Result<Workload> {
        let cluster = self.cluster_spec()?;
        let endpoints = self.checked_endpoints()?;
        let points = self.load_levels()?;
        let length = self.run_length()?;
        ensure_seconds(self.warmup_secs, "--warmup", true)?;
        let key_distribution = self.key_distribution()?;
        self.check_sizes()?;
        let check_time_limit_secs = self.check_time_limit()?;

        let clients_max = points.iter().map(|level| level.clients).max().unwrap_or(1);
        let load_threads = match self.load_threads {
            Some(0) => bail!("--load-threads 0 is invalid: at least one thread runs the clients"),
            Some(threads) => threads,
            None => default_load_threads(cpus, cluster.as_ref()),
        };
        let connections = match self.connections {
            Some(0) => bail!("--connections 0 is invalid: the clients need at least one"),
            Some(connections) => connections,
            None => load_threads,
        };
        // Every load thread needs a client and a session of its own.
        let load_threads = load_threads.min(connections).min(clients_max).max(1);

        Ok(Workload {
            target: self.target,
            endpoints,
            cluster,
            points,
            connections,
            load_threads,
            length,
            warmup_secs: self.warmup_secs,
            value_bytes: self.value_bytes,
            keys: self.keys,
            key_distribution,
            read_fraction: self.read_fraction,
            read_mode: match self.read_mode {
                ReadModeArg::Linearizable => ReadMode::Linearizable,
                ReadModeArg::Stale => ReadMode::Stale,
            },
            seed: self.seed,
            check_time_limit_secs,
            progress: !self.no_progress,
            json: self.json.clone(),
            csv: self.csv.clone(),
            chart: self.chart.clone(),
        })
    }

    fn cluster_spec(&self) -> anyhow::Result<Option<ClusterSpec>> {
        if self.target != TargetKind::Embedded {
            let target = target_name(self.target);
            let embedded_only = [
                ("--groups", self.groups.is_some()),
                ("--shards", self.shards.is_some()),
                ("--storage", self.storage.is_some()),
                ("--sync", self.sync.is_some()),
                ("--snapshots", self.snapshots.is_some()),
                ("--measure-install", self.measure_install),
                ("--tuning", self.tuning),
                ("--tuning-interval-ms", self.tuning_interval_ms.is_some()),
                (
                    "--tuning-safety-factor",
                    self.tuning_safety_factor.is_some(),
                ),
                ("--linger-us", self.linger_us.is_some()),
                (
                    "--max-inflight-messages",
                    self.max_inflight_messages.is_some(),
                ),
                (
                    "--max-entries-per-message",
                    self.max_entries_per_message.is_some(),
                ),
                ("--read-batch-max", self.read_batch_max.is_some()),
                ("--heartbeat-ticks", self.heartbeat_ticks.is_some()),
                (
                    "--campaign-when-leader-down",
                    self.campaign_when_leader_down.is_some(),
                ),
                ("--dir", self.dir.is_some()),
            ];
            for (option, given) in embedded_only {
                ensure!(
                    !given,
                    "{option} applies to --target embedded only; with --target {target} the \
                     running cluster's own configuration decides it, so leave {option} out"
                );
            }
            return Ok(None);
        }
        let groups = self.groups.unwrap_or(1);
        ensure!(
            groups > 0,
            "--groups 0 is invalid: the cluster needs at least one group"
        );
        let shards = self.shards.unwrap_or(1);
        ensure!(
            (1..=shardraft::config::SHARDS_MAX).contains(&shards),
            "--shards {shards} is outside 1..={}",
            shardraft::config::SHARDS_MAX
        );
        let durability = match (self.storage.unwrap_or(StorageArg::Disk), self.sync) {
            (StorageArg::Disk, None | Some(SyncArg::On)) => Durability::DiskSynced,
            (StorageArg::Disk, Some(SyncArg::Off)) => Durability::DiskUnsynced,
            (StorageArg::Memory, None) => Durability::Memory,
            (StorageArg::Memory, Some(_)) => bail!(
                "--sync applies to --storage disk only; memory storage writes nothing to \
                 disk, so leave --sync out"
            ),
        };
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(crate::wal::environment::default_data_dir);
        let snapshots = self.snapshots != Some(SnapshotsArg::Off);
        if self.measure_install {
            ensure!(
                snapshots && durability != Durability::Memory,
                "--measure-install needs --storage disk and snapshots on: a node restarted on \
                 an empty disk catches up through snapshots only when the leaders take them"
            );
        }
        Ok(Some(ClusterSpec {
            groups,
            shards,
            durability,
            snapshots,
            measure_install: self.measure_install,
            tuning: self.tuning,
            tuning_interval_ms: self.tuning_interval_ms,
            tuning_safety_factor: self.tuning_safety_factor,
            linger_us: self.linger_us,
            max_inflight_messages: self.max_inflight_messages,
            max_entries_per_message: self.max_entries_per_message,
            read_batch_max: self.read_batch_max,
            heartbeat_ticks: self.heartbeat_ticks,
            campaign_when_leader_down: self
                .campaign_when_leader_down
                .map(|arg| arg == LeaderDownArg::On),
            dir,
        }))
    }

    fn checked_endpoints(&self) -> anyhow::Result<Vec<String>> {
        match self.target {
            TargetKind::Embedded => ensure!(
                self.endpoints.is_empty(),
                "--endpoints needs --target endpoints or --target etcd; the embedded target \
                 starts its own cluster"
            ),
            TargetKind::Endpoints | TargetKind::Etcd => ensure!(
                !self.endpoints.is_empty(),
                "--target {} needs --endpoints with the cluster's client addresses, such as \
                 --endpoints 127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103",
                target_name(self.target)
            ),
        }
        for endpoint in &self.endpoints {
            ensure!(
                !endpoint.trim().is_empty(),
                "--endpoints contains an empty address; separate addresses with single commas"
            );
        }
        Ok(self.endpoints.clone())
    }

    fn burst_level(&self) -> Option<LoadLevel> {
        self.burst.map(|(clients, burst)| LoadLevel {
            clients,
            rate_per_sec: None,
            burst: Some(burst),
        })
    }

    fn load_levels(&self) -> anyhow::Result<Vec<LoadLevel>> {
        ensure!(
            self.sweep_clients.is_empty() || self.sweep_rates.is_empty(),
            "--sweep-clients and --sweep-rates cannot be combined; sweep one of them and fix \
             the other with --clients or --rate"
        );
        let clients = self.clients.unwrap_or(CLIENTS_DEFAULT);
        ensure!(
            clients > 0,
            "--clients 0 is invalid: at least one client is needed"
        );
        if let Some(rate) = self.rate {
            check_rate(rate, "--rate")?;
        }
        if !self.sweep_clients.is_empty() {
            for &count in &self.sweep_clients {
                ensure!(
                    count > 0,
                    "--sweep-clients contains 0; every client count is at least 1"
                );
            }
            let levels = self.sweep_clients.iter().map(|&clients| LoadLevel {
                clients,
                rate_per_sec: self.rate,
                burst: None,
            });
            return Ok(levels.chain(self.burst_level()).collect());
        }
        if !self.sweep_rates.is_empty() {
            for &rate in &self.sweep_rates {
                check_rate(rate, "--sweep-rates")?;
            }
            let levels = self.sweep_rates.iter().map(|&rate| LoadLevel {
                clients,
                rate_per_sec: Some(rate),
                burst: None,
            });
            return Ok(levels.collect());
        }
        if self.clients.is_none() && self.burst.is_some() {
            // The burst point alone, without the default steady point before it.
            return Ok(self.burst_level().into_iter().collect());
        }
        let steady = LoadLevel {
            clients,
            rate_per_sec: self.rate,
            burst: None,
        };
        Ok(std::iter::once(steady).chain(self.burst_level()).collect())
    }

    fn run_length(&self) -> anyhow::Result<RunLength> {
        if let Some(count) = self.operations {
            ensure!(
                count > 0,
                "--operations 0 is invalid: measure at least one operation"
            );
            return Ok(RunLength::Operations { count });
        }
        let secs = self.duration_secs.unwrap_or(DURATION_SECS_DEFAULT);
        ensure_seconds(secs, "--duration", false)?;
        Ok(RunLength::Duration { secs })
    }

    fn key_distribution(&self) -> anyhow::Result<KeyDistribution> {
        ensure!(
            (1..=KEYS_MAX).contains(&self.keys),
            "--keys {} is outside 1..={KEYS_MAX}",
            self.keys
        );
        match self.key_distribution {
            KeyDistributionKind::Uniform => {
                ensure!(
                    self.zipf_theta.is_none(),
                    "--zipf-theta applies to --key-distribution zipfian only; add \
                     --key-distribution zipfian or leave --zipf-theta out"
                );
                Ok(KeyDistribution::Uniform)
            }
            KeyDistributionKind::Zipfian => {
                let theta = self.zipf_theta.unwrap_or(ZIPF_THETA_DEFAULT);
                ensure!(
                    theta > 0.0 && theta < 1.0,
                    "--zipf-theta {theta} is outside the open interval (0, 1); the generator \
                     needs a skew above 0 (uniform) and below 1"
                );
                Ok(KeyDistribution::Zipfian { theta })
            }
        }
    }

    fn check_sizes(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=VALUE_BYTES_MAX).contains(&self.value_bytes),
            "--value-bytes {} is outside 1..={VALUE_BYTES_MAX}",
            self.value_bytes
        );
        ensure!(
            (0.0..=1.0).contains(&self.read_fraction),
            "--read-fraction {} is outside 0..=1",
            self.read_fraction
        );
        Ok(())
    }

    fn check_time_limit(&self) -> anyhow::Result<Option<f64>> {
        match (self.check, self.check_time_limit_secs) {
            (false, Some(_)) => bail!(
                "--check-time-limit applies to --check only; add --check or leave \
                 --check-time-limit out"
            ),
            (false, None) => Ok(None),
            (true, limit) => {
                let secs = limit.unwrap_or(CHECK_TIME_LIMIT_SECS_DEFAULT);
                ensure_seconds(secs, "--check-time-limit", false)?;
                Ok(Some(secs))
            }
        }
    }
}

/// Load threads when `--load-threads` is not given. The embedded cluster runs three nodes
/// of `shards` executors each in this process, so the load generator takes the share of the
/// CPUs that one more executor would. For a running cluster it takes half the CPUs, because
/// the servers may run on this machine too.
fn default_load_threads(cpus: usize, cluster: Option<&ClusterSpec>) -> usize {
    match cluster {
        Some(spec) => (cpus / (3 * spec.shards + 1)).max(1),
        None => (cpus / 2).max(1),
    }
}

fn target_name(target: TargetKind) -> &'static str {
    match target {
        TargetKind::Embedded => "embedded",
        TargetKind::Endpoints => "endpoints",
        TargetKind::Etcd => "etcd",
    }
}

/// Parses `--burst HIGH/LOW/PERIOD`.
fn parse_burst(text: &str) -> Result<(usize, Burst), String> {
    let usage = || format!("--burst {text:?} is invalid: write HIGH/LOW/PERIOD, such as 256/1/4");
    let parts: Vec<&str> = text.split('/').collect();
    let [high, low, period] = parts.as_slice() else {
        return Err(usage());
    };
    let high: usize = high.trim().parse().map_err(|_| usage())?;
    let low: usize = low.trim().parse().map_err(|_| usage())?;
    let period_secs: f64 = period.trim().parse().map_err(|_| usage())?;
    if low == 0 || low >= high {
        return Err(format!(
            "--burst {text:?} is invalid: LOW must be at least 1 and below HIGH ({high})"
        ));
    }
    if !(period_secs.is_finite() && period_secs >= 0.1) {
        return Err(format!(
            "--burst {text:?} is invalid: PERIOD must be at least 0.1 seconds"
        ));
    }
    Ok((
        high,
        Burst {
            low_clients: low,
            period_secs,
        },
    ))
}

fn check_rate(rate: f64, option: &str) -> anyhow::Result<()> {
    ensure!(
        rate.is_finite() && rate > 0.0,
        "{option} {rate} is invalid: a rate is a positive number of operations per second"
    );
    // One operation per nanosecond is the schedule's resolution.
    ensure!(
        rate <= 1e9,
        "{option} {rate} is above 1e9 operations per second, the open-loop schedule's \
         resolution"
    );
    Ok(())
}

fn ensure_seconds(secs: f64, option: &str, zero_allowed: bool) -> anyhow::Result<()> {
    let valid = secs.is_finite() && (secs > 0.0 || (zero_allowed && secs == 0.0));
    ensure!(
        valid && Duration::try_from_secs_f64(secs).is_ok(),
        "{option} {secs} is invalid: expected a {} number of seconds",
        if zero_allowed {
            "non-negative"
        } else {
            "positive"
        }
    );
    Ok(())
}

impl Workload {
    /// Returns whether the run records histories and checks them.
    pub fn checks(&self) -> bool {
        self.check_time_limit_secs.is_some()
    }

    /// Returns the warm-up as a duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_secs)
    }
}

/// Names the key of rank `rank`, zero-padded to the width of the largest rank so that all keys
/// have one length. With `--check`, `point` prefixes the key so that every point checks a
/// history of its own.
pub fn key_name(rank: u64, keys: u64, point: Option<usize>) -> String {
    let width = (keys.saturating_sub(1)).max(1).ilog10() as usize + 1;
    match point {
        Some(point) => format!("p{point}-k{rank:0width$}"),
        None => format!("k{rank:0width$}"),
    }
}

/// Builds the unique tag of write `sequence` by `writer`.
pub fn value_tag(writer: u64, sequence: u64) -> String {
    format!("{writer:x}:{sequence:x}")
}

/// Builds the value written for `tag`: the tag padded to `value_bytes`, or the tag alone when it
/// is longer (a tag stays unique only whole).
pub fn value_for_tag(tag: &str, value_bytes: usize) -> Bytes {
    let mut value = tag.as_bytes().to_vec();
    if value.len() < value_bytes {
        value.resize(value_bytes, VALUE_PADDING);
    }
    Bytes::from(value)
}

/// Recovers the tag of a value read back: the tag when the value is exactly what
/// [`value_for_tag`] writes for it, otherwise the whole value as text, which no write
/// produced and so fails the linearizability check.
pub fn tag_of_value(value: &[u8], value_bytes: usize) -> String {
    let tag_end = value
        .iter()
        .position(|&byte| byte == VALUE_PADDING)
        .unwrap_or(value.len());
    let tag = String::from_utf8_lossy(&value[..tag_end]).into_owned();
    if value_for_tag(&tag, value_bytes).as_ref() == value {
        tag
    } else {
        String::from_utf8_lossy(value).into_owned()
    }
}

/// A seeded generator of uniform numbers: ChaCha8, so that a seed gives the same
/// operations on every machine.
#[derive(Clone, Debug)]
pub struct Random {
    rng: ChaCha8Rng,
}

impl Random {
    /// A generator for one stream of a run: the run's seed, the point and the client or
    /// thread that draws from it.
    pub fn new(seed: u64, point: usize, stream: u64) -> Random {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(((point as u64) << 32) ^ stream);
        Random { rng }
    }

    /// Draws a uniform number in `[0, 1)` with 53 random bits.
    pub fn unit(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Draws a uniform integer in `0..bound`, by Lemire's multiply-shift; the bias is below
    /// `bound / 2^64`.
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.rng.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// Zipfian ranks in `0..n` by Gray et al.'s method ("Quickly generating billion-record
/// synthetic databases", SIGMOD 1994): rank `i` has probability proportional to
/// `1 / (i + 1)^theta`. Setup sums `zeta(n)` once, in O(n); each draw is O(1).
#[derive(Clone, Debug, PartialEq)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    /// Threshold of `u * zeta(n)` under which rank 1 is drawn: `1 + 0.5^theta`.
    second_rank_bound: f64,
}

impl Zipfian {
    /// A generator over `n` ranks with skew `theta`.
    ///
    /// # Errors
    ///
    /// When `n` is 0 or `theta` is not strictly between 0 and 1.
    pub fn new(n: u64, theta: f64) -> anyhow::Result<Zipfian> {
        ensure!(n > 0, "a zipfian distribution needs at least one rank");
        ensure!(
            theta > 0.0 && theta < 1.0,
            "zipfian theta {theta} is outside the open interval (0, 1)"
        );
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2.min(n), theta);
        let eta = if n > 1 {
            (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n)
        } else {
            0.0
        };
        Ok(Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
            second_rank_bound: 1.0 + 0.5f64.powf(theta),
        })
    }

    /// Draws a rank in `0..n`; 0 is the most frequent.
    pub fn sample(&self, random: &mut Random) -> u64 {
        let u = random.unit();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < self.second_rank_bound {
            return 1.min(self.n - 1);
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }

    /// Returns the exact probability of `rank`, for tests and reports.
    pub fn probability(&self, rank: u64) -> f64 {
        if rank >= self.n {
            return 0.0;
        }
        1.0 / ((rank + 1) as f64).powf(self.theta) / self.zeta_n
    }
}

/// `sum over i in 1..=n of 1 / i^theta`.
fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Draws key ranks from the workload's distribution.
#[derive(Clone, Debug)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian(Zipfian),
}

impl KeyChooser {
    /// Builds the chooser of `workload`.
    ///
    /// # Errors
    ///
    /// When the zipfian parameters are invalid, which validation already excludes.
    pub fn new(workload: &Workload) -> anyhow::Result<KeyChooser> {
        Ok(match workload.key_distribution {
            KeyDistribution::Uniform => KeyChooser::Uniform {
                keys: workload.keys,
            },
            KeyDistribution::Zipfian { theta } => {
                KeyChooser::Zipfian(Zipfian::new(workload.keys, theta)?)
            }
        })
    }

    /// Draws a rank in `0..keys`.
    pub fn sample(&self, random: &mut Random) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => random.below(*keys),
            KeyChooser::Zipfian(zipfian) => zipfian.sample(random),
        }
    }
}

/// One operation drawn by a [`OperationGenerator`], with what the history needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedOperation {
    pub request: Request,
    /// The key as text.
    pub key: String,
    /// The tag of a write's value; `None` for a read.
    pub tag: Option<String>,
}

/// Draws the operations of one client (closed loop) or one load thread (open loop).
#[derive(Debug)]
pub struct OperationGenerator {
    random: Random,
    keys: KeyChooser,
    key_count: u64,
    /// The point's index when keys carry it (`--check`).
    key_point: Option<usize>,
    read_fraction: f64,
    read_mode: ReadMode,
    value_bytes: usize,
    writer: u64,
    sequence: u64,
}

impl OperationGenerator {
    /// The generator of `writer` (a client or a thread id, unique within the point) at
    /// point `point`.
    pub fn new(workload: &Workload, keys: KeyChooser, point: usize, writer: u64) -> Self {
        OperationGenerator {
            random: Random::new(workload.seed, point, writer),
            keys,
            key_count: workload.keys,
            key_point: workload.checks().then_some(point),
            read_fraction: workload.read_fraction,
            read_mode: workload.read_mode,
            value_bytes: workload.value_bytes,
            writer,
            sequence: 0,
        }
    }

    /// Draws the next operation.
    pub fn next_operation(&mut self) -> PlannedOperation {
        let rank = self.keys.sample(&mut self.random);
        let key = key_name(rank, self.key_count, self.key_point);
        let read = self.read_fraction > 0.0 && self.random.unit() < self.read_fraction;
        let key_bytes = Bytes::from(key.clone().into_bytes());
        if read {
            let request = Request::Get {
                key: key_bytes,
                mode: self.read_mode,
            };
            return PlannedOperation {
                request,
                key,
                tag: None,
            };
        }
        self.sequence += 1;
        let tag = value_tag(self.writer, self.sequence);
        let request = Request::Put {
            key: key_bytes,
            value: value_for_tag(&tag, self.value_bytes),
        };
        PlannedOperation {
            request,
            key,
            tag: Some(tag),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut argv = vec!["shardraft-bench"];
        argv.extend_from_slice(args);
        TestCli::try_parse_from(argv).map(|cli| cli.run)
    }

    fn validate(args: &[&str]) -> anyhow::Result<Workload> {
        parse(args)?.validate_for_cpus(2)
    }

    fn error_of(args: &[&str]) -> String {
        match validate(args) {
            Ok(workload) => panic!("{args:?} was accepted as {workload:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn burst_pauses_clients_above_low_in_second_half() {
        let burst = Burst {
            low_clients: 2,
            period_secs: 4.0,
        };
        let at = Duration::from_secs_f64;

        assert_eq!(burst.pause_until(1, at(3.0)), None, "client below LOW");
        assert_eq!(burst.pause_until(5, at(1.9)), None, "first half");
        assert_eq!(burst.pause_until(5, at(2.5)), Some(at(4.0)));
        assert_eq!(
            burst.pause_until(5, at(9.0)),
            None,
            "third period, first half"
        );
        assert_eq!(burst.pause_until(5, at(11.0)), Some(at(12.0)));
    }

    #[test]
    fn burst_option_adds_a_point_after_sweep() {
        let workload = validate(&["--sweep-clients", "1,256", "--burst", "256/1/4"]).unwrap();

        let burst = LoadLevel {
            burst: Some(Burst {
                low_clients: 1,
                period_secs: 4.0,
            }),
            ..LoadLevel::closed(256)
        };
        assert_eq!(
            workload.points,
            vec![LoadLevel::closed(1), LoadLevel::closed(256), burst]
        );
        let alone = validate(&["--burst", "64/4/2"]).unwrap();
        assert_eq!(alone.points.len(), 1);
        for bad in ["256/1", "1/1/4", "256/0/4", "256/1/0.01", "x/1/4"] {
            let error = validate(&["--burst", bad]).unwrap_err().to_string();
            assert!(error.contains("--burst"), "{bad}: {error}");
        }
    }

    #[test]
    fn defaults_are_an_embedded_closed_loop_write_run() {
        let workload = validate(&[]).unwrap();

        assert_eq!(workload.target, TargetKind::Embedded);
        assert_eq!(workload.points, vec![LoadLevel::closed(CLIENTS_DEFAULT)]);
        assert_eq!(workload.length, RunLength::Duration { secs: 5.0 });
        assert_eq!(workload.warmup_secs, WARMUP_SECS_DEFAULT);
        assert_eq!(workload.read_fraction, 0.0);
        assert_eq!(workload.key_distribution, KeyDistribution::Uniform);
        assert_eq!(workload.load_threads, 1);
        assert_eq!(workload.connections, 1);
        assert!(!workload.checks());
        let cluster = workload.cluster.unwrap();
        assert_eq!(cluster.durability, Durability::DiskSynced);
        assert_eq!(cluster.groups, 1);
        assert_eq!(cluster.shards, 1);
    }

    #[test]
    fn default_load_threads_follow_cpus() {
        let many = parse(&[]).unwrap().validate_for_cpus(16).unwrap();
        assert_eq!(many.load_threads, 4);
        let remote = parse(&["--target", "endpoints", "--endpoints", "127.0.0.1:7101"])
            .unwrap()
            .validate_for_cpus(16)
            .unwrap();
        assert_eq!(remote.load_threads, 8);
    }

    #[test]
    fn load_threads_never_exceed_clients_or_connections() {
        let few_clients = validate(&["--clients", "2", "--load-threads", "8"]).unwrap();
        assert_eq!(few_clients.load_threads, 2);
        let few_connections = validate(&["--connections", "3", "--load-threads", "8"]).unwrap();
        assert_eq!(few_connections.load_threads, 3);
    }

    #[test]
    fn read_fraction_out_of_range_rejected() {
        let message = error_of(&["--read-fraction", "1.5"]);
        assert!(
            message.contains("--read-fraction 1.5 is outside 0..=1"),
            "{message}"
        );
    }

    #[test]
    fn duration_and_operations_conflict() {
        let error = parse(&["--duration", "3", "--operations", "100"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn sweep_clients_conflicts_with_clients() {
        let error = parse(&["--clients", "4", "--sweep-clients", "1,2"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn sweep_rates_conflicts_with_rate() {
        let error = parse(&["--rate", "100", "--sweep-rates", "1,2"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn two_sweeps_rejected() {
        let message = error_of(&["--sweep-clients", "1,2", "--sweep-rates", "10,20"]);
        assert!(message.contains("cannot be combined"), "{message}");
    }

    #[test]
    fn sweep_clients_gives_one_point_each() {
        let workload = validate(&["--sweep-clients", "1,4,16"]).unwrap();
        let clients: Vec<usize> = workload.points.iter().map(|level| level.clients).collect();
        assert_eq!(clients, vec![1, 4, 16]);
        assert!(
            workload
                .points
                .iter()
                .all(|level| level.rate_per_sec.is_none())
        );
    }

    #[test]
    fn sweep_rates_are_open_loop_points() {
        let workload = validate(&["--sweep-rates", "1000,5000", "--clients", "32"]).unwrap();
        assert_eq!(workload.points.len(), 2);
        assert_eq!(workload.points[0].rate_per_sec, Some(1000.0));
        assert_eq!(workload.points[1].rate_per_sec, Some(5000.0));
        assert!(workload.points.iter().all(|level| level.clients == 32));
    }

    #[test]
    fn zero_and_negative_values_rejected() {
        assert!(error_of(&["--clients", "0"]).contains("--clients 0"));
        assert!(error_of(&["--sweep-clients", "4,0"]).contains("contains 0"));
        assert!(error_of(&["--rate=-5"]).contains("--rate -5 is invalid"));
        assert!(error_of(&["--duration", "0"]).contains("--duration 0 is invalid"));
        assert!(error_of(&["--operations", "0"]).contains("--operations 0"));
        assert!(error_of(&["--keys", "0"]).contains("--keys 0 is outside"));
        assert!(error_of(&["--value-bytes", "0"]).contains("--value-bytes 0 is outside"));
        assert!(error_of(&["--groups", "0"]).contains("--groups 0"));
        assert!(error_of(&["--load-threads", "0"]).contains("--load-threads 0"));
        assert!(error_of(&["--warmup=-1"]).contains("--warmup -1 is invalid"));
    }

    #[test]
    fn zero_warmup_accepted() {
        assert_eq!(validate(&["--warmup", "0"]).unwrap().warmup_secs, 0.0);
    }

    #[test]
    fn zipf_theta_needs_zipfian() {
        let message = error_of(&["--zipf-theta", "0.5"]);
        assert!(message.contains("--key-distribution zipfian"), "{message}");
    }

    #[test]
    fn zipf_theta_bounds_checked() {
        let message = error_of(&["--key-distribution", "zipfian", "--zipf-theta", "1"]);
        assert!(message.contains("--zipf-theta 1 is outside"), "{message}");
        let workload = validate(&["--key-distribution", "zipfian"]).unwrap();
        assert_eq!(
            workload.key_distribution,
            KeyDistribution::Zipfian {
                theta: ZIPF_THETA_DEFAULT
            }
        );
    }

    #[test]
    fn memory_storage_with_sync_rejected() {
        let message = error_of(&["--storage", "memory", "--sync", "off"]);
        assert!(
            message.contains("--sync applies to --storage disk only"),
            "{message}"
        );
    }

    #[test]
    fn durability_follows_storage_and_sync() {
        let durability = |args: &[&str]| validate(args).unwrap().cluster.unwrap().durability;
        assert_eq!(durability(&["--sync", "off"]), Durability::DiskUnsynced);
        assert_eq!(durability(&["--storage", "memory"]), Durability::Memory);
        assert_eq!(
            durability(&["--storage", "disk", "--sync", "on"]),
            Durability::DiskSynced
        );
    }

    #[test]
    fn snapshots_can_be_turned_off_for_the_embedded_cluster() {
        let snapshots = |args: &[&str]| validate(args).unwrap().cluster.unwrap().snapshots;
        assert!(snapshots(&[]), "on by default");
        assert!(!snapshots(&["--snapshots", "off"]));
        let message = error_of(&[
            "--target",
            "etcd",
            "--endpoints",
            "127.0.0.1:2379",
            "--snapshots",
            "off",
        ]);
        assert!(
            message.contains("--snapshots applies to --target embedded only"),
            "{message}"
        );
    }

    #[test]
    fn static_batching_options_reach_the_cluster() {
        let spec = validate(&[
            "--linger-us",
            "200",
            "--max-inflight-messages",
            "8",
            "--max-entries-per-message",
            "64",
            "--heartbeat-ticks",
            "2",
            "--tuning",
        ])
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(spec.linger_us, Some(200));
        assert_eq!(spec.max_inflight_messages, Some(8));
        assert_eq!(spec.max_entries_per_message, Some(64));
        assert_eq!(spec.heartbeat_ticks, Some(2));
        assert!(spec.tuning);
        let message = error_of(&[
            "--target",
            "etcd",
            "--endpoints",
            "127.0.0.1:2379",
            "--linger-us",
            "5",
        ]);
        assert!(
            message.contains("--linger-us applies to --target embedded only"),
            "{message}"
        );
        let message = error_of(&[
            "--target",
            "etcd",
            "--endpoints",
            "127.0.0.1:2379",
            "--heartbeat-ticks",
            "2",
        ]);
        assert!(
            message.contains("--heartbeat-ticks applies to --target embedded only"),
            "{message}"
        );
    }

    #[test]
    fn measure_install_needs_disk_and_snapshots() {
        let spec = validate(&["--measure-install"]).unwrap().cluster.unwrap();
        assert!(spec.measure_install);
        for args in [
            &["--measure-install", "--storage", "memory"][..],
            &["--measure-install", "--snapshots", "off"][..],
        ] {
            let message = error_of(args);
            assert!(
                message.contains("--measure-install needs --storage disk and snapshots on"),
                "{message}"
            );
        }
    }

    #[test]
    fn endpoints_target_needs_endpoints() {
        let message = error_of(&["--target", "endpoints"]);
        assert!(message.contains("needs --endpoints"), "{message}");
    }

    #[test]
    fn embedded_options_rejected_for_running_cluster() {
        let message = error_of(&[
            "--target",
            "etcd",
            "--endpoints",
            "127.0.0.1:2379",
            "--groups",
            "4",
        ]);
        assert!(
            message.contains("--groups applies to --target embedded only"),
            "{message}"
        );
    }

    #[test]
    fn endpoints_rejected_for_embedded() {
        let message = error_of(&["--endpoints", "127.0.0.1:7101"]);
        assert!(
            message.contains("--endpoints needs --target endpoints"),
            "{message}"
        );
    }

    #[test]
    fn check_time_limit_needs_check() {
        let message = error_of(&["--check-time-limit", "5"]);
        assert!(message.contains("applies to --check only"), "{message}");
        let workload = validate(&["--check"]).unwrap();
        assert_eq!(
            workload.check_time_limit_secs,
            Some(CHECK_TIME_LIMIT_SECS_DEFAULT)
        );
    }

    #[test]
    fn unknown_key_distribution_rejected_by_clap() {
        let error = parse(&["--key-distribution", "pareto"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
    }

    #[test]
    fn key_names_share_one_width() {
        assert_eq!(key_name(7, 1000, None), "k007");
        assert_eq!(key_name(999, 1000, None), "k999");
        assert_eq!(key_name(0, 1, None), "k0");
        assert_eq!(key_name(3, 10, Some(2)), "p2-k3");
    }

    #[test]
    fn value_tags_round_trip() {
        let value = value_for_tag(&value_tag(5, 300), 16);
        assert_eq!(value.len(), 16);
        assert_eq!(&value[..], b"5:12c...........");
        assert_eq!(tag_of_value(&value, 16), "5:12c");
    }

    #[test]
    fn long_tag_is_kept_whole() {
        let tag = value_tag(0xabc, 0xdef0_1234);
        let value = value_for_tag(&tag, 4);
        assert_eq!(&value[..], tag.as_bytes());
        assert_eq!(tag_of_value(&value, 4), tag);
    }

    #[test]
    fn foreign_value_is_not_mistaken_for_a_tag() {
        assert_eq!(tag_of_value(b"5:12c..x", 8), "5:12c..x");
        assert_eq!(tag_of_value(b"5:12c", 8), "5:12c");
        assert_ne!(value_for_tag("5:12c", 8).as_ref(), b"5:12c");
    }

    #[test]
    fn uniform_ranks_stay_below_bound_and_cover_it() {
        let mut random = Random::new(7, 0, 0);
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let rank = random.below(10);
            assert!(rank < 10);
            counts[rank as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn zipfian_ranks_are_bounded() {
        for n in [1, 2, 3, 100] {
            let zipfian = Zipfian::new(n, 0.99).unwrap();
            let mut random = Random::new(1, 0, n);
            for _ in 0..20_000 {
                assert!(zipfian.sample(&mut random) < n);
            }
        }
    }

    #[test]
    fn zipfian_frequencies_follow_the_power_law() {
        let n = 1000;
        let draws = 400_000;
        let zipfian = Zipfian::new(n, 0.99).unwrap();
        let mut random = Random::new(42, 0, 0);
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            counts[zipfian.sample(&mut random) as usize] += 1;
        }

        // The first ranks, which the generator draws exactly, match their probabilities.
        for rank in 0..2 {
            let expected = zipfian.probability(rank) * draws as f64;
            let observed = counts[rank as usize] as f64;
            assert!(
                (observed - expected).abs() < 0.03 * expected,
                "rank {rank}: {observed} draws, expected {expected:.0}"
            );
        }
        // The tail is approximated: its shares by decade match within 10 %.
        for (start, end) in [(2u64, 10u64), (10, 100), (100, 1000)] {
            let expected: f64 = (start..end).map(|rank| zipfian.probability(rank)).sum();
            let observed: u64 = counts[start as usize..end as usize].iter().sum();
            let observed = observed as f64 / draws as f64;
            assert!(
                (observed - expected).abs() < 0.1 * expected,
                "ranks {start}..{end}: share {observed:.4}, expected {expected:.4}"
            );
        }
        assert!(counts[0] > counts[1]);
        assert!(counts[1] > counts[10]);
    }

    #[test]
    fn zipfian_rejects_bad_parameters() {
        assert!(Zipfian::new(0, 0.5).is_err());
        assert!(Zipfian::new(10, 0.0).is_err());
        assert!(Zipfian::new(10, 1.0).is_err());
    }

    #[test]
    fn generator_is_deterministic_per_seed() {
        let workload = validate(&["--read-fraction", "0.5", "--keys", "50"]).unwrap();
        let draw = |seed: u64| {
            let workload = Workload {
                seed,
                ..workload.clone()
            };
            let chooser = KeyChooser::new(&workload).unwrap();
            let mut generator = OperationGenerator::new(&workload, chooser, 0, 3);
            (0..20)
                .map(|_| generator.next_operation())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(9), draw(9));
        assert_ne!(draw(9), draw(10));
    }

    #[test]
    fn generator_mixes_reads_and_unique_writes() {
        let workload = validate(&["--read-fraction", "0.3", "--keys", "5"]).unwrap();
        let chooser = KeyChooser::new(&workload).unwrap();
        let mut generator = OperationGenerator::new(&workload, chooser, 0, 1);
        let operations: Vec<_> = (0..1000).map(|_| generator.next_operation()).collect();
        let reads = operations.iter().filter(|op| op.tag.is_none()).count();
        assert!((200..400).contains(&reads), "{reads} reads of 1000");
        let mut tags: Vec<&String> = operations.iter().filter_map(|op| op.tag.as_ref()).collect();
        let writes = tags.len();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), writes);
    }
}
