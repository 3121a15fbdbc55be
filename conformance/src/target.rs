//! Launching the implementation under test: a command line split as a
//! POSIX shell would (quotes respected), placeholders substituted, run
//! without a shell, on two inherited pipes (`{rpc_read_fd}`,
//! `{rpc_write_fd}`, as Coder Desktop launches `coder vpn-daemon run`,
//! protocol.md §2.2) or on its stdin/stdout. The process is killed and
//! reaped when the case ends, whatever happened.

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::process::{Child, Command};

/// Descriptor numbers the child gets for the two pipes.
pub const CHILD_READ_FD: i32 = 3;
pub const CHILD_WRITE_FD: i32 = 4;
/// Descriptor number of the tun stand-in: one end of a datagram socket pair
/// (one IP packet per datagram), named in StartRequest as `$tun_fd`.
pub const CHILD_TUN_FD: i32 = 5;

/// How to start the implementation under test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A command line with `{rpc_read_fd}` and `{rpc_write_fd}`.
    Fds(String),
    /// A command line speaking on stdin/stdout.
    Stdio(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot split the command line {0:?}: unbalanced quotes")]
    Split(String),
    #[error("the command line is empty")]
    Empty,
    #[error("--tunnel-cmd needs both {{rpc_read_fd}} and {{rpc_write_fd}} in {0:?}")]
    Placeholders(String),
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make pipes: {0}")]
    Pipe(#[source] std::io::Error),
    #[error("{0}")]
    Manager(String),
}

/// A running implementation under test and our ends of its stream.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// Our end of its tun descriptor (packets for the dataplane tier).
    pub tun: std::os::unix::net::UnixDatagram,
    /// The last bytes it wrote on stderr, for failure reports.
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Reader and writer of the stream to the implementation under test.
pub type Stream = (
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
);

const STDERR_KEEP: usize = 16 * 1024;

/// A command line split as a POSIX shell would: every launch flag
/// (`--tunnel-cmd`, `--manager-cmd`, `--service-cmd`, ...) goes through here.
pub fn command_words(line: &str) -> Result<Vec<String>, LaunchError> {
    let words = shell_words::split(line).map_err(|_| LaunchError::Split(line.to_owned()))?;
    if words.is_empty() {
        return Err(LaunchError::Empty);
    }
    Ok(words)
}

impl Launch {
    /// Checks the command line (placeholders, quoting) without running it.
    pub fn check(&self) -> Result<(), LaunchError> {
        self.words(&[]).map(|_| ())
    }

    fn words(&self, extra: &[String]) -> Result<Vec<String>, LaunchError> {
        let line = match self {
            Launch::Fds(line) | Launch::Stdio(line) => line,
        };
        let mut words = command_words(line)?;
        if let Launch::Fds(_) = self {
            if !line.contains("{rpc_read_fd}") || !line.contains("{rpc_write_fd}") {
                return Err(LaunchError::Placeholders(line.clone()));
            }
            for word in &mut words {
                *word = word
                    .replace("{rpc_read_fd}", &CHILD_READ_FD.to_string())
                    .replace("{rpc_write_fd}", &CHILD_WRITE_FD.to_string());
            }
        }
        words.extend(extra.iter().cloned());
        Ok(words)
    }

    /// Starts the implementation, with `extra` words appended.
    pub fn spawn(&self, extra: &[String]) -> Result<(Running, Stream), LaunchError> {
        self.spawn_with_device(extra, None)
    }

    /// Like [`Launch::spawn`], but when `device` is given (a real TUN
    /// descriptor, see [`crate::os_tun`]) the child inherits it at
    /// [`CHILD_TUN_FD`] instead of the datagram stand-in; [`Running::tun`]
    /// is then a socket whose peer is closed.
    pub fn spawn_with_device(
        &self,
        extra: &[String],
        device: Option<OwnedFd>,
    ) -> Result<(Running, Stream), LaunchError> {
        let words = self.words(extra)?;
        let mut command = Command::new(&words[0]);
        command
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let spawn_error = |source| LaunchError::Spawn {
            program: words[0].clone(),
            source,
        };
        // The tun stand-in, inherited at CHILD_TUN_FD in both launch modes.
        let (tun, child_tun) =
            std::os::unix::net::UnixDatagram::pair().map_err(LaunchError::Pipe)?;
        let mut mappings = vec![FdMapping {
            parent_fd: device.unwrap_or_else(|| OwnedFd::from(child_tun)),
            child_fd: CHILD_TUN_FD,
        }];
        let (mut child, stream): (Child, Stream) = match self {
            Launch::Fds(_) => {
                let (to_child, ours_w) = std::io::pipe().map_err(LaunchError::Pipe)?;
                let (ours_r, from_child) = std::io::pipe().map_err(LaunchError::Pipe)?;
                mappings.push(FdMapping {
                    parent_fd: OwnedFd::from(to_child),
                    child_fd: CHILD_READ_FD,
                });
                mappings.push(FdMapping {
                    parent_fd: OwnedFd::from(from_child),
                    child_fd: CHILD_WRITE_FD,
                });
                command
                    .fd_mappings(mappings)
                    .map_err(|_| spawn_error(std::io::Error::other("descriptor collision")))?;
                let child = command.spawn().map_err(spawn_error)?;
                // Our copies of the child's ends go now, so that its exit
                // shows up as EOF (§2.1 item 5).
                drop(command);
                let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(ours_r))
                    .map_err(LaunchError::Pipe)?;
                let writer = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(ours_w))
                    .map_err(LaunchError::Pipe)?;
                (child, (Box::new(reader), Box::new(writer)))
            }
            Launch::Stdio(_) => {
                command.stdin(Stdio::piped()).stdout(Stdio::piped());
                command
                    .fd_mappings(mappings)
                    .map_err(|_| spawn_error(std::io::Error::other("descriptor collision")))?;
                let mut child = command.spawn().map_err(spawn_error)?;
                drop(command);
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(spawn_error(std::io::Error::other("no stdio pipes")));
                };
                (child, (Box::new(stdout), Box::new(stdin)))
            }
        };
        let stderr = keep_stderr(&mut child);
        Ok((Running { child, tun, stderr }, stream))
    }
}

