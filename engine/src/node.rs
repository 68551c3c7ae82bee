//! A node: its shards, each on its own glommio executor thread, and the [`NodeHandle`]
//! through which application threads propose and read.
//!
//! ```text
//! application threads ── flume ──► shard 0 executor: groups 0, S, 2S, …, log, connections
//!                     ── flume ──► shard 1 executor: groups 1, S+1, …, log, connections
//! ```
//!
//! The handle is `Send + Sync` and cheap to clone. Each call goes to the shard that hosts
//! the group (group `g` on shard `g % S`) through a bounded flume channel, so a full shard
//! makes callers wait instead of growing a queue, and the reply comes back on a one-shot
//! flume channel. Every call has a blocking form and an `_async` form that works under any
//! async runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use shardraft_raft::{GroupTiming, LogIndex, NodeId, Role, Term};

use crate::config::{ConfigError, NodeConfig};
use crate::log::{DiskLogStats, GroupId, StorageError};
use crate::membership::{
    AddressBook, GroupMembership, MemberAddresses, MemberChange, MembershipScope,
};
use crate::metrics::{NodeMetrics, ShardMetrics, SnapshotError};
use crate::shard::{self, ShardParams};
use crate::snapshot::SnapshotActivity;
use crate::state_machine::StateMachine;
use crate::transport::TransportStats;
use crate::wake_guard::{ShardPulse, Watchdog};

/// A proposal's result: where it was applied and what the state machine returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied<T> {
    pub index: LogIndex,
    pub output: T,
}

/// The consistency of a read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// Confirm leadership with a quorum (ReadIndex), wait until the state machine has
    /// applied the commit index, then read. Sees every write acknowledged before it began.
    #[default]
    Linearizable,
    /// Read this replica's state machine as it is, leader or not. May miss recent writes.
    Stale,
}

/// The error of a call through a [`NodeHandle`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum NodeError {
    #[error("this node does not lead group {group}; {}", describe_leader(*.leader))]
    NotLeader {
        group: GroupId,
        leader: Option<NodeId>,
    },
    #[error("group {group} does not exist; the cluster has groups 0 to {}", .groups.saturating_sub(1))]
    UnknownGroup { group: GroupId, groups: u32 },
    #[error(
        "the proposal at index {index} of group {group} was replaced by another leader's \
         entry and did not take effect; retry it"
    )]
    ProposalDropped { group: GroupId, index: LogIndex },
    #[error("the request to group {group} did not complete within {timeout_ms} ms")]
    Timeout { group: GroupId, timeout_ms: u64 },
    #[error("group {group} is overloaded ({reason}); retry later")]
    Busy { group: GroupId, reason: String },
    #[error("the node is stopped")]
    Stopped,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    AddressFile(#[from] crate::membership::AddressFileError),
    #[error("shard {shard} failed to start: {detail}")]
    Startup { shard: u32, detail: String },
    #[error(
        "the membership change at index {index} of group {group} is not committed yet; one \
         change at a time, retry once it commits"
    )]
    ChangePending { group: GroupId, index: LogIndex },
    #[error(
        "the leader of group {group} did not commit an entry of its term within {timeout_ms} \
         ms, so it cannot change the membership yet; check that a majority of the group runs"
    )]
    LeaderNotReady { group: GroupId, timeout_ms: u64 },
    #[error(
        "node {} leads group {group} and is being removed: leadership moves to node {} \
         first; retry there", .leader.0, .target.0
    )]
    LeaderTransferring {
        group: GroupId,
        leader: NodeId,
        target: NodeId,
    },
    #[error(
        "leadership of group {group} is being transferred to node {}; retry at the new \
         leader", .target.0
    )]
    TransferInProgress { group: GroupId, target: NodeId },
    #[error("the membership change of group {group} does not fit: {reason}")]
    InvalidChange { group: GroupId, reason: String },
    #[error("leadership of group {group} cannot move to node {}: {reason}", .target.0)]
    InvalidTransfer {
        group: GroupId,
        target: NodeId,
        reason: String,
    },
    #[error(
        "the leadership transfer of group {group} to node {} was abandoned before the target \
         took over; check that it is up to date and reachable, then retry", .target.0
    )]
    TransferAbandoned { group: GroupId, target: NodeId },
}

fn describe_leader(leader: Option<NodeId>) -> String {
    match leader {
        Some(leader) => format!("node {} leads it", leader.0),
        None => "no leader is known yet; retry shortly".to_string(),
    }
}

