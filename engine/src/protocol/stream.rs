//! Reading client frames from an async byte stream.

use futures_lite::{AsyncRead, AsyncReadExt};

use super::{CLIENT_FRAME_FORMAT, ProtocolError};
use crate::transport::frame::{Frame, FrameDecoder};

/// Bytes read from the stream per call.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Reads client frames from a stream through a fixed buffer.
#[derive(Debug)]
pub struct FrameReader {
    decoder: FrameDecoder,
    buffer: Vec<u8>,
    filled: usize,
    consumed: usize,
}

impl FrameReader {
    /// A reader that rejects frames with payloads over `frame_bytes_max`.
    pub fn new(frame_bytes_max: u32) -> FrameReader {
        FrameReader {
            decoder: FrameDecoder::with_format(CLIENT_FRAME_FORMAT, frame_bytes_max),
            buffer: vec![0u8; READ_CHUNK_BYTES],
            filled: 0,
            consumed: 0,
        }
    }

    /// Returns the next frame, or `None` when the other side closed the connection.
    ///
    /// Dropping the future between reads loses no bytes, so a caller may race it against
    /// a stop signal.
    ///
    /// # Errors
    /// An I/O error, or the first invalid frame; the connection must then be closed.
    pub async fn next_frame<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> Result<Option<Frame>, ReadError> {
        loop {
            let mut input = &self.buffer[self.consumed..self.filled];
            let before = input.len();
            let frame = self
                .decoder
                .decode(&mut input)
                .map_err(|error| ReadError::Protocol(error.into()))?;
            self.consumed += before - input.len();
            if let Some(frame) = frame {
                return Ok(Some(frame));
            }
            if self.consumed < self.filled {
                continue;
            }
            self.consumed = 0;
            self.filled = 0;
            let read = stream.read(&mut self.buffer).await.map_err(ReadError::Io)?;
            if read == 0 {
                return Ok(None);
            }
            self.filled = read;
        }
    }
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The connection failed.
    #[error("reading from the connection failed: {0}")]
    Io(std::io::Error),
    /// The bytes are not a valid client frame.
    #[error(transparent)]
    Protocol(ProtocolError),
}
