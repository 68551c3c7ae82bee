//! Three-node clusters in this test process: each node with its own executors, log
//! directory and real TCP sockets on loopback.

mod support;

use std::time::Duration;

use bytes::Bytes;
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
