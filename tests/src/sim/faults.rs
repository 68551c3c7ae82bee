//! The fault schedule of one run: partitions, crashes, restarts, changes of link quality,
//! leadership transfers, membership and timing changes and wiped disks, drawn from the
//! run's seed before the run starts.

use std::fmt;

use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;
use shardraft_raft::GroupTiming;

use super::network::{LinkQuality, Partition, chance, uniform};

/// One scheduled fault or repair.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Replace the current partition.
    Partition {
        partition: Partition,
        description: String,
    },
    /// Restore every link.
    Heal,
    /// Stop a node; everything it had not reported durable is lost.
    Crash {
        node: usize,
    },
    /// Stop whichever node leads at that moment, if any.
    CrashLeader,
    /// Cut whichever node leads at that moment off from every other node.
    IsolateLeader,
    /// Stop the next leader that advances its commit index, before it hands out that
    /// batch: it dies knowing of a commit that no other node has heard of.
    CrashLeaderOnCommit,
    /// Stop the next node that grants a vote right after it does, restart it at once, and
    /// make a third node campaign: a vote sent before it was durable then splits the term.
    SplitVote,
    /// Stop a random majority of the nodes at once, each restarting after its own delay.
    /// A write acknowledged by a majority survives only if it was durable on one of them.
    CrashMajority,
    /// Stop every node at once.
    CrashAll,
    /// Start a stopped node from its durable state.
    Restart {
        node: usize,
    },
    RestartAll,
    /// Change loss, duplication and delays.
    Links {
        quality: LinkQuality,
    },
    /// Ask the current leader, if any, to hand leadership to `node`.
    TransferLeadership {
        node: usize,
    },
    /// Ask the current leader, if any, to remove `node` from the group.
    RemoveNode {
        node: usize,
    },
    /// If `node` is not a member, wipe its storage, start it as a fresh learner and ask the
    /// current leader to add it, to be promoted once caught up.
    AddNode {
        node: usize,
    },
    /// Stop `node`, wipe its storage, and start it again with the same id and an empty
    /// disk.
    WipeNode {
        node: usize,
    },
    /// Ask the current leader, if any, to set the group's heartbeat interval and election
    /// timeout range.
    ChangeTiming {
        timing: GroupTiming,
    },
    /// Stop `node`'s process for `duration_us` without losing anything, as a long
    /// garbage-collection pause, a stopped process or a paused VM would. It handles no
    /// message, tick or storage completion until then. Afterwards it handles one tick for
    /// the whole pause, as the engine's ticker does. `None` pauses whichever node leads.
    Pause {
        node: Option<usize>,
        duration_us: u64,
    },
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { description, .. } => write!(f, "partition {description}"),
            Fault::Heal => write!(f, "heal"),
            Fault::Crash { node } => write!(f, "crash n{}", node + 1),
            Fault::CrashLeader => write!(f, "crash the leader"),
            Fault::IsolateLeader => write!(f, "isolate the leader"),
            Fault::CrashLeaderOnCommit => write!(f, "crash the leader at its next commit"),
            Fault::SplitVote => write!(f, "crash the next voter and start a rival candidate"),
            Fault::CrashMajority => write!(f, "crash a majority"),
            Fault::CrashAll => write!(f, "crash all"),
            Fault::Restart { node } => write!(f, "restart n{}", node + 1),
            Fault::RestartAll => write!(f, "restart all"),
            Fault::Links { quality } => write!(
                f,
                "links drop {:.0}% dup {:.0}% delay {}-{}us spikes {:.0}%",
                quality.drop_probability * 100.0,
                quality.duplicate_probability * 100.0,
                quality.delay_us_min,
                quality.delay_us_max,
                quality.spike_probability * 100.0
            ),
            Fault::TransferLeadership { node } => write!(f, "transfer leadership to n{}", node + 1),
            Fault::RemoveNode { node } => write!(f, "remove n{} from the group", node + 1),
            Fault::AddNode { node } => write!(f, "add n{} back on an empty disk", node + 1),
            Fault::WipeNode { node } => write!(f, "wipe n{} and restart it", node + 1),
            Fault::ChangeTiming { timing } => write!(f, "set the timing: {timing}"),
            Fault::Pause {
                node: Some(node),
                duration_us,
            } => write!(f, "pause n{} for {} ms", node + 1, duration_us / 1000),
            Fault::Pause {
                node: None,
                duration_us,
            } => write!(f, "pause the leader for {} ms", duration_us / 1000),
        }
    }
}

