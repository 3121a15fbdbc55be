//! `transcript`: the transcript loader and what a runner does with a
//! loaded file before any I/O (resolving `"$name"`s, building the packets
//! it sends, resolving the packet patterns it expects), and the matcher on
//! arbitrary JSON. Invariants: a loaded transcript survives a round trip
//! through its JSON value; a failed match leaves the bindings as they
//! were; a `$`-free pattern matches itself. Nothing here limits input
//! size: the matcher's own step budget must keep every input cheap.

use serde_json::Value;

use crate::matcher::Bindings;
use crate::packet::pattern::{resolve_packet, resolve_pattern};
use crate::packet::{build, describe};
use crate::transcript::{Event, Transcript};

/// The input as UTF-8 text (lossy) is a transcript, or any JSON value.
pub fn transcript(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(loaded) = Transcript::from_json(&text) {
        round_trip(&loaded);
        prepare(&loaded);
    }
    if let Ok(value) = serde_json::from_str::<Value>(&text) {
        matching(&value);
    }
}

fn round_trip(loaded: &Transcript) {
    let value = serde_json::to_value(loaded);
    assert!(value.is_ok(), "a loaded transcript serialises");
    if let Ok(value) = value {
        let again = serde_json::from_value::<Transcript>(value.clone());
        assert!(
            matches!(&again, Ok(t) if t == loaded),
            "round trip: {again:?} from {value}"
        );
        let text = serde_json::to_string(&value).unwrap_or_default();
        assert!(Transcript::from_json(&text).is_ok(), "its text reloads");
    }
}

/// What the engine does with each event before touching a stream.
fn prepare(loaded: &Transcript) {
    let mut bindings = Bindings::default();
    bindings.set("coder_url", Value::String("http://127.0.0.1:1".into()));
    bindings.set("api_token", Value::String("token".into()));
    for event in &loaded.events {
        match event {
            Event::Send(message) => {
                let _ = bindings.resolve(message);
            }
            Event::Expect(expectation) => {
                let message = expectation.message.clone();
                let _ = bindings.clone().matches(&expectation.message, &message);
            }
            Event::SendPacket(packet) => {
                if let Ok(bytes) = resolve_packet(packet, &bindings).and_then(|p| build(&p)) {
                    assert!(describe(&bytes).get("raw").is_some());
                }
            }
            Event::ExpectPacket { packet, .. } | Event::ExpectNoPacket { packet, .. } => {
                let _ = resolve_pattern(packet, &bindings);
            }
            _ => {}
        }
    }
}

/// The matcher on arbitrary JSON: `[pattern, actual]` pairs, and every
/// value against itself.
fn matching(value: &Value) {
    let mut bindings = Bindings::default();
    let _ = bindings.resolve(value);
    if let Some([pattern, actual]) = value.as_array().map(Vec::as_slice) {
        let before = bindings.clone();
        if bindings.matches(pattern, actual).is_err() {
            assert_eq!(bindings, before, "a failed match changed the bindings");
        }
    }
    if literal(value) {
        // Unless it is too big for the step budget (over a million nodes).
        let matched = Bindings::default().matches(value, value);
        assert!(
            matched
                .as_ref()
                .map_or_else(|e| e.to_string().contains("gave up after"), |()| true),
            "a literal pattern must match itself: {matched:?}"
        );
    }
}

/// No pattern syntax at all: no `$` strings or keys, no `null`.
fn literal(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.starts_with('$'),
        Value::Array(items) => items.iter().all(literal),
        Value::Object(map) => map.iter().all(|(k, v)| !k.starts_with('$') && literal(v)),
        _ => true,
    }
}
