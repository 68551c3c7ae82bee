//! Tests of the results layer: the histogram codec, result files, merging, `compare`,
//! sweep CSV and the latency chart. Every histogram here is synthetic, drawn from a
//! seeded log-normal distribution, so each run of the tests uses the same data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use shardraft_bench::harness::chart::{write_latency_chart, write_operation_latency_chart};
use shardraft_bench::harness::compare::{Change, CompareOptions, compare, compare_files};
use shardraft_bench::harness::csv::{CSV_HEADER, to_csv, write_csv};
use shardraft_bench::harness::result::{
    CheckResult, DiskUsageSample, EncodedHistogram, HostFacts, LatencyQuantiles, OperationResult,
    PointResult, RESULT_SCHEMA_VERSION, ResultError, RunResult, SnapshotResult, StageResult, merge,
};
use shardraft_bench::harness::target::TargetFacts;

/// Median of the synthetic latency distribution, in nanoseconds.
const MEDIAN_NANOS: f64 = 200_000.0;

/// Spread of the synthetic distribution: the standard deviation of ln(latency).
const SIGMA: f64 = 0.5;

/// The splitmix64 generator: small, seeded, and good enough for test data.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Returns a uniform value in (0, 1].
    fn next_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1_u64 << 53) as f64
    }

    /// Returns a standard normal value (Box–Muller transform).
    fn next_normal(&mut self) -> f64 {
        let radius = (-2.0 * self.next_unit().ln()).sqrt();
        radius * (std::f64::consts::TAU * self.next_unit()).cos()
    }
}

fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

/// Records `samples` log-normal latencies around [`MEDIAN_NANOS`], each multiplied by
/// `scale`.
fn latency_histogram(seed: u64, samples: u64, scale: f64) -> Histogram<u64> {
    let mut rng = SplitMix64(seed);
    let mut histogram = empty_histogram();
    for _ in 0..samples {
        let nanos = MEDIAN_NANOS * (SIGMA * rng.next_normal()).exp() * scale;
        histogram.record(nanos.round().max(1.0) as u64).unwrap();
    }
    histogram
}

fn operation(histogram: &Histogram<u64>, elapsed_secs: f64) -> OperationResult {
    OperationResult {
        ok: histogram.len(),
        refused: 3,
        indeterminate: 1,
        ok_per_sec: histogram.len() as f64 / elapsed_secs,
        latency: EncodedHistogram::encode(histogram),
    }
}

fn point(clients: usize, writes: &Histogram<u64>, reads: &Histogram<u64>) -> PointResult {
    let elapsed_secs = 10.0;
    let mut operations = BTreeMap::new();
    operations.insert("write".to_owned(), operation(writes, elapsed_secs));
    operations.insert("read".to_owned(), operation(reads, elapsed_secs));
    PointResult {
        clients,
        target_rate_per_sec: None,
        burst: None,
        elapsed_secs,
        operations,
        cpu_seconds: Some(4.0),
        fdatasyncs: Some(1_000),
        log_entries: Some(8_000),
        write_stages: vec![StageResult {
            stage: "fdatasync_completed".to_owned(),
            latency: EncodedHistogram::encode(writes),
            mean_nanos: writes.mean().round() as u64,
        }],
        check: Some(CheckResult {
            verdict: "linearizable".to_owned(),
            operations_checked: writes.len() + reads.len(),
            check_secs: 0.5,
            detail: None,
        }),
        late_operations: 0,
        disk_usage: vec![
            DiskUsageSample {
                elapsed_secs: -1.0,
                bytes: 8 << 20,
            },
            DiskUsageSample {
                elapsed_secs: 4.5,
                bytes: 12 << 20,
            },
        ],
        snapshots: Some(SnapshotResult {
            taken: 4,
            failed: 0,
            creation_nanos_sum: 200_000_000,
            creation_max_bound_secs: Some(0.1),
            installed: 1,
            installed_bytes: 64 << 20,
            install_nanos: 500_000_000,
            writes_during: Some(operation(writes, elapsed_secs)),
        }),
        elections: Some(1),
    }
}

