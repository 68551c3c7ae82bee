//! The behaviour every [`LogStore`] must have, written once and run against both the disk
//! log and the memory log, plus the disk log's own segment handling.

mod log_support;

use std::cell::RefCell;
use std::rc::Rc;

use log_support::{
    IDENTITY, TestDir, entries, entry, hard_state, payload, run, small_config, snapshot,
};
use shardraft::log::{
    BatchNumber, DiskLog, GroupId, Log, LogConfig, LogStore, MemoryLog, MemoryVolume, StorageError,
    SyncMethod, WriteBatch,
};
use shardraft::raft::{LogIndex, Term};

const G: GroupId = GroupId(7);

/// Opens a log and opens it again as a restarted process would.
trait Fixture {
    type Log: LogStore;

    async fn open(&mut self) -> Self::Log;

    /// Closes `log` and opens the same contents again.
    async fn restart(&mut self, log: Self::Log) -> Self::Log {
        log.close().await.expect("closing the log");
        drop(log);
        self.open().await
    }
}

struct DiskFixture {
    _dir: TestDir,
    config: LogConfig,
}

impl DiskFixture {
    fn new(name: &str) -> DiskFixture {
        let dir = TestDir::new(name);
        let config = small_config(&dir.path);
        DiskFixture { _dir: dir, config }
    }
}

impl Fixture for DiskFixture {
    type Log = DiskLog;

    async fn open(&mut self) -> DiskLog {
        DiskLog::open(&self.config, IDENTITY)
            .await
            .expect("opening the disk log")
    }
}

struct MemoryFixture {
    volume: Rc<RefCell<MemoryVolume>>,
}

impl Fixture for MemoryFixture {
    type Log = MemoryLog;

    async fn open(&mut self) -> MemoryLog {
        MemoryLog::on_volume(Rc::clone(&self.volume))
    }
}

fn run_disk<F: Future<Output = ()>>(name: &str, case: impl FnOnce(DiskFixture) -> F) {
    let fixture = DiskFixture::new(name);
    run(case(fixture));
}

/// Runs a case on the disk log with `sync_method = "fdatasync"`: each batch's write, then
/// an fdatasync, instead of O_DSYNC writes.
fn run_disk_fdatasync<F: Future<Output = ()>>(name: &str, case: impl FnOnce(DiskFixture) -> F) {
    let mut fixture = DiskFixture::new(&format!("{name}-fdatasync"));
    fixture.config.sync_method = SyncMethod::Fdatasync;
    run(case(fixture));
}

/// Runs a case on the disk log with `sync_writes` off, which behaves the same short of
/// power-loss safety.
fn run_disk_unsynced<F: Future<Output = ()>>(name: &str, case: impl FnOnce(DiskFixture) -> F) {
    let mut fixture = DiskFixture::new(&format!("{name}-unsynced"));
    fixture.config.sync_writes = false;
    run(case(fixture));
}

fn run_memory<F: Future<Output = ()>>(case: impl FnOnce(MemoryFixture) -> F) {
    let fixture = MemoryFixture {
        volume: Rc::default(),
    };
    run(case(fixture));
}

/// Instantiates each generic case once per implementation and sync setting, as
/// `disk::NAME` (O_DSYNC writes, the default), `disk_fdatasync::NAME`,
/// `disk_unsynced::NAME` and `memory::NAME`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod disk {
            $(
                #[test]
                fn $case() {
                    super::run_disk(stringify!($case), super::$case);
                }
            )*
        }
        mod disk_fdatasync {
            $(
                #[test]
                fn $case() {
                    super::run_disk_fdatasync(stringify!($case), super::$case);
                }
            )*
        }
        mod disk_unsynced {
            $(
                #[test]
                fn $case() {
                    super::run_disk_unsynced(stringify!($case), super::$case);
                }
            )*
        }
        mod memory {
            $(
                #[test]
                fn $case() {
                    super::run_memory(super::$case);
                }
            )*
        }
    };
}

conformance!(
    append_and_read_back,
    conflicting_suffix_is_replaced,
    truncate_drops_suffix,
    compact_drops_prefix,
    invalid_writes_are_rejected_whole,
    latest_hard_state_wins,
    interleaved_groups_survive_restart,
    read_respects_bytes_max,
    durability_numbers_rise_in_order,
    concurrent_waiters_each_see_their_batch,
    snapshot_beyond_the_end_restarts_the_log,
    snapshot_inside_a_conflicting_log_replaces_it,
    snapshot_below_the_compacted_index_drops_every_entry,
    snapshot_applies_in_batch_order,
    snapshot_at_index_zero_is_rejected,
);

async fn submit_durably<L: LogStore>(log: &L, batch: WriteBatch) -> BatchNumber {
    let number = log.submit(batch).expect("submitting a valid batch");
    let durable = log
        .wait_durable(BatchNumber(number.0 - 1))
        .await
        .expect("waiting for durability");
    assert!(
        durable >= number,
        "wait_durable returned {durable:?} before {number:?}"
    );
    number
}

async fn append<L: LogStore>(log: &L, group: GroupId, first: u64, last: u64, term: u64) {
    let mut batch = WriteBatch::new();
    batch.append(group, entries(group, first, last, term));
    submit_durably(log, batch).await;
}

async fn read_all<L: LogStore>(log: &L, group: GroupId) -> Vec<shardraft::raft::Entry> {
    let state = log.group_state(group).expect("the group has a state");
    log.read(
        group,
        state.first_index()..LogIndex(state.last_index.0 + 1),
        u64::MAX,
    )
    .await
    .expect("reading the stored entries")
}

async fn append_and_read_back<F: Fixture>(mut fixture: F) {
    let mut log = fixture.open().await;
    append(&log, G, 1, 10, 1).await;
    append(&log, G, 11, 20, 2).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        let state = log.group_state(G).expect("the group exists");
        assert_eq!(state.last_index, LogIndex(20), "last index");
        assert_eq!(state.last_term, Term(2), "last term");
        assert_eq!(log.group_ids(), vec![G], "exactly one group is stored");
        let read = read_all(&log, G).await;
        let mut expected = entries(G, 1, 10, 1);
        expected.extend(entries(G, 11, 20, 2));
        assert_eq!(
            read, expected,
            "entries read back differ from those appended"
        );
        assert_eq!(
            log.term(G, LogIndex(15)).expect("term of entry 15"),
            Term(2),
            "term of entry 15"
        );
        assert!(
            matches!(
                log.read(G, LogIndex(21)..LogIndex(22), u64::MAX).await,
                Err(StorageError::Unavailable { .. })
            ),
            "reading past the last index must fail with Unavailable"
        );
    }
    log.close().await.expect("closing");
}

