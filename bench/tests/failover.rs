//! Runs the built `shardraft-bench failover` for two short trials against an embedded
//! cluster in memory and reads back its JSON trials: each kills group 0's leader, and a
//! surviving node must commit a write afterwards. It asserts what happened, never how
//! fast.

use std::path::PathBuf;
use std::process::Command;

/// A file of this test process that is removed when dropped.
struct TrialsFile(PathBuf);

impl Drop for TrialsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn failover_trials_elect_a_new_leader() {
    let path = std::env::temp_dir().join(format!(
        "shardraft-bench-failover-{}.json",
        std::process::id()
    ));
    let trials_file = TrialsFile(path.clone());

    let output = Command::new(env!("CARGO_BIN_EXE_shardraft-bench"))
        .args(["failover", "--trials", "2", "--warmup-load", "0.5"])
        .args(["--settle", "0.5", "--writers", "2", "--storage", "memory"])
        .arg("--failover-json")
        .arg(&path)
        .output()
        .expect("shardraft-bench could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert!(
        output.status.success(),
        "shardraft-bench failed with {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("commit gap after killing the leader"),
        "stdout:\n{stdout}"
    );
    let text = std::fs::read_to_string(&trials_file.0).expect("reading the trials file");
    let report: serde_json::Value = serde_json::from_str(&text).expect("the trials are JSON");
    let trials = report["trials"].as_array().expect("a list of trials");
    assert_eq!(trials.len(), 2, "{text}");
    for trial in trials {
        let killed = trial["killed_node"].as_u64().expect("the killed node");
        let new_leader = trial["new_leader"].as_u64().expect("the new leader");
        assert_ne!(killed, new_leader, "{trial}");
        assert!(trial["commit_gap_millis"].as_f64().is_some(), "{trial}");
        assert!(trial["elections"].as_u64() >= Some(1), "{trial}");
    }
    assert!(report["writes"].as_u64() > Some(0), "{text}");
}
