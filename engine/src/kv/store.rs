//! The key-value state machine: its state, its limits and how it applies commands.

use bytes::Bytes;
use imbl::shared_ptr::RcK;

use super::command::{Command, Condition};
use super::error::CommandError;
use super::output::{VersionedValue, WriteOutcome, WriteResult};
use super::snapshot::{self, KvSnapshotView, RestoreError};
use crate::raft::{LogIndex, Term};
use crate::state_machine::{Snapshot, StateMachine};

/// Every key of the store with its current value, in byte order of the keys.
///
/// A persistent B-tree (`imbl`'s ordered map with non-atomic reference counts, as the
/// store lives on one thread): cloning it is O(1), and a write to a clone copies only the
/// nodes on the path to the changed key. A plain `BTreeMap` behind `Rc::make_mut` copies
/// the whole map on the first write after a snapshot view is taken: 56 to 80 ms for one
/// million keys on a 2-core AMD EPYC development machine, a stall of every write of the
/// group. With this map that write took 12 to 16 µs there (see docs/snapshots.md).
pub(super) type KeyMap = imbl::GenericOrdMap<Bytes, VersionedValue, RcK>;

/// Size limits a [`KvStateMachine`] enforces on the commands it applies.
///
/// The limits decide whether a command is applied or rejected, so every replica of a group
/// must use the same limits, or the replicas diverge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLimits {
    /// The maximum key length, in bytes, of any command.
    pub key_bytes_max: usize,
    /// The maximum value length, in bytes, that a put or compare-and-swap may store.
    pub value_bytes_max: usize,
}

/// The built-in replicated key-value store.
///
/// Keys and values are byte strings. Each key also stores the index of the entry that last
/// wrote it (its `mod_index`), which compare-and-swap can test. The map is a persistent
/// B-tree, so [`StateMachine::snapshot_view`] clones it in constant time, and a write
/// while a view is alive copies only the tree nodes on the path to its key, not the map.
/// Nodes that no view shares are modified in place.
#[derive(Debug)]
pub struct KvStateMachine {
    pub(super) limits: KvLimits,
    pub(super) keys: KeyMap,
    pub(super) applied_index: LogIndex,
    pub(super) applied_term: Term,
}

impl KvStateMachine {
    /// Creates an empty store that has applied no entry.
    pub fn new(limits: KvLimits) -> KvStateMachine {
        KvStateMachine {
            limits,
            keys: KeyMap::new(),
            applied_index: LogIndex(0),
            applied_term: Term(0),
        }
    }

    /// The limits passed to [`KvStateMachine::new`].
    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// The number of keys stored.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the store contains no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Applies a decoded command as the entry at `index`. The caller has already set the
    /// applied index.
    fn execute(&mut self, index: LogIndex, command: Command) -> Result<WriteResult, CommandError> {
        let outcome = match command {
            Command::Put { key, value } => {
                self.check_key(&key)?;
                self.check_value(&value)?;
                self.write(index, key, Some(value));
                WriteOutcome::Stored
            }
            Command::Delete { key } => {
                self.check_key(&key)?;
                let existed = self.keys.contains_key(key.as_slice());
                if existed {
                    self.write(index, key, None);
                }
                WriteOutcome::Deleted { existed }
            }
            Command::CompareAndSwap {
                key,
                condition,
                new_value,
            } => {
                self.check_key(&key)?;
                if let Some(value) = &new_value {
                    self.check_value(value)?;
                }
                let current = self.keys.get(key.as_slice());
                if condition_holds(&condition, current) {
                    self.write(index, key, new_value);
                    WriteOutcome::Swapped
                } else {
                    WriteOutcome::ConditionFailed {
                        current: current.cloned(),
                    }
                }
            }
        };
        Ok(WriteResult { index, outcome })
    }

    /// Stores `value` under `key` as written at `index`, or removes `key` for `None`.
    fn write(&mut self, index: LogIndex, key: Vec<u8>, value: Option<Vec<u8>>) {
        let keys = &mut self.keys;
        match value {
            Some(value) => {
                let versioned = VersionedValue {
                    value: Bytes::from(value),
                    mod_index: index,
                };
                keys.insert(Bytes::from(key), versioned);
            }
            None => {
                keys.remove(key.as_slice());
            }
        }
    }

    fn check_key(&self, key: &[u8]) -> Result<(), CommandError> {
        if key.len() > self.limits.key_bytes_max {
            return Err(CommandError::KeyTooLarge {
                key_bytes: key.len(),
                key_bytes_max: self.limits.key_bytes_max,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), CommandError> {
        if value.len() > self.limits.value_bytes_max {
            return Err(CommandError::ValueTooLarge {
                value_bytes: value.len(),
                value_bytes_max: self.limits.value_bytes_max,
            });
        }
        Ok(())
    }
}

fn condition_holds(condition: &Condition, current: Option<&VersionedValue>) -> bool {
    match (condition, current) {
        (Condition::Absent, current) => current.is_none(),
        (Condition::ValueEquals(expected), Some(current)) => current.value == expected[..],
        (Condition::ModIndexEquals(expected), Some(current)) => current.mod_index.0 == *expected,
        (Condition::ValueEquals(_) | Condition::ModIndexEquals(_), None) => false,
    }
}

impl StateMachine for KvStateMachine {
    /// The write's result, or why the command was rejected. Either way the entry counts
    /// as applied.
    type Output = Result<WriteResult, CommandError>;
    type View = KvSnapshotView;
    type RestoreError = RestoreError;

    fn apply_command(&mut self, index: LogIndex, term: Term, command: &Bytes) -> Self::Output {
        self.applied_index = index;
        self.applied_term = term;
        let command = Command::decode(command).map_err(CommandError::Decode)?;
        self.execute(index, command)
    }

    fn apply_noop(&mut self, index: LogIndex, term: Term) {
        self.applied_index = index;
        self.applied_term = term;
    }

    fn applied_index(&self) -> LogIndex {
        self.applied_index
    }

    fn applied_term(&self) -> Term {
        self.applied_term
    }

    fn snapshot_view(&self) -> KvSnapshotView {
        KvSnapshotView::new(self.applied_index, self.applied_term, self.keys.clone())
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), RestoreError> {
        let keys = snapshot::decode(snapshot)?;
        self.keys = keys;
        self.applied_index = snapshot.index;
        self.applied_term = snapshot.term;
        Ok(())
    }
}
