//! Partial matching of received messages against transcript patterns, and
//! symbolic RPC ids (`"$start"`).
//!
//! Patterns are proto3 JSON with these additions: `"$name"` is a symbolic
//! value (a bound id, or bound now to whatever is there), `"$any"` is any
//! present value, and `null` means "absent"; `"$prefix:…"`, `"$contains:…"`
//! and `"$not:…"` test text; `{"$includes": [p, …]}` matches a list that has,
//! in any order, a distinct item for each pattern (lists whose order the
//! spec leaves open, such as the agents of a PeerUpdate, §6.7). Keys the
//! pattern leaves out are not checked; a pattern value equal to the proto3
//! default also matches a field left out on the wire (defaults are not
//! transmitted, §1.5).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Symbolic names bound so far, and the next request id to hand out.
#[derive(Debug, Clone, PartialEq)]
pub struct Bindings {
    values: BTreeMap<String, Value>,
    next_id: u64,
}

impl Default for Bindings {
    fn default() -> Self {
        Bindings {
            values: BTreeMap::new(),
            next_id: 1,
        }
    }
}

/// Where and how a message differed from its pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {path}: expected {expected}, got {actual}")]
pub struct Mismatch {
    pub path: String,
    pub expected: String,
    pub actual: String,
}

impl Bindings {
    /// Binds a name to a value (e.g. `coder_url`).
    pub fn set(&mut self, name: &str, value: Value) {
        self.values.insert(name.to_owned(), value);
    }

    /// The value bound to `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// Replaces every `"$name"` in a message to send: known names by their
    /// value, unknown ones by a fresh request id (1, 2, 3, ... per the
    /// harness, §5.2), which is then bound.
    pub fn resolve(&mut self, value: &Value) -> Value {
        match value {
            Value::String(s) if s.starts_with('$') && s.len() > 1 => {
                let name = &s[1..];
                if let Some(bound) = self.values.get(name) {
                    return bound.clone();
                }
                let id = Value::String(self.next_id.to_string());
                self.next_id += 1;
                self.values.insert(name.to_owned(), id.clone());
                id
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.resolve(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), self.resolve(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Checks `actual` against `pattern`; on success, names first seen in
    /// the pattern are bound to what they matched.
    pub fn matches(&mut self, pattern: &Value, actual: &Value) -> Result<(), Mismatch> {
        let mut trial = self.clone();
        let mut steps = MATCH_STEPS;
        trial.match_at("$", pattern, Some(actual), &mut steps)?;
        *self = trial;
        Ok(())
    }

    /// `steps` is what is left of the [`MATCH_STEPS`] one match may take;
    /// when it runs out, every pending comparison fails with "gave up".
    fn match_at(
        &mut self,
        path: &str,
        pattern: &Value,
        actual: Option<&Value>,
        steps: &mut u32,
    ) -> Result<(), Mismatch> {
        let fail = |expected: String| {
            Err(Mismatch {
                path: path.to_owned(),
                expected,
                actual: actual.map_or("absent".into(), Value::to_string),
            })
        };
        let Some(left) = steps.checked_sub(1) else {
            return fail(format!(
                "{pattern} (gave up after {MATCH_STEPS} steps: make the pattern's $includes items more specific)"
            ));
        };
        *steps = left;
        match (pattern, actual) {
            (Value::Null, None) => Ok(()),
            (Value::Null, Some(_)) => fail("absent".into()),
            (Value::String(s), Some(actual)) if s == "$any" => {
                let _ = actual;
                Ok(())
            }
            (Value::String(s), None) if s == "$any" => fail("any value".into()),
            (Value::String(s), actual)
                if s.starts_with("$prefix:")
                    || s.starts_with("$contains:")
                    || s.starts_with("$not:") =>
            {
                let (kind, text) = s[1..].split_once(':').unwrap_or_default();
                let found = actual.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
                let found = found.as_deref();
                let ok = match kind {
                    "prefix" => found.unwrap_or_default().starts_with(text),
                    "contains" => found.unwrap_or_default().contains(text),
                    // Present, and not this text.
                    _ => found.is_some_and(|f| f != text),
                };
                if ok {
                    Ok(())
                } else {
                    fail(format!("text with {kind} {text:?}"))
                }
            }
            (Value::String(s), actual) if s.starts_with('$') && s.len() > 1 => {
                let name = &s[1..];
                match (self.values.get(name), actual) {
                    (Some(bound), Some(actual)) if same_scalar(bound, actual) => Ok(()),
                    (Some(bound), _) => fail(format!("{bound} (bound to ${name})")),
                    (None, Some(actual)) => {
                        self.values.insert(name.to_owned(), actual.clone());
                        Ok(())
                    }
                    (None, None) => fail(format!("a value for ${name}")),
                }
            }
            (Value::Object(fields), actual)
                if fields.len() == 1 && fields.contains_key("$includes") =>
            {
                let wanted = match fields.get("$includes") {
                    Some(Value::Array(wanted)) => wanted.as_slice(),
                    _ => return fail("a list after $includes".into()),
                };
                let items = match actual {
                    Some(Value::Array(items)) => items.as_slice(),
                    None => &[],
                    Some(_) => return fail(format!("a list including {pattern}")),
                };
                let mut used = vec![false; items.len()];
                match self.includes(path, wanted, items, &mut used, steps) {
                    Some(true) => Ok(()),
                    Some(false) => fail(format!("a list including, in any order, {pattern}")),
                    None => fail(format!(
                        "a list including, in any order, {pattern} (gave up after {MATCH_STEPS} steps: make the items more specific)"
                    )),
                }
            }
            (pattern, None) if is_default(pattern) => Ok(()),
            (_, None) => fail(pattern.to_string()),
            (Value::Object(fields), Some(Value::Object(actual))) => {
                for (key, sub) in fields {
                    let found = lookup(actual, key);
                    self.match_at(&format!("{path}.{key}"), sub, found, steps)?;
                }
                Ok(())
            }
            (Value::Array(items), Some(Value::Array(actual))) => {
                if items.len() != actual.len() {
                    return fail(format!("{} items: {pattern}", items.len()));
                }
                for (i, (sub, got)) in items.iter().zip(actual).enumerate() {
                    self.match_at(&format!("{path}[{i}]"), sub, Some(got), steps)?;
                }
                Ok(())
            }
            (pattern, Some(actual)) if same_scalar(pattern, actual) => Ok(()),
            (pattern, Some(_)) => fail(pattern.to_string()),
        }
    }
}

/// Pattern nodes one match may compare, nested `$includes` searches and
/// all. Trying every `$includes` assignment is exponential in the worst
/// case (many loose items, one that never matches, or lists within
/// lists); the catalogue's patterns take a few thousand steps at most, and
/// a million takes well under a second.
const MATCH_STEPS: u32 = 1_000_000;

impl Bindings {
    /// Whether each of `wanted` matches a distinct unused item of `items`,
    /// trying every assignment; bindings made by the successful assignment
    /// are kept. `None` when the step budget ran out first.
    fn includes(
        &mut self,
        path: &str,
        wanted: &[Value],
        items: &[Value],
        used: &mut [bool],
        steps: &mut u32,
    ) -> Option<bool> {
        let Some((first, rest)) = wanted.split_first() else {
            return Some(true);
        };
        for (i, item) in items.iter().enumerate() {
            if used[i] {
                continue;
            }
            let mut trial = self.clone();
            if trial
                .match_at(&format!("{path}[{i}]"), first, Some(item), steps)
                .is_err()
            {
                if *steps == 0 {
                    return None;
                }
                continue;
            }
            used[i] = true;
            if trial.includes(path, rest, items, used, steps)? {
                *self = trial;
                return Some(true);
            }
            used[i] = false;
        }
        Some(false)
    }
}

/// A field by its JSON name or its proto name (`response_to`).
fn lookup<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).or_else(|| map.get(&camel(key)))
}

fn camel(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Scalars compare by value across JSON's spellings of 64-bit integers
/// (`"7"` and `7`).
fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(x), Value::Number(y)) | (Value::Number(y), Value::String(x)) => {
            *x == y.to_string()
        }
        _ => a == b,
    }
}

