//! The on-disk format of a segment file: a header block, then batches, each starting on a
//! block boundary.
//!
//! ```text
//! segment file   = segment header (one block) , { batch , zero padding to a block boundary }
//! segment header = magic "SRWALSEG" (8) | format version u32 | header CRC u32
//!                  | cluster id u64 | node id u64 | shard u32 | reserved u32 | segment seq u64
//! batch          = batch header (32) , record * record_count
//! batch header   = magic "SRWB" (4) | header CRC u32 | batch seq u64 | payload length u32
//!                  | record count u32 | synced-through seq u64
//! record         = CRC u32 | body length u32 | body
//! body           = kind u8 | flags u8 | reserved u16 | group u32 | term u64 | index u64
//!                  | payload
//! ```
//!
//! All integers are little-endian. Every CRC is CRC-32 (IEEE, as computed by `crc32fast`):
//! the header CRCs cover the header bytes after the CRC field, and a record's CRC covers its
//! length field and its body, so a corrupted length cannot point the reader at another valid
//! record. Batch sequence numbers rise by exactly one across the whole log, segments included,
//! which lets recovery tell a lost batch from the end of the log. A batch's synced-through
//! sequence number is the newest batch whose fdatasync had completed when it was written (0
//! for none). The writer overlaps one batch's write with the previous batch's fdatasync;
//! this field lets recovery tell that unsynced pair from damage inside synced data.
//!
//! Decoding never panics: every length and offset read from the disk is checked against the
//! bytes at hand and reported as a [`FormatError`].

use bytes::Bytes;
use shardraft_raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Term};

use super::GroupId;

/// Unit of alignment of every write and of every batch start. 4 KiB matches the page size
/// and the logical block size of common devices, so an O_DIRECT write never needs a
/// read-modify-write cycle in the device.
pub const BLOCK_BYTES: u64 = 4096;

/// Version of this layout, stored in each segment header.
pub const FORMAT_VERSION: u32 = 2;

pub const SEGMENT_MAGIC: [u8; 8] = *b"SRWALSEG";
pub const SEGMENT_HEADER_BYTES: usize = 48;

pub const BATCH_MAGIC: [u8; 4] = *b"SRWB";
pub const BATCH_HEADER_BYTES: usize = 32;

/// Length and CRC fields in front of every record body.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// Fixed part of a record body: kind, flags, reserved, group, term, index.
pub const RECORD_BODY_FIXED_BYTES: usize = 24;
pub const RECORD_HEADER_BYTES: usize = RECORD_PREFIX_BYTES + RECORD_BODY_FIXED_BYTES;

/// Largest payload a single batch may carry. Bounded so that a corrupted length field can
/// never make recovery allocate or read an absurd amount, and so that a batch always fits in
/// a segment of the largest configurable size.
pub const BATCH_PAYLOAD_BYTES_MAX: u32 = 1 << 30;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_COMPACT: u8 = 4;

const ENTRY_FLAG_LEADER_NOOP: u8 = 1;
const ENTRY_FLAG_MEMBERSHIP_CHANGE: u8 = 2;

/// Bytes of the vote payload of a hard state record: the voted-for node id, 0 for none.
const HARD_STATE_PAYLOAD_BYTES: usize = 8;

/// Identity stamped into every segment header, so that a segment copied from another node or
/// cluster is recognised at recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub cluster_id: u64,
    pub node_id: u64,
    pub shard: u32,
    pub segment_seq: u64,
}

/// One decoded log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A log entry of `group`.
    Entry { group: GroupId, entry: Entry },
    /// The group's term, vote and commit index, stored together so that no crash can
    /// separate a vote from its term.
    HardState {
        group: GroupId,
        hard_state: HardState,
    },
    /// Drops the group's entries at and after `from`.
    Truncate { group: GroupId, from: LogIndex },
    /// Drops the group's entries up to and including `through`, whose term was `term`.
    Compact {
        group: GroupId,
        through: LogIndex,
        term: Term,
    },
}

impl Record {
    pub fn group(&self) -> GroupId {
        match self {
            Record::Entry { group, .. }
            | Record::HardState { group, .. }
            | Record::Truncate { group, .. }
            | Record::Compact { group, .. } => *group,
        }
    }
}

