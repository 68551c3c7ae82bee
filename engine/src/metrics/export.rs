//! Renders a [`NodeMetrics`] snapshot in the Prometheus text format through a
//! `prometheus-client` [`Registry`] built for each scrape.
//!
//! Labels stay bounded: `shard` (one per core), `peer` (one per other member), `result` and
//! `reason` (fixed sets), and `group` only while the node hosts at most
//! [`PER_GROUP_SERIES_GROUPS_MAX`] groups. Larger nodes get per-shard counts of groups with
//! and without a leader instead. Histograms are merged across shards, so each has one
//! series per node (per peer for round trips, per stage for the stages of a write).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shardraft_raft::{NodeId, Role};

use super::histogram::LatencyHistogram;
use super::snapshot::{NodeMetrics, ProposalCounts, ShardMetrics};
use super::stage_histogram::StageHistogram;
use super::write_stages::WriteStageLatencies;
use crate::log::DiskLogStats;
use crate::snapshot::SnapshotStats;
use crate::transport::{SnapshotTransferStats, TransportStats};
use crate::tuning::TuningReport;
use shardraft_tuning::Knob;

/// The `Content-Type` of [`encode_text`]'s output: the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Nodes hosting more groups than this export no series per group, so that a scrape stays
/// small and the series count does not grow with the group count.
pub const PER_GROUP_SERIES_GROUPS_MAX: usize = 64;

/// Identity labels of the `shardraft_node_info` series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLabels {
    pub cluster_id: u64,
    pub version: String,
}

/// Renders `metrics` in the Prometheus text format 0.0.4 ([`TEXT_CONTENT_TYPE`]).
///
/// # Errors
/// Only when formatting into the string fails, which `String` never does.
pub fn encode_text(metrics: NodeMetrics, labels: NodeLabels) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { metrics, labels }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// Label pairs of one series.
type Labels = Vec<(&'static str, String)>;

/// Name, help and value of a per-shard counter read from a stats struct `T`.
type CounterFamily<T> = (&'static str, &'static str, fn(&T) -> u64);

#[derive(Debug)]
struct NodeCollector {
    metrics: NodeMetrics,
    labels: NodeLabels,
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let shards = &self.metrics.shards;
        self.encode_info(&mut encoder)?;
        encode_group_counts(&mut encoder, shards)?;
        let hosted_groups: usize = shards.iter().map(|shard| shard.groups.len()).sum();
        if hosted_groups <= PER_GROUP_SERIES_GROUPS_MAX {
            encode_groups(&mut encoder, shards)?;
        }
        encode_proposals(&mut encoder, shards)?;
        encode_write_stages(&mut encoder, &self.metrics.write_stages())?;
        encode_shard_loop(&mut encoder, shards)?;
        encode_transport(&mut encoder, shards)?;
        encode_peers(&mut encoder, shards)?;
        encode_log(&mut encoder, shards)?;
        encode_snapshots(&mut encoder, shards)?;
        encode_tuning(&mut encoder, shards)?;
        Ok(())
    }
}

impl NodeCollector {
    fn encode_info(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "shardraft_node",
            "Identity of this node; the value is always 1.",
            None,
            MetricType::Info,
        )?;
        let labels: Labels = vec![
            ("cluster_id", self.labels.cluster_id.to_string()),
            ("node_id", self.metrics.node_id.0.to_string()),
            ("version", self.labels.version.clone()),
        ];
        metric.encode_info(&labels)
    }
}

fn shard_label(shard: &ShardMetrics) -> Labels {
    vec![("shard", shard.status.shard.to_string())]
}

fn peer_label(peer: NodeId) -> Labels {
    vec![("peer", peer.0.to_string())]
}

