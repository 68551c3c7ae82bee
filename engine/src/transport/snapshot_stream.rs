//! Snapshot transfers between the same shard of two nodes.
//!
//! A leader whose follower needs compacted entries streams that group's stored snapshot
//! file to the follower on a connection of its own, opened to the follower's peer listener
//! for this one transfer. A separate connection keeps Raft traffic moving: on the shared
//! peer connection, heartbeats and appends of every group of the shard would queue behind
//! megabytes of chunks and followers would start elections. It also lets the transfer talk
//! both ways (the receiver reports its offset and the durable store), which the one-way
//! peer connections do not.
//!
//! ```text
//! sender                                   receiver
//!   Hello                           ─────▶   (checked like any peer connection)
//!                                   ◀─────   HelloAccepted
//!   SnapshotBegin {length, crc, msg}─────▶   keeps or restarts its partial file
//!                                   ◀─────   SnapshotAccept {offset held}
//!   SnapshotChunk {offset, bytes}   ─────▶   appends to the partial file
//!   ...  (paced to transfer_bytes_per_second)
//!                                   ◀─────   SnapshotStored   (verified, synced, renamed)
//!                                            then steps the InstallSnapshot message
//! ```
//!
//! Every frame carries the frame CRC; the receiver also verifies the whole file's CRC and
//! header before it stores the file, and checks that it is the snapshot the `SnapshotBegin`
//! announced. A broken connection leaves the partial file in place, and the next attempt
//! at the same snapshot (the leader's core retries after a heartbeat round trip) resumes at
//! the offset the receiver reports, also after the receiver restarted. A transfer through
//! which no byte moved for `transfer_progress_timeout_ms` is abandoned: the timeout applies
//! to each socket read and write, so a slow but moving transfer of any size goes on.
//!
//! Before storing, the receiver passes the verified file to the shard's [`SnapshotCheck`],
//! which restores it into a new state machine. A snapshot whose data the state machine
//! rejects is discarded like a file that fails verification, so the group's stored
//! snapshot, which a restart needs, is never replaced by one that cannot be restored.
//!
//! Bad bytes from a peer, such as an invalid frame, a chunk out of order, a file that
//! fails verification or data the state machine rejects, close that transfer. It is counted in
//! [`SnapshotTransferStats::rejected`] and in `connections_rejected` and logged as a
//! warning. Nothing else is affected.

use std::any::Any;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use shardraft_raft::{Message, MessageBody, NodeId};

use super::frame::{Frame, FrameDecoder, FrameKind, encode_frame};
use super::link::{ConnectionReader, RejectReason, Shared, TransportEvent, check_hello_accepted};
use super::wire::{self, GroupMessage};
use crate::log::GroupId;
use crate::snapshot::{
    SnapshotFile, SnapshotReader, SnapshotStore, StoredSnapshot, TransferIdentity,
};

/// Bytes of the fixed part of a `SnapshotBegin` payload, before the archived message; a
/// multiple of 16 so that the archive stays aligned.
const BEGIN_FIXED_BYTES: usize = 16;

/// Counters of the snapshot transfers of one shard, both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotTransferStats {
    /// Transfers this shard started as a sender, resumed ones included.
    pub started: u64,
    /// Transfers the receiver confirmed stored.
    pub finished: u64,
    /// Transfers that broke off as a sender.
    pub failed: u64,
    /// Sending attempts that resumed at an offset the receiver already held.
    pub resumed: u64,
    /// Snapshot bytes sent in chunks.
    pub bytes_sent: u64,
    /// Snapshot bytes received in chunks.
    pub bytes_received: u64,
    /// Snapshots received, verified and stored.
    pub received: u64,
    /// Receptions closed because of bad bytes or a storage failure.
    pub rejected: u64,
    /// Receptions that broke off (connection lost or no progress); the partial file stays.
    pub interrupted: u64,
}

/// A finished sending attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotSent {
    /// Offset the attempt started at, above 0 when it resumed.
    pub resumed_at_byte: u64,
    /// Bytes sent by this attempt.
    pub bytes_sent: u64,
    pub duration: Duration,
}

/// The shard's test of a received snapshot before it is stored. It restores the file into
/// a new state machine and returns that state machine, or the reason the data is invalid.
/// The state machine is boxed because the transport does not know its type.
///
/// TODO: the restore runs on the shard's executor in one step, so a large state stalls the
/// shard's groups meanwhile; `StateMachine::restore` has no stepwise form yet.
#[derive(Clone)]
pub struct SnapshotCheck(
    #[allow(clippy::type_complexity)]
    pub  Rc<dyn Fn(GroupId, &SnapshotFile) -> Result<Box<dyn Any>, String>>,
);

