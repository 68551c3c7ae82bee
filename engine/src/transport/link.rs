//! Connections of one shard: the listener with one reader task per accepted connection,
//! and one writer task per peer.
//!
//! The peer list starts from the settings and changes with the membership:
//! [`Transport::add_peer`] starts a writer for a new member, and
//! [`Transport::remove_peer`] stops it and makes readers close that member's connections
//! at their next frame. Hellos are checked against the current list, so a new member's
//! connections are accepted once its addition reached this node.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use shardraft_raft::{MessageBody, NodeId};
use shardraft_tuning::LatencyHistogram;

use super::frame::{FRAME_HEADER_BYTES, Frame, FrameDecoder, FrameError, FrameKind, encode_frame};
use super::snapshot_stream::{
    self, ReceivedSnapshot, SnapshotCheck, SnapshotSent, SnapshotTransferStats,
};
use super::wire::{self, GroupMessage, WireError, WireHello};
use crate::config::{SnapshotConfig, TransportConfig};
use crate::log::GroupId;
use crate::metrics::StageHistogram;
use crate::shard::queue::EventQueue;
use crate::signal::{Latch, Signal};
use crate::snapshot::{SnapshotStore, StoredSnapshot};

/// An event the transport reports to its shard.
#[derive(Debug)]
pub enum TransportEvent {
    /// Validated messages from `from` for groups of this shard.
    Received {
        from: NodeId,
        messages: Vec<GroupMessage>,
    },
    /// The connection to `peer` failed; messages in flight to it are lost.
    PeerUnreachable { peer: NodeId },
    /// A connection to `peer` was refused: nothing listens at its address, so the peer's
    /// process is down, not merely slow. A partition that drops packets times out instead,
    /// but a firewall that rejects with a reset reads as down too. Reported once per
    /// outage, at the first refusal.
    PeerDown { peer: NodeId },
    /// A snapshot arrived, was verified and is stored durably; its `InstallSnapshot`
    /// message may now be stepped.
    SnapshotReceived(Box<ReceivedSnapshot>),
    /// A snapshot transfer this shard started ended: the receiver stored it, or the
    /// attempt failed for the reason given.
    SnapshotSent {
        group: GroupId,
        peer: NodeId,
        outcome: Result<SnapshotSent, String>,
    },
}

/// Counters of one shard's transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Connections closed because of an invalid frame or hello.
    pub connections_rejected: u64,
    /// Messages dropped because their peer was disconnected or its queue was full.
    pub messages_dropped: u64,
    /// Received messages dropped because they were addressed to another node or group.
    pub messages_misrouted: u64,
    pub connects: u64,
    pub disconnects: u64,
    /// `connections_rejected` split by the reason of the rejection.
    pub rejections: RejectionCounts,
}

/// Rejected peer connections by reason. Each field names one value of the `reason` label
/// of the rejection metric, so the label set stays bounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RejectionCounts {
    /// A frame whose CRC did not match its contents.
    pub checksum: u64,
    /// A frame that did not start with the shardraft magic.
    pub magic: u64,
    /// A frame of another protocol version.
    pub version: u64,
    /// A frame longer than `frame_bytes_max`.
    pub too_large: u64,
    /// A payload that is not a valid archive of messages or of a hello.
    pub archive: u64,
    /// A missing or late hello, or one naming another cluster, shard layout or node.
    pub hello: u64,
    /// Any other invalid input, such as an unknown frame kind.
    pub other: u64,
}

impl RejectionCounts {
    /// `(reason label, count)` for every reason.
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("checksum", self.checksum),
            ("magic", self.magic),
            ("version", self.version),
            ("too_large", self.too_large),
            ("archive", self.archive),
            ("hello", self.hello),
            ("other", self.other),
        ]
    }
}

/// Traffic with one peer, as seen by one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTransportStats {
    pub peer: NodeId,
    /// Whether the outbound connection to the peer is up.
    pub connected: bool,
    /// Frame bytes written to the peer, headers included.
    pub bytes_sent: u64,
    /// Frame bytes received from the peer, headers and the hello included.
    pub bytes_received: u64,
    /// Time from writing a frame with a heartbeat to the peer until a frame with a
    /// heartbeat response from the peer arrives. See [`Transport::peer_stats`].
    pub round_trip: StageHistogram,
    /// The same round trips in microseconds, each within 1/16 of its value, for the
    /// tuner's election timeout floor, which the wide buckets of `round_trip` would
    /// overstate by up to two times.
    pub round_trip_micros: LatencyHistogram,
    /// Time from writing a frame with entries to the peer until a frame with an append
    /// response from the peer arrives. A follower answers an append only once the entries
    /// are durable, so this minus `round_trip` estimates the peer's own write and
    /// fdatasync.
    pub append_round_trip: StageHistogram,
}

