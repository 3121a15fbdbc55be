//! `codervpn conform`: runs the conformance catalogue against the built-in
//! reference tunnel (no target given) or against a tunnel by command.
//!
//! Exit codes: 0 when every selected MUST case passed (warnings and
//! expected failures included), 1 when a case failed or a known failure
//! unexpectedly passed, 2 on usage or setup errors: a bad flag or
//! known-failures file, a command line that cannot be used, a case that
//! could not be run at all (e.g. the program does not exist).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use codervpn_conformance::catalogue;
use codervpn_conformance::expect_fail::KnownFailures;
use codervpn_conformance::link_side::SocketLaunch;
use codervpn_conformance::manager_side::ManagerLaunch;
use codervpn_conformance::report::{self, Outcome};
use codervpn_conformance::runner::{self, CaseResult, Grade, Options};
use codervpn_conformance::target::{Launch, LaunchError};
use codervpn_conformance::transcript::{Tier, Transcript};
use codervpn_conformance::tun::Framing;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Args)]
pub struct ConformArgs {
    /// Tunnel command line with {rpc_read_fd} and {rpc_write_fd}.
    #[arg(long, conflicts_with = "tunnel_stdio_cmd")]
    tunnel_cmd: Option<String>,
    /// Tunnel command line speaking on stdin/stdout.
    #[arg(long)]
    tunnel_stdio_cmd: Option<String>,
    /// Manager command line containing {tunnel_cmd}, which is replaced by a
    /// command starting this program's mock tunnel for the current case
    /// (it accepts --rpc-read-fd/--rpc-write-fd like `coder vpn-daemon run`).
    #[arg(long)]
    manager_cmd: Option<String>,
    /// Windows service command line containing {socket}, a fresh Unix
    /// socket path (the named pipe's stand-in) it must listen on; the
    /// service cases connect there as clients (protocol.md §8).
    #[arg(long)]
    service_cmd: Option<String>,
    /// Windows client command line containing {socket}, where the client
    /// cases listen as the service and the client must connect (§8).
    #[arg(long)]
    client_cmd: Option<String>,
    /// Highest tier to run (default: all, but wire for a tunnel command).
    #[arg(long, value_enum)]
    tier: Option<TierArg>,
    /// `should` grades SHOULD and hazard rules as failures (strict run).
    #[arg(long, value_enum, default_value = "must")]
    level: LevelArg,
    /// Run only cases whose ID matches (glob; repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Skip cases whose ID matches (glob; repeatable).
    #[arg(long)]
    skip: Vec<String>,
    /// List the selected cases and exit.
    #[arg(long)]
    list: bool,
    /// Known failures: one `CASE-ID  reason` per line (`#` comments and
    /// blank lines allowed). A listed case that fails does not fail the
    /// run; one that passes does, until it is removed from the file.
    #[arg(long, value_name = "FILE")]
    expect_fail: Option<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Write the report here instead of standard output (the closing
    /// summary line still goes to standard output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write one recorded transcript per case into this folder.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Cases run at once.
    #[arg(long, default_value_t = 2, value_parser = parse_jobs)]
    jobs: usize,
    /// Bound on each case, overriding the case's own. At least 1: a zero
    /// bound would fail every case and blame the implementation for it.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Packet framing on the tunnel's tun descriptor (dataplane tier):
    /// `raw` IP packets, or `utun`, the macOS 4-byte address family before
    /// each packet (protocol.md §9.5). The built-in tunnel is started with
    /// the same framing.
    #[arg(long, value_enum, default_value = "raw")]
    tun_framing: FramingArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FramingArg {
    Raw,
    Utun,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TierArg {
    Wire,
    Control,
    Dataplane,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LevelArg {
    Must,
    Should,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
    Junit,
}

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(err) => Err(err.to_string()),
    }
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

pub fn run(args: ConformArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(err) => return usage(format!("cannot find this program: {err}")),
    };
    let quoted = shell_quote(&exe.to_string_lossy());
    // No target at all: the built-in tunnel, the mock manager for the
    // manager-side cases, the mock service and the mock client for the
    // client/service cases.
    let builtin = args.tunnel_cmd.is_none()
        && args.tunnel_stdio_cmd.is_none()
        && args.manager_cmd.is_none()
        && args.service_cmd.is_none()
        && args.client_cmd.is_none();
    let launch = match (&args.tunnel_cmd, &args.tunnel_stdio_cmd) {
        (Some(cmd), None) => Some(Launch::Fds(cmd.clone())),
        (None, Some(cmd)) => Some(Launch::Stdio(cmd.clone())),
        _ if builtin => Some(Launch::Fds(format!(
            "{quoted} tunnel --log-level warn --rpc-read-fd {{rpc_read_fd}} --rpc-write-fd {{rpc_write_fd}}{}",
            match args.tun_framing {
                FramingArg::Raw => "",
                FramingArg::Utun => " --tun-framing utun",
            }
        ))),
        _ => None,
    };
    let manager = match &args.manager_cmd {
        Some(command) => Some(command.clone()),
        None if builtin => Some(format!(
            "{quoted} mock-manager --reply-timeout-ms 2000 --tunnel-cmd {{tunnel_cmd}}"
        )),
        None => None,
    }
    .map(|command| ManagerLaunch {
        command,
        exe: exe.clone(),
    });
    let service = match &args.service_cmd {
        Some(command) => Some(command.clone()),
        None if builtin => Some(format!("{quoted} mock-service --socket {{socket}}")),
        None => None,
    }
    .map(|command| SocketLaunch { command });
    let client = match &args.client_cmd {
        Some(command) => Some(command.clone()),
        None if builtin => Some(format!(
            "{quoted} mock-client --socket {{socket}} --reply-timeout-ms 2000"
        )),
        None => None,
    }
    .map(|command| SocketLaunch { command });
    let tier = match args.tier {
        Some(TierArg::Wire) => Tier::Wire,
        Some(TierArg::Control) => Tier::Control,
        Some(TierArg::Dataplane) => Tier::Dataplane,
        // A third-party tunnel gets the wire tier; a service or client
        // case needs no more of the implementation than the protocol and
        // the mock control plane, so those run in full.
        None if args.tunnel_cmd.is_some() || args.tunnel_stdio_cmd.is_some() => Tier::Wire,
        None => Tier::Dataplane,
    };
    let patterns = |list: &[String]| {
        list.iter()
            .map(|p| glob::Pattern::new(p).map_err(|e| format!("bad pattern {p:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    let (only, skip) = match (patterns(&args.only), patterns(&args.skip)) {
        (Ok(only), Ok(skip)) => (only, skip),
        (Err(e), _) | (_, Err(e)) => return usage(e),
    };
    let options = Options {
        launch,
        tier,
        strict: matches!(args.level, LevelArg::Should),
        only,
        skip,
        jobs: args.jobs,
        timeout_ms: args.timeout_ms,
        builtin,
        manager,
        service,
        client,
        tun_framing: match args.tun_framing {
            FramingArg::Raw => Framing::Raw,
            FramingArg::Utun => Framing::Utun,
        },
    };
    let cases = match catalogue::all() {
        Ok(cases) => cases,
        Err(err) => return usage(err),
    };
    let known = match &args.expect_fail {
        None => None,
        Some(path) => match KnownFailures::load(path)
            .and_then(|k| k.check_ids(cases.iter().map(|c| c.id.as_str())).map(|()| k))
        {
            Ok(known) => Some(known),
            Err(err) => return usage(err),
        },
    };
    let selected: Vec<&Transcript> = cases
        .iter()
        .filter(|c| runner::selected(c, &options))
        .collect();
    if args.list {
        for case in &selected {
            let listed = known
                .as_ref()
                .and_then(|k| k.get(&case.id))
                .map(|e| format!(" [expected to fail: {}]", e.reason))
                .unwrap_or_default();
            out!(
                "{:10} {:6} {:9} {} — {}{listed}",
                case.id,
                report::level_name(case.level),
                report::tier_name(case.tier),
                case.spec,
                case.title
            );
        }
        return ExitCode::SUCCESS;
    }
    if selected.is_empty() {
        return usage(
            "no case selected (check --only, --skip and --tier; --list shows the selection)",
        );
    }
    if let Some(Err(err)) = options.launch.as_ref().map(Launch::check) {
        return usage(err);
    }
    if let Some(Err(err)) = options.manager.as_ref().map(ManagerLaunch::check) {
        return usage(err);
    }
    if let Some(Err(err)) = options.service.as_ref().map(|s| s.check("--service-cmd")) {
        return usage(err);
    }
    if let Some(Err(err)) = options.client.as_ref().map(|c| c.check("--client-cmd")) {
        return usage(err);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return usage(format!("cannot start the runtime: {err}")),
    };
    let progress = (args.format == Format::Human
        && std::io::stdout().is_terminal()
        && std::io::stderr().is_terminal())
    .then(|| progress_bar(selected.len()));
    let started = Instant::now();
    let results = match runtime.block_on(run_cases(&cases, &options, progress)) {
        Ok(results) => results,
        Err(err) => return usage(err),
    };
    let elapsed = started.elapsed();
    if let Some(dir) = &args.artifacts {
        if let Err(err) = std::fs::create_dir_all(dir) {
            return usage(format!("cannot create {}: {err}", dir.display()));
        }
        for result in &results {
            let path = dir.join(format!("{}.json", result.id));
            if let Err(err) = std::fs::write(&path, report::artifact(result)) {
                return usage(format!("cannot write {}: {err}", path.display()));
            }
        }
    }
    let mut run = report::Run::new(&results, elapsed);
    if let Some(known) = &known {
        run = run.with_known(known);
    }
    let text = match args.format {
        Format::Human => run.human(),
        Format::Json => run.json(),
        Format::Junit => run.junit(),
    };
    match &args.output {
        Some(path) => {
            if let Err(err) = std::fs::write(path, &text) {
                return usage(format!("cannot write {}: {err}", path.display()));
            }
            out!("{}", run.closing_line());
        }
        None => crate::say(&text),
    }
    // A setup error exits 2 whatever the format: say why on stderr too, so
    // that a JSON or JUnit consumer's log shows it.
    let errors: Vec<&CaseResult> = results
        .iter()
        .filter(|r| run.outcome(r) == Outcome::Error)
        .collect();
    if let Some(first) = errors.first() {
        eprintln!(
            "error: {} of {} cases could not be run (setup error), e.g. {}: {}",
            errors.len(),
            results.len(),
            first.id,
            report::redact_secrets(&first.message)
        );
    }
    ExitCode::from(run.exit_code())
}

/// Runs the selected cases; with a progress bar that moves as each ends.
async fn run_cases(
    cases: &[Transcript],
    options: &Options,
    progress: Option<ProgressBar>,
) -> Result<Vec<CaseResult>, LaunchError> {
    let Some(bar) = progress else {
        return runner::run(cases, options).await;
    };
    let mut failed = 0;
    let results = runner::run_with_progress(cases, options, |result| {
        if matches!(result.grade, Grade::Fail | Grade::Error) {
            failed += 1;
        }
        bar.inc(1);
        bar.set_message(format!("{failed} failed, last {}", result.id));
    })
    .await;
    bar.finish_and_clear();
    results
}

/// A bar on stderr; drawn only there, and cleared before the report.
fn progress_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} cases {elapsed} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

fn shell_quote(word: &str) -> String {
    shell_words::quote(word).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConformArgs,
    }

    #[test]
    fn flags_parse_and_jobs_must_be_positive() {
        let cli = Cli::try_parse_from([
            "conform",
            "--format",
            "junit",
            "--expect-fail",
            "known.txt",
            "--jobs",
            "4",
        ])
        .map_err(|e| e.to_string());
        let Ok(cli) = cli else {
            panic!("{cli:?}");
        };
        assert_eq!(cli.args.format, Format::Junit);
        assert_eq!(cli.args.expect_fail, Some(PathBuf::from("known.txt")));
        assert_eq!(cli.args.jobs, 4);
        assert_eq!(cli.args.tun_framing, FramingArg::Raw);
        let utun =
            Cli::try_parse_from(["conform", "--tun-framing", "utun"]).map_err(|e| e.to_string());
        assert!(
            matches!(utun, Ok(ref c) if c.args.tun_framing == FramingArg::Utun),
            "{utun:?}"
        );
        assert!(Cli::try_parse_from(["conform", "--tun-framing", "ethernet"]).is_err());
        assert!(Cli::try_parse_from(["conform", "--jobs", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["conform", "--tunnel-cmd", "a", "--tunnel-stdio-cmd", "b"])
                .is_err()
        );
    }
}
