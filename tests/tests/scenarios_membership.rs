//! Scenario tests of snapshots, membership changes and replicas that lost their data,
//! driven step by step through the scripted harness.
//!
//! Each test states the failure a real Raft system suffered and checks the correct
//! behaviour: a snapshot installed beside a stale log, a follower that lost its log but kept
//! its identity, a removed node coming back, and membership changes of successive leaders.

use bytes::Bytes;
use shardraft_raft::{
    Entry, EntryKind, LogIndex, MembershipChange, MembershipChangeError, MessageBody, NodeId,
    RestoredState, Role, Term,
};
use shardraft_tests::harness::{Cluster, restored_log as restored};

/// Generous bound on the ticks any election below needs (the default election timeout is
/// 10 to 20 ticks).
const ELECTION_TICKS: u32 = 200;

fn propose_many(cluster: &mut Cluster, count: usize) {
    for value in 0..count {
        cluster.propose_and_commit(format!("v{value}"));
    }
}

fn install_snapshots_sent_to(cluster: &Cluster, to: u64) -> usize {
    cluster
        .sent()
        .iter()
        .filter(|message| {
            message.to == NodeId(to) && matches!(message.body, MessageBody::InstallSnapshot { .. })
        })
        .count()
}

fn voters(cluster: &Cluster, id: u64) -> Vec<u64> {
    cluster
        .node(id)
        .membership()
        .voters
        .iter()
        .map(|voter| voter.0)
        .collect()
}

/// Proposes `change` at the leader, retrying across the leader's first ticks (a new leader
/// accepts changes only once its own no-op commits), and stabilizes.
fn change_membership(cluster: &mut Cluster, change: MembershipChange) {
    for _ in 0..ELECTION_TICKS {
        let leader = cluster.run_until_leader(ELECTION_TICKS);
        match cluster
            .node_mut(leader)
            .propose_membership_change(change, Bytes::new())
        {
            Ok(_) => {
                cluster.stabilize();
                return;
            }
            Err(
                MembershipChangeError::LeaderNotReady | MembershipChangeError::ChangePending { .. },
            ) => cluster.run_ticks(1),
            Err(error) => panic!("leader {leader} refused {change}: {error}"),
        }
    }
    panic!("{change} was not accepted within {ELECTION_TICKS} ticks");
}

// ----- a snapshot installed beside a stale log -----

#[test]
fn snapshot_replaces_a_stale_old_term_suffix_once() {
    // Node 3 contains entries 4 to 8 of term 1 that never committed. Nodes 1 and 2 move on in
    // term 2 without it and compact their logs, so node 3 can catch up only by snapshot.
    // After installing it, no term-1 entry past the snapshot's index may remain, node 3 must
    // converge to the leader's log, and the leader must send the snapshot a bounded number
    // of times rather than in a loop.
    let mut cluster = Cluster::builder(3)
        .restore(1, restored(&[1, 1, 1], 1, 3))
        .restore(2, restored(&[1, 1, 1], 1, 3))
        .restore(3, restored(&[1, 1, 1, 1, 1, 1, 1, 1], 1, 3))
        .build();
    cluster.isolate(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 20);
    let snapshot = cluster.snapshot(1, 0);
    assert!(
        snapshot.index.0 > 8,
        "the snapshot covers node 3's stale entries"
    );
    assert_eq!(cluster.node(1).first_index(), snapshot.index.next());

    cluster.clear_records();
    cluster.heal();
    cluster.run_ticks(40);

    let stale_left: Vec<LogIndex> = (snapshot.index.0 + 1..=cluster.node(3).last_index().0)
        .map(LogIndex)
        .filter(|index| {
            cluster
                .node(3)
                .entry(*index)
                .is_some_and(|entry| entry.term == Term(1))
        })
        .collect();
    assert!(
        stale_left.is_empty(),
        "term-1 entries past the snapshot on node 3: {stale_left:?}"
    );
    assert_eq!(
        cluster.node(3).last_index(),
        cluster.node(1).last_index(),
        "node 3 converged"
    );
    assert_eq!(
        cluster.node(3).commit_index(),
        cluster.node(1).commit_index()
    );
    assert_eq!(
        cluster.durable(3).base_index,
        snapshot.index,
        "storage starts after the snapshot"
    );
    let sent = install_snapshots_sent_to(&cluster, 3);
    assert!(
        (1..=2).contains(&sent),
        "the leader sent node 3 the snapshot {sent} times"
    );

    // A new write replicates to node 3 as ordinary entries.
    let proposal = cluster.propose_and_commit("after the snapshot");
    assert!(
        cluster.has_applied(3, proposal),
        "node 3 applied the write after the snapshot"
    );
}

#[test]
fn snapshot_below_the_commit_index_changes_nothing() {
    // A late or duplicated snapshot older than what a follower has committed leaves its log
    // alone, entries it acknowledged included.
    let mut cluster = Cluster::new(3);
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    propose_many(&mut cluster, 10);
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let last_before = cluster.node(follower).last_index();

    let snapshot = cluster.snapshot(leader, 0);
    let message = shardraft_raft::Message {
        from: NodeId(leader),
        to: NodeId(follower),
        term: cluster.node(leader).term(),
        body: MessageBody::InstallSnapshot {
            snapshot: shardraft_raft::SnapshotMeta {
                index: LogIndex(snapshot.index.0 - 4),
                ..snapshot.clone()
            },
        },
    };
    cluster.deliver(message);
    cluster.stabilize();
    assert_eq!(cluster.node(follower).last_index(), last_before);
    assert!(
        cluster
            .node(follower)
            .entry(LogIndex(snapshot.index.0 - 5))
            .is_some()
    );
}

