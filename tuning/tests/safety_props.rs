//! Every safety rule must hold after every `observe`, whatever the samples report.

mod common;
#[path = "common/streams.rs"]
mod streams;

use common::*;
use proptest::prelude::*;
use shardraft_tuning::knobs::{Knob, Knobs};
use shardraft_tuning::samples::IntervalSamples;
use shardraft_tuning::synthetic::{SyntheticLoad, SyntheticParams, SyntheticSystem};
use shardraft_tuning::{Decision, Tuner, TuningConfig};

/// Returns a configuration that lets the tuner act from the first interval and often.
fn eager_config() -> TuningConfig {
    TuningConfig {
        cold_start_intervals: 0,
        cold_start_commits_min: 1,
        change_interval_min: 2,
        timing_change_interval_min: 4,
        ..latency_config(11)
    }
}

/// Tracks the state the rules are checked against, independently of the guard.
struct Checker {
    config: TuningConfig,
    previous: Knobs,
    last_change: [Option<u64>; 8],
    interval: u64,
    /// Each interval's maximum stall, newest last, over the configured window.
    stalls: std::collections::VecDeque<u64>,
}

impl Checker {
    fn new(config: TuningConfig, initial: Knobs) -> Self {
        Self {
            config,
            previous: initial,
            last_change: [None; 8],
            interval: 0,
            stalls: std::collections::VecDeque::new(),
        }
    }

    /// Returns the first broken rule, if any.
    fn check(
        &mut self,
        samples: &IntervalSamples,
        decision: &Decision,
        knobs: &Knobs,
    ) -> Result<(), String> {
        self.interval += 1;
        let config = &self.config;
        let bounds = config.bounds;
        for knob in Knob::ALL {
            let range = bounds.get(knob);
            if !range.contains(knobs.get(knob)) {
                return Err(format!(
                    "{knob} = {} outside [{}, {}]",
                    knobs.get(knob),
                    range.min,
                    range.max
                ));
            }
        }
        if knobs.heartbeat_interval_micros > knobs.election_timeout_min_micros / 3 {
            return Err(format!("heartbeat above min / 3: {knobs:?}"));
        }
        let spread_floor =
            (knobs.election_timeout_min_micros as f64 * config.election_timeout_spread).ceil();
        if (knobs.election_timeout_max_micros as f64) < spread_floor {
            return Err(format!("election spread below {spread_floor}: {knobs:?}"));
        }
        let in_flight = u128::from(knobs.batch_bytes_max)
            * u128::from(knobs.inflight_appends_max)
            * PEERS as u128;
        if in_flight > u128::from(config.memory_budget_bytes) {
            return Err(format!("memory {in_flight} over budget: {knobs:?}"));
        }

        // The floor follows the follower after the slowest ones a quorum can spare: the
        // group spares PEERS / 2 followers, less those that did not report. With more
        // reporting peers than PEERS, the slowest decides.
        let mut tails: Vec<u64> = samples
            .peer_rtts
            .iter()
            .filter(|peer| peer.rtt.count > 0)
            .map(|peer| peer.rtt.p999_micros)
            .collect();
        tails.sort_unstable();
        tails.reverse();
        let spared = if tails.len() > PEERS {
            0
        } else {
            (PEERS / 2).saturating_sub(PEERS - tails.len())
        };
        let rtt = tails.get(spared).copied();
        let fsync = (samples.fsync_latency.count > 0).then_some(samples.fsync_latency.p999_micros);
        // The stall floor covers the maximum stall of the window, measured or not.
        self.stalls.push_back(samples.stall_max_micros);
        while self.stalls.len() as u64 > config.stall_window_intervals {
            self.stalls.pop_front();
        }
        let stall_max = self.stalls.iter().copied().max().unwrap_or(0);
        let stall_floor = stall_max as f64 * config.stall_safety_factor;
        let max_bound = bounds.election_timeout_min_micros.max as f64;
        if (knobs.election_timeout_min_micros as f64) < stall_floor.min(max_bound).floor() {
            return Err(format!(
                "election min {} below stall floor {stall_floor}",
                knobs.election_timeout_min_micros
            ));
        }
        if stall_floor > max_bound && !decision.floor_unsatisfiable {
            return Err(format!(
                "floor_unsatisfiable wrong for stall floor {stall_floor}"
            ));
        }
        if let (Some(rtt), Some(fsync)) = (rtt, fsync) {
            let floor = (rtt.saturating_add(fsync) as f64 * config.safety_factor).max(stall_floor);
            let required = floor.min(max_bound);
            if (knobs.election_timeout_min_micros as f64) < required.floor() {
                return Err(format!(
                    "election min {} below floor {floor}",
                    knobs.election_timeout_min_micros
                ));
            }
            if decision.floor_unsatisfiable != (floor > max_bound) {
                return Err(format!("floor_unsatisfiable wrong for floor {floor}"));
            }
        }

        for knob in Knob::ALL {
            let changed = self.previous.get(knob) != knobs.get(knob);
            let reported = decision.changes.iter().find(|change| change.knob == knob);
            if changed != reported.is_some() {
                return Err(format!("{knob} change not reported consistently"));
            }
            let Some(change) = reported else { continue };
            if change.from != self.previous.get(knob) || change.to != knobs.get(knob) {
                return Err(format!("{knob} change {change:?} does not match the knobs"));
            }
            if change.forced {
                if !knob.is_timing() || change.to <= change.from {
                    return Err(format!("forced change {change:?} is not a timing raise"));
                }
            } else {
                let window = if knob.is_timing() {
                    config.timing_change_interval_min
                } else {
                    config.change_interval_min
                };
                let last = self.last_change[knob.index()];
                if last.is_some_and(|last| self.interval - last < window) {
                    return Err(format!("{knob} changed at {last:?} and {}", self.interval));
                }
                if self.interval < config.hysteresis_intervals {
                    return Err(format!("{knob} changed before hysteresis could be met"));
                }
            }
            self.last_change[knob.index()] = Some(self.interval);
        }
        let batching_changed = decision
            .changes
            .iter()
            .any(|change| !change.knob.is_timing());
        if batching_changed != decision.batching.is_some() {
            return Err("batching decision does not match the changes".into());
        }
        if decision.reasons.len() != decision.changes.len() {
            return Err("one reason per change expected".into());
        }
        self.previous = *knobs;
        Ok(())
    }
}

