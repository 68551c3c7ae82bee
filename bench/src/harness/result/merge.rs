//! Merging repeated runs of one configuration into one result.
//!
//! Repeating a run and merging the results gives more samples for the tail quantiles and
//! evens out run-to-run drift. The merged result is what one run with all the measured
//! time would have recorded. Counts and measured seconds are summed and latency
//! histograms added. Each `ok_per_sec` is recomputed as total successes over total
//! measured seconds, not as the mean of the runs' rates, which would weight a short run
//! like a long one.
//!
//! Merging is refused unless the runs are repetitions: the same schema version, harness,
//! git commit, configuration, target facts, host facts and sequence of load levels
//! (clients and target rate). The device sync measurement is the one host fact allowed to
//! differ, because it is measured anew before every run. The merged result keeps the
//! first run's host facts, that measurement included, and the earliest start time.

use std::collections::BTreeSet;

use hdrhistogram::Histogram;

use super::histogram::TOTAL_COUNT_MAX;
use super::{
    CheckResult, EncodedHistogram, OperationResult, PointResult, RESULT_SCHEMA_VERSION,
    ResultError, RunResult, SnapshotResult, StageResult, check_schema_version,
};
use crate::harness::compare::{ValueDifference, json_differences};

/// Merges repeated runs of one configuration into one result, as described in the
/// module documentation.
///
/// # Errors
///
/// - [`ResultError::Merge`] for an empty slice, for runs that are not repetitions of the
///   first (the message lists every difference), and for histograms whose sum would
///   exceed [`TOTAL_COUNT_MAX`].
/// - [`ResultError::SchemaVersion`] for a result of another schema.
/// - [`ResultError::InvalidHistogram`] inside [`ResultError::In`] for a histogram that
///   does not decode, with the run, point and operation named.
pub fn merge(results: &[RunResult]) -> Result<RunResult, ResultError> {
    let Some(first) = results.first() else {
        return Err(ResultError::Merge {
            reason: "no results were given; pass at least one".to_owned(),
        });
    };
    for (index, result) in results.iter().enumerate() {
        let origin = format!("result {}", index + 1);
        check_schema_version(u64::from(result.schema_version), &origin)?;
        check_repetition(first, result, &origin)?;
    }

    let points = (0..first.points.len())
        .map(|index| merge_point(results, index))
        .collect::<Result<Vec<_>, _>>()?;
    let started_unix_ms = results.iter().map(|result| result.started_unix_ms).min();
    Ok(RunResult {
        schema_version: RESULT_SCHEMA_VERSION,
        harness: first.harness.clone(),
        git_commit: first.git_commit.clone(),
        started_unix_ms: started_unix_ms.unwrap_or(first.started_unix_ms),
        config: first.config.clone(),
        host: first.host.clone(),
        target: first.target.clone(),
        points,
        // Each run measured its own restart, so the merged run reports the first one.
        snapshot_install: first.snapshot_install.clone(),
    })
}

/// Rejects `other` unless it repeats `first`, listing every difference.
fn check_repetition(first: &RunResult, other: &RunResult, origin: &str) -> Result<(), ResultError> {
    let differences = setup_differences(first, other);
    if differences.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = differences.iter().map(ToString::to_string).collect();
    Err(ResultError::Merge {
        reason: format!(
            "{origin} is not a repetition of result 1, it differs in {}; merge only repeated \
             runs of one configuration on one machine, and use `compare` for different ones",
            listed.join(", ")
        ),
    })
}

/// Differences that make two runs something other than repetitions of one setup.
fn setup_differences(first: &RunResult, other: &RunResult) -> Vec<ValueDifference> {
    let mut differences = json_differences(
        "harness",
        &serde_json::json!(first.harness),
        &serde_json::json!(other.harness),
    );
    differences.extend(json_differences(
        "git_commit",
        &serde_json::json!(first.git_commit),
        &serde_json::json!(other.git_commit),
    ));
    differences.extend(json_differences("config", &first.config, &other.config));
    differences.extend(json_differences(
        "target",
        &serde_json::json!(first.target),
        &serde_json::json!(other.target),
    ));
    differences.extend(json_differences(
        "host",
        &fixed_host_facts(first),
        &fixed_host_facts(other),
    ));
    differences.extend(json_differences(
        "points",
        &load_levels(first),
        &load_levels(other),
    ));
    differences
}

/// Returns the host facts without the device sync measurement, which differs on every
/// run.
fn fixed_host_facts(result: &RunResult) -> serde_json::Value {
    let mut host = serde_json::json!(result.host);
    if let Some(facts) = host.as_object_mut() {
        facts.remove("device_sync_4k");
    }
    host
}

fn load_levels(result: &RunResult) -> serde_json::Value {
    let labels: Vec<String> = result.points.iter().map(PointResult::label).collect();
    serde_json::json!(labels)
}

