//! The disk log: one set of segment files per shard, written by one flusher task with group
//! commit.
//!
//! Submissions are encoded into staged batches at once. The flusher takes the oldest staged
//! batch and writes it with one DMA write at the next block boundary of the active segment.
//! The write itself makes it durable, since segments are opened with O_DSYNC, or with
//! `sync_method = "fdatasync"` one fdatasync after it does. Every submission that arrives
//! meanwhile lands in the next staged batch, up to `flush_bytes_max`. Each batch starts on
//! a fresh block, so a write never touches a block that an earlier, acknowledged batch
//! occupies: a torn write can damage only the batch being written.
//!
//! When a batch does not fit in the active segment, the flusher switches to the next segment
//! (prepared in the background) and writes a checkpoint first: the hard state and compaction
//! point of every group. That lets a segment be deleted once every group's compaction has
//! passed the entries it holds, without losing any group's hard state.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use glommio::io::{DmaBuffer, DmaFile};
use shardraft_raft::{Entry, EntryKind, HardState, LogIndex, Term};
use shardraft_tuning::LatencyHistogram;

use super::error::glommio_io_error;
use super::format::{self, BATCH_HEADER_BYTES, BLOCK_BYTES, Record, align_up};
use super::group::{CompactionTerms, GroupLog, Slot, check_batch};
use super::segment::{
    SegmentSettings, prepare_segment, recycle_segment, segment_path, sync_directory, write_all,
};
use super::staging::{STAGING_PAYLOAD_BYTES_MIN, StagingBuffer};
use super::{
    BatchNumber, GroupId, GroupState, LogConfig, LogIdentity, LogStore, StorageError, SyncMethod,
    WriteBatch, WriteOp, recovery,
};
use crate::metrics::StageHistogram;
use crate::signal::Signal;

/// Where an entry's record sits on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    pub segment_seq: u64,
    /// File offset of the record's length field.
    pub offset: u64,
    /// Bytes of the whole record, prefix included.
    pub len: u32,
}

/// Number of a staged batch, in the order batches are staged and written. Batch
/// sequence numbers on disk are assigned only when a batch is written, and checkpoints take
/// some of them, so staged entries name their batch by this number instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct StagedBatchId(u64);

/// The place of an entry's record.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Placement {
    /// In staged batch `batch`, at `payload_offset` of its payload. Its file position is
    /// known once the batch is published (`State::batch_places`).
    Staged {
        batch: StagedBatchId,
        payload_offset: u32,
        len: u32,
    },
    /// At a known place in a segment, as recovery found it.
    OnDisk(Location),
}

/// The disk log's record of one stored entry: its term and kind, the place of its record,
/// and its ticket in the entry cache.
///
/// Publishing a batch and evicting its payloads touch no slot: a flush that made an
/// entry durable records where its batch went, once per batch, and the cache owns the
/// payloads. With hundreds of groups each slot lies in a cache line of its own, and
/// visiting every slot twice per batch cost about a seventh of the thread at 4 KiB x 256
/// appenders (`perf` of the `log_appenders` example, 2026-12-04).
#[derive(Clone, Debug)]
pub(crate) struct DiskSlot {
    pub term: Term,
    pub kind: EntryKind,
    pub placement: Placement,
    pub cached: CacheTicket,
}

impl Slot for DiskSlot {
    fn term(&self) -> Term {
        self.term
    }
}

/// Per-entry overhead counted against the cache budget besides the payload: the slot and
/// the cache's queue entry.
const CACHE_ENTRY_OVERHEAD_BYTES: u64 = 64;

/// Largest number of queue slots the entry cache reserves when it is created: 4 Mi slots
/// of 48 bytes, 192 MiB of address space, for budgets up to 256 MiB. A larger budget grows
/// the queue beyond this as it fills.
const CACHE_RESERVED_ENTRIES_MAX: u64 = 1 << 22;

/// Position of an entry in the cache's insertion order, counted from the first entry ever
/// inserted, so that a slot finds its payload without a search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CacheTicket(u64);

#[derive(Debug)]
struct CachedEntry {
    data: Bytes,
    /// The staged batch that writes the entry, `None` for an entry read from disk. Until
    /// that batch is published, the cache has the only readable copy, so the entry is not
    /// evicted before.
    batch: Option<StagedBatchId>,
}

/// Payloads of recent entries in insertion order, evicted oldest first once over budget.
///
/// The payload of an entry that a truncation, compaction or snapshot install dropped stays
/// until it reaches the front and counts against the budget until then, because releasing
/// it at once would mean visiting every dropped entry. Dropped entries are mostly the
/// oldest ones (compaction), which the cache evicts first anyway.
#[derive(Debug)]
pub(crate) struct EntryCache {
    entries: VecDeque<CachedEntry>,
    /// Ticket of `entries[0]`.
    front_ticket: u64,
    bytes: u64,
    bytes_max: u64,
}

impl EntryCache {
    /// Creates a cache that evicts its oldest payloads once they and their overhead exceed
    /// `bytes_max`.
    ///
    /// The queue reserves a slot for every entry the budget can hold, so that it does not
    /// grow while the cache stays within its budget. Growing moves the whole queue to a new
    /// allocation twice as large. On the development VM, going from 2^18 to 2^19 slots
    /// stalled every shard for 20 ms or more, which cost an election under a tuned election
    /// timeout. The reservation writes nothing, so its pages fill only as the queue does.
    pub fn new(bytes_max: u64) -> Self {
        let reserved = (bytes_max / CACHE_ENTRY_OVERHEAD_BYTES).min(CACHE_RESERVED_ENTRIES_MAX);
        EntryCache {
            entries: VecDeque::with_capacity(usize::try_from(reserved).unwrap_or(0)),
            front_ticket: 0,
            bytes: 0,
            bytes_max,
        }
    }

    /// Keeps `data` of an entry that `batch` writes (`None`: already on disk).
    pub fn insert(&mut self, data: Bytes, batch: Option<StagedBatchId>) -> CacheTicket {
        let ticket = CacheTicket(self.front_ticket + self.entries.len() as u64);
        self.bytes += data.len() as u64 + CACHE_ENTRY_OVERHEAD_BYTES;
        self.entries.push_back(CachedEntry { data, batch });
        ticket
    }

    /// Returns the payload kept under `ticket`, or `None` once it was evicted.
    pub fn get(&self, ticket: CacheTicket) -> Option<&Bytes> {
        let position = ticket.0.checked_sub(self.front_ticket)?;
        let position = usize::try_from(position).ok()?;
        self.entries.get(position).map(|entry| &entry.data)
    }

    /// Evicts the oldest payloads while over budget. `published` is the newest staged
    /// batch whose places are published; entries of later batches stay.
    pub fn evict(&mut self, published: Option<StagedBatchId>) {
        while self.bytes > self.bytes_max {
            let Some(front) = self.entries.front() else {
                return;
            };
            if front.batch.is_some_and(|batch| Some(batch) > published) {
                return;
            }
            if let Some(evicted) = self.entries.pop_front() {
                self.front_ticket += 1;
                self.bytes -= evicted.data.len() as u64 + CACHE_ENTRY_OVERHEAD_BYTES;
            }
        }
    }
}

/// One segment file and what recovery and deletion need to know about it.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub seq: u64,
    pub path: PathBuf,
    pub file: Rc<DmaFile>,
    /// Layout version in the segment's header.
    pub format_version: u32,
    /// Highest entry index of each group written into this segment.
    pub max_index: HashMap<GroupId, LogIndex>,
    /// Each group's compacted index as recorded by the checkpoint at the start of this
    /// segment. Entries of a group at or below it are not needed from older segments.
    pub checkpoint_base: HashMap<GroupId, LogIndex>,
}

/// The groups that keep a log's oldest segment on disk: see
/// [`DiskLog::oldest_segment_holders`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SegmentHolders {
    /// Segments in use, the active one included.
    pub live_segments: usize,
    /// Groups with entries in the oldest segment that they have not compacted, each with
    /// its highest index there, in group order.
    pub holders: Vec<(GroupId, LogIndex)>,
}

