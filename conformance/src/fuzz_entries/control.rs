//! `control_updates`: the reference tunnel's side of the control-plane
//! stream (`reference-tunnel/src/control/`). Each input line is one
//! WebSocket text message; those that parse as a [`ServerMessage`] are
//! applied to a [`PeerState`], as the tunnel does, and the resulting
//! names go into the DNS table. Invariants, after every update (§6.6-§6.8,
//! §9.4): the PeerUpdate owed to the manager upserts only agents the
//! state holds and deletes only agents it no longer holds (or re-adds in
//! the same update); a snapshot leaves exactly its own agents; the full
//! state lists every agent once; every DNS name points at a known agent;
//! the `<workspace>.<suffix>.` name exists exactly when the workspace has
//! one agent; and each PeerUpdate survives the protobuf round trip.

use std::collections::{BTreeSet, HashMap};

use codervpn_proto::PeerUpdate;
use codervpn_proto::ids::{agent_address, uuid_from_wire};
use codervpn_reference_tunnel::control::api::ServerMessage;
use codervpn_reference_tunnel::dataplane::dns::HostTable;
use codervpn_reference_tunnel::peers::PeerState;
use prost::Message;
use uuid::Uuid;

const SUFFIX: &str = "coder";

/// Control-free: the input as UTF-8 text (lossy), one message per line.
pub fn control_updates(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut state = PeerState::new("Owner", SUFFIX);
    for line in text.lines() {
        let Ok(ServerMessage::Update(update)) = serde_json::from_str::<ServerMessage>(line) else {
            continue;
        };
        let snapshot = update.snapshot;
        let upserted: BTreeSet<Uuid> = update.upserted_agents.iter().map(|a| a.id).collect();
        let diff = state.apply(update);
        round_trip(&diff);
        let held: BTreeSet<Uuid> = state.agents().map(|a| a.id).collect();
        for agent in &diff.upserted_agents {
            assert!(held.contains(&wire_id(&agent.id)), "upserted but not held");
        }
        for agent in &diff.deleted_agents {
            let id = wire_id(&agent.id);
            assert!(
                !held.contains(&id) || upserted.contains(&id),
                "deleted but still held"
            );
        }
        if snapshot {
            assert_eq!(held, upserted, "a snapshot leaves exactly its agents");
        }
        let full = state.full();
        round_trip(&full);
        assert_eq!(full.upserted_agents.len(), held.len());
        assert_eq!(state.agent_count(), held.len());
        assert_eq!(state.periodic().is_some(), !held.is_empty());
        check_names(&state, &full);
    }
}

fn check_names(state: &PeerState, full: &PeerUpdate) {
    let mut per_workspace: HashMap<&[u8], usize> = HashMap::new();
    for agent in &full.upserted_agents {
        *per_workspace.entry(&agent.workspace_id[..]).or_default() += 1;
    }
    let workspaces: HashMap<&[u8], String> = full
        .upserted_workspaces
        .iter()
        .map(|w| (&w.id[..], w.name.to_lowercase()))
        .collect();
    for agent in &full.upserted_agents {
        let Some(workspace) = workspaces.get(&agent.workspace_id[..]) else {
            assert!(
                agent.fqdn.is_empty(),
                "names for an agent without a workspace"
            );
            continue;
        };
        let short = format!("{workspace}.{SUFFIX}.");
        let alone = per_workspace.get(&agent.workspace_id[..]) == Some(&1);
        assert_eq!(
            agent.fqdn.contains(&short),
            alone,
            "{short} is for the only agent of a workspace"
        );
        assert!(agent.fqdn.iter().all(|n| n.ends_with('.')));
        assert!(agent.fqdn.windows(2).all(|w| w[0].len() <= w[1].len()));
    }
    let held: BTreeSet<Uuid> = state.agents().map(|a| a.id).collect();
    let names: Vec<(String, Uuid)> = state.dns_names().collect();
    assert!(names.iter().all(|(_, id)| held.contains(id)));
    let table = HostTable::new(names.iter().map(|(n, id)| (n.clone(), agent_address(*id))));
    for (name, _) in &names {
        assert!(table.lookup(name).is_some(), "{name} does not resolve");
    }
}

fn round_trip(update: &PeerUpdate) {
    let again = PeerUpdate::decode(update.encode_to_vec().as_slice());
    assert_eq!(again.as_ref(), Ok(update));
}

fn wire_id(bytes: &[u8]) -> Uuid {
    let id = uuid_from_wire(bytes);
    assert!(id.is_ok(), "agent ids are 16 bytes: {id:?}");
    id.unwrap_or_default()
}
