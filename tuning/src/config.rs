//! The `[tuning]` configuration table ([`TuningConfig`]) and its validation.
//!
//! Every field has a default, so an empty table is valid and leaves the tuner disabled.
//! Unknown keys are rejected so that a misspelt key fails at startup instead of being
//! ignored. [`TuningConfig::validate`] checks ranges and the relations between bounds that
//! the safety rules need to be satisfiable. Each error names the key, the value and what is
//! allowed.

use crate::knobs::{Knob, KnobBounds};
use serde::Deserialize;

/// The optimisation goal as written in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveKind {
    #[default]
    Latency,
    Throughput,
}

/// The optimisation goal with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Objective {
    /// Minimise p99 commit latency while throughput keeps up with the arrival rate. Among
    /// settings that meet `p99_target_micros`, prefer the most throughput headroom.
    Latency { p99_target_micros: u64 },
    /// Maximise throughput capacity, with p99 commit latency as the tie-break.
    Throughput,
}

/// The `[tuning]` table of the engine configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuningConfig {
    /// Whether the tuner changes anything; when false, the static knobs apply unchanged.
    pub enabled: bool,
    pub objective: ObjectiveKind,
    /// The p99 commit latency the latency objective aims for.
    pub p99_target_micros: u64,
    /// The tuning interval: how often the engine calls [`crate::Tuner::observe`].
    pub interval_ms: u64,
    /// Hard limits of every knob.
    pub bounds: KnobBounds,
    /// The election timeout must be at least this many times the observed p99.9 round-trip
    /// time plus the observed p99.9 fdatasync latency.
    pub safety_factor: f64,
    /// The election timeout must also be at least this many times the maximum stall of the
    /// shard's loop in the last `stall_window_intervals` intervals, because a leader on the
    /// shard sends no heartbeat during a stall. 0 leaves stalls out of the floor.
    pub stall_safety_factor: f64,
    /// Intervals over which the maximum stall is kept. Stalls are rare, so the
    /// maximum of one interval would let the timeout fall below them between two.
    pub stall_window_intervals: u64,
    /// The election timeout max must be at least this many times the election timeout min.
    pub election_timeout_spread: f64,
    /// The limit on `batch_bytes_max × inflight_appends_max × peers`, the bytes of
    /// AppendEntries payload the leader may have in flight.
    pub memory_budget_bytes: u64,
    /// A batching knob changes at most once per this many intervals.
    pub change_interval_min: u64,
    /// A timing knob changes at most once per this many intervals, except for a safety raise.
    pub timing_change_interval_min: u64,
    /// A knob changes by at most this factor per step (or by its step unit).
    pub step_ratio_max: u64,
    /// A change needs a predicted improvement of at least this many percent.
    pub hysteresis_percent: f64,
    /// The improvement must be predicted in this many consecutive intervals.
    pub hysteresis_intervals: u64,
    /// Throughput capacity must exceed the arrival rate by this many percent to count as
    /// keeping up.
    pub throughput_headroom_percent: f64,
    /// Intervals with enough commits needed before the tuner changes batching knobs.
    pub cold_start_intervals: u64,
    /// Commits an interval needs to count towards the cold start and to update the model.
    pub cold_start_commits_min: u64,
    /// The phi value at which a peer is suspected.
    pub phi_threshold: f64,
    /// Heartbeat gaps the phi detector keeps per peer.
    pub phi_window: usize,
    /// Gaps the phi detector needs before it estimates anything.
    pub phi_min_gaps: usize,
    /// The Page–Hinkley threshold on the cumulative deviation of the natural logarithm of
    /// the arrival rate.
    pub change_point_threshold: f64,
    /// The Page–Hinkley drift tolerance, in the same log units, absorbed per interval.
    pub change_point_drift: f64,
    /// The seed of the tuner's tie-breaking.
    pub seed: u64,
}

impl Default for TuningConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            objective: ObjectiveKind::Latency,
            p99_target_micros: 2_000,
            interval_ms: 1_000,
            bounds: KnobBounds::default(),
            // 3 rather than 10: with 10, failover after a host crash under load took longer
            // than with the static timing. Stalls of the shard's loop, which let a factor of
            // 3 cause elections with one client, now count in the floor through
            // `stall_safety_factor` (see the bench docs).
            safety_factor: 3.0,
            stall_safety_factor: 2.0,
            stall_window_intervals: 600,
            election_timeout_spread: 1.5,
            memory_budget_bytes: 256 << 20,
            change_interval_min: 3,
            timing_change_interval_min: 30,
            step_ratio_max: 2,
            hysteresis_percent: 10.0,
            hysteresis_intervals: 2,
            throughput_headroom_percent: 10.0,
            cold_start_intervals: 3,
            cold_start_commits_min: 100,
            phi_threshold: 8.0,
            phi_window: 100,
            phi_min_gaps: 10,
            change_point_threshold: 2.0,
            change_point_drift: 0.1,
            seed: 0,
        }
    }
}

/// A configuration value that the tuner cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid tuning.{key} = {value}: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    #[error(
        "static knob {knob} = {value} violates {rule}; change the static value or widen tuning.{key}"
    )]
    StaticKnob {
        knob: &'static str,
        value: u64,
        rule: String,
        key: String,
    },
}

fn invalid(key: &str, value: impl ToString, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

fn check_float(key: &str, value: f64, min: f64, max: f64) -> Result<(), ConfigError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            value,
            format!("a finite number in [{min}, {max}]"),
        ))
    }
}

fn check_integer(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(key, value, format!("an integer in [{min}, {max}]")))
    }
}

