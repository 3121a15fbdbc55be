//! Helpers shared by the integration tests: start a mock, talk to it with
//! real HTTP and WebSocket clients, with a bound on every wait.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use codervpn_mock_coder::{MockCoder, MockConfig, Scenario};
use codervpn_reference_tunnel::control::api::{self, ServerMessage, WorkspaceUpdate};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const TOKEN: &str = "tok-7f3a9c-s3cret";
/// Generous bound on any single wait; tests never assert an upper bound.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn start(scenario: Scenario) -> MockCoder {
    MockCoder::start(MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        scenario,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

pub fn stream_url(mock: &MockCoder) -> String {
    format!(
        "ws://{}{}?version={}",
        mock.local_addr(),
        api::STREAM_PATH,
        api::STREAM_VERSION
    )
}

/// Dials the coordination stream with `token`; the HTTP status on refusal.
pub async fn try_dial(url: &str, token: Option<&str>) -> Result<Ws, (u16, String)> {
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert(api::SESSION_TOKEN_HEADER, token.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("dial timed out")
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((status, body))
        }
        Err(err) => panic!("dial failed: {err}"),
    }
}

pub async fn dial(mock: &MockCoder) -> Ws {
    try_dial(&stream_url(mock), Some(TOKEN)).await.unwrap()
}

/// The next update on the stream (pings skipped).
pub async fn next_update(ws: &mut Ws) -> WorkspaceUpdate {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
            .expect("stream error");
        match message {
            Message::Text(text) => {
                let ServerMessage::Update(update) = serde_json::from_str(text.as_str()).unwrap();
                return update;
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Reads until the stream ends; the close code if a close frame came.
pub async fn closed(ws: &mut Ws) -> Option<u16> {
    let mut code = None;
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("stream still open")
        {
            None | Some(Err(_)) => return code,
            Some(Ok(Message::Close(frame))) => code = frame.map(|f| u16::from(f.code)),
            Some(Ok(Message::Text(text))) => panic!("unexpected text after close: {text}"),
            Some(Ok(_)) => {}
        }
    }
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

pub async fn send_binary(ws: &mut Ws, bytes: &[u8]) {
    ws.send(Message::binary(bytes.to_vec())).await.unwrap();
}

/// Waits (bounded) until `check` holds, polling.
pub async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}
