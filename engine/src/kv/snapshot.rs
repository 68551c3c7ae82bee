//! The snapshot format of the key-value state machine.
//!
//! All integers are little-endian:
//!
//! ```text
//! magic        4 bytes   "SRKV"
//! version      u8        SNAPSHOT_FORMAT_VERSION
//! index        u64       applied index the snapshot covers
//! term         u64       term of the entry at that index
//! key_count    u64
//! key_count times, in strictly ascending key order:
//!   key_len    u64, then key_len bytes of key
//!   value_len  u64, then value_len bytes of value
//!   mod_index  u64
//! crc32        u32       CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Restoring checks the magic, the version, the checksum, every length against the bytes
//! left, key order, that each `mod_index` lies in `1..=index`, that no byte follows the
//! last key, and that the embedded index and term match the snapshot's metadata.

use std::ops::Bound;

use bytes::Bytes;

use super::output::VersionedValue;
use super::store::KeyMap;
use crate::raft::{LogIndex, Term};
use crate::state_machine::{Snapshot, SnapshotView};

/// The bytes every key-value snapshot starts with.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"SRKV";

/// The snapshot format version this build writes and the only one it restores.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

/// Magic, version, index, term and key count.
const HEADER_BYTES: usize = 4 + 1 + 8 + 8 + 8;
const CHECKSUM_BYTES: usize = 4;

/// A point-in-time view of a [`KvStateMachine`](super::KvStateMachine), returned by
/// [`StateMachine::snapshot_view`](crate::state_machine::StateMachine::snapshot_view).
///
/// It shares the store's persistent map (so it is not `Send`); later writes to the store
/// copy the tree nodes they change instead of changing the view. It serializes either at
/// once ([`SnapshotView::serialize`]) or in steps of a bounded size
/// ([`SnapshotView::serialize_step`]), which resume after the last key written, so that a
/// runtime can yield between steps.
#[derive(Clone, Debug)]
pub struct KvSnapshotView {
    index: LogIndex,
    term: Term,
    keys: KeyMap,
    progress: SerializeProgress,
}

/// How far a stepwise serialization got.
#[derive(Clone, Debug, Default)]
struct SerializeProgress {
    /// Whether the header was written.
    started: bool,
    /// The last key written; the next step starts after it.
    last_key: Option<Bytes>,
    /// CRC-32 of every byte written so far.
    hasher: crc32fast::Hasher,
    finished: bool,
}

impl KvSnapshotView {
    pub(super) fn new(index: LogIndex, term: Term, keys: KeyMap) -> KvSnapshotView {
        KvSnapshotView {
            index,
            term,
            keys,
            progress: SerializeProgress::default(),
        }
    }

    /// Returns the number of keys in the view.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Returns whether the view contains no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl SnapshotView for KvSnapshotView {
    fn index(&self) -> LogIndex {
        self.index
    }

    fn term(&self) -> Term {
        self.term
    }

    fn serialize(&self) -> Snapshot {
        let mut fresh = KvSnapshotView::new(self.index, self.term, self.keys.clone());
        let mut data = Vec::with_capacity(fresh.encoded_bytes());
        while !fresh.serialize_step(&mut data, usize::MAX) {}
        Snapshot {
            index: self.index,
            term: self.term,
            data: Bytes::from(data),
        }
    }

    fn serialize_step(&mut self, out: &mut Vec<u8>, budget_bytes: usize) -> bool {
        if self.progress.finished {
            return true;
        }
        let begin = out.len();
        if !self.progress.started {
            out.extend_from_slice(&SNAPSHOT_MAGIC);
            out.push(SNAPSHOT_FORMAT_VERSION);
            out.extend_from_slice(&self.index.0.to_le_bytes());
            out.extend_from_slice(&self.term.0.to_le_bytes());
            out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
            self.progress.started = true;
        }
        let after = match &self.progress.last_key {
            Some(last) => Bound::Excluded(&last[..]),
            None => Bound::Unbounded,
        };
        let mut range = self.keys.range::<_, [u8]>((after, Bound::Unbounded));
        let mut last_written = None;
        let mut exhausted = true;
        for (key, versioned) in range.by_ref() {
            out.extend_from_slice(&(key.len() as u64).to_le_bytes());
            out.extend_from_slice(key);
            out.extend_from_slice(&(versioned.value.len() as u64).to_le_bytes());
            out.extend_from_slice(&versioned.value);
            out.extend_from_slice(&versioned.mod_index.0.to_le_bytes());
            last_written = Some(key.clone());
            if out.len() - begin >= budget_bytes {
                exhausted = false;
                break;
            }
        }
        // A step that filled its budget on the last key finds the range empty next time.
        self.progress.hasher.update(&out[begin..]);
        if let Some(key) = last_written {
            self.progress.last_key = Some(key);
        }
        if !exhausted {
            return false;
        }
        let checksum = self.progress.hasher.clone().finalize();
        out.extend_from_slice(&checksum.to_le_bytes());
        self.progress.finished = true;
        true
    }
}

