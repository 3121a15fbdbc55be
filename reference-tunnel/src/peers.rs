//! The tunnel's view of workspaces and agents, and the PeerUpdates it owes
//! the manager (protocol.md §6.6-§6.9, §9.3, §9.4).
//!
//! [`PeerState`] is pure: control-plane updates go in, PeerUpdates come
//! out, so every rule (naming, snapshot deletions, what a deleted entry
//! carries) is unit-tested without I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::SystemTime;

use codervpn_proto::ids::{agent_address, uuid_to_wire};
use codervpn_proto::{Agent, LastPing, PeerUpdate, Workspace};
use uuid::Uuid;

use crate::control::api::{AgentInfo, WorkspaceInfo, WorkspaceUpdate};

/// Go's zero time in Unix seconds: "never handshaked" (§6.7).
pub const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

#[derive(Debug, Clone)]
struct AgentEntry {
    info: AgentInfo,
    last_handshake: Option<SystemTime>,
    last_ping: Option<LastPing>,
}

/// Everything the tunnel knows, plus what it needs to name agents.
#[derive(Debug, Clone)]
pub struct PeerState {
    owner: String,
    suffix: String,
    workspaces: BTreeMap<Uuid, WorkspaceInfo>,
    agents: BTreeMap<Uuid, AgentEntry>,
    /// Agents per workspace, kept in step with `agents`: naming needs it
    /// for every agent (§9.4), and counting each time would be quadratic.
    agents_in: HashMap<Uuid, usize>,
}

impl PeerState {
    /// An empty state for `owner`'s workspaces under DNS `suffix`.
    pub fn new(owner: &str, suffix: &str) -> Self {
        PeerState {
            owner: owner.to_lowercase(),
            suffix: suffix.trim_matches('.').to_lowercase(),
            workspaces: BTreeMap::new(),
            agents: BTreeMap::new(),
            agents_in: HashMap::new(),
        }
    }

    /// Number of known agents.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Applies one control-plane update and returns the PeerUpdate that
    /// tells the manager about it (§6.8): upserts as given, deletions as
    /// given, and for a snapshot a deletion for everything known that the
    /// snapshot lacks, agentless workspaces included. Agents whose DNS names
    /// change as a side effect (a workspace gaining its second agent loses
    /// the `<workspace>.<suffix>.` name) are upserted again.
    pub fn apply(&mut self, update: WorkspaceUpdate) -> PeerUpdate {
        let touched = self.touched_workspaces(&update);
        let names_before: BTreeMap<Uuid, Vec<String>> = self
            .agents
            .values()
            .filter(|e| touched.contains(&e.info.workspace_id))
            .map(|e| (e.info.id, self.fqdns(&e.info)))
            .collect();
        let mut out = PeerUpdate::default();

        if update.snapshot {
            let keep_agents: BTreeSet<Uuid> = update.upserted_agents.iter().map(|a| a.id).collect();
            let keep_workspaces: BTreeSet<Uuid> =
                update.upserted_workspaces.iter().map(|w| w.id).collect();
            let gone: Vec<Uuid> = self
                .agents
                .keys()
                .filter(|id| !keep_agents.contains(id))
                .copied()
                .collect();
            for id in gone {
                if let Some(entry) = self.remove_agent(id) {
                    // Snapshot deletions carry only the identity (§6.7).
                    out.deleted_agents.push(Agent {
                        id: uuid_to_wire(id),
                        name: entry.info.name,
                        workspace_id: uuid_to_wire(entry.info.workspace_id),
                        ..Agent::default()
                    });
                }
            }
            let gone: Vec<Uuid> = self
                .workspaces
                .keys()
                .filter(|id| !keep_workspaces.contains(id))
                .copied()
                .collect();
            for id in gone {
                if let Some(ws) = self.workspaces.remove(&id) {
                    out.deleted_workspaces.push(workspace_proto(&ws));
                }
            }
        } else {
            for id in &update.deleted_agents {
                if let Some(entry) = self.remove_agent(*id) {
                    let mut agent = self.agent_proto(&entry);
                    agent.last_handshake = None;
                    agent.last_ping = None;
                    out.deleted_agents.push(agent);
                }
            }
            for id in &update.deleted_workspaces {
                if let Some(ws) = self.workspaces.remove(id) {
                    out.deleted_workspaces.push(workspace_proto(&ws));
                }
            }
        }

        for ws in update.upserted_workspaces {
            out.upserted_workspaces.push(workspace_proto(&ws));
            self.workspaces.insert(ws.id, ws);
        }
        let mut upserted = BTreeSet::new();
        for info in update.upserted_agents {
            upserted.insert(info.id);
            // An upsert keeps what the tunnel measured (§6.7: last_ping).
            let mut entry = self.remove_agent(info.id).unwrap_or(AgentEntry {
                info: info.clone(),
                last_handshake: None,
                last_ping: None,
            });
            entry.info = info;
            *self.agents_in.entry(entry.info.workspace_id).or_default() += 1;
            self.agents.insert(entry.info.id, entry);
        }
        let renamed: Vec<Uuid> = names_before
            .iter()
            .filter_map(|(id, before)| {
                let entry = self.agents.get(id)?;
                (*before != self.fqdns(&entry.info)).then_some(*id)
            })
            .collect();
        let emit: BTreeSet<Uuid> = renamed.into_iter().chain(upserted).collect();
        out.upserted_agents = emit
            .iter()
            .filter_map(|id| self.agents.get(id))
            .map(|entry| self.agent_proto(entry))
            .collect();
        out
    }

