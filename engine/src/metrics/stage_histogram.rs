//! A histogram with fine fixed buckets, for the stages of a write that last from a few
//! microseconds to seconds.
//!
//! The bucket set is log-linear: nine buckets per decade (1, 2, …, 9 times a power of ten)
//! from 1 µs to 10 s. A bucket is thus at most as wide as its lower bound and at least 11%
//! of it. Every [`StageHistogram`] has the same bounds, so histograms of different shards add
//! up bucket by bucket, and Prometheus can add them across nodes.

use std::time::Duration;

/// Number of finite buckets: nine per decade over the six decades from 1 µs to 1 s and the
/// one from 1 s to 10 s, plus the bound 10 s itself.
pub const STAGE_BUCKETS: usize = 64;

/// Upper bounds of the finite buckets in nanoseconds: 1 µs, 2 µs, …, 9 µs, 10 µs, 20 µs, …,
/// 9 s, 10 s. Observations above 10 s count in an overflow bucket with no bound.
pub const STAGE_BUCKET_BOUNDS_NANOS: [u64; STAGE_BUCKETS] = stage_bucket_bounds_nanos();

const fn stage_bucket_bounds_nanos() -> [u64; STAGE_BUCKETS] {
    let mut bounds = [0; STAGE_BUCKETS];
    let mut decade_nanos = 1_000;
    let mut i = 0;
    while i < STAGE_BUCKETS - 1 {
        bounds[i] = decade_nanos * (i as u64 % 9 + 1);
        if i % 9 == 8 {
            decade_nanos *= 10;
        }
        i += 1;
    }
    // The loop ended by moving to the next decade, which starts at 10 s.
    bounds[STAGE_BUCKETS - 1] = decade_nanos;
    bounds
}

/// Counts of durations per bucket of [`STAGE_BUCKET_BOUNDS_NANOS`], plus the overflow
/// bucket, and the sum of all durations.
///
/// A plain value: the shard that owns it updates it without locks or atomics, and
/// snapshots are copies.
///
/// ```
/// use std::time::Duration;
/// use shardraft::metrics::StageHistogram;
///
/// let mut histogram = StageHistogram::default();
/// for micros in [3, 4, 40, 900] {
///     histogram.record(Duration::from_micros(micros));
/// }
/// assert_eq!(histogram.count(), 4);
/// assert_eq!(histogram.sum_nanos(), 947_000);
/// let median = histogram.quantile_micros(0.5).expect("the histogram is not empty");
/// assert!((3.0..=4.0).contains(&median));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageHistogram {
    /// Observations per bucket, not cumulative. Entry `i` counts the durations above bound
    /// `i - 1` (above 0 for `i = 0`) and at most bound `i`; the last entry counts those
    /// above 10 s.
    bucket_counts: [u64; STAGE_BUCKETS + 1],
    sum_nanos: u64,
}

impl Default for StageHistogram {
    fn default() -> Self {
        StageHistogram {
            bucket_counts: [0; STAGE_BUCKETS + 1],
            sum_nanos: 0,
        }
    }
}

impl StageHistogram {
    /// Adds one observation.
    pub fn record(&mut self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.record_nanos(nanos);
    }

    /// Adds one observation of `nanos` nanoseconds.
    pub fn record_nanos(&mut self, nanos: u64) {
        let bucket = STAGE_BUCKET_BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.bucket_counts[bucket] += 1;
        self.sum_nanos = self.sum_nanos.saturating_add(nanos);
    }

    /// Adds every observation of `other`.
    pub fn merge(&mut self, other: &StageHistogram) {
        for (count, added) in self.bucket_counts.iter_mut().zip(other.bucket_counts) {
            *count += added;
        }
        self.sum_nanos = self.sum_nanos.saturating_add(other.sum_nanos);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.bucket_counts.iter().sum()
    }

    /// Sum of all observations in nanoseconds, saturating at `u64::MAX` (584 years).
    pub fn sum_nanos(&self) -> u64 {
        self.sum_nanos
    }

    /// Sum of all observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// Mean observation in microseconds, or `None` when the histogram is empty.
    pub fn mean_micros(&self) -> Option<f64> {
        let count = self.count();
        (count > 0).then(|| self.sum_nanos as f64 / count as f64 / 1e3)
    }

    /// Observations per bucket, not cumulative: entry `i < STAGE_BUCKETS` for the bucket
    /// ending at [`STAGE_BUCKET_BOUNDS_NANOS`]`[i]`, the last entry for durations above
    /// 10 s. With the bounds, this is what converting to another histogram type needs.
    pub fn bucket_counts(&self) -> &[u64; STAGE_BUCKETS + 1] {
        &self.bucket_counts
    }

    /// `(upper bound in seconds, observations in that bucket)` for every bucket, the last
    /// with bound `f64::INFINITY`. Counts are per bucket, not cumulative.
    pub fn buckets(&self) -> [(f64, u64); STAGE_BUCKETS + 1] {
        let mut buckets = [(f64::INFINITY, 0); STAGE_BUCKETS + 1];
        for (i, bucket) in buckets.iter_mut().enumerate() {
            let bound = STAGE_BUCKET_BOUNDS_NANOS
                .get(i)
                .map_or(f64::INFINITY, |nanos| *nanos as f64 / 1e9);
            *bucket = (bound, self.bucket_counts[i]);
        }
        buckets
    }