fn host() -> HostFacts {
    HostFacts {
        cpu_model: "synthetic CPU".to_owned(),
        cpus: 2,
        kernel: "6.1.0".to_owned(),
        filesystem: Some("ext4".to_owned()),
        memory_bytes: Some(24 << 30),
        rustc: "rustc 1.95.0".to_owned(),
        device_sync_4k: None,
    }
}

fn target(system: &str) -> TargetFacts {
    TargetFacts {
        kind: "embedded".to_owned(),
        system: system.to_owned(),
        durability: "memory, no persistence".to_owned(),
        reached_through: "in process".to_owned(),
    }
}

fn run(points: Vec<PointResult>) -> RunResult {
    let clients: Vec<usize> = points.iter().map(|point| point.clients).collect();
    RunResult {
        schema_version: RESULT_SCHEMA_VERSION,
        harness: "shardraft-bench 0.1.0".to_owned(),
        git_commit: Some("0123456789abcdef".to_owned()),
        started_unix_ms: 1_700_000_000_000,
        config: serde_json::json!({ "clients": clients, "value_bytes": 16, "read_percent": 50 }),
        host: host(),
        target: target("shardraft 0.1.0"),
        points,
        snapshot_install: None,
    }
}

/// Builds a run of one load level whose write latencies are scaled by `scale`.
fn single_point_run(seed: u64, samples: u64, scale: f64) -> RunResult {
    let writes = latency_histogram(seed, samples, scale);
    let reads = latency_histogram(seed + 1, samples, 1.0);
    run(vec![point(8, &writes, &reads)])
}

/// Builds a sweep over 1, 4 and 16 clients whose throughput and latency grow with load,
/// as a saturating system's do.
fn sweep_run(seed: u64, samples: u64, scale: f64) -> RunResult {
    let points = [1_usize, 4, 16]
        .iter()
        .enumerate()
        .map(|(index, &clients)| {
            let load_scale = scale * (1.0 + index as f64 * index as f64);
            // More clients complete more operations in the same measured time.
            let level_samples = samples * (1 + index as u64);
            let writes = latency_histogram(seed + index as u64, level_samples, load_scale);
            let reads =
                latency_histogram(seed + 100 + index as u64, level_samples, load_scale / 2.0);
            point(clients, &writes, &reads)
        })
        .collect();
    run(points)
}

/// Returns an empty directory for `test` under Cargo's scratch directory for integration
/// tests.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("results-{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn recorded_counts(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
        .collect()
}

fn write_operation_of(result: &RunResult) -> &OperationResult {
    &result.points[0].operations["write"]
}

fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synthetic_sweep.json")
}

#[test]
fn histogram_round_trip_exact() {
    let mut histogram = latency_histogram(1, 50_000, 1.0);
    histogram.record_n(1, 5).unwrap();
    histogram.record(59_000_000_000).unwrap();

    let encoded = EncodedHistogram::encode(&histogram);
    let decoded = encoded.decode().unwrap();

    assert_eq!(decoded.len(), histogram.len());
    assert_eq!(decoded.min(), histogram.min());
    assert_eq!(decoded.max(), histogram.max());
    assert_eq!(recorded_counts(&decoded), recorded_counts(&histogram));
    assert_eq!(decoded, histogram);
}

#[test]
fn histogram_encoding_is_standard_v2_compressed() {
    // Base64 of the V2 compressed cookie 0x1c849314 is "HISTFA", the prefix that
    // HdrHistogram's interval logs show.
    let encoded = EncodedHistogram::encode(&latency_histogram(2, 100, 1.0));
    assert!(encoded.0.starts_with("HISTFA"), "{}", encoded.0);
}

