//! `transcript`: the transcript loader and what a runner does with a
//! loaded file before any I/O (resolving `"$name"`s, building the packets
//! it sends, resolving the packet patterns it expects), and the matcher on
//! arbitrary JSON. Invariants: a loaded transcript survives a round trip
//! through its JSON value; a failed match leaves the bindings as they
//! were; a `$`-free pattern matches itself.

use serde_json::Value;

use crate::matcher::Bindings;
use crate::packet::pattern::{resolve_packet, resolve_pattern};
use crate::packet::{build, describe};
use crate::transcript::{Event, Transcript};

/// Patterns are matched only when they have at most this many JSON nodes
/// and [`MAX_WANTED`] `$includes` items in all; larger inputs are still
/// loaded, just not matched. The `$includes` search tries every
/// assignment, so its cost grows as (list items)^(wanted items): fine for
/// the catalogue's patterns (a case author writes them, a peer only
/// supplies the list), but a fuzzer finds a slow input within seconds.
const MATCH_BUDGET: usize = 64;
const MAX_WANTED: usize = 3;

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
            Event::Expect(expectation) if affordable(&expectation.message) => {
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
    if !affordable(value) {
        return;
    }
    let mut bindings = Bindings::default();
    let _ = bindings.resolve(value);
    if let Some([pattern, actual]) = value.as_array().map(Vec::as_slice) {
        let before = bindings.clone();
        if bindings.matches(pattern, actual).is_err() {
            assert_eq!(bindings, before, "a failed match changed the bindings");
        }
    }
    if literal(value) {
        let matched = Bindings::default().matches(value, value);
        assert!(
            matched.is_ok(),
            "a literal pattern must match itself: {matched:?}"
        );
    }
}

/// Nodes in a JSON value.
fn size(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(size).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(size).sum::<usize>(),
        _ => 1,
    }
}

fn affordable(value: &Value) -> bool {
    size(value) <= MATCH_BUDGET && wanted(value) <= MAX_WANTED
}

/// `$includes` items in a pattern, nested ones included.
fn wanted(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(wanted).sum(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match (k.as_str(), v) {
                ("$includes", Value::Array(items)) => items.len() + wanted(v),
                _ => wanted(v),
            })
            .sum(),
        _ => 0,
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