async fn conflicting_suffix_is_replaced<F: Fixture>(mut fixture: F) {
    let mut log = fixture.open().await;
    append(&log, G, 1, 10, 1).await;
    // A new leader of term 3 overwrites from index 6, leaving a shorter log.
    append(&log, G, 6, 8, 3).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        let state = log.group_state(G).expect("the group exists");
        assert_eq!(
            state.last_index,
            LogIndex(8),
            "the old suffix 9..=10 must be gone"
        );
        assert_eq!(state.last_term, Term(3), "last term");
        let mut expected = entries(G, 1, 5, 1);
        expected.extend(entries(G, 6, 8, 3));
        assert_eq!(
            read_all(&log, G).await,
            expected,
            "entries after the overwrite"
        );
    }
    log.close().await.expect("closing");
}

async fn truncate_drops_suffix<F: Fixture>(mut fixture: F) {
    let log = fixture.open().await;
    append(&log, G, 1, 10, 1).await;
    let mut batch = WriteBatch::new();
    batch.truncate(G, LogIndex(4));
    submit_durably(&log, batch).await;

    let log = fixture.restart(log).await;
    let state = log.group_state(G).expect("the group exists");
    assert_eq!(
        state.last_index,
        LogIndex(3),
        "entries from 4 on must be gone"
    );
    assert_eq!(
        read_all(&log, G).await,
        entries(G, 1, 3, 1),
        "remaining entries"
    );

    // The log continues after the truncation point.
    append(&log, G, 4, 5, 2).await;
    let log = fixture.restart(log).await;
    let mut expected = entries(G, 1, 3, 1);
    expected.extend(entries(G, 4, 5, 2));
    assert_eq!(
        read_all(&log, G).await,
        expected,
        "entries appended after truncating"
    );
    log.close().await.expect("closing");
}

async fn compact_drops_prefix<F: Fixture>(mut fixture: F) {
    let mut log = fixture.open().await;
    append(&log, G, 1, 5, 1).await;
    append(&log, G, 6, 10, 2).await;
    let mut batch = WriteBatch::new();
    batch.compact(G, LogIndex(7));
    submit_durably(&log, batch).await;
    // Compacting below the earlier compaction does nothing.
    let mut batch = WriteBatch::new();
    batch.compact(G, LogIndex(3));
    submit_durably(&log, batch).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        let state = log.group_state(G).expect("the group exists");
        assert_eq!(state.compacted_index, LogIndex(7), "compacted index");
        assert_eq!(state.compacted_term, Term(2), "compacted term");
        assert_eq!(state.first_index(), LogIndex(8), "first index");
        assert_eq!(
            log.term(G, LogIndex(7))
                .expect("term at the compacted index"),
            Term(2),
            "term at the compacted index"
        );
        for index in [1, 7] {
            let read = log.read(G, LogIndex(index)..LogIndex(9), u64::MAX).await;
            assert!(
                matches!(read, Err(StorageError::Compacted { .. })),
                "reading from compacted index {index} must fail with Compacted, got {read:?}"
            );
        }
        assert!(
            matches!(
                log.term(G, LogIndex(6)),
                Err(StorageError::Compacted { .. })
            ),
            "the term below the compacted index must fail with Compacted"
        );
        assert_eq!(
            read_all(&log, G).await,
            entries(G, 8, 10, 2),
            "entries after compaction"
        );
    }
    log.close().await.expect("closing");
}

async fn invalid_writes_are_rejected_whole<F: Fixture>(mut fixture: F) {
    let other = GroupId(8);
    let log = fixture.open().await;
    append(&log, G, 1, 5, 2).await;
    let mut batch = WriteBatch::new();
    batch.compact(G, LogIndex(2));
    submit_durably(&log, batch).await;
    let before = snapshot(&log).await;
    let durable_before = log.durable().expect("durable number");

    let mut cases: Vec<(&str, WriteBatch)> = Vec::new();
    let mut gap = WriteBatch::new();
    gap.append(G, entries(G, 7, 7, 2));
    cases.push(("gap after the last index", gap));
    let mut lower_term = WriteBatch::new();
    lower_term.append(G, entries(G, 6, 6, 1));
    cases.push(("term below the previous entry", lower_term));
    let mut decreasing = WriteBatch::new();
    decreasing.append(G, vec![entry(6, 3, "a"), entry(7, 2, "b")]);
    cases.push(("decreasing terms within the append", decreasing));
    let mut at_compacted = WriteBatch::new();
    at_compacted.append(G, entries(G, 2, 3, 2));
    cases.push(("append at the compacted index", at_compacted));
    let mut below_compacted = WriteBatch::new();
    below_compacted.append(G, entries(G, 1, 6, 2));
    cases.push(("append below the compacted index", below_compacted));
    let mut beyond = WriteBatch::new();
    beyond.compact(G, LogIndex(6));
    cases.push(("compact beyond the last index", beyond));
    let mut truncate_compacted = WriteBatch::new();
    truncate_compacted.truncate(G, LogIndex(2));
    cases.push(("truncate at the compacted index", truncate_compacted));
    // A valid op for another group in front of an invalid one must not be applied either.
    let mut mixed = WriteBatch::new();
    mixed.append(other, entries(other, 1, 3, 1));
    mixed.set_hard_state(G, hard_state(9, Some(2), 4));
    mixed.append(G, entries(G, 6, 6, 2));
    mixed.append(G, entries(G, 8, 8, 2));
    cases.push(("valid ops followed by a gap", mixed));

    for (name, batch) in cases {
        let result = log.submit(batch);
        assert!(
            matches!(result, Err(StorageError::InvalidWrite { .. })),
            "{name}: expected InvalidWrite, got {result:?}"
        );
        assert_eq!(
            snapshot(&log).await,
            before,
            "{name}: a rejected batch changed the log"
        );
        assert_eq!(
            log.durable().expect("durable number"),
            durable_before,
            "{name}: a rejected batch took a batch number"
        );
    }

    // The log still accepts valid writes, numbered right after the last accepted one.
    let mut batch = WriteBatch::new();
    batch.append(G, entries(G, 6, 6, 2));
    let number = submit_durably(&log, batch).await;
    assert_eq!(
        number,
        BatchNumber(durable_before.0 + 1),
        "number of the next valid batch"
    );
    let log = fixture.restart(log).await;
    assert_eq!(
        log.group_ids(),
        vec![G],
        "the rejected batch for group 8 left nothing"
    );
    assert_eq!(
        read_all(&log, G).await,
        entries(G, 3, 6, 2),
        "entries after restart"
    );
    log.close().await.expect("closing");
}

