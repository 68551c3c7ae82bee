//! A disabled tuner returns the static knobs exactly, whatever it observes.

mod common;
#[path = "common/streams.rs"]
mod streams;

use proptest::prelude::*;
use shardraft_tuning::knobs::Knobs;
use shardraft_tuning::{Tuner, TuningConfig};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn disabled_returns_static_knobs(
        stream in proptest::collection::vec(streams::samples(), 0..40),
        heartbeat in 1u64..1_000_000,
        linger in 0u64..u64::MAX,
    ) {
        // Static knobs far outside the tuning bounds are fine while disabled.
        let static_knobs = Knobs {
            heartbeat_interval_micros: heartbeat,
            linger_micros: linger,
            ..Knobs::default()
        };
        let mut tuner = Tuner::new(TuningConfig::default(), static_knobs, 2)
            .map_err(|error| TestCaseError::fail(error.to_string()))?;
        for samples in &stream {
            let decision = tuner.observe(samples);
            prop_assert_eq!(tuner.current(), &static_knobs);
            prop_assert!(decision.batching.is_none());
            prop_assert!(decision.timing.is_none());
            prop_assert!(decision.changes.is_empty());
            prop_assert!(decision.prediction.is_none());
        }
        prop_assert_eq!(tuner.current(), &static_knobs);
        prop_assert!(tuner.prediction().is_none());
    }
}
