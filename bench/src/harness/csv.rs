//! CSV of a sweep, for spreadsheets and plotting tools: one row per load level and
//! operation kind, in the order the levels ran and the kinds sort.
//!
//! Latencies are in microseconds, from the stored histograms. Two columns describe the
//! whole load level and repeat on each of its rows. `cpu_micros_per_op` is the level's
//! CPU time divided by its successful operations of every kind, because CPU time is not
//! measured per kind. `entries_per_fdatasync` is log entries made durable per fdatasync
//! call. A value that was not measured is an empty cell, never 0. Fields are quoted as
//! RFC 4180 describes (a field containing a comma, quote or line break is quoted, with its
//! quotes doubled), and lines end in `\n`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use super::result::{LatencyQuantiles, PointResult, ResultError, RunResult};

/// The header row, without its line break.
pub const CSV_HEADER: &str = "clients,target_rate_per_sec,operation,ok,ok_per_sec,refused,\
                              indeterminate,p50_micros,p90_micros,p99_micros,p999_micros,\
                              max_micros,mean_micros,cpu_micros_per_op,entries_per_fdatasync";

/// Writes the CSV of `result` to `path`, replacing it.
///
/// # Errors
///
/// [`ResultError::InvalidHistogram`] inside [`ResultError::In`] for a histogram that does
/// not decode, and [`ResultError::Write`] when writing fails.
pub fn write_csv(result: &RunResult, path: impl AsRef<Path>) -> Result<(), ResultError> {
    let path = path.as_ref();
    let text = to_csv(result)?;
    fs::write(path, text).map_err(|source| ResultError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Returns the CSV of `result`: the header, then one row per load level and operation.
///
/// # Errors
///
/// [`ResultError::InvalidHistogram`] inside [`ResultError::In`] for a histogram that does
/// not decode.
pub fn to_csv(result: &RunResult) -> Result<String, ResultError> {
    let mut text = String::from(CSV_HEADER);
    text.push('\n');
    for (index, point) in result.points.iter().enumerate() {
        let location = format!("point {} ({})", index + 1, point.label());
        write_point_rows(&mut text, point, &location)?;
    }
    Ok(text)
}

fn write_point_rows(
    text: &mut String,
    point: &PointResult,
    location: &str,
) -> Result<(), ResultError> {
    let ok_total: u64 = point
        .operations
        .values()
        .map(|operation| operation.ok)
        .sum();
    let cpu_micros_per_op = point
        .cpu_seconds
        .filter(|_| ok_total > 0)
        .map(|seconds| seconds * 1e6 / ok_total as f64);
    let entries_per_fdatasync = match (point.log_entries, point.fdatasyncs) {
        (Some(entries), Some(syncs)) if syncs > 0 => Some(entries as f64 / syncs as f64),
        _ => None,
    };

    for (kind, operation) in &point.operations {
        let quantiles = operation
            .latency_quantiles()
            .map_err(|error| error.at(format!("{location}, operation `{kind}`")))?;
        let fields = [
            point.clients.to_string(),
            optional(point.target_rate_per_sec),
            quote(kind),
            operation.ok.to_string(),
            number(operation.ok_per_sec),
            operation.refused.to_string(),
            operation.indeterminate.to_string(),
        ];
        let latency = latency_fields(quantiles.as_ref());
        let per_point = [optional(cpu_micros_per_op), optional(entries_per_fdatasync)];
        let row: Vec<&str> = fields
            .iter()
            .chain(&latency)
            .chain(&per_point)
            .map(String::as_str)
            .collect();
        let _ = writeln!(text, "{}", row.join(","));
    }
    Ok(())
}

fn latency_fields(quantiles: Option<&LatencyQuantiles>) -> [String; 6] {
    let Some(q) = quantiles else {
        return Default::default();
    };
    [
        q.p50_micros,
        q.p90_micros,
        q.p99_micros,
        q.p999_micros,
        q.max_micros,
        q.mean_micros,
    ]
    .map(number)
}

fn optional(value: Option<f64>) -> String {
    value.map(number).unwrap_or_default()
}

/// Formats a number with at most 3 decimals and no trailing zeros.
fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_drops_trailing_zeros() {
        assert_eq!(number(12.0), "12");
        assert_eq!(number(12.5), "12.5");
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(number(0.0), "0");
    }

    #[test]
    fn quote_escapes_separators() {
        assert_eq!(quote("write"), "write");
        assert_eq!(quote("a,b"), "\"a,b\"");
        assert_eq!(quote("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