async fn latest_hard_state_wins<F: Fixture>(mut fixture: F) {
    let mut log = fixture.open().await;
    let hard_only = GroupId(3);
    let mut batch = WriteBatch::new();
    batch.set_hard_state(hard_only, hard_state(1, None, 0));
    batch.set_hard_state(G, hard_state(1, Some(1), 0));
    submit_durably(&log, batch).await;
    let mut batch = WriteBatch::new();
    batch.set_hard_state(G, hard_state(2, Some(3), 0));
    batch.append(G, entries(G, 1, 2, 2));
    batch.set_hard_state(G, hard_state(2, Some(3), 2));
    submit_durably(&log, batch).await;
    let mut batch = WriteBatch::new();
    batch.set_hard_state(hard_only, hard_state(4, Some(2), 0));
    submit_durably(&log, batch).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        let state = log.group_state(G).expect("group 7 exists");
        assert_eq!(
            state.hard_state,
            hard_state(2, Some(3), 2),
            "hard state of group 7"
        );
        let state = log.group_state(hard_only).expect("group 3 exists");
        assert_eq!(
            state.hard_state,
            hard_state(4, Some(2), 0),
            "hard state of group 3"
        );
        assert_eq!(state.last_index, LogIndex(0), "group 3 has no entries");
    }
    log.close().await.expect("closing");
}

/// A tiny deterministic generator, so that failures reproduce without a seed file.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

async fn interleaved_groups_survive_restart<F: Fixture>(mut fixture: F) {
    const GROUPS: u64 = 64;
    let mut random = SplitMix(42);
    let mut last = vec![0u64; GROUPS as usize];
    let log = fixture.open().await;
    let mut number = BatchNumber(0);
    for _ in 0..300 {
        let mut batch = WriteBatch::new();
        for _ in 0..1 + random.below(4) {
            let group = random.below(GROUPS);
            let id = GroupId(group as u32);
            let count = 1 + random.below(3);
            let first = last[group as usize] + 1;
            let data: Vec<_> = (first..first + count)
                .map(|index| entry(index, 1, payload(id, index, 1, random.below(300) as usize)))
                .collect();
            batch.append(id, data);
            batch.set_hard_state(id, hard_state(1, Some(1), first - 1));
            last[group as usize] += count;
        }
        number = log.submit(batch).expect("submitting");
    }
    log.wait_durable(BatchNumber(number.0 - 1))
        .await
        .expect("waiting for durability");

    let log = fixture.restart(log).await;
    for group in 0..GROUPS {
        let id = GroupId(group as u32);
        let last_index = last[group as usize];
        let Some(state) = log.group_state(id) else {
            assert_eq!(last_index, 0, "group {group} is missing after restart");
            continue;
        };
        assert_eq!(
            state.last_index,
            LogIndex(last_index),
            "last index of group {group}"
        );
        let read = read_all(&log, id).await;
        assert_eq!(
            read.len() as u64,
            last_index,
            "entry count of group {group}"
        );
        for (offset, entry) in read.iter().enumerate() {
            let index = offset as u64 + 1;
            assert_eq!(entry.index, LogIndex(index), "index in group {group}");
            let expected = payload(id, index, 1, 0);
            assert!(
                entry.data.starts_with(&expected),
                "group {group} entry {index} holds {:?}",
                entry.data
            );
        }
    }
    log.close().await.expect("closing");
}

async fn read_respects_bytes_max<F: Fixture>(mut fixture: F) {
    let mut log = fixture.open().await;
    let mut batch = WriteBatch::new();
    let data: Vec<_> = (1..=10)
        .map(|index| entry(index, 1, vec![index as u8; 100]))
        .collect();
    batch.append(G, data);
    submit_durably(&log, batch).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        let range = LogIndex(1)..LogIndex(11);
        let cases = [
            (0, 1),
            (1, 1),
            (99, 1),
            (100, 1),
            (199, 1),
            (200, 2),
            (350, 3),
        ];
        for (bytes_max, expected) in cases {
            let read = log
                .read(G, range.clone(), bytes_max)
                .await
                .expect("reading");
            assert_eq!(
                read.len(),
                expected,
                "entries returned for bytes_max {bytes_max}"
            );
            assert_eq!(
                read[0].index,
                LogIndex(1),
                "first entry for bytes_max {bytes_max}"
            );
        }
        let read = log.read(G, range.clone(), u64::MAX).await.expect("reading");
        assert_eq!(read.len(), 10, "an unlimited read returns the whole range");
        let empty = log
            .read(G, LogIndex(5)..LogIndex(5), 0)
            .await
            .expect("reading");
        assert!(empty.is_empty(), "an empty range returns no entries");
    }
    log.close().await.expect("closing");
}

async fn durability_numbers_rise_in_order<F: Fixture>(mut fixture: F) {
    let log = fixture.open().await;
    assert_eq!(
        log.durable().expect("durable number"),
        BatchNumber(0),
        "nothing is durable before the first submission"
    );
    let mut last_durable = BatchNumber(0);
    for round in 0..20u64 {
        let mut numbers = Vec::new();
        for offset in 0..5u64 {
            let index = round * 5 + offset + 1;
            let mut batch = WriteBatch::new();
            batch.append(G, entries(G, index, index, 1));
            numbers.push(log.submit(batch).expect("submitting"));
        }
        let expected: Vec<_> = (1..=5).map(|k| BatchNumber(round * 5 + k)).collect();
        assert_eq!(numbers, expected, "batch numbers of round {round}");
        for number in numbers {
            let durable_now = log.durable().expect("durable number");
            assert!(
                durable_now >= last_durable,
                "durable() went back in round {round}"
            );
            let durable = log
                .wait_durable(BatchNumber(number.0 - 1))
                .await
                .expect("waiting for durability");
            assert!(
                durable >= number,
                "wait_durable({}) returned {durable:?}",
                number.0 - 1
            );
            assert!(
                durable >= last_durable,
                "wait_durable went back to {durable:?}"
            );
            last_durable = durable;
        }
    }
    // Waiting past everything submitted returns the durable number at once.
    let durable = log.wait_durable(BatchNumber(1000)).await.expect("waiting");
    assert_eq!(
        durable,
        BatchNumber(100),
        "durable number when nothing more is pending"
    );
    log.close().await.expect("closing");
}

