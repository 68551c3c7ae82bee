//! The sequential specification of one key, over values interned to integers.
//!
//! Every string the search can meet is interned per key to a [`StateId`], so a model state
//! is a single `u32` that hashes and compares in constant time. Appends create new strings
//! during the search. Each (state, appended value) pair is concatenated once and the result
//! is memoized, so the search loop clones no strings after the first visit.

use std::collections::HashMap;

use crate::history::{Call, MissingKeyRead, Operation, Outcome, Output};

/// An interned value of the key, or [`ABSENT`].
pub(super) type StateId = u32;

/// The state of an absent key.
pub(super) const ABSENT: StateId = 0;

/// The effect and output constraint of one operation on the key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Step {
    /// A read that returned this value.
    Read(StateId),
    /// A write of this value.
    Write(StateId),
    /// A compare-and-set that found `expected` and stored `new`.
    CasSwap { expected: StateId, new: StateId },
    /// A compare-and-set that found a value other than `expected`.
    CasMismatch { expected: StateId },
    /// An append of the interned string.
    Append(StateId),
    /// A delete.
    Delete,
}

/// The interned values of one key.
#[derive(Debug)]
pub(super) struct Values {
    ids: HashMap<String, StateId>,
    /// The string of each id. `strings[ABSENT]` is the empty string, which an append to an
    /// absent key starts from.
    strings: Vec<String>,
    appended: HashMap<(StateId, StateId), StateId>,
}

impl Values {
    /// Creates the table. With [`MissingKeyRead::EmptyString`] the empty string interns to
    /// [`ABSENT`], because such a store cannot tell the two apart.
    pub(super) fn new(missing_key_read: MissingKeyRead) -> Self {
        let mut ids = HashMap::new();
        if missing_key_read == MissingKeyRead::EmptyString {
            ids.insert(String::new(), ABSENT);
        }
        Values {
            ids,
            strings: vec![String::new()],
            appended: HashMap::new(),
        }
    }

    pub(super) fn intern(&mut self, text: &str) -> StateId {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = StateId::try_from(self.strings.len()).unwrap_or(StateId::MAX);
        self.strings.push(text.to_string());
        self.ids.insert(text.to_string(), id);
        id
    }

    fn intern_optional(&mut self, text: Option<&str>) -> StateId {
        match text {
            Some(text) => self.intern(text),
            None => ABSENT,
        }
    }

    /// Returns the state after `step`, or `None` when `step` cannot happen in `state`.
    pub(super) fn apply(&mut self, state: StateId, step: Step) -> Option<StateId> {
        match step {
            Step::Read(value) => (state == value).then_some(state),
            Step::Write(value) => Some(value),
            Step::CasSwap { expected, new } => (state == expected).then_some(new),
            Step::CasMismatch { expected } => (state != expected).then_some(state),
            Step::Append(suffix) => Some(self.append(state, suffix)),
            Step::Delete => Some(ABSENT),
        }
    }

    fn append(&mut self, state: StateId, suffix: StateId) -> StateId {
        if let Some(&result) = self.appended.get(&(state, suffix)) {
            return result;
        }
        let prefix = self.string(state);
        let mut joined = String::with_capacity(prefix.len() + self.string(suffix).len());
        joined.push_str(prefix);
        joined.push_str(self.string(suffix));
        let result = self.intern(&joined);
        self.appended.insert((state, suffix), result);
        result
    }

    fn string(&self, id: StateId) -> &str {
        self.strings.get(id as usize).map_or("", String::as_str)
    }
}

/// How an operation takes part in the check of its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Compiled {
    /// The step when the operation returned with a known outcome, `None` when unknown.
    pub known: Option<Step>,
    /// The step to try when the outcome is unknown (also after cutting the history before
    /// its return), `None` when an unknown outcome leaves no effect to place.
    pub unknown: Option<Step>,
}

/// Compiles an operation, or returns `None` when it cannot affect the check: a failed
/// operation, or a read whose outcome is unknown.
pub(super) fn compile(operation: &Operation, values: &mut Values) -> Option<Compiled> {
    let effect = match &operation.call {
        Call::Read { .. } => None,
        Call::Write { value, .. } => Some(Step::Write(values.intern(value))),
        Call::Cas { expected, new, .. } => Some(Step::CasSwap {
            expected: values.intern_optional(expected.as_deref()),
            new: values.intern(new),
        }),
        Call::Append { value, .. } => Some(Step::Append(values.intern(value))),
        Call::Delete { .. } => Some(Step::Delete),
    };
    // An unknown compare-and-set matters only if it swapped: a mismatch, like never taking
    // effect, leaves the state unchanged and nothing observes its output.
    let known = match (&operation.outcome, &operation.call) {
        (Outcome::Info | Outcome::Pending, _) => None,
        (Outcome::Ok(Output::Read(value)), Call::Read { .. }) => {
            Some(Step::Read(values.intern_optional(value.as_deref())))
        }
        (Outcome::Ok(Output::Cas(false)) | Outcome::Fail, Call::Cas { expected, .. }) => {
            Some(Step::CasMismatch {
                expected: values.intern_optional(expected.as_deref()),
            })
        }
        (Outcome::Fail, _) => return None,
        (Outcome::Ok(_), Call::Read { .. }) => return None,
        (Outcome::Ok(_), _) => effect,
    };
    if known.is_none() && effect.is_none() {
        return None;
    }
    Some(Compiled {
        known,
        unknown: effect,
    })
}
