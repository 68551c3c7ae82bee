//! Per-interval workload samples: [`SampleCollector`] is updated by the engine as events
//! happen, and [`SampleCollector::finish_interval`] turns it into an [`IntervalSamples`]
//! summary and resets it.
//!
//! Every `record_*` method costs O(1) and never allocates except when a new peer's
//! round-trip histogram is first created.
//!
//! # Burstiness
//!
//! Burstiness is the index of dispersion (variance / mean) of the proposal counts per
//! arrival slot of [`ARRIVAL_SLOT_MICROS`], over every slot of the interval including the
//! empty ones. A Poisson stream gives about 1, a perfectly regular stream gives about 0, and
//! bursty traffic gives values above 1. This measure was chosen over the coefficient of
//! variation of inter-arrival gaps because `record_arrivals` receives counts, not single
//! arrivals, and because per-slot counts need only three running sums. For a renewal
//! process the index of dispersion of counts over long slots approaches the squared
//! coefficient of variation of the gaps, which is what the queueing prior in
//! [`crate::model`] needs.
//!
//! # Peers
//!
//! Round-trip times are kept per peer for the first [`MAX_TRACKED_PEERS`] distinct peers
//! seen in an interval. Samples from further peers are counted in
//! [`IntervalSamples::rtt_samples_untracked`] and otherwise dropped.

use crate::histogram::LatencyHistogram;

/// The width of one arrival slot for the burstiness measure, in microseconds.
pub const ARRIVAL_SLOT_MICROS: u64 = 1_000;

/// The number of distinct peers whose round-trip times are kept per interval.
pub const MAX_TRACKED_PEERS: usize = 16;

/// Quantiles and moments of one latency distribution, in microseconds.
///
/// A summary with `count == 0` carries no data and all other fields are 0.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_micros: u64,
    pub p99_micros: u64,
    pub p999_micros: u64,
    pub max_micros: u64,
    pub mean_micros: f64,
}

impl LatencySummary {
    /// Summarises `histogram`; an empty histogram gives the empty summary.
    pub fn from_histogram(histogram: &LatencyHistogram) -> Self {
        Self {
            count: histogram.count(),
            p50_micros: histogram.quantile(0.5).unwrap_or(0),
            p99_micros: histogram.quantile(0.99).unwrap_or(0),
            p999_micros: histogram.quantile(0.999).unwrap_or(0),
            max_micros: histogram.max().unwrap_or(0),
            mean_micros: histogram.mean().unwrap_or(0.0),
        }
    }
}

/// The round-trip summary of one peer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerRtt {
    pub peer_id: u64,
    pub rtt: LatencySummary,
}

/// The summary of one tuning interval of one shard.
///
/// Rates are per second of the interval and are 0 when the interval is empty
/// (`interval_micros == 0`). The tuner accepts any values here, including inconsistent
/// ones, and treats non-finite or negative floats as 0.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct IntervalSamples {
    /// The length of the interval.
    pub interval_micros: u64,
    /// Proposals that arrived.
    pub arrivals: u64,
    pub arrival_rate_per_second: f64,
    /// The index of dispersion of arrivals per slot of [`ARRIVAL_SLOT_MICROS`].
    pub arrival_dispersion: f64,
    /// AppendEntries messages sent.
    pub appends: u64,
    pub entries_per_append: f64,
    pub bytes_per_append: f64,
    /// Completed fdatasync calls.
    pub fsyncs: u64,
    pub entries_per_fsync: f64,
    pub bytes_per_fsync: f64,
    pub fsync_latency: LatencySummary,
    /// Round-trip times of the tracked peers, in order of first sample.
    pub peer_rtts: Vec<PeerRtt>,
    /// Round-trip samples from peers beyond [`MAX_TRACKED_PEERS`], which were dropped.
    pub rtt_samples_untracked: u64,
    pub queue_depth_mean: f64,
    pub queue_depth_max: u64,
    /// Executor busy time divided by the interval length, capped at 1.
    pub busy_fraction: f64,
    /// Commits completed in the interval.
    pub commits: u64,
    pub commit_rate_per_second: f64,
    /// Latency from proposal to commit.
    pub commit_latency: LatencySummary,
    /// Linearizable reads that arrived at a leader of this shard. Absent in samples
    /// recorded before reads were counted, which then read as none.
    #[serde(default)]
    pub reads: u64,
    #[serde(default)]
    pub read_rate_per_second: f64,
    /// Latency from taking a linearizable read to serving it, for reads this shard
    /// served as a leader. Empty in samples recorded before read latency was sampled.
    #[serde(default)]
    pub read_latency: LatencySummary,
    /// The maximum time by which the shard's loop fell behind its tick timer: the largest
    /// gap between two ticks it handled, less the tick interval. While the loop stalls, a leader sends
    /// no heartbeat. 0 in samples recorded before stalls were measured.
    #[serde(default)]
    pub stall_max_micros: u64,
}