fn run_stream(config: TuningConfig, stream: &[IntervalSamples]) -> Result<(), String> {
    let mut tuner = new_tuner(config.clone());
    let mut checker = Checker::new(config, *tuner.current());
    for samples in stream {
        let decision = tuner.observe(samples);
        checker.check(samples, &decision, tuner.current())?;
        let finite = |p: &shardraft_tuning::Prediction| {
            p.p99_micros.is_finite() && p.capacity_per_second.is_finite()
        };
        if decision.prediction.is_some_and(|p| !finite(&p)) {
            return Err(format!("non-finite prediction {:?}", decision.prediction));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn rules_hold_for_adversarial_streams(stream in proptest::collection::vec(streams::samples(), 1..60)) {
        let result = run_stream(eager_config(), &stream);
        prop_assert!(result.is_ok(), "{:?}", result);
    }

    #[test]
    fn rules_hold_with_default_pacing(stream in proptest::collection::vec(streams::samples(), 1..60)) {
        let result = run_stream(latency_config(5), &stream);
        prop_assert!(result.is_ok(), "{:?}", result);
    }
}

#[test]
fn rules_hold_for_alternating_extremes() {
    let stream: Vec<IntervalSamples> = (0..200)
        .map(|i| {
            if i % 2 == 0 {
                IntervalSamples::default()
            } else {
                streams::saturated_samples()
            }
        })
        .collect();
    assert_eq!(run_stream(eager_config(), &stream), Ok(()));
}

#[test]
fn rules_hold_under_realistic_load_changes() {
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 8);
    let config = eager_config();
    let mut tuner = new_tuner(config.clone());
    let mut checker = Checker::new(config, *tuner.current());
    for i in 0..300u32 {
        let rate = [1_000.0, 300_000.0, 20_000.0][(i / 50 % 3) as usize];
        let samples = system.interval(tuner.current(), SyntheticLoad::poisson(rate));
        let decision = tuner.observe(&samples);
        assert_eq!(checker.check(&samples, &decision, tuner.current()), Ok(()));
    }
}

#[test]
fn unsatisfiable_floor_uses_max_and_reports() {
    let mut tuner: Tuner = new_tuner(eager_config());
    let samples = streams::saturated_samples();
    let decision = tuner.observe(&samples);
    assert!(decision.floor_unsatisfiable);
    assert_eq!(
        tuner.current().election_timeout_min_micros,
        eager_config().bounds.election_timeout_min_micros.max
    );
    let timing = decision.timing.map(|timing| timing.forced);
    assert_eq!(timing, Some(true));
}
