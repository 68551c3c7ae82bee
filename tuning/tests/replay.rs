//! The tuner replayed on interval samples recorded from the real engine.
//!
//! `data/embedded-64-clients.jsonl` contains one serialised [`IntervalSamples`] per line from a
//! 40 s bench run of a 3-node embedded cluster on a 2-core machine: 64 closed-loop clients
//! and one Raft group. The lines of all three nodes are interleaved, and the leader's lines
//! are the ones with commits. The engine batches by group commit (entries that arrive while
//! one fdatasync runs join the next one, about 30 per fdatasync here), so linger only adds
//! latency.
//!
//! A replay cannot show the effect of a change, because the recorded samples stay the same
//! whatever the tuner sets. The tests therefore check properties that any sane tuner has on
//! this trace: it moves only to settings its own model predicts no worse, it moves rarely,
//! and it never lingers for as long as a commit takes.

mod common;

use common::engine_knobs;
use shardraft_tuning::knobs::Knobs;
use shardraft_tuning::samples::IntervalSamples;
use shardraft_tuning::{Decision, Tuner, TuningConfig};

const TRACE: &str = include_str!("data/embedded-64-clients.jsonl");

/// The maximum number of batching changes the tuner may make over the 41 leader intervals of the trace:
/// one exploratory move, the move back when it measures worse, and one spare for a
/// change the model predicts clearly better.
const BATCHING_CHANGES_MAX: usize = 3;

fn leader_samples() -> Vec<IntervalSamples> {
    TRACE
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<IntervalSamples>(line) {
            Ok(samples) => samples,
            Err(error) => panic!("invalid trace line {line:?}: {error}"),
        })
        .filter(|samples| samples.commits > 0)
        .collect()
}

/// One interval of the replay: the knobs after it, its samples and the decision.
struct Step {
    after: Knobs,
    samples: IntervalSamples,
    decision: Decision,
}

fn replay() -> Vec<Step> {
    let config = TuningConfig {
        enabled: true,
        ..TuningConfig::default()
    };
    let mut tuner = match Tuner::new(config, engine_knobs(), 2) {
        Ok(tuner) => tuner,
        Err(error) => panic!("tuner rejected the engine's defaults: {error}"),
    };
    leader_samples()
        .into_iter()
        .map(|samples| {
            let decision = tuner.observe(&samples);
            Step {
                after: *tuner.current(),
                samples,
                decision,
            }
        })
        .collect()
}

/// Parses a duration as the reasons print it ("831 µs", "2.0 ms", "1.1 s") into
/// microseconds, with the rounding error of the printed digits.
fn parse_micros(text: &str) -> (f64, f64) {
    let (number, unit) = match text.trim().split_once(' ') {
        Some(parts) => parts,
        None => panic!("duration {text:?} has no unit"),
    };
    let value: f64 = match number.parse() {
        Ok(value) => value,
        Err(error) => panic!("duration {text:?} has no number: {error}"),
    };
    match unit {
        "µs" => (value, 0.5),
        "ms" => (value * 1e3, 50.0),
        "s" => (value * 1e6, 50_000.0),
        _ => panic!("duration {text:?} has unknown unit {unit:?}"),
    }
}

/// A duration from a reason, in microseconds, with the rounding error of its digits.
type Printed = (f64, f64);

/// The p99 values a batching reason prints.
enum ReasonP99 {
    /// "predicted p99 OLD → NEW", with ", toward GOAL" for a step toward a farther arm.
    Predicted {
        old: Printed,
        new: Printed,
        goal: Option<Printed>,
    },
    /// "measured p99 OLD → NEW" for a move back.
    Measured { old: Printed, new: Printed },
}

fn parse_pair(reason: &str, tail: &str) -> (Printed, Printed, Option<Printed>) {
    let tail = tail.split(" (").next().unwrap_or(tail);
    let (pair, goal) = match tail.split_once(", toward ") {
        Some((pair, goal)) => (pair, Some(parse_micros(goal))),
        None => (tail, None),
    };
    let Some((old, new)) = pair.split_once(" → ") else {
        panic!("reason {reason:?} has no p99 pair");
    };
    (parse_micros(old), parse_micros(new), goal)
}

fn reason_p99(reason: &str) -> ReasonP99 {
    if let Some((_, tail)) = reason.split_once("predicted p99 ") {
        let (old, new, goal) = parse_pair(reason, tail);
        return ReasonP99::Predicted { old, new, goal };
    }
    if let Some((_, tail)) = reason.split_once("measured p99 ") {
        let (old, new, _) = parse_pair(reason, tail);
        return ReasonP99::Measured { old, new };
    }
    panic!("reason {reason:?} names no p99");
}

fn batching_steps(steps: &[Step]) -> Vec<&Step> {
    steps
        .iter()
        .filter(|step| step.decision.batching.is_some())
        .collect()
}

#[test]
fn trace_has_leader_intervals() {
    let samples = leader_samples();
    assert_eq!(samples.len(), 41);
    assert!(samples.iter().all(|s| s.commit_latency.count > 0));
}

#[test]
fn replay_moves_only_to_predicted_better() {
    // A step toward a farther arm may be predicted worse than the arm in force by the
    // hysteresis margin.
    let margin = TuningConfig::default().hysteresis_percent / 100.0;
    for step in replay() {
        for (change, reason) in step.decision.changes.iter().zip(&step.decision.reasons) {
            if change.knob.is_timing() {
                continue;
            }
            let (old, new, goal) = match reason_p99(reason) {
                ReasonP99::Measured { old, new } => {
                    assert!(
                        new.0 <= old.0 + old.1 + new.1,
                        "moved back to worse: {reason}"
                    );
                    continue;
                }
                ReasonP99::Predicted { old, new, goal } => (old, new, goal),
            };
            let tolerance = old.1 + new.1;
            match goal {
                None => assert!(
                    new.0 <= old.0 + tolerance,
                    "moved to a setting predicted worse: {reason}"
                ),
                Some(goal) => {
                    assert!(
                        goal.0 <= old.0 + old.1 + goal.1,
                        "headed for a setting predicted worse: {reason}"
                    );
                    assert!(
                        new.0 <= old.0 * (1.0 + margin) + tolerance,
                        "stepped through a setting predicted worse than the margin: {reason}"
                    );
                }
            }
            let Some(prediction) = step.decision.prediction else {
                panic!("batching change without a prediction: {reason}");
            };
            assert!(
                (prediction.p99_micros - new.0).abs() <= new.1,
                "reason {reason:?} does not print the decision's p99 {}",
                prediction.p99_micros
            );
        }
    }
}

#[test]
fn replay_changes_batching_rarely() {
    let steps = replay();
    let changes = batching_steps(&steps);
    let reasons: Vec<&String> = changes
        .iter()
        .flat_map(|step| &step.decision.reasons)
        .collect();
    assert!(
        changes.len() <= BATCHING_CHANGES_MAX,
        "{} batching changes: {reasons:#?}",
        changes.len()
    );
}

#[test]
fn replay_linger_stays_below_commit_latency() {
    for step in replay() {
        // An order of magnitude below the measured median commit latency.
        let limit = step.samples.commit_latency.p50_micros / 10;
        assert!(
            step.after.linger_micros <= limit,
            "linger {} µs against a measured p50 of {} µs",
            step.after.linger_micros,
            step.samples.commit_latency.p50_micros
        );
    }
}

#[test]
fn replay_ends_without_linger() {
    let steps = replay();
    let Some(last) = steps.last() else {
        panic!("empty replay");
    };
    assert_eq!(last.after.linger_micros, 0, "{:?}", last.after);
}