/// The identity of this shard and the addresses of its peers.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub shard: u32,
    pub shard_count: u32,
    pub groups: u32,
    pub listen_address: SocketAddr,
    /// Address of this shard's counterpart on every other member.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub config: TransportConfig,
    /// Chunk size, rate and progress timeout of snapshot transfers.
    pub snapshot: SnapshotConfig,
    /// Seeds the jitter of reconnection delays.
    pub random_seed: u64,
}

/// Time the listener task waits after dropping its socket before connections close, for
/// the executor's reactor to cancel the accept still in flight.
const LISTENER_CANCEL_WAIT: Duration = Duration::from_millis(1);

/// Bytes read from a socket per call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Bytes counted per message on top of entry payloads when sizing queues.
const MESSAGE_OVERHEAD_BYTES: u64 = 64;

/// Age after which an open round-trip probe whose response never came is replaced by a new
/// one, so that a lost heartbeat does not stop the sampling.
const ROUND_TRIP_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct PeerLink {
    node: NodeId,
    pub(super) address: SocketAddr,
    queue: RefCell<Vec<GroupMessage>>,
    queued_bytes: Cell<u64>,
    wake: Signal,
    connected: Cell<bool>,
    bytes_sent: Cell<u64>,
    bytes_received: Cell<u64>,
    /// When the heartbeat that the open round-trip probe waits on was written.
    probe_sent_at: Cell<Option<Instant>>,
    round_trip: RefCell<StageHistogram>,
    round_trip_micros: RefCell<LatencyHistogram>,
    /// When the entries that the open append probe waits on were written.
    append_probe_sent_at: Cell<Option<Instant>>,
    append_round_trip: RefCell<StageHistogram>,
    /// Set when the peer left the list; its writer stops.
    removed: Cell<bool>,
}

impl PeerLink {
    fn new(node: NodeId, address: SocketAddr) -> PeerLink {
        PeerLink {
            node,
            address,
            queue: RefCell::new(Vec::new()),
            queued_bytes: Cell::new(0),
            wake: Signal::default(),
            connected: Cell::new(false),
            bytes_sent: Cell::new(0),
            bytes_received: Cell::new(0),
            probe_sent_at: Cell::new(None),
            round_trip: RefCell::new(StageHistogram::default()),
            round_trip_micros: RefCell::new(LatencyHistogram::new()),
            append_probe_sent_at: Cell::new(None),
            append_round_trip: RefCell::new(StageHistogram::default()),
            removed: Cell::new(false),
        }
    }

    fn is_stopped<E>(&self, shared: &Shared<E>) -> bool {
        shared.closed.is_set() || self.removed.get()
    }
}

#[derive(Debug)]
pub(super) struct Shared<E> {
    pub(super) settings: TransportSettings,
    /// The current peers; `settings.peers` holds the list the transport started with.
    pub(super) peers: RefCell<BTreeMap<NodeId, Rc<PeerLink>>>,
    pub(super) events: EventQueue<E>,
    stats: RefCell<TransportStats>,
    pub(super) snapshot_stats: RefCell<SnapshotTransferStats>,
    /// The shard's snapshots: the source of transfers and where received ones go.
    snapshots: Rc<SnapshotStore>,
    /// Restores each received snapshot before it is stored.
    pub(super) snapshot_check: SnapshotCheck,
    pub(super) closed: Latch,
    /// Set first when closing: the listener stops accepting before any connection closes.
    stop_accepting: Latch,
    /// Set by the listener task once it dropped its socket.
    listener_closed: Latch,
    random_state: Cell<u64>,
    /// Connection tasks still running, so that closing can wait until their sockets are
    /// closed.
    live_tasks: Cell<usize>,
    task_ended: Signal,
}

/// The transport of one shard. Cloning shares it.
#[derive(Debug)]
pub struct Transport<E> {
    shared: Rc<Shared<E>>,
}

impl<E> Clone for Transport<E> {
    fn clone(&self) -> Self {
        Transport {
            shared: Rc::clone(&self.shared),
        }
    }
}

