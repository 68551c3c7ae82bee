//! The commands and queries of the key-value state machine, as they travel in log
//! entries and client requests.
//!
//! These are plain owned types that derive rkyv's `Archive`, so their archived form is
//! the wire format. [`codec`](super::codec) adds the format version byte and validation.

use rkyv::{Archive, Deserialize, Serialize};

/// A write, carried in the data of a log entry and applied by
/// [`KvStateMachine`](super::KvStateMachine).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Sets `key` to `value`, creating the key or replacing its value.
    Put {
        /// The key to write.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key`. Deleting an absent key succeeds and changes nothing.
    Delete {
        /// The key to remove.
        key: Vec<u8>,
    },
    /// Writes `new_value` to `key` only if `condition` holds for the key's current
    /// state. A `new_value` of `None` deletes the key.
    CompareAndSwap {
        /// The key to test and write.
        key: Vec<u8>,
        /// The test applied to the key's current state.
        condition: Condition,
        /// The value to store when the condition holds, or `None` to delete the key.
        new_value: Option<Vec<u8>>,
    },
}

/// The test a [`Command::CompareAndSwap`] applies to the current state of its key.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Holds when the key exists and its value equals these bytes.
    ValueEquals(Vec<u8>),
    /// Holds when the key does not exist.
    Absent,
    /// Holds when the key exists and was last written by the entry at this log index.
    /// An absent key never matches, and neither does 0, because no entry has index 0.
    ModIndexEquals(u64),
}

/// A read, sent by a client and served by [`KvStateMachine::query`](super::KvStateMachine::query).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Reads one key.
    Get {
        /// The key to read.
        key: Vec<u8>,
    },
    /// Reads the keys of a range in ascending key order.
    Scan {
        /// The keys to read.
        range: ScanRange,
        /// The maximum number of keys returned.
        limit: u32,
    },
}

/// The keys a scan visits.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ScanRange {
    /// Every key that starts with these bytes. An empty prefix selects every key.
    Prefix(Vec<u8>),
    /// Every key `k` with `start <= k < end` in byte order, or `start <= k` when `end` is
    /// `None`. A range whose `end` is not greater than `start` is empty.
    Range {
        /// The first key of the range, included.
        start: Vec<u8>,
        /// The key the range stops before, excluded, or `None` for no upper bound.
        end: Option<Vec<u8>>,
    },
}
