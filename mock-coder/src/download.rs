//! `GET /bin/{name}`: the daemon binaries a manager downloads before it
//! launches a tunnel (protocol.md §9.2; the Windows service does it on
//! every client Start, §8.3 step 6).
//!
//! The mock serves deterministic bytes (the same name always gives the same
//! content, different names differ) of a configurable size, paced at a
//! configurable rate so that a download takes long enough for a manager's
//! progress reports (every 50 ms on Windows) to be seen. The answer carries
//! `Content-Length` (unless told not to, so that a manager's "total
//! unknown" path can be tested) and an `ETag` that is the quoted lowercase
//! hex SHA-1 of the content, and a matching `If-None-Match` (quoted, as
//! Windows sends it, or bare, as macOS does) gets `304 Not Modified`
//! (§9.2). The content is not an executable: managers under test launch
//! their tunnel by command, not the downloaded file.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use crate::http::api_error;
use crate::shared::Shared;

/// The route (axum syntax).
pub const DOWNLOAD_ROUTE: &str = "/bin/{name}";

/// Default size of a served binary: 4 MiB.
pub const DEFAULT_DOWNLOAD_SIZE: u64 = 4 * 1024 * 1024;
/// Default pace: 6 MiB/s, so the default download takes about 0.7 s.
pub const DEFAULT_DOWNLOAD_RATE: u64 = 6 * 1024 * 1024;
/// Largest size the mock agrees to serve (the content is held in memory).
pub const MAX_DOWNLOAD_SIZE: u64 = 256 * 1024 * 1024;

/// Bytes per body chunk; pacing happens between chunks.
const CHUNK: usize = 32 * 1024;
/// Distinct names whose content is kept; beyond that the cache starts over.
const CACHE_NAMES: usize = 16;

/// How `/bin/{name}` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadConfig {
    /// Bytes of every served file (at most [`MAX_DOWNLOAD_SIZE`]).
    pub size: u64,
    /// Pace in bytes per second; 0 sends as fast as the client reads.
    pub rate: u64,
    /// Leave out `Content-Length` (chunked body): the manager cannot know
    /// the total (§8.2: `bytes_total` then stays unset).
    pub omit_length: bool,
}

impl Default for DownloadConfig {
    fn default() -> DownloadConfig {
        DownloadConfig {
            size: DEFAULT_DOWNLOAD_SIZE,
            rate: DEFAULT_DOWNLOAD_RATE,
            omit_length: false,
        }
    }
}

/// One file's content and its ETag value (quoted lowercase hex SHA-1).
#[derive(Debug)]
struct Blob {
    bytes: Bytes,
    etag: String,
}

/// The configuration and the content already generated, by name.
#[derive(Debug, Default)]
pub(crate) struct Downloads {
    config: DownloadConfig,
    cache: Mutex<HashMap<String, Arc<Blob>>>,
}

impl Downloads {
    pub(crate) fn new(config: DownloadConfig) -> Downloads {
        Downloads {
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn blob(&self, name: &str) -> Arc<Blob> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(blob) = cache.get(name) {
            return blob.clone();
        }
        if cache.len() >= CACHE_NAMES {
            cache.clear();
        }
        let bytes = Bytes::from(content(name, self.config.size.min(MAX_DOWNLOAD_SIZE)));
        let etag = format!("\"{}\"", sha1_hex(&bytes));
        let blob = Arc::new(Blob { bytes, etag });
        cache.insert(name.to_owned(), blob.clone());
        blob
    }
}

/// The lowercase hex SHA-1 of `bytes` (the ETag without its quotes).
pub fn sha1_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The content served for `name`: `size` bytes of a splitmix64 stream
/// seeded with the FNV-1a hash of the name. Public so that tests can check
/// a download byte for byte.
pub fn content(name: &str, size: u64) -> Vec<u8> {
    let mut state = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let len = usize::try_from(size).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&z.to_le_bytes()[..take]);
    }
    out
}

/// Whether an `If-None-Match` value names `etag` (a list, `*`, weak
/// validators, and bare hex as macOS sends it all match).
fn matches(if_none_match: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    if_none_match.split(',').map(str::trim).any(|candidate| {
        let candidate = candidate.strip_prefix("W/").unwrap_or(candidate);
        candidate == "*" || candidate == etag || candidate.eq_ignore_ascii_case(bare)
    })
}

pub(crate) async fn download(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if name.is_empty() || name.starts_with('.') {
        return api_error(StatusCode::NOT_FOUND, format!("no such binary: {name:?}"));
    }
    let config = shared.downloads.config.clone();
    let downloads = shared.clone();
    let blob = match tokio::task::spawn_blocking(move || downloads.downloads.blob(&name)).await {
        Ok(blob) => blob,
        Err(err) => {
            return api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot build the binary: {err}"),
            );
        }
    };
    let etag = HeaderValue::from_str(&blob.etag).unwrap_or(HeaderValue::from_static("\"\""));
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| matches(value, &blob.etag));
    if cached {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mut response = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ETAG, etag);
    if !config.omit_length {
        response = response.header(header::CONTENT_LENGTH, blob.bytes.len());
    }
    let body = Body::from_stream(paced(blob.bytes.clone(), config.rate));
    response.body(body).unwrap_or_else(|err| {
        api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot build the response: {err}"),
        )
    })
}

/// The content in chunks, each sent no earlier than the rate allows.
fn paced(
    bytes: Bytes,
    rate: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let start = Instant::now();
    futures_util::stream::unfold(0usize, move |sent| {
        let bytes = bytes.clone();
        async move {
            if sent >= bytes.len() {
                return None;
            }
            if rate > 0 {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                tokio::time::sleep_until(start + due).await;
            }
            let end = (sent + CHUNK).min(bytes.len());
            Some((Ok(bytes.slice(sent..end)), end))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_deterministic_sized_and_named() {
        let a = content("coder-linux-amd64", 1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(a, content("coder-linux-amd64", 1000));
        assert_ne!(a, content("coder-windows-amd64.exe", 1000));
        assert_eq!(content("x", 13)[..], content("x", 16)[..13]);
    }

    #[test]
    fn if_none_match_forms() {
        let etag = "\"0a1b\"";
        assert!(matches("\"0a1b\"", etag));
        assert!(matches("0a1b", etag));
        assert!(matches("0A1B", etag));
        assert!(matches("W/\"0a1b\"", etag));
        assert!(matches("\"ffff\", \"0a1b\"", etag));
        assert!(matches("*", etag));
        assert!(!matches("\"0a1c\"", etag));
        assert!(!matches("", etag));
    }

    #[test]
    fn sha1_is_lowercase_hex() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }
}
