//! A shard: one glommio executor that owns a set of Raft groups, their state machines, one
//! write-ahead log and the connections to the same shard of every other node.
//!
//! Nothing a shard touches on its hot path is shared with another shard. Its tasks (the
//! request bridge from application threads, the ticker, the connection readers, the
//! durability watcher) push events into one [`EventQueue`]; the loop drains the queue,
//! feeds every event to the cores, then collects the ready work of all groups at once:
//!
//! 1. messages that may leave at once go to the transport, which sends everything queued
//!    for one peer in one write;
//! 2. entries and hard states of all groups go to the log as one [`WriteBatch`], so that
//!    the leader's own write proceeds while followers receive and write the same entries;
//! 3. committed entries are applied and their proposers answered, and reads whose index is
//!    applied are served;
//! 4. when the log reports a batch durable, each group learns it through `on_persisted`, and
//!    only then do the messages held for that batch (votes, append responses) leave.
//!
//! After the ready work, groups that applied enough since their last snapshot start one in
//! the background; `snapshots.rs` describes taking, sending, installing and restoring
//! snapshots.
//!
//! A shard stops on a storage error: a failed fdatasync is never retried.
//!
//! The loop also times the stages of each write it completes as a leader (see
//! [`WriteStageLatencies`]). It reads the clock per turn, per submission, per durability
//! report and per `Ready` with committed entries, never per write. The points are kept in the
//! pending proposals and, per index range, in each group's `WriteMarks` (`write_marks.rs`).

mod catch_up;
mod disk_health;
mod membership;
pub(crate) mod queue;
mod replica;
mod snapshots;
mod tuning;
mod write_marks;

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardraft_raft::{Config, Membership, MembershipChange, NodeId, RaftNode, ReadyNumber, Role};
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::log::{
    BatchNumber, GroupId, Log, LogIdentity, LogStore, StorageError, StorageKind, WriteBatch,
};
use crate::membership::AddressBook;
use crate::metrics::{
    GroupMetrics, LatencyHistogram, ProposalCounts, ShardMetrics, StageHistogram,
    WriteStageLatencies,
};
use crate::node::{GroupStatus, NodeError, ReadMode, ShardRequest, ShardStatus};
use crate::signal::Signal;
use crate::snapshot::{SnapshotActivity, SnapshotStore};
use crate::state_machine::StateMachine;
use crate::transport::wire::GroupMessage;
use crate::transport::{Transport, TransportEvent, TransportSettings};
use queue::EventQueue;
use replica::{ProposalStart, Replica};
use snapshots::{ShardSnapshots, SnapshotEvent};
use write_marks::Submission;

/// Events queued for the shard's loop.
pub(crate) enum ShardEvent<S: StateMachine> {
    Request(ShardRequest<S>),
    Transport(TransportEvent),
    Tick,
    /// The log's durability report, and when it reached the shard.
    Durable {
        result: Result<BatchNumber, StorageError>,
        reported_at: Instant,
    },
    /// Ready work remained after a pass; collect it in the next turn.
    Continue,
    /// A background snapshot task finished.
    Snapshot(SnapshotEvent),
    /// The linger of the held-back proposals is over.
    LingerEnded,
}

impl<S: StateMachine> From<TransportEvent> for ShardEvent<S> {
    fn from(event: TransportEvent) -> Self {
        ShardEvent::Transport(event)
    }
}

/// Everything a shard's thread needs to start.
pub(crate) struct ShardParams<S: StateMachine> {
    pub shard: u32,
    pub shard_count: u32,
    pub config: Arc<NodeConfig>,
    pub new_state_machine: Arc<dyn Fn(GroupId) -> S + Send + Sync>,
    pub requests: flume::Receiver<ShardRequest<S>>,
    /// Set as the shard stops; the node's handles check it after sending a request.
    pub stopped: Arc<std::sync::atomic::AtomicBool>,
    pub ready: flume::Sender<Result<(), NodeError>>,
    /// The node's book of member addresses, shared by its shards.
    pub addresses: Arc<AddressBook>,
    /// Counts of snapshots begun and ended, shared by the node's shards.
    pub snapshot_activity: Arc<SnapshotActivity>,
    /// The executor's guard ticks, which the node's watchdog follows.
    pub pulse: Arc<crate::wake_guard::ShardPulse>,
}

/// Capacity of the loop's event queue; producers wait while it is full.
const EVENT_QUEUE_CAPACITY: usize = 4096;

/// Ready passes per group and turn before the loop yields to queued events.
const READY_PASSES_MAX: usize = 4;

/// Ticks between scans for requests past their deadline.
const EXPIRY_SCAN_INTERVAL_TICKS: u64 = 10;

/// Ticks between checks of how many segments the disk log has (see
/// `snapshot.log_segments_max`). A segment takes seconds to fill at high write rates, and
/// a check costs a pass over the groups in the oldest segment.
const SEGMENT_CHECK_INTERVAL_TICKS: u64 = 50;

