//! A mock Coder control plane for testing CoderVPN tunnels.
//!
//! It serves what a tunnel calls on Start (protocol.md §9.1) with Coder's
//! paths and bodies, plus a coordination stream of this project's own
//! design (JSON over a WebSocket, described in `docs/control-plane.md`),
//! driven by a scripted [`Scenario`]: the initial workspaces and agents and
//! a timeline of changes and faults. It records every request, with secrets
//! redacted, so tests can check what a tunnel sent (§6.2, §6.3).
//!
//! * [`scenario`]: the scenario file and its [`Action`]s.
//! * `state`: workspaces and agents, and the diffs and snapshots (§6.8).
//! * `faults`: failed, delayed, corrupted responses; refused dials.
//! * [`record`]: the request record and header redaction.
//! * `http`, `stream`: the server's endpoints and the coordination stream.
//! * [`download`]: `GET /bin/{name}`, the daemon binary a manager fetches
//!   (§9.2), paced, with ETag and `304`.
//! * `timeline`: runs the scenario's steps on the tokio clock.
//! * [`agents`]: the embedded mock agents, real WireGuard peers behind every
//!   online agent, answering ping, UDP and TCP echo on its addresses.
//! * [`cli`]: `codervpn mock-coder`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), codervpn_mock_coder::MockError> {
//! use codervpn_mock_coder::{Action, MockCoder, MockConfig, Scenario};
//! let mock = MockCoder::start(MockConfig {
//!     token: "secret".into(),
//!     scenario: Scenario::demo(),
//!     ..MockConfig::default()
//! })
//! .await?;
//! // point a tunnel at mock.url() ...
//! mock.apply(Action::DropStreams { reconnect_after_ms: 500 });
//! mock.shutdown().await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]

pub mod agents;
pub mod cli;
pub mod download;
mod error;
mod faults;
mod http;
pub mod record;
pub mod scenario;
mod shared;
mod state;
mod stream;
mod timeline;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use codervpn_reference_tunnel::control::api::{TunnelNode, WorkspaceUpdate};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use agents::responder::SPOOFED_SOURCE;
pub use agents::stats::{AgentStats, DropCounts, PeerStats};
pub use download::DownloadConfig;
pub use error::{MockError, ScenarioError};
pub use http::{AGENTS_PATH, NODES_PATH, REQUESTS_PATH};
pub use record::{RecordedRequest, fingerprint};
pub use scenario::{Action, AgentSpec, Scenario, Step, WorkspaceSpec};
pub use shared::STREAM_BACKLOG;
pub use stream::{CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_RESTART, MAX_CLIENT_MESSAGE, SEND_TIMEOUT};

use agents::Agents;
use shared::Shared;
use state::State;

/// How long [`MockCoder::shutdown`] waits for streams and in-flight
/// requests before it aborts them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How to start a [`MockCoder`].
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// `127.0.0.1:0` picks a free port; see [`MockCoder::url`].
    pub listen: SocketAddr,
    /// The `Coder-Session-Token` value the mock accepts.
    pub token: String,
    pub scenario: Scenario,
    /// The address embedded agents bind their UDP sockets to (port 0), and
    /// so the address their published endpoints carry.
    pub agent_bind_ip: IpAddr,
    /// What `GET /bin/{name}` serves (size, pace, length header).
    pub download: DownloadConfig,
}

/// Where embedded agents listen unless told otherwise.
pub const DEFAULT_AGENT_BIND_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

impl Default for MockConfig {
    /// `127.0.0.1:0`, the CLI's default token, the demo scenario, agents on
    /// `127.0.0.1`, 4 MiB binaries at 6 MiB/s.
    fn default() -> MockConfig {
        MockConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            token: cli::DEFAULT_TOKEN.to_owned(),
            scenario: Scenario::demo(),
            agent_bind_ip: DEFAULT_AGENT_BIND_IP,
            download: DownloadConfig::default(),
        }
    }
}