/// Many tasks, one group each, submit and wait at once, in several rounds, as the appenders
/// of the log benchmark do: each wait ends once its own batch is durable, and no earlier.
async fn concurrent_waiters_each_see_their_batch<F: Fixture>(mut fixture: F)
where
    F::Log: Clone + 'static,
{
    const TASKS: u32 = 64;
    const ROUNDS: u64 = 5;
    let log = fixture.open().await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let log = log.clone();
            glommio::spawn_local(async move {
                let group = GroupId(100 + task);
                for index in 1..=ROUNDS {
                    let mut batch = WriteBatch::new();
                    batch.append(group, entries(group, index, index, 1));
                    let number = log.submit(batch).expect("submitting");
                    let durable = log
                        .wait_durable(BatchNumber(number.0 - 1))
                        .await
                        .expect("waiting for durability");
                    assert!(durable >= number, "{durable:?} returned for {number:?}");
                    assert!(
                        log.durable().expect("durable number") >= number,
                        "wait_durable returned before durable() reached {number:?}"
                    );
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    for task in 0..TASKS {
        let state = log
            .group_state(GroupId(100 + task))
            .expect("every task's group exists");
        assert_eq!(state.last_index, LogIndex(ROUNDS), "group of task {task}");
    }
    log.close().await.expect("closing");
}

/// Installs a snapshot through `index` of `term` for `group` and waits until it is durable.
async fn install_snapshot<L: LogStore>(log: &L, group: GroupId, index: u64, term: u64) {
    let mut batch = WriteBatch::new();
    batch.install_snapshot(group, LogIndex(index), Term(term));
    submit_durably(log, batch).await;
}

/// Checks that `group` contains nothing but a snapshot through `index` of `term`.
async fn assert_only_snapshot<L: LogStore>(log: &L, group: GroupId, index: u64, term: u64) {
    let state = log.group_state(group).expect("the group exists");
    assert_eq!(state.compacted_index, LogIndex(index), "compacted index");
    assert_eq!(state.compacted_term, Term(term), "compacted term");
    assert_eq!(state.last_index, LogIndex(index), "last index");
    assert_eq!(state.last_term, Term(term), "last term");
    assert_eq!(
        log.term(group, LogIndex(index))
            .expect("term at the snapshot"),
        Term(term),
        "term at the snapshot index"
    );
    assert!(
        read_all(log, group).await.is_empty(),
        "entries are left after the snapshot"
    );
}

async fn snapshot_beyond_the_end_restarts_the_log<F: Fixture>(mut fixture: F) {
    let mut log = fixture.open().await;
    append(&log, G, 1, 10, 1).await;
    let mut batch = WriteBatch::new();
    batch.set_hard_state(G, hard_state(3, Some(2), 10));
    submit_durably(&log, batch).await;
    install_snapshot(&log, G, 100, 3).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        assert_only_snapshot(&log, G, 100, 3).await;
        let state = log.group_state(G).expect("the group exists");
        assert_eq!(
            state.hard_state,
            hard_state(3, Some(2), 10),
            "the hard state survives the install"
        );
        let old = log.read(G, LogIndex(5)..LogIndex(6), u64::MAX).await;
        assert!(
            matches!(old, Err(StorageError::Compacted { .. })),
            "an entry below the snapshot must read as Compacted, got {old:?}"
        );
        let past = log.read(G, LogIndex(101)..LogIndex(102), u64::MAX).await;
        assert!(
            matches!(past, Err(StorageError::Unavailable { .. })),
            "an entry past the snapshot must read as Unavailable, got {past:?}"
        );
    }

    let mut stale = WriteBatch::new();
    stale.append(G, entries(G, 11, 11, 3));
    assert!(
        matches!(log.submit(stale), Err(StorageError::InvalidWrite { .. })),
        "an append at or below the snapshot index must be rejected"
    );
    let mut lower_term = WriteBatch::new();
    lower_term.append(G, entries(G, 101, 101, 2));
    assert!(
        matches!(
            log.submit(lower_term),
            Err(StorageError::InvalidWrite { .. })
        ),
        "an append below the snapshot's term must be rejected"
    );
    append(&log, G, 101, 105, 3).await;
    let log = fixture.restart(log).await;
    let state = log.group_state(G).expect("the group exists");
    assert_eq!(state.compacted_index, LogIndex(100), "compacted index");
    assert_eq!(state.last_index, LogIndex(105), "last index");
    assert_eq!(
        read_all(&log, G).await,
        entries(G, 101, 105, 3),
        "entries appended after the snapshot"
    );
    log.close().await.expect("closing");
}

async fn snapshot_inside_a_conflicting_log_replaces_it<F: Fixture>(mut fixture: F) {
    let other = GroupId(8);
    let mut log = fixture.open().await;
    append(&log, G, 1, 10, 1).await;
    append(&log, other, 1, 4, 1).await;
    let mut batch = WriteBatch::new();
    batch.compact(G, LogIndex(3));
    submit_durably(&log, batch).await;
    // The snapshot ends at entry 6 with term 2, which the stored entry 6 (term 1) does not
    // match: the whole stored log goes, entries 7 to 10 included.
    install_snapshot(&log, G, 6, 2).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        assert_only_snapshot(&log, G, 6, 2).await;
        assert_eq!(
            read_all(&log, other).await,
            entries(other, 1, 4, 1),
            "another group's entries are untouched"
        );
    }

    append(&log, G, 7, 9, 2).await;
    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        let state = log.group_state(G).expect("the group exists");
        assert_eq!(state.compacted_index, LogIndex(6), "compacted index");
        assert_eq!(state.compacted_term, Term(2), "compacted term");
        assert_eq!(state.last_index, LogIndex(9), "last index");
        assert_eq!(state.last_term, Term(2), "last term");
        assert_eq!(
            read_all(&log, G).await,
            entries(G, 7, 9, 2),
            "entries appended after the snapshot"
        );
    }
    log.close().await.expect("closing");
}

