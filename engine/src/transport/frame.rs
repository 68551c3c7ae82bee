//! Frames on a peer connection: a fixed header around an rkyv archive.
//!
//! ```text
//! frame  = header (16 bytes) , payload (payload_len bytes)
//! header = magic "SRFT" (4) | protocol version u16 | kind u8 | reserved u8
//!          | payload_len u32 | crc u32
//! ```
//!
//! Integers are little-endian. The CRC-32 covers the first 12 header bytes and the
//! payload, so a damaged length is caught as surely as a damaged payload. The decoder
//! checks the magic, the version and the length limit before it waits for a payload, so a
//! peer speaking another protocol is rejected after 16 bytes, and no length field can make
//! it buffer more than the configured maximum.
//!
//! The client protocol uses the same header with its own magic and version, given as a
//! [`FrameFormat`]; [`encode_frame`] and [`FrameDecoder::new`] use the peer format.
//!
//! Payloads are handed out as [`Bytes`] that start at a 16-byte aligned address, which
//! rkyv needs to read an archive in place. Entry data can then be sliced out of the frame
//! without another copy.

use bytes::{Bytes, BytesMut};

/// First bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"SRFT";

/// Version of the peer protocol: this header and the archived types of `wire.rs`.
/// Version 2 added snapshot transfer, membership-change entries, `LostEntries` and the
/// leader's uncapped commit index in heartbeats; a version-1 node cannot read them, so the
/// two refuse each other's connections with an error naming both versions. Version 3 added
/// the group's agreed timing to `InstallSnapshot`. Version 4 added `HelloAccepted`, the
/// accepting side's reply to a hello, which a version-3 node never sends. Version 5 added
/// `catching_up` to every response to the leader, which changes their archived layout.
pub const PROTOCOL_VERSION: u16 = 5;

pub const FRAME_HEADER_BYTES: usize = 16;

/// The magic and version that identify one protocol's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameFormat {
    pub magic: [u8; 4],
    pub version: u16,
}

/// Frames of the peer protocol.
pub const PEER_FRAME_FORMAT: FrameFormat = FrameFormat {
    magic: FRAME_MAGIC,
    version: PROTOCOL_VERSION,
};

/// Alignment of payloads handed to rkyv; the largest alignment of any archived type.
pub const PAYLOAD_ALIGNMENT_BYTES: usize = 16;

/// The content type of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// First frame on a connection: who is connecting.
    Hello,
    /// Raft messages of any number of groups.
    Messages,
    /// Opens a snapshot transfer: the snapshot's identity and the `InstallSnapshot`
    /// message that the receiver steps once it holds the snapshot durably.
    SnapshotBegin,
    /// Bytes of a snapshot file at an offset.
    SnapshotChunk,
    /// From the receiver of a snapshot: the offset it holds, where the sender resumes.
    SnapshotAccept,
    /// From the receiver of a snapshot: it verified the snapshot and stored it durably.
    SnapshotStored,
    /// The accepting side's reply to a valid hello: its own hello. The connecting side
    /// counts the connection as up only once it arrives, so that a connection without a
    /// reader on the other end is noticed.
    HelloAccepted,
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Hello => 1,
            FrameKind::Messages => 2,
            FrameKind::SnapshotBegin => 3,
            FrameKind::SnapshotChunk => 4,
            FrameKind::SnapshotAccept => 5,
            FrameKind::SnapshotStored => 6,
            FrameKind::HelloAccepted => 7,
        }
    }

    fn from_code(code: u8) -> Option<FrameKind> {
        match code {
            1 => Some(FrameKind::Hello),
            2 => Some(FrameKind::Messages),
            3 => Some(FrameKind::SnapshotBegin),
            4 => Some(FrameKind::SnapshotChunk),
            5 => Some(FrameKind::SnapshotAccept),
            6 => Some(FrameKind::SnapshotStored),
            7 => Some(FrameKind::HelloAccepted),
            _ => None,
        }
    }
}

/// The defect that makes bytes from a peer an invalid frame. Any of these closes the
/// connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("invalid frame magic {found:02x?}: the peer does not speak the shardraft protocol")]
    BadMagic { found: [u8; 4] },
    #[error(
        "unsupported protocol version {found}; this node speaks version {PROTOCOL_VERSION}, so \
         upgrade the older node"
    )]
    UnsupportedVersion { found: u16 },
    #[error(
        "unsupported frame version {found}; this side speaks version {expected}, so upgrade \
         the older side"
    )]
    UnsupportedFormatVersion { found: u16, expected: u16 },
    #[error("unknown frame kind {found}")]
    UnknownKind { found: u8 },
    #[error("frame payload of {found} bytes exceeds the limit of {limit} bytes")]
    TooLarge { found: u32, limit: u32 },
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    /// The archive, starting at a [`PAYLOAD_ALIGNMENT_BYTES`]-aligned address.
    pub payload: Bytes,
}

