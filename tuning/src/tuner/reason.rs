//! Human-readable reasons for knob changes, for logs and the metrics endpoint.

use super::Measurement;
use crate::knobs::Knob;
use crate::model::Prediction;
use crate::safety::KnobChange;

/// Formats a duration in microseconds with a unit that keeps 1–3 leading digits.
pub fn format_micros(micros: f64) -> String {
    let micros = if micros.is_finite() {
        micros.max(0.0)
    } else {
        0.0
    };
    if micros < 1_000.0 {
        format!("{micros:.0} µs")
    } else if micros < 1_000_000.0 {
        format!("{:.1} ms", micros / 1_000.0)
    } else {
        format!("{:.1} s", micros / 1_000_000.0)
    }
}

/// Formats a rate per second with a k or M suffix.
pub fn format_rate(per_second: f64) -> String {
    let rate = if per_second.is_finite() {
        per_second.max(0.0)
    } else {
        0.0
    };
    if rate < 1_000.0 {
        format!("{rate:.0}/s")
    } else if rate < 1_000_000.0 {
        format!("{:.0}k/s", rate / 1_000.0)
    } else {
        format!("{:.1}M/s", rate / 1_000_000.0)
    }
}

fn format_value(knob: Knob, value: u64) -> String {
    match knob {
        Knob::LingerMicros
        | Knob::HeartbeatIntervalMicros
        | Knob::ElectionTimeoutMinMicros
        | Knob::ElectionTimeoutMaxMicros => format_micros(value as f64),
        Knob::BatchBytesMax => {
            if value >= 1 << 20 && value & ((1 << 20) - 1) == 0 {
                format!("{} MiB", value >> 20)
            } else if value >= 1 << 10 && value & ((1 << 10) - 1) == 0 {
                format!("{} KiB", value >> 10)
            } else {
                format!("{value} B")
            }
        }
        Knob::BatchEntriesMax | Knob::InflightAppendsMax | Knob::ReadBatchMax => value.to_string(),
    }
}

/// The comparison behind a batching move, as the tuner made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Basis {
    /// The model predicted the candidate no worse than the arm in force, or, with `goal`,
    /// predicted a farther arm better by the margin and the candidate, one step toward it,
    /// worse by at most the margin.
    Predicted {
        current: Prediction,
        candidate: Prediction,
        goal: Option<Prediction>,
        exploring: bool,
    },
    /// The arm in force measured worse than the previous arm, so the tuner moves back.
    Measured {
        trial_p99_micros: f64,
        previous_p99_micros: f64,
    },
}

/// The election timeout floor behind a timing change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Floor {
    /// The floor in force.
    pub floor_micros: u64,
    /// The recent floors' quantile that a lower timeout heads for.
    pub envelope_micros: u64,
    /// The maximum recent stall of the shard's loop, when its floor set the floor.
    pub stall_micros: Option<u64>,
}

