//! The event loop of one simulated run: replicas, their storage, the network, clients and
//! the fault schedule, all driven by one virtual clock and one seeded generator.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use bytes::Bytes;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use shardraft_raft::{
    Config, Entry, EntryKind, LogIndex, Membership, MembershipChange, MembershipChangeEntry,
    Message, MessageBody, NodeId, ProposeError, RaftNode, ReadIndexError, Ready, ReadyNumber, Role,
    SnapshotMeta, SnapshotTransfer, Term,
};

use super::checks::{SafetyChecker, Violation};
use super::faults::{Fault, ScheduledFault, draw_pauses, draw_schedule, draw_timing_changes};
use super::kv::{Command, CommandResult, KvStore};
use super::network::{LinkQuality, Partition, chance, uniform};
use super::params::{PHI_THRESHOLD, RunParams, TICK_US, tick_period_us};
use super::tuning::SimTuner;
use crate::harness::{DurableState, PendingWrite};
use crate::history::{Call, History, HistoryRecorder, Output};
use shardraft_tuning::PhiAccrualDetector;

/// Mixed into a run's seed for the generator of its timing changes.
const TIMING_CHANGES_SEED_SALT: u64 = 0x7469_6d69_6e67;

/// Mixed into a run's seed for the generator of its process pauses.
const PAUSES_SEED_SALT: u64 = 0x7061_7573_6573;

/// Mixed into a replica's core seed for its tuner's seed.
const TUNER_SEED_SALT: u64 = 0x0074_756e_6572;

/// What ends a run early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunError {
    Safety(Violation),
    Liveness(String),
}

impl From<Violation> for RunError {
    fn from(violation: Violation) -> RunError {
        RunError::Safety(violation)
    }
}

/// Counts describing a finished run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunCounts {
    pub events: u64,
    pub messages_sent: u64,
    pub messages_lost: u64,
    pub elections_won: u64,
    pub highest_term: u64,
    pub highest_applied: u64,
    pub operations_ok: u64,
    pub operations_failed: u64,
    pub operations_unknown: u64,
    pub crashes: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    pub membership_changes: u64,
    pub wipes: u64,
    /// Process pauses that began.
    pub pauses: u64,
    /// Times a failure detector brought a follower's election forward.
    pub elections_brought_forward: u64,
    /// Timing changes a leader accepted.
    pub timing_changes: u64,
    /// Timing changes that a leader's tuner chose and the leader accepted.
    pub tuned_timing_changes: u64,
    /// Those of them that lowered the minimum election timeout.
    pub tuned_timing_lowerings: u64,
    /// Times a follower forgot its leader because the runtime found the leader's process
    /// gone, and so campaigned early.
    pub leader_down_reports: u64,
    /// Runs whose leader crashed as faults stopped and stayed down until another leader
    /// committed (`RunParams::leader_down_after_faults`).
    pub leaders_held_down: u64,
}

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        incarnation: u64,
    },
    Deliver {
        message: Message,
        /// The sender's incarnation when it sent the message.
        sender_incarnation: u64,
    },
    /// A snapshot's bytes with the `InstallSnapshot` that stands for the whole transfer.
    DeliverSnapshot {
        message: Message,
        sender_incarnation: u64,
        state: KvStore,
    },
    /// The sender's runtime learns how a snapshot transfer ended.
    SnapshotReport {
        node: usize,
        incarnation: u64,
        peer: NodeId,
        outcome: SnapshotTransfer,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
        number: ReadyNumber,
    },
    ClientWake {
        client: usize,
    },
    ClientArrive {
        client: usize,
        node: usize,
        op_seq: u64,
    },
    ClientResponse {
        client: usize,
        op_seq: u64,
        result: ClientResult,
    },
    ClientTimeout {
        client: usize,
        op_seq: u64,
    },
    Fault {
        index: usize,
    },
    Restart {
        node: usize,
    },
    /// The node's clock jumps ahead by a whole election timeout, as after a pause.
    ClockJump {
        node: usize,
    },
    /// `node`'s runtime finds that `peer` crashed: the connection closed and connecting
    /// again was refused. Stale once `peer` restarted or crashed again: `peer_incarnation`
    /// is the one its crash began.
    PeerDown {
        node: usize,
        incarnation: u64,
        peer: usize,
        peer_incarnation: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientResult {
    Ok(Output),
    /// Definitely not applied; `leader_hint` names the leader if the node knew one.
    Failed {
        leader_hint: Option<usize>,
    },
    /// May or may not have been applied.
    Unknown,
}

#[derive(Debug)]
struct WriteWaiter {
    term: Term,
    client: usize,
    op_seq: u64,
}

#[derive(Debug)]
struct ReadWaiter {
    client: usize,
    op_seq: u64,
    key: String,
}

/// One replica with the storage it survives crashes with.
#[derive(Debug)]
struct SimNode {
    id: NodeId,
    incarnation: u64,
    raft: Option<RaftNode>,
    tick_period_us: u64,
    durable: DurableState,
    pending_writes: VecDeque<PendingWrite>,
    last_write_done_us: u64,
    /// Commit index of the last hard state the core handed out.
    last_reported_commit: LogIndex,
    /// Batches durable but not yet reported to the core, and their after-persist messages.
    unreported_writes: u64,
    unreported_messages: Vec<Message>,
    kv: KvStore,
    write_waiters: BTreeMap<LogIndex, Vec<WriteWaiter>>,
    read_waiters: BTreeMap<u64, ReadWaiter>,
    /// Confirmed reads waiting for the state machine to reach their index.
    confirmed_reads: Vec<(LogIndex, u64)>,
    /// The state machine's state at `durable.snapshot`, stored with it.
    snapshot_state: Option<KvStore>,
    /// A snapshot from a leader that the core took as its latest but has not installed yet,
    /// with its state, kept in memory as the engine keeps the received bytes. The install
    /// restores this state, not the stored one, because the store keeps only its newest
    /// snapshot. That one is newer when an earlier leader's snapshot was stored and then
    /// rejected by the core for its stale term.
    received_snapshot: Option<(SnapshotMeta, KvStore)>,
    /// Messages sent by incarnations before this one are lost: its storage was wiped, and
    /// the connections of the earlier incarnations are gone with it.
    first_live_incarnation: u64,
    /// Started as a learner of its own config, as a machine that joins the group.
    joins_as_learner: bool,
    /// Whether the node starts as a founding member of the new group
    /// (`RestoredState::founding`). Set for every node of the initial cluster, and cleared
    /// once its storage is wiped.
    founding: bool,
    /// Heartbeat arrivals per peer, when the run uses failure detectors; lost on a crash
    /// like the rest of the runtime's memory.
    detectors: BTreeMap<NodeId, PhiAccrualDetector>,
    /// Each peer's suspicion delay in ticks, computed when its heartbeat arrives, as the
    /// engine does.
    suspicion_ticks: BTreeMap<NodeId, u32>,
    /// The adaptive tuner, when the run uses it. A crash loses it with the rest of the
    /// runtime's memory.
    tuner: Option<SimTuner>,
    /// Until when the process is paused ([`Fault::Pause`]), so that events for it wait
    /// until then. 0 when it is not paused.
    paused_until_us: u64,
}

impl SimNode {
    fn applied_index(&self) -> LogIndex {
        self.raft
            .as_ref()
            .map_or(LogIndex(0), RaftNode::applied_index)
    }
}

#[derive(Debug)]
struct ClientOp {
    op_seq: u64,
    node: usize,
    invoked_us: u64,
    /// Index into `Simulation::operations`.
    operation: usize,
    call: Call,
}

/// How a client saw one of its operations end.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RecordedOutcome {
    Ok(Output),
    /// Rejected before it could take effect, for example by a replica that does not lead.
    NoEffect,
    Unknown,
}

#[derive(Debug)]
struct RecordedOperation {
    process: u64,
    call: Call,
    outcome: Option<RecordedOutcome>,
}

/// One event of the clients' history, in the order the events happened.
#[derive(Clone, Copy, Debug)]
enum HistoryEvent {
    Invoke(usize),
    Complete(usize),
}

#[derive(Debug)]
struct SimClient {
    process: u64,
    next_op_seq: u64,
    current: Option<ClientOp>,
    leader_hint: Option<usize>,
    /// The value this client last read, wrote or swapped in, by key, so that most of its
    /// compare-and-swaps expect a value the key may still hold and can succeed.
    last_seen: BTreeMap<String, Option<String>>,
}