impl IntervalSamples {
    /// Returns the p99.9 round-trip time of the follower that decides whether the leader
    /// is lost for a quorum, or `None` when no peer reported one.
    ///
    /// With pre-votes and leader leases, a follower campaigns successfully only when a
    /// quorum of voters other than the leader all missed it for an election timeout. The
    /// leader steps down only when too few followers responded within one. Either needs
    /// more followers to fall behind than a group of `followers + 1` voters can spare
    /// (`followers / 2`). So the slowest `followers / 2` tails do not matter, and the next
    /// one does: with 2 followers, the faster.
    ///
    /// A follower that sent no heartbeat response in the interval has no tail and counts
    /// as one that fell behind, so it uses up one of the spared. When more peers report
    /// than `followers`, some are learners or voters added since, and the samples do not
    /// show which. The slowest tail then decides.
    pub fn rtt_p999_quorum_micros(&self, followers: u64) -> Option<u64> {
        let mut tails: Vec<u64> = self
            .peer_rtts
            .iter()
            .filter(|peer| peer.rtt.count > 0)
            .map(|peer| peer.rtt.p999_micros)
            .collect();
        tails.sort_unstable_by(|a, b| b.cmp(a));
        let reporting = tails.len() as u64;
        let spared = if reporting > followers {
            0
        } else {
            (followers / 2).saturating_sub(followers - reporting)
        };
        tails.get(usize::try_from(spared).ok()?).copied()
    }
}

/// Accumulates one shard's events for the current tuning interval.
#[derive(Debug, Clone)]
pub struct SampleCollector {
    interval_start_micros: u64,
    arrivals: u64,
    /// The arrival slot that `slot_arrivals` counts, relative to the interval start.
    current_slot: u64,
    slot_arrivals: u64,
    /// Closed slots and the running sums of their counts and squared counts.
    closed_slots: u64,
    slot_sum: f64,
    slot_square_sum: f64,
    appends: u64,
    append_entries: u64,
    append_bytes: u64,
    fsyncs: u64,
    fsync_entries: u64,
    fsync_bytes: u64,
    fsync_latency: LatencyHistogram,
    peers: Vec<(u64, LatencyHistogram)>,
    rtt_samples_untracked: u64,
    queue_observations: u64,
    queue_depth_sum: u128,
    queue_depth_max: u64,
    busy_micros: u64,
    commits: u64,
    commit_latency: LatencyHistogram,
    reads: u64,
    read_latency: LatencyHistogram,
    stall_max_micros: u64,
    /// When the loop handled its last tick. Unlike every other field it carries over into
    /// the next interval, since the first tick of an interval is late or not by the gap
    /// since the last tick of the one before.
    last_tick_micros: Option<u64>,
}

fn rate_per_second(count: u64, interval_micros: u64) -> f64 {
    if interval_micros == 0 {
        return 0.0;
    }
    count as f64 * 1e6 / interval_micros as f64
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        return 0.0;
    }
    numerator as f64 / denominator as f64
}

