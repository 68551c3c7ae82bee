//! The core's view of its log: every entry since the last compaction, the commit index,
//! what has been handed to storage, what storage has reported durable, and what has been
//! handed out for applying.
//!
//! The log never performs I/O. New entries are handed to storage through `Ready`, and the
//! runtime reports completed writes by batch number.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::types::{Entry, LogIndex, ReadyNumber, Term};

/// A batch of entries handed to storage and not yet reported durable.
#[derive(Clone, Copy, Debug)]
struct PendingWrite {
    number: ReadyNumber,
    last_index: LogIndex,
    last_term: Term,
}

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// Index of the entry just before `entries[0]`: 0 until a snapshot replaces a prefix.
    base_index: LogIndex,
    /// Term of the entry at `base_index`.
    base_term: Term,
    /// Invariant: `entries[k].index == base_index + 1 + k`, and terms never decrease.
    entries: VecDeque<Entry>,
    /// Invariant: `committed <= last_index()`, and it never decreases.
    committed: LogIndex,
    /// Last index handed out for applying. Invariant: `applied <= committed` and
    /// `applied <= persisted`.
    applied: LogIndex,
    /// Every entry up to here is durable in this replica's storage.
    /// Invariant: `persisted <= last_index()`.
    persisted: LogIndex,
    /// First index not yet handed to storage. Entries from here on go out in the next
    /// `Ready`; storage truncates its log there before appending them.
    unstable_from: LogIndex,
    pending_writes: VecDeque<PendingWrite>,
}

impl RaftLog {
    /// A log whose entries `durable` (contiguous from `base_index + 1`) are already in
    /// storage, after a snapshot at (`base_index`, `base_term`), or after index 0.
    pub(crate) fn restore(
        base_index: LogIndex,
        base_term: Term,
        durable: Vec<Entry>,
        committed: LogIndex,
        applied: LogIndex,
    ) -> Self {
        let entries: VecDeque<Entry> = durable.into();
        let last_index = base_index.plus(entries.len() as u64);
        // Everything in the snapshot is committed and applied.
        let committed = committed.max(base_index).min(last_index);
        RaftLog {
            base_index,
            base_term,
            entries,
            committed,
            applied: applied.max(base_index).min(committed),
            persisted: last_index,
            unstable_from: last_index.next(),
            pending_writes: VecDeque::new(),
        }
    }

    pub(crate) fn last_index(&self) -> LogIndex {
        self.base_index.plus(self.entries.len() as u64)
    }

    pub(crate) fn last_term(&self) -> Term {
        self.entries
            .back()
            .map_or(self.base_term, |entry| entry.term)
    }

    pub(crate) fn first_index(&self) -> LogIndex {
        self.base_index.next()
    }

    /// The index of the entry just before the first one kept: the last index covered by
    /// the snapshot the log was compacted to, or 0.
    pub(crate) fn base_index(&self) -> LogIndex {
        self.base_index
    }

    /// Drops the entries up to and including `through`, which must be applied.
    pub(crate) fn compact_through(&mut self, through: LogIndex) {
        debug_assert!(
            through <= self.applied,
            "compacting entries not yet applied"
        );
        if through <= self.base_index {
            return;
        }
        let Some(term) = self.term(through) else {
            return;
        };
        let drop = (through.0 - self.base_index.0) as usize;
        self.entries.drain(..drop.min(self.entries.len()));
        self.base_index = through;
        self.base_term = term;
    }

