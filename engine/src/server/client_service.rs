//! The client service of a node: a TCP listener that serves the client protocol
//! ([`crate::protocol`]) against the node's key-value groups.
//!
//! The service runs on its own thread with its own glommio executor and reaches the
//! shards through a [`NodeHandle`], as any application thread would. Each connection
//! starts with a hello exchange. Then the service reads request frames, runs every request
//! as its own task (at most `inflight_requests_max` per connection, after which it stops
//! reading), and writes responses in completion order, tagged with the request id. All
//! responses that are ready when the writer wakes leave in one frame and one write.
//!
//! Requests are checked before they reach a group: empty keys, keys and values over the
//! store's limits and invalid scan limits get an error reply. A `NotLeader` reply carries
//! the leader's client address, so the client can go there next. Membership changes and
//! leadership transfers run at the group's leader; one that must continue at another node
//! (removing the leader, a transfer under way) is answered with a `NotLeader` naming the
//! node to retry at. Client addresses of members added at runtime come from the node's
//! address book, so hellos and redirects name them too. Invalid frames,
//! archives and hellos close only that connection, count in
//! [`ClientServiceStats::rejected_connections`] and log a warning with the peer address.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

use crate::kv::{Command, CommandError, KvLimits, KvStateMachine, ScanPage, WriteOutcome};
use crate::log::GroupId;
use crate::membership::{
    GroupMembership, MemberAddresses, MemberChange, MemberRole, MembershipScope,
};
use crate::node::{NodeError, NodeHandle, NodeStatus, ReadMode};
use crate::protocol::{
    self, CLIENT_FRAME_BYTES_MAX, CLIENT_PROTOCOL_VERSION, ClientHello, CurrentValue, FrameReader,
    GroupReport, GroupRole, HelloReply, MemberAddress, MemberReport, MembershipChangeRequest,
    MembershipReport, Operation, ProtocolError, ReadError, Reply, Request, Response, ResponseBatch,
    ScanEntry, ServerHello, StatusReport,
};
use crate::raft::{NodeId, Role};
use crate::signal::{Latch, Signal};

/// This node's identity and the client address of every member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster this node belongs to; clients that expect another are rejected.
    pub cluster_id: u64,
    /// This node's id.
    pub node_id: NodeId,
    /// The client address (`host:port`) of every member, this node included, sent to
    /// clients in the hello and in `NotLeader` replies.
    pub client_addresses: BTreeMap<NodeId, String>,
}

/// Limits of the client service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientServiceConfig {
    /// The store's key and value limits, checked before a request is proposed. Use the
    /// limits the node's state machines were created with.
    pub kv_limits: KvLimits,
    /// The maximum payload of one frame, in bytes; a larger frame closes the connection.
    pub frame_bytes_max: u32,
    /// The maximum number of requests of one connection that run at once. Past it, the
    /// service stops reading from that connection until a request completes.
    pub inflight_requests_max: usize,
    /// The maximum number of keys one scan returns; larger limits are lowered to it.
    pub scan_limit_max: u32,
    /// The time a new connection has to send its hello, in milliseconds.
    pub hello_timeout_ms: u64,
    /// The time shutdown waits for in-flight requests of each connection, in milliseconds.
    pub shutdown_timeout_ms: u64,
}

impl ClientServiceConfig {
    /// The default limits around the store's `kv_limits`.
    pub fn new(kv_limits: KvLimits) -> ClientServiceConfig {
        ClientServiceConfig {
            kv_limits,
            frame_bytes_max: CLIENT_FRAME_BYTES_MAX,
            inflight_requests_max: 256,
            scan_limit_max: 10_000,
            hello_timeout_ms: 5_000,
            shutdown_timeout_ms: 5_000,
        }
    }
}

/// Counters of a client service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientServiceStats {
    /// Connections accepted by the listener.
    pub connections_accepted: u64,
    /// Connections closed because of an invalid frame, archive or hello.
    pub rejected_connections: u64,
    /// Requests that received a response.
    pub requests_served: u64,
}

