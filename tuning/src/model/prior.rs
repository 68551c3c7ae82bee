//! The analytic queueing prior: what an arm should do at a given load before any
//! measurement of that arm exists.
//!
//! The leader forms a batch, makes it durable with one fdatasync and replicates it. The
//! batch commits after one round `S = f + r`, where `f` is the fdatasync latency and `r`
//! the round-trip time to the quorum's slowest needed follower. Each follower's own
//! fdatasync is inside its round trip. With `K` AppendEntries in flight and a batch limit
//! `B`, the prior models:
//!
//! - **Batch size** `n = clamp(max(1 + λL, λS/K), 1, B)`: linger `L` collects `λL` more
//!   entries, and when every pipeline slot is busy, entries accumulate for `S/K`.
//! - **Utilisation** `ρ = max(λf/n, λS/(KB))`: fdatasyncs on one device run one at a time,
//!   so the device is busy `λf/n` of the time, and the pipeline saturates when even full
//!   batches cannot keep up.
//! - **Waiting**: the first entry of a batch waits `min(L, (B − 1)/λ)` for the batch to
//!   fill, an entry waits for a free slot with probability `min(1, λS/K)` for `S/K`, and
//!   the device queue adds Kingman's G/G/1 approximation
//!   `W = ρ/(1 − ρ) · (c_a² + c_s²)/2 · f`, with the arrival index of dispersion as `c_a²`
//!   (formula as given in <https://hossfeld.github.io/performance-modeling/chapter5_nonmarkovianSystems/ch5-6-KingmanApproximation.html>).
//! - **Latency**: p50 = half the fill and slot waits + `S` + 0.7 W, and p99 = the full
//!   waits + `S` × the observed fdatasync p99/p50 ratio + ln(100) W, treating the queueing
//!   delay's tail as exponential.
//! - **Capacity** `min(KB/S, B/f)` entries per microsecond.
//!
//! # Group commit
//!
//! Some logs batch by themselves: entries appended while one fdatasync runs join the next
//! one, whatever the AppendEntries batches were. Such a device never queues more than one
//! fdatasync, so the Kingman term above does not apply, and linger cannot lower the
//! device's load, only add its own wait. [`SystemEstimate::fsync_batch_ratio`] detects this
//! from the measured entries per fdatasync: when they exceed the batch size `n` above by
//! [`GROUP_COMMIT_RATIO`] or more, the prior switches to the group-commit form:
//!
//! - **Utilisation** `ρ = λS/(KB)`, the pipeline only.
//! - **Waiting**: the fill and slot waits as above, and Kingman's approximation on the
//!   pipeline with service time `S/K`. An entry also waits for the rest of the fdatasync
//!   in flight, which is busy with probability `β = min(1, λf)`: half of `f` on average,
//!   and up to the fdatasync tail.
//! - **Latency**: p50 = half the fill and slot waits + `S` + `βf/2` + 0.7 W, and p99 = the
//!   full waits + (`S` + `βf`) × the fdatasync p99/p50 ratio + ln(100) W.
//! - **Capacity** `KB/S`.
//!
//! At `ρ ≥` [`SATURATION_UTILISATION`] the queue grows without bound within an interval,
//! so latency is set to [`SATURATION_PENALTY`] × (S + L) × ρ, which ranks every saturated
//! arm behind every stable one. The prior is deliberately simple: per-byte fdatasync cost,
//! CPU cost and tail shape are left to the learned residuals in [`crate::model`].

use super::grid::ArmSetting;
use super::{Load, Prediction};

/// The utilisation from which an arm counts as saturated.
pub const SATURATION_UTILISATION: f64 = 0.98;

/// The latency multiplier for a saturated arm.
pub const SATURATION_PENALTY: f64 = 100.0;

/// The largest latency or rate the model produces, so that costs stay finite.
pub const VALUE_MAX: f64 = 1e15;

/// The squared coefficient of variation assumed for fdatasync service times.
const SERVICE_SCV: f64 = 0.5;

/// The measured entries per fdatasync over the prior's batch size from which the log
/// counts as batching by group commit.
pub const GROUP_COMMIT_RATIO: f64 = 2.0;

/// The system costs measured so far, smoothed across intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SystemEstimate {
    /// Median fdatasync latency.
    pub fsync_micros: f64,
    /// fdatasync p99 divided by p50, at least 1.
    pub fsync_tail_ratio: f64,
    /// Median round trip to the follower that completes a quorum.
    pub quorum_rtt_micros: f64,
    /// Measured entries per fdatasync divided by the prior's batch size for the arm in
    /// force; at least [`GROUP_COMMIT_RATIO`] means the log batches by group commit.
    pub fsync_batch_ratio: f64,
}