/// Runs one shard until it is stopped. This is the body of the shard's executor thread.
pub(crate) async fn run<S>(params: ShardParams<S>)
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    let span = tracing::info_span!("shard", node = params.config.node_id, shard = params.shard);
    // The guard's timer is armed in the first poll, before the log opens and before the
    // shard's ticker exists.
    let pulse = Arc::clone(&params.pulse);
    crate::wake_guard::guarded(
        async move {
            let ready = params.ready.clone();
            let _stop_mark = StopMark {
                stopped: Arc::clone(&params.stopped),
                requests: params.requests.clone(),
            };
            match Shard::start(params).await {
                Ok(shard) => {
                    let _ = ready.send(Ok(()));
                    shard.run().await;
                }
                Err(error) => {
                    tracing::error!(%error, "shard failed to start");
                    let _ = ready.send(Err(error));
                }
            }
        }
        .instrument(span),
        pulse,
    )
    .await
}

/// A guard that marks the shard stopped and drops the requests left in its channel. It is
/// dropped at the end of `run` when the shard stopped or failed to start, and while a
/// panic unwinds the executor thread.
///
/// Each dropped request fails its caller with `Stopped`. A handle that sends after the
/// mark is set drains the channel itself (`ShardLink::send`), so no request waits forever.
struct StopMark<S: StateMachine> {
    stopped: Arc<std::sync::atomic::AtomicBool>,
    requests: flume::Receiver<ShardRequest<S>>,
}

impl<S: StateMachine> Drop for StopMark<S> {
    fn drop(&mut self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        while let Ok(request) = self.requests.try_recv() {
            drop(request);
        }
    }
}

/// Writes of one submitted batch: which groups' ready batches it completes, and the
/// messages to send once it is durable.
struct PendingPersist {
    batch: BatchNumber,
    readies: Vec<(GroupId, ReadyNumber)>,
    messages: Vec<GroupMessage>,
}

struct Shard<S: StateMachine> {
    shard: u32,
    config: Arc<NodeConfig>,
    replicas: BTreeMap<GroupId, Replica<S>>,
    log: Log,
    transport: Transport<ShardEvent<S>>,
    events: EventQueue<ShardEvent<S>>,
    persisting: VecDeque<PendingPersist>,
    durable_reported: BatchNumber,
    durable_watch_active: Rc<Cell<bool>>,
    /// Whether the request bridge may hand proposals to the loop; closed while the log or a
    /// peer queue is full, so that proposers wait.
    accepting_proposals: Rc<Cell<bool>>,
    accepting_changed: Rc<Signal>,
    tick: u64,
    /// Time the loop spent handling events and ready work since the shard started.
    busy_time: Duration,
    /// Start of the current turn, the time proposals handled in it count as taken.
    turn_started_at: Instant,
    /// Groups that started a write mark in the current turn and wait for its submission.
    marked_groups: Vec<GroupId>,
    /// Stages of the writes this shard completed as a leader.
    write_stages: WriteStageLatencies,
    /// Membership changes and leadership transfers waiting for their outcome.
    membership_waits: membership::MembershipWaits,
    addresses: Arc<AddressBook>,
    /// The latency histograms at the start of the current disk comparison window.
    disk_health: disk_health::DiskHealth,
    /// Snapshots being taken, sent and installed; see `snapshots.rs`.
    snapshots: ShardSnapshots,
    /// Groups whose replica catches up; see [`catch_up`].
    catch_up_marks: catch_up::CatchUpMarks,
    /// The adaptive tuner, when `tuning.enabled` is set.
    tuning: Option<tuning::ShardTuning>,
    /// Proposals held back while the proposal linger runs.
    lingering: tuning::Lingering<LingeringProposal<S>>,
    /// The linger of new proposals: the tuner's when it runs, else the configured one.
    linger: Duration,
    /// The task that hands requests from the node's handles to the loop.
    request_bridge: Option<glommio::Task<()>>,
    /// This shard's guard ticks, which the node's watchdog reads, and the stalls it found.
    pulse: Arc<crate::wake_guard::ShardPulse>,
}

/// A proposal held back by the linger, with what proposing it needs.
struct LingeringProposal<S: StateMachine> {
    group: GroupId,
    command: bytes::Bytes,
    reply: crate::node::ProposalReply<S>,
    deadline: u64,
    start: ProposalStart,
}

/// The outcome of one turn of the loop.
enum Flow {
    Continue,
    Stop { crash: bool },
    Fail(NodeError),
}

