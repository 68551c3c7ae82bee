//! A reader for the subset of Clojure's EDN that histories use, and the parser of EDN
//! key-value histories built on it.
//!
//! The subset is `nil`, `true`, `false`, integers, strings with the escapes `\" \\ \n \t \r
//! \b \f \uXXXX`, keywords, vectors, lists and maps. Commas are whitespace and `;` starts a
//! comment that runs to the end of the line. Nesting deeper than [`MAX_DEPTH`] is rejected so
//! that hostile input cannot exhaust the stack.

use std::fmt;

use super::builder::Builder;
use super::{Call, History, MissingKeyRead, Outcome, Output, ParseError, truncate_for_message};

/// Maximum nesting of vectors, lists and maps.
const MAX_DEPTH: usize = 32;

/// An EDN value of the supported subset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Nil,
    Bool(bool),
    /// An integer kept as its decimal text, without a leading `+`.
    Integer(String),
    String(String),
    /// A keyword without its leading `:`.
    Keyword(String),
    /// A vector or a list.
    Vector(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Nil => f.write_str("nil"),
            Value::Bool(value) => write!(f, "{value}"),
            Value::Integer(text) => f.write_str(text),
            Value::String(text) => write!(f, "{text:?}"),
            Value::Keyword(name) => write!(f, ":{name}"),
            Value::Vector(items) => {
                f.write_str("[")?;
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (index, (key, value)) in entries.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{key} {value}")?;
                }
                f.write_str("}")
            }
        }
    }
}

impl Value {
    /// Converts the value to a stored string: a string, or an integer as its decimal text.
    /// Returns `None` for nil and an error naming `field` for any other value.
    pub(super) fn to_register_value(&self, field: &str) -> Result<Option<String>, String> {
        match self {
            Value::Nil => Ok(None),
            Value::String(text) | Value::Integer(text) => Ok(Some(text.clone())),
            other => Err(format!(
                "invalid {field} {}: expected a string, an integer or nil",
                truncate_for_message(&other.to_string())
            )),
        }
    }
}

/// Parses `text` as exactly one EDN value, allowing surrounding whitespace and comments.
pub(super) fn parse_value(text: &str) -> Result<Value, String> {
    let mut reader = Reader { text, position: 0 };
    let value = reader.value(0)?;
    reader.skip_whitespace();
    match reader.peek() {
        None => Ok(value),
        Some(_) => Err(format!(
            "unexpected text {:?} after the value",
            truncate_for_message(reader.rest())
        )),
    }
}

/// A cursor over the text being parsed. `position` is a byte offset on a char boundary.
struct Reader<'a> {
    text: &'a str,
    position: usize,
}

