//! Drivers for benchmarks of the write-ahead log ([`shardraft::log::DiskLog`]), shared by
//! the `shardraft-bench log` command and the `log_append` criterion benchmark.
//!
//! - [`device`] measures what the device under a directory does on its own: O_DIRECT
//!   writes made durable by fdatasync one at a time, sequential into a preallocated,
//!   zero-filled file, the same pattern as the log's group commit.
//! - [`load`] runs closed-loop appenders against an open log on one glommio executor and
//!   reports throughput, entries per fdatasync and append-to-durable latency.
//! - [`payload`] makes the bytes both of them write: random by default, since a disk that
//!   compresses stores repeated bytes faster than real data.
//! - [`goals`] compares the two against the log's performance goals.
//! - [`environment`] finds a directory to measure in and the machine facts that belong
//!   beside every figure.

pub mod device;
pub mod environment;
pub mod goals;
pub mod load;
pub mod payload;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram records, in nanoseconds; longer samples are clamped to it.
const LATENCY_NANOS_MAX: u64 = 60_000_000_000;

/// Creates an empty histogram of latencies in nanoseconds, from 1 ns to 60 s at 3
/// significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NANOS_MAX, 3)
        .expect("the latency histogram's bounds are valid constants")
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_micros: f64,
    pub p99_micros: f64,
    pub max_micros: f64,
}

impl LatencySummary {
    /// Summarises a histogram of nanoseconds; all zero when it contains no sample.
    pub fn from_nanos(histogram: &Histogram<u64>) -> LatencySummary {
        if histogram.is_empty() {
            return LatencySummary::default();
        }
        let micros = |nanos: u64| nanos as f64 / 1_000.0;
        LatencySummary {
            samples: histogram.len(),
            p50_micros: micros(histogram.value_at_quantile(0.50)),
            p99_micros: micros(histogram.value_at_quantile(0.99)),
            max_micros: micros(histogram.max()),
        }
    }
}

/// Bytes per mebibyte, for rates printed in MiB/s.
pub const MIB: f64 = 1024.0 * 1024.0;

/// Formats a byte count as the largest binary unit that divides it (`16 B`, `4 KiB`,
/// `1 MiB`), or with one decimal in KiB when none does.
pub fn format_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    if bytes >= KIB * KIB && bytes.is_multiple_of(KIB * KIB) {
        format!("{} MiB", bytes / (KIB * KIB))
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else if bytes < KIB {
        format!("{bytes} B")
    } else {
        format!("{:.1} KiB", bytes as f64 / KIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_bytes_picks_exact_unit() {
        assert_eq!(format_bytes(16), "16 B");
        assert_eq!(format_bytes(4096), "4 KiB");
        assert_eq!(format_bytes(1 << 20), "1 MiB");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn latency_summary_of_empty_histogram_is_zero() {
        let summary = LatencySummary::from_nanos(&new_latency_histogram());

        assert_eq!(summary, LatencySummary::default());
    }

    #[test]
    fn latency_summary_converts_to_micros() {
        let mut histogram = new_latency_histogram();
        for nanos in 1..=100u64 {
            histogram.record(nanos * 1_000).unwrap();
        }

        let summary = LatencySummary::from_nanos(&histogram);

        assert_eq!(summary.samples, 100);
        assert!((summary.p50_micros - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99_micros - 99.0).abs() < 0.1, "{summary:?}");
        assert!((summary.max_micros - 100.0).abs() < 0.1, "{summary:?}");
    }
}
