//! A fixed-size log-linear latency histogram with O(1) recording and quantile queries.
//!
//! The engine records one value per event on the hot path, so recording must not allocate,
//! fail or branch on configuration. The layout follows the log-linear idea of HdrHistogram:
//! values below 16 get one bucket each, and every power of
//! two above that is split into 16 linear sub-buckets, so a bucket's width is at most 1/16
//! of its lower edge. All of `u64` fits in [`BUCKETS`] buckets (976 counters, about 8 KiB), so
//! no value is ever out of range. The workspace's `hdrhistogram` crate was not used, because
//! its recording can fail on out-of-range values and it allocates per histogram. This type
//! does neither and is small enough to keep one per peer.
//!
//! Quantiles return the upper edge of the bucket that holds the requested rank, clamped to
//! the largest recorded value. They therefore overstate the true quantile by less than 6.25%
//! and never understate it, which errs toward longer timeouts in the safety rules.

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 4;
const SUB_COUNT: u64 = 1 << SUB_BITS;

/// The number of buckets that covers every `u64`.
pub const BUCKETS: usize = (SUB_COUNT + (64 - SUB_BITS as u64) * SUB_COUNT) as usize;

/// A latency histogram in microseconds (any `u64` unit works).
#[derive(Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("count", &self.total)
            .field("min", &self.min())
            .field("max", &self.max())
            .finish()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket_index(value: u64) -> usize {
    if value < SUB_COUNT {
        return value as usize;
    }
    // `msb` is at least SUB_BITS here because value >= SUB_COUNT.
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    let sub = (value >> shift) & (SUB_COUNT - 1);
    (SUB_COUNT + u64::from(shift) * SUB_COUNT + sub) as usize
}

/// Returns the smallest value that falls into bucket `index`.
fn bucket_lower_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_COUNT {
        return index;
    }
    let shift = (index - SUB_COUNT) / SUB_COUNT;
    let sub = (index - SUB_COUNT) % SUB_COUNT;
    (SUB_COUNT | sub) << shift
}

/// Returns the largest value that falls into bucket `index`.
fn bucket_upper_edge(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_COUNT {
        return index;
    }
    let shift = (index - SUB_COUNT) / SUB_COUNT;
    let sub = (index - SUB_COUNT) % SUB_COUNT;
    let lower = (SUB_COUNT | sub) << shift;
    let width = 1u64 << shift;
    lower.saturating_add(width - 1)
}

