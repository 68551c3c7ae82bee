//! Helpers shared by the write-ahead log test suites: data directories under the target
//! directory, configs, entries, an executor and a reader of whole group logs.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use shardraft::log::{GroupId, LogConfig, LogIdentity, LogStore, StorageKind, SyncMethod};
use shardraft::raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Term};

pub const IDENTITY: LogIdentity = LogIdentity {
    cluster_id: 0x5eed,
    node_id: 1,
    shard: 0,
};

/// A directory on a disk-backed filesystem, removed when dropped.
#[derive(Debug)]
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    /// Creates an empty directory named after `name`, the process id and a counter, so
    /// that tests running in parallel never share one.
    pub fn new(name: &str) -> TestDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}-{unique}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("creating a test directory");
        TestDir { path }
    }

    /// The shard directory the disk log creates inside the data directory.
    pub fn shard_dir(&self) -> PathBuf {
        self.path.join(format!("shard-{}", IDENTITY.shard))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A disk config with the smallest segments, so that a few hundred KiB of entries rotate
/// through several of them.
pub fn small_config(data_dir: &Path) -> LogConfig {
    LogConfig {
        storage: StorageKind::Disk,
        data_dir: data_dir.to_path_buf(),
        segment_bytes: 64 * 1024,
        flush_bytes_max: 16 * 1024,
        pending_bytes_max: 1 << 20,
        entry_cache_bytes_max: 1 << 20,
        zero_fill_segments: false,
        sync_writes: true,
        sync_method: SyncMethod::Dsync,
    }
}

/// Runs `future` to completion on a fresh glommio executor, with the engine's wake guard
/// so that a missed io_uring completion cannot hang a test.
pub fn run<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::default()
        .make()
        .expect("starting a glommio executor")
        .run(async {
            shardraft::wake_guard::spawn_wake_guard().detach();
            future.await
        })
}

pub fn entry(index: u64, term: u64, data: impl Into<Bytes>) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Normal,
        data: data.into(),
    }
}

/// Entries `first..=last` of `term`, each with a payload naming group, index and term.
pub fn entries(group: GroupId, first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last)
        .map(|index| entry(index, term, payload(group, index, term, 0)))
        .collect()
}

/// A recognisable payload of at least `pad` bytes.
pub fn payload(group: GroupId, index: u64, term: u64, pad: usize) -> Bytes {
    let mut text = format!("g{}-i{index}-t{term}", group.0);
    while text.len() < pad {
        text.push('.');
    }
    Bytes::from(text)
}

pub fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

/// The full contents of one group: its state and every stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub hard_state: HardState,
    pub compacted_index: LogIndex,
    pub compacted_term: Term,
    pub entries: Vec<Entry>,
}

/// Reads every group of `log` in full.
pub async fn snapshot<L: LogStore>(log: &L) -> Vec<(GroupId, GroupSnapshot)> {
    let mut groups = Vec::new();
    for group in log.group_ids() {
        let state = log.group_state(group).expect("a listed group has a state");
        let entries = log
            .read(
                group,
                state.first_index()..LogIndex(state.last_index.0 + 1),
                u64::MAX,
            )
            .await
            .expect("reading the stored entries of a group");
        groups.push((
            group,
            GroupSnapshot {
                hard_state: state.hard_state,
                compacted_index: state.compacted_index,
                compacted_term: state.compacted_term,
                entries,
            },
        ));
    }
    groups
}
