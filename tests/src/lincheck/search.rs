//! The search for a linearization of one key's operations: Wing and Gong's backtracking
//! with Lowe's just-in-time linearization and memoized configurations.
//!
//! The call and return events of the operations with a known return sit in a doubly linked
//! list ordered by position. Scanning from the head, a call event whose operation can take
//! effect in the current state is linearized: its events are unlinked, and the search
//! restarts at the head. Reaching a return event means that operation had to be linearized
//! already, so the candidates of this configuration are exhausted. The search then undoes
//! the most recent choice and tries the candidate after it. Unlinking and relinking follow
//! stack order, so every relinked node's stored neighbours are still valid.
//!
//! Operations of unknown outcome have no return event and sit in a second list, which the
//! search tries before the first at each configuration. Such an operation is a candidate
//! when it was invoked before the first remaining return. Two of them with the same step
//! are interchangeable once both are invoked, so any linearization can use the earlier one
//! first. The second list therefore holds only the earliest unlinearized operation of each
//! step, and linearizing it puts its next twin in its place. Without this, a long history
//! with many timed-out writes of few distinct values makes the search visit every subset of
//! them.
//!
//! A configuration is the set of linearized operations (a bitset of `u64` words) and the
//! model state. The search after a linearization depends on nothing else, because the lists
//! then contain exactly the operations outside the set, each group of twins represented by
//! its earliest. A configuration seen before has therefore failed already, and the search
//! skips it.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use super::model::{ABSENT, StateId, Step, Values};

/// One operation in the form the search uses.
#[derive(Debug, Clone, Copy)]
pub(super) struct SearchOp {
    pub call_position: usize,
    /// `None` for an operation of unknown outcome, which returns "at infinity".
    pub return_position: Option<usize>,
    pub step: Step,
}

/// The result of one search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SearchResult {
    Linearizable,
    NotLinearizable,
    /// The deadline passed after this many scan steps.
    TimedOut {
        steps: u64,
    },
}

/// How many scan steps pass between two reads of the clock.
const STEPS_PER_CLOCK_READ: u64 = 1024;

const NIL: u32 = u32::MAX;

/// The head sentinel of the list of operations with a known return.
const KNOWN_HEAD: u32 = 0;

/// The head sentinel of the list of operations of unknown outcome.
const UNKNOWN_HEAD: u32 = 1;

#[derive(Debug, Clone, Copy)]
struct Node {
    operation: u32,
    position: usize,
    is_return: bool,
    previous: u32,
    next: u32,
}

/// Which list the scan is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Unknown,
    Known,
}

/// A linearization choice that the search can undo.
#[derive(Debug, Clone, Copy)]
struct Choice {
    call_node: u32,
    phase: Phase,
    /// The position of the first remaining return when the choice was made.
    boundary: usize,
    previous_state: StateId,
}

/// The event lists and the bookkeeping to unlink and relink an operation.
struct Lists {
    nodes: Vec<Node>,
    call_nodes: Vec<u32>,
    return_nodes: Vec<Option<u32>>,
    /// For an operation of unknown outcome, the next one invoked with the same step.
    later_twins: Vec<Option<u32>>,
}

impl Lists {
    /// Removes the operation's events, putting its next twin in its place if it has one.
    fn lift(&mut self, index: usize) {
        let call_node = self.call_nodes[index];
        match self.later_twins[index] {
            Some(twin) => replace(&mut self.nodes, call_node, self.call_nodes[twin as usize]),
            None => unlink(&mut self.nodes, call_node),
        }
        if let Some(return_node) = self.return_nodes[index] {
            unlink(&mut self.nodes, return_node);
        }
    }

    /// Undoes [`Lists::lift`] of the same operation, which must be the latest lifted.
    fn restore(&mut self, index: usize) {
        if let Some(return_node) = self.return_nodes[index] {
            relink(&mut self.nodes, return_node);
        }
        relink(&mut self.nodes, self.call_nodes[index]);
    }

    /// Returns the position of the first return event left, `usize::MAX` if none is.
    fn first_return_position(&self) -> usize {
        let mut cursor = self.nodes[KNOWN_HEAD as usize].next;
        while cursor != NIL {
            let node = self.nodes[cursor as usize];
            if node.is_return {
                return node.position;
            }
            cursor = node.next;
        }
        usize::MAX
    }
}