#[test]
fn restart_with_snapshot_newer_than_term() {
    // A runtime stores a leader's snapshot before its core steps the `InstallSnapshot`,
    // but the newer term that the leader's messages brought is written by the core's next
    // batches. Node 3 crashes after storing the snapshot and before those batches are
    // durable. Its storage then contains a snapshot of a newer term than its hard state,
    // and it must still restart, in the snapshot's term and without a vote.
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 3);

    cluster.isolate(3);
    cluster.crash(1);
    cluster.restart(1);
    cluster.elect(2, ELECTION_TICKS);
    propose_many(&mut cluster, 5);
    let snapshot = cluster.snapshot(2, 0);
    let stored_term = cluster.durable(3).hard_state.term;
    assert!(
        stored_term < snapshot.term,
        "node 3 must not know the snapshot's term yet; it stored {stored_term}"
    );

    cluster.pause_persistence(3);
    cluster.heal();
    cluster.run_ticks(10);
    assert_eq!(
        cluster.durable(3).snapshot.as_ref(),
        Some(&snapshot),
        "node 3 stored the leader's snapshot"
    );
    assert_eq!(
        cluster.durable(3).hard_state.term,
        stored_term,
        "the new term is still unwritten"
    );

    cluster.crash(3);
    cluster.restart(3);
    assert_eq!(cluster.node(3).term(), snapshot.term);
    assert_eq!(cluster.node(3).hard_state().vote, None);
    assert_eq!(cluster.durable(3).hard_state.term, snapshot.term);
    assert_eq!(cluster.durable(3).base_index, snapshot.index);

    let proposal = cluster.propose_and_commit("after the restart");
    cluster.run_ticks(5);
    assert!(
        cluster.has_applied(3, proposal),
        "node 3 applied the write after the restart"
    );
}

// ----- a follower that lost its log but kept its identity -----

#[test]
fn wiped_follower_does_not_vote_until_caught_up() {
    // Node 3's data directory is wiped and it restarts with the same id while the leader
    // believes it has every committed entry. It must not crash-loop, must not vote while
    // it lacks the committed log, and must catch up again; no committed entry may be lost.
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 5);
    let committed = cluster.node(1).commit_index();

    cluster.crash(3);
    cluster.wipe(3);
    cluster.restart(3);
    assert!(
        cluster.node(3).is_catching_up(),
        "a node without data starts catching up"
    );

    // The leader dies before node 3 hears from it. Node 2 has every committed entry, but
    // node 3 cannot know that, so no leader may emerge from node 3's vote.
    cluster.crash(1);
    cluster.run_ticks(10 * ELECTION_TICKS / 4);
    assert_ne!(
        cluster.node(2).role(),
        Role::Leader,
        "node 2 won with the vote of a node without data"
    );
    assert_ne!(cluster.node(3).role(), Role::Leader, "the wiped node led");
    assert!(cluster.node(3).is_catching_up());

    // With node 1 back, a leader with the committed log replicates to node 3 again, which
    // then votes as before.
    cluster.restart(1);
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    assert_ne!(leader, 3);
    cluster.run_ticks(10);
    assert!(!cluster.node(3).is_catching_up(), "node 3 caught up");
    assert!(cluster.node(3).last_index() >= committed);
    for index in 1..=committed.0 {
        assert_eq!(
            cluster.node(3).entry(LogIndex(index)),
            cluster.node(leader).entry(LogIndex(index)),
            "entry {index} on node 3"
        );
    }
    let proposal = cluster.propose_and_commit("after the wipe");
    assert!(cluster.has_applied(3, proposal));
}

#[test]
fn removal_waits_until_a_wiped_voter_caught_up() {
    // Node 3 is wiped and catches up while an operator removes node 2. Had the leader
    // accepted, the group would be nodes 1 and 3, and once node 1 failed, node 3 would vote
    // for no candidate with a log and could not catch up without a leader: no leader ever
    // again. The leader rejects the removal until node 3 has the committed log.
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 5);
    cluster.crash(3);
    cluster.wipe(3);
    // Node 3 receives heartbeats but no entries, so it keeps catching up. Its responses to
    // the heartbeats show the leader that it lost its log.
    let no_entries_to_3 = cluster.add_drop_rule(|message| {
        message.to == NodeId(3)
            && matches!(
                message.body,
                MessageBody::AppendEntries { .. } | MessageBody::InstallSnapshot { .. }
            )
    });
    cluster.restart(3);
    cluster.run_ticks(10);
    assert!(cluster.node(3).is_catching_up());

    let rejection = cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(2) }, Bytes::new())
        .expect_err("removing node 2 while node 3 catches up");
    match rejection {
        MembershipChangeError::VotersBehind {
            removed,
            able,
            quorum,
            behind,
        } => {
            assert_eq!(removed, NodeId(2));
            assert_eq!(able, 1, "only the leader holds the committed log");
            assert_eq!(quorum, 2);
            assert_eq!(behind, vec![NodeId(3)]);
        }
        other => panic!("expected VotersBehind, got {other}"),
    }
    assert_eq!(voters(&cluster, 1), vec![1, 2, 3], "nothing changed");

    cluster.remove_drop_rule(no_entries_to_3);
    cluster.run_ticks(20);
    assert!(!cluster.node(3).is_catching_up(), "node 3 caught up");
    change_membership(&mut cluster, MembershipChange::Remove { node: NodeId(2) });
    assert_eq!(voters(&cluster, 1), vec![1, 3]);
    let proposal = cluster.propose_and_commit("after the removal");
    assert!(cluster.has_applied(3, proposal));
}

