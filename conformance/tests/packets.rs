//! The engine's packet events against a small scripted tunnel: it does the
//! handshake, asks for network settings with its address (§6.10), and on
//! its tun answers echo requests (a bad checksum for id 666), echoes UDP
//! port 7 and answers UDP port 8 from a spoofed source, in raw or utun
//! framing. No control plane, no WireGuard: this checks the harness's
//! plumbing, bindings, recordings and failure messages, not a tunnel.

#![allow(clippy::unwrap_used)]

use std::net::Ipv6Addr;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use bytes::BytesMut;
use codervpn_codec::{FrameCodec, Manager, Side, Tunnel};
use codervpn_conformance::engine::{self, Verdict};
use codervpn_conformance::transcript::{Direction, RecordedItem, Transcript};
use codervpn_conformance::tun::{Framing, TunPort};
use codervpn_proto::json::json_to_payload;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Encoder;

const ADDRESS: &str = "fd60:627a:a42b:1::1";

fn frame(msg: Value) -> Vec<u8> {
    let payload = json_to_payload::<<Tunnel as Side>::Out>(&msg).unwrap();
    let mut out = BytesMut::new();
    FrameCodec::default()
        .encode(&payload[..], &mut out)
        .unwrap();
    out.to_vec()
}

/// The scripted tunnel's answer to one packet from the harness, if any.
fn answer(packet: &[u8]) -> Option<Vec<u8>> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let ip = sliced.net.as_ref()?.ipv6_ref()?.header();
    let (src, dst) = (ip.source(), ip.destination());
    let mut out = Vec::new();
    match sliced.transport? {
        TransportSlice::Icmpv6(icmp) if icmp.type_u8() == 128 => {
            let rest = icmp.bytes5to8();
            let id = u16::from_be_bytes([rest[0], rest[1]]);
            let seq = u16::from_be_bytes([rest[2], rest[3]]);
            PacketBuilder::ipv6(dst, src, 64)
                .icmpv6_echo_reply(id, seq)
                .write(&mut out, icmp.payload())
                .unwrap();
            if id == 666 {
                out[42] ^= 0xff; // the checksum
            }
        }
        TransportSlice::Udp(udp) => {
            let from = match udp.destination_port() {
                7 => dst,
                8 => "fd60:627a:a42b::bad".parse::<Ipv6Addr>().unwrap().octets(),
                _ => return None,
            };
            PacketBuilder::ipv6(from, src, 64)
                .udp(udp.destination_port(), udp.source_port())
                .write(&mut out, udp.payload())
                .unwrap();
        }
        _ => return None,
    }
    Some(out)
}

/// Runs `events` (after a handshake) against the scripted tunnel.
async fn run(events: Value, framing: Framing) -> engine::Outcome {
    let case = Transcript::from_json(
        &json!({"id": "T-1", "title": "t", "spec": "protocol.md §9.5", "level": "must",
                "tier": "dataplane", "timeout_ms": 10000, "events": events})
        .to_string(),
    )
    .unwrap();
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (mut their_read, mut their_write) = tokio::io::split(theirs);
    let (tun_ours, tun_theirs) = UnixDatagram::pair().unwrap();
    let tunnel = tokio::spawn(async move {
        let mut header = Vec::new();
        while !header.ends_with(b"\n") {
            let mut byte = [0u8];
            if their_read.read_exact(&mut byte).await.is_err() {
                return;
            }
            header.push(byte[0]);
        }
        their_write
            .write_all(b"codervpn tunnel 1.2\n")
            .await
            .unwrap();
        let request = json!({"rpc": {"msgId": "1"}, "networkSettings": {"mtu": 1280,
            "ipv6Settings": {"addrs": [ADDRESS], "prefixLengths": [128]}}});
        their_write.write_all(&frame(request)).await.unwrap();
        // Keep the stream open; drain what the harness sends.
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while matches!(their_read.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        tun_theirs.set_nonblocking(true).unwrap();
        let tun = tokio::net::UnixDatagram::from_std(tun_theirs).unwrap();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = tun.recv(&mut buf).await {
            let Ok(packet) = framing.unframe(&buf[..n]) else {
                continue;
            };
            if let Some(reply) = answer(packet) {
                let mut framed = framing.frame(&reply);
                // Echo id 30: an IPv6 packet behind the IPv4 utun family.
                if framing == Framing::Utun && reply[40] == 129 && reply[44..46] == [0, 30] {
                    framed[3] = 2;
                }
                let _ = tun.send(&framed).await;
            }
        }
        drop(their_write);
    });
    let port = TunPort::new(tun_ours, framing).unwrap();
    let (reader, writer) = tokio::io::split(ours);
    let stream: codervpn_conformance::target::Stream = (Box::new(reader), Box::new(writer));
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        engine::run::<Manager>(&case, stream, None, "", Some(port)),
    )
    .await
    .unwrap();
    tunnel.abort();
    outcome
}

