//! The errors of commands rejected when their log entry is applied.

use super::codec::CodecError;

/// A command that was rejected when applied. The entry still counts as applied, and the
/// store is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The entry's data is not a valid encoded [`Command`](super::Command).
    #[error("invalid command in log entry: {0}")]
    Decode(CodecError),
    /// The command's key is longer than the store accepts.
    #[error(
        "key is {key_bytes} bytes, over the limit of {key_bytes_max} bytes; use a shorter key \
         or raise key_bytes_max on every replica"
    )]
    KeyTooLarge {
        /// The length of the rejected key.
        key_bytes: usize,
        /// The configured limit.
        key_bytes_max: usize,
    },
    /// The command's value is longer than the store accepts.
    #[error(
        "value is {value_bytes} bytes, over the limit of {value_bytes_max} bytes; split the \
         value or raise value_bytes_max on every replica"
    )]
    ValueTooLarge {
        /// The length of the rejected value.
        value_bytes: usize,
        /// The configured limit.
        value_bytes_max: usize,
    },
}
