//! Frames: a u32 big-endian payload length, then the protobuf payload
//! (protocol.md §4).
//!
//! [`FrameCodec`] is the sans-IO core, as a tokio-util `Decoder`/`Encoder`:
//! it checks the length against the cap as soon as the 4 length bytes are in,
//! before reserving anything, so a stream announcing a 4 GiB frame costs
//! nothing. Payloads are split off the read buffer without copying.
//! [`MessageCodec`] adds the protobuf step for a speaker's two message types.
//!
//! Zero-length frames are not an error here: they decode as an empty payload
//! (an empty message), which the speaker hands on as a one-way message and a
//! tunnel ignores (§4.3). Sending one is refused (§4.4 item 3).

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// `MaxLength`: the largest payload allowed, inclusive (§4.2).
pub const MAX_FRAME_LEN: usize = 0x100_0000;

/// Size of the length prefix.
pub const LEN_PREFIX: usize = 4;

/// A framing or payload error. Every variant but [`CodecError::EmptyMessage`]
/// is fatal for the stream it came from (§4.3).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame length {len} exceeds the maximum of {max} bytes (protocol.md §4.2)")]
    TooLong { len: u64, max: usize },
    #[error(
        "stream ended inside a frame: {received} of {expected} {part} bytes received (protocol.md §4.3)"
    )]
    Truncated {
        part: FramePart,
        expected: usize,
        received: usize,
    },
    #[error("payload is not a valid {message}: {source} (protocol.md §4.3)")]
    Protobuf {
        message: &'static str,
        #[source]
        source: prost::DecodeError,
    },
    #[error(
        "refusing to send an empty message: every message carries an rpc field, an arm or both \
         (protocol.md §4.4 item 3)"
    )]
    EmptyMessage,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Which part of a frame a truncation cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramePart {
    Length,
    Payload,
}

impl std::fmt::Display for FramePart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FramePart::Length => "length-prefix",
            FramePart::Payload => "payload",
        })
    }
}

/// Splits a byte stream into payloads and prefixes payloads with their
/// length. Any chunking of the input yields the same frames.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_len: usize,
    /// Length of the frame whose prefix has been consumed but whose payload
    /// has not fully arrived.
    pending: Option<usize>,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    /// A codec with a payload cap of `max_len` bytes (inclusive).
    pub fn new(max_len: usize) -> Self {
        FrameCodec {
            max_len,
            pending: None,
        }
    }

    /// The payload cap.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Writes the length prefix and lets `write_payload` fill the payload,
    /// checking the cap. Used by the message encoder to encode in place.
    fn encode_with(
        &self,
        len: usize,
        dst: &mut BytesMut,
        write_payload: impl FnOnce(&mut BytesMut),
    ) -> Result<(), CodecError> {
        if len > self.max_len {
            return Err(CodecError::TooLong {
                len: len as u64,
                max: self.max_len,
            });
        }
        dst.reserve(LEN_PREFIX + len);
        dst.put_u32(len as u32);
        write_payload(dst);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        let len = match self.pending {
            Some(len) => len,
            None => {
                let Some(prefix) = src.first_chunk::<LEN_PREFIX>() else {
                    return Ok(None);
                };
                let len = u32::from_be_bytes(*prefix);
                if len as usize > self.max_len {
                    return Err(CodecError::TooLong {
                        len: u64::from(len),
                        max: self.max_len,
                    });
                }
                src.advance(LEN_PREFIX);
                self.pending = Some(len as usize);
                len as usize
            }
        };
        if src.len() < len {
            // One reservation for the whole payload (already checked against
            // the cap), so the buffer is not regrown while it arrives.
            src.reserve(len - src.len());
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        match self.pending {
            Some(expected) => Err(CodecError::Truncated {
                part: FramePart::Payload,
                expected,
                received: src.len(),
            }),
            None if !src.is_empty() => Err(CodecError::Truncated {
                part: FramePart::Length,
                expected: LEN_PREFIX,
                received: src.len(),
            }),
            None => Ok(None),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = CodecError;

    /// Frames an already-encoded payload. This is the framing layer only: an
    /// empty payload is framed as length 0 (captures and test harnesses need
    /// it); [`MessageCodec`] is what refuses to send empty messages.
    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), CodecError> {
        self.encode_with(payload.len(), dst, |dst| dst.put_slice(payload))
    }
}

/// Frames plus protobuf: decodes `In` messages and encodes `Out` messages.
#[derive(Debug)]
pub struct MessageCodec<In, Out> {
    frames: FrameCodec,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for MessageCodec<In, Out> {
    fn default() -> Self {
        MessageCodec::new(MAX_FRAME_LEN)
    }
}

impl<In, Out> MessageCodec<In, Out> {
    pub fn new(max_len: usize) -> Self {
        MessageCodec {
            frames: FrameCodec::new(max_len),
            _types: PhantomData,
        }
    }
}

/// Decodes one payload as `M`, sharing the frame's buffer for `bytes` fields.
pub fn decode_payload<M: codervpn_proto::Envelope>(payload: Bytes) -> Result<M, CodecError> {
    M::decode(payload).map_err(|source| CodecError::Protobuf {
        message: M::FULL_NAME,
        source,
    })
}

impl<In: codervpn_proto::Envelope, Out> Decoder for MessageCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        self.frames.decode(src)?.map(decode_payload).transpose()
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        self.frames.decode_eof(src)?.map(decode_payload).transpose()
    }
}

impl<In, Out: prost::Message> Encoder<&Out> for MessageCodec<In, Out> {
    type Error = CodecError;

    /// Encodes straight into the output buffer: no intermediate payload copy.
    fn encode(&mut self, msg: &Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = msg.encoded_len();
        if len == 0 {
            return Err(CodecError::EmptyMessage);
        }
        self.frames.encode_with(len, dst, |dst| {
            msg.encode_raw(dst);
        })
    }
}

/// One message as a complete frame (length prefix and payload).
pub fn encode_frame<M: prost::Message>(msg: &M, max_len: usize) -> Result<Bytes, CodecError> {
    let mut dst = BytesMut::new();
    MessageCodec::<(), M>::new(max_len).encode(msg, &mut dst)?;
    Ok(dst.freeze())
}
