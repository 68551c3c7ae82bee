//! Membership changes and leadership transfers through `NodeHandle`, on in-process
//! clusters with real logs and loopback sockets: a joining node added and promoted, and
//! the typed errors of every refused request.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use shardraft::config::{MemberConfig, NodeConfig};
use shardraft::kv::{Command, KvStateMachine};
use shardraft::log::GroupId;
use shardraft::membership::{MemberAddresses, MemberChange, MemberRole, MembershipScope};
use shardraft::node::{NodeError, ReadMode};
use shardraft::raft::NodeId;
use support::*;

const GROUP: GroupId = GroupId(0);

fn put(key: &str, value: &str) -> Bytes {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
    .expect("encoding a put")
}

/// Configs whose election timeout (1 to 2 s) leaves room to observe a leader that has
/// lost its followers before it steps down.
fn slow_election_configs(name: &str, nodes: u64, groups: u32) -> (TestDir, Vec<NodeConfig>) {
    let dir = test_dir(name);
    let mut configs = cluster_configs(&dir, nodes, 1, groups);
    for config in &mut configs {
        config.raft.election_timeout_ticks_min = 100;
        config.raft.election_timeout_ticks_max = 200;
        config.raft.heartbeat_interval_ticks = 5;
    }
    (dir, configs)
}

fn single(results: Vec<shardraft::node::GroupChangeResult>) -> Result<u64, NodeError> {
    assert_eq!(results.len(), 1, "one group was asked");
    results
        .into_iter()
        .next()
        .unwrap()
        .result
        .map(|index| index.0)
}

