//! Bad input never panics the Raft core: arbitrary messages are rejected and counted.
//!
//! The core checks its own invariants after every `tick`, `step` and `on_persisted` in
//! debug builds, which `cargo test` uses, so a property run that does not panic also shows
//! that no bad message broke an invariant.

use bytes::Bytes;
use proptest::prelude::*;
use shardraft_raft::{
    AppendOutcome, Config, Entry, EntryKind, GroupTiming, HardState, LogIndex, Membership,
    MembershipChange, MembershipChangeEntry, Message, MessageBody, NodeId, RaftNode, Rejection,
    RestoredState, Role, SnapshotMeta, SnapshotTransfer, Stats, Term,
};
use shardraft_tests::harness::Cluster;

const ELECTION_TICKS: u32 = 200;

// ----- Table tests -----

fn follower_in_term(term: u64) -> RaftNode {
    let config = Config::new(
        NodeId(1),
        Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
    );
    let restored = RestoredState {
        hard_state: HardState {
            term: Term(term),
            vote: None,
            commit: LogIndex(0),
        },
        snapshot: None,
        entries: Vec::new(),
        applied: LogIndex(0),
        catching_up: false,
        founding: false,
    };
    RaftNode::new(config, restored).expect("valid config and state")
}

fn heartbeat(from: u64, to: u64, term: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body: MessageBody::Heartbeat {
            leader_commit: LogIndex(0),
            committed_at_leader: LogIndex(0),
            read_round: None,
        },
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        kind: EntryKind::Normal,
        data: Bytes::from_static(b"x"),
    }
}

#[test]
fn unknown_sender_rejected_and_counted() {
    // A vote request from a node outside the membership, with a newer term, changes
    // nothing: a removed node cannot raise the group's term.
    let mut node = follower_in_term(1);
    let result = node.step(Message {
        from: NodeId(9),
        to: NodeId(1),
        term: Term(5),
        body: MessageBody::RequestVote {
            last_log_index: LogIndex(100),
            last_log_term: Term(4),
            leadership_transfer: true,
        },
    });
    assert_eq!(
        result,
        Err(Rejection::UnknownSender { from: NodeId(9) }),
        "result of a message from node 9"
    );
    let stats = node.stats();
    assert_eq!(stats.rejected_unknown_sender, 1, "stats: {stats:?}");
    let term = node.term();
    assert_eq!(term, Term(1), "the term stays");
}

#[test]
fn leader_outside_the_membership_is_followed() {
    // The change that removed a node from this replica's membership may be uncommitted and
    // about to be replaced by that node's log, so its leader traffic is accepted.
    let mut node = follower_in_term(1);
    let result = node.step(heartbeat(9, 1, 2));
    assert_eq!(result, Ok(()), "result of a heartbeat from node 9");
    assert_eq!(node.leader(), Some(NodeId(9)));
    assert_eq!(node.term(), Term(2));
}

#[test]
fn message_to_other_node_rejected() {
    let mut node = follower_in_term(1);
    let result = node.step(heartbeat(2, 3, 1));
    assert_eq!(
        result,
        Err(Rejection::WrongRecipient { to: NodeId(3) }),
        "result of a message for node 3"
    );
    let stats = node.stats();
    assert_eq!(stats.rejected_wrong_recipient, 1, "stats: {stats:?}");
}

#[test]
fn older_term_rejected_as_stale() {
    let mut node = follower_in_term(2);
    let result = node.step(heartbeat(2, 1, 1));
    assert_eq!(
        result,
        Err(Rejection::StaleTerm {
            message_term: Term(1),
            current_term: Term(2),
        }),
        "result of a term-1 heartbeat in term 2"
    );
    let stats = node.stats();
    assert_eq!(stats.rejected_stale_term, 1, "stats: {stats:?}");
    let leader = node.leader();
    assert_eq!(leader, None, "the stale sender is not accepted as leader");
}

