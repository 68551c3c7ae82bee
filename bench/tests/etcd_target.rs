//! The etcd target against a real 3-member etcd cluster, started and stopped through
//! `scripts/peer-etcd.sh` on free loopback ports and its own data directory, and against a
//! loopback server that sends malformed replies.
//!
//! The cluster test runs only where an etcd binary exists (`SHARDRAFT_ETCD_BIN`, `etcd` on
//! `PATH` or `/usr/bin/etcd`) and prints why it skips otherwise; `scripts/peer-etcd.sh
//! start` installs one. Run with `--nocapture` to see the latency it measures.

use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardraft_bench::harness::target::etcd::EtcdTarget;
use shardraft_bench::harness::target::{
    ReadMode, Request, RequestError, Response, Session, Target,
};

/// Sequential puts timed by the cluster test.
const MEASURED_PUTS: usize = 300;

/// Runs `future` to completion on a glommio executor in the calling thread.
fn run_local<T>(future: impl Future<Output = T>) -> T {
    glommio::LocalExecutor::default().run(future)
}

fn put(key: &str, value: &[u8]) -> Request {
    Request::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value),
    }
}

fn get(key: &str, mode: ReadMode) -> Request {
    Request::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
        mode,
    }
}

fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SHARDRAFT_ETCD_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|directory| directory.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// Returns `count` distinct loopback ports that were free a moment ago (see
/// [`bind_unused_ports`]), released for etcd to bind.
fn free_ports(count: usize) -> Vec<u16> {
    bind_unused_ports(count)
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

/// Binds `count` loopback listeners on ports chosen at random below the kernel's ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`), none of which this test process has
/// bound before. A port from `bind` to port 0 lies in that range. The outgoing connections
/// of tests running at the same time take their source ports from it too. So such a port
/// could be taken before etcd binds it, or bound by another test's server right after a
/// test closed it to see connections refused.
fn bind_unused_ports(count: usize) -> Vec<TcpListener> {
    const PORT_MIN: u16 = 10_000;
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let ephemeral_min = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let choices = u64::from(ephemeral_min.saturating_sub(PORT_MIN).max(1));
    let hasher = std::collections::hash_map::RandomState::new();
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(count);
    for draw in 0..100_000u64 {
        if listeners.len() == count {
            break;
        }
        let port = PORT_MIN + (hasher.hash_one(draw) % choices) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            handed_out.insert(port);
            listeners.push(listener);
        }
    }
    while listeners.len() < count {
        listeners.push(TcpListener::bind("127.0.0.1:0").expect("binding a free loopback port"));
    }
    listeners
}

/// A cluster started by `scripts/peer-etcd.sh start`, stopped and removed on drop.
struct EtcdCluster {
    script: PathBuf,
    directory: PathBuf,
    client_ports: Vec<u16>,
    peer_ports: Vec<u16>,
}

impl EtcdCluster {
    fn start(binary: &Path) -> EtcdCluster {
        let ports = free_ports(6);
        let directory = std::env::temp_dir().join(format!("shardraft-etcd-{}", std::process::id()));
        let cluster = EtcdCluster {
            script: Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/peer-etcd.sh"),
            directory,
            client_ports: ports[..3].to_vec(),
            peer_ports: ports[3..].to_vec(),
        };
        let output = cluster
            .script_command("start")
            .env("SHARDRAFT_ETCD_BIN", binary)
            .output()
            .expect("running scripts/peer-etcd.sh start");
        assert!(
            output.status.success(),
            "scripts/peer-etcd.sh start failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        cluster
    }

    fn script_command(&self, action: &str) -> Command {
        let join = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut command = Command::new("bash");
        command
            .arg(&self.script)
            .arg(action)
            .env("SHARDRAFT_ETCD_DIR", &self.directory)
            .env("SHARDRAFT_ETCD_CLIENT_PORTS", join(&self.client_ports))
            .env("SHARDRAFT_ETCD_PEER_PORTS", join(&self.peer_ports));
        command
    }

    fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        match self.script_command("stop").output() {
            Ok(output) if output.status.success() => {
                let _ = std::fs::remove_dir_all(&self.directory);
            }
            Ok(output) => eprintln!(
                "scripts/peer-etcd.sh stop failed; members may still run under {}:\n{}",
                self.directory.display(),
                String::from_utf8_lossy(&output.stderr)
            ),
            Err(error) => eprintln!("running scripts/peer-etcd.sh stop failed: {error}"),
        }
    }
}

