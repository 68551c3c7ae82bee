//! Commit throughput of the consensus core alone: a 3-node cluster in one thread, messages
//! passed by function call, instant persistence, batches of 16-byte proposals.
//!
//! Each criterion iteration proposes one batch at the leader and drives the cluster until
//! every node has applied it, so criterion's throughput (`elem/s`) counts entries committed
//! and applied on all 3 nodes. After each batch size a `per core:` line divides the same
//! entries by the thread CPU time they took (`CLOCK_THREAD_CPUTIME_ID` on Unix). The whole
//! cluster runs on one thread, so that is the rate one core sustains, even while other
//! processes compete for the CPUs and stretch the wall time that criterion reports.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cpu_time::ThreadTime;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardraft_bench::{Cluster, PAYLOAD_BYTES};

const NODES: usize = 3;
const BATCH_SIZES: [usize; 4] = [1, 16, 256, 1024];

/// The core never compacts its log, so a cluster is rebuilt, outside the timed region,
/// once its log passes this many entries. With 56-byte entries this bounds each of the 3
/// logs to about 56 MiB however long the run.
const MAX_LOG_ENTRIES: u64 = 1 << 20;

/// Entries and time summed over every timed section of one benchmark.
#[derive(Debug, Default)]
struct Totals {
    entries: u64,
    wall: Duration,
    /// `None` once a read of the thread's CPU time failed.
    cpu: Option<Duration>,
}

impl Totals {
    fn new() -> Totals {
        Totals {
            cpu: Some(Duration::ZERO),
            ..Totals::default()
        }
    }

    fn print_per_core(&self, batch: usize) {
        if self.entries == 0 {
            return;
        }
        let (seconds, clock) = match self.cpu {
            Some(cpu) => (cpu.as_secs_f64(), "thread CPU time"),
            None => (
                self.wall.as_secs_f64(),
                "wall time, thread CPU time unavailable",
            ),
        };
        let rate = self.entries as f64 / seconds;
        println!(
            "core_commit/batch/{batch} per core: {:.3} M entries/s \
             ({} entries committed and applied on {NODES} nodes in {seconds:.3} s of {clock}, \
             1 thread)",
            rate / 1e6,
            self.entries,
        );
    }
}

/// The benchmark's cluster, rebuilt whenever its log grows past `MAX_LOG_ENTRIES`.
struct BenchCluster {
    cluster: Cluster,
    payload: Bytes,
}

impl BenchCluster {
    fn new() -> BenchCluster {
        BenchCluster {
            cluster: Cluster::with_leader(NODES).expect("electing a leader failed"),
            // A heap-backed buffer, so that every entry clone in the core pays the reference
            // counting of real payloads.
            payload: Bytes::copy_from_slice(&[0x5a; PAYLOAD_BYTES]),
        }
    }

    /// Rounds of `batch` proposals that fit before the log reaches `MAX_LOG_ENTRIES`.
    fn rounds_left(&self, batch: usize) -> u64 {
        let last_index = self.cluster.nodes()[0].last_index().0;
        MAX_LOG_ENTRIES.saturating_sub(last_index) / batch as u64
    }

    fn propose(&mut self, batch: usize) -> u64 {
        let round = self
            .cluster
            .propose_batch(batch, &self.payload)
            .expect("a round of proposals failed");
        round.entries
    }
}

/// Runs `iterations` rounds of `batch` proposals and returns their wall time, rebuilding the
/// cluster between timed sections when its log is full.
fn run_rounds(
    bench: &mut Option<BenchCluster>,
    batch: usize,
    iterations: u64,
    totals: &mut Totals,
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut remaining = iterations;
    while remaining > 0 {
        let full = bench
            .as_ref()
            .is_none_or(|current| current.rounds_left(batch) == 0);
        if full {
            *bench = Some(BenchCluster::new());
        }
        let Some(bench) = bench.as_mut() else {
            unreachable!("the cluster was built above");
        };
        let rounds = remaining.min(bench.rounds_left(batch).max(1));

        let cpu_start = thread_cpu_time();
        let start = Instant::now();
        let mut entries = 0;
        for _ in 0..rounds {
            entries += bench.propose(batch);
        }
        let wall = start.elapsed();
        let cpu_end = thread_cpu_time();

        black_box(entries);
        elapsed += wall;
        remaining -= rounds;
        totals.entries += entries;
        totals.wall += wall;
        totals.cpu = match (totals.cpu, cpu_start, cpu_end) {
            (Some(sum), Some(start), Some(end)) => Some(sum + end.saturating_sub(start)),
            _ => None,
        };
    }
    elapsed
}

/// Reads the CPU time this thread has run, or `None` where the platform does not report it.
fn thread_cpu_time() -> Option<Duration> {
    ThreadTime::try_now().ok().map(|time| time.as_duration())
}

fn commit_throughput(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("core_commit");
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch as u64));
        let mut bench = None;
        let mut totals = Totals::new();
        group.bench_with_input(
            BenchmarkId::new("batch", batch),
            &batch,
            |bencher, &batch| {
                bencher.iter_custom(|iterations| {
                    run_rounds(&mut bench, batch, iterations, &mut totals)
                });
            },
        );
        totals.print_per_core(batch);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // 1 s of warm-up and 4 s of measurement per batch size keep `cargo bench -p
    // shardraft-bench` short. Pass `--measurement-time` for steadier figures.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50);
    targets = commit_throughput
}
criterion_main!(benches);
