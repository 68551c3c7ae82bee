//! Comparison of two results: which changes between a baseline A and a candidate B are
//! real, and whether the two runs are alike enough to compare at all.
//!
//! Load levels are matched by clients and target rate, operations by kind. For each pair
//! the report gives the throughput ratio B/A, the p50, p99 and p99.9 ratios, and a rank
//! test over the whole latency distribution. A change is flagged as significant only
//! when it is both larger than a minimum effect and unlikely to be sampling noise:
//!
//! - Throughput: one run gives no variance between runs to test against, so the rule is
//!   a relative threshold alone (default 5%, [`CompareOptions`]).
//! - A latency quantile: each run's recorded distribution gives a distribution-free
//!   confidence interval for the quantile. With `n` samples, the number of samples below
//!   the true q-quantile is Binomial(n, q), so the order statistics at ranks
//!   `nq ± z·sqrt(nq(1 − q))` bound it (normal approximation, z = 2.576 for 99%). The
//!   change counts when the two runs' intervals do not overlap (a stricter test than 99%
//!   on the difference) and the ratio differs from 1 by at least the threshold. With too
//!   few samples beyond the quantile (`n·min(q, 1 − q)` under 10, where the normal
//!   approximation fails) the interval is unbounded, so sparse tails are never flagged.
//! - The distribution: a Mann–Whitney U test computed from the two histograms' bucket
//!   counts, with ties (values in one bucket) given mid-ranks and the variance corrected
//!   for them. It yields P(B slower), the probability that a random B operation takes
//!   longer than a random A one (ties count half). The shift counts when |z| ≥ 3.29
//!   (two-sided p < 0.001) and P(B slower) lies outside 0.44 to 0.56. The effect bound
//!   is needed because with 100,000 samples even a 1% shift is statistically significant
//!   but rarely matters.
//!
//! These tests treat operations as independent samples. Latencies within a run are
//! correlated (a slow fdatasync delays every write batched with it), and runs differ from
//! each other by more than sampling noise, which is why the effect thresholds gate every
//! flag. Merging repeated runs before comparing narrows the gap.
//!
//! Beside the measurements the report lists every difference between the runs'
//! configurations, host facts, target facts and harness builds, so that a comparison of
//! unlike runs is visible as such.

use std::cmp::Ordering;
use std::fmt;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::Value;

use super::result::{OperationResult, PointResult, ResultError, RunResult, check_schema_version};

/// z of a two-sided 99% normal interval, for each run's quantile interval.
const QUANTILE_INTERVAL_Z: f64 = 2.576;

/// Minimum expected samples on the short side of a quantile (`n·min(q, 1 − q)`) for its
/// normal-approximation interval; below it the interval is unbounded.
const QUANTILE_TAIL_SAMPLES_MIN: f64 = 10.0;

/// |z| of the rank test at two-sided p = 0.001.
const RANK_TEST_Z: f64 = 3.29;

/// Minimum distance of P(B slower) from 0.5 for a flagged shift. For two normal
/// distributions of equal spread, P(B slower) = Φ(d/√2), so Cohen's conventional small
/// effect d = 0.2 gives Φ(0.141) ≈ 0.556.
const RANK_EFFECT_MIN: f64 = 0.06;

/// The latency quantiles compared, with their names in reports.
const COMPARED_QUANTILES: [(f64, &str); 3] = [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")];

/// Thresholds of [`compare`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CompareOptions {
    /// Minimum relative change of throughput that counts, in percent.
    pub throughput_threshold_pct: f64,
    /// Minimum relative change of a latency quantile that counts, in percent.
    pub latency_threshold_pct: f64,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions::with_threshold_pct(5.0)
    }
}

impl CompareOptions {
    /// Uses one threshold, in percent, for throughput and latency alike; what
    /// `--threshold PCT` sets.
    pub fn with_threshold_pct(threshold_pct: f64) -> CompareOptions {
        CompareOptions {
            throughput_threshold_pct: threshold_pct,
            latency_threshold_pct: threshold_pct,
        }
    }
}

