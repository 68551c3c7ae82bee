//! Log replication: the follower's side of `AppendEntries` and heartbeats, the leader's
//! handling of their responses, the messages it builds for each follower, and the commit
//! rule.

use alloc::vec::Vec;

use crate::message::{AppendOutcome, MessageBody};
use crate::node::{RaftNode, Rejection, Role, SnapshotInstall};
use crate::progress::ReplicationState;
use crate::types::{Entry, EntryKind, LogIndex, MembershipChangeEntry, NodeId, SnapshotMeta, Term};

impl RaftNode {
    /// Follower side of `AppendEntries`, after the term check made `from` the leader.
    pub(crate) fn handle_append_entries(
        &mut self,
        from: NodeId,
        term: Term,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) -> Result<(), Rejection> {
        if let Err(reason) = check_append_shape(term, prev_log_index, prev_log_term, &entries) {
            return self.reject_malformed("AppendEntries", reason, from);
        }

        // Everything up to the commit index already matches the leader's log, so a late or
        // duplicated message about that prefix only needs the commit index in response.
        if prev_log_index < self.log.committed() {
            let match_index = self.log.committed();
            self.send_append_response(from, AppendOutcome::Accepted { match_index });
            return Ok(());
        }

        if self.log.term(prev_log_index) != Some(prev_log_term) {
            let hint_index = self
                .log
                .last_index_with_term_at_most(prev_log_index, prev_log_term);
            let hint_term = self.log.term(hint_index).unwrap_or_default();
            tracing::debug!(node = %self.id, leader = %from, %prev_log_index, %prev_log_term, %hint_index, %hint_term, "rejected AppendEntries: log does not match");
            self.send_append_response(
                from,
                AppendOutcome::Rejected {
                    rejected_prev_index: prev_log_index,
                    hint_index,
                    hint_term,
                },
            );
            return Ok(());
        }

        let last_new_index = prev_log_index.plus(entries.len() as u64);
        let first_new = entries
            .iter()
            .position(|entry| self.log.term(entry.index) != Some(entry.term));
        if let Some(first_new) = first_new {
            let conflict_index = entries[first_new].index;
            if conflict_index <= self.log.committed() {
                return self.reject_malformed(
                    "AppendEntries",
                    "conflicts with a committed entry",
                    from,
                );
            }
            if conflict_index <= self.log.last_index() {
                tracing::debug!(node = %self.id, leader = %from, %conflict_index, last_index = %self.log.last_index(), "truncating conflicting entries");
                self.log.truncate_from(conflict_index);
                self.membership_log.truncate_from(conflict_index);
            }
            let mut appended_through = conflict_index.prev();
            let mut malformed = false;
            for entry in entries.into_iter().skip(first_new) {
                if entry.kind == EntryKind::MembershipChange {
                    let Ok(decoded) = MembershipChangeEntry::decode(&entry.data) else {
                        // The log stays a valid prefix of the leader's: entries stop here.
                        malformed = true;
                        break;
                    };
                    self.membership_log.push(entry.index, decoded.membership);
                }
                appended_through = entry.index;
                self.log.append(entry);
            }
            self.refresh_membership();
            if malformed {
                self.log.commit_to(leader_commit.min(appended_through));
                self.send_append_response(
                    from,
                    AppendOutcome::Accepted {
                        match_index: appended_through,
                    },
                );
                return self.reject_malformed(
                    "AppendEntries",
                    "a membership change entry is unreadable",
                    from,
                );
            }
        }

        self.log.commit_to(leader_commit.min(last_new_index));
        if self.catching_up {
            self.catch_up_target = Some(leader_commit);
            self.check_caught_up();
        }
        self.send_append_response(
            from,
            AppendOutcome::Accepted {
                match_index: last_new_index,
            },
        );
        Ok(())
    }

