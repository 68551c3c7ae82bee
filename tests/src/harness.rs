//! A scripted harness that drives several replicas of the Raft core by function call.
//!
//! A [`Cluster`] owns one [`RaftNode`] per member, an in-memory durable store for each, and
//! a network queue. Nothing happens unless a test calls for it, and there is no real time or
//! OS randomness, so every run of a test is the same run:
//!
//! - [`Cluster::tick`] and [`Cluster::tick_all`] advance logical time.
//! - [`Cluster::process_ready`] takes a node's [`Ready`] batches and handles them as a
//!   runtime would. It writes hard state and entries to the node's [`DurableState`]
//!   (truncating at `entries[0].index`) and calls [`RaftNode::on_persisted`]. It queues
//!   `messages` at once and `messages_after_persist` only after the write. It records
//!   committed entries as applied, and keeps read states and dropped reads.
//! - [`Cluster::pause_persistence`] holds the writes, and the messages that wait for them,
//!   until [`Cluster::resume_persistence`], to model a slow disk.
//! - [`Cluster::deliver_queued`] and [`Cluster::deliver_matching`] step queued messages into
//!   their recipients. A message over a cut link ([`Cluster::cut`], [`Cluster::isolate`],
//!   [`Cluster::partition`]), matching a drop rule ([`Cluster::add_drop_rule`]) or sent to
//!   a crashed node is dropped when its turn comes.
//! - [`Cluster::crash`] loses everything a node had not persisted, and [`Cluster::restart`]
//!   builds a new replica from its durable state with [`RaftNode::new`].
//! - [`Cluster::stabilize`] alternates ready processing and delivery until nothing moves.
//!   [`Cluster::run_ticks`], [`Cluster::run_until_leader`], [`Cluster::elect`],
//!   [`Cluster::win_election`] and [`Cluster::propose_and_commit`] build on it.
//!
//! The harness checks two safety properties as it goes and panics when either breaks: at
//! most one leader per term, and no two nodes ever apply different entries at one index.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use bytes::Bytes;
use shardraft_raft::{
    Config, Entry, HardState, LogIndex, Membership, Message, MessageBody, NodeId, ProposalId,
    RaftNode, ReadState, Ready, ReadyNumber, Rejection, RestoredState, Role, SnapshotInstall,
    SnapshotMeta, SnapshotTransfer, Term,
};

/// Upper bound on ready-and-deliver rounds in one [`Cluster::stabilize`]. Without ticks a
/// cluster settles in a few rounds, so hitting this bound means messages loop forever.
const MAX_STABILIZE_ROUNDS: usize = 10_000;

/// What a node's storage holds: the state [`RaftNode::new`] restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    pub hard_state: HardState,
    /// The newest snapshot stored; the state machine's bytes are kept by whoever drives
    /// the replica.
    pub snapshot: Option<SnapshotMeta>,
    /// Index of the entry just before `entries[0]`: the last index compacted away, or 0.
    pub base_index: LogIndex,
    /// Term of the entry at `base_index`.
    pub base_term: Term,
    /// The stored log, contiguous from `base_index + 1`.
    pub entries: Vec<Entry>,
    /// Recorded when the replica started without any state and not as a founding member,
    /// and forgotten once a batch with `Ready::catch_up_ended` is durable.
    pub catching_up: bool,
}

impl DurableState {
    /// Index of the last stored entry, or the base when none is stored.
    pub fn last_index(&self) -> LogIndex {
        self.base_index.plus(self.entries.len() as u64)
    }

    /// The stored entry at `index`, if it is stored.
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let offset = index.0.checked_sub(self.base_index.0 + 1)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// The term of the entry at `index`, the base included.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.base_index {
            return Some(self.base_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    /// Writes one batch: the hard state if set, a snapshot install if set, then the
    /// entries after dropping every stored entry at or after `entries[0].index`.
    ///
    /// # Panics
    ///
    /// Panics when the batch would leave a gap in the log or its indexes are not
    /// contiguous, which only a bug in the core can produce.
    pub fn write(&mut self, hard_state: Option<HardState>, entries: &[Entry]) {
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state;
        }
        let Some(first) = entries.first() else {
            return;
        };
        assert!(
            first.index > self.base_index,
            "batch starts at {} inside the compacted prefix ending at {}",
            first.index,
            self.base_index
        );
        let keep = first.index.0 - 1 - self.base_index.0;
        assert!(
            keep <= self.entries.len() as u64,
            "batch starts at {} but the stored log ends at index {}",
            first.index,
            self.last_index()
        );
        self.entries.truncate(keep as usize);
        for entry in entries {
            assert_eq!(
                entry.index,
                self.last_index().next(),
                "batch entries are not contiguous"
            );
            self.entries.push(entry.clone());
        }
    }

