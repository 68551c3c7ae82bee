//! The one gate that every knob change passes through: [`KnobGuard::apply`].
//!
//! The guard owns the current knobs and exposes them read-only, so no other code path can
//! set a value outside the rules. Each call takes a proposal and returns the knobs that
//! actually change. The rules, applied in this order, are:
//!
//! 1. **Rate limit.** A batching knob changes at most once per `change_interval_min`
//!    intervals and a timing knob at most once per `timing_change_interval_min` intervals.
//!    A proposed change inside the window is dropped.
//! 2. **Step limit.** A knob moves at most by the factor `step_ratio_max` per change, or by
//!    its [`Knob::step_unit`] where that is larger, so a knob at 0 can still leave 0. After
//!    forced raises (rule 6), one change may also lower the knob back to the value it had
//!    before them. The raise followed the measurements in one step, and undoing it once
//!    they allow needs no more steps than that.
//! 3. **Bounds.** Every knob stays inside its configured `[min, max]`.
//! 4. **Memory.** `batch_bytes_max × inflight_appends_max × peers ≤ memory_budget_bytes`.
//!    A proposal that breaks it keeps the current `inflight_appends_max`, and then the
//!    current `batch_bytes_max`, which satisfied it.
//! 5. **Timing shape.** `heartbeat_interval ≤ election_timeout_min / 3` and
//!    `election_timeout_max ≥ ceil(election_timeout_spread × election_timeout_min)`. A
//!    proposal that breaks either keeps the current timing knobs.
//! 6. **Election timeout floor.** `election_timeout_min ≥ safety_factor × (p99.9 RTT +
//!    p99.9 fdatasync)`. The RTT is that of the follower after the slowest ones a quorum
//!    can spare (`IntervalSamples::rtt_p999_quorum_micros`), because a spurious election
//!    or step-down needs more followers to fall behind than that. The floor is also at
//!    least `stall_safety_factor` × the maximum stall of the shard's loop in the last
//!    `stall_window_intervals` intervals (see [`SafetyRules::stall_floor_micros`]). When
//!    the current value is below the floor, the guard raises it to
//!    [`FORCED_RAISE_HEADROOM`] × the floor at once, ignoring the rate and step limits,
//!    and raises the max to keep the spread. These are the only forced changes, and
//!    [`KnobChange::forced`] marks them.
//!
//! When the floor exceeds the configured max of `election_timeout_min_micros`, the rule
//! cannot be met: the guard uses the max bound and reports
//! [`GuardOutcome::floor_unsatisfiable`], and the operator should raise the bound.
//!
//! A forced raise may follow another change of the same knob within the rate-limit window,
//! because a timeout below the floor risks spurious elections. Apart from that the rate
//! limit holds for every knob.

use crate::config::{ConfigError, TuningConfig};
use crate::knobs::{Knob, KnobBounds, Knobs};

/// The factor above the floor that a forced raise of the election timeout goes to, so that
/// ordinary noise in the p99.9 latencies does not force a raise every interval.
pub const FORCED_RAISE_HEADROOM: f64 = 1.25;

/// The rules the guard enforces, taken from the configuration and the group size.
#[derive(Debug, Clone, PartialEq)]
pub struct SafetyRules {
    pub bounds: KnobBounds,
    pub safety_factor: f64,
    pub stall_safety_factor: f64,
    pub election_timeout_spread: f64,
    pub memory_budget_bytes: u64,
    /// Followers the leader replicates to.
    pub peers: u64,
    pub change_interval_min: u64,
    pub timing_change_interval_min: u64,
    pub step_ratio_max: u64,
}

impl SafetyRules {
    /// Collects the rules from a validated `config` for a leader with `peers` followers.
    pub fn from_config(config: &TuningConfig, peers: u64) -> Self {
        Self {
            bounds: config.bounds,
            safety_factor: config.safety_factor,
            stall_safety_factor: config.stall_safety_factor,
            election_timeout_spread: config.election_timeout_spread,
            memory_budget_bytes: config.memory_budget_bytes,
            peers,
            change_interval_min: config.change_interval_min,
            timing_change_interval_min: config.timing_change_interval_min,
            step_ratio_max: config.step_ratio_max,
        }
    }

    /// Returns the election timeout floor for the observed p99.9 latencies, saturating.
    pub fn election_timeout_floor_micros(
        &self,
        rtt_p999_micros: u64,
        fsync_p999_micros: u64,
    ) -> u64 {
        let sum = rtt_p999_micros.saturating_add(fsync_p999_micros) as f64;
        saturating_u64(sum * self.safety_factor)
    }

