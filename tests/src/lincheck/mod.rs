//! A linearizability checker for key-value histories.
//!
//! # Algorithm
//!
//! A history is linearizable when every operation can be assigned a point in time between
//! its invocation and its return, so that executing the operations one at a time in that
//! order produces the recorded outputs. The definition is from Herlihy and Wing,
//! "Linearizability: a correctness condition for concurrent objects", ACM TOPLAS 12(3), 1990.
//!
//! 1. **P-compositionality.** Linearizability is a local property, and the operations on
//!    different keys never interact, so the history is linearizable exactly when each key's
//!    sub-history is (Horn and Kroening, "Faster linearizability checking via
//!    P-compositionality", FORTE 2015). Keys are checked one at a time, smallest first.
//! 2. **Search.** For each key, Wing and Gong's backtracking search ("Testing and verifying
//!    concurrent objects", JPDC 17(1-2), 1993) builds a linearization from the front. At
//!    each step it may linearize any pending operation whose invocation precedes every
//!    remaining return, provided the key's sequential model accepts its output in the current
//!    state. Gavin Lowe's refinements ("Testing for linearizability", Concurrency and
//!    Computation: Practice and Experience 29(4), 2017) make it fast. Operations are
//!    linearized *just in time*: the search scans the remaining events in order and
//!    backtracks as soon as it reaches the return of an operation it has not linearized.
//!    Every configuration, the set of linearized operations (a bitset) together with the
//!    model state, is memoized, and the search never expands one twice.
//!
//! # Correctness
//!
//! The search is complete because every linearization is a sequence of choices it tries.
//! An operation whose return precedes another's invocation must come first, so at each
//! point the candidates are exactly the pending calls before the first remaining return.
//! The scan tries all of them and backtracks over every alternative. Memoization loses no
//! linearization: what the search can still do from a configuration depends only on which
//! operations remain and on the model state, so a configuration reached again by another
//! route fails again. The search is sound because it only accepts a sequence in which each
//! step satisfied the model and the real-time order.
//!
//! # Unknown outcomes
//!
//! An operation that completed with `info`, or never completed, may have taken effect at
//! any time after its invocation, or never. It has no return event (it returns "at
//! infinity") and any output is accepted. The search may linearize it wherever the model
//! allows, and it succeeds once every operation with a known return is linearized. Leaving
//! an unknown operation out is the same as placing it after everything else, where no
//! output observes it. So an unknown read is dropped, and an unknown compare-and-set is
//! only placed where it would swap, because a mismatch changes nothing. A failed write,
//! append or delete had no effect and is dropped. A failed compare-and-set observed another
//! value, and is kept with that constraint. Unknown operations with the same effect are
//! interchangeable, so the search places them in invocation order and loses nothing.
//!
//! NOTE: an unknown operation stays a candidate to the end of the history, so refuting a
//! long key history with many of them can take time exponential in their number, and the
//! time limit then gives [`CheckOutcome::Unknown`]. Measured on a 2-core machine in a
//! debug build with the generator in `tests/lincheck_scale.rs`: histories of 3,000
//! operations by 10 clients on one key with an injected stale read and no unknown
//! operations are rejected in under 2 seconds. A similar history with one operation in
//! twenty unknown stayed undecided after 20 seconds. Linearizable generated histories with
//! up to 20 clients check within a few seconds.
//!
//! # Offending sets and time limits
//!
//! For a non-linearizable key, [`check`] reports a 1-minimal offending set and the first
//! failure, the operation whose return first leaves no linearization (see `minimize`).
//! Because a sub-history starts from an absent key, a read or compare-and-set that observed
//! a value written by an operation outside the set already fails on its own. For a stale
//! read, the 1-minimal set is therefore often that read alone.
//!
//! The whole check, minimization included, stops at the time limit. A search cut short
//! gives [`CheckOutcome::Unknown`], and a minimization cut short gives the smallest
//! non-linearizable set found, marked as not minimal.

mod minimize;
mod model;
mod search;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::history::{History, Operation};
use model::{Compiled, Values};
use search::{SearchOp, SearchResult};

/// The verdict on a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// The sub-history of `key` has no linearization.
    NotLinearizable {
        key: String,
        /// A non-linearizable sub-history of `key`, ordered by invocation.
        offending: Vec<Operation>,
        /// Whether removing any one of `offending` was shown to leave a linearizable
        /// history. `false` when the time limit stopped the reduction early.
        minimal: bool,
        /// The operation whose return first leaves no linearization: every prefix of the
        /// key's events before that return is linearizable. The reduction keeps it in
        /// `offending` where it can. It is dropped when a set without it stays
        /// non-linearizable, typically because removing a write left a read or
        /// compare-and-set without the value it observed. `None` when the time limit stopped
        /// the search for it.
        first_failure: Option<Operation>,
    },
    /// The time limit passed before the check decided.
    Unknown { reason: String },
}

