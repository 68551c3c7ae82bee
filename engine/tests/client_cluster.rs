//! The client library against three-node clusters in this test process, each node with a
//! client service on its own loopback port.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use shardraft::client::{CasCondition, Client, ClientConfig, ClientError};
use shardraft::log::GroupId;
use shardraft::raft::NodeId;
use shardraft::server::client_service::{ClientService, ClientServiceConfig, ClusterInfo};
use support::*;

const CLUSTER_ID: u64 = 0x5eed;

struct Cluster {
    nodes: Vec<Option<KvNode>>,
    services: Vec<Option<ClientService>>,
    handles: Vec<KvHandle>,
    client_addresses: Vec<String>,
    /// The nodes' data; the last field, so that it is removed after the nodes stopped.
    _dir: TestDir,
}

impl Cluster {
    fn start(name: &str, groups: u32) -> Cluster {
        let dir = test_dir(name);
        let mut configs = cluster_configs(&dir, 3, 1, groups);
        for config in &mut configs {
            config.request_timeout_ms = 1_000;
        }
        let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
        let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
        // Chosen after the nodes bound their peer ports, so they cannot collide.
        let listen = free_addresses(3);
        let client_addresses: Vec<String> = listen.iter().map(ToString::to_string).collect();
        let members: BTreeMap<NodeId, String> = client_addresses
            .iter()
            .enumerate()
            .map(|(i, address)| (NodeId(i as u64 + 1), address.clone()))
            .collect();
        let services = handles
            .iter()
            .zip(&listen)
            .map(|(handle, address)| {
                let info = ClusterInfo {
                    cluster_id: CLUSTER_ID,
                    node_id: handle.node_id(),
                    client_addresses: members.clone(),
                };
                let config = ClientServiceConfig::new(kv_limits());
                let service = ClientService::start(handle.clone(), *address, info, config)
                    .expect("starting a client service");
                Some(service)
            })
            .collect();
        let cluster = Cluster {
            nodes: nodes.into_iter().map(Some).collect(),
            services,
            handles,
            client_addresses,
            _dir: dir,
        };
        for group in 0..groups {
            cluster.leader(GroupId(group));
        }
        cluster
    }

    fn leader(&self, group: GroupId) -> NodeId {
        let live: Vec<&KvHandle> = self
            .handles
            .iter()
            .zip(&self.nodes)
            .filter(|(_, node)| node.is_some())
            .map(|(handle, _)| handle)
            .collect();
        wait_for_leader(&live, group, Duration::from_secs(10))
    }

    fn address(&self, node: NodeId) -> String {
        self.client_addresses[node.0 as usize - 1].clone()
    }

    fn client(&self, endpoints: &[String], timeout: Duration) -> Client {
        let mut config = ClientConfig::new(endpoints.iter().cloned());
        config.cluster_id = Some(CLUSTER_ID);
        config.request_timeout = timeout;
        config.connect_timeout = Duration::from_millis(500);
        Client::connect(config).expect("connecting a client")
    }

    /// Stops a node as a crash would, with its client service.
    fn kill(&mut self, node: NodeId) {
        let index = node.0 as usize - 1;
        if let Some(service) = self.services[index].take() {
            service.shutdown().expect("stopping a client service");
        }
        if let Some(node) = self.nodes[index].take() {
            node.kill();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for service in self.services.iter_mut().filter_map(Option::take) {
            let _ = service.shutdown();
        }
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = node.shutdown();
        }
    }
}

