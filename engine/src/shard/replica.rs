//! One group hosted by a shard: its Raft core, its state machine, and the requests waiting
//! on it.
//!
//! The committed entries of a `Ready` are applied in one pass and the replies to their
//! proposers sent in a second, so that one clock read before and after each pass times all
//! of them for the write stages.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use shardraft_raft::{
    Entry, HardState, LogIndex, ProposeError, RaftNode, ReadIndexError, Ready, ReadyNumber,
    RoleState, Term,
};

use super::write_marks::WriteMarks;
use crate::log::GroupId;
use crate::metrics::{
    LatencyHistogram, ProposalCounts, StageHistogram, WritePoints, WriteStageLatencies,
};
use crate::node::{Applied, NodeError, ProposalReply, ReadFn};
use crate::state_machine::StateMachine;

/// When a proposal was sent and taken, the first two points of its write stages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProposalStart {
    /// `NodeHandle::propose` was called, on the proposer's thread.
    pub sent_at: Instant,
    /// The turn of the shard's loop that took the proposal started.
    pub taken_at: Instant,
}

/// A proposal waiting for its entry to be applied.
pub(crate) struct PendingProposal<S: StateMachine> {
    term: Term,
    reply: ProposalReply<S>,
    expires_at_tick: u64,
    start: ProposalStart,
}

/// The reply to a proposal whose entry was applied, held until the rest of the `Ready`'s
/// committed entries are applied.
struct QueuedReply<S: StateMachine> {
    reply: ProposalReply<S>,
    result: Result<Applied<S::Output>, NodeError>,
}

/// A write whose proposer got the applied result, kept until the reply's time is known.
#[derive(Clone, Copy, Debug)]
struct CompletedWrite {
    index: LogIndex,
    start: ProposalStart,
}

/// What a group applied since its last snapshot, which decides when it takes the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AppliedSinceSnapshot {
    pub entries: u64,
    /// Payload bytes of those entries.
    pub bytes: u64,
}

/// A linearizable read waiting for its ReadIndex round, then for the state machine to
/// reach the read index.
struct PendingRead<S> {
    read: ReadFn<S>,
    expires_at_tick: u64,
    /// Start of the shard loop's turn that took the read.
    taken_at: Instant,
}

pub(crate) struct Replica<S: StateMachine> {
    pub group: GroupId,
    pub core: RaftNode,
    pub state_machine: S,
    proposals: HashMap<LogIndex, PendingProposal<S>>,
    /// Reads whose ReadIndex round is still open, by context.
    reads_confirming: HashMap<u64, PendingRead<S>>,
    /// Confirmed reads waiting for the state machine, by read index and context.
    reads_applying: BTreeMap<(LogIndex, u64), PendingRead<S>>,
    next_read_context: u64,
    pub role_state: Option<RoleState>,
    /// The `group` span that the core's and the replica's log lines carry.
    pub span: tracing::Span,
    /// The hard state last handed to the log.
    pub submitted_hard_state: HardState,
    /// A newer hard state that differs from the submitted one only in its commit index. It
    /// is written with the next batch that goes to disk anyway, because a stale commit
    /// index after a crash only delays applying until the leader repeats it.
    pub deferred_hard_state: Option<HardState>,
    /// Proposals by how they ended.
    pub proposal_counts: ProposalCounts,
    /// Time from taking a proposal to applying it, for proposals that took effect.
    pub commit_latency: LatencyHistogram,
    /// Time from taking a linearizable read to serving it from the state machine, for
    /// reads this replica served as the leader.
    pub read_latency: StageHistogram,
    /// Log times of this group's entries while proposals wait on them.
    pub write_marks: WriteMarks,
    /// Replies to the committed entries being applied; empty between `Ready`s.
    replies: Vec<QueuedReply<S>>,
    /// Writes whose replies are being sent; empty between `Ready`s.
    completed_writes: Vec<CompletedWrite>,
    /// See [`GroupMetrics::leader_changes`](crate::metrics::GroupMetrics::leader_changes).
    pub leader_changes: u64,
    /// The `Ready` that reported the end of catching up, until it is durable.
    pub catch_up_ended_at: Option<ReadyNumber>,
    /// Counted from the view of the last snapshot taken or installed.
    pub applied_since_snapshot: AppliedSinceSnapshot,
}

