//! Running client/service cases (the [S] and [C] rules of protocol.md §8):
//! the Windows link is a named pipe, stood in for by a Unix socket in a
//! fresh temporary folder, named by `{socket}` in the command line.
//!
//! * Target `service`: the harness starts the service under test
//!   (`--service-cmd`), waits (bounded) until its socket accepts, connects
//!   and plays the case as a client (`Side` [`Client`]); `reconnect` and
//!   `connect` open further connections to the same socket.
//! * Target `client`: the harness listens on the socket, starts the client
//!   under test (`--client-cmd`), accepts its connection (bounded) and plays
//!   the case as the service (`Side` [`Service`]); `reconnect` drops the
//!   link and accepts the client's next connection (§8.8 item 1).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use codervpn_codec::{Client, Service};
use codervpn_mock_coder::MockCoder;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};

use crate::engine::{self, Connector, Outcome, Verdict};
use crate::target::{Stream, command_words, keep_stderr};
use crate::transcript::{Target, Transcript};

/// How long a service may take to listen, or a client to connect, after
/// it was started.
pub const STARTUP_WAIT: Duration = Duration::from_secs(10);

/// A service or client under test: a command line with `{socket}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketLaunch {
    pub command: String,
}

impl SocketLaunch {
    /// Checks the command line (quoting, `{socket}`) without running it.
    pub fn check(&self, flag: &str) -> Result<(), String> {
        self.words(Path::new("")).map(drop).and_then(|()| {
            if self.command.contains("{socket}") {
                Ok(())
            } else {
                Err(format!("{flag} needs {{socket}} in {:?}", self.command))
            }
        })
    }

    fn words(&self, socket: &Path) -> Result<Vec<String>, String> {
        let words = command_words(&self.command).map_err(|err| err.to_string())?;
        let socket = socket.to_string_lossy();
        Ok(words
            .into_iter()
            .map(|w| w.replace("{socket}", &socket))
            .collect())
    }

    fn spawn(&self, socket: &Path) -> Result<Child, String> {
        let words = self.words(socket)?;
        Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", words[0]))
    }
}

/// What a client/service case gave: the engine's outcome, the tail of the
/// implementation's stderr, and how it exited if it did so on its own.
#[derive(Debug)]
pub struct SideOutcome {
    pub outcome: Outcome,
    pub stderr: String,
    pub exit: Option<std::process::ExitStatus>,
    /// The case could not be set up (an ERROR, not a failure).
    pub setup_error: Option<String>,
}

