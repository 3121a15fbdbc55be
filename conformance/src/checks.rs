//! Checks applied to every PeerUpdate a tunnel sends, in any case
//! (protocol.md §6.6, §6.7): 16-byte ids, trailing-dot lower-case FQDNs
//! sorted by length, parseable addresses, full replies without deletions,
//! deleted agents without measurements.

use base64::Engine as _;
use serde_json::Value;

/// The first rule a PeerUpdate (proto3 JSON) breaks, if any.
pub fn peer_update(update: &Value, is_reply: bool) -> Result<(), String> {
    let list = |key: &str| {
        update
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    if is_reply && (!list("deletedAgents").is_empty() || !list("deletedWorkspaces").is_empty()) {
        return Err(
            "a reply to GetPeerUpdate is the full state and carries no deletions (§6.6)".into(),
        );
    }
    for (key, deleted) in [("upsertedWorkspaces", false), ("deletedWorkspaces", true)] {
        for ws in list(key) {
            uuid_field(&ws, "id", key)?;
            let _ = deleted;
        }
    }
    for (key, deleted) in [("upsertedAgents", false), ("deletedAgents", true)] {
        for agent in list(key) {
            uuid_field(&agent, "id", key)?;
            uuid_field(&agent, "workspaceId", key)?;
            let names: Vec<&str> = agent
                .get("fqdn")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for name in &names {
                if !name.ends_with('.') || name.to_lowercase() != *name {
                    return Err(format!(
                        "{key}: fqdn {name:?} must be lower case with a trailing dot (§6.7)"
                    ));
                }
            }
            if names.windows(2).any(|w| w[0].len() > w[1].len()) {
                return Err(format!(
                    "{key}: fqdn {names:?} must be sorted by length, shortest first (§6.7)"
                ));
            }
            for ip in agent
                .get("ipAddrs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let text = ip.as_str().unwrap_or_default();
                if text.parse::<std::net::IpAddr>().is_err() {
                    return Err(format!(
                        "{key}: ip_addrs entry {text:?} is not an IP address (§6.7)"
                    ));
                }
            }
            if deleted && (agent.get("lastHandshake").is_some() || agent.get("lastPing").is_some())
            {
                return Err(
                    "deleted agents carry no last_handshake and no last_ping (§6.7)".into(),
                );
            }
        }
    }
    Ok(())
}

fn uuid_field(entry: &Value, field: &str, list: &str) -> Result<(), String> {
    let text = entry.get(field).and_then(Value::as_str).unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| format!("{list}: {field} is not base64 bytes"))?;
    if bytes.len() != 16 {
        return Err(format!(
            "{list}: {field} is {} bytes; ids are 16 raw UUID bytes (§6.7)",
            bytes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ID: &str = "AQIDBAUGBwgJCgsMDQ4PEA==";

    #[test]
    fn well_formed_and_broken_updates() {
        let good = json!({"upsertedAgents": [{"id": ID, "workspaceId": ID, "fqdn": ["w.coder.", "a.w.me.coder."], "ipAddrs": ["fd60:627a:a42b::1"]}]});
        assert!(peer_update(&good, true).is_ok());
        let text_id = json!({"upsertedWorkspaces": [{"id": "MDEyMw=="}]});
        assert!(peer_update(&text_id, false).unwrap_err().contains("16 raw"));
        let no_dot =
            json!({"upsertedAgents": [{"id": ID, "workspaceId": ID, "fqdn": ["a.coder"]}]});
        assert!(peer_update(&no_dot, false).is_err());
        let unsorted = json!({"upsertedAgents": [{"id": ID, "workspaceId": ID, "fqdn": ["a.w.me.coder.", "w.coder."]}]});
        assert!(peer_update(&unsorted, false).is_err());
        let deletion_in_reply = json!({"deletedAgents": [{"id": ID, "workspaceId": ID}]});
        assert!(peer_update(&deletion_in_reply, true).is_err());
        assert!(peer_update(&deletion_in_reply, false).is_ok());
        let measured = json!({"deletedAgents": [{"id": ID, "workspaceId": ID, "lastHandshake": "0001-01-01T00:00:00Z"}]});
        assert!(peer_update(&measured, false).is_err());
    }
}