impl SystemEstimate {
    /// Returns whether the measurements show group commit.
    pub fn group_commit(&self) -> bool {
        self.fsync_batch_ratio >= GROUP_COMMIT_RATIO
    }
}

impl Default for SystemEstimate {
    /// Returns a guess for a local NVMe device and a LAN: used only before any sample.
    fn default() -> Self {
        Self {
            fsync_micros: 200.0,
            fsync_tail_ratio: 2.0,
            quorum_rtt_micros: 100.0,
            fsync_batch_ratio: 1.0,
        }
    }
}

fn finite_in(value: f64, low: f64, high: f64) -> f64 {
    if value.is_nan() {
        low
    } else {
        value.clamp(low, high)
    }
}

/// The inputs of one prediction, in entries and microseconds, made finite.
struct Inputs {
    /// Arrivals per microsecond.
    lambda: f64,
    dispersion: f64,
    linger: f64,
    batch_max: f64,
    inflight: f64,
    fsync: f64,
    round: f64,
    tail: f64,
}

impl Inputs {
    fn new(setting: ArmSetting, load: Load, system: &SystemEstimate) -> Self {
        let fsync = finite_in(system.fsync_micros, 1.0, VALUE_MAX);
        Self {
            lambda: finite_in(load.arrival_rate_per_second / 1e6, 0.0, VALUE_MAX),
            dispersion: finite_in(load.dispersion, 0.0, 1e6),
            linger: setting.linger_micros as f64,
            batch_max: (setting.batch_entries_max as f64).max(1.0),
            inflight: (setting.inflight_appends_max as f64).max(1.0),
            fsync,
            round: fsync + finite_in(system.quorum_rtt_micros, 0.0, VALUE_MAX),
            tail: finite_in(system.fsync_tail_ratio, 1.0, 20.0),
        }
    }

    fn batch(&self) -> f64 {
        (1.0 + self.lambda * self.linger)
            .max(self.lambda * self.round / self.inflight)
            .clamp(1.0, self.batch_max)
    }

    fn fill_wait(&self) -> f64 {
        if self.lambda > 0.0 {
            self.linger.min((self.batch_max - 1.0) / self.lambda)
        } else {
            self.linger
        }
    }

    fn slot_wait(&self) -> f64 {
        (self.lambda * self.round / self.inflight).min(1.0) * self.round / self.inflight
    }

    fn pipeline_utilisation(&self) -> f64 {
        self.lambda * self.round / (self.inflight * self.batch_max)
    }

    /// Returns Kingman's mean waiting time at `utilisation` for `service_micros`.
    fn queue_wait(&self, utilisation: f64, service_micros: f64) -> f64 {
        utilisation / (1.0 - utilisation) * (self.dispersion + SERVICE_SCV) / 2.0 * service_micros
    }
}

/// Returns the entries per AppendEntries batch that the prior expects for `setting` at
/// `load`, before any group commit.
pub fn batch_entries(setting: ArmSetting, load: Load, system: &SystemEstimate) -> f64 {
    Inputs::new(setting, load, system).batch()
}

