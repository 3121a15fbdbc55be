//! Runs one transcript against a live peer over its raw byte stream.
//!
//! The harness reads and writes bytes itself rather than through the
//! codec's speaker: a conformance tool must see exactly what the peer sent
//! (a frame after StopResponse, a header it should not have sent) and must
//! be able to send what a well-behaved speaker never would. Every byte in
//! either direction is recorded, and so is every packet on the tun (the
//! dataplane tier, [`crate::tun`]): while a case waits for a packet it
//! keeps handling the stream, and while it waits for a message, packets
//! queue.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use codervpn_codec::handshake::{Header, HeaderReader, Progress};
use codervpn_codec::{FrameCodec, Role, Side, VersionList};
use codervpn_mock_coder::{Action, MockCoder};
use codervpn_proto::json::{json_to_payload, payload_to_json};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant as TokioInstant;
use tokio_util::codec::{Decoder, Encoder};

use crate::checks;
use crate::matcher::Bindings;
use crate::packet::{self, PacketPattern, pattern};
use crate::service_watch::ServiceWatch;
use crate::target::Stream;
use crate::transcript::{
    Answer, Direction, Event, Expectation, Recorded, RecordedItem, Transcript,
};
use crate::tun::{TunPacket, TunPort, TunWriter};

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "verdict", content = "why", rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    /// Passed, but something was late or odd.
    Warn(String),
    /// A rule was broken (graded by the case's level).
    Fail(String),
}

/// The verdict and everything that was recorded.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub recorded: Vec<Recorded>,
}

enum Incoming {
    Header(Vec<u8>),
    Frame(bytes::Bytes),
    Eof,
    Error(String),
}

enum Write {
    Bytes(Vec<u8>),
    Slowly(Vec<u8>),
    Close,
}

/// What a case recorded, and how much.
#[derive(Default)]
struct Recording {
    entries: Vec<Recorded>,
    /// Approximate size of `entries` as JSON.
    bytes: usize,
    truncated: bool,
}

type Log = Arc<Mutex<Recording>>;

/// Entries, and bytes of JSON, one case records at most: a peer that
/// floods must not make the harness hold (and report) an unbounded
/// recording. The recording then ends with an error entry saying so.
pub const RECORD_LIMIT: usize = 20_000;
pub const RECORD_BYTES: usize = 8 << 20;

fn record(log: &Log, started: Instant, dir: Direction, what: RecordedItem) {
    let at_ms = started.elapsed().as_millis() as u64;
    let size = match &what {
        RecordedItem::Header(text) | RecordedItem::Raw(text) | RecordedItem::Error(text) => {
            text.len()
        }
        RecordedItem::Message(value) | RecordedItem::Packet(value) => {
            serde_json::to_vec(value).map_or(0, |json| json.len())
        }
        RecordedItem::Eof => 0,
    };
    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
    if log.truncated {
        return;
    }
    if log.entries.len() >= RECORD_LIMIT || log.bytes + size > RECORD_BYTES {
        log.truncated = true;
        let why = format!(
            "recording truncated after {} entries, about {} bytes: the peer sent too much",
            log.entries.len(),
            log.bytes
        );
        log.entries.push(Recorded {
            at_ms,
            dir,
            what: RecordedItem::Error(why),
        });
        return;
    }
    log.bytes += size;
    log.entries.push(Recorded { at_ms, dir, what });
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses hex with optional spaces.
pub fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digits: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {text:?}"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| format!("bad hex {text:?}")))
        .collect()
}

/// Replaces the API token and header values in a message to be recorded
/// (protocol.md §6.2 item 6).
pub fn redact(msg: &Value) -> Value {
    let mut msg = msg.clone();
    if let Some(start) = msg.get_mut("start").and_then(Value::as_object_mut) {
        if start.contains_key("apiToken") {
            start.insert("apiToken".into(), json!("<redacted>"));
        }
        if let Some(headers) = start.get_mut("headers").and_then(Value::as_array_mut) {
            for header in headers {
                if let Some(h) = header.as_object_mut() {
                    h.insert("value".into(), json!("<redacted>"));
                }
            }
        }
    }
    msg
}

async fn read_loop(
    mut reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    tx: mpsc::Sender<Incoming>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut header = Some(HeaderReader::default());
    let mut frames = FrameCodec::default();
    loop {
        let read = reader.read_buf(&mut buf).await;
        let eof = matches!(read, Ok(0));
        if let Err(err) = read {
            let _ = tx
                .send(Incoming::Error(format!("read failed: {err}")))
                .await;
            return;
        }
        if let Some(reader_state) = header.as_mut() {
            match reader_state.feed(&buf) {
                Ok(Progress::Complete { consumed }) => {
                    let line = reader_state.line().to_vec();
                    let _ = buf.split_to(consumed);
                    header = None;
                    let _ = tx.send(Incoming::Header(line)).await;
                }
                Ok(Progress::NeedMore) => {
                    buf.clear();
                    if eof {
                        let _ = tx.send(Incoming::Eof).await;
                        return;
                    }
                    continue;
                }
                Err(err) => {
                    let _ = tx
                        .send(Incoming::Error(format!("peer header: {err}")))
                        .await;
                    return;
                }
            }
        }
        loop {
            let next = if eof {
                frames.decode_eof(&mut buf)
            } else {
                frames.decode(&mut buf)
            };
            match next {
                Ok(Some(frame)) => {
                    let _ = tx.send(Incoming::Frame(frame)).await;
                }
                Ok(None) => break,
                Err(err) => {
                    let _ = tx.send(Incoming::Error(err.to_string())).await;
                    return;
                }
            }
        }
        if eof {
            let _ = tx.send(Incoming::Eof).await;
            return;
        }
    }
}