#[derive(Debug, Default)]
struct Counters {
    connections_accepted: AtomicU64,
    rejected_connections: AtomicU64,
    requests_served: AtomicU64,
}

/// The error of starting or stopping the client service.
#[derive(Debug, thiserror::Error)]
pub enum ClientServiceError {
    /// The listen address cannot be bound.
    #[error("binding the client address {address} failed: {source}; choose a free port")]
    Bind {
        /// The address that was requested.
        address: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The service's executor thread failed to start or panicked.
    #[error("the client service executor failed: {0}")]
    Executor(String),
}

/// A running client service. Dropping it stops the service as
/// [`shutdown`](ClientService::shutdown) does, without reporting errors.
#[derive(Debug)]
pub struct ClientService {
    local_address: SocketAddr,
    counters: Arc<Counters>,
    stop: Option<flume::Sender<()>>,
    executor: Option<glommio::ExecutorJoinHandle<()>>,
}

impl ClientService {
    /// Binds `listen` and starts serving clients on a new thread.
    ///
    /// # Errors
    /// [`ClientServiceError::Bind`] when `listen` cannot be bound, and
    /// [`ClientServiceError::Executor`] when the thread cannot start.
    pub fn start(
        handle: NodeHandle<KvStateMachine>,
        listen: SocketAddr,
        info: ClusterInfo,
        config: ClientServiceConfig,
    ) -> Result<ClientService, ClientServiceError> {
        let counters = Arc::new(Counters::default());
        let (stop_sender, stop_receiver) = flume::bounded::<()>(1);
        let (bound_sender, bound_receiver) = flume::bounded(1);
        let thread_counters = Arc::clone(&counters);
        let name = format!("client-service-{}", info.node_id.0);
        let executor = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&name)
            .spawn(move || async move {
                crate::wake_guard::spawn_wake_guard().detach();
                let listener = match TcpListener::bind(listen) {
                    Ok(listener) => listener,
                    Err(source) => {
                        let _ = bound_sender.send(Err(std::io::Error::from(source)));
                        return;
                    }
                };
                let local_address = listener.local_addr().map_err(std::io::Error::from);
                let _ = bound_sender.send(local_address);
                let service = Rc::new(Service {
                    handle,
                    info,
                    config,
                    counters: thread_counters,
                    closed: Latch::default(),
                    live_tasks: Cell::new(0),
                    task_ended: Signal::default(),
                });
                serve(service, listener, stop_receiver).await;
            })
            .map_err(|error| ClientServiceError::Executor(error.to_string()))?;
        let bound = bound_receiver.recv().map_err(|_| {
            ClientServiceError::Executor("the executor stopped before binding".to_string())
        });
        let local_address = match bound {
            Ok(Ok(address)) => address,
            Ok(Err(source)) => {
                let _ = executor.join();
                return Err(ClientServiceError::Bind {
                    address: listen,
                    source,
                });
            }
            Err(error) => {
                let _ = executor.join();
                return Err(error);
            }
        };
        tracing::info!(address = %local_address, "client service started");
        Ok(ClientService {
            local_address,
            counters,
            stop: Some(stop_sender),
            executor: Some(executor),
        })
    }

