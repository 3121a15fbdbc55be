//! Downloading the daemon binary before each tunnel launch, as the Windows
//! service does (protocol.md §8.3 step 6, §9.2), with the progress
//! broadcasts of §8.2.
//!
//! The file is kept in a directory of its own for the service's lifetime;
//! the next download sends `If-None-Match` with the quoted lowercase hex
//! SHA-1 of the kept file, and a `304` keeps it (no Downloading messages).
//! A new download goes to `.download-<n>` first and replaces the kept file
//! only once complete and checked: its length against the announced one,
//! and its SHA-1 against the server's ETag when that is a SHA-1 (Windows
//! does the same check). The Authenticode and version checks of Windows
//! are left out, and the file is never run: the tunnel is launched by
//! command (`--tunnel-cmd`), so any daemon can be tested.
//!
//! Every wait is bounded: connecting, the headers, each chunk (60 s
//! without data, as macOS) and the whole download (300 s).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use codervpn_mock_coder::download::sha1_hex;
use codervpn_proto::vpn::{StartProgressDownloadProgress, StartProgressStage};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, ETAG, IF_NONE_MATCH};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::broadcast::Hub;
use super::control::{Deployment, chain};

/// Interval of the Downloading broadcasts (§8.3 step 6).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(50);
/// Bound on the headers and on each chunk of the body.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the whole download.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(300);
/// Overrides `Content-Length` for progress (§9.2).
const ORIGINAL_LENGTH: &str = "X-Original-Content-Length";

/// Where downloads go: a directory made at the first download (a service
/// that is never asked to Start leaves nothing behind) and removed with
/// the service. It is made beside the service's socket, not in the system
/// temp directory, so that a service killed before it can clean up leaves
/// its files where whoever chose the socket's place will remove them.
#[derive(Debug)]
pub struct Downloads {
    parent: PathBuf,
    dir: std::sync::Mutex<Option<Arc<tempfile::TempDir>>>,
    attempts: AtomicU64,
}

/// What a download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `304`: the kept file is current.
    NotModified(PathBuf),
    /// A new file of this many bytes.
    Downloaded { path: PathBuf, bytes: u64 },
}

impl Downloads {
    /// Downloads into a new directory under `parent`.
    pub fn beside(parent: PathBuf) -> Downloads {
        Downloads {
            parent,
            dir: std::sync::Mutex::default(),
            attempts: AtomicU64::new(0),
        }
    }

    fn dir(&self) -> Result<Arc<tempfile::TempDir>, String> {
        let mut dir = self
            .dir
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(dir) = &*dir {
            return Ok(dir.clone());
        }
        let made = tempfile::Builder::new()
            .prefix("codervpn-mock-service-")
            .tempdir_in(&self.parent)
            .map_err(|err| {
                format!(
                    "cannot make a download directory in {}: {err}",
                    self.parent.display()
                )
            })?;
        let made = Arc::new(made);
        *dir = Some(made.clone());
        Ok(made)
    }

