//! Settings of one Raft node, with the relations between them checked by
//! [`Config::validate`].

use crate::types::{GroupTiming, Membership, NodeId};

/// Settings of one replica. Time is counted in ticks: the runtime calls
/// `RaftNode::tick` at a fixed interval of its choosing.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's id; it must be a member of `membership`.
    pub id: NodeId,
    /// The group's members when the node starts.
    pub membership: Membership,
    /// Lower bound of the randomized election timeout, in ticks. Also the length of a
    /// leader's lease and of the check-quorum interval.
    pub election_timeout_ticks_min: u32,
    /// Upper bound (exclusive) of the randomized election timeout, in ticks.
    pub election_timeout_ticks_max: u32,
    /// Ticks between heartbeats from the leader.
    pub heartbeat_interval_ticks: u32,
    /// Run a pre-vote round before each election, so that a node that was cut off cannot
    /// raise the group's term when it comes back.
    pub pre_vote: bool,
    /// Make a leader step down when it has not heard from a quorum within
    /// `election_timeout_ticks_min`, and make voters reject candidates while they still
    /// hear from a leader.
    pub check_quorum: bool,
    /// Maximum entries in one `AppendEntries`.
    pub max_entries_per_message: usize,
    /// Maximum payload bytes in one `AppendEntries`; a single larger entry is still sent alone.
    pub max_bytes_per_message: u64,
    /// Maximum `AppendEntries` in flight to one follower before the leader waits for acks.
    /// A soft limit: when a heartbeat answer shows the follower behind with a full window,
    /// the leader counts the oldest message as lost, so a slow follower gets one more
    /// message per heartbeat interval.
    pub max_inflight_messages: usize,
    /// Maximum entry bytes in flight to one follower before the leader waits for acks.
    /// Checked before each message, so the last message may pass it by up to
    /// `max_bytes_per_message`.
    pub max_inflight_bytes: u64,
    /// Maximum bytes of uncommitted entries at the leader; beyond it, proposals are rejected.
    pub max_uncommitted_bytes: u64,
    /// Maximum ReadIndex requests queued at the leader before it rejects new ones.
    pub max_pending_reads: usize,
    /// Reads that start a ReadIndex round at once while an earlier round still awaits its
    /// quorum. Fewer wait for that round's acknowledgements and then join the next round, so one
    /// heartbeat per voter confirms more reads. 1 starts a round for every batch of reads,
    /// for the lowest latency. A larger value adds up to one round trip of latency and
    /// saves heartbeats under a heavy read load.
    pub read_batch_max: usize,
    /// Maximum entries handed out for applying in one `Ready`.
    pub max_committed_entries_per_ready: usize,
    /// A learner added with `promote_when_caught_up` becomes a voter once its log is at
    /// most this many entries behind the leader's.
    pub promote_lag_entries_max: u64,
    /// Seed of the generator that randomizes election timeouts. Give each replica its own.
    pub random_seed: u64,
}

impl Config {
    /// Settings with conservative defaults for a group with the given members: a 10 to 20
    /// tick election timeout and a heartbeat every 2 ticks.
    pub fn new(id: NodeId, membership: Membership) -> Config {
        Config {
            id,
            membership,
            election_timeout_ticks_min: 10,
            election_timeout_ticks_max: 20,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_entries_per_message: 512,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 64,
            max_inflight_bytes: 16 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_pending_reads: 65_536,
            read_batch_max: 1,
            max_committed_entries_per_ready: 4096,
            promote_lag_entries_max: 64,
            random_seed: id.0,
        }
    }

    /// The configured heartbeat interval and election timeout range, which apply until the
    /// group agrees on a timing of its own.
    pub fn configured_timing(&self) -> GroupTiming {
        GroupTiming {
            heartbeat_interval_ticks: self.heartbeat_interval_ticks,
            election_timeout_ticks_min: self.election_timeout_ticks_min,
            election_timeout_ticks_max: self.election_timeout_ticks_max,
        }
    }

