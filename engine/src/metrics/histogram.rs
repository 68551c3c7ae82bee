//! A latency histogram with fixed buckets: a plain value that one shard updates without
//! locks or atomics, copies into its snapshots, and that the exporter merges across shards.

use std::time::Duration;

/// Upper bounds of the histogram buckets in seconds, from 50 µs to 10 s. Observations above
/// the last bound fall into the implicit `+Inf` bucket.
pub const LATENCY_BUCKET_BOUNDS_SECONDS: [f64; LATENCY_BUCKETS] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Number of finite buckets.
pub const LATENCY_BUCKETS: usize = 17;

/// [`LATENCY_BUCKET_BOUNDS_SECONDS`] in nanoseconds, the unit observations are counted in.
const BOUNDS_NANOS: [u64; LATENCY_BUCKETS] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Counts of observed durations per bucket of [`LATENCY_BUCKET_BOUNDS_SECONDS`], plus the
/// overflow bucket, and the sum of all observations.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Observations per bucket, not cumulative. Entry `i` counts the durations above bound
    /// `i - 1` and at most bound `i`, and the last entry counts those above 10 s.
    bucket_counts: [u64; LATENCY_BUCKETS + 1],
    sum_nanos: u64,
}

impl LatencyHistogram {
    /// Adds one observation.
    pub fn record(&mut self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.bucket_counts[bucket] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }

    /// Adds every observation of `other`.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (count, added) in self.bucket_counts.iter_mut().zip(other.bucket_counts) {
            *count += added;
        }
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.bucket_counts.iter().sum()
    }

    /// Sum of all observations in nanoseconds.
    pub fn sum_nanos(&self) -> u64 {
        self.sum_nanos
    }

    /// Observations per bucket, not cumulative, with the overflow bucket last.
    pub fn bucket_counts(&self) -> [u64; LATENCY_BUCKETS + 1] {
        self.bucket_counts
    }

    /// Sum of all observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// `(upper bound in seconds, observations in that bucket)` for every bucket, the last
    /// with bound `f64::INFINITY`. Counts are per bucket, not cumulative.
    pub fn buckets(&self) -> [(f64, u64); LATENCY_BUCKETS + 1] {
        let mut buckets = [(f64::INFINITY, 0); LATENCY_BUCKETS + 1];
        for (i, bucket) in buckets.iter_mut().enumerate() {
            let bound = LATENCY_BUCKET_BOUNDS_SECONDS
                .get(i)
                .copied()
                .unwrap_or(f64::INFINITY);
            *bucket = (bound, self.bucket_counts[i]);
        }
        buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_in_nanos_match_bounds_in_seconds() {
        for (nanos, seconds) in BOUNDS_NANOS.iter().zip(LATENCY_BUCKET_BOUNDS_SECONDS) {
            assert_eq!(*nanos, (seconds * 1e9).round() as u64);
        }
    }

    #[test]
    fn observation_on_a_bound_counts_in_that_bucket() {
        let mut histogram = LatencyHistogram::default();
        histogram.record(Duration::from_millis(1));
        let buckets = histogram.buckets();
        assert_eq!(buckets[4], (0.001, 1));
        assert_eq!(histogram.count(), 1);
    }

    #[test]
    fn observation_above_last_bound_counts_as_infinite() {
        let mut histogram = LatencyHistogram::default();
        histogram.record(Duration::from_secs(11));
        let buckets = histogram.buckets();
        assert_eq!(buckets[LATENCY_BUCKETS], (f64::INFINITY, 1));
    }

    #[test]
    fn merge_adds_counts_and_sums() {
        let mut first = LatencyHistogram::default();
        first.record(Duration::from_micros(10));
        let mut second = LatencyHistogram::default();
        second.record(Duration::from_micros(10));
        second.record(Duration::from_secs(1));
        first.merge(&second);
        assert_eq!(first.count(), 3);
        assert_eq!(first.buckets()[0].1, 2);
        assert!((first.sum_seconds() - 1.000_02).abs() < 1e-9);
    }
}
