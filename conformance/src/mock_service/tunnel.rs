//! The service as the manager of one tunnel process (protocol.md §8.3
//! steps 7-9, §8.5, §7.2).
//!
//! Launching reuses the conformance launcher ([`Launch`], the same command
//! lines and placeholders as the mock manager and `codervpn conform`), and
//! ending the process reuses [`Running::finish_within`]. What differs from
//! the mock manager's one-shot lifecycle is that this link lives as long as
//! the tunnel does: its event task merges PeerUpdates into the service's
//! state and notices the stream ending.
//!
//! Departures from the Windows service, each a fix the spec asks for or
//! allows:
//! * A NetworkSettingsRequest is answered at once with `success:false`
//!   ([`NETWORK_SETTINGS_REFUSAL`]) instead of never (§8.5, §6.11 item 5):
//!   a tunnel that sends them (the reference tunnel does unless told
//!   `--no-network-settings`) would otherwise wait 30 s per request in the
//!   middle of its Start.
//! * The tunnel's Start is bounded ([`START_TIMEOUT`], §6.2 item 4; Windows
//!   waits without limit).

use std::sync::Arc;
use std::time::Duration;

use codervpn_codec::{Inbound, Incoming, Manager, Speaker, SpeakerConfig, VersionList};
use codervpn_proto::{
    ManagerMessage, NetworkSettingsResponse, StartRequest, StartResponse, StopRequest,
    manager_message, tunnel_message,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::broadcast::Hub;
use crate::target::{Launch, Running};

/// Bound on the handshake with the tunnel (§8.3 step 7: 5 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the tunnel's StartResponse (the reference tunnel's own bound,
/// §6.2 item 4).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the StopResponse, and then on the stream's end (§7.2 item 5).
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the process may take to exit by itself after its stream ended
/// before it is killed (then reaped within 5 s).
pub const EXIT_GRACE: Duration = Duration::from_secs(1);
/// The `error_message` of the answer to every NetworkSettingsRequest.
pub const NETWORK_SETTINGS_REFUSAL: &str =
    "network settings are not supported by this service: the tunnel configures the OS itself";

/// A running tunnel and the stream to it.
#[derive(Debug)]
pub struct TunnelLink {
    /// Which launch this is; events of older launches are ignored.
    pub generation: u64,
    speaker: Speaker<Manager>,
    running: Running,
    events: JoinHandle<()>,
}

fn manager_msg(msg: manager_message::Msg) -> ManagerMessage {
    ManagerMessage {
        rpc: None,
        msg: Some(msg),
    }
}

/// The last line the tunnel wrote on stderr, for error texts.
fn last_line(stderr: &str) -> String {
    match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(line) => format!(
            " (tunnel stderr: {})",
            line.chars().take(300).collect::<String>()
        ),
        None => String::new(),
    }
}

impl TunnelLink {
    /// Starts the tunnel and handshakes as `manager` with `versions`. The
    /// event task runs before anything is sent (§6.4 item 1). When the
    /// stream of a STARTED tunnel ends, `generation` is sent on `deaths`.
    pub async fn launch(
        launch: &Launch,
        versions: VersionList,
        generation: u64,
        hub: Arc<Hub>,
        deaths: mpsc::UnboundedSender<u64>,
    ) -> Result<TunnelLink, String> {
        let (running, (reader, writer)) = launch
            .spawn(&[])
            .map_err(|err| format!("cannot launch the tunnel: {err}"))?;
        let config = SpeakerConfig {
            versions,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            call_timeout: START_TIMEOUT,
            close_timeout: STOP_TIMEOUT,
            ..SpeakerConfig::default()
        };
        let (speaker, incoming, negotiated) =
            match Speaker::<Manager>::connect(reader, writer, config).await {
                Ok(connected) => connected,
                Err(err) => {
                    let stderr = running.stderr();
                    running.finish().await;
                    return Err(format!(
                        "tunnel handshake failed: {err}{}",
                        last_line(&stderr)
                    ));
                }
            };
        tracing::info!(generation, version = %negotiated.version, "tunnel connected");
        let events = tokio::spawn(events(generation, speaker.clone(), incoming, hub, deaths));
        Ok(TunnelLink {
            generation,
            speaker,
            running,
            events,
        })
    }

