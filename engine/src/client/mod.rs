//! The client library of a shardraft cluster's key-value store.
//!
//! A [`Client`] owns a background thread with a glommio executor that keeps one
//! connection per member, pipelines requests on it and routes each request to the leader
//! of its key's group. The client learns the members' client addresses from the first
//! server's hello and each group's leader from `NotLeader` redirects. It follows
//! redirects and retries across leader changes, with a backoff from 10 ms to 200 ms,
//! until the request's deadline (`request_timeout`). The API sends requests to that
//! thread over flume channels, so every call has a blocking form, usable from any thread,
//! and an `_async` form, usable under any async runtime.
//!
//! ```no_run
//! use std::time::Duration;
//! use shardraft::client::{Client, ClientConfig, ClientError};
//!
//! # fn main() -> Result<(), ClientError> {
//! let mut config = ClientConfig::new(["127.0.0.1:7101", "127.0.0.1:7102"]);
//! config.request_timeout = Duration::from_secs(2);
//! let client = Client::connect(config)?;
//! client.put(b"greeting", b"hello")?;
//! let value = client.get(b"greeting")?;
//! assert_eq!(&value.value[..], b"hello");
//! # Ok(())
//! # }
//! ```
//!
//! NOTE: a write whose connection fails after it was sent is sent again, so it may apply
//! twice. Puts and deletes are idempotent, but a repeated compare-and-swap can report
//! [`ClientError::CasMismatch`] for a swap that did take effect.

mod runtime;

use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};

use crate::kv::{Condition, KeyValue, ScanPage, ScanRange, VersionedValue};
use crate::node::group_for_key;
use crate::protocol::{
    CurrentValue, MembershipChangeRequest, MembershipReport, Operation, Reply, StatusReport,
};
use crate::raft::LogIndex;
use runtime::{Job, Message, Route};

pub use crate::protocol::{GroupReport, GroupRole};

/// Settings of a [`Client`]: the endpoints it connects to and its timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Client addresses (`host:port`) of some members; the client learns the others from
    /// the first that accepts it.
    pub endpoints: Vec<String>,
    /// The cluster the client expects, or `None` to accept any. A server of another
    /// cluster makes the client fail with [`ClientError::ClusterIdMismatch`].
    pub cluster_id: Option<u64>,
    /// The time one request may take, redirects and retries included.
    pub request_timeout: Duration,
    /// The time to open a connection and exchange hellos.
    pub connect_timeout: Duration,
}

