//! `codervpn mock-client`: a well-behaved Coder Desktop app toward a
//! Windows service (protocol.md §8.8), or, with `--transcript`, a scripted
//! client that plays a transcript against the service like a `service`
//! case of `codervpn conform` does. And the hidden `codervpn fake-service`,
//! a service that plays a transcript (a client case turned around), so the
//! suite's self-tests can show a service case failing against a service
//! that breaks its rule.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use codervpn_codec::VersionList;
use codervpn_conformance::engine::Verdict;
use codervpn_conformance::link_side;
use codervpn_conformance::mock_client::{self, ClientFault, ClientOptions};
use codervpn_conformance::transcript::Transcript;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A client of a Windows service, on its Unix socket.
#[derive(Debug, Args)]
pub struct MockClientArgs {
    /// The service's socket (the named pipe's stand-in).
    #[arg(long)]
    socket: PathBuf,
    /// Play this transcript (target `service`) instead of the default app
    /// behaviour; exits 0 when it passes, 1 when it fails.
    #[arg(long, value_name = "FILE")]
    transcript: Option<PathBuf>,
    /// Write the recording of `--transcript` here.
    #[arg(long, value_name = "FILE", requires = "transcript")]
    record: Option<PathBuf>,
    /// Send Start with this deployment URL once the service is STOPPED
    /// (`$coder_url` in a transcript). No Start without it.
    #[arg(long)]
    coder_url: Option<String>,
    /// The API token sent in Start (`$api_token` in a transcript).
    #[arg(
        long,
        env = "CODER_SESSION_TOKEN",
        default_value = "codervpn-mock-token",
        hide_env_values = true
    )]
    api_token: String,
    /// Send Stop this long after a successful Start.
    #[arg(long, value_name = "MS")]
    stop_after_ms: Option<u64>,
    /// Exit once the Stop is answered.
    #[arg(long)]
    exit_after_stop: bool,
    /// Bound on each reply (§8.8 item 5); on a timeout the link is dropped
    /// and made again.
    #[arg(long, default_value_t = 5_000)]
    reply_timeout_ms: u64,
    /// Bound on each (re)connection, retries included.
    #[arg(long, default_value_t = 30_000)]
    connect_timeout_ms: u64,
    /// The version list of our header.
    #[arg(long, default_value = "1.3")]
    versions: String,
    /// Break one client rule on purpose (tests the suite itself).
    #[arg(long, hide = true)]
    fault: Option<String>,
}

