//! The adaptive tuner of one shard: it samples the shard's work, calls the tuner every
//! `tuning.interval_ms`, and applies the batching knobs it returns.
//!
//! Proposal arrivals, AppendEntries sent, loop busy time and queue depth are recorded as
//! they happen. fdatasyncs, round trips and commit latencies come from histograms the
//! shard keeps anyway (the log's fdatasync latency, the transport's per-peer round trips,
//! the write stages' total), read as differences at the end of each interval.
//!
//! fdatasyncs and round trips set the election timeout floor, so they come from the
//! log-linear histograms the log and the transport keep for the tuner, whose buckets are
//! 1/16 of their value wide. Commit and read latencies come from the metrics' histograms,
//! whose buckets (1, 2, ..., 9 per decade) span up to twice their lower bound. Each
//! bucket's count is recorded at the bucket's upper bound, so no latency is ever below the
//! truth, which errs towards longer election timeouts.
//!
//! A batching decision sets the replication limits of every group's core on this shard
//! (followers keep them for when they lead) and the proposal linger of the loop. A timing
//! decision becomes the group timing that the shard proposes in the groups it leads: see
//! [`crate::tuning`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shardraft_raft::{GroupTiming, MessageBody, NodeId, ReplicationLimits};
use shardraft_tuning::{
    BatchingKnobs, Decision, LatencyHistogram, PhiAccrualDetector, SampleCollector, Tuner,
};

use crate::config::NodeConfig;
use crate::log::DiskLogStats;
use crate::metrics::{STAGE_BUCKET_BOUNDS_NANOS, STAGE_BUCKETS, StageHistogram};
use crate::transport::PeerTransportStats;
use crate::transport::wire::GroupMessage;
use crate::tuning::{PeerSuspicion, TuningReport, static_knobs, timing_in_ticks};

/// Observations per bucket of a [`StageHistogram`], the overflow bucket last.
type StageBuckets = [u64; STAGE_BUCKETS + 1];

/// The log's counters at the start of an interval.
#[derive(Clone, Debug, Default)]
struct LogMark {
    syncs: u64,
    entries: u64,
    bytes: u64,
    sync_latency_micros: LatencyHistogram,
}

/// The tuner of one shard with the samples of its current interval.
#[derive(Debug)]
pub(super) struct ShardTuning {
    tuner: Tuner,
    collector: SampleCollector,
    /// The instant that the collector's microsecond 0 stands for.
    origin: Instant,
    interval: Duration,
    next_interval_at: Instant,
    log_mark: LogMark,
    /// Each peer's round trips at the start of the interval.
    peer_marks: BTreeMap<NodeId, LatencyHistogram>,
    commit_mark: StageBuckets,
    /// The shard's read latency buckets at the end of the last interval.
    read_mark: StageBuckets,
    /// Limits on bytes in flight stay static: the tuner bounds memory through entries and
    /// bytes per message times messages in flight.
    inflight_bytes_max: u64,
    report: TuningReport,
    /// Heartbeat arrivals per peer, for an accrual failure detector of each leader.
    detectors: BTreeMap<NodeId, PhiAccrualDetector>,
    /// Each peer's suspicion delay in ticks, recomputed when its heartbeats arrive rather
    /// than for every group on every tick: the search behind it costs tens of
    /// microseconds.
    suspicion_ticks: BTreeMap<NodeId, Option<u32>>,
    phi_window: usize,
    phi_min_gaps: usize,
    phi_threshold: f64,
    tick_micros: u64,
    tick_interval_ms: u64,
    /// The timing the tuner chose for the groups this shard leads; `None` until it chose
    /// one, and the configured timing applies.
    group_timing: Option<GroupTiming>,
}

