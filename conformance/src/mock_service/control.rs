//! What the service asks the deployment before it starts a tunnel
//! (protocol.md §8.3 step 2, §9.2): `GET /api/v2/buildinfo` (the server
//! must be at least 2.20.0, as the Windows service requires) and
//! `GET /api/v2/users/me` (the token check). Every request is bounded and
//! every failure becomes a StartResponse `error_message` that names the
//! request and the server's answer, never the token.
//!
//! The request is checked and its headers are built by the reference
//! tunnel's own [`validate`] (§6.2 steps 1-5), so the service sends exactly
//! the headers the tunnel will send: the token, `StartRequest.headers` and
//! the telemetry header.

use std::time::Duration;

use codervpn_proto::StartRequest;
use codervpn_reference_tunnel::control::api::{ApiError, BUILDINFO_PATH, BuildInfo, USER_PATH};
use codervpn_reference_tunnel::start::{StartParams, validate};

/// Bound on connecting and on each of the two requests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The oldest server the Windows service accepts (`2.20.0-0`, §9.2).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 20, 0);

/// A deployment the request's URL and token reach.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub params: StartParams,
    pub http: reqwest::Client,
    /// `version` from buildinfo.
    pub version: String,
}

pub(crate) use codervpn_reference_tunnel::control::client::chain;

/// Checks the request and the deployment: URL, token, server version,
/// token accepted.
pub async fn check(request: &StartRequest) -> Result<Deployment, String> {
    let params = validate(request)?;
    if !matches!(params.url.path(), "" | "/") || params.url.query().is_some() {
        return Err(format!(
            "coder url {:?} must be a base URL without a path (protocol.md §9.2)",
            params.url.as_str()
        ));
    }
    let http = reqwest::Client::builder()
        .default_headers(params.headers.clone())
        .connect_timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|err| format!("cannot build an HTTP client: {}", chain(&err)))?;
    let info: BuildInfo = get_json(&http, &params, BUILDINFO_PATH).await?;
    match parse_version(&info.version) {
        Some(version) if version >= MIN_SERVER_VERSION => {}
        Some(_) => {
            return Err(format!(
                "server version {:?} is older than the minimum 2.20.0",
                info.version
            ));
        }
        None => {
            return Err(format!(
                "GET {BUILDINFO_PATH}: unreadable server version {:?}",
                info.version
            ));
        }
    }
    let _user: serde_json::Value = get_json(&http, &params, USER_PATH).await?;
    Ok(Deployment {
        params,
        http,
        version: info.version,
    })
}

/// One bounded GET; a non-2xx answer becomes `GET <path>: server answered
/// <status>: <message>`.
async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    params: &StartParams,
    path: &str,
) -> Result<T, String> {
    let fail = |what: String| format!("GET {path}: {what}");
    let url = params.url.join(path).map_err(|err| fail(err.to_string()))?;
    let exchange = async {
        let response = http.get(url).send().await?;
        let status = response.status();
        let body = response.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    let (status, body) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => return Err(fail(format!("no answer within {REQUEST_TIMEOUT:?}"))),
        Ok(Err(err)) => return Err(fail(chain(&err))),
        Ok(Ok(answer)) => answer,
    };
    if !status.is_success() {
        let message = serde_json::from_slice::<ApiError>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
        return Err(fail(format!("server answered {status}: {message}")));
    }
    serde_json::from_slice(&body).map_err(|err| fail(format!("malformed answer: {err}")))
}

/// `v2.24.3`, `2.20.0-rc.1+abc` → (major, minor, patch); the pre-release
/// part is ignored, so `2.20.0-0` counts as 2.20.0 as it does for Windows.
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let text = text.strip_prefix('v').unwrap_or(text);
    let core = text.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("v2.24.3"), Some((2, 24, 3)));
        assert_eq!(parse_version("2.20.0-0"), Some((2, 20, 0)));
        assert_eq!(parse_version("v2.25.1-devel+a1b2"), Some((2, 25, 1)));
        assert_eq!(parse_version("v2.24"), None);
        assert_eq!(parse_version("2.x.1"), None);
        assert_eq!(parse_version("1.2.3.4"), None);
        assert!(parse_version("v2.19.9").unwrap() < MIN_SERVER_VERSION);
    }
}