#[test]
fn removal_is_not_blocked_by_a_trailing_follower() {
    // Node 2's disk is slow, so its match index trails the commit index that nodes 1 and 3
    // reach. It lost no data and responds to every message, so it can still vote, and
    // removing node 3 goes ahead.
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 3);
    cluster.pause_persistence(2);
    propose_many(&mut cluster, 3);
    cluster.run_ticks(5);
    let committed = cluster.node(1).commit_index();
    assert!(
        cluster.node(2).last_index() >= committed,
        "node 2 received the entries"
    );
    let match_of_2 = cluster
        .node(1)
        .progress(NodeId(2))
        .expect("the leader tracks node 2")
        .match_index;
    assert!(
        match_of_2 < committed,
        "node 2 must trail the commit index for this test, at {match_of_2}"
    );

    let accepted = cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(3) }, Bytes::new());
    assert!(accepted.is_ok(), "removal refused: {accepted:?}");

    cluster.resume_persistence(2);
    cluster.stabilize();
    assert_eq!(voters(&cluster, 1), vec![1, 2]);
}

#[test]
fn wiped_follower_of_a_compacted_leader_catches_up_by_snapshot() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 12);
    let snapshot = cluster.snapshot(1, 2);

    cluster.crash(2);
    cluster.wipe(2);
    cluster.restart(2);
    cluster.clear_records();
    cluster.run_ticks(20);

    assert!(!cluster.node(2).is_catching_up(), "node 2 caught up");
    assert_eq!(
        install_snapshots_sent_to(&cluster, 2),
        1,
        "one snapshot transfer"
    );
    assert_eq!(
        cluster
            .durable(2)
            .snapshot
            .as_ref()
            .map(|stored| stored.index),
        Some(snapshot.index)
    );
    assert_eq!(cluster.node(2).last_index(), cluster.node(1).last_index());
    let stats = cluster.node(1).stats();
    assert!(
        stats.rejections_of_acknowledged_entries > 0,
        "the leader noticed that node 2 lost acknowledged entries"
    );
}

// ----- a removed node comes back -----

#[test]
fn node_removed_while_partitioned_cannot_disrupt() {
    // Node 3 is cut off, removed by the others, and then reconnects after campaigning for
    // many election timeouts. The group's term stays, and it keeps serving writes.
    for pre_vote in [true, false] {
        let mut cluster = Cluster::builder(3)
            .configure(move |config| config.pre_vote = pre_vote)
            .build();
        cluster.elect(1, ELECTION_TICKS);
        cluster.isolate(3);
        change_membership(&mut cluster, MembershipChange::Remove { node: NodeId(3) });
        cluster.propose_and_commit("removal committed");
        assert_eq!(voters(&cluster, 1), vec![1, 2]);
        let term_before = cluster.node(1).term();

        cluster.run_ticks(10 * ELECTION_TICKS / 4);
        cluster.heal();
        cluster.run_ticks(10 * ELECTION_TICKS / 4);

        let leader = cluster.leader().expect("a leader");
        assert!(
            leader == 1 || leader == 2,
            "pre_vote={pre_vote}: node {leader} leads"
        );
        let term_after = cluster.node(leader).term();
        assert!(
            term_after.0 <= term_before.0 + 1,
            "pre_vote={pre_vote}: the group's term rose from {term_before} to {term_after}"
        );
        let proposal = cluster.propose_and_commit("still serving");
        assert!(cluster.has_applied(2, proposal));
    }
}

#[test]
fn removing_the_leader_transfers_leadership_first() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    let term_before = cluster.node(1).term();

    let refused = cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(1) }, Bytes::new());
    let Err(MembershipChangeError::LeaderTransferring { leader, target }) = refused else {
        panic!("removing the leader gave {refused:?}");
    };
    assert_eq!(leader, NodeId(1));
    cluster.run_ticks(5);
    let new_leader = cluster.leader().expect("a leader after the transfer");
    assert_eq!(
        new_leader, target.0,
        "leadership moved to the transfer target"
    );
    assert_eq!(
        cluster.node(new_leader).term().0,
        term_before.0 + 1,
        "the transfer took one election"
    );

    change_membership(&mut cluster, MembershipChange::Remove { node: NodeId(1) });
    cluster.propose_and_commit("removal committed");
    cluster.run_ticks(10 * ELECTION_TICKS / 4);
    let leader = cluster.leader().expect("a leader");
    assert_ne!(leader, 1, "the removed node leads");
    assert_eq!(
        leader, new_leader,
        "the transfer target kept the leadership"
    );
    for node in 2..=3 {
        assert_eq!(
            cluster.node(node).term().0,
            term_before.0 + 1,
            "node {node}'s term rose after the transfer's election"
        );
    }
    assert!(!cluster.node(leader).membership().contains(NodeId(1)));
    let proposal = cluster.propose_and_commit("after");
    assert!(cluster.has_applied(leader, proposal));
}

