//! The write-ahead log of a shard: entries and hard state of every Raft group the shard
//! hosts, in one log, made durable in batches.
//!
//! The runtime hands the log a [`WriteBatch`] per turn of its loop, built from the `Ready`
//! batches of all its groups, and gets a [`BatchNumber`] back at once. The log writes
//! batches in the order they were submitted; [`LogStore::wait_durable`] reports, in order,
//! the highest batch number that is durable. Only then may the runtime tell the cores that
//! their writes persisted.
//!
//! Two implementations share the [`LogStore`] interface and one conformance suite:
//!
//! - [`DiskLog`]: segment files written with glommio's DMA files (O_DIRECT over io_uring).
//!   One write and one fdatasync make a batch durable, and while they are in flight the next
//!   batch accumulates, so a thousand concurrent writers cost one sync just as one writer
//!   does. The format is described in [`format`](self::format); recovery in `recovery.rs`.
//! - [`MemoryLog`]: process memory, durable at once; for tests and for clusters that
//!   replicate but do not persist.
//!
//! The log never retries a failed fdatasync: after one, it stops accepting writes and every
//! waiter gets the error, because a retried sync can succeed for data the kernel has already
//! dropped.
//!
//! A batch contains, per group and in order, appends (which replace a conflicting suffix),
//! hard states, truncations of a suffix, compactions of a prefix and snapshot installs.
//! A snapshot install ([`WriteBatch::install_snapshot`]) drops every entry of the group and
//! restarts its log after the snapshot's last index.
//!
//! This module must never decide anything about Raft itself: it stores what the core hands
//! it and checks only that each group's log stays contiguous.

mod config;
mod disk;
mod error;
pub mod format;
mod group;
mod identity;
mod memory;
mod recovery;
mod segment;
mod staging;

use std::future::Future;
use std::ops::Range;

use shardraft_raft::{Entry, HardState, LogIndex, Term};

pub use config::{
    LogConfig, LogConfigError, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, StorageKind, SyncMethod,
};
pub use disk::{DiskLog, DiskLogStats, SegmentHolders};
pub use error::{LogIdentity, StorageError};
pub use memory::{MemoryLog, MemoryVolume};
pub use recovery::prime_direct_io;

/// Bytes of glommio I/O memory (`LocalExecutorBuilder::io_memory`) for an executor that
/// hosts a log with `config`: room for 16 staging buffers of `flush_bytes_max`, and no
/// less than glommio's default of 10 MiB, which is what a memory log gets.
///
/// The log stages and writes its batches in this memory, which glommio allocates once and
/// registers with the ring. The batches written but not yet synced, the one being written
/// and those filling behind them take up to about eight buffers under load. A buffer that
/// does not fit comes from the heap, whose memory is often returned to the kernel between
/// batches and must be faulted in and zeroed again on the next use. glommio registers the
/// memory with its rings where CAP_IPC_LOCK or the memlock limit allows it, and then the
/// kernel pins all of it at start. Otherwise pages are touched only as buffers use them.
pub fn io_memory_bytes(config: &LogConfig) -> usize {
    const GLOMMIO_DEFAULT_IO_MEMORY_BYTES: usize = 10 << 20;
    const STAGING_BUFFERS: usize = 16;
    if config.storage == StorageKind::Memory {
        return GLOMMIO_DEFAULT_IO_MEMORY_BYTES;
    }
    let buffer_bytes = (config.flush_bytes_max as usize).next_power_of_two();
    STAGING_BUFFERS
        .saturating_mul(buffer_bytes)
        .max(GLOMMIO_DEFAULT_IO_MEMORY_BYTES)
}

/// Identity of one Raft group within a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Number of a submitted [`WriteBatch`], starting at 1 and rising by one per submission.
/// `BatchNumber(0)` means "nothing yet".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchNumber(pub u64);

/// One change to a group's log, in the order it was added to the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum WriteOp {
    /// Entries to store. Every stored entry at or after `entries[0].index` is dropped first.
    Append { group: GroupId, entries: Vec<Entry> },
    HardState {
        group: GroupId,
        hard_state: HardState,
    },
    /// Drop every entry at or after `from`.
    Truncate { group: GroupId, from: LogIndex },
    /// Drop every entry up to and including `through`.
    Compact { group: GroupId, through: LogIndex },
    /// Drop every entry and restart the log after a snapshot that ends at `index`, whose
    /// last entry had `term`.
    InstallSnapshot {
        group: GroupId,
        index: LogIndex,
        term: Term,
    },
}

