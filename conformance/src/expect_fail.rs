//! Known failures: the file given to `codervpn conform --expect-fail FILE`.
//!
//! A third-party implementation rarely passes the whole catalogue on day
//! one. Its CI still wants a red build for a *new* failure, and wants to be
//! told when a known failure has been fixed so that the list only shrinks.
//! The file lists one case per line with the reason it is known to fail:
//!
//! ```text
//! # Our tunnel still sends a frame after StopResponse (issue 42).
//! STOP-002  frame after StopResponse, fixed in 2.1
//! HS-009    historical header accepted
//! ```
//!
//! Blank lines and lines starting with `#` are ignored; a `#` later in a
//! line is part of the reason. Every other line is a case ID, white space,
//! and a non-empty reason. A bad line, a case listed twice or an ID that is
//! not in the catalogue is an error naming the line, never silently
//! ignored: a typo would otherwise hide a real failure.
//!
//! How a listed case then counts is decided in [`crate::report`]
//! ([`crate::report::Outcome`]).

use std::collections::BTreeMap;
use std::path::Path;

/// One listed case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFailure {
    pub id: String,
    pub reason: String,
    /// 1-based line in the file.
    pub line: usize,
}

/// The parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownFailures {
    /// The file name, as given (for messages such as "remove it from …").
    source: String,
    entries: BTreeMap<String, KnownFailure>,
}

/// Why a known-failures file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KnownFailuresError {
    #[error("cannot read the known-failures file {source_name}: {error}")]
    Read {
        source_name: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{source_name}, line {line}: {problem}: {text:?}")]
    Line {
        source_name: String,
        line: usize,
        /// The line as written.
        text: String,
        problem: String,
    },
}

impl KnownFailures {
    /// An empty list (nothing is expected to fail).
    pub fn empty(source: impl Into<String>) -> Self {
        KnownFailures {
            source: source.into(),
            entries: BTreeMap::new(),
        }
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, KnownFailuresError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| KnownFailuresError::Read {
            source_name: source.clone(),
            error,
        })?;
        Self::parse(&source, &text)
    }

    /// Parses the text of a file called `source`.
    pub fn parse(source: &str, text: &str) -> Result<Self, KnownFailuresError> {
        let mut list = Self::empty(source);
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let bad = |problem: String| KnownFailuresError::Line {
                source_name: source.to_owned(),
                line,
                text: raw.to_owned(),
                problem,
            };
            let (id, reason) = match trimmed.split_once(char::is_whitespace) {
                Some((id, reason)) => (id, reason.trim()),
                None => (trimmed, ""),
            };
            if !is_case_id(id) {
                return Err(bad(format!(
                    "{id:?} is not a case ID (expected `CASE-ID  reason`, e.g. `STOP-002  frame after StopResponse`)"
                )));
            }
            if reason.is_empty() {
                return Err(bad(format!(
                    "{id} has no reason (expected `CASE-ID  reason`: say why it is known to fail)"
                )));
            }
            if let Some(first) = list.entries.get(id) {
                return Err(bad(format!(
                    "{id} is listed twice (first on line {})",
                    first.line
                )));
            }
            list.entries.insert(
                id.to_owned(),
                KnownFailure {
                    id: id.to_owned(),
                    reason: reason.to_owned(),
                    line,
                },
            );
        }
        Ok(list)
    }

    /// Refuses IDs that are not in `catalogue` (a typo would otherwise hide
    /// nothing and pass unnoticed).
    pub fn check_ids<'a>(
        &self,
        catalogue: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), KnownFailuresError> {
        let known: std::collections::BTreeSet<&str> = catalogue.into_iter().collect();
        let mut unknown: Vec<&KnownFailure> = self
            .entries
            .values()
            .filter(|entry| !known.contains(entry.id.as_str()))
            .collect();
        unknown.sort_by_key(|entry| entry.line);
        match unknown.first() {
            None => Ok(()),
            Some(entry) => Err(KnownFailuresError::Line {
                source_name: self.source.clone(),
                line: entry.line,
                text: format!("{}  {}", entry.id, entry.reason),
                problem: format!("there is no case {} in the catalogue", entry.id),
            }),
        }
    }

    /// The entry for a case, if listed.
    pub fn get(&self, id: &str) -> Option<&KnownFailure> {
        self.entries.get(id)
    }

    /// The file name, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `HS-003`, `STOP-002`, `MGR-010`: letters and digits in dash-separated
/// parts, starting with a letter.
fn is_case_id(word: &str) -> bool {
    word.starts_with(|c: char| c.is_ascii_alphabetic())
        && word
            .split('-')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# Known failures of our tunnel.

STOP-002  frame after StopResponse (#42)
HS-009\thistorical header accepted   
   # indented comment
RPC-001 arm-less reply missing
";

    #[test]
    fn parses_ids_and_reasons_skipping_blank_lines_and_comments() {
        let list = KnownFailures::parse("known.txt", FILE).unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(list.source(), "known.txt");
        let stop = list.get("STOP-002").unwrap();
        assert_eq!(stop.reason, "frame after StopResponse (#42)");
        assert_eq!(stop.line, 3);
        assert_eq!(
            list.get("HS-009").unwrap().reason,
            "historical header accepted"
        );
        assert_eq!(list.get("RPC-001").unwrap().line, 6);
        assert!(list.get("HS-001").is_none());
        assert!(KnownFailures::parse("x", "").unwrap().is_empty());
    }

    fn line_error(text: &str) -> (usize, String) {
        let err = KnownFailures::parse("known.txt", text).unwrap_err();
        let msg = err.to_string();
        match err {
            KnownFailuresError::Line { line, .. } => (line, msg),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn bad_lines_are_errors_naming_the_file_and_line() {
        let (line, msg) = line_error("HS-001 ok\n\nHS-002\n");
        assert_eq!(line, 3);
        assert!(
            msg.starts_with("known.txt, line 3: HS-002 has no reason"),
            "{msg}"
        );

        let (line, msg) = line_error("# c\nHS-001: colon after the id\n");
        assert_eq!(line, 2);
        assert!(msg.contains("\"HS-001:\" is not a case ID"), "{msg}");
        assert!(msg.contains("CASE-ID  reason"), "{msg}");

        let (line, msg) = line_error("HS-001 a\nHS-001 b\n");
        assert_eq!(line, 2);
        assert!(
            msg.contains("HS-001 is listed twice (first on line 1)"),
            "{msg}"
        );

        for bad in ["-HS a", "HS--1 a", "1HS a", "HS-* a", "HS_1 a"] {
            let (line, _) = line_error(bad);
            assert_eq!(line, 1, "{bad}");
        }
    }

    #[test]
    fn ids_not_in_the_catalogue_are_refused_with_their_line() {
        let list = KnownFailures::parse("k", "HS-001 a\nHS-999 typo\nHS-998 typo\n").unwrap();
        let err = list.check_ids(["HS-001", "HS-002"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("k, line 2: there is no case HS-999 in the catalogue"),
            "{msg}"
        );
        let list = KnownFailures::parse("k", "HS-001 a\n").unwrap();
        assert!(list.check_ids(["HS-001", "HS-002"]).is_ok());
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let err = KnownFailures::load(Path::new("/nonexistent/known.txt")).unwrap_err();
        assert!(matches!(err, KnownFailuresError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/known.txt"));
    }
}
