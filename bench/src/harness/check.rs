//! The linearizability check of `--check`: the operations a point recorded become a
//! [`History`] for the project's checker ([`shardraft_tests::lincheck`]).
//!
//! Each operation carries the instants just before its request was issued and just after
//! its reply arrived, read from the monotonic clock that all threads share. So the real
//! operation lies within the recorded interval, and ordering every invocation and
//! completion by those instants gives a history whose real-time order is sound. At equal
//! instants a completion goes first: the completion was read after the reply and the
//! invocation before the request, so the two really happened in that order.
//!
//! Writes are put operations with values unique within the point (their tags), reads are
//! linearizable gets. A refused operation had no effect (`fail`), an indeterminate one may
//! have taken effect at any later time (`info`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use shardraft_tests::history::{Call, History, HistoryRecorder, OpHandle, Output};
use shardraft_tests::lincheck::{self, CheckOutcome};

use super::result::CheckResult;

/// Most offending operations the verdict's detail lists.
const OFFENDING_SHOWN_MAX: usize = 12;

/// Kind of a recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedCall {
    /// A put of the value with this tag.
    Write { tag: String },
    /// A linearizable read.
    Read,
}

/// Completion of a recorded operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordedOutcome {
    /// The put was acknowledged.
    Written,
    /// The read returned the value of this tag, or `None` for an absent key.
    Read(Option<String>),
    /// The operation definitely had no effect.
    Refused,
    /// The operation may or may not have taken effect.
    Indeterminate,
}

/// One operation of a point, as issued by one client or open-loop slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedOperation {
    /// The client or slot; it has at most one operation in flight at a time.
    pub process: u64,
    pub key: String,
    pub call: RecordedCall,
    /// Read just before the request was issued.
    pub started: Instant,
    /// Read just after the reply arrived.
    pub ended: Instant,
    pub outcome: RecordedOutcome,
}

/// An invocation or completion, for ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum EventKind {
    // Declared first so that it sorts first at equal instants.
    Completion,
    Invocation,
}

/// Builds the history of `operations`.
///
/// # Errors
///
/// When a process has two operations in flight at once, which the load generator never
/// issues and the history format cannot pair.
pub fn build_history(operations: &[RecordedOperation]) -> anyhow::Result<History> {
    check_one_in_flight(operations)?;
    let mut events: Vec<(Instant, EventKind, usize)> = Vec::with_capacity(2 * operations.len());
    for (index, operation) in operations.iter().enumerate() {
        events.push((operation.started, EventKind::Invocation, index));
        events.push((operation.ended, EventKind::Completion, index));
    }
    events.sort_unstable();

    let mut recorder = HistoryRecorder::new();
    let mut handles: Vec<Option<OpHandle>> = vec![None; operations.len()];
    for (_, kind, index) in events {
        let operation = &operations[index];
        match kind {
            EventKind::Invocation => {
                handles[index] = Some(recorder.invoke(operation.process, call_of(operation)));
            }
            EventKind::Completion => {
                let Some(handle) = handles[index] else {
                    anyhow::bail!("operation {index} completed before it was invoked");
                };
                complete(&mut recorder, handle, &operation.outcome);
            }
        }
    }
    Ok(recorder.into_history())
}

/// Checks that each process's operations do not overlap, so that the recorder accepts
/// them.
fn check_one_in_flight(operations: &[RecordedOperation]) -> anyhow::Result<()> {
    let mut by_process: HashMap<u64, Vec<(Instant, Instant)>> = HashMap::new();
    for operation in operations {
        ensure!(
            operation.started <= operation.ended,
            "an operation of process {} ended before it started",
            operation.process
        );
        by_process
            .entry(operation.process)
            .or_default()
            .push((operation.started, operation.ended));
    }
    for (process, mut intervals) in by_process {
        intervals.sort_unstable();
        for pair in intervals.windows(2) {
            ensure!(
                pair[0].1 <= pair[1].0,
                "process {process} had two operations in flight at once; the history cannot \
                 pair their completions"
            );
        }
    }
    Ok(())
}

fn call_of(operation: &RecordedOperation) -> Call {
    let key = operation.key.clone();
    match &operation.call {
        RecordedCall::Write { tag } => Call::Write {
            key,
            value: tag.clone(),
        },
        RecordedCall::Read => Call::Read { key },
    }
}

fn complete(recorder: &mut HistoryRecorder, handle: OpHandle, outcome: &RecordedOutcome) {
    match outcome {
        RecordedOutcome::Written => recorder.ok(handle, Output::Done),
        RecordedOutcome::Read(value) => recorder.ok(handle, Output::Read(value.clone())),
        RecordedOutcome::Refused => recorder.fail(handle),
        RecordedOutcome::Indeterminate => recorder.info(handle),
    }
}