impl<E: From<TransportEvent> + 'static> Transport<E> {
    /// Binds the listener and starts the connection tasks. Must run inside the shard's
    /// glommio executor.
    ///
    /// # Errors
    /// The listen address cannot be bound.
    pub(crate) fn start(
        settings: TransportSettings,
        events: EventQueue<E>,
        snapshots: Rc<SnapshotStore>,
        snapshot_check: SnapshotCheck,
    ) -> std::io::Result<Transport<E>> {
        let listener = TcpListener::bind(settings.listen_address).map_err(|error| {
            std::io::Error::other(format!(
                "binding the peer address {} of shard {} failed: {error}",
                settings.listen_address, settings.shard
            ))
        })?;
        let peers = settings
            .peers
            .iter()
            .map(|(node, address)| (*node, Rc::new(PeerLink::new(*node, *address))))
            .collect();
        let random_state = Cell::new(settings.random_seed | 1);
        let transport = Transport {
            shared: Rc::new(Shared {
                settings,
                peers: RefCell::new(peers),
                events,
                stats: RefCell::new(TransportStats::default()),
                snapshot_stats: RefCell::new(SnapshotTransferStats::default()),
                snapshots,
                snapshot_check,
                closed: Latch::default(),
                stop_accepting: Latch::default(),
                listener_closed: Latch::default(),
                random_state,
                live_tasks: Cell::new(0),
                task_ended: Signal::default(),
            }),
        };
        let shared = &transport.shared;
        spawn_tracked(shared, run_listener(Rc::clone(shared), listener));
        for link in shared.peers.borrow().values() {
            spawn_tracked(shared, run_writer(Rc::clone(shared), Rc::clone(link)));
        }
        Ok(transport)
    }

    /// Streams `snapshot` to `message.to` on a connection of its own, `message` being the
    /// core's `InstallSnapshot` for it. The outcome arrives as
    /// [`TransportEvent::SnapshotSent`].
    pub(crate) fn send_snapshot(
        &self,
        group: GroupId,
        message: shardraft_raft::Message,
        snapshot: StoredSnapshot,
    ) {
        let store = Rc::clone(&self.shared.snapshots);
        snapshot_stream::spawn_send(&self.shared, store, group, message, snapshot);
    }

    /// Adds `node` at `address` to the peers and starts connecting to it. A peer already
    /// known at the same address is left as it is; one at another address is reconnected
    /// there.
    pub fn add_peer(&self, node: NodeId, address: SocketAddr) {
        if node == self.shared.settings.node_id || self.shared.closed.is_set() {
            return;
        }
        let known = self
            .shared
            .peers
            .borrow()
            .get(&node)
            .map(|link| link.address);
        match known {
            Some(known) if known == address => return,
            Some(_) => self.remove_peer(node),
            None => {}
        }
        tracing::info!(peer = %node, %address, "peer added");
        let link = Rc::new(PeerLink::new(node, address));
        self.shared
            .peers
            .borrow_mut()
            .insert(node, Rc::clone(&link));
        spawn_tracked(&self.shared, run_writer(Rc::clone(&self.shared), link));
    }
}

impl<E> Transport<E> {
    /// Removes `node` from the peers: its writer stops and closes its connection, and
    /// connections from it are closed at their next frame.
    pub fn remove_peer(&self, node: NodeId) {
        let Some(link) = self.shared.peers.borrow_mut().remove(&node) else {
            return;
        };
        tracing::info!(peer = %node, address = %link.address, "peer removed");
        link.removed.set(true);
        link.queue.borrow_mut().clear();
        link.queued_bytes.set(0);
        link.wake.notify_all();
    }

    /// The nodes currently in the peer list.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.shared.peers.borrow().keys().copied().collect()
    }

    /// Queues messages for their recipients; they leave with the next write to each peer.
    pub fn send(&self, messages: Vec<GroupMessage>) {
        let limit = self
            .shared
            .settings
            .config
            .send_queue_bytes_max
            .saturating_mul(2);
        let mut dropped = 0;
        let peers = self.shared.peers.borrow();
        for message in messages {
            let Some(link) = peers.get(&message.message.to) else {
                dropped += 1;
                continue;
            };
            let bytes = message_bytes(&message);
            if !link.connected.get() || link.queued_bytes.get() + bytes > limit {
                dropped += 1;
                continue;
            }
            link.queued_bytes.set(link.queued_bytes.get() + bytes);
            link.queue.borrow_mut().push(message);
        }
        for link in peers.values() {
            if !link.queue.borrow().is_empty() {
                link.wake.notify_all();
            }
        }
        self.shared.stats.borrow_mut().messages_dropped += dropped;
    }

    /// Whether some peer's queue is over `send_queue_bytes_max`.
    pub fn is_congested(&self) -> bool {
        let limit = self.shared.settings.config.send_queue_bytes_max;
        self.shared
            .peers
            .borrow()
            .values()
            .any(|link| link.queued_bytes.get() > limit)
    }

    /// Whether the outbound connection to `peer` is up.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.shared
            .peers
            .borrow()
            .get(&peer)
            .is_some_and(|link| link.connected.get())
    }

    pub fn stats(&self) -> TransportStats {
        *self.shared.stats.borrow()
    }

    /// Counters of the snapshot transfers, both directions.
    pub fn snapshot_stats(&self) -> SnapshotTransferStats {
        *self.shared.snapshot_stats.borrow()
    }

    /// Returns the traffic with every peer, in node id order.
    ///
    /// The round trip is sampled with one probe per peer at a time. The first frame
    /// written to the peer that carries a heartbeat opens a probe, and the first frame
    /// from the peer that carries a heartbeat response closes it. Only a shard that leads
    /// some group sends heartbeats, so the others record no samples. A sample includes
    /// the time both shards' loops take to pass the messages on, so it is an upper bound
    /// on the network round trip, and it can be short when the response answers an
    /// earlier heartbeat.
    pub fn peer_stats(&self) -> Vec<PeerTransportStats> {
        self.shared
            .peers
            .borrow()
            .values()
            .map(|link| PeerTransportStats {
                peer: link.node,
                connected: link.connected.get(),
                bytes_sent: link.bytes_sent.get(),
                bytes_received: link.bytes_received.get(),
                round_trip: *link.round_trip.borrow(),
                round_trip_micros: link.round_trip_micros.borrow().clone(),
                append_round_trip: *link.append_round_trip.borrow(),
            })
            .collect()
    }

    /// Stops every connection task and waits until the listener and every connection are
    /// closed, so that a node restarted in the same process finds its ports free.
    pub async fn close(&self) {
        // The listening socket closes before any connection does. A peer whose connection
        // closes and that connects again is then refused, and learns that this node is
        // down, rather than reaching a listener that is about to go away.
        self.shared.stop_accepting.set();
        self.shared.listener_closed.wait().await;
        self.shared.closed.set();
        for link in self.shared.peers.borrow().values() {
            link.wake.notify_all();
        }
        let shared = &self.shared;
        shared
            .task_ended
            .wait_for(|| (shared.live_tasks.get() == 0).then_some(()))
            .await;
    }
}

