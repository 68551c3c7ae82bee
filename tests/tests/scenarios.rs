//! Scenario tests of the Raft core, driven step by step through the scripted harness.

use bytes::Bytes;
use shardraft_raft::{
    AppendOutcome, Entry, EntryKind, LogIndex, Message, MessageBody, NodeId, ProposeError, Role,
    Term,
};
use shardraft_tests::harness::{Cluster, restored_log as restored};
use shardraft_tests::history::{Call, HistoryRecorder, OpHandle, Outcome, Output};
use shardraft_tests::lincheck::{self, CheckOutcome};
use std::time::Duration;

/// Generous bound on the ticks any election below needs (the default election timeout is
/// 10 to 20 ticks).
const ELECTION_TICKS: u32 = 200;

/// Returns the entries of an `AppendEntries`, or `None` for any other message.
fn appended_entries(message: &Message) -> Option<&[Entry]> {
    match &message.body {
        MessageBody::AppendEntries { entries, .. } => Some(entries),
        _ => None,
    }
}

fn is_append(message: &Message, from: u64, to: u64) -> bool {
    message.from == NodeId(from)
        && message.to == NodeId(to)
        && matches!(message.body, MessageBody::AppendEntries { .. })
}

fn carries_index(message: &Message, index: u64) -> bool {
    appended_entries(message)
        .is_some_and(|entries| entries.iter().any(|entry| entry.index == LogIndex(index)))
}

fn term_at(cluster: &Cluster, id: u64, index: u64) -> Option<u64> {
    cluster
        .node(id)
        .entry(LogIndex(index))
        .map(|entry| entry.term.0)
}

fn count_rejections_from(cluster: &Cluster, follower: u64) -> usize {
    cluster
        .deliveries()
        .iter()
        .filter(|delivery| {
            delivery.message.from == NodeId(follower)
                && matches!(
                    delivery.message.body,
                    MessageBody::AppendEntriesResponse {
                        outcome: AppendOutcome::Rejected { .. },
                        ..
                    }
                )
        })
        .count()
}

// ----- Figure 7 of the Raft paper -----

#[test]
fn figure7_followers_converge_to_leader_log() {
    // A new leader brings every follower's log to exactly its own. Its followers miss
    // entries, have extra uncommitted entries of the leader's earlier terms, or have
    // conflicting entries of other terms. Missing entries are filled in, and extra and
    // conflicting ones are truncated.
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let follower_logs: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    let mut builder = Cluster::builder(7).restore(1, restored(&leader_log, 7, 3));
    for (offset, terms) in follower_logs.iter().enumerate() {
        builder = builder.restore(offset as u64 + 2, restored(terms, 7, 3));
    }
    let mut cluster = builder.build();

    cluster.elect(1, ELECTION_TICKS);
    cluster.stabilize();

    let leader_term = cluster.node(1).term().0;
    assert_eq!(leader_term, 8, "node 1 should lead term 8");
    let mut expected: Vec<u64> = leader_log.to_vec();
    expected.push(leader_term);
    for id in 1..=7 {
        let terms = cluster.durable(id).terms();
        assert_eq!(terms, expected, "stored log of node {id}");
        let commit = cluster.node(id).commit_index();
        assert_eq!(commit, LogIndex(11), "commit index of node {id}");
        let applied: Vec<u64> = cluster.applied(id).iter().map(|e| e.term.0).collect();
        assert_eq!(applied, expected, "terms of the entries node {id} applied");
    }
}

// ----- Figure 8 of the Raft paper -----

/// Five nodes that all hold entry 1 of term 1, committed, with one entry per
/// `AppendEntries` so that a leader can replicate an old entry without its new one.
fn figure8_cluster() -> Cluster {
    let mut builder = Cluster::builder(5).configure(|config| {
        config.check_quorum = false;
        config.max_entries_per_message = 1;
    });
    for id in 1..=5 {
        builder = builder.restore(id, restored(&[1], 1, 1));
    }
    builder.build()
}

/// Runs Figure 8 (a) to (c) and returns the `AppendEntries` that carry node 1's term-4
/// entry at index 3 to nodes 3 and 4, held back from delivery.
///
/// - (a) Node 1 leads term 2 and replicates its entry 2 only to node 2.
/// - (b) Node 1 crashes. Node 5 leads term 3 with the votes of nodes 3 and 4 and appends a
///   different entry 2 that reaches no other node.
/// - (c) Node 5 crashes. Node 1 restarts, leads term 4 and replicates its term-2 entry 2 to
///   nodes 3 and 4.
fn figure8_through_c(cluster: &mut Cluster) -> Vec<Message> {
    // (a)
    let rule = cluster.add_drop_rule(|message| {
        message.from == NodeId(1)
            && message.to != NodeId(2)
            && matches!(message.body, MessageBody::AppendEntries { .. })
    });
    cluster.elect(1, ELECTION_TICKS);
    cluster.stabilize();
    cluster.remove_drop_rule(rule);
    assert_eq!(cluster.node(1).term(), Term(2), "node 1 leads term 2");
    assert_eq!(
        term_at(cluster, 2, 2),
        Some(2),
        "node 2 has entry 2 of term 2"
    );
    assert_eq!(
        cluster.node(1).commit_index(),
        LogIndex(1),
        "nothing new commits"
    );

    // (b)
    cluster.crash(1);
    let rule = cluster.add_drop_rule(|message| {
        message.from == NodeId(5) && matches!(message.body, MessageBody::AppendEntries { .. })
    });
    cluster.elect(5, ELECTION_TICKS);
    cluster.stabilize();
    cluster.remove_drop_rule(rule);
    assert_eq!(cluster.node(5).term(), Term(3), "node 5 leads term 3");
    assert_eq!(
        term_at(cluster, 5, 2),
        Some(3),
        "node 5 has entry 2 of term 3"
    );
    for id in [3, 4] {
        assert_eq!(term_at(cluster, id, 2), None, "node {id} has no entry 2");
    }

    // (c)
    cluster.crash(5);
    cluster.restart(1);
    cluster.win_election(1, ELECTION_TICKS);
    assert_eq!(cluster.node(1).term(), Term(4), "node 1 leads term 4");
    // Node 1's first probes carry entry 3. Node 2 gets none of them, so that the leader
    // never learns that node 2 has entry 2. Nodes 3 and 4 reject theirs, because they
    // lack entry 2, and then receive entry 2 on its own.
    cluster.process_ready(1);
    cluster.add_drop_rule(|message| {
        message.from == NodeId(1)
            && message.to == NodeId(2)
            && matches!(message.body, MessageBody::AppendEntries { .. })
    });
    cluster.deliver_queued();
    let mut held_appends = Vec::new();
    loop {
        cluster.process_all_readies();
        held_appends.extend(cluster.drop_queued(|message| carries_index(message, 3)));
        if cluster.deliver_queued() == 0 && cluster.queued().next().is_none() {
            break;
        }
    }
    held_appends
}