    /// Returns the election timeout floor for the maximum recent stall of the shard's loop,
    /// saturating.
    pub fn stall_floor_micros(&self, stall_max_micros: u64) -> u64 {
        saturating_u64(stall_max_micros as f64 * self.stall_safety_factor)
    }

    /// Returns the smallest election timeout max that keeps the spread above `min_micros`.
    pub fn election_timeout_max_floor_micros(&self, min_micros: u64) -> u64 {
        saturating_u64((min_micros as f64 * self.election_timeout_spread).ceil())
    }

    /// Returns whether the in-flight payload of `knobs` fits the memory budget.
    pub fn memory_fits(&self, knobs: &Knobs) -> bool {
        let in_flight = u128::from(knobs.batch_bytes_max)
            * u128::from(knobs.inflight_appends_max)
            * u128::from(self.peers);
        in_flight <= u128::from(self.memory_budget_bytes)
    }

    /// Returns whether the heartbeat and the election timeout max fit the election timeout min.
    pub fn timing_shape_fits(&self, knobs: &Knobs) -> bool {
        knobs.heartbeat_interval_micros <= knobs.election_timeout_min_micros / 3
            && knobs.election_timeout_max_micros
                >= self.election_timeout_max_floor_micros(knobs.election_timeout_min_micros)
    }

    /// Returns a description of every rule `knobs` breaks that does not depend on
    /// observations: bounds, memory and timing shape. Empty means all hold.
    pub fn violations(&self, knobs: &Knobs) -> Vec<String> {
        let mut violations = Vec::new();
        for knob in Knob::ALL {
            let range = self.bounds.get(knob);
            let value = knobs.get(knob);
            if !range.contains(value) {
                violations.push(format!(
                    "{knob} = {value} outside bounds.{knob} [{}, {}]",
                    range.min, range.max
                ));
            }
        }
        if !self.memory_fits(knobs) {
            violations.push(format!(
                "batch_bytes_max {} × inflight_appends_max {} × peers {} exceeds memory_budget_bytes {}",
                knobs.batch_bytes_max,
                knobs.inflight_appends_max,
                self.peers,
                self.memory_budget_bytes
            ));
        }
        if knobs.heartbeat_interval_micros > knobs.election_timeout_min_micros / 3 {
            violations.push(format!(
                "heartbeat_interval_micros {} exceeds election_timeout_min_micros {} / 3",
                knobs.heartbeat_interval_micros, knobs.election_timeout_min_micros
            ));
        }
        let max_floor = self.election_timeout_max_floor_micros(knobs.election_timeout_min_micros);
        if knobs.election_timeout_max_micros < max_floor {
            violations.push(format!(
                "election_timeout_max_micros {} below election_timeout_spread × election_timeout_min_micros = {max_floor}",
                knobs.election_timeout_max_micros
            ));
        }
        violations
    }
}

/// Converts a float to `u64`, mapping NaN and negatives to 0 and overflow to `u64::MAX`.
pub(crate) fn saturating_u64(value: f64) -> u64 {
    if value.is_nan() || value <= 0.0 {
        0
    } else if value >= u64::MAX as f64 {
        u64::MAX
    } else {
        value as u64
    }
}

/// One knob that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnobChange {
    pub knob: Knob,
    pub from: u64,
    pub to: u64,
    /// Whether the election timeout floor forced the change past the rate and step limits.
    pub forced: bool,
}

/// The result of one [`KnobGuard::apply`] call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuardOutcome {
    pub changes: Vec<KnobChange>,
    /// The election timeout floor of this call, before clamping to the bounds.
    pub election_timeout_floor_micros: u64,
    /// Whether the floor exceeded the max bound, so the max bound applies instead.
    pub floor_unsatisfiable: bool,
}

/// The owner of the current knobs; every change goes through [`KnobGuard::apply`].
#[derive(Debug, Clone)]
pub struct KnobGuard {
    rules: SafetyRules,
    current: Knobs,
    /// The interval of each knob's last change, indexed by [`Knob::index`].
    last_change: [Option<u64>; Knob::ALL.len()],
    /// Each knob's value before the forced raises since its last unforced change, indexed
    /// by [`Knob::index`]: the lowest value one change may return it to.
    before_forced_raise: [Option<u64>; Knob::ALL.len()],
}