// ----- membership changes of successive leaders -----

#[test]
fn new_leader_changes_membership_only_after_its_own_commit() {
    // A new leader may still hold an uncommitted change of an earlier leader; combining
    // another change with it could produce majorities that do not overlap. So it accepts a
    // change only once an entry of its own term has committed, and one change at a time.
    let mut cluster = Cluster::new(5);
    cluster.win_election(1, ELECTION_TICKS);
    let early = cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(5) }, Bytes::new());
    assert_eq!(early, Err(MembershipChangeError::LeaderNotReady));
    cluster.stabilize();

    let first = cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(5) }, Bytes::new())
        .expect("the leader accepts a change once its no-op committed");
    let second = cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(4) }, Bytes::new());
    assert_eq!(
        second,
        Err(MembershipChangeError::ChangePending { index: first.index })
    );
}

#[test]
fn uncommitted_change_of_a_failed_leader_is_replaced_safely() {
    // Leader 1 appends "remove 5" and reaches only node 2 before it is cut off. Node 3 wins
    // the next term without that change, must commit an entry of its own term before its own
    // change, and every node ends with one membership. Two leaders never share a term (the
    // harness checks election safety on every batch).
    let mut cluster = Cluster::new(5);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    for id in [3, 4, 5] {
        cluster.cut(1, id);
    }
    cluster
        .node_mut(1)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(5) }, Bytes::new())
        .expect("the change is accepted");
    cluster.stabilize();
    assert_eq!(
        voters(&cluster, 2),
        vec![1, 2, 3, 4],
        "node 2 holds the uncommitted change"
    );
    cluster.isolate(1);
    cluster.isolate(2);

    let mut new_leader = None;
    for _ in 0..ELECTION_TICKS {
        for id in [3, 4, 5] {
            cluster.tick(id);
            if cluster.node(id).role() == Role::Leader {
                new_leader = Some(id);
            }
        }
        if new_leader.is_some() {
            break;
        }
        let mut progressed = true;
        while progressed {
            progressed = cluster.process_all_readies() > 0;
            for id in [3, 4, 5] {
                if cluster.node(id).role() == Role::Leader {
                    new_leader = Some(id);
                }
            }
            if new_leader.is_some() {
                break;
            }
            progressed |= cluster.deliver_queued() > 0;
        }
        if new_leader.is_some() {
            break;
        }
    }
    let new_leader = new_leader.expect("a leader among nodes 3, 4 and 5");
    // Its no-op has not committed yet: it has not even handed out its first batch.
    let refused = cluster
        .node_mut(new_leader)
        .propose_membership_change(MembershipChange::Remove { node: NodeId(4) }, Bytes::new());
    assert_eq!(
        refused,
        Err(MembershipChangeError::LeaderNotReady),
        "a change before the new leader's own commit"
    );
    cluster.heal();
    change_membership(&mut cluster, MembershipChange::Remove { node: NodeId(4) });
    cluster.propose_and_commit("after");
    cluster.run_ticks(10);

    let leader = cluster.leader().expect("a leader");
    let expected = voters(&cluster, leader);
    for id in [1, 2, 3, 5] {
        assert_eq!(voters(&cluster, id), expected, "membership on node {id}");
    }
    assert!(!expected.contains(&4), "node 4 was removed: {expected:?}");
}

// ----- learners -----

#[test]
fn new_node_joins_as_learner_and_is_promoted_once_caught_up() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 30);
    cluster.snapshot(1, 5);
    cluster.add_node(4, &[1, 2, 3]);
    assert!(cluster.node(4).is_catching_up());

    change_membership(
        &mut cluster,
        MembershipChange::AddLearner {
            node: NodeId(4),
            promote_when_caught_up: true,
        },
    );
    cluster.run_ticks(20);

    assert_eq!(voters(&cluster, 1), vec![1, 2, 3, 4], "node 4 was promoted");
    assert_eq!(
        voters(&cluster, 4),
        vec![1, 2, 3, 4],
        "node 4 knows it votes"
    );
    assert!(!cluster.node(4).is_catching_up());
    assert_eq!(cluster.node(4).last_index(), cluster.node(1).last_index());
    let proposal = cluster.propose_and_commit("four voters");
    assert!(cluster.has_applied(4, proposal));
}

