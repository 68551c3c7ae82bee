//! Snapshots of the groups' state machines: taking them in the background, storing them,
//! and the counters of both. [docs/snapshots.md](../../docs/snapshots.md) describes the
//! whole flow, transfers and crash safety included.
//!
//! - [`file`]: the snapshot file format, a checksummed runtime header (group, index, term,
//!   membership) around the state machine's bytes.
//! - [`SnapshotStore`] (`store.rs`): the files of one node's groups, written atomically
//!   (temporary file, fdatasync, rename, directory sync), or process memory for the memory
//!   storage; also the partial files of snapshots being received.
//! - [`build_file`]: serializes a state machine's view into a snapshot file in steps,
//!   yielding to the executor between them, so that a large state does not stall the
//!   shard's loop.
//!
//! Transfers between nodes live in the transport (`transport/snapshot_stream.rs`).

pub mod file;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shardraft_raft::SnapshotMeta;

pub use file::{SnapshotFile, SnapshotFileError};
pub use store::{
    FoundSnapshots, SnapshotError, SnapshotReader, SnapshotStore, StoredSnapshot, TransferIdentity,
};

use crate::log::GroupId;
use crate::metrics::LatencyHistogram;
use crate::state_machine::SnapshotView;

/// Bytes serialized or checksummed per step, between which the task yields when the
/// executor's preemption timer has fired.
pub const SERIALIZE_STEP_BYTES: usize = 64 * 1024;

/// Serializes `view` as the snapshot of `group` at `meta` into a whole snapshot file, in
/// steps of [`SERIALIZE_STEP_BYTES`]. Between steps it yields whenever the executor wants
/// to preempt it, so that the executor polls for I/O and runs the shard's other task
/// queues; an unconditional yield would keep the executor in this task queue, without
/// polling, until its preemption timer fired.
pub async fn build_file<V: SnapshotView>(
    group: GroupId,
    meta: &SnapshotMeta,
    mut view: V,
) -> Bytes {
    let mut out = Vec::new();
    file::encode_header(group, meta, 0, &mut out);
    let data_start = out.len();
    while !view.serialize_step(&mut out, SERIALIZE_STEP_BYTES) {
        glommio::yield_if_needed().await;
    }
    let data_length = (out.len() - data_start) as u64;
    let length_at = file::data_length_offset(meta);
    out[length_at..length_at + 8].copy_from_slice(&data_length.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    for chunk in out.chunks(SERIALIZE_STEP_BYTES * 4) {
        hasher.update(chunk);
        glommio::yield_if_needed().await;
    }
    file::finish(&mut out, hasher.finalize());
    Bytes::from(out)
}

/// Counts of the snapshots a node's shards began and ended taking, shared with the
/// application through [`NodeHandle::snapshot_activity`](crate::node::NodeHandle::snapshot_activity).
/// A load generator reads a [`SnapshotActivityMark`] before and after each request to tell
/// whether a snapshot was being taken while the request ran.
#[derive(Debug, Default)]
pub struct SnapshotActivity {
    begun: AtomicU64,
    ended: AtomicU64,
}

/// The counts of a [`SnapshotActivity`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotActivityMark {
    /// Snapshots whose view was taken.
    pub begun: u64,
    /// Snapshots stored durably or failed.
    pub ended: u64,
}

impl SnapshotActivity {
    /// Records that a shard took a snapshot's view and starts serializing it.
    pub fn begin(&self) {
        self.begun.fetch_add(1, Ordering::Release);
    }

    /// Records that a snapshot begun with [`SnapshotActivity::begin`] was stored or failed.
    pub fn end(&self) {
        self.ended.fetch_add(1, Ordering::Release);
    }

    /// Reads both counts. `ended` is read first, so a mark never shows more ended than begun.
    pub fn mark(&self) -> SnapshotActivityMark {
        let ended = self.ended.load(Ordering::Acquire);
        let begun = self.begun.load(Ordering::Acquire);
        SnapshotActivityMark { begun, ended }
    }
}

impl SnapshotActivityMark {
    /// Adds the counts of `other` (another node's), for a cluster-wide mark.
    pub fn add(&mut self, other: SnapshotActivityMark) {
        self.begun += other.begun;
        self.ended += other.ended;
    }

    /// Whether a snapshot was being taken at some moment between this mark and `later`: one
    /// was in progress at this mark, or one began after it.
    pub fn overlaps(self, later: SnapshotActivityMark) -> bool {
        self.begun > self.ended || later.begun > self.begun
    }
}

/// Counters of the snapshots one shard took and installed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots taken and stored durably.
    pub taken: u64,
    /// Snapshots whose creation or storing failed.
    pub failed: u64,
    /// Time from taking the view to the durable store, per snapshot taken.
    pub creation: LatencyHistogram,
    /// Size of the last snapshot file this shard took, in bytes.
    pub last_file_bytes: u64,
    /// Snapshots received from a leader and installed into the state machine.
    pub installed: u64,
    /// Bytes of state machine data installed from received snapshots.
    pub installed_bytes: u64,
    /// Time spent restoring state machines from installed snapshots.
    pub install_time: Duration,
    /// Time from the `SnapshotBegin` of the connection that completed a received snapshot
    /// to its durable store, per received snapshot.
    pub receive: LatencyHistogram,
}

impl SnapshotStats {
    /// Adds `other` (of another shard); `last_file_bytes` becomes the larger one.
    pub fn merge(&mut self, other: &SnapshotStats) {
        self.taken += other.taken;
        self.failed += other.failed;
        self.creation.merge(&other.creation);
        self.last_file_bytes = self.last_file_bytes.max(other.last_file_bytes);
        self.installed += other.installed;
        self.installed_bytes += other.installed_bytes;
        self.install_time += other.install_time;
        self.receive.merge(&other.receive);
    }

    /// Installed bytes per second of receiving and restoring, or `None` before the first
    /// install.
    pub fn install_bytes_per_second(&self) -> Option<f64> {
        let seconds = self.receive.sum_seconds() + self.install_time.as_secs_f64();
        (self.installed > 0 && seconds > 0.0).then(|| self.installed_bytes as f64 / seconds)
    }
}
