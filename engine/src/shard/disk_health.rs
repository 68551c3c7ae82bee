//! Moving leadership away from a slow disk ([`DiskTransferConfig`]).
//!
//! Once per window, a shard that leads some group compares its own fdatasync latency with
//! each follower's disk latency and hands its groups to the best follower when its own is
//! far worse. A slow leader disk delays every write of its groups, but the leader keeps
//! sending heartbeats, so followers never time it out on their own.
//!
//! The figures come from histograms the shard keeps anyway, read as differences from the
//! previous window: the log's sync latencies (`DiskLogStats::sync_latency`) and the
//! transport's per-peer round trips. A follower answers an append only once the entries
//! are durable and a heartbeat at once, so its disk latency is estimated as the p99 of its
//! append round trip minus the median of its heartbeat round trip. Both are sampled one
//! probe at a time and include both loops' delays. A histogram bucket is also up to twice
//! as wide as its lower bound (1, 2, ..., 9 per decade), so only a large ratio means
//! anything, and the default is 4.

use std::collections::BTreeMap;

use shardraft_raft::{NodeId, Role};

use super::Shard;
use crate::config::DiskTransferConfig;
use crate::log::Log;
use crate::metrics::{STAGE_BUCKET_BOUNDS_NANOS, STAGE_BUCKETS, StageHistogram};
use crate::state_machine::StateMachine;
use crate::transport::PeerTransportStats;

/// Observations per bucket of a [`StageHistogram`], the overflow bucket last.
pub(super) type BucketCounts = [u64; STAGE_BUCKETS + 1];

/// The latency counted for the overflow bucket (above 10 s), in microseconds.
const OVERFLOW_MICROS: u64 = 20_000_000;

/// The smallest follower estimate used, so that a follower whose append and heartbeat
/// round trips fall into one bucket is not taken as infinitely fast.
const FOLLOWER_FLOOR_MICROS: u64 = 50;

fn bucket_counts(histogram: &StageHistogram) -> BucketCounts {
    *histogram.bucket_counts()
}

fn since(now: &BucketCounts, before: &BucketCounts) -> BucketCounts {
    let mut delta = [0; STAGE_BUCKETS + 1];
    for (bucket, (now, before)) in delta.iter_mut().zip(now.iter().zip(before)) {
        *bucket = now.saturating_sub(*before);
    }
    delta
}

/// The upper bound, in microseconds, of the bucket that holds the `quantile` of
/// `counts`; `None` without observations.
fn quantile_micros(counts: &BucketCounts, quantile: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * quantile).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(
                STAGE_BUCKET_BOUNDS_NANOS
                    .get(bucket)
                    .map_or(OVERFLOW_MICROS, |bound_nanos| bound_nanos / 1_000),
            );
        }
    }
    Some(OVERFLOW_MICROS)
}

/// One window's samples of a follower.
pub(super) struct FollowerWindow {
    pub peer: NodeId,
    pub append_round_trip: BucketCounts,
    pub heartbeat_round_trip: BucketCounts,
}

/// The follower to hand leadership to, with the figures that chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    pub target: NodeId,
    pub own_p99_micros: u64,
    pub target_estimate_micros: u64,
}

/// Decides whether this window's own fdatasync latencies are slow enough, against the
/// best follower among `followers`, to hand leadership to it.
pub(super) fn choose_target(
    own_sync: &BucketCounts,
    followers: &[FollowerWindow],
    config: &DiskTransferConfig,
) -> Option<Verdict> {
    let enough = |counts: &BucketCounts| counts.iter().sum::<u64>() >= config.samples_min;
    if !enough(own_sync) {
        return None;
    }
    let own_p99_micros = quantile_micros(own_sync, 0.99)?;
    let (target, target_estimate_micros) = followers
        .iter()
        .filter(|follower| {
            enough(&follower.append_round_trip) && enough(&follower.heartbeat_round_trip)
        })
        .filter_map(|follower| {
            let append = quantile_micros(&follower.append_round_trip, 0.99)?;
            let heartbeat = quantile_micros(&follower.heartbeat_round_trip, 0.5)?;
            let estimate = append.saturating_sub(heartbeat).max(FOLLOWER_FLOOR_MICROS);
            Some((follower.peer, estimate))
        })
        .min_by_key(|(_, estimate)| *estimate)?;
    let threshold = target_estimate_micros.saturating_mul(u64::from(config.ratio_percent)) / 100;
    (own_p99_micros > threshold).then_some(Verdict {
        target,
        own_p99_micros,
        target_estimate_micros,
    })
}

/// The histograms as they were at the start of the current window.
pub(super) struct DiskHealth {
    window_started_tick: u64,
    own_sync: BucketCounts,
    peers: BTreeMap<NodeId, (BucketCounts, BucketCounts)>,
    /// Groups this shard handed to a follower because of its own slow disk.
    pub transfers: u64,
}

impl Default for DiskHealth {
    fn default() -> Self {
        DiskHealth {
            window_started_tick: 0,
            own_sync: [0; STAGE_BUCKETS + 1],
            peers: BTreeMap::new(),
            transfers: 0,
        }
    }
}

