//! The checker on small hand-built histories, on a pathological one under a tiny time
//! limit, and against an exhaustive reference search on random small histories.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use shardraft_tests::history::{Call, History, HistoryRecorder, OpHandle, Output};
use shardraft_tests::lincheck::{CheckOutcome, check};

const LIMIT: Duration = Duration::from_secs(10);

fn read(key: &str) -> Call {
    Call::Read { key: key.into() }
}

fn write(key: &str, value: &str) -> Call {
    Call::Write {
        key: key.into(),
        value: value.into(),
    }
}

fn cas(key: &str, expected: Option<&str>, new: &str) -> Call {
    Call::Cas {
        key: key.into(),
        expected: expected.map(str::to_string),
        new: new.into(),
    }
}

fn append(key: &str, value: &str) -> Call {
    Call::Append {
        key: key.into(),
        value: value.into(),
    }
}

fn delete(key: &str) -> Call {
    Call::Delete { key: key.into() }
}

fn value(text: &str) -> Output {
    Output::Read(Some(text.into()))
}

/// Records `call` by `process` completing with `output` before the next event.
fn complete(recorder: &mut HistoryRecorder, process: u64, call: Call, output: Output) {
    let op = recorder.invoke(process, call);
    recorder.ok(op, output);
}

fn is_linearizable(history: &History) -> bool {
    match check(history, LIMIT) {
        CheckOutcome::Linearizable => true,
        CheckOutcome::NotLinearizable { .. } => false,
        CheckOutcome::Unknown { reason } => panic!("check did not decide: {reason}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert!(is_linearizable(&History::default()));
}

#[test]
fn read_of_overwritten_value_rejected() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(&mut recorder, 0, write("x", "2"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("1"));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn read_after_write_accepted() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 1, read("x"), Output::Read(None));
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("1"));
    assert!(is_linearizable(&recorder.history()));
}

#[test]
fn read_of_never_written_value_rejected() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 1, read("x"), value("7"));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn concurrent_writes_either_order_accepted() {
    for last in ["1", "2"] {
        let mut recorder = HistoryRecorder::new();
        let first = recorder.invoke(0, write("x", "1"));
        let second = recorder.invoke(1, write("x", "2"));
        recorder.ok(second, Output::Done);
        recorder.ok(first, Output::Done);
        complete(&mut recorder, 2, read("x"), value(last));
        complete(&mut recorder, 2, read("x"), value(last));
        assert!(
            is_linearizable(&recorder.history()),
            "reading {last} after both writes"
        );
    }
}

