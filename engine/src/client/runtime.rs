//! The client's executor thread: connections to the members, routing by group leader,
//! redirects and retries.
//!
//! Everything here runs on one glommio executor, so the state needs no locks. The API
//! side sends [`Job`]s over a flume channel, and each job runs as its own task until it
//! has a final reply or its deadline passes.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use super::{ClientConfig, ClientError};
use crate::protocol::{
    self, CLIENT_FRAME_BYTES_MAX, CLIENT_PROTOCOL_VERSION, ClientHello, FrameReader, HelloReply,
    Operation, ReadError, Reply, Request, RequestBatch, ServerHello,
};
use crate::signal::{Latch, Signal};

/// The first delay between retries; it doubles up to [`RETRY_BACKOFF_MS_MAX`].
const RETRY_BACKOFF_MS_MIN: u64 = 10;
const RETRY_BACKOFF_MS_MAX: u64 = 200;

/// Where a job's request goes.
#[derive(Clone, Debug)]
pub(crate) enum Route {
    /// To the leader of the group, found through redirects.
    Leader(u32),
    /// To the node the client first connected to, or any member when it is down; for
    /// stale reads, which any replica serves.
    AnyMember,
    /// To this address only.
    Endpoint(String),
}

/// What the API side sends to the executor.
pub(crate) enum Message {
    /// Run a request.
    Job(Job),
    /// Connect to the first reachable endpoint and return the cluster's group count.
    Connect {
        deadline: Instant,
        reply: flume::Sender<Result<u32, ClientError>>,
    },
}

/// A request from the API side, with where to send the result.
pub(crate) struct Job {
    pub operation: Operation,
    pub route: Route,
    pub deadline: Instant,
    pub reply: flume::Sender<Result<Reply, ClientError>>,
}

/// Runs jobs until every sender of `jobs` is dropped.
pub(crate) async fn run(config: ClientConfig, messages: flume::Receiver<Message>) {
    crate::wake_guard::spawn_wake_guard().detach();
    let core = Rc::new(Core {
        members: RefCell::new(BTreeMap::new()),
        endpoints: config.endpoints.clone(),
        groups: Cell::new(0),
        leaders: RefCell::new(HashMap::new()),
        home: RefCell::new(None),
        connections: RefCell::new(HashMap::new()),
        next_request_id: Cell::new(1),
        rotation: Cell::new(0),
        closed: Latch::default(),
        config,
    });
    while let Ok(message) = messages.recv_async().await {
        let core = Rc::clone(&core);
        match message {
            Message::Job(job) => {
                glommio::spawn_local(async move {
                    let result = run_job(&core, &job).await;
                    let _ = job.reply.send(result);
                })
                .detach();
            }
            Message::Connect { deadline, reply } => {
                glommio::spawn_local(async move {
                    let last_failure = RefCell::new(Failure::Timeout);
                    let connected = until(deadline, connect_any(&core, &last_failure)).await;
                    let result = match connected {
                        Some(result) => result,
                        None => Err(match last_failure.into_inner() {
                            Failure::Connection(reason) | Failure::Unavailable(reason) => {
                                ClientError::Unavailable { reason }
                            }
                            _ => ClientError::Timeout {
                                timeout_ms: core.config.request_timeout.as_millis() as u64,
                            },
                        }),
                    };
                    let _ = reply.send(result);
                })
                .detach();
            }
        }
    }
    core.closed.set();
    for connection in core.connections.borrow().values() {
        connection.fail(None);
    }
}

struct Core {
    config: ClientConfig,
    endpoints: Vec<String>,
    /// Client addresses by node id, learned from server hellos and redirects.
    members: RefCell<BTreeMap<u64, String>>,
    /// The number of groups, 0 until the first hello.
    groups: Cell<u32>,
    /// The last known leader of each group.
    leaders: RefCell<HashMap<u32, u64>>,
    /// The address of the first node that accepted the client.
    home: RefCell<Option<String>>,
    connections: RefCell<HashMap<String, Rc<Connection>>>,
    next_request_id: Cell<u64>,
    /// Spreads the choice of member among jobs that know no leader.
    rotation: Cell<usize>,
    closed: Latch,
}

