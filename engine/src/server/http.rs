//! The HTTP endpoints of a node, served by `tiny_http` on a thread of their own:
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /metrics` | Prometheus text format 0.0.4 ([`TEXT_CONTENT_TYPE`]) |
//! | `GET /health/live` | 200 while every shard returns its status in time, else 503 |
//! | `GET /health/ready` | 200 when every local group knows its leader and has applied its commit index within a lag limit, else 503 naming the groups that are not ready |
//! | `GET /v1/status` | JSON: node, cluster, version, members, and per group role, term, leader, indexes and members |
//!
//! Other paths return 404 and other methods 405, both with a JSON body. Readiness never
//! depends on being the leader, so a load balancer may send traffic to any ready node.
//!
//! Requests are answered one at a time. Each answer that needs the shards waits at most
//! [`HttpOptions::snapshot_timeout`] for them, so a stuck shard delays the answer but does
//! not hang the server. `tiny_http` parses every request and rejects malformed ones.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use shardraft_raft::{NodeId, Role};

use crate::config::MemberConfig;
use crate::metrics::{NodeLabels, NodeMetrics, TEXT_CONTENT_TYPE, encode_text};
use crate::node::{NodeHandle, NodeStatus};
use crate::state_machine::StateMachine;

/// The identity a node reports in `/v1/status` and in `shardraft_node_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub cluster_id: u64,
    pub node_id: u64,
    /// The version of the running binary, usually `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// Every member of the cluster, this node included.
    pub members: Vec<MemberConfig>,
}

/// Settings of the HTTP endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Time to wait for every shard to return its status or metrics. Liveness fails when
    /// it passes.
    pub snapshot_timeout: Duration,
    /// Maximum number of committed entries a group may have left to apply and still be
    /// ready.
    pub ready_apply_lag_entries_max: u64,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            snapshot_timeout: Duration::from_secs(1),
            ready_apply_lag_entries_max: 1000,
        }
    }
}

/// Failure to start the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "binding the HTTP address {address} failed: {detail}; choose a free port or stop \
         the process that holds it"
    )]
    Bind { address: SocketAddr, detail: String },
    #[error("starting the HTTP thread failed: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running HTTP server. Dropping it stops it like [`shutdown`](HttpServer::shutdown).
pub struct HttpServer {
    address: SocketAddr,
    server: Arc<tiny_http::Server>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Groups listed by name in a 503 from `/health/ready`; the count covers the rest.
const NOT_READY_GROUPS_LISTED_MAX: usize = 100;

/// Pause after a failed accept before the next one, so that a persistent failure (such as
/// running out of file descriptors) does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

const ENDPOINTS: [&str; 4] = ["/metrics", "/health/live", "/health/ready", "/v1/status"];

impl HttpServer {
    /// Starts serving on `listen` with [`HttpOptions::default`].
    ///
    /// # Errors
    /// As for [`start_with_options`](Self::start_with_options).
    pub fn start<S>(
        listen: SocketAddr,
        handle: NodeHandle<S>,
        info: NodeInfo,
    ) -> Result<HttpServer, HttpError>
    where
        S: StateMachine + 'static,
        S::Output: Send + 'static,
    {
        HttpServer::start_with_options(listen, handle, info, HttpOptions::default())
    }

    /// Binds `listen` and starts the thread that serves requests. Port 0 picks a free
    /// port; [`local_addr`](Self::local_addr) returns it.
    ///
    /// # Errors
    /// [`HttpError::Bind`] when the address cannot be bound, and [`HttpError::Thread`].
    pub fn start_with_options<S>(
        listen: SocketAddr,
        handle: NodeHandle<S>,
        info: NodeInfo,
        options: HttpOptions,
    ) -> Result<HttpServer, HttpError>
    where
        S: StateMachine + 'static,
        S::Output: Send + 'static,
    {
        let server = tiny_http::Server::http(listen).map_err(|error| HttpError::Bind {
            address: listen,
            detail: error.to_string(),
        })?;
        let address = server.server_addr().to_ip().unwrap_or(listen);
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let node_id = info.node_id;
        let endpoints = Endpoints {
            handle,
            info,
            options,
        };
        let thread = {
            let server = Arc::clone(&server);
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name(format!("http-{node_id}"))
                .spawn(move || serve(&server, &stopping, &endpoints))
                .map_err(HttpError::Thread)?
        };
        tracing::info!(node = node_id, %address, "HTTP server started");
        Ok(HttpServer {
            address,
            server,
            stopping,
            thread: Some(thread),
        })
    }

