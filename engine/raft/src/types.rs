//! Identifiers and the values the core persists: node ids, terms, log indexes, entries,
//! hard state, the membership of a group, the changes to it, and the description of a
//! snapshot.

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
    /// A change to the group's membership, encoded by [`MembershipChangeEntry::encode`].
    /// It takes effect on every replica as soon as it is appended, not when it commits.
    MembershipChange,
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
    /// Learners that the leader promotes to voters once they are caught up. A subset of
    /// `learners`.
    pub promote_when_caught_up: BTreeSet<NodeId>,
}

impl Membership {
    /// A membership of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
            promote_when_caught_up: BTreeSet::new(),
        }
    }

    /// Builds a membership of the given voters and learners.
    pub fn with_voters_and_learners(
        voters: impl IntoIterator<Item = NodeId>,
        learners: impl IntoIterator<Item = NodeId>,
    ) -> Membership {
        let mut membership = Membership::with_voters(voters);
        membership.learners = learners.into_iter().collect();
        membership
    }

    /// Checks the shape every membership must have: at least one voter, no node 0, no
    /// node in two roles, and only learners marked for promotion.
    ///
    /// # Errors
    ///
    /// Returns the rule the membership breaks.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.voters.is_empty() {
            return Err("membership without voters");
        }
        if self.members().any(|node| node.0 == 0) {
            return Err("membership names node 0");
        }
        if !self.voters.is_disjoint(&self.learners) {
            return Err("membership lists a node as voter and learner");
        }
        if !self.promote_when_caught_up.is_subset(&self.learners) {
            return Err("membership marks a non-learner for promotion");
        }
        Ok(())
    }

    /// Returns the membership after `change`.
    ///
    /// # Errors
    ///
    /// Returns why the change does not fit this membership: adding a member, promoting a
    /// node that is not a learner, removing a non-member or the last voter.
    pub fn apply(&self, change: MembershipChange) -> Result<Membership, InvalidChange> {
        let mut next = self.clone();
        match change {
            MembershipChange::AddLearner {
                node,
                promote_when_caught_up,
            } => {
                if self.contains(node) {
                    return Err(InvalidChange::AlreadyMember { node });
                }
                next.learners.insert(node);
                if promote_when_caught_up {
                    next.promote_when_caught_up.insert(node);
                }
            }
            MembershipChange::Promote { node } => {
                if !self.learners.contains(&node) {
                    return Err(InvalidChange::NotALearner { node });
                }
                next.learners.remove(&node);
                next.promote_when_caught_up.remove(&node);
                next.voters.insert(node);
            }
            MembershipChange::Remove { node } => {
                if !self.contains(node) {
                    return Err(InvalidChange::NotAMember { node });
                }
                if self.voters.contains(&node) && self.voters.len() == 1 {
                    return Err(InvalidChange::LastVoter { node });
                }
                next.voters.remove(&node);
                next.learners.remove(&node);
                next.promote_when_caught_up.remove(&node);
            }
        }
        Ok(next)
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

/// One change to a group's membership. Changes add or remove one node at a time, so that
/// every majority of the old voters overlaps every majority of the new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// Adds `node` as a learner. With `promote_when_caught_up`, the leader promotes it to a
    /// voter once its log is within `Config::promote_lag_entries_max` of the leader's.
    AddLearner {
        node: NodeId,
        promote_when_caught_up: bool,
    },
    /// Makes the learner `node` a voter.
    Promote { node: NodeId },
    /// Removes the voter or learner `node`.
    Remove { node: NodeId },
}

impl MembershipChange {
    /// Returns the node the change adds, promotes or removes.
    pub fn node(&self) -> NodeId {
        match *self {
            MembershipChange::AddLearner { node, .. }
            | MembershipChange::Promote { node }
            | MembershipChange::Remove { node } => node,
        }
    }
}

impl fmt::Display for MembershipChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MembershipChange::AddLearner {
                node,
                promote_when_caught_up: true,
            } => write!(f, "add {node} as a learner, to be promoted once caught up"),
            MembershipChange::AddLearner { node, .. } => write!(f, "add {node} as a learner"),
            MembershipChange::Promote { node } => write!(f, "promote {node} to voter"),
            MembershipChange::Remove { node } => write!(f, "remove {node}"),
        }
    }
}

/// The reason a membership change does not fit the current membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChange {
    #[error("{node} is already a member of the group")]
    AlreadyMember { node: NodeId },
    #[error("{node} is not a learner of the group; add it as a learner first")]
    NotALearner { node: NodeId },
    #[error("{node} is not a member of the group")]
    NotAMember { node: NodeId },
    #[error("{node} is the group's last voter; add another voter before removing it")]
    LastVoter { node: NodeId },
}

