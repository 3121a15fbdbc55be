//! `codervpn record` and `codervpn replay`: run one script against a live
//! tunnel and keep what happened; check a live tunnel against a recording.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use codervpn_conformance::replay;
use codervpn_conformance::runner::{self, CaseResult, Grade, Options};
use codervpn_conformance::target::Launch;
use codervpn_conformance::transcript::{Tier, Transcript};

/// The implementation to run against.
#[derive(Debug, Args)]
pub struct TunnelTarget {
    /// Tunnel command line with {rpc_read_fd} and {rpc_write_fd}.
    #[arg(
        long,
        conflicts_with = "tunnel_stdio_cmd",
        required_unless_present = "tunnel_stdio_cmd"
    )]
    tunnel_cmd: Option<String>,
    /// Tunnel command line speaking on stdin/stdout.
    #[arg(long)]
    tunnel_stdio_cmd: Option<String>,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    target: TunnelTarget,
    /// The script: a transcript (docs/transcripts.md).
    #[arg(long)]
    script: PathBuf,
    /// Where to write the recording.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording made by `codervpn record` or `conform --artifacts`.
    transcript: PathBuf,
    #[command(flatten)]
    target: TunnelTarget,
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn load(path: &PathBuf) -> Result<Transcript, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Transcript::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn run_one(case: Transcript, target: &TunnelTarget) -> Result<CaseResult, String> {
    let launch = match (&target.tunnel_cmd, &target.tunnel_stdio_cmd) {
        (Some(cmd), _) => Launch::Fds(cmd.clone()),
        (None, Some(cmd)) => Launch::Stdio(cmd.clone()),
        (None, None) => return Err("give --tunnel-cmd or --tunnel-stdio-cmd".into()),
    };
    let options = Options {
        launch: Some(launch),
        tier: Tier::Dataplane,
        strict: false,
        only: Vec::new(),
        skip: Vec::new(),
        jobs: 1,
        timeout_ms: None,
        builtin: false,
        manager: None,
        service: None,
        client: None,
        tun_framing: Default::default(),
    };
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    let results = runtime
        .block_on(runner::run(std::slice::from_ref(&case), &options))
        .map_err(|e| e.to_string())?;
    results
        .into_iter()
        .next()
        .ok_or_else(|| "the script did not run".into())
}

fn verdict(result: &CaseResult) -> ExitCode {
    let word = match result.grade {
        Grade::Pass => "PASS",
        Grade::Warn => "WARN",
        Grade::Fail => "FAIL",
        Grade::Error => "ERROR",
    };
    out!("{word} {} {}", result.id, result.message);
    match result.grade {
        Grade::Pass | Grade::Warn => ExitCode::SUCCESS,
        Grade::Fail => ExitCode::FAILURE,
        Grade::Error => ExitCode::from(2),
    }
}

pub fn record(args: RecordArgs) -> ExitCode {
    let script = match load(&args.script) {
        Ok(script) => script,
        Err(err) => return fail(err),
    };
    let result = match run_one(script, &args.target) {
        Ok(result) => result,
        Err(err) => return fail(err),
    };
    let text = match serde_json::to_string_pretty(&result.transcript) {
        Ok(text) => text,
        Err(err) => return fail(err),
    };
    if let Err(err) = std::fs::write(&args.out, text + "\n") {
        return fail(format!("cannot write {}: {err}", args.out.display()));
    }
    verdict(&result)
}

pub fn replay(args: ReplayArgs) -> ExitCode {
    let recording = match load(&args.transcript) {
        Ok(recording) if recording.recorded.is_empty() => {
            return fail(format!(
                "{} has no recorded section",
                args.transcript.display()
            ));
        }
        Ok(recording) => recording,
        Err(err) => return fail(err),
    };
    match run_one(replay::script(&recording), &args.target) {
        Ok(result) => verdict(&result),
        Err(err) => fail(err),
    }
}