#[test]
fn reads_disagreeing_on_write_order_rejected() {
    let mut recorder = HistoryRecorder::new();
    let first = recorder.invoke(0, write("x", "1"));
    let second = recorder.invoke(1, write("x", "2"));
    recorder.ok(first, Output::Done);
    recorder.ok(second, Output::Done);
    complete(&mut recorder, 2, read("x"), value("1"));
    complete(&mut recorder, 2, read("x"), value("2"));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn read_concurrent_with_write_sees_either() {
    for seen in [None, Some("1")] {
        let mut recorder = HistoryRecorder::new();
        let written = recorder.invoke(0, write("x", "1"));
        let observed = recorder.invoke(1, read("x"));
        recorder.ok(observed, Output::Read(seen.map(str::to_string)));
        recorder.ok(written, Output::Done);
        assert!(is_linearizable(&recorder.history()), "read {seen:?}");
    }
}

#[test]
fn cas_swaps_only_expected_value() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, cas("x", None, "1"), Output::Cas(true));
    complete(
        &mut recorder,
        0,
        cas("x", Some("1"), "2"),
        Output::Cas(true),
    );
    complete(&mut recorder, 1, read("x"), value("2"));
    assert!(is_linearizable(&recorder.history()));

    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(
        &mut recorder,
        0,
        cas("x", Some("3"), "2"),
        Output::Cas(true),
    );
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn cas_from_absent_rejected_when_present() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(&mut recorder, 0, cas("x", None, "2"), Output::Cas(true));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn cas_mismatch_needs_other_value() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(
        &mut recorder,
        0,
        cas("x", Some("2"), "3"),
        Output::Cas(false),
    );
    complete(&mut recorder, 1, read("x"), value("1"));
    assert!(is_linearizable(&recorder.history()));

    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(
        &mut recorder,
        0,
        cas("x", Some("1"), "3"),
        Output::Cas(false),
    );
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn recorder_fail_of_cas_is_mismatch() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    let swap = recorder.invoke(0, cas("x", Some("1"), "3"));
    recorder.fail(swap);
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn failed_write_has_no_effect() {
    let mut recorder = HistoryRecorder::new();
    let written = recorder.invoke(0, write("x", "1"));
    recorder.fail(written);
    complete(&mut recorder, 1, read("x"), value("1"));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn failed_and_unknown_reads_ignored() {
    let mut recorder = HistoryRecorder::new();
    let failed = recorder.invoke(0, read("x"));
    recorder.fail(failed);
    let unknown = recorder.invoke(1, read("x"));
    recorder.info(unknown);
    recorder.invoke(2, read("x"));
    complete(&mut recorder, 3, read("x"), Output::Read(None));
    assert!(is_linearizable(&recorder.history()));
}

#[test]
fn unknown_write_may_or_may_not_happen() {
    for later in [None, Some("2")] {
        let mut recorder = HistoryRecorder::new();
        let written = recorder.invoke(0, write("x", "2"));
        recorder.info(written);
        complete(&mut recorder, 1, read("x"), Output::Read(None));
        complete(
            &mut recorder,
            1,
            read("x"),
            Output::Read(later.map(str::to_string)),
        );
        assert!(is_linearizable(&recorder.history()), "later read {later:?}");
    }
}

#[test]
fn unknown_write_takes_effect_once() {
    let mut recorder = HistoryRecorder::new();
    let written = recorder.invoke(0, write("x", "2"));
    recorder.info(written);
    complete(&mut recorder, 1, read("x"), value("2"));
    complete(&mut recorder, 2, write("x", "1"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("2"));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn unknown_write_not_before_invocation() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 1, read("x"), value("2"));
    let written = recorder.invoke(0, write("x", "2"));
    recorder.info(written);
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn unknown_twin_writes_each_take_effect() {
    for twins in [1, 2] {
        let mut recorder = HistoryRecorder::new();
        for process in 0..twins {
            let written = recorder.invoke(process, write("x", "1"));
            recorder.info(written);
        }
        complete(&mut recorder, 5, write("x", "2"), Output::Done);
        complete(&mut recorder, 6, read("x"), value("1"));
        complete(&mut recorder, 5, write("x", "3"), Output::Done);
        complete(&mut recorder, 6, read("x"), value("1"));
        assert_eq!(
            is_linearizable(&recorder.history()),
            twins == 2,
            "{twins} unknown writes of 1 for two reads of 1 after overwrites"
        );
    }
}

#[test]
fn pending_invocation_is_unknown() {
    let mut recorder = HistoryRecorder::new();
    recorder.invoke(0, write("x", "2"));
    complete(&mut recorder, 1, read("x"), value("2"));
    assert!(is_linearizable(&recorder.history()));
}

#[test]
fn unknown_cas_applies_only_on_match() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    let swap = recorder.invoke(1, cas("x", Some("5"), "2"));
    recorder.info(swap);
    complete(&mut recorder, 2, read("x"), value("2"));
    assert!(!is_linearizable(&recorder.history()));

    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    let swap = recorder.invoke(1, cas("x", Some("1"), "2"));
    recorder.info(swap);
    complete(&mut recorder, 2, read("x"), value("2"));
    assert!(is_linearizable(&recorder.history()));
}

#[test]
fn append_concatenates_in_order() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, append("x", "a"), Output::Done);
    complete(&mut recorder, 0, append("x", "b"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("ab"));
    assert!(is_linearizable(&recorder.history()));

    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, append("x", "a"), Output::Done);
    complete(&mut recorder, 0, append("x", "b"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("ba"));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn concurrent_appends_either_order_accepted() {
    for seen in ["ab", "ba"] {
        let mut recorder = HistoryRecorder::new();
        let first = recorder.invoke(0, append("x", "a"));
        let second = recorder.invoke(1, append("x", "b"));
        recorder.ok(first, Output::Done);
        recorder.ok(second, Output::Done);
        complete(&mut recorder, 2, read("x"), value(seen));
        assert!(is_linearizable(&recorder.history()), "read {seen:?}");
    }
}

#[test]
fn append_to_missing_key_stores_value() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, append("x", "a"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("a"));
    assert!(is_linearizable(&recorder.history()));
}

