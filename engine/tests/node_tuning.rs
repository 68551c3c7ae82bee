//! The adaptive tuner and the proposal linger in real nodes of this process: off, nothing
//! changes and nothing is exported; on, the shards run tuning intervals, keep every knob
//! inside its bounds, batch reads under a read load, raise the election timeout above a
//! stall of the shard's loop and export their state. A linger delays proposals.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardraft::config::NodeConfig;
use shardraft::kv::Command;
use shardraft::kv::KvStateMachine;
use shardraft::log::{GroupId, StorageKind};
use shardraft::metrics::{NodeLabels, NodeMetrics, encode_text};
use shardraft::node::{GroupStatus, Node, NodeError, ReadMode};
use shardraft::raft::{GroupTiming, LogIndex, NodeId, Term};
use shardraft::state_machine::{Snapshot, StateMachine};
use shardraft::tuning::{PeerSuspicion, TuningReport};
use shardraft_tuning::{Knob, ObjectiveKind};
use support::*;

const GROUP: GroupId = GroupId(0);

fn put(key: &str) -> Bytes {
    Command::Put {
        key: key.as_bytes().to_vec(),
        value: b"value".to_vec(),
    }
    .encode()
    .expect("encoding a put")
}

fn metrics(handle: &KvHandle) -> NodeMetrics {
    handle
        .metrics(Duration::from_secs(5))
        .expect("reading metrics")
}

fn tuning_reports(handle: &KvHandle) -> Vec<Option<TuningReport>> {
    metrics(handle)
        .shards
        .into_iter()
        .map(|shard| shard.tuning)
        .collect()
}

/// Writes `count` keys through the leader of the group from `writers` threads.
fn write_through(leader: &KvHandle, writers: usize, count: usize, prefix: &str) {
    std::thread::scope(|scope| {
        for writer in 0..writers {
            scope.spawn(move || {
                for i in (writer..count).step_by(writers) {
                    leader
                        .propose(GROUP, put(&format!("{prefix}-{i}")))
                        .expect("the leader commits the write");
                }
            });
        }
    });
}

struct Cluster {
    nodes: Vec<KvNode>,
    handles: Vec<KvHandle>,
}

impl Cluster {
    fn start(configs: &[NodeConfig]) -> Cluster {
        let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
        let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
        Cluster { nodes, handles }
    }

    fn leader(&self) -> &KvHandle {
        let handles: Vec<&KvHandle> = self.handles.iter().collect();
        let leader = wait_for_leader(&handles, GROUP, Duration::from_secs(10));
        self.handles
            .iter()
            .find(|handle| handle.node_id() == leader)
            .expect("the leader is a member")
    }

    fn shutdown(self) {
        drop(self.handles);
        for node in self.nodes {
            node.shutdown().expect("clean shutdown");
        }
    }
}

#[test]
fn tuner_off_reports_nothing() {
    let dir = test_dir("tuner_off_reports_nothing");
    let configs = cluster_configs(&dir, 3, 1, 1);
    let cluster = Cluster::start(&configs);
    let leader = cluster.leader();

    write_through(leader, 4, 200, "off");

    for report in tuning_reports(leader) {
        assert_eq!(report, None, "a shard reports a tuner while tuning is off");
    }
    let labels = NodeLabels {
        cluster_id: 1,
        version: "test".to_string(),
    };
    let text = encode_text(metrics(leader), labels).expect("encoding the metrics");
    assert!(
        !text.contains("shardraft_tuning_"),
        "tuning series exported while tuning is off"
    );
    cluster.shutdown();
}