/// Keeps the last [`STDERR_KEEP`] bytes the child writes on its (piped)
/// stderr, for failure reports.
pub fn keep_stderr(child: &mut Child) -> Arc<Mutex<Vec<u8>>> {
    let stderr = Arc::new(Mutex::new(Vec::new()));
    if let Some(mut pipe) = child.stderr.take() {
        let keep = stderr.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let mut kept = keep.lock().unwrap_or_else(|p| p.into_inner());
                kept.extend_from_slice(&chunk[..n]);
                let excess = kept.len().saturating_sub(STDERR_KEEP);
                kept.drain(..excess);
            }
        });
    }
    stderr
}

impl Running {
    /// Whether the process has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The tail of its stderr.
    pub fn stderr(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }

    /// Gives the process `grace` to exit by itself (a tunnel may exit after
    /// Stop, §2.2 item 7), then kills and reaps it.
    pub async fn finish_within(mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
            return Some(status);
        }
        self.finish().await
    }

    /// Kills (if still running) and reaps the process, bounded. Returns how
    /// it had exited on its own, if it had.
    pub async fn finish(mut self) -> Option<std::process::ExitStatus> {
        if let Some(status) = self.exited() {
            return Some(status);
        }
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_are_split_like_a_shell_and_checked() {
        let launch = Launch::Fds(
            "'/opt/my tunnel' run --rpc-read-fd {rpc_read_fd} --rpc-write-fd={rpc_write_fd}".into(),
        );
        assert_eq!(
            launch.words(&["--x".into()]).unwrap(),
            [
                "/opt/my tunnel",
                "run",
                "--rpc-read-fd",
                "3",
                "--rpc-write-fd=4",
                "--x"
            ]
        );
        assert!(matches!(
            Launch::Fds("tunnel run".into()).check(),
            Err(LaunchError::Placeholders(_))
        ));
        assert!(matches!(
            Launch::Stdio("a 'b".into()).check(),
            Err(LaunchError::Split(_))
        ));
        assert!(matches!(
            Launch::Stdio("  ".into()).check(),
            Err(LaunchError::Empty)
        ));
    }
}