impl Reader<'_> {
    fn rest(&self) -> &str {
        &self.text[self.position..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let next = self.peek()?;
        self.position += next.len_utf8();
        Some(next)
    }

    fn skip_whitespace(&mut self) {
        while let Some(next) = self.peek() {
            if next.is_whitespace() || next == ',' {
                self.bump();
            } else if next == ';' {
                while let Some(next) = self.bump() {
                    if next == '\n' {
                        break;
                    }
                }
            } else {
                break;
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        self.skip_whitespace();
        let Some(next) = self.peek() else {
            return Err("missing value: the text ends early".to_string());
        };
        match next {
            '{' | '[' | '(' => {
                if depth >= MAX_DEPTH {
                    return Err(format!(
                        "collections are nested more than {MAX_DEPTH} levels deep"
                    ));
                }
                self.bump();
                match next {
                    '{' => self.map(depth + 1),
                    '[' => self.sequence(']', depth + 1),
                    _ => self.sequence(')', depth + 1),
                }
            }
            '"' => {
                self.bump();
                self.string().map(Value::String)
            }
            '}' | ']' | ')' => Err(format!("unexpected {next:?} where a value should start")),
            _ => self.atom(),
        }
    }

    fn sequence(&mut self, close: char, depth: usize) -> Result<Value, String> {
        let mut items = Vec::new();
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return Err(format!("missing {close:?}: the text ends inside a vector")),
                Some(next) if next == close => {
                    self.bump();
                    return Ok(Value::Vector(items));
                }
                Some(_) => items.push(self.value(depth)?),
            }
        }
    }

    fn map(&mut self, depth: usize) -> Result<Value, String> {
        let mut entries = Vec::new();
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return Err("missing '}': the text ends inside a map".to_string()),
                Some('}') => {
                    self.bump();
                    return Ok(Value::Map(entries));
                }
                Some(_) => {
                    let key = self.value(depth)?;
                    self.skip_whitespace();
                    if matches!(self.peek(), None | Some('}')) {
                        return Err(format!("map key {key} has no value"));
                    }
                    let value = self.value(depth)?;
                    entries.push((key, value));
                }
            }
        }
    }

    /// Reads the rest of a string whose opening quote was consumed.
    fn string(&mut self) -> Result<String, String> {
        let mut text = String::new();
        loop {
            match self.bump() {
                None => return Err("missing '\"': the text ends inside a string".to_string()),
                Some('"') => return Ok(text),
                Some('\\') => text.push(self.escape()?),
                Some(other) => text.push(other),
            }
        }
    }

    fn escape(&mut self) -> Result<char, String> {
        match self.bump() {
            Some('"') => Ok('"'),
            Some('\\') => Ok('\\'),
            Some('n') => Ok('\n'),
            Some('t') => Ok('\t'),
            Some('r') => Ok('\r'),
            Some('b') => Ok('\u{8}'),
            Some('f') => Ok('\u{c}'),
            Some('u') => {
                let high = self.hex4()?;
                if (0xD800..0xDC00).contains(&high) {
                    // A UTF-16 surrogate pair encodes a character outside the BMP.
                    if !self.rest().starts_with("\\u") {
                        return Err(format!("unpaired surrogate \\u{high:04X} in a string"));
                    }
                    self.position += 2;
                    let low = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(format!(
                            "invalid surrogate pair \\u{high:04X}\\u{low:04X} in a string"
                        ));
                    }
                    let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                    char::from_u32(code)
                        .ok_or_else(|| format!("invalid character code {code:#X} in a string"))
                } else {
                    char::from_u32(high)
                        .ok_or_else(|| format!("unpaired surrogate \\u{high:04X} in a string"))
                }
            }
            Some(other) => Err(format!(
                "invalid escape \\{other} in a string; supported are \\\" \\\\ \\n \\t \\r \\b \
                 \\f and \\uXXXX"
            )),
            None => Err("missing '\"': the text ends inside a string escape".to_string()),
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits: String = self.rest().chars().take(4).collect();
        if digits.len() != 4 || !digits.chars().all(|digit| digit.is_ascii_hexdigit()) {
            return Err(format!(
                "invalid \\u escape \\u{digits}: expected four hexadecimal digits"
            ));
        }
        self.position += 4;
        u32::from_str_radix(&digits, 16).map_err(|error| format!("invalid \\u{digits}: {error}"))
    }

    /// Reads a keyword, `nil`, `true`, `false` or an integer.
    fn atom(&mut self) -> Result<Value, String> {
        let start = self.position;
        while let Some(next) = self.peek() {
            if next.is_whitespace()
                || matches!(next, ',' | ';' | '"' | '{' | '}' | '[' | ']' | '(' | ')')
            {
                break;
            }
            self.bump();
        }
        let token = &self.text[start..self.position];
        if let Some(name) = token.strip_prefix(':') {
            if name.is_empty() {
                return Err("invalid keyword ':' without a name".to_string());
            }
            return Ok(Value::Keyword(name.to_string()));
        }
        match token {
            "nil" => return Ok(Value::Nil),
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            _ => {}
        }
        let unsigned = token.strip_prefix(['+', '-']).unwrap_or(token);
        if !unsigned.is_empty() && unsigned.bytes().all(|byte| byte.is_ascii_digit()) {
            let text = if token.starts_with('-') {
                token.to_string()
            } else {
                unsigned.to_string()
            };
            return Ok(Value::Integer(text));
        }
        Err(format!(
            "unsupported token {:?}: expected nil, true, false, an integer, a string, a \
             keyword, a vector or a map",
            truncate_for_message(token)
        ))
    }
}