impl<S> Shard<S>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    /// Ends the current window when it is over and hands leadership away if the window
    /// shows this shard's disk far slower than a follower's; called on every tick.
    pub(super) fn check_disk_health(&mut self) {
        let config = &self.config.disk_transfer;
        if !config.enabled {
            return;
        }
        let window_ticks = (config.window_ms / self.config.tick_interval_ms.max(1)).max(1);
        if self.tick < self.disk_health.window_started_tick + window_ticks {
            return;
        }
        let Log::Disk(log) = &self.log else {
            return;
        };
        let own_now = bucket_counts(&log.stats().sync_latency);
        let health = &mut self.disk_health;
        let own_sync = since(&own_now, &health.own_sync);
        health.own_sync = own_now;
        health.window_started_tick = self.tick;
        let mut followers = Vec::new();
        for PeerTransportStats {
            peer,
            round_trip,
            append_round_trip,
            ..
        } in self.transport.peer_stats()
        {
            let now = (
                bucket_counts(&append_round_trip),
                bucket_counts(&round_trip),
            );
            let before = health
                .peers
                .insert(peer, now)
                .unwrap_or(([0; STAGE_BUCKETS + 1], [0; STAGE_BUCKETS + 1]));
            followers.push(FollowerWindow {
                peer,
                append_round_trip: since(&now.0, &before.0),
                heartbeat_round_trip: since(&now.1, &before.1),
            });
        }
        let leading = self
            .replicas
            .values()
            .any(|replica| replica.core.role() == Role::Leader);
        if !leading {
            return;
        }
        let Some(verdict) = choose_target(&own_sync, &followers, config) else {
            return;
        };
        tracing::info!(
            own_fdatasync_p99_us = verdict.own_p99_micros,
            target = verdict.target.0,
            target_disk_estimate_us = verdict.target_estimate_micros,
            ratio_percent = config.ratio_percent,
            window_ms = config.window_ms,
            "this shard's fdatasync is far slower than a follower's; handing leadership over"
        );
        for (group, replica) in self.replicas.iter_mut() {
            let core = &mut replica.core;
            if core.role() != Role::Leader || !core.membership().voters.contains(&verdict.target) {
                continue;
            }
            let _entered = replica.span.enter();
            match core.transfer_leadership(verdict.target) {
                Ok(()) => self.disk_health.transfers += 1,
                Err(error) => tracing::info!(%group, %error, "leadership transfer not started"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn samples(latency: Duration, count: u64) -> BucketCounts {
        let mut histogram = StageHistogram::default();
        for _ in 0..count {
            histogram.record(latency);
        }
        bucket_counts(&histogram)
    }

    fn follower(peer: u64, append: Duration, heartbeat: Duration) -> FollowerWindow {
        FollowerWindow {
            peer: NodeId(peer),
            append_round_trip: samples(append, 200),
            heartbeat_round_trip: samples(heartbeat, 200),
        }
    }

    fn config() -> DiskTransferConfig {
        DiskTransferConfig {
            enabled: true,
            ..DiskTransferConfig::default()
        }
    }

    #[test]
    fn slow_leader_disk_picks_fastest_follower() {
        let own = samples(Duration::from_millis(40), 200);
        let followers = [
            follower(2, Duration::from_millis(3), Duration::from_micros(200)),
            follower(3, Duration::from_millis(8), Duration::from_micros(200)),
        ];

        let verdict = choose_target(&own, &followers, &config()).expect("a transfer");

        assert_eq!(verdict.target, NodeId(2));
        assert_eq!(verdict.own_p99_micros, 40_000);
        assert_eq!(verdict.target_estimate_micros, 2_800);
    }

    #[test]
    fn similar_disks_keep_the_leader() {
        let own = samples(Duration::from_millis(4), 200);
        let followers = [follower(
            2,
            Duration::from_millis(3),
            Duration::from_micros(200),
        )];

        assert_eq!(choose_target(&own, &followers, &config()), None);
    }

    #[test]
    fn too_few_samples_decide_nothing() {
        let own = samples(Duration::from_millis(40), 99);
        let followers = [follower(
            2,
            Duration::from_millis(1),
            Duration::from_micros(100),
        )];
        assert_eq!(choose_target(&own, &followers, &config()), None);

        let own = samples(Duration::from_millis(40), 200);
        let quiet = FollowerWindow {
            peer: NodeId(2),
            append_round_trip: samples(Duration::from_millis(1), 10),
            heartbeat_round_trip: samples(Duration::from_micros(100), 200),
        };
        assert_eq!(choose_target(&own, &[quiet], &config()), None);
    }

    #[test]
    fn quantiles_take_the_bucket_bound() {
        let mut counts = samples(Duration::from_micros(80), 98);
        let slow = samples(Duration::from_secs(30), 2);
        for (bucket, extra) in counts.iter_mut().zip(slow) {
            *bucket += extra;
        }
        assert_eq!(quantile_micros(&counts, 0.5), Some(80));
        assert_eq!(quantile_micros(&counts, 0.99), Some(OVERFLOW_MICROS));
        assert_eq!(quantile_micros(&[0; STAGE_BUCKETS + 1], 0.99), None);
    }
}