async fn snapshot_below_the_compacted_index_drops_every_entry<F: Fixture>(mut fixture: F) {
    let mut log = fixture.open().await;
    append(&log, G, 1, 10, 1).await;
    let mut batch = WriteBatch::new();
    batch.compact(G, LogIndex(8));
    submit_durably(&log, batch).await;
    install_snapshot(&log, G, 5, 1).await;

    for pass in 0..2 {
        if pass == 1 {
            log = fixture.restart(log).await;
        }
        assert_only_snapshot(&log, G, 5, 1).await;
    }
    append(&log, G, 6, 7, 4).await;
    let log = fixture.restart(log).await;
    assert_eq!(
        read_all(&log, G).await,
        entries(G, 6, 7, 4),
        "entries appended after the snapshot"
    );
    log.close().await.expect("closing");
}

async fn snapshot_applies_in_batch_order<F: Fixture>(mut fixture: F) {
    let log = fixture.open().await;
    append(&log, G, 1, 4, 1).await;
    // Ops before the install in the same batch are dropped by it; ops after it build on it.
    let mut batch = WriteBatch::new();
    batch.append(G, entries(G, 5, 8, 1));
    batch.install_snapshot(G, LogIndex(6), Term(2));
    batch.append(G, entries(G, 7, 9, 3));
    batch.compact(G, LogIndex(7));
    submit_durably(&log, batch).await;
    let expected = snapshot(&log).await;

    let log = fixture.restart(log).await;
    assert_eq!(snapshot(&log).await, expected, "contents after restart");
    let state = log.group_state(G).expect("the group exists");
    assert_eq!(state.compacted_index, LogIndex(7), "compacted index");
    assert_eq!(state.compacted_term, Term(3), "compacted term");
    assert_eq!(state.last_index, LogIndex(9), "last index");
    assert_eq!(
        read_all(&log, G).await,
        entries(G, 8, 9, 3),
        "entries after the batch"
    );
    log.close().await.expect("closing");
}

async fn snapshot_at_index_zero_is_rejected<F: Fixture>(mut fixture: F) {
    let log = fixture.open().await;
    append(&log, G, 1, 3, 1).await;
    let before = snapshot(&log).await;
    let mut batch = WriteBatch::new();
    batch.append(G, entries(G, 4, 4, 1));
    batch.install_snapshot(G, LogIndex(0), Term(1));

    let result = log.submit(batch);

    assert!(
        matches!(result, Err(StorageError::InvalidWrite { .. })),
        "expected InvalidWrite, got {result:?}"
    );
    assert_eq!(
        snapshot(&log).await,
        before,
        "a rejected batch changed the log"
    );
    log.close().await.expect("closing");
}

/// Appends `count` entries of `pad` payload bytes to each of `groups`, one batch per round
/// of the groups, and waits until all are durable.
async fn fill(log: &DiskLog, groups: &[GroupId], last: &mut [u64], count: u64, pad: usize) {
    let mut number = BatchNumber(0);
    for _ in 0..count {
        let mut batch = WriteBatch::new();
        for (slot, group) in groups.iter().enumerate() {
            let index = last[slot] + 1;
            batch.append(
                *group,
                vec![entry(index, 1, payload(*group, index, 1, pad))],
            );
            last[slot] = index;
        }
        number = log.submit(batch).expect("submitting");
    }
    log.wait_durable(BatchNumber(number.0 - 1))
        .await
        .expect("waiting for durability");
}

#[test]
fn oldest_segment_holders_not_compacted() {
    let mut fixture = DiskFixture::new("oldest-segment-holders");
    let (idle, busy) = (GroupId(7), GroupId(8));
    run(async {
        let log = fixture.open().await;
        let mut last = [0u64; 2];
        fill(&log, &[idle, busy], &mut last, 1, 1000).await;
        let mut busy_last = [last[1]];
        fill(&log, &[busy], &mut busy_last, 120, 1000).await;

        let oldest = log.oldest_segment_holders();
        assert!(oldest.live_segments >= 3, "{oldest:?}");
        assert_eq!(
            oldest.holders.first(),
            Some(&(idle, LogIndex(1))),
            "{oldest:?}"
        );
        assert!(
            oldest
                .holders
                .iter()
                .any(|(group, index)| *group == busy && index.0 > 1),
            "{oldest:?}"
        );

        let mut batch = WriteBatch::new();
        batch.compact(idle, LogIndex(1));
        batch.compact(busy, LogIndex(busy_last[0]));
        submit_durably(&log, batch).await;
        let oldest = log.oldest_segment_holders();
        assert_eq!(oldest.holders, [], "{oldest:?}");
        log.close().await.expect("closing");
    });
}

#[test]
fn compacted_segments_are_deleted() {
    let mut fixture = DiskFixture::new("compacted-segments-are-deleted");
    let groups = [GroupId(0), GroupId(1), GroupId(2)];
    let idle = GroupId(99);
    let idle_state = hard_state(5, Some(2), 0);
    run(async {
        let log = fixture.open().await;
        let first_segment = log.segment_paths()[0].clone();
        let mut batch = WriteBatch::new();
        batch.set_hard_state(idle, idle_state);
        submit_durably(&log, batch).await;
        let mut last = [0u64; 3];
        fill(&log, &groups, &mut last, 120, 1000).await;
        let segments_before = log.segment_paths().len();
        assert!(
            segments_before >= 4,
            "only {segments_before} segments after filling"
        );

        // Keep the last two entries of each group and compact the rest.
        let mut batch = WriteBatch::new();
        for (slot, group) in groups.iter().enumerate() {
            batch.compact(*group, LogIndex(last[slot] - 2));
            batch.set_hard_state(*group, hard_state(1, Some(1), last[slot]));
        }
        submit_durably(&log, batch).await;
        // Enough new entries that the compaction is recorded by a later segment's
        // checkpoint.
        fill(&log, &groups, &mut last, 60, 1000).await;

        let stats = log.stats();
        assert!(
            stats.segments_deleted > 0,
            "no segment was deleted: {stats:?}"
        );
        let segments_after = log.segment_paths();
        assert!(
            segments_after.len() < segments_before + stats.rotations as usize,
            "segment_paths() did not shrink: {segments_after:?}"
        );
        assert!(
            !segments_after.contains(&first_segment),
            "the first segment is still in use"
        );
        assert!(
            !first_segment.exists(),
            "the first segment file still exists"
        );

        let expected = snapshot(&log).await;
        let log = fixture.restart(log).await;
        assert_eq!(snapshot(&log).await, expected, "contents after restart");
        let state = log.group_state(idle).expect("the idle group survives");
        assert_eq!(state.hard_state, idle_state, "hard state of the idle group");
        for (slot, group) in groups.iter().enumerate() {
            let state = log.group_state(*group).expect("the group exists");
            assert_eq!(
                state.last_index,
                LogIndex(last[slot]),
                "last index of {group}"
            );
            let read = read_all(&log, *group).await;
            assert_eq!(
                read.len() as u64,
                last[slot] - state.compacted_index.0,
                "entries"
            );
        }
        log.close().await.expect("closing");
    });
}