/// Why bytes read from a segment do not form a valid header, batch or record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the bytes end before the {what} does ({available} of {needed} bytes present)")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("invalid {what} magic {found:02x?}")]
    BadMagic { what: &'static str, found: Vec<u8> },
    #[error("{what} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error(
        "unsupported segment format version {found}; this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion { found: u32 },
    #[error("batch payload length {found} exceeds the maximum of {BATCH_PAYLOAD_BYTES_MAX} bytes")]
    PayloadTooLarge { found: u32 },
    #[error(
        "record body length {found} is shorter than the fixed {RECORD_BODY_FIXED_BYTES}-byte part"
    )]
    RecordTooShort { found: u32 },
    #[error("unknown record kind {found}")]
    UnknownKind { found: u8 },
    #[error("record kind {kind} has an invalid payload of {payload_bytes} bytes")]
    InvalidPayload { kind: u8, payload_bytes: usize },
    #[error("records fill {used} bytes but the batch header declares {declared}")]
    PayloadLengthMismatch { used: u64, declared: u64 },
}

/// Rounds `offset` up to the next block boundary.
pub fn align_up(offset: u64) -> u64 {
    offset.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Encodes the segment header into the front of `block`, which must hold at least
/// [`SEGMENT_HEADER_BYTES`].
pub fn encode_segment_header(header: &SegmentHeader, block: &mut [u8]) {
    let out = &mut block[..SEGMENT_HEADER_BYTES];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&header.cluster_id.to_le_bytes());
    out[24..32].copy_from_slice(&header.node_id.to_le_bytes());
    out[32..36].copy_from_slice(&header.shard.to_le_bytes());
    out[36..40].copy_from_slice(&0u32.to_le_bytes());
    out[40..48].copy_from_slice(&header.segment_seq.to_le_bytes());
    let crc = crc32fast::hash(&out[16..SEGMENT_HEADER_BYTES]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes and verifies a segment header.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, FormatError> {
    let header = take(bytes, 0, SEGMENT_HEADER_BYTES, "segment header")?;
    if header[0..8] != SEGMENT_MAGIC {
        return Err(FormatError::BadMagic {
            what: "segment header",
            found: header[0..8].to_vec(),
        });
    }
    let version = le_u32(header, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    verify_crc("segment header", le_u32(header, 12), &[&header[16..]])?;
    Ok(SegmentHeader {
        cluster_id: le_u64(header, 16),
        node_id: le_u64(header, 24),
        shard: le_u32(header, 32),
        segment_seq: le_u64(header, 40),
    })
}

/// Appends one record to `out`, the payload of a batch under construction.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Entry { group, entry } => encode_entry(*group, entry, out),
        Record::HardState { group, hard_state } => {
            let vote = hard_state.vote.map_or(0, |node| node.0);
            let fixed = fixed_body(
                KIND_HARD_STATE,
                0,
                *group,
                hard_state.term,
                hard_state.commit,
            );
            push_record(out, &fixed, &vote.to_le_bytes());
        }
        Record::Truncate { group, from } => {
            let fixed = fixed_body(KIND_TRUNCATE, 0, *group, Term(0), *from);
            push_record(out, &fixed, &[]);
        }
        Record::Compact {
            group,
            through,
            term,
        } => {
            let fixed = fixed_body(KIND_COMPACT, 0, *group, *term, *through);
            push_record(out, &fixed, &[]);
        }
    }
}

/// Appends an entry record to `out` without cloning the entry.
pub fn encode_entry(group: GroupId, entry: &Entry, out: &mut Vec<u8>) {
    let flags = match entry.kind {
        EntryKind::Normal => 0,
        EntryKind::LeaderNoop => ENTRY_FLAG_LEADER_NOOP,
        EntryKind::MembershipChange => ENTRY_FLAG_MEMBERSHIP_CHANGE,
    };
    let fixed = fixed_body(KIND_ENTRY, flags, group, entry.term, entry.index);
    push_record(out, &fixed, &entry.data);
}

/// Bytes a record with `payload_bytes` of payload takes in a batch.
pub fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes
}