/// Writes one counter family, or nothing when `samples` is empty.
fn counters<V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, V)>,
) -> Result<(), fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one gauge family, or nothing when `samples` is empty.
fn gauges<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, V)>,
) -> Result<(), fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Writes one histogram family, or nothing when `samples` is empty.
fn histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, LatencyHistogram)>,
) -> Result<(), fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in samples {
        let mut series = metric.encode_family(&labels)?;
        series.encode_histogram::<Labels>(
            histogram.sum_seconds(),
            histogram.count(),
            &histogram.buckets(),
            None,
        )?;
    }
    Ok(())
}

/// Writes one histogram family of [`StageHistogram`]s, or nothing when `samples` is empty.
fn stage_histograms(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, &StageHistogram)>,
) -> Result<(), fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, histogram) in samples {
        let mut series = metric.encode_family(&labels)?;
        series.encode_histogram::<Labels>(
            histogram.sum_seconds(),
            histogram.count(),
            &histogram.buckets(),
            None,
        )?;
    }
    Ok(())
}

/// Builds one sample per shard, of `value(shard)`.
fn per_shard<V>(shards: &[ShardMetrics], value: impl Fn(&ShardMetrics) -> V) -> Vec<(Labels, V)> {
    shards
        .iter()
        .map(|shard| (shard_label(shard), value(shard)))
        .collect()
}

fn encode_group_counts(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    let count = |shard: &ShardMetrics, keep: fn(&crate::node::GroupStatus) -> bool| {
        shard
            .status
            .groups
            .iter()
            .filter(|group| keep(group))
            .count() as u64
    };
    gauges(
        encoder,
        "shardraft_shard_groups",
        "Raft groups hosted by the shard.",
        per_shard(shards, |shard| shard.status.groups.len() as u64),
    )?;
    gauges(
        encoder,
        "shardraft_shard_groups_without_leader",
        "Groups of the shard that know no leader.",
        per_shard(shards, |shard| count(shard, |group| group.leader.is_none())),
    )?;
    gauges(
        encoder,
        "shardraft_shard_groups_led",
        "Groups of the shard that this node leads.",
        per_shard(shards, |shard| {
            count(shard, |group| group.role == Role::Leader)
        }),
    )?;
    counters(
        encoder,
        "shardraft_shard_leader_changes",
        "New leaders learned by the groups of the shard: each new (term, leader) pair.",
        per_shard(shards, |shard| {
            shard
                .groups
                .iter()
                .map(|group| group.leader_changes)
                .sum::<u64>()
        }),
    )
}

fn encode_groups(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    let statuses = || shards.iter().flat_map(|shard| &shard.status.groups);
    let per_group = |value: &dyn Fn(&crate::node::GroupStatus) -> u64| -> Vec<(Labels, u64)> {
        statuses()
            .map(|group| (vec![("group", group.group.0.to_string())], value(group)))
            .collect()
    };
    gauges(
        encoder,
        "shardraft_group_has_leader",
        "1 when the group knows its leader, 0 otherwise.",
        per_group(&|group| u64::from(group.leader.is_some())),
    )?;
    gauges(
        encoder,
        "shardraft_group_is_leader",
        "1 when this node leads the group, 0 otherwise.",
        per_group(&|group| u64::from(group.role == Role::Leader)),
    )?;
    gauges(
        encoder,
        "shardraft_group_term",
        "Current Raft term of the group on this node.",
        per_group(&|group| group.term.0),
    )?;
    gauges(
        encoder,
        "shardraft_group_commit_index",
        "Highest log index of the group known to be committed.",
        per_group(&|group| group.commit_index.0),
    )?;
    gauges(
        encoder,
        "shardraft_group_applied_index",
        "Highest log index of the group applied to its state machine on this node.",
        per_group(&|group| group.applied_index.0),
    )?;
    gauges(
        encoder,
        "shardraft_group_last_index",
        "Highest log index of the group in this node's log.",
        per_group(&|group| group.last_index.0),
    )?;
    let group_metrics = || shards.iter().flat_map(|shard| &shard.groups);
    gauges(
        encoder,
        "shardraft_group_voters",
        "Voting members of the group.",
        group_metrics()
            .map(|group| {
                let labels = vec![("group", group.group.0.to_string())];
                (labels, group.voters.len() as u64)
            })
            .collect(),
    )?;
    counters(
        encoder,
        "shardraft_group_leader_changes",
        "New leaders learned by the group: each new (term, leader) pair.",
        group_metrics()
            .map(|group| {
                let labels = vec![("group", group.group.0.to_string())];
                (labels, group.leader_changes)
            })
            .collect(),
    )
}

