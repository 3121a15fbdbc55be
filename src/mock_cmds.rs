//! `codervpn mock-tunnel`, `codervpn mock-manager` and `codervpn
//! mock-service`: the harness's scriptable counterparts as processes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use std::sync::Arc;

use codervpn_conformance::mock_manager::{self, Lifecycle, ManagerFault};
use codervpn_conformance::mock_tunnel;
use codervpn_conformance::os_tun::OsTun;
use codervpn_conformance::target::Launch;
use tokio_util::sync::CancellationToken;

/// What a manager under test launches for a manager-side case.
#[derive(Debug, Args)]
pub struct MockTunnelArgs {
    /// The catalogue case to play.
    #[arg(long)]
    case: String,
    /// The harness's Unix socket for the outcome.
    #[arg(long)]
    report: PathBuf,
    /// Bound on the case, overriding its own.
    #[arg(long)]
    timeout_ms: Option<u64>,
    #[command(flatten)]
    fds: crate::rpc_fds::RpcFds,
    /// `vpn-daemon run`, when launched like `coder vpn-daemon run`.
    #[arg(trailing_var_arg = true, hide = true)]
    rest: Vec<String>,
}

/// A well-behaved manager driving one tunnel lifecycle.
#[derive(Debug, Args)]
pub struct MockManagerArgs {
    /// The tunnel command; `--rpc-read-fd R --rpc-write-fd W` are appended,
    /// as Coder Desktop appends them to `coder vpn-daemon run`.
    #[arg(long)]
    tunnel_cmd: String,
    /// The deployment URL sent in Start.
    #[arg(long, default_value = "http://127.0.0.1:9")]
    coder_url: String,
    /// The API token sent in Start.
    #[arg(
        long,
        env = "CODER_SESSION_TOKEN",
        default_value = "codervpn-mock-token",
        hide_env_values = true
    )]
    api_token: String,
    /// Pause between StartResponse and Stop.
    #[arg(long, default_value_t = 200)]
    hold_ms: u64,
    /// Pause between StartResponse and Stop in seconds (overrides
    /// --hold-ms). SIGINT or SIGTERM ends the pause early; Stop follows.
    #[arg(long, value_name = "N")]
    hold_secs: Option<u64>,
    /// Create the TUN device NAME (Linux, needs CAP_NET_ADMIN), give it to
    /// the tunnel as its packet descriptor (fd 5, `tunnel_file_descriptor`)
    /// and apply its NetworkSettingsRequests to it with `ip`.
    #[arg(long, value_name = "NAME")]
    tun_device: Option<String>,
    /// Bound on every reply from the tunnel (§6.2 item 4, §7.2 item 4).
    #[arg(long, default_value_t = 30_000)]
    reply_timeout_ms: u64,
    /// Break one manager rule on purpose (tests the suite itself).
    #[arg(long, hide = true)]
    fault: Option<String>,
}

