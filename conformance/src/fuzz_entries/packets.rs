//! `packet` and `dns`: what the dataplane reads from a tun or a peer.
//! The reference tunnel's packet helpers, its DNS responder, the
//! conformance packet describer and the mock agent's responder. Invariants:
//! the parsers agree on the addresses of one packet; built replies are
//! IPv6 packets addressed back to the sender and never exceed the minimum
//! MTU where that is promised; a DNS answer is a response to the same id.

use std::net::Ipv6Addr;

use codervpn_mock_coder::agents::responder::{SPOOFED_SOURCE, fuzz_respond};
use codervpn_reference_tunnel::dataplane::dns::{HostTable, answer};
use codervpn_reference_tunnel::dataplane::packet::{
    IPV6_HEADER_LEN, MIN_MTU, build_packet_too_big, build_udp, echo_reply, ipv6_addresses, udp,
};
use hickory_proto::op::{Message, MessageType};

use crate::packet::parse::{describe, for_record, summary};

use super::control;

const AGENT: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0x708, 0x90a, 0xb0c, 0xd0e, 0xf10);
const TAILSCALE: Ipv6Addr =
    Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0x708, 0x90a, 0xb0c, 0xd0e, 0xf10);
const TUNNEL: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 1, 2, 3, 4, 5);
const DNS_SERVER: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0, 0, 0, 0, 0x53);

/// Control byte: the MTU offered to Packet Too Big (scaled). The rest is
/// one IPv6 (or not) packet.
pub fn packet(data: &[u8]) {
    let (ctl, bytes) = control(data);
    let addresses = ipv6_addresses(bytes);
    if addresses.is_some() {
        assert!(bytes.len() >= IPV6_HEADER_LEN && bytes[0] >> 4 == 6);
    }
    if let Some(datagram) = udp(bytes) {
        assert_eq!(Some((datagram.src, datagram.dst)), addresses);
    }
    if let Some(reply) = echo_reply(bytes) {
        assert_eq!(Some(reply.src), addresses.map(|(src, _)| src));
    }
    let mtu = u32::from(ctl) * 8;
    match build_packet_too_big(bytes, mtu) {
        Some(ptb) => {
            let (src, dst) = addresses.unwrap_or((Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED));
            assert!(addresses.is_some());
            assert!(ptb.len() <= MIN_MTU);
            assert_eq!(ipv6_addresses(&ptb), Some((dst, src)));
            described(&ptb);
        }
        None => assert!(addresses.is_none()),
    }
    described(bytes);

    // The mock agent, addressed by the packet itself so that its checks
    // beyond the destination are reachable.
    let agent = addresses.map_or(AGENT, |(_, dst)| dst);
    if let Some(reply) = fuzz_respond(agent, TAILSCALE, bytes) {
        let (src, dst) = addresses.unwrap_or((Ipv6Addr::UNSPECIFIED, Ipv6Addr::UNSPECIFIED));
        let Some((from, to)) = ipv6_addresses(&reply) else {
            panic!("the agent replied with a non-IPv6 packet");
        };
        assert_eq!(to, src, "the agent replies to the sender");
        assert!(from == dst || from == SPOOFED_SOURCE, "reply from {from}");
        described(&reply);
    }
}

/// The conformance describer never fails, always records the raw bytes,
/// and summarises whatever it described.
fn described(bytes: &[u8]) {
    let description = describe(bytes);
    assert!(description.get("raw").is_some());
    let _ = summary(&description);
    let _ = for_record(&description);
}

/// The whole input is one query datagram, answered by the tunnel's
/// resolver and described, inside its UDP packet, by the harness.
pub fn dns(data: &[u8]) {
    let table = HostTable::new([
        ("wrk.coder.".to_string(), AGENT),
        ("agnt.wrk.me.coder.".to_string(), AGENT),
        ("main.dev.me.coder.".to_string(), TAILSCALE),
    ]);
    if let Ok(response) = answer(&table, data) {
        let parsed = Message::from_vec(&response);
        assert!(parsed.is_ok(), "the resolver wrote an unparsable answer");
        if let Ok(parsed) = parsed {
            assert_eq!(parsed.message_type(), MessageType::Response);
            assert_eq!(
                Some(parsed.id()),
                data.first_chunk::<2>().map(|id| u16::from_be_bytes(*id))
            );
            for record in parsed.answers() {
                assert!(table.lookup(&record.name().to_ascii()).is_some());
            }
        }
        let reply = build_udp(DNS_SERVER, TUNNEL, 53, 5353, &response);
        if !reply.is_empty() {
            described(&reply);
        }
    }
    let query = build_udp(TUNNEL, DNS_SERVER, 5353, 53, data);
    if !query.is_empty() {
        let datagram = udp(&query);
        assert!(matches!(datagram, Some(ref d) if d.payload == data && d.dst_port == 53));
        described(&query);
    }
}
