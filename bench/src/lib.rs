//! An in-memory cluster of [`RaftNode`]s for benchmarks of the consensus core alone, and in
//! [`wal`] the drivers of the write-ahead log benchmarks.
//!
//! [`Cluster`] runs every replica of one Raft group in the calling thread. Messages pass
//! by function call: each `Ready`'s messages go to per-node inboxes, and
//! [`RaftNode::step`] delivers them on the next visit to that node. There is no network,
//! no serialization and no disk, so what a benchmark measures is the core itself:
//!
//! - Persistence is instant. A `Ready`'s entries and hard state count as durable as soon
//!   as the `Ready` is taken, so the driver calls [`RaftNode::on_persisted`] at once and
//!   then delivers `messages_after_persist`. Storage keeps only counters and the last hard
//!   state, because the core keeps every entry in its own log and nothing reads storage
//!   back here.
//! - Applying counts the committed `Normal` entries and their payload bytes, then drops
//!   them, as a state machine would once it has applied them.
//! - Time advances only through [`Cluster::tick_all`], which the driver calls only while
//!   electing a leader. Each replica's election timeouts come from its
//!   `Config::random_seed`, so runs are deterministic: no wall clock and no OS randomness.
//!
//! ```
//! use bytes::Bytes;
//! use shardraft_bench::Cluster;
//!
//! let mut cluster = Cluster::with_leader(3).unwrap();
//! let payload = Bytes::from_static(&[7; 16]);
//! let round = cluster.propose_batch(256, &payload).unwrap();
//! assert_eq!(round.entries, 256);
//! assert_eq!(round.bytes, 256 * 16);
//! ```

pub mod harness;
pub mod wal;

use bytes::Bytes;
use shardraft_raft::{
    Config, EntryKind, HardState, LogIndex, Membership, Message, NewNodeError, NodeId,
    ProposeError, RaftNode, Ready, RestoredState, Role,
};

/// Payload size of the proposals in the commit benchmark, in bytes.
pub const PAYLOAD_BYTES: usize = 16;

/// Maximum passes over all nodes that [`Cluster::drive`] makes before it reports a stall. A
/// round of proposals settles in a handful of passes, so reaching this means that the
/// cluster makes no progress.
const MAX_DRIVE_PASSES: usize = 10_000;

/// Maximum ticks [`Cluster::elect_leader`] spends before it gives up. With the default 10 to
/// 20 tick election timeout a first election takes a few dozen ticks.
const MAX_ELECTION_TICKS: usize = 1_000;

/// A failure of the cluster driver.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("a cluster needs at least 1 node, got 0")]
    Empty,
    #[error("building a node failed: {0}")]
    NewNode(#[from] NewNodeError),
    #[error("no stable leader after {ticks} ticks; check the election timeouts of the configs")]
    NoLeader { ticks: usize },
    #[error("the cluster has no leader; call elect_leader first")]
    NotElected,
    #[error("the leader rejected a proposal: {0}")]
    Propose(#[from] ProposeError),
    #[error("still busy after {passes} passes over all nodes; the cluster does not settle")]
    Stalled { passes: usize },
    #[error(
        "node {node} applied up to {applied} and stopped, expected {expected}; an entry \
         committed at the leader did not reach every node"
    )]
    NotApplied {
        node: NodeId,
        applied: LogIndex,
        expected: LogIndex,
    },
    #[error("message addressed to {to}, which is not a node of this cluster")]
    UnknownRecipient { to: NodeId },
}

/// Counts of one replica's runtime work since the cluster was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// `Ready` batches taken.
    pub readies: u64,
    /// Entries handed to storage, the leader's no-op entries included.
    pub persisted_entries: u64,
    /// Messages this replica received.
    pub messages_received: u64,
    /// Messages that `RaftNode::step` rejected or ignored.
    pub rejected_messages: u64,
    /// `Normal` entries applied.
    pub applied_entries: u64,
    /// Payload bytes of the applied `Normal` entries.
    pub applied_bytes: u64,
}

/// The outcome of one [`Cluster::propose_batch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundCounts {
    /// Proposals committed and applied on every node.
    pub entries: u64,
    /// Payload bytes of those proposals.
    pub bytes: u64,
    /// Messages delivered between nodes during the round.
    pub messages: u64,
    /// `Ready` batches taken on all nodes during the round.
    pub readies: u64,
}

/// The runtime side of one replica: its inbox and the state its storage would hold.
#[derive(Debug, Default)]
struct NodeRuntime {
    inbox: Vec<Message>,
    hard_state: HardState,
    counters: NodeCounters,
}

