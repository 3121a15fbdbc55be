//! What answering GetPeerUpdate costs at scale (protocol.md §6.6, §6.9
//! item 3): the full state of 10,000 agents in 1,000 workspaces built from
//! the tunnel's peer state and encoded as the reply frame, and applying a
//! reconnect snapshot of that size.

use std::hint::black_box;

use codervpn_proto::{TunnelMessage, tunnel_message};
use codervpn_reference_tunnel::control::api::{
    AgentInfo, WorkspaceInfo, WorkspaceStatus, WorkspaceUpdate,
};
use codervpn_reference_tunnel::peers::PeerState;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prost::Message as _;
use uuid::Uuid;

const AGENTS: u128 = 10_000;
const WORKSPACES: u128 = 1_000;

fn snapshot() -> WorkspaceUpdate {
    WorkspaceUpdate {
        snapshot: true,
        upserted_workspaces: (0..WORKSPACES)
            .map(|w| WorkspaceInfo {
                id: Uuid::from_u128(w + 1),
                name: format!("workspace-{w}"),
                status: WorkspaceStatus::Running,
            })
            .collect(),
        upserted_agents: (0..AGENTS)
            .map(|a| AgentInfo {
                id: Uuid::from_u128((1 << 64) + a),
                name: format!("agent-{a}"),
                workspace_id: Uuid::from_u128(a % WORKSPACES + 1),
                node: None,
            })
            .collect(),
        ..WorkspaceUpdate::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut state = PeerState::new("rootbeer", "coder");
    state.apply(snapshot());
    let reply = TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::PeerUpdate(state.full())),
    };
    eprintln!(
        "full state of {AGENTS} agents: {} bytes encoded",
        reply.encoded_len()
    );

    let mut group = c.benchmark_group("peers_10k_agents");
    group.sample_size(20);
    group.bench_function("get_peer_update_reply", |b| {
        b.iter(|| {
            let reply = TunnelMessage {
                rpc: None,
                msg: Some(tunnel_message::Msg::PeerUpdate(black_box(&state).full())),
            };
            reply.encode_to_vec()
        });
    });
    group.bench_function("apply_reconnect_snapshot", |b| {
        b.iter_batched(
            || (state.clone(), snapshot()),
            |(mut state, update)| state.apply(update),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
