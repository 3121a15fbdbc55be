//! Forwards the tunnel's own tracing events to the manager as `Log`
//! messages (protocol.md §6.12).
//!
//! Only the "client logger" is forwarded: events whose target is one of
//! [`FORWARDED_TARGETS`] (control plane, dataplane). The protocol layer
//! (the codec and the request loop) is never forwarded, so sending a Log can
//! never produce another Log, and nothing is logged about the tunnel's own
//! protocol writes (§6.12 rule 1). The layer never blocks the code that
//! logs: events go into a bounded queue, and when the manager does not keep
//! up the excess is counted and reported once it drains.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use codervpn_codec::{Speaker, Tunnel};
use codervpn_proto::vpn::log::{Field, Level};
use codervpn_proto::{Log, TunnelMessage, tunnel_message};
use tokio::sync::mpsc;
use tracing::field::{Field as TracingField, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Targets whose events reach the manager.
pub const FORWARDED_TARGETS: &[&str] = &[
    "codervpn_reference_tunnel::control",
    "codervpn_reference_tunnel::dataplane",
];

const QUEUE: usize = 1024;

/// The tracing layer; install it in the process's subscriber.
#[derive(Debug)]
pub struct ManagerLogLayer {
    min: tracing::Level,
    tx: mpsc::Sender<Log>,
    dropped: Arc<AtomicU64>,
}

/// The other end: hand it to [`crate::serve`].
#[derive(Debug)]
pub struct LogQueue {
    rx: mpsc::Receiver<Log>,
    dropped: Arc<AtomicU64>,
}

/// A layer forwarding events at `min` or more severe, and its queue.
pub fn manager_logs(min: tracing::Level) -> (ManagerLogLayer, LogQueue) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    (
        ManagerLogLayer {
            min,
            tx,
            dropped: dropped.clone(),
        },
        LogQueue { rx, dropped },
    )
}

impl<S: Subscriber> Layer<S> for ManagerLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        // tracing orders levels by verbosity: ERROR < WARN < ... < TRACE.
        if *meta.level() > self.min
            || !FORWARDED_TARGETS
                .iter()
                .any(|t| meta.target().starts_with(t))
        {
            return;
        }
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        let log = Log {
            level: level(*meta.level()).into(),
            message: visitor.message,
            logger_names: logger_names(meta.target()),
            fields: visitor.fields,
        };
        if self.tx.try_send(log).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl LogQueue {
    /// Sends queued logs one-way until the stream ends.
    pub async fn forward(mut self, speaker: Speaker<Tunnel>) {
        loop {
            let log = tokio::select! {
                log = self.rx.recv() => log,
                _ = speaker.closed() => return,
            };
            let Some(log) = log else { return };
            let dropped = self.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let note = Log {
                    level: Level::Warn.into(),
                    message: format!("{dropped} log lines dropped: the manager was not reading"),
                    logger_names: vec!["vpn".into()],
                    fields: vec![],
                };
                if send(&speaker, note).await.is_err() {
                    return;
                }
            }
            if send(&speaker, log).await.is_err() {
                return;
            }
        }
    }
}

async fn send(speaker: &Speaker<Tunnel>, log: Log) -> Result<(), codervpn_codec::SpeakerError> {
    speaker
        .send(TunnelMessage {
            rpc: None,
            msg: Some(tunnel_message::Msg::Log(log)),
        })
        .await
}

fn level(level: tracing::Level) -> Level {
    match level {
        tracing::Level::ERROR => Level::Error,
        tracing::Level::WARN => Level::Warn,
        tracing::Level::INFO => Level::Info,
        _ => Level::Debug,
    }
}

/// `codervpn_reference_tunnel::control::session` -> `[vpn, control, session]`.
fn logger_names(target: &str) -> Vec<String> {
    std::iter::once("vpn")
        .chain(target.split("::").skip(1))
        .map(str::to_owned)
        .collect()
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Vec<Field>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &TracingField, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push(Field {
                name: field.name().to_owned(),
                value: value.to_owned(),
            });
        }
    }

    fn record_debug(&mut self, field: &TracingField, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn forwards_client_logger_events_only() {
        let (layer, mut queue) = manager_logs(tracing::Level::INFO);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "codervpn_reference_tunnel::control::session", user = "rootbeer", n = 3, "connected");
            tracing::debug!(target: "codervpn_reference_tunnel::control", "too verbose");
            tracing::warn!(target: "codervpn_reference_tunnel::tunnel", "protocol layer: not forwarded");
            tracing::error!(target: "codervpn_codec::speaker", "codec: not forwarded");
        });
        let log = queue.rx.try_recv().unwrap();
        assert_eq!(log.level, Level::Info as i32);
        assert_eq!(log.message, "connected");
        assert_eq!(log.logger_names, ["vpn", "control", "session"]);
        assert_eq!(log.fields[0].name, "user");
        assert_eq!(log.fields[0].value, "rootbeer");
        assert_eq!(log.fields[1].value, "3");
        assert!(queue.rx.try_recv().is_err(), "nothing else forwarded");
    }
}
