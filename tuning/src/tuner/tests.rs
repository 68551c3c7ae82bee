use super::*;
use crate::synthetic::{SyntheticLoad, SyntheticParams, SyntheticSystem};

fn enabled() -> TuningConfig {
    TuningConfig {
        enabled: true,
        ..TuningConfig::default()
    }
}

fn tuner(config: TuningConfig) -> Tuner {
    match Tuner::new(config, Knobs::default(), 2) {
        Ok(tuner) => tuner,
        Err(error) => panic!("tuner rejected: {error}"),
    }
}

#[test]
fn cold_start_keeps_static_batching() {
    let mut tuner = tuner(enabled());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 1);
    for _ in 0..3 {
        let samples = system.interval(tuner.current(), SyntheticLoad::poisson(200_000.0));
        let decision = tuner.observe(&samples);
        assert!(decision.batching.is_none());
    }
    assert!(tuner.is_warm());
}

#[test]
fn few_commits_never_warm_up() {
    let mut tuner = tuner(enabled());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 1);
    for _ in 0..20 {
        // 50 proposals per second gives fewer commits than cold_start_commits_min.
        let samples = system.interval(tuner.current(), SyntheticLoad::poisson(50.0));
        let decision = tuner.observe(&samples);
        assert!(decision.batching.is_none());
    }
    assert!(!tuner.is_warm());
    assert_eq!(tuner.current().batching(), Knobs::default().batching());
}

#[test]
fn quorum_rtt_uses_needed_follower() {
    let mut samples = IntervalSamples::default();
    for (peer_id, rtt) in [(1u64, 300u64), (2, 100), (3, 200), (4, 900)] {
        samples.peer_rtts.push(crate::samples::PeerRtt {
            peer_id,
            rtt: crate::samples::LatencySummary {
                count: 1,
                p50_micros: rtt,
                ..Default::default()
            },
        });
    }
    // Four followers: a quorum of five needs two acknowledgements besides the leader.
    assert_eq!(quorum_rtt_micros(&samples, 4), Some(200.0));
    assert_eq!(quorum_rtt_micros(&samples, 2), Some(100.0));
    assert_eq!(quorum_rtt_micros(&IntervalSamples::default(), 2), None);
}

#[test]
fn hysteresis_needs_consecutive_wins() {
    let mut pending = None;
    assert_eq!(advance_streak(&mut pending, Some(1u8)), 1);
    assert_eq!(advance_streak(&mut pending, Some(1u8)), 2);
    assert_eq!(advance_streak(&mut pending, Some(2u8)), 1);
    assert_eq!(advance_streak(&mut pending, None), 0);
    assert_eq!(advance_streak(&mut pending, Some(2u8)), 1);
}

#[test]
fn reasons_accompany_every_change() {
    let mut tuner = tuner(enabled());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 5);
    let mut changed = 0;
    for _ in 0..60 {
        let samples = system.interval(tuner.current(), SyntheticLoad::poisson(200_000.0));
        let decision = tuner.observe(&samples);
        assert_eq!(decision.reasons.len(), decision.changes.len());
        for reason in &decision.reasons {
            assert!(reason.contains('→'), "{reason}");
        }
        changed += decision.changes.len();
    }
    assert!(
        changed > 0,
        "no change at a load the static knobs serve badly"
    );
}

#[test]
fn timing_lowers_toward_floor() {
    // Round trips near 100 µs and fdatasync near 300 µs give a floor of about 10 ms, far
    // below the static 500 ms, so the election timeout should come down over time.
    let config = TuningConfig {
        timing_change_interval_min: 5,
        ..enabled()
    };
    let mut tuner = tuner(config);
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 3);
    let mut timing_decisions = 0;
    for _ in 0..100 {
        let samples = system.interval(tuner.current(), SyntheticLoad::poisson(5_000.0));
        if tuner.observe(&samples).timing.is_some() {
            timing_decisions += 1;
        }
    }
    let knobs = tuner.current();
    assert!(knobs.election_timeout_min_micros < 100_000, "{knobs:?}");
    assert!(
        timing_decisions <= 20,
        "{timing_decisions} timing decisions"
    );
}

#[test]
fn timing_stays_until_floors_are_measured() {
    // Intervals without round trips or fdatasyncs give no floor, so they must not count
    // toward the window that lowering the timing needs.
    let config = TuningConfig {
        timing_change_interval_min: 5,
        ..enabled()
    };
    let mut tuner = tuner(config);
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 3);
    for _ in 0..50 {
        let mut samples = system.interval(tuner.current(), SyntheticLoad::poisson(5_000.0));
        samples.peer_rtts.clear();
        samples.fsyncs = 0;
        samples.fsync_latency = Default::default();
        let decision = tuner.observe(&samples);
        assert!(decision.timing.is_none(), "{decision:?}");
    }
}

