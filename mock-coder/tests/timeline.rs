//! The scenario timeline: steps fire at their time, in time order.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use codervpn_mock_coder::{Action, Scenario, Step};
use codervpn_reference_tunnel::control::api::WorkspaceStatus;
use common::{dial, next_update, start};
use uuid::Uuid;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn workspace_ids(mock: &codervpn_mock_coder::MockCoder) -> Vec<Uuid> {
    mock.state()
        .upserted_workspaces
        .iter()
        .map(|w| w.id)
        .collect()
}

/// Paused clock: no real waiting, and no HTTP (auto-advance would fire
/// client timeouts), only the mock's own state.
#[tokio::test(start_paused = true)]
async fn steps_fire_at_their_time_on_a_paused_clock() {
    let mut scenario = Scenario::demo();
    scenario.workspaces.clear();
    scenario.timeline = vec![
        Step {
            at_ms: 3_600_000,
            action: Action::DeleteWorkspace { id: id(1) },
        },
        Step {
            at_ms: 10_000,
            action: Action::UpsertWorkspace {
                id: id(1),
                name: "one".into(),
                status: WorkspaceStatus::Running,
                agents: Vec::new(),
            },
        },
        Step {
            at_ms: 20_000,
            action: Action::UpsertWorkspace {
                id: id(2),
                name: "two".into(),
                status: WorkspaceStatus::Running,
                agents: Vec::new(),
            },
        },
    ];
    let mock = start(scenario).await;
    assert!(workspace_ids(&mock).is_empty());
    tokio::time::sleep(Duration::from_millis(9_990)).await;
    assert!(workspace_ids(&mock).is_empty());
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    assert_eq!(workspace_ids(&mock), [id(1)]);
    tokio::time::sleep(Duration::from_millis(10_000)).await;
    assert_eq!(workspace_ids(&mock), [id(1), id(2)]);
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert_eq!(workspace_ids(&mock), [id(2)]);
    mock.shutdown().await;
}

/// Real clock, over a stream: the diffs come in time order although the
/// steps are written out of order (each depends on the one before).
#[tokio::test]
async fn diffs_follow_the_timeline_order() {
    let mut scenario = Scenario::demo();
    let text = serde_json::json!([
        {"at_ms": 1200, "action": "delete_workspace", "id": id(50)},
        {"at_ms": 1000, "action": "upsert_workspace", "id": id(50), "name": "w", "status": "starting"},
        {"at_ms": 1100, "action": "upsert_agent", "id": id(51), "name": "a", "workspace_id": id(50)},
    ]);
    scenario.timeline = serde_json::from_value(text).unwrap();
    let mock = start(scenario).await;
    let mut ws = dial(&mock).await;
    let snapshot = next_update(&mut ws).await;
    // The dial happens well before the first step (1 s is a generous margin).
    assert_eq!(snapshot.upserted_workspaces.len(), 3);

    let first = next_update(&mut ws).await;
    assert_eq!(first.upserted_workspaces[0].id, id(50));
    assert_eq!(
        first.upserted_workspaces[0].status,
        WorkspaceStatus::Starting
    );
    let second = next_update(&mut ws).await;
    assert_eq!(second.upserted_agents[0].id, id(51));
    let third = next_update(&mut ws).await;
    assert_eq!(third.deleted_workspaces, [id(50)]);
    assert_eq!(third.deleted_agents, [id(51)]);
    mock.shutdown().await;
}

/// The shipped reconnect example, run on a paused clock.
#[tokio::test(start_paused = true)]
async fn reconnect_example_runs_to_its_final_state() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/reconnect.json");
    let mock = start(Scenario::from_file(&path).unwrap()).await;
    assert_eq!(mock.state().upserted_workspaces.len(), 3);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let state = mock.state();
    let names: Vec<&str> = state
        .upserted_workspaces
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    assert_eq!(names, ["dev", "fresh"]);
    let mut agents: Vec<&str> = state
        .upserted_agents
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    agents.sort_unstable();
    assert_eq!(agents, ["agnt", "gpu", "main"]);
    mock.shutdown().await;
}

/// Times too large for the clock neither panic nor fire.
#[tokio::test(start_paused = true)]
async fn huge_times_are_harmless() {
    let mut scenario = Scenario::demo();
    scenario.timeline = vec![Step {
        at_ms: u64::MAX,
        action: Action::DeleteWorkspace {
            id: scenario.workspaces[0].id,
        },
    }];
    let mock = start(scenario).await;
    mock.apply(Action::DropStreams {
        reconnect_after_ms: u64::MAX,
    });
    tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
    assert_eq!(mock.state().upserted_workspaces.len(), 3);
    mock.shutdown().await;
}