#[test]
fn figure8_old_term_entry_not_committed_by_count() {
    // An entry of an earlier term stored on a majority is not committed by counting its
    // replicas: the term-4 leader commits its term-2 entry only once its own term-4 entry
    // is stored on a majority, and a candidate without that entry can then no longer win.
    let mut cluster = figure8_cluster();
    let held_appends = figure8_through_c(&mut cluster);

    for id in [1, 3, 4] {
        assert_eq!(term_at(&cluster, id, 2), Some(2), "node {id} has entry 2");
    }
    for id in [3, 4] {
        let match_index = cluster.node(1).progress(NodeId(id)).map(|p| p.match_index);
        assert_eq!(
            match_index,
            Some(LogIndex(2)),
            "leader knows node {id} matches entry 2"
        );
    }
    let commit = cluster.node(1).commit_index();
    assert_eq!(
        commit,
        LogIndex(1),
        "entry 2 of term 2 is on 3 of 5 nodes but must not commit"
    );

    // Entry 3 of term 4 on two nodes (the leader and node 3) is no majority yet.
    let to_node_3: Vec<Message> = held_appends
        .iter()
        .filter(|m| m.to == NodeId(3))
        .cloned()
        .collect();
    let to_node_4: Vec<Message> = held_appends
        .iter()
        .filter(|m| m.to == NodeId(4))
        .cloned()
        .collect();
    assert_eq!(to_node_3.len(), 1, "held messages to node 3: {to_node_3:?}");
    assert_eq!(to_node_4.len(), 1, "held messages to node 4: {to_node_4:?}");
    for message in to_node_3 {
        cluster.deliver(message);
    }
    cluster.stabilize();
    let commit = cluster.node(1).commit_index();
    assert_eq!(
        commit,
        LogIndex(1),
        "entry 3 on 2 of 5 nodes must not commit"
    );

    // On a third node, entry 3 commits, and entry 2 with it.
    for message in to_node_4 {
        cluster.deliver(message);
    }
    cluster.stabilize();
    let commit = cluster.node(1).commit_index();
    assert_eq!(commit, LogIndex(3), "entry 3 on 3 of 5 nodes commits");
    let applied: Vec<(u64, u64)> = cluster
        .applied(1)
        .iter()
        .map(|entry| (entry.index.0, entry.term.0))
        .collect();
    assert_eq!(
        applied,
        [(1, 1), (2, 2), (3, 4)],
        "entries the leader applied"
    );

    // Node 5, whose entry 2 is of term 3, cannot win without entry 3 of term 4.
    cluster.crash(1);
    cluster.restart(5);
    cluster.clear_drop_rules();
    for _ in 0..ELECTION_TICKS {
        cluster.tick_all();
        cluster.stabilize();
        let leader = cluster.leader();
        assert_ne!(leader, Some(5), "node 5 must not win without entry 3");
    }
    let leader = cluster.leader().expect("nodes 2 to 5 elect a leader");
    assert_eq!(
        term_at(&cluster, leader, 2),
        Some(2),
        "leader {leader} keeps the committed entry 2 of term 2"
    );
}

#[test]
fn figure8_overwritten_entry_never_applied() {
    // The term-4 leader crashes before its own entry reaches a majority. Node 5, whose
    // entry 2 is of term 3, then wins term 5 and overwrites entry 2 of term 2 on every
    // node, although that entry had been stored on a majority. No node ever applies the
    // overwritten entry.
    let mut cluster = figure8_cluster();
    let _held_appends = figure8_through_c(&mut cluster);

    // (d)
    cluster.crash(1);
    cluster.restart(5);
    cluster.clear_drop_rules();
    cluster.elect(5, ELECTION_TICKS);
    cluster.stabilize();
    assert_eq!(cluster.node(5).term(), Term(5), "node 5 leads term 5");

    cluster.restart(1);
    cluster.run_ticks(3 * ELECTION_TICKS);
    let leader = cluster.leader();
    assert_eq!(leader, Some(5), "node 5 still leads");
    for id in 1..=5 {
        let terms = cluster.durable(id).terms();
        assert_eq!(terms, [1, 3, 5], "stored log of node {id}");
        let ever_applied_old = cluster
            .applied_ever(id)
            .iter()
            .any(|entry| entry.index == LogIndex(2) && entry.term == Term(2));
        assert!(!ever_applied_old, "node {id} applied entry 2 of term 2");
        let commit = cluster.node(id).commit_index();
        assert_eq!(commit, LogIndex(3), "commit index of node {id}");
    }
}

#[test]
fn earlier_term_entry_commits_with_current_term_entry() {
    // An entry from an earlier term becomes committed only when an entry of the leader's
    // current term reaches a majority. The term-3 leader does not commit its term-2 entry
    // while that entry is on 2 of 3 nodes, and commits it together with the term-3 no-op.
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.max_entries_per_message = 1)
        .restore(1, restored(&[1, 2], 2, 1))
        .restore(2, restored(&[1], 2, 1))
        .restore(3, restored(&[1], 2, 1))
        .build();
    cluster.add_drop_rule(|message| message.to == NodeId(3));
    cluster.win_election(1, ELECTION_TICKS);
    cluster.process_ready(1);
    // Node 2 rejects the first probe (it lacks entry 2) and then receives entry 2 alone.
    cluster.deliver_queued();
    let mut held_appends = Vec::new();
    loop {
        cluster.process_all_readies();
        held_appends.extend(cluster.drop_queued(|message| carries_index(message, 3)));
        if cluster.deliver_queued() == 0 && cluster.queued().next().is_none() {
            break;
        }
    }
    assert_eq!(cluster.node(1).term(), Term(3), "node 1 leads term 3");
    let match_index = cluster.node(1).progress(NodeId(2)).map(|p| p.match_index);
    assert_eq!(match_index, Some(LogIndex(2)), "node 2 matches entry 2");
    let commit = cluster.node(1).commit_index();
    assert_eq!(
        commit,
        LogIndex(1),
        "term-2 entry on 2 of 3 must not commit"
    );

    assert_eq!(held_appends.len(), 1, "held messages: {held_appends:?}");
    for message in held_appends {
        cluster.deliver(message);
    }
    cluster.stabilize();
    let commit = cluster.node(1).commit_index();
    assert_eq!(
        commit,
        LogIndex(3),
        "the term-3 no-op commits entry 2 with it"
    );
}

// ----- The leader's own write counts only once durable -----

#[test]
fn single_node_commits_only_after_persist() {
    // A single-node leader commits and applies a proposal only after its own log write is
    // reported durable.
    let mut cluster = Cluster::new(1);
    cluster.run_until_leader(ELECTION_TICKS);
    cluster.pause_persistence(1);
    let proposal = cluster
        .node_mut(1)
        .propose(Bytes::from_static(b"x"))
        .expect("leader accepts the proposal");
    cluster.process_ready(1);
    let commit = cluster.node(1).commit_index();
    assert!(
        commit < proposal.index,
        "commit {commit} reached {} before the write was durable",
        proposal.index
    );
    assert!(!cluster.has_applied(1, proposal), "applied before durable");
    assert!(!cluster.node(1).has_ready(), "nothing else is ready");

    cluster.resume_persistence(1);
    cluster.process_ready(1);
    let commit = cluster.node(1).commit_index();
    assert_eq!(commit, proposal.index, "commits once durable");
    assert!(cluster.has_applied(1, proposal), "applies once durable");
}

#[test]
fn leader_without_followers_commits_nothing() {
    // A leader of three whose followers are both unreachable commits nothing, although its
    // own write is durable.
    let mut cluster = Cluster::new(3);
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    let commit_before = cluster.node(leader).commit_index();
    cluster.isolate(leader);
    let proposal = cluster
        .node_mut(leader)
        .propose(Bytes::from_static(b"x"))
        .expect("leader accepts the proposal");
    cluster.stabilize();
    let persisted = cluster.node(leader).persisted_index();
    assert_eq!(persisted, proposal.index, "leader's own write is durable");
    let commit = cluster.node(leader).commit_index();
    assert_eq!(commit, commit_before, "nothing commits on 1 of 3 nodes");
}

#[test]
fn leader_write_counts_only_when_persisted() {
    // An entry acked by one follower while the leader's write is pending is durable on 1
    // of 3 nodes and does not commit. It commits once the leader reports its write durable
    // (2 of 3). An entry acked by both followers commits while the leader's write is still
    // pending (2 of 3), but the leader applies it only once its own write is durable.
    let mut cluster = Cluster::new(3);
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();

    cluster.pause_persistence(leader);
    cluster.cut(leader, followers[1]);
    let first = cluster
        .node_mut(leader)
        .propose(Bytes::from_static(b"one follower"))
        .expect("leader accepts the proposal");
    cluster.stabilize();
    let acked = cluster
        .node(leader)
        .progress(NodeId(followers[0]))
        .map(|p| p.match_index);
    assert_eq!(acked, Some(first.index), "follower {} acked", followers[0]);
    let commit = cluster.node(leader).commit_index();
    assert!(
        commit < first.index,
        "commit {commit} reached {} with 1 of 3 durable copies",
        first.index
    );
    cluster.resume_persistence(leader);
    cluster.stabilize();
    let commit = cluster.node(leader).commit_index();
    assert_eq!(commit, first.index, "commits with 2 of 3 durable copies");

    cluster.heal();
    cluster.run_ticks(4);
    cluster.pause_persistence(leader);
    let second = cluster
        .node_mut(leader)
        .propose(Bytes::from_static(b"two followers"))
        .expect("leader accepts the proposal");
    cluster.stabilize();
    let commit = cluster.node(leader).commit_index();
    assert_eq!(
        commit, second.index,
        "commits with both followers durable and the leader pending"
    );
    assert!(
        !cluster.has_applied(leader, second),
        "the leader applies only what it has durably"
    );
    cluster.resume_persistence(leader);
    cluster.stabilize();
    assert!(cluster.has_applied(leader, second), "applies once durable");
}

