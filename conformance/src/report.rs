//! Reports: a human summary (summary last), JSON, and JUnit XML.

use std::fmt::Write as _;

use serde::Serialize;

use crate::runner::{CaseResult, Grade};

/// Totals of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub passed: usize,
    pub warned: usize,
    pub failed: usize,
    pub errors: usize,
}

pub fn totals(results: &[CaseResult]) -> Totals {
    let mut t = Totals::default();
    for r in results {
        match r.grade {
            Grade::Pass => t.passed += 1,
            Grade::Warn => t.warned += 1,
            Grade::Fail => t.failed += 1,
            Grade::Error => t.errors += 1,
        }
    }
    t
}

/// One line per case, details under failures and warnings, the summary last.
pub fn human(results: &[CaseResult], elapsed: std::time::Duration) -> String {
    let mut out = String::new();
    for r in results {
        let mark = match r.grade {
            Grade::Pass => "PASS",
            Grade::Warn => "WARN",
            Grade::Fail => "FAIL",
            Grade::Error => "ERROR",
        };
        let _ = writeln!(
            out,
            "{mark:5} {:10} {} ({}, {:?}, {} ms)",
            r.id, r.title, r.spec, r.level, r.duration_ms
        );
        if !r.message.is_empty() {
            let _ = writeln!(out, "      {}", r.message);
        }
        if !r.stderr.is_empty() {
            let tail: String = r
                .stderr
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n      | ");
            let _ = writeln!(out, "      stderr: | {tail}");
        }
    }
    let t = totals(results);
    let _ = writeln!(
        out,
        "\n{} cases in {:.1} s: {} passed, {} failed, {} warnings, {} errors",
        results.len(),
        elapsed.as_secs_f64(),
        t.passed,
        t.failed,
        t.warned,
        t.errors
    );
    // The plain closing line CI runners read.
    let _ = writeln!(
        out,
        "conform: {} passed, {} failed",
        t.passed + t.warned,
        t.failed + t.errors
    );
    out
}

/// The whole run as JSON (transcripts included).
pub fn json(results: &[CaseResult]) -> String {
    #[derive(Serialize)]
    struct Report<'a> {
        totals: Totals,
        cases: &'a [CaseResult],
    }
    serde_json::to_string_pretty(&Report {
        totals: totals(results),
        cases: results,
    })
    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
