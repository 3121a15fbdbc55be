//! Reports of a run: human text (summary last), JSON and JUnit XML, and the
//! exit code (0 when every selected MUST case passed, 1 when one failed, 2
//! when a case could not be run at all).
//!
//! Every format is rendered from one [`Run`]: the runner's results, the
//! known failures of `--expect-fail` ([`crate::expect_fail`]) and the wall
//! time. A result's [`Grade`] says what happened (protocol.md §1.4); its
//! [`Outcome`] says how it counts in this run once known failures are
//! taken into account.
//!
//! # The JSON report
//!
//! Its shape is stable (documented in `docs/transcripts.md`, "Reports");
//! `version` changes if a key is removed or changes meaning. Every key is
//! always present:
//!
//! ```text
//! { "report": "codervpn-conformance", "version": 1, "elapsed_ms": 312,
//!   "exit_code": 0, "expect_fail_file": null | "known.txt",
//!   "totals": { "cases", "passed", "warned", "failed", "errors",
//!               "expected_failures", "unexpected_passes" },
//!   "cases": [ { "id", "title", "spec", "level", "tier", "target", "grade",
//!                "outcome", "message", "expected_failure": null | "reason",
//!                "duration_ms", "stderr", "transcript" } ] }
//! ```
//!
//! # JUnit
//!
//! One `<testsuite name="codervpn-conformance">`, one `<testcase>` per case
//! (`name` = case ID, `classname` = tier, `time`). A failure is
//! `<failure message=… type=LEVEL>`; a warning passes, with the text in
//! `<system-out>` and a `warning` property; a case that could not run is
//! `<error type="setup">`; an expected failure is `<skipped
//! type="expected-failure">` (as pytest reports xfail); an unexpected pass
//! is `<failure type="unexpected-pass">`.
//!
//! The suite's API token is scrubbed from every report and artifact
//! ([`redact_secrets`]), on top of the engine's redaction of recorded
//! messages (protocol.md §6.2 item 6).

use std::fmt::Write as _;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;

use crate::expect_fail::{KnownFailure, KnownFailures};
use crate::runner::{CaseResult, Grade, SUITE_TOKEN};
use crate::transcript::{Level, Target, Tier, Transcript};

/// Version of the JSON report's shape.
pub const JSON_REPORT_VERSION: u32 = 1;

/// The name of the JUnit test suite and of the JSON report.
pub const SUITE_NAME: &str = "codervpn-conformance";

/// How a case counts in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    /// Passed with a warning, or a SHOULD/hazard rule broken in a default
    /// run: does not fail the run.
    Warned,
    /// Fails the run.
    Failed,
    /// Could not run (setup): the run exits 2.
    Error,
    /// Listed as a known failure, and it did fail: does not fail the run.
    ExpectedFailure,
    /// Listed as a known failure, but it passed: fails the run, so that
    /// the list is kept honest.
    UnexpectedPass,
}

impl Outcome {
    /// How `result` counts, `listed` or not as a known failure.
    ///
    /// A listed case that could not run stays an error. A listed case that
    /// warned is an expected failure when its rule is a SHOULD or hazard
    /// rule (its failure grades WARN in a default run, §1.4 item 2); a MUST
    /// case that warned passed, late or oddly, so it passed unexpectedly.
    pub fn of(result: &CaseResult, listed: bool) -> Outcome {
        match (result.grade, listed) {
            (Grade::Error, _) => Outcome::Error,
            (Grade::Pass, false) => Outcome::Passed,
            (Grade::Warn, false) => Outcome::Warned,
            (Grade::Fail, false) => Outcome::Failed,
            (Grade::Fail, true) => Outcome::ExpectedFailure,
            (Grade::Pass, true) => Outcome::UnexpectedPass,
            (Grade::Warn, true) if result.level == Level::Must => Outcome::UnexpectedPass,
            (Grade::Warn, true) => Outcome::ExpectedFailure,
        }
    }

    /// Whether it makes the run fail (exit 1).
    pub fn fails_run(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::UnexpectedPass)
    }

    /// The mark of the human report.
    pub fn mark(self) -> &'static str {
        match self {
            Outcome::Passed => "PASS",
            Outcome::Warned => "WARN",
            Outcome::Failed => "FAIL",
            Outcome::Error => "ERROR",
            Outcome::ExpectedFailure => "XFAIL",
            Outcome::UnexpectedPass => "XPASS",
        }
    }
}

