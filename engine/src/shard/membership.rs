//! Membership work of a shard: changes, leadership transfers and the peer list.
//!
//! A membership change is proposed to the group's core and answered once its entry
//! commits. A leader that has not committed an entry of its term yet
//! (`LeaderNotReady`) is retried on later ticks with a doubling backoff until the request
//! times out, because that state lasts one round trip after an election. So is a removal
//! that would leave too few caught-up voters to elect a leader (`VotersBehind`), which
//! lasts until the voters left catch up. A leadership
//! transfer is answered once the target leads.
//!
//! The peer list follows the log: every change entry in a `Ready` (appended by a leader
//! or received by a follower) and every entry replayed at startup may carry a new
//! member's addresses ([`MemberAddresses`]), which go to the node's address book. On disk
//! storage the book also writes them to the member address file, which restores them
//! after a restart once their entries are compacted. After any change the shard connects
//! to every member of its groups and drops the links to nodes no group of the shard
//! includes any more. This runs before the turn's messages are handed to the transport,
//! so the first messages to a new member find its link.

use std::collections::BTreeSet;

use shardraft_raft::{
    Entry, EntryKind, LogIndex, MembershipChangeEntry, MembershipChangeError, NodeId, ProposalId,
    Role, TransferError,
};

use super::{Shard, ShardEvent};
use crate::log::GroupId;
use crate::membership::{
    AddressBook, GroupMembership, MemberAddresses, MemberChange, MemberProgress, MemberRole,
};
use crate::node::NodeError;
use crate::state_machine::StateMachine;

/// Maximum wait between two tries of a change whose leader was not ready, in ticks.
const RETRY_BACKOFF_TICKS_MAX: u64 = 16;

/// A change whose entry is appended and waits to commit.
struct PendingChange {
    group: GroupId,
    proposal: ProposalId,
    reply: flume::Sender<Result<LogIndex, NodeError>>,
    deadline_tick: u64,
}

/// A change to propose (again) at `next_try_tick`.
struct ChangeAttempt {
    group: GroupId,
    change: MemberChange,
    only_if_leader: bool,
    reply: flume::Sender<Result<LogIndex, NodeError>>,
    deadline_tick: u64,
    next_try_tick: u64,
    backoff_ticks: u64,
}

/// A leadership transfer that waits for its target to lead.
struct PendingTransfer {
    group: GroupId,
    target: NodeId,
    reply: flume::Sender<Result<(), NodeError>>,
    deadline_tick: u64,
}

/// The membership requests of a shard that wait for their outcome.
#[derive(Default)]
pub(super) struct MembershipWaits {
    changes: Vec<PendingChange>,
    retries: Vec<ChangeAttempt>,
    transfers: Vec<PendingTransfer>,
}

impl MembershipWaits {
    fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.retries.is_empty() && self.transfers.is_empty()
    }
}

fn change_error(group: GroupId, error: MembershipChangeError) -> NodeError {
    match error {
        MembershipChangeError::NotLeader { leader } => NodeError::NotLeader { group, leader },
        MembershipChangeError::TransferInProgress { target } => {
            NodeError::TransferInProgress { group, target }
        }
        MembershipChangeError::ChangePending { index } => NodeError::ChangePending { group, index },
        MembershipChangeError::LeaderTransferring { leader, target } => {
            NodeError::LeaderTransferring {
                group,
                leader,
                target,
            }
        }
        MembershipChangeError::Invalid(reason) => NodeError::InvalidChange {
            group,
            reason: reason.to_string(),
        },
        // Retried by the caller until the deadline, like `LeaderNotReady`.
        error @ MembershipChangeError::VotersBehind { .. } => NodeError::InvalidChange {
            group,
            reason: error.to_string(),
        },
        // Retried by the caller until the deadline; reaching here means it passed.
        MembershipChangeError::LeaderNotReady => NodeError::LeaderNotReady {
            group,
            timeout_ms: 0,
        },
    }
}

