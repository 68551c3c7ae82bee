//! Closed-loop appenders against a [`DiskLog`] on one glommio executor.
//!
//! Each appender is a task of the executor that owns the log and writes to a group of its
//! own: it submits a [`WriteBatch`] with the next entries of that group, waits until the
//! log reports the batch durable, records how long that took and starts over. While the
//! log's flusher writes and syncs one batch, the appenders' next submissions gather in the
//! batch after it, so the number of appenders sets how many entries share one fdatasync.
//!
//! Appenders can compact their group every so many entries or payload bytes, as a Raft node
//! does once its state machine has a snapshot. Without that, every group's in-memory log
//! grows for the whole run, and since the appenders advance in step, all groups outgrow
//! their capacity in the same round and reallocate together. Compaction also decides what
//! the disk writes: once every group compacted past a segment, the log recycles its file
//! for a later rotation, as it does in any long run. While the log only grows, each rotation
//! zero-fills a new file first, which writes as many bytes again as the entries.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use shardraft::log::{BatchNumber, DiskLog, DiskLogStats, GroupId, LogStore, WriteBatch};
use shardraft::raft::{Entry, EntryKind, LogIndex, Term};

use super::payload::{PayloadKind, PayloadSource};
use super::{MIB, new_latency_histogram};

/// The shape of one load: how many appenders, and what each submits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LoadSpec {
    /// Payload bytes of each entry.
    pub entry_bytes: usize,
    pub appenders: usize,
    /// Entries in each submission, as a Raft leader's `Ready` carries several.
    pub entries_per_submit: usize,
    /// Entries each appender appends between compactions of its group through its last
    /// durable entry; 0 sets no limit by count.
    pub compact_every_entries: u64,
    /// Payload bytes each appender appends between compactions of its group; 0 sets no
    /// limit by size. The group compacts at whichever limit it reaches first, and never
    /// when both are 0.
    pub compact_every_bytes: u64,
    /// The bytes of each payload (see [`super::payload`]).
    pub payload: PayloadKind,
}

impl LoadSpec {
    /// Returns whether a group that appended `entries` entries of `payload_bytes` bytes in
    /// all since its last compaction compacts now.
    pub fn compacts_after(&self, entries: u64, payload_bytes: u64) -> bool {
        (self.compact_every_entries > 0 && entries >= self.compact_every_entries)
            || (self.compact_every_bytes > 0 && payload_bytes >= self.compact_every_bytes)
    }
}

/// Figures of a load over the time it was measured.
#[derive(Debug)]
pub struct LoadOutcome {
    /// Entries made durable.
    pub entries: u64,
    /// Write + fdatasync pairs the log completed.
    pub syncs: u64,
    /// Bytes the log wrote, headers, padding and checkpoints included.
    pub written_bytes: u64,
    pub elapsed: Duration,
    /// CPU time of the executor's thread, `None` where the platform does not report it.
    pub thread_cpu: Option<Duration>,
    /// Batch writes the log completed, and the time they took in total, from submission
    /// to completion as the log's task saw it.
    pub batches: u64,
    pub write_micros_total: u64,
    /// Time the fdatasyncs after batch writes took in total, as the log's task saw it.
    pub sync_micros_total: u64,
    /// Latency from `submit` to the durable report, in nanoseconds, one sample per
    /// submission.
    pub latency_nanos: Histogram<u64>,
    /// The unmeasured time before the measured part.
    pub warmup: Duration,
    /// Retired segments the log had reused since it opened, when the measured part began.
    pub segments_recycled_at_start: u64,
    /// Segments the log rotated to.
    pub rotations: u64,
    /// Segments the log created and, unless configured otherwise, zero-filled rather than
    /// reused, counted when their preparation started.
    pub segments_new: u64,
}

