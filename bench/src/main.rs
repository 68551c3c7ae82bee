//! `shardraft-bench`: benchmarks of shardraft from the command line.
//!
//! `shardraft-bench run` drives a workload against a target. It is also the command without
//! a subcommand, and `node`, its old name. It prints throughput, latency quantiles, errors,
//! entries per fdatasync and CPU time per operation, beside the machine's facts and the
//! device's own 4 KiB write + fdatasync. The default target is a 3-node cluster in this
//! process with disk logs and loopback TCP, and `--target endpoints` and `--target etcd`
//! drive running clusters. See [`shardraft_bench::harness`].
//!
//! `shardraft-bench log` measures the write-ahead log on the disk under a directory. It
//! times the device alone first (O_DIRECT write + fdatasync, one at a time), then the log
//! with closed-loop appenders for each entry size and appender count. Last it checks the
//! log's performance goals against the two. See `bench/BENCHMARKS.md` for recorded runs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mimalloc::MiMalloc;
use serde::Serialize;
use shardraft::log::{DiskLog, LogConfig, LogIdentity, LogStore, SyncMethod};
use shardraft_bench::harness::failover::{FailoverArgs, run_failover};
use shardraft_bench::harness::result::RunResult;
use shardraft_bench::harness::workload::RunArgs;
use shardraft_bench::harness::{chart, compare};
use shardraft_bench::wal::device::{DeviceProbe, DeviceSample, PROBE_FILE_BYTES};
use shardraft_bench::wal::environment::{self, Filesystem, MachineFacts};
use shardraft_bench::wal::goals::{self, CellReport, CellRole, GoalReport};
use shardraft_bench::wal::load::{self, LoadSpec};
use shardraft_bench::wal::payload::PayloadKind;
use shardraft_bench::wal::{LatencySummary, format_bytes};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Write sizes of the device limit, in bytes: small and medium group-commit writes, and a
/// large one as the reference for sequential bandwidth.
const DEVICE_WRITE_BYTES: [u64; 3] = [4 << 10, 64 << 10, 1 << 20];
/// The device write size the bandwidth goal compares against.
const SEQUENTIAL_WRITE_BYTES: u64 = 1 << 20;

#[derive(Debug, Parser)]
#[command(
    name = "shardraft-bench",
    version,
    about = "Benchmarks of shardraft",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Without a subcommand: the options of `run`.
    #[command(flatten)]
    run: RunArgs,
}

// `run`'s options make its variant large; the enum is parsed once per process, so boxing it
// would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Drive a workload against a target and summarise throughput and latency (the
    /// default command). The default target is a 3-node cluster in this process, with disk
    /// logs (O_DIRECT + fdatasync) and TCP on 127.0.0.1.
    #[command(visible_alias = "node")]
    Run(RunArgs),
    /// Measure the write-ahead log against the device under a directory and check its goals.
    Log(LogArgs),
    /// Compare two JSON results of `run`: throughput and latency ratios B/A per point, with
    /// significant changes flagged, and the settings and host facts that differ.
    Compare(CompareArgs),
    /// Draw p50 and p99 latency against throughput of one or more JSON results of `run`
    /// (sweeps, typically) in one SVG chart, one series per result.
    Chart(ChartArgs),
    /// Kill group 0's leader of an embedded cluster under load, several times, and measure
    /// the time until its successor commits a write. `--tuning` runs the adaptive tuner.
    Failover(FailoverArgs),
}

#[derive(Debug, clap::Args)]
struct ChartArgs {
    /// The results to draw, for example shardraft's and etcd's sweeps.
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, short = 'o', value_name = "PATH")]
    output: PathBuf,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// The baseline result.
    a: PathBuf,
    /// The result compared against the baseline.
    b: PathBuf,
    /// Smallest relative change, in percent, that counts as significant.
    #[arg(long, default_value_t = 5.0)]
    threshold: f64,
    /// Exit with status 1 when B is significantly worse than A anywhere.
    #[arg(long)]
    fail_on_regression: bool,
}