impl ClientConfig {
    /// A config for `endpoints`, any cluster id, a 5 s request timeout and a 1 s connect
    /// timeout.
    pub fn new<I, S>(endpoints: I) -> ClientConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            cluster_id: None,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// The error of a client call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The request did not complete within the request timeout.
    #[error("the request did not complete within {timeout_ms} ms; retry it or raise the timeout")]
    Timeout {
        /// The request timeout.
        timeout_ms: u64,
    },
    /// No member knew a leader of the key's group within the request timeout.
    #[error(
        "group {group} had no leader within {timeout_ms} ms; check that a majority of the \
         members is running"
    )]
    NoLeader {
        /// The group without a leader.
        group: u32,
        /// The request timeout.
        timeout_ms: u64,
    },
    /// A compare-and-swap found its condition false and changed nothing.
    #[error("the compare-and-swap condition does not hold; the key is {}", describe_current(.current.as_ref()))]
    CasMismatch {
        /// The key's current value, or `None` when the key is absent.
        current: Option<VersionedValue>,
    },
    /// The key has no value.
    #[error("key not found")]
    KeyNotFound,
    /// The value is longer than the store accepts.
    #[error("value is {bytes} bytes, over the limit of {max} bytes; split the value")]
    ValueTooLarge {
        /// The length of the value.
        bytes: u64,
        /// The store's limit.
        max: u64,
    },
    /// The key is longer than the store accepts.
    #[error("key is {bytes} bytes, over the limit of {max} bytes; use a shorter key")]
    KeyTooLarge {
        /// The length of the key.
        bytes: u64,
        /// The store's limit.
        max: u64,
    },
    /// The key is empty; keys have at least one byte.
    #[error("the key is empty; keys have at least 1 byte")]
    EmptyKey,
    /// A server belongs to another cluster than the configured `cluster_id`.
    #[error(
        "the server belongs to cluster {found:#x}, not the expected cluster {expected:#x}; \
         check the endpoints and the cluster id"
    )]
    ClusterIdMismatch {
        /// The configured cluster id.
        expected: u64,
        /// The server's cluster id.
        found: u64,
    },
    /// The cluster could not serve the request: no endpoint was reachable, or the servers
    /// reported that they cannot serve it.
    #[error("the cluster is unavailable: {reason}")]
    Unavailable {
        /// The last failure seen.
        reason: String,
    },
    /// The server rejected the request as invalid.
    #[error("invalid request: {reason}")]
    Invalid {
        /// The server's explanation.
        reason: String,
    },
    /// A server sent bytes that break the client protocol, or speaks another version.
    #[error("client protocol error: {reason}")]
    Protocol {
        /// The problem found.
        reason: String,
    },
    /// Another membership change of the group stayed uncommitted for the whole request
    /// timeout, for instance a learner that is still catching up before its promotion.
    #[error(
        "the membership change at index {index} of group {group} did not commit within the \
         request timeout; one change at a time, so wait for it (see `shardraft member list`) \
         and retry"
    )]
    ChangePending {
        /// The group.
        group: u32,
        /// The index of the uncommitted change.
        index: u64,
    },
    /// The client's executor thread is gone.
    #[error("the client is closed")]
    Closed,
}

fn describe_current(current: Option<&VersionedValue>) -> String {
    match current {
        Some(current) => format!(
            "{} bytes long and was last written at index {}",
            current.value.len(),
            current.mod_index.0
        ),
        None => "absent".to_string(),
    }
}

/// The condition of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasCondition<'a> {
    /// The key exists and its value equals these bytes.
    Value(&'a [u8]),
    /// The key does not exist.
    Absent,
    /// The key exists and was last written by the entry at this log index.
    ModIndex(u64),
}

impl CasCondition<'_> {
    fn to_condition(&self) -> Condition {
        match self {
            CasCondition::Value(value) => Condition::ValueEquals(value.to_vec()),
            CasCondition::Absent => Condition::Absent,
            CasCondition::ModIndex(index) => Condition::ModIndexEquals(*index),
        }
    }
}

/// A connection to a cluster. See the module documentation. Cloning shares the
/// connections; the background thread stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Client {
    messages: flume::Sender<Message>,
    request_timeout: Duration,
    groups: u32,
}