impl LoadOutcome {
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }

    /// Entry payload made durable per second, in MiB.
    pub fn payload_mib_per_sec(&self, entry_bytes: usize) -> f64 {
        (self.entries * entry_bytes as u64) as f64 / MIB / self.elapsed.as_secs_f64()
    }

    /// Mean time of one batch write as the log saw it, which includes the time until the
    /// executor noticed its completion; `None` without batches.
    pub fn write_micros_mean(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.write_micros_total as f64 / self.batches as f64)
    }

    /// Mean time of the fdatasync after a batch write as the log saw it; `None` without
    /// batches.
    pub fn sync_micros_mean(&self) -> Option<f64> {
        (self.batches > 0).then(|| self.sync_micros_total as f64 / self.batches as f64)
    }

    pub fn entries_per_sync(&self) -> f64 {
        self.entries as f64 / self.syncs.max(1) as f64
    }

    /// Mean bytes of one write, the size the device receives.
    pub fn write_bytes_mean(&self) -> f64 {
        self.written_bytes as f64 / self.syncs.max(1) as f64
    }

    /// CPU time of the executor's thread as a share of the wall time.
    pub fn thread_cpu_share(&self) -> Option<f64> {
        self.thread_cpu
            .map(|cpu| cpu.as_secs_f64() / self.elapsed.as_secs_f64())
    }
}

/// The length of an unmeasured start: at least `min`, and up to `max` while the log is not
/// yet as in a long run.
#[derive(Clone, Copy, Debug)]
pub struct Warmup {
    pub min: Duration,
    pub max: Duration,
}

impl Warmup {
    /// Returns a warm-up of exactly `duration`.
    pub fn fixed(duration: Duration) -> Warmup {
        Warmup {
            min: duration,
            max: duration,
        }
    }
}

/// How often a warm-up checks whether the log reached its steady state.
const STEADY_CHECK_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `spec` against `log` unmeasured for the `warmup`, then for `measure`, and reports
/// the measured part. Every append that started in that part counts in the latency, also
/// when it completes after it. Must run on the executor that owns `log`.
///
/// A fresh log zero-fills each new segment, which a long run with compaction does not: it
/// reuses retired segments instead. So once `warmup.min` passed, the warm-up goes on for at
/// most `warmup.max` while a segment is being prepared, and while a load that would rotate
/// within `measure` has not yet made as many rotations in a row onto reused segments as it
/// would make in `measure`. One reuse is not enough: groups compact in rounds, so the
/// number of live segments can still grow after the first, and a cell of 256 appenders of
/// 256-byte entries then created a new segment in its measured part.
/// [`LoadOutcome::segments_new`] reports the new segments that the measured part still
/// prepared.
///
/// # Errors
/// The first error the log returns to an appender.
pub async fn run_timed(
    log: &DiskLog,
    spec: LoadSpec,
    warmup: Warmup,
    measure: Duration,
) -> anyhow::Result<LoadOutcome> {
    let control = Rc::new(Control::new());
    let started = Instant::now();
    let mut reuse = ReuseRun::start(&log.stats());
    let tasks = spawn_appenders(log, spec, &control);
    // The write rate is taken over the second half of the minimum: the appenders start
    // slower than they run.
    glommio::timer::sleep(warmup.min / 2).await;
    let rate_start = Snapshot::take(log);
    glommio::timer::sleep(warmup.min - warmup.min / 2).await;
    while started.elapsed() < warmup.max
        && !reached_steady_state(log, &mut reuse, &rate_start, measure)
    {
        glommio::timer::sleep(STEADY_CHECK_INTERVAL).await;
    }

    let before = Snapshot::take(log);
    control.recording.set(true);
    glommio::timer::sleep(measure).await;
    let after = Snapshot::take(log);
    control.recording.set(false);
    control.stopping.set(true);

    join_appenders(tasks).await?;
    let mut outcome = after.since(
        &before,
        control.latency_nanos.replace(new_latency_histogram()),
    );
    outcome.warmup = before.at - started;
    Ok(outcome)
}

