//! Selecting and running cases: a fresh process per case, the mock control
//! plane for tiers above `wire`, a bound on every case, and a grade per
//! protocol.md §1.4.

use std::time::{Duration, Instant};

use codervpn_codec::Manager;
use codervpn_mock_coder::{AgentStats, MockCoder, MockConfig, Scenario};
use futures_util::StreamExt;
use serde::Serialize;

use crate::engine::{self, Verdict};
use crate::link_side::SocketLaunch;
use crate::manager_side::ManagerLaunch;
use crate::target::{Launch, LaunchError};
use crate::transcript::{Level, Target, Tier, Transcript};
use crate::tun::{Framing, TunPort};

/// The token the mock control plane accepts in suite runs.
pub const SUITE_TOKEN: &str = "codervpn-conformance-token";

/// What to run and how to grade it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The tunnel under test, for tunnel-side cases.
    pub launch: Option<Launch>,
    /// Cases of this tier and the ones below it.
    pub tier: Tier,
    /// `--level should`: SHOULD and hazard failures fail the run.
    pub strict: bool,
    pub only: Vec<glob::Pattern>,
    pub skip: Vec<glob::Pattern>,
    pub jobs: usize,
    /// Overrides every case's own bound.
    pub timeout_ms: Option<u64>,
    /// Pass each case's `tunnel_args` (the built-in tunnel understands them).
    pub builtin: bool,
    /// The manager under test, for manager-side cases.
    pub manager: Option<ManagerLaunch>,
    /// How packets are framed on the tunnel's tun descriptor (§9.5).
    pub tun_framing: Framing,
    /// The Windows service under test, for service cases (§8).
    pub service: Option<SocketLaunch>,
    /// The Windows client under test, for client cases (§8).
    pub client: Option<SocketLaunch>,
}

/// The grade of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Grade {
    Pass,
    Warn,
    Fail,
    /// The case could not run (setup).
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub id: String,
    pub title: String,
    pub spec: String,
    pub level: Level,
    pub tier: Tier,
    pub grade: Grade,
    /// What went wrong or was odd; empty on a clean pass.
    pub message: String,
    pub duration_ms: u64,
    /// The case with what was recorded (token redacted).
    pub transcript: Transcript,
    /// The tail of the implementation's stderr, when it failed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr: String,
}

/// Whether `options` select `case`.
pub fn selected(case: &Transcript, options: &Options) -> bool {
    let has_target = match case.target {
        Target::Tunnel => options.launch.is_some(),
        Target::Manager => options.manager.is_some(),
        Target::Service => options.service.is_some(),
        Target::Client => options.client.is_some(),
    };
    has_target
        && case.tier <= options.tier
        && (options.only.is_empty() || options.only.iter().any(|p| p.matches(&case.id)))
        && !options.skip.iter().any(|p| p.matches(&case.id))
}

/// Runs the selected cases, `jobs` at a time; results in ID order.
pub async fn run(cases: &[Transcript], options: &Options) -> Result<Vec<CaseResult>, LaunchError> {
    run_with_progress(cases, options, |_| {}).await
}

