//! The JSON-lines history format: its parser and writer. The format is described in the
//! documentation of the parent module.

use std::io;

use serde_json::{Map, Value};

use super::builder::Builder;
use super::{
    Call, History, MissingKeyRead, Operation, Outcome, Output, ParseError, truncate_for_message,
};

/// The `format` value of the header line.
const FORMAT_NAME: &str = "shardraft-history";
/// The `version` value of the header line.
const FORMAT_VERSION: u64 = 1;

pub(super) fn parse(text: &str) -> Result<History, ParseError> {
    let mut builder = Builder::default();
    let mut missing_key_read = MissingKeyRead::Nil;
    let mut seen_line = false;
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let error = |message: String| ParseError {
            line: line_number,
            message,
        };
        let object = match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(object)) => object,
            Ok(_) => {
                return Err(error(format!(
                    "expected a JSON object such as {{\"process\":0,\"type\":\"invoke\",\
                     \"f\":\"read\",\"key\":\"a\"}}, found {:?}",
                    truncate_for_message(trimmed)
                )));
            }
            Err(json_error) => return Err(error(format!("invalid JSON: {json_error}"))),
        };
        let first_line = !seen_line;
        seen_line = true;
        if object.contains_key("format") {
            if !first_line {
                return Err(error(
                    "a header line (with \"format\") may only be the first line".to_string(),
                ));
            }
            missing_key_read = parse_header(&object).map_err(error)?;
            continue;
        }
        parse_event(&mut builder, &object, line_number).map_err(error)?;
    }
    Ok(builder.finish(missing_key_read))
}

fn parse_header(object: &Map<String, Value>) -> Result<MissingKeyRead, String> {
    match object.get("format") {
        Some(Value::String(name)) if name == FORMAT_NAME => {}
        Some(other) => {
            return Err(format!(
                "invalid \"format\" {}: expected \"{FORMAT_NAME}\"",
                truncate_for_message(&other.to_string())
            ));
        }
        None => return Err("missing field \"format\"".to_string()),
    }
    match object.get("version") {
        Some(version) if version.as_u64() == Some(FORMAT_VERSION) => {}
        Some(other) => {
            return Err(format!(
                "unsupported \"version\" {}: this reader supports version {FORMAT_VERSION}",
                truncate_for_message(&other.to_string())
            ));
        }
        None => return Err("missing field \"version\" in the header".to_string()),
    }
    match object.get("missing_key_reads_as") {
        None | Some(Value::Null) => Ok(MissingKeyRead::Nil),
        Some(Value::String(text)) if text.is_empty() => Ok(MissingKeyRead::EmptyString),
        Some(other) => Err(format!(
            "invalid \"missing_key_reads_as\" {}: expected null or \"\"",
            truncate_for_message(&other.to_string())
        )),
    }
}

/// Returns the string field `name`, `None` when it is absent.
fn optional_string<'a>(
    object: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(format!(
            "invalid \"{name}\" {}: expected a string",
            truncate_for_message(&other.to_string())
        )),
    }
}

/// Returns the field `name` as a string or null (`None`). A missing field is an error.
fn nullable_string(object: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match object.get(name) {
        Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!(
            "invalid \"{name}\" {}: expected a string or null",
            truncate_for_message(&other.to_string())
        )),
        None => Err(format!("missing field \"{name}\"")),
    }
}

/// Returns the string field `name`, which must be present.
fn required_string(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    optional_string(object, name)?
        .map(str::to_string)
        .ok_or_else(|| format!("missing field \"{name}\""))
}