#[test]
fn delete_makes_key_absent() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(&mut recorder, 0, delete("x"), Output::Done);
    complete(&mut recorder, 1, read("x"), Output::Read(None));
    complete(&mut recorder, 0, append("x", "b"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("b"));
    assert!(is_linearizable(&recorder.history()));

    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(&mut recorder, 0, delete("x"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("1"));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn missing_key_nil_differs_from_empty_string() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 1, read("x"), value(""));
    assert!(!is_linearizable(&recorder.history()));
}

#[test]
fn edn_missing_key_reads_as_empty_string() {
    let text = "{:process 0, :type :invoke, :f :get, :key \"k\", :value nil}\n\
                {:process 0, :type :ok, :f :get, :key \"k\", :value \"\"}\n\
                {:process 0, :type :invoke, :f :append, :key \"k\", :value \"a\"}\n\
                {:process 0, :type :ok, :f :append, :key \"k\", :value \"a\"}\n\
                {:process 0, :type :invoke, :f :get, :key \"k\", :value nil}\n\
                {:process 0, :type :ok, :f :get, :key \"k\", :value \"a\"}\n";
    let history = History::parse_edn_kv(text).expect("valid EDN");
    assert!(is_linearizable(&history));
}

#[test]
fn violation_reported_on_its_key() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("a", "1"), Output::Done);
    complete(&mut recorder, 0, write("b", "1"), Output::Done);
    complete(&mut recorder, 1, read("a"), value("1"));
    complete(&mut recorder, 0, write("b", "2"), Output::Done);
    complete(&mut recorder, 1, read("b"), value("1"));
    let CheckOutcome::NotLinearizable { key, offending, .. } = check(&recorder.history(), LIMIT)
    else {
        panic!("key b has a stale read");
    };
    assert_eq!(key, "b");
    assert!(
        offending
            .iter()
            .all(|operation| operation.call.key() == "b")
    );
}

#[test]
fn keys_checked_independently() {
    // Each key alone is linearizable, so the history is, even though reads of `a` and `b`
    // interleave with writes of the other key.
    let mut recorder = HistoryRecorder::new();
    let write_a = recorder.invoke(0, write("a", "1"));
    let write_b = recorder.invoke(1, write("b", "1"));
    complete(&mut recorder, 2, read("b"), value("1"));
    complete(&mut recorder, 3, read("a"), Output::Read(None));
    recorder.ok(write_a, Output::Done);
    recorder.ok(write_b, Output::Done);
    assert!(is_linearizable(&recorder.history()));
}

/// Checks that `history` is not linearizable and that removing any one operation makes it so.
fn assert_minimal(history: &History, offending: &[shardraft_tests::history::Operation]) {
    let positions: Vec<usize> = offending.iter().map(|op| op.invoke_position).collect();
    let subset = history.filter(|op| positions.contains(&op.invoke_position));
    assert!(!is_linearizable(&subset), "offending set is linearizable");
    for removed in &positions {
        let smaller = subset.filter(|op| op.invoke_position != *removed);
        assert!(
            is_linearizable(&smaller),
            "offending set without the operation at event {removed} is still not linearizable"
        );
    }
}

#[test]
fn offending_set_is_one_minimal() {
    // The last read returns the initial nil after a chain of writes and swaps completed.
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 4, read("x"), Output::Read(None));
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(
        &mut recorder,
        1,
        cas("x", Some("1"), "2"),
        Output::Cas(true),
    );
    complete(&mut recorder, 4, read("x"), value("2"));
    complete(
        &mut recorder,
        2,
        cas("x", Some("2"), "3"),
        Output::Cas(true),
    );
    complete(&mut recorder, 3, append("x", "4"), Output::Done);
    complete(&mut recorder, 4, read("x"), value("34"));
    complete(&mut recorder, 5, read("x"), Output::Read(None));

    let history = recorder.history();
    let CheckOutcome::NotLinearizable {
        offending,
        minimal,
        first_failure,
        ..
    } = check(&history, LIMIT)
    else {
        panic!("the last read of nil is stale");
    };
    assert!(minimal);
    assert!(offending.len() >= 2, "offending set {offending:?}");
    assert_minimal(&history, &offending);

    let first_failure = first_failure.expect("the search for the first failure finished");
    assert_eq!(first_failure.process, 5);
    assert!(offending.contains(&first_failure));
}