fn encode_proposals(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    let mut samples = Vec::new();
    for shard in shards {
        let counts: &ProposalCounts = &shard.proposals;
        for (result, count) in counts.by_result() {
            let mut labels = shard_label(shard);
            labels.push(("result", result.to_string()));
            samples.push((labels, count));
        }
    }
    counters(
        encoder,
        "shardraft_proposals",
        "Proposals that ended, by result: applied, not_leader, dropped (replaced by another \
         leader's entry), timeout or busy (flow-control limit).",
        samples,
    )?;
    let mut commit_latency = LatencyHistogram::default();
    for shard in shards {
        commit_latency.merge(&shard.commit_latency);
    }
    histograms(
        encoder,
        "shardraft_commit_latency_seconds",
        "Time from a proposal reaching its shard until it was applied at this node as the \
         leader.",
        vec![(Labels::new(), commit_latency)],
    )?;
    let mut read_latency = StageHistogram::default();
    for shard in shards {
        read_latency.merge(&shard.read_latency);
    }
    stage_histograms(
        encoder,
        "shardraft_read_latency_seconds",
        "Time from a linearizable read reaching its shard until it was served at this node \
         as the leader.",
        vec![(Labels::new(), &read_latency)],
    )
}

fn encode_write_stages(
    encoder: &mut DescriptorEncoder,
    latencies: &WriteStageLatencies,
) -> Result<(), fmt::Error> {
    let samples = latencies
        .stages()
        .map(|(stage, histogram)| (vec![("stage", stage.name().to_string())], histogram))
        .collect();
    stage_histograms(
        encoder,
        "shardraft_write_stage_seconds",
        "Time writes answered by this node as the leader spent in each stage, from the \
         proposal to its answer: queued, batched, log_write_submitted, fdatasync_completed, \
         replicated_to_quorum, applied, answered. A write's stages add up to its \
         shardraft_write_seconds; followers record nothing.",
        samples,
    )?;
    stage_histograms(
        encoder,
        "shardraft_write_seconds",
        "Time from a proposal until its answer was sent, for writes answered by this node \
         as the leader with their applied result.",
        vec![(Labels::new(), latencies.total())],
    )
}

fn encode_shard_loop(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    counters(
        encoder,
        "shardraft_shard_busy_seconds",
        "Time the shard's loop spent handling events and ready work, not waiting.",
        per_shard(shards, |shard| shard.busy_time.as_secs_f64()),
    )?;
    counters(
        encoder,
        "shardraft_shard_rejected_messages",
        "Raft messages the cores of the shard rejected (wrong recipient, unknown sender, \
         stale term, malformed).",
        per_shard(shards, |shard| shard.status.rejected_messages),
    )?;
    counters(
        encoder,
        "shardraft_shard_elections_started",
        "Elections the shard's replicas started, each raising a group's term; pre-vote rounds \
         are not counted.",
        per_shard(shards, |shard| shard.status.elections_started),
    )?;
    counters(
        encoder,
        "shardraft_shard_elections_won",
        "Elections the shard's replicas won, each making this node a group's leader.",
        per_shard(shards, |shard| shard.status.elections_won),
    )?;
    counters(
        encoder,
        "shardraft_leader_disk_transfers",
        "Groups the shard handed to a follower because its own fdatasync p99 was far above \
         the follower's estimated disk latency (disk_transfer).",
        per_shard(shards, |shard| shard.leader_disk_transfers),
    )?;
    counters(
        encoder,
        "shardraft_shard_executor_stalls",
        &format!(
            "Times the node's watchdog found the shard's executor without a tick of its wake \
             guard for {} ms and interrupted its sleep with SIGURG.",
            crate::wake_guard::STALL_MILLIS
        ),
        per_shard(shards, |shard| shard.executor_stalls),
    )
}