/// Spawns a connection task counted in `live_tasks` until it ends.
pub(super) fn spawn_tracked<E: 'static>(
    shared: &Rc<Shared<E>>,
    task: impl std::future::Future<Output = ()> + 'static,
) {
    shared.live_tasks.set(shared.live_tasks.get() + 1);
    // The node and shard name the side of the connection in every line a task logs.
    let span = tracing::info_span!(
        "transport",
        node = %shared.settings.node_id,
        shard = shared.settings.shard
    );
    let shared = Rc::clone(shared);
    let tracked = async move {
        task.await;
        shared.live_tasks.set(shared.live_tasks.get() - 1);
        shared.task_ended.notify_all();
    };
    glommio::spawn_local(tracing::Instrument::instrument(tracked, span)).detach();
}

fn message_bytes(message: &GroupMessage) -> u64 {
    let payload = match &message.message.body {
        MessageBody::AppendEntries { entries, .. } => {
            entries.iter().map(|entry| entry.data.len() as u64).sum()
        }
        _ => 0,
    };
    payload + MESSAGE_OVERHEAD_BYTES
}

impl<E> Shared<E> {
    /// A delay between `base / 2` and `base`, so that peers restarting together do not
    /// reconnect in lockstep.
    fn jittered(&self, base_ms: u64) -> Duration {
        let mut x = self.random_state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random_state.set(x);
        let half = base_ms / 2;
        Duration::from_millis(half + x % (base_ms - half + 1))
    }

    pub(super) fn hello(&self) -> WireHello {
        let settings = &self.settings;
        WireHello {
            cluster_id: settings.cluster_id,
            node_id: settings.node_id.0,
            shard: settings.shard,
            shard_count: settings.shard_count,
        }
    }
}

async fn run_writer<E: From<TransportEvent>>(shared: Rc<Shared<E>>, link: Rc<PeerLink>) {
    let config = shared.settings.config.clone();
    let mut backoff_ms = config.reconnect_backoff_ms_min;
    let mut failures = 0u64;
    let mut down_reported = false;
    while !link.is_stopped(&shared) {
        let Some(connected) = shared
            .closed
            .or_stop(TcpStream::connect(link.address))
            .await
        else {
            return;
        };
        let stream = match connected {
            Ok(stream) => stream,
            Err(error) => {
                if is_refused(&error) && !down_reported {
                    down_reported = true;
                    tracing::info!(peer = %link.node, address = %link.address, "peer refused the connection, so it is down");
                    shared
                        .events
                        .push_now(E::from(TransportEvent::PeerDown { peer: link.node }));
                }
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::debug!(
                        peer = %link.node, address = %link.address, %error, failures,
                        "connecting to peer failed; retrying"
                    );
                }
                let delay = shared.jittered(backoff_ms);
                shared.closed.or_stop(glommio::timer::sleep(delay)).await;
                backoff_ms = (backoff_ms * 2).min(config.reconnect_backoff_ms_max);
                continue;
            }
        };
        failures = 0;
        down_reported = false;
        backoff_ms = config.reconnect_backoff_ms_min;
        match stream_messages(&shared, &link, stream).await {
            Ok(()) => return,
            Err(error) => {
                link.connected.set(false);
                link.queue.borrow_mut().clear();
                link.queued_bytes.set(0);
                link.probe_sent_at.set(None);
                link.append_probe_sent_at.set(None);
                shared.stats.borrow_mut().disconnects += 1;
                tracing::info!(
                    peer = %link.node, address = %link.address, %error,
                    "peer connection lost"
                );
                shared
                    .events
                    .push_now(E::from(TransportEvent::PeerUnreachable { peer: link.node }));
                let delay = shared.jittered(backoff_ms);
                shared.closed.or_stop(glommio::timer::sleep(delay)).await;
            }
        }
    }
}

