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
//!
//! Snapshots: the runtime serializes its state machine at an applied index, stores the
//! bytes durably together with [`RaftNode::snapshot_meta`], and then calls
//! [`RaftNode::compact`], which lets the core drop entries and send the snapshot to a
//! follower that needs compacted entries. Such a follower gets an
//! [`MessageBody::InstallSnapshot`]; the runtimes move the bytes beside it, and the receiving
//! runtime steps the message into its core once it has stored them durably. The core then hands
//! back [`Ready::snapshot_to_install`], which the runtime applies to its state machine and
//! storage before the batch's `committed_entries`.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use crate::config::{Config, ConfigError, ReplicationLimits};
use crate::log::RaftLog;
use crate::membership::MembershipLog;
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ReplicationState};
use crate::reads::{ReadQueue, ReadState};
use crate::types::{
    Entry, EntryKind, GroupTiming, HardState, InvalidChange, LogIndex, Membership,
    MembershipChange, MembershipChangeEntry, NodeId, ReadyNumber, SnapshotMeta, Term,
};

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
    /// The newest snapshot stored, if any; the state machine must have been restored from
    /// it.
    pub snapshot: Option<SnapshotMeta>,
    /// The durable log, contiguous from one past the snapshot's index (or from 1).
    pub entries: Vec<Entry>,
    /// The last index the state machine has already applied, if it keeps its own durable
    /// state; 0 when the state machine is rebuilt from the log.
    pub applied: LogIndex,
    /// Set when storage records that this replica was catching up (see
    /// [`RaftNode::is_catching_up`]) and no `Ready` with `catch_up_ended` became durable
    /// since. A replica without any durable state catches up even when this is false,
    /// unless it is `founding`.
    pub catching_up: bool,
    /// Set when this replica is a founding member of a new group, started with the group's
    /// initial membership. A blank founder never voted or acknowledged an entry, so it does
    /// not catch up. It votes as in plain Raft, so that a first leader that fails before
    /// its log reached every founder does not stall elections. No replica can tell a new
    /// group from one whose data it lost, so only the runtime's operator can set this. Set
    /// for a wiped replica, it lets the replica vote twice in a term and a deposed leader
    /// commit through it. Ignored when the replica has durable state or `catching_up` is set.
    pub founding: bool,
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
    /// A snapshot a leader sent, which replaces this replica's log up to its index. Before
    /// `entries` and `committed_entries`: restore the state machine from its bytes, and make
    /// storage drop the log up to its index (every entry when `log_kept` is false).
    pub snapshot_to_install: Option<SnapshotInstall>,
    /// Set when the membership in force changed since the previous batch (a change entry
    /// appended or truncated, or a snapshot installed).
    pub membership: Option<Membership>,
    /// Set once, in the batch after this replica stopped catching up. Storage records that
    /// it was catching up before it writes anything for a replica that started without
    /// durable state, and forgets it only once this batch is durable; a restart in between
    /// catches up again, since the vote and log that end it are not yet stored.
    pub catch_up_ended: bool,
}

/// A snapshot to install; see [`Ready::snapshot_to_install`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInstall {
    pub snapshot: SnapshotMeta,
    /// Whether the entries above the snapshot's index stay: they do when the log held the
    /// snapshot's last entry durably. When false, storage drops every entry of the group.
    pub log_kept: bool,
}

impl Ready {
    /// Whether this batch has anything to persist before `messages_after_persist` leave.
    pub fn must_persist(&self) -> bool {
        self.hard_state.is_some()
            || !self.entries.is_empty()
            || self.snapshot_to_install.is_some()
            || self.catch_up_ended
    }
}

/// The outcome of the runtime's transfer of a snapshot to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotTransfer {
    /// The follower stored the snapshot; its acknowledgement follows as a message.
    Finished,
    /// The transfer broke off; the leader tries again after the next heartbeat round trip.
    Failed,
}

/// Campaigns after a leader-down report, the first included, whose timeout is drawn from
/// the short range. Three retry a vote split between two followers that learned of the
/// crash together, and are few enough that a group that cannot elect a leader soon falls
/// back to its normal timeout.
const QUICK_CAMPAIGNS_AFTER_LEADER_DOWN: u32 = 3;

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
    /// Elections this replica started, each raising its term; pre-vote rounds not counted.
    pub elections_started: u64,
    /// Elections this replica won.
    pub elections_won: u64,
    /// Times this follower forgot its leader because the runtime reported it down
    /// ([`RaftNode::report_leader_down`]).
    pub leader_down_reports: u64,
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

