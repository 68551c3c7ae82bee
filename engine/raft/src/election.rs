//! Terms, elections and roles: ticks, the term check every message passes first, pre-vote,
//! votes, check-quorum and the transitions between follower, pre-candidate, candidate and
//! leader.

use crate::message::{Message, MessageBody};
use crate::node::{RaftNode, Rejection, Role};
use crate::progress::Progress;
use crate::types::{Entry, EntryKind, LogIndex, NodeId, Term};

/// The kind of campaign a replica starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Campaign {
    /// Ask first whether a majority would vote, without raising the term.
    PreVote,
    /// Raise the term and ask for votes.
    Election,
    /// Raise the term and ask for votes past the leader's lease: the leader asked for it.
    Transfer,
}

impl RaftNode {
    pub(crate) fn tick_election(&mut self) {
        // Saturating: a learner never campaigns, so nothing else resets its count while it
        // hears from no leader.
        self.election_elapsed_ticks = self.election_elapsed_ticks.saturating_add(1);
        if self.is_promotable()
            && self.election_elapsed_ticks >= self.randomized_election_timeout_ticks
        {
            let campaign = if self.config.pre_vote {
                Campaign::PreVote
            } else {
                Campaign::Election
            };
            self.campaign(campaign);
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks = self.heartbeat_elapsed_ticks.saturating_add(1);
        self.election_elapsed_ticks = self.election_elapsed_ticks.saturating_add(1);

        if self.transfer_target.is_some() {
            self.transfer_elapsed_ticks = self.transfer_elapsed_ticks.saturating_add(1);
            if self.transfer_elapsed_ticks >= self.timing().election_timeout_ticks_min {
                tracing::info!(node = %self.id, term = %self.term, target = ?self.transfer_target, "leadership transfer abandoned");
                self.transfer_target = None;
            }
        }

        if self.election_elapsed_ticks >= self.timing().election_timeout_ticks_min {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                tracing::info!(node = %self.id, term = %self.term, "leader lost contact with a quorum; stepping down");
                self.become_follower(self.term, None);
                return;
            }
        }

        if self.heartbeat_elapsed_ticks >= self.leader_heartbeat_interval_ticks() {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat(self.reads.newest_unconfirmed_round());
        }
    }

