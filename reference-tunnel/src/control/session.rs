//! One held control-plane connection: built by a successful Start, closed
//! by Stop or EOF (protocol.md §6.2 step 7, §6.8, §6.9, §6.10).
//!
//! Three background tasks live as long as the session, all stopped by one
//! cancellation token (cancelled on drop too, so a Start abandoned half-way
//! leaks nothing):
//! * the stream task keeps the coordination WebSocket up, reconnecting with
//!   backoff (50 ms doubling to 10 s) and keeping the known state, and turns
//!   every update into one PeerUpdate;
//! * the ticker sends the periodic upsert of all agents (§6.9);
//! * the dataplane ([`Dataplane`]), kept in step with the agent list.

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use codervpn_codec::{Speaker, Tunnel};
use codervpn_proto::ids::{DNS_SERVER, agent_address};
use codervpn_proto::vpn::network_settings_request::{DnsSettings, IPv6Settings, i_pv6_settings};
use codervpn_proto::{
    ManagerMessage, NetworkSettingsRequest, PeerUpdate, TunnelMessage, manager_message,
    tunnel_message,
};
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

use super::api::{ClientMessage, ServerMessage, TunnelNode};
use super::client::{self, ControlClient, ControlError};
use crate::dataplane::dns::HostTable;
use crate::dataplane::{Dataplane, DataplaneConfig, PeerSpec, keys};
use crate::peers::PeerState;
use crate::start::StartParams;

/// Knobs of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Period of the all-agents upsert (§6.9; 5 s).
    pub update_interval: Duration,
    /// Bound on each NetworkSettings request (§6.10 item 2; 30 s).
    pub network_settings_timeout: Duration,
    /// The dataplane's options; its MTU is announced in the router
    /// NetworkSettingsRequest.
    pub dataplane: DataplaneConfig,
    /// Whether the manager configures the interface (§6.10 item 3).
    pub send_network_settings: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            update_interval: Duration::from_secs(5),
            network_settings_timeout: Duration::from_secs(30),
            dataplane: DataplaneConfig::default(),
            send_network_settings: true,
        }
    }
}

/// A held connection.
#[derive(Debug)]
pub struct Session {
    state: Arc<Mutex<PeerState>>,
    dataplane: Arc<Dataplane>,
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
    /// The tunnel's own address (§9.3).
    pub address: Ipv6Addr,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

impl Session {
    /// Connects: user, connection info, network settings, then the stream
    /// until its first update is applied. The error text follows §6.2 step 7
    /// (`get user: …`, `get connection info: …`, `start connector: …`).
    pub async fn connect(
        params: StartParams,
        dataplane: Dataplane,
        speaker: Speaker<Tunnel>,
        config: &SessionConfig,
    ) -> Result<Session, String> {
        let client = ControlClient::new(params).map_err(|e| format!("create client: {e}"))?;
        let user = client.user().await.map_err(|e| format!("get user: {e}"))?;
        let info = client
            .connection_info()
            .await
            .map_err(|e| format!("get connection info: {e}"))?;
        let suffix = info.suffix().to_owned();
        let address = dataplane.address();
        tracing::info!(user = %user.username, %suffix, %address, "connected to the control plane");

        if config.send_network_settings {
            configure(
                &speaker,
                router_settings(address, config.dataplane.mtu),
                config,
            )
            .await;
            configure(&speaker, dns_settings(&suffix), config).await;
        }

        let cancel = CancellationToken::new();
        let state = Arc::new(Mutex::new(PeerState::new(&user.username, &suffix)));
        let node = TunnelNode {
            public_key: dataplane.public_key(),
            // Agents learn where we are from our handshakes.
            endpoint: None,
            addresses: vec![format!("{address}/128")],
        };
        let dataplane = Arc::new(dataplane);
        let (first_tx, first_rx) = oneshot::channel();
        let span = tracing::Span::current();
        let stream = tokio::spawn(
            maintain_stream(
                client,
                node,
                state.clone(),
                dataplane.clone(),
                speaker.clone(),
                first_tx,
                cancel.clone(),
            )
            .instrument(span.clone()),
        );
        let ticker = tokio::spawn(
            tick(
                state.clone(),
                dataplane.clone(),
                speaker,
                config.update_interval,
                cancel.clone(),
            )
            .instrument(span),
        );
        let session = Session {
            state,
            dataplane,
            tasks: vec![stream, ticker],
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
            address,
        };
        match first_rx.await {
            Ok(Ok(())) => Ok(session),
            Ok(Err(err)) => Err(format!("start connector: {err}")),
            Err(_) => Err("start connector: stream task ended".into()),
        }
    }

    /// The full state (§6.6).
    pub async fn full_state(&self) -> PeerUpdate {
        self.state.lock().await.full()
    }

    /// Stops every task and waits (bounded) for them to end.
    pub async fn close(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        // The tasks held the other references; a task that did not end in
        // time still stops, with the dataplane, when its last copy drops.
        if let Ok(dataplane) = Arc::try_unwrap(self.dataplane) {
            dataplane.close().await;
        }
    }
}

/// Sends one NetworkSettingsRequest and logs the outcome; a failure is the
/// engine's to log, not Start's (§6.10).
async fn configure(speaker: &Speaker<Tunnel>, req: NetworkSettingsRequest, config: &SessionConfig) {
    let msg = TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::NetworkSettings(req)),
    };
    match speaker
        .call_within(msg, config.network_settings_timeout)
        .await
    {
        Ok(ManagerMessage {
            msg: Some(manager_message::Msg::NetworkSettings(reply)),
            ..
        }) => {
            if !reply.success {
                tracing::error!(error = %reply.error_message, "network settings failed");
            }
        }
        Ok(other) => {
            tracing::error!(arm = ?other.msg.as_ref().map(|_| "other"), "rpc failure: reply without network_settings")
        }
        Err(err) => tracing::error!(error = %err, "rpc failure"),
    }
}