/// The reason a membership change was not appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipChangeError {
    #[error("not the leader; {}", describe_leader(*.leader))]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership is being transferred to {target}; retry at the new leader")]
    TransferInProgress { target: NodeId },
    #[error(
        "the leader has not yet committed an entry of its term, so an earlier leader's \
         uncommitted change may still be in force; retry shortly"
    )]
    LeaderNotReady,
    #[error(
        "the membership change at index {index} is not committed yet; one change at a time, \
         retry once it commits"
    )]
    ChangePending { index: LogIndex },
    #[error("removing the leader {leader}: leadership is moving to {target} first; retry there")]
    LeaderTransferring { leader: NodeId, target: NodeId },
    #[error(
        "removing {removed} would leave {able} of the remaining voters able to vote, fewer \
         than the {quorum} an election needs: {behind:?} have not caught up with the \
         committed log, and a voter that lost its data votes for no candidate until it has; \
         retry once they catch up"
    )]
    VotersBehind {
        removed: NodeId,
        able: usize,
        quorum: usize,
        behind: Vec<NodeId>,
    },
    #[error(transparent)]
    Invalid(#[from] InvalidChange),
}

/// The reason [`RaftNode::compact`] refused a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    #[error(
        "snapshot at {snapshot_index} is past the applied index {applied}; take snapshots \
         of applied state only"
    )]
    NotApplied {
        snapshot_index: LogIndex,
        applied: LogIndex,
    },
    #[error(
        "snapshot at {snapshot_index} is not newer than the stored snapshot at \
         {stored_index}"
    )]
    NotNewer {
        snapshot_index: LogIndex,
        stored_index: LogIndex,
    },
    #[error(
        "snapshot at {snapshot_index} has term {given}, but the log's entry there has {actual}"
    )]
    TermMismatch {
        snapshot_index: LogIndex,
        given: Term,
        actual: Term,
    },
    #[error("compacting through {through} would pass the snapshot's index {snapshot_index}")]
    PastSnapshot {
        through: LogIndex,
        snapshot_index: LogIndex,
    },
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
    /// The membership in force, a copy of `membership_log.effective()`.
    pub(crate) membership: Membership,
    pub(crate) membership_log: MembershipLog,
    /// The membership the previous `Ready` reported.
    pub(crate) last_membership: Membership,
    /// The newest snapshot the runtime stored, sent to followers that need compacted
    /// entries.
    pub(crate) latest_snapshot: Option<SnapshotMeta>,
    /// A snapshot from the leader that the next `Ready` hands to the runtime.
    pub(crate) snapshot_to_install: Option<SnapshotInstall>,
    /// Set while a replica that started without any durable state, and not as a founding
    /// member (see [`RestoredState::founding`]), has not yet stored the leader's committed
    /// log. It may have voted or acknowledged entries before it lost its data, so until
    /// then it neither campaigns nor votes, except in a group whose logs are all still
    /// empty (a new group). Its responses carry a flag for it, and the leader counts them
    /// only once it has confirmed its term since (see `catch_up.rs`).
    pub(crate) catching_up: bool,
    /// The leader's commit index from the newest `AppendEntries` or heartbeat; catching up
    /// ends once the durable log reaches it.
    pub(crate) catch_up_target: Option<LogIndex>,
    /// Catching up ended and no `Ready` reported it yet.
    pub(crate) catch_up_ended_unreported: bool,
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
    /// Whether `shorten_election_timeout` already moved the current timeout forward.
    pub(crate) election_timeout_shortened: bool,
    /// Campaigns that still draw their timeout from the short range of
    /// [`RaftNode::report_leader_down`], so that a vote split between followers that
    /// learned of the crash together is retried as quickly; 0 once a leader is known.
    pub(crate) quick_campaigns_left: u32,

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
    /// Newest term of a durable hard state: the restored one, then each one handed out in
    /// a `Ready` once that batch is reported durable.
    pub(crate) durable_term: Term,
    /// Terms handed out in batches not yet reported durable, with each batch's number, in
    /// order.
    pub(crate) terms_awaiting_persist: Vec<(ReadyNumber, Term)>,
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
        let blank = hard_state == HardState::default()
            && restored.entries.is_empty()
            && restored.snapshot.is_none();
        let (base_index, base_term, base_membership) = match &restored.snapshot {
            Some(snapshot) => (snapshot.index, snapshot.term, snapshot.membership.clone()),
            None => (LogIndex(0), Term(0), config.membership.clone()),
        };
        let mut membership_log = MembershipLog::new(base_membership, base_index);
        for entry in &restored.entries {
            if entry.kind == EntryKind::MembershipChange {
                // `check_restored_state` decoded every change already.
                if let Ok(decoded) = MembershipChangeEntry::decode(&entry.data) {
                    membership_log.push(entry.index, decoded.membership);
                }
            }
        }
        let membership = membership_log.effective().clone();
        let log = RaftLog::restore(
            base_index,
            base_term,
            restored.entries,
            hard_state.commit,
            restored.applied,
        );
        let mut node = RaftNode {
            id: config.id,
            rng: ChaCha8Rng::seed_from_u64(config.random_seed),
            last_membership: membership.clone(),
            membership,
            membership_log,
            latest_snapshot: restored.snapshot,
            snapshot_to_install: None,
            catching_up: (blank && !restored.founding) || restored.catching_up,
            catch_up_target: None,
            catch_up_ended_unreported: false,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            role: Role::Follower,
            log,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            // Drawn by `reset_election_timer` below, from the timing in force.
            randomized_election_timeout_ticks: 0,
            election_timeout_shortened: false,
            quick_campaigns_left: 0,
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
            durable_term: hard_state.term,
            terms_awaiting_persist: Vec::new(),
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
        tracing::info!(node = %node.id, term = %node.term, last_index = %node.log.last_index(), catching_up = node.catching_up, "raft node started");
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

    /// The membership in force: the newest change in the log, appended or committed.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Returns the index of the newest membership change in the log, if one is above the
    /// base.
    pub fn last_membership_change_index(&self) -> Option<LogIndex> {
        self.membership_log.last_change_index()
    }

    /// Returns whether this replica started without durable state, and not as a founding
    /// member, and has not yet stored the leader's committed log. It does not vote
    /// meanwhile.
    pub fn is_catching_up(&self) -> bool {
        self.catching_up
    }

    /// Returns the newest snapshot the runtime stored, as last given to
    /// [`RaftNode::compact`] or installed from a leader.
    pub fn latest_snapshot(&self) -> Option<&SnapshotMeta> {
        self.latest_snapshot.as_ref()
    }

    /// Returns the first index still in the in-memory log. Every entry before it is in the
    /// snapshot.
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
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

    /// Returns the replication limits in force.
    pub fn replication_limits(&self) -> ReplicationLimits {
        self.config.replication_limits()
    }

    /// Replaces the limits on entries and bytes per `AppendEntries` and in flight per
    /// follower. Messages already in flight stay as they are; the next ones follow the new
    /// limits.
    ///
    /// # Errors
    /// A limit of 0; the old limits stay in force.
    pub fn set_replication_limits(&mut self, limits: ReplicationLimits) -> Result<(), ConfigError> {
        limits.validate()?;
        self.config.max_entries_per_message = limits.max_entries_per_message;
        self.config.max_bytes_per_message = limits.max_bytes_per_message;
        self.config.max_inflight_messages = limits.max_inflight_messages;
        self.config.max_inflight_bytes = limits.max_inflight_bytes;
        self.config.read_batch_max = limits.read_batch_max;
        Ok(())
    }

    /// Brings this follower's election forward to `ticks` after it last heard from its
    /// leader, when that is sooner than its randomized timeout; never below
    /// `election_timeout_ticks_min`. A failure detector that suspects the leader calls it,
    /// so the follower campaigns sooner than a fixed timeout while the minimum, which
    /// leases and check-quorum rely on, still holds. Leaders and candidates ignore it.
    /// Returns whether the timeout moved.
    pub fn shorten_election_timeout(&mut self, ticks: u32) -> bool {
        if self.role != Role::Follower || self.leader.is_none() || self.election_timeout_shortened {
            return false;
        }
        let shortened = ticks.max(self.timing().election_timeout_ticks_min);
        let current = self.randomized_election_timeout_ticks;
        if shortened >= current {
            return false;
        }
        // A point in the first half of what is left of this follower's own random
        // timeout, so that followers that suspect the leader at once still campaign on
        // different ticks.
        let room = (current - shortened) / 2;
        let offset = (self.rng.next_u64() % (u64::from(room) + 1)) as u32;
        self.randomized_election_timeout_ticks = shortened + offset;
        self.election_timeout_shortened = true;
        true
    }

    /// Records that `peer` is down for certain, not merely silent: the runtime's connection
    /// to it closed and a new one was refused, so no process listens at its address. When
    /// `peer` is this follower's leader, the follower clears it, which ends the leader's
    /// lease here: it grants pre-votes and votes to other candidates at once, and campaigns
    /// itself 1 to `heartbeat_interval_ticks` ticks from now instead of after its election
    /// timeout. The random tick keeps followers that learn of the crash together from
    /// splitting the vote. A split vote is retried twice after a short wait, drawn from a
    /// range twice as wide each time, before the normal timeout applies again. After a
    /// campaign message, its own or one it voted for, a replica waits a heartbeat interval
    /// more for the result. Hearing any leader ends the
    /// short waits and draws a normal timeout.
    ///
    /// Safe whatever the truth: Raft's safety never depends on when an election starts, and
    /// this core serves no reads on a lease. A wrong report costs one election at most, and a
    /// leader that is still alive takes the follower back with its next message.
    /// Leaders, candidates and followers of another leader ignore it. Returns whether the
    /// follower forgot its leader.
    pub fn report_leader_down(&mut self, peer: NodeId) -> bool {
        if self.role != Role::Follower || self.leader != Some(peer) {
            return false;
        }
        let before = self.invariant_snapshot();
        self.leader = None;
        self.quick_campaigns_left = QUICK_CAMPAIGNS_AFTER_LEADER_DOWN;
        let offset = self.quick_campaign_ticks();
        let campaign_at = self.election_elapsed_ticks.saturating_add(offset);
        if campaign_at < self.randomized_election_timeout_ticks {
            self.randomized_election_timeout_ticks = campaign_at;
            self.election_timeout_shortened = true;
        }
        self.stats.leader_down_reports += 1;
        tracing::info!(node = %self.id, leader = %peer, term = %self.term, campaign_in_ticks = offset, "leader is down; campaigning early");
        self.check_invariants(&before);
        true
    }

    /// Ticks since this replica last heard from a leader or reset its election timer.
    pub fn election_elapsed_ticks(&self) -> u32 {
        self.election_elapsed_ticks
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

    /// Appends a change to the group's membership if this replica leads. The change takes
    /// effect at once (on each replica when it appends the entry), and the next change is
    /// accepted only once this one commits.
    ///
    /// Removing the leader itself first hands leadership to the most caught-up voter and
    /// returns [`MembershipChangeError::LeaderTransferring`]; the caller retries at the new
    /// leader. `context` is stored in the entry for the runtime (a new member's addresses,
    /// for instance); the core does not read it.
    ///
    /// # Errors
    ///
    /// Returns [`MembershipChangeError`] when this replica does not lead, has not yet
    /// committed an entry of its own term (an earlier leader's uncommitted change could
    /// otherwise combine with this one into majorities that do not overlap), another change
    /// is uncommitted, or the change does not fit the membership.
    pub fn propose_membership_change(
        &mut self,
        change: MembershipChange,
        context: bytes::Bytes,
    ) -> Result<ProposalId, MembershipChangeError> {
        let before = self.invariant_snapshot();
        let result = self.append_membership_change(change, context);
        self.check_invariants(&before);
        result
    }

    fn append_membership_change(
        &mut self,
        change: MembershipChange,
        context: bytes::Bytes,
    ) -> Result<ProposalId, MembershipChangeError> {
        if self.role != Role::Leader {
            return Err(MembershipChangeError::NotLeader {
                leader: self.leader,
            });
        }
        if let Some(target) = self.transfer_target {
            return Err(MembershipChangeError::TransferInProgress { target });
        }
        if !self.committed_in_current_term() {
            return Err(MembershipChangeError::LeaderNotReady);
        }
        if let Some(index) = self.membership_log.last_change_index()
            && index > self.log.committed()
        {
            return Err(MembershipChangeError::ChangePending { index });
        }
        let next = self.membership.apply(change)?;
        if change == (MembershipChange::Remove { node: self.id }) {
            let target = self
                .most_caught_up_voter()
                .ok_or(InvalidChange::LastVoter { node: self.id })?;
            tracing::info!(node = %self.id, term = %self.term, %target, "removal of the leader requested; transferring leadership first");
            // The target is a voter other than this leader, so the transfer starts.
            let _ = self.transfer_leadership(target);
            return Err(MembershipChangeError::LeaderTransferring {
                leader: self.id,
                target,
            });
        }
        if let MembershipChange::Remove { node } = change
            && self.membership.voters.contains(&node)
        {
            self.check_voters_left_can_elect(node, &next)?;
        }
        let index = self.log.last_index().next();
        let entry = Entry {
            term: self.term,
            index,
            kind: EntryKind::MembershipChange,
            data: MembershipChangeEntry {
                change,
                membership: next.clone(),
                context,
            }
            .encode(),
        };
        tracing::info!(node = %self.id, term = %self.term, %index, %change, "membership change appended");
        self.uncommitted_bytes += entry.size_bytes();
        self.log.append(entry);
        self.membership_log.push(index, next);
        self.refresh_membership();
        self.replication_pending = true;
        // A change can shrink the quorum, so entries may commit at once.
        self.maybe_commit();
        Ok(ProposalId {
            term: self.term,
            index,
        })
    }

    /// Rejects removing voter `removed` when fewer than a quorum of the voters left in `next`
    /// could vote in an election. A voter whose data was wiped votes for no candidate with
    /// a log until it has caught up. Removing another voter meanwhile can leave a group
    /// that elects no leader once this one fails. The catching-up voter needs a leader to
    /// catch up from, so that lasts until an operator steps in.
    ///
    /// A follower that reports catching up never counts as able to vote. Any other counts
    /// when its match index reaches the commit index, or when this leader never saw it lose
    /// acknowledged entries, it responded in this check-quorum round, and it is within
    /// `promote_lag_entries_max` of the log's end. The second case keeps a follower that
    /// merely trails a busy leader from blocking the change. A follower wiped before this
    /// term began, and not yet near the log's end, does not count either.
    fn check_voters_left_can_elect(
        &self,
        removed: NodeId,
        next: &Membership,
    ) -> Result<(), MembershipChangeError> {
        let committed = self.log.committed();
        let last_index = self.log.last_index();
        let behind: Vec<NodeId> = next
            .voters
            .iter()
            .copied()
            .filter(|voter| *voter != self.id)
            .filter(|voter| {
                !self.progress.get(voter).is_some_and(|progress| {
                    let near_the_end = progress
                        .match_index
                        .0
                        .saturating_add(self.config.promote_lag_entries_max)
                        >= last_index.0;
                    !progress.catching_up
                        && (progress.match_index >= committed
                            || (!progress.lost_acknowledged_entries
                                && progress.recent_active
                                && near_the_end))
                })
            })
            .collect();
        let able = next.voters.len() - behind.len();
        let quorum = next.quorum();
        if able >= quorum {
            return Ok(());
        }
        tracing::info!(node = %self.id, term = %self.term, %removed, able, quorum, ?behind, "removal rejected: the voters left could not elect a leader");
        Err(MembershipChangeError::VotersBehind {
            removed,
            able,
            quorum,
            behind,
        })
    }

    /// Finds the voter other than this replica with the highest match index, preferring
    /// voters that are not catching up (which do not campaign) and then voters heard from
    /// since the last check-quorum round, so that a crashed voter with a long log is not
    /// picked again and again.
    fn most_caught_up_voter(&self) -> Option<NodeId> {
        self.membership
            .voters
            .iter()
            .filter(|voter| **voter != self.id)
            .max_by_key(|voter| {
                self.progress
                    .get(voter)
                    .map_or((false, false, LogIndex(0)), |progress| {
                        (
                            !progress.catching_up,
                            progress.recent_active,
                            progress.match_index,
                        )
                    })
            })
            .copied()
    }

    /// Makes `membership` follow the membership log, and the leader's progress follow the
    /// membership.
    pub(crate) fn refresh_membership(&mut self) {
        let effective = self.membership_log.effective();
        if *effective == self.membership {
            return;
        }
        let timing_before = self.timing();
        self.membership = effective.clone();
        tracing::info!(node = %self.id, term = %self.term, voters = ?self.membership.voters, learners = ?self.membership.learners, "membership in force changed");
        let timing = self.timing();
        if timing != timing_before {
            tracing::info!(node = %self.id, term = %self.term, %timing, "group timing in force changed");
            // The current wait ends within the new range; elapsed ticks still count.
            self.draw_election_timeout();
        }
        if self.role != Role::Leader {
            return;
        }
        let next_index = self.log.last_index().next();
        let members: Vec<NodeId> = self
            .membership
            .members()
            .filter(|member| *member != self.id)
            .collect();
        self.progress.retain(|peer, _| members.contains(peer));
        for member in members {
            self.progress
                .entry(member)
                .or_insert_with(|| Progress::new(next_index));
        }
        if let Some(target) = self.transfer_target
            && !self.membership.voters.contains(&target)
        {
            tracing::info!(node = %self.id, %target, "leadership transfer abandoned: the target is no longer a voter");
            self.transfer_target = None;
        }
    }

    /// Promotes one learner that asked for it once its log is close enough to the leader's.
    pub(crate) fn maybe_promote_learners(&mut self) {
        if self.membership.promote_when_caught_up.is_empty() {
            return;
        }
        let last_index = self.log.last_index();
        // Only a learner that has acknowledged entries in this term and is streaming them
        // counts as caught up: promoting one that never answered would make the group wait
        // for it. A learner held back while it catches up would not count as a voter yet.
        let ready = self
            .membership
            .promote_when_caught_up
            .iter()
            .copied()
            .find(|learner| {
                self.progress.get(learner).is_some_and(|progress| {
                    progress.counts_toward_quorum()
                        && progress.state == ReplicationState::Replicate
                        && progress.match_index.0 > 0
                        && progress
                            .match_index
                            .0
                            .saturating_add(self.config.promote_lag_entries_max)
                            >= last_index.0
                })
            });
        if let Some(learner) = ready {
            match self.append_membership_change(
                MembershipChange::Promote { node: learner },
                bytes::Bytes::new(),
            ) {
                Ok(_) => {
                    tracing::info!(node = %self.id, %learner, "learner caught up; promoting it to voter");
                }
                Err(error) => {
                    tracing::debug!(node = %self.id, %learner, %error, "learner caught up; promotion waits");
                }
            }
        }
    }

    /// Describes a snapshot of the state machine taken at `index`, for the runtime to store
    /// beside the snapshot's bytes: the term of the entry there and the membership in force.
    /// `None` when `index` is past the applied index or already compacted away.
    pub fn snapshot_meta(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index > self.log.applied() {
            return None;
        }
        Some(SnapshotMeta {
            index,
            term: self.log.term(index)?,
            membership: self.membership_log.at(index)?,
        })
    }

    /// Records that the runtime stored `snapshot` durably, and drops the in-memory entries
    /// up to `through` (at most the snapshot's index; the runtime may keep a tail of entries
    /// so that a follower slightly behind still gets entries rather than the snapshot).
    /// Followers that need an entry that is gone get the snapshot.
    ///
    /// # Errors
    ///
    /// Returns [`CompactError`] when the snapshot is not of applied state, not newer than
    /// the stored one, disagrees with the log's term, or `through` passes it.
    pub fn compact(
        &mut self,
        snapshot: SnapshotMeta,
        through: LogIndex,
    ) -> Result<(), CompactError> {
        if snapshot.index > self.log.applied() {
            return Err(CompactError::NotApplied {
                snapshot_index: snapshot.index,
                applied: self.log.applied(),
            });
        }
        if let Some(stored) = &self.latest_snapshot
            && snapshot.index < stored.index
        {
            return Err(CompactError::NotNewer {
                snapshot_index: snapshot.index,
                stored_index: stored.index,
            });
        }
        if let Some(actual) = self.log.term(snapshot.index)
            && actual != snapshot.term
        {
            return Err(CompactError::TermMismatch {
                snapshot_index: snapshot.index,
                given: snapshot.term,
                actual,
            });
        }
        if through > snapshot.index {
            return Err(CompactError::PastSnapshot {
                through,
                snapshot_index: snapshot.index,
            });
        }
        let through = through.min(self.log.persisted());
        self.log.compact_through(through);
        self.membership_log.compact_through(self.log.base_index());
        self.latest_snapshot = Some(snapshot);
        Ok(())
    }

    /// Records how the runtime's transfer of a snapshot to `peer` ended. Does nothing on a
    /// replica that does not lead or for a peer not waiting for a snapshot.
    pub fn report_snapshot(&mut self, peer: NodeId, outcome: SnapshotTransfer) {
        if self.role != Role::Leader {
            return;
        }
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        if progress.state != ReplicationState::Snapshot {
            return;
        }
        let pending = progress.pending_snapshot_index;
        match outcome {
            SnapshotTransfer::Finished => {
                // Wait for the follower's acknowledgement, or probe after the snapshot at
                // the next heartbeat round trip if it is lost.
                progress.become_probe(pending.next());
                progress.probe_sent = true;
            }
            SnapshotTransfer::Failed => {
                tracing::info!(node = %self.id, %peer, snapshot_index = %pending, "snapshot transfer failed; retrying after the next heartbeat");
                let next_index = progress.match_index.next();
                progress.become_probe(next_index);
                progress.probe_sent = true;
            }
        }
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
        let durable_batches = self
            .terms_awaiting_persist
            .iter()
            .take_while(|(batch, _)| *batch <= number)
            .count();
        for (_, term) in self.terms_awaiting_persist.drain(..durable_batches) {
            self.durable_term = self.durable_term.max(term);
        }
        if self.role == Role::Leader && self.log.persisted() > persisted_before {
            self.maybe_commit();
        }
        self.check_caught_up();
        self.check_invariants(&before);
    }

    /// Ends catching up once the durable log reaches the leader's commit index. The vote of
    /// the current term goes to that leader, so that this replica cannot grant a second vote
    /// in a term whose earlier vote it may have lost with its data.
    pub(crate) fn check_caught_up(&mut self) {
        if !self.catching_up {
            return;
        }
        let Some(target) = self.catch_up_target else {
            return;
        };
        // A new leader's commit index may still be below entries an earlier term
        // committed, until an entry of its own term commits, which covers them all.
        if self.log.persisted() < target
            || self.leader.is_none()
            || self.log.term(target) != Some(self.term)
        {
            return;
        }
        self.catching_up = false;
        self.catch_up_target = None;
        self.catch_up_ended_unreported = true;
        if self.vote.is_none() {
            self.vote = self.leader;
        }
        tracing::info!(node = %self.id, term = %self.term, leader = ?self.leader, persisted = %self.log.persisted(), "caught up with the leader's log; voting again");
    }

    /// Whether [`RaftNode::ready`] would return a batch.
    pub fn has_ready(&self) -> bool {
        self.replication_pending && self.role == Role::Leader
            || self.snapshot_to_install.is_some()
            || self.catch_up_ended_unreported
            || self.membership != self.last_membership
            || self.reads.round_due(self.config.read_batch_max)
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
        let membership = (self.membership != self.last_membership).then(|| {
            self.last_membership = self.membership.clone();
            self.membership.clone()
        });
        let ready = Ready {
            snapshot_to_install: self.snapshot_to_install.take(),
            membership,
            catch_up_ended: core::mem::take(&mut self.catch_up_ended_unreported),
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
        let newest_queued = self
            .terms_awaiting_persist
            .last()
            .map_or(self.durable_term, |(_, term)| *term);
        if ready.hard_state.is_some() && hard_state.term > newest_queued {
            self.terms_awaiting_persist.push((number, hard_state.term));
        }
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
        // A single voter elects itself alone, so it can replicate before its term is
        // durable. A crash would then restart it in the previous term, and it would lead
        // the same term again with other entries at the same indexes. A learner that
        // received the first entries would keep them as equal to the new ones. So a
        // leader's AppendEntries wait until its term is durable. Its other messages carry
        // no entries of the term, and a snapshot holds only committed ones. A leader
        // elected by other voters finds its term durable, because its vote requests left
        // only after that.
        let entries_of_undurable_term = self.role == Role::Leader
            && term > self.durable_term
            && matches!(message.body, MessageBody::AppendEntries { .. });
        if message.body.may_send_before_persist() && !entries_of_undurable_term {
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
        self.election_timeout_shortened = false;
        self.draw_election_timeout();
    }

    /// Returns the wait before a campaign after the leader was reported down: 1 to
    /// `heartbeat_interval_ticks` ticks for the first. Each retry draws from a range twice
    /// as wide, so that two followers that split the vote rarely draw the same tick again,
    /// and never wider than `election_timeout_ticks_min`.
    fn quick_campaign_ticks(&mut self) -> u32 {
        let timing = self.timing();
        let retry = QUICK_CAMPAIGNS_AFTER_LEADER_DOWN.saturating_sub(self.quick_campaigns_left);
        let spread_ticks = timing
            .heartbeat_interval_ticks
            .max(1)
            .saturating_mul(1 << retry.min(8))
            .min(timing.election_timeout_ticks_min.max(1));
        1 + (self.rng.next_u64() % u64::from(spread_ticks)) as u32
    }

    /// Draws the randomized election timeout from the range of the timing in force, or
    /// from the short range while campaigns after a leader-down report last.
    fn draw_election_timeout(&mut self) {
        if self.quick_campaigns_left > 0 && self.leader.is_none() {
            // Every wait drawn here follows a campaign message. A candidate's own needs a
            // round trip and an fdatasync at each voter before responses arrive, and the
            // winner of one this follower voted for needs as long to announce itself. So
            // either wait gets a heartbeat interval more.
            let answer_wait_ticks = self.timing().heartbeat_interval_ticks.max(1);
            self.randomized_election_timeout_ticks =
                self.quick_campaign_ticks() + answer_wait_ticks;
            return;
        }
        let timing = self.timing();
        let min = timing.election_timeout_ticks_min;
        let spread = timing.election_timeout_ticks_max - min;
        let offset = (self.rng.next_u64() % u64::from(spread)) as u32;
        self.randomized_election_timeout_ticks = min + offset;
    }

    /// Returns the heartbeat interval and election timeout range in force: the group's
    /// agreed timing once a timing change is in its log, the configured timing before.
    pub fn timing(&self) -> GroupTiming {
        self.membership
            .timing
            .unwrap_or_else(|| self.config.configured_timing())
    }

    /// Returns the heartbeat interval a leader uses: the smallest in force anywhere from the
    /// lowest match index of its voters to its last entry. A voter that has not appended a timing
    /// change yet still runs the election timeout from before it, so a leader that
    /// lengthened its heartbeat at once would make that voter time out.
    pub(crate) fn leader_heartbeat_interval_ticks(&self) -> u32 {
        let lowest_match = self
            .membership
            .voters
            .iter()
            .filter_map(|voter| self.progress.get(voter))
            .map(|progress| progress.match_index)
            .min();
        let configured = self.config.heartbeat_interval_ticks;
        match lowest_match {
            Some(lowest) => self
                .membership_log
                .heartbeat_interval_ticks_min_since(lowest, configured),
            None => self.timing().heartbeat_interval_ticks,
        }
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
    let (base_index, base_term) = match &restored.snapshot {
        Some(snapshot) => (snapshot.index, snapshot.term),
        None => (LogIndex(0), Term(0)),
    };
    if let Some(snapshot) = &restored.snapshot
        && (base_index.0 == 0 || snapshot.membership.check().is_err())
    {
        return Err(NewNodeError::InconsistentState {
            reason: "the snapshot has index 0 or an invalid membership",
            index: base_index.0,
        });
    }
    let mut previous_term = base_term;
    for (offset, entry) in restored.entries.iter().enumerate() {
        let expected_index = base_index.0 + offset as u64 + 1;
        if entry.kind == EntryKind::MembershipChange
            && MembershipChangeEntry::decode(&entry.data).is_err()
        {
            return Err(NewNodeError::InconsistentState {
                reason: "a membership change entry is unreadable",
                index: expected_index,
            });
        }
        if entry.index.0 != expected_index {
            return Err(NewNodeError::InconsistentState {
                reason: "log indexes are not contiguous from the snapshot's index",
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
            index: base_index.0 + restored.entries.len() as u64,
        });
    }
    // A commit index past the durable log is not an error: the commit index is a hint that
    // the leader sends again, so the log restores it clamped to the last entry.
    Ok(())
}