/// Why one attempt failed; the last one decides the error reported at the deadline.
#[derive(Clone, Debug)]
enum Failure {
    /// The target does not lead the group and has no leader to redirect to.
    NoLeader,
    /// The connection failed or could not be opened.
    Connection(String),
    /// The server replied that it cannot serve the request now.
    Unavailable(String),
    /// The server's own request timeout passed, or no attempt finished yet.
    Timeout,
    /// Another membership change of the group had not committed yet.
    ChangePending(u64),
}

async fn run_job(core: &Rc<Core>, job: &Job) -> Result<Reply, ClientError> {
    let last_failure = RefCell::new(Failure::Timeout);
    match until(job.deadline, attempt_until_final(core, job, &last_failure)).await {
        Some(result) => result,
        None => Err(deadline_error(core, job, last_failure.into_inner())),
    }
}

/// Runs `future` until it completes (`Some`) or `deadline` passes (`None`).
async fn until<T>(deadline: Instant, future: impl std::future::Future<Output = T>) -> Option<T> {
    let remaining = deadline.saturating_duration_since(Instant::now());
    let expired = async {
        glommio::timer::sleep(remaining).await;
        None
    };
    futures_lite::future::or(async { Some(future.await) }, expired).await
}

fn deadline_error(core: &Core, job: &Job, failure: Failure) -> ClientError {
    let timeout_ms = core.config.request_timeout.as_millis() as u64;
    match (failure, &job.route) {
        (Failure::NoLeader, Route::Leader(group)) => ClientError::NoLeader {
            group: *group,
            timeout_ms,
        },
        (Failure::Connection(reason) | Failure::Unavailable(reason), _) => {
            ClientError::Unavailable { reason }
        }
        (Failure::ChangePending(index), Route::Leader(group)) => ClientError::ChangePending {
            group: *group,
            index,
        },
        _ => ClientError::Timeout { timeout_ms },
    }
}

/// Tries the job until it gets a final reply; the caller stops it at the deadline.
async fn attempt_until_final(
    core: &Rc<Core>,
    job: &Job,
    last_failure: &RefCell<Failure>,
) -> Result<Reply, ClientError> {
    let mut backoff_ms = RETRY_BACKOFF_MS_MIN;
    let mut redirected_to: Option<String> = None;
    loop {
        let target = match &job.route {
            Route::Endpoint(address) => address.clone(),
            Route::AnyMember => pick_member(core, true),
            Route::Leader(group) => match redirected_to.take() {
                Some(address) => address,
                None => pick_leader(core, *group),
            },
        };
        let reply = match send(core, &target, job.operation.clone()).await {
            Ok(reply) => reply,
            Err(AttemptError::Final(error)) => return Err(error),
            Err(AttemptError::Retry(failure)) => {
                if let Route::Leader(group) = job.route {
                    forget_leader_at(core, group, &target);
                }
                tracing::debug!(address = %target, ?failure, "client request failed; retrying");
                *last_failure.borrow_mut() = failure;
                backoff(&mut backoff_ms).await;
                continue;
            }
        };
        match reply {
            Reply::NotLeader {
                leader,
                leader_address,
            } => {
                let group = match job.route {
                    Route::Leader(group) => group,
                    _ => {
                        return Ok(Reply::NotLeader {
                            leader,
                            leader_address,
                        });
                    }
                };
                match (leader, leader_address) {
                    (Some(leader), Some(address)) => {
                        core.members.borrow_mut().insert(leader, address.clone());
                        core.leaders.borrow_mut().insert(group, leader);
                        *last_failure.borrow_mut() = Failure::Timeout;
                        // Follow a fresh redirect at once; a node that sends the client
                        // back where it just was is waited for.
                        if address == target {
                            backoff(&mut backoff_ms).await;
                        }
                        redirected_to = Some(address);
                    }
                    _ => {
                        core.leaders.borrow_mut().remove(&group);
                        *last_failure.borrow_mut() = Failure::NoLeader;
                        backoff(&mut backoff_ms).await;
                    }
                }
            }
            Reply::ChangePending { index } => {
                // The change before this one commits within a round trip or two, or its
                // learner is still catching up; either way waiting is all there is to do.
                *last_failure.borrow_mut() = Failure::ChangePending(index);
                backoff(&mut backoff_ms).await;
            }
            Reply::Unavailable(_) | Reply::Timeout => {
                // The node may be stopping or cut off from its group, so the next attempt
                // requests the leader from another member.
                if let Route::Leader(group) = job.route {
                    forget_leader_at(core, group, &target);
                }
                *last_failure.borrow_mut() = match reply {
                    Reply::Unavailable(reason) => Failure::Unavailable(reason),
                    _ => Failure::Timeout,
                };
                backoff(&mut backoff_ms).await;
            }
            reply => {
                if let Route::Leader(group) = job.route
                    && let Some(node) = node_at(core, &target)
                {
                    core.leaders.borrow_mut().insert(group, node);
                }
                return Ok(reply);
            }
        }
    }
}