#[test]
fn voter_grants_its_vote_to_a_promoted_learner() {
    // Leader 1 promotes learner 3 while voter 2 is cut off, so node 2 still counts node 3 as
    // a learner. Node 1 then fails for good. Nodes 2 and 3 are two voters of three in
    // node 3's membership, so node 3 must win with node 2's vote.
    let mut cluster = Cluster::builder(2).learners(1).build();
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 3);
    cluster.cut_both(1, 2);
    change_membership(&mut cluster, MembershipChange::Promote { node: NodeId(3) });
    assert_eq!(
        voters(&cluster, 3),
        vec![1, 2, 3],
        "node 3 holds its promotion"
    );
    assert_eq!(
        voters(&cluster, 2),
        vec![1, 2],
        "node 2 missed the promotion"
    );

    cluster.crash(1);
    cluster.heal();
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    assert_eq!(
        leader, 3,
        "only node 3 can gather a majority of its membership"
    );
    let proposal = cluster.propose_and_commit("after the promotion");
    assert!(cluster.has_applied(2, proposal));
    assert_eq!(
        voters(&cluster, 2),
        vec![1, 2, 3],
        "node 2 learned the promotion"
    );
}

#[test]
fn learner_without_promotion_stays_a_learner() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.add_node(4, &[1, 2, 3]);
    change_membership(
        &mut cluster,
        MembershipChange::AddLearner {
            node: NodeId(4),
            promote_when_caught_up: false,
        },
    );
    propose_many(&mut cluster, 5);
    cluster.run_ticks(20);
    assert_eq!(voters(&cluster, 1), vec![1, 2, 3]);
    assert!(cluster.node(1).membership().learners.contains(&NodeId(4)));
    change_membership(&mut cluster, MembershipChange::Promote { node: NodeId(4) });
    assert_eq!(voters(&cluster, 1), vec![1, 2, 3, 4], "promoted by hand");
}

#[test]
fn restart_after_compaction_restores_membership_and_log() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.add_node(4, &[1, 2, 3]);
    change_membership(
        &mut cluster,
        MembershipChange::AddLearner {
            node: NodeId(4),
            promote_when_caught_up: true,
        },
    );
    propose_many(&mut cluster, 10);
    cluster.run_ticks(10);
    for id in 1..=4 {
        cluster.snapshot(id, 0);
    }
    propose_many(&mut cluster, 3);
    for id in 1..=4 {
        cluster.crash(id);
    }
    for id in 1..=4 {
        cluster.restart(id);
    }
    assert_eq!(
        voters(&cluster, 2),
        vec![1, 2, 3, 4],
        "membership from the snapshot"
    );
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    let proposal = cluster.propose_and_commit("after the restart");
    for id in 1..=4 {
        assert!(
            cluster.has_applied(id, proposal),
            "node {id} (leader {leader})"
        );
    }
}

// ----- single replicas driven message by message -----

fn entries_of_term(first: u64, last: u64, term: u64) -> Vec<Entry> {
    (first..=last)
        .map(|index| Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Normal,
            data: Bytes::from(format!("{index}@{term}")),
        })
        .collect()
}

fn message_from_leader(term: u64, body: MessageBody) -> shardraft_raft::Message {
    shardraft_raft::Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(term),
        body,
    }
}

/// Node 2 of a three-voter group, restored from `restored`.
fn follower(restored: RestoredState) -> shardraft_raft::RaftNode {
    let membership = shardraft_raft::Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let config = shardraft_raft::Config::new(NodeId(2), membership);
    shardraft_raft::RaftNode::new(config, restored).expect("valid node")
}

/// Takes every `Ready`, persists it at once and returns the messages it sent.
fn drain(node: &mut shardraft_raft::RaftNode) -> Vec<shardraft_raft::Message> {
    let mut sent = Vec::new();
    while let Some(ready) = node.ready() {
        sent.extend(ready.messages);
        node.on_persisted(ready.number);
        sent.extend(ready.messages_after_persist);
    }
    sent
}

fn snapshot_meta(index: u64, term: u64) -> shardraft_raft::SnapshotMeta {
    shardraft_raft::SnapshotMeta {
        index: LogIndex(index),
        term: Term(term),
        membership: shardraft_raft::Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

#[test]
fn snapshot_keeps_entries_acknowledged_in_the_same_batch() {
    // The follower accepts entries 4 to 10 and, before they are durable, installs a
    // snapshot at 6 from the same leader. Its acknowledgement of 10 leaves once the entries
    // are durable, so they must survive the install.
    let mut node = follower(restored(&[1, 1, 1], 1, 3));
    node.step(message_from_leader(
        2,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(3),
            prev_log_term: Term(1),
            entries: entries_of_term(4, 10, 2),
            leader_commit: LogIndex(3),
        },
    ))
    .expect("entries accepted");
    node.step(message_from_leader(
        2,
        MessageBody::InstallSnapshot {
            snapshot: snapshot_meta(6, 2),
        },
    ))
    .expect("snapshot accepted");
    let sent = drain(&mut node);
    assert_eq!(
        node.last_index(),
        LogIndex(10),
        "entries above the snapshot stay"
    );
    assert_eq!(node.persisted_index(), LogIndex(10));
    let acknowledged = sent
        .iter()
        .filter_map(|message| match message.body {
            MessageBody::AppendEntriesResponse {
                outcome: shardraft_raft::AppendOutcome::Accepted { match_index },
                ..
            } => Some(match_index),
            _ => None,
        })
        .max();
    assert_eq!(acknowledged, Some(LogIndex(10)));
}

#[test]
fn catching_up_ends_only_at_a_commit_of_the_leaders_term() {
    // A replica without data installs a snapshot at 3 and receives entries whose commit
    // index is of an earlier term: neither shows that its log holds everything committed.
    let mut node = follower(RestoredState::default());
    assert!(node.is_catching_up());
    node.step(message_from_leader(
        3,
        MessageBody::InstallSnapshot {
            snapshot: snapshot_meta(3, 2),
        },
    ))
    .expect("snapshot accepted");
    drain(&mut node);
    assert!(
        node.is_catching_up(),
        "a snapshot index is not the leader's commit index"
    );

    node.step(message_from_leader(
        3,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(3),
            prev_log_term: Term(2),
            entries: entries_of_term(4, 5, 2),
            leader_commit: LogIndex(5),
        },
    ))
    .expect("entries accepted");
    drain(&mut node);
    assert!(
        node.is_catching_up(),
        "commit index 5 is of term 2, and term 3 may have committed more"
    );

    node.step(message_from_leader(
        3,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(5),
            prev_log_term: Term(2),
            entries: entries_of_term(6, 6, 3),
            leader_commit: LogIndex(6),
        },
    ))
    .expect("entries accepted");
    let ready = node.ready().expect("a batch");
    node.on_persisted(ready.number);
    assert!(
        !node.is_catching_up(),
        "the leader committed an entry of its term"
    );
    let ready = node.ready().expect("the batch that reports it");
    assert!(
        ready.catch_up_ended,
        "storage learns that catching up ended"
    );
    assert_eq!(
        ready.hard_state.and_then(|hard_state| hard_state.vote),
        Some(NodeId(1)),
        "the vote of the term goes to its leader"
    );
}