/// A fault at a virtual time.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduledFault {
    pub at_us: u64,
    pub fault: Fault,
}

/// Draws the faults of one run between `start_us` and `end_us`. At `end_us` every node
/// restarts and every link heals, so that the run ends with a healthy cluster.
pub fn draw_schedule(
    rng: &mut ChaCha8Rng,
    nodes: usize,
    start_us: u64,
    end_us: u64,
) -> Vec<ScheduledFault> {
    let mut schedule = Vec::new();
    let mut time_us = start_us;
    let mut down = vec![false; nodes];
    while time_us < end_us {
        let fault = draw_fault(rng, nodes, &mut down);
        if let Some(fault) = fault {
            schedule.push(ScheduledFault {
                at_us: time_us,
                fault,
            });
        }
        time_us += uniform(rng, 100_000, 1_500_000);
    }
    // Nodes stopped by `CrashLeader` are only known while the run goes on, so every node
    // that is still down restarts here.
    schedule.push(ScheduledFault {
        at_us: end_us,
        fault: Fault::RestartAll,
    });
    schedule.push(ScheduledFault {
        at_us: end_us,
        fault: Fault::Heal,
    });
    schedule.push(ScheduledFault {
        at_us: end_us,
        fault: Fault::Links {
            quality: LinkQuality::reliable(),
        },
    });
    schedule
}

/// Draws the timing changes of one run between `start_us` and `end_us`: none in half of the
/// runs, else one to three. Each is a valid timing, from a heartbeat every tick and an
/// election timeout of 4 to 6 ticks to a heartbeat every 3 ticks and one of 24 to 39.
///
/// They come from a generator of their own, so that the other faults of a seed stay what
/// they were before timing changes existed.
pub fn draw_timing_changes(
    rng: &mut ChaCha8Rng,
    start_us: u64,
    end_us: u64,
) -> Vec<ScheduledFault> {
    if chance(rng, 0.5) {
        return Vec::new();
    }
    (0..uniform(rng, 1, 3))
        .map(|_| {
            let heartbeat = uniform(rng, 1, 3) as u32;
            let min = 3 * heartbeat + uniform(rng, 1, 15) as u32;
            let max = min + uniform(rng, 2, 15) as u32;
            ScheduledFault {
                at_us: uniform(rng, start_us, end_us - 1),
                fault: Fault::ChangeTiming {
                    timing: GroupTiming {
                        heartbeat_interval_ticks: heartbeat,
                        election_timeout_ticks_min: min,
                        election_timeout_ticks_max: max,
                    },
                },
            }
        })
        .collect()
}

/// Draws the process pauses of one run between `start_us` and `end_us`: none in half of
/// the runs, else one or two, each of 20 to 800 ms and over by `end_us`. Half of them pause
/// the leader, whose followers then elect another while it still believes it leads.
///
/// They come from a generator of their own, so that the other faults of a seed stay what
/// they were before pauses existed.
pub fn draw_pauses(
    rng: &mut ChaCha8Rng,
    nodes: usize,
    start_us: u64,
    end_us: u64,
) -> Vec<ScheduledFault> {
    if chance(rng, 0.5) {
        return Vec::new();
    }
    (0..uniform(rng, 1, 2))
        .map(|_| {
            let duration_us = uniform(rng, 20_000, 800_000);
            let node = if chance(rng, 0.5) {
                None
            } else {
                Some((rng.next_u64() % nodes as u64) as usize)
            };
            let last_start_us = end_us.saturating_sub(duration_us).max(start_us);
            ScheduledFault {
                at_us: uniform(rng, start_us, last_start_us),
                fault: Fault::Pause { node, duration_us },
            }
        })
        .collect()
}