impl Client {
    /// Starts the client's thread and connects to the first reachable endpoint.
    ///
    /// # Errors
    /// [`ClientError::ClusterIdMismatch`] when the server belongs to another cluster,
    /// [`ClientError::Unavailable`] when no endpoint accepted the client within the
    /// request timeout, and [`ClientError::Invalid`] for a config without endpoints.
    ///
    /// ```no_run
    /// use shardraft::client::{Client, ClientConfig};
    /// let client = Client::connect(ClientConfig::new(["127.0.0.1:7101"]))?;
    /// # Ok::<(), shardraft::client::ClientError>(())
    /// ```
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let (client, connected) = Client::start(config)?;
        let groups = connected.recv().map_err(|_| ClientError::Closed)??;
        Ok(Client { groups, ..client })
    }

    /// The async form of [`connect`](Self::connect).
    pub async fn connect_async(config: ClientConfig) -> Result<Client, ClientError> {
        let (client, connected) = Client::start(config)?;
        let groups = connected
            .recv_async()
            .await
            .map_err(|_| ClientError::Closed)??;
        Ok(Client { groups, ..client })
    }

    #[allow(clippy::type_complexity)]
    fn start(
        config: ClientConfig,
    ) -> Result<(Client, flume::Receiver<Result<u32, ClientError>>), ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::Invalid {
                reason: "the client config has no endpoints; list at least one member's \
                         client address"
                    .to_string(),
            });
        }
        let request_timeout = config.request_timeout;
        let (messages, receiver) = flume::unbounded();
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("shardraft-client")
            .spawn(move || runtime::run(config, receiver))
            .map_err(|error| ClientError::Unavailable {
                reason: format!("starting the client thread failed: {error}"),
            })?;
        let (reply, connected) = flume::bounded(1);
        let deadline = Instant::now() + request_timeout;
        messages
            .send(Message::Connect { deadline, reply })
            .map_err(|_| ClientError::Closed)?;
        let client = Client {
            messages,
            request_timeout,
            groups: 0,
        };
        Ok((client, connected))
    }

    /// The number of groups in the cluster.
    pub fn groups(&self) -> u32 {
        self.groups
    }

    fn submit(
        &self,
        operation: Operation,
        route: Route,
    ) -> Result<flume::Receiver<Result<Reply, ClientError>>, ClientError> {
        let (reply, receiver) = flume::bounded(1);
        let job = Job {
            operation,
            route,
            deadline: Instant::now() + self.request_timeout,
            reply,
        };
        self.messages
            .send(Message::Job(job))
            .map_err(|_| ClientError::Closed)?;
        Ok(receiver)
    }

    fn call(&self, operation: Operation, route: Route) -> Result<Reply, ClientError> {
        let receiver = self.submit(operation, route)?;
        receiver.recv().map_err(|_| ClientError::Closed)?
    }

    async fn call_async(&self, operation: Operation, route: Route) -> Result<Reply, ClientError> {
        let receiver = self.submit(operation, route)?;
        receiver
            .recv_async()
            .await
            .map_err(|_| ClientError::Closed)?
    }

    fn key_route(&self, key: &[u8]) -> Route {
        Route::Leader(group_for_key(key, self.groups).0)
    }

    fn put_request(&self, key: &[u8], value: &[u8]) -> (Operation, Route) {
        let operation = Operation::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        (operation, self.key_route(key))
    }

    /// Sets `key` to `value` and returns the index of the log entry that stored it, which
    /// becomes the key's `mod_index`.
    ///
    /// # Errors
    /// [`ClientError::EmptyKey`], [`ClientError::KeyTooLarge`],
    /// [`ClientError::ValueTooLarge`], and the errors of every request:
    /// [`ClientError::Timeout`], [`ClientError::NoLeader`], [`ClientError::Unavailable`].
    ///
    /// ```no_run
    /// # let client = shardraft::client::Client::connect(
    /// #     shardraft::client::ClientConfig::new(["127.0.0.1:7101"]))?;
    /// let index = client.put(b"color", b"blue")?;
    /// assert_eq!(client.get(b"color")?.mod_index, index);
    /// # Ok::<(), shardraft::client::ClientError>(())
    /// ```
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<LogIndex, ClientError> {
        let (operation, route) = self.put_request(key, value);
        written_index(self.call(operation, route)?)
    }

    /// The async form of [`put`](Self::put).
    pub async fn put_async(&self, key: &[u8], value: &[u8]) -> Result<LogIndex, ClientError> {
        let (operation, route) = self.put_request(key, value);
        written_index(self.call_async(operation, route).await?)
    }

    fn get_request(&self, key: &[u8], stale: bool) -> (Operation, Route) {
        let operation = Operation::Get {
            key: key.to_vec(),
            stale,
        };
        let route = if stale {
            Route::AnyMember
        } else {
            self.key_route(key)
        };
        (operation, route)
    }

    /// Reads `key` linearizably from its group's leader: the result reflects every write
    /// that completed before the call.
    ///
    /// # Errors
    /// [`ClientError::KeyNotFound`] when the key has no value, [`ClientError::EmptyKey`],
    /// [`ClientError::KeyTooLarge`], and the errors of every request.
    ///
    /// ```no_run
    /// # let client = shardraft::client::Client::connect(
    /// #     shardraft::client::ClientConfig::new(["127.0.0.1:7101"]))?;
    /// match client.get(b"color") {
    ///     Ok(found) => println!("{:?} written at {}", found.value, found.mod_index.0),
    ///     Err(shardraft::client::ClientError::KeyNotFound) => println!("no color"),
    ///     Err(error) => return Err(error),
    /// }
    /// # Ok::<(), shardraft::client::ClientError>(())
    /// ```
    pub fn get(&self, key: &[u8]) -> Result<VersionedValue, ClientError> {
        let (operation, route) = self.get_request(key, false);
        found_value(self.call(operation, route)?)
    }

    /// The async form of [`get`](Self::get).
    pub async fn get_async(&self, key: &[u8]) -> Result<VersionedValue, ClientError> {
        let (operation, route) = self.get_request(key, false);
        found_value(self.call_async(operation, route).await?)
    }

    /// Reads `key` from the replica the client first connected to (another member when
    /// that one is down), leader or not. Cheaper than [`get`](Self::get), but it may miss
    /// recent writes.
    ///
    /// # Errors
    /// As [`get`](Self::get).
    pub fn get_stale(&self, key: &[u8]) -> Result<VersionedValue, ClientError> {
        let (operation, route) = self.get_request(key, true);
        found_value(self.call(operation, route)?)
    }

    /// The async form of [`get_stale`](Self::get_stale).
    pub async fn get_stale_async(&self, key: &[u8]) -> Result<VersionedValue, ClientError> {
        let (operation, route) = self.get_request(key, true);
        found_value(self.call_async(operation, route).await?)
    }

    fn delete_request(&self, key: &[u8]) -> (Operation, Route) {
        let operation = Operation::Delete { key: key.to_vec() };
        (operation, self.key_route(key))
    }

    /// Removes `key` and returns whether it existed.
    ///
    /// # Errors
    /// [`ClientError::EmptyKey`], [`ClientError::KeyTooLarge`], and the errors of every
    /// request.
    pub fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        let (operation, route) = self.delete_request(key);
        deleted(self.call(operation, route)?)
    }

    /// The async form of [`delete`](Self::delete).
    pub async fn delete_async(&self, key: &[u8]) -> Result<bool, ClientError> {
        let (operation, route) = self.delete_request(key);
        deleted(self.call_async(operation, route).await?)
    }

    fn cas_request(
        &self,
        key: &[u8],
        condition: &CasCondition<'_>,
        new_value: Option<&[u8]>,
    ) -> (Operation, Route) {
        let operation = Operation::Cas {
            key: key.to_vec(),
            expected: condition.to_condition(),
            new_value: new_value.map(<[u8]>::to_vec),
        };
        (operation, self.key_route(key))
    }

    /// Writes `new_value` to `key`, or deletes the key when `new_value` is `None`, only
    /// if `condition` holds, and returns the index of the entry that did it.
    ///
    /// # Errors
    /// [`ClientError::CasMismatch`] with the key's current value when the condition does
    /// not hold, the errors of [`put`](Self::put) and those of every request.
    ///
    /// ```no_run
    /// use shardraft::client::{CasCondition, ClientError};
    /// # let client = shardraft::client::Client::connect(
    /// #     shardraft::client::ClientConfig::new(["127.0.0.1:7101"]))?;
    /// // Create the key only if no other client created it first.
    /// match client.cas(b"owner", CasCondition::Absent, Some(b"me")) {
    ///     Ok(_) | Err(ClientError::CasMismatch { .. }) => {}
    ///     Err(error) => return Err(error),
    /// }
    /// // Replace the value only if it was not written since it was read.
    /// let read = client.get(b"owner")?;
    /// client.cas(b"owner", CasCondition::ModIndex(read.mod_index.0), Some(b"you"))?;
    /// # Ok::<(), shardraft::client::ClientError>(())
    /// ```
    pub fn cas(
        &self,
        key: &[u8],
        condition: CasCondition<'_>,
        new_value: Option<&[u8]>,
    ) -> Result<LogIndex, ClientError> {
        let (operation, route) = self.cas_request(key, &condition, new_value);
        swapped(self.call(operation, route)?)
    }

    /// The async form of [`cas`](Self::cas).
    pub async fn cas_async(
        &self,
        key: &[u8],
        condition: CasCondition<'_>,
        new_value: Option<&[u8]>,
    ) -> Result<LogIndex, ClientError> {
        let (operation, route) = self.cas_request(key, &condition, new_value);
        swapped(self.call_async(operation, route).await?)
    }

    fn scan_requests(
        &self,
        range: &ScanRange,
        limit: u32,
        stale: bool,
    ) -> Result<Vec<flume::Receiver<Result<Reply, ClientError>>>, ClientError> {
        (0..self.groups)
            .map(|group| {
                let operation = Operation::Scan {
                    group,
                    range: range.clone(),
                    limit,
                    stale,
                };
                let route = if stale {
                    Route::AnyMember
                } else {
                    Route::Leader(group)
                };
                self.submit(operation, route)
            })
            .collect()
    }

    /// Returns up to `limit` keys that start with `prefix`, in ascending order, read
    /// linearizably; `more` tells whether the prefix has further keys. Keys are spread
    /// over the groups by hash, so this reads every group and merges the pages.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] for a limit of 0, and the errors of every request.
    ///
    /// ```no_run
    /// # let client = shardraft::client::Client::connect(
    /// #     shardraft::client::ClientConfig::new(["127.0.0.1:7101"]))?;
    /// let page = client.scan_prefix(b"user/", 100)?;
    /// for entry in &page.entries {
    ///     println!("{:?} = {:?}", entry.key, entry.value);
    /// }
    /// # Ok::<(), shardraft::client::ClientError>(())
    /// ```
    pub fn scan_prefix(&self, prefix: &[u8], limit: u32) -> Result<ScanPage, ClientError> {
        self.scan(&ScanRange::Prefix(prefix.to_vec()), limit, false)
    }

    /// The async form of [`scan_prefix`](Self::scan_prefix).
    pub async fn scan_prefix_async(
        &self,
        prefix: &[u8],
        limit: u32,
    ) -> Result<ScanPage, ClientError> {
        self.scan_async(&ScanRange::Prefix(prefix.to_vec()), limit, false)
            .await
    }

    /// Returns up to `limit` keys of `range` in ascending order, from every group. With
    /// `stale`, reads the replica the client first connected to instead of each group's
    /// leader.
    ///
    /// # Errors
    /// As [`scan_prefix`](Self::scan_prefix).
    pub fn scan(
        &self,
        range: &ScanRange,
        limit: u32,
        stale: bool,
    ) -> Result<ScanPage, ClientError> {
        let receivers = self.scan_requests(range, limit, stale)?;
        let mut replies = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            replies.push(receiver.recv().map_err(|_| ClientError::Closed)??);
        }
        merge_pages(replies, limit)
    }

    /// The async form of [`scan`](Self::scan).
    pub async fn scan_async(
        &self,
        range: &ScanRange,
        limit: u32,
        stale: bool,
    ) -> Result<ScanPage, ClientError> {
        let receivers = self.scan_requests(range, limit, stale)?;
        let mut replies = Vec::with_capacity(receivers.len());
        for receiver in receivers {
            replies.push(
                receiver
                    .recv_async()
                    .await
                    .map_err(|_| ClientError::Closed)??,
            );
        }
        merge_pages(replies, limit)
    }

    /// Returns the role and progress of every group on the member at `endpoint`, which
    /// need not be one of the configured endpoints.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] when `endpoint` cannot be reached, and the errors of
    /// every request.
    pub fn status(&self, endpoint: &str) -> Result<StatusReport, ClientError> {
        status_report(self.call(Operation::Status, Route::Endpoint(endpoint.to_string()))?)
    }

    /// The async form of [`status`](Self::status).
    pub async fn status_async(&self, endpoint: &str) -> Result<StatusReport, ClientError> {
        let route = Route::Endpoint(endpoint.to_string());
        status_report(self.call_async(Operation::Status, route).await?)
    }

    fn change_request(group: u32, change: MembershipChangeRequest) -> (Operation, Route) {
        (
            Operation::ChangeMembership { group, change },
            Route::Leader(group),
        )
    }

    /// Changes the membership of `group` at its leader and returns the index of the
    /// committed change entry. A change that waits for an earlier one to commit is
    /// retried until the request timeout; removing the leader continues at the node that
    /// takes over. To change every group, call it for each of `0..groups()`.
    ///
    /// # Errors
    /// [`ClientError::ChangePending`] when an earlier change stayed uncommitted,
    /// [`ClientError::Invalid`] for a change that does not fit the membership (adding a
    /// member twice, promoting a voter, removing the last voter) or bad addresses, and the
    /// errors of every request.
    ///
    /// ```no_run
    /// use shardraft::protocol::MembershipChangeRequest;
    /// # let client = shardraft::client::Client::connect(
    /// #     shardraft::client::ClientConfig::new(["127.0.0.1:7101"]))?;
    /// for group in 0..client.groups() {
    ///     let change = MembershipChangeRequest::AddLearner {
    ///         node: 4,
    ///         peer_address: "127.0.0.1:7040".into(),
    ///         client_address: "127.0.0.1:7104".into(),
    ///         http_address: None,
    ///         promote_when_caught_up: true,
    ///     };
    ///     client.change_membership(group, change)?;
    /// }
    /// # Ok::<(), shardraft::client::ClientError>(())
    /// ```
    pub fn change_membership(
        &self,
        group: u32,
        change: MembershipChangeRequest,
    ) -> Result<LogIndex, ClientError> {
        let (operation, route) = Self::change_request(group, change);
        changed_index(self.call(operation, route)?)
    }

    /// The async form of [`change_membership`](Self::change_membership).
    pub async fn change_membership_async(
        &self,
        group: u32,
        change: MembershipChangeRequest,
    ) -> Result<LogIndex, ClientError> {
        let (operation, route) = Self::change_request(group, change);
        changed_index(self.call_async(operation, route).await?)
    }

    /// Returns the membership of `group` as its leader sees it: voters, learners, each
    /// member's match index and lag.
    ///
    /// # Errors
    /// The errors of every request.
    pub fn membership(&self, group: u32) -> Result<MembershipReport, ClientError> {
        membership_report(self.call(Operation::Membership { group }, Route::Leader(group))?)
    }

    /// The async form of [`membership`](Self::membership).
    pub async fn membership_async(&self, group: u32) -> Result<MembershipReport, ClientError> {
        let operation = Operation::Membership { group };
        membership_report(self.call_async(operation, Route::Leader(group)).await?)
    }

    /// Hands leadership of `group` to the voter `to` and returns once it leads.
    ///
    /// # Errors
    /// [`ClientError::Invalid`] when `to` is not a voter of the group, and the errors of
    /// every request.
    pub fn transfer_leader(&self, group: u32, to: u64) -> Result<(), ClientError> {
        let operation = Operation::TransferLeader { group, to };
        transferred(self.call(operation, Route::Leader(group))?)
    }

    /// The async form of [`transfer_leader`](Self::transfer_leader).
    pub async fn transfer_leader_async(&self, group: u32, to: u64) -> Result<(), ClientError> {
        let operation = Operation::TransferLeader { group, to };
        transferred(self.call_async(operation, Route::Leader(group)).await?)
    }
}