/// Role and progress of one group on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    /// The heartbeat interval and election timeout range in force in this replica.
    pub timing: GroupTiming,
    /// Whether the shard's failure detector suspects the leader; always `false` with
    /// tuning off, since the detector runs with the tuner.
    pub leader_suspected: bool,
}

/// State of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: u32,
    pub groups: Vec<GroupStatus>,
    pub transport: TransportStats,
    /// Counters of the disk log; `None` in memory mode.
    pub log: Option<DiskLogStats>,
    /// Inputs the Raft cores rejected, summed over the shard's groups.
    pub rejected_messages: u64,
    /// Elections the shard's replicas started and won since the shard started, summed
    /// over its groups; pre-vote rounds are not elections.
    pub elections_started: u64,
    pub elections_won: u64,
}

/// State of the whole node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub shards: Vec<ShardStatus>,
}

impl NodeStatus {
    pub fn group(&self, group: GroupId) -> Option<&GroupStatus> {
        self.shards
            .iter()
            .flat_map(|shard| &shard.groups)
            .find(|status| status.group == group)
    }
}

/// The channel on which a shard returns the result of one proposal.
pub(crate) type ProposalReply<S> =
    flume::Sender<Result<Applied<<S as StateMachine>::Output>, NodeError>>;

type ProposalResult<S> = flume::Receiver<Result<Applied<<S as StateMachine>::Output>, NodeError>>;

/// A read to run against a group's state machine, or the error that prevents it.
pub(crate) type ReadFn<S> = Box<dyn FnOnce(Result<&S, NodeError>) + Send>;

/// A request from an application thread to a shard.
pub(crate) enum ShardRequest<S: StateMachine> {
    Propose {
        group: GroupId,
        command: Bytes,
        reply: ProposalReply<S>,
        /// When the proposer called [`NodeHandle::propose`], where the write's first stage
        /// (`queued`) starts.
        sent_at: Instant,
    },
    Read {
        group: GroupId,
        mode: ReadMode,
        read: ReadFn<S>,
    },
    Status {
        reply: flume::Sender<ShardStatus>,
    },
    Metrics {
        reply: flume::Sender<ShardMetrics>,
    },
    /// Change the membership of `group`; answered once the change entry commits. With
    /// `only_if_leader`, a node that does not lead answers `NotLeader` at once without
    /// waiting for a leader to become ready.
    ChangeMembership {
        group: GroupId,
        change: MemberChange,
        only_if_leader: bool,
        reply: flume::Sender<Result<LogIndex, NodeError>>,
    },
    /// Report the membership of `group` and, on the leader, each member's progress.
    Membership {
        group: GroupId,
        reply: flume::Sender<Result<GroupMembership, NodeError>>,
    },
    /// Hand leadership of `group` to `target`; answered once the target leads.
    TransferLeadership {
        group: GroupId,
        target: NodeId,
        reply: flume::Sender<Result<(), NodeError>>,
    },
    /// Stop the shard. With `crash`, stop at once as a killed process would: nothing
    /// pending is written and the log is not closed.
    Stop {
        crash: bool,
    },
}

/// The outcome of a membership change in one group.
#[derive(Clone, Debug)]
pub struct GroupChangeResult {
    pub group: GroupId,
    /// The index of the committed change entry, or why the group did not change.
    pub result: Result<LogIndex, NodeError>,
}

struct HandleInner<S: StateMachine> {
    node_id: NodeId,
    groups: u32,
    shards: Vec<ShardLink<S>>,
    request_timeout_ms: u64,
    addresses: Arc<AddressBook>,
    snapshot_activity: Arc<SnapshotActivity>,
}

/// The way requests reach one shard: its request channel, and whether it stopped.
pub(crate) struct ShardLink<S: StateMachine> {
    requests: flume::Sender<ShardRequest<S>>,
    /// A receiver of the same channel, so that a sender can drain what the stopped shard
    /// will never read.
    leftovers: flume::Receiver<ShardRequest<S>>,
    /// Set by the shard as it stops, before it drains its request channel for the last
    /// time.
    stopped: Arc<AtomicBool>,
}

