//! Proptest strategies for adversarial interval samples: zeros, huge values, non-finite
//! floats, inconsistent quantiles and empty intervals.
// Each test binary includes this file and uses only some of the strategies.
#![allow(dead_code)]

use proptest::prelude::*;
use shardraft_tuning::samples::{IntervalSamples, LatencySummary, PeerRtt};

pub fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1u64),
        0..10_000u64,
        0..100_000_000u64,
        Just(u64::MAX),
        any::<u64>(),
    ]
}

pub fn extreme_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(-1.0),
        0.0..1e7f64,
        Just(1e300),
        Just(f64::INFINITY),
        Just(f64::NAN),
        any::<f64>(),
    ]
}

pub fn summary() -> impl Strategy<Value = LatencySummary> {
    (
        extreme_u64(),
        extreme_u64(),
        extreme_u64(),
        extreme_u64(),
        extreme_u64(),
        extreme_f64(),
    )
        .prop_map(|(count, p50, p99, p999, max, mean)| LatencySummary {
            count,
            p50_micros: p50,
            p99_micros: p99,
            p999_micros: p999,
            max_micros: max,
            mean_micros: mean,
        })
}

pub fn samples() -> impl Strategy<Value = IntervalSamples> {
    let rates = (
        extreme_u64(),
        extreme_u64(),
        extreme_f64(),
        extreme_f64(),
        extreme_f64(),
        extreme_f64(),
    );
    let latencies = (
        summary(),
        summary(),
        proptest::collection::vec((extreme_u64(), summary()), 0..4),
        extreme_f64(),
        extreme_u64(),
        extreme_f64(),
    );
    let reads = (extreme_u64(), extreme_f64(), summary(), extreme_u64());
    (rates, latencies, reads).prop_map(
        |(
            (interval, count, arrival_rate, dispersion, commit_rate, busy),
            (fsync, commit, peers, queue, queue_max, bytes),
            (reads, read_rate, read_latency, stall),
        )| {
            IntervalSamples {
                interval_micros: interval,
                arrivals: count,
                arrival_rate_per_second: arrival_rate,
                arrival_dispersion: dispersion,
                appends: count,
                entries_per_append: bytes,
                bytes_per_append: bytes,
                fsyncs: fsync.count,
                entries_per_fsync: bytes,
                bytes_per_fsync: bytes,
                fsync_latency: fsync,
                peer_rtts: peers
                    .into_iter()
                    .map(|(peer_id, rtt)| PeerRtt { peer_id, rtt })
                    .collect(),
                rtt_samples_untracked: queue_max,
                queue_depth_mean: queue,
                queue_depth_max: queue_max,
                busy_fraction: busy,
                commits: commit.count,
                commit_rate_per_second: commit_rate,
                commit_latency: commit,
                reads,
                read_rate_per_second: read_rate,
                read_latency,
                stall_max_micros: stall,
            }
        },
    )
}

/// Returns samples with every field at its largest value.
pub fn saturated_samples() -> IntervalSamples {
    let huge = LatencySummary {
        count: u64::MAX,
        p50_micros: u64::MAX,
        p99_micros: u64::MAX,
        p999_micros: u64::MAX,
        max_micros: u64::MAX,
        mean_micros: f64::MAX,
    };
    IntervalSamples {
        interval_micros: u64::MAX,
        arrivals: u64::MAX,
        arrival_rate_per_second: f64::MAX,
        arrival_dispersion: f64::MAX,
        appends: u64::MAX,
        entries_per_append: f64::MAX,
        bytes_per_append: f64::MAX,
        fsyncs: u64::MAX,
        entries_per_fsync: f64::MAX,
        bytes_per_fsync: f64::MAX,
        fsync_latency: huge,
        peer_rtts: vec![PeerRtt {
            peer_id: 1,
            rtt: huge,
        }],
        rtt_samples_untracked: u64::MAX,
        queue_depth_mean: f64::MAX,
        queue_depth_max: u64::MAX,
        busy_fraction: f64::MAX,
        commits: u64::MAX,
        commit_rate_per_second: f64::MAX,
        commit_latency: huge,
        reads: u64::MAX,
        read_rate_per_second: f64::MAX,
        stall_max_micros: u64::MAX,
        read_latency: huge,
    }
}