/// The verdict on one compared measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// No significant change, or not enough data to tell.
    NotSignificant,
    /// Significantly better in B: higher throughput or lower latency.
    Improved,
    /// Significantly worse in B: lower throughput or higher latency.
    Regressed,
}

impl fmt::Display for Change {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Change::NotSignificant => "not significant",
            Change::Improved => "improved",
            Change::Regressed => "REGRESSED",
        };
        formatter.pad(text)
    }
}

/// A value that differs between the two runs, at a dotted JSON path such as
/// `config.clients`; `None` where one run lacks the field.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueDifference {
    pub path: String,
    pub baseline: Option<Value>,
    pub candidate: Option<Value>,
}

impl fmt::Display for ValueDifference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: &Option<Value>| match value {
            Some(value) => value.to_string(),
            None => "(absent)".to_owned(),
        };
        write!(
            formatter,
            "{}: {} -> {}",
            self.path,
            show(&self.baseline),
            show(&self.candidate)
        )
    }
}

/// Throughput of one operation kind in both runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ThroughputComparison {
    pub baseline_per_sec: f64,
    pub candidate_per_sec: f64,
    /// B/A; `None` when A had no successful operation.
    pub ratio: Option<f64>,
    pub change: Change,
}

/// One latency quantile in both runs, with each run's confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantileComparison {
    /// For example 0.99.
    pub quantile: f64,
    pub baseline_micros: f64,
    pub candidate_micros: f64,
    /// B/A; `None` when A's quantile is 0.
    pub ratio: Option<f64>,
    /// A's 99% interval in microseconds; the upper end is infinite when unbounded.
    pub baseline_interval_micros: (f64, f64),
    /// B's 99% interval in microseconds.
    pub candidate_interval_micros: (f64, f64),
    pub change: Change,
}

/// The Mann–Whitney comparison of the two latency distributions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RankComparison {
    /// P(a random B operation is slower than a random A one), ties counting half.
    pub probability_candidate_slower: f64,
    /// Normal approximation of U, tie-corrected; positive when B is slower.
    pub z: f64,
    pub change: Change,
}

/// One operation kind at one load level in both runs.
#[derive(Clone, Debug, PartialEq)]
pub struct OperationComparison {
    pub kind: String,
    pub baseline_samples: u64,
    pub candidate_samples: u64,
    pub throughput: ThroughputComparison,
    /// p50, p99 and p99.9; empty when either run recorded no successful operation.
    pub quantiles: Vec<QuantileComparison>,
    /// `None` when either run recorded no successful operation.
    pub distribution: Option<RankComparison>,
}

/// One load level present in both runs.
#[derive(Clone, Debug, PartialEq)]
pub struct PointComparison {
    pub clients: usize,
    pub target_rate_per_sec: Option<f64>,
    pub operations: Vec<OperationComparison>,
    /// Operation kinds measured only in A, or only in B.
    pub kinds_only_in_baseline: Vec<String>,
    pub kinds_only_in_candidate: Vec<String>,
}

impl PointComparison {
    fn label(&self) -> String {
        match self.target_rate_per_sec {
            Some(rate) => format!("clients {}, target rate {rate}/s", self.clients),
            None => format!("clients {}", self.clients),
        }
    }
}

/// The comparison of a baseline A with a candidate B; its `Display` prints it.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareReport {
    /// Origin of A, for example its path; empty when not known.
    pub baseline_label: String,
    pub candidate_label: String,
    pub baseline_system: String,
    pub candidate_system: String,
    pub options: CompareOptions,
    /// Differences in harness, git commit, configuration, target and host facts.
    pub differences: Vec<ValueDifference>,
    pub points: Vec<PointComparison>,
    /// Labels of load levels measured only in A, or only in B.
    pub points_only_in_baseline: Vec<String>,
    pub points_only_in_candidate: Vec<String>,
}

