//! `codervpn`: the command-line front end of the CoderVPN toolkit.

#![forbid(unsafe_code)]

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use codervpn_codec::Role;

/// `println!` that ignores a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::say_line(format!($($arg)*))
    };
}

mod capture;

/// Writes to standard output, ignoring a closed pipe (`codervpn conform
/// --list | head` must not panic).
fn say_line(text: String) {
    say(&(text + "\n"));
}

fn say(text: &str) {
    use std::io::Write as _;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

mod client_cmd;
mod conform_cmd;
mod mock_cmds;
mod record_cmd;
mod rpc_fds;
mod tunnel_cmd;

#[derive(Debug, Parser)]
#[command(
    name = "codervpn",
    version,
    about = "Toolkit for the CoderVPN manager/tunnel protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Decode one direction of a captured stream (header line, then frames)
    /// into the header line and one proto3 JSON object per frame.
    Decode {
        /// The role that sent the captured bytes.
        #[arg(long, value_parser = parse_role)]
        from: Role,
        /// Capture file; standard input when absent.
        file: Option<PathBuf>,
    },
    /// The inverse of `decode`: a header line, then one JSON message per
    /// line, written to standard output as wire bytes.
    Encode {
        /// The role whose messages the input holds.
        #[arg(long, value_parser = parse_role)]
        from: Role,
        /// Input file; standard input when absent.
        file: Option<PathBuf>,
    },
    /// Run the conformance suite (default: against the built-in reference tunnel).
    Conform(conform_cmd::ConformArgs),
    /// Run the reference tunnel on a stream from a manager.
    Tunnel(tunnel_cmd::TunnelArgs),
    /// `coder vpn-daemon` compatible entry point.
    #[command(name = "vpn-daemon", hide = true)]
    VpnDaemon {
        #[command(subcommand)]
        command: VpnDaemon,
    },
    /// Run the mock Coder control plane.
    MockCoder(codervpn_mock_coder::cli::MockCoderArgs),
    /// Run a script against a tunnel and write what happened.
    Record(record_cmd::RecordArgs),
    /// Check a tunnel against a recording (volatile fields normalised).
    Replay(record_cmd::ReplayArgs),
    /// Play a manager-side case as the tunnel (launched by a manager under test).
    MockTunnel(mock_cmds::MockTunnelArgs),
    /// A well-behaved manager: launch a tunnel, Start, GetPeerUpdate, Stop.
    MockManager(mock_cmds::MockManagerArgs),
    /// A well-behaved Windows service on a Unix socket: clients Start, Stop
    /// and watch a tunnel it launches and manages (protocol.md §8).
    MockService(mock_cmds::MockServiceArgs),
    /// A well-behaved Windows client (the app) of a service, or a scripted one.
    MockClient(client_cmd::MockClientArgs),
    /// A service that plays a transcript (tests the suite itself).
    #[command(hide = true)]
    FakeService(client_cmd::FakeServiceArgs),
    /// A tunnel that breaks one rule on purpose (tests the suite itself).
    #[command(hide = true)]
    FaultyTunnel(mock_cmds::FaultyTunnelArgs),
}

#[derive(Debug, Subcommand)]
enum VpnDaemon {
    /// Same as `codervpn tunnel`.
    Run(tunnel_cmd::TunnelArgs),
}

fn parse_role(text: &str) -> Result<Role, String> {
    text.parse::<Role>().map_err(|err| err.to_string())
}

fn open_input(file: Option<&PathBuf>) -> anyhow::Result<Box<dyn Read>> {
    Ok(match file {
        // Opening a directory succeeds; reading it fails later with an
        // error that no longer names the path.
        Some(path) if path.is_dir() => {
            anyhow::bail!("cannot open {}: it is a directory", path.display())
        }
        Some(path) => Box::new(
            std::fs::File::open(path)
                .map_err(|err| anyhow::anyhow!("cannot open {}: {err}", path.display()))?,
        ),
        None => Box::new(std::io::stdin().lock()),
    })
}

/// `decode` or `encode`: whatever was written before an error is still
/// flushed, then the error is returned.
fn capture(command: Command) -> anyhow::Result<()> {
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::new(stdout);
    let result = match &command {
        Command::Decode { from, file } => {
            capture::decode(*from, open_input(file.as_ref())?, &mut out)
                .map_err(anyhow::Error::from)
        }
        Command::Encode { from, file } => {
            capture::encode(*from, BufReader::new(open_input(file.as_ref())?), &mut out)
                .map_err(anyhow::Error::from)
        }
        _ => Ok(()),
    };
    out.flush()?;
    result
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Tunnel(args)
        | Command::VpnDaemon {
            command: VpnDaemon::Run(args),
        } => tunnel_cmd::run(args),
        Command::MockCoder(args) => mock_coder(args),
        Command::Conform(args) => conform_cmd::run(args),
        Command::Record(args) => record_cmd::record(args),
        Command::Replay(args) => record_cmd::replay(args),
        Command::MockTunnel(args) => mock_cmds::mock_tunnel(args),
        Command::MockManager(args) => mock_cmds::mock_manager(args),
        Command::MockService(args) => mock_cmds::mock_service(args),
        Command::MockClient(args) => client_cmd::mock_client(args),
        Command::FakeService(args) => client_cmd::fake_service(args),
        Command::FaultyTunnel(args) => mock_cmds::faulty_tunnel(args),
        command @ (Command::Decode { .. } | Command::Encode { .. }) => match capture(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The runtime every async subcommand runs on; failing to start one is
/// reported once, here.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Runtime::new().map_err(|err| {
        eprintln!("error: cannot start the runtime: {err}");
        ExitCode::FAILURE
    })
}

fn mock_coder(args: codervpn_mock_coder::cli::MockCoderArgs) -> ExitCode {
    let runtime = match crate::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(codervpn_mock_coder::cli::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