impl KvSnapshotView {
    /// Computes the length of the serialized snapshot, in bytes.
    fn encoded_bytes(&self) -> usize {
        let entries_bytes: usize = self
            .keys
            .iter()
            .map(|(key, versioned)| 8 + key.len() + 8 + versioned.value.len() + 8)
            .sum();
        HEADER_BYTES + entries_bytes + CHECKSUM_BYTES
    }
}

/// A snapshot that [`KvStateMachine`](super::KvStateMachine) refused to restore. The
/// store is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The data is shorter than an empty snapshot.
    #[error(
        "snapshot is {snapshot_bytes} bytes, shorter than the {minimum_bytes} bytes of an \
         empty key-value snapshot; it is truncated or not a key-value snapshot"
    )]
    TooShort {
        /// The length of the data.
        snapshot_bytes: usize,
        /// The length of a snapshot with no keys.
        minimum_bytes: usize,
    },
    /// The data does not start with [`SNAPSHOT_MAGIC`].
    #[error(
        "snapshot starts with {found:02x?}, not the key-value snapshot magic {SNAPSHOT_MAGIC:02x?}; \
         it was written by another state machine or is corrupted"
    )]
    InvalidMagic {
        /// The first four bytes of the data.
        found: [u8; 4],
    },
    /// The format version is not one this build restores.
    #[error(
        "snapshot has format version {version}, but this build restores only version \
         {supported}; restore it with a matching shardraft version"
    )]
    UnknownVersion {
        /// The version byte found.
        version: u8,
        /// The version this build restores.
        supported: u8,
    },
    /// The stored checksum does not match the data.
    #[error(
        "snapshot checksum mismatch: stored CRC-32 {stored:#010x}, computed {computed:#010x}; \
         the snapshot is corrupted or truncated, fetch it again"
    )]
    ChecksumMismatch {
        /// The CRC-32 in the last four bytes.
        stored: u32,
        /// The CRC-32 of the bytes before it.
        computed: u32,
    },
    /// A length field points past the end of the data.
    #[error(
        "snapshot is truncated: {field} at offset {offset} needs {needed_bytes} bytes but \
         only {remaining_bytes} remain"
    )]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Its offset from the start of the data.
        offset: usize,
        /// The bytes the field needs.
        needed_bytes: u64,
        /// The bytes left before the checksum.
        remaining_bytes: usize,
    },
    /// Bytes follow the last key that the key count announced.
    #[error(
        "snapshot has {extra_bytes} bytes after its last key, at offset {offset}; the key \
         count does not match the data"
    )]
    TrailingBytes {
        /// The number of unexpected bytes.
        extra_bytes: usize,
        /// Offset of the first of them.
        offset: usize,
    },
    /// A key is not greater than the key before it.
    #[error(
        "snapshot key number {position} is not greater than the key before it; keys must be \
         unique and in ascending byte order"
    )]
    KeysOutOfOrder {
        /// The zero-based position of the key in the snapshot.
        position: u64,
    },
    /// A key's `mod_index` is 0 or after the index the snapshot covers.
    #[error(
        "snapshot key number {position} has mod_index {mod_index}, outside 1..={snapshot_index}"
    )]
    ModIndexOutOfRange {
        /// The zero-based position of the key in the snapshot.
        position: u64,
        /// The `mod_index` stored for it.
        mod_index: u64,
        /// The index the snapshot covers.
        snapshot_index: u64,
    },
    /// The index and term inside the data differ from the snapshot's metadata.
    #[error(
        "snapshot data covers index {data_index} term {data_term}, but its metadata says \
         index {metadata_index} term {metadata_term}; pair the data with its own metadata"
    )]
    MetadataMismatch {
        /// The index stored in the data.
        data_index: u64,
        /// The term stored in the data.
        data_term: u64,
        /// [`Snapshot::index`].
        metadata_index: u64,
        /// [`Snapshot::term`].
        metadata_term: u64,
    },
}