impl CompareReport {
    /// Returns whether any measure regressed significantly, the condition that
    /// `--fail-on-regression` exits on.
    pub fn has_regression(&self) -> bool {
        !self.regressions().is_empty()
    }

    /// Describes each significant regression in one line, such as
    /// `clients 64, write: p99 1.83x`.
    pub fn regressions(&self) -> Vec<String> {
        let mut found = Vec::new();
        for point in &self.points {
            for operation in &point.operations {
                let prefix = format!("{}, {}", point.label(), operation.kind);
                collect_regressions(operation, &prefix, &mut found);
            }
        }
        found
    }
}

fn collect_regressions(operation: &OperationComparison, prefix: &str, found: &mut Vec<String>) {
    if operation.throughput.change == Change::Regressed {
        let ratio = format_ratio(operation.throughput.ratio);
        found.push(format!("{prefix}: throughput {ratio}"));
    }
    for quantile in &operation.quantiles {
        if quantile.change == Change::Regressed {
            let name = quantile_name(quantile.quantile);
            let ratio = format_ratio(quantile.ratio);
            found.push(format!("{prefix}: {name} {ratio}"));
        }
    }
    if let Some(rank) = &operation.distribution
        && rank.change == Change::Regressed
    {
        let probability = rank.probability_candidate_slower;
        found.push(format!(
            "{prefix}: latency distribution, P(B slower) {probability:.3}"
        ));
    }
}

/// Reads two result files and compares them, A as the baseline.
///
/// # Errors
///
/// The errors of [`RunResult::read`] and of [`compare`].
pub fn compare_files(
    baseline: &Path,
    candidate: &Path,
    options: &CompareOptions,
) -> Result<CompareReport, ResultError> {
    let baseline_result = RunResult::read(baseline)?;
    let candidate_result = RunResult::read(candidate)?;
    let mut report = compare(&baseline_result, &candidate_result, options)?;
    report.baseline_label = baseline.display().to_string();
    report.candidate_label = candidate.display().to_string();
    Ok(report)
}

/// Compares `candidate` (B) with `baseline` (A), as described in the module
/// documentation. The report's labels are empty; [`compare_files`] sets them to the paths.
///
/// # Errors
///
/// [`ResultError::SchemaVersion`] when either result is of another schema, and
/// [`ResultError::InvalidHistogram`] inside [`ResultError::In`] for a histogram that does
/// not decode, with the run, point and operation named.
pub fn compare(
    baseline: &RunResult,
    candidate: &RunResult,
    options: &CompareOptions,
) -> Result<CompareReport, ResultError> {
    check_schema_version(u64::from(baseline.schema_version), "A")?;
    check_schema_version(u64::from(candidate.schema_version), "B")?;

    let mut points = Vec::new();
    let mut points_only_in_baseline = Vec::new();
    let mut matched = vec![false; candidate.points.len()];
    for point in &baseline.points {
        let Some(index) = find_level(point, &candidate.points, &matched) else {
            points_only_in_baseline.push(point.label());
            continue;
        };
        matched[index] = true;
        points.push(compare_point(point, &candidate.points[index], options)?);
    }
    let points_only_in_candidate = candidate
        .points
        .iter()
        .zip(&matched)
        .filter(|(_, matched)| !**matched)
        .map(|(point, _)| point.label())
        .collect();

    Ok(CompareReport {
        baseline_label: String::new(),
        candidate_label: String::new(),
        baseline_system: system_name(baseline),
        candidate_system: system_name(candidate),
        options: *options,
        differences: run_differences(baseline, candidate),
        points,
        points_only_in_baseline,
        points_only_in_candidate,
    })
}

fn system_name(result: &RunResult) -> String {
    format!("{} ({})", result.target.system, result.target.kind)
}