pub fn mock_client(args: MockClientArgs) -> ExitCode {
    let fault = match args.fault.as_deref() {
        None => None,
        Some(name) => match ClientFault::parse(name) {
            Some(fault) => Some(fault),
            None => {
                let names: Vec<String> = ClientFault::ALL.iter().map(|f| f.name()).collect();
                eprintln!("error: unknown fault {name:?}; one of {}", names.join(", "));
                return ExitCode::from(2);
            }
        },
    };
    let versions: VersionList = match args.versions.parse() {
        Ok(versions) => versions,
        Err(err) => {
            eprintln!("error: --versions: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    if let Some(path) = &args.transcript {
        return runtime.block_on(play(&args, path));
    }
    let options = ClientOptions {
        socket: args.socket,
        coder_url: args.coder_url,
        api_token: args.api_token,
        stop_after: args.stop_after_ms.map(Duration::from_millis),
        exit_after_stop: args.exit_after_stop,
        reply_timeout: Duration::from_millis(args.reply_timeout_ms),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        versions,
        fault,
    };
    runtime.block_on(async move {
        let cancel = CancellationToken::new();
        let on_signal = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (Ok(mut term), Ok(mut int)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::interrupt()),
                ) else {
                    return;
                };
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                cancel.cancel();
            })
        };
        let (events, mut lines) = tokio::sync::mpsc::unbounded_channel();
        let printer = tokio::spawn(async move {
            while let Some(line) = lines.recv().await {
                out!("{line}");
            }
        });
        let result = mock_client::run(&options, events, cancel).await;
        on_signal.abort();
        let _ = printer.await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `--transcript`: connect (bounded retries), play it as a client, print
/// the verdict.
async fn play(args: &MockClientArgs, path: &PathBuf) -> ExitCode {
    let case = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| Transcript::from_json(&text).map_err(|e| e.to_string()))
    {
        Ok(case) => case,
        Err(err) => {
            eprintln!("error: {}: {err}", path.display());
            return ExitCode::from(2);
        }
    };
    let case = bind_start(case, args.coder_url.as_deref(), &args.api_token);
    let limit = Duration::from_millis(args.connect_timeout_ms);
    let socket = args.socket.clone();
    let first = async {
        loop {
            if let Ok(stream) = tokio::net::UnixStream::connect(&socket).await {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let Ok(stream) = tokio::time::timeout(limit, first).await else {
        eprintln!(
            "error: cannot connect to {} within {limit:?}",
            socket.display()
        );
        return ExitCode::FAILURE;
    };
    let outcome = link_side::client_of(&case, stream, &socket, None, "").await;
    if let Some(file) = &args.record {
        let mut recording = case.clone();
        recording.recorded = outcome.recorded.clone();
        let text = serde_json::to_string_pretty(&recording).unwrap_or_default();
        if let Err(err) = std::fs::write(file, text + "\n") {
            eprintln!("error: cannot write {}: {err}", file.display());
            return ExitCode::from(2);
        }
    }
    match outcome.verdict {
        Verdict::Pass => {
            out!("PASS {}", case.id);
            ExitCode::SUCCESS
        }
        Verdict::Warn(why) => {
            out!("WARN {}: {why}", case.id);
            ExitCode::SUCCESS
        }
        Verdict::Fail(why) => {
            out!("FAIL {}: {why}", case.id);
            ExitCode::FAILURE
        }
    }
}

/// Puts `--coder-url` and `--api-token` in place of `$coder_url` and
/// `$api_token` (the engine binds them only for the suite's own control
/// plane).
fn bind_start(mut case: Transcript, coder_url: Option<&str>, token: &str) -> Transcript {
    fn walk(value: &mut Value, coder_url: Option<&str>, token: &str) {
        match value {
            Value::String(s) if s == "$coder_url" => {
                if let Some(url) = coder_url {
                    *s = url.to_owned();
                }
            }
            Value::String(s) if s == "$api_token" => *s = token.to_owned(),
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, coder_url, token)),
            Value::Object(map) => map.values_mut().for_each(|v| walk(v, coder_url, token)),
            _ => {}
        }
    }
    let Ok(mut events) = serde_json::to_value(&case.events) else {
        return case;
    };
    walk(&mut events, coder_url, token);
    if let Ok(events) = serde_json::from_value(events) {
        case.events = events;
    }
    case
}

/// A scripted service: plays one transcript (as the service) with the
/// first client that connects, then exits.
#[derive(Debug, Args)]
pub struct FakeServiceArgs {
    /// Where to listen.
    #[arg(long)]
    socket: PathBuf,
    /// The script, played as the service.
    #[arg(long, value_name = "FILE")]
    transcript: PathBuf,
}

pub fn fake_service(args: FakeServiceArgs) -> ExitCode {
    let case = match std::fs::read_to_string(&args.transcript)
        .map_err(|e| e.to_string())
        .and_then(|text| Transcript::from_json(&text).map_err(|e| e.to_string()))
    {
        Ok(case) => case,
        Err(err) => {
            eprintln!("error: {}: {err}", args.transcript.display());
            return ExitCode::from(2);
        }
    };
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let listener = match tokio::net::UnixListener::bind(&args.socket) {
            Ok(listener) => std::sync::Arc::new(listener),
            Err(err) => {
                eprintln!("error: cannot listen on {}: {err}", args.socket.display());
                return ExitCode::FAILURE;
            }
        };
        let limit = Duration::from_millis(case.timeout_ms);
        let Ok(Ok((stream, _))) = tokio::time::timeout(limit, listener.accept()).await else {
            eprintln!("error: no client within {limit:?}");
            return ExitCode::FAILURE;
        };
        let outcome = link_side::serve_client(&case, stream, listener).await;
        match outcome.verdict {
            Verdict::Fail(why) => {
                eprintln!("fake service: {why}");
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        }
    })
}
