//! [`RaftNode`]: one replica of one Raft group, and the [`Ready`] batches of work it hands
//! to its runtime.
//!
//! The driver loop:
//!
//! 1. Feed events in: [`RaftNode::tick`] at a fixed interval, [`RaftNode::step`] for each
//!    message received, [`RaftNode::propose`] and [`RaftNode::read_index`] for clients.
//! 2. Take a [`Ready`] with [`RaftNode::ready`]. Send its `messages` at once. Persist its
//!    `hard_state` and `entries` (truncating the stored log at the first entry's index),
//!    and in parallel apply `committed_entries` and serve `read_states` once applied.
//! 3. When the writes of batch N are durable, call [`RaftNode::on_persisted`] with N and
//!    only then send that batch's `messages_after_persist`.
//!
//! Batches must be persisted in order. The runtime may have several batches in flight.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::config::{Config, ConfigError};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::progress::Progress;
use crate::reads::{ReadQueue, ReadState};
use crate::types::{Entry, EntryKind, HardState, LogIndex, Membership, NodeId, ReadyNumber, Term};

/// The role a replica plays in its term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Running a pre-vote round: asking whether it could win before raising its term.
    PreCandidate,
    Candidate,
    Leader,
}

/// The volatile state that the runtime needs to route requests: role, term and leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleState {
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
}

/// The position an accepted proposal was appended at. The proposal took effect if and
/// only if the entry applied at `index` has this `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    pub term: Term,
    pub index: LogIndex,
}

/// The durable state a replica restarts from.
#[derive(Clone, Debug, Default)]
pub struct RestoredState {
    pub hard_state: HardState,
    /// The durable log, contiguous from index 1.
    pub entries: Vec<Entry>,
    /// The last index the state machine has already applied, if it keeps its own durable
    /// state; 0 when the state machine is rebuilt from the log.
    pub applied: LogIndex,
}

/// A batch of work for the runtime. See the module documentation for the order in which
/// its parts must be handled.
#[derive(Debug, Default)]
pub struct Ready {
    pub number: ReadyNumber,
    /// Set when role, term or leader changed since the previous batch.
    pub role_state: Option<RoleState>,
    /// Set when the hard state changed; persist it with `entries`.
    pub hard_state: Option<HardState>,
    /// Entries to persist. Storage first drops every stored entry at or after
    /// `entries[0].index`, then appends these.
    pub entries: Vec<Entry>,
    /// Messages that may leave at once.
    pub messages: Vec<Message>,
    /// Messages that may leave only once this batch is durable.
    pub messages_after_persist: Vec<Message>,
    /// Committed, durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Confirmed ReadIndex reads.
    pub read_states: Vec<ReadState>,
    /// Contexts of ReadIndex reads dropped because this replica stopped being leader; their
    /// callers should retry at the new leader.
    pub dropped_reads: Vec<u64>,
}

impl Ready {
    /// Whether this batch has anything to persist before `messages_after_persist` leave.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some() || !self.entries.is_empty()
    }
}

/// Counts of inputs the core rejected or ignored. Each is also logged at debug level.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rejected_wrong_recipient: u64,
    pub rejected_unknown_sender: u64,
    pub rejected_stale_term: u64,
    pub rejected_malformed: u64,
    /// Responses that no longer fit the state of the replica (late, duplicated or for an
    /// earlier role).
    pub ignored_stale_response: u64,
    /// Vote requests ignored because this replica still heard from a leader.
    pub ignored_vote_in_lease: u64,
    /// Rejections from followers of entries they had acknowledged as durable, which only
    /// storage that loses acknowledged writes produces.
    pub rejections_of_acknowledged_entries: u64,
}

/// Why [`RaftNode::step`] did not act on a message. Every case is expected input from a
/// faulty or slow network, not a bug; the message has been counted in [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("message addressed to {to}, not to this node")]
    WrongRecipient { to: NodeId },
    #[error("message from {from}, which is not a member of the group")]
    UnknownSender { from: NodeId },
    #[error("message from term {message_term}, older than the current term {current_term}")]
    StaleTerm {
        message_term: Term,
        current_term: Term,
    },
    #[error("malformed {kind}: {reason}")]
    Malformed {
        kind: &'static str,
        reason: &'static str,
    },
    #[error("{kind} does not fit the current state and was ignored")]
    StaleResponse { kind: &'static str },
}

/// The reason a proposal was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader; {}", describe_leader(*.leader))]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership is being transferred to {target}; retry at the new leader")]
    TransferInProgress { target: NodeId },
    #[error(
        "{uncommitted_bytes} bytes are uncommitted, at the limit max_uncommitted_bytes = \
         {limit_bytes}; retry once earlier writes commit"
    )]
    UncommittedLimit {
        uncommitted_bytes: u64,
        limit_bytes: u64,
    },
}