#[test]
fn etcd_cluster_serves_puts_and_gets() {
    let Some(binary) = etcd_binary() else {
        println!(
            "skipping: no etcd binary (set SHARDRAFT_ETCD_BIN, or install the Debian package \
             etcd-server, for example with scripts/peer-etcd.sh start)"
        );
        return;
    };
    let cluster = EtcdCluster::start(&binary);
    let endpoints = cluster.endpoints();
    let status = cluster.script_command("status").output().unwrap();
    assert!(status.status.success(), "status after start is not healthy");

    run_local(async move {
        let target = EtcdTarget::connect(endpoints.clone(), Duration::from_secs(5))
            .await
            .unwrap();
        check_facts(&target, &endpoints);
        check_puts_and_gets(&target).await;
        measure_sequential_puts(&target).await;
    });
    drop(cluster);
}

fn check_facts(target: &EtcdTarget, endpoints: &[String]) {
    let facts = target.facts();
    assert_eq!(facts.kind, "etcd");
    assert!(facts.system.starts_with("etcd 3."), "{}", facts.system);
    assert!(
        facts.durability.contains("fdatasync"),
        "{}",
        facts.durability
    );
    for endpoint in endpoints {
        assert!(facts.reached_through.contains(endpoint.as_str()));
    }
    assert!(facts.reached_through.contains("JSON gateway over HTTP/1.1"));
}

async fn check_puts_and_gets(target: &EtcdTarget) {
    // Sessions 0, 1 and 2 reach the three members, so puts go to followers too.
    let mut sessions = Vec::new();
    for index in 0..3 {
        let session = target.open_session(index).await.unwrap();
        assert!(!session.multiplexes());
        sessions.push(session);
    }

    let binary_value: Vec<u8> = (0..=255).collect();
    for (index, session) in sessions.iter().enumerate() {
        let key = format!("key-{index}");
        let written = session.execute(&put(&key, &binary_value)).await;
        assert_eq!(
            written,
            Ok(Response::Written),
            "put through session {index}"
        );
    }
    for session in &sessions {
        for index in 0..3 {
            let key = format!("key-{index}");
            let read = session.execute(&get(&key, ReadMode::Linearizable)).await;
            let expected = Response::Value(Some(Bytes::from(binary_value.clone())));
            assert_eq!(read, Ok(expected), "linearizable get of {key}");
        }
    }

    let session = &sessions[1];
    assert_eq!(
        session.execute(&put("empty", b"")).await,
        Ok(Response::Written)
    );
    let read = session.execute(&get("empty", ReadMode::Linearizable)).await;
    assert_eq!(read, Ok(Response::Value(Some(Bytes::new()))));
    let absent = session
        .execute(&get("absent", ReadMode::Linearizable))
        .await;
    assert_eq!(absent, Ok(Response::Value(None)));
    let absent_stale = session.execute(&get("absent", ReadMode::Stale)).await;
    assert_eq!(absent_stale, Ok(Response::Value(None)));

    // A stale read may lag behind, but the member that took the put has applied it.
    assert_eq!(
        session.execute(&put("stale", b"v2")).await,
        Ok(Response::Written)
    );
    let read = session.execute(&get("stale", ReadMode::Stale)).await;
    assert_eq!(read, Ok(Response::Value(Some(Bytes::from_static(b"v2")))));
}

async fn measure_sequential_puts(target: &EtcdTarget) {
    let session = target.open_session(0).await.unwrap();
    let value = [0x5a_u8; 16];
    let mut latencies = Vec::with_capacity(MEASURED_PUTS);
    for index in 0..MEASURED_PUTS {
        let start = Instant::now();
        let written = session
            .execute(&put(&format!("measured-{index}"), &value))
            .await;
        latencies.push(start.elapsed());
        assert_eq!(written, Ok(Response::Written));
    }
    latencies.sort();
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "etcd sequential puts through the JSON gateway, 1 client, {MEASURED_PUTS} puts of 16 \
         bytes: p50 {:?}, p99 {:?}, max {:?}",
        quantile(0.5),
        quantile(0.99),
        latencies[latencies.len() - 1]
    );
}

/// What the loopback server does with one request.
enum Reply {
    /// Sends these bytes, then closes the connection.
    Send(&'static [u8]),
    /// Keeps the connection open without a reply this long, then closes it.
    Silent(Duration),
}

/// Serves `GET /version` like etcd and replies to every other request with the next reply of
/// `replies`, one connection at a time. The server closes its listener and ends once every
/// reply is used. Returns its address and its thread.
fn start_malformed_server(replies: Vec<Reply>) -> (String, thread::JoinHandle<()>) {
    let listener = bind_unused_ports(1).remove(0);
    let address = listener.local_addr().unwrap().to_string();
    let mut replies = VecDeque::from(replies);
    let server = thread::spawn(move || {
        while !replies.is_empty() {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            serve_connection(stream, &mut replies);
        }
    });
    (address, server)
}

/// Serves one request of one connection, then closes it.
fn serve_connection(mut stream: TcpStream, replies: &mut VecDeque<Reply>) {
    let Some(request_line) = read_request(&mut stream) else {
        return;
    };
    if request_line.starts_with("GET /version") {
        let body = r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(reply.as_bytes());
        return;
    }
    match replies.pop_front() {
        Some(Reply::Send(bytes)) => {
            let _ = stream.write_all(bytes);
        }
        Some(Reply::Silent(duration)) => thread::sleep(duration),
        None => {}
    }
}

/// Reads one request, head and `Content-Length` body, and returns its request line.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        received.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&received).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).ok()?;
    head.lines().next().map(str::to_string)
}

