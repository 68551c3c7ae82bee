//! The snapshot file: a runtime header around the state machine's bytes, with one CRC-32
//! over the whole file.
//!
//! All integers are little-endian:
//!
//! ```text
//! magic            4 bytes   "SRSN"
//! version          u8        SNAPSHOT_FILE_VERSION
//! reserved         3 bytes   zero
//! group            u32
//! index            u64       last entry whose effect the snapshot holds
//! term             u64       term of that entry
//! voter_count      u32, then voter_count node ids (u64)
//! learner_count    u32, then learner_count node ids (u64)
//! promote_count    u32, then promote_count node ids (u64): learners promoted once caught up
//! timing           u8 0 for none, or 1 followed by the group's agreed heartbeat interval,
//!                  election timeout minimum and maximum, each u32 ticks
//! data_length      u64
//! data             data_length bytes, the state machine's snapshot (its own format and
//!                  checksum)
//! crc32            u32       CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Version 1 files, written before groups agreed on a timing, have no timing field; they
//! decode with no agreed timing.
//!
//! The same bytes are the file on disk, the value kept in memory by the memory storage,
//! and the stream a leader sends to a follower, so a receiver verifies exactly what the
//! sender stored.

use std::collections::BTreeSet;

use bytes::Bytes;
use shardraft_raft::{GroupTiming, LogIndex, Membership, NodeId, SnapshotMeta, Term};

use crate::log::GroupId;

/// The bytes every snapshot file starts with.
pub const SNAPSHOT_FILE_MAGIC: [u8; 4] = *b"SRSN";

/// The file format version this build writes. It also reads version 1.
pub const SNAPSHOT_FILE_VERSION: u8 = 2;

/// Magic, version, reserved bytes, group, index and term.
const FIXED_HEADER_BYTES: usize = 4 + 1 + 3 + 4 + 8 + 8;
const CHECKSUM_BYTES: usize = 4;
/// Members of one kind in a membership, at most; far more than any cluster has, so that a
/// corrupted count cannot make the reader allocate much.
const MEMBERS_MAX: u32 = 4096;

/// A decoded, verified snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    pub group: GroupId,
    pub meta: SnapshotMeta,
    /// The state machine's bytes, a slice of the file's buffer.
    pub data: Bytes,
}

/// Bytes that are not a valid snapshot file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotFileError {
    #[error(
        "snapshot file is {file_bytes} bytes, shorter than the {minimum_bytes} bytes of an \
         empty one; it is truncated"
    )]
    TooShort {
        file_bytes: usize,
        minimum_bytes: usize,
    },
    #[error(
        "snapshot file starts with {found:02x?}, not the snapshot magic \
         {SNAPSHOT_FILE_MAGIC:02x?}; it is not a shardraft snapshot or is corrupted"
    )]
    BadMagic { found: [u8; 4] },
    #[error(
        "snapshot file has format version {found}, but this build reads only versions 1 to \
         {SNAPSHOT_FILE_VERSION}; read it with a matching shardraft version"
    )]
    UnknownVersion { found: u8 },
    #[error(
        "snapshot file checksum mismatch: stored CRC-32 {stored:#010x}, computed \
         {computed:#010x}; the file is corrupted or truncated"
    )]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error(
        "snapshot file is truncated: {field} at offset {offset} needs {needed_bytes} bytes \
         but only {remaining_bytes} remain"
    )]
    Truncated {
        field: &'static str,
        offset: usize,
        needed_bytes: u64,
        remaining_bytes: usize,
    },
    #[error("snapshot file lists {count} {kind}, more than the {MEMBERS_MAX} allowed")]
    TooManyMembers { kind: &'static str, count: u32 },
    #[error("snapshot file has {extra_bytes} bytes after its data")]
    TrailingBytes { extra_bytes: usize },
    #[error("snapshot file holds an invalid membership: {reason}")]
    InvalidMembership { reason: &'static str },
    #[error("snapshot file is of index 0 or term 0, which no snapshot covers")]
    EmptyPosition,
}

/// Writes the header of a snapshot of `group` at `meta` whose data is `data_length` bytes.
/// The caller appends the data and then [`finish`] appends the checksum.
pub fn encode_header(group: GroupId, meta: &SnapshotMeta, data_length: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&SNAPSHOT_FILE_MAGIC);
    out.push(SNAPSHOT_FILE_VERSION);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&group.0.to_le_bytes());
    out.extend_from_slice(&meta.index.0.to_le_bytes());
    out.extend_from_slice(&meta.term.0.to_le_bytes());
    let membership = &meta.membership;
    for set in [
        &membership.voters,
        &membership.learners,
        &membership.promote_when_caught_up,
    ] {
        out.extend_from_slice(&(set.len() as u32).to_le_bytes());
        for node in set {
            out.extend_from_slice(&node.0.to_le_bytes());
        }
    }
    match &membership.timing {
        None => out.push(0),
        Some(timing) => {
            out.push(1);
            for ticks in [
                timing.heartbeat_interval_ticks,
                timing.election_timeout_ticks_min,
                timing.election_timeout_ticks_max,
            ] {
                out.extend_from_slice(&ticks.to_le_bytes());
            }
        }
    }
    out.extend_from_slice(&data_length.to_le_bytes());
}