/// A group's hard state and compaction point as written so far, the content of a
/// checkpoint.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WrittenGroup {
    pub hard_state: Option<HardState>,
    pub compacted_index: LogIndex,
    pub compacted_term: Term,
}

#[derive(Clone, Copy, Debug)]
enum WrittenChange {
    HardState(HardState),
    Compact(LogIndex, Term),
}

/// Records of one or more submissions, written together.
#[derive(Debug)]
struct StagedBatch {
    id: StagedBatchId,
    buffer: StagingBuffer,
    record_count: u32,
    last_submission: BatchNumber,
    entry_count: u64,
    /// The last index of each append, in order, so that publishing updates each segment's
    /// highest index once per append rather than once per entry.
    appended: Vec<(GroupId, LogIndex)>,
    changes: Vec<(GroupId, WrittenChange)>,
}

/// Counters of the writer, for benchmarks and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskLogStats {
    /// Batch writes completed, each made durable unless `sync_writes` is off.
    pub batches: u64,
    /// Syncs completed: one per batch unless `sync_writes` is off (its O_DSYNC write, or
    /// the fdatasync after its write), and one fdatasync for each segment's checkpoint.
    pub syncs: u64,
    /// Entry records made durable.
    pub entries: u64,
    /// Bytes written, padding and checkpoints included.
    pub bytes: u64,
    /// Segments started after the first.
    pub rotations: u64,
    /// Segments retired after compaction: removed, or kept to be recycled.
    pub segments_deleted: u64,
    /// Retired segments reused as new segments instead of creating and zero-filling one.
    pub segments_recycled: u64,
    /// Segment files created, counted when their preparation starts. Each is zero-filled
    /// unless `zero_fill_segments` is off. Segments that recovery creates at open are not
    /// counted.
    pub segments_created: u64,
    /// Preparations of a next segment, created or recycled, that finished. Fewer than
    /// `segments_created + segments_recycled` while one runs in the background.
    pub segments_prepared: u64,
    /// Time spent in batch writes, from submission to completion.
    pub write_micros_total: u64,
    /// Time spent making each batch durable: its fdatasync, or with O_DSYNC segments its
    /// whole write, which then also counts in `write_micros_total`.
    pub sync_micros_total: u64,
    /// Duration of each sync, of batches and of segment checkpoints: an fdatasync, or a
    /// batch's O_DSYNC write.
    pub sync_latency: StageHistogram,
    /// The same durations in microseconds, each within 1/16 of its value, for the
    /// tuner's election timeout floor: a bucket of `sync_latency` spans up to twice its
    /// lower bound, and its upper bound would double the floor.
    pub sync_latency_micros: LatencyHistogram,
}

/// Everything recovery hands to the writer.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub groups: BTreeMap<GroupId, GroupLog<DiskSlot>>,
    pub cache: EntryCache,
    pub segments: BTreeMap<u64, SegmentFile>,
    pub active_seq: u64,
    pub write_offset: u64,
    pub next_batch_seq: u64,
}

struct State {
    groups: BTreeMap<GroupId, GroupLog<DiskSlot>>,
    cache: EntryCache,
    staged: VecDeque<StagedBatch>,
    pending_bytes: u64,
    submitted: BatchNumber,
    durable: BatchNumber,
    failure: Option<StorageError>,
    closing: bool,
    flusher_stopped: bool,
    segments: BTreeMap<u64, SegmentFile>,
    active_seq: u64,
    write_offset: u64,
    /// Whether the active segment's checkpoint is durable, which lets older segments that
    /// it proves compacted retire. A checkpoint is written in front of the segment's first
    /// batch and made durable by that batch's fdatasync.
    active_checkpoint_durable: bool,
    next_batch_seq: u64,
    /// The newest batch whose fdatasync completed and whose locations are published.
    /// Batches are published in order, so every older batch is durable too.
    synced_seq: u64,
    /// The newest batch that an fdatasync made durable, which batch headers record. It
    /// trails `synced_seq` when `sync_writes` is off, where only checkpoints are synced.
    fdatasynced_seq: u64,
    /// Tasks syncing and publishing a written batch; the flusher stops after they end.
    syncs_running: u32,
    /// A batch write or fdatasync failed: batches after it will never be synced.
    writer_failed: bool,
    written: BTreeMap<GroupId, WrittenGroup>,
    prepared: Option<glommio::Task<Result<Rc<DmaFile>, StorageError>>>,
    /// Emptied append lists of written batches, reused so that staging does not grow a
    /// fresh list (and copy it on every doubling) for each batch.
    spare_append_lists: Vec<Vec<(GroupId, LogIndex)>>,
    /// Number of the next staged batch.
    next_staged_batch: u64,
    /// The newest staged batch that is published; the cache may evict its entries.
    published_batch: Option<StagedBatchId>,
    /// Start of the payload of each published staged batch (segment and file offset),
    /// oldest first. Each is kept until its segment is retired, since slots name their
    /// batch.
    batch_places: VecDeque<(StagedBatchId, u64, u64)>,
    /// Segments whose entries are all compacted, oldest first, kept to become the next
    /// segments. Their files are still in the directory under their old names.
    recyclable: Vec<SegmentFile>,
    /// Retired segments beyond those kept for recycling, waiting to be removed in order.
    to_remove: VecDeque<SegmentFile>,
    /// A task is removing the files in `to_remove`.
    removing: bool,
    /// Whether `close` closed every segment file. Reads from disk then fail with `Closed`.
    files_closed: bool,
    /// The segment paths in use when `close` closed their files, for `segment_paths`.
    closed_segment_paths: Vec<PathBuf>,
    /// The active segment has an older format version, so the next batch starts a new
    /// segment: an older reader must never meet a record it does not know.
    rotate_before_next_write: bool,
    stats: DiskLogStats,
}

struct Shared {
    dir: PathBuf,
    identity: LogIdentity,
    config: LogConfig,
    state: RefCell<State>,
    /// Notified when a batch is staged or the log is closing.
    staged: Signal,
    /// Notified when the durable number advances, pending bytes shrink or the log stops.
    progress: Signal,
    /// Tasks in `wait_durable`. They are woken apart from `progress`, and only once their
    /// batch is durable or the log stops.
    durable_waiters: RefCell<DurableWaiters>,
}

/// Wakers of the tasks in [`LogStore::wait_durable`], each with the submission number it
/// waits to see passed. A published batch wakes only the waiters it satisfies. With one
/// shared signal, 1024 appenders with four batches in flight (three of them unsynced) all
/// woke for every batch, and three in four went back to sleep. Waking only the satisfied
/// ones cut the log thread's CPU time per 4 KiB entry by about 12 % in the `log_appenders`
/// example.
#[derive(Debug, Default)]
struct DurableWaiters {
    /// The number each waiter waits to see passed, and its waker, in no order.
    waiting: Vec<(BatchNumber, Waker)>,
}

impl DurableWaiters {
    /// Registers `waker` until the durable number passes `after`. A waiter dropped before
    /// then leaves its waker until that point, and waking it is harmless.
    fn register(&mut self, after: BatchNumber, waker: &Waker) {
        self.waiting.push((after, waker.clone()));
    }

    /// Removes and returns the wakers of every waiter that `durable` satisfies.
    fn take_passed(&mut self, durable: BatchNumber) -> Vec<Waker> {
        let mut passed = Vec::new();
        let mut position = 0;
        while position < self.waiting.len() {
            if self.waiting[position].0 < durable {
                passed.push(self.waiting.swap_remove(position).1);
            } else {
                position += 1;
            }
        }
        passed
    }

    /// Removes and returns every waker, for a log that stopped.
    fn take_all(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(_, waker)| waker)
            .collect()
    }
}