/// Every replica of one Raft group, driven in the calling thread.
#[derive(Debug)]
pub struct Cluster {
    nodes: Vec<RaftNode>,
    runtimes: Vec<NodeRuntime>,
    leader: Option<usize>,
}

impl Cluster {
    /// Builds `size` voters with ids 1 to `size` and default configs. None leads yet.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::Empty`] for a size of 0 and [`ClusterError::NewNode`] when
    /// the core rejects a config.
    pub fn new(size: usize) -> Result<Cluster, ClusterError> {
        Cluster::with_config(size, |_| {})
    }

    /// Builds `size` voters with ids 1 to `size`, letting `adjust` change each default
    /// config before its node is built.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::Empty`] for a size of 0 and [`ClusterError::NewNode`] when
    /// the core rejects a config.
    pub fn with_config(
        size: usize,
        mut adjust: impl FnMut(&mut Config),
    ) -> Result<Cluster, ClusterError> {
        if size == 0 {
            return Err(ClusterError::Empty);
        }
        let ids = (1..=size as u64).map(NodeId);
        let membership = Membership::with_voters(ids.clone());
        let mut nodes = Vec::with_capacity(size);
        for id in ids {
            let mut config = Config::new(id, membership.clone());
            adjust(&mut config);
            nodes.push(RaftNode::new(config, RestoredState::default())?);
        }
        let runtimes = (0..size).map(|_| NodeRuntime::default()).collect();
        Ok(Cluster {
            nodes,
            runtimes,
            leader: None,
        })
    }

    /// Builds `size` voters with default configs and elects a leader.
    ///
    /// # Errors
    ///
    /// Returns the errors of [`Cluster::new`] and [`Cluster::elect_leader`].
    pub fn with_leader(size: usize) -> Result<Cluster, ClusterError> {
        let mut cluster = Cluster::new(size)?;
        cluster.elect_leader()?;
        Ok(cluster)
    }

    /// Ticks every node until one leads and every node follows it, then drives the cluster
    /// until the leader's no-op entry is applied everywhere. Returns the leader's id.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::NoLeader`] when no stable leader emerges within
    /// 1,000 ticks, and the errors of [`Cluster::drive`].
    pub fn elect_leader(&mut self) -> Result<NodeId, ClusterError> {
        for _ in 0..MAX_ELECTION_TICKS {
            self.tick_all();
            self.drive()?;
            if let Some(leader) = self.find_stable_leader() {
                self.leader = Some(leader);
                let leader_id = self.nodes[leader].id();
                self.wait_applied(self.nodes[leader].last_index())?;
                return Ok(leader_id);
            }
        }
        Err(ClusterError::NoLeader {
            ticks: MAX_ELECTION_TICKS,
        })
    }

    /// Advances logical time on every node by one tick.
    pub fn tick_all(&mut self) {
        for node in &mut self.nodes {
            node.tick();
        }
    }

    /// Proposes `count` copies of `payload` at the leader, then drives the cluster until
    /// every node has applied all of them.
    ///
    /// Each proposal is a clone of `payload`, so proposals share its buffer as entries
    /// built from one client request would. The core clones entries when it sends and
    /// applies them, so a heap-backed `payload` (such as one from
    /// `Bytes::copy_from_slice`) adds the reference counting a real payload costs.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::NotElected`] before a leader is elected,
    /// [`ClusterError::Propose`] when the leader rejects a proposal, and the errors of
    /// [`Cluster::drive`]. Proposals accepted before a rejection stay in the log.
    pub fn propose_batch(
        &mut self,
        count: usize,
        payload: &Bytes,
    ) -> Result<RoundCounts, ClusterError> {
        let leader = self.leader.ok_or(ClusterError::NotElected)?;
        let before = self.totals();
        let mut last = self.nodes[leader].last_index();
        for _ in 0..count {
            last = self.nodes[leader].propose(payload.clone())?.index;
        }
        self.wait_applied(last)?;
        let after = self.totals();

        let entries = after.applied_entries - before.applied_entries;
        let bytes = after.applied_bytes - before.applied_bytes;
        let node_count = self.nodes.len() as u64;
        debug_assert_eq!(entries, count as u64 * node_count);
        Ok(RoundCounts {
            entries: entries / node_count,
            bytes: bytes / node_count,
            messages: after.messages_received - before.messages_received,
            readies: after.readies - before.readies,
        })
    }

