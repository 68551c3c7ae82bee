//! The group's membership over its log: the membership at the log's base (from the last
//! snapshot, or from the config when no snapshot exists) and every membership-change entry
//! after it.
//!
//! A change takes effect when it is appended, not when it commits, as the chapter on
//! membership changes of Ongaro's dissertation prescribes: each replica uses the newest
//! change in its log. A follower that truncates
//! a conflicting suffix therefore falls back to the membership before the removed change.

use alloc::vec::Vec;

use crate::types::{LogIndex, Membership};

#[derive(Clone, Debug)]
pub(crate) struct MembershipLog {
    /// The membership in force at `base_index`.
    base: Membership,
    base_index: LogIndex,
    /// Memberships after each change entry above `base_index`, in index order.
    changes: Vec<(LogIndex, Membership)>,
    /// The smallest agreed heartbeat interval among the memberships that compaction or a
    /// snapshot folded away, if any had one. A voter whose log ends below the base may
    /// still run with any of them.
    folded_heartbeat_ticks_min: Option<u32>,
}

impl MembershipLog {
    pub(crate) fn new(base: Membership, base_index: LogIndex) -> MembershipLog {
        MembershipLog {
            base,
            base_index,
            changes: Vec::new(),
            folded_heartbeat_ticks_min: None,
        }
    }

    /// The membership in force: the newest change's, or the base.
    pub(crate) fn effective(&self) -> &Membership {
        self.changes
            .last()
            .map_or(&self.base, |(_, membership)| membership)
    }

    /// Index of the newest change entry, if one lies above the base.
    pub(crate) fn last_change_index(&self) -> Option<LogIndex> {
        self.changes.last().map(|(index, _)| *index)
    }

    /// The membership in force at `index`, which must not be below the base.
    pub(crate) fn at(&self, index: LogIndex) -> Option<Membership> {
        if index < self.base_index {
            return None;
        }
        let found = self
            .changes
            .iter()
            .rev()
            .find(|(change_index, _)| *change_index <= index)
            .map_or(&self.base, |(_, membership)| membership);
        Some(found.clone())
    }

    /// Returns the smallest heartbeat interval in force at any index from `from` on: the
    /// membership's at `from` and every later change's, with `configured` for those without
    /// an agreed timing. Below the base, whose history is folded away, it also counts the
    /// configured interval and every folded one.
    pub(crate) fn heartbeat_interval_ticks_min_since(
        &self,
        from: LogIndex,
        configured: u32,
    ) -> u32 {
        let interval = |membership: &Membership| {
            membership
                .timing
                .map_or(configured, |timing| timing.heartbeat_interval_ticks)
        };
        let at_from = self
            .changes
            .iter()
            .rev()
            .find(|(index, _)| *index <= from)
            .map_or(&self.base, |(_, membership)| membership);
        let mut min = interval(at_from);
        if from < self.base_index {
            min = min
                .min(configured)
                .min(self.folded_heartbeat_ticks_min.unwrap_or(configured));
        }
        self.changes
            .iter()
            .filter(|(index, _)| *index > from)
            .map(|(_, membership)| interval(membership))
            .fold(min, u32::min)
    }

    /// Remembers the heartbeat intervals of the base and of the changes at or below
    /// `through`, which are about to be folded away.
    fn fold_heartbeats_through(&mut self, through: LogIndex) {
        let folded = core::iter::once(&self.base)
            .chain(
                self.changes
                    .iter()
                    .filter(|(index, _)| *index <= through)
                    .map(|(_, membership)| membership),
            )
            .filter_map(|membership| membership.timing)
            .map(|timing| timing.heartbeat_interval_ticks)
            .min();
        self.folded_heartbeat_ticks_min = match (self.folded_heartbeat_ticks_min, folded) {
            (Some(before), Some(now)) => Some(before.min(now)),
            (before, now) => before.or(now),
        };
    }

    /// Records the membership after the change entry at `index`, the log's new last entry.
    pub(crate) fn push(&mut self, index: LogIndex, membership: Membership) {
        debug_assert!(self.last_change_index().is_none_or(|last| last < index));
        self.changes.push((index, membership));
    }

    /// Forgets the changes at or after `from`, whose entries the log dropped; returns
    /// whether the effective membership changed.
    pub(crate) fn truncate_from(&mut self, from: LogIndex) -> bool {
        let before = self.changes.len();
        self.changes.retain(|(index, _)| *index < from);
        self.changes.len() != before
    }

