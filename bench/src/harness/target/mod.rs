//! What a bench run drives: a target system, reached through sessions.
//!
//! A [`Target`] is one system under test (the embedded cluster, a running shardraft
//! cluster, a running etcd cluster). It opens [`Session`]s, each one connection or its
//! equivalent; the harness spreads its clients over the sessions. A session may serve
//! several requests at once when its protocol multiplexes them; one that cannot (HTTP/1.1)
//! serves one at a time, and the harness then opens as many sessions as clients.
//!
//! Everything runs on glommio executors, so futures need not be `Send`.

pub mod embedded;
pub mod endpoints;
pub mod etcd;

use bytes::Bytes;

/// How a read is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Linearizable: the reply reflects every write acknowledged before the read started
    /// (ReadIndex in shardraft, a quorum read in etcd).
    Linearizable,
    /// Served from the contacted replica's state without a quorum round; may be stale
    /// (shardraft's stale reads, etcd's serializable reads).
    Stale,
}

/// One operation that a client issues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Store `value` under `key`.
    Put { key: Bytes, value: Bytes },
    /// Read `key`.
    Get { key: Bytes, mode: ReadMode },
}

/// The successful result of a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The put was applied and acknowledged.
    Written,
    /// The value read; `None` when the key is absent.
    Value(Option<Bytes>),
}

/// A request that did not succeed, split by what the client knows about its effect: the
/// linearizability checker treats the two differently.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request definitely had no effect (refused before it was proposed, a validation
    /// error, no leader known and nothing sent).
    #[error("request refused: {0}")]
    Refused(String),
    /// The request may or may not have taken effect (timeout, connection lost after the
    /// request was sent).
    #[error("request outcome unknown: {0}")]
    Indeterminate(String),
}

/// Facts about a target that every report states.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetFacts {
    /// `embedded`, `endpoints` or `etcd`.
    pub kind: String,
    /// Software and version, for example `shardraft 0.1.0` or `etcd 3.4.23`.
    pub system: String,
    /// Where the data goes before a write is acknowledged, in words, for example
    /// `disk, O_DIRECT + fdatasync before acknowledgement` or `memory, no persistence`.
    pub durability: String,
    /// How the target was reached, for example the endpoints' addresses.
    pub reached_through: String,
}

/// A system under test.
#[allow(async_fn_in_trait)]
pub trait Target {
    type Session: Session + 'static;

    /// Opens session number `index` (0-based). Called before the measured run starts.
    async fn open_session(&self, index: usize) -> anyhow::Result<Self::Session>;

    /// The facts that the report states about this target.
    fn facts(&self) -> TargetFacts;
}

/// One connection (or its equivalent) to a target.
#[allow(async_fn_in_trait)]
pub trait Session {
    /// Runs one request to completion. Never panics on a reply from the target; a reply
    /// that cannot be understood is a [`RequestError::Indeterminate`] for writes.
    async fn execute(&self, request: &Request) -> Result<Response, RequestError>;

    /// Whether this session serves concurrent calls of [`Session::execute`]; when false
    /// the harness gives each client its own session.
    fn multiplexes(&self) -> bool;
}