// ----- Log repair -----

#[test]
fn conflicting_suffix_truncated_one_rejection_per_term() {
    // A follower whose log diverges from the leader's in a long suffix of two terms is
    // repaired with one rejection per conflicting term, not one per entry, and its
    // conflicting entries are replaced by the leader's.
    let mut leader_log = vec![1];
    leader_log.extend([3; 30]);
    leader_log.extend([5; 30]);
    let mut follower_log = vec![1];
    follower_log.extend([2; 40]);
    follower_log.extend([4; 40]);
    let mut cluster = Cluster::builder(3)
        .restore(1, restored(&leader_log, 5, 1))
        .restore(2, restored(&follower_log, 5, 1))
        .restore(3, restored(&leader_log, 5, 1))
        .build();
    cluster.elect(1, ELECTION_TICKS);
    cluster.stabilize();

    let rejections = count_rejections_from(&cluster, 2);
    assert_eq!(
        rejections, 2,
        "rejections from the follower with 2 conflicting terms"
    );
    let mut expected = leader_log.clone();
    expected.push(6);
    let terms = cluster.durable(2).terms();
    assert_eq!(terms, expected, "the follower's log is the leader's");
    let commit = cluster.node(2).commit_index();
    assert_eq!(commit, LogIndex(62), "the follower commits the no-op");
}

// ----- Flow control -----

/// Builds a stable three-node cluster led by node 1, with `configure` applied to every
/// node, and clears its message records.
fn cluster_led_by_node_1(configure: impl Fn(&mut shardraft_raft::Config) + 'static) -> Cluster {
    let mut cluster = Cluster::builder(3).configure(configure).build();
    cluster.elect(1, ELECTION_TICKS);
    cluster.stabilize();
    cluster.clear_records();
    cluster
}

fn appends_sent_to(cluster: &Cluster, to: u64) -> Vec<&Message> {
    cluster
        .sent()
        .iter()
        .filter(|message| is_append(message, 1, to))
        .collect()
}

#[test]
fn inflight_message_window_bounds_unacked_appends() {
    // With max_inflight_messages = 2, a replicating follower that stops acknowledging
    // receives 2 more AppendEntries and then no more, while the other follower keeps
    // receiving and the leader keeps committing.
    let mut cluster = cluster_led_by_node_1(|config| config.max_inflight_messages = 2);
    cluster.add_drop_rule(|message| {
        message.from == NodeId(3)
            && matches!(message.body, MessageBody::AppendEntriesResponse { .. })
    });
    let mut last = LogIndex(0);
    for value in 0..10 {
        last = cluster
            .node_mut(1)
            .propose(Bytes::from(format!("v{value}")))
            .expect("leader accepts the proposal")
            .index;
        cluster.stabilize();
    }
    let to_silent = appends_sent_to(&cluster, 3).len();
    assert_eq!(to_silent, 2, "AppendEntries to the silent follower");
    let to_active = appends_sent_to(&cluster, 2).len();
    assert_eq!(to_active, 10, "AppendEntries to the acking follower");
    let inflight = cluster
        .node(1)
        .progress(NodeId(3))
        .map(|p| p.inflight_messages());
    assert_eq!(
        inflight,
        Some(2),
        "messages in flight to the silent follower"
    );
    let commit = cluster.node(1).commit_index();
    assert_eq!(commit, last, "the leader commits with the acking follower");
}

#[test]
fn inflight_byte_window_bounds_unacked_bytes() {
    // With max_inflight_bytes equal to two 100-byte entries (132 bytes each with the
    // per-entry overhead), a follower that stops acknowledging receives 2 AppendEntries of
    // one entry each and then no more.
    let entry_bytes = 100 + shardraft_raft::ENTRY_OVERHEAD_BYTES;
    let mut cluster =
        cluster_led_by_node_1(move |config| config.max_inflight_bytes = 2 * entry_bytes);
    cluster.add_drop_rule(|message| {
        message.from == NodeId(3)
            && matches!(message.body, MessageBody::AppendEntriesResponse { .. })
    });
    for _ in 0..10 {
        cluster
            .node_mut(1)
            .propose(Bytes::from(vec![7u8; 100]))
            .expect("leader accepts the proposal");
        cluster.stabilize();
    }
    let to_silent = appends_sent_to(&cluster, 3).len();
    assert_eq!(to_silent, 2, "AppendEntries to the silent follower");
    let inflight_bytes = cluster
        .node(1)
        .progress(NodeId(3))
        .map(|p| p.inflight_bytes());
    assert_eq!(
        inflight_bytes,
        Some(2 * entry_bytes),
        "bytes in flight to the silent follower"
    );
}

#[test]
fn proposals_between_readies_share_messages() {
    // 100 proposals made before one ready() leave in ceil(100 / max_entries_per_message)
    // AppendEntries per follower, each full except the last.
    let max_entries = 16;
    let mut cluster =
        cluster_led_by_node_1(move |config| config.max_entries_per_message = max_entries);
    for value in 0..100 {
        cluster
            .node_mut(1)
            .propose(Bytes::from(format!("v{value}")))
            .expect("leader accepts the proposal");
    }
    let ready = cluster.take_ready(1).expect("the leader has a ready");
    for follower in [2, 3] {
        let sizes: Vec<usize> = ready
            .messages
            .iter()
            .filter(|message| is_append(message, 1, follower))
            .filter_map(|message| appended_entries(message).map(<[Entry]>::len))
            .collect();
        assert_eq!(
            sizes,
            [16, 16, 16, 16, 16, 16, 4],
            "entries per AppendEntries to node {follower}"
        );
    }
    cluster.handle_ready(1, ready);
    cluster.stabilize();
    let commit = cluster.node(1).commit_index();
    assert_eq!(commit, LogIndex(101), "every proposal commits");
}

#[test]
fn replication_limits_change_at_runtime() {
    // A leader whose limits change while it runs batches the next proposals by the new
    // limits; a limit of 0 is rejected and leaves the old ones in force.
    let mut cluster = cluster_led_by_node_1(|config| config.max_entries_per_message = 16);
    let mut limits = cluster.node(1).replication_limits();
    limits.max_entries_per_message = 0;
    assert!(cluster.node_mut(1).set_replication_limits(limits).is_err());
    assert_eq!(
        cluster.node(1).replication_limits().max_entries_per_message,
        16
    );

    limits.max_entries_per_message = 5;
    cluster
        .node_mut(1)
        .set_replication_limits(limits)
        .expect("positive limits are accepted");
    for value in 0..12 {
        cluster
            .node_mut(1)
            .propose(Bytes::from(format!("v{value}")))
            .expect("leader accepts the proposal");
    }
    let ready = cluster.take_ready(1).expect("the leader has a ready");
    let sizes: Vec<usize> = ready
        .messages
        .iter()
        .filter(|message| is_append(message, 1, 2))
        .filter_map(|message| appended_entries(message).map(<[Entry]>::len))
        .collect();
    assert_eq!(sizes, [5, 5, 2], "entries per AppendEntries to node 2");
    cluster.handle_ready(1, ready);
    cluster.stabilize();
    assert_eq!(cluster.node(1).commit_index(), LogIndex(13));
}

#[test]
fn shortened_election_timeout_keeps_the_minimum() {
    // A follower whose failure detector suspects the leader campaigns after the minimum
    // election timeout has passed in silence, never before it, and within the first half
    // of the rest of its random timeout (below 40 ticks), so by tick 25.
    let mut cluster = cluster_led_by_node_1(|config| {
        config.election_timeout_ticks_min = 10;
        config.election_timeout_ticks_max = 40;
    });
    let follower = cluster.node_mut(2);
    assert_eq!(follower.role(), Role::Follower);
    let mut elapsed = follower.election_elapsed_ticks();
    follower.shorten_election_timeout(1);

    while follower.role() == Role::Follower && elapsed < 40 {
        follower.tick();
        elapsed += 1;
    }
    assert_ne!(
        follower.role(),
        Role::Follower,
        "no campaign within 40 ticks"
    );
    assert!(
        elapsed >= 10,
        "campaigned after {elapsed} ticks, before the minimum"
    );
    assert!(elapsed <= 25, "campaigned after {elapsed} ticks");
}