/// Parses a history with one EDN map per line (see [`History::parse_edn_kv`]).
pub(super) fn parse_history(text: &str) -> Result<History, ParseError> {
    let mut builder = Builder::default();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with(';') {
            continue;
        }
        parse_event(&mut builder, trimmed, line_number).map_err(|message| ParseError {
            line: line_number,
            message,
        })?;
    }
    Ok(builder.finish(MissingKeyRead::EmptyString))
}

/// The fields of an event map that the history uses.
#[derive(Default)]
struct EventFields {
    process: Option<Value>,
    event_type: Option<Value>,
    function: Option<Value>,
    key: Option<Value>,
    value: Option<Value>,
}

fn parse_event(builder: &mut Builder, line: &str, line_number: usize) -> Result<(), String> {
    let Value::Map(entries) = parse_value(line)? else {
        return Err(format!(
            "expected an EDN map such as {{:process 0, :type :invoke, :f :get, :key \"a\", \
             :value nil}}, found {:?}",
            truncate_for_message(line)
        ));
    };
    let mut fields = EventFields::default();
    for (key, value) in entries {
        let slot = match &key {
            Value::Keyword(name) => match name.as_str() {
                "process" => &mut fields.process,
                "type" => &mut fields.event_type,
                "f" => &mut fields.function,
                "key" => &mut fields.key,
                "value" => &mut fields.value,
                // Other fields such as :time, :index or :error do not affect the check.
                _ => continue,
            },
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!("duplicate field {key} in the map"));
        }
        *slot = Some(value);
    }

    let process = match fields.process {
        Some(Value::Integer(text)) => text.parse::<u64>().map_err(|_| {
            format!("invalid :process {text}: expected a non-negative integer below 2^64")
        })?,
        // Jepsen's fault injector logs as the process :nemesis, and its events are not
        // client operations.
        Some(Value::Keyword(name)) if name == "nemesis" => return Ok(()),
        Some(other) => {
            return Err(format!(
                "invalid :process {}: expected a non-negative integer",
                truncate_for_message(&other.to_string())
            ));
        }
        None => return Err("missing field :process".to_string()),
    };
    let event_type = match fields.event_type {
        Some(Value::Keyword(name)) => name,
        Some(other) => {
            return Err(format!(
                "invalid :type {}: expected :invoke, :ok, :fail or :info",
                truncate_for_message(&other.to_string())
            ));
        }
        None => return Err("missing field :type".to_string()),
    };
    let function = match fields.function {
        Some(Value::Keyword(name)) => name,
        Some(other) => {
            return Err(format!(
                "invalid :f {}: expected a keyword such as :get, :put or :append",
                truncate_for_message(&other.to_string())
            ));
        }
        None => return Err("missing field :f".to_string()),
    };
    let key = match &fields.key {
        None | Some(Value::Nil) => String::new(),
        Some(Value::String(text) | Value::Integer(text) | Value::Keyword(text)) => text.clone(),
        Some(other) => {
            return Err(format!(
                "invalid :key {}: expected a string or an integer",
                truncate_for_message(&other.to_string())
            ));
        }
    };
    let value = fields.value.unwrap_or(Value::Nil);

    match event_type.as_str() {
        "invoke" => {
            let call = build_call(&function, key, &value)?;
            builder.invoke(process, call, Some(line_number))?;
            Ok(())
        }
        "ok" | "fail" | "info" => {
            let Some(open) = builder.open_operation(process) else {
                return Err(format!(
                    "process {process} has :type :{event_type} but no open operation; every \
                     completion must follow an :invoke of the same process"
                ));
            };
            if call_name(&function)? != open.call.name() || key != open.call.key() {
                return Err(format!(
                    "completion :f :{function} :key {key:?} does not match the open {} of \
                     process {process}",
                    open.call
                ));
            }
            let outcome = match event_type.as_str() {
                "ok" => completion_output(&open.call, &value)?,
                "fail" => Outcome::Fail,
                _ => Outcome::Info,
            };
            builder.complete_process(process, outcome, Some(line_number))
        }
        other => Err(format!(
            "invalid :type :{other}: expected :invoke, :ok, :fail or :info"
        )),
    }
}