impl SampleCollector {
    /// Creates a collector whose first interval starts at `now_micros`.
    pub fn new(now_micros: u64) -> Self {
        Self {
            interval_start_micros: now_micros,
            arrivals: 0,
            current_slot: 0,
            slot_arrivals: 0,
            closed_slots: 0,
            slot_sum: 0.0,
            slot_square_sum: 0.0,
            appends: 0,
            append_entries: 0,
            append_bytes: 0,
            fsyncs: 0,
            fsync_entries: 0,
            fsync_bytes: 0,
            fsync_latency: LatencyHistogram::new(),
            peers: Vec::new(),
            rtt_samples_untracked: 0,
            queue_observations: 0,
            queue_depth_sum: 0,
            queue_depth_max: 0,
            busy_micros: 0,
            commits: 0,
            commit_latency: LatencyHistogram::new(),
            reads: 0,
            read_latency: LatencyHistogram::new(),
            stall_max_micros: 0,
            last_tick_micros: None,
        }
    }

    fn slot_of(&self, now_micros: u64) -> u64 {
        now_micros.saturating_sub(self.interval_start_micros) / ARRIVAL_SLOT_MICROS
    }

    /// Closes slots up to (not including) `slot`, counting skipped slots as empty.
    fn advance_slot(&mut self, slot: u64) {
        if slot <= self.current_slot {
            return;
        }
        let count = self.slot_arrivals as f64;
        self.slot_sum += count;
        self.slot_square_sum += count * count;
        // The skipped slots add zeros, which change only the slot count.
        self.closed_slots = self.closed_slots.saturating_add(slot - self.current_slot);
        self.current_slot = slot;
        self.slot_arrivals = 0;
    }

    /// Records `count` proposals arriving at `now_micros`.
    ///
    /// A time before the last recorded slot counts into the current slot, so a clock that
    /// steps back cannot corrupt the slot sums.
    pub fn record_arrivals(&mut self, count: u64, now_micros: u64) {
        let slot = self.slot_of(now_micros);
        self.advance_slot(slot);
        self.slot_arrivals = self.slot_arrivals.saturating_add(count);
        self.arrivals = self.arrivals.saturating_add(count);
    }

    /// Records one AppendEntries message sent with `entries` entries of `bytes` bytes.
    pub fn record_append(&mut self, entries: u64, bytes: u64) {
        self.appends = self.appends.saturating_add(1);
        self.append_entries = self.append_entries.saturating_add(entries);
        self.append_bytes = self.append_bytes.saturating_add(bytes);
    }

    /// Records one completed fdatasync that made `entries` entries of `bytes` bytes durable.
    pub fn record_fsync(&mut self, entries: u64, bytes: u64, latency_micros: u64) {
        self.fsyncs = self.fsyncs.saturating_add(1);
        self.fsync_entries = self.fsync_entries.saturating_add(entries);
        self.fsync_bytes = self.fsync_bytes.saturating_add(bytes);
        self.fsync_latency.record(latency_micros);
    }

    /// Records the fdatasyncs of `latencies` (microseconds), which made `entries` entries of
    /// `bytes` bytes durable together, for a caller that keeps its own histogram of them and
    /// passes the growth of each interval (see [`LatencyHistogram::growth_since`]).
    pub fn record_fsync_latencies(
        &mut self,
        latencies: &LatencyHistogram,
        entries: u64,
        bytes: u64,
    ) {
        self.fsyncs = self.fsyncs.saturating_add(latencies.count());
        self.fsync_entries = self.fsync_entries.saturating_add(entries);
        self.fsync_bytes = self.fsync_bytes.saturating_add(bytes);
        self.fsync_latency.merge(latencies);
    }

    /// Records one round trip to `peer_id` that took `rtt_micros`.
    pub fn record_rtt(&mut self, peer_id: u64, rtt_micros: u64) {
        self.record_rtts(peer_id, rtt_micros, 1);
    }

