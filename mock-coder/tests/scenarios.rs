//! The shipped scenario files and the JSON Schema agree with the code.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use codervpn_mock_coder::cli::{self, MockCoderArgs};
use codervpn_mock_coder::{Action, AgentSpec, Scenario};
use codervpn_reference_tunnel::control::api::{Node, WorkspaceStatus};
use serde_json::Value;
use uuid::Uuid;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> Value {
    let path = crate_dir().join("../docs/scenario.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_shipped_scenario_parses() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(crate_dir().join("scenarios"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"demo.json".to_owned()), "{names:?}");
    assert!(names.contains(&"reconnect.json".to_owned()), "{names:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if let Err(err) = Scenario::from_json(&text) {
            panic!("{}: {err}", file.display());
        }
    }
}

#[test]
fn demo_file_is_the_built_in_demo() {
    let demo = Scenario::from_file(&crate_dir().join("scenarios/demo.json")).unwrap();
    assert_eq!(demo, Scenario::demo());
}

#[test]
fn schema_top_level_matches_the_scenario_struct() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    // Every field the struct has (the demo serializes all of them).
    let demo = serde_json::to_value(Scenario::demo()).unwrap();
    assert_eq!(keys(&schema["properties"]), keys(&demo));
    // A field is required exactly when removing it breaks parsing.
    let required: BTreeSet<String> = keys(&demo)
        .into_iter()
        .filter(|key| {
            let mut value = demo.clone();
            value.as_object_mut().unwrap().remove(key);
            Scenario::from_json(&value.to_string()).is_err()
        })
        .collect();
    assert_eq!(strings(&schema["required"]), required);
}

/// One of each action, every optional field set.
fn every_action() -> Vec<Action> {
    let node = Some(Node {
        public_key: "ERERERERERERERERERERERERERERERERERERERERERE=".into(),
        endpoint: Some("127.0.0.1:1".parse().unwrap()),
    });
    let path = Some("/api/v2/users/me".to_owned());
    vec![
        Action::UpsertWorkspace {
            id: Uuid::nil(),
            name: "w".into(),
            status: WorkspaceStatus::Running,
            agents: vec![AgentSpec {
                id: Uuid::nil(),
                name: "a".into(),
                node: node.clone(),
                external_node: None,
            }],
        },
        Action::DeleteWorkspace { id: Uuid::nil() },
        Action::UpsertAgent {
            id: Uuid::nil(),
            name: "a".into(),
            workspace_id: Uuid::nil(),
            node,
        },
        Action::DeleteAgent {
            id: Uuid::nil(),
            keep_running: true,
        },
        Action::DropStreams {
            reconnect_after_ms: 1,
        },
        Action::FailRequests {
            count: 1,
            status: 500,
            path: path.clone(),
        },
        Action::DelayResponses {
            ms: 1,
            count: Some(1),
            path: path.clone(),
        },
        Action::CorruptResponses { count: 1, path },
        Action::SendSnapshot,
    ]
}

#[test]
fn schema_actions_match_the_action_enum() {
    let schema = schema();
    let defs = &schema["$defs"];
    let listed: BTreeSet<String> = schema["$defs"]["step"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["$ref"]
                .as_str()
                .unwrap()
                .trim_start_matches("#/$defs/")
                .to_owned()
        })
        .collect();
    let actions = every_action();
    let names: BTreeSet<String> = actions.iter().map(|a| a.name().to_owned()).collect();
    assert_eq!(listed, names);
    for action in actions {
        let def = &defs[action.name()];
        assert_eq!(def["properties"]["action"]["const"], action.name());
        let value = serde_json::to_value(&action).unwrap();
        assert_eq!(keys(&def["properties"]), keys(&value), "{}", action.name());
    }
}