/// Searches for a linearization of `operations` from an absent key, giving up at `deadline`.
pub(super) fn search(
    values: &mut Values,
    operations: &[SearchOp],
    deadline: Instant,
) -> SearchResult {
    if Instant::now() >= deadline {
        return SearchResult::TimedOut { steps: 0 };
    }
    let Ok(operation_count) = u32::try_from(operations.len()) else {
        // NOTE: more than 2^32 operations on one key are reported as undecided.
        return SearchResult::TimedOut { steps: 0 };
    };
    let mut lists = build_lists(operations);
    let required = operations
        .iter()
        .filter(|operation| operation.return_position.is_some())
        .count();
    let zobrist: Vec<u64> = (0..u64::from(operation_count))
        .map(|index| splitmix64(index.wrapping_add(0x5EED)))
        .collect();

    let mut memo = Memo::new(operations.len());
    let mut linearized = vec![0u64; operations.len().div_ceil(64)];
    let mut set_hash = 0u64;
    let mut state = ABSENT;
    let mut linearized_required = 0usize;
    let mut choices: Vec<Choice> = Vec::new();
    let mut phase = Phase::Unknown;
    let mut boundary = lists.first_return_position();
    let mut cursor = lists.nodes[UNKNOWN_HEAD as usize].next;
    let mut steps = 0u64;

    loop {
        if linearized_required == required {
            return SearchResult::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(STEPS_PER_CLOCK_READ) && Instant::now() >= deadline {
            return SearchResult::TimedOut { steps };
        }

        let candidate = match phase {
            Phase::Unknown if cursor == NIL => {
                phase = Phase::Known;
                cursor = lists.nodes[KNOWN_HEAD as usize].next;
                continue;
            }
            Phase::Unknown => {
                // Replacing a lifted operation by its twin leaves this list out of order, so
                // the scan checks every node against the boundary.
                let node = lists.nodes[cursor as usize];
                if node.position >= boundary {
                    cursor = node.next;
                    continue;
                }
                Some(cursor)
            }
            Phase::Known => {
                // The end of the list is unreachable while a required operation is left,
                // because its return node stops the scan first.
                if cursor == NIL || lists.nodes[cursor as usize].is_return {
                    None
                } else {
                    Some(cursor)
                }
            }
        };

        let Some(call_node) = candidate else {
            // Every candidate of this configuration failed: undo the most recent choice and
            // try the candidate after it.
            let Some(choice) = choices.pop() else {
                return SearchResult::NotLinearizable;
            };
            let index = lists.nodes[choice.call_node as usize].operation as usize;
            lists.restore(index);
            linearized[index / 64] &= !(1u64 << (index % 64));
            set_hash ^= zobrist[index];
            state = choice.previous_state;
            if operations[index].return_position.is_some() {
                linearized_required -= 1;
            }
            phase = choice.phase;
            boundary = choice.boundary;
            cursor = lists.nodes[choice.call_node as usize].next;
            continue;
        };

        let index = lists.nodes[call_node as usize].operation as usize;
        if let Some(next_state) = values.apply(state, operations[index].step) {
            let word = index / 64;
            let bit = 1u64 << (index % 64);
            linearized[word] |= bit;
            let next_hash = set_hash ^ zobrist[index];
            if memo.insert(next_hash, next_state, &linearized) {
                choices.push(Choice {
                    call_node,
                    phase,
                    boundary,
                    previous_state: state,
                });
                state = next_state;
                set_hash = next_hash;
                if operations[index].return_position.is_some() {
                    linearized_required += 1;
                }
                lists.lift(index);
                phase = Phase::Unknown;
                boundary = lists.first_return_position();
                cursor = lists.nodes[UNKNOWN_HEAD as usize].next;
                continue;
            }
            linearized[word] &= !bit;
        }
        cursor = lists.nodes[call_node as usize].next;
    }
}

/// Builds both event lists, with their head sentinels at [`KNOWN_HEAD`] and
/// [`UNKNOWN_HEAD`]. Only the earliest operation of unknown outcome of each step is linked.
fn build_lists(operations: &[SearchOp]) -> Lists {
    let mut events: Vec<(usize, bool, u32)> = Vec::with_capacity(operations.len() * 2);
    for (index, operation) in (0u32..).zip(operations) {
        events.push((operation.call_position, false, index));
        if let Some(position) = operation.return_position {
            events.push((position, true, index));
        }
    }
    events.sort_unstable();

    let sentinel = Node {
        operation: NIL,
        position: 0,
        is_return: false,
        previous: NIL,
        next: NIL,
    };
    let mut lists = Lists {
        nodes: vec![sentinel; 2],
        call_nodes: vec![0; operations.len()],
        return_nodes: vec![None; operations.len()],
        later_twins: vec![None; operations.len()],
    };
    let mut tails = [KNOWN_HEAD, UNKNOWN_HEAD];
    let mut latest_twin: HashMap<Step, u32> = HashMap::new();
    for &(position, is_return, operation) in &events {
        let Ok(node_index) = u32::try_from(lists.nodes.len()) else {
            break;
        };
        let unknown = operations[operation as usize].return_position.is_none();
        lists.nodes.push(Node {
            operation,
            position,
            is_return,
            previous: NIL,
            next: NIL,
        });
        if is_return {
            lists.return_nodes[operation as usize] = Some(node_index);
        } else {
            lists.call_nodes[operation as usize] = node_index;
        }
        if unknown {
            let earlier = latest_twin.insert(operations[operation as usize].step, operation);
            if let Some(earlier) = earlier {
                // Linked later, in place of its earlier twin.
                lists.later_twins[earlier as usize] = Some(operation);
                continue;
            }
        }
        let list = usize::from(unknown);
        lists.nodes[node_index as usize].previous = tails[list];
        lists.nodes[tails[list] as usize].next = node_index;
        tails[list] = node_index;
    }
    lists
}

fn unlink(nodes: &mut [Node], index: u32) {
    let Node { previous, next, .. } = nodes[index as usize];
    nodes[previous as usize].next = next;
    if next != NIL {
        nodes[next as usize].previous = previous;
    }
}

/// Puts `replacement` in the place of the linked node `index`, whose stored neighbours stay
/// as they are so that [`relink`] can undo the replacement.
fn replace(nodes: &mut [Node], index: u32, replacement: u32) {
    let Node { previous, next, .. } = nodes[index as usize];
    nodes[replacement as usize].previous = previous;
    nodes[replacement as usize].next = next;
    nodes[previous as usize].next = replacement;
    if next != NIL {
        nodes[next as usize].previous = replacement;
    }
}

fn relink(nodes: &mut [Node], index: u32) {
    let Node { previous, next, .. } = nodes[index as usize];
    nodes[previous as usize].next = index;
    if next != NIL {
        nodes[next as usize].previous = index;
    }
}

/// The set of visited configurations. Entries live in one arena of `u64` words, the state
/// followed by the bitset, and collide into chains through `next_entry`. Only an insert
/// allocates, and a lookup compares the full bitset, so hash collisions never prune.
struct Memo {
    words: usize,
    heads: HashMap<u64, u32, BuildHasherDefault<PrehashedHasher>>,
    next_entry: Vec<u32>,
    arena: Vec<u64>,
}

impl Memo {
    fn new(operation_count: usize) -> Self {
        Memo {
            words: operation_count.div_ceil(64),
            heads: HashMap::default(),
            next_entry: Vec::new(),
            arena: Vec::new(),
        }
    }

    /// Adds the configuration and returns whether it was new.
    fn insert(&mut self, set_hash: u64, state: StateId, bits: &[u64]) -> bool {
        let hash = set_hash ^ splitmix64(u64::from(state));
        let stride = self.words + 1;
        let head = self.heads.get(&hash).copied().unwrap_or(NIL);
        let mut entry = head;
        while entry != NIL {
            let start = entry as usize * stride;
            if self.arena[start] == u64::from(state)
                && self.arena[start + 1..start + stride] == *bits
            {
                return false;
            }
            entry = self.next_entry[entry as usize];
        }
        let Ok(new_entry) = u32::try_from(self.next_entry.len()) else {
            // Past 2^32 configurations the search goes on without memoizing, which costs time
            // but never a linearization.
            return true;
        };
        self.arena.push(u64::from(state));
        self.arena.extend_from_slice(bits);
        self.next_entry.push(head);
        self.heads.insert(hash, new_entry);
        true
    }
}

/// A hasher for keys that are already well-mixed `u64` hashes.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = splitmix64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// Mixes the bits of `value` with the SplitMix64 finalizer, which derives the per-operation
/// hash keys and spreads the model state over the hash.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::history::MissingKeyRead;

    fn far_deadline() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    fn op(call_position: usize, return_position: Option<usize>, step: Step) -> SearchOp {
        SearchOp {
            call_position,
            return_position,
            step,
        }
    }

    #[test]
    fn memo_rejects_repeated_configuration() {
        let mut memo = Memo::new(70);
        let bits = [0b101u64, 1];
        assert!(memo.insert(42, 7, &bits));
        assert!(!memo.insert(42, 7, &bits));
        assert!(memo.insert(42, 8, &bits));
        assert!(memo.insert(42, 7, &[0b100, 1]));
    }

    #[test]
    fn search_orders_overlapping_operations() {
        // A read of 1 overlaps the write of 1, which the search must place first.
        let mut values = Values::new(MissingKeyRead::Nil);
        let value = values.intern("1");
        let one = Step::Write(value);
        let operations = [op(0, Some(2), Step::Read(value)), op(1, Some(3), one)];
        assert_eq!(
            search(&mut values, &operations, far_deadline()),
            SearchResult::Linearizable
        );

        // Once the read starts after the write of 1 returned, reading nil is stale.
        let operations = [op(0, Some(1), one), op(2, Some(3), Step::Read(ABSENT))];
        assert_eq!(
            search(&mut values, &operations, far_deadline()),
            SearchResult::NotLinearizable
        );
    }

    #[test]
    fn search_past_deadline_times_out() {
        let mut values = Values::new(MissingKeyRead::Nil);
        let operations = [op(0, Some(1), Step::Delete)];
        let result = search(&mut values, &operations, Instant::now());
        assert_eq!(result, SearchResult::TimedOut { steps: 0 });
    }
}