impl KnobGuard {
    /// Creates a guard whose current knobs are `initial`.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::StaticKnob`] when `initial` breaks a bound, the memory budget
    /// or the timing shape, naming the knob and the rule.
    pub fn new(rules: SafetyRules, initial: Knobs) -> Result<Self, ConfigError> {
        for knob in Knob::ALL {
            let range = rules.bounds.get(knob);
            let value = initial.get(knob);
            if !range.contains(value) {
                return Err(ConfigError::StaticKnob {
                    knob: knob.name(),
                    value,
                    rule: format!("bounds [{}, {}]", range.min, range.max),
                    key: format!("bounds.{}", knob.name()),
                });
            }
        }
        if !rules.memory_fits(&initial) {
            return Err(ConfigError::StaticKnob {
                knob: Knob::BatchBytesMax.name(),
                value: initial.batch_bytes_max,
                rule: format!(
                    "batch_bytes_max × inflight_appends_max {} × peers {} ≤ {}",
                    initial.inflight_appends_max, rules.peers, rules.memory_budget_bytes
                ),
                key: "memory_budget_bytes".into(),
            });
        }
        if initial.heartbeat_interval_micros > initial.election_timeout_min_micros / 3 {
            return Err(ConfigError::StaticKnob {
                knob: Knob::HeartbeatIntervalMicros.name(),
                value: initial.heartbeat_interval_micros,
                rule: format!(
                    "heartbeat ≤ election_timeout_min_micros {} / 3",
                    initial.election_timeout_min_micros
                ),
                key: "bounds.heartbeat_interval_micros".into(),
            });
        }
        let max_floor =
            rules.election_timeout_max_floor_micros(initial.election_timeout_min_micros);
        if initial.election_timeout_max_micros < max_floor {
            return Err(ConfigError::StaticKnob {
                knob: Knob::ElectionTimeoutMaxMicros.name(),
                value: initial.election_timeout_max_micros,
                rule: format!("election_timeout_max ≥ spread × election_timeout_min = {max_floor}"),
                key: "election_timeout_spread".into(),
            });
        }
        Ok(Self {
            rules,
            current: initial,
            last_change: [None; Knob::ALL.len()],
            before_forced_raise: [None; Knob::ALL.len()],
        })
    }

    /// Returns the knobs in force.
    pub fn current(&self) -> &Knobs {
        &self.current
    }

    /// Returns the rules this guard enforces.
    pub fn rules(&self) -> &SafetyRules {
        &self.rules
    }

    /// Returns whether the rate limit lets `knob` change in `interval`.
    pub fn may_change(&self, knob: Knob, interval: u64) -> bool {
        let window = if knob.is_timing() {
            self.rules.timing_change_interval_min
        } else {
            self.rules.change_interval_min
        };
        match self.last_change[knob.index()] {
            None => true,
            Some(last) => interval.saturating_sub(last) >= window,
        }
    }

    /// Returns the lowest value one change may set `knob` to from its current value: the
    /// lower of one step down and the value before the forced raises since its last
    /// unforced change.
    pub fn step_low(&self, knob: Knob) -> u64 {
        self.step_low_from(knob, self.current.get(knob))
    }

    fn step_low_from(&self, knob: Knob, from: u64) -> u64 {
        let ratio = self.rules.step_ratio_max.max(2);
        let step = (from / ratio).min(from.saturating_sub(knob.step_unit()));
        match self.before_forced_raise[knob.index()] {
            Some(before) => step.min(before),
            None => step,
        }
    }

    fn step_limited(&self, knob: Knob, from: u64, to: u64) -> u64 {
        let ratio = self.rules.step_ratio_max.max(2);
        let low = self.step_low_from(knob, from);
        let high = from
            .saturating_mul(ratio)
            .max(from.saturating_add(knob.step_unit()));
        to.clamp(low, high)
    }