    /// Returns the address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// Stops taking requests, answers those already received, and joins the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if thread.join().is_err() {
            tracing::error!(address = %self.address, "the HTTP thread panicked");
        }
        tracing::info!(address = %self.address, "HTTP server stopped");
    }
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("address", &self.address)
            .field("running", &self.thread.is_some())
            .finish()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The node and settings that the request thread serves.
struct Endpoints<S: StateMachine> {
    handle: NodeHandle<S>,
    info: NodeInfo,
    options: HttpOptions,
}

fn serve<S>(server: &tiny_http::Server, stopping: &AtomicBool, endpoints: &Endpoints<S>)
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    let mut accept_errors = 0u64;
    loop {
        match server.recv() {
            Ok(request) => {
                let method = request.method().clone();
                let url = request.url().to_string();
                let response = endpoints.answer(&method, &url);
                if let Err(error) = request.respond(response) {
                    tracing::debug!(%method, %url, %error, "writing an HTTP response failed");
                }
            }
            Err(_) if stopping.load(Ordering::SeqCst) => return,
            // NOTE: tiny_http 0.12 ends its accept thread after the first failed accept, such
            // as running out of file descriptors, and reports it here once. Later connections
            // then get no response until the server is restarted.
            Err(error) => {
                accept_errors += 1;
                if accept_errors.is_power_of_two() {
                    tracing::error!(%error, accept_errors, "accepting an HTTP connection failed");
                }
                std::thread::sleep(ACCEPT_ERROR_PAUSE);
            }
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

fn content_type(value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(&b"Content-Type"[..], value.as_bytes())
        .expect("content types are valid header values")
}

fn json_response(status: u16, body: &impl Serialize) -> Response {
    let text = serde_json::to_string(body).unwrap_or_else(|error| {
        format!("{{\"error\":\"encoding the response as JSON failed: {error}\"}}")
    });
    tiny_http::Response::from_string(text)
        .with_status_code(status)
        .with_header(content_type("application/json"))
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error_response(status: u16, error: String) -> Response {
    json_response(status, &ErrorBody { error })
}

impl<S> Endpoints<S>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    fn answer(&self, method: &tiny_http::Method, url: &str) -> Response {
        let path = url.split_once('?').map_or(url, |(path, _query)| path);
        if !ENDPOINTS.contains(&path) {
            return error_response(
                404,
                format!(
                    "no endpoint at {path}; the endpoints are {}",
                    ENDPOINTS.join(", ")
                ),
            );
        }
        if *method != tiny_http::Method::Get {
            let allow = tiny_http::Header::from_bytes(&b"Allow"[..], &b"GET"[..])
                .expect("GET is a valid header value");
            return error_response(405, format!("{path} accepts only GET, not {method}"))
                .with_header(allow);
        }
        match path {
            "/metrics" => self.metrics(),
            "/health/live" => self.live(),
            "/health/ready" => self.ready(),
            _ => self.status(),
        }
    }

    fn metrics(&self) -> Response {
        let snapshot = match self.handle.metrics(self.options.snapshot_timeout) {
            Ok(snapshot) => snapshot,
            Err(error) => return error_response(503, error.to_string()),
        };
        let labels = NodeLabels {
            cluster_id: self.info.cluster_id,
            version: self.info.version.clone(),
        };
        match encode_text(snapshot, labels) {
            Ok(text) => {
                tiny_http::Response::from_string(text).with_header(content_type(TEXT_CONTENT_TYPE))
            }
            Err(error) => error_response(500, format!("encoding the metrics failed: {error}")),
        }
    }

    fn live(&self) -> Response {
        match self.handle.status_within(self.options.snapshot_timeout) {
            Ok(_) => json_response(200, &HealthBody::new("live")),
            Err(error) => {
                let mut body = HealthBody::new("not_live");
                body.error = Some(error.to_string());
                json_response(503, &body)
            }
        }
    }

    fn ready(&self) -> Response {
        let status = match self.handle.status_within(self.options.snapshot_timeout) {
            Ok(status) => status,
            Err(error) => {
                let mut body = HealthBody::new("not_ready");
                body.error = Some(error.to_string());
                return json_response(503, &body);
            }
        };
        let not_ready = groups_not_ready(&status, self.options.ready_apply_lag_entries_max);
        if not_ready.is_empty() {
            return json_response(200, &HealthBody::new("ready"));
        }
        let mut body = HealthBody::new("not_ready");
        body.not_ready_groups = Some(not_ready.len());
        body.groups = not_ready
            .into_iter()
            .take(NOT_READY_GROUPS_LISTED_MAX)
            .collect();
        json_response(503, &body)
    }

    fn status(&self) -> Response {
        match self.handle.metrics(self.options.snapshot_timeout) {
            Ok(snapshot) => json_response(200, &StatusBody::new(&self.info, &snapshot)),
            Err(error) => error_response(503, error.to_string()),
        }
    }
}

/// Body of the health endpoints.
#[derive(Serialize)]
struct HealthBody {
    /// `live`, `not_live`, `ready` or `not_ready`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Number of groups that are not ready, all of them, listed or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    not_ready_groups: Option<usize>,
    /// The first groups that are not ready, in group order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    groups: Vec<GroupNotReady>,
}

impl HealthBody {
    fn new(status: &'static str) -> HealthBody {
        HealthBody {
            status,
            error: None,
            not_ready_groups: None,
            groups: Vec::new(),
        }
    }
}

/// A group that keeps its node from being ready, and why.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct GroupNotReady {
    pub group: u32,
    pub reason: String,
}

/// Lists the local groups that are not ready, in group order: those that know no leader,
/// and those with more than `apply_lag_entries_max` committed entries left to apply.
pub fn groups_not_ready(status: &NodeStatus, apply_lag_entries_max: u64) -> Vec<GroupNotReady> {
    let mut not_ready: Vec<GroupNotReady> = status
        .shards
        .iter()
        .flat_map(|shard| &shard.groups)
        .filter_map(|group| {
            let lag = group.commit_index.0.saturating_sub(group.applied_index.0);
            let reason = if group.leader.is_none() {
                format!("no leader is known in term {}", group.term.0)
            } else if group.leader_suspected {
                format!(
                    "the failure detector suspects leader {} of term {}: its heartbeats \
                     stopped for longer than their history allows",
                    group.leader.map_or(0, |leader| leader.0),
                    group.term.0
                )
            } else if lag > apply_lag_entries_max {
                format!(
                    "{lag} committed entries are not applied yet, more than the limit of \
                     {apply_lag_entries_max}"
                )
            } else {
                return None;
            };
            Some(GroupNotReady {
                group: group.group.0,
                reason,
            })
        })
        .collect();
    not_ready.sort_by_key(|group| group.group);
    not_ready
}

/// Body of `/v1/status`.
#[derive(Serialize)]
struct StatusBody {
    node_id: u64,
    cluster_id: u64,
    version: String,
    members: Vec<MemberBody>,
    /// Every group this node hosts, in group order.
    groups: Vec<GroupBody>,
}

#[derive(Serialize)]
struct MemberBody {
    id: u64,
    addresses: Vec<String>,
}

#[derive(Serialize)]
struct GroupBody {
    group: u32,
    shard: u32,
    role: &'static str,
    term: u64,
    leader: Option<u64>,
    commit_index: u64,
    applied_index: u64,
    last_index: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    /// The heartbeat interval and election timeout range in force, in ticks.
    heartbeat_interval_ticks: u32,
    election_timeout_ticks_min: u32,
    election_timeout_ticks_max: u32,
    leader_suspected: bool,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Follower => "follower",
        Role::PreCandidate => "pre_candidate",
        Role::Candidate => "candidate",
        Role::Leader => "leader",
    }
}