/// A running mock control plane. Dropping it stops it abruptly;
/// [`MockCoder::shutdown`] closes streams first.
#[derive(Debug)]
pub struct MockCoder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<std::io::Result<()>>,
    timeline: JoinHandle<()>,
    streams_gone: mpsc::Receiver<()>,
}

impl MockCoder {
    /// Validates the scenario, binds `config.listen`, and spawns the server
    /// and the timeline (whose clock starts now).
    pub async fn start(config: MockConfig) -> Result<MockCoder, MockError> {
        let MockConfig {
            listen,
            token,
            scenario,
            agent_bind_ip,
            download,
        } = config;
        scenario.validate()?;
        let agents = Agents::new(agent_bind_ip);
        let workspaces: Vec<WorkspaceSpec> = scenario
            .workspaces
            .iter()
            .map(|workspace| WorkspaceSpec {
                agents: workspace.agents.iter().map(|a| agents.publish(a)).collect(),
                ..workspace.clone()
            })
            .collect();
        let state = State::new(&workspaces)
            .map_err(|err| ScenarioError::Invalid(format!("workspaces: {err}")))?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| MockError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        let (shared, streams_gone) = Shared::new(
            token,
            &scenario,
            state,
            agents,
            download::Downloads::new(download),
        );
        let shared = Arc::new(shared);
        let start = Instant::now();

        let mut stop = shared.shutdown_signal();
        let server = axum::serve(listener, http::router(shared.clone())).with_graceful_shutdown(
            async move {
                shared::stopped(&mut stop).await;
            },
        );
        let server = tokio::spawn(async move { server.await });
        let timeline = tokio::spawn(timeline::run(shared.clone(), scenario.timeline, start));
        tracing::debug!(%addr, "mock control plane started");
        Ok(MockCoder {
            addr,
            shared,
            server,
            timeline,
            streams_gone,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the mock listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every HTTP request and WebSocket dial so far, in arrival order,
    /// secrets redacted (see [`record`]).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests()
    }

    /// Successful `/api/v2/tailnet` upgrades so far (§6.5 counts them).
    pub fn stream_dials(&self) -> usize {
        self.shared.dials()
    }

    /// The nodes tunnels sent up on their streams, in order (also served
    /// as JSON at [`NODES_PATH`]).
    pub fn tunnel_nodes(&self) -> Vec<TunnelNode> {
        self.shared.nodes()
    }

    /// Every running embedded agent with its counters, by agent id (also
    /// served as JSON at [`AGENTS_PATH`]).
    pub fn agent_stats(&self) -> Vec<AgentStats> {
        self.shared.agents.stats()
    }

    /// The current full state, as the next dial's snapshot will carry it.
    pub fn state(&self) -> WorkspaceUpdate {
        self.shared.snapshot()
    }

    /// Runs `action` now, exactly as a timeline step would. An action that
    /// cannot apply (an unknown id) is logged and ignored.
    pub fn apply(&self, action: Action) {
        self.shared.apply(&action);
    }

    /// Stops the timeline, closes every stream (close code 1001), stops the
    /// server and every embedded agent, waiting at most [`SHUTDOWN_GRACE`]
    /// for each.
    pub async fn shutdown(mut self) {
        self.shared.begin_shutdown();
        self.timeline.abort();
        let streams = tokio::time::timeout(SHUTDOWN_GRACE, self.streams_gone.recv()).await;
        if streams.is_err() {
            tracing::warn!("coordination streams did not close in time");
        }
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => tracing::warn!(%err, "mock server ended with an error"),
            Ok(Err(err)) => tracing::warn!(%err, "mock server task failed"),
            Err(_) => tracing::warn!("mock server did not stop in time; aborting it"),
        }
        self.shared.agents.shutdown().await;
    }
}

impl Drop for MockCoder {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
        self.timeline.abort();
        self.server.abort();
    }
}