#[test]
fn first_failure_names_stale_read() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    complete(&mut recorder, 1, read("x"), value("1"));
    complete(&mut recorder, 0, write("x", "2"), Output::Done);
    complete(&mut recorder, 2, read("x"), value("1"));
    complete(&mut recorder, 1, read("x"), value("2"));
    let CheckOutcome::NotLinearizable {
        offending,
        first_failure,
        ..
    } = check(&recorder.history(), LIMIT)
    else {
        panic!("process 2 reads 1 after 2 was written");
    };
    let first_failure = first_failure.expect("the search for the first failure finished");
    assert_eq!(first_failure.process, 2);
    assert_eq!(offending, vec![first_failure]);
}

/// Records `count` writes that all overlap, inside one read of a value none of them writes,
/// which makes the search visit every subset of the writes before rejecting the history.
fn pathological_history(count: u64) -> History {
    let mut recorder = HistoryRecorder::new();
    let observer = recorder.invoke(count, read("x"));
    let writes: Vec<OpHandle> = (0..count)
        .map(|process| recorder.invoke(process, write("x", &process.to_string())))
        .collect();
    for op in writes {
        recorder.ok(op, Output::Done);
    }
    recorder.ok(observer, value("never written"));
    recorder.into_history()
}

#[test]
fn time_limit_yields_unknown() {
    let history = pathological_history(60);
    let start = Instant::now();
    let outcome = check(&history, Duration::from_millis(20));
    let elapsed = start.elapsed();
    assert!(
        matches!(outcome, CheckOutcome::Unknown { .. }),
        "outcome {outcome:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "check took {elapsed:?}");
}

#[test]
fn zero_time_limit_yields_unknown() {
    let mut recorder = HistoryRecorder::new();
    complete(&mut recorder, 0, write("x", "1"), Output::Done);
    let outcome = check(&recorder.history(), Duration::ZERO);
    assert!(
        matches!(outcome, CheckOutcome::Unknown { .. }),
        "outcome {outcome:?}"
    );
}

/// The exhaustive reference checker: tries every order of every subset of the operations.
mod reference {
    use shardraft_tests::history::{Call, History, Operation, Outcome, Output};

    pub fn is_linearizable(history: &History) -> bool {
        let operations: Vec<&Operation> = history
            .operations()
            .iter()
            .filter(|op| match (&op.call, &op.outcome) {
                (Call::Read { .. }, Outcome::Ok(_)) => true,
                (Call::Read { .. }, _) => false,
                (_, Outcome::Fail) => false,
                _ => true,
            })
            .collect();
        let mut used = vec![false; operations.len()];
        extend(&operations, &mut used, None)
    }

    /// Tries to extend the sequence of the `used` operations, which ends in `state`, until
    /// every operation with a known return is in it.
    fn extend(operations: &[&Operation], used: &mut [bool], state: Option<String>) -> bool {
        let all_known_done = operations
            .iter()
            .zip(used.iter())
            .all(|(op, &done)| done || op.return_position().is_none());
        if all_known_done {
            return true;
        }
        for index in 0..operations.len() {
            if used[index] {
                continue;
            }
            // Real time: no unused operation may have returned before this one was invoked.
            let call = operations[index].invoke_position;
            let blocked = operations.iter().zip(used.iter()).any(|(other, &done)| {
                !done && other.return_position().is_some_and(|ret| ret < call)
            });
            if blocked {
                continue;
            }
            let Some(next) = apply(operations[index], &state) else {
                continue;
            };
            used[index] = true;
            if extend(operations, used, next) {
                return true;
            }
            used[index] = false;
        }
        false
    }

    /// Returns the state after the operation, or `None` if it cannot happen in `state`.
    fn apply(op: &Operation, state: &Option<String>) -> Option<Option<String>> {
        let unknown = op.return_position().is_none();
        match (&op.call, &op.outcome) {
            (Call::Read { .. }, Outcome::Ok(Output::Read(value))) => {
                (value == state).then(|| state.clone())
            }
            (Call::Write { value, .. }, _) => Some(Some(value.clone())),
            (Call::Append { value, .. }, _) => Some(Some(format!(
                "{}{value}",
                state.clone().unwrap_or_default()
            ))),
            (Call::Delete { .. }, _) => Some(None),
            (Call::Cas { expected, new, .. }, outcome) => {
                let swapped = unknown || *outcome == Outcome::Ok(Output::Cas(true));
                if swapped {
                    (expected == state).then(|| Some(new.clone()))
                } else {
                    (expected != state).then(|| state.clone())
                }
            }
            _ => None,
        }
    }
}

/// One step of a random history: which process acts and what it does.
#[derive(Debug, Clone)]
enum Action {
    Invoke {
        process: u64,
        call: u8,
        value: u8,
    },
    Complete {
        process: u64,
        outcome: u8,
        value: u8,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        (0..3u64, 0..5u8, 0..3u8).prop_map(|(process, call, value)| Action::Invoke {
            process,
            call,
            value
        }),
        (0..3u64, 0..6u8, 0..4u8).prop_map(|(process, outcome, value)| Action::Complete {
            process,
            outcome,
            value
        }),
    ]
}

/// Builds a history from `actions`, skipping those that do not fit the open operations.
fn random_history(actions: &[Action]) -> History {
    let values = ["1", "2", "3"];
    let mut recorder = HistoryRecorder::new();
    let mut open: [Option<(OpHandle, u8)>; 3] = [None; 3];
    let mut next_process = [0u64, 1, 2];
    for action in actions {
        match *action {
            Action::Invoke {
                process,
                call,
                value,
            } => {
                let slot = process as usize;
                if open[slot].is_some() {
                    continue;
                }
                let text = values[value as usize];
                let call_value = match call {
                    0 => read("x"),
                    1 => write("x", text),
                    2 => cas("x", Some(values[(value as usize + 1) % 3]), text),
                    3 => append("x", text),
                    _ => cas("x", None, text),
                };
                let handle = recorder.invoke(next_process[slot], call_value);
                open[slot] = Some((handle, call));
            }
            Action::Complete {
                process,
                outcome,
                value,
            } => {
                let slot = process as usize;
                let Some((handle, call)) = open[slot].take() else {
                    continue;
                };
                match outcome {
                    0..=2 => {
                        let output = match call {
                            0 => Output::Read(match value {
                                3 => None,
                                index => Some(values[index as usize].to_string()),
                            }),
                            2 | 4 => Output::Cas(outcome != 2),
                            _ => Output::Done,
                        };
                        recorder.ok(handle, output);
                    }
                    3 => recorder.fail(handle),
                    _ => {
                        recorder.info(handle);
                        next_process[slot] += 3;
                    }
                }
            }
        }
    }
    recorder.into_history()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn checker_matches_exhaustive_search(actions in proptest::collection::vec(action(), 0..28)) {
        let history = random_history(&actions);
        let expected = reference::is_linearizable(&history);
        let outcome = check(&history, LIMIT);
        match &outcome {
            CheckOutcome::Linearizable => prop_assert!(expected, "history {history:#?}"),
            CheckOutcome::NotLinearizable { offending, minimal, first_failure, .. } => {
                prop_assert!(!expected, "history {history:#?}");
                prop_assert!(*minimal);
                prop_assert!(first_failure.is_some());
                let positions: Vec<usize> =
                    offending.iter().map(|op| op.invoke_position).collect();
                let subset = history.filter(|op| positions.contains(&op.invoke_position));
                prop_assert!(!reference::is_linearizable(&subset));
                for removed in &positions {
                    let smaller = subset.filter(|op| op.invoke_position != *removed);
                    prop_assert!(reference::is_linearizable(&smaller));
                }
            }
            CheckOutcome::Unknown { reason } => prop_assert!(false, "undecided: {reason}"),
        }
    }
}
