//! Runs a fixed number of commit rounds on an in-memory 3-node cluster, without timing, as
//! a deterministic workload for profilers and instruction counters:
//!
//! ```text
//! cargo build --release -p shardraft-bench --example commit_rounds
//! valgrind --tool=callgrind target/release/examples/commit_rounds 256 2000
//! ```
//!
//! Arguments: proposals per round (default 256) and rounds (default 2000).

use bytes::Bytes;
use shardraft_bench::{Cluster, PAYLOAD_BYTES};

fn main() {
    let mut args = std::env::args().skip(1);
    let batch = parse_arg(args.next(), "batch size", 256);
    let rounds = parse_arg(args.next(), "round count", 2000);

    let mut cluster = Cluster::with_leader(3).expect("electing a leader failed");
    let payload = Bytes::copy_from_slice(&[0x5a; PAYLOAD_BYTES]);
    let mut entries = 0;
    for _ in 0..rounds {
        let round = cluster
            .propose_batch(batch, &payload)
            .expect("a round of proposals failed");
        entries += round.entries;
    }
    println!("{entries} entries committed and applied on 3 nodes in {rounds} rounds of {batch}");
}

fn parse_arg(arg: Option<String>, name: &str, default: usize) -> usize {
    match arg {
        None => default,
        Some(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("invalid {name} {text:?}: expected a positive integer");
            std::process::exit(2);
        }),
    }
}