    /// The address the listener is bound to, with the port the system chose for port 0.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// The service's counters.
    pub fn stats(&self) -> ClientServiceStats {
        ClientServiceStats {
            connections_accepted: self.counters.connections_accepted.load(Ordering::Relaxed),
            rejected_connections: self.counters.rejected_connections.load(Ordering::Relaxed),
            requests_served: self.counters.requests_served.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting connections, lets each connection finish its in-flight requests
    /// (for at most `shutdown_timeout_ms`), closes the connections and joins the thread.
    ///
    /// # Errors
    /// [`ClientServiceError::Executor`] when the service thread panicked.
    pub fn shutdown(mut self) -> Result<(), ClientServiceError> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<(), ClientServiceError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(executor) = self.executor.take() else {
            return Ok(());
        };
        let joined = executor
            .join()
            .map_err(|error| ClientServiceError::Executor(error.to_string()));
        tracing::info!(address = %self.local_address, "client service stopped");
        joined
    }
}

impl Drop for ClientService {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// State shared by the tasks of the service's executor.
struct Service {
    handle: NodeHandle<KvStateMachine>,
    info: ClusterInfo,
    config: ClientServiceConfig,
    counters: Arc<Counters>,
    closed: Latch,
    live_tasks: Cell<usize>,
    task_ended: Signal,
}

/// Spawns a connection task counted in `live_tasks` until it ends.
fn spawn_tracked(service: &Rc<Service>, task: impl std::future::Future<Output = ()> + 'static) {
    service.live_tasks.set(service.live_tasks.get() + 1);
    let service = Rc::clone(service);
    let tracked = async move {
        task.await;
        service.live_tasks.set(service.live_tasks.get() - 1);
        service.task_ended.notify_all();
    };
    glommio::spawn_local(tracked).detach();
}

async fn serve(service: Rc<Service>, listener: TcpListener, stop: flume::Receiver<()>) {
    let watcher = Rc::clone(&service);
    glommio::spawn_local(async move {
        // A send or the sender's drop both mean stop.
        let _ = stop.recv_async().await;
        watcher.closed.set();
    })
    .detach();

    loop {
        let Some(accepted) = service.closed.or_stop(listener.accept()).await else {
            break;
        };
        match accepted {
            Ok(stream) => {
                service
                    .counters
                    .connections_accepted
                    .fetch_add(1, Ordering::Relaxed);
                spawn_tracked(&service, serve_connection(Rc::clone(&service), stream));
            }
            Err(error) => {
                tracing::warn!(address = ?listener.local_addr().ok(), %error, "accept failed");
                let delay = Duration::from_millis(100);
                service.closed.or_stop(glommio::timer::sleep(delay)).await;
            }
        }
    }
    drop(listener);
    service
        .task_ended
        .wait_for(|| (service.live_tasks.get() == 0).then_some(()))
        .await;
}

/// Why a client connection was closed.
#[derive(Debug, thiserror::Error)]
enum RejectReason {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("{0}")]
    Hello(String),
}

fn reject(service: &Service, peer_address: &str, reason: &RejectReason) {
    service
        .counters
        .rejected_connections
        .fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        address = %peer_address, node = service.info.node_id.0, error = %reason,
        "closing client connection after invalid input"
    );
}

/// The state of one connection, shared by its reader, its writer and its request tasks.
#[derive(Default)]
struct Connection {
    /// Responses waiting for the writer.
    outgoing: RefCell<Vec<Response>>,
    /// Notified when a response is queued, a request completes or reading stops.
    wake: Signal,
    inflight: Cell<usize>,
    reading_done: Cell<bool>,
    /// Set when the connection must close without sending what is queued.
    failed: Cell<bool>,
}

async fn serve_connection(service: Rc<Service>, stream: TcpStream) {
    let peer_address = stream
        .peer_addr()
        .map_or_else(|_| "unknown".to_string(), |address| address.to_string());
    let _ = stream.set_nodelay(true);
    let (mut read_half, mut write_half) = futures_lite::io::split(stream);
    let mut reader = FrameReader::new(service.config.frame_bytes_max);

    let hello = accept_hello(
        &service,
        &peer_address,
        &mut reader,
        &mut read_half,
        &mut write_half,
    );
    match hello.await {
        Ok(true) => {}
        Ok(false) => return,
        Err(reason) => return reject(&service, &peer_address, &reason),
    }
    tracing::debug!(address = %peer_address, "client connection accepted");

    let connection = Rc::new(Connection::default());
    let writer = glommio::spawn_local(write_responses(
        Rc::clone(&service),
        Rc::clone(&connection),
        write_half,
    ));

    let read_result = read_requests(&service, &connection, &mut reader, &mut read_half).await;
    if let Err(reason) = read_result {
        connection.failed.set(true);
        reject(&service, &peer_address, &reason);
    }
    connection.reading_done.set(true);
    connection.wake.notify_all();

    let drain = Duration::from_millis(service.config.shutdown_timeout_ms);
    if glommio::timer::timeout(drain, async {
        writer.await;
        Ok(())
    })
    .await
    .is_err()
    {
        tracing::warn!(
            address = %peer_address, inflight = connection.inflight.get(),
            "closing client connection with requests still in flight"
        );
    }
    tracing::debug!(address = %peer_address, "client connection closed");
}

