//! The result of a bench run, as written to JSON and read back by `compare`.
//!
//! A [`RunResult`] contains everything needed to interpret and re-analyse a run without the
//! machine that produced it. That is the schema version, the harness version and git
//! commit, the full configuration, the host facts and the target facts. Per load level
//! ([`PointResult`]) it keeps the latency histograms serialized losslessly, so that runs can
//! be merged and compared quantile by quantile.
//!
//! Reading checks [`RESULT_SCHEMA_VERSION`] before anything else, so a file of another
//! layout is rejected with both versions named instead of with a confusing field error.
//! Within one schema version, unknown fields are ignored where they can only add
//! description (the run, the host, a point, a check verdict), so a newer harness that adds
//! such a field still writes files that this one reads. The measurement records
//! ([`OperationResult`], [`StageResult`]) reject unknown fields: a new field there could
//! change what the counts or histograms mean (a unit, a sampling rate), and reading past
//! it would silently misreport the run.
//!
//! The histogram codec and the latency summary live in [`histogram`], merging of repeated
//! runs in [`merge`].

pub mod histogram;
pub mod merge;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::target::TargetFacts;
use super::workload::Burst;

pub use histogram::LatencyQuantiles;
pub use merge::merge;

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
    /// With `--measure-install`: a node restarted on an empty disk after the last point,
    /// and the snapshot installs that brought it back.
    #[serde(default)]
    pub snapshot_install: Option<SnapshotInstallResult>,
}

/// A node brought back from an empty disk after the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotInstallResult {
    pub node_id: u64,
    /// Groups the node caught up with.
    pub groups: u32,
    /// Snapshots it installed; the other groups replayed their log.
    pub snapshots_installed: u64,
    /// Bytes of state machine data installed.
    pub installed_bytes: u64,
    /// Time spent receiving and restoring the snapshots, summed over the groups.
    pub install_secs: f64,
    /// Installed bytes per second of `install_secs`; `None` without installs.
    pub install_bytes_per_sec: Option<f64>,
    /// From the restart until every group had applied what the cluster had committed when
    /// the node stopped.
    pub catch_up_secs: f64,
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

/// The measurements of one load level.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PointResult {
    /// Concurrent clients (closed loop) or the client pool (open loop).
    pub clients: usize,
    /// Intended operations per second in open loop; `None` in closed loop.
    pub target_rate_per_sec: Option<f64>,
    /// Closed-loop bursts: `clients` alternate with fewer; `None` for a steady load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Burst>,
    /// Measured seconds, warm-up excluded.
    pub elapsed_secs: f64,
    /// Per operation kind (`write`, `read`).
    pub operations: BTreeMap<String, OperationResult>,
    /// CPU seconds of the processes under test during the measured part, when known (the
    /// embedded target counts this process: all replicas and the load generator).
    pub cpu_seconds: Option<f64>,
    /// Log syncs of all replicas during the measured part, when the target reports them:
    /// O_DSYNC batch writes, or fdatasyncs with the log's `sync_method = "fdatasync"`. The
    /// field keeps its name so that earlier result files still read.
    pub fdatasyncs: Option<u64>,
    /// Log entries made durable by all replicas during the measured part, when known.
    pub log_entries: Option<u64>,
    /// The time a write spends in each stage, when the target reports it.
    pub write_stages: Vec<StageResult>,
    /// Verdict of the linearizability check, when `--check` was given.
    pub check: Option<CheckResult>,
    /// Open loop: operations that found every in-flight slot taken at their intended start
    /// and started late. Their latency still counts from the intended start.
    #[serde(default)]
    pub late_operations: u64,
    /// Bytes the target's data occupied on disk, sampled about once a second from the
    /// start of the point (warm-up included) and at its end; empty when the harness cannot
    /// see the target's files (memory storage, remote targets).
    #[serde(default)]
    pub disk_usage: Vec<DiskUsageSample>,
    /// Snapshots taken and installed on all replicas during the measured part, and the
    /// writes that ran while one was being taken; `None` when the target does not report
    /// snapshots.
    #[serde(default)]
    pub snapshots: Option<SnapshotResult>,
    /// Leader elections won in any group during the measured part, when the target reports
    /// them.
    #[serde(default)]
    pub elections: Option<u64>,
}

/// The snapshots of one point's measured part.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotResult {
    /// Snapshots taken and stored durably, on all replicas.
    pub taken: u64,
    /// Snapshots whose creation or storing failed.
    pub failed: u64,
    /// Creation time (from taking the state machine's view to the durable store), summed
    /// over the taken snapshots.
    pub creation_nanos_sum: u64,
    /// Upper bound of the engine's histogram bucket that contains the longest creation. The
    /// buckets are 1, 2.5 and 5 per decade, so this is an upper bound, not the exact time.
    /// `None` when no snapshot was taken or the longest took over the last bound (10 s).
    pub creation_max_bound_secs: Option<f64>,
    /// Snapshots received from a leader and installed.
    pub installed: u64,
    /// Bytes of state machine data installed.
    pub installed_bytes: u64,
    /// Time spent receiving and restoring the installed snapshots.
    pub install_nanos: u64,
    /// The writes that ran while a snapshot was being taken somewhere in the cluster: one
    /// was in progress when the write started, or one began before it ended. A subset of
    /// the point's writes; `None` when the target's activity cannot be read per request.
    pub writes_during: Option<OperationResult>,
}

