//! The Page–Hinkley detector on a seeded noisy arrival process: it must catch a step in
//! rate quickly and rarely fire on a stationary stream.

use shardraft_tuning::TuningConfig;
use shardraft_tuning::change_point::{PageHinkley, Shift};
use shardraft_tuning::rng::SplitMix64;

/// Returns a rate with multiplicative log-normal noise of `sigma`.
fn noisy(rate: f64, sigma: f64, rng: &mut SplitMix64) -> f64 {
    rate * (sigma * rng.next_normal()).exp()
}

fn detector() -> PageHinkley {
    let config = TuningConfig::default();
    PageHinkley::new(config.change_point_threshold, config.change_point_drift)
}

/// Returns the intervals after a step from `before` to `after` until the detector fires.
fn detection_delay(before: f64, after: f64, seed: u64) -> Option<(usize, Shift)> {
    let mut rng = SplitMix64::new(seed);
    let mut detector = detector();
    for _ in 0..200 {
        let _ = detector.observe_rate(noisy(before, 0.1, &mut rng));
    }
    (1..=20).find_map(|i| {
        detector
            .observe_rate(noisy(after, 0.1, &mut rng))
            .map(|shift| (i, shift))
    })
}

#[test]
fn doubling_detected_within_six_intervals() {
    for seed in 0..20 {
        let result = detection_delay(10_000.0, 20_000.0, seed);
        assert!(
            matches!(result, Some((delay, Shift::Up)) if delay <= 6),
            "seed {seed}: {result:?}"
        );
    }
}

#[test]
fn halving_detected_within_six_intervals() {
    for seed in 0..20 {
        let result = detection_delay(20_000.0, 10_000.0, seed);
        assert!(
            matches!(result, Some((delay, Shift::Down)) if delay <= 6),
            "seed {seed}: {result:?}"
        );
    }
}

#[test]
fn large_step_detected_within_two_intervals() {
    let result = detection_delay(2_000.0, 200_000.0, 7);
    assert!(
        matches!(result, Some((delay, Shift::Up)) if delay <= 2),
        "{result:?}"
    );
}

#[test]
fn stationary_noise_rarely_alarms() {
    // 15% interval-to-interval noise on the rate, 20,000 intervals (5.5 hours at 1 s).
    let mut rng = SplitMix64::new(42);
    let mut detector = detector();
    let alarms = (0..20_000)
        .filter(|_| {
            detector
                .observe_rate(noisy(50_000.0, 0.15, &mut rng))
                .is_some()
        })
        .count();
    assert!(alarms <= 2, "{alarms} false alarms");
}