/// Finds the first unmatched point of `candidates` at the load level of `point`.
fn find_level(point: &PointResult, candidates: &[PointResult], matched: &[bool]) -> Option<usize> {
    candidates
        .iter()
        .zip(matched)
        .position(|(candidate, matched)| {
            !matched
                && candidate.clients == point.clients
                && same_rate(candidate.target_rate_per_sec, point.target_rate_per_sec)
        })
}

fn same_rate(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()),
        _ => false,
    }
}

/// Lists every difference in harness, git commit, configuration, target and host facts.
fn run_differences(baseline: &RunResult, candidate: &RunResult) -> Vec<ValueDifference> {
    let mut differences = json_differences(
        "harness",
        &Value::from(baseline.harness.clone()),
        &Value::from(candidate.harness.clone()),
    );
    differences.extend(json_differences(
        "git_commit",
        &serde_json::json!(baseline.git_commit),
        &serde_json::json!(candidate.git_commit),
    ));
    differences.extend(json_differences(
        "config",
        &baseline.config,
        &candidate.config,
    ));
    differences.extend(json_differences(
        "target",
        &serde_json::json!(baseline.target),
        &serde_json::json!(candidate.target),
    ));
    differences.extend(json_differences(
        "host",
        &serde_json::json!(baseline.host),
        &serde_json::json!(candidate.host),
    ));
    differences
}

/// Lists where two JSON values differ: object fields recursively, arrays element by
/// element when their lengths match and whole otherwise, scalars by value. Paths start
/// with `prefix`.
pub fn json_differences(prefix: &str, baseline: &Value, candidate: &Value) -> Vec<ValueDifference> {
    let mut differences = Vec::new();
    collect_differences(prefix.to_owned(), baseline, candidate, &mut differences);
    differences
}

fn collect_differences(
    path: String,
    baseline: &Value,
    candidate: &Value,
    differences: &mut Vec<ValueDifference>,
) {
    match (baseline, candidate) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let field_path = format!("{path}.{key}");
                match (a.get(key), b.get(key)) {
                    (Some(a), Some(b)) => collect_differences(field_path, a, b, differences),
                    (a, b) => differences.push(ValueDifference {
                        path: field_path,
                        baseline: a.cloned(),
                        candidate: b.cloned(),
                    }),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (index, (a, b)) in a.iter().zip(b).enumerate() {
                collect_differences(format!("{path}[{index}]"), a, b, differences);
            }
        }
        (a, b) if a != b => differences.push(ValueDifference {
            path,
            baseline: Some(a.clone()),
            candidate: Some(b.clone()),
        }),
        _ => {}
    }
}

fn compare_point(
    baseline: &PointResult,
    candidate: &PointResult,
    options: &CompareOptions,
) -> Result<PointComparison, ResultError> {
    let mut operations = Vec::new();
    let mut kinds_only_in_baseline = Vec::new();
    for (kind, operation) in &baseline.operations {
        let Some(other) = candidate.operations.get(kind) else {
            kinds_only_in_baseline.push(kind.clone());
            continue;
        };
        let location = |run: &str| format!("{run}, {}, operation `{kind}`", baseline.label());
        let baseline_latency = operation
            .latency
            .decode()
            .map_err(|e| e.at(location("A")))?;
        let candidate_latency = other.latency.decode().map_err(|e| e.at(location("B")))?;
        let latencies = (&baseline_latency, &candidate_latency);
        operations.push(compare_operation(
            kind,
            (operation, other),
            latencies,
            options,
        ));
    }
    let kinds_only_in_candidate = candidate
        .operations
        .keys()
        .filter(|kind| !baseline.operations.contains_key(*kind))
        .cloned()
        .collect();

    Ok(PointComparison {
        clients: baseline.clients,
        target_rate_per_sec: baseline.target_rate_per_sec,
        operations,
        kinds_only_in_baseline,
        kinds_only_in_candidate,
    })
}