fn encode_transport(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    let families: [CounterFamily<TransportStats>; 8] = [
        (
            "shardraft_transport_sent_frames",
            "Frames written to peers.",
            |stats| stats.frames_sent,
        ),
        (
            "shardraft_transport_received_frames",
            "Valid frames received from peers.",
            |stats| stats.frames_received,
        ),
        (
            "shardraft_transport_sent_messages",
            "Raft messages written to peers.",
            |stats| stats.messages_sent,
        ),
        (
            "shardraft_transport_received_messages",
            "Raft messages received from peers for groups of the shard.",
            |stats| stats.messages_received,
        ),
        (
            "shardraft_transport_dropped_messages",
            "Outgoing messages dropped because the peer was disconnected or its queue full.",
            |stats| stats.messages_dropped,
        ),
        (
            "shardraft_transport_misrouted_messages",
            "Received messages dropped because they were addressed to another node or group.",
            |stats| stats.messages_misrouted,
        ),
        (
            "shardraft_transport_connects",
            "Outbound peer connections established.",
            |stats| stats.connects,
        ),
        (
            "shardraft_transport_disconnects",
            "Outbound peer connections lost.",
            |stats| stats.disconnects,
        ),
    ];
    for (name, help, value) in families {
        let samples = per_shard(shards, |shard| value(&shard.status.transport));
        counters(encoder, name, help, samples)?;
    }
    let mut samples = Vec::new();
    for shard in shards {
        for (reason, count) in shard.status.transport.rejections.by_reason() {
            let mut labels = shard_label(shard);
            labels.push(("reason", reason.to_string()));
            samples.push((labels, count));
        }
    }
    counters(
        encoder,
        "shardraft_transport_rejected_connections",
        "Inbound peer connections closed after invalid input, by reason.",
        samples,
    )
}

