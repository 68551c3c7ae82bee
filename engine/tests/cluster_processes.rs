//! Three-node clusters of real `shardraft serve` processes on loopback, driven by the real
//! `shardraft` command line and, where a test needs a tight loop, by the client library.
//!
//! Every node keeps its write-ahead log on disk under this test's directory in
//! `CARGO_TARGET_TMPDIR` and writes its log lines to a file next to it. A [`Cluster`]
//! kills the processes it started when it is dropped, and prints the end of each node's
//! log when the test failed, so that a failure shows what the servers saw.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shardraft::client::{Client, ClientConfig};
use shardraft::node::group_for_key;
use shardraft::protocol::CLIENT_FRAME_FORMAT;
use shardraft::transport::frame::{FrameKind, encode_frame_with};

const CLUSTER_ID: u64 = 41;
const NODES: usize = 3;
const SHARDS: u16 = 1;
const GROUPS: u32 = 4;
/// The `--timeout-ms` of every command-line call; long enough to ride out an election.
const CLI_TIMEOUT_MS: u64 = 10_000;
/// Maximum time a command-line call may run before the test gives up on it.
const CLI_DEADLINE: Duration = Duration::from_secs(30);
/// Maximum time a cluster may take to become ready after its nodes started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Maximum time a node may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Size of each log segment file, which a node preallocates in full.
const SEGMENT_BYTES: u64 = 16 << 20;
/// Log lines of each node printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shardraft")
}

fn test_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cluster_processes")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the test directory");
    dir
}

/// The ports one node listens on.
#[derive(Clone, Copy, Debug)]
struct Ports {
    /// Shard `s` listens for peers on `peer + s`.
    peer: u16,
    client: u16,
    http: u16,
}

fn pick_ports() -> Vec<Ports> {
    let runs: Vec<u16> = (0..NODES).flat_map(|_| [SHARDS, 1, 1]).collect();
    support::free_port_runs(&runs)
        .chunks(3)
        .map(|ports| Ports {
            peer: ports[0],
            client: ports[1],
            http: ports[2],
        })
        .collect()
}

