//! Membership changes on clusters of real `shardraft serve` processes on loopback, made
//! with the real `shardraft member` command line while a client writes: growing and
//! shrinking, replacing a node, removing the leader, a follower that lost its data
//! directory, and the identity checks of peers and data directories. Every test ends by
//! reading back every write that was acknowledged.
//!
//! The process handling follows `cluster_processes.rs`: ports chosen free on loopback,
//! data and log files under `CARGO_TARGET_TMPDIR`, processes killed by pid when the
//! cluster is dropped, and the end of every node's log printed when a test fails. A test
//! that passed removes its directory.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;
use support::free_port;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardraft::client::{Client, ClientConfig};

const CLUSTER_ID: u64 = 0x29;
const GROUPS: u32 = 2;
/// The `--timeout-ms` of every command-line call: long enough for a learner to catch up
/// before the next change is accepted.
const CLI_TIMEOUT_MS: u64 = 20_000;
const CLI_DEADLINE: Duration = Duration::from_secs(40);
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_LINES: usize = 40;
/// Writes the background writer makes at most, so that a test stays bounded.
const WRITES_MAX: u64 = 5_000;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shardraft")
}

/// How a node process starts: which of `--join` and `--initial-cluster-state` it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StartAs {
    /// A founding member of a new cluster, or a restart with the data kept.
    Founder,
    /// A restart after the data directory was wiped, with `--initial-cluster-state existing`.
    Existing,
    /// A new node that waits to be added, with `--join`.
    Joining,
}