/// One simulated run.
pub struct Simulation {
    pub params: RunParams,
    pub schedule: Vec<ScheduledFault>,
    rng: ChaCha8Rng,
    now_us: u64,
    next_event_seq: u64,
    events: BinaryHeap<Reverse<(u64, u64, usize)>>,
    event_slots: Vec<Option<Event>>,
    free_slots: Vec<usize>,
    nodes: Vec<SimNode>,
    clients: Vec<SimClient>,
    next_process: u64,
    next_read_context: u64,
    partition: Partition,
    links: LinkQuality,
    checker: SafetyChecker,
    operations: Vec<RecordedOperation>,
    history_events: Vec<HistoryEvent>,
    counts: RunCounts,
    seed: u64,
    liveness_met: bool,
    /// When a leader first committed an entry of its term after the faults stopped.
    healthy_since_us: Option<u64>,
    /// An election won once the cluster had been healthy for a while, with pre-vote and
    /// check-quorum on: `(time, node, term)`.
    election_while_healthy: Option<(u64, NodeId, Term)>,
    ok_after_faults: bool,
    /// Storage that reports writes durable before they are, which loses acknowledged
    /// data in a crash. Only for checking that the simulator detects such bugs.
    acknowledge_before_durable: bool,
    /// Armed by [`Fault::CrashLeaderOnCommit`].
    crash_leader_on_commit: bool,
    /// Armed by [`Fault::SplitVote`].
    split_vote_armed: bool,
    /// Highest last index of any replica when the faults stopped, leaving out a leader
    /// held down then.
    last_index_at_heal: Option<LogIndex>,
    /// The leader that crashed as faults stopped and stays down until another leader
    /// commits (`RunParams::leader_down_after_faults`).
    held_down: Option<usize>,
    /// Highest commit index of any replica when the clients stopped.
    commit_at_clients_stop: Option<LogIndex>,
}

impl std::fmt::Debug for Simulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("seed", &self.seed)
            .field("now_us", &self.now_us)
            .finish_non_exhaustive()
    }
}

impl Simulation {
    /// Sets up the run of `seed`; `nodes` fixes the cluster size.
    pub fn new(seed: u64, nodes: Option<usize>) -> Simulation {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let params = RunParams::draw(seed, &mut rng, nodes);
        let mut schedule = draw_schedule(
            &mut rng,
            params.nodes,
            params.faults_start_us,
            params.faults_end_us,
        );
        let mut timing_rng = ChaCha8Rng::seed_from_u64(seed ^ TIMING_CHANGES_SEED_SALT);
        schedule.extend(draw_timing_changes(
            &mut timing_rng,
            params.faults_start_us,
            params.faults_end_us,
        ));
        let mut pause_rng = ChaCha8Rng::seed_from_u64(seed ^ PAUSES_SEED_SALT);
        schedule.extend(draw_pauses(
            &mut pause_rng,
            params.nodes,
            params.faults_start_us,
            params.faults_end_us,
        ));
        // Stable, so faults at the same time keep their drawn order.
        schedule.sort_by_key(|scheduled| scheduled.at_us);
        let nodes = (0..params.nodes)
            .map(|index| SimNode {
                id: NodeId(index as u64 + 1),
                incarnation: 0,
                raft: None,
                tick_period_us: tick_period_us(&mut rng),
                durable: DurableState::default(),
                pending_writes: VecDeque::new(),
                last_write_done_us: 0,
                last_reported_commit: LogIndex(0),
                unreported_writes: 0,
                unreported_messages: Vec::new(),
                kv: KvStore::default(),
                write_waiters: BTreeMap::new(),
                read_waiters: BTreeMap::new(),
                confirmed_reads: Vec::new(),
                snapshot_state: None,
                received_snapshot: None,
                first_live_incarnation: 0,
                joins_as_learner: false,
                founding: true,
                detectors: BTreeMap::new(),
                suspicion_ticks: BTreeMap::new(),
                tuner: None,
                paused_until_us: 0,
            })
            .collect();
        let clients = (0..params.clients)
            .map(|index| SimClient {
                process: index as u64,
                next_op_seq: 0,
                current: None,
                leader_hint: None,
                last_seen: BTreeMap::new(),
            })
            .collect();
        Simulation {
            next_process: params.clients as u64,
            params,
            schedule,
            rng,
            now_us: 0,
            next_event_seq: 0,
            events: BinaryHeap::new(),
            event_slots: Vec::new(),
            free_slots: Vec::new(),
            nodes,
            clients,
            next_read_context: 1,
            partition: Partition::default(),
            links: LinkQuality::reliable(),
            checker: SafetyChecker::default(),
            operations: Vec::new(),
            history_events: Vec::new(),
            counts: RunCounts::default(),
            seed,
            liveness_met: false,
            healthy_since_us: None,
            election_while_healthy: None,
            ok_after_faults: false,
            acknowledge_before_durable: false,
            crash_leader_on_commit: false,
            split_vote_armed: false,
            last_index_at_heal: None,
            held_down: None,
            commit_at_clients_stop: None,
        }
    }

    /// Makes storage report every write durable as soon as it is submitted, so that a
    /// crash loses writes the cluster acknowledged. The runs must then fail: this checks
    /// that the simulator's checks detect lost acknowledged data.
    pub fn acknowledge_before_durable(&mut self) {
        self.acknowledge_before_durable = true;
    }

    /// Runs without the adaptive tuner even where the seed chose it, as every run did
    /// before the simulator had one, so that a seed recorded then replays its run.
    pub fn without_tuner(&mut self) {
        self.params.tuner = false;
    }

    pub fn counts(&self) -> &RunCounts {
        &self.counts
    }

    /// The clients' history.
    ///
    /// A compare-and-set that was rejected before taking effect is left out entirely: in
    /// the history's formats a failed compare-and-set means that the key held another
    /// value, which such a rejection does not show. Other rejected operations are recorded
    /// as failed, which means the same as leaving them out.
    pub fn history(&self) -> History {
        let mut recorder = HistoryRecorder::new();
        let mut handles = vec![None; self.operations.len()];
        for event in &self.history_events {
            match *event {
                HistoryEvent::Invoke(index) => {
                    let operation = &self.operations[index];
                    let rejected_cas = matches!(operation.call, Call::Cas { .. })
                        && operation.outcome == Some(RecordedOutcome::NoEffect);
                    if !rejected_cas {
                        handles[index] =
                            Some(recorder.invoke(operation.process, operation.call.clone()));
                    }
                }
                HistoryEvent::Complete(index) => {
                    let Some(handle) = handles[index] else {
                        continue;
                    };
                    match &self.operations[index].outcome {
                        Some(RecordedOutcome::Ok(output)) => recorder.ok(handle, output.clone()),
                        Some(RecordedOutcome::NoEffect) => recorder.fail(handle),
                        Some(RecordedOutcome::Unknown) => recorder.info(handle),
                        None => {}
                    }
                }
            }
        }
        recorder.into_history()
    }

    /// Runs to the end, checking safety after every event and liveness once faults stop.
    ///
    /// # Errors
    ///
    /// Returns the first safety violation, or a liveness failure.
    pub fn run(&mut self) -> Result<(), RunError> {
        for node in 0..self.nodes.len() {
            self.start_node(node)?;
        }
        for client in 0..self.clients.len() {
            let wake_us = uniform(&mut self.rng, 0, 50_000);
            self.schedule_event(wake_us, Event::ClientWake { client });
        }
        for index in 0..self.schedule.len() {
            let at_us = self.schedule[index].at_us;
            self.schedule_event(at_us, Event::Fault { index });
        }

        while let Some(Reverse((at_us, _, slot))) = self.events.pop() {
            if at_us > self.params.end_us {
                break;
            }
            self.now_us = at_us;
            let Some(event) = self.event_slots[slot].take() else {
                continue;
            };
            self.free_slots.push(slot);
            self.counts.events += 1;
            let _span = tracing::debug_span!("event", at_us = self.now_us).entered();
            self.handle_event(event)?;
            self.check_liveness()?;
        }
        if !self.liveness_met {
            return Err(RunError::Liveness(format!(
                "no leader committed an entry of its term within {} ms after faults stopped",
                self.params.liveness_bound_us / 1000
            )));
        }
        for node in &self.nodes {
            if let Some(raft) = node.raft.as_ref() {
                tracing::debug!(node = %node.id, role = ?raft.role(), term = %raft.term(), commit = %raft.commit_index(), applied = %raft.applied_index(), persisted = %raft.persisted_index(), last = %raft.last_index(), pending_writes = node.pending_writes.len(), "final state");
            }
        }
        if let Some((at_us, node, term)) = self.election_while_healthy {
            return Err(RunError::Liveness(format!(
                "{node} won an election for {term} at {} ms, after the cluster had been \
                 healthy since {} ms: with pre-vote and check-quorum, a healthy cluster \
                 keeps its leader",
                at_us / 1000,
                self.healthy_since_us.unwrap_or_default() / 1000
            )));
        }
        if !self.ok_after_faults && self.params.clients > 0 {
            return Err(RunError::Liveness(
                "no client operation invoked after faults stopped succeeded".into(),
            ));
        }
        // With the network healthy and no new writes for the last stretch of the run, every
        // replica must have caught up with what was committed when the clients stopped.
        let caught_up_to = self.commit_at_clients_stop.unwrap_or_default();
        let members = self.newest_membership().unwrap_or_default();
        for node in self.nodes.iter().filter(|node| members.contains(node.id)) {
            let applied = node.applied_index();
            if applied < caught_up_to {
                return Err(RunError::Liveness(format!(
                    "{} applied only up to {applied} by the end, behind the commit index {caught_up_to} reached when clients stopped",
                    node.id
                )));
            }
        }
        self.counts.highest_applied = self.checker.highest_applied().0;
        Ok(())
    }