/// Encodes a batch header for a payload already built. `synced_through_seq` is the newest
/// batch whose fdatasync had completed before this batch is written.
pub fn encode_batch_header(
    batch_seq: u64,
    synced_through_seq: u64,
    payload: &[u8],
    record_count: u32,
) -> [u8; 32] {
    let mut header = [0u8; BATCH_HEADER_BYTES];
    header[0..4].copy_from_slice(&BATCH_MAGIC);
    header[8..16].copy_from_slice(&batch_seq.to_le_bytes());
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    header[16..20].copy_from_slice(&payload_len.to_le_bytes());
    header[20..24].copy_from_slice(&record_count.to_le_bytes());
    header[24..32].copy_from_slice(&synced_through_seq.to_le_bytes());
    let crc = crc32fast::hash(&header[8..]);
    header[4..8].copy_from_slice(&crc.to_le_bytes());
    header
}

/// A verified batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub batch_seq: u64,
    pub payload_len: u32,
    pub record_count: u32,
    /// The newest batch whose fdatasync had completed when this one was written.
    pub synced_through_seq: u64,
}

impl BatchHeader {
    /// Bytes from the start of the header to the end of the last record.
    pub fn batch_bytes(&self) -> u64 {
        BATCH_HEADER_BYTES as u64 + u64::from(self.payload_len)
    }
}

/// Whether `bytes` starts with a zeroed batch header, the state of a block no batch was ever
/// written to.
pub fn is_zeroed_header(bytes: &[u8]) -> bool {
    bytes.iter().take(BATCH_HEADER_BYTES).all(|byte| *byte == 0)
}

/// Decodes and verifies a batch header at the front of `bytes`.
pub fn decode_batch_header(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = take(bytes, 0, BATCH_HEADER_BYTES, "batch header")?;
    if header[0..4] != BATCH_MAGIC {
        return Err(FormatError::BadMagic {
            what: "batch header",
            found: header[0..4].to_vec(),
        });
    }
    verify_crc("batch header", le_u32(header, 4), &[&header[8..]])?;
    let payload_len = le_u32(header, 16);
    if payload_len > BATCH_PAYLOAD_BYTES_MAX {
        return Err(FormatError::PayloadTooLarge { found: payload_len });
    }
    Ok(BatchHeader {
        batch_seq: le_u64(header, 8),
        payload_len,
        record_count: le_u32(header, 20),
        synced_through_seq: le_u64(header, 24),
    })
}

/// A record decoded from a batch payload, with where it sits in that payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord {
    pub record: Record,
    /// Offset of the record's length field from the start of the payload.
    pub payload_offset: u32,
    /// Bytes the record takes, prefix included.
    pub record_bytes: u32,
}

/// Decodes and verifies every record of a batch payload.
pub fn decode_payload(
    payload: &[u8],
    record_count: u32,
) -> Result<Vec<DecodedRecord>, FormatError> {
    let mut records = Vec::with_capacity(record_count.min(1 << 16) as usize);
    let mut offset = 0usize;
    for _ in 0..record_count {
        let (record, used) = decode_record(&payload[offset..])?;
        records.push(DecodedRecord {
            record,
            payload_offset: offset as u32,
            record_bytes: used as u32,
        });
        offset += used;
    }
    if offset != payload.len() {
        return Err(FormatError::PayloadLengthMismatch {
            used: offset as u64,
            declared: payload.len() as u64,
        });
    }
    Ok(records)
}