#[test]
fn snapshot_install_retires_old_segments() {
    // Groups whose snapshot lies beyond every entry they wrote need none of the old
    // segments, once a later checkpoint records the snapshots.
    let mut fixture = DiskFixture::new("snapshot-install-retires-old-segments");
    let groups = [GroupId(0), GroupId(1)];
    run(async {
        let log = fixture.open().await;
        let first_segment = log.segment_paths()[0].clone();
        let mut last = [0u64; 2];
        fill(&log, &groups, &mut last, 120, 1000).await;
        let segments_before = log.segment_paths().len();
        assert!(
            segments_before >= 4,
            "only {segments_before} segments after filling"
        );

        let mut batch = WriteBatch::new();
        for (slot, group) in groups.iter().enumerate() {
            last[slot] += 1000;
            batch.install_snapshot(*group, LogIndex(last[slot]), Term(1));
        }
        submit_durably(&log, batch).await;
        fill(&log, &groups, &mut last, 60, 1000).await;

        let stats = log.stats();
        assert!(
            stats.segments_deleted > 0,
            "no segment was retired: {stats:?}"
        );
        assert!(
            !log.segment_paths().contains(&first_segment),
            "the first segment is still in use"
        );
        let expected = snapshot(&log).await;
        let log = fixture.restart(log).await;
        assert_eq!(snapshot(&log).await, expected, "contents after restart");
        for (slot, group) in groups.iter().enumerate() {
            let state = log.group_state(*group).expect("the group exists");
            assert_eq!(
                state.compacted_index,
                LogIndex(last[slot] - 60),
                "compacted index of {group}"
            );
            assert_eq!(
                state.last_index,
                LogIndex(last[slot]),
                "last index of {group}"
            );
        }
        log.close().await.expect("closing");
    });
}

#[test]
fn reads_after_segment_retirement_come_from_disk() {
    // Without a cache every read goes to the segments, through the places the log keeps
    // for each written batch; retiring segments prunes those places.
    let mut fixture = DiskFixture::new("reads-after-segment-retirement");
    fixture.config.entry_cache_bytes_max = 0;
    let groups = [GroupId(0), GroupId(1)];
    run(async {
        let log = fixture.open().await;
        let mut last = [0u64; 2];
        for _ in 0..6 {
            fill(&log, &groups, &mut last, 40, 1000).await;
            let mut batch = WriteBatch::new();
            for (slot, group) in groups.iter().enumerate() {
                batch.compact(*group, LogIndex(last[slot] - 10));
            }
            submit_durably(&log, batch).await;
        }
        assert!(
            log.stats().segments_deleted > 0,
            "no segment was retired: {:?}",
            log.stats()
        );
        for (slot, group) in groups.iter().enumerate() {
            let expected: Vec<_> = (last[slot] - 9..=last[slot])
                .map(|index| entry(index, 1, payload(*group, index, 1, 1000)))
                .collect();
            assert!(
                read_all(&log, *group).await == expected,
                "entries of {group} read from the segments differ"
            );
        }
        log.close().await.expect("closing");
    });
}

#[test]
fn reads_span_segments_from_disk() {
    let mut fixture = DiskFixture::new("reads-span-segments-from-disk");
    fixture.config.entry_cache_bytes_max = 0;
    let groups = [G];
    run(async {
        let log = fixture.open().await;
        let mut last = [0u64];
        fill(&log, &groups, &mut last, 300, 1500).await;
        assert!(
            log.segment_paths().len() >= 5,
            "expected at least five segments"
        );
        let expected: Vec<_> = (1..=300)
            .map(|index| entry(index, 1, payload(G, index, 1, 1500)))
            .collect();

        let mut log = log;
        for pass in 0..2 {
            if pass == 1 {
                log = fixture.restart(log).await;
            }
            let read = read_all(&log, G).await;
            assert_eq!(read.len(), expected.len(), "entry count");
            assert!(read == expected, "entries read from the segments differ");
            // Reads that start at every index and stop after about three entries.
            for start in 1..=298u64 {
                let read = log
                    .read(G, LogIndex(start)..LogIndex(301), 3 * 1500 + 100)
                    .await
                    .expect("reading");
                assert_eq!(read.len(), 3, "entries read from {start}");
                assert!(
                    read[..] == expected[start as usize - 1..start as usize + 2],
                    "entries read from {start} differ"
                );
            }
        }
        log.close().await.expect("closing");
    });
}

fn parse_config(text: &str) -> LogConfig {
    toml::from_str(text).unwrap_or_else(|error| panic!("parsing {text:?}: {error}"))
}

#[test]
fn log_open_selects_storage_from_config() {
    let dir = TestDir::new("log-open-selects-storage");
    let data_dir = format!("{:?}", dir.path.display().to_string());
    let disk = parse_config(&format!(
        "storage = \"disk\"\ndata_dir = {data_dir}\nsegment_bytes = 65536\n\
         flush_bytes_max = 16384\n"
    ));
    let memory = parse_config(&format!("storage = \"memory\"\ndata_dir = {data_dir}\n"));
    assert!(
        toml::from_str::<LogConfig>("storage = \"ssd\"").is_err(),
        "an unknown storage kind must not parse"
    );
    run(async {
        let log = Log::open(&disk, IDENTITY)
            .await
            .expect("opening the disk log");
        assert!(
            matches!(log, Log::Disk(_)),
            "storage = \"disk\" opened {log:?}"
        );
        append(&log, G, 1, 3, 1).await;
        log.close().await.expect("closing");
        let log = Log::open(&disk, IDENTITY)
            .await
            .expect("reopening the disk log");
        assert_eq!(
            read_all(&log, G).await,
            entries(G, 1, 3, 1),
            "disk entries after reopen"
        );
        log.close().await.expect("closing");

        let log = Log::open(&memory, IDENTITY)
            .await
            .expect("opening the memory log");
        assert!(
            matches!(log, Log::Memory(_)),
            "storage = \"memory\" opened {log:?}"
        );
        assert!(log.group_ids().is_empty(), "a new memory log starts empty");
        append(&log, G, 1, 3, 1).await;
        assert_eq!(
            read_all(&log, G).await,
            entries(G, 1, 3, 1),
            "memory entries"
        );
        log.close().await.expect("closing");
    });
    let shard_files = std::fs::read_dir(dir.shard_dir())
        .expect("listing the shard directory")
        .count();
    assert!(
        shard_files >= 2,
        "the disk log wrote no segment and identity file"
    );
}