    /// Makes the log start after a snapshot at (`index`, `term`) that a leader sent.
    ///
    /// When the log holds the snapshot's last entry, the entries above it stay, because by
    /// the log matching property everything up to it equals the leader's, and this replica
    /// may already have acknowledged them. Otherwise every entry is dropped: none above
    /// `index` can have been committed, since a committed entry there would make the
    /// leader's entry at `index` equal this log's. Either way the snapshot is committed and
    /// counts as applied and durable (the runtime stores it before it hands it to the core).
    ///
    /// Returns whether storage keeps its entries above `index` (and only drops those up to
    /// it). It does when every entry up to `index` was handed to it; otherwise it drops
    /// everything and the kept entries go out again in the next `Ready`.
    pub(crate) fn install_snapshot(&mut self, index: LogIndex, term: Term) -> bool {
        debug_assert!(
            index > self.committed,
            "installing a snapshot below the commit index"
        );
        let storage_keeps = if self.term(index) == Some(term) {
            let handed_to_storage = self.unstable_from > index;
            let drop = (index.0 - self.base_index.0) as usize;
            self.entries.drain(..drop.min(self.entries.len()));
            self.persisted = self.persisted.max(index);
            handed_to_storage
        } else {
            self.entries.clear();
            self.persisted = index;
            // Storage drops every entry when it installs the snapshot, after the batches
            // in flight: those can vouch only for what the snapshot covers, even if a later
            // batch writes an entry with the same index and term again.
            for write in &mut self.pending_writes {
                if write.last_index > index {
                    write.last_index = index;
                    write.last_term = term;
                }
            }
            false
        };
        self.unstable_from = self.unstable_from.max(index.next());
        self.base_index = index;
        self.base_term = term;
        self.committed = index;
        self.applied = index;
        storage_keeps
    }

    pub(crate) fn committed(&self) -> LogIndex {
        self.committed
    }

    pub(crate) fn applied(&self) -> LogIndex {
        self.applied
    }

