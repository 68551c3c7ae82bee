//! Identifiers and the values the core persists: node ids, terms, log indexes, entries,
//! hard state, the membership of a group and its agreed timing, the changes to them, and
//! the description of a snapshot.

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

/// The heartbeat interval and election timeout range of a group, in ticks, when they were
/// changed at runtime. They travel in the log with the membership, so that every replica
/// switches at the same log index rather than each on its own schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupTiming {
    pub heartbeat_interval_ticks: u32,
    pub election_timeout_ticks_min: u32,
    /// Exclusive upper bound of the randomized election timeout.
    pub election_timeout_ticks_max: u32,
}

impl GroupTiming {
    /// Checks the relations that keep a group live. The heartbeat is at least one tick and
    /// at most a third of the minimum election timeout, so that one lost heartbeat does not
    /// start an election. The maximum is above the minimum, so that timeouts are randomized.
    ///
    /// # Errors
    ///
    /// Returns the rule the timing breaks.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.heartbeat_interval_ticks == 0 {
            return Err("timing with a heartbeat interval of 0 ticks");
        }
        if self.heartbeat_interval_ticks > self.election_timeout_ticks_min / 3 {
            return Err(
                "timing with a heartbeat interval above a third of the minimum election timeout",
            );
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return Err("timing whose election timeout maximum is not above its minimum");
        }
        Ok(())
    }
}

impl fmt::Display for GroupTiming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "heartbeat every {} ticks, election timeout {}..{} ticks",
            self.heartbeat_interval_ticks,
            self.election_timeout_ticks_min,
            self.election_timeout_ticks_max
        )
    }
}

/// The members of a group: voters elect leaders and form quorums; learners receive the log
/// but neither vote nor count toward a quorum. The group's agreed timing rides along, since
/// it changes through the same log entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Learners that the leader promotes to voters once they are caught up. A subset of
    /// `learners`.
    pub promote_when_caught_up: BTreeSet<NodeId>,
    /// The timing set by the newest [`MembershipChange::SetTiming`] in the log. While it is
    /// `None`, every replica uses its configured timing.
    pub timing: Option<GroupTiming>,
}

impl Membership {
    /// A membership of voters only.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
            promote_when_caught_up: BTreeSet::new(),
            timing: None,
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
    /// node in two roles, only learners marked for promotion, and a valid timing.
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
        if let Some(timing) = &self.timing {
            timing.check()?;
        }
        Ok(())
    }

    /// Returns the membership after `change`.
    ///
    /// # Errors
    ///
    /// Returns why the change does not fit this membership: adding a member, promoting a
    /// node that is not a learner, removing a non-member or the last voter, or a timing
    /// that breaks [`GroupTiming::check`].
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
            MembershipChange::SetTiming { timing } => {
                timing
                    .check()
                    .map_err(|reason| InvalidChange::InvalidTiming { reason })?;
                next.timing = Some(timing);
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
    /// Sets the group's heartbeat interval and election timeout range; the members stay.
    SetTiming { timing: GroupTiming },
}