    /// Applies as much of `proposal` as the rules allow in `interval` and returns what changed.
    ///
    /// `floor_micros` is the election timeout floor from the latest observations, usually
    /// [`SafetyRules::election_timeout_floor_micros`]. Intervals must not decrease between
    /// calls for the rate limit to mean anything.
    pub fn apply(&mut self, proposal: &Knobs, floor_micros: u64, interval: u64) -> GuardOutcome {
        let current = self.current;
        let bounds = self.rules.bounds;
        let mut candidate = current;
        for knob in Knob::ALL {
            let target = proposal.get(knob);
            let from = current.get(knob);
            if target == from || !self.may_change(knob, interval) {
                continue;
            }
            let stepped = self.step_limited(knob, from, target);
            candidate.set(knob, bounds.get(knob).clamp(stepped));
        }

        if !self.rules.memory_fits(&candidate) {
            candidate.inflight_appends_max = current.inflight_appends_max;
        }
        if !self.rules.memory_fits(&candidate) {
            candidate.batch_bytes_max = current.batch_bytes_max;
        }

        let election_range = bounds.election_timeout_min_micros;
        let floor_unsatisfiable = floor_micros > election_range.max;
        let required_min = election_range.clamp(floor_micros);
        let keep_current_timing = !self.rules.timing_shape_fits(&candidate)
            || (candidate.election_timeout_min_micros < required_min
                && current.election_timeout_min_micros >= required_min);
        if keep_current_timing {
            candidate.heartbeat_interval_micros = current.heartbeat_interval_micros;
            candidate.election_timeout_min_micros = current.election_timeout_min_micros;
            candidate.election_timeout_max_micros = current.election_timeout_max_micros;
        }

        let mut forced = [false; Knob::ALL.len()];
        if candidate.election_timeout_min_micros < required_min {
            let raised = saturating_u64(required_min as f64 * FORCED_RAISE_HEADROOM);
            candidate.election_timeout_min_micros = election_range.clamp(raised);
            forced[Knob::ElectionTimeoutMinMicros.index()] = true;
        }
        let max_floor = self
            .rules
            .election_timeout_max_floor_micros(candidate.election_timeout_min_micros);
        if candidate.election_timeout_max_micros < max_floor {
            candidate.election_timeout_max_micros =
                bounds.election_timeout_max_micros.clamp(max_floor);
            forced[Knob::ElectionTimeoutMaxMicros.index()] = true;
        }
        // Raising the min only loosens the heartbeat rule; this repair is a safety net.
        let heartbeat_cap = candidate.election_timeout_min_micros / 3;
        if candidate.heartbeat_interval_micros > heartbeat_cap {
            candidate.heartbeat_interval_micros =
                bounds.heartbeat_interval_micros.clamp(heartbeat_cap);
            forced[Knob::HeartbeatIntervalMicros.index()] = true;
        }

        let mut changes = Vec::new();
        for knob in Knob::ALL {
            let from = current.get(knob);
            let to = candidate.get(knob);
            if from != to {
                let index = knob.index();
                changes.push(KnobChange {
                    knob,
                    from,
                    to,
                    forced: forced[index],
                });
                self.last_change[index] = Some(interval);
                if forced[index] {
                    self.before_forced_raise[index].get_or_insert(from);
                } else {
                    self.before_forced_raise[index] = None;
                }
            }
        }
        debug_assert!(
            self.rules.violations(&candidate).is_empty(),
            "guard produced {:?}",
            self.rules.violations(&candidate)
        );
        self.current = candidate;
        GuardOutcome {
            changes,
            election_timeout_floor_micros: floor_micros,
            floor_unsatisfiable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> SafetyRules {
        SafetyRules::from_config(&TuningConfig::default(), 2)
    }

    fn guard() -> KnobGuard {
        match KnobGuard::new(rules(), Knobs::default()) {
            Ok(guard) => guard,
            Err(error) => panic!("default knobs rejected: {error}"),
        }
    }

    #[test]
    fn step_limit_halves_or_doubles() {
        let mut guard = guard();
        let proposal = Knobs {
            batch_entries_max: 4_000,
            inflight_appends_max: 1,
            linger_micros: 1_000,
            ..Knobs::default()
        };
        let outcome = guard.apply(&proposal, 0, 1);
        assert_eq!(guard.current().batch_entries_max, 128);
        assert_eq!(guard.current().inflight_appends_max, 2);
        assert_eq!(guard.current().linger_micros, 25);
        assert_eq!(outcome.changes.len(), 3);
        assert!(outcome.changes.iter().all(|change| !change.forced));
    }

    #[test]
    fn rate_limit_blocks_second_change() {
        let mut guard = guard();
        let proposal = Knobs {
            batch_entries_max: 128,
            ..Knobs::default()
        };
        let _ = guard.apply(&proposal, 0, 10);
        let again = Knobs {
            batch_entries_max: 256,
            ..Knobs::default()
        };
        assert!(guard.apply(&again, 0, 12).changes.is_empty());
        assert_eq!(guard.apply(&again, 0, 13).changes.len(), 1);
    }

    #[test]
    fn memory_budget_keeps_current_pipeline() {
        let tight = SafetyRules {
            memory_budget_bytes: 64 << 20,
            ..rules()
        };
        let mut guard = match KnobGuard::new(tight, Knobs::default()) {
            Ok(guard) => guard,
            Err(error) => panic!("default knobs rejected: {error}"),
        };
        // 2 MiB × 8 × 2 peers = 32 MiB fits the 64 MiB budget.
        let proposal = Knobs {
            batch_bytes_max: 2 << 20,
            inflight_appends_max: 8,
            ..Knobs::default()
        };
        let _ = guard.apply(&proposal, 0, 1);
        let greedy = Knobs {
            batch_bytes_max: 16 << 20,
            inflight_appends_max: 16,
            ..*guard.current()
        };
        // The step limit allows 4 MiB × 16 × 2 = 128 MiB, which breaks the budget, so the
        // pipeline depth stays and only the batch grows: 4 MiB × 8 × 2 = 64 MiB.
        let _ = guard.apply(&greedy, 0, 100);
        assert!(guard.rules().memory_fits(guard.current()));
        assert_eq!(guard.current().inflight_appends_max, 8);
        assert_eq!(guard.current().batch_bytes_max, 4 << 20);
    }

    #[test]
    fn floor_forces_raise_past_rate_limit() {
        let mut guard = guard();
        let floor = guard.rules().election_timeout_floor_micros(150_000, 50_000);
        assert_eq!(floor, 600_000);
        let outcome = guard.apply(&Knobs::default(), floor, 1);
        assert_eq!(guard.current().election_timeout_min_micros, 750_000);
        assert!(guard.current().election_timeout_max_micros >= 1_125_000);
        assert!(outcome.changes.iter().all(|change| change.forced));
        // A second, higher floor in the next interval raises again.
        let _ = guard.apply(&Knobs::default(), 2_000_000, 2);
        assert_eq!(guard.current().election_timeout_min_micros, 2_500_000);
    }

    #[test]
    fn lowering_may_undo_forced_raise() {
        let mut guard = guard();
        let timing = |min: u64, max: u64| Knobs {
            election_timeout_min_micros: min,
            election_timeout_max_micros: max,
            ..Knobs::default()
        };
        let static_min = guard.current().election_timeout_min_micros;
        let static_max = guard.current().election_timeout_max_micros;
        // Two forced raises, to 750 ms and then to 2.5 s.
        let _ = guard.apply(&Knobs::default(), 600_000, 1);
        assert_eq!(guard.current().election_timeout_min_micros, 750_000);
        let raised = *guard.current();
        let _ = guard.apply(&raised, 2_000_000, 2);
        assert_eq!(guard.current().election_timeout_min_micros, 2_500_000);
        assert_eq!(
            guard.step_low(Knob::ElectionTimeoutMinMicros),
            static_min,
            "one change may return to the value before both raises"
        );

        // Once the floor is low again, one change goes back to the static timing, past the
        // step limit of 2.
        let outcome = guard.apply(&timing(static_min, static_max), 10_000, 40);
        assert!(outcome.changes.iter().all(|change| !change.forced));
        assert_eq!(guard.current().election_timeout_min_micros, static_min);
        assert_eq!(guard.current().election_timeout_max_micros, static_max);

        // Below it, the step limit applies again.
        let _ = guard.apply(&timing(10_000, 20_000), 10_000, 80);
        assert_eq!(
            guard.current().election_timeout_min_micros,
            static_min / 2,
            "a lowering past the value before the raise is step-limited"
        );
    }

    #[test]
    fn unsatisfiable_floor_uses_max_bound() {
        let mut guard = guard();
        let outcome = guard.apply(&Knobs::default(), u64::MAX, 1);
        assert!(outcome.floor_unsatisfiable);
        assert_eq!(guard.current().election_timeout_min_micros, 10_000_000);
        assert!(guard.rules().violations(guard.current()).is_empty());
    }

    #[test]
    fn lowering_below_floor_is_dropped() {
        let mut guard = guard();
        let proposal = Knobs {
            election_timeout_min_micros: 300_000,
            election_timeout_max_micros: 600_000,
            heartbeat_interval_micros: 50_000,
            ..Knobs::default()
        };
        let outcome = guard.apply(&proposal, 400_000, 1);
        assert!(outcome.changes.is_empty());
        assert_eq!(guard.current().election_timeout_min_micros, 500_000);
    }

    #[test]
    fn static_knobs_outside_bounds_rejected() {
        let knobs = Knobs {
            linger_micros: 1_000_000,
            ..Knobs::default()
        };
        let error = KnobGuard::new(rules(), knobs)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let message = error.err().unwrap_or_default();
        assert!(message.contains("linger_micros = 1000000"), "{message}");
        assert!(message.contains("tuning.bounds.linger_micros"), "{message}");
    }
}
