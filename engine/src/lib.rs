//! shardraft is a Raft consensus engine built shard-per-core: each core runs its own
//! executor with its own Raft groups, write-ahead log and connections.
//!
//! The consensus core lives in its own `no_std` crate, re-exported here as [`raft`], so
//! that it can never perform I/O and a deterministic simulator can drive it.

pub use shardraft_raft as raft;

#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
pub mod config;
pub mod kv;
pub mod log;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod server;
pub mod shard;
pub(crate) mod signal;
pub mod snapshot;
pub mod state_machine;
pub mod transport;
pub mod tuning;
pub mod wake_guard;