#[test]
fn writes_reads_and_cas_round_trip() {
    let cluster = Cluster::start("client_writes_reads_and_cas", 2);
    let client = cluster.client(&cluster.client_addresses, Duration::from_secs(5));

    let index = client.put(b"alpha", b"1").expect("put");
    let read = client.get(b"alpha").expect("get");
    assert_eq!(&read.value[..], b"1");
    assert_eq!(read.mod_index, index);

    assert_eq!(client.delete(b"alpha"), Ok(true));
    assert_eq!(client.get(b"alpha"), Err(ClientError::KeyNotFound));
    assert_eq!(client.delete(b"alpha"), Ok(false));

    let created = client.cas(b"beta", CasCondition::Absent, Some(b"first"));
    assert!(created.is_ok(), "{created:?}");
    let again = client.cas(b"beta", CasCondition::Absent, Some(b"second"));
    assert!(
        matches!(&again, Err(ClientError::CasMismatch { current: Some(current) }) if &current.value[..] == b"first"),
        "{again:?}"
    );
    let on_value = client.cas(b"beta", CasCondition::Value(b"first"), Some(b"second"));
    assert!(on_value.is_ok(), "{on_value:?}");
    let wrong_value = client.cas(b"beta", CasCondition::Value(b"first"), Some(b"third"));
    assert!(
        matches!(wrong_value, Err(ClientError::CasMismatch { .. })),
        "{wrong_value:?}"
    );
    let mod_index = client.get(b"beta").expect("get").mod_index.0;
    let stale_index = client.cas(
        b"beta",
        CasCondition::ModIndex(mod_index + 1000),
        Some(b"x"),
    );
    assert!(
        matches!(stale_index, Err(ClientError::CasMismatch { .. })),
        "{stale_index:?}"
    );
    let on_index = client.cas(b"beta", CasCondition::ModIndex(mod_index), None);
    assert!(on_index.is_ok(), "{on_index:?}");
    assert_eq!(client.get(b"beta"), Err(ClientError::KeyNotFound));
    let absent_value = client.cas(b"beta", CasCondition::Value(b"second"), Some(b"y"));
    assert_eq!(
        absent_value,
        Err(ClientError::CasMismatch { current: None })
    );
}

#[test]
fn invalid_keys_and_values_are_rejected() {
    let cluster = Cluster::start("client_invalid_keys_and_values", 1);
    let client = cluster.client(&cluster.client_addresses, Duration::from_secs(5));
    let limits = kv_limits();

    assert_eq!(client.put(b"", b"v"), Err(ClientError::EmptyKey));
    assert_eq!(client.get(b""), Err(ClientError::EmptyKey));
    let big_value = vec![7u8; limits.value_bytes_max + 1];
    assert_eq!(
        client.put(b"k", &big_value),
        Err(ClientError::ValueTooLarge {
            bytes: big_value.len() as u64,
            max: limits.value_bytes_max as u64,
        })
    );
    let big_key = vec![b'k'; limits.key_bytes_max + 1];
    assert!(
        matches!(
            client.put(&big_key, b"v"),
            Err(ClientError::KeyTooLarge { .. })
        ),
        "a key over the limit"
    );
    let zero_limit = client.scan_prefix(b"", 0);
    assert!(
        matches!(zero_limit, Err(ClientError::Invalid { .. })),
        "{zero_limit:?}"
    );
}

#[test]
fn scan_merges_groups_with_limit_and_more() {
    let cluster = Cluster::start("client_scan_merges_groups", 3);
    let client = cluster.client(&cluster.client_addresses, Duration::from_secs(5));
    for i in 0..20 {
        client
            .put(
                format!("user/{i:02}").as_bytes(),
                format!("v{i}").as_bytes(),
            )
            .expect("put");
    }
    client.put(b"other", b"x").expect("put");

    let page = client.scan_prefix(b"user/", 5).expect("scan");
    let keys: Vec<&[u8]> = page.entries.iter().map(|entry| &entry.key[..]).collect();
    assert_eq!(
        keys,
        vec![
            &b"user/00"[..],
            b"user/01",
            b"user/02",
            b"user/03",
            b"user/04"
        ]
    );
    assert!(page.more, "a page of 5 of 20 keys has more");

    let all = client.scan_prefix(b"user/", 100).expect("scan");
    assert_eq!(all.entries.len(), 20);
    assert!(!all.more, "a page with every key has no more");
    assert_eq!(&all.entries[19].value[..], b"v19");
}

#[test]
fn follower_endpoint_redirects_and_serves_stale_reads() {
    let cluster = Cluster::start("client_follower_redirects", 1);
    let leader = cluster.leader(GroupId(0));
    let follower = NodeId(if leader.0 == 1 { 2 } else { 1 });
    let client = cluster.client(&[cluster.address(follower)], Duration::from_secs(5));

    client
        .put(b"key", b"linearizable")
        .expect("put through a follower");
    let read = client.get(b"key").expect("linearizable get");
    assert_eq!(&read.value[..], b"linearizable");

    // The stale read goes to the follower, which applies the put shortly after the leader.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.get_stale(b"key") {
            Ok(found) => {
                assert_eq!(&found.value[..], b"linearizable");
                break;
            }
            Err(ClientError::KeyNotFound) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("stale read failed: {error}"),
        }
    }
    let status = client.status(&cluster.address(follower)).expect("status");
    assert_eq!(status.node_id, follower.0);
    assert_eq!(status.groups[0].leader, Some(leader.0));
}

