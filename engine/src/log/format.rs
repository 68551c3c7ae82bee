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
//! All integers are little-endian. Every CRC is CRC-32 (IEEE, as computed by `crc32fast`).
//! The header CRCs cover the header bytes after the CRC field, and from version 3 on a
//! segment header's CRC covers its version field too. A record's CRC covers its length
//! field and its body, so a corrupted length cannot point the reader at another valid
//! record. Batch sequence numbers rise by exactly one across the whole log, segments included,
//! which lets recovery tell a lost batch from the end of the log. A batch's synced-through
//! sequence number is the newest batch whose fdatasync had completed when it was written (0
//! for none). The writer overlaps one batch's write with the fdatasyncs of the batches
//! before it, and this field lets recovery tell those unsynced batches from damage inside
//! synced data.
//!
//! Record kinds:
//!
//! 1. entry: the flags mark a leader's no-op or a membership change;
//! 2. hard state: term, commit in the index field, vote in the payload;
//! 3. truncate: entries from the index on are dropped;
//! 4. compact: entries through the index are dropped, and the term field is the index's
//!    term;
//! 5. install snapshot: every entry is dropped and the log restarts after the index, whose
//!    term is the term field.
//!
//! # Versions
//!
//! Each segment header carries the [`FORMAT_VERSION`] of its writer. A version is added
//! when a reader of the previous version would misread the new segments. A new record kind
//! is one such case, because an older reader takes an unknown kind for damage. In the last
//! batch it would then truncate the record as a torn write. Version 3 added the install-snapshot record
//! and the membership-change entry flag, which a version 2 reader would decode as a normal
//! entry. It also extended the segment header's CRC to the version field.
//!
//! This build reads versions [`FORMAT_VERSION_READABLE_MIN`] to [`FORMAT_VERSION`].
//! Batches and records of version 2 decode as those of version 3, and the writer never
//! adds a batch to a segment of an older version: after recovery it starts a new segment
//! first. Version 1 is refused, because its batch headers lacked the synced-through field,
//! whose zero would make every damaged batch look unsynced.
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

/// Version of this layout, stored in the header of each segment this build writes.
pub const FORMAT_VERSION: u32 = 3;

/// Oldest segment version this build reads. See the module documentation.
pub const FORMAT_VERSION_READABLE_MIN: u32 = 2;

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
/// Added in format version 3.
const KIND_INSTALL_SNAPSHOT: u8 = 5;

const ENTRY_FLAG_LEADER_NOOP: u8 = 1;
const ENTRY_FLAG_MEMBERSHIP_CHANGE: u8 = 2;

/// Bytes of the vote payload of a hard state record: the voted-for node id, 0 for none.
const HARD_STATE_PAYLOAD_BYTES: usize = 8;

/// Identity stamped into every segment header, so that a segment copied from another node or
/// cluster is recognised at recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Layout version of the segment: [`FORMAT_VERSION`] for every segment this build
    /// writes.
    pub format_version: u32,
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
    /// Drops every entry of the group and restarts its log after `index`, the last index
    /// of an installed snapshot, whose term was `term`.
    InstallSnapshot {
        group: GroupId,
        index: LogIndex,
        term: Term,
    },
}

impl Record {
    pub fn group(&self) -> GroupId {
        match self {
            Record::Entry { group, .. }
            | Record::HardState { group, .. }
            | Record::Truncate { group, .. }
            | Record::Compact { group, .. }
            | Record::InstallSnapshot { group, .. } => *group,
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
        "unsupported segment format version {found}; this build reads versions \
         {FORMAT_VERSION_READABLE_MIN} to {FORMAT_VERSION}"
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
    out[8..12].copy_from_slice(&header.format_version.to_le_bytes());
    out[16..24].copy_from_slice(&header.cluster_id.to_le_bytes());
    out[24..32].copy_from_slice(&header.node_id.to_le_bytes());
    out[32..36].copy_from_slice(&header.shard.to_le_bytes());
    out[36..40].copy_from_slice(&0u32.to_le_bytes());
    out[40..48].copy_from_slice(&header.segment_seq.to_le_bytes());
    let crc = segment_header_crc(header.format_version, out);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
}

/// Computes the CRC of an encoded segment header. From version 3 on it covers the version
/// field as well as the bytes after the CRC. A damaged version is then caught even when it
/// names another readable version, because that version's rule computes a different CRC.
fn segment_header_crc(format_version: u32, header: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    if format_version >= 3 {
        hasher.update(&header[8..12]);
    }
    hasher.update(&header[16..SEGMENT_HEADER_BYTES]);
    hasher.finalize()
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
    if !(FORMAT_VERSION_READABLE_MIN..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion { found: version });
    }
    let stored = le_u32(header, 12);
    let computed = segment_header_crc(version, header);
    if stored != computed {
        return Err(FormatError::ChecksumMismatch {
            what: "segment header",
            stored,
            computed,
        });
    }
    Ok(SegmentHeader {
        format_version: version,
        cluster_id: le_u64(header, 16),
        node_id: le_u64(header, 24),
        shard: le_u32(header, 32),
        segment_seq: le_u64(header, 40),
    })
}

/// Appends one record to `out`, the payload of a batch under construction.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) {
    let (fixed, payload) = record_body(record);
    push_record(out, &fixed, payload.as_slice());
}

