//! The core's bookkeeping across overlapping batches and terms: which entries a durable
//! batch vouches for once a later batch replaced some of them, and which entries count
//! against the leader's uncommitted-bytes limit.

use bytes::Bytes;
use shardraft_raft::{
    Config, Entry, EntryKind, HardState, LogIndex, Membership, Message, MessageBody, NodeId,
    ProposeError, RaftNode, RestoredState, Term,
};
use shardraft_tests::harness::{Cluster, DurableState};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Normal,
        data: Bytes::from(format!("{index}@{term}")),
    }
}

/// Node 2 of a five-voter group, with an empty log.
fn follower_of_five() -> RaftNode {
    let membership = Membership::with_voters((1..=5).map(NodeId));
    RaftNode::new(Config::new(NodeId(2), membership), RestoredState::default()).unwrap()
}

fn append(from: u64, term: u64, prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(2),
        term: Term(term),
        body: MessageBody::AppendEntries {
            prev_log_index: LogIndex(prev.0),
            prev_log_term: Term(prev.1),
            entries,
            leader_commit: LogIndex(commit),
        },
    }
}

// Correct behaviour: once a later batch truncates the log at index `i`, an earlier batch
// that becomes durable proves only the entries below `i` durable. Storage applies batches
// in order, so when batch 1 is reported durable it may already hold batch 2's truncation
// too. An entry that batch 1 wrote and batch 2 replaced is not on disk, even if batch 3
// (not yet durable) writes the same entry again. The core must neither report it as
// persisted nor hand it out for applying.
#[test]
fn persisted_ignores_entry_overwritten_by_later_batch() {
    let mut node = follower_of_five();
    let mut storage = DurableState::default();

    // Term 1: leader 1 sends entries 1 and 2.
    node.step(append(1, 1, (0, 0), vec![entry(1, 1), entry(2, 1)], 0))
        .unwrap();
    let batch_1 = node.ready().unwrap();

    // Term 2: leader 3 replaces entry 2 with one of its own term.
    node.step(append(3, 2, (1, 1), vec![entry(2, 2)], 0))
        .unwrap();
    let batch_2 = node.ready().unwrap();
    assert_eq!(batch_2.entries, vec![entry(2, 2)], "batch 2 truncates at 2");

    // Term 3: leader 1, whose log still contains entry 2 of term 1, restores it and commits
    // through index 3.
    node.step(append(1, 3, (1, 1), vec![entry(2, 1), entry(3, 3)], 3))
        .unwrap();
    let batch_3 = node.ready().unwrap();
    assert_eq!(batch_3.entries, vec![entry(2, 1), entry(3, 3)]);

    // Storage has written batches 1 and 2, not 3, and reports batch 1 durable.
    storage.write(batch_1.hard_state, &batch_1.entries);
    storage.write(batch_2.hard_state, &batch_2.entries);
    assert_eq!(storage.terms(), vec![1, 2], "entry 2 on disk is of term 2");
    node.on_persisted(batch_1.number);

    assert_eq!(
        node.persisted_index(),
        LogIndex(1),
        "entry 2 of term 1 is not on disk: batch 2 replaced it"
    );
    let applied: Vec<Entry> = node
        .ready()
        .map(|ready| ready.committed_entries)
        .unwrap_or_default();
    for applied_entry in &applied {
        let stored = storage.entries.get(applied_entry.index.0 as usize - 1);
        assert_eq!(
            stored,
            Some(applied_entry),
            "applied an entry that storage does not hold"
        );
    }
}

/// Returns whether `message` is an `AppendEntries` that carries the entry at `index`.
fn carries_index(message: &Message, index: u64) -> bool {
    match &message.body {
        MessageBody::AppendEntries { entries, .. } => {
            entries.iter().any(|entry| entry.index == LogIndex(index))
        }
        _ => false,
    }
}

// Correct behaviour: `max_uncommitted_bytes` bounds the bytes this leader appended and has
// not committed. Committing an entry of an earlier term must not use up the allowance of
// the leader's own uncommitted proposals, so a proposal that would take the leader's own
// uncommitted bytes past the limit is rejected.
#[test]
fn uncommitted_limit_counts_only_own_entries() {
    let old_entry = Entry {
        term: Term(1),
        index: LogIndex(1),
        kind: EntryKind::Normal,
        data: Bytes::from(vec![b'o'; 900]),
    };
    let restored = RestoredState {
        hard_state: HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(0),
        },
        snapshot: None,
        entries: vec![old_entry],
        applied: LogIndex(0),
        catching_up: false,
        founding: false,
    };
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.max_uncommitted_bytes = 1000)
        .restore(1, restored.clone())
        .restore(2, restored.clone())
        .restore(3, restored)
        .build();
    cluster.win_election(1, 200);
    // The no-op at index 2 goes out alone, and the proposal at index 3 never reaches anyone.
    cluster.process_ready(1);
    cluster.add_drop_rule(|message| carries_index(message, 3));
    let first = cluster
        .node_mut(1)
        .propose(Bytes::from(vec![b'p'; 500]))
        .expect("532 of 1000 bytes uncommitted");
    assert_eq!(first.index, LogIndex(3));
    cluster.stabilize();
    assert_eq!(
        cluster.node(1).commit_index(),
        LogIndex(2),
        "the old entry and the no-op commit, the proposal does not"
    );

    // The proposal at index 3 (532 bytes) is still uncommitted, so another 532 bytes
    // exceed the limit of 1000.
    let second = cluster.node_mut(1).propose(Bytes::from(vec![b'q'; 500]));
    assert!(
        matches!(second, Err(ProposeError::UncommittedLimit { .. })),
        "1064 bytes would be uncommitted, over the limit of 1000; got {second:?}"
    );
}