/// Appends one peer frame carrying `payload` to `out`.
pub fn encode_frame(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_with(PEER_FRAME_FORMAT, kind, payload, out);
}

/// Appends one frame of `format` carrying `payload` to `out`.
pub fn encode_frame_with(format: FrameFormat, kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&format.magic);
    header[4..6].copy_from_slice(&format.version.to_le_bytes());
    header[6] = kind.code();
    let payload_len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    header[8..12].copy_from_slice(&payload_len.to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[0..12]);
    hasher.update(payload);
    header[12..16].copy_from_slice(&hasher.finalize().to_le_bytes());
    out.reserve(FRAME_HEADER_BYTES + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
}

#[derive(Clone, Copy, Debug)]
struct Header {
    kind: FrameKind,
    payload_len: u32,
    crc: u32,
    prefix: [u8; 12],
}

fn decode_header(
    bytes: &[u8; FRAME_HEADER_BYTES],
    format: FrameFormat,
    limit: u32,
) -> Result<Header, FrameError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != format.magic {
        return Err(FrameError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != format.version {
        // The peer format keeps its original error, which names the peer protocol version.
        if format == PEER_FRAME_FORMAT {
            return Err(FrameError::UnsupportedVersion { found: version });
        }
        return Err(FrameError::UnsupportedFormatVersion {
            found: version,
            expected: format.version,
        });
    }
    let kind = FrameKind::from_code(bytes[6]).ok_or(FrameError::UnknownKind { found: bytes[6] })?;
    let payload_len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if payload_len > limit {
        return Err(FrameError::TooLarge {
            found: payload_len,
            limit,
        });
    }
    let mut prefix = [0u8; 12];
    prefix.copy_from_slice(&bytes[0..12]);
    Ok(Header {
        kind,
        payload_len,
        crc: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        prefix,
    })
}

/// Splits a byte stream into verified frames. Feed it whatever the socket returns.
#[derive(Debug)]
pub struct FrameDecoder {
    format: FrameFormat,
    payload_bytes_max: u32,
    header: [u8; FRAME_HEADER_BYTES],
    header_filled: usize,
    pending: Option<(Header, BytesMut)>,
}

impl FrameDecoder {
    /// A decoder of peer frames.
    pub fn new(payload_bytes_max: u32) -> FrameDecoder {
        FrameDecoder::with_format(PEER_FRAME_FORMAT, payload_bytes_max)
    }

    /// A decoder of frames of `format`.
    pub fn with_format(format: FrameFormat, payload_bytes_max: u32) -> FrameDecoder {
        FrameDecoder {
            format,
            payload_bytes_max,
            header: [0; FRAME_HEADER_BYTES],
            header_filled: 0,
            pending: None,
        }
    }

    /// Consumes bytes from the front of `input` and returns the next complete frame, if
    /// `input` completes one. Call again with the rest of `input` until it returns
    /// `Ok(None)` with `input` empty.
    ///
    /// # Errors
    /// The first invalid header or checksum; the decoder must then be dropped together
    /// with its connection.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, FrameError> {
        if self.pending.is_none() {
            let wanted = FRAME_HEADER_BYTES - self.header_filled;
            let taken = wanted.min(input.len());
            self.header[self.header_filled..self.header_filled + taken]
                .copy_from_slice(&input[..taken]);
            *input = &input[taken..];
            self.header_filled += taken;
            if self.header_filled < FRAME_HEADER_BYTES {
                return Ok(None);
            }
            let header = decode_header(&self.header, self.format, self.payload_bytes_max)?;
            self.header_filled = 0;
            self.pending = Some((header, aligned_buffer(header.payload_len as usize)));
        }

        let (header, payload) = self.pending.as_mut().expect("a pending frame was just set");
        let wanted = header.payload_len as usize - payload.len();
        let taken = wanted.min(input.len());
        payload.extend_from_slice(&input[..taken]);
        *input = &input[taken..];
        if payload.len() < header.payload_len as usize {
            return Ok(None);
        }

        let (header, payload) = self.pending.take().expect("a pending frame exists");
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header.prefix);
        hasher.update(&payload);
        let computed = hasher.finalize();
        if computed != header.crc {
            return Err(FrameError::ChecksumMismatch {
                stored: header.crc,
                computed,
            });
        }
        Ok(Some(Frame {
            kind: header.kind,
            payload: payload.freeze(),
        }))
    }
}

