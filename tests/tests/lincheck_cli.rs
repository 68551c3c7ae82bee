//! The `lincheck` binary: its verdicts, exit statuses and error messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/linearizability")
        .join(relative)
}

fn lincheck(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lincheck"))
        .args(args)
        .output()
        .expect("the lincheck binary runs")
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, contents).expect("the test can write its temporary folder");
    path
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn linearizable_file_exits_zero() {
    let path = fixture("jepsen-etcd/etcd_002.log");
    let output = lincheck(&[path.as_os_str()]);
    assert_eq!(output.status.code(), Some(0), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).contains("etcd_002.log: linearizable"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn violation_exits_one_and_lists_operations() {
    let path = fixture("kv/c10-bad.txt");
    let output = lincheck(&[path.as_os_str()]);
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("c10-bad.txt: not linearizable"), "{text}");
    assert!(text.contains("  process "), "{text}");
    assert!(text.contains("first failure"), "{text}");
}

#[test]
fn violation_wins_over_linearizable_file() {
    let good = fixture("kv/c01-ok.txt");
    let bad = fixture("jepsen-etcd/etcd_000.log");
    let output = lincheck(&[good.as_os_str(), bad.as_os_str()]);
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
}

#[test]
fn malformed_file_exits_two_with_line() {
    let path = temp_file(
        "lincheck-malformed.log",
        "INFO  jepsen.util - 1\t:invoke\t:write\t2\nINFO  jepsen.util - x\t:ok\t:write\t2\n",
    );
    let output = lincheck(&[path.as_os_str()]);
    assert_eq!(output.status.code(), Some(2), "stdout: {}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("lincheck-malformed.log"), "{message}");
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn missing_file_exits_two() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lincheck-no-such-file.log");
    let output = lincheck(&[path.as_os_str()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("lincheck-no-such-file.log"));
}

#[test]
fn usage_error_exits_two() {
    let output = lincheck(&[]);
    assert_eq!(output.status.code(), Some(2));
    let path = fixture("kv/c01-ok.txt");
    let output = lincheck(&[
        "--time-limit-seconds".as_ref(),
        "-1".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let output = lincheck(&["--format".as_ref(), "xml".as_ref(), path.as_os_str()]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn undecided_file_exits_three() {
    // Sixty overlapping writes inside a read of a value none of them writes.
    let mut text =
        String::from("{\"process\":100,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"x\"}\n");
    for process in 0..60 {
        text.push_str(&format!(
            "{{\"process\":{process},\"type\":\"invoke\",\"f\":\"write\",\"key\":\"x\",\"value\":\"{process}\"}}\n"
        ));
    }
    for process in 0..60 {
        text.push_str(&format!("{{\"process\":{process},\"type\":\"ok\"}}\n"));
    }
    text.push_str("{\"process\":100,\"type\":\"ok\",\"value\":\"never written\"}\n");
    let path = temp_file("lincheck-pathological.jsonl", &text);
    let output = lincheck(&[
        "--time-limit-seconds".as_ref(),
        "0.05".as_ref(),
        path.as_os_str(),
    ]);
    assert_eq!(output.status.code(), Some(3), "stderr: {}", stderr(&output));
    assert!(
        stdout(&output).contains(": unknown: "),
        "{}",
        stdout(&output)
    );
}

#[test]
fn json_report_is_one_object_per_file() {
    let good = fixture("kv/c01-ok.txt");
    let bad = fixture("kv/c01-bad.txt");
    let output = lincheck(&[
        "--output".as_ref(),
        "json".as_ref(),
        "--format".as_ref(),
        "edn".as_ref(),
        good.as_os_str(),
        bad.as_os_str(),
    ]);
    assert_eq!(output.status.code(), Some(1), "stderr: {}", stderr(&output));
    let reports: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0]["result"], "linearizable");
    assert_eq!(reports[1]["result"], "not_linearizable");
    assert_eq!(reports[1]["minimal"], true);
    assert!(
        reports[1]["offending"]
            .as_array()
            .is_some_and(|offending| !offending.is_empty())
    );
}

#[test]
fn help_documents_exit_statuses() {
    let output = lincheck(&["--help".as_ref()]);
    assert_eq!(output.status.code(), Some(0));
    let text = stdout(&output);
    assert!(text.contains("Exit status"), "{text}");
    assert!(text.contains("--time-limit-seconds"), "{text}");
}