impl<S> Shard<S>
where
    S: StateMachine + 'static,
    S::Output: Send + 'static,
{
    async fn start(params: ShardParams<S>) -> Result<Shard<S>, NodeError> {
        let config = Arc::clone(&params.config);
        let identity = LogIdentity {
            cluster_id: config.cluster_id,
            node_id: config.node_id,
            shard: params.shard,
        };
        let log = Log::open(&config.log, identity).await?;
        let store = match config.log.storage {
            StorageKind::Disk => SnapshotStore::on_disk(&config.log.data_dir),
            StorageKind::Memory => Ok(SnapshotStore::in_memory()),
        };
        let store = Rc::new(store.map_err(|error| NodeError::Startup {
            shard: params.shard,
            detail: error.to_string(),
        })?);
        let catch_up_marks = match config.log.storage {
            StorageKind::Disk => catch_up::CatchUpMarks::on_disk(&config.log.data_dir),
            StorageKind::Memory => Ok(catch_up::CatchUpMarks::in_memory()),
        }
        .map_err(|error| NodeError::Startup {
            shard: params.shard,
            detail: format!(
                "creating the catching-up marks in {} failed: {error}; check that the data \
                 directory is writable",
                config.log.data_dir.display()
            ),
        })?;
        let replicas = restore_groups(&params, &log, &store, &catch_up_marks).await?;
        let events = EventQueue::new(EVENT_QUEUE_CAPACITY);
        let transport = start_transport(&params, events.clone(), Rc::clone(&store))?;
        let mut shard = Shard {
            shard: params.shard,
            config,
            replicas,
            log,
            transport,
            events,
            persisting: VecDeque::new(),
            durable_reported: BatchNumber(0),
            durable_watch_active: Rc::new(Cell::new(false)),
            accepting_proposals: Rc::new(Cell::new(true)),
            accepting_changed: Rc::new(Signal::default()),
            tick: 0,
            busy_time: Duration::ZERO,
            turn_started_at: Instant::now(),
            marked_groups: Vec::new(),
            write_stages: WriteStageLatencies::default(),
            snapshots: ShardSnapshots::new(store, Arc::clone(&params.snapshot_activity)),
            catch_up_marks,
            tuning: tuning::ShardTuning::new(&params.config, Instant::now()),
            lingering: tuning::Lingering::default(),
            linger: Duration::from_micros(params.config.proposal_linger_us),
            request_bridge: None,
            membership_waits: membership::MembershipWaits::default(),
            addresses: Arc::clone(&params.addresses),
            disk_health: disk_health::DiskHealth::default(),
            pulse: Arc::clone(&params.pulse),
        };
        shard.connect_logged_members();
        shard.request_bridge = Some(shard.spawn_request_bridge(params.requests));
        shard.spawn_ticker();
        tracing::info!(groups = shard.replicas.len(), "shard started");
        Ok(shard)
    }

    fn spawn_request_bridge(
        &self,
        requests: flume::Receiver<ShardRequest<S>>,
    ) -> glommio::Task<()> {
        let events = self.events.clone();
        let accepting = Rc::clone(&self.accepting_proposals);
        let changed = Rc::clone(&self.accepting_changed);
        let bridge = async move {
            while let Some(Ok(request)) = events.or_closed(requests.recv_async()).await {
                if matches!(request, ShardRequest::Propose { .. }) {
                    let room = changed.wait_for(|| accepting.get().then_some(()));
                    if events.or_closed(room).await.is_none() {
                        return;
                    }
                }
                if !events.push(ShardEvent::Request(request)).await {
                    return;
                }
            }
        };
        glommio::spawn_local(bridge)
    }

    fn spawn_ticker(&self) {
        let events = self.events.clone();
        let interval = Duration::from_millis(self.config.tick_interval_ms);
        let ticker = async move {
            while events
                .or_closed(glommio::timer::sleep(interval))
                .await
                .is_some()
            {
                events.push_now(ShardEvent::Tick);
            }
        };
        glommio::spawn_local(ticker).detach();
    }

    async fn run(mut self) {
        let mut events = Vec::new();
        let flow = loop {
            if !self.events.drain_into(&mut events).await {
                break Flow::Stop { crash: false };
            }
            let turn_started = Instant::now();
            self.turn_started_at = turn_started;
            let mut flow = Flow::Continue;
            let handled = events.len();
            for event in events.drain(..) {
                flow = self.handle(event);
                if !matches!(flow, Flow::Continue) {
                    break;
                }
            }
            if matches!(flow, Flow::Continue)
                && let Err(error) = self.process_ready()
            {
                flow = Flow::Fail(error);
            }
            let busy = turn_started.elapsed();
            self.busy_time += busy;
            if let Some(tuning) = &mut self.tuning {
                tuning.record_turn(busy, handled);
            }
            if !matches!(flow, Flow::Continue) {
                break flow;
            }
        };
        self.stop(flow).await;
    }

    fn handle(&mut self, event: ShardEvent<S>) -> Flow {
        match event {
            ShardEvent::Tick => self.on_tick(),
            ShardEvent::Continue => {}
            ShardEvent::Transport(TransportEvent::Received { from, messages }) => {
                if let Some(tuning) = &mut self.tuning {
                    tuning.record_received(from, &messages, self.turn_started_at);
                }
                for GroupMessage { group, message } in messages {
                    let Some(replica) = self.replicas.get_mut(&group) else {
                        continue;
                    };
                    let _entered = replica.span.enter();
                    if let Err(rejection) = replica.core.step(message) {
                        tracing::debug!(?rejection, "message rejected by the core");
                    }
                }
            }
            ShardEvent::Transport(TransportEvent::SnapshotReceived(received)) => {
                self.on_snapshot_received(received);
            }
            ShardEvent::Transport(TransportEvent::SnapshotSent {
                group,
                peer,
                outcome,
            }) => self.on_snapshot_sent(group, peer, outcome),
            ShardEvent::Snapshot(event) => self.on_snapshot_event(event),
            ShardEvent::LingerEnded => {
                self.lingering.timer_armed = false;
                self.release_lingering();
            }
            ShardEvent::Transport(TransportEvent::PeerDown { peer }) => {
                if self.config.raft.campaign_when_leader_down {
                    for replica in self.replicas.values_mut() {
                        let _entered = replica.span.enter();
                        replica.core.report_leader_down(peer);
                    }
                }
            }
            ShardEvent::Transport(TransportEvent::PeerUnreachable { peer }) => {
                for replica in self.replicas.values_mut() {
                    let _entered = replica.span.enter();
                    replica.core.report_unreachable(peer);
                }
            }
            ShardEvent::Durable {
                result: Ok(durable),
                reported_at,
            } => self.on_durable(durable, reported_at),
            ShardEvent::Durable {
                result: Err(error), ..
            } => return Flow::Fail(error.into()),
            ShardEvent::Request(request) => return self.on_request(request),
        }
        Flow::Continue
    }

    fn on_tick(&mut self) {
        self.tick += 1;
        // A tick handled later than one interval after the last one marks a stall of the
        // loop: the thread was descheduled, the machine paused, or a turn ran long. A
        // leader sends no heartbeat meanwhile, so the tuner keeps the election timeout
        // above such stalls. The ticker sleeps a whole interval after each tick, so even
        // an idle loop measures a little lateness: its own wake-up.
        if let Some(tuning) = &mut self.tuning {
            tuning.record_tick(self.turn_started_at);
        }
        for replica in self.replicas.values_mut() {
            let _entered = replica.span.enter();
            if let Some(tuning) = &self.tuning
                && let Some(leader) = replica.core.leader()
                && let Some(ticks) = tuning.suspicion_ticks(leader)
            {
                replica.core.shorten_election_timeout(ticks);
            }
            replica.core.tick();
        }
        self.retry_membership_changes();
        self.check_disk_health();
        self.run_tuner();
        if self.tick.is_multiple_of(SEGMENT_CHECK_INTERVAL_TICKS) {
            self.release_oldest_segment();
        }
        if self.tick.is_multiple_of(EXPIRY_SCAN_INTERVAL_TICKS) {
            let timeout_ms = self.config.request_timeout_ms;
            for replica in self.replicas.values_mut() {
                if replica.has_waiting_requests() {
                    replica.expire(self.tick, timeout_ms);
                }
            }
        }
    }

    fn propose(&mut self, proposal: LingeringProposal<S>) {
        let LingeringProposal {
            group,
            command,
            reply,
            deadline,
            start,
        } = proposal;
        match self.replicas.get_mut(&group) {
            Some(replica) => {
                let span = replica.span.clone();
                let _entered = span.enter();
                replica.propose(command, reply, deadline, start);
            }
            None => {
                let groups = self.config.groups;
                let _ = reply.send(Err(NodeError::UnknownGroup { group, groups }));
            }
        }
    }

    /// Holds `proposal` back until the linger ends or a full batch is waiting.
    fn hold_back(&mut self, proposal: LingeringProposal<S>) {
        self.lingering.proposals.push(proposal);
        let batch_max = self
            .tuning
            .as_ref()
            .map_or(self.config.raft.max_entries_per_message, |tuning| {
                tuning.linger_batch_max()
            });
        if self.lingering.proposals.len() >= batch_max.max(1) {
            self.release_lingering();
            return;
        }
        if self.lingering.timer_armed {
            return;
        }
        self.lingering.timer_armed = true;
        let events = self.events.clone();
        let linger = self.linger;
        let timer = async move {
            if events
                .or_closed(glommio::timer::sleep(linger))
                .await
                .is_some()
            {
                events.push_now(ShardEvent::LingerEnded);
            }
        };
        glommio::spawn_local(timer).detach();
    }

    /// Hands every held-back proposal to its group's core.
    fn release_lingering(&mut self) {
        for proposal in std::mem::take(&mut self.lingering.proposals) {
            self.propose(proposal);
        }
    }

    /// Ends the tuning interval when it is due and applies the tuner's decision.
    fn run_tuner(&mut self) {
        let now = Instant::now();
        if !self
            .tuning
            .as_ref()
            .is_some_and(|tuning| tuning.interval_due(now))
        {
            return;
        }
        let log_stats = match &self.log {
            Log::Disk(log) => Some(log.stats()),
            Log::Memory(_) => None,
        };
        let peers = self.transport.peer_stats();
        let reads = self.read_latency();
        let Some(tuning) = self.tuning.as_mut() else {
            return;
        };
        let decision = tuning.finish_interval(
            now,
            log_stats.as_ref(),
            &peers,
            self.write_stages.total(),
            &reads,
        );
        self.propose_group_timing();
        let Some(batching) = decision.batching else {
            return;
        };
        let Some(tuning) = self.tuning.as_ref() else {
            return;
        };
        let limits = tuning.limits(&batching);
        self.linger = Duration::from_micros(batching.linger_micros);
        for replica in self.replicas.values_mut() {
            if let Err(error) = replica.core.set_replication_limits(limits) {
                // The tuner's bounds start at 1, so the core accepts every decision.
                tracing::error!(%error, "the core rejected the tuner's replication limits");
            }
        }
        if self.linger.is_zero() {
            self.release_lingering();
        }
    }

    /// Proposes the tuner's group timing in every group this shard leads that runs with
    /// another timing. A leader refuses while a change is uncommitted or before it committed
    /// an entry of its own term; the next interval tries again.
    fn propose_group_timing(&mut self) {
        let Some(timing) = self
            .tuning
            .as_ref()
            .and_then(tuning::ShardTuning::group_timing)
        else {
            return;
        };
        let mut proposed = 0;
        for replica in self.replicas.values_mut() {
            if replica.core.role() != Role::Leader || replica.core.timing() == timing {
                continue;
            }
            let _entered = replica.span.enter();
            let change = MembershipChange::SetTiming { timing };
            match replica
                .core
                .propose_membership_change(change, bytes::Bytes::new())
            {
                Ok(proposal) => {
                    tracing::info!(index = proposal.index.0, %timing, "proposed the tuner's group timing");
                    proposed += 1;
                }
                Err(error) => {
                    tracing::debug!(%error, %timing, "the tuner's group timing waits");
                }
            }
        }
        if proposed > 0 {
            if let Some(tuning) = self.tuning.as_mut() {
                tuning.count_timing_proposals(proposed);
            }
            self.events.push_now(ShardEvent::Continue);
        }
    }

    fn deadline_tick(&self) -> u64 {
        let ticks = self.config.request_timeout_ms / self.config.tick_interval_ms.max(1);
        self.tick + ticks.max(1)
    }

    fn on_request(&mut self, request: ShardRequest<S>) -> Flow {
        let deadline = self.deadline_tick();
        match request {
            ShardRequest::Propose {
                group,
                command,
                reply,
                sent_at,
            } => {
                if let Some(tuning) = &mut self.tuning {
                    tuning.record_arrival(self.turn_started_at);
                }
                let proposal = LingeringProposal {
                    group,
                    command,
                    reply,
                    deadline,
                    start: ProposalStart {
                        sent_at,
                        taken_at: self.turn_started_at,
                    },
                };
                // Only a leader batches; a follower answers `NotLeader` at once.
                let leads = self
                    .replicas
                    .get(&group)
                    .is_some_and(|replica| replica.core.role() == Role::Leader);
                if self.linger.is_zero() || !leads {
                    self.propose(proposal);
                } else {
                    self.hold_back(proposal);
                }
            }
            ShardRequest::Read { group, mode, read } => match self.replicas.get_mut(&group) {
                Some(replica) if mode == ReadMode::Stale => read(Ok(&replica.state_machine)),
                Some(replica) => {
                    if let Some(tuning) = &mut self.tuning
                        && replica.core.role() == Role::Leader
                    {
                        tuning.record_read();
                    }
                    let span = replica.span.clone();
                    let _entered = span.enter();
                    replica.read_linearizable(read, deadline, self.turn_started_at);
                }
                None => {
                    let groups = self.config.groups;
                    read(Err(NodeError::UnknownGroup { group, groups }));
                }
            },
            ShardRequest::Status { reply } => {
                let _ = reply.send(self.status());
            }
            ShardRequest::Metrics { reply } => {
                let _ = reply.send(self.metrics());
            }
            ShardRequest::ChangeMembership {
                group,
                change,
                only_if_leader,
                reply,
            } => self.on_change_membership(group, change, only_if_leader, reply),
            ShardRequest::Membership { group, reply } => {
                let _ = reply.send(self.group_membership(group));
            }
            ShardRequest::TransferLeadership {
                group,
                target,
                reply,
            } => self.on_transfer_leadership(group, target, reply),
            ShardRequest::Stop { crash } => return Flow::Stop { crash },
        }
        Flow::Continue
    }

    fn on_durable(&mut self, durable: BatchNumber, reported_at: Instant) {
        self.durable_reported = self.durable_reported.max(durable);
        while let Some(front) = self.persisting.front() {
            if front.batch > durable {
                break;
            }
            let done = self.persisting.pop_front().expect("front exists");
            for (group, number) in done.readies {
                if let Some(replica) = self.replicas.get_mut(&group) {
                    let span = replica.span.clone();
                    let _entered = span.enter();
                    replica.core.on_persisted(number);
                    replica.write_marks.note_durable(done.batch, reported_at);
                    if replica.take_catch_up_ended(number) {
                        self.catch_up_marks.clear(group);
                    }
                }
            }
            self.transport.send(done.messages);
        }
        if !self.persisting.is_empty() {
            self.watch_durability();
        }
    }

    /// Starts a task that reports the next durable batch, unless one is running.
    fn watch_durability(&self) {
        if self.durable_watch_active.replace(true) {
            return;
        }
        let log = self.log.clone();
        let after = self.durable_reported;
        let events = self.events.clone();
        let active = Rc::clone(&self.durable_watch_active);
        let watch = async move {
            let result = log.wait_durable(after).await;
            active.set(false);
            events.push_now(ShardEvent::Durable {
                result,
                reported_at: Instant::now(),
            });
        };
        glommio::spawn_local(watch).detach();
    }

    /// Collects the ready work of every group: see the module documentation.
    fn process_ready(&mut self) -> Result<(), NodeError> {
        let mut batch = WriteBatch::new();
        let mut readies = Vec::new();
        let mut held_messages = Vec::new();
        let mut messages = Vec::new();
        let mut more_work = false;
        let mut membership_changed = false;
        for (group, replica) in self.replicas.iter_mut() {
            let span = replica.span.clone();
            let _entered = span.enter();
            for _ in 0..READY_PASSES_MAX {
                let Some(mut ready) = replica.core.ready() else {
                    break;
                };
                if let Some(role_state) = ready.role_state {
                    log_role_change(*group, replica.role_state, role_state);
                    replica.set_role_state(role_state);
                }
                let mut must_persist = !ready.entries.is_empty();
                // Before the entries: they continue the log after the snapshot.
                if let Some(install) = ready.snapshot_to_install.take() {
                    snapshots::install_snapshot(
                        self.shard,
                        *group,
                        replica,
                        install,
                        &mut batch,
                        &mut self.snapshots,
                    )?;
                    must_persist = true;
                }
                snapshots::route_install_snapshots(
                    *group,
                    replica,
                    &mut ready.messages,
                    &mut self.snapshots,
                    &self.transport,
                    self.config.snapshot.log_tail_entries,
                );
                if let Some(hard_state) = ready.hard_state {
                    let submitted = replica.submitted_hard_state;
                    if hard_state.term == submitted.term && hard_state.vote == submitted.vote {
                        replica.deferred_hard_state = Some(hard_state);
                    } else {
                        batch.set_hard_state(*group, hard_state);
                        replica.submitted_hard_state = hard_state;
                        replica.deferred_hard_state = None;
                        must_persist = true;
                    }
                }
                if ready.catch_up_ended {
                    // The mark goes once this batch, with the vote that ends catching up, is
                    // durable.
                    replica.catch_up_ended_at = Some(ready.number);
                    must_persist = true;
                }
                if let (Some(first), Some(last)) = (ready.entries.first(), ready.entries.last())
                    && replica.has_pending_proposals()
                    && replica.write_marks.note_appended(first.index, last.index)
                {
                    self.marked_groups.push(*group);
                }
                // Before this turn's messages reach the transport, so that a new member's
                // link exists when the first message to it is queued.
                membership_changed |= ready.membership.is_some();
                membership_changed |= membership::learn_addresses(
                    *group,
                    &ready.entries,
                    &self.addresses,
                    membership::Learning::Append,
                );
                batch.append(*group, std::mem::take(&mut ready.entries));
                let to_group = |message| GroupMessage {
                    group: *group,
                    message,
                };
                messages.extend(ready.messages.drain(..).map(to_group));
                if must_persist || !ready.messages_after_persist.is_empty() {
                    readies.push((*group, ready.number));
                    held_messages.extend(ready.messages_after_persist.drain(..).map(to_group));
                }
                replica
                    .apply_ready(&mut ready, &mut self.write_stages)
                    .map_err(|detail| NodeError::Startup {
                        shard: self.shard,
                        detail,
                    })?;
            }
            more_work |= replica.core.has_ready();
        }
        self.snapshots.add_compactions(&mut batch);
        if membership_changed {
            self.reconcile_peers();
        }
        if let Some(tuning) = &mut self.tuning {
            tuning.record_messages(&messages);
        }
        self.transport.send(messages);
        if !batch.is_empty() {
            self.add_deferred_hard_states(&mut batch);
        }
        self.persist(batch, readies, held_messages)?;
        if more_work {
            self.events.push_now(ShardEvent::Continue);
        }
        let log_has_room = self.log.has_room();
        let congested = self.transport.is_congested();
        let accepting = log_has_room && !congested;
        if self.accepting_proposals.replace(accepting) != accepting {
            // Debug, not info: under backpressure the intake can flip on every turn.
            tracing::debug!(
                accepting,
                log_has_room,
                congested,
                "proposal intake changed"
            );
            self.accepting_changed.notify_all();
        }
        self.settle_membership_waits();
        self.start_due_snapshots();
        Ok(())
    }

    /// Adds every deferred commit-only hard state to a batch that is written anyway.
    fn add_deferred_hard_states(&mut self, batch: &mut WriteBatch) {
        for (group, replica) in self.replicas.iter_mut() {
            if let Some(hard_state) = replica.deferred_hard_state.take() {
                batch.set_hard_state(*group, hard_state);
                replica.submitted_hard_state = hard_state;
            }
        }
    }

    fn persist(
        &mut self,
        batch: WriteBatch,
        readies: Vec<(GroupId, ReadyNumber)>,
        messages: Vec<GroupMessage>,
    ) -> Result<(), NodeError> {
        if !batch.is_empty() {
            // Only a leader's turn with waiting proposals needs the submission's times.
            let started_at = (!self.marked_groups.is_empty()).then(Instant::now);
            let number = self.log.submit(batch)?;
            if let Some(started_at) = started_at {
                self.note_submitted(Submission {
                    batch: number,
                    started_at,
                    returned_at: Instant::now(),
                });
            }
            self.persisting.push_back(PendingPersist {
                batch: number,
                readies,
                messages,
            });
            self.watch_durability();
            return Ok(());
        }
        if readies.is_empty() {
            return Ok(());
        }
        // Nothing to write, but the held messages must still wait for earlier writes.
        if let Some(last) = self.persisting.back_mut() {
            last.readies.extend(readies);
            last.messages.extend(messages);
            return Ok(());
        }
        for (group, number) in readies {
            if let Some(replica) = self.replicas.get_mut(&group) {
                replica.core.on_persisted(number);
                if replica.take_catch_up_ended(number) {
                    self.catch_up_marks.clear(group);
                }
            }
        }
        self.transport.send(messages);
        self.events.push_now(ShardEvent::Continue);
        Ok(())
    }

    /// Gives the write marks started in this turn the submission that carries them.
    fn note_submitted(&mut self, submission: Submission) {
        for group in self.marked_groups.drain(..) {
            if let Some(replica) = self.replicas.get_mut(&group) {
                replica.write_marks.note_submitted(submission);
            }
        }
    }

    /// Writes the deferred commit indexes before a clean stop, so that a restarted node
    /// applies everything it had applied.
    fn write_deferred_hard_states(&mut self) {
        let mut batch = WriteBatch::new();
        self.add_deferred_hard_states(&mut batch);
        if !batch.is_empty()
            && let Err(error) = self.log.submit(batch)
        {
            tracing::error!(%error, "writing the last commit indexes failed");
        }
    }

    fn status(&self) -> ShardStatus {
        let now = Instant::now();
        let groups = self
            .replicas
            .iter()
            .map(|(group, replica)| {
                let core = &replica.core;
                let leader_suspected = match (&self.tuning, core.leader()) {
                    (Some(tuning), Some(leader)) if leader != core.id() => {
                        tuning.suspects(leader, now)
                    }
                    _ => false,
                };
                GroupStatus {
                    group: *group,
                    role: core.role(),
                    term: core.term(),
                    leader: core.leader(),
                    commit_index: core.commit_index(),
                    applied_index: replica.state_machine.applied_index(),
                    last_index: core.last_index(),
                    timing: core.timing(),
                    leader_suspected,
                }
            })
            .collect();
        let rejected_messages = self
            .replicas
            .values()
            .map(|replica| {
                let stats = replica.core.stats();
                stats.rejected_wrong_recipient
                    + stats.rejected_unknown_sender
                    + stats.rejected_stale_term
                    + stats.rejected_malformed
            })
            .sum();
        let (elections_started, elections_won) =
            self.replicas
                .values()
                .fold((0, 0), |(started, won), replica| {
                    let stats = replica.core.stats();
                    (started + stats.elections_started, won + stats.elections_won)
                });
        ShardStatus {
            shard: self.shard,
            groups,
            transport: self.transport.stats(),
            log: match &self.log {
                Log::Disk(log) => Some(log.stats()),
                Log::Memory(_) => None,
            },
            rejected_messages,
            elections_started,
            elections_won,
        }
    }

    /// Merges the read latency of every group of the shard.
    fn read_latency(&self) -> StageHistogram {
        let mut merged = StageHistogram::default();
        for replica in self.replicas.values() {
            merged.merge(&replica.read_latency);
        }
        merged
    }

    fn metrics(&self) -> ShardMetrics {
        let mut proposals = ProposalCounts::default();
        let mut commit_latency = LatencyHistogram::default();
        let read_latency = self.read_latency();
        let mut groups = Vec::with_capacity(self.replicas.len());
        for (group, replica) in &self.replicas {
            proposals.add(&replica.proposal_counts);
            commit_latency.merge(&replica.commit_latency);
            let membership = replica.core.membership();
            groups.push(GroupMetrics {
                group: *group,
                leader_changes: replica.leader_changes,
                voters: membership.voters.iter().copied().collect(),
                learners: membership.learners.iter().copied().collect(),
            });
        }
        ShardMetrics {
            status: self.status(),
            groups,
            proposals,
            commit_latency,
            read_latency,
            write_stages: self.write_stages.clone(),
            busy_time: self.busy_time,
            peers: self.transport.peer_stats(),
            snapshots: self.snapshots.stats,
            snapshot_transfers: self.transport.snapshot_stats(),
            leader_disk_transfers: self.disk_health.transfers,
            executor_stalls: self.pulse.nudges(),
            tuning: self.tuning.as_ref().map(tuning::ShardTuning::report),
        }
    }

    async fn stop(mut self, flow: Flow) {
        let error = match flow {
            Flow::Fail(error) => {
                tracing::error!(%error, "shard stopped after an error");
                error
            }
            Flow::Stop { crash } => {
                tracing::info!(crash, "shard stopping");
                if crash {
                    if let Log::Disk(log) = &self.log {
                        log.halt();
                    }
                } else {
                    self.write_deferred_hard_states();
                    if let Err(error) = self.log.close().await {
                        tracing::error!(%error, "closing the log failed");
                    }
                }
                NodeError::Stopped
            }
            Flow::Continue => NodeError::Stopped,
        };
        self.transport.close().await;
        self.events.close();
        // The bridge ends once the events are closed, dropping any request it held. What
        // is still in the request channel is dropped by `StopMark` when `run` returns.
        if let Some(bridge) = self.request_bridge.take() {
            bridge.await;
        }
        for proposal in std::mem::take(&mut self.lingering.proposals) {
            let _ = proposal.reply.send(Err(error.clone()));
        }
        for replica in self.replicas.values_mut() {
            replica.fail_all(&error);
        }
    }
}

