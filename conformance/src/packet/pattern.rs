//! Bindings in packets and patterns, and the words of failure messages.
//!
//! Addresses in a case are mostly names bound earlier: `$tun_address` (the
//! tunnel's own /128, from its router NetworkSettingsRequest, §6.10) and
//! agent addresses bound from a PeerUpdate's `ipAddrs` (§6.7). A packet to
//! send must have every name bound. A pattern keeps unbound names, which
//! the matcher then binds to what arrived. Addresses are compared as RFC
//! 5952 text, so both sides are put in that form first.

use std::net::{IpAddr, Ipv6Addr};

use codervpn_proto::ids::TAILSCALE_PREFIX;
use serde_json::{Map, Value};

use super::parse::{dns_name, hex};
use super::{Packet, PacketPattern};
use crate::engine::unhex;
use crate::matcher::Bindings;

/// `"$tailscale:name"`: the address bound to `name`, in the Tailscale
/// prefix (§9.3), the address pings go to.
const TAILSCALE: &str = "$tailscale:";

/// Keys whose text is data, never a name to resolve.
const DATA_KEYS: &[&str] = &["payload", "payload_hex", "raw"];

/// `addr` moved into the Tailscale prefix (its last 10 bytes kept).
pub fn tailscale(addr: &str) -> Result<String, String> {
    let parsed: Ipv6Addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
    let mut octets = parsed.octets();
    octets[..6].copy_from_slice(&TAILSCALE_PREFIX);
    Ok(Ipv6Addr::from(octets).to_string())
}

/// The value of a bound `"$name"` or `"$tailscale:name"`, as text.
fn bound(text: &str, bindings: &Bindings) -> Result<Option<String>, String> {
    let (name, moved) = match text.strip_prefix(TAILSCALE) {
        Some(name) => (name, true),
        None => match text.strip_prefix('$') {
            Some(name) => (name, false),
            None => return Ok(None),
        },
    };
    let Some(value) = bindings.get(name) else {
        return if moved {
            Err(format!("{text}: ${name} is not bound"))
        } else {
            Ok(None)
        };
    };
    let value = value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned);
    if moved {
        tailscale(&value).map(Some)
    } else {
        Ok(Some(value))
    }
}

/// `packet` with every `"$name"` replaced; an unbound name is an error.
pub fn resolve_packet(packet: &Packet, bindings: &Bindings) -> Result<Packet, String> {
    let mut value = serde_json::to_value(packet).map_err(|e| e.to_string())?;
    walk(&mut value, None, &mut |key, text| {
        if key.is_some_and(|k| DATA_KEYS.contains(&k)) {
            return Ok(None);
        }
        match bound(text, bindings)? {
            Some(value) => Ok(Some(value)),
            None if text.starts_with('$') => Err(format!(
                "{text} is not bound{}",
                if text == "$tun_address" {
                    " (no router NetworkSettingsRequest with an address has come)"
                } else {
                    ""
                }
            )),
            None => Ok(None),
        }
    })?;
    serde_json::from_value(value).map_err(|e| format!("after resolving names: {e}"))
}

/// `pattern` as JSON for the matcher: bound names replaced, addresses,
/// DNS names and hex in their canonical spelling; unbound names kept.
pub fn resolve_pattern(pattern: &PacketPattern, bindings: &Bindings) -> Result<Value, String> {
    let mut value = pattern.to_value();
    walk(&mut value, None, &mut |key, text| {
        if key.is_some_and(|k| DATA_KEYS.contains(&k) && k != "raw") {
            return Ok(None);
        }
        let text = bound(text, bindings)?.unwrap_or_else(|| text.to_owned());
        if text.starts_with('$') {
            return Ok(Some(text));
        }
        Ok(Some(canonical(key, &text)))
    })?;
    Ok(value)
}

/// The one spelling the description uses.
fn canonical(key: Option<&str>, text: &str) -> String {
    match key {
        Some("name") => dns_name(text),
        Some("raw" | "payload_hex") => unhex(text).map_or_else(|_| text.to_owned(), |b| hex(&b)),
        _ => text
            .parse::<IpAddr>()
            .map_or_else(|_| text.to_owned(), |a| a.to_string()),
    }
}

type Visit<'a> = dyn FnMut(Option<&str>, &str) -> Result<Option<String>, String> + 'a;

/// Calls `visit` on every string with the key it sits under (an array's
/// items under the array's key); `Some` replaces the string.
fn walk(value: &mut Value, key: Option<&str>, visit: &mut Visit<'_>) -> Result<(), String> {
    match value {
        Value::String(text) => {
            if let Some(new) = visit(key, text)? {
                *text = new;
            }
            Ok(())
        }
        Value::Array(items) => items.iter_mut().try_for_each(|v| walk(v, key, visit)),
        Value::Object(map) => map
            .iter_mut()
            .try_for_each(|(k, v)| walk(v, Some(k), visit)),
        _ => Ok(()),
    }
}