    /// Drops the stored entries up to and including `through`, which a stored snapshot
    /// covers.
    pub fn compact(&mut self, through: LogIndex) {
        if through <= self.base_index {
            return;
        }
        let Some(term) = self.term(through) else {
            return;
        };
        let drop = (through.0 - self.base_index.0) as usize;
        self.entries.drain(..drop);
        self.base_index = through;
        self.base_term = term;
    }

    /// Makes the log start after the snapshot `install` names, as a runtime does for
    /// [`Ready::snapshot_to_install`]: compacted through its index when the core kept the
    /// entries above it, emptied otherwise.
    pub fn install(&mut self, install: &SnapshotInstall) {
        let snapshot = &install.snapshot;
        if install.log_kept {
            self.compact(snapshot.index);
        } else {
            self.entries.clear();
            self.base_index = snapshot.index;
            self.base_term = snapshot.term;
        }
    }

    /// Records a snapshot the runtime stored durably, unless an equal or newer one is
    /// stored already.
    pub fn store_snapshot(&mut self, snapshot: SnapshotMeta) {
        if self
            .snapshot
            .as_ref()
            .is_none_or(|stored| snapshot.index > stored.index)
        {
            self.snapshot = Some(snapshot);
        }
    }

    /// Returns the state to restart from, with `applied` at the snapshot's index (0
    /// without one) so that the state machine is rebuilt from the snapshot and the log.
    ///
    /// A snapshot may be newer than the log when a crash struck between storing the
    /// snapshot and writing the log change that follows it. The log then counts only from
    /// the snapshot on: its entries above the snapshot stay when it holds the snapshot's
    /// last entry with the same term, and are dropped otherwise.
    ///
    /// A received snapshot may also be newer than the stored term. That happens when a crash
    /// struck before the batch with the leader's term became durable. The replica then takes
    /// the snapshot's term with no vote.
    ///
    /// The storage is brought in line first, as a runtime writes the log change and the
    /// raised term at start. `founding` marks the replica as a founding member of a new
    /// group (see `RestoredState::founding`), so a blank replica is not recorded as catching
    /// up.
    pub fn restore(&mut self, founding: bool) -> RestoredState {
        // Recorded before the replica can write anything, as a runtime must.
        if !founding && *self == DurableState::default() {
            self.catching_up = true;
        }
        if let Some(snapshot) = self.snapshot.clone()
            && snapshot.index > self.base_index
        {
            let matches = self.term(snapshot.index) == Some(snapshot.term);
            self.install(&SnapshotInstall {
                snapshot,
                log_kept: matches,
            });
        }
        if let Some(snapshot) = &self.snapshot
            && self.hard_state.term < snapshot.term
        {
            // A runtime stores a received snapshot before the core steps its message. The
            // term that the leader's messages raised is written by a later batch. A vote is
            // stored together with its term, so the replica never voted in the snapshot's
            // term and can take it without a vote. The engine's runtime makes the same
            // repair when it starts.
            self.hard_state.term = snapshot.term;
            self.hard_state.vote = None;
        }
        let mut hard_state = self.hard_state;
        let applied = self
            .snapshot
            .as_ref()
            .map_or(LogIndex(0), |snapshot| snapshot.index);
        hard_state.commit = hard_state.commit.max(applied);
        RestoredState {
            hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            applied,
            catching_up: self.catching_up,
            founding,
        }
    }

    /// Returns the terms of the stored log, from the first stored entry on.
    pub fn terms(&self) -> Vec<u64> {
        self.entries.iter().map(|entry| entry.term.0).collect()
    }
}

/// Builds a log whose entry `k` (from 1) has term `terms[k - 1]`. The payload names index and
/// term, so entries at the same position with the same term are equal, as log matching
/// requires.
pub fn log_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(offset, term)| {
            let index = offset as u64 + 1;
            Entry {
                term: Term(*term),
                index: LogIndex(index),
                kind: shardraft_raft::EntryKind::Normal,
                data: Bytes::from(format!("{index}@{term}")),
            }
        })
        .collect()
}

/// The durable state of a replica at `term` with no vote, the log [`log_with_terms`]
/// builds from `terms`, and commit index `commit`.
pub fn restored_log(terms: &[u64], term: u64, commit: u64) -> RestoredState {
    RestoredState {
        hard_state: HardState {
            term: Term(term),
            vote: None,
            commit: LogIndex(commit),
        },
        snapshot: None,
        entries: log_with_terms(terms),
        applied: LogIndex(0),
        catching_up: false,
        founding: false,
    }
}

/// A batch taken from the core whose writes have not been made durable yet.
#[derive(Debug)]
pub struct PendingWrite {
    pub number: ReadyNumber,
    pub hard_state: Option<HardState>,
    /// A snapshot install to write before `entries`.
    pub snapshot: Option<SnapshotInstall>,
    /// The batch reports that catching up ended; storage forgets it once durable.
    pub catch_up_ended: bool,
    pub entries: Vec<Entry>,
    pub messages_after_persist: Vec<Message>,
}