    /// Delivers messages and handles `Ready` batches on every node until no node has
    /// anything left to do.
    ///
    /// # Errors
    ///
    /// Returns [`ClusterError::Stalled`] when the cluster is still busy after 10,000
    /// passes, and [`ClusterError::UnknownRecipient`] for a message to a node outside
    /// the cluster.
    pub fn drive(&mut self) -> Result<(), ClusterError> {
        for _ in 0..MAX_DRIVE_PASSES {
            let mut busy = false;
            for index in 0..self.nodes.len() {
                busy |= self.deliver_inbox(index);
                busy |= self.handle_readies(index)?;
            }
            if !busy {
                return Ok(());
            }
        }
        Err(ClusterError::Stalled {
            passes: MAX_DRIVE_PASSES,
        })
    }

    /// Returns the nodes, in id order.
    pub fn nodes(&self) -> &[RaftNode] {
        &self.nodes
    }

    /// Returns the node elected by [`Cluster::elect_leader`], if any.
    pub fn leader(&self) -> Option<&RaftNode> {
        self.leader.map(|index| &self.nodes[index])
    }

    /// Returns the counters of the node with id `id`.
    pub fn counters(&self, id: NodeId) -> Option<NodeCounters> {
        let index = self.index_of(id)?;
        Some(self.runtimes[index].counters)
    }

    /// Returns the hard state last persisted by the node with id `id`.
    pub fn persisted_hard_state(&self, id: NodeId) -> Option<HardState> {
        let index = self.index_of(id)?;
        Some(self.runtimes[index].hard_state)
    }

    /// Drives the cluster until it settles, then checks that every node applied up to
    /// `index`.
    fn wait_applied(&mut self, index: LogIndex) -> Result<(), ClusterError> {
        self.drive()?;
        for node in &self.nodes {
            if node.applied_index() < index {
                return Err(ClusterError::NotApplied {
                    node: node.id(),
                    applied: node.applied_index(),
                    expected: index,
                });
            }
        }
        Ok(())
    }

    /// Finds a node that leads while every other node follows it in the same term.
    fn find_stable_leader(&self) -> Option<usize> {
        let leader = self
            .nodes
            .iter()
            .position(|node| node.role() == Role::Leader)?;
        let leader_id = self.nodes[leader].id();
        let term = self.nodes[leader].term();
        let followed = self
            .nodes
            .iter()
            .all(|node| node.term() == term && node.leader() == Some(leader_id));
        followed.then_some(leader)
    }

    /// Steps every message waiting for node `index` and returns whether there was any.
    fn deliver_inbox(&mut self, index: usize) -> bool {
        // Taking the inbox out keeps its allocation for the next round. No node sends to
        // itself, so nothing is pushed to it while it drains.
        let mut inbox = core::mem::take(&mut self.runtimes[index].inbox);
        let delivered = !inbox.is_empty();
        let node = &mut self.nodes[index];
        let counters = &mut self.runtimes[index].counters;
        for message in inbox.drain(..) {
            counters.messages_received += 1;
            if node.step(message).is_err() {
                counters.rejected_messages += 1;
            }
        }
        self.runtimes[index].inbox = inbox;
        delivered
    }

    /// Handles every `Ready` that node `index` has and returns whether there was any.
    fn handle_readies(&mut self, index: usize) -> Result<bool, ClusterError> {
        let mut handled = false;
        while let Some(ready) = self.nodes[index].ready() {
            handled = true;
            self.handle_ready(index, ready)?;
        }
        Ok(handled)
    }

    /// Sends, persists and applies one `Ready`, in the order the core requires.
    fn handle_ready(&mut self, index: usize, ready: Ready) -> Result<(), ClusterError> {
        let Ready {
            number,
            hard_state,
            entries,
            messages,
            messages_after_persist,
            committed_entries,
            ..
        } = ready;
        self.route(messages)?;

        let runtime = &mut self.runtimes[index];
        runtime.counters.readies += 1;
        if let Some(hard_state) = hard_state {
            runtime.hard_state = hard_state;
        }
        runtime.counters.persisted_entries += entries.len() as u64;
        drop(entries);
        self.nodes[index].on_persisted(number);
        self.route(messages_after_persist)?;

        let counters = &mut self.runtimes[index].counters;
        for entry in committed_entries {
            if entry.kind == EntryKind::Normal {
                counters.applied_entries += 1;
                counters.applied_bytes += entry.data.len() as u64;
            }
        }
        Ok(())
    }

