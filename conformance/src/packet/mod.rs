//! Packets on the tun descriptor, for the `dataplane` tier (protocol.md
//! §9.3–§9.5): what a case writes (`send_packet`, a [`Packet`]), what it
//! looks for (`expect_packet`/`expect_no_packet`, a [`PacketPattern`]), and
//! how a received packet is described so that the pattern can be matched
//! against it with the same rules as messages ([`crate::matcher`]).
//!
//! A received packet becomes a JSON **description**: one key per layer
//! that applies (`ip`, `echo_request`/`echo_reply`, `icmpv6`, `udp`, `dns`,
//! `tcp`), plus `raw` (the bytes as hex) and, when something is wrong with
//! it (a bad checksum, bad utun framing, not IP at all), `error`. A pattern
//! is a partial description, so `{"udp": {"src_port": 7}}` matches any UDP
//! reply from port 7, and `{"dns": {"rcode": "NXDOMAIN"}}` any negative
//! DNS answer. Building and parsing use etherparse (correct checksums both
//! ways) and hickory-proto (DNS), never hand-rolled encoders.
//!
//! * [`build`]: a [`Packet`] to bytes.
//! * [`parse`]: bytes to a description, and one-line summaries.
//! * [`pattern`]: bindings in addresses, canonical text, and the words a
//!   failure message uses for a pattern.

pub mod build;
pub mod parse;
pub mod pattern;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use build::build;
pub use parse::{describe, summary};

/// The tunnel's DNS resolver, the default destination of a DNS query
/// (protocol.md §9.4).
pub const DNS_SERVER: &str = "fd60:627a:a42b::53";

/// A packet for `send_packet`: an object with one key naming its kind.
/// Addresses (and a DNS name) may be `"$name"` bindings; `"$tailscale:name"`
/// is the bound Coder-prefix address moved into the Tailscale prefix
/// (protocol.md §9.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Packet {
    /// ICMPv6 (ICMP for IPv4 addresses) echo request.
    EchoRequest(Echo),
    /// ICMPv6 echo reply.
    EchoReply(Echo),
    Udp(Udp),
    /// A DNS query in a UDP datagram, to the tunnel's resolver by default.
    Dns(DnsQuery),
    Tcp(Tcp),
    /// Bytes as hex, written as they are (the utun header is still added
    /// when the run uses that framing).
    Raw(String),
}

/// An echo request or reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Echo {
    pub src: String,
    pub dst: String,
    #[serde(default)]
    pub id: u16,
    #[serde(default)]
    pub seq: u16,
    /// Payload as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// Payload as hex (instead of `payload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// Payload length: the payload (`codervpn` when none is given)
    /// repeated or cut to this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_len: Option<usize>,
}

/// A UDP datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Udp {
    pub src: String,
    pub dst: String,
    #[serde(default = "default_src_port")]
    pub src_port: u16,
    pub dst_port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_len: Option<usize>,
}

/// A DNS query (one question, recursion desired).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsQuery {
    pub src: String,
    #[serde(default = "default_dns_server")]
    pub dst: String,
    #[serde(default = "default_src_port")]
    pub src_port: u16,
    #[serde(default = "default_dns_port")]
    pub dst_port: u16,
    #[serde(default)]
    pub id: u16,
    /// The name asked for; a trailing dot is optional.
    pub name: String,
    /// Record type by name: `AAAA` (default), `A`, `TXT`, ...
    #[serde(default = "default_qtype")]
    pub qtype: String,
}

/// A TCP segment; flags are off unless set, `ack_number` sets ACK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcp {
    pub src: String,
    pub dst: String,
    #[serde(default = "default_src_port")]
    pub src_port: u16,
    pub dst_port: u16,
    #[serde(default)]
    pub seq: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_number: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub syn: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fin: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rst: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub psh: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_len: Option<usize>,
}

fn default_src_port() -> u16 {
    40_000
}

fn default_dns_port() -> u16 {
    53
}

fn default_dns_server() -> String {
    DNS_SERVER.to_owned()
}

