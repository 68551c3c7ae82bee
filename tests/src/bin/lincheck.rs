//! `lincheck`: checks client history files for linearizability and prints a verdict per
//! file, with a minimal offending set of operations for a non-linearizable one.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde_json::json;
use shardraft_tests::history::{Call, History, Operation, Outcome, Output};
use shardraft_tests::lincheck::{CheckOutcome, check};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  every file is linearizable
  1  at least one file is not linearizable
  2  a file could not be read or parsed (the error names the file and line), or the
     command line is invalid; this takes precedence over 1 and 3
  3  at least one file is undecided within the time limit, and none is not linearizable";

/// Checks histories of a key-value store or register for linearizability.
#[derive(Debug, Parser)]
#[command(name = "lincheck", version, after_help = EXIT_STATUS_HELP)]
struct Args {
    /// History files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Input format. `auto` detects it from the first non-blank line.
    #[arg(long, value_enum, default_value_t = InputFormat::Auto)]
    format: InputFormat,

    /// Maximum time in seconds to spend on each file, minimization of an offending set
    /// included. Fractions such as 0.5 are allowed.
    #[arg(long, value_name = "N", default_value = "10", value_parser = parse_time_limit)]
    time_limit_seconds: Duration,

    /// Report format: `text` for people, `json` for one JSON object per file and line.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    output: ReportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum InputFormat {
    Auto,
    /// Jepsen `jepsen.util` register log lines.
    Jepsen,
    /// One EDN map per line.
    Edn,
    /// This project's JSON-lines format.
    Jsonl,
}

impl InputFormat {
    fn name(self) -> &'static str {
        match self {
            InputFormat::Auto => "detected",
            InputFormat::Jepsen => "jepsen",
            InputFormat::Edn => "edn",
            InputFormat::Jsonl => "jsonl",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportFormat {
    Text,
    Json,
}

fn parse_time_limit(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("invalid number of seconds {text:?}; use e.g. 10 or 0.5"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("time limit {text} must be a number greater than 0"));
    }
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("time limit {text} is too large; use at most 1e18 seconds"))
}

/// The verdict for one file, ordered by how it affects the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Linearizable,
    Unknown,
    NotLinearizable,
    Error,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut worst = Verdict::Linearizable;
    for path in &args.files {
        let verdict = check_file(path, &args);
        worst = worst.max(verdict);
    }
    ExitCode::from(match worst {
        Verdict::Linearizable => 0,
        Verdict::NotLinearizable => 1,
        Verdict::Error => 2,
        Verdict::Unknown => 3,
    })
}

fn check_file(path: &Path, args: &Args) -> Verdict {
    let history = match read_history(path, args.format) {
        Ok(history) => history,
        Err(message) => {
            eprintln!("lincheck: {}: {message}", path.display());
            if args.output == ReportFormat::Json {
                println!(
                    "{}",
                    json!({"file": path.display().to_string(), "result": "error", "message": message})
                );
            }
            return Verdict::Error;
        }
    };
    let outcome = check(&history, args.time_limit_seconds);
    match args.output {
        ReportFormat::Text => print_text(path, &outcome),
        ReportFormat::Json => print_json(path, &outcome),
    }
    match outcome {
        CheckOutcome::Linearizable => Verdict::Linearizable,
        CheckOutcome::NotLinearizable { .. } => Verdict::NotLinearizable,
        CheckOutcome::Unknown { .. } => Verdict::Unknown,
    }
}

fn read_history(path: &Path, format: InputFormat) -> Result<History, String> {
    let bytes = std::fs::read(path).map_err(|error| format!("cannot read the file: {error}"))?;
    let text = String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&byte| byte == b'\n').count() + 1;
        format!(
            "line {line}: invalid UTF-8 at byte offset {}; history files must be UTF-8 text",
            valid.len()
        )
    })?;
    let parsed = match format {
        InputFormat::Auto => History::parse_auto(&text),
        InputFormat::Jepsen => History::parse_jepsen_register(&text),
        InputFormat::Edn => History::parse_edn_kv(&text),
        InputFormat::Jsonl => History::parse_jsonl(&text),
    };
    let history = parsed.map_err(|error| error.to_string())?;
    // An empty history is trivially linearizable, which would hide a file of the wrong
    // format: the Jepsen reader skips every line that is not a Jepsen event.
    if history.is_empty() {
        return Err(format!(
            "no operations found in the {} format; check that the file is a history and that \
             --format matches it",
            format.name()
        ));
    }
    Ok(history)
}

fn print_text(path: &Path, outcome: &CheckOutcome) {
    let path = path.display();
    match outcome {
        CheckOutcome::Linearizable => println!("{path}: linearizable"),
        CheckOutcome::NotLinearizable {
            key,
            offending,
            minimal,
            first_failure,
        } => {
            let size = if *minimal {
                "minimal"
            } else {
                "reduced but not minimal, because the time limit stopped the reduction"
            };
            let plural = if offending.len() == 1 { "" } else { "s" };
            println!(
                "{path}: not linearizable: key {key:?}, {} offending operation{plural} ({size}):",
                offending.len()
            );
            for operation in offending {
                if first_failure.as_ref() == Some(operation) {
                    println!("  {operation}  <- first failure");
                } else {
                    println!("  {operation}");
                }
            }
            if let Some(operation) = first_failure
                && !offending.contains(operation)
            {
                println!("  first failure, not in the minimal set: {operation}");
            }
        }
        CheckOutcome::Unknown { reason } => println!("{path}: unknown: {reason}"),
    }
}

fn print_json(path: &Path, outcome: &CheckOutcome) {
    let file = path.display().to_string();
    let report = match outcome {
        CheckOutcome::Linearizable => json!({"file": file, "result": "linearizable"}),
        CheckOutcome::NotLinearizable {
            key,
            offending,
            minimal,
            first_failure,
        } => json!({
            "file": file,
            "result": "not_linearizable",
            "key": key,
            "minimal": minimal,
            "offending": offending.iter().map(operation_json).collect::<Vec<_>>(),
            "first_failure": first_failure.as_ref().map(operation_json),
        }),
        CheckOutcome::Unknown { reason } => {
            json!({"file": file, "result": "unknown", "reason": reason})
        }
    };
    println!("{report}");
}

fn operation_json(operation: &Operation) -> serde_json::Value {
    let mut object = json!({
        "process": operation.process,
        "f": operation.call.name(),
        "key": operation.call.key(),
        "invoke_position": operation.invoke_position,
        "completion_position": operation.completion_position,
        "invoke_line": operation.invoke_line,
        "completion_line": operation.completion_line,
        "description": operation.to_string(),
    });
    match &operation.call {
        Call::Write { value, .. } | Call::Append { value, .. } => {
            object["value"] = json!(value);
        }
        Call::Cas { expected, new, .. } => {
            object["expected"] = json!(expected);
            object["value"] = json!(new);
        }
        Call::Read { .. } | Call::Delete { .. } => {}
    }
    let (outcome, output) = match &operation.outcome {
        Outcome::Ok(Output::Read(value)) => ("ok", json!(value)),
        Outcome::Ok(Output::Cas(true)) | Outcome::Ok(Output::Done) => ("ok", json!(null)),
        Outcome::Ok(Output::Cas(false)) | Outcome::Fail => ("fail", json!(null)),
        Outcome::Info => ("info", json!(null)),
        Outcome::Pending => ("pending", json!(null)),
    };
    object["outcome"] = json!(outcome);
    if let Outcome::Ok(Output::Read(_)) = operation.outcome {
        object["read"] = output;
    }
    object
}
