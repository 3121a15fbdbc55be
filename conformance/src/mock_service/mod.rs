//! The mock Windows service (`codervpn mock-service`): the service end of
//! the client↔service link (protocol.md §8), a well-behaved reference for
//! testing clients, and the service the service-side cases are checked
//! against.
//!
//! It listens on a Unix socket (the stand-in for the named pipe
//! `\\.\pipe\Coder.Desktop.Vpn`, §8.1), accepts any number of clients,
//! handshakes with each as `service` (5 s bound), and then:
//! * Start ([`lifecycle`]): Initializing, buildinfo and users/me
//!   ([`control`]), STARTING, the daemon download with progress
//!   ([`download`]), Finalizing, a tunnel launched by command and driven as
//!   its manager ([`tunnel`]), STARTED or STOPPED, then the tunnel's
//!   StartResponse (§8.3);
//! * Stop: STOPPING, teardown, STOPPED, StopResponse, Status (§8.4);
//! * StatusRequest: the Status at once;
//! * tunnel PeerUpdates merged and broadcast with the full state, a dying
//!   tunnel reported STOPPED (§8.5, §8.6 rule 5);
//! * broadcasts to every client without ever cutting a frame or letting a
//!   slow client hold anything up ([`broadcast`], §8.6 rule 6, §8.7).
//!
//! The tunnel is launched by command (`--tunnel-cmd`, the reference tunnel
//! by default), never from the downloaded file: the download is played for
//! its protocol effects (progress messages, ETag, 304).
//!
//! A request without an arm (or with an arm this schema does not know) gets
//! an arm-less reply, `ServiceMessage{rpc{response_to}}`, as a tunnel
//! answers unknown requests (§5.5). The Windows service gives no reply and
//! the client waits (§8.2 hazard); §8.6 rule 1 asks for an answer in
//! bounded time, and a C# client never receives this reply because its
//! speaker refuses to send an arm-less request in the first place (§4.5
//! item 3). Messages without a request id are logged and ignored.

pub mod broadcast;
pub mod control;
pub mod download;
pub mod lifecycle;
mod session;
pub mod state;
pub mod tunnel;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use codervpn_codec::VersionList;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::broadcast::Hub;
use self::download::Downloads;
use self::tunnel::TunnelLink;
use crate::target::Launch;

/// Versions advertised by default, as current Windows releases (§8.1).
pub const DEFAULT_VERSIONS: &str = "1.3";
/// Where the daemon is downloaded from by default (§9.2, Linux name).
pub const DEFAULT_DOWNLOAD_PATH: &str = "/bin/coder-linux-amd64";
/// Bound on waiting for the operation lock (§8.6 rule 2).
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_millis(500);
/// Bound on a client's handshake (§8.1: 5 s).
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests of one client handled at once; more wait to be read.
pub const CLIENT_REQUESTS_IN_FLIGHT: usize = 8;
/// How long reaping a dead tunnel waits for a running operation.
const REAP_LOCK_WAIT: Duration = Duration::from_secs(30);
/// How long shutdown waits for a running operation (which is told to
/// give up) before it leaves the tunnel to be killed on exit.
const SHUTDOWN_LOCK_WAIT: Duration = Duration::from_secs(20);
/// How long shutdown lets clients take their last messages.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// How to run the service.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The Unix socket to listen on.
    pub socket: PathBuf,
    /// The tunnel command (placeholders as for `codervpn conform`).
    pub tunnel: Launch,
    /// Versions advertised to clients and to the tunnel.
    pub versions: VersionList,
    /// Path of the daemon binary under the client's `coder_url`.
    pub download_path: String,
    /// Bound on waiting for the operation lock.
    pub lock_wait: Duration,
}

impl ServiceConfig {
    /// The defaults, with the reference tunnel run by `exe` (normally
    /// `codervpn` itself).
    pub fn new(socket: PathBuf, exe: &Path) -> ServiceConfig {
        ServiceConfig {
            socket,
            tunnel: reference_tunnel(exe),
            versions: DEFAULT_VERSIONS
                .parse()
                .unwrap_or_else(|_| VersionList::default()),
            download_path: DEFAULT_DOWNLOAD_PATH.to_owned(),
            lock_wait: DEFAULT_LOCK_WAIT,
        }
    }
}

