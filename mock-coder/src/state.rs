//! The workspaces and agents the mock's user can reach, and the diffs that
//! changing them produces.
//!
//! Sans-IO: [`State::apply`] takes a change and returns the
//! [`WorkspaceUpdate`] the coordination stream must carry for it, so the
//! update rules are tested without sockets and the scenario loader can run a
//! timeline on paper to validate it. A full snapshot (protocol.md §6.8) is
//! just [`State::snapshot`]: everything, marked `snapshot: true`.
//!
//! Invariant: every agent belongs to a known workspace. Deleting a workspace
//! deletes its agents in the same update, as Coder does when a workspace
//! goes away.

use std::collections::BTreeMap;

use codervpn_reference_tunnel::control::api::{
    AgentInfo, Node, WorkspaceInfo, WorkspaceStatus, WorkspaceUpdate,
};
use uuid::Uuid;

use crate::scenario::{AgentSpec, WorkspaceSpec};

/// A change that cannot be applied; the state is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("unknown workspace {0}")]
    UnknownWorkspace(Uuid),
    #[error("unknown agent {0}")]
    UnknownAgent(Uuid),
    #[error("duplicate workspace id {0}")]
    DuplicateWorkspace(Uuid),
    #[error("duplicate agent id {0}")]
    DuplicateAgent(Uuid),
}

/// One change to the workspaces and agents (the state-changing
/// [`crate::Action`]s).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change<'a> {
    UpsertWorkspace {
        id: Uuid,
        name: &'a str,
        status: WorkspaceStatus,
        agents: &'a [AgentSpec],
    },
    DeleteWorkspace(Uuid),
    UpsertAgent {
        id: Uuid,
        name: &'a str,
        workspace_id: Uuid,
        node: Option<&'a Node>,
    },
    DeleteAgent(Uuid),
}

/// Workspaces and agents by id. Ordered maps keep snapshots deterministic.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    workspaces: BTreeMap<Uuid, WorkspaceInfo>,
    agents: BTreeMap<Uuid, AgentInfo>,
}

impl State {
    /// The initial state of a scenario; ids must be unique.
    pub(crate) fn new(workspaces: &[WorkspaceSpec]) -> Result<State, StateError> {
        let mut state = State::default();
        for workspace in workspaces {
            if state.workspaces.contains_key(&workspace.id) {
                return Err(StateError::DuplicateWorkspace(workspace.id));
            }
            for agent in &workspace.agents {
                if state.agents.contains_key(&agent.id) {
                    return Err(StateError::DuplicateAgent(agent.id));
                }
                state
                    .agents
                    .insert(agent.id, agent_info(agent, workspace.id));
            }
            state.workspaces.insert(
                workspace.id,
                WorkspaceInfo {
                    id: workspace.id,
                    name: workspace.name.clone(),
                    status: workspace.status,
                },
            );
        }
        Ok(state)
    }

    /// Everything, as the first message of every stream (§6.8).
    pub(crate) fn snapshot(&self) -> WorkspaceUpdate {
        WorkspaceUpdate {
            snapshot: true,
            upserted_workspaces: self.workspaces.values().cloned().collect(),
            upserted_agents: self.agents.values().cloned().collect(),
            deleted_workspaces: Vec::new(),
            deleted_agents: Vec::new(),
        }
    }

    /// The node published for agent `id`, if it exists and is online.
    pub(crate) fn agent_node(&self, id: Uuid) -> Option<&Node> {
        self.agents.get(&id)?.node.as_ref()
    }

    #[cfg(test)]
    pub(crate) fn workspace_count(&self) -> usize {
        self.workspaces.len()
    }

    #[cfg(test)]
    pub(crate) fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Applies `change` and returns the diff to send (`snapshot: false`).
    pub(crate) fn apply(&mut self, change: Change<'_>) -> Result<WorkspaceUpdate, StateError> {
        let mut update = WorkspaceUpdate::default();
        match change {
            Change::UpsertWorkspace {
                id,
                name,
                status,
                agents,
            } => {
                let workspace = WorkspaceInfo {
                    id,
                    name: name.to_owned(),
                    status,
                };
                self.workspaces.insert(id, workspace.clone());
                update.upserted_workspaces.push(workspace);
                for agent in agents {
                    let info = agent_info(agent, id);
                    self.agents.insert(agent.id, info.clone());
                    update.upserted_agents.push(info);
                }
            }
            Change::DeleteWorkspace(id) => {
                if self.workspaces.remove(&id).is_none() {
                    return Err(StateError::UnknownWorkspace(id));
                }
                self.agents.retain(|agent_id, agent| {
                    let keep = agent.workspace_id != id;
                    if !keep {
                        update.deleted_agents.push(*agent_id);
                    }
                    keep
                });
                update.deleted_workspaces.push(id);
            }
            Change::UpsertAgent {
                id,
                name,
                workspace_id,
                node,
            } => {
                if !self.workspaces.contains_key(&workspace_id) {
                    return Err(StateError::UnknownWorkspace(workspace_id));
                }
                let info = AgentInfo {
                    id,
                    name: name.to_owned(),
                    workspace_id,
                    node: node.cloned(),
                };
                self.agents.insert(id, info.clone());
                update.upserted_agents.push(info);
            }
            Change::DeleteAgent(id) => {
                if self.agents.remove(&id).is_none() {
                    return Err(StateError::UnknownAgent(id));
                }
                update.deleted_agents.push(id);
            }
        }
        Ok(update)
    }
}

