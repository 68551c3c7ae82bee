//! The tuner after a step change of the load: it must detect the shift and settle on a
//! setting close to the new load's best arm within a bounded number of intervals.

mod common;

use common::*;
use shardraft_tuning::synthetic::{SyntheticLoad, SyntheticParams, SyntheticSystem};

const BEFORE_STEP_INTERVALS: usize = 80;
/// Intervals after the step by which the tuner must be close to the new best arm.
const ADAPT_INTERVALS: usize = 50;
const HOLD_INTERVALS: usize = 20;
const P99_MARGIN: f64 = 1.2;

fn worst_ratio_after_step(first_rate: f64, second_rate: f64, seed: u64) -> f64 {
    let config = latency_config(seed);
    let mut tuner = new_tuner(config.clone());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), seed);
    let first = SyntheticLoad::poisson(first_rate);
    let second = SyntheticLoad::poisson(second_rate);
    for _ in 0..BEFORE_STEP_INTERVALS {
        let samples = system.interval(tuner.current(), first);
        let _ = tuner.observe(&samples);
    }
    let best = best_p99_micros(&system, &config, second);
    let mut worst: f64 = 0.0;
    for interval in 0..ADAPT_INTERVALS + HOLD_INTERVALS {
        let samples = system.interval(tuner.current(), second);
        let _ = tuner.observe(&samples);
        if interval >= ADAPT_INTERVALS {
            let truth = system.expected(tuner.current(), second).p99_micros;
            worst = worst.max(truth / best);
        }
    }
    worst
}

#[test]
fn adapts_from_low_to_high_load() {
    for seed in [1, 2] {
        let ratio = worst_ratio_after_step(2_000.0, 200_000.0, seed);
        assert!(ratio <= P99_MARGIN, "seed {seed}: p99 {ratio:.2} × best");
    }
}

#[test]
fn adapts_from_high_to_low_load() {
    for seed in [1, 2] {
        let ratio = worst_ratio_after_step(200_000.0, 2_000.0, seed);
        assert!(ratio <= P99_MARGIN, "seed {seed}: p99 {ratio:.2} × best");
    }
}

#[test]
fn adapts_from_medium_to_high_load() {
    let ratio = worst_ratio_after_step(20_000.0, 200_000.0, 4);
    assert!(ratio <= P99_MARGIN, "p99 {ratio:.2} × best");
}
