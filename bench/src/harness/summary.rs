//! The human summary of a run on standard output, and the [`PointResult`] of each point.
//!
//! The header states what ran: the target, the durability class, the workload and the
//! machine with the device's own sync latency. Each point then gets a block with its
//! throughput, latency quantiles, errors, entries per sync, CPU time per operation
//! and the check's verdict, and a sweep ends with one table row per point.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use shardraft::metrics::STAGE_BUCKET_BOUNDS_NANOS;

use super::load::{OperationStats, PointMeasurement, PointStats, StageSample};
use super::result::LatencyQuantiles;
use super::result::{
    CheckResult, DiskUsageSample, EncodedHistogram, HostFacts, OperationResult, PointResult,
    SnapshotInstallResult, SnapshotResult, StageResult,
};
use super::target::embedded::InstallMeasurement;
use super::target::{ReadMode, TargetFacts};
#[cfg(test)]
use super::workload::Burst;
use super::workload::{KeyDistribution, LoadLevel, RunLength, Workload};

/// Formats a latency in nanoseconds with three significant digits in µs, ms or s.
pub fn format_latency_nanos(nanos: u64) -> String {
    // Rounding first lets 999.6 µs print as 1.00 ms instead of "1000 µs".
    let nanos = round_to_significant_digits(nanos as f64, 3);
    if nanos < 1e6 {
        format!("{} µs", significant(nanos / 1e3))
    } else if nanos < 1e9 {
        format!("{} ms", significant(nanos / 1e6))
    } else {
        format!("{} s", significant(nanos / 1e9))
    }
}

/// Rounds `value` to `digits` significant digits.
fn round_to_significant_digits(value: f64, digits: i32) -> f64 {
    if value <= 0.0 || !value.is_finite() {
        return value;
    }
    let scale = 10f64.powi(value.log10().floor() as i32 - (digits - 1));
    (value / scale).round() * scale
}