impl ShardTuning {
    /// Returns the shard's tuner, or `None` when tuning is off.
    pub fn new(config: &NodeConfig, now: Instant) -> Option<ShardTuning> {
        if !config.tuning.enabled {
            return None;
        }
        let knobs = static_knobs(config);
        let followers = config.members.len().saturating_sub(1);
        let tuner = match Tuner::new(config.tuning.clone(), knobs, followers) {
            Ok(tuner) => tuner,
            Err(error) => {
                // `NodeConfig::validate` builds the same tuner, so a node that started
                // cannot get here; keep the static settings if it does.
                tracing::error!(%error, "the tuner could not start; static settings apply");
                return None;
            }
        };
        let interval = Duration::from_millis(config.tuning.interval_ms.max(1));
        Some(ShardTuning {
            tuner,
            collector: SampleCollector::new(0),
            origin: now,
            interval,
            next_interval_at: now + interval,
            log_mark: LogMark::default(),
            peer_marks: BTreeMap::new(),
            commit_mark: [0; STAGE_BUCKETS + 1],
            read_mark: [0; STAGE_BUCKETS + 1],
            inflight_bytes_max: config.raft.max_inflight_bytes,
            detectors: BTreeMap::new(),
            suspicion_ticks: BTreeMap::new(),
            phi_window: config.tuning.phi_window,
            phi_min_gaps: config.tuning.phi_min_gaps,
            phi_threshold: config.tuning.phi_threshold,
            tick_micros: config.tick_interval_ms.saturating_mul(1_000).max(1),
            tick_interval_ms: config.tick_interval_ms,
            group_timing: None,
            report: TuningReport {
                intervals: 0,
                knobs,
                prediction: None,
                measured_p50_micros: 0,
                measured_p99_micros: 0,
                measured_commits_per_second: 0.0,
                batching_changes: 0,
                timing_decisions: 0,
                timing_proposals: 0,
                election_timeout_floor_micros: 0,
                stall_max_micros: 0,
                peers: Vec::new(),
            },
        })
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(u64::MAX)
    }

    /// Returns the largest number of proposals the loop keeps back during a linger. A full
    /// batch goes out at once.
    pub fn linger_batch_max(&self) -> usize {
        usize::try_from(self.tuner.current().batch_entries_max).unwrap_or(usize::MAX)
    }

    pub fn record_arrival(&mut self, at: Instant) {
        let micros = self.micros(at);
        self.collector.record_arrivals(1, micros);
    }

    /// Records one linearizable read taken by a group this shard leads.
    pub fn record_read(&mut self) {
        self.collector.record_reads(1);
    }

    /// Records that the loop handles a tick at `now`, and how much later than one tick
    /// interval after the previous tick that is.
    pub fn record_tick(&mut self, now: Instant) {
        let now_micros = self.micros(now);
        self.collector.record_tick(now_micros, self.tick_micros);
    }

    /// Records one turn of the loop: how long it was busy and how many events it handled.
    pub fn record_turn(&mut self, busy: Duration, events: usize) {
        let busy_micros = u64::try_from(busy.as_micros()).unwrap_or(u64::MAX);
        self.collector.record_busy(busy_micros);
        self.collector.record_queue_depth(events as u64);
    }

    /// Records the AppendEntries among `messages`.
    pub fn record_messages(&mut self, messages: &[GroupMessage]) {
        for GroupMessage { message, .. } in messages {
            if let MessageBody::AppendEntries { entries, .. } = &message.body
                && !entries.is_empty()
            {
                let bytes = entries.iter().map(|entry| entry.data.len() as u64).sum();
                self.collector.record_append(entries.len() as u64, bytes);
            }
        }
    }