#[test]
fn empty_histogram_round_trip() {
    let decoded = EncodedHistogram::encode(&empty_histogram())
        .decode()
        .unwrap();
    assert!(decoded.is_empty());
}

#[test]
fn corrupted_base64_rejected() {
    let error = EncodedHistogram("HISTFAAA not base64 !!".to_owned())
        .decode()
        .unwrap_err();
    assert!(matches!(error, ResultError::InvalidHistogram { .. }));
    assert!(error.to_string().contains("not valid base64"), "{error}");
}

#[test]
fn truncated_histogram_rejected() {
    let encoded = EncodedHistogram::encode(&latency_histogram(3, 10_000, 1.0));
    // Cutting whole base64 quanta keeps the text valid base64 but truncates the bytes.
    let cut = (encoded.0.len() / 2) / 4 * 4;
    let error = EncodedHistogram(encoded.0[..cut].to_owned())
        .decode()
        .unwrap_err();
    assert!(matches!(error, ResultError::InvalidHistogram { .. }));
    assert!(error.to_string().contains("deflate stream"), "{error}");
}

#[test]
fn foreign_cookie_rejected() {
    // "AAAAAAAA" is six zero bytes: a cookie of 0.
    let error = EncodedHistogram("AAAAAAAA".to_owned())
        .decode()
        .unwrap_err();
    assert!(
        error.to_string().contains("cookie is 0x00000000"),
        "{error}"
    );
}

#[test]
fn quantiles_summarize_in_micros() {
    let histogram = latency_histogram(4, 100_000, 1.0);
    let quantiles = LatencyQuantiles::from_histogram_nanos(&histogram).unwrap();
    assert_eq!(quantiles.samples, 100_000);
    // The median of the log-normal is 200 µs; 100,000 samples put p50 within 1%.
    assert!((quantiles.p50_micros - 200.0).abs() < 2.0, "{quantiles:?}");
    assert!(quantiles.p50_micros < quantiles.p90_micros);
    assert!(quantiles.p90_micros < quantiles.p99_micros);
    assert!(quantiles.p99_micros < quantiles.p999_micros);
    assert!(quantiles.p999_micros <= quantiles.max_micros);
    assert!(quantiles.mean_micros > quantiles.p50_micros);
}

#[test]
fn run_result_json_round_trip() {
    let dir = scratch_dir("round-trip");
    let path = dir.join("run.json");
    let result = sweep_run(10, 2_000, 1.0);

    result.write(&path).unwrap();
    let read = RunResult::read(&path).unwrap();

    assert_eq!(serde_json::json!(read), serde_json::json!(result));
    let original = write_operation_of(&result).latency.decode().unwrap();
    let reread = write_operation_of(&read).latency.decode().unwrap();
    assert_eq!(recorded_counts(&reread), recorded_counts(&original));
    assert!(!dir.join("run.json.partial").exists());
}

#[test]
fn schema_mismatch_rejected() {
    let mut json = serde_json::json!(single_point_run(11, 100, 1.0));
    json["schema_version"] = serde_json::json!(99);

    let error = RunResult::from_json(&json.to_string(), "old.json").unwrap_err();

    assert!(matches!(
        error,
        ResultError::SchemaVersion { found: 99, .. }
    ));
    let message = error.to_string();
    assert!(message.contains("old.json"), "{message}");
    assert!(message.contains("version 99"), "{message}");
    assert!(
        message.contains(&format!("version {RESULT_SCHEMA_VERSION}")),
        "{message}"
    );
}

