//! A synthetic shard for tests: a seeded queueing model that turns knobs and an offered load
//! into [`IntervalSamples`] with noise.
//!
//! This is a test model, not a description of shardraft's real performance. It exists so
//! that the tuner's tests can check convergence and adaptation against a known ground
//! truth ([`SyntheticSystem::expected`]). It follows the same physics as the tuner's prior
//! (batches amortise fdatasync, one fdatasync at a time per device, a bounded pipeline) but
//! adds effects the prior omits, so the tuner must learn them from samples:
//!
//! - fdatasync time grows with the bytes synced (`fsync_micros_per_byte`);
//! - the leader spends CPU per entry and per batch, which adds to every round and can be
//!   the bottleneck;
//! - the latency tail is wider than the fdatasync tail alone suggests.
//!
//! With the defaults, the best setting differs by load. At 2k proposals per second, no
//! linger wins on p99. At 200k per second, a pipeline of 8 or 16 without linger saturates
//! the fdatasync device, so linger wins because each fdatasync covers more entries.
//!
//! # Group commit
//!
//! With [`SyntheticParams::group_commit`], the shard batches by itself, like shardraft's
//! log: entries appended while one fdatasync runs join the next one, and the leader sends
//! each such write as one AppendEntries. Batches then grow with the load without linger, the
//! device never queues more than one fdatasync, and linger only adds its own wait.
//! [`SyntheticParams::engine_like`] shapes this case after a 3-node embedded cluster on a
//! 2-core machine at about 60k proposals per second.

use crate::histogram::LatencyHistogram;
use crate::knobs::Knobs;
use crate::rng::SplitMix64;
use crate::samples::{IntervalSamples, LatencySummary, PeerRtt};

/// The fixed costs of the synthetic shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticParams {
    pub fsync_base_micros: f64,
    pub fsync_micros_per_byte: f64,
    pub entry_bytes: f64,
    pub rtt_micros: f64,
    pub cpu_micros_per_entry: f64,
    pub cpu_micros_per_batch: f64,
    /// The standard deviation of the per-interval log noise on latencies.
    pub noise: f64,
    pub peers: u64,
    pub interval_micros: u64,
    /// Whether entries appended during one fdatasync join the next one.
    pub group_commit: bool,
}

impl SyntheticParams {
    /// Returns a group-commit shard with costs like those of the embedded 64-client trace
    /// in the tuner's tests: fdatasync about 250 µs, round trips about 500 µs, about 180
    /// bytes per entry, and noisy intervals. These are test values, not measurements.
    pub fn engine_like() -> Self {
        Self {
            fsync_base_micros: 250.0,
            fsync_micros_per_byte: 0.002,
            entry_bytes: 180.0,
            rtt_micros: 500.0,
            cpu_micros_per_entry: 1.0,
            cpu_micros_per_batch: 10.0,
            noise: 0.1,
            group_commit: true,
            ..Self::default()
        }
    }
}

impl Default for SyntheticParams {
    fn default() -> Self {
        Self {
            fsync_base_micros: 200.0,
            fsync_micros_per_byte: 0.002,
            entry_bytes: 256.0,
            rtt_micros: 100.0,
            cpu_micros_per_entry: 0.5,
            cpu_micros_per_batch: 5.0,
            noise: 0.05,
            peers: 2,
            interval_micros: 1_000_000,
            group_commit: false,
        }
    }
}

/// The offered load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyntheticLoad {
    pub arrival_rate_per_second: f64,
    /// The index of dispersion of arrivals: 1 is Poisson, larger is burstier.
    pub dispersion: f64,
}

impl SyntheticLoad {
    /// Returns a Poisson load at `rate` proposals per second.
    pub fn poisson(rate: f64) -> Self {
        Self {
            arrival_rate_per_second: rate,
            dispersion: 1.0,
        }
    }
}

/// The noise-free behaviour of one setting at one load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expected {
    pub p50_micros: f64,
    pub p99_micros: f64,
    pub throughput_per_second: f64,
    pub capacity_per_second: f64,
    /// Mean entries per AppendEntries batch.
    pub batch_entries: f64,
    /// Mean entries per fdatasync: the batch, or more with group commit.
    pub fsync_entries: f64,
    pub fsync_micros: f64,
    pub utilisation: f64,
    pub saturated: bool,
}