impl WriteOp {
    pub(crate) fn group(&self) -> GroupId {
        match self {
            WriteOp::Append { group, .. }
            | WriteOp::HardState { group, .. }
            | WriteOp::Truncate { group, .. }
            | WriteOp::Compact { group, .. }
            | WriteOp::InstallSnapshot { group, .. } => *group,
        }
    }
}

/// Changes to the logs of any number of groups, made durable together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub(crate) ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds entries for `group`. Entries must be contiguous; if the first one's index is at
    /// or below the group's last index, the stored entries from that index on are replaced,
    /// as the Raft core expects when a leader overwrites a conflicting suffix.
    pub fn append(&mut self, group: GroupId, entries: Vec<Entry>) -> &mut Self {
        if !entries.is_empty() {
            self.ops.push(WriteOp::Append { group, entries });
        }
        self
    }

    /// Sets the term, vote and commit index of `group`. They are stored as one record.
    pub fn set_hard_state(&mut self, group: GroupId, hard_state: HardState) -> &mut Self {
        self.ops.push(WriteOp::HardState { group, hard_state });
        self
    }

    /// Drops the entries of `group` at and after `from`.
    pub fn truncate(&mut self, group: GroupId, from: LogIndex) -> &mut Self {
        self.ops.push(WriteOp::Truncate { group, from });
        self
    }

    /// Drops the entries of `group` up to and including `through`, which must not exceed
    /// its last index. Compacting below an earlier compaction does nothing.
    pub fn compact(&mut self, group: GroupId, through: LogIndex) -> &mut Self {
        self.ops.push(WriteOp::Compact { group, through });
        self
    }

    /// Replaces the whole log of `group` with a snapshot that covers every entry through
    /// `index`, the last of which had `term`. Every stored entry of the group is dropped,
    /// whatever its index, and the group's compacted index and term become `index` and
    /// `term`, so that its last index is `index` and the next append starts at `index + 1`.
    /// The hard state is kept.
    ///
    /// Valid wherever `index` lies: below the compacted index, inside the stored entries
    /// (their term may differ) or beyond the last one, as when a follower receives a
    /// snapshot far past its log. The log stores what it is given, so deciding whether a
    /// snapshot is stale is the Raft core's job. `index` must be at least 1.
    pub fn install_snapshot(&mut self, group: GroupId, index: LogIndex, term: Term) -> &mut Self {
        self.ops
            .push(WriteOp::InstallSnapshot { group, index, term });
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Entry payload bytes in this batch, the measure of pending work.
    pub fn entry_bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Append { entries, .. } => entries
                    .iter()
                    .map(|entry| format::record_bytes(entry.data.len()) as u64)
                    .sum(),
                _ => format::RECORD_HEADER_BYTES as u64,
            })
            .sum()
    }
}

/// The contents of the log for one group: hard state and bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupState {
    /// The last hard state written; the default (term 0, no vote) if none was.
    pub hard_state: HardState,
    /// Last index removed by compaction, 0 if none.
    pub compacted_index: LogIndex,
    /// Term of the entry at `compacted_index`.
    pub compacted_term: Term,
    /// Index of the last entry, equal to `compacted_index` when no entry is stored.
    pub last_index: LogIndex,
    pub last_term: Term,
}

impl GroupState {
    /// Index of the first stored entry (one past the compacted prefix).
    pub fn first_index(&self) -> LogIndex {
        LogIndex(self.compacted_index.0 + 1)
    }
}

/// The interface the shard runtime uses, implemented by [`DiskLog`], [`MemoryLog`] and
/// [`Log`].
///
/// Handles are cheap to clone and share one log; every method takes `&self` so that one
/// task can wait for durability while another submits. Reads see every submitted batch,
/// durable or not.
pub trait LogStore {
    /// Groups with anything stored, in ascending order.
    fn group_ids(&self) -> Vec<GroupId>;

    /// What the log holds for `group`, or `None` if nothing was ever written for it.
    fn group_state(&self, group: GroupId) -> Option<GroupState>;

    /// Queues `batch` and returns its number without waiting for the disk.
    ///
    /// # Errors
    /// [`StorageError::InvalidWrite`] if an append would leave a gap, reorder terms or
    /// overwrite compacted entries (the batch is then rejected whole); the error that stopped
    /// the log if it stopped.
    fn submit(&self, batch: WriteBatch) -> Result<BatchNumber, StorageError>;

    /// The highest durable batch number.
    ///
    /// # Errors
    /// The error that stopped the log, if it stopped.
    fn durable(&self) -> Result<BatchNumber, StorageError>;