/// The data of a [`EntryKind::MembershipChange`] entry: the change, the membership it
/// results in, and bytes of the runtime's own (a new member's addresses, for instance) that
/// the core stores and replicates without reading them.
///
/// The entry carries the whole resulting membership, not only the change, so that a
/// replica adopts it whatever membership it started from: a node that joins later starts
/// from its own config, not from the group's first membership.
///
/// Encoding, integers little-endian:
///
/// ```text
/// version         u8   MEMBERSHIP_CHANGE_VERSION
/// kind            u8   0 add learner, 1 promote, 2 remove
/// node            u64
/// flags           u8   bit 0: promote when caught up (add learner only)
/// voters          u32 count, then count u64 ids, ascending
/// learners        u32 count, then count u64 ids, ascending
/// to promote      u32 count, then count u64 ids, ascending, a subset of the learners
/// context         the remaining bytes
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChangeEntry {
    pub change: MembershipChange,
    /// The membership after the change.
    pub membership: Membership,
    pub context: Bytes,
}

/// The encoding version of [`MembershipChangeEntry`] this build writes and reads.
pub const MEMBERSHIP_CHANGE_VERSION: u8 = 1;

const MEMBERSHIP_CHANGE_HEADER_BYTES: usize = 1 + 1 + 8 + 1;

impl MembershipChangeEntry {
    /// Encodes this change as entry data.
    pub fn encode(&self) -> Bytes {
        let (kind, node, flags) = match self.change {
            MembershipChange::AddLearner {
                node,
                promote_when_caught_up,
            } => (0u8, node, u8::from(promote_when_caught_up)),
            MembershipChange::Promote { node } => (1, node, 0),
            MembershipChange::Remove { node } => (2, node, 0),
        };
        let sets = [
            &self.membership.voters,
            &self.membership.learners,
            &self.membership.promote_when_caught_up,
        ];
        let ids: usize = sets.iter().map(|set| set.len()).sum();
        let mut data = alloc::vec::Vec::with_capacity(
            MEMBERSHIP_CHANGE_HEADER_BYTES + 3 * 4 + 8 * ids + self.context.len(),
        );
        data.push(MEMBERSHIP_CHANGE_VERSION);
        data.push(kind);
        data.extend_from_slice(&node.0.to_le_bytes());
        data.push(flags);
        for set in sets {
            data.extend_from_slice(&(set.len() as u32).to_le_bytes());
            for id in set {
                data.extend_from_slice(&id.0.to_le_bytes());
            }
        }
        data.extend_from_slice(&self.context);
        Bytes::from(data)
    }

    /// Reads the data of a membership-change entry.
    ///
    /// # Errors
    ///
    /// Returns what is wrong with the bytes; never panics on any input.
    pub fn decode(data: &Bytes) -> Result<MembershipChangeEntry, &'static str> {
        if data.len() < MEMBERSHIP_CHANGE_HEADER_BYTES {
            return Err("membership change shorter than its header");
        }
        if data[0] != MEMBERSHIP_CHANGE_VERSION {
            return Err("membership change of an unknown encoding version");
        }
        let node = NodeId(read_u64(&data[2..10]));
        if node.0 == 0 {
            return Err("membership change names node 0");
        }
        let flags = data[10];
        if flags > 1 {
            return Err("membership change with unknown flags");
        }
        let change = match data[1] {
            0 => MembershipChange::AddLearner {
                node,
                promote_when_caught_up: flags == 1,
            },
            1 if flags == 0 => MembershipChange::Promote { node },
            2 if flags == 0 => MembershipChange::Remove { node },
            1 | 2 => return Err("membership change with flags its kind does not take"),
            _ => return Err("membership change of an unknown kind"),
        };
        let mut offset = MEMBERSHIP_CHANGE_HEADER_BYTES;
        let mut sets: [BTreeSet<NodeId>; 3] = Default::default();
        for set in &mut sets {
            let count_bytes = data
                .get(offset..offset + 4)
                .ok_or("membership change cut off in a member count")?;
            let count = u32::from_le_bytes([
                count_bytes[0],
                count_bytes[1],
                count_bytes[2],
                count_bytes[3],
            ]) as usize;
            offset += 4;
            let ids_end = count
                .checked_mul(8)
                .and_then(|bytes| bytes.checked_add(offset))
                .filter(|end| *end <= data.len())
                .ok_or("membership change cut off in a member list")?;
            let mut previous = 0u64;
            for chunk in data[offset..ids_end].chunks_exact(8) {
                let id = read_u64(chunk);
                if id <= previous {
                    return Err("membership change with member ids not ascending or 0");
                }
                previous = id;
                set.insert(NodeId(id));
            }
            offset = ids_end;
        }
        let [voters, learners, promote_when_caught_up] = sets;
        let membership = Membership {
            voters,
            learners,
            promote_when_caught_up,
        };
        membership.check()?;
        Ok(MembershipChangeEntry {
            change,
            membership,
            context: data.slice(offset..),
        })
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(array)
}

