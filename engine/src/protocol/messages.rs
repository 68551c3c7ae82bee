//! The archived types of the client protocol.
//!
//! These are plain owned types that derive rkyv's `Archive`, so their archived form is
//! the wire format. Conditions and scan ranges reuse the key-value store's own
//! [`Condition`] and [`ScanRange`].

use rkyv::{Archive, Deserialize, Serialize};

use crate::kv::{Condition, ScanRange};

/// The first frame a client sends on a connection.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The client protocol version the client speaks.
    pub protocol_version: u16,
    /// The cluster the client expects, or `None` to accept any cluster.
    pub cluster_id: Option<u64>,
}

/// The server's reply to a [`ClientHello`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum HelloReply {
    /// The server accepts the connection; requests may follow.
    Accepted(ServerHello),
    /// The server speaks another protocol version and closes the connection.
    UnsupportedVersion {
        /// The version the server speaks.
        server_version: u16,
    },
    /// The server belongs to another cluster than the client expects and closes the
    /// connection.
    ClusterIdMismatch {
        /// The cluster the server belongs to.
        server_cluster_id: u64,
    },
}

/// The server's identity and the client addresses of the cluster's members.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// The client protocol version the server speaks.
    pub protocol_version: u16,
    /// The cluster the server belongs to.
    pub cluster_id: u64,
    /// The server's node id, at least 1.
    pub node_id: u64,
    /// The number of Raft groups; a key belongs to group `crc32(key) % groups`.
    pub groups: u32,
    /// The client address of every member that has one, this node included.
    pub members: Vec<MemberAddress>,
}

/// A member's node id and client address.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberAddress {
    /// The member's node id, at least 1.
    pub node_id: u64,
    /// The `host:port` where the member takes client connections.
    pub client_address: String,
}

/// The requests of one `Messages` frame from a client.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RequestBatch {
    /// The requests, served concurrently.
    pub requests: Vec<Request>,
}

/// One request, tagged with an id that its response carries back.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// An id the client chooses; responses arrive in completion order, not request order.
    pub id: u64,
    /// The operation requested.
    pub operation: Operation,
}

/// The operations a client can request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Sets `key` to `value`.
    Put {
        /// The key to write, not empty.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Reads `key`, linearizably unless `stale`.
    Get {
        /// The key to read, not empty.
        key: Vec<u8>,
        /// Read this replica's state as it is instead of confirming leadership first.
        stale: bool,
    },
    /// Removes `key`.
    Delete {
        /// The key to remove, not empty.
        key: Vec<u8>,
    },
    /// Writes `new_value` (or deletes the key when `None`) only if `expected` holds.
    Cas {
        /// The key to test and write, not empty.
        key: Vec<u8>,
        /// The test applied to the key's current state.
        expected: Condition,
        /// The value to store when the test holds, or `None` to delete the key.
        new_value: Option<Vec<u8>>,
    },
    /// Reads up to `limit` keys of `range` from one group, in ascending key order.
    /// Keys are spread over groups by hash, so a whole-cluster scan reads every group and
    /// merges the pages.
    Scan {
        /// The group to read.
        group: u32,
        /// The keys to read.
        range: ScanRange,
        /// The maximum number of keys returned, at least 1.
        limit: u32,
        /// Read this replica's state as it is instead of confirming leadership first.
        stale: bool,
    },
    /// Reports the server's role and progress in every group.
    Status,
    /// Changes the membership of `group` at its leader; answered once the change entry
    /// commits.
    ChangeMembership {
        /// The group to change.
        group: u32,
        /// The change.
        change: MembershipChangeRequest,
    },
    /// Reports the membership of `group` as its leader sees it, with each member's
    /// progress.
    Membership {
        /// The group to report.
        group: u32,
    },
    /// Hands leadership of `group` to node `to`; answered once `to` leads.
    TransferLeader {
        /// The group.
        group: u32,
        /// The voter that is to lead, at least 1.
        to: u64,
    },
}

/// One change of a group's membership.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum MembershipChangeRequest {
    /// Adds `node` as a learner; with `promote_when_caught_up`, the leader makes it a
    /// voter once its log has caught up.
    AddLearner {
        /// The new member, at least 1.
        node: u64,
        /// Its peer address of shard 0, `ip:port`; shard `s` listens on the port plus `s`.
        peer_address: String,
        /// Its client address, `ip:port`.
        client_address: String,
        /// Its HTTP address, `ip:port`, if it serves one.
        http_address: Option<String>,
        /// Promote it to voter once it has caught up.
        promote_when_caught_up: bool,
    },
    /// Makes the learner `node` a voter.
    Promote {
        /// The learner, at least 1.
        node: u64,
    },
    /// Removes `node`; removing the leader first hands leadership to another voter.
    Remove {
        /// The member, at least 1.
        node: u64,
    },
}

impl MembershipChangeRequest {
    /// The node the change is about.
    pub fn node(&self) -> u64 {
        match self {
            MembershipChangeRequest::AddLearner { node, .. }
            | MembershipChangeRequest::Promote { node }
            | MembershipChangeRequest::Remove { node } => *node,
        }
    }
}

/// The responses of one `Messages` frame from a server.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ResponseBatch {
    /// The responses, in the order their requests completed.
    pub responses: Vec<Response>,
}

/// The response to the request with the same id.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The id of the request this response belongs to.
    pub id: u64,
    /// The result.
    pub reply: Reply,
}