/// The reason a ReadIndex read was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexError {
    #[error("not the leader; {}", describe_leader(*.leader))]
    NotLeader { leader: Option<NodeId> },
    #[error("{pending} reads are pending, which is max_pending_reads; retry later")]
    TooManyPending { pending: usize },
}

/// The reason a leadership transfer did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("not the leader; {}", describe_leader(*.leader))]
    NotLeader { leader: Option<NodeId> },
    #[error("{target} is not a voter of the group; only voters can lead")]
    NotAVoter { target: NodeId },
    #[error("{target} is already the leader")]
    AlreadyLeader { target: NodeId },
}

/// Why [`RaftNode::new`] could not build a replica.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NewNodeError {
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    #[error("restored state is inconsistent: {reason} (at index {index}); the data is corrupt")]
    InconsistentState { reason: &'static str, index: u64 },
}

/// One replica of one Raft group: a deterministic state machine without I/O.
#[derive(Debug)]
pub struct RaftNode {
    pub(crate) id: NodeId,
    pub(crate) config: Config,
    pub(crate) membership: Membership,
    /// Invariant: never decreases.
    pub(crate) term: Term,
    /// Invariant: set at most once per term.
    pub(crate) vote: Option<NodeId>,
    /// The leader of `term` that this replica has heard from; `Some(id)` when leading.
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) log: RaftLog,
    pub(crate) rng: ChaCha8Rng,

    pub(crate) election_elapsed_ticks: u32,
    pub(crate) heartbeat_elapsed_ticks: u32,
    /// Drawn from `[election_timeout_ticks_min, election_timeout_ticks_max)` at every reset.
    pub(crate) randomized_election_timeout_ticks: u32,

    /// Responses in the current pre-vote round or election, granted or rejected, by voter;
    /// this replica's own vote included. Empty outside a campaign.
    pub(crate) votes: BTreeMap<NodeId, bool>,

    /// The leader's view of every other member; empty unless leader.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Bytes of entries appended by this leader and not yet committed.
    pub(crate) uncommitted_bytes: u64,
    pub(crate) transfer_target: Option<NodeId>,
    pub(crate) transfer_elapsed_ticks: u32,
    pub(crate) reads: ReadQueue,
    /// Set when followers may need entries or the commit index; messages are built when
    /// the next `Ready` is taken, so that every proposal since the last one shares them.
    pub(crate) replication_pending: bool,
    /// Scratch space for quorum computations.
    pub(crate) match_scratch: Vec<LogIndex>,

    pub(crate) messages: Vec<Message>,
    pub(crate) messages_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) dropped_reads: Vec<u64>,
    pub(crate) last_hard_state: HardState,
    pub(crate) last_role_state: RoleState,
    pub(crate) next_ready_number: ReadyNumber,
    pub(crate) stats: Stats,
}

