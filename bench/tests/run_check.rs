//! Runs the built `shardraft-bench` for a short closed-loop run against the embedded
//! cluster with `--check`, and reads back its JSON result.
//!
//! This covers the whole path a user takes: argument parsing, three nodes with disk logs
//! on 127.0.0.1, the load threads, the history, the linearizability checker, the summary
//! and the result file. It asserts that the run succeeded and that the history is
//! linearizable, never a throughput.

use std::path::PathBuf;
use std::process::Command;

use shardraft_bench::harness::result::RunResult;

mod support;
use support::{TempFile, run_bench};

#[test]
fn embedded_run_with_check_is_linearizable() {
    let result_file = TempFile::new("shardraft-bench-check");
    let stdout = run_bench([
        "run",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--clients",
        "4",
        "--groups",
        "1",
        "--keys",
        "16",
        "--read-fraction",
        "0.5",
        "--check",
        "--check-time-limit",
        "60",
        "--no-progress",
        "--json",
        result_file.arg(),
    ]);
    assert!(
        stdout.contains("check    linearizable"),
        "stdout:\n{stdout}"
    );
    assert!(stdout.contains("durability: disk"), "stdout:\n{stdout}");

    let result = RunResult::read(&result_file.0).expect("the result file could not be read");
    assert_eq!(result.target.kind, "embedded");
    assert_eq!(result.points.len(), 1);
    let point = &result.points[0];
    let check = point
        .check
        .as_ref()
        .expect("the point has no check verdict");
    assert_eq!(check.verdict, "linearizable", "{:?}", check.detail);
    assert!(check.operations_checked > 0);
    let writes = &point.operations["write"];
    assert!(writes.ok > 0, "no write succeeded");
    assert_eq!(writes.refused + writes.indeterminate, 0, "writes failed");
    let reads = &point.operations["read"];
    assert!(reads.ok > 0, "no read succeeded");
    assert!(
        point.fdatasyncs.is_some_and(|syncs| syncs > 0),
        "no fdatasync counted"
    );
    // The 2 s run samples the disk at its start, about once a second, and at its end.
    assert!(
        point.disk_usage.len() >= 2,
        "disk samples: {:?}",
        point.disk_usage
    );
    assert!(
        point.disk_usage.iter().all(|sample| sample.bytes > 0),
        "a disk sample of the logs found no bytes: {:?}",
        point.disk_usage
    );
    let total = point
        .write_stages
        .iter()
        .find(|stage| stage.stage == "total")
        .expect("the point has no write stage breakdown");
    let stage_writes = total.latency.decode().expect("the total decodes").len();
    assert!(
        stage_writes > 0 && stage_writes <= writes.ok + writes.indeterminate + 64,
        "the stages counted {stage_writes} writes for {} acknowledged ones",
        writes.ok
    );

    // A result compared with itself shows no significant change, and `compare` exits 0
    // even with --fail-on-regression.
    let path = result_file.arg();
    run_bench(["compare", path, path, "--fail-on-regression"]);
}

#[test]
fn compare_rejects_bad_input() {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synthetic_sweep.json");
    let output = Command::new(env!("CARGO_BIN_EXE_shardraft-bench"))
        .arg("compare")
        .args([&fixture, &fixture])
        .arg("--threshold=-3")
        .output()
        .expect("shardraft-bench compare could not be started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("--threshold -3"), "stderr:\n{stderr}");

    let missing = fixture.with_file_name("no-such-result.json");
    let output = Command::new(env!("CARGO_BIN_EXE_shardraft-bench"))
        .arg("compare")
        .args([&fixture, &missing])
        .output()
        .expect("shardraft-bench compare could not be started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("no-such-result.json"), "stderr:\n{stderr}");
}
