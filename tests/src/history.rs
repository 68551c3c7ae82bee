//! Client histories of a key-value store: the operations that clients invoked, how each
//! one completed, and the order in which those events happened.
//!
//! A history is a sequence of events. An *invoke* event opens an operation on one key, and a
//! later *completion* event of the same process closes it:
//!
//! - `ok`: the operation took effect exactly once, between its invocation and its completion,
//!   and produced the recorded output (the value for a read, whether the swap happened for a
//!   compare-and-set).
//! - `fail`: the operation definitely had no effect. For a compare-and-set, a failure is an
//!   observed result: the key did not hold the expected value when the operation took
//!   effect. Parsers and [`HistoryRecorder`] therefore store a failed compare-and-set as
//!   [`Outcome::Ok`] with [`Output::Cas`]`(false)`.
//! - `info`: the outcome is unknown. The operation may have taken effect at any point after
//!   its invocation, or never, so it stays open until the end of the history. An operation
//!   whose invocation is never closed ([`Outcome::Pending`]) is unknown in the same way.
//!
//! A read that fails or has an unknown outcome has no effect and the checker drops it. Each
//! process has at most one open operation at a time, which is how completions are paired with
//! invocations in the text formats. An `info` event closes the operation for that pairing,
//! so the process may invoke again, while the operation's effect stays unknown.
//!
//! Values are strings and a key may be absent. A read of an absent key returns `None` (nil),
//! except in histories marked [`MissingKeyRead::EmptyString`], where the store reads a
//! missing key as the empty string. An append to an absent key stores the appended value.
//!
//! # Input formats
//!
//! - [`History::parse_jepsen_register`]: the tab-separated `jepsen.util` log lines that
//!   Jepsen writes for a single register (key `""`), such as
//!   `INFO  jepsen.util - 4 :ok :cas [1 4]` with tabs between the fields. All other lines
//!   are ignored.
//! - [`History::parse_edn_kv`]: one Clojure EDN map per line, such as
//!   `{:process 0, :type :ok, :f :get, :key "4", :value "x 0 1 y"}`. A missing key reads as
//!   the empty string in this format.
//! - [`History::parse_jsonl`]: this project's JSON-lines format, described below.
//! - [`History::parse_auto`] picks one of the three from the first non-blank line.
//!
//! # JSON-lines format
//!
//! [`History::write_jsonl`] writes one JSON object per line. The first line is a header that
//! names the format and states what a read of a missing key returns (`null` or `""`):
//!
//! ```text
//! {"format":"shardraft-history","version":1,"missing_key_reads_as":null}
//! {"process":0,"type":"invoke","f":"write","key":"a","value":"1"}
//! {"process":1,"type":"invoke","f":"read","key":"a"}
//! {"process":0,"type":"ok","f":"write","key":"a","value":"1"}
//! {"process":1,"type":"ok","f":"read","key":"a","value":"1"}
//! {"process":2,"type":"invoke","f":"cas","key":"a","expected":"1","value":"2"}
//! {"process":2,"type":"fail","f":"cas","key":"a","expected":"1","value":"2"}
//! {"process":3,"type":"invoke","f":"append","key":"b","value":"x"}
//! {"process":3,"type":"info","f":"append","key":"b","value":"x"}
//! {"process":4,"type":"invoke","f":"delete","key":"a"}
//! {"process":4,"type":"ok","f":"delete","key":"a"}
//! ```
//!
//! - `process` (non-negative integer) and `type` (`"invoke"`, `"ok"`, `"fail"` or `"info"`)
//!   are required on every event.
//! - `f` is `"read"`, `"write"`, `"cas"`, `"append"` or `"delete"`. It is required on an
//!   invocation and optional on a completion, where it must match the invocation if present.
//!   `key` is a string, `""` when absent. On a completion it must match if present.
//! - `value` is the written or appended value, or the new value of a compare-and-set, all
//!   required on the invocation. On an `ok` read it is the value read, `null` for absent,
//!   and required there. `expected` is the value a compare-and-set requires, `null` for
//!   "only if the key is absent", and required on its invocation. A completion that repeats
//!   `value` or `expected` must repeat them unchanged.
//! - A compare-and-set that swapped completes with `"ok"` and one that found another value
//!   completes with `"fail"`. A `"fail"` of any other operation means it had no effect.
//!
//! The header is optional when parsing, and its absence means `null`. Blank lines are
//! ignored. Reading back what [`History::write_jsonl`] wrote yields the same operations,
//! outcomes and positions. Only the source lines differ, which
//! [`History::without_source_lines`] clears for a comparison.