/// Appends an entry record to `out` without cloning the entry.
pub fn encode_entry(group: GroupId, entry: &Entry, out: &mut Vec<u8>) {
    let fixed = fixed_body(
        KIND_ENTRY,
        entry_flags(entry),
        group,
        entry.term,
        entry.index,
    );
    push_record(out, &fixed, &entry.data);
}

/// Encodes an entry record at the front of `out` and returns the bytes it takes,
/// [`record_bytes`] of the entry's payload length.
///
/// # Panics
/// If `out` is shorter than that; callers size it with [`record_bytes`].
pub fn encode_entry_into(group: GroupId, entry: &Entry, out: &mut [u8]) -> usize {
    let fixed = fixed_body(
        KIND_ENTRY,
        entry_flags(entry),
        group,
        entry.term,
        entry.index,
    );
    write_record(out, &fixed, &entry.data)
}

/// Bytes `record` takes in a batch, prefix included.
pub fn encoded_record_bytes(record: &Record) -> usize {
    match record {
        Record::Entry { entry, .. } => record_bytes(entry.data.len()),
        Record::HardState { .. } => record_bytes(HARD_STATE_PAYLOAD_BYTES),
        Record::Truncate { .. } | Record::Compact { .. } | Record::InstallSnapshot { .. } => {
            record_bytes(0)
        }
    }
}

/// Encodes `record` at the front of `out` and returns the bytes it takes,
/// [`encoded_record_bytes`] of it.
///
/// # Panics
/// If `out` is shorter than that.
pub fn encode_record_into(record: &Record, out: &mut [u8]) -> usize {
    let (fixed, payload) = record_body(record);
    write_record(out, &fixed, payload.as_slice())
}

/// The payload of a record: an entry's data, or the vote of a hard state.
enum RecordPayload<'a> {
    Borrowed(&'a [u8]),
    Vote([u8; HARD_STATE_PAYLOAD_BYTES]),
}

impl RecordPayload<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            RecordPayload::Borrowed(bytes) => bytes,
            RecordPayload::Vote(vote) => vote,
        }
    }
}

/// Splits a record into the fixed part of its body and its payload.
fn record_body(record: &Record) -> ([u8; RECORD_BODY_FIXED_BYTES], RecordPayload<'_>) {
    let none = RecordPayload::Borrowed(&[]);
    match record {
        Record::Entry { group, entry } => (
            fixed_body(
                KIND_ENTRY,
                entry_flags(entry),
                *group,
                entry.term,
                entry.index,
            ),
            RecordPayload::Borrowed(&entry.data),
        ),
        Record::HardState { group, hard_state } => {
            let vote = hard_state.vote.map_or(0, |node| node.0);
            let fixed = fixed_body(
                KIND_HARD_STATE,
                0,
                *group,
                hard_state.term,
                hard_state.commit,
            );
            (fixed, RecordPayload::Vote(vote.to_le_bytes()))
        }
        Record::Truncate { group, from } => {
            (fixed_body(KIND_TRUNCATE, 0, *group, Term(0), *from), none)
        }
        Record::Compact {
            group,
            through,
            term,
        } => (fixed_body(KIND_COMPACT, 0, *group, *term, *through), none),
        Record::InstallSnapshot { group, index, term } => (
            fixed_body(KIND_INSTALL_SNAPSHOT, 0, *group, *term, *index),
            none,
        ),
    }
}

