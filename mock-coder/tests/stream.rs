//! The coordination stream: snapshot then diffs, nodes sent up, malformed
//! messages, dropped streams and the snapshot after them, several streams.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use codervpn_mock_coder::{Action, AgentSpec, CLOSE_GOING_AWAY, CLOSE_RESTART, Scenario};
use codervpn_reference_tunnel::control::api::{ClientMessage, Node, TunnelNode, WorkspaceStatus};
use common::{TOKEN, closed, dial, next_update, send_text, sorted, start, try_dial};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn demo_ids() -> (Vec<Uuid>, Vec<Uuid>) {
    let demo = Scenario::demo();
    let workspaces = demo.workspaces.iter().map(|w| w.id).collect();
    let agents = demo
        .workspaces
        .iter()
        .flat_map(|w| w.agents.iter().map(|a| a.id))
        .collect();
    (sorted(workspaces), sorted(agents))
}

#[tokio::test]
async fn snapshot_on_connect_then_one_diff_per_change() {
    let mock = start(Scenario::demo()).await;
    let mut ws = dial(&mock).await;
    assert_eq!(mock.stream_dials(), 1);

    let snapshot = next_update(&mut ws).await;
    assert!(snapshot.snapshot);
    let (workspaces, agents) = demo_ids();
    assert_eq!(
        sorted(snapshot.upserted_workspaces.iter().map(|w| w.id).collect()),
        workspaces
    );
    assert_eq!(
        sorted(snapshot.upserted_agents.iter().map(|a| a.id).collect()),
        agents
    );
    let stopped = snapshot
        .upserted_workspaces
        .iter()
        .find(|w| w.name == "old")
        .unwrap();
    assert_eq!(stopped.status, WorkspaceStatus::Stopped);
    assert!(snapshot.upserted_agents.iter().any(|a| a.node.is_none()));
    assert!(snapshot.upserted_agents.iter().any(|a| a.node.is_some()));

    let node = Node {
        public_key: "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=".into(),
        endpoint: Some("127.0.0.1:51820".parse().unwrap()),
    };
    mock.apply(Action::UpsertWorkspace {
        id: id(10),
        name: "new".into(),
        status: WorkspaceStatus::Starting,
        agents: vec![AgentSpec {
            id: id(11),
            name: "a".into(),
            node: None,
            external_node: Some(node.clone()),
        }],
    });
    let diff = next_update(&mut ws).await;
    assert!(!diff.snapshot);
    assert_eq!(diff.upserted_workspaces.len(), 1);
    assert_eq!(
        diff.upserted_workspaces[0].status,
        WorkspaceStatus::Starting
    );
    assert_eq!(diff.upserted_agents.len(), 1);
    assert_eq!(diff.upserted_agents[0].workspace_id, id(10));
    assert_eq!(diff.upserted_agents[0].node.as_ref(), Some(&node));

    mock.apply(Action::UpsertAgent {
        id: id(12),
        name: "b".into(),
        workspace_id: id(10),
        node: None,
    });
    let diff = next_update(&mut ws).await;
    assert_eq!(diff.upserted_agents[0].id, id(12));
    assert!(diff.upserted_workspaces.is_empty());

    mock.apply(Action::DeleteAgent {
        id: id(11),
        keep_running: false,
    });
    let diff = next_update(&mut ws).await;
    assert_eq!(diff.deleted_agents, [id(11)]);

    // An action that cannot apply sends nothing; the next one still does.
    mock.apply(Action::DeleteAgent {
        id: id(999),
        keep_running: false,
    });
    mock.apply(Action::DeleteWorkspace { id: id(10) });
    let diff = next_update(&mut ws).await;
    assert_eq!(diff.deleted_workspaces, [id(10)]);
    assert_eq!(diff.deleted_agents, [id(12)]);
    assert!(diff.upserted_agents.is_empty() && diff.upserted_workspaces.is_empty());

    mock.apply(Action::SendSnapshot);
    let again = next_update(&mut ws).await;
    assert_eq!(again, snapshot);
    mock.shutdown().await;
}