mod builder;
mod edn;
mod jepsen;
mod jsonl;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use builder::Builder;

/// An operation that a client invoked on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    /// Read the key's value.
    Read { key: String },
    /// Set the key to `value`.
    Write { key: String, value: String },
    /// Set the key to `new` if its value is `expected`, where `None` means "if it is absent".
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    /// Concatenate `value` to the key's value, treating an absent key as the empty string.
    Append { key: String, value: String },
    /// Remove the key.
    Delete { key: String },
}

impl Call {
    /// Returns the key the operation acts on.
    pub fn key(&self) -> &str {
        match self {
            Call::Read { key }
            | Call::Write { key, .. }
            | Call::Cas { key, .. }
            | Call::Append { key, .. }
            | Call::Delete { key } => key,
        }
    }

    /// Returns the operation's name as the JSON-lines format spells it (`"read"`, `"cas"`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Call::Read { .. } => "read",
            Call::Write { .. } => "write",
            Call::Cas { .. } => "cas",
            Call::Append { .. } => "append",
            Call::Delete { .. } => "delete",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Read { key } => write!(f, "read({key:?})"),
            Call::Write { key, value } => write!(f, "write({key:?}, {value:?})"),
            Call::Cas { key, expected, new } => {
                write!(f, "cas({key:?}, {}, {new:?})", DisplayValue(expected))
            }
            Call::Append { key, value } => write!(f, "append({key:?}, {value:?})"),
            Call::Delete { key } => write!(f, "delete({key:?})"),
        }
    }
}

/// The output of an operation that completed with `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// The value a read returned, `None` for an absent key.
    Read(Option<String>),
    /// Whether a compare-and-set swapped (`true`) or found another value (`false`).
    Cas(bool),
    /// Completion of a write, append or delete, which have no output.
    Done,
}

/// How an operation completed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The operation took effect and produced this output.
    Ok(Output),
    /// The operation definitely had no effect. A failed compare-and-set is stored as
    /// `Ok(Output::Cas(false))` instead, because its failure is an observed result.
    Fail,
    /// The outcome is unknown: the operation may have taken effect at any point after its
    /// invocation, or never.
    Info,
    /// The invocation was never completed, which is unknown in the same way as `Info`.
    Pending,
}

impl Outcome {
    /// Returns whether the operation may or may not have taken effect (`Info` or `Pending`).
    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Info | Outcome::Pending)
    }
}

/// What a read of a key that is absent returns in a history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MissingKeyRead {
    /// `None` (nil), distinct from the empty string.
    #[default]
    Nil,
    /// The empty string, so an absent key and a key whose value is `""` are indistinguishable.
    EmptyString,
}

/// One operation of a history with its invocation, its outcome and where both occurred.
///
/// Positions count the events of the history from 0 in the order they happened. Lines are
/// the 1-based lines of the source text, `None` for a recorded history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client process that invoked the operation.
    pub process: u64,
    /// What the operation does.
    pub call: Call,
    /// How the operation completed.
    pub outcome: Outcome,
    /// Position of the invoke event.
    pub invoke_position: usize,
    /// Position of the completion event, `None` when the invocation was never completed.
    pub completion_position: Option<usize>,
    /// Source line of the invoke event.
    pub invoke_line: Option<usize>,
    /// Source line of the completion event.
    pub completion_line: Option<usize>,
}

