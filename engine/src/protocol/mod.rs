//! The client protocol: how clients talk to a node's client service.
//!
//! ```text
//! client                                  server
//!   Hello frame:    ClientHello ─────────►
//!                 ◄───────── HelloReply    Hello frame (Accepted(ServerHello) or an error)
//!   Messages frame: RequestBatch ────────►
//!                 ◄──────── ResponseBatch  Messages frame, any number, in completion order
//! ```
//!
//! Frames use the peer transport's header ([`crate::transport::frame`]) with the magic
//! `SRCL` and a frame version of its own, around one rkyv archive. The client protocol
//! version travels in the hellos, so a server can tell a client of another version why
//! it is rejected before it closes the connection. Requests carry an id, so a client can
//! pipeline many and match each response, which may arrive in any order.
//!
//! Decoding validates the archive with rkyv's checker and then the values: node ids are at
//! least 1, a server has at least one group. Invalid bytes give a [`ProtocolError`],
//! never a panic. Checks that depend on the server's limits (empty keys, sizes, scan
//! limits) belong to the server, which rejects them with an error reply.

mod messages;
mod stream;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

pub use messages::{
    ClientHello, CurrentValue, GroupReport, GroupRole, HelloReply, MemberAddress, MemberReport,
    MembershipChangeRequest, MembershipReport, Operation, Reply, Request, RequestBatch, Response,
    ResponseBatch, ScanEntry, ServerHello, StatusReport,
};
pub use stream::{FrameReader, ReadError};

use crate::transport::frame::{Frame, FrameError, FrameFormat, FrameKind, encode_frame_with};

/// The client protocol version that this build speaks, exchanged in the hellos. Version 2
/// added the membership and leadership operations. Their archived enums are larger, so a
/// version 1 peer could not read them, and the hello rejects it with `UnsupportedVersion`.
pub const CLIENT_PROTOCOL_VERSION: u16 = 2;

/// The frame header of the client protocol: its own magic, so that a client that reaches
/// a peer port (or a peer that reaches a client port) is rejected after 16 bytes.
pub const CLIENT_FRAME_FORMAT: FrameFormat = FrameFormat {
    magic: *b"SRCL",
    version: 1,
};

/// The default maximum payload of one client frame, 16 MiB.
pub const CLIENT_FRAME_BYTES_MAX: u32 = 16 << 20;

/// Why bytes received on a client connection are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame header or checksum is invalid.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The payload is not a valid archive of the expected type.
    #[error("the payload is not a valid archive of a {what} ({payload_bytes} bytes)")]
    InvalidArchive {
        /// The type that was expected.
        what: &'static str,
        /// The payload's length.
        payload_bytes: usize,
    },
    /// The archive is valid, but a value in it is not.
    #[error("invalid {what}: {detail}")]
    InvalidValue {
        /// The message that contains the value.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A frame of one kind arrived where the protocol expects another.
    #[error("a {found:?} frame arrived where a {expected:?} frame belongs")]
    UnexpectedFrame {
        /// The kind that arrived.
        found: FrameKind,
        /// The kind the protocol expects here.
        expected: FrameKind,
    },
    /// Serializing a message failed.
    #[error("failed to encode a {what}: {reason}")]
    Encode {
        /// The message being encoded.
        what: &'static str,
        /// rkyv's error.
        reason: String,
    },
}

/// Appends one client frame carrying `value` to `out`.
///
/// # Errors
/// [`ProtocolError::Encode`] when rkyv fails to serialize `value`.
fn encode_into<T>(
    kind: FrameKind,
    what: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError>
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    let archive =
        rkyv::to_bytes::<rancor::Error>(value).map_err(|error| ProtocolError::Encode {
            what,
            reason: error.to_string(),
        })?;
    encode_frame_with(CLIENT_FRAME_FORMAT, kind, &archive, out);
    Ok(())
}

/// Checks the frame kind, validates the archive and deserializes it.
fn decode_from<T>(
    frame: &Frame,
    expected: FrameKind,
    what: &'static str,
) -> Result<T, ProtocolError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Failure>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Failure>>,
{
    if frame.kind != expected {
        return Err(ProtocolError::UnexpectedFrame {
            found: frame.kind,
            expected,
        });
    }
    rkyv::from_bytes::<T, rancor::Failure>(&frame.payload).map_err(|_| {
        ProtocolError::InvalidArchive {
            what,
            payload_bytes: frame.payload.len(),
        }
    })
}

fn invalid(what: &'static str, detail: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidValue {
        what,
        detail: detail.into(),
    }
}

/// Appends a frame with a client hello to `out`.
///
/// # Errors
/// [`ProtocolError::Encode`] when serializing fails.
pub fn encode_client_hello(hello: &ClientHello, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_into(FrameKind::Hello, "client hello", hello, out)
}

