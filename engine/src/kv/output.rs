//! The results of applied commands and served queries.

use bytes::Bytes;

use crate::raft::LogIndex;

/// A stored value and the index of the entry that last wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionedValue {
    /// The value bytes.
    pub value: Bytes,
    /// The index of the log entry that last put or swapped this value. Deleting a key and
    /// writing it again starts from the new entry's index.
    pub mod_index: LogIndex,
}

/// One key of a scan with its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key bytes.
    pub key: Bytes,
    /// The value bytes.
    pub value: Bytes,
    /// The index of the log entry that last wrote this key.
    pub mod_index: LogIndex,
}

/// The keys a scan returns, in ascending key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanPage {
    /// At most `limit` keys from the start of the range.
    pub entries: Vec<KeyValue>,
    /// Whether the range contains keys after the last one returned. To read them, scan again
    /// from the last returned key with a zero byte appended.
    pub more: bool,
}

/// The result of a [`Query`](super::Query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueryResult {
    /// The result of [`Query::Get`](super::Query::Get): the key's value, or `None` when
    /// the key is absent.
    Value(Option<VersionedValue>),
    /// The result of [`Query::Scan`](super::Query::Scan).
    Page(ScanPage),
}

/// The result of a write command that was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteResult {
    /// The index of the log entry that carried the command. Values the command wrote have
    /// this as their `mod_index`.
    pub index: LogIndex,
    /// The effect of the command.
    pub outcome: WriteOutcome,
}

/// The effect of a write command on the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// A put stored its value.
    Stored,
    /// A delete ran. `existed` is false when the key was already absent, in which case
    /// nothing changed.
    Deleted {
        /// Whether the key existed before the delete.
        existed: bool,
    },
    /// A compare-and-swap found its condition true and wrote or deleted the key.
    Swapped,
    /// A compare-and-swap found its condition false and changed nothing.
    ConditionFailed {
        /// The key's current value, or `None` when the key is absent, so the client can
        /// retry with a fresh condition.
        current: Option<VersionedValue>,
    },
}
