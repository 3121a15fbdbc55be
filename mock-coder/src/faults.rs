//! Injected faults: failed, delayed and corrupted responses, and the window
//! during which coordination-stream dials are refused.
//!
//! protocol.md §9.1 asks a mock control plane to make each step of a
//! tunnel's Start fail (HTTP error, hang, malformed JSON) and to drop the
//! WebSocket. Sans-IO: [`Faults::plan`] says what to do with one request;
//! the HTTP layer does it.
//!
//! Rules of one kind are keyed by path (`None` matching any path). A new
//! rule replaces the one with the same key; a rule with a path wins over the
//! catch-all; a rule with a count is removed when used up.

use std::time::Duration;

use axum::http::StatusCode;
use tokio::time::Instant;

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    pub delay: Option<Duration>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Outcome {
    /// Serve it normally.
    #[default]
    Pass,
    /// Answer this status with an `ApiError` body.
    Fail(StatusCode),
    /// Answer 200 with a body that is not JSON.
    Corrupt,
}

#[derive(Debug, Clone)]
struct Rule<T> {
    path: Option<String>,
    /// `None`: no limit.
    remaining: Option<u32>,
    what: T,
}

#[derive(Debug, Default)]
struct Rules<T>(Vec<Rule<T>>);

impl<T: Copy> Rules<T> {
    /// Replaces the rule for `path`; `remaining == Some(0)` only removes it.
    fn set(&mut self, path: Option<String>, remaining: Option<u32>, what: T) {
        self.0.retain(|rule| rule.path != path);
        if remaining != Some(0) {
            self.0.push(Rule {
                path,
                remaining,
                what,
            });
        }
    }

    fn remove(&mut self, path: &Option<String>) {
        self.0.retain(|rule| &rule.path != path);
    }

    /// Uses one count of the best rule for `path`.
    fn take(&mut self, path: &str) -> Option<T> {
        let index = self
            .0
            .iter()
            .position(|rule| rule.path.as_deref() == Some(path))
            .or_else(|| self.0.iter().position(|rule| rule.path.is_none()))?;
        let rule = &mut self.0[index];
        let what = rule.what;
        if let Some(remaining) = &mut rule.remaining {
            *remaining -= 1;
            if *remaining == 0 {
                self.0.remove(index);
            }
        }
        Some(what)
    }
}

/// All injected faults.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    fail: Rules<StatusCode>,
    corrupt: Rules<()>,
    delay: Rules<Duration>,
    refuse_streams_until: Option<Instant>,
}

impl Faults {
    /// `FailRequests`. A status that is not a valid HTTP code becomes 500.
    pub(crate) fn fail(&mut self, count: u32, status: u16, path: Option<String>) {
        let status = StatusCode::from_u16(status).unwrap_or_else(|_| {
            tracing::warn!(status, "fail_requests: invalid status, using 500");
            StatusCode::INTERNAL_SERVER_ERROR
        });
        self.fail.set(path, Some(count), status);
    }

    /// `CorruptResponses`.
    pub(crate) fn corrupt(&mut self, count: u32, path: Option<String>) {
        self.corrupt.set(path, Some(count), ());
    }

    /// `DelayResponses`; `ms == 0` cancels the rule for `path`.
    pub(crate) fn delay(&mut self, ms: u64, count: Option<u32>, path: Option<String>) {
        if ms == 0 {
            self.delay.remove(&path);
        } else {
            self.delay.set(path, count, Duration::from_millis(ms));
        }
    }

    /// `DropStreams`: refuse dials until `until`.
    pub(crate) fn refuse_streams_until(&mut self, until: Instant) {
        self.refuse_streams_until = Some(until);
    }

    /// How much longer dials are refused, if they are.
    pub(crate) fn streams_refused(&self, now: Instant) -> Option<Duration> {
        self.refuse_streams_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// Decides the fate of one request to `path`, using up counts. A failure
    /// wins over corruption; a delay comes first in either case.
    pub(crate) fn plan(&mut self, path: &str) -> Plan {
        let delay = self.delay.take(path);
        let outcome = if let Some(status) = self.fail.take(path) {
            Outcome::Fail(status)
        } else if self.corrupt.take(path).is_some() {
            Outcome::Corrupt
        } else {
            Outcome::Pass
        };
        Plan { delay, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "/api/v2/users/me";

    #[test]
    fn fail_counts_down_and_respects_path() {
        let mut faults = Faults::default();
        faults.fail(2, 503, Some(USER.into()));
        assert_eq!(faults.plan("/api/v2/buildinfo").outcome, Outcome::Pass);
        assert_eq!(
            faults.plan(USER).outcome,
            Outcome::Fail(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(
            faults.plan(USER).outcome,
            Outcome::Fail(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(faults.plan(USER).outcome, Outcome::Pass);
    }

    #[test]
    fn path_rule_wins_over_catch_all_and_replacing_works() {
        let mut faults = Faults::default();
        faults.fail(10, 500, None);
        faults.fail(10, 401, Some(USER.into()));
        assert_eq!(
            faults.plan(USER).outcome,
            Outcome::Fail(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            faults.plan("/x").outcome,
            Outcome::Fail(StatusCode::INTERNAL_SERVER_ERROR)
        );
        faults.fail(0, 500, None);
        assert_eq!(faults.plan("/x").outcome, Outcome::Pass);
    }

    #[test]
    fn unlimited_delay_until_cancelled() {
        let mut faults = Faults::default();
        faults.delay(100, None, None);
        for _ in 0..5 {
            assert_eq!(faults.plan("/a").delay, Some(Duration::from_millis(100)));
        }
        faults.delay(0, None, None);
        assert_eq!(faults.plan("/a"), Plan::default());
    }

    #[test]
    fn delay_and_failure_combine_and_failure_beats_corruption() {
        let mut faults = Faults::default();
        faults.delay(5, Some(1), None);
        faults.corrupt(1, None);
        faults.fail(1, 502, None);
        let plan = faults.plan("/a");
        assert_eq!(plan.delay, Some(Duration::from_millis(5)));
        assert_eq!(plan.outcome, Outcome::Fail(StatusCode::BAD_GATEWAY));
        assert_eq!(faults.plan("/a").outcome, Outcome::Corrupt);
        assert_eq!(faults.plan("/a"), Plan::default());
    }

    #[test]
    fn refusal_window() {
        let mut faults = Faults::default();
        let now = Instant::now();
        assert_eq!(faults.streams_refused(now), None);
        faults.refuse_streams_until(now + Duration::from_millis(50));
        assert_eq!(faults.streams_refused(now), Some(Duration::from_millis(50)));
        assert_eq!(
            faults.streams_refused(now + Duration::from_millis(50)),
            None
        );
    }
}
