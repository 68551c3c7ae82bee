//! Reduction of a non-linearizable key history to a 1-minimal offending set: a sub-history
//! that is itself not linearizable, from which removing any single operation leaves a
//! linearizable one.
//!
//! 1. **Shortest failing prefix.** Linearizability is prefix-closed: every prefix of a
//!    linearizable history is linearizable once the operations still open at the cut count
//!    as of unknown outcome. A binary search over the return events finds the shortest
//!    non-linearizable prefix. It ends with the return of the *first failure*, the operation
//!    whose completion first leaves no linearization. The operations of that prefix that
//!    returned in it, together with those of unknown outcome, form a non-linearizable
//!    sub-history. Any linearization of it would also linearize the prefix, whose pending
//!    operations only add options.
//! 2. **Reduction around the first failure.** Zeller and Hildebrandt's delta debugging
//!    ("Simplifying and isolating failure-inducing input", IEEE TSE 28(2), 2002) removes
//!    chunks of the other operations while the first failure stays necessary: the set with
//!    it must be non-linearizable and the set without it linearizable. A plain reduction
//!    would often keep a correct read or compare-and-set instead, because dropping the write
//!    it observed makes it non-linearizable on its own.
//! 3. **1-minimality.** Single operations are then removed, the first failure last, while
//!    the set stays non-linearizable, until no single removal does.

use std::time::Instant;

use super::KeyChecker;
use super::search::SearchResult;

/// An offending set, as indices into the key's operations.
#[derive(Debug)]
pub(super) struct Reduction {
    pub operations: Vec<usize>,
    /// Whether every single-operation removal was tested, which the deadline can prevent.
    pub minimal: bool,
    /// The first failure, `None` when the deadline stopped the search for it.
    pub first_failure: Option<usize>,
}

/// The verdict of a test on a candidate set during delta debugging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The candidate still shows the failure, so the reduction may continue from it.
    Fails,
    Passes,
    TimedOut,
}

/// Reduces the operations of `checker`, which must not be linearizable, before `deadline`.
pub(super) fn minimize(checker: &mut KeyChecker, deadline: Instant) -> Reduction {
    let prefix = shortest_failing_prefix(checker, deadline);
    let Some(first_failure) = prefix.first_failure else {
        return Reduction {
            operations: prefix.operations,
            minimal: false,
            first_failure: None,
        };
    };
    let unfinished = |operations| Reduction {
        operations,
        minimal: false,
        first_failure: Some(first_failure),
    };

    let others: Vec<usize> = prefix
        .operations
        .iter()
        .copied()
        .filter(|&index| index != first_failure)
        .collect();
    let others_linearizable = match checker.check(&others, None, deadline) {
        SearchResult::Linearizable => true,
        SearchResult::NotLinearizable => false,
        SearchResult::TimedOut { .. } => return unfinished(prefix.operations),
    };
    let (others, complete) = delta_debug(others, |candidate| {
        let mut with_failure = candidate.to_vec();
        with_failure.push(first_failure);
        match checker.check(&with_failure, None, deadline) {
            SearchResult::NotLinearizable => {}
            SearchResult::Linearizable => return Verdict::Passes,
            SearchResult::TimedOut { .. } => return Verdict::TimedOut,
        }
        if !others_linearizable {
            // The first failure was not necessary to begin with, so only require a failure.
            return Verdict::Fails;
        }
        match checker.check(candidate, None, deadline) {
            SearchResult::Linearizable => Verdict::Fails,
            SearchResult::NotLinearizable => Verdict::Passes,
            SearchResult::TimedOut { .. } => Verdict::TimedOut,
        }
    });
    let mut reduced = others;
    reduced.push(first_failure);
    if !complete {
        return unfinished(reduced);
    }

    match remove_single_operations(checker, reduced, first_failure, deadline) {
        (operations, true) => Reduction {
            operations,
            minimal: true,
            first_failure: Some(first_failure),
        },
        (operations, false) => unfinished(operations),
    }
}

/// The result of the prefix search.
struct FailingPrefix {
    /// A non-linearizable set of operations.
    operations: Vec<usize>,
    /// Set when the binary search finished before the deadline.
    first_failure: Option<usize>,
}

fn shortest_failing_prefix(checker: &mut KeyChecker, deadline: Instant) -> FailingPrefix {
    let all: Vec<usize> = (0..checker.operations.len()).collect();
    let mut returns: Vec<(usize, usize)> = checker
        .operations
        .iter()
        .enumerate()
        .filter_map(|(index, operation)| operation.return_position.map(|ret| (ret, index)))
        .collect();
    returns.sort_unstable();
    if returns.is_empty() {
        // Unreachable for a non-linearizable history, which has a known return.
        return FailingPrefix {
            operations: all,
            first_failure: None,
        };
    }

    // Invariant: the prefix that ends with the return at index `high` is not linearizable,
    // because the whole history is not and later events only open operations of unknown
    // outcome.
    let mut low = 0;
    let mut high = returns.len() - 1;
    let mut complete = true;
    while low < high {
        let middle = low + (high - low) / 2;
        match checker.check(&all, Some(returns[middle].0 + 1), deadline) {
            SearchResult::NotLinearizable => high = middle,
            SearchResult::Linearizable => low = middle + 1,
            SearchResult::TimedOut { .. } => {
                complete = false;
                break;
            }
        }
    }
    let (cut, failing) = returns[high];
    let operations = all
        .into_iter()
        .filter(|&index| {
            let operation = &checker.operations[index];
            operation.call_position < cut
                && operation
                    .return_position
                    .is_none_or(|position| position <= cut)
        })
        .collect();
    FailingPrefix {
        operations,
        first_failure: complete.then_some(failing),
    }
}

