//! The load generator: client tasks on glommio executors that drive a [`Target`] for one
//! point (load level) and record every completion.
//!
//! A point runs on `--load-threads` executor threads. Each thread opens its sessions,
//! reports that it is ready, and waits for the common start time, so that no thread's
//! connection setup falls into another's measured part. From the start, every operation
//! that begins within the warm-up runs unmeasured. Measured operations are those whose
//! (intended) start falls into the measured part: a fixed time after the warm-up, or the
//! first `--operations` started after it.
//!
//! - **Closed loop**: each client issues one request, waits for the reply, and issues the
//!   next. Latency runs from the request's start to its reply.
//! - **Open loop** (`--rate`): operation `n` of the point is due at `n / rate` seconds
//!   after the start, whatever happened before it. A pool of `--clients` slots bounds the
//!   operations in flight. An operation that finds every slot busy when it is due counts
//!   as late and waits for a slot, but keeps its intended start, and no operation is
//!   skipped. Latency runs from the intended start, so a stall of the target shows in
//!   every operation queued behind it instead of being hidden (no coordinated omission).
//!
//! Each thread records into its own [`PointStats`] behind a mutex that only the progress
//! display and the end of the point also take. With `--check`, each thread also keeps the
//! list of its operations for the history.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use super::check::{RecordedCall, RecordedOperation, RecordedOutcome};
use super::progress::{Progress, ProgressSnapshot};
use super::target::{ReadMode, Request, RequestError, Response, Session, Target};
use super::workload::{
    Burst, KeyChooser, LoadLevel, OperationGenerator, PlannedOperation, RunLength, Workload,
};
use crate::wal::new_latency_histogram;
use shardraft::snapshot::SnapshotActivityMark;

/// Counters of the system under test, sampled at the start and end of a point's measured
/// part.
pub trait ServerCounters {
    /// Reads the counters now.
    ///
    /// # Errors
    ///
    /// When the target cannot be asked.
    fn sample(&self) -> anyhow::Result<CounterSample>;

    /// Whose CPU time [`CounterSample::cpu`] counts, in words for the summary.
    fn cpu_scope(&self) -> &'static str;

    /// Bytes the target's data occupies on disk now, when the harness can see its files.
    ///
    /// # Errors
    ///
    /// When the data directory cannot be read.
    fn disk_bytes(&self) -> anyhow::Result<Option<u64>> {
        Ok(None)
    }

    /// Reads the target's snapshot activity, when it can be read at every request; the
    /// harness then splits write latencies by whether a snapshot was being taken.
    fn snapshot_probe(&self) -> Option<SnapshotProbe> {
        None
    }
}

/// Reads the snapshot counts of the whole target at the moment of the call.
#[derive(Clone)]
pub struct SnapshotProbe(Arc<dyn Fn() -> SnapshotActivityMark + Send + Sync>);

impl SnapshotProbe {
    pub fn new(read: impl Fn() -> SnapshotActivityMark + Send + Sync + 'static) -> Self {
        SnapshotProbe(Arc::new(read))
    }

    pub fn read(&self) -> SnapshotActivityMark {
        (self.0)()
    }
}

impl std::fmt::Debug for SnapshotProbe {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SnapshotProbe")
    }
}

/// Snapshot counters of all replicas, cumulative like the rest of a [`CounterSample`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotCounters {
    /// Snapshots taken and stored durably.
    pub taken: u64,
    pub failed: u64,
    /// Creation times of the taken snapshots, summed.
    pub creation_nanos: u64,
    /// Taken snapshots per creation-time bucket, with the upper bounds of
    /// [`shardraft::metrics::LATENCY_BUCKET_BOUNDS_SECONDS`] and an overflow bucket last.
    pub creation_buckets: [u64; shardraft::metrics::LATENCY_BUCKETS + 1],
    /// Snapshots received from a leader and installed.
    pub installed: u64,
    pub installed_bytes: u64,
    /// Time spent receiving and restoring the installed snapshots.
    pub install_nanos: u64,
}

impl SnapshotCounters {
    /// Returns the growth from `earlier` to `self`.
    pub fn since(&self, earlier: &SnapshotCounters) -> SnapshotCounters {
        let mut creation_buckets = self.creation_buckets;
        for (bucket, earlier) in creation_buckets.iter_mut().zip(earlier.creation_buckets) {
            *bucket = bucket.saturating_sub(earlier);
        }
        SnapshotCounters {
            taken: self.taken.saturating_sub(earlier.taken),
            failed: self.failed.saturating_sub(earlier.failed),
            creation_nanos: self.creation_nanos.saturating_sub(earlier.creation_nanos),
            creation_buckets,
            installed: self.installed.saturating_sub(earlier.installed),
            installed_bytes: self.installed_bytes.saturating_sub(earlier.installed_bytes),
            install_nanos: self.install_nanos.saturating_sub(earlier.install_nanos),
        }
    }
}

/// How often a point samples the target's bytes on disk.
pub const DISK_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// The target's bytes on disk at one moment of a point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskSample {
    /// Seconds since the point's measured part began; negative during the warm-up.
    pub elapsed_secs: f64,
    pub bytes: u64,
}

/// Cumulative counts of one write stage's histogram buckets, with the bounds of
/// [`shardraft::metrics::STAGE_BUCKET_BOUNDS_NANOS`] and an overflow bucket last.
pub type StageBucketCounts = [u64; shardraft::metrics::STAGE_BUCKETS + 1];

/// One write stage's cumulative histogram: its name, bucket counts and exact sum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageSample {
    pub stage: String,
    pub bucket_counts: StageBucketCounts,
    pub sum_nanos: u64,
}

/// Cumulative counters at one instant; `None` where the target does not report them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSample {
    /// CPU time of the processes under test.
    pub cpu: Option<Duration>,
    /// fdatasync calls of all replicas.
    pub fdatasyncs: Option<u64>,
    /// Log entries made durable (or appended) by all replicas.
    pub log_entries: Option<u64>,
    /// Per write stage (by name, `total` last), the bucket counts of the leaders' stage
    /// histograms summed over every node.
    pub write_stages: Option<Vec<StageSample>>,
    /// Snapshots taken and installed on all replicas.
    pub snapshots: Option<SnapshotCounters>,
    /// Leader elections won in every group on all replicas.
    pub elections: Option<u64>,
}

