//! Random sequences of writes, waits and crashes against a model. After a crash the disk
//! log must hold the model's state after some prefix of the submitted batches, at least as
//! long as the batches it reported durable. The memory log, run through the same sequences,
//! loses nothing.

mod log_support;

use log_support::{GroupSnapshot, IDENTITY, TestDir, entry, hard_state, payload, small_config};
use proptest::prelude::*;
use shardraft::log::{
    BatchNumber, DiskLog, GroupId, LogConfig, LogStore, MemoryLog, StorageError, SyncMethod,
    WriteBatch,
};
use shardraft::raft::{Entry, LogIndex, Term};

const GROUPS: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Appends `count` entries starting `overlap` entries before the end of the log.
    Append {
        group: u32,
        overlap: u64,
        count: u64,
        new_term: bool,
        pad: usize,
    },
    HardState {
        group: u32,
        vote: Option<u64>,
    },
    /// Truncates the last `back` entries.
    Truncate {
        group: u32,
        back: u64,
    },
    /// Compacts all but the last `back` entries.
    Compact {
        group: u32,
        back: u64,
    },
    /// Installs a snapshot `shift` entries past the last index (before it when negative),
    /// so below, inside or beyond the stored entries.
    InstallSnapshot {
        group: u32,
        shift: i64,
        new_term: bool,
    },
    Wait,
    Crash,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..GROUPS, 0..4u64, 1..5u64, any::<bool>(), 0..600usize).prop_map(
            |(group, overlap, count, new_term, pad)| Op::Append {
                group,
                overlap,
                count,
                new_term,
                pad
            }
        ),
        2 => (0..GROUPS, proptest::option::of(1..4u64))
            .prop_map(|(group, vote)| Op::HardState { group, vote }),
        1 => (0..GROUPS, 0..3u64).prop_map(|(group, back)| Op::Truncate { group, back }),
        1 => (0..GROUPS, 0..6u64).prop_map(|(group, back)| Op::Compact { group, back }),
        1 => (0..GROUPS, -8..12i64, any::<bool>()).prop_map(|(group, shift, new_term)| {
            Op::InstallSnapshot { group, shift, new_term }
        }),
        1 => Just(Op::Wait),
        1 => Just(Op::Crash),
    ]
}

/// Turns `op` into a valid batch for the log state `current`.
fn batch_for(current: &MemoryLog, op: &Op) -> Option<WriteBatch> {
    let state = |group: u32| current.group_state(GroupId(group)).unwrap_or_default();
    let mut batch = WriteBatch::new();
    match *op {
        Op::Append {
            group,
            overlap,
            count,
            new_term,
            pad,
        } => {
            let id = GroupId(group);
            let now = state(group);
            let first = (now.last_index.0 + 1)
                .saturating_sub(overlap)
                .max(now.compacted_index.0 + 1);
            let previous = current
                .term(id, LogIndex(first - 1))
                .expect("the entry before an append has a term");
            let term = (previous.0 + u64::from(new_term)).max(now.hard_state.term.0);
            let entries: Vec<Entry> = (first..first + count)
                .map(|index| entry(index, term, payload(id, index, term, pad)))
                .collect();
            batch.append(id, entries);
        }
        Op::HardState { group, vote } => {
            let now = state(group);
            let term = now.hard_state.term.0.max(now.last_term.0) + 1;
            batch.set_hard_state(GroupId(group), hard_state(term, vote, now.last_index.0));
        }
        Op::Truncate { group, back } => {
            let now = state(group);
            let from = (now.last_index.0 + 1)
                .saturating_sub(back)
                .max(now.compacted_index.0 + 1);
            batch.truncate(GroupId(group), LogIndex(from));
        }
        Op::Compact { group, back } => {
            let now = state(group);
            let through = now.last_index.0.saturating_sub(back);
            batch.compact(GroupId(group), LogIndex(through));
        }
        Op::InstallSnapshot {
            group,
            shift,
            new_term,
        } => {
            let now = state(group);
            let index = now.last_index.0.saturating_add_signed(shift).max(1);
            let term = now.last_term.0 + u64::from(new_term);
            batch.install_snapshot(GroupId(group), LogIndex(index), Term(term));
        }
        Op::Wait | Op::Crash => return None,
    }
    Some(batch)
}

type Snapshot = Vec<(GroupId, GroupSnapshot)>;

/// The non-empty groups of `log`. Empty groups are not compared, because a no-op
/// compaction of a new group leaves an empty group in memory that no record persists.
async fn contents<L: LogStore>(log: &L) -> Snapshot {
    let empty = GroupSnapshot {
        hard_state: Default::default(),
        compacted_index: LogIndex(0),
        compacted_term: Default::default(),
        entries: Vec::new(),
    };
    log_support::snapshot(log)
        .await
        .into_iter()
        .filter(|(_, group)| *group != empty)
        .collect()
}