impl<S: StateMachine> ShardLink<S> {
    /// Sends `request` to the shard.
    ///
    /// A request that enters the channel after the shard's last drain would never get a
    /// reply. The shard marks itself stopped before that drain, so a sender that finds the
    /// mark after sending drains the channel itself. Each request dropped there fails its
    /// caller with [`NodeError::Stopped`]. A request the shard handled before it stopped
    /// keeps its reply.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] when the channel is disconnected. The link's own receiver
    /// keeps it connected, so this is a guard rather than an expected outcome.
    fn send(&self, request: ShardRequest<S>) -> Result<(), NodeError> {
        self.requests
            .send(request)
            .map_err(|_| NodeError::Stopped)?;
        self.drain_if_stopped();
        Ok(())
    }

    /// The async form of [`send`](Self::send).
    async fn send_async(&self, request: ShardRequest<S>) -> Result<(), NodeError> {
        self.requests
            .send_async(request)
            .await
            .map_err(|_| NodeError::Stopped)?;
        self.drain_if_stopped();
        Ok(())
    }

    /// Drops every request left in the channel once the shard stopped.
    fn drain_if_stopped(&self) {
        if self.stopped.load(Ordering::SeqCst) {
            while let Ok(request) = self.leftovers.try_recv() {
                drop(request);
            }
        }
    }
}

/// The application's handle on a running node. See the module documentation.
pub struct NodeHandle<S: StateMachine> {
    inner: Arc<HandleInner<S>>,
}

impl<S: StateMachine> Clone for NodeHandle<S> {
    fn clone(&self) -> Self {
        NodeHandle {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: StateMachine> std::fmt::Debug for NodeHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node_id", &self.inner.node_id)
            .field("groups", &self.inner.groups)
            .field("shards", &self.inner.shards.len())
            .finish()
    }
}

/// Longest time a shard's executor runs ready tasks before it polls for completed I/O.
/// glommio's default of 100 ms lets a long computation that yields between steps (a snapshot
/// being serialized) hold back every socket read and log write completion for that long; at
/// 1 ms the shard still finishes such steps, and its writes wait at most about as long.
const SHARD_PREEMPT_TIMER: Duration = Duration::from_millis(1);

/// Time a new shard executor has to run its first task before another one replaces it.
const SHARD_EXECUTOR_START_TIMEOUT: Duration = Duration::from_secs(1);

/// Executors started for one shard before its start counts as failed.
const SHARD_EXECUTOR_ATTEMPTS: usize = 4;

/// Starts the executor thread of a shard and returns its join handle once it runs.
///
/// glommio 0.9 can park a new executor before it ran its first task, and then nothing ever
/// wakes it. Its run loop installs a preemption timer, which may fire before the first task
/// queue runs when the thread is descheduled for longer than the 1 ms timer, as on a loaded
/// machine. The loop then finds nothing run and sleeps without any timer. The wake
/// guard cannot help, since it is itself a task. So each executor reports its first poll,
/// and when none comes within [`SHARD_EXECUTOR_START_TIMEOUT`] another executor takes
/// over the shard. Whichever polls first takes the parameters, and its handle is returned;
/// a later one returns at once. An executor that never ran is left parked (its thread
/// ends with the process) and is not joined at shutdown.
fn start_shard_executor<S>(
    name: &str,
    placement: Placement,
    params: ShardParams<S>,
) -> Result<Option<glommio::ExecutorJoinHandle<()>>, NodeError>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    let shard = params.shard;
    let io_memory_bytes = crate::log::io_memory_bytes(&params.config.log);
    let slot = Arc::new(std::sync::Mutex::new(Some(params)));
    // Each executor sends its attempt number once it polled, and whether it took the
    // parameters.
    let (polled_sender, polled) = flume::unbounded::<(usize, bool)>();
    let mut attempts = Vec::new();
    while attempts.len() < SHARD_EXECUTOR_ATTEMPTS {
        let attempt = attempts.len();
        let attempt_slot = Arc::clone(&slot);
        let attempt_sender = polled_sender.clone();
        let executor = LocalExecutorBuilder::new(placement.clone())
            .name(name)
            .preempt_timer(SHARD_PREEMPT_TIMER)
            .io_memory(io_memory_bytes)
            .spawn(move || async move {
                let params = attempt_slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take();
                let _ = attempt_sender.send((attempt, params.is_some()));
                drop(attempt_sender);
                if let Some(params) = params {
                    shard::run(params).await;
                }
            })
            .map_err(|error| NodeError::Startup {
                shard,
                detail: error.to_string(),
            })?;
        attempts.push(Some(executor));
        let deadline = Instant::now() + SHARD_EXECUTOR_START_TIMEOUT;
        loop {
            match polled.recv_deadline(deadline) {
                Ok((winner, true)) => {
                    // Executors that never ran stay parked; dropping their handles
                    // detaches their threads.
                    return Ok(attempts[winner].take());
                }
                // A late executor found the shard taken and returned.
                Ok((_, false)) => {}
                Err(_) => break,
            }
        }
        tracing::warn!(
            shard,
            attempt = attempt + 1,
            timeout_ms = SHARD_EXECUTOR_START_TIMEOUT.as_millis() as u64,
            "a shard executor did not run its first task in time; starting another"
        );
    }
    Err(NodeError::Startup {
        shard,
        detail: format!(
            "{SHARD_EXECUTOR_ATTEMPTS} executor threads in a row did not run their first task \
             within {} ms each; the machine may be overloaded",
            SHARD_EXECUTOR_START_TIMEOUT.as_millis()
        ),
    })
}

