//! A [`Packet`] of a case to the bytes written on the tun: etherparse
//! builds the IP and transport headers with correct lengths and checksums
//! (so a tunnel that checks them accepts ours), hickory-proto the DNS query.
//! Addresses must already be resolved (no `$name` left, see
//! [`super::pattern::resolve_packet`]).

use std::net::IpAddr;

use etherparse::PacketBuilder;
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

use super::{DnsQuery, Echo, Packet, Tcp, Udp};
use crate::engine::unhex;

/// Hop limit (TTL) of every packet the harness builds.
const HOP_LIMIT: u8 = 64;
/// Filler when a case gives a length but no payload.
const FILLER: &[u8] = b"codervpn";

/// The bytes of `packet`; `Err` says what in the case is wrong.
pub fn build(packet: &Packet) -> Result<Vec<u8>, String> {
    match packet {
        Packet::EchoRequest(echo) => echo_packet(echo, true),
        Packet::EchoReply(echo) => echo_packet(echo, false),
        Packet::Udp(udp) => udp_packet(udp),
        Packet::Dns(query) => dns_packet(query),
        Packet::Tcp(tcp) => tcp_packet(tcp),
        Packet::Raw(hex) => unhex(hex),
    }
}

fn addr(text: &str) -> Result<IpAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address"))
}

/// The IP layer for `src` → `dst`, both of one family.
fn ip(src: &str, dst: &str) -> Result<(PacketBuilderIp, bool), String> {
    match (addr(src)?, addr(dst)?) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            Ok((PacketBuilder::ipv6(s.octets(), d.octets(), HOP_LIMIT), true))
        }
        (IpAddr::V4(s), IpAddr::V4(d)) => Ok((
            PacketBuilder::ipv4(s.octets(), d.octets(), HOP_LIMIT),
            false,
        )),
        _ => Err(format!("{src} and {dst} are of different IP versions")),
    }
}

type PacketBuilderIp = etherparse::PacketBuilderStep<etherparse::IpHeaders>;

/// The payload a case asked for: text or hex, repeated or cut to
/// `payload_len` when that is given.
pub fn payload(
    text: Option<&str>,
    hex: Option<&str>,
    len: Option<usize>,
) -> Result<Vec<u8>, String> {
    let base = match (text, hex) {
        (Some(_), Some(_)) => return Err("give payload or payload_hex, not both".into()),
        (Some(text), None) => text.as_bytes().to_vec(),
        (None, Some(hex)) => unhex(hex)?,
        (None, None) => Vec::new(),
    };
    let Some(len) = len else {
        return Ok(base);
    };
    if len > 65_000 {
        return Err(format!("payload_len {len} is more than an IP packet holds"));
    }
    let seed: &[u8] = if base.is_empty() { FILLER } else { &base };
    Ok(seed.iter().copied().cycle().take(len).collect())
}

fn write(
    step: impl FnOnce(&mut Vec<u8>, &[u8]) -> Result<(), etherparse::err::packet::BuildWriteError>,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(payload.len() + 64);
    step(&mut out, payload).map_err(|e| format!("cannot build the packet: {e}"))?;
    Ok(out)
}

fn echo_packet(echo: &Echo, request: bool) -> Result<Vec<u8>, String> {
    let data = payload(
        echo.payload.as_deref(),
        echo.payload_hex.as_deref(),
        echo.payload_len,
    )?;
    let (ip, v6) = ip(&echo.src, &echo.dst)?;
    match (v6, request) {
        (true, true) => {
            let step = ip.icmpv6_echo_request(echo.id, echo.seq);
            write(|out, p| step.write(out, p), &data)
        }
        (true, false) => {
            let step = ip.icmpv6_echo_reply(echo.id, echo.seq);
            write(|out, p| step.write(out, p), &data)
        }
        (false, true) => {
            let step = ip.icmpv4_echo_request(echo.id, echo.seq);
            write(|out, p| step.write(out, p), &data)
        }
        (false, false) => {
            let step = ip.icmpv4_echo_reply(echo.id, echo.seq);
            write(|out, p| step.write(out, p), &data)
        }
    }
}

fn udp_packet(udp: &Udp) -> Result<Vec<u8>, String> {
    let data = payload(
        udp.payload.as_deref(),
        udp.payload_hex.as_deref(),
        udp.payload_len,
    )?;
    let (ip, _) = ip(&udp.src, &udp.dst)?;
    let step = ip.udp(udp.src_port, udp.dst_port);
    write(|out, p| step.write(out, p), &data)
}

fn dns_packet(query: &DnsQuery) -> Result<Vec<u8>, String> {
    let name =
        Name::from_ascii(&query.name).map_err(|e| format!("bad DNS name {:?}: {e}", query.name))?;
    let qtype: RecordType = query
        .qtype
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("unknown DNS record type {:?}", query.qtype))?;
    let mut msg = Message::new();
    msg.set_id(query.id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    msg.add_query(Query::query(name, qtype));
    let data = msg
        .to_vec()
        .map_err(|e| format!("cannot encode the DNS query: {e}"))?;
    let (ip, _) = ip(&query.src, &query.dst)?;
    let step = ip.udp(query.src_port, query.dst_port);
    write(|out, p| step.write(out, p), &data)
}

fn tcp_packet(tcp: &Tcp) -> Result<Vec<u8>, String> {
    let data = payload(
        tcp.payload.as_deref(),
        tcp.payload_hex.as_deref(),
        tcp.payload_len,
    )?;
    let (ip, _) = ip(&tcp.src, &tcp.dst)?;
    let mut step = ip.tcp(tcp.src_port, tcp.dst_port, tcp.seq, 65_535);
    if tcp.syn {
        step = step.syn();
    }
    if tcp.fin {
        step = step.fin();
    }
    if tcp.rst {
        step = step.rst();
    }
    if tcp.psh {
        step = step.psh();
    }
    if let Some(ack) = tcp.ack_number {
        step = step.ack(ack);
    }
    write(|out, p| step.write(out, p), &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_repeat_or_cut_to_the_length() {
        assert_eq!(payload(Some("ab"), None, Some(5)).unwrap(), b"ababa");
        assert_eq!(payload(None, Some("01 02"), None).unwrap(), [1, 2]);
        assert_eq!(payload(None, None, Some(3)).unwrap(), b"cod");
        assert_eq!(payload(None, None, None).unwrap(), b"");
        assert!(payload(Some("a"), Some("01"), None).is_err());
        assert!(payload(None, Some("0"), None).is_err());
        assert!(payload(None, None, Some(70_000)).is_err());
    }

    #[test]
    fn bad_addresses_and_names_are_errors_of_the_case() {
        let echo = |src: &str, dst: &str| {
            Packet::EchoRequest(Echo {
                src: src.into(),
                dst: dst.into(),
                id: 1,
                seq: 1,
                payload: None,
                payload_hex: None,
                payload_len: None,
            })
        };
        assert!(
            build(&echo("$x", "::1"))
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(
            build(&echo("10.0.0.1", "::1"))
                .unwrap_err()
                .contains("different IP versions")
        );
        assert_eq!(build(&echo("10.0.0.1", "10.0.0.2")).unwrap().len(), 28);
        assert_eq!(build(&echo("::1", "::2")).unwrap().len(), 48);
        let query = Packet::Dns(DnsQuery {
            src: "::1".into(),
            dst: "::2".into(),
            src_port: 1,
            dst_port: 53,
            id: 1,
            name: "a.b".into(),
            qtype: "NOPE".into(),
        });
        assert!(build(&query).unwrap_err().contains("record type"));
    }
}