    /// Records the heartbeats among `messages` from `from` in its failure detector.
    pub fn record_received(&mut self, from: NodeId, messages: &[GroupMessage], at: Instant) {
        let heartbeat = messages
            .iter()
            .any(|message| matches!(message.message.body, MessageBody::Heartbeat { .. }));
        if !heartbeat {
            return;
        }
        let micros = self.micros(at);
        let (window, min_gaps) = (self.phi_window, self.phi_min_gaps);
        let detector = self
            .detectors
            .entry(from)
            .or_insert_with(|| PhiAccrualDetector::new(window, min_gaps));
        detector.heartbeat(micros);
        let ticks = detector
            .suspicion_delay_micros(self.phi_threshold)
            .and_then(|delay_micros| u32::try_from(delay_micros.div_ceil(self.tick_micros)).ok());
        self.suspicion_ticks.insert(from, ticks);
    }

    /// Returns the ticks of silence after which the detector suspects `leader`, once it has
    /// seen enough of its heartbeats.
    pub fn suspicion_ticks(&self, leader: NodeId) -> Option<u32> {
        self.suspicion_ticks.get(&leader).copied().flatten()
    }

    /// Returns whether the failure detector suspects `peer` at `now`: its phi reached
    /// `tuning.phi_threshold`. `false` before the detector has seen enough heartbeats.
    pub fn suspects(&self, peer: NodeId, now: Instant) -> bool {
        let now_micros = self.micros(now);
        self.detectors
            .get(&peer)
            .is_some_and(|detector| detector.is_suspected(now_micros, self.phi_threshold))
    }

    /// Returns the timing the tuner chose for the groups this shard leads, once it chose one.
    pub fn group_timing(&self) -> Option<GroupTiming> {
        self.group_timing
    }

    /// Counts timing changes this shard appended as the leader of groups.
    pub fn count_timing_proposals(&mut self, count: u64) {
        self.report.timing_proposals += count;
    }

    pub fn interval_due(&self, now: Instant) -> bool {
        now >= self.next_interval_at
    }

    /// Ends the current interval: reads the histograms' growth, passes the samples to the
    /// tuner, and returns its decision.
    pub fn finish_interval(
        &mut self,
        now: Instant,
        log: Option<&DiskLogStats>,
        peers: &[PeerTransportStats],
        commits: &StageHistogram,
        reads: &StageHistogram,
    ) -> Decision {
        self.next_interval_at = now + self.interval;
        if let Some(log) = log {
            self.record_log_growth(log);
        }
        for peer in peers {
            // Heartbeat round trips, because an append's round trip also contains the
            // follower's fdatasync, which the fdatasync samples already count.
            let now = &peer.round_trip_micros;
            let growth = match self.peer_marks.get(&peer.peer) {
                Some(before) => now.growth_since(before),
                None => now.clone(),
            };
            self.collector.record_rtt_latencies(peer.peer.0, &growth);
            self.peer_marks.insert(peer.peer, now.clone());
        }
        let commit_counts = *commits.bucket_counts();
        for (bound_micros, count) in stage_bucket_growth(&commit_counts, &self.commit_mark) {
            self.collector.record_commits(bound_micros, count);
        }
        self.commit_mark = commit_counts;
        let read_counts = *reads.bucket_counts();
        for (bound_micros, count) in stage_bucket_growth(&read_counts, &self.read_mark) {
            self.collector.record_read_latencies(bound_micros, count);
        }
        self.read_mark = read_counts;

        let now_micros = self.micros(now);
        self.report.peers = self
            .detectors
            .iter()
            .map(|(peer, detector)| PeerSuspicion {
                peer: *peer,
                phi: detector.phi(now_micros),
                suspicion_delay_micros: detector.suspicion_delay_micros(self.phi_threshold),
            })
            .collect();
        let samples = self.collector.finish_interval(now_micros);
        // One JSON line per interval, so that a trace of a real run can be replayed into
        // the tuner offline.
        if tracing::enabled!(tracing::Level::DEBUG) {
            let json = serde_json::to_string(&samples).unwrap_or_default();
            tracing::debug!(samples = %json, "tuning interval");
        }
        let decision = self.tuner.observe(&samples);
        self.note_decision(&decision, &samples);
        decision
    }

