//! The service's view of the world: lifecycle, merged peer state, and
//! which tunnel process the events it accepts come from (protocol.md §8.2,
//! §8.5, §8.6 rule 5). Pure data, no I/O, so the merge rules are unit
//! tested on their own.

use std::collections::HashMap;

use bytes::Bytes;
use codervpn_proto::vpn::status::Lifecycle;
use codervpn_proto::{Agent, PeerUpdate, StartRequest, Status, Workspace};

/// Every workspace and agent the current tunnel reported (§8.5).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Peers {
    workspaces: HashMap<Bytes, Workspace>,
    agents: HashMap<Bytes, Agent>,
}

impl Peers {
    /// Merges one tunnel PeerUpdate the way the Windows service does:
    /// upserts replace by `id` bytes, deletions remove by `id` (§8.5).
    /// Deletions are applied first, so an update that deletes and re-adds
    /// one id keeps it.
    pub fn apply(&mut self, update: &PeerUpdate) {
        for workspace in &update.deleted_workspaces {
            self.workspaces.remove(&workspace.id);
        }
        for agent in &update.deleted_agents {
            self.agents.remove(&agent.id);
        }
        for workspace in &update.upserted_workspaces {
            self.workspaces
                .insert(workspace.id.clone(), workspace.clone());
        }
        for agent in &update.upserted_agents {
            self.agents.insert(agent.id.clone(), agent.clone());
        }
    }

    pub fn clear(&mut self) {
        self.workspaces.clear();
        self.agents.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.workspaces.is_empty() && self.agents.is_empty()
    }

    /// The full state as a client gets it: only the upserted lists, each
    /// sorted by `name` with ordinal comparison (§8.2, §8.5); ties broken
    /// by `id` so that the order is stable.
    pub fn full(&self) -> PeerUpdate {
        let mut workspaces: Vec<Workspace> = self.workspaces.values().cloned().collect();
        workspaces.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        let mut agents: Vec<Agent> = self.agents.values().cloned().collect();
        agents.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        PeerUpdate {
            upserted_workspaces: workspaces,
            upserted_agents: agents,
            ..PeerUpdate::default()
        }
    }
}

/// Lifecycle, peers and the bookkeeping of §8.3 step 3 and §8.6 rule 5.
#[derive(Debug, Clone)]
pub struct ServiceState {
    pub lifecycle: Lifecycle,
    pub peers: Peers,
    /// The tunnel process whose PeerUpdates and death count; events from
    /// older processes are ignored (§8.6 rule 5). 0: none yet.
    pub generation: u64,
    /// The last client StartRequest that reached STARTING, with the server
    /// version seen then (§8.3 steps 3 and 4).
    pub last_start: Option<(StartRequest, String)>,
}

impl Default for ServiceState {
    /// The initial state is STOPPED (§8.2).
    fn default() -> ServiceState {
        ServiceState {
            lifecycle: Lifecycle::Stopped,
            peers: Peers::default(),
            generation: 0,
            last_start: None,
        }
    }
}

impl ServiceState {
    /// The `Status` every broadcast and StatusRequest reply carries: the
    /// lifecycle and the full peer state (§8.2).
    pub fn status(&self) -> Status {
        Status {
            lifecycle: self.lifecycle as i32,
            error_message: String::new(),
            peer_update: Some(self.peers.full()),
        }
    }

    /// Whether a PeerUpdate from tunnel `generation` is to be merged: it
    /// comes from the current process and a start or steady state is under
    /// way (peers are cleared on STOPPING and stay empty while STOPPED).
    pub fn accepts_updates_from(&self, generation: u64) -> bool {
        generation == self.generation
            && matches!(self.lifecycle, Lifecycle::Starting | Lifecycle::Started)
    }

    /// Whether the end of tunnel `generation`'s stream is a death to
    /// report (§8.6 rule 5): the current process, while STARTED. During a
    /// Start or a Stop the operation itself reports what happened.
    pub fn death_counts(&self, generation: u64) -> bool {
        generation == self.generation && self.lifecycle == Lifecycle::Started
    }