fn last_lines(path: &Path, count: usize) -> String {
    let text = std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|error| format!("(reading {} failed: {error})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

fn signal(child: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits an i32"));
    kill(pid, signal).unwrap_or_else(|error| panic!("sending {signal} to {pid}: {error}"));
}

/// Waits for `child` to exit, for at most `timeout`.
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

/// One node of a cluster: its data directory, its log file and, while it runs, its
/// process.
struct NodeProcess {
    id: u64,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A three-node cluster of `shardraft serve` processes. Dropping it kills every process
/// it still runs, by pid, and waits for them.
struct Cluster {
    /// The test's directory, removed on drop unless the test failed.
    dir: PathBuf,
    members: String,
    ports: Vec<Ports>,
    nodes: Vec<NodeProcess>,
    /// Flags added to every node's command line.
    extra_args: Vec<String>,
}

impl Cluster {
    /// Prepares the directories and ports of a cluster; starts no process.
    fn new(name: &str) -> Cluster {
        let dir = test_dir(name);
        let ports = pick_ports();
        let members = ports
            .iter()
            .enumerate()
            .map(|(index, ports)| {
                format!(
                    "{}=127.0.0.1:{}/127.0.0.1:{}/127.0.0.1:{}",
                    index + 1,
                    ports.peer,
                    ports.client,
                    ports.http
                )
            })
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (0..NODES)
            .map(|index| {
                let node_dir = dir.join(format!("node{}", index + 1));
                let data_dir = node_dir.join("data");
                std::fs::create_dir_all(&data_dir).expect("creating a data directory");
                NodeProcess {
                    id: index as u64 + 1,
                    data_dir,
                    log: node_dir.join("log"),
                    child: None,
                }
            })
            .collect();
        Cluster {
            dir,
            members,
            ports,
            nodes,
            extra_args: Vec::new(),
        }
    }

    /// Starts every node and waits until all of them are ready.
    fn start_ready(name: &str) -> Cluster {
        let mut cluster = Cluster::new(name);
        cluster.start_all();
        cluster.wait_ready_all();
        cluster
    }

    /// Starts node `index` (0-based) on its data directory. Its log lines are appended to
    /// its log file, so a restarted node's lines follow those of the earlier run.
    fn start(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "node {} already runs", node.id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("opening the node's log file");
        let log_err = log.try_clone().expect("duplicating the log file handle");
        let child = Command::new(binary())
            .arg("serve")
            .args(["--node-id", &node.id.to_string()])
            .args(["--cluster-id", &CLUSTER_ID.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--storage", "disk"])
            // Small segments (the smallest that fits the default write size twice), so
            // that a suite of three-node tests preallocates little disk space.
            .args(["--segment-bytes", &SEGMENT_BYTES.to_string()])
            .args(["--shards", &SHARDS.to_string()])
            .args(["--groups", &GROUPS.to_string()])
            .args(["--members", &self.members])
            .args(["--log-level", "info"])
            .args(&self.extra_args)
            // Plain log lines in the file, without terminal colours.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("starting shardraft serve");
        node.child = Some(child);
    }

    fn start_all(&mut self) {
        for index in 0..NODES {
            self.start(index);
        }
    }

    /// Sends SIGKILL to node `index` and reaps it.
    fn kill(&mut self, index: usize) {
        self.kill_all_of(&[index]);
    }

    /// Sends SIGKILL to every listed node before it reaps any of them.
    fn kill_all_of(&mut self, indices: &[usize]) {
        for &index in indices {
            let child = self.nodes[index].child.as_ref().expect("the node runs");
            signal(child, Signal::SIGKILL);
        }
        for &index in indices {
            let mut child = self.nodes[index].child.take().expect("the node runs");
            let status = wait_with_timeout(&mut child, STOP_TIMEOUT);
            assert!(
                status.is_some(),
                "node {} did not exit after SIGKILL",
                index + 1
            );
        }
    }

    /// Asserts that node `index` still runs.
    fn assert_running(&mut self, index: usize) {
        let child = self.nodes[index]
            .child
            .as_mut()
            .expect("the node was started");
        let exited = child.try_wait().expect("checking a child process");
        assert!(
            exited.is_none(),
            "node {} exited by itself: {exited:?}",
            index + 1
        );
    }

    fn endpoint(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.ports[index].client)
    }

    /// Returns every node's client address, comma-separated, as `--endpoints` takes them.
    fn endpoints(&self) -> String {
        (0..NODES)
            .map(|index| self.endpoint(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn http_address(&self, index: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[index].http))
    }

    fn http(&self, index: usize, path: &str) -> Option<HttpReply> {
        http_get(self.http_address(index), path)
    }

    /// Waits until `/health/ready` of every listed node responds with status 200.
    fn wait_ready(&mut self, indices: &[usize]) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for &index in indices {
            loop {
                self.assert_running(index);
                let reply = self.http(index, "/health/ready");
                if reply.as_ref().is_some_and(|reply| reply.status == 200) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} was not ready within {READY_TIMEOUT:?}; last answer: {reply:?}",
                    index + 1
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn wait_ready_all(&mut self) {
        self.wait_ready(&[0, 1, 2]);
    }

    /// Returns the `/v1/status` entry of `group` on node `index`, or `None` when the node
    /// does not respond with status 200.
    fn group_status(&self, index: usize, group: u32) -> Option<GroupState> {
        let reply = self.http(index, "/v1/status")?;
        if reply.status != 200 {
            return None;
        }
        let body: serde_json::Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|error| panic!("/v1/status is not JSON ({error}): {}", reply.body));
        let groups = body["groups"].as_array().expect("/v1/status lists groups");
        let entry = groups
            .iter()
            .find(|entry| entry["group"].as_u64() == Some(u64::from(group)))?;
        Some(GroupState {
            leader: entry["leader"].as_u64(),
            applied_index: entry["applied_index"]
                .as_u64()
                .expect("a group has an applied_index"),
        })
    }

    /// Waits until every node names the same leader of `group` and returns its node id.
    fn agreed_leader(&self, group: u32) -> u64 {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let leaders: Vec<Option<u64>> = (0..NODES)
                .map(|index| self.group_status(index, group).and_then(|s| s.leader))
                .collect();
            if let Some(leader) = leaders[0]
                && leaders.iter().all(|other| *other == Some(leader))
            {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes did not agree on a leader of group {group}: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
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
                eprintln!(
                    "---- last {LOG_TAIL_LINES} lines of node {} ({}) ----\n{}",
                    node.id,
                    node.log.display(),
                    last_lines(&node.log, LOG_TAIL_LINES)
                );
            }
        } else {
            // Kept only when a test failed, for its logs and data files.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct GroupState {
    leader: Option<u64>,
    applied_index: u64,
}

/// An HTTP response as read from the socket.
#[derive(Debug)]
struct HttpReply {
    status: u16,
    body: String,
}

/// Sends a fixed HTTP/1.0 `GET`, so that the server closes the connection after the
/// response, and parses the response. Returns `None` when the server cannot be reached or
/// responds with something that is not HTTP.
fn http_get(address: SocketAddr, path: &str) -> Option<HttpReply> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_bytes) = response.parse(&raw).ok()? else {
        return None;
    };
    Some(HttpReply {
        status: response.code?,
        body: String::from_utf8_lossy(&raw[head_bytes..]).into_owned(),
    })
}

/// What one command-line call printed and how it exited.
#[derive(Debug)]
struct CliRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the `shardraft` command line with `--endpoints` and a timeout before `args`.
fn cli(endpoints: &str, args: &[&str]) -> CliRun {
    let mut child = Command::new(binary())
        .args(["--endpoints", endpoints])
        .args(["--timeout-ms", &CLI_TIMEOUT_MS.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the shardraft command line");
    // The output is a few lines, well within the pipe buffers, so waiting before reading
    // cannot block the child.
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
    assert!(
        status.is_some(),
        "shardraft {args:?} ran longer than {CLI_DEADLINE:?}; stderr: {stderr}"
    );
    CliRun {
        code: status.and_then(|status| status.code()),
        stdout,
        stderr,
    }
}

/// Runs a command that must exit with `code` and returns its output.
fn cli_expect(endpoints: &str, args: &[&str], code: i32) -> CliRun {
    let run = cli(endpoints, args);
    assert_eq!(
        run.code,
        Some(code),
        "exit status of shardraft {args:?}; stdout: {}; stderr: {}",
        run.stdout,
        run.stderr
    );
    run
}

/// Asserts that `get KEY` (with `extra` flags) prints `value`.
fn assert_get(endpoints: &str, key: &str, extra: &[&str], value: &str) {
    let mut args = vec!["get", key];
    args.extend_from_slice(extra);
    let run = cli_expect(endpoints, &args, 0);
    assert_eq!(run.stdout.trim_end(), value, "value printed for {key}");
}

/// Returns the first `count` keys `{prefix}{n}` that fall into `group`.
fn keys_in_group(prefix: &str, group: u32, count: usize) -> Vec<String> {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .filter(|key| group_for_key(key.as_bytes(), GROUPS).0 == group)
        .take(count)
        .collect()
}

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|candidate| candidate.is_file())
}

/// Sends `bytes` on a new connection to `address` and reads until the server closes it.
/// Returns whether the server closed the connection within the read timeout.
fn send_and_expect_close(address: &str, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(address).expect("connecting to the client port");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("setting a read timeout");
    // The server may close the connection before it reads everything. A failed write then
    // shows up as a reset, which counts as a close.
    let _ = stream.write_all(bytes);
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(error) => matches!(
            error.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
    }
}

/// Returns deterministic pseudo-random bytes (xorshift64) that start with a byte no frame
/// magic starts with.
fn noise(count: usize, mut state: u64) -> Vec<u8> {
    let mut bytes = vec![0xff];
    while bytes.len() < count {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(count);
    bytes
}

#[test]
fn cli_writes_reads_scans_and_cases() {
    let cluster = Cluster::start_ready("cli_writes_reads_scans_and_cases");
    let endpoints = cluster.endpoints();

    let put = cli_expect(&endpoints, &["put", "fruit/apple", "red"], 0);
    assert!(
        put.stdout.starts_with("stored at index "),
        "put reports the index: {}",
        put.stdout
    );
    assert_get(&endpoints, "fruit/apple", &[], "red");

    let missing = cli_expect(&endpoints, &["get", "fruit/none"], 3);
    assert!(
        !missing.stderr.trim().is_empty(),
        "a missing key is reported on stderr"
    );

    cli_expect(&endpoints, &["cas", "fruit/apple", "red", "green"], 0);
    assert_get(&endpoints, "fruit/apple", &[], "green");
    cli_expect(&endpoints, &["cas", "fruit/apple", "red", "blue"], 3);
    assert_get(&endpoints, "fruit/apple", &[], "green");
    cli_expect(&endpoints, &["cas", "--absent", "fruit/apple", "yellow"], 3);
    assert_get(&endpoints, "fruit/apple", &[], "green");
    cli_expect(
        &endpoints,
        &["cas", "--absent", "fruit/banana", "yellow"],
        0,
    );
    assert_get(&endpoints, "fruit/banana", &[], "yellow");

    cli_expect(&endpoints, &["put", "fruit/cherry", "dark"], 0);
    cli_expect(&endpoints, &["put", "vegetable/leek", "white"], 0);
    let deleted = cli_expect(&endpoints, &["del", "fruit/cherry"], 0);
    assert_eq!(deleted.stdout.trim(), "deleted", "del of an existing key");
    cli_expect(&endpoints, &["get", "fruit/cherry"], 3);

    let scan = cli_expect(
        &endpoints,
        &["--output", "json", "scan", "fruit/", "--limit", "1"],
        0,
    );
    let page: serde_json::Value = serde_json::from_str(scan.stdout.trim())
        .unwrap_or_else(|error| panic!("scan output is not JSON ({error}): {}", scan.stdout));
    let entries = page["entries"].as_array().expect("scan lists entries");
    assert_eq!(entries.len(), 1, "--limit 1 prints one entry: {page}");
    assert_eq!(entries[0]["key"], "fruit/apple", "the first key in order");
    assert_eq!(entries[0]["value"], "green", "the first key's value");
    assert_eq!(page["more"], true, "fruit/banana follows: {page}");

    let all = cli_expect(
        &endpoints,
        &["--output", "json", "scan", "fruit/", "--limit", "10"],
        0,
    );
    let page: serde_json::Value =
        serde_json::from_str(all.stdout.trim()).expect("scan output is JSON");
    let keys: Vec<&str> = page["entries"]
        .as_array()
        .expect("scan lists entries")
        .iter()
        .map(|entry| entry["key"].as_str().expect("a key is a string"))
        .collect();
    assert_eq!(
        keys,
        ["fruit/apple", "fruit/banana"],
        "the deleted key and the other prefix are left out"
    );
    assert_eq!(page["more"], false, "no key follows");

    let status = cli_expect(&endpoints, &["status"], 0);
    for id in 1..=NODES {
        assert!(
            status.stdout.contains(&format!("node {id} at ")),
            "status reports node {id}: {}",
            status.stdout
        );
    }
}

#[test]
fn killed_leader_is_replaced_and_catches_up() {
    let mut cluster = Cluster::start_ready("killed_leader_is_replaced_and_catches_up");
    let endpoints = cluster.endpoints();
    let group = group_for_key(b"watched", GROUPS).0;
    cli_expect(&endpoints, &["put", "watched", "before"], 0);

    let leader = cluster.agreed_leader(group);
    let victim = usize::try_from(leader - 1).expect("a node index");
    cluster.kill(victim);

    let keys = keys_in_group("after-kill-", group, 20);
    for (n, key) in keys.iter().enumerate() {
        cli_expect(&endpoints, &["put", key, &format!("value-{n}")], 0);
    }
    let last_key = keys.last().expect("20 keys");
    let last_value = format!("value-{}", keys.len() - 1);

    cluster.start(victim);
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        cluster.assert_running(victim);
        let others: Vec<Option<u64>> = (0..NODES)
            .filter(|&index| index != victim)
            .map(|index| cluster.group_status(index, group).map(|s| s.applied_index))
            .collect();
        let restarted = cluster.group_status(victim, group);
        let caught_up = restarted.is_some_and(|state| {
            state.leader.is_some()
                && others
                    .iter()
                    .all(|other| *other == Some(state.applied_index))
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {leader} did not catch up in group {group}: {restarted:?}, others {others:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let own = cluster.endpoint(victim);
    assert_get(&own, last_key, &["--stale"], &last_value);
    assert_get(&own, &keys[0], &["--stale"], "value-0");
    assert_get(&own, "watched", &["--stale"], "before");
}

#[test]
fn every_acknowledged_write_survives_killing_all_nodes() {
    let mut cluster = Cluster::start_ready("every_acknowledged_write_survives_killing_all_nodes");
    let addresses: Vec<String> = (0..NODES).map(|index| cluster.endpoint(index)).collect();
    let mut config = ClientConfig::new(addresses.iter().cloned());
    config.request_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(1);
    let client = Client::connect(config.clone()).expect("connecting to the cluster");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("acked-{n}");
                let value = format!("value-{n}");
                if client.put(key.as_bytes(), value.as_bytes()).is_ok() {
                    acknowledged.push((key, value));
                }
                n += 1;
            }
            acknowledged
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    cluster.kill_all_of(&[0, 1, 2]);
    stop.store(true, Ordering::Relaxed);
    let acknowledged = writer.join().expect("joining the writer thread");
    assert!(
        !acknowledged.is_empty(),
        "the cluster acknowledged no write within 1 s"
    );

    cluster.start_all();
    cluster.wait_ready_all();
    let client = Client::connect(config).expect("connecting to the restarted cluster");
    for (key, value) in &acknowledged {
        let found = client
            .get(key.as_bytes())
            .unwrap_or_else(|error| panic!("reading acknowledged {key}: {error}"));
        assert_eq!(
            found.value.as_ref(),
            value.as_bytes(),
            "value of acknowledged {key}"
        );
    }
    eprintln!(
        "{} acknowledged writes survived the crash",
        acknowledged.len()
    );
}

#[test]
fn readiness_flips_after_election_and_metrics_pass_promtool() {
    let mut cluster = Cluster::new("readiness_flips_after_election_and_metrics_pass_promtool");
    cluster.start(0);
    let deadline = Instant::now() + READY_TIMEOUT;
    let lone = loop {
        cluster.assert_running(0);
        if let Some(reply) = cluster.http(0, "/health/ready") {
            break reply;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 did not answer HTTP within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        lone.status, 503,
        "a lone node of three is not ready: {}",
        lone.body
    );

    cluster.start(1);
    cluster.start(2);
    cluster.wait_ready_all();

    let endpoints = cluster.endpoints();
    let writes = 8;
    for n in 0..writes {
        cli_expect(&endpoints, &["put", &format!("metric-{n}"), "x"], 0);
    }

    let promtool = promtool();
    if promtool.is_none() {
        eprintln!("skipping promtool check metrics: promtool is not on PATH");
    }
    let mut applied = 0.0;
    for index in 0..NODES {
        let scrape = cluster.http(index, "/metrics").expect("scraping /metrics");
        assert_eq!(scrape.status, 200, "/metrics status of node {}", index + 1);
        for name in [
            "shardraft_proposals_total",
            "shardraft_log_sync_duration_seconds",
        ] {
            assert!(
                scrape.body.contains(name),
                "node {} exports {name}",
                index + 1
            );
        }
        applied += scrape
            .body
            .lines()
            .filter(|line| {
                line.starts_with("shardraft_proposals_total{")
                    && line.contains("result=\"applied\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
        if let Some(promtool) = &promtool {
            let mut check = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting promtool");
            check
                .stdin
                .take()
                .expect("promtool's stdin")
                .write_all(scrape.body.as_bytes())
                .expect("writing the scrape to promtool");
            let output = check.wait_with_output().expect("running promtool");
            assert!(
                output.status.success(),
                "promtool check metrics on node {}: {}{}",
                index + 1,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    assert!(
        applied >= f64::from(writes),
        "the leaders count at least {writes} applied proposals, counted {applied}"
    );
}

#[test]
fn sigterm_exits_0_and_restart_loses_nothing() {
    let mut cluster = Cluster::start_ready("sigterm_exits_0_and_restart_loses_nothing");
    let endpoints = cluster.endpoints();
    let keys: Vec<String> = (0..12).map(|n| format!("kept-{n}")).collect();
    for key in &keys {
        cli_expect(&endpoints, &["put", key, &format!("{key}-value")], 0);
    }

    for node in &cluster.nodes {
        signal(node.child.as_ref().expect("the node runs"), Signal::SIGTERM);
    }
    for index in 0..NODES {
        let mut child = cluster.nodes[index].child.take().expect("the node runs");
        let status = wait_with_timeout(&mut child, STOP_TIMEOUT);
        if status.is_none() {
            // Hand it back so that the cluster's drop kills it.
            cluster.nodes[index].child = Some(child);
        }
        assert!(
            status.is_some(),
            "node {} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
            index + 1
        );
        assert_eq!(
            status.and_then(|status| status.code()),
            Some(0),
            "exit status of node {} after SIGTERM",
            index + 1
        );
    }

    cluster.start_all();
    cluster.wait_ready_all();
    for key in &keys {
        assert_get(&endpoints, key, &[], &format!("{key}-value"));
    }
}

#[test]
fn garbage_on_client_port_leaves_cluster_serving() {
    let mut cluster = Cluster::start_ready("garbage_on_client_port_leaves_cluster_serving");

    let mut bogus_hello = Vec::new();
    encode_frame_with(
        CLIENT_FRAME_FORMAT,
        FrameKind::Hello,
        b"this is not an archive of a client hello",
        &mut bogus_hello,
    );
    let mut damaged_checksum = bogus_hello.clone();
    damaged_checksum[12] ^= 0xff;
    let mut oversized = bogus_hello.clone();
    oversized[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut messages_first = Vec::new();
    encode_frame_with(
        CLIENT_FRAME_FORMAT,
        FrameKind::Messages,
        &[0u8; 64],
        &mut messages_first,
    );
    let inputs: [(&str, Vec<u8>); 5] = [
        ("random bytes", noise(4096, 0x9e37_79b9_7f4a_7c15)),
        ("a hello frame with an invalid archive", bogus_hello),
        ("a frame with a damaged checksum", damaged_checksum),
        ("a frame header claiming 4 GiB", oversized),
        ("a messages frame before the hello", messages_first),
    ];

    for index in 0..NODES {
        let address = cluster.endpoint(index);
        for (what, bytes) in &inputs {
            assert!(
                send_and_expect_close(&address, bytes),
                "node {} closes a connection that sent {what}",
                index + 1
            );
        }
    }

    for index in 0..NODES {
        cluster.assert_running(index);
        let own = cluster.endpoint(index);
        let key = format!("after-garbage-{}", index + 1);
        cli_expect(&own, &["put", &key, "fine"], 0);
        assert_get(&own, &key, &[], "fine");
    }
}

/// The newest segment file of a node's shard 0 that holds batches; a newer one may be
/// prepared but still empty.
fn newest_segment(data_dir: &Path) -> PathBuf {
    let shard_dir = data_dir.join("shard-0");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&shard_dir)
        .expect("listing the shard directory")
        .map(|entry| entry.expect("reading a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    segments.sort();
    segments
        .into_iter()
        .rev()
        .find(|path| {
            let bytes = std::fs::read(path).expect("reading a segment");
            bytes.get(4096..4100) == Some(&b"SRWB"[..])
        })
        .expect("the shard has a segment with batches")
}

/// Offset just past the last batch in a segment: batches start on 4 KiB blocks with the
/// magic `SRWB`, and the header's bytes 16..20 hold the payload length.
fn end_of_batches(segment: &[u8]) -> usize {
    const BLOCK: usize = 4096;
    let mut end = BLOCK;
    let mut offset = BLOCK;
    while offset + 32 <= segment.len() {
        if &segment[offset..offset + 4] == b"SRWB" {
            let payload = u32::from_le_bytes(segment[offset + 16..offset + 20].try_into().unwrap());
            end = (offset + 32 + payload as usize).div_ceil(BLOCK) * BLOCK;
            offset = end;
        } else {
            offset += BLOCK;
        }
    }
    end
}

#[test]
fn torn_log_tail_is_truncated_and_synced_damage_stops_the_node() {
    let mut cluster = Cluster::start_ready("torn_log_tail");
    let endpoints = cluster.endpoints();
    for index in 0..20 {
        cli_expect(&endpoints, &["put", &format!("torn-{index}"), "kept"], 0);
    }
    let node = 2;
    cluster.kill(node);

    // A batch whose write was cut short: its header block starts like a batch but the rest
    // is garbage, after every batch that was synced.
    let segment_path = newest_segment(&cluster.nodes[node].data_dir);
    let mut segment = std::fs::read(&segment_path).expect("reading the segment");
    let torn_at = end_of_batches(&segment);
    let mut torn = b"SRWB".to_vec();
    torn.extend(noise(600, 7));
    segment[torn_at..torn_at + torn.len()].copy_from_slice(&torn);
    std::fs::write(&segment_path, &segment).expect("writing the torn tail");

    cluster.start(node);
    cluster.wait_ready(&[node]);
    let log = std::fs::read_to_string(&cluster.nodes[node].log).expect("reading the node log");
    assert!(
        log.contains("truncating the torn final batch"),
        "the node did not report the torn batch:\n{}",
        last_lines(&cluster.nodes[node].log, LOG_TAIL_LINES)
    );
    let own = cluster.endpoint(node);
    assert_get(&own, "torn-19", &["--stale"], "kept");

    // Damage inside a batch that later batches follow: it was synced, so the node must
    // stop with an error naming the file and the offset instead of dropping data.
    cluster.kill(node);
    let segment_path = newest_segment(&cluster.nodes[node].data_dir);
    let mut segment = std::fs::read(&segment_path).expect("reading the segment");
    segment[4096 + 8] ^= 0x01;
    std::fs::write(&segment_path, &segment).expect("damaging a synced batch");
    cluster.start(node);
    let child = cluster.nodes[node]
        .child
        .as_mut()
        .expect("the node was started");
    let status = wait_with_timeout(child, STOP_TIMEOUT);
    cluster.nodes[node].child = None;
    let log = std::fs::read_to_string(&cluster.nodes[node].log).expect("reading the node log");
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(1),
        "the node did not stop on synced damage:\n{}",
        last_lines(&cluster.nodes[node].log, LOG_TAIL_LINES)
    );
    let file_name = segment_path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        log.contains(&file_name),
        "the error names the segment file:\n{log}"
    );
    assert!(log.contains("offset 4096"), "the error names the offset");

    // The two other nodes still form a majority and serve.
    cli_expect(&endpoints, &["put", "after-damage", "served"], 0);
    assert_get(&endpoints, "after-damage", &[], "served");
}

/// Flags that make every group snapshot every 200 entries, keeping 20 below a snapshot.
fn frequent_snapshot_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--snapshot-trigger-entries",
        "200",
        "--snapshot-log-tail-entries",
        "20",
        "--snapshot-transfer-progress-timeout-ms",
        "2000",
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(String::from).collect()
}

/// The sum over shards of a counter in node `index`'s `/metrics`, 0 when absent.
fn metric_total(cluster: &Cluster, index: usize, name: &str) -> f64 {
    let Some(reply) = cluster.http(index, "/metrics") else {
        return 0.0;
    };
    reply
        .body
        .lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes `count` keys through `client`, returning the acknowledged ones.
fn write_acknowledged(client: &Client, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut acknowledged = Vec::new();
    for n in 0..count {
        let (key, value) = (format!("{prefix}{n}"), format!("value-{n}"));
        if client.put(key.as_bytes(), value.as_bytes()).is_ok() {
            acknowledged.push((key, value));
        }
    }
    acknowledged
}

/// Waits until node `index` serves every acknowledged key as a stale read.
fn wait_for_acknowledged(cluster: &mut Cluster, index: usize, acknowledged: &[(String, String)]) {
    let mut config = ClientConfig::new([cluster.endpoint(index)]);
    config.request_timeout = Duration::from_secs(2);
    let client = Client::connect(config).expect("connecting to the restarted node");
    let deadline = Instant::now() + Duration::from_secs(60);
    for (key, value) in acknowledged {
        loop {
            cluster.assert_running(index);
            let found = client.get_stale(key.as_bytes()).ok();
            if found.is_some_and(|found| found.value.as_ref() == value.as_bytes()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} lacks acknowledged {key} after 60 s",
                index + 1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn stopped_follower_catches_up_by_snapshot() {
    let mut cluster = Cluster::new("stopped_follower_catches_up_by_snapshot");
    cluster.extra_args = frequent_snapshot_args(&[]);
    cluster.start_all();
    cluster.wait_ready_all();
    let group = 0;
    let leader = cluster.agreed_leader(group);
    let follower = usize::try_from(leader % NODES as u64).expect("a node index");
    let survivors: Vec<String> = (0..NODES)
        .filter(|&index| index != follower)
        .map(|index| cluster.endpoint(index))
        .collect();
    let mut config = ClientConfig::new(survivors.iter().cloned());
    config.request_timeout = Duration::from_secs(5);
    let client = Arc::new(Client::connect(config).expect("connecting to the cluster"));
    let mut acknowledged = write_acknowledged(&client, "early-", 100);
    cluster.kill(follower);

    // Four groups of 200-entry snapshots: 3,000 writes compact every group past the
    // stopped follower's log several times.
    acknowledged.extend(write_acknowledged(&client, "while-down-", 3_000));
    let writer = {
        let client = Arc::clone(&client);
        std::thread::spawn(move || write_acknowledged(&client, "during-", 1_000))
    };
    cluster.start(follower);
    acknowledged.extend(writer.join().expect("joining the writer thread"));

    wait_for_acknowledged(&mut cluster, follower, &acknowledged);
    let installed = metric_total(&cluster, follower, "shardraft_snapshots_installed_total");
    assert!(
        installed >= 1.0,
        "the follower installed {installed} snapshots"
    );
}

#[test]
fn killed_receiver_resumes_snapshot_transfer() {
    let mut cluster = Cluster::new("killed_receiver_resumes_snapshot_transfer");
    // 64 KiB/s makes a transfer of the ~300 KB snapshot below last about 5 s.
    cluster.extra_args = frequent_snapshot_args(&[
        "--snapshot-transfer-bytes-per-second",
        "65536",
        "--snapshot-transfer-chunk-bytes",
        "4096",
    ]);
    cluster.start_all();
    cluster.wait_ready_all();
    let group = 0;
    let leader = cluster.agreed_leader(group);
    let leader_index = usize::try_from(leader - 1).expect("a node index");
    let follower = usize::try_from(leader % NODES as u64).expect("a node index");
    cluster.kill(follower);
    let survivors: Vec<String> = (0..NODES)
        .filter(|&index| index != follower)
        .map(|index| cluster.endpoint(index))
        .collect();
    let client = Client::connect(ClientConfig::new(survivors.iter().cloned()))
        .expect("connecting to the cluster");
    let keys = keys_in_group("large-", group, 300);
    let value = "v".repeat(1000);
    let mut acknowledged = Vec::new();
    for key in &keys {
        client
            .put(key.as_bytes(), value.as_bytes())
            .expect("writing with two of three nodes up");
        acknowledged.push((key.clone(), value.clone()));
    }

    cluster.start(follower);
    let sent = "shardraft_snapshot_sent_bytes_total";
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_total(&cluster, leader_index, sent) < 60_000.0 {
        assert!(
            Instant::now() < deadline,
            "the leader sent no snapshot within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill(follower);
    let finished = "shardraft_snapshot_transfers_finished_total";
    assert_eq!(metric_total(&cluster, leader_index, finished), 0.0);

    cluster.start(follower);
    wait_for_acknowledged(&mut cluster, follower, &acknowledged);
    let resumed = "shardraft_snapshot_transfers_resumed_total";
    assert!(metric_total(&cluster, leader_index, resumed) >= 1.0);
}