#[test]
fn missing_schema_version_rejected() {
    let error = RunResult::from_json(r#"{"points": []}"#, "other.json").unwrap_err();
    assert!(matches!(error, ResultError::MissingSchemaVersion { .. }));
}

#[test]
fn unknown_descriptive_field_tolerated() {
    let mut json = serde_json::json!(single_point_run(12, 100, 1.0));
    json["operator_note"] = serde_json::json!("added by a newer harness");
    json["points"][0]["queue_depth_max"] = serde_json::json!(12);
    json["host"]["numa_nodes"] = serde_json::json!(1);

    let read = RunResult::from_json(&json.to_string(), "newer.json").unwrap();
    assert_eq!(read.points.len(), 1);
}

#[test]
fn unknown_measurement_field_rejected() {
    let mut json = serde_json::json!(single_point_run(13, 100, 1.0));
    json["points"][0]["operations"]["write"]["latency_unit"] = serde_json::json!("micros");

    let error = RunResult::from_json(&json.to_string(), "newer.json").unwrap_err();
    assert!(matches!(error, ResultError::Json { .. }));
    assert!(error.to_string().contains("latency_unit"), "{error}");
}

#[test]
fn write_rejects_not_finite_rate() {
    let mut result = single_point_run(14, 100, 1.0);
    result.points[0]
        .operations
        .get_mut("write")
        .unwrap()
        .ok_per_sec = f64::NAN;

    let path = scratch_dir("not-finite").join("run.json");
    let error = result.write(&path).unwrap_err();

    let message = error.to_string();
    assert!(message.contains("points[0]"), "{message}");
    assert!(
        message.contains("operations.write.ok_per_sec is NaN"),
        "{message}"
    );
    assert!(!path.exists());
}

#[test]
fn read_missing_file_names_path() {
    let error = RunResult::read("/nonexistent/run.json").unwrap_err();
    assert!(
        error.to_string().contains("/nonexistent/run.json"),
        "{error}"
    );
}

#[test]
fn merge_adds_counts_and_histograms() {
    let first = sweep_run(20, 5_000, 1.0);
    let mut second = sweep_run(30, 7_000, 1.0);
    second.started_unix_ms -= 60_000;

    let merged = merge(&[first.clone(), second.clone()]).unwrap();

    assert_eq!(merged.points.len(), 3);
    assert_eq!(merged.started_unix_ms, second.started_unix_ms);
    let point = &merged.points[0];
    let write = &point.operations["write"];
    assert_eq!(write.ok, 12_000);
    assert_eq!(write.refused, 6);
    assert_eq!(write.indeterminate, 2);
    assert_eq!(point.elapsed_secs, 20.0);
    assert_eq!(write.ok_per_sec, 600.0);
    assert_eq!(write.latency.decode().unwrap().len(), 12_000);
    assert_eq!(point.cpu_seconds, Some(8.0));
    assert_eq!(point.fdatasyncs, Some(2_000));
    assert_eq!(point.elections, Some(2));
    assert_eq!(point.log_entries, Some(16_000));
    assert_eq!(
        point.write_stages[0].latency.decode().unwrap().len(),
        12_000
    );
    let check = point.check.as_ref().unwrap();
    assert_eq!(check.verdict, "linearizable");
    assert_eq!(check.operations_checked, 24_000);
}

#[test]
fn merge_adds_snapshot_counts() {
    let first = single_point_run(1, 1_000, 1.0);
    let second = single_point_run(2, 1_000, 1.0);

    let merged = merge(&[first.clone(), second.clone()]).unwrap();

    let snapshots = merged.points[0].snapshots.as_ref().unwrap();
    assert_eq!(snapshots.taken, 8);
    assert_eq!(snapshots.installed_bytes, 128 << 20);
    assert_eq!(snapshots.creation_mean_secs(), Some(0.05));
    assert_eq!(
        snapshots.install_bytes_per_sec(),
        Some(f64::from(64 << 20) * 2.0)
    );
    let during = snapshots.writes_during.as_ref().unwrap();
    assert_eq!(during.ok, 2_000);
    assert_eq!(during.latency.decode().unwrap().len(), 2_000);
}

#[test]
fn merged_histogram_is_sum_of_parts() {
    let first = single_point_run(21, 3_000, 1.0);
    let second = single_point_run(22, 3_000, 3.0);

    let merged = merge(&[first.clone(), second.clone()]).unwrap();

    let mut expected = write_operation_of(&first).latency.decode().unwrap();
    expected
        .add(write_operation_of(&second).latency.decode().unwrap())
        .unwrap();
    let actual = write_operation_of(&merged).latency.decode().unwrap();
    assert_eq!(recorded_counts(&actual), recorded_counts(&expected));
}

#[test]
fn merge_keeps_violation() {
    let first = single_point_run(23, 100, 1.0);
    let mut second = single_point_run(24, 100, 1.0);
    let check = second.points[0].check.as_mut().unwrap();
    check.verdict = "not_linearizable".to_owned();
    check.detail = Some("read of key 7 returned a value never written".to_owned());

    let merged = merge(&[first, second]).unwrap();

    let check = merged.points[0].check.as_ref().unwrap();
    assert_eq!(check.verdict, "not_linearizable");
    assert!(
        check
            .detail
            .as_ref()
            .unwrap()
            .starts_with("result 2: read of key 7")
    );
}

#[test]
fn merge_rejects_different_config() {
    let first = single_point_run(25, 100, 1.0);
    let mut second = single_point_run(26, 100, 1.0);
    second.config["value_bytes"] = serde_json::json!(4096);

    let error = merge(&[first, second]).unwrap_err();

    assert!(matches!(error, ResultError::Merge { .. }));
    let message = error.to_string();
    assert!(message.contains("result 2"), "{message}");
    assert!(
        message.contains("config.value_bytes: 16 -> 4096"),
        "{message}"
    );
}

#[test]
fn merge_rejects_different_load_levels() {
    let first = single_point_run(27, 100, 1.0);
    let mut second = single_point_run(28, 100, 1.0);
    second.points[0].clients = 64;

    let error = merge(&[first, second]).unwrap_err();
    assert!(error.to_string().contains("clients 64"), "{error}");
}

#[test]
fn merge_rejects_other_schema() {
    let first = single_point_run(29, 100, 1.0);
    let mut second = single_point_run(30, 100, 1.0);
    second.schema_version = RESULT_SCHEMA_VERSION + 1;

    let error = merge(&[first, second]).unwrap_err();
    assert!(matches!(error, ResultError::SchemaVersion { .. }));
}

#[test]
fn merge_tolerates_new_device_measurement() {
    let first = single_point_run(31, 100, 1.0);
    let mut second = single_point_run(32, 100, 1.0);
    second.host.device_sync_4k = Some(shardraft_bench::harness::result::DeviceSyncFacts {
        ops_per_sec: 900.0,
        p50_micros: 1_000.0,
        p99_micros: 2_000.0,
    });
    assert!(merge(&[first, second]).is_ok());
}

#[test]
fn merge_of_nothing_rejected() {
    assert!(matches!(merge(&[]), Err(ResultError::Merge { .. })));
}

#[test]
fn compare_flags_doubled_latency() {
    let baseline = single_point_run(40, 100_000, 1.0);
    let candidate = single_point_run(50, 100_000, 2.0);

    let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();

    let write = &report.points[0].operations[1];
    assert_eq!(write.kind, "write");
    for quantile in &write.quantiles {
        assert_eq!(quantile.change, Change::Regressed, "{quantile:?}");
        let ratio = quantile.ratio.unwrap();
        assert!((1.8..2.2).contains(&ratio), "{quantile:?}");
    }
    let rank = write.distribution.unwrap();
    assert_eq!(rank.change, Change::Regressed);
    assert!(rank.probability_candidate_slower > 0.8, "{rank:?}");
    assert!(report.has_regression());
    // Reads were drawn from the same distribution in both runs.
    let read = &report.points[0].operations[0];
    assert!(
        read.quantiles
            .iter()
            .all(|q| q.change == Change::NotSignificant)
    );
}

#[test]
fn compare_ignores_identical_runs() {
    let result = single_point_run(41, 100_000, 1.0);

    let report = compare(&result, &result, &CompareOptions::default()).unwrap();

    assert!(!report.has_regression());
    assert!(report.differences.is_empty());
    for operation in &report.points[0].operations {
        assert_eq!(operation.throughput.change, Change::NotSignificant);
        assert!(
            operation
                .quantiles
                .iter()
                .all(|q| q.change == Change::NotSignificant)
        );
        let rank = operation.distribution.unwrap();
        assert_eq!(rank.change, Change::NotSignificant);
        assert!((rank.probability_candidate_slower - 0.5).abs() < 1e-12);
    }
}

#[test]
fn compare_ignores_resampling_noise() {
    // Independent samples of one distribution differ only by sampling noise.
    for seed in [42, 142, 242, 342] {
        let baseline = single_point_run(seed, 100_000, 1.0);
        let candidate = single_point_run(seed + 1_000, 100_000, 1.0);

        let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();

        assert!(
            !report.has_regression(),
            "seed {seed}: {:?}",
            report.regressions()
        );
        for operation in &report.points[0].operations {
            assert!(
                operation
                    .quantiles
                    .iter()
                    .all(|q| q.change == Change::NotSignificant)
            );
            assert_eq!(
                operation.distribution.unwrap().change,
                Change::NotSignificant
            );
        }
    }
}

#[test]
fn compare_ignores_one_percent_shift() {
    // 1% slower is statistically detectable with 100,000 samples but below the effect
    // thresholds.
    let baseline = single_point_run(43, 100_000, 1.0);
    let candidate = single_point_run(43, 100_000, 1.01);

    let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();

    assert!(!report.has_regression(), "{:?}", report.regressions());
}

#[test]
fn compare_ignores_small_samples() {
    // 20 samples cannot bound a p99 or p99.9, so even a doubling is not flagged there.
    let baseline = single_point_run(44, 20, 1.0);
    let candidate = single_point_run(45, 20, 2.0);

    let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();

    let write = &report.points[0].operations[1];
    for quantile in &write.quantiles[1..] {
        assert_eq!(quantile.change, Change::NotSignificant, "{quantile:?}");
        assert!(quantile.baseline_interval_micros.1.is_infinite());
    }
}

#[test]
fn compare_reports_improvement_as_no_regression() {
    let baseline = single_point_run(46, 100_000, 1.0);
    let candidate = single_point_run(47, 100_000, 0.5);

    let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();

    let write = &report.points[0].operations[1];
    assert!(write.quantiles.iter().all(|q| q.change == Change::Improved));
    assert_eq!(write.distribution.unwrap().change, Change::Improved);
    assert!(!report.has_regression());
}

#[test]
fn compare_throughput_threshold() {
    let baseline = single_point_run(48, 1_000, 1.0);
    let mut candidate = baseline.clone();
    let write = candidate.points[0].operations.get_mut("write").unwrap();
    write.ok_per_sec *= 0.9;

    let strict = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();
    let loose = compare(
        &baseline,
        &candidate,
        &CompareOptions::with_threshold_pct(20.0),
    )
    .unwrap();

    assert_eq!(
        strict.points[0].operations[1].throughput.change,
        Change::Regressed
    );
    assert!(strict.has_regression());
    assert_eq!(
        loose.points[0].operations[1].throughput.change,
        Change::NotSignificant
    );
    assert!(!loose.has_regression());
}

#[test]
fn compare_shows_run_differences() {
    let baseline = single_point_run(49, 1_000, 1.0);
    let mut candidate = single_point_run(49, 1_000, 1.0);
    candidate.config["value_bytes"] = serde_json::json!(1024);
    candidate.host.kernel = "6.8.0".to_owned();
    candidate.target = target("etcd 3.5.17");

    let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();

    let paths: Vec<&str> = report.differences.iter().map(|d| d.path.as_str()).collect();
    assert!(paths.contains(&"config.value_bytes"), "{paths:?}");
    assert!(paths.contains(&"host.kernel"), "{paths:?}");
    assert!(paths.contains(&"target.system"), "{paths:?}");
    let printed = report.to_string();
    assert!(
        printed.contains("config.value_bytes: 16 -> 1024"),
        "{printed}"
    );
    assert!(printed.contains("etcd 3.5.17 (embedded)"), "{printed}");
}

#[test]
fn compare_lists_unmatched_levels() {
    let baseline = sweep_run(51, 500, 1.0);
    let mut candidate = sweep_run(51, 500, 1.0);
    candidate.points[2].clients = 32;

    let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();

    assert_eq!(report.points.len(), 2);
    assert_eq!(report.points_only_in_baseline, ["clients 16"]);
    assert_eq!(report.points_only_in_candidate, ["clients 32"]);
    assert!(
        report
            .to_string()
            .contains("Load levels only in B: clients 32")
    );
}

#[test]
fn compare_printout_names_regression() {
    let baseline = single_point_run(52, 100_000, 1.0);
    let candidate = single_point_run(53, 100_000, 2.0);

    let report = compare(&baseline, &candidate, &CompareOptions::default()).unwrap();
    let printed = report.to_string();

    assert!(printed.contains("REGRESSED"), "{printed}");
    assert!(printed.contains("clients 8, write: p99"), "{printed}");
    assert!(
        printed.contains("The runs have the same harness"),
        "{printed}"
    );
}

#[test]
fn compare_files_labels_paths() {
    let dir = scratch_dir("compare-files");
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    single_point_run(54, 1_000, 1.0).write(&a).unwrap();
    single_point_run(55, 1_000, 1.0).write(&b).unwrap();

    let report = compare_files(&a, &b, &CompareOptions::default()).unwrap();

    assert_eq!(report.baseline_label, a.display().to_string());
    assert!(report.to_string().contains(&b.display().to_string()));
}

#[test]
fn compare_rejects_other_schema() {
    let baseline = single_point_run(56, 100, 1.0);
    let mut candidate = baseline.clone();
    candidate.schema_version = 0;
    let error = compare(&baseline, &candidate, &CompareOptions::default()).unwrap_err();
    assert!(matches!(error, ResultError::SchemaVersion { found: 0, .. }));
}

#[test]
fn csv_has_header_and_rows() {
    let result = sweep_run(60, 1_000, 1.0);

    let text = to_csv(&result).unwrap();
    let lines: Vec<&str> = text.lines().collect();

    assert_eq!(lines[0], CSV_HEADER);
    // Three load levels of two operation kinds each.
    assert_eq!(lines.len(), 1 + 6);
    let columns = CSV_HEADER.split(',').count();
    for line in &lines[1..] {
        assert_eq!(line.split(',').count(), columns, "{line}");
    }
    let fields: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(&fields[..7], ["1", "", "read", "1000", "100", "3", "1"]);
    // CPU: 4 s over 2,000 successful operations; 8,000 entries over 1,000 fdatasyncs.
    assert_eq!(fields[13], "2000");
    assert_eq!(fields[14], "8");
    assert!(lines[6].starts_with("16,,write,"), "{}", lines[6]);
}

#[test]
fn csv_leaves_unmeasured_cells_empty() {
    let mut result = single_point_run(61, 100, 1.0);
    result.points[0].cpu_seconds = None;
    result.points[0].fdatasyncs = None;
    result.points[0].target_rate_per_sec = Some(5_000.0);

    let text = to_csv(&result).unwrap();
    let row = text.lines().nth(1).unwrap();

    assert!(row.starts_with("8,5000,read,"), "{row}");
    assert!(row.ends_with(",,"), "{row}");
}

#[test]
fn csv_file_written() {
    let path = scratch_dir("csv").join("sweep.csv");
    write_csv(&sweep_run(62, 100, 1.0), &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("clients,target_rate_per_sec,operation,"));
}

#[test]
fn chart_svg_parses_as_xml() {
    let shardraft = sweep_run(70, 2_000, 1.0);
    let mut etcd = sweep_run(80, 2_000, 3.0);
    etcd.target = target("etcd 3.5.17");
    let path = scratch_dir("chart").join("latency.svg");

    write_latency_chart(&[&shardraft, &etcd], &path).unwrap();

    let svg = std::fs::read_to_string(&path).unwrap();
    let document = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let texts: Vec<&str> = document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .filter_map(|node| node.text())
        .map(str::trim)
        .collect();
    assert!(
        texts.contains(&"shardraft 0.1.0 (embedded) p50"),
        "{texts:?}"
    );
    assert!(texts.contains(&"etcd 3.5.17 (embedded) p99"), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|text| text.contains("latency (µs, log scale)")),
        "{texts:?}"
    );
    assert!(
        texts.iter().any(|text| text.contains("operations/s")),
        "{texts:?}"
    );
}