#[tokio::test]
async fn cli_reports_a_bad_scenario_file_with_its_name_and_line() {
    let path = crate_dir().join("tests/fixtures/bad-scenario.json");
    let err = cli::run(MockCoderArgs {
        listen: "127.0.0.1:0".parse().unwrap(),
        scenario: Some(path),
        token: cli::DEFAULT_TOKEN.into(),
        agent_bind: "127.0.0.1".parse().unwrap(),
        download_size: 0,
        download_rate: 0,
        download_no_length: false,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad-scenario.json"), "{err}");
    assert!(err.contains("stauts") && err.contains("line 4"), "{err}");

    let missing = crate_dir().join("tests/fixtures/no-such-file.json");
    let err = Scenario::from_file(&missing).unwrap_err().to_string();
    assert!(err.contains("no-such-file.json"), "{err}");
}

#[test]
fn cli_arguments_have_the_documented_defaults() {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: MockCoderArgs,
    }
    let parsed = Wrapper::try_parse_from(["mock-coder"]).unwrap().args;
    assert_eq!(parsed.listen.to_string(), "127.0.0.1:0");
    assert_eq!(parsed.token, cli::DEFAULT_TOKEN);
    assert!(parsed.scenario.is_none());
    assert_eq!(parsed.agent_bind.to_string(), "127.0.0.1");
    assert_eq!(parsed.download_size, 4 * 1024 * 1024);
    assert_eq!(parsed.download_rate, 6 * 1024 * 1024);
    assert!(!parsed.download_no_length);
    let parsed = Wrapper::try_parse_from([
        "mock-coder",
        "--listen",
        "127.0.0.1:9",
        "--scenario",
        "s.json",
        "--token",
        "t",
        "--agent-bind",
        "10.0.0.2",
    ])
    .unwrap()
    .args;
    assert_eq!(parsed.agent_bind.to_string(), "10.0.0.2");
    assert_eq!(parsed.listen.port(), 9);
    assert_eq!(parsed.token, "t");
    assert_eq!(parsed.scenario.unwrap(), Path::new("s.json"));
}

/// Every JSON example in docs/control-plane.md is what the code reads.
#[test]
fn doc_examples_parse() {
    use codervpn_mock_coder::{AgentStats, RecordedRequest};
    use codervpn_reference_tunnel::control::api::{ApiError, ClientMessage, ServerMessage};

    let doc = std::fs::read_to_string(crate_dir().join("../docs/control-plane.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```json\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap())
        .collect();
    assert!(blocks.len() >= 6, "{}", blocks.len());
    let mut seen = BTreeSet::new();
    for block in blocks {
        for value in serde_json::Deserializer::from_str(block).into_iter::<Value>() {
            let value = value.unwrap_or_else(|err| panic!("{err}: {block}"));
            let kind = match value.get("type").and_then(Value::as_str) {
                Some("update") => serde_json::from_value::<ServerMessage>(value)
                    .map(|_| "update")
                    .map_err(|e| e.to_string()),
                Some("node") => serde_json::from_value::<ClientMessage>(value)
                    .map(|_| "node")
                    .map_err(|e| e.to_string()),
                // `GET /_mock/agents`: agents have a public key.
                _ if value.get(0).is_some_and(|v| v.get("public_key").is_some()) => {
                    serde_json::from_value::<Vec<AgentStats>>(value)
                        .map(|_| "agents")
                        .map_err(|e| e.to_string())
                }
                _ if value.is_array() => serde_json::from_value::<Vec<RecordedRequest>>(value)
                    .map(|_| "record")
                    .map_err(|e| e.to_string()),
                // The complete example is the shipped reconnect.json.
                _ if value.get("workspaces").is_some() => Scenario::from_json(&value.to_string())
                    .map(|scenario| {
                        let file = crate_dir().join("scenarios/reconnect.json");
                        assert_eq!(scenario, Scenario::from_file(&file).unwrap());
                        "scenario"
                    })
                    .map_err(|e| e.to_string()),
                _ => serde_json::from_value::<ApiError>(value)
                    .map(|_| "error")
                    .map_err(|e| e.to_string()),
            };
            seen.insert(kind.unwrap_or_else(|err| panic!("{err}: {block}")));
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["update", "node", "record", "agents", "scenario", "error"])
    );
}