fn merge_point(results: &[RunResult], index: usize) -> Result<PointResult, ResultError> {
    let points: Vec<&PointResult> = results.iter().map(|result| &result.points[index]).collect();
    let first = points[0];
    let location = format!("point {} ({})", index + 1, first.label());
    let elapsed_secs: f64 = points.iter().map(|point| point.elapsed_secs).sum();

    let kinds: BTreeSet<&String> = points
        .iter()
        .flat_map(|point| point.operations.keys())
        .collect();
    let mut operations = std::collections::BTreeMap::new();
    for kind in kinds {
        let location = format!("{location}, operation `{kind}`");
        let operation = merge_operation(&points, kind, elapsed_secs, &location)?;
        operations.insert(kind.clone(), operation);
    }

    Ok(PointResult {
        clients: first.clients,
        target_rate_per_sec: first.target_rate_per_sec,
        burst: first.burst,
        elapsed_secs,
        operations,
        cpu_seconds: sum_if_all(points.iter().map(|point| point.cpu_seconds)),
        fdatasyncs: sum_counts_if_all(points.iter().map(|point| point.fdatasyncs)),
        log_entries: sum_counts_if_all(points.iter().map(|point| point.log_entries)),
        write_stages: merge_stages(&points, &location)?,
        check: merge_checks(&points),
        late_operations: points.iter().map(|point| point.late_operations).sum(),
        // Every part measured the same target, so the longest series describes its disk.
        disk_usage: points
            .iter()
            .map(|point| &point.disk_usage)
            .max_by_key(|samples| samples.len())
            .cloned()
            .unwrap_or_default(),
        snapshots: merge_snapshots(&points, elapsed_secs, &location)?,
        elections: sum_counts_if_all(points.iter().map(|point| point.elections)),
    })
}

/// Sums the snapshot counts of the parts, when every part has them.
fn merge_snapshots(
    points: &[&PointResult],
    elapsed_secs: f64,
    location: &str,
) -> Result<Option<SnapshotResult>, ResultError> {
    let Some(parts) = points
        .iter()
        .map(|point| point.snapshots.as_ref())
        .collect::<Option<Vec<&SnapshotResult>>>()
    else {
        return Ok(None);
    };
    let sum = |count: fn(&SnapshotResult) -> u64| {
        parts
            .iter()
            .fold(0_u64, |sum, part| sum.saturating_add(count(part)))
    };
    // A part that took no snapshot has no bound; it must not read as one over 10 s.
    let creation_max_bound_secs = parts
        .iter()
        .filter(|part| part.taken > 0)
        .map(|part| part.creation_max_bound_secs)
        .try_fold(None::<f64>, |longest, bound| {
            let bound = bound?;
            Some(Some(longest.map_or(bound, |longest| longest.max(bound))))
        })
        .flatten();
    let writes_during = match parts
        .iter()
        .map(|part| part.writes_during.as_ref())
        .collect::<Option<Vec<&OperationResult>>>()
    {
        Some(writes) => {
            let ok: u64 = writes.iter().map(|operation| operation.ok).sum();
            let histograms = writes
                .iter()
                .enumerate()
                .map(|(run, operation)| (run, &operation.latency));
            Some(OperationResult {
                ok,
                refused: writes.iter().map(|operation| operation.refused).sum(),
                indeterminate: writes.iter().map(|operation| operation.indeterminate).sum(),
                ok_per_sec: if elapsed_secs > 0.0 {
                    ok as f64 / elapsed_secs
                } else {
                    0.0
                },
                latency: add_histograms(
                    histograms,
                    &format!("{location}, writes during snapshots"),
                )?,
            })
        }
        None => None,
    };
    Ok(Some(SnapshotResult {
        taken: sum(|part| part.taken),
        failed: sum(|part| part.failed),
        creation_nanos_sum: sum(|part| part.creation_nanos_sum),
        creation_max_bound_secs,
        installed: sum(|part| part.installed),
        installed_bytes: sum(|part| part.installed_bytes),
        install_nanos: sum(|part| part.install_nanos),
        writes_during,
    }))
}

fn merge_operation(
    points: &[&PointResult],
    kind: &str,
    elapsed_secs: f64,
    location: &str,
) -> Result<OperationResult, ResultError> {
    let parts: Vec<(usize, &OperationResult)> = points
        .iter()
        .enumerate()
        .filter_map(|(run, point)| Some((run, point.operations.get(kind)?)))
        .collect();
    let ok: u64 = parts.iter().map(|(_, operation)| operation.ok).sum();
    let refused = parts.iter().map(|(_, operation)| operation.refused).sum();
    let indeterminate = parts
        .iter()
        .map(|(_, operation)| operation.indeterminate)
        .sum();
    let histograms = parts
        .iter()
        .map(|(run, operation)| (*run, &operation.latency));
    let ok_per_sec = if elapsed_secs > 0.0 {
        ok as f64 / elapsed_secs
    } else {
        0.0
    };
    Ok(OperationResult {
        ok,
        refused,
        indeterminate,
        ok_per_sec,
        latency: add_histograms(histograms, location)?,
    })
}