#[test]
fn non_contiguous_append_rejected_as_malformed() {
    let mut node = follower_in_term(1);
    let message = Message {
        from: NodeId(2),
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::AppendEntries {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![entry(1, 1), entry(3, 1)],
            leader_commit: LogIndex(0),
        },
    };
    let result = node.step(message);
    assert!(
        matches!(
            result,
            Err(Rejection::Malformed {
                kind: "AppendEntries",
                ..
            })
        ),
        "result of entries 1 and 3: {result:?}"
    );
    let stats = node.stats();
    assert_eq!(stats.rejected_malformed, 1, "stats: {stats:?}");
    let last_index = node.last_index();
    assert_eq!(last_index, LogIndex(0), "nothing was appended");
}

#[test]
fn match_index_past_leader_log_rejected_as_malformed() {
    let mut cluster = Cluster::new(3);
    cluster.elect(1, ELECTION_TICKS);
    cluster.stabilize();
    let leader = cluster.node_mut(1);
    let last_index = leader.last_index();
    let term = leader.term();
    let stats_before = leader.stats();
    let result = leader.step(Message {
        from: NodeId(2),
        to: NodeId(1),
        term,
        body: MessageBody::AppendEntriesResponse {
            outcome: AppendOutcome::Accepted {
                match_index: last_index.plus(5),
            },
            catching_up: false,
        },
    });
    assert!(
        matches!(
            result,
            Err(Rejection::Malformed {
                kind: "AppendEntriesResponse",
                ..
            })
        ),
        "result of a match index 5 past the leader's log: {result:?}"
    );
    let malformed = leader.stats().rejected_malformed - stats_before.rejected_malformed;
    assert_eq!(malformed, 1, "malformed messages counted");
    let match_index = leader.progress(NodeId(2)).map(|p| p.match_index);
    assert_eq!(
        match_index,
        Some(last_index),
        "the follower's match index stays"
    );
}

// ----- Property: arbitrary messages -----

/// One step of a property run.
#[derive(Clone, Debug)]
enum Action {
    Tick(usize),
    /// Takes a node's ready, persists it and queues its messages.
    Ready(usize),
    /// Delivers the queued message at this position (modulo the queue length).
    Deliver(usize),
    /// Steps a generated message into a node; `to` replaces the recipient when set.
    Inject {
        node: usize,
        to: Option<u64>,
        message: Message,
    },
    Propose(usize),
    ReadIndex(usize, u64),
    Transfer(usize, u64),
    ChangeMembership(usize, u64, u8),
    Compact(usize),
    ReportSnapshot(usize, u64, bool),
}

fn node_id() -> impl Strategy<Value = u64> {
    prop_oneof![6 => 1..=3u64, 1 => Just(0u64), 1 => 4..=6u64, 1 => Just(u64::MAX)]
}

fn term() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0..6u64,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => any::<u64>(),
    ]
}

fn index() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0..12u64,
        1 => Just(u64::MAX),
        1 => Just(u64::MAX - 1),
        1 => any::<u64>(),
    ]
}

/// Entries that either follow `prev_log_index` one by one with non-decreasing terms (to
/// get past the shape check) or have arbitrary indexes and terms.
fn entries(prev_log_index: u64) -> impl Strategy<Value = Vec<Entry>> {
    let contiguous = prop::collection::vec(0..6u64, 0..4).prop_map(move |mut terms| {
        terms.sort_unstable();
        terms
            .iter()
            .enumerate()
            .map(|(offset, term)| entry(prev_log_index.saturating_add(offset as u64 + 1), *term))
            .collect()
    });
    let arbitrary = prop::collection::vec((index(), term()), 0..4)
        .prop_map(|pairs| pairs.into_iter().map(|(i, t)| entry(i, t)).collect());
    prop_oneof![contiguous, arbitrary]
}