/// Reads the hello and sends the reply. `Ok(false)` when the connection closed, the service
/// stopped first, or the hello was refused (already counted and logged).
async fn accept_hello(
    service: &Service,
    peer_address: &str,
    reader: &mut FrameReader,
    read_half: &mut futures_lite::io::ReadHalf<TcpStream>,
    write_half: &mut futures_lite::io::WriteHalf<TcpStream>,
) -> Result<bool, RejectReason> {
    let hello_timeout = Duration::from_millis(service.config.hello_timeout_ms);
    let frame = glommio::timer::timeout(hello_timeout, async {
        Ok(service.closed.or_stop(reader.next_frame(read_half)).await)
    })
    .await;
    let frame = match frame {
        Err(_) => {
            return Err(RejectReason::Hello(format!(
                "no hello within {} ms",
                service.config.hello_timeout_ms
            )));
        }
        Ok(None) | Ok(Some(Ok(None))) | Ok(Some(Err(ReadError::Io(_)))) => return Ok(false),
        Ok(Some(Err(ReadError::Protocol(error)))) => return Err(error.into()),
        Ok(Some(Ok(Some(frame)))) => frame,
    };
    let hello = protocol::decode_client_hello(&frame)?;
    let addresses = client_addresses(service);
    let (reply, rejection) =
        hello_reply(&service.info, &addresses, service.handle.groups(), &hello);
    let mut out = Vec::new();
    protocol::encode_hello_reply(&reply, &mut out)?;
    // A refusal is counted before the reply goes out, so a client that reads the refusal and
    // then looks at the counters sees it.
    let accepted = match rejection {
        Some(reason) => {
            reject(service, peer_address, &RejectReason::Hello(reason));
            false
        }
        None => true,
    };
    if write_half.write_all(&out).await.is_err() {
        return Ok(false);
    }
    Ok(accepted)
}

/// The reply to `hello`, and the reason to close the connection after sending it.
fn hello_reply(
    info: &ClusterInfo,
    client_addresses: &BTreeMap<NodeId, String>,
    groups: u32,
    hello: &ClientHello,
) -> (HelloReply, Option<String>) {
    if hello.protocol_version != CLIENT_PROTOCOL_VERSION {
        let reply = HelloReply::UnsupportedVersion {
            server_version: CLIENT_PROTOCOL_VERSION,
        };
        let reason = format!(
            "the client speaks protocol version {}, this server version {CLIENT_PROTOCOL_VERSION}",
            hello.protocol_version
        );
        return (reply, Some(reason));
    }
    if let Some(expected) = hello.cluster_id
        && expected != info.cluster_id
    {
        let reply = HelloReply::ClusterIdMismatch {
            server_cluster_id: info.cluster_id,
        };
        let reason = format!(
            "the client expects cluster {expected:#x}, this node belongs to cluster {:#x}",
            info.cluster_id
        );
        return (reply, Some(reason));
    }
    let members = client_addresses
        .iter()
        .map(|(node, address)| MemberAddress {
            node_id: node.0,
            client_address: address.clone(),
        })
        .collect();
    let reply = HelloReply::Accepted(ServerHello {
        protocol_version: CLIENT_PROTOCOL_VERSION,
        cluster_id: info.cluster_id,
        node_id: info.node_id.0,
        groups,
        members,
    });
    (reply, None)
}

