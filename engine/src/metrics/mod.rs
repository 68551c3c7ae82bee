//! Instrumentation of a node and its export in the Prometheus text format.
//!
//! Each shard counts into plain fields that only its own thread touches: no locks or
//! atomics on the hot path. [`NodeHandle::metrics`](crate::node::NodeHandle::metrics) asks
//! every shard for a [`ShardMetrics`] snapshot over its request channel, and
//! [`encode_text`] merges the snapshots into one scrape.
//!
//! Latencies are histograms with fixed bucket sets, so histograms of different shards add
//! up bucket by bucket. Commit, snapshot and install latencies are [`LatencyHistogram`]s
//! ([`LATENCY_BUCKET_BOUNDS_SECONDS`], 50 µs to 10 s). The stages of a write
//! ([`WriteStageLatencies`]), reads, fdatasyncs and peer round trips, which the tuner and
//! the disk-health check read, use [`StageHistogram`]s with a finer bucket set
//! ([`STAGE_BUCKET_BOUNDS_NANOS`], 1 µs to 10 s).

mod export;
mod histogram;
mod snapshot;
mod stage_histogram;
mod write_stages;

pub use export::{NodeLabels, PER_GROUP_SERIES_GROUPS_MAX, TEXT_CONTENT_TYPE, encode_text};
pub use histogram::{LATENCY_BUCKET_BOUNDS_SECONDS, LATENCY_BUCKETS, LatencyHistogram};
pub use snapshot::{GroupMetrics, NodeMetrics, ProposalCounts, ShardMetrics, SnapshotError};
pub use stage_histogram::{STAGE_BUCKET_BOUNDS_NANOS, STAGE_BUCKETS, StageHistogram};
pub(crate) use write_stages::WritePoints;
pub use write_stages::{WRITE_STAGES, WriteStage, WriteStageLatencies};