    /// Checks each setting's range and the relations between them.
    ///
    /// # Errors
    ///
    /// Returns the first setting found out of range, with the allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.0 == 0 {
            return Err(ConfigError::InvalidNodeId);
        }
        if self.membership.voters.contains(&self.id) && self.membership.learners.contains(&self.id)
        {
            return Err(ConfigError::VoterAndLearner { id: self.id.0 });
        }
        if !self.membership.contains(self.id) {
            return Err(ConfigError::NotAMember { id: self.id.0 });
        }
        if self.membership.voters.iter().any(|voter| voter.0 == 0) {
            return Err(ConfigError::InvalidNodeId);
        }
        if let Some(timing) = &self.membership.timing {
            timing
                .check()
                .map_err(|reason| ConfigError::InvalidTiming { reason })?;
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError::OutOfRange {
                name: "heartbeat_interval_ticks",
                value: 0,
                allowed: "at least 1",
            });
        }
        // Three heartbeats per election timeout, so that one or two lost heartbeats do not
        // start an election.
        if u64::from(self.election_timeout_ticks_min) < 3 * u64::from(self.heartbeat_interval_ticks)
        {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat_interval_ticks: self.heartbeat_interval_ticks,
                election_timeout_ticks_min: self.election_timeout_ticks_min,
            });
        }
        if self.election_timeout_ticks_max <= self.election_timeout_ticks_min {
            return Err(ConfigError::OutOfRange {
                name: "election_timeout_ticks_max",
                value: u64::from(self.election_timeout_ticks_max),
                allowed: "greater than election_timeout_ticks_min",
            });
        }
        let positive_limits = [
            (
                "max_entries_per_message",
                self.max_entries_per_message as u64,
            ),
            ("max_bytes_per_message", self.max_bytes_per_message),
            ("max_inflight_messages", self.max_inflight_messages as u64),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
            ("max_pending_reads", self.max_pending_reads as u64),
            ("read_batch_max", self.read_batch_max as u64),
            (
                "max_committed_entries_per_ready",
                self.max_committed_entries_per_ready as u64,
            ),
        ];
        for (name, value) in positive_limits {
            if value == 0 {
                return Err(ConfigError::OutOfRange {
                    name,
                    value,
                    allowed: "at least 1",
                });
            }
        }
        Ok(())
    }
}

/// The settings of [`Config`] that bound how a leader batches and pipelines entries to its
/// followers, and how it batches reads into ReadIndex rounds. They change nothing about
/// safety, so a leader may change them while it runs
/// ([`RaftNode::set_replication_limits`](crate::RaftNode::set_replication_limits)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationLimits {
    pub max_entries_per_message: usize,
    pub max_bytes_per_message: u64,
    pub max_inflight_messages: usize,
    pub max_inflight_bytes: u64,
    pub read_batch_max: usize,
}

impl ReplicationLimits {
    /// Checks that every limit is at least 1.
    ///
    /// # Errors
    /// The first limit that is 0.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = [
            (
                "max_entries_per_message",
                self.max_entries_per_message as u64,
            ),
            ("max_bytes_per_message", self.max_bytes_per_message),
            ("max_inflight_messages", self.max_inflight_messages as u64),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("read_batch_max", self.read_batch_max as u64),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(ConfigError::OutOfRange {
                    name,
                    value,
                    allowed: "at least 1",
                });
            }
        }
        Ok(())
    }
}

impl Config {
    /// Returns the replication limits of this config.
    pub fn replication_limits(&self) -> ReplicationLimits {
        ReplicationLimits {
            max_entries_per_message: self.max_entries_per_message,
            max_bytes_per_message: self.max_bytes_per_message,
            max_inflight_messages: self.max_inflight_messages,
            max_inflight_bytes: self.max_inflight_bytes,
            read_batch_max: self.read_batch_max,
        }
    }
}

/// A setting of [`Config`] out of its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("node id 0 is reserved; give every node an id of 1 or more")]
    InvalidNodeId,
    #[error("node {id} is not a voter or learner of the membership it was given; add it")]
    NotAMember { id: u64 },
    #[error("node {id} is listed both as voter and as learner; keep one")]
    VoterAndLearner { id: u64 },
    #[error(
        "heartbeat_interval_ticks = {heartbeat_interval_ticks} is too close to \
         election_timeout_ticks_min = {election_timeout_ticks_min}; the election timeout \
         must be at least 3 heartbeat intervals"
    )]
    HeartbeatTooSlow {
        heartbeat_interval_ticks: u32,
        election_timeout_ticks_min: u32,
    },
    #[error("{name} = {value} is out of range; allowed: {allowed}")]
    OutOfRange {
        name: &'static str,
        value: u64,
        allowed: &'static str,
    },
    #[error("the membership's agreed timing is invalid: {reason}")]
    InvalidTiming { reason: &'static str },
}

#[cfg(test)]
mod tests {
    use alloc::string::ToString;

    use super::*;