/// Checks whether `history` is linearizable, spending at most about `time_limit`.
///
/// The clock is read every thousand or so search steps, so the check may overrun the limit
/// slightly.
pub fn check(history: &History, time_limit: Duration) -> CheckOutcome {
    let start = Instant::now();
    let deadline = start
        .checked_add(time_limit)
        .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(start);

    let mut checkers = partition_by_key(history);
    checkers.sort_by(|a, b| (a.operations.len(), &a.key).cmp(&(b.operations.len(), &b.key)));
    let key_count = checkers.len();
    for (checked, checker) in checkers.iter_mut().enumerate() {
        let all: Vec<usize> = (0..checker.operations.len()).collect();
        match checker.check(&all, None, deadline) {
            SearchResult::Linearizable => {}
            SearchResult::NotLinearizable => {
                let reduction = minimize::minimize(checker, deadline);
                let mut offending: Vec<Operation> = reduction
                    .operations
                    .iter()
                    .map(|&index| {
                        history.operations()[checker.operations[index].history_index].clone()
                    })
                    .collect();
                offending.sort_by_key(|operation| operation.invoke_position);
                let first_failure = reduction.first_failure.map(|index| {
                    history.operations()[checker.operations[index].history_index].clone()
                });
                return CheckOutcome::NotLinearizable {
                    key: checker.key.clone(),
                    offending,
                    minimal: reduction.minimal,
                    first_failure,
                };
            }
            SearchResult::TimedOut { steps } => {
                return CheckOutcome::Unknown {
                    reason: format!(
                        "the time limit of {time_limit:?} passed while checking key {:?} \
                         ({}, {steps} search steps), which leaves {} of {} undecided; \
                         raise the time limit to decide them",
                        checker.key,
                        plural(checker.operations.len(), "operation"),
                        key_count - checked,
                        plural(key_count, "key"),
                    ),
                };
            }
        }
    }
    CheckOutcome::Linearizable
}

/// Formats `count` with `noun`, adding an "s" unless `count` is 1.
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// The operations of one key that can affect its check, ordered by invocation.
#[derive(Debug)]
struct KeyChecker {
    key: String,
    values: Values,
    operations: Vec<KeyOperation>,
}

#[derive(Debug)]
struct KeyOperation {
    /// Index into [`History::operations`].
    history_index: usize,
    call_position: usize,
    /// `None` when the outcome is unknown.
    return_position: Option<usize>,
    compiled: Compiled,
}

impl KeyChecker {
    /// Searches for a linearization of the operations at `subset`. With `cut`, only the
    /// events before that position count: operations invoked later are left out, and
    /// operations that return later count as of unknown outcome.
    fn check(&mut self, subset: &[usize], cut: Option<usize>, deadline: Instant) -> SearchResult {
        let mut operations = Vec::with_capacity(subset.len());
        for &index in subset {
            let operation = &self.operations[index];
            if cut.is_some_and(|cut| operation.call_position >= cut) {
                continue;
            }
            let returned = operation
                .return_position
                .filter(|&position| cut.is_none_or(|cut| position < cut));
            let step = match returned {
                Some(_) => operation.compiled.known,
                None => operation.compiled.unknown,
            };
            if let Some(step) = step {
                operations.push(SearchOp {
                    call_position: operation.call_position,
                    return_position: returned,
                    step,
                });
            }
        }
        search::search(&mut self.values, &operations, deadline)
    }
}

/// Splits the history into one checker per key, leaving out operations without effect.
fn partition_by_key(history: &History) -> Vec<KeyChecker> {
    let mut by_key: BTreeMap<&str, KeyChecker> = BTreeMap::new();
    for (history_index, operation) in history.operations().iter().enumerate() {
        let key = operation.call.key();
        let checker = by_key.entry(key).or_insert_with(|| KeyChecker {
            key: key.to_string(),
            values: Values::new(history.missing_key_read()),
            operations: Vec::new(),
        });
        let Some(compiled) = model::compile(operation, &mut checker.values) else {
            continue;
        };
        let return_position = operation.return_position();
        if return_position.is_some() && compiled.known.is_none() {
            continue;
        }
        checker.operations.push(KeyOperation {
            history_index,
            call_position: operation.invoke_position,
            return_position,
            compiled,
        });
    }
    by_key
        .into_values()
        .filter(|checker| !checker.operations.is_empty())
        .collect()
}