#[test]
fn unsynced_log_syncs_checkpoints_only() {
    let mut fixture = DiskFixture::new("log-unsynced");
    fixture.config.sync_writes = false;
    run(async {
        let log = fixture.open().await;
        let mut last = [0u64];
        fill(&log, &[G], &mut last, 20, 100).await;
        let stats = log.stats();
        assert!(stats.batches >= 1, "no batch was written: {stats:?}");
        assert_eq!(
            stats.syncs, 1,
            "only the segment checkpoint may be synced: {stats:?}"
        );
        assert_eq!(stats.entries, 20, "entries made durable: {stats:?}");
        log.close().await.expect("closing");
    });
}

#[test]
fn checkpoint_shares_the_next_batchs_sync() {
    // A segment's checkpoint is made durable by the fdatasync of the batch written after
    // it, so that a rotation costs no fdatasync of its own.
    let mut fixture = DiskFixture::new("checkpoint-shares-sync");
    run(async {
        let log = fixture.open().await;
        let mut last = [0u64];
        fill(&log, &[G], &mut last, 1, 1000).await;
        let before = log.stats();
        for _ in 0..99 {
            let mut batch = WriteBatch::new();
            batch.append(
                G,
                vec![entry(last[0] + 1, 1, payload(G, last[0] + 1, 1, 1000))],
            );
            last[0] += 1;
            submit_durably(&log, batch).await;
        }
        let stats = log.stats();
        assert!(
            stats.rotations > before.rotations,
            "the test needs at least one rotation: {stats:?}"
        );
        assert_eq!(
            stats.syncs - before.syncs,
            99,
            "one sync per batch, none for the checkpoints: {stats:?}"
        );
        log.close().await.expect("closing");
    });
    // The checkpoints written this way open the log again with every entry.
    run(async {
        let log = fixture.open().await;
        let state = log.group_state(G).expect("group G");
        assert_eq!(state.last_index.0, 100, "every entry is recovered");
        log.close().await.expect("closing");
    });
}

#[test]
fn close_releases_every_segment_file() {
    // A process that opens and closes logs must not keep their files open. That covers
    // the live segments, the retired ones kept for recycling and the one prepared ahead.
    let mut fixture = DiskFixture::new("close-releases-files");
    // A small cache, so that the oldest entries are read from their segment.
    fixture.config.entry_cache_bytes_max = 16 * 1024;
    let shard_dir = fixture
        .config
        .data_dir
        .join(format!("shard-{}", IDENTITY.shard));
    let groups = [GroupId(0), GroupId(1)];
    run(async {
        let log = fixture.open().await;
        let mut last = [0u64; 2];
        fill(&log, &groups, &mut last, 120, 1000).await;
        let mut batch = WriteBatch::new();
        for (slot, group) in groups.iter().enumerate() {
            batch.compact(*group, LogIndex(last[slot] - 40));
        }
        submit_durably(&log, batch).await;
        fill(&log, &groups, &mut last, 60, 1000).await;
        let stats = log.stats();
        assert!(
            stats.segments_deleted > 0,
            "the test needs retired segments: {stats:?}"
        );
        let open_before = descriptors_under(&shard_dir);
        assert!(
            open_before.len() >= 2,
            "the open log holds its segment files: {open_before:?}"
        );
        let oldest = log.group_state(groups[0]).expect("group 0").first_index();
        let read = log.read(groups[0], oldest..LogIndex(oldest.0 + 1), u64::MAX);
        assert_eq!(read.await.expect("reading before close").len(), 1);
        let paths = log.segment_paths();

        log.close().await.expect("closing");
        let open_after = descriptors_under(&shard_dir);
        assert!(
            open_after.is_empty(),
            "files still open after close: {open_after:?}"
        );
        assert_eq!(log.segment_paths(), paths, "segment paths after close");
        let read = log.read(groups[0], oldest..LogIndex(oldest.0 + 1), u64::MAX);
        assert!(
            matches!(read.await, Err(StorageError::Closed)),
            "a read from a closed segment file reports the closed log"
        );
    });
    run(async {
        let log = fixture.open().await;
        let state = log.group_state(groups[0]).expect("group 0 after reopening");
        assert_eq!(state.last_index.0, 180, "every entry is recovered");
        log.close().await.expect("closing");
    });
}

