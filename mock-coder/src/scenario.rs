//! The scenario: what the mock serves at start and what it does over time.
//!
//! A scenario file (JSON, schema in `docs/scenario.schema.json`, prose in
//! `docs/control-plane.md`) gives the user, the hostname suffix and version,
//! the initial workspaces with their agents, and a timeline of [`Step`]s.
//! The timeline covers what protocol.md §9.1 asks a mock control plane to
//! do: change workspaces and agents (diffs, §6.8), drop the coordination
//! stream and come back with a full snapshot, fail, delay (hang) or corrupt
//! responses.
//!
//! Unknown fields are rejected so that a typo is an error, not a silently
//! ignored line. [`Scenario::from_json`] also runs the timeline on paper and
//! rejects steps that could never apply (an agent in a workspace that does
//! not exist at that time, a deletion of something unknown).

use std::net::SocketAddr;
use std::path::Path;

use codervpn_reference_tunnel::control::api::{Node, User, WorkspaceStatus};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::error::ScenarioError;
use crate::state::{Change, State};

/// Everything the mock serves, and the timeline it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// `GET /api/v2/users/me` (§9.1 step 1); owner part of DNS names (§9.4).
    pub user: User,
    /// `hostname_suffix` of `GET /api/v2/workspaceagents/connection`.
    #[serde(default = "default_suffix")]
    pub hostname_suffix: String,
    /// `version` of `GET /api/v2/buildinfo` (§9.2).
    #[serde(default = "default_version")]
    pub version: String,
    /// `disable_direct_connections` of the connection info (§9.1 step 2).
    #[serde(default)]
    pub disable_direct_connections: bool,
    /// The initial workspaces, each with its agents.
    pub workspaces: Vec<WorkspaceSpec>,
    /// Steps run at their `at_ms` after the mock starts, in time order.
    #[serde(default)]
    pub timeline: Vec<Step>,
}

/// A workspace and its agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    pub id: Uuid,
    pub name: String,
    /// Coder's build status; `running` when absent.
    #[serde(default = "default_status")]
    pub status: WorkspaceStatus,
    #[serde(default)]
    pub agents: Vec<AgentSpec>,
}

/// An agent inside a [`WorkspaceSpec`] (its workspace is the enclosing one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub id: Uuid,
    pub name: String,
    /// Present when the agent is online. The mock then runs an embedded
    /// agent (a WireGuard peer on its own UDP socket) and publishes *that*
    /// agent's key and endpoint: the key written here is only checked for
    /// form. Absent while the agent is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    /// An external WireGuard peer (e.g. wireguard-go in a network
    /// namespace) published exactly as given instead of an embedded agent.
    /// Needs both `public_key` and `endpoint`; excludes `node`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "external_node"
    )]
    pub external_node: Option<Node>,
}

/// One timeline entry: `action` at `at_ms` milliseconds after start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub at_ms: u64,
    #[serde(flatten)]
    pub action: Action,
}