fn node_ids(nodes: &[NodeId]) -> Vec<u64> {
    nodes.iter().map(|node| node.0).collect()
}

impl StatusBody {
    fn new(info: &NodeInfo, snapshot: &NodeMetrics) -> StatusBody {
        let members = info
            .members
            .iter()
            .map(|member| MemberBody {
                id: member.id,
                addresses: member.addresses.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        let mut groups = Vec::new();
        for shard in &snapshot.shards {
            for (status, metrics) in shard.status.groups.iter().zip(&shard.groups) {
                groups.push(GroupBody {
                    group: status.group.0,
                    shard: shard.status.shard,
                    role: role_name(status.role),
                    term: status.term.0,
                    leader: status.leader.map(|leader| leader.0),
                    commit_index: status.commit_index.0,
                    applied_index: status.applied_index.0,
                    last_index: status.last_index.0,
                    voters: node_ids(&metrics.voters),
                    learners: node_ids(&metrics.learners),
                    heartbeat_interval_ticks: status.timing.heartbeat_interval_ticks,
                    election_timeout_ticks_min: status.timing.election_timeout_ticks_min,
                    election_timeout_ticks_max: status.timing.election_timeout_ticks_max,
                    leader_suspected: status.leader_suspected,
                });
            }
        }
        groups.sort_by_key(|group| group.group);
        StatusBody {
            node_id: snapshot.node_id.0,
            cluster_id: info.cluster_id,
            version: info.version.clone(),
            members,
            groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use shardraft_raft::{GroupTiming, LogIndex, NodeId, Role, Term};

    use super::*;
    use crate::log::GroupId;
    use crate::node::{GroupStatus, ShardStatus};

    fn group(id: u32, leader: Option<u64>, commit: u64, suspected: bool) -> GroupStatus {
        GroupStatus {
            group: GroupId(id),
            role: Role::Follower,
            term: Term(4),
            leader: leader.map(NodeId),
            commit_index: LogIndex(commit),
            applied_index: LogIndex(10),
            last_index: LogIndex(commit),
            timing: GroupTiming {
                heartbeat_interval_ticks: 3,
                election_timeout_ticks_min: 15,
                election_timeout_ticks_max: 30,
            },
            leader_suspected: suspected,
        }
    }

    #[test]
    fn readiness_names_each_unready_group() {
        let status = NodeStatus {
            node_id: NodeId(2),
            shards: vec![ShardStatus {
                shard: 0,
                groups: vec![
                    group(0, Some(1), 10, false),
                    group(1, None, 10, false),
                    group(2, Some(1), 10, true),
                    group(3, Some(1), 500, false),
                ],
                transport: Default::default(),
                log: None,
                rejected_messages: 0,
                elections_started: 0,
                elections_won: 0,
            }],
        };

        let not_ready = groups_not_ready(&status, 100);

        let groups: Vec<u32> = not_ready.iter().map(|group| group.group).collect();
        assert_eq!(groups, [1, 2, 3]);
        assert!(
            not_ready[0].reason.contains("no leader"),
            "{}",
            not_ready[0].reason
        );
        assert!(
            not_ready[1]
                .reason
                .contains("failure detector suspects leader 1"),
            "{}",
            not_ready[1].reason
        );
        assert!(
            not_ready[2].reason.contains("490 committed entries"),
            "{}",
            not_ready[2].reason
        );
    }
}