/// The utilisation from which the synthetic shard's queue grows without bound.
const SATURATION: f64 = 0.97;

/// A seeded synthetic shard.
#[derive(Debug, Clone)]
pub struct SyntheticSystem {
    params: SyntheticParams,
    rng: SplitMix64,
}

impl SyntheticSystem {
    /// Creates a shard with `params` whose noise is fixed by `seed`.
    pub fn new(params: SyntheticParams, seed: u64) -> Self {
        Self {
            params,
            rng: SplitMix64::new(seed),
        }
    }

    /// Returns the parameters.
    pub fn params(&self) -> &SyntheticParams {
        &self.params
    }

    fn fsync_micros(&self, batch: f64) -> f64 {
        self.params.fsync_base_micros
            + self.params.fsync_micros_per_byte * batch * self.params.entry_bytes
    }

    fn cpu_micros(&self, batch: f64) -> f64 {
        self.params.cpu_micros_per_entry * batch + self.params.cpu_micros_per_batch
    }

    fn round_micros(&self, batch: f64) -> f64 {
        self.params.rtt_micros + self.fsync_micros(batch) + self.cpu_micros(batch)
    }

    /// Returns the noise-free behaviour of `knobs` at `load`.
    pub fn expected(&self, knobs: &Knobs, load: SyntheticLoad) -> Expected {
        if self.params.group_commit {
            return self.expected_group_commit(knobs, load);
        }
        let lambda = load.arrival_rate_per_second.max(0.0) / 1e6;
        let linger = knobs.linger_micros as f64;
        let batch_max = (knobs.batch_entries_max as f64).max(1.0);
        let inflight = (knobs.inflight_appends_max as f64).max(1.0);

        // Solve n = clamp(max(1 + λL, λR(n)/K), 1, B) by fixed-point iteration.
        let mut batch = 1.0;
        for _ in 0..50 {
            batch = (1.0 + lambda * linger)
                .max(lambda * self.round_micros(batch) / inflight)
                .clamp(1.0, batch_max);
        }
        let fsync = self.fsync_micros(batch);
        let round = self.round_micros(batch);
        let device = lambda * fsync / batch;
        let cpu =
            lambda * (self.params.cpu_micros_per_entry + self.params.cpu_micros_per_batch / batch);
        let pipeline = lambda * self.round_micros(batch_max) / (inflight * batch_max);
        let utilisation = device.max(cpu).max(pipeline);
        let capacity = (inflight * batch_max / self.round_micros(batch_max))
            .min(batch_max / self.fsync_micros(batch_max))
            .min(
                1.0 / (self.params.cpu_micros_per_entry
                    + self.params.cpu_micros_per_batch / batch_max),
            )
            * 1e6;

        if utilisation >= SATURATION {
            return Expected {
                p50_micros: 50_000.0 * utilisation,
                p99_micros: 100_000.0 * utilisation,
                throughput_per_second: capacity.min(load.arrival_rate_per_second),
                capacity_per_second: capacity,
                batch_entries: batch,
                fsync_entries: batch,
                fsync_micros: fsync,
                utilisation,
                saturated: true,
            };
        }
        let fill_wait = if lambda > 0.0 {
            linger.min((batch_max - 1.0) / lambda)
        } else {
            linger
        };
        let slot_wait = (lambda * round / inflight).min(1.0) * round / inflight;
        let service = if device >= cpu && device >= pipeline {
            fsync
        } else if cpu >= pipeline {
            self.cpu_micros(batch)
        } else {
            round / inflight
        };
        let queue_wait =
            utilisation / (1.0 - utilisation) * (load.dispersion + 0.3) / 2.0 * service;
        Expected {
            p50_micros: 0.5 * fill_wait + 0.5 * slot_wait + round + 0.7 * queue_wait,
            p99_micros: fill_wait + slot_wait + 1.8 * round + 4.6 * queue_wait,
            throughput_per_second: load.arrival_rate_per_second,
            capacity_per_second: capacity,
            batch_entries: batch,
            fsync_entries: batch,
            fsync_micros: fsync,
            utilisation,
            saturated: false,
        }
    }