/// Reads request frames and starts a task per request until the client closes the
/// connection or the service stops (`Ok`), or a frame is invalid.
async fn read_requests(
    service: &Rc<Service>,
    connection: &Rc<Connection>,
    reader: &mut FrameReader,
    read_half: &mut futures_lite::io::ReadHalf<TcpStream>,
) -> Result<(), RejectReason> {
    loop {
        let frame = match service.closed.or_stop(reader.next_frame(read_half)).await {
            None | Some(Ok(None)) | Some(Err(ReadError::Io(_))) => return Ok(()),
            Some(Err(ReadError::Protocol(error))) => return Err(error.into()),
            Some(Ok(Some(frame))) => frame,
        };
        let batch = protocol::decode_requests(&frame)?;
        for request in batch.requests {
            let max = service.config.inflight_requests_max.max(1);
            let admitted = service
                .closed
                .or_stop(
                    connection
                        .wake
                        .wait_for(|| (connection.inflight.get() < max).then_some(())),
                )
                .await;
            if admitted.is_none() || connection.failed.get() {
                return Ok(());
            }
            connection.inflight.set(connection.inflight.get() + 1);
            glommio::spawn_local(run_request(
                Rc::clone(service),
                Rc::clone(connection),
                request,
            ))
            .detach();
        }
    }
}

async fn run_request(service: Rc<Service>, connection: Rc<Connection>, request: Request) {
    let reply = execute(&service, request.operation).await;
    connection.outgoing.borrow_mut().push(Response {
        id: request.id,
        reply,
    });
    connection.inflight.set(connection.inflight.get() - 1);
    connection.wake.notify_all();
}

/// Writes queued responses until reading has stopped and every request has completed, or
/// the connection fails.
async fn write_responses(
    service: Rc<Service>,
    connection: Rc<Connection>,
    mut write_half: futures_lite::io::WriteHalf<TcpStream>,
) {
    let mut out = Vec::new();
    loop {
        let responses = connection
            .wake
            .wait_for(|| {
                if connection.failed.get() {
                    return Some(None);
                }
                let mut outgoing = connection.outgoing.borrow_mut();
                if !outgoing.is_empty() {
                    return Some(Some(std::mem::take(&mut *outgoing)));
                }
                let finished = connection.reading_done.get() && connection.inflight.get() == 0;
                finished.then_some(None)
            })
            .await;
        let Some(responses) = responses else {
            let _ = write_half.close().await;
            return;
        };
        let served = responses.len() as u64;
        out.clear();
        let batch = ResponseBatch { responses };
        if let Err(error) = protocol::encode_responses(&batch, &mut out) {
            tracing::warn!(%error, "encoding client responses failed; closing the connection");
            connection.failed.set(true);
            return;
        }
        if write_half.write_all(&out).await.is_err() {
            connection.failed.set(true);
            connection.wake.notify_all();
            return;
        }
        service
            .counters
            .requests_served
            .fetch_add(served, Ordering::Relaxed);
    }
}

/// Runs one request against the node and returns its reply.
async fn execute(service: &Service, operation: Operation) -> Reply {
    let result = match operation {
        Operation::Put { key, value } => {
            check_write(service, &key, Some(&value)).map(|()| Command::Put { key, value })
        }
        Operation::Delete { key } => {
            check_write(service, &key, None).map(|()| Command::Delete { key })
        }
        Operation::Cas {
            key,
            expected,
            new_value,
        } => check_write(service, &key, new_value.as_deref()).map(|()| Command::CompareAndSwap {
            key,
            condition: expected,
            new_value,
        }),
        Operation::Get { key, stale } => return get(service, key, stale).await,
        Operation::Scan {
            group,
            range,
            limit,
            stale,
        } => return scan(service, group, range, limit, stale).await,
        Operation::Status => return status(service).await,
        Operation::ChangeMembership { group, change } => {
            return change_membership(service, group, change).await;
        }
        Operation::Membership { group } => return membership(service, group).await,
        Operation::TransferLeader { group, to } => {
            return transfer_leader(service, group, to).await;
        }
    };
    match result {
        Ok(command) => propose(service, command).await,
        Err(reply) => reply,
    }
}

