//! Identifiers and the values the core persists: node ids, terms, log indexes, entries,
//! hard state and the membership of a group.

use alloc::collections::BTreeSet;
use bytes::Bytes;
use core::fmt;

/// Identity of one node (one replica) of a Raft group. Zero is never a valid id, so that
/// an absent vote or leader is expressed as `Option<NodeId>`, never as a sentinel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// A Raft term. Terms only ever increase on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// Position of an entry in the log. Index 0 is the empty prefix that every log shares;
/// the first real entry has index 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

/// Number of a batch of work returned by `RaftNode::ready`. Batches are numbered from 1 in
/// the order they are returned, and the runtime reports durability by number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReadyNumber(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "i{}", self.0)
    }
}

impl Term {
    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one; index 0 stays 0.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }

    /// This index moved `count` entries forward.
    pub fn plus(self, count: u64) -> LogIndex {
        LogIndex(self.0 + count)
    }
}

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Application data, handed to the state machine.
    Normal,
    /// The empty entry a new leader appends so that it can commit an entry of its own term
    /// (and with it every earlier entry) without waiting for a client write.
    LeaderNoop,
    // Configuration-change entries will be a third kind; `Membership` already describes
    // the configuration they will carry.
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
    /// Opaque to the core. `Bytes` so that sending one entry to many followers and handing
    /// it to the state machine shares one buffer.
    pub data: Bytes,
}

/// Fixed per-entry cost counted on top of the payload in byte limits, so that a flood of
/// empty entries is still bounded. Roughly the size of the entry header on the wire.
pub const ENTRY_OVERHEAD_BYTES: u64 = 32;

impl Entry {
    /// Bytes this entry counts against message, in-flight and uncommitted limits.
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// The state that must be durable before the node acts on it: the current term, the vote
/// cast in that term, and the commit index.
///
/// Term and vote are one record. Storing them separately would let a crash between the
/// two writes make a node vote twice in one term.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    /// The candidate this node voted for in `term`, if any.
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
}

/// The members of a group: voters elect leaders and form quorums; learners receive the log
/// but neither vote nor count toward a quorum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A membership of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Whether `node` is a voter or a learner.
    pub fn contains(&self, node: NodeId) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// The number of voters that forms a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }
}