/// Like [`run`], calling `on_done` as each case finishes (completion order).
pub async fn run_with_progress(
    cases: &[Transcript],
    options: &Options,
    mut on_done: impl FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, LaunchError> {
    if let Some(launch) = &options.launch {
        launch.check()?;
    }
    if let Some(manager) = &options.manager {
        manager.check().map_err(LaunchError::Manager)?;
    }
    if let Some(service) = &options.service {
        service
            .check("--service-cmd")
            .map_err(LaunchError::Manager)?;
    }
    if let Some(client) = &options.client {
        client.check("--client-cmd").map_err(LaunchError::Manager)?;
    }
    let chosen: Vec<&Transcript> = cases.iter().filter(|c| selected(c, options)).collect();
    let mut running = futures_util::stream::iter(chosen)
        .map(|case| run_one(case, options))
        .buffer_unordered(options.jobs.max(1));
    let mut results = Vec::new();
    while let Some(result) = running.next().await {
        on_done(&result);
        results.push(result);
    }
    results.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(results)
}

async fn run_one(case: &Transcript, options: &Options) -> CaseResult {
    let started = Instant::now();
    let mut case = case.clone();
    if let Some(ms) = options.timeout_ms {
        case.timeout_ms = ms;
    }
    let result = |grade, message: String, transcript, stderr| CaseResult {
        id: case.id.clone(),
        title: case.title.clone(),
        spec: case.spec.clone(),
        level: case.level,
        tier: case.tier,
        grade,
        message,
        duration_ms: started.elapsed().as_millis() as u64,
        transcript,
        stderr,
    };
    if case.target == Target::Manager {
        let Some(manager) = &options.manager else {
            return result(
                Grade::Error,
                "no manager to test".into(),
                case.clone(),
                String::new(),
            );
        };
        let outcome = crate::manager_side::run_case(&case, manager).await;
        let mut transcript = case.clone();
        transcript.recorded = outcome.recorded;
        let (grade, message) = grade(&case, options, outcome.verdict, "");
        return result(grade, message, transcript, String::new());
    }
    let mock = if case.tier >= Tier::Control {
        let config = MockConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            token: SUITE_TOKEN.into(),
            scenario: Scenario::demo(),
            ..MockConfig::default()
        };
        match MockCoder::start(config).await {
            Ok(mock) => Some(mock),
            Err(err) => {
                return result(
                    Grade::Error,
                    format!("cannot start the mock control plane: {err}"),
                    case.clone(),
                    String::new(),
                );
            }
        }
    } else {
        None
    };
    if matches!(case.target, Target::Service | Target::Client) {
        let launch = match case.target {
            Target::Service => options.service.as_ref(),
            _ => options.client.as_ref(),
        };
        let Some(launch) = launch else {
            return result(
                Grade::Error,
                "nothing to test for this target".into(),
                case.clone(),
                String::new(),
            );
        };
        let side = crate::link_side::run_case(&case, launch, mock.as_ref(), SUITE_TOKEN).await;
        if let Some(mock) = mock {
            let _ = tokio::time::timeout(Duration::from_secs(3), mock.shutdown()).await;
        }
        if let Some(why) = side.setup_error {
            return result(Grade::Error, why, case.clone(), String::new());
        }
        let mut transcript = case.clone();
        transcript.recorded = side.outcome.recorded;
        let died = side
            .exit
            .filter(|s| !s.success())
            .map(|s| format!(" (the process crashed: {s})"))
            .unwrap_or_default();
        let (grade, message) = grade(&case, options, side.outcome.verdict, &died);
        let stderr = if grade == Grade::Pass {
            String::new()
        } else {
            plain_text(&side.stderr)
        };
        return result(grade, message, transcript, stderr);
    }
    let extra = if options.builtin {
        case.tunnel_args.clone()
    } else {
        Vec::new()
    };
    let Some(launch) = &options.launch else {
        return result(
            Grade::Error,
            "no tunnel to test".into(),
            case.clone(),
            String::new(),
        );
    };
    let (running, stream) = match launch.spawn(&extra) {
        Ok(spawned) => spawned,
        Err(err) => return result(Grade::Error, err.to_string(), case.clone(), String::new()),
    };
    let tun = match running
        .tun
        .try_clone()
        .and_then(|socket| TunPort::new(socket, options.tun_framing))
    {
        Ok(tun) => tun,
        Err(err) => {
            let _ = running.finish().await;
            return result(
                Grade::Error,
                format!("cannot use the tun socket pair: {err}"),
                case.clone(),
                String::new(),
            );
        }
    };
    let outcome =
        engine::run::<Manager>(&case, stream, mock.as_ref(), SUITE_TOKEN, Some(tun)).await;
    let stderr = plain_text(&running.stderr());
    let status = running.finish().await;
    // A dataplane case that did not pass: what each mock agent saw says
    // why a packet got no answer (no handshake, an unknown key, a bad
    // inner source, ...).
    let agents = match (&outcome.verdict, &mock) {
        (Verdict::Fail(_) | Verdict::Warn(_), Some(mock)) if case.tier == Tier::Dataplane => {
            agent_summary(&mock.agent_stats())
        }
        _ => String::new(),
    };
    if let Some(mock) = mock {
        let _ = tokio::time::timeout(Duration::from_secs(3), mock.shutdown()).await;
    }
    let mut transcript = case.clone();
    transcript.recorded = outcome.recorded;
    // §1.4 item 3: say whether it crashed (exited on its own, unsuccessfully).
    let died = status
        .filter(|s| !s.success())
        .map(|s| format!(" (the process crashed: {s})"))
        .unwrap_or_default();
    let (grade, message) = grade(&case, options, outcome.verdict, &format!("{died}{agents}"));
    let stderr = if grade == Grade::Pass {
        String::new()
    } else {
        stderr
    };
    result(grade, message, transcript, stderr)
}

/// `text` without terminal escape sequences (colour codes a logger writes
/// even to a pipe) or other control characters but newline and tab: the
/// reports show it on a terminal, in JSON, and in JUnit XML, where such
/// characters are not even allowed.
pub fn plain_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters… final byte (@ to ~); else ESC and
                // the one character after it.
                if chars.next_if_eq(&'[').is_some() {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// One line per mock agent: handshakes, packets, and drops by reason.
fn agent_summary(stats: &[AgentStats]) -> String {
    let mut out = String::new();
    for agent in stats {
        let drops = serde_json::to_value(agent.dropped)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>();
        out.push_str(&format!(
            "; mock agent {} ({}): {} handshakes, {} packets in, {} out{}",
            agent.name,
            agent.address,
            agent.handshakes,
            agent.rx_packets,
            agent.tx_packets,
            if drops.is_empty() {
                String::new()
            } else {
                format!(", dropped: {}", drops.join(", "))
            }
        ));
    }
    out
}

/// §1.4: a broken MUST fails; a broken SHOULD or hazard rule warns, and
/// fails only in a strict run.
fn grade(case: &Transcript, options: &Options, verdict: Verdict, note: &str) -> (Grade, String) {
    match verdict {
        Verdict::Pass => (Grade::Pass, String::new()),
        Verdict::Warn(why) => (Grade::Warn, format!("{why}{note}")),
        Verdict::Fail(why) => {
            let grade = match case.level {
                Level::Must => Grade::Fail,
                Level::Should | Level::Hazard if options.strict => Grade::Fail,
                Level::Should | Level::Hazard => Grade::Warn,
            };
            (grade, format!("{why}{note}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::plain_text;

    #[test]
    fn stderr_loses_colour_codes_and_control_characters() {
        assert_eq!(
            plain_text("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m x\r\n\tok\u{7}\u{1b}c"),
            "2026  WARN x\n\tok"
        );
        assert_eq!(plain_text("plain ü\n"), "plain ü\n");
        assert_eq!(plain_text("\u{1b}["), "");
    }
}