    fn record_log_growth(&mut self, log: &DiskLogStats) {
        let now = LogMark {
            syncs: log.syncs,
            entries: log.entries,
            bytes: log.bytes,
            sync_latency_micros: log.sync_latency_micros.clone(),
        };
        let before = std::mem::replace(&mut self.log_mark, now);
        let now = &self.log_mark;
        if now.syncs == before.syncs {
            return;
        }
        let latencies = now
            .sync_latency_micros
            .growth_since(&before.sync_latency_micros);
        self.collector.record_fsync_latencies(
            &latencies,
            now.entries.saturating_sub(before.entries),
            now.bytes.saturating_sub(before.bytes),
        );
    }

    fn note_decision(&mut self, decision: &Decision, samples: &shardraft_tuning::IntervalSamples) {
        let report = &mut self.report;
        report.intervals += 1;
        report.knobs = *self.tuner.current();
        report.prediction = decision.prediction;
        report.measured_p50_micros = samples.commit_latency.p50_micros;
        report.measured_p99_micros = samples.commit_latency.p99_micros;
        report.measured_commits_per_second = samples.commit_rate_per_second;
        report.election_timeout_floor_micros = decision.election_timeout_floor_micros;
        report.stall_max_micros = samples.stall_max_micros;
        if decision.batching.is_some() {
            report.batching_changes += 1;
        }
        if decision.timing.is_some() {
            report.timing_decisions += 1;
        }

        for reason in &decision.reasons {
            tracing::info!(reason = %reason, "tuner changed a setting");
        }
        if let Some(timing) = &decision.timing {
            let ticks = timing_in_ticks(&timing.knobs, self.tick_interval_ms);
            tracing::info!(
                heartbeat_us = timing.knobs.heartbeat_interval_micros,
                election_timeout_min_us = timing.knobs.election_timeout_min_micros,
                election_timeout_max_us = timing.knobs.election_timeout_max_micros,
                forced = timing.forced,
                %ticks,
                "tuner chose a new group timing; the groups this shard leads propose it"
            );
            self.group_timing = Some(ticks);
        }
        if decision.floor_unsatisfiable {
            tracing::warn!(
                floor_us = decision.election_timeout_floor_micros,
                "the observed round trips and fdatasyncs need an election timeout above the \
                 tuner's bound; raise tuning.bounds.election_timeout_min_micros.max"
            );
        }
    }

    /// Returns the replication limits that `knobs` set.
    pub fn limits(&self, knobs: &BatchingKnobs) -> ReplicationLimits {
        ReplicationLimits {
            max_entries_per_message: usize::try_from(knobs.batch_entries_max).unwrap_or(usize::MAX),
            max_bytes_per_message: knobs.batch_bytes_max,
            max_inflight_messages: usize::try_from(knobs.inflight_appends_max)
                .unwrap_or(usize::MAX),
            max_inflight_bytes: self.inflight_bytes_max,
            read_batch_max: usize::try_from(knobs.read_batch_max).unwrap_or(usize::MAX),
        }
    }

    pub fn report(&self) -> TuningReport {
        self.report.clone()
    }
}

/// Returns `(bucket upper bound in microseconds, observations added)` for each bucket of a
/// [`StageHistogram`] that grew from `before` to `now`; the overflow bucket counts at twice
/// the last bound.
fn stage_bucket_growth<'a>(
    now: &'a [u64; STAGE_BUCKETS + 1],
    before: &'a [u64; STAGE_BUCKETS + 1],
) -> impl Iterator<Item = (u64, u64)> + 'a {
    now.iter()
        .zip(before)
        .enumerate()
        .filter_map(|(bucket, (now, before))| {
            let count = now.saturating_sub(*before);
            let bound_nanos = STAGE_BUCKET_BOUNDS_NANOS
                .get(bucket)
                .copied()
                .unwrap_or(STAGE_BUCKET_BOUNDS_NANOS[STAGE_BUCKETS - 1].saturating_mul(2));
            (count > 0).then_some((bound_nanos / 1_000, count))
        })
}