fn unused_addresses() -> MemberAddresses {
    MemberAddresses {
        peer: free_addresses(1)[0],
        client: None,
        http: None,
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn joining_node_is_promoted_and_replicated() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    let dir = test_dir("joining_node_is_promoted_and_replicated");
    let mut configs = cluster_configs(&dir, 3, 1, 2);
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    let leader = wait_for_leader(
        &handles.iter().collect::<Vec<_>>(),
        GROUP,
        Duration::from_secs(10),
    );
    let leader_handle = &handles[leader.0 as usize - 1];
    for i in 0..20 {
        leader_handle
            .propose(GROUP, put(&format!("before-{i}"), "x"))
            .expect("a put before the join");
    }

    let peer = free_addresses(1)[0];
    let mut joining = configs[0].clone();
    joining.node_id = 4;
    joining.join = true;
    joining.members.push(MemberConfig {
        id: 4,
        addresses: vec![peer],
    });
    joining.log.data_dir = dir.join("node-4");
    std::fs::create_dir_all(&joining.log.data_dir).unwrap();
    configs.push(joining.clone());
    let joined = start_node(&joining);
    let joined_handle = joined.handle();

    let add = MemberChange::AddLearner {
        node: NodeId(4),
        addresses: MemberAddresses {
            peer,
            client: None,
            http: None,
        },
        promote_when_caught_up: true,
    };
    let index = single(
        leader_handle
            .change_membership(MembershipScope::Group(GROUP), &add)
            .unwrap(),
    )
    .expect("adding node 4");
    assert!(index > 20, "the change follows the puts, at {index}");

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let membership = leader_handle.membership(GROUP).unwrap();
        let promoted = membership
            .members
            .iter()
            .any(|member| member.node == NodeId(4) && member.role == MemberRole::Voter);
        if promoted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 was not promoted within 10 s: {membership:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_until(
        "node 4 applied the earlier puts",
        Duration::from_secs(10),
        || {
            joined_handle
                .read(GROUP, ReadMode::Stale, |kv: &KvStateMachine| {
                    kv.get(b"before-19").is_some()
                })
                .unwrap()
        },
    );
    let membership = leader_handle.membership(GROUP).unwrap();
    let progress = membership
        .members
        .iter()
        .find(|member| member.node == NodeId(4))
        .unwrap();
    assert!(
        progress.match_index.is_some(),
        "the leader tracks node 4: {progress:?}"
    );
    assert_eq!(
        progress.addresses.as_ref().map(|addresses| addresses.peer),
        Some(peer),
        "the addresses travelled in the change"
    );
    // Node 4 followed the log: it sees itself as a voter too.
    wait_until("node 4 saw its promotion", Duration::from_secs(10), || {
        joined_handle
            .membership(GROUP)
            .unwrap()
            .members
            .iter()
            .any(|member| member.node == NodeId(4) && member.role == MemberRole::Voter)
    });
    // The other group never added node 4; it stays a learner there.
    let other = joined_handle.membership(GroupId(1)).unwrap();
    assert!(
        other
            .members
            .iter()
            .any(|member| member.node == NodeId(4) && member.role != MemberRole::Voter),
        "{other:?}"
    );
    joined.shutdown().unwrap();
    for node in nodes {
        node.shutdown().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refused_changes_and_transfers_have_typed_errors() {
    let (_dir, configs) =
        slow_election_configs("refused_changes_and_transfers_have_typed_errors", 3, 1);
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    let leader = wait_for_leader(
        &handles.iter().collect::<Vec<_>>(),
        GROUP,
        Duration::from_secs(20),
    );
    let leader_handle = &handles[leader.0 as usize - 1];
    let follower_handle = handles
        .iter()
        .find(|handle| handle.node_id() != leader)
        .unwrap();
    let scope = MembershipScope::Group(GROUP);

    let remove_nine = MemberChange::Remove { node: NodeId(9) };
    let error = single(
        follower_handle
            .change_membership(scope, &remove_nine)
            .unwrap(),
    )
    .unwrap_err();
    assert!(
        matches!(error, NodeError::NotLeader { leader: Some(found), .. } if found == leader),
        "{error}"
    );
    let led = follower_handle
        .change_membership(MembershipScope::Led, &remove_nine)
        .unwrap();
    assert!(led.is_empty(), "a follower leads no group: {led:?}");

    let error = single(
        leader_handle
            .change_membership(scope, &remove_nine)
            .unwrap(),
    )
    .unwrap_err();
    assert!(matches!(error, NodeError::InvalidChange { .. }), "{error}");
    let add_two = MemberChange::AddLearner {
        node: follower_handle.node_id(),
        addresses: unused_addresses(),
        promote_when_caught_up: false,
    };
    let error = single(leader_handle.change_membership(scope, &add_two).unwrap()).unwrap_err();
    assert!(matches!(error, NodeError::InvalidChange { .. }), "{error}");
    assert!(matches!(
        leader_handle.change_membership(MembershipScope::Group(GroupId(7)), &add_two),
        Err(NodeError::UnknownGroup { .. })
    ));

    let error = leader_handle
        .transfer_leadership(GROUP, NodeId(9))
        .unwrap_err();
    assert!(
        matches!(error, NodeError::InvalidTransfer { .. }),
        "{error}"
    );
    leader_handle
        .transfer_leadership(GROUP, leader)
        .expect("the leader already leads");

    // A learner that never connects: its addition commits, it is never promoted.
    let add_nine = MemberChange::AddLearner {
        node: NodeId(9),
        addresses: unused_addresses(),
        promote_when_caught_up: false,
    };
    single(leader_handle.change_membership(scope, &add_nine).unwrap()).expect("adding a learner");
    let error = single(leader_handle.change_membership(scope, &add_nine).unwrap()).unwrap_err();
    assert!(matches!(error, NodeError::InvalidChange { .. }), "{error}");

    // Removing the leader hands leadership to a follower first.
    let remove_leader = MemberChange::Remove { node: leader };
    let error = single(
        leader_handle
            .change_membership(scope, &remove_leader)
            .unwrap(),
    )
    .unwrap_err();
    let NodeError::LeaderTransferring { target, .. } = error else {
        panic!("removing the leader: {error}");
    };
    assert_ne!(target, leader);
    let target_handle = &handles[target.0 as usize - 1];
    wait_for_leader(
        &handles.iter().collect::<Vec<_>>(),
        GROUP,
        Duration::from_secs(20),
    );
    let mut removed = None;
    wait_until(
        "the new leader removed the old one",
        Duration::from_secs(20),
        || match target_handle
            .change_membership(scope, &remove_leader)
            .unwrap()
            .pop()
        {
            Some(result) => {
                removed = result.result.ok();
                removed.is_some()
            }
            None => false,
        },
    );
    let membership = target_handle.membership(GROUP).unwrap();
    assert!(
        !membership
            .members
            .iter()
            .any(|member| member.node == leader),
        "{membership:?}"
    );

    // With its one remaining follower stopped, the new leader cannot commit: a change
    // waits, and the next one finds it pending.
    let last_follower = handles
        .iter()
        .position(|handle| handle.node_id() != leader && handle.node_id() != target)
        .unwrap();
    let mut nodes: Vec<Option<KvNode>> = nodes.into_iter().map(Some).collect();
    nodes[last_follower].take().unwrap().kill();
    let waiting_handle = target_handle.clone();
    let waiting = std::thread::spawn(move || {
        let remove = MemberChange::Remove { node: NodeId(9) };
        waiting_handle.change_membership(MembershipScope::Group(GROUP), &remove)
    });
    let mut pending = None;
    wait_until(
        "the first change was appended",
        Duration::from_secs(5),
        || {
            pending = target_handle.membership(GROUP).unwrap().pending_change;
            pending.is_some()
        },
    );
    let promote = MemberChange::Promote { node: NodeId(9) };
    let error = single(target_handle.change_membership(scope, &promote).unwrap()).unwrap_err();
    assert!(
        matches!(error, NodeError::ChangePending { index, .. } if Some(index) == pending),
        "{error}"
    );
    let first = waiting.join().unwrap().unwrap().pop().unwrap();
    assert!(
        matches!(
            first.result,
            Err(NodeError::Timeout { .. } | NodeError::ProposalDropped { .. })
        ),
        "{:?}",
        first.result
    );
    for node in nodes.into_iter().flatten() {
        node.kill();
    }
}
