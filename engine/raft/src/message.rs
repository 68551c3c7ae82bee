//! Messages exchanged between the replicas of one Raft group.
//!
//! Every message carries the sender's term. A receiver first compares terms (a newer term
//! makes it a follower, an older one makes the message stale) and only then looks at the
//! body, so the body types never repeat the term.

use alloc::vec::Vec;

use crate::types::{Entry, LogIndex, NodeId, SnapshotMeta, Term};

/// One message from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term, except in `PreVote` and a granted `PreVoteResponse`, which carry
    /// the term the pre-candidate would campaign in.
    pub term: Term,
    pub body: MessageBody,
}

/// What a message asks or reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Asks whether the receiver would vote for the sender in `term` without changing
    /// anyone's term, so that a node cut off from the group cannot raise the term by
    /// campaigning over and over.
    PreVote {
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    RequestVote {
        last_log_index: LogIndex,
        last_log_term: Term,
        /// Set when the election follows a leadership transfer, so that voters disregard
        /// the current leader's lease.
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
    },
    /// Replicates `entries`, which follow the entry at `prev_log_index`.
    AppendEntries {
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        /// The leader's commit index, or 0 while the leader holds back a receiver that is
        /// catching up.
        leader_commit: LogIndex,
    },
    AppendEntriesResponse {
        outcome: AppendOutcome,
        /// Set while the sender is catching up after starting without data. Its log may
        /// follow a leader that a newer term has already replaced, so the leader counts its
        /// acknowledgements only once it has confirmed its own term since.
        catching_up: bool,
    },
    /// Asserts leadership, carries the commit index and, when `read_round` is set,
    /// asks the follower to confirm leadership for that round of ReadIndex reads.
    Heartbeat {
        /// Never above the follower's known match index, so that a follower never commits
        /// entries that may differ from the leader's.
        leader_commit: LogIndex,
        /// The leader's own commit index, uncapped. A follower never commits up to it; a
        /// replica that is catching up waits until its durable log reaches it. 0 while the
        /// leader holds back a catching-up receiver, which keeps it catching up.
        committed_at_leader: LogIndex,
        read_round: Option<u64>,
    },
    HeartbeatResponse {
        read_round: Option<u64>,
        /// Set while the sender is catching up (see `AppendEntriesResponse`).
        catching_up: bool,
    },
    /// Replaces the receiver's log up to `snapshot.index` with the snapshot that the
    /// runtimes transferred beside this message; the receiver's runtime steps it into the
    /// core only once it holds the snapshot's data durably. Answered with an
    /// `AppendEntriesResponse`.
    InstallSnapshot {
        snapshot: SnapshotMeta,
    },
    /// Tells the receiver to start an election at once; the last step of a leadership
    /// transfer, sent once the target's log matches the leader's.
    TimeoutNow,
}

/// A follower's response to an `AppendEntries`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to and including `match_index`.
    Accepted { match_index: LogIndex },
    /// The follower has no entry at `rejected_prev_index` with the leader's term there.
    ///
    /// The hint lets the leader skip a whole term of conflicting entries per round trip:
    /// `hint_index` is the largest index at or below `rejected_prev_index` whose entry has a
    /// term no greater than the leader's `prev_log_term`, and `hint_term` is that entry's term.
    Rejected {
        rejected_prev_index: LogIndex,
        hint_index: LogIndex,
        hint_term: Term,
    },
    /// The follower's log ends at `last_index`, below a commit index the leader sent it as
    /// matching: it lost entries it had acknowledged (its data was wiped, for instance), and
    /// the leader must replicate to it again from the start.
    LostEntries { last_index: LogIndex },
}

impl MessageBody {
    /// Whether a message of this kind may leave before the sender's pending log and hard
    /// state writes are durable.
    ///
    /// A leader's replication traffic may: it asserts nothing about the leader's own disk,
    /// and a leader writing its log in parallel with its followers is safe because its own
    /// entries count toward a quorum only once durable. Pre-votes change no state. A
    /// heartbeat response only states that the sender had not moved past the leader's term
    /// when it responded, which stays true even if a crash loses that term, and whether it
    /// was catching up, which a crash can only turn back on. Every message
    /// that reports a vote or log contents must wait for those to be durable. A leader's
    /// AppendEntries also wait while its term is not yet durable, which in practice only
    /// happens to a single voter (`RaftNode::send_with_term`).
    pub fn may_send_before_persist(&self) -> bool {
        match self {
            MessageBody::AppendEntries { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::HeartbeatResponse { .. }
            | MessageBody::TimeoutNow
            | MessageBody::PreVote { .. }
            | MessageBody::PreVoteResponse { .. } => true,
            MessageBody::RequestVote { .. }
            | MessageBody::RequestVoteResponse { .. }
            | MessageBody::AppendEntriesResponse { .. } => false,
        }
    }

    /// A short name of the message kind, for logs and counters.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}