#[test]
fn leader_ignores_a_shortened_election_timeout() {
    let mut cluster = cluster_led_by_node_1(|config| {
        config.election_timeout_ticks_min = 10;
        config.election_timeout_ticks_max = 40;
    });
    cluster.node_mut(1).shorten_election_timeout(1);
    for _ in 0..9 {
        cluster.node_mut(1).tick();
    }
    assert_eq!(cluster.node(1).role(), Role::Leader);
}

/// Ticks `ids` in turn, delivering every message after each tick, until one of them leads
/// or `max_ticks` rounds passed; returns the rounds it took.
fn tick_until_one_leads(cluster: &mut Cluster, ids: &[u64], max_ticks: u32) -> Option<u32> {
    for round in 1..=max_ticks {
        for id in ids {
            cluster.tick(*id);
            cluster.stabilize();
        }
        if ids
            .iter()
            .any(|id| cluster.node(*id).role() == Role::Leader)
        {
            return Some(round);
        }
    }
    None
}

#[test]
fn leader_down_report_elects_quickly() {
    // The leader crashes and both followers learn it at once, as they do when its
    // connections close and reconnecting is refused. One of them must lead within a
    // heartbeat interval plus an election round: 100 ticks of election timeout never pass.
    let mut cluster = cluster_led_by_node_1(|config| {
        config.election_timeout_ticks_min = 100;
        config.election_timeout_ticks_max = 200;
        config.heartbeat_interval_ticks = 3;
    });
    cluster.propose_and_commit("before the crash");
    cluster.crash(1);
    assert!(cluster.node_mut(2).report_leader_down(NodeId(1)));
    assert!(cluster.node_mut(3).report_leader_down(NodeId(1)));
    assert_eq!(cluster.node(2).leader(), None);
    assert_eq!(cluster.node(2).stats().leader_down_reports, 1);

    let rounds = tick_until_one_leads(&mut cluster, &[2, 3], 20)
        .expect("no leader within 20 ticks of the report");
    assert!(rounds <= 6, "a leader after {rounds} ticks");
    cluster.propose_and_commit("after the crash");
    let new_leader = cluster.leader().expect("a leader");
    assert_ne!(new_leader, 1);
    assert_eq!(
        cluster.node(new_leader).term(),
        Term(cluster.node(2).term().0.max(cluster.node(3).term().0))
    );
}

/// Builds three nodes led by node 1, with election timeouts of `election_timeout_ticks_min`
/// to twice that, heartbeats every 3 ticks and random seeds derived from `seed`. Then it
/// crashes node 1 and reports it down to both followers at once.
fn followers_with_leader_down(
    seed: u64,
    election_timeout_ticks_min: u32,
    pre_vote: bool,
) -> Cluster {
    let mut cluster = Cluster::builder(3)
        .configure(move |config| {
            config.election_timeout_ticks_min = election_timeout_ticks_min;
            config.election_timeout_ticks_max = 2 * election_timeout_ticks_min;
            config.heartbeat_interval_ticks = 3;
            config.pre_vote = pre_vote;
        })
        .configure_node(2, move |config| config.random_seed = seed)
        .configure_node(3, move |config| config.random_seed = seed + 1_000)
        .build();
    cluster.elect(1, 400);
    cluster.stabilize();
    cluster.crash(1);
    cluster.node_mut(2).report_leader_down(NodeId(1));
    cluster.node_mut(3).report_leader_down(NodeId(1));
    cluster
}

#[test]
fn leader_down_split_vote_retried() {
    // Over many seeds, two followers informed at once that the leader is down sometimes pick
    // the same tick and split the vote. The retries draw from short ranges (3, 6 and then
    // 12 ticks wide, plus 3), so a leader comes within 30 ticks, never after the 100-tick
    // timeout.
    for seed in 0..40u64 {
        let mut cluster = followers_with_leader_down(seed, 100, true);
        // Both tick before any message moves, so equal draws campaign at once.
        let mut rounds = None;
        for round in 1..=40 {
            cluster.tick(2);
            cluster.tick(3);
            cluster.stabilize();
            if [2, 3]
                .iter()
                .any(|id| cluster.node(*id).role() == Role::Leader)
            {
                rounds = Some(round);
                break;
            }
        }
        assert!(
            rounds.is_some_and(|rounds| rounds <= 30),
            "seed {seed}: a leader after {rounds:?} ticks"
        );
    }
}

#[test]
fn new_leader_keeps_followers_after_report() {
    // After both followers receive the leader-down report, the loser votes for the winner and
    // then hears it. Its timeout, drawn short while no leader was known, must be drawn again
    // then. Otherwise it campaigns between heartbeats and, without pre-vote, deposes the new
    // leader.
    for pre_vote in [true, false] {
        for seed in 0..20u64 {
            let mut cluster = followers_with_leader_down(seed, 20, pre_vote);
            let rounds = tick_until_one_leads(&mut cluster, &[2, 3], 40);
            assert!(
                rounds.is_some(),
                "pre_vote {pre_vote}, seed {seed}: no leader"
            );
            let leader = cluster.leader().expect("a leader");
            let term = cluster.node(leader).term();
            cluster.clear_records();

            for _ in 0..60 {
                cluster.tick(2);
                cluster.tick(3);
                cluster.stabilize();
            }
            let campaigns = cluster
                .sent()
                .iter()
                .filter(|message| {
                    matches!(
                        message.body,
                        MessageBody::PreVote { .. } | MessageBody::RequestVote { .. }
                    )
                })
                .count();
            assert_eq!(
                campaigns, 0,
                "pre_vote {pre_vote}, seed {seed}: a follower campaigned"
            );
            assert_eq!(
                cluster.leader(),
                Some(leader),
                "pre_vote {pre_vote}, seed {seed}"
            );
            assert_eq!(
                cluster.node(leader).term(),
                term,
                "pre_vote {pre_vote}, seed {seed}"
            );
        }
    }
}

#[test]
fn wrong_leader_down_report_deposes_no_leader() {
    // Node 2 receives a report that a live leader is down. It campaigns early, but node 3
    // still hears the leader and rejects the pre-vote. So the report alone never lets one
    // node depose a leader that another voter hears, and node 2 follows node 1 again.
    let mut cluster = cluster_led_by_node_1(|config| {
        config.election_timeout_ticks_min = 20;
        config.election_timeout_ticks_max = 40;
        config.heartbeat_interval_ticks = 3;
    });
    assert!(cluster.node_mut(2).report_leader_down(NodeId(1)));

    for _ in 0..3 {
        cluster.tick(2);
        cluster.stabilize();
    }
    let pre_votes = cluster
        .sent()
        .iter()
        .filter(|message| {
            message.from == NodeId(2) && matches!(message.body, MessageBody::PreVote { .. })
        })
        .count();
    assert!(pre_votes > 0, "node 2 did not campaign within 3 ticks");

    for _ in 0..3 {
        cluster.tick(1);
        cluster.stabilize();
    }
    assert_eq!(
        cluster.node(1).role(),
        Role::Leader,
        "node 2 deposed a live leader"
    );
    assert_eq!(cluster.node(2).leader(), Some(NodeId(1)));
    assert_eq!(cluster.node(2).stats().elections_started, 0);
}

#[test]
fn leader_down_report_for_other_ignored() {
    let mut cluster = cluster_led_by_node_1(|config| {
        config.election_timeout_ticks_min = 10;
        config.election_timeout_ticks_max = 40;
    });
    assert!(!cluster.node_mut(2).report_leader_down(NodeId(3)));
    assert!(!cluster.node_mut(1).report_leader_down(NodeId(2)));
    assert_eq!(cluster.node(2).leader(), Some(NodeId(1)));
    assert_eq!(cluster.node(2).stats().leader_down_reports, 0);
}