    /// Estimates the `q` quantile (0.5 for the median, 0.99 for p99) in microseconds by
    /// linear interpolation inside the bucket that contains it, as Prometheus'
    /// `histogram_quantile` does. The estimate lies within that bucket's bounds, so its error
    /// is at most the bucket's width. A quantile in the overflow bucket is reported as 10 s,
    /// a lower bound.
    ///
    /// Returns `None` when the histogram is empty or `q` is not within `0.0..=1.0`.
    pub fn quantile_micros(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // The 1-based rank of the requested observation, so q = 0 requests the smallest.
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut below = 0;
        for (bucket, &in_bucket) in self.bucket_counts.iter().enumerate() {
            if below + in_bucket < rank {
                below += in_bucket;
                continue;
            }
            let Some(&upper_nanos) = STAGE_BUCKET_BOUNDS_NANOS.get(bucket) else {
                return Some(STAGE_BUCKET_BOUNDS_NANOS[STAGE_BUCKETS - 1] as f64 / 1e3);
            };
            let lower_nanos = bucket
                .checked_sub(1)
                .map_or(0, |previous| STAGE_BUCKET_BOUNDS_NANOS[previous]);
            let fraction = (rank - below) as f64 / in_bucket as f64;
            let nanos = lower_nanos as f64 + (upper_nanos - lower_nanos) as f64 * fraction;
            return Some(nanos / 1e3);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_rise_from_one_micro_to_ten_seconds() {
        assert_eq!(STAGE_BUCKET_BOUNDS_NANOS[0], 1_000);
        assert_eq!(STAGE_BUCKET_BOUNDS_NANOS[STAGE_BUCKETS - 1], 10_000_000_000);
        for pair in STAGE_BUCKET_BOUNDS_NANOS.windows(2) {
            assert!(pair[0] < pair[1], "{} then {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn bounds_are_nine_per_decade() {
        assert_eq!(STAGE_BUCKET_BOUNDS_NANOS[..3], [1_000, 2_000, 3_000]);
        assert_eq!(STAGE_BUCKET_BOUNDS_NANOS[8..11], [9_000, 10_000, 20_000]);
        assert_eq!(STAGE_BUCKET_BOUNDS_NANOS[62], 9_000_000_000);
    }

    #[test]
    fn bucket_width_is_at_most_its_lower_bound() {
        for pair in STAGE_BUCKET_BOUNDS_NANOS.windows(2) {
            assert!(pair[1] - pair[0] <= pair[0], "{} to {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn bounds_in_seconds_print_as_decimals() {
        let buckets = StageHistogram::default().buckets();
        assert_eq!(buckets[0].0.to_string(), "0.000001");
        assert_eq!(buckets[2].0.to_string(), "0.000003");
        assert_eq!(buckets[STAGE_BUCKETS - 1].0.to_string(), "10");
        assert_eq!(buckets[STAGE_BUCKETS].0, f64::INFINITY);
    }

    #[test]
    fn observation_on_a_bound_counts_in_that_bucket() {
        let mut histogram = StageHistogram::default();
        histogram.record(Duration::from_micros(3));
        histogram.record(Duration::from_nanos(3_001));
        assert_eq!(histogram.bucket_counts()[2], 1);
        assert_eq!(histogram.bucket_counts()[3], 1);
    }

    #[test]
    fn zero_and_overflow_observations_count_at_the_ends() {
        let mut histogram = StageHistogram::default();
        histogram.record(Duration::ZERO);
        histogram.record(Duration::from_secs(11));
        assert_eq!(histogram.bucket_counts()[0], 1);
        assert_eq!(histogram.bucket_counts()[STAGE_BUCKETS], 1);
        assert_eq!(histogram.quantile_micros(1.0), Some(10_000_000.0));
    }

    #[test]
    fn merge_adds_bucket_by_bucket() {
        let mut first = StageHistogram::default();
        first.record(Duration::from_micros(5));
        first.record(Duration::from_millis(2));
        let mut second = StageHistogram::default();
        second.record(Duration::from_micros(5));
        second.record(Duration::from_secs(1));
        let mut merged = first;
        merged.merge(&second);
        for bucket in 0..=STAGE_BUCKETS {
            let expected = first.bucket_counts()[bucket] + second.bucket_counts()[bucket];
            assert_eq!(merged.bucket_counts()[bucket], expected, "bucket {bucket}");
        }
        assert_eq!(merged.count(), 4);
        assert_eq!(merged.sum_nanos(), first.sum_nanos() + second.sum_nanos());
    }

    #[test]
    fn quantile_lies_in_ranked_bucket() {
        let mut histogram = StageHistogram::default();
        for micros in 1..=100 {
            histogram.record(Duration::from_micros(micros));
        }
        let median = histogram.quantile_micros(0.5).expect("a median");
        assert!((40.0..=50.0).contains(&median), "median {median}");
        let p99 = histogram.quantile_micros(0.99).expect("a p99");
        assert!((90.0..=100.0).contains(&p99), "p99 {p99}");
        let min = histogram.quantile_micros(0.0).expect("a minimum");
        assert!((0.0..=1.0).contains(&min), "minimum {min}");
    }

    #[test]
    fn quantiles_rise_with_q() {
        let mut histogram = StageHistogram::default();
        for micros in [2, 7, 7, 30, 450, 6_000, 80_000] {
            histogram.record(Duration::from_micros(micros));
        }
        let mut previous = 0.0;
        for step in 0..=100 {
            let quantile = histogram
                .quantile_micros(step as f64 / 100.0)
                .expect("a quantile");
            assert!(quantile >= previous, "q {step}%: {quantile} < {previous}");
            previous = quantile;
        }
    }

    #[test]
    fn quantile_of_empty_or_invalid_q_is_none() {
        let mut histogram = StageHistogram::default();
        assert_eq!(histogram.quantile_micros(0.5), None);
        assert_eq!(histogram.mean_micros(), None);
        histogram.record(Duration::from_micros(1));
        assert_eq!(histogram.quantile_micros(1.5), None);
        assert_eq!(histogram.quantile_micros(-0.1), None);
        assert_eq!(histogram.quantile_micros(f64::NAN), None);
    }
}
