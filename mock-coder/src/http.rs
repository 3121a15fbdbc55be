//! The HTTP side: Coder's endpoints (protocol.md §9.1, §9.2, the binary
//! download in [`crate::download`]), the record
//! and fault layer around every request, JSON errors everywhere.
//!
//! Coder answers every error with an `ApiError` JSON body (`message`, and
//! sometimes `detail`); so does the mock, including for unknown paths, wrong
//! methods and refused WebSocket dials, so a tunnel's error text can always
//! quote the server's message.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use codervpn_reference_tunnel::control::api::{self, ApiError, BuildInfo};

use crate::download;
use crate::faults::Outcome;
use crate::record::{RecordedRequest, redact_headers};
use crate::shared::Shared;
use crate::stream;

/// The request record as JSON, for harnesses that do not link this crate.
/// Paths under `/_mock/` are neither recorded nor subject to faults.
pub const REQUESTS_PATH: &str = "/_mock/requests";
/// The embedded agents' [`crate::AgentStats`] as JSON (not recorded either).
pub const AGENTS_PATH: &str = "/_mock/agents";
/// The nodes tunnels announced on their streams, in order (public keys
/// and addresses: nothing secret), so that a harness can configure an
/// external WireGuard peer (e.g. wireguard-go) for the tunnel.
pub const NODES_PATH: &str = "/_mock/nodes";
const MOCK_PREFIX: &str = "/_mock/";

/// The body of a `CorruptResponses` answer: served as JSON, but not JSON.
pub(crate) const CORRUPT_BODY: &str = "{\"message\": this is not JSON";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(api::BUILDINFO_PATH, get(buildinfo))
        .route(api::USER_PATH, get(user))
        .route(api::CONNECTION_PATH, get(connection))
        .route(api::STREAM_PATH, get(stream::dial))
        .route(download::DOWNLOAD_ROUTE, get(download::download))
        .route(REQUESTS_PATH, get(requests))
        .route(AGENTS_PATH, get(agents))
        .route(NODES_PATH, get(nodes))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(shared.clone(), observe))
        .with_state(shared)
}

/// An error response as Coder writes it.
pub(crate) fn api_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = ApiError {
        message: message.into(),
        detail: String::new(),
    };
    (status, Json(body)).into_response()
}

/// Why a request's `Coder-Session-Token` was refused (§9.1). The message
/// says whether the token was missing or wrong, never what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    Missing,
    Invalid,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let message = match self {
            AuthError::Missing => format!(
                "missing session token: no {} header",
                api::SESSION_TOKEN_HEADER
            ),
            AuthError::Invalid => format!(
                "invalid session token: the {} header does not match",
                api::SESSION_TOKEN_HEADER
            ),
        };
        api_error(StatusCode::UNAUTHORIZED, message)
    }
}

pub(crate) fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), AuthError> {
    match headers.get(api::SESSION_TOKEN_HEADER) {
        None => Err(AuthError::Missing),
        Some(value) if value.as_bytes() == shared.token.as_bytes() => Ok(()),
        Some(_) => Err(AuthError::Invalid),
    }
}

/// Records the request, applies injected faults, records the status.
async fn observe(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path.starts_with(MOCK_PREFIX) {
        return next.run(request).await;
    }
    let entry = shared.begin_request(RecordedRequest {
        method: request.method().to_string(),
        path: path.clone(),
        query: request.uri().query().unwrap_or_default().to_owned(),
        headers: redact_headers(request.headers()),
        status: 0,
    });
    let plan = shared.plan(&path);
    if let Some(delay) = plan.delay {
        tokio::time::sleep(delay).await;
    }
    let response = match plan.outcome {
        Outcome::Pass => next.run(request).await,
        Outcome::Fail(status) => api_error(
            status,
            format!("injected failure: {path} answers {}", status.as_u16()),
        ),
        Outcome::Corrupt => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            CORRUPT_BODY,
        )
            .into_response(),
    };
    shared.finish_request(entry, response.status().as_u16());
    response
}

async fn buildinfo(State(shared): State<Arc<Shared>>) -> Json<BuildInfo> {
    Json(BuildInfo {
        version: shared.version.clone(),
    })
}

async fn user(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match authorize(&shared, &headers) {
        Ok(()) => Json(shared.user.clone()).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn connection(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    match authorize(&shared, &headers) {
        Ok(()) => Json(shared.connection.clone()).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn requests(State(shared): State<Arc<Shared>>) -> Json<Vec<RecordedRequest>> {
    Json(shared.requests())
}

async fn agents(State(shared): State<Arc<Shared>>) -> Json<Vec<crate::AgentStats>> {
    Json(shared.agents.stats())
}

async fn nodes(State(shared): State<Arc<Shared>>) -> Json<Vec<api::TunnelNode>> {
    Json(shared.nodes())
}

async fn not_found(request: Request) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        format!("route not found: {}", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> Response {
    api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}
