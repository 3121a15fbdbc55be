//! What an embedded agent counts, so a test can tell *why* a packet got no
//! answer (a tunnel that spoofs its inner source, sends IPv4, or garbles
//! its datagrams) instead of only seeing a timeout.
//!
//! The agent's task writes [`Counters`] under a short-lived lock; readers
//! take a copy as [`AgentStats`] (`MockCoder::agent_stats`,
//! `GET /_mock/agents`).

use std::net::{Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an embedded agent dropped something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// A UDP datagram that is not WireGuard, fails its MAC or decryption,
    /// or names a session the agent does not have.
    InvalidDatagram,
    /// A handshake from a key no tunnel announced on the stream.
    UnknownPeer,
    /// A decrypted packet that is not IPv6 (IPv4, or not IP at all).
    NotIpv6,
    /// IPv6 that does not parse: truncated, bad lengths, fragments.
    Malformed,
    /// Inner source outside the addresses the tunnel announced.
    BadSource,
    /// Inner destination is neither of the agent's addresses.
    BadDestination,
    /// ICMPv6 or UDP checksum wrong (or a zero UDP checksum, invalid in IPv6).
    BadChecksum,
    /// Not ICMPv6 echo, UDP or TCP.
    UnknownProtocol,
    /// UDP to a port other than 7, 8, 9; TCP to a port other than 7 (the
    /// TCP stack answers those with a RST).
    UnknownPort,
    /// The TCP stack's input queue was full.
    Overload,
}

/// Drops by reason; see [`DropReason`] for what each one means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    pub invalid_datagram: u64,
    pub unknown_peer: u64,
    pub not_ipv6: u64,
    pub malformed: u64,
    pub bad_source: u64,
    pub bad_destination: u64,
    pub bad_checksum: u64,
    pub unknown_protocol: u64,
    pub unknown_port: u64,
    pub overload: u64,
}

impl DropCounts {
    pub(crate) fn count(&mut self, reason: DropReason) {
        let slot = match reason {
            DropReason::InvalidDatagram => &mut self.invalid_datagram,
            DropReason::UnknownPeer => &mut self.unknown_peer,
            DropReason::NotIpv6 => &mut self.not_ipv6,
            DropReason::Malformed => &mut self.malformed,
            DropReason::BadSource => &mut self.bad_source,
            DropReason::BadDestination => &mut self.bad_destination,
            DropReason::BadChecksum => &mut self.bad_checksum,
            DropReason::UnknownProtocol => &mut self.unknown_protocol,
            DropReason::UnknownPort => &mut self.unknown_port,
            DropReason::Overload => &mut self.overload,
        };
        *slot = slot.saturating_add(1);
    }

    /// Every drop, whatever the reason.
    pub fn total(&self) -> u64 {
        [
            self.invalid_datagram,
            self.unknown_peer,
            self.not_ipv6,
            self.malformed,
            self.bad_source,
            self.bad_destination,
            self.bad_checksum,
            self.unknown_protocol,
            self.unknown_port,
            self.overload,
        ]
        .iter()
        .fold(0u64, |sum, n| sum.saturating_add(*n))
    }
}

/// One tunnel an agent has a WireGuard session object for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// The tunnel's public key (base64).
    pub public_key: String,
    /// Where replies go: the source of its last authenticated datagram.
    pub endpoint: Option<SocketAddr>,
}

/// A snapshot of one running embedded agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStats {
    pub id: Uuid,
    pub name: String,
    /// The agent's WireGuard public key (base64), as published.
    pub public_key: String,
    /// The agent's UDP socket, as published.
    pub endpoint: SocketAddr,
    /// Its address in `fd60:627a:a42b::/48` (protocol.md §9.3).
    pub address: Ipv6Addr,
    /// Its address in `fd7a:115c:a1e0::/48`, the ping target (§6.9).
    pub ping_address: Ipv6Addr,
    /// Handshakes completed (answered as responder, or confirmed as
    /// initiator).
    pub handshakes: u64,
    /// Decrypted inner packets and their bytes, dropped ones included.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Inner packets and bytes sent back (before encryption).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// UDP datagrams to the discard port (9) and their payload bytes.
    pub discarded_packets: u64,
    pub discarded_bytes: u64,
    pub dropped: DropCounts,
    /// Inner source address of the last decrypted IPv6 packet.
    pub last_inner_source: Option<Ipv6Addr>,
    /// Tunnels with a session object, in the order they first shook hands.
    pub peers: Vec<PeerStats>,
}

/// The mutable part of [`AgentStats`], owned by the agent's task.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    pub(crate) handshakes: u64,
    pub(crate) rx_packets: u64,
    pub(crate) rx_bytes: u64,
    pub(crate) tx_packets: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) discarded_packets: u64,
    pub(crate) discarded_bytes: u64,
    pub(crate) dropped: DropCounts,
    pub(crate) last_inner_source: Option<Ipv6Addr>,
    pub(crate) peers: Vec<PeerStats>,
}

impl Counters {
    pub(crate) fn received(&mut self, len: usize) {
        self.rx_packets = self.rx_packets.saturating_add(1);
        self.rx_bytes = self.rx_bytes.saturating_add(len as u64);
    }

    pub(crate) fn sent(&mut self, len: usize) {
        self.tx_packets = self.tx_packets.saturating_add(1);
        self.tx_bytes = self.tx_bytes.saturating_add(len as u64);
    }

    pub(crate) fn discarded(&mut self, len: usize) {
        self.discarded_packets = self.discarded_packets.saturating_add(1);
        self.discarded_bytes = self.discarded_bytes.saturating_add(len as u64);
    }

    /// Records where a tunnel's replies now go.
    pub(crate) fn peer_endpoint(&mut self, public_key: &str, endpoint: SocketAddr) {
        match self.peers.iter_mut().find(|p| p.public_key == public_key) {
            Some(peer) => peer.endpoint = Some(endpoint),
            None => self.peers.push(PeerStats {
                public_key: public_key.to_owned(),
                endpoint: Some(endpoint),
            }),
        }
    }
}
