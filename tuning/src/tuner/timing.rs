//! The group timing of an enabled tuner: the election timeout floor and the proposals
//! that lower the timing toward it.

use super::Active;
use super::advance_streak;
use crate::config::TuningConfig;
use crate::knobs::{Knob, Knobs};
use crate::safety::{FORCED_RAISE_HEADROOM, saturating_u64};
use crate::tuner::Measurement;
use std::collections::VecDeque;

/// The quantile of the recent per-interval floors that the tuner lowers the election timeout
/// toward, so that one noisy interval does not hold the timeout up for a whole window.
pub const FLOOR_ENVELOPE_QUANTILE: f64 = 0.9;

/// Returns the floor that timing may be lowered toward: the [`FLOOR_ENVELOPE_QUANTILE`]
/// (nearest rank) of `floors`, but never below `latest`, the floor the guard enforces now.
pub(super) fn floor_envelope(floors: &VecDeque<u64>, latest: u64) -> u64 {
    let mut sorted: Vec<u64> = floors.iter().copied().collect();
    sorted.sort_unstable();
    let rank = (FLOOR_ENVELOPE_QUANTILE * sorted.len() as f64).ceil() as usize;
    let quantile = sorted.get(rank.saturating_sub(1)).copied().unwrap_or(0);
    quantile.max(latest)
}

impl Active {
    /// Returns the election timeout floor to enforce now: the larger of the latency floor
    /// and the stall floor. The latency floor takes each p99.9 from the latest interval
    /// that measured it. An interval that measured neither keeps the previous floor,
    /// because it carries no information about the network. The stall floor covers the
    /// maximum stall of the shard's loop in the last `stall_window_intervals` intervals.
    pub(super) fn update_floor(&mut self, config: &TuningConfig, measured: Measurement) -> u64 {
        self.stalls.push_back(measured.stall_max_micros);
        let stall_window = config.stall_window_intervals.clamp(1, 100_000) as usize;
        while self.stalls.len() > stall_window {
            self.stalls.pop_front();
        }
        let stall_max = self.stalls.iter().copied().max().unwrap_or(0);
        let stall_floor = self.guard.rules().stall_floor_micros(stall_max);

        // A side this interval did not measure counts at its latest measurement, and at 0
        // before its first. Holding the last floor instead would hold a follower's floor
        // at its highest ever, since a follower measures no round trip.
        let measured_any =
            measured.rtt_p999_micros.is_some() || measured.fsync_p999_micros.is_some();
        if let Some(rtt) = measured.rtt_p999_micros {
            self.last_rtt_p999_micros = Some(rtt);
        }
        if let Some(fsync) = measured.fsync_p999_micros {
            self.last_fsync_p999_micros = Some(fsync);
        }
        let latency_floor = measured_any.then(|| {
            self.guard.rules().election_timeout_floor_micros(
                self.last_rtt_p999_micros.unwrap_or(0),
                self.last_fsync_p999_micros.unwrap_or(0),
            )
        });
        let Some(latency_floor) = latency_floor else {
            // Nothing measured: the window keeps only floors that measurements gave, but a
            // stall still counts, since it happened whatever the network did.
            if stall_floor > self.last_floor_micros {
                self.last_floor_micros = stall_floor;
                self.stall_binds_micros = Some(stall_max);
            }
            return self.last_floor_micros;
        };
        self.stall_binds_micros = (stall_floor > latency_floor).then_some(stall_max);
        self.last_floor_micros = latency_floor.max(stall_floor);
        self.floors.push_back(self.last_floor_micros);
        let window = self
            .guard
            .rules()
            .timing_change_interval_min
            .clamp(1, 10_000) as usize;
        while self.floors.len() > window {
            self.floors.pop_front();
        }
        self.last_floor_micros
    }

    // NOTE: the tuner only lowers timing here. After a forced raise the heartbeat keeps its
    // old value, which is safe but sends more heartbeats than the static ratio would.
    /// Lowers the group timing toward the floor envelope once the current election timeout
    /// has exceeded it by the margin for long enough.
    pub(super) fn propose_timing(
        &mut self,
        config: &TuningConfig,
        interval: u64,
        proposal: &mut Knobs,
    ) {
        let rules = self.guard.rules();
        let window = rules.timing_change_interval_min.clamp(1, 10_000) as usize;
        if self.floors.len() < window {
            // Too few measured intervals to know how low the timing may go; a floor of 0
            // would mean no measurement, not a fast network.
            return;
        }
        let bounds = rules.bounds;
        let envelope = floor_envelope(&self.floors, self.last_floor_micros);
        let desired = bounds
            .election_timeout_min_micros
            .clamp(saturating_u64(envelope as f64 * FORCED_RAISE_HEADROOM));
        let current = *self.guard.current();
        let margin = 1.0 + config.hysteresis_percent / 100.0;
        let lower = (current.election_timeout_min_micros as f64) > desired as f64 * margin;
        let streak = advance_streak(&mut self.pending_timing, lower.then_some(desired));
        let allowed = [
            Knob::HeartbeatIntervalMicros,
            Knob::ElectionTimeoutMinMicros,
            Knob::ElectionTimeoutMaxMicros,
        ]
        .iter()
        .all(|&knob| self.guard.may_change(knob, interval));
        if !lower || streak < config.hysteresis_intervals || !allowed {
            return;
        }
        // Step the min first, then derive the others from it, so the shape holds after the
        // guard's per-knob step limit. After a forced raise the step may go straight back
        // to the timing before it.
        let min = desired.max(self.guard.step_low(Knob::ElectionTimeoutMinMicros));
        let heartbeat = bounds
            .heartbeat_interval_micros
            .clamp(min / self.heartbeat_divisor)
            .min(current.heartbeat_interval_micros);
        let max_floor = rules.election_timeout_max_floor_micros(min);
        let max = bounds
            .election_timeout_max_micros
            .clamp(saturating_u64(min as f64 * self.election_max_ratio).max(max_floor));
        proposal.election_timeout_min_micros = min;
        proposal.heartbeat_interval_micros = heartbeat;
        proposal.election_timeout_max_micros = max;
    }
}