fn changed_index(reply: Reply) -> Result<LogIndex, ClientError> {
    match reply {
        Reply::MembershipChanged { index } => Ok(LogIndex(index)),
        other => Err(common_error(other)),
    }
}

fn membership_report(reply: Reply) -> Result<MembershipReport, ClientError> {
    match reply {
        Reply::Membership(report) => Ok(report),
        other => Err(common_error(other)),
    }
}

fn transferred(reply: Reply) -> Result<(), ClientError> {
    match reply {
        Reply::LeaderTransferred => Ok(()),
        other => Err(common_error(other)),
    }
}

/// Converts the replies that are errors in every call.
fn common_error(reply: Reply) -> ClientError {
    match reply {
        Reply::KeyNotFound => ClientError::KeyNotFound,
        Reply::CasMismatch { current } => ClientError::CasMismatch {
            current: current.map(versioned),
        },
        Reply::ValueTooLarge { bytes, max } => ClientError::ValueTooLarge { bytes, max },
        Reply::KeyTooLarge { bytes, max } => ClientError::KeyTooLarge { bytes, max },
        Reply::EmptyKey => ClientError::EmptyKey,
        Reply::Unavailable(reason) => ClientError::Unavailable { reason },
        Reply::Invalid(reason) => ClientError::Invalid { reason },
        other => ClientError::Protocol {
            reason: format!(
                "the server sent a reply of the wrong kind: {}",
                reply_kind(&other)
            ),
        },
    }
}

