//! The adaptive tuner of shardraft: it learns a shard's workload from interval samples and
//! chooses batching knobs and group timing within hard safety bounds.
//!
//! The crate is pure computation. It reads no clock, starts no thread, does no I/O and
//! takes no randomness from the operating system: every time is a number of microseconds
//! that the caller passes in, and the only randomness comes from [`TuningConfig::seed`].
//! The same inputs therefore always produce the same decisions, which keeps the tuner
//! reproducible inside the deterministic simulator.
//!
//! # Flow
//!
//! 1. The engine updates a [`SampleCollector`] per shard as events happen (proposals,
//!    AppendEntries, fdatasync, round trips, queue depth, busy time, commits). Every update
//!    costs O(1).
//! 2. At the end of each tuning interval it calls [`SampleCollector::finish_interval`],
//!    which returns an [`IntervalSamples`] summary and resets the collector.
//! 3. [`Tuner::observe`] turns the summary into a [`Decision`]: new batching knobs for the
//!    leader if they changed, and a rarer [`TimingDecision`] for the group's heartbeat and
//!    election timeouts, which the engine replicates through the Raft log.
//!
//! Every change, whatever proposes it, passes through [`safety::KnobGuard::apply`], which
//! enforces the bounds, the timeout and memory rules, the rate limit and the step limit.
//!
//! # Modules
//!
//! - [`histogram`]: a fixed-size log-linear latency histogram.
//! - [`samples`]: the per-interval collector and its summary.
//! - [`knobs`] and [`safety`]: the settings, their bounds and the one guard that changes them.
//! - [`model`]: the online latency and throughput model over a grid of candidate settings.
//! - [`change_point`]: Page–Hinkley detection of shifts in the arrival rate.
//! - [`phi`]: a phi accrual failure detector per peer.
//! - [`config`]: the `[tuning]` configuration table and its validation.
//! - [`tuner`]: the policy that ties them together.
//! - [`synthetic`]: a seeded queueing model of a shard that tests drive the tuner with.
#![forbid(unsafe_code)]

pub mod change_point;
pub mod config;
pub mod histogram;
pub mod knobs;
pub mod model;
pub mod phi;
pub mod rng;
pub mod safety;
pub mod samples;
pub mod synthetic;
pub mod tuner;

pub use change_point::{PageHinkley, Shift};
pub use config::{ConfigError, Objective, ObjectiveKind, TuningConfig};
pub use histogram::LatencyHistogram;
pub use knobs::{BatchingKnobs, Knob, KnobBounds, KnobRange, Knobs, TimingKnobs, TimingTicks};
pub use model::Prediction;
pub use phi::{PhiAccrualDetector, clamp_suspicion_delay};
pub use safety::{KnobChange, KnobGuard};
pub use samples::{IntervalSamples, LatencySummary, PeerRtt, SampleCollector};
pub use tuner::{Decision, Measurement, TimingDecision, Tuner};
