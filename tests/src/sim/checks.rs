//! Raft's safety properties, checked incrementally after every event of a run.
//!
//! Each replica's log is mirrored from the entries its `Ready` batches hand out, with a
//! hash chain over the entries (`chain[i]` covers every entry up to `i`), so that two logs
//! agree on a whole prefix exactly when their chain values at its last index agree:
//!
//! - election safety: at most one leader per term;
//! - log matching: two logs with an entry of the same index and term agree on every entry
//!   up to it;
//! - leader completeness: a new leader's log contains every entry committed in an earlier
//!   term. A replica learns of a commit from the leader of its own term. So an entry that
//!   a replica reported committed, or applied, while in term `t` was committed in `t` or
//!   before, and every leader of a later term must contain it. A candidate of an older term
//!   can still win with votes granted before the voters moved on, after a newer leader
//!   committed more. Raft allows that leader, which can commit nothing;
//! - state machine safety: no two replicas apply different entries at one index.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use shardraft_raft::{Entry, EntryKind, LogIndex, NodeId, Term};

/// A violated safety property, with what shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

/// One replica's log as the checker sees it: the snapshot it starts after, if any, then
/// its entries.
#[derive(Clone, Debug, Default)]
struct MirroredLog {
    /// The index of the snapshot the log starts after, or 0.
    base_index: LogIndex,
    /// The chain value of the prefix the snapshot covers.
    base_chain: u64,
    /// `(term, chain)` of the entry at index `base_index + k + 1`.
    entries: Vec<(Term, u64)>,
}

impl MirroredLog {
    /// The chain value at `index`, for indexes from the base on.
    fn chain_at(&self, index: LogIndex) -> Option<u64> {
        if index == self.base_index {
            return Some(self.base_chain);
        }
        let offset = index.0.checked_sub(self.base_index.0 + 1)?;
        self.entries.get(offset as usize).map(|(_, chain)| *chain)
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.base_index.0 + self.entries.len() as u64)
    }

    /// Makes the log start after index `index`, whose chain value is `chain`, keeping the
    /// entries above it when `keep_suffix` is set.
    fn rebase(&mut self, index: LogIndex, chain: u64, keep_suffix: bool) {
        if keep_suffix && index >= self.base_index {
            let drop = ((index.0 - self.base_index.0) as usize).min(self.entries.len());
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.base_index = index;
        self.base_chain = chain;
    }
}

fn chain_hash(previous: u64, entry: &Entry) -> u64 {
    let mut hasher = DefaultHasher::new();
    previous.hash(&mut hasher);
    entry.term.0.hash(&mut hasher);
    match entry.kind {
        EntryKind::Normal => 0u8,
        EntryKind::LeaderNoop => 1,
        EntryKind::MembershipChange => 2,
    }
    .hash(&mut hasher);
    entry.data.hash(&mut hasher);
    hasher.finish()
}

#[derive(Debug, Default)]
pub struct SafetyChecker {
    logs: BTreeMap<NodeId, MirroredLog>,
    leaders_by_term: BTreeMap<Term, NodeId>,
    /// Chain value of each `(index, term)` seen in any log.
    chain_by_position: BTreeMap<(LogIndex, Term), u64>,
    /// Chain value at each index applied anywhere, and who applied it first.
    applied: Vec<(u64, NodeId)>,
    /// Next index each replica must apply.
    next_apply: BTreeMap<NodeId, LogIndex>,
    /// Chain value at each commit index a replica reported.
    committed: BTreeMap<LogIndex, u64>,
    /// The highest commit index replicas reported while in each term, with its chain value.
    highest_committed_by_term: BTreeMap<Term, (LogIndex, u64)>,
    /// The highest index replicas applied while in each term.
    highest_applied_by_term: BTreeMap<Term, LogIndex>,
}