    pub(crate) fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// The term of the entry at `index`, or `None` when the log has no such entry (past the
    /// end, or compacted away).
    pub(crate) fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub(crate) fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.first_index().0)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Iterates the entries from `from` to the end.
    pub(crate) fn iter_from(&self, from: LogIndex) -> impl Iterator<Item = &Entry> {
        let offset = from.0.saturating_sub(self.first_index().0);
        self.entries
            .iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
    }

    /// Whether a log ending at (`last_term`, `last_index`) is at least as up to date as
    /// this one: a later last term wins, and on equal terms the longer log.
    pub(crate) fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The largest index at or below `index` whose entry has a term no greater than `term`.
    /// Used on both sides of fast backtracking: every entry above the returned index has a
    /// term above `term`, so none of them can match a log whose entry there has `term`.
    pub(crate) fn last_index_with_term_at_most(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut candidate = index.min(self.last_index());
        while candidate > self.base_index {
            match self.term(candidate) {
                Some(found) if found <= term => return candidate,
                _ => candidate = candidate.prev(),
            }
        }
        self.base_index
    }

    /// Collects entries from `from`, at most `max_count` of them and at most `max_bytes`
    /// bytes, but always at least one when one exists.
    pub(crate) fn entries_for_message(
        &self,
        from: LogIndex,
        max_count: usize,
        max_bytes: u64,
    ) -> (Vec<Entry>, u64) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for entry in self.iter_from(from).take(max_count) {
            let size = entry.size_bytes();
            if !batch.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            batch.push(entry.clone());
        }
        (batch, bytes)
    }

    /// Appends an entry that the leader created; `entry.index` must be `last_index() + 1`.
    pub(crate) fn append(&mut self, entry: Entry) {
        debug_assert_eq!(entry.index, self.last_index().next());
        debug_assert!(entry.term >= self.last_term());
        self.entries.push_back(entry);
    }

    /// Drops every entry from `from` on. The caller guarantees `from > committed`, which
    /// keeps `from` above the base too.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        debug_assert!(from > self.committed, "truncating committed entries");
        debug_assert!(from > self.base_index);
        let keep = (from.0 - self.first_index().0) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(from);
        // Entries from `from` on that were durable no longer describe this log.
        self.persisted = self.persisted.min(from.prev());
        // A batch handed to storage before this truncation can vouch only for the entries
        // below `from`: the entries it wrote from `from` on are replaced by a later batch,
        // even if a later leader writes an entry with the same index and term again.
        let kept_last_index = from.prev();
        let kept_last_term = self.term(kept_last_index).unwrap_or(self.base_term);
        for write in &mut self.pending_writes {
            if write.last_index >= from {
                write.last_index = kept_last_index;
                write.last_term = kept_last_term;
            }
        }
    }

    /// Advances the commit index; it never moves back.
    pub(crate) fn commit_to(&mut self, index: LogIndex) -> bool {
        debug_assert!(
            index <= self.last_index(),
            "commit {index} past last index {}",
            self.last_index()
        );
        if index > self.committed {
            self.committed = index;
            return true;
        }
        false
    }

    pub(crate) fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }

    /// Hands the entries not yet given to storage to batch `number`.
    pub(crate) fn take_unstable(&mut self, number: ReadyNumber) -> Vec<Entry> {
        let unstable: Vec<Entry> = self.iter_from(self.unstable_from).cloned().collect();
        if let Some(last) = unstable.last() {
            self.pending_writes.push_back(PendingWrite {
                number,
                last_index: last.index,
                last_term: last.term,
            });
        }
        self.unstable_from = self.last_index().next();
        unstable
    }

    /// Records that every batch up to `number` is durable.
    ///
    /// A batch vouches for the log up to its last index, which `truncate_from` lowers below
    /// any entry a later batch replaces. The term check guards the same rule: a batch counts
    /// only while the log still holds the entry it wrote at that index.
    pub(crate) fn mark_persisted(&mut self, number: ReadyNumber) {
        while let Some(write) = self.pending_writes.front().copied() {
            if write.number > number {
                break;
            }
            self.pending_writes.pop_front();
            if write.last_index > self.persisted
                && self.term(write.last_index) == Some(write.last_term)
            {
                self.persisted = write.last_index;
            }
        }
    }

    /// Whether committed, durable entries wait to be handed out for applying.
    pub(crate) fn has_entries_to_apply(&self) -> bool {
        self.applied < self.committed.min(self.persisted)
    }

    /// Hands out up to `max_count` committed and durable entries for applying.
    ///
    /// Entries are applied only once durable here too, so that a state machine never runs
    /// ahead of the log it would be rebuilt from after a crash.
    pub(crate) fn take_entries_to_apply(&mut self, max_count: usize) -> Vec<Entry> {
        let limit = self.committed.min(self.persisted);
        if self.applied >= limit {
            return Vec::new();
        }
        let count = usize::try_from(limit.0 - self.applied.0)
            .unwrap_or(usize::MAX)
            .min(max_count);
        let batch: Vec<Entry> = self
            .iter_from(self.applied.next())
            .take(count)
            .cloned()
            .collect();
        if let Some(last) = batch.last() {
            self.applied = last.index;
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;
    use crate::types::EntryKind;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: bytes::Bytes::from_static(b"abcd"),
        }
    }

    /// A log restored from durable entries with the given terms.
    fn restored(terms: &[u64], committed: u64) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(offset, term)| entry(offset as u64 + 1, *term))
            .collect();
        RaftLog::restore(
            LogIndex(0),
            Term(0),
            entries,
            LogIndex(committed),
            LogIndex(0),
        )
    }

    #[test]
    fn restore_clamps_commit_and_applied() {
        let log = RaftLog::restore(
            LogIndex(0),
            Term(0),
            vec![entry(1, 1), entry(2, 1)],
            LogIndex(5),
            LogIndex(9),
        );
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.committed(), LogIndex(2), "commit clamped to the log");
        assert_eq!(log.applied(), LogIndex(2), "applied clamped to the commit");
        assert_eq!(log.persisted(), LogIndex(2), "a restored log is durable");
        assert!(!log.has_unstable(), "nothing to hand to storage");
    }

    #[test]
    fn persisted_advances_per_batch_in_order() {
        let mut log = restored(&[1], 1);
        log.append(entry(2, 1));
        let first = log.take_unstable(ReadyNumber(1));
        assert_eq!(first, vec![entry(2, 1)]);
        log.append(entry(3, 1));
        log.append(entry(4, 1));
        let second = log.take_unstable(ReadyNumber(2));
        assert_eq!(second, vec![entry(3, 1), entry(4, 1)]);
        assert_eq!(log.persisted(), LogIndex(1), "nothing reported yet");

        log.mark_persisted(ReadyNumber(1));
        assert_eq!(log.persisted(), LogIndex(2), "after batch 1");
        log.mark_persisted(ReadyNumber(2));
        assert_eq!(log.persisted(), LogIndex(4), "after batch 2");
    }

    #[test]
    fn batch_number_covers_every_earlier_batch() {
        let mut log = restored(&[], 0);
        log.append(entry(1, 1));
        log.take_unstable(ReadyNumber(1));
        log.append(entry(2, 1));
        log.take_unstable(ReadyNumber(2));
        log.mark_persisted(ReadyNumber(2));
        assert_eq!(log.persisted(), LogIndex(2));
    }

    #[test]
    fn truncate_lowers_persisted_and_resends_from_cut() {
        let mut log = restored(&[1, 1, 1, 1], 1);
        log.truncate_from(LogIndex(3));
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.persisted(), LogIndex(2), "entries from 3 on are gone");
        log.append(entry(3, 2));
        let unstable = log.take_unstable(ReadyNumber(1));
        assert_eq!(unstable, vec![entry(3, 2)], "storage truncates at 3");
        log.mark_persisted(ReadyNumber(1));
        assert_eq!(log.persisted(), LogIndex(3));
    }

    #[test]
    fn replaced_batch_does_not_count_as_persisted() {
        let mut log = restored(&[1], 1);
        log.append(entry(2, 1));
        log.append(entry(3, 1));
        log.take_unstable(ReadyNumber(1));
        // A new leader replaces entries 2 and 3 before batch 1 is durable.
        log.truncate_from(LogIndex(2));
        log.append(entry(2, 2));
        log.take_unstable(ReadyNumber(2));

        log.mark_persisted(ReadyNumber(1));
        assert_eq!(
            log.persisted(),
            LogIndex(1),
            "batch 1 wrote entries that are no longer in the log"
        );
        log.mark_persisted(ReadyNumber(2));
        assert_eq!(log.persisted(), LogIndex(2));
    }

    #[test]
    fn apply_waits_for_commit_and_persist() {
        let mut log = restored(&[], 0);
        for index in 1..=3 {
            log.append(entry(index, 1));
        }
        log.take_unstable(ReadyNumber(1));
        log.commit_to(LogIndex(3));
        assert!(!log.has_entries_to_apply(), "committed but not durable");
        assert!(log.take_entries_to_apply(10).is_empty());

        log.mark_persisted(ReadyNumber(1));
        let first = log.take_entries_to_apply(2);
        assert_eq!(first, vec![entry(1, 1), entry(2, 1)], "at most 2 at once");
        let rest = log.take_entries_to_apply(2);
        assert_eq!(rest, vec![entry(3, 1)]);
        assert_eq!(log.applied(), LogIndex(3));
        assert!(!log.has_entries_to_apply());
    }

    #[test]
    fn compaction_keeps_terms_at_the_base() {
        let mut log = restored(&[1, 1, 2, 2], 4);
        log.take_entries_to_apply(10);
        log.compact_through(LogIndex(3));
        assert_eq!(log.first_index(), LogIndex(4));
        assert_eq!(log.term(LogIndex(3)), Some(Term(2)), "base term kept");
        assert_eq!(log.term(LogIndex(2)), None, "compacted away");
        assert_eq!(
            log.entry(LogIndex(4)).map(|entry| entry.term),
            Some(Term(2))
        );
        assert_eq!(log.last_index(), LogIndex(4));
        log.compact_through(LogIndex(2));
        assert_eq!(
            log.first_index(),
            LogIndex(4),
            "compacting below the base does nothing"
        );
    }

    #[test]
    fn snapshot_keeps_a_matching_suffix_and_drops_a_conflicting_log() {
        let mut log = restored(&[1, 1, 1, 1, 1], 1);
        assert!(
            log.install_snapshot(LogIndex(3), Term(1)),
            "entry 3 matches"
        );
        assert_eq!(log.first_index(), LogIndex(4));
        assert_eq!(log.last_index(), LogIndex(5));
        assert_eq!((log.committed(), log.applied()), (LogIndex(3), LogIndex(3)));

        let mut log = restored(&[1, 1, 1, 1, 1], 1);
        assert!(
            !log.install_snapshot(LogIndex(4), Term(2)),
            "entry 4 has another term"
        );
        assert_eq!(log.last_index(), LogIndex(4), "the old-term suffix is gone");
        assert_eq!(log.last_term(), Term(2));
        assert_eq!(log.persisted(), LogIndex(4));
        assert!(!log.has_unstable(), "nothing to hand to storage");

        let mut log = restored(&[1], 1);
        assert!(!log.install_snapshot(LogIndex(40), Term(3)), "past the end");
        assert_eq!(log.last_index(), LogIndex(40));
        log.append(entry(41, 3));
        assert_eq!(log.take_unstable(ReadyNumber(1)), vec![entry(41, 3)]);
    }

    #[test]
    fn commit_never_moves_back() {
        let mut log = restored(&[1, 1, 1], 2);
        assert!(!log.commit_to(LogIndex(1)), "lower commit ignored");
        assert_eq!(log.committed(), LogIndex(2));
        assert!(log.commit_to(LogIndex(3)));
        assert_eq!(log.committed(), LogIndex(3));
    }

    #[test]
    fn last_index_with_term_at_most_skips_newer_terms() {
        let log = restored(&[1, 1, 2, 2, 4, 4], 0);
        assert_eq!(
            log.last_index_with_term_at_most(LogIndex(6), Term(3)),
            LogIndex(4)
        );
        assert_eq!(
            log.last_index_with_term_at_most(LogIndex(6), Term(4)),
            LogIndex(6)
        );
        assert_eq!(
            log.last_index_with_term_at_most(LogIndex(3), Term(1)),
            LogIndex(2)
        );
        assert_eq!(
            log.last_index_with_term_at_most(LogIndex(6), Term(0)),
            LogIndex(0)
        );
        assert_eq!(
            log.last_index_with_term_at_most(LogIndex(100), Term(9)),
            LogIndex(6),
            "an index past the log starts from the last entry"
        );
    }

    #[test]
    fn up_to_date_compares_last_term_then_length() {
        let log = restored(&[1, 2, 2], 0);
        assert!(log.is_up_to_date(LogIndex(1), Term(3)), "newer last term");
        assert!(log.is_up_to_date(LogIndex(3), Term(2)), "same log");
        assert!(
            !log.is_up_to_date(LogIndex(2), Term(2)),
            "shorter, same term"
        );
        assert!(
            !log.is_up_to_date(LogIndex(9), Term(1)),
            "longer, older term"
        );
    }

    #[test]
    fn message_batch_respects_count_and_bytes() {
        let log = restored(&[1, 1, 1, 1, 1], 0);
        let size = entry(1, 1).size_bytes();
        let (batch, bytes) = log.entries_for_message(LogIndex(2), 2, u64::MAX);
        assert_eq!(batch, vec![entry(2, 1), entry(3, 1)], "count limit");
        assert_eq!(bytes, 2 * size);
        let (batch, _) = log.entries_for_message(LogIndex(1), 10, 3 * size);
        assert_eq!(batch.len(), 3, "byte limit");
        let (batch, bytes) = log.entries_for_message(LogIndex(1), 10, 1);
        assert_eq!(batch, vec![entry(1, 1)], "one entry over the byte limit");
        assert_eq!(bytes, size);
        let (batch, _) = log.entries_for_message(LogIndex(6), 10, u64::MAX);
        assert!(batch.is_empty(), "nothing past the end");
    }
}