/// Returns the descriptors of this process open on files under `dir`: the file, the
/// descriptor's number and its open flags as `/proc/self/fdinfo` shows them.
fn descriptors_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String, i32)> {
    let mut found = Vec::new();
    for fd in std::fs::read_dir("/proc/self/fd").expect("listing /proc/self/fd") {
        let fd = fd.expect("reading /proc/self/fd").file_name();
        let fd = fd.to_string_lossy().into_owned();
        // A descriptor may close between the listing and these reads, by this test or one
        // running beside it.
        let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        if !target.starts_with(dir) {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let octal = info
            .lines()
            .find_map(|line| line.strip_prefix("flags:"))
            .expect("fdinfo has a flags line")
            .trim();
        let flags = i32::from_str_radix(octal, 8).expect("octal open flags");
        found.push((target, fd, flags));
    }
    found
}

/// Checks that every segment of `log` is open, and open with O_DSYNC exactly when
/// `dsync_expected`. Descriptors numbered in `earlier` belong to a log opened before
/// and are left out: a glommio file dropped as its executor ends is never closed.
fn assert_segment_flags(
    log: &DiskLog,
    dir: &std::path::Path,
    earlier: &[String],
    dsync_expected: bool,
) {
    let dsync = nix::fcntl::OFlag::O_DSYNC.bits();
    let descriptors = descriptors_under(dir);
    let paths = log.segment_paths();
    assert!(!paths.is_empty(), "the log has segments");
    for path in paths {
        let path = path.canonicalize().expect("a segment path resolves");
        let flags: Vec<i32> = descriptors
            .iter()
            .filter(|(target, fd, _)| *target == path && !earlier.contains(fd))
            .map(|(_, _, flags)| *flags)
            .collect();
        assert!(!flags.is_empty(), "{} is not open", path.display());
        for flag in flags {
            assert_eq!(
                flag & dsync != 0,
                dsync_expected,
                "{} is open with flags {flag:o}",
                path.display()
            );
        }
    }
}

#[test]
fn segment_flags_follow_sync_method() {
    for (method, dsync_expected) in [(SyncMethod::Dsync, true), (SyncMethod::Fdatasync, false)] {
        let mut fixture = DiskFixture::new(&format!("open-flags-{method:?}"));
        fixture.config.sync_method = method;
        let dir = fixture
            .config
            .data_dir
            .canonicalize()
            .expect("the data directory resolves");
        // Enough 1000-byte entries to rotate through several 64 KiB segments, so that
        // prepared segments count as well as the first.
        run(async {
            let log = fixture.open().await;
            let mut last = [0u64];
            fill(&log, &[G], &mut last, 200, 1000).await;
            assert!(log.stats().rotations >= 2, "{:?}", log.stats());
            assert_segment_flags(&log, &dir, &[], dsync_expected);
            log.close().await.expect("closing");
        });
        let earlier: Vec<String> = descriptors_under(&dir)
            .into_iter()
            .map(|(_, fd, _)| fd)
            .collect();
        // Segments that recovery opens again get the same flags.
        run(async {
            let log = fixture.open().await;
            assert_segment_flags(&log, &dir, &earlier, dsync_expected);
            let state = log.group_state(G).expect("group G");
            assert_eq!(state.last_index.0, 200, "every entry is recovered");
            log.close().await.expect("closing");
        });
    }
}

/// Sequence numbers of the segment files in `dir`, and whether any file of an interrupted
/// recycling is left.
fn segment_files(dir: &std::path::Path) -> (Vec<u64>, bool) {
    let mut seqs = Vec::new();
    let mut recycling_left = false;
    for entry in std::fs::read_dir(dir).expect("listing the shard directory") {
        let path = entry.expect("reading a directory entry").path();
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("wal") => {
                let stem = path.file_stem().and_then(|stem| stem.to_str()).unwrap();
                seqs.push(stem.parse().expect("a segment name is a number"));
            }
            Some("recycling") => recycling_left = true,
            _ => {}
        }
    }
    seqs.sort_unstable();
    (seqs, recycling_left)
}

#[test]
fn recycled_segments_survive_restart_and_crash() {
    // Compacting often makes the log retire segments and reuse them as new ones, which
    // still hold batches of their earlier use; recovery must read those as the end.
    let mut fixture = DiskFixture::new("recycled-segments");
    let groups = [GroupId(0), GroupId(1)];
    run(async {
        let log = fixture.open().await;
        let shard_dir = log.dir().to_path_buf();
        let mut last = [0u64; 2];
        for _ in 0..12 {
            fill(&log, &groups, &mut last, 40, 1000).await;
            let mut batch = WriteBatch::new();
            for (slot, group) in groups.iter().enumerate() {
                batch.compact(*group, LogIndex(last[slot] - 5));
            }
            submit_durably(&log, batch).await;
        }
        let stats = log.stats();
        assert!(
            stats.segments_deleted >= 4,
            "too few segments retired: {stats:?}"
        );
        assert!(
            stats.segments_recycled > 0,
            "no segment was reused: {stats:?}"
        );
        // Every rotation took a prepared segment, and one more preparation started after
        // the last; by now all but that one finished.
        assert_eq!(
            stats.segments_created + stats.segments_recycled,
            stats.rotations + 1,
            "preparations: {stats:?}"
        );
        assert!(
            stats.segments_prepared >= stats.rotations,
            "preparations finished: {stats:?}"
        );
        // The active segment contains at least its header block and a checkpoint.
        assert!(
            log.active_segment_free_bytes() < log.segment_bytes() - 4096,
            "free bytes of the active segment: {}",
            log.active_segment_free_bytes()
        );

        let expected = snapshot(&log).await;
        let log = fixture.restart(log).await;
        assert_eq!(
            snapshot(&log).await,
            expected,
            "contents after a clean restart"
        );

        fill(&log, &groups, &mut last, 80, 1000).await;
        let expected = snapshot(&log).await;
        log.halt();
        // A crash ends every task of the log at once. In this process its flusher, sync
        // and segment tasks would keep running beside the next open and could rename or
        // remove files under its recovery, so they are waited for first.
        let _ = log.close().await;
        drop(log);
        let log = fixture.open().await;
        assert_eq!(snapshot(&log).await, expected, "contents after a crash");
        let (seqs, recycling_left) = segment_files(&shard_dir);
        assert!(!recycling_left, "a recycling file was left behind");
        for pair in seqs.windows(2) {
            assert_eq!(
                pair[1],
                pair[0] + 1,
                "segment files are not contiguous: {seqs:?}"
            );
        }
        log.close().await.expect("closing the log");
    });
}

#[test]
fn retired_segments_leave_the_directory() {
    // Segments are recycled, retired again and, once more than two wait for reuse,
    // removed. A recycled segment was renamed, so its removal must go by its current name.
    let mut fixture = DiskFixture::new("retired-segments-removed");
    let groups = [GroupId(0), GroupId(1)];
    run(async {
        let log = fixture.open().await;
        let shard_dir = log.dir().to_path_buf();
        let mut last = [0u64; 2];
        // Compactions far apart retire several segments at once, more than are kept.
        for cycle in 0..16 {
            let entries = if cycle % 2 == 0 { 40 } else { 300 };
            fill(&log, &groups, &mut last, entries, 1000).await;
            let mut batch = WriteBatch::new();
            for (slot, group) in groups.iter().enumerate() {
                batch.compact(*group, LogIndex(last[slot] - 5));
            }
            submit_durably(&log, batch).await;
        }
        let stats = log.stats();
        assert!(
            stats.segments_recycled > 3,
            "too few segments reused: {stats:?}"
        );

        let live = log.segment_paths().len();
        let (seqs, _) = segment_files(&shard_dir);
        // Live segments, the next one being prepared, and at most two kept for reuse.
        assert!(
            seqs.len() <= live + 3,
            "{} segment files for {live} live segments: {seqs:?}",
            seqs.len()
        );
        log.close().await.expect("closing the log");
    });
}
