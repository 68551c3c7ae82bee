//! The simulated network between replicas: which links are up, and how each message is
//! delayed, dropped or duplicated.

use std::collections::BTreeSet;

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

/// Directed links that are cut: `(from, to)` means messages from `from` to `to` are lost.
/// Node numbers are 0-based simulator indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partition {
    cut: BTreeSet<(usize, usize)>,
}

impl Partition {
    /// Cuts every link between the two sides, both ways.
    pub fn symmetric(side_a: &[usize], side_b: &[usize]) -> Partition {
        let mut cut = BTreeSet::new();
        for &a in side_a {
            for &b in side_b {
                cut.insert((a, b));
                cut.insert((b, a));
            }
        }
        Partition { cut }
    }

    /// Cuts only the links from `senders` to `receivers`.
    pub fn one_way(senders: &[usize], receivers: &[usize]) -> Partition {
        let cut = senders
            .iter()
            .flat_map(|&a| receivers.iter().map(move |&b| (a, b)))
            .filter(|(a, b)| a != b)
            .collect();
        Partition { cut }
    }

    pub fn allows(&self, from: usize, to: usize) -> bool {
        !self.cut.contains(&(from, to))
    }

    pub fn is_healed(&self) -> bool {
        self.cut.is_empty()
    }
}

/// How messages travel while the network is faulty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkQuality {
    /// Probability that a message is lost.
    pub drop_probability: f64,
    /// Probability that a message is delivered twice.
    pub duplicate_probability: f64,
    /// Base one-way delay.
    pub delay_us_min: u64,
    pub delay_us_max: u64,
    /// Probability that a message is held back by `spike_delay_us` on top of its delay,
    /// which reorders it behind later messages.
    pub spike_probability: f64,
    pub spike_delay_us: u64,
}

impl LinkQuality {
    /// A healthy network: no loss, no duplicates, sub-millisecond delays.
    pub fn reliable() -> LinkQuality {
        LinkQuality {
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            delay_us_min: 100,
            delay_us_max: 600,
            spike_probability: 0.0,
            spike_delay_us: 0,
        }
    }

    /// The delivery delays of one message: none when it is lost, two when duplicated.
    pub fn delivery_delays_us(&self, rng: &mut ChaCha8Rng) -> Vec<u64> {
        if chance(rng, self.drop_probability) {
            return Vec::new();
        }
        let copies = if chance(rng, self.duplicate_probability) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let mut delay = uniform(rng, self.delay_us_min, self.delay_us_max);
                if chance(rng, self.spike_probability) {
                    delay += uniform(rng, self.spike_delay_us / 2, self.spike_delay_us);
                }
                delay
            })
            .collect()
    }
}

/// True with probability `probability`.
pub fn chance(rng: &mut ChaCha8Rng, probability: f64) -> bool {
    if probability <= 0.0 {
        return false;
    }
    (rng.next_u64() as f64 / u64::MAX as f64) < probability
}

/// A value in `[low, high]`.
pub fn uniform(rng: &mut ChaCha8Rng, low: u64, high: u64) -> u64 {
    if high <= low {
        return low;
    }
    low + rng.next_u64() % (high - low + 1)
}