fn compare_operation(
    kind: &str,
    (baseline, candidate): (&OperationResult, &OperationResult),
    (baseline_latency, candidate_latency): (&Histogram<u64>, &Histogram<u64>),
    options: &CompareOptions,
) -> OperationComparison {
    let throughput = compare_throughput(baseline.ok_per_sec, candidate.ok_per_sec, options);
    let both_recorded = !baseline_latency.is_empty() && !candidate_latency.is_empty();
    let quantiles = if both_recorded {
        COMPARED_QUANTILES
            .iter()
            .map(|(quantile, _)| {
                compare_quantile(baseline_latency, candidate_latency, *quantile, options)
            })
            .collect()
    } else {
        Vec::new()
    };
    let distribution = both_recorded.then(|| rank_test(baseline_latency, candidate_latency));

    OperationComparison {
        kind: kind.to_owned(),
        baseline_samples: baseline_latency.len(),
        candidate_samples: candidate_latency.len(),
        throughput,
        quantiles,
        distribution,
    }
}

fn compare_throughput(
    baseline_per_sec: f64,
    candidate_per_sec: f64,
    options: &CompareOptions,
) -> ThroughputComparison {
    let ratio = (baseline_per_sec > 0.0).then(|| candidate_per_sec / baseline_per_sec);
    let threshold = options.throughput_threshold_pct / 100.0;
    let change = match ratio {
        Some(ratio) if ratio <= 1.0 - threshold => Change::Regressed,
        Some(ratio) if ratio >= 1.0 + threshold => Change::Improved,
        Some(_) => Change::NotSignificant,
        None if candidate_per_sec > 0.0 => Change::Improved,
        None => Change::NotSignificant,
    };
    ThroughputComparison {
        baseline_per_sec,
        candidate_per_sec,
        ratio,
        change,
    }
}

fn compare_quantile(
    baseline: &Histogram<u64>,
    candidate: &Histogram<u64>,
    quantile: f64,
    options: &CompareOptions,
) -> QuantileComparison {
    let baseline_nanos = baseline.value_at_quantile(quantile) as f64;
    let candidate_nanos = candidate.value_at_quantile(quantile) as f64;
    let ratio = (baseline_nanos > 0.0).then(|| candidate_nanos / baseline_nanos);
    let (a_low, a_high) = quantile_interval_nanos(baseline, quantile);
    let (b_low, b_high) = quantile_interval_nanos(candidate, quantile);

    let threshold = options.latency_threshold_pct / 100.0;
    let change = match ratio {
        Some(ratio) if b_low > a_high && ratio >= 1.0 + threshold => Change::Regressed,
        Some(ratio) if b_high < a_low && ratio <= 1.0 - threshold => Change::Improved,
        _ => Change::NotSignificant,
    };
    QuantileComparison {
        quantile,
        baseline_micros: baseline_nanos / 1_000.0,
        candidate_micros: candidate_nanos / 1_000.0,
        ratio,
        baseline_interval_micros: (a_low / 1_000.0, a_high / 1_000.0),
        candidate_interval_micros: (b_low / 1_000.0, b_high / 1_000.0),
        change,
    }
}

/// Returns the distribution-free 99% confidence interval, in nanoseconds, of the
/// `quantile` of the distribution that `histogram` sampled. Each end is widened to the
/// edge of its histogram bucket. An end that the samples cannot bound is 0 or infinite.
fn quantile_interval_nanos(histogram: &Histogram<u64>, quantile: f64) -> (f64, f64) {
    let samples = histogram.len() as f64;
    let tail_samples = samples * quantile.min(1.0 - quantile);
    if tail_samples < QUANTILE_TAIL_SAMPLES_MIN {
        return (0.0, f64::INFINITY);
    }

    let center_rank = samples * quantile;
    let half_width = QUANTILE_INTERVAL_Z * (center_rank * (1.0 - quantile)).sqrt();
    let lower_rank = (center_rank - half_width).floor();
    let upper_rank = (center_rank + half_width).ceil() + 1.0;
    let lower = if lower_rank < 1.0 {
        0.0
    } else {
        let value = histogram.value_at_quantile(lower_rank / samples);
        histogram.lowest_equivalent(value) as f64
    };
    let upper = if upper_rank > samples {
        f64::INFINITY
    } else {
        let value = histogram.value_at_quantile(upper_rank / samples);
        histogram.highest_equivalent(value) as f64
    };
    (lower, upper)
}

