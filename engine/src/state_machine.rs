//! The interface between the Raft log and the service it replicates.
//!
//! A [`StateMachine`] receives the committed entries of one Raft group, one at a time and
//! in index order, and turns each command into a new state plus an output for the client
//! that proposed it. Every replica applies the same entries, so every replica must reach
//! the same state: applying is a pure function of the previous state and the entry.
//!
//! Snapshots let the log be truncated and let a lagging replica catch up without the full
//! log. Taking one has two phases. [`StateMachine::snapshot_view`] captures a
//! point-in-time view of the state, which must be cheap because it runs between two
//! applies. [`SnapshotView::serialize`] then turns the view into bytes. It does not borrow
//! the state machine, so the runtime may run it later, on another task of the same
//! executor, while the state machine keeps applying entries.

use bytes::Bytes;

use crate::raft::{Entry, EntryKind, LogIndex, Term};

/// A replicated service: the deterministic function from committed entries to state.
///
/// # Contract
///
/// - **Order.** Entries are applied in strictly increasing index order without gaps,
///   starting at `applied_index() + 1`. A runtime calls the provided
///   [`apply`](StateMachine::apply), which checks this. An implementation fills in
///   `apply_command` and `apply_noop`, and only `apply` calls them.
/// - **No-ops.** [`EntryKind::LeaderNoop`] and [`EntryKind::MembershipChange`] entries
///   carry no command. They reach the state machine only through `apply_noop`, which
///   advances the applied index and term and changes nothing else.
/// - **Determinism.** The same sequence of entries, starting from the same state (empty,
///   or restored from the same snapshot), must produce the same state and the same
///   outputs on every replica. An implementation must not read clocks, randomness,
///   environment, thread identity or iteration order of hashed collections with random
///   seeds, and must not perform I/O whose success can differ between replicas (disk
///   writes, network calls). Configuration that changes outcomes, such as size limits,
///   must be identical on every replica.
/// - **Bad commands.** A command that cannot be decoded or is invalid still counts as
///   applied: the applied index advances, the state is otherwise unchanged, and the
///   error is reported through [`Output`](StateMachine::Output). `apply_command` must not
///   panic on any input bytes.
///
/// # Threading
///
/// Nothing here requires `Send` or `Sync`: a state machine lives on the core that owns
/// its Raft group and runs on that core's single-threaded executor. Views may hold `Rc`s
/// into the state for the same reason.
///
/// # Background snapshots
///
/// `snapshot_view` must return a view that stays valid and unchanged while later entries
/// are applied. The usual implementation is copy-on-write: keep the state behind an `Rc`,
/// clone the `Rc` into the view, and write through `Rc::make_mut`, which copies the state
/// only when a view is still alive. A persistent (structurally shared) map makes that
/// copy proportional to the changed part instead of the whole state.
pub trait StateMachine {
    /// The result of one applied command, returned to the client that proposed it.
    /// Implementations usually make this a `Result` so that invalid commands report a
    /// typed error.
    type Output;

    /// A point-in-time view of the state, serialized independently of the state machine.
    type View: SnapshotView + 'static;

    /// The error [`restore`](StateMachine::restore) returns for a snapshot it rejects.
    type RestoreError: std::error::Error + 'static;

    /// Applies the command carried by a [`EntryKind::Normal`] entry at `index` and sets
    /// the applied index to `index` and the applied term to `term`, whatever the command
    /// contains.
    ///
    /// Called only by [`apply`](StateMachine::apply), which has checked that `index` is
    /// `applied_index() + 1`.
    fn apply_command(&mut self, index: LogIndex, term: Term, command: &Bytes) -> Self::Output;

    /// Sets the applied index to `index` and the applied term to `term` for an entry
    /// without a command, leaving the rest of the state unchanged.
    ///
    /// Called only by [`apply`](StateMachine::apply), under the same order check as
    /// [`apply_command`](StateMachine::apply_command).
    fn apply_noop(&mut self, index: LogIndex, term: Term);