/// Something the mock does, from the timeline or from a test through
/// [`crate::MockCoder::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Add or replace a workspace; the listed agents are upserted in the
    /// same diff (agents of the workspace not listed are left as they are).
    UpsertWorkspace {
        id: Uuid,
        name: String,
        #[serde(default = "default_status")]
        status: WorkspaceStatus,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        agents: Vec<AgentSpec>,
    },
    /// Delete a workspace and, in the same diff, its agents.
    DeleteWorkspace { id: Uuid },
    /// Add or replace (or move) an agent of an existing workspace.
    UpsertAgent {
        id: Uuid,
        name: String,
        workspace_id: Uuid,
        /// Online with an embedded agent (see [`AgentSpec::node`]). An
        /// external node is given with `upsert_workspace` and its `agents`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<Node>,
    },
    DeleteAgent {
        id: Uuid,
        /// Keep its embedded WireGuard peer answering after the control
        /// plane forgets it (until shutdown or a new upsert), so a case can
        /// tell "the tunnel dropped the session" from "the agent is gone".
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keep_running: bool,
    },
    /// Close every coordination stream now and answer new dials with 503
    /// for `reconnect_after_ms`. Changes made meanwhile reach the tunnel
    /// only through the snapshot of its next dial (§6.8).
    DropStreams { reconnect_after_ms: u64 },
    /// The next `count` requests (to `path` if given) get `status` and an
    /// `ApiError` body. `count: 0` cancels the rule for that path.
    FailRequests {
        count: u32,
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// Hold the next `count` responses (all when absent) to `path` (any
    /// when absent) for `ms`; a long delay is a hang. `ms: 0` cancels.
    DelayResponses {
        ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// The next `count` responses (to `path` if given) are `200` with a
    /// body that is not JSON (§9.1: "malformed JSON"). `count: 0` cancels.
    CorruptResponses {
        count: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// Send a full snapshot (`snapshot: true`) on every open stream, as
    /// Coder does after its own reconnects (§6.8).
    SendSnapshot,
}

impl Action {
    /// The state change this action makes, if it is one.
    pub(crate) fn change(&self) -> Option<Change<'_>> {
        Some(match self {
            Action::UpsertWorkspace {
                id,
                name,
                status,
                agents,
            } => Change::UpsertWorkspace {
                id: *id,
                name,
                status: *status,
                agents,
            },
            Action::DeleteWorkspace { id } => Change::DeleteWorkspace(*id),
            Action::UpsertAgent {
                id,
                name,
                workspace_id,
                node,
            } => Change::UpsertAgent {
                id: *id,
                name,
                workspace_id: *workspace_id,
                node: node.as_ref(),
            },
            Action::DeleteAgent { id, .. } => Change::DeleteAgent(*id),
            Action::DropStreams { .. }
            | Action::FailRequests { .. }
            | Action::DelayResponses { .. }
            | Action::CorruptResponses { .. }
            | Action::SendSnapshot => return None,
        })
    }

    /// The action's name as written in a scenario file.
    pub fn name(&self) -> &'static str {
        match self {
            Action::UpsertWorkspace { .. } => "upsert_workspace",
            Action::DeleteWorkspace { .. } => "delete_workspace",
            Action::UpsertAgent { .. } => "upsert_agent",
            Action::DeleteAgent { .. } => "delete_agent",
            Action::DropStreams { .. } => "drop_streams",
            Action::FailRequests { .. } => "fail_requests",
            Action::DelayResponses { .. } => "delay_responses",
            Action::CorruptResponses { .. } => "corrupt_responses",
            Action::SendSnapshot => "send_snapshot",
        }
    }

    /// Checks that do not depend on the state: paths, statuses, keys.
    fn check(&self) -> Result<(), String> {
        let path = match self {
            Action::FailRequests { status, path, .. } => {
                if !(400..=599).contains(status) {
                    return Err(format!("status {status} is not an HTTP error (400-599)"));
                }
                path
            }
            Action::DelayResponses { path, .. } | Action::CorruptResponses { path, .. } => path,
            Action::UpsertAgent { node, .. } => return check_node(node.as_ref()),
            Action::UpsertWorkspace { agents, .. } => {
                return agents.iter().try_for_each(|a| {
                    check_agent(a.node.as_ref(), a.external_node.as_ref())
                        .map_err(|err| format!("agent {}: {err}", a.id))
                });
            }
            _ => return Ok(()),
        };
        match path {
            Some(path) if !path.starts_with('/') => {
                Err(format!("path {path:?} must start with '/'"))
            }
            _ => Ok(()),
        }
    }
}

fn default_suffix() -> String {
    "coder".to_owned()
}

fn default_version() -> String {
    "v2.24.3".to_owned()
}

fn default_status() -> WorkspaceStatus {
    WorkspaceStatus::Running
}

/// An agent's `node` and `external_node`: at most one, each well formed,
/// and an external node with an endpoint (nothing else could reach it).
fn check_agent(node: Option<&Node>, external: Option<&Node>) -> Result<(), String> {
    match (node, external) {
        (Some(_), Some(_)) => Err("give node (embedded agent) or external_node, not both".into()),
        (node, None) => check_node(node),
        (None, Some(external)) => {
            check_node(Some(external)).map_err(|err| format!("external_node: {err}"))?;
            match external.endpoint {
                Some(_) => Ok(()),
                None => Err("external_node: endpoint (ip:port) is required".into()),
            }
        }
    }
}

