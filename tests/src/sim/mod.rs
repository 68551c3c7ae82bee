//! A deterministic simulator of whole clusters of the Raft core.
//!
//! One run is one seed. The seed draws the cluster size (1, 3, 5 or 7 replicas unless
//! fixed), the core's settings, disk latencies, the clients, and a schedule of faults:
//! partitions (symmetric, one-way, an isolated node, or a bridge node that sees both
//! sides), crashes that lose a random suffix of the writes in flight, restarts, link
//! quality that drops, duplicates, delays and reorders messages, nodes removed from the
//! group and added back on an empty disk, disks wiped under a running node, and changes of
//! the group's agreed heartbeat interval and election timeout range. Replicas
//! take snapshots at short intervals and compact their logs, so that lagging followers
//! catch up by snapshot transfer. In half of the seeds every replica also runs the
//! engine's accrual failure detector over its leader's heartbeats and brings its election
//! forward when the detector suspects the leader, as a shard with tuning enabled does. In
//! half of the seeds with pre-vote and check-quorum, drawn apart from those, every replica
//! runs the engine's adaptive tuner over its heartbeat round trips and write latencies,
//! and a leader proposes the group timing its tuner chooses ([`tuning`]). Everything runs
//! on one
//! virtual clock with one seeded generator and ordered maps only, so the same seed replays
//! the same run event for event.
//!
//! After every event the run checks election safety, log matching, leader completeness and
//! state machine safety (see [`checks`]), and that a replica applies only entries already in
//! its durable log. Once the faults stop, a leader must commit an entry of its term within a
//! bound, and a client operation must succeed. With pre-vote and check-quorum on, no
//! election may be won once the healed cluster has had a leader for twice the longest
//! election timeout: neither a timer nor a failure detector may replace a healthy
//! leader. At the end, the clients' history of reads,
//! writes and compare-and-swaps must be linearizable.

pub mod checks;
pub mod cluster;
pub mod faults;
pub mod kv;
pub mod network;
pub mod params;
pub mod tuning;

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crate::history::History;
use crate::lincheck::{CheckOutcome, check};
use cluster::{RunCounts, RunError, Simulation};
use faults::ScheduledFault;
use params::RunParams;

/// Wall-clock limit for checking one run's history. Runs produce a few hundred operations
/// that check in milliseconds; the limit only stops a pathological history from hanging.
pub const LINEARIZABILITY_TIME_LIMIT: Duration = Duration::from_secs(5);

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed { reason: String },
}

/// Everything a caller needs to report a run and replay it.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub params: RunParams,
    pub schedule: Vec<ScheduledFault>,
    pub counts: RunCounts,
    pub verdict: Verdict,
    pub history: Option<History>,
    /// The run used the broken storage of the self-test.
    pub acknowledge_before_durable: bool,
    /// The run left out the tuner that its seed chose.
    pub without_tuner: bool,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Passed
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let broken_storage = if self.acknowledge_before_durable {
            " --acknowledge-before-durable"
        } else {
            ""
        };
        let tuner = if self.without_tuner {
            " --without-tuner"
        } else {
            ""
        };
        format!(
            "cargo run -p shardraft-tests --bin simulate -- --seed {} --nodes {}{broken_storage}{tuner}",
            self.seed, self.params.nodes
        )
    }

    /// One line for a passing run; the reason, the faults in brief and the replay command
    /// for a failing one.
    pub fn summary(&self) -> String {
        let counts = &self.counts;
        let mut text = format!(
            "seed {} nodes {}: {} events, {} messages ({} lost), {} elections, term {}, applied {}, ops ok {} failed {} unknown {}, crashes {}, snapshots taken {} installed {}, membership changes {}, wipes {}, pauses {}",
            self.seed,
            self.params.nodes,
            counts.events,
            counts.messages_sent,
            counts.messages_lost,
            counts.elections_won,
            counts.highest_term,
            counts.highest_applied,
            counts.operations_ok,
            counts.operations_failed,
            counts.operations_unknown,
            counts.crashes,
            counts.snapshots_taken,
            counts.snapshots_installed,
            counts.membership_changes,
            counts.wipes,
            counts.pauses
        );
        if self.params.tuner {
            let _ = write!(
                text,
                ", tuned timing changes {}",
                counts.tuned_timing_changes
            );
        }
        if counts.leaders_held_down > 0 {
            text.push_str(", leader held down after the faults");
        }
        if let Verdict::Failed { reason } = &self.verdict {
            let _ = write!(text, "\n  FAILED: {reason}\n  faults:");
            for scheduled in &self.schedule {
                let _ = write!(
                    text,
                    "\n    {:>7.3}s {}",
                    scheduled.at_us as f64 / 1e6,
                    scheduled.fault
                );
            }
            let _ = write!(text, "\n  replay: {}", self.replay_command());
        }
        text
    }
}