impl Operation {
    /// Returns the position at which the operation returned, or `None` when its outcome is
    /// unknown, in which case it returns "at infinity", after every other event.
    pub fn return_position(&self) -> Option<usize> {
        if self.outcome.is_unknown() {
            None
        } else {
            self.completion_position
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {}: {} -> ", self.process, self.call)?;
        match &self.outcome {
            Outcome::Ok(Output::Read(value)) => write!(f, "{}", DisplayValue(value))?,
            Outcome::Ok(Output::Cas(true)) | Outcome::Ok(Output::Done) => f.write_str("ok")?,
            Outcome::Ok(Output::Cas(false)) => f.write_str("fail (value differed)")?,
            Outcome::Fail => f.write_str("fail (no effect)")?,
            Outcome::Info => f.write_str("info (unknown outcome)")?,
            Outcome::Pending => f.write_str("never completed")?,
        }
        match (self.invoke_line, self.completion_line) {
            (Some(invoke), Some(completion)) => write!(f, " [lines {invoke}-{completion}]"),
            (Some(invoke), None) => write!(f, " [line {invoke}]"),
            _ => match self.completion_position {
                Some(completion) => {
                    write!(f, " [events {}-{completion}]", self.invoke_position)
                }
                None => write!(f, " [event {}]", self.invoke_position),
            },
        }
    }
}

/// Formats an optional value as a quoted string or `nil`.
struct DisplayValue<'a>(&'a Option<String>);

impl fmt::Display for DisplayValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value:?}"),
            None => f.write_str("nil"),
        }
    }
}

/// A complete history: its operations ordered by invocation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    operations: Vec<Operation>,
    missing_key_read: MissingKeyRead,
}

/// An input line that could not be parsed as a history event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number in the input text.
    pub line: usize,
    /// What is wrong, naming the field or value.
    pub message: String,
}

impl History {
    /// Parses the `jepsen.util` event lines of a Jepsen log of a single register, which gets
    /// the key `""`. Lines without an event are ignored.
    pub fn parse_jepsen_register(text: &str) -> Result<History, ParseError> {
        jepsen::parse(text)
    }

    /// Parses one EDN map per line, as Jepsen and Knossos write histories. An event without
    /// `:key` acts on the key `""`. A missing key reads as the empty string in this format.
    pub fn parse_edn_kv(text: &str) -> Result<History, ParseError> {
        edn::parse_history(text)
    }

    /// Parses this project's JSON-lines format (see the module documentation).
    pub fn parse_jsonl(text: &str) -> Result<History, ParseError> {
        jsonl::parse(text)
    }

    /// Detects the format from the first non-blank line and parses the text with it: `{"`
    /// starts JSON lines, `{:` starts EDN, and a line containing `jepsen.util` starts a Jepsen
    /// log. Empty or blank text is an empty history.
    pub fn parse_auto(text: &str) -> Result<History, ParseError> {
        let Some((index, first)) = text
            .lines()
            .enumerate()
            .find(|(_, line)| !line.trim().is_empty())
        else {
            return Ok(History::default());
        };
        let first = first.trim_start();
        if first.starts_with("{\"") {
            History::parse_jsonl(text)
        } else if first.starts_with("{:") {
            History::parse_edn_kv(text)
        } else if text.contains("jepsen.util") {
            History::parse_jepsen_register(text)
        } else {
            Err(ParseError {
                line: index + 1,
                message: format!(
                    "cannot detect the history format from {:?}: expected a JSON object, an \
                     EDN map or a jepsen.util log line; name the format explicitly",
                    truncate_for_message(first)
                ),
            })
        }
    }

    /// Writes the history in the JSON-lines format, header first, one event per line in the
    /// order the events happened.
    pub fn write_jsonl(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        jsonl::write(self, out)
    }

    /// Returns the number of operations, including failed and unknown ones.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Returns whether the history has no operations.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Returns the operations ordered by invocation.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// Returns what a read of a missing key returns in this history.
    pub fn missing_key_read(&self) -> MissingKeyRead {
        self.missing_key_read
    }

    /// Returns a copy of the history with the source lines of every operation cleared.
    pub fn without_source_lines(&self) -> History {
        let mut history = self.clone();
        for operation in &mut history.operations {
            operation.invoke_line = None;
            operation.completion_line = None;
        }
        history
    }