    /// The index of the last applied entry, or `LogIndex(0)` before the first one.
    fn applied_index(&self) -> LogIndex;

    /// The term of the last applied entry, or `Term(0)` before the first one.
    fn applied_term(&self) -> Term;

    /// Captures the current state as a view covering `applied_index()` and
    /// `applied_term()`. Must be cheap (no serialization), because it runs between two
    /// applies.
    fn snapshot_view(&self) -> Self::View;

    /// Replaces the whole state with the one in `snapshot`, including the applied index
    /// and term, which become `snapshot.index` and `snapshot.term`.
    ///
    /// Validates `snapshot.data` completely before changing anything: on error the state
    /// machine is left exactly as it was. Must not panic on any input bytes.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), Self::RestoreError>;

    /// Applies one committed entry and returns the output of its command, or `None` for an
    /// entry without a command.
    ///
    /// Returns [`ApplyOrderError`] and changes nothing when `entry.index` is not
    /// `applied_index() + 1`, because skipping or repeating an entry would make this
    /// replica diverge from the others.
    fn apply(&mut self, entry: &Entry) -> Result<Option<Self::Output>, ApplyOrderError> {
        let expected = self.applied_index().next();
        if entry.index != expected {
            return Err(ApplyOrderError {
                index: entry.index,
                expected,
            });
        }
        match entry.kind {
            EntryKind::Normal => Ok(Some(self.apply_command(
                entry.index,
                entry.term,
                &entry.data,
            ))),
            // A membership change is the core's and the runtime's business; to the state
            // machine it is an entry without a command.
            EntryKind::LeaderNoop | EntryKind::MembershipChange => {
                self.apply_noop(entry.index, entry.term);
                Ok(None)
            }
        }
    }

    /// Captures a view and serializes it at once: [`snapshot_view`] followed by
    /// [`SnapshotView::serialize`].
    ///
    /// [`snapshot_view`]: StateMachine::snapshot_view
    fn snapshot(&self) -> Snapshot {
        self.snapshot_view().serialize()
    }
}

/// A point-in-time copy of a state machine's state, returned by
/// [`StateMachine::snapshot_view`].
pub trait SnapshotView {
    /// The index of the last entry whose effect the view contains.
    fn index(&self) -> LogIndex;

    /// The term of the entry at [`index`](SnapshotView::index).
    fn term(&self) -> Term;

    /// Serializes the view into a snapshot that [`StateMachine::restore`] accepts. The
    /// same view always serializes to the same bytes.
    fn serialize(&self) -> Snapshot;

    /// Appends the next part of the serialized data to `out`, about `budget_bytes` of it
    /// (a step may pass the budget by one item), and returns `true` once the data is
    /// complete. Calling it until it returns `true` appends exactly the bytes of
    /// [`serialize`](SnapshotView::serialize)`().data`.
    ///
    /// The runtime serializes in steps and yields to its executor between them, so that a
    /// large state does not stall the shard's loop. The provided implementation serializes
    /// everything in the first step; a state machine with a large state should override
    /// it.
    fn serialize_step(&mut self, out: &mut Vec<u8>, budget_bytes: usize) -> bool {
        let _ = budget_bytes;
        out.extend_from_slice(&self.serialize().data);
        true
    }
}

/// A serialized state machine state and the log position it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The index of the last entry whose effect the snapshot contains.
    pub index: LogIndex,
    /// The term of the entry at `index`.
    pub term: Term,
    /// The serialized state, in a format of the state machine's choosing.
    pub data: Bytes,
}

/// An entry passed to [`StateMachine::apply`] out of order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "entry at index {index} is out of order: the state machine expected index {expected}, \
     one past its applied index; pass committed entries in index order without gaps or \
     repeats, and restore a snapshot first when the log starts later"
)]
pub struct ApplyOrderError {
    /// The index of the rejected entry.
    pub index: LogIndex,
    /// The only index the state machine accepts next.
    pub expected: LogIndex,
}