impl RaftNode {
    /// Builds a replica from its config and the durable state it had, as a follower.
    ///
    /// # Errors
    ///
    /// Returns [`NewNodeError::Config`] for an invalid config and
    /// [`NewNodeError::InconsistentState`] when the restored log and hard state contradict
    /// each other.
    pub fn new(config: Config, restored: RestoredState) -> Result<RaftNode, NewNodeError> {
        config.validate()?;
        check_restored_state(&restored)?;

        let hard_state = restored.hard_state;
        let membership = config.membership.clone();
        let log = RaftLog::restore(restored.entries, hard_state.commit, restored.applied);
        let mut node = RaftNode {
            id: config.id,
            rng: ChaCha8Rng::seed_from_u64(config.random_seed),
            membership,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            role: Role::Follower,
            log,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: config.election_timeout_ticks_min,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            uncommitted_bytes: 0,
            transfer_target: None,
            transfer_elapsed_ticks: 0,
            reads: ReadQueue::default(),
            replication_pending: false,
            match_scratch: Vec::new(),
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            read_states: Vec::new(),
            dropped_reads: Vec::new(),
            last_hard_state: hard_state,
            last_role_state: RoleState {
                role: Role::Follower,
                term: hard_state.term,
                leader: None,
            },
            next_ready_number: ReadyNumber(1),
            stats: Stats::default(),
            config,
        };
        node.last_hard_state = node.hard_state();
        node.reset_election_timer();
        tracing::info!(node = %node.id, term = %node.term, last_index = %node.log.last_index(), "raft node started");
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn term(&self) -> Term {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    pub fn role_state(&self) -> RoleState {
        RoleState {
            role: self.role,
            term: self.term,
            leader: self.leader,
        }
    }

    pub fn commit_index(&self) -> LogIndex {
        self.log.committed()
    }

    /// Last index handed out for applying.
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied()
    }

    /// Every entry up to this index is durable on this replica.
    pub fn persisted_index(&self) -> LogIndex {
        self.log.persisted()
    }

    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    pub fn last_term(&self) -> Term {
        self.log.last_term()
    }

    /// The entry at `index`, if this replica's log contains it.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }

    /// The leader's record of `peer`; `None` unless this replica leads and `peer` is
    /// another member.
    pub fn progress(&self, peer: NodeId) -> Option<&Progress> {
        self.progress.get(&peer)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The target of the leadership transfer in progress, if any.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer_target
    }

    /// Advances logical time by one tick: election timeouts at followers, heartbeats and
    /// check-quorum at the leader.
    pub fn tick(&mut self) {
        let before = self.invariant_snapshot();
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
        self.check_invariants(&before);
    }

    /// Handles one message from another replica.
    ///
    /// # Errors
    ///
    /// Returns why the message was rejected or ignored. Rejection is the protocol's answer
    /// to bad or stale input, never a failure of the node; the caller may log or drop it.
    pub fn step(&mut self, message: Message) -> Result<(), Rejection> {
        let before = self.invariant_snapshot();
        let result = self.step_message(message);
        self.check_invariants(&before);
        result
    }

    /// Appends `data` to the log if this replica leads.
    ///
    /// The entry is replicated with the next `Ready`, together with every other proposal
    /// made since the previous one.
    ///
    /// # Errors
    ///
    /// Returns [`ProposeError`] when this replica does not lead, a leadership transfer is
    /// under way, or the uncommitted bytes reached `max_uncommitted_bytes`.
    pub fn propose(&mut self, data: bytes::Bytes) -> Result<ProposalId, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(target) = self.transfer_target {
            return Err(ProposeError::TransferInProgress { target });
        }
        let index = self.log.last_index().next();
        let entry = Entry {
            term: self.term,
            index,
            kind: EntryKind::Normal,
            data,
        };
        let size = entry.size_bytes();
        // A proposal larger than the whole limit is still accepted into an empty pipeline,
        // so that one large entry cannot be rejected forever.
        if self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.config.max_uncommitted_bytes
        {
            return Err(ProposeError::UncommittedLimit {
                uncommitted_bytes: self.uncommitted_bytes,
                limit_bytes: self.config.max_uncommitted_bytes,
            });
        }
        self.uncommitted_bytes += size;
        self.log.append(entry);
        self.replication_pending = true;
        Ok(ProposalId {
            term: self.term,
            index,
        })
    }

    /// Queues a linearizable read identified by `context`.
    ///
    /// Once a quorum confirms that this replica still leads, a [`ReadState`] with the same
    /// context comes out in a `Ready`. If leadership is lost first, the context comes out
    /// in `dropped_reads`.
    ///
    /// # Errors
    ///
    /// Returns [`ReadIndexError`] when this replica does not lead or too many reads are
    /// pending.
    pub fn read_index(&mut self, context: u64) -> Result<(), ReadIndexError> {
        if self.role != Role::Leader {
            return Err(ReadIndexError::NotLeader {
                leader: self.leader,
            });
        }
        if self.reads.pending() >= self.config.max_pending_reads {
            return Err(ReadIndexError::TooManyPending {
                pending: self.reads.pending(),
            });
        }
        if !self.committed_in_current_term() {
            self.reads.push_waiting_for_commit(context);
            return Ok(());
        }
        self.reads.push_open(ReadState {
            context,
            read_index: self.log.committed(),
        });
        if self.membership.quorum() == 1 {
            self.reads.confirm_open(&mut self.read_states);
        }
        Ok(())
    }