#[derive(Debug, clap::Args)]
struct LogArgs {
    /// Directory to measure in, created if missing. It must be on the disk to measure, not
    /// tmpfs. Default: a directory under the system temp directory, or under the cargo
    /// target directory when the temp directory is tmpfs.
    #[arg(long)]
    dir: Option<PathBuf>,

    /// Measured seconds per cell and per device write size.
    #[arg(long, default_value_t = 2.0)]
    duration_secs: f64,

    /// Unmeasured seconds at the start of each cell, while the log prepares its next segment.
    #[arg(long, default_value_t = 0.3)]
    warmup_secs: f64,

    /// Longest unmeasured start of a cell. A cell keeps warming up while its log prepares
    /// a segment, and while it would rotate within `--duration-secs` until it rotated onto
    /// reused segments as many times in a row as it would in `--duration-secs`, as in a
    /// long run, instead of zero-filling new ones.
    #[arg(long, default_value_t = 10.0)]
    warmup_max_secs: f64,

    /// Entry payload sizes in bytes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "16,256,4096")]
    sizes: Vec<usize>,

    /// Counts of concurrent appenders, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    appenders: Vec<usize>,

    /// Appenders of an extra cell of 4 KiB entries for the bandwidth goal, run when
    /// `--sizes` includes 4096, with more appenders than one batch of `--flush-bytes-max`
    /// holds, so that one batch is written while others sync and the next fills. 0 adds no
    /// cell.
    #[arg(long, default_value_t = 1024)]
    bandwidth_appenders: usize,

    /// Appenders of a second extra cell of 4 KiB entries for the bandwidth goal, each
    /// submitting `--batched-bandwidth-entries-per-submit` entries at once, like the Raft
    /// groups of a loaded shard whose `Ready` each carry several entries. Run when
    /// `--sizes` includes 4096; 0 adds no cell.
    #[arg(long, default_value_t = 64)]
    batched_bandwidth_appenders: usize,

    /// Entries per submission in the batched bandwidth cell.
    #[arg(long, default_value_t = 16)]
    batched_bandwidth_entries_per_submit: usize,

    /// Entries per submission in extra cells for the smallest entry size at every appender
    /// count, like a Raft leader whose Ready carries many entries. 1 adds no cells.
    #[arg(long, default_value_t = 64)]
    entries_per_submit: usize,

    /// Entries each appender appends between compactions of its group, as a Raft node
    /// compacts after a snapshot; 0 sets no limit by count.
    #[arg(long, default_value_t = 4096)]
    compact_every_entries: u64,

    /// Payload bytes each appender appends between compactions of its group; 0 sets no
    /// limit by size. A group compacts at whichever limit it reaches first. With both at 0
    /// the log only grows, so every rotation zero-fills a new segment instead of recycling
    /// a retired one.
    #[arg(long, default_value_t = 256 * 1024)]
    compact_every_bytes: u64,

    /// Also write every figure to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,

    /// The log's segment_bytes.
    #[arg(long, default_value_t = LogConfig::default().segment_bytes)]
    segment_bytes: u64,

    /// The log's flush_bytes_max: the largest single write.
    #[arg(long, default_value_t = LogConfig::default().flush_bytes_max)]
    flush_bytes_max: u64,

    /// Do not zero-fill new segments (the log's zero_fill_segments = false).
    #[arg(long)]
    no_zero_fill: bool,

    /// The way the log makes each batch durable: `dsync` (O_DSYNC writes) or `fdatasync`
    /// (a write, then an fdatasync). The device probe always writes, then calls fdatasync.
    #[arg(long, default_value = "dsync")]
    sync_method: SyncMethod,

