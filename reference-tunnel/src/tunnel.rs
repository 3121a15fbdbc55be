//! The tunnel's request loop: what a well-behaved tunnel does with each
//! manager message (protocol.md §5.5, §6.2, §6.5, §6.6, §7.1, §7.4).
//!
//! Requests are handled one at a time in arrival order (§5.8 item 6). A
//! Start runs while the loop keeps reading: a Stop arriving meanwhile ends
//! the Start early (its StartResponse still goes first), other requests wait
//! their turn. So Stop is always answered promptly (§7.1 rule 4).

use std::collections::VecDeque;
use std::time::Duration;

use codervpn_codec::{Inbound, Incoming, Speaker, SpeakerConfig, Tunnel, VersionList};
use codervpn_proto::{
    Envelope, ManagerMessage, PeerUpdate, StartRequest, StartResponse, StopResponse, TunnelMessage,
    manager_message::Msg as In, tunnel_message::Msg as Out,
};
use tokio::io::{AsyncRead, AsyncWrite};

use codervpn_proto::ids::agent_address;
use uuid::Uuid;

use crate::control::session::{Session, SessionConfig};
use crate::dataplane::{Dataplane, PacketDevice};
use crate::logs::LogQueue;
use crate::start::validate;

/// Everything configurable about the reference tunnel.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Advertised versions (§3.6 item 4: `1.2` by default).
    pub versions: VersionList,
    /// Close the stream if no complete header arrives in this time (§3.8).
    pub handshake_timeout: Duration,
    /// Bound on a whole Start (§6.2 item 4: 60 s).
    pub start_timeout: Duration,
    /// The held connection's knobs.
    pub session: SessionConfig,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            versions: VersionList::default(),
            handshake_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            session: SessionConfig::default(),
        }
    }
}

/// How a tunnel run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Answered Stop; the stream is closed.
    Stopped,
    /// The manager closed the stream (or it failed).
    StreamClosed,
}

/// A failed handshake: the stream was closed (§3.7).
#[derive(Debug, thiserror::Error)]
#[error("handshake failed: {0}")]
pub struct HandshakeFailed(#[from] pub codervpn_codec::HeaderError);

/// Runs a tunnel on one stream until Stop or EOF. `logs`, when given, is
/// forwarded to the manager as Log messages (§6.12).
pub async fn serve<R, W>(
    reader: R,
    writer: W,
    config: TunnelConfig,
    logs: Option<LogQueue>,
) -> Result<Ending, HandshakeFailed>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let speaker_config = SpeakerConfig {
        versions: config.versions.clone(),
        handshake_timeout: config.handshake_timeout,
        ..SpeakerConfig::default()
    };
    let (speaker, incoming, negotiated) =
        Speaker::<Tunnel>::connect(reader, writer, speaker_config).await?;
    tracing::debug!(version = %negotiated.version, "handshake complete");
    if let Some(logs) = logs {
        tokio::spawn(logs.forward(speaker.clone()));
    }
    Ok(Handler::new(speaker, incoming, config).run().await)
}

/// Most requests a Start can have waiting behind it before the loop stops
/// reading (backpressure) until the Start finishes.
const MAX_WAITING: usize = 64;

struct Handler {
    speaker: Speaker<Tunnel>,
    incoming: Incoming<Tunnel>,
    config: TunnelConfig,
    session: Option<Session>,
    waiting: VecDeque<Inbound<ManagerMessage>>,
}

fn reply_msg(msg: Out) -> TunnelMessage {
    TunnelMessage {
        rpc: None,
        msg: Some(msg),
    }
}

impl Handler {
    fn new(speaker: Speaker<Tunnel>, incoming: Incoming<Tunnel>, config: TunnelConfig) -> Self {
        Handler {
            speaker,
            incoming,
            config,
            session: None,
            waiting: VecDeque::new(),
        }
    }

    async fn next(&mut self) -> Option<Inbound<ManagerMessage>> {
        match self.waiting.pop_front() {
            Some(next) => Some(next),
            None => self.incoming.recv().await,
        }
    }

    async fn run(mut self) -> Ending {
        let ending = loop {
            let Some(inbound) = self.next().await else {
                break Ending::StreamClosed;
            };
            let (id, msg) = match inbound {
                Inbound::Request { id, msg } => (id, msg),
                Inbound::OneWay(msg) => {
                    // §5.5: no rpc or msg_id 0 is not a request, whatever
                    // the arm; ignored, no reply.
                    tracing::warn!(arm = ?msg.arm(), "unknown request: not a request, ignored");
                    continue;
                }
            };
            let arm = msg.arm();
            match msg.msg {
                Some(In::Start(req)) => {
                    if let Some(stop_id) = self.start(id, req).await {
                        break self.stop(stop_id).await;
                    }
                }
                Some(In::Stop(_)) => break self.stop(id).await,
                Some(In::GetPeerUpdate(_)) => {
                    let state = match &self.session {
                        Some(session) => session.full_state().await,
                        // §6.6 item 2: before Start or after a failed one.
                        None => PeerUpdate::default(),
                    };
                    self.reply(id, Out::PeerUpdate(state)).await;
                }
                // §5.5: unknown or unhandled arm gets the arm-less reply.
                _ => {
                    tracing::warn!(?arm, "unhandled manager request");
                    self.reply_armless(id).await;
                }
            }
        };
        if let Some(session) = self.session.take() {
            session.close().await;
        }
        // Bounded: the speaker closes on its own after Stop or EOF.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.speaker.closed()).await;
        ending
    }

