//! The few IPv6 packets the tunnel reads or writes itself: DNS over UDP,
//! its pings, and Packet Too Big. Routing needs only the two addresses, read
//! straight from the fixed header; everything else goes through etherparse,
//! so checksums are right by construction.

use std::net::Ipv6Addr;

use etherparse::{
    IcmpEchoHeader, Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};

/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// The minimum IPv6 MTU: an ICMPv6 error never makes a packet longer.
pub const MIN_MTU: usize = 1280;
/// Hop limit of the packets the tunnel originates.
const HOP_LIMIT: u8 = 64;

/// The IP version nibble, if there is a first byte.
pub fn version(packet: &[u8]) -> Option<u8> {
    packet.first().map(|b| b >> 4)
}

/// Source and destination of an IPv6 packet, from the fixed header alone.
pub fn ipv6_addresses(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    if packet.len() < IPV6_HEADER_LEN || version(packet) != Some(6) {
        return None;
    }
    let src: [u8; 16] = packet[8..24].try_into().ok()?;
    let dst: [u8; 16] = packet[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

/// A UDP datagram inside an IPv6 packet.
#[derive(Debug, PartialEq, Eq)]
pub struct Udp<'a> {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

/// The UDP datagram in `packet`, if it is one (checksums are not checked:
/// the kernel or the peer already did).
pub fn udp(packet: &[u8]) -> Option<Udp<'_>> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let Some(NetSlice::Ipv6(ip)) = sliced.net else {
        return None;
    };
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        return None;
    };
    Some(Udp {
        src: ip.header().source_addr(),
        dst: ip.header().destination_addr(),
        src_port: udp.source_port(),
        dst_port: udp.destination_port(),
        payload: udp.payload(),
    })
}

/// An ICMPv6 echo reply's sender and identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    pub src: Ipv6Addr,
    pub id: u16,
    pub seq: u16,
}

/// The echo reply in `packet`, if it is one.
pub fn echo_reply(packet: &[u8]) -> Option<EchoReply> {
    // Cheap pre-check so that bulk traffic never pays for slicing.
    if packet.get(6) != Some(&58) {
        return None;
    }
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let Some(NetSlice::Ipv6(ip)) = sliced.net else {
        return None;
    };
    let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
        return None;
    };
    match icmp.icmp_type() {
        Icmpv6Type::EchoReply(IcmpEchoHeader { id, seq }) => Some(EchoReply {
            src: ip.header().source_addr(),
            id,
            seq,
        }),
        _ => None,
    }
}

/// A UDP/IPv6 packet.
pub fn build_udp(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let builder =
        PacketBuilder::ipv6(src.octets(), dst.octets(), HOP_LIMIT).udp(src_port, dst_port);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    // Writing into a Vec only fails for payloads over 64 KiB, which no
    // caller builds (DNS answers are a few hundred bytes).
    match builder.write(&mut out, payload) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// An ICMPv6 echo request.
pub fn build_echo_request(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let builder =
        PacketBuilder::ipv6(src.octets(), dst.octets(), HOP_LIMIT).icmpv6_echo_request(id, seq);
    let mut out = Vec::with_capacity(builder.size(payload.len()));
    match builder.write(&mut out, payload) {
        Ok(()) => out,
        Err(_) => Vec::new(),
    }
}

/// ICMPv6 Packet Too Big (RFC 4443 §3.2) for `original`, sent back to its
/// source as if from its destination, carrying as much of the original as
/// fits in the minimum MTU.
pub fn build_packet_too_big(original: &[u8], mtu: u32) -> Option<Vec<u8>> {
    let (src, dst) = ipv6_addresses(original)?;
    let builder = PacketBuilder::ipv6(dst.octets(), src.octets(), HOP_LIMIT)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu });
    let room = MIN_MTU - builder.size(0);
    let quoted = &original[..original.len().min(room)];
    let mut out = Vec::with_capacity(builder.size(quoted.len()));
    builder.write(&mut out, quoted).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 1, 0, 0, 0, 1);
    const B: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 2, 0, 0, 0, 2);

    #[test]
    fn udp_round_trip() {
        let packet = build_udp(A, B, 5353, 53, b"hello");
        assert_eq!(ipv6_addresses(&packet), Some((A, B)));
        let udp = udp(&packet).unwrap();
        assert_eq!(
            (udp.src_port, udp.dst_port, udp.payload),
            (5353, 53, &b"hello"[..])
        );
        assert_eq!(udp.src, A);
    }

    #[test]
    fn echo_reply_is_recognised_and_requests_are_not() {
        let request = build_echo_request(A, B, 7, 9, b"x");
        assert_eq!(echo_reply(&request), None);
        let reply = PacketBuilder::ipv6(B.octets(), A.octets(), 64).icmpv6_echo_reply(7, 9);
        let mut out = Vec::new();
        reply.write(&mut out, b"x").unwrap();
        assert_eq!(
            echo_reply(&out),
            Some(EchoReply {
                src: B,
                id: 7,
                seq: 9
            })
        );
    }

    #[test]
    fn packet_too_big_quotes_the_original_and_fits_the_minimum_mtu() {
        let big = build_udp(A, B, 1, 2, &[0u8; 1400]);
        let ptb = build_packet_too_big(&big, 1280).unwrap();
        assert_eq!(ptb.len(), MIN_MTU);
        assert_eq!(ipv6_addresses(&ptb), Some((B, A)));
        let sliced = SlicedPacket::from_ip(&ptb).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
            panic!()
        };
        assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1280 });
    }

    #[test]
    fn garbage_is_not_a_packet() {
        assert!(ipv6_addresses(&[0x45; 60]).is_none());
        assert!(ipv6_addresses(&[0x60; 39]).is_none());
        for bad in [&b""[..], &[0x60; 10], &[0x45; 60], &[0xff; 80], &[0x60; 48]] {
            assert!(udp(bad).is_none());
            assert!(echo_reply(bad).is_none());
        }
    }
}
