//! The in-memory log: the same interface as the disk log, with everything durable as soon
//! as it is submitted. "Durable" here means "kept while the process runs": a node using it
//! replicates but loses its log when the process exits.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Range;
use std::rc::Rc;

use shardraft_raft::{Entry, LogIndex, Term};

use super::group::{CompactionTerms, GroupLog, check_batch};
use super::{
    BatchNumber, GroupId, GroupState, LogConfig, LogStore, StorageError, WriteBatch, WriteOp,
};

/// The contents of a memory log, which outlive one [`MemoryLog`] handle so that a test can
/// stop a node and start it again on the same data, as a process restart on a disk would.
#[derive(Debug, Default)]
pub struct MemoryVolume {
    groups: BTreeMap<GroupId, GroupLog<Entry>>,
}

#[derive(Debug)]
struct MemoryState {
    volume: Rc<RefCell<MemoryVolume>>,
    submitted: BatchNumber,
    closed: bool,
}

/// A log kept in process memory. See the module documentation.
#[derive(Clone, Debug)]
pub struct MemoryLog {
    state: Rc<RefCell<MemoryState>>,
}

impl MemoryLog {
    /// Creates an empty memory log. The config's sizes do not apply: memory is bounded by
    /// what the runtime submits.
    pub fn new(_config: &LogConfig) -> MemoryLog {
        MemoryLog::on_volume(Rc::new(RefCell::new(MemoryVolume::default())))
    }

    /// Opens a memory log on existing contents, as after a restart.
    pub fn on_volume(volume: Rc<RefCell<MemoryVolume>>) -> MemoryLog {
        MemoryLog {
            state: Rc::new(RefCell::new(MemoryState {
                volume,
                submitted: BatchNumber(0),
                closed: false,
            })),
        }
    }

    /// The contents, to open again with [`MemoryLog::on_volume`].
    pub fn volume(&self) -> Rc<RefCell<MemoryVolume>> {
        Rc::clone(&self.state.borrow().volume)
    }
}

impl MemoryVolume {
    fn apply(&mut self, batch: WriteBatch, compaction_terms: CompactionTerms) {
        for (position, op) in batch.ops.into_iter().enumerate() {
            let compaction_term = compaction_terms.for_op(position);
            let log = self.groups.entry(op.group()).or_default();
            match op {
                WriteOp::Append { entries, .. } => {
                    log.truncate_from(entries[0].index);
                    log.slots.extend(entries);
                }
                WriteOp::HardState { hard_state, .. } => log.hard_state = Some(hard_state),
                WriteOp::Truncate { from, .. } => {
                    log.truncate_from(from);
                }
                WriteOp::Compact { through, .. } => {
                    if let Some(term) = compaction_term {
                        log.compact(through, term);
                    }
                }
                WriteOp::InstallSnapshot { index, term, .. } => {
                    log.install_snapshot(index, term);
                }
            }
        }
    }
}

impl LogStore for MemoryLog {
    fn group_ids(&self) -> Vec<GroupId> {
        let state = self.state.borrow();
        let volume = state.volume.borrow();
        volume.groups.keys().copied().collect()
    }

    fn group_state(&self, group: GroupId) -> Option<GroupState> {
        let state = self.state.borrow();
        let volume = state.volume.borrow();
        volume.groups.get(&group).map(GroupLog::state)
    }

    fn submit(&self, batch: WriteBatch) -> Result<BatchNumber, StorageError> {
        let mut state = self.state.borrow_mut();
        if state.closed {
            return Err(StorageError::Closed);
        }
        {
            let mut volume = state.volume.borrow_mut();
            let compaction_terms = check_batch(&volume.groups, &batch)?;
            volume.apply(batch, compaction_terms);
        }
        state.submitted.0 += 1;
        Ok(state.submitted)
    }

    fn durable(&self) -> Result<BatchNumber, StorageError> {
        Ok(self.state.borrow().submitted)
    }

    async fn wait_durable(&self, _after: BatchNumber) -> Result<BatchNumber, StorageError> {
        // Every submitted batch is durable at once.
        Ok(self.state.borrow().submitted)
    }

    fn has_room(&self) -> bool {
        true
    }

    fn term(&self, group: GroupId, index: LogIndex) -> Result<Term, StorageError> {
        let state = self.state.borrow();
        let volume = state.volume.borrow();
        match volume.groups.get(&group) {
            Some(log) => log.term(group, index),
            None => GroupLog::<Entry>::default().term(group, index),
        }
    }

    async fn read(
        &self,
        group: GroupId,
        range: Range<LogIndex>,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        let state = self.state.borrow();
        let volume = state.volume.borrow();
        let empty = GroupLog::default();
        let log = volume.groups.get(&group).unwrap_or(&empty);
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        let mut index = range.start;
        while index < range.end {
            let entry = &log.slots[log.position(group, index)?];
            bytes += entry.data.len() as u64;
            if !entries.is_empty() && bytes > bytes_max {
                break;
            }
            entries.push(entry.clone());
            index.0 += 1;
        }
        Ok(entries)
    }

    async fn close(&self) -> Result<(), StorageError> {
        self.state.borrow_mut().closed = true;
        Ok(())
    }
}