    /// Returns the noise-free behaviour of `knobs` at `load` with group commit.
    fn expected_group_commit(&self, knobs: &Knobs, load: SyntheticLoad) -> Expected {
        let lambda = load.arrival_rate_per_second.max(0.0) / 1e6;
        let linger = knobs.linger_micros as f64;
        let batch_max = (knobs.batch_entries_max as f64).max(1.0);
        let inflight = (knobs.inflight_appends_max as f64).max(1.0);

        // An fdatasync covers the lingered entries or those that arrived during the last
        // one, and each such write goes out as one AppendEntries of at most B entries.
        let mut synced = 1.0;
        let mut batch = 1.0;
        for _ in 0..50 {
            synced = (1.0 + lambda * linger)
                .max(lambda * self.fsync_micros(synced))
                .clamp(1.0, 1e9);
            let round = self.params.rtt_micros + self.fsync_micros(synced) + self.cpu_micros(batch);
            batch = (lambda * round / inflight)
                .max(synced)
                .clamp(1.0, batch_max);
        }
        let fsync = self.fsync_micros(synced);
        let round = self.params.rtt_micros + fsync + self.cpu_micros(batch);
        let device = (lambda * fsync / synced).min(1.0);
        let cpu =
            lambda * (self.params.cpu_micros_per_entry + self.params.cpu_micros_per_batch / batch);
        let pipeline = lambda * round / (inflight * batch_max);
        let growth = lambda * self.params.fsync_micros_per_byte * self.params.entry_bytes;
        let utilisation = cpu.max(pipeline).max(growth);
        let capacity = (inflight * batch_max / round)
            .min(
                1.0 / (self.params.cpu_micros_per_entry
                    + self.params.cpu_micros_per_batch / batch_max),
            )
            .min(1.0 / (self.params.fsync_micros_per_byte * self.params.entry_bytes))
            * 1e6;
        if utilisation >= SATURATION {
            return Expected {
                p50_micros: 50_000.0 * utilisation,
                p99_micros: 100_000.0 * utilisation,
                throughput_per_second: capacity.min(load.arrival_rate_per_second),
                capacity_per_second: capacity,
                batch_entries: batch,
                fsync_entries: synced,
                fsync_micros: fsync,
                utilisation,
                saturated: true,
            };
        }
        let fill_wait = linger;
        let slot_wait = (lambda * round / inflight).min(1.0) * round / inflight;
        let service = if cpu >= pipeline {
            self.cpu_micros(batch)
        } else {
            round / inflight
        };
        let queue_wait =
            utilisation / (1.0 - utilisation) * (load.dispersion + 0.3) / 2.0 * service;
        // An entry first waits for the rest of the fdatasync in flight.
        let sync_wait = device * fsync;
        Expected {
            p50_micros: 0.5 * fill_wait
                + 0.5 * slot_wait
                + round
                + 0.5 * sync_wait
                + 0.7 * queue_wait,
            p99_micros: fill_wait + slot_wait + 1.8 * (round + sync_wait) + 4.6 * queue_wait,
            throughput_per_second: load.arrival_rate_per_second,
            capacity_per_second: capacity,
            batch_entries: batch,
            fsync_entries: synced,
            fsync_micros: fsync,
            utilisation: utilisation.max(device),
            saturated: false,
        }
    }

    fn lognormal_summary(&mut self, median: f64, sigma: f64, total: u64) -> LatencySummary {
        const DRAWS: u64 = 400;
        let mut histogram = LatencyHistogram::new();
        if total == 0 {
            return LatencySummary::default();
        }
        let weight = (total / DRAWS).max(1);
        for _ in 0..DRAWS.min(total) {
            let value = median * (sigma * self.rng.next_normal()).exp();
            histogram.record_n(value.max(1.0) as u64, weight);
        }
        LatencySummary::from_histogram(&histogram)
    }