/// Sends the hello, then every queued batch of messages, until the connection fails or
/// the transport closes (`Ok`).
async fn stream_messages<E>(
    shared: &Shared<E>,
    link: &PeerLink,
    mut stream: TcpStream,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let hello = wire::encode_hello(&shared.hello()).map_err(std::io::Error::other)?;
    let mut frame = Vec::new();
    encode_frame(FrameKind::Hello, &hello, &mut frame);
    stream.write_all(&frame).await?;
    link.bytes_sent
        .set(link.bytes_sent.get() + frame.len() as u64);
    // The link is up only once the peer responds, because a connection that a stopping
    // listener accepted and no reader serves would otherwise take messages until its
    // buffers fill.
    let hello_timeout = Duration::from_millis(shared.settings.config.hello_timeout_ms);
    let mut reader =
        ConnectionReader::new(FrameDecoder::new(shared.settings.config.frame_bytes_max));
    let answer = glommio::timer::timeout(hello_timeout, async {
        Ok(reader.next_frame(&mut stream, &shared.closed).await)
    })
    .await;
    let accepted = match answer {
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the peer did not answer the hello within {} ms",
                    hello_timeout.as_millis()
                ),
            ));
        }
        Ok(Ok(Some(accepted))) => accepted,
        Ok(Ok(None)) if shared.closed.is_set() => return Ok(()),
        Ok(Ok(None)) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the peer closed the connection before answering the hello",
            ));
        }
        Ok(Err(reason)) => return Err(std::io::Error::other(reason.to_string())),
    };
    check_hello_accepted(&shared.settings, link.node, &accepted).map_err(std::io::Error::other)?;
    link.connected.set(true);
    shared.stats.borrow_mut().connects += 1;
    tracing::info!(peer = %link.node, address = %link.address, "connected to peer");

    loop {
        let queued = async {
            let messages = link
                .wake
                .wait_for(|| {
                    if link.is_stopped(shared) {
                        return Some(None);
                    }
                    let mut queue = link.queue.borrow_mut();
                    (!queue.is_empty()).then(|| Some(std::mem::take(&mut *queue)))
                })
                .await;
            Ok(messages)
        };
        // Waiting on the socket as well notices a crashed peer while nothing is queued,
        // which is often so on a follower's link to its leader. Otherwise the loss shows
        // only at the next failed write.
        let closed = async { Err(peer_closed(&mut stream).await) };
        let Some(messages) = futures_lite::future::or(queued, closed).await? else {
            return Ok(());
        };
        link.queued_bytes.set(0);
        let archive = wire::encode_batch(&messages).map_err(std::io::Error::other)?;
        frame.clear();
        encode_frame(FrameKind::Messages, &archive, &mut frame);
        open_round_trip_probe(link, &messages);
        if shared
            .closed
            .or_stop(stream.write_all(&frame))
            .await
            .transpose()?
            .is_none()
        {
            return Ok(());
        }
        link.bytes_sent
            .set(link.bytes_sent.get() + frame.len() as u64);
        let mut stats = shared.stats.borrow_mut();
        stats.frames_sent += 1;
        stats.messages_sent += messages.len() as u64;
    }
}

/// Returns whether a connection attempt failed because nothing listens at the address.
fn is_refused(error: &glommio::GlommioError<()>) -> bool {
    match error {
        glommio::GlommioError::IoError(source)
        | glommio::GlommioError::EnhancedIoError { source, .. } => {
            source.kind() == std::io::ErrorKind::ConnectionRefused
        }
        _ => false,
    }
}

/// Resolves once the peer closes a connection that this side only writes to. After its
/// `HelloAccepted` the peer sends nothing more on it, so a read can only end the stream or
/// fail.
async fn peer_closed(stream: &mut TcpStream) -> std::io::Error {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(0) => std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the peer closed the connection",
        ),
        Ok(_) => std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the peer sent bytes on a connection that carries messages only to it",
        ),
        Err(error) => error,
    }
}

/// Whether a probe sent at `sent_at` still waits for its response.
fn probe_open(sent_at: Option<Instant>) -> bool {
    sent_at.is_some_and(|sent_at| sent_at.elapsed() < ROUND_TRIP_PROBE_TIMEOUT)
}

/// Opens a heartbeat probe when none is open and `messages` carry a heartbeat, and an
/// append probe when none is open and `messages` carry entries.
fn open_round_trip_probe(link: &PeerLink, messages: &[GroupMessage]) {
    let heartbeat_open = probe_open(link.probe_sent_at.get());
    let append_open = probe_open(link.append_probe_sent_at.get());
    if heartbeat_open && append_open {
        return;
    }
    let carries_heartbeat = !heartbeat_open
        && messages
            .iter()
            .any(|message| matches!(message.message.body, MessageBody::Heartbeat { .. }));
    let carries_entries = !append_open
        && messages.iter().any(|message| {
            matches!(&message.message.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty())
        });
    if !carries_heartbeat && !carries_entries {
        return;
    }
    let now = Instant::now();
    if carries_heartbeat {
        link.probe_sent_at.set(Some(now));
    }
    if carries_entries {
        link.append_probe_sent_at.set(Some(now));
    }
}

