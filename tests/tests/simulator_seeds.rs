//! Runs the cluster simulator over a fixed range of seeds, which cycles through clusters of
//! 1, 3, 5 and 7 replicas. `SIM_SEEDS` sets how many seeds run (default 1000) and
//! `SIM_SEED_START` the first one (default 0), for a long soak:
//!
//! ```text
//! SIM_SEEDS=100000 cargo test --release -p shardraft-tests --test simulator_seeds
//! ```

use shardraft_tests::sim::params::CLUSTER_SIZES;
use shardraft_tests::sim::{RunOptions, RunReport, run_seed, run_seed_with, run_seeds};

/// Replays a seed recorded before the simulator ran the adaptive tuner, as it ran then:
/// with the tuner, the run takes another course and may no longer reach its case.
fn replay_recorded(seed: u64, nodes: usize) -> RunReport {
    run_seed_with(
        seed,
        RunOptions {
            nodes: Some(nodes),
            without_tuner: true,
            ..RunOptions::default()
        },
    )
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

#[test]
fn simulated_clusters_stay_safe_and_live() {
    let count = env_u64("SIM_SEEDS", 1000);
    let start = env_u64("SIM_SEED_START", 0);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);

    let reports = run_seeds(start..start + count, RunOptions::default(), threads);

    assert_eq!(
        reports.len() as u64,
        count,
        "every seed must produce a report"
    );
    let failures: Vec<String> = reports
        .iter()
        .filter(|report| !report.passed())
        .map(|report| report.summary())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if count >= CLUSTER_SIZES.len() as u64 {
        for size in CLUSTER_SIZES {
            assert!(
                reports.iter().any(|report| report.params.nodes == size),
                "no seed ran a cluster of {size}"
            );
        }
    }
    let operations_ok: u64 = reports
        .iter()
        .map(|report| report.counts.operations_ok)
        .sum();
    assert!(
        operations_ok > count,
        "clients completed only {operations_ok} operations in {count} runs"
    );
    if count >= 100 {
        // The faults that only a long enough range of seeds draws must all have happened,
        // or the runs above did not exercise them.
        let total = |field: fn(&shardraft_tests::sim::cluster::RunCounts) -> u64| -> u64 {
            reports.iter().map(|report| field(&report.counts)).sum()
        };
        for (what, value) in [
            ("snapshots taken", total(|counts| counts.snapshots_taken)),
            (
                "snapshots installed",
                total(|counts| counts.snapshots_installed),
            ),
            (
                "membership changes",
                total(|counts| counts.membership_changes),
            ),
            ("wiped disks", total(|counts| counts.wipes)),
            (
                "elections brought forward by a failure detector",
                total(|counts| counts.elections_brought_forward),
            ),
            ("timing changes", total(|counts| counts.timing_changes)),
            (
                "timing changes chosen by a tuner",
                total(|counts| counts.tuned_timing_changes),
            ),
            (
                "shorter election timeouts chosen by a tuner",
                total(|counts| counts.tuned_timing_lowerings),
            ),
            (
                "early campaigns after a leader's crash",
                total(|counts| counts.leader_down_reports),
            ),
            ("process pauses", total(|counts| counts.pauses)),
            (
                "leaders held down after the faults",
                total(|counts| counts.leaders_held_down),
            ),
        ] {
            assert!(value > 0, "no run had {what} in {count} seeds");
        }
    }
}

#[test]
fn same_seed_replays_identically() {
    for seed in [3, 42, 1001] {
        let first = run_seed(seed, None, true);
        let second = run_seed(seed, None, true);
        assert_eq!(
            first.counts, second.counts,
            "seed {seed}: event counts differ between runs"
        );
        assert_eq!(
            first.history, second.history,
            "seed {seed}: histories differ between runs"
        );
        assert_eq!(
            first.schedule, second.schedule,
            "seed {seed}: fault schedules differ"
        );
    }
}

#[test]
fn older_snapshot_installs_beside_a_newer_stored_one() {
    // In this run a follower stores a snapshot from a deposed leader, but its core rejects
    // the message for its stale term. Later the follower installs an older snapshot from
    // the next leader, from the state it received, while the store keeps the newer one.
    let report = replay_recorded(66423, 7);
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn deposed_leader_gains_nothing_from_wiped_node() {
    // In this run a wiped replica acknowledges entries of a leader deposed by a newer term,
    // while the nodes that stored the newer term are down. Had the leader counted them, it
    // would have committed an entry where the newer leader committed another.
    let report = replay_recorded(16557, 3);
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn founding_members_keep_new_cluster_live() {
    // This 7-node run failed its liveness check while leaders held back the founding
    // members of the new cluster, as they hold back wiped nodes. No leader committed an
    // entry of its term within 3000 ms after the faults stopped.
    let report = replay_recorded(19187, 7);
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn single_voter_leads_a_lost_term_again() {
    // A single node becomes leader of term 2 and crashes before term 2 is durable. It
    // restarts in term 1 and leads term 2 again with other entries at the same indexes.
    // The first ones were never durable and no other log contains them, so log matching has
    // nothing to compare the new ones with.
    let report = replay_recorded(106264, 1);
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn fixed_cluster_size_is_honoured() {
    let report = run_seed(11, Some(7), false);
    assert_eq!(report.params.nodes, 7);
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn failure_summary_names_seed_faults_and_replay() {
    let mut report = run_seed(5, Some(3), false);
    report.verdict = shardraft_tests::sim::Verdict::Failed {
        reason: "example".into(),
    };
    let summary = report.summary();
    assert!(
        summary.contains("seed 5"),
        "summary lacks the seed: {summary}"
    );
    assert!(
        summary.contains("FAILED: example"),
        "summary lacks the reason: {summary}"
    );
    assert!(
        summary.contains("faults:"),
        "summary lacks the fault schedule: {summary}"
    );
    assert!(
        summary.contains("simulate -- --seed 5 --nodes 3"),
        "summary lacks the replay command: {summary}"
    );
}

#[test]
fn storage_acknowledging_early_is_detected() {
    // Storage that reports writes durable before they are loses acknowledged entries in a
    // crash; the simulator's checks must notice within a few dozen seeds.
    let options = shardraft_tests::sim::RunOptions {
        acknowledge_before_durable: true,
        ..Default::default()
    };
    let failed = (0..32)
        .map(|seed| shardraft_tests::sim::run_seed_with(seed, options))
        .filter(|report| !report.passed())
        .count();
    assert!(
        failed > 0,
        "no run failed with storage that acknowledges before writes are durable"
    );
}