    /// Fetches `<coder_url><path>` into the download directory,
    /// broadcasting progress through `hub`. Ends early when `cancel` fires.
    pub async fn fetch(
        &self,
        deployment: &Deployment,
        path: &str,
        hub: &Hub,
        cancel: &CancellationToken,
    ) -> Result<Fetched, String> {
        let fail = |what: String| format!("download {path}: {what}");
        let url = deployment
            .params
            .url
            .join(path)
            .map_err(|err| fail(err.to_string()))?;
        let name = url
            .path_segments()
            .and_then(|mut s| s.next_back())
            .filter(|n| !n.is_empty() && !n.starts_with('.'))
            .unwrap_or("coder")
            .to_owned();
        let dir = self.dir().map_err(fail)?;
        let target = dir.path().join(&name);
        let work = async {
            let mut request = deployment.http.get(url);
            if let Ok(existing) = tokio::fs::read(&target).await {
                request = request.header(IF_NONE_MATCH, format!("\"{}\"", sha1_hex(&existing)));
            }
            let response = tokio::time::timeout(IDLE_TIMEOUT, request.send())
                .await
                .map_err(|_| format!("no answer within {IDLE_TIMEOUT:?}"))?
                .map_err(|err| chain(&err))?;
            match response.status() {
                StatusCode::NOT_MODIFIED if target.exists() => {
                    return Ok(Fetched::NotModified(target.clone()));
                }
                StatusCode::NOT_MODIFIED => {
                    return Err("server answered 304 but no file is kept".to_owned());
                }
                status if !status.is_success() => {
                    let body = tokio::time::timeout(IDLE_TIMEOUT, response.bytes())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    let message = String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>();
                    return Err(format!("server answered {status}: {message}"));
                }
                _ => {}
            }
            self.receive(response, dir.path(), &target, hub).await
        };
        tokio::select! {
            () = cancel.cancelled() => Err(fail("the service is shutting down".into())),
            result = tokio::time::timeout(TOTAL_TIMEOUT, work) => match result {
                Err(_) => Err(fail(format!("not complete within {TOTAL_TIMEOUT:?}"))),
                Ok(result) => result.map_err(fail),
            },
        }
    }

    /// Streams the body to a temporary file with progress broadcasts, checks
    /// it, and moves it to `target`.
    async fn receive(
        &self,
        mut response: reqwest::Response,
        dir: &Path,
        target: &Path,
        hub: &Hub,
    ) -> Result<Fetched, String> {
        let header_u64 = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let announced = header_u64(CONTENT_LENGTH.as_str());
        let total = header_u64(ORIGINAL_LENGTH).or(announced);
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.trim_start_matches("W/")
                    .trim_matches('"')
                    .to_ascii_lowercase()
            })
            .filter(|v| v.len() == 40 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        let partial = dir.join(format!(".download-{n}"));
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|err| format!("cannot create {}: {err}", partial.display()))?;

        // Progress every 50 ms once the headers are in (§8.3 step 6).
        let written = Arc::new(AtomicU64::new(0));
        let report = |bytes: u64| {
            hub.progress(
                StartProgressStage::Downloading,
                Some(StartProgressDownloadProgress {
                    bytes_written: bytes,
                    bytes_total: total,
                }),
            );
        };
        let body = async {
            let mut hasher = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
            loop {
                let chunk = tokio::time::timeout(IDLE_TIMEOUT, response.chunk())
                    .await
                    .map_err(|_| format!("no data for {IDLE_TIMEOUT:?}"))?
                    .map_err(|err| chain(&err))?;
                let Some(chunk) = chunk else { break };
                file.write_all(&chunk)
                    .await
                    .map_err(|err| format!("cannot write {}: {err}", partial.display()))?;
                hasher.update(&chunk);
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            file.flush()
                .await
                .map_err(|err| format!("cannot write {}: {err}", partial.display()))?;
            Ok::<_, String>(hasher.finish())
        };
        let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
        tokio::pin!(body);
        let digest = loop {
            tokio::select! {
                result = &mut body => break result,
                _ = ticker.tick() => report(written.load(Ordering::SeqCst)),
            }
        };
        let bytes = written.load(Ordering::SeqCst);
        let checked = digest.and_then(|digest| {
            if let Some(expected) = announced
                && expected != bytes
            {
                return Err(format!("got {bytes} bytes of {expected}"));
            }
            let got: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            match &etag {
                Some(etag) if *etag != got => {
                    Err(format!("SHA-1 {got} does not match the ETag {etag}"))
                }
                _ => Ok(()),
            }
        });
        if let Err(err) = checked {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(err);
        }
        // The last report has the final count.
        report(bytes);
        tokio::fs::rename(&partial, target)
            .await
            .map_err(|err| format!("cannot move the download into place: {err}"))?;
        Ok(Fetched::Downloaded {
            path: target.to_path_buf(),
            bytes,
        })
    }
}
