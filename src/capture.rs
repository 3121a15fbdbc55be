//! `codervpn decode` and `codervpn encode`: one direction of a captured
//! session (the handshake line, then frames) to JSON lines and back.
//!
//! The JSON lines are the proto3 canonical mapping. A frame whose bytes are
//! not what that mapping re-encodes to (unknown fields, another field order,
//! unpacked repeated scalars: all legal, §1.5 item 2) also gets an `"@wire"`
//! member with its exact payload in base64, so `decode | encode` gives back
//! the input byte for byte. `encode` checks that `@wire` still matches the
//! rest of the line, so an edited message is never silently replaced.

use std::io::{BufRead, Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::BytesMut;
use codervpn_codec::frame::FrameCodec;
use codervpn_codec::handshake::{Header, HeaderError, HeaderReader, Progress};
use codervpn_codec::{CodecError, Role};
use codervpn_proto::json::{JsonError, json_to_payload, payload_to_json};
use codervpn_proto::{ClientMessage, Envelope, ManagerMessage, ServiceMessage, TunnelMessage};
use tokio_util::codec::{Decoder, Encoder};

/// The member that carries a frame's exact bytes when they are not canonical.
pub const WIRE_KEY: &str = "@wire";

const CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("handshake line at byte offset 0: {category}: {0} (protocol.md §3)", category = .0.category())]
    Header(#[source] HeaderError),
    #[error("frame {index} at byte offset {offset}: {source}")]
    Frame {
        index: u64,
        offset: u64,
        #[source]
        source: CodecError,
    },
    #[error("frame {index} at byte offset {offset}: {source} (protocol.md §4.3)")]
    Payload {
        index: u64,
        offset: u64,
        #[source]
        source: JsonError,
    },
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("reading input: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing output: {0}")]
    Write(#[source] std::io::Error),
}

fn write_line(out: &mut impl Write, bytes: &[u8]) -> Result<(), CaptureError> {
    out.write_all(bytes)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(CaptureError::Write)
}

/// Decodes a capture of what `from` sent, printing as it goes, so that
/// everything before a bad byte is printed before the error is returned.
pub fn decode(from: Role, input: impl Read, out: &mut impl Write) -> Result<(), CaptureError> {
    match from {
        Role::Manager => decode_as::<ManagerMessage>(from, input, out),
        Role::Tunnel => decode_as::<TunnelMessage>(from, input, out),
        Role::Client => decode_as::<ClientMessage>(from, input, out),
        Role::Service => decode_as::<ServiceMessage>(from, input, out),
    }
}

fn decode_as<M: Envelope>(
    from: Role,
    mut input: impl Read,
    out: &mut impl Write,
) -> Result<(), CaptureError> {
    let mut chunk = vec![0u8; CHUNK];
    let mut buf = BytesMut::new();

    let mut header = HeaderReader::default();
    loop {
        let n = input.read(&mut chunk).map_err(CaptureError::Read)?;
        if n == 0 {
            return Err(CaptureError::Header(HeaderError::Eof {
                read: header.line().len(),
            }));
        }
        if let Progress::Complete { consumed } =
            header.feed(&chunk[..n]).map_err(CaptureError::Header)?
        {
            buf.extend_from_slice(&chunk[consumed..n]);
            break;
        }
    }
    Header::parse(header.line(), from).map_err(CaptureError::Header)?;
    write_line(out, header.line())?;

    let mut codec = FrameCodec::default();
    let mut offset = header.line().len() as u64 + 1;
    let mut index = 0;
    let mut eof = false;
    loop {
        let next = if eof {
            codec.decode_eof(&mut buf)
        } else {
            codec.decode(&mut buf)
        };
        let payload = match next {
            Ok(Some(payload)) => payload,
            Ok(None) if eof => return Ok(()),
            Ok(None) => {
                let n = input.read(&mut chunk).map_err(CaptureError::Read)?;
                eof = n == 0;
                buf.extend_from_slice(&chunk[..n]);
                continue;
            }
            Err(source) => {
                return Err(CaptureError::Frame {
                    index,
                    offset,
                    source,
                });
            }
        };
        let mut json = payload_to_json::<M>(&payload).map_err(|source| CaptureError::Payload {
            index,
            offset,
            source,
        })?;
        let canonical = json_to_payload::<M>(&json).ok();
        if canonical.as_deref() != Some(&payload[..])
            && let Some(object) = json.as_object_mut()
        {
            object.insert(WIRE_KEY.into(), BASE64.encode(&payload).into());
        }
        let line = serde_json::to_vec(&json).map_err(|err| CaptureError::Write(err.into()))?;
        write_line(out, &line)?;
        offset += 4 + payload.len() as u64;
        index += 1;
    }
}

/// Encodes a header line and JSON lines of `from`'s messages to wire bytes.
pub fn encode(from: Role, input: impl BufRead, out: &mut impl Write) -> Result<(), CaptureError> {
    match from {
        Role::Manager => encode_as::<ManagerMessage>(from, input, out),
        Role::Tunnel => encode_as::<TunnelMessage>(from, input, out),
        Role::Client => encode_as::<ClientMessage>(from, input, out),
        Role::Service => encode_as::<ServiceMessage>(from, input, out),
    }
}

fn encode_as<M: Envelope>(
    from: Role,
    mut input: impl BufRead,
    out: &mut impl Write,
) -> Result<(), CaptureError> {
    let mut codec = FrameCodec::default();
    let mut frame = BytesMut::new();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .map_err(CaptureError::Read)?
            == 0
        {
            return if number == 0 {
                Err(CaptureError::Line {
                    line: 1,
                    message: "empty input: the first line must be the handshake line".into(),
                })
            } else {
                Ok(())
            };
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let error = |message: String| CaptureError::Line {
            line: number,
            message,
        };
        if number == 1 {
            Header::parse(text, from).map_err(|err| error(format!("handshake line: {err}")))?;
            write_line(out, text)?;
            continue;
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let json: serde_json::Value =
            serde_json::from_slice(text).map_err(|err| error(format!("not JSON: {err}")))?;
        let payload = line_payload::<M>(json).map_err(error)?;
        frame.clear();
        codec
            .encode(&payload[..], &mut frame)
            .map_err(|err| error(err.to_string()))?;
        out.write_all(&frame).map_err(CaptureError::Write)?;
    }
}

/// The payload of one JSON line: its `@wire` bytes when present (after
/// checking they still say what the line says), else the canonical encoding.
fn line_payload<M: Envelope>(mut json: serde_json::Value) -> Result<Vec<u8>, String> {
    let wire = json.as_object_mut().and_then(|o| o.remove(WIRE_KEY));
    let Some(wire) = wire else {
        return json_to_payload::<M>(&json).map_err(|err| err.to_string());
    };
    let bytes = wire
        .as_str()
        .and_then(|text| BASE64.decode(text).ok())
        .ok_or_else(|| format!("{WIRE_KEY} must be a base64 string"))?;
    let decoded = payload_to_json::<M>(&bytes).map_err(|err| format!("{WIRE_KEY}: {err}"))?;
    if decoded != json {
        return Err(format!(
            "{WIRE_KEY} decodes to {decoded}, which differs from the message on this line; \
             remove {WIRE_KEY} after editing a message"
        ));
    }
    Ok(bytes)
}