/// Wakes the tasks in `wait_durable` that the durable number now satisfies, or all of them
/// once the log stopped, failed or closed.
fn wake_durable_waiters(shared: &Shared) {
    let durable = {
        let state = shared.state.borrow();
        let stopped = state.failure.is_some() || state.flusher_stopped;
        (!stopped).then_some(state.durable)
    };
    let wakers = {
        let mut waiters = shared.durable_waiters.borrow_mut();
        match durable {
            Some(durable) => waiters.take_passed(durable),
            None => waiters.take_all(),
        }
    };
    for waker in wakers {
        waker.wake();
    }
}

/// The disk implementation of [`LogStore`]. See the module documentation.
#[derive(Clone)]
pub struct DiskLog {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for DiskLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskLog")
            .field("dir", &self.shared.dir)
            .field("identity", &self.shared.identity)
            .finish_non_exhaustive()
    }
}

impl DiskLog {
    /// Opens the log of shard `identity.shard` under `config.data_dir`, recovering what it
    /// holds, and starts its flusher. Must run inside a glommio executor.
    ///
    /// # Errors
    /// A missing or unwritable data directory, a volatile filesystem or one without
    /// O_DIRECT, a directory of another cluster, node or shard, and corruption inside data
    /// that was made durable. A torn final batch is not an error: it is truncated and logged.
    pub async fn open(config: &LogConfig, identity: LogIdentity) -> Result<DiskLog, StorageError> {
        config.validate()?;
        let dir = recovery::prepare_directory(&config.data_dir, identity)?;
        let recovered = recovery::recover(&dir, identity, config).await?;
        // The last batches found may have been written but never synced before a crash.
        // Later batches record them as synced, so make that true first. They lie in the
        // active segment, or in the one before it when the active segment was prepared
        // ahead and is still empty.
        for segment in recovered.segments.values().rev().take(2) {
            sync_file(&segment.file, &segment.path).await?;
        }
        let written = recovered
            .groups
            .iter()
            .map(|(group, log)| {
                let written = WrittenGroup {
                    hard_state: log.hard_state,
                    compacted_index: log.compacted_index,
                    compacted_term: log.compacted_term,
                };
                (*group, written)
            })
            .collect();
        let rotate_before_next_write = recovered
            .segments
            .get(&recovered.active_seq)
            .is_some_and(|segment| segment.format_version < format::FORMAT_VERSION);
        let state = State {
            groups: recovered.groups,
            cache: recovered.cache,
            staged: VecDeque::new(),
            pending_bytes: 0,
            submitted: BatchNumber(0),
            durable: BatchNumber(0),
            failure: None,
            closing: false,
            flusher_stopped: false,
            segments: recovered.segments,
            active_seq: recovered.active_seq,
            write_offset: recovered.write_offset,
            // Recovery reads only what is on disk, so a checkpoint it found is durable.
            active_checkpoint_durable: recovered.write_offset > BLOCK_BYTES,
            next_batch_seq: recovered.next_batch_seq,
            synced_seq: recovered.next_batch_seq - 1,
            fdatasynced_seq: recovered.next_batch_seq - 1,
            syncs_running: 0,
            writer_failed: false,
            written,
            prepared: None,
            spare_append_lists: Vec::new(),
            next_staged_batch: 0,
            published_batch: None,
            batch_places: VecDeque::new(),
            recyclable: Vec::new(),
            to_remove: VecDeque::new(),
            removing: false,
            files_closed: false,
            closed_segment_paths: Vec::new(),
            rotate_before_next_write,
            stats: DiskLogStats::default(),
        };
        let shared = Rc::new(Shared {
            dir,
            identity,
            config: config.clone(),
            state: RefCell::new(state),
            staged: Signal::default(),
            progress: Signal::default(),
            durable_waiters: RefCell::new(DurableWaiters::default()),
        });
        let next_seq = shared.state.borrow().active_seq + 1;
        start_preparing(&shared, next_seq);
        // TODO: run the log's tasks in a `Latency::Matters` task queue once glommio keeps
        // its timers there. One 4 KiB entry per submission then reached 80 % of the device
        // instead of 55 %. But glommio 0.9 parked the executor for seconds with timers due.
        glommio::spawn_local(run_flusher(Rc::clone(&shared))).detach();
        Ok(DiskLog { shared })
    }

    /// Returns the size of each segment file, from the config the log was opened with.
    pub fn segment_bytes(&self) -> u64 {
        self.shared.config.segment_bytes
    }

    /// Returns the bytes left in the active segment before the log rotates to the next one.
    pub fn active_segment_free_bytes(&self) -> u64 {
        self.shared
            .config
            .segment_bytes
            .saturating_sub(self.shared.state.borrow().write_offset)
    }

    /// The shard's directory, `data_dir/shard-N`.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn stats(&self) -> DiskLogStats {
        self.shared.state.borrow().stats.clone()
    }

    /// Returns the live segment count and the groups whose entries keep the oldest segment
    /// from retiring, each with the index it must compact through to release it. The active
    /// segment never counts as the oldest, so with one live segment the list is empty.
    pub fn oldest_segment_holders(&self) -> SegmentHolders {
        let state = self.shared.state.borrow();
        let mut holders: Vec<(GroupId, LogIndex)> = state
            .segments
            .first_key_value()
            .filter(|(seq, _)| **seq != state.active_seq)
            .map(|(_, oldest)| {
                oldest
                    .max_index
                    .iter()
                    .filter(|(group, index)| {
                        state
                            .groups
                            .get(group)
                            .is_some_and(|log| log.compacted_index < **index)
                    })
                    .map(|(group, index)| (*group, *index))
                    .collect()
            })
            .unwrap_or_default();
        holders.sort_unstable();
        SegmentHolders {
            live_segments: state.segments.len(),
            holders,
        }
    }

    /// Paths of the segment files in use, oldest first. After [`close`](LogStore::close),
    /// the paths in use when it closed them.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        let state = self.shared.state.borrow();
        if state.files_closed {
            return state.closed_segment_paths.clone();
        }
        state.segments.values().map(|s| s.path.clone()).collect()
    }

    /// Stops the log at once as a crash would: nothing staged is written, and a write in
    /// flight completes or not. For crash tests; a node shuts down with
    /// [`close`](LogStore::close).
    pub fn halt(&self) {
        let mut state = self.shared.state.borrow_mut();
        state.staged.clear();
        state.closing = true;
        if state.failure.is_none() {
            state.failure = Some(StorageError::Closed);
        }
        drop(state);
        self.shared.staged.notify_all();
        self.shared.progress.notify_all();
        wake_durable_waiters(&self.shared);
    }

    fn stopped_error(state: &State) -> Option<StorageError> {
        match &state.failure {
            Some(StorageError::Closed) => Some(StorageError::Closed),
            Some(cause) => Some(StorageError::Stopped {
                cause: Box::new(cause.clone()),
            }),
            None if state.closing => Some(StorageError::Closed),
            None => None,
        }
    }
}

impl LogStore for DiskLog {
    fn group_ids(&self) -> Vec<GroupId> {
        self.shared.state.borrow().groups.keys().copied().collect()
    }

    fn group_state(&self, group: GroupId) -> Option<GroupState> {
        self.shared
            .state
            .borrow()
            .groups
            .get(&group)
            .map(GroupLog::state)
    }