impl TuningConfig {
    /// Returns the objective with its parameters.
    pub fn objective(&self) -> Objective {
        match self.objective {
            ObjectiveKind::Latency => Objective::Latency {
                p99_target_micros: self.p99_target_micros,
            },
            ObjectiveKind::Throughput => Objective::Throughput,
        }
    }

    /// Checks every value and the relations the safety rules depend on.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Invalid`] naming the first invalid key, its value and the
    /// allowed values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_integer("p99_target_micros", self.p99_target_micros, 1, u64::MAX)?;
        check_integer("interval_ms", self.interval_ms, 1, 3_600_000)?;
        check_float("safety_factor", self.safety_factor, 1.0, 1_000.0)?;
        check_float(
            "stall_safety_factor",
            self.stall_safety_factor,
            0.0,
            1_000.0,
        )?;
        check_integer(
            "stall_window_intervals",
            self.stall_window_intervals,
            1,
            100_000,
        )?;
        if !(self.election_timeout_spread.is_finite()
            && self.election_timeout_spread > 1.0
            && self.election_timeout_spread <= 100.0)
        {
            return Err(invalid(
                "election_timeout_spread",
                self.election_timeout_spread,
                "a finite number greater than 1 and at most 100",
            ));
        }
        check_integer("memory_budget_bytes", self.memory_budget_bytes, 1, u64::MAX)?;
        check_integer("change_interval_min", self.change_interval_min, 1, 10_000)?;
        check_integer(
            "timing_change_interval_min",
            self.timing_change_interval_min,
            self.change_interval_min,
            100_000,
        )?;
        check_integer("step_ratio_max", self.step_ratio_max, 2, 16)?;
        if !(self.hysteresis_percent.is_finite()
            && self.hysteresis_percent >= 0.0
            && self.hysteresis_percent < 100.0)
        {
            return Err(invalid(
                "hysteresis_percent",
                self.hysteresis_percent,
                "a finite number in [0, 100)",
            ));
        }
        check_integer("hysteresis_intervals", self.hysteresis_intervals, 1, 100)?;
        check_float(
            "throughput_headroom_percent",
            self.throughput_headroom_percent,
            0.0,
            1_000.0,
        )?;
        check_integer("cold_start_intervals", self.cold_start_intervals, 0, 10_000)?;
        if !(self.phi_threshold.is_finite()
            && self.phi_threshold > 0.0
            && self.phi_threshold <= 1_000.0)
        {
            return Err(invalid(
                "phi_threshold",
                self.phi_threshold,
                "a finite number greater than 0 and at most 1000",
            ));
        }
        check_integer("phi_window", self.phi_window as u64, 2, 10_000)?;
        check_integer(
            "phi_min_gaps",
            self.phi_min_gaps as u64,
            2,
            self.phi_window as u64,
        )?;
        if !(self.change_point_threshold.is_finite()
            && self.change_point_threshold > 0.0
            && self.change_point_threshold <= 1e6)
        {
            return Err(invalid(
                "change_point_threshold",
                self.change_point_threshold,
                "a finite number greater than 0 and at most 1e6",
            ));
        }
        check_float("change_point_drift", self.change_point_drift, 0.0, 100.0)?;
        self.validate_bounds()
    }

    fn validate_bounds(&self) -> Result<(), ConfigError> {
        let bounds = &self.bounds;
        for knob in Knob::ALL {
            let range = bounds.get(knob);
            let key = format!("bounds.{}", knob.name());
            if range.min > range.max {
                return Err(invalid(
                    &format!("{key}.min"),
                    range.min,
                    format!("at most {key}.max = {}", range.max),
                ));
            }
            // Only linger may be 0: a zero batch, pipeline depth or timeout stops progress.
            if knob != Knob::LingerMicros && range.min == 0 {
                return Err(invalid(&format!("{key}.min"), 0, "at least 1"));
            }
        }
        let heartbeat = bounds.heartbeat_interval_micros;
        let election_min = bounds.election_timeout_min_micros;
        let election_max = bounds.election_timeout_max_micros;
        // The guard lowers the heartbeat to election_timeout_min / 3, which must stay inside
        // the heartbeat bounds even at the smallest election timeout.
        if election_min.min / 3 < heartbeat.min {
            return Err(invalid(
                "bounds.election_timeout_min_micros.min",
                election_min.min,
                format!(
                    "at least 3 × bounds.heartbeat_interval_micros.min = {}",
                    heartbeat.min.saturating_mul(3)
                ),
            ));
        }
        // The guard raises the election timeout max to spread × min, which must fit under
        // its bound even when min sits at its own upper bound.
        let spread_max = (election_min.max as f64 * self.election_timeout_spread).ceil();
        if (election_max.max as f64) < spread_max {
            return Err(invalid(
                "bounds.election_timeout_max_micros.max",
                election_max.max,
                format!(
                    "at least election_timeout_spread × bounds.election_timeout_min_micros.max = {spread_max}"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_disabled() {
        let config = TuningConfig::default();
        assert_eq!(config.validate(), Ok(()));
        assert!(!config.enabled);
        assert_eq!(
            config.objective(),
            Objective::Latency {
                p99_target_micros: 2_000
            }
        );
    }

    #[test]
    fn error_message_names_key_value_and_range() {
        let config = TuningConfig {
            safety_factor: 0.5,
            ..TuningConfig::default()
        };
        let message = config.validate().map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err("invalid tuning.safety_factor = 0.5: expected a finite number in [1, 1000]".into())
        );
    }
}
