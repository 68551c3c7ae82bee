//! Group-commit throughput of the disk log, and the CPU cost of encoding its records.
//!
//! `log_append/durable/...` runs closed-loop appenders against a [`DiskLog`] on a glommio
//! executor of its own thread, one group per appender, one entry per submission. One
//! criterion iteration is one entry per appender made durable, so criterion's throughput
//! (`elem/s`) counts durable entries against wall time. After each case a `log:` line adds
//! what criterion does not show: entries per fdatasync, mean write size, the p99
//! append-to-durable latency and the executor thread's CPU time as a share of wall time.
//!
//! The log lives in `$SHARDRAFT_BENCH_DIR` if set, else in the default directory of
//! `shardraft-bench log` (under the temp directory unless that is tmpfs). Each appender
//! compacts its group every 4096 entries, and every group is compacted between timed
//! sections, so that the log deletes old segments and its memory and disk use stay bounded
//! however long the run.
//!
//! `log_append/encode/...` encodes a batch of 256 entry records with
//! [`format::encode_entry`], pure CPU, and its `log:` line gives the cost per record.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardraft::log::{DiskLog, GroupId, LogConfig, LogIdentity, LogStore, WriteBatch, format};
use shardraft::raft::{Entry, EntryKind, LogIndex, Term};
use shardraft_bench::wal::environment;
use shardraft_bench::wal::load::{self, LoadOutcome, LoadSpec};
use shardraft_bench::wal::payload::PayloadKind;
use shardraft_bench::wal::{LatencySummary, MIB, format_bytes, new_latency_histogram};

const ENTRY_SIZES: [usize; 2] = [16, 4096];
const APPENDER_COUNTS: [usize; 2] = [1, 256];
/// Records per encoded batch in the encode benchmark.
const ENCODE_BATCH_RECORDS: usize = 256;

/// Entries each appender appends between compactions of its group.
const COMPACT_EVERY_ENTRIES: u64 = 4096;

/// Payload bytes each appender appends between compactions of its group, so that the log
/// recycles retired segments as in a long run (the `log` command's default).
const COMPACT_EVERY_BYTES: u64 = 256 * 1024;

/// How often the worker checks for the next request while idle.
const WORKER_POLL_INTERVAL: Duration = Duration::from_micros(100);

/// A disk log on an executor thread of its own, running loads on request.
struct LogWorker {
    requests: Option<mpsc::Sender<u64>>,
    outcomes: mpsc::Receiver<anyhow::Result<LoadOutcome>>,
    thread: Option<glommio::ExecutorJoinHandle<anyhow::Result<()>>>,
}

impl LogWorker {
    /// Opens a fresh log in a new directory under `parent` and waits for requests.
    fn start(parent: &std::path::Path, spec: LoadSpec) -> anyhow::Result<LogWorker> {
        let dir = parent.join(format!(
            "criterion-{}-{}B-{}",
            std::process::id(),
            spec.entry_bytes,
            spec.appenders
        ));
        std::fs::create_dir(&dir).with_context(|| format!("creating {} failed", dir.display()))?;
        let (request_sender, requests) = mpsc::channel::<u64>();
        let (outcome_sender, outcomes) = mpsc::channel();
        let thread = glommio::LocalExecutorBuilder::default()
            .name("log-append")
            .io_memory(shardraft::log::io_memory_bytes(&LogConfig::default()))
            .spawn(move || async move {
                let result = serve(&dir, spec, &requests, &outcome_sender).await;
                let removed = std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {} failed", dir.display()));
                result.and(removed)
            })
            .map_err(std::io::Error::from)
            .context("starting the log worker's executor failed")?;
        Ok(LogWorker {
            requests: Some(request_sender),
            outcomes,
            thread: Some(thread),
        })
    }

    /// Makes `entries` more entries durable and returns what that took.
    fn run(&self, entries: u64) -> LoadOutcome {
        let requests = self.requests.as_ref().expect("the worker is running");
        requests.send(entries).expect("the log worker stopped");
        self.outcomes
            .recv()
            .expect("the log worker stopped")
            .expect("the load failed")
    }

    fn finish(mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(std::io::Error::from)
                .expect("the log worker's executor failed")
                .expect("the log worker failed");
        }
    }
}