/// Options of one run beyond its seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// Fix the cluster size instead of letting the seed choose.
    pub nodes: Option<usize>,
    /// Keep the clients' history in the report.
    pub keep_history: bool,
    /// Break the simulated storage: report writes durable before they are. Used to show
    /// that the checks catch lost acknowledged writes.
    pub acknowledge_before_durable: bool,
    /// Run without the adaptive tuner even where the seed chose it, to replay a run
    /// recorded before the simulator had one.
    pub without_tuner: bool,
}

/// Runs one seed to its verdict; a panic in the core is caught and reported as a failure.
/// With `keep_history`, the report carries the clients' history.
pub fn run_seed(seed: u64, nodes: Option<usize>, keep_history: bool) -> RunReport {
    run_seed_with(
        seed,
        RunOptions {
            nodes,
            keep_history,
            ..RunOptions::default()
        },
    )
}

/// Runs one seed with `options`.
pub fn run_seed_with(seed: u64, options: RunOptions) -> RunReport {
    let mut simulation = Simulation::new(seed, options.nodes);
    if options.acknowledge_before_durable {
        simulation.acknowledge_before_durable();
    }
    if options.without_tuner {
        simulation.without_tuner();
    }
    let params = simulation.params.clone();
    let schedule = simulation.schedule.clone();
    let outcome = catch_unwind(AssertUnwindSafe(|| simulation.run()));
    let mut verdict = match outcome {
        Ok(Ok(())) => Verdict::Passed,
        Ok(Err(RunError::Safety(violation))) => Verdict::Failed {
            reason: format!("{} violated: {}", violation.property, violation.detail),
        },
        Ok(Err(RunError::Liveness(reason))) => Verdict::Failed {
            reason: format!("liveness: {reason}"),
        },
        Err(panic) => Verdict::Failed {
            reason: format!("panic: {}", panic_message(&panic)),
        },
    };
    let history = simulation.history();
    if verdict == Verdict::Passed {
        verdict = check_history(&history);
    }
    RunReport {
        seed,
        params,
        schedule,
        counts: simulation.counts().clone(),
        verdict,
        history: options.keep_history.then_some(history),
        acknowledge_before_durable: options.acknowledge_before_durable,
        without_tuner: options.without_tuner,
    }
}

fn check_history(history: &History) -> Verdict {
    match check(history, LINEARIZABILITY_TIME_LIMIT) {
        CheckOutcome::Linearizable => Verdict::Passed,
        CheckOutcome::NotLinearizable { key, offending, .. } => {
            let mut reason =
                format!("history not linearizable on key {key:?}; offending operations:");
            for operation in offending {
                let _ = write!(reason, "\n      {operation}");
            }
            Verdict::Failed { reason }
        }
        CheckOutcome::Unknown { reason } => Verdict::Failed {
            reason: format!("linearizability check did not finish: {reason}"),
        },
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(message) = panic.downcast_ref::<String>() {
        return message.clone();
    }
    if let Some(message) = panic.downcast_ref::<&str>() {
        return (*message).to_string();
    }
    "unknown panic payload".to_string()
}

/// Runs `seeds` on `threads` worker threads and returns the reports in seed order.
pub fn run_seeds(
    seeds: std::ops::Range<u64>,
    options: RunOptions,
    threads: usize,
) -> Vec<RunReport> {
    let next = std::sync::atomic::AtomicU64::new(seeds.start);
    let reports = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let report = run_seed_with(seed, options);
                    if let Ok(mut reports) = reports.lock() {
                        reports.push(report);
                    }
                }
            });
        }
    });
    let mut reports = reports.into_inner().unwrap_or_default();
    reports.sort_by_key(|report| report.seed);
    reports
}
