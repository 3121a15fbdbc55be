//! Identifiers and addresses (protocol.md §6.7, §9.3).
//!
//! On the wire every workspace and agent id is the 16 raw bytes of a UUID in
//! RFC 4122 order, never its text. An agent's address is its UUID with the
//! first 6 bytes replaced by a /48 prefix: the Coder prefix for DNS answers
//! and `ip_addrs`, the legacy Tailscale prefix for pings.

use std::net::Ipv6Addr;

use bytes::Bytes;
pub use uuid::Uuid;

/// `fd60:627a:a42b::/48`: agent addresses, the tunnel's own /128 and its DNS
/// server live here.
pub const CODER_PREFIX: [u8; 6] = [0xfd, 0x60, 0x62, 0x7a, 0xa4, 0x2b];

/// `fd7a:115c:a1e0::/48`: the legacy prefix, still the target of pings.
pub const TAILSCALE_PREFIX: [u8; 6] = [0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0];

/// The tunnel's DNS resolver address, `fd60:627a:a42b::53` (§9.4).
pub const DNS_SERVER: Ipv6Addr = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0, 0, 0, 0, 0x53);

/// An id field that is not exactly 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a UUID on the wire is 16 bytes, got {0}")]
pub struct BadUuidLength(pub usize);

/// The wire form of a UUID: its 16 bytes.
pub fn uuid_to_wire(id: Uuid) -> Bytes {
    Bytes::copy_from_slice(id.as_bytes())
}

/// Reads a UUID from its wire form, rejecting any other length.
pub fn uuid_from_wire(bytes: &[u8]) -> Result<Uuid, BadUuidLength> {
    Uuid::from_slice(bytes).map_err(|_| BadUuidLength(bytes.len()))
}

/// The address of `id` under `prefix`: the prefix, then the UUID's last 10
/// bytes.
pub fn address_in(prefix: [u8; 6], id: Uuid) -> Ipv6Addr {
    let mut octets = *id.as_bytes();
    octets[..6].copy_from_slice(&prefix);
    Ipv6Addr::from(octets)
}

/// The agent's address in DNS answers and `Agent.ip_addrs`.
pub fn agent_address(id: Uuid) -> Ipv6Addr {
    address_in(CODER_PREFIX, id)
}

/// The address a tunnel pings to measure `LastPing`.
pub fn ping_address(id: Uuid) -> Ipv6Addr {
    address_in(TAILSCALE_PREFIX, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    // protocol.md §12.7 content vectors.
    #[test]
    fn uuid_vectors() {
        let id = Uuid::parse_str("01020304-0506-0708-090a-0b0c0d0e0f10").unwrap();
        assert_eq!(uuid_to_wire(id).as_ref(), (1u8..=16).collect::<Vec<_>>());
        assert_eq!(
            agent_address(id).to_string(),
            "fd60:627a:a42b:708:90a:b0c:d0e:f10"
        );
        assert_eq!(
            ping_address(id).to_string(),
            "fd7a:115c:a1e0:708:90a:b0c:d0e:f10"
        );
        let id = Uuid::parse_str("00000000-0000-0101-0000-000000000000").unwrap();
        assert_eq!(agent_address(id).to_string(), "fd60:627a:a42b:101::");
        assert_eq!(DNS_SERVER.to_string(), "fd60:627a:a42b::53");
    }

    #[test]
    fn wire_uuid_must_be_16_bytes() {
        assert_eq!(uuid_from_wire(b"0102"), Err(BadUuidLength(4)));
        assert_eq!(uuid_from_wire(&[0; 17]), Err(BadUuidLength(17)));
        let id = Uuid::from_bytes([7; 16]);
        assert_eq!(uuid_from_wire(&uuid_to_wire(id)), Ok(id));
    }
}