impl SafetyChecker {
    /// Starts mirroring `node` from its durable state after a start or a restart: the
    /// snapshot at `base` (index and term), if any, the log after it, and `durable_term`.
    pub fn restore(
        &mut self,
        node: NodeId,
        base: Option<(LogIndex, Term)>,
        durable: &[Entry],
        durable_term: Term,
    ) -> Result<(), Violation> {
        self.forget_lost_terms(node, durable_term);
        let mut log = MirroredLog::default();
        if let Some((index, term)) = base {
            let chain = self.snapshot_chain(node, index, term)?;
            log.rebase(index, chain, false);
        }
        self.next_apply.insert(node, log.base_index.next());
        self.logs.insert(node, log);
        self.append(node, durable)
    }

    /// Forgets the positions of entries in terms after `durable_term` that only `node`'s
    /// previous log held. A replica that crashed before its term became durable restarts
    /// in an older term, and a single voter may then lead the lost term again, with other
    /// entries at the same indexes. The lost entries were never durable. Where no other
    /// log received them, no log contains them any more, and log matching has nothing to
    /// compare the new ones with. A position that another log still contains is kept, so a
    /// different entry there is still a violation.
    fn forget_lost_terms(&mut self, node: NodeId, durable_term: Term) {
        let Some(previous) = self.logs.get(&node) else {
            return;
        };
        let lost: Vec<(LogIndex, Term, u64)> = previous
            .entries
            .iter()
            .enumerate()
            .filter(|(_, (term, _))| *term > durable_term)
            .map(|(offset, (term, chain))| {
                (
                    LogIndex(previous.base_index.0 + offset as u64 + 1),
                    *term,
                    *chain,
                )
            })
            .collect();
        for (index, term, chain) in lost {
            let held_elsewhere = self
                .logs
                .iter()
                .any(|(other, log)| *other != node && log.chain_at(index) == Some(chain));
            if !held_elsewhere && self.chain_by_position.get(&(index, term)) == Some(&chain) {
                self.chain_by_position.remove(&(index, term));
            }
        }
    }

    /// Records that `node` installed a snapshot at (`index`, `term`) from a leader: its log
    /// now starts after it, with its entries above it kept when `log_kept` is set, and it
    /// next applies the entry after it.
    pub fn snapshot_installed(
        &mut self,
        node: NodeId,
        index: LogIndex,
        term: Term,
        log_kept: bool,
    ) -> Result<(), Violation> {
        let chain = self.snapshot_chain(node, index, term)?;
        let log = self.logs.entry(node).or_default();
        if log_kept && log.chain_at(index) != Some(chain) {
            return Err(Violation {
                property: "snapshot install",
                detail: format!(
                    "{node} kept its log above a snapshot at {index} of {term} that its log does not match"
                ),
            });
        }
        log.rebase(index, chain, log_kept);
        self.next_apply.insert(node, index.next());
        Ok(())
    }

    /// The chain value of the committed prefix a snapshot at (`index`, `term`) covers. A
    /// snapshot holds applied state only, so the prefix must be the one applied
    /// everywhere.
    fn snapshot_chain(&self, node: NodeId, index: LogIndex, term: Term) -> Result<u64, Violation> {
        let Some(chain) = self.chain_by_position.get(&(index, term)).copied() else {
            return Err(Violation {
                property: "snapshot contents",
                detail: format!(
                    "{node} has a snapshot at {index} of {term}, an entry no log ever held"
                ),
            });
        };
        match self.applied.get(index.0 as usize - 1) {
            Some((applied, _)) if *applied == chain => Ok(chain),
            _ => Err(Violation {
                property: "snapshot contents",
                detail: format!(
                    "{node} has a snapshot at {index} of {term} that differs from the entries applied up to there"
                ),
            }),
        }
    }

