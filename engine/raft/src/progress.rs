//! The leader's record of each follower: how much of the log it is known to hold, what to
//! send next, and how much is in flight.

use alloc::collections::VecDeque;

use crate::types::LogIndex;

/// The replication mode of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicationState {
    /// The leader does not know where the follower's log matches its own: one
    /// `AppendEntries` at a time, and the next only after a response or a heartbeat round.
    Probe,
    /// The follower's log matches up to `match_index`: entries stream ahead of
    /// acknowledgements, bounded by the in-flight window.
    Replicate,
    /// The follower needs entries the leader has compacted away; the runtime is sending it
    /// the snapshot at `pending_snapshot_index`, and nothing else goes out until the
    /// follower acknowledges it or the runtime reports the transfer failed.
    Snapshot,
}

/// One `AppendEntries` that has not been acknowledged yet.
#[derive(Clone, Copy, Debug)]
struct InflightMessage {
    last_index: LogIndex,
    bytes: u64,
}

/// The leader's view of one follower. The leader tracks its own log through its durable
/// index instead.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to match the leader's log. Invariant: `match_index < next_index`.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    pub state: ReplicationState,
    /// In `Probe`: a message is out and the leader waits before sending another.
    pub probe_sent: bool,
    /// In `Replicate`: a heartbeat response showed the follower behind, so the next flush
    /// sends an `AppendEntries` even without new entries, to expose lost messages.
    pub gap_check_pending: bool,
    /// The follower rejected entries it had acknowledged, so its storage lost data; set
    /// once, so that the warning is logged once per follower and term.
    pub lost_acknowledged_entries: bool,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// The follower's newest response reported that it is catching up after a start without
    /// data (see `RaftNode::is_catching_up`).
    pub catching_up: bool,
    /// For a catching-up follower that the leader holds back: the heartbeat round whose
    /// confirmation releases it. Until then the leader neither counts the follower's
    /// acknowledgements nor sends it the commit index. `None` for every other follower.
    pub release_round: Option<u64>,
    /// Highest ReadIndex round this follower has confirmed.
    pub read_round_acked: u64,
    /// Highest commit index sent to this follower.
    pub commit_sent: LogIndex,
    /// In `Snapshot`: the index of the snapshot being sent.
    pub pending_snapshot_index: LogIndex,
    inflight: VecDeque<InflightMessage>,
    inflight_bytes: u64,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ReplicationState::Probe,
            probe_sent: false,
            gap_check_pending: false,
            lost_acknowledged_entries: false,
            recent_active: false,
            catching_up: false,
            release_round: None,
            read_round_acked: 0,
            commit_sent: LogIndex(0),
            pending_snapshot_index: LogIndex(0),
            inflight: VecDeque::new(),
            inflight_bytes: 0,
        }
    }

    /// Returns whether the leader counts this follower toward commit and ReadIndex quorums
    /// and sends it the commit index: it is not catching up, or the leader released it after
    /// confirming its own term.
    pub fn counts_toward_quorum(&self) -> bool {
        self.release_round.is_none()
    }

    /// Number of unacknowledged `AppendEntries` in flight.
    pub fn inflight_messages(&self) -> usize {
        self.inflight.len()
    }

    /// Entry bytes in flight.
    pub fn inflight_bytes(&self) -> u64 {
        self.inflight_bytes
    }

    /// Whether another `AppendEntries` may go out now.
    pub(crate) fn can_send(&self, max_inflight_messages: usize, max_inflight_bytes: u64) -> bool {
        match self.state {
            ReplicationState::Probe => !self.probe_sent,
            ReplicationState::Snapshot => false,
            ReplicationState::Replicate => {
                self.inflight.len() < max_inflight_messages
                    && self.inflight_bytes < max_inflight_bytes
            }
        }
    }

    /// Records an `AppendEntries` whose last entry is `last_index`, `bytes` long in all.
    pub(crate) fn record_sent(&mut self, last_index: LogIndex, bytes: u64) {
        match self.state {
            ReplicationState::Probe | ReplicationState::Snapshot => self.probe_sent = true,
            ReplicationState::Replicate => {
                self.inflight
                    .push_back(InflightMessage { last_index, bytes });
                self.inflight_bytes += bytes;
                self.next_index = last_index.next();
            }
        }
    }

    /// Raises `match_index` after an acceptance; returns whether it moved. Frees every
    /// in-flight message the acceptance covers.
    pub(crate) fn record_accepted(&mut self, match_index: LogIndex) -> bool {
        let advanced = match_index > self.match_index;
        if advanced {
            self.match_index = match_index;
            self.probe_sent = false;
        }
        if self.next_index <= match_index {
            self.next_index = match_index.next();
        }
        while let Some(front) = self.inflight.front() {
            if front.last_index > match_index {
                break;
            }
            self.inflight_bytes -= front.bytes;
            self.inflight.pop_front();
        }
        advanced
    }

    /// Switches to streaming once the match point is known.
    pub(crate) fn become_replicate(&mut self) {
        self.state = ReplicationState::Replicate;
        self.next_index = self.match_index.next();
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Waits for the follower to install the snapshot at `index`.
    pub(crate) fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ReplicationState::Snapshot;
        self.pending_snapshot_index = index;
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Switches back to one message at a time, resuming at `next_index`.
    pub(crate) fn become_probe(&mut self, next_index: LogIndex) {
        self.state = ReplicationState::Probe;
        self.next_index = next_index.max(self.match_index.next());
        self.probe_sent = false;
        self.clear_inflight();
    }

    /// Starts over from `match_index` after the follower showed it lost entries it had
    /// acknowledged (its data directory was wiped, for instance).
    pub(crate) fn restart_after_data_loss(&mut self, match_index: LogIndex) {
        self.match_index = match_index;
        self.commit_sent = self.commit_sent.min(match_index);
        self.lost_acknowledged_entries = true;
        self.become_probe(match_index.next());
    }

    /// Treats the oldest in-flight message as lost, freeing its share of the window;
    /// returns whether there was one.
    pub(crate) fn forget_oldest_inflight(&mut self) -> bool {
        match self.inflight.pop_front() {
            Some(oldest) => {
                self.inflight_bytes -= oldest.bytes;
                true
            }
            None => false,
        }
    }

    fn clear_inflight(&mut self) {
        self.gap_check_pending = false;
        self.inflight.clear();
        self.inflight_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicating(match_index: u64) -> Progress {
        let mut progress = Progress::new(LogIndex(match_index + 1));
        progress.record_accepted(LogIndex(match_index));
        progress.become_replicate();
        progress
    }

    #[test]
    fn probe_sends_one_message_at_a_time() {
        let mut progress = Progress::new(LogIndex(5));
        assert!(progress.can_send(2, 1000));
        progress.record_sent(LogIndex(7), 100);
        assert!(!progress.can_send(2, 1000), "a probe is out");
        assert_eq!(
            progress.next_index,
            LogIndex(5),
            "probing does not move next"
        );
        assert_eq!(progress.inflight_messages(), 0, "probes are not windowed");
    }

    #[test]
    fn replicate_window_counts_messages() {
        let mut progress = replicating(3);
        assert_eq!(progress.next_index, LogIndex(4));
        progress.record_sent(LogIndex(5), 10);
        assert!(progress.can_send(2, 1000), "one of two in flight");
        progress.record_sent(LogIndex(7), 10);
        assert!(!progress.can_send(2, 1000), "window of two is full");
        assert_eq!(
            progress.next_index,
            LogIndex(8),
            "next follows what was sent"
        );

        assert!(progress.record_accepted(LogIndex(5)), "match advanced");
        assert_eq!(progress.inflight_messages(), 1, "the ack freed one message");
        assert_eq!(progress.inflight_bytes(), 10);
        assert!(progress.can_send(2, 1000));
    }

    #[test]
    fn replicate_window_counts_bytes() {
        let mut progress = replicating(0);
        progress.record_sent(LogIndex(1), 60);
        assert!(progress.can_send(64, 100), "60 of 100 bytes in flight");
        progress.record_sent(LogIndex(2), 60);
        assert!(!progress.can_send(64, 100), "120 of 100 bytes in flight");
        assert_eq!(progress.inflight_bytes(), 120);
        progress.record_accepted(LogIndex(2));
        assert_eq!(progress.inflight_bytes(), 0);
        assert_eq!(progress.inflight_messages(), 0);
    }

    #[test]
    fn partial_ack_frees_only_covered_messages() {
        let mut progress = replicating(0);
        progress.record_sent(LogIndex(3), 30);
        progress.record_sent(LogIndex(6), 30);
        progress.record_accepted(LogIndex(4));
        assert_eq!(progress.inflight_messages(), 1, "message up to 6 still out");
        assert_eq!(progress.match_index, LogIndex(4));
    }

    #[test]
    fn duplicate_ack_does_not_advance() {
        let mut progress = replicating(4);
        assert!(!progress.record_accepted(LogIndex(4)));
        assert!(!progress.record_accepted(LogIndex(2)), "older ack");
        assert_eq!(progress.match_index, LogIndex(4));
    }

    #[test]
    fn become_probe_clears_window_and_keeps_next_above_match() {
        let mut progress = replicating(4);
        progress.record_sent(LogIndex(8), 40);
        progress.become_probe(LogIndex(2));
        assert_eq!(progress.state, ReplicationState::Probe);
        assert_eq!(progress.inflight_messages(), 0);
        assert_eq!(progress.inflight_bytes(), 0);
        assert_eq!(progress.next_index, LogIndex(5), "never at or below match");
        assert!(progress.can_send(1, 1));
    }

    #[test]
    fn accepted_probe_answer_raises_next() {
        let mut progress = Progress::new(LogIndex(3));
        progress.record_sent(LogIndex(6), 10);
        progress.record_accepted(LogIndex(6));
        assert_eq!(progress.next_index, LogIndex(7));
        assert!(!progress.probe_sent, "the answer ends the probe");
        progress.become_replicate();
        assert_eq!(progress.state, ReplicationState::Replicate);
        assert_eq!(progress.next_index, LogIndex(7));
    }
}
