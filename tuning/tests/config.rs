//! Validation of the `[tuning]` table: every invalid key is named in the error.

use serde::Deserialize;
use serde::de::IntoDeserializer;
use serde::de::value::{Error as DeError, MapDeserializer};
use shardraft_tuning::config::{ConfigError, ObjectiveKind};
use shardraft_tuning::knobs::{KnobRange, Knobs};
use shardraft_tuning::{Tuner, TuningConfig};

fn key_of(config: &TuningConfig) -> Option<String> {
    match config.validate() {
        Err(ConfigError::Invalid { key, .. }) => Some(key),
        _ => None,
    }
}

#[test]
fn each_invalid_key_is_named() {
    let base = TuningConfig::default;
    let cases: Vec<(&str, TuningConfig)> = vec![
        (
            "p99_target_micros",
            TuningConfig {
                p99_target_micros: 0,
                ..base()
            },
        ),
        (
            "interval_ms",
            TuningConfig {
                interval_ms: 0,
                ..base()
            },
        ),
        (
            "safety_factor",
            TuningConfig {
                safety_factor: f64::NAN,
                ..base()
            },
        ),
        (
            "election_timeout_spread",
            TuningConfig {
                election_timeout_spread: 1.0,
                ..base()
            },
        ),
        (
            "memory_budget_bytes",
            TuningConfig {
                memory_budget_bytes: 0,
                ..base()
            },
        ),
        (
            "change_interval_min",
            TuningConfig {
                change_interval_min: 0,
                ..base()
            },
        ),
        (
            "timing_change_interval_min",
            TuningConfig {
                timing_change_interval_min: 1,
                ..base()
            },
        ),
        (
            "step_ratio_max",
            TuningConfig {
                step_ratio_max: 1,
                ..base()
            },
        ),
        (
            "hysteresis_percent",
            TuningConfig {
                hysteresis_percent: 100.0,
                ..base()
            },
        ),
        (
            "hysteresis_intervals",
            TuningConfig {
                hysteresis_intervals: 0,
                ..base()
            },
        ),
        (
            "throughput_headroom_percent",
            TuningConfig {
                throughput_headroom_percent: -1.0,
                ..base()
            },
        ),
        (
            "cold_start_intervals",
            TuningConfig {
                cold_start_intervals: 1_000_000,
                ..base()
            },
        ),
        (
            "phi_threshold",
            TuningConfig {
                phi_threshold: 0.0,
                ..base()
            },
        ),
        (
            "phi_window",
            TuningConfig {
                phi_window: 1,
                ..base()
            },
        ),
        (
            "phi_min_gaps",
            TuningConfig {
                phi_min_gaps: 1_000,
                ..base()
            },
        ),
        (
            "change_point_threshold",
            TuningConfig {
                change_point_threshold: f64::INFINITY,
                ..base()
            },
        ),
        (
            "change_point_drift",
            TuningConfig {
                change_point_drift: -0.5,
                ..base()
            },
        ),
    ];
    for (key, config) in cases {
        assert_eq!(key_of(&config).as_deref(), Some(key), "{key}");
    }
}

#[test]
fn invalid_bounds_are_named() {
    let mut inverted = TuningConfig::default();
    inverted.bounds.linger_micros = KnobRange::new(10, 5);
    assert_eq!(
        key_of(&inverted).as_deref(),
        Some("bounds.linger_micros.min")
    );

    let mut zero_batch = TuningConfig::default();
    zero_batch.bounds.batch_entries_max = KnobRange::new(0, 5);
    assert_eq!(
        key_of(&zero_batch).as_deref(),
        Some("bounds.batch_entries_max.min")
    );

    let mut heartbeat = TuningConfig::default();
    heartbeat.bounds.heartbeat_interval_micros = KnobRange::new(5_000, 10_000);
    assert_eq!(
        key_of(&heartbeat).as_deref(),
        Some("bounds.election_timeout_min_micros.min")
    );

    let mut spread = TuningConfig::default();
    spread.bounds.election_timeout_max_micros = KnobRange::new(15_000, 10_000_000);
    assert_eq!(
        key_of(&spread).as_deref(),
        Some("bounds.election_timeout_max_micros.max")
    );
}

#[test]
fn error_message_names_value_and_fix() {
    let config = TuningConfig {
        step_ratio_max: 40,
        ..TuningConfig::default()
    };
    let message = config.validate().err().map(|error| error.to_string());
    assert_eq!(
        message.as_deref(),
        Some("invalid tuning.step_ratio_max = 40: expected an integer in [2, 16]")
    );
}

#[test]
fn static_knobs_outside_bounds_are_named_when_enabled() {
    let config = TuningConfig {
        enabled: true,
        ..TuningConfig::default()
    };
    let knobs = Knobs {
        inflight_appends_max: 1_000,
        ..Knobs::default()
    };
    let error = Tuner::new(config, knobs, 2)
        .err()
        .map(|error| error.to_string());
    let message = error.unwrap_or_default();
    assert!(message.contains("inflight_appends_max = 1000"), "{message}");
    assert!(
        message.contains("tuning.bounds.inflight_appends_max"),
        "{message}"
    );
}

#[test]
fn memory_budget_too_small_for_static_knobs() {
    let config = TuningConfig {
        enabled: true,
        memory_budget_bytes: 1 << 20,
        ..TuningConfig::default()
    };
    let error = Tuner::new(config, Knobs::default(), 2).err();
    assert!(
        matches!(&error, Some(ConfigError::StaticKnob { key, .. }) if key == "memory_budget_bytes"),
        "{error:?}"
    );
}

fn deserialize(entries: Vec<(&'static str, &'static str)>) -> Result<TuningConfig, DeError> {
    let map = MapDeserializer::new(entries.into_iter().map(|(k, v)| (k, v.into_deserializer())));
    TuningConfig::deserialize(map)
}

#[test]
fn deserialize_fills_defaults_and_parses_objective() {
    let config = deserialize(vec![("objective", "throughput")]);
    let config = config.map_err(|error| error.to_string());
    assert_eq!(
        config.map(|config| (config.objective, config.enabled, config.interval_ms)),
        Ok((ObjectiveKind::Throughput, false, 1_000))
    );
}

#[test]
fn deserialize_rejects_unknown_key() {
    let error = deserialize(vec![("safety_factr", "10")])
        .err()
        .map(|error| error.to_string());
    let message = error.unwrap_or_default();
    assert!(
        message.contains("unknown field `safety_factr`"),
        "{message}"
    );
}

#[test]
fn deserialize_rejects_unknown_objective() {
    let error = deserialize(vec![("objective", "speed")])
        .err()
        .map(|error| error.to_string());
    let message = error.unwrap_or_default();
    assert!(message.contains("unknown variant `speed`"), "{message}");
}