    /// §8.3 step 3: STARTED with the same request and server version.
    pub fn already_started(&self, request: &StartRequest, version: &str) -> bool {
        self.lifecycle == Lifecycle::Started
            && self
                .last_start
                .as_ref()
                .is_some_and(|(last, last_version)| last == request && last_version == version)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ws(id: u8, name: &str) -> Workspace {
        Workspace {
            id: Bytes::from(vec![id; 16]),
            name: name.into(),
            status: 3,
        }
    }

    fn agent(id: u8, name: &str, workspace: u8) -> Agent {
        Agent {
            id: Bytes::from(vec![id; 16]),
            name: name.into(),
            workspace_id: Bytes::from(vec![workspace; 16]),
            ..Agent::default()
        }
    }

    #[test]
    fn merge_replaces_by_id_deletes_by_id_and_sorts_by_name() {
        let mut peers = Peers::default();
        peers.apply(&PeerUpdate {
            upserted_workspaces: vec![ws(1, "wrk"), ws(2, "dev"), ws(3, "Zed")],
            upserted_agents: vec![agent(11, "main", 2), agent(12, "gpu", 2)],
            ..PeerUpdate::default()
        });
        peers.apply(&PeerUpdate {
            upserted_workspaces: vec![ws(1, "alpha")],
            deleted_workspaces: vec![Workspace {
                id: Bytes::from(vec![2; 16]),
                ..Workspace::default()
            }],
            deleted_agents: vec![agent(12, "", 0)],
            ..PeerUpdate::default()
        });
        let full = peers.full();
        let names: Vec<&str> = full
            .upserted_workspaces
            .iter()
            .map(|w| w.name.as_str())
            .collect();
        // Ordinal: upper case before lower case.
        assert_eq!(names, ["Zed", "alpha"]);
        assert_eq!(full.upserted_agents.len(), 1);
        assert_eq!(full.upserted_agents[0].name, "main");
        assert!(full.deleted_workspaces.is_empty() && full.deleted_agents.is_empty());
    }

    #[test]
    fn delete_then_upsert_in_one_update_keeps_the_entry() {
        let mut peers = Peers::default();
        peers.apply(&PeerUpdate {
            upserted_workspaces: vec![ws(1, "a")],
            deleted_workspaces: vec![ws(1, "a")],
            ..PeerUpdate::default()
        });
        assert_eq!(peers.full().upserted_workspaces.len(), 1);
    }

    #[test]
    fn events_only_count_from_the_current_tunnel() {
        let mut state = ServiceState::default();
        assert_eq!(state.status().lifecycle, Lifecycle::Stopped as i32);
        state.generation = 2;
        state.lifecycle = Lifecycle::Started;
        assert!(state.death_counts(2));
        assert!(!state.death_counts(1));
        assert!(state.accepts_updates_from(2));
        assert!(!state.accepts_updates_from(1));
        state.lifecycle = Lifecycle::Stopping;
        assert!(!state.death_counts(2));
        assert!(!state.accepts_updates_from(2));
    }

    #[test]
    fn already_started_needs_same_request_and_version() {
        let request = StartRequest {
            coder_url: "http://x/".into(),
            api_token: "t".into(),
            ..StartRequest::default()
        };
        let mut state = ServiceState {
            lifecycle: Lifecycle::Started,
            last_start: Some((request.clone(), "v2.24.3".into())),
            ..ServiceState::default()
        };
        assert!(state.already_started(&request, "v2.24.3"));
        assert!(!state.already_started(&request, "v2.25.0"));
        let other = StartRequest {
            api_token: "u".into(),
            ..request.clone()
        };
        assert!(!state.already_started(&other, "v2.24.3"));
        state.lifecycle = Lifecycle::Stopped;
        assert!(!state.already_started(&request, "v2.24.3"));
    }
}