/// What a failure message calls the packets a pattern looks for: "an
/// ICMPv6 echo reply from X to Y matching {...}".
pub fn words(pattern: &Value) -> String {
    let empty = Map::new();
    let layers = pattern.as_object().unwrap_or(&empty);
    let kinds = [
        ("dns", "a DNS message"),
        ("echo_reply", "an ICMPv6 echo reply"),
        ("echo_request", "an ICMPv6 echo request"),
        ("icmpv6", "an ICMPv6 message"),
        ("tcp", "a TCP segment"),
        ("udp", "a UDP datagram"),
        ("ip", "an IP packet"),
        ("raw", "a packet"),
    ];
    let Some((layer, name)) = kinds.iter().find(|(k, _)| layers.contains_key(*k)) else {
        return "any packet".into();
    };
    let mut text = (*name).to_owned();
    for (key, word) in [("src", "from"), ("dst", "to")] {
        if let Some(addr) = layers
            .get(*layer)
            .and_then(|l| l.get(key))
            .and_then(Value::as_str)
            .filter(|a| !a.starts_with('$'))
        {
            text.push_str(&format!(" {word} {addr}"));
        }
    }
    format!("{text} matching {pattern}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bindings() -> Bindings {
        let mut b = Bindings::default();
        b.set("tun_address", json!("fd60:627a:a42b:1::1"));
        b.set("agnt", json!("fd60:627a:a42b:101::"));
        b
    }

    #[test]
    fn packets_need_every_name_bound() {
        let packet: Packet = serde_json::from_value(json!({"echo_request": {
            "src": "$tun_address", "dst": "$tailscale:agnt", "payload": "$not_a_name"}}))
        .unwrap();
        let Packet::EchoRequest(echo) = resolve_packet(&packet, &bindings()).unwrap() else {
            panic!()
        };
        assert_eq!(echo.src, "fd60:627a:a42b:1::1");
        assert_eq!(echo.dst, "fd7a:115c:a1e0:101::");
        assert_eq!(echo.payload.as_deref(), Some("$not_a_name"));
        let unbound: Packet = serde_json::from_value(
            json!({"udp": {"src": "$tun_address", "dst": "$gpu", "dst_port": 7}}),
        )
        .unwrap();
        assert_eq!(
            resolve_packet(&unbound, &bindings()).unwrap_err(),
            "$gpu is not bound"
        );
        assert!(
            resolve_packet(&unbound, &Bindings::default())
                .unwrap_err()
                .contains("NetworkSettingsRequest")
        );
    }

    #[test]
    fn patterns_keep_unbound_names_and_canonical_text() {
        let pattern: PacketPattern = serde_json::from_value(json!({
            "echo_reply": {"src": "$agnt", "dst": "$tun_address", "id": 1, "payload": "$x"},
            "dns": {"name": "AGNT.wrk.me.coder", "answers": ["FD60:627A:A42B:0101:0:0:0:0", "$ip"]},
            "raw": "6000 0000",
            "ip": {"src": "$any"},
        }))
        .unwrap();
        let value = resolve_pattern(&pattern, &bindings()).unwrap();
        assert_eq!(
            value,
            json!({
                "ip": {"src": "$any"},
                "echo_reply": {"src": "fd60:627a:a42b:101::", "dst": "fd60:627a:a42b:1::1", "id": 1, "payload": "$x"},
                "dns": {"name": "agnt.wrk.me.coder.", "answers": ["fd60:627a:a42b:101::", "$ip"]},
                "raw": "60 00 00 00",
            })
        );
        let bad: PacketPattern =
            serde_json::from_value(json!({"ip": {"dst": "$tailscale:nobody"}})).unwrap();
        assert!(resolve_pattern(&bad, &bindings()).is_err());
        assert_eq!(
            tailscale("fd60:627a:a42b:708:90a:b0c:d0e:f10").unwrap(),
            "fd7a:115c:a1e0:708:90a:b0c:d0e:f10"
        );
        assert!(tailscale("10.0.0.1").is_err());
    }

    #[test]
    fn failure_words_name_the_kind_and_the_addresses() {
        let value = json!({"echo_reply": {"src": "fd60::1", "dst": "$tun_address"}});
        assert_eq!(
            words(&value),
            format!("an ICMPv6 echo reply from fd60::1 matching {value}")
        );
        assert_eq!(words(&json!({})), "any packet");
        assert!(
            words(&json!({"udp": {}, "dns": {"rcode": "NXDOMAIN"}}))
                .starts_with("a DNS message matching")
        );
    }
}
