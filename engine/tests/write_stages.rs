//! The per-stage latency breakdown of writes, on three-node clusters in this test process.
//! Every write the leader completes counts once in every stage, and the stages add up to the
//! total. The total fits inside the latency the proposer saw, and the Prometheus text
//! contains the histograms. The checks are about what is counted, not about speed.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use shardraft::kv;
use shardraft::log::{GroupId, StorageKind};
use shardraft::metrics::{NodeLabels, NodeMetrics, WriteStage, WriteStageLatencies, encode_text};
use shardraft::node::NodeError;
use support::*;

const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

fn put(key: &str, value: &str) -> Bytes {
    kv::Command::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
    .expect("encoding a put")
}

fn metrics(handle: &KvHandle) -> NodeMetrics {
    handle
        .metrics(METRICS_TIMEOUT)
        .expect("reading node metrics")
}

/// Finds the value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Checks that every stage and the total counted `writes` writes, and that the stage sums
/// add up to the total's sum.
fn assert_counts_and_partition(latencies: &WriteStageLatencies, writes: u64) {
    assert_eq!(latencies.writes(), writes, "writes recorded");
    assert_eq!(latencies.total().count(), writes, "total count");
    for (stage, histogram) in latencies.stages() {
        assert_eq!(histogram.count(), writes, "count of {stage}");
    }
    let stage_sum_nanos: u64 = latencies
        .stages()
        .map(|(_, histogram)| histogram.sum_nanos())
        .sum();
    assert_eq!(
        stage_sum_nanos,
        latencies.total().sum_nanos(),
        "the stages partition the total"
    );
    let stage_mean_sum: f64 = latencies
        .stages()
        .filter_map(|(_, histogram)| histogram.mean_micros())
        .sum();
    let total_mean = latencies.total().mean_micros().unwrap_or(0.0);
    assert!(
        stage_mean_sum <= total_mean + 0.001,
        "stage means add up to {stage_mean_sum} us, the total mean is {total_mean} us"
    );
}