impl<S> Shard<S>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    pub(super) fn on_change_membership(
        &mut self,
        group: GroupId,
        change: MemberChange,
        only_if_leader: bool,
        reply: flume::Sender<Result<LogIndex, NodeError>>,
    ) {
        let attempt = ChangeAttempt {
            group,
            change,
            only_if_leader,
            reply,
            deadline_tick: self.deadline_tick(),
            next_try_tick: self.tick,
            backoff_ticks: 1,
        };
        self.try_change(attempt);
    }

    fn try_change(&mut self, mut attempt: ChangeAttempt) {
        let group = attempt.group;
        let Some(replica) = self.replicas.get_mut(&group) else {
            let groups = self.config.groups;
            let _ = attempt
                .reply
                .send(Err(NodeError::UnknownGroup { group, groups }));
            return;
        };
        let span = replica.span.clone();
        let _entered = span.enter();
        if attempt.only_if_leader && replica.core.role() != Role::Leader {
            let leader = replica.core.leader();
            let _ = attempt
                .reply
                .send(Err(NodeError::NotLeader { group, leader }));
            return;
        }
        let (change, context) = attempt.change.to_core();
        match replica.core.propose_membership_change(change, context) {
            Ok(proposal) => {
                tracing::info!(%change, index = proposal.index.0, "membership change proposed");
                self.membership_waits.changes.push(PendingChange {
                    group,
                    proposal,
                    reply: attempt.reply,
                    deadline_tick: attempt.deadline_tick,
                });
            }
            Err(
                MembershipChangeError::LeaderNotReady | MembershipChangeError::VotersBehind { .. },
            ) if self.tick < attempt.deadline_tick => {
                attempt.next_try_tick = self.tick + attempt.backoff_ticks;
                attempt.backoff_ticks = (attempt.backoff_ticks * 2).min(RETRY_BACKOFF_TICKS_MAX);
                self.membership_waits.retries.push(attempt);
            }
            Err(MembershipChangeError::LeaderNotReady) => {
                let timeout_ms = self.config.request_timeout_ms;
                let _ = attempt
                    .reply
                    .send(Err(NodeError::LeaderNotReady { group, timeout_ms }));
            }
            Err(error) => {
                tracing::info!(%change, %error, "membership change rejected");
                let _ = attempt.reply.send(Err(change_error(group, error)));
            }
        }
    }

    /// Proposes again the changes whose backoff has passed; called on every tick.
    pub(super) fn retry_membership_changes(&mut self) {
        if self.membership_waits.retries.is_empty() {
            return;
        }
        let tick = self.tick;
        let (due, waiting) = std::mem::take(&mut self.membership_waits.retries)
            .into_iter()
            .partition(|attempt| attempt.next_try_tick <= tick);
        self.membership_waits.retries = waiting;
        let due: Vec<ChangeAttempt> = due;
        for attempt in due {
            self.try_change(attempt);
        }
        // The proposals need a pass over the ready work, which this tick's turn makes.
        self.events.push_now(ShardEvent::Continue);
    }

    pub(super) fn on_transfer_leadership(
        &mut self,
        group: GroupId,
        target: NodeId,
        reply: flume::Sender<Result<(), NodeError>>,
    ) {
        let deadline_tick = self.deadline_tick();
        let Some(replica) = self.replicas.get_mut(&group) else {
            let groups = self.config.groups;
            let _ = reply.send(Err(NodeError::UnknownGroup { group, groups }));
            return;
        };
        let span = replica.span.clone();
        let _entered = span.enter();
        match replica.core.transfer_leadership(target) {
            Ok(()) => self.membership_waits.transfers.push(PendingTransfer {
                group,
                target,
                reply,
                deadline_tick,
            }),
            // Asking the leader to hand leadership to itself asks for what already holds.
            Err(TransferError::AlreadyLeader { .. }) => {
                let _ = reply.send(Ok(()));
            }
            Err(TransferError::NotLeader { leader }) if leader == Some(target) => {
                let _ = reply.send(Ok(()));
            }
            Err(TransferError::NotLeader { leader }) => {
                let _ = reply.send(Err(NodeError::NotLeader { group, leader }));
            }
            Err(error @ TransferError::NotAVoter { .. }) => {
                let _ = reply.send(Err(NodeError::InvalidTransfer {
                    group,
                    target,
                    reason: error.to_string(),
                }));
            }
        }
    }

    /// Answers the changes that committed or were replaced, the transfers that finished
    /// or were abandoned, and every request past its deadline. Runs after each turn's
    /// ready work.
    pub(super) fn settle_membership_waits(&mut self) {
        if self.membership_waits.is_empty() {
            return;
        }
        let tick = self.tick;
        let timeout_ms = self.config.request_timeout_ms;
        let replicas = &self.replicas;
        self.membership_waits.changes.retain(|pending| {
            let group = pending.group;
            let Some(replica) = replicas.get(&group) else {
                let _ = pending.reply.send(Err(NodeError::Stopped));
                return false;
            };
            let index = pending.proposal.index;
            let term_there = replica.core.entry(index).map(|entry| entry.term);
            let result = if replica.core.commit_index() >= index {
                // An entry compacted away after committing was the change itself: only
                // committed entries are compacted, and a committed index keeps its entry.
                match term_there {
                    Some(term) if term != pending.proposal.term => {
                        Err(NodeError::ProposalDropped { group, index })
                    }
                    _ => Ok(index),
                }
            } else if term_there.is_some_and(|term| term != pending.proposal.term)
                || replica.core.last_index() < index
            {
                Err(NodeError::ProposalDropped { group, index })
            } else if tick >= pending.deadline_tick {
                Err(NodeError::Timeout { group, timeout_ms })
            } else {
                return true;
            };
            let _ = pending.reply.send(result);
            false
        });
        self.membership_waits.retries.retain(|attempt| {
            if tick < attempt.deadline_tick {
                return true;
            }
            let group = attempt.group;
            let _ = attempt
                .reply
                .send(Err(NodeError::LeaderNotReady { group, timeout_ms }));
            false
        });
        self.membership_waits.transfers.retain(|pending| {
            let group = pending.group;
            let Some(replica) = replicas.get(&group) else {
                let _ = pending.reply.send(Err(NodeError::Stopped));
                return false;
            };
            let core = &replica.core;
            let target = pending.target;
            let result = if core.role() != Role::Leader && core.leader() == Some(target) {
                Ok(())
            } else if core.role() == Role::Leader && core.transfer_target() != Some(target) {
                Err(NodeError::TransferAbandoned { group, target })
            } else if core.role() != Role::Leader && core.leader().is_some() {
                // Another node won the election that the transfer started.
                Err(NodeError::NotLeader {
                    group,
                    leader: core.leader(),
                })
            } else if tick >= pending.deadline_tick {
                Err(NodeError::Timeout { group, timeout_ms })
            } else {
                return true;
            };
            let _ = pending.reply.send(result);
            false
        });
    }

    /// The membership of `group` as this shard sees it.
    pub(super) fn group_membership(&self, group: GroupId) -> Result<GroupMembership, NodeError> {
        let Some(replica) = self.replicas.get(&group) else {
            let groups = self.config.groups;
            return Err(NodeError::UnknownGroup { group, groups });
        };
        let core = &replica.core;
        let membership = core.membership();
        let leading = core.role() == Role::Leader;
        let last_index = core.last_index();
        let own = NodeId(self.config.node_id);
        let progress_of = |node: NodeId| -> Option<LogIndex> {
            if !leading {
                return None;
            }
            if node == own {
                return Some(core.persisted_index());
            }
            core.progress(node).map(|progress| progress.match_index)
        };
        let voters = membership
            .voters
            .iter()
            .map(|node| (*node, MemberRole::Voter));
        let learners = membership.learners.iter().map(|node| {
            let promote_when_caught_up = membership.promote_when_caught_up.contains(node);
            (
                *node,
                MemberRole::Learner {
                    promote_when_caught_up,
                },
            )
        });
        let members = voters
            .chain(learners)
            .map(|(node, role)| {
                let match_index = progress_of(node);
                MemberProgress {
                    node,
                    role,
                    match_index,
                    lag_entries: match_index.map(|matched| last_index.0.saturating_sub(matched.0)),
                    addresses: self.addresses.get(node),
                }
            })
            .collect();
        let pending_change = core
            .last_membership_change_index()
            .filter(|index| *index > core.commit_index());
        Ok(GroupMembership {
            group,
            reporter: own,
            leader: core.leader(),
            term: core.term(),
            commit_index: core.commit_index(),
            last_index,
            pending_change,
            members,
        })
    }

    /// Learns the addresses in every change entry the groups' logs hold and connects to
    /// every member; run once at startup, after the groups are restored.
    pub(super) fn connect_logged_members(&mut self) {
        for (group, replica) in &self.replicas {
            let core = &replica.core;
            let mut index = core.first_index();
            while index <= core.last_index() {
                if let Some(entry) = core.entry(index) {
                    let entries = std::slice::from_ref(entry);
                    learn_addresses(*group, entries, &self.addresses, Learning::Replay);
                }
                index = index.next();
            }
        }
        self.reconcile_peers();
    }

    /// Makes the transport's peer list the members of this shard's groups: connects to
    /// each member it has an address for and drops the links to everyone else.
    pub(super) fn reconcile_peers(&mut self) {
        let own = NodeId(self.config.node_id);
        let members: BTreeSet<NodeId> = self
            .replicas
            .values()
            .flat_map(|replica| replica.core.membership().members())
            .filter(|member| *member != own)
            .collect();
        let shard = self.shard as usize;
        for member in &members {
            let configured = self
                .config
                .members
                .iter()
                .find(|configured| configured.id == member.0)
                .and_then(|configured| configured.shard_address(shard));
            let learned = || {
                self.addresses
                    .get(*member)
                    .and_then(|addresses| addresses.shard_address(shard))
            };
            // The config may list one address per shard, which the book does not keep.
            match configured.or_else(learned) {
                Some(address) => self.transport.add_peer(*member, address),
                None => {
                    // A member added at runtime is known from its change entry and, after
                    // a restart on disk storage, from the member address file. A node on
                    // memory storage that restarted after the entry was compacted has
                    // neither.
                    // NOTE: a node that learns of a member only through a snapshot it
                    // received (a new or wiped node) has no address for it either.
                    tracing::warn!(
                        peer = %member,
                        "no address is known for this member; it stays unreachable from \
                         this node until a membership change names its addresses, or until \
                         this node restarts with it listed in `members`"
                    );
                }
            }
        }
        for peer in self.transport.peer_ids() {
            if !members.contains(&peer) {
                self.transport.remove_peer(peer);
            }
        }
    }
}

