//! The logical log of one group, shared by both implementations: the hard state, the
//! compacted prefix and one slot per stored entry, with the checks that keep the log
//! contiguous.

use std::collections::VecDeque;

use shardraft_raft::{Entry, HardState, LogIndex, Term};

use super::{GroupId, GroupState, StorageError};

/// What a log keeps per stored entry.
pub(crate) trait Slot {
    fn term(&self) -> Term;
}

impl Slot for Entry {
    fn term(&self) -> Term {
        self.term
    }
}

/// One group's log.
///
/// Invariant: `slots[i]` holds the entry at index `compacted_index + 1 + i`, and terms never
/// decrease along `slots`.
#[derive(Debug)]
pub(crate) struct GroupLog<S> {
    pub hard_state: Option<HardState>,
    pub compacted_index: LogIndex,
    pub compacted_term: Term,
    pub slots: VecDeque<S>,
}

impl<S> Default for GroupLog<S> {
    fn default() -> Self {
        GroupLog {
            hard_state: None,
            compacted_index: LogIndex(0),
            compacted_term: Term(0),
            slots: VecDeque::new(),
        }
    }
}

impl<S: Slot> GroupLog<S> {
    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.compacted_index.0 + self.slots.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.slots.back().map_or(self.compacted_term, Slot::term)
    }

    pub fn state(&self) -> GroupState {
        GroupState {
            hard_state: self.hard_state.unwrap_or_default(),
            compacted_index: self.compacted_index,
            compacted_term: self.compacted_term,
            last_index: self.last_index(),
            last_term: self.last_term(),
        }
    }

    /// Position in `slots` of the entry at `index`, or why it is not stored.
    pub fn position(&self, group: GroupId, index: LogIndex) -> Result<usize, StorageError> {
        if index <= self.compacted_index {
            return Err(StorageError::Compacted {
                group,
                index,
                compacted: self.compacted_index,
            });
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable {
                group,
                index,
                last: self.last_index(),
            });
        }
        Ok((index.0 - self.compacted_index.0 - 1) as usize)
    }

    pub fn term(&self, group: GroupId, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.compacted_index {
            return Ok(self.compacted_term);
        }
        let position = self.position(group, index)?;
        Ok(self.slots[position].term())
    }

    /// Removes the slots at and after `from`.
    pub fn truncate_from(&mut self, from: LogIndex) {
        let from = from.max(LogIndex(self.compacted_index.0 + 1));
        if from > self.last_index() {
            return;
        }
        let keep = (from.0 - self.compacted_index.0 - 1) as usize;
        self.slots.truncate(keep);
    }

    /// Drops slots through `through`, recording `term` as the compacted term. Callers
    /// check the compaction first with [`check_batch`].
    pub fn compact(&mut self, through: LogIndex, term: Term) {
        if through <= self.compacted_index {
            return;
        }
        let drop = ((through.0 - self.compacted_index.0) as usize).min(self.slots.len());
        self.slots.drain(..drop);
        self.compacted_index = through;
        self.compacted_term = term;
    }

    /// Drops every slot and restarts the log after a snapshot through `index` of `term`.
    /// Callers check the install first with [`check_batch`].
    pub fn install_snapshot(&mut self, index: LogIndex, term: Term) {
        self.slots.clear();
        self.compacted_index = index;
        self.compacted_term = term;
    }
}

/// The bounds and terms of a group's log as a batch under check would leave them, without
/// copying the log: `terms` holds the terms the batch appended from `appended_from` on, and
/// entries of the stored log count only up to `stored_last`.
#[derive(Debug)]
pub(crate) struct PendingBounds<'a, S> {
    stored: Option<&'a GroupLog<S>>,
    pub compacted_index: LogIndex,
    compacted_term: Term,
    stored_last: LogIndex,
    appended_from: LogIndex,
    terms: Vec<Term>,
}

