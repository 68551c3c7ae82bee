//! The built-in replicated key-value store, a [`StateMachine`](crate::state_machine::StateMachine)
//! over byte-string keys and values.
//!
//! - [`Command`] is a write carried in a log entry: put, delete, or compare-and-swap on
//!   the current value, on the key's absence, or on the index of the entry that last
//!   wrote the key (its `mod_index`). Applying returns a [`WriteResult`] with the entry's
//!   index, or a [`CommandError`] for bytes that do not decode or break a [`KvLimits`]
//!   limit. A rejected entry still counts as applied and changes nothing else.
//! - [`Query`] is a read: a get, or a scan by prefix or by key range `[start, end)` with
//!   a limit. The runtime serves reads from [`KvStateMachine::get`],
//!   [`KvStateMachine::scan`] or [`KvStateMachine::query`] after it has made them
//!   linearizable.
//! - Commands and queries travel as one format version byte followed by a validated rkyv
//!   archive ([`codec`]).
//! - Snapshots are a checksummed, versioned dump of every key ([`snapshot`]), and the
//!   store takes a view for one in constant time by sharing its map copy-on-write.
//!
//! ```
//! use bytes::Bytes;
//! use shardraft::kv::{Command, KvLimits, KvStateMachine, WriteOutcome};
//! use shardraft::raft::{Entry, EntryKind, LogIndex, Term};
//! use shardraft::state_machine::StateMachine;
//!
//! let limits = KvLimits { key_bytes_max: 1024, value_bytes_max: 64 * 1024 };
//! let mut kv = KvStateMachine::new(limits);
//! let put = Command::Put { key: b"a".to_vec(), value: b"1".to_vec() };
//! let entry = Entry {
//!     term: Term(1),
//!     index: LogIndex(1),
//!     kind: EntryKind::Normal,
//!     data: put.encode().unwrap(),
//! };
//! let result = kv.apply(&entry).unwrap().unwrap().unwrap();
//! assert_eq!(result.outcome, WriteOutcome::Stored);
//! assert_eq!(kv.get(b"a").unwrap().value, Bytes::from_static(b"1"));
//! ```

pub mod codec;
mod command;
mod error;
mod output;
mod read;
pub mod snapshot;
mod store;

pub use codec::CodecError;
pub use command::{Command, Condition, Query, ScanRange};
pub use error::CommandError;
pub use output::{KeyValue, QueryResult, ScanPage, VersionedValue, WriteOutcome, WriteResult};
pub use read::prefix_end;
pub use snapshot::{KvSnapshotView, RestoreError};
pub use store::{KvLimits, KvStateMachine};