impl CounterSample {
    /// Returns the growth from `earlier` to `self`; a counter missing in either is `None`.
    pub fn since(&self, earlier: &CounterSample) -> CounterSample {
        CounterSample {
            cpu: self
                .cpu
                .zip(earlier.cpu)
                .map(|(now, then)| now.saturating_sub(then)),
            fdatasyncs: self
                .fdatasyncs
                .zip(earlier.fdatasyncs)
                .map(|(now, then)| now.saturating_sub(then)),
            log_entries: self
                .log_entries
                .zip(earlier.log_entries)
                .map(|(now, then)| now.saturating_sub(then)),
            write_stages: self
                .write_stages
                .as_ref()
                .zip(earlier.write_stages.as_ref())
                .map(|(now, then)| stage_growth(now, then)),
            snapshots: self
                .snapshots
                .zip(earlier.snapshots)
                .map(|(now, then)| now.since(&then)),
            elections: self
                .elections
                .zip(earlier.elections)
                .map(|(now, then)| now.saturating_sub(then)),
        }
    }
}

/// Subtracts `then`'s counts from `now`'s, stage by stage, matched by name.
fn stage_growth(now: &[StageSample], then: &[StageSample]) -> Vec<StageSample> {
    now.iter()
        .map(|sample| {
            let mut growth = sample.clone();
            if let Some(earlier) = then.iter().find(|earlier| earlier.stage == sample.stage) {
                for (bucket, earlier) in growth.bucket_counts.iter_mut().zip(&earlier.bucket_counts)
                {
                    *bucket = bucket.saturating_sub(*earlier);
                }
                growth.sum_nanos = growth.sum_nanos.saturating_sub(earlier.sum_nanos);
            }
            growth
        })
        .collect()
}

/// A target that reports no counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCounters;

impl ServerCounters for NoCounters {
    fn sample(&self) -> anyhow::Result<CounterSample> {
        Ok(CounterSample::default())
    }

    fn cpu_scope(&self) -> &'static str {
        "not measured: the servers run in other processes"
    }
}

/// Completions of one operation kind.
#[derive(Clone, Debug)]
pub struct OperationStats {
    pub ok: u64,
    pub refused: u64,
    pub indeterminate: u64,
    /// Latency of the successful operations, in nanoseconds.
    pub latency_nanos: Histogram<u64>,
}

impl Default for OperationStats {
    fn default() -> Self {
        OperationStats {
            ok: 0,
            refused: 0,
            indeterminate: 0,
            latency_nanos: new_latency_histogram(),
        }
    }
}

impl OperationStats {
    /// Operations that did not succeed.
    pub fn errors(&self) -> u64 {
        self.refused + self.indeterminate
    }

    /// Counts one completion: its latency when it succeeded.
    fn count(&mut self, outcome: &RecordedOutcome, timing: Timing) {
        match outcome {
            RecordedOutcome::Written | RecordedOutcome::Read(_) => {
                self.ok += 1;
                let nanos = timing.ended.saturating_duration_since(timing.intended);
                let nanos = u64::try_from(nanos.as_nanos()).unwrap_or(u64::MAX);
                self.latency_nanos.saturating_record(nanos.max(1));
            }
            RecordedOutcome::Refused => self.refused += 1,
            RecordedOutcome::Indeterminate => self.indeterminate += 1,
        }
    }

    fn add(&mut self, other: &OperationStats) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.indeterminate += other.indeterminate;
        // Both histograms come from `new_latency_histogram`, with one range, so adding
        // cannot fail.
        let _ = self.latency_nanos.add(&other.latency_nanos);
    }
}

/// The measured operations of one point, or of one thread's share of it.
#[derive(Clone, Debug, Default)]
pub struct PointStats {
    pub write: OperationStats,
    pub read: OperationStats,
    /// The writes that ran while the target was taking a snapshot (one was in progress
    /// when the write started, or one began before it ended); a subset of `write`. Empty
    /// when the target's snapshot activity cannot be read.
    pub write_during_snapshot: OperationStats,
    /// Open loop: measured operations that found every slot busy when they were due.
    pub late: u64,
    /// When the last measured operation completed.
    pub last_completion: Option<Instant>,
}

impl PointStats {
    /// Adds `other`'s counts and latencies to these.
    pub fn add(&mut self, other: &PointStats) {
        self.write.add(&other.write);
        self.read.add(&other.read);
        self.write_during_snapshot.add(&other.write_during_snapshot);
        self.late += other.late;
        self.last_completion = self.last_completion.max(other.last_completion);
    }

    /// Successful operations of both kinds.
    pub fn ok(&self) -> u64 {
        self.write.ok + self.read.ok
    }

    /// Failed operations of both kinds.
    pub fn errors(&self) -> u64 {
        self.write.errors() + self.read.errors()
    }
}

/// One thread's stats, shared with the progress display.
pub type SharedStats = Arc<Mutex<PointStats>>;

fn lock(stats: &SharedStats) -> MutexGuard<'_, PointStats> {
    // A thread that panicked while holding the lock left whole counters behind, because
    // every update is a plain addition.
    stats
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything one point measured.
#[derive(Debug)]
pub struct PointMeasurement {
    pub stats: PointStats,
    /// Length of the measured part.
    pub elapsed: Duration,
    /// Growth of the target's counters over the measured part.
    pub counters: CounterSample,
    /// Every operation of the point, warm-up included, when the run checks histories.
    pub history: Vec<RecordedOperation>,
    /// Load threads the point ran on.
    pub load_threads: usize,
    /// Sessions the point opened.
    pub sessions: usize,
    /// The target's bytes on disk, sampled every [`DISK_SAMPLE_INTERVAL`] from the start
    /// of the point, warm-up included, and once at its end.
    pub disk_usage: Vec<DiskSample>,
    /// Whether the writes were split by the target's snapshot activity, so that
    /// [`PointStats::write_during_snapshot`] is meaningful.
    pub snapshot_split: bool,
}

