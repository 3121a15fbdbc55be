//! The request record: every HTTP request and WebSocket dial the mock got,
//! with secret header values redacted (protocol.md §6.2 rule 6, §9.1).
//!
//! Tests use it to check that a tunnel sends its StartRequest headers and
//! the `Coder-Desktop-Telemetry` header (§6.3) on every request, without the
//! record ever holding a secret:
//!
//! * `Coder-Session-Token`, `Authorization`, `Proxy-Authorization` and
//!   `Cookie` are recorded as `<redacted>`;
//! * standard HTTP/WebSocket headers (`Host`, `User-Agent`, `Accept*`,
//!   `Content-*`, `Connection`, `Upgrade`, `Sec-WebSocket-*`) and
//!   `Coder-Desktop-Telemetry` are recorded as sent;
//! * every other value (the manager's custom headers may carry secrets) is
//!   recorded as `<redacted:{fingerprint}>`, so a test can check that a
//!   value arrived by comparing [`fingerprint`]s.

use axum::http::HeaderMap;
use codervpn_reference_tunnel::control::api::TunnelNode;
use serde::{Deserialize, Serialize};

/// The record keeps at most this many requests (and as many nodes); later
/// ones are counted but not kept, so a long run cannot grow without bound.
pub const RECORD_LIMIT: usize = 100_000;

/// One request as the mock saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// The raw query string without `?`; empty when there is none.
    pub query: String,
    /// Every header in arrival order, repeats kept; names in lower case
    /// (HTTP names are case-insensitive), values redacted as described in
    /// the module docs.
    pub headers: Vec<(String, String)>,
    /// The response status; `0` while the response is pending (a delayed
    /// request) or when the client went away before it was sent.
    pub status: u16,
}

impl RecordedRequest {
    /// The recorded values of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A stable, non-reversible stand-in for a header value: 16 hex digits of
/// its 64-bit FNV-1a hash. Not a cryptographic hash: it keeps a value out of
/// the record, it does not protect a weak secret from guessing.
pub fn fingerprint(value: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// How header `name` (lower case) is recorded.
pub(crate) fn redact(name: &str, value: &str) -> String {
    const SECRET: [&str; 4] = [
        "coder-session-token",
        "authorization",
        "proxy-authorization",
        "cookie",
    ];
    const PLAIN: [&str; 5] = [
        "host",
        "user-agent",
        "connection",
        "upgrade",
        "coder-desktop-telemetry",
    ];
    const PLAIN_PREFIXES: [&str; 3] = ["accept", "content-", "sec-websocket-"];
    if SECRET.contains(&name) {
        "<redacted>".to_owned()
    } else if PLAIN.contains(&name) || PLAIN_PREFIXES.iter().any(|p| name.starts_with(p)) {
        value.to_owned()
    } else {
        format!("<redacted:{}>", fingerprint(value))
    }
}

pub(crate) fn redact_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = name.as_str();
            (
                name.to_owned(),
                redact(name, &String::from_utf8_lossy(value.as_bytes())),
            )
        })
        .collect()
}

/// The requests and tunnel nodes seen so far.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    requests: Vec<RecordedRequest>,
    nodes: Vec<TunnelNode>,
    dropped: u64,
}

impl Recorder {
    /// Records a request whose response is not known yet; returns where.
    pub(crate) fn begin(&mut self, request: RecordedRequest) -> Option<usize> {
        if self.requests.len() >= RECORD_LIMIT {
            self.count_dropped();
            return None;
        }
        self.requests.push(request);
        Some(self.requests.len() - 1)
    }

    pub(crate) fn finish(&mut self, index: Option<usize>, status: u16) {
        if let Some(entry) = index.and_then(|i| self.requests.get_mut(i)) {
            entry.status = status;
        }
    }

    pub(crate) fn node(&mut self, node: TunnelNode) {
        if self.nodes.len() >= RECORD_LIMIT {
            self.count_dropped();
        } else {
            self.nodes.push(node);
        }
    }

    fn count_dropped(&mut self) {
        if self.dropped == 0 {
            tracing::warn!(
                limit = RECORD_LIMIT,
                "request record full; not recording more"
            );
        }
        self.dropped += 1;
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.clone()
    }

    pub(crate) fn nodes(&self) -> Vec<TunnelNode> {
        self.nodes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fingerprint(""), "cbf29ce484222325");
        assert_eq!(fingerprint("a"), "af63dc4c8601ec8c");
        assert_eq!(fingerprint("foobar"), "85944171f73967e8");
    }

    #[test]
    fn redaction_classes() {
        assert_eq!(redact("coder-session-token", "s3cret"), "<redacted>");
        assert_eq!(redact("authorization", "Bearer x"), "<redacted>");
        assert_eq!(redact("cookie", "a=b"), "<redacted>");
        assert_eq!(redact("proxy-authorization", "x"), "<redacted>");
        assert_eq!(redact("user-agent", "ua/1"), "ua/1");
        assert_eq!(redact("accept-encoding", "gzip"), "gzip");
        assert_eq!(redact("sec-websocket-key", "k"), "k");
        assert_eq!(redact("coder-desktop-telemetry", "{}"), "{}");
        assert_eq!(
            redact("x-custom", "value"),
            format!("<redacted:{}>", fingerprint("value"))
        );
    }

    #[test]
    fn record_is_bounded_and_status_filled_in() {
        let mut recorder = Recorder::default();
        let request = RecordedRequest {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            headers: Vec::new(),
            status: 0,
        };
        let index = recorder.begin(request.clone());
        recorder.finish(index, 204);
        assert_eq!(recorder.requests()[0].status, 204);
        for _ in 1..RECORD_LIMIT {
            recorder.begin(request.clone());
        }
        assert_eq!(recorder.begin(request), None);
        assert_eq!(recorder.requests().len(), RECORD_LIMIT);
    }
}