    /// Follower side of `InstallSnapshot`, after the term check made `from` the leader. The
    /// runtime has stored the snapshot's bytes durably already.
    pub(crate) fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        term: Term,
        snapshot: SnapshotMeta,
    ) -> Result<(), Rejection> {
        if snapshot.index.0 == 0 || snapshot.term.0 == 0 {
            return self.reject_malformed("InstallSnapshot", "snapshot at index or term 0", from);
        }
        if snapshot.index.0 == u64::MAX {
            return self.reject_malformed(
                "InstallSnapshot",
                "snapshot at the last possible index, which no entry can follow",
                from,
            );
        }
        if snapshot.term > term {
            return self.reject_malformed(
                "InstallSnapshot",
                "snapshot term newer than the message's term",
                from,
            );
        }
        if let Err(reason) = snapshot.membership.check() {
            return self.reject_malformed("InstallSnapshot", reason, from);
        }
        let committed = self.log.committed();
        if snapshot.index <= committed {
            // Everything the snapshot contains is committed here already.
            self.send_append_response(
                from,
                AppendOutcome::Accepted {
                    match_index: committed,
                },
            );
            return Ok(());
        }
        let log_kept = self.log.install_snapshot(snapshot.index, snapshot.term);
        self.membership_log
            .reset(snapshot.membership.clone(), snapshot.index, log_kept);
        self.refresh_membership();
        tracing::info!(node = %self.id, leader = %from, index = %snapshot.index, term = %snapshot.term, log_kept, "installing snapshot");
        self.latest_snapshot = Some(snapshot.clone());
        let match_index = snapshot.index;
        // A snapshot lies at or below the leader's applied index, which may be far below
        // its commit index, so catching up goes on until an `AppendEntries` says how far.
        self.snapshot_to_install = Some(SnapshotInstall { snapshot, log_kept });
        self.send_append_response(from, AppendOutcome::Accepted { match_index });
        Ok(())
    }

    /// Follower side of a heartbeat.
    pub(crate) fn handle_heartbeat(
        &mut self,
        from: NodeId,
        leader_commit: LogIndex,
        committed_at_leader: LogIndex,
        read_round: Option<u64>,
    ) {
        if self.catching_up {
            self.catch_up_target = Some(committed_at_leader.max(leader_commit));
            self.check_caught_up();
        }
        // The leader never sends a commit index beyond what this follower's log is known to
        // match. Capping at the last index only keeps a faulty peer from pushing the commit
        // index past the end of the log; it cannot detect a commit index that does not match.
        let last_index = self.log.last_index();
        self.log.commit_to(leader_commit.min(last_index));
        if leader_commit > last_index {
            // The leader sends a commit index only up to where it knows this log matches, so
            // this log lost entries it acknowledged in this term.
            tracing::warn!(node = %self.id, leader = %from, %leader_commit, %last_index, "the leader counts entries this replica no longer has; asking it to replicate them again");
            self.send_append_response(from, AppendOutcome::LostEntries { last_index });
        }
        self.send(
            from,
            MessageBody::HeartbeatResponse {
                read_round,
                catching_up: self.catching_up,
            },
        );
    }

    /// Leader side of an `AppendEntriesResponse`. Whether the follower is catching up is
    /// recorded only from a response that passes its checks, and from an acceptance before
    /// its match index can count toward commit.
    pub(crate) fn handle_append_response(
        &mut self,
        from: NodeId,
        outcome: AppendOutcome,
        catching_up: bool,
    ) -> Result<(), Rejection> {
        if self.role != Role::Leader {
            return self.ignore_stale_response("AppendEntriesResponse");
        }
        let Some(progress) = self.progress.get_mut(&from) else {
            return self.ignore_stale_response("AppendEntriesResponse");
        };
        progress.recent_active = true;

        let result = match outcome {
            AppendOutcome::Accepted { match_index } => {
                return self.handle_append_accepted(from, match_index, catching_up);
            }
            AppendOutcome::Rejected {
                rejected_prev_index,
                hint_index,
                hint_term,
            } => self.handle_append_rejected(from, rejected_prev_index, hint_index, hint_term),
            AppendOutcome::LostEntries {
                last_index: follower_last,
            } => self.handle_lost_entries(from, follower_last),
        };
        if result.is_ok() {
            self.record_catching_up(from, catching_up);
        }
        result
    }

    fn handle_append_accepted(
        &mut self,
        from: NodeId,
        match_index: LogIndex,
        catching_up: bool,
    ) -> Result<(), Rejection> {
        let last_index = self.log.last_index();
        if match_index > last_index {
            return self.reject_malformed(
                "AppendEntriesResponse",
                "match index past the leader's log",
                from,
            );
        }
        self.record_catching_up(from, catching_up);
        let Some(progress) = self.progress.get_mut(&from) else {
            return self.ignore_stale_response("AppendEntriesResponse");
        };
        let advanced = progress.record_accepted(match_index);
        match progress.state {
            ReplicationState::Probe => progress.become_replicate(),
            ReplicationState::Snapshot
                if progress.match_index >= progress.pending_snapshot_index =>
            {
                progress.become_replicate();
            }
            ReplicationState::Snapshot | ReplicationState::Replicate => {}
        }
        let caught_up = progress.match_index == last_index;
        self.replication_pending = true;
        if advanced {
            self.maybe_commit();
        }
        if caught_up && self.transfer_target == Some(from) {
            tracing::info!(node = %self.id, term = %self.term, target = %from, "transfer target caught up; sending TimeoutNow");
            self.send(from, MessageBody::TimeoutNow);
        }
        Ok(())
    }

    /// Starts replicating to `from` again after it reported a log that ends at
    /// `follower_last`, below entries it acknowledged.
    fn handle_lost_entries(
        &mut self,
        from: NodeId,
        follower_last: LogIndex,
    ) -> Result<(), Rejection> {
        let Some(progress) = self.progress.get_mut(&from) else {
            return self.ignore_stale_response("AppendEntriesResponse");
        };
        if follower_last >= progress.match_index {
            return self.ignore_stale_response("AppendEntriesResponse");
        }
        self.stats.rejections_of_acknowledged_entries += 1;
        tracing::warn!(node = %self.id, follower = %from, match_index = %progress.match_index, %follower_last, "follower lost entries it acknowledged; replicating to it again from the start");
        // Nothing of the follower's remaining log is known to match any more.
        progress.restart_after_data_loss(LogIndex(0));
        progress.become_probe(follower_last.next());
        let catching_up = progress.catching_up;
        self.replication_pending = true;
        if catching_up {
            // It may have lost its data again since this leader released it.
            self.hold_back_catching_up(from);
        }
        Ok(())
    }

    /// Moves a follower's next index back after a mismatch, skipping a whole term of
    /// conflicting entries per round trip with the follower's hint.
    fn handle_append_rejected(
        &mut self,
        from: NodeId,
        rejected_prev_index: LogIndex,
        hint_index: LogIndex,
        hint_term: Term,
    ) -> Result<(), Rejection> {
        let Some(progress) = self.progress.get(&from) else {
            return self.ignore_stale_response("AppendEntriesResponse");
        };
        let stale = match progress.state {
            // Only the response to the single outstanding probe counts.
            ReplicationState::Probe => rejected_prev_index != progress.next_index.prev(),
            ReplicationState::Replicate => rejected_prev_index <= progress.match_index,
            // The snapshot's acknowledgement is awaited; older answers no longer apply.
            ReplicationState::Snapshot => true,
        };
        if stale || rejected_prev_index >= progress.next_index {
            return self.ignore_stale_response("AppendEntriesResponse");
        }
        if hint_index > rejected_prev_index {
            return self.reject_malformed(
                "AppendEntriesResponse",
                "hint index past the rejected index",
                from,
            );
        }

        // Every leader entry above the returned index has a term above the follower's entry
        // at `hint_index`, so the logs can match at most up to there.
        let match_candidate = self.log.last_index_with_term_at_most(hint_index, hint_term);
        let base_index = self.log.base_index();
        // Below the compacted prefix the leader cannot compare terms: once the follower
        // rejects the entry at the base itself, only the snapshot can bring it up to date,
        // and probing just below the base sends it.
        let candidate_next = if match_candidate == base_index
            && rejected_prev_index == base_index
            && base_index.0 > 0
        {
            base_index
        } else {
            match_candidate.next()
        };
        tracing::debug!(node = %self.id, follower = %from, %rejected_prev_index, %hint_index, %hint_term, next = %candidate_next, "follower log mismatch; probing back");
        let Some(progress) = self.progress.get_mut(&from) else {
            return self.ignore_stale_response("AppendEntriesResponse");
        };
        let next_index = candidate_next.max(progress.match_index.next());
        if progress.state == ReplicationState::Probe
            && next_index >= progress.next_index
            && progress.match_index.0 > 0
        {
            // The follower rejects the entry just above its acknowledged match index, so it
            // lost entries it had reported durable. None of its log is known to match any
            // more; replication starts over below its hint.
            self.stats.rejections_of_acknowledged_entries += 1;
            tracing::warn!(node = %self.id, follower = %from, match_index = %progress.match_index, %hint_index, "follower rejects entries it acknowledged as durable; replicating to it again from the start");
            progress.restart_after_data_loss(LogIndex(0));
            progress.become_probe(candidate_next);
            let catching_up = progress.catching_up;
            self.replication_pending = true;
            if catching_up {
                self.hold_back_catching_up(from);
            }
            return Ok(());
        }
        progress.become_probe(next_index);
        self.replication_pending = true;
        Ok(())
    }

    pub(crate) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_round: Option<u64>,
        catching_up: bool,
    ) -> Result<(), Rejection> {
        if self.role != Role::Leader {
            return self.ignore_stale_response("HeartbeatResponse");
        }
        if !self.progress.contains_key(&from) {
            return self.ignore_stale_response("HeartbeatResponse");
        }
        if read_round.is_some_and(|round| round > self.reads.newest_round()) {
            return self.reject_malformed(
                "HeartbeatResponse",
                "confirms a read round never sent",
                from,
            );
        }
        self.record_catching_up(from, catching_up);
        let last_index = self.log.last_index();
        let Some(progress) = self.progress.get_mut(&from) else {
            return self.ignore_stale_response("HeartbeatResponse");
        };
        progress.recent_active = true;
        if progress.match_index < last_index {
            match progress.state {
                // A probe that got no response is sent again after each heartbeat round trip.
                ReplicationState::Probe => progress.probe_sent = false,
                // Streamed entries may have been lost. An empty AppendEntries at the last
                // index sent makes the follower reject it if so, which restarts replication
                // from its match index; a full window first gives up its oldest message,
                // so that the check can go out at all.
                // The runtime reports how the transfer ends.
                ReplicationState::Snapshot => {}
                ReplicationState::Replicate => {
                    // A loop, because the window may have shrunk below the messages in
                    // flight when the replication limits changed at runtime.
                    while !progress.can_send(
                        self.config.max_inflight_messages,
                        self.config.max_inflight_bytes,
                    ) && progress.forget_oldest_inflight()
                    {}
                    progress.gap_check_pending = true;
                }
            }
            self.replication_pending = true;
        }
        if let Some(round) = read_round {
            let Some(progress) = self.progress.get_mut(&from) else {
                return self.ignore_stale_response("HeartbeatResponse");
            };
            if round > progress.read_round_acked {
                progress.read_round_acked = round;
                self.confirm_reads();
                self.release_confirmed_followers();
            }
        }
        Ok(())
    }

    /// Releases every read round a quorum of voters has confirmed. A catching-up follower
    /// held back by this leader confirms nothing, since it cannot tell whether a newer term
    /// exists.
    pub(crate) fn confirm_reads(&mut self) {
        let mut acked: Vec<u64> = Vec::with_capacity(self.membership.voters.len());
        for voter in &self.membership.voters {
            if *voter == self.id {
                acked.push(u64::MAX);
            } else {
                acked.push(self.progress.get(voter).map_or(0, |progress| {
                    if progress.counts_toward_quorum() {
                        progress.read_round_acked
                    } else {
                        0
                    }
                }));
            }
        }
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = acked[self.membership.quorum() - 1];
        self.reads.confirm_through(confirmed, &mut self.read_states);
    }

    /// Commits the highest index that a quorum has stored durably, if its entry is of the
    /// current term. An earlier term's entry commits only beneath one of the current term:
    /// counting replicas of an old entry is not enough, since a later leader could still
    /// overwrite it (Figure 8 of the Raft paper). A catching-up follower held back by this
    /// leader counts as storing nothing.
    pub(crate) fn maybe_commit(&mut self) {
        self.match_scratch.clear();
        for voter in &self.membership.voters {
            let match_index = if *voter == self.id {
                self.log.persisted()
            } else {
                self.progress
                    .get(voter)
                    .filter(|progress| progress.counts_toward_quorum())
                    .map_or(LogIndex(0), |progress| progress.match_index)
            };
            self.match_scratch.push(match_index);
        }
        self.match_scratch.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = self.match_scratch[self.membership.quorum() - 1];
        if quorum_index <= self.log.committed() || self.log.term(quorum_index) != Some(self.term) {
            return;
        }

        let committed_before = self.log.committed();
        // Only entries of this term were counted when proposed; earlier terms' entries were
        // appended by other leaders.
        let term = self.term;
        let newly_committed_bytes: u64 = self
            .log
            .iter_from(committed_before.next())
            .take_while(|entry| entry.index <= quorum_index)
            .filter(|entry| entry.term == term)
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(newly_committed_bytes);
        self.log.commit_to(quorum_index);
        self.replication_pending = true;

        if committed_before < quorum_index && self.log.term(committed_before) != Some(self.term) {
            // The first commit of this term: reads held back until now learn their index.
            self.reads.release_waiting(self.log.committed());
        }
        if self.membership.quorum() == 1 {
            self.reads.confirm_open(&mut self.read_states);
        }
        if !self.membership.voters.contains(&self.id)
            && self
                .membership_log
                .last_change_index()
                .is_none_or(|index| index <= self.log.committed())
        {
            // A safeguard: a leader refuses to remove itself and transfers leadership
            // instead, but should a committed change leave it outside the voters, the
            // remaining voters elect a leader among themselves.
            tracing::info!(node = %self.id, term = %self.term, "removed from the voters; stepping down");
            self.become_follower(self.term, None);
        }
    }

    /// Builds the messages every follower needs: entries within its window, else the
    /// commit index when it moved, and a heartbeat for the open read round once it is due
    /// (see `Config::read_batch_max`).
    pub(crate) fn flush_replication(&mut self) {
        let read_round = if self.reads.round_due(self.config.read_batch_max) {
            if self.membership.quorum() == 1 {
                self.reads.confirm_open(&mut self.read_states);
                None
            } else {
                Some(self.reads.seal_open_round())
            }
        } else {
            None
        };
        if !self.replication_pending && read_round.is_none() {
            return;
        }
        self.replication_pending = false;
        self.maybe_promote_learners();
        if self.role != Role::Leader {
            return;
        }

        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            let sent_entries = self.send_entries(peer);
            let committed_at_leader = self.commit_index_for(peer);
            let Some(progress) = self.progress.get_mut(&peer) else {
                continue;
            };
            let commit_for_peer = committed_at_leader.min(progress.match_index);
            let is_voter = self.membership.voters.contains(&peer);
            let needs_commit = !sent_entries && commit_for_peer > progress.commit_sent;
            let needs_read_round = read_round.is_some() && is_voter;
            if needs_commit || needs_read_round {
                progress.commit_sent = progress.commit_sent.max(commit_for_peer);
                self.send(
                    peer,
                    MessageBody::Heartbeat {
                        leader_commit: commit_for_peer,
                        committed_at_leader,
                        read_round: if is_voter { read_round } else { None },
                    },
                );
            }
        }
    }

    /// Sends `peer` as many `AppendEntries` as its window allows; returns whether any left.
    fn send_entries(&mut self, peer: NodeId) -> bool {
        let mut sent = false;
        loop {
            let last_index = self.log.last_index();
            let committed = self.commit_index_for(peer);
            let Some(progress) = self.progress.get_mut(&peer) else {
                return sent;
            };
            if progress.state == ReplicationState::Probe
                && progress.next_index > last_index
                && progress.match_index < last_index
            {
                // A probe needs an entry to carry: a member added or answered optimistically
                // at the end of an idle log would otherwise never be probed.
                progress.next_index = last_index;
            }
            let has_entries = progress.next_index <= last_index;
            let gap_check = !sent && !has_entries && progress.gap_check_pending;
            if !(has_entries || gap_check)
                || !progress.can_send(
                    self.config.max_inflight_messages,
                    self.config.max_inflight_bytes,
                )
            {
                return sent;
            }
            progress.gap_check_pending = false;
            let prev_log_index = progress.next_index.prev();
            let Some(prev_log_term) = self.log.term(prev_log_index) else {
                // The entries the follower needs were compacted into a snapshot.
                let Some(snapshot) = self.latest_snapshot.clone() else {
                    tracing::warn!(node = %self.id, follower = %peer, %prev_log_index, "entries needed by follower are not in the log and no snapshot is stored");
                    return sent;
                };
                tracing::info!(node = %self.id, follower = %peer, next_index = %progress.next_index, snapshot_index = %snapshot.index, "follower needs compacted entries; sending the snapshot");
                progress.become_snapshot(snapshot.index);
                self.send(peer, MessageBody::InstallSnapshot { snapshot });
                return true;
            };
            let (entries, bytes) = self.log.entries_for_message(
                progress.next_index,
                self.config.max_entries_per_message,
                self.config.max_bytes_per_message,
            );
            match entries.last() {
                Some(last) => {
                    progress.record_sent(last.index, bytes);
                    progress.commit_sent = progress.commit_sent.max(committed.min(last.index));
                }
                None => {
                    progress.commit_sent = progress.commit_sent.max(committed.min(prev_log_index));
                }
            }
            let probing = progress.state == ReplicationState::Probe;
            let leader_commit = committed;
            self.send(
                peer,
                MessageBody::AppendEntries {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                },
            );
            sent = true;
            if probing || gap_check {
                return sent;
            }
        }
    }

    /// Sends a heartbeat to every member, carrying the newest unconfirmed read round.
    pub(crate) fn broadcast_heartbeat(&mut self, read_round: Option<u64>) {
        let peers: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter()
            .map(|(peer, progress)| (*peer, progress.match_index))
            .collect();
        for (peer, match_index) in peers {
            let committed = self.commit_index_for(peer);
            let is_voter = self.membership.voters.contains(&peer);
            self.send(
                peer,
                MessageBody::Heartbeat {
                    leader_commit: committed.min(match_index),
                    committed_at_leader: committed,
                    read_round: if is_voter { read_round } else { None },
                },
            );
        }
    }

    /// Queues a response to an `AppendEntries` or `InstallSnapshot` from `to`.
    fn send_append_response(&mut self, to: NodeId, outcome: AppendOutcome) {
        let catching_up = self.catching_up;
        self.send(
            to,
            MessageBody::AppendEntriesResponse {
                outcome,
                catching_up,
            },
        );
    }

    fn reject_malformed(
        &mut self,
        kind: &'static str,
        reason: &'static str,
        from: NodeId,
    ) -> Result<(), Rejection> {
        self.stats.rejected_malformed += 1;
        tracing::debug!(node = %self.id, %from, kind, reason, "rejected malformed message");
        Err(Rejection::Malformed { kind, reason })
    }
}

/// Checks that the entries of an `AppendEntries` follow `prev_log_index` one by one, with
/// terms that never decrease and never pass the sender's term.
fn check_append_shape(
    term: Term,
    prev_log_index: LogIndex,
    prev_log_term: Term,
    entries: &[Entry],
) -> Result<(), &'static str> {
    if prev_log_term > term {
        return Err("previous entry's term is newer than the message's term");
    }
    if prev_log_index
        .0
        .checked_add(entries.len() as u64 + 1)
        .is_none()
    {
        return Err("entry indexes overflow");
    }
    if prev_log_index.0 == 0 && prev_log_term.0 != 0 {
        return Err("index 0 must have term 0");
    }
    let mut expected_index = prev_log_index.next();
    let mut previous_term = prev_log_term;
    for entry in entries {
        if entry.index != expected_index {
            return Err("entry indexes do not follow the previous index one by one");
        }
        if entry.term < previous_term {
            return Err("entry terms decrease");
        }
        if entry.term > term {
            return Err("entry term is newer than the message's term");
        }
        expected_index = expected_index.next();
        previous_term = entry.term;
    }
    Ok(())
}
