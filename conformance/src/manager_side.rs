//! Running manager-side cases (the [M] rules): the manager under test is
//! started with `{tunnel_cmd}` in its command line replaced by a command
//! that starts this program's mock tunnel for the current case
//! (`codervpn mock-tunnel --case ID --report SOCKET`, accepting
//! `--rpc-read-fd/--rpc-write-fd` like `coder vpn-daemon run`). The mock
//! tunnel plays the case and sends the outcome back over a Unix socket.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::engine::{Outcome, Verdict};
use crate::target::command_words;
use crate::transcript::Transcript;

/// How to start the manager under test.
#[derive(Debug, Clone)]
pub struct ManagerLaunch {
    /// A command line containing `{tunnel_cmd}`.
    pub command: String,
    /// This program, to build the mock tunnel's command line.
    pub exe: PathBuf,
}

impl ManagerLaunch {
    pub fn check(&self) -> Result<(), String> {
        command_words(&self.command).map_err(|err| format!("--manager-cmd: {err}"))?;
        if !self.command.contains("{tunnel_cmd}") {
            return Err(format!(
                "--manager-cmd needs {{tunnel_cmd}} in {:?}",
                self.command
            ));
        }
        Ok(())
    }
}

/// Runs one manager-side case; the outcome comes from the mock tunnel.
pub async fn run_case(case: &Transcript, launch: &ManagerLaunch) -> Outcome {
    let socket = std::env::temp_dir().join(format!(
        "codervpn-conform-{}-{}-{}.sock",
        std::process::id(),
        case.id,
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_file(&socket);
    let outcome = run_with_socket(case, launch, &socket).await;
    let _ = std::fs::remove_file(&socket);
    outcome
}

fn failed(why: String) -> Outcome {
    Outcome {
        verdict: Verdict::Fail(why),
        recorded: Vec::new(),
    }
}

async fn run_with_socket(case: &Transcript, launch: &ManagerLaunch, socket: &Path) -> Outcome {
    let listener = match tokio::net::UnixListener::bind(socket) {
        Ok(listener) => listener,
        Err(err) => return failed(format!("cannot listen on {}: {err}", socket.display())),
    };
    let tunnel_cmd = shell_words::join([
        launch.exe.to_string_lossy().as_ref(),
        "mock-tunnel",
        "--case",
        &case.id,
        "--report",
        &socket.to_string_lossy(),
        "--timeout-ms",
        &case.timeout_ms.to_string(),
    ]);
    let words: Vec<String> = match command_words(&launch.command) {
        Ok(words) => words
            .into_iter()
            .map(|w| w.replace("{tunnel_cmd}", &tunnel_cmd))
            .collect(),
        Err(err) => return failed(format!("--manager-cmd: {err}")),
    };
    // Not empty: command_words refuses an empty line.
    let program = &words[0];
    let mut manager = match Command::new(program)
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => return failed(format!("cannot start {program:?}: {err}")),
    };
    // The mock tunnel bounds itself by the case timeout; allow for the
    // manager's start-up on top.
    let limit = Duration::from_millis(case.timeout_ms) + Duration::from_secs(5);
    let report = async {
        let (mut stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut text = Vec::new();
        stream
            .read_to_end(&mut text)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_slice::<Outcome>(&text)
            .map_err(|e| format!("unreadable report from the mock tunnel: {e}"))
    };
    let report = tokio::time::timeout(limit, report);
    tokio::pin!(report);
    let settle = |report: Result<Result<Outcome, String>, _>| match report {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(why)) => failed(why),
        Err(_) => failed(format!(
            "the manager did not launch the mock tunnel, or the case did not finish, within {limit:?}"
        )),
    };
    let outcome = tokio::select! {
        report = &mut report => settle(report),
        status = manager.wait() => {
            // A manager may exit once it has stopped the tunnel; the mock
            // tunnel's report is then a moment behind.
            match tokio::time::timeout(Duration::from_secs(3), &mut report).await {
                Ok(report) => settle(report),
                Err(_) => failed(format!(
                    "the manager exited ({}) without the mock tunnel reporting",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                )),
            }
        }
    };
    let _ = manager.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), manager.wait()).await;
    outcome
}