/// Router kind (§6.10): own /128 and the route for the Coder /48.
pub fn router_settings(address: Ipv6Addr, mtu: u32) -> NetworkSettingsRequest {
    NetworkSettingsRequest {
        mtu,
        ipv6_settings: Some(IPv6Settings {
            addrs: vec![address.to_string()],
            prefix_lengths: vec![128],
            included_routes: vec![i_pv6_settings::IPv6Route {
                destination: "fd60:627a:a42b::".into(),
                prefix_length: 48,
                router: String::new(),
            }],
            excluded_routes: vec![],
        }),
        ..NetworkSettingsRequest::default()
    }
}

/// DNS kind (§6.10): the resolver and the suffix as match domain.
pub fn dns_settings(suffix: &str) -> NetworkSettingsRequest {
    NetworkSettingsRequest {
        dns_settings: Some(DnsSettings {
            servers: vec![DNS_SERVER.to_string()],
            search_domains: vec![suffix.to_owned()],
            domain_name: suffix.to_owned(),
            match_domains: vec![suffix.to_owned()],
            match_domains_no_search: false,
        }),
        ..NetworkSettingsRequest::default()
    }
}

fn peer_update(update: PeerUpdate) -> TunnelMessage {
    TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::PeerUpdate(update)),
    }
}

/// Keeps the coordination stream up. The first dial's failure, or its first
/// applied update, is reported through `first`; later drops reconnect.
async fn maintain_stream(
    client: ControlClient,
    node: TunnelNode,
    state: Arc<Mutex<PeerState>>,
    dataplane: Arc<Dataplane>,
    speaker: Speaker<Tunnel>,
    first: oneshot::Sender<Result<(), ControlError>>,
    cancel: CancellationToken,
) {
    let mut first = Some(first);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let dialed = tokio::select! {
            _ = cancel.cancelled() => return,
            dialed = client.dial() => dialed,
        };
        match dialed {
            Err(err) => {
                if let Some(first) = first.take() {
                    let _ = first.send(Err(err));
                    return;
                }
                tracing::warn!(error = %err, retry_in = ?backoff, "control-plane dial failed");
            }
            Ok(mut stream) => {
                backoff = FIRST_BACKOFF;
                if let Err(err) =
                    client::send(&mut stream, &ClientMessage::Node(node.clone())).await
                {
                    tracing::warn!(error = %err, "could not send our node");
                }
                loop {
                    let next = tokio::select! {
                        _ = cancel.cancelled() => return,
                        next = client::next(&mut stream) => next,
                    };
                    let Some(ServerMessage::Update(update)) = next else {
                        break;
                    };
                    // The lock is held while sending so that diffs and
                    // periodic updates reach the manager in state order.
                    let mut state = state.lock().await;
                    let diff = state.apply(update);
                    sync_dataplane(&state, &dataplane).await;
                    let sent = tokio::select! {
                        _ = cancel.cancelled() => return,
                        sent = speaker.send(peer_update(diff)) => sent,
                    };
                    drop(state);
                    if sent.is_err() {
                        return;
                    }
                    if let Some(first) = first.take() {
                        let _ = first.send(Ok(()));
                    }
                }
                tracing::warn!(retry_in = ?backoff, "control-plane stream dropped; reconnecting");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The periodic upsert of every agent (§6.9), nothing when none is known.
async fn tick(
    state: Arc<Mutex<PeerState>>,
    dataplane: Arc<Dataplane>,
    speaker: Speaker<Tunnel>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let start = tokio::time::Instant::now() + interval;
    let mut ticker = tokio::time::interval_at(start, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let mut state = state.lock().await;
        for seen in dataplane.observations() {
            if let Some(at) = seen.last_handshake {
                state.record_handshake(seen.agent, at);
            }
            if let Some(ping) = seen.last_ping {
                state.record_ping(seen.agent, ping);
            }
        }
        // Replies land in the next tick's update; a ping never delays one.
        dataplane.ping_all().await;
        let Some(update) = state.periodic() else {
            continue;
        };
        let sent = tokio::select! {
            _ = cancel.cancelled() => return,
            sent = speaker.send(peer_update(update)) => sent,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Gives the dataplane the current agents (a session for every agent with a
/// valid WireGuard node) and the resolver's names (§9.4).
async fn sync_dataplane(state: &PeerState, dataplane: &Dataplane) {
    let specs: Vec<PeerSpec> = state
        .agents()
        .filter_map(|agent| {
            let node = agent.node.as_ref()?;
            match keys::parse(&node.public_key) {
                Ok(public_key) => Some(PeerSpec {
                    agent: agent.id,
                    public_key,
                    endpoint: node.endpoint,
                }),
                Err(err) => {
                    tracing::warn!(agent = %agent.id, error = %err, "agent node ignored");
                    None
                }
            }
        })
        .collect();
    dataplane.set_peers(&specs).await;
    dataplane.set_hosts(HostTable::new(
        state
            .dns_names()
            .map(|(name, id)| (name, agent_address(id))),
    ));
}
