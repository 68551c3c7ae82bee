//! Shared helpers for the tuner's integration tests: a standard configuration, static
//! knobs, and the ground-truth best arm of the synthetic shard.
#![allow(dead_code)]

use shardraft_tuning::knobs::{KnobBounds, KnobRange, Knobs};
use shardraft_tuning::model::grid::{Arm, ArmGrid};
use shardraft_tuning::safety::SafetyRules;
use shardraft_tuning::synthetic::{SyntheticLoad, SyntheticSystem};
use shardraft_tuning::{Tuner, TuningConfig};

pub const PEERS: usize = 2;

/// Static knobs with 4 KiB of payload per batch entry, so the whole grid fits the budget.
pub fn static_knobs() -> Knobs {
    Knobs {
        batch_entries_max: 64,
        batch_bytes_max: 256 << 10,
        linger_micros: 0,
        inflight_appends_max: 4,
        ..Knobs::default()
    }
}

/// Returns the engine's static knobs: 512 entries and 1 MiB per AppendEntries, no linger
/// and 64 AppendEntries in flight.
pub fn engine_knobs() -> Knobs {
    Knobs {
        batch_entries_max: 512,
        batch_bytes_max: 1 << 20,
        linger_micros: 0,
        inflight_appends_max: 64,
        read_batch_max: 1,
        heartbeat_interval_micros: 30_000,
        election_timeout_min_micros: 150_000,
        election_timeout_max_micros: 300_000,
    }
}

pub fn bounds() -> KnobBounds {
    KnobBounds {
        batch_entries_max: KnobRange::new(1, 1_024),
        inflight_appends_max: KnobRange::new(1, 16),
        linger_micros: KnobRange::new(0, 3_200),
        ..KnobBounds::default()
    }
}

/// Returns an enabled configuration that minimises p99: a 1 µs target is never met, so the
/// latency objective reduces to the lowest p99 among settings that keep up.
pub fn latency_config(seed: u64) -> TuningConfig {
    TuningConfig {
        enabled: true,
        p99_target_micros: 1,
        bounds: bounds(),
        seed,
        ..TuningConfig::default()
    }
}

pub fn new_tuner(config: TuningConfig) -> Tuner {
    match Tuner::new(config, static_knobs(), PEERS) {
        Ok(tuner) => tuner,
        Err(error) => panic!("tuner rejected the test configuration: {error}"),
    }
}

/// Returns the knobs the tuner would set for `arm`.
pub fn knobs_for(grid: &ArmGrid, arm: Arm) -> Knobs {
    knobs_for_base(grid, arm, &bounds(), &static_knobs())
}

/// Returns the knobs the tuner would set for `arm` when it started from `base`.
pub fn knobs_for_base(grid: &ArmGrid, arm: Arm, bounds: &KnobBounds, base: &Knobs) -> Knobs {
    let setting = grid.setting(arm);
    let bytes_per_entry = base.batch_bytes_max / base.batch_entries_max;
    Knobs {
        linger_micros: setting.linger_micros,
        batch_entries_max: setting.batch_entries_max,
        batch_bytes_max: bounds
            .batch_bytes_max
            .clamp(setting.batch_entries_max * bytes_per_entry),
        inflight_appends_max: setting.inflight_appends_max,
        ..*base
    }
}

/// Returns every arm of the tuner's grid that fits the memory budget.
pub fn feasible_arms(config: &TuningConfig) -> (ArmGrid, Vec<Arm>) {
    feasible_arms_for(config, &static_knobs())
}

/// Returns every arm of the grid of a tuner started from `base` that fits the memory budget.
pub fn feasible_arms_for(config: &TuningConfig, base: &Knobs) -> (ArmGrid, Vec<Arm>) {
    let grid = ArmGrid::new(&config.bounds, config.step_ratio_max, base);
    let rules = SafetyRules::from_config(config, PEERS as u64);
    let knobs_for = |grid: &ArmGrid, arm: Arm| knobs_for_base(grid, arm, &config.bounds, base);
    let mut arms = Vec::new();
    // Walk the grid by index until the setting stops changing in each dimension.
    for linger in 0..64u16 {
        for batch in 0..64u16 {
            for inflight in 0..64u16 {
                let arm = Arm {
                    linger,
                    batch,
                    inflight,
                };
                if grid.nearest(&knobs_for(&grid, arm)) != arm {
                    continue;
                }
                if rules.memory_fits(&knobs_for(&grid, arm)) {
                    arms.push(arm);
                }
            }
        }
    }
    (grid, arms)
}

/// Returns the lowest true p99 over the feasible arms at `load`.
pub fn best_p99_micros(
    system: &SyntheticSystem,
    config: &TuningConfig,
    load: SyntheticLoad,
) -> f64 {
    best_p99_micros_for(system, config, &static_knobs(), load)
}

/// Returns the lowest true p99 at `load` over the feasible arms of a tuner started from
/// `base`.
pub fn best_p99_micros_for(
    system: &SyntheticSystem,
    config: &TuningConfig,
    base: &Knobs,
    load: SyntheticLoad,
) -> f64 {
    let (grid, arms) = feasible_arms_for(config, base);
    arms.iter()
        .map(|&arm| {
            let knobs = knobs_for_base(&grid, arm, &config.bounds, base);
            system.expected(&knobs, load).p99_micros
        })
        .fold(f64::INFINITY, f64::min)
}

/// Returns the highest true capacity over the feasible arms.
pub fn best_capacity_per_second(
    system: &SyntheticSystem,
    config: &TuningConfig,
    load: SyntheticLoad,
) -> f64 {
    let (grid, arms) = feasible_arms(config);
    arms.iter()
        .map(|&arm| {
            system
                .expected(&knobs_for(&grid, arm), load)
                .capacity_per_second
        })
        .fold(0.0, f64::max)
}
