//! Restarts after members were added at runtime, on in-process clusters with real disk
//! logs and loopback sockets. A restarted node reads the addresses of members whose change
//! entries were compacted into snapshots from its member address file. A corrupt file
//! stops the start with an error that names it, and a memory node writes no file.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use shardraft::config::{MemberConfig, NodeConfig};
use shardraft::kv::{Command, KvStateMachine};
use shardraft::log::GroupId;
use shardraft::membership::{MemberAddresses, MemberChange, MemberRole, MembershipScope};
use shardraft::metrics::NodeMetrics;
use shardraft::node::{Node, NodeError, ReadMode};
use shardraft::raft::NodeId;
use support::*;

const GROUPS: u32 = 2;
/// Entries a group applies between two snapshots.
const TRIGGER_ENTRIES: u64 = 20;
/// Name of the member address file inside a node's data directory.
const ADDRESS_FILE: &str = "member-addresses";

fn put(key: &str, value: &str) -> Bytes {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
    .expect("encoding a put")
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proposes `command` to `group` at whichever of `handles` leads, following `NotLeader`,
/// until it applies or `timeout` passes.
fn propose_anywhere(
    handles: &[KvHandle],
    group: GroupId,
    command: Bytes,
    timeout: Duration,
) -> Result<(), NodeError> {
    let deadline = Instant::now() + timeout;
    let mut target = 0;
    loop {
        let error = match handles[target % handles.len()].propose(group, command.clone()) {
            Ok(_) => return Ok(()),
            Err(error) => error,
        };
        target = match &error {
            NodeError::NotLeader {
                leader: Some(leader),
                ..
            } => handles
                .iter()
                .position(|handle| handle.node_id() == *leader)
                .unwrap_or(target + 1),
            _ => target + 1,
        };
        if Instant::now() >= deadline {
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn snapshots_taken(handle: &KvHandle) -> u64 {
    let metrics: NodeMetrics = handle
        .metrics(Duration::from_secs(5))
        .expect("reading metrics");
    metrics
        .shards
        .iter()
        .map(|shard| shard.snapshots.taken)
        .sum()
}

fn is_member(handle: &KvHandle, group: GroupId, node: NodeId) -> bool {
    handle
        .membership(group)
        .expect("reading a group's membership")
        .members
        .iter()
        .any(|member| member.node == node)
}

fn is_voter_everywhere(handle: &KvHandle, node: NodeId) -> bool {
    (0..GROUPS).all(|group| {
        handle
            .membership(GroupId(group))
            .expect("reading a group's membership")
            .members
            .iter()
            .any(|member| member.node == node && member.role == MemberRole::Voter)
    })
}

/// Starts node `id` with `join`, configured with the three original members and itself,
/// and adds it to every group through whichever of `handles` leads, waiting until it votes
/// in every group.
fn join_and_add(
    configs: &[NodeConfig],
    id: u64,
    handles: &[KvHandle],
) -> (KvNode, MemberAddresses) {
    let peer = free_addresses(1)[0];
    let mut joining = configs[0].clone();
    joining.node_id = id;
    joining.join = true;
    joining.members.push(MemberConfig {
        id,
        addresses: vec![peer],
    });
    joining.log.data_dir = configs[0].log.data_dir.with_file_name(format!("node-{id}"));
    std::fs::create_dir_all(&joining.log.data_dir).expect("creating a node directory");
    let node = start_node(&joining);

    let addresses = MemberAddresses {
        peer,
        client: None,
        http: None,
    };
    let add = MemberChange::AddLearner {
        node: NodeId(id),
        addresses: addresses.clone(),
        promote_when_caught_up: true,
    };
    for group in (0..GROUPS).map(GroupId) {
        let deadline = Instant::now() + Duration::from_secs(20);
        // A change that timed out may still have committed, so membership is checked
        // before each try instead of trusting the last result.
        while !is_member(&handles[0], group, NodeId(id)) {
            assert!(
                Instant::now() < deadline,
                "node {id} was not added to group {group} within 20 s"
            );
            for handle in handles {
                let results = handle
                    .change_membership(MembershipScope::Group(group), &add)
                    .expect("sending a membership change");
                if results.iter().all(|result| result.result.is_ok()) {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_until(
        &format!("node {id} was promoted in every group"),
        Duration::from_secs(20),
        || is_voter_everywhere(&handles[0], NodeId(id)),
    );
    (node, addresses)
}

#[test]
fn restart_restores_compacted_member_addresses() {
    let dir = test_dir("restart_restores_compacted_member_addresses");
    let mut configs = cluster_configs(&dir, 3, 1, GROUPS);
    for config in &mut configs {
        config.snapshot.trigger_entries = TRIGGER_ENTRIES;
        config.snapshot.trigger_log_bytes = 0;
        config.snapshot.log_tail_entries = 0;
    }
    let mut nodes: Vec<Option<KvNode>> = configs.iter().map(|c| Some(start_node(c))).collect();
    let mut handles: Vec<KvHandle> = nodes.iter().flatten().map(|node| node.handle()).collect();
    for group in 0..GROUPS {
        wait_for_leader(
            &handles.iter().collect::<Vec<_>>(),
            GroupId(group),
            Duration::from_secs(10),
        );
    }

    let (node_4, addresses_4) = join_and_add(&configs, 4, &handles);
    let (node_5, addresses_5) = join_and_add(&configs, 5, &handles);
    let joined = [node_4.handle(), node_5.handle()];

    // Enough writes for three snapshots per group past the change entries, which the
    // groups then compact away (no log tail is kept).
    let taken_before = snapshots_taken(&handles[0]);
    for i in 0..(3 * TRIGGER_ENTRIES) {
        for group in 0..GROUPS {
            propose_anywhere(
                &handles,
                GroupId(group),
                put(&format!("before-{group}-{i}"), "x"),
                Duration::from_secs(10),
            )
            .expect("a write before the restart");
        }
    }
    // A group takes at most three snapshots of these writes, so four in all include at
    // least one of each group.
    wait_until(
        "node 1 took a snapshot of every group",
        Duration::from_secs(10),
        || snapshots_taken(&handles[0]) >= taken_before + 2 * u64::from(GROUPS),
    );
    let address_file = configs[0].log.data_dir.join(ADDRESS_FILE);
    assert!(
        address_file.is_file(),
        "node 1 wrote {}",
        address_file.display()
    );

    nodes[0]
        .take()
        .expect("node 1 runs")
        .shutdown()
        .expect("stopping node 1");
    nodes[0] = Some(start_node(&configs[0]));
    handles[0] = nodes[0].as_ref().expect("node 1 runs").handle();

    let known = handles[0].member_addresses();
    assert_eq!(
        known.get(&NodeId(4)).map(|addresses| addresses.peer),
        Some(addresses_4.peer),
        "node 1 knows node 4's peer address after the restart: {known:?}"
    );
    assert_eq!(
        known.get(&NodeId(5)).map(|addresses| addresses.peer),
        Some(addresses_5.peer),
        "node 1 knows node 5's peer address after the restart: {known:?}"
    );
    assert_eq!(
        known.get(&NodeId(2)).map(|addresses| addresses.peer),
        Some(configs[1].members[1].addresses[0]),
        "configured members keep their configured peer address"
    );

    // With nodes 2 and 3 stopped, a write commits only with nodes 1, 4 and 5 all taking
    // part, so node 1 must reach the new members.
    for index in [1, 2] {
        nodes[index]
            .take()
            .expect("the node runs")
            .shutdown()
            .expect("stopping a node");
    }
    let quorum = vec![handles[0].clone(), joined[0].clone(), joined[1].clone()];
    for group in 0..GROUPS {
        propose_anywhere(
            &quorum,
            GroupId(group),
            put(&format!("after-{group}"), "y"),
            Duration::from_secs(15),
        )
        .expect("a write that needs nodes 1, 4 and 5");
        let key = format!("after-{group}").into_bytes();
        wait_until(
            &format!("node 1 applied the write to group {group}"),
            Duration::from_secs(5),
            || {
                let key = key.clone();
                handles[0]
                    .read(
                        GroupId(group),
                        ReadMode::Stale,
                        move |kv: &KvStateMachine| kv.get(&key).is_some(),
                    )
                    .expect("reading node 1")
            },
        );
    }

    nodes[0]
        .take()
        .expect("node 1 runs")
        .shutdown()
        .expect("stopping node 1");
    node_4.shutdown().expect("stopping node 4");
    node_5.shutdown().expect("stopping node 5");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupt_address_file_stops_start() {
    let dir = test_dir("corrupt_address_file_stops_start");
    let config = cluster_configs(&dir, 1, 1, 1).remove(0);
    start_node(&config).shutdown().expect("stopping the node");
    let path = config.log.data_dir.join(ADDRESS_FILE);
    std::fs::write(&path, b"not an address file").expect("writing a corrupt file");

    let started = Node::start(config.clone(), |_| KvStateMachine::new(kv_limits()));
    let error = started.expect_err("a node with a corrupt address file must not start");
    assert!(
        matches!(error, NodeError::AddressFile(_)),
        "typed error: {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "the error names the file: {message}"
    );
    assert!(
        message.contains("Delete the file"),
        "the error says what to do: {message}"
    );

    std::fs::remove_file(&path).expect("removing the corrupt file");
    start_node(&config)
        .shutdown()
        .expect("a start without the file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn memory_node_writes_no_address_file() {
    let dir = test_dir("memory_node_writes_no_address_file");
    let mut config = cluster_configs(&dir, 1, 1, 1).remove(0);
    config.log.storage = shardraft::log::StorageKind::Memory;
    let node = start_node(&config);
    let added = MemberAddresses {
        peer: free_addresses(1)[0],
        client: None,
        http: None,
    };
    let handle = node.handle();
    wait_for_leader(&[&handle], GroupId(0), Duration::from_secs(10));

    let add = MemberChange::AddLearner {
        node: NodeId(2),
        addresses: added,
        promote_when_caught_up: false,
    };
    let results = handle
        .change_membership(MembershipScope::All, &add)
        .expect("sending a membership change");
    assert!(
        results.iter().all(|result| result.result.is_ok()),
        "{results:?}"
    );
    assert!(handle.member_addresses().contains_key(&NodeId(2)));

    node.shutdown().expect("stopping the node");
    assert!(
        !config.log.data_dir.join(ADDRESS_FILE).exists(),
        "storage = \"memory\" keeps nothing on disk"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