fn log_role_change(
    group: GroupId,
    before: Option<shardraft_raft::RoleState>,
    after: shardraft_raft::RoleState,
) {
    let changed = before.is_none_or(|before| before.role != after.role);
    if changed {
        tracing::info!(
            %group, role = ?after.role, term = after.term.0,
            leader = ?after.leader.map(|leader| leader.0), "role changed"
        );
    } else {
        tracing::debug!(
            %group, term = after.term.0, leader = ?after.leader.map(|leader| leader.0),
            "term or leader changed"
        );
    }
}

/// Builds the core and state machine of every group this shard hosts from what its log
/// holds. State machines start empty and are rebuilt by applying the committed log.
async fn restore_groups<S: StateMachine>(
    params: &ShardParams<S>,
    log: &Log,
    store: &SnapshotStore,
    catch_up_marks: &catch_up::CatchUpMarks,
) -> Result<BTreeMap<GroupId, Replica<S>>, NodeError> {
    let config = &params.config;
    let own = NodeId(config.node_id);
    let voters = config.members.iter().map(|member| NodeId(member.id));
    // A joining node waits as a learner until the cluster's log adds it; the log's
    // change entries then decide its role.
    let membership = if config.join {
        Membership::with_voters_and_learners(voters.filter(|voter| *voter != own), [own])
    } else {
        Membership::with_voters(voters)
    };
    let seed_base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let mut replicas = BTreeMap::new();
    let mut repairs = WriteBatch::new();
    for group in (params.shard..config.groups).step_by(params.shard_count as usize) {
        let group = GroupId(group);
        let mut state_machine = (params.new_state_machine)(group);
        let mut restored = snapshots::restored_state(
            params.shard,
            log,
            store,
            group,
            &mut state_machine,
            &mut repairs,
        )
        .await?;
        let blank = restored.hard_state == shardraft_raft::HardState::default()
            && restored.entries.is_empty()
            && restored.snapshot.is_none();
        // Any blank group may have voted or acknowledged entries before its data was lost,
        // so the core makes it catch up before it votes for a candidate with a log. A
        // founding member's blank group has lost nothing: it gets no mark, it does not catch
        // up, and its responses do not mark it for the leader to hold back.
        let founding = config.founds_new_groups();
        let catches_up_from_blank = blank && !founding;
        if catches_up_from_blank {
            catch_up_marks
                .mark(group)
                .map_err(|error| NodeError::Startup {
                    shard: params.shard,
                    detail: format!(
                        "writing the catching-up mark of group {group} failed: {error}; check \
                         that the data directory is writable"
                    ),
                })?;
        }
        restored.catching_up = catches_up_from_blank || catch_up_marks.is_marked(group);
        restored.founding = founding;
        let mut core_config = Config::new(NodeId(config.node_id), membership.clone());
        apply_raft_settings(&mut core_config, config);
        core_config.random_seed = seed_base ^ (config.node_id << 40) ^ u64::from(group.0);
        let core = RaftNode::new(core_config, restored).map_err(|error| NodeError::Startup {
            shard: params.shard,
            detail: format!("group {group}: {error}"),
        })?;
        replicas.insert(group, Replica::new(group, core, state_machine));
    }
    snapshots::write_repairs(log, repairs).await?;
    Ok(replicas)
}