/// `<exe> tunnel --rpc-read-fd {rpc_read_fd} --rpc-write-fd {rpc_write_fd}`.
pub fn reference_tunnel(exe: &Path) -> Launch {
    let exe = exe.to_string_lossy();
    Launch::Fds(format!(
        "{} tunnel --rpc-read-fd {{rpc_read_fd}} --rpc-write-fd {{rpc_write_fd}}",
        shell_words::quote(&exe)
    ))
}

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("refusing to replace {0}: it exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot remove the stale socket {path}: {source}")]
    Stale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid tunnel command: {0}")]
    Tunnel(#[from] crate::target::LaunchError),
}

/// The telemetry fields the service adds to every Start (§6.2).
#[derive(Debug, Clone)]
struct Telemetry {
    device_id: String,
    device_os: String,
    version: String,
}

impl Telemetry {
    /// Like Windows: `device_id` = base64(SHA-256(machine id)), here of
    /// `/etc/machine-id`; `device_os` the OS name; the version in four
    /// parts (`0.1.0.0`).
    fn detect() -> Telemetry {
        use base64::Engine as _;
        let machine = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        let device_id = machine
            .map(|id| {
                let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            })
            .unwrap_or_default();
        let device_os = match std::env::consts::OS {
            "linux" => "Linux",
            "macos" => "macOS",
            "windows" => "Windows",
            other => other,
        };
        Telemetry {
            device_id,
            device_os: device_os.to_owned(),
            version: format!("{}.0", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// What the accept loop, the client sessions and the operations share.
#[derive(Debug)]
pub(crate) struct Service {
    config: ServiceConfig,
    hub: Arc<Hub>,
    /// The operation lock; it owns the current tunnel.
    op: tokio::sync::Mutex<Option<TunnelLink>>,
    generations: AtomicU64,
    downloads: Downloads,
    /// Fires on shutdown: running operations give up their long waits.
    closing: CancellationToken,
    /// Generations of tunnels that died while STARTED, to be reaped.
    deaths: mpsc::UnboundedSender<u64>,
    telemetry: Telemetry,
}

/// A bound service, ready to run.
#[derive(Debug)]
pub struct MockService {
    listener: UnixListener,
    service: Arc<Service>,
    deaths: mpsc::UnboundedReceiver<u64>,
}

impl MockService {
    /// Removes a stale socket file, binds, and prepares the service. Must
    /// be called inside a tokio runtime.
    pub fn bind(config: ServiceConfig) -> Result<MockService, ServiceError> {
        config.tunnel.check()?;
        let path = config.socket.clone();
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            if !meta.file_type().is_socket() {
                return Err(ServiceError::NotASocket(path));
            }
            std::fs::remove_file(&path).map_err(|source| ServiceError::Stale {
                path: path.clone(),
                source,
            })?;
        }
        let listener = UnixListener::bind(&path).map_err(|source| ServiceError::Bind {
            path: path.clone(),
            source,
        })?;
        let (deaths_tx, deaths) = mpsc::unbounded_channel();
        let socket_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        let service = Service {
            config,
            hub: Arc::new(Hub::default()),
            op: tokio::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            downloads: Downloads::beside(socket_dir),
            closing: CancellationToken::new(),
            deaths: deaths_tx,
            telemetry: Telemetry::detect(),
        };
        Ok(MockService {
            listener,
            service: Arc::new(service),
            deaths,
        })
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.service.config.socket
    }

    /// The shared state, for tests.
    pub fn hub(&self) -> Arc<Hub> {
        self.service.hub.clone()
    }

    /// Serves until `shutdown` fires, then stops the tunnel (Stop, bounded
    /// wait, kill), tells the clients STOPPED, closes them, and removes the
    /// socket file.
    pub async fn run(self, shutdown: CancellationToken) {
        let MockService {
            listener,
            service,
            mut deaths,
        } = self;
        tracing::info!(socket = %service.config.socket.display(), "mock service listening");
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(generation) = deaths.recv() => {
                    let service = service.clone();
                    tokio::spawn(async move { service.reap(generation).await });
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(session::serve(service.clone(), stream));
                    }
                    Err(err) => {
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        tracing::info!("shutting down");
        drop(listener);
        let _ = std::fs::remove_file(&service.config.socket);
        service.closing.cancel();
        service.shut_down_tunnel().await;
        service.hub.close_all(SHUTDOWN_FLUSH).await;
    }
}