#[test]
fn wrong_report_timeout_redrawn() {
    // A report that turns out wrong: the leader's next heartbeat takes the follower back
    // before it campaigns, and its election timeout is drawn again, so heartbeats keep it
    // from ever campaigning. With the cut-short timeout of 1 to 3 ticks left in place, it
    // would start a pre-vote between two heartbeats.
    let mut cluster = cluster_led_by_node_1(|config| {
        config.election_timeout_ticks_min = 10;
        config.election_timeout_ticks_max = 20;
        config.heartbeat_interval_ticks = 3;
    });
    assert!(cluster.node_mut(2).report_leader_down(NodeId(1)));
    for _ in 0..3 {
        cluster.tick(1);
        cluster.stabilize();
    }
    assert_eq!(cluster.node(2).leader(), Some(NodeId(1)));
    for _ in 0..60 {
        cluster.tick_all();
        cluster.stabilize();
    }
    let pre_votes = cluster
        .sent()
        .iter()
        .filter(|message| matches!(message.body, MessageBody::PreVote { .. }))
        .count();
    assert_eq!(
        pre_votes, 0,
        "a follower campaigned while heartbeats flowed"
    );
    assert_eq!(cluster.node(1).role(), Role::Leader);
}

// ----- ReadIndex -----

fn heartbeat_read_rounds(messages: &[Message]) -> Vec<(NodeId, u64)> {
    messages
        .iter()
        .filter_map(|message| match message.body {
            MessageBody::Heartbeat {
                read_round: Some(round),
                ..
            } => Some((message.to, round)),
            _ => None,
        })
        .collect()
}

#[test]
fn queued_reads_confirmed_by_one_heartbeat_round() {
    // 50 reads queued before one ready() are confirmed by a single heartbeat round: one
    // heartbeat with a read round per follower, and all 50 read states come out at the
    // commit index.
    let mut cluster = cluster_led_by_node_1(|_| {});
    let commit = cluster.node(1).commit_index();
    for context in 0..50 {
        cluster
            .node_mut(1)
            .read_index(context)
            .expect("leader accepts the read");
    }
    cluster.stabilize();
    let rounds = heartbeat_read_rounds(cluster.sent());
    assert_eq!(
        rounds,
        [(NodeId(2), 1), (NodeId(3), 1)],
        "heartbeats carrying a read round"
    );
    let read_states = cluster.read_states(1);
    let contexts: Vec<u64> = read_states.iter().map(|read| read.context).collect();
    assert_eq!(contexts, (0..50).collect::<Vec<_>>(), "confirmed reads");
    for read in read_states {
        assert_eq!(
            read.read_index, commit,
            "read index of read {}",
            read.context
        );
    }
}

#[test]
fn read_batch_max_defers_reads_to_next_round() {
    // With read_batch_max 3, reads that arrive while a round awaits its quorum start no
    // round of their own until three of them wait. Each is confirmed all the same, at the
    // commit index of its arrival, once a quorum acknowledges the round that carries it.
    let mut cluster = cluster_led_by_node_1(|config| config.read_batch_max = 3);
    let commit = cluster.node(1).commit_index();
    let read = |cluster: &mut Cluster, context: u64| {
        cluster
            .node_mut(1)
            .read_index(context)
            .expect("leader accepts the read");
        cluster.process_ready(1);
        heartbeat_read_rounds(cluster.sent())
            .iter()
            .map(|(_, round)| *round)
            .max()
    };

    assert_eq!(
        read(&mut cluster, 1),
        Some(1),
        "the first read starts round 1"
    );
    assert_eq!(read(&mut cluster, 2), Some(1), "read 2 waits for round 1");
    assert_eq!(read(&mut cluster, 3), Some(1), "read 3 waits for round 1");
    assert_eq!(
        read(&mut cluster, 4),
        Some(2),
        "three waiting reads start round 2"
    );
    assert_eq!(read(&mut cluster, 5), Some(2), "read 5 waits again");

    cluster.stabilize();
    let contexts: Vec<u64> = cluster.read_states(1).iter().map(|r| r.context).collect();
    assert_eq!(
        contexts,
        [1, 2, 3, 4, 5],
        "every read is confirmed, in order"
    );
    assert!(
        cluster
            .read_states(1)
            .iter()
            .all(|read| read.read_index == commit),
        "read states: {:?}",
        cluster.read_states(1)
    );
    let rounds = heartbeat_read_rounds(cluster.sent());
    assert_eq!(
        rounds.iter().map(|(_, round)| *round).max(),
        Some(3),
        "read 5 went out in round 3 once rounds 1 and 2 were answered: {rounds:?}"
    );
}

#[test]
fn read_batch_default_starts_round_per_read() {
    // With the default read_batch_max of 1, a read that arrives while a round awaits its
    // quorum starts the next round at once.
    let mut cluster = cluster_led_by_node_1(|_| {});
    for context in 1..=3 {
        cluster
            .node_mut(1)
            .read_index(context)
            .expect("leader accepts the read");
        cluster.process_ready(1);
    }
    let rounds: Vec<u64> = heartbeat_read_rounds(cluster.sent())
        .iter()
        .map(|(_, round)| *round)
        .collect();
    assert_eq!(
        rounds,
        [1, 1, 2, 2, 3, 3],
        "one round per read, to both followers"
    );
    cluster.stabilize();
    assert_eq!(cluster.read_states(1).len(), 3, "every read is confirmed");
}

#[test]
fn read_before_noop_commit_waits_for_it() {
    // A read that reaches a new leader before its term's no-op commits is served at an
    // index that includes the no-op. So the read includes entry 2, which the previous
    // leader committed although the new leader's commit index is still 1.
    let mut cluster = Cluster::builder(3)
        .restore(1, restored(&[1, 1], 1, 2))
        .restore(2, restored(&[1, 1], 1, 1))
        .restore(3, restored(&[1, 1], 1, 2))
        .build();
    cluster.win_election(2, ELECTION_TICKS);
    let commit = cluster.node(2).commit_index();
    assert_eq!(
        commit,
        LogIndex(1),
        "the new leader has not learned commit 2"
    );
    cluster
        .node_mut(2)
        .read_index(7)
        .expect("leader accepts the read");
    cluster.process_ready(2);
    let early = cluster.read_states(2).len();
    assert_eq!(early, 0, "no read state before the no-op commits");

    cluster.stabilize();
    let read_states = cluster.read_states(2).to_vec();
    assert_eq!(read_states.len(), 1, "read states: {read_states:?}");
    assert_eq!(read_states[0].context, 7, "context of the read");
    assert_eq!(
        read_states[0].read_index,
        LogIndex(3),
        "served at the no-op's index"
    );
}

// ----- Crash and restart -----

#[test]
fn restarted_node_keeps_term_and_vote() {
    // A node that voted in a term and restarts from its durable state keeps that term and
    // vote, so it does not vote for a second candidate in the same term. A vote that never
    // became durable was never sent, so a node that crashes before the write may vote
    // again.
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.pre_vote = false)
        .build();
    let request_vote = |from: u64, term: u64| Message {
        from: NodeId(from),
        to: NodeId(1),
        term: Term(term),
        body: MessageBody::RequestVote {
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            leadership_transfer: false,
        },
    };
    let vote_responses = |cluster: &Cluster| -> Vec<(NodeId, bool)> {
        cluster
            .queued()
            .filter_map(|message| match message.body {
                MessageBody::RequestVoteResponse { granted } if message.from == NodeId(1) => {
                    Some((message.to, granted))
                }
                _ => None,
            })
            .collect()
    };

    // A vote lost in a crash before it was durable: nothing was sent.
    cluster.pause_persistence(1);
    cluster.deliver(request_vote(3, 1));
    cluster.process_ready(1);
    let sent = vote_responses(&cluster);
    assert!(sent.is_empty(), "vote sent before durable: {sent:?}");
    cluster.crash(1);
    cluster.restart(1);
    let hard_state = cluster.node(1).hard_state();
    assert_eq!(hard_state.term, Term(0), "term after losing the write");
    assert_eq!(hard_state.vote, None, "vote after losing the write");

    // A durable vote survives the restart.
    cluster.deliver(request_vote(2, 1));
    cluster.process_ready(1);
    let sent = vote_responses(&cluster);
    assert_eq!(sent, [(NodeId(2), true)], "vote responses");
    cluster.drop_queued(|_| true);
    cluster.crash(1);
    cluster.restart(1);
    let hard_state = cluster.node(1).hard_state();
    assert_eq!(hard_state.term, Term(1), "term after restart");
    assert_eq!(hard_state.vote, Some(NodeId(2)), "vote after restart");

    cluster.deliver(request_vote(3, 1));
    cluster.process_ready(1);
    let sent = vote_responses(&cluster);
    assert_eq!(sent, [(NodeId(3), false)], "second candidate of term 1");
    cluster.drop_queued(|_| true);
    cluster.deliver(request_vote(2, 1));
    cluster.process_ready(1);
    let sent = vote_responses(&cluster);
    assert_eq!(sent, [(NodeId(2), true)], "the same candidate asking again");
}