    fn schedule_event(&mut self, at_us: u64, event: Event) {
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.event_slots[slot] = Some(event);
                slot
            }
            None => {
                self.event_slots.push(Some(event));
                self.event_slots.len() - 1
            }
        };
        self.next_event_seq += 1;
        self.events
            .push(Reverse((at_us, self.next_event_seq, slot)));
    }

    /// Returns the node whose process handles `event`, if one does.
    fn event_node(&self, event: &Event) -> Option<usize> {
        match event {
            Event::Tick { node, .. }
            | Event::SnapshotReport { node, .. }
            | Event::PersistDone { node, .. }
            | Event::PeerDown { node, .. }
            | Event::ClientArrive { node, .. }
            | Event::ClockJump { node } => Some(*node),
            Event::Deliver { message, .. } | Event::DeliverSnapshot { message, .. } => {
                let node = usize::try_from(message.to.0).ok()?.checked_sub(1)?;
                (node < self.nodes.len()).then_some(node)
            }
            Event::ClientWake { .. }
            | Event::ClientResponse { .. }
            | Event::ClientTimeout { .. }
            | Event::Fault { .. }
            | Event::Restart { .. } => None,
        }
    }

    fn handle_event(&mut self, event: Event) -> Result<(), RunError> {
        // A paused process handles nothing: its messages, ticks and storage completions
        // wait, in order, until the pause ends.
        if let Some(node) = self.event_node(&event)
            && self.nodes[node].paused_until_us > self.now_us
        {
            let resume_us = self.nodes[node].paused_until_us;
            self.schedule_event(resume_us, event);
            return Ok(());
        }
        match event {
            Event::Tick { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation {
                    return Ok(());
                }
                let now_us = self.now_us;
                let sim_node = &mut self.nodes[node];
                let Some(raft) = sim_node.raft.as_mut() else {
                    return Ok(());
                };
                // A pause is a stall of the loop, and the tuner keeps the election timeout
                // above stalls. The engine's shard measures them the same way.
                if let Some(tuner) = sim_node.tuner.as_mut() {
                    tuner.record_tick(now_us, sim_node.tick_period_us);
                }
                if let Some(ticks) = raft
                    .leader()
                    .and_then(|leader| sim_node.suspicion_ticks.get(&leader))
                    && raft.shorten_election_timeout(*ticks)
                {
                    self.counts.elections_brought_forward += 1;
                }
                raft.tick();
                let next_us = self.now_us + self.nodes[node].tick_period_us;
                self.schedule_event(next_us, Event::Tick { node, incarnation });
                self.run_tuner(node);
                self.drive(node)
            }
            Event::Deliver {
                message,
                sender_incarnation,
            } => self.deliver(message, sender_incarnation, None),
            Event::DeliverSnapshot {
                message,
                sender_incarnation,
                state,
            } => self.deliver(message, sender_incarnation, Some(state)),
            Event::SnapshotReport {
                node,
                incarnation,
                peer,
                outcome,
            } => {
                if self.nodes[node].incarnation != incarnation {
                    return Ok(());
                }
                let Some(raft) = self.nodes[node].raft.as_mut() else {
                    return Ok(());
                };
                raft.report_snapshot(peer, outcome);
                self.drive(node)
            }
            Event::PersistDone {
                node,
                incarnation,
                number,
            } => self.persist_done(node, incarnation, number),
            Event::PeerDown {
                node,
                incarnation,
                peer,
                peer_incarnation,
            } => {
                // A restarted peer listens again: connecting to it succeeds.
                let peer_still_down = self.nodes[peer].raft.is_none()
                    && self.nodes[peer].incarnation == peer_incarnation;
                if self.nodes[node].incarnation != incarnation || !peer_still_down {
                    return Ok(());
                }
                let peer_id = self.nodes[peer].id;
                let Some(raft) = self.nodes[node].raft.as_mut() else {
                    return Ok(());
                };
                if raft.report_leader_down(peer_id) {
                    self.counts.leader_down_reports += 1;
                }
                self.drive(node)
            }
            Event::ClientWake { client } => {
                self.issue_operation(client);
                Ok(())
            }
            Event::ClientArrive {
                client,
                node,
                op_seq,
            } => self.client_arrive(client, node, op_seq),
            Event::ClientResponse {
                client,
                op_seq,
                result,
            } => {
                self.client_response(client, op_seq, result);
                Ok(())
            }
            Event::ClientTimeout { client, op_seq } => {
                self.client_response(client, op_seq, ClientResult::Unknown);
                Ok(())
            }
            Event::Fault { index } => self.apply_fault(index),
            Event::ClockJump { node } => {
                let ticks = self.node_config(node).election_timeout_ticks_max;
                let Some(raft) = self.nodes[node].raft.as_mut() else {
                    return Ok(());
                };
                for _ in 0..ticks {
                    raft.tick();
                }
                self.drive(node)
            }
            Event::Restart { node } => {
                if self.nodes[node].raft.is_none() {
                    self.start_node(node)?;
                }
                Ok(())
            }
        }
    }

    /// Crashes the current leader and keeps it down until another leader commits, if the
    /// newest membership's other voters that may vote are a quorum of it. A voter catching
    /// up after a wipe votes for no candidate with a log until a leader brings it up to
    /// date, so without the leader it counts as failed.
    fn hold_leader_down(&mut self) {
        if self.liveness_met {
            return;
        }
        let (Some(leader), Some(membership)) = (self.current_leader(), self.newest_membership())
        else {
            return;
        };
        let id = self.nodes[leader].id;
        let voting_others = self
            .nodes
            .iter()
            .filter(|node| node.id != id && membership.voters.contains(&node.id))
            .filter(|node| {
                node.raft
                    .as_ref()
                    .is_some_and(|raft| !raft.is_catching_up())
            })
            .count();
        if !membership.voters.contains(&id) || voting_others < membership.quorum() {
            return;
        }
        tracing::debug!(node = %id, "holding the leader down after the faults");
        self.crash_node(leader);
        self.held_down = Some(leader);
        self.counts.leaders_held_down += 1;
        // An event at the same instant, handled before this one, may have computed
        // `last_index_at_heal` with the leader's log in it.
        self.last_index_at_heal = None;
    }

    fn check_liveness(&mut self) -> Result<(), RunError> {
        if self.now_us >= self.params.clients_stop_us && self.commit_at_clients_stop.is_none() {
            let highest_commit = self
                .nodes
                .iter()
                .filter_map(|node| node.raft.as_ref())
                .map(RaftNode::commit_index)
                .max();
            self.commit_at_clients_stop = Some(highest_commit.unwrap_or_default());
        }
        if self.liveness_met || self.now_us < self.params.faults_end_us {
            return Ok(());
        }
        // Only an entry appended after the faults stopped shows progress: a leader may have
        // committed before, even inside a minority that was then healed.
        let held_down = self.held_down;
        let last_index_at_heal = *self.last_index_at_heal.get_or_insert_with(|| {
            // A held-down leader's entries past the others' logs were never committed,
            // because the others that may vote are a quorum, which overlaps every commit's.
            self.nodes
                .iter()
                .enumerate()
                .filter(|(index, _)| Some(*index) != held_down)
                .map(|(_, node)| {
                    let durable = node.durable.last_index();
                    node.raft
                        .as_ref()
                        .map_or(durable, |raft| raft.last_index().max(durable))
                })
                .max()
                .unwrap_or_default()
        });
        let leader_committed =
            self.nodes
                .iter()
                .filter_map(|node| node.raft.as_ref())
                .any(|raft| {
                    raft.role() == Role::Leader
                        && raft.commit_index() > last_index_at_heal
                        && raft
                            .entry(raft.commit_index())
                            .is_some_and(|entry| entry.term == raft.term())
                });
        if leader_committed {
            self.liveness_met = true;
            self.healthy_since_us = Some(self.now_us);
            // The survivors elected a leader without it; it returns and must catch up.
            if let Some(node) = self.held_down.take() {
                self.start_node(node)?;
            }
            return Ok(());
        }
        if self.now_us > self.params.faults_end_us + self.params.liveness_bound_us {
            return Err(RunError::Liveness(format!(
                "no leader committed an entry of its term within {} ms after faults stopped",
                self.params.liveness_bound_us / 1000
            )));
        }
        Ok(())
    }

    /// Ends the tuning interval of `node` when one is due and, while it leads, proposes
    /// the timing its tuner chose if the group runs another, as a shard does after each
    /// interval. A leader rejects it while another change is pending, so the next
    /// interval tries again.
    fn run_tuner(&mut self, node: usize) {
        let now_us = self.now_us;
        let SimNode { tuner, raft, .. } = &mut self.nodes[node];
        let (Some(tuner), Some(raft)) = (tuner.as_mut(), raft.as_mut()) else {
            return;
        };
        if !tuner.finish_interval_if_due(now_us) {
            return;
        }
        let Some(timing) = tuner.timing() else {
            return;
        };
        if raft.role() != Role::Leader || raft.timing() == timing {
            return;
        }
        let lowers = timing.election_timeout_ticks_min < raft.timing().election_timeout_ticks_min;
        let change = MembershipChange::SetTiming { timing };
        if raft.propose_membership_change(change, Bytes::new()).is_ok() {
            self.counts.tuned_timing_changes += 1;
            self.counts.tuned_timing_lowerings += u64::from(lowers);
        }
    }

    /// Records an election won after the cluster had been healthy for twice the longest
    /// election timeout, when pre-vote and check-quorum are on. Without faults, no
    /// follower stops hearing from the leader for that long, so such an election means a
    /// failure detector or timer fired on a healthy leader.
    fn note_election_while_healthy(&mut self, node: NodeId, term: Term) {
        if !(self.params.pre_vote && self.params.check_quorum) {
            return;
        }
        // The longest election timeout any replica runs with, agreed or configured.
        let timeout_ticks_max = self
            .nodes
            .iter()
            .filter_map(|node| node.raft.as_ref())
            .map(|raft| raft.timing().election_timeout_ticks_max)
            .fold(self.node_config(0).election_timeout_ticks_max, u32::max);
        let settle_us = 2 * u64::from(timeout_ticks_max) * TICK_US;
        let healthy = self
            .healthy_since_us
            .is_some_and(|since| self.now_us >= since + settle_us);
        if healthy && self.election_while_healthy.is_none() {
            self.election_while_healthy = Some((self.now_us, node, term));
        }
    }

    fn node_config(&self, node: usize) -> Config {
        let id = self.nodes[node].id;
        let membership = if self.nodes[node].joins_as_learner {
            let voters = self
                .nodes
                .iter()
                .map(|node| node.id)
                .filter(|voter| *voter != id);
            Membership::with_voters_and_learners(voters, [id])
        } else {
            Membership::with_voters(self.nodes.iter().map(|node| node.id))
        };
        let mut config = Config::new(id, membership);
        config.pre_vote = self.params.pre_vote;
        config.check_quorum = self.params.check_quorum;
        config.max_entries_per_message = self.params.max_entries_per_message;
        config.max_inflight_messages = self.params.max_inflight_messages;
        config.read_batch_max = self.params.read_batch_max;
        config.max_bytes_per_message = self.params.max_bytes_per_message;
        config.random_seed = RunParams::core_seed(self.seed, node, self.nodes[node].incarnation);
        config
    }

    /// Starts or restarts a replica from its durable state; its state machine is rebuilt
    /// by applying the log again.
    fn start_node(&mut self, node: usize) -> Result<(), RunError> {
        let config = self.node_config(node);
        let tuner = if self.params.tuner {
            let seed = RunParams::core_seed(self.seed, node, self.nodes[node].incarnation)
                ^ TUNER_SEED_SALT;
            let followers = self.params.nodes.saturating_sub(1);
            match SimTuner::new(&config, followers, seed, self.now_us) {
                Ok(tuner) => Some(tuner),
                Err(error) => {
                    return Err(RunError::Safety(Violation {
                        property: "tuner",
                        detail: format!("the tuner rejected the run's settings: {error}"),
                    }));
                }
            }
        } else {
            None
        };
        let sim_node = &mut self.nodes[node];
        sim_node.detectors.clear();
        sim_node.suspicion_ticks.clear();
        sim_node.tuner = tuner;
        sim_node.paused_until_us = 0;
        // The state machine starts from the stored snapshot, or empty, and is rebuilt by
        // applying the log after it.
        let restored = sim_node.durable.restore(sim_node.founding);
        let raft = match RaftNode::new(config, restored.clone()) {
            Ok(raft) => raft,
            Err(error) => {
                return Err(RunError::Safety(Violation {
                    property: "restart",
                    detail: format!(
                        "{} could not restart from its durable state: {error}",
                        sim_node.id
                    ),
                }));
            }
        };
        sim_node.raft = Some(raft);
        sim_node.kv = match &restored.snapshot {
            Some(_) => sim_node.snapshot_state.clone().unwrap_or_default(),
            None => KvStore::default(),
        };
        sim_node.last_reported_commit = restored.hard_state.commit;
        sim_node.last_write_done_us = self.now_us;
        let id = sim_node.id;
        let incarnation = sim_node.incarnation;
        let first_tick_us = self.now_us + self.rng.next_u64() % sim_node.tick_period_us;
        let base = restored
            .snapshot
            .as_ref()
            .map(|snapshot| (snapshot.index, snapshot.term));
        self.checker
            .restore(id, base, &restored.entries, restored.hard_state.term)?;
        self.schedule_event(first_tick_us, Event::Tick { node, incarnation });
        Ok(())
    }

    /// Tells each running node that `node` crashed, as the engine's transport learns it:
    /// the crashed process's connections close and connecting again is refused. That
    /// takes a reconnection delay (1 to 10 ms here), and needs the network between the
    /// two, so a node cut off from the crashed one learns nothing.
    fn report_crash_to_peers(&mut self, node: usize) {
        let crashed_incarnation = self.nodes[node].incarnation;
        for other in 0..self.nodes.len() {
            if other == node
                || self.nodes[other].raft.is_none()
                || !self.partition.allows(node, other)
                || !self.partition.allows(other, node)
            {
                continue;
            }
            let at_us = self.now_us + uniform(&mut self.rng, 1_000, 10_000);
            let incarnation = self.nodes[other].incarnation;
            self.schedule_event(
                at_us,
                Event::PeerDown {
                    node: other,
                    incarnation,
                    peer: node,
                    peer_incarnation: crashed_incarnation,
                },
            );
        }
    }

    /// Stops a replica: its core, unfinished writes and clients' requests are lost.
    fn crash_node(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        if sim_node.raft.is_none() {
            return;
        }
        self.counts.crashes += 1;
        sim_node.raft = None;
        sim_node.tuner = None;
        // A crash ends the pause. The events it held back still come at its planned end,
        // where the crashed incarnation's ticks and storage completions are ignored.
        sim_node.paused_until_us = 0;
        sim_node.incarnation += 1;
        self.report_crash_to_peers(node);
        let sim_node = &mut self.nodes[node];
        // Storage may have finished writes it had not reported yet: a random prefix of the
        // unreported batches survives the crash, the rest is lost.
        let surviving = (self.rng.next_u64() % (sim_node.pending_writes.len() as u64 + 1)) as usize;
        let writes: Vec<PendingWrite> = sim_node.pending_writes.drain(..).collect();
        for write in writes.into_iter().take(surviving) {
            if let Some(install) = &write.snapshot {
                sim_node.durable.install(install);
            }
            sim_node.durable.write(write.hard_state, &write.entries);
            if write.catch_up_ended {
                sim_node.durable.catching_up = false;
            }
        }
        sim_node.unreported_writes = 0;
        sim_node.unreported_messages.clear();
        sim_node.confirmed_reads.clear();
        sim_node.received_snapshot = None;
        let writes: Vec<WriteWaiter> = std::mem::take(&mut sim_node.write_waiters)
            .into_values()
            .flatten()
            .collect();
        let reads: Vec<ReadWaiter> = std::mem::take(&mut sim_node.read_waiters)
            .into_values()
            .collect();
        // The connection breaks: a write's outcome is unknown, a read had no effect.
        for waiter in writes {
            self.respond(waiter.client, waiter.op_seq, ClientResult::Unknown);
        }
        for waiter in reads {
            self.respond(
                waiter.client,
                waiter.op_seq,
                ClientResult::Failed { leader_hint: None },
            );
        }
    }

    /// Takes every `Ready` the replica has and carries it out.
    fn drive(&mut self, node: usize) -> Result<(), RunError> {
        // Each batch hands out what accumulated since the previous one, so a handful per
        // event is normal; thousands mean the core keeps producing work out of nothing.
        const READY_BATCHES_PER_EVENT_MAX: usize = 10_000;
        for _ in 0..READY_BATCHES_PER_EVENT_MAX {
            let Some(ready) = self.nodes[node].raft.as_mut().and_then(RaftNode::ready) else {
                return Ok(());
            };
            self.handle_ready(node, ready)?;
        }
        let ready = self.nodes[node].raft.as_mut().and_then(RaftNode::ready);
        Err(RunError::Liveness(format!(
            "{} returned {READY_BATCHES_PER_EVENT_MAX} Ready batches for one event; the next one: {ready:?}",
            self.nodes[node].id
        )))
    }

    fn handle_ready(&mut self, node: usize, ready: Ready) -> Result<(), RunError> {
        let id = self.nodes[node].id;
        // A snapshot replaces the log and the state machine before anything else in the
        // batch, as the runtime's contract says.
        if let Some(install) = &ready.snapshot_to_install {
            let received = self.nodes[node].received_snapshot.take();
            let Some((_, received_state)) = received.filter(|(meta, _)| *meta == install.snapshot)
            else {
                return Err(RunError::Safety(Violation {
                    property: "snapshot install",
                    detail: format!(
                        "{id} installs the snapshot at {} that it did not receive",
                        install.snapshot.index
                    ),
                }));
            };
            // The store must contain this snapshot or a newer one, so that a restart after
            // the log records the install finds a snapshot that covers the log's start.
            let stored = self.nodes[node].durable.snapshot.clone();
            let covered = stored.as_ref().is_some_and(|stored| {
                stored.index > install.snapshot.index || *stored == install.snapshot
            });
            if !covered {
                return Err(RunError::Safety(Violation {
                    property: "snapshot install",
                    detail: format!(
                        "{id} installs the snapshot at {} but stored {:?}",
                        install.snapshot.index,
                        stored.map(|snapshot| snapshot.index)
                    ),
                }));
            }
            self.checker.snapshot_installed(
                id,
                install.snapshot.index,
                install.snapshot.term,
                install.log_kept,
            )?;
            self.nodes[node].kv = received_state;
            self.counts.snapshots_installed += 1;
        }
        self.checker.append(id, &ready.entries)?;
        if let Some(hard_state) = ready.hard_state {
            // Recorded before a crash can strike, so that a commit known only to a leader
            // that dies at once still counts for leader completeness.
            self.checker
                .committed(id, hard_state.term, hard_state.commit)?;
            let sim_node = &mut self.nodes[node];
            let commit_advanced = hard_state.commit > sim_node.last_reported_commit;
            sim_node.last_reported_commit = hard_state.commit;
            let leads = sim_node
                .raft
                .as_ref()
                .is_some_and(|raft| raft.role() == Role::Leader);
            let in_fault_window = self.now_us < self.params.faults_end_us;
            if self.crash_leader_on_commit && in_fault_window && leads && commit_advanced {
                self.crash_leader_on_commit = false;
                self.crash_node(node);
                let restart_us = self.now_us + uniform(&mut self.rng, 200_000, 2_000_000);
                self.schedule_event(restart_us, Event::Restart { node });
                return Ok(());
            }
        }
        if self.split_vote_armed && self.now_us < self.params.faults_end_us {
            let granted_to = ready
                .messages
                .iter()
                .chain(&ready.messages_after_persist)
                .find(|message| {
                    matches!(
                        message.body,
                        MessageBody::RequestVoteResponse { granted: true }
                    )
                })
                .map(|message| message.to.0 as usize - 1);
            if let (Some(candidate), Some(hard_state)) = (granted_to, ready.hard_state) {
                self.split_vote_armed = false;
                return self.split_vote(node, candidate, hard_state.term, ready.messages);
            }
        }
        let must_persist = ready.must_persist();
        if let Some(raft) = self.nodes[node].raft.as_ref() {
            self.checker.check_last_index(id, raft.last_index())?;
        }
        if let Some(role_state) = ready.role_state {
            self.counts.highest_term = self.counts.highest_term.max(role_state.term.0);
            if role_state.role == Role::Leader {
                self.counts.elections_won += 1;
                self.checker.leader_elected(id, role_state.term)?;
                self.note_election_while_healthy(id, role_state.term);
            }
        }

        for message in ready.messages {
            self.send(message);
        }
        self.apply_entries(node, &ready.committed_entries)?;
        self.maybe_snapshot(node)?;
        for read in ready.read_states {
            self.nodes[node]
                .confirmed_reads
                .push((read.read_index, read.context));
        }
        self.serve_confirmed_reads(node);
        for context in ready.dropped_reads {
            if let Some(waiter) = self.nodes[node].read_waiters.remove(&context) {
                self.respond(
                    waiter.client,
                    waiter.op_seq,
                    ClientResult::Failed { leader_hint: None },
                );
            }
        }

        if must_persist || !ready.messages_after_persist.is_empty() {
            let latency_us = if must_persist {
                self.disk_latency_us()
            } else {
                0
            };
            let sim_node = &mut self.nodes[node];
            // Writes complete in order: a write cannot finish before the one ahead of it.
            let done_us = (self.now_us + latency_us).max(sim_node.last_write_done_us);
            sim_node.last_write_done_us = done_us;
            if must_persist && let Some(tuner) = sim_node.tuner.as_mut() {
                tuner.record_write(ready.entries.len() as u64, done_us - self.now_us);
            }
            let mut messages_after_persist = ready.messages_after_persist;
            if self.acknowledge_before_durable {
                // The broken storage of the self-test: report the write durable at once.
                if let Some(raft) = sim_node.raft.as_mut() {
                    raft.on_persisted(ready.number);
                }
                let messages = std::mem::take(&mut messages_after_persist);
                sim_node.pending_writes.push_back(PendingWrite {
                    number: ready.number,
                    hard_state: ready.hard_state,
                    snapshot: ready.snapshot_to_install,
                    catch_up_ended: ready.catch_up_ended,
                    entries: ready.entries,
                    messages_after_persist,
                });
                for message in messages {
                    self.send(message);
                }
            } else {
                sim_node.pending_writes.push_back(PendingWrite {
                    number: ready.number,
                    hard_state: ready.hard_state,
                    snapshot: ready.snapshot_to_install,
                    catch_up_ended: ready.catch_up_ended,
                    entries: ready.entries,
                    messages_after_persist,
                });
            }
            let sim_node = &mut self.nodes[node];
            let incarnation = sim_node.incarnation;
            self.schedule_event(
                done_us,
                Event::PersistDone {
                    node,
                    incarnation,
                    number: ready.number,
                },
            );
        }
        Ok(())
    }

    fn disk_latency_us(&mut self) -> u64 {
        let mut latency = uniform(
            &mut self.rng,
            self.params.disk_latency_us_min,
            self.params.disk_latency_us_max,
        );
        if chance(&mut self.rng, self.params.disk_stall_probability) {
            latency += self.params.disk_stall_us;
        }
        latency
    }

    fn persist_done(
        &mut self,
        node: usize,
        incarnation: u64,
        number: ReadyNumber,
    ) -> Result<(), RunError> {
        let sim_node = &mut self.nodes[node];
        if sim_node.incarnation != incarnation {
            return Ok(());
        }
        let Some(write) = sim_node.pending_writes.pop_front() else {
            return Ok(());
        };
        debug_assert_eq!(
            write.number, number,
            "storage writes completed out of order"
        );
        if let Some(install) = &write.snapshot {
            sim_node.durable.install(install);
        }
        sim_node.durable.write(write.hard_state, &write.entries);
        if write.catch_up_ended {
            sim_node.durable.catching_up = false;
        }
        sim_node.unreported_writes += 1;
        sim_node
            .unreported_messages
            .extend(write.messages_after_persist);

        // Storage may report several finished batches at once, as a runtime that polls for
        // completions does; the core must then count all of them from one number.
        let report = sim_node.unreported_writes >= self.params.batches_per_durability_report
            || sim_node.pending_writes.is_empty();
        if !report {
            return Ok(());
        }
        sim_node.unreported_writes = 0;
        if let Some(raft) = sim_node.raft.as_mut()
            && !self.acknowledge_before_durable
        {
            raft.on_persisted(write.number);
        }
        let messages = std::mem::take(&mut sim_node.unreported_messages);
        for message in messages {
            self.send(message);
        }
        self.drive(node)
    }

    /// Sends a message; an `InstallSnapshot` travels with the sender's stored snapshot, and
    /// its sender hears how the transfer ended, as runtimes report it.
    fn send(&mut self, message: Message) {
        self.counts.messages_sent += 1;
        let from = message.from.0 as usize - 1;
        let to = message.to.0 as usize - 1;
        if let Some(tuner) = self.nodes[from].tuner.as_mut() {
            tuner.record_sent(&message, self.now_us);
        }
        let sender_incarnation = self.nodes[from].incarnation;
        let snapshot_state = match &message.body {
            MessageBody::InstallSnapshot { snapshot } => {
                let sender = &self.nodes[from];
                let stored = sender.durable.snapshot.as_ref() == Some(snapshot);
                Some(sender.snapshot_state.clone().filter(|_| stored))
            }
            _ => None,
        };
        let delays = if self.partition.allows(from, to) {
            self.links.delivery_delays_us(&mut self.rng)
        } else {
            Vec::new()
        };
        if delays.is_empty() {
            self.counts.messages_lost += 1;
        }
        if let Some(state) = snapshot_state {
            let Some(state) = state else {
                // The sender's runtime no longer holds the snapshot its core names: it stored
                // a newer one from an earlier leader that the core did not install, since it
                // covered only committed entries. As the engine does, the runtime lets the
                // core adopt that snapshot and reports the transfer failed, so the core
                // retries with the snapshot it now names.
                self.adopt_stored_snapshot(from);
                self.schedule_event(
                    self.now_us,
                    Event::SnapshotReport {
                        node: from,
                        incarnation: sender_incarnation,
                        peer: message.to,
                        outcome: SnapshotTransfer::Failed,
                    },
                );
                return;
            };
            match delays.first() {
                Some(delay_us) => self.schedule_event(
                    self.now_us + delay_us,
                    Event::DeliverSnapshot {
                        message,
                        sender_incarnation,
                        state,
                    },
                ),
                None => {
                    // The transfer times out on the sender's side.
                    let report_us = self.now_us + uniform(&mut self.rng, 50_000, 300_000);
                    self.schedule_event(
                        report_us,
                        Event::SnapshotReport {
                            node: from,
                            incarnation: sender_incarnation,
                            peer: message.to,
                            outcome: SnapshotTransfer::Failed,
                        },
                    );
                }
            }
            return;
        }
        for delay_us in delays {
            let message = message.clone();
            self.schedule_event(
                self.now_us + delay_us,
                Event::Deliver {
                    message,
                    sender_incarnation,
                },
            );
        }
    }

    fn deliver(
        &mut self,
        message: Message,
        sender_incarnation: u64,
        snapshot_state: Option<KvStore>,
    ) -> Result<(), RunError> {
        let from = message.from.0 as usize - 1;
        let to = message.to.0 as usize - 1;
        let reaches = self.partition.allows(from, to)
            && sender_incarnation >= self.nodes[from].first_live_incarnation
            && self.nodes[to].raft.is_some();
        let mut received = None;
        if let Some(state) = snapshot_state {
            let outcome = if reaches {
                SnapshotTransfer::Finished
            } else {
                SnapshotTransfer::Failed
            };
            let report_us = self.now_us + uniform(&mut self.rng, 50, 2_000);
            self.schedule_event(
                report_us,
                Event::SnapshotReport {
                    node: from,
                    incarnation: sender_incarnation,
                    peer: message.to,
                    outcome,
                },
            );
            if reaches {
                // The receiving runtime stores the snapshot before its core sees it.
                if let MessageBody::InstallSnapshot { snapshot } = &message.body {
                    let receiver = &mut self.nodes[to];
                    let newer = receiver
                        .durable
                        .snapshot
                        .as_ref()
                        .is_none_or(|stored| snapshot.index > stored.index);
                    if newer {
                        receiver.durable.store_snapshot(snapshot.clone());
                        receiver.snapshot_state = Some(state.clone());
                    }
                    received = Some((snapshot.clone(), state));
                }
            }
        }
        if !reaches {
            self.counts.messages_lost += 1;
            return Ok(());
        }
        if self.params.failure_detector && matches!(message.body, MessageBody::Heartbeat { .. }) {
            // The engine's defaults: a window of 100 gaps, estimates from 10 on.
            let now_us = self.now_us;
            let receiver = &mut self.nodes[to];
            let detector = receiver
                .detectors
                .entry(message.from)
                .or_insert_with(|| PhiAccrualDetector::new(100, 10));
            detector.heartbeat(now_us);
            match detector.suspicion_delay_micros(PHI_THRESHOLD) {
                Some(delay_us) => {
                    let ticks = u32::try_from(delay_us.div_ceil(TICK_US)).unwrap_or(u32::MAX);
                    receiver.suspicion_ticks.insert(message.from, ticks);
                }
                None => {
                    receiver.suspicion_ticks.remove(&message.from);
                }
            }
        }
        let receiver = &mut self.nodes[to];
        if let Some(tuner) = receiver.tuner.as_mut() {
            tuner.record_received(&message, self.now_us);
        }
        let Some(raft) = receiver.raft.as_mut() else {
            return Ok(());
        };
        let latest_before = raft.latest_snapshot().cloned();
        // Rejections are the protocol's response to stale or duplicated input, and the core
        // has counted them.
        let _ = raft.step(message);
        // As in the engine, the core makes a snapshot that it will install its latest. A
        // snapshot from a stale term, or one that covers only committed entries, leaves
        // the latest unchanged, so a received snapshot not installed yet stays.
        if let Some((snapshot, state)) = received {
            let latest = raft.latest_snapshot();
            if latest == Some(&snapshot) && latest != latest_before.as_ref() {
                receiver.received_snapshot = Some((snapshot, state));
            }
        }
        self.drive(to)
    }

    /// Takes a snapshot once enough entries were applied since the last one, and compacts
    /// the log behind it, keeping a few entries for followers slightly behind.
    fn maybe_snapshot(&mut self, node: usize) -> Result<(), RunError> {
        let Some(every) = self.params.snapshot_every_entries else {
            return Ok(());
        };
        let keep = self.params.snapshot_keep_entries;
        let sim_node = &mut self.nodes[node];
        let Some(raft) = sim_node.raft.as_mut() else {
            return Ok(());
        };
        let applied = raft.applied_index();
        let last_snapshot = sim_node
            .durable
            .snapshot
            .as_ref()
            .map_or(LogIndex(0), |snapshot| snapshot.index);
        if applied.0 < last_snapshot.0 + every {
            return Ok(());
        }
        let Some(meta) = raft.snapshot_meta(applied) else {
            return Ok(());
        };
        if let Err(error) = raft.compact(meta.clone(), LogIndex(applied.0.saturating_sub(keep))) {
            return Err(RunError::Safety(Violation {
                property: "snapshot",
                detail: format!(
                    "{} refused its own snapshot at {applied}: {error}",
                    sim_node.id
                ),
            }));
        }
        let compacted_through = raft.first_index().prev();
        // The snapshot is durable before the log drops what it covers.
        sim_node.durable.store_snapshot(meta);
        sim_node.snapshot_state = Some(sim_node.kv.clone());
        sim_node.durable.compact(compacted_through);
        self.counts.snapshots_taken += 1;
        Ok(())
    }

    /// Makes `node`'s core take its stored snapshot as its own, when that snapshot is newer
    /// than the core's latest and the node applied past it, and compacts the durable log
    /// after it, as the engine's runtime does before it sends a snapshot.
    fn adopt_stored_snapshot(&mut self, node: usize) {
        let keep = self.params.snapshot_keep_entries;
        let sim_node = &mut self.nodes[node];
        let (Some(raft), Some(stored)) =
            (sim_node.raft.as_mut(), sim_node.durable.snapshot.clone())
        else {
            return;
        };
        let newer = raft
            .latest_snapshot()
            .is_none_or(|latest| stored.index > latest.index);
        if !newer || stored.index > raft.applied_index() {
            return;
        }
        let through = LogIndex(stored.index.0.saturating_sub(keep));
        if raft.compact(stored, through).is_ok() {
            let compacted_through = raft.first_index().prev();
            sim_node.durable.compact(compacted_through);
        }
    }

    fn apply_entries(&mut self, node: usize, entries: &[Entry]) -> Result<(), RunError> {
        let id = self.nodes[node].id;
        let term = self.nodes[node]
            .raft
            .as_ref()
            .map_or(Term(0), RaftNode::term);
        for entry in entries {
            self.checker.applied(id, term, entry)?;
            // The core hands out only durable entries, so that a state machine never runs
            // ahead of the log it is rebuilt from after a crash.
            let durable = self.nodes[node].durable.entry(entry.index);
            if durable != Some(entry) {
                return Err(RunError::Safety(Violation {
                    property: "apply only durable entries",
                    detail: format!(
                        "{id} applied {} of {} before it was durable",
                        entry.index, entry.term
                    ),
                }));
            }
            let result = match entry.kind {
                EntryKind::Normal => match Command::decode(&entry.data) {
                    Ok(command) => Some(self.nodes[node].kv.apply(&command)),
                    Err(error) => {
                        return Err(RunError::Safety(Violation {
                            property: "entry contents",
                            detail: format!(
                                "{id} applied an undecodable entry at {}: {error}",
                                entry.index
                            ),
                        }));
                    }
                },
                EntryKind::LeaderNoop | EntryKind::MembershipChange => None,
            };
            let waiters = self.nodes[node]
                .write_waiters
                .remove(&entry.index)
                .unwrap_or_default();
            for waiter in waiters {
                // Only one entry is ever committed at an index, so a proposal whose term
                // differs from the applied entry's can no longer take effect.
                let outcome = match result {
                    Some(result) if waiter.term == entry.term => ClientResult::Ok(match result {
                        CommandResult::Done => Output::Done,
                        CommandResult::Cas { succeeded } => Output::Cas(succeeded),
                    }),
                    _ => ClientResult::Failed { leader_hint: None },
                };
                self.respond(waiter.client, waiter.op_seq, outcome);
            }
        }
        Ok(())
    }

    fn serve_confirmed_reads(&mut self, node: usize) {
        let applied = self.nodes[node].applied_index();
        let sim_node = &mut self.nodes[node];
        let (ready, waiting): (Vec<_>, Vec<_>) = sim_node
            .confirmed_reads
            .drain(..)
            .partition(|(read_index, _)| *read_index <= applied);
        sim_node.confirmed_reads = waiting;
        for (_, context) in ready {
            let Some(waiter) = self.nodes[node].read_waiters.remove(&context) else {
                continue;
            };
            let value = self.nodes[node].kv.get(&waiter.key).cloned();
            self.respond(
                waiter.client,
                waiter.op_seq,
                ClientResult::Ok(Output::Read(value)),
            );
        }
    }

    fn apply_fault(&mut self, index: usize) -> Result<(), RunError> {
        let fault = self.schedule[index].fault.clone();
        tracing::debug!(seed = self.seed, at_ms = self.now_us / 1000, %fault, "fault");
        match fault {
            Fault::Partition { partition, .. } => self.partition = partition,
            Fault::Heal => self.partition = Partition::default(),
            Fault::Crash { node } => self.crash_node(node),
            Fault::CrashLeader => {
                if let Some(leader) = self.current_leader() {
                    self.crash_node(leader);
                    let restart_us = self.now_us + uniform(&mut self.rng, 200_000, 2_000_000);
                    self.schedule_event(restart_us, Event::Restart { node: leader });
                }
            }
            Fault::CrashLeaderOnCommit => self.crash_leader_on_commit = true,
            Fault::SplitVote => self.split_vote_armed = true,
            Fault::IsolateLeader => {
                if let Some(leader) = self.current_leader() {
                    let others: Vec<usize> = (0..self.nodes.len())
                        .filter(|node| *node != leader)
                        .collect();
                    self.partition = Partition::symmetric(&[leader], &others);
                }
            }
            Fault::CrashMajority => {
                let mut order: Vec<usize> = (0..self.nodes.len()).collect();
                for i in (1..order.len()).rev() {
                    let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
                    order.swap(i, j);
                }
                let majority = self.nodes.len() / 2 + 1;
                for &node in &order[..majority] {
                    self.crash_node(node);
                    let restart_us = self.now_us + uniform(&mut self.rng, 50_000, 1_500_000);
                    self.schedule_event(restart_us, Event::Restart { node });
                }
            }
            Fault::CrashAll => {
                for node in 0..self.nodes.len() {
                    self.crash_node(node);
                }
            }
            Fault::Restart { node } => {
                if self.nodes[node].raft.is_none() {
                    self.start_node(node)?;
                }
            }
            Fault::RestartAll => {
                for node in 0..self.nodes.len() {
                    if self.nodes[node].raft.is_none() {
                        self.start_node(node)?;
                    }
                }
                if self.params.leader_down_after_faults && self.now_us >= self.params.faults_end_us
                {
                    self.hold_leader_down();
                }
            }
            Fault::Links { quality } => self.links = quality,
            Fault::RemoveNode { node } => {
                let target = self.nodes[node].id;
                if let Some(leader) = self.leader_taking_requests() {
                    if let Some(raft) = self.nodes[leader].raft.as_mut() {
                        // Refusals (a change pending, the last voter, the leader itself,
                        // which transfers first) are part of what the run exercises.
                        if raft
                            .propose_membership_change(
                                MembershipChange::Remove { node: target },
                                Bytes::new(),
                            )
                            .is_ok()
                        {
                            self.counts.membership_changes += 1;
                        }
                    }
                    self.drive(leader)?;
                }
            }
            Fault::AddNode { node } => self.add_node(node)?,
            Fault::Pause { node, duration_us } => {
                if let Some(node) = node.or_else(|| self.current_leader())
                    && self.nodes[node].raft.is_some()
                {
                    let until_us = self.now_us + duration_us;
                    let sim_node = &mut self.nodes[node];
                    sim_node.paused_until_us = sim_node.paused_until_us.max(until_us);
                    self.counts.pauses += 1;
                }
            }
            Fault::ChangeTiming { timing } => {
                if let Some(leader) = self.leader_taking_requests() {
                    if let Some(raft) = self.nodes[leader].raft.as_mut()
                        && raft
                            .propose_membership_change(
                                MembershipChange::SetTiming { timing },
                                Bytes::new(),
                            )
                            .is_ok()
                    {
                        self.counts.timing_changes += 1;
                    }
                    self.drive(leader)?;
                }
            }
            Fault::WipeNode { node } => {
                if self.wipe_keeps_quorum_of_data(node) {
                    self.crash_node(node);
                    self.wipe_storage(node);
                    self.start_node(node)?;
                }
            }
            Fault::TransferLeadership { node } => {
                let target = self.nodes[node].id;
                let leader = self.leader_taking_requests();
                if let Some(leader) = leader {
                    if let Some(raft) = self.nodes[leader].raft.as_mut() {
                        // A transfer to itself or to a non-voter is refused; that is fine here.
                        let _ = raft.transfer_leadership(target);
                    }
                    self.drive(leader)?;
                }
            }
        }
        Ok(())
    }

    /// Crashes `voter` just after it granted its vote in `term` to `candidate`, sending only
    /// the messages that may leave before the batch is durable, and restarts it a
    /// millisecond later. A third node that has not reached `term` yet is cut off from the
    /// candidate and made to campaign at once. If the core let the vote leave before it was
    /// durable, the restarted voter can vote again in the same term and elect two leaders.
    fn split_vote(
        &mut self,
        voter: usize,
        candidate: usize,
        term: Term,
        messages: Vec<Message>,
    ) -> Result<(), RunError> {
        for message in messages {
            self.send(message);
        }
        self.crash_node(voter);
        self.schedule_event(self.now_us + 1_000, Event::Restart { node: voter });
        let rival = (0..self.nodes.len()).find(|&node| {
            node != voter
                && node != candidate
                && self.nodes[node]
                    .raft
                    .as_ref()
                    .is_some_and(|raft| raft.role() == Role::Follower && raft.term() < term)
        });
        if let Some(rival) = rival {
            self.partition = Partition::symmetric(&[candidate], &[rival]);
            self.schedule_event(self.now_us + 2_000, Event::ClockJump { node: rival });
        }
        Ok(())
    }

    /// Wipes a stopped node's storage, as when its disk is replaced; the messages its
    /// earlier incarnations sent are lost with their connections. The node then restarts as
    /// a node that is not a founding member, as an operator restarts a wiped node, so it
    /// catches up.
    fn wipe_storage(&mut self, node: usize) {
        let sim_node = &mut self.nodes[node];
        debug_assert!(sim_node.raft.is_none());
        sim_node.durable = DurableState::default();
        sim_node.founding = false;
        sim_node.snapshot_state = None;
        sim_node.first_live_incarnation = sim_node.incarnation;
        self.counts.wipes += 1;
    }

    /// Whether the voters other than `node` that hold their data still form a quorum, so
    /// that the group can elect a leader without `node` while it catches up.
    ///
    /// Replicas without data (never written, or wiped and not yet caught up) cannot tell a
    /// new group from one whose data they lost, so they vote only for candidates with empty
    /// logs and do not campaign once they hold entries. Wiping more would mean losing the
    /// disks that a quorum needs, which no consensus protocol survives; the simulator does
    /// not do that.
    fn wipe_keeps_quorum_of_data(&self, node: usize) -> bool {
        let Some(membership) = self.newest_membership() else {
            return false;
        };
        let voters_with_data = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(index, sim_node)| {
                *index != node
                    && membership.voters.contains(&sim_node.id)
                    && sim_node.durable != DurableState::default()
                    && !sim_node.durable.catching_up
                    && !sim_node.raft.as_ref().is_some_and(RaftNode::is_catching_up)
            })
            .count();
        voters_with_data >= membership.quorum()
    }

    /// The membership in force at the replica with the longest log. A stopped replica
    /// counts with its durable log: it may hold a change that no live replica has, and
    /// win the next election once it restarts.
    fn newest_membership(&self) -> Option<Membership> {
        (0..self.nodes.len())
            .map(|node| self.log_end_and_membership(node))
            .max_by_key(|(term, index, _)| (*term, *index))
            .map(|(_, _, membership)| membership)
    }

    /// Returns the last term and index of a replica's log and the membership in force
    /// there: the core's when it runs, else what it would restore from its durable state.
    fn log_end_and_membership(&self, node: usize) -> (Term, LogIndex, Membership) {
        let sim_node = &self.nodes[node];
        if let Some(raft) = sim_node.raft.as_ref() {
            return (
                raft.last_term(),
                raft.last_index(),
                raft.membership().clone(),
            );
        }
        let restored = sim_node.durable.clone().restore(sim_node.founding);
        let (base_term, base_index, base_membership) = match &restored.snapshot {
            Some(snapshot) => (snapshot.term, snapshot.index, snapshot.membership.clone()),
            None => (Term(0), LogIndex(0), self.node_config(node).membership),
        };
        let membership = restored
            .entries
            .iter()
            .rev()
            .filter(|entry| entry.kind == EntryKind::MembershipChange)
            .find_map(|entry| MembershipChangeEntry::decode(&entry.data).ok())
            .map_or(base_membership, |decoded| decoded.membership);
        match restored.entries.last() {
            Some(last) => (last.term, last.index, membership),
            None => (base_term, base_index, membership),
        }
    }

    /// Brings `node` back as a new machine with the same id when the group does not count
    /// it as a member: empty storage, a learner of its own config, added by the leader to
    /// be promoted once caught up.
    fn add_node(&mut self, node: usize) -> Result<(), RunError> {
        let Some(leader) = self.leader_taking_requests() else {
            return Ok(());
        };
        let id = self.nodes[node].id;
        let is_member = self.nodes[leader]
            .raft
            .as_ref()
            .is_some_and(|raft| raft.membership().contains(id));
        if is_member || leader == node {
            return Ok(());
        }
        self.crash_node(node);
        self.wipe_storage(node);
        self.nodes[node].joins_as_learner = true;
        self.start_node(node)?;
        if let Some(raft) = self.nodes[leader].raft.as_mut() {
            let change = MembershipChange::AddLearner {
                node: id,
                promote_when_caught_up: true,
            };
            if raft.propose_membership_change(change, Bytes::new()).is_ok() {
                self.counts.membership_changes += 1;
            }
        }
        self.drive(leader)
    }

    /// The node that leads in the highest term, if any node leads.
    fn current_leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|node| {
                let raft = self.nodes[node].raft.as_ref()?;
                (raft.role() == Role::Leader).then_some((raft.term(), node))
            })
            .max()
            .map(|(_, node)| node)
    }

    /// Returns the current leader, unless its process is paused. An operator's request to
    /// a paused leader would wait for the pause to end, and the run's faults do not wait.
    fn leader_taking_requests(&self) -> Option<usize> {
        self.current_leader()
            .filter(|&leader| self.nodes[leader].paused_until_us <= self.now_us)
    }

    /// Starts the client's next operation, if the run still takes operations.
    fn issue_operation(&mut self, client: usize) {
        if self.now_us >= self.params.clients_stop_us || self.clients[client].current.is_some() {
            return;
        }
        let key = format!("k{}", self.rng.next_u64() % self.params.keys as u64);
        let op_seq = self.clients[client].next_op_seq;
        self.clients[client].next_op_seq += 1;
        let unique_value = format!("{client}.{op_seq}");
        let call = match self.rng.next_u64() % 10 {
            0..=3 => Call::Read { key },
            4..=6 => Call::Write {
                key,
                value: unique_value,
            },
            _ => {
                let last_seen = self.clients[client].last_seen.get(&key).cloned();
                let expected = match last_seen {
                    Some(value) if !chance(&mut self.rng, 0.2) => value,
                    _ if chance(&mut self.rng, 0.3) => None,
                    _ => {
                        let writer = self.rng.next_u64() % self.params.clients as u64;
                        let writer_seq = self.rng.next_u64() % (op_seq + 1);
                        Some(format!("{writer}.{writer_seq}"))
                    }
                };
                Call::Cas {
                    key,
                    expected,
                    new: unique_value,
                }
            }
        };
        let node = match self.clients[client].leader_hint {
            Some(node) if !chance(&mut self.rng, 0.1) => node,
            _ => (self.rng.next_u64() % self.nodes.len() as u64) as usize,
        };
        let operation = self.operations.len();
        self.operations.push(RecordedOperation {
            process: self.clients[client].process,
            call: call.clone(),
            outcome: None,
        });
        self.history_events.push(HistoryEvent::Invoke(operation));
        self.clients[client].current = Some(ClientOp {
            op_seq,
            node,
            invoked_us: self.now_us,
            operation,
            call,
        });

        let arrive_us = self.now_us + uniform(&mut self.rng, 50, 500);
        self.schedule_event(
            arrive_us,
            Event::ClientArrive {
                client,
                node,
                op_seq,
            },
        );
        let timeout_us = self.now_us + self.params.client_timeout_us;
        self.schedule_event(timeout_us, Event::ClientTimeout { client, op_seq });
    }

    fn client_arrive(&mut self, client: usize, node: usize, op_seq: u64) -> Result<(), RunError> {
        let Some(call) = self.clients[client]
            .current
            .as_ref()
            .filter(|op| op.op_seq == op_seq)
            .map(|op| op.call.clone())
        else {
            return Ok(());
        };
        let Some(raft) = self.nodes[node].raft.as_mut() else {
            // Connection refused: the request never reached a replica.
            self.respond(client, op_seq, ClientResult::Failed { leader_hint: None });
            return Ok(());
        };
        let node_index_of = |leader: Option<NodeId>| leader.map(|id| id.0 as usize - 1);
        match call {
            Call::Read { key } => {
                let context = self.next_read_context;
                self.next_read_context += 1;
                match raft.read_index(context) {
                    Ok(()) => {
                        self.nodes[node].read_waiters.insert(
                            context,
                            ReadWaiter {
                                client,
                                op_seq,
                                key,
                            },
                        );
                    }
                    Err(ReadIndexError::NotLeader { leader }) => {
                        let leader_hint = node_index_of(leader);
                        self.respond(client, op_seq, ClientResult::Failed { leader_hint });
                    }
                    Err(ReadIndexError::TooManyPending { .. }) => {
                        self.respond(
                            client,
                            op_seq,
                            ClientResult::Failed {
                                leader_hint: Some(node),
                            },
                        );
                    }
                }
            }
            Call::Write { key, value } => {
                self.propose(client, node, op_seq, Command::Put { key, value })
            }
            Call::Cas { key, expected, new } => {
                self.propose(client, node, op_seq, Command::Cas { key, expected, new })
            }
            Call::Append { .. } | Call::Delete { .. } => {
                self.respond(client, op_seq, ClientResult::Failed { leader_hint: None });
            }
        }
        self.drive(node)
    }

    fn propose(&mut self, client: usize, node: usize, op_seq: u64, command: Command) {
        let Some(raft) = self.nodes[node].raft.as_mut() else {
            return;
        };
        match raft.propose(command.encode()) {
            Ok(proposal) => {
                self.nodes[node]
                    .write_waiters
                    .entry(proposal.index)
                    .or_default()
                    .push(WriteWaiter {
                        term: proposal.term,
                        client,
                        op_seq,
                    });
            }
            Err(ProposeError::NotLeader { leader }) => {
                let leader_hint = leader.map(|id| id.0 as usize - 1);
                self.respond(client, op_seq, ClientResult::Failed { leader_hint });
            }
            Err(ProposeError::TransferInProgress { target }) => {
                let leader_hint = Some(target.0 as usize - 1);
                self.respond(client, op_seq, ClientResult::Failed { leader_hint });
            }
            Err(ProposeError::UncommittedLimit { .. }) => {
                self.respond(
                    client,
                    op_seq,
                    ClientResult::Failed {
                        leader_hint: Some(node),
                    },
                );
            }
        }
    }

    /// Sends a result back to a client over a short, reliable link.
    fn respond(&mut self, client: usize, op_seq: u64, result: ClientResult) {
        let arrive_us = self.now_us + uniform(&mut self.rng, 50, 500);
        self.schedule_event(
            arrive_us,
            Event::ClientResponse {
                client,
                op_seq,
                result,
            },
        );
    }

    fn client_response(&mut self, client: usize, op_seq: u64, result: ClientResult) {
        let matches = self.clients[client]
            .current
            .as_ref()
            .is_some_and(|op| op.op_seq == op_seq);
        if !matches {
            return;
        }
        let Some(op) = self.clients[client].current.take() else {
            return;
        };
        match result {
            ClientResult::Ok(output) => {
                self.counts.operations_ok += 1;
                if op.invoked_us >= self.params.faults_end_us {
                    self.ok_after_faults = true;
                }
                self.clients[client].leader_hint = Some(op.node);
                let seen = match (&op.call, &output) {
                    (Call::Read { key }, Output::Read(value)) => Some((key, value.clone())),
                    (Call::Write { key, value }, _) => Some((key, Some(value.clone()))),
                    (Call::Cas { key, new, .. }, Output::Cas(true)) => {
                        Some((key, Some(new.clone())))
                    }
                    _ => None,
                };
                if let Some((key, value)) = seen {
                    self.clients[client].last_seen.insert(key.clone(), value);
                }
                self.complete_operation(op.operation, RecordedOutcome::Ok(output));
            }
            ClientResult::Failed { leader_hint } => {
                self.counts.operations_failed += 1;
                self.clients[client].leader_hint = leader_hint;
                self.complete_operation(op.operation, RecordedOutcome::NoEffect);
            }
            ClientResult::Unknown => {
                self.counts.operations_unknown += 1;
                self.clients[client].leader_hint = None;
                self.complete_operation(op.operation, RecordedOutcome::Unknown);
                // An operation of unknown outcome stays open for ever, so the client goes on
                // under a new process id, as a process has one operation open at a time.
                self.clients[client].process = self.next_process;
                self.next_process += 1;
            }
        }
        let think_us = uniform(&mut self.rng, 0, 20_000);
        self.schedule_event(self.now_us + think_us, Event::ClientWake { client });
    }

    fn complete_operation(&mut self, operation: usize, outcome: RecordedOutcome) {
        self.operations[operation].outcome = Some(outcome);
        self.history_events.push(HistoryEvent::Complete(operation));
    }
}
