//! The bounded grid of candidate batching settings (arms).
//!
//! Each dimension (linger, entries per batch, AppendEntries in flight) is a geometric
//! series from the knob's lower bound to its upper bound with the configured step ratio.
//! A series from 0 continues at the knob's step unit, and the static value is added. Adjacent
//! grid values are therefore at most one guard step apart, so a move to a neighbouring arm
//! is never cut short by the step limit.

use crate::knobs::{Knob, KnobBounds, KnobRange, Knobs};

/// The maximum number of values in one dimension; the widest `u64` range with ratio 2 needs 65.
const MAX_DIMENSION_VALUES: usize = 80;

/// An arm: one index into each dimension of an [`ArmGrid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Arm {
    pub linger: u16,
    pub batch: u16,
    pub inflight: u16,
}

/// The knob values of one arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmSetting {
    pub linger_micros: u64,
    pub batch_entries_max: u64,
    pub inflight_appends_max: u64,
}

/// The candidate values of the three batching dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArmGrid {
    linger: Vec<u64>,
    batch: Vec<u64>,
    inflight: Vec<u64>,
}

fn geometric(range: KnobRange, ratio: u64, unit: u64, extra: u64) -> Vec<u64> {
    let mut values = Vec::new();
    let mut value = range.min;
    while value < range.max && values.len() < MAX_DIMENSION_VALUES - 2 {
        values.push(value);
        value = if value == 0 {
            unit.max(1)
        } else {
            value.saturating_mul(ratio.max(2))
        };
    }
    values.push(range.max);
    if range.contains(extra) {
        values.push(extra);
    }
    values.sort_unstable();
    values.dedup();
    values
}

/// Returns the index of the value closest to `target` on a log scale.
fn nearest_index(values: &[u64], target: u64) -> u16 {
    let log = |v: u64| (v as f64 + 1.0).ln();
    let mut best = 0usize;
    let mut best_distance = f64::INFINITY;
    for (index, &value) in values.iter().enumerate() {
        let distance = (log(value) - log(target)).abs();
        if distance < best_distance {
            best = index;
            best_distance = distance;
        }
    }
    best as u16
}

impl ArmGrid {
    /// Builds the grid inside `bounds` with step `ratio`, including the static values.
    pub fn new(bounds: &KnobBounds, ratio: u64, static_knobs: &Knobs) -> Self {
        Self {
            linger: geometric(
                bounds.linger_micros,
                ratio,
                Knob::LingerMicros.step_unit(),
                static_knobs.linger_micros,
            ),
            batch: geometric(
                bounds.batch_entries_max,
                ratio,
                Knob::BatchEntriesMax.step_unit(),
                static_knobs.batch_entries_max,
            ),
            inflight: geometric(
                bounds.inflight_appends_max,
                ratio,
                Knob::InflightAppendsMax.step_unit(),
                static_knobs.inflight_appends_max,
            ),
        }
    }

    /// Returns every arm count: the product of the dimension sizes.
    pub fn len(&self) -> usize {
        self.linger.len() * self.batch.len() * self.inflight.len()
    }

    /// Returns whether the grid has no arms; never true for a grid built by [`ArmGrid::new`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the values of `arm`; indices beyond a dimension use its last value.
    pub fn setting(&self, arm: Arm) -> ArmSetting {
        let pick = |values: &[u64], index: u16| {
            values
                .get(usize::from(index))
                .or(values.last())
                .copied()
                .unwrap_or(0)
        };
        ArmSetting {
            linger_micros: pick(&self.linger, arm.linger),
            batch_entries_max: pick(&self.batch, arm.batch),
            inflight_appends_max: pick(&self.inflight, arm.inflight),
        }
    }

    /// Returns the arm closest to the batching knobs of `knobs`.
    pub fn nearest(&self, knobs: &Knobs) -> Arm {
        Arm {
            linger: nearest_index(&self.linger, knobs.linger_micros),
            batch: nearest_index(&self.batch, knobs.batch_entries_max),
            inflight: nearest_index(&self.inflight, knobs.inflight_appends_max),
        }
    }

