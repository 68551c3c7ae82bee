//! The archived types of the peer protocol, and their conversion to and from the Raft
//! core's messages.
//!
//! A `Messages` frame carries one [`WireBatch`]: every message one shard sends to the
//! same-numbered shard of a peer during one turn of its loop, for all its groups. That is
//! how the heartbeats of many groups travel as one frame per tick.
//!
//! Receiving validates the archive with rkyv's checker, then converts each message with
//! range checks into a core [`Message`]. Entry payloads become slices of the frame's
//! buffer, so they are not copied again.

use std::collections::BTreeSet;

use bytes::Bytes;
use rkyv::rancor;
use rkyv::{Archive, Deserialize, Serialize};
use shardraft_raft::{
    AppendOutcome, Entry, EntryKind, GroupTiming, LogIndex, Membership, Message, MessageBody,
    NodeId, SnapshotMeta, Term,
};

use crate::log::GroupId;

/// First frame on a connection.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WireHello {
    pub cluster_id: u64,
    pub node_id: u64,
    pub shard: u32,
    pub shard_count: u32,
}

/// Messages of any number of groups from one shard to the same shard of a peer.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct WireBatch {
    pub messages: Vec<WireMessage>,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    pub group: u32,
    pub from: u64,
    pub to: u64,
    pub term: u64,
    pub body: WireBody,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WireBody {
    PreVote {
        last_log_index: u64,
        last_log_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    RequestVote {
        last_log_index: u64,
        last_log_term: u64,
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
    },
    AppendEntries {
        prev_log_index: u64,
        prev_log_term: u64,
        leader_commit: u64,
        entries: Vec<WireEntry>,
    },
    /// `catching_up` in this and the other responses: the sender is catching up after a
    /// start without data, see `RaftNode::is_catching_up`.
    AppendAccepted {
        match_index: u64,
        catching_up: bool,
    },
    AppendRejected {
        rejected_prev_index: u64,
        hint_index: u64,
        hint_term: u64,
        catching_up: bool,
    },
    Heartbeat {
        leader_commit: u64,
        committed_at_leader: u64,
        read_round: Option<u64>,
    },
    HeartbeatResponse {
        read_round: Option<u64>,
        catching_up: bool,
    },
    TimeoutNow,
    InstallSnapshot {
        index: u64,
        term: u64,
        voters: Vec<u64>,
        learners: Vec<u64>,
        promote_when_caught_up: Vec<u64>,
        /// The group's agreed heartbeat interval, election timeout minimum and maximum,
        /// in ticks.
        timing: Option<[u32; 3]>,
    },
    AppendLostEntries {
        last_index: u64,
        catching_up: bool,
    },
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WireEntry {
    pub term: u64,
    pub index: u64,
    /// 0 for a normal entry, 1 for a leader's no-op, 2 for a membership change.
    pub kind: u8,
    pub data: Vec<u8>,
}

/// Why a validated archive does not convert to core messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("the payload is not a valid archive of a {what} ({payload_bytes} bytes)")]
    InvalidArchive {
        what: &'static str,
        payload_bytes: usize,
    },
    #[error("node id 0 in the {field} field of a message; node ids start at 1")]
    ZeroNodeId { field: &'static str },
    #[error("unknown entry kind {found}")]
    UnknownEntryKind { found: u8 },
    #[error("invalid snapshot membership: {reason}")]
    InvalidMembership { reason: &'static str },
    #[error("failed to encode a frame: {reason}")]
    Encode { reason: String },
}

/// A core message addressed to one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    pub group: GroupId,
    pub message: Message,
}

/// Serializes a hello archive.
pub fn encode_hello(hello: &WireHello) -> Result<rkyv::util::AlignedVec, WireError> {
    rkyv::to_bytes::<rancor::Error>(hello).map_err(|error| WireError::Encode {
        reason: error.to_string(),
    })
}

/// Validates and reads a hello archive.
pub fn decode_hello(payload: &[u8]) -> Result<WireHello, WireError> {
    rkyv::from_bytes::<WireHello, rancor::Failure>(payload).map_err(|_| WireError::InvalidArchive {
        what: "hello",
        payload_bytes: payload.len(),
    })
}

/// Serializes messages to one peer shard.
pub fn encode_batch(messages: &[GroupMessage]) -> Result<rkyv::util::AlignedVec, WireError> {
    let batch = WireBatch {
        messages: messages.iter().map(to_wire).collect(),
    };
    rkyv::to_bytes::<rancor::Error>(&batch).map_err(|error| WireError::Encode {
        reason: error.to_string(),
    })
}

fn to_wire(message: &GroupMessage) -> WireMessage {
    let GroupMessage { group, message } = message;
    let body = match &message.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => WireBody::PreVote {
            last_log_index: last_log_index.0,
            last_log_term: last_log_term.0,
        },
        MessageBody::PreVoteResponse { granted } => WireBody::PreVoteResponse { granted: *granted },
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => WireBody::RequestVote {
            last_log_index: last_log_index.0,
            last_log_term: last_log_term.0,
            leadership_transfer: *leadership_transfer,
        },
        MessageBody::RequestVoteResponse { granted } => {
            WireBody::RequestVoteResponse { granted: *granted }
        }
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => WireBody::AppendEntries {
            prev_log_index: prev_log_index.0,
            prev_log_term: prev_log_term.0,
            leader_commit: leader_commit.0,
            // TODO: serialize entry payloads straight from their `Bytes` instead of copying
            // them into a `Vec` first; rkyv copies them into the archive anyway.
            entries: entries.iter().map(entry_to_wire).collect(),
        },
        MessageBody::AppendEntriesResponse {
            outcome,
            catching_up,
        } => match *outcome {
            AppendOutcome::Accepted { match_index } => WireBody::AppendAccepted {
                match_index: match_index.0,
                catching_up: *catching_up,
            },
            AppendOutcome::Rejected {
                rejected_prev_index,
                hint_index,
                hint_term,
            } => WireBody::AppendRejected {
                rejected_prev_index: rejected_prev_index.0,
                hint_index: hint_index.0,
                hint_term: hint_term.0,
                catching_up: *catching_up,
            },
            AppendOutcome::LostEntries { last_index } => WireBody::AppendLostEntries {
                last_index: last_index.0,
                catching_up: *catching_up,
            },
        },
        MessageBody::InstallSnapshot { snapshot } => WireBody::InstallSnapshot {
            index: snapshot.index.0,
            term: snapshot.term.0,
            voters: ids_to_wire(&snapshot.membership.voters),
            learners: ids_to_wire(&snapshot.membership.learners),
            promote_when_caught_up: ids_to_wire(&snapshot.membership.promote_when_caught_up),
            timing: snapshot.membership.timing.map(|timing| {
                [
                    timing.heartbeat_interval_ticks,
                    timing.election_timeout_ticks_min,
                    timing.election_timeout_ticks_max,
                ]
            }),
        },
        MessageBody::Heartbeat {
            leader_commit,
            committed_at_leader,
            read_round,
        } => WireBody::Heartbeat {
            leader_commit: leader_commit.0,
            committed_at_leader: committed_at_leader.0,
            read_round: *read_round,
        },
        MessageBody::HeartbeatResponse {
            read_round,
            catching_up,
        } => WireBody::HeartbeatResponse {
            read_round: *read_round,
            catching_up: *catching_up,
        },
        MessageBody::TimeoutNow => WireBody::TimeoutNow,
    };
    WireMessage {
        group: group.0,
        from: message.from.0,
        to: message.to.0,
        term: message.term.0,
        body,
    }
}

fn ids_to_wire(ids: &BTreeSet<NodeId>) -> Vec<u64> {
    ids.iter().map(|id| id.0).collect()
}

fn ids_from_wire(
    ids: &rkyv::vec::ArchivedVec<rkyv::rend::u64_le>,
) -> Result<BTreeSet<NodeId>, WireError> {
    ids.iter()
        .map(|id| node_id(id.to_native(), "snapshot membership"))
        .collect()
}

fn entry_to_wire(entry: &Entry) -> WireEntry {
    WireEntry {
        term: entry.term.0,
        index: entry.index.0,
        kind: match entry.kind {
            EntryKind::Normal => 0,
            EntryKind::LeaderNoop => 1,
            EntryKind::MembershipChange => 2,
        },
        data: entry.data.to_vec(),
    }
}

/// Validates a `Messages` payload and converts it to core messages. `payload` must start
/// at a 16-byte aligned address, as [`super::frame::Frame`] payloads do.
pub fn decode_batch(payload: &Bytes) -> Result<Vec<GroupMessage>, WireError> {
    let archived = rkyv::access::<ArchivedWireBatch, rancor::Failure>(payload).map_err(|_| {
        WireError::InvalidArchive {
            what: "message batch",
            payload_bytes: payload.len(),
        }
    })?;
    archived
        .messages
        .iter()
        .map(|message| from_wire(message, payload))
        .collect()
}

fn node_id(raw: u64, field: &'static str) -> Result<NodeId, WireError> {
    if raw == 0 {
        return Err(WireError::ZeroNodeId { field });
    }
    Ok(NodeId(raw))
}

fn from_wire(message: &ArchivedWireMessage, frame: &Bytes) -> Result<GroupMessage, WireError> {
    let body = match &message.body {
        ArchivedWireBody::PreVote {
            last_log_index,
            last_log_term,
        } => MessageBody::PreVote {
            last_log_index: LogIndex(last_log_index.to_native()),
            last_log_term: Term(last_log_term.to_native()),
        },
        ArchivedWireBody::PreVoteResponse { granted } => {
            MessageBody::PreVoteResponse { granted: *granted }
        }
        ArchivedWireBody::RequestVote {
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => MessageBody::RequestVote {
            last_log_index: LogIndex(last_log_index.to_native()),
            last_log_term: Term(last_log_term.to_native()),
            leadership_transfer: *leadership_transfer,
        },
        ArchivedWireBody::RequestVoteResponse { granted } => {
            MessageBody::RequestVoteResponse { granted: *granted }
        }
        ArchivedWireBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            leader_commit,
            entries,
        } => MessageBody::AppendEntries {
            prev_log_index: LogIndex(prev_log_index.to_native()),
            prev_log_term: Term(prev_log_term.to_native()),
            leader_commit: LogIndex(leader_commit.to_native()),
            entries: entries
                .iter()
                .map(|entry| entry_from_wire(entry, frame))
                .collect::<Result<_, _>>()?,
        },
        ArchivedWireBody::AppendAccepted {
            match_index,
            catching_up,
        } => MessageBody::AppendEntriesResponse {
            outcome: AppendOutcome::Accepted {
                match_index: LogIndex(match_index.to_native()),
            },
            catching_up: *catching_up,
        },
        ArchivedWireBody::AppendRejected {
            rejected_prev_index,
            hint_index,
            hint_term,
            catching_up,
        } => MessageBody::AppendEntriesResponse {
            outcome: AppendOutcome::Rejected {
                rejected_prev_index: LogIndex(rejected_prev_index.to_native()),
                hint_index: LogIndex(hint_index.to_native()),
                hint_term: Term(hint_term.to_native()),
            },
            catching_up: *catching_up,
        },
        ArchivedWireBody::Heartbeat {
            leader_commit,
            committed_at_leader,
            read_round,
        } => MessageBody::Heartbeat {
            leader_commit: LogIndex(leader_commit.to_native()),
            committed_at_leader: LogIndex(committed_at_leader.to_native()),
            read_round: read_round.as_ref().map(|round| round.to_native()),
        },
        ArchivedWireBody::HeartbeatResponse {
            read_round,
            catching_up,
        } => MessageBody::HeartbeatResponse {
            read_round: read_round.as_ref().map(|round| round.to_native()),
            catching_up: *catching_up,
        },
        ArchivedWireBody::TimeoutNow => MessageBody::TimeoutNow,
        ArchivedWireBody::AppendLostEntries {
            last_index,
            catching_up,
        } => MessageBody::AppendEntriesResponse {
            outcome: AppendOutcome::LostEntries {
                last_index: LogIndex(last_index.to_native()),
            },
            catching_up: *catching_up,
        },
        ArchivedWireBody::InstallSnapshot {
            index,
            term,
            voters,
            learners,
            promote_when_caught_up,
            timing,
        } => {
            let membership = Membership {
                voters: ids_from_wire(voters)?,
                learners: ids_from_wire(learners)?,
                promote_when_caught_up: ids_from_wire(promote_when_caught_up)?,
                timing: timing.as_ref().map(|ticks| GroupTiming {
                    heartbeat_interval_ticks: ticks[0].to_native(),
                    election_timeout_ticks_min: ticks[1].to_native(),
                    election_timeout_ticks_max: ticks[2].to_native(),
                }),
            };
            membership
                .check()
                .map_err(|reason| WireError::InvalidMembership { reason })?;
            MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    index: LogIndex(index.to_native()),
                    term: Term(term.to_native()),
                    membership,
                },
            }
        }
    };
    Ok(GroupMessage {
        group: GroupId(message.group.to_native()),
        message: Message {
            from: node_id(message.from.to_native(), "from")?,
            to: node_id(message.to.to_native(), "to")?,
            term: Term(message.term.to_native()),
            body,
        },
    })
}