fn entry_flags(entry: &Entry) -> u8 {
    match entry.kind {
        EntryKind::Normal => 0,
        EntryKind::LeaderNoop => ENTRY_FLAG_LEADER_NOOP,
        EntryKind::MembershipChange => ENTRY_FLAG_MEMBERSHIP_CHANGE,
    }
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
        KIND_TRUNCATE | KIND_COMPACT | KIND_INSTALL_SNAPSHOT if !payload.is_empty() => {
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
        KIND_INSTALL_SNAPSHOT => Record::InstallSnapshot { group, index, term },
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

/// Writes a record at the front of `out` and returns its bytes.
fn write_record(out: &mut [u8], fixed: &[u8; RECORD_BODY_FIXED_BYTES], payload: &[u8]) -> usize {
    let body_len = fixed.len() + payload.len();
    let total = RECORD_PREFIX_BYTES + body_len;
    let out = &mut out[..total];
    // Entry payloads are bounded far below 4 GiB by the runtime's entry size limits; the
    // saturation only keeps this function total.
    let body_len_field = u32::try_from(body_len).unwrap_or(u32::MAX);
    out[4..8].copy_from_slice(&body_len_field.to_le_bytes());
    out[RECORD_PREFIX_BYTES..RECORD_HEADER_BYTES].copy_from_slice(fixed);
    out[RECORD_HEADER_BYTES..].copy_from_slice(payload);
    let crc = if payload.len() >= CRC_FROM_SOURCE_PAYLOAD_BYTES_MIN {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&out[4..RECORD_HEADER_BYTES]);
        hasher.update(payload);
        hasher.finalize()
    } else {
        crc32fast::hash(&out[4..])
    };
    out[0..4].copy_from_slice(&crc.to_le_bytes());
    total
}

/// Payload size from which [`write_record`] computes the CRC over the source payload
/// instead of over the copy it just wrote. With 4 KiB entries copied into a DMA buffer,
/// hashing the copy took about four times as long as hashing the source (`perf` of the
/// `log_appenders` example, 2026-12-04). Small records keep one call over the contiguous
/// copy, which avoids the per-call overhead that dominates for them.
// NOTE: the threshold between the two measured sizes (16 B and 4 KiB) is a guess.
const CRC_FROM_SOURCE_PAYLOAD_BYTES_MIN: usize = 512;

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
            Record::InstallSnapshot {
                group: GroupId(7),
                index: LogIndex(900),
                term: Term(4),
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
    fn slice_encoding_matches_vec_encoding() {
        for record in sample_records() {
            let mut expected = Vec::new();
            encode_record(&record, &mut expected);
            let mut out = vec![0xa5u8; expected.len() + 7];

            let written = encode_record_into(&record, &mut out);

            assert_eq!(written, expected.len(), "bytes of {record:?}");
            assert_eq!(written, encoded_record_bytes(&record), "size of {record:?}");
            assert_eq!(&out[..written], &expected[..], "bytes of {record:?}");
            assert!(
                out[written..].iter().all(|byte| *byte == 0xa5),
                "{record:?} wrote past its end"
            );
        }
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
        let header = encode_batch_header(42, 40, &payload, 7);

        let decoded = decode_batch_header(&header).unwrap();

        assert_eq!(decoded.batch_seq, 42);
        assert_eq!(decoded.payload_len as usize, payload.len());
        assert_eq!(decoded.record_count, 7);
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
            format_version: FORMAT_VERSION,
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
    fn segment_versions_outside_the_readable_range_are_rejected() {
        let mut header = SegmentHeader {
            format_version: FORMAT_VERSION,
            cluster_id: 11,
            node_id: 2,
            shard: 1,
            segment_seq: 9,
        };
        let mut block = vec![0u8; BLOCK_BYTES as usize];
        for version in FORMAT_VERSION_READABLE_MIN..=FORMAT_VERSION {
            header.format_version = version;
            encode_segment_header(&header, &mut block);
            assert_eq!(
                decode_segment_header(&block).map(|decoded| decoded.format_version),
                Ok(version),
                "version {version} must be readable"
            );
        }
        for version in [1, FORMAT_VERSION + 1] {
            header.format_version = version;
            encode_segment_header(&header, &mut block);
            assert_eq!(
                decode_segment_header(&block),
                Err(FormatError::UnsupportedVersion { found: version }),
                "version {version} must be refused"
            );
        }
    }

    #[test]
    fn install_snapshot_with_payload_is_rejected() {
        let mut payload = Vec::new();
        let fixed = fixed_body(KIND_INSTALL_SNAPSHOT, 0, GroupId(1), Term(2), LogIndex(3));
        push_record(&mut payload, &fixed, &[0]);

        let error = decode_payload(&payload, 1).unwrap_err();

        assert_eq!(
            error,
            FormatError::InvalidPayload {
                kind: KIND_INSTALL_SNAPSHOT,
                payload_bytes: 1
            }
        );
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