async fn backoff(backoff_ms: &mut u64) {
    glommio::timer::sleep(Duration::from_millis(*backoff_ms)).await;
    *backoff_ms = (*backoff_ms * 2).min(RETRY_BACKOFF_MS_MAX);
}

fn node_at(core: &Core, address: &str) -> Option<u64> {
    core.members
        .borrow()
        .iter()
        .find(|(_, member)| member.as_str() == address)
        .map(|(node, _)| *node)
}

fn forget_leader_at(core: &Core, group: u32, address: &str) {
    let node = node_at(core, address);
    let mut leaders = core.leaders.borrow_mut();
    if node.is_some() && leaders.get(&group).copied() == node {
        leaders.remove(&group);
    }
}

/// The leader's address when known, or else the next member in turn.
fn pick_leader(core: &Core, group: u32) -> String {
    let leader = core.leaders.borrow().get(&group).copied();
    if let Some(leader) = leader
        && let Some(address) = core.members.borrow().get(&leader)
    {
        return address.clone();
    }
    pick_member(core, false)
}

/// The home node while its connection is up (when `prefer_home`), or else the next
/// address of the members and configured endpoints in turn.
fn pick_member(core: &Core, prefer_home: bool) -> String {
    if prefer_home
        && let Some(home) = core.home.borrow().as_ref()
        && core
            .connections
            .borrow()
            .get(home)
            .is_some_and(|connection| !connection.is_dead())
    {
        return home.clone();
    }
    let mut candidates: Vec<String> = core.members.borrow().values().cloned().collect();
    for endpoint in &core.endpoints {
        if !candidates.contains(endpoint) {
            candidates.push(endpoint.clone());
        }
    }
    let turn = core.rotation.get();
    core.rotation.set(turn.wrapping_add(1));
    candidates[turn % candidates.len()].clone()
}

/// Connects to the configured endpoints in turn until one accepts the client.
async fn connect_any(core: &Rc<Core>, last_failure: &RefCell<Failure>) -> Result<u32, ClientError> {
    let mut backoff_ms = RETRY_BACKOFF_MS_MIN;
    loop {
        for endpoint in &core.endpoints {
            match connection(core, endpoint).await {
                Ok(_) => {
                    *core.home.borrow_mut() = Some(endpoint.clone());
                    return Ok(core.groups.get());
                }
                Err(AttemptError::Final(error)) => return Err(error),
                Err(AttemptError::Retry(failure)) => {
                    tracing::debug!(address = %endpoint, ?failure, "connecting failed");
                    *last_failure.borrow_mut() = failure;
                }
            }
        }
        backoff(&mut backoff_ms).await;
    }
}

enum AttemptError {
    /// Retrying cannot help.
    Final(ClientError),
    /// Another attempt may succeed.
    Retry(Failure),
}