// ----- Lost messages -----

#[test]
fn lost_append_resent_after_heartbeat() {
    // A replicating follower whose AppendEntries was lost receives the entry after the
    // next heartbeat round trip, without a new proposal to reveal the gap.
    let mut cluster = cluster_led_by_node_1(|_| {});
    let rule = cluster.add_drop_rule(|message| is_append(message, 1, 3));
    let proposal = cluster.propose_and_commit("lost once");
    cluster.remove_drop_rule(rule);
    assert!(!cluster.has_applied(3, proposal), "node 3 missed the entry");

    let heartbeat = cluster.config(1).heartbeat_interval_ticks;
    cluster.run_ticks(2 * heartbeat);
    let last_index = cluster.node(3).last_index();
    assert_eq!(
        last_index, proposal.index,
        "node 3 received the entry again"
    );
    assert!(cluster.has_applied(3, proposal), "node 3 applied the entry");
}

// ----- Partitions and reads -----

/// Ticks every node until a leader of a term above `term` is settled among `group`;
/// returns it and the ticks it took.
fn run_until_new_leader_in(cluster: &mut Cluster, group: &[u64], term: Term) -> (u64, u32) {
    for ticks in 1..=ELECTION_TICKS {
        cluster.tick_all();
        cluster.stabilize();
        let found = group.iter().copied().find(|id| {
            let node = cluster.node(*id);
            node.role() == Role::Leader
                && node.term() > term
                && node.entry(node.commit_index()).map(|entry| entry.term) == Some(node.term())
        });
        if let Some(leader) = found {
            return (leader, ticks);
        }
    }
    panic!("no new leader among {group:?} within {ELECTION_TICKS} ticks");
}

/// Returns the value of the one-key store after applying `entries` up to `through`.
///
/// Commands are `put <value>` and `cas <expected> <new>`; other entries change nothing.
fn kv_value(entries: &[Entry], through: LogIndex) -> Option<String> {
    let mut value = None;
    for entry in entries.iter().take_while(|entry| entry.index <= through) {
        apply_kv_command(&mut value, entry);
    }
    value
}

/// Applies one entry to the one-key store; returns whether a `cas` swapped.
fn apply_kv_command(value: &mut Option<String>, entry: &Entry) -> Option<bool> {
    if entry.kind != EntryKind::Normal {
        return None;
    }
    let command = std::str::from_utf8(&entry.data).expect("commands are UTF-8");
    let words: Vec<&str> = command.split(' ').collect();
    match words.as_slice() {
        ["put", new] => {
            *value = Some((*new).to_string());
            None
        }
        ["cas", expected, new] => {
            let swapped = value.as_deref() == Some(*expected);
            if swapped {
                *value = Some((*new).to_string());
            }
            Some(swapped)
        }
        _ => None,
    }
}

const KEY: &str = "x";

#[derive(Debug)]
enum PendingOp {
    Update {
        process: u64,
        handle: OpHandle,
        node: u64,
        proposal: shardraft_raft::ProposalId,
        is_cas: bool,
    },
    Read {
        process: u64,
        handle: OpHandle,
        node: u64,
        context: u64,
        /// The highest log index of a write acknowledged before the read was invoked.
        acked_before: LogIndex,
    },
}

impl PendingOp {
    fn process(&self) -> u64 {
        match self {
            PendingOp::Update { process, .. } | PendingOp::Read { process, .. } => *process,
        }
    }
}

/// Clients of a one-key store on top of the cluster, recording their history.
#[derive(Debug, Default)]
struct Clients {
    recorder: HistoryRecorder,
    pending: Vec<PendingOp>,
    next_context: u64,
    /// Highest index of an acknowledged write or swap.
    acked_index: LogIndex,
    /// Every read state used to serve a read: (node, read index, acked index at invoke).
    served_reads: Vec<(u64, LogIndex, LogIndex)>,
}

impl Clients {
    fn update(&mut self, cluster: &mut Cluster, process: u64, node: u64, call: Call) {
        let command = match &call {
            Call::Write { value, .. } => format!("put {value}"),
            Call::Cas { expected, new, .. } => {
                format!("cas {} {new}", expected.as_deref().expect("expected value"))
            }
            other => panic!("not an update: {other:?}"),
        };
        let is_cas = matches!(call, Call::Cas { .. });
        let handle = self.recorder.invoke(process, call);
        match cluster.node_mut(node).propose(Bytes::from(command)) {
            Ok(proposal) => self.pending.push(PendingOp::Update {
                process,
                handle,
                node,
                proposal,
                is_cas,
            }),
            Err(_) => self.record_no_effect(handle, is_cas),
        }
    }

    /// Records an update that definitely had no effect. The history model reads a failed
    /// compare-and-set as "the key held_appends another value", which this client never observed,
    /// so a compare-and-set is recorded with an unknown outcome instead.
    fn record_no_effect(&mut self, handle: OpHandle, is_cas: bool) {
        if is_cas {
            self.recorder.info(handle);
        } else {
            self.recorder.fail(handle);
        }
    }

    fn write(&mut self, cluster: &mut Cluster, process: u64, node: u64, value: &str) {
        let call = Call::Write {
            key: KEY.to_string(),
            value: value.to_string(),
        };
        self.update(cluster, process, node, call);
    }

    fn cas(&mut self, cluster: &mut Cluster, process: u64, node: u64, expected: &str, new: &str) {
        let call = Call::Cas {
            key: KEY.to_string(),
            expected: Some(expected.to_string()),
            new: new.to_string(),
        };
        self.update(cluster, process, node, call);
    }

    /// Starts a read at `node`; returns whether the node accepted it.
    fn read(&mut self, cluster: &mut Cluster, process: u64, node: u64) -> bool {
        let handle = self.recorder.invoke(
            process,
            Call::Read {
                key: KEY.to_string(),
            },
        );
        self.next_context += 1;
        let context = self.next_context;
        match cluster.node_mut(node).read_index(context) {
            Ok(()) => {
                self.pending.push(PendingOp::Read {
                    process,
                    handle,
                    node,
                    context,
                    acked_before: self.acked_index,
                });
                true
            }
            Err(_) => {
                self.recorder.fail(handle);
                false
            }
        }
    }

    /// Completes every pending operation whose outcome the cluster now shows.
    fn resolve(&mut self, cluster: &Cluster) {
        let pending = std::mem::take(&mut self.pending);
        for op in pending {
            if !self.try_complete(cluster, &op) {
                self.pending.push(op);
            }
        }
    }

    fn try_complete(&mut self, cluster: &Cluster, op: &PendingOp) -> bool {
        match *op {
            PendingOp::Update {
                handle,
                node,
                proposal,
                is_cas,
                ..
            } => {
                let applied = cluster.applied(node);
                let Some(position) = applied.iter().position(|e| e.index == proposal.index) else {
                    return false;
                };
                if applied[position].term != proposal.term {
                    // Another entry committed at this index, so the proposal never will.
                    self.record_no_effect(handle, is_cas);
                    return true;
                }
                let mut value = kv_value(applied, proposal.index.prev());
                let swapped = apply_kv_command(&mut value, &applied[position]);
                self.acked_index = self.acked_index.max(proposal.index);
                if is_cas {
                    self.recorder
                        .ok(handle, Output::Cas(swapped.expect("a cas entry")));
                } else {
                    self.recorder.ok(handle, Output::Done);
                }
                true
            }
            PendingOp::Read {
                handle,
                node,
                context,
                acked_before,
                ..
            } => {
                if cluster.dropped_reads(node).contains(&context) {
                    self.recorder.fail(handle);
                    return true;
                }
                let Some(read) = cluster
                    .read_states(node)
                    .iter()
                    .find(|read| read.context == context)
                else {
                    return false;
                };
                if cluster.node(node).applied_index() < read.read_index {
                    return false;
                }
                let value = kv_value(cluster.applied(node), read.read_index);
                self.served_reads
                    .push((node, read.read_index, acked_before));
                self.recorder.ok(handle, Output::Read(value));
                true
            }
        }
    }