/// Runs the Mann–Whitney U test of B against A on the histograms' bucket counts.
fn rank_test(baseline: &Histogram<u64>, candidate: &Histogram<u64>) -> RankComparison {
    let buckets = merged_buckets(baseline, candidate);
    let baseline_samples = baseline.len() as f64;
    let candidate_samples = candidate.len() as f64;
    let total_samples = baseline_samples + candidate_samples;

    // U counts the (A, B) pairs in which B is slower, ties counting half.
    let mut u_candidate = 0.0;
    let mut baseline_below = 0.0;
    let mut tie_term = 0.0;
    for (baseline_count, candidate_count) in buckets {
        let (a, b) = (baseline_count as f64, candidate_count as f64);
        u_candidate += b * (baseline_below + a / 2.0);
        baseline_below += a;
        let tied = a + b;
        tie_term += tied * tied * tied - tied;
    }

    let pairs = baseline_samples * candidate_samples;
    let tie_correction = tie_term / (total_samples * (total_samples - 1.0));
    let variance = pairs / 12.0 * ((total_samples + 1.0) - tie_correction);
    let z = if variance > 0.0 {
        (u_candidate - pairs / 2.0) / variance.sqrt()
    } else {
        0.0
    };
    let probability = u_candidate / pairs;
    let change = if z >= RANK_TEST_Z && probability >= 0.5 + RANK_EFFECT_MIN {
        Change::Regressed
    } else if z <= -RANK_TEST_Z && probability <= 0.5 - RANK_EFFECT_MIN {
        Change::Improved
    } else {
        Change::NotSignificant
    };
    RankComparison {
        probability_candidate_slower: probability,
        z,
        change,
    }
}

/// Returns the counts of both histograms per distinct bucket value, in ascending order.
///
/// NOTE: histograms of different precision (significant digits) have different bucket
/// edges, so their values interleave and the test's ties are then only approximate.
fn merged_buckets(baseline: &Histogram<u64>, candidate: &Histogram<u64>) -> Vec<(u64, u64)> {
    let recorded = |histogram: &Histogram<u64>| -> Vec<(u64, u64)> {
        histogram
            .iter_recorded()
            .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
            .collect()
    };
    let (a, b) = (recorded(baseline), recorded(candidate));
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                merged.push((a[i].1, 0));
                i += 1;
            }
            Ordering::Greater => {
                merged.push((0, b[j].1));
                j += 1;
            }
            Ordering::Equal => {
                merged.push((a[i].1, b[j].1));
                i += 1;
                j += 1;
            }
        }
    }
    merged
}

fn quantile_name(quantile: f64) -> &'static str {
    COMPARED_QUANTILES
        .iter()
        .find(|(q, _)| *q == quantile)
        .map_or("quantile", |(_, name)| name)
}

fn format_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(ratio) => format!("{ratio:.3}x"),
        None => "n/a".to_owned(),
    }
}

fn format_interval((low, high): (f64, f64)) -> String {
    if high.is_infinite() && low == 0.0 {
        "too few samples".to_owned()
    } else if high.is_infinite() {
        format!("[{low:.1}, unbounded]")
    } else {
        format!("[{low:.1}, {high:.1}]")
    }
}

impl fmt::Display for CompareReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_header(formatter)?;
        self.write_differences(formatter)?;
        for point in &self.points {
            write_point(formatter, point)?;
        }
        self.write_unmatched(formatter)?;
        self.write_verdict(formatter)
    }
}

