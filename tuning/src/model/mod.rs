//! The online model that predicts p50 and p99 commit latency and throughput for candidate
//! batching settings.
//!
//! # Choice of model
//!
//! The search space is a bounded grid of arms ([`grid`]): linger × entries per batch ×
//! AppendEntries in flight. A regression over the raw knobs would need to capture sharp
//! regime changes (a pipeline that suddenly saturates the fdatasync device), so the model
//! instead combines an analytic queueing prior ([`prior`]) with learned multiplicative
//! corrections:
//!
//! - **Context.** Statistics are kept per context: the load level as the base-2 logarithm
//!   bucket of the arrival rate, and whether the arrivals are bursty (index of dispersion
//!   above [`BURSTY_DISPERSION`]). The best arm differs by load, and a context keeps data
//!   from one load level from polluting another.
//! - **Residuals.** Per (context, arm) the model keeps the mean and variance of
//!   `ln(observed / prior)` for p50 and p99, and for capacity when the interval showed it,
//!   with counts capped at [`COUNT_MAX`] so the statistics decay exponentially and follow
//!   slow drift. Working on the log scale makes the errors of the prior multiplicative,
//!   which fits latencies spanning orders of magnitude.
//! - **Arms never tried** use the prior corrected by the residual of the current arm in
//!   the same context, since neighbouring arms usually share the prior's bias.
//! - **Exploration** is upper-confidence-bound style ("optimism in the face of
//!   uncertainty", as described in <http://banditalgs.com/2016/09/18/the-upper-confidence-bound-algorithm/>):
//!   the optimistic prediction shifts the log residual by [`EXPLORATION_WEIGHT`] × σ /
//!   √(n + 1), so rarely tried arms look better until measured. The tuner only ever
//!   compares the current arm with its grid neighbours, so exploration moves one step at a
//!   time and never leaves the bounds.
//! - **Regime change.** [`Model::forget`] caps every count at 1 when the change-point
//!   detector fires, so the next few intervals outweigh the old regime. When the measured
//!   entries per fdatasync switch the prior to or from its group-commit form
//!   ([`prior`]), the model drops every residual, because they were learned against the
//!   other form.

pub mod grid;
pub mod objective;
pub mod prior;

use grid::{Arm, ArmGrid};
use prior::{SystemEstimate, VALUE_MAX};
use std::collections::BTreeMap;

/// The index of dispersion above which arrivals count as bursty.
pub const BURSTY_DISPERSION: f64 = 4.0;

/// The cap on the effective sample count of one statistic, which makes it an exponentially
/// weighted average with weight 1 / `COUNT_MAX` once full.
pub const COUNT_MAX: f64 = 20.0;

/// The prior's pseudo-count when shrinking an arm's residual toward its baseline.
const PRIOR_COUNT: f64 = 1.0;

/// The assumed standard deviation of a log residual before measurements.
const PRIOR_STD_DEV: f64 = 0.1;

/// The weight of the uncertainty bonus.
pub const EXPLORATION_WEIGHT: f64 = 1.0;

/// The most (context, arm) statistics kept; the least recently updated is dropped first.
pub const STATS_MAX: usize = 4_096;

/// The smoothing weight of a new interval in [`SystemEstimate`].
const SYSTEM_WEIGHT: f64 = 0.3;

/// The largest log residual kept, so a wild sample cannot push predictions to infinity.
const RESIDUAL_MAX: f64 = 20.0;

/// The predicted or measured behaviour of one setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    pub p50_micros: f64,
    pub p99_micros: f64,
    /// Commits per second at the current arrival rate.
    pub throughput_per_second: f64,
    /// Commits per second the setting could sustain.
    pub capacity_per_second: f64,
}

/// The offered load of one interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    pub arrival_rate_per_second: f64,
    pub dispersion: f64,
}

/// The context statistics are kept under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Context {
    /// `floor(log2(1 + arrival rate per second))`.
    pub rate_bucket: u8,
    pub bursty: bool,
}