#[test]
fn restart_while_catching_up_catches_up_again() {
    // The wiped node stores its first entries and restarts before it caught up. It is no
    // longer blank, but storage kept the mark, so it still does not vote.
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.max_entries_per_message = 2)
        .build();
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 5);
    cluster.crash(3);
    cluster.wipe(3);
    cluster.restart(3);
    // Only the first two entries reach node 3.
    let rule = cluster.add_drop_rule(|message| {
        message.to == NodeId(3)
            && matches!(&message.body, MessageBody::AppendEntries { entries, .. }
                if entries.iter().any(|entry| entry.index > LogIndex(2)))
    });
    cluster.run_ticks(10);
    assert_eq!(
        cluster.durable(3).last_index(),
        LogIndex(2),
        "node 3 stored entries 1 and 2"
    );
    assert!(
        cluster.durable(3).catching_up,
        "storage records that node 3 catches up"
    );

    cluster.crash(3);
    cluster.restart(3);
    assert!(
        cluster.node(3).is_catching_up(),
        "the restart kept catching up"
    );

    cluster.remove_drop_rule(rule);
    cluster.run_ticks(10);
    assert!(!cluster.node(3).is_catching_up());
    assert!(
        !cluster.durable(3).catching_up,
        "storage forgot the mark once caught up"
    );
}

#[test]
fn silent_learner_is_not_promoted() {
    // A learner that never responds stays a learner however short the log is: promoting it
    // would make the group wait for a node that may never come.
    let mut cluster = Cluster::new(1);
    cluster.elect(1, ELECTION_TICKS);
    cluster.add_node(2, &[1]);
    cluster.isolate(2);
    change_membership(
        &mut cluster,
        MembershipChange::AddLearner {
            node: NodeId(2),
            promote_when_caught_up: true,
        },
    );
    cluster.run_ticks(50);
    assert_eq!(
        voters(&cluster, 1),
        vec![1],
        "node 2 was promoted without answering"
    );
    assert_eq!(cluster.leader(), Some(1), "the single voter still leads");
}

#[test]
fn single_voter_replicates_after_term_durable() {
    // A single voter elects itself without a message. If its first messages of the new
    // term left before the term was durable, a crash would restart it in the previous
    // term. It would then lead the same term again with other entries at the same indexes.
    // The learner would keep the first entries, whose term matches, and apply other
    // commands than the voter.
    let mut cluster = Cluster::builder(1).learners(1).build();
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    cluster.crash(1);
    cluster.restart(1);
    assert_eq!(cluster.node(1).term(), Term(1));

    cluster.pause_persistence(1);
    cluster.win_election(1, ELECTION_TICKS);
    assert_eq!(cluster.node(1).term(), Term(2));
    cluster
        .node_mut(1)
        .propose(Bytes::from_static(b"lost"))
        .expect("the leader takes the proposal");
    cluster.process_all_readies();
    let early: Vec<String> = cluster
        .queued()
        .filter(|message| message.from == NodeId(1) && message.term == Term(2))
        .map(|message| message.body.kind_name().to_string())
        .collect();
    assert!(
        early.is_empty(),
        "node 1 sent {early:?} in term 2 before term 2 was durable"
    );
    cluster.stabilize();
    assert_eq!(
        cluster.durable(2).terms(),
        vec![1, 1],
        "the learner stored entries of the undurable term"
    );

    cluster.crash(1);
    cluster.restart(1);
    assert_eq!(cluster.node(1).term(), Term(1), "term 2 was never durable");
    cluster.elect(1, ELECTION_TICKS);
    assert_eq!(cluster.node(1).term(), Term(2), "node 1 leads term 2 again");
    let replacement = cluster.propose_and_commit("replacement");
    cluster.stabilize();
    assert!(
        cluster.has_applied(2, replacement),
        "the learner applied the new entry"
    );
    assert_eq!(cluster.durable(2).terms(), vec![1, 1, 2, 2]);

    // Once the term is durable, replication leaves at once again, in parallel with the
    // leader's own write.
    cluster.pause_persistence(1);
    cluster
        .node_mut(1)
        .propose(Bytes::from_static(b"parallel"))
        .expect("the leader takes the proposal");
    cluster.process_ready(1);
    assert!(
        cluster.queued().any(|message| message.to == NodeId(2)
            && matches!(message.body, MessageBody::AppendEntries { .. })),
        "the leader held its entries until its own write was durable"
    );
    cluster.resume_persistence(1);
    cluster.stabilize();
}