/// The extent of a snapshot: the last entry whose effect it contains, and the membership in
/// force at that entry. The state machine's bytes travel beside it, through the runtime.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
    pub membership: Membership,
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use super::*;

    fn entry(change: MembershipChange, membership: Membership) -> MembershipChangeEntry {
        MembershipChangeEntry {
            change,
            membership,
            context: Bytes::from_static(b"addresses"),
        }
    }

    #[test]
    fn membership_change_entries_round_trip() {
        let mut membership = Membership::with_voters_and_learners(
            [NodeId(1), NodeId(2), NodeId(3)],
            [NodeId(7), NodeId(9)],
        );
        membership.promote_when_caught_up.insert(NodeId(9));
        for change in [
            MembershipChange::AddLearner {
                node: NodeId(9),
                promote_when_caught_up: true,
            },
            MembershipChange::Promote { node: NodeId(4) },
            MembershipChange::Remove { node: NodeId(5) },
        ] {
            let original = entry(change, membership.clone());
            let decoded = MembershipChangeEntry::decode(&original.encode());
            assert_eq!(decoded, Ok(original), "{change}");
        }
    }

    #[test]
    fn damaged_membership_change_entries_are_refused() {
        let good = entry(
            MembershipChange::Remove { node: NodeId(2) },
            Membership::with_voters([NodeId(1), NodeId(3)]),
        )
        .encode();
        // Every prefix cut inside the member lists is refused; the context may be any length.
        let header_and_lists = good.len() - b"addresses".len();
        for length in 0..header_and_lists {
            assert!(
                MembershipChangeEntry::decode(&good.slice(..length)).is_err(),
                "prefix of {length} bytes"
            );
        }
        let mut wrong_version = good.to_vec();
        wrong_version[0] = 9;
        let mut zero_voters = Vec::from(&good[..11]);
        zero_voters.extend_from_slice(&[0; 12]);
        let mut descending = Vec::from(&good[..11]);
        descending.extend_from_slice(&2u32.to_le_bytes());
        descending.extend_from_slice(&3u64.to_le_bytes());
        descending.extend_from_slice(&1u64.to_le_bytes());
        descending.extend_from_slice(&[0; 8]);
        let mut huge_count = Vec::from(&good[..11]);
        huge_count.extend_from_slice(&u32::MAX.to_le_bytes());
        for (what, bytes) in [
            ("wrong version", wrong_version),
            ("no voters", zero_voters),
            ("ids not ascending", descending),
            ("count past the end", huge_count),
        ] {
            assert!(
                MembershipChangeEntry::decode(&Bytes::from(bytes)).is_err(),
                "{what}"
            );
        }
    }

    #[test]
    fn membership_changes_check_the_current_membership() {
        let three = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let add = MembershipChange::AddLearner {
            node: NodeId(4),
            promote_when_caught_up: true,
        };
        let with_learner = three.apply(add).unwrap();
        assert!(with_learner.promote_when_caught_up.contains(&NodeId(4)));
        assert_eq!(
            with_learner.apply(add),
            Err(InvalidChange::AlreadyMember { node: NodeId(4) })
        );
        let promoted = with_learner
            .apply(MembershipChange::Promote { node: NodeId(4) })
            .unwrap();
        assert_eq!(promoted.voters.len(), 4);
        assert!(promoted.learners.is_empty());
        assert!(promoted.promote_when_caught_up.is_empty());
        assert_eq!(
            three.apply(MembershipChange::Promote { node: NodeId(2) }),
            Err(InvalidChange::NotALearner { node: NodeId(2) })
        );
        assert_eq!(
            three.apply(MembershipChange::Remove { node: NodeId(8) }),
            Err(InvalidChange::NotAMember { node: NodeId(8) })
        );
        let one = Membership::with_voters([NodeId(1)]);
        assert_eq!(
            one.apply(MembershipChange::Remove { node: NodeId(1) }),
            Err(InvalidChange::LastVoter { node: NodeId(1) })
        );
    }
}