/// One member of the cluster: its config, its replica while it is up, and its storage.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    /// `None` while crashed.
    node: Option<RaftNode>,
    durable: DurableState,
    persistence_paused: bool,
    pending_writes: VecDeque<PendingWrite>,
    /// Entries applied since the last restart, in order.
    applied: Vec<Entry>,
    /// Entries applied over every run of this node, including before crashes.
    applied_ever: Vec<Entry>,
    read_states: Vec<ReadState>,
    dropped_reads: Vec<u64>,
    crash_count: usize,
    /// The index of the snapshot the state machine was last restored from.
    snapshot_applied_through: LogIndex,
    /// Whether the node restarts as a founding member of a new group. Set for the members
    /// the cluster was built with, and cleared when its storage is wiped.
    founding: bool,
}

impl Replica {
    fn node(&self) -> &RaftNode {
        self.node
            .as_ref()
            .unwrap_or_else(|| panic!("node {} is crashed", self.config.id))
    }

    fn node_mut(&mut self) -> &mut RaftNode {
        let id = self.config.id;
        self.node
            .as_mut()
            .unwrap_or_else(|| panic!("node {id} is crashed"))
    }
}

/// Identifies a drop rule added with [`Cluster::add_drop_rule`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DropRuleId(u64);

type DropRule = Box<dyn Fn(&Message) -> bool>;

type ConfigChange = Box<dyn Fn(&mut Config)>;

