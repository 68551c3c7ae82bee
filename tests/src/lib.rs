//! Test infrastructure for shardraft: a linearizability checker for client histories and
//! a deterministic simulator that drives the Raft core through crashes, partitions and
//! message loss.

pub mod harness;
pub mod history;
pub mod lincheck;
pub mod sim;