fn encode_snapshots(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    let taken: [CounterFamily<SnapshotStats>; 4] = [
        (
            "shardraft_snapshots_taken",
            "Snapshots the shard's groups took and stored durably.",
            |stats| stats.taken,
        ),
        (
            "shardraft_snapshots_failed",
            "Snapshots whose serialization or storing failed.",
            |stats| stats.failed,
        ),
        (
            "shardraft_snapshots_installed",
            "Snapshots received from a leader and installed into a state machine.",
            |stats| stats.installed,
        ),
        (
            "shardraft_snapshot_installed_bytes",
            "Bytes of state machine data installed from received snapshots.",
            |stats| stats.installed_bytes,
        ),
    ];
    for (name, help, value) in taken {
        counters(
            encoder,
            name,
            help,
            per_shard(shards, |shard| value(&shard.snapshots)),
        )?;
    }
    let transfers: [CounterFamily<SnapshotTransferStats>; 9] = [
        (
            "shardraft_snapshot_transfers_started",
            "Snapshot sending attempts started, resumed ones included.",
            |stats| stats.started,
        ),
        (
            "shardraft_snapshot_transfers_finished",
            "Snapshot sending attempts the receiver confirmed stored.",
            |stats| stats.finished,
        ),
        (
            "shardraft_snapshot_transfers_failed",
            "Snapshot sending attempts that broke off; the leader retries.",
            |stats| stats.failed,
        ),
        (
            "shardraft_snapshot_transfers_resumed",
            "Snapshot sending attempts that resumed where the receiver's partial file ended.",
            |stats| stats.resumed,
        ),
        (
            "shardraft_snapshot_sent_bytes",
            "Snapshot bytes sent in chunks.",
            |stats| stats.bytes_sent,
        ),
        (
            "shardraft_snapshot_received_bytes",
            "Snapshot bytes received in chunks.",
            |stats| stats.bytes_received,
        ),
        (
            "shardraft_snapshot_receptions_stored",
            "Snapshots received, verified and stored durably.",
            |stats| stats.received,
        ),
        (
            "shardraft_snapshot_receptions_rejected",
            "Snapshot receptions closed after invalid input or a storage failure.",
            |stats| stats.rejected,
        ),
        (
            "shardraft_snapshot_receptions_interrupted",
            "Snapshot receptions that broke off; the partial file is kept for resuming.",
            |stats| stats.interrupted,
        ),
    ];
    for (name, help, value) in transfers {
        let samples = per_shard(shards, |shard| value(&shard.snapshot_transfers));
        counters(encoder, name, help, samples)?;
    }
    let mut merged = SnapshotStats::default();
    for shard in shards {
        merged.merge(&shard.snapshots);
    }
    histograms(
        encoder,
        "shardraft_snapshot_creation_seconds",
        "Time from taking a snapshot's view to storing it durably.",
        vec![(Vec::new(), merged.creation)],
    )?;
    histograms(
        encoder,
        "shardraft_snapshot_receive_seconds",
        "Time from a snapshot transfer's first frame to the durable store, at the receiver.",
        vec![(Vec::new(), merged.receive)],
    )?;
    gauges(
        encoder,
        "shardraft_snapshot_install_bytes_per_second",
        "Installed snapshot bytes per second of receiving and restoring, over all installs.",
        vec![(
            Vec::new(),
            merged.install_bytes_per_second().unwrap_or(0.0) as u64,
        )],
    )?;
    gauges(
        encoder,
        "shardraft_snapshot_last_file_bytes",
        "Size of the largest last snapshot file of any shard.",
        vec![(Vec::new(), merged.last_file_bytes)],
    )
}

/// Per-peer traffic, summed over shards.
fn encode_peers(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    let mut peers = std::collections::BTreeMap::<NodeId, (u64, u64, u64, StageHistogram)>::new();
    for stats in shards.iter().flat_map(|shard| &shard.peers) {
        let peer = peers.entry(stats.peer).or_default();
        peer.0 += stats.bytes_sent;
        peer.1 += stats.bytes_received;
        peer.2 += u64::from(stats.connected);
        peer.3.merge(&stats.round_trip);
    }
    let samples = |value: fn(&(u64, u64, u64, StageHistogram)) -> u64| {
        peers
            .iter()
            .map(|(peer, totals)| (peer_label(*peer), value(totals)))
            .collect()
    };
    counters(
        encoder,
        "shardraft_peer_sent_bytes",
        "Frame bytes written to the peer, headers included.",
        samples(|totals| totals.0),
    )?;
    counters(
        encoder,
        "shardraft_peer_received_bytes",
        "Frame bytes received from the peer, headers included.",
        samples(|totals| totals.1),
    )?;
    gauges(
        encoder,
        "shardraft_peer_connected_shards",
        "Shards of this node whose outbound connection to the peer is up.",
        samples(|totals| totals.2),
    )?;
    stage_histograms(
        encoder,
        "shardraft_peer_round_trip_seconds",
        "Time from writing a heartbeat to the peer until a heartbeat response from it \
         arrives, one probe at a time; includes both shards' loop delays.",
        peers
            .iter()
            .map(|(peer, totals)| (peer_label(*peer), &totals.3))
            .collect(),
    )
}