    /// Records entries a replica handed to storage: its log is truncated at the first
    /// one's index, then extended.
    pub fn append(&mut self, node: NodeId, entries: &[Entry]) -> Result<(), Violation> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let log = self.logs.entry(node).or_default();
        if first.index <= log.base_index {
            return Err(Violation {
                property: "log continuity",
                detail: format!(
                    "{node} appended at {} inside its snapshot ending at {}",
                    first.index, log.base_index
                ),
            });
        }
        let keep = (first.index.0 - log.base_index.0 - 1) as usize;
        if keep > log.entries.len() {
            return Err(Violation {
                property: "log continuity",
                detail: format!(
                    "{node} appended at {} past its last index {}",
                    first.index,
                    log.last_index()
                ),
            });
        }
        log.entries.truncate(keep);
        for entry in entries {
            let previous = log.chain_at(entry.index.prev()).unwrap_or(0);
            let chain = chain_hash(previous, entry);
            log.entries.push((entry.term, chain));
            match self.chain_by_position.get(&(entry.index, entry.term)) {
                Some(known) if *known != chain => {
                    return Err(Violation {
                        property: "log matching",
                        detail: format!(
                            "{node} holds an entry at {} of {} whose prefix differs from another log's entry at the same index and term",
                            entry.index, entry.term
                        ),
                    });
                }
                Some(_) => {}
                None => {
                    self.chain_by_position
                        .insert((entry.index, entry.term), chain);
                }
            }
        }
        Ok(())
    }

    /// Checks that the replica's core agrees with the mirror about its last index.
    pub fn check_last_index(
        &self,
        node: NodeId,
        core_last_index: LogIndex,
    ) -> Result<(), Violation> {
        let mirrored = self
            .logs
            .get(&node)
            .map_or(LogIndex(0), MirroredLog::last_index);
        if mirrored != core_last_index {
            return Err(Violation {
                property: "log handed to storage",
                detail: format!(
                    "{node} has last index {core_last_index} but handed out entries up to {mirrored}"
                ),
            });
        }
        Ok(())
    }

    /// Records that `node` became leader of `term`.
    pub fn leader_elected(&mut self, node: NodeId, term: Term) -> Result<(), Violation> {
        if let Some(existing) = self.leaders_by_term.insert(term, node)
            && existing != node
        {
            return Err(Violation {
                property: "election safety",
                detail: format!("{existing} and {node} both led {term}"),
            });
        }
        // Entries reported committed or applied in earlier terms were committed in an
        // earlier term, so this log must contain all of them.
        let committed_before = self
            .highest_committed_by_term
            .range(..term)
            .map(|(_, committed)| *committed)
            .max_by_key(|(index, _)| *index);
        if let Some((index, chain)) = committed_before {
            self.check_log_contains(node, term, index, chain)?;
        }
        let applied_before = self
            .highest_applied_by_term
            .range(..term)
            .map(|(_, index)| *index)
            .max();
        if let Some(index) = applied_before {
            let chain = self.applied[index.0 as usize - 1].0;
            self.check_log_contains(node, term, index, chain)?;
        }
        Ok(())
    }

    /// Checks that the new leader `node` of `term` has the prefix ending at `index` whose
    /// chain value is `chain`.
    fn check_log_contains(
        &self,
        node: NodeId,
        term: Term,
        index: LogIndex,
        chain: u64,
    ) -> Result<(), Violation> {
        let actual = self.chain_at(node, index);
        if actual != Some(chain) {
            return Err(Violation {
                property: "leader completeness",
                detail: format!(
                    "{node} became leader of {term} without the committed entries up to {index}"
                ),
            });
        }
        Ok(())
    }

    /// The chain value of `node`'s log at `index`. Below the log's snapshot it is the chain
    /// of the entries applied everywhere, which `snapshot_chain` checked the snapshot holds.
    fn chain_at(&self, node: NodeId, index: LogIndex) -> Option<u64> {
        let log = self.logs.get(&node)?;
        if index < log.base_index {
            if index.0 == 0 {
                return Some(0);
            }
            return self
                .applied
                .get(index.0 as usize - 1)
                .map(|(chain, _)| *chain);
        }
        log.chain_at(index)
    }

    /// Records that `node` reports `commit` as its commit index.
    pub fn committed(
        &mut self,
        node: NodeId,
        term: Term,
        commit: LogIndex,
    ) -> Result<(), Violation> {
        if commit.0 == 0 {
            return Ok(());
        }
        let Some(chain) = self.chain_at(node, commit) else {
            return Err(Violation {
                property: "commit within the log",
                detail: format!("{node} reports commit index {commit} past its log"),
            });
        };
        match self.committed.get(&commit) {
            Some(known) if *known != chain => {
                return Err(Violation {
                    property: "state machine safety",
                    detail: format!(
                        "{node} committed a different entry at {commit} than another replica"
                    ),
                });
            }
            Some(_) => {}
            None => {
                self.committed.insert(commit, chain);
            }
        }
        let highest = self
            .highest_committed_by_term
            .entry(term)
            .or_insert((commit, chain));
        if commit > highest.0 {
            *highest = (commit, chain);
        }
        Ok(())
    }

    /// Records that `node`, in `term`, applied `entry`.
    pub fn applied(&mut self, node: NodeId, term: Term, entry: &Entry) -> Result<(), Violation> {
        let expected_index = self.next_apply.get(&node).copied().unwrap_or(LogIndex(1));
        if entry.index != expected_index {
            return Err(Violation {
                property: "apply order",
                detail: format!(
                    "{node} applied {} but {expected_index} was next",
                    entry.index
                ),
            });
        }
        self.next_apply.insert(node, entry.index.next());
        let highest = self.highest_applied_by_term.entry(term).or_default();
        *highest = (*highest).max(entry.index);
        let Some(chain) = self.chain_at(node, entry.index) else {
            return Err(Violation {
                property: "apply order",
                detail: format!("{node} applied {} which is not in its log", entry.index),
            });
        };
        let position = entry.index.0 as usize - 1;
        match self.applied.get(position) {
            Some((known, first)) if *known != chain => Err(Violation {
                property: "state machine safety",
                detail: format!(
                    "{node} and {first} applied different entries at {}",
                    entry.index
                ),
            }),
            Some(_) => Ok(()),
            None => {
                self.applied.push((chain, node));
                Ok(())
            }
        }
    }

    /// Highest index applied by any replica.
    pub fn highest_applied(&self) -> LogIndex {
        LogIndex(self.applied.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: Bytes::new(),
        }
    }

    /// Builds three replicas with entry 1 of term 1. Then n1 appends entry 2 of term 4 and
    /// reports it committed in term 4.
    fn checker_with_commit_in_term_4() -> SafetyChecker {
        let mut checker = SafetyChecker::default();
        for node in 1..=3 {
            checker
                .append(NodeId(node), &[entry(1, 1)])
                .expect("appending entry 1");
        }
        checker
            .leader_elected(NodeId(1), Term(4))
            .expect("n1 holds everything");
        checker
            .append(NodeId(1), &[entry(2, 4)])
            .expect("appending entry 2");
        checker
            .committed(NodeId(1), Term(4), LogIndex(2))
            .expect("n1 commits entry 2");
        checker
    }

    #[test]
    fn older_term_leader_may_lack_commit() {
        // n2 campaigned in term 3 and wins late, with votes granted before term 4 began:
        // Raft allows it, and it cannot commit anything.
        let mut checker = checker_with_commit_in_term_4();
        assert_eq!(checker.leader_elected(NodeId(2), Term(3)), Ok(()));
    }

    #[test]
    fn newer_term_leader_needs_commit() {
        let mut checker = checker_with_commit_in_term_4();
        let violation = checker
            .leader_elected(NodeId(2), Term(5))
            .expect_err("n2 lacks entry 2, committed in term 4");
        assert_eq!(violation.property, "leader completeness");
    }

    #[test]
    fn newer_term_leader_needs_applied() {
        let mut checker = SafetyChecker::default();
        for node in 1..=2 {
            checker
                .append(NodeId(node), &[entry(1, 1)])
                .expect("appending entry 1");
        }
        checker
            .append(NodeId(1), &[entry(2, 1)])
            .expect("appending entry 2");
        checker
            .applied(NodeId(1), Term(1), &entry(1, 1))
            .expect("applying entry 1");
        checker
            .applied(NodeId(1), Term(1), &entry(2, 1))
            .expect("applying entry 2");
        let violation = checker
            .leader_elected(NodeId(2), Term(2))
            .expect_err("n2 lacks entry 2, applied in term 1");
        assert_eq!(violation.property, "leader completeness");
        assert_eq!(checker.leader_elected(NodeId(1), Term(3)), Ok(()));
    }
}