fn append_entries() -> impl Strategy<Value = MessageBody> {
    (index(), term(), index()).prop_flat_map(|(prev_log_index, prev_log_term, leader_commit)| {
        entries(prev_log_index).prop_map(move |entries| MessageBody::AppendEntries {
            prev_log_index: LogIndex(prev_log_index),
            prev_log_term: Term(prev_log_term),
            entries,
            leader_commit: LogIndex(leader_commit),
        })
    })
}

fn body() -> impl Strategy<Value = MessageBody> {
    let read_round = prop_oneof![
        Just(None),
        (0..4u64).prop_map(Some),
        any::<u64>().prop_map(Some)
    ];
    prop_oneof![
        (index(), term()).prop_map(|(i, t)| MessageBody::PreVote {
            last_log_index: LogIndex(i),
            last_log_term: Term(t),
        }),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        (index(), term(), any::<bool>()).prop_map(|(i, t, transfer)| MessageBody::RequestVote {
            last_log_index: LogIndex(i),
            last_log_term: Term(t),
            leadership_transfer: transfer,
        }),
        any::<bool>().prop_map(|granted| MessageBody::RequestVoteResponse { granted }),
        append_entries(),
        (index(), any::<bool>()).prop_map(|(i, catching_up)| {
            MessageBody::AppendEntriesResponse {
                outcome: AppendOutcome::Accepted {
                    match_index: LogIndex(i),
                },
                catching_up,
            }
        }),
        (index(), index(), term(), any::<bool>()).prop_map(
            |(rejected, hint, hint_term, catching_up)| MessageBody::AppendEntriesResponse {
                outcome: AppendOutcome::Rejected {
                    rejected_prev_index: LogIndex(rejected),
                    hint_index: LogIndex(hint),
                    hint_term: Term(hint_term),
                },
                catching_up,
            }
        ),
        (index(), index(), read_round.clone()).prop_map(|(i, at_leader, read_round)| {
            MessageBody::Heartbeat {
                leader_commit: LogIndex(i),
                committed_at_leader: LogIndex(at_leader),
                read_round,
            }
        }),
        (read_round, any::<bool>()).prop_map(|(read_round, catching_up)| {
            MessageBody::HeartbeatResponse {
                read_round,
                catching_up,
            }
        }),
        Just(MessageBody::TimeoutNow),
        (index(), any::<bool>()).prop_map(|(i, catching_up)| {
            MessageBody::AppendEntriesResponse {
                outcome: AppendOutcome::LostEntries {
                    last_index: LogIndex(i),
                },
                catching_up,
            }
        }),
        install_snapshot(),
        membership_entries(),
    ]
}

/// Timings of any shape, valid or not, or none.
fn timing() -> impl Strategy<Value = Option<GroupTiming>> {
    prop::option::of(
        (0..8u32, 0..40u32, 0..40u32).prop_map(|(heartbeat, min, max)| GroupTiming {
            heartbeat_interval_ticks: heartbeat,
            election_timeout_ticks_min: min,
            election_timeout_ticks_max: max,
        }),
    )
}

fn membership() -> impl Strategy<Value = Membership> {
    let ids = || prop::collection::btree_set(node_id().prop_map(NodeId), 0..4);
    (ids(), ids(), ids(), timing()).prop_map(
        |(voters, learners, promote_when_caught_up, timing)| Membership {
            voters,
            learners,
            promote_when_caught_up,
            timing,
        },
    )
}

/// Snapshots of any shape: index and term anywhere, memberships valid or not.
fn install_snapshot() -> impl Strategy<Value = MessageBody> {
    (index(), term(), membership()).prop_map(|(index, term, membership)| {
        MessageBody::InstallSnapshot {
            snapshot: SnapshotMeta {
                index: LogIndex(index),
                term: Term(term),
                membership,
            },
        }
    })
}