/// The share of a point that one load thread runs.
#[derive(Clone, Debug)]
struct ThreadPlan {
    thread: usize,
    threads: usize,
    point: usize,
    level: LoadLevel,
    /// Global ids of this thread's clients (closed loop) or slots (open loop).
    clients: Vec<u64>,
    /// Session indexes of this thread's connections.
    connections: Vec<usize>,
}

/// The instants that frame a point, and what ends it.
#[derive(Clone, Debug)]
struct Window {
    measure_from: Instant,
    end: Ending,
}

#[derive(Clone, Debug)]
enum Ending {
    /// Operations that start before this instant run.
    At(Instant),
    /// Measured operations draw tickets until `count` are taken.
    Tickets { taken: Arc<AtomicU64>, count: u64 },
}

impl Window {
    fn new(origin: Instant, workload: &Workload, tickets: &Arc<AtomicU64>) -> Window {
        let measure_from = origin + workload.warmup();
        let end = match workload.length {
            RunLength::Duration { secs } => {
                Ending::At(measure_from + Duration::from_secs_f64(secs))
            }
            RunLength::Operations { count } => Ending::Tickets {
                taken: Arc::clone(tickets),
                count,
            },
        };
        Window { measure_from, end }
    }

    /// Returns the instant the point ends, when a duration bounds it.
    fn end_at(&self) -> Option<Instant> {
        match &self.end {
            Ending::At(end) => Some(*end),
            Ending::Tickets { .. } => None,
        }
    }

    /// Decides whether an operation that starts at `start` runs: `None` when the point is over,
    /// otherwise whether it is measured.
    fn admit(&self, start: Instant) -> Option<bool> {
        if start < self.measure_from {
            return Some(false);
        }
        match &self.end {
            Ending::At(end) => (start < *end).then_some(true),
            Ending::Tickets { taken, count } => {
                (taken.fetch_add(1, Ordering::Relaxed) < *count).then_some(true)
            }
        }
    }
}

/// The open-loop schedule of one thread: the thread's share of the point's operations,
/// interleaved with the other threads' shares so that the whole point is evenly spaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    origin: Instant,
    rate_per_sec: f64,
    thread: u64,
    threads: u64,
}

impl Schedule {
    /// Builds the schedule of `thread` of `threads` for `rate_per_sec` operations per second in
    /// all, starting at `origin`.
    pub fn new(origin: Instant, rate_per_sec: f64, thread: usize, threads: usize) -> Schedule {
        Schedule {
            origin,
            rate_per_sec,
            thread: thread as u64,
            threads: threads.max(1) as u64,
        }
    }

    /// Returns the intended start of this thread's operation `n` (0-based): operation
    /// `n * threads + thread` of the point, due at that count divided by the rate.
    pub fn intended_start(&self, n: u64) -> Instant {
        let global = n.saturating_mul(self.threads).saturating_add(self.thread);
        let offset_secs = global as f64 / self.rate_per_sec;
        self.origin + Duration::from_secs_f64(offset_secs.min(1e9))
    }
}

/// The sink of one thread's completions.
#[derive(Debug)]
struct Recorder {
    stats: SharedStats,
    /// The thread's operations for the history; `None` without `--check`.
    ///
    /// NOTE: the history grows by about 100 bytes per operation for the whole point, so a
    /// long `--check` run at a high rate needs memory in proportion.
    history: Option<RefCell<Vec<RecordedOperation>>>,
    value_bytes: usize,
    snapshot_probe: Option<SnapshotProbe>,
}

/// The timing of one completed operation.
#[derive(Clone, Copy, Debug)]
struct Timing {
    intended: Instant,
    started: Instant,
    ended: Instant,
    /// The target's snapshot activity when the operation started, when it can be read.
    snapshots_at_start: Option<SnapshotActivityMark>,
}

impl Recorder {
    fn snapshot_mark(&self) -> Option<SnapshotActivityMark> {
        self.snapshot_probe.as_ref().map(SnapshotProbe::read)
    }

    fn record(
        &self,
        operation: &PlannedOperation,
        process: u64,
        timing: Timing,
        measured: bool,
        result: &Result<Response, RequestError>,
    ) {
        let outcome = outcome_of(operation, result, self.value_bytes);
        if measured {
            let during_snapshot = matches!(operation.request, Request::Put { .. })
                && timing
                    .snapshots_at_start
                    .zip(self.snapshot_mark())
                    .is_some_and(|(start, end)| start.overlaps(end));
            let mut stats = lock(&self.stats);
            let kind = match operation.request {
                Request::Put { .. } => &mut stats.write,
                Request::Get { .. } => &mut stats.read,
            };
            kind.count(&outcome, timing);
            if during_snapshot {
                stats.write_during_snapshot.count(&outcome, timing);
            }
            stats.last_completion = stats.last_completion.max(Some(timing.ended));
        }
        if let Some(history) = &self.history {
            let recorded = recorded_operation(operation, process, timing, outcome);
            history.borrow_mut().extend(recorded);
        }
    }

    fn count_late(&self, measured: bool) {
        if measured {
            lock(&self.stats).late += 1;
        }
    }
}

/// Classifies how `result` completes `operation`. A reply of the wrong kind (a value for a put, a
/// write acknowledgement for a read) cannot be trusted, so it counts as unknown.
fn outcome_of(
    operation: &PlannedOperation,
    result: &Result<Response, RequestError>,
    value_bytes: usize,
) -> RecordedOutcome {
    match (&operation.request, result) {
        (Request::Put { .. }, Ok(Response::Written)) => RecordedOutcome::Written,
        (Request::Get { .. }, Ok(Response::Value(value))) => RecordedOutcome::Read(
            value
                .as_ref()
                .map(|value| super::workload::tag_of_value(value, value_bytes)),
        ),
        (_, Ok(_)) => RecordedOutcome::Indeterminate,
        (_, Err(RequestError::Refused(_))) => RecordedOutcome::Refused,
        (_, Err(RequestError::Indeterminate(_))) => RecordedOutcome::Indeterminate,
    }
}