fn check_key(service: &Service, key: &[u8]) -> Result<(), Reply> {
    if key.is_empty() {
        return Err(Reply::EmptyKey);
    }
    let max = service.config.kv_limits.key_bytes_max;
    if key.len() > max {
        return Err(Reply::KeyTooLarge {
            bytes: key.len() as u64,
            max: max as u64,
        });
    }
    Ok(())
}

fn check_write(service: &Service, key: &[u8], value: Option<&[u8]>) -> Result<(), Reply> {
    check_key(service, key)?;
    let max = service.config.kv_limits.value_bytes_max;
    match value {
        Some(value) if value.len() > max => Err(Reply::ValueTooLarge {
            bytes: value.len() as u64,
            max: max as u64,
        }),
        _ => Ok(()),
    }
}

fn command_key(command: &Command) -> &[u8] {
    match command {
        Command::Put { key, .. }
        | Command::Delete { key }
        | Command::CompareAndSwap { key, .. } => key,
    }
}

async fn propose(service: &Service, command: Command) -> Reply {
    let group = service.handle.group_for_key(command_key(&command));
    let encoded = match command.encode() {
        Ok(encoded) => encoded,
        Err(error) => return Reply::Invalid(format!("the command does not encode: {error}")),
    };
    let applied = match service.handle.propose_async(group, encoded).await {
        Ok(applied) => applied,
        Err(error) => return node_error_reply(service, error),
    };
    match applied.output {
        Ok(result) => match result.outcome {
            WriteOutcome::Stored => Reply::Stored {
                index: result.index.0,
            },
            WriteOutcome::Deleted { existed } => Reply::Deleted {
                index: result.index.0,
                existed,
            },
            WriteOutcome::Swapped => Reply::Swapped {
                index: result.index.0,
            },
            WriteOutcome::ConditionFailed { current } => Reply::CasMismatch {
                current: current.map(|current| CurrentValue {
                    value: current.value.to_vec(),
                    mod_index: current.mod_index.0,
                }),
            },
        },
        Err(CommandError::KeyTooLarge {
            key_bytes,
            key_bytes_max,
        }) => Reply::KeyTooLarge {
            bytes: key_bytes as u64,
            max: key_bytes_max as u64,
        },
        Err(CommandError::ValueTooLarge {
            value_bytes,
            value_bytes_max,
        }) => Reply::ValueTooLarge {
            bytes: value_bytes as u64,
            max: value_bytes_max as u64,
        },
        Err(error @ CommandError::Decode(_)) => Reply::Invalid(error.to_string()),
    }
}

fn read_mode(stale: bool) -> ReadMode {
    if stale {
        ReadMode::Stale
    } else {
        ReadMode::Linearizable
    }
}

async fn get(service: &Service, key: Vec<u8>, stale: bool) -> Reply {
    if let Err(reply) = check_key(service, &key) {
        return reply;
    }
    let group = service.handle.group_for_key(&key);
    let read = service
        .handle
        .read_async(group, read_mode(stale), move |kv: &KvStateMachine| {
            kv.get(&key)
        })
        .await;
    match read {
        Ok(Some(found)) => Reply::Value {
            value: found.value.to_vec(),
            mod_index: found.mod_index.0,
        },
        Ok(None) => Reply::KeyNotFound,
        Err(error) => node_error_reply(service, error),
    }
}

async fn scan(
    service: &Service,
    group: u32,
    range: crate::kv::ScanRange,
    limit: u32,
    stale: bool,
) -> Reply {
    let groups = service.handle.groups();
    if group >= groups {
        return Reply::Invalid(format!(
            "group {group} does not exist; the cluster has groups 0 to {}",
            groups.saturating_sub(1)
        ));
    }
    if limit == 0 {
        return Reply::Invalid("scan limit 0; ask for at least 1 key".to_string());
    }
    let limit = limit.min(service.config.scan_limit_max) as usize;
    // Half the frame limit leaves room for the archive's own bytes around the entries.
    let page_bytes_max = service.config.frame_bytes_max as usize / 2;
    let read = service
        .handle
        .read_async(
            crate::log::GroupId(group),
            read_mode(stale),
            move |kv: &KvStateMachine| fit_page(kv.scan(&range, limit), page_bytes_max),
        )
        .await;
    match read {
        Ok(entries) => entries,
        Err(error) => node_error_reply(service, error),
    }
}

