//! The mock manager: a well-behaved manager that launches a tunnel by
//! command and runs it through one lifecycle, the way Coder Desktop does
//! (protocol.md §2.1, §6.4, §7.2, §10): handshake, read loop answering
//! NetworkSettings, Start, GetPeerUpdate, a pause, Stop, then it ends the
//! process. It is the reference the manager-side cases are checked
//! against, and a handy driver for tunnels. On request it breaks one [M]
//! rule ([`ManagerFault`]), so that each manager-side case can be shown to
//! fail against a manager that breaks its rule.
//!
//! With a [`OsTun`] it is a manager with a real interface (§9.5): the
//! tunnel inherits the TUN device as its packet descriptor, each
//! NetworkSettingsRequest is applied to the interface and answered with
//! the outcome (§6.11), and the hold can be ended early (a signal) so that
//! traffic can run through the tunnel for as long as a test needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use codervpn_codec::frame::encode_frame;
use codervpn_codec::handshake::{Header, read_header_line};
use codervpn_codec::{Inbound, MAX_FRAME_LEN, Manager, Speaker, SpeakerConfig};
use codervpn_proto::{
    Envelope, GetPeerUpdate, ManagerMessage, NetworkSettingsResponse, Rpc, StartRequest,
    StopRequest, manager_message, tunnel_message,
};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::os_tun::OsTun;
use crate::target::{CHILD_TUN_FD, Launch};

/// One broken manager rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerFault {
    /// Reads the tunnel's header before writing its own (§3.4 item 1).
    WriteAfterRead,
    /// Refuses a tunnel that announces more than one version (§3.6).
    StrictVersions,
    /// Never answers NetworkSettings requests (§6.4 item 1, §6.11 item 1).
    IgnoreNetworkSettings,
    /// Closes on a PeerUpdate before the StartResponse (§6.4 item 1).
    CloseOnEarlyUpdate,
    /// Closes on input it does not expect: unknown arms, odd log levels,
    /// unmatched responses, zero-length frames (§4.3, §4.5, §5.3, §6.12).
    CloseOnOddInput,
    /// Numbers its first request 5 (§5.2 item 1).
    FirstIdFive,
    /// Sends a GetPeerUpdate after Stop (§7.2 item 1).
    SendAfterStop,
    /// Closes its side right after sending Stop (§7.2 item 3).
    CloseAfterStop,
    /// After a failed Start, ends without Stop (§6.2 item 5).
    NoStopAfterFailedStart,
    /// Waits for the StartResponse without a bound (§6.2 item 4).
    NoStartTimeout,
}

impl ManagerFault {
    pub const ALL: [ManagerFault; 10] = [
        ManagerFault::WriteAfterRead,
        ManagerFault::StrictVersions,
        ManagerFault::IgnoreNetworkSettings,
        ManagerFault::CloseOnEarlyUpdate,
        ManagerFault::CloseOnOddInput,
        ManagerFault::FirstIdFive,
        ManagerFault::SendAfterStop,
        ManagerFault::CloseAfterStop,
        ManagerFault::NoStopAfterFailedStart,
        ManagerFault::NoStartTimeout,
    ];

    /// The kebab-case name used on the command line.
    pub fn name(self) -> String {
        crate::kebab_case(&format!("{self:?}"))
    }