/// A fresh folder for the socket, removed when dropped.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(id: &str) -> Result<SocketDir, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "codervpn-{}-{id}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        Ok(SocketDir(dir))
    }

    fn socket(&self) -> PathBuf {
        self.0.join("link.sock")
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn split(stream: UnixStream) -> Stream {
    let (reader, writer) = stream.into_split();
    (Box::new(reader), Box::new(writer))
}

fn failed(why: String) -> Outcome {
    Outcome {
        verdict: Verdict::Fail(why),
        recorded: Vec::new(),
    }
}

/// Runs a case of target `service` or `client` against `launch`; `mock` is
/// the control plane a service's Start points at (`$coder_url`).
pub async fn run_case(
    case: &Transcript,
    launch: &SocketLaunch,
    mock: Option<&MockCoder>,
    token: &str,
) -> SideOutcome {
    let error = |why: String| SideOutcome {
        outcome: failed(why.clone()),
        stderr: String::new(),
        exit: None,
        setup_error: Some(why),
    };
    let dir = match SocketDir::new(&case.id) {
        Ok(dir) => dir,
        Err(why) => return error(why),
    };
    let socket = dir.socket();
    // A client connects to us, so we listen before starting it.
    let listener = match case.target {
        Target::Client => match UnixListener::bind(&socket) {
            Ok(listener) => Some(Arc::new(listener)),
            Err(e) => return error(format!("cannot listen on {}: {e}", socket.display())),
        },
        _ => None,
    };
    let mut child = match launch.spawn(&socket) {
        Ok(child) => child,
        Err(why) => return error(why),
    };
    let stderr = keep_stderr(&mut child);
    let outcome = match listener {
        Some(listener) => play_service(case, &mut child, listener).await,
        None => play_client(case, &mut child, &socket, mock, token).await,
    };
    let exit = end(&mut child).await;
    let stderr = {
        let kept = stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    };
    drop(dir);
    SideOutcome {
        outcome,
        stderr,
        exit,
        setup_error: None,
    }
}

/// Ends the process: SIGTERM first, so that a service can stop its tunnel
/// (a killed one would leave it to notice its pipes closing, §7.4), then
/// SIGKILL after [`TERM_GRACE`]; bounded throughout. Returns how it had
/// exited if it did so on its own, before being told to.
async fn end(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Some(status) = child.try_wait().ok().flatten() {
        return Some(status);
    }
    if let Some(pid) = child.id() {
        let term = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Ok(Ok(status)) = tokio::time::timeout(TERM_GRACE, term).await
            && status.success()
            && tokio::time::timeout(TERM_GRACE, child.wait()).await.is_ok()
        {
            return None;
        }
    }
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    None
}

/// How long a process gets to exit after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Target `service`: connect once it listens, then play the client.
async fn play_client(
    case: &Transcript,
    child: &mut Child,
    socket: &Path,
    mock: Option<&MockCoder>,
    token: &str,
) -> Outcome {
    let first = async {
        loop {
            if let Ok(stream) = UnixStream::connect(socket).await {
                return Ok(stream);
            }
            tokio::select! {
                status = child.wait() => {
                    return Err(format!(
                        "{}: the service exited ({}) before accepting a connection",
                        case.spec,
                        status.map_or_else(|e| e.to_string(), |s| s.to_string())
                    ));
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    };
    let stream = match tokio::time::timeout(STARTUP_WAIT, first).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(why)) => return failed(why),
        Err(_) => {
            return failed(format!(
                "{}: the service did not accept a connection on {} within {STARTUP_WAIT:?} \
                 (stalled)",
                case.spec,
                socket.display()
            ));
        }
    };
    client_of(case, stream, socket, mock, token).await
}

/// Plays `case` as a client of the service at `socket`, already connected
/// as `first`; `reconnect` and `connect` events dial `socket` again.
pub async fn client_of(
    case: &Transcript,
    first: UnixStream,
    socket: &Path,
    mock: Option<&MockCoder>,
    token: &str,
) -> Outcome {
    let path = socket.to_path_buf();
    let connector: Connector = Box::new(move || {
        let path = path.clone();
        Box::pin(async move {
            UnixStream::connect(&path)
                .await
                .map(split)
                .map_err(|e| format!("cannot connect to the service again: {e}"))
        })
    });
    engine::run_with::<Client>(case, split(first), mock, token, None, Some(connector)).await
}

/// Target `client`: accept its connection, then play the service.
async fn play_service(
    case: &Transcript,
    child: &mut Child,
    listener: Arc<UnixListener>,
) -> Outcome {
    let first = async {
        tokio::select! {
            accepted = listener.accept() => accepted
                .map(|(stream, _)| stream)
                .map_err(|e| format!("accepting the client failed: {e}")),
            status = child.wait() => Err(format!(
                "{}: the client exited ({}) without connecting",
                case.spec,
                status.map_or_else(|e| e.to_string(), |s| s.to_string())
            )),
        }
    };
    let stream = match tokio::time::timeout(STARTUP_WAIT, first).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(why)) => return failed(why),
        Err(_) => {
            return failed(format!(
                "{}: the client did not connect within {STARTUP_WAIT:?} (stalled)",
                case.spec
            ));
        }
    };
    serve_client(case, stream, listener).await
}

/// Plays `case` as the service to a client already connected as `first`;
/// the client's later connections (§8.1) are accepted on `listener`.
pub async fn serve_client(
    case: &Transcript,
    first: UnixStream,
    listener: Arc<UnixListener>,
) -> Outcome {
    let connector: Connector = Box::new(move || {
        let listener = listener.clone();
        Box::pin(async move {
            listener
                .accept()
                .await
                .map(|(stream, _)| split(stream))
                .map_err(|e| format!("accepting the client again failed: {e}"))
        })
    });
    engine::run_with::<Service>(case, split(first), None, "", None, Some(connector)).await
}

#[cfg(test)]
mod tests {
    use super::SocketLaunch;

    #[test]
    fn command_lines_need_the_socket_placeholder() {
        let launch = SocketLaunch {
            command: "svc --pipe {socket}".into(),
        };
        assert!(launch.check("--service-cmd").is_ok());
        let none = SocketLaunch {
            command: "svc".into(),
        };
        assert!(
            none.check("--service-cmd")
                .unwrap_err()
                .contains("{socket}")
        );
        let bad = SocketLaunch {
            command: "svc '{socket}".into(),
        };
        assert!(bad.check("--client-cmd").is_err());
    }
}