    /// Records `count` round trips to `peer_id` of `rtt_micros` each.
    pub fn record_rtts(&mut self, peer_id: u64, rtt_micros: u64, count: u64) {
        if count == 0 {
            return;
        }
        if let Some((_, histogram)) = self.peers.iter_mut().find(|(id, _)| *id == peer_id) {
            histogram.record_n(rtt_micros, count);
            return;
        }
        if self.peers.len() >= MAX_TRACKED_PEERS {
            self.rtt_samples_untracked = self.rtt_samples_untracked.saturating_add(count);
            return;
        }
        let mut histogram = LatencyHistogram::new();
        histogram.record_n(rtt_micros, count);
        self.peers.push((peer_id, histogram));
    }

    /// Records the round trips to `peer_id` in `latencies` (microseconds), as
    /// [`SampleCollector::record_fsync_latencies`] does for fdatasyncs.
    pub fn record_rtt_latencies(&mut self, peer_id: u64, latencies: &LatencyHistogram) {
        let count = latencies.count();
        if count == 0 {
            return;
        }
        if let Some((_, histogram)) = self.peers.iter_mut().find(|(id, _)| *id == peer_id) {
            histogram.merge(latencies);
            return;
        }
        if self.peers.len() >= MAX_TRACKED_PEERS {
            self.rtt_samples_untracked = self.rtt_samples_untracked.saturating_add(count);
            return;
        }
        self.peers.push((peer_id, latencies.clone()));
    }

    /// Records one observation of the proposal queue length.
    pub fn record_queue_depth(&mut self, depth: u64) {
        self.queue_observations = self.queue_observations.saturating_add(1);
        self.queue_depth_sum = self.queue_depth_sum.saturating_add(u128::from(depth));
        self.queue_depth_max = self.queue_depth_max.max(depth);
    }

    /// Adds `busy_micros` of executor busy time to the interval.
    pub fn record_busy(&mut self, busy_micros: u64) {
        self.busy_micros = self.busy_micros.saturating_add(busy_micros);
    }

    /// Records one commit that took `latency_micros` from proposal to commit.
    pub fn record_commit(&mut self, latency_micros: u64) {
        self.record_commits(latency_micros, 1);
    }

    /// Records `count` commits of `latency_micros` each.
    pub fn record_commits(&mut self, latency_micros: u64, count: u64) {
        self.commits = self.commits.saturating_add(count);
        self.commit_latency.record_n(latency_micros, count);
    }

    /// Records `count` linearizable reads arriving at a group this shard leads.
    pub fn record_reads(&mut self, count: u64) {
        self.reads = self.reads.saturating_add(count);
    }

    /// Records `count` linearizable reads served after `latency_micros` each.
    pub fn record_read_latencies(&mut self, latency_micros: u64, count: u64) {
        self.read_latency.record_n(latency_micros, count);
    }

    /// Records that the shard's loop handled a tick `late_micros` after it was due.
    pub fn record_stall(&mut self, late_micros: u64) {
        self.stall_max_micros = self.stall_max_micros.max(late_micros);
    }

    /// Records that the shard's loop handled a tick at `now_micros`, and counts as its stall
    /// the gap since the tick before, less `tick_period_micros`.
    ///
    /// The loop's timer requests one tick per period. A loop that handles a tick later
    /// than one period after the last one was descheduled, paused or busy for the
    /// difference, and a leader sends no heartbeat meanwhile. The first tick only sets the
    /// reference. A clock that steps back counts as no stall.
    pub fn record_tick(&mut self, now_micros: u64, tick_period_micros: u64) {
        if let Some(previous_micros) = self.last_tick_micros.replace(now_micros) {
            let gap_micros = now_micros.saturating_sub(previous_micros);
            self.record_stall(gap_micros.saturating_sub(tick_period_micros));
        }
    }

