//! The latency of each stage of a write on the leader: one [`StageHistogram`] per stage, and
//! one of the whole time from the proposal to the reply.
//!
//! A write passes eight points in time, each taken by the runtime. A stage is the time
//! from one point to the next, so the seven stages add up to the total. The runtime takes
//! most points once per turn of the shard's loop or once per batch, not once per write.
//! docs/shard-runtime.md defines each point and its cost.

use std::time::Instant;

use super::stage_histogram::StageHistogram;

/// Number of [`WriteStage`]s.
pub const WRITE_STAGES: usize = 7;

/// A stage of a write on the leader, in the order a write passes them. Each is named for the
/// point that ends it, except `Queued` and `Batched`, named for the wait they measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WriteStage {
    /// From the call of `NodeHandle::propose` until the shard's loop takes the proposal in
    /// a turn: the request channel, including a wait for room in it.
    Queued,
    /// From being taken until the turn's `WriteBatch` is handed to the log: the rest of the
    /// turn's events and the ready work of every group.
    Batched,
    /// The log's `submit` call, which stages the batch for its writer.
    LogWriteSubmitted,
    /// From the submission until the log reported the batch durable: the leader's own
    /// write and fdatasync, and any batch ahead of it.
    FdatasyncCompleted,
    /// From the leader's own durability until the loop takes the entry to apply it, which
    /// needs a quorum's acknowledgement.
    ReplicatedToQuorum,
    /// From being taken for applying until the state machine applied every entry taken
    /// with it.
    Applied,
    /// From being applied until the reply was sent to the proposer.
    Answered,
}

impl WriteStage {
    /// Every stage, in the order a write passes them.
    pub const ALL: [WriteStage; WRITE_STAGES] = [
        WriteStage::Queued,
        WriteStage::Batched,
        WriteStage::LogWriteSubmitted,
        WriteStage::FdatasyncCompleted,
        WriteStage::ReplicatedToQuorum,
        WriteStage::Applied,
        WriteStage::Answered,
    ];

    /// Returns the stage's name in snake case, the value of the `stage` label of
    /// `shardraft_write_stage_seconds`.
    pub const fn name(self) -> &'static str {
        match self {
            WriteStage::Queued => "queued",
            WriteStage::Batched => "batched",
            WriteStage::LogWriteSubmitted => "log_write_submitted",
            WriteStage::FdatasyncCompleted => "fdatasync_completed",
            WriteStage::ReplicatedToQuorum => "replicated_to_quorum",
            WriteStage::Applied => "applied",
            WriteStage::Answered => "answered",
        }
    }
}

impl std::fmt::Display for WriteStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Histograms of each [`WriteStage`] and of the total, over the writes this node completed as
/// the leader: those whose proposer got the applied result.
///
/// Every recorded write counts once in every histogram, so all have the same count, and the
/// stage sums add up to the total's sum. Followers record nothing: they run no stage of a
/// write they did not receive from a proposer. Writes that failed (not leader, dropped,
/// timed out, busy) are not recorded.
///
/// ```no_run
/// use std::time::Duration;
/// # use shardraft::kv::KvStateMachine;
/// # fn report(handle: &shardraft::node::NodeHandle<KvStateMachine>) {
/// let metrics = handle.metrics(Duration::from_secs(1)).expect("every shard answers");
/// let latencies = metrics.write_stages();
/// for (stage, histogram) in latencies.stages() {
///     let p99 = histogram.quantile_micros(0.99).unwrap_or(0.0);
///     println!("{stage}: {} writes, p99 {p99:.1} us", histogram.count());
/// }
/// println!("total mean: {:?} us", latencies.total().mean_micros());
/// # }
/// ```
///
/// To convert a histogram to another type, walk
/// [`STAGE_BUCKET_BOUNDS_NANOS`](super::STAGE_BUCKET_BOUNDS_NANOS) beside
/// [`StageHistogram::bucket_counts`] and record each bucket's count at a value inside the
/// bucket, such as its upper bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStageLatencies {
    /// Indexed by `WriteStage as usize`.
    stages: [StageHistogram; WRITE_STAGES],
    total: StageHistogram,
}

impl WriteStageLatencies {
    pub fn stage(&self, stage: WriteStage) -> &StageHistogram {
        &self.stages[stage as usize]
    }

    /// Returns every stage with its histogram, in the order a write passes them.
    pub fn stages(&self) -> impl Iterator<Item = (WriteStage, &StageHistogram)> {
        WriteStage::ALL.into_iter().zip(&self.stages)
    }

