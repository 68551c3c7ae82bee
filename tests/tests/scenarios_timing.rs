//! Scenario tests of a group's agreed timing: the heartbeat interval and election timeout
//! range that a leader changes through the log (`MembershipChange::SetTiming`), so that
//! every replica switches at the same log index instead of running inconsistent election
//! settings.

use bytes::Bytes;
use shardraft_raft::{
    GroupTiming, InvalidChange, MembershipChange, MembershipChangeError, MessageBody, NodeId, Role,
};
use shardraft_tests::harness::Cluster;

/// Generous bound on the ticks any election below needs (the harness's default election
/// timeout is 10 to 20 ticks).
const ELECTION_TICKS: u32 = 200;

/// The harness's configured timing: `Config::new`'s defaults.
const CONFIGURED: GroupTiming = GroupTiming {
    heartbeat_interval_ticks: 2,
    election_timeout_ticks_min: 10,
    election_timeout_ticks_max: 20,
};

const SHORT: GroupTiming = GroupTiming {
    heartbeat_interval_ticks: 1,
    election_timeout_ticks_min: 4,
    election_timeout_ticks_max: 6,
};

const LONG: GroupTiming = GroupTiming {
    heartbeat_interval_ticks: 5,
    election_timeout_ticks_min: 20,
    election_timeout_ticks_max: 40,
};

fn set_timing(cluster: &mut Cluster, leader: u64, timing: GroupTiming) {
    cluster
        .node_mut(leader)
        .propose_membership_change(MembershipChange::SetTiming { timing }, Bytes::new())
        .unwrap_or_else(|error| panic!("leader {leader} rejected {timing}: {error}"));
    cluster.stabilize();
}

/// Heartbeats that `from` sent to `to` since the records were last cleared.
fn heartbeats(cluster: &Cluster, from: u64, to: u64) -> usize {
    cluster
        .sent()
        .iter()
        .filter(|message| {
            message.from == NodeId(from)
                && message.to == NodeId(to)
                && matches!(message.body, MessageBody::Heartbeat { .. })
        })
        .count()
}

#[test]
fn timing_change_reaches_every_replica() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    for id in 1..=3 {
        assert_eq!(cluster.node(id).timing(), CONFIGURED, "node {id} before");
    }

    set_timing(&mut cluster, 1, SHORT);
    cluster.propose_and_commit("after");

    for id in 1..=3 {
        assert_eq!(cluster.node(id).timing(), SHORT, "node {id} after");
        assert_eq!(cluster.node(id).membership().timing, Some(SHORT));
        assert_eq!(cluster.node(id).membership().voters.len(), 3);
    }
}

#[test]
fn invalid_timing_is_rejected() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("ready");
    let cases = [
        (0, 10, 20, "a heartbeat of 0 ticks"),
        (4, 10, 20, "a heartbeat above a third of the minimum"),
        (1, 10, 10, "a maximum equal to the minimum"),
    ];
    for (heartbeat, min, max, case) in cases {
        let timing = GroupTiming {
            heartbeat_interval_ticks: heartbeat,
            election_timeout_ticks_min: min,
            election_timeout_ticks_max: max,
        };
        let result = cluster
            .node_mut(1)
            .propose_membership_change(MembershipChange::SetTiming { timing }, Bytes::new());
        assert!(
            matches!(
                result,
                Err(MembershipChangeError::Invalid(
                    InvalidChange::InvalidTiming { .. }
                ))
            ),
            "{case}: {result:?}"
        );
    }
    assert_eq!(cluster.node(1).timing(), CONFIGURED);
}

#[test]
fn leader_keeps_short_heartbeat_until_voters_append() {
    // Node 3 does not receive the change that lengthens the heartbeat, so it still times
    // out after 10 to 20 ticks. The leader must keep heartbeating every 2 ticks.
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    cluster.cut(1, 3);
    set_timing(&mut cluster, 1, LONG);
    assert_eq!(cluster.node(1).timing(), LONG);
    assert_eq!(cluster.node(3).timing(), CONFIGURED);

    cluster.clear_records();
    for _ in 0..20 {
        cluster.tick(1);
        cluster.stabilize();
    }
    let held = heartbeats(&cluster, 1, 2);
    assert!(
        held >= 9,
        "{held} heartbeats in 20 ticks while node 3 lacks the change"
    );

    cluster.heal();
    cluster.propose_and_commit("node 3 appends the change");
    assert_eq!(cluster.node(3).timing(), LONG);
    cluster.clear_records();
    for _ in 0..20 {
        cluster.tick(1);
        cluster.stabilize();
    }
    let lengthened = heartbeats(&cluster, 1, 2);
    assert!(
        (3..=5).contains(&lengthened),
        "{lengthened} heartbeats in 20 ticks once every voter has the change"
    );
}