fn reply_kind(reply: &Reply) -> &'static str {
    match reply {
        Reply::Stored { .. } => "Stored",
        Reply::Deleted { .. } => "Deleted",
        Reply::Swapped { .. } => "Swapped",
        Reply::Value { .. } => "Value",
        Reply::Page { .. } => "Page",
        Reply::Status(_) => "Status",
        Reply::MembershipChanged { .. } => "MembershipChanged",
        Reply::Membership(_) => "Membership",
        Reply::LeaderTransferred => "LeaderTransferred",
        Reply::NotLeader { .. } => "NotLeader",
        Reply::Timeout => "Timeout",
        _ => "error",
    }
}

fn versioned(current: CurrentValue) -> VersionedValue {
    VersionedValue {
        value: Bytes::from(current.value),
        mod_index: LogIndex(current.mod_index),
    }
}

fn written_index(reply: Reply) -> Result<LogIndex, ClientError> {
    match reply {
        Reply::Stored { index } => Ok(LogIndex(index)),
        other => Err(common_error(other)),
    }
}

fn found_value(reply: Reply) -> Result<VersionedValue, ClientError> {
    match reply {
        Reply::Value { value, mod_index } => Ok(VersionedValue {
            value: Bytes::from(value),
            mod_index: LogIndex(mod_index),
        }),
        other => Err(common_error(other)),
    }
}