fn parse_event(
    builder: &mut Builder,
    object: &Map<String, Value>,
    line_number: usize,
) -> Result<(), String> {
    let process = match object.get("process") {
        Some(value) => value.as_u64().ok_or_else(|| {
            format!(
                "invalid \"process\" {}: expected a non-negative integer",
                truncate_for_message(&value.to_string())
            )
        })?,
        None => return Err("missing field \"process\"".to_string()),
    };
    let event_type = optional_string(object, "type")?
        .ok_or("missing field \"type\"; expected \"invoke\", \"ok\", \"fail\" or \"info\"")?;
    let function = optional_string(object, "f")?;
    let key = optional_string(object, "key")?;

    if event_type == "invoke" {
        let function = function.ok_or("missing field \"f\" on an invoke event")?;
        let key = key.unwrap_or_default().to_string();
        let call = match function {
            "read" => Call::Read { key },
            "write" => Call::Write {
                key,
                value: required_string(object, "value")?,
            },
            "append" => Call::Append {
                key,
                value: required_string(object, "value")?,
            },
            "cas" => Call::Cas {
                key,
                expected: nullable_string(object, "expected")?,
                new: required_string(object, "value")?,
            },
            "delete" => Call::Delete { key },
            other => {
                return Err(format!(
                    "invalid \"f\" {other:?}: expected \"read\", \"write\", \"cas\", \
                     \"append\" or \"delete\""
                ));
            }
        };
        builder.invoke(process, call, Some(line_number))?;
        return Ok(());
    }

    if !matches!(event_type, "ok" | "fail" | "info") {
        return Err(format!(
            "invalid \"type\" {event_type:?}: expected \"invoke\", \"ok\", \"fail\" or \"info\""
        ));
    }
    let Some(open) = builder.open_operation(process) else {
        return Err(format!(
            "process {process} has type {event_type:?} but no open operation; every \
             completion must follow an invoke event of the same process"
        ));
    };
    if function.is_some_and(|function| function != open.call.name())
        || key.is_some_and(|key| key != open.call.key())
    {
        return Err(format!(
            "completion \"f\" {:?} \"key\" {:?} does not match the open {} of process {process}",
            function.unwrap_or(open.call.name()),
            key.unwrap_or(open.call.key()),
            open.call
        ));
    }
    check_repeated_arguments(&open.call, object)?;
    let outcome = match (event_type, &open.call) {
        ("ok", Call::Read { .. }) => Outcome::Ok(Output::Read(nullable_string(object, "value")?)),
        ("ok", Call::Cas { .. }) => Outcome::Ok(Output::Cas(true)),
        ("ok", _) => Outcome::Ok(Output::Done),
        ("fail", _) => Outcome::Fail,
        _ => Outcome::Info,
    };
    builder.complete_process(process, outcome, Some(line_number))
}

/// Checks that a completion repeats the invocation's `value` and `expected` where present.
fn check_repeated_arguments(call: &Call, object: &Map<String, Value>) -> Result<(), String> {
    let (value, expected) = match call {
        Call::Write { value, .. } | Call::Append { value, .. } => (value, None),
        Call::Cas { expected, new, .. } => (new, Some(expected)),
        Call::Read { .. } | Call::Delete { .. } => return Ok(()),
    };
    if let Some(completed) = optional_string(object, "value")?
        && completed != value
    {
        return Err(format!(
            "completion \"value\" {completed:?} differs from the invoked {call}"
        ));
    }
    if let Some(expected) = expected
        && object.contains_key("expected")
        && nullable_string(object, "expected")? != *expected
    {
        return Err(format!(
            "completion \"expected\" differs from the invoked {call}"
        ));
    }
    Ok(())
}

pub(super) fn write(history: &History, out: &mut impl io::Write) -> io::Result<()> {
    let missing = match history.missing_key_read {
        MissingKeyRead::Nil => "null",
        MissingKeyRead::EmptyString => "\"\"",
    };
    writeln!(
        out,
        "{{\"format\":\"{FORMAT_NAME}\",\"version\":{FORMAT_VERSION},\"missing_key_reads_as\":{missing}}}"
    )?;

    let mut events: Vec<(usize, &Operation, bool)> = Vec::with_capacity(history.len() * 2);
    for operation in &history.operations {
        events.push((operation.invoke_position, operation, false));
        if let Some(position) = operation.completion_position {
            events.push((position, operation, true));
        }
    }
    events.sort_unstable_by_key(|(position, _, _)| *position);
    for (_, operation, is_completion) in events {
        writeln!(out, "{}", event_line(operation, is_completion)?)?;
    }
    Ok(())
}

/// Formats one event as a JSON object with its fields in a fixed, readable order.
fn event_line(operation: &Operation, is_completion: bool) -> io::Result<String> {
    let event_type = if !is_completion {
        "invoke"
    } else {
        match &operation.outcome {
            Outcome::Ok(Output::Cas(false)) | Outcome::Fail => "fail",
            Outcome::Ok(_) => "ok",
            Outcome::Info | Outcome::Pending => "info",
        }
    };
    let call = &operation.call;
    let mut line = format!(
        "{{\"process\":{},\"type\":\"{event_type}\",\"f\":\"{}\",\"key\":{}",
        operation.process,
        call.name(),
        quote(call.key())?
    );
    match call {
        Call::Read { .. } => {
            if let (true, Outcome::Ok(Output::Read(value))) = (is_completion, &operation.outcome) {
                line.push_str(&format!(",\"value\":{}", quote_nullable(value.as_deref())?));
            }
        }
        Call::Write { value, .. } | Call::Append { value, .. } => {
            line.push_str(&format!(",\"value\":{}", quote(value)?));
        }
        Call::Cas { expected, new, .. } => {
            line.push_str(&format!(
                ",\"expected\":{},\"value\":{}",
                quote_nullable(expected.as_deref())?,
                quote(new)?
            ));
        }
        Call::Delete { .. } => {}
    }
    line.push('}');
    Ok(line)
}

fn quote(text: &str) -> io::Result<String> {
    serde_json::to_string(text).map_err(io::Error::other)
}

fn quote_nullable(text: Option<&str>) -> io::Result<String> {
    match text {
        Some(text) => quote(text),
        None => Ok("null".to_string()),
    }
}
