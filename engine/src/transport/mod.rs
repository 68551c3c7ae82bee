//! The peer transport: TCP connections between the same-numbered shards of two nodes,
//! carrying frames of rkyv-archived Raft messages.
//!
//! Each shard listens on its own peer address and keeps one outbound connection to the
//! same shard of every other member, used only for sending; replies come back on the
//! peer's own outbound connection. One connection per shard pair and direction keeps each
//! connection's code simple (a writer never reads, a reader never writes) and lets a
//! node's shards run without sharing anything.
//!
//! Sending: messages of one turn of the shard's loop, for all its groups, are queued per
//! peer and leave in one frame and one write while the previous write completes. Queues are
//! bounded: past `send_queue_bytes_max` the shard stops taking proposals
//! ([`Transport::is_congested`]), past twice that messages to the peer are dropped, and
//! while a peer is disconnected nothing is queued for it. Raft retransmits what is lost.
//!
//! Receiving: a connection must open with a hello frame naming the same cluster, a member
//! node and this shard. Every later frame is checked (magic, version, length, CRC, rkyv
//! validation, sender and group) before its messages reach the shard. Any failure closes
//! that connection alone, counts it and logs it at warn with the peer's address.
//!
//! Snapshots travel on connections of their own, one per transfer, in checksummed chunks
//! that a broken transfer resumes; see `snapshot_stream.rs`.

pub mod frame;
mod link;
mod snapshot_stream;
pub mod wire;

pub use link::{PeerTransportStats, RejectionCounts};
pub use link::{Transport, TransportEvent, TransportSettings, TransportStats};
pub use snapshot_stream::{ReceivedSnapshot, SnapshotCheck, SnapshotSent, SnapshotTransferStats};