    /// Returns the summary of the interval that ends at `now_micros` and starts the next
    /// interval there.
    ///
    /// A `now_micros` before the interval start gives an empty interval of length 0.
    pub fn finish_interval(&mut self, now_micros: u64) -> IntervalSamples {
        let interval_micros = now_micros.saturating_sub(self.interval_start_micros);
        let summary = self.summarise(interval_micros);
        let last_tick_micros = self.last_tick_micros;
        // A clock that stepped back keeps the old start, so intervals never overlap.
        *self = Self::new(now_micros.max(self.interval_start_micros));
        self.last_tick_micros = last_tick_micros;
        summary
    }

    fn dispersion(&self, interval_micros: u64) -> f64 {
        // Count every slot of the interval: the open one and the empty ones after it.
        let total_slots = interval_micros.div_ceil(ARRIVAL_SLOT_MICROS).max(1);
        let open = self.slot_arrivals as f64;
        let sum = self.slot_sum + open;
        let square_sum = self.slot_square_sum + open * open;
        let slots = total_slots.max(self.closed_slots.saturating_add(1)) as f64;
        let mean = sum / slots;
        if mean <= 0.0 {
            return 0.0;
        }
        let variance = (square_sum / slots - mean * mean).max(0.0);
        let dispersion = variance / mean;
        if dispersion.is_finite() {
            dispersion
        } else {
            0.0
        }
    }