    pub fn parse(name: &str) -> Option<ManagerFault> {
        ManagerFault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// One lifecycle's settings.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub coder_url: String,
    pub api_token: String,
    /// Pause between the StartResponse and Stop.
    pub hold: Duration,
    /// Bound on every reply (§7.2 item 4, §6.2 item 4).
    pub reply_timeout: Duration,
    /// The rule to break, if any.
    pub fault: Option<ManagerFault>,
    /// A real interface for the tunnel (None: the datagram stand-in, and
    /// `tunnel_file_descriptor` 0 in Start).
    pub device: Option<Arc<OsTun>>,
    /// Ends the hold early; Stop follows as usual.
    pub hold_cancel: CancellationToken,
    /// Told once Start succeeded and the hold begins (a readiness line).
    pub started: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// Runs the lifecycle against the tunnel `launch` starts. The tunnel is
/// terminated afterwards in every case (§2.2 item 6).
pub async fn run(launch: &Launch, lifecycle: &Lifecycle) -> Result<String, String> {
    let device = match &lifecycle.device {
        Some(device) => Some(device.child_fd().map_err(|e| e.to_string())?),
        None => None,
    };
    let (running, (reader, writer)) = launch
        .spawn_with_device(&[], device)
        .map_err(|e| e.to_string())?;
    let result = drive(reader, writer, lifecycle).await;
    // §2.2 item 6: the manager ends the daemon; it gets a moment first.
    running.finish_within(Duration::from_secs(2)).await;
    result
}

fn msg(msg: manager_message::Msg) -> ManagerMessage {
    ManagerMessage {
        rpc: None,
        msg: Some(msg),
    }
}

/// A request frame with a chosen id, for the faults that bypass the
/// speaker's own numbering and sealing.
fn raw_request(id: u64, arm: manager_message::Msg) -> bytes::Bytes {
    let mut request = msg(arm);
    request.set_rpc(Some(Rpc {
        msg_id: id,
        response_to: 0,
    }));
    encode_frame(&request, MAX_FRAME_LEN).unwrap_or_default()
}

async fn drive(
    mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    mut writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    lifecycle: &Lifecycle,
) -> Result<String, String> {
    let fault = lifecycle.fault;
    let is = |f: ManagerFault| fault == Some(f);
    let config = SpeakerConfig {
        call_timeout: lifecycle.reply_timeout,
        ..SpeakerConfig::default()
    };
    let (speaker, mut incoming, version) = if is(ManagerFault::WriteAfterRead) {
        let peer = read_header_line(&mut reader)
            .await
            .map_err(|e| e.to_string())?;
        let ours = Header::new(codervpn_codec::Role::Manager, config.versions.clone());
        writer
            .write_all(ours.to_line().as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let header =
            Header::parse(&peer, codervpn_codec::Role::Tunnel).map_err(|e| e.to_string())?;
        let (speaker, incoming) = Speaker::<Manager>::start(reader, writer, config);
        (speaker, incoming, header.versions.to_string())
    } else {
        let (speaker, incoming, negotiated) = Speaker::<Manager>::connect(reader, writer, config)
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        if is(ManagerFault::StrictVersions) && negotiated.peer.versions.versions().len() > 1 {
            speaker.close().await;
            return Err("refused a tunnel announcing several versions".into());
        }
        (speaker, incoming, negotiated.version.to_string())
    };
    let started = Arc::new(AtomicBool::new(false));
    // The read loop runs before Start is sent (§6.4 item 1).
    let answer = speaker.clone();
    let start_seen = started.clone();
    let device = lifecycle.device.clone();
    let reader = tokio::spawn(async move {
        let mut updates = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            let inbound = tokio::select! {
                inbound = incoming.recv() => inbound,
                _ = tick.tick() => {
                    // Responses and empty frames never reach this loop;
                    // the speaker counts them.
                    let stats = answer.stats();
                    if fault == Some(ManagerFault::CloseOnOddInput)
                        && (stats.unmatched_responses > 0 || stats.empty_frames > 0)
                    {
                        answer.close().await;
                        break;
                    }
                    continue;
                }
            };
            let Some(inbound) = inbound else { break };
            let odd = match &inbound {
                Inbound::Request { msg, .. } | Inbound::OneWay(msg) => match &msg.msg {
                    None => true,
                    Some(tunnel_message::Msg::Log(log)) => !(0..=5).contains(&log.level),
                    _ => false,
                },
            };
            let early_update = !start_seen.load(Ordering::SeqCst)
                && matches!(&inbound, Inbound::OneWay(m) if matches!(m.msg, Some(tunnel_message::Msg::PeerUpdate(_))));
            if (fault == Some(ManagerFault::CloseOnOddInput) && odd)
                || (fault == Some(ManagerFault::CloseOnEarlyUpdate) && early_update)
            {
                answer.close().await;
                break;
            }
            match inbound {
                Inbound::Request { id, msg: request } => {
                    if let Some(tunnel_message::Msg::NetworkSettings(settings)) = request.msg
                        && fault != Some(ManagerFault::IgnoreNetworkSettings)
                    {
                        let outcome = match &device {
                            Some(device) => device.apply(&settings).await,
                            None => Ok(()),
                        };
                        let reply = NetworkSettingsResponse {
                            success: outcome.is_ok(),
                            error_message: outcome.err().unwrap_or_default(),
                        };
                        let _ = answer
                            .reply(id, msg(manager_message::Msg::NetworkSettings(reply)))
                            .await;
                    }
                }
                Inbound::OneWay(msg) => {
                    if let Some(tunnel_message::Msg::PeerUpdate(_)) = msg.msg {
                        updates += 1;
                    }
                }
            }
        }
        updates
    });
    let start = StartRequest {
        coder_url: lifecycle.coder_url.clone(),
        api_token: lifecycle.api_token.clone(),
        device_os: "Linux".into(),
        coder_desktop_version: env!("CARGO_PKG_VERSION").into(),
        tunnel_file_descriptor: if lifecycle.device.is_some() {
            CHILD_TUN_FD
        } else {
            0
        },
        ..StartRequest::default()
    };
    if is(ManagerFault::FirstIdFive) {
        let _ = speaker
            .send_raw(raw_request(5, manager_message::Msg::Start(start)))
            .await;
        tokio::time::sleep(lifecycle.reply_timeout).await;
        speaker.close().await;
        return Err("sent Start with id 5".into());
    }
    let start_timeout = if is(ManagerFault::NoStartTimeout) {
        Duration::from_secs(24 * 3600)
    } else {
        lifecycle.reply_timeout
    };
    let start = speaker
        .call_within(msg(manager_message::Msg::Start(start)), start_timeout)
        .await;
    if is(ManagerFault::CloseOnEarlyUpdate) {
        // Frames read before the StartResponse are already queued for the
        // read loop; give it time to see them as "early".
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    started.store(true, Ordering::SeqCst);
    let start = match start {
        Ok(start) => start,
        Err(err) => {
            // No StartResponse within the bound (§6.2 item 4): stop the
            // tunnel (§6.2 item 5) before ending it.
            let _ = speaker
                .call(msg(manager_message::Msg::Stop(StopRequest {})))
                .await;
            return Err(format!("Start: {err}"));
        }
    };
    let started = match start.msg {
        Some(tunnel_message::Msg::Start(resp)) => resp,
        other => return Err(format!("Start answered without a start arm: {other:?}")),
    };
    let mut summary = format!("negotiated {version}; ");
    if started.success {
        let state = speaker
            .call(msg(manager_message::Msg::GetPeerUpdate(GetPeerUpdate {})))
            .await
            .map_err(|e| format!("GetPeerUpdate: {e}"))?;
        if let Some(tunnel_message::Msg::PeerUpdate(update)) = state.msg {
            summary += &format!(
                "{} workspaces, {} agents; ",
                update.upserted_workspaces.len(),
                update.upserted_agents.len()
            );
        }
        if let Some(device) = &lifecycle.device {
            summary += &format!(
                "{} network settings applied to {}; ",
                device.applied().await,
                device.name()
            );
        }
        if let Some(started) = &lifecycle.started {
            let _ = started.send(summary.clone());
        }
        tokio::select! {
            () = tokio::time::sleep(lifecycle.hold) => {}
            () = lifecycle.hold_cancel.cancelled() => {}
        }
    } else {
        summary += &format!("Start failed: {}; ", started.error_message);
        if is(ManagerFault::NoStopAfterFailedStart) {
            speaker.close().await;
            return Err(summary);
        }
    }
    if is(ManagerFault::SendAfterStop) || is(ManagerFault::CloseAfterStop) {
        let _ = speaker
            .send_raw(raw_request(90, manager_message::Msg::Stop(StopRequest {})))
            .await;
        if is(ManagerFault::SendAfterStop) {
            let after = raw_request(91, manager_message::Msg::GetPeerUpdate(GetPeerUpdate {}));
            let _ = speaker.send_raw(after).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        speaker.close().await;
        return Err("broke the Stop rules on purpose".into());
    }
    // §6.2 item 5 and §7.2: Stop, keep reading until StopResponse and EOF.
    let stop = speaker
        .call(msg(manager_message::Msg::Stop(StopRequest {})))
        .await
        .map_err(|e| format!("Stop: {e}"))?;
    match stop.msg {
        Some(tunnel_message::Msg::Stop(resp)) if resp.success => summary += "stopped",
        other => return Err(format!("Stop failed: {other:?}")),
    }
    let _ = tokio::time::timeout(lifecycle.reply_timeout, speaker.closed()).await;
    if let Ok(Ok(updates)) = tokio::time::timeout(Duration::from_secs(1), reader).await {
        summary += &format!(" ({updates} unsolicited peer updates)");
    }
    if started.success {
        Ok(summary)
    } else {
        Err(summary)
    }
}