/// Headroom on the write rate measured in the warm-up when judging whether the active
/// segment lasts through the measured part, since the appenders may not yet run at full
/// rate. Over the whole 0.3 s minimum, a cell of 256 appenders wrote at half its later rate.
const RATE_HEADROOM: f64 = 1.5;

/// The rotations onto reused segments since the log last created a new one.
#[derive(Debug)]
struct ReuseRun {
    /// `segments_created` when last seen.
    created: u64,
    /// `segments_recycled` when `created` last changed, or at the start.
    recycled_at_mark: u64,
}

impl ReuseRun {
    fn start(stats: &DiskLogStats) -> ReuseRun {
        ReuseRun {
            created: stats.segments_created,
            recycled_at_mark: stats.segments_recycled,
        }
    }

    /// Returns the reuses in a row up to `stats`. A new segment restarts the count.
    fn observe(&mut self, stats: &DiskLogStats) -> u64 {
        if stats.segments_created != self.created {
            self.created = stats.segments_created;
            self.recycled_at_mark = stats.segments_recycled;
        }
        stats.segments_recycled - self.recycled_at_mark
    }
}

/// Returns whether `log` is as it would be in a long run. No segment preparation may run.
/// Then either the active segment lasts through `measure` at the rate the log wrote since
/// `rate_start`, or the log made as many rotations in a row onto reused segments as it
/// would make in `measure` at that rate. Before a write completes, the rate is unknown and
/// the log not steady.
fn reached_steady_state(
    log: &DiskLog,
    reuse: &mut ReuseRun,
    rate_start: &Snapshot,
    measure: Duration,
) -> bool {
    let stats = log.stats();
    let reuses_in_a_row = reuse.observe(&stats);
    let preparations_started = stats.segments_created + stats.segments_recycled;
    if stats.segments_prepared < preparations_started {
        return false;
    }
    let written_bytes = stats.bytes - rate_start.stats.bytes;
    if written_bytes == 0 {
        return false;
    }
    let bytes_per_sec = written_bytes as f64 / rate_start.at.elapsed().as_secs_f64();
    let bytes_in_measure = bytes_per_sec * measure.as_secs_f64() * RATE_HEADROOM;
    let free_bytes = log.active_segment_free_bytes() as f64;
    if bytes_in_measure < free_bytes {
        return true;
    }
    let rotations_in_measure =
        ((bytes_in_measure - free_bytes) / log.segment_bytes() as f64).ceil() as u64;
    reuses_in_a_row >= rotations_in_measure
}

/// Runs `spec` against `log` until `entries` more entries are durable and reports that
/// run. Each appender resumes its group at the group's next index, so calls can follow one
/// another on the same log. Must run on the executor that owns `log`.
///
/// # Errors
/// The first error the log returns to an appender.
pub async fn run_entries(
    log: &DiskLog,
    spec: LoadSpec,
    entries: u64,
) -> anyhow::Result<LoadOutcome> {
    let control = Rc::new(Control::new());
    control.entries_left.set(Some(entries));
    control.recording.set(true);
    let before = Snapshot::take(log);
    let tasks = spawn_appenders(log, spec, &control);
    join_appenders(tasks).await?;
    let after = Snapshot::take(log);
    Ok(after.since(
        &before,
        control.latency_nanos.replace(new_latency_histogram()),
    ))
}

/// State the driver shares with its appenders.
#[derive(Debug)]
struct Control {
    /// Whether appenders record the latency of the appends they start now.
    recording: Cell<bool>,
    /// Set once appenders should stop after their current append.
    stopping: Cell<bool>,
    /// Entries still to submit, when the run is bounded by a count rather than by time.
    entries_left: Cell<Option<u64>>,
    /// Latencies of every appender. One histogram for all, because a histogram of this range
    /// and precision takes over 200 KiB.
    latency_nanos: RefCell<Histogram<u64>>,
}