/// Merges the write stages by name, in the order they first appear.
fn merge_stages(points: &[&PointResult], location: &str) -> Result<Vec<StageResult>, ResultError> {
    let mut names: Vec<&str> = Vec::new();
    for stage in points.iter().flat_map(|point| &point.write_stages) {
        if !names.contains(&stage.stage.as_str()) {
            names.push(&stage.stage);
        }
    }

    let mut stages = Vec::with_capacity(names.len());
    for name in names {
        let histograms = points.iter().enumerate().flat_map(|(run, point)| {
            point
                .write_stages
                .iter()
                .filter(move |stage| stage.stage == name)
                .map(move |stage| (run, &stage.latency))
        });
        let location = format!("{location}, write stage `{name}`");
        let latency = add_histograms(histograms, &location)?;
        // The mean of all runs together, each run's mean weighted by its count of writes.
        let mut writes_total = 0u128;
        let mut nanos_total = 0u128;
        for stage in points
            .iter()
            .flat_map(|point| &point.write_stages)
            .filter(|stage| stage.stage == name)
        {
            let writes = u128::from(
                stage
                    .latency
                    .decode()
                    .map_or(0, |histogram| histogram.len()),
            );
            writes_total += writes;
            nanos_total += writes * u128::from(stage.mean_nanos);
        }
        let mean_nanos = u64::try_from(nanos_total / writes_total.max(1)).unwrap_or(u64::MAX);
        stages.push(StageResult {
            stage: name.to_owned(),
            latency,
            mean_nanos,
        });
    }
    Ok(stages)
}

/// Combines the check verdicts. A violation in any run makes the merged verdict
/// `not_linearizable`. It is `linearizable` only when every run was checked and passed,
/// and `unknown` otherwise.
fn merge_checks(points: &[&PointResult]) -> Option<CheckResult> {
    let checks: Vec<(usize, &CheckResult)> = points
        .iter()
        .enumerate()
        .filter_map(|(run, point)| Some((run, point.check.as_ref()?)))
        .collect();
    if checks.is_empty() {
        return None;
    }

    let failures: Vec<String> = checks
        .iter()
        .filter(|(_, check)| check.verdict == "not_linearizable")
        .map(|(run, check)| {
            let detail = check.detail.as_deref().unwrap_or("no detail recorded");
            format!("result {}: {detail}", run + 1)
        })
        .collect();
    let every_run_passed = checks.len() == points.len()
        && checks
            .iter()
            .all(|(_, check)| check.verdict == "linearizable");
    let verdict = if !failures.is_empty() {
        "not_linearizable"
    } else if every_run_passed {
        "linearizable"
    } else {
        "unknown"
    };
    Some(CheckResult {
        verdict: verdict.to_owned(),
        operations_checked: checks
            .iter()
            .map(|(_, check)| check.operations_checked)
            .sum(),
        check_secs: checks.iter().map(|(_, check)| check.check_secs).sum(),
        detail: (!failures.is_empty()).then(|| failures.join("; ")),
    })
}

/// Adds the histograms of several runs; `run` numbers them from 0 for error messages.
fn add_histograms<'a>(
    parts: impl Iterator<Item = (usize, &'a EncodedHistogram)>,
    location: &str,
) -> Result<EncodedHistogram, ResultError> {
    let mut total: Option<Histogram<u64>> = None;
    for (run, encoded) in parts {
        let origin = format!("result {}, {location}", run + 1);
        let histogram = encoded.decode().map_err(|error| error.at(origin.clone()))?;
        let Some(sum) = total.as_mut() else {
            let mut first = histogram;
            // Later runs may have recorded values above this run's highest trackable one.
            first.auto(true);
            total = Some(first);
            continue;
        };
        if sum.len().saturating_add(histogram.len()) > TOTAL_COUNT_MAX {
            return Err(ResultError::Merge {
                reason: format!("{origin}: the merged count would exceed {TOTAL_COUNT_MAX}"),
            });
        }
        sum.add(&histogram).map_err(|error| ResultError::Merge {
            reason: format!("{origin}: adding its histogram failed ({error:?})"),
        })?;
    }
    let Some(total) = total else {
        return Err(ResultError::Merge {
            reason: format!("{location}: no run has a histogram to merge"),
        });
    };
    Ok(EncodedHistogram::encode(&total))
}

fn sum_if_all(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    values.sum()
}

fn sum_counts_if_all(mut values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.try_fold(0_u64, |sum, value| Some(sum.saturating_add(value?)))
}
