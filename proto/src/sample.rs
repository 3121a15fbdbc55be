//! Realistic, deterministic peer state for benchmarks, demos and load tests
//! (protocol.md §6.9 item 3 asks managers to cope with 1,000 agents).

use crate::ids::{Uuid, agent_address, uuid_to_wire};
use crate::vpn::workspace;
use crate::{Agent, LastPing, PeerUpdate, Rpc, TunnelMessage, Workspace, tunnel_message};

/// Go's zero time, the `last_handshake` of a never-handshaked agent (§6.7).
pub const GO_ZERO_TIME_SECONDS: i64 = -62_135_596_800;

/// A random-looking version 4 UUID derived from `n`.
pub fn uuid(n: u64) -> Uuid {
    let mixed = u128::from(n + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    uuid::Builder::from_random_bytes(mixed.to_be_bytes()).into_uuid()
}

/// The full-state reply to a GetPeerUpdate: `agents` agents spread over
/// `workspaces` running workspaces (at least one). Each agent has its three
/// names, its Coder address and Go's zero time as `last_handshake`; every
/// other agent has a `last_ping`.
pub fn peer_update_reply(agents: u64, workspaces: u64) -> TunnelMessage {
    let workspaces = workspaces.max(1);
    let spaces: Vec<Workspace> = (0..workspaces)
        .map(|w| Workspace {
            id: uuid_to_wire(uuid(w)),
            name: format!("ws-{w}"),
            status: workspace::Status::Running.into(),
        })
        .collect();
    let agents = (0..agents)
        .map(|a| {
            let ws = &spaces[(a % workspaces) as usize];
            let id = uuid(workspaces + a);
            Agent {
                id: uuid_to_wire(id),
                name: format!("agent-{a}"),
                workspace_id: ws.id.clone(),
                fqdn: vec![
                    format!("agent-{a}.{}.me.coder.", ws.name),
                    format!("agent-{a}.{}.alice.coder.", ws.name),
                ],
                ip_addrs: vec![agent_address(id).to_string()],
                last_handshake: Some(prost_types::Timestamp {
                    seconds: GO_ZERO_TIME_SECONDS,
                    nanos: 0,
                }),
                last_ping: (a % 2 == 0).then(|| LastPing {
                    latency: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 20_000_000 + (a % 1000) as i32 * 1_000,
                    }),
                    did_p2p: a % 4 == 0,
                    preferred_derp: "New York City".into(),
                    preferred_derp_latency: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 18_000_000,
                    }),
                }),
            }
        })
        .collect();
    TunnelMessage {
        rpc: Some(Rpc {
            msg_id: 0,
            response_to: 1,
        }),
        msg: Some(tunnel_message::Msg::PeerUpdate(PeerUpdate {
            upserted_workspaces: spaces,
            upserted_agents: agents,
            ..PeerUpdate::default()
        })),
    }
}