impl Context {
    /// Returns the context of `load`.
    pub fn of(load: Load) -> Self {
        let rate = if load.arrival_rate_per_second.is_finite() {
            load.arrival_rate_per_second.max(0.0)
        } else {
            0.0
        };
        let bucket = (rate + 1.0).log2().floor().clamp(0.0, 255.0) as u8;
        Self {
            rate_bucket: bucket,
            bursty: load.dispersion.is_finite() && load.dispersion > BURSTY_DISPERSION,
        }
    }
}

/// A mean and variance with a capped count.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Moments {
    count: f64,
    mean: f64,
    variance: f64,
}

impl Moments {
    fn update(&mut self, value: f64) {
        self.count = (self.count + 1.0).min(COUNT_MAX);
        let weight = 1.0 / self.count;
        let delta = value - self.mean;
        self.mean += weight * delta;
        self.variance = (1.0 - weight) * (self.variance + weight * delta * delta);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct ArmStats {
    p50: Moments,
    p99: Moments,
    capacity: Moments,
    last_update: u64,
}

/// A prediction together with its optimistic counterpart for exploration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: Prediction,
    pub optimistic: Prediction,
    /// Intervals of data behind this arm in this context, after decay.
    pub samples: f64,
}

/// The residual model over the arm grid.
#[derive(Debug, Clone)]
pub struct Model {
    stats: BTreeMap<(Context, Arm), ArmStats>,
    system: SystemEstimate,
    updates: u64,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

fn log_ratio(observed: f64, predicted: f64) -> f64 {
    let ratio = (observed.max(1e-9) / predicted.max(1e-9)).ln();
    if ratio.is_finite() {
        ratio.clamp(-RESIDUAL_MAX, RESIDUAL_MAX)
    } else {
        0.0
    }
}

fn smooth(old: f64, new: f64) -> f64 {
    old + SYSTEM_WEIGHT * (new - old)
}

/// Combines an arm's residual moments with the baseline residual of the current arm.
fn shrink(moments: Option<&Moments>, baseline: f64) -> (f64, f64) {
    let prior_variance = PRIOR_STD_DEV * PRIOR_STD_DEV;
    match moments {
        Some(m) if m.count > 0.0 => {
            let total = PRIOR_COUNT + m.count;
            let mean = (PRIOR_COUNT * baseline + m.count * m.mean) / total;
            let variance = (PRIOR_COUNT * prior_variance + m.count * m.variance) / total;
            (mean, EXPLORATION_WEIGHT * variance.sqrt() / total.sqrt())
        }
        _ => (
            baseline,
            EXPLORATION_WEIGHT * PRIOR_STD_DEV / PRIOR_COUNT.sqrt(),
        ),
    }
}

fn scaled(value: f64, log_factor: f64) -> f64 {
    let result = value * log_factor.exp();
    if result.is_nan() {
        VALUE_MAX
    } else {
        result.clamp(0.0, VALUE_MAX)
    }
}

impl Model {
    /// Creates a model with no data and the default system estimate.
    pub fn new() -> Self {
        Self {
            stats: BTreeMap::new(),
            system: SystemEstimate::default(),
            updates: 0,
        }
    }

    /// Returns the smoothed system costs.
    pub fn system(&self) -> &SystemEstimate {
        &self.system
    }

    /// Folds one interval's fdatasync and round-trip measurements into the system estimate.
    /// `quorum_rtt_micros` is `None` when no peer reported a round trip.
    pub fn update_system(
        &mut self,
        fsync_p50_micros: Option<f64>,
        fsync_p99_micros: Option<f64>,
        quorum_rtt_micros: Option<f64>,
    ) {
        if let Some(p50) = fsync_p50_micros.filter(|v| v.is_finite() && *v > 0.0) {
            let p50 = p50.min(VALUE_MAX);
            self.system.fsync_micros = smooth(self.system.fsync_micros, p50);
            if let Some(p99) = fsync_p99_micros.filter(|v| v.is_finite()) {
                let tail = (p99 / p50).clamp(1.0, 20.0);
                self.system.fsync_tail_ratio = smooth(self.system.fsync_tail_ratio, tail);
            }
        }
        if let Some(rtt) = quorum_rtt_micros.filter(|v| v.is_finite() && *v >= 0.0) {
            self.system.quorum_rtt_micros =
                smooth(self.system.quorum_rtt_micros, rtt.min(VALUE_MAX));
        }
    }