pub fn mock_tunnel(args: MockTunnelArgs) -> ExitCode {
    if !(args.rest.is_empty() || args.rest == ["vpn-daemon", "run"]) {
        eprintln!("error: unexpected arguments {:?}", args.rest);
        return ExitCode::from(2);
    }
    let fds = match args.fds.pair() {
        Ok(fds) => fds,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(mock_tunnel::run(
        &args.case,
        &args.report,
        fds,
        args.timeout_ms,
    )) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

pub fn mock_manager(args: MockManagerArgs) -> ExitCode {
    let fault = match args
        .fault
        .as_deref()
        .map(|name| (name, ManagerFault::parse(name)))
    {
        None => None,
        Some((_, Some(fault))) => Some(fault),
        Some((name, None)) => {
            let names: Vec<String> = ManagerFault::ALL.iter().map(|f| f.name()).collect();
            eprintln!("error: unknown fault {name:?}; one of {}", names.join(", "));
            return ExitCode::from(2);
        }
    };
    let launch = Launch::Fds(format!(
        "{} --rpc-read-fd {{rpc_read_fd}} --rpc-write-fd {{rpc_write_fd}}",
        args.tunnel_cmd
    ));
    let device = match args.tun_device.as_deref().map(OsTun::create) {
        None => None,
        Some(Ok(device)) => Some(Arc::new(device)),
        Some(Err(err)) => {
            eprintln!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let hold_cancel = CancellationToken::new();
    let (started, mut started_rx) = tokio::sync::mpsc::unbounded_channel();
    let lifecycle = Lifecycle {
        coder_url: args.coder_url,
        api_token: args.api_token,
        hold: args
            .hold_secs
            .map_or(Duration::from_millis(args.hold_ms), Duration::from_secs),
        reply_timeout: Duration::from_millis(args.reply_timeout_ms),
        fault,
        device,
        hold_cancel: hold_cancel.clone(),
        started: Some(started),
    };
    let result = runtime.block_on(async {
        // A first SIGINT or SIGTERM ends the hold (then Stop, bounded); a
        // second one gives up on the tunnel and kills it.
        let (again_tx, again_rx) = tokio::sync::oneshot::channel::<()>();
        let on_signal = tokio::spawn(async move {
            let Some(mut signals) = Signals::install() else {
                return;
            };
            signals.next().await;
            hold_cancel.cancel();
            signals.next().await;
            let _ = again_tx.send(());
        });
        // The readiness line: a test waits for it before sending traffic.
        let announce = tokio::spawn(async move {
            while let Some(line) = started_rx.recv().await {
                out!("started: {line}holding");
            }
        });
        let result = tokio::select! {
            result = mock_manager::run(&launch, &lifecycle) => result,
            Ok(()) = again_rx => Err("interrupted again while stopping; the tunnel was killed".into()),
        };
        on_signal.abort();
        drop(lifecycle);
        let _ = announce.await;
        result
    });
    match result {
        Ok(summary) => {
            out!("{summary}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The mock Windows service (protocol.md §8).
#[derive(Debug, Args)]
pub struct MockServiceArgs {
    /// Unix socket to listen on, the stand-in for the named pipe; a stale
    /// socket file there is replaced. `listening: PATH` is printed once
    /// clients can connect.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The tunnel to launch on each Start, with `{rpc_read_fd}` and
    /// `{rpc_write_fd}` placeholders (as for `conform`). Default: this
    /// binary's reference tunnel. The binary the service downloads from
    /// the deployment is never run: the tunnel always comes from here.
    #[arg(long, value_name = "CMD", conflicts_with = "tunnel_stdio_cmd")]
    tunnel_cmd: Option<String>,
    /// The tunnel to launch, speaking on its stdin and stdout.
    #[arg(long, value_name = "CMD")]
    tunnel_stdio_cmd: Option<String>,
    /// Versions advertised to clients and to the tunnel (§3.6, §8.1).
    #[arg(long, default_value = codervpn_conformance::mock_service::DEFAULT_VERSIONS)]
    versions: codervpn_codec::VersionList,
    /// Path of the daemon download under the client's coder_url (§9.2).
    #[arg(long, value_name = "PATH", default_value = codervpn_conformance::mock_service::DEFAULT_DOWNLOAD_PATH)]
    download_path: String,
    /// Bound on waiting for the operation lock before a Start or Stop is
    /// refused (§8.6 rule 2).
    #[arg(long, value_name = "MS", default_value_t = 500)]
    lock_wait_ms: u64,
    /// Least severe level written to standard error.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

pub fn mock_service(args: MockServiceArgs) -> ExitCode {
    use codervpn_conformance::mock_service::{MockService, ServiceConfig, reference_tunnel};
    // Colour only for a person at a terminal.
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_max_level(args.log_level)
        .init();
    if !args.download_path.starts_with('/') {
        eprintln!("error: --download-path must start with '/'");
        return ExitCode::from(2);
    }
    let tunnel = match (args.tunnel_cmd, args.tunnel_stdio_cmd) {
        (Some(cmd), _) => Launch::Fds(cmd),
        (None, Some(cmd)) => Launch::Stdio(cmd),
        (None, None) => match std::env::current_exe() {
            Ok(exe) => reference_tunnel(&exe),
            Err(err) => {
                eprintln!("error: cannot find this binary for the default tunnel: {err}");
                return ExitCode::from(2);
            }
        },
    };
    let config = ServiceConfig {
        socket: args.socket,
        tunnel,
        versions: args.versions,
        download_path: args.download_path,
        lock_wait: Duration::from_millis(args.lock_wait_ms),
    };
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let Some(mut signals) = Signals::install() else {
            eprintln!("error: cannot install the SIGINT/SIGTERM handlers");
            return ExitCode::FAILURE;
        };
        let service = match MockService::bind(config) {
            Ok(service) => service,
            Err(err) => {
                // A usage or setup error, as for `conform`.
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };
        out!("listening: {}", service.socket().display());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            signals.next().await;
            stop.cancel();
        });
        service.run(shutdown).await;
        ExitCode::SUCCESS
    })
}

/// SIGINT and SIGTERM, installed once so that none is missed between two
/// waits. Without them (installation failed) the hold just runs its time.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Option<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// A tunnel that breaks one rule on purpose (for testing the suite).
#[derive(Debug, Args)]
pub struct FaultyTunnelArgs {
    /// The rule to break (see `codervpn_conformance::faulty::Fault`).
    #[arg(long)]
    fault: String,
    #[command(flatten)]
    fds: crate::rpc_fds::RpcFds,
    /// Extra arguments for the real tunnel behind the fault.
    #[arg(last = true)]
    tunnel_args: Vec<String>,
}

pub fn faulty_tunnel(args: FaultyTunnelArgs) -> ExitCode {
    use codervpn_conformance::faulty::{Fault, relay};
    let Some(fault) = Fault::parse(&args.fault) else {
        let names: Vec<String> = Fault::ALL.iter().map(|f| f.name()).collect();
        eprintln!(
            "error: unknown fault {:?}; one of {}",
            args.fault,
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    // Half a pair must not fall back to stdio silently.
    if let Err(err) = args.fds.pair() {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    runtime.block_on(async move {
        let outer = args.fds.open();
        let outer = match outer {
            Ok(outer) => outer,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };
        let mut child = match tokio::process::Command::new(exe)
            .args(["tunnel", "--log-level", "error"])
            .args(&args.tunnel_args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(child) => child,
            Err(err) => {
                eprintln!("error: cannot start the real tunnel: {err}");
                return ExitCode::from(2);
            }
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return ExitCode::from(2);
        };
        relay(fault, outer, (Box::new(stdout), Box::new(stdin))).await;
        let _ = child.start_kill();
        ExitCode::SUCCESS
    })
}