#[tokio::test]
async fn nodes_are_recorded_and_malformed_messages_ignored() {
    let mock = start(Scenario::demo()).await;
    let mut ws = dial(&mock).await;
    next_update(&mut ws).await;
    let node = TunnelNode {
        public_key: "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=".into(),
        endpoint: None,
        addresses: vec!["fd60:627a:a42b:1::/128".into()],
    };
    send_text(&mut ws, "this is not json").await;
    send_text(&mut ws, r#"{"type":"teleport"}"#).await;
    common::send_binary(&mut ws, &[1, 2, 3]).await;
    let text = serde_json::to_string(&ClientMessage::Node(node.clone())).unwrap();
    send_text(&mut ws, &text).await;
    common::eventually(|| !mock.tunnel_nodes().is_empty()).await;
    assert_eq!(mock.tunnel_nodes(), [node]);

    // Still open: a change still arrives.
    mock.apply(Action::DeleteAgent {
        id: Scenario::demo().workspaces[0].agents[0].id,
        keep_running: false,
    });
    assert_eq!(next_update(&mut ws).await.deleted_agents.len(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn drop_streams_refuses_dials_then_snapshots_without_deleted_workspaces() {
    let mut scenario = Scenario::demo();
    // An agentless workspace, as in protocol.md §12.7 (WorkspaceWithNoAgents).
    scenario
        .workspaces
        .push(codervpn_mock_coder::WorkspaceSpec {
            id: id(40),
            name: "empty".into(),
            status: WorkspaceStatus::Stopped,
            agents: Vec::new(),
        });
    let demo = Scenario::demo();
    let with_agent = demo.workspaces[0].clone();
    let mock = start(scenario).await;
    let mut ws = dial(&mock).await;
    let first = next_update(&mut ws).await;
    assert_eq!(first.upserted_workspaces.len(), 4);

    mock.apply(Action::DropStreams {
        reconnect_after_ms: 300,
    });
    assert_eq!(closed(&mut ws).await, Some(CLOSE_RESTART));
    let (status, body) = try_dial(&common::stream_url(&mock), Some(TOKEN))
        .await
        .err()
        .unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("retry"), "{body}");

    // Changes while away: only the next snapshot tells.
    mock.apply(Action::DeleteWorkspace { id: id(40) });
    mock.apply(Action::DeleteWorkspace { id: with_agent.id });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ws = dial(&mock).await;
    let snapshot = next_update(&mut ws).await;
    assert!(snapshot.snapshot);
    let workspaces: Vec<Uuid> = snapshot.upserted_workspaces.iter().map(|w| w.id).collect();
    assert_eq!(workspaces.len(), 2);
    assert!(!workspaces.contains(&id(40)));
    assert!(!workspaces.contains(&with_agent.id));
    assert!(
        snapshot
            .upserted_agents
            .iter()
            .all(|a| a.workspace_id != with_agent.id)
    );
    assert_eq!(snapshot.upserted_agents.len(), 3);
    assert_eq!(mock.stream_dials(), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn concurrent_streams_each_get_every_update() {
    let mock = start(Scenario::demo()).await;
    let mut a = dial(&mock).await;
    let mut b = dial(&mock).await;
    assert!(next_update(&mut a).await.snapshot);
    assert!(next_update(&mut b).await.snapshot);
    for n in 0..3 {
        mock.apply(Action::UpsertWorkspace {
            id: id(100 + n),
            name: format!("w{n}"),
            status: WorkspaceStatus::Running,
            agents: Vec::new(),
        });
    }
    for ws in [&mut a, &mut b] {
        for n in 0..3 {
            let diff = next_update(ws).await;
            assert_eq!(diff.upserted_workspaces[0].id, id(100 + n));
        }
    }
    assert_eq!(mock.stream_dials(), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_streams() {
    let mock = start(Scenario::demo()).await;
    let mut ws = dial(&mock).await;
    next_update(&mut ws).await;
    let url = mock.url();
    mock.shutdown().await;
    assert_eq!(closed(&mut ws).await, Some(CLOSE_GOING_AWAY));
    assert!(
        reqwest::get(format!("{url}/api/v2/buildinfo"))
            .await
            .is_err()
    );
}

/// On this single-threaded runtime the stream task cannot run while the
/// loop applies changes, so its receiver overflows: the stream is closed
/// (policy, 1008) instead of buffering, and a redial gets a snapshot.
#[tokio::test]
async fn a_lagging_stream_is_closed() {
    let mock = start(Scenario::demo()).await;
    let mut ws = dial(&mock).await;
    next_update(&mut ws).await;
    let count = codervpn_mock_coder::STREAM_BACKLOG as u128 + 10;
    for n in 0..count {
        mock.apply(Action::UpsertWorkspace {
            id: id(1000 + n),
            name: format!("w{n}"),
            status: WorkspaceStatus::Running,
            agents: Vec::new(),
        });
    }
    assert_eq!(
        closed(&mut ws).await,
        Some(codervpn_mock_coder::CLOSE_POLICY)
    );
    let mut ws = dial(&mock).await;
    let snapshot = next_update(&mut ws).await;
    assert_eq!(snapshot.upserted_workspaces.len(), 3 + count as usize);
    mock.shutdown().await;
}
