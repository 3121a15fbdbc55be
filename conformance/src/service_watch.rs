//! Order rules a service's messages must keep on every link, checked
//! whatever the case (like every PeerUpdate is checked, [`crate::checks`]).
//!
//! A client learns a Start's progress only from broadcasts (protocol.md
//! §8.2), so their order is what it can rely on: StartProgress in stage
//! order, all before the StartResponse (§8.6 item 3), `bytes_written` never
//! going back within one download (§8.3 step 6), and the lifecycle Status
//! before the reply (STARTED or STOPPED before StartResponse, STOPPED before
//! StopResponse: §8.3 step 9, §8.4 step 3, §8.6 item 4). Cases then only
//! expect what must come; the watch fails anything that comes out of order,
//! even when the case skipped it as a broadcast.

use std::collections::BTreeSet;

use serde_json::Value;

/// What one link (one client) has seen of the service.
#[derive(Debug, Default)]
pub struct ServiceWatch {
    /// Our Start and Stop requests still waiting for their reply (ids).
    starts: BTreeSet<String>,
    stops: BTreeSet<String>,
    /// The stage of the current Start's last StartProgress (0, 1, 2).
    stage: Option<u8>,
    /// `bytes_written` of the last Downloading message of this Start.
    written: u64,
    /// One of our Starts has been answered since the last Initializing:
    /// a StartProgress now belongs to a finished Start.
    answered: bool,
    /// The lifecycle of the last Status (reply or broadcast), as named.
    lifecycle: Option<String>,
    /// One of our Starts was sent and no Initializing has come since.
    awaiting_initializing: bool,
}

impl ServiceWatch {
    /// Notes a ClientMessage the harness sent.
    pub fn sent(&mut self, msg: &Value) {
        let Some(id) = text(msg.pointer("/rpc/msgId")) else {
            return;
        };
        if msg.get("start").is_some() {
            self.starts.insert(id);
            self.awaiting_initializing = true;
        } else if msg.get("stop").is_some() {
            self.stops.insert(id);
        }
    }

    /// Checks a ServiceMessage that arrived; `Err` names the broken rule.
    pub fn received(&mut self, msg: &Value) -> Result<(), String> {
        if let Some(status) = msg.get("status") {
            let lifecycle = status
                .get("lifecycle")
                .and_then(Value::as_str)
                .unwrap_or("UNKNOWN");
            let changed = self.lifecycle.as_deref() != Some(lifecycle);
            if changed && lifecycle == "STARTING" && self.awaiting_initializing {
                return Err(
                    "protocol.md §8.6 item 4: Status STARTING came before StartProgress \
                     Initializing (§8.3 steps 1 and 4)"
                        .into(),
                );
            }
            self.lifecycle = Some(lifecycle.to_owned());
        }
        if let Some(progress) = msg.get("startProgress") {
            self.progress(progress)?;
        }
        let Some(reply_to) = text(msg.pointer("/rpc/responseTo")) else {
            return Ok(());
        };
        if msg.get("start").is_some() && self.starts.remove(&reply_to) {
            let success = msg.pointer("/start/success") == Some(&Value::Bool(true));
            if self.starts.is_empty() {
                self.answered = true;
            }
            if let Some(lifecycle) = self.lifecycle.as_deref()
                && success
                && lifecycle != "STARTED"
            {
                return Err(format!(
                    "protocol.md §8.6 item 4: StartResponse{{success:true}} came while the last \
                     Status said {lifecycle}; the service broadcasts Status STARTED before it \
                     replies (§8.3 step 9)"
                ));
            }
        }
        if msg.get("stop").is_some()
            && self.stops.remove(&reply_to)
            && let Some(lifecycle) = self.lifecycle.as_deref()
            && lifecycle != "STOPPED"
        {
            return Err(format!(
                "protocol.md §8.6 item 4: StopResponse came while the last Status said \
                 {lifecycle}; the service broadcasts Status STOPPED before it replies \
                 (§8.4 step 3)"
            ));
        }
        Ok(())
    }