    /// Returns every arm within `radius` indices of `arm` in each dimension, `arm` included.
    pub fn window(&self, arm: Arm, radius: u16) -> Vec<Arm> {
        let span = |index: u16, len: usize| {
            let last = len.saturating_sub(1).min(usize::from(u16::MAX)) as u16;
            index.saturating_sub(radius)..=index.saturating_add(radius).min(last)
        };
        let mut arms = Vec::new();
        for linger in span(arm.linger, self.linger.len()) {
            for batch in span(arm.batch, self.batch.len()) {
                for inflight in span(arm.inflight, self.inflight.len()) {
                    arms.push(Arm {
                        linger,
                        batch,
                        inflight,
                    });
                }
            }
        }
        arms
    }

    /// Returns the up to 26 arms that differ from `arm` by at most one index per dimension.
    pub fn neighbours(&self, arm: Arm) -> Vec<Arm> {
        let steps = |index: u16, len: usize| -> Vec<u16> {
            let mut out = vec![index];
            if index > 0 {
                out.push(index - 1);
            }
            if usize::from(index) + 1 < len {
                out.push(index + 1);
            }
            out
        };
        let mut arms = Vec::with_capacity(26);
        for &linger in &steps(arm.linger, self.linger.len()) {
            for &batch in &steps(arm.batch, self.batch.len()) {
                for &inflight in &steps(arm.inflight, self.inflight.len()) {
                    let candidate = Arm {
                        linger,
                        batch,
                        inflight,
                    };
                    if candidate != arm {
                        arms.push(candidate);
                    }
                }
            }
        }
        arms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_are_geometric_with_static_value() {
        let bounds = KnobBounds::default();
        let knobs = Knobs {
            batch_entries_max: 100,
            ..Knobs::default()
        };
        let grid = ArmGrid::new(&bounds, 2, &knobs);
        assert_eq!(grid.linger[..4], [0, 25, 50, 100]);
        assert_eq!(grid.linger.last(), Some(&2_000));
        assert!(grid.batch.contains(&100));
        assert_eq!(grid.inflight, [1, 2, 4, 8, 16, 32, 64]);
        for pair in grid.batch.windows(2) {
            assert!(pair[1] <= pair[0] * 2, "{pair:?}");
        }
    }

    #[test]
    fn nearest_round_trips_grid_values() {
        let grid = ArmGrid::new(&KnobBounds::default(), 2, &Knobs::default());
        let arm = grid.nearest(&Knobs::default());
        let setting = grid.setting(arm);
        assert_eq!(setting.linger_micros, 0);
        assert_eq!(setting.batch_entries_max, 64);
        assert_eq!(setting.inflight_appends_max, 4);
    }

    #[test]
    fn neighbours_stay_inside_grid() {
        let grid = ArmGrid::new(&KnobBounds::default(), 2, &Knobs::default());
        let corner = Arm {
            linger: 0,
            batch: 0,
            inflight: 0,
        };
        assert_eq!(grid.neighbours(corner).len(), 7);
        let inner = grid.nearest(&Knobs {
            linger_micros: 100,
            ..Knobs::default()
        });
        assert_eq!(grid.neighbours(inner).len(), 26);
    }

    #[test]
    fn window_clips_at_edges() {
        let grid = ArmGrid::new(&KnobBounds::default(), 2, &Knobs::default());
        let corner = Arm {
            linger: 0,
            batch: 0,
            inflight: 0,
        };
        assert_eq!(grid.window(corner, 1).len(), 8);
        assert_eq!(grid.window(corner, 0), vec![corner]);
    }

    #[test]
    fn huge_range_is_capped() {
        let bounds = KnobBounds {
            batch_entries_max: KnobRange::new(1, u64::MAX),
            ..KnobBounds::default()
        };
        let grid = ArmGrid::new(&bounds, 2, &Knobs::default());
        assert!(grid.batch.len() <= MAX_DIMENSION_VALUES);
        assert_eq!(grid.batch.last(), Some(&u64::MAX));
    }
}