/// The group a key belongs to: CRC-32 of the key modulo the number of groups. Stable
/// across versions, because every node and client must agree on it.
pub fn group_for_key(key: &[u8], groups: u32) -> GroupId {
    GroupId(crc32fast::hash(key) % groups.max(1))
}

impl<S> NodeHandle<S>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// Number of groups in the cluster.
    pub fn groups(&self) -> u32 {
        self.inner.groups
    }

    /// Returns the group `key` belongs to.
    pub fn group_for_key(&self, key: &[u8]) -> GroupId {
        group_for_key(key, self.inner.groups)
    }

    fn shard_for(&self, group: GroupId) -> Result<&ShardLink<S>, NodeError> {
        if group.0 >= self.inner.groups {
            return Err(NodeError::UnknownGroup {
                group,
                groups: self.inner.groups,
            });
        }
        let shards = &self.inner.shards;
        Ok(&shards[group.0 as usize % shards.len()])
    }

    fn propose_request(
        &self,
        group: GroupId,
        command: Bytes,
    ) -> (ShardRequest<S>, ProposalResult<S>) {
        let (reply, receiver) = flume::bounded(1);
        let request = ShardRequest::Propose {
            group,
            command,
            reply,
            sent_at: Instant::now(),
        };
        (request, receiver)
    }

    /// Replicates `command` in `group` and waits until it is applied on this node, the
    /// group's leader.
    ///
    /// # Errors
    /// [`NodeError::NotLeader`] with the leader if known, [`NodeError::Timeout`] after
    /// `request_timeout_ms`, [`NodeError::ProposalDropped`] if a new leader replaced the
    /// entry, and [`NodeError::Stopped`].
    pub fn propose(&self, group: GroupId, command: Bytes) -> Result<Applied<S::Output>, NodeError> {
        let shard = self.shard_for(group)?;
        let (request, receiver) = self.propose_request(group, command);
        shard.send(request)?;
        receiver.recv().map_err(|_| NodeError::Stopped)?
    }

    /// The async form of [`propose`](Self::propose).
    pub async fn propose_async(
        &self,
        group: GroupId,
        command: Bytes,
    ) -> Result<Applied<S::Output>, NodeError> {
        let shard = self.shard_for(group)?;
        let (request, receiver) = self.propose_request(group, command);
        shard.send_async(request).await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| NodeError::Stopped)?
    }

    fn read_request<R: Send + 'static>(
        group: GroupId,
        mode: ReadMode,
        read: impl FnOnce(&S) -> R + Send + 'static,
    ) -> (ShardRequest<S>, flume::Receiver<Result<R, NodeError>>) {
        let (reply, receiver) = flume::bounded(1);
        let read: ReadFn<S> = Box::new(move |state_machine| {
            let _ = reply.send(state_machine.map(read));
        });
        (ShardRequest::Read { group, mode, read }, receiver)
    }

    /// Runs `read` against the state machine of `group` on this node, with the consistency `mode` requests.
    ///
    /// # Errors
    /// For linearizable reads, [`NodeError::NotLeader`] when this node does not lead the
    /// group; [`NodeError::Timeout`] and [`NodeError::Stopped`] for both modes.
    pub fn read<R: Send + 'static>(
        &self,
        group: GroupId,
        mode: ReadMode,
        read: impl FnOnce(&S) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let shard = self.shard_for(group)?;
        let (request, receiver) = Self::read_request(group, mode, read);
        shard.send(request)?;
        receiver.recv().map_err(|_| NodeError::Stopped)?
    }

    /// The async form of [`read`](Self::read).
    pub async fn read_async<R: Send + 'static>(
        &self,
        group: GroupId,
        mode: ReadMode,
        read: impl FnOnce(&S) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let shard = self.shard_for(group)?;
        let (request, receiver) = Self::read_request(group, mode, read);
        shard.send_async(request).await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| NodeError::Stopped)?
    }

    /// Role, term and progress of every group, and each shard's counters.
    ///
    /// # Errors
    /// [`NodeError::Stopped`] once the node stopped.
    pub fn status(&self) -> Result<NodeStatus, NodeError> {
        let mut shards = Vec::with_capacity(self.inner.shards.len());
        for shard in &self.inner.shards {
            let (reply, receiver) = flume::bounded(1);
            shard.send(ShardRequest::Status { reply })?;
            shards.push(receiver.recv().map_err(|_| NodeError::Stopped)?);
        }
        Ok(NodeStatus {
            node_id: self.inner.node_id,
            shards,
        })
    }

    /// The same as [`status`](Self::status), but fails once `timeout` passes without
    /// every shard answering, for health checks that must not hang on a stuck shard.
    ///
    /// # Errors
    /// [`SnapshotError::TimedOut`] naming the first shard that did not answer in time, and
    /// [`SnapshotError::Stopped`].
    pub fn status_within(&self, timeout: Duration) -> Result<NodeStatus, SnapshotError> {
        let shards = self.ask_every_shard(timeout, |reply| ShardRequest::Status { reply })?;
        Ok(NodeStatus {
            node_id: self.inner.node_id,
            shards,
        })
    }

    /// Status and counters of every shard for metrics, within `timeout`. The latency of
    /// each stage of the writes this node completed as a leader is in
    /// [`NodeMetrics::write_stages`].
    ///
    /// # Errors
    /// As for [`status_within`](Self::status_within).
    pub fn metrics(&self, timeout: Duration) -> Result<NodeMetrics, SnapshotError> {
        let shards = self.ask_every_shard(timeout, |reply| ShardRequest::Metrics { reply })?;
        Ok(NodeMetrics {
            node_id: self.inner.node_id,
            shards,
        })
    }

    /// Sends one request to every shard, then collects the answers in shard order, all
    /// before one deadline.
    fn ask_every_shard<T>(
        &self,
        timeout: Duration,
        request: impl Fn(flume::Sender<T>) -> ShardRequest<S>,
    ) -> Result<Vec<T>, SnapshotError> {
        let deadline = Instant::now() + timeout;
        let timed_out = |shard: usize| SnapshotError::TimedOut {
            shard: shard as u32,
            timeout_ms: timeout.as_millis() as u64,
        };
        let mut receivers = Vec::with_capacity(self.inner.shards.len());
        for (shard, link) in self.inner.shards.iter().enumerate() {
            let (reply, receiver) = flume::bounded(1);
            link.requests
                .send_deadline(request(reply), deadline)
                .map_err(|error| match error {
                    flume::SendTimeoutError::Timeout(_) => timed_out(shard),
                    flume::SendTimeoutError::Disconnected(_) => SnapshotError::Stopped,
                })?;
            link.drain_if_stopped();
            receivers.push(receiver);
        }
        let mut answers = Vec::with_capacity(receivers.len());
        for (shard, receiver) in receivers.into_iter().enumerate() {
            let answer = receiver
                .recv_deadline(deadline)
                .map_err(|error| match error {
                    flume::RecvTimeoutError::Timeout => timed_out(shard),
                    flume::RecvTimeoutError::Disconnected => SnapshotError::Stopped,
                })?;
            answers.push(answer);
        }
        Ok(answers)
    }

    /// Returns the leader of `group` as this node last learned it.
    pub fn leader(&self, group: GroupId) -> Result<Option<NodeId>, NodeError> {
        Ok(self.status()?.group(group).and_then(|status| status.leader))
    }

    /// Returns the counts of snapshots this node's shards began and ended taking, updated
    /// as they happen, for telling apart what runs while a snapshot is being taken.
    pub fn snapshot_activity(&self) -> Arc<SnapshotActivity> {
        Arc::clone(&self.inner.snapshot_activity)
    }

    /// Time after which a request fails with [`NodeError::Timeout`].
    pub fn request_timeout_ms(&self) -> u64 {
        self.inner.request_timeout_ms
    }

    /// The groups `scope` names, each with whether a node that does not lead it answers
    /// `NotLeader` at once.
    fn scope_groups(&self, scope: MembershipScope) -> Result<Vec<(GroupId, bool)>, NodeError> {
        match scope {
            MembershipScope::Group(group) => {
                self.shard_for(group)?;
                Ok(vec![(group, false)])
            }
            MembershipScope::Led => Ok((0..self.inner.groups)
                .map(|group| (GroupId(group), true))
                .collect()),
            MembershipScope::All => Ok((0..self.inner.groups)
                .map(|group| (GroupId(group), false))
                .collect()),
        }
    }

    fn change_request(
        group: GroupId,
        change: &MemberChange,
        only_if_leader: bool,
    ) -> (
        ShardRequest<S>,
        flume::Receiver<Result<LogIndex, NodeError>>,
    ) {
        let (reply, receiver) = flume::bounded(1);
        let request = ShardRequest::ChangeMembership {
            group,
            change: change.clone(),
            only_if_leader,
            reply,
        };
        (request, receiver)
    }

    /// Keeps the results a scope asks for: with [`MembershipScope::Led`], the groups this
    /// node does not lead are left out.
    fn scope_results(
        scope: MembershipScope,
        results: Vec<GroupChangeResult>,
    ) -> Vec<GroupChangeResult> {
        if scope != MembershipScope::Led {
            return results;
        }
        results
            .into_iter()
            .filter(|result| !matches!(result.result, Err(NodeError::NotLeader { .. })))
            .collect()
    }

    /// Applies `change` to the membership of the groups `scope` names and waits until
    /// each group's change entry commits or fails. The groups change concurrently, one
    /// change at a time each. A leader that has not yet committed an entry of its term is
    /// retried within the request timeout.
    ///
    /// # Errors
    /// [`NodeError::UnknownGroup`] and [`NodeError::Stopped`] for the whole call; each
    /// group's own result holds [`NodeError::NotLeader`] with the leader,
    /// [`NodeError::ChangePending`], [`NodeError::LeaderNotReady`],
    /// [`NodeError::LeaderTransferring`] (removing the leader: retry at the target),
    /// [`NodeError::TransferInProgress`], [`NodeError::InvalidChange`],
    /// [`NodeError::ProposalDropped`] and [`NodeError::Timeout`].
    pub fn change_membership(
        &self,
        scope: MembershipScope,
        change: &MemberChange,
    ) -> Result<Vec<GroupChangeResult>, NodeError> {
        let mut waiting = Vec::new();
        for (group, only_if_leader) in self.scope_groups(scope)? {
            let (request, receiver) = Self::change_request(group, change, only_if_leader);
            self.shard_for(group)?.send(request)?;
            waiting.push((group, receiver));
        }
        let results = waiting
            .into_iter()
            .map(|(group, receiver)| GroupChangeResult {
                group,
                result: receiver.recv().unwrap_or(Err(NodeError::Stopped)),
            })
            .collect();
        Ok(Self::scope_results(scope, results))
    }

    /// The async form of [`change_membership`](Self::change_membership).
    pub async fn change_membership_async(
        &self,
        scope: MembershipScope,
        change: &MemberChange,
    ) -> Result<Vec<GroupChangeResult>, NodeError> {
        let mut waiting = Vec::new();
        for (group, only_if_leader) in self.scope_groups(scope)? {
            let (request, receiver) = Self::change_request(group, change, only_if_leader);
            self.shard_for(group)?.send_async(request).await?;
            waiting.push((group, receiver));
        }
        let mut results = Vec::with_capacity(waiting.len());
        for (group, receiver) in waiting {
            results.push(GroupChangeResult {
                group,
                result: receiver
                    .recv_async()
                    .await
                    .unwrap_or(Err(NodeError::Stopped)),
            });
        }
        Ok(Self::scope_results(scope, results))
    }

    /// The membership of `group` as this node sees it: voters, learners and who leads.
    /// On the leader, each member's match index and lag are filled in.
    ///
    /// # Errors
    /// [`NodeError::UnknownGroup`] and [`NodeError::Stopped`].
    pub fn membership(&self, group: GroupId) -> Result<GroupMembership, NodeError> {
        let (reply, receiver) = flume::bounded(1);
        self.shard_for(group)?
            .send(ShardRequest::Membership { group, reply })?;
        receiver.recv().map_err(|_| NodeError::Stopped)?
    }

    /// The async form of [`membership`](Self::membership).
    pub async fn membership_async(&self, group: GroupId) -> Result<GroupMembership, NodeError> {
        let (reply, receiver) = flume::bounded(1);
        self.shard_for(group)?
            .send_async(ShardRequest::Membership { group, reply })
            .await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| NodeError::Stopped)?
    }

    /// Hands leadership of `group` to the voter `target` and waits until it leads.
    ///
    /// # Errors
    /// [`NodeError::NotLeader`] with the leader, [`NodeError::InvalidTransfer`] when
    /// `target` is not a voter or already leads, [`NodeError::TransferAbandoned`] when the
    /// target did not take over in an election timeout, [`NodeError::Timeout`] and
    /// [`NodeError::Stopped`].
    pub fn transfer_leadership(&self, group: GroupId, target: NodeId) -> Result<(), NodeError> {
        let (reply, receiver) = flume::bounded(1);
        self.shard_for(group)?
            .send(ShardRequest::TransferLeadership {
                group,
                target,
                reply,
            })?;
        receiver.recv().map_err(|_| NodeError::Stopped)?
    }

    /// The async form of [`transfer_leadership`](Self::transfer_leadership).
    pub async fn transfer_leadership_async(
        &self,
        group: GroupId,
        target: NodeId,
    ) -> Result<(), NodeError> {
        let (reply, receiver) = flume::bounded(1);
        self.shard_for(group)?
            .send_async(ShardRequest::TransferLeadership {
                group,
                target,
                reply,
            })
            .await?;
        receiver
            .recv_async()
            .await
            .map_err(|_| NodeError::Stopped)?
    }

    /// The addresses of every member this node knows of: the configured ones and those
    /// that membership changes added.
    pub fn member_addresses(&self) -> BTreeMap<NodeId, MemberAddresses> {
        self.inner.addresses.all()
    }

    /// Records the client and HTTP addresses of a configured member, which the node's
    /// config does not hold; the server calls it with its own member list.
    pub fn learn_service_addresses(
        &self,
        node: NodeId,
        client: Option<SocketAddr>,
        http: Option<SocketAddr>,
    ) {
        self.inner
            .addresses
            .learn_service_addresses(node, client, http);
    }
}