#[test]
fn leader_records_every_stage_and_followers_none() {
    let dir = test_dir("leader_records_every_stage_and_followers_none");
    let configs = cluster_configs(&dir, 3, 1, 1);
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();
    let group = GroupId(0);
    let leader = wait_for_leader(
        &handles.iter().collect::<Vec<_>>(),
        group,
        Duration::from_secs(10),
    );
    let leader_handle = &handles[leader.0 as usize - 1];

    let writes = 50;
    let mut client_nanos = 0;
    for i in 0..writes {
        let started = Instant::now();
        leader_handle
            .propose(group, put(&format!("key-{i}"), "value"))
            .expect("proposing a put");
        client_nanos += started.elapsed().as_nanos() as u64;
    }

    let leader_metrics = metrics(leader_handle);
    let latencies = leader_metrics.write_stages();
    assert_counts_and_partition(&latencies, writes);
    for (stage, histogram) in latencies.stages() {
        assert!(histogram.sum_nanos() > 0, "{stage} measured no time");
    }
    // The proposer may hold its reply before the shard's clock read after sending it, so
    // only the time up to `applied` must fit inside what the proposer saw.
    let total_nanos = latencies.total().sum_nanos();
    let answered_nanos = latencies.stage(WriteStage::Answered).sum_nanos();
    let before_answer_nanos = total_nanos - answered_nanos;
    assert!(
        before_answer_nanos <= client_nanos,
        "recorded time up to applying, {before_answer_nanos} ns, exceeds what the proposer \
         saw, {client_nanos} ns"
    );
    // The proposer also waits for its thread to wake after the reply. With an fdatasync in
    // every write, that wait is a small part of the whole.
    assert!(
        total_nanos >= client_nanos / 4,
        "recorded total {total_nanos} ns is far below what the proposer saw, {client_nanos} ns"
    );
    let commit_latency = &leader_metrics.shards[0].commit_latency;
    assert_eq!(commit_latency.count(), writes, "commit latencies");
    let batched_to_applied_nanos: u64 = [
        WriteStage::Batched,
        WriteStage::LogWriteSubmitted,
        WriteStage::FdatasyncCompleted,
        WriteStage::ReplicatedToQuorum,
        WriteStage::Applied,
    ]
    .into_iter()
    .map(|stage| latencies.stage(stage).sum_nanos())
    .sum();
    let difference = (commit_latency.sum_seconds() - batched_to_applied_nanos as f64 / 1e9).abs();
    assert!(
        difference < 1e-6,
        "commit latency and the stages from batched to applied differ by {difference} s"
    );

    for handle in handles.iter().filter(|handle| handle.node_id() != leader) {
        let follower = metrics(handle).write_stages();
        assert_eq!(
            follower,
            WriteStageLatencies::default(),
            "follower records nothing"
        );
    }

    let text = encode_text(
        leader_metrics,
        NodeLabels {
            cluster_id: configs[0].cluster_id,
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
    )
    .expect("encoding the metrics");
    assert!(text.contains("# TYPE shardraft_write_stage_seconds histogram"));
    assert!(text.contains("# TYPE shardraft_write_seconds histogram"));
    for stage in WriteStage::ALL {
        let name = stage.name();
        let count = format!("shardraft_write_stage_seconds_count{{stage=\"{name}\"}}");
        assert_eq!(sample(&text, &count), Some(writes as f64), "{count}");
        let first =
            format!("shardraft_write_stage_seconds_bucket{{stage=\"{name}\",le=\"1e-06\"}}");
        assert!(
            sample(&text, &first).is_some(),
            "no 1 us bucket for {name}:\n{text}"
        );
        let infinite =
            format!("shardraft_write_stage_seconds_bucket{{stage=\"{name}\",le=\"+Inf\"}}");
        assert_eq!(sample(&text, &infinite), Some(writes as f64), "{infinite}");
    }
    let total_count = sample(&text, "shardraft_write_seconds_count");
    assert_eq!(total_count, Some(writes as f64));
    check_with_promtool(&text);

    for node in nodes {
        node.shutdown().expect("shutting down");
    }
}

/// Proposes to whichever node leads `group`, following `NotLeader` errors, until the
/// proposal is applied or `timeout` passes.
fn propose_at_leader(handles: &[KvHandle], group: GroupId, command: Bytes, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut target = 0;
    loop {
        match handles[target % handles.len()].propose(group, command.clone()) {
            Ok(_) => return,
            Err(NodeError::NotLeader {
                leader: Some(leader),
                ..
            }) => {
                target = handles
                    .iter()
                    .position(|handle| handle.node_id() == leader)
                    .unwrap_or(target + 1);
            }
            Err(_) => target += 1,
        }
        assert!(
            Instant::now() < deadline,
            "no node applied the proposal to group {group} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_writes_on_two_shards_count_once_each() {
    let dir = test_dir("concurrent_writes_on_two_shards_count_once_each");
    let mut configs = cluster_configs(&dir, 3, 2, 8);
    for config in &mut configs {
        // The memory log reports durability at once, the other path to the same stages.
        config.log.storage = StorageKind::Memory;
    }
    let nodes: Vec<KvNode> = configs.iter().map(start_node).collect();
    let handles: Vec<KvHandle> = nodes.iter().map(|node| node.handle()).collect();

    let writers = 8;
    let writes_per_writer = 25;
    let threads: Vec<std::thread::JoinHandle<()>> = (0..writers)
        .map(|writer| {
            let handles = handles.clone();
            std::thread::spawn(move || {
                let group = GroupId(writer % 8);
                for i in 0..writes_per_writer {
                    let command = put(&format!("writer-{writer}-{i}"), "value");
                    propose_at_leader(&handles, group, command, Duration::from_secs(20));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a writer thread panicked");
    }

    let mut recorded = 0;
    for handle in &handles {
        let node_metrics = metrics(handle);
        let merged = node_metrics.write_stages();
        let applied: u64 = node_metrics
            .shards
            .iter()
            .map(|shard| shard.proposals.applied)
            .sum();
        assert_counts_and_partition(&merged, applied);
        let shard_writes: u64 = node_metrics
            .shards
            .iter()
            .map(|shard| shard.write_stages.writes())
            .sum();
        assert_eq!(shard_writes, merged.writes(), "node {}", handle.node_id());
        recorded += merged.writes();
    }
    assert_eq!(recorded, u64::from(writers * writes_per_writer));

    for node in nodes {
        node.shutdown().expect("shutting down");
    }
}