#[test]
fn stall_raise_holds_for_window() {
    // The timing first comes down to the latency floor of about 10 ms. Then one interval
    // in which the loop stalled for 60 ms forces the minimum above twice that, and the
    // tuner keeps it there while the stall is in the window, however quiet the network.
    let config = TuningConfig {
        timing_change_interval_min: 5,
        stall_window_intervals: 40,
        ..enabled()
    };
    let mut tuner = tuner(config);
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 3);
    let load = SyntheticLoad::poisson(5_000.0);
    for _ in 0..100 {
        let samples = system.interval(tuner.current(), load);
        tuner.observe(&samples);
    }
    let lowered = tuner.current().election_timeout_min_micros;
    assert!(lowered < 100_000, "the timing came down first: {lowered}");

    let mut samples = system.interval(tuner.current(), load);
    samples.stall_max_micros = 60_000;
    let decision = tuner.observe(&samples);
    let Some(timing) = decision.timing else {
        panic!("a stall above the timing must force a raise: {decision:?}");
    };
    assert!(timing.forced, "{timing:?}");
    assert_eq!(decision.election_timeout_floor_micros, 120_000);
    assert!(tuner.current().election_timeout_min_micros >= 120_000);
    assert!(
        decision
            .reasons
            .iter()
            .any(|reason| reason.contains("maximum recent stall")),
        "{:?}",
        decision.reasons
    );

    // 38 more intervals keep the stall in the window of 40.
    for _ in 0..38 {
        let samples = system.interval(tuner.current(), load);
        let decision = tuner.observe(&samples);
        assert_eq!(decision.election_timeout_floor_micros, 120_000);
        assert!(tuner.current().election_timeout_min_micros >= 120_000);
    }
    // Once the stall has left the window, the timing may come down again.
    for _ in 0..60 {
        let samples = system.interval(tuner.current(), load);
        tuner.observe(&samples);
    }
    let after = tuner.current().election_timeout_min_micros;
    assert!(
        after < 120_000,
        "the timing came down after the window: {after}"
    );
}

#[test]
fn startup_raise_undone_in_one_change() {
    // The first interval's fdatasyncs are slow, as while a node creates and fills its first
    // segments. The forced raise reflects that one interval, so once the window of quiet
    // floors allows it, one change returns the timing to the static value it replaced.
    let config = TuningConfig {
        timing_change_interval_min: 5,
        ..enabled()
    };
    let mut tuner = tuner(config);
    let static_min = tuner.current().election_timeout_min_micros;
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 3);
    let load = SyntheticLoad::poisson(5_000.0);
    let mut samples = system.interval(tuner.current(), load);
    samples.fsync_latency.p999_micros = 400_000;
    samples.fsync_latency.max_micros = 400_000;
    let decision = tuner.observe(&samples);
    assert!(
        decision.timing.is_some_and(|timing| timing.forced),
        "a slow first interval forces a raise: {decision:?}"
    );
    let raised = tuner.current().election_timeout_min_micros;
    assert!(raised > 2 * static_min, "raised to {raised}");

    let mut lowerings = Vec::new();
    for _ in 0..20 {
        let samples = system.interval(tuner.current(), load);
        let decision = tuner.observe(&samples);
        lowerings.extend(
            decision
                .changes
                .iter()
                .filter(|change| change.knob == Knob::ElectionTimeoutMinMicros)
                .map(|change| change.to),
        );
    }
    assert_eq!(
        lowerings.first(),
        Some(&static_min),
        "the first lowering returns to the static minimum: {lowerings:?}"
    );
}

#[test]
fn stall_factor_zero_leaves_stalls_out() {
    let config = TuningConfig {
        timing_change_interval_min: 5,
        stall_safety_factor: 0.0,
        ..enabled()
    };
    let mut tuner = tuner(config);
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 3);
    for _ in 0..100 {
        let mut samples = system.interval(tuner.current(), SyntheticLoad::poisson(5_000.0));
        samples.stall_max_micros = 60_000;
        let decision = tuner.observe(&samples);
        assert!(
            decision.election_timeout_floor_micros < 60_000,
            "{decision:?}"
        );
    }
    assert!(tuner.current().election_timeout_min_micros < 100_000);
}

