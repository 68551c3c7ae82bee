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
    /// A log whose entries `durable` (contiguous from index 1) are already in storage.
    pub(crate) fn restore(durable: Vec<Entry>, committed: LogIndex, applied: LogIndex) -> Self {
        let entries: VecDeque<Entry> = durable.into();
        let last_index = LogIndex(entries.len() as u64);
        RaftLog {
            base_index: LogIndex(0),
            base_term: Term(0),
            entries,
            committed: committed.min(last_index),
            applied: applied.min(committed).min(last_index),
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

    /// Drops every entry from `from` on. The caller guarantees `from > committed`.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) {
        debug_assert!(from > self.committed, "truncating committed entries");
        debug_assert!(from > self.base_index);
        let keep = (from.0 - self.first_index().0) as usize;
        self.entries.truncate(keep);
        self.unstable_from = self.unstable_from.min(from);
        // Entries from `from` on that were durable no longer describe this log.
        self.persisted = self.persisted.min(from.prev());
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
    /// A batch's entries count only while the log still holds the same entry at the batch's
    /// last index: by log matching the whole prefix is then the same, so it is durable.
    /// Entries replaced by a later, not yet durable batch do not count.
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