/// Records the addresses carried by the change entries among `entries`. Returns whether
/// any entry was a membership change.
/// Whether entries are new appends, whose addresses replace what the book knows, or a
/// replay of the log at start, which only fills gaps of the book read from its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Learning {
    Append,
    Replay,
}

pub(super) fn learn_addresses(
    group: GroupId,
    entries: &[Entry],
    book: &AddressBook,
    learning: Learning,
) -> bool {
    let mut changed = false;
    for entry in entries {
        if entry.kind != EntryKind::MembershipChange {
            continue;
        }
        changed = true;
        let decoded = match MembershipChangeEntry::decode(&entry.data) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::warn!(%group, index = entry.index.0, error, "unreadable membership change entry");
                continue;
            }
        };
        match MemberAddresses::decode(&decoded.context) {
            Ok(Some(addresses)) => {
                // Only a change that adds a node carries addresses.
                let Some(node) = decoded.change.node() else {
                    tracing::warn!(%group, index = entry.index.0, "a timing change carries member addresses; ignoring them");
                    continue;
                };
                tracing::info!(
                    %group, index = entry.index.0, node = node.0, peer = %addresses.peer,
                    client = ?addresses.client, "learned a member's addresses"
                );
                let stored = match learning {
                    Learning::Append => book.learn(node, addresses),
                    Learning::Replay => book.learn_missing(node, addresses),
                };
                if let Err(error) = stored {
                    tracing::error!(
                        %group, index = entry.index.0, node = node.0, %error,
                        "storing the member address file failed; this node uses the \
                         addresses now, but a restart before the next successful store loses \
                         them"
                    );
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(
                %group, index = entry.index.0, %error,
                "membership change with unreadable member addresses; the member stays \
                 unreachable from this node"
            ),
        }
    }
    changed
}
