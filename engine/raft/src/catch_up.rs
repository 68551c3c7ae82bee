//! The leader's side of followers that are catching up after starting without data.
//!
//! A wiped replica lost the newest term it knew, so it cannot tell a deposed leader from
//! a current one. Suppose it acknowledged a newer leader's entry and then lost its disk.
//! A leader cut off from that newer term could then count the replica's acknowledgements
//! and commit another entry at the same index. So every response of a catching-up replica
//! carries a flag for it, and the leader holds such a follower back. It leaves the follower
//! out of commit and ReadIndex counts and sends it commit index 0, which cannot end
//! catching up. It still replicates entries to it, and counts it for
//! check-quorum (see `quorum_recently_active`).
//!
//! The leader releases the follower once voters have acknowledged a heartbeat round sealed
//! after the follower first reported catching up, and enough of them for that
//! acknowledgement to prove that no newer leader had been elected before the follower
//! lost its data. A newer leader's voters are a quorum, and any voter among them that kept
//! its data stays in the newer term and rejects this leader's heartbeats. So the rule
//! discounts as many catching-up voters as the group tolerates failures, since each of
//! them may have lost its disk, and needs a quorum among the rest: a quorum of voters that
//! are not held back always suffices. The founding members of a new group start without
//! data too, but the runtime marks them (`RestoredState::founding`). They lost nothing, so
//! they do not catch up at all: they vote as in plain Raft and are never held back, and a
//! new group commits with a quorum of its voters. Were they held back, its first leader
//! would need every voter to acknowledge a round before anything committed.

use alloc::vec::Vec;

use crate::node::RaftNode;
use crate::types::{LogIndex, NodeId};

impl RaftNode {
    /// Records whether `from`, a tracked follower, reported in a response that it is
    /// catching up. A follower that starts catching up while this leader counted it is held
    /// back, and the match index it reported before is forgotten, since its disk no longer
    /// contains those entries.
    pub(crate) fn record_catching_up(&mut self, from: NodeId, catching_up: bool) {
        let Some(progress) = self.progress.get_mut(&from) else {
            return;
        };
        if !catching_up {
            if progress.catching_up {
                tracing::info!(node = %self.id, term = %self.term, follower = %from, "follower finished catching up");
                progress.catching_up = false;
                progress.release_round = None;
                self.release_confirmed_followers();
            }
            return;
        }
        if progress.catching_up {
            return;
        }
        progress.catching_up = true;
        if progress.match_index > LogIndex(0) {
            self.stats.rejections_of_acknowledged_entries += 1;
            tracing::warn!(node = %self.id, term = %self.term, follower = %from, match_index = %progress.match_index, "follower reports catching up after acknowledging entries; replicating to it again from the start");
            progress.restart_after_data_loss(LogIndex(0));
            self.replication_pending = true;
        }
        self.hold_back_catching_up(from);
    }

    /// Holds back the catching-up follower `peer` until a heartbeat round sealed from now on
    /// is confirmed (see the module documentation). Also called when a follower that was
    /// released already shows that it lost its data again.
    ///
    /// NOTE: a released follower wiped again before it acknowledged any entry to this
    /// leader shows no loss, so it stays released on the earlier confirmation.
    pub(crate) fn hold_back_catching_up(&mut self, peer: NodeId) {
        let release_round = self.reads.newest_round() + 1;
        let Some(progress) = self.progress.get_mut(&peer) else {
            return;
        };
        progress.release_round = Some(release_round);
        tracing::info!(node = %self.id, term = %self.term, follower = %peer, release_round, "follower is catching up; holding back the commit index until this term is confirmed");
        self.reads.request_round();
        self.release_confirmed_followers();
    }

    /// Releases every held-back follower whose release round is confirmed. A release can
    /// complete a quorum, so entries may commit and reads may be confirmed at once.
    pub(crate) fn release_confirmed_followers(&mut self) {
        let confirmed = self.round_confirmed_for_release();
        let mut released = false;
        for (peer, progress) in &mut self.progress {
            if progress
                .release_round
                .is_some_and(|round| round <= confirmed)
            {
                tracing::info!(node = %self.id, term = %self.term, follower = %peer, "term confirmed since the follower started catching up; sending it the commit index");
                progress.release_round = None;
                released = true;
            }
        }
        if released {
            self.replication_pending = true;
            self.maybe_commit();
            self.confirm_reads();
        }
    }

    /// Returns the newest heartbeat round whose acknowledgements prove that this leader's
    /// term was current when they were sent: acknowledged by a quorum of voters after up to
    /// `voters - quorum` held-back voters among them are discounted. `u64::MAX` when this
    /// leader alone is a quorum, 0 when no round qualifies.
    fn round_confirmed_for_release(&self) -> u64 {
        let quorum = self.membership.quorum();
        let discounted_max = self.membership.voters.len() - quorum;
        let mut acknowledgements: Vec<(u64, bool)> = self
            .membership
            .voters
            .iter()
            .map(|voter| {
                if *voter == self.id {
                    return (u64::MAX, true);
                }
                self.progress.get(voter).map_or((0, true), |progress| {
                    (progress.read_round_acked, progress.counts_toward_quorum())
                })
            })
            .collect();
        acknowledgements.sort_unstable_by_key(|(round, _)| core::cmp::Reverse(*round));
        let mut counted = 0;
        let mut held_back = 0;
        for (round, counts) in acknowledgements {
            if counts {
                counted += 1;
            } else {
                held_back += 1;
            }
            let held_back_counted = held_back - held_back.min(discounted_max);
            if counted + held_back_counted >= quorum {
                return round;
            }
        }
        0
    }

    /// Returns the commit index to send `peer`: the leader's, or 0 while it is held back.
    pub(crate) fn commit_index_for(&self, peer: NodeId) -> LogIndex {
        match self.progress.get(&peer) {
            Some(progress) if !progress.counts_toward_quorum() => LogIndex(0),
            _ => self.log.committed(),
        }
    }
}