fn draw_fault(rng: &mut ChaCha8Rng, nodes: usize, down: &mut [bool]) -> Option<Fault> {
    let pick = rng.next_u64() % 116;
    let random_node = |rng: &mut ChaCha8Rng| (rng.next_u64() % nodes as u64) as usize;
    match pick {
        0..=19 if nodes > 1 => Some(draw_partition(rng, nodes)),
        20..=34 => Some(Fault::Heal),
        35..=49 => {
            let node = random_node(rng);
            if down[node] {
                down[node] = false;
                Some(Fault::Restart { node })
            } else if down.iter().filter(|is_down| !**is_down).count() > 1 || chance(rng, 0.3) {
                down[node] = true;
                Some(Fault::Crash { node })
            } else {
                None
            }
        }
        50..=54 => {
            if down.iter().any(|is_down| *is_down) {
                down.iter_mut().for_each(|is_down| *is_down = false);
                Some(Fault::RestartAll)
            } else {
                down.iter_mut().for_each(|is_down| *is_down = true);
                Some(Fault::CrashAll)
            }
        }
        55..=59 => {
            let restart = down.iter().position(|is_down| *is_down)?;
            down[restart] = false;
            Some(Fault::Restart { node: restart })
        }
        60..=79 => Some(Fault::Links {
            quality: draw_link_quality(rng),
        }),
        80..=84 if nodes > 1 => Some(Fault::TransferLeadership {
            node: random_node(rng),
        }),
        85..=89 if nodes > 1 => Some(Fault::IsolateLeader),
        90..=92 => Some(Fault::CrashLeader),
        93..=94 => Some(Fault::CrashLeaderOnCommit),
        95..=96 if nodes > 2 => Some(Fault::SplitVote),
        97..=99 if nodes > 2 => Some(Fault::CrashMajority),
        100..=105 if nodes > 2 => Some(Fault::RemoveNode {
            node: random_node(rng),
        }),
        106..=112 if nodes > 2 => Some(Fault::AddNode {
            node: random_node(rng),
        }),
        113..=115 if nodes > 2 => {
            let node = random_node(rng);
            down[node] = false;
            Some(Fault::WipeNode { node })
        }
        _ => None,
    }
}

fn draw_link_quality(rng: &mut ChaCha8Rng) -> LinkQuality {
    let percent = |rng: &mut ChaCha8Rng, max: u64| uniform(rng, 0, max) as f64 / 100.0;
    let delay_us_min = uniform(rng, 50, 1_000);
    LinkQuality {
        drop_probability: percent(rng, 30),
        duplicate_probability: percent(rng, 10),
        delay_us_min,
        delay_us_max: delay_us_min + uniform(rng, 0, 20_000),
        spike_probability: percent(rng, 10),
        spike_delay_us: uniform(rng, 10_000, 300_000),
    }
}

/// A random split: symmetric halves, a one-way cut, an isolated node, or a bridge node
/// that sees both sides while the sides cannot see each other.
fn draw_partition(rng: &mut ChaCha8Rng, nodes: usize) -> Fault {
    let mut order: Vec<usize> = (0..nodes).collect();
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let names = |side: &[usize]| {
        side.iter()
            .map(|node| format!("n{}", node + 1))
            .collect::<Vec<_>>()
            .join(",")
    };
    match rng.next_u64() % 4 {
        0 => {
            let split = 1 + (rng.next_u64() % (nodes as u64 - 1)) as usize;
            let (a, b) = order.split_at(split);
            Fault::Partition {
                partition: Partition::symmetric(a, b),
                description: format!("{{{}}} | {{{}}}", names(a), names(b)),
            }
        }
        1 => {
            let split = 1 + (rng.next_u64() % (nodes as u64 - 1)) as usize;
            let (a, b) = order.split_at(split);
            Fault::Partition {
                partition: Partition::one_way(a, b),
                description: format!("{{{}}} -/-> {{{}}}", names(a), names(b)),
            }
        }
        2 => {
            let (a, b) = order.split_at(1);
            Fault::Partition {
                partition: Partition::symmetric(a, b),
                description: format!("isolate {}", names(a)),
            }
        }
        _ if nodes >= 3 => {
            let bridge = order[0];
            let rest = &order[1..];
            let split = 1 + (rng.next_u64() % (rest.len() as u64 - 1).max(1)) as usize;
            let (a, b) = rest.split_at(split.min(rest.len() - 1));
            Fault::Partition {
                partition: Partition::symmetric(a, b),
                description: format!(
                    "{{{}}} | {{{}}} bridged by n{}",
                    names(a),
                    names(b),
                    bridge + 1
                ),
            }
        }
        _ => Fault::Heal,
    }
}
