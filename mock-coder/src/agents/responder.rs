//! What an embedded agent does with one decrypted inner packet: the small
//! set of services a tunnel's dataplane test needs, answered without a
//! kernel stack so that the mock runs unprivileged.
//!
//! Sans-IO: [`respond`] takes the packet and returns a [`Verdict`]; the
//! WireGuard side sends replies and the TCP stack takes TCP.
//!
//! * ICMPv6 echo request to either agent address (protocol.md §9.3): echo
//!   reply from that address (pings target the Tailscale one, §6.9).
//! * UDP 7: echo. UDP 8: echo from [`SPOOFED_SOURCE`], which is not the
//!   agent's address, so a test can check that the tunnel drops inner
//!   packets whose source is not the sending peer's. UDP 9: discard.
//! * TCP: handed to the userspace stack (echo on port 7).
//!
//! Everything else is dropped and counted with its [`DropReason`].

use std::net::Ipv6Addr;

use etherparse::{
    Icmpv6Slice, Icmpv6Type, IpNumber, Ipv6Slice, PacketBuilder, TcpHeaderSlice, UdpSlice,
};

use super::stats::DropReason;

/// Source of the replies of the spoofed-echo port: inside the Coder prefix
/// but nobody's agent address.
pub const SPOOFED_SOURCE: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0, 0, 0, 0, 0xbad);

/// UDP echo port.
pub const ECHO_PORT: u16 = 7;
/// UDP echo from [`SPOOFED_SOURCE`].
pub const SPOOFED_ECHO_PORT: u16 = 8;
/// UDP discard port.
pub const DISCARD_PORT: u16 = 9;
/// TCP echo port.
pub const TCP_ECHO_PORT: u16 = 7;

/// Hop limit of the replies the responder builds.
const HOP_LIMIT: u8 = 64;

/// An agent's two addresses (§9.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Addresses {
    pub(crate) coder: Ipv6Addr,
    pub(crate) tailscale: Ipv6Addr,
}

impl Addresses {
    pub(crate) fn contains(&self, address: Ipv6Addr) -> bool {
        address == self.coder || address == self.tailscale
    }
}

/// What to do with one inner packet.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send this packet back to the tunnel it came from.
    Reply(Vec<u8>),
    /// Give it to the TCP stack; `unknown_port` when it is not for the echo
    /// port (the stack then answers with a RST).
    Tcp {
        unknown_port: bool,
    },
    /// A datagram for the discard port, with its payload length.
    Discarded(usize),
    Drop(DropReason),
}

/// The packet's IPv6 source, if it is IPv6 with a full fixed header.
pub(crate) fn source(packet: &[u8]) -> Option<Ipv6Addr> {
    let header: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
    (packet.first()? >> 4 == 6).then(|| Ipv6Addr::from(header))
}

/// The packet's IPv6 destination, if it is IPv6 with a full fixed header.
pub(crate) fn destination(packet: &[u8]) -> Option<Ipv6Addr> {
    let header: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
    (packet.first()? >> 4 == 6).then(|| Ipv6Addr::from(header))
}

/// Decides what to do with `packet`, addressed to an agent at `addresses`.
pub(crate) fn respond(addresses: &Addresses, packet: &[u8]) -> Verdict {
    if packet.first().map(|b| b >> 4) != Some(6) {
        return Verdict::Drop(DropReason::NotIpv6);
    }
    let Ok(ip) = Ipv6Slice::from_slice(packet) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let header = ip.header();
    let (src, dst) = (header.source_addr(), header.destination_addr());
    if !addresses.contains(dst) {
        return Verdict::Drop(DropReason::BadDestination);
    }
    let payload = ip.payload();
    if payload.fragmented {
        return Verdict::Drop(DropReason::Malformed);
    }
    match payload.ip_number {
        IpNumber::IPV6_ICMP => icmp(src, dst, payload.payload),
        IpNumber::UDP => udp(src, dst, payload.payload),
        IpNumber::TCP => match TcpHeaderSlice::from_slice(payload.payload) {
            Ok(tcp) => Verdict::Tcp {
                unknown_port: tcp.destination_port() != TCP_ECHO_PORT,
            },
            Err(_) => Verdict::Drop(DropReason::Malformed),
        },
        _ => Verdict::Drop(DropReason::UnknownProtocol),
    }
}

/// [`respond`] for an agent at `coder` and `tailscale`, reduced to the
/// reply it would send, if any. Public only so that the fuzz targets
/// (`codervpn_conformance::fuzz_entries::packet`) can reach the responder
/// without the rest of the agent.
#[doc(hidden)]
pub fn fuzz_respond(coder: Ipv6Addr, tailscale: Ipv6Addr, packet: &[u8]) -> Option<Vec<u8>> {
    match respond(&Addresses { coder, tailscale }, packet) {
        Verdict::Reply(reply) => Some(reply),
        _ => None,
    }
}

fn icmp(src: Ipv6Addr, dst: Ipv6Addr, bytes: &[u8]) -> Verdict {
    let Ok(icmp) = Icmpv6Slice::from_slice(bytes) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let Icmpv6Type::EchoRequest(echo) = icmp.icmp_type() else {
        return Verdict::Drop(DropReason::UnknownProtocol);
    };
    if !icmp.is_checksum_valid(src.octets(), dst.octets()) {
        return Verdict::Drop(DropReason::BadChecksum);
    }
    let builder = PacketBuilder::ipv6(dst.octets(), src.octets(), HOP_LIMIT)
        .icmpv6_echo_reply(echo.id, echo.seq);
    let payload = icmp.payload();
    let mut reply = Vec::with_capacity(builder.size(payload.len()));
    match builder.write(&mut reply, payload) {
        Ok(()) => Verdict::Reply(reply),
        Err(_) => Verdict::Drop(DropReason::Malformed),
    }
}