fn entry_from_wire(entry: &ArchivedWireEntry, frame: &Bytes) -> Result<Entry, WireError> {
    let kind = match entry.kind {
        0 => EntryKind::Normal,
        1 => EntryKind::LeaderNoop,
        2 => EntryKind::MembershipChange,
        found => return Err(WireError::UnknownEntryKind { found }),
    };
    Ok(Entry {
        term: Term(entry.term.to_native()),
        index: LogIndex(entry.index.to_native()),
        kind,
        data: frame.slice_ref(entry.data.as_slice()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::frame::{FrameDecoder, FrameKind, encode_frame};
    use super::*;

    fn sample_messages() -> Vec<GroupMessage> {
        let entry = |index: u64, data: &'static [u8]| Entry {
            term: Term(2),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: Bytes::from_static(data),
        };
        let message = |body| Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(2),
            body,
        };
        let bodies = vec![
            MessageBody::PreVote {
                last_log_index: LogIndex(4),
                last_log_term: Term(1),
            },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::RequestVote {
                last_log_index: LogIndex(4),
                last_log_term: Term(1),
                leadership_transfer: true,
            },
            MessageBody::RequestVoteResponse { granted: false },
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(3),
                prev_log_term: Term(1),
                entries: vec![
                    entry(4, b"four"),
                    Entry {
                        kind: EntryKind::LeaderNoop,
                        ..entry(5, b"")
                    },
                ],
                leader_commit: LogIndex(3),
            },
            MessageBody::AppendEntriesResponse {
                outcome: AppendOutcome::Accepted {
                    match_index: LogIndex(5),
                },
                catching_up: true,
            },
            MessageBody::AppendEntriesResponse {
                outcome: AppendOutcome::Rejected {
                    rejected_prev_index: LogIndex(9),
                    hint_index: LogIndex(6),
                    hint_term: Term(1),
                },
                catching_up: false,
            },
            MessageBody::Heartbeat {
                leader_commit: LogIndex(5),
                committed_at_leader: LogIndex(9),
                read_round: Some(7),
            },
            MessageBody::HeartbeatResponse {
                read_round: None,
                catching_up: true,
            },
            MessageBody::TimeoutNow,
            MessageBody::AppendEntriesResponse {
                outcome: AppendOutcome::LostEntries {
                    last_index: LogIndex(2),
                },
                catching_up: true,
            },
            MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    index: LogIndex(40),
                    term: Term(2),
                    membership: Membership {
                        voters: [NodeId(1), NodeId(2)].into(),
                        learners: [NodeId(3), NodeId(4)].into(),
                        promote_when_caught_up: [NodeId(4)].into(),
                        timing: Some(GroupTiming {
                            heartbeat_interval_ticks: 2,
                            election_timeout_ticks_min: 8,
                            election_timeout_ticks_max: 14,
                        }),
                    },
                },
            },
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(5),
                prev_log_term: Term(2),
                entries: vec![Entry {
                    kind: EntryKind::MembershipChange,
                    ..entry(6, b"change")
                }],
                leader_commit: LogIndex(5),
            },
        ];
        bodies
            .into_iter()
            .enumerate()
            .map(|(group, body)| GroupMessage {
                group: GroupId(group as u32),
                message: message(body),
            })
            .collect()
    }

    fn through_frame(archive: &[u8]) -> Bytes {
        let mut stream = Vec::new();
        encode_frame(FrameKind::Messages, archive, &mut stream);
        let mut decoder = FrameDecoder::new(1 << 20);
        let mut input = &stream[..];
        decoder.decode(&mut input).unwrap().unwrap().payload
    }

    #[test]
    fn every_message_kind_round_trips() {
        let messages = sample_messages();
        let archive = encode_batch(&messages).unwrap();

        let decoded = decode_batch(&through_frame(&archive)).unwrap();

        assert_eq!(decoded, messages);
    }

    #[test]
    fn entry_data_shares_the_frame_buffer() {
        let messages = sample_messages();
        let payload = through_frame(&encode_batch(&messages).unwrap());

        let decoded = decode_batch(&payload).unwrap();

        let MessageBody::AppendEntries { entries, .. } = &decoded[4].message.body else {
            panic!("message 4 is not an AppendEntries: {:?}", decoded[4]);
        };
        let frame_range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        assert!(frame_range.contains(&(entries[0].data.as_ptr() as usize)));
    }

    #[test]
    fn hello_round_trips() {
        let hello = WireHello {
            cluster_id: 9,
            node_id: 3,
            shard: 1,
            shard_count: 2,
        };

        let decoded = decode_hello(&encode_hello(&hello).unwrap()).unwrap();

        assert_eq!(decoded, hello);
    }

    #[test]
    fn garbage_payload_is_rejected() {
        let payload = through_frame(&[0xff; 64]);

        let error = decode_batch(&payload).unwrap_err();

        assert!(matches!(error, WireError::InvalidArchive { .. }), "{error}");
    }

    #[test]
    fn zero_node_id_is_rejected() {
        let mut messages = sample_messages();
        messages.truncate(1);
        let mut wire = WireBatch {
            messages: messages.iter().map(to_wire).collect(),
        };
        wire.messages[0].from = 0;
        let archive = rkyv::to_bytes::<rancor::Error>(&wire).unwrap();

        let error = decode_batch(&through_frame(&archive)).unwrap_err();

        assert_eq!(error, WireError::ZeroNodeId { field: "from" });
    }

    #[test]
    fn every_truncation_of_an_archive_is_handled() {
        let archive = encode_batch(&sample_messages()).unwrap();
        for len in 0..archive.len() {
            // Truncated archives must fail validation or decode to something, never panic.
            let _ = decode_batch(&through_frame(&archive[..len]));
        }
    }
}