    /// Ticks the cluster `ticks` times, completing operations as they finish.
    fn run_ticks(&mut self, cluster: &mut Cluster, ticks: u32) {
        for _ in 0..ticks {
            cluster.tick_all();
            cluster.stabilize();
            self.resolve(cluster);
        }
    }

    /// Stabilizes the cluster and completes what it can.
    ///
    /// # Panics
    ///
    /// Panics if an operation of `process` stays open.
    fn settle(&mut self, cluster: &mut Cluster, process: u64) {
        cluster.stabilize();
        self.resolve(cluster);
        let open: Vec<&PendingOp> = self
            .pending
            .iter()
            .filter(|op| op.process() == process)
            .collect();
        assert!(
            open.is_empty(),
            "operations of process {process} left open: {open:?}"
        );
    }
}

#[test]
fn partitioned_leader_serves_no_read() {
    // A leader cut off into a minority of a five-node group returns no read state for a
    // ReadIndex read: the read is dropped when check-quorum makes it step down. The
    // majority elects a new leader that accepts writes and serves reads that reflect them.
    let mut cluster = Cluster::new(5);
    let old = cluster.run_until_leader(ELECTION_TICKS);
    let old_term = cluster.node(old).term();
    let others: Vec<u64> = (1..=5).filter(|id| *id != old).collect();
    let minority = [old, others[0]];
    let majority = [others[1], others[2], others[3]];
    cluster.propose_and_commit("put 1");
    cluster.partition(&[&minority, &majority]);

    cluster
        .node_mut(old)
        .read_index(100)
        .expect("the old leader still believes it leads");
    let (new, _) = run_until_new_leader_in(&mut cluster, &majority, old_term);
    cluster.run_ticks(2 * cluster.config(old).election_timeout_ticks_min);

    let old_reads = cluster.read_states(old).to_vec();
    assert!(
        old_reads.is_empty(),
        "old leader returned reads: {old_reads:?}"
    );
    let dropped = cluster.dropped_reads(old).to_vec();
    assert_eq!(dropped, [100], "reads the old leader dropped");
    let role = cluster.node(old).role();
    assert_ne!(role, Role::Leader, "the old leader stepped down");

    let write = cluster.propose_and_commit("put 2");
    cluster
        .node_mut(new)
        .read_index(200)
        .expect("the new leader accepts the read");
    cluster.stabilize();
    let read = cluster
        .read_states(new)
        .iter()
        .find(|read| read.context == 200)
        .copied()
        .expect("the new leader serves the read");
    assert!(
        read.read_index >= write.index,
        "read index {} misses the write at {}",
        read.read_index,
        write.index
    );
    let value = kv_value(cluster.applied(new), read.read_index);
    assert_eq!(value.as_deref(), Some("2"), "value read at the new leader");
}

#[test]
fn deposed_leader_returns_no_stale_read() {
    // While a leader is cut off into a minority and the majority elects a new leader that
    // acknowledges writes and compare-and-sets, the old leader never returns a read state
    // whose index misses an acknowledged write. The old leader runs without check-quorum
    // here, so it keeps believing it leads and keeps accepting reads, writes and
    // compare-and-sets until it hears of the new term. Clients on both sides use one key,
    // and their history is linearizable.
    let mut cluster = Cluster::builder(5)
        .configure_node(1, |config| config.check_quorum = false)
        .build();
    let mut clients = Clients::default();
    cluster.elect(1, ELECTION_TICKS);
    cluster.stabilize();
    let old = 1;
    let old_term = cluster.node(old).term();
    let max_timeout = cluster.config(old).election_timeout_ticks_max;
    let minority = [1, 2];
    let majority = [3, 4, 5];

    clients.write(&mut cluster, 0, old, "1");
    clients.settle(&mut cluster, 0);

    cluster.partition(&[&minority, &majority]);
    let accepted = clients.read(&mut cluster, 1, old);
    assert!(accepted, "the old leader accepts a read after the cut");
    clients.write(&mut cluster, 2, old, "stale");
    let (new, _) = run_until_new_leader_in(&mut cluster, &majority, old_term);
    clients.resolve(&cluster);

    clients.write(&mut cluster, 0, new, "2");
    clients.settle(&mut cluster, 0);
    clients.cas(&mut cluster, 0, new, "2", "3");
    clients.settle(&mut cluster, 0);
    clients.cas(&mut cluster, 0, new, "2", "4");
    clients.settle(&mut cluster, 0);
    clients.read(&mut cluster, 0, new);
    clients.settle(&mut cluster, 0);

    // The old leader still believes it leads, after the new one acknowledged writes.
    let role = cluster.node(old).role();
    assert_eq!(
        role,
        Role::Leader,
        "the old leader has not heard of the new term"
    );
    let accepted = clients.read(&mut cluster, 3, old);
    assert!(
        accepted,
        "the old leader accepts a read after the new writes"
    );
    clients.cas(&mut cluster, 4, old, "1", "5");
    clients.run_ticks(&mut cluster, 3 * max_timeout);
    let old_reads = cluster.read_states(old).len();
    assert_eq!(old_reads, 0, "read states from the old leader");

    cluster.heal();
    clients.run_ticks(&mut cluster, 3 * max_timeout);
    let leader = cluster.leader().expect("a leader after healing");
    clients.read(&mut cluster, 5, leader);
    clients.settle(&mut cluster, 5);
    let open = clients.pending.len();
    assert_eq!(open, 0, "operations left open: {:?}", clients.pending);

    for (node, read_index, acked_before) in &clients.served_reads {
        assert!(
            read_index >= acked_before,
            "node {node} served a read at {read_index}, missing a write acknowledged at \
             {acked_before}"
        );
    }
    let history = std::mem::take(&mut clients.recorder).into_history();
    let outcome_of = |process: u64| -> Vec<Outcome> {
        history
            .operations()
            .iter()
            .filter(|operation| operation.process == process)
            .map(|operation| operation.outcome.clone())
            .collect()
    };
    assert_eq!(
        outcome_of(1),
        [Outcome::Fail],
        "first read at the old leader"
    );
    assert_eq!(outcome_of(2), [Outcome::Fail], "write at the old leader");
    assert_eq!(
        outcome_of(3),
        [Outcome::Fail],
        "second read at the old leader"
    );
    assert_eq!(outcome_of(4), [Outcome::Info], "cas at the old leader");
    for id in 1..=5 {
        let old_side_applied: Vec<&Entry> = cluster
            .applied_ever(id)
            .iter()
            .filter(|entry| {
                let data = entry.data.as_ref();
                data == b"put stale" || data == b"cas 1 5"
            })
            .collect();
        assert!(
            old_side_applied.is_empty(),
            "node {id} applied the old leader's updates: {old_side_applied:?}"
        );
    }
    let majority_side = outcome_of(0);
    let expected = [
        Outcome::Ok(Output::Done),
        Outcome::Ok(Output::Done),
        Outcome::Ok(Output::Cas(true)),
        Outcome::Ok(Output::Cas(false)),
        Outcome::Ok(Output::Read(Some("3".to_string()))),
    ];
    assert_eq!(
        majority_side, expected,
        "operations of the majority's client"
    );
    let last_read = outcome_of(5);
    assert_eq!(
        last_read,
        [Outcome::Ok(Output::Read(Some("3".to_string())))],
        "read after healing"
    );
    let verdict = lincheck::check(&history, Duration::from_secs(10));
    assert_eq!(verdict, CheckOutcome::Linearizable, "history: {history:?}");
}

// ----- Pre-vote and check-quorum -----

/// Isolates a follower of a stable three-node cluster for 10 maximum election timeouts,
/// heals, and returns (leader, follower, the leader's term before, the follower's term
/// while isolated).
fn isolate_follower_and_heal(cluster: &mut Cluster) -> (u64, u64, Term, Term) {
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    let term_before = cluster.node(leader).term();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    cluster.isolate(follower);
    cluster.run_ticks(10 * cluster.config(follower).election_timeout_ticks_max);
    let isolated_term = cluster.node(follower).term();
    cluster.heal();
    cluster.run_ticks(3 * cluster.config(follower).election_timeout_ticks_max);
    (leader, follower, term_before, isolated_term)
}

