//! Runs the built `shardraft-bench failover` for two short trials against an embedded
//! cluster in memory and reads back its JSON trials: each kills group 0's leader, and a
//! surviving node must commit a write afterwards. It asserts what happened, never how
//! fast.

mod support;
use support::{TempFile, run_bench};

#[test]
fn failover_trials_elect_a_new_leader() {
    let trials_file = TempFile::new("shardraft-bench-failover");
    let stdout = run_bench([
        "failover",
        "--trials",
        "2",
        "--warmup-load",
        "0.5",
        "--settle",
        "0.5",
        "--writers",
        "2",
        "--storage",
        "memory",
        "--failover-json",
        trials_file.arg(),
    ]);
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