/// Closes the open probes of `link` that `messages` answer: the heartbeat probe with a
/// heartbeat response, the append probe with an append response. With pipelined appends
/// the response may answer an earlier append, so an append sample can be short.
fn close_round_trip_probe(link: &PeerLink, messages: &[GroupMessage]) {
    let heartbeat_sent_at = link.probe_sent_at.get();
    let append_sent_at = link.append_probe_sent_at.get();
    if heartbeat_sent_at.is_none() && append_sent_at.is_none() {
        return;
    }
    let answers = |is_response: fn(&MessageBody) -> bool| {
        messages
            .iter()
            .any(|message| is_response(&message.message.body))
    };
    if let Some(sent_at) = heartbeat_sent_at
        && answers(|body| matches!(body, MessageBody::HeartbeatResponse { .. }))
    {
        let round_trip = sent_at.elapsed();
        link.round_trip.borrow_mut().record(round_trip);
        link.round_trip_micros
            .borrow_mut()
            .record_duration_micros(round_trip);
        link.probe_sent_at.set(None);
    }
    if let Some(sent_at) = append_sent_at
        && answers(|body| matches!(body, MessageBody::AppendEntriesResponse { .. }))
    {
        link.append_round_trip
            .borrow_mut()
            .record(sent_at.elapsed());
        link.append_probe_sent_at.set(None);
    }
}

/// Accepts peer connections until the transport stops accepting.
async fn run_listener<E: From<TransportEvent> + 'static>(
    shared: Rc<Shared<E>>,
    listener: TcpListener,
) {
    loop {
        // Checked first: `or_stop` polls the accept before the latch, and an accept finds
        // a connection waiting in the backlog at once.
        let accepted = if shared.stop_accepting.is_set() {
            None
        } else {
            shared.stop_accepting.or_stop(listener.accept()).await
        };
        let Some(accepted) = accepted else {
            drop(listener);
            // Closing the descriptor is not enough: the accept in flight in io_uring keeps
            // the socket listening until the ring processes its cancellation, and a
            // connection accepted then is never served. A timer makes the executor pass
            // through its reactor, which submits the cancellation.
            glommio::timer::sleep(LISTENER_CANCEL_WAIT).await;
            shared.listener_closed.set();
            return;
        };
        match accepted {
            Ok(stream) => spawn_tracked(&shared, run_reader(Rc::clone(&shared), stream)),
            Err(error) => {
                tracing::warn!(address = %shared.settings.listen_address, %error, "accept failed");
                let delay = Duration::from_millis(100);
                shared
                    .stop_accepting
                    .or_stop(glommio::timer::sleep(delay))
                    .await;
            }
        }
    }
}

/// The reason a connection from a peer was closed.
#[derive(Debug, thiserror::Error)]
pub(super) enum RejectReason {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{0}")]
    Hello(String),
    #[error("a {0:?} frame arrived where it does not belong")]
    UnexpectedFrame(FrameKind),
    /// Invalid input in a snapshot transfer, or a failure to store it.
    #[error("snapshot transfer: {0}")]
    Snapshot(String),
    /// A snapshot transfer whose connection broke; the partial snapshot stays.
    #[error("snapshot transfer interrupted: {0}")]
    Interrupted(String),
    #[error("no byte arrived for {timeout_ms} ms")]
    Stalled { timeout_ms: u64 },
}

async fn run_reader<E: From<TransportEvent>>(shared: Rc<Shared<E>>, mut stream: TcpStream) {
    let peer_address = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |address| address.to_string());
    let mut reader =
        ConnectionReader::new(FrameDecoder::new(shared.settings.config.frame_bytes_max));
    let hello_timeout = Duration::from_millis(shared.settings.config.hello_timeout_ms);
    let hello = glommio::timer::timeout(hello_timeout, async {
        Ok(reader.next_frame(&mut stream, &shared.closed).await)
    })
    .await;
    let from = match hello {
        Err(_) => {
            reject(
                &shared,
                &peer_address,
                &RejectReason::Hello("no hello frame in time".into()),
            );
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Ok(Some(frame))) => match check_hello(&shared, &frame) {
            Ok(from) => {
                count_received_bytes(&shared, from, &frame);
                from
            }
            Err(reason) => return reject(&shared, &peer_address, &reason),
        },
        Ok(Err(reason)) => return reject(&shared, &peer_address, &reason),
    };
    if let Err(error) = send_hello_accepted(&shared, &mut stream, hello_timeout).await {
        tracing::debug!(peer = %from, address = %peer_address, %error, "sending the hello response failed");
        return;
    }
    tracing::debug!(peer = %from, address = %peer_address, "peer connection accepted");

    let mut first_frame = true;
    loop {
        let frame = match reader.next_frame(&mut stream, &shared.closed).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(reason) => return reject(&shared, &peer_address, &reason),
        };
        if std::mem::take(&mut first_frame) && frame.kind == FrameKind::SnapshotBegin {
            // A connection of its own carries one snapshot transfer.
            count_received_bytes(&shared, from, &frame);
            receive_snapshot(&shared, stream, reader, from, frame, &peer_address).await;
            return;
        }
        if !shared.peers.borrow().contains_key(&from) {
            tracing::info!(peer = %from, address = %peer_address, "closing the connection of a removed peer");
            return;
        }
        count_received_bytes(&shared, from, &frame);
        let messages = match accept_messages(&shared, from, &frame) {
            Ok(messages) => messages,
            Err(reason) => return reject(&shared, &peer_address, &reason),
        };
        if let Some(link) = shared.peers.borrow().get(&from) {
            close_round_trip_probe(link, &messages);
        }
        if messages.is_empty() {
            continue;
        }
        let event = TransportEvent::Received { from, messages };
        if !shared.events.push(E::from(event)).await {
            return;
        }
    }
}