/// Formats a number with three significant digits, without a trailing decimal point.
fn significant(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn format_micros(micros: f64) -> String {
    format_latency_nanos((micros * 1e3).round() as u64)
}

/// Builds the result of one point, for the JSON result and the summary.
pub fn point_result(
    level: LoadLevel,
    measurement: &PointMeasurement,
    check: Option<CheckResult>,
) -> PointResult {
    let elapsed_secs = measurement.elapsed.as_secs_f64();
    let mut operations = BTreeMap::new();
    let stats = &measurement.stats;
    for (name, kind) in [("write", &stats.write), ("read", &stats.read)] {
        if kind.ok + kind.errors() > 0 || name == "write" {
            operations.insert(name.to_string(), operation_result(kind, elapsed_secs));
        }
    }
    PointResult {
        clients: level.clients,
        target_rate_per_sec: level.rate_per_sec,
        burst: level.burst,
        elapsed_secs,
        operations,
        cpu_seconds: measurement.counters.cpu.map(|cpu| cpu.as_secs_f64()),
        fdatasyncs: measurement.counters.fdatasyncs,
        log_entries: measurement.counters.log_entries,
        write_stages: stage_results(measurement.counters.write_stages.as_deref()),
        check,
        late_operations: stats.late,
        disk_usage: measurement
            .disk_usage
            .iter()
            .map(|sample| DiskUsageSample {
                elapsed_secs: sample.elapsed_secs,
                bytes: sample.bytes,
            })
            .collect(),
        snapshots: snapshot_result(measurement, elapsed_secs),
        elections: measurement.counters.elections,
    }
}

fn snapshot_result(measurement: &PointMeasurement, elapsed_secs: f64) -> Option<SnapshotResult> {
    let counters = measurement.counters.snapshots?;
    let creation_max_bound_secs = counters
        .creation_buckets
        .iter()
        .rposition(|count| *count > 0)
        .and_then(|bucket| {
            shardraft::metrics::LATENCY_BUCKET_BOUNDS_SECONDS
                .get(bucket)
                .copied()
        });
    let writes_during = &measurement.stats.write_during_snapshot;
    Some(SnapshotResult {
        taken: counters.taken,
        failed: counters.failed,
        creation_nanos_sum: counters.creation_nanos,
        creation_max_bound_secs,
        installed: counters.installed,
        installed_bytes: counters.installed_bytes,
        install_nanos: counters.install_nanos,
        writes_during: measurement
            .snapshot_split
            .then(|| operation_result(writes_during, elapsed_secs)),
    })
}

fn operation_result(stats: &OperationStats, elapsed_secs: f64) -> OperationResult {
    OperationResult {
        ok: stats.ok,
        refused: stats.refused,
        indeterminate: stats.indeterminate,
        ok_per_sec: if elapsed_secs > 0.0 {
            stats.ok as f64 / elapsed_secs
        } else {
            0.0
        },
        latency: EncodedHistogram::encode(&stats.latency_nanos),
    }
}

/// Prints what the run drives and on what machine.
pub fn print_header(
    workload: &Workload,
    target: &TargetFacts,
    host: &HostFacts,
    data_dir: Option<&str>,
) {
    println!(
        "shardraft-bench run: {} target, {}",
        target.kind, target.system
    );
    println!("target: {}", target.reached_through);
    if target.kind == "embedded" {
        println!(
            "note: the three nodes and the load generator share this one process and its CPUs"
        );
    }
    println!("durability: {}", target.durability);
    println!("workload: {}", describe_workload(workload));
    let memory = host.memory_bytes.map_or_else(String::new, |bytes| {
        format!(", {:.1} GiB memory", bytes as f64 / (1u64 << 30) as f64)
    });
    println!(
        "machine: {} CPUs ({}), kernel {}{memory}",
        host.cpus, host.cpu_model, host.kernel
    );
    if let Some(data_dir) = data_dir {
        println!("data directory: {data_dir}");
    }
    if let Some(device) = &host.device_sync_4k {
        println!(
            "device: 4 KiB O_DIRECT write + fdatasync, one at a time: {:.0}/s, p50 {}, p99 {}",
            device.ops_per_sec,
            format_micros(device.p50_micros),
            format_micros(device.p99_micros)
        );
    }
}

fn describe_workload(workload: &Workload) -> String {
    let reads = workload.read_fraction * 100.0;
    let mix = if workload.read_fraction > 0.0 {
        let mode = match workload.read_mode {
            ReadMode::Linearizable => "linearizable",
            ReadMode::Stale => "stale",
        };
        format!("{:.0}% writes, {reads:.0}% {mode} reads", 100.0 - reads)
    } else {
        "100% writes".to_string()
    };
    let keys = match workload.key_distribution {
        KeyDistribution::Uniform => "uniform".to_string(),
        KeyDistribution::Zipfian { theta } => format!("zipfian, theta {theta}"),
    };
    let length = match workload.length {
        RunLength::Duration { secs } => format!("{secs:.1} s"),
        RunLength::Operations { count } => format!("{count} operations"),
    };
    format!(
        "{mix}, {} B values, {} keys ({keys}); {:.1} s warm-up, then {length} per point; up \
         to {} load thread(s), {} connection(s), seed {}",
        workload.value_bytes,
        workload.keys,
        workload.warmup_secs,
        workload.load_threads,
        workload.connections,
        workload.seed
    )
}

/// Describes a load level: `closed loop, 64 clients` or `open loop at 5000/s, up to 64
/// in flight`.
pub fn describe_level(level: LoadLevel) -> String {
    match (level.rate_per_sec, level.burst) {
        (None, None) => format!("closed loop, {} clients", level.clients),
        (None, Some(burst)) => format!(
            "closed loop, bursts: {} clients alternating with {} every {} s",
            level.clients,
            burst.low_clients,
            burst.period_secs / 2.0
        ),
        (Some(rate), _) => format!("open loop at {rate}/s, up to {} in flight", level.clients),
    }
}

/// Prints the block of point `index` (0-based) of `count`.
pub fn print_point(
    index: usize,
    count: usize,
    point: &PointResult,
    measurement: &PointMeasurement,
    cpu_scope: &str,
) {
    let level = LoadLevel {
        clients: point.clients,
        rate_per_sec: point.target_rate_per_sec,
        burst: point.burst,
    };
    println!();
    println!(
        "point {}/{count}: {}, {:.2} s measured, {} load thread(s), {} session(s)",
        index + 1,
        describe_level(level),
        point.elapsed_secs,
        measurement.load_threads,
        measurement.sessions
    );
    let stats = &measurement.stats;
    for (name, kind) in [("writes", &stats.write), ("reads", &stats.read)] {
        if name == "reads" && kind.ok + kind.errors() == 0 {
            continue;
        }
        print_operation(name, kind, point.elapsed_secs);
    }
    if level.rate_per_sec.is_some() {
        println!(
            "  late     {} operations found all {} slots busy when due (latency counts from \
             the intended start)",
            stats.late, point.clients
        );
    }
    print_counters(point, stats.ok() + stats.errors(), cpu_scope);
    print_disk_usage(&point.disk_usage);
    if let Some(snapshots) = &point.snapshots {
        print_snapshots(snapshots, stats);
    }
    print_stages(point);
    if let Some(check) = &point.check {
        print_check(check);
    }
}

fn print_operation(name: &str, stats: &OperationStats, elapsed_secs: f64) {
    let rate = if elapsed_secs > 0.0 {
        stats.ok as f64 / elapsed_secs
    } else {
        0.0
    };
    println!(
        "  {name:<8} {:.0}/s: {} ok, {} errors ({} refused, {} indeterminate)",
        rate,
        stats.ok,
        stats.errors(),
        stats.refused,
        stats.indeterminate
    );
    if let Some(quantiles) = LatencyQuantiles::from_histogram_nanos(&stats.latency_nanos) {
        println!(
            "           latency p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
            format_micros(quantiles.p50_micros),
            format_micros(quantiles.p90_micros),
            format_micros(quantiles.p99_micros),
            format_micros(quantiles.p999_micros),
            format_micros(quantiles.max_micros)
        );
    }
}

/// Prints the snapshots of a point and the write latency with and without one being taken.
fn print_snapshots(snapshots: &SnapshotResult, stats: &PointStats) {
    let creation = match (
        snapshots.creation_mean_secs(),
        snapshots.creation_max_bound_secs,
    ) {
        (Some(mean), Some(bound)) => format!(
            " (creation mean {}, longest at most {})",
            format_micros(mean * 1e6),
            format_micros(bound * 1e6)
        ),
        (Some(mean), None) => format!(
            " (creation mean {}, longest over 10 s)",
            format_micros(mean * 1e6)
        ),
        _ => String::new(),
    };
    println!(
        "  snapshot {} taken{creation}, {} failed, {} installed",
        snapshots.taken, snapshots.failed, snapshots.installed
    );
    if let Some(rate) = snapshots.install_bytes_per_sec() {
        println!(
            "           installs: {:.1} MiB at {:.1} MiB/s of receiving and restoring",
            snapshots.installed_bytes as f64 / MIB,
            rate / MIB
        );
    }
    if snapshots.writes_during.is_none() {
        return;
    }
    let during = &stats.write_during_snapshot.latency_nanos;
    let mut outside = stats.write.latency_nanos.clone();
    // `during` contains a subset of the writes, recorded with the same range.
    let _ = outside.subtract(during);
    let share = if stats.write.ok > 0 {
        100.0 * stats.write_during_snapshot.ok as f64 / stats.write.ok as f64
    } else {
        0.0
    };
    for (label, histogram) in [("while one was taken", during), ("otherwise", &outside)] {
        let Some(quantiles) = LatencyQuantiles::from_histogram_nanos(histogram) else {
            println!("           writes {label}: none");
            continue;
        };
        let count = if label == "otherwise" {
            String::new()
        } else {
            format!(" ({} writes, {share:.1}%)", quantiles.samples)
        };
        println!(
            "           writes {label}{count}: p50 {}, p99 {}, p99.9 {}",
            format_micros(quantiles.p50_micros),
            format_micros(quantiles.p99_micros),
            format_micros(quantiles.p999_micros)
        );
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// Builds the result of a node's restart on an empty disk.
pub fn install_result(install: &InstallMeasurement) -> SnapshotInstallResult {
    let install_secs = install.install_time.as_secs_f64();
    SnapshotInstallResult {
        node_id: install.node_id,
        groups: install.groups,
        snapshots_installed: install.snapshots_installed,
        installed_bytes: install.installed_bytes,
        install_secs,
        install_bytes_per_sec: (install.snapshots_installed > 0 && install_secs > 0.0)
            .then(|| install.installed_bytes as f64 / install_secs),
        catch_up_secs: install.catch_up_time.as_secs_f64(),
    }
}

/// Prints what bringing a node back from an empty disk took.
pub fn print_install(install: &SnapshotInstallResult) {
    println!();
    println!(
        "snapshot install: node {} restarted on an empty disk and caught up with {} group(s) \
         in {:.2} s",
        install.node_id, install.groups, install.catch_up_secs
    );
    match install.install_bytes_per_sec {
        Some(rate) => println!(
            "  installed {} snapshot(s), {:.1} MiB in {:.2} s of receiving and restoring: \
             {:.1} MiB/s",
            install.snapshots_installed,
            install.installed_bytes as f64 / MIB,
            install.install_secs,
            rate / MIB
        ),
        None => println!(
            "  installed no snapshot: every group still had its whole log, so the node \
             replayed it (run longer, or with more keys, for logs to be compacted)"
        ),
    }
}

fn print_counters(point: &PointResult, operations: u64, cpu_scope: &str) {
    match (
        point.log_entries,
        point.fdatasyncs,
        entries_per_fdatasync(point),
    ) {
        (Some(entries), Some(syncs), Some(ratio)) => println!(
            "  log      {ratio:.1} entries per sync ({syncs} syncs and {entries} entries on all \
             replicas)"
        ),
        (Some(entries), Some(_), None) => {
            println!("  log      no sync per batch ({entries} entries on all replicas)")
        }
        (Some(entries), None, _) => println!(
            "  log      {entries} entries appended on the listed replicas; syncs not reported"
        ),
        (None, _, _) => println!(
            "  log      no log counters (memory storage, or a target that does not report them)"
        ),
    }
    match (
        point.cpu_seconds,
        cpu_nanos_per_operation(point, operations),
    ) {
        (Some(cpu_secs), Some(per_operation)) => println!(
            "  cpu      {} per operation ({cpu_secs:.2} s of {cpu_scope}, over {operations} \
             operations)",
            format_latency_nanos(per_operation)
        ),
        _ => println!("  cpu      {cpu_scope}"),
    }
    match point.elections {
        Some(elections) => println!(
            "  elect    {elections} leader elections won in any group during the measured part"
        ),
        None => println!("  elect    not reported by this target"),
    }
}

/// Prints the largest and the last of a point's disk samples, which show whether the data
/// stays bounded.
fn print_disk_usage(samples: &[DiskUsageSample]) {
    let (Some(last), Some(largest)) = (
        samples.last(),
        samples.iter().max_by_key(|sample| sample.bytes),
    ) else {
        return;
    };
    let mebibytes = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    println!(
        "  disk     {:.1} MiB at the end, at most {:.1} MiB (at {:.0} s), {} samples",
        mebibytes(last.bytes),
        mebibytes(largest.bytes),
        largest.elapsed_secs,
        samples.len()
    );
}

/// Converts the engine's stage bucket counts into HdrHistograms. Each write is recorded at
/// its bucket's upper bound (buckets run 1, 2, ... 9 µs, 10, 20, ... µs, nine per decade, to
/// 10 s), so quantiles read from these histograms round up to the next bucket bound.
/// Writes beyond 10 s are recorded at 20 s.
fn stage_results(stages: Option<&[StageSample]>) -> Vec<StageResult> {
    let Some(stages) = stages else {
        return Vec::new();
    };
    stages
        .iter()
        .filter(|sample| sample.bucket_counts.iter().any(|count| *count > 0))
        .map(|sample| {
            let mut histogram = crate::wal::new_latency_histogram();
            for (bucket, &count) in sample.bucket_counts.iter().enumerate() {
                let upper_bound_nanos = STAGE_BUCKET_BOUNDS_NANOS
                    .get(bucket)
                    .copied()
                    .unwrap_or(2 * STAGE_BUCKET_BOUNDS_NANOS[STAGE_BUCKET_BOUNDS_NANOS.len() - 1]);
                if count > 0 {
                    histogram.saturating_record_n(upper_bound_nanos, count);
                }
            }
            StageResult {
                stage: sample.stage.clone(),
                latency: EncodedHistogram::encode(&histogram),
                mean_nanos: sample.sum_nanos / histogram.len().max(1),
            }
        })
        .collect()
}

/// Prints where the leaders' writes spent their time, stage by stage.
fn print_stages(point: &PointResult) {
    if point.write_stages.is_empty() {
        return;
    }
    println!(
        "  stages   where a write's time goes on its leader (mean, and p99 as a bucket bound):"
    );
    for stage in &point.write_stages {
        let Ok(histogram) = stage.latency.decode() else {
            continue;
        };
        if histogram.is_empty() {
            continue;
        }
        println!(
            "           {:<22} {:>9} {:>9}",
            stage.stage,
            format_latency_nanos(stage.mean_nanos),
            format_latency_nanos(histogram.value_at_quantile(0.99))
        );
    }
}

fn print_check(check: &CheckResult) {
    println!(
        "  check    {}: {} operations checked in {:.2} s",
        check.verdict.replace('_', " "),
        check.operations_checked,
        check.check_secs
    );
    if let Some(detail) = &check.detail {
        println!("           {detail}");
    }
}

/// Prints one table row per point of a sweep; `late` contains each point's late operations.
pub fn print_sweep_table(points: &[PointResult], late: &[u64]) {
    println!();
    println!(
        "{:>8} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>11} {:>9}  check",
        "clients",
        "rate/s",
        "ok/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "errors",
        "late",
        "entries/fs",
        "cpu/op"
    );
    for (index, point) in points.iter().enumerate() {
        print_sweep_row(point, late.get(index).copied());
    }
}

fn print_sweep_row(point: &PointResult, late: Option<u64>) {
    let (ok, errors, latency) = point_totals(point);
    let quantiles = latency
        .as_ref()
        .and_then(LatencyQuantiles::from_histogram_nanos);
    let show = |select: fn(&LatencyQuantiles) -> f64| {
        quantiles.map_or_else(|| "-".to_string(), |q| format_micros(select(&q)))
    };

    let rate = point
        .target_rate_per_sec
        .map_or_else(|| "-".to_string(), |rate| format!("{rate}"));
    let per_sync =
        entries_per_fdatasync(point).map_or_else(|| "-".to_string(), |ratio| format!("{ratio:.1}"));
    let cpu = cpu_nanos_per_operation(point, ok + errors)
        .map_or_else(|| "-".to_string(), format_latency_nanos);
    let ok_per_sec = if point.elapsed_secs > 0.0 {
        ok as f64 / point.elapsed_secs
    } else {
        0.0
    };
    let late = late.map_or_else(|| "-".to_string(), |late| late.to_string());
    let check = point
        .check
        .as_ref()
        .map_or("-", |check| check.verdict.as_str());

    println!(
        "{:>8} {:>9} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>11} {:>9}  {check}",
        point.clients,
        rate,
        ok_per_sec,
        show(|q| q.p50_micros),
        show(|q| q.p99_micros),
        show(|q| q.p999_micros),
        show(|q| q.max_micros),
        errors,
        late,
        per_sync,
        cpu
    );
}

/// Sums a point's successful and failed operations of every kind, and merges their
/// latency histograms; a histogram that does not decode is left out.
fn point_totals(point: &PointResult) -> (u64, u64, Option<Histogram<u64>>) {
    let mut latency: Option<Histogram<u64>> = None;
    let mut ok = 0;
    let mut errors = 0;
    for operation in point.operations.values() {
        ok += operation.ok;
        errors += operation.refused + operation.indeterminate;
        let Ok(histogram) = operation.latency.decode() else {
            continue;
        };
        match &mut latency {
            // The harness records every latency with one range, 1 ns to 60 s, so adding fits.
            Some(total) => {
                let _ = total.add(&histogram);
            }
            None => latency = Some(histogram),
        }
    }
    (ok, errors, latency)
}

/// Computes the log entries per sync of a point, when the target reports both.
fn entries_per_fdatasync(point: &PointResult) -> Option<f64> {
    match (point.log_entries, point.fdatasyncs) {
        (Some(entries), Some(syncs)) if syncs > 0 => Some(entries as f64 / syncs as f64),
        _ => None,
    }
}

/// Computes the CPU nanoseconds per operation of a point, when the target reports CPU time.
fn cpu_nanos_per_operation(point: &PointResult, operations: u64) -> Option<u64> {
    let cpu_secs = point.cpu_seconds?;
    (operations > 0).then(|| (cpu_secs * 1e9 / operations as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_uses_three_significant_digits() {
        assert_eq!(format_latency_nanos(812_345), "812 µs");
        assert_eq!(format_latency_nanos(1_234_567), "1.23 ms");
        assert_eq!(format_latency_nanos(45_600_000), "45.6 ms");
        assert_eq!(format_latency_nanos(2_500_000_000), "2.50 s");
        assert_eq!(format_latency_nanos(999_600), "1.00 ms");
        assert_eq!(format_latency_nanos(99_960), "100 µs");
        assert_eq!(format_latency_nanos(0), "0.00 µs");
        assert_eq!(format_latency_nanos(900), "0.90 µs");
    }

    #[test]
    fn levels_name_their_loop() {
        let closed = LoadLevel::closed(64);
        let open = LoadLevel {
            clients: 8,
            rate_per_sec: Some(5000.0),
            burst: None,
        };
        let bursts = LoadLevel {
            burst: Some(Burst {
                low_clients: 1,
                period_secs: 4.0,
            }),
            ..LoadLevel::closed(256)
        };
        assert_eq!(describe_level(closed), "closed loop, 64 clients");
        assert_eq!(
            describe_level(bursts),
            "closed loop, bursts: 256 clients alternating with 1 every 2 s"
        );
        assert_eq!(
            describe_level(open),
            "open loop at 5000/s, up to 8 in flight"
        );
    }
}