/// Builds the history entry of one operation. Stale reads are left out: they may miss recent
/// writes by design, so they are not held to linearizability.
fn recorded_operation(
    operation: &PlannedOperation,
    process: u64,
    timing: Timing,
    outcome: RecordedOutcome,
) -> Option<RecordedOperation> {
    let call = match (&operation.request, &operation.tag) {
        (Request::Put { .. }, Some(tag)) => RecordedCall::Write { tag: tag.clone() },
        (
            Request::Get {
                mode: ReadMode::Linearizable,
                ..
            },
            _,
        ) => RecordedCall::Read,
        _ => return None,
    };
    Some(RecordedOperation {
        process,
        key: operation.key.clone(),
        call,
        started: timing.started,
        ended: timing.ended,
        outcome,
    })
}

/// Runs point `point` at `level` against `target`, showing live progress on `progress`.
///
/// # Errors
///
/// When an executor cannot start, a session cannot be opened, or the counters cannot be
/// read. Failed requests are counted, not errors.
pub fn run_point<T>(
    target: &Arc<T>,
    counters: &dyn ServerCounters,
    workload: &Arc<Workload>,
    point: usize,
    level: LoadLevel,
    progress: &mut Progress,
) -> anyhow::Result<PointMeasurement>
where
    T: Target + Send + Sync + 'static,
{
    let plans = thread_plans(workload, point, level);
    let threads = plans.len();
    let stats: Vec<SharedStats> = plans.iter().map(|_| SharedStats::default()).collect();
    let tickets = Arc::new(AtomicU64::new(0));
    let snapshot_probe = counters.snapshot_probe();
    let (ready_sender, ready) = flume::unbounded();
    let (done_sender, done) = flume::unbounded();
    let mut go_senders = Vec::with_capacity(threads);
    let mut executors = Vec::with_capacity(threads);
    for (plan, stats) in plans.into_iter().zip(&stats) {
        let (go_sender, go) = flume::bounded(1);
        go_senders.push(go_sender);
        let context = ThreadContext {
            target: Arc::clone(target),
            workload: Arc::clone(workload),
            plan,
            stats: Arc::clone(stats),
            snapshot_probe: snapshot_probe.clone(),
            tickets: Arc::clone(&tickets),
            ready: ready_sender.clone(),
            go,
            done: DoneSignal(done_sender.clone()),
        };
        let executor = glommio::LocalExecutorBuilder::default()
            .name(&format!("bench-load-{}", context.plan.thread))
            .spawn(move || async move {
                shardraft::wake_guard::spawn_wake_guard().detach();
                load_thread(context).await
            })
            .map_err(std::io::Error::from)
            .context("starting a load executor failed")?;
        executors.push(executor);
    }
    drop((ready_sender, done_sender));

    let opened = wait_until_ready(&ready, threads);
    let origin = Instant::now();
    for go in &go_senders {
        let _ = go.send(opened.as_ref().ok().map(|_| origin));
    }
    let sessions = match opened {
        Ok(sessions) => sessions,
        Err(error) => {
            // The threads stop without running; the error that stopped them comes first.
            let _ = join_all(executors);
            return Err(error);
        }
    };

    let window = Window::new(origin, workload, &tickets);
    let watched = watch_point(
        counters, workload, &window, &done, threads, &stats, progress,
    );
    let history = join_all(executors)?;
    let (counters, disk_usage) = watched?;

    let mut total = PointStats::default();
    for stats in &stats {
        total.add(&lock(stats));
    }
    let elapsed = match window.end {
        Ending::At(end) => end - window.measure_from,
        Ending::Tickets { .. } => total.last_completion.map_or(Duration::ZERO, |last| {
            last.saturating_duration_since(window.measure_from)
        }),
    };
    Ok(PointMeasurement {
        stats: total,
        elapsed,
        counters,
        history,
        load_threads: threads,
        sessions,
        disk_usage,
        snapshot_split: snapshot_probe.is_some(),
    })
}

/// Splits a point's clients and connections over its threads: client `c` and connection
/// `j` go to thread `c % threads` and `j % threads`.
fn thread_plans(workload: &Workload, point: usize, level: LoadLevel) -> Vec<ThreadPlan> {
    let threads = workload
        .load_threads
        .min(level.clients)
        .min(workload.connections)
        .max(1);
    (0..threads)
        .map(|thread| ThreadPlan {
            thread,
            threads,
            point,
            level,
            clients: (thread..level.clients)
                .step_by(threads)
                .map(|client| client as u64)
                .collect(),
            connections: (thread..workload.connections).step_by(threads).collect(),
        })
        .collect()
}