#[test]
fn prevote_keeps_rejoining_node_term() {
    // With pre-vote, a follower cut off for many election timeouts does not raise its
    // term, and once it rejoins the leader keeps its term and its leadership.
    let mut cluster = Cluster::new(3);
    let (leader, follower, term_before, isolated_term) = isolate_follower_and_heal(&mut cluster);
    assert_eq!(isolated_term, term_before, "term of the isolated follower");
    let role = cluster.node(leader).role();
    assert_eq!(role, Role::Leader, "node {leader} still leads");
    let term_after = cluster.node(leader).term();
    assert_eq!(term_after, term_before, "the leader's term");
    let follows = cluster.node(follower).leader();
    assert_eq!(follows, Some(NodeId(leader)), "the follower's leader");
}

#[test]
fn without_prevote_rejoining_node_raises_term() {
    // Without pre-vote, a follower cut off for many election timeouts raises its term with
    // every election it starts, and when it rejoins the group moves to a newer term.
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.pre_vote = false)
        .build();
    let (_, _, term_before, isolated_term) = isolate_follower_and_heal(&mut cluster);
    assert!(
        isolated_term.0 >= term_before.0 + 5,
        "the isolated follower's term {isolated_term} rose by less than 5 from {term_before}"
    );
    let leader = cluster.leader().expect("a leader after healing");
    let term_after = cluster.node(leader).term();
    assert!(
        term_after >= isolated_term,
        "the group's term {term_after} is below the rejoined node's {isolated_term}"
    );
}

#[test]
fn check_quorum_steps_isolated_leader_down() {
    // A leader cut off from every follower steps down within two election timeouts
    // (election_timeout_ticks_min each): the check-quorum round under way when the cut
    // happens may still count acknowledgements from before it.
    let mut cluster = Cluster::new(3);
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    let timeout = cluster.config(leader).election_timeout_ticks_min;
    cluster.isolate(leader);
    let mut ticks = 0;
    while cluster.node(leader).role() == Role::Leader {
        assert!(
            ticks < 2 * timeout,
            "still leader after {ticks} ticks without a quorum"
        );
        cluster.tick(leader);
        cluster.stabilize();
        ticks += 1;
    }
    assert!(ticks >= 1, "stepped down without a tick");
    let role = cluster.node(leader).role();
    assert_eq!(role, Role::Follower, "role after losing the quorum");
}

#[test]
fn check_quorum_keeps_leader_with_quorum() {
    // A leader of five that still hears from two followers (a quorum with itself) keeps
    // leading in the same term for many election timeouts while the other two are cut off.
    let mut cluster = Cluster::new(5);
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    let term = cluster.node(leader).term();
    let others: Vec<u64> = (1..=5).filter(|id| *id != leader).collect();
    cluster.isolate(others[0]);
    cluster.isolate(others[1]);
    let timeout = cluster.config(leader).election_timeout_ticks_max;
    for tick in 0..10 * timeout {
        cluster.tick_all();
        cluster.stabilize();
        let role = cluster.node(leader).role();
        assert_eq!(
            role,
            Role::Leader,
            "role of node {leader} after tick {tick}"
        );
    }
    let term_after = cluster.node(leader).term();
    assert_eq!(term_after, term, "the leader's term");
}

// ----- Leadership transfer -----

#[test]
fn transfer_catches_up_lagging_target() {
    // A leadership transfer to a lagging follower first sends it the missing entries and
    // then TimeoutNow. The target wins the next term with every committed entry, and the
    // old leader rejects proposals with TransferInProgress while the transfer runs.
    let mut cluster = cluster_led_by_node_1(|_| {});
    cluster.isolate(3);
    let mut proposals = Vec::new();
    for value in 0..5 {
        proposals.push(cluster.propose_and_commit(format!("put {value}")));
    }
    let last = proposals.last().expect("five proposals").index;
    assert!(cluster.node(3).last_index() < last, "node 3 lags");
    cluster.heal();
    cluster.clear_records();
    let term = cluster.node(1).term();

    cluster
        .node_mut(1)
        .transfer_leadership(NodeId(3))
        .expect("transfer starts");
    let rejected = cluster.node_mut(1).propose(Bytes::from_static(b"put late"));
    assert_eq!(
        rejected,
        Err(ProposeError::TransferInProgress { target: NodeId(3) }),
        "proposal during the transfer"
    );

    let timeout = cluster.config(1).election_timeout_ticks_min;
    cluster.stabilize();
    let mut ticks = 0;
    while cluster.node(3).role() != Role::Leader && ticks < timeout {
        cluster.run_ticks(1);
        ticks += 1;
    }
    let role = cluster.node(3).role();
    assert_eq!(role, Role::Leader, "node 3 leads after {ticks} ticks");
    let new_term = cluster.node(3).term();
    assert_eq!(new_term, term.next(), "the target's term");

    let timeout_now_at = cluster
        .deliveries()
        .iter()
        .position(|delivery| matches!(delivery.message.body, MessageBody::TimeoutNow))
        .expect("TimeoutNow was delivered");
    let caught_up_before = cluster.deliveries()[..timeout_now_at]
        .iter()
        .any(|delivery| {
            delivery.message.to == NodeId(3) && carries_index(&delivery.message, last.0)
        });
    assert!(
        caught_up_before,
        "node 3 received entry {last} before TimeoutNow"
    );

    cluster.run_ticks(2);
    for proposal in &proposals {
        assert!(
            cluster.has_applied(3, *proposal),
            "new leader applied {proposal:?}"
        );
    }
    let old_role = cluster.node(1).role();
    assert_eq!(old_role, Role::Follower, "the old leader follows");
    cluster.propose_and_commit("put after transfer");
}

#[test]
fn transfer_to_unreachable_target_abandoned() {
    // A leadership transfer to an unreachable follower is abandoned after
    // election_timeout_ticks_min ticks, and the leader takes proposals again.
    let mut cluster = cluster_led_by_node_1(|_| {});
    cluster.isolate(3);
    cluster
        .node_mut(1)
        .transfer_leadership(NodeId(3))
        .expect("transfer starts");
    let timeout = cluster.config(1).election_timeout_ticks_min;
    for tick in 1..timeout {
        cluster.run_ticks(1);
        let rejected = cluster
            .node_mut(1)
            .propose(Bytes::from_static(b"put early"));
        assert_eq!(
            rejected,
            Err(ProposeError::TransferInProgress { target: NodeId(3) }),
            "proposal {tick} ticks into the transfer"
        );
    }
    cluster.run_ticks(1);
    let target = cluster.node(1).transfer_target();
    assert_eq!(target, None, "transfer abandoned after {timeout} ticks");
    let role = cluster.node(1).role();
    assert_eq!(role, Role::Leader, "node 1 still leads");
    cluster.propose_and_commit("put after abandon");
}

// ----- Learners -----

#[test]
fn learner_replicates_without_counting_for_quorum() {
    // A learner receives and applies the log, but its acknowledgement does not count
    // toward a quorum and it never campaigns, even when cut off for many timeouts.
    let mut cluster = Cluster::builder(3).learners(1).build();
    cluster.elect(1, ELECTION_TICKS);
    cluster.stabilize();
    let committed = cluster.propose_and_commit("put 1");
    assert!(
        cluster.has_applied(4, committed),
        "the learner applied the entry"
    );

    cluster.isolate(2);
    cluster.isolate(3);
    let proposal = cluster
        .node_mut(1)
        .propose(Bytes::from_static(b"put 2"))
        .expect("leader accepts the proposal");
    cluster.stabilize();
    let learner_match = cluster.node(1).progress(NodeId(4)).map(|p| p.match_index);
    assert_eq!(learner_match, Some(proposal.index), "the learner acked");
    let commit = cluster.node(1).commit_index();
    assert!(
        commit < proposal.index,
        "commit {commit} reached {} with the leader and a learner",
        proposal.index
    );

    cluster.heal();
    cluster.stabilize();
    let term = cluster.node(4).term();
    cluster.isolate(4);
    let timeout = cluster.config(4).election_timeout_ticks_max;
    for _ in 0..10 * timeout {
        cluster.tick(4);
        cluster.stabilize();
        let role = cluster.node(4).role();
        assert_eq!(role, Role::Follower, "the learner's role");
    }
    let term_after = cluster.node(4).term();
    assert_eq!(term_after, term, "the learner's term");
}
