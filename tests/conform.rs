//! `codervpn conform` as a user and a CI job run it: against the built-in
//! reference tunnel, against broken or unusable commands, with every report
//! format, known failures and artifacts.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
/// The API token the suite gives the tunnel (`runner::SUITE_TOKEN`).
const SUITE_TOKEN: &str = "codervpn-conformance-token";
/// Generous bound on one whole run: a hung run fails the test instead of
/// hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(180);

/// Runs `codervpn conform ARGS` with no terminal (so no progress bar),
/// killing it if it outlives [`RUN_LIMIT`].
fn conform(args: &[&str]) -> Output {
    common::run_bounded(Command::new(BIN).arg("conform").args(args), RUN_LIMIT)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A fresh folder under cargo's scratch space for integration tests.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("conform-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The IDs `--list` prints, one per line, first word.
fn listed_ids(args: &[&str]) -> Vec<String> {
    let mut all = vec!["--list"];
    all.extend_from_slice(args);
    let out = conform(&all);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_builtin_tunnel_passes_and_the_summary_comes_last() {
    let out = conform(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let cases = listed_ids(&[]).len();
    assert!(cases > 0);
    // The summary, then the plain closing line CI runners read.
    let summary = lines[lines.len() - 2];
    assert!(
        summary.starts_with(&format!("{cases} cases in ")) && summary.contains(" 0 failed"),
        "{summary}"
    );
    assert_eq!(
        lines[lines.len() - 1],
        format!("conform: {cases} passed, 0 failed")
    );
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("PASS ")).count()
            + lines.iter().filter(|l| l.starts_with("WARN ")).count(),
        cases
    );
    // Not on a terminal: no progress bar, no escape sequences.
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !stream.contains(&0x1b) && !stream.contains(&b'\r'),
            "{}",
            describe(&out)
        );
    }
}

#[test]
fn list_prints_the_selected_ids() {
    let all = listed_ids(&[]);
    for id in ["HS-001", "HS-009", "RPC-001", "STOP-002"] {
        assert!(all.iter().any(|i| i == id), "{id} missing from {all:?}");
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "IDs in order");
    assert_eq!(listed_ids(&["--only", "HS-*"]).len(), {
        all.iter().filter(|i| i.starts_with("HS-")).count()
    });
    let without = listed_ids(&["--skip", "HS-001"]);
    assert_eq!(without.len(), all.len() - 1);
    assert!(!without.iter().any(|i| i == "HS-001"));
    // A third-party command gets the wire tier by default.
    let wire = listed_ids(&["--tunnel-stdio-cmd", "cat"]);
    assert!(!wire.iter().any(|i| i == "STOP-002"), "{wire:?}");
}