    /// Folds the changes up to `through` into the base, after the log dropped those entries.
    pub(crate) fn compact_through(&mut self, through: LogIndex) {
        if through <= self.base_index {
            return;
        }
        self.fold_heartbeats_through(through);
        if let Some(membership) = self.at(through) {
            self.base = membership;
        }
        self.base_index = through;
        self.changes.retain(|(index, _)| *index > through);
    }

    /// Replaces everything with the membership of a snapshot at `index`, keeping changes
    /// above it when the log keeps its entries above it.
    pub(crate) fn reset(&mut self, membership: Membership, index: LogIndex, keep_suffix: bool) {
        let through = if keep_suffix {
            index
        } else {
            LogIndex(u64::MAX)
        };
        self.fold_heartbeats_through(through);
        self.base = membership;
        self.base_index = index;
        if keep_suffix {
            self.changes
                .retain(|(change_index, _)| *change_index > index);
        } else {
            self.changes.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn voters(ids: &[u64]) -> Membership {
        Membership::with_voters(ids.iter().map(|id| NodeId(*id)))
    }

    #[test]
    fn newest_change_is_in_force_and_truncation_falls_back() {
        let mut log = MembershipLog::new(voters(&[1, 2, 3]), LogIndex(0));
        log.push(LogIndex(5), voters(&[1, 2, 3, 4]));
        log.push(LogIndex(9), voters(&[1, 2, 4]));
        assert_eq!(log.effective(), &voters(&[1, 2, 4]));
        assert_eq!(log.at(LogIndex(4)), Some(voters(&[1, 2, 3])));
        assert_eq!(log.at(LogIndex(7)), Some(voters(&[1, 2, 3, 4])));
        assert!(log.truncate_from(LogIndex(9)));
        assert_eq!(log.effective(), &voters(&[1, 2, 3, 4]));
        assert!(!log.truncate_from(LogIndex(9)), "nothing left to drop");
    }

    #[test]
    fn compaction_folds_changes_into_the_base() {
        let mut log = MembershipLog::new(voters(&[1, 2, 3]), LogIndex(0));
        log.push(LogIndex(5), voters(&[1, 2, 3, 4]));
        log.push(LogIndex(9), voters(&[1, 2, 4]));
        log.compact_through(LogIndex(6));
        assert_eq!(log.at(LogIndex(6)), Some(voters(&[1, 2, 3, 4])));
        assert_eq!(log.at(LogIndex(5)), None, "below the base");
        assert_eq!(log.effective(), &voters(&[1, 2, 4]));
        log.reset(voters(&[7]), LogIndex(20), false);
        assert_eq!(log.effective(), &voters(&[7]));
        assert_eq!(log.last_change_index(), None);
    }

    fn timed(ids: &[u64], heartbeat: u32) -> Membership {
        let mut membership = voters(ids);
        membership.timing = Some(crate::types::GroupTiming {
            heartbeat_interval_ticks: heartbeat,
            election_timeout_ticks_min: 3 * heartbeat + 3,
            election_timeout_ticks_max: 3 * heartbeat + 9,
        });
        membership
    }

    #[test]
    fn heartbeat_min_covers_lagging_voters_after_compaction() {
        // The configured heartbeat is 2 ticks; a change at 5 lengthens it to 6.
        let mut log = MembershipLog::new(voters(&[1, 2, 3]), LogIndex(0));
        log.push(LogIndex(5), timed(&[1, 2, 3], 6));
        assert_eq!(log.heartbeat_interval_ticks_min_since(LogIndex(3), 2), 2);
        assert_eq!(log.heartbeat_interval_ticks_min_since(LogIndex(5), 2), 6);

        // Compaction folds the change into the base; a voter whose log ends at 3 still
        // runs with the configured timing.
        log.compact_through(LogIndex(8));
        assert_eq!(log.heartbeat_interval_ticks_min_since(LogIndex(3), 2), 2);
        assert_eq!(log.heartbeat_interval_ticks_min_since(LogIndex(8), 2), 6);

        // A shorter agreed heartbeat folded away counts for lagging voters too.
        log.push(LogIndex(10), timed(&[1, 2, 3], 1));
        log.push(LogIndex(12), timed(&[1, 2, 3], 4));
        log.reset(timed(&[1, 2, 3], 4), LogIndex(20), false);
        assert_eq!(log.heartbeat_interval_ticks_min_since(LogIndex(15), 5), 1);
        assert_eq!(log.heartbeat_interval_ticks_min_since(LogIndex(20), 5), 4);
    }
}