#[test]
fn requests_survive_a_killed_leader() {
    let mut cluster = Cluster::start("client_killed_leader", 1);
    let client = cluster.client(&cluster.client_addresses, Duration::from_secs(8));
    client.put(b"before", b"1").expect("put before the kill");

    let leader = cluster.leader(GroupId(0));
    cluster.kill(leader);
    let started = Instant::now();
    client.put(b"after", b"2").expect("put after the kill");

    assert!(
        started.elapsed() < Duration::from_secs(8),
        "the put took {:?}",
        started.elapsed()
    );
    assert_eq!(&client.get(b"before").expect("get").value[..], b"1");
    assert_ne!(cluster.leader(GroupId(0)), leader);
}

#[test]
fn no_majority_fails_within_the_deadline() {
    let mut cluster = Cluster::start("client_no_majority", 1);
    let client = cluster.client(&cluster.client_addresses, Duration::from_millis(800));
    client.put(b"warm", b"up").expect("put with a majority");
    let leader = cluster.leader(GroupId(0));
    for node in [1, 2, 3]
        .map(NodeId)
        .into_iter()
        .filter(|node| *node != leader)
    {
        cluster.kill(node);
    }

    let started = Instant::now();
    let result = client.put(b"lost", b"x");
    let elapsed = started.elapsed();

    // The leader either still waits for a quorum (timeout) or has stepped down.
    assert!(
        matches!(
            result,
            Err(ClientError::Timeout { .. } | ClientError::NoLeader { .. })
        ),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "failing took {elapsed:?}");
}

#[test]
fn wrong_cluster_id_is_reported() {
    let cluster = Cluster::start("client_wrong_cluster_id", 1);
    let mut config = ClientConfig::new(cluster.client_addresses.iter().cloned());
    config.cluster_id = Some(CLUSTER_ID + 1);
    config.request_timeout = Duration::from_secs(2);

    let result = Client::connect(config);

    assert_eq!(
        result.err(),
        Some(ClientError::ClusterIdMismatch {
            expected: CLUSTER_ID + 1,
            found: CLUSTER_ID,
        })
    );
    let rejected = cluster.services[0]
        .as_ref()
        .unwrap()
        .stats()
        .rejected_connections;
    assert_eq!(rejected, 1);
}

#[test]
fn garbage_closes_only_its_connection() {
    let cluster = Cluster::start("client_garbage_connection", 1);
    let client = cluster.client(&cluster.client_addresses, Duration::from_secs(5));
    client.put(b"steady", b"1").expect("put");

    let target = cluster.client_addresses[0].clone();
    let mut garbage = std::net::TcpStream::connect(&target).expect("connecting");
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buffer = [0u8; 64];
    let read = garbage.read(&mut buffer);
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the service kept a garbage connection open: {read:?}"
    );

    let service = cluster.services[0].as_ref().unwrap();
    assert_eq!(service.stats().rejected_connections, 1);
    for i in 0..20 {
        client
            .put(format!("after-{i}").as_bytes(), b"v")
            .expect("put after the garbage");
    }
    assert_eq!(&client.get(b"steady").expect("get").value[..], b"1");
}

#[test]
fn concurrent_requests_share_connections() {
    let cluster = Cluster::start("client_concurrent_requests", 2);
    let client = cluster.client(&cluster.client_addresses, Duration::from_secs(5));

    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let client = client.clone();
            std::thread::spawn(move || {
                futures_lite::future::block_on(async {
                    for i in 0..16 {
                        let key = format!("p{thread}-{i:02}");
                        client.put_async(key.as_bytes(), b"v").await?;
                    }
                    Ok::<(), ClientError>(())
                })
            })
        })
        .collect();
    for thread in threads {
        let result = thread.join().expect("a client thread panicked");
        assert!(result.is_ok(), "{result:?}");
    }

    let page = client.scan_prefix(b"p", 200).expect("scan");
    assert_eq!(page.entries.len(), 128);
}