fn deleted(reply: Reply) -> Result<bool, ClientError> {
    match reply {
        Reply::Deleted { existed, .. } => Ok(existed),
        other => Err(common_error(other)),
    }
}

fn swapped(reply: Reply) -> Result<LogIndex, ClientError> {
    match reply {
        Reply::Swapped { index } => Ok(LogIndex(index)),
        other => Err(common_error(other)),
    }
}

fn status_report(reply: Reply) -> Result<StatusReport, ClientError> {
    match reply {
        Reply::Status(report) => Ok(report),
        other => Err(common_error(other)),
    }
}

/// Merges the pages of every group into the first `limit` keys of the union. A group
/// that returned `limit` keys and has more cannot hold any of the first `limit` keys
/// beyond those it returned, so the merge is exact.
fn merge_pages(replies: Vec<Reply>, limit: u32) -> Result<ScanPage, ClientError> {
    let mut entries = Vec::new();
    let mut more = false;
    for reply in replies {
        match reply {
            Reply::Page {
                entries: page,
                more: page_more,
            } => {
                more |= page_more;
                entries.extend(page.into_iter().map(|entry| KeyValue {
                    key: Bytes::from(entry.key),
                    value: Bytes::from(entry.value),
                    mod_index: LogIndex(entry.mod_index),
                }));
            }
            other => return Err(common_error(other)),
        }
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    let limit = limit as usize;
    if entries.len() > limit {
        entries.truncate(limit);
        more = true;
    }
    Ok(ScanPage { entries, more })
}