fn default_qtype() -> String {
    "AAAA".to_owned()
}

/// Keeps an explicit `null` (absent, in a pattern) apart from a key left
/// out (not checked).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Declares one layer of a pattern: every field optional, any JSON value
/// (a literal, `"$name"`, `"$any"`, `null` for absent, ...).
macro_rules! layer_pattern {
    ($(#[$doc:meta])* $name:ident { $($field:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(
                #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
                pub $field: Option<Value>,
            )*
        }
    };
}

layer_pattern!(
    /// The IP header: `version` (4 or 6), `protocol` (next header number),
    /// `len` (whole packet), `hop_limit` (TTL for IPv4).
    IpPattern { version, src, dst, protocol, len, hop_limit }
);
layer_pattern!(
    /// An echo request or reply.
    EchoPattern { src, dst, id, seq, payload, payload_hex, payload_len }
);
layer_pattern!(
    /// Any ICMPv6 message; `mtu` only for Packet Too Big (type 2).
    Icmpv6Pattern { src, dst, r#type, code, mtu }
);
layer_pattern!(
    /// A UDP datagram.
    UdpPattern { src, dst, src_port, dst_port, payload, payload_hex, payload_len }
);
layer_pattern!(
    /// A DNS message in UDP (port 53 either side): `response` (bool),
    /// `rcode` by name (`NOERROR`, `NXDOMAIN`, ...), `name` and `qtype` of
    /// the first question, `answers` as text (addresses for A/AAAA).
    DnsPattern { src, dst, id, response, rcode, name, qtype, answers }
);
layer_pattern!(
    /// A TCP segment: flags as booleans, `ack_number` only with ACK.
    TcpPattern { src, dst, src_port, dst_port, seq, ack_number, syn, ack, fin, rst, psh, payload, payload_len }
);

/// What `expect_packet` and `expect_no_packet` look for: a partial packet
/// description. Every layer given must match; an empty pattern matches any
/// packet.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketPattern {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_request: Option<EchoPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_reply: Option<EchoPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmpv6: Option<Icmpv6Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<UdpPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsPattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpPattern>,
    /// The whole packet as hex (spacing is not significant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

impl PacketPattern {
    /// The pattern as JSON, ready for the matcher (bindings not applied).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Object(Default::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn packets_and_patterns_load_and_refuse_unknown_keys() {
        let packet: Packet = serde_json::from_value(
            json!({"echo_request": {"src": "$tun_address", "dst": "$agnt", "id": 7, "seq": 1, "payload": "hi"}}),
        )
        .unwrap();
        assert!(matches!(packet, Packet::EchoRequest(Echo { id: 7, .. })));
        let dns: Packet =
            serde_json::from_value(json!({"dns": {"src": "$tun_address", "name": "wrk.coder"}}))
                .unwrap();
        let Packet::Dns(q) = dns else { panic!() };
        assert_eq!(
            (q.dst.as_str(), q.dst_port, q.qtype.as_str()),
            (DNS_SERVER, 53, "AAAA")
        );
        assert!(
            serde_json::from_value::<Packet>(
                json!({"udp": {"src": "::1", "dst": "::1", "dst_port": 7, "port": 1}})
            )
            .is_err()
        );
        assert!(serde_json::from_value::<Packet>(json!({"ping": {}})).is_err());

        let pattern: PacketPattern = serde_json::from_value(
            json!({"icmpv6": {"type": 2, "mtu": 1280, "src": null}, "ip": {"dst": "$tun_address"}}),
        )
        .unwrap();
        assert_eq!(
            pattern.to_value(),
            json!({"ip": {"dst": "$tun_address"}, "icmpv6": {"src": null, "type": 2, "mtu": 1280}})
        );
        assert!(serde_json::from_value::<PacketPattern>(json!({"icmp": {}})).is_err());
        assert!(serde_json::from_value::<PacketPattern>(json!({"udp": {"port": 1}})).is_err());
        assert_eq!(PacketPattern::default().to_value(), json!({}));
    }
}