/// Converts a page, cutting it short (with `more` set) where its keys and values would
/// pass `page_bytes_max`. The first entry is always kept, because the request limits
/// already bound one entry's size.
fn fit_page(page: ScanPage, page_bytes_max: usize) -> Reply {
    let mut entries = Vec::with_capacity(page.entries.len());
    let mut bytes = 0usize;
    let mut more = page.more;
    for entry in page.entries {
        bytes += entry.key.len() + entry.value.len();
        if bytes > page_bytes_max && !entries.is_empty() {
            more = true;
            break;
        }
        entries.push(ScanEntry {
            key: entry.key.to_vec(),
            value: entry.value.to_vec(),
            mod_index: entry.mod_index.0,
        });
    }
    Reply::Page { entries, more }
}

async fn status(service: &Service) -> Reply {
    let handle = service.handle.clone();
    // The handle's status call blocks on each shard's reply, so it runs off the executor.
    let status = glommio::executor()
        .spawn_blocking(move || handle.status())
        .await;
    match status {
        Ok(status) => Reply::Status(status_report(&status)),
        Err(error) => node_error_reply(service, error),
    }
}

fn status_report(status: &NodeStatus) -> StatusReport {
    let mut groups: Vec<GroupReport> = status
        .shards
        .iter()
        .flat_map(|shard| &shard.groups)
        .map(|group| GroupReport {
            group: group.group.0,
            role: match group.role {
                Role::Follower => GroupRole::Follower,
                Role::PreCandidate => GroupRole::PreCandidate,
                Role::Candidate => GroupRole::Candidate,
                Role::Leader => GroupRole::Leader,
            },
            term: group.term.0,
            leader: group.leader.map(|leader| leader.0),
            commit_index: group.commit_index.0,
            applied_index: group.applied_index.0,
            last_index: group.last_index.0,
        })
        .collect();
    groups.sort_by_key(|group| group.group);
    StatusReport {
        node_id: status.node_id.0,
        groups,
    }
}

/// The client address of every member: the configured ones, and those the node's
/// address book learned from membership changes.
fn client_addresses(service: &Service) -> BTreeMap<NodeId, String> {
    let mut addresses = service.info.client_addresses.clone();
    for (node, member) in service.handle.member_addresses() {
        if let Some(client) = member.client {
            addresses.entry(node).or_insert_with(|| client.to_string());
        }
    }
    addresses
}

fn client_address(service: &Service, node: NodeId) -> Option<String> {
    service
        .info
        .client_addresses
        .get(&node)
        .cloned()
        .or_else(|| {
            let member = service.handle.member_addresses().remove(&node)?;
            member.client.map(|client| client.to_string())
        })
}

fn redirect(service: &Service, leader: Option<NodeId>) -> Reply {
    Reply::NotLeader {
        leader: leader.map(|leader| leader.0),
        leader_address: leader.and_then(|leader| client_address(service, leader)),
    }
}

fn node_error_reply(service: &Service, error: NodeError) -> Reply {
    match error {
        NodeError::NotLeader { leader, .. } => redirect(service, leader),
        // Both continue at the node that is taking over.
        NodeError::LeaderTransferring { target, .. }
        | NodeError::TransferInProgress { target, .. } => redirect(service, Some(target)),
        NodeError::ChangePending { index, .. } => Reply::ChangePending { index: index.0 },
        NodeError::Timeout { .. } => Reply::Timeout,
        error @ (NodeError::UnknownGroup { .. }
        | NodeError::InvalidChange { .. }
        | NodeError::InvalidTransfer { .. }) => Reply::Invalid(error.to_string()),
        error => Reply::Unavailable(error.to_string()),
    }
}

