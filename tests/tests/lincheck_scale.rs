//! The checker on large generated histories, linearizable by construction or with one
//! injected stale read.

use std::time::{Duration, Instant};

use shardraft_tests::history::{Call, History, HistoryRecorder, OpHandle, Output};
use shardraft_tests::lincheck::{CheckOutcome, check};

/// A small deterministic generator (xorshift64*), so every run checks the same histories.
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

/// Parameters of a generated history.
struct Generator {
    seed: u64,
    operations: usize,
    clients: u64,
    keys: u64,
    /// One operation in this many completes with `info` after it took effect.
    info_one_in: u64,
    /// The first read that takes effect after this many invocations returns the value its
    /// key had before the latest change, a stale read.
    stale_read_after: Option<usize>,
}

/// Generates a history of a store that applies each operation atomically at a random step
/// between its invocation and its completion.
fn generate(generator: &Generator) -> History {
    let Generator {
        seed,
        operations,
        clients,
        keys,
        info_one_in,
        mut stale_read_after,
    } = *generator;
    let mut rng = Rng(seed);
    let mut store: Vec<Option<String>> = vec![None; keys as usize];
    let mut before_latest_change: Vec<Option<String>> = vec![None; keys as usize];
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
                let key = operation.call.key().parse::<usize>().unwrap_or(0);
                let slot = &mut store[key];
                let earlier = &mut before_latest_change[key];
                operation.output = Some(match &operation.call {
                    Call::Read { .. } => {
                        if stale_read_after.is_some_and(|after| invoked > after) && earlier != slot
                        {
                            stale_read_after = None;
                            Output::Read(earlier.clone())
                        } else {
                            Output::Read(slot.clone())
                        }
                    }
                    Call::Write { value, .. } => {
                        *earlier = slot.replace(value.clone());
                        Output::Done
                    }
                    Call::Cas { expected, new, .. } => {
                        let swapped = slot == expected;
                        if swapped {
                            *earlier = slot.replace(new.clone());
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
                if rng.below(info_one_in) == 0 {
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
    // (seed, operations, clients, keys)
    let cases = [(1, 20_000, 5, 8), (2, 5_000, 10, 1), (3, 3_000, 20, 1)];
    for (seed, operations, clients, keys) in cases {
        let history = generate(&Generator {
            seed,
            operations,
            clients,
            keys,
            info_one_in: 20,
            stale_read_after: None,
        });
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

/// The seeds are ones whose stale read happens to fall outside every concurrent write, so
/// that the history is not linearizable.
#[test]
fn stale_read_in_long_history_rejected() {
    for (seed, clients) in [(7, 5), (7, 10), (18, 10)] {
        let history = generate(&Generator {
            seed,
            operations: 3_000,
            clients,
            keys: 1,
            info_one_in: u64::MAX,
            stale_read_after: Some(1_500),
        });
        let start = Instant::now();
        let outcome = check(&history, Duration::from_secs(60));
        let elapsed = start.elapsed();
        println!("stale read, {clients} clients: {elapsed:?}");
        let CheckOutcome::NotLinearizable {
            minimal,
            first_failure,
            ..
        } = outcome
        else {
            panic!("seed {seed}, {clients} clients: expected a violation, got {outcome:?}");
        };
        assert!(minimal, "seed {seed}");
        let first_failure = first_failure.expect("the search for the first failure finished");
        assert!(
            first_failure.invoke_position > 1_500,
            "first failure {first_failure} precedes the stale read"
        );
    }
}
