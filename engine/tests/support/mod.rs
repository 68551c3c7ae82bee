//! Helpers for tests that run whole nodes in the test process: free loopback ports, node
//! configs with their own data directories, and waiting for leaders.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::hash::BuildHasher;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardraft::config::{MemberConfig, NodeConfig};
use shardraft::kv::{KvLimits, KvStateMachine};
use shardraft::log::{GroupId, StorageKind};
use shardraft::node::{Node, NodeHandle};
use shardraft::raft::{NodeId, Role};

pub type KvNode = Node<KvStateMachine>;
pub type KvHandle = NodeHandle<KvStateMachine>;

/// The lowest port these tests choose, above the usual registered services.
const TEST_PORT_MIN: u16 = 10_000;

/// `count` distinct free loopback addresses. The listeners are held until all are chosen,
/// so the addresses differ. They are released before the nodes bind them.
pub fn free_addresses(count: usize) -> Vec<SocketAddr> {
    free_port_runs(&vec![1; count])
        .into_iter()
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect()
}

/// Returns one free loopback port that this test process has not handed out before.
pub fn free_port() -> u16 {
    free_port_runs(&[1])[0]
}

/// Returns, for each length in `run_lengths`, the first port of that many consecutive free
/// loopback ports. The runs overlap neither each other nor a port this test process handed
/// out before, since a node that is running or about to start may use such a port.
///
/// The ports come from below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), chosen at random. A port from `bind` to
/// port 0 lies in that range. The outgoing connections of tests running at the same time
/// take their source ports from it too, and one could take the port between its release
/// and the node's bind. Where the range leaves too few ports below it, the kernel chooses.
pub fn free_port_runs(run_lengths: &[u16]) -> Vec<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let hasher = std::collections::hash_map::RandomState::new();
    let mut draws = 0u64;
    // Every listener stays bound until all runs are chosen, so no two runs coincide.
    let mut listeners: Vec<TcpListener> = Vec::new();
    let mut first_ports = Vec::with_capacity(run_lengths.len());
    for &length in run_lengths {
        let length = length.max(1);
        let choices = ephemeral_min.saturating_sub(TEST_PORT_MIN + length);
        let mut run = None;
        while run.is_none() && choices >= 100 && draws < 100_000 {
            draws += 1;
            let first = TEST_PORT_MIN + (hasher.hash_one(draws) % u64::from(choices)) as u16;
            run = bind_run(first, length, &handed_out);
        }
        while run.is_none() {
            let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
            let first = listener
                .local_addr()
                .expect("reading a bound address")
                .port();
            drop(listener);
            run = bind_run(first, length, &handed_out);
        }
        let run = run.expect("a run was bound");
        let first = run[0].local_addr().expect("reading a bound address").port();
        handed_out.extend(first..first + length);
        first_ports.push(first);
        listeners.extend(run);
    }
    first_ports
}

/// Binds `length` consecutive loopback ports from `first`, or returns `None` if one of
/// them is taken, was handed out before, or lies past the last port.
fn bind_run(first: u16, length: u16, handed_out: &BTreeSet<u16>) -> Option<Vec<TcpListener>> {
    (0..length)
        .map(|offset| {
            let port = first.checked_add(offset)?;
            if handed_out.contains(&port) || !reuse_port_bind_succeeds(port) {
                return None;
            }
            TcpListener::bind(("127.0.0.1", port)).ok()
        })
        .collect()
}

/// Returns whether a socket with `SO_REUSEPORT` and without `SO_REUSEADDR`, as glommio's
/// listeners are, can bind loopback `port` now. A std listener sets `SO_REUSEADDR`, so it
/// binds beside connections in `TIME_WAIT` that a glommio listener then conflicts with,
/// such as those the HTTP server of an earlier test left on the same port.
pub fn reuse_port_bind_succeeds(port: u16) -> bool {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd;

    let Ok(socket) = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    if setsockopt(&socket, sockopt::ReusePort, &true).is_err() {
        return false;
    }
    bind(socket.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).is_ok()
}

/// A fresh directory under the test target directory, which is disk-backed.
pub fn test_dir(name: &str) -> TestDir {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).expect("creating the test directory");
    TestDir { path }
}

/// A test's directory. Dropping it removes the directory when the test passed, so that a
/// full suite leaves no segment files behind. A failed test keeps its files for reading.
/// Bind it to a variable that outlives the nodes using it: a temporary is removed at the
/// end of its statement.
#[must_use = "the directory is removed when this value is dropped"]
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl Deref for TestDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<OsStr> for TestDir {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Configs of a cluster of `nodes` members with `shards` shards each, every node with its
/// own data directory under `dir`.
pub fn cluster_configs(dir: &Path, nodes: u64, shards: usize, groups: u32) -> Vec<NodeConfig> {
    let addresses = free_addresses(nodes as usize * shards);
    let members: Vec<MemberConfig> = (0..nodes)
        .map(|node| MemberConfig {
            id: node + 1,
            addresses: addresses[node as usize * shards..(node as usize + 1) * shards].to_vec(),
        })
        .collect();
    (1..=nodes)
        .map(|node_id| {
            let data_dir = dir.join(format!("node-{node_id}"));
            std::fs::create_dir_all(&data_dir).expect("creating a node directory");
            let mut config = NodeConfig {
                cluster_id: 0x5eed,
                node_id,
                members: members.clone(),
                shards: Some(shards),
                groups,
                tick_interval_ms: 10,
                request_timeout_ms: 5_000,
                ..NodeConfig::default()
            };
            config.log.storage = StorageKind::Disk;
            config.log.data_dir = data_dir;
            config.log.segment_bytes = 4 << 20;
            config.log.flush_bytes_max = 1 << 20;
            config.log.pending_bytes_max = 8 << 20;
            config.log.entry_cache_bytes_max = 8 << 20;
            config
        })
        .collect()
}

pub fn kv_limits() -> KvLimits {
    KvLimits {
        key_bytes_max: 1024,
        value_bytes_max: 64 * 1024,
    }
}

pub fn start_node(config: &NodeConfig) -> KvNode {
    Node::start(config.clone(), |_| KvStateMachine::new(kv_limits())).expect("starting a node")
}

/// Waits until one of `handles` leads `group` and every handle agrees, returning the
/// leader's id.
pub fn wait_for_leader(handles: &[&KvHandle], group: GroupId, timeout: Duration) -> NodeId {
    let deadline = Instant::now() + timeout;
    loop {
        let mut leaders = Vec::new();
        for handle in handles {
            let status = handle.status().expect("reading node status");
            let group_status = status.group(group).expect("the group is hosted");
            if group_status.role == Role::Leader {
                leaders.push(handle.node_id());
            }
        }
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "group {group} had no single leader within {timeout:?} (leaders: {leaders:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `promtool check metrics` on `metrics` when promtool is installed (Debian package
/// `prometheus`), and prints why it was skipped otherwise.
pub fn check_with_promtool(metrics: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            println!("skipping the promtool check: running promtool failed: {error}");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(metrics.as_bytes())
        .expect("writing the metrics to promtool");
    let output = child.wait_with_output().expect("waiting for promtool");
    assert!(
        output.status.success(),
        "promtool rejected the metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