    /// Returns the sub-history of the operations for which `keep` returns true, with their
    /// positions and outcomes unchanged.
    pub fn filter(&self, mut keep: impl FnMut(&Operation) -> bool) -> History {
        History {
            operations: self
                .operations
                .iter()
                .filter(|operation| keep(operation))
                .cloned()
                .collect(),
            missing_key_read: self.missing_key_read,
        }
    }
}

/// Shortens `text` to at most 60 characters for an error message.
fn truncate_for_message(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    if text.chars().count() <= MAX_CHARS {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    }
}

/// Identifies an operation invoked through a [`HistoryRecorder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OpHandle {
    recorder: u64,
    index: usize,
}

/// The source of [`HistoryRecorder`] ids, which tie each [`OpHandle`] to its recorder.
static NEXT_RECORDER_ID: AtomicU64 = AtomicU64::new(0);

/// Records the events of a history as they happen, in real (or virtual) time order.
///
/// Like the text formats, the recorder allows each process one open operation at a time.
/// After `info` the process may invoke again, while the earlier operation's effect stays
/// unknown. An operation that is never completed is [`Outcome::Pending`].
#[derive(Debug)]
pub struct HistoryRecorder {
    id: u64,
    builder: Builder,
}

impl Default for HistoryRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl HistoryRecorder {
    /// Creates an empty recorder whose history reads a missing key as `None`.
    pub fn new() -> Self {
        HistoryRecorder {
            id: NEXT_RECORDER_ID.fetch_add(1, Ordering::Relaxed),
            builder: Builder::default(),
        }
    }

    /// Records the invocation of `call` by `process` and returns its handle.
    ///
    /// # Panics
    ///
    /// Panics if `process` still has an open operation, because the text formats could not
    /// pair its completions. Use a new process id for a client whose operation is abandoned.
    pub fn invoke(&mut self, process: u64, call: Call) -> OpHandle {
        match self.builder.invoke(process, call, None) {
            Ok(index) => OpHandle {
                recorder: self.id,
                index,
            },
            Err(message) => panic!("HistoryRecorder::invoke: {message}"),
        }
    }

    /// Records that the operation took effect with `output`: [`Output::Read`] for a read,
    /// [`Output::Cas`] for a compare-and-set (`false` when the key held another value) and
    /// [`Output::Done`] for a write, append or delete.
    ///
    /// # Panics
    ///
    /// Panics if the operation was already completed, the handle comes from another recorder,
    /// or the output does not fit the operation.
    pub fn ok(&mut self, op: OpHandle, output: Output) {
        self.complete(op, Outcome::Ok(output));
    }

    /// Records that the operation had no effect. For a compare-and-set this records that the
    /// key held another value, like `ok(op, Output::Cas(false))`.
    ///
    /// # Panics
    ///
    /// Panics if the operation was already completed or the handle comes from another
    /// recorder.
    pub fn fail(&mut self, op: OpHandle) {
        self.complete(op, Outcome::Fail);
    }

    /// Records that the outcome is unknown: the operation may take effect at any later time,
    /// or never.
    ///
    /// # Panics
    ///
    /// Panics if the operation was already completed or the handle comes from another
    /// recorder.
    pub fn info(&mut self, op: OpHandle) {
        self.complete(op, Outcome::Info);
    }

    /// Returns a copy of the history recorded so far. Operations without a completion are
    /// [`Outcome::Pending`].
    pub fn history(&self) -> History {
        self.builder.snapshot(MissingKeyRead::Nil)
    }

    /// Consumes the recorder and returns its history.
    pub fn into_history(self) -> History {
        self.builder.finish(MissingKeyRead::Nil)
    }

    fn complete(&mut self, op: OpHandle, outcome: Outcome) {
        if op.recorder != self.id {
            panic!(
                "HistoryRecorder: the handle {op:?} comes from recorder {}, not from this \
                 recorder {}",
                op.recorder, self.id
            );
        }
        if let Err(message) = self.builder.complete(op.index, outcome, None) {
            panic!("HistoryRecorder: {message}");
        }
    }
}