/// An `AppendEntries` whose entries are membership changes, well-formed or arbitrary bytes.
fn membership_entries() -> impl Strategy<Value = MessageBody> {
    let well_formed = (1..=6u64, membership(), 0..4u8).prop_map(|(node, membership, kind)| {
        let node = NodeId(node);
        let change = match (kind, membership.timing) {
            (0, _) => MembershipChange::AddLearner {
                node,
                promote_when_caught_up: true,
            },
            (1, _) => MembershipChange::Promote { node },
            (3, Some(timing)) => MembershipChange::SetTiming { timing },
            _ => MembershipChange::Remove { node },
        };
        MembershipChangeEntry {
            change,
            membership,
            context: Bytes::new(),
        }
        .encode()
    });
    let data = prop_oneof![
        well_formed,
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
    ];
    (index(), term(), index(), data).prop_map(|(prev_log_index, term, leader_commit, data)| {
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(prev_log_index),
            prev_log_term: Term(term),
            entries: vec![Entry {
                term: Term(term),
                index: LogIndex(prev_log_index.saturating_add(1)),
                kind: EntryKind::MembershipChange,
                data,
            }],
            leader_commit: LogIndex(leader_commit),
        }
    })
}

fn message() -> impl Strategy<Value = Message> {
    (node_id(), node_id(), term(), body()).prop_map(|(from, to, term, body)| Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    })
}

fn action() -> impl Strategy<Value = Action> {
    let node = 0..3usize;
    prop_oneof![
        4 => node.clone().prop_map(Action::Tick),
        4 => node.clone().prop_map(Action::Ready),
        4 => any::<usize>().prop_map(Action::Deliver),
        6 => (node.clone(), prop::option::weighted(0.1, node_id()), message())
            .prop_map(|(node, to, message)| Action::Inject { node, to, message }),
        1 => node.clone().prop_map(Action::Propose),
        1 => (node.clone(), any::<u64>())
            .prop_map(|(node, context)| Action::ReadIndex(node, context)),
        1 => (node.clone(), node_id()).prop_map(|(node, target)| Action::Transfer(node, target)),
        1 => (node.clone(), node_id(), 0..3u8)
            .prop_map(|(node, target, kind)| Action::ChangeMembership(node, target, kind)),
        1 => node.clone().prop_map(Action::Compact),
        1 => (node, node_id(), any::<bool>())
            .prop_map(|(node, peer, finished)| Action::ReportSnapshot(node, peer, finished)),
    ]
}

/// Three replicas driven directly, without the harness's safety checks. Forged messages
/// can make the group unsafe (two leaders in one term, for example), and this test checks
/// only for panics and counters.
struct Group {
    nodes: Vec<RaftNode>,
    network: Vec<Message>,
}

impl Group {
    fn new() -> Group {
        let membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        let nodes = (1..=3)
            .map(|id| {
                let config = Config::new(NodeId(id), membership.clone());
                RaftNode::new(config, RestoredState::default()).expect("valid config")
            })
            .collect();
        Group {
            nodes,
            network: Vec::new(),
        }
    }

    fn step_checked(&mut self, node: usize, message: Message) -> Result<(), TestCaseError> {
        let target = &mut self.nodes[node];
        let before = target.stats();
        let description = format!("{message:?}");
        let result = target.step(message);
        let after = target.stats();
        check_counted(&result, before, after, &description)
    }