impl Control {
    fn new() -> Control {
        Control {
            recording: Cell::new(false),
            stopping: Cell::new(false),
            entries_left: Cell::new(None),
            latency_nanos: RefCell::new(new_latency_histogram()),
        }
    }

    /// Entries for the next submission, or `None` once the run is over.
    fn take_entries(&self, entries_per_submit: u64) -> Option<u64> {
        if self.stopping.get() {
            return None;
        }
        match self.entries_left.get() {
            None => Some(entries_per_submit),
            Some(0) => None,
            Some(left) => {
                let count = left.min(entries_per_submit);
                self.entries_left.set(Some(left - count));
                Some(count)
            }
        }
    }
}

type AppenderTask = glommio::Task<anyhow::Result<()>>;

fn spawn_appenders(log: &DiskLog, spec: LoadSpec, control: &Rc<Control>) -> Vec<AppenderTask> {
    // Payloads are slices of one shared pool: each entry is a reference, as a real payload
    // is shared between the log, the replication messages and the state machine.
    let payloads = PayloadSource::new(spec.payload, spec.entry_bytes);
    (0..spec.appenders)
        .map(|appender| {
            let group = GroupId(u32::try_from(appender).unwrap_or(u32::MAX));
            let appender = Appender {
                log: log.clone(),
                group,
                spec,
                payloads: payloads.clone(),
                control: Rc::clone(control),
            };
            glommio::spawn_local(appender.run())
        })
        .collect()
}