    fn progress(&mut self, progress: &Value) -> Result<(), String> {
        let Some(stage) = stage(progress.get("stage")) else {
            return Ok(()); // an unknown stage: nothing to say about it
        };
        if stage == 0 {
            self.awaiting_initializing = false;
            self.stage = Some(0);
            self.written = 0;
            self.answered = false;
            return Ok(());
        }
        if self.answered {
            return Err(format!(
                "protocol.md §8.6 item 3: StartProgress {} came after the StartResponse, \
                 with no new Initializing",
                STAGES[usize::from(stage)]
            ));
        }
        if let Some(last) = self.stage
            && stage < last
        {
            return Err(format!(
                "protocol.md §8.6 item 3: StartProgress {} came after {}",
                STAGES[usize::from(stage)],
                STAGES[usize::from(last)]
            ));
        }
        if stage == 1 {
            let written = number(progress.pointer("/downloadProgress/bytesWritten")).unwrap_or(0);
            if self.stage == Some(1) && written < self.written {
                return Err(format!(
                    "protocol.md §8.3 step 6: bytes_written went back from {} to {written}",
                    self.written
                ));
            }
            if let Some(total) = number(progress.pointer("/downloadProgress/bytesTotal"))
                && written > total
            {
                return Err(format!(
                    "protocol.md §8.2: bytes_written {written} is more than bytes_total {total}"
                ));
            }
            self.written = written;
        }
        self.stage = Some(stage);
        Ok(())
    }
}

const STAGES: [&str; 3] = ["Initializing", "Downloading", "Finalizing"];

/// The stage number of a StartProgress: absent is Initializing (proto3
/// leaves a zero enum out, §1.5).
fn stage(value: Option<&Value>) -> Option<u8> {
    match value {
        None => Some(0),
        Some(Value::String(name)) => STAGES
            .iter()
            .position(|s| s == name)
            .and_then(|i| u8::try_from(i).ok()),
        Some(Value::Number(n)) => n.as_u64().filter(|n| *n < 3).map(|n| n as u8),
        Some(_) => None,
    }
}

/// A 64-bit integer in either JSON spelling.
fn number(value: Option<&Value>) -> Option<u64> {
    match value? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::ServiceWatch;
    use serde_json::json;

    fn start(watch: &mut ServiceWatch) {
        watch.sent(&json!({"rpc": {"msgId": "1"}, "start": {}}));
    }

    #[test]
    fn the_documented_start_order_passes() {
        let mut w = ServiceWatch::default();
        start(&mut w);
        for msg in [
            json!({"startProgress": {}}),
            json!({"status": {"lifecycle": "STARTING"}}),
            json!({"startProgress": {"stage": "Downloading", "downloadProgress": {"bytesWritten": "10", "bytesTotal": "20"}}}),
            json!({"startProgress": {"stage": "Downloading", "downloadProgress": {"bytesWritten": "20", "bytesTotal": "20"}}}),
            json!({"startProgress": {"stage": "Finalizing"}}),
            json!({"status": {"lifecycle": "STARTED"}}),
            json!({"rpc": {"responseTo": "1"}, "start": {"success": true}}),
        ] {
            w.received(&msg).unwrap();
        }
    }

    #[test]
    fn out_of_order_messages_fail() {
        let mut w = ServiceWatch::default();
        start(&mut w);
        w.received(&json!({"startProgress": {"stage": "Finalizing"}}))
            .unwrap();
        let err = w
            .received(&json!({"startProgress": {"stage": "Downloading"}}))
            .unwrap_err();
        assert!(err.contains("§8.6 item 3"), "{err}");

        let mut w = ServiceWatch::default();
        start(&mut w);
        let err = w
            .received(&json!({"status": {"lifecycle": "STARTING"}}))
            .unwrap_err();
        assert!(err.contains("before StartProgress Initializing"), "{err}");

        let mut w = ServiceWatch::default();
        start(&mut w);
        w.received(&json!({"startProgress": {}})).unwrap();
        w.received(&json!({"status": {"lifecycle": "STARTING"}}))
            .unwrap();
        let err = w
            .received(&json!({"rpc": {"responseTo": "1"}, "start": {"success": true}}))
            .unwrap_err();
        assert!(err.contains("§8.6 item 4"), "{err}");
        let err = w
            .received(&json!({"startProgress": {"stage": "Finalizing"}}))
            .unwrap_err();
        assert!(err.contains("after the StartResponse"), "{err}");

        let mut w = ServiceWatch::default();
        w.sent(&json!({"rpc": {"msgId": "2"}, "stop": {}}));
        w.received(&json!({"status": {"lifecycle": "STOPPING"}}))
            .unwrap();
        assert!(
            w.received(&json!({"rpc": {"responseTo": "2"}, "stop": {"success": true}}))
                .is_err()
        );

        let mut w = ServiceWatch::default();
        start(&mut w);
        w.received(&json!({"startProgress": {"stage": "Downloading", "downloadProgress": {"bytesWritten": "9"}}}))
            .unwrap();
        assert!(
            w.received(&json!({"startProgress": {"stage": "Downloading", "downloadProgress": {"bytesWritten": "3"}}}))
                .is_err()
        );
    }
}
