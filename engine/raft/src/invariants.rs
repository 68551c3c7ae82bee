//! Whole-state invariants, checked after every `tick`, `step` and `on_persisted` in debug
//! builds. A failure here is a bug in the core, never a consequence of bad input, which is
//! rejected before it can change state.

use crate::node::RaftNode;
#[cfg(debug_assertions)]
use crate::node::Role;
#[cfg(debug_assertions)]
use crate::types::{LogIndex, NodeId, Term};

/// The values an event must not move backwards.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InvariantSnapshot {
    #[cfg(debug_assertions)]
    term: Term,
    #[cfg(debug_assertions)]
    vote: Option<NodeId>,
    #[cfg(debug_assertions)]
    committed: LogIndex,
    #[cfg(debug_assertions)]
    role: Role,
}

impl RaftNode {
    pub(crate) fn invariant_snapshot(&self) -> InvariantSnapshot {
        InvariantSnapshot {
            #[cfg(debug_assertions)]
            term: self.term,
            #[cfg(debug_assertions)]
            vote: self.vote,
            #[cfg(debug_assertions)]
            committed: self.log.committed(),
            #[cfg(debug_assertions)]
            role: self.role,
        }
    }

    #[cfg(not(debug_assertions))]
    pub(crate) fn check_invariants(&self, _before: &InvariantSnapshot) {}

    #[cfg(debug_assertions)]
    pub(crate) fn check_invariants(&self, before: &InvariantSnapshot) {
        let id = self.id;
        assert!(
            self.term >= before.term,
            "{id}: term went back from {} to {}",
            before.term,
            self.term
        );
        if self.term == before.term && before.vote.is_some() {
            assert_eq!(
                self.vote, before.vote,
                "{id}: second vote in term {}",
                self.term
            );
        }

        let committed = self.log.committed();
        let last_index = self.log.last_index();
        assert!(
            committed >= before.committed,
            "{id}: commit went back from {} to {committed}",
            before.committed
        );
        assert!(
            committed <= last_index,
            "{id}: commit {committed} past last index {last_index}"
        );
        if self.role == Role::Leader && before.role == Role::Leader && committed > before.committed
        {
            // A leader commits by counting replicas only for an entry of its own term.
            assert_eq!(
                self.log.term(committed),
                Some(self.term),
                "{id}: leader of {} committed {committed}, which is not of its term",
                self.term
            );
        }
        let applied = self.log.applied();
        assert!(
            applied <= committed,
            "{id}: applied {applied} past commit {committed}"
        );
        let persisted = self.log.persisted();
        assert!(
            applied <= persisted,
            "{id}: applied {applied} past persisted {persisted}"
        );
        assert!(
            persisted <= last_index,
            "{id}: persisted {persisted} past last index {last_index}"
        );
        assert!(
            self.log.last_term() <= self.term,
            "{id}: last log term {} newer than term {}",
            self.log.last_term(),
            self.term
        );

        match self.role {
            Role::Leader => {
                assert_eq!(
                    self.leader,
                    Some(id),
                    "{id}: leader that does not name itself"
                );
                assert_eq!(
                    self.vote,
                    Some(id),
                    "{id}: leader that did not vote for itself"
                );
                for (peer, progress) in &self.progress {
                    assert!(
                        progress.match_index < progress.next_index,
                        "{id}: progress of {peer}: match {} not below next {}",
                        progress.match_index,
                        progress.next_index
                    );
                    assert!(
                        progress.match_index <= last_index,
                        "{id}: progress of {peer}: match {} past last index {last_index}",
                        progress.match_index
                    );
                }
            }
            Role::Candidate => {
                assert_eq!(
                    self.vote,
                    Some(id),
                    "{id}: candidate that did not vote for itself"
                );
                assert!(
                    self.progress.is_empty(),
                    "{id}: candidate with leader progress"
                );
            }
            Role::Follower | Role::PreCandidate => {
                assert!(
                    self.progress.is_empty(),
                    "{id}: {:?} with leader progress",
                    self.role
                );
            }
        }
    }
}