    /// Starts handing leadership to `target`: the leader stops taking proposals, brings the
    /// target's log up to date, then tells it to campaign at once. The transfer is abandoned
    /// after `election_timeout_ticks_min` ticks.
    ///
    /// # Errors
    ///
    /// Returns [`TransferError`] when this replica does not lead or `target` cannot lead.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.id {
            return Err(TransferError::AlreadyLeader { target });
        }
        if !self.membership.voters.contains(&target) {
            return Err(TransferError::NotAVoter { target });
        }
        if self.transfer_target == Some(target) {
            return Ok(());
        }
        tracing::info!(node = %self.id, term = %self.term, %target, "leadership transfer started");
        self.transfer_target = Some(target);
        self.transfer_elapsed_ticks = 0;
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|progress| progress.match_index == self.log.last_index());
        if caught_up {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            self.replication_pending = true;
        }
        Ok(())
    }

    /// Records that the runtime lost its connection to `peer`: messages in flight to it are
    /// presumed lost, so the leader stops streaming and probes it again once it answers.
    /// Does nothing on a replica that does not lead or for a peer it does not track.
    pub fn report_unreachable(&mut self, peer: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        let before = self.invariant_snapshot();
        if let Some(progress) = self.progress.get_mut(&peer) {
            let next_index = progress.match_index.next();
            progress.become_probe(next_index);
            self.replication_pending = true;
            tracing::debug!(node = %self.id, %peer, "peer unreachable; probing it again");
        }
        self.check_invariants(&before);
    }

    /// Records that every batch up to `number` is durable.
    pub fn on_persisted(&mut self, number: ReadyNumber) {
        let before = self.invariant_snapshot();
        let persisted_before = self.log.persisted();
        self.log.mark_persisted(number);
        if self.role == Role::Leader && self.log.persisted() > persisted_before {
            self.maybe_commit();
        }
        self.check_invariants(&before);
    }

    /// Whether [`RaftNode::ready`] would return a batch.
    pub fn has_ready(&self) -> bool {
        self.replication_pending && self.role == Role::Leader
            || self.reads.has_open()
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || !self.read_states.is_empty()
            || !self.dropped_reads.is_empty()
            || self.log.has_unstable()
            || self.log.has_entries_to_apply()
            || self.hard_state() != self.last_hard_state
            || self.role_state() != self.last_role_state
    }

    /// Takes the next batch of work, or `None` when there is none.
    pub fn ready(&mut self) -> Option<Ready> {
        if self.role == Role::Leader {
            self.flush_replication();
        }
        if !self.has_ready() {
            return None;
        }
        let number = self.next_ready_number;
        self.next_ready_number = ReadyNumber(number.0 + 1);

        let hard_state = self.hard_state();
        let role_state = self.role_state();
        let ready = Ready {
            number,
            role_state: (role_state != self.last_role_state).then_some(role_state),
            hard_state: (hard_state != self.last_hard_state).then_some(hard_state),
            entries: self.log.take_unstable(number),
            messages: core::mem::take(&mut self.messages),
            messages_after_persist: core::mem::take(&mut self.messages_after_persist),
            committed_entries: self
                .log
                .take_entries_to_apply(self.config.max_committed_entries_per_ready),
            read_states: core::mem::take(&mut self.read_states),
            dropped_reads: core::mem::take(&mut self.dropped_reads),
        };
        self.last_hard_state = hard_state;
        self.last_role_state = role_state;
        Some(ready)
    }

    /// Queues a message to `to` in the current term.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        let term = self.term;
        self.send_with_term(to, term, body);
    }

    pub(crate) fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        let message = Message {
            from: self.id,
            to,
            term,
            body,
        };
        if message.body.may_send_before_persist() {
            self.messages.push(message);
        } else {
            self.messages_after_persist.push(message);
        }
    }

    pub(crate) fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed()) == Some(self.term)
    }

    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        let min = self.config.election_timeout_ticks_min;
        let spread = self.config.election_timeout_ticks_max - min;
        let offset = (self.rng.next_u64() % u64::from(spread)) as u32;
        self.randomized_election_timeout_ticks = min + offset;
    }

    /// Whether this replica may campaign: only voters lead.
    pub(crate) fn is_promotable(&self) -> bool {
        self.membership.voters.contains(&self.id)
    }
}

/// Names the leader for an error message, or says that none is known.
fn describe_leader(leader: Option<NodeId>) -> alloc::string::String {
    match leader {
        Some(leader) => alloc::format!("the leader is {leader}"),
        None => alloc::string::String::from("no leader is known"),
    }
}

/// Rejects a restored state whose log and hard state contradict each other, which only
/// corrupt or mismatched data can produce.
fn check_restored_state(restored: &RestoredState) -> Result<(), NewNodeError> {
    let mut previous_term = Term(0);
    for (offset, entry) in restored.entries.iter().enumerate() {
        let expected_index = offset as u64 + 1;
        if entry.index.0 != expected_index {
            return Err(NewNodeError::InconsistentState {
                reason: "log indexes are not contiguous from 1",
                index: expected_index,
            });
        }
        if entry.term < previous_term {
            return Err(NewNodeError::InconsistentState {
                reason: "log terms decrease",
                index: expected_index,
            });
        }
        previous_term = entry.term;
    }
    if previous_term > restored.hard_state.term {
        return Err(NewNodeError::InconsistentState {
            reason: "the last log term is newer than the stored term",
            index: restored.entries.len() as u64,
        });
    }
    // A commit index past the durable log is not an error: the commit index is a hint that
    // the leader sends again, so the log restores it clamped to the last entry.
    Ok(())
}
