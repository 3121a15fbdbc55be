//! Runs a scenario's timeline: each step at its `at_ms` after start.
//!
//! One task, steps sorted by time (ties keep file order), each awaited with
//! `sleep_until` from a single start instant, so steps do not drift and a
//! test with a paused tokio clock runs a long timeline instantly.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::scenario::Step;
use crate::shared::{Shared, stopped};

pub(crate) async fn run(shared: Arc<Shared>, mut steps: Vec<Step>, start: Instant) {
    steps.sort_by_key(|step| step.at_ms);
    let mut shutdown = shared.shutdown_signal();
    for step in steps {
        let at = start + Duration::from_millis(step.at_ms);
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = stopped(&mut shutdown) => return,
        }
        tracing::info!(
            at_ms = step.at_ms,
            action = step.action.name(),
            "timeline step"
        );
        shared.apply(&step.action);
    }
}