/// Receives the snapshot that `begin` opens, and counts and logs how it ended.
async fn receive_snapshot<E: From<TransportEvent>>(
    shared: &Shared<E>,
    stream: TcpStream,
    reader: ConnectionReader,
    from: NodeId,
    begin: Frame,
    peer_address: &str,
) {
    let store = Rc::clone(&shared.snapshots);
    let outcome = snapshot_stream::receive(shared, &store, stream, reader, from, begin).await;
    match outcome {
        Ok(()) => {}
        Err(reason @ (RejectReason::Interrupted(_) | RejectReason::Stalled { .. })) => {
            shared.snapshot_stats.borrow_mut().interrupted += 1;
            tracing::info!(
                peer = %from, address = %peer_address, error = %reason,
                "snapshot transfer broke off; the partial snapshot is kept"
            );
        }
        Err(reason) => {
            shared.snapshot_stats.borrow_mut().rejected += 1;
            reject(shared, peer_address, &reason);
        }
    }
}

fn count_received_bytes<E>(shared: &Shared<E>, from: NodeId, frame: &Frame) {
    if let Some(link) = shared.peers.borrow().get(&from) {
        let bytes = (FRAME_HEADER_BYTES + frame.payload.len()) as u64;
        link.bytes_received.set(link.bytes_received.get() + bytes);
    }
}

impl RejectReason {
    /// Returns the counter of `RejectionCounts` that this rejection belongs to.
    fn counter<'a>(&self, counts: &'a mut RejectionCounts) -> &'a mut u64 {
        match self {
            RejectReason::Frame(FrameError::ChecksumMismatch { .. }) => &mut counts.checksum,
            RejectReason::Frame(FrameError::BadMagic { .. }) => &mut counts.magic,
            RejectReason::Frame(FrameError::UnsupportedVersion { .. }) => &mut counts.version,
            RejectReason::Frame(FrameError::TooLarge { .. }) => &mut counts.too_large,
            RejectReason::Frame(_)
            | RejectReason::UnexpectedFrame(_)
            | RejectReason::Snapshot(_)
            | RejectReason::Interrupted(_)
            | RejectReason::Stalled { .. } => &mut counts.other,
            RejectReason::Wire(_) => &mut counts.archive,
            RejectReason::Hello(_) => &mut counts.hello,
        }
    }
}

fn reject<E>(shared: &Shared<E>, peer_address: &str, reason: &RejectReason) {
    {
        let mut stats = shared.stats.borrow_mut();
        stats.connections_rejected += 1;
        *reason.counter(&mut stats.rejections) += 1;
    }
    tracing::warn!(
        address = %peer_address, shard = shared.settings.shard, error = %reason,
        "closing peer connection after invalid input"
    );
}

