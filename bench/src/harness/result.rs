//! The result of a bench run, as written to JSON and read back by `compare`.
//!
//! A [`RunResult`] holds everything needed to interpret and re-analyse a run without the
//! machine that produced it: the schema version, the harness version and git commit, the
//! full configuration, the host facts, the target facts, and per load level
//! ([`PointResult`]) the latency histograms serialized losslessly, so that runs can be
//! merged and compared quantile by quantile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::target::TargetFacts;

/// Version of the JSON layout below; raised on every incompatible change. `compare` refuses
/// results of another version with an error that names both.
pub const RESULT_SCHEMA_VERSION: u32 = 1;

/// One bench run: one workload against one target, at one or more load levels.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    pub schema_version: u32,
    /// `shardraft-bench` and its version.
    pub harness: String,
    /// The commit the harness was built from, when built inside a git checkout.
    pub git_commit: Option<String>,
    /// Wall-clock start of the run, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// The complete configuration of the run, every option with its effective value.
    pub config: serde_json::Value,
    pub host: HostFacts,
    pub target: TargetFacts,
    /// One entry per load level, in the order they ran; a run without a sweep has one.
    pub points: Vec<PointResult>,
}

/// The machine the harness ran on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostFacts {
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cpus: usize,
    pub kernel: String,
    /// Filesystem type of the data directory, for disk storage of the embedded target.
    pub filesystem: Option<String>,
    pub memory_bytes: Option<u64>,
    pub rustc: String,
    /// The device's own 4 KiB O_DIRECT write + fdatasync, one at a time, measured on the
    /// spot under the data directory; `None` when not measured.
    pub device_sync_4k: Option<DeviceSyncFacts>,
}

/// The device limit measured before the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeviceSyncFacts {
    pub ops_per_sec: f64,
    pub p50_micros: f64,
    pub p99_micros: f64,
}

/// What one load level measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointResult {
    /// Concurrent clients (closed loop) or the client pool (open loop).
    pub clients: usize,
    /// Intended operations per second in open loop; `None` in closed loop.
    pub target_rate_per_sec: Option<f64>,
    /// Measured seconds, warm-up excluded.
    pub elapsed_secs: f64,
    /// Per operation kind (`write`, `read`).
    pub operations: BTreeMap<String, OperationResult>,
    /// CPU seconds of the processes under test during the measured part, when known (the
    /// embedded target counts this process: all replicas and the load generator).
    pub cpu_seconds: Option<f64>,
    /// fdatasync calls of all replicas during the measured part, when the target reports
    /// them.
    pub fdatasyncs: Option<u64>,
    /// Log entries made durable by all replicas during the measured part, when known.
    pub log_entries: Option<u64>,
    /// Where a write's time goes, stage by stage, when the target reports it.
    pub write_stages: Vec<StageResult>,
    /// Verdict of the linearizability check, when `--check` was given.
    pub check: Option<CheckResult>,
}

/// Completions of one operation kind at one load level.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperationResult {
    /// Operations that succeeded.
    pub ok: u64,
    /// Operations refused with no effect.
    pub refused: u64,
    /// Operations whose outcome is unknown (timeouts, lost connections).
    pub indeterminate: u64,
    /// Successful operations per second over the measured part.
    pub ok_per_sec: f64,
    /// Latency of successful operations, in nanoseconds, from each operation's intended
    /// start (open loop) or its actual start (closed loop).
    pub latency: EncodedHistogram,
}

/// One stage of a write's path and the time spent in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageResult {
    /// For example `queued`, `batched`, `log_write_submitted`, `fdatasync_completed`,
    /// `replicated_to_quorum`, `applied`, `answered`.
    pub stage: String,
    /// Nanoseconds from the end of the previous stage to the end of this one.
    pub latency: EncodedHistogram,
}

/// The linearizability checker's verdict on the history of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckResult {
    /// `linearizable`, `not_linearizable` or `unknown` (time limit reached).
    pub verdict: String,
    pub operations_checked: u64,
    pub check_secs: f64,
    /// For a violation, the smallest failing part of the history in words.
    pub detail: Option<String>,
}

/// An HdrHistogram in its standard V2 serialization, base64-encoded, so that it survives
/// JSON without loss and other HdrHistogram tools can read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncodedHistogram(pub String);
