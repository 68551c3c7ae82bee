//! Clusters in this test process, mostly of three nodes: each node with its own executors, log
//! directory and real TCP sockets on loopback.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use shardraft::config::InitialClusterState;
use shardraft::kv::{Command, KvStateMachine, WriteOutcome};
use shardraft::log::GroupId;
use shardraft::node::{NodeError, ReadMode};
use support::*;

fn put(key: &str, value: &str) -> Bytes {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
    .expect("encoding a put")
}

fn get(handle: &KvHandle, group: GroupId, key: &str, mode: ReadMode) -> Option<Vec<u8>> {
    let key = key.as_bytes().to_vec();
    handle
        .read(group, mode, move |kv: &KvStateMachine| {
            kv.get(&key).map(|value| value.value.to_vec())
        })
        .expect("reading a key")
}

#[test]
fn new_cluster_commits_with_three_of_five_nodes() {
    // Nodes 4 and 5 of a new five-node cluster are down at its start. Nodes 1 to 3 start
    // with the default `initial_cluster_state = "new"`, as founding members whose
    // acknowledgements count at once, so every group commits with the three of them.
    let dir = test_dir("new_cluster_commits_with_three_of_five_nodes");
    let mut configs = cluster_configs(&dir, 5, 1, 2);
    let mut nodes: Vec<KvNode> = configs[..3].iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    let groups = [GroupId(0), GroupId(1)];

    for group in groups {
        let leader = wait_for_leader(
            &handles.iter().collect::<Vec<_>>(),
            group,
            Duration::from_secs(10),
        );
        let applied = handles[leader.0 as usize - 1]
            .propose(group, put("founded", "yes"))
            .unwrap_or_else(|error| panic!("group {group} did not commit: {error}"));
        let outcome = applied.output.expect("the put applies").outcome;
        assert_eq!(outcome, WriteOutcome::Stored, "group {group}");
    }
    for config in &configs[..3] {
        let marks = std::fs::read_dir(config.log.data_dir.join("catching-up"))
            .expect("reading the catching-up marks")
            .count();
        assert_eq!(
            marks, 0,
            "founding node {} marked a group as catching up",
            config.node_id
        );
    }

    // Node 4 starts late, as a node of an existing cluster. It catches up and applies the
    // entries the others committed.
    configs[3].initial_cluster_state = InitialClusterState::Existing;
    nodes.push(start_node(&configs[3]));
    let late = nodes[3].handle();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for group in groups {
        while get(&late, group, "founded", ReadMode::Stale).is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "node 4 never applied the entry of group {group}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for node in nodes {
        node.shutdown().expect("shutting down");
    }
}