/// Sends this shard's own hello in response to a valid hello, which shows the connecting
/// side that a reader serves the connection.
async fn send_hello_accepted<E>(
    shared: &Shared<E>,
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<()> {
    let hello = wire::encode_hello(&shared.hello()).map_err(std::io::Error::other)?;
    let mut frame = Vec::new();
    encode_frame(FrameKind::HelloAccepted, &hello, &mut frame);
    match glommio::timer::timeout(timeout, async { Ok(stream.write_all(&frame).await) }).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "the hello answer was not written within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

/// Checks that `frame` is the response to a hello sent to `expected`, from the same
/// cluster and shard. The error names what differs.
pub(super) fn check_hello_accepted(
    settings: &TransportSettings,
    expected: NodeId,
    frame: &Frame,
) -> Result<(), String> {
    if frame.kind != FrameKind::HelloAccepted {
        return Err(format!(
            "expected a HelloAccepted frame in answer to the hello, got {:?}",
            frame.kind
        ));
    }
    let hello = wire::decode_hello(&frame.payload).map_err(|error| error.to_string())?;
    if hello.cluster_id != settings.cluster_id
        || hello.node_id != expected.0
        || hello.shard != settings.shard
    {
        return Err(format!(
            "the address of {expected} shard {} answered as node {} shard {} of cluster \
             {:#x}; check the peer addresses in the members list",
            settings.shard, hello.node_id, hello.shard, hello.cluster_id
        ));
    }
    Ok(())
}

fn check_hello<E>(shared: &Shared<E>, frame: &Frame) -> Result<NodeId, RejectReason> {
    let settings = &shared.settings;
    if frame.kind != FrameKind::Hello {
        return Err(RejectReason::UnexpectedFrame(frame.kind));
    }
    let hello = wire::decode_hello(&frame.payload)?;
    if hello.cluster_id != settings.cluster_id {
        return Err(RejectReason::Hello(format!(
            "the peer belongs to cluster {:#x}, this node to cluster {:#x}",
            hello.cluster_id, settings.cluster_id
        )));
    }
    if hello.shard != settings.shard || hello.shard_count != settings.shard_count {
        return Err(RejectReason::Hello(format!(
            "the peer is shard {} of {}, but this is shard {} of {}; every node must run \
             the same number of shards",
            hello.shard, hello.shard_count, settings.shard, settings.shard_count
        )));
    }
    let from = NodeId(hello.node_id);
    if !shared.peers.borrow().contains_key(&from) {
        return Err(RejectReason::Hello(format!(
            "node {} is not a member of this cluster as this node knows it; a new member \
             is accepted once its addition reaches this node",
            hello.node_id
        )));
    }
    Ok(from)
}

/// Checks a messages frame and keeps the messages addressed to groups of this shard.
fn accept_messages<E>(
    shared: &Shared<E>,
    from: NodeId,
    frame: &Frame,
) -> Result<Vec<GroupMessage>, RejectReason> {
    if frame.kind != FrameKind::Messages {
        return Err(RejectReason::UnexpectedFrame(frame.kind));
    }
    let settings = &shared.settings;
    let messages = wire::decode_batch(&frame.payload)?;
    // A snapshot travels only in a transfer of its own, which stores and checks it before
    // its `InstallSnapshot` is stepped. One in a messages frame would make the core ask to
    // install a snapshot that this node never received, so it closes the connection.
    if messages
        .iter()
        .any(|message| matches!(message.message.body, MessageBody::InstallSnapshot { .. }))
    {
        return Err(RejectReason::Snapshot(
            "an InstallSnapshot arrived in a messages frame; it is valid only at the start of \
             a snapshot transfer"
                .to_string(),
        ));
    }
    let received = messages.len() as u64;
    let hosted = |group: GroupId| {
        group.0 < settings.groups && group.0 % settings.shard_count == settings.shard
    };
    let accepted: Vec<GroupMessage> = messages
        .into_iter()
        .filter(|message| {
            message.message.from == from
                && message.message.to == settings.node_id
                && hosted(message.group)
        })
        .collect();
    let mut stats = shared.stats.borrow_mut();
    stats.frames_received += 1;
    stats.messages_received += accepted.len() as u64;
    stats.messages_misrouted += received - accepted.len() as u64;
    Ok(accepted)
}

/// Reads frames from a connection through a fixed buffer.
pub(super) struct ConnectionReader {
    decoder: FrameDecoder,
    buffer: Vec<u8>,
    filled: usize,
    consumed: usize,
    /// Longest wait for bytes on one read; `None` waits as long as the connection lasts.
    read_timeout: Option<Duration>,
}

impl ConnectionReader {
    pub(super) fn new(decoder: FrameDecoder) -> ConnectionReader {
        ConnectionReader {
            decoder,
            buffer: vec![0u8; READ_CHUNK_BYTES],
            filled: 0,
            consumed: 0,
            read_timeout: None,
        }
    }

    pub(super) fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// The next frame, `None` when the peer closed the connection or `closed` was set.
    pub(super) async fn next_frame(
        &mut self,
        stream: &mut TcpStream,
        closed: &Latch,
    ) -> Result<Option<Frame>, RejectReason> {
        loop {
            let mut input = &self.buffer[self.consumed..self.filled];
            let before = input.len();
            let frame = self.decoder.decode(&mut input)?;
            self.consumed += before - input.len();
            if let Some(frame) = frame {
                return Ok(Some(frame));
            }
            if self.consumed < self.filled {
                continue;
            }
            self.consumed = 0;
            let read = closed.or_stop(stream.read(&mut self.buffer));
            let read = match self.read_timeout {
                None => read.await,
                Some(timeout) => {
                    match glommio::timer::timeout(timeout, async { Ok(read.await) }).await {
                        Ok(read) => read,
                        Err(_) => {
                            return Err(RejectReason::Stalled {
                                timeout_ms: timeout.as_millis() as u64,
                            });
                        }
                    }
                }
            };
            self.filled = match read {
                None | Some(Ok(0)) | Some(Err(_)) => return Ok(None),
                Some(Ok(read)) => read,
            };
        }
    }
}