    /// Puts each message in its recipient's inbox.
    fn route(&mut self, messages: Vec<Message>) -> Result<(), ClusterError> {
        for message in messages {
            let to = message.to;
            let index = self
                .index_of(to)
                .ok_or(ClusterError::UnknownRecipient { to })?;
            self.runtimes[index].inbox.push(message);
        }
        Ok(())
    }

    fn index_of(&self, id: NodeId) -> Option<usize> {
        let index = usize::try_from(id.0.checked_sub(1)?).ok()?;
        (index < self.nodes.len()).then_some(index)
    }

    /// Adds up the counters of all nodes.
    fn totals(&self) -> NodeCounters {
        let mut totals = NodeCounters::default();
        for runtime in &self.runtimes {
            let counters = runtime.counters;
            totals.readies += counters.readies;
            totals.persisted_entries += counters.persisted_entries;
            totals.messages_received += counters.messages_received;
            totals.rejected_messages += counters.rejected_messages;
            totals.applied_entries += counters.applied_entries;
            totals.applied_bytes += counters.applied_bytes;
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Bytes {
        Bytes::copy_from_slice(&[0xab; PAYLOAD_BYTES])
    }

    #[test]
    fn elect_leader_in_three_nodes() {
        let mut cluster = Cluster::new(3).unwrap();
        let leader = cluster.elect_leader().unwrap();
        assert_eq!(cluster.leader().map(RaftNode::id), Some(leader));
        for node in cluster.nodes() {
            assert_eq!(node.leader(), Some(leader));
            // The leader's no-op entry is applied everywhere before the first proposal.
            assert_eq!(node.applied_index(), node.last_index());
        }
    }

    #[test]
    fn propose_before_election_fails() {
        let mut cluster = Cluster::new(3).unwrap();
        let result = cluster.propose_batch(1, &payload());
        assert!(matches!(result, Err(ClusterError::NotElected)));
    }

    #[test]
    fn empty_cluster_rejected() {
        assert!(matches!(Cluster::new(0), Err(ClusterError::Empty)));
    }

    #[test]
    fn batches_apply_on_every_node() {
        let mut cluster = Cluster::with_leader(3).unwrap();
        // Votes that arrive after their election ended are ignored, so only later rejections
        // count.
        let rejected_in_election: Vec<u64> = cluster
            .nodes()
            .iter()
            .map(|node| cluster.counters(node.id()).unwrap().rejected_messages)
            .collect();
        let mut proposed = 0;
        for count in [1, 16, 256, 1024, 3] {
            let round = cluster.propose_batch(count, &payload()).unwrap();
            proposed += count as u64;
            assert_eq!(round.entries, count as u64);
            assert_eq!(round.bytes, (count * PAYLOAD_BYTES) as u64);
            assert!(round.messages > 0);
            assert!(round.readies > 0);
        }
        let last_index = cluster.leader().unwrap().last_index();
        for (node, rejected_before) in cluster.nodes().iter().zip(rejected_in_election) {
            assert_eq!(node.applied_index(), last_index);
            assert_eq!(node.commit_index(), last_index);
            let counters = cluster.counters(node.id()).unwrap();
            assert_eq!(counters.applied_entries, proposed);
            assert_eq!(counters.applied_bytes, proposed * PAYLOAD_BYTES as u64);
            assert_eq!(counters.rejected_messages, rejected_before);
            // Every entry, the no-op included, is persisted exactly once.
            assert_eq!(counters.persisted_entries, last_index.0);
            let hard_state = cluster.persisted_hard_state(node.id()).unwrap();
            assert_eq!(hard_state.commit, last_index);
        }
    }

    #[test]
    fn single_node_commits_alone() {
        let mut cluster = Cluster::with_leader(1).unwrap();
        let round = cluster.propose_batch(10, &payload()).unwrap();
        assert_eq!(round.entries, 10);
        assert_eq!(round.messages, 0);
    }

    #[test]
    fn five_nodes_commit() {
        let mut cluster = Cluster::with_leader(5).unwrap();
        let round = cluster.propose_batch(100, &payload()).unwrap();
        assert_eq!(round.entries, 100);
    }

    #[test]
    fn runs_are_deterministic() {
        let run = || {
            let mut cluster = Cluster::with_leader(3).unwrap();
            let round = cluster.propose_batch(64, &payload()).unwrap();
            (cluster.leader().unwrap().id(), round)
        };
        assert_eq!(run(), run());
    }
}
