//! The tuner against the synthetic shard at a stationary load: it must settle on a setting
//! whose true p99 is close to the best arm of the grid, and stay there.

mod common;

use common::*;
use shardraft_tuning::config::ObjectiveKind;
use shardraft_tuning::knobs::KnobBounds;
use shardraft_tuning::synthetic::{SyntheticLoad, SyntheticParams, SyntheticSystem};
use shardraft_tuning::{Tuner, TuningConfig};

/// Intervals after which the tuner must be close to the best arm.
const SETTLE_INTERVALS: usize = 60;
/// Intervals it must then stay close for.
const HOLD_INTERVALS: usize = 40;
/// How far above the best arm's true p99 the chosen arm may be.
const P99_MARGIN: f64 = 1.15;

fn worst_ratio_after_settling(rate: f64, seed: u64) -> f64 {
    let config = latency_config(seed);
    let mut tuner = new_tuner(config.clone());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), seed);
    let load = SyntheticLoad::poisson(rate);
    let best = best_p99_micros(&system, &config, load);
    let mut worst: f64 = 0.0;
    for interval in 0..SETTLE_INTERVALS + HOLD_INTERVALS {
        let samples = system.interval(tuner.current(), load);
        let _ = tuner.observe(&samples);
        if interval >= SETTLE_INTERVALS {
            let truth = system.expected(tuner.current(), load).p99_micros;
            worst = worst.max(truth / best);
        }
    }
    worst
}

#[test]
fn converges_at_low_load() {
    for seed in [1, 2] {
        let ratio = worst_ratio_after_settling(2_000.0, seed);
        assert!(ratio <= P99_MARGIN, "seed {seed}: p99 {ratio:.2} × best");
    }
}

#[test]
fn converges_at_medium_load() {
    for seed in [1, 2] {
        let ratio = worst_ratio_after_settling(20_000.0, seed);
        assert!(ratio <= P99_MARGIN, "seed {seed}: p99 {ratio:.2} × best");
    }
}

#[test]
fn converges_at_high_load() {
    for seed in [1, 2] {
        let ratio = worst_ratio_after_settling(200_000.0, seed);
        assert!(ratio <= P99_MARGIN, "seed {seed}: p99 {ratio:.2} × best");
    }
}

#[test]
fn best_setting_differs_by_load() {
    let config = latency_config(1);
    let mut low = new_tuner(config.clone());
    let mut high = new_tuner(config);
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 1);
    for _ in 0..80 {
        let samples = system.interval(low.current(), SyntheticLoad::poisson(2_000.0));
        let _ = low.observe(&samples);
        let samples = system.interval(high.current(), SyntheticLoad::poisson(200_000.0));
        let _ = high.observe(&samples);
    }
    // At high load the tuner must linger to amortise fdatasync; at low load lingering
    // only adds latency, so it stays at a small value.
    assert!(high.current().linger_micros >= 400, "{:?}", high.current());
    assert!(low.current().linger_micros <= 100, "{:?}", low.current());
}

#[test]
fn throughput_objective_finds_capacity() {
    // 2M proposals per second exceeds every arm's capacity, so the commit rate shows it.
    let config = TuningConfig {
        objective: ObjectiveKind::Throughput,
        ..latency_config(3)
    };
    let mut tuner = new_tuner(config.clone());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 3);
    let load = SyntheticLoad::poisson(2_000_000.0);
    let best = best_capacity_per_second(&system, &config, load);
    let start = system.expected(tuner.current(), load).capacity_per_second;
    for _ in 0..100 {
        let samples = system.interval(tuner.current(), load);
        let _ = tuner.observe(&samples);
    }
    let reached = system.expected(tuner.current(), load).capacity_per_second;
    assert!(
        reached >= 0.85 * best,
        "capacity {reached:.0} of best {best:.0}, start {start:.0}"
    );
}

/// Intervals after which the group-commit case must be within [`GROUP_COMMIT_P99_MARGIN`].
const GROUP_COMMIT_SETTLE_INTERVALS: usize = 20;
const GROUP_COMMIT_P99_MARGIN: f64 = 1.1;

/// Runs the tuner from the engine's static knobs on the engine-like group-commit shard.
/// Returns the largest linger it set and, after settling, the worst ratio of the true p99
/// to the best arm's p99.
fn group_commit_run(config: &TuningConfig, seed: u64) -> (u64, f64) {
    let base = engine_knobs();
    let mut tuner = match Tuner::new(config.clone(), base, PEERS) {
        Ok(tuner) => tuner,
        Err(error) => panic!("tuner rejected the engine's knobs: {error}"),
    };
    let mut system = SyntheticSystem::new(SyntheticParams::engine_like(), seed);
    // Closed-loop clients arrive in bursts, as in the embedded trace.
    let load = SyntheticLoad {
        arrival_rate_per_second: 60_000.0,
        dispersion: 15.0,
    };
    let best = best_p99_micros_for(&system, config, &base, load);
    let mut linger_max = 0;
    let mut worst: f64 = 0.0;
    for interval in 0..SETTLE_INTERVALS + HOLD_INTERVALS {
        let samples = system.interval(tuner.current(), load);
        let _ = tuner.observe(&samples);
        linger_max = linger_max.max(tuner.current().linger_micros);
        if interval >= GROUP_COMMIT_SETTLE_INTERVALS {
            let truth = system.expected(tuner.current(), load).p99_micros;
            worst = worst.max(truth / best);
        }
    }
    (linger_max, worst)
}

#[test]
fn group_commit_keeps_linger_at_zero() {
    // A 1 µs target is never met, so exploration is never switched off by the target.
    let strict = TuningConfig {
        bounds: KnobBounds::default(),
        ..latency_config(1)
    };
    let engine = TuningConfig {
        enabled: true,
        ..TuningConfig::default()
    };
    for (name, config) in [("strict", strict), ("engine", engine)] {
        for seed in [1, 2, 3] {
            let config = TuningConfig {
                seed,
                ..config.clone()
            };
            let (linger_max, worst) = group_commit_run(&config, seed);
            assert_eq!(
                linger_max, 0,
                "{name} seed {seed}: linger reached {linger_max} µs"
            );
            assert!(
                worst <= GROUP_COMMIT_P99_MARGIN,
                "{name} seed {seed}: p99 {worst:.2} × best"
            );
        }
    }
}
