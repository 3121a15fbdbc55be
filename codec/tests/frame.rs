//! Framing edge cases (protocol.md §4, §12.5) and the byte-exact example
//! frames of §12.1.

#![allow(clippy::unwrap_used)]

use bytes::{BufMut, BytesMut};
use codervpn_codec::MessageCodec;
use codervpn_codec::frame::{CodecError, FrameCodec, FramePart, MAX_FRAME_LEN, encode_frame};
use codervpn_proto::{ClientMessage, Envelope, ManagerMessage, ServiceMessage, TunnelMessage};
use prost::Message;
use tokio_util::codec::{Decoder, Encoder};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The frames of protocol.md §12.1, extracted into a fixture.
fn spec_frames() -> Vec<(String, Vec<u8>)> {
    let text = include_str!("../../tests/fixtures/spec-frames.json");
    let map: std::collections::BTreeMap<String, String> = serde_json_lite(text);
    map.into_iter().map(|(k, v)| (k, hex(&v))).collect()
}

/// The fixture is a flat `{"E1": "hex", ...}` object; parsed by hand to keep
/// this crate free of a JSON dependency.
fn serde_json_lite(text: &str) -> std::collections::BTreeMap<String, String> {
    text.split('"')
        .collect::<Vec<_>>()
        .chunks(4)
        .filter(|c| c.len() == 4)
        .map(|c| (c[1].to_owned(), c[3].to_owned()))
        .collect()
}

/// Decodes `frame` as `M` and checks that re-encoding gives the same bytes.
fn exact<M: Envelope>(name: &str, frame: &[u8]) -> M {
    let mut buf = BytesMut::from(frame);
    let msg: M = MessageCodec::<M, M>::default()
        .decode(&mut buf)
        .unwrap()
        .unwrap_or_else(|| panic!("{name}: incomplete"));
    assert!(buf.is_empty(), "{name}: trailing bytes");
    let again = encode_frame(&msg, MAX_FRAME_LEN).unwrap();
    assert_eq!(&again[..], frame, "{name}: re-encoding differs");
    msg
}

#[test]
fn spec_example_frames_are_byte_exact() {
    let frames = spec_frames();
    assert_eq!(frames.len(), 22, "E1-E22 without E? gaps: {frames:?}");
    for (name, frame) in frames {
        match name.as_str() {
            "E1" | "E2" | "E4" | "E8" => {
                exact::<ManagerMessage>(&name, &frame);
            }
            "E17" => {
                exact::<ClientMessage>(&name, &frame);
            }
            "E18" | "E19" | "E20" | "E21" | "E22" => {
                exact::<ServiceMessage>(&name, &frame);
            }
            _ => {
                exact::<TunnelMessage>(&name, &frame);
            }
        }
    }
}

#[test]
fn e1_is_stop_with_id_1() {
    use codervpn_proto::{Rpc, StopRequest, manager_message::Msg};
    let e1 = ManagerMessage {
        rpc: Some(Rpc {
            msg_id: 1,
            response_to: 0,
        }),
        msg: Some(Msg::Stop(StopRequest {})),
    };
    assert_eq!(
        &encode_frame(&e1, MAX_FRAME_LEN).unwrap()[..],
        [0, 0, 0, 6, 0x0a, 0x02, 0x08, 0x01, 0x2a, 0x00]
    );
}

/// F5: a frame of exactly 16 MiB (E1 plus unknown field 100) is accepted.
#[test]
fn f5_exactly_max_len_is_accepted() {
    let mut frame = BytesMut::with_capacity(MAX_FRAME_LEN + 4);
    frame.put_slice(&hex("01000000"));
    frame.put_slice(&hex("0a0208012a00a206f4ffff07"));
    frame.put_bytes(0, 16_777_204);
    assert_eq!(frame.len(), MAX_FRAME_LEN + 4);
    let msg = MessageCodec::<ManagerMessage, ManagerMessage>::default()
        .decode(&mut frame)
        .unwrap()
        .unwrap();
    assert_eq!(msg.arm(), Some("stop"));
    assert_eq!(msg.rpc.unwrap().msg_id, 1);
}

/// F6/F7: one byte over, and 4 GiB, are refused from the prefix alone,
/// before any allocation.
#[test]
fn f6_f7_over_max_len_rejected_without_allocating() {
    for (prefix, len) in [("01000001", 0x0100_0001u64), ("ffffffff", 0xffff_ffff)] {
        let mut buf = BytesMut::with_capacity(8);
        buf.put_slice(&hex(prefix));
        let capacity = buf.capacity();
        let err = FrameCodec::default().decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::TooLong { len: l, max } if l == len && max == MAX_FRAME_LEN),
            "{err}"
        );
        assert_eq!(
            buf.capacity(),
            capacity,
            "no reservation for a refused frame"
        );
    }
}