async fn serve(
    dir: &std::path::Path,
    spec: LoadSpec,
    requests: &mpsc::Receiver<u64>,
    outcomes: &mpsc::Sender<anyhow::Result<LoadOutcome>>,
) -> anyhow::Result<()> {
    let config = LogConfig {
        data_dir: dir.to_path_buf(),
        ..LogConfig::default()
    };
    let identity = LogIdentity {
        cluster_id: 1,
        node_id: 1,
        shard: 0,
    };
    let log = DiskLog::open(&config, identity)
        .await
        .with_context(|| format!("opening the log in {} failed", dir.display()))?;
    loop {
        match requests.try_recv() {
            Ok(entries) => {
                let outcome = load::run_entries(&log, spec, entries).await;
                let failed = outcome.is_err();
                if outcomes.send(outcome).is_err() || failed {
                    break;
                }
                compact_all(&log).await?;
            }
            Err(mpsc::TryRecvError::Empty) => glommio::timer::sleep(WORKER_POLL_INTERVAL).await,
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
    }
    log.close().await.context("closing the log failed")
}

/// Compacts every group through its last entry, so that the log deletes old segments.
async fn compact_all(log: &DiskLog) -> anyhow::Result<()> {
    let mut batch = WriteBatch::new();
    for group in log.group_ids() {
        if let Some(state) = log.group_state(group) {
            batch.compact(group, state.last_index);
        }
    }
    let number = log
        .submit(batch)
        .context("submitting a compaction failed")?;
    while log
        .wait_durable(shardraft::log::BatchNumber(number.0 - 1))
        .await?
        < number
    {}
    Ok(())
}

/// Figures summed over every timed section of one case.
struct Totals {
    outcomes: Vec<LoadOutcome>,
}

impl Totals {
    fn print(&self, case: &str, entry_bytes: usize) {
        let entries: u64 = self.outcomes.iter().map(|o| o.entries).sum();
        let syncs: u64 = self.outcomes.iter().map(|o| o.syncs).sum();
        let written: u64 = self.outcomes.iter().map(|o| o.written_bytes).sum();
        let wall: Duration = self.outcomes.iter().map(|o| o.elapsed).sum();
        let cpu: Option<Duration> = self.outcomes.iter().map(|o| o.thread_cpu).sum();
        let mut latency = new_latency_histogram();
        for outcome in &self.outcomes {
            latency
                .add(&outcome.latency_nanos)
                .expect("latency histograms share their bounds");
        }
        if entries == 0 {
            return;
        }

        let seconds = wall.as_secs_f64();
        let latency = LatencySummary::from_nanos(&latency);
        let cpu = cpu.map_or_else(
            || "unavailable".to_string(),
            |cpu| format!("{:.0}%", cpu.as_secs_f64() / seconds * 100.0),
        );
        println!(
            "{case} log: {:.3} M entries/s durable, {:.2} MiB/s payload, {:.1} entries per \
             fdatasync, {} per write, append-to-durable p50 {:.0} us p99 {:.0} us, executor \
             thread CPU {cpu} of wall time ({entries} entries in {seconds:.2} s)",
            entries as f64 / seconds / 1e6,
            (entries * entry_bytes as u64) as f64 / MIB / seconds,
            entries as f64 / syncs.max(1) as f64,
            format_bytes(written / syncs.max(1)),
            latency.p50_micros,
            latency.p99_micros,
        );
    }
}

fn data_dir() -> PathBuf {
    let dir = std::env::var_os("SHARDRAFT_BENCH_DIR")
        .map_or_else(environment::default_data_dir, PathBuf::from);
    environment::prepare_data_dir(&dir).expect("the benchmark directory is unusable");
    dir
}

fn durable_throughput(criterion: &mut Criterion) {
    let parent = data_dir();
    let mut group = criterion.benchmark_group("log_append/durable");
    for entry_bytes in ENTRY_SIZES {
        for appenders in APPENDER_COUNTS {
            let spec = LoadSpec {
                entry_bytes,
                appenders,
                entries_per_submit: 1,
                compact_every_entries: COMPACT_EVERY_ENTRIES,
                compact_every_bytes: COMPACT_EVERY_BYTES,
                payload: PayloadKind::Random,
            };
            let worker = LogWorker::start(&parent, spec).expect("starting the log worker failed");
            let mut totals = Totals {
                outcomes: Vec::new(),
            };
            let name = format!(
                "{}/appenders",
                format_bytes(entry_bytes as u64).replace(' ', "")
            );
            group.throughput(Throughput::Elements(appenders as u64));
            group.bench_with_input(
                BenchmarkId::new(&name, appenders),
                &spec,
                |bencher, spec| {
                    bencher.iter_custom(|iterations| {
                        let outcome = worker.run(iterations * spec.appenders as u64);
                        let elapsed = outcome.elapsed;
                        totals.outcomes.push(outcome);
                        elapsed
                    });
                },
            );
            totals.print(
                &format!("log_append/durable/{name}/{appenders}"),
                entry_bytes,
            );
            worker.finish();
        }
    }
    group.finish();
}

fn encode_cost(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("log_append/encode");
    for entry_bytes in ENTRY_SIZES {
        let payload = Bytes::from(vec![0x5a; entry_bytes]);
        let entries: Vec<Entry> = (1..=ENCODE_BATCH_RECORDS as u64)
            .map(|index| Entry {
                term: Term(1),
                index: LogIndex(index),
                kind: EntryKind::Normal,
                data: payload.clone(),
            })
            .collect();
        let mut out = Vec::with_capacity(ENCODE_BATCH_RECORDS * format::record_bytes(entry_bytes));
        let mut records = 0u64;
        let mut encoded_bytes = 0u64;
        let mut wall = Duration::ZERO;
        group.throughput(Throughput::Elements(ENCODE_BATCH_RECORDS as u64));
        let name = format_bytes(entry_bytes as u64).replace(' ', "");
        group.bench_function(BenchmarkId::new("records", &name), |bencher| {
            bencher.iter_custom(|iterations| {
                let start = Instant::now();
                for _ in 0..iterations {
                    out.clear();
                    for entry in &entries {
                        format::encode_entry(GroupId(7), entry, &mut out);
                    }
                    black_box(&out);
                }
                let elapsed = start.elapsed();
                records += iterations * ENCODE_BATCH_RECORDS as u64;
                encoded_bytes += iterations * out.len() as u64;
                wall += elapsed;
                elapsed
            });
        });
        if records > 0 {
            println!(
                "log_append/encode/records/{name} log: {:.1} ns per record, {:.2} GiB/s \
                 encoded ({records} records of {entry_bytes} payload bytes)",
                wall.as_nanos() as f64 / records as f64,
                encoded_bytes as f64 / MIB / 1024.0 / wall.as_secs_f64(),
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // 10 samples after 1 s of warm-up, in 3 s, keep the 6 cases near half a minute. Pass
    // `--measurement-time` for steadier figures.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    targets = durable_throughput, encode_cost
}
criterion_main!(benches);
