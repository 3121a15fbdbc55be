//! The control-plane API the reference tunnel speaks, and that
//! `codervpn-mock-coder` serves; documented for third-party tunnels in
//! `docs/control-plane.md`.
//!
//! The HTTP endpoints have Coder's paths and shapes (protocol.md §9.1). The
//! coordination stream is this project's own: Coder's real stream is dRPC
//! over yamux over a WebSocket, which would drag a whole RPC stack into a
//! test fixture. Ours is JSON text messages over a WebSocket at Coder's path
//! (`/api/v2/tailnet`), carrying the same information: workspace updates with
//! a snapshot marker (§6.8), and WireGuard node details both ways.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The API token header (§9.1).
pub const SESSION_TOKEN_HEADER: &str = "Coder-Session-Token";
/// The telemetry header (§6.3).
pub const TELEMETRY_HEADER: &str = "Coder-Desktop-Telemetry";

pub const BUILDINFO_PATH: &str = "/api/v2/buildinfo";
pub const USER_PATH: &str = "/api/v2/users/me";
pub const CONNECTION_PATH: &str = "/api/v2/workspaceagents/connection";
/// The coordination WebSocket; `?version=` [`STREAM_VERSION`].
pub const STREAM_PATH: &str = "/api/v2/tailnet";
pub const STREAM_VERSION: &str = "codervpn-json-1";

/// `GET /api/v2/buildinfo` (no token needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
}

/// `GET /api/v2/users/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub username: String,
}

/// `GET /api/v2/workspaceagents/connection`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConnectionInfo {
    /// DNS suffix of agent names; missing or empty means `coder` (§9.1).
    #[serde(default)]
    pub hostname_suffix: String,
    /// When true the tunnel must not use direct UDP paths.
    #[serde(default)]
    pub disable_direct_connections: bool,
}

impl ConnectionInfo {
    /// The suffix to use, with the `coder` default applied.
    pub fn suffix(&self) -> &str {
        match self.hostname_suffix.trim_matches('.') {
            "" => "coder",
            suffix => suffix,
        }
    }
}

/// The body of every error response, as Coder writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A workspace's build status, with Coder's names; numbered like
/// `Workspace.Status` of the schema (§6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceStatus {
    #[default]
    Unknown,
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Canceling,
    Canceled,
    Deleting,
    Deleted,
}

impl WorkspaceStatus {
    /// The schema's enum number.
    pub fn number(self) -> i32 {
        self as i32
    }
}

/// A workspace as the stream describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceInfo {
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub status: WorkspaceStatus,
}

/// An agent as the stream describes it. Its DNS names and address are not
/// sent: the tunnel derives them (§9.3, §9.4), as Coder's tunnel does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: Uuid,
    pub name: String,
    pub workspace_id: Uuid,
    /// How to reach the agent over WireGuard; absent while it is offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
}

/// A WireGuard peer: its public key and, when known, its UDP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Curve25519 public key, standard base64 (44 characters).
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
}

/// Control plane -> tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// A change to the workspaces and agents the user can reach. With
    /// `snapshot` set it is the full state: whatever the tunnel knows and
    /// the snapshot lacks has been deleted (§6.8).
    Update(WorkspaceUpdate),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct WorkspaceUpdate {
    #[serde(default)]
    pub snapshot: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserted_workspaces: Vec<WorkspaceInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upserted_agents: Vec<AgentInfo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_workspaces: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_agents: Vec<Uuid>,
}

/// Tunnel -> control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The tunnel's own WireGuard node and its address(es).
    Node(TunnelNode),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelNode {
    pub public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// The tunnel's /128 in `fd60:627a:a42b::/48`, as `addr/128`.
    pub addresses: Vec<String>,
}