#[test]
fn tuner_runs_within_its_bounds() {
    let dir = test_dir("tuner_runs_within_its_bounds");
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    for config in &mut configs {
        config.tuning.enabled = true;
        config.tuning.interval_ms = 100;
        config.tuning.cold_start_intervals = 1;
        config.tuning.cold_start_commits_min = 1;
        config.tuning.change_interval_min = 1;
    }
    let bounds = configs[0].tuning.bounds;
    let cluster = Cluster::start(&configs);
    let leader = cluster.leader();

    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(2) {
        write_through(leader, 8, 400, &format!("round-{round}"));
        round += 1;
    }

    let reports = tuning_reports(leader);
    let report = reports[0].clone().expect("the leader's shard runs a tuner");
    assert!(
        report.intervals >= 5,
        "only {} tuning intervals in 2 s of 100 ms intervals",
        report.intervals
    );
    assert!(
        report.election_timeout_floor_micros > 0,
        "the tuner saw no round trips or fdatasyncs"
    );
    for knob in Knob::ALL {
        let value = report.knobs.get(knob);
        let range = bounds.get(knob);
        assert!(
            range.contains(value),
            "{} = {value} is outside {}..={}",
            knob.name(),
            range.min,
            range.max
        );
    }
    let labels = NodeLabels {
        cluster_id: 1,
        version: "test".to_string(),
    };
    let text = encode_text(metrics(leader), labels).expect("encoding the metrics");
    for series in [
        "shardraft_tuning_intervals_total",
        "shardraft_tuning_knob{",
        "shardraft_tuning_measured_commit_seconds{",
        "shardraft_tuning_election_timeout_floor_seconds{",
        "shardraft_tuning_stall_max_seconds{",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    check_with_promtool(&text);
    cluster.shutdown();
}

/// Waits until, on every one of `handles` other than `peer` itself, the failure detector's
/// view of `peer` in the latest tuning report passes `check`. Reports refresh once per
/// tuning interval, and on a busy machine heartbeats come late, so a fixed sleep is not
/// enough.
fn wait_for_suspicion(
    handles: &[KvHandle],
    peer: NodeId,
    condition: &str,
    check: impl Fn(&PeerSuspicion) -> bool,
) {
    let timeout = Duration::from_secs(10);
    let deadline = Instant::now() + timeout;
    loop {
        let views: Vec<(u64, Option<PeerSuspicion>)> = handles
            .iter()
            .filter(|handle| handle.node_id() != peer)
            .map(|handle| {
                let report = tuning_reports(handle)[0]
                    .clone()
                    .expect("every shard runs a tuner");
                let view = report
                    .peers
                    .into_iter()
                    .find(|suspicion| suspicion.peer == peer);
                (handle.node_id().0, view)
            })
            .collect();
        if views
            .iter()
            .all(|(_, view)| view.as_ref().is_some_and(&check))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{condition} within {timeout:?}; views of node {}: {views:?}",
            peer.0
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn detector_suspects_a_stopped_leader() {
    let dir = test_dir("detector_suspects_a_stopped_leader");
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    for config in &mut configs {
        config.tuning.enabled = true;
        config.tuning.interval_ms = 100;
    }
    let phi_threshold = configs[0].tuning.phi_threshold;
    let mut cluster = Cluster::start(&configs);
    let old_leader = cluster.leader().node_id();
    // A detector leaves its cold start once it has seen `phi_min_gaps` heartbeat gaps.
    wait_for_suspicion(
        &cluster.handles,
        old_leader,
        "every follower's detector left its cold start",
        |suspicion| suspicion.suspicion_delay_micros.is_some(),
    );
    let position = cluster
        .handles
        .iter()
        .position(|handle| handle.node_id() == old_leader)
        .expect("the leader is a member");
    cluster.handles.remove(position);
    cluster.nodes.remove(position).kill();

    let new_leader = cluster.leader().node_id();
    assert_ne!(new_leader, old_leader);
    wait_for_suspicion(
        &cluster.handles,
        old_leader,
        "every survivor suspects the stopped leader",
        |suspicion| suspicion.phi >= phi_threshold && suspicion.suspicion_delay_micros.is_some(),
    );
    cluster.shutdown();
}

#[test]
fn tuned_timing_reaches_every_replica() {
    let dir = test_dir("tuned_timing_reaches_every_replica");
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    for config in &mut configs {
        // Without fdatasyncs the election timeout floor comes from loopback round trips
        // alone, far below the configured timeout, so the tuner lowers the timing.
        config.log.storage = StorageKind::Memory;
        config.tuning.enabled = true;
        config.tuning.interval_ms = 100;
        config.tuning.cold_start_intervals = 1;
        config.tuning.cold_start_commits_min = 1;
        config.tuning.change_interval_min = 1;
        config.tuning.timing_change_interval_min = 1;
        config.tuning.hysteresis_intervals = 1;
    }
    let configured_min = configs[0].raft.election_timeout_ticks_min;
    let cluster = Cluster::start(&configs);

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 0;
    let agreed = loop {
        write_through(cluster.leader(), 4, 100, &format!("round-{round}"));
        round += 1;
        let timings: Vec<GroupTiming> = cluster
            .handles
            .iter()
            .map(|handle| group_status(handle).timing)
            .collect();
        let lowered = timings[0].election_timeout_ticks_min < configured_min;
        if lowered && timings.iter().all(|timing| *timing == timings[0]) {
            break timings[0];
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not agree on a lowered timing: {timings:?}"
        );
    };

    assert_eq!(agreed.check(), Ok(()));
    let leader = cluster.leader();
    let report = tuning_reports(leader)[0]
        .clone()
        .expect("the leader's shard runs a tuner");
    assert!(report.timing_decisions >= 1, "{report:?}");
    assert!(report.timing_proposals >= 1, "{report:?}");
    cluster.shutdown();
}

/// Returns the status of group 0 on `handle`'s node.
fn group_status(handle: &KvHandle) -> GroupStatus {
    handle
        .status()
        .expect("reading the status")
        .shards
        .into_iter()
        .flat_map(|shard| shard.groups)
        .find(|group| group.group == GROUP)
        .expect("every node hosts group 0")
}

#[test]
fn linger_holds_a_lone_proposal() {
    let linger = Duration::from_millis(50);
    let dir = test_dir("linger_holds_a_lone_proposal");
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    for config in &mut configs {
        config.proposal_linger_us = linger.as_micros() as u64;
    }
    let cluster = Cluster::start(&configs);
    let leader = cluster.leader();
    write_through(leader, 1, 1, "warm");

    let started = Instant::now();
    leader
        .propose(GROUP, put("lone"))
        .expect("the leader commits a lingering write");
    let elapsed = started.elapsed();

    // A proposal that does not fill a batch waits out the whole linger before the core
    // sees it, so its commit cannot come sooner.
    assert!(elapsed >= linger, "committed after {elapsed:?}");
    write_through(leader, 16, 160, "many");
    cluster.shutdown();
}

#[test]
fn linger_above_its_maximum_is_rejected() {
    let dir = test_dir("linger_above_its_maximum");
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    configs[0].proposal_linger_us = shardraft::config::PROPOSAL_LINGER_US_MAX + 1;

    let error = shardraft::node::Node::start(configs[0].clone(), |_| {
        shardraft::kv::KvStateMachine::new(kv_limits())
    })
    .expect_err("a linger above the maximum is rejected");

    let message = error.to_string();
    assert!(
        matches!(error, NodeError::Config(_)),
        "unexpected error: {message}"
    );
    assert!(message.contains("proposal_linger_us"), "{message}");
}

#[test]
fn tuner_batches_reads_under_read_load() {
    let dir = test_dir("throughput_tuner_batches_reads");
    let mut configs = cluster_configs(&dir, 3, 1, 1);
    for config in &mut configs {
        config.tuning.enabled = true;
        config.tuning.objective = ObjectiveKind::Throughput;
        config.tuning.interval_ms = 100;
        config.tuning.change_interval_min = 1;
    }
    let cluster = Cluster::start(&configs);
    let leader = cluster.leader();
    write_through(leader, 4, 64, "before-reads");

    // Closed-loop readers keep about one read per reader in flight, so several arrive
    // during each ReadIndex round. The tuner then tries holding them for the round in
    // flight. It may undo that trial later, and the test only waits for the move.
    const READERS: usize = 16;
    let deadline = Instant::now() + Duration::from_secs(20);
    let batched = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for reader in 0..READERS {
            let batched = &batched;
            scope.spawn(move || {
                let key = format!("before-reads-{reader}").into_bytes();
                while !batched.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let key = key.clone();
                    let found = leader
                        .read(GROUP, ReadMode::Linearizable, move |kv| {
                            kv.get(&key).is_some()
                        })
                        .expect("a linearizable read at the leader");
                    assert!(found, "reader {reader} misses a committed write");
                }
            });
        }
        while Instant::now() < deadline {
            let report = tuning_reports(leader)[0]
                .clone()
                .expect("the leader's shard runs a tuner");
            if report.knobs.read_batch_max > 1 {
                batched.store(true, Ordering::Relaxed);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        batched.store(true, Ordering::Relaxed);
    });
    let report = tuning_reports(leader)[0]
        .clone()
        .expect("the leader's shard runs a tuner");
    assert!(
        report.knobs.read_batch_max > 1,
        "read_batch_max stayed {} under {READERS} closed-loop readers",
        report.knobs.read_batch_max
    );
    // Reads keep working at the batched setting.
    for reader in 0..READERS {
        let key = format!("before-reads-{reader}").into_bytes();
        let found = leader
            .read(GROUP, ReadMode::Linearizable, move |kv| {
                kv.get(&key).is_some()
            })
            .expect("a linearizable read at the leader");
        assert!(found, "key before-reads-{reader} after batching");
    }
    cluster.shutdown();
}

/// How long [`StallingKv`] blocks its shard's thread when it applies [`STALL_KEY`].
const STALL: Duration = Duration::from_millis(150);

/// The key whose put stalls the shard that applies it.
const STALL_KEY: &str = "stall";

/// The key-value store, except that applying a put of [`STALL_KEY`] blocks the shard's
/// thread for [`STALL`], as a long turn of the loop or a paused machine would.
struct StallingKv {
    kv: KvStateMachine,
    stall_command: Bytes,
}

impl StateMachine for StallingKv {
    type Output = <KvStateMachine as StateMachine>::Output;
    type View = <KvStateMachine as StateMachine>::View;
    type RestoreError = <KvStateMachine as StateMachine>::RestoreError;

    fn apply_command(&mut self, index: LogIndex, term: Term, command: &Bytes) -> Self::Output {
        if *command == self.stall_command {
            std::thread::sleep(STALL);
        }
        self.kv.apply_command(index, term, command)
    }

    fn apply_noop(&mut self, index: LogIndex, term: Term) {
        self.kv.apply_noop(index, term);
    }

    fn applied_index(&self) -> LogIndex {
        self.kv.applied_index()
    }

    fn applied_term(&self) -> Term {
        self.kv.applied_term()
    }

    fn snapshot_view(&self) -> Self::View {
        self.kv.snapshot_view()
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), Self::RestoreError> {
        self.kv.restore(snapshot)
    }
}

#[test]
fn loop_stall_raises_election_timeout() {
    // One node with its log in memory: no follower round trips and no fdatasyncs, so only
    // stalls of the shard's loop set the election timeout floor.
    let dir = test_dir("loop_stall_raises_election_timeout");
    let mut configs = cluster_configs(&dir, 1, 1, 1);
    let mut config = configs.remove(0);
    config.log.storage = StorageKind::Memory;
    config.tuning.enabled = true;
    config.tuning.interval_ms = 100;
    let static_min_micros =
        u64::from(config.raft.election_timeout_ticks_min) * config.tick_interval_ms * 1_000;
    let node = Node::start(config.clone(), |_| StallingKv {
        kv: KvStateMachine::new(kv_limits()),
        stall_command: put(STALL_KEY),
    })
    .expect("starting the node");
    let handle = node.handle();

    let deadline = Instant::now() + Duration::from_secs(10);
    while handle.propose(GROUP, put("first")).is_err() {
        assert!(Instant::now() < deadline, "the node elected no leader");
        std::thread::sleep(Duration::from_millis(20));
    }
    handle
        .propose(GROUP, put(STALL_KEY))
        .expect("the stalling put commits");

    // The tick due during the stall comes at least the stall less one tick interval late,
    // and the floor is twice the maximum stall of the window.
    let late_micros = (STALL.as_micros() as u64) - config.tick_interval_ms * 1_000;
    let floor_micros = (config.tuning.stall_safety_factor * late_micros as f64) as u64;
    assert!(
        floor_micros > static_min_micros,
        "the stall must exceed the static timing"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = handle
            .metrics(Duration::from_secs(5))
            .expect("reading metrics")
            .shards
            .remove(0)
            .tuning
            .expect("the shard runs a tuner");
        if report.election_timeout_floor_micros >= floor_micros {
            break report;
        }
        assert!(
            Instant::now() < deadline,
            "the floor stayed below {floor_micros} µs after a stall: {report:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        report.knobs.election_timeout_min_micros >= floor_micros,
        "the election timeout was not raised above the floor: {report:?}"
    );
    assert!(
        report.knobs.election_timeout_min_micros > static_min_micros,
        "{report:?}"
    );
    node.shutdown().expect("shutting down");
}
