//! Checking a StartRequest and turning it into control-plane parameters
//! (protocol.md §6.2 steps 1-5, §6.3).

use codervpn_proto::StartRequest;
use http::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use crate::control::api::{SESSION_TOKEN_HEADER, TELEMETRY_HEADER};

/// What a valid StartRequest gives the control-plane client.
#[derive(Clone)]
pub struct StartParams {
    /// The deployment URL.
    pub url: Url,
    /// Headers for every request and the WebSocket dial: the token, the
    /// StartRequest headers in order (repeats kept) and the telemetry header.
    pub headers: HeaderMap,
}

impl std::fmt::Debug for StartParams {
    /// Header values are secrets (§6.2 item 6): only names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartParams")
            .field("url", &self.url.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Applies the checks of §6.2 in order; the error is the StartResponse
/// `error_message`.
pub fn validate(req: &StartRequest) -> Result<StartParams, String> {
    if req.coder_url.is_empty() {
        return Err("missing coder url".into());
    }
    let url = parse_url(&req.coder_url)?;
    if req.api_token.is_empty() {
        return Err("missing api token".into());
    }
    let mut headers = HeaderMap::new();
    for header in &req.headers {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", header.name))?;
        let mut value = HeaderValue::from_str(&header.value)
            .map_err(|_| format!("invalid value for header {:?}", header.name))?;
        value.set_sensitive(true);
        headers.append(name, value);
    }
    if let Some(telemetry) = telemetry(req) {
        let value = HeaderValue::from_str(&telemetry)
            .map_err(|_| format!("telemetry fields cannot form a {TELEMETRY_HEADER} header"))?;
        headers.insert(TELEMETRY_HEADER, value);
    }
    let mut token = HeaderValue::from_str(&req.api_token)
        .map_err(|_| "api token is not a valid header value".to_string())?;
    token.set_sensitive(true);
    headers.insert(SESSION_TOKEN_HEADER, token);
    Ok(StartParams { url, headers })
}

/// Stricter than Go's parser (allowed by §6.2 item 3): an absolute http or
/// https URL with a host.
fn parse_url(raw: &str) -> Result<Url, String> {
    let fail = |reason: &str| format!("parse url {raw:?}: {reason}");
    let url = Url::parse(raw).map_err(|err| fail(&err.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(fail(&format!("unsupported scheme {:?}", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(fail("no host"));
    }
    Ok(url)
}

/// The `Coder-Desktop-Telemetry` value (§6.3): set when any of the three
/// fields is non-empty, keys in this order, compact JSON.
pub fn telemetry(req: &StartRequest) -> Option<String> {
    if req.device_id.is_empty() && req.device_os.is_empty() && req.coder_desktop_version.is_empty()
    {
        return None;
    }
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    Some(format!(
        "{{\"device_id\":{},\"device_os\":{},\"coder_desktop_version\":{}}}",
        quote(&req.device_id),
        quote(&req.device_os),
        quote(&req.coder_desktop_version)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use codervpn_proto::vpn::start_request::Header;

    fn start(url: &str, token: &str) -> StartRequest {
        StartRequest {
            coder_url: url.into(),
            api_token: token.into(),
            ..StartRequest::default()
        }
    }

    #[test]
    fn checks_in_order() {
        assert_eq!(validate(&start("", "")).unwrap_err(), "missing coder url");
        assert_eq!(validate(&start("", "t")).unwrap_err(), "missing coder url");
        assert!(
            validate(&start("::", ""))
                .unwrap_err()
                .starts_with("parse url \"::\": ")
        );
        assert!(
            validate(&start("ftp://x", "t"))
                .unwrap_err()
                .starts_with("parse url \"ftp://x\"")
        );
        assert_eq!(
            validate(&start("https://c.example", "")).unwrap_err(),
            "missing api token"
        );
        let params = validate(&start("https://c.example/", "secret")).unwrap();
        assert_eq!(params.headers[SESSION_TOKEN_HEADER], "secret");
        assert!(!format!("{params:?}").contains("secret"));
    }

    #[test]
    fn headers_keep_order_and_repeats_and_telemetry_replaces() {
        let mut req = start("http://127.0.0.1:1", "t");
        req.headers = vec![
            Header {
                name: "X-A".into(),
                value: "1".into(),
            },
            Header {
                name: "x-a".into(),
                value: "2".into(),
            },
            Header {
                name: TELEMETRY_HEADER.into(),
                value: "forged".into(),
            },
        ];
        req.device_os = "Windows".into();
        let params = validate(&req).unwrap();
        let values: Vec<_> = params.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(
            params.headers[TELEMETRY_HEADER],
            r#"{"device_id":"","device_os":"Windows","coder_desktop_version":""}"#
        );
        req.headers.push(Header {
            name: "bad name".into(),
            value: "v".into(),
        });
        assert!(validate(&req).unwrap_err().contains("invalid header name"));
    }

    /// §6.3 example and §12.7 vectors.
    #[test]
    fn telemetry_vectors() {
        let mut req = StartRequest {
            device_id: "device001".into(),
            device_os: "macOS".into(),
            coder_desktop_version: "0.24.8".into(),
            ..StartRequest::default()
        };
        assert_eq!(
            telemetry(&req).unwrap(),
            r#"{"device_id":"device001","device_os":"macOS","coder_desktop_version":"0.24.8"}"#
        );
        req = StartRequest::default();
        assert_eq!(telemetry(&req), None);
    }
}