fn replay(batches: &[WriteBatch]) -> MemoryLog {
    let log = MemoryLog::new(&LogConfig::default());
    for batch in batches {
        log.submit(batch.clone())
            .expect("the model accepts every batch");
    }
    log
}

/// A log under test that a crash can take down and bring back.
trait Subject {
    type Log: LogStore;
    async fn open(&mut self) -> Self::Log;
    /// Stops `log` as a crash would and returns whether batches not yet durable may be lost.
    async fn crash(&mut self, log: Self::Log) -> bool;
}

struct DiskSubject {
    _dir: TestDir,
    config: LogConfig,
}

impl Subject for DiskSubject {
    type Log = DiskLog;

    async fn open(&mut self) -> DiskLog {
        DiskLog::open(&self.config, IDENTITY)
            .await
            .expect("opening the disk log")
    }

    async fn crash(&mut self, log: DiskLog) -> bool {
        log.halt();
        // Waits for the write in flight, if any, to finish or fail.
        let _ = log.close().await;
        true
    }
}

struct MemorySubject {
    volume: std::rc::Rc<std::cell::RefCell<shardraft::log::MemoryVolume>>,
}

impl Subject for MemorySubject {
    type Log = MemoryLog;

    async fn open(&mut self) -> MemoryLog {
        MemoryLog::on_volume(std::rc::Rc::clone(&self.volume))
    }

    async fn crash(&mut self, log: MemoryLog) -> bool {
        log.close().await.expect("closing the memory log");
        false
    }
}

async fn check_sequence<S: Subject>(mut subject: S, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut log = subject.open().await;
    // Every batch accepted since the test began, in order, and how many are durable.
    let mut history: Vec<WriteBatch> = Vec::new();
    let mut durable = 0usize;
    // Length of `history` when the current log was opened; batch numbers count from it.
    let mut epoch_start = 0usize;
    let mut current = replay(&history);

    for op in ops {
        if let Some(batch) = batch_for(&current, &op) {
            let expected = current.submit(batch.clone());
            let found = log.submit(batch.clone());
            prop_assert_eq!(found.is_ok(), expected.is_ok(), "submit of {:?}", op);
            if let Ok(number) = found {
                history.push(batch);
                prop_assert_eq!(
                    number.0 as usize,
                    history.len() - epoch_start,
                    "batch number"
                );
            }
        }
        match op {
            Op::Wait => {
                let after = BatchNumber((history.len() - epoch_start).saturating_sub(1) as u64);
                let number = log.wait_durable(after).await.map_err(fail)?;
                prop_assert!(
                    number.0 as usize >= history.len() - epoch_start,
                    "wait_durable"
                );
                durable = history.len();
            }
            Op::Crash => {
                let reported = log.durable().map_err(fail)?;
                durable = durable.max(epoch_start + reported.0 as usize);
                let may_lose = subject.crash(log).await;
                log = subject.open().await;
                let recovered = contents(&log).await;
                let candidates = if may_lose {
                    durable..=history.len()
                } else {
                    history.len()..=history.len()
                };
                let mut kept = None;
                for length in candidates {
                    if contents(&replay(&history[..length])).await == recovered {
                        kept = Some(length);
                        break;
                    }
                }
                let Some(kept) = kept else {
                    return Err(TestCaseError::fail(format!(
                        "the recovered log matches no prefix of {} batches of at least {durable}",
                        history.len()
                    )));
                };
                history.truncate(kept);
                durable = kept;
                epoch_start = kept;
                current = replay(&history);
            }
            _ => {
                let reported = log.durable().map_err(fail)?;
                prop_assert!(
                    epoch_start + reported.0 as usize <= history.len(),
                    "durable() exceeds what was submitted"
                );
            }
        }
    }
    Ok(())
}

fn fail(error: StorageError) -> TestCaseError {
    TestCaseError::fail(error.to_string())
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(24))]

    /// Each case draws the way batches are made durable too: an O_DSYNC write covers only
    /// its own batch, where an fdatasync covers every write completed before it.
    #[test]
    fn disk_log_recovers_a_durable_prefix(
        ops in proptest::collection::vec(op_strategy(), 1..80),
        fdatasync in proptest::bool::ANY,
    ) {
        let dir = TestDir::new("model-disk");
        let mut config = small_config(&dir.path);
        if fdatasync {
            config.sync_method = SyncMethod::Fdatasync;
        }
        let subject = DiskSubject { _dir: dir, config };
        log_support::run(check_sequence(subject, ops))?;
    }

    #[test]
    fn memory_log_loses_nothing(ops in proptest::collection::vec(op_strategy(), 1..80)) {
        let subject = MemorySubject { volume: Default::default() };
        log_support::run(check_sequence(subject, ops))?;
    }
}