    fn run(&mut self, action: Action) -> Result<(), TestCaseError> {
        match action {
            Action::Tick(node) => self.nodes[node].tick(),
            Action::Ready(node) => {
                if let Some(ready) = self.nodes[node].ready() {
                    self.network.extend(ready.messages);
                    self.nodes[node].on_persisted(ready.number);
                    self.network.extend(ready.messages_after_persist);
                }
            }
            Action::Deliver(position) => {
                if !self.network.is_empty() {
                    let message = self.network.remove(position % self.network.len());
                    if let Some(node) = self.nodes.iter().position(|n| n.id() == message.to) {
                        self.step_checked(node, message)?;
                    }
                }
            }
            Action::Inject {
                node,
                to,
                mut message,
            } => {
                message.to = NodeId(to.unwrap_or(node as u64 + 1));
                self.step_checked(node, message)?;
            }
            Action::Propose(node) => {
                let _ = self.nodes[node].propose(Bytes::from_static(b"p"));
            }
            Action::ReadIndex(node, context) => {
                let _ = self.nodes[node].read_index(context);
            }
            Action::Transfer(node, target) => {
                let _ = self.nodes[node].transfer_leadership(NodeId(target));
            }
            Action::ChangeMembership(node, target, kind) => {
                let target = NodeId(target);
                let change = match kind {
                    0 => MembershipChange::AddLearner {
                        node: target,
                        promote_when_caught_up: true,
                    },
                    1 => MembershipChange::Promote { node: target },
                    _ => MembershipChange::Remove { node: target },
                };
                let _ = self.nodes[node].propose_membership_change(change, Bytes::new());
            }
            Action::Compact(node) => {
                let replica = &mut self.nodes[node];
                if let Some(meta) = replica.snapshot_meta(replica.applied_index()) {
                    let through = meta.index;
                    let _ = replica.compact(meta, through);
                }
            }
            Action::ReportSnapshot(node, peer, finished) => {
                let outcome = if finished {
                    SnapshotTransfer::Finished
                } else {
                    SnapshotTransfer::Failed
                };
                self.nodes[node].report_snapshot(NodeId(peer), outcome);
            }
        }
        Ok(())
    }
}

/// Checks that exactly the counter of the rejection's kind went up by one, and that an
/// accepted message left every rejection counter alone.
fn check_counted(
    result: &Result<(), Rejection>,
    before: Stats,
    after: Stats,
    message: &str,
) -> Result<(), TestCaseError> {
    let mut expected = before;
    match result {
        Ok(()) => {}
        Err(Rejection::WrongRecipient { .. }) => expected.rejected_wrong_recipient += 1,
        Err(Rejection::UnknownSender { .. }) => expected.rejected_unknown_sender += 1,
        Err(Rejection::StaleTerm { .. }) => expected.rejected_stale_term += 1,
        Err(Rejection::Malformed { .. }) => expected.rejected_malformed += 1,
        Err(Rejection::StaleResponse { .. }) => expected.ignored_stale_response += 1,
    }
    // A vote request ignored during a leader's lease is accepted input, counted on its own,
    // and so is a follower's report that it lost entries it had acknowledged.
    if result.is_ok() && after.ignored_vote_in_lease == before.ignored_vote_in_lease + 1 {
        expected.ignored_vote_in_lease += 1;
    }
    if result.is_ok()
        && after.rejections_of_acknowledged_entries == before.rejections_of_acknowledged_entries + 1
    {
        expected.rejections_of_acknowledged_entries += 1;
    }
    // Elections are the protocol at work, not rejected input: a message that makes the
    // replica campaign (TimeoutNow) or win (a granted vote) counts them.
    if result.is_ok() {
        expected.elections_started = after.elections_started;
        expected.elections_won = after.elections_won;
    }
    prop_assert_eq!(after, expected, "result {:?} of {}", result, message);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_messages_never_panic(
        warmup in 0..50usize,
        actions in prop::collection::vec(action(), 1..80),
    ) {
        let mut group = Group::new();
        // Ticks and deliveries first, so that many runs start from a group with a leader.
        for _ in 0..warmup {
            for node in 0..3 {
                group.run(Action::Tick(node))?;
            }
            for node in 0..3 {
                group.run(Action::Ready(node))?;
            }
            while !group.network.is_empty() {
                group.run(Action::Deliver(0))?;
                for node in 0..3 {
                    group.run(Action::Ready(node))?;
                }
            }
        }
        for action in actions {
            group.run(action)?;
        }
        let leaders = group.nodes.iter().filter(|n| n.role() == Role::Leader).count();
        prop_assert!(leaders <= 3, "leaders: {}", leaders);
    }
}