    /// The bytes that entries and the device probe write. A disk that compresses what it
    /// stores writes `constant` payloads faster than real data.
    #[arg(long, value_enum, default_value_t = PayloadKind::Random)]
    payload: PayloadKind,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // The embedded nodes log what goes wrong during a run (a failed snapshot, a transfer
    // restarted) at warn and above; RUST_LOG=info shows their progress as well.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Log(args)) => run_log(&args).map(|()| ExitCode::SUCCESS),
        // A regression exits 1; a comparison that could not run exits 2, as usage errors do.
        Some(Command::Compare(args)) => run_compare(&args).or_else(|error| {
            eprintln!("error: {error}");
            Ok(ExitCode::from(2))
        }),
        Some(Command::Chart(args)) => run_chart(&args).or_else(|error| {
            eprintln!("error: {error}");
            Ok(ExitCode::from(2))
        }),
        Some(Command::Run(args)) => run_workload(&args),
        Some(Command::Failover(args)) => run_failover_trials(&args),
        None => run_workload(&cli.run),
    }
}

/// Commit gap after a leader's death that the failover goal allows, on loopback.
const FAILOVER_GAP_GOAL_MILLIS: f64 = 100.0;

/// Runs `shardraft-bench failover` and prints the median and longest gap against the goal.
fn run_failover_trials(args: &FailoverArgs) -> anyhow::Result<ExitCode> {
    let report = run_failover(args)?;
    let Some((median, max)) = report.gap_median_and_max_millis() else {
        return Ok(ExitCode::SUCCESS);
    };
    println!();
    println!(
        "commit gap after killing the leader: median {median:.1} ms, max {max:.1} ms over {} \
         trials (goal: under {FAILOVER_GAP_GOAL_MILLIS:.0} ms: {})",
        report.trials.len(),
        if max < FAILOVER_GAP_GOAL_MILLIS {
            "PASS"
        } else {
            "FAIL"
        }
    );
    println!(
        "elections won during the warm-up, with no leader killed: {}; writes committed by the load: {}",
        report.elections_without_kill, report.writes
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `shardraft-bench run`; fails when a `--check` verdict is not linearizable.
fn run_workload(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let workload = args.validate()?;
    let outcome = shardraft_bench::harness::run(workload)?;
    if outcome.failures.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for failure in &outcome.failures {
        eprintln!("error: {failure}");
    }
    Ok(ExitCode::FAILURE)
}

/// Runs `shardraft-bench compare`.
fn run_compare(args: &CompareArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.threshold.is_finite() && args.threshold > 0.0,
        "--threshold {} is not a positive percentage; give for example --threshold 5",
        args.threshold
    );
    let options = compare::CompareOptions::with_threshold_pct(args.threshold);
    let report = compare::compare_files(&args.a, &args.b, &options)?;
    println!("{report}");
    if args.fail_on_regression && report.has_regression() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `shardraft-bench chart`.
fn run_chart(args: &ChartArgs) -> anyhow::Result<ExitCode> {
    let results = args
        .results
        .iter()
        .map(RunResult::read)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&RunResult> = results.iter().collect();
    chart::write_latency_chart(&refs, &args.output)?;
    println!("chart written to {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// Everything one run of `shardraft-bench log` measured, as written with `--json`.
#[derive(Debug, Serialize)]
struct Report {
    machine: MachineFacts,
    filesystem: Filesystem,
    dir: PathBuf,
    load_average_start: Option<[f64; 3]>,
    load_average_end: Option<[f64; 3]>,
    log_config: ConfigReport,
    duration_secs: f64,
    warmup_secs: f64,
    warmup_max_secs: f64,
    payload: PayloadKind,
    device: Vec<DeviceSample>,
    cells: Vec<CellReport>,
    goals: Vec<GoalReport>,
}

#[derive(Debug, Serialize)]
struct ConfigReport {
    segment_bytes: u64,
    flush_bytes_max: u64,
    pending_bytes_max: u64,
    entry_cache_bytes_max: u64,
    zero_fill_segments: bool,
    sync_method: SyncMethod,
}

fn run_log(args: &LogArgs) -> anyhow::Result<()> {
    let specs = load_specs(args)?;
    let duration = seconds(args.duration_secs, "--duration-secs")?;
    let warmup = load::Warmup {
        min: seconds(args.warmup_secs, "--warmup-secs")?,
        max: seconds(args.warmup_max_secs, "--warmup-max-secs")?,
    };
    anyhow::ensure!(
        warmup.max >= warmup.min,
        "invalid --warmup-max-secs {}: expected at least --warmup-secs {}",
        args.warmup_max_secs,
        args.warmup_secs
    );
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(environment::default_data_dir);
    environment::prepare_data_dir(&dir)?;
    let run_dir = RunDir::create(&dir)?;

    let config = LogConfig {
        segment_bytes: args.segment_bytes,
        flush_bytes_max: args.flush_bytes_max,
        zero_fill_segments: !args.no_zero_fill,
        sync_method: args.sync_method,
        ..LogConfig::default()
    };
    config.validate().context("invalid log settings")?;

    let machine = environment::machine_facts();
    let filesystem = environment::filesystem_of(&dir)?;
    let load_average_start = environment::load_average();
    print_header(&machine, &filesystem, &dir, load_average_start, &config);
    println!(
        "each cell: {:.1} s unmeasured, up to {:.1} s until rotations reuse retired segments, \
         then {:.1} s measured; one glommio executor, one thread",
        warmup.min.as_secs_f64(),
        warmup.max.as_secs_f64(),
        duration.as_secs_f64()
    );
    println!(
        "each group compacts after {} entries or {} of payload, whichever comes first (0: no limit)",
        args.compact_every_entries,
        format_bytes(args.compact_every_bytes)
    );
    println!(
        "payload: {} bytes, in the entries and in the device probe's writes",
        args.payload
    );

    let executor = glommio::LocalExecutorBuilder::default()
        .name("shardraft-bench-log")
        .io_memory(shardraft::log::io_memory_bytes(&config))
        .make()
        .map_err(std::io::Error::from)
        .context("starting the glommio executor failed")?;
    let (device, cells) = executor.run(async {
        shardraft::wake_guard::spawn_wake_guard().detach();
        measure_all(
            run_dir.path(),
            &config,
            &specs,
            args.payload,
            warmup,
            duration,
        )
        .await
    })?;

    let sequential = device
        .iter()
        .find(|sample| sample.write_bytes == SEQUENTIAL_WRITE_BYTES)
        .copied()
        .context("the device's sequential bandwidth was not measured")?;
    let goals = vec![
        goals::check_bandwidth(&cells, &sequential),
        goals::check_small_entries(&cells),
        goals::check_latency(&cells),
    ];
    println!();
    println!("goals");
    for (number, goal) in goals.iter().enumerate() {
        println!(
            "  ({}) {}: {} - {}",
            number + 1,
            goal.goal,
            goal.verdict,
            goal.detail
        );
    }
    let load_average_end = environment::load_average();
    println!();
    println!("load average at end: {}", format_load(load_average_end));

    if let Some(path) = &args.json {
        let report = Report {
            machine,
            filesystem,
            dir: dir.clone(),
            load_average_start,
            load_average_end,
            log_config: ConfigReport {
                segment_bytes: config.segment_bytes,
                flush_bytes_max: config.flush_bytes_max,
                pending_bytes_max: config.pending_bytes_max,
                entry_cache_bytes_max: config.entry_cache_bytes_max,
                zero_fill_segments: config.zero_fill_segments,
                sync_method: config.sync_method,
            },
            duration_secs: duration.as_secs_f64(),
            warmup_secs: warmup.min.as_secs_f64(),
            warmup_max_secs: warmup.max.as_secs_f64(),
            payload: args.payload,
            device,
            cells,
            goals,
        };
        let text = serde_json::to_string_pretty(&report).context("encoding the report failed")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing {} failed", path.display()))?;
        println!("figures written to {}", path.display());
    }
    run_dir.remove()
}

/// Lists the cells to run: every size at every appender count with one entry per submission,
/// then the smallest size with `entries_per_submit` entries per submission, then, when the
/// sizes include 4 KiB, 4 KiB entries with `bandwidth_appenders` appenders, and with
/// `batched_bandwidth_appenders` appenders of several entries per submission.
fn load_specs(args: &LogArgs) -> anyhow::Result<Vec<(LoadSpec, CellRole)>> {
    anyhow::ensure!(
        !args.sizes.is_empty() && args.sizes.iter().all(|&size| size > 0),
        "--sizes needs at least one entry size, each above 0 bytes"
    );
    anyhow::ensure!(
        !args.appenders.is_empty() && args.appenders.iter().all(|&count| count > 0),
        "--appenders needs at least one count, each above 0"
    );
    anyhow::ensure!(
        args.entries_per_submit > 0,
        "--entries-per-submit must be at least 1"
    );
    anyhow::ensure!(
        args.batched_bandwidth_entries_per_submit > 0,
        "--batched-bandwidth-entries-per-submit must be at least 1"
    );
    // Every cell compacts and fills its payloads the same way; only these three differ.
    let spec = |entry_bytes: usize, appenders: usize, entries_per_submit: usize| LoadSpec {
        entry_bytes,
        appenders,
        entries_per_submit,
        compact_every_entries: args.compact_every_entries,
        compact_every_bytes: args.compact_every_bytes,
        payload: args.payload,
    };
    let mut specs = Vec::new();
    for &entry_bytes in &args.sizes {
        for &appenders in &args.appenders {
            specs.push((spec(entry_bytes, appenders, 1), CellRole::Grid));
        }
    }
    if args.entries_per_submit > 1 {
        let smallest = args.sizes.iter().copied().min().unwrap_or(1);
        for &appenders in &args.appenders {
            let batched = spec(smallest, appenders, args.entries_per_submit);
            specs.push((batched, CellRole::Batched));
        }
    }
    if args.sizes.contains(&goals::BANDWIDTH_ENTRY_BYTES) {
        let bandwidth_cells = [
            (args.bandwidth_appenders, 1),
            (
                args.batched_bandwidth_appenders,
                args.batched_bandwidth_entries_per_submit,
            ),
        ];
        for (appenders, entries_per_submit) in bandwidth_cells {
            if appenders > 0 {
                let bandwidth = spec(goals::BANDWIDTH_ENTRY_BYTES, appenders, entries_per_submit);
                specs.push((bandwidth, CellRole::Bandwidth));
            }
        }
    }
    Ok(specs)
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|duration| !duration.is_zero() || flag.starts_with("--warmup"))
        .with_context(|| format!("invalid {flag} {value}: expected a positive number of seconds"))
}

/// A directory of this run inside the measured directory, removed at the end and, as far as
/// possible, on an error.
#[derive(Debug)]
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create(parent: &Path) -> anyhow::Result<RunDir> {
        let path = parent.join(format!("run-{}", std::process::id()));
        std::fs::create_dir(&path)
            .with_context(|| format!("creating {} failed", path.display()))?;
        Ok(RunDir { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn remove(self) -> anyhow::Result<()> {
        std::fs::remove_dir_all(&self.path)
            .with_context(|| format!("removing {} failed", self.path.display()))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // Reached with the directory still present only when the run failed; the error
        // that ended it matters more than one from this cleanup.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn print_header(
    machine: &MachineFacts,
    filesystem: &Filesystem,
    dir: &Path,
    load_average: Option<[f64; 3]>,
    config: &LogConfig,
) {
    println!("shardraft-bench log: write-ahead log against the device's own limit");
    println!("cpu: {} x {}", machine.cpus, machine.cpu_model);
    println!("kernel: {}", machine.kernel);
    println!("rustc: {}", machine.rustc);
    println!(
        "directory: {} on {} ({} mounted at {}, {})",
        dir.display(),
        filesystem.fs_type,
        filesystem.source,
        filesystem.mount_point.display(),
        filesystem.options
    );
    println!("load average at start: {}", format_load(load_average));
    println!(
        "log config: segment_bytes {}, flush_bytes_max {}, pending_bytes_max {}, \
         entry_cache_bytes_max {}, zero_fill_segments {}, sync_method {:?}",
        format_bytes(config.segment_bytes),
        format_bytes(config.flush_bytes_max),
        format_bytes(config.pending_bytes_max),
        format_bytes(config.entry_cache_bytes_max),
        config.zero_fill_segments,
        config.sync_method
    );
}

fn format_load(load_average: Option<[f64; 3]>) -> String {
    match load_average {
        Some([one, five, fifteen]) => format!("{one:.2} {five:.2} {fifteen:.2} (1, 5, 15 min)"),
        None => "unknown".to_string(),
    }
}

/// Measures the device, then every cell, printing each figure as it is taken.
async fn measure_all(
    run_dir: &Path,
    config: &LogConfig,
    specs: &[(LoadSpec, CellRole)],
    payload: PayloadKind,
    warmup: load::Warmup,
    duration: Duration,
) -> anyhow::Result<(Vec<DeviceSample>, Vec<CellReport>)> {
    let probe = DeviceProbe::create(run_dir, PROBE_FILE_BYTES, payload).await?;
    println!();
    println!(
        "device: O_DIRECT write + fdatasync one at a time, sequential into a preallocated, \
         zero-filled {} file",
        format_bytes(PROBE_FILE_BYTES)
    );
    println!(
        "  {:>8} {:>10} {:>10} {:>10} {:>10}",
        "write", "ops/s", "MiB/s", "p50 us", "p99 us"
    );
    let mut device = Vec::new();
    for write_bytes in DEVICE_WRITE_BYTES {
        let sample = probe.measure(write_bytes, duration).await?;
        println!(
            "  {:>8} {:>10.0} {:>10.1} {:>10.1} {:>10.1}",
            format_bytes(sample.write_bytes),
            sample.ops_per_sec,
            sample.mib_per_sec,
            sample.latency.p50_micros,
            sample.latency.p99_micros
        );
        device.push(sample);
    }

    println!();
    println!(
        "write-ahead log: closed-loop appenders, one group each; latency from submit to \
         durable; device p99 at the cell's load (mean write size, writes per second), and \
         back to back (b2b); device MiB/s with 1 MiB writes beside 4 KiB cells (the higher \
         of before and after); unmeasured seconds; new segments of the rotations measured"
    );
    println!(
        "  {:>6} {:>9} {:>8} {:>11} {:>8} {:>12} {:>9} {:>9} {:>9} {:>10} {:>7} {:>6} {:>5} {:>10} {:>7} {:>7}",
        "entry",
        "appenders",
        "x/submit",
        "entries/s",
        "MiB/s",
        "entries/sync",
        "write KiB",
        "p50 us",
        "p99 us",
        "device p99",
        "b2b p99",
        "ratio",
        "cpu",
        "dev MiB/s",
        "warm s",
        "new seg"
    );
    let mut cells = Vec::new();
    for (number, (spec, role)) in specs.iter().enumerate() {
        let cell_dir = run_dir.join(format!("cell-{number}"));
        let bandwidth_cell = spec.entry_bytes == goals::BANDWIDTH_ENTRY_BYTES;
        let sequential_before = if bandwidth_cell {
            Some(probe.measure(SEQUENTIAL_WRITE_BYTES, duration / 2).await?)
        } else {
            None
        };
        let outcome = run_cell(&cell_dir, config, *spec, warmup, duration).await?;
        let write_bytes = (outcome.write_bytes_mean().ceil() as u64)
            .next_multiple_of(shardraft_bench::wal::device::BLOCK_BYTES);
        // The device's latency drifts by several times within minutes on shared disks, so
        // each cell's reference is measured right after it, at its own write size and rate.
        let write_interval =
            outcome.elapsed / u32::try_from(outcome.syncs.max(1)).unwrap_or(u32::MAX);
        let device_sample = probe
            .measure_paced(write_bytes, write_interval, duration / 2)
            .await?;
        let device_back_to_back = probe.measure(write_bytes, duration / 2).await?;
        let sequential_beside = match sequential_before {
            Some(before) => {
                let after = probe.measure(SEQUENTIAL_WRITE_BYTES, duration / 2).await?;
                Some(if after.mib_per_sec > before.mib_per_sec {
                    after
                } else {
                    before
                })
            }
            None => None,
        };
        let cell = CellReport {
            spec: *spec,
            role: *role,
            entries_per_sec: outcome.entries_per_sec(),
            payload_mib_per_sec: outcome.payload_mib_per_sec(spec.entry_bytes),
            entries_per_sync: outcome.entries_per_sync(),
            write_bytes_mean: outcome.write_bytes_mean(),
            latency: LatencySummary::from_nanos(&outcome.latency_nanos),
            thread_cpu_share: outcome.thread_cpu_share(),
            log_write_micros_mean: outcome.write_micros_mean(),
            log_sync_micros_mean: outcome.sync_micros_mean(),
            device: device_sample,
            device_back_to_back,
            sequential_beside,
            warmup_secs: outcome.warmup.as_secs_f64(),
            rotations: outcome.rotations,
            segments_new: outcome.segments_new,
        };
        print_cell(&cell);
        cells.push(cell);
    }
    probe.remove().await?;
    Ok((device, cells))
}

/// Opens a fresh log in `cell_dir`, runs one load against it, closes it and deletes it.
async fn run_cell(
    cell_dir: &Path,
    config: &LogConfig,
    spec: LoadSpec,
    warmup: load::Warmup,
    duration: Duration,
) -> anyhow::Result<load::LoadOutcome> {
    std::fs::create_dir(cell_dir)
        .with_context(|| format!("creating {} failed", cell_dir.display()))?;
    let config = LogConfig {
        data_dir: cell_dir.to_path_buf(),
        ..config.clone()
    };
    let identity = LogIdentity {
        cluster_id: 1,
        node_id: 1,
        shard: 0,
    };
    let log = DiskLog::open(&config, identity)
        .await
        .with_context(|| format!("opening the log in {} failed", cell_dir.display()))?;
    let outcome = load::run_timed(&log, spec, warmup, duration).await?;
    log.close()
        .await
        .with_context(|| format!("closing the log in {} failed", cell_dir.display()))?;
    drop(log);
    std::fs::remove_dir_all(cell_dir)
        .with_context(|| format!("removing {} failed", cell_dir.display()))?;
    Ok(outcome)
}

fn print_cell(cell: &CellReport) {
    let cpu = cell
        .thread_cpu_share
        .map_or_else(|| "-".to_string(), |share| format!("{:.0}%", share * 100.0));
    let sequential = cell.sequential_beside.map_or_else(
        || "-".to_string(),
        |sample| format!("{:.1}", sample.mib_per_sec),
    );
    println!(
        "  {:>6} {:>9} {:>8} {:>11.0} {:>8.2} {:>12.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>7.1} {:>6.2} {:>5} {:>10} {:>7.1} {:>7}",
        format_bytes(cell.spec.entry_bytes as u64),
        cell.spec.appenders,
        cell.spec.entries_per_submit,
        cell.entries_per_sec,
        cell.payload_mib_per_sec,
        cell.entries_per_sync,
        cell.write_bytes_mean / 1024.0,
        cell.latency.p50_micros,
        cell.latency.p99_micros,
        cell.device.latency.p99_micros,
        cell.device_back_to_back.latency.p99_micros,
        cell.latency_ratio(),
        cpu,
        sequential,
        cell.warmup_secs,
        format!("{}/{}", cell.segments_new, cell.rotations)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_is_the_default_run() {
        let cli = Cli::try_parse_from(["shardraft-bench"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.run.validate().is_ok());
    }

    #[test]
    fn run_options_work_without_subcommand() {
        let cli =
            Cli::try_parse_from(["shardraft-bench", "--clients", "4", "--json", "r.json"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.run.clients, Some(4));
        assert_eq!(cli.run.json, Some(PathBuf::from("r.json")));
    }

    #[test]
    fn node_is_an_alias_of_run() {
        let cli =
            Cli::try_parse_from(["shardraft-bench", "node", "--sweep-clients", "1,256"]).unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("node did not parse as run");
        };
        assert_eq!(args.sweep_clients, vec![1, 256]);
    }

    #[test]
    fn run_options_rejected_before_log() {
        let error = Cli::try_parse_from(["shardraft-bench", "--clients", "4", "log"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn log_keeps_its_own_options() {
        let cli = Cli::try_parse_from(["shardraft-bench", "log", "--sizes", "16"]).unwrap();
        let Some(Command::Log(args)) = cli.command else {
            panic!("log did not parse");
        };
        assert_eq!(args.sizes, vec![16]);
    }

    fn log_args(arguments: &[&str]) -> LogArgs {
        let cli = Cli::try_parse_from(["shardraft-bench", "log"].iter().chain(arguments)).unwrap();
        let Some(Command::Log(args)) = cli.command else {
            panic!("log did not parse");
        };
        args
    }

    #[test]
    fn default_log_cells_end_with_the_bandwidth_cells() {
        let specs = load_specs(&log_args(&[])).unwrap();
        let roles: Vec<CellRole> = specs.iter().map(|(_, role)| *role).collect();
        assert_eq!(roles.len(), 14, "9 grid, 3 batched, 2 bandwidth cells");
        assert!(roles[..9].iter().all(|role| *role == CellRole::Grid));
        assert!(roles[9..12].iter().all(|role| *role == CellRole::Batched));
        let (bandwidth, role) = specs[12];
        assert_eq!(role, CellRole::Bandwidth);
        assert_eq!(bandwidth.entry_bytes, 4096);
        assert_eq!(bandwidth.appenders, 1024);
        assert_eq!(bandwidth.entries_per_submit, 1);
        let (batched, role) = specs[13];
        assert_eq!(role, CellRole::Bandwidth);
        assert_eq!(batched.entry_bytes, 4096);
        assert_eq!(batched.appenders, 64);
        assert_eq!(batched.entries_per_submit, 16);
        assert!(
            specs
                .iter()
                .all(|(spec, _)| spec.payload == PayloadKind::Random)
        );
    }

    #[test]
    fn bandwidth_cell_needs_4k_entries_and_a_count() {
        let without_4k = load_specs(&log_args(&["--sizes", "16"])).unwrap();
        assert!(
            without_4k
                .iter()
                .all(|(_, role)| *role != CellRole::Bandwidth)
        );
        let turned_off = load_specs(&log_args(&[
            "--bandwidth-appenders",
            "0",
            "--batched-bandwidth-appenders",
            "0",
        ]))
        .unwrap();
        assert!(
            turned_off
                .iter()
                .all(|(_, role)| *role != CellRole::Bandwidth)
        );
        let batched_only = load_specs(&log_args(&["--bandwidth-appenders", "0"])).unwrap();
        let bandwidth: Vec<&LoadSpec> = batched_only
            .iter()
            .filter(|(_, role)| *role == CellRole::Bandwidth)
            .map(|(spec, _)| spec)
            .collect();
        assert_eq!(bandwidth.len(), 1);
        assert_eq!(bandwidth[0].entries_per_submit, 16);
        assert!(
            load_specs(&log_args(&["--batched-bandwidth-entries-per-submit", "0"])).is_err(),
            "zero entries per submission is rejected"
        );
    }
}