/// Totals of a run; each case counts once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub cases: usize,
    pub passed: usize,
    pub warned: usize,
    pub failed: usize,
    pub errors: usize,
    pub expected_failures: usize,
    pub unexpected_passes: usize,
}

/// A finished run, ready to be reported.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub results: &'a [CaseResult],
    pub known: Option<&'a KnownFailures>,
    pub elapsed: Duration,
}

impl<'a> Run<'a> {
    pub fn new(results: &'a [CaseResult], elapsed: Duration) -> Self {
        Run {
            results,
            known: None,
            elapsed,
        }
    }

    /// With the known failures of `--expect-fail`.
    pub fn with_known(self, known: &'a KnownFailures) -> Self {
        Run {
            known: Some(known),
            ..self
        }
    }

    fn listed(&self, result: &CaseResult) -> Option<&'a KnownFailure> {
        self.known.and_then(|k| k.get(&result.id))
    }

    pub fn outcome(&self, result: &CaseResult) -> Outcome {
        Outcome::of(result, self.listed(result).is_some())
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            cases: self.results.len(),
            ..Totals::default()
        };
        for r in self.results {
            match self.outcome(r) {
                Outcome::Passed => t.passed += 1,
                Outcome::Warned => t.warned += 1,
                Outcome::Failed => t.failed += 1,
                Outcome::Error => t.errors += 1,
                Outcome::ExpectedFailure => t.expected_failures += 1,
                Outcome::UnexpectedPass => t.unexpected_passes += 1,
            }
        }
        t
    }

    /// 2 when a case could not run (a setup error such as a command that
    /// cannot be started), else 1 when a case fails the run, else 0.
    pub fn exit_code(&self) -> u8 {
        let t = self.totals();
        if t.errors > 0 {
            2
        } else if t.failed + t.unexpected_passes > 0 {
            1
        } else {
            0
        }
    }

    fn file(&self) -> &str {
        self.known.map_or("the known-failures file", |k| k.source())
    }

    /// What the report says under a case, besides its message.
    fn note(&self, result: &CaseResult) -> Option<String> {
        let entry = self.listed(result)?;
        Some(match self.outcome(result) {
            Outcome::ExpectedFailure => format!(
                "expected failure ({}, line {}: {})",
                self.file(),
                entry.line,
                entry.reason
            ),
            Outcome::UnexpectedPass => format!(
                "unexpectedly passed: remove it from {} (line {}: {})",
                self.file(),
                entry.line,
                entry.reason
            ),
            _ => return None,
        })
    }

    /// One line per case, details under anything but a clean pass, the
    /// summary last, then the plain closing line CI runners read.
    pub fn human(&self) -> String {
        let mut out = String::new();
        for r in self.results {
            let outcome = self.outcome(r);
            let _ = writeln!(
                out,
                "{:5} {:10} {} ({}, {}, {}, {} ms)",
                outcome.mark(),
                r.id,
                r.title,
                r.spec,
                level_name(r.level).to_uppercase(),
                tier_name(r.tier),
                r.duration_ms
            );
            if let Some(note) = self.note(r) {
                let _ = writeln!(out, "      {note}");
            }
            if !r.message.is_empty() {
                let _ = writeln!(out, "      {}", r.message);
            }
            if !r.stderr.is_empty() {
                let _ = writeln!(out, "      stderr: | {}", tail(&r.stderr, 5, "\n      | "));
            }
        }
        let t = self.totals();
        let mut summary = format!(
            "{} cases in {:.1} s: {} passed, {} failed, {} warnings, {} errors",
            t.cases,
            self.elapsed.as_secs_f64(),
            t.passed,
            t.failed,
            t.warned,
            t.errors
        );
        if self.known.is_some() || t.expected_failures + t.unexpected_passes > 0 {
            let _ = write!(
                summary,
                ", {} expected failures, {} unexpectedly passed",
                t.expected_failures, t.unexpected_passes
            );
        }
        let _ = writeln!(out, "\n{summary}");
        let _ = writeln!(out, "{}", self.closing_line());
        redact_secrets(&out)
    }

    /// `conform: N passed, N failed[, N skipped]`: the plain closing line
    /// CI runners read. Warnings count as passed; errors and unexpected
    /// passes as failed; expected failures as skipped.
    pub fn closing_line(&self) -> String {
        let t = self.totals();
        let mut line = format!(
            "conform: {} passed, {} failed",
            t.passed + t.warned,
            t.failed + t.errors + t.unexpected_passes
        );
        if t.expected_failures > 0 {
            let _ = write!(line, ", {} skipped", t.expected_failures);
        }
        line
    }

    /// The JSON report (see the module docs for its shape).
    pub fn json(&self) -> String {
        #[derive(Serialize)]
        struct Case<'r> {
            id: &'r str,
            title: &'r str,
            spec: &'r str,
            level: Level,
            tier: Tier,
            target: Target,
            grade: Grade,
            outcome: Outcome,
            message: &'r str,
            expected_failure: Option<&'r str>,
            duration_ms: u64,
            stderr: &'r str,
            transcript: &'r Transcript,
        }
        #[derive(Serialize)]
        struct Document<'r> {
            report: &'static str,
            version: u32,
            elapsed_ms: u64,
            exit_code: u8,
            expect_fail_file: Option<&'r str>,
            totals: Totals,
            cases: Vec<Case<'r>>,
        }
        let document = Document {
            report: SUITE_NAME,
            version: JSON_REPORT_VERSION,
            elapsed_ms: self.elapsed.as_millis() as u64,
            exit_code: self.exit_code(),
            expect_fail_file: self.known.map(KnownFailures::source),
            totals: self.totals(),
            cases: self
                .results
                .iter()
                .map(|r| Case {
                    id: &r.id,
                    title: &r.title,
                    spec: &r.spec,
                    level: r.level,
                    tier: r.tier,
                    target: r.transcript.target,
                    grade: r.grade,
                    outcome: self.outcome(r),
                    message: &r.message,
                    expected_failure: self.listed(r).map(|e| e.reason.as_str()),
                    duration_ms: r.duration_ms,
                    stderr: &r.stderr,
                    transcript: &r.transcript,
                })
                .collect(),
        };
        let text = serde_json::to_string_pretty(&document)
            .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}).to_string());
        redact_secrets(&text) + "\n"
    }

    /// The JUnit XML report (see the module docs for the mapping).
    pub fn junit(&self) -> String {
        let mut suite = TestSuite::new(SUITE_NAME);
        suite.set_time(self.elapsed);
        for r in self.results {
            let outcome = self.outcome(r);
            let status = match outcome {
                Outcome::Passed | Outcome::Warned => TestCaseStatus::success(),
                Outcome::Failed => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(r.message.as_str())
                        .set_type(level_name(r.level))
                        .set_description(format!("{}\n{}", r.spec, r.message));
                    s
                }
                Outcome::Error => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_message(r.message.as_str())
                        .set_type("setup")
                        .set_description(r.message.as_str());
                    s
                }
                Outcome::ExpectedFailure => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(self.note(r).unwrap_or_default())
                        .set_type("expected-failure")
                        .set_description(r.message.as_str());
                    s
                }
                Outcome::UnexpectedPass => {
                    let note = self.note(r).unwrap_or_default();
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(note.as_str())
                        .set_type("unexpected-pass")
                        .set_description(note.as_str());
                    s
                }
            };
            let mut case = TestCase::new(r.id.as_str(), status);
            case.set_classname(tier_name(r.tier))
                .set_time(Duration::from_millis(r.duration_ms))
                .add_properties([
                    Property::new("title", r.title.as_str()),
                    Property::new("spec", r.spec.as_str()),
                    Property::new("level", level_name(r.level)),
                ]);
            if outcome == Outcome::Warned {
                case.set_system_out(format!("WARN: {}", r.message))
                    .add_property(Property::new("warning", r.message.as_str()));
            }
            if !r.stderr.is_empty() {
                case.set_system_err(r.stderr.as_str());
            }
            suite.add_test_case(case);
        }
        let mut report = Report::new(SUITE_NAME);
        report.set_time(self.elapsed).add_test_suite(suite);
        match report.to_string() {
            Ok(xml) => redact_secrets(&xml) + "\n",
            // Only on an I/O error of the writer, which a String has not.
            Err(err) => format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{SUITE_NAME}\" errors=\"1\"><!-- {} --></testsuites>\n",
                err.to_string().replace("--", "- -")
            ),
        }
    }
}