fn apply_raft_settings(core: &mut Config, config: &NodeConfig) {
    let raft = &config.raft;
    core.election_timeout_ticks_min = raft.election_timeout_ticks_min;
    core.election_timeout_ticks_max = raft.election_timeout_ticks_max;
    core.heartbeat_interval_ticks = raft.heartbeat_interval_ticks;
    core.max_entries_per_message = raft.max_entries_per_message;
    core.max_bytes_per_message = raft.max_bytes_per_message;
    core.max_inflight_messages = raft.max_inflight_messages;
    core.max_inflight_bytes = raft.max_inflight_bytes;
    core.max_uncommitted_bytes = raft.max_uncommitted_bytes;
    core.max_pending_reads = raft.max_pending_reads;
    core.read_batch_max = raft.read_batch_max;
    core.promote_lag_entries_max = raft.promote_lag_entries_max;
}

fn start_transport<S: StateMachine + 'static>(
    params: &ShardParams<S>,
    events: EventQueue<ShardEvent<S>>,
    snapshots: Rc<SnapshotStore>,
) -> Result<Transport<ShardEvent<S>>, NodeError> {
    let snapshot_check = snapshots::restoring_check(Arc::clone(&params.new_state_machine));
    let config = &params.config;
    let shard = params.shard as usize;
    let startup = |detail: String| NodeError::Startup {
        shard: params.shard,
        detail,
    };
    let own = config
        .own_member()
        .ok_or_else(|| startup("this node is not among the members".to_string()))?;
    let listen_address = own
        .shard_address(shard)
        .ok_or_else(|| startup("no peer address for this shard".to_string()))?;
    let mut peers = BTreeMap::new();
    for member in config
        .members
        .iter()
        .filter(|member| member.id != config.node_id)
    {
        let address = member
            .shard_address(shard)
            .ok_or_else(|| startup(format!("no peer address for member {}", member.id)))?;
        peers.insert(NodeId(member.id), address);
    }
    let settings = TransportSettings {
        cluster_id: config.cluster_id,
        node_id: NodeId(config.node_id),
        shard: params.shard,
        shard_count: params.shard_count,
        groups: config.groups,
        listen_address,
        peers,
        config: config.transport.clone(),
        snapshot: config.snapshot.clone(),
        random_seed: config.node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ params.shard as u64,
    };
    Transport::start(settings, events, snapshots, snapshot_check)
        .map_err(|error| startup(error.to_string()))
}