impl<'a, S: Slot> PendingBounds<'a, S> {
    pub fn new(stored: Option<&'a GroupLog<S>>) -> Self {
        let (compacted_index, compacted_term, stored_last) = stored
            .map_or((LogIndex(0), Term(0), LogIndex(0)), |log| {
                (log.compacted_index, log.compacted_term, log.last_index())
            });
        PendingBounds {
            stored,
            compacted_index,
            compacted_term,
            stored_last,
            appended_from: LogIndex(stored_last.0 + 1),
            terms: Vec::new(),
        }
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.appended_from.0 + self.terms.len() as u64 - 1)
    }

    pub fn term(&self, group: GroupId, index: LogIndex) -> Result<Term, StorageError> {
        if index == self.compacted_index {
            return Ok(self.compacted_term);
        }
        if index < self.compacted_index {
            return Err(StorageError::Compacted {
                group,
                index,
                compacted: self.compacted_index,
            });
        }
        if index >= self.appended_from && index <= self.last_index() {
            return Ok(self.terms[(index.0 - self.appended_from.0) as usize]);
        }
        match self.stored {
            Some(log) if index <= self.stored_last => log.term(group, index),
            _ => Err(StorageError::Unavailable {
                group,
                index,
                last: self.last_index(),
            }),
        }
    }

    /// Checks an append as [`check_append`](Self::check_append) does, then records it.
    pub fn append(&mut self, group: GroupId, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_append(group, entries)?;
        self.record_append(group, entries)
    }

    /// Checks that `entries` may be appended: after the compacted index, without a gap,
    /// contiguous, with terms that never decrease. Records nothing, for the last op of a
    /// group in a batch, whose effect no later check reads.
    pub fn check_append(&self, group: GroupId, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let invalid = |detail: String| StorageError::InvalidWrite { group, detail };
        if first.index <= self.compacted_index {
            return Err(invalid(format!(
                "entry {} is at or below the compacted index {}",
                first.index.0, self.compacted_index.0
            )));
        }
        if first.index.0 > self.last_index().0 + 1 {
            return Err(invalid(format!(
                "entry {} would leave a gap after the last index {}",
                first.index.0,
                self.last_index().0
            )));
        }
        let previous_term = self.term(group, LogIndex(first.index.0 - 1))?;
        if first.term < previous_term {
            return Err(invalid(format!(
                "entry {} has term {}, below the term {} of the entry before it",
                first.index.0, first.term.0, previous_term.0
            )));
        }
        for pair in entries.windows(2) {
            if pair[1].index.0 != pair[0].index.0 + 1 || pair[1].term < pair[0].term {
                return Err(invalid(format!(
                    "entries are not contiguous with non-decreasing terms at index {}",
                    pair[1].index.0
                )));
            }
        }
        Ok(())
    }

    /// Records an append that [`check_append`](Self::check_append) accepted.
    fn record_append(&mut self, group: GroupId, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        self.truncate(group, first.index)?;
        self.terms.extend(entries.iter().map(|entry| entry.term));
        Ok(())
    }

    /// Checks and records a truncation from `from`.
    pub fn truncate(&mut self, group: GroupId, from: LogIndex) -> Result<(), StorageError> {
        if from <= self.compacted_index {
            return Err(StorageError::InvalidWrite {
                group,
                detail: format!(
                    "cannot truncate from {}, at or below the compacted index {}",
                    from.0, self.compacted_index.0
                ),
            });
        }
        if from >= self.appended_from {
            let keep = ((from.0 - self.appended_from.0) as usize).min(self.terms.len());
            self.terms.truncate(keep);
        } else {
            self.terms.clear();
            self.stored_last = self.stored_last.min(LogIndex(from.0 - 1));
            self.appended_from = LogIndex(self.stored_last.0 + 1);
        }
        Ok(())
    }

    /// Checks and records a compaction; returns the term it records, or `None` if it
    /// does nothing.
    pub fn compact(
        &mut self,
        group: GroupId,
        through: LogIndex,
    ) -> Result<Option<Term>, StorageError> {
        if through <= self.compacted_index {
            return Ok(None);
        }
        if through > self.last_index() {
            return Err(StorageError::InvalidWrite {
                group,
                detail: format!(
                    "cannot compact through {}, beyond the last index {}",
                    through.0,
                    self.last_index().0
                ),
            });
        }
        let term = self.term(group, through)?;
        self.compacted_index = through;
        self.compacted_term = term;
        Ok(Some(term))
    }

    /// Checks and records a snapshot install through `index` of `term`: afterwards no
    /// stored or appended entry counts, and the log ends at `index`.
    pub fn install_snapshot(
        &mut self,
        group: GroupId,
        index: LogIndex,
        term: Term,
    ) -> Result<(), StorageError> {
        if index == LogIndex(0) {
            // Index 0 is the empty log's boundary, whose term is always 0; a checkpoint
            // records no compaction point there, so a term set at 0 would not survive.
            return Err(StorageError::InvalidWrite {
                group,
                detail: format!(
                    "cannot install a snapshot at index 0 (term {}); a snapshot covers at \
                     least index 1",
                    term.0
                ),
            });
        }
        self.stored = None;
        self.compacted_index = index;
        self.compacted_term = term;
        self.stored_last = index;
        self.appended_from = LogIndex(index.0 + 1);
        self.terms.clear();
        Ok(())
    }
}