    /// Sets one limit of a config to zero.
    type SetLimit = fn(&mut Config);

    fn valid() -> Config {
        Config::new(
            NodeId(1),
            Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
        )
    }

    #[test]
    fn default_config_is_valid() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn node_id_zero_rejected() {
        let mut config = valid();
        config.id = NodeId(0);
        config.membership.voters.insert(NodeId(0));
        assert_eq!(config.validate(), Err(ConfigError::InvalidNodeId));
    }

    #[test]
    fn voter_id_zero_rejected() {
        let mut config = valid();
        config.membership.voters.insert(NodeId(0));
        assert_eq!(config.validate(), Err(ConfigError::InvalidNodeId));
    }

    #[test]
    fn non_member_rejected_with_its_id() {
        let mut config = valid();
        config.id = NodeId(7);
        assert_eq!(config.validate(), Err(ConfigError::NotAMember { id: 7 }));
    }

    #[test]
    fn voter_and_learner_rejected() {
        let mut config = valid();
        config.membership.learners.insert(NodeId(1));
        assert_eq!(
            config.validate(),
            Err(ConfigError::VoterAndLearner { id: 1 })
        );
    }

    #[test]
    fn invalid_membership_timing_rejected() {
        let mut config = valid();
        config.membership.timing = Some(GroupTiming {
            heartbeat_interval_ticks: 1,
            election_timeout_ticks_min: 6,
            election_timeout_ticks_max: 6,
        });
        assert!(matches!(
            config.validate(),
            Err(ConfigError::InvalidTiming { .. })
        ));
    }

    #[test]
    fn learner_config_is_valid() {
        let mut membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        membership.learners.insert(NodeId(4));
        let config = Config::new(NodeId(4), membership);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn zero_heartbeat_interval_names_key() {
        let mut config = valid();
        config.heartbeat_interval_ticks = 0;
        let error = config.validate().unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::OutOfRange {
                    name: "heartbeat_interval_ticks",
                    value: 0,
                    ..
                }
            ),
            "error: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("heartbeat_interval_ticks"),
            "message: {message}"
        );
    }

    #[test]
    fn heartbeat_too_slow_names_both_keys() {
        let mut config = valid();
        config.heartbeat_interval_ticks = 4;
        config.election_timeout_ticks_min = 11;
        let error = config.validate().unwrap_err();
        assert_eq!(
            error,
            ConfigError::HeartbeatTooSlow {
                heartbeat_interval_ticks: 4,
                election_timeout_ticks_min: 11,
            }
        );
        let message = error.to_string();
        assert!(
            message.contains("heartbeat_interval_ticks"),
            "message: {message}"
        );
        assert!(
            message.contains("election_timeout_ticks_min"),
            "message: {message}"
        );
    }

    #[test]
    fn heartbeat_exactly_a_third_of_timeout_is_valid() {
        let mut config = valid();
        config.heartbeat_interval_ticks = 4;
        config.election_timeout_ticks_min = 12;
        config.election_timeout_ticks_max = 13;
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn timeout_max_not_above_min_names_key() {
        let mut config = valid();
        config.election_timeout_ticks_max = config.election_timeout_ticks_min;
        let error = config.validate().unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::OutOfRange {
                    name: "election_timeout_ticks_max",
                    ..
                }
            ),
            "error: {error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("election_timeout_ticks_max"),
            "message: {message}"
        );
    }

    #[test]
    fn zero_limits_name_their_key() {
        let cases: [(&str, SetLimit); 7] = [
            ("max_entries_per_message", |c| c.max_entries_per_message = 0),
            ("max_bytes_per_message", |c| c.max_bytes_per_message = 0),
            ("max_inflight_messages", |c| c.max_inflight_messages = 0),
            ("max_inflight_bytes", |c| c.max_inflight_bytes = 0),
            ("max_uncommitted_bytes", |c| c.max_uncommitted_bytes = 0),
            ("max_pending_reads", |c| c.max_pending_reads = 0),
            ("max_committed_entries_per_ready", |c| {
                c.max_committed_entries_per_ready = 0
            }),
        ];
        for (key, set_zero) in cases {
            let mut config = valid();
            set_zero(&mut config);
            let error = config.validate().unwrap_err();
            assert_eq!(
                error,
                ConfigError::OutOfRange {
                    name: key,
                    value: 0,
                    allowed: "at least 1",
                },
                "error for {key} = 0"
            );
            let message = error.to_string();
            assert!(message.contains(key), "message for {key} = 0: {message}");
        }
    }
}