fn failure(outcome: &engine::Outcome) -> &str {
    match &outcome.verdict {
        Verdict::Fail(why) => why,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn packets(outcome: &engine::Outcome, dir: Direction) -> Vec<&Value> {
    outcome
        .recorded
        .iter()
        .filter(|r| r.dir == dir)
        .filter_map(|r| match &r.what {
            RecordedItem::Packet(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn echo_and_udp_round_trip_with_bindings_in_both_framings() {
    for framing in [Framing::Raw, Framing::Utun] {
        let outcome = run(
            json!([
                {"handshake": {}},
                {"send_packet": {"echo_request": {"src": "$tun_address", "dst": "fd60:627a:a42b:101::", "id": 5, "seq": 1, "payload": "ping"}}},
                {"expect_packet": {"packet": {"echo_reply": {"src": "FD60:627A:A42B:101:0::", "dst": "$tun_address", "id": 5, "seq": "$seq", "payload": "ping"}}}},
                {"send_packet": {"udp": {"src": "$tun_address", "dst": "$tailscale:tun_address", "src_port": 4000, "dst_port": 7, "payload": "hi"}}},
                {"expect_packet": {"packet": {"ip": {"version": 6, "len": 50}, "udp": {"src": "fd7a:115c:a1e0:1::1", "src_port": 7, "dst_port": 4000, "payload": "hi", "payload_len": 2}}}},
                {"send_packet": {"udp": {"src": "$tun_address", "dst": "fd60:627a:a42b:101::", "src_port": 4008, "dst_port": 8, "payload": "spoof"}}},
                {"expect_no_packet": {"packet": {"udp": {"dst_port": 4009}}, "for_ms": 300}},
            ]),
            framing,
        )
        .await;
        assert_eq!(
            outcome.verdict,
            Verdict::Pass,
            "{framing:?}: {:?}",
            outcome.recorded
        );
        let sent = packets(&outcome, Direction::Sent);
        let received = packets(&outcome, Direction::Received);
        assert_eq!(sent.len(), 3);
        assert_eq!(received.len(), 3, "{received:?}");
        assert_eq!(sent[0]["echo_request"]["src"], ADDRESS);
        assert_eq!(received[0]["echo_reply"]["seq"], 1);
        assert!(received[0]["echo_reply"].get("payload_hex").is_none());
        assert_eq!(received[2]["udp"]["src"], "fd60:627a:a42b::bad");
    }
}

#[tokio::test]
async fn failures_name_the_rule_the_wait_and_what_came_instead() {
    // Only the spoofed reply comes: the failure lists it.
    let outcome = run(
        json!([
            {"handshake": {}},
            {"send_packet": {"udp": {"src": "$tun_address", "dst": "fd60:627a:a42b:101::", "src_port": 4008, "dst_port": 8, "payload": "x"}}},
            {"expect_packet": {"packet": {"udp": {"src": "fd60:627a:a42b:101::", "dst_port": 4008}}, "within_ms": 500}},
        ]),
        Framing::Raw,
    )
    .await;
    let why = failure(&outcome);
    assert!(
        why.starts_with("step 3 (expect_packet): protocol.md §9.5: expected a UDP datagram from fd60:627a:a42b:101:: matching"),
        "{why}"
    );
    assert!(
        why.contains("within 500 ms; got 1 other packet: UDP [fd60:627a:a42b::bad]:8 -> [fd60:627a:a42b:1::1]:4008, 1 bytes"),
        "{why}"
    );

    // A packet that must not come, does.
    let outcome = run(
        json!([
            {"handshake": {}},
            {"send_packet": {"udp": {"src": "$tun_address", "dst": "fd60:627a:a42b:101::", "src_port": 4008, "dst_port": 8, "payload": "x"}}},
            {"expect_no_packet": {"packet": {"udp": {"dst_port": 4008}}, "for_ms": 2000}},
        ]),
        Framing::Raw,
    )
    .await;
    let why = failure(&outcome);
    assert!(
        why.contains("expected no packet matching {\"udp\":{\"dst_port\":4008}} for 2000 ms, got UDP [fd60:627a:a42b::bad]:8"),
        "{why}"
    );

    // A bad checksum fails whatever was expected.
    let outcome = run(
        json!([
            {"handshake": {}},
            {"send_packet": {"echo_request": {"src": "$tun_address", "dst": "fd60:627a:a42b:101::", "id": 666}}},
            {"expect_packet": {"packet": {"echo_reply": {"id": 666}}}},
        ]),
        Framing::Raw,
    )
    .await;
    let why = failure(&outcome);
    assert!(
        why.contains("malformed packet (bad ICMPv6 checksum"),
        "{why}"
    );

    // A name nobody bound is an error of the case.
    let outcome = run(
        json!([
            {"handshake": {}},
            {"send_packet": {"echo_request": {"src": "$tun_address", "dst": "$nobody"}}},
        ]),
        Framing::Raw,
    )
    .await;
    assert_eq!(
        failure(&outcome),
        "step 2 (send_packet): bad packet in the case: $nobody is not bound"
    );

    // Mismatched framing is reported as such.
    let outcome = run(
        json!([
            {"handshake": {}},
            {"send_packet": {"echo_request": {"src": "$tun_address", "dst": "fd60:627a:a42b:101::", "id": 30}}},
            {"expect_packet": {"packet": {"echo_reply": {"id": 30}}}},
        ]),
        Framing::Utun,
    )
    .await;
    let why = failure(&outcome);
    assert!(
        why.contains("malformed packet (utun family 2 on an IPv6 packet"),
        "{why}"
    );
}