fn udp(src: Ipv6Addr, dst: Ipv6Addr, bytes: &[u8]) -> Verdict {
    let Ok(udp) = UdpSlice::from_slice(bytes) else {
        return Verdict::Drop(DropReason::Malformed);
    };
    let expected =
        udp.to_header()
            .calc_checksum_ipv6_raw(src.octets(), dst.octets(), udp.payload());
    // IPv6 makes the UDP checksum mandatory (RFC 8200 §8.1): zero is wrong.
    if udp.checksum() == 0 || expected.ok() != Some(udp.checksum()) {
        return Verdict::Drop(DropReason::BadChecksum);
    }
    let from = match udp.destination_port() {
        ECHO_PORT => dst,
        SPOOFED_ECHO_PORT => SPOOFED_SOURCE,
        DISCARD_PORT => return Verdict::Discarded(udp.payload().len()),
        _ => return Verdict::Drop(DropReason::UnknownPort),
    };
    let builder = PacketBuilder::ipv6(from.octets(), src.octets(), HOP_LIMIT)
        .udp(udp.destination_port(), udp.source_port());
    let payload = udp.payload();
    let mut reply = Vec::with_capacity(builder.size(payload.len()));
    match builder.write(&mut reply, payload) {
        Ok(()) => Verdict::Reply(reply),
        Err(_) => Verdict::Drop(DropReason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::SlicedPacket;

    const TUNNEL: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 1, 2, 3, 4, 5);
    const AGENT: Addresses = Addresses {
        coder: Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0x101, 0, 0, 0, 0),
        tailscale: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0x101, 0, 0, 0, 0),
    };

    fn udp_to(dst: Ipv6Addr, port: u16, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ipv6(TUNNEL.octets(), dst.octets(), 64).udp(4000, port);
        let mut packet = Vec::new();
        builder.write(&mut packet, payload).unwrap();
        packet
    }

    fn ping(dst: Ipv6Addr) -> Vec<u8> {
        let builder =
            PacketBuilder::ipv6(TUNNEL.octets(), dst.octets(), 64).icmpv6_echo_request(9, 3);
        let mut packet = Vec::new();
        builder.write(&mut packet, b"hello").unwrap();
        packet
    }

    #[test]
    fn echo_reply_comes_from_the_pinged_address() {
        for dst in [AGENT.coder, AGENT.tailscale] {
            let Verdict::Reply(reply) = respond(&AGENT, &ping(dst)) else {
                panic!("no reply")
            };
            let sliced = SlicedPacket::from_ip(&reply).unwrap();
            let Some(etherparse::NetSlice::Ipv6(ip)) = sliced.net else {
                panic!()
            };
            assert_eq!(ip.header().source_addr(), dst);
            assert_eq!(ip.header().destination_addr(), TUNNEL);
            let Some(etherparse::TransportSlice::Icmpv6(icmp)) = sliced.transport else {
                panic!()
            };
            assert!(icmp.is_checksum_valid(dst.octets(), TUNNEL.octets()));
            assert!(matches!(
                icmp.icmp_type(),
                Icmpv6Type::EchoReply(e) if e.id == 9 && e.seq == 3
            ));
            assert_eq!(icmp.payload(), b"hello");
        }
    }

    #[test]
    fn udp_ports() {
        let Verdict::Reply(reply) = respond(&AGENT, &udp_to(AGENT.coder, 7, b"abc")) else {
            panic!()
        };
        assert_eq!(source(&reply), Some(AGENT.coder));
        assert_eq!(destination(&reply), Some(TUNNEL));
        let Verdict::Reply(reply) = respond(&AGENT, &udp_to(AGENT.coder, 8, b"abc")) else {
            panic!()
        };
        assert_eq!(source(&reply), Some(SPOOFED_SOURCE));
        assert_eq!(
            respond(&AGENT, &udp_to(AGENT.coder, 9, b"abcd")),
            Verdict::Discarded(4)
        );
        assert_eq!(
            respond(&AGENT, &udp_to(AGENT.coder, 10, b"x")),
            Verdict::Drop(DropReason::UnknownPort)
        );
    }

    #[test]
    fn bad_packets_are_dropped_with_a_reason() {
        let other = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 9, 9, 9, 9, 9);
        assert_eq!(
            respond(&AGENT, &udp_to(other, 7, b"x")),
            Verdict::Drop(DropReason::BadDestination)
        );
        let mut corrupt = udp_to(AGENT.coder, 7, b"xyz");
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert_eq!(
            respond(&AGENT, &corrupt),
            Verdict::Drop(DropReason::BadChecksum)
        );
        assert_eq!(
            respond(&AGENT, &[0x45, 0, 0, 20]),
            Verdict::Drop(DropReason::NotIpv6)
        );
        assert_eq!(respond(&AGENT, &[]), Verdict::Drop(DropReason::NotIpv6));
        let truncated = &ping(AGENT.coder)[..30];
        assert_eq!(
            respond(&AGENT, truncated),
            Verdict::Drop(DropReason::Malformed)
        );
        for len in 0..60 {
            let mut junk = vec![0x60u8; len];
            junk.iter_mut().enumerate().for_each(|(i, b)| *b ^= i as u8);
            let _ = respond(&AGENT, &junk);
        }
    }
}