fn encode_log(encoder: &mut DescriptorEncoder, shards: &[ShardMetrics]) -> Result<(), fmt::Error> {
    let disk: Vec<(&ShardMetrics, &DiskLogStats)> = shards
        .iter()
        .filter_map(|shard| shard.status.log.as_ref().map(|log| (shard, log)))
        .collect();
    let samples = |value: fn(&DiskLogStats) -> u64| -> Vec<(Labels, u64)> {
        disk.iter()
            .map(|(shard, log)| (shard_label(shard), value(log)))
            .collect()
    };
    let families: [CounterFamily<DiskLogStats>; 7] = [
        (
            "shardraft_log_syncs",
            "Syncs of the write-ahead log: O_DSYNC batch writes or fdatasyncs, checkpoints included.",
            |log| log.syncs,
        ),
        (
            "shardraft_log_synced_entries",
            "Entry records made durable by the syncs.",
            |log| log.entries,
        ),
        (
            "shardraft_log_synced_bytes",
            "Bytes written and made durable, padding and checkpoints included.",
            |log| log.bytes,
        ),
        (
            "shardraft_log_rotations",
            "Segments started after the first.",
            |log| log.rotations,
        ),
        (
            "shardraft_log_deleted_segments",
            "Segments retired after compaction.",
            |log| log.segments_deleted,
        ),
        (
            "shardraft_log_recycled_segments",
            "Retired segments reused as new segments.",
            |log| log.segments_recycled,
        ),
        (
            "shardraft_log_created_segments",
            "Segment files created, and zero-filled unless configured otherwise, for lack \
             of a retired segment to reuse.",
            |log| log.segments_created,
        ),
    ];
    for (name, help, value) in families {
        counters(encoder, name, help, samples(value))?;
    }
    let seconds = |value: fn(&DiskLogStats) -> u64| -> Vec<(Labels, f64)> {
        disk.iter()
            .map(|(shard, log)| (shard_label(shard), value(log) as f64 / 1e6))
            .collect()
    };
    // The fdatasync time is the `_sum` of the histogram below.
    counters(
        encoder,
        "shardraft_log_write_seconds",
        "Time spent in batch writes, from submission to completion.",
        seconds(|log| log.write_micros_total),
    )?;
    if disk.is_empty() {
        return Ok(());
    }
    let mut sync_latency = StageHistogram::default();
    for (_, log) in &disk {
        sync_latency.merge(&log.sync_latency);
    }
    stage_histograms(
        encoder,
        "shardraft_log_sync_duration_seconds",
        "Duration of each sync of the write-ahead log: an O_DSYNC batch write or an fdatasync.",
        vec![(Labels::new(), &sync_latency)],
    )
}