    /// Workspaces whose agent set or name an update may change, so the
    /// names of their agents may change too.
    fn touched_workspaces(&self, update: &WorkspaceUpdate) -> HashSet<Uuid> {
        if update.snapshot {
            return self.workspaces.keys().copied().collect();
        }
        let moved_from = update
            .upserted_agents
            .iter()
            .map(|a| a.id)
            .chain(update.deleted_agents.iter().copied())
            .filter_map(|id| self.agents.get(&id).map(|e| e.info.workspace_id));
        update
            .upserted_workspaces
            .iter()
            .map(|w| w.id)
            .chain(update.upserted_agents.iter().map(|a| a.workspace_id))
            .chain(moved_from)
            .collect()
    }

    fn remove_agent(&mut self, id: Uuid) -> Option<AgentEntry> {
        let entry = self.agents.remove(&id)?;
        if let Some(count) = self.agents_in.get_mut(&entry.info.workspace_id) {
            *count -= 1;
            if *count == 0 {
                self.agents_in.remove(&entry.info.workspace_id);
            }
        }
        Some(entry)
    }

    /// The full state: the reply to GetPeerUpdate (§6.6).
    pub fn full(&self) -> PeerUpdate {
        PeerUpdate {
            upserted_workspaces: self.workspaces.values().map(workspace_proto).collect(),
            upserted_agents: self.agents.values().map(|a| self.agent_proto(a)).collect(),
            ..PeerUpdate::default()
        }
    }

    /// The periodic update (§6.9 step 2): every agent, nothing else; `None`
    /// when no agent is known.
    pub fn periodic(&self) -> Option<PeerUpdate> {
        (!self.agents.is_empty()).then(|| PeerUpdate {
            upserted_agents: self.agents.values().map(|a| self.agent_proto(a)).collect(),
            ..PeerUpdate::default()
        })
    }

    /// Records a successful ping; ignored if the agent has gone (§6.9).
    pub fn record_ping(&mut self, agent: Uuid, ping: LastPing) {
        if let Some(entry) = self.agents.get_mut(&agent) {
            entry.last_ping = Some(ping);
        }
    }

    /// Records the time of a WireGuard handshake with `agent`.
    pub fn record_handshake(&mut self, agent: Uuid, at: SystemTime) {
        if let Some(entry) = self.agents.get_mut(&agent) {
            entry.last_handshake = Some(at);
        }
    }

    /// The agents, for the dataplane.
    pub fn agents(&self) -> impl Iterator<Item = &AgentInfo> {
        self.agents.values().map(|e| &e.info)
    }

