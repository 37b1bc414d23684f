//! Framing: `| body length: u32 big endian | version: u8 | bincode message |`.
//!
//! The body length counts the version byte and the message. A length above the reader's cap
//! (at most [`FRAME_BYTES_MAX`]) is rejected as soon as its 4 bytes arrive, before anything is
//! buffered for it. [`FrameDecoder`] is sans-IO: feed it bytes, take whole messages out.

use crate::codec;
use crate::limits::FRAME_BYTES_MAX;
use crate::message::PROTOCOL_VERSION;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (a frame holds at least its version byte)")]
    Empty,
    #[error("frame version {0} is not supported (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends one frame holding `message` to `out`. Several frames appended to one buffer go out in
/// one write: that is how replies and pipelined PUTs are coalesced.
pub fn encode_frame<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.push(PROTOCOL_VERSION);
    if let Err(e) = codec::encode_into(message, out) {
        out.truncate(start);
        return Err(FrameError::Malformed(e.to_string()));
    }
    let body_len = out.len() - start - FRAME_HEADER_BYTES;
    if body_len > FRAME_BYTES_MAX {
        out.truncate(start);
        return Err(FrameError::TooLarge {
            len: body_len,
            max: FRAME_BYTES_MAX,
        });
    }
    let len = u32::try_from(body_len).expect("FRAME_BYTES_MAX fits in u32");
    out[start..start + FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Incremental frame decoder for one byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Bytes of `buf` before this have been decoded already.
    read_pos: usize,
    frame_bytes_max: usize,
}

impl FrameDecoder {
    /// `frame_bytes_max` is clamped to [`FRAME_BYTES_MAX`].
    pub fn new(frame_bytes_max: usize) -> Self {
        Self {
            buf: Vec::new(),
            read_pos: 0,
            frame_bytes_max: frame_bytes_max.min(FRAME_BYTES_MAX),
        }
    }

    /// Adds bytes received from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        // Compact before growing so the buffer stays near one frame plus one read.
        if self.read_pos > 0 && self.read_pos == self.buf.len() {
            self.buf.clear();
            self.read_pos = 0;
        } else if self.read_pos > self.buf.len() / 2 {
            self.buf.drain(..self.read_pos);
            self.read_pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet decoded.
    pub fn buffered_bytes(&self) -> usize {
        self.buf.len() - self.read_pos
    }

    /// Checks the header of the next frame as soon as it is complete, so an oversized length is
    /// refused before its body is buffered. Returns the body length if the header is in.
    fn peek_body_len(&self) -> Result<Option<usize>, FrameError> {
        let pending = &self.buf[self.read_pos..];
        let Some(header) = pending.first_chunk::<FRAME_HEADER_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*header) as usize;
        if len > self.frame_bytes_max {
            return Err(FrameError::TooLarge {
                len,
                max: self.frame_bytes_max,
            });
        }
        if len == 0 {
            return Err(FrameError::Empty);
        }
        Ok(Some(len))
    }

    /// Takes the next whole frame's message out, if one is complete. An error means the stream
    /// cannot be resynchronised: answer it and close the stream.
    // Not `Iterator::next`: this one is generic over the message type and fallible.
    #[allow(clippy::should_implement_trait)]
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(len) = self.peek_body_len()? else {
            return Ok(None);
        };
        let body_start = self.read_pos + FRAME_HEADER_BYTES;
        if self.buf.len() - body_start < len {
            return Ok(None);
        }
        let body = &self.buf[body_start..body_start + len];
        self.read_pos = body_start + len;
        let version = body[0];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion(version));
        }
        codec::decode(&body[1..])
            .map(Some)
            .map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// Call after every `extend`: fails early on an oversized header even though no frame is
    /// complete yet.
    pub fn check_header(&self) -> Result<(), FrameError> {
        self.peek_body_len().map(|_| ())
    }
}