#[test]
fn chart_of_one_operation_kind() {
    let result = sweep_run(71, 500, 10.0);
    let path = scratch_dir("chart-kind").join("writes.svg");

    write_operation_latency_chart(&[&result], "write", &path).unwrap();

    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.contains("write latency against throughput"));
    // p99 of the slowest level is about 30 ms here, so the axis is in milliseconds.
    assert!(svg.contains("latency (ms, log scale)"));
}

#[test]
fn chart_numbers_repeated_systems() {
    let first = sweep_run(72, 200, 1.0);
    let second = sweep_run(73, 200, 1.0);
    let path = scratch_dir("chart-repeated").join("latency.svg");

    write_latency_chart(&[&first, &second], &path).unwrap();

    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.contains("shardraft 0.1.0 (embedded) #2 p50"));
}

#[test]
fn chart_without_data_rejected() {
    let mut result = single_point_run(74, 100, 1.0);
    result.points.clear();
    let path = scratch_dir("chart-empty").join("latency.svg");

    let error = write_latency_chart(&[&result], &path).unwrap_err();

    assert!(matches!(error, ResultError::Chart { .. }));
    assert!(!path.exists());
}

#[test]
fn fixture_reads_and_summarizes() {
    let fixture = RunResult::read(fixture_path()).unwrap();

    assert_eq!(fixture.points.len(), 3);
    let quantiles = write_operation_of(&fixture)
        .latency_quantiles()
        .unwrap()
        .unwrap();
    assert_eq!(quantiles.samples, 2_000);
    let report = compare(&fixture, &fixture, &CompareOptions::default()).unwrap();
    assert!(!report.has_regression());
    assert_eq!(to_csv(&fixture).unwrap().lines().count(), 7);
}

#[test]
fn fixture_matches_generator() {
    // The fixture is this generator's output; rerun `write_fixture` after changing either.
    let fixture = RunResult::read(fixture_path()).unwrap();
    let generated = sweep_run(1, 2_000, 1.0);
    assert_eq!(
        serde_json::json!(fixture.config),
        serde_json::json!(generated.config)
    );
    for (stored, fresh) in fixture.points.iter().zip(&generated.points) {
        for (kind, operation) in &stored.operations {
            let stored_counts = recorded_counts(&operation.latency.decode().unwrap());
            let fresh_counts = recorded_counts(&fresh.operations[kind].latency.decode().unwrap());
            assert_eq!(stored_counts, fresh_counts, "{} {kind}", stored.label());
        }
    }
}

/// Regenerates `tests/fixtures/synthetic_sweep.json`:
/// `cargo test -p shardraft-bench --test results -- --ignored write_fixture`.
#[test]
#[ignore = "writes the fixture file; run by hand after changing the generator"]
fn write_fixture() {
    sweep_run(1, 2_000, 1.0).write(fixture_path()).unwrap();
}