#[test]
fn three_nodes_elect_replicate_and_apply() {
    let dir = test_dir("three_nodes_elect_replicate_and_apply");
    let configs = cluster_configs(&dir, 3, 1, 1);
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    let group = GroupId(0);

    let leader = wait_for_leader(
        &handles.iter().collect::<Vec<_>>(),
        group,
        Duration::from_secs(10),
    );
    let leader_handle = &handles[leader.0 as usize - 1];
    for i in 0..50 {
        let applied = leader_handle
            .propose(group, put(&format!("key-{i}"), &format!("value-{i}")))
            .expect("proposing a put");
        let outcome = applied.output.expect("the put applies").outcome;
        assert_eq!(outcome, WriteOutcome::Stored, "put {i}");
    }

    let value = get(leader_handle, group, "key-49", ReadMode::Linearizable);
    assert_eq!(value.as_deref(), Some(&b"value-49"[..]));
    let follower = handles
        .iter()
        .find(|handle| handle.node_id() != leader)
        .unwrap();
    let error = follower
        .read(group, ReadMode::Linearizable, |_: &KvStateMachine| ())
        .unwrap_err();
    assert!(
        matches!(error, NodeError::NotLeader { leader: Some(found), .. } if found == leader),
        "{error}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(follower, group, "key-49", ReadMode::Stale).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower never applied key-49"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for node in nodes {
        node.shutdown().expect("shutting down");
    }
}

/// Proposes to whichever node leads `group`, following `NotLeader` errors, until the
/// proposal is applied or `timeout` passes.
fn propose_anywhere(
    handles: &[KvHandle],
    group: GroupId,
    command: Bytes,
    timeout: Duration,
) -> shardraft::raft::LogIndex {
    let deadline = std::time::Instant::now() + timeout;
    let mut target = 0;
    loop {
        match handles[target % handles.len()].propose(group, command.clone()) {
            Ok(applied) => return applied.index,
            Err(NodeError::NotLeader {
                leader: Some(leader),
                ..
            }) => {
                if let Some(position) = handles.iter().position(|h| h.node_id() == leader) {
                    target = position;
                } else {
                    target += 1;
                }
            }
            Err(_) => target += 1,
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no node applied the proposal to group {group} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_value(handle: &KvHandle, group: GroupId, key: &str, expected: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if get(handle, group, key, ReadMode::Stale).as_deref() == Some(expected.as_bytes()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {} never applied {key} = {expected}",
            handle.node_id().0
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn writes_continue_after_leader_is_killed_and_old_leader_catches_up() {
    let dir = test_dir("writes_continue_after_leader_is_killed");
    let configs = cluster_configs(&dir, 3, 1, 1);
    let mut nodes: Vec<Option<KvNode>> = configs.iter().map(|c| Some(start_node(c))).collect();
    let group = GroupId(0);
    let handles = |nodes: &[Option<KvNode>]| -> Vec<KvHandle> {
        nodes.iter().flatten().map(|node| node.handle()).collect()
    };
    let all = handles(&nodes);
    let first_leader = wait_for_leader(
        &all.iter().collect::<Vec<_>>(),
        group,
        Duration::from_secs(10),
    );
    for i in 0..20 {
        propose_anywhere(
            &all,
            group,
            put(&format!("before-{i}"), "1"),
            Duration::from_secs(10),
        );
    }

    let killed = first_leader.0 as usize - 1;
    nodes[killed].take().expect("the leader runs").kill();
    let survivors = handles(&nodes);
    let second_leader = wait_for_leader(
        &survivors.iter().collect::<Vec<_>>(),
        group,
        Duration::from_secs(10),
    );
    assert_ne!(second_leader, first_leader, "a killed node cannot lead");
    for i in 0..20 {
        propose_anywhere(
            &survivors,
            group,
            put(&format!("after-{i}"), "2"),
            Duration::from_secs(10),
        );
    }

    nodes[killed] = Some(start_node(&configs[killed]));
    let restarted = nodes[killed].as_ref().unwrap().handle();
    wait_for_value(&restarted, group, "after-19", "2");
    wait_for_value(&restarted, group, "before-0", "1");
    for node in nodes.into_iter().flatten() {
        node.shutdown().expect("shutting down");
    }
}

#[test]
fn acknowledged_writes_survive_killing_every_node() {
    let dir = test_dir("acknowledged_writes_survive_killing_every_node");
    let configs = cluster_configs(&dir, 3, 1, 2);
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    let mut acknowledged = Vec::new();
    for i in 0..60 {
        let group = GroupId(i % 2);
        let key = format!("key-{i}");
        propose_anywhere(
            &handles,
            group,
            put(&key, &format!("v{i}")),
            Duration::from_secs(10),
        );
        acknowledged.push((group, key, format!("v{i}")));
    }
    for node in nodes {
        node.kill();
    }

    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    for group in [GroupId(0), GroupId(1)] {
        let leader = wait_for_leader(
            &handles.iter().collect::<Vec<_>>(),
            group,
            Duration::from_secs(10),
        );
        let leader = &handles[leader.0 as usize - 1];
        for (key_group, key, value) in &acknowledged {
            if *key_group != group {
                continue;
            }
            let found = get(leader, group, key, ReadMode::Linearizable);
            assert_eq!(
                found.as_deref(),
                Some(value.as_bytes()),
                "{key} after restarting all nodes"
            );
        }
    }
    for node in nodes {
        node.shutdown().expect("shutting down");
    }
}

#[test]
fn sixty_four_groups_on_two_shards_work_at_once() {
    let dir = test_dir("sixty_four_groups_on_two_shards");
    let configs = cluster_configs(&dir, 3, 2, 64);
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();

    let writers: Vec<std::thread::JoinHandle<()>> = (0..4)
        .map(|writer| {
            let handles = handles.clone();
            std::thread::spawn(move || {
                for group in (writer..64).step_by(4) {
                    let group = GroupId(group);
                    let key = format!("group-{}", group.0);
                    propose_anywhere(&handles, group, put(&key, "ok"), Duration::from_secs(20));
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer thread panicked");
    }

    let status = handles[0].status().expect("reading status");
    assert_eq!(status.shards.len(), 2, "two shards");
    for shard in &status.shards {
        assert_eq!(
            shard.groups.len(),
            32,
            "shard {} hosts 32 groups",
            shard.shard
        );
        for group in &shard.groups {
            assert_eq!(
                group.group.0 % 2,
                shard.shard,
                "group {} on its shard",
                group.group
            );
        }
    }
    for group in 0..64 {
        for handle in &handles {
            wait_for_value(handle, GroupId(group), &format!("group-{group}"), "ok");
        }
    }
    for node in nodes {
        node.shutdown().expect("shutting down");
    }
}

#[test]
fn proposers_return_when_node_stops() {
    // Requests still queued for a shard when it stops must fail with `Stopped`; none may
    // wait forever. Proposers keep the shards' channels full while the node stops, both
    // as a crash and cleanly, several times.
    const PROPOSERS: usize = 4;
    for round in 0..6 {
        let dir = test_dir("proposers_return_when_node_stops");
        let configs = cluster_configs(&dir, 1, 1, 1);
        let node = start_node(&configs[0]);
        let handle = node.handle();
        wait_for_leader(&[&handle], GroupId(0), Duration::from_secs(10));
        let stop = Arc::new(AtomicBool::new(false));
        let (finished, finishes) = std::sync::mpsc::channel();
        for _ in 0..PROPOSERS {
            let handle = handle.clone();
            let stop = Arc::clone(&stop);
            let finished = finished.clone();
            std::thread::spawn(move || {
                let mut last = Ok(());
                while !stop.load(Ordering::Relaxed) {
                    last = handle
                        .propose(GroupId(0), Bytes::from_static(b"not a command"))
                        .map(|_| ());
                }
                let _ = finished.send(last);
            });
        }
        std::thread::sleep(Duration::from_millis(50));
        if round % 2 == 0 {
            node.kill();
        } else {
            node.shutdown().expect("a clean shutdown");
        }
        stop.store(true, Ordering::Relaxed);

        for _ in 0..PROPOSERS {
            let last = finishes.recv_timeout(Duration::from_secs(15));
            assert!(
                last.is_ok(),
                "round {round}: a proposer waited forever after the node stopped"
            );
        }
        let after = handle.propose(GroupId(0), Bytes::from_static(b"late"));
        assert!(matches!(after, Err(NodeError::Stopped)), "{after:?}");
    }
}

/// Kills the leader of a three-node cluster whose election timeout is 2 to 4 s and returns
/// whether a survivor committed a write within `wait`, which is shorter than the timeout.
fn survivors_commit_after_leader_kill(
    name: &str,
    campaign_when_leader_down: bool,
    wait: Duration,
) -> bool {
    let dir = test_dir(name);
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    for config in &mut configs {
        config.raft.election_timeout_ticks_min = 200;
        config.raft.election_timeout_ticks_max = 400;
        config.raft.campaign_when_leader_down = campaign_when_leader_down;
    }
    let mut nodes: Vec<Option<KvNode>> = configs.iter().map(|c| Some(start_node(c))).collect();
    let group = GroupId(0);
    let all: Vec<KvHandle> = nodes.iter().flatten().map(|node| node.handle()).collect();
    let leader = wait_for_leader(
        &all.iter().collect::<Vec<_>>(),
        group,
        Duration::from_secs(20),
    );
    propose_anywhere(&all, group, put("before", "1"), Duration::from_secs(10));

    nodes[leader.0 as usize - 1]
        .take()
        .expect("the leader runs")
        .kill();
    let killed_at = std::time::Instant::now();
    let survivors: Vec<KvHandle> = nodes.iter().flatten().map(|node| node.handle()).collect();
    let mut committed = false;
    while !committed && killed_at.elapsed() < wait {
        committed = survivors.iter().any(|handle| {
            handle
                .propose(group, put("after", "2"))
                .is_ok_and(|applied| applied.output.is_ok())
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    for node in nodes.into_iter().flatten() {
        node.shutdown().expect("shutting down");
    }
    committed
}

#[test]
fn leader_kill_elects_before_timeout() {
    // The killed leader's connections close and its port refuses new ones, which shows
    // the followers that it is down: one of them leads and commits long before the 2 s
    // minimum election timeout.
    assert!(
        survivors_commit_after_leader_kill(
            "leader_kill_elects_before_timeout",
            true,
            Duration::from_millis(1500),
        ),
        "no survivor committed within 1.5 s of the kill"
    );
}

#[test]
fn leader_kill_waits_when_campaign_off() {
    // The same kill with `campaign_when_leader_down` off: within 1.5 s, below the minimum
    // election timeout, no survivor can have been elected.
    assert!(
        !survivors_commit_after_leader_kill(
            "leader_kill_waits_when_campaign_off",
            false,
            Duration::from_millis(1500),
        ),
        "a survivor committed before any election timeout passed"
    );
}