impl LatencyHistogram {
    /// Creates an empty histogram.
    pub fn new() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        self.record_n(value, 1);
    }

    /// Records `duration` in whole microseconds, rounded up so that a recorded latency is
    /// never below the truth.
    pub fn record_duration_micros(&mut self, duration: std::time::Duration) {
        let micros = duration.as_nanos().div_ceil(1_000);
        self.record(u64::try_from(micros).unwrap_or(u64::MAX));
    }

    /// Records `count` occurrences of `value`; counters saturate instead of wrapping.
    pub fn record_n(&mut self, value: u64, count: u64) {
        if count == 0 {
            return;
        }
        let slot = &mut self.counts[bucket_index(value)];
        *slot = slot.saturating_add(count);
        self.total = self.total.saturating_add(count);
        self.sum = self
            .sum
            .saturating_add(u128::from(value) * u128::from(count));
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value of `other` into this histogram.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine = mine.saturating_add(*theirs);
        }
        self.total = self.total.saturating_add(other.total);
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Returns the values recorded in this histogram since it held `earlier`, for a caller
    /// that keeps one histogram for a whole run and reads it once per interval.
    ///
    /// Counts and the sum are exact differences. A histogram with fewer values than
    /// `earlier` was started again since (a peer's link replaced, say), so all of its
    /// values are new and it is returned whole. Other counts that shrank count as 0. The
    /// smallest and largest values of the difference are not kept, so they are the edges
    /// of its lowest and highest non-empty buckets, clamped to this histogram's own.
    /// Quantiles therefore stay within one bucket above the truth.
    pub fn growth_since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        if self.total < earlier.total {
            return self.clone();
        }
        let mut growth = LatencyHistogram::new();
        let mut lowest = None;
        let mut highest = None;
        for (index, (now, before)) in self.counts.iter().zip(earlier.counts.iter()).enumerate() {
            let count = now.saturating_sub(*before);
            if count > 0 {
                growth.counts[index] = count;
                growth.total = growth.total.saturating_add(count);
                lowest.get_or_insert(index);
                highest = Some(index);
            }
        }
        if let (Some(lowest), Some(highest)) = (lowest, highest) {
            growth.sum = self.sum.saturating_sub(earlier.sum);
            growth.min = bucket_lower_edge(lowest).clamp(self.min, self.max);
            growth.max = bucket_upper_edge(highest).clamp(self.min, self.max);
        }
        growth
    }

    /// Empties the histogram; costs one pass over the fixed bucket array.
    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.total = 0;
        self.sum = 0;
        self.min = u64::MAX;
        self.max = 0;
    }

    /// Returns the number of recorded values.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Returns the smallest recorded value, or `None` when empty.
    pub fn min(&self) -> Option<u64> {
        (self.total > 0).then_some(self.min)
    }

    /// Returns the largest recorded value, or `None` when empty.
    pub fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// Returns the exact mean of the recorded values, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.total > 0).then(|| self.sum as f64 / self.total as f64)
    }

    /// Returns an upper estimate of quantile `q` (clamped to `[0, 1]`), or `None` when empty.
    ///
    /// The result is the upper edge of the bucket holding rank `ceil(q × count)`, clamped
    /// to the recorded `[min, max]`, so it is within 6.25% above the true quantile.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        // The float product may round; clamping keeps the rank in [1, total].
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen = seen.saturating_add(*count);
            if seen >= rank {
                return Some(bucket_upper_edge(index).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_edges_cover_every_value() {
        for value in [0u64, 1, 7, 8, 9, 15, 16, 17, 1000, 123_456_789, u64::MAX] {
            let index = bucket_index(value);
            assert!(index < BUCKETS, "{value} maps to {index}");
            assert!(bucket_upper_edge(index) >= value, "{value} above its edge");
            if index > 0 {
                assert!(
                    bucket_upper_edge(index - 1) < value,
                    "{value} below its edge"
                );
            }
        }
    }

    #[test]
    fn quantiles_of_uniform_values() {
        let mut histogram = LatencyHistogram::new();
        for value in 1..=10_000u64 {
            histogram.record(value);
        }
        let p50 = histogram.quantile(0.5).unwrap_or(0);
        let p99 = histogram.quantile(0.99).unwrap_or(0);
        assert!((5_000..=5_313).contains(&p50), "p50 {p50}");
        assert!((9_900..=10_000).contains(&p99), "p99 {p99}");
        assert_eq!(histogram.quantile(1.0), Some(10_000));
        assert_eq!(histogram.quantile(0.0), Some(1));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.quantile(0.5), None);
        assert_eq!(histogram.mean(), None);
        assert_eq!(histogram.max(), None);
    }

    #[test]
    fn extreme_values_saturate() {
        let mut histogram = LatencyHistogram::new();
        histogram.record_n(u64::MAX, u64::MAX);
        histogram.record_n(u64::MAX, u64::MAX);
        histogram.record(0);
        assert_eq!(histogram.count(), u64::MAX);
        assert_eq!(histogram.quantile(0.999), Some(u64::MAX));
        assert_eq!(histogram.quantile(f64::NAN), Some(u64::MAX));
    }

    #[test]
    fn growth_contains_only_later_values() {
        let mut histogram = LatencyHistogram::new();
        for value in [5u64, 100, 100, 9_000] {
            histogram.record(value);
        }
        let earlier = histogram.clone();
        for value in [200u64, 300, 12_000] {
            histogram.record(value);
        }
        let growth = histogram.growth_since(&earlier);
        assert_eq!(growth.count(), 3);
        assert_eq!(growth.mean(), Some(12_500.0 / 3.0));
        let min = growth.min().unwrap_or(0);
        let max = growth.max().unwrap_or(0);
        assert!((192..=200).contains(&min), "min {min}");
        assert_eq!(max, 12_000, "the upper edge is clamped to the recorded max");
        assert_eq!(growth.quantile(0.5), Some(303));
        assert_eq!(histogram.growth_since(&histogram).count(), 0);
        assert_eq!(histogram.growth_since(&histogram).quantile(0.999), None);
    }

    #[test]
    fn growth_after_a_restart_is_everything() {
        let mut restarted = LatencyHistogram::new();
        restarted.record(10);
        let mut earlier = LatencyHistogram::new();
        earlier.record_n(10, 5);
        earlier.record(1_000);
        assert_eq!(restarted.growth_since(&earlier), restarted);
    }

    #[test]
    fn growth_counts_shrunk_buckets_as_zero() {
        let mut earlier = LatencyHistogram::new();
        earlier.record_n(10, 5);
        let mut later = LatencyHistogram::new();
        later.record_n(1_000, 6);
        let growth = later.growth_since(&earlier);
        assert_eq!(growth.count(), 6);
        assert_eq!(growth.quantile(0.5), Some(1_000));
    }

    #[test]
    fn durations_round_up_to_whole_microseconds() {
        let mut histogram = LatencyHistogram::new();
        histogram.record_duration_micros(std::time::Duration::from_nanos(1_001));
        histogram.record_duration_micros(std::time::Duration::from_micros(7));
        histogram.record_duration_micros(std::time::Duration::ZERO);
        assert_eq!(histogram.max(), Some(7));
        assert_eq!(histogram.quantile(0.5), Some(2));
        assert_eq!(histogram.min(), Some(0));
    }

    #[test]
    fn lower_edges_bound_their_buckets() {
        for index in [0usize, 15, 16, 17, 31, 32, 500, BUCKETS - 1] {
            assert_eq!(bucket_index(bucket_lower_edge(index)), index);
            assert_eq!(bucket_index(bucket_upper_edge(index)), index);
        }
    }

    #[test]
    fn reset_empties_and_merge_adds() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record(10);
        b.record(1000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.max(), Some(1000));
        a.reset();
        assert_eq!(a.count(), 0);
        assert_eq!(a.min(), None);
    }
}