/// Reads a client hello from a frame.
///
/// # Errors
/// A frame of another kind or an invalid archive.
pub fn decode_client_hello(frame: &Frame) -> Result<ClientHello, ProtocolError> {
    decode_from(frame, FrameKind::Hello, "client hello")
}

/// Appends a frame with a server's hello reply to `out`.
///
/// # Errors
/// [`ProtocolError::Encode`] when serializing fails.
pub fn encode_hello_reply(reply: &HelloReply, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_into(FrameKind::Hello, "hello reply", reply, out)
}

/// Reads and checks a server's hello reply from a frame.
///
/// # Errors
/// A frame of another kind, an invalid archive, a node id of 0 or a server with no
/// groups.
pub fn decode_hello_reply(frame: &Frame) -> Result<HelloReply, ProtocolError> {
    let reply: HelloReply = decode_from(frame, FrameKind::Hello, "hello reply")?;
    if let HelloReply::Accepted(hello) = &reply {
        if hello.node_id == 0 {
            return Err(invalid("server hello", "node id 0; node ids start at 1"));
        }
        if hello.groups == 0 {
            return Err(invalid(
                "server hello",
                "0 groups; a cluster has at least 1",
            ));
        }
        if let Some(member) = hello.members.iter().find(|member| member.node_id == 0) {
            return Err(invalid(
                "server hello",
                format!(
                    "member node id 0 (address {:?}); node ids start at 1",
                    member.client_address
                ),
            ));
        }
    }
    Ok(reply)
}

/// Appends a frame with a batch of requests to `out`.
///
/// # Errors
/// [`ProtocolError::Encode`] when serializing fails.
pub fn encode_requests(batch: &RequestBatch, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_into(FrameKind::Messages, "request batch", batch, out)
}

/// Reads and checks a batch of requests from a frame.
///
/// # Errors
/// A frame of another kind, an invalid archive, or a node id of 0 in a membership or
/// leadership request.
pub fn decode_requests(frame: &Frame) -> Result<RequestBatch, ProtocolError> {
    let batch: RequestBatch = decode_from(frame, FrameKind::Messages, "request batch")?;
    for request in &batch.requests {
        check_operation(&request.operation)
            .map_err(|detail| invalid("request", format!("request {}: {detail}", request.id)))?;
    }
    Ok(batch)
}

fn check_operation(operation: &Operation) -> Result<(), &'static str> {
    match operation {
        Operation::ChangeMembership { change, .. } if change.node() == 0 => {
            Err("membership change of node id 0; node ids start at 1")
        }
        Operation::TransferLeader { to: 0, .. } => {
            Err("leadership transfer to node id 0; node ids start at 1")
        }
        _ => Ok(()),
    }
}

/// Appends a frame with a batch of responses to `out`.
///
/// # Errors
/// [`ProtocolError::Encode`] when serializing fails.
pub fn encode_responses(batch: &ResponseBatch, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    encode_into(FrameKind::Messages, "response batch", batch, out)
}

/// Reads and checks a batch of responses from a frame.
///
/// # Errors
/// A frame of another kind, an invalid archive, or a node id of 0 in a response.
pub fn decode_responses(frame: &Frame) -> Result<ResponseBatch, ProtocolError> {
    let batch: ResponseBatch = decode_from(frame, FrameKind::Messages, "response batch")?;
    for response in &batch.responses {
        check_reply(&response.reply)
            .map_err(|detail| invalid("response", format!("request {}: {detail}", response.id)))?;
    }
    Ok(batch)
}

fn check_reply(reply: &Reply) -> Result<(), &'static str> {
    match reply {
        Reply::NotLeader {
            leader: Some(0), ..
        } => Err("leader node id 0; node ids start at 1"),
        Reply::Status(report) if report.node_id == 0 => Err("node id 0; node ids start at 1"),
        Reply::Status(report) if report.groups.iter().any(|group| group.leader == Some(0)) => {
            Err("leader node id 0; node ids start at 1")
        }
        Reply::Membership(report)
            if report.reporter == 0
                || report.leader == Some(0)
                || report.members.iter().any(|member| member.node_id == 0) =>
        {
            Err("membership report with node id 0; node ids start at 1")
        }
        _ => Ok(()),
    }
}

/// Decodes a whole byte string as client frames and returns their payloads; for tests
/// and tools that hold a complete stream.
///
/// # Errors
/// The first invalid frame.
pub fn split_frames(mut bytes: &[u8], frame_bytes_max: u32) -> Result<Vec<Frame>, ProtocolError> {
    let mut decoder =
        crate::transport::frame::FrameDecoder::with_format(CLIENT_FRAME_FORMAT, frame_bytes_max);
    let mut frames = Vec::new();
    loop {
        match decoder.decode(&mut bytes)? {
            Some(frame) => frames.push(frame),
            None if bytes.is_empty() => return Ok(frames),
            None => {}
        }
    }
}