/// Waits for every appender and returns the first error any of them met.
async fn join_appenders(tasks: Vec<AppenderTask>) -> anyhow::Result<()> {
    let mut first_error = None;
    for task in tasks {
        if let Err(error) = task.await {
            first_error.get_or_insert(error);
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

struct Appender {
    log: DiskLog,
    group: GroupId,
    spec: LoadSpec,
    payloads: PayloadSource,
    control: Rc<Control>,
}

impl Appender {
    async fn run(self) -> anyhow::Result<()> {
        let mut next_index = self
            .log
            .group_state(self.group)
            .map_or(1, |state| state.last_index.0 + 1);
        let entries_per_submit = self.spec.entries_per_submit.max(1) as u64;
        let mut since_compaction = 0u64;
        while let Some(count) = self.control.take_entries(entries_per_submit) {
            let mut batch = WriteBatch::new();
            let payload_bytes = since_compaction * self.spec.entry_bytes as u64;
            if self.spec.compacts_after(since_compaction, payload_bytes) {
                // Everything below `next_index` is durable: each append waited for it.
                batch.compact(self.group, LogIndex(next_index - 1));
                since_compaction = 0;
            }
            let entries = (next_index..next_index + count)
                .map(|index| Entry {
                    term: Term(1),
                    index: LogIndex(index),
                    kind: EntryKind::Normal,
                    data: self
                        .payloads
                        .entry(self.group.0, index, self.spec.entry_bytes),
                })
                .collect();
            batch.append(self.group, entries);

            let recording = self.control.recording.get();
            let start = Instant::now();
            let number = self
                .log
                .submit(batch)
                .with_context(|| format!("submitting to group {} failed", self.group))?;
            self.wait_durable(number).await?;
            if recording {
                let nanos = start.elapsed().as_nanos().try_into().unwrap_or(u64::MAX);
                self.control
                    .latency_nanos
                    .borrow_mut()
                    .saturating_record(nanos);
            }
            next_index += count;
            since_compaction += count;
        }
        Ok(())
    }

    async fn wait_durable(&self, number: BatchNumber) -> anyhow::Result<()> {
        loop {
            let durable = self
                .log
                .wait_durable(BatchNumber(number.0 - 1))
                .await
                .with_context(|| format!("waiting for batch {} to be durable failed", number.0))?;
            if durable >= number {
                return Ok(());
            }
        }
    }
}

/// The log's counters and the clocks at one moment.
#[derive(Clone, Debug)]
struct Snapshot {
    stats: DiskLogStats,
    at: Instant,
    thread_cpu: Option<Duration>,
}

impl Snapshot {
    fn take(log: &DiskLog) -> Snapshot {
        Snapshot {
            stats: log.stats(),
            at: Instant::now(),
            thread_cpu: cpu_time::ThreadTime::try_now()
                .ok()
                .map(|time| time.as_duration()),
        }
    }

    fn since(&self, before: &Snapshot, latency_nanos: Histogram<u64>) -> LoadOutcome {
        let thread_cpu = match (before.thread_cpu, self.thread_cpu) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start)),
            _ => None,
        };
        LoadOutcome {
            entries: self.stats.entries - before.stats.entries,
            syncs: self.stats.syncs - before.stats.syncs,
            written_bytes: self.stats.bytes - before.stats.bytes,
            elapsed: self.at - before.at,
            thread_cpu,
            batches: self.stats.batches - before.stats.batches,
            write_micros_total: self.stats.write_micros_total - before.stats.write_micros_total,
            sync_micros_total: self.stats.sync_micros_total - before.stats.sync_micros_total,
            latency_nanos,
            warmup: Duration::ZERO,
            segments_recycled_at_start: before.stats.segments_recycled,
            rotations: self.stats.rotations - before.stats.rotations,
            segments_new: self.stats.segments_created - before.stats.segments_created,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(created: u64, recycled: u64) -> DiskLogStats {
        DiskLogStats {
            segments_created: created,
            segments_recycled: recycled,
            ..DiskLogStats::default()
        }
    }

    #[test]
    fn new_segment_restarts_the_reuse_count() {
        let mut reuse = ReuseRun::start(&stats(3, 5));
        assert_eq!(reuse.observe(&stats(3, 5)), 0);
        assert_eq!(reuse.observe(&stats(3, 7)), 2);
        assert_eq!(
            reuse.observe(&stats(4, 7)),
            0,
            "a creation restarts the count"
        );
        assert_eq!(reuse.observe(&stats(4, 8)), 1);
        assert_eq!(reuse.observe(&stats(4, 10)), 3);
    }

    #[test]
    fn unbounded_control_gives_full_submissions() {
        let control = Control::new();

        assert_eq!(control.take_entries(4), Some(4));
        assert_eq!(control.take_entries(4), Some(4));
    }

    #[test]
    fn bounded_control_stops_at_count() {
        let control = Control::new();
        control.entries_left.set(Some(6));

        assert_eq!(control.take_entries(4), Some(4));
        assert_eq!(control.take_entries(4), Some(2));
        assert_eq!(control.take_entries(4), None);
    }

    fn spec_compacting_every(entries: u64, bytes: u64) -> LoadSpec {
        LoadSpec {
            entry_bytes: 4096,
            appenders: 1,
            entries_per_submit: 1,
            compact_every_entries: entries,
            compact_every_bytes: bytes,
            payload: PayloadKind::Random,
        }
    }

    #[test]
    fn compaction_comes_at_the_first_limit_reached() {
        let spec = spec_compacting_every(4096, 256 * 1024);

        assert!(!spec.compacts_after(63, 63 * 4096));
        assert!(spec.compacts_after(64, 64 * 4096));
        assert!(spec.compacts_after(4096, 4096 * 16));
    }

    #[test]
    fn zero_limits_never_compact() {
        let by_count_only = spec_compacting_every(10, 0);
        let never = spec_compacting_every(0, 0);

        assert!(!by_count_only.compacts_after(9, u64::MAX));
        assert!(by_count_only.compacts_after(10, 0));
        assert!(!never.compacts_after(u64::MAX, u64::MAX));
    }

    #[test]
    fn stopping_control_gives_nothing() {
        let control = Control::new();
        control.stopping.set(true);

        assert_eq!(control.take_entries(1), None);
    }
}
