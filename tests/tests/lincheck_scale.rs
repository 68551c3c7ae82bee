//! The checker on large generated histories that are linearizable by construction.

use std::time::{Duration, Instant};

use shardraft_tests::history::{Call, History, HistoryRecorder, OpHandle, Output};
use shardraft_tests::lincheck::{CheckOutcome, check};

/// A small deterministic generator (xorshift64*), so the test needs no random seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

/// An operation in flight in the generator, with the output it got when it took effect.
struct InFlight {
    handle: OpHandle,
    call: Call,
    output: Option<Output>,
}

/// Generates `operations` operations by `clients` clients on `keys` keys of a store that
/// applies each operation atomically at a random step between its invocation and its
/// completion. About one operation in twenty ends with `info`, half of them never applied.
fn generate(seed: u64, operations: usize, clients: u64, keys: u64) -> History {
    let mut rng = Rng(seed);
    let mut store: Vec<Option<String>> = vec![None; keys as usize];
    let mut recorder = HistoryRecorder::new();
    let mut in_flight: Vec<Option<InFlight>> = (0..clients).map(|_| None).collect();
    let mut process_ids: Vec<u64> = (0..clients).collect();
    let mut invoked = 0;
    while invoked < operations || in_flight.iter().any(Option::is_some) {
        let client = rng.below(clients) as usize;
        match &mut in_flight[client] {
            None if invoked < operations => {
                let key = rng.below(keys).to_string();
                let value = rng.below(5).to_string();
                let call = match rng.below(4) {
                    0 | 1 => Call::Read { key },
                    2 => Call::Write { key, value },
                    _ => Call::Cas {
                        key,
                        expected: Some(rng.below(5).to_string()),
                        new: value,
                    },
                };
                let handle = recorder.invoke(process_ids[client], call.clone());
                in_flight[client] = Some(InFlight {
                    handle,
                    call,
                    output: None,
                });
                invoked += 1;
            }
            None => {}
            Some(operation) if operation.output.is_none() => {
                let slot = &mut store[operation.call.key().parse::<usize>().unwrap_or(0)];
                operation.output = Some(match &operation.call {
                    Call::Read { .. } => Output::Read(slot.clone()),
                    Call::Write { value, .. } => {
                        *slot = Some(value.clone());
                        Output::Done
                    }
                    Call::Cas { expected, new, .. } => {
                        let swapped = slot == expected;
                        if swapped {
                            *slot = Some(new.clone());
                        }
                        Output::Cas(swapped)
                    }
                    Call::Append { .. } | Call::Delete { .. } => Output::Done,
                });
            }
            Some(_) => {
                let Some(operation) = in_flight[client].take() else {
                    continue;
                };
                let output = operation.output.unwrap_or(Output::Done);
                if rng.below(20) == 0 {
                    recorder.info(operation.handle);
                    process_ids[client] += clients;
                } else {
                    recorder.ok(operation.handle, output);
                }
            }
        }
    }
    recorder.into_history()
}

#[test]
fn large_generated_histories_are_linearizable() {
    let cases = [(1, 20_000, 5, 8), (2, 5_000, 10, 1), (3, 3_000, 20, 1)];
    for (seed, operations, clients, keys) in cases {
        let history = generate(seed, operations, clients, keys);
        let start = Instant::now();
        let outcome = check(&history, Duration::from_secs(60));
        let elapsed = start.elapsed();
        println!("{operations} operations, {clients} clients, {keys} keys: {elapsed:?}");
        assert_eq!(
            outcome,
            CheckOutcome::Linearizable,
            "{operations} operations by {clients} clients on {keys} keys"
        );
    }
}

#[test]
fn scratch_corrupted_history_timing() {
    use shardraft_tests::history::Outcome;
    for (seed, clients) in [(7u64, 5u64), (8, 10), (9, 10), (10, 20)] {
        let history = generate(seed, 3_000, clients, 1);
        // Make one read in the middle return a different written value.
        let ops = history.operations();
        let target = ops
            .iter()
            .enumerate()
            .skip(1500)
            .find(|(_, op)| matches!(op.outcome, Outcome::Ok(Output::Read(Some(_)))))
            .map(|(i, _)| i)
            .unwrap();
        let mut text = Vec::new();
        history.write_jsonl(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let mut corrupted = String::new();
        let position = ops[target].completion_position.unwrap();
        for (line_index, line) in text.lines().enumerate() {
            if line_index == position + 1 {
                let Outcome::Ok(Output::Read(Some(v))) = &ops[target].outcome else { panic!() };
                let other = ((v.parse::<u64>().unwrap() + 1) % 5).to_string();
                corrupted.push_str(&line.replace(&format!("\"value\":\"{v}\""), &format!("\"value\":\"{other}\"")));
            } else {
                corrupted.push_str(line);
            }
            corrupted.push('\n');
        }
        let history = History::parse_jsonl(&corrupted).unwrap();
        let start = Instant::now();
        let outcome = check(&history, Duration::from_secs(60));
        let elapsed = start.elapsed();
        match outcome {
            CheckOutcome::NotLinearizable { offending, minimal, first_failure, .. } => println!(
                "clients {clients}: not linearizable in {elapsed:?}, {} offending, minimal {minimal}, first failure {:?}",
                offending.len(), first_failure.map(|op| op.to_string())
            ),
            other => println!("clients {clients}: {other:?} in {elapsed:?}"),
        }
    }
}

#[test]
fn scratch_prefix_timing() {
    use shardraft_tests::history::Outcome;
    let history = generate(8, 3_000, 10, 1);
    let ops = history.operations();
    let target = ops
        .iter()
        .enumerate()
        .skip(1500)
        .find(|(_, op)| matches!(op.outcome, Outcome::Ok(Output::Read(Some(_)))))
        .map(|(i, _)| i)
        .unwrap();
    let mut text = Vec::new();
    history.write_jsonl(&mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    let mut corrupted = String::new();
    let position = ops[target].completion_position.unwrap();
    for (line_index, line) in text.lines().enumerate() {
        if line_index == position + 1 {
            let Outcome::Ok(Output::Read(Some(v))) = &ops[target].outcome else { panic!() };
            let other = ((v.parse::<u64>().unwrap() + 1) % 5).to_string();
            corrupted.push_str(&line.replace(&format!("\"value\":\"{v}\""), &format!("\"value\":\"{other}\"")));
        } else {
            corrupted.push_str(line);
        }
        corrupted.push('\n');
    }
    std::fs::write("/tmp/corrupted8.jsonl", &corrupted).unwrap();
    let history = History::parse_jsonl(&corrupted).unwrap();
    println!("target op {target} at position {position}: {}", history.operations()[target]);
    let unknown = history.operations().iter().filter(|op| op.outcome.is_unknown() && op.invoke_position < position).count();
    println!("unknown before: {unknown}");
    for k in [position - 200, position - 50, position - 10, position, position + 2, position + 10, position + 50] {
        let prefix = history.filter(|op| op.invoke_position < k);
        let start = Instant::now();
        let outcome = check(&prefix, Duration::from_secs(10));
        println!("k {k}: {:?} in {:?}", std::mem::discriminant(&outcome), start.elapsed());
        if let CheckOutcome::NotLinearizable { offending, .. } = &outcome { for op in offending { println!("   {op}"); } }
    }
}