#[test]
fn single_voter_sends_snapshot_early() {
    // A snapshot holds only committed entries, so it may leave while the leader's new
    // term is not durable yet. The runtime sends snapshots by a path of their own and
    // finds them only among the messages that leave at once.
    let mut cluster = Cluster::builder(1).learners(1).build();
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 5);
    cluster.snapshot(1, 0);
    cluster.crash(1);
    cluster.restart(1);

    cluster.pause_persistence(1);
    cluster.win_election(1, ELECTION_TICKS);
    cluster.node_mut(1).report_unreachable(NodeId(2));
    let ready = cluster.take_ready(1).expect("the new leader has work");

    let kinds = |messages: &[shardraft_raft::Message]| -> Vec<&'static str> {
        messages
            .iter()
            .map(|message| message.body.kind_name())
            .collect()
    };
    assert!(
        kinds(&ready.messages).contains(&"InstallSnapshot"),
        "sent at once: {:?}",
        kinds(&ready.messages)
    );
    assert!(
        !kinds(&ready.messages_after_persist).contains(&"InstallSnapshot"),
        "held: {:?}",
        kinds(&ready.messages_after_persist)
    );
}

#[test]
fn deposed_leader_cannot_commit_through_wiped_node() {
    // Without check-quorum, node 1 keeps leading term 1 while it is cut off. Nodes 2 and 3
    // elect node 2 in term 2, and node 2 commits its no-op with node 3. Then node 2 goes
    // down and node 3 loses its disk, so only node 2 stores the no-op and no live node
    // stores term 2. If the blank node 3 acknowledges node 1's entries, node 1 commits an
    // entry of term 1 at the no-op's index.
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.check_quorum = false)
        .build();
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 3);

    cluster.isolate(1);
    cluster.elect(2, ELECTION_TICKS);
    cluster.stabilize();
    let no_op = cluster.node(2).commit_index();
    assert_eq!(
        cluster.node(2).entry(no_op).map(|entry| entry.term),
        Some(Term(2)),
        "node 2 committed its no-op"
    );
    assert_eq!(
        cluster.node(1).role(),
        Role::Leader,
        "node 1 still leads term 1"
    );

    cluster.crash(2);
    cluster.crash(3);
    cluster.wipe(3);
    cluster.restart(3);
    let proposal = cluster
        .node_mut(1)
        .propose(Bytes::from_static(b"from the deposed leader"))
        .expect("node 1 still accepts proposals");
    cluster.heal();
    // The harness checks state machine safety on every apply. If node 1 counted the blank
    // replica's acknowledgements, it would apply its entry at the no-op's index and the
    // harness would panic here.
    cluster.run_ticks(ELECTION_TICKS);

    assert!(
        !cluster.has_applied(1, proposal),
        "node 1 committed with the acknowledgement of a node that lost term 2"
    );
}

// ----- a leader holds back a catching-up follower -----

#[test]
fn catching_up_acknowledgements_do_not_commit() {
    // Node 2 is down and node 3 restarts without data. Node 3 stores the leader's next
    // entry, but its acknowledgement does not count, because it cannot tell this leader
    // from a deposed one. Once node 2 is back, the leader confirms its term, releases node
    // 3 and commits.
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.check_quorum = false)
        .build();
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 3);
    let committed = cluster.node(1).commit_index();

    cluster.crash(2);
    cluster.crash(3);
    cluster.wipe(3);
    cluster.restart(3);
    let proposal = cluster
        .node_mut(1)
        .propose(Bytes::from_static(b"after the wipe"))
        .expect("node 1 leads");
    cluster.run_ticks(ELECTION_TICKS);

    assert!(
        cluster.durable(3).last_index() >= proposal.index,
        "node 3 stored the entry"
    );
    assert_eq!(
        cluster.node(1).commit_index(),
        committed,
        "node 1 committed with the acknowledgement of a catching-up node"
    );
    let progress = cluster.node(1).progress(NodeId(3)).expect("node 3 tracked");
    assert!(progress.catching_up, "node 1 knows that node 3 catches up");
    assert!(!progress.counts_toward_quorum(), "node 3 is held back");
    assert!(cluster.node(3).is_catching_up(), "node 3 still catches up");
    assert_eq!(
        cluster.node(3).commit_index(),
        LogIndex(0),
        "node 3 was sent no commit index"
    );

    cluster.restart(2);
    cluster.run_ticks(20);
    assert!(cluster.has_applied(1, proposal), "node 1 committed");
    assert!(!cluster.node(3).is_catching_up(), "node 3 caught up");
    assert!(cluster.has_applied(3, proposal), "node 3 applied");
}

