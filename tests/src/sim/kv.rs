//! The small key-value state machine the simulated clients write to, and the encoding of
//! its commands in log entries.

use std::collections::BTreeMap;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A write command carried in one log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: String,
        value: String,
    },
    /// Sets `key` to `new` if it holds `expected` (`None`: if it is absent).
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
}

/// The result of applying one command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandResult {
    Done,
    Cas { succeeded: bool },
}

const TAG_PUT: u8 = 1;
const TAG_CAS: u8 = 2;
const TAG_CAS_ABSENT: u8 = 3;

/// Why an entry's data is not a command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid command encoding: {0}")]
pub struct DecodeError(&'static str);

impl Command {
    /// Encodes as a tag byte followed by length-prefixed UTF-8 strings.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Command::Put { key, value } => {
                out.put_u8(TAG_PUT);
                put_string(&mut out, key);
                put_string(&mut out, value);
            }
            Command::Cas {
                key,
                expected: Some(expected),
                new,
            } => {
                out.put_u8(TAG_CAS);
                put_string(&mut out, key);
                put_string(&mut out, expected);
                put_string(&mut out, new);
            }
            Command::Cas {
                key,
                expected: None,
                new,
            } => {
                out.put_u8(TAG_CAS_ABSENT);
                put_string(&mut out, key);
                put_string(&mut out, new);
            }
        }
        out.freeze()
    }

    /// Decodes what [`Command::encode`] wrote.
    ///
    /// # Errors
    ///
    /// Returns [`DecodeError`] for a truncated buffer, an unknown tag or invalid UTF-8.
    pub fn decode(mut data: &[u8]) -> Result<Command, DecodeError> {
        if !data.has_remaining() {
            return Err(DecodeError("empty"));
        }
        let command = match data.get_u8() {
            TAG_PUT => Command::Put {
                key: take_string(&mut data)?,
                value: take_string(&mut data)?,
            },
            TAG_CAS => Command::Cas {
                key: take_string(&mut data)?,
                expected: Some(take_string(&mut data)?),
                new: take_string(&mut data)?,
            },
            TAG_CAS_ABSENT => Command::Cas {
                key: take_string(&mut data)?,
                expected: None,
                new: take_string(&mut data)?,
            },
            _ => return Err(DecodeError("unknown tag")),
        };
        if data.has_remaining() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(command)
    }
}

fn put_string(out: &mut BytesMut, value: &str) {
    out.put_u32(value.len() as u32);
    out.put_slice(value.as_bytes());
}

fn take_string(data: &mut &[u8]) -> Result<String, DecodeError> {
    if data.remaining() < 4 {
        return Err(DecodeError("truncated length"));
    }
    let length = data.get_u32() as usize;
    if data.remaining() < length {
        return Err(DecodeError("truncated string"));
    }
    let (text, rest) = data.split_at(length);
    *data = rest;
    String::from_utf8(text.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
}

/// The replicated map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    values: BTreeMap<String, String>,
}

impl KvStore {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.values.get(key)
    }

    pub fn apply(&mut self, command: &Command) -> CommandResult {
        match command {
            Command::Put { key, value } => {
                self.values.insert(key.clone(), value.clone());
                CommandResult::Done
            }
            Command::Cas { key, expected, new } => {
                let succeeded = self.values.get(key) == expected.as_ref();
                if succeeded {
                    self.values.insert(key.clone(), new.clone());
                }
                CommandResult::Cas { succeeded }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let commands = [
            Command::Put {
                key: "a".into(),
                value: "1".into(),
            },
            Command::Cas {
                key: "b".into(),
                expected: Some("1".into()),
                new: "2".into(),
            },
            Command::Cas {
                key: "c".into(),
                expected: None,
                new: "".into(),
            },
        ];
        for command in commands {
            assert_eq!(Command::decode(&command.encode()), Ok(command));
        }
    }

    #[test]
    fn truncated_command_rejected() {
        let encoded = Command::Put {
            key: "key".into(),
            value: "value".into(),
        }
        .encode();
        for length in 0..encoded.len() {
            assert!(
                Command::decode(&encoded[..length]).is_err(),
                "prefix of {length} bytes decoded"
            );
        }
    }

    #[test]
    fn cas_applies_only_on_match() {
        let mut store = KvStore::default();
        let cas = |expected: Option<&str>, new: &str| Command::Cas {
            key: "k".into(),
            expected: expected.map(String::from),
            new: new.into(),
        };
        assert_eq!(
            store.apply(&cas(None, "1")),
            CommandResult::Cas { succeeded: true }
        );
        assert_eq!(
            store.apply(&cas(None, "2")),
            CommandResult::Cas { succeeded: false }
        );
        assert_eq!(
            store.apply(&cas(Some("1"), "3")),
            CommandResult::Cas { succeeded: true }
        );
        assert_eq!(store.get("k").map(String::as_str), Some("3"));
    }
}