#[test]
fn json_report_and_artifacts_with_the_token_redacted() {
    let dir = scratch("artifacts");
    let artifacts = dir.join("transcripts");
    let out = conform(&[
        "--format",
        "json",
        "--artifacts",
        artifacts.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let totals = &report["totals"];
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(totals["cases"].as_u64().unwrap() as usize, cases.len());
    assert_eq!(cases.len(), listed_ids(&[]).len());
    assert_eq!(totals["failed"], 0);
    assert_eq!(totals["errors"], 0);
    assert_eq!(
        totals["passed"].as_u64().unwrap() + totals["warned"].as_u64().unwrap(),
        cases.len() as u64
    );
    assert_eq!(report["exit_code"], 0);
    for case in cases {
        for key in [
            "id",
            "title",
            "spec",
            "level",
            "tier",
            "grade",
            "message",
            "duration_ms",
            "transcript",
        ] {
            assert!(case.get(key).is_some(), "{key} missing in {}", case["id"]);
        }
    }
    // One transcript per case, each a recording that loads back.
    let mut files: Vec<String> = std::fs::read_dir(&artifacts)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let expected: Vec<String> = cases
        .iter()
        .map(|c| format!("{}.json", c["id"].as_str().unwrap()))
        .collect();
    assert_eq!(files, expected);
    for file in &files {
        let body = std::fs::read_to_string(artifacts.join(file)).unwrap();
        assert!(!body.contains(SUITE_TOKEN), "{file} leaks the API token");
        let transcript: Value = serde_json::from_str(&body).unwrap();
        assert!(
            !transcript["recorded"].as_array().unwrap().is_empty(),
            "{file} recorded nothing"
        );
    }
    // The case that starts against the mock control plane sent the token,
    // and its recording shows it redacted.
    let stop = std::fs::read_to_string(artifacts.join("STOP-002.json")).unwrap();
    assert!(stop.contains("\"apiToken\": \"<redacted>\""), "{stop}");
    assert!(!text(&out.stdout).contains(SUITE_TOKEN));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn junit_report_loads_as_junit_xml() {
    let dir = scratch("junit");
    let path = dir.join("report.xml");
    let out = conform(&["--format", "junit", "--output", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // With --output the closing line still goes to standard output.
    let cases = listed_ids(&[]).len();
    assert_eq!(
        text(&out.stdout),
        format!("conform: {cases} passed, 0 failed\n")
    );
    let xml = std::fs::read_to_string(&path).unwrap();
    assert!(xml.starts_with("<?xml"));
    let report = quick_junit::Report::deserialize_from_str(&xml).unwrap();
    assert_eq!(report.test_suites.len(), 1);
    let suite = &report.test_suites[0];
    assert_eq!(suite.name.as_str(), "codervpn-conformance");
    assert_eq!(suite.tests, cases);
    assert_eq!(suite.failures + suite.errors, 0);
    let stop = suite
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == "STOP-002")
        .unwrap();
    assert_eq!(stop.classname.as_ref().unwrap().as_str(), "control");
    assert!(stop.time.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_echoing_tunnel_fails_with_exit_1_and_names_the_rule() {
    let out = conform(&["--tunnel-stdio-cmd", "cat"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("E-ROLE"), "{stdout}");
    assert!(stdout.contains("FAIL  HS-001"), "{stdout}");
    // The closing line counts the failures (warnings count as passed).
    let closing = stdout.lines().last().unwrap();
    let failed: usize = closing
        .strip_suffix(" failed")
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{closing}"));
    assert!(closing.starts_with("conform: ") && failed > 0, "{closing}");

    // The same failures in JUnit are <failure> elements typed by level.
    let out = conform(&["--tunnel-stdio-cmd", "cat", "--format", "junit"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report = quick_junit::Report::deserialize_from_str(&text(&out.stdout)).unwrap();
    let suite = &report.test_suites[0];
    assert_eq!(suite.errors, 0);
    // MUST cases fail; SHOULD and hazard cases only warn in a default run.
    let warned = suite
        .test_cases
        .iter()
        .filter(|c| c.properties.iter().any(|p| p.name.as_str() == "warning"))
        .count();
    assert!(suite.failures > 0);
    assert_eq!(suite.failures + warned, suite.tests);
    let hs = suite
        .test_cases
        .iter()
        .find(|c| c.name.as_str() == "HS-001")
        .unwrap();
    match &hs.status {
        quick_junit::TestCaseStatus::NonSuccess { message, ty, .. } => {
            assert!(message.as_ref().unwrap().as_str().contains("E-ROLE"));
            assert_eq!(ty.as_ref().unwrap().as_str(), "must");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn known_failures_turn_failures_into_expected_ones_and_flag_fixed_ones() {
    let dir = scratch("expect-fail");
    let wire = listed_ids(&["--tunnel-stdio-cmd", "cat"]);
    let list: String = wire
        .iter()
        .map(|id| format!("{id}  cat echoes our own header back\n"))
        .collect();
    let known = dir.join("known.txt");
    std::fs::write(&known, format!("# Known failures of `cat`.\n\n{list}")).unwrap();
    let known = known.to_str().unwrap();

    let out = conform(&["--tunnel-stdio-cmd", "cat", "--expect-fail", known]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("XFAIL HS-001"), "{stdout}");
    assert!(stdout.contains("expected failure"), "{stdout}");
    assert!(
        stdout.ends_with(&format!(
            "conform: 0 passed, 0 failed, {} skipped\n",
            wire.len()
        )),
        "{stdout}"
    );

    // Against the reference tunnel the same list passes unexpectedly.
    let out = conform(&["--only", "HS-001", "--expect-fail", known]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("XPASS HS-001"), "{stdout}");
    assert!(
        stdout.contains(&format!("unexpectedly passed: remove it from {known}")),
        "{stdout}"
    );
    let out = conform(&[
        "--only",
        "HS-001",
        "--expect-fail",
        known,
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["totals"]["unexpected_passes"], 1);
    assert_eq!(report["cases"][0]["outcome"], "unexpected_pass");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_known_failures_file_is_a_usage_error_naming_the_line() {
    let dir = scratch("bad-expect-fail");
    for (body, line, says) in [
        ("# ok\nHS-001  reason\nHS-009\n", 3, "HS-009 has no reason"),
        ("HS-001: reason\n", 1, "is not a case ID"),
        ("HS-001 a\n\nHS-001 b\n", 3, "listed twice"),
        ("NOPE-999  typo\n", 1, "no case NOPE-999 in the catalogue"),
    ] {
        let path = dir.join("known.txt");
        std::fs::write(&path, body).unwrap();
        let out = conform(&["--expect-fail", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{body:?}: {}", describe(&out));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("known.txt, line {line}: ")) && stderr.contains(says),
            "{body:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "nothing ran");
    }
    let out = conform(&["--expect-fail", dir.join("missing.txt").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text(&out.stderr).contains("missing.txt"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unusable_commands_are_setup_errors_with_exit_2() {
    // No placeholders: refused before anything runs.
    let out = conform(&["--tunnel-cmd", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("{rpc_read_fd}") && stderr.contains("{rpc_write_fd}"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    // Unbalanced quotes.
    let out = conform(&["--tunnel-stdio-cmd", "cat 'oops"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text(&out.stderr).contains("unbalanced quotes"));

    // A program that does not exist: every case is an error, exit 2, and
    // stderr says why, whatever the format.
    for format in ["human", "json", "junit"] {
        let out = conform(&[
            "--tunnel-cmd",
            "/nonexistent/tunnel --rpc-read-fd {rpc_read_fd} --rpc-write-fd {rpc_write_fd}",
            "--format",
            format,
        ]);
        assert_eq!(out.status.code(), Some(2), "{format}: {}", describe(&out));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("could not be run") && stderr.contains("/nonexistent/tunnel"),
            "{format}: {stderr}"
        );
    }

    // A selection that selects nothing.
    let out = conform(&["--only", "NOPE-*"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text(&out.stderr).contains("no case selected"));

    // Flags clap refuses are usage errors too.
    let out = conform(&["--format", "xml"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = conform(&["--jobs", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[test]
fn service_and_client_targets_select_their_cases_and_check_their_commands() {
    let all = listed_ids(&[]);
    for id in ["SVC-001", "CLI-001"] {
        assert!(all.iter().any(|i| i == id), "{id} missing from {all:?}");
    }
    let service = listed_ids(&["--service-cmd", "svc --pipe {socket}"]);
    assert!(
        service.len() >= 10 && service.iter().all(|i| i.starts_with("SVC-")),
        "{service:?}"
    );
    let client = listed_ids(&["--client-cmd", "app --pipe {socket}"]);
    assert!(
        client.len() >= 5 && client.iter().all(|i| i.starts_with("CLI-")),
        "{client:?}"
    );

    // No {socket}: refused before anything runs.
    let out = conform(&["--service-cmd", "svc"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(text(&out.stderr).contains("{socket}"), "{}", describe(&out));

    // A client that does not exist: a setup error, exit 2.
    let out = conform(&[
        "--client-cmd",
        "/nonexistent/app {socket}",
        "--only",
        "CLI-001",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        text(&out.stderr).contains("could not be run")
            && text(&out.stderr).contains("/nonexistent/app"),
        "{}",
        describe(&out)
    );
}