/// Messages in flight and the faults applied to them at delivery.
struct Network {
    queue: VecDeque<Message>,
    /// Links cut one way, as (from, to).
    cut_links: BTreeSet<(NodeId, NodeId)>,
    drop_rules: BTreeMap<DropRuleId, DropRule>,
    next_rule_id: u64,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("queue", &self.queue)
            .field("cut_links", &self.cut_links)
            .field("drop_rules", &self.drop_rules.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Network {
    fn blocks(&self, message: &Message) -> bool {
        self.cut_links.contains(&(message.from, message.to))
            || self.drop_rules.values().any(|rule| rule(message))
    }
}

/// What happened to one message the harness handed to a recipient.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub message: Message,
    pub result: Result<(), Rejection>,
}

/// Builds a [`Cluster`] with custom configs, learners or restored logs.
pub struct ClusterBuilder {
    voters: u64,
    learners: u64,
    configure_all: Vec<ConfigChange>,
    configure_node: Vec<(NodeId, ConfigChange)>,
    restored: BTreeMap<NodeId, RestoredState>,
    founding: bool,
}

impl fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("voters", &self.voters)
            .field("learners", &self.learners)
            .field("restored", &self.restored.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ClusterBuilder {
    /// Adds `count` learners, numbered after the voters.
    pub fn learners(mut self, count: u64) -> Self {
        self.learners = count;
        self
    }

    /// Changes the config of every node, after [`Config::new`] set the defaults.
    pub fn configure(mut self, change: impl Fn(&mut Config) + 'static) -> Self {
        self.configure_all.push(Box::new(change));
        self
    }

    /// Changes the config of one node, after the changes made with [`Self::configure`].
    pub fn configure_node(mut self, id: u64, change: impl Fn(&mut Config) + 'static) -> Self {
        self.configure_node.push((NodeId(id), Box::new(change)));
        self
    }

    /// Sets whether the nodes start as founding members of a new group (the default), or
    /// as blank nodes that cannot tell a new group from one whose data they lost and so
    /// catch up. Applies to the nodes started without a [`Self::restore`] state.
    pub fn founding(mut self, founding: bool) -> Self {
        self.founding = founding;
        self
    }

    /// Starts node `id` from `state` instead of an empty log.
    pub fn restore(mut self, id: u64, state: RestoredState) -> Self {
        self.restored.insert(NodeId(id), state);
        self
    }

    /// Creates every node as a follower.
    ///
    /// # Panics
    ///
    /// Panics when a config is invalid or a restored state is inconsistent.
    pub fn build(self) -> Cluster {
        let voters: Vec<NodeId> = (1..=self.voters).map(NodeId).collect();
        let learners: Vec<NodeId> = (self.voters + 1..=self.voters + self.learners)
            .map(NodeId)
            .collect();
        let membership = Membership::with_voters_and_learners(voters, learners);
        let mut replicas = BTreeMap::new();
        for id in membership.members() {
            let mut config = Config::new(id, membership.clone());
            for change in &self.configure_all {
                change(&mut config);
            }
            for (node, change) in &self.configure_node {
                if *node == id {
                    change(&mut config);
                }
            }
            let restored = self.restored.get(&id).cloned().unwrap_or(RestoredState {
                founding: self.founding,
                ..RestoredState::default()
            });
            let (base_index, base_term) = restored
                .snapshot
                .as_ref()
                .map_or((LogIndex(0), Term(0)), |snapshot| {
                    (snapshot.index, snapshot.term)
                });
            let durable = DurableState {
                hard_state: restored.hard_state,
                snapshot: restored.snapshot.clone(),
                base_index,
                base_term,
                entries: restored.entries.clone(),
                catching_up: restored.catching_up,
            };
            let node = RaftNode::new(config.clone(), restored)
                .unwrap_or_else(|error| panic!("cannot create node {id}: {error}"));
            replicas.insert(
                id,
                Replica {
                    config,
                    node: Some(node),
                    durable,
                    persistence_paused: false,
                    pending_writes: VecDeque::new(),
                    applied: Vec::new(),
                    applied_ever: Vec::new(),
                    read_states: Vec::new(),
                    dropped_reads: Vec::new(),
                    crash_count: 0,
                    snapshot_applied_through: base_index,
                    founding: self.founding,
                },
            );
        }
        Cluster {
            replicas,
            network: Network {
                queue: VecDeque::new(),
                cut_links: BTreeSet::new(),
                drop_rules: BTreeMap::new(),
                next_rule_id: 1,
            },
            sent: Vec::new(),
            deliveries: Vec::new(),
            leaders_by_term: BTreeMap::new(),
            applied_by_index: BTreeMap::new(),
        }
    }
}

/// A group of replicas, their storage and the network between them.
#[derive(Debug)]
pub struct Cluster {
    replicas: BTreeMap<NodeId, Replica>,
    network: Network,
    /// Every message the nodes handed to the network, in order.
    sent: Vec<Message>,
    /// Every message stepped into a node, with the result.
    deliveries: Vec<Delivery>,
    leaders_by_term: BTreeMap<Term, NodeId>,
    /// The first entry any node applied at each index, for the state machine safety check.
    applied_by_index: BTreeMap<LogIndex, (NodeId, Entry)>,
}

impl Cluster {
    /// Creates a cluster of `voters` voters with ids 1 to `voters`, default configs and
    /// empty logs.
    pub fn new(voters: u64) -> Cluster {
        Cluster::builder(voters).build()
    }

    /// Starts building a cluster of `voters` voters with ids 1 to `voters`.
    pub fn builder(voters: u64) -> ClusterBuilder {
        ClusterBuilder {
            voters,
            learners: 0,
            configure_all: Vec::new(),
            configure_node: Vec::new(),
            restored: BTreeMap::new(),
            founding: true,
        }
    }

    // ----- access -----

    /// Returns every member's id, voters first.
    pub fn ids(&self) -> Vec<NodeId> {
        self.replicas.keys().copied().collect()
    }

    /// Returns the ids of the members that are up.
    pub fn live_ids(&self) -> Vec<NodeId> {
        self.replicas
            .iter()
            .filter(|(_, replica)| replica.node.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn replica(&self, id: NodeId) -> &Replica {
        self.replicas
            .get(&id)
            .unwrap_or_else(|| panic!("node {id} is not a member of the cluster"))
    }

    fn replica_mut(&mut self, id: NodeId) -> &mut Replica {
        self.replicas
            .get_mut(&id)
            .unwrap_or_else(|| panic!("node {id} is not a member of the cluster"))
    }

    /// Returns the replica of node `id`.
    ///
    /// # Panics
    ///
    /// Panics when the node is crashed or unknown.
    pub fn node(&self, id: u64) -> &RaftNode {
        self.replica(NodeId(id)).node()
    }

    /// Returns the replica of node `id`, for calls the harness does not wrap.
    ///
    /// # Panics
    ///
    /// Panics when the node is crashed or unknown.
    pub fn node_mut(&mut self, id: u64) -> &mut RaftNode {
        self.replica_mut(NodeId(id)).node_mut()
    }

    /// Returns the config node `id` was built with.
    pub fn config(&self, id: u64) -> &Config {
        &self.replica(NodeId(id)).config
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.replica(NodeId(id)).node.is_some()
    }

    /// Returns what node `id` has persisted.
    pub fn durable(&self, id: u64) -> &DurableState {
        &self.replica(NodeId(id)).durable
    }

    /// Returns the entries node `id` applied since it last started, in order.
    pub fn applied(&self, id: u64) -> &[Entry] {
        &self.replica(NodeId(id)).applied
    }

    /// Returns the entries node `id` applied in any of its runs, before and after crashes.
    pub fn applied_ever(&self, id: u64) -> &[Entry] {
        &self.replica(NodeId(id)).applied_ever
    }

    /// Returns the read states node `id` output, over all its runs.
    pub fn read_states(&self, id: u64) -> &[ReadState] {
        &self.replica(NodeId(id)).read_states
    }

    /// Returns the contexts of the reads node `id` dropped, over all its runs.
    pub fn dropped_reads(&self, id: u64) -> &[u64] {
        &self.replica(NodeId(id)).dropped_reads
    }

    /// Returns how often node `id` crashed.
    pub fn crash_count(&self, id: u64) -> usize {
        self.replica(NodeId(id)).crash_count
    }

    /// Returns every message the nodes handed to the network, in order, including dropped
    /// ones.
    pub fn sent(&self) -> &[Message] {
        &self.sent
    }

    /// Forgets the messages recorded so far by [`Self::sent`] and [`Self::deliveries`].
    pub fn clear_records(&mut self) {
        self.sent.clear();
        self.deliveries.clear();
    }

    /// Returns every message stepped into a node, with the node's result.
    pub fn deliveries(&self) -> &[Delivery] {
        &self.deliveries
    }

    /// Returns the messages waiting for delivery.
    pub fn queued(&self) -> impl Iterator<Item = &Message> {
        self.network.queue.iter()
    }

    /// Returns the live leader of the highest term, if any node is leader.
    pub fn leader(&self) -> Option<u64> {
        self.replicas
            .values()
            .filter_map(|replica| replica.node.as_ref())
            .filter(|node| node.role() == Role::Leader)
            .max_by_key(|node| node.term())
            .map(|node| node.id().0)
    }

    // ----- time -----

    /// Ticks node `id` once.
    pub fn tick(&mut self, id: u64) {
        self.node_mut(id).tick();
    }

    /// Ticks every live node once.
    pub fn tick_all(&mut self) {
        for id in self.live_ids() {
            self.tick(id.0);
        }
    }

    /// Ticks every live node `ticks` times, stabilizing the cluster after each tick.
    pub fn run_ticks(&mut self, ticks: u32) {
        for _ in 0..ticks {
            self.tick_all();
            self.stabilize();
        }
    }

    // ----- readies and storage -----

    /// Handles every `Ready` node `id` has, as a runtime would; returns how many it took.
    ///
    /// With persistence paused, the writes and the messages that wait for them are held
    /// until [`Self::resume_persistence`]; the rest of each batch is handled at once.
    pub fn process_ready(&mut self, id: u64) -> usize {
        let mut count = 0;
        while let Some(ready) = self.take_ready(id) {
            count += 1;
            self.handle_ready(id, ready);
        }
        count
    }

    /// Handles the readies of every live node until none has one; returns how many.
    pub fn process_all_readies(&mut self) -> usize {
        let mut count = 0;
        loop {
            let mut round = 0;
            for id in self.live_ids() {
                round += self.process_ready(id.0);
            }
            if round == 0 {
                return count;
            }
            count += round;
        }
    }

    /// Takes one `Ready` from node `id` without handling it, for tests that inspect or
    /// handle a batch themselves. Nothing of it is persisted or sent.
    pub fn take_ready(&mut self, id: u64) -> Option<Ready> {
        let replica = self.replica_mut(NodeId(id));
        let node = replica.node.as_mut()?;
        node.ready()
    }

    /// Handles a batch taken with [`Self::take_ready`] as [`Self::process_ready`] would.
    pub fn handle_ready(&mut self, id: u64, ready: Ready) {
        let id = NodeId(id);
        self.check_leader(id, &ready);
        let Ready {
            number,
            role_state: _,
            hard_state,
            entries,
            messages,
            messages_after_persist,
            committed_entries,
            read_states,
            dropped_reads,
            snapshot_to_install,
            membership: _,
            catch_up_ended,
        } = ready;
        self.send_all(messages);
        if let Some(install) = &snapshot_to_install {
            // The state machine would be restored from the snapshot's bytes here.
            self.replica_mut(id).snapshot_applied_through = install.snapshot.index;
        }

        let pending = PendingWrite {
            number,
            hard_state,
            snapshot: snapshot_to_install,
            catch_up_ended,
            entries,
            messages_after_persist,
        };
        self.replica_mut(id).pending_writes.push_back(pending);
        if !self.replica(id).persistence_paused {
            self.flush_pending_writes(id);
        }

        for entry in committed_entries {
            self.apply(id, entry);
        }
        let replica = self.replica_mut(id);
        replica.read_states.extend(read_states);
        replica.dropped_reads.extend(dropped_reads);
    }

    /// Holds node `id`'s writes from now on: entries and hard state stay unwritten,
    /// `on_persisted` is not called, and after-persist messages wait.
    pub fn pause_persistence(&mut self, id: u64) {
        self.replica_mut(NodeId(id)).persistence_paused = true;
    }

    /// Writes what node `id` held, reports it durable and releases the waiting messages.
    pub fn resume_persistence(&mut self, id: u64) {
        let id = NodeId(id);
        self.replica_mut(id).persistence_paused = false;
        self.flush_pending_writes(id);
    }

    fn flush_pending_writes(&mut self, id: NodeId) {
        let mut last_number = None;
        let mut messages = Vec::new();
        let replica = self.replica_mut(id);
        while let Some(write) = replica.pending_writes.pop_front() {
            if let Some(install) = &write.snapshot {
                replica.durable.install(install);
            }
            replica.durable.write(write.hard_state, &write.entries);
            if write.catch_up_ended {
                replica.durable.catching_up = false;
            }
            messages.extend(write.messages_after_persist);
            last_number = Some(write.number);
        }
        if let Some(number) = last_number {
            replica.node_mut().on_persisted(number);
        }
        self.send_all(messages);
    }

    fn send_all(&mut self, messages: Vec<Message>) {
        for message in messages {
            self.sent.push(message.clone());
            self.network.queue.push_back(message);
        }
    }

    fn apply(&mut self, id: NodeId, entry: Entry) {
        match self.applied_by_index.get(&entry.index) {
            Some((first, earlier)) => assert_eq!(
                earlier, &entry,
                "state machine safety violated: {id} applied {:?} at {}, {first} applied {:?}",
                entry, entry.index, earlier
            ),
            None => {
                self.applied_by_index
                    .insert(entry.index, (id, entry.clone()));
            }
        }
        let replica = self.replica_mut(id);
        let applied_through = replica
            .applied
            .last()
            .map_or(LogIndex(0), |last| last.index)
            .max(replica.snapshot_applied_through);
        if applied_through > LogIndex(0) || !replica.applied.is_empty() {
            assert_eq!(
                entry.index,
                applied_through.next(),
                "{id} applied {} after {applied_through}",
                entry.index,
            );
        }
        replica.applied.push(entry.clone());
        replica.applied_ever.push(entry);
    }

    fn check_leader(&mut self, id: NodeId, ready: &Ready) {
        let Some(role_state) = ready.role_state else {
            return;
        };
        if role_state.role != Role::Leader {
            return;
        }
        let leader = *self.leaders_by_term.entry(role_state.term).or_insert(id);
        assert_eq!(
            leader, id,
            "election safety violated: {leader} and {id} both led term {}",
            role_state.term
        );
    }

    // ----- network -----

    /// Steps every queued message into its recipient unless a fault drops it; messages
    /// the recipients send meanwhile wait for the next call. Returns how many were
    /// stepped.
    pub fn deliver_queued(&mut self) -> usize {
        self.deliver_matching(|_| true)
    }

    /// Steps the queued messages for which `select` returns true, in queue order, and
    /// leaves the others queued. Returns how many were stepped.
    pub fn deliver_matching(&mut self, mut select: impl FnMut(&Message) -> bool) -> usize {
        let queue = std::mem::take(&mut self.network.queue);
        let mut kept = VecDeque::new();
        let mut selected = Vec::new();
        for message in queue {
            if select(&message) {
                selected.push(message);
            } else {
                kept.push_back(message);
            }
        }
        self.network.queue = kept;
        let mut count = 0;
        for message in selected {
            if self.deliver(message) {
                count += 1;
            }
        }
        count
    }

    /// Removes the queued messages for which `select` returns true; returns them.
    pub fn drop_queued(&mut self, mut select: impl FnMut(&Message) -> bool) -> Vec<Message> {
        let mut dropped = Vec::new();
        let mut kept = VecDeque::new();
        for message in std::mem::take(&mut self.network.queue) {
            if select(&message) {
                dropped.push(message);
            } else {
                kept.push_back(message);
            }
        }
        self.network.queue = kept;
        dropped
    }

    /// Steps one message into its recipient, unless a fault drops it or the recipient is
    /// down; returns whether it was stepped.
    ///
    /// An `InstallSnapshot` stands for the whole transfer of the snapshot: the recipient
    /// stores the snapshot before its core sees the message, and the sender's core learns
    /// whether the transfer finished or failed, as runtimes report it.
    pub fn deliver(&mut self, message: Message) -> bool {
        let snapshot = match &message.body {
            MessageBody::InstallSnapshot { snapshot } => Some(snapshot.clone()),
            _ => None,
        };
        let delivered = self.step_into_recipient(message.clone(), snapshot.as_ref());
        if snapshot.is_some() {
            let outcome = if delivered {
                SnapshotTransfer::Finished
            } else {
                SnapshotTransfer::Failed
            };
            if let Some(sender) = self
                .replicas
                .get_mut(&message.from)
                .and_then(|replica| replica.node.as_mut())
            {
                sender.report_snapshot(message.to, outcome);
            }
        }
        delivered
    }

    fn step_into_recipient(&mut self, message: Message, snapshot: Option<&SnapshotMeta>) -> bool {
        if self.network.blocks(&message) {
            return false;
        }
        let Some(replica) = self.replicas.get_mut(&message.to) else {
            return false;
        };
        let Some(node) = replica.node.as_mut() else {
            return false;
        };
        if let Some(snapshot) = snapshot {
            replica.durable.store_snapshot(snapshot.clone());
        }
        let result = node.step(message.clone());
        self.deliveries.push(Delivery { message, result });
        true
    }

    /// Cuts the link from `from` to `to`, one way.
    pub fn cut(&mut self, from: u64, to: u64) {
        self.network.cut_links.insert((NodeId(from), NodeId(to)));
    }

    /// Cuts the links between `a` and `b` both ways.
    pub fn cut_both(&mut self, a: u64, b: u64) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other.0 != id {
                self.cut_both(id, other.0);
            }
        }
    }

    /// Cuts every link between nodes of different groups; links inside a group stay.
    /// Nodes in no group are cut from everyone.
    pub fn partition(&mut self, groups: &[&[u64]]) {
        let group_of = |id: u64| groups.iter().position(|group| group.contains(&id));
        let ids = self.ids();
        for a in &ids {
            for b in &ids {
                if a == b {
                    continue;
                }
                let same_group = match (group_of(a.0), group_of(b.0)) {
                    (Some(x), Some(y)) => x == y,
                    _ => false,
                };
                if !same_group {
                    self.cut(a.0, b.0);
                }
            }
        }
    }

    /// Restores every cut link; drop rules stay.
    pub fn heal(&mut self) {
        self.network.cut_links.clear();
    }

    /// Drops every message for which `rule` returns true when its turn for delivery comes,
    /// until the rule is removed.
    pub fn add_drop_rule(&mut self, rule: impl Fn(&Message) -> bool + 'static) -> DropRuleId {
        let id = DropRuleId(self.network.next_rule_id);
        self.network.next_rule_id += 1;
        self.network.drop_rules.insert(id, Box::new(rule));
        id
    }

    pub fn remove_drop_rule(&mut self, id: DropRuleId) {
        self.network.drop_rules.remove(&id);
    }

    pub fn clear_drop_rules(&mut self) {
        self.network.drop_rules.clear();
    }

    // ----- crashes -----

    /// Stops node `id`: its replica, unpersisted writes, held messages and state machine
    /// are lost, and a pause of its persistence ends. Its storage and the messages it
    /// already sent stay.
    pub fn crash(&mut self, id: u64) {
        let replica = self.replica_mut(NodeId(id));
        assert!(replica.node.is_some(), "node {id} is already crashed");
        replica.node = None;
        replica.pending_writes.clear();
        replica.persistence_paused = false;
        replica.applied.clear();
        replica.crash_count += 1;
    }

    /// Starts node `id` again from its storage with `RaftNode::new`.
    ///
    /// # Panics
    ///
    /// Panics when the node is up or the core rejects its durable state.
    pub fn restart(&mut self, id: u64) {
        let replica = self.replica_mut(NodeId(id));
        assert!(replica.node.is_none(), "node {id} is up; crash it first");
        let restored = replica.durable.restore(replica.founding);
        replica.snapshot_applied_through = restored.applied;
        let node = RaftNode::new(replica.config.clone(), restored)
            .unwrap_or_else(|error| panic!("node {id} cannot restart: {error}"));
        replica.node = Some(node);
    }

    /// Wipes node `id`'s storage, as when its data directory is lost. The node must be
    /// crashed; restart it afterwards to bring it back with an empty disk, no longer as a
    /// founding member, so that it catches up.
    pub fn wipe(&mut self, id: u64) {
        let replica = self.replica_mut(NodeId(id));
        assert!(replica.node.is_none(), "node {id} is up; crash it first");
        replica.durable = DurableState::default();
        replica.founding = false;
        replica.snapshot_applied_through = LogIndex(0);
    }

    /// Adds node `id` to the harness with empty storage, configured as a learner beside
    /// `voters`, as a fresh machine that is about to join the group. The group learns of it
    /// only through a membership change.
    pub fn add_node(&mut self, id: u64, voters: &[u64]) {
        let membership = Membership::with_voters_and_learners(
            voters.iter().map(|voter| NodeId(*voter)),
            [NodeId(id)],
        );
        let mut config = Config::new(NodeId(id), membership);
        if let Some(existing) = self.replicas.values().next() {
            let template = &existing.config;
            config.election_timeout_ticks_min = template.election_timeout_ticks_min;
            config.election_timeout_ticks_max = template.election_timeout_ticks_max;
            config.heartbeat_interval_ticks = template.heartbeat_interval_ticks;
            config.pre_vote = template.pre_vote;
            config.check_quorum = template.check_quorum;
        }
        let node = RaftNode::new(config.clone(), RestoredState::default())
            .unwrap_or_else(|error| panic!("cannot create node {id}: {error}"));
        self.replicas.insert(
            NodeId(id),
            Replica {
                config,
                node: Some(node),
                durable: DurableState::default(),
                persistence_paused: false,
                pending_writes: VecDeque::new(),
                applied: Vec::new(),
                applied_ever: Vec::new(),
                read_states: Vec::new(),
                dropped_reads: Vec::new(),
                crash_count: 0,
                snapshot_applied_through: LogIndex(0),
                founding: false,
            },
        );
    }

    /// Takes a snapshot of node `id` at its applied index, stores it, and compacts the
    /// core's and the storage's log up to `keep_entries` entries before it; returns the
    /// snapshot.
    ///
    /// # Panics
    ///
    /// Panics when the node is down or the core refuses the snapshot.
    pub fn snapshot(&mut self, id: u64, keep_entries: u64) -> SnapshotMeta {
        let replica = self.replica_mut(NodeId(id));
        let node = replica.node_mut();
        let applied = node.applied_index();
        let meta = node
            .snapshot_meta(applied)
            .unwrap_or_else(|| panic!("node {id} cannot describe a snapshot at {applied}"));
        let through = LogIndex(applied.0.saturating_sub(keep_entries));
        node.compact(meta.clone(), through)
            .unwrap_or_else(|error| panic!("node {id} refused its snapshot: {error}"));
        let compacted_through = node.first_index().prev();
        replica.durable.store_snapshot(meta.clone());
        replica.durable.compact(compacted_through);
        meta
    }

    // ----- composite steps -----

    /// Handles readies and delivers messages until no node has a ready and no message is
    /// queued; returns how many messages were stepped.
    ///
    /// # Panics
    ///
    /// Panics when the cluster keeps exchanging messages for `MAX_STABILIZE_ROUNDS`
    /// rounds without a tick.
    pub fn stabilize(&mut self) -> usize {
        let mut delivered = 0;
        for _ in 0..MAX_STABILIZE_ROUNDS {
            let readies = self.process_all_readies();
            let round = self.deliver_queued();
            delivered += round;
            if readies == 0 && round == 0 && self.network.queue.is_empty() {
                return delivered;
            }
        }
        panic!("the cluster did not settle within {MAX_STABILIZE_ROUNDS} rounds");
    }

    /// Ticks all live nodes until one leads and has committed an entry of its term;
    /// returns its id.
    ///
    /// # Panics
    ///
    /// Panics when no such leader emerges within `max_ticks` ticks.
    pub fn run_until_leader(&mut self, max_ticks: u32) -> u64 {
        self.stabilize();
        for _ in 0..max_ticks {
            if let Some(leader) = self.settled_leader() {
                return leader;
            }
            self.tick_all();
            self.stabilize();
        }
        self.settled_leader()
            .unwrap_or_else(|| panic!("no leader within {max_ticks} ticks"))
    }

    fn settled_leader(&self) -> Option<u64> {
        let leader = self.leader()?;
        let node = self.node(leader);
        let commit_term = node.entry(node.commit_index()).map(|entry| entry.term);
        (commit_term == Some(node.term())).then_some(leader)
    }

    /// Ticks only node `id`, stabilizing after each tick, until it is leader. Other nodes
    /// do not tick, so their election timers stay where they were.
    ///
    /// # Panics
    ///
    /// Panics when the node does not win within `max_ticks` ticks.
    pub fn elect(&mut self, id: u64, max_ticks: u32) {
        self.stabilize();
        for _ in 0..max_ticks {
            if self.node(id).role() == Role::Leader {
                return;
            }
            self.tick(id);
            self.stabilize();
        }
        let role = self.node(id).role();
        assert_eq!(
            role,
            Role::Leader,
            "node {id} did not become leader within {max_ticks} ticks"
        );
    }

    /// Ticks only node `id` until it becomes leader, handling readies and delivering
    /// messages, and returns as soon as it leads: before it takes the `Ready` that carries
    /// its first `AppendEntries`, so the test decides what happens to them.
    ///
    /// # Panics
    ///
    /// Panics when the node does not win within `max_ticks` ticks.
    pub fn win_election(&mut self, id: u64, max_ticks: u32) {
        for _ in 0..max_ticks {
            self.tick(id);
            loop {
                if self.node(id).role() == Role::Leader {
                    return;
                }
                let readies = self.process_all_readies();
                if self.node(id).role() == Role::Leader {
                    return;
                }
                let delivered = self.deliver_queued();
                if readies == 0 && delivered == 0 && self.network.queue.is_empty() {
                    break;
                }
            }
        }
        panic!("node {id} did not become leader within {max_ticks} ticks");
    }

    /// Proposes `data` at the current leader and stabilizes; returns where it was
    /// appended.
    ///
    /// # Panics
    ///
    /// Panics when there is no leader, the leader rejects the proposal, or the leader has
    /// not applied the entry once the cluster settles.
    pub fn propose_and_commit(&mut self, data: impl Into<Bytes>) -> ProposalId {
        let leader = self.leader().expect("propose_and_commit needs a leader");
        let proposal = self
            .node_mut(leader)
            .propose(data.into())
            .unwrap_or_else(|error| panic!("leader {leader} rejected the proposal: {error}"));
        self.stabilize();
        assert!(
            self.has_applied(leader, proposal),
            "leader {leader} did not apply {proposal:?}; applied up to {}",
            self.node(leader).applied_index()
        );
        proposal
    }

    /// Returns whether node `id` applied the entry that `proposal` appended, in its current
    /// run.
    pub fn has_applied(&self, id: u64, proposal: ProposalId) -> bool {
        self.applied(id)
            .iter()
            .any(|entry| entry.index == proposal.index && entry.term == proposal.term)
    }
}