#[test]
fn wiped_voter_counts_again_once_caught_up() {
    // In a healthy group node 2 confirms the leader's term within a heartbeat round trip,
    // so the wiped node 3 catches up. Its acknowledgements then count again: the group
    // commits with node 2 down.
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 3);

    cluster.crash(3);
    cluster.wipe(3);
    cluster.restart(3);
    cluster.run_ticks(10);

    assert!(!cluster.node(3).is_catching_up(), "node 3 caught up");
    let progress = cluster.node(1).progress(NodeId(3)).expect("node 3 tracked");
    assert!(!progress.catching_up, "node 1 saw node 3 catch up");
    assert!(progress.counts_toward_quorum(), "node 3 released");

    cluster.crash(2);
    let proposal = cluster.propose_and_commit("with node 3's acknowledgement");
    assert!(cluster.has_applied(3, proposal), "node 3 applied");
}

#[test]
fn catching_up_replica_alone_confirms_no_read() {
    // With node 2 down, only the wiped node 3 acknowledges node 1's read round. That does not
    // prove node 1 still leads, so the read waits until node 2 is back.
    let mut cluster = Cluster::builder(3)
        .configure(|config| config.check_quorum = false)
        .build();
    cluster.elect(1, ELECTION_TICKS);
    propose_many(&mut cluster, 1);

    cluster.crash(2);
    cluster.crash(3);
    cluster.wipe(3);
    cluster.restart(3);
    cluster.run_ticks(10);
    cluster
        .node_mut(1)
        .read_index(7)
        .expect("node 1 accepts the read");
    cluster.run_ticks(ELECTION_TICKS);
    assert!(
        cluster.read_states(1).iter().all(|read| read.context != 7),
        "a read confirmed by a catching-up node only: {:?}",
        cluster.read_states(1)
    );

    cluster.restart(2);
    cluster.run_ticks(20);
    assert!(
        cluster.read_states(1).iter().any(|read| read.context == 7),
        "the read is confirmed once node 2 answers"
    );
}

#[test]
fn new_group_commits_with_voters_down() {
    // Nodes 4 and 5 are down when the new group starts. Nodes 1 to 3 are founding members,
    // which lost nothing, so their acknowledgements count from the start and a quorum of
    // them commits without waiting for the others.
    let mut cluster = Cluster::new(5);
    cluster.crash(4);
    cluster.crash(5);
    cluster.elect(1, ELECTION_TICKS);
    for id in 1..=3 {
        assert!(
            !cluster.node(id).is_catching_up(),
            "founding node {id} catches up"
        );
    }
    assert!(
        cluster.node(1).commit_index() >= LogIndex(1),
        "node 1 committed its no-op with nodes 2 and 3"
    );
    let proposal = cluster.propose_and_commit("with three of five voters");

    // Founding members that start late are still blank founders and take the log as usual.
    cluster.restart(4);
    cluster.restart(5);
    cluster.run_ticks(10);
    for id in 2..=5 {
        assert!(
            cluster.has_applied(id, proposal),
            "node {id} applied the entry"
        );
    }
}

#[test]
fn founder_that_heard_nothing_still_votes() {
    // Node 3 hears nothing from the first leader, which then fails. Node 3 is a blank
    // founding member that never voted or acknowledged an entry, so it may vote for node 2,
    // whose log has the committed entries. Had it caught up as a wiped node does, it
    // would reject node 2's longer log, node 2 would reject its empty one, and the two
    // healthy voters of three would elect no leader until node 1 returned.
    let mut cluster = Cluster::new(3);
    cluster.isolate(3);
    cluster.elect(1, ELECTION_TICKS);
    let before = cluster.propose_and_commit("committed by nodes 1 and 2");
    cluster.crash(1);
    cluster.heal();
    cluster.run_ticks(4 * ELECTION_TICKS);

    assert_eq!(cluster.leader(), Some(2), "node 2 leads without node 1");
    let after = cluster.propose_and_commit("committed by nodes 2 and 3");
    for id in 2..=3 {
        for proposal in [before, after] {
            assert!(
                cluster.has_applied(id, proposal),
                "node {id} applied {proposal:?}"
            );
        }
    }
}

#[test]
fn non_founding_group_waits_for_every_voter() {
    // Blank nodes that are not founding members cannot tell a new group from one whose
    // data they lost, so they catch up, and the first leader commits only once every voter
    // has responded. It keeps leading meanwhile, since its followers hold its no-op and
    // vote for no other candidate.
    let mut cluster = Cluster::builder(3).founding(false).build();
    cluster.isolate(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.run_ticks(ELECTION_TICKS);
    assert_eq!(cluster.node(1).role(), Role::Leader, "node 1 still leads");
    assert_eq!(
        cluster.node(1).commit_index(),
        LogIndex(0),
        "node 1 committed before node 3 answered"
    );
    assert!(cluster.node(2).is_catching_up(), "node 2 still catches up");

    cluster.heal();
    cluster.run_ticks(20);
    assert!(
        cluster.node(1).commit_index() >= LogIndex(1),
        "node 1 committed its no-op"
    );
    for id in 1..=3 {
        assert!(
            !cluster.node(id).is_catching_up(),
            "node {id} still catches up"
        );
    }
}