async fn write_loop(
    mut writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    mut rx: mpsc::UnboundedReceiver<Write>,
    log: Log,
    started: Instant,
) {
    let mut broken = false;
    while let Some(op) = rx.recv().await {
        if broken {
            continue;
        }
        let result = match op {
            Write::Bytes(bytes) => writer.write_all(&bytes).await.and(writer.flush().await),
            Write::Slowly(bytes) => {
                let mut result = Ok(());
                for byte in bytes {
                    result = writer.write_all(&[byte]).await.and(writer.flush().await);
                    if result.is_err() {
                        break;
                    }
                    // A pause, so each byte is its own read on the other side.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                result
            }
            Write::Close => {
                let _ = writer.shutdown().await;
                return;
            }
        };
        if let Err(err) = result {
            // The peer may close after rejecting us (§3.7 item 5).
            broken = true;
            record(
                &log,
                started,
                Direction::Sent,
                RecordedItem::Error(format!("write failed: {err}")),
            );
        }
    }
}

/// Runs `case` with the harness playing side `S` over `stream`; packet
/// events use `tun`, the harness's end of the tunnel's tun descriptor.
pub async fn run<S: Side>(
    case: &Transcript,
    stream: Stream,
    mock: Option<&MockCoder>,
    token: &str,
    tun: Option<TunPort>,
) -> Outcome {
    run_with::<S>(case, stream, mock, token, tun, None).await
}

/// Gives the harness its next link to the peer: for a service under test a
/// fresh connection to its socket, for a client under test the client's
/// next connection to ours (protocol.md §8.1). The engine bounds each wait.
pub type Connector =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<Stream, String>> + Send>> + Send>;

/// [`run`], with `connector` for the link events (`reconnect`, `connect`)
/// of client/service cases.
pub async fn run_with<S: Side>(
    case: &Transcript,
    stream: Stream,
    mock: Option<&MockCoder>,
    token: &str,
    tun: Option<TunPort>,
    connector: Option<Connector>,
) -> Outcome {
    let started = Instant::now();
    let log: Log = Arc::default();
    let link = Link::open(stream, &log, started);
    let (tun_writer, packets) = match tun {
        Some(port) => {
            let log = log.clone();
            let (writer, packets) = port.start(Arc::new(move |dir, what| {
                record(&log, started, dir, what);
            }));
            (Some(writer), Some(packets))
        }
        None => (None, None),
    };
    let mut bindings = Bindings::default();
    bindings.set("tun_fd", json!(crate::target::CHILD_TUN_FD));
    match mock {
        Some(mock) => {
            bindings.set("coder_url", json!(mock.url()));
            bindings.set("api_token", json!(token));
        }
        None => {
            // Wire tier: nobody listens there, so Start fails cleanly.
            bindings.set("coder_url", json!("http://127.0.0.1:9"));
            bindings.set("api_token", json!("conformance-token"));
        }
    }
    let mut run = Run::<S> {
        case,
        bindings,
        link,
        link_name: MAIN_LINK.to_owned(),
        others: Vec::new(),
        connector,
        log: log.clone(),
        started,
        warnings: Vec::new(),
        mock,
        step: 0,
        tun_writer,
        packets,
        _side: std::marker::PhantomData,
    };
    let limit = Duration::from_millis(case.timeout_ms);
    let verdict = match tokio::time::timeout(limit, run.events()).await {
        Err(_) => {
            let step = run.step;
            let name = case
                .events
                .get(step.wrapping_sub(1))
                .map_or("?", event_name);
            // A peer that kept sending did not stall: say which it was.
            let flooded = log.lock().unwrap_or_else(|p| p.into_inner()).truncated;
            let how = if flooded {
                "flooded: the peer sent more than could be recorded"
            } else {
                "stalled"
            };
            Verdict::Fail(format!(
                "step {step} ({name}): {}: the case did not finish within {limit:?} ({how})",
                case.spec
            ))
        }
        Ok(Err(failure)) => Verdict::Fail(failure),
        Ok(Ok(())) if run.warnings.is_empty() => Verdict::Pass,
        Ok(Ok(())) => Verdict::Warn(run.warnings.join("; ")),
    };
    let mut links = vec![run.link];
    links.extend(run.others.into_iter().map(|(_, link)| link));
    for link in links {
        link.shut().await;
    }
    let recorded = std::mem::take(&mut log.lock().unwrap_or_else(|p| p.into_inner()).entries);
    Outcome { verdict, recorded }
}

/// Frames read ahead of the case; beyond this the reader stops reading
/// (at most 16 frames of 16 MiB are held).
const INCOMING_QUEUE: usize = 16;

/// The name of the first link (`switch` names it).
pub const MAIN_LINK: &str = "main";

/// One stream to the peer: its reader and writer tasks, and what the
/// harness has learnt about it.
struct Link {
    incoming: mpsc::Receiver<Incoming>,
    out: mpsc::UnboundedSender<Write>,
    /// The peer's EOF has been seen.
    closed: bool,
    reading: JoinHandle<()>,
    writing: JoinHandle<()>,
    /// The service's order rules (§8.6), when the harness is a client.
    watch: ServiceWatch,
}

impl Link {
    fn open(stream: Stream, log: &Log, started: Instant) -> Link {
        let (reader, writer) = stream;
        // Bounded: a peer that floods waits on its pipe instead of
        // filling our memory faster than the case can check frames.
        let (in_tx, incoming) = mpsc::channel(INCOMING_QUEUE);
        let (out, out_rx) = mpsc::unbounded_channel();
        Link {
            incoming,
            out,
            closed: false,
            reading: tokio::spawn(read_loop(reader, in_tx)),
            writing: tokio::spawn(write_loop(writer, out_rx, log.clone(), started)),
            watch: ServiceWatch::default(),
        }
    }

    /// Closes our side (bounded): the peer reads EOF.
    async fn shut(self) {
        self.reading.abort();
        let _ = self.out.send(Write::Close);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writing).await;
    }
}