/// Decodes one record from the front of `bytes`, returning it and the bytes it took.
pub fn decode_record(bytes: &[u8]) -> Result<(Record, usize), FormatError> {
    let prefix = take(bytes, 0, RECORD_PREFIX_BYTES, "record header")?;
    let body_len = le_u32(prefix, 4);
    if (body_len as usize) < RECORD_BODY_FIXED_BYTES {
        return Err(FormatError::RecordTooShort { found: body_len });
    }
    let body = take(bytes, RECORD_PREFIX_BYTES, body_len as usize, "record")?;
    verify_crc("record", le_u32(prefix, 0), &[&prefix[4..8], body])?;

    let kind = body[0];
    let flags = body[1];
    let group = GroupId(le_u32(body, 4));
    let term = Term(le_u64(body, 8));
    let index = LogIndex(le_u64(body, 16));
    let payload = &body[RECORD_BODY_FIXED_BYTES..];
    let record = match kind {
        KIND_ENTRY => Record::Entry {
            group,
            entry: Entry {
                term,
                index,
                kind: entry_kind(flags),
                data: Bytes::copy_from_slice(payload),
            },
        },
        KIND_HARD_STATE => {
            if payload.len() != HARD_STATE_PAYLOAD_BYTES {
                return Err(FormatError::InvalidPayload {
                    kind,
                    payload_bytes: payload.len(),
                });
            }
            let vote = le_u64(payload, 0);
            Record::HardState {
                group,
                hard_state: HardState {
                    term,
                    vote: (vote != 0).then_some(NodeId(vote)),
                    commit: index,
                },
            }
        }
        KIND_TRUNCATE | KIND_COMPACT if !payload.is_empty() => {
            return Err(FormatError::InvalidPayload {
                kind,
                payload_bytes: payload.len(),
            });
        }
        KIND_TRUNCATE => Record::Truncate { group, from: index },
        KIND_COMPACT => Record::Compact {
            group,
            through: index,
            term,
        },
        other => return Err(FormatError::UnknownKind { found: other }),
    };
    Ok((record, RECORD_PREFIX_BYTES + body_len as usize))
}

fn entry_kind(flags: u8) -> EntryKind {
    if flags & ENTRY_FLAG_LEADER_NOOP != 0 {
        EntryKind::LeaderNoop
    } else if flags & ENTRY_FLAG_MEMBERSHIP_CHANGE != 0 {
        EntryKind::MembershipChange
    } else {
        EntryKind::Normal
    }
}

fn fixed_body(
    kind: u8,
    flags: u8,
    group: GroupId,
    term: Term,
    index: LogIndex,
) -> [u8; RECORD_BODY_FIXED_BYTES] {
    let mut body = [0u8; RECORD_BODY_FIXED_BYTES];
    body[0] = kind;
    body[1] = flags;
    body[4..8].copy_from_slice(&group.0.to_le_bytes());
    body[8..16].copy_from_slice(&term.0.to_le_bytes());
    body[16..24].copy_from_slice(&index.0.to_le_bytes());
    body
}

fn push_record(out: &mut Vec<u8>, fixed: &[u8; RECORD_BODY_FIXED_BYTES], payload: &[u8]) {
    // Entry payloads are bounded far below 4 GiB by the runtime's entry size limits; the
    // saturation only keeps this function total.
    let body_len = u32::try_from(fixed.len() + payload.len()).unwrap_or(u32::MAX);
    let start = out.len();
    out.reserve(RECORD_PREFIX_BYTES + fixed.len() + payload.len());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(fixed);
    out.extend_from_slice(payload);
    // The CRC comes first so that it covers one contiguous run: one call per record,
    // which matters for small entries, where the call dominates the cost.
    let crc = crc32fast::hash(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

fn verify_crc(what: &'static str, stored: u32, parts: &[&[u8]]) -> Result<(), FormatError> {
    let mut hasher = crc32fast::Hasher::new();
    for part in parts {
        hasher.update(part);
    }
    let computed = hasher.finalize();
    if stored == computed {
        Ok(())
    } else {
        Err(FormatError::ChecksumMismatch {
            what,
            stored,
            computed,
        })
    }
}

fn take<'a>(
    bytes: &'a [u8],
    at: usize,
    len: usize,
    what: &'static str,
) -> Result<&'a [u8], FormatError> {
    let end = at.saturating_add(len);
    bytes.get(at..end).ok_or(FormatError::Truncated {
        what,
        needed: end as u64,
        available: bytes.len() as u64,
    })
}

/// Reads a little-endian u32 at `at`; callers have checked that the bytes are present.
fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}

