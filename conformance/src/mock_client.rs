//! The mock client: a well-behaved Coder Desktop app toward a Windows
//! service (protocol.md §8.8), built on the codec's [`Speaker`]. It is the
//! reference the client cases (`CLI-*`) are checked against and a driver for
//! a service: connect (bounded retries, the service may not be up yet),
//! handshake as `client` (5 s), StatusRequest first and apply its reply,
//! then, if asked, Start and later Stop; it follows the lifecycle from
//! Status broadcasts, shows StartProgress only while its own Start runs
//! (ignoring any other, §8.8 item 4), bounds every reply wait (§8.8 item 5:
//! on a timeout it drops the link and reconnects), and reconnects whenever
//! the link drops (§8.8 item 1). It reports one line per observed event.
//!
//! On request it breaks one [C] rule ([`ClientFault`]), so that each client
//! case can be shown to fail against a client breaking its rule.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use codervpn_codec::handshake::{Header, read_header_line};
use codervpn_codec::{Client, Inbound, Role, Speaker, SpeakerConfig, SpeakerError, VersionList};
use codervpn_proto::vpn::StartProgressStage;
use codervpn_proto::vpn::status::Lifecycle;
use codervpn_proto::{
    ClientMessage, ServiceMessage, StartProgress, StartRequest, Status, StatusRequest, StopRequest,
    client_message, service_message,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One broken client rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFault {
    /// Sends `codervpn manager …` as its header (§8.1).
    WrongRole,
    /// Never sends the StatusRequest after connecting (§8.8 item 1).
    NoStatusRequest,
    /// Exits when the link drops instead of reconnecting (§8.8 item 1).
    NoReconnect,
    /// Closes the link on a broadcast it did not expect (§8.8 item 4).
    CloseOnBroadcast,
    /// Waits for replies without a bound (§8.8 item 5).
    UnboundedWait,
}

impl ClientFault {
    pub const ALL: [ClientFault; 5] = [
        ClientFault::WrongRole,
        ClientFault::NoStatusRequest,
        ClientFault::NoReconnect,
        ClientFault::CloseOnBroadcast,
        ClientFault::UnboundedWait,
    ];

    /// The kebab-case name used on the command line.
    pub fn name(self) -> String {
        crate::kebab_case(&format!("{self:?}"))
    }

    pub fn parse(name: &str) -> Option<ClientFault> {
        ClientFault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// What the mock client does.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The service's socket (the named pipe's stand-in, §8.1).
    pub socket: PathBuf,
    /// Start with this deployment URL once the service is STOPPED (§8.8
    /// item 2); no Start when absent.
    pub coder_url: Option<String>,
    pub api_token: String,
    /// Stop this long after a successful Start; never when absent.
    pub stop_after: Option<Duration>,
    /// Exit after the Stop is answered (instead of staying connected).
    pub exit_after_stop: bool,
    /// Bound on each reply (§8.8 item 5); a StartResponse gets this or
    /// 60 s, whichever is longer.
    pub reply_timeout: Duration,
    /// Bound on getting connected, each time (connect retries, §8.8 item 1).
    pub connect_timeout: Duration,
    /// The version list of our header (§8.1: `1.3` today).
    pub versions: VersionList,
    pub fault: Option<ClientFault>,
}

/// How one link ended.
enum LinkEnd {
    /// Lost (closed, failed, a reply timed out): reconnect.
    Lost(String),
    /// Our Stop was answered and we were told to exit then.
    Done,
    /// Asked to end (SIGTERM).
    Cancelled,
}

/// What the client is doing, as the app shows it (§8.8 item 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Own {
    Idle,
    Starting,
    Stopping,
}

type Call =
    Pin<Box<dyn Future<Output = (&'static str, Result<ServiceMessage, SpeakerError>)> + Send>>;

/// Runs until `cancel` (returns `Ok`), until the Stop is answered with
/// `exit_after_stop`, or until the service cannot be reached within the
/// connect bound (`Err`). Each observed event is sent on `events` as a line.
pub async fn run(
    options: &ClientOptions,
    events: mpsc::UnboundedSender<String>,
    cancel: CancellationToken,
) -> Result<(), String> {
    let say = |line: String| {
        let _ = events.send(line);
    };
    let mut session = Session {
        options,
        say: &say,
        started_once: false,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            stream = connect(&options.socket, options.connect_timeout) => stream?,
        };
        say(format!("connected: {}", options.socket.display()));
        let end = tokio::select! {
            () = cancel.cancelled() => LinkEnd::Cancelled,
            end = session.link(stream) => end,
        };
        match end {
            LinkEnd::Cancelled | LinkEnd::Done => return Ok(()),
            LinkEnd::Lost(why) => {
                say(format!("link lost: {why}"));
                if options.fault == Some(ClientFault::NoReconnect) {
                    return Ok(());
                }
            }
        }
        // Bounded backoff: 100 ms, doubling up to 2 s.
        say(format!("reconnecting in {} ms", backoff.as_millis()));
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Connects, retrying every 50 ms, within `limit`.
async fn connect(socket: &std::path::Path, limit: Duration) -> Result<UnixStream, String> {
    let attempt = async {
        loop {
            match UnixStream::connect(socket).await {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    };
    tokio::time::timeout(limit, attempt)
        .await
        .map_err(|_| format!("cannot connect to {} within {limit:?}", socket.display()))
}

struct Session<'a> {
    options: &'a ClientOptions,
    say: &'a (dyn Fn(String) + Sync),
    /// Start is sent once per process (a reconnect does not start again).
    started_once: bool,
}

impl Session<'_> {
    fn fault(&self, fault: ClientFault) -> bool {
        self.options.fault == Some(fault)
    }

    fn config(&self) -> SpeakerConfig {
        let reply_timeout = if self.fault(ClientFault::UnboundedWait) {
            // "Without limit", as the app does; a day keeps every wait bounded.
            Duration::from_secs(86_400)
        } else {
            self.options.reply_timeout
        };
        SpeakerConfig {
            versions: self.options.versions.clone(),
            call_timeout: reply_timeout,
            ..SpeakerConfig::default()
        }
    }

    /// Handshakes (5 s) as `client`, or as `manager` with the wrong-role fault.
    async fn handshake(
        &self,
        stream: UnixStream,
    ) -> Result<(Speaker<Client>, codervpn_codec::Incoming<Client>), String> {
        let (mut reader, mut writer) = stream.into_split();
        let config = self.config();
        if !self.fault(ClientFault::WrongRole) {
            let (speaker, incoming, negotiated) =
                Speaker::<Client>::connect(reader, writer, config)
                    .await
                    .map_err(|e| format!("handshake failed: {e}"))?;
            (self.say)(format!(
                "handshake: service {} (version {})",
                negotiated.peer.versions, negotiated.version
            ));
            return Ok((speaker, incoming));
        }
        let line = Header::new(Role::Manager, config.versions.clone()).to_line();
        let exchange = async {
            writer
                .write_all(line.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            read_header_line(&mut reader)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(config.handshake_timeout, exchange)
            .await
            .map_err(|_| "handshake timed out".to_owned())??;
        Ok(Speaker::<Client>::start(reader, writer, config))
    }

    async fn link(&mut self, stream: UnixStream) -> LinkEnd {
        let (speaker, mut incoming) = match self.handshake(stream).await {
            Ok(link) => link,
            Err(why) => return LinkEnd::Lost(why),
        };
        let mut own = Own::Idle;
        let mut lifecycle = Lifecycle::Unknown;
        let mut call: Option<Call> = None;
        let mut stop_at: Option<tokio::time::Instant> = None;
        if !self.fault(ClientFault::NoStatusRequest) {
            call = Some(self.call(
                &speaker,
                "status",
                client_message::Msg::Status(StatusRequest {}),
            ));
        }
        loop {
            let stop_timer = async {
                match stop_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let idle = call.is_none();
            let reply = async {
                match call.as_mut() {
                    Some(call) => call.await,
                    None => std::future::pending().await,
                }
            };
            // Biased, broadcasts first: the speaker queues a broadcast
            // before it completes the reply read after it, so this keeps
            // the wire order (§8.3: STARTED comes before StartResponse).
            tokio::select! {
                biased;
                inbound = incoming.recv() => {
                    let Some(inbound) = inbound else {
                        let why = speaker
                            .close_reason()
                            .map_or_else(|| "the link ended".to_owned(), |r| r.to_string());
                        return LinkEnd::Lost(why);
                    };
                    let msg = match inbound {
                        Inbound::OneWay(msg) => msg,
                        Inbound::Request { id, msg } => {
                            // A service sends no requests (§8.2); skip it.
                            (self.say)(format!("ignored: request {id} from the service: {msg:?}"));
                            continue;
                        }
                    };
                    match msg.msg {
                        Some(service_message::Msg::Status(status)) => {
                            if self.fault(ClientFault::CloseOnBroadcast) && status.peer_update.is_some() {
                                speaker.close().await;
                                return LinkEnd::Lost("closed on a Status with peers (fault)".into());
                            }
                            lifecycle = self.apply("broadcast", &status);
                        }
                        Some(service_message::Msg::StartProgress(progress)) => {
                            if own == Own::Starting {
                                (self.say)(format!("progress: {}", show_progress(&progress)));
                            } else if self.fault(ClientFault::CloseOnBroadcast) {
                                speaker.close().await;
                                return LinkEnd::Lost("closed on an unexpected StartProgress (fault)".into());
                            } else {
                                // §8.8 item 4: only shown while Starting.
                                (self.say)(format!("ignored: unexpected StartProgress {}", show_progress(&progress)));
                            }
                        }
                        other => (self.say)(format!("ignored: one-way {other:?}")),
                    }
                }
                (what, result) = reply => {
                    call = None;
                    let reply = match result {
                        Ok(reply) => reply,
                        Err(SpeakerError::TimedOut(after)) => {
                            // §8.8 item 5: give up on the link, then reconnect.
                            speaker.close().await;
                            return LinkEnd::Lost(format!("no reply to {what} within {after:?}"));
                        }
                        Err(err) => return LinkEnd::Lost(format!("{what} failed: {err}")),
                    };
                    match (what, reply.msg) {
                        ("status", Some(service_message::Msg::Status(status))) => {
                            lifecycle = self.apply("status", &status);
                        }
                        ("start", Some(service_message::Msg::Start(start))) => {
                            (self.say)(format!("start: success={} {}", start.success, start.error_message));
                            own = Own::Idle;
                            if start.success {
                                stop_at = self.options.stop_after.map(|d| tokio::time::Instant::now() + d);
                            }
                        }
                        ("stop", Some(service_message::Msg::Stop(stop))) => {
                            (self.say)(format!("stop: success={} {}", stop.success, stop.error_message));
                            own = Own::Idle;
                            if self.options.exit_after_stop {
                                speaker.close().await;
                                return LinkEnd::Done;
                            }
                        }
                        (what, other) => {
                            // §8.8 item 3: a reply of the wrong type → Unknown.
                            (self.say)(format!("unexpected reply to {what}: {other:?}; lifecycle unknown"));
                            own = Own::Idle;
                            lifecycle = Lifecycle::Unknown;
                        }
                    }
                }
                () = stop_timer, if idle => {
                    stop_at = None;
                    own = Own::Stopping;
                    (self.say)("stop: sending".into());
                    call = Some(self.call(&speaker, "stop", client_message::Msg::Stop(StopRequest {})));
                }
            }
            // "Connect on launch": Start only once the service is STOPPED
            // (§8.8 item 2), and only after the StatusRequest was answered.
            if call.is_none()
                && own == Own::Idle
                && !self.started_once
                && lifecycle == Lifecycle::Stopped
                && let Some(url) = &self.options.coder_url
            {
                self.started_once = true;
                own = Own::Starting;
                (self.say)(format!("start: sending ({url})"));
                let start = StartRequest {
                    coder_url: url.clone(),
                    api_token: self.options.api_token.clone(),
                    ..StartRequest::default()
                };
                call = Some(self.call(&speaker, "start", client_message::Msg::Start(start)));
            }
        }
    }

    /// A request in flight, bounded (a Start gets at least 60 s: it
    /// downloads and starts a tunnel, §8.3).
    fn call(
        &self,
        speaker: &Speaker<Client>,
        what: &'static str,
        msg: client_message::Msg,
    ) -> Call {
        let speaker = speaker.clone();
        let mut limit = self.config().call_timeout;
        if what == "start" {
            limit = limit.max(Duration::from_secs(60));
        }
        Box::pin(async move {
            let msg = ClientMessage {
                rpc: None,
                msg: Some(msg),
            };
            (what, speaker.call_within(msg, limit).await)
        })
    }

    /// Applies a Status: the lifecycle and the full peer state (§8.2).
    fn apply(&self, what: &str, status: &Status) -> Lifecycle {
        let lifecycle = Lifecycle::try_from(status.lifecycle).unwrap_or(Lifecycle::Unknown);
        let (agents, workspaces) = status.peer_update.as_ref().map_or((0, 0), |p| {
            (p.upserted_agents.len(), p.upserted_workspaces.len())
        });
        (self.say)(format!(
            "{what}: {} ({agents} agents, {workspaces} workspaces)",
            lifecycle.as_str_name()
        ));
        lifecycle
    }
}

/// `Downloading 10 of 20 (50%)`, as the app shows it (§8.8 item 4).
fn show_progress(progress: &StartProgress) -> String {
    let stage =
        StartProgressStage::try_from(progress.stage).map_or("unknown stage", |s| s.as_str_name());
    match &progress.download_progress {
        Some(d) => match d.bytes_total.filter(|t| *t > 0) {
            Some(total) => format!(
                "{stage} {} of {total} ({}%)",
                d.bytes_written,
                d.bytes_written.saturating_mul(100) / total
            ),
            None => format!("{stage} {} of unknown", d.bytes_written),
        },
        None => stage.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_round_trip_by_name() {
        for fault in ClientFault::ALL {
            assert_eq!(ClientFault::parse(&fault.name()), Some(fault));
        }
        assert_eq!(ClientFault::NoStatusRequest.name(), "no-status-request");
        assert_eq!(ClientFault::parse("nope"), None);
    }

    #[test]
    fn progress_reads_like_the_app() {
        let p = StartProgress {
            stage: StartProgressStage::Downloading as i32,
            download_progress: Some(codervpn_proto::vpn::StartProgressDownloadProgress {
                bytes_written: 5,
                bytes_total: Some(20),
            }),
        };
        assert_eq!(show_progress(&p), "Downloading 5 of 20 (25%)");
        assert_eq!(show_progress(&StartProgress::default()), "Initializing");
    }
}