impl SnapshotResult {
    /// Mean creation time in seconds, `None` when no snapshot was taken.
    pub fn creation_mean_secs(&self) -> Option<f64> {
        (self.taken > 0).then(|| self.creation_nanos_sum as f64 / 1e9 / self.taken as f64)
    }

    /// Installed bytes per second of receiving and restoring, `None` without installs.
    pub fn install_bytes_per_sec(&self) -> Option<f64> {
        (self.installed > 0 && self.install_nanos > 0)
            .then(|| self.installed_bytes as f64 / (self.install_nanos as f64 / 1e9))
    }
}

/// The bytes a target's data occupied on disk at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskUsageSample {
    /// Seconds since the point's measured part began; negative during the warm-up.
    pub elapsed_secs: f64,
    /// Bytes allocated to the data directory's files (their blocks, not their lengths, so
    /// that preallocated log segments count as the space they take).
    pub bytes: u64,
}

/// Completions of one operation kind at one load level.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct StageResult {
    /// For example `queued`, `batched`, `log_write_submitted`, `fdatasync_completed`,
    /// `replicated_to_quorum`, `applied`, `answered`.
    pub stage: String,
    /// Nanoseconds from the end of the previous stage to the end of this one. The engine
    /// counts stages in buckets (nine per decade from 1 µs to 10 s); each write is recorded
    /// here at its bucket's upper bound.
    pub latency: EncodedHistogram,
    /// The exact mean, from the engine's sum of the stage's durations.
    #[serde(default)]
    pub mean_nanos: u64,
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

/// An HdrHistogram in its standard V2 compressed serialization, base64-encoded, so that it
/// survives JSON without loss and other HdrHistogram tools can read it. Built by
/// [`EncodedHistogram::encode`] and read back by [`EncodedHistogram::decode`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EncodedHistogram(pub String);

/// A failure to read, write, merge, compare or draw results.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("reading {path} failed: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("writing {path} failed: {source}; check that its directory exists and is writable")]
    Write { path: PathBuf, source: io::Error },
    #[error("{origin} is not a valid result file: {source}")]
    Json {
        origin: String,
        source: serde_json::Error,
    },
    #[error("{origin} has no schema_version field, so it is not a shardraft-bench result file")]
    MissingSchemaVersion { origin: String },
    #[error(
        "{origin} has result schema version {found}, but this harness reads version \
         {expected}; use a shardraft-bench build of schema version {found}, or rerun the \
         benchmark with this build"
    )]
    SchemaVersion {
        origin: String,
        found: u64,
        expected: u32,
    },
    #[error(
        "invalid histogram: {reason}; expected the base64 of an HdrHistogram V2 or V2 \
         compressed serialization"
    )]
    InvalidHistogram { reason: String },
    #[error(
        "{field} is {value}, but JSON stores only finite numbers; the code that computed it \
         divided by zero or overflowed"
    )]
    NotFinite { field: String, value: f64 },
    #[error("cannot merge these results: {reason}")]
    Merge { reason: String },
    #[error("drawing the chart {path} failed: {reason}")]
    Chart { path: PathBuf, reason: String },
    /// Another error, with the place in a result where it happened.
    #[error("{location}: {source}")]
    In {
        location: String,
        source: Box<ResultError>,
    },
}

impl ResultError {
    /// Wraps `self` with the place in a result (file, point, operation) where it happened.
    pub fn at(self, location: impl Into<String>) -> ResultError {
        ResultError::In {
            location: location.into(),
            source: Box::new(self),
        }
    }
}

/// The one field that is read before the rest, so that a file of another layout is
/// rejected by version rather than by whichever field changed.
#[derive(Deserialize)]
struct SchemaProbe {
    schema_version: Option<u64>,
}

impl RunResult {
    /// Reads a result file written by [`RunResult::write`].
    ///
    /// # Errors
    ///
    /// [`ResultError::Read`] when the file cannot be read, [`ResultError::SchemaVersion`]
    /// or [`ResultError::MissingSchemaVersion`] for a file of another layout, and
    /// [`ResultError::Json`] for a file that is not valid JSON of this layout.
    pub fn read(path: impl AsRef<Path>) -> Result<RunResult, ResultError> {
        let path = path.as_ref();
        let text = fs::read_to_string(path).map_err(|source| ResultError::Read {
            path: path.to_owned(),
            source,
        })?;
        RunResult::from_json(&text, &path.display().to_string())
    }

