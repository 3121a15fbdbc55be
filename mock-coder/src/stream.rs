//! The coordination stream: JSON text messages over a WebSocket at Coder's
//! path, `GET /api/v2/tailnet?version=codervpn-json-1`.
//!
//! Coder's real stream is dRPC over yamux over a WebSocket (protocol.md
//! §9.1 step 3); this one carries the same information as plain JSON (the
//! types in `codervpn_reference_tunnel::control::api`) so a third-party
//! tunnel can speak it with any WebSocket library:
//!
//! * down: one `update` with `snapshot: true` holding the full state, then
//!   one diff per change (`snapshot: false`), and further snapshots when a
//!   scenario sends them (§6.8);
//! * up: `node` messages, the tunnel's own WireGuard node, recorded in order.
//!
//! A malformed message from the tunnel is logged and ignored: the stream
//! stays open. A stream that falls [`STREAM_BACKLOG`] updates behind, or
//! cannot take a message within [`SEND_TIMEOUT`], is closed; its tunnel
//! redials and gets a fresh snapshot, which is what Coder's reconnect
//! semantics are for. Pings are answered by the WebSocket library.
//!
//! [`STREAM_BACKLOG`]: crate::shared::STREAM_BACKLOG

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use codervpn_reference_tunnel::control::api::{self, ClientMessage};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use crate::http::{api_error, authorize};
use crate::shared::{Shared, StreamEvent, stopped};

/// The largest message a tunnel may send up; node messages are tiny.
pub const MAX_CLIENT_MESSAGE: usize = 1 << 20;
/// How long one message may take to go out before the stream is closed.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Close codes (RFC 6455 §7.4.1) the mock uses.
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_POLICY: u16 = 1008;
/// `DropStreams`: "service restart", come back later.
pub const CLOSE_RESTART: u16 = 1012;

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    version: Option<String>,
}

/// `GET /api/v2/tailnet`: token, then version, then the `DropStreams`
/// window, then the upgrade itself; every refusal is an `ApiError`.
pub(crate) async fn dial(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(refused) = authorize(&shared, &headers) {
        return refused.into_response();
    }
    let version = match query {
        Ok(Query(query)) => query.version,
        Err(err) => {
            return api_error(StatusCode::BAD_REQUEST, format!("bad query: {err}"));
        }
    };
    match version.as_deref() {
        Some(api::STREAM_VERSION) => {}
        Some(other) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "unsupported stream version {other:?}: this server speaks {:?}",
                    api::STREAM_VERSION
                ),
            );
        }
        None => {
            return api_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "missing version query parameter: use ?version={}",
                    api::STREAM_VERSION
                ),
            );
        }
    }
    if let Some(left) = shared.streams_refused() {
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "coordination stream unavailable (dropped by the scenario); retry in {} ms",
                left.as_millis()
            ),
        );
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let status = rejection.status();
            return api_error(
                status,
                format!("not a WebSocket upgrade: {}", rejection.body_text()),
            );
        }
    };
    let (Some(guard), Some((events, snapshot))) = (shared.stream_guard(), shared.subscribe())
    else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "the mock is shutting down");
    };
    shared.count_dial();
    upgrade
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| serve(socket, shared, events, snapshot, guard))
        .into_response()
}

/// Why a stream ended, for the log and the close frame.
enum End {
    /// The peer closed or the connection broke: no close frame to send.
    Peer,
    Close(u16, &'static str),
}

async fn serve(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    mut events: broadcast::Receiver<StreamEvent>,
    snapshot: Utf8Bytes,
    _guard: mpsc::Sender<()>,
) {
    let mut shutdown = shared.shutdown_signal();
    let end = if send(&mut socket, snapshot).await {
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => {
                    break End::Close(CLOSE_GOING_AWAY, "mock control plane shutting down");
                }
                event = events.recv() => match event {
                    Ok(StreamEvent::Send(text)) => {
                        if !send(&mut socket, text).await {
                            break End::Peer;
                        }
                    }
                    Ok(StreamEvent::Drop) => {
                        break End::Close(CLOSE_RESTART, "stream dropped by the scenario");
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "coordination stream too slow; closing it");
                        break End::Close(CLOSE_POLICY, "too slow: updates missed; redial for a snapshot");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        break End::Close(CLOSE_GOING_AWAY, "mock control plane shutting down");
                    }
                },
                message = socket.recv() => match message {
                    Some(Ok(message)) => receive(&shared, message),
                    Some(Err(err)) => {
                        tracing::debug!(%err, "coordination stream read error");
                        break End::Peer;
                    }
                    None => break End::Peer,
                },
            }
        }
    } else {
        End::Peer
    };
    if let End::Close(code, reason) = end {
        tracing::debug!(code, reason, "closing coordination stream");
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    }
}

/// Sends one text message within [`SEND_TIMEOUT`]; false if the stream is
/// unusable.
async fn send(socket: &mut WebSocket, text: Utf8Bytes) -> bool {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(text))).await {
        Ok(Ok(())) => true,
        Ok(Err(err)) => {
            tracing::debug!(%err, "coordination stream write error");
            false
        }
        Err(_) => {
            tracing::warn!("coordination stream write timed out; closing it");
            false
        }
    }
}

/// One message from the tunnel. Only `node` is defined; anything else is
/// logged and ignored.
fn receive(shared: &Shared, message: Message) {
    match message {
        Message::Text(text) => match serde_json::from_str::<ClientMessage>(text.as_str()) {
            Ok(ClientMessage::Node(node)) => {
                tracing::debug!(public_key = %node.public_key, "tunnel node");
                shared.record_node(node);
            }
            Err(err) => {
                tracing::warn!(%err, "malformed message on the coordination stream; ignored")
            }
        },
        Message::Binary(bytes) => {
            tracing::warn!(
                len = bytes.len(),
                "binary message on the coordination stream; ignored"
            );
        }
        // Pongs are sent by the library; a close is answered by it too, and
        // the next read then ends the stream.
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {}
    }
}