    /// Time from the call of `NodeHandle::propose` until the reply was sent: the sum of the
    /// stages.
    pub fn total(&self) -> &StageHistogram {
        &self.total
    }

    /// Number of writes recorded.
    pub fn writes(&self) -> u64 {
        self.total.count()
    }

    /// Adds every observation of `other`.
    pub fn merge(&mut self, other: &WriteStageLatencies) {
        for (stage, added) in self.stages.iter_mut().zip(&other.stages) {
            stage.merge(added);
        }
        self.total.merge(&other.total);
    }

    /// Records one write. A point earlier than the one before it (which the runtime's order
    /// of events rules out, but a clock cannot promise) counts as equal to it, so that the
    /// stages still add up to the total.
    pub(crate) fn record(&mut self, points: &WritePoints) {
        let points = [
            points.sent_at,
            points.taken_at,
            points.submit_started_at,
            points.submitted_at,
            points.durable_at,
            points.committed_at,
            points.applied_at,
            points.answered_at,
        ];
        let mut previous = points[0];
        for (stage, point) in self.stages.iter_mut().zip(&points[1..]) {
            let point = (*point).max(previous);
            stage.record(point - previous);
            previous = point;
        }
        self.total.record(previous - points[0]);
    }
}

/// The points in time that end the stages of one write, in order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WritePoints {
    /// `NodeHandle::propose` was called.
    pub sent_at: Instant,
    /// The turn of the shard's loop that took the proposal started.
    pub taken_at: Instant,
    /// The loop is about to submit the batch with the proposal's entry.
    pub submit_started_at: Instant,
    /// The submission returned.
    pub submitted_at: Instant,
    /// The log's durability report for that batch reached the shard.
    pub durable_at: Instant,
    /// The loop took the group's committed entries that include this one, to apply them.
    pub committed_at: Instant,
    /// The state machine applied the entries taken with this one.
    pub applied_at: Instant,
    /// The replies to those entries' proposers were sent.
    pub answered_at: Instant,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn points_from_offsets(offsets_micros: [u64; 8]) -> WritePoints {
        let base = Instant::now();
        let at = |i: usize| base + Duration::from_micros(offsets_micros[i]);
        WritePoints {
            sent_at: at(0),
            taken_at: at(1),
            submit_started_at: at(2),
            submitted_at: at(3),
            durable_at: at(4),
            committed_at: at(5),
            applied_at: at(6),
            answered_at: at(7),
        }
    }

    #[test]
    fn stages_measure_the_gaps_between_points() {
        let mut latencies = WriteStageLatencies::default();
        latencies.record(&points_from_offsets([0, 10, 15, 17, 400, 450, 452, 460]));
        let expected_micros = [10, 5, 2, 383, 50, 2, 8];
        for (stage, micros) in WriteStage::ALL.into_iter().zip(expected_micros) {
            let histogram = latencies.stage(stage);
            assert_eq!(histogram.count(), 1, "{stage}");
            assert_eq!(histogram.sum_nanos(), micros * 1_000, "{stage}");
        }
        assert_eq!(latencies.total().sum_nanos(), 460_000);
    }

    #[test]
    fn point_before_its_predecessor_counts_as_equal() {
        let mut latencies = WriteStageLatencies::default();
        latencies.record(&points_from_offsets([0, 10, 15, 17, 400, 300, 452, 460]));
        let replicated = latencies.stage(WriteStage::ReplicatedToQuorum);
        assert_eq!(replicated.sum_nanos(), 0);
        let applied = latencies.stage(WriteStage::Applied);
        assert_eq!(applied.sum_nanos(), 52_000);
        let stage_sum: u64 = latencies.stages().map(|(_, h)| h.sum_nanos()).sum();
        assert_eq!(stage_sum, latencies.total().sum_nanos());
    }

    #[test]
    fn merge_adds_every_stage_and_the_total() {
        let mut first = WriteStageLatencies::default();
        first.record(&points_from_offsets([0, 1, 2, 3, 4, 5, 6, 7]));
        let mut second = first.clone();
        second.record(&points_from_offsets([0, 2, 4, 6, 8, 10, 12, 14]));
        first.merge(&second);
        assert_eq!(first.writes(), 3);
        for (stage, histogram) in first.stages() {
            assert_eq!(histogram.count(), 3, "{stage}");
        }
        assert_eq!(first.total().sum_nanos(), 28_000);
    }

    #[test]
    fn stage_names_are_distinct_snake_case() {
        let names: std::collections::BTreeSet<&str> =
            WriteStage::ALL.iter().map(|stage| stage.name()).collect();
        assert_eq!(names.len(), WRITE_STAGES);
        for name in names {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
        }
    }
}