/// Runs delta debugging on `failing`, for which `test` returns [`Verdict::Fails`], and
/// returns the reduced set and whether it finished before a test timed out.
///
/// When it finishes, removing any single element makes `test` pass.
fn delta_debug(
    mut failing: Vec<usize>,
    mut test: impl FnMut(&[usize]) -> Verdict,
) -> (Vec<usize>, bool) {
    let mut granularity = 2usize;
    loop {
        if failing.len() <= 1 {
            // The only proper subset left to try is the empty set.
            if failing.len() == 1 {
                match test(&[]) {
                    Verdict::Fails => failing.clear(),
                    Verdict::Passes => {}
                    Verdict::TimedOut => return (failing, false),
                }
            }
            break;
        }
        granularity = granularity.min(failing.len());
        let chunks = split_into(&failing, granularity);
        let mut next = None;

        for chunk in &chunks {
            match test(chunk) {
                Verdict::Fails => {
                    next = Some((chunk.clone(), 2));
                    break;
                }
                Verdict::Passes => {}
                Verdict::TimedOut => return (failing, false),
            }
        }
        // With two chunks, each complement is the other chunk, which was just tested.
        if next.is_none() && granularity != 2 {
            for removed in 0..chunks.len() {
                let complement: Vec<usize> = chunks
                    .iter()
                    .enumerate()
                    .filter(|&(index, _)| index != removed)
                    .flat_map(|(_, chunk)| chunk.iter().copied())
                    .collect();
                match test(&complement) {
                    Verdict::Fails => {
                        next = Some((complement, (granularity - 1).max(2)));
                        break;
                    }
                    Verdict::Passes => {}
                    Verdict::TimedOut => return (failing, false),
                }
            }
        }

        match next {
            Some((smaller, next_granularity)) => {
                failing = smaller;
                granularity = next_granularity;
            }
            None if granularity >= failing.len() => break,
            None => granularity = (granularity * 2).min(failing.len()),
        }
    }
    (failing, true)
}

/// Removes single operations while the set stays non-linearizable, trying `last` after all
/// others, and returns the set and whether it is 1-minimal.
fn remove_single_operations(
    checker: &mut KeyChecker,
    mut operations: Vec<usize>,
    last: usize,
    deadline: Instant,
) -> (Vec<usize>, bool) {
    operations.sort_unstable_by_key(|&index| (index == last, index));
    'restart: loop {
        for removed in 0..operations.len() {
            let mut smaller = operations.clone();
            smaller.remove(removed);
            match checker.check(&smaller, None, deadline) {
                SearchResult::NotLinearizable => {
                    operations = smaller;
                    continue 'restart;
                }
                SearchResult::Linearizable => {}
                SearchResult::TimedOut { .. } => return (operations, false),
            }
        }
        return (operations, true);
    }
}

/// Splits `items` into `parts` contiguous chunks whose sizes differ by at most one.
fn split_into(items: &[usize], parts: usize) -> Vec<Vec<usize>> {
    let parts = parts.clamp(1, items.len().max(1));
    let base = items.len() / parts;
    let extra = items.len() % parts;
    let mut chunks = Vec::with_capacity(parts);
    let mut start = 0;
    for part in 0..parts {
        let size = base + usize::from(part < extra);
        chunks.push(items[start..start + size].to_vec());
        start += size;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_differ_by_at_most_one() {
        let items: Vec<usize> = (0..7).collect();
        let chunks = split_into(&items, 3);
        assert_eq!(chunks, vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
        assert_eq!(split_into(&items, 10).len(), 7);
        assert_eq!(split_into(&[], 2), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn delta_debug_finds_failing_pair() {
        let items: Vec<usize> = (0..20).collect();
        let fails = |set: &[usize]| {
            if set.contains(&3) && set.contains(&17) {
                Verdict::Fails
            } else {
                Verdict::Passes
            }
        };
        let (reduced, complete) = delta_debug(items, fails);
        assert!(complete);
        assert_eq!(reduced, vec![3, 17]);
    }

    #[test]
    fn delta_debug_reaches_empty_set() {
        let (reduced, complete) = delta_debug(vec![1, 2, 3], |_| Verdict::Fails);
        assert!(complete);
        assert!(reduced.is_empty());
    }

    #[test]
    fn delta_debug_stops_on_timeout() {
        let (reduced, complete) = delta_debug(vec![1, 2, 3], |_| Verdict::TimedOut);
        assert!(!complete);
        assert_eq!(reduced, vec![1, 2, 3]);
    }
}