/// Waits for every thread's report that its sessions are open; returns the sessions
/// opened in all, or the first thread's error.
fn wait_until_ready(
    ready: &flume::Receiver<anyhow::Result<usize>>,
    threads: usize,
) -> anyhow::Result<usize> {
    let mut sessions = 0;
    let mut first_error = None;
    for _ in 0..threads {
        match ready.recv() {
            Ok(Ok(opened)) => sessions += opened,
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(_) => {
                first_error.get_or_insert(anyhow::anyhow!(
                    "a load thread stopped before it opened its sessions"
                ));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(sessions),
    }
}

/// Refreshes the progress display until every thread is done, samples the counters at the
/// start and end of the measured part, and the bytes on disk every
/// [`DISK_SAMPLE_INTERVAL`]; returns the counters' growth and the disk samples.
fn watch_point(
    counters: &dyn ServerCounters,
    workload: &Workload,
    window: &Window,
    done: &flume::Receiver<()>,
    threads: usize,
    stats: &[SharedStats],
    progress: &mut Progress,
) -> anyhow::Result<(CounterSample, Vec<DiskSample>)> {
    let measure_end = match window.end {
        Ending::At(end) => Some(end),
        Ending::Tickets { .. } => None,
    };
    let mut before = None;
    let mut after = None;
    let mut finished = 0;
    let mut disk_usage = Vec::new();
    let mut next_disk_sample = Instant::now();
    let sample_disk = |disk_usage: &mut Vec<DiskSample>, now: Instant| -> anyhow::Result<()> {
        if let Some(bytes) = counters.disk_bytes()? {
            let elapsed_secs = if now >= window.measure_from {
                now.duration_since(window.measure_from).as_secs_f64()
            } else {
                -window.measure_from.duration_since(now).as_secs_f64()
            };
            disk_usage.push(DiskSample {
                elapsed_secs,
                bytes,
            });
        }
        Ok(())
    };
    while finished < threads {
        let now = Instant::now();
        if before.is_none() && now >= window.measure_from {
            before = Some(counters.sample()?);
        }
        if after.is_none() && measure_end.is_some_and(|end| now >= end) {
            after = Some(counters.sample()?);
        }
        if now >= next_disk_sample {
            sample_disk(&mut disk_usage, now)?;
            next_disk_sample = now + DISK_SAMPLE_INTERVAL;
        }
        progress.update(|| snapshot(workload, window, stats, now));

        let mut wake = (now + progress.interval()).min(next_disk_sample);
        if before.is_none() {
            wake = wake.min(window.measure_from);
        }
        if let (true, Some(end)) = (after.is_none(), measure_end) {
            wake = wake.min(end);
        }
        match done.recv_deadline(wake) {
            Ok(()) => finished += 1,
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
    }
    progress.clear();
    let before = match before {
        Some(sample) => sample,
        // The point ended within its warm-up, which only an operation count reaches.
        None => counters.sample()?,
    };
    let after = match after {
        Some(sample) => sample,
        None => counters.sample()?,
    };
    sample_disk(&mut disk_usage, Instant::now())?;
    Ok((after.since(&before), disk_usage))
}

fn snapshot(
    workload: &Workload,
    window: &Window,
    stats: &[SharedStats],
    now: Instant,
) -> ProgressSnapshot {
    let mut total = PointStats::default();
    for stats in stats {
        total.add(&lock(stats));
    }
    let mut latency_nanos = total.write.latency_nanos.clone();
    let _ = latency_nanos.add(&total.read.latency_nanos);
    ProgressSnapshot {
        warmup_left: window.measure_from.saturating_duration_since(now),
        measured: now.saturating_duration_since(window.measure_from),
        length: workload.length,
        ok: total.write.ok + total.read.ok,
        errors: total.write.errors() + total.read.errors(),
        late: total.late,
        p99_nanos: (!latency_nanos.is_empty()).then(|| latency_nanos.value_at_quantile(0.99)),
    }
}

/// Joins the executors; returns their histories, in thread order, or the first failure.
fn join_all(
    executors: Vec<glommio::ExecutorJoinHandle<anyhow::Result<Vec<RecordedOperation>>>>,
) -> anyhow::Result<Vec<RecordedOperation>> {
    let mut history = Vec::new();
    let mut first_error = None;
    for executor in executors {
        match executor.join() {
            Ok(Ok(operations)) => history.extend(operations),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(anyhow::anyhow!("a load executor failed: {error}"));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(history),
    }
}

/// Tells the point's watcher that a thread is done, when the thread ends in any way.
struct DoneSignal(flume::Sender<()>);

impl Drop for DoneSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Everything a load thread takes with it.
struct ThreadContext<T> {
    target: Arc<T>,
    workload: Arc<Workload>,
    plan: ThreadPlan,
    stats: SharedStats,
    snapshot_probe: Option<SnapshotProbe>,
    tickets: Arc<AtomicU64>,
    ready: flume::Sender<anyhow::Result<usize>>,
    go: flume::Receiver<Option<Instant>>,
    done: DoneSignal,
}

/// Runs one load thread: opens the sessions, waits for the start, runs the clients.
async fn load_thread<T>(context: ThreadContext<T>) -> anyhow::Result<Vec<RecordedOperation>>
where
    T: Target + Send + Sync + 'static,
{
    let ThreadContext {
        target,
        workload,
        plan,
        stats,
        snapshot_probe,
        tickets,
        ready,
        go,
        done,
    } = context;
    let sessions = match open_sessions(&*target, &plan).await {
        Ok(sessions) => {
            let _ = ready.send(Ok(sessions.len()));
            sessions
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return Ok(Vec::new());
        }
    };
    let Ok(Some(origin)) = go.recv_async().await else {
        return Ok(Vec::new());
    };

    let recorder = Rc::new(Recorder {
        stats,
        history: workload.checks().then(|| RefCell::new(Vec::new())),
        value_bytes: workload.value_bytes,
        snapshot_probe,
    });
    let window = Window::new(origin, &workload, &tickets);
    let keys = KeyChooser::new(&workload)?;
    match plan.level.rate_per_sec {
        None => {
            let clients = ClosedLoop {
                workload: &workload,
                plan: &plan,
                sessions: &sessions,
                keys: &keys,
                origin,
            };
            run_closed_loop(clients, &window, &recorder).await?;
        }
        Some(rate) => {
            let schedule = Schedule::new(origin, rate, plan.thread, plan.threads);
            let generator =
                OperationGenerator::new(&workload, keys, plan.point, writer_of_thread(&plan));
            run_open_loop(&plan, &sessions, generator, schedule, &window, &recorder).await?;
        }
    }
    drop(done);
    let history = Rc::try_unwrap(recorder)
        .ok()
        .and_then(|recorder| recorder.history)
        .map(RefCell::into_inner)
        .unwrap_or_default();
    Ok(history)
}

/// The writer id of an open-loop thread's generator: above every client id, so that
/// value tags stay unique.
fn writer_of_thread(plan: &ThreadPlan) -> u64 {
    plan.level.clients as u64 + plan.thread as u64
}

/// Opens the thread's sessions: one per connection when the target multiplexes, otherwise
/// one per client of the thread (session index = client id).
async fn open_sessions<T: Target>(
    target: &T,
    plan: &ThreadPlan,
) -> anyhow::Result<Vec<Rc<T::Session>>> {
    let mut sessions = Vec::new();
    for &index in &plan.connections {
        let session = target.open_session(index).await?;
        if !session.multiplexes() {
            drop(session);
            return open_per_client(target, plan).await;
        }
        sessions.push(Rc::new(session));
    }
    Ok(sessions)
}

async fn open_per_client<T: Target>(
    target: &T,
    plan: &ThreadPlan,
) -> anyhow::Result<Vec<Rc<T::Session>>> {
    let mut sessions = Vec::with_capacity(plan.clients.len());
    for &client in &plan.clients {
        let session = target.open_session(client as usize).await?;
        sessions.push(Rc::new(session));
    }
    Ok(sessions)
}

/// Picks the session of the thread's `local`-th client or slot.
fn session_for<S>(sessions: &[Rc<S>], local: usize) -> Rc<S> {
    Rc::clone(&sessions[local % sessions.len()])
}

/// What the closed-loop clients of one thread share.
struct ClosedLoop<'a, S> {
    workload: &'a Workload,
    plan: &'a ThreadPlan,
    sessions: &'a [Rc<S>],
    keys: &'a KeyChooser,
    /// The point's start, from which bursts count their periods.
    origin: Instant,
}

async fn run_closed_loop<S: Session + 'static>(
    clients: ClosedLoop<'_, S>,
    window: &Window,
    recorder: &Rc<Recorder>,
) -> anyhow::Result<()> {
    let ClosedLoop {
        workload,
        plan,
        sessions,
        keys,
        origin,
    } = clients;
    let mut tasks = Vec::with_capacity(plan.clients.len());
    for (local, &client) in plan.clients.iter().enumerate() {
        let session = session_for(sessions, local);
        let generator = OperationGenerator::new(workload, keys.clone(), plan.point, client);
        let window = window.clone();
        let recorder = Rc::clone(recorder);
        let pacing = Pacing {
            origin,
            burst: plan.level.burst,
        };
        tasks.push(glommio::spawn_local(closed_loop_client(
            session, generator, client, window, recorder, pacing,
        )));
    }
    for task in tasks {
        task.await;
    }
    Ok(())
}

/// When a closed-loop client may run: always, or only in the busy halves of a burst.
#[derive(Clone, Copy)]
struct Pacing {
    origin: Instant,
    burst: Option<Burst>,
}

async fn closed_loop_client<S: Session>(
    session: Rc<S>,
    mut generator: OperationGenerator,
    process: u64,
    window: Window,
    recorder: Rc<Recorder>,
    pacing: Pacing,
) {
    loop {
        if let Some(burst) = pacing.burst {
            let elapsed = pacing.origin.elapsed();
            if let Some(resume) = burst.pause_until(process, elapsed) {
                // A pause never outlasts the point.
                let wake = window.end_at().map_or(pacing.origin + resume, |end| {
                    end.min(pacing.origin + resume)
                });
                glommio::timer::sleep(wake.saturating_duration_since(Instant::now())).await;
            }
        }
        let operation = generator.next_operation();
        let started = Instant::now();
        let Some(measured) = window.admit(started) else {
            return;
        };
        let snapshots_at_start = recorder.snapshot_mark();
        let result = session.execute(&operation.request).await;
        let timing = Timing {
            intended: started,
            started,
            ended: Instant::now(),
            snapshots_at_start,
        };
        recorder.record(&operation, process, timing, measured, &result);
    }
}

async fn run_open_loop<S: Session + 'static>(
    plan: &ThreadPlan,
    sessions: &[Rc<S>],
    mut generator: OperationGenerator,
    schedule: Schedule,
    window: &Window,
    recorder: &Rc<Recorder>,
) -> anyhow::Result<()> {
    let slots = plan.clients.len();
    let pool = Rc::new(glommio::sync::Semaphore::new(slots as u64));
    // Positions in `plan.clients` of the idle slots.
    let idle = Rc::new(RefCell::new((0..slots).rev().collect::<Vec<usize>>()));
    for n in 0.. {
        let intended = schedule.intended_start(n);
        let Some(measured) = window.admit(intended) else {
            break;
        };
        let now = Instant::now();
        if intended > now {
            glommio::timer::sleep(intended - now).await;
        }
        let permit = match pool.try_acquire_static_permit(1) {
            Ok(permit) => permit,
            Err(_) => {
                recorder.count_late(measured);
                pool.acquire_static_permit(1)
                    .await
                    .map_err(|error| anyhow::anyhow!("the open-loop slot pool failed: {error}"))?
            }
        };
        // A permit guarantees an idle slot: each slot returns to `idle` before its permit
        // is released.
        let Some(slot) = idle.borrow_mut().pop() else {
            anyhow::bail!("the open-loop slot pool lost track of its idle slots");
        };
        let operation = generator.next_operation();
        let session = session_for(sessions, slot);
        let process = plan.clients[slot];
        let recorder = Rc::clone(recorder);
        let idle = Rc::clone(&idle);
        glommio::spawn_local(async move {
            let started = Instant::now();
            let snapshots_at_start = recorder.snapshot_mark();
            let result = session.execute(&operation.request).await;
            let timing = Timing {
                intended,
                started,
                ended: Instant::now(),
                snapshots_at_start,
            };
            recorder.record(&operation, process, timing, measured, &result);
            idle.borrow_mut().push(slot);
            drop(permit);
        })
        .detach();
    }
    pool.acquire(slots as u64)
        .await
        .map_err(|error| anyhow::anyhow!("waiting for the open-loop slots failed: {error}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::harness::progress::ProgressStyle;
    use crate::harness::target::TargetFacts;
    use crate::harness::workload::RunArgs;
    use clap::Parser;

    /// A target whose first `stalled` requests each take `stall`, and the rest `service`.
    #[derive(Debug)]
    struct StallingTarget {
        stalled: usize,
        stall: Duration,
        service: Duration,
        served: Arc<AtomicUsize>,
        /// Whether sessions serve concurrent requests.
        multiplexes: bool,
        /// Sessions opened so far.
        opened: Arc<AtomicUsize>,
    }

    impl StallingTarget {
        fn new(stalled: usize, stall: Duration, service: Duration) -> StallingTarget {
            StallingTarget {
                stalled,
                stall,
                service,
                served: Arc::new(AtomicUsize::new(0)),
                multiplexes: true,
                opened: Arc::new(AtomicUsize::new(0)),
            }
        }
    }

    #[derive(Debug)]
    struct StallingSession {
        stalled: usize,
        stall: Duration,
        service: Duration,
        served: Arc<AtomicUsize>,
        multiplexes: bool,
    }

    impl Target for StallingTarget {
        type Session = StallingSession;

        async fn open_session(&self, _index: usize) -> anyhow::Result<StallingSession> {
            self.opened.fetch_add(1, Ordering::Relaxed);
            Ok(StallingSession {
                stalled: self.stalled,
                stall: self.stall,
                service: self.service,
                served: Arc::clone(&self.served),
                multiplexes: self.multiplexes,
            })
        }

        fn facts(&self) -> TargetFacts {
            TargetFacts {
                kind: "test".to_string(),
                system: "test".to_string(),
                durability: "none".to_string(),
                reached_through: "function calls".to_string(),
            }
        }
    }

    impl Session for StallingSession {
        async fn execute(&self, _request: &Request) -> Result<Response, RequestError> {
            let pause = if self.served.fetch_add(1, Ordering::Relaxed) < self.stalled {
                self.stall
            } else {
                self.service
            };
            if !pause.is_zero() {
                glommio::timer::sleep(pause).await;
            }
            Ok(Response::Written)
        }

        fn multiplexes(&self) -> bool {
            self.multiplexes
        }
    }

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn workload(args: &[&str]) -> Arc<Workload> {
        let mut argv = vec!["shardraft-bench", "--target", "endpoints"];
        argv.extend_from_slice(&["--endpoints", "127.0.0.1:1", "--no-progress"]);
        argv.extend_from_slice(args);
        let cli = TestCli::try_parse_from(argv).unwrap();
        Arc::new(cli.run.validate_for_cpus(2).unwrap())
    }

    fn run(workload: &Arc<Workload>, target: StallingTarget) -> PointMeasurement {
        let target = Arc::new(target);
        let mut progress = Progress::new(ProgressStyle::Off, String::new());
        let level = workload.points[0];
        run_point(&target, &NoCounters, workload, 0, level, &mut progress).unwrap()
    }

    #[test]
    fn schedule_spaces_operations_evenly_across_threads() {
        let origin = Instant::now();
        let first = Schedule::new(origin, 1000.0, 0, 2);
        let second = Schedule::new(origin, 1000.0, 1, 2);

        assert_eq!(first.intended_start(0), origin);
        assert_eq!(second.intended_start(0), origin + Duration::from_millis(1));
        assert_eq!(first.intended_start(1), origin + Duration::from_millis(2));
        assert_eq!(second.intended_start(5), origin + Duration::from_millis(11));
    }

    #[test]
    fn open_loop_counts_late_operations_and_skips_none() {
        let workload = workload(&[
            "--rate",
            "1000",
            "--clients",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--load-threads",
            "1",
        ]);
        // Service takes 1 ms, so two slots serve 2000/s once the stall is over.
        let target = StallingTarget::new(2, Duration::from_millis(50), Duration::from_millis(1));
        let served = Arc::clone(&target.served);

        let measurement = run(&workload, target);

        // 0.3 s at 1000/s: operations 0 to 299 are due within the window, and all run.
        assert_eq!(measurement.stats.write.ok, 300);
        assert_eq!(served.load(Ordering::Relaxed), 300);
        // Both slots stall for 50 ms at the start, so the operations due meanwhile are late.
        assert!(
            measurement.stats.late >= 40,
            "late {}",
            measurement.stats.late
        );
        assert!(
            measurement.stats.late < 300,
            "late {}",
            measurement.stats.late
        );
        // The operations queued behind the stall keep their intended start, so the
        // latency of the worst of them covers the stall.
        let latency = &measurement.stats.write.latency_nanos;
        assert!(latency.max() >= 45_000_000, "max {} ns", latency.max());
        let delayed = latency.count_between(10_000_000, latency.max());
        assert!(delayed >= 30, "{delayed} operations took 10 ms or more");
        assert_eq!(measurement.elapsed, Duration::from_millis(300));
    }

    #[test]
    fn open_loop_without_stalls_is_never_late() {
        let workload = workload(&[
            "--rate",
            "2000",
            "--clients",
            "8",
            "--duration",
            "0.2",
            "--warmup",
            "0",
        ]);
        let target = StallingTarget::new(0, Duration::ZERO, Duration::ZERO);

        let measurement = run(&workload, target);

        assert_eq!(measurement.stats.write.ok, 400);
        assert_eq!(measurement.stats.late, 0);
    }

    #[test]
    fn closed_loop_stops_at_the_operation_count() {
        let workload = workload(&[
            "--clients",
            "4",
            "--operations",
            "500",
            "--warmup",
            "0",
            "--check",
        ]);
        let target = StallingTarget::new(0, Duration::ZERO, Duration::ZERO);

        let measurement = run(&workload, target);

        assert_eq!(measurement.stats.write.ok, 500);
        assert_eq!(measurement.stats.late, 0);
        assert_eq!(measurement.history.len(), 500);
        assert!(measurement.elapsed > Duration::ZERO);
    }

    #[test]
    fn warmup_operations_are_not_measured() {
        let workload = workload(&[
            "--clients",
            "1",
            "--operations",
            "10",
            "--warmup",
            "0.05",
            "--check",
        ]);
        let target = StallingTarget::new(5, Duration::from_millis(20), Duration::ZERO);
        let served = Arc::clone(&target.served);

        let measurement = run(&workload, target);

        assert_eq!(measurement.stats.write.ok, 10);
        let total = served.load(Ordering::Relaxed);
        assert!(total > 10, "{total} requests served");
        // The history covers the warm-up too, because later reads may observe its writes.
        assert_eq!(measurement.history.len(), total);
    }

    #[test]
    fn single_request_sessions_get_one_per_client() {
        let workload = workload(&["--clients", "5", "--operations", "50", "--warmup", "0"]);
        let mut target = StallingTarget::new(0, Duration::ZERO, Duration::ZERO);
        target.multiplexes = false;
        let opened = Arc::clone(&target.opened);

        let measurement = run(&workload, target);

        assert_eq!(measurement.sessions, 5);
        // The first session, opened for the connection, showed that it serves one request
        // at a time and was replaced.
        assert_eq!(opened.load(Ordering::Relaxed), 6);
        assert_eq!(measurement.stats.write.ok, 50);
    }

    #[test]
    fn multiplexed_sessions_follow_connections() {
        let workload = workload(&[
            "--clients",
            "8",
            "--connections",
            "2",
            "--load-threads",
            "2",
            "--operations",
            "40",
            "--warmup",
            "0",
        ]);
        let target = StallingTarget::new(0, Duration::ZERO, Duration::ZERO);

        let measurement = run(&workload, target);

        assert_eq!(measurement.sessions, 2);
        assert_eq!(measurement.load_threads, 2);
        assert_eq!(measurement.stats.write.ok, 40);
    }

    #[test]
    fn counter_growth_skips_missing_counters() {
        let before = CounterSample {
            cpu: Some(Duration::from_secs(1)),
            fdatasyncs: Some(10),
            log_entries: None,
            write_stages: Some(vec![stage_sample(&[(0, 2), (3, 1)], 10_000)]),
            snapshots: Some(SnapshotCounters {
                taken: 2,
                creation_nanos: 5_000,
                installed_bytes: 100,
                ..SnapshotCounters::default()
            }),
            elections: Some(4),
        };
        let after = CounterSample {
            cpu: Some(Duration::from_secs(3)),
            fdatasyncs: Some(25),
            log_entries: Some(7),
            write_stages: Some(vec![stage_sample(&[(0, 5), (3, 1)], 13_000)]),
            snapshots: Some(SnapshotCounters {
                taken: 5,
                creation_nanos: 9_000,
                installed_bytes: 100,
                ..SnapshotCounters::default()
            }),
            elections: Some(6),
        };

        let growth = after.since(&before);

        assert_eq!(growth.elections, Some(2));

        assert_eq!(growth.cpu, Some(Duration::from_secs(2)));
        assert_eq!(growth.fdatasyncs, Some(15));
        assert_eq!(growth.log_entries, None);
        assert_eq!(
            growth.write_stages,
            Some(vec![stage_sample(&[(0, 3)], 3_000)])
        );
        let snapshots = growth.snapshots.unwrap();
        assert_eq!(snapshots.taken, 3);
        assert_eq!(snapshots.creation_nanos, 4_000);
        assert_eq!(snapshots.installed_bytes, 0);
    }

    /// Counters whose snapshot probe shows one snapshot, in progress until the target has
    /// taken `requests` requests. The snapshot ends at the `requests`-th call to `execute`,
    /// an event of the run rather than a wall-clock instant.
    struct SnapshotUntilServed {
        served: Arc<AtomicUsize>,
        requests: usize,
    }

    impl ServerCounters for SnapshotUntilServed {
        fn sample(&self) -> anyhow::Result<CounterSample> {
            Ok(CounterSample::default())
        }

        fn cpu_scope(&self) -> &'static str {
            "none"
        }

        fn snapshot_probe(&self) -> Option<SnapshotProbe> {
            let served = Arc::clone(&self.served);
            let requests = self.requests;
            Some(SnapshotProbe::new(move || SnapshotActivityMark {
                begun: 1,
                ended: u64::from(served.load(Ordering::Relaxed) >= requests),
            }))
        }
    }

    #[test]
    fn writes_during_a_snapshot_are_split_out() {
        const STALL: Duration = Duration::from_millis(60);
        let workload = workload(&[
            "--clients",
            "2",
            "--operations",
            "40",
            "--warmup",
            "0",
            "--load-threads",
            "1",
        ]);
        // The first two requests stall, and the snapshot ends when the target takes the
        // second of them. On one load thread, a client reads the start mark and calls
        // `execute` in one poll with no await between, so no other request can reach the
        // target in between. Exactly the two stalled writes therefore start while the
        // snapshot is in progress, however the threads are scheduled.
        let target = Arc::new(StallingTarget::new(2, STALL, Duration::ZERO));
        let counters = SnapshotUntilServed {
            served: Arc::clone(&target.served),
            requests: 2,
        };
        let mut progress = Progress::new(ProgressStyle::Off, String::new());
        let level = workload.points[0];

        let measurement =
            run_point(&target, &counters, &workload, 0, level, &mut progress).unwrap();

        let stats = &measurement.stats;
        assert!(measurement.snapshot_split);
        assert_eq!(stats.write.ok, 40);
        assert_eq!(stats.write_during_snapshot.ok, 2);
        // A glommio 0.9 timer is ready only once `Instant::now()` reaches its deadline, so
        // each stalled write took at least `STALL`. The histogram keeps 3 significant
        // digits, and `min` returns the lowest value in the bucket of the smallest recorded
        // value. That can be below `STALL` itself (a 60.02 ms write reads as 59.998 ms), so
        // the bound is the lowest value in `STALL`'s bucket.
        let during = &stats.write_during_snapshot.latency_nanos;
        let stall_nanos = u64::try_from(STALL.as_nanos()).unwrap();
        assert!(
            during.min() >= during.lowest_equivalent(stall_nanos),
            "min {} ns",
            during.min()
        );
        let mut outside = stats.write.latency_nanos.clone();
        outside.subtract(during).unwrap();
        assert_eq!(outside.len(), 38);
    }

    fn stage_sample(counts: &[(usize, u64)], sum_nanos: u64) -> StageSample {
        let mut bucket_counts = [0; shardraft::metrics::STAGE_BUCKETS + 1];
        for &(bucket, count) in counts {
            bucket_counts[bucket] = count;
        }
        StageSample {
            stage: "queued".to_string(),
            bucket_counts,
            sum_nanos,
        }
    }
}