struct Run<'a, S: Side> {
    case: &'a Transcript,
    bindings: Bindings,
    /// The current link to the peer.
    link: Link,
    link_name: String,
    /// The other open links, by name.
    others: Vec<(String, Link)>,
    /// Where further links come from (client/service cases).
    connector: Option<Connector>,
    log: Log,
    started: Instant,
    warnings: Vec<String>,
    mock: Option<&'a MockCoder>,
    /// The step being run (1-based), for reports of a stalled case.
    step: usize,
    /// Writes packets to the tun (dataplane tier).
    tun_writer: Option<TunWriter>,
    /// Packets the tunnel wrote, already recorded.
    packets: Option<mpsc::Receiver<TunPacket>>,
    _side: std::marker::PhantomData<S>,
}

/// The next thing from either channel while waiting for packets.
enum Arrival {
    Message(Value),
    Packet(TunPacket),
    Timeout,
}

/// How long a packet event waits for the tunnel's address to be known
/// (a tunnel may configure its interface after StartResponse).
const ADDRESS_WAIT: Duration = Duration::from_secs(5);

/// What a received message is to the harness besides a match candidate.
enum Background {
    No,
    Yes,
    /// A request the harness answers (NetworkSettings, §6.4 item 1).
    Answer(String),
}

impl<S: Side> Run<'_, S> {
    fn rule(&self) -> &str {
        &self.case.spec
    }

    fn send_bytes(&mut self, bytes: Vec<u8>, slowly: bool) {
        let _ = self.link.out.send(if slowly {
            Write::Slowly(bytes)
        } else {
            Write::Bytes(bytes)
        });
    }

    async fn events(&mut self) -> Result<(), String> {
        for (index, event) in self.case.events.iter().enumerate() {
            let step = index + 1;
            self.step = step;
            self.event(event)
                .await
                .map_err(|why| format!("step {step} ({}): {why}", event_name(event)))?;
        }
        Ok(())
    }

    async fn event(&mut self, event: &Event) -> Result<(), String> {
        match event {
            Event::Handshake { versions, withhold } => {
                let versions: VersionList = versions
                    .as_deref()
                    .unwrap_or("1.2")
                    .parse()
                    .map_err(|e| format!("bad versions in the case: {e}"))?;
                let line = Header::new(S::ROLE, versions.clone()).to_line();
                if !withhold {
                    self.send_header(&line);
                }
                let peer = self.peer_header(5_000).await?;
                if *withhold {
                    self.send_header(&line);
                }
                let header = Header::parse(&peer, S::ROLE.peer()).map_err(|e| {
                    format!(
                        "{}: the peer's header {:?} is invalid: {e} ({})",
                        self.rule(),
                        String::from_utf8_lossy(&peer),
                        e.category()
                    )
                })?;
                Header::negotiate(&versions, &header)
                    .map_err(|e| format!("{}: {e}", self.rule()))?;
                Ok(())
            }
            Event::SendHeader(text) => {
                self.send_header(text);
                Ok(())
            }
            Event::ExpectHeader { within_ms } => {
                let peer = self.peer_header(*within_ms).await?;
                Header::parse(&peer, S::ROLE.peer()).map_err(|e| {
                    format!(
                        "{}: the peer's header {:?} is invalid: {e}",
                        self.rule(),
                        String::from_utf8_lossy(&peer)
                    )
                })?;
                Ok(())
            }
            Event::Send(template) => {
                let msg = self.bindings.resolve(template);
                let payload = json_to_payload::<S::Out>(&msg)
                    .map_err(|e| format!("bad message in the case: {e}"))?;
                let mut frame = BytesMut::new();
                FrameCodec::default()
                    .encode(&payload[..], &mut frame)
                    .map_err(|e| format!("cannot frame the message: {e}"))?;
                record(
                    &self.log,
                    self.started,
                    Direction::Sent,
                    RecordedItem::Message(redact(&msg)),
                );
                if S::ROLE == Role::Client {
                    self.link.watch.sent(&msg);
                }
                self.send_bytes(frame.to_vec(), false);
                Ok(())
            }
            Event::SendRaw(text) | Event::SendRawSlowly(text) => {
                let bytes = unhex(text)?;
                record(
                    &self.log,
                    self.started,
                    Direction::Sent,
                    RecordedItem::Raw(hex(&bytes)),
                );
                self.send_bytes(bytes, matches!(event, Event::SendRawSlowly(_)));
                Ok(())
            }
            Event::Expect(Expectation {
                message,
                within_ms,
                warn_after_ms,
                answer,
            }) => {
                let started = Instant::now();
                self.expect(std::slice::from_ref(message), *within_ms, *answer)
                    .await?;
                self.warn_if_late(started, *warn_after_ms, "arrived");
                Ok(())
            }
            Event::ExpectAnyOrder {
                messages,
                within_ms,
                answer,
            } => self.expect(messages, *within_ms, *answer).await.map(drop),
            Event::ExpectEof {
                within_ms,
                warn_after_ms,
                allow_background,
            } => {
                let started = Instant::now();
                self.expect_eof(*within_ms, *allow_background).await?;
                self.warn_if_late(started, *warn_after_ms, "EOF came");
                Ok(())
            }
            Event::ExpectNothing { for_ms } => self.wait_quiet(*for_ms, false).await,
            Event::Sleep { ms } => self.wait_quiet(*ms, true).await,
            Event::CloseWrite => {
                let _ = self.link.out.send(Write::Close);
                Ok(())
            }
            Event::Control(action) => {
                let action: Action = serde_json::from_value(action.clone())
                    .map_err(|e| format!("bad control action in the case: {e}"))?;
                let mock = self
                    .mock
                    .ok_or("this case needs the mock control plane (tier control)")?;
                mock.apply(action);
                Ok(())
            }
            Event::SendPacket(packet) => self.send_packet(packet).await,
            Event::ExpectPacket {
                packet,
                within_ms,
                warn_after_ms,
            } => {
                let started = Instant::now();
                self.expect_packet(packet, *within_ms).await?;
                self.warn_if_late(started, *warn_after_ms, "the packet came");
                Ok(())
            }
            Event::ExpectNoPacket { packet, for_ms } => {
                self.expect_no_packet(packet, *for_ms).await
            }
            Event::Reconnect { within_ms } => {
                // Close first: a client under test comes back only after
                // it has seen the link end.
                self.link.reading.abort();
                let _ = self.link.out.send(Write::Close);
                self.link.closed = true;
                record(&self.log, self.started, Direction::Sent, RecordedItem::Eof);
                let link = self.next_link(*within_ms).await?;
                let old = std::mem::replace(&mut self.link, link);
                old.shut().await;
                Ok(())
            }
            Event::Connect { name, within_ms } => {
                if *name == self.link_name || self.others.iter().any(|(n, _)| n == name) {
                    return Err(format!("bad case: a link named {name:?} is already open"));
                }
                let link = self.next_link(*within_ms).await?;
                let old = std::mem::replace(&mut self.link, link);
                let old_name = std::mem::replace(&mut self.link_name, name.clone());
                self.others.push((old_name, old));
                Ok(())
            }
            Event::Switch(name) => {
                if *name == self.link_name {
                    return Ok(());
                }
                let index = self
                    .others
                    .iter()
                    .position(|(n, _)| n == name)
                    .ok_or_else(|| format!("bad case: no link named {name:?}"))?;
                let (name, link) = self.others.remove(index);
                let old = std::mem::replace(&mut self.link, link);
                let old_name = std::mem::replace(&mut self.link_name, name);
                self.others.push((old_name, old));
                Ok(())
            }
        }
    }

    /// The next link from the connector, within `within_ms`.
    async fn next_link(&mut self, within_ms: u64) -> Result<Link, String> {
        let connector = self
            .connector
            .as_mut()
            .ok_or("bad case: links are only for targets service and client")?;
        let stream = tokio::time::timeout(Duration::from_millis(within_ms), connector())
            .await
            .map_err(|_| {
                format!(
                    "{}: no new connection within {within_ms} ms (stalled)",
                    self.case.spec
                )
            })?
            .map_err(|e| format!("{}: {e}", self.case.spec))?;
        Ok(Link::open(stream, &self.log, self.started))
    }

    /// Resolves, builds, records and writes one packet.
    async fn send_packet(&mut self, packet: &packet::Packet) -> Result<(), String> {
        let writer = self
            .tun_writer
            .clone()
            .ok_or("this case needs the tun descriptor (tier dataplane)")?;
        let resolved = match pattern::resolve_packet(packet, &self.bindings) {
            Err(_) if self.bindings.get("tun_address").is_none() => {
                self.await_tun_address().await?;
                pattern::resolve_packet(packet, &self.bindings)
            }
            other => other,
        }
        .map_err(|e| format!("bad packet in the case: {e}"))?;
        let bytes = packet::build(&resolved).map_err(|e| format!("bad packet in the case: {e}"))?;
        record(
            &self.log,
            self.started,
            Direction::Sent,
            RecordedItem::Packet(packet::parse::for_record(&packet::describe(&bytes))),
        );
        writer
            .send(&bytes)
            .await
            .map_err(|e| format!("{}: {e}", self.rule()))
    }

    /// Waits (bounded) for a router NetworkSettingsRequest that binds
    /// `$tun_address`, handling background traffic meanwhile.
    async fn await_tun_address(&mut self) -> Result<(), String> {
        let deadline = TokioInstant::now() + ADDRESS_WAIT;
        while self.bindings.get("tun_address").is_none() {
            match self.arrival(deadline).await? {
                Arrival::Timeout => {
                    return Err(format!(
                        "{}: the tunnel sent no router NetworkSettingsRequest with an address \
                         (ipv6_settings.addrs) within {ADDRESS_WAIT:?}, so $tun_address is unknown",
                        self.rule()
                    ));
                }
                Arrival::Message(msg) => self.only_background(&msg, "a packet")?,
                Arrival::Packet(_) => {}
            }
        }
        Ok(())
    }

    /// A message that came while waiting for something else: background
    /// traffic is handled, anything else fails.
    fn only_background(&mut self, msg: &Value, waiting_for: &str) -> Result<(), String> {
        match self.background(msg) {
            Background::Yes => Ok(()),
            Background::Answer(id) => {
                self.answer(id);
                Ok(())
            }
            Background::No => Err(format!(
                "{}: expected {waiting_for}, got the message {msg}",
                self.rule()
            )),
        }
    }

    /// The pattern with bindings applied (waiting for `$tun_address` if it
    /// needs it and it is not known yet).
    async fn packet_pattern(&mut self, wanted: &PacketPattern) -> Result<Value, String> {
        let value = pattern::resolve_pattern(wanted, &self.bindings)
            .map_err(|e| format!("bad packet pattern in the case: {e}"))?;
        if self.bindings.get("tun_address").is_none()
            && value.to_string().contains("\"$tun_address\"")
        {
            self.await_tun_address().await?;
            return pattern::resolve_pattern(wanted, &self.bindings)
                .map_err(|e| format!("bad packet pattern in the case: {e}"));
        }
        Ok(value)
    }

    /// A packet from the tunnel that is broken in itself (a bad checksum,
    /// bad framing, not IP) fails the case whatever is being waited for.
    fn check_packet(&self, packet: &TunPacket) -> Result<(), String> {
        match packet.description.get("error").and_then(Value::as_str) {
            Some(error) => Err(format!(
                "protocol.md §9.5: the tunnel wrote a malformed packet ({error}): {}",
                packet::summary(&packet.description)
            )),
            None => Ok(()),
        }
    }

    /// Reads packets until one matches; others are skipped (listed in the
    /// failure if none does).
    async fn expect_packet(
        &mut self,
        wanted: &PacketPattern,
        within_ms: u64,
    ) -> Result<(), String> {
        let deadline = TokioInstant::now() + Duration::from_millis(within_ms);
        let pattern = self.packet_pattern(wanted).await?;
        let words = pattern::words(&pattern);
        let mut others: Vec<String> = Vec::new();
        loop {
            match self.arrival(deadline).await? {
                Arrival::Timeout => {
                    let got = match others.len() {
                        0 => "got no packet".to_owned(),
                        n => format!(
                            "got {n} other packet{}: {}",
                            if n == 1 { "" } else { "s" },
                            others.join("; ")
                        ),
                    };
                    return Err(format!(
                        "{}: expected {words} within {within_ms} ms; {got}",
                        self.rule()
                    ));
                }
                Arrival::Message(msg) => self.only_background(&msg, &words)?,
                Arrival::Packet(packet) => {
                    self.check_packet(&packet)?;
                    if self.bindings.matches(&pattern, &packet.description).is_ok() {
                        return Ok(());
                    }
                    if others.len() < 10 {
                        others.push(packet::summary(&packet.description));
                    } else if others.len() == 10 {
                        others.push("...".into());
                    }
                }
            }
        }
    }

    /// Fails if a matching packet arrives within `for_ms`.
    async fn expect_no_packet(
        &mut self,
        unwanted: &PacketPattern,
        for_ms: u64,
    ) -> Result<(), String> {
        let started = Instant::now();
        let deadline = TokioInstant::now() + Duration::from_millis(for_ms);
        let pattern = self.packet_pattern(unwanted).await?;
        loop {
            match self.arrival(deadline).await? {
                Arrival::Timeout => return Ok(()),
                Arrival::Message(msg) => self.only_background(&msg, "no packet")?,
                Arrival::Packet(packet) => {
                    self.check_packet(&packet)?;
                    if self
                        .bindings
                        .clone()
                        .matches(&pattern, &packet.description)
                        .is_ok()
                    {
                        return Err(format!(
                            "{}: expected no packet matching {pattern} for {for_ms} ms, got {} after {} ms",
                            self.rule(),
                            packet::summary(&packet.description),
                            started.elapsed().as_millis()
                        ));
                    }
                }
            }
        }
    }

    /// The next message (recorded, checked) or packet, or the deadline.
    async fn arrival(&mut self, deadline: TokioInstant) -> Result<Arrival, String> {
        if self.link.closed {
            return Err("the peer had already closed the stream".into());
        }
        let Some(packets) = self.packets.as_mut() else {
            return Err("this case needs the tun descriptor (tier dataplane)".into());
        };
        let next = tokio::select! {
            incoming = self.link.incoming.recv() => Ok(incoming),
            packet = packets.recv() => Err(packet),
            () = tokio::time::sleep_until(deadline) => return Ok(Arrival::Timeout),
        };
        match next {
            Ok(Some(incoming)) => self.take_message(incoming).map(Arrival::Message),
            Ok(None) => Err("the peer's stream ended".into()),
            Err(Some(packet)) => Ok(Arrival::Packet(packet)),
            Err(None) => {
                self.packets = None;
                Err("reading the tun descriptor failed (see the recording)".into())
            }
        }
    }

    /// Answers each matched message that is a request the harness answers.
    fn answer_matched(&mut self, matched: &[Value]) {
        for msg in matched {
            if let Background::Answer(id) = self.background(msg) {
                self.answer(id);
            }
        }
    }

    /// Waits until every pattern has matched one message, in any order;
    /// with `answer`, each match that is an answerable request is answered
    /// as soon as it arrives (the peer may wait for it before the rest).
    /// Returns the matched messages in arrival order.
    async fn expect(
        &mut self,
        patterns: &[Value],
        within_ms: u64,
        answer: bool,
    ) -> Result<Vec<Value>, String> {
        let deadline = TokioInstant::now() + Duration::from_millis(within_ms);
        let mut left: Vec<Value> = patterns.to_vec();
        let mut matched = Vec::new();
        while !left.is_empty() {
            let (index, msg) = self.expect_one_of(&left, deadline, within_ms).await?;
            left.remove(index);
            if answer {
                self.answer_matched(std::slice::from_ref(&msg));
            }
            matched.push(msg);
        }
        Ok(matched)
    }

    /// The next message matching any of `patterns`, with its index;
    /// background traffic on the way is handled as usual.
    async fn expect_one_of(
        &mut self,
        patterns: &[Value],
        deadline: TokioInstant,
        within_ms: u64,
    ) -> Result<(usize, Value), String> {
        loop {
            let msg = match self.next_message(deadline).await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    return Err(format!(
                        "{}: expected {} within {within_ms} ms, got nothing (stalled)",
                        self.rule(),
                        show(patterns)
                    ));
                }
                Err(why) => {
                    return Err(format!(
                        "{}: expected {}, but {why}",
                        self.rule(),
                        show(patterns)
                    ));
                }
            };
            if let Some(i) = patterns
                .iter()
                .position(|p| self.bindings.matches(p, &msg).is_ok())
            {
                return Ok((i, msg));
            }
            match self.background(&msg) {
                Background::Yes => {}
                Background::Answer(id) => self.answer(id),
                Background::No => {
                    let why = patterns
                        .first()
                        .and_then(|p| self.bindings.clone().matches(p, &msg).err())
                        .map(|m| m.to_string())
                        .unwrap_or_default();
                    return Err(format!(
                        "{}: expected {}, got {msg} ({why})",
                        self.rule(),
                        show(patterns)
                    ));
                }
            }
        }
    }

    /// Something expected came, but later than `warn_after_ms`: a warning.
    fn warn_if_late(&mut self, started: Instant, warn_after_ms: Option<u64>, what: &str) {
        let elapsed = started.elapsed();
        if let Some(warn) = warn_after_ms
            && elapsed > Duration::from_millis(warn)
        {
            let rule = self.rule().to_owned();
            self.warnings.push(format!(
                "{rule}: {what} after {elapsed:?} (more than {warn} ms)"
            ));
        }
    }

    fn send_header(&mut self, text: &str) {
        record(
            &self.log,
            self.started,
            Direction::Sent,
            RecordedItem::Header(text.to_owned()),
        );
        self.send_bytes(text.as_bytes().to_vec(), false);
    }

    async fn next(&mut self, deadline: TokioInstant) -> Option<Incoming> {
        // While frames keep coming, `recv` is always ready and the case's
        // own bound (a timeout around the whole case) would only be looked
        // at when tokio's budget runs out: after 128 frames, which can be
        // seconds of decoding when a peer floods with big frames. Yielding
        // here lets the bound be checked once per frame.
        tokio::task::yield_now().await;
        tokio::time::timeout_at(deadline, self.link.incoming.recv())
            .await
            .ok()
            .flatten()
    }

    async fn peer_header(&mut self, within_ms: u64) -> Result<Vec<u8>, String> {
        let deadline = TokioInstant::now() + Duration::from_millis(within_ms);
        match self.next(deadline).await {
            Some(Incoming::Header(line)) => {
                let text = format!("{}\n", String::from_utf8_lossy(&line));
                record(
                    &self.log,
                    self.started,
                    Direction::Received,
                    RecordedItem::Header(text),
                );
                Ok(line)
            }
            Some(Incoming::Eof) => {
                let what = self.stream_ended(None);
                Err(format!("{}: {what} before sending its header", self.rule()))
            }
            Some(Incoming::Error(err)) => {
                let what = self.stream_ended(Some(err));
                Err(format!("{}: {what}", self.rule()))
            }
            Some(Incoming::Frame(_)) => Err("a frame before the header".into()),
            None => Err(format!(
                "{}: no header from the peer within {within_ms} ms (stalled)",
                self.rule()
            )),
        }
    }

    /// The next message as JSON, recorded and checked; `Err` on EOF,
    /// a stream error, or a timeout (`Ok(None)`).
    async fn next_message(&mut self, deadline: TokioInstant) -> Result<Option<Value>, String> {
        if self.link.closed {
            return Err("the peer had already closed the stream".into());
        }
        match self.next(deadline).await {
            None => Ok(None),
            Some(incoming) => self.take_message(incoming).map(Some),
        }
    }

    /// Records and checks what arrived on the stream: a message, or `Err`
    /// for the end of the stream or anything unexpected.
    fn take_message(&mut self, incoming: Incoming) -> Result<Value, String> {
        match incoming {
            Incoming::Frame(frame) => {
                if frame.is_empty() {
                    record(
                        &self.log,
                        self.started,
                        Direction::Received,
                        RecordedItem::Raw(String::new()),
                    );
                    return Err("protocol.md §4.4 item 3: the peer sent a zero-length frame".into());
                }
                let msg = payload_to_json::<S::In>(&frame).map_err(|e| {
                    record(
                        &self.log,
                        self.started,
                        Direction::Received,
                        RecordedItem::Raw(hex(&frame)),
                    );
                    format!("protocol.md §4.1: the peer sent an undecodable frame: {e}")
                })?;
                record(
                    &self.log,
                    self.started,
                    Direction::Received,
                    RecordedItem::Message(msg.clone()),
                );
                if let Some(update) = msg.get("peerUpdate") {
                    let is_reply = msg.pointer("/rpc/responseTo").is_some();
                    checks::peer_update(update, is_reply)
                        .map_err(|e| format!("protocol.md §6.7: {e}"))?;
                }
                if S::ROLE == Role::Client {
                    self.link.watch.received(&msg)?;
                }
                // The tunnel's own /128 (§6.10 router kind) for packets.
                if let Some(addr) = msg
                    .pointer("/networkSettings/ipv6Settings/addrs/0")
                    .filter(|a| a.is_string())
                {
                    self.bindings.set("tun_address", addr.clone());
                }
                Ok(msg)
            }
            Incoming::Eof => Err(self.stream_ended(None)),
            Incoming::Error(err) => Err(self.stream_ended(Some(err))),
            Incoming::Header(_) => Err("a second header line".into()),
        }
    }

    /// Records the end of the peer's stream (EOF, or a receive error) and
    /// says what happened.
    fn stream_ended(&mut self, error: Option<String>) -> String {
        match error {
            None => {
                self.link.closed = true;
                record(
                    &self.log,
                    self.started,
                    Direction::Received,
                    RecordedItem::Eof,
                );
                "the peer closed the stream (hung up)".into()
            }
            Some(err) => {
                let text = format!("receive error: {err}");
                record(
                    &self.log,
                    self.started,
                    Direction::Received,
                    RecordedItem::Error(err),
                );
                text
            }
        }
    }

    fn background(&self, msg: &Value) -> Background {
        let request_id = msg
            .pointer("/rpc/msgId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        // §5.7 item 2: one-way means no rpc field at all; `rpc{}` is not.
        let one_way = msg.get("rpc").is_none();
        match S::ROLE {
            Role::Manager => {
                if (msg.get("log").is_some() || msg.get("peerUpdate").is_some()) && one_way {
                    Background::Yes
                } else if let (Some(_), Some(id)) = (msg.get("networkSettings"), request_id) {
                    Background::Answer(id)
                } else {
                    Background::No
                }
            }
            Role::Tunnel => match (msg.get("getPeerUpdate"), request_id) {
                // A manager may ask at any time (§6.6 item 4).
                (Some(_), Some(id)) => Background::Answer(id),
                _ => Background::No,
            },
            // Status and StartProgress broadcasts reach every client at any
            // time (§8.2, §8.7); the watch checks their order.
            Role::Client
                if one_way
                    && (msg.get("status").is_some() || msg.get("startProgress").is_some()) =>
            {
                Background::Yes
            }
            _ => Background::No,
        }
    }

    fn answer(&mut self, id: String) {
        let reply = match S::ROLE {
            Role::Tunnel => json!({"rpc": {"responseTo": id}, "peerUpdate": {}}),
            _ => json!({"rpc": {"responseTo": id}, "networkSettings": {"success": true}}),
        };
        let delay = match &self.case.network_settings {
            Answer::Withhold => return,
            Answer::Answer => None,
            Answer::Delay { ms } => Some(Duration::from_millis(*ms)),
        };
        let Ok(payload) = json_to_payload::<S::Out>(&reply) else {
            return;
        };
        let mut frame = BytesMut::new();
        if FrameCodec::default()
            .encode(&payload[..], &mut frame)
            .is_err()
        {
            return;
        }
        let out = self.link.out.clone();
        let log = self.log.clone();
        let started = self.started;
        let send = move || {
            record(&log, started, Direction::Sent, RecordedItem::Message(reply));
            let _ = out.send(Write::Bytes(frame.to_vec()));
        };
        match delay {
            None => send(),
            Some(delay) => {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    send();
                });
            }
        }
    }

    /// Waits until every pattern has matched one message, in any order.
    async fn expect_eof(&mut self, within_ms: u64, allow_background: bool) -> Result<(), String> {
        let deadline = TokioInstant::now() + Duration::from_millis(within_ms);
        loop {
            if self.link.closed {
                return Ok(());
            }
            match self.next_message(deadline).await {
                Ok(None) => {
                    return Err(format!(
                        "{}: the stream was not closed within {within_ms} ms",
                        self.rule()
                    ));
                }
                Ok(Some(msg)) if allow_background => match self.background(&msg) {
                    Background::Yes => {}
                    Background::Answer(id) => self.answer(id),
                    Background::No => {
                        return Err(format!("{}: expected EOF, got a frame: {msg}", self.rule()));
                    }
                },
                Ok(Some(msg)) => {
                    return Err(format!("{}: expected EOF, got a frame: {msg}", self.rule()));
                }
                Err(_) if self.link.closed => return Ok(()),
                Err(why) => return Err(format!("{}: expected EOF, but {why}", self.rule())),
            }
        }
    }

    /// Waits `ms`, still answering and checking background traffic; any
    /// other message fails. The peer closing fails too, unless `eof_ok`
    /// (a plain pause, as opposed to `expect_nothing`).
    async fn wait_quiet(&mut self, ms: u64, eof_ok: bool) -> Result<(), String> {
        let deadline = TokioInstant::now() + Duration::from_millis(ms);
        loop {
            if self.link.closed && eof_ok {
                tokio::time::sleep_until(deadline).await;
                return Ok(());
            }
            match self.next_message(deadline).await {
                Ok(None) => return Ok(()),
                Ok(Some(msg)) => match self.background(&msg) {
                    Background::Yes => {}
                    Background::Answer(id) => self.answer(id),
                    Background::No => {
                        return Err(format!("{}: expected nothing, got {msg}", self.rule()));
                    }
                },
                Err(_) if self.link.closed && eof_ok => {}
                Err(why) => {
                    return Err(format!(
                        "{}: expected the stream to stay open and quiet, but {why}",
                        self.rule()
                    ));
                }
            }
        }
    }
}

fn show(patterns: &[Value]) -> String {
    patterns
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Handshake { .. } => "handshake",
        Event::SendHeader(_) => "send_header",
        Event::ExpectHeader { .. } => "expect_header",
        Event::Send(_) => "send",
        Event::SendRaw(_) => "send_raw",
        Event::SendRawSlowly(_) => "send_raw_slowly",
        Event::Expect(_) => "expect",
        Event::ExpectAnyOrder { .. } => "expect_any_order",
        Event::ExpectEof { .. } => "expect_eof",
        Event::ExpectNothing { .. } => "expect_nothing",
        Event::Sleep { .. } => "sleep",
        Event::CloseWrite => "close_write",
        Event::Control(_) => "control",
        Event::SendPacket(_) => "send_packet",
        Event::ExpectPacket { .. } => "expect_packet",
        Event::ExpectNoPacket { .. } => "expect_no_packet",
        Event::Reconnect { .. } => "reconnect",
        Event::Connect { .. } => "connect",
        Event::Switch(_) => "switch",
    }
}
