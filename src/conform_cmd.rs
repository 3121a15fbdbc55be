//! `codervpn conform`: runs the conformance catalogue against the built-in
//! reference tunnel (no target given) or against a tunnel by command.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, ValueEnum};
use codervpn_conformance::manager_side::ManagerLaunch;
use codervpn_conformance::runner::{self, Options};
use codervpn_conformance::target::Launch;
use codervpn_conformance::transcript::Tier;
use codervpn_conformance::{catalogue, report};

#[derive(Debug, Args)]
pub struct ConformArgs {
    /// Tunnel command line with {rpc_read_fd} and {rpc_write_fd}.
    #[arg(long, conflicts_with = "tunnel_stdio_cmd")]
    tunnel_cmd: Option<String>,
    /// Tunnel command line speaking on stdin/stdout.
    #[arg(long)]
    tunnel_stdio_cmd: Option<String>,
    /// Highest tier to run (default: all for the built-in tunnel, wire for
    /// a command).
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
    /// Report format.
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    output: Option<std::path::PathBuf>,
    /// Write one recorded transcript per case into this folder.
    #[arg(long)]
    artifacts: Option<std::path::PathBuf>,
    /// Cases run at once.
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Bound on each case, overriding the case's own.
    #[arg(long)]
    timeout_ms: Option<u64>,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

pub fn run(args: ConformArgs) -> ExitCode {
    let (launch, builtin) = match (&args.tunnel_cmd, &args.tunnel_stdio_cmd) {
        (Some(cmd), None) => (Launch::Fds(cmd.clone()), false),
        (None, Some(cmd)) => (Launch::Stdio(cmd.clone()), false),
        _ => match std::env::current_exe() {
            Ok(exe) => {
                let exe = shell_quote(&exe.to_string_lossy());
                (
                    Launch::Fds(format!(
                        "{exe} tunnel --log-level warn --rpc-read-fd {{rpc_read_fd}} --rpc-write-fd {{rpc_write_fd}}"
                    )),
                    true,
                )
            }
            Err(err) => return usage(format!("cannot find the built-in tunnel: {err}")),
        },
    };
    let tier = match args.tier {
        Some(TierArg::Wire) => Tier::Wire,
        Some(TierArg::Control) => Tier::Control,
        Some(TierArg::Dataplane) => Tier::Dataplane,
        None if builtin => Tier::Dataplane,
        None => Tier::Wire,
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
        manager: if builtin {
            std::env::current_exe().ok().map(|exe| ManagerLaunch {
                command: format!(
                    "{} mock-manager --tunnel-cmd {{tunnel_cmd}}",
                    shell_quote(&exe.to_string_lossy())
                ),
                exe,
            })
        } else {
            None
        },
    };
    let cases = match catalogue::all() {
        Ok(cases) => cases,
        Err(err) => return usage(err),
    };
    if args.list {
        for case in cases.iter().filter(|c| runner::selected(c, &options)) {
            println!(
                "{:10} {:?} {:?} {} — {}",
                case.id, case.level, case.tier, case.spec, case.title
            );
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return usage(format!("cannot start the runtime: {err}")),
    };
    let started = Instant::now();
    let results = match runtime.block_on(runner::run(&cases, &options)) {
        Ok(results) => results,
        Err(err) => return usage(err),
    };
    if let Some(dir) = &args.artifacts {
        if let Err(err) = std::fs::create_dir_all(dir) {
            return usage(format!("cannot create {}: {err}", dir.display()));
        }
        for result in &results {
            let path = dir.join(format!("{}.json", result.id));
            let text = serde_json::to_string_pretty(&result.transcript).unwrap_or_default();
            if let Err(err) = std::fs::write(&path, text) {
                return usage(format!("cannot write {}: {err}", path.display()));
            }
        }
    }
    let text = match args.format {
        Format::Human => report::human(&results, started.elapsed()),
        Format::Json => report::json(&results),
    };
    match &args.output {
        Some(path) => {
            if let Err(err) = std::fs::write(path, &text) {
                return usage(format!("cannot write {}: {err}", path.display()));
            }
            print!(
                "{}",
                report::human(&results, started.elapsed())
                    .lines()
                    .last()
                    .map(|l| format!("{l}\n"))
                    .unwrap_or_default()
            );
        }
        None => print!("{text}"),
    }
    let totals = report::totals(&results);
    if totals.failed + totals.errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn shell_quote(word: &str) -> String {
    shell_words::quote(word).into_owned()
}