    /// Returns one noisy interval of `knobs` at `load`.
    pub fn interval(&mut self, knobs: &Knobs, load: SyntheticLoad) -> IntervalSamples {
        let truth = self.expected(knobs, load);
        let seconds = self.params.interval_micros as f64 / 1e6;
        let mean_arrivals = load.arrival_rate_per_second.max(0.0) * seconds;
        let spread = (mean_arrivals * load.dispersion.max(0.0)).sqrt();
        let arrivals = (mean_arrivals + spread * self.rng.next_normal()).max(0.0);
        let commits = truth.throughput_per_second.min(arrivals / seconds) * seconds;
        let commits = commits.max(0.0) as u64;

        let noise = self.params.noise;
        let p50 = truth.p50_micros * (noise * self.rng.next_normal()).exp();
        let p99 = truth.p99_micros * (noise * self.rng.next_normal()).exp();
        // A log-normal with this median and p99: z(0.99) ≈ 2.326.
        let sigma = ((p99 / p50).max(1.0)).ln() / 2.326;
        let commit_latency = self.lognormal_summary(p50, sigma, commits);

        let fsyncs = (commits as f64 / truth.fsync_entries).ceil() as u64;
        let appends = (commits as f64 / truth.batch_entries).ceil() as u64;
        let fsync_latency = self.lognormal_summary(truth.fsync_micros, 0.2, fsyncs);
        let peer_rtts = (0..self.params.peers)
            .map(|peer_id| PeerRtt {
                peer_id,
                rtt: self.lognormal_summary(self.params.rtt_micros, 0.15, fsyncs.min(1_000)),
            })
            .collect();
        let queue_depth_mean =
            load.arrival_rate_per_second / 1e6 * (truth.p50_micros - truth.fsync_micros).max(0.0);
        IntervalSamples {
            interval_micros: self.params.interval_micros,
            arrivals: arrivals as u64,
            arrival_rate_per_second: arrivals / seconds,
            arrival_dispersion: load.dispersion * (0.1 * self.rng.next_normal()).exp(),
            appends: appends.saturating_mul(self.params.peers),
            entries_per_append: truth.batch_entries,
            bytes_per_append: truth.batch_entries * self.params.entry_bytes,
            fsyncs,
            entries_per_fsync: truth.fsync_entries,
            bytes_per_fsync: truth.fsync_entries * self.params.entry_bytes,
            fsync_latency,
            peer_rtts,
            rtt_samples_untracked: 0,
            queue_depth_mean,
            queue_depth_max: (queue_depth_mean * 3.0) as u64,
            busy_fraction: truth.utilisation.min(1.0),
            commits,
            commit_rate_per_second: commits as f64 / seconds,
            commit_latency,
            // The synthetic system serves writes only; the read policy has tests of its own.
            reads: 0,
            read_rate_per_second: 0.0,
            read_latency: LatencySummary::default(),
            // The synthetic loop never stalls; tests of the stall floor set stalls themselves.
            stall_max_micros: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(linger: u64, batch: u64, inflight: u64) -> Knobs {
        Knobs {
            linger_micros: linger,
            batch_entries_max: batch,
            inflight_appends_max: inflight,
            ..Knobs::default()
        }
    }

    #[test]
    fn low_load_prefers_no_linger() {
        let system = SyntheticSystem::new(SyntheticParams::default(), 1);
        let load = SyntheticLoad::poisson(2_000.0);
        let eager = system.expected(&knobs(0, 64, 4), load);
        let lingering = system.expected(&knobs(400, 64, 4), load);
        assert!(eager.p99_micros < lingering.p99_micros);
    }

    #[test]
    fn high_load_needs_linger_with_deep_pipeline() {
        let system = SyntheticSystem::new(SyntheticParams::default(), 1);
        let load = SyntheticLoad::poisson(200_000.0);
        let deep = system.expected(&knobs(0, 256, 16), load);
        let lingering = system.expected(&knobs(800, 256, 4), load);
        assert!(deep.saturated);
        assert!(!lingering.saturated);
    }

    #[test]
    fn group_commit_linger_only_adds_latency() {
        let system = SyntheticSystem::new(SyntheticParams::engine_like(), 1);
        let load = SyntheticLoad {
            arrival_rate_per_second: 60_000.0,
            dispersion: 15.0,
        };
        let eager = system.expected(&knobs(0, 512, 64), load);
        assert!(!eager.saturated);
        assert!(eager.fsync_entries > 10.0, "{eager:?}");
        for linger in [25, 50, 100, 400, 1_600] {
            let lingering = system.expected(&knobs(linger, 512, 64), load);
            assert!(lingering.p99_micros > eager.p99_micros, "linger {linger}");
        }
    }

    #[test]
    fn interval_reports_the_load() {
        let mut system = SyntheticSystem::new(SyntheticParams::default(), 9);
        let samples = system.interval(&Knobs::default(), SyntheticLoad::poisson(10_000.0));
        let rate = samples.arrival_rate_per_second;
        assert!((9_000.0..11_000.0).contains(&rate), "{rate}");
        assert!(samples.commit_latency.count > 0);
        assert_eq!(samples.peer_rtts.len(), 2);
    }
}