/// Returns samples of one interval whose p99.9 round trip of both followers is
/// `rtt_micros` and whose fdatasync p99.9 is `fsync_micros`, or none where `None`.
fn tails(rtt_micros: Option<u64>, fsync_micros: Option<u64>) -> IntervalSamples {
    let summary = |micros: u64| crate::samples::LatencySummary {
        count: 1_000,
        p50_micros: micros / 4,
        p99_micros: micros / 2,
        p999_micros: micros,
        max_micros: micros,
        mean_micros: (micros / 4) as f64,
    };
    let mut samples = IntervalSamples {
        interval_micros: 1_000_000,
        ..IntervalSamples::default()
    };
    if let Some(rtt_micros) = rtt_micros {
        for peer_id in [2, 3] {
            samples.peer_rtts.push(crate::samples::PeerRtt {
                peer_id,
                rtt: summary(rtt_micros),
            });
        }
    }
    if let Some(fsync_micros) = fsync_micros {
        samples.fsyncs = 1_000;
        samples.fsync_latency = summary(fsync_micros);
    }
    samples
}

#[test]
fn floor_pairs_each_side_with_latest() {
    let mut tuner = tuner(enabled());
    let factor = tuner.config().safety_factor;
    let floor =
        |rtt_micros: u64, fsync_micros: u64| ((rtt_micros + fsync_micros) as f64 * factor) as u64;

    let first = tuner.observe(&tails(Some(50_000), Some(100_000)));
    assert_eq!(first.election_timeout_floor_micros, floor(50_000, 100_000));

    // A follower measures fdatasyncs only: its floor follows them, with the last round trip.
    let follower = tuner.observe(&tails(None, Some(1_000)));
    assert_eq!(follower.election_timeout_floor_micros, floor(50_000, 1_000));

    let leader = tuner.observe(&tails(Some(2_000), None));
    assert_eq!(leader.election_timeout_floor_micros, floor(2_000, 1_000));

    let silent = tuner.observe(&tails(None, None));
    assert_eq!(silent.election_timeout_floor_micros, floor(2_000, 1_000));
}

#[test]
fn first_floor_counts_unmeasured_side_as_zero() {
    let mut tuner = tuner(enabled());
    let factor = tuner.config().safety_factor;
    let decision = tuner.observe(&tails(None, Some(10_000)));
    assert_eq!(
        decision.election_timeout_floor_micros,
        (10_000.0 * factor) as u64
    );
}

#[test]
fn stall_counts_in_intervals_without_latencies() {
    // An interval without round trips or fdatasyncs still raises the floor for a stall.
    let mut tuner = tuner(enabled());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 3);
    let mut samples = system.interval(tuner.current(), SyntheticLoad::poisson(5_000.0));
    samples.peer_rtts.clear();
    samples.fsyncs = 0;
    samples.fsync_latency = Default::default();
    samples.stall_max_micros = 400_000;
    let decision = tuner.observe(&samples);
    assert_eq!(decision.election_timeout_floor_micros, 800_000);
    assert!(tuner.current().election_timeout_min_micros >= 800_000);
}

#[test]
fn floor_envelope_ignores_one_spike() {
    // Twenty quiet intervals and one spike: the spike is above the 90th percentile.
    let mut floors: VecDeque<u64> = std::iter::repeat_n(100_000, 20).collect();
    floors.push_back(1_100_000);
    assert_eq!(floor_envelope(&floors, 100_000), 100_000);
    assert_eq!(floor_envelope(&floors, 1_100_000), 1_100_000);
    assert_eq!(floor_envelope(&VecDeque::new(), 5), 5);
}

#[test]
fn worse_move_is_undone_and_not_retried() {
    let mut tuner = tuner(enabled());
    let mut system = SyntheticSystem::new(SyntheticParams::default(), 5);
    let load = SyntheticLoad::poisson(200_000.0);
    let mut before_move = None;
    for _ in 0..30 {
        let knobs = *tuner.current();
        let samples = system.interval(&knobs, load);
        if tuner.observe(&samples).batching.is_some() {
            before_move = Some((knobs, samples));
            break;
        }
    }
    let Some((previous, samples)) = before_move else {
        panic!("no batching move at a load the static knobs serve badly");
    };
    let moved_to = tuner.current().batching();

    // The new arm measures four times the previous arm's p99 at the same load.
    let mut worse = samples.clone();
    worse.commit_latency.p99_micros = worse.commit_latency.p99_micros.saturating_mul(4);
    let mut reasons = Vec::new();
    for _ in 0..6 {
        let decision = tuner.observe(&worse);
        reasons.extend(decision.reasons);
        if decision.batching.is_some() {
            break;
        }
    }
    assert_eq!(
        tuner.current().batching(),
        previous.batching(),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|reason| reason.contains("moving back")),
        "{reasons:?}"
    );

    // The previous arm measures as before; the rejected arm is not tried again.
    for _ in 0..40 {
        let _ = tuner.observe(&samples);
        assert_ne!(tuner.current().batching(), moved_to);
    }
}