/// The offset of the `data_length` field in a header written by [`encode_header`].
pub fn data_length_offset(meta: &SnapshotMeta) -> usize {
    let membership = &meta.membership;
    let members = membership.voters.len()
        + membership.learners.len()
        + membership.promote_when_caught_up.len();
    let timing_bytes = if membership.timing.is_some() { 13 } else { 1 };
    FIXED_HEADER_BYTES + 3 * 4 + members * 8 + timing_bytes
}

/// Appends the checksum of `file` (header and data) to it.
pub fn finish(file: &mut Vec<u8>, checksum: u32) {
    file.extend_from_slice(&checksum.to_le_bytes());
}

/// Encodes a whole file at once.
pub fn encode(group: GroupId, meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let mut file = Vec::with_capacity(data_length_offset(meta) + 8 + data.len() + 4);
    encode_header(group, meta, data.len() as u64, &mut file);
    file.extend_from_slice(data);
    let checksum = crc32fast::hash(&file);
    finish(&mut file, checksum);
    file
}

/// The checksum stored in the last four bytes of a file, without verifying it.
pub fn stored_checksum(file: &[u8]) -> Option<u32> {
    let start = file.len().checked_sub(CHECKSUM_BYTES)?;
    let bytes: [u8; 4] = file[start..].try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// Verifies `file` completely and returns what it holds.
///
/// # Errors
/// The first defect found; see [`SnapshotFileError`].
pub fn decode(file: &Bytes) -> Result<SnapshotFile, SnapshotFileError> {
    let minimum_bytes = FIXED_HEADER_BYTES + 3 * 4 + 8 + CHECKSUM_BYTES;
    if file.len() < minimum_bytes {
        return Err(SnapshotFileError::TooShort {
            file_bytes: file.len(),
            minimum_bytes,
        });
    }
    let magic: [u8; 4] = file[..4].try_into().expect("length checked");
    if magic != SNAPSHOT_FILE_MAGIC {
        return Err(SnapshotFileError::BadMagic { found: magic });
    }
    let version = file[4];
    if version != 1 && version != SNAPSHOT_FILE_VERSION {
        return Err(SnapshotFileError::UnknownVersion { found: version });
    }
    let body_length = file.len() - CHECKSUM_BYTES;
    let stored = stored_checksum(file).expect("length checked");
    let computed = crc32fast::hash(&file[..body_length]);
    if stored != computed {
        return Err(SnapshotFileError::ChecksumMismatch { stored, computed });
    }
    let mut reader = Reader {
        body: &file[..body_length],
        offset: 8,
    };
    let group = GroupId(reader.u32("group")?);
    let index = LogIndex(reader.u64("index")?);
    let term = Term(reader.u64("term")?);
    if index.0 == 0 || term.0 == 0 {
        return Err(SnapshotFileError::EmptyPosition);
    }
    let voters = reader.members("voters")?;
    let learners = reader.members("learners")?;
    let promote_when_caught_up = reader.members("learners to promote")?;
    let timing = if version >= 2 { reader.timing()? } else { None };
    let membership = Membership {
        voters,
        learners,
        promote_when_caught_up,
        timing,
    };
    membership
        .check()
        .map_err(|reason| SnapshotFileError::InvalidMembership { reason })?;
    let data_length = reader.u64("data length")?;
    let data_start = reader.offset;
    reader.take("data", data_length)?;
    if reader.offset != body_length {
        return Err(SnapshotFileError::TrailingBytes {
            extra_bytes: body_length - reader.offset,
        });
    }
    Ok(SnapshotFile {
        group,
        meta: SnapshotMeta {
            index,
            term,
            membership,
        },
        data: file.slice(data_start..reader.offset),
    })
}

struct Reader<'a> {
    body: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(
        &mut self,
        field: &'static str,
        needed_bytes: u64,
    ) -> Result<&'a [u8], SnapshotFileError> {
        let remaining_bytes = self.body.len() - self.offset;
        let truncated = SnapshotFileError::Truncated {
            field,
            offset: self.offset,
            needed_bytes,
            remaining_bytes,
        };
        match usize::try_from(needed_bytes) {
            Ok(needed) if needed <= remaining_bytes => {
                let bytes = &self.body[self.offset..self.offset + needed];
                self.offset += needed;
                Ok(bytes)
            }
            _ => Err(truncated),
        }
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SnapshotFileError> {
        let bytes = self.take(field, 4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("four bytes")))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, SnapshotFileError> {
        let bytes = self.take(field, 8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("eight bytes")))
    }

    fn timing(&mut self) -> Result<Option<GroupTiming>, SnapshotFileError> {
        match self.take("timing", 1)?[0] {
            0 => Ok(None),
            1 => Ok(Some(GroupTiming {
                heartbeat_interval_ticks: self.u32("timing")?,
                election_timeout_ticks_min: self.u32("timing")?,
                election_timeout_ticks_max: self.u32("timing")?,
            })),
            _ => Err(SnapshotFileError::InvalidMembership {
                reason: "unknown timing marker",
            }),
        }
    }

    fn members(&mut self, kind: &'static str) -> Result<BTreeSet<NodeId>, SnapshotFileError> {
        let count = self.u32(kind)?;
        if count > MEMBERS_MAX {
            return Err(SnapshotFileError::TooManyMembers { kind, count });
        }
        let mut members = BTreeSet::new();
        for _ in 0..count {
            members.insert(NodeId(self.u64(kind)?));
        }
        Ok(members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(42),
            term: Term(3),
            membership: Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
        }
    }

    fn file() -> Bytes {
        Bytes::from(encode(GroupId(7), &meta(), b"state machine bytes"))
    }

    #[test]
    fn file_round_trips() {
        let decoded = decode(&file()).unwrap();

        assert_eq!(decoded.group, GroupId(7));
        assert_eq!(decoded.meta, meta());
        assert_eq!(&decoded.data[..], b"state machine bytes");
    }

    #[test]
    fn timing_round_trips() {
        let mut meta = meta();
        meta.membership.timing = Some(GroupTiming {
            heartbeat_interval_ticks: 1,
            election_timeout_ticks_min: 5,
            election_timeout_ticks_max: 9,
        });
        let bytes = Bytes::from(encode(GroupId(7), &meta, b"data"));

        let decoded = decode(&bytes).unwrap();

        assert_eq!(decoded.meta, meta);
        let offset = data_length_offset(&meta);
        let length = u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());
        assert_eq!(length, 4);
    }

    #[test]
    fn version_one_file_decodes_without_timing() {
        let meta = meta();
        let current = file();
        // Version 1 has no timing field: drop the marker byte before the data length.
        let marker_at = data_length_offset(&meta) - 1;
        let mut version_one = current[..current.len() - CHECKSUM_BYTES].to_vec();
        version_one.remove(marker_at);
        version_one[4] = 1;
        let checksum = crc32fast::hash(&version_one);
        finish(&mut version_one, checksum);

        let decoded = decode(&Bytes::from(version_one)).unwrap();

        assert_eq!(decoded.meta, meta);
        assert_eq!(&decoded.data[..], b"state machine bytes");
    }

    #[test]
    fn data_length_offset_is_exact() {
        let meta = meta();
        let bytes = file();
        let offset = data_length_offset(&meta);

        let length = u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());

        assert_eq!(length, 19);
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let original = file().to_vec();
        for position in 0..original.len() {
            for bit in 0..8 {
                let mut damaged = original.clone();
                damaged[position] ^= 1 << bit;
                assert!(
                    decode(&Bytes::from(damaged)).is_err(),
                    "flipping bit {bit} of byte {position} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn flipped_data_byte_is_checksum_mismatch() {
        let mut damaged = file().to_vec();
        let last_data_byte = damaged.len() - CHECKSUM_BYTES - 1;
        damaged[last_data_byte] ^= 0x40;

        let error = decode(&Bytes::from(damaged)).unwrap_err();

        assert!(
            matches!(error, SnapshotFileError::ChecksumMismatch { .. }),
            "{error}"
        );
    }

    #[test]
    fn every_truncation_is_detected() {
        let original = file();
        for length in 0..original.len() {
            let error = decode(&original.slice(..length)).unwrap_err();
            assert!(
                matches!(
                    error,
                    SnapshotFileError::TooShort { .. } | SnapshotFileError::ChecksumMismatch { .. }
                ),
                "truncated to {length}: {error}"
            );
        }
    }

    #[test]
    fn other_magic_or_version_is_rejected() {
        let mut other_magic = file().to_vec();
        other_magic[0] = b'X';
        let mut other_version = file().to_vec();
        other_version[4] = 9;

        assert!(matches!(
            decode(&Bytes::from(other_magic)),
            Err(SnapshotFileError::BadMagic { .. })
        ));
        assert_eq!(
            decode(&Bytes::from(other_version)),
            Err(SnapshotFileError::UnknownVersion { found: 9 })
        );
    }

    #[test]
    fn oversized_data_length_is_truncation() {
        let meta = meta();
        let mut bytes = encode(GroupId(1), &meta, b"abc");
        bytes.truncate(bytes.len() - CHECKSUM_BYTES);
        let offset = data_length_offset(&meta);
        bytes[offset..offset + 8].copy_from_slice(&1000u64.to_le_bytes());
        let checksum = crc32fast::hash(&bytes);
        finish(&mut bytes, checksum);

        let error = decode(&Bytes::from(bytes)).unwrap_err();

        assert!(
            matches!(error, SnapshotFileError::Truncated { field: "data", .. }),
            "{error}"
        );
    }
}