/// The result of a request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A put was applied at log index `index`.
    Stored {
        /// The index of the log entry that carried the put.
        index: u64,
    },
    /// A delete was applied at log index `index`.
    Deleted {
        /// The index of the log entry that carried the delete.
        index: u64,
        /// Whether the key existed before the delete.
        existed: bool,
    },
    /// A compare-and-swap found its condition true and was applied at `index`.
    Swapped {
        /// The index of the log entry that carried the swap.
        index: u64,
    },
    /// The value of the key that a get read.
    Value {
        /// The value bytes.
        value: Vec<u8>,
        /// The index of the log entry that last wrote the key.
        mod_index: u64,
    },
    /// The keys a scan read.
    Page {
        /// The keys in ascending order.
        entries: Vec<ScanEntry>,
        /// Whether the group contains keys of the range after the last one returned.
        more: bool,
    },
    /// The server's role and progress in every group.
    Status(StatusReport),
    /// This node does not lead the key's group.
    NotLeader {
        /// The leader's node id, when this node has learned it.
        leader: Option<u64>,
        /// The leader's client address, when this node has learned it.
        leader_address: Option<String>,
    },
    /// A get found no value for its key.
    KeyNotFound,
    /// A compare-and-swap found its condition false and changed nothing.
    CasMismatch {
        /// The key's current value, or `None` when the key is absent.
        current: Option<CurrentValue>,
    },
    /// The value is longer than the store accepts.
    ValueTooLarge {
        /// The length of the rejected value.
        bytes: u64,
        /// The store's limit.
        max: u64,
    },
    /// The key is longer than the store accepts.
    KeyTooLarge {
        /// The length of the rejected key.
        bytes: u64,
        /// The store's limit.
        max: u64,
    },
    /// The request's key is empty.
    EmptyKey,
    /// The request did not complete within the server's request timeout.
    Timeout,
    /// The server cannot serve the request now (overloaded, stopping, a proposal replaced
    /// by another leader's entry); retrying may succeed.
    Unavailable(String),
    /// The request is invalid and retrying it cannot succeed.
    Invalid(String),
    /// A membership change committed at log index `index`.
    MembershipChanged {
        /// The index of the change entry.
        index: u64,
    },
    /// Another membership change of the group is not committed yet; retry once it is.
    ChangePending {
        /// The index of the uncommitted change.
        index: u64,
    },
    /// The membership of a group.
    Membership(MembershipReport),
    /// Leadership moved to the requested node.
    LeaderTransferred,
}

/// The membership of one group as one node sees it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MembershipReport {
    /// The group.
    pub group: u32,
    /// The node that sent the report.
    pub reporter: u64,
    /// The leader as that node last learned it.
    pub leader: Option<u64>,
    /// That node's term.
    pub term: u64,
    /// The highest log index known to be committed.
    pub commit_index: u64,
    /// The index of the last entry in that node's log.
    pub last_index: u64,
    /// The index of the newest membership change when it is not committed yet.
    pub pending_change: Option<u64>,
    /// Voters first, then learners, each in node id order.
    pub members: Vec<MemberReport>,
}

/// One member of a group.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberReport {
    /// The member's node id.
    pub node_id: u64,
    /// Whether it votes.
    pub voter: bool,
    /// For a learner: whether the leader promotes it once it has caught up.
    pub promote_when_caught_up: bool,
    /// The highest index known to match the leader's log; only a leader knows it.
    pub match_index: Option<u64>,
    /// Entries the member is behind the leader's last entry; only a leader knows it.
    pub lag_entries: Option<u64>,
    /// The member's client address, when the reporting node knows it.
    pub client_address: Option<String>,
}

/// A key's current value and the index of the entry that last wrote it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CurrentValue {
    /// The value bytes.
    pub value: Vec<u8>,
    /// The index of the log entry that last wrote the key.
    pub mod_index: u64,
}

/// One key of a scan page.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ScanEntry {
    /// The key bytes.
    pub key: Vec<u8>,
    /// The value bytes.
    pub value: Vec<u8>,
    /// The index of the log entry that last wrote the key.
    pub mod_index: u64,
}

/// A node's role and progress in every group it hosts.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// The node's id.
    pub node_id: u64,
    /// One report per group, in group order.
    pub groups: Vec<GroupReport>,
}

/// A node's role and progress in one group.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupReport {
    /// The group id.
    pub group: u32,
    /// The node's role in the group.
    pub role: GroupRole,
    /// The node's current term.
    pub term: u64,
    /// The leader as the node last learned it.
    pub leader: Option<u64>,
    /// The highest log index known to be committed.
    pub commit_index: u64,
    /// The highest log index applied to the state machine.
    pub applied_index: u64,
    /// The index of the last entry in the node's log.
    pub last_index: u64,
}

/// A node's role in a Raft group.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRole {
    /// Follows a leader, or waits for one.
    Follower,
    /// Runs a pre-vote round before starting an election.
    PreCandidate,
    /// Runs an election.
    Candidate,
    /// Leads the group.
    Leader,
}

impl GroupRole {
    /// The role's name in lowercase, as the CLI prints it.
    pub fn name(self) -> &'static str {
        match self {
            GroupRole::Follower => "follower",
            GroupRole::PreCandidate => "pre-candidate",
            GroupRole::Candidate => "candidate",
            GroupRole::Leader => "leader",
        }
    }
}