#[test]
fn configurable_cap() {
    let mut codec = FrameCodec::new(10);
    let mut buf = BytesMut::from(&hex("0000000a00000000000000000000")[..]);
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 10);
    let mut buf = BytesMut::from(&hex("0000000b")[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(CodecError::TooLong { len: 11, max: 10 })
    ));
    let mut out = BytesMut::new();
    assert!(matches!(
        FrameCodec::new(10).encode(&[1u8; 11][..], &mut out),
        Err(CodecError::TooLong { len: 11, max: 10 })
    ));
}

/// F2: a zero-length frame decodes as an empty message; sending one is
/// refused by the message encoder (§4.4 item 3).
#[test]
fn zero_length_frames() {
    let mut buf = BytesMut::from(&hex("00000000000000060a0208012a00")[..]);
    let mut codec = MessageCodec::<ManagerMessage, ManagerMessage>::default();
    assert_eq!(
        codec.decode(&mut buf).unwrap().unwrap(),
        ManagerMessage::default()
    );
    assert_eq!(codec.decode(&mut buf).unwrap().unwrap().arm(), Some("stop"));
    let mut out = BytesMut::new();
    assert!(matches!(
        codec.encode(&ManagerMessage::default(), &mut out),
        Err(CodecError::EmptyMessage)
    ));
    assert!(out.is_empty());
}

/// F3/F4: payloads that are not valid protobuf for the type.
#[test]
fn f3_f4_undecodable_payloads() {
    for frame in [
        "0000000a00000000000000000000",
        "0000000100",
        "000000040a050801",
    ] {
        let mut buf = BytesMut::from(&hex(frame)[..]);
        let err = MessageCodec::<ManagerMessage, ManagerMessage>::default()
            .decode(&mut buf)
            .unwrap_err();
        assert!(
            matches!(
                err,
                CodecError::Protobuf {
                    message: "vpn.ManagerMessage",
                    ..
                }
            ),
            "{frame}: {err}"
        );
    }
}

/// F8 and every other cut: a stream that ends anywhere inside a frame is a
/// truncation error naming the part, never a frame.
#[test]
fn truncation_at_every_byte_position() {
    let frame = hex("000000080a02100132020801");
    for cut in 0..frame.len() {
        let mut buf = BytesMut::from(&frame[..cut]);
        let mut codec = FrameCodec::default();
        assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
        let result = codec.decode_eof(&mut buf);
        match cut {
            0 => assert!(matches!(result, Ok(None))),
            1..=3 => assert!(
                matches!(result, Err(CodecError::Truncated { part: FramePart::Length, expected: 4, received }) if received == cut),
                "cut at {cut}: {result:?}"
            ),
            _ => assert!(
                matches!(result, Err(CodecError::Truncated { part: FramePart::Payload, expected: 8, received }) if received == cut - 4),
                "cut at {cut}: {result:?}"
            ),
        }
    }
    let mut buf = BytesMut::from(&frame[..]);
    assert_eq!(
        FrameCodec::default()
            .decode_eof(&mut buf)
            .unwrap()
            .unwrap()
            .len(),
        8
    );
}

/// Garbage after a good handshake: either refused by the cap, or decoded
/// into a frame whose payload is then refused, never a panic.
#[test]
fn garbage_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let mut bytes = Vec::new();
        for _ in 0..(seed % 64) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        let mut codec = MessageCodec::<TunnelMessage, TunnelMessage>::default();
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
        let _ = codec.decode_eof(&mut buf);
    }
}

/// F10: two frames in one read come out in order.
#[test]
fn f10_two_frames_in_one_read() {
    let mut buf = BytesMut::from(&hex("000000060a020802120000000006" /* E2 + prefix */)[..]);
    buf.put_slice(&hex("0a0208032a00"));
    let mut codec = MessageCodec::<ManagerMessage, ManagerMessage>::default();
    let first = codec.decode(&mut buf).unwrap().unwrap();
    let second = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        (first.arm(), first.rpc.unwrap().msg_id),
        (Some("get_peer_update"), 2)
    );
    assert_eq!(
        (second.arm(), second.rpc.unwrap().msg_id),
        (Some("stop"), 3)
    );
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

/// §4.5 and R1/R2: unknown fields, nested (StartRequest field 8, as one
/// Windows release sent) or top-level, are accepted and ignored.
#[test]
fn unknown_fields_are_ignored() {
    // ManagerMessage{rpc{msg_id:1} start{coder_url:"u" 8:true}}
    let start = ManagerMessage::decode(&hex("0a020801220512017540" /* + */)[..]);
    assert!(start.is_err(), "truncated nested field must not decode");
    let start = ManagerMessage::decode(&hex("0a02080122051201754001")[..]).unwrap();
    assert_eq!(start.arm(), Some("start"));
    // R1: id 11 with unknown field 9; R2: id 5 with unknown field 99.
    for (payload, id) in [("0a02080b4a00", 11), ("0a0208059a0600", 5)] {
        let msg = ManagerMessage::decode(&hex(payload)[..]).unwrap();
        assert_eq!((msg.arm(), msg.rpc.unwrap().msg_id), (None, id));
    }
}
