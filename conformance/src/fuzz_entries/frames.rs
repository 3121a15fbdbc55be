//! `frame_decoder`: the §4 framing and the protobuf step, fed in arbitrary
//! chunks. Invariants: any chunking yields the same frames and the same
//! error; every accepted frame is within the cap; a refused length prefix
//! is left in the buffer untouched (no partial state); the frames re-encode
//! to exactly the bytes they were read from; whatever decodes as a message
//! of any role survives decode → encode → decode.

use bytes::{Bytes, BytesMut};
use codervpn_codec::MessageCodec;
use codervpn_codec::frame::{CodecError, FrameCodec, LEN_PREFIX, MAX_FRAME_LEN, decode_payload};
use codervpn_proto::{ClientMessage, Envelope, ManagerMessage, ServiceMessage, TunnelMessage};
use tokio_util::codec::{Decoder, Encoder};

use super::{chunks, control};

/// How a stream ended, comparable across chunkings.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    TooLong(u64),
    Truncated(String),
    Other(String),
}

fn end_of(err: &CodecError) -> End {
    match err {
        CodecError::TooLong { len, .. } => End::TooLong(*len),
        CodecError::Truncated { .. } => End::Truncated(err.to_string()),
        other => End::Other(other.to_string()),
    }
}

/// Decodes `stream` fed in `pieces`, returning the frames, how it ended and
/// how many stream bytes the frames used.
fn decode_all(cap: usize, stream: &[u8], pieces: &[std::ops::Range<usize>]) -> (Vec<Bytes>, End) {
    let mut codec = FrameCodec::new(cap);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(&stream[piece.clone()]);
        loop {
            let before = buf.clone();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= cap, "accepted a frame over the cap");
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(err) => {
                    if let CodecError::TooLong { len, max } = &err {
                        assert!(*len > *max as u64);
                        // No partial state: the prefix is still there.
                        assert_eq!(buf, before, "a refused prefix consumed bytes");
                        assert!(buf.len() >= LEN_PREFIX);
                    }
                    return (frames, end_of(&err));
                }
            }
        }
    }
    match codec.decode_eof(&mut buf) {
        Ok(Some(frame)) => {
            // decode() above already drained every complete frame.
            panic!(
                "decode_eof found a frame decode missed ({} bytes)",
                frame.len()
            );
        }
        Ok(None) => {
            assert!(buf.is_empty(), "clean end with bytes left over");
            (frames, End::Clean)
        }
        Err(err) => (frames, end_of(&err)),
    }
}

/// decode → encode → decode is the identity from the first decode on, and
/// encoding is deterministic.
fn round_trip<M: Envelope>(payload: &Bytes) {
    let Ok(first) = decode_payload::<M>(payload.clone()) else {
        return;
    };
    let encoded = first.encode_to_vec();
    let second = decode_payload::<M>(Bytes::from(encoded.clone()));
    assert!(
        matches!(&second, Ok(m) if *m == first),
        "{} round trip",
        M::FULL_NAME
    );
    if let Ok(second) = second {
        assert_eq!(
            second.encode_to_vec(),
            encoded,
            "{} re-encoding",
            M::FULL_NAME
        );
    }
    // The message codec refuses only empty messages, and frames the rest
    // exactly as the frame codec would.
    let mut framed = BytesMut::new();
    match MessageCodec::<M, M>::default().encode(&first, &mut framed) {
        Ok(()) => {
            let mut expected = BytesMut::new();
            let framing = FrameCodec::default().encode(&encoded[..], &mut expected);
            assert!(framing.is_ok());
            assert_eq!(framed, expected);
        }
        Err(err) => assert!(matches!(err, CodecError::EmptyMessage) && encoded.is_empty()),
    }
}

/// The message codec over the same chunks gives, frame for frame, what
/// decoding each payload gives.
fn message_codec<M: Envelope>(stream: &[u8], pieces: &[std::ops::Range<usize>], frames: &[Bytes]) {
    let mut codec = MessageCodec::<M, M>::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    let mut seen = 0;
    for piece in pieces {
        buf.extend_from_slice(&stream[piece.clone()]);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(msg)) => {
                    let expected = frames.get(seen).map(|f| decode_payload::<M>(f.clone()));
                    assert!(matches!(expected, Some(Ok(ref m)) if *m == msg));
                    seen += 1;
                }
                Ok(None) => break,
                Err(CodecError::Protobuf { .. }) => {
                    let expected = frames.get(seen).map(|f| decode_payload::<M>(f.clone()));
                    assert!(matches!(expected, Some(Err(_))));
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

/// Control byte: low 4 bits pick how many following bytes are chunk sizes;
/// bit 4 picks a small cap (the next byte) instead of 16 MiB, so refused
/// lengths are reachable with short inputs.
pub fn frame_decoder(data: &[u8]) {
    let (ctl, rest) = control(data);
    let n = usize::from(ctl & 0x0f).min(rest.len());
    let (sizes, rest) = rest.split_at(n);
    let (cap, stream) = match (ctl & 0x10 != 0, rest.split_first()) {
        (true, Some((&cap, stream))) => (usize::from(cap), stream),
        _ => (MAX_FRAME_LEN, rest),
    };
    let pieces = chunks(stream.len(), sizes);
    let (frames, end) = decode_all(cap, stream, &pieces);
    let whole = chunks(stream.len(), &[]);
    let (frames_whole, end_whole) = decode_all(cap, stream, &whole);
    assert_eq!(frames, frames_whole, "chunking changed the frames");
    assert_eq!(end, end_whole, "chunking changed how the stream ended");

    // The frames are exactly the start of the stream.
    let mut again = BytesMut::new();
    let mut codec = FrameCodec::new(cap);
    for frame in &frames {
        assert!(codec.encode(&frame[..], &mut again).is_ok());
    }
    assert!(
        stream.starts_with(&again),
        "re-encoded frames differ from the input"
    );
    if end == End::Clean {
        assert_eq!(again.len(), stream.len());
    }

    for frame in &frames {
        round_trip::<ManagerMessage>(frame);
        round_trip::<TunnelMessage>(frame);
        round_trip::<ClientMessage>(frame);
        round_trip::<ServiceMessage>(frame);
    }
    if cap == MAX_FRAME_LEN {
        message_codec::<ManagerMessage>(stream, &pieces, &frames);
        message_codec::<TunnelMessage>(stream, &pieces, &frames);
        message_codec::<ClientMessage>(stream, &pieces, &frames);
        message_codec::<ServiceMessage>(stream, &pieces, &frames);
    }
}
