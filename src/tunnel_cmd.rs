//! `codervpn tunnel` (alias `codervpn vpn-daemon run`): the reference tunnel
//! launched the way Coder Desktop launches `coder vpn-daemon run`
//! (protocol.md §2.2).

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use codervpn_codec::VersionList;
use codervpn_reference_tunnel::control::session::SessionConfig;
use codervpn_reference_tunnel::dataplane::{DataplaneConfig, Framing};
use codervpn_reference_tunnel::logs::manager_logs;
use codervpn_reference_tunnel::{Ending, TunnelConfig, fd, serve};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Args)]
pub struct TunnelArgs {
    #[command(flatten)]
    fds: crate::rpc_fds::RpcFds,
    /// Versions to advertise in the handshake (§3.6).
    #[arg(long, default_value = "1.2")]
    versions: VersionList,
    /// Period of the all-agents PeerUpdate (§6.9).
    #[arg(long, default_value_t = 5000)]
    update_interval_ms: u64,
    /// Bound on a whole Start (§6.2 item 4).
    #[arg(long, default_value_t = 60_000)]
    start_timeout_ms: u64,
    /// Bound on each NetworkSettings request (§6.10 item 2).
    #[arg(long, default_value_t = 30_000)]
    network_settings_timeout_ms: u64,
    /// Close the stream when no complete header came in this time (§3.8).
    #[arg(long, default_value_t = 10_000)]
    handshake_timeout_ms: u64,
    /// MTU announced to the manager; longer packets from the tun device
    /// get ICMPv6 Packet Too Big.
    #[arg(long, default_value_t = 1280, value_parser = clap::value_parser!(u32).range(1280..=65535))]
    mtu: u32,
    /// Packet framing on the tun descriptor: raw IP, or macOS utun's
    /// 4-byte address-family header (§9.5).
    #[arg(long, default_value = "raw")]
    tun_framing: Framing,
    /// UDP port of the WireGuard socket (0: any free port).
    #[arg(long, default_value_t = 0)]
    wg_listen_port: u16,
    /// Do not send NetworkSettingsRequests (an OS-configured tunnel, §6.10 item 3).
    #[arg(long)]
    no_network_settings: bool,
    /// Least severe level forwarded to the manager as Log messages.
    #[arg(long, default_value = "info")]
    manager_log_level: tracing::Level,
    /// Least severe level written to standard error.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

pub fn run(args: TunnelArgs) -> ExitCode {
    let (layer, queue) = manager_logs(args.manager_log_level);
    // Colour only for a person at a terminal: launchers capture stderr
    // into logs and reports, where escape codes are noise.
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::filter::LevelFilter::from_level(
            args.log_level,
        ));
    tracing_subscriber::registry()
        .with(layer)
        .with(stderr)
        .init();

    // Check the flags before touching any descriptor (§2.2 item 2).
    match args.fds.pair() {
        Ok(Some((read, write))) => {
            if let Err(err) = fd::check_pair(read, write) {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        }
        Ok(None) => {}
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    }
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let config = TunnelConfig {
        versions: args.versions,
        handshake_timeout: Duration::from_millis(args.handshake_timeout_ms),
        start_timeout: Duration::from_millis(args.start_timeout_ms),
        session: SessionConfig {
            update_interval: Duration::from_millis(args.update_interval_ms.max(1)),
            network_settings_timeout: Duration::from_millis(args.network_settings_timeout_ms),
            dataplane: DataplaneConfig {
                framing: args.tun_framing,
                listen_port: args.wg_listen_port,
                mtu: args.mtu,
            },
            send_network_settings: !args.no_network_settings,
        },
    };
    let code = runtime.block_on(async move {
        let (reader, writer) = match args.fds.open() {
            Ok(stream) => stream,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };
        tokio::select! {
            ending = serve(reader, writer, config, Some(queue)) => match ending {
                Ok(Ending::Stopped | Ending::StreamClosed) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err}");
                    ExitCode::FAILURE
                }
            },
            () = terminated() => ExitCode::SUCCESS,
        }
    });
    // Do not wait for stray blocking reads (stdio) to finish.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// SIGTERM or SIGINT (§2.2 item 7: exit promptly).
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