    /// Waits until the durable batch number exceeds `after` and returns it; returns the
    /// current durable number at once if no batch after `after` was submitted.
    ///
    /// # Errors
    /// The error that stopped the log, if it stopped.
    fn wait_durable(
        &self,
        after: BatchNumber,
    ) -> impl Future<Output = Result<BatchNumber, StorageError>>;

    /// Whether pending (submitted, not yet durable) bytes are below the configured limit.
    fn has_room(&self) -> bool;

    /// Term of the entry at `index` of `group`, including the compacted boundary.
    fn term(&self, group: GroupId, index: LogIndex) -> Result<Term, StorageError>;

    /// Reads entries of `group` in `range`, stopping once `bytes_max` payload bytes are
    /// collected but always returning at least one entry of a non-empty range.
    fn read(
        &self,
        group: GroupId,
        range: Range<LogIndex>,
        bytes_max: u64,
    ) -> impl Future<Output = Result<Vec<Entry>, StorageError>>;

    /// Makes everything submitted durable and stops the log. Later submissions fail with
    /// [`StorageError::Closed`]. A disk log also closes its segment files, so a later read
    /// of an entry that is no longer in its cache fails the same way.
    fn close(&self) -> impl Future<Output = Result<(), StorageError>>;
}

/// A log of either kind, chosen by [`LogConfig::storage`].
#[derive(Clone, Debug)]
pub enum Log {
    Disk(DiskLog),
    Memory(MemoryLog),
}

impl Log {
    /// Opens the log of shard `identity.shard` as the config selects. A disk log recovers what
    /// its directory holds; a memory log starts empty.
    ///
    /// Must run inside a glommio executor.
    ///
    /// # Errors
    /// Invalid config values, and every error [`DiskLog::open`] returns.
    pub async fn open(config: &LogConfig, identity: LogIdentity) -> Result<Log, StorageError> {
        config.validate()?;
        match config.storage {
            StorageKind::Disk => Ok(Log::Disk(DiskLog::open(config, identity).await?)),
            StorageKind::Memory => Ok(Log::Memory(MemoryLog::new(config))),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $log:ident => $call:expr) => {
        match $self {
            Log::Disk($log) => $call,
            Log::Memory($log) => $call,
        }
    };
}

impl LogStore for Log {
    fn group_ids(&self) -> Vec<GroupId> {
        delegate!(self, log => log.group_ids())
    }

    fn group_state(&self, group: GroupId) -> Option<GroupState> {
        delegate!(self, log => log.group_state(group))
    }

    fn submit(&self, batch: WriteBatch) -> Result<BatchNumber, StorageError> {
        delegate!(self, log => log.submit(batch))
    }

    fn durable(&self) -> Result<BatchNumber, StorageError> {
        delegate!(self, log => log.durable())
    }

    async fn wait_durable(&self, after: BatchNumber) -> Result<BatchNumber, StorageError> {
        delegate!(self, log => log.wait_durable(after).await)
    }

    fn has_room(&self) -> bool {
        delegate!(self, log => log.has_room())
    }

    fn term(&self, group: GroupId, index: LogIndex) -> Result<Term, StorageError> {
        delegate!(self, log => log.term(group, index))
    }

    async fn read(
        &self,
        group: GroupId,
        range: Range<LogIndex>,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        delegate!(self, log => log.read(group, range, bytes_max).await)
    }

    async fn close(&self) -> Result<(), StorageError> {
        delegate!(self, log => log.close().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_memory_fits_sixteen_staging_buffers() {
        const MIB: u64 = 1 << 20;
        let disk = |flush_bytes_max| LogConfig {
            flush_bytes_max,
            ..LogConfig::default()
        };

        assert_eq!(io_memory_bytes(&disk(MIB)), 16 << 20);
        assert_eq!(io_memory_bytes(&disk(4 * MIB)), 64 << 20);
        // Buffers are powers of two, so 1.5 MiB takes 2 MiB.
        assert_eq!(io_memory_bytes(&disk(3 * MIB / 2)), 32 << 20);
        // Never below glommio's default.
        assert_eq!(io_memory_bytes(&disk(64 << 10)), 10 << 20);
    }

    #[test]
    fn memory_log_keeps_default_io_memory() {
        let config = LogConfig {
            storage: StorageKind::Memory,
            ..LogConfig::default()
        };

        assert_eq!(io_memory_bytes(&config), 10 << 20);
    }
}