    async fn reply(&self, id: u64, msg: Out) {
        if let Err(err) = self.speaker.reply(id, reply_msg(msg)).await {
            tracing::debug!(error = %err, "reply not sent");
        }
    }

    async fn reply_armless(&self, id: u64) {
        let msg = TunnelMessage::default();
        if let Err(err) = self.speaker.reply(id, msg).await {
            tracing::debug!(error = %err, "reply not sent");
        }
    }

    /// Handles a Start while still reading: returns the id of a Stop that
    /// arrived meanwhile, after answering the Start.
    async fn start(&mut self, id: u64, req: StartRequest) -> Option<u64> {
        let mut stop = None;
        let response = {
            let attempt = start_response(
                self.session.is_some(),
                self.speaker.clone(),
                self.config.clone(),
                req,
            );
            tokio::pin!(attempt);
            loop {
                let read_more = stop.is_none() && self.waiting.len() < MAX_WAITING;
                tokio::select! {
                    response = &mut attempt => break response,
                    next = self.incoming.recv(), if read_more => match next {
                        Some(Inbound::Request { id: stop_id, msg: ManagerMessage { msg: Some(In::Stop(_)), .. } }) => {
                            stop = Some(stop_id);
                            break Err("stopped before the tunnel had started".to_string());
                        }
                        Some(other) => self.waiting.push_back(other),
                        None => break Err("the manager closed the stream during Start".to_string()),
                    },
                }
            }
        };
        let response = match response {
            Ok(session) => {
                if let Some(session) = session {
                    self.session = Some(session);
                }
                StartResponse {
                    success: true,
                    error_message: String::new(),
                }
            }
            Err(error_message) => StartResponse {
                success: false,
                error_message,
            },
        };
        self.reply(id, Out::Start(response)).await;
        stop
    }

    /// §7.1: close the connection, answer, and let the speaker close the
    /// stream after the StopResponse.
    async fn stop(&mut self, id: u64) -> Ending {
        if let Some(session) = self.session.take() {
            session.close().await;
        }
        self.reply(
            id,
            Out::Stop(StopResponse {
                success: true,
                error_message: String::new(),
            }),
        )
        .await;
        Ending::Stopped
    }
}

/// The Start itself: §6.2 checks, then (if no connection is held) a new
/// session, within the Start bound. `Ok(None)`: already running (§6.5).
async fn start_response(
    held: bool,
    speaker: Speaker<Tunnel>,
    config: TunnelConfig,
    req: StartRequest,
) -> Result<Option<Session>, String> {
    let params = validate(&req)?;
    if held {
        tracing::warn!(
            "asked to start tunnel, but tunnel is already running; the new parameters are ignored"
        );
        return Ok(None);
    }
    let dataplane = build_dataplane(req.tunnel_file_descriptor, &config)
        .map_err(|err| format!("failed to create networking stack dependencies: {err}"))?;
    let limit = config.start_timeout;
    let connect = Session::connect(params, dataplane, speaker, &config.session);
    match tokio::time::timeout(limit, connect).await {
        Ok(Ok(session)) => Ok(Some(session)),
        Ok(Err(err)) => Err(format!("failed to start connection: {err}")),
        Err(_) => Err(format!(
            "failed to start connection: timed out after {limit:?}"
        )),
    }
}

/// §6.2 step 6: the packet device the manager named (none for 0, as the
/// Windows service sends), our address (§9.3) and the WireGuard socket.
fn build_dataplane(tun_fd: i32, config: &TunnelConfig) -> Result<Dataplane, String> {
    let dataplane = config.session.dataplane;
    let device = match tun_fd {
        0 => {
            tracing::info!("no tunnel file descriptor: WireGuard and pings only");
            None
        }
        fd => {
            let owned = crate::fd::dup_packet_device(i64::from(fd)).map_err(|e| e.to_string())?;
            let device = PacketDevice::new(owned, dataplane.framing)
                .map_err(|e| format!("create TUN from fd {fd}: {e}"))?;
            Some(device)
        }
    };
    let address = agent_address(Uuid::new_v4());
    Dataplane::start(device, address, dataplane).map_err(|e| {
        format!(
            "bind WireGuard socket on port {}: {e}",
            dataplane.listen_port
        )
    })
}