#[test]
fn truncated_timing_change_falls_back() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    cluster.isolate(1);
    set_timing(&mut cluster, 1, SHORT);
    assert_eq!(cluster.node(1).timing(), SHORT, "in force once appended");

    // Nodes 2 and 3 elect a leader without the change; node 1 then drops it.
    for _ in 0..ELECTION_TICKS {
        cluster.tick(2);
        cluster.tick(3);
        cluster.stabilize();
        if cluster.node(2).role() == Role::Leader || cluster.node(3).role() == Role::Leader {
            break;
        }
    }
    cluster.heal();
    // Heartbeats reach node 1 on the leader's ticks and make it follow, and the entries it
    // then receives replace its uncommitted change.
    cluster.run_ticks(2 * CONFIGURED.election_timeout_ticks_max);
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    assert_ne!(leader, 1);
    cluster.propose_and_commit("after");
    assert_eq!(cluster.node(1).role(), Role::Follower);

    assert_eq!(cluster.node(1).timing(), CONFIGURED);
    assert_eq!(cluster.node(1).membership().timing, None);
}

#[test]
fn shorter_agreed_timeout_campaigns_sooner() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    set_timing(&mut cluster, 1, SHORT);
    cluster.propose_and_commit("every replica has the change");

    cluster.crash(1);
    cluster.clear_records();
    let mut ticks = 0;
    let campaigned = |cluster: &Cluster| {
        cluster
            .sent()
            .iter()
            .any(|message| matches!(message.body, MessageBody::PreVote { .. }))
    };
    while !campaigned(&cluster) {
        cluster.tick(2);
        cluster.tick(3);
        cluster.stabilize();
        ticks += 1;
        assert!(ticks < 100, "no campaign within 100 ticks");
    }
    // The agreed timeout is 4 to 6 ticks after the last heartbeat; with the configured
    // timing no follower could campaign before 10.
    assert!(
        ticks <= SHORT.election_timeout_ticks_max,
        "first campaign after {ticks} ticks"
    );
    let leader = cluster.run_until_leader(ELECTION_TICKS);
    assert_ne!(leader, 1);
}

#[test]
fn timing_survives_snapshot_and_restart() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    cluster.cut_both(1, 3);
    cluster.cut_both(2, 3);
    set_timing(&mut cluster, 1, SHORT);
    for value in 0..20 {
        cluster.propose_and_commit(format!("v{value}"));
    }
    // Node 3 can catch up only from a snapshot, which carries the timing.
    cluster.snapshot(1, 0);
    cluster.snapshot(2, 0);
    cluster.heal();
    cluster.propose_and_commit("after the snapshot");
    assert_eq!(
        cluster.node(3).timing(),
        SHORT,
        "installed from the snapshot"
    );

    cluster.crash(2);
    cluster.restart(2);
    assert_eq!(
        cluster.node(2).timing(),
        SHORT,
        "restored from snapshot and log"
    );
}

#[test]
fn rejected_vote_request_does_not_postpone_election() {
    // A candidate whose log cannot win raises the term of the voters it asks, but only a
    // granted vote or a leader's message may restart their election timers. Otherwise a
    // stale candidate with a shorter election timeout (an uncommitted timing change it
    // still holds) would keep every other voter from ever campaigning.
    let mut cluster = Cluster::builder(3)
        .configure(|config| {
            config.pre_vote = false;
            config.check_quorum = false;
        })
        .build();
    cluster.elect(1, ELECTION_TICKS);
    cluster.propose_and_commit("before");
    cluster.isolate(3);
    cluster.propose_and_commit("node 3 lacks this one");
    cluster.crash(1);
    for _ in 0..5 {
        cluster.tick(2);
        cluster.stabilize();
    }
    let elapsed_before = cluster.node(2).election_elapsed_ticks();
    let term_before = cluster.node(2).term();

    cluster.heal();
    let mut ticks = 0;
    while cluster.node(2).term() == term_before {
        cluster.tick(3);
        cluster.stabilize();
        ticks += 1;
        assert!(
            ticks < ELECTION_TICKS,
            "node 3 never asked node 2 for a vote"
        );
    }

    assert_eq!(cluster.node(2).role(), Role::Follower);
    assert_eq!(cluster.node(2).election_elapsed_ticks(), elapsed_before);
    assert_eq!(
        cluster.node(3).role(),
        Role::Candidate,
        "node 2 rejected the vote"
    );
}