    /// Whether a quorum of voters (this leader included) was heard from since the last
    /// check; clears the marks for the next round.
    ///
    /// A catching-up follower that this leader holds back counts. Check-quorum protects no
    /// commit and no read here. The first leader of a new group must keep leading until
    /// every voter has responded, because its followers all start catching up. Once they
    /// store its no-op they vote for no candidate, so a leader that stepped down could not
    /// be elected again.
    fn quorum_recently_active(&mut self) -> bool {
        let active = self
            .membership
            .voters
            .iter()
            .filter(|voter| {
                **voter == self.id
                    || self
                        .progress
                        .get(voter)
                        .is_some_and(|progress| progress.recent_active)
            })
            .count();
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
        }
        active >= self.membership.quorum()
    }

    /// Checks sender, recipient and term, then dispatches on the message kind.
    pub(crate) fn step_message(&mut self, message: Message) -> Result<(), Rejection> {
        if message.to != self.id {
            self.stats.rejected_wrong_recipient += 1;
            tracing::debug!(node = %self.id, to = %message.to, kind = message.body.kind_name(), "rejected message for another node");
            return Err(Rejection::WrongRecipient { to: message.to });
        }
        // Leader traffic passes from any node: the change that removed the sender from this
        // replica's membership may be uncommitted and about to be replaced by the sender's
        // own log. Votes and responses from non-members are refused, so that a removed node
        // cannot raise this replica's term or count in its tallies.
        let leader_traffic = matches!(
            message.body,
            MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. }
        );
        if message.from == self.id || !(leader_traffic || self.membership.contains(message.from)) {
            self.stats.rejected_unknown_sender += 1;
            tracing::debug!(node = %self.id, from = %message.from, kind = message.body.kind_name(), "rejected message from unknown sender");
            return Err(Rejection::UnknownSender { from: message.from });
        }
        if message.term < self.term {
            return self.handle_stale_term(&message);
        }
        if message.term > self.term && !self.handle_newer_term(&message) {
            return Ok(());
        }

        let from = message.from;
        let term = message.term;
        match message.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => {
                self.handle_vote_request(from, term, last_log_index, last_log_term, true, false);
                Ok(())
            }
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                leadership_transfer,
            } => {
                self.handle_vote_request(
                    from,
                    term,
                    last_log_index,
                    last_log_term,
                    false,
                    leadership_transfer,
                );
                Ok(())
            }
            MessageBody::PreVoteResponse { granted } => {
                self.handle_pre_vote_response(from, term, granted)
            }
            MessageBody::RequestVoteResponse { granted } => {
                self.handle_vote_response(from, granted)
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.accept_leader(from, "AppendEntries")?;
                self.handle_append_entries(
                    from,
                    term,
                    prev_log_index,
                    prev_log_term,
                    entries,
                    leader_commit,
                )
            }
            MessageBody::Heartbeat {
                leader_commit,
                committed_at_leader,
                read_round,
            } => {
                self.accept_leader(from, "Heartbeat")?;
                self.handle_heartbeat(from, leader_commit, committed_at_leader, read_round);
                Ok(())
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.accept_leader(from, "InstallSnapshot")?;
                self.handle_install_snapshot(from, term, snapshot)
            }
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
            MessageBody::AppendEntriesResponse {
                outcome,
                catching_up,
            } => self.handle_append_response(from, outcome, catching_up),
            MessageBody::HeartbeatResponse {
                read_round,
                catching_up,
            } => self.handle_heartbeat_response(from, read_round, catching_up),
        }
    }

    /// Responds to a message from an older term as the protocol requires.
    fn handle_stale_term(&mut self, message: &Message) -> Result<(), Rejection> {
        self.stats.rejected_stale_term += 1;
        tracing::debug!(node = %self.id, from = %message.from, term = %message.term, current = %self.term, kind = message.body.kind_name(), "message from an older term");
        match message.body {
            // Tell a deposed leader about the newer term so that it steps down. Without this,
            // a leader cut off by check-quorum or pre-vote could stay stuck.
            MessageBody::AppendEntries { .. }
            | MessageBody::InstallSnapshot { .. }
            | MessageBody::Heartbeat { .. } => {
                self.send(
                    message.from,
                    MessageBody::HeartbeatResponse {
                        read_round: None,
                        catching_up: self.catching_up,
                    },
                );
            }
            // A pre-candidate behind this term learns the term from the refusal.
            MessageBody::PreVote { .. } => {
                self.send(
                    message.from,
                    MessageBody::PreVoteResponse { granted: false },
                );
            }
            _ => {}
        }
        Err(Rejection::StaleTerm {
            message_term: message.term,
            current_term: self.term,
        })
    }

    /// Reacts to a message from a newer term; returns whether to go on handling it.
    fn handle_newer_term(&mut self, message: &Message) -> bool {
        match message.body {
            // A pre-vote and a granted pre-vote response carry a proposed term, not a real one.
            MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true } => true,
            MessageBody::RequestVote {
                leadership_transfer,
                ..
            } if self.in_leader_lease() && !leadership_transfer => {
                // A node that cannot hear the leader must not depose it while this replica
                // still does: this keeps a removed or partitioned node from disrupting.
                self.stats.ignored_vote_in_lease += 1;
                tracing::debug!(node = %self.id, from = %message.from, term = %message.term, "ignored vote request while the leader's lease holds");
                false
            }
            _ => {
                let leader = match message.body {
                    MessageBody::AppendEntries { .. }
                    | MessageBody::InstallSnapshot { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::TimeoutNow => Some(message.from),
                    _ => None,
                };
                tracing::info!(node = %self.id, from = %message.from, term = %message.term, previous = %self.term, kind = message.body.kind_name(), "newer term seen");
                let elapsed_ticks = self.election_elapsed_ticks;
                self.become_follower(message.term, leader);
                if matches!(message.body, MessageBody::RequestVote { .. }) {
                    // Only a granted vote or a leader's message postpones this replica's own
                    // election, as Raft's rules require. Otherwise a candidate whose log cannot
                    // win, and whose election timeout is shorter (an uncommitted timing
                    // change), would keep every other voter from ever campaigning.
                    self.election_elapsed_ticks = elapsed_ticks;
                }
                true
            }
        }
    }

    /// Whether this replica heard from a leader within the minimum election timeout.
    pub(crate) fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed_ticks < self.timing().election_timeout_ticks_min
    }

    /// Makes `from`, which sent leader traffic in the current term, this replica's leader.
    fn accept_leader(&mut self, from: NodeId, kind: &'static str) -> Result<(), Rejection> {
        match self.role {
            Role::Leader => {
                // Two leaders in one term would break election safety; only a faulty peer
                // sends this.
                self.stats.rejected_malformed += 1;
                tracing::debug!(node = %self.id, %from, term = %self.term, "leader traffic from another leader in the same term");
                Err(Rejection::Malformed {
                    kind,
                    reason: "sent by a second leader of the same term",
                })
            }
            Role::PreCandidate | Role::Candidate => {
                tracing::info!(node = %self.id, leader = %from, term = %self.term, role = ?self.role, "another node leads this term; following");
                self.become_follower(self.term, Some(from));
                self.election_elapsed_ticks = 0;
                Ok(())
            }
            Role::Follower => {
                if self.leader != Some(from) {
                    tracing::info!(node = %self.id, leader = %from, term = %self.term, "following leader");
                    self.leader = Some(from);
                    let quick = self.quick_campaigns_left > 0;
                    self.quick_campaigns_left = 0;
                    if quick || self.election_timeout_shortened {
                        // A timeout cut short, or drawn short, after a leader was reported
                        // down would make this follower campaign against the leader it
                        // now hears.
                        self.reset_election_timer();
                    }
                }
                self.election_elapsed_ticks = 0;
                Ok(())
            }
        }
    }

    fn handle_vote_request(
        &mut self,
        from: NodeId,
        term: Term,
        last_log_index: LogIndex,
        last_log_term: Term,
        pre_vote: bool,
        leadership_transfer: bool,
    ) {
        let up_to_date = self.log.is_up_to_date(last_log_index, last_log_term);
        let lease_blocks = self.in_leader_lease() && !leadership_transfer;
        let can_vote = if pre_vote {
            term > self.term && !lease_blocks
        } else {
            self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none())
        };
        // A replica that lost its data may have voted or acknowledged entries before; it helps
        // only a candidate whose log is empty, which exists only while the group has never
        // appended an entry.
        let catch_up_allows = !self.catching_up || last_log_index == LogIndex(0);
        // The candidate's own membership decides whose votes count, so a member that this
        // replica still lists as a learner is judged like a voter. It campaigns only once it
        // holds its own promotion, which this replica may not have received yet. Refusing
        // it left two healthy voters of three that elected no leader once the third failed.
        let granted = can_vote && up_to_date && catch_up_allows;
        tracing::debug!(node = %self.id, candidate = %from, %term, pre_vote, granted, up_to_date, catching_up = self.catching_up, "vote requested");

        if pre_vote {
            let response_term = if granted { term } else { self.term };
            self.send_with_term(
                from,
                response_term,
                MessageBody::PreVoteResponse { granted },
            );
            return;
        }
        if granted {
            self.vote = Some(from);
            self.reset_election_timer();
        }
        self.send(from, MessageBody::RequestVoteResponse { granted });
    }

    fn is_voter(&self, node: NodeId) -> bool {
        self.membership.voters.contains(&node)
    }

    fn handle_pre_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        granted: bool,
    ) -> Result<(), Rejection> {
        // A granted response carries the term the pre-candidate would campaign in, and no
        // term follows u64::MAX.
        let expected_term = if granted {
            self.term.0.checked_add(1).map(Term)
        } else {
            Some(self.term)
        };
        if self.role != Role::PreCandidate || Some(term) != expected_term {
            return self.ignore_stale_response("PreVoteResponse");
        }
        self.record_vote(from, granted);
        self.tally_votes(Campaign::PreVote);
        Ok(())
    }

    fn handle_vote_response(&mut self, from: NodeId, granted: bool) -> Result<(), Rejection> {
        if self.role != Role::Candidate {
            return self.ignore_stale_response("RequestVoteResponse");
        }
        self.record_vote(from, granted);
        self.tally_votes(Campaign::Election);
        Ok(())
    }

    fn record_vote(&mut self, from: NodeId, granted: bool) {
        if self.is_voter(from) {
            self.votes.entry(from).or_insert(granted);
        }
    }

    /// Moves on once a quorum granted or rejected.
    fn tally_votes(&mut self, campaign: Campaign) {
        let granted = self.votes.values().filter(|granted| **granted).count();
        let rejected = self.votes.len() - granted;
        let quorum = self.membership.quorum();
        if granted >= quorum {
            match campaign {
                Campaign::PreVote => self.campaign(Campaign::Election),
                Campaign::Election | Campaign::Transfer => self.become_leader(),
            }
        } else if rejected >= quorum {
            tracing::info!(node = %self.id, term = %self.term, role = ?self.role, "lost the election; following");
            self.become_follower(self.term, None);
        }
    }

    pub(crate) fn ignore_stale_response(&mut self, kind: &'static str) -> Result<(), Rejection> {
        self.stats.ignored_stale_response += 1;
        tracing::debug!(node = %self.id, kind, role = ?self.role, "ignored stale response");
        Err(Rejection::StaleResponse { kind })
    }

    fn handle_timeout_now(&mut self, from: NodeId) -> Result<(), Rejection> {
        // Only the leader of the current term sends TimeoutNow, so a replica that has not
        // heard from it yet (just restarted, or running a pre-vote) follows it as well.
        let from_leader = self.leader.is_none_or(|leader| leader == from);
        let waiting = matches!(self.role, Role::Follower | Role::PreCandidate);
        if !waiting || !from_leader || !self.is_promotable() {
            return self.ignore_stale_response("TimeoutNow");
        }
        tracing::info!(node = %self.id, term = %self.term, leader = %from, "leadership transfer: campaigning now");
        self.campaign(Campaign::Transfer);
        Ok(())
    }

    /// Starts a pre-vote round or an election.
    pub(crate) fn campaign(&mut self, campaign: Campaign) {
        if !self.is_promotable() {
            return;
        }
        if self.catching_up && self.log.last_index() > LogIndex(0) {
            // Entries arrived after a start without data: the group has a history this
            // replica has not fully stored, and its earlier votes are lost.
            tracing::debug!(node = %self.id, term = %self.term, "not campaigning while catching up");
            self.quick_campaigns_left = 0;
            self.reset_election_timer();
            return;
        }
        if self.term.0 == u64::MAX {
            // No term follows; only forged messages can have raised the term this far.
            tracing::warn!(node = %self.id, term = %self.term, "not campaigning: the term cannot be raised");
            self.quick_campaigns_left = 0;
            self.reset_election_timer();
            return;
        }
        self.votes.clear();
        self.leader = None;
        // A pre-vote and the election it leads to are one attempt.
        if campaign == Campaign::PreVote || !self.config.pre_vote {
            self.quick_campaigns_left = self.quick_campaigns_left.saturating_sub(1);
        }
        let (term, role) = match campaign {
            Campaign::PreVote => (self.term.next(), Role::PreCandidate),
            Campaign::Election | Campaign::Transfer => {
                self.term = self.term.next();
                self.vote = Some(self.id);
                self.stats.elections_started += 1;
                (self.term, Role::Candidate)
            }
        };
        self.role = role;
        self.reset_election_timer();
        tracing::info!(node = %self.id, %term, ?campaign, "campaigning");
        self.votes.insert(self.id, true);

        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        let voters: alloc::vec::Vec<NodeId> = self
            .membership
            .voters
            .iter()
            .copied()
            .filter(|voter| *voter != self.id)
            .collect();
        for voter in voters {
            let body = match campaign {
                Campaign::PreVote => MessageBody::PreVote {
                    last_log_index,
                    last_log_term,
                },
                Campaign::Election | Campaign::Transfer => MessageBody::RequestVote {
                    last_log_index,
                    last_log_term,
                    leadership_transfer: campaign == Campaign::Transfer,
                },
            };
            self.send_with_term(voter, term, body);
        }
        self.tally_votes(campaign);
    }

    /// Becomes a follower in `term` (which must not be older than the current one).
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        debug_assert!(term >= self.term);
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            self.step_down();
        }
        self.role = Role::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.quick_campaigns_left = 0;
        }
        self.votes.clear();
        self.reset_election_timer();
    }

    /// Drops the state only a leader keeps.
    fn step_down(&mut self) {
        self.progress.clear();
        self.transfer_target = None;
        self.uncommitted_bytes = 0;
        self.replication_pending = false;
        self.reads.drain_all(&mut self.dropped_reads);
    }

    fn become_leader(&mut self) {
        debug_assert_eq!(self.role, Role::Candidate);
        debug_assert_eq!(self.vote, Some(self.id));
        tracing::info!(node = %self.id, term = %self.term, last_index = %self.log.last_index(), "became leader");
        self.stats.elections_won += 1;
        self.quick_campaigns_left = 0;
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.election_elapsed_ticks = 0;
        self.heartbeat_elapsed_ticks = 0;
        self.transfer_target = None;
        if self.catching_up {
            self.catching_up = false;
            self.catch_up_target = None;
            self.catch_up_ended_unreported = true;
        }

        let next_index = self.log.last_index().next();
        self.progress.clear();
        let members: alloc::vec::Vec<NodeId> = self
            .membership
            .members()
            .filter(|member| *member != self.id)
            .collect();
        for member in members {
            self.progress.insert(member, Progress::new(next_index));
        }

        // Entries of earlier terms commit only together with an entry of this term, so the
        // leader appends one at once instead of waiting for a client write.
        let noop = Entry {
            term: self.term,
            index: next_index,
            kind: EntryKind::LeaderNoop,
            data: bytes::Bytes::new(),
        };
        self.uncommitted_bytes = noop.size_bytes();
        self.log.append(noop);
        self.replication_pending = true;
        self.maybe_commit();
    }
}
