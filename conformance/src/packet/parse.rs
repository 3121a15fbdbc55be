//! A packet read from the tun, described as JSON for matching and for the
//! recording (see [`super`]), and summarised in one line for failure
//! messages. Checksums are verified: a tunnel that writes a packet with a
//! wrong one gets it reported (`error`), since the host's stack would drop
//! it silently.

use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use serde_json::{Map, Value, json};

/// Bytes as space-separated hex pairs, the suite's one spelling of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The description of one packet (never fails: what cannot be parsed is
/// an `error` next to the `raw` bytes).
pub fn describe(bytes: &[u8]) -> Value {
    let mut out = Map::new();
    if let Err(error) = layers(bytes, &mut out) {
        out.insert("error".into(), json!(error));
    }
    out.insert("raw".into(), json!(hex(bytes)));
    Value::Object(out)
}

/// The description without what only matching needs (`payload_hex`
/// repeats `raw`), for the recording.
pub fn for_record(description: &Value) -> Value {
    let mut out = description.clone();
    if let Some(layers) = out.as_object_mut() {
        for layer in layers.values_mut() {
            if let Some(fields) = layer.as_object_mut() {
                fields.remove("payload_hex");
            }
        }
    }
    out
}

fn layers(bytes: &[u8], out: &mut Map<String, Value>) -> Result<(), String> {
    if bytes.is_empty() {
        return Err("an empty datagram, not an IP packet".into());
    }
    let sliced = SlicedPacket::from_ip(bytes).map_err(|e| format!("not an IP packet: {e}"))?;
    let (src, dst, src_raw) = match &sliced.net {
        Some(NetSlice::Ipv6(v6)) => {
            let h = v6.header();
            out.insert(
                "ip".into(),
                json!({
                    "version": 6,
                    "src": h.source_addr().to_string(),
                    "dst": h.destination_addr().to_string(),
                    "protocol": v6.payload().ip_number.0,
                    "len": bytes.len(),
                    "hop_limit": h.hop_limit(),
                }),
            );
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                Raw::V6(h.source(), h.destination()),
            )
        }
        Some(NetSlice::Ipv4(v4)) => {
            let h = v4.header();
            out.insert(
                "ip".into(),
                json!({
                    "version": 4,
                    "src": h.source_addr().to_string(),
                    "dst": h.destination_addr().to_string(),
                    "protocol": h.protocol().0,
                    "len": bytes.len(),
                    "hop_limit": h.ttl(),
                }),
            );
            let header = h.to_header();
            let sum = header.calc_header_checksum();
            if sum != h.header_checksum() {
                return Err(format!(
                    "bad IPv4 header checksum {:#06x} (should be {sum:#06x})",
                    h.header_checksum()
                ));
            }
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                Raw::V4(h.source(), h.destination()),
            )
        }
        _ => return Err("not an IP packet".into()),
    };
    let (src, dst) = (src.to_string(), dst.to_string());
    match &sliced.transport {
        None => Ok(()),
        Some(TransportSlice::Icmpv6(icmp)) => {
            let Raw::V6(s, d) = src_raw else {
                return Err("ICMPv6 in an IPv4 packet".into());
            };
            let kind = icmp.type_u8();
            let mut fields = json!({"src": src, "dst": dst, "type": kind, "code": icmp.code_u8()});
            if kind == 2 {
                fields["mtu"] = json!(u32::from_be_bytes(icmp.bytes5to8()));
            }
            out.insert("icmpv6".into(), fields);
            if kind == 128 || kind == 129 {
                let name = if kind == 128 {
                    "echo_request"
                } else {
                    "echo_reply"
                };
                out.insert(
                    name.into(),
                    echo(&src, &dst, icmp.bytes5to8(), icmp.payload()),
                );
            }
            if !icmp.is_checksum_valid(s, d) {
                return Err(format!("bad ICMPv6 checksum {:#06x}", icmp.checksum()));
            }
            Ok(())
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let kind = icmp.type_u8();
            out.insert(
                "icmpv4".into(),
                json!({"src": src, "dst": dst, "type": kind, "code": icmp.code_u8()}),
            );
            if kind == 0 || kind == 8 {
                let name = if kind == 8 {
                    "echo_request"
                } else {
                    "echo_reply"
                };
                out.insert(
                    name.into(),
                    echo(&src, &dst, icmp.bytes5to8(), icmp.payload()),
                );
            }
            let sum = icmp.icmp_type().calc_checksum(icmp.payload());
            if sum != icmp.checksum() {
                return Err(format!(
                    "bad ICMP checksum {:#06x} (should be {sum:#06x})",
                    icmp.checksum()
                ));
            }
            Ok(())
        }
        Some(TransportSlice::Udp(udp)) => {
            let mut fields = json!({
                "src": src, "dst": dst,
                "src_port": udp.source_port(), "dst_port": udp.destination_port(),
            });
            payload_fields(&mut fields, udp.payload());
            out.insert("udp".into(), fields);
            if (udp.source_port() == 53 || udp.destination_port() == 53)
                && let Some(dns) = dns_fields(udp.payload(), &src, &dst)
            {
                out.insert("dns".into(), dns);
            }
            let header = udp.to_header();
            let sum = match src_raw {
                Raw::V6(s, d) => header.calc_checksum_ipv6_raw(s, d, udp.payload()),
                Raw::V4(s, d) => header.calc_checksum_ipv4_raw(s, d, udp.payload()),
            }
            .map_err(|e| e.to_string())?;
            let none_allowed = matches!(src_raw, Raw::V4(..)) && udp.checksum() == 0;
            if sum != udp.checksum() && !none_allowed {
                return Err(format!(
                    "bad UDP checksum {:#06x} (should be {sum:#06x})",
                    udp.checksum()
                ));
            }
            Ok(())
        }
        Some(TransportSlice::Tcp(tcp)) => {
            let mut fields = json!({
                "src": src, "dst": dst,
                "src_port": tcp.source_port(), "dst_port": tcp.destination_port(),
                "seq": tcp.sequence_number(),
                "syn": tcp.syn(), "ack": tcp.ack(), "fin": tcp.fin(), "rst": tcp.rst(), "psh": tcp.psh(),
            });
            if tcp.ack() {
                fields["ack_number"] = json!(tcp.acknowledgment_number());
            }
            payload_fields(&mut fields, tcp.payload());
            out.insert("tcp".into(), fields);
            let sum = match src_raw {
                Raw::V6(s, d) => tcp.calc_checksum_ipv6(s, d),
                Raw::V4(s, d) => tcp.calc_checksum_ipv4(s, d),
            }
            .map_err(|e| e.to_string())?;
            if sum != tcp.checksum() {
                return Err(format!(
                    "bad TCP checksum {:#06x} (should be {sum:#06x})",
                    tcp.checksum()
                ));
            }
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

/// Raw addresses, for the pseudo-header of a checksum.
#[derive(Clone, Copy)]
enum Raw {
    V6([u8; 16], [u8; 16]),
    V4([u8; 4], [u8; 4]),
}

/// `payload_len`, `payload_hex`, and `payload` when it is UTF-8 text.
fn payload_fields(fields: &mut Value, payload: &[u8]) {
    fields["payload_len"] = json!(payload.len());
    fields["payload_hex"] = json!(hex(payload));
    if let Ok(text) = std::str::from_utf8(payload) {
        fields["payload"] = json!(text);
    }
}

fn dns_fields(payload: &[u8], src: &str, dst: &str) -> Option<Value> {
    let msg = Message::from_vec(payload).ok()?;
    let question = msg.queries().first();
    let answers: Vec<String> = msg
        .answers()
        .iter()
        .map(|record| match record.data() {
            RData::AAAA(aaaa) => aaaa.0.to_string(),
            RData::A(a) => a.0.to_string(),
            other => rdata_text(other),
        })
        .collect();
    Some(json!({
        "src": src, "dst": dst,
        "id": msg.id(),
        "response": msg.message_type() == MessageType::Response,
        "rcode": rcode_name(u16::from(msg.response_code())),
        "name": question.map(|q| dns_name(&q.name().to_ascii())),
        "qtype": question.map(|q| q.query_type().to_string()),
        "answers": answers,
    }))
}

/// A record's data as text. hickory's `Display` returns an error for some
/// records it parsed (found by the `dns` fuzz target), which `to_string`
/// turns into a panic: such data is named by its type instead.
fn rdata_text(data: &RData) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    match write!(text, "{data}") {
        Ok(()) => text,
        Err(_) => format!("unprintable {} data", data.record_type()),
    }
}

/// Lower case with the trailing dot, as names are published (§6.7).
pub fn dns_name(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// RFC 1035/6895 response code mnemonics.
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        other => other.to_string(),
    }
}