/// The term each compaction op of a checked batch records, by the op's position in the
/// batch. Empty, and so not allocated, for a batch without compactions, the common case.
#[derive(Debug, Default)]
pub(crate) struct CompactionTerms(Vec<Option<Term>>);

impl CompactionTerms {
    /// Returns the term the op at `position` records, `None` for ops that are not
    /// compactions or compact nothing.
    pub fn for_op(&self, position: usize) -> Option<Term> {
        self.0.get(position).copied().flatten()
    }
}

/// Checks every op of `batch` in order against the logs in `stored`, so that a batch
/// whose later ops depend on earlier ones is judged correctly and a rejected batch changes
/// nothing. Returns the term each compaction op will record.
///
/// This runs once per submission, so the common shapes avoid allocating. A batch whose ops
/// all concern one group (a lone Raft group's `Ready`) checks against one view on the
/// stack instead of a map of them. The last op of that group is only checked, not
/// recorded, since no later op reads it. Before, a one-entry submission allocated a map,
/// a vector of terms and the compaction terms. Avoiding them cut the executor thread's CPU
/// time per submission by about 8 % with 256 single-entry appenders.
pub(crate) fn check_batch<S: Slot>(
    stored: &std::collections::BTreeMap<GroupId, GroupLog<S>>,
    batch: &super::WriteBatch,
) -> Result<CompactionTerms, StorageError> {
    use super::WriteOp;
    let has_compactions = batch
        .ops
        .iter()
        .any(|op| matches!(op, WriteOp::Compact { .. }));
    let mut compaction_terms = if has_compactions {
        Vec::with_capacity(batch.ops.len())
    } else {
        Vec::new()
    };
    let Some(first_group) = batch.ops.first().map(WriteOp::group) else {
        return Ok(CompactionTerms::default());
    };
    if batch.ops.iter().all(|op| op.group() == first_group) {
        let mut view = PendingBounds::new(stored.get(&first_group));
        let last_position = batch.ops.len() - 1;
        for (position, op) in batch.ops.iter().enumerate() {
            let term = match op {
                WriteOp::Append { entries, .. } if position == last_position => {
                    view.check_append(first_group, entries).map(|()| None)?
                }
                op => check_op(&mut view, op)?,
            };
            if has_compactions {
                compaction_terms.push(term);
            }
        }
        return Ok(CompactionTerms(compaction_terms));
    }
    let mut bounds: std::collections::BTreeMap<GroupId, PendingBounds<'_, S>> =
        std::collections::BTreeMap::new();
    for op in &batch.ops {
        let group = op.group();
        let view = bounds
            .entry(group)
            .or_insert_with(|| PendingBounds::new(stored.get(&group)));
        let term = check_op(view, op)?;
        if has_compactions {
            compaction_terms.push(term);
        }
    }
    Ok(CompactionTerms(compaction_terms))
}