fn check_group(service: &Service, group: u32) -> Result<GroupId, Reply> {
    let groups = service.handle.groups();
    if group >= groups {
        return Err(Reply::Invalid(format!(
            "group {group} does not exist; the cluster has groups 0 to {}",
            groups.saturating_sub(1)
        )));
    }
    Ok(GroupId(group))
}

fn parse_address(what: &str, text: &str) -> Result<std::net::SocketAddr, Reply> {
    text.parse().map_err(|error| {
        Reply::Invalid(format!(
            "the {what} {text:?} is not an ip:port address ({error}); give one such as \
             127.0.0.1:7104"
        ))
    })
}

fn member_change(change: MembershipChangeRequest) -> Result<MemberChange, Reply> {
    Ok(match change {
        MembershipChangeRequest::AddLearner {
            node,
            peer_address,
            client_address,
            http_address,
            promote_when_caught_up,
        } => MemberChange::AddLearner {
            node: NodeId(node),
            addresses: MemberAddresses {
                peer: parse_address("peer address", &peer_address)?,
                client: Some(parse_address("client address", &client_address)?),
                http: http_address
                    .map(|address| parse_address("http address", &address))
                    .transpose()?,
            },
            promote_when_caught_up,
        },
        MembershipChangeRequest::Promote { node } => MemberChange::Promote { node: NodeId(node) },
        MembershipChangeRequest::Remove { node } => MemberChange::Remove { node: NodeId(node) },
    })
}

async fn change_membership(
    service: &Service,
    group: u32,
    change: MembershipChangeRequest,
) -> Reply {
    let (group, change) = match (check_group(service, group), member_change(change)) {
        (Ok(group), Ok(change)) => (group, change),
        (Err(reply), _) | (_, Err(reply)) => return reply,
    };
    let results = service
        .handle
        .change_membership_async(MembershipScope::Group(group), &change)
        .await;
    match results.map(|mut results| results.pop()) {
        Ok(Some(result)) => match result.result {
            Ok(index) => Reply::MembershipChanged { index: index.0 },
            Err(error) => node_error_reply(service, error),
        },
        Ok(None) => Reply::Unavailable(format!("group {group} gave no result")),
        Err(error) => node_error_reply(service, error),
    }
}

async fn membership(service: &Service, group: u32) -> Reply {
    let group = match check_group(service, group) {
        Ok(group) => group,
        Err(reply) => return reply,
    };
    match service.handle.membership_async(group).await {
        // Only the leader knows each member's progress.
        Ok(report) if report.leader != Some(report.reporter) => redirect(service, report.leader),
        Ok(report) => Reply::Membership(membership_report(service, &report)),
        Err(error) => node_error_reply(service, error),
    }
}

fn membership_report(service: &Service, report: &GroupMembership) -> MembershipReport {
    MembershipReport {
        group: report.group.0,
        reporter: report.reporter.0,
        leader: report.leader.map(|leader| leader.0),
        term: report.term.0,
        commit_index: report.commit_index.0,
        last_index: report.last_index.0,
        pending_change: report.pending_change.map(|index| index.0),
        members: report
            .members
            .iter()
            .map(|member| MemberReport {
                node_id: member.node.0,
                voter: member.role == MemberRole::Voter,
                promote_when_caught_up: matches!(
                    member.role,
                    MemberRole::Learner {
                        promote_when_caught_up: true
                    }
                ),
                match_index: member.match_index.map(|index| index.0),
                lag_entries: member.lag_entries,
                client_address: client_address(service, member.node),
            })
            .collect(),
    }
}

async fn transfer_leader(service: &Service, group: u32, to: u64) -> Reply {
    let group = match check_group(service, group) {
        Ok(group) => group,
        Err(reply) => return reply,
    };
    match service
        .handle
        .transfer_leadership_async(group, NodeId(to))
        .await
    {
        Ok(()) => Reply::LeaderTransferred,
        Err(error) => node_error_reply(service, error),
    }
}