/// One line for a failure message: the innermost layer, its addresses
/// and what identifies it.
pub fn summary(description: &Value) -> String {
    let get = |layer: &str, key: &str| {
        description
            .get(layer)
            .and_then(|l| l.get(key))
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    let route = |layer: &str| format!("{} -> {}", get(layer, "src"), get(layer, "dst"));
    let ports = |layer: &str| {
        format!(
            "[{}]:{} -> [{}]:{}",
            get(layer, "src"),
            get(layer, "src_port"),
            get(layer, "dst"),
            get(layer, "dst_port")
        )
    };
    let mut text = if description.get("dns").is_some() {
        let answers = description
            .pointer("/dns/answers")
            .map(Value::to_string)
            .unwrap_or_default();
        let what = if get("dns", "response") == "true" {
            format!("response {} {answers}", get("dns", "rcode"))
        } else {
            "query".into()
        };
        format!(
            "DNS {what} id {} for {} {} {}",
            get("dns", "id"),
            get("dns", "name"),
            get("dns", "qtype"),
            ports("udp")
        )
    } else if let Some(kind) = ["echo_request", "echo_reply"]
        .into_iter()
        .find(|k| description.get(*k).is_some())
    {
        format!(
            "echo {} {} id {} seq {}, {} bytes",
            &kind[5..],
            route(kind),
            get(kind, "id"),
            get(kind, "seq"),
            get(kind, "payload_len")
        )
    } else if description.get("icmpv6").is_some() {
        let mtu = get("icmpv6", "mtu");
        let mtu = if mtu.is_empty() {
            String::new()
        } else {
            format!(" mtu {mtu}")
        };
        format!(
            "ICMPv6 type {} code {}{mtu} {}",
            get("icmpv6", "type"),
            get("icmpv6", "code"),
            route("icmpv6")
        )
    } else if description.get("udp").is_some() {
        format!("UDP {}, {} bytes", ports("udp"), get("udp", "payload_len"))
    } else if description.get("tcp").is_some() {
        let flags: Vec<&str> = ["syn", "ack", "fin", "rst", "psh"]
            .into_iter()
            .filter(|f| get("tcp", f) == "true")
            .collect();
        format!(
            "TCP {} [{}] seq {}, {} bytes",
            ports("tcp"),
            flags.join(","),
            get("tcp", "seq"),
            get("tcp", "payload_len")
        )
    } else if description.get("ip").is_some() {
        format!(
            "IPv{} protocol {} {}, {} bytes",
            get("ip", "version"),
            get("ip", "protocol"),
            route("ip"),
            get("ip", "len")
        )
    } else {
        let raw = description.get("raw").and_then(Value::as_str).unwrap_or("");
        let cut: String = raw.chars().take(48).collect();
        format!("bytes {cut}{}", if raw.len() > 48 { " ..." } else { "" })
    };
    if let Some(error) = description.get("error").and_then(Value::as_str) {
        text.push_str(&format!(" ({error})"));
    }
    text
}

/// An echo request or reply's description; `rest` is the ICMP header's
/// bytes 4-7 (identifier, sequence number), the same in ICMPv4 and ICMPv6.
fn echo(src: &str, dst: &str, rest: [u8; 4], payload: &[u8]) -> Value {
    let mut echo = json!({
        "src": src, "dst": dst,
        "id": u16::from_be_bytes([rest[0], rest[1]]),
        "seq": u16::from_be_bytes([rest[2], rest[3]]),
    });
    payload_fields(&mut echo, payload);
    echo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{DnsQuery, Echo, Packet, Tcp, Udp, build};

    const A: &str = "fd60:627a:a42b:101::";
    const B: &str = "fd60:627a:a42b:1111:2222:3333:4444:5555";

    fn echo(request: bool) -> Vec<u8> {
        let echo = Echo {
            src: A.into(),
            dst: B.into(),
            id: 7,
            seq: 3,
            payload: Some("hello".into()),
            payload_hex: None,
            payload_len: None,
        };
        build(&if request {
            Packet::EchoRequest(echo)
        } else {
            Packet::EchoReply(echo)
        })
        .unwrap()
    }

    #[test]
    fn echo_round_trips_with_a_good_checksum() {
        let d = describe(&echo(false));
        assert_eq!(d.get("error"), None, "{d}");
        assert_eq!(
            d["echo_reply"],
            json!({"src": A, "dst": B, "id": 7, "seq": 3, "payload_len": 5,
                   "payload_hex": "68 65 6c 6c 6f", "payload": "hello"})
        );
        assert_eq!(d["icmpv6"]["type"], 129);
        assert_eq!(d["ip"]["len"], 53);
        assert_eq!(d["ip"]["hop_limit"], 64);
        assert!(d.get("echo_request").is_none());
        assert_eq!(
            summary(&d),
            format!("echo reply {A} -> {B} id 7 seq 3, 5 bytes")
        );
        let request = describe(&echo(true));
        assert_eq!(request["echo_request"]["id"], 7);
        assert!(
            for_record(&request)["echo_request"]
                .get("payload_hex")
                .is_none()
        );
    }

    #[test]
    fn bad_checksums_are_reported() {
        let mut bytes = echo(true);
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        let d = describe(&bytes);
        assert!(
            d["error"].as_str().unwrap().contains("bad ICMPv6 checksum"),
            "{d}"
        );
        // The layers are still there to say what it was.
        assert_eq!(d["echo_request"]["seq"], 3);
        assert!(summary(&d).ends_with(")"));

        let mut udp = build(&Packet::Udp(Udp {
            src: A.into(),
            dst: B.into(),
            src_port: 1000,
            dst_port: 7,
            payload: Some("x".into()),
            payload_hex: None,
            payload_len: None,
        }))
        .unwrap();
        assert_eq!(describe(&udp).get("error"), None);
        udp[46] ^= 1; // the checksum field
        assert!(
            describe(&udp)["error"]
                .as_str()
                .unwrap()
                .contains("bad UDP checksum")
        );

        let mut tcp = build(&Packet::Tcp(Tcp {
            src: A.into(),
            dst: B.into(),
            src_port: 1000,
            dst_port: 7,
            seq: 9,
            ack_number: Some(5),
            syn: true,
            fin: false,
            rst: false,
            psh: false,
            payload: None,
            payload_hex: None,
            payload_len: None,
        }))
        .unwrap();
        let d = describe(&tcp);
        assert_eq!(d.get("error"), None, "{d}");
        assert_eq!(d["tcp"]["syn"], true);
        assert_eq!(d["tcp"]["ack"], true);
        assert_eq!(d["tcp"]["ack_number"], 5);
        assert_eq!(
            summary(&d),
            format!("TCP [{A}]:1000 -> [{B}]:7 [syn,ack] seq 9, 0 bytes")
        );
        tcp[40 + 16] ^= 1;
        assert!(
            describe(&tcp)["error"]
                .as_str()
                .unwrap()
                .contains("bad TCP checksum")
        );
    }

    #[test]
    fn dns_queries_and_answers_are_described() {
        let query = build(&Packet::Dns(DnsQuery {
            src: A.into(),
            dst: "fd60:627a:a42b::53".into(),
            src_port: 5353,
            dst_port: 53,
            id: 99,
            name: "Agnt.wrk.me.coder".into(),
            qtype: "aaaa".into(),
        }))
        .unwrap();
        let d = describe(&query);
        assert_eq!(d.get("error"), None, "{d}");
        assert_eq!(
            d["dns"],
            json!({"src": A, "dst": "fd60:627a:a42b::53", "id": 99, "response": false,
                   "rcode": "NOERROR", "name": "agnt.wrk.me.coder.", "qtype": "AAAA", "answers": []})
        );
        assert_eq!(d["udp"]["dst_port"], 53);

        // An answer, as a resolver builds it.
        use hickory_proto::op::{Message, Query, ResponseCode};
        use hickory_proto::rr::{Name, Record, RecordType, rdata::AAAA};
        let name = Name::from_ascii("agnt.wrk.me.coder.").unwrap();
        let mut msg = Message::new();
        msg.set_id(99)
            .set_message_type(MessageType::Response)
            .set_response_code(ResponseCode::NoError);
        msg.add_query(Query::query(name.clone(), RecordType::AAAA));
        msg.add_answer(Record::from_rdata(
            name,
            30,
            RData::AAAA(AAAA(A.parse().unwrap())),
        ));
        let reply = build(&Packet::Udp(Udp {
            src: "fd60:627a:a42b::53".into(),
            dst: A.into(),
            src_port: 53,
            dst_port: 5353,
            payload: None,
            payload_hex: Some(hex(&msg.to_vec().unwrap())),
            payload_len: None,
        }))
        .unwrap();
        let d = describe(&reply);
        assert_eq!(d["dns"]["response"], true);
        assert_eq!(d["dns"]["answers"], json!([A]));
        assert!(summary(&d).starts_with(&format!("DNS response NOERROR [\"{A}\"] id 99")));
        msg.set_response_code(ResponseCode::NXDomain);
        msg.answers_mut().clear();
        let nx = Message::from_vec(&msg.to_vec().unwrap()).unwrap();
        assert_eq!(rcode_name(u16::from(nx.response_code())), "NXDOMAIN");
    }

    #[test]
    fn garbage_and_packet_too_big_are_described() {
        let d = describe(&[0x60, 0, 1]);
        assert!(
            d["error"].as_str().unwrap().starts_with("not an IP packet"),
            "{d}"
        );
        assert_eq!(d["raw"], "60 00 01");
        assert!(summary(&d).starts_with("bytes 60 00 01"));
        assert!(describe(&[])["error"].as_str().unwrap().contains("empty"));
        // Packet Too Big, MTU 1280, quoting the start of the packet.
        use etherparse::{Icmpv6Type, PacketBuilder};
        let quoted = echo(true);
        let builder = PacketBuilder::ipv6(
            B.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            A.parse::<std::net::Ipv6Addr>().unwrap().octets(),
            64,
        )
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 });
        let mut ptb = Vec::new();
        builder.write(&mut ptb, &quoted).unwrap();
        let d = describe(&ptb);
        assert_eq!(d.get("error"), None, "{d}");
        assert_eq!(
            d["icmpv6"],
            json!({"src": B, "dst": A, "type": 2, "code": 0, "mtu": 1280})
        );
        assert_eq!(
            summary(&d),
            format!("ICMPv6 type 2 code 0 mtu 1280 {B} -> {A}")
        );
    }
}