/// Sends one request to `address` and waits for its reply.
async fn send(core: &Rc<Core>, address: &str, operation: Operation) -> Result<Reply, AttemptError> {
    let connection = connection(core, address).await?;
    let id = core.next_request_id.get();
    core.next_request_id.set(id + 1);
    let (sender, receiver) = flume::bounded(1);
    connection.pending.borrow_mut().insert(id, sender);
    connection
        .outgoing
        .borrow_mut()
        .push(Request { id, operation });
    connection.wake.notify_all();
    let reply = receiver.recv_async().await;
    // Removes the entry if the caller gave up first; the reply, if it comes, is dropped.
    connection.pending.borrow_mut().remove(&id);
    reply.map_err(|_| {
        AttemptError::Retry(Failure::Connection(format!(
            "the connection to {address} closed before the reply"
        )))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionState {
    Connecting,
    Ready,
    Dead,
}

/// One connection to a member, shared by every job that sends to it.
struct Connection {
    address: String,
    state: Cell<ConnectionState>,
    /// Why the connection failed, for jobs waiting on it; taken by the first.
    error: RefCell<Option<ClientError>>,
    failure: RefCell<String>,
    changed: Signal,
    outgoing: RefCell<Vec<Request>>,
    pending: RefCell<HashMap<u64, flume::Sender<Reply>>>,
    wake: Signal,
    closed: Latch,
}

impl Connection {
    fn is_dead(&self) -> bool {
        self.state.get() == ConnectionState::Dead
    }

    /// Marks the connection dead and fails every pending request, which makes their jobs
    /// retry.
    fn fail(&self, reason: Option<String>) {
        if let Some(reason) = reason {
            *self.failure.borrow_mut() = reason;
        }
        self.state.set(ConnectionState::Dead);
        self.pending.borrow_mut().clear();
        self.closed.set();
        self.changed.notify_all();
        self.wake.notify_all();
    }
}

/// The connection to `address`, opening it when there is none or the last one failed.
async fn connection(core: &Rc<Core>, address: &str) -> Result<Rc<Connection>, AttemptError> {
    let existing = core.connections.borrow().get(address).cloned();
    let connection = match existing {
        Some(connection) if !connection.is_dead() => connection,
        _ => {
            let connection = Rc::new(Connection {
                address: address.to_string(),
                state: Cell::new(ConnectionState::Connecting),
                error: RefCell::new(None),
                failure: RefCell::new(String::new()),
                changed: Signal::default(),
                outgoing: RefCell::new(Vec::new()),
                pending: RefCell::new(HashMap::new()),
                wake: Signal::default(),
                closed: Latch::default(),
            });
            core.connections
                .borrow_mut()
                .insert(address.to_string(), Rc::clone(&connection));
            glommio::spawn_local(open(Rc::clone(core), Rc::clone(&connection))).detach();
            connection
        }
    };
    let state = connection
        .changed
        .wait_for(|| {
            let state = connection.state.get();
            (state != ConnectionState::Connecting).then_some(state)
        })
        .await;
    if state == ConnectionState::Ready {
        return Ok(connection);
    }
    if let Some(error) = connection.error.borrow().clone() {
        return Err(AttemptError::Final(error));
    }
    Err(AttemptError::Retry(Failure::Connection(
        connection.failure.borrow().clone(),
    )))
}

/// Opens the connection, exchanges hellos and runs its reader and writer.
async fn open(core: Rc<Core>, connection: Rc<Connection>) {
    let connect_timeout = core.config.connect_timeout;
    let address = connection.address.clone();
    let connected = core
        .closed
        .or_stop(glommio::timer::timeout(connect_timeout, async {
            TcpStream::connect(address.as_str()).await
        }))
        .await;
    let stream = match connected {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => {
            let reason = format!("connecting to {address} failed: {error}");
            return connection.fail(Some(reason));
        }
        None => return connection.fail(Some("the client is closing".to_string())),
    };
    let _ = stream.set_nodelay(true);
    let (mut read_half, mut write_half) = futures_lite::io::split(stream);
    let mut reader = FrameReader::new(CLIENT_FRAME_BYTES_MAX);

    let hello = exchange_hellos(
        &core,
        &address,
        &mut reader,
        &mut read_half,
        &mut write_half,
    );
    let hello = match glommio::timer::timeout(connect_timeout, async { Ok(hello.await) }).await {
        Ok(Ok(hello)) => hello,
        Ok(Err(HelloError::Final(error))) => {
            *connection.error.borrow_mut() = Some(error.clone());
            return connection.fail(Some(error.to_string()));
        }
        Ok(Err(HelloError::Retry(reason))) => return connection.fail(Some(reason)),
        Err(_) => {
            let reason = format!(
                "{address} sent no hello within {} ms",
                connect_timeout.as_millis()
            );
            return connection.fail(Some(reason));
        }
    };
    learn_cluster(&core, &hello);
    tracing::debug!(address = %address, node = hello.node_id, "connected to cluster member");
    connection.state.set(ConnectionState::Ready);
    connection.changed.notify_all();

    let writer = write_requests(Rc::clone(&connection), write_half);
    let reader = read_replies(&connection, reader, read_half);
    futures_lite::future::or(writer, reader).await;
}

fn learn_cluster(core: &Core, hello: &ServerHello) {
    core.groups.set(hello.groups);
    let mut members = core.members.borrow_mut();
    for member in &hello.members {
        members.insert(member.node_id, member.client_address.clone());
    }
}

enum HelloError {
    Final(ClientError),
    Retry(String),
}

async fn exchange_hellos(
    core: &Core,
    address: &str,
    reader: &mut FrameReader,
    read_half: &mut futures_lite::io::ReadHalf<TcpStream>,
    write_half: &mut futures_lite::io::WriteHalf<TcpStream>,
) -> Result<ServerHello, HelloError> {
    let hello = ClientHello {
        protocol_version: CLIENT_PROTOCOL_VERSION,
        cluster_id: core.config.cluster_id,
    };
    let mut out = Vec::new();
    protocol::encode_client_hello(&hello, &mut out)
        .map_err(|error| HelloError::Final(protocol_error(address, error.to_string())))?;
    write_half.write_all(&out).await.map_err(|error| {
        HelloError::Retry(format!("sending the hello to {address} failed: {error}"))
    })?;
    let frame = match reader.next_frame(read_half).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            return Err(HelloError::Retry(format!(
                "{address} closed the connection during the hello"
            )));
        }
        Err(ReadError::Io(error)) => {
            return Err(HelloError::Retry(format!(
                "reading the hello from {address} failed: {error}"
            )));
        }
        Err(ReadError::Protocol(error)) => {
            return Err(HelloError::Final(protocol_error(
                address,
                error.to_string(),
            )));
        }
    };
    let reply = protocol::decode_hello_reply(&frame)
        .map_err(|error| HelloError::Final(protocol_error(address, error.to_string())))?;
    match reply {
        HelloReply::Accepted(hello) => Ok(hello),
        HelloReply::ClusterIdMismatch { server_cluster_id } => {
            Err(HelloError::Final(ClientError::ClusterIdMismatch {
                expected: core.config.cluster_id.unwrap_or_default(),
                found: server_cluster_id,
            }))
        }
        HelloReply::UnsupportedVersion { server_version } => {
            Err(HelloError::Final(protocol_error(
                address,
                format!(
                    "the server speaks client protocol version {server_version}, this client \
                 version {CLIENT_PROTOCOL_VERSION}; use a client of the server's version"
                ),
            )))
        }
    }
}

fn protocol_error(address: &str, reason: String) -> ClientError {
    ClientError::Protocol {
        reason: format!("{address}: {reason}"),
    }
}

/// Sends queued requests, all that are queued in one frame, until the connection fails.
async fn write_requests(
    connection: Rc<Connection>,
    mut write_half: futures_lite::io::WriteHalf<TcpStream>,
) {
    let mut out = Vec::new();
    loop {
        let requests = connection
            .wake
            .wait_for(|| {
                if connection.is_dead() {
                    return Some(None);
                }
                let mut outgoing = connection.outgoing.borrow_mut();
                (!outgoing.is_empty()).then(|| Some(std::mem::take(&mut *outgoing)))
            })
            .await;
        let Some(requests) = requests else {
            return;
        };
        out.clear();
        let batch = RequestBatch { requests };
        if let Err(error) = protocol::encode_requests(&batch, &mut out) {
            return connection.fail(Some(format!("encoding requests failed: {error}")));
        }
        if let Err(error) = write_half.write_all(&out).await {
            let reason = format!("writing to {} failed: {error}", connection.address);
            return connection.fail(Some(reason));
        }
    }
}

/// Hands each reply to the job waiting for it until the connection fails.
async fn read_replies(
    connection: &Connection,
    mut reader: FrameReader,
    mut read_half: futures_lite::io::ReadHalf<TcpStream>,
) {
    loop {
        let frame = match connection
            .closed
            .or_stop(reader.next_frame(&mut read_half))
            .await
        {
            None => return,
            Some(Ok(Some(frame))) => frame,
            Some(Ok(None)) => {
                let reason = format!("{} closed the connection", connection.address);
                return connection.fail(Some(reason));
            }
            Some(Err(error)) => {
                let reason = format!("reading from {} failed: {error}", connection.address);
                return connection.fail(Some(reason));
            }
        };
        let batch = match protocol::decode_responses(&frame) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(address = %connection.address, %error, "invalid response; reconnecting");
                return connection.fail(Some(format!("{}: {error}", connection.address)));
            }
        };
        let mut pending = connection.pending.borrow_mut();
        for response in batch.responses {
            if let Some(sender) = pending.remove(&response.id) {
                let _ = sender.send(response.reply);
            }
        }
    }
}