    fn submit(&self, batch: WriteBatch) -> Result<BatchNumber, StorageError> {
        let mut state = self.shared.state.borrow_mut();
        if let Some(error) = DiskLog::stopped_error(&state) {
            return Err(error);
        }
        let estimate = batch.entry_bytes() + (batch.ops.len() * format::RECORD_HEADER_BYTES) as u64;
        let single_batch_max = self.shared.config.segment_bytes / 2;
        if estimate > single_batch_max {
            return Err(StorageError::BatchTooLarge {
                bytes: estimate,
                segment_bytes: self.shared.config.segment_bytes,
            });
        }
        let compaction_terms = check_batch(&state.groups, &batch)?;

        state.submitted.0 += 1;
        let submission = state.submitted;
        let start_new = match state.staged.back() {
            None => true,
            Some(back) => {
                (BATCH_HEADER_BYTES + back.buffer.payload_len()) as u64 + estimate
                    > self.shared.config.flush_bytes_max
            }
        };
        if start_new {
            let appended = state.spare_append_lists.pop().unwrap_or_default();
            // Room for a whole batch from the start: a buffer sized at twice the last batch
            // grew, copying its records, after each small batch (6 % of the thread at 4 KiB
            // x 1024 appenders). The I/O memory has room for 16 such buffers.
            let capacity = (self.shared.config.flush_bytes_max as usize)
                .saturating_sub(BATCH_HEADER_BYTES)
                .max(STAGING_PAYLOAD_BYTES_MIN)
                .max(estimate as usize);
            let id = StagedBatchId(state.next_staged_batch);
            state.next_staged_batch += 1;
            state.staged.push_back(StagedBatch {
                id,
                buffer: StagingBuffer::with_payload_capacity(capacity),
                record_count: 0,
                last_submission: BatchNumber(0),
                entry_count: 0,
                appended,
                changes: Vec::new(),
            });
        }
        let State {
            groups,
            cache,
            staged,
            pending_bytes,
            published_batch,
            ..
        } = &mut *state;
        let staged = staged.back_mut().expect("a staged batch was just ensured");
        let before = staged.buffer.payload_len();
        let target = StageTarget { groups, cache };
        stage_ops(target, staged, batch, compaction_terms);
        staged.last_submission = submission;
        *pending_bytes += (staged.buffer.payload_len() - before) as u64;
        cache.evict(*published_batch);
        self.shared.staged.notify_all();
        Ok(submission)
    }

    fn durable(&self) -> Result<BatchNumber, StorageError> {
        let state = self.shared.state.borrow();
        match &state.failure {
            Some(StorageError::Closed) | None => Ok(state.durable),
            Some(cause) => Err(StorageError::Stopped {
                cause: Box::new(cause.clone()),
            }),
        }
    }