/// One node: its ports, data directory, log file and, while it runs, its process.
struct NodeProcess {
    id: u64,
    peer: u16,
    client: u16,
    http: u16,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NodeProcess {
    fn member_spec(&self) -> String {
        format!(
            "{}=127.0.0.1:{}/127.0.0.1:{}/127.0.0.1:{}",
            self.id, self.peer, self.client, self.http
        )
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }

    fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

/// Nodes of one test; dropping it kills every process it still runs, by pid.
struct Cluster {
    dir: PathBuf,
    nodes: Vec<NodeProcess>,
}

impl Cluster {
    fn new(name: &str, count: usize) -> Cluster {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("membership_processes")
            .join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating the test directory");
        let mut cluster = Cluster {
            dir,
            nodes: Vec::new(),
        };
        for _ in 0..count {
            cluster.add_slot();
        }
        cluster
    }

    /// Prepares the next node id with fresh ports and an empty data directory.
    fn add_slot(&mut self) -> usize {
        let id = self.nodes.len() as u64 + 1;
        let node_dir = self.dir.join(format!("node{id}"));
        let data_dir = node_dir.join("data");
        std::fs::create_dir_all(&data_dir).expect("creating a data directory");
        self.nodes.push(NodeProcess {
            id,
            peer: free_port(),
            client: free_port(),
            http: free_port(),
            data_dir,
            log: node_dir.join("log"),
            child: None,
        });
        self.nodes.len() - 1
    }

    fn node(&self, id: u64) -> &NodeProcess {
        &self.nodes[id as usize - 1]
    }

    /// Starts node `id` with `members` listed, in the role `start_as` gives it.
    fn start(&mut self, id: u64, members: &[u64], start_as: StartAs, cluster_id: u64) {
        let members = members
            .iter()
            .map(|member| self.node(*member).member_spec())
            .collect::<Vec<_>>()
            .join(",");
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.child.is_none(), "node {id} already runs");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("opening the node's log file");
        let log_err = log.try_clone().expect("duplicating the log file handle");
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .args(["--node-id", &id.to_string()])
            .args(["--cluster-id", &cluster_id.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--storage", "disk"])
            // Small segments (the smallest that fits the default write size twice):
            // every node zero-fills its first one.
            .args(["--segment-bytes", &(16u64 << 20).to_string()])
            .args(["--shards", "1"])
            .args(["--groups", &GROUPS.to_string()])
            .args(["--members", &members])
            .args(["--log-level", "info"]);
        match start_as {
            StartAs::Founder => {}
            StartAs::Existing => {
                command.args(["--initial-cluster-state", "existing"]);
            }
            StartAs::Joining => {
                command.arg("--join");
            }
        }
        let child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("starting shardraft serve");
        node.child = Some(child);
    }

    fn kill(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node.child.take().expect("the node runs");
        signal(&child, Signal::SIGKILL);
        assert!(wait_with_timeout(&mut child, STOP_TIMEOUT).is_some());
    }

    fn endpoints(&self, ids: &[u64]) -> String {
        ids.iter()
            .map(|id| self.node(*id).endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn wait_ready(&mut self, ids: &[u64]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for id in ids {
            let address = SocketAddr::from(([127, 0, 0, 1], self.node(*id).http));
            while http_status(address, "/health/ready") != Some(200) {
                let child = self.nodes[*id as usize - 1].child.as_mut();
                let exited = child.and_then(|child| child.try_wait().ok().flatten());
                assert!(exited.is_none(), "node {id} exited: {exited:?}");
                assert!(Instant::now() < deadline, "node {id} was not ready in time");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts nodes 1 to `count` of a new cluster and waits until they are ready.
    fn start_ready(name: &str, count: u64) -> Cluster {
        let mut cluster = Cluster::new(name, count as usize);
        let members: Vec<u64> = (1..=count).collect();
        for id in 1..=count {
            cluster.start(id, &members, StartAs::Founder, CLUSTER_ID);
        }
        cluster.wait_ready(&members);
        cluster
    }

    /// Starts node `id` as a joining node next to `running` and adds it with the command
    /// line, as a voter to be; waits until every group lists it as a voter.
    fn join_and_add(&mut self, id: u64, running: &[u64]) {
        let mut members = running.to_vec();
        members.push(id);
        self.start(id, &members, StartAs::Joining, CLUSTER_ID);
        let node = self.node(id);
        let peer = format!("127.0.0.1:{}", node.peer);
        let client = node.endpoint();
        let http = format!("127.0.0.1:{}", node.http);
        let id_text = id.to_string();
        let args = [
            "member", "add", "--id", &id_text, "--peer", &peer, "--client", &client, "--http",
            &http,
        ];
        cli_expect(&self.endpoints(running), &args, 0);
        self.wait_voters(running, |voters| voters.contains(&id));
        self.wait_caught_up(id);
    }

    /// Waits until node `id` has logged, for every group, that its log caught up with the
    /// leader's. A node that started without data votes only from then on, so a test
    /// must not take away another voter before.
    fn wait_caught_up(&self, id: u64) {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        for group in 0..GROUPS {
            let tag = format!("group{{group={group}}}");
            loop {
                let text = self.node(id).log_text();
                let caught_up = text.lines().any(|line| {
                    line.contains(&tag) && line.contains("caught up with the leader's log")
                });
                if caught_up {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {id} did not catch up in group {group}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Removes node `id` with the command line.
    fn remove(&self, id: u64, running: &[u64], extra: &[&str]) {
        let id_text = id.to_string();
        let mut args = vec!["member", "remove", "--id", &id_text];
        args.extend_from_slice(extra);
        cli_expect(&self.endpoints(running), &args, 0);
    }

    /// Waits until the voters of every group, as its leader reports them, satisfy
    /// `done`.
    fn wait_voters(&self, endpoints: &[u64], done: impl Fn(&BTreeSet<u64>) -> bool) {
        let client = connect(&self.endpoints(endpoints));
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        for group in 0..GROUPS {
            loop {
                let voters = client.membership(group).ok().map(|report| {
                    report
                        .members
                        .iter()
                        .filter(|member| member.voter)
                        .map(|member| member.node_id)
                        .collect::<BTreeSet<u64>>()
                });
                if voters.as_ref().is_some_and(&done) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the voters of group {group} did not change as expected: {voters:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                signal(&child, Signal::SIGKILL);
                let _ = wait_with_timeout(&mut child, STOP_TIMEOUT);
            }
        }
        if std::thread::panicking() {
            for node in &self.nodes {
                let text = node.log_text();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                eprintln!("---- last lines of node {} ----\n{tail}", node.id);
            }
        } else {
            // Kept only when a test failed, for its logs; up to five nodes' logs add up.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits an i32"));
    let _ = kill(pid, signal);
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The status code of an HTTP/1.0 `GET`, `None` when the server cannot be reached.
fn http_status(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    response.parse(&raw).ok()?;
    response.code
}

/// Runs the command line with `--endpoints` and asserts its exit status.
fn cli_expect(endpoints: &str, args: &[&str], code: i32) -> String {
    let mut child = Command::new(binary())
        .args(["--endpoints", endpoints])
        .args(["--timeout-ms", &CLI_TIMEOUT_MS.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the shardraft command line");
    let status = wait_with_timeout(&mut child, CLI_DEADLINE);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        let _ = pipe.read_to_string(&mut stdout);
    }
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(code),
        "shardraft {args:?}; stdout: {stdout}; stderr: {stderr}"
    );
    stdout
}

fn connect(endpoints: &str) -> Client {
    let mut config = ClientConfig::new(endpoints.split(','));
    config.cluster_id = Some(CLUSTER_ID);
    config.request_timeout = Duration::from_secs(10);
    Client::connect(config).expect("connecting a client")
}

/// A client that writes keys one after another until stopped, keeping the keys whose
/// writes were acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Vec<u64>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(endpoints: &str) -> Writer {
        let client = connect(endpoints);
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            let acknowledged = Arc::clone(&acknowledged);
            std::thread::spawn(move || {
                for n in 0..WRITES_MAX {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let (key, value) = (format!("key-{n}"), format!("value-{n}"));
                    if client.put(key.as_bytes(), value.as_bytes()).is_ok() {
                        acknowledged.lock().unwrap().push(n);
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Writer {
            stop,
            acknowledged,
            thread: Some(thread),
        }
    }

    /// Stops the writer and returns the acknowledged keys' numbers.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the writer thread");
        }
        std::mem::take(&mut *self.acknowledged.lock().unwrap())
    }
}

/// Reads every acknowledged key back, linearizably, through `endpoints`.
fn assert_all_present(endpoints: &str, acknowledged: &[u64]) {
    assert!(
        !acknowledged.is_empty(),
        "the writer had no write acknowledged"
    );
    let client = connect(endpoints);
    for n in acknowledged {
        let key = format!("key-{n}");
        let found = client
            .get(key.as_bytes())
            .unwrap_or_else(|error| panic!("reading acknowledged {key}: {error}"));
        assert_eq!(&found.value[..], format!("value-{n}").as_bytes(), "{key}");
    }
}

#[test]
fn cluster_grows_to_five_and_shrinks_to_three_under_writes() {
    let mut cluster = Cluster::start_ready("grow_and_shrink", 3);
    let writer = Writer::start(&cluster.endpoints(&[1, 2, 3]));
    cluster.add_slot();
    cluster.add_slot();
    cluster.join_and_add(4, &[1, 2, 3]);
    cluster.join_and_add(5, &[1, 2, 3, 4]);
    cluster.wait_voters(&[1, 2, 3], |voters| voters.len() == 5);

    cluster.remove(1, &[1, 2, 3, 4, 5], &[]);
    cluster.remove(2, &[2, 3, 4, 5], &[]);
    let expected: BTreeSet<u64> = [3, 4, 5].into();
    cluster.wait_voters(&[3, 4, 5], |voters| *voters == expected);
    let acknowledged = writer.finish();
    cluster.kill(1);
    cluster.kill(2);
    assert_all_present(&cluster.endpoints(&[3, 4, 5]), &acknowledged);
}

#[test]
fn removed_node_is_replaced_by_a_fresh_one() {
    let mut cluster = Cluster::start_ready("replace", 3);
    let writer = Writer::start(&cluster.endpoints(&[1, 2, 3]));
    cluster.remove(3, &[1, 2, 3], &[]);
    cluster.wait_voters(&[1, 2], |voters| !voters.contains(&3));
    cluster.kill(3);
    cluster.add_slot();
    cluster.join_and_add(4, &[1, 2]);
    let acknowledged = writer.finish();
    // Node 4 holds every acknowledged write: with node 1 gone, the reads need it.
    cluster.kill(1);
    assert_all_present(&cluster.endpoints(&[2, 4]), &acknowledged);
}

#[test]
fn removing_the_leader_transfers_leadership_first() {
    let mut cluster = Cluster::start_ready("remove_leader", 3);
    let writer = Writer::start(&cluster.endpoints(&[1, 2, 3]));
    let leader = {
        let client = connect(&cluster.endpoints(&[1, 2, 3]));
        client
            .membership(0)
            .expect("the membership of group 0")
            .leader
            .expect("group 0 has a leader")
    };
    cluster.remove(leader, &[1, 2, 3], &["--group", "0"]);
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let client = connect(&cluster.endpoints(&others));
    let report = client.membership(0).expect("the membership of group 0");
    assert_ne!(report.leader, Some(leader), "{report:?}");
    assert!(
        !report.members.iter().any(|member| member.node_id == leader),
        "{report:?}"
    );
    // The other group keeps all three voters.
    let other = client.membership(1).expect("the membership of group 1");
    assert_eq!(other.members.len(), 3, "{other:?}");
    let acknowledged = writer.finish();
    assert_all_present(&cluster.endpoints(&[1, 2, 3]), &acknowledged);
    cluster.kill(leader);
}

#[test]
fn wiped_follower_catches_up_before_it_votes() {
    let mut cluster = Cluster::start_ready("wiped_follower", 3);
    let writer = Writer::start(&cluster.endpoints(&[1, 2, 3]));
    std::thread::sleep(Duration::from_millis(500));
    let client = connect(&cluster.endpoints(&[1, 2, 3]));
    let leader = client.membership(0).unwrap().leader.unwrap();
    let wiped = (1..=3).find(|id| *id != leader).unwrap();
    cluster.kill(wiped);
    let data_dir = cluster.node(wiped).data_dir.clone();
    std::fs::remove_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(&data_dir).unwrap();
    let earlier_log_bytes = cluster.node(wiped).log_text().len();
    // Restarted as a node of an existing cluster, as an operator must after a wipe.
    cluster.start(wiped, &[1, 2, 3], StartAs::Existing, CLUSTER_ID);

    // Every group of the wiped node starts without durable state, so it neither votes
    // nor campaigns until its log caught up with the leader's commit index.
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        let text = cluster.node(wiped).log_text();
        let restarted = &text[earlier_log_bytes.min(text.len())..];
        let started: Vec<&str> = restarted
            .lines()
            .filter(|line| line.contains("raft node started"))
            .collect();
        let caught_up = restarted
            .lines()
            .filter(|line| line.contains("caught up with the leader's log"))
            .count();
        if started.len() >= GROUPS as usize && caught_up >= GROUPS as usize {
            assert!(
                started.iter().all(|line| line.contains("catching_up=true")),
                "a group of the wiped node did not start catching up: {started:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the wiped node did not catch up in every group"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let acknowledged = writer.finish();
    // Stale reads on the wiped node alone see every acknowledged write once it caught up.
    let local = connect(&cluster.node(wiped).endpoint());
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    for n in &acknowledged {
        let key = format!("key-{n}");
        loop {
            if let Ok(found) = local.get_stale(key.as_bytes()) {
                assert_eq!(&found.value[..], format!("value-{n}").as_bytes());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the wiped node never applied {key}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_all_present(&cluster.endpoints(&[1, 2, 3]), &acknowledged);
}

#[test]
fn foreign_cluster_and_foreign_data_directory_are_rejected() {
    let mut cluster = Cluster::start_ready("identity", 3);
    // A node of another cluster that names the members as its peers.
    cluster.add_slot();
    cluster.start(4, &[1, 2, 3, 4], StartAs::Joining, CLUSTER_ID + 1);
    let deadline = Instant::now() + READY_TIMEOUT;
    let expected = format!(
        "the peer belongs to cluster {:#x}, this node to cluster {CLUSTER_ID:#x}",
        CLUSTER_ID + 1
    );
    while !cluster.node(1).log_text().contains(&expected) {
        assert!(
            Instant::now() < deadline,
            "node 1 did not log the rejection of the foreign node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill(4);

    // Node 2 started on node 1's data directory refuses to start.
    cluster.kill(1);
    cluster.kill(2);
    let foreign_dir = cluster.node(1).data_dir.clone();
    cluster.nodes[1].data_dir = foreign_dir;
    cluster.start(2, &[1, 2, 3], StartAs::Founder, CLUSTER_ID);
    let child = cluster.nodes[1].child.as_mut().unwrap();
    let status = wait_with_timeout(child, STOP_TIMEOUT).expect("node 2 exits");
    cluster.nodes[1].child = None;
    assert_eq!(status.code(), Some(1), "exit status of node 2");
    let log = cluster.node(2).log_text();
    assert!(
        log.contains("belongs to cluster 0x29, node 1"),
        "node 2 did not name the data directory's owner"
    );
}

/// Runs `shardraft --output json member list --group G` and returns each member's role
/// (`voter` or `learner`) by node id, with the leader the command reports.
fn listed_members(endpoints: &str, group: u32) -> (Option<u64>, Vec<(u64, String)>) {
    let group_text = group.to_string();
    let stdout = cli_expect(
        endpoints,
        &["--output", "json", "member", "list", "--group", &group_text],
        0,
    );
    let listing: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("member list printed invalid JSON ({error}): {stdout}"));
    let report = &listing["groups"][0];
    assert_eq!(report["group"], group, "{stdout}");
    let members = report["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {stdout}"))
        .iter()
        .map(|member| {
            (
                member["node_id"].as_u64().expect("a node id"),
                member["role"].as_str().expect("a role").to_string(),
            )
        })
        .collect();
    (report["leader"].as_u64(), members)
}

#[test]
fn cli_transfers_leader_and_promotes_learner() {
    let mut cluster = Cluster::start_ready("transfer_and_promote", 3);
    let running = cluster.endpoints(&[1, 2, 3]);
    let writer = Writer::start(&running);

    // `leader transfer` returns once the target leads, and `member list` reports it.
    let (leader, members) = listed_members(&running, 0);
    let leader = leader.expect("group 0 has a leader");
    assert_eq!(members.len(), 3, "{members:?}");
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let target_text = target.to_string();
    cli_expect(
        &running,
        &["leader", "transfer", "--group", "0", "--to", &target_text],
        0,
    );
    let (leader_after, _) = listed_members(&running, 0);
    assert_eq!(
        leader_after,
        Some(target),
        "leader of group 0 after the transfer"
    );

    // A learner added with --learner stays a learner until `member promote`.
    cluster.add_slot();
    cluster.start(4, &[1, 2, 3, 4], StartAs::Joining, CLUSTER_ID);
    let node = cluster.node(4);
    let (peer, client, http) = (
        format!("127.0.0.1:{}", node.peer),
        node.endpoint(),
        format!("127.0.0.1:{}", node.http),
    );
    cli_expect(
        &running,
        &[
            "member",
            "add",
            "--id",
            "4",
            "--peer",
            &peer,
            "--client",
            &client,
            "--http",
            &http,
            "--learner",
        ],
        0,
    );
    cluster.wait_caught_up(4);
    for group in 0..GROUPS {
        let (_, members) = listed_members(&running, group);
        assert!(
            members.contains(&(4, "learner".to_string())),
            "group {group} after adding node 4 as a learner: {members:?}"
        );
    }
    cli_expect(&running, &["member", "promote", "--id", "4"], 0);
    cluster.wait_voters(&[1, 2, 3], |voters| voters.contains(&4));
    for group in 0..GROUPS {
        let (_, members) = listed_members(&running, group);
        assert!(
            members.contains(&(4, "voter".to_string())),
            "group {group} after promoting node 4: {members:?}"
        );
    }

    let acknowledged = writer.finish();
    assert_all_present(&cluster.endpoints(&[1, 2, 3, 4]), &acknowledged);
}
