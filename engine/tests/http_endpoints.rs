//! The HTTP endpoints of nodes of a three-node cluster in this test process, each server
//! on its own free loopback port, queried over real TCP connections.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardraft::config::NodeConfig;
use shardraft::kv;
use shardraft::log::GroupId;
use shardraft::node::ReadMode;
use shardraft::raft::Role;
use shardraft::server::http::{HttpServer, NodeInfo};
use support::*;

/// A response as read from the socket.
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("invalid JSON body ({error}): {}", self.body))
    }
}

/// Sends `request` as is and reads the response until the server closes the connection.
fn exchange(address: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(address).expect("connecting to the HTTP server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("setting a read timeout");
    stream.write_all(request).expect("writing the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("reading the response");
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let parsed = response.parse(&raw).expect("parsing the response head");
    let httparse::Status::Complete(head_bytes) = parsed else {
        panic!(
            "incomplete response head: {}",
            String::from_utf8_lossy(&raw)
        );
    };
    let headers = response
        .headers
        .iter()
        .map(|header| {
            let value = String::from_utf8_lossy(header.value).into_owned();
            (header.name.to_string(), value)
        })
        .collect();
    HttpResponse {
        status: response.code.expect("a status code"),
        headers,
        body: String::from_utf8_lossy(&raw[head_bytes..]).into_owned(),
    }
}

/// Sends an HTTP/1.0 request, so that the server closes the connection after the response
/// and sends the body unchunked.
fn request(address: SocketAddr, method: &str, path: &str) -> HttpResponse {
    let text = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    exchange(address, text.as_bytes())
}

fn get(address: SocketAddr, path: &str) -> HttpResponse {
    request(address, "GET", path)
}

/// Polls `path` until it returns `status`, failing after `timeout`.
fn wait_for_status(address: SocketAddr, path: &str, status: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let response = get(address, path);
        if response.status == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on {address} still returned {} after {timeout:?}: {}",
            response.status,
            response.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn node_info(config: &NodeConfig) -> NodeInfo {
    NodeInfo {
        cluster_id: config.cluster_id,
        node_id: config.node_id,
        version: env!("CARGO_PKG_VERSION").to_string(),
        members: config.members.clone(),
    }
}

fn start_http(node: &KvNode, config: &NodeConfig) -> HttpServer {
    let listen: SocketAddr = "127.0.0.1:0".parse().expect("a loopback address");
    HttpServer::start(listen, node.handle(), node_info(config)).expect("starting HTTP")
}

/// A running cluster with one HTTP server per node.
struct Cluster {
    configs: Vec<NodeConfig>,
    nodes: Vec<KvNode>,
    servers: Vec<HttpServer>,
    /// The nodes' data; the last field, so that it is removed after the nodes stopped.
    _dir: TestDir,
}

impl Cluster {
    fn start(name: &str, shards: usize, groups: u32) -> Cluster {
        let dir = test_dir(name);
        let configs = cluster_configs(&dir, 3, shards, groups);
        let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
        let servers = nodes
            .iter()
            .zip(&configs)
            .map(|(node, config)| start_http(node, config))
            .collect();
        Cluster {
            configs,
            nodes,
            servers,
            _dir: dir,
        }
    }

    fn handles(&self) -> Vec<KvHandle> {
        self.nodes.iter().map(|node| node.handle()).collect()
    }

    fn address(&self, node: usize) -> SocketAddr {
        self.servers[node].local_addr()
    }

    /// Waits for a leader of every group, returning the leader's index in `nodes` per group.
    fn wait_for_leaders(&self) -> Vec<usize> {
        let handles = self.handles();
        let handles: Vec<&KvHandle> = handles.iter().collect();
        (0..self.configs[0].groups)
            .map(|group| {
                let leader = wait_for_leader(&handles, GroupId(group), Duration::from_secs(10));
                leader.0 as usize - 1
            })
            .collect()
    }

    fn shutdown(self) {
        for server in self.servers {
            server.shutdown();
        }
        for node in self.nodes {
            node.shutdown().expect("shutting down a node");
        }
    }
}

fn put(key: &str, value: &str) -> Bytes {
    kv::Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
    .expect("encoding a put")
}

/// Proposes `count` puts to `group` at its leader.
fn propose_puts(handle: &KvHandle, group: GroupId, count: usize) {
    for i in 0..count {
        handle
            .propose(group, put(&format!("key-{i}"), "value"))
            .expect("proposing a put");
    }
}

/// Waits until every node has applied every group's commit index.
fn wait_until_applied_everywhere(handles: &[KvHandle], commit_index_min: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for handle in handles {
        loop {
            let status = handle.status().expect("reading status");
            let applied = status
                .shards
                .iter()
                .flat_map(|shard| &shard.groups)
                .all(|group| {
                    group.applied_index.0 >= commit_index_min
                        && group.applied_index == group.commit_index
                });
            if applied {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not apply",
                handle.node_id()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Finds the value of the sample whose line starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?;
        let value = rest.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[test]
fn readiness_flips_after_election_on_every_node() {
    let dir = test_dir("readiness_flips_after_election_on_every_node");
    let configs = cluster_configs(&dir, 3, 1, 2);
    // One node of three cannot elect a leader, so it stays unready until the others start.
    let first = start_node(&configs[0]);
    let first_http = start_http(&first, &configs[0]);
    let alone = get(first_http.local_addr(), "/health/ready");
    assert_eq!(alone.status, 503, "{}", alone.body);
    let body = alone.json();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["not_ready_groups"], 2);
    assert_eq!(body["groups"][0]["group"], 0);
    assert!(body["groups"][0]["reason"].is_string());
    let live = get(first_http.local_addr(), "/health/live");
    assert_eq!(live.status, 200, "{}", live.body);

    let others: Vec<KvNode> = configs[1..].iter().map(start_node).collect();
    let other_servers: Vec<HttpServer> = others
        .iter()
        .zip(&configs[1..])
        .map(|(node, config)| start_http(node, config))
        .collect();
    let mut addresses = vec![first_http.local_addr()];
    addresses.extend(other_servers.iter().map(HttpServer::local_addr));
    for address in &addresses {
        wait_for_status(*address, "/health/ready", 200, Duration::from_secs(15));
    }
    let ready = get(addresses[0], "/health/ready");
    assert_eq!(ready.json()["status"], "ready");
    let handles: Vec<KvHandle> = std::iter::once(first.handle())
        .chain(others.iter().map(|node| node.handle()))
        .collect();
    let followers = handles
        .iter()
        .filter(|handle| {
            let status = handle.status().expect("reading status");
            status.group(GroupId(0)).expect("group 0 is hosted").role != Role::Leader
        })
        .count();
    assert_eq!(
        followers, 2,
        "two of three nodes follow group 0 and are ready"
    );

    first_http.shutdown();
    for server in other_servers {
        server.shutdown();
    }
    first.shutdown().expect("shutting down");
    for node in others {
        node.shutdown().expect("shutting down");
    }
}

#[test]
fn liveness_is_503_once_the_node_stopped() {
    let dir = test_dir("liveness_is_503_once_the_node_stopped");
    let configs = cluster_configs(&dir, 3, 1, 1);
    let node = start_node(&configs[0]);
    let server = start_http(&node, &configs[0]);
    let address = server.local_addr();
    assert_eq!(get(address, "/health/live").status, 200);
    node.shutdown().expect("shutting down");
    let stopped = get(address, "/health/live");
    assert_eq!(stopped.status, 503, "{}", stopped.body);
    assert_eq!(stopped.json()["status"], "not_live");
    assert_eq!(get(address, "/health/ready").status, 503);
    server.shutdown();
}

#[test]
fn status_json_agrees_with_node_status() {
    let cluster = Cluster::start("status_json_agrees_with_node_status", 2, 4);
    let leaders = cluster.wait_for_leaders();
    let handles = cluster.handles();
    for (group, leader) in leaders.iter().enumerate() {
        propose_puts(&handles[*leader], GroupId(group as u32), 5);
    }
    wait_until_applied_everywhere(&handles, 5);

    for (node, handle) in handles.iter().enumerate() {
        let response = get(cluster.address(node), "/v1/status");
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        let body = response.json();
        let status = handle.status().expect("reading status");
        assert_eq!(body["node_id"], node as u64 + 1);
        assert_eq!(body["cluster_id"], cluster.configs[node].cluster_id);
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(body["members"].as_array().map(Vec::len), Some(3));
        let groups = body["groups"].as_array().expect("a groups array");
        assert_eq!(groups.len(), 4);
        for json in groups {
            let group = GroupId(json["group"].as_u64().expect("a group id") as u32);
            let expected = status.group(group).expect("the group is hosted");
            let role = match expected.role {
                Role::Leader => "leader",
                Role::Follower => "follower",
                Role::Candidate => "candidate",
                Role::PreCandidate => "pre_candidate",
            };
            assert_eq!(json["role"], role, "group {group}");
            assert_eq!(json["term"], expected.term.0, "group {group}");
            let leader = expected.leader.map(|leader| leader.0);
            assert_eq!(json["leader"].as_u64(), leader, "group {group}");
            assert_eq!(
                json["commit_index"], expected.commit_index.0,
                "group {group}"
            );
            assert_eq!(
                json["applied_index"], expected.applied_index.0,
                "group {group}"
            );
            assert_eq!(json["last_index"], expected.last_index.0, "group {group}");
            assert_eq!(json["shard"], group.0 % 2, "group {group}");
            assert_eq!(
                json["voters"],
                serde_json::json!([1, 2, 3]),
                "group {group}"
            );
        }
    }
    cluster.shutdown();
}

/// Metric families the scrape of a disk-backed leader must contain.
const EXPECTED_FAMILIES: [&str; 16] = [
    "shardraft_node_info",
    "shardraft_shard_groups",
    "shardraft_group_has_leader",
    "shardraft_group_term",
    "shardraft_group_commit_index",
    "shardraft_group_applied_index",
    "shardraft_proposals_total",
    "shardraft_commit_latency_seconds",
    "shardraft_read_latency_seconds",
    "shardraft_shard_busy_seconds_total",
    "shardraft_transport_rejected_connections_total",
    "shardraft_peer_sent_bytes_total",
    "shardraft_peer_received_bytes_total",
    "shardraft_peer_round_trip_seconds",
    "shardraft_log_sync_duration_seconds",
    "shardraft_shard_executor_stalls_total",
];

#[test]
fn metrics_report_proposals_syncs_and_latencies() {
    let cluster = Cluster::start("metrics_report_proposals_syncs_and_latencies", 1, 1);
    let leader = cluster.wait_for_leaders()[0];
    let handles = cluster.handles();
    propose_puts(&handles[leader], GroupId(0), 20);
    for _ in 0..5 {
        handles[leader]
            .read(GroupId(0), ReadMode::Linearizable, |_| ())
            .expect("a linearizable read on the leader");
    }
    let address = cluster.address(leader);
    let peer = if leader == 0 { 2 } else { 1 };
    let round_trip_count = format!("shardraft_peer_round_trip_seconds_count{{peer=\"{peer}\"}}");
    // Round-trip samples need a heartbeat and its response after the election.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let response = get(address, "/metrics");
        assert_eq!(response.status, 200, "{}", response.body);
        let content_type = response.header("Content-Type").unwrap_or_default();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let round_trips = sample(&response.body, &round_trip_count);
        if round_trips.unwrap_or(0.0) > 0.0 || Instant::now() > deadline {
            break response.body;
        }
        std::thread::sleep(Duration::from_millis(50));
    };

    for family in EXPECTED_FAMILIES {
        let declared = format!("# TYPE {family} ");
        assert!(metrics.contains(&declared), "missing {family}:\n{metrics}");
    }
    let applied = sample(
        &metrics,
        "shardraft_proposals_total{shard=\"0\",result=\"applied\"}",
    );
    assert!(applied >= Some(20.0), "applied proposals: {applied:?}");
    let latencies = sample(&metrics, "shardraft_commit_latency_seconds_count");
    assert!(latencies >= Some(20.0), "commit latencies: {latencies:?}");
    let reads = sample(&metrics, "shardraft_read_latency_seconds_count");
    assert_eq!(reads, Some(5.0), "read latencies");
    let syncs = sample(&metrics, "shardraft_log_sync_duration_seconds_count");
    assert!(syncs > Some(0.0), "fdatasync samples: {syncs:?}");
    let entries = sample(&metrics, "shardraft_log_synced_entries_total{shard=\"0\"}");
    assert!(entries >= Some(20.0), "synced entries: {entries:?}");
    // A fresh log prepares its next segment at open, with no retired segment to reuse.
    let created = sample(
        &metrics,
        "shardraft_log_created_segments_total{shard=\"0\"}",
    );
    assert!(created >= Some(1.0), "created segments: {created:?}");
    let has_leader = sample(&metrics, "shardraft_group_has_leader{group=\"0\"}");
    assert_eq!(has_leader, Some(1.0));
    let is_leader = sample(&metrics, "shardraft_group_is_leader{group=\"0\"}");
    assert_eq!(is_leader, Some(1.0));
    let sent = sample(
        &metrics,
        &format!("shardraft_peer_sent_bytes_total{{peer=\"{peer}\"}}"),
    );
    assert!(sent > Some(0.0), "bytes sent to peer {peer}: {sent:?}");
    let round_trips = sample(&metrics, &round_trip_count);
    assert!(
        round_trips > Some(0.0),
        "round trips to {peer}: {round_trips:?}"
    );
    let leader_changes = sample(
        &metrics,
        "shardraft_group_leader_changes_total{group=\"0\"}",
    );
    assert!(
        leader_changes >= Some(1.0),
        "leader changes: {leader_changes:?}"
    );
    let busy = sample(&metrics, "shardraft_shard_busy_seconds_total{shard=\"0\"}");
    assert!(busy > Some(0.0), "busy time: {busy:?}");

    check_with_promtool(&metrics);
    cluster.shutdown();
}

#[test]
fn unknown_path_is_404_and_other_methods_405() {
    let cluster = Cluster::start("unknown_path_is_404_and_other_methods_405", 1, 1);
    let address = cluster.address(0);

    let missing = get(address, "/nothing/here");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("Content-Type"), Some("application/json"));
    let error = missing.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("/nothing/here"), "{error}");

    let post = request(address, "POST", "/metrics");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET"));
    assert!(post.json()["error"].is_string());

    let delete = request(address, "DELETE", "/v1/status");
    assert_eq!(delete.status, 405);

    let with_query = get(address, "/health/live?verbose=1");
    assert_eq!(with_query.status, 200);
    cluster.shutdown();
}

#[test]
fn http_port_survives_garbage_input() {
    let cluster = Cluster::start("http_port_survives_garbage_input", 1, 1);
    let address = cluster.address(0);
    let inputs: [&[u8]; 6] = [
        b"\x00\xff\xfe garbage \x01\x02\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"POST /metrics HTTP/1.1\r\nContent-Length: 1000000\r\n\r\nshort",
        b"GET /health/li",
    ];
    for input in inputs {
        let mut stream = TcpStream::connect(address).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .expect("setting a read timeout");
        stream.write_all(input).expect("writing garbage");
        // Whatever comes back, if anything, is read and dropped; then the client goes away.
        let mut discard = Vec::new();
        let _ = stream.read_to_end(&mut discard);
    }
    let long_line = format!("GET /{} HTTP/1.0\r\n\r\n", "a".repeat(100_000));
    let mut stream = TcpStream::connect(address).expect("connecting");
    let _ = stream.write_all(long_line.as_bytes());
    drop(stream);

    let live = get(address, "/health/live");
    assert_eq!(live.status, 200, "{}", live.body);
    let metrics = get(address, "/metrics");
    assert_eq!(metrics.status, 200);
    cluster.shutdown();
}

#[test]
fn shutdown_closes_the_http_port() {
    let dir = test_dir("shutdown_closes_the_http_port");
    let configs = cluster_configs(&dir, 3, 1, 1);
    let node = start_node(&configs[0]);
    let server = start_http(&node, &configs[0]);
    let address = server.local_addr();
    assert_eq!(get(address, "/health/live").status, 200);
    server.shutdown();
    // tiny_http closes its listener on a thread of its own, shortly after the shutdown.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the port still accepts connections"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.shutdown().expect("shutting down");
}

#[test]
fn peer_rejections_are_counted_by_reason() {
    let cluster = Cluster::start("peer_rejections_are_counted_by_reason", 1, 1);
    let peer_address = cluster.configs[0].members[0].addresses[0];
    let mut stream = TcpStream::connect(peer_address).expect("connecting to the peer port");
    // Sixteen bytes that do not start with the frame magic.
    stream.write_all(&[b'x'; 16]).expect("writing a bad header");
    let series = "shardraft_transport_rejected_connections_total{shard=\"0\",reason=\"magic\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get(cluster.address(0), "/metrics").body;
        let rejected = sample(&metrics, series);
        if rejected == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "{series} is {rejected:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let metrics = get(cluster.address(0), "/metrics").body;
    let checksum =
        "shardraft_transport_rejected_connections_total{shard=\"0\",reason=\"checksum\"}";
    assert_eq!(sample(&metrics, checksum), Some(0.0));
    drop(stream);
    cluster.shutdown();
}