/// Checks the history of `operations` within `time_limit` and returns the verdict.
///
/// # Errors
///
/// When the history cannot be built (see [`build_history`]).
pub fn check_operations(
    operations: &[RecordedOperation],
    time_limit: Duration,
) -> anyhow::Result<CheckResult> {
    let started = Instant::now();
    let history = build_history(operations)?;
    let outcome = lincheck::check(&history, time_limit);
    let check_secs = started.elapsed().as_secs_f64();
    let (verdict, detail) = match outcome {
        CheckOutcome::Linearizable => ("linearizable", None),
        CheckOutcome::NotLinearizable {
            key,
            offending,
            minimal,
            first_failure,
        } => {
            let detail = describe_violation(&key, &offending, minimal, first_failure.as_ref());
            ("not_linearizable", Some(detail))
        }
        CheckOutcome::Unknown { reason } => ("unknown", Some(reason)),
    };
    Ok(CheckResult {
        verdict: verdict.to_string(),
        operations_checked: history.len() as u64,
        check_secs,
        detail,
    })
}

fn describe_violation(
    key: &str,
    offending: &[shardraft_tests::history::Operation],
    minimal: bool,
    first_failure: Option<&shardraft_tests::history::Operation>,
) -> String {
    let mut detail = format!(
        "key {key:?}: {} operations with no linearization{}",
        offending.len(),
        if minimal { " (1-minimal)" } else { "" }
    );
    if let Some(first) = first_failure {
        detail.push_str(&format!("; first failure: {first}"));
    }
    for operation in offending.iter().take(OFFENDING_SHOWN_MAX) {
        detail.push_str(&format!("; {operation}"));
    }
    if offending.len() > OFFENDING_SHOWN_MAX {
        detail.push_str(&format!(
            "; and {} more",
            offending.len() - OFFENDING_SHOWN_MAX
        ));
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(origin: Instant, micros: u64) -> Instant {
        origin + Duration::from_micros(micros)
    }

    fn operation(
        origin: Instant,
        process: u64,
        call: RecordedCall,
        span_micros: (u64, u64),
        outcome: RecordedOutcome,
    ) -> RecordedOperation {
        RecordedOperation {
            process,
            key: "k1".to_string(),
            call,
            started: at(origin, span_micros.0),
            ended: at(origin, span_micros.1),
            outcome,
        }
    }

    fn write(tag: &str) -> RecordedCall {
        RecordedCall::Write {
            tag: tag.to_string(),
        }
    }

    fn read_of(tag: Option<&str>) -> RecordedOutcome {
        RecordedOutcome::Read(tag.map(str::to_string))
    }

    fn verdict(operations: &[RecordedOperation]) -> String {
        check_operations(operations, Duration::from_secs(5))
            .unwrap()
            .verdict
    }

    #[test]
    fn sequential_write_then_read_is_linearizable() {
        let origin = Instant::now();
        let operations = [
            operation(origin, 0, write("a"), (0, 10), RecordedOutcome::Written),
            operation(origin, 1, RecordedCall::Read, (20, 30), read_of(Some("a"))),
        ];
        assert_eq!(verdict(&operations), "linearizable");
    }

    #[test]
    fn stale_read_after_write_is_not_linearizable() {
        let origin = Instant::now();
        let operations = [
            operation(origin, 0, write("a"), (0, 10), RecordedOutcome::Written),
            operation(origin, 1, RecordedCall::Read, (20, 30), read_of(None)),
        ];
        let result = check_operations(&operations, Duration::from_secs(5)).unwrap();
        assert_eq!(result.verdict, "not_linearizable");
        assert!(result.detail.unwrap().contains("k1"));
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let origin = Instant::now();
        let operations = [
            operation(origin, 0, write("a"), (0, 10), RecordedOutcome::Written),
            operation(origin, 1, RecordedCall::Read, (5, 30), read_of(None)),
        ];
        assert_eq!(verdict(&operations), "linearizable");
    }

    #[test]
    fn indeterminate_write_may_appear_later() {
        let origin = Instant::now();
        let operations = [
            operation(
                origin,
                0,
                write("a"),
                (0, 10),
                RecordedOutcome::Indeterminate,
            ),
            operation(origin, 1, RecordedCall::Read, (20, 30), read_of(None)),
            operation(origin, 1, RecordedCall::Read, (40, 50), read_of(Some("a"))),
        ];
        assert_eq!(verdict(&operations), "linearizable");
    }

    #[test]
    fn refused_write_must_never_be_seen() {
        let origin = Instant::now();
        let operations = [
            operation(origin, 0, write("a"), (0, 10), RecordedOutcome::Refused),
            operation(origin, 1, RecordedCall::Read, (20, 30), read_of(Some("a"))),
        ];
        assert_eq!(verdict(&operations), "not_linearizable");
    }

    #[test]
    fn completion_sorts_before_invocation_at_equal_instants() {
        let origin = Instant::now();
        // The same process's next operation starts at the instant its last one ended.
        let operations = [
            operation(origin, 0, write("a"), (0, 10), RecordedOutcome::Written),
            operation(origin, 0, write("b"), (10, 20), RecordedOutcome::Written),
            operation(origin, 1, RecordedCall::Read, (20, 30), read_of(Some("b"))),
        ];
        let history = build_history(&operations).unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(verdict(&operations), "linearizable");
    }

    #[test]
    fn overlapping_operations_of_one_process_rejected() {
        let origin = Instant::now();
        let operations = [
            operation(origin, 0, write("a"), (0, 10), RecordedOutcome::Written),
            operation(origin, 0, write("b"), (5, 20), RecordedOutcome::Written),
        ];
        let error = build_history(&operations).unwrap_err();
        assert!(
            error.to_string().contains("two operations in flight"),
            "{error}"
        );
    }
}