/// Proposals the loop holds back while a linger runs.
#[derive(Debug)]
pub(super) struct Lingering<P> {
    pub proposals: Vec<P>,
    /// Whether a timer task is due to end the current linger.
    pub timer_armed: bool,
}

impl<P> Default for Lingering<P> {
    fn default() -> Self {
        Lingering {
            proposals: Vec::new(),
            timer_armed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::config::MemberConfig;

    fn tuned_three_members() -> NodeConfig {
        let member = |id: u64, port: u16| MemberConfig {
            id,
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], port))],
        };
        let mut config = NodeConfig {
            members: vec![member(1, 7000), member(2, 7100), member(3, 7200)],
            ..NodeConfig::default()
        };
        config.tuning.enabled = true;
        config
    }

    fn peer(id: u64) -> PeerTransportStats {
        PeerTransportStats {
            peer: NodeId(id),
            connected: true,
            bytes_sent: 0,
            bytes_received: 0,
            round_trip: StageHistogram::default(),
            round_trip_micros: LatencyHistogram::new(),
            append_round_trip: StageHistogram::default(),
        }
    }

    /// Records `count` durations of `micros` in both histograms, as the log and the
    /// transport do.
    fn record(stage: &mut StageHistogram, fine: &mut LatencyHistogram, micros: u64, count: u64) {
        for _ in 0..count {
            stage.record(Duration::from_micros(micros));
            fine.record_duration_micros(Duration::from_micros(micros));
        }
    }

    #[test]
    fn floor_follows_each_interval_at_fine_resolution() {
        let config = tuned_three_members();
        let factor = config.tuning.safety_factor;
        let start = Instant::now();
        let Some(mut tuning) = ShardTuning::new(&config, start) else {
            panic!("tuning is enabled in the config");
        };
        let mut log = DiskLogStats::default();
        let mut peers = vec![peer(2), peer(3)];
        let (commits, reads) = (StageHistogram::default(), StageHistogram::default());

        // Two slow operations in 1,000 are the p99.9. In the metrics' buckets 11 and 12 ms
        // both read as 20 ms, which would put the floor at factor x 40 ms.
        record(
            &mut log.sync_latency,
            &mut log.sync_latency_micros,
            200,
            998,
        );
        record(
            &mut log.sync_latency,
            &mut log.sync_latency_micros,
            11_000,
            2,
        );
        log.syncs = 1_000;
        for follower in &mut peers {
            record(
                &mut follower.round_trip,
                &mut follower.round_trip_micros,
                100,
                998,
            );
            record(
                &mut follower.round_trip,
                &mut follower.round_trip_micros,
                12_000,
                2,
            );
        }
        let first = tuning.finish_interval(
            start + Duration::from_millis(100),
            Some(&log),
            &peers,
            &commits,
            &reads,
        );
        let expected = factor * 23_000.0;
        let floor = first.election_timeout_floor_micros as f64;
        assert!(
            (expected..=expected * 1.0625).contains(&floor),
            "floor {floor} us, expected {expected} us at factor {factor}"
        );

        // The next interval contains only what happened in it.
        record(
            &mut log.sync_latency,
            &mut log.sync_latency_micros,
            300,
            1_000,
        );
        log.syncs = 2_000;
        for follower in &mut peers {
            record(
                &mut follower.round_trip,
                &mut follower.round_trip_micros,
                150,
                1_000,
            );
        }
        let second = tuning.finish_interval(
            start + Duration::from_millis(200),
            Some(&log),
            &peers,
            &commits,
            &reads,
        );
        let expected = factor * 450.0;
        let floor = second.election_timeout_floor_micros as f64;
        assert!(
            (expected..=expected * 1.0625).contains(&floor),
            "floor {floor} us, expected {expected} us at factor {factor}"
        );
    }
}