    fn summarise(&self, interval_micros: u64) -> IntervalSamples {
        let queue_depth_mean = if self.queue_observations == 0 {
            0.0
        } else {
            self.queue_depth_sum as f64 / self.queue_observations as f64
        };
        IntervalSamples {
            interval_micros,
            arrivals: self.arrivals,
            arrival_rate_per_second: rate_per_second(self.arrivals, interval_micros),
            arrival_dispersion: self.dispersion(interval_micros),
            appends: self.appends,
            entries_per_append: ratio(self.append_entries, self.appends),
            bytes_per_append: ratio(self.append_bytes, self.appends),
            fsyncs: self.fsyncs,
            entries_per_fsync: ratio(self.fsync_entries, self.fsyncs),
            bytes_per_fsync: ratio(self.fsync_bytes, self.fsyncs),
            fsync_latency: LatencySummary::from_histogram(&self.fsync_latency),
            peer_rtts: self
                .peers
                .iter()
                .map(|(peer_id, histogram)| PeerRtt {
                    peer_id: *peer_id,
                    rtt: LatencySummary::from_histogram(histogram),
                })
                .collect(),
            rtt_samples_untracked: self.rtt_samples_untracked,
            queue_depth_mean,
            queue_depth_max: self.queue_depth_max,
            busy_fraction: ratio(self.busy_micros, interval_micros).min(1.0),
            commits: self.commits,
            commit_rate_per_second: rate_per_second(self.commits, interval_micros),
            commit_latency: LatencySummary::from_histogram(&self.commit_latency),
            reads: self.reads,
            read_rate_per_second: rate_per_second(self.reads, interval_micros),
            read_latency: LatencySummary::from_histogram(&self.read_latency),
            stall_max_micros: self.stall_max_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_means_over_interval() {
        let mut collector = SampleCollector::new(1_000_000);
        collector.record_arrivals(500, 1_100_000);
        collector.record_arrivals(500, 1_600_000);
        collector.record_append(10, 4_000);
        collector.record_append(30, 12_000);
        collector.record_fsync(40, 16_000, 250);
        collector.record_queue_depth(2);
        collector.record_queue_depth(6);
        collector.record_busy(250_000);
        collector.record_reads(300);
        collector.record_read_latencies(400, 290);
        collector.record_stall(3_000);
        collector.record_stall(12_000);
        collector.record_stall(5_000);
        for _ in 0..100 {
            collector.record_commit(800);
        }
        let samples = collector.finish_interval(2_000_000);
        assert_eq!(samples.interval_micros, 1_000_000);
        assert_eq!(samples.arrival_rate_per_second, 1000.0);
        assert_eq!(samples.reads, 300);
        assert_eq!(samples.read_rate_per_second, 300.0);
        assert_eq!(samples.read_latency.count, 290);
        assert!(samples.read_latency.p99_micros >= 400);
        assert_eq!(samples.entries_per_append, 20.0);
        assert_eq!(samples.bytes_per_append, 8_000.0);
        assert_eq!(samples.entries_per_fsync, 40.0);
        assert_eq!(samples.queue_depth_mean, 4.0);
        assert_eq!(samples.queue_depth_max, 6);
        assert_eq!(samples.busy_fraction, 0.25);
        assert_eq!(samples.stall_max_micros, 12_000, "the maximum stall");
        assert_eq!(samples.commit_rate_per_second, 100.0);
        assert_eq!(samples.commit_latency.count, 100);
        assert!(samples.commit_latency.p99_micros >= 800);
    }

    #[test]
    fn finish_resets_for_next_interval() {
        let mut collector = SampleCollector::new(0);
        collector.record_arrivals(5, 10);
        collector.record_rtt(1, 100);
        collector.record_commit(10);
        let _ = collector.finish_interval(1_000);
        let samples = collector.finish_interval(2_000);
        assert_eq!(samples.interval_micros, 1_000);
        assert_eq!(samples.arrivals, 0);
        assert!(samples.peer_rtts.is_empty());
        assert_eq!(samples.commit_latency.count, 0);
    }

    #[test]
    fn tick_gaps_count_across_intervals() {
        let mut collector = SampleCollector::new(0);
        collector.record_tick(1_000, 1_000);
        collector.record_tick(2_000, 1_000);
        collector.record_tick(9_500, 1_000);
        let first = collector.finish_interval(10_000);
        assert_eq!(
            first.stall_max_micros, 6_500,
            "7.5 ms gap less the 1 ms period"
        );
        // The gap that spans the interval boundary belongs to the interval it ends in.
        collector.record_tick(14_000, 1_000);
        collector.record_tick(12_000, 1_000);
        let second = collector.finish_interval(20_000);
        assert_eq!(second.stall_max_micros, 3_500);
        let third = collector.finish_interval(30_000);
        assert_eq!(third.stall_max_micros, 0, "no tick, no stall");
    }

    #[test]
    fn histograms_add_like_single_samples() {
        let mut fsyncs = LatencyHistogram::new();
        let mut rtts = LatencyHistogram::new();
        let mut single = SampleCollector::new(0);
        for latency_micros in [150u64, 180, 12_345] {
            fsyncs.record(latency_micros);
            single.record_fsync(10, 4_096, latency_micros);
        }
        for rtt_micros in [90u64, 110, 17_000] {
            rtts.record(rtt_micros);
            single.record_rtt(7, rtt_micros);
        }
        let mut merged = SampleCollector::new(0);
        merged.record_fsync_latencies(&fsyncs, 30, 3 * 4_096);
        merged.record_rtt_latencies(7, &rtts);
        merged.record_rtt_latencies(8, &LatencyHistogram::new());
        assert_eq!(
            merged.finish_interval(1_000),
            single.finish_interval(1_000),
            "an empty histogram adds no peer"
        );
    }

    #[test]
    fn untracked_peer_histograms_are_counted() {
        let mut rtts = LatencyHistogram::new();
        rtts.record_n(100, 4);
        let mut collector = SampleCollector::new(0);
        for peer in 0..(MAX_TRACKED_PEERS as u64 + 2) {
            collector.record_rtt_latencies(peer, &rtts);
        }
        let samples = collector.finish_interval(1_000);
        assert_eq!(samples.peer_rtts.len(), MAX_TRACKED_PEERS);
        assert_eq!(samples.rtt_samples_untracked, 8);
    }

    #[test]
    fn regular_arrivals_have_low_dispersion() {
        let mut collector = SampleCollector::new(0);
        for slot in 0..1_000u64 {
            collector.record_arrivals(10, slot * ARRIVAL_SLOT_MICROS + 500);
        }
        let samples = collector.finish_interval(1_000 * ARRIVAL_SLOT_MICROS);
        assert!(
            samples.arrival_dispersion < 0.01,
            "{}",
            samples.arrival_dispersion
        );
    }

    #[test]
    fn bursty_arrivals_have_high_dispersion() {
        let mut collector = SampleCollector::new(0);
        // 10,000 proposals in ten bursts over 1,000 slots.
        for burst in 0..10u64 {
            collector.record_arrivals(1_000, burst * 100 * ARRIVAL_SLOT_MICROS);
        }
        let samples = collector.finish_interval(1_000 * ARRIVAL_SLOT_MICROS);
        assert!(
            samples.arrival_dispersion > 100.0,
            "{}",
            samples.arrival_dispersion
        );
        assert_eq!(samples.arrival_rate_per_second, 10_000.0);
    }

    #[test]
    fn peers_beyond_limit_are_counted() {
        let mut collector = SampleCollector::new(0);
        for peer in 0..(MAX_TRACKED_PEERS as u64 + 3) {
            collector.record_rtt(peer, 100 + peer);
        }
        collector.record_rtt(0, 5_000);
        let samples = collector.finish_interval(1_000);
        assert_eq!(samples.peer_rtts.len(), MAX_TRACKED_PEERS);
        assert_eq!(samples.rtt_samples_untracked, 3);
        assert_eq!(samples.rtt_p999_quorum_micros(0), Some(5_000));
    }

    #[test]
    fn quorum_rtt_skips_spared_followers() {
        let mut collector = SampleCollector::new(0);
        for (peer, rtt_micros) in [(1, 20_000), (2, 600), (3, 3_000), (4, 900)] {
            collector.record_rtt(peer, rtt_micros);
        }
        let samples = collector.finish_interval(1_000);
        // Tails, slowest first: 20 ms, 3 ms, 900 us, 600 us. Five voters spare two
        // followers. Seven spare three, and the two silent followers use up two of them.
        assert_eq!(samples.rtt_p999_quorum_micros(4), Some(900));
        assert_eq!(samples.rtt_p999_quorum_micros(6), Some(3_000));
        // More peers report than followers: the slowest decides.
        assert_eq!(samples.rtt_p999_quorum_micros(3), Some(20_000));
        assert_eq!(samples.rtt_p999_quorum_micros(0), Some(20_000));
        // As many silent followers as the group spares: the slowest reporting one decides.
        assert_eq!(samples.rtt_p999_quorum_micros(8), Some(20_000));
    }

    #[test]
    fn quorum_rtt_single_follower() {
        let mut collector = SampleCollector::new(0);
        collector.record_rtt(1, 7_000);
        let samples = collector.finish_interval(1_000);
        // The other follower is silent, so the leader depends on this one.
        assert_eq!(samples.rtt_p999_quorum_micros(2), Some(7_000));
        assert_eq!(samples.rtt_p999_quorum_micros(1), Some(7_000));
        let empty = SampleCollector::new(0).finish_interval(1_000);
        assert_eq!(empty.rtt_p999_quorum_micros(2), None);
    }

    #[test]
    fn extreme_inputs_stay_finite() {
        let mut collector = SampleCollector::new(u64::MAX - 5);
        collector.record_arrivals(u64::MAX, u64::MAX);
        collector.record_arrivals(u64::MAX, 0);
        collector.record_append(u64::MAX, u64::MAX);
        collector.record_fsync(u64::MAX, u64::MAX, u64::MAX);
        collector.record_queue_depth(u64::MAX);
        collector.record_busy(u64::MAX);
        collector.record_commit(u64::MAX);
        let samples = collector.finish_interval(u64::MAX);
        assert!(samples.arrival_rate_per_second.is_finite());
        assert!(samples.arrival_dispersion.is_finite());
        assert!(samples.busy_fraction <= 1.0);
        let empty = collector.finish_interval(0);
        assert_eq!(empty.interval_micros, 0);
        assert_eq!(empty.arrival_rate_per_second, 0.0);
    }
}