    /// Folds the measured entries per fdatasync of `arm` at `load` into the group-commit
    /// detection of the system estimate ([`SystemEstimate::fsync_batch_ratio`]).
    ///
    /// When the detection flips, the prior changes form and the residuals learned against
    /// the old form no longer apply, so every statistic is dropped.
    pub fn update_fsync_batch(
        &mut self,
        grid: &ArmGrid,
        arm: Arm,
        load: Load,
        entries_per_fsync: f64,
    ) {
        if !entries_per_fsync.is_finite() || entries_per_fsync <= 0.0 {
            return;
        }
        let expected = prior::batch_entries(grid.setting(arm), load, &self.system);
        let ratio = (entries_per_fsync / expected.max(1.0)).clamp(0.0, 1e6);
        let before = self.system.group_commit();
        self.system.fsync_batch_ratio = smooth(self.system.fsync_batch_ratio, ratio);
        if self.system.group_commit() != before {
            self.stats.clear();
        }
    }

    /// Records the measured behaviour of `arm` in `context`.
    ///
    /// `capacity_observed` is true when the interval showed the arm's capacity: the commit
    /// rate fell short of the arrival rate. Otherwise the capacity residual only moves up
    /// when the measured throughput exceeds the current capacity estimate.
    pub fn record(
        &mut self,
        grid: &ArmGrid,
        context: Context,
        arm: Arm,
        load: Load,
        measured: &Prediction,
        capacity_observed: bool,
    ) {
        self.updates = self.updates.saturating_add(1);
        let prior = prior::predict(grid.setting(arm), load, &self.system);
        let updates = self.updates;
        if !self.stats.contains_key(&(context, arm)) && self.stats.len() >= STATS_MAX {
            let oldest = self
                .stats
                .iter()
                .min_by_key(|(_, stats)| stats.last_update)
                .map(|(key, _)| *key);
            if let Some(key) = oldest {
                self.stats.remove(&key);
            }
        }
        let stats = self.stats.entry((context, arm)).or_default();
        stats.last_update = updates;
        stats
            .p50
            .update(log_ratio(measured.p50_micros, prior.p50_micros));
        stats
            .p99
            .update(log_ratio(measured.p99_micros, prior.p99_micros));
        let capacity_residual =
            log_ratio(measured.throughput_per_second, prior.capacity_per_second);
        let estimated = stats.capacity.mean;
        if capacity_observed || (stats.capacity.count > 0.0 && capacity_residual > estimated) {
            stats.capacity.update(capacity_residual);
        }
    }

    /// Returns the uncorrected prior prediction for `arm` at `load`.
    pub fn prior(&self, grid: &ArmGrid, arm: Arm, load: Load) -> Prediction {
        prior::predict(grid.setting(arm), load, &self.system)
    }

