//! The mock manager: a well-behaved manager that launches a tunnel by
//! command and runs it through one lifecycle, the way Coder Desktop does
//! (protocol.md §2.1, §6.4, §7.2, §10): handshake, read loop answering
//! NetworkSettings, Start, GetPeerUpdate, a pause, Stop, then it ends the
//! process. It is the reference the manager-side cases are checked
//! against, and a handy driver for tunnels.

use std::time::Duration;

use codervpn_codec::{Inbound, Manager, Speaker, SpeakerConfig};
use codervpn_proto::{
    GetPeerUpdate, ManagerMessage, NetworkSettingsResponse, StartRequest, StopRequest,
    manager_message, tunnel_message,
};

use crate::target::Launch;

/// One lifecycle's settings.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub coder_url: String,
    pub api_token: String,
    /// Pause between the StartResponse and Stop.
    pub hold: Duration,
    /// Bound on every reply (§7.2 item 4, §6.2 item 4).
    pub reply_timeout: Duration,
}

/// Runs the lifecycle against the tunnel `launch` starts. The tunnel is
/// terminated afterwards in every case (§2.2 item 6).
pub async fn run(launch: &Launch, lifecycle: &Lifecycle) -> Result<String, String> {
    let (running, (reader, writer)) = launch.spawn(&[]).map_err(|e| e.to_string())?;
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

async fn drive(
    reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    lifecycle: &Lifecycle,
) -> Result<String, String> {
    let config = SpeakerConfig {
        call_timeout: lifecycle.reply_timeout,
        ..SpeakerConfig::default()
    };
    let (speaker, mut incoming, negotiated) = Speaker::<Manager>::connect(reader, writer, config)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    // The read loop runs before Start is sent (§6.4 item 1).
    let answer = speaker.clone();
    let reader = tokio::spawn(async move {
        let mut updates = 0usize;
        while let Some(inbound) = incoming.recv().await {
            match inbound {
                Inbound::Request { id, msg } => {
                    if let Some(tunnel_message::Msg::NetworkSettings(_)) = msg.msg {
                        let ok = NetworkSettingsResponse {
                            success: true,
                            error_message: String::new(),
                        };
                        let _ = answer.reply(id, msg_reply(ok)).await;
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
    let start = speaker
        .call(msg(manager_message::Msg::Start(StartRequest {
            coder_url: lifecycle.coder_url.clone(),
            api_token: lifecycle.api_token.clone(),
            device_os: "Linux".into(),
            coder_desktop_version: env!("CARGO_PKG_VERSION").into(),
            ..StartRequest::default()
        })))
        .await;
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
    let mut summary = format!("negotiated {}; ", negotiated.version);
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
        tokio::time::sleep(lifecycle.hold).await;
    } else {
        summary += &format!("Start failed: {}; ", started.error_message);
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

fn msg_reply(ok: NetworkSettingsResponse) -> ManagerMessage {
    msg(manager_message::Msg::NetworkSettings(ok))
}
