//! `codervpn mock-coder`: the mock as a process, for tunnels that do not
//! link this crate. The base URL is the first line of standard output, so a
//! harness can start it with `--listen 127.0.0.1:0` and read the port.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::{DownloadConfig, MockCoder, MockConfig, MockError, Scenario};

/// The token the mock accepts when `--token` is not given.
pub const DEFAULT_TOKEN: &str = "codervpn-mock-token";

/// Arguments of `codervpn mock-coder`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockCoderArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Scenario file (JSON, see docs/control-plane.md); the built-in demo
    /// (3 workspaces, 4 agents) when absent.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// The API token clients must send in Coder-Session-Token.
    #[arg(long, value_name = "TOKEN", default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// IP address the embedded agents' WireGuard UDP sockets bind to (each
    /// on a free port); their published endpoints carry it.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub agent_bind: IpAddr,
    /// Size in bytes of every binary served at `/bin/{name}` (§9.2).
    #[arg(long, value_name = "BYTES", default_value_t = crate::download::DEFAULT_DOWNLOAD_SIZE,
          value_parser = clap::value_parser!(u64).range(0..=crate::download::MAX_DOWNLOAD_SIZE))]
    pub download_size: u64,
    /// Pace of `/bin/{name}` in bytes per second; 0 means unpaced.
    #[arg(long, value_name = "BYTES_PER_SEC", default_value_t = crate::download::DEFAULT_DOWNLOAD_RATE)]
    pub download_rate: u64,
    /// Serve `/bin/{name}` without Content-Length (total unknown).
    #[arg(long)]
    pub download_no_length: bool,
}

/// Starts the mock, prints its base URL as the first line of standard
/// output, and serves until SIGINT or SIGTERM.
pub async fn run(args: MockCoderArgs) -> Result<(), MockError> {
    let scenario = match &args.scenario {
        Some(path) => Scenario::from_file(path)?,
        None => Scenario::demo(),
    };
    let mock = MockCoder::start(MockConfig {
        listen: args.listen,
        token: args.token,
        scenario,
        agent_bind_ip: args.agent_bind,
        download: DownloadConfig {
            size: args.download_size,
            rate: args.download_rate,
            omit_length: args.download_no_length,
        },
    })
    .await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", mock.url())?;
        out.flush()?;
    }
    tracing::info!(url = %mock.url(), "mock control plane listening");
    let signal = wait_for_signal().await;
    mock.shutdown().await;
    signal
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<(), MockError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<(), MockError> {
    tokio::signal::ctrl_c().await?;
    Ok(())
}