    /// Returns the prediction for `arm` at `load` in `context`, with `current` as the arm
    /// whose residual transfers to untried arms.
    pub fn estimate(
        &self,
        grid: &ArmGrid,
        context: Context,
        arm: Arm,
        current: Arm,
        load: Load,
    ) -> Estimate {
        let prior = prior::predict(grid.setting(arm), load, &self.system);
        let own = self.stats.get(&(context, arm));
        let base = self.stats.get(&(context, current));
        let baseline = |select: fn(&ArmStats) -> &Moments| {
            base.map(select)
                .filter(|m| m.count > 0.0)
                .map_or(0.0, |m| m.mean)
        };
        let (p50_shift, _) = shrink(own.map(|s| &s.p50), baseline(|s| &s.p50));
        let (p99_shift, p99_bonus) = shrink(own.map(|s| &s.p99), baseline(|s| &s.p99));
        let (capacity_shift, capacity_bonus) =
            shrink(own.map(|s| &s.capacity), baseline(|s| &s.capacity));

        let capacity = scaled(prior.capacity_per_second, capacity_shift);
        let rate = load.arrival_rate_per_second.clamp(0.0, VALUE_MAX);
        let mean = Prediction {
            p50_micros: scaled(prior.p50_micros, p50_shift).max(1.0),
            p99_micros: scaled(prior.p99_micros, p99_shift).max(1.0),
            throughput_per_second: rate.min(capacity),
            capacity_per_second: capacity,
        };
        let optimistic_capacity = scaled(capacity, capacity_bonus);
        let optimistic = Prediction {
            p50_micros: mean.p50_micros,
            p99_micros: scaled(mean.p99_micros, -p99_bonus).max(1.0),
            throughput_per_second: rate.min(optimistic_capacity),
            capacity_per_second: optimistic_capacity,
        };
        Estimate {
            mean,
            optimistic,
            samples: own.map_or(0.0, |s| s.p99.count),
        }
    }

    /// Caps every count at 1 so that the next intervals outweigh the old regime.
    pub fn forget(&mut self) {
        for stats in self.stats.values_mut() {
            for moments in [&mut stats.p50, &mut stats.p99, &mut stats.capacity] {
                moments.count = moments.count.min(1.0);
            }
        }
    }

    /// Returns the number of (context, arm) statistics held.
    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// Returns whether the model contains no statistics.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::knobs::{KnobBounds, Knobs};

    fn load(rate: f64) -> Load {
        Load {
            arrival_rate_per_second: rate,
            dispersion: 1.0,
        }
    }

    #[test]
    fn measurements_pull_prediction_to_observation() {
        let grid = ArmGrid::new(&KnobBounds::default(), 2, &Knobs::default());
        let arm = grid.nearest(&Knobs::default());
        let context = Context::of(load(10_000.0));
        let mut model = Model::new();
        let before = model.estimate(&grid, context, arm, arm, load(10_000.0));
        let observed = Prediction {
            p50_micros: before.mean.p50_micros * 3.0,
            p99_micros: before.mean.p99_micros * 3.0,
            throughput_per_second: 10_000.0,
            capacity_per_second: 0.0,
        };
        for _ in 0..30 {
            model.record(&grid, context, arm, load(10_000.0), &observed, false);
        }
        let after = model.estimate(&grid, context, arm, arm, load(10_000.0));
        let ratio = after.mean.p99_micros / observed.p99_micros;
        assert!((ratio - 1.0).abs() < 0.1, "ratio {ratio}");
        assert!(after.optimistic.p99_micros <= after.mean.p99_micros);
        assert!(after.samples >= COUNT_MAX - 1e-9);
    }

    #[test]
    fn forget_caps_counts() {
        let grid = ArmGrid::new(&KnobBounds::default(), 2, &Knobs::default());
        let arm = grid.nearest(&Knobs::default());
        let context = Context::of(load(10_000.0));
        let mut model = Model::new();
        let observed = Prediction {
            p50_micros: 100.0,
            p99_micros: 200.0,
            throughput_per_second: 10_000.0,
            capacity_per_second: 0.0,
        };
        for _ in 0..10 {
            model.record(&grid, context, arm, load(10_000.0), &observed, false);
        }
        model.forget();
        let estimate = model.estimate(&grid, context, arm, arm, load(10_000.0));
        assert_eq!(estimate.samples, 1.0);
    }

    #[test]
    fn context_buckets_by_rate() {
        assert_eq!(Context::of(load(0.0)).rate_bucket, 0);
        assert_eq!(Context::of(load(1_023.0)).rate_bucket, 10);
        assert_eq!(Context::of(load(f64::INFINITY)).rate_bucket, 0);
        assert!(
            Context::of(Load {
                arrival_rate_per_second: 5.0,
                dispersion: 10.0
            })
            .bursty
        );
    }
}