    /// Sends Start and returns the tunnel's StartResponse unchanged; the
    /// reply must have the `start` arm (§8.3 steps 8-9).
    pub async fn start(&self, request: StartRequest) -> Result<StartResponse, String> {
        let reply = self
            .speaker
            .call_within(
                manager_msg(manager_message::Msg::Start(request)),
                START_TIMEOUT,
            )
            .await;
        match reply {
            Ok(reply) => match reply.msg {
                Some(tunnel_message::Msg::Start(response)) => Ok(response),
                _ => Err("the tunnel answered Start without a start arm".into()),
            },
            Err(err) => Err(format!(
                "tunnel Start: {err}{}",
                last_line(&self.running.stderr())
            )),
        }
    }

    /// Ends the tunnel the way §7.2 item 5 describes the Windows service
    /// doing it: Stop (5 s), keep reading until EOF (5 s), close our ends,
    /// kill the process if still alive and reap it. Bounded: at most about
    /// 5 + 5 + 5 + 1 + 5 s.
    pub async fn teardown(self) {
        let TunnelLink {
            generation,
            speaker,
            running,
            events,
        } = self;
        if speaker.close_reason().is_none() {
            let stop = speaker
                .call_within(
                    manager_msg(manager_message::Msg::Stop(StopRequest {})),
                    STOP_TIMEOUT,
                )
                .await;
            match stop.map(|reply| reply.msg) {
                Ok(Some(tunnel_message::Msg::Stop(response))) if response.success => {}
                Ok(Some(tunnel_message::Msg::Stop(response))) => tracing::warn!(
                    generation,
                    error = %response.error_message,
                    "the tunnel's Stop failed"
                ),
                Ok(_) => tracing::warn!(generation, "the tunnel answered Stop without a stop arm"),
                Err(err) => tracing::warn!(generation, %err, "no StopResponse from the tunnel"),
            }
            let _ = tokio::time::timeout(STOP_TIMEOUT, speaker.closed()).await;
        }
        speaker.close().await;
        let status = running.finish_within(EXIT_GRACE).await;
        events.abort();
        tracing::info!(generation, ?status, "tunnel ended");
    }
}

/// The tunnel's requests and one-way messages (§8.5): PeerUpdates are
/// merged and broadcast, Logs go to our debug log, NetworkSettings
/// requests are refused at once; the end of the stream may be a death.
async fn events(
    generation: u64,
    speaker: Speaker<Manager>,
    mut incoming: Incoming<Manager>,
    hub: Arc<Hub>,
    deaths: mpsc::UnboundedSender<u64>,
) {
    while let Some(inbound) = incoming.recv().await {
        match inbound {
            Inbound::Request { id, msg } => match msg.msg {
                Some(tunnel_message::Msg::NetworkSettings(_)) => {
                    tracing::debug!(generation, "refused a NetworkSettingsRequest");
                    let refusal = NetworkSettingsResponse {
                        success: false,
                        error_message: NETWORK_SETTINGS_REFUSAL.into(),
                    };
                    let reply = manager_msg(manager_message::Msg::NetworkSettings(refusal));
                    if let Err(err) = speaker.reply(id, reply).await {
                        tracing::debug!(generation, %err, "cannot answer the tunnel");
                    }
                }
                // §5.6 item 2: logged, not answered.
                _ => tracing::warn!(
                    generation,
                    id,
                    "ignored a tunnel request of an unexpected kind"
                ),
            },
            Inbound::OneWay(msg) => match msg.msg {
                Some(tunnel_message::Msg::PeerUpdate(update)) => {
                    hub.peer_update(generation, &update)
                }
                Some(tunnel_message::Msg::Log(log)) => {
                    tracing::debug!(generation, level = log.level, message = %log.message, "tunnel log");
                }
                _ => tracing::debug!(generation, "ignored a one-way tunnel message"),
            },
        }
    }
    let reason = speaker
        .close_reason()
        .map_or_else(|| "stream ended".to_owned(), |r| r.to_string());
    if hub.tunnel_ended(generation) {
        tracing::warn!(generation, %reason, "the tunnel died: reported STOPPED (protocol.md §8.6 rule 5)");
        let _ = deaths.send(generation);
    } else {
        tracing::debug!(generation, %reason, "tunnel stream ended");
    }
}
