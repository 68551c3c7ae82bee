//! The endpoints target: a running shardraft cluster, reached through
//! [`shardraft::client::Client`] at the client addresses given with `--endpoints`.
//!
//! Each session is one [`Client`]: its own background thread with one pipelined connection
//! per member, which routes every request to its key's group leader and retries across
//! leader changes until the client's request timeout. Sessions therefore serve many
//! requests at once.
//!
//! The client protocol does not expose the servers' log counters or CPU time, so this
//! target reports only the entries appended to the logs of the listed endpoints (the sum
//! of each group's last index in their status), and no fdatasyncs or CPU time.

use std::time::Duration;

use anyhow::Context;
use shardraft::client::{Client, ClientConfig, ClientError};

use super::{ReadMode, Request, RequestError, Response, Session, Target, TargetFacts};
use crate::harness::load::{CounterSample, ServerCounters};

/// Time one request may take, redirects and retries included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A running shardraft cluster at `endpoints`.
#[derive(Clone, Debug)]
pub struct EndpointsTarget {
    endpoints: Vec<String>,
}

impl EndpointsTarget {
    /// Creates the target at `endpoints` (`host:port` client addresses), without
    /// connecting yet.
    pub fn new(endpoints: Vec<String>) -> EndpointsTarget {
        EndpointsTarget { endpoints }
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.endpoints.iter().cloned());
        config.request_timeout = REQUEST_TIMEOUT;
        config
    }

    /// Connects a blocking reader of the listed endpoints' status, for the counters of a
    /// point.
    ///
    /// # Errors
    ///
    /// When no endpoint accepts a client within the request timeout.
    pub fn status_reader(&self) -> anyhow::Result<EndpointsStatus> {
        let client = Client::connect(self.client_config()).with_context(|| {
            format!(
                "connecting to the cluster at {} failed; check that it runs (scripts/cluster.sh \
                 starts one on 127.0.0.1)",
                self.endpoints.join(",")
            )
        })?;
        Ok(EndpointsStatus {
            client,
            endpoints: self.endpoints.clone(),
        })
    }
}

impl Target for EndpointsTarget {
    type Session = EndpointsSession;

    async fn open_session(&self, index: usize) -> anyhow::Result<EndpointsSession> {
        let client = Client::connect_async(self.client_config())
            .await
            .with_context(|| {
                format!(
                    "opening session {index} to {} failed; check that the cluster runs",
                    self.endpoints.join(",")
                )
            })?;
        Ok(EndpointsSession { client })
    }

    fn facts(&self) -> TargetFacts {
        TargetFacts {
            kind: "endpoints".to_string(),
            system: "shardraft (a running cluster; its version is not reported to clients)"
                .to_string(),
            durability: "set by the running cluster's log config (storage, sync_writes), \
                         which the client protocol does not report"
                .to_string(),
            reached_through: format!(
                "{} through shardraft::client (pipelined, leader-routed)",
                self.endpoints.join(", ")
            ),
        }
    }
}

/// One [`Client`] of the running cluster.
#[derive(Debug)]
pub struct EndpointsSession {
    client: Client,
}

impl Session for EndpointsSession {
    async fn execute(&self, request: &Request) -> Result<Response, RequestError> {
        match request {
            Request::Put { key, value } => match self.client.put_async(key, value).await {
                Ok(_) => Ok(Response::Written),
                Err(error) => Err(classify_write_error(error)),
            },
            Request::Get { key, mode } => {
                let result = match mode {
                    ReadMode::Linearizable => self.client.get_async(key).await,
                    ReadMode::Stale => self.client.get_stale_async(key).await,
                };
                match result {
                    Ok(found) => Ok(Response::Value(Some(found.value))),
                    Err(ClientError::KeyNotFound) => Ok(Response::Value(None)),
                    Err(error) => Err(RequestError::Refused(error.to_string())),
                }
            }
        }
    }

    fn multiplexes(&self) -> bool {
        true
    }
}

/// Splits a failed put into no effect and unknown effect. The client retries a request
/// across leader changes and lost connections, so an error after the first send may
/// follow an attempt that did apply. Only rejections of the request itself are certain to
/// have had no effect.
fn classify_write_error(error: ClientError) -> RequestError {
    match error {
        ClientError::EmptyKey
        | ClientError::KeyTooLarge { .. }
        | ClientError::ValueTooLarge { .. }
        | ClientError::Invalid { .. }
        | ClientError::ClusterIdMismatch { .. }
        | ClientError::ChangePending { .. } => RequestError::Refused(error.to_string()),
        ClientError::Timeout { .. }
        | ClientError::NoLeader { .. }
        | ClientError::Unavailable { .. }
        | ClientError::Protocol { .. }
        | ClientError::Closed
        | ClientError::KeyNotFound
        | ClientError::CasMismatch { .. } => RequestError::Indeterminate(error.to_string()),
    }
}

/// Reads the status of every listed endpoint, for [`ServerCounters`].
#[derive(Debug)]
pub struct EndpointsStatus {
    client: Client,
    endpoints: Vec<String>,
}

impl ServerCounters for EndpointsStatus {
    /// Sums the last log index over the listed endpoints and their groups, which counts the
    /// entries appended to those replicas' logs. A member missing from `--endpoints` is not
    /// counted.
    fn sample(&self) -> anyhow::Result<CounterSample> {
        let mut log_entries = 0;
        for endpoint in &self.endpoints {
            let report = self
                .client
                .status(endpoint)
                .with_context(|| format!("reading the status of {endpoint} failed"))?;
            log_entries += report
                .groups
                .iter()
                .map(|group| group.last_index)
                .sum::<u64>();
        }
        Ok(CounterSample {
            cpu: None,
            fdatasyncs: None,
            log_entries: Some(log_entries),
            write_stages: None,
            snapshots: None,
            elections: None,
        })
    }

    fn cpu_scope(&self) -> &'static str {
        "not measured: the servers run in other processes"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_puts_are_refused() {
        let error = classify_write_error(ClientError::ValueTooLarge { bytes: 9, max: 8 });
        assert!(matches!(error, RequestError::Refused(_)));
    }

    #[test]
    fn timed_out_puts_are_indeterminate() {
        let error = classify_write_error(ClientError::Timeout { timeout_ms: 5000 });
        assert!(matches!(error, RequestError::Indeterminate(_)));
    }
}