/// An empty buffer with room for `len` bytes whose first byte is 16-byte aligned.
///
/// Allocators return such addresses for all but the smallest requests, but nothing
/// guarantees it, so the buffer over-allocates and skips to the first aligned byte when
/// needed.
fn aligned_buffer(len: usize) -> BytesMut {
    let mut buffer = BytesMut::with_capacity(len.max(PAYLOAD_ALIGNMENT_BYTES));
    let skip = buffer.as_ptr().align_offset(PAYLOAD_ALIGNMENT_BYTES);
    if skip == 0 {
        return buffer;
    }
    buffer = BytesMut::with_capacity(len + PAYLOAD_ALIGNMENT_BYTES);
    let skip = buffer.as_ptr().align_offset(PAYLOAD_ALIGNMENT_BYTES);
    buffer.resize(skip, 0);
    let _ = buffer.split_to(skip);
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u32 = 1 << 20;

    fn frame_bytes(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(FrameKind::Messages, payload, &mut out);
        out
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut decoder = FrameDecoder::new(LIMIT);
        let mut input = bytes;
        let mut frames = Vec::new();
        loop {
            match decoder.decode(&mut input)? {
                Some(frame) => frames.push(frame),
                None if input.is_empty() => return Ok(frames),
                None => {}
            }
        }
    }

    #[test]
    fn frames_round_trip_in_any_split() {
        let mut stream = frame_bytes(b"first payload");
        stream.extend(frame_bytes(b""));
        stream.extend(frame_bytes(&[7u8; 3000]));
        for chunk in [1, 2, 7, 16, 17, 100, stream.len()] {
            let mut decoder = FrameDecoder::new(LIMIT);
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                let mut input = piece;
                while let Some(frame) = decoder.decode(&mut input).unwrap() {
                    frames.push(frame);
                }
                assert!(input.is_empty(), "chunk size {chunk} left input unread");
            }
            assert_eq!(frames.len(), 3, "chunk size {chunk}");
            assert_eq!(&frames[0].payload[..], b"first payload");
            assert!(frames[1].payload.is_empty());
            assert_eq!(frames[2].payload.len(), 3000);
        }
    }

    #[test]
    fn payloads_are_aligned() {
        for len in [0usize, 1, 15, 16, 100, 4097] {
            let frames = decode_all(&frame_bytes(&vec![1u8; len])).unwrap();
            let address = frames[0].payload.as_ptr() as usize;
            assert_eq!(
                address % PAYLOAD_ALIGNMENT_BYTES,
                0,
                "payload of {len} bytes"
            );
        }
    }

    #[test]
    fn bad_magic_is_rejected_after_the_header() {
        let mut bytes = frame_bytes(b"x");
        bytes[0] = b'G';

        let error = decode_all(&bytes).unwrap_err();

        assert!(matches!(error, FrameError::BadMagic { .. }), "{error}");
    }

    #[test]
    fn other_version_is_rejected() {
        let mut bytes = frame_bytes(b"x");
        bytes[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());

        let error = decode_all(&bytes).unwrap_err();

        assert_eq!(
            error,
            FrameError::UnsupportedVersion {
                found: PROTOCOL_VERSION + 1
            }
        );
    }

    #[test]
    fn oversized_length_is_rejected_before_buffering() {
        let mut bytes = frame_bytes(b"x");
        bytes[8..12].copy_from_slice(&(LIMIT + 1).to_le_bytes());
        let mut decoder = FrameDecoder::new(LIMIT);
        let mut input = &bytes[..FRAME_HEADER_BYTES];

        let error = decoder.decode(&mut input).unwrap_err();

        assert!(matches!(error, FrameError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = frame_bytes(b"some payload bytes");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let result = decode_all(&damaged);
            let accepted_intact = matches!(&result, Ok(frames) if frames.len() == 1);
            assert!(!accepted_intact, "flipping bit {bit} went unnoticed");
        }
    }

    #[test]
    fn unknown_kind_is_rejected() {
        let mut bytes = frame_bytes(b"x");
        bytes[6] = 9;

        let error = decode_all(&bytes).unwrap_err();

        assert_eq!(error, FrameError::UnknownKind { found: 9 });
    }
}