/// Describes why `change` happened: `basis` is the comparison behind a batching move and
/// `floor` the election timeout floor behind a timing change.
pub(super) fn describe(
    change: &KnobChange,
    measured: &Measurement,
    basis: Option<&Basis>,
    floor: Floor,
) -> String {
    let Floor {
        floor_micros,
        envelope_micros,
        stall_micros,
    } = floor;
    let head = format!(
        "{} {} → {}",
        change.knob,
        format_value(change.knob, change.from),
        format_value(change.knob, change.to)
    );
    if change.knob.is_timing() {
        let floor = format_micros(floor_micros as f64);
        return if change.forced {
            match stall_micros {
                Some(stall) => format!(
                    "{head}: election timeout floor {floor} (stall safety factor × the maximum recent stall of the shard's loop, {}) forced a raise",
                    format_micros(stall as f64)
                ),
                None => format!(
                    "{head}: election timeout floor {floor} (safety factor × (p99.9 RTT + p99.9 fdatasync)) forced a raise"
                ),
            }
        } else if change.to < change.from {
            let envelope = format_micros(envelope_micros as f64);
            let quantile = super::FLOOR_ENVELOPE_QUANTILE * 100.0;
            format!(
                "{head}: recent floors have a p{quantile:.0} of {envelope} and the latest is {floor}, so a shorter timeout stays safe"
            )
        } else {
            format!("{head}: follows the election timeout min")
        };
    }
    let rate = format_rate(measured.arrival_rate_per_second);
    match basis {
        Some(Basis::Predicted {
            current,
            candidate,
            goal,
            exploring,
        }) => {
            let toward = goal.map_or(String::new(), |goal| {
                format!(", toward {}", format_micros(goal.p99_micros))
            });
            let suffix = if *exploring { " (exploring)" } else { "" };
            format!(
                "{head}: arrival rate {rate}, predicted p99 {} → {}{toward}{suffix}",
                format_micros(current.p99_micros),
                format_micros(candidate.p99_micros)
            )
        }
        Some(Basis::Measured {
            trial_p99_micros,
            previous_p99_micros,
        }) => format!(
            "{head}: arrival rate {rate}, measured p99 {} → {} (moving back)",
            format_micros(*trial_p99_micros),
            format_micros(*previous_p99_micros)
        ),
        None => format!("{head}: arrival rate {rate}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_FLOOR: Floor = Floor {
        floor_micros: 0,
        envelope_micros: 0,
        stall_micros: None,
    };

    #[test]
    fn batching_reason_names_rate_and_prediction() {
        let change = KnobChange {
            knob: Knob::LingerMicros,
            from: 0,
            to: 40,
            forced: false,
        };
        let measured = Measurement {
            arrival_rate_per_second: 180_000.0,
            ..Measurement::default()
        };
        let prediction = |p99| Prediction {
            p50_micros: 100.0,
            p99_micros: p99,
            throughput_per_second: 0.0,
            capacity_per_second: 0.0,
        };
        let basis = Basis::Predicted {
            current: prediction(600.0),
            candidate: prediction(400.0),
            goal: None,
            exploring: false,
        };
        let text = describe(&change, &measured, Some(&basis), NO_FLOOR);
        assert_eq!(
            text,
            "linger_micros 0 µs → 40 µs: arrival rate 180k/s, predicted p99 600 µs → 400 µs"
        );
    }

    #[test]
    fn step_reason_names_goal() {
        let change = KnobChange {
            knob: Knob::LingerMicros,
            from: 0,
            to: 25,
            forced: false,
        };
        let prediction = |p99| Prediction {
            p50_micros: 100.0,
            p99_micros: p99,
            throughput_per_second: 0.0,
            capacity_per_second: 0.0,
        };
        let basis = Basis::Predicted {
            current: prediction(3_400.0),
            candidate: prediction(3_450.0),
            goal: Some(prediction(2_100.0)),
            exploring: false,
        };
        assert_eq!(
            describe(&change, &Measurement::default(), Some(&basis), NO_FLOOR),
            "linger_micros 0 µs → 25 µs: arrival rate 0/s, predicted p99 3.4 ms → 3.5 ms, toward 2.1 ms"
        );
    }

    #[test]
    fn move_back_reason_names_measurements() {
        let change = KnobChange {
            knob: Knob::LingerMicros,
            from: 25,
            to: 0,
            forced: false,
        };
        let measured = Measurement {
            arrival_rate_per_second: 60_000.0,
            ..Measurement::default()
        };
        let basis = Basis::Measured {
            trial_p99_micros: 4_095.0,
            previous_p99_micros: 2_047.0,
        };
        assert_eq!(
            describe(&change, &measured, Some(&basis), NO_FLOOR),
            "linger_micros 25 µs → 0 µs: arrival rate 60k/s, measured p99 4.1 ms → 2.0 ms (moving back)"
        );
    }

    #[test]
    fn units_scale() {
        assert_eq!(format_micros(1_500.0), "1.5 ms");
        assert_eq!(format_micros(2_500_000.0), "2.5 s");
        assert_eq!(format_micros(f64::NAN), "0 µs");
        assert_eq!(format_rate(2_500_000.0), "2.5M/s");
        assert_eq!(format_value(Knob::BatchBytesMax, 4 << 20), "4 MiB");
    }
}