/// Reads a little-endian u64 at `at`; callers have checked that the bytes are present.
fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, data: &'static [u8]) -> Entry {
        Entry {
            term: Term(3),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: Bytes::from_static(data),
        }
    }

    fn sample_records() -> Vec<Record> {
        vec![
            Record::Entry {
                group: GroupId(7),
                entry: entry(1, b"hello"),
            },
            Record::Entry {
                group: GroupId(7),
                entry: Entry {
                    kind: EntryKind::LeaderNoop,
                    ..entry(2, b"")
                },
            },
            Record::HardState {
                group: GroupId(7),
                hard_state: HardState {
                    term: Term(3),
                    vote: Some(NodeId(2)),
                    commit: LogIndex(1),
                },
            },
            Record::HardState {
                group: GroupId(8),
                hard_state: HardState {
                    term: Term(1),
                    vote: None,
                    commit: LogIndex(0),
                },
            },
            Record::Truncate {
                group: GroupId(7),
                from: LogIndex(2),
            },
            Record::Compact {
                group: GroupId(7),
                through: LogIndex(1),
                term: Term(3),
            },
        ]
    }

    fn encode_all(records: &[Record]) -> Vec<u8> {
        let mut payload = Vec::new();
        for record in records {
            encode_record(record, &mut payload);
        }
        payload
    }

    #[test]
    fn records_round_trip() {
        let records = sample_records();
        let payload = encode_all(&records);

        let decoded = decode_payload(&payload, records.len() as u32).unwrap();

        let decoded: Vec<Record> = decoded.into_iter().map(|d| d.record).collect();
        assert_eq!(decoded, records);
    }

    #[test]
    fn record_offsets_cover_payload() {
        let records = sample_records();
        let payload = encode_all(&records);

        let decoded = decode_payload(&payload, records.len() as u32).unwrap();

        assert_eq!(decoded[0].payload_offset, 0);
        let last = decoded.last().unwrap();
        assert_eq!(
            (last.payload_offset + last.record_bytes) as usize,
            payload.len()
        );
        assert_eq!(decoded[0].record_bytes as usize, record_bytes(5));
    }

    #[test]
    fn every_flipped_bit_in_a_record_is_detected() {
        let payload = encode_all(&sample_records()[..1]);
        for bit in 0..payload.len() * 8 {
            let mut damaged = payload.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_payload(&damaged, 1).is_err(),
                "flipping bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn every_truncation_of_a_record_is_detected() {
        let payload = encode_all(&sample_records()[..1]);
        for len in 0..payload.len() {
            assert!(decode_payload(&payload[..len], 1).is_err(), "length {len}");
        }
    }

    #[test]
    fn batch_header_round_trips_and_detects_damage() {
        let payload = encode_all(&sample_records());
        let header = encode_batch_header(42, 40, &payload, 6);

        let decoded = decode_batch_header(&header).unwrap();

        assert_eq!(decoded.batch_seq, 42);
        assert_eq!(decoded.payload_len as usize, payload.len());
        assert_eq!(decoded.record_count, 6);
        assert_eq!(decoded.synced_through_seq, 40);
        for bit in 0..BATCH_HEADER_BYTES * 8 {
            let mut damaged = header;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_batch_header(&damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn zeroed_header_is_recognised() {
        assert!(is_zeroed_header(&[0u8; 64]));
        let header = encode_batch_header(1, 0, &[], 0);
        assert!(!is_zeroed_header(&header));
    }

    #[test]
    fn segment_header_round_trips_and_detects_damage() {
        let header = SegmentHeader {
            cluster_id: 11,
            node_id: 2,
            shard: 1,
            segment_seq: 9,
        };
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        encode_segment_header(&header, &mut block);

        assert_eq!(decode_segment_header(&block).unwrap(), header);
        for bit in 0..SEGMENT_HEADER_BYTES * 8 {
            let mut damaged = block.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&damaged).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn oversized_payload_length_is_rejected() {
        let mut header = encode_batch_header(1, 0, &[], 0);
        header[16..20].copy_from_slice(&(BATCH_PAYLOAD_BYTES_MAX + 1).to_le_bytes());
        let crc = crc32fast::hash(&header[8..]);
        header[4..8].copy_from_slice(&crc.to_le_bytes());

        let error = decode_batch_header(&header).unwrap_err();

        assert!(matches!(error, FormatError::PayloadTooLarge { .. }));
    }

    #[test]
    fn align_up_rounds_to_blocks() {
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), BLOCK_BYTES);
        assert_eq!(align_up(BLOCK_BYTES), BLOCK_BYTES);
        assert_eq!(align_up(BLOCK_BYTES + 1), 2 * BLOCK_BYTES);
    }
}
