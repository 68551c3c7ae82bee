//! ReadIndex reads at the leader, confirmed in rounds.
//!
//! A read is linearizable when the leader serves it at an index it committed before the
//! read arrived, having then confirmed that it was still leader. Reads that arrive between
//! two `Ready` batches form one round, and one heartbeat to every voter confirms the whole
//! round: an acknowledgement of round `r` from a quorum proves that the leader was still
//! leader after every read of rounds up to `r` arrived, because each voter answered a
//! heartbeat that was sent after them.
//!
//! While a round awaits its quorum, new reads may wait and join the next round instead of
//! starting one of their own (`Config::read_batch_max`). That is safe for the same reason:
//! the round they join is sent after they arrived, and each keeps the commit index of its
//! arrival as its read index.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::types::LogIndex;

/// A read the runtime may serve once its state machine has applied `read_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's id for the read, as passed to `RaftNode::read_index`.
    pub context: u64,
    /// Serve the read from a state machine that has applied at least this index.
    pub read_index: LogIndex,
}

#[derive(Debug)]
struct Round {
    number: u64,
    reads: Vec<ReadState>,
}

#[derive(Debug, Default)]
pub(crate) struct ReadQueue {
    /// Reads that arrived before the leader committed an entry of its own term: until then
    /// it cannot know the group's commit index.
    waiting_for_commit: Vec<u64>,
    /// Reads not yet covered by a heartbeat round.
    open: Vec<ReadState>,
    /// Rounds sent and not yet confirmed, oldest first.
    sent: VecDeque<Round>,
    next_round: u64,
    pending: usize,
    /// Set when the leader needs a round sealed after now even without reads: a follower
    /// that reported catching up is released only by such a round.
    round_requested: bool,
}

impl ReadQueue {
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// Returns whether a round should be sealed now: one was requested, or reads are open
    /// and either no earlier round awaits its quorum or `read_batch_max` reads are open.
    /// Otherwise open reads wait for the earlier round's acknowledgements, which periodic
    /// heartbeats request again, so the wait is bounded.
    pub(crate) fn round_due(&self, read_batch_max: usize) -> bool {
        self.round_requested
            || !self.open.is_empty() && (self.sent.is_empty() || self.open.len() >= read_batch_max)
    }

    /// Asks for a round to be sealed with the next `Ready`, even if no read is open.
    pub(crate) fn request_round(&mut self) {
        self.round_requested = true;
    }

    pub(crate) fn push_waiting_for_commit(&mut self, context: u64) {
        self.waiting_for_commit.push(context);
        self.pending += 1;
    }

    pub(crate) fn push_open(&mut self, read: ReadState) {
        self.open.push(read);
        self.pending += 1;
    }

    /// Moves the reads that waited for the leader's first commit into the open round, at
    /// the commit index now known.
    pub(crate) fn release_waiting(&mut self, committed: LogIndex) {
        for context in self.waiting_for_commit.drain(..) {
            self.open.push(ReadState {
                context,
                read_index: committed,
            });
        }
    }

    /// Closes the open round and returns its number, to be sent in a heartbeat.
    pub(crate) fn seal_open_round(&mut self) -> u64 {
        self.next_round += 1;
        self.round_requested = false;
        let number = self.next_round;
        let reads = core::mem::take(&mut self.open);
        self.sent.push_back(Round { number, reads });
        number
    }

    /// The newest round sent and not yet confirmed; periodic heartbeats repeat it so that a
    /// lost heartbeat does not stall the round.
    pub(crate) fn newest_unconfirmed_round(&self) -> Option<u64> {
        self.sent.back().map(|round| round.number)
    }

    /// The number of the newest round sealed so far; 0 before the first.
    pub(crate) fn newest_round(&self) -> u64 {
        self.next_round
    }

    /// Hands out every read of the rounds up to `confirmed_round`.
    pub(crate) fn confirm_through(&mut self, confirmed_round: u64, out: &mut Vec<ReadState>) {
        while let Some(round) = self.sent.front() {
            if round.number > confirmed_round {
                break;
            }
            if let Some(round) = self.sent.pop_front() {
                self.pending -= round.reads.len();
                out.extend(round.reads);
            }
        }
    }

    /// Hands out every open read without a round, for a group with a single voter.
    pub(crate) fn confirm_open(&mut self, out: &mut Vec<ReadState>) {
        self.round_requested = false;
        self.pending -= self.open.len();
        out.append(&mut self.open);
    }

    /// Drops every pending read, returning their contexts, when leadership is lost.
    pub(crate) fn drain_all(&mut self, dropped: &mut Vec<u64>) {
        self.round_requested = false;
        dropped.append(&mut self.waiting_for_commit);
        dropped.extend(self.open.drain(..).map(|read| read.context));
        for round in self.sent.drain(..) {
            dropped.extend(round.reads.into_iter().map(|read| read.context));
        }
        self.pending = 0;
    }
}