    async fn wait_durable(&self, after: BatchNumber) -> Result<BatchNumber, StorageError> {
        // A waiter is taken out of the list only once its batch is durable or the log
        // stopped, and the next poll then returns. So it registers once, and again only if
        // it is polled with another waker.
        let mut registered: Option<Waker> = None;
        std::future::poll_fn(|context| {
            let state = self.shared.state.borrow();
            if state.durable > after || state.submitted <= after {
                return Poll::Ready(Ok(state.durable));
            }
            if let Some(error) = DiskLog::stopped_error(&state) {
                return Poll::Ready(Err(error));
            }
            drop(state);
            if !registered
                .as_ref()
                .is_some_and(|waker| waker.will_wake(context.waker()))
            {
                self.shared
                    .durable_waiters
                    .borrow_mut()
                    .register(after, context.waker());
                registered = Some(context.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    fn has_room(&self) -> bool {
        let state = self.shared.state.borrow();
        state.pending_bytes < self.shared.config.pending_bytes_max
    }

    fn term(&self, group: GroupId, index: LogIndex) -> Result<Term, StorageError> {
        let state = self.shared.state.borrow();
        match state.groups.get(&group) {
            Some(log) => log.term(group, index),
            None => GroupLog::<DiskSlot>::default().term(group, index),
        }
    }

    async fn read(
        &self,
        group: GroupId,
        range: Range<LogIndex>,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let plan = self.plan_read(group, range, bytes_max)?;
        let mut entries = Vec::with_capacity(plan.len());
        let mut position = 0;
        while position < plan.len() {
            match &plan[position] {
                PlannedRead::Cached(entry) => {
                    entries.push(entry.clone());
                    position += 1;
                }
                PlannedRead::OnDisk { .. } => {
                    let run_end = disk_run_end(&plan, position);
                    self.read_run(group, &plan[position..run_end], &mut entries)
                        .await?;
                    position = run_end;
                }
            }
        }
        Ok(entries)
    }

    async fn close(&self) -> Result<(), StorageError> {
        {
            let mut state = self.shared.state.borrow_mut();
            state.closing = true;
        }
        self.shared.staged.notify_all();
        self.shared
            .progress
            .wait_for(|| self.shared.state.borrow().flusher_stopped.then_some(()))
            .await;
        close_segment_files(&self.shared).await;
        let state = self.shared.state.borrow();
        match &state.failure {
            None | Some(StorageError::Closed) => Ok(()),
            Some(cause) => Err(StorageError::Stopped {
                cause: Box::new(cause.clone()),
            }),
        }
    }
}

/// One entry of a read: from the cache, or from a record on disk.
#[derive(Debug)]
enum PlannedRead {
    Cached(Entry),
    OnDisk {
        index: LogIndex,
        term: Term,
        location: Location,
    },
}

/// Largest gap between two records on disk that one read still spans instead of two.
const READ_MERGE_GAP_BYTES: u64 = 64 * 1024;

fn disk_run_end(plan: &[PlannedRead], start: usize) -> usize {
    let PlannedRead::OnDisk {
        location: first, ..
    } = &plan[start]
    else {
        return start + 1;
    };
    let mut end = start + 1;
    let mut previous = *first;
    while let Some(PlannedRead::OnDisk { location, .. }) = plan.get(end) {
        let previous_end = previous.offset + u64::from(previous.len);
        let same_file = location.segment_seq == previous.segment_seq;
        if !same_file
            || location.offset < previous_end
            || location.offset - previous_end > READ_MERGE_GAP_BYTES
        {
            break;
        }
        previous = *location;
        end += 1;
    }
    end
}

impl DiskLog {
    fn plan_read(
        &self,
        group: GroupId,
        range: Range<LogIndex>,
        bytes_max: u64,
    ) -> Result<Vec<PlannedRead>, StorageError> {
        let state = self.shared.state.borrow();
        let empty = GroupLog::default();
        let log = state.groups.get(&group).unwrap_or(&empty);
        let mut plan = Vec::new();
        let mut bytes = 0u64;
        let mut index = range.start;
        while index < range.end {
            let slot = &log.slots[log.position(group, index)?];
            let planned = match state.cache.get(slot.cached) {
                Some(data) => PlannedRead::Cached(Entry {
                    term: slot.term,
                    index,
                    kind: slot.kind,
                    data: data.clone(),
                }),
                None => PlannedRead::OnDisk {
                    index,
                    term: slot.term,
                    location: locate(&state, slot.placement).ok_or_else(|| {
                        // The cache keeps every entry of a batch not yet published, and
                        // the places of published batches stay until their segment is
                        // retired, so only a bug leads here.
                        StorageError::Unavailable {
                            group,
                            index,
                            last: log.last_index(),
                        }
                    })?,
                },
            };
            bytes += match &planned {
                PlannedRead::Cached(entry) => entry.data.len() as u64,
                PlannedRead::OnDisk { location, .. } => {
                    u64::from(location.len) - format::RECORD_HEADER_BYTES as u64
                }
            };
            if !plan.is_empty() && bytes > bytes_max {
                break;
            }
            plan.push(planned);
            index.0 += 1;
        }
        Ok(plan)
    }

    /// Reads records that lie close together in one segment with one read.
    async fn read_run(
        &self,
        group: GroupId,
        run: &[PlannedRead],
        entries: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        let locations: Vec<(LogIndex, Term, Location)> = run
            .iter()
            .filter_map(|item| match item {
                PlannedRead::OnDisk {
                    index,
                    term,
                    location,
                } => Some((*index, *term, *location)),
                PlannedRead::Cached(_) => None,
            })
            .collect();
        let first = locations[0].2;
        let last = locations[locations.len() - 1].2;
        let (file, path) =
            {
                let state = self.shared.state.borrow();
                if state.files_closed {
                    return Err(StorageError::Closed);
                }
                let segment = state.segments.get(&first.segment_seq).ok_or_else(|| {
                    StorageError::Compacted {
                        group,
                        index: locations[0].0,
                        compacted: state
                            .groups
                            .get(&group)
                            .map_or(LogIndex(0), |log| log.compacted_index),
                    }
                })?;
                (Rc::clone(&segment.file), segment.path.clone())
            };
        let span = (last.offset + u64::from(last.len) - first.offset) as usize;
        let bytes = file
            .read_at(first.offset, span)
            .await
            .map_err(|error| StorageError::from_io("reading", &path, glommio_io_error(error)))?;
        for (index, term, location) in locations {
            let start = (location.offset - first.offset) as usize;
            let corrupt = |detail: String| StorageError::Corrupt {
                path: path.clone(),
                offset: location.offset,
                detail,
            };
            let record_bytes = bytes
                .get(start..start + location.len as usize)
                .ok_or_else(|| corrupt("the file ends before the record".to_string()))?;
            let (record, _) =
                format::decode_record(record_bytes).map_err(|error| corrupt(error.to_string()))?;
            match record {
                Record::Entry {
                    group: found_group,
                    entry,
                } if found_group == group && entry.index == index && entry.term == term => {
                    entries.push(entry);
                }
                other => {
                    return Err(corrupt(format!(
                        "expected entry {} (term {}) of group {group}, found {other:?}",
                        index.0, term.0
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The parts of [`State`] that staging changes, borrowed apart from the staged queue.
struct StageTarget<'a> {
    groups: &'a mut BTreeMap<GroupId, GroupLog<DiskSlot>>,
    cache: &'a mut EntryCache,
}

/// Encodes the ops of one checked submission into `staged` and applies them to the
/// in-memory view.
fn stage_ops(
    target: StageTarget<'_>,
    staged: &mut StagedBatch,
    batch: WriteBatch,
    compaction_terms: CompactionTerms,
) {
    for (position, op) in batch.ops.into_iter().enumerate() {
        let compaction_term = compaction_terms.for_op(position);
        let group = op.group();
        let log = target.groups.entry(group).or_default();
        match op {
            WriteOp::Append { entries, .. } => {
                let first = entries[0].index;
                if first <= log.last_index() {
                    push_record(staged, &Record::Truncate { group, from: first });
                    log.truncate_from(first);
                }
                let last = entries[entries.len() - 1].index;
                staged.entry_count += entries.len() as u64;
                staged.record_count += entries.len() as u32;
                for entry in entries {
                    let (payload_offset, len) = staged.buffer.push_entry(group, &entry);
                    let placement = Placement::Staged {
                        batch: staged.id,
                        payload_offset,
                        len,
                    };
                    log.slots.push_back(DiskSlot {
                        term: entry.term,
                        kind: entry.kind,
                        placement,
                        cached: target.cache.insert(entry.data, Some(staged.id)),
                    });
                }
                staged.appended.push((group, last));
            }
            WriteOp::HardState { hard_state, .. } => {
                push_record(staged, &Record::HardState { group, hard_state });
                log.hard_state = Some(hard_state);
                staged
                    .changes
                    .push((group, WrittenChange::HardState(hard_state)));
            }
            WriteOp::Truncate { from, .. } => {
                push_record(staged, &Record::Truncate { group, from });
                log.truncate_from(from);
            }
            WriteOp::Compact { through, .. } => {
                let Some(term) = compaction_term else {
                    continue;
                };
                push_record(
                    staged,
                    &Record::Compact {
                        group,
                        through,
                        term,
                    },
                );
                log.compact(through, term);
                staged
                    .changes
                    .push((group, WrittenChange::Compact(through, term)));
            }
            WriteOp::InstallSnapshot { index, term, .. } => {
                push_record(staged, &Record::InstallSnapshot { group, index, term });
                log.install_snapshot(index, term);
                // A checkpoint records the snapshot as the group's compaction point. Once
                // one is on disk, segments with only entries at or below `index` can be
                // retired. Entries above it that the install dropped keep their segments
                // until a later compaction passes them.
                staged
                    .changes
                    .push((group, WrittenChange::Compact(index, term)));
            }
        }
    }
}

fn push_record(staged: &mut StagedBatch, record: &Record) {
    staged.buffer.push_record(record);
    staged.record_count += 1;
}

fn start_preparing(shared: &Rc<Shared>, segment_seq: u64) {
    let dir = shared.dir.clone();
    let identity = shared.identity;
    let settings = SegmentSettings::from_config(&shared.config);
    // The oldest retired segment goes first, so that the files left in the directory stay
    // a contiguous run of sequence numbers.
    let recyclable = {
        let mut state = shared.state.borrow_mut();
        let recyclable = (!state.recyclable.is_empty()).then(|| state.recyclable.remove(0));
        state.stats.segments_recycled += u64::from(recyclable.is_some());
        state.stats.segments_created += u64::from(recyclable.is_none());
        recyclable
    };
    // A weak reference, because the log owns this task until its next rotation, and a
    // strong one would keep the log alive through it.
    let weak_shared = Rc::downgrade(shared);
    let task = glommio::spawn_local(async move {
        let prepared = match recyclable {
            Some(old) => recycle_segment(&dir, identity, old.file, &old.path, segment_seq).await,
            None => prepare_segment(&dir, identity, segment_seq, settings).await,
        };
        if let (Ok(_), Some(shared)) = (&prepared, weak_shared.upgrade()) {
            shared.state.borrow_mut().stats.segments_prepared += 1;
        }
        prepared
    });
    shared.state.borrow_mut().prepared = Some(task);
}

/// Most batches placed in the log but not yet synced, besides the one being placed. Each
/// placed batch is written and synced by its own task, so the writes and fdatasyncs of up
/// to this many batches run while the next is placed. With one, a burst of closed-loop
/// appenders larger than a batch left both the thread and the device idle part of the
/// time. The next write waited for a sync, and the executor saw the sync complete only
/// after its current round of staging (see bench/BENCHMARKS.md). On the development VM each
/// write and fdatasync took about twice as long with four batches in flight as alone, so
/// five instead of three raised the bandwidth of 4 KiB entries by a fifth. Seven gave no
/// more. Recovery does not depend on the depth: every batch header names the newest
/// synced batch, and a damaged batch that no later header names as synced is truncated with
/// everything after it (see `recovery`). The depth bounds how many batches at the end of
/// the log recovery cannot tell from a torn tail.
const UNSYNCED_BATCHES_MAX: u64 = 5;

async fn run_flusher(shared: Rc<Shared>) {
    loop {
        let next = shared
            .staged
            .wait_for(|| {
                let mut state = shared.state.borrow_mut();
                if state.failure.is_some() {
                    return Some(None);
                }
                match state.staged.pop_front() {
                    Some(batch) => Some(Some(batch)),
                    None if state.closing => Some(None),
                    None => None,
                }
            })
            .await;
        let Some(batch) = next else {
            break;
        };
        match place_batch(&shared, batch).await {
            Ok(placed) => {
                shared.state.borrow_mut().syncs_running += 1;
                glommio::spawn_local(write_sync_and_publish(Rc::clone(&shared), placed)).detach();
            }
            Err(error) => {
                record_failure(&shared, error);
                break;
            }
        }
    }
    shared
        .progress
        .wait_for(|| (shared.state.borrow().syncs_running == 0).then_some(()))
        .await;
    // Stop the preparation of a segment that will never be used. Its file stays, and the
    // next recovery reuses or removes it.
    let prepared = shared.state.borrow_mut().prepared.take();
    if let Some(task) = prepared
        && let Some(Ok(file)) = task.cancel().await
    {
        close_file(file).await;
    }
    shared.state.borrow_mut().flusher_stopped = true;
    shared.progress.notify_all();
    wake_durable_waiters(&shared);
}

/// Closes every segment file of the log, once its flusher stopped. Otherwise glommio
/// closes a file only when the log is dropped, and never when the drop comes after the
/// executor ended. A process that opens and closes logs, as tests and an embedded cluster
/// that restarts a node do, would then keep their descriptors open.
async fn close_segment_files(shared: &Shared) {
    let files: Vec<Rc<DmaFile>> = {
        let mut state = shared.state.borrow_mut();
        if state.files_closed {
            return;
        }
        state.files_closed = true;
        let segments = std::mem::take(&mut state.segments);
        state.closed_segment_paths = segments.values().map(|s| s.path.clone()).collect();
        let recyclable = std::mem::take(&mut state.recyclable);
        let to_remove = std::mem::take(&mut state.to_remove);
        segments
            .into_values()
            .chain(recyclable)
            .chain(to_remove)
            .map(|segment| segment.file)
            .collect()
    };
    for file in files {
        close_file(file).await;
    }
}

/// Closes `file` if this is its last reference. A read still in flight keeps another
/// reference, and its drop closes the file later. Every batch was written before the flusher stopped,
/// so a failed close loses nothing and is only logged.
async fn close_file(file: Rc<DmaFile>) {
    let path = file.path().map(|path| path.to_path_buf());
    if let Err(error) = file.close_rc().await {
        tracing::warn!(path = ?path, error = %glommio_io_error(error), "closing a segment file failed");
    }
}

/// Stops the log after a failed write or sync: later writes are refused, since retrying a
/// failed fdatasync could report data as durable that the kernel already dropped.
fn record_failure(shared: &Shared, error: StorageError) {
    tracing::error!(dir = %shared.dir.display(), %error, "write-ahead log stopped");
    let mut state = shared.state.borrow_mut();
    // A failed write or sync after a halt still counts: it replaces the halt's `Closed`.
    if matches!(state.failure, None | Some(StorageError::Closed)) {
        state.failure = Some(error);
    }
    state.writer_failed = true;
    drop(state);
    shared.progress.notify_all();
    shared.staged.notify_all();
    wake_durable_waiters(shared);
}

/// Calls fdatasync on `file`, reporting a failure as `SyncFailed` with its path.
async fn sync_file(file: &DmaFile, path: &Path) -> Result<(), StorageError> {
    file.fdatasync()
        .await
        .map_err(|error| StorageError::SyncFailed {
            path: path.to_path_buf(),
            source: Arc::new(glommio_io_error(error)),
        })
}

/// Waits until every batch up to `batch_seq` is synced, or the log failed.
async fn wait_synced(shared: &Shared, batch_seq: u64) -> Result<(), StorageError> {
    shared
        .progress
        .wait_for(|| {
            let state = shared.state.borrow();
            if state.synced_seq >= batch_seq {
                return Some(Ok(()));
            }
            // After a halt, writes in flight still complete; only a failed write or sync
            // means that the awaited batch will never be synced.
            if !state.writer_failed {
                return None;
            }
            let cause = state.failure.clone().unwrap_or(StorageError::Closed);
            Some(Err(StorageError::Stopped {
                cause: Box::new(cause),
            }))
        })
        .await
}

/// A batch given its sequence number and its place in the active segment, with its bytes
/// ready to write.
struct PlacedBatch {
    batch: StagedBatch,
    buffer: DmaBuffer,
    /// The oldest batch this batch's fdatasync makes durable: the batch itself, or the
    /// checkpoint written in front of it.
    first_unsynced_seq: u64,
    batch_seq: u64,
    file: Rc<DmaFile>,
    path: PathBuf,
    segment_seq: u64,
    data_offset: u64,
}

/// Gives a staged batch its place at the end of the active segment, once at most
/// [`UNSYNCED_BATCHES_MAX`] earlier batches are unsynced. Its write is left to its own task,
/// so that the next batch can be placed and written before glommio notices that this
/// write completed. At 1024 appenders of 4 KiB entries the flusher saw each 1 MiB write
/// take 430 to 490 us, while the device wrote and synced 1 MiB back to back in about
/// 250 us. With one write at a time, that bounded the log at one batch per such wait.
async fn place_batch(
    shared: &Rc<Shared>,
    mut batch: StagedBatch,
) -> Result<PlacedBatch, StorageError> {
    let batch_bytes = align_up((BATCH_HEADER_BYTES + batch.buffer.payload_len()) as u64);
    let (needs_new_segment, last_written_seq) = {
        let state = shared.state.borrow();
        (
            state.write_offset + batch_bytes > shared.config.segment_bytes
                || state.rotate_before_next_write,
            state.next_batch_seq - 1,
        )
    };
    if needs_new_segment || shared.state.borrow().write_offset == BLOCK_BYTES {
        // A checkpoint records the hard states and compactions of every batch before it, and
        // recovery only bridges damage within one segment: drain before either.
        wait_synced(shared, last_written_seq).await?;
        if needs_new_segment {
            rotate(shared).await?;
        }
    }
    // The checkpoint waits for this batch's fdatasync, so that a rotation costs one sync
    // rather than two. Until then it is one of the unsynced batches at the end of the log
    // that recovery may truncate, like any other.
    let unsynced_checkpoint_seq = if shared.state.borrow().write_offset == BLOCK_BYTES {
        write_checkpoint(shared).await?
    } else {
        None
    };
    let batch_seq = shared.state.borrow().next_batch_seq;
    wait_synced(shared, batch_seq.saturating_sub(1 + UNSYNCED_BATCHES_MAX)).await?;

    let (file, path, segment_seq, data_offset, buffer) = {
        let mut state = shared.state.borrow_mut();
        let segment = &state.segments[&state.active_seq];
        let file = Rc::clone(&segment.file);
        let path = segment.path.clone();
        if state.write_offset + batch_bytes > shared.config.segment_bytes {
            return Err(StorageError::BatchTooLarge {
                bytes: state.write_offset - BLOCK_BYTES + batch_bytes,
                segment_bytes: shared.config.segment_bytes,
            });
        }
        state.next_batch_seq += 1;
        let header = format::encode_batch_header(
            batch_seq,
            state.fdatasynced_seq,
            batch.buffer.payload(),
            batch.record_count,
        );
        let buffer = batch.buffer.take_for_write(&header);
        let data_offset = state.write_offset;
        // The next batch goes after this one even before this one is synced.
        state.write_offset += batch_bytes;
        (file, path, state.active_seq, data_offset, buffer)
    };

    Ok(PlacedBatch {
        batch,
        buffer,
        first_unsynced_seq: unsynced_checkpoint_seq.unwrap_or(batch_seq),
        batch_seq,
        file,
        path,
        segment_seq,
        data_offset,
    })
}

/// Writes a placed batch, makes it durable, then publishes it once every earlier batch is
/// published. Writes of several batches may be in flight at once. Each batch's fdatasync
/// starts only after its own write completed, and publication stays in order. So a batch
/// is published only once it and every batch before it were written and synced.
async fn write_sync_and_publish(shared: Rc<Shared>, placed: PlacedBatch) {
    if let Err(error) = try_write_sync_and_publish(&shared, placed).await {
        record_failure(&shared, error);
    }
    shared.state.borrow_mut().syncs_running -= 1;
    shared.progress.notify_all();
}

async fn try_write_sync_and_publish(
    shared: &Rc<Shared>,
    placed: PlacedBatch,
) -> Result<(), StorageError> {
    let PlacedBatch {
        batch,
        buffer,
        first_unsynced_seq,
        batch_seq,
        file,
        path,
        segment_seq,
        data_offset,
    } = placed;
    let written_bytes = buffer.len() as u64;
    let write_started = std::time::Instant::now();
    write_all(&file, buffer, data_offset, &path).await?;
    let write_duration = write_started.elapsed();
    let write_micros = write_duration.as_micros() as u64;
    // With O_DSYNC segments the write returned once durable, and its time is the sync's.
    let sync_duration = match shared.config.sync_method {
        _ if !shared.config.sync_writes => Duration::ZERO,
        SyncMethod::Dsync => write_duration,
        SyncMethod::Fdatasync => {
            let sync_started = std::time::Instant::now();
            sync_file(&file, &path).await?;
            sync_started.elapsed()
        }
    };
    // An fdatasync covers the previous batch too, and an O_DSYNC write covers only
    // itself, but either way each batch's own task publishes it after the batches before
    // it, so publication stays in order.
    wait_synced(shared, first_unsynced_seq - 1).await?;
    let sync_micros = sync_duration.as_micros() as u64;

    let deletable = {
        let mut state = shared.state.borrow_mut();
        if state.writer_failed {
            let cause = state.failure.clone().unwrap_or(StorageError::Closed);
            return Err(StorageError::Stopped {
                cause: Box::new(cause),
            });
        }
        publish(&mut state, &batch, segment_seq, data_offset);
        state.synced_seq = batch_seq;
        if first_unsynced_seq < batch_seq && state.active_seq == segment_seq {
            state.active_checkpoint_durable = true;
        }
        if shared.config.sync_writes {
            state.fdatasynced_seq = batch_seq;
        }
        state.stats.batches += 1;
        state.stats.bytes += written_bytes;
        state.stats.entries += batch.entry_count;
        state.stats.write_micros_total += write_micros;
        if shared.config.sync_writes {
            state.stats.syncs += 1;
            state.stats.sync_micros_total += sync_micros;
            state.stats.sync_latency.record(sync_duration);
            state
                .stats
                .sync_latency_micros
                .record_duration_micros(sync_duration);
        }
        state.pending_bytes = state
            .pending_bytes
            .saturating_sub(batch.buffer.payload_len() as u64);
        state.durable = batch.last_submission;
        let published = state.published_batch;
        state.cache.evict(published);
        recycle_append_list(&mut state, batch);
        take_deletable_segments(&mut state)
    };
    shared.progress.notify_all();
    wake_durable_waiters(shared);
    delete_segments(shared, deletable).await
}

/// Spare append lists kept for reuse: enough for the batches that accumulate while one is
/// written, without holding on to memory after a burst.
const SPARE_APPEND_LISTS_MAX: usize = 2;

fn recycle_append_list(state: &mut State, batch: StagedBatch) {
    if state.spare_append_lists.len() >= SPARE_APPEND_LISTS_MAX {
        return;
    }
    let mut appended = batch.appended;
    appended.clear();
    state.spare_append_lists.push(appended);
}

/// Records where the batch's entries now are and what the checkpoint state became.
fn publish(state: &mut State, batch: &StagedBatch, segment_seq: u64, data_offset: u64) {
    let payload_start = data_offset + BATCH_HEADER_BYTES as u64;
    state
        .batch_places
        .push_back((batch.id, segment_seq, payload_start));
    state.published_batch = Some(batch.id);
    if let Some(segment) = state.segments.get_mut(&segment_seq) {
        // Appends of one group mostly follow one another, so a run of them updates the
        // segment's map once.
        for run in batch.appended.chunk_by(|a, b| a.0 == b.0) {
            let highest_in_run = run.iter().map(|(_, index)| *index).max();
            let highest = segment.max_index.entry(run[0].0).or_default();
            *highest = (*highest).max(highest_in_run.unwrap_or_default());
        }
    }
    for (group, change) in &batch.changes {
        let written = state.written.entry(*group).or_default();
        match *change {
            WrittenChange::HardState(hard_state) => written.hard_state = Some(hard_state),
            WrittenChange::Compact(index, term) => {
                written.compacted_index = index;
                written.compacted_term = term;
            }
        }
    }
}

/// Returns the place on disk of the record at `placement`, or `None` while its batch is
/// not published.
fn locate(state: &State, placement: Placement) -> Option<Location> {
    match placement {
        Placement::OnDisk(location) => Some(location),
        Placement::Staged {
            batch,
            payload_offset,
            len,
        } => {
            let position = state
                .batch_places
                .binary_search_by_key(&batch, |(id, _, _)| *id)
                .ok()?;
            let (_, segment_seq, payload_start) = state.batch_places[position];
            Some(Location {
                segment_seq,
                offset: payload_start + u64::from(payload_offset),
                len,
            })
        }
    }
}

/// Writes the checkpoint that opens the active segment. With `sync_writes`, the fdatasync
/// of the batch written after it makes it durable too, and this returns its batch number
/// for that batch to cover. A crash before that fdatasync can leave the checkpoint torn and
/// the batch intact. The batch's header records that the checkpoint was not synced yet,
/// and recovery truncates both. With O_DSYNC segments the checkpoint is durable once its
/// own write returns, and the same bookkeeping stays correct, only cautious. Without
/// `sync_writes`, where batches are not synced, the checkpoint gets an fdatasync of its own
/// and this returns `None`.
async fn write_checkpoint(shared: &Rc<Shared>) -> Result<Option<u64>, StorageError> {
    let (file, path, offset, buffer, checkpoint_seq) = {
        let mut state = shared.state.borrow_mut();
        let checkpoint = encode_checkpoint(&mut state);
        let segment = &state.segments[&state.active_seq];
        let file = Rc::clone(&segment.file);
        let path = segment.path.clone();
        if state.write_offset + checkpoint.len() as u64 > shared.config.segment_bytes {
            return Err(StorageError::BatchTooLarge {
                bytes: checkpoint.len() as u64,
                segment_bytes: shared.config.segment_bytes,
            });
        }
        let mut buffer = file.alloc_dma_buffer(checkpoint.len());
        buffer.as_bytes_mut().copy_from_slice(&checkpoint);
        let checkpoint_seq = state.next_batch_seq - 1;
        (file, path, state.write_offset, buffer, checkpoint_seq)
    };
    let written_bytes = buffer.len() as u64;
    write_all(&file, buffer, offset, &path).await?;
    if shared.config.sync_writes {
        let mut state = shared.state.borrow_mut();
        state.write_offset = offset + written_bytes;
        state.stats.bytes += written_bytes;
        return Ok(Some(checkpoint_seq));
    }
    let sync_started = std::time::Instant::now();
    sync_file(&file, &path).await?;
    let sync_duration = sync_started.elapsed();
    let mut state = shared.state.borrow_mut();
    state.write_offset = offset + written_bytes;
    // The checkpoint is the newest batch, every batch before it was published first, and
    // its fdatasync covers them all.
    state.synced_seq = state.next_batch_seq - 1;
    state.fdatasynced_seq = state.synced_seq;
    state.stats.syncs += 1;
    state.stats.bytes += written_bytes;
    state.stats.sync_latency.record(sync_duration);
    state
        .stats
        .sync_latency_micros
        .record_duration_micros(sync_duration);
    state.active_checkpoint_durable = true;
    Ok(None)
}

/// Encodes the checkpoint batch that opens a segment: every group's hard state and
/// compaction point as written so far. Also records them as the segment's checkpoint base.
fn encode_checkpoint(state: &mut State) -> Vec<u8> {
    let mut payload = Vec::new();
    let mut record_count = 0u32;
    let mut base = HashMap::new();
    for (group, written) in &state.written {
        if let Some(hard_state) = written.hard_state {
            let group = *group;
            format::encode_record(&Record::HardState { group, hard_state }, &mut payload);
            record_count += 1;
        }
        if written.compacted_index > LogIndex(0) {
            let record = Record::Compact {
                group: *group,
                through: written.compacted_index,
                term: written.compacted_term,
            };
            format::encode_record(&record, &mut payload);
            record_count += 1;
            base.insert(*group, written.compacted_index);
        }
    }
    let batch_seq = state.next_batch_seq;
    state.next_batch_seq += 1;
    let header =
        format::encode_batch_header(batch_seq, state.fdatasynced_seq, &payload, record_count);
    let mut bytes =
        Vec::with_capacity(align_up((BATCH_HEADER_BYTES + payload.len()) as u64) as usize);
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&payload);
    bytes.resize(align_up(bytes.len() as u64) as usize, 0);
    if let Some(segment) = state.segments.get_mut(&state.active_seq) {
        segment.checkpoint_base = base;
    }
    bytes
}

/// Switches to the prepared next segment and starts preparing the one after it.
async fn rotate(shared: &Rc<Shared>) -> Result<(), StorageError> {
    let next_seq = shared.state.borrow().active_seq + 1;
    let prepared = shared.state.borrow_mut().prepared.take();
    let file = match prepared {
        Some(task) => task.await?,
        None => {
            shared.state.borrow_mut().stats.segments_created += 1;
            let settings = SegmentSettings::from_config(&shared.config);
            let file = prepare_segment(&shared.dir, shared.identity, next_seq, settings).await?;
            shared.state.borrow_mut().stats.segments_prepared += 1;
            file
        }
    };
    {
        let mut state = shared.state.borrow_mut();
        state.segments.insert(
            next_seq,
            SegmentFile {
                seq: next_seq,
                path: segment_path(&shared.dir, next_seq),
                file,
                format_version: format::FORMAT_VERSION,
                max_index: HashMap::new(),
                checkpoint_base: HashMap::new(),
            },
        );
        state.active_seq = next_seq;
        state.write_offset = BLOCK_BYTES;
        state.active_checkpoint_durable = false;
        state.rotate_before_next_write = false;
        state.stats.rotations += 1;
    }
    tracing::debug!(dir = %shared.dir.display(), segment = next_seq, "started a new segment");
    start_preparing(shared, next_seq + 1);
    Ok(())
}

/// Removes from the map the oldest segments whose entries every group has compacted, as
/// proven by the newest checkpoint on disk. The oldest remaining segment's own checkpoint
/// may predate those compactions; recovery bridges that gap (see `Scan::replay`).
fn take_deletable_segments(state: &mut State) -> Vec<SegmentFile> {
    let proven_seq = if state.active_checkpoint_durable {
        state.active_seq
    } else {
        state.active_seq.saturating_sub(1)
    };
    let Some(proven) = state.segments.get(&proven_seq) else {
        return Vec::new();
    };
    let base = proven.checkpoint_base.clone();
    let mut deletable = Vec::new();
    while let Some((&oldest, segment)) = state.segments.first_key_value() {
        let covered = segment
            .max_index
            .iter()
            .all(|(group, index)| base.get(group).is_some_and(|base| base >= index));
        if oldest >= proven_seq || !covered {
            break;
        }
        if let Some(segment) = state.segments.remove(&oldest) {
            deletable.push(segment);
        }
    }
    // No stored entry lies in a retired segment, so no slot names the batches there.
    let oldest_kept = state.segments.first_key_value().map(|(seq, _)| *seq);
    while let Some((_, segment_seq, _)) = state.batch_places.front() {
        if oldest_kept.is_some_and(|oldest| *segment_seq >= oldest) {
            break;
        }
        state.batch_places.pop_front();
    }
    deletable
}

/// Compacted segments kept for recycling, at least; a log with more live segments keeps
/// more (see `recyclable_segments_max`).
const RECYCLABLE_SEGMENTS_MIN: usize = 2;

/// Compacted segments kept for recycling, at most, whatever the log's size.
const RECYCLABLE_SEGMENTS_MAX: usize = 8;

/// Returns how many compacted segments to keep for recycling when the log held
/// `live_segments` before a retirement. Groups compact in rounds, so segments retire in
/// bursts of up to the live count. A pool smaller than a burst removes segments that the
/// next rotations then create again, zero-filling each. With 2 kept, 4 KiB entries from
/// 256 appenders recycled 24 of 52 segments and the device wrote about half as much
/// again in zero fill.
fn recyclable_segments_max(live_segments: usize) -> usize {
    live_segments.clamp(RECYCLABLE_SEGMENTS_MIN, RECYCLABLE_SEGMENTS_MAX)
}

/// Retires segments every group has compacted: keeps a few to recycle as the next
/// segments and removes the rest. A kept segment stays a valid, if unneeded, part of the
/// log until it is recycled, so a crash in between loses nothing.
async fn delete_segments(
    shared: &Rc<Shared>,
    segments: Vec<SegmentFile>,
) -> Result<(), StorageError> {
    if segments.is_empty() {
        return Ok(());
    }
    let deleted = segments.len() as u64;
    {
        // Segments retire oldest first and files are removed oldest first, so the files
        // left form a contiguous run, which recovery requires.
        let mut state = shared.state.borrow_mut();
        let keep = recyclable_segments_max(state.segments.len() + segments.len());
        for segment in segments {
            state.recyclable.push(segment);
            if state.recyclable.len() > keep {
                let oldest = state.recyclable.remove(0);
                state.to_remove.push_back(oldest);
            }
        }
        state.stats.segments_deleted += deleted;
        if state.removing || state.to_remove.is_empty() {
            return Ok(());
        }
        state.removing = true;
    }
    // Sync tasks of several batches may retire segments while an earlier removal still
    // runs. Only one task removes files at a time, oldest first, until none is left, so a
    // crash never finds a newer segment removed and an older one still there.
    loop {
        let removed: Vec<SegmentFile> = {
            let mut state = shared.state.borrow_mut();
            if state.to_remove.is_empty() {
                state.removing = false;
                return Ok(());
            }
            state.to_remove.drain(..).collect()
        };
        for segment in &removed {
            // By the segment's current path: a recycled segment's file handle still names
            // the path it was first created under, which recycling renamed away.
            if let Err(error) = glommio::io::remove(&segment.path).await {
                tracing::warn!(
                    path = %segment.path.display(),
                    error = %glommio_io_error(error),
                    "could not delete a compacted segment; it will be retried at the next start"
                );
            }
        }
        sync_directory(&shared.dir).await?;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::signal::CountingWaker;

    fn counting_waker() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (Arc::clone(&counter), Waker::from(counter))
    }

    fn wake(wakers: Vec<Waker>) {
        wakers.into_iter().for_each(Waker::wake);
    }

    #[test]
    fn entry_cache_holds_its_budget_without_growing() {
        let bytes_max = 1 << 20;
        let mut cache = EntryCache::new(bytes_max);
        let reserved = cache.entries.capacity();
        let payload = Bytes::from_static(&[7; 16]);
        let per_entry = payload.len() as u64 + CACHE_ENTRY_OVERHEAD_BYTES;
        for _ in 0..(bytes_max / per_entry) * 3 {
            cache.insert(payload.clone(), None);
            cache.evict(None);
        }
        assert!(cache.bytes <= bytes_max);
        assert_eq!(
            cache.entries.capacity(),
            reserved,
            "the queue grew while the cache stayed within its budget"
        );
    }

    #[test]
    fn durable_waiters_wake_only_when_passed() {
        let mut waiters = DurableWaiters::default();
        let (first_count, first) = counting_waker();
        let (second_count, second) = counting_waker();
        waiters.register(BatchNumber(3), &first);
        waiters.register(BatchNumber(7), &second);

        wake(waiters.take_passed(BatchNumber(3)));
        assert_eq!(
            first_count.0.load(Ordering::Relaxed),
            0,
            "3 does not pass 3"
        );

        wake(waiters.take_passed(BatchNumber(4)));
        assert_eq!(first_count.0.load(Ordering::Relaxed), 1);
        assert_eq!(second_count.0.load(Ordering::Relaxed), 0);

        wake(waiters.take_passed(BatchNumber(9)));
        assert_eq!(second_count.0.load(Ordering::Relaxed), 1);
        assert!(waiters.waiting.is_empty());
    }

    #[test]
    fn durable_waiters_all_wake_when_stopped() {
        let mut waiters = DurableWaiters::default();
        let (low_count, low) = counting_waker();
        let (high_count, high) = counting_waker();
        waiters.register(BatchNumber(2), &low);
        waiters.register(BatchNumber(50), &high);

        wake(waiters.take_all());

        assert_eq!(low_count.0.load(Ordering::Relaxed), 1);
        assert_eq!(high_count.0.load(Ordering::Relaxed), 1);
        assert!(waiters.waiting.is_empty());
    }
}
