//! HTTP and WebSocket client for the control plane (protocol.md §9.1).
//! Every request and the WebSocket dial carry the Start headers (token,
//! StartRequest headers, telemetry).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::api::{
    ApiError, CONNECTION_PATH, ClientMessage, ConnectionInfo, STREAM_PATH, STREAM_VERSION,
    ServerMessage, USER_PATH, User,
};
use crate::start::StartParams;

/// Bound on each HTTP request and on the WebSocket dial.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why a control-plane call failed; the text goes into StartResponse and
/// logs, so it names the cause and never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{status}: {message}")]
    Status { status: u16, message: String },
    #[error("{0}")]
    Transport(String),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// The error and its causes on one line: "a: b: c".
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// A control-plane client bound to one deployment and header set.
#[derive(Debug, Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    params: StartParams,
}

/// The coordination stream.
pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl ControlClient {
    pub fn new(params: StartParams) -> Result<Self, ControlError> {
        let http = reqwest::Client::builder()
            .default_headers(params.headers.clone())
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|err| ControlError::Transport(chain(&err)))?;
        Ok(ControlClient { http, params })
    }

    /// `GET /api/v2/users/me`.
    pub async fn user(&self) -> Result<User, ControlError> {
        self.get(USER_PATH).await
    }

    /// `GET /api/v2/workspaceagents/connection`.
    pub async fn connection_info(&self) -> Result<ConnectionInfo, ControlError> {
        self.get(CONNECTION_PATH).await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ControlError> {
        let url = self
            .params
            .url
            .join(path)
            .map_err(|err| ControlError::Malformed(err.to_string()))?;
        let response = self.http.get(url).send().await.map_err(|err| {
            if err.is_timeout() {
                ControlError::TimedOut(REQUEST_TIMEOUT)
            } else {
                ControlError::Transport(chain(&err))
            }
        })?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|err| ControlError::Transport(chain(&err)))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ApiError>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(ControlError::Status {
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&body).map_err(|err| ControlError::Malformed(err.to_string()))
    }

    /// Dials the coordination WebSocket.
    pub async fn dial(&self) -> Result<Stream, ControlError> {
        let mut url = self
            .params
            .url
            .join(STREAM_PATH)
            .map_err(|err| ControlError::Malformed(err.to_string()))?;
        let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
        url.set_scheme(scheme)
            .map_err(|()| ControlError::Malformed("cannot form the WebSocket URL".into()))?;
        url.query_pairs_mut().append_pair("version", STREAM_VERSION);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|err| ControlError::Malformed(chain(&err)))?;
        for (name, value) in &self.params.headers {
            request.headers_mut().append(name, value.clone());
        }
        let dial = tokio_tungstenite::connect_async(request);
        match tokio::time::timeout(REQUEST_TIMEOUT, dial).await {
            Err(_) => Err(ControlError::TimedOut(REQUEST_TIMEOUT)),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let message = response
                    .body()
                    .as_deref()
                    .and_then(|b| serde_json::from_slice::<ApiError>(b).ok())
                    .map(|e| e.message)
                    .unwrap_or_default();
                Err(ControlError::Status {
                    status: response.status().as_u16(),
                    message,
                })
            }
            Ok(Err(err)) => Err(ControlError::Transport(chain(&err))),
            Ok(Ok((stream, _))) => Ok(stream),
        }
    }
}

/// Sends one message up the stream.
pub async fn send(stream: &mut Stream, msg: &ClientMessage) -> Result<(), ControlError> {
    let text =
        serde_json::to_string(msg).map_err(|err| ControlError::Malformed(err.to_string()))?;
    stream
        .send(Message::text(text))
        .await
        .map_err(|err| ControlError::Transport(chain(&err)))
}

/// The next server message; `None` when the stream ended. Unreadable
/// messages are logged and skipped: one bad message does not cost the state.
pub async fn next(stream: &mut Stream) -> Option<ServerMessage> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(text)) => match serde_json::from_str(&text) {
                Ok(msg) => return Some(msg),
                Err(err) => {
                    tracing::warn!(error = %err, "ignoring an unreadable control-plane message")
                }
            },
            Ok(Message::Close(_)) => return None,
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %chain(&err), "control-plane stream failed");
                return None;
            }
        }
    }
}