impl MembershipChange {
    /// Returns the node the change adds, promotes or removes; `None` for a timing change.
    pub fn node(&self) -> Option<NodeId> {
        match *self {
            MembershipChange::AddLearner { node, .. }
            | MembershipChange::Promote { node }
            | MembershipChange::Remove { node } => Some(node),
            MembershipChange::SetTiming { .. } => None,
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
            MembershipChange::SetTiming { timing } => write!(f, "set the timing: {timing}"),
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
    #[error("invalid {reason}")]
    InvalidTiming { reason: &'static str },
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
/// kind            u8   0 add learner, 1 promote, 2 remove, 3 set timing
/// node            u64  0 for set timing
/// flags           u8   bit 0: promote when caught up (add learner only)
/// voters          u32 count, then count u64 ids, ascending
/// learners        u32 count, then count u64 ids, ascending
/// to promote      u32 count, then count u64 ids, ascending, a subset of the learners
/// timing          u8 0 for none, or 1 followed by the heartbeat interval, the election
///                 timeout minimum and maximum, each u32 ticks
/// context         the remaining bytes
/// ```
///
/// Version 1, written before timing changes existed, has no timing field and no kind 3;
/// it decodes with `timing: None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipChangeEntry {
    pub change: MembershipChange,
    /// The membership after the change.
    pub membership: Membership,
    pub context: Bytes,
}

/// The encoding version of [`MembershipChangeEntry`] this build writes. It also reads
/// version 1.
pub const MEMBERSHIP_CHANGE_VERSION: u8 = 2;

/// Bytes of a present timing field: the marker and three tick counts.
const TIMING_FIELD_BYTES: usize = 1 + 3 * 4;

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
            MembershipChange::SetTiming { .. } => (3, NodeId(0), 0),
        };
        let sets = [
            &self.membership.voters,
            &self.membership.learners,
            &self.membership.promote_when_caught_up,
        ];
        let ids: usize = sets.iter().map(|set| set.len()).sum();
        let mut data = alloc::vec::Vec::with_capacity(
            MEMBERSHIP_CHANGE_HEADER_BYTES
                + 3 * 4
                + 8 * ids
                + TIMING_FIELD_BYTES
                + self.context.len(),
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
        match &self.membership.timing {
            None => data.push(0),
            Some(timing) => {
                data.push(1);
                for ticks in [
                    timing.heartbeat_interval_ticks,
                    timing.election_timeout_ticks_min,
                    timing.election_timeout_ticks_max,
                ] {
                    data.extend_from_slice(&ticks.to_le_bytes());
                }
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
        let version = data[0];
        if version != 1 && version != MEMBERSHIP_CHANGE_VERSION {
            return Err("membership change of an unknown encoding version");
        }
        let kind = data[1];
        let kinds_max = if version >= 2 { 3 } else { 2 };
        if kind > kinds_max {
            return Err("membership change of an unknown kind");
        }
        let node = NodeId(read_u64(&data[2..10]));
        if node.0 == 0 && kind != 3 {
            return Err("membership change names node 0");
        }
        if node.0 != 0 && kind == 3 {
            return Err("timing change names a node");
        }
        let flags = data[10];
        if flags > 1 {
            return Err("membership change with unknown flags");
        }
        if flags != 0 && kind != 0 {
            return Err("membership change with flags its kind does not take");
        }
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
        let timing = if version >= 2 {
            let (timing, timing_bytes) = decode_timing(&data[offset..])?;
            offset += timing_bytes;
            timing
        } else {
            None
        };
        let change = match kind {
            0 => MembershipChange::AddLearner {
                node,
                promote_when_caught_up: flags == 1,
            },
            1 => MembershipChange::Promote { node },
            2 => MembershipChange::Remove { node },
            _ => MembershipChange::SetTiming {
                timing: timing.ok_or("timing change without a timing")?,
            },
        };
        let [voters, learners, promote_when_caught_up] = sets;
        let membership = Membership {
            voters,
            learners,
            promote_when_caught_up,
            timing,
        };
        membership.check()?;
        Ok(MembershipChangeEntry {
            change,
            membership,
            context: data.slice(offset..),
        })
    }
}

/// Reads the timing field at the start of `data`: the timing, if present, and the bytes
/// the field takes.
fn decode_timing(data: &[u8]) -> Result<(Option<GroupTiming>, usize), &'static str> {
    match data.first() {
        None => Err("membership change cut off before its timing"),
        Some(0) => Ok((None, 1)),
        Some(1) => {
            let field = data
                .get(1..TIMING_FIELD_BYTES)
                .ok_or("membership change cut off in its timing")?;
            let ticks = |at: usize| {
                u32::from_le_bytes([field[at], field[at + 1], field[at + 2], field[at + 3]])
            };
            let timing = GroupTiming {
                heartbeat_interval_ticks: ticks(0),
                election_timeout_ticks_min: ticks(4),
                election_timeout_ticks_max: ticks(8),
            };
            Ok((Some(timing), TIMING_FIELD_BYTES))
        }
        Some(_) => Err("membership change with an unknown timing marker"),
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

    const TIMING: GroupTiming = GroupTiming {
        heartbeat_interval_ticks: 2,
        election_timeout_ticks_min: 8,
        election_timeout_ticks_max: 16,
    };

    #[test]
    fn timing_change_entries_round_trip() {
        let mut membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        membership.timing = Some(TIMING);
        let change = MembershipChange::SetTiming { timing: TIMING };
        let original = entry(change, membership.clone());

        let decoded = MembershipChangeEntry::decode(&original.encode());

        assert_eq!(decoded, Ok(original));
        assert_eq!(change.node(), None);
        let removal = entry(MembershipChange::Remove { node: NodeId(4) }, membership);
        assert_eq!(
            MembershipChangeEntry::decode(&removal.encode()),
            Ok(removal),
            "other changes keep the timing in force"
        );
    }

    #[test]
    fn version_one_entries_decode_without_timing() {
        let membership = Membership::with_voters([NodeId(1), NodeId(2)]);
        let original = entry(MembershipChange::Remove { node: NodeId(3) }, membership);
        let encoded = original.encode();
        // Version 1 has no timing field: drop the marker byte before the context.
        let marker_at = encoded.len() - b"addresses".len() - 1;
        assert_eq!(encoded[marker_at], 0, "no timing is encoded as marker 0");
        let mut version_one = encoded.to_vec();
        version_one.remove(marker_at);
        version_one[0] = 1;

        let decoded = MembershipChangeEntry::decode(&Bytes::from(version_one.clone()));

        assert_eq!(decoded, Ok(original));
        version_one[1] = 3;
        assert!(
            MembershipChangeEntry::decode(&Bytes::from(version_one)).is_err(),
            "version 1 has no timing changes"
        );
    }

    #[test]
    fn invalid_timing_changes_are_refused() {
        let mut membership = Membership::with_voters([NodeId(1)]);
        membership.timing = Some(TIMING);
        let good = entry(MembershipChange::SetTiming { timing: TIMING }, membership).encode();
        let mut names_a_node = good.to_vec();
        names_a_node[2] = 5;
        let mut no_timing = good.to_vec();
        let marker_at = 11 + 4 + 8 + 4 + 4;
        no_timing[marker_at] = 0;
        no_timing.drain(marker_at + 1..marker_at + 13);
        let mut slow_heartbeat = good.to_vec();
        slow_heartbeat[marker_at + 1] = 3;
        let mut unknown_marker = good.to_vec();
        unknown_marker[marker_at] = 2;
        for (what, bytes) in [
            ("names a node", names_a_node),
            ("no timing", no_timing),
            ("heartbeat above a third of the minimum", slow_heartbeat),
            ("unknown timing marker", unknown_marker),
        ] {
            assert!(
                MembershipChangeEntry::decode(&Bytes::from(bytes)).is_err(),
                "{what}"
            );
        }
        assert_eq!(
            Membership::with_voters([NodeId(1)]).apply(MembershipChange::SetTiming {
                timing: GroupTiming {
                    election_timeout_ticks_max: 8,
                    ..TIMING
                }
            }),
            Err(InvalidChange::InvalidTiming {
                reason: "timing whose election timeout maximum is not above its minimum"
            })
        );
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
