//! Turning a recording back into a script, so that `codervpn replay` can
//! check a live implementation against what another one did.
//!
//! What was sent is sent again, with request ids made symbolic; what was
//! received becomes an expectation with the volatile parts normalised:
//! request ids, timestamps, measured latencies, random addresses and the
//! order-free contents of PeerUpdate lists match anything. Background
//! traffic (Log messages, unsolicited PeerUpdates, NetworkSettings requests
//! and the harness's answers to them) is left to the engine's usual
//! handling. Pauses longer than 100 ms are kept (up to 2 s each), so
//! timer-driven behaviour has the same room. Packets on the tun are not
//! replayed: their addresses (the tunnel's own above all) change from run
//! to run, so a dataplane case is rerun from its script instead.

use serde_json::{Value, json};

use crate::transcript::{Direction, Event, Expectation, RecordedItem, Transcript};

/// Keys whose values vary from run to run.
const VOLATILE: &[&str] = &["lastHandshake", "lastPing", "latency", "addrs", "msgId"];

/// The script that replays `recording`.
pub fn script(recording: &Transcript) -> Transcript {
    let mut events = Vec::new();
    let mut last_ms = 0u64;
    let mut handshake_pending = false;
    for item in &recording.recorded {
        let gap = item.at_ms.saturating_sub(last_ms);
        last_ms = item.at_ms;
        let is_send = item.dir == Direction::Sent;
        if is_send && gap > 100 {
            events.push(Event::Sleep { ms: gap.min(2_000) });
        }
        match (&item.dir, &item.what) {
            (Direction::Sent, RecordedItem::Header(text)) => {
                if is_standard_header(text) {
                    let versions = text.trim_end().rsplit(' ').next().map(str::to_owned);
                    events.push(Event::Handshake {
                        versions,
                        withhold: false,
                    });
                    handshake_pending = true;
                } else {
                    events.push(Event::SendHeader(text.clone()));
                }
            }
            (Direction::Received, RecordedItem::Header(_))
                if !std::mem::take(&mut handshake_pending) =>
            {
                events.push(Event::ExpectHeader { within_ms: 5_000 });
            }
            (Direction::Sent, RecordedItem::Message(msg)) => {
                if is_auto_answer(msg) {
                    continue;
                }
                events.push(Event::Send(fresh_start(symbolic(msg, "msgId"))));
            }
            (Direction::Sent, RecordedItem::Raw(hex)) => events.push(Event::SendRaw(hex.clone())),
            (Direction::Received, RecordedItem::Message(msg)) => {
                if is_background(msg) {
                    continue;
                }
                events.push(Event::Expect(Expectation {
                    message: normalise(&symbolic(msg, "responseTo")),
                    within_ms: 10_000,
                    warn_after_ms: None,
                    answer: false,
                }));
            }
            (Direction::Received, RecordedItem::Eof) => events.push(Event::ExpectEof {
                within_ms: 5_000,
                warn_after_ms: Some(1_000),
                allow_background: false,
            }),
            _ => {}
        }
    }
    Transcript {
        id: format!("REPLAY-{}", recording.id),
        title: format!("replay of {}", recording.title),
        events,
        recorded: Vec::new(),
        ..recording.clone()
    }
}

/// A recorded Start points at that run's control plane with a redacted
/// token: the replay uses its own.
fn fresh_start(mut msg: Value) -> Value {
    if let Some(start) = msg.get_mut("start").and_then(Value::as_object_mut) {
        if start.contains_key("coderUrl") {
            start.insert("coderUrl".into(), json!("$coder_url"));
        }
        if start.contains_key("apiToken") {
            start.insert("apiToken".into(), json!("$api_token"));
        }
    }
    msg
}

fn is_standard_header(text: &str) -> bool {
    let parts: Vec<&str> = text.trim_end_matches('\n').split(' ').collect();
    parts.len() == 3
        && parts[0] == "codervpn"
        && matches!(parts[1], "manager" | "tunnel" | "client" | "service")
        && parts[2].parse::<codervpn_codec::VersionList>().is_ok()
}

fn is_auto_answer(msg: &Value) -> bool {
    msg.pointer("/rpc/responseTo").is_some() && msg.get("networkSettings").is_some()
}

fn is_background(msg: &Value) -> bool {
    let one_way = msg.get("rpc").is_none();
    (one_way && (msg.get("log").is_some() || msg.get("peerUpdate").is_some()))
        || (msg.get("networkSettings").is_some() && msg.pointer("/rpc/msgId").is_some())
}

/// `rpc.<key>: "7"` becomes `"$id7"`, tying replies to requests by name.
fn symbolic(msg: &Value, key: &str) -> Value {
    let mut msg = msg.clone();
    if let Some(rpc) = msg.get_mut("rpc").and_then(Value::as_object_mut)
        && let Some(id) = rpc.get(key).and_then(Value::as_str).map(str::to_owned)
    {
        rpc.insert(key.into(), json!(format!("$id{id}")));
    }
    msg
}

fn normalise(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) {
                        json!("$any")
                    } else if k == "peerUpdate" {
                        // Lists come in no particular order (§6.6): the
                        // arm's presence and correlation are what replays.
                        json!({})
                    } else {
                        normalise(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcript::{Level, Recorded, Tier};

    #[test]
    fn a_recording_becomes_a_script() {
        let rec = |at_ms, dir, what| Recorded { at_ms, dir, what };
        let recording = Transcript {
            id: "S1".into(),
            title: "t".into(),
            spec: "protocol.md §12.8".into(),
            level: Level::Must,
            tier: Tier::Wire,
            target: Default::default(),
            timeout_ms: 15_000,
            network_settings: Default::default(),
            tunnel_args: vec![],
            events: vec![],
            recorded: vec![
                rec(
                    0,
                    Direction::Sent,
                    RecordedItem::Header("codervpn manager 1.2\n".into()),
                ),
                rec(
                    1,
                    Direction::Received,
                    RecordedItem::Header("codervpn tunnel 1.2\n".into()),
                ),
                rec(
                    2,
                    Direction::Sent,
                    RecordedItem::Message(json!({"rpc": {"msgId": "1"}, "stop": {}})),
                ),
                rec(
                    3,
                    Direction::Received,
                    RecordedItem::Message(json!({"log": {"message": "x"}})),
                ),
                rec(
                    4,
                    Direction::Received,
                    RecordedItem::Message(
                        json!({"rpc": {"responseTo": "1"}, "stop": {"success": true}}),
                    ),
                ),
                rec(5, Direction::Received, RecordedItem::Eof),
            ],
        };
        let script = script(&recording);
        assert_eq!(script.events.len(), 4, "{:?}", script.events);
        assert!(
            matches!(&script.events[0], Event::Handshake { versions: Some(v), .. } if v == "1.2")
        );
        assert!(matches!(&script.events[1], Event::Send(m) if m["rpc"]["msgId"] == "$id1"));
        assert!(
            matches!(&script.events[2], Event::Expect(e) if e.message["rpc"]["responseTo"] == "$id1")
        );
        assert!(matches!(&script.events[3], Event::ExpectEof { .. }));
    }
}