impl<S> Replica<S>
where
    S: StateMachine,
{
    pub fn new(group: GroupId, core: RaftNode, state_machine: S) -> Self {
        let core_hard_state = core.hard_state();
        Replica {
            group,
            core,
            state_machine,
            proposals: HashMap::new(),
            reads_confirming: HashMap::new(),
            reads_applying: BTreeMap::new(),
            next_read_context: 1,
            role_state: None,
            span: tracing::info_span!("group", group = group.0),
            submitted_hard_state: core_hard_state,
            deferred_hard_state: None,
            proposal_counts: ProposalCounts::default(),
            commit_latency: LatencyHistogram::default(),
            read_latency: StageHistogram::default(),
            write_marks: WriteMarks::default(),
            replies: Vec::new(),
            completed_writes: Vec::new(),
            leader_changes: 0,
            applied_since_snapshot: AppliedSinceSnapshot::default(),
            catch_up_ended_at: None,
        }
    }

    /// Returns whether the batch that ended catching up is durable with `number`, and
    /// forgets it if so.
    pub fn take_catch_up_ended(&mut self, number: ReadyNumber) -> bool {
        let durable = self
            .catch_up_ended_at
            .is_some_and(|ended_at| ended_at <= number);
        if durable {
            self.catch_up_ended_at = None;
        }
        durable
    }

    /// Records the role state the core reported, counting a leader change when it names a
    /// known leader in another (term, leader) pair than before.
    pub fn set_role_state(&mut self, role_state: RoleState) {
        let before = self.role_state.map(|state| (state.term, state.leader));
        if role_state.leader.is_some() && before != Some((role_state.term, role_state.leader)) {
            self.leader_changes += 1;
        }
        self.role_state = Some(role_state);
    }

    pub fn propose(
        &mut self,
        command: bytes::Bytes,
        reply: ProposalReply<S>,
        expires_at_tick: u64,
        start: ProposalStart,
    ) {
        let group = self.group;
        match self.core.propose(command) {
            Ok(id) => {
                let pending = PendingProposal {
                    term: id.term,
                    reply,
                    expires_at_tick,
                    start,
                };
                if let Some(replaced) = self.proposals.insert(id.index, pending) {
                    self.proposal_counts.dropped += 1;
                    let _ = replaced.reply.send(Err(NodeError::ProposalDropped {
                        group,
                        index: id.index,
                    }));
                }
            }
            Err(ProposeError::NotLeader { leader }) => {
                self.proposal_counts.not_leader += 1;
                let _ = reply.send(Err(NodeError::NotLeader { group, leader }));
            }
            Err(ProposeError::TransferInProgress { target }) => {
                self.proposal_counts.not_leader += 1;
                let _ = reply.send(Err(NodeError::NotLeader {
                    group,
                    leader: Some(target),
                }));
            }
            Err(error) => {
                self.proposal_counts.busy += 1;
                let _ = reply.send(Err(NodeError::Busy {
                    group,
                    reason: error.to_string(),
                }));
            }
        }
    }

    /// Starts a linearizable read that the shard's loop took in the turn that started at
    /// `taken_at`.
    pub fn read_linearizable(&mut self, read: ReadFn<S>, expires_at_tick: u64, taken_at: Instant) {
        let context = self.next_read_context;
        self.next_read_context += 1;
        let group = self.group;
        match self.core.read_index(context) {
            Ok(()) => {
                let pending = PendingRead {
                    read,
                    expires_at_tick,
                    taken_at,
                };
                self.reads_confirming.insert(context, pending);
            }
            Err(ReadIndexError::NotLeader { leader }) => {
                read(Err(NodeError::NotLeader { group, leader }));
            }
            Err(error) => read(Err(NodeError::Busy {
                group,
                reason: error.to_string(),
            })),
        }
    }

    /// Applies committed entries, answers the proposals they complete and the reads they
    /// make possible, and takes the confirmed and dropped reads of `ready`. The completed
    /// writes count in `stages`.
    ///
    /// # Errors
    /// The state machine's error, after the replies to the proposals of the entries applied
    /// before it were sent.
    pub fn apply_ready(
        &mut self,
        ready: &mut Ready,
        stages: &mut WriteStageLatencies,
    ) -> Result<(), String> {
        let entries = std::mem::take(&mut ready.committed_entries);
        // The commit point of the write stages, needed only when the entries may complete a
        // proposal.
        let committed_at = (!entries.is_empty() && self.has_pending_proposals()).then(Instant::now);
        let applied = entries.iter().try_for_each(|entry| self.apply(entry));
        self.send_replies(committed_at, stages);
        applied?;
        if let Some(last) = entries.last() {
            self.write_marks.retire_through(last.index);
        }
        for state in std::mem::take(&mut ready.read_states) {
            if let Some(pending) = self.reads_confirming.remove(&state.context) {
                self.reads_applying
                    .insert((state.read_index, state.context), pending);
            }
        }
        let group = self.group;
        for context in std::mem::take(&mut ready.dropped_reads) {
            if let Some(pending) = self.reads_confirming.remove(&context) {
                let leader = self.core.leader();
                (pending.read)(Err(NodeError::NotLeader { group, leader }));
            }
        }
        self.serve_applied_reads();
        Ok(())
    }

    /// Applies one entry and queues the reply to the proposal waiting on its index.
    fn apply(&mut self, entry: &Entry) -> Result<(), String> {
        let output = self
            .state_machine
            .apply(entry)
            .map_err(|error| format!("group {}: {error}", self.group))?;
        self.applied_since_snapshot.entries += 1;
        self.applied_since_snapshot.bytes += entry.data.len() as u64;
        let Some(pending) = self.proposals.remove(&entry.index) else {
            return Ok(());
        };
        let result = match output {
            Some(output) if pending.term == entry.term => {
                self.proposal_counts.applied += 1;
                self.completed_writes.push(CompletedWrite {
                    index: entry.index,
                    start: pending.start,
                });
                Ok(Applied {
                    index: entry.index,
                    output,
                })
            }
            _ => {
                self.proposal_counts.dropped += 1;
                Err(NodeError::ProposalDropped {
                    group: self.group,
                    index: entry.index,
                })
            }
        };
        self.replies.push(QueuedReply {
            reply: pending.reply,
            result,
        });
        Ok(())
    }

    /// Sends the queued replies, then records the write stages of the writes that took
    /// effect.
    fn send_replies(&mut self, committed_at: Option<Instant>, stages: &mut WriteStageLatencies) {
        if self.replies.is_empty() {
            return;
        }
        let applied_at = Instant::now();
        // Replies exist only if proposals were pending, which set `committed_at`.
        let committed_at = committed_at.unwrap_or(applied_at);
        for queued in self.replies.drain(..) {
            let _ = queued.reply.send(queued.result);
        }
        if self.completed_writes.is_empty() {
            return;
        }
        let answered_at = Instant::now();
        for write in self.completed_writes.drain(..) {
            let taken_at = write.start.taken_at;
            self.commit_latency
                .record(applied_at.saturating_duration_since(taken_at));
            // A write whose log times are unknown (its mark was dropped) is left out of
            // every stage, so that all stage histograms count the same writes.
            let Some(log) = self.write_marks.log_times(write.index) else {
                continue;
            };
            stages.record(&WritePoints {
                sent_at: write.start.sent_at,
                taken_at,
                submit_started_at: log.submission.started_at,
                submitted_at: log.submission.returned_at,
                durable_at: log.durable_at,
                committed_at,
                applied_at,
                answered_at,
            });
        }
    }

    fn serve_applied_reads(&mut self) {
        let applied = self.state_machine.applied_index();
        while let Some(entry) = self.reads_applying.first_entry() {
            if entry.key().0 > applied {
                break;
            }
            let pending = entry.remove();
            (pending.read)(Ok(&self.state_machine));
            self.read_latency.record(pending.taken_at.elapsed());
        }
    }

    /// Fails every request that has waited past its deadline.
    pub fn expire(&mut self, now_tick: u64, timeout_ms: u64) {
        let group = self.group;
        let timeout = || NodeError::Timeout { group, timeout_ms };
        let mut timed_out = 0;
        self.proposals.retain(|_, pending| {
            let keep = pending.expires_at_tick > now_tick;
            if !keep {
                timed_out += 1;
                let _ = pending.reply.send(Err(timeout()));
            }
            keep
        });
        self.proposal_counts.timeout += timed_out;
        let expired: Vec<u64> = self
            .reads_confirming
            .iter()
            .filter(|(_, pending)| pending.expires_at_tick <= now_tick)
            .map(|(context, _)| *context)
            .collect();
        for context in expired {
            if let Some(pending) = self.reads_confirming.remove(&context) {
                (pending.read)(Err(timeout()));
            }
        }
        let expired: Vec<(LogIndex, u64)> = self
            .reads_applying
            .iter()
            .filter(|(_, pending)| pending.expires_at_tick <= now_tick)
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            if let Some(pending) = self.reads_applying.remove(&key) {
                (pending.read)(Err(timeout()));
            }
        }
    }

    /// Fails every waiting request with `error`, when the shard stops.
    pub fn fail_all(&mut self, error: &NodeError) {
        for (_, pending) in self.proposals.drain() {
            let _ = pending.reply.send(Err(error.clone()));
        }
        for (_, pending) in self.reads_confirming.drain() {
            (pending.read)(Err(error.clone()));
        }
        while let Some((_, pending)) = self.reads_applying.pop_first() {
            (pending.read)(Err(error.clone()));
        }
    }

    pub fn has_pending_proposals(&self) -> bool {
        !self.proposals.is_empty()
    }

    pub fn has_waiting_requests(&self) -> bool {
        !self.proposals.is_empty()
            || !self.reads_confirming.is_empty()
            || !self.reads_applying.is_empty()
    }
}
