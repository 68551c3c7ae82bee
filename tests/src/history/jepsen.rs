//! The parser of Jepsen register logs (see [`History::parse_jepsen_register`]).
//!
//! An event line contains `jepsen.util - ` followed by four fields separated by tabs or
//! spaces: the process, the event type (`:invoke`, `:ok`, `:fail` or `:info`), the function
//! (`:read`, `:write` or `:cas`) and the value in EDN (`nil`, `4`, `[1 4]`, `:timed-out`).
//! A line whose second field is not an event type carries no event and is ignored, like every
//! line without `jepsen.util - `.

use super::builder::Builder;
use super::edn::{self, Value};
use super::{Call, History, MissingKeyRead, Outcome, Output, ParseError, truncate_for_message};

const MARKER: &str = "jepsen.util - ";

/// The register's key in the history.
const REGISTER_KEY: &str = "";

pub(super) fn parse(text: &str) -> Result<History, ParseError> {
    let mut builder = Builder::default();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let Some(start) = line.find(MARKER) else {
            continue;
        };
        parse_line(&mut builder, &line[start + MARKER.len()..], line_number).map_err(
            |message| ParseError {
                line: line_number,
                message,
            },
        )?;
    }
    Ok(builder.finish(MissingKeyRead::Nil))
}

/// Splits off the first whitespace-separated field of `text`, returning it and the rest.
fn split_field(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(end) => (&text[..end], &text[end..]),
        None => (text, ""),
    }
}

fn parse_line(builder: &mut Builder, fields: &str, line_number: usize) -> Result<(), String> {
    let (process, rest) = split_field(fields);
    let (event_type, rest) = split_field(rest);
    if !matches!(event_type, ":invoke" | ":ok" | ":fail" | ":info") {
        return Ok(());
    }
    let (function, rest) = split_field(rest);
    let value_text = rest.trim();

    let process = match process.parse::<u64>() {
        Ok(process) => process,
        // The fault injector logs as :nemesis, and its events are not client operations.
        Err(_) if process == ":nemesis" => return Ok(()),
        Err(_) => {
            return Err(format!(
                "invalid process {:?}: expected a non-negative integer",
                truncate_for_message(process)
            ));
        }
    };
    if !matches!(function, ":read" | ":write" | ":cas") {
        return Err(format!(
            "invalid function {:?}: expected :read, :write or :cas",
            truncate_for_message(function)
        ));
    }
    let value = || -> Result<Value, String> {
        if value_text.is_empty() {
            return Err(format!("missing value after {function}"));
        }
        edn::parse_value(value_text).map_err(|message| format!("invalid value: {message}"))
    };

    if event_type == ":invoke" {
        let key = REGISTER_KEY.to_string();
        let call = match function {
            ":read" => Call::Read { key },
            ":write" => Call::Write {
                key,
                value: value()?
                    .to_register_value("value of :write")?
                    .ok_or("invalid value nil of :write: expected the value to store")?,
            },
            _ => {
                let (expected, new) = edn::cas_pair(&value()?)?;
                Call::Cas { key, expected, new }
            }
        };
        builder.invoke(process, call, Some(line_number))?;
        return Ok(());
    }

    let Some(open) = builder.open_operation(process) else {
        return Err(format!(
            "process {process} has {event_type} but no open operation; every completion \
             must follow an :invoke of the same process"
        ));
    };
    if function.strip_prefix(':') != Some(open.call.name()) {
        return Err(format!(
            "completion {event_type} {function} does not match the open {} of process \
             {process}",
            open.call
        ));
    }
    let outcome = match event_type {
        ":ok" => match &open.call {
            Call::Read { .. } => Outcome::Ok(Output::Read(
                value()?.to_register_value("value of the :read")?,
            )),
            Call::Write { value: written, .. } => {
                let completed = value()?.to_register_value("value of :write")?;
                if completed.as_ref() != Some(written) {
                    return Err(format!(
                        "completion value {} differs from the invoked {}",
                        truncate_for_message(value_text),
                        open.call
                    ));
                }
                Outcome::Ok(Output::Done)
            }
            Call::Cas { expected, new, .. } => {
                if edn::cas_pair(&value()?)? != (expected.clone(), new.clone()) {
                    return Err(format!(
                        "completion value {} differs from the invoked {}",
                        truncate_for_message(value_text),
                        open.call
                    ));
                }
                Outcome::Ok(Output::Cas(true))
            }
            Call::Append { .. } | Call::Delete { .. } => Outcome::Ok(Output::Done),
        },
        // The value of a failed or unknown operation, such as :timed-out, does not matter.
        ":fail" => Outcome::Fail,
        _ => Outcome::Info,
    };
    builder.complete_process(process, outcome, Some(line_number))
}