impl CompareReport {
    fn write_header(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, system, label) in [
            (
                "A (baseline): ",
                &self.baseline_system,
                &self.baseline_label,
            ),
            (
                "B (candidate):",
                &self.candidate_system,
                &self.candidate_label,
            ),
        ] {
            if label.is_empty() {
                writeln!(out, "{name} {system}")?;
            } else {
                writeln!(out, "{name} {system}, from {label}")?;
            }
        }
        writeln!(
            out,
            "Significant: throughput change >= {}%; a quantile change >= {}% with disjoint \
             99% intervals; a distribution shift with |z| >= {RANK_TEST_Z} and P(B slower) \
             outside {:.2}..{:.2}.",
            self.options.throughput_threshold_pct,
            self.options.latency_threshold_pct,
            0.5 - RANK_EFFECT_MIN,
            0.5 + RANK_EFFECT_MIN,
        )
    }

    fn write_differences(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.differences.is_empty() {
            return writeln!(
                out,
                "\nThe runs have the same harness, config, target and host."
            );
        }
        let count = self.differences.len();
        let values = if count == 1 { "value" } else { "values" };
        writeln!(
            out,
            "\nThe runs differ in {count} {values}; check that they are meant to be compared:"
        )?;
        for difference in &self.differences {
            writeln!(out, "  {difference}")?;
        }
        Ok(())
    }

    fn write_unmatched(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (run, labels) in [
            ("A", &self.points_only_in_baseline),
            ("B", &self.points_only_in_candidate),
        ] {
            if !labels.is_empty() {
                writeln!(out, "\nLoad levels only in {run}: {}", labels.join("; "))?;
            }
        }
        Ok(())
    }

    fn write_verdict(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        let regressions = self.regressions();
        if regressions.is_empty() {
            return writeln!(out, "\nNo significant regression.");
        }
        writeln!(out, "\n{} significant regressions:", regressions.len())?;
        for regression in regressions {
            writeln!(out, "  {regression}")?;
        }
        Ok(())
    }
}

fn write_point(out: &mut fmt::Formatter<'_>, point: &PointComparison) -> fmt::Result {
    writeln!(out, "\n{}", point.label())?;
    writeln!(
        out,
        "  {:<10} {:<10} {:>12} {:>12} {:>8}  {:<15}  99% intervals A / B",
        "operation", "measure", "A", "B", "B/A", "change"
    )?;
    for operation in &point.operations {
        write_operation(out, operation)?;
    }
    for (run, kinds) in [
        ("A", &point.kinds_only_in_baseline),
        ("B", &point.kinds_only_in_candidate),
    ] {
        if !kinds.is_empty() {
            writeln!(out, "  operations only in {run}: {}", kinds.join(", "))?;
        }
    }
    Ok(())
}

fn write_operation(out: &mut fmt::Formatter<'_>, operation: &OperationComparison) -> fmt::Result {
    let kind = &operation.kind;
    let throughput = &operation.throughput;
    writeln!(
        out,
        "  {kind:<10} {:<10} {:>12.1} {:>12.1} {:>8}  {:<15}",
        "ok/s",
        throughput.baseline_per_sec,
        throughput.candidate_per_sec,
        format_ratio(throughput.ratio),
        throughput.change,
    )?;
    for quantile in &operation.quantiles {
        writeln!(
            out,
            "  {kind:<10} {:<10} {:>12.1} {:>12.1} {:>8}  {:<15}  {} / {}",
            format!("{} µs", quantile_name(quantile.quantile)),
            quantile.baseline_micros,
            quantile.candidate_micros,
            format_ratio(quantile.ratio),
            quantile.change,
            format_interval(quantile.baseline_interval_micros),
            format_interval(quantile.candidate_interval_micros),
        )?;
    }
    if let Some(rank) = &operation.distribution {
        writeln!(
            out,
            "  {kind:<10} {:<10} P(B slower) {:.3}, z {:.1} ({} / {} samples)  {}",
            "rank test",
            rank.probability_candidate_slower,
            rank.z,
            operation.baseline_samples,
            operation.candidate_samples,
            rank.change,
        )?;
    }
    Ok(())
}