/// A case's recorded transcript, as written by `--artifacts`.
pub fn artifact(result: &CaseResult) -> String {
    let text = serde_json::to_string_pretty(&result.transcript)
        .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}).to_string());
    redact_secrets(&text) + "\n"
}

/// Replaces the suite's API token wherever it appears (a message the
/// engine did not know to redact, an implementation's stderr).
pub fn redact_secrets(text: &str) -> String {
    text.replace(SUITE_TOKEN, "<redacted>")
}

/// `must`, `should`, `hazard`, as in transcripts.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Must => "must",
        Level::Should => "should",
        Level::Hazard => "hazard",
    }
}

/// `wire`, `control`, `dataplane`, as in transcripts.
pub fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Wire => "wire",
        Tier::Control => "control",
        Tier::Dataplane => "dataplane",
    }
}

/// The last `n` lines of `text`, joined by `sep`.
fn tail(text: &str, n: usize, sep: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(sep)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::{Value, json};

    fn result(id: &str, level: Level, grade: Grade, message: &str) -> CaseResult {
        let transcript = Transcript::from_json(
            &json!({
                "id": id, "title": format!("title of {id}"), "spec": "protocol.md §7.1 rule 2",
                "level": level, "tier": "wire", "events": [{"handshake": {}}],
            })
            .to_string(),
        )
        .unwrap();
        CaseResult {
            id: id.into(),
            title: transcript.title.clone(),
            spec: transcript.spec.clone(),
            level,
            tier: Tier::Wire,
            grade,
            message: message.into(),
            duration_ms: 12,
            transcript,
            stderr: String::new(),
        }
    }

    fn sample() -> Vec<CaseResult> {
        vec![
            result("A-001", Level::Must, Grade::Pass, ""),
            result("A-002", Level::Should, Grade::Warn, "late <EOF> & \"odd\""),
            result(
                "A-003",
                Level::Must,
                Grade::Fail,
                "expected EOF, got a frame",
            ),
            result("A-004", Level::Must, Grade::Error, "cannot start \"x\""),
            result("A-005", Level::Must, Grade::Fail, "known breakage"),
            result("A-006", Level::Must, Grade::Pass, ""),
        ]
    }

    fn known() -> KnownFailures {
        KnownFailures::parse(
            "known.txt",
            "A-005  frame after StopResponse\nA-006  fixed upstream?\n",
        )
        .unwrap()
    }

    #[test]
    fn outcomes_apply_known_failures() {
        let pass = result("X-1", Level::Must, Grade::Pass, "");
        let fail = result("X-1", Level::Must, Grade::Fail, "f");
        let error = result("X-1", Level::Must, Grade::Error, "e");
        let must_warn = result("X-1", Level::Must, Grade::Warn, "late");
        let should_warn = result("X-1", Level::Should, Grade::Warn, "broken should");
        let hazard_warn = result("X-1", Level::Hazard, Grade::Warn, "hazard");
        assert_eq!(Outcome::of(&pass, false), Outcome::Passed);
        assert_eq!(Outcome::of(&fail, false), Outcome::Failed);
        assert_eq!(Outcome::of(&error, false), Outcome::Error);
        assert_eq!(Outcome::of(&should_warn, false), Outcome::Warned);
        assert_eq!(Outcome::of(&fail, true), Outcome::ExpectedFailure);
        assert_eq!(Outcome::of(&pass, true), Outcome::UnexpectedPass);
        assert_eq!(Outcome::of(&error, true), Outcome::Error);
        assert_eq!(Outcome::of(&must_warn, true), Outcome::UnexpectedPass);
        assert_eq!(Outcome::of(&should_warn, true), Outcome::ExpectedFailure);
        assert_eq!(Outcome::of(&hazard_warn, true), Outcome::ExpectedFailure);
        assert!(Outcome::Failed.fails_run() && Outcome::UnexpectedPass.fails_run());
        assert!(!Outcome::ExpectedFailure.fails_run() && !Outcome::Warned.fails_run());
    }

    #[test]
    fn exit_codes_follow_the_worst_outcome() {
        let results = sample();
        let known = known();
        let d = Duration::from_millis(5);
        // A setup error wins over failures.
        assert_eq!(Run::new(&results, d).exit_code(), 2);
        assert_eq!(Run::new(&results[..3], d).exit_code(), 1);
        assert_eq!(Run::new(&results[..2], d).exit_code(), 0);
        // A listed failure no longer fails the run ...
        let listed = [results[0].clone(), results[4].clone()];
        assert_eq!(Run::new(&listed, d).exit_code(), 1);
        assert_eq!(Run::new(&listed, d).with_known(&known).exit_code(), 0);
        // ... and a listed case that passes does.
        let fixed = [results[0].clone(), results[5].clone()];
        assert_eq!(Run::new(&fixed, d).exit_code(), 0);
        assert_eq!(Run::new(&fixed, d).with_known(&known).exit_code(), 1);
        assert_eq!(Run::new(&[], d).exit_code(), 0);
    }

    #[test]
    fn human_report_marks_each_case_and_ends_with_the_summary() {
        let results = sample();
        let known = known();
        let text = Run::new(&results, Duration::from_millis(1500))
            .with_known(&known)
            .human();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(
            "PASS  A-001      title of A-001 (protocol.md §7.1 rule 2, MUST, wire, 12 ms)"
        ));
        assert!(text.contains("XFAIL A-005"));
        assert!(text.contains(
            "      expected failure (known.txt, line 1: frame after StopResponse)\n      known breakage\n"
        ));
        assert!(text.contains("XPASS A-006"));
        assert!(
            text.contains(
                "unexpectedly passed: remove it from known.txt (line 2: fixed upstream?)"
            )
        );
        assert_eq!(
            lines[lines.len() - 2],
            "6 cases in 1.5 s: 1 passed, 1 failed, 1 warnings, 1 errors, 1 expected failures, 1 unexpectedly passed"
        );
        assert_eq!(
            lines[lines.len() - 1],
            "conform: 2 passed, 3 failed, 1 skipped"
        );
        // Without a list the extra counts are left out.
        let plain = Run::new(&results[..1], Duration::ZERO).human();
        assert!(plain.ends_with("1 cases in 0.0 s: 1 passed, 0 failed, 0 warnings, 0 errors\nconform: 1 passed, 0 failed\n"));
    }

    #[test]
    fn json_report_has_the_documented_shape() {
        let results = sample();
        let known = known();
        let run = Run::new(&results, Duration::from_millis(1500)).with_known(&known);
        let doc: Value = serde_json::from_str(&run.json()).unwrap();
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(&doc),
            [
                "report",
                "version",
                "elapsed_ms",
                "exit_code",
                "expect_fail_file",
                "totals",
                "cases"
            ]
        );
        assert_eq!(doc["report"], "codervpn-conformance");
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["elapsed_ms"], 1500);
        assert_eq!(doc["exit_code"], 2);
        assert_eq!(doc["expect_fail_file"], "known.txt");
        assert_eq!(
            doc["totals"],
            json!({"cases": 6, "passed": 1, "warned": 1, "failed": 1, "errors": 1,
                   "expected_failures": 1, "unexpected_passes": 1})
        );
        let cases = doc["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 6);
        for case in cases {
            assert_eq!(
                keys(case),
                [
                    "id",
                    "title",
                    "spec",
                    "level",
                    "tier",
                    "target",
                    "grade",
                    "outcome",
                    "message",
                    "expected_failure",
                    "duration_ms",
                    "stderr",
                    "transcript"
                ]
            );
        }
        assert_eq!(cases[0]["grade"], "pass");
        assert_eq!(cases[0]["outcome"], "passed");
        assert_eq!(cases[0]["expected_failure"], Value::Null);
        assert_eq!(cases[0]["level"], "must");
        assert_eq!(cases[0]["tier"], "wire");
        assert_eq!(cases[0]["target"], "tunnel");
        assert_eq!(cases[0]["transcript"]["id"], "A-001");
        assert_eq!(cases[4]["grade"], "fail");
        assert_eq!(cases[4]["outcome"], "expected_failure");
        assert_eq!(cases[4]["expected_failure"], "frame after StopResponse");
        assert_eq!(cases[5]["outcome"], "unexpected_pass");
        // A transcript in the report loads back as a transcript.
        let back = Transcript::from_json(&cases[2]["transcript"].to_string()).unwrap();
        assert_eq!(back, results[2].transcript);
        // Without a list.
        let doc: Value =
            serde_json::from_str(&Run::new(&results[..1], Duration::ZERO).json()).unwrap();
        assert_eq!(doc["expect_fail_file"], Value::Null);
        assert_eq!(doc["exit_code"], 0);
    }

    #[test]
    fn junit_report_maps_outcomes_to_elements() {
        let mut results = sample();
        results[2].stderr = "panic: boom\n".into();
        let known = known();
        let xml = Run::new(&results, Duration::from_millis(1500))
            .with_known(&known)
            .junit();
        let report = Report::deserialize_from_str(&xml).unwrap();
        assert_eq!(report.test_suites.len(), 1);
        let suite = &report.test_suites[0];
        assert_eq!(suite.name.as_str(), "codervpn-conformance");
        assert_eq!(suite.tests, 6);
        assert_eq!(suite.failures, 2);
        assert_eq!(suite.errors, 1);
        assert_eq!(suite.skipped, 1);
        let case = |id: &str| {
            suite
                .test_cases
                .iter()
                .find(|c| c.name.as_str() == id)
                .unwrap()
        };
        let pass = case("A-001");
        assert_eq!(pass.classname.as_ref().unwrap().as_str(), "wire");
        assert_eq!(pass.time, Some(Duration::from_millis(12)));
        assert!(matches!(pass.status, TestCaseStatus::Success { .. }));
        let prop = |c: &TestCase, name: &str| {
            c.properties
                .iter()
                .find(|p| p.name.as_str() == name)
                .map(|p| p.value.as_str().to_owned())
        };
        assert_eq!(
            prop(pass, "spec").as_deref(),
            Some("protocol.md §7.1 rule 2")
        );
        let warn = case("A-002");
        assert!(matches!(warn.status, TestCaseStatus::Success { .. }));
        assert_eq!(
            warn.system_out.as_ref().unwrap().as_str(),
            "WARN: late <EOF> & \"odd\""
        );
        assert_eq!(
            prop(warn, "warning").as_deref(),
            Some("late <EOF> & \"odd\"")
        );
        let fail = case("A-003");
        match &fail.status {
            TestCaseStatus::NonSuccess {
                kind, message, ty, ..
            } => {
                assert_eq!(*kind, NonSuccessKind::Failure);
                assert_eq!(
                    message.as_ref().unwrap().as_str(),
                    "expected EOF, got a frame"
                );
                assert_eq!(ty.as_ref().unwrap().as_str(), "must");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fail.system_err.as_ref().unwrap().as_str().trim_end(),
            "panic: boom"
        );
        match &case("A-004").status {
            TestCaseStatus::NonSuccess { kind, ty, .. } => {
                assert_eq!(*kind, NonSuccessKind::Error);
                assert_eq!(ty.as_ref().unwrap().as_str(), "setup");
            }
            other => panic!("{other:?}"),
        }
        match &case("A-005").status {
            TestCaseStatus::Skipped { message, ty, .. } => {
                assert!(
                    message
                        .as_ref()
                        .unwrap()
                        .as_str()
                        .starts_with("expected failure")
                );
                assert_eq!(ty.as_ref().unwrap().as_str(), "expected-failure");
            }
            other => panic!("{other:?}"),
        }
        match &case("A-006").status {
            TestCaseStatus::NonSuccess { message, ty, .. } => {
                assert!(
                    message
                        .as_ref()
                        .unwrap()
                        .as_str()
                        .starts_with("unexpectedly passed: remove it from known.txt")
                );
                assert_eq!(ty.as_ref().unwrap().as_str(), "unexpected-pass");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_suite_token_never_appears_in_a_report_or_artifact() {
        let mut results = sample();
        results[2].stderr = format!("starting with token {SUITE_TOKEN}\n");
        results[2].message = format!("got apiToken {SUITE_TOKEN}");
        results[2].transcript.title = format!("leak {SUITE_TOKEN}");
        let run = Run::new(&results, Duration::ZERO);
        for text in [run.human(), run.json(), run.junit(), artifact(&results[2])] {
            assert!(!text.contains(SUITE_TOKEN), "{text}");
            assert!(text.contains("<redacted>") || text.contains("&lt;redacted&gt;"));
        }
    }
}
