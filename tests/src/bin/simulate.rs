//! `simulate`: runs the deterministic cluster simulator for one seed or a range of seeds.
//!
//! ```text
//! simulate --seed 42                 # one run, replayed exactly
//! simulate --seeds 0..1000           # a range, on every available core
//! simulate --seed 42 --history h.jsonl --verbose
//! ```
//!
//! Exit status: 0 when every run passed, 1 when any failed, 2 for a usage error.

use std::io::Write as _;
use std::ops::Range;
use std::process::ExitCode;

use clap::Parser;
use shardraft_tests::sim::{RunOptions, RunReport, run_seed_with, run_seeds};

#[derive(Debug, Parser)]
#[command(
    name = "simulate",
    about = "Run the deterministic shardraft cluster simulator",
    after_help = "Exit status: 0 when every run passed, 1 when any run failed, 2 for a usage error.\n\
                  A failing run prints its seed, the faults in brief and the command that replays it."
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a half-open range of seeds, written A..B (for example 0..1000).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Fix the cluster size instead of letting each seed choose 1, 3, 5 or 7 replicas.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=15))]
    nodes: Option<u64>,
    /// Worker threads for a range of seeds; default: the available cores.
    #[arg(long)]
    threads: Option<usize>,
    /// With --seed: write the clients' history to this file as JSON lines, for `lincheck`.
    #[arg(long, requires = "seed", conflicts_with = "seeds")]
    history: Option<std::path::PathBuf>,
    /// Break the simulated storage so that it reports writes durable before they are.
    /// Runs are then expected to fail: this checks the simulator's own checks.
    #[arg(long)]
    acknowledge_before_durable: bool,
    /// Run without the adaptive tuner even where a seed chooses it, to replay a seed
    /// recorded before the simulator ran the tuner.
    #[arg(long)]
    without_tuner: bool,
    /// Print a line for every run, not only failures; with --seed, log the core's decisions
    /// at debug level (RUST_LOG overrides the filter).
    #[arg(long)]
    verbose: bool,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text.split_once("..").ok_or_else(|| {
        format!("invalid seed range {text:?}: expected A..B, for example 0..1000")
    })?;
    let start: u64 = start
        .trim()
        .parse()
        .map_err(|_| format!("invalid start of seed range {start:?}: expected a whole number"))?;
    let end: u64 = end
        .trim()
        .parse()
        .map_err(|_| format!("invalid end of seed range {end:?}: expected a whole number"))?;
    if end <= start {
        return Err(format!(
            "empty seed range {start}..{end}: the end must be greater than the start"
        ));
    }
    Ok(start..end)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let nodes = args.nodes.map(|nodes| nodes as usize);

    let reports = if let Some(seed) = args.seed {
        if args.verbose {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug"));
            // Wall-clock timestamps mean nothing in a simulated run: each line carries the
            // virtual time of its event instead, in the `event` span.
            use std::io::IsTerminal as _;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .without_time()
                .init();
        }
        let options = RunOptions {
            nodes,
            keep_history: args.history.is_some(),
            acknowledge_before_durable: args.acknowledge_before_durable,
            without_tuner: args.without_tuner,
        };
        let report = run_seed_with(seed, options);
        if let (Some(path), Some(history)) = (&args.history, &report.history)
            && let Err(error) = write_history(path, history)
        {
            eprintln!(
                "simulate: failed to write history to {}: {error}",
                path.display()
            );
            return ExitCode::from(2);
        }
        vec![report]
    } else {
        let Some(seeds) = args.seeds.clone() else {
            eprintln!("simulate: give --seed N or --seeds A..B");
            return ExitCode::from(2);
        };
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let options = RunOptions {
            nodes,
            keep_history: false,
            acknowledge_before_durable: args.acknowledge_before_durable,
            without_tuner: args.without_tuner,
        };
        run_seeds(seeds, options, threads)
    };

    print_reports(&reports, args.verbose || args.seed.is_some())
}

fn write_history(
    path: &std::path::Path,
    history: &shardraft_tests::history::History,
) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    history.write_jsonl(&mut file)?;
    file.flush()
}

fn print_reports(reports: &[RunReport], every_run: bool) -> ExitCode {
    let failed: Vec<&RunReport> = reports.iter().filter(|report| !report.passed()).collect();
    for report in reports {
        if every_run || !report.passed() {
            println!("{}", report.summary());
        }
    }
    println!(
        "{} passed, {} failed",
        reports.len() - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
