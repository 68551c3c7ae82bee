//! The byte encoding of [`Command`] and [`Query`]: one format version byte followed by an
//! rkyv archive of the value.
//!
//! Decoding validates the archive with rkyv's bytecheck validator before touching it, so
//! any input bytes produce either a value or a [`CodecError`]. rkyv reads archives in
//! place and needs them aligned. The archive starts one byte into the input, after the
//! version, so decoding copies it into an [`AlignedVec`] unless it already sits at an
//! aligned address.

use bytes::Bytes;
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

use super::command::{Command, Query};

/// The format version byte this build writes in front of every encoded command and
/// query, and the only one it decodes.
pub const FORMAT_VERSION: u8 = 1;

/// The alignment, in bytes, that decoding guarantees for the archive it validates.
const ARCHIVE_ALIGNMENT_BYTES: usize = 16;

/// A command or query that could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input contained no bytes at all.
    #[error("encoded {kind} is empty: expected a format version byte followed by an rkyv archive")]
    Empty {
        /// The kind of value decoded: `"command"` or `"query"`.
        kind: &'static str,
    },
    /// The format version byte is not one this build decodes.
    #[error(
        "encoded {kind} has format version {version}, but this build decodes only version \
         {supported}; encode it with a matching shardraft version"
    )]
    UnknownVersion {
        /// The kind of value decoded: `"command"` or `"query"`.
        kind: &'static str,
        /// The version byte found.
        version: u8,
        /// The version this build decodes.
        supported: u8,
    },
    /// The bytes after the version byte are not a valid archive of the expected type.
    ///
    /// The error carries no detail from the validator, because rkyv's messages contain
    /// memory addresses. Those differ between replicas, and the result of applying an
    /// entry must not.
    #[error(
        "encoded {kind} is not a valid rkyv archive of a {kind} ({archive_bytes} bytes after \
         the version byte); it is truncated, corrupted or encodes another type"
    )]
    InvalidArchive {
        /// The kind of value decoded: `"command"` or `"query"`.
        kind: &'static str,
        /// The length of the archive after the version byte.
        archive_bytes: usize,
    },
    /// rkyv failed to serialize the value, for example because it is larger than the
    /// 2 GiB that rkyv's default 32-bit signed relative pointers can address.
    #[error("failed to encode {kind}: {reason}")]
    Encode {
        /// The kind of value encoded: `"command"` or `"query"`.
        kind: &'static str,
        /// rkyv's description of the failure.
        reason: String,
    },
}

impl Command {
    /// Encodes the command as a format version byte followed by its rkyv archive, the
    /// form that log entries carry.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        encode(self, "command")
    }

    /// Decodes and validates a command produced by [`Command::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Command, CodecError> {
        decode(bytes, "command")
    }
}

impl Query {
    /// Encodes the query as a format version byte followed by its rkyv archive.
    pub fn encode(&self) -> Result<Bytes, CodecError> {
        encode(self, "query")
    }

    /// Decodes and validates a query produced by [`Query::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Query, CodecError> {
        decode(bytes, "query")
    }
}

fn encode<T>(value: &T, kind: &'static str) -> Result<Bytes, CodecError>
where
    T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let archive = rkyv::to_bytes::<rancor::Error>(value).map_err(|error| CodecError::Encode {
        kind,
        reason: error.to_string(),
    })?;
    let mut encoded = Vec::with_capacity(1 + archive.len());
    encoded.push(FORMAT_VERSION);
    encoded.extend_from_slice(&archive);
    Ok(Bytes::from(encoded))
}

fn decode<T>(bytes: &[u8], kind: &'static str) -> Result<T, CodecError>
where
    T: Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Failure>>
        + Deserialize<T, HighDeserializer<rancor::Failure>>,
{
    let Some((&version, archive)) = bytes.split_first() else {
        return Err(CodecError::Empty { kind });
    };
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion {
            kind,
            version,
            supported: FORMAT_VERSION,
        });
    }

    let invalid = |_: rancor::Failure| CodecError::InvalidArchive {
        kind,
        archive_bytes: archive.len(),
    };
    if archive.as_ptr().align_offset(ARCHIVE_ALIGNMENT_BYTES) == 0 {
        return rkyv::from_bytes::<T, rancor::Failure>(archive).map_err(invalid);
    }
    let mut aligned = AlignedVec::<ARCHIVE_ALIGNMENT_BYTES>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    rkyv::from_bytes::<T, rancor::Failure>(&aligned).map_err(invalid)
}