impl fmt::Debug for SnapshotCheck {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("SnapshotCheck")
    }
}

/// A received snapshot: the verified file, the message to step, and the state machine
/// that [`SnapshotCheck`] restored from the file.
#[derive(Debug)]
pub struct ReceivedSnapshot {
    pub from: NodeId,
    pub group: GroupId,
    pub message: Message,
    pub file: SnapshotFile,
    pub restored: Box<dyn Any>,
    /// Time from the `SnapshotBegin` to the durable store.
    pub duration: Duration,
    /// Bytes this connection delivered.
    pub bytes_received: u64,
}

/// The reason a sending attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {address} failed: {detail}")]
    Connect { address: String, detail: String },
    #[error("the connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("no byte moved for {timeout_ms} ms")]
    Stalled { timeout_ms: u64 },
    #[error("reading the snapshot failed: {0}")]
    Storage(#[from] crate::snapshot::SnapshotError),
    #[error("the receiver answered with invalid input: {0}")]
    Protocol(String),
    #[error("the transport is closing")]
    Closed,
    #[error("encoding the snapshot's message failed: {0}")]
    Encode(#[from] wire::WireError),
}

impl From<RejectReason> for SendError {
    fn from(reason: RejectReason) -> Self {
        match reason {
            RejectReason::Stalled { timeout_ms } => SendError::Stalled { timeout_ms },
            other => SendError::Protocol(other.to_string()),
        }
    }
}

/// Streams `snapshot` with `message` (its `InstallSnapshot`) to `message.to`.
pub(super) async fn send<E>(
    shared: &Shared<E>,
    store: &SnapshotStore,
    group: GroupId,
    message: Message,
    snapshot: StoredSnapshot,
) -> Result<SnapshotSent, SendError> {
    let config = &shared.settings.config;
    let snapshot_config = &shared.settings.snapshot;
    let timeout = Duration::from_millis(snapshot_config.transfer_progress_timeout_ms);
    let timeout_ms = snapshot_config.transfer_progress_timeout_ms;
    let peer = message.to;
    let address = shared
        .peers
        .borrow()
        .get(&peer)
        .map(|link| link.address)
        .ok_or_else(|| SendError::Protocol(format!("node {peer} is not a peer")))?;
    let connect = glommio::timer::timeout(timeout, async { Ok(TcpStream::connect(address).await) });
    let mut stream = match shared.closed.or_stop(connect).await {
        None => return Err(SendError::Closed),
        Some(Err(_)) => return Err(SendError::Stalled { timeout_ms }),
        Some(Ok(Err(error))) => {
            return Err(SendError::Connect {
                address: address.to_string(),
                detail: error.to_string(),
            });
        }
        Some(Ok(Ok(stream))) => stream,
    };
    stream
        .set_nodelay(true)
        .map_err(|error| SendError::Io(std::io::Error::other(error.to_string())))?;
    let mut frame = Vec::new();
    let hello = wire::encode_hello(&shared.hello())?;
    encode_frame(FrameKind::Hello, &hello, &mut frame);
    let begin = encode_begin(group, &message, &snapshot.identity())?;
    encode_frame(FrameKind::SnapshotBegin, &begin, &mut frame);
    write_with_progress(shared, &mut stream, &frame, timeout, timeout_ms).await?;

    let mut reader = ConnectionReader::new(FrameDecoder::new(config.frame_bytes_max));
    reader.set_read_timeout(Some(timeout));
    let accepted = next_frame(shared, &mut reader, &mut stream).await?;
    check_hello_accepted(&shared.settings, peer, &accepted).map_err(SendError::Protocol)?;
    let accept = next_frame(shared, &mut reader, &mut stream).await?;
    let resumed_at_byte = decode_accept(&accept, snapshot.file_bytes)?;
    if resumed_at_byte > 0 {
        shared.snapshot_stats.borrow_mut().resumed += 1;
        tracing::info!(%group, %peer, offset = resumed_at_byte, file_bytes = snapshot.file_bytes, "resuming a snapshot transfer");
    }

    let source = store.open_reader(&snapshot).await?;
    let outcome = send_chunks(
        shared,
        &source,
        &snapshot,
        &mut stream,
        &mut reader,
        resumed_at_byte,
    )
    .await;
    source.close().await;
    outcome
}

/// Sends the chunks of `snapshot` from `resumed_at_byte` on, then waits for the receiver's
/// `SnapshotStored`.
async fn send_chunks<E>(
    shared: &Shared<E>,
    source: &SnapshotReader,
    snapshot: &StoredSnapshot,
    stream: &mut TcpStream,
    reader: &mut ConnectionReader,
    resumed_at_byte: u64,
) -> Result<SnapshotSent, SendError> {
    let snapshot_config = &shared.settings.snapshot;
    let timeout = Duration::from_millis(snapshot_config.transfer_progress_timeout_ms);
    let timeout_ms = snapshot_config.transfer_progress_timeout_ms;
    let mut frame = Vec::new();
    let started = Instant::now();
    let chunk_bytes = snapshot_config.transfer_chunk_bytes as usize;
    let rate = snapshot_config.transfer_bytes_per_second;
    let mut offset = resumed_at_byte;
    while offset < snapshot.file_bytes {
        let chunk = source.read_chunk(offset, chunk_bytes).await?;
        if chunk.is_empty() {
            return Err(SendError::Protocol(format!(
                "the snapshot {} ended at byte {offset}, before its length of {}",
                snapshot.describe(),
                snapshot.file_bytes
            )));
        }
        frame.clear();
        let mut payload = Vec::with_capacity(8 + chunk.len());
        payload.extend_from_slice(&offset.to_le_bytes());
        payload.extend_from_slice(&chunk);
        encode_frame(FrameKind::SnapshotChunk, &payload, &mut frame);
        write_with_progress(shared, stream, &frame, timeout, timeout_ms).await?;
        offset += chunk.len() as u64;
        shared.snapshot_stats.borrow_mut().bytes_sent += chunk.len() as u64;
        if rate > 0 {
            // Pace the attempt as a whole, so that the rate holds whatever the chunk size.
            let due = Duration::from_secs_f64((offset - resumed_at_byte) as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed
                && shared
                    .closed
                    .or_stop(glommio::timer::sleep(due - elapsed))
                    .await
                    .is_none()
            {
                return Err(SendError::Closed);
            }
        }
    }
    let stored = next_frame(shared, reader, stream).await?;
    if stored.kind != FrameKind::SnapshotStored {
        return Err(SendError::Protocol(format!(
            "expected a SnapshotStored frame, got {:?}",
            stored.kind
        )));
    }
    let _ = stream.close().await;
    Ok(SnapshotSent {
        resumed_at_byte,
        bytes_sent: offset - resumed_at_byte,
        duration: started.elapsed(),
    })
}

async fn next_frame<E>(
    shared: &Shared<E>,
    reader: &mut ConnectionReader,
    stream: &mut TcpStream,
) -> Result<Frame, SendError> {
    match reader.next_frame(stream, &shared.closed).await? {
        Some(frame) => Ok(frame),
        None if shared.closed.is_set() => Err(SendError::Closed),
        None => Err(SendError::Protocol(
            "the receiver closed the connection".to_string(),
        )),
    }
}

/// Writes `bytes`, failing when no byte moves for `timeout`.
async fn write_with_progress<E>(
    shared: &Shared<E>,
    stream: &mut TcpStream,
    bytes: &[u8],
    timeout: Duration,
    timeout_ms: u64,
) -> Result<(), SendError> {
    let mut written = 0;
    while written < bytes.len() {
        let write =
            glommio::timer::timeout(timeout, async { Ok(stream.write(&bytes[written..]).await) });
        match shared.closed.or_stop(write).await {
            None => return Err(SendError::Closed),
            Some(Err(_)) => return Err(SendError::Stalled { timeout_ms }),
            Some(Ok(Err(error))) => return Err(SendError::Io(error)),
            Some(Ok(Ok(0))) => {
                return Err(SendError::Protocol(
                    "the receiver closed the connection".to_string(),
                ));
            }
            Some(Ok(Ok(count))) => written += count,
        }
    }
    Ok(())
}

fn encode_begin(
    group: GroupId,
    message: &Message,
    identity: &TransferIdentity,
) -> Result<Vec<u8>, wire::WireError> {
    let archive = wire::encode_batch(&[GroupMessage {
        group,
        message: message.clone(),
    }])?;
    let mut payload = Vec::with_capacity(BEGIN_FIXED_BYTES + archive.len());
    payload.extend_from_slice(&identity.file_bytes.to_le_bytes());
    payload.extend_from_slice(&identity.file_checksum.to_le_bytes());
    payload.extend_from_slice(&[0; 4]);
    payload.extend_from_slice(&archive);
    Ok(payload)
}

fn decode_accept(frame: &Frame, file_bytes: u64) -> Result<u64, SendError> {
    if frame.kind != FrameKind::SnapshotAccept || frame.payload.len() != 8 {
        return Err(SendError::Protocol(format!(
            "expected a SnapshotAccept frame of 8 bytes, got {:?} of {} bytes",
            frame.kind,
            frame.payload.len()
        )));
    }
    let offset = u64::from_le_bytes(frame.payload[..8].try_into().expect("length checked"));
    if offset > file_bytes {
        return Err(SendError::Protocol(format!(
            "the receiver holds {offset} bytes of a {file_bytes}-byte snapshot"
        )));
    }
    Ok(offset)
}

/// Receives one snapshot on an accepted connection whose hello named `from` and whose
/// first frame is `begin`. Returns once the snapshot is stored and the shard was told, or
/// with the reason the transfer was closed.
pub(super) async fn receive<E: From<TransportEvent>>(
    shared: &Shared<E>,
    store: &SnapshotStore,
    mut stream: TcpStream,
    mut reader: ConnectionReader,
    from: NodeId,
    begin: Frame,
) -> Result<(), RejectReason> {
    let started = Instant::now();
    let (group, message, identity) = decode_begin(shared, from, &begin)?;
    let MessageBody::InstallSnapshot { snapshot: meta } = &message.body else {
        return Err(RejectReason::Snapshot(
            "a SnapshotBegin must carry an InstallSnapshot message".to_string(),
        ));
    };
    let meta = meta.clone();
    if meta.index != identity.index || meta.term != identity.term {
        return Err(RejectReason::Snapshot(format!(
            "the SnapshotBegin announces index {} term {} but its message index {} term {}",
            identity.index, identity.term, meta.index, meta.term
        )));
    }
    let offset = store
        .begin_receive(group, identity)
        .await
        .map_err(|error| RejectReason::Snapshot(error.to_string()))?;
    tracing::info!(%group, peer = %from, index = meta.index.0, offset, file_bytes = identity.file_bytes, "receiving a snapshot");
    let timeout = Duration::from_millis(shared.settings.snapshot.transfer_progress_timeout_ms);
    let received = receive_chunks(
        shared,
        store,
        &mut stream,
        &mut reader,
        group,
        offset,
        timeout,
    )
    .await;
    let bytes_received = match received {
        Ok(bytes) => bytes,
        Err(reason) => {
            store.pause_receive(group);
            return Err(reason);
        }
    };
    let check = &shared.snapshot_check.0;
    let (file, restored) = store
        .complete_receive(group, &meta, |file| check(group, file))
        .await
        .map_err(|error| RejectReason::Snapshot(error.to_string()))?;
    let mut frame = Vec::new();
    encode_frame(FrameKind::SnapshotStored, &[], &mut frame);
    // The snapshot is durable; a sender that misses this frame retries and finds it held.
    let _ = glommio::timer::timeout(timeout, async { Ok(stream.write_all(&frame).await) }).await;
    let _ = stream.close().await;
    shared.snapshot_stats.borrow_mut().received += 1;
    let event = TransportEvent::SnapshotReceived(Box::new(ReceivedSnapshot {
        from,
        group,
        message,
        file,
        restored,
        duration: started.elapsed(),
        bytes_received,
    }));
    // One event per transfer: bounded, and it must not wait on a loop that has stopped.
    shared.events.push_now(E::from(event));
    Ok(())
}

/// Sends the offset held, then appends chunks until the whole file arrived. Returns the
/// bytes this connection delivered.
async fn receive_chunks<E>(
    shared: &Shared<E>,
    store: &SnapshotStore,
    stream: &mut TcpStream,
    reader: &mut ConnectionReader,
    group: GroupId,
    offset: u64,
    timeout: Duration,
) -> Result<u64, RejectReason> {
    let mut frame = Vec::new();
    encode_frame(FrameKind::SnapshotAccept, &offset.to_le_bytes(), &mut frame);
    let timeout_ms = timeout.as_millis() as u64;
    match glommio::timer::timeout(timeout, async { Ok(stream.write_all(&frame).await) }).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(RejectReason::Interrupted(error.to_string())),
        Err(_) => return Err(RejectReason::Stalled { timeout_ms }),
    }
    reader.set_read_timeout(Some(timeout));
    let mut delivered = 0;
    while !store.receive_complete(group) {
        let Some(frame) = reader.next_frame(stream, &shared.closed).await? else {
            return Err(RejectReason::Interrupted(
                "the sender closed the connection".to_string(),
            ));
        };
        if frame.kind != FrameKind::SnapshotChunk {
            return Err(RejectReason::UnexpectedFrame(frame.kind));
        }
        if frame.payload.len() < 8 {
            return Err(RejectReason::Snapshot(format!(
                "a SnapshotChunk of {} bytes lacks its 8-byte offset",
                frame.payload.len()
            )));
        }
        let chunk_offset =
            u64::from_le_bytes(frame.payload[..8].try_into().expect("length checked"));
        let chunk: Bytes = frame.payload.slice(8..);
        store
            .append_received(group, chunk_offset, &chunk)
            .await
            .map_err(|error| RejectReason::Snapshot(error.to_string()))?;
        delivered += chunk.len() as u64;
        shared.snapshot_stats.borrow_mut().bytes_received += chunk.len() as u64;
    }
    Ok(delivered)
}

fn decode_begin<E>(
    shared: &Shared<E>,
    from: NodeId,
    frame: &Frame,
) -> Result<(GroupId, Message, TransferIdentity), RejectReason> {
    let payload = &frame.payload;
    if payload.len() < BEGIN_FIXED_BYTES {
        return Err(RejectReason::Snapshot(format!(
            "a SnapshotBegin of {} bytes is shorter than its {BEGIN_FIXED_BYTES}-byte header",
            payload.len()
        )));
    }
    let file_bytes = u64::from_le_bytes(payload[..8].try_into().expect("length checked"));
    let file_checksum = u32::from_le_bytes(payload[8..12].try_into().expect("length checked"));
    let mut messages = wire::decode_batch(&payload.slice(BEGIN_FIXED_BYTES..))?;
    if messages.len() != 1 {
        return Err(RejectReason::Snapshot(format!(
            "a SnapshotBegin carries {} messages, not one",
            messages.len()
        )));
    }
    let GroupMessage { group, message } = messages.pop().expect("one message");
    let settings = &shared.settings;
    let hosted = group.0 < settings.groups && group.0 % settings.shard_count == settings.shard;
    if message.from != from || message.to != settings.node_id || !hosted {
        return Err(RejectReason::Snapshot(format!(
            "the snapshot's message goes from {} to {} for group {group}, which this shard \
             of node {} does not take from node {from}",
            message.from, message.to, settings.node_id
        )));
    }
    let MessageBody::InstallSnapshot { snapshot } = &message.body else {
        return Err(RejectReason::Snapshot(
            "a SnapshotBegin must carry an InstallSnapshot message".to_string(),
        ));
    };
    let identity = TransferIdentity {
        index: snapshot.index,
        term: snapshot.term,
        file_bytes,
        file_checksum,
    };
    Ok((group, message, identity))
}

/// Spawns a sending attempt; its outcome reaches the shard as
/// [`TransportEvent::SnapshotSent`].
pub(super) fn spawn_send<E: From<TransportEvent> + 'static>(
    shared: &Rc<Shared<E>>,
    store: Rc<SnapshotStore>,
    group: GroupId,
    message: Message,
    snapshot: StoredSnapshot,
) {
    shared.snapshot_stats.borrow_mut().started += 1;
    let task_shared = Rc::clone(shared);
    let task = async move {
        let shared = task_shared;
        let peer = message.to;
        let index = snapshot.meta.index;
        let outcome = send(&shared, &store, group, message, snapshot).await;
        {
            let mut stats = shared.snapshot_stats.borrow_mut();
            match &outcome {
                Ok(_) => stats.finished += 1,
                Err(_) => stats.failed += 1,
            }
        }
        match &outcome {
            Ok(sent) => {
                tracing::info!(%group, %peer, index = index.0, bytes = sent.bytes_sent, duration_ms = sent.duration.as_millis() as u64, "snapshot sent")
            }
            Err(error) => {
                tracing::warn!(%group, %peer, index = index.0, %error, "snapshot transfer failed")
            }
        }
        let outcome = outcome.map_err(|error| error.to_string());
        shared
            .events
            .push_now(E::from(TransportEvent::SnapshotSent {
                group,
                peer,
                outcome,
            }));
    };
    super::link::spawn_tracked(shared, task);
}