    /// Parses the JSON text of a result; `origin` names it in errors (a path, `stdin`).
    ///
    /// # Errors
    ///
    /// As [`RunResult::read`], less the I/O error.
    pub fn from_json(text: &str, origin: &str) -> Result<RunResult, ResultError> {
        let json_error = |source| ResultError::Json {
            origin: origin.to_owned(),
            source,
        };
        let probe: SchemaProbe = serde_json::from_str(text).map_err(json_error)?;
        let found = probe
            .schema_version
            .ok_or_else(|| ResultError::MissingSchemaVersion {
                origin: origin.to_owned(),
            })?;
        check_schema_version(found, origin)?;
        serde_json::from_str(text).map_err(json_error)
    }

    /// Writes this result as pretty-printed JSON, replacing `path`.
    ///
    /// The text goes to a temporary file beside `path` first and is then renamed over it,
    /// so a reader never sees half a file.
    ///
    /// # Errors
    ///
    /// [`ResultError::NotFinite`] when a number is NaN or infinite (JSON cannot store it,
    /// and the file would not read back), [`ResultError::Write`] when writing fails.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), ResultError> {
        let path = path.as_ref();
        let text = self.to_json()?;
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".partial");
        let temporary = PathBuf::from(temporary);
        let write_error = |source| ResultError::Write {
            path: path.to_owned(),
            source,
        };
        fs::write(&temporary, text).map_err(write_error)?;
        fs::rename(&temporary, path).map_err(write_error)
    }

    /// Returns this result as the pretty-printed JSON that [`RunResult::write`] stores.
    ///
    /// # Errors
    ///
    /// [`ResultError::NotFinite`] when a number is NaN or infinite.
    pub fn to_json(&self) -> Result<String, ResultError> {
        self.check_finite()?;
        serde_json::to_string_pretty(self).map_err(|source| ResultError::Json {
            origin: "the result being written".to_owned(),
            source,
        })
    }

    /// Checks that every floating-point field is finite. serde_json writes NaN and
    /// infinities as `null`, which then fails to read back as a number.
    ///
    /// # Errors
    ///
    /// [`ResultError::NotFinite`] naming the first field that is not.
    pub fn check_finite(&self) -> Result<(), ResultError> {
        if let Some(device) = &self.host.device_sync_4k {
            check_finite("host.device_sync_4k.ops_per_sec", device.ops_per_sec)?;
            check_finite("host.device_sync_4k.p50_micros", device.p50_micros)?;
            check_finite("host.device_sync_4k.p99_micros", device.p99_micros)?;
        }
        for (index, point) in self.points.iter().enumerate() {
            point
                .check_finite()
                .map_err(|error| error.at(format!("points[{index}]")))?;
        }
        Ok(())
    }
}

impl PointResult {
    /// Returns `clients 64` or `clients 64, target rate 5000/s`, to name a point in
    /// errors and reports.
    pub fn label(&self) -> String {
        match (self.target_rate_per_sec, self.burst) {
            (Some(rate), _) => format!("clients {}, target rate {rate}/s", self.clients),
            (None, Some(burst)) => format!(
                "clients {} alternating with {} every {} s",
                self.clients,
                burst.low_clients,
                burst.period_secs / 2.0
            ),
            (None, None) => format!("clients {}", self.clients),
        }
    }

    fn check_finite(&self) -> Result<(), ResultError> {
        check_finite("elapsed_secs", self.elapsed_secs)?;
        if let Some(rate) = self.target_rate_per_sec {
            check_finite("target_rate_per_sec", rate)?;
        }
        if let Some(cpu_seconds) = self.cpu_seconds {
            check_finite("cpu_seconds", cpu_seconds)?;
        }
        if let Some(check) = &self.check {
            check_finite("check.check_secs", check.check_secs)?;
        }
        for (kind, operation) in &self.operations {
            check_finite(
                &format!("operations.{kind}.ok_per_sec"),
                operation.ok_per_sec,
            )?;
        }
        Ok(())
    }
}

impl OperationResult {
    /// Decodes the latency histogram and summarizes it; `None` when no operation
    /// succeeded.
    ///
    /// # Errors
    ///
    /// [`ResultError::InvalidHistogram`] when the stored histogram cannot be decoded.
    pub fn latency_quantiles(&self) -> Result<Option<LatencyQuantiles>, ResultError> {
        let histogram = self.latency.decode()?;
        Ok(LatencyQuantiles::from_histogram_nanos(&histogram))
    }
}

/// Rejects a result of another schema version; `origin` names it in the error.
///
/// # Errors
///
/// [`ResultError::SchemaVersion`] when `found` is not [`RESULT_SCHEMA_VERSION`].
pub fn check_schema_version(found: u64, origin: &str) -> Result<(), ResultError> {
    if found == u64::from(RESULT_SCHEMA_VERSION) {
        return Ok(());
    }
    Err(ResultError::SchemaVersion {
        origin: origin.to_owned(),
        found,
        expected: RESULT_SCHEMA_VERSION,
    })
}

fn check_finite(field: &str, value: f64) -> Result<(), ResultError> {
    if value.is_finite() {
        return Ok(());
    }
    Err(ResultError::NotFinite {
        field: field.to_owned(),
        value,
    })
}