/// Checks one op against `view` and records its effect there. Returns the term a
/// compaction records.
fn check_op<S: Slot>(
    view: &mut PendingBounds<'_, S>,
    op: &super::WriteOp,
) -> Result<Option<Term>, StorageError> {
    use super::WriteOp;
    let group = op.group();
    match op {
        WriteOp::Append { entries, .. } => view.append(group, entries).map(|()| None),
        WriteOp::HardState { .. } => Ok(None),
        WriteOp::Truncate { from, .. } => view.truncate(group, *from).map(|()| None),
        WriteOp::Compact { through, .. } => view.compact(group, *through),
        WriteOp::InstallSnapshot { index, term, .. } => {
            view.install_snapshot(group, *index, *term).map(|()| None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use shardraft_raft::EntryKind;

    use super::*;
    use crate::log::WriteBatch;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
        }
    }

    /// Returns the logs of one group with entries 1 to 3 of term 1.
    fn stored() -> BTreeMap<GroupId, GroupLog<Entry>> {
        let mut log = GroupLog::default();
        log.slots.extend((1..=3).map(|index| entry(index, 1)));
        BTreeMap::from([(GroupId(1), log)])
    }

    #[test]
    fn check_batch_lone_append() {
        let stored = stored();
        let mut next = WriteBatch::new();
        next.append(GroupId(1), vec![entry(4, 1)]);
        assert!(check_batch(&stored, &next).is_ok());

        let mut gap = WriteBatch::new();
        gap.append(GroupId(1), vec![entry(6, 1)]);
        let error = check_batch(&stored, &gap).expect_err("a gap after index 3");
        assert!(error.to_string().contains("gap"), "{error}");

        let mut lower_term = WriteBatch::new();
        lower_term.append(GroupId(1), vec![entry(4, 0)]);
        assert!(check_batch(&stored, &lower_term).is_err(), "term below 1");
    }

    #[test]
    fn check_batch_one_group_after_append() {
        let stored = stored();
        let mut batch = WriteBatch::new();
        batch
            .append(GroupId(1), vec![entry(4, 2), entry(5, 2)])
            .compact(GroupId(1), LogIndex(5))
            .append(GroupId(1), vec![entry(6, 3)]);
        let terms = check_batch(&stored, &batch).expect("a valid batch");
        assert_eq!(terms.for_op(0), None);
        assert_eq!(terms.for_op(1), Some(Term(2)), "the appended entry's term");
        assert_eq!(terms.for_op(2), None);

        let mut gap_after_append = WriteBatch::new();
        gap_after_append
            .append(GroupId(1), vec![entry(4, 2)])
            .append(GroupId(1), vec![entry(6, 2)]);
        assert!(
            check_batch(&stored, &gap_after_append).is_err(),
            "the second append leaves a gap after the first"
        );
    }

    #[test]
    fn check_batch_mixed_groups() {
        let stored = stored();
        let mut batch = WriteBatch::new();
        batch
            .append(GroupId(2), vec![entry(1, 1)])
            .append(GroupId(1), vec![entry(4, 1)])
            .append(GroupId(2), vec![entry(2, 1)])
            .compact(GroupId(2), LogIndex(2));
        let terms = check_batch(&stored, &batch).expect("a valid batch");
        assert_eq!(terms.for_op(3), Some(Term(1)));

        let mut wrong_group = WriteBatch::new();
        wrong_group
            .append(GroupId(2), vec![entry(1, 1)])
            .append(GroupId(1), vec![entry(2, 1)]);
        assert!(
            check_batch(&stored, &wrong_group).is_ok(),
            "index 2 of group 1 overwrites its stored suffix"
        );
        wrong_group.append(GroupId(2), vec![entry(3, 1)]);
        assert!(
            check_batch(&stored, &wrong_group).is_err(),
            "group 2 ends at index 1, so index 3 leaves a gap"
        );
    }

    #[test]
    fn check_batch_without_compactions() {
        let stored = stored();
        let mut batch = WriteBatch::new();
        batch.append(GroupId(1), vec![entry(4, 1)]);
        let terms = check_batch(&stored, &batch).expect("a valid batch");
        assert!(terms.0.is_empty(), "nothing allocated");
        assert_eq!(terms.for_op(0), None);
        let empty = check_batch(&stored, &WriteBatch::new()).expect("an empty batch");
        assert_eq!(empty.for_op(0), None);
    }
}