/// A proto3 default, which is not transmitted.
fn is_default(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0",
        Value::Array(items) => items.is_empty(),
        Value::Null | Value::Object(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn symbolic_ids_bind_on_send_and_match_on_receive() {
        let mut b = Bindings::default();
        b.set("url", json!("http://x"));
        let sent = b.resolve(&json!({"rpc": {"msgId": "$start"}, "start": {"coderUrl": "$url"}}));
        assert_eq!(sent["rpc"]["msgId"], "1");
        assert_eq!(sent["start"]["coderUrl"], "http://x");
        let sent = b.resolve(&json!({"rpc": {"msgId": "$stop"}}));
        assert_eq!(sent["rpc"]["msgId"], "2");
        let reply = json!({"rpc": {"responseTo": "2"}, "stop": {"success": true}});
        assert!(
            b.matches(&json!({"rpc": {"responseTo": "$stop"}, "stop": {}}), &reply)
                .is_ok()
        );
        assert!(
            b.matches(&json!({"rpc": {"responseTo": "$start"}}), &reply)
                .is_err()
        );
    }

    #[test]
    fn includes_gives_up_on_a_hopeless_search_with_a_clear_message() {
        let mut wanted: Vec<Value> = (0..10).map(|_| json!({})).collect();
        wanted.push(json!({"never": 1}));
        let items: Vec<Value> = (0..20).map(|i| json!({"n": i})).collect();
        let mut b = Bindings::default();
        let err = b
            .matches(&json!({"x": {"$includes": wanted}}), &json!({"x": items}))
            .unwrap_err();
        assert!(err.to_string().contains("gave up after"), "{err}");
    }

    #[test]
    fn nested_includes_share_one_budget() {
        // Each of the 20 outer tries runs a hopeless inner search: with a
        // budget per search, each would spend a whole budget of its own.
        let mut inner: Vec<Value> = (0..10).map(|_| json!({})).collect();
        inner.push(json!({"never": 1}));
        let leaf: Vec<Value> = (0..20).map(|i| json!({"n": i})).collect();
        let items: Vec<Value> = (0..20).map(|_| json!({"l": leaf})).collect();
        let pattern = json!({"x": {"$includes": [{"l": {"$includes": inner}}]}});
        let err = Bindings::default()
            .matches(&pattern, &json!({"x": items}))
            .unwrap_err();
        assert!(err.to_string().contains("gave up after"), "{err}");
    }

    #[test]
    fn includes_matches_items_in_any_order_and_binds() {
        let mut b = Bindings::default();
        let update = json!({"upsertedAgents": [
            {"name": "agnt", "fqdn": ["wrk.coder.", "agnt.wrk.me.coder."], "ipAddrs": ["fd60::1"]},
            {"name": "main", "fqdn": ["main.dev.me.coder."], "ipAddrs": ["fd60::2"]},
            {"name": "agnt", "fqdn": ["agnt.old.me.coder."], "ipAddrs": ["fd60::3"]},
        ]});
        let pattern = json!({"upsertedAgents": {"$includes": [
            {"name": "main", "ipAddrs": ["$main"]},
            {"fqdn": {"$includes": ["agnt.wrk.me.coder."]}, "ipAddrs": ["$agnt"]},
        ]}});
        b.matches(&pattern, &update).unwrap();
        assert_eq!(b.get("main"), Some(&json!("fd60::2")));
        assert_eq!(b.get("agnt"), Some(&json!("fd60::1")));
        // Each pattern takes a distinct item; a later item can satisfy a
        // pattern an earlier, wrongly chosen one also fit.
        let mut b = Bindings::default();
        let two = json!({"a": {"$includes": [{"name": "agnt"}, {"name": "agnt", "ipAddrs": ["fd60::1"]}]}});
        b.matches(&two, &json!({"a": update["upsertedAgents"]}))
            .unwrap();
        let three =
            json!({"a": {"$includes": [{"name": "agnt"}, {"name": "agnt"}, {"name": "agnt"}]}});
        assert!(
            b.matches(&three, &json!({"a": update["upsertedAgents"]}))
                .is_err()
        );
        // Absent is an empty list; anything but a list fails.
        assert!(
            b.matches(&json!({"x": {"$includes": []}}), &json!({}))
                .is_ok()
        );
        assert!(
            b.matches(&json!({"x": {"$includes": [1]}}), &json!({}))
                .is_err()
        );
        assert!(
            b.matches(&json!({"x": {"$includes": [1]}}), &json!({"x": 1}))
                .is_err()
        );
        // $not: present and different.
        let ts = json!({"lastHandshake": "0001-01-01T00:00:00Z", "n": 5});
        assert!(
            b.matches(&json!({"lastHandshake": "$not:0001-01-01T00:00:00Z"}), &ts)
                .is_err()
        );
        assert!(b.matches(&json!({"n": "$not:4"}), &ts).is_ok());
        assert!(b.matches(&json!({"n": "$not:5"}), &ts).is_err());
        assert!(b.matches(&json!({"m": "$not:5"}), &ts).is_err());
    }

    #[test]
    fn partial_defaults_absent_and_any() {
        let mut b = Bindings::default();
        let actual = json!({"rpc": {"responseTo": "3"}, "start": {"errorMessage": "x"}});
        assert!(
            b.matches(&json!({"start": {"success": false}}), &actual)
                .is_ok()
        );
        assert!(
            b.matches(&json!({"start": {"success": true}}), &actual)
                .is_err()
        );
        assert!(
            b.matches(&json!({"start": {"errorMessage": "$any"}}), &actual)
                .is_ok()
        );
        assert!(b.matches(&json!({"stop": null}), &actual).is_ok());
        assert!(b.matches(&json!({"start": null}), &actual).is_err());
        assert!(
            b.matches(&json!({"rpc": {"response_to": 3}}), &actual)
                .is_ok()
        );
        // An unbound name binds to what is there, only on success.
        assert!(
            b.matches(&json!({"rpc": {"responseTo": "$r"}, "stop": {}}), &actual)
                .is_err()
        );
        assert!(
            b.matches(&json!({"rpc": {"responseTo": "$r"}}), &actual)
                .is_ok()
        );
        assert_eq!(b.resolve(&json!("$r")), json!("3"));
        let err = b
            .matches(&json!({"start": {"errorMessage": "y"}}), &actual)
            .unwrap_err();
        assert_eq!(err.path, "$.start.errorMessage");
        // Text by prefix or substring (error texts, §6.2 rule 2).
        let text = json!({"start": {"errorMessage": "parse url \"::\": bad"}});
        assert!(
            b.matches(
                &json!({"start": {"errorMessage": "$prefix:parse url \""}}),
                &text
            )
            .is_ok()
        );
        assert!(
            b.matches(&json!({"start": {"errorMessage": "$contains:bad"}}), &text)
                .is_ok()
        );
        assert!(
            b.matches(&json!({"start": {"errorMessage": "$prefix:bad"}}), &text)
                .is_err()
        );
    }
}