fn agent_info(agent: &AgentSpec, workspace_id: Uuid) -> AgentInfo {
    AgentInfo {
        id: agent.id,
        name: agent.name.clone(),
        workspace_id,
        node: agent
            .external_node
            .as_ref()
            .or(agent.node.as_ref())
            .cloned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scenario;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn demo() -> State {
        State::new(&Scenario::demo().workspaces).unwrap()
    }

    #[test]
    fn snapshot_holds_everything() {
        let snapshot = demo().snapshot();
        assert!(snapshot.snapshot);
        assert_eq!(snapshot.upserted_workspaces.len(), 3);
        assert_eq!(snapshot.upserted_agents.len(), 4);
        assert!(snapshot.deleted_agents.is_empty() && snapshot.deleted_workspaces.is_empty());
    }

    #[test]
    fn deleting_a_workspace_deletes_its_agents_in_the_same_diff() {
        let mut state = demo();
        let scenario = Scenario::demo();
        let two_agents = scenario
            .workspaces
            .iter()
            .find(|w| w.agents.len() == 2)
            .unwrap();
        let update = state.apply(Change::DeleteWorkspace(two_agents.id)).unwrap();
        assert!(!update.snapshot);
        assert_eq!(update.deleted_workspaces, vec![two_agents.id]);
        let mut deleted = update.deleted_agents.clone();
        deleted.sort();
        let mut expected: Vec<Uuid> = two_agents.agents.iter().map(|a| a.id).collect();
        expected.sort();
        assert_eq!(deleted, expected);
        assert_eq!(state.agent_count(), 2);
        assert_eq!(state.workspace_count(), 2);
    }

    #[test]
    fn upserting_an_agent_needs_its_workspace() {
        let mut state = demo();
        let err = state
            .apply(Change::UpsertAgent {
                id: id(77),
                name: "x",
                workspace_id: id(78),
                node: None,
            })
            .unwrap_err();
        assert_eq!(err, StateError::UnknownWorkspace(id(78)));
        assert_eq!(state.agent_count(), 4);
    }

    #[test]
    fn upserting_a_workspace_with_agents_is_one_diff() {
        let mut state = State::default();
        let agents = [AgentSpec {
            id: id(2),
            name: "a".into(),
            node: None,
            external_node: None,
        }];
        let update = state
            .apply(Change::UpsertWorkspace {
                id: id(1),
                name: "w",
                status: WorkspaceStatus::Starting,
                agents: &agents,
            })
            .unwrap();
        assert_eq!(update.upserted_workspaces.len(), 1);
        assert_eq!(update.upserted_agents[0].workspace_id, id(1));
        assert_eq!(state.snapshot().upserted_agents.len(), 1);
    }

    #[test]
    fn unknown_deletions_are_errors_and_change_nothing() {
        let mut state = demo();
        assert_eq!(
            state.apply(Change::DeleteAgent(id(5))).unwrap_err(),
            StateError::UnknownAgent(id(5))
        );
        assert_eq!(
            state.apply(Change::DeleteWorkspace(id(5))).unwrap_err(),
            StateError::UnknownWorkspace(id(5))
        );
        assert_eq!(state.agent_count(), 4);
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let mut workspaces = Scenario::demo().workspaces;
        workspaces.push(workspaces[0].clone());
        assert!(matches!(
            State::new(&workspaces),
            Err(StateError::DuplicateWorkspace(_))
        ));
        let mut workspaces = Scenario::demo().workspaces;
        let agent = workspaces[0].agents[0].clone();
        workspaces[1].agents.push(agent);
        assert!(matches!(
            State::new(&workspaces),
            Err(StateError::DuplicateAgent(_))
        ));
    }
}