    /// Every published name with its agent, for the DNS resolver (§9.4).
    pub fn dns_names(&self) -> impl Iterator<Item = (String, Uuid)> + '_ {
        self.agents
            .values()
            .flat_map(|e| self.fqdns(&e.info).into_iter().map(|n| (n, e.info.id)))
    }

    /// The agent's DNS names (§9.4): lower case, trailing dot, shortest
    /// first; `<workspace>.<suffix>.` only when the workspace has exactly
    /// one agent.
    fn fqdns(&self, agent: &AgentInfo) -> Vec<String> {
        let Some(ws) = self.workspaces.get(&agent.workspace_id) else {
            return Vec::new();
        };
        let (a, w, s) = (
            agent.name.to_lowercase(),
            ws.name.to_lowercase(),
            &self.suffix,
        );
        let mut names = vec![
            format!("{a}.{w}.me.{s}."),
            format!("{a}.{w}.{}.{s}.", self.owner),
        ];
        if self.agents_in.get(&agent.workspace_id) == Some(&1) {
            names.push(format!("{w}.{s}."));
        }
        names.sort_by_key(String::len);
        names.dedup();
        names
    }

    fn agent_proto(&self, entry: &AgentEntry) -> Agent {
        let info = &entry.info;
        Agent {
            id: uuid_to_wire(info.id),
            name: info.name.clone(),
            workspace_id: uuid_to_wire(info.workspace_id),
            fqdn: self.fqdns(info),
            ip_addrs: vec![agent_address(info.id).to_string()],
            last_handshake: Some(timestamp(entry.last_handshake)),
            last_ping: entry.last_ping.clone(),
        }
    }
}

fn workspace_proto(ws: &WorkspaceInfo) -> Workspace {
    Workspace {
        id: uuid_to_wire(ws.id),
        name: ws.name.clone(),
        status: ws.status.number(),
    }
}

