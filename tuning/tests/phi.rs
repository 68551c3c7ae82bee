//! The phi accrual detector: fast suspicion on a quiet network, slower on a jittery one,
//! nothing during cold start, and no NaN or panic for any input.

use proptest::prelude::*;
use shardraft_tuning::phi::{PHI_MAX, PhiAccrualDetector};
use shardraft_tuning::rng::SplitMix64;

const HEARTBEAT_MICROS: u64 = 100_000;
/// A fixed election timeout of ten heartbeat intervals.
const FIXED_TIMEOUT_MICROS: u64 = 10 * HEARTBEAT_MICROS;
const THRESHOLD: f64 = 8.0;

/// Returns a detector fed 200 heartbeats and the time of the last one.
fn detector_with_last(jitter_micros: f64, seed: u64) -> (PhiAccrualDetector, u64) {
    let mut detector = PhiAccrualDetector::new(100, 10);
    let mut rng = SplitMix64::new(seed);
    let mut now = 0u64;
    for _ in 0..200 {
        let gap = HEARTBEAT_MICROS as f64 + jitter_micros * rng.next_normal();
        now += gap.max(1.0) as u64;
        detector.heartbeat(now);
    }
    (detector, now)
}

fn detector_with_jitter(jitter_micros: f64, seed: u64) -> PhiAccrualDetector {
    detector_with_last(jitter_micros, seed).0
}

#[test]
fn quiet_network_suspects_well_before_fixed_timeout() {
    let detector = detector_with_jitter(1_000.0, 1);
    let delay = detector.suspicion_delay_micros(THRESHOLD);
    let delay = delay.unwrap_or(u64::MAX);
    assert!(
        delay > HEARTBEAT_MICROS,
        "delay {delay} before one heartbeat"
    );
    assert!(delay < FIXED_TIMEOUT_MICROS / 4, "delay {delay}");
}

#[test]
fn jittery_network_waits_longer() {
    let quiet = detector_with_jitter(1_000.0, 2).suspicion_delay_micros(THRESHOLD);
    let jittery = detector_with_jitter(40_000.0, 2).suspicion_delay_micros(THRESHOLD);
    let quiet = quiet.unwrap_or(0);
    let jittery = jittery.unwrap_or(0);
    assert!(
        jittery > quiet + 100_000,
        "quiet {quiet}, jittery {jittery}"
    );
}

#[test]
fn cold_start_returns_none() {
    let mut detector = PhiAccrualDetector::new(100, 10);
    assert_eq!(detector.suspicion_delay_micros(THRESHOLD), None);
    for i in 0..10 {
        detector.heartbeat(i * HEARTBEAT_MICROS);
    }
    // Ten heartbeats give nine gaps, one short of the ten required.
    assert_eq!(detector.suspicion_delay_micros(THRESHOLD), None);
    assert!(!detector.is_suspected(u64::MAX, THRESHOLD));
    detector.heartbeat(10 * HEARTBEAT_MICROS);
    assert!(detector.suspicion_delay_micros(THRESHOLD).is_some());
}

#[test]
fn phi_crosses_threshold_at_delay() {
    let (detector, last) = detector_with_last(1_000.0, 3);
    let delay = detector.suspicion_delay_micros(THRESHOLD).unwrap_or(0);
    let just_after = detector.phi(last + 1);
    assert!(just_after < 1.0, "phi {just_after} right after a heartbeat");
    let before_delay = detector.phi(last + delay - delay / 20);
    let at_delay = detector.phi(last + delay);
    assert!(
        before_delay < THRESHOLD,
        "phi {before_delay} before the delay"
    );
    assert!(at_delay >= THRESHOLD - 1e-6, "phi {at_delay} at the delay");
    assert!(!detector.is_suspected(last + delay / 2, THRESHOLD));
    assert!(detector.is_suspected(last + delay + 1, THRESHOLD));
}

proptest! {
    #[test]
    fn phi_is_finite_for_any_input(
        beats in proptest::collection::vec(any::<u64>(), 0..50),
        probes in proptest::collection::vec(any::<u64>(), 1..10),
        threshold in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY), Just(0.0), Just(1e300)],
        window in 0usize..20,
        min_gaps in 0usize..20,
    ) {
        let mut detector = PhiAccrualDetector::new(window, min_gaps);
        let mut sorted = beats.clone();
        sorted.sort_unstable();
        for beat in beats.iter().chain(sorted.iter()) {
            detector.heartbeat(*beat);
        }
        for probe in probes {
            let phi = detector.phi(probe);
            prop_assert!(phi.is_finite(), "phi {}", phi);
            prop_assert!((0.0..=PHI_MAX).contains(&phi), "phi {}", phi);
            let _ = detector.is_suspected(probe, threshold);
        }
        let _ = detector.suspicion_delay_micros(threshold);
        if threshold.is_nan() {
            prop_assert_eq!(detector.suspicion_delay_micros(threshold), None);
        }
    }
}