/// Returns the prior prediction for `setting` at `load`.
pub fn predict(setting: ArmSetting, load: Load, system: &SystemEstimate) -> Prediction {
    let inputs = Inputs::new(setting, load, system);
    let lambda = inputs.lambda;
    let batch_max = inputs.batch_max;
    let round = inputs.round;
    let fsync = inputs.fsync;
    let group_commit = system.group_commit();

    let pipeline_utilisation = inputs.pipeline_utilisation();
    let utilisation = if group_commit {
        pipeline_utilisation
    } else {
        (lambda * fsync / inputs.batch()).max(pipeline_utilisation)
    };
    let pipeline_capacity = inputs.inflight * batch_max / round;
    let capacity = if group_commit {
        pipeline_capacity
    } else {
        pipeline_capacity.min(batch_max / fsync)
    };
    let capacity_per_second = finite_in(capacity * 1e6, 0.0, VALUE_MAX);
    let throughput_per_second =
        finite_in(load.arrival_rate_per_second, 0.0, VALUE_MAX).min(capacity_per_second);

    if utilisation >= SATURATION_UTILISATION {
        let latency = finite_in(
            SATURATION_PENALTY * (round + inputs.linger) * utilisation,
            1.0,
            VALUE_MAX,
        );
        return Prediction {
            p50_micros: latency,
            p99_micros: latency,
            throughput_per_second,
            capacity_per_second,
        };
    }

    let fill_wait = inputs.fill_wait();
    let slot_wait = inputs.slot_wait();
    let (p50, p99) = if group_commit {
        let queue_wait = inputs.queue_wait(utilisation, round / inputs.inflight);
        let sync_wait = (lambda * fsync).min(1.0) * fsync;
        let p50 = 0.5 * fill_wait + 0.5 * slot_wait + round + 0.5 * sync_wait + 0.7 * queue_wait;
        let p99 =
            fill_wait + slot_wait + (round + sync_wait) * inputs.tail + 100f64.ln() * queue_wait;
        (p50, p99)
    } else {
        let queue_wait = inputs.queue_wait(utilisation, fsync);
        let p50 = 0.5 * fill_wait + 0.5 * slot_wait + round + 0.7 * queue_wait;
        let p99 = fill_wait + slot_wait + round * inputs.tail + 100f64.ln() * queue_wait;
        (p50, p99)
    };
    Prediction {
        p50_micros: finite_in(p50, 1.0, VALUE_MAX),
        p99_micros: finite_in(p99, 1.0, VALUE_MAX),
        throughput_per_second,
        capacity_per_second,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(linger: u64, batch: u64, inflight: u64) -> ArmSetting {
        ArmSetting {
            linger_micros: linger,
            batch_entries_max: batch,
            inflight_appends_max: inflight,
        }
    }

    fn load(rate: f64) -> Load {
        Load {
            arrival_rate_per_second: rate,
            dispersion: 1.0,
        }
    }

    #[test]
    fn low_load_prefers_no_linger() {
        let system = SystemEstimate::default();
        let eager = predict(setting(0, 64, 4), load(1_000.0), &system);
        let lingering = predict(setting(400, 64, 4), load(1_000.0), &system);
        assert!(eager.p99_micros < lingering.p99_micros);
    }

    #[test]
    fn high_load_prefers_batching_over_deep_pipeline() {
        let system = SystemEstimate::default();
        let shallow = predict(setting(0, 256, 16), load(200_000.0), &system);
        let batched = predict(setting(400, 256, 4), load(200_000.0), &system);
        assert!(batched.p99_micros < shallow.p99_micros);
    }

    #[test]
    fn extreme_inputs_stay_finite() {
        let system = SystemEstimate {
            fsync_micros: f64::NAN,
            fsync_tail_ratio: f64::INFINITY,
            quorum_rtt_micros: -1.0,
            fsync_batch_ratio: f64::NAN,
        };
        let extreme = Load {
            arrival_rate_per_second: f64::INFINITY,
            dispersion: f64::NAN,
        };
        let prediction = predict(setting(u64::MAX, u64::MAX, u64::MAX), extreme, &system);
        assert!(prediction.p99_micros.is_finite());
        assert!(prediction.capacity_per_second.is_finite());
        let idle = predict(setting(0, 1, 1), load(0.0), &system);
        assert!(idle.p99_micros >= 1.0);
    }

    /// Returns the system of the embedded 64-client trace: fdatasync and round trip from
    /// the coarse histogram buckets, about 30 entries per fdatasync.
    fn group_commit_system() -> SystemEstimate {
        SystemEstimate {
            fsync_micros: 255.0,
            fsync_tail_ratio: 4.0,
            quorum_rtt_micros: 511.0,
            fsync_batch_ratio: 30.0,
        }
    }

    #[test]
    fn group_commit_keeps_eager_arm_stable() {
        let system = group_commit_system();
        let eager = predict(setting(0, 512, 64), load(60_000.0), &system);
        assert!(eager.p99_micros < 10_000.0, "{eager:?}");
        assert!(eager.capacity_per_second > 120_000.0, "{eager:?}");
    }

    #[test]
    fn group_commit_linger_only_adds_latency() {
        let system = group_commit_system();
        let eager = predict(setting(0, 512, 64), load(60_000.0), &system);
        for linger in [25, 50, 100, 400] {
            let lingering = predict(setting(linger, 512, 64), load(60_000.0), &system);
            assert!(lingering.p99_micros > eager.p99_micros, "linger {linger}");
            assert!(lingering.p50_micros > eager.p50_micros, "linger {linger}");
        }
    }

    #[test]
    fn without_group_commit_eager_arm_saturates() {
        let system = SystemEstimate {
            fsync_batch_ratio: 1.0,
            ..group_commit_system()
        };
        let eager = predict(setting(0, 512, 64), load(60_000.0), &system);
        let lingering = predict(setting(25, 512, 64), load(60_000.0), &system);
        assert!(!system.group_commit());
        assert!(eager.p99_micros > 100_000.0, "{eager:?}");
        assert!(lingering.p99_micros < eager.p99_micros);
    }
}
