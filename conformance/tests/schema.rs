//! `docs/transcript.schema.json` against `transcript.rs` and the catalogue.
//!
//! The schema is checked with a small structural validator (the keywords
//! the schema uses, nothing else: an unknown keyword fails the test rather
//! than being skipped), and its names are compared with the ones serde
//! itself reports, read from its "unknown field/variant" errors, so that a
//! field or event added to `transcript.rs` without the schema fails here.
//! The JSON examples of `docs/transcripts.md` are checked the same way.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use codervpn_conformance::transcript::{
    Answer, Direction, Event, Expectation, Level, Packet, PacketPattern, Recorded, RecordedItem,
    Target, Tier, Transcript,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn schema() -> Value {
    let text = std::fs::read_to_string(format!("{ROOT}/docs/transcript.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn case_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        glob::glob(&format!("{}/cases/*.json", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

// ---------------------------------------------------------------------------
// A validator for the subset of JSON Schema 2020-12 the schema uses.

/// Keywords that only annotate.
const ANNOTATIONS: &[&str] = &["$schema", "$id", "$defs", "title", "description", "default"];

fn resolve<'a>(root: &'a Value, reference: &str) -> &'a Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $ref: {reference}"));
    root.pointer(pointer)
        .unwrap_or_else(|| panic!("dangling $ref {reference}"))
}

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "integer" => value.is_u64() || value.is_i64(),
        "number" => value.is_number(),
        other => panic!("unknown type {other}"),
    }
}

/// Checks `value` against `schema`; the error names the path.
fn validate(root: &Value, schema: &Value, value: &Value, path: &str) -> Result<(), String> {
    let Some(keywords) = schema.as_object() else {
        panic!("schema at {path} is not an object");
    };
    for (keyword, arg) in keywords {
        match keyword.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "$ref" => validate(root, resolve(root, arg.as_str().unwrap()), value, path)?,
            "type" => {
                if !type_matches(arg.as_str().unwrap(), value) {
                    return Err(format!("{path}: expected {arg}, got {value}"));
                }
            }
            "const" if value != arg => return Err(format!("{path}: expected {arg}, got {value}")),
            "const" => {}
            "enum" => {
                if !arg.as_array().unwrap().contains(value) {
                    return Err(format!("{path}: {value} is not one of {arg}"));
                }
            }
            "minimum" => {
                if let Some(n) = value.as_f64()
                    && n < arg.as_f64().unwrap()
                {
                    return Err(format!("{path}: {value} is below {arg}"));
                }
            }
            "required" => {
                if let Some(object) = value.as_object() {
                    for key in arg.as_array().unwrap() {
                        if !object.contains_key(key.as_str().unwrap()) {
                            return Err(format!("{path}: missing key {key}"));
                        }
                    }
                }
            }
            "properties" => {
                if let Some(object) = value.as_object() {
                    for (key, sub) in arg.as_object().unwrap() {
                        if let Some(v) = object.get(key) {
                            validate(root, sub, v, &format!("{path}.{key}"))?;
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(object) = value.as_object() {
                    let known = keywords.get("properties").and_then(Value::as_object);
                    for (key, v) in object {
                        if known.is_some_and(|k| k.contains_key(key)) {
                            continue;
                        }
                        match arg {
                            Value::Bool(false) => {
                                return Err(format!("{path}: key {key:?} is not allowed"));
                            }
                            Value::Bool(true) => {}
                            sub => validate(root, sub, v, &format!("{path}.{key}"))?,
                        }
                    }
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        validate(root, arg, item, &format!("{path}[{i}]"))?;
                    }
                }
            }
            "oneOf" => {
                let branches = arg.as_array().unwrap();
                let errors: Vec<String> = branches
                    .iter()
                    .filter_map(|b| validate(root, b, value, path).err())
                    .collect();
                match branches.len() - errors.len() {
                    1 => {}
                    0 => {
                        // The most specific complaint: the deepest path.
                        let best = errors.iter().max_by_key(|e| e.len()).unwrap();
                        return Err(format!("{path}: matches no alternative ({best})"));
                    }
                    n => return Err(format!("{path}: matches {n} alternatives, not one")),
                }
            }
            other => panic!("the schema uses {other:?} at {path}; teach this validator first"),
        }
    }
    Ok(())
}

fn check(value: &Value) -> Result<(), String> {
    let root = schema();
    validate(&root, &root, value, "$")
}

fn check_event(value: &Value) -> Result<(), String> {
    let root = schema();
    validate(&root, &root["$defs"]["event"], value, "$")
}

// ---------------------------------------------------------------------------
// Names as serde knows them.

/// The names listed in serde's "unknown variant/field …, expected …"
/// message (`expected `a``, `expected `a` or `b``, `expected one of …`).
fn expected_names(message: &str) -> BTreeSet<String> {
    let list = message
        .split_once("expected ")
        .unwrap_or_else(|| panic!("no list in {message:?}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn serde_names<T: DeserializeOwned + std::fmt::Debug>(probe: Value) -> BTreeSet<String> {
    let err = serde_json::from_value::<T>(probe).unwrap_err().to_string();
    assert!(err.starts_with("unknown"), "{err}");
    expected_names(&err)
}

fn variants<T: DeserializeOwned + std::fmt::Debug>() -> BTreeSet<String> {
    serde_names::<T>(json!("__no_such_variant__"))
}

fn strings(values: &Value) -> BTreeSet<String> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn keys(object: &Value) -> BTreeSet<String> {
    object.as_object().unwrap().keys().cloned().collect()
}

/// The event branches of the schema by name (the one required key, or
/// the constant of a string form).
fn schema_events() -> Vec<(String, Value)> {
    schema()["$defs"]["event"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|branch| match branch.get("const") {
            Some(name) => (name.as_str().unwrap().to_owned(), Value::Null),
            None => {
                let required = strings(&branch["required"]);
                assert_eq!(required.len(), 1, "{branch}");
                let name = required.into_iter().next().unwrap();
                let payload = branch["properties"][&name].clone();
                (name, payload)
            }
        })
        .collect()
}

/// The smallest transcript serde accepts.
fn minimal_transcript() -> Value {
    json!({
        "id": "T-001", "title": "t", "spec": "protocol.md §1", "level": "must", "tier": "wire",
        "events": [],
    })
}

#[test]
fn event_names_equal_the_serde_variants() {
    let schema_names: BTreeSet<String> = schema_events().into_iter().map(|(n, _)| n).collect();
    let serde = serde_names::<Event>(json!({"__no_such_event__": {}}));
    assert_eq!(schema_names, serde);
}

#[test]
fn field_names_equal_the_serde_fields() {
    let root = schema();
    let mut probe = minimal_transcript();
    probe["__no_such_field__"] = json!(1);
    assert_eq!(
        keys(&root["properties"]),
        serde_names::<Transcript>(probe),
        "top level"
    );
    assert_eq!(
        strings(&root["required"]),
        ["id", "title", "spec", "level", "tier", "events"]
            .map(String::from)
            .into(),
        "the fields without a serde default"
    );
    // The fields of each event that has some.
    for (name, payload) in schema_events() {
        let Some(properties) = payload.get("properties") else {
            continue;
        };
        if name == "control" {
            continue; // the mock control plane's action, not ours
        }
        let probe = json!({ &name: {"__no_such_field__": 1} });
        assert_eq!(keys(properties), serde_names::<Event>(probe), "{name}");
    }
    assert_eq!(
        keys(&root["$defs"]["recorded"]["properties"]),
        ["at_ms", "dir"]
            .map(String::from)
            .into_iter()
            .chain(variants::<RecordedItem>())
            .collect(),
        "recorded"
    );
    let one_of: BTreeSet<String> = root["$defs"]["recorded"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| strings(&b["required"]))
        .collect();
    assert_eq!(one_of, variants::<RecordedItem>(), "recorded items");
    assert_eq!(
        strings(&root["$defs"]["level"]["enum"]),
        variants::<Level>()
    );
    assert_eq!(strings(&root["$defs"]["tier"]["enum"]), variants::<Tier>());
    assert_eq!(
        strings(&root["properties"]["target"]["enum"]),
        variants::<Target>()
    );
    assert_eq!(
        strings(&root["$defs"]["recorded"]["properties"]["dir"]["enum"]),
        variants::<Direction>()
    );
    let answers = root["$defs"]["network_settings"]["oneOf"]
        .as_array()
        .unwrap();
    let mut answer_names = strings(&answers[0]["enum"]);
    for branch in &answers[1..] {
        answer_names.extend(strings(&branch["required"]));
    }
    assert_eq!(answer_names, variants::<Answer>());
}

/// Every event variant, so that the schema is shown to accept what serde
/// writes. The match below stops compiling when a variant is added.
fn every_event() -> Vec<Event> {
    let all = vec![
        Event::Handshake {
            versions: Some("1.3,2.1".into()),
            withhold: true,
        },
        Event::Handshake {
            versions: None,
            withhold: false,
        },
        Event::SendHeader("codervpn 1.0 manager\n".into()),
        Event::ExpectHeader { within_ms: 5000 },
        Event::Send(json!({"rpc": {"msgId": "$stop"}, "stop": {}})),
        Event::SendRaw("00 00 00 00".into()),
        Event::SendRawSlowly("00 00 00 02 2a 00".into()),
        Event::Expect(Expectation {
            message: json!({"rpc": {"responseTo": "$stop"}, "stop": {"success": true}}),
            within_ms: 5000,
            warn_after_ms: Some(1000),
            answer: true,
        }),
        Event::ExpectAnyOrder {
            messages: vec![json!({"log": {}}), json!({"peerUpdate": {}})],
            within_ms: 100,
            answer: true,
        },
        Event::ExpectEof {
            within_ms: 5000,
            warn_after_ms: None,
            allow_background: true,
        },
        Event::ExpectNothing { for_ms: 100 },
        Event::Sleep { ms: 10 },
        Event::Reconnect { within_ms: 10000 },
        Event::Connect {
            name: "other".into(),
            within_ms: 5000,
        },
        Event::Switch("main".into()),
        Event::CloseWrite,
        Event::Control(json!({"action": "drop_streams", "reconnect_after_ms": 200})),
        Event::ExpectPacket {
            packet: serde_json::from_value(json!({
                "ip": {"version": 6, "src": "$any", "dst": "$tun_address", "protocol": 58, "len": 48, "hop_limit": 64},
                "echo_request": {"id": 1}, "echo_reply": {"src": "$agnt", "id": 1, "seq": 2, "payload": "x", "payload_hex": "78", "payload_len": 1},
                "icmpv6": {"type": 2, "code": 0, "mtu": 1280, "src": null, "dst": "$tun_address"},
                "udp": {"src_port": 7, "dst_port": 40000, "payload": "hi", "payload_hex": "68 69", "payload_len": 2, "src": "$a", "dst": "$b"},
                "dns": {"src": "$a", "dst": "$b", "id": 1, "response": true, "rcode": "NXDOMAIN", "name": "x.coder.", "qtype": "AAAA", "answers": []},
                "tcp": {"src": "$a", "dst": "$b", "src_port": 7, "dst_port": 1, "seq": 1, "ack_number": 2, "syn": true, "ack": true, "fin": false, "rst": false, "psh": false, "payload": "", "payload_len": 0},
                "raw": "60 00"
            }))
            .unwrap(),
            within_ms: 2000,
            warn_after_ms: Some(1000),
        },
        Event::ExpectNoPacket {
            packet: PacketPattern::default(),
            for_ms: 500,
        },
    ];
    let packets = [
        json!({"echo_request": {"src": "$tun_address", "dst": "$tailscale:agnt", "id": 1, "seq": 1, "payload": "x", "payload_len": 3}}),
        json!({"echo_reply": {"src": "::1", "dst": "::2", "payload_hex": "00"}}),
        json!({"udp": {"src": "::1", "dst": "::2", "src_port": 1, "dst_port": 7, "payload": "x"}}),
        json!({"dns": {"src": "::1", "dst": "::2", "src_port": 1, "dst_port": 53, "id": 5, "name": "a.b", "qtype": "A"}}),
        json!({"tcp": {"src": "::1", "dst": "::2", "src_port": 1, "dst_port": 7, "seq": 5, "ack_number": 6, "syn": true, "fin": true, "rst": true, "psh": true, "payload_len": 3}}),
        json!({"raw": "60 00"}),
    ];
    let all: Vec<Event> = all
        .into_iter()
        .chain(
            packets
                .into_iter()
                .map(|p| Event::SendPacket(serde_json::from_value::<Packet>(p).unwrap())),
        )
        .collect();
    for event in &all {
        match event {
            Event::Handshake { .. }
            | Event::SendHeader(_)
            | Event::ExpectHeader { .. }
            | Event::Send(_)
            | Event::SendRaw(_)
            | Event::SendRawSlowly(_)
            | Event::Expect(_)
            | Event::ExpectAnyOrder { .. }
            | Event::ExpectEof { .. }
            | Event::ExpectNothing { .. }
            | Event::Sleep { .. }
            | Event::CloseWrite
            | Event::Control(_)
            | Event::SendPacket(_)
            | Event::ExpectPacket { .. }
            | Event::ExpectNoPacket { .. }
            | Event::Reconnect { .. }
            | Event::Connect { .. }
            | Event::Switch(_) => {}
        }
    }
    all
}

/// Follows a `$ref` (one level).
fn deref(root: &Value, schema: &Value) -> Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => root
            .pointer(reference.trim_start_matches('#'))
            .unwrap()
            .clone(),
        None => schema.clone(),
    }
}

#[test]
fn packet_kinds_and_fields_equal_the_serde_ones() {
    let root = schema();
    // Packets to send: the kinds, then each kind's fields.
    let branches = root["$defs"]["packet"]["oneOf"].as_array().unwrap();
    let mut kinds = BTreeSet::new();
    for branch in branches {
        let name = strings(&branch["required"]).into_iter().next().unwrap();
        let payload = deref(&root, &branch["properties"][&name]);
        if let Some(properties) = payload.get("properties") {
            let probe = json!({ &name: {"__no_such_field__": 1} });
            assert_eq!(
                keys(properties),
                serde_names::<Packet>(probe),
                "packet {name}"
            );
        }
        kinds.insert(name);
    }
    assert_eq!(
        kinds,
        serde_names::<Packet>(json!({"__no_such_kind__": {}}))
    );
    // Patterns: the layers, then each layer's fields.
    let pattern = &root["$defs"]["packet_pattern"];
    assert_eq!(
        keys(&pattern["properties"]),
        serde_names::<PacketPattern>(json!({"__no_such_layer__": {}}))
    );
    for (layer, sub) in pattern["properties"].as_object().unwrap() {
        let sub = deref(&root, sub);
        let Some(properties) = sub.get("properties") else {
            continue;
        };
        let probe = json!({ layer: {"__no_such_field__": 1} });
        assert_eq!(
            keys(properties),
            serde_names::<PacketPattern>(probe),
            "pattern {layer}"
        );
    }
}

#[test]
fn what_serde_writes_the_schema_accepts() {
    let mut transcript: Transcript = serde_json::from_value(minimal_transcript()).unwrap();
    transcript.events = every_event();
    transcript.tunnel_args = vec!["--update-interval-ms".into(), "50".into()];
    transcript.network_settings = Answer::Delay { ms: 3000 };
    transcript.target = Target::Manager;
    let items = [
        RecordedItem::Header("codervpn tunnel 1.2\n".into()),
        RecordedItem::Message(json!({"start": {"apiToken": "<redacted>"}})),
        RecordedItem::Raw("0a 02".into()),
        RecordedItem::Eof,
        RecordedItem::Error("read failed".into()),
        RecordedItem::Packet(json!({"echo_reply": {"id": 1}, "raw": "60 00"})),
    ];
    transcript.recorded = items
        .into_iter()
        .enumerate()
        .map(|(i, what)| Recorded {
            at_ms: i as u64,
            dir: if i % 2 == 0 {
                Direction::Sent
            } else {
                Direction::Received
            },
            what,
        })
        .collect();
    let written = serde_json::to_value(&transcript).unwrap();
    check(&written).unwrap();
    for answer in [Answer::Answer, Answer::Withhold] {
        transcript.network_settings = answer;
        check(&serde_json::to_value(&transcript).unwrap()).unwrap();
    }
}

#[test]
fn every_case_file_has_only_keys_the_schema_allows() {
    let root = schema();
    let top = keys(&root["properties"]);
    let events: BTreeSet<String> = schema_events().into_iter().map(|(n, _)| n).collect();
    for file in case_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        let case: Value = serde_json::from_str(&text).unwrap();
        // The simple structural check first, for a clear message ...
        for key in keys(&case) {
            assert!(
                top.contains(&key),
                "{name}: top-level key {key:?} is not in the schema"
            );
        }
        for (i, event) in case["events"].as_array().unwrap().iter().enumerate() {
            let event_keys = match event {
                Value::String(s) => BTreeSet::from([s.clone()]),
                Value::Object(_) => keys(event),
                other => panic!("{name}: event {i} is {other}"),
            };
            assert_eq!(
                event_keys.len(),
                1,
                "{name}: event {i} has keys {event_keys:?}"
            );
            for key in event_keys {
                assert!(
                    events.contains(&key),
                    "{name}: event {i}: {key:?} is not an event"
                );
            }
        }
        // ... then the whole schema, and serde agrees.
        check(&case).unwrap_or_else(|e| panic!("{name}: {e}"));
        Transcript::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// Ways to break a document; serde and the schema must both refuse each.
fn mutants(case: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut add = |what: String, f: &dyn Fn(&mut Map<String, Value>)| {
        let mut v = case.clone();
        f(v.as_object_mut().unwrap());
        out.push((what, v));
    };
    add("unknown top-level key".into(), &|m| {
        m.insert("evnets".into(), json!([]));
    });
    for key in ["id", "title", "spec", "level", "tier", "events"] {
        add(format!("without {key}"), &|m| {
            m.remove(key);
        });
    }
    add("bad level".into(), &|m| {
        m.insert("level".into(), json!("may"));
    });
    add("bad tier".into(), &|m| {
        m.insert("tier".into(), json!("radio"));
    });
    add("negative timeout".into(), &|m| {
        m.insert("timeout_ms".into(), json!(-1));
    });
    add("bad network_settings".into(), &|m| {
        m.insert("network_settings".into(), json!({"delay": 5}));
    });
    let events = case["events"].as_array().unwrap().clone();
    for (i, event) in events.iter().enumerate() {
        let replace = |new: Value| {
            move |m: &mut Map<String, Value>| {
                m["events"].as_array_mut().unwrap()[i] = new.clone();
            }
        };
        add(
            format!("event {i}: unknown event"),
            &replace(json!({"sned": {}})),
        );
        if let Some(object) = event.as_object() {
            let mut two = object.clone();
            two.insert("sleep".into(), json!({"ms": 1}));
            if two.len() == 2 {
                add(format!("event {i}: two keys"), &replace(Value::Object(two)));
            }
            let (name, payload) = object.iter().next().unwrap();
            if let Some(fields) = payload.as_object()
                && !["send", "control"].contains(&name.as_str())
            {
                let mut fields = fields.clone();
                fields.insert("within".into(), json!(5));
                add(
                    format!("event {i}: unknown field in {name}"),
                    &replace(json!({ name: fields })),
                );
            }
        }
    }
    out
}

#[test]
fn the_schema_and_serde_refuse_the_same_broken_cases() {
    for file in case_files() {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for (what, mutant) in mutants(&case) {
            let by_serde = Transcript::from_json(&mutant.to_string()).is_ok();
            let by_schema = check(&mutant).is_ok();
            assert!(!by_serde, "{name}, {what}: serde accepted it");
            assert!(!by_schema, "{name}, {what}: the schema accepted it");
        }
    }
    // And accept the same alternative spellings.
    for event in [
        json!("close_write"),
        json!({"close_write": null}),
        json!({"handshake": {}}),
        json!({"expect_eof": {}}),
    ] {
        assert!(
            serde_json::from_value::<Event>(event.clone()).is_ok(),
            "{event}"
        );
        check_event(&event).unwrap();
    }
    for bad in [
        json!("handshake"),
        json!({"close_write": {}}),
        json!({}),
        json!(5),
    ] {
        assert!(
            serde_json::from_value::<Event>(bad.clone()).is_err(),
            "{bad}"
        );
        assert!(check_event(&bad).is_err(), "{bad}");
    }
    for answer in [
        json!("answer"),
        json!({"withhold": null}),
        json!({"delay": {"ms": 1}}),
    ] {
        let mut t = minimal_transcript();
        t["network_settings"] = answer.clone();
        assert!(Transcript::from_json(&t.to_string()).is_ok(), "{answer}");
        check(&t).unwrap();
    }
}

/// The fenced ```json blocks of docs/transcripts.md: whole transcripts,
/// single events, or arrays of events (other JSON there is fenced as
/// `jsonc` or `text`).
fn doc_examples() -> Vec<(usize, Value)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("docs/transcripts.md")).unwrap();
    let mut out = Vec::new();
    let mut block: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        match &mut block {
            None if line.trim_end() == "```json" => block = Some((n + 1, String::new())),
            None => {}
            Some((start, body)) if line.trim_end() == "```" => {
                let value = serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("docs/transcripts.md line {start}: {e}"));
                out.push((*start, value));
                block = None;
            }
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
        }
    }
    out
}

#[test]
fn the_examples_in_the_docs_are_valid() {
    let examples = doc_examples();
    assert!(examples.len() >= 10, "only {} examples", examples.len());
    let mut seen = BTreeSet::new();
    for (line, example) in examples {
        let at = format!("docs/transcripts.md line {line}");
        let events = match &example {
            Value::Object(m) if m.contains_key("events") => {
                check(&example).unwrap_or_else(|e| panic!("{at}: {e}"));
                let t = Transcript::from_json(&example.to_string())
                    .unwrap_or_else(|e| panic!("{at}: {e}"));
                t.events
            }
            Value::Array(items) => items
                .iter()
                .map(|e| {
                    check_event(e).unwrap_or_else(|err| panic!("{at}: {e}: {err}"));
                    serde_json::from_value::<Event>(e.clone())
                        .unwrap_or_else(|err| panic!("{at}: {e}: {err}"))
                })
                .collect(),
            single => {
                check_event(single).unwrap_or_else(|e| panic!("{at}: {e}"));
                vec![
                    serde_json::from_value::<Event>(single.clone())
                        .unwrap_or_else(|e| panic!("{at}: {e}")),
                ]
            }
        };
        for event in events {
            let written = serde_json::to_value(&event).unwrap();
            seen.insert(match written {
                Value::String(s) => s,
                Value::Object(m) => m.keys().next().unwrap().clone(),
                other => panic!("{other}"),
            });
        }
    }
    // Every event has an example.
    let all: BTreeSet<String> = schema_events().into_iter().map(|(n, _)| n).collect();
    let missing: Vec<&String> = all.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "events without an example in the docs: {missing:?}"
    );
}