/// Writes the tuner's state of every shard that runs one: knobs, prediction and measurement.
fn encode_tuning(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardMetrics],
) -> Result<(), fmt::Error> {
    let tuned: Vec<(Labels, &TuningReport)> = shards
        .iter()
        .filter_map(|shard| Some((shard_label(shard), shard.tuning.as_ref()?)))
        .collect();
    if tuned.is_empty() {
        return Ok(());
    }
    let each = |value: &dyn Fn(&TuningReport) -> u64| -> Vec<(Labels, u64)> {
        tuned
            .iter()
            .map(|(labels, report)| (labels.clone(), value(report)))
            .collect()
    };
    counters(
        encoder,
        "shardraft_tuning_intervals",
        "Tuning intervals the shard's tuner completed.",
        each(&|report| report.intervals),
    )?;
    counters(
        encoder,
        "shardraft_tuning_batching_changes",
        "Batching decisions of the tuner that the shard applied.",
        each(&|report| report.batching_changes),
    )?;
    counters(
        encoder,
        "shardraft_tuning_timing_decisions",
        "Heartbeat and election timeout changes the tuner decided.",
        each(&|report| report.timing_decisions),
    )?;
    counters(
        encoder,
        "shardraft_tuning_timing_proposals",
        "Timing changes the shard appended to the log of a group it leads, so that every \
         replica of the group switches at the same log index.",
        each(&|report| report.timing_proposals),
    )?;
    let mut knobs = Vec::new();
    for (labels, report) in &tuned {
        for knob in Knob::ALL {
            let mut labels = labels.clone();
            labels.push(("knob", knob.name().to_string()));
            knobs.push((labels, report.knobs.get(knob)));
        }
    }
    gauges(
        encoder,
        "shardraft_tuning_knob",
        "Each knob's value in the shard's tuner; a group runs with the timing knobs once its \
         leader appended them. The `knob` label names the knob with its unit.",
        knobs,
    )?;
    let mut predicted = Vec::new();
    let mut measured = Vec::new();
    for (labels, report) in &tuned {
        // `quantile` is reserved for summaries, so the percentile goes in its own label.
        let percentile = |percentile: &str| {
            let mut labels = labels.clone();
            labels.push(("percentile", percentile.to_string()));
            labels
        };
        if let Some(prediction) = report.prediction {
            predicted.push((percentile("p50"), prediction.p50_micros / 1e6));
            predicted.push((percentile("p99"), prediction.p99_micros / 1e6));
        }
        measured.push((percentile("p50"), report.measured_p50_micros as f64 / 1e6));
        measured.push((percentile("p99"), report.measured_p99_micros as f64 / 1e6));
    }
    gauges(
        encoder,
        "shardraft_tuning_predicted_commit_seconds",
        "Commit latency the tuner's model predicts for the knobs in force.",
        predicted,
    )?;
    gauges(
        encoder,
        "shardraft_tuning_measured_commit_seconds",
        "Commit latency measured in the last tuning interval (bucket upper bounds).",
        measured,
    )?;
    let throughput: Vec<(Labels, f64)> = tuned
        .iter()
        .filter_map(|(labels, report)| {
            Some((labels.clone(), report.prediction?.throughput_per_second))
        })
        .collect();
    gauges(
        encoder,
        "shardraft_tuning_predicted_commits_per_second",
        "Commits per second the tuner's model predicts for the knobs in force.",
        throughput,
    )?;
    gauges(
        encoder,
        "shardraft_tuning_measured_commits_per_second",
        "Commits per second measured in the last tuning interval.",
        tuned
            .iter()
            .map(|(labels, report)| (labels.clone(), report.measured_commits_per_second))
            .collect(),
    )?;
    let mut phi = Vec::new();
    let mut delays = Vec::new();
    for (labels, report) in &tuned {
        for suspicion in &report.peers {
            let mut labels = labels.clone();
            labels.push(("peer", suspicion.peer.0.to_string()));
            phi.push((labels.clone(), suspicion.phi));
            if let Some(delay) = suspicion.suspicion_delay_micros {
                delays.push((labels, delay as f64 / 1e6));
            }
        }
    }
    gauges(
        encoder,
        "shardraft_peer_phi",
        "Suspicion level of the peer's accrual failure detector over its heartbeats: \
         -log10 of the probability that a heartbeat this late still comes.",
        phi,
    )?;
    gauges(
        encoder,
        "shardraft_peer_suspicion_delay_seconds",
        "Silence after the peer's last heartbeat at which its failure detector reaches \
         tuning.phi_threshold.",
        delays,
    )?;
    gauges(
        encoder,
        "shardraft_tuning_election_timeout_floor_seconds",
        "The lowest election timeout the observed round trips, fdatasyncs and stalls of the \
         shard's loop allow.",
        tuned
            .iter()
            .map(|(labels, report)| {
                (
                    labels.clone(),
                    report.election_timeout_floor_micros as f64 / 1e6,
                )
            })
            .collect(),
    )?;
    gauges(
        encoder,
        "shardraft_tuning_stall_max_seconds",
        "The maximum stall of the shard's loop in the last tuning interval: the largest gap \
         between two ticks it handled, less the tick interval.",
        tuned
            .iter()
            .map(|(labels, report)| (labels.clone(), report.stall_max_micros as f64 / 1e6))
            .collect(),
    )
}
