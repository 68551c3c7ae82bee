//! The `shardraft` binary as an operator runs it: real processes on loopback.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{free_port, reuse_port_bind_succeeds, test_dir};

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_shardraft")
}

/// Size of each log segment file, which a node preallocates in full: the smallest that
/// fits the default write size twice, so that these tests take little disk space.
const SEGMENT_BYTES: &str = "16777216";

/// `--members` for a one-node cluster on free ports.
fn single_member() -> String {
    format!("1=127.0.0.1:{}/127.0.0.1:{}", free_port(), free_port())
}

#[test]
fn port_in_time_wait_is_not_free() {
    // A std listener, as the HTTP server uses, that closes its side of a connection first
    // leaves the port in TIME_WAIT. A std bind still succeeds there, but glommio's does not.
    let port = free_port();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("binding the port");
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    let (accepted, _) = listener.accept().expect("accepting the connection");
    drop(accepted);
    std::thread::sleep(Duration::from_millis(50));
    drop(client);
    drop(listener);

    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    assert!(!reuse_port_bind_succeeds(port));
}

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let dir = test_dir("invalid_config_exits_2");
    let cases = [
        (
            "--heartbeat-interval-ticks",
            "9",
            "heartbeat_interval_ticks",
        ),
        ("--groups", "0", "groups"),
        ("--value-bytes-max", "0", "value_bytes_max"),
        ("--node-id", "7", "members"),
    ];
    for (flag, value, key) in cases {
        let output = Command::new(binary())
            .args(["serve", "--storage", "memory", "--shards", "1", "--members"])
            .arg(single_member())
            .arg("--data-dir")
            .arg(&dir)
            .args([flag, value])
            .output()
            .expect("running shardraft");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(key),
            "{flag} {value}: the message names {key}: {stderr}"
        );
    }
}

#[test]
fn environment_overrides_file_and_flag_overrides_environment() {
    let dir = test_dir("overrides_order");
    let config = dir.join("node.toml");
    std::fs::write(&config, "groups = 0\n").expect("writing the config file");
    let run = |env_groups: Option<&str>, flag_groups: Option<&str>| {
        let mut command = Command::new(binary());
        command
            .args(["serve", "--storage", "memory", "--shards", "1", "--members"])
            .arg(single_member())
            .arg("--config")
            .arg(&config)
            .arg("--heartbeat-interval-ticks")
            .arg("99");
        if let Some(groups) = env_groups {
            command.env("SHARDRAFT_GROUPS", groups);
        }
        if let Some(groups) = flag_groups {
            command.args(["--groups", groups]);
        }
        let output = command.output().expect("running shardraft");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // The file's groups = 0 is reported first; a valid environment value replaces it and
    // the next error is the heartbeat; a flag of 0 replaces the environment's value again.
    assert!(
        run(None, None).contains("groups"),
        "the file's value applies"
    );
    assert!(
        run(Some("4"), None).contains("heartbeat_interval_ticks"),
        "environment over file"
    );
    assert!(
        run(Some("4"), Some("0")).contains("groups"),
        "flag over environment"
    );
}

#[test]
fn sigterm_stops_the_server_with_status_0() {
    let dir = test_dir("sigterm_stops_the_server");
    let mut child = Command::new(binary())
        .args([
            "serve",
            "--storage",
            "disk",
            "--segment-bytes",
            SEGMENT_BYTES,
        ])
        .args(["--shards", "1", "--members"])
        .arg(single_member())
        .arg("--data-dir")
        .arg(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting shardraft");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server exited by itself"
    );

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("sending SIGTERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop within 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}

/// Runs the CLI against `endpoint` and returns its exit code and standard output.
fn cli(endpoint: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(binary())
        .args(["--endpoints", endpoint, "--timeout-ms", "10000"])
        .args(args)
        .output()
        .expect("running the shardraft CLI");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).trim().to_string(),
    )
}

fn spawn_single_node(dir: &std::path::Path, members: &str) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .expect("opening the node log");
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).expect("creating the data directory");
    Command::new(binary())
        .args([
            "serve",
            "--storage",
            "disk",
            "--segment-bytes",
            SEGMENT_BYTES,
            "--shards",
            "1",
            "--groups",
            "2",
        ])
        .args(["--members", members])
        .arg("--data-dir")
        .arg(&data_dir)
        .stderr(log)
        .spawn()
        .expect("starting shardraft")
}

#[test]
fn single_node_keeps_a_write_acknowledged_just_before_sigkill() {
    let dir = test_dir("single_node_keeps_acknowledged_write");
    let client_port = free_port();
    let members = format!("1=127.0.0.1:{}/127.0.0.1:{client_port}", free_port());
    let endpoint = format!("127.0.0.1:{client_port}");

    for round in 0..3 {
        let mut node = spawn_single_node(&dir, &members);
        let key = format!("key-{round}");
        let (code, _) = cli(&endpoint, &["put", &key, "acknowledged"]);
        assert_eq!(code, Some(0), "put in round {round}");
        // Killed at once after the acknowledgement: nothing gets a chance to flush later.
        node.kill().expect("killing the node");
        node.wait().expect("reaping the node");

        let mut node = spawn_single_node(&dir, &members);
        for earlier in 0..=round {
            let (code, value) = cli(&endpoint, &["get", &format!("key-{earlier}")]);
            assert_eq!(
                code,
                Some(0),
                "key-{earlier} after the kill in round {round}"
            );
            assert_eq!(value, "acknowledged", "value of key-{earlier}");
        }
        node.kill().expect("killing the node");
        node.wait().expect("reaping the node");
    }
}

#[test]
fn relative_data_dir_is_resolved_against_the_working_directory() {
    let dir = test_dir("relative_data_dir");
    std::fs::create_dir_all(dir.join("data")).expect("creating the data directory");
    let mut child = Command::new(binary())
        .current_dir(&dir)
        .args([
            "serve",
            "--storage",
            "disk",
            "--segment-bytes",
            SEGMENT_BYTES,
            "--shards",
            "1",
            "--data-dir",
            "data",
        ])
        .arg("--members")
        .arg(single_member())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting shardraft");
    std::thread::sleep(Duration::from_millis(800));
    let exited = child.try_wait().expect("polling the server");
    let shard_dir_exists = dir.join("data/shard-0").is_dir();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let status = child.wait().expect("waiting for the server");

    assert!(
        exited.is_none(),
        "the server exited with a relative data directory: {exited:?}"
    );
    assert!(
        shard_dir_exists,
        "the shard directory was not created under data/"
    );
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
}