/// Validates `snapshot` completely and returns the keys it contains.
///
/// Keys and values are copied out of the snapshot, so the map does not keep the whole
/// snapshot buffer alive.
pub(super) fn decode(snapshot: &Snapshot) -> Result<KeyMap, RestoreError> {
    let data = &snapshot.data[..];
    if data.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(RestoreError::TooShort {
            snapshot_bytes: data.len(),
            minimum_bytes: HEADER_BYTES + CHECKSUM_BYTES,
        });
    }
    let (body, checksum) = data.split_at(data.len() - CHECKSUM_BYTES);

    let mut magic = [0; 4];
    magic.copy_from_slice(&body[..4]);
    if magic != SNAPSHOT_MAGIC {
        return Err(RestoreError::InvalidMagic { found: magic });
    }
    let version = body[4];
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(RestoreError::UnknownVersion {
            version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    let stored = u32::from_le_bytes([checksum[0], checksum[1], checksum[2], checksum[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(RestoreError::ChecksumMismatch { stored, computed });
    }

    let mut reader = Reader {
        body,
        offset: SNAPSHOT_MAGIC.len() + 1,
    };
    let data_index = reader.read_u64("index")?;
    let data_term = reader.read_u64("term")?;
    if data_index != snapshot.index.0 || data_term != snapshot.term.0 {
        return Err(RestoreError::MetadataMismatch {
            data_index,
            data_term,
            metadata_index: snapshot.index.0,
            metadata_term: snapshot.term.0,
        });
    }

    let key_count = reader.read_u64("key count")?;
    let mut keys = KeyMap::new();
    let mut previous_key: Option<&[u8]> = None;
    for position in 0..key_count {
        let key = reader.read_bytes("key length", "key")?;
        let value = reader.read_bytes("value length", "value")?;
        let mod_index = reader.read_u64("mod_index")?;
        if mod_index == 0 || mod_index > data_index {
            return Err(RestoreError::ModIndexOutOfRange {
                position,
                mod_index,
                snapshot_index: data_index,
            });
        }
        if previous_key.is_some_and(|previous| previous >= key) {
            return Err(RestoreError::KeysOutOfOrder { position });
        }
        previous_key = Some(key);
        let versioned = VersionedValue {
            value: Bytes::copy_from_slice(value),
            mod_index: LogIndex(mod_index),
        };
        keys.insert(Bytes::copy_from_slice(key), versioned);
    }

    if reader.offset != body.len() {
        return Err(RestoreError::TrailingBytes {
            extra_bytes: body.len() - reader.offset,
            offset: reader.offset,
        });
    }
    Ok(keys)
}

/// A cursor over the checksummed part of a snapshot that reports truncation as an error.
struct Reader<'a> {
    body: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, field: &'static str, needed_bytes: u64) -> Result<&'a [u8], RestoreError> {
        let remaining_bytes = self.body.len() - self.offset;
        let truncated = RestoreError::Truncated {
            field,
            offset: self.offset,
            needed_bytes,
            remaining_bytes,
        };
        let Ok(needed) = usize::try_from(needed_bytes) else {
            return Err(truncated);
        };
        if needed > remaining_bytes {
            return Err(truncated);
        }
        let bytes = &self.body[self.offset..self.offset + needed];
        self.offset += needed;
        Ok(bytes)
    }

    fn read_u64(&mut self, field: &'static str) -> Result<u64, RestoreError> {
        let bytes = self.take(field, 8)?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    /// Reads a `u64` length named `length_field`, then that many bytes named `field`.
    fn read_bytes(
        &mut self,
        length_field: &'static str,
        field: &'static str,
    ) -> Result<&'a [u8], RestoreError> {
        let length = self.read_u64(length_field)?;
        self.take(field, length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, KvLimits, KvStateMachine};
    use crate::raft::{Entry, EntryKind};
    use crate::state_machine::StateMachine;

    fn store_with_keys(count: u64) -> KvStateMachine {
        let limits = KvLimits {
            key_bytes_max: 1024,
            value_bytes_max: 1024,
        };
        let mut store = KvStateMachine::new(limits);
        for index in 1..=count {
            put(&mut store, index, &format!("key-{index:05}"), "value");
        }
        store
    }

    fn put(store: &mut KvStateMachine, index: u64, key: &str, value: &str) {
        let command = Command::Put {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        };
        let entry = Entry {
            term: Term(1),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: command.encode().unwrap(),
        };
        store.apply(&entry).unwrap().unwrap().unwrap();
    }

    #[test]
    fn stepwise_serialization_matches_serialize() {
        let store = store_with_keys(500);
        let whole = store.snapshot();
        for budget_bytes in [1, 37, 4096, usize::MAX] {
            let mut view = store.snapshot_view();
            let mut data = Vec::new();
            let mut steps = 1;
            while !view.serialize_step(&mut data, budget_bytes) {
                steps += 1;
            }
            assert_eq!(data, whole.data, "budget {budget_bytes}");
            if budget_bytes < 4096 {
                assert!(steps > 1, "budget {budget_bytes} took one step");
            }
        }
    }

    #[test]
    fn writes_after_a_view_leave_it_unchanged() {
        let mut store = store_with_keys(100);
        let before = store.snapshot();
        let view = store.snapshot_view();

        put(&mut store, 101, "key-00001", "changed");
        put(&mut store, 102, "new-key", "added");

        assert_eq!(view.serialize(), before);
        assert_eq!(store.get(b"key-00001").unwrap().value, &b"changed"[..]);
    }

    #[test]
    fn restore_reads_a_stepwise_snapshot() {
        let store = store_with_keys(50);
        let mut view = store.snapshot_view();
        let mut data = Vec::new();
        while !view.serialize_step(&mut data, 64) {}
        let snapshot = Snapshot {
            index: LogIndex(50),
            term: Term(1),
            data: Bytes::from(data),
        };
        let mut restored = store_with_keys(0);

        restored.restore(&snapshot).unwrap();

        assert_eq!(restored.len(), 50);
        assert_eq!(restored.applied_index(), LogIndex(50));
    }
}