/// Reads `external_node` with its endpoint as text, so that a bad key or
/// endpoint is named in the error (serde_json adds line and column).
fn external_node<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Node>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Raw {
        public_key: String,
        endpoint: String,
    }
    let Some(raw) = Option::<Raw>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let node = Node {
        public_key: raw.public_key,
        endpoint: None,
    };
    check_node(Some(&node)).map_err(|err| D::Error::custom(format!("external_node: {err}")))?;
    let endpoint: SocketAddr = raw.endpoint.parse().map_err(|_| {
        D::Error::custom(format!(
            "external_node: endpoint {:?} is not an ip:port UDP address",
            raw.endpoint
        ))
    })?;
    Ok(Some(Node {
        endpoint: Some(endpoint),
        ..node
    }))
}

/// A WireGuard public key in standard base64: 44 characters encoding 32
/// bytes, so the last one is `=` and the one before it carries 4 bits.
fn check_node(node: Option<&Node>) -> Result<(), String> {
    let Some(node) = node else { return Ok(()) };
    let key = node.public_key.as_bytes();
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/';
    let valid = key.len() == 44
        && key[..43].iter().all(base64)
        && key[43] == b'='
        && b"AEIMQUYcgkosw048".contains(&key[42]);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "public_key {:?} is not a base64 WireGuard key (44 characters, 32 bytes)",
            node.public_key
        ))
    }
}

