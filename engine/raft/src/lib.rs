//! The Raft consensus core of shardraft: one replica of one Raft group as a deterministic
//! state machine with no I/O.
//!
//! This crate is `#![no_std]`: it has no access to files, sockets, threads, the wall clock
//! or OS randomness, so the compiler rules out I/O. Time arrives as [`RaftNode::tick`],
//! randomness from a generator seeded by [`Config::random_seed`], messages through
//! [`RaftNode::step`]. Work comes out as numbered [`Ready`] batches: hard state and
//! entries to persist, messages to send (split into those that may leave before the persist
//! completes and those that must wait), committed entries to apply and reads to serve. The
//! runtime reports durability with [`RaftNode::on_persisted`]. Because nothing else enters,
//! a simulator can drive many replicas through crashes and partitions and replay any run
//! from its seed.
//!
//! The protocol: elections with randomized timeouts, pre-vote, check-quorum with leader
//! leases on voters, a no-op entry at the start of each term, pipelined and batched
//! replication with per-follower probe and replicate states and in-flight windows bounded
//! in messages and bytes, fast backtracking with term hints, the commit rule of the Raft
//! paper's Figure 8, ReadIndex reads confirmed in rounds, leadership transfer, snapshots
//! and log compaction, membership changes one node at a time with learners and automatic
//! promotion, and a replica that lost its data staying out of elections until it has caught
//! up again.
//!
//! ```
//! use shardraft_raft::{Config, Membership, NodeId, RaftNode, RestoredState};
//!
//! let config = Config::new(NodeId(1), Membership::with_voters([NodeId(1)]));
//! let mut node = RaftNode::new(config, RestoredState::default()).unwrap();
//! // A single voter elects itself after one election timeout.
//! for _ in 0..20 {
//!     node.tick();
//! }
//! let ready = node.ready().unwrap();
//! node.on_persisted(ready.number);
//! assert!(node.propose(bytes::Bytes::from_static(b"hello")).is_ok());
//! ```

#![no_std]

extern crate alloc;

mod catch_up;
mod config;
mod election;
mod invariants;
mod log;
mod membership;
mod message;
mod node;
mod progress;
mod reads;
mod replication;
mod types;

pub use config::{Config, ConfigError, ReplicationLimits};
pub use message::{AppendOutcome, Message, MessageBody};
pub use node::{
    CompactError, MembershipChangeError, NewNodeError, ProposalId, ProposeError, RaftNode,
    ReadIndexError, Ready, Rejection, RestoredState, Role, RoleState, SnapshotInstall,
    SnapshotTransfer, Stats, TransferError,
};
pub use progress::{Progress, ReplicationState};
pub use reads::ReadState;
pub use types::{
    ENTRY_OVERHEAD_BYTES, Entry, EntryKind, GroupTiming, HardState, InvalidChange, LogIndex,
    MEMBERSHIP_CHANGE_VERSION, Membership, MembershipChange, MembershipChangeEntry, NodeId,
    ReadyNumber, SnapshotMeta, Term,
};