/// A handshake time on the wire; Go's zero time when there was none (§6.7).
fn timestamp(at: Option<SystemTime>) -> prost_types::Timestamp {
    match at {
        Some(at) => prost_types::Timestamp::from(at),
        None => prost_types::Timestamp {
            seconds: GO_ZERO_TIME_SECONDS,
            nanos: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::WorkspaceStatus;

    fn uuid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn ws(n: u128, name: &str) -> WorkspaceInfo {
        WorkspaceInfo {
            id: uuid(n),
            name: name.into(),
            status: WorkspaceStatus::Running,
        }
    }

    fn agent(n: u128, name: &str, ws: u128) -> AgentInfo {
        AgentInfo {
            id: uuid(n),
            name: name.into(),
            workspace_id: uuid(ws),
            node: None,
        }
    }

    fn ids_of_agents(list: &[Agent]) -> BTreeSet<Uuid> {
        list.iter()
            .map(|a| Uuid::from_slice(&a.id).unwrap())
            .collect()
    }

    fn ids_of_workspaces(list: &[Workspace]) -> BTreeSet<Uuid> {
        list.iter()
            .map(|w| Uuid::from_slice(&w.id).unwrap())
            .collect()
    }

    /// Known: agents a1@ws1, a2@ws2, a4@ws1; workspaces ws1, ws2 (§12.7).
    fn known() -> PeerState {
        let mut state = PeerState::new("rootbeer", "coder");
        state.apply(WorkspaceUpdate {
            upserted_workspaces: vec![ws(1, "ws1"), ws(2, "ws2")],
            upserted_agents: vec![agent(11, "a1", 1), agent(12, "a2", 2), agent(14, "a4", 1)],
            ..WorkspaceUpdate::default()
        });
        state
    }

    fn snapshot(workspaces: &[u128], agents: &[(u128, u128)]) -> WorkspaceUpdate {
        WorkspaceUpdate {
            snapshot: true,
            upserted_workspaces: workspaces
                .iter()
                .map(|&w| ws(w, &format!("ws{w}")))
                .collect(),
            upserted_agents: agents
                .iter()
                .map(|&(a, w)| agent(a, &format!("a{}", a - 10), w))
                .collect(),
            ..WorkspaceUpdate::default()
        }
    }

    /// Name, known state, snapshot, expected deleted agents and workspaces.
    type SnapshotCase = (
        &'static str,
        PeerState,
        WorkspaceUpdate,
        &'static [u128],
        &'static [u128],
    );

    /// The snapshot table of §12.7.
    #[test]
    fn snapshot_deletions() {
        let cases: [SnapshotCase; 7] = [
            (
                "NoChange",
                known(),
                snapshot(&[1, 2], &[(11, 1), (12, 2), (14, 1)]),
                &[],
                &[],
            ),
            (
                "AgentAdded",
                known(),
                snapshot(&[1, 2, 3], &[(11, 1), (12, 2), (14, 1), (13, 3)]),
                &[],
                &[],
            ),
            (
                "AgentRemovedWorkspaceAlsoRemoved",
                known(),
                snapshot(&[1], &[(11, 1), (14, 1)]),
                &[12],
                &[2],
            ),
            (
                "AgentRemovedWorkspaceStays",
                known(),
                snapshot(&[1, 2], &[(11, 1), (12, 2)]),
                &[14],
                &[],
            ),
            (
                "InitialAgentsEmpty",
                PeerState::new("rootbeer", "coder"),
                snapshot(&[1, 2], &[(11, 1), (12, 2)]),
                &[],
                &[],
            ),
            (
                "UpdateEmpty",
                known(),
                snapshot(&[], &[]),
                &[11, 12, 14],
                &[1, 2],
            ),
            (
                "WorkspaceWithNoAgents",
                {
                    let mut s = known();
                    s.apply(WorkspaceUpdate {
                        upserted_workspaces: vec![ws(4, "ws4")],
                        ..WorkspaceUpdate::default()
                    });
                    s
                },
                snapshot(&[1, 2], &[(11, 1), (12, 2), (14, 1)]),
                &[],
                &[4],
            ),
        ];
        for (name, mut state, update, agents, workspaces) in cases {
            let out = state.apply(update);
            assert_eq!(
                ids_of_agents(&out.deleted_agents),
                agents.iter().map(|&n| uuid(n)).collect(),
                "{name}: deleted agents"
            );
            assert_eq!(
                ids_of_workspaces(&out.deleted_workspaces),
                workspaces.iter().map(|&n| uuid(n)).collect(),
                "{name}: deleted workspaces"
            );
            for deleted in &out.deleted_agents {
                assert!(deleted.fqdn.is_empty() && deleted.ip_addrs.is_empty());
                assert!(deleted.last_handshake.is_none() && deleted.last_ping.is_none());
                assert_eq!(deleted.workspace_id.len(), 16);
            }
            for deleted in &out.deleted_workspaces {
                assert!(
                    !deleted.name.is_empty(),
                    "{name}: deleted workspace has its name"
                );
            }
        }
    }

    /// §12.7 end to end: known w1/agent1, snapshot w2/agent3.
    #[test]
    fn snapshot_end_to_end() {
        let mut state = PeerState::new("me", "coder");
        state.apply(WorkspaceUpdate {
            upserted_workspaces: vec![ws(1, "w1")],
            upserted_agents: vec![agent(11, "agent1", 1)],
            ..WorkspaceUpdate::default()
        });
        let out = state.apply(WorkspaceUpdate {
            snapshot: true,
            upserted_workspaces: vec![ws(2, "w2")],
            upserted_agents: vec![agent(13, "agent3", 2)],
            ..WorkspaceUpdate::default()
        });
        assert_eq!(
            ids_of_workspaces(&out.upserted_workspaces),
            [uuid(2)].into()
        );
        assert_eq!(ids_of_agents(&out.upserted_agents), [uuid(13)].into());
        assert_eq!(ids_of_agents(&out.deleted_agents), [uuid(11)].into());
        assert_eq!(ids_of_workspaces(&out.deleted_workspaces), [uuid(1)].into());
        // Known agent1, snapshot w1 with agent2: no deleted workspace.
        let mut state = PeerState::new("me", "coder");
        state.apply(WorkspaceUpdate {
            upserted_workspaces: vec![ws(1, "w1")],
            upserted_agents: vec![agent(11, "agent1", 1)],
            ..WorkspaceUpdate::default()
        });
        let out = state.apply(WorkspaceUpdate {
            snapshot: true,
            upserted_workspaces: vec![ws(1, "w1")],
            upserted_agents: vec![agent(12, "agent2", 1)],
            ..WorkspaceUpdate::default()
        });
        assert_eq!(ids_of_agents(&out.deleted_agents), [uuid(11)].into());
        assert!(out.deleted_workspaces.is_empty());
    }

    /// §12.7 names and addresses, including the second-agent rule and
    /// the `float` suffix.
    #[test]
    fn names_addresses_and_zero_time() {
        let agent_id = Uuid::parse_str("01020304-0506-0708-090a-0b0c0d0e0f10").unwrap();
        let mut state = PeerState::new("RootBeer", "coder");
        let out = state.apply(WorkspaceUpdate {
            upserted_workspaces: vec![ws(1, "wrk")],
            upserted_agents: vec![AgentInfo {
                id: agent_id,
                name: "agnt".into(),
                workspace_id: uuid(1),
                node: None,
            }],
            ..WorkspaceUpdate::default()
        });
        let a = &out.upserted_agents[0];
        assert_eq!(
            a.fqdn,
            [
                "wrk.coder.",
                "agnt.wrk.me.coder.",
                "agnt.wrk.rootbeer.coder."
            ]
        );
        assert_eq!(a.ip_addrs, ["fd60:627a:a42b:708:90a:b0c:d0e:f10"]);
        assert_eq!(a.id.len(), 16);
        assert_eq!(a.last_handshake.unwrap().seconds, GO_ZERO_TIME_SECONDS);
        // A second agent removes `wrk.coder.` from the first: both upserted.
        let out = state.apply(WorkspaceUpdate {
            upserted_agents: vec![agent(2, "second", 1)],
            ..WorkspaceUpdate::default()
        });
        assert_eq!(out.upserted_agents.len(), 2);
        for a in &out.upserted_agents {
            assert_eq!(a.fqdn.len(), 2, "{:?}", a.fqdn);
            assert!(a.fqdn.iter().all(|n| n.ends_with(".coder.")));
            assert!(a.fqdn[0].len() <= a.fqdn[1].len());
        }
        let float = PeerState::new("rootbeer", "float.");
        assert_eq!(float.suffix, "float");
    }

    #[test]
    fn diff_deletions_keep_names_and_drop_measurements() {
        let mut state = known();
        state.record_ping(
            uuid(11),
            LastPing {
                did_p2p: true,
                ..LastPing::default()
            },
        );
        let out = state.apply(WorkspaceUpdate {
            deleted_agents: vec![uuid(11), uuid(99)],
            ..WorkspaceUpdate::default()
        });
        assert_eq!(out.deleted_agents.len(), 1, "unknown ids are ignored");
        let gone = &out.deleted_agents[0];
        assert!(!gone.fqdn.is_empty() && gone.last_ping.is_none() && gone.last_handshake.is_none());
    }

    #[test]
    fn pings_survive_upserts_and_periodic_lists_agents_only() {
        let mut state = PeerState::new("me", "coder");
        assert!(state.periodic().is_none(), "nothing sent without agents");
        state.apply(WorkspaceUpdate {
            upserted_workspaces: vec![ws(1, "w")],
            upserted_agents: vec![agent(11, "a", 1)],
            ..WorkspaceUpdate::default()
        });
        state.record_ping(
            uuid(11),
            LastPing {
                did_p2p: true,
                ..LastPing::default()
            },
        );
        state.apply(WorkspaceUpdate {
            upserted_agents: vec![agent(11, "a", 1)],
            ..WorkspaceUpdate::default()
        });
        let periodic = state.periodic().unwrap();
        assert!(periodic.upserted_workspaces.is_empty() && periodic.deleted_agents.is_empty());
        assert!(periodic.upserted_agents[0].last_ping.is_some());
        let full = state.full();
        assert_eq!(full.upserted_workspaces.len(), 1);
        assert!(full.deleted_agents.is_empty() && full.deleted_workspaces.is_empty());
    }
}