/// Returns the call name (as [`Call::name`] spells it) of an EDN `:f` keyword.
fn call_name(function: &str) -> Result<&'static str, String> {
    match function {
        "get" | "read" => Ok("read"),
        "put" | "write" => Ok("write"),
        "append" => Ok("append"),
        "delete" | "del" => Ok("delete"),
        "cas" => Ok("cas"),
        other => Err(format!(
            "invalid :f :{other}: expected :get, :read, :put, :write, :append, :cas or :delete"
        )),
    }
}

/// Builds the call of an invocation of `function` with the event's `:value`.
fn build_call(function: &str, key: String, value: &Value) -> Result<Call, String> {
    let written = |value: &Value| -> Result<String, String> {
        value
            .to_register_value(":value")?
            .ok_or_else(|| format!(":value of :{function} is nil; expected the string to store"))
    };
    match call_name(function)? {
        "read" => Ok(Call::Read { key }),
        "write" => Ok(Call::Write {
            key,
            value: written(value)?,
        }),
        "append" => Ok(Call::Append {
            key,
            value: written(value)?,
        }),
        "delete" => Ok(Call::Delete { key }),
        _ => {
            let (expected, new) = cas_pair(value)?;
            Ok(Call::Cas { key, expected, new })
        }
    }
}

/// Reads the `[expected new]` vector of a compare-and-set.
pub(super) fn cas_pair(value: &Value) -> Result<(Option<String>, String), String> {
    match value {
        Value::Vector(pair) if pair.len() == 2 => {
            let expected = pair[0].to_register_value("expected value of the cas")?;
            let new = pair[1]
                .to_register_value("new value of the cas")?
                .ok_or("invalid new value nil of the cas: expected a string or an integer")?;
            Ok((expected, new))
        }
        other => Err(format!(
            "invalid cas value {}: expected a vector [expected new]",
            truncate_for_message(&other.to_string())
        )),
    }
}

/// Returns the outcome of an `:ok` completion of `call` that carries `value`. A written
/// value or compare-and-set pair, when present, must repeat the invocation's.
fn completion_output(call: &Call, value: &Value) -> Result<Outcome, String> {
    match call {
        Call::Read { .. } => Ok(Outcome::Ok(Output::Read(
            value.to_register_value(":value of the read")?,
        ))),
        Call::Cas { expected, new, .. } => {
            if *value != Value::Nil && cas_pair(value)? != (expected.clone(), new.clone()) {
                return Err(format!(
                    "completion :value {} differs from the invoked {call}",
                    truncate_for_message(&value.to_string())
                ));
            }
            Ok(Outcome::Ok(Output::Cas(true)))
        }
        Call::Write { value: written, .. } | Call::Append { value: written, .. } => {
            match value.to_register_value(":value")? {
                Some(completed) if completed != *written => Err(format!(
                    "completion :value {completed:?} differs from the invoked value {written:?}"
                )),
                _ => Ok(Outcome::Ok(Output::Done)),
            }
        }
        Call::Delete { .. } => Ok(Outcome::Ok(Output::Done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parser_reads_nested_collections() {
        let value = parse_value(r#"{:a [1 -2 "x\"y"], :b nil, :c (true)}"#);
        let expected = Value::Map(vec![
            (
                Value::Keyword("a".into()),
                Value::Vector(vec![
                    Value::Integer("1".into()),
                    Value::Integer("-2".into()),
                    Value::String("x\"y".into()),
                ]),
            ),
            (Value::Keyword("b".into()), Value::Nil),
            (
                Value::Keyword("c".into()),
                Value::Vector(vec![Value::Bool(true)]),
            ),
        ]);
        assert_eq!(value, Ok(expected));
    }

    #[test]
    fn value_parser_decodes_unicode_escapes() {
        assert_eq!(
            parse_value(r#""\u00e9\ud83d\ude00""#),
            Ok(Value::String("é😀".into()))
        );
        assert!(parse_value(r#""\ud83d""#).is_err());
        assert!(parse_value(r#""\u12""#).is_err());
    }

    #[test]
    fn value_parser_rejects_deep_nesting() {
        let deep = "[".repeat(10_000);
        assert!(parse_value(&deep).is_err());
    }

    #[test]
    fn value_parser_rejects_trailing_text() {
        assert!(parse_value("{:a 1} x").is_err());
        assert!(parse_value("{:a}").is_err());
        assert!(parse_value("1.5").is_err());
    }
}