impl Scenario {
    /// Parses and validates a scenario.
    pub fn from_json(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = serde_json::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates a scenario file; errors name the file.
    pub fn from_file(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Scenario::from_json(&text).map_err(|source| ScenarioError::File {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks what serde cannot: unique ids, keys, and that every timeline
    /// step applies to the state the earlier steps leave.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let mut state = State::new(&self.workspaces)
            .map_err(|err| ScenarioError::Invalid(format!("workspaces: {err}")))?;
        for workspace in &self.workspaces {
            for agent in &workspace.agents {
                check_agent(agent.node.as_ref(), agent.external_node.as_ref())
                    .map_err(|err| ScenarioError::Invalid(format!("agent {}: {err}", agent.id)))?;
            }
        }
        // The order the timeline runs them in: by time, stable for ties.
        let mut steps: Vec<(usize, &Step)> = self.timeline.iter().enumerate().collect();
        steps.sort_by_key(|(_, step)| step.at_ms);
        for (index, step) in steps {
            let invalid = |err: String| {
                ScenarioError::Invalid(format!(
                    "timeline[{index}] ({} at {} ms): {err}",
                    step.action.name(),
                    step.at_ms
                ))
            };
            step.action.check().map_err(invalid)?;
            if let Some(change) = step.action.change() {
                state
                    .apply(change)
                    .map_err(|err| invalid(err.to_string()))?;
            }
        }
        Ok(())
    }

    /// The built-in demo: user `rootbeer`, suffix `coder`, three workspaces
    /// and four agents (names from protocol.md §12.7 where they fit):
    ///
    /// | workspace | status | agents |
    /// |---|---|---|
    /// | `wrk` | running | `agnt` |
    /// | `dev` | running | `main`, `gpu` |
    /// | `old` | stopped | `agnt` (offline: no node) |
    ///
    /// Agent ids end in zeros so their addresses read well: `agnt.wrk` is
    /// `00000000-0000-0101-0000-000000000000`, i.e. `fd60:627a:a42b:101::`
    /// (the §12.7 vector). The same data ships as `scenarios/demo.json`.
    pub fn demo() -> Scenario {
        let id = |text: &str| Uuid::parse_str(text).unwrap_or_default();
        let node = |key: &str| {
            Some(Node {
                public_key: key.to_owned(),
                endpoint: None,
            })
        };
        let agent = |text: &str, name: &str, node: Option<Node>| AgentSpec {
            id: id(text),
            name: name.to_owned(),
            node,
            external_node: None,
        };
        Scenario {
            user: User {
                id: id("00000000-0000-0000-0000-000000000001"),
                username: "rootbeer".to_owned(),
            },
            hostname_suffix: default_suffix(),
            version: default_version(),
            disable_direct_connections: false,
            workspaces: vec![
                WorkspaceSpec {
                    id: id("00000000-0000-0100-0000-000000000000"),
                    name: "wrk".to_owned(),
                    status: WorkspaceStatus::Running,
                    agents: vec![agent(
                        "00000000-0000-0101-0000-000000000000",
                        "agnt",
                        node("ERERERERERERERERERERERERERERERERERERERERERE="),
                    )],
                },
                WorkspaceSpec {
                    id: id("00000000-0000-0200-0000-000000000000"),
                    name: "dev".to_owned(),
                    status: WorkspaceStatus::Running,
                    agents: vec![
                        agent(
                            "00000000-0000-0201-0000-000000000000",
                            "main",
                            node("ISEhISEhISEhISEhISEhISEhISEhISEhISEhISEhISE="),
                        ),
                        agent(
                            "00000000-0000-0202-0000-000000000000",
                            "gpu",
                            node("IiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiIiI="),
                        ),
                    ],
                },
                WorkspaceSpec {
                    id: id("00000000-0000-0300-0000-000000000000"),
                    name: "old".to_owned(),
                    status: WorkspaceStatus::Stopped,
                    agents: vec![agent("00000000-0000-0301-0000-000000000000", "agnt", None)],
                },
            ],
            timeline: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        r#"{"user":{"id":"00000000-0000-0000-0000-000000000001","username":"u"},"workspaces":[]}"#;

    #[test]
    fn demo_is_valid_and_has_the_promised_shape() {
        let demo = Scenario::demo();
        demo.validate().unwrap();
        assert_eq!(demo.user.username, "rootbeer");
        assert_eq!(demo.workspaces.len(), 3);
        let agents: usize = demo.workspaces.iter().map(|w| w.agents.len()).sum();
        assert_eq!(agents, 4);
        assert!(demo.workspaces.iter().any(|w| w.agents.len() > 1));
        assert!(
            demo.workspaces
                .iter()
                .any(|w| w.status == WorkspaceStatus::Stopped)
        );
    }

    #[test]
    fn defaults_apply() {
        let scenario = Scenario::from_json(MINIMAL).unwrap();
        assert_eq!(scenario.hostname_suffix, "coder");
        assert_eq!(scenario.version, "v2.24.3");
        assert!(scenario.timeline.is_empty());
    }

    #[test]
    fn steps_parse_with_flattened_actions() {
        let step: Step = serde_json::from_str(
            r#"{"at_ms": 5, "action": "delay_responses", "ms": 100, "path": "/api/v2/users/me"}"#,
        )
        .unwrap();
        assert_eq!(
            step,
            Step {
                at_ms: 5,
                action: Action::DelayResponses {
                    ms: 100,
                    count: None,
                    path: Some("/api/v2/users/me".into())
                }
            }
        );
        let step: Step =
            serde_json::from_str(r#"{"at_ms": 0, "action": "send_snapshot"}"#).unwrap();
        assert_eq!(step.action, Action::SendSnapshot);
    }

    #[test]
    fn unknown_fields_are_rejected_everywhere() {
        let top = MINIMAL.replace("\"workspaces\"", "\"wokspaces\":[],\"workspaces\"");
        assert!(Scenario::from_json(&top).is_err());
        let step = MINIMAL.replace(
            "\"workspaces\":[]",
            r#""workspaces":[],"timeline":[{"at_ms":1,"action":"drop_streams","reconnect_after_ms":1,"extra":2}]"#,
        );
        let err = Scenario::from_json(&step).unwrap_err().to_string();
        assert!(err.contains("extra"), "{err}");
        let action = MINIMAL.replace(
            "\"workspaces\":[]",
            r#""workspaces":[],"timeline":[{"at_ms":1,"action":"explode"}]"#,
        );
        assert!(Scenario::from_json(&action).is_err());
    }

    #[test]
    fn json_errors_name_line_and_column() {
        let err = Scenario::from_json("{\n  \"user\": 3\n}").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 2"), "{text}");
    }

    #[test]
    fn timeline_is_checked_in_time_order() {
        // Written out of order: the agent is upserted (at 20) after its
        // workspace (at 10), which is valid.
        let ok = MINIMAL.replace(
            "\"workspaces\":[]",
            r#""workspaces":[],"timeline":[
                {"at_ms":20,"action":"upsert_agent","id":"00000000-0000-0000-0000-000000000003","name":"a","workspace_id":"00000000-0000-0000-0000-000000000002"},
                {"at_ms":10,"action":"upsert_workspace","id":"00000000-0000-0000-0000-000000000002","name":"w"}]"#,
        );
        Scenario::from_json(&ok).unwrap();
        let bad = ok.replace("\"at_ms\":20", "\"at_ms\":5");
        let err = Scenario::from_json(&bad).unwrap_err().to_string();
        assert!(
            err.contains("timeline[0]") && err.contains("unknown workspace"),
            "{err}"
        );
    }

    fn with_agent(agent: &str) -> String {
        MINIMAL.replace(
            "\"workspaces\":[]",
            &format!(
                r#""workspaces":[{{"id":"00000000-0000-0000-0000-000000000002","name":"w","agents":[{agent}]}}]"#
            ),
        )
    }

    #[test]
    fn external_nodes_parse_and_errors_name_the_problem() {
        let good = with_agent(
            r#"{"id":"00000000-0000-0000-0000-000000000003","name":"a","external_node":{"public_key":"ERERERERERERERERERERERERERERERERERERERERERE=","endpoint":"10.0.0.2:51820"}}"#,
        );
        let scenario = Scenario::from_json(&good).unwrap();
        let external = scenario.workspaces[0].agents[0]
            .external_node
            .clone()
            .unwrap();
        assert_eq!(external.endpoint, Some("10.0.0.2:51820".parse().unwrap()));
        // Serializes back to what it read.
        let again = serde_json::to_string(&scenario).unwrap();
        assert_eq!(Scenario::from_json(&again).unwrap(), scenario);

        let cases = [
            (good.replace("\"10.0.0.2:51820\"", "\"10.0.0.2\""), "endpoint \"10.0.0.2\" is not an ip:port"),
            (good.replace("ERERERERERERERERERERERERERERERERERERERERERE=", "short"), "public_key \"short\""),
            (good.replace(",\"endpoint\":\"10.0.0.2:51820\"", ""), "missing field `endpoint`"),
            (good.replace("\"external_node\"", "\"node\":{\"public_key\":\"ERERERERERERERERERERERERERERERERERERERERERE=\"},\"external_node\""), "not both"),
        ];
        for (text, expected) in cases {
            let err = Scenario::from_json(&text).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
            assert!(
                err.contains("external_node") || err.contains("endpoint"),
                "{err}"
            );
        }
        // Built in Rust rather than parsed: the same checks.
        let mut scenario = scenario;
        scenario.workspaces[0].agents[0].external_node = Some(Node {
            public_key: "ERERERERERERERERERERERERERERERERERERERERERE=".into(),
            endpoint: None,
        });
        let err = scenario.validate().unwrap_err().to_string();
        assert!(err.contains("endpoint (ip:port) is required"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        for step in [
            r#"{"at_ms":1,"action":"fail_requests","count":1,"status":200}"#,
            r#"{"at_ms":1,"action":"fail_requests","count":1,"status":500,"path":"api/v2"}"#,
            r#"{"at_ms":1,"action":"delete_agent","id":"00000000-0000-0000-0000-000000000009"}"#,
            r#"{"at_ms":1,"action":"upsert_workspace","id":"00000000-0000-0000-0000-000000000002","name":"w","agents":[{"id":"00000000-0000-0000-0000-000000000003","name":"a","node":{"public_key":"short"}}]}"#,
        ] {
            let text = MINIMAL.replace(
                "\"workspaces\":[]",
                &format!(r#""workspaces":[],"timeline":[{step}]"#),
            );
            assert!(
                matches!(Scenario::from_json(&text), Err(ScenarioError::Invalid(_))),
                "{step}"
            );
        }
    }
}