/// A running node. Dropping it without [`shutdown`](Node::shutdown) stops its shards
/// the same way, but without reporting errors.
pub struct Node<S: StateMachine> {
    handle: NodeHandle<S>,
    /// The executor of each shard that has run (see [`start_shard_executor`]).
    executors: Vec<glommio::ExecutorJoinHandle<()>>,
    /// Nudges shard executors that stopped ticking; stopped after the executors joined.
    _watchdog: Watchdog,
}

impl<S: StateMachine> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("handle", &self.handle)
            .finish()
    }
}

/// Returns the number of shards to run when the config sets none: one per CPU this
/// process may use.
pub fn default_shard_count() -> usize {
    core_affinity::get_core_ids().map_or(1, |cores| cores.len().max(1))
}

impl<S> Node<S>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    /// Starts a node: opens each shard's log, restores its groups, binds its peer
    /// addresses and connects to the other members. `new_state_machine` creates the empty
    /// state machine of a group on the shard that hosts it; the log is then replayed into it.
    /// A snapshot received from a leader is restored into a new state machine from
    /// `new_state_machine`, which then replaces the group's.
    ///
    /// # Errors
    /// An invalid config, an unreadable or invalid member address file, and any shard's
    /// failure to start (its log, its listen address).
    pub fn start<F>(config: NodeConfig, new_state_machine: F) -> Result<Node<S>, NodeError>
    where
        F: Fn(GroupId) -> S + Send + Sync + 'static,
    {
        let shard_count = config.shards.unwrap_or_else(default_shard_count);
        config.validate(shard_count)?;
        tracing::info!(
            node = config.node_id, cluster = config.cluster_id, shards = shard_count,
            groups = config.groups, storage = ?config.log.storage, "starting node"
        );
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let factory: Arc<dyn Fn(GroupId) -> S + Send + Sync> = Arc::new(new_state_machine);
        let config = Arc::new(config);
        let addresses = match config.log.storage {
            crate::log::StorageKind::Disk => {
                AddressBook::on_disk(&config.members, &config.log.data_dir)?
            }
            // A memory node keeps nothing across restarts, its address book included.
            crate::log::StorageKind::Memory => AddressBook::from_config(&config.members),
        };
        let addresses = Arc::new(addresses);
        let snapshot_activity = Arc::new(SnapshotActivity::default());
        let (ready_sender, ready_receiver) = flume::unbounded();
        let mut senders = Vec::with_capacity(shard_count);
        let mut executors = Vec::with_capacity(shard_count);
        let pulses: Vec<Arc<ShardPulse>> = (0..shard_count).map(|_| Arc::default()).collect();
        // Started before the shards, whose logs open while it watches.
        let watchdog = Watchdog::start(pulses.clone()).map_err(|error| NodeError::Startup {
            shard: 0,
            detail: format!("starting the shard watchdog thread failed: {error}"),
        })?;
        for (shard, pulse) in pulses.iter().enumerate() {
            let (sender, receiver) = flume::bounded(config.request_queue_max);
            let stopped = Arc::new(AtomicBool::new(false));
            senders.push(ShardLink {
                requests: sender,
                leftovers: receiver.clone(),
                stopped: Arc::clone(&stopped),
            });
            let placement = match cores.get(shard) {
                Some(core) if config.pin_shards => Placement::Fixed(core.id),
                _ => Placement::Unbound,
            };
            let params = ShardParams {
                shard: shard as u32,
                shard_count: shard_count as u32,
                config: Arc::clone(&config),
                new_state_machine: Arc::clone(&factory),
                requests: receiver,
                stopped,
                ready: ready_sender.clone(),
                addresses: Arc::clone(&addresses),
                snapshot_activity: Arc::clone(&snapshot_activity),
                pulse: Arc::clone(pulse),
            };
            let name = format!("shard-{}-{shard}", config.node_id);
            match start_shard_executor(&name, placement, params) {
                Ok(started) => executors.extend(started),
                Err(error) => {
                    // The shards started so far would otherwise run on, holding their
                    // logs and ports, with no node left to stop them.
                    for link in &senders {
                        let _ = link.send(ShardRequest::Stop { crash: true });
                    }
                    for executor in executors {
                        let _ = executor.join();
                    }
                    return Err(error);
                }
            }
        }
        drop(ready_sender);

        let handle = NodeHandle {
            inner: Arc::new(HandleInner {
                node_id: NodeId(config.node_id),
                groups: config.groups,
                shards: senders,
                request_timeout_ms: config.request_timeout_ms,
                addresses,
                snapshot_activity,
            }),
        };
        let node = Node {
            handle,
            executors,
            _watchdog: watchdog,
        };
        for _ in 0..shard_count {
            let started = ready_receiver.recv().unwrap_or(Err(NodeError::Stopped));
            if let Err(error) = started {
                node.stop(true);
                return Err(error);
            }
        }
        Ok(node)
    }

    pub fn handle(&self) -> NodeHandle<S> {
        self.handle.clone()
    }

    /// Stops every shard cleanly: pending writes are made durable and the logs closed.
    ///
    /// # Errors
    /// A shard whose executor thread panicked.
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        self.stop_and_join(false)
    }

    /// Stops every shard at once, as a killed process would: whatever is not durable yet
    /// is lost. For failure tests.
    pub fn kill(mut self) {
        let _ = self.stop_and_join(true);
    }

    fn stop(&self, crash: bool) {
        for shard in &self.handle.inner.shards {
            let _ = shard.send(ShardRequest::Stop { crash });
        }
    }

    fn stop_and_join(&mut self, crash: bool) -> Result<(), NodeError> {
        self.stop(crash);
        let mut result = Ok(());
        for (shard, executor) in self.executors.drain(..).enumerate() {
            if let Err(error) = executor.join() {
                result = Err(NodeError::Startup {
                    shard: shard as u32,
                    detail: format!("the shard's executor failed: {error}"),
                });
            }
        }
        result
    }
}

impl<S: StateMachine> Drop for Node<S> {
    fn drop(&mut self) {
        for shard in &self.handle.inner.shards {
            let _ = shard.send(ShardRequest::Stop { crash: false });
        }
        for executor in self.executors.drain(..) {
            let _ = executor.join();
        }
    }
}