/// Expects an error of the given kind whose message contains `expected`.
fn assert_error(outcome: Result<Response, RequestError>, indeterminate: bool, expected: &str) {
    let message = match (outcome, indeterminate) {
        (Err(RequestError::Indeterminate(message)), true) => message,
        (Err(RequestError::Refused(message)), false) => message,
        (other, _) => {
            let kind = if indeterminate {
                "Indeterminate"
            } else {
                "Refused"
            };
            panic!("expected {kind} containing {expected:?}, got {other:?}");
        }
    };
    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
}

#[test]
fn malformed_replies_are_clear_errors() {
    // A reply that leaves the connection open would make the client reuse it after the
    // server closed it.
    const NOT_JSON: &[u8] =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 8\r\n\r\nnot json";
    let oversized: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n";
    let cases: Vec<(Reply, Request, bool, &str)> = vec![
        (
            Reply::Send(b"garbage\r\n\r\n"),
            put("k", b"v"),
            true,
            "invalid status line",
        ),
        (
            Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"hea"),
            put("k", b"v"),
            true,
            "connection closed after",
        ),
        (
            Reply::Send(oversized),
            put("k", b"v"),
            true,
            "exceeds the maximum",
        ),
        (
            Reply::Send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n"),
            put("k", b"v"),
            true,
            "invalid chunk size line \"xyz\"",
        ),
        (
            Reply::Send(b""),
            put("k", b"v"),
            true,
            "connection closed after 0 bytes",
        ),
        (
            Reply::Send(NOT_JSON),
            put("k", b"v"),
            true,
            "not a put reply",
        ),
        (
            Reply::Send(b"garbage\r\n\r\n"),
            get("k", ReadMode::Linearizable),
            false,
            "invalid status line",
        ),
        (
            Reply::Send(NOT_JSON),
            get("k", ReadMode::Stale),
            false,
            "not a range reply",
        ),
        // Last, because the server sleeps through the next connection's request too.
        (
            Reply::Silent(Duration::from_millis(1500)),
            put("k", b"v"),
            true,
            "no complete reply within the request timeout",
        ),
    ];
    let (replies, checks): (Vec<_>, Vec<_>) = cases
        .into_iter()
        .map(|(reply, request, indeterminate, expected)| {
            (reply, (request, indeterminate, expected))
        })
        .unzip();
    let (address, _server) = start_malformed_server(replies);

    run_local(async move {
        let target = EtcdTarget::connect(vec![address], Duration::from_millis(500))
            .await
            .unwrap();
        assert_eq!(target.facts().system, "etcd 3.4.23");
        let session = target.open_session(0).await.unwrap();
        for (request, indeterminate, expected) in checks {
            let outcome = session.execute(&request).await;
            assert_error(outcome, indeterminate, expected);
        }
    });
}

#[test]
fn closed_port_is_a_clear_error() {
    let port = free_ports(1)[0];
    let endpoint = format!("127.0.0.1:{port}");
    let error = run_local(async move {
        EtcdTarget::connect(vec![endpoint], Duration::from_secs(1))
            .await
            .unwrap_err()
            .to_string()
    });
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(error.contains("connecting failed"), "{error}");
}

#[test]
fn invalid_endpoints_are_rejected() {
    let error = run_local(async {
        let empty = EtcdTarget::connect(Vec::new(), Duration::from_secs(1)).await;
        let https = EtcdTarget::connect(
            vec!["https://127.0.0.1:2379".to_string()],
            Duration::from_secs(1),
        )
        .await;
        (
            empty.unwrap_err().to_string(),
            https.unwrap_err().to_string(),
        )
    });
    assert!(error.0.contains("at least one endpoint"), "{}", error.0);
    assert!(error.1.contains("does not support"), "{}", error.1);
}

#[test]
fn put_to_stopped_member_is_refused() {
    // One put succeeds and closes its connection; then the server stops listening, so the
    // next put cannot connect and nothing of it is sent.
    let written: &'static [u8] =
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 13\r\n\r\n{\"header\":{}}";
    let (address, server) = start_malformed_server(vec![Reply::Send(written)]);

    run_local(async move {
        let target = EtcdTarget::connect(vec![address], Duration::from_secs(1))
            .await
            .unwrap();
        let session = target.open_session(0).await.unwrap();
        assert_eq!(
            session.execute(&put("k", b"v")).await,
            Ok(Response::Written)
        );
        server.join().unwrap();
        let outcome = session.execute(&put("k", b"v")).await;
        assert_error(outcome, false, "connecting failed");
    });
}
