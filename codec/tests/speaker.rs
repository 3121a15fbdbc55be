//! Integration tests of the async [`Speaker`] over real byte streams
//! (protocol.md §3-§5, §7): in-memory `tokio::io::duplex` pairs split into
//! halves, OS pipes (`tokio::net::unix::pipe`, one per direction as in
//! production, §2.1) and a Unix socket pair split into owned halves.
//!
//! The far end is usually a raw peer that writes bytes and reads frames
//! itself, so the tests see exactly what the speaker puts on the wire. Every
//! await that could hang is bounded by [`within`]; nothing sleeps to assert
//! timing. Tests about time limits run on tokio's paused clock, where a
//! timer fires only when nothing else can make progress.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use codervpn_codec::frame::{decode_payload, encode_frame};
use codervpn_codec::handshake::Negotiated;
use codervpn_codec::{
    Category, CloseReason, CodecError, FrameCodec, Header, HeaderError, Inbound, Incoming,
    MAX_FRAME_LEN, Manager, Role, Side, Speaker, SpeakerConfig, SpeakerError, Tunnel, Version,
    VersionList,
};
use codervpn_proto::{
    Envelope, GetPeerUpdate, Log, ManagerMessage, NetworkSettingsRequest, NetworkSettingsResponse,
    Rpc, StartRequest, StartResponse, StopRequest, StopResponse, TunnelMessage, manager_message,
    tunnel_message,
};
use futures_util::StreamExt;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, duplex, split};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Watchdog for every await that could hang. Generous: a healthy test never
/// gets near it, a hung one fails instead of blocking the suite.
const BOUND: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {BOUND:?}: {what}"),
    }
}

/// Yields until `cond` holds (bounded by [`within`]). Used only to wait for
/// another task to reach a state, never to measure time.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;
type BoxWrite = Box<dyn AsyncWrite + Unpin + Send>;

/// Reads one header line byte by byte, LF included.
async fn read_line(reader: &mut (impl AsyncRead + Unpin)) -> String {
    let mut line = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        let n = within("raw peer: read header", reader.read(&mut byte))
            .await
            .expect("raw peer: read header");
        assert_eq!(n, 1, "EOF inside the header after {line:?}");
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return String::from_utf8(line).expect("header is UTF-8");
        }
        assert!(line.len() <= 256, "header without LF: {line:?}");
    }
}

/// Reads until EOF and returns everything read.
async fn read_to_end(reader: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut rest = Vec::new();
    within("raw peer: read to EOF", reader.read_to_end(&mut rest))
        .await
        .expect("raw peer: read to EOF");
    rest
}

/// The far end of a speaker, driven by hand: writes raw bytes, reads raw
/// frames (payloads as they are on the wire).
struct RawPeer {
    frames: FramedRead<BoxRead, FrameCodec>,
    writer: Option<BoxWrite>,
}

impl RawPeer {
    /// Writes `first_bytes` (a header, possibly followed by frames) while
    /// reading the speaker's header line.
    async fn handshake(
        mut reader: BoxRead,
        mut writer: BoxWrite,
        first_bytes: &[u8],
    ) -> (RawPeer, String) {
        let write = async {
            writer
                .write_all(first_bytes)
                .await
                .expect("raw peer: write header");
            writer.flush().await.expect("raw peer: flush header");
        };
        let ((), line) = tokio::join!(write, read_line(&mut reader));
        let peer = RawPeer {
            frames: FramedRead::new(reader, FrameCodec::default()),
            writer: Some(writer),
        };
        (peer, line)
    }

    /// The next frame's payload, or `None` at EOF. Panics on a framing error.
    async fn payload(&mut self) -> Option<Bytes> {
        within("raw peer: read frame", self.frames.next())
            .await
            .map(|frame| frame.expect("raw peer: bad frame from the speaker"))
    }

    /// The next frame, decoded as `M`. Panics at EOF.
    async fn msg<M: Envelope>(&mut self) -> M {
        let payload = self
            .payload()
            .await
            .expect("raw peer: EOF instead of a frame");
        decode_payload(payload).expect("raw peer: frame does not decode")
    }

    async fn expect_eof(&mut self) {
        if let Some(payload) = self.payload().await {
            panic!("raw peer: expected EOF, got a frame {payload:?}");
        }
    }

    fn writer(&mut self) -> &mut BoxWrite {
        self.writer
            .as_mut()
            .expect("raw peer: write side already closed")
    }

    async fn write(&mut self, bytes: &[u8]) {
        let w = self.writer();
        within("raw peer: write", async {
            w.write_all(bytes).await?;
            w.flush().await
        })
        .await
        .expect("raw peer: write");
    }

    async fn send<M: Message>(&mut self, msg: &M) {
        self.write(&frame(msg)).await;
    }

    /// Closes only the write direction (EOF for the speaker's reader).
    async fn shutdown_write(&mut self) {
        let mut w = self
            .writer
            .take()
            .expect("raw peer: write side already closed");
        within("raw peer: shutdown", w.shutdown())
            .await
            .expect("raw peer: shutdown");
    }
}

fn frame<M: Message>(msg: &M) -> Bytes {
    encode_frame(msg, MAX_FRAME_LEN).expect("encode frame")
}

fn frames<M: Message>(msgs: &[M]) -> Vec<u8> {
    msgs.iter().flat_map(|m| frame(m).to_vec()).collect()
}

/// The speaker's handshake line for `config`.
fn header_line<S: Side>(config: &SpeakerConfig) -> String {
    Header::new(S::ROLE, config.versions.clone()).to_line()
}

/// A speaker of role `S` over a duplex pair of `buffer` bytes, handshaken
/// against a raw peer that sends `peer_header`.
async fn speaker_vs_raw<S: Side>(
    peer_header: &str,
    config: SpeakerConfig,
    buffer: usize,
) -> (Speaker<S>, Incoming<S>, RawPeer) {
    let expected_line = header_line::<S>(&config);
    let (ours, theirs) = duplex(buffer);
    let (r, w) = split(ours);
    let (pr, pw) = split(theirs);
    let (connected, (peer, line)) = within("handshake", async {
        tokio::join!(
            Speaker::<S>::connect(r, w, config),
            RawPeer::handshake(Box::new(pr), Box::new(pw), peer_header.as_bytes()),
        )
    })
    .await;
    let (speaker, incoming, negotiated) = connected.expect("handshake should succeed");
    assert_eq!(line, expected_line, "the speaker's header on the wire");
    assert_eq!(negotiated.version, Version::new(1, 2));
    (speaker, incoming, peer)
}

async fn manager_vs_raw(
    config: SpeakerConfig,
    buffer: usize,
) -> (Speaker<Manager>, Incoming<Manager>, RawPeer) {
    speaker_vs_raw::<Manager>("codervpn tunnel 1.2\n", config, buffer).await
}

async fn tunnel_vs_raw(
    config: SpeakerConfig,
    buffer: usize,
) -> (Speaker<Tunnel>, Incoming<Tunnel>, RawPeer) {
    speaker_vs_raw::<Tunnel>("codervpn manager 1.2\n", config, buffer).await
}

fn config() -> SpeakerConfig {
    SpeakerConfig::default()
}

// --- messages --------------------------------------------------------------

fn rpc(msg_id: u64, response_to: u64) -> Option<Rpc> {
    Some(Rpc {
        msg_id,
        response_to,
    })
}

fn get_peer_update(rpc: Option<Rpc>) -> ManagerMessage {
    ManagerMessage {
        rpc,
        msg: Some(manager_message::Msg::GetPeerUpdate(GetPeerUpdate {})),
    }
}

fn start_request(tag: &str) -> ManagerMessage {
    ManagerMessage {
        rpc: None,
        msg: Some(manager_message::Msg::Start(StartRequest {
            coder_url: tag.to_owned(),
            ..Default::default()
        })),
    }
}

fn stop_request(rpc: Option<Rpc>) -> ManagerMessage {
    ManagerMessage {
        rpc,
        msg: Some(manager_message::Msg::Stop(StopRequest {})),
    }
}

fn network_settings_response(response_to: u64) -> ManagerMessage {
    ManagerMessage {
        rpc: rpc(0, response_to),
        msg: Some(manager_message::Msg::NetworkSettings(
            NetworkSettingsResponse {
                success: true,
                error_message: String::new(),
            },
        )),
    }
}

fn start_response(response_to: u64, text: &str) -> TunnelMessage {
    TunnelMessage {
        rpc: rpc(0, response_to),
        msg: Some(tunnel_message::Msg::Start(StartResponse {
            success: true,
            error_message: text.to_owned(),
        })),
    }
}

fn stop_response(rpc: Option<Rpc>, text: &str) -> TunnelMessage {
    TunnelMessage {
        rpc,
        msg: Some(tunnel_message::Msg::Stop(StopResponse {
            success: true,
            error_message: text.to_owned(),
        })),
    }
}

fn log(rpc: Option<Rpc>, text: &str) -> TunnelMessage {
    TunnelMessage {
        rpc,
        msg: Some(tunnel_message::Msg::Log(Log {
            level: 2,
            message: text.to_owned(),
            ..Default::default()
        })),
    }
}

fn network_settings_request(rpc: Option<Rpc>, mtu: u32) -> TunnelMessage {
    TunnelMessage {
        rpc,
        msg: Some(tunnel_message::Msg::NetworkSettings(
            NetworkSettingsRequest {
                mtu,
                ..Default::default()
            },
        )),
    }
}

/// The request id of a request read off the wire (asserting it is one).
fn request_id(msg: &impl Envelope) -> u64 {
    let rpc = msg.rpc().expect("a request carries rpc");
    assert_ne!(rpc.msg_id, 0, "a request has a non-zero msg_id: {msg:?}");
    assert_eq!(rpc.response_to, 0, "a request has no response_to: {msg:?}");
    rpc.msg_id
}

fn response_to(msg: &impl Envelope) -> u64 {
    msg.rpc().expect("a reply carries rpc").response_to
}

fn start_tag(msg: &ManagerMessage) -> String {
    match &msg.msg {
        Some(manager_message::Msg::Start(req)) => req.coder_url.clone(),
        other => panic!("expected a start arm, got {other:?}"),
    }
}

fn reply_text(msg: &TunnelMessage) -> String {
    match &msg.msg {
        Some(tunnel_message::Msg::Start(resp)) => resp.error_message.clone(),
        Some(tunnel_message::Msg::Stop(resp)) => resp.error_message.clone(),
        other => panic!("expected a start or stop reply, got {other:?}"),
    }
}

/// The field numbers at the top level of a protobuf payload, in order.
fn top_level_fields(payload: &[u8]) -> Vec<u64> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = buf.split_first().expect("truncated varint");
            *buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return value;
            }
        }
        panic!("varint too long");
    }
    let mut buf = payload;
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        fields.push(key >> 3);
        let skip = match key & 7 {
            0 => {
                varint(&mut buf);
                0
            }
            1 => 8,
            2 => usize::try_from(varint(&mut buf)).expect("length fits"),
            5 => 4,
            wire => panic!("unexpected wire type {wire}"),
        };
        buf = &buf[skip..];
    }
    fields
}

/// Tiny deterministic shuffle (xorshift64 + Fisher-Yates).
fn shuffle<T>(items: &mut [T], mut seed: u64) {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = usize::try_from(seed % (i as u64 + 1)).expect("index fits");
        items.swap(i, j);
    }
}

fn assert_closed(result: Result<impl std::fmt::Debug, SpeakerError>, what: &str) -> CloseReason {
    match result {
        Err(SpeakerError::Closed(reason)) => reason,
        other => panic!("{what}: expected SpeakerError::Closed, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 1. Handshake
// ---------------------------------------------------------------------------

async fn connect_pair<R1, W1, R2, W2>(
    manager_io: (R1, W1),
    manager_config: SpeakerConfig,
    tunnel_io: (R2, W2),
    tunnel_config: SpeakerConfig,
) -> (
    (Speaker<Manager>, Incoming<Manager>, Negotiated),
    (Speaker<Tunnel>, Incoming<Tunnel>, Negotiated),
)
where
    R1: AsyncRead + Unpin + Send + 'static,
    W1: AsyncWrite + Unpin + Send + 'static,
    R2: AsyncRead + Unpin + Send + 'static,
    W2: AsyncWrite + Unpin + Send + 'static,
{
    let (m, t) = within("manager and tunnel handshake", async {
        tokio::join!(
            Speaker::<Manager>::connect(manager_io.0, manager_io.1, manager_config),
            Speaker::<Tunnel>::connect(tunnel_io.0, tunnel_io.1, tunnel_config),
        )
    })
    .await;
    (m.expect("manager handshake"), t.expect("tunnel handshake"))
}

/// One request each way through two real speakers: both sides answer from
/// their `Incoming`, and both use msg_id 1 for their first request (§5.2).
async fn round_trip_both_ways(
    manager: &Speaker<Manager>,
    manager_in: &mut Incoming<Manager>,
    tunnel: &Speaker<Tunnel>,
    tunnel_in: &mut Incoming<Tunnel>,
) {
    let tunnel_handler = async {
        match within("tunnel: recv", tunnel_in.recv()).await {
            Some(Inbound::Request { id, msg }) => {
                assert_eq!(id, 1, "the manager's first request has msg_id 1");
                let tag = start_tag(&msg);
                within(
                    "reply",
                    tunnel.reply(id, start_response(999, &format!("echo {tag}"))),
                )
                .await
                .expect("tunnel reply");
            }
            other => panic!("tunnel expected a request, got {other:?}"),
        }
    };
    let (reply, ()) = within("manager call", async {
        tokio::join!(manager.call(start_request("hello")), tunnel_handler)
    })
    .await;
    let reply = reply.expect("manager call");
    assert_eq!(reply_text(&reply), "echo hello");
    // reply() overwrote the rpc field the handler passed in.
    assert_eq!(reply.rpc, rpc(0, 1));

    let manager_handler = async {
        match within("manager: recv", manager_in.recv()).await {
            Some(Inbound::Request { id, msg }) => {
                assert_eq!(id, 1, "the tunnel's first request also has msg_id 1");
                assert_eq!(msg.arm(), Some("network_settings"));
                within("reply", manager.reply(id, network_settings_response(0)))
                    .await
                    .expect("manager reply");
            }
            other => panic!("manager expected a request, got {other:?}"),
        }
    };
    let (reply, ()) = within("tunnel call", async {
        tokio::join!(
            tunnel.call(network_settings_request(None, 1280)),
            manager_handler
        )
    })
    .await;
    let reply = reply.expect("tunnel call");
    assert_eq!(reply.rpc, rpc(0, 1));
    assert_eq!(reply.arm(), Some("network_settings"));
}

#[tokio::test]
async fn handshake_manager_and_tunnel_concurrently_over_a_one_byte_duplex() {
    // With a 1-byte buffer each header write blocks until the other side
    // reads: a speaker that wrote before reading (or read before writing)
    // would deadlock here (§2.1 item 2, §3.4 item 1).
    let (m_end, t_end) = duplex(1);
    let ((manager, mut manager_in, m_neg), (tunnel, mut tunnel_in, t_neg)) =
        connect_pair(split(m_end), config(), split(t_end), config()).await;
    assert_eq!(m_neg.version, Version::new(1, 2));
    assert_eq!(t_neg.version, Version::new(1, 2));
    assert_eq!(m_neg.peer.role, Role::Tunnel);
    assert_eq!(t_neg.peer.role, Role::Manager);
    round_trip_both_ways(&manager, &mut manager_in, &tunnel, &mut tunnel_in).await;
}

#[tokio::test]
async fn handshake_negotiates_1_2_from_different_lists() {
    let manager_config = SpeakerConfig {
        versions: "1.5,2.0".parse::<VersionList>().expect("list"),
        ..config()
    };
    let (m_end, t_end) = duplex(64);
    let ((_m, _mi, m_neg), (_t, _ti, t_neg)) =
        connect_pair(split(m_end), manager_config, split(t_end), config()).await;
    assert_eq!(m_neg.version, Version::new(1, 2));
    assert_eq!(
        t_neg.version,
        Version::new(1, 2),
        "negotiation is symmetric"
    );
    assert_eq!(
        t_neg.peer.versions,
        "1.5,2.0".parse::<VersionList>().expect("list")
    );
}

#[tokio::test]
async fn handshake_over_os_pipes_then_rpc_both_ways() {
    // Production transport: two unidirectional OS pipes (§2.1 item 1).
    let (m_to_t_tx, m_to_t_rx) = tokio::net::unix::pipe::pipe().expect("pipe");
    let (t_to_m_tx, t_to_m_rx) = tokio::net::unix::pipe::pipe().expect("pipe");
    let ((manager, mut manager_in, m_neg), (tunnel, mut tunnel_in, t_neg)) = connect_pair(
        (t_to_m_rx, m_to_t_tx),
        config(),
        (m_to_t_rx, t_to_m_tx),
        config(),
    )
    .await;
    assert_eq!(m_neg.version, Version::new(1, 2));
    assert_eq!(t_neg.version, Version::new(1, 2));
    round_trip_both_ways(&manager, &mut manager_in, &tunnel, &mut tunnel_in).await;

    // Closing the manager ends the tunnel's stream too (EOF, §7.4 item 2).
    within("manager close", manager.close()).await;
    assert!(matches!(
        within("tunnel closed", tunnel.closed()).await,
        CloseReason::PeerClosed
    ));
    assert!(within("tunnel incoming", tunnel_in.recv()).await.is_none());
}

#[tokio::test]
async fn handshake_over_a_unix_socket_pair() {
    let (m_sock, t_sock) = tokio::net::UnixStream::pair().expect("socket pair");
    let ((manager, mut manager_in, _), (tunnel, mut tunnel_in, _)) =
        connect_pair(m_sock.into_split(), config(), t_sock.into_split(), config()).await;
    round_trip_both_ways(&manager, &mut manager_in, &tunnel, &mut tunnel_in).await;
}

#[tokio::test]
async fn handshake_with_a_peer_that_writes_only_after_reading_ours() {
    // The raw tunnel withholds its header until ours has fully arrived
    // (§3.4 item 3, second order). A 1-byte buffer means our header write
    // only completes as the peer reads it.
    let (ours, theirs) = duplex(1);
    let (r, w) = split(ours);
    let (mut pr, mut pw) = split(theirs);
    let peer = async {
        let line = read_line(&mut pr).await;
        pw.write_all(b"codervpn tunnel 1.2\n")
            .await
            .expect("peer header");
        pw.flush().await.expect("peer flush");
        line
    };
    let (connected, line) = within("handshake", async {
        tokio::join!(Speaker::<Manager>::connect(r, w, config()), peer)
    })
    .await;
    assert_eq!(line, "codervpn manager 1.2\n");
    let (speaker, _incoming, negotiated) = connected.expect("handshake should succeed");
    assert_eq!(negotiated.version, Version::new(1, 2));
    assert_eq!(negotiated.peer.role, Role::Tunnel);

    // The stream works afterwards: our first frame follows the header.
    within("send", speaker.send(get_peer_update(None)))
        .await
        .expect("send after handshake");
    let mut frames = FramedRead::new(pr, FrameCodec::default());
    let payload = within("read frame", frames.next())
        .await
        .expect("a frame")
        .expect("a valid frame");
    let msg: ManagerMessage = decode_payload(payload).expect("decode");
    assert_eq!(msg, get_peer_update(None));
}

#[tokio::test]
async fn handshake_with_a_peer_that_reads_only_after_writing_its_header() {
    // The opposite order: the peer blocks writing its header (1-byte buffer)
    // and reads ours only afterwards. Our side must be reading meanwhile.
    let (ours, theirs) = duplex(1);
    let (r, w) = split(ours);
    let (mut pr, mut pw) = split(theirs);
    let peer = async {
        pw.write_all(b"codervpn manager 1.2\n")
            .await
            .expect("peer header");
        pw.flush().await.expect("peer flush");
        read_line(&mut pr).await
    };
    let (connected, line) = within("handshake", async {
        tokio::join!(Speaker::<Tunnel>::connect(r, w, config()), peer)
    })
    .await;
    assert_eq!(line, "codervpn tunnel 1.2\n");
    let (_speaker, _incoming, negotiated) = connected.expect("handshake should succeed");
    assert_eq!(negotiated.peer.role, Role::Manager);
}

// ---------------------------------------------------------------------------
// 2. Request ids
// ---------------------------------------------------------------------------

#[tokio::test]
async fn msg_ids_start_at_one_and_increment_per_request() {
    let (manager, mut manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;

    // The raw tunnel sends its own requests first, with ids 1 and 2: the
    // directions are independent (§5.2 item 1).
    tunnel
        .write(&frames(&[
            network_settings_request(rpc(1, 0), 1),
            network_settings_request(rpc(2, 0), 2),
        ]))
        .await;
    for expected in [1, 2] {
        match within("manager recv", manager_in.recv()).await {
            Some(Inbound::Request { id, .. }) => assert_eq!(id, expected),
            other => panic!("expected a request, got {other:?}"),
        }
    }
    // Answering them uses no ids of ours.
    within("reply", manager.reply(1, network_settings_response(0)))
        .await
        .expect("reply");
    let reply: ManagerMessage = tunnel.msg().await;
    assert_eq!(reply.rpc, rpc(0, 1), "a reply has msg_id 0");

    let mut seen = Vec::new();
    for round in 0..3 {
        // A one-way send between requests takes no id either.
        within("send", manager.send(get_peer_update(rpc(77, 0))))
            .await
            .expect("send");
        let one_way: ManagerMessage = tunnel.msg().await;
        assert_eq!(one_way.rpc, None);

        let tag = format!("call {round}");
        let call = manager.call(start_request(&tag));
        let peer = async {
            let req: ManagerMessage = tunnel.msg().await;
            let id = request_id(&req);
            tunnel.send(&start_response(id, &start_tag(&req))).await;
            id
        };
        let (reply, id) = within("call", async { tokio::join!(call, peer) }).await;
        assert_eq!(reply_text(&reply.expect("call")), tag);
        seen.push(id);
    }
    assert_eq!(seen, [1, 2, 3]);
}

#[tokio::test]
async fn tunnel_msg_ids_also_start_at_one() {
    let (tunnel, _tunnel_in, mut manager) = tunnel_vs_raw(config(), 64 * 1024).await;
    // The manager's own request ids do not affect the tunnel's counter.
    manager.send(&get_peer_update(rpc(1, 0))).await;
    manager.send(&get_peer_update(rpc(2, 0))).await;
    let mut calls = JoinSet::new();
    for mtu in [1000, 1001] {
        let tunnel = tunnel.clone();
        calls.spawn(async move { tunnel.call(network_settings_request(None, mtu)).await });
        // Wait until this call is queued so the wire order is known.
        let req: TunnelMessage = manager.msg().await;
        assert_eq!(request_id(&req), u64::from(mtu - 999));
    }
    // Leave them pending; closing fails them.
    within("close", tunnel.close()).await;
    while let Some(result) = within("join calls", calls.join_next()).await {
        assert!(matches!(
            assert_closed(result.expect("join"), "pending call at close"),
            CloseReason::Local
        ));
    }
}

// ---------------------------------------------------------------------------
// 3. Correlation under concurrency
// ---------------------------------------------------------------------------

/// 200 concurrent calls; the raw tunnel reads them all, then answers in the
/// order `reorder` makes, written in `chunk`-byte pieces. Every caller must
/// get the reply carrying its own tag and its own id.
async fn correlate(reorder: impl FnOnce(&mut Vec<(u64, String)>), chunk: usize) {
    const CALLS: usize = 200;
    let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    let mut calls = JoinSet::new();
    for i in 0..CALLS {
        let manager = manager.clone();
        calls.spawn(async move {
            let tag = format!("call-{i}");
            let reply = within("call", manager.call(start_request(&tag))).await;
            (tag, reply)
        });
    }
    let mut requests = Vec::new();
    for _ in 0..CALLS {
        let req: ManagerMessage = tunnel.msg().await;
        requests.push((request_id(&req), start_tag(&req)));
    }
    let mut ids: Vec<u64> = requests.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=CALLS as u64).collect::<Vec<_>>(),
        "ids are 1..=200"
    );
    assert_eq!(manager.pending_calls(), CALLS);

    let id_of: std::collections::HashMap<String, u64> = requests
        .iter()
        .map(|(id, tag)| (tag.clone(), *id))
        .collect();
    reorder(&mut requests);
    let replies: Vec<TunnelMessage> = requests
        .iter()
        .map(|(id, tag)| start_response(*id, &format!("reply to {tag}")))
        .collect();
    for piece in frames(&replies).chunks(chunk) {
        tunnel.write(piece).await;
    }

    let mut answered = 0;
    while let Some(joined) = within("join calls", calls.join_next()).await {
        let (tag, reply) = joined.expect("join");
        let reply = reply.unwrap_or_else(|err| panic!("{tag} failed: {err}"));
        assert_eq!(reply_text(&reply), format!("reply to {tag}"), "wrong reply");
        assert_eq!(response_to(&reply), id_of[&tag]);
        answered += 1;
    }
    assert_eq!(answered, CALLS);
    assert_eq!(manager.pending_calls(), 0);
    let stats = manager.stats();
    assert_eq!(stats.unmatched_responses, 0);
    assert_eq!(stats.frames_received, CALLS as u64);
    // The writer counts a frame after writing it, so on several threads the
    // peer can read the last request before the count moves.
    until("frames_sent reaches 200", || {
        manager.stats().frames_sent == CALLS as u64
    })
    .await;
}

#[tokio::test]
async fn concurrent_calls_answered_in_reverse_order() {
    correlate(|reqs| reqs.reverse(), usize::MAX).await;
}

#[tokio::test]
async fn concurrent_calls_answered_in_shuffled_order_in_small_pieces() {
    correlate(|reqs| shuffle(reqs, 0x9E37_79B9_7F4A_7C15), 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_answered_in_shuffled_order_multi_thread() {
    for seed in 1..=5u64 {
        correlate(
            |reqs| shuffle(reqs, seed.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            61,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// 4. Unmatched and duplicate responses
// ---------------------------------------------------------------------------

/// One call answered by the raw tunnel; returns the id it used. Since frames
/// are handled in order, everything the tunnel wrote before this reply has
/// been processed once the call returns.
async fn answered_call(manager: &Speaker<Manager>, tunnel: &mut RawPeer, tag: &str) -> u64 {
    let peer = async {
        let req: ManagerMessage = tunnel.msg().await;
        let id = request_id(&req);
        tunnel.send(&start_response(id, &start_tag(&req))).await;
        id
    };
    let (reply, id) = within("answered call", async {
        tokio::join!(manager.call(start_request(tag)), peer)
    })
    .await;
    let reply = reply.expect("answered call");
    assert_eq!(reply_text(&reply), tag);
    assert_eq!(response_to(&reply), id);
    id
}

#[tokio::test]
async fn unknown_response_to_is_dropped_and_counted() {
    let (manager, mut manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    answered_call(&manager, &mut tunnel, "before").await;

    tunnel.send(&start_response(99, "nobody asked")).await;
    answered_call(&manager, &mut tunnel, "after").await;
    let stats = manager.stats();
    assert_eq!(stats.unmatched_responses, 1);
    assert_eq!(stats.frames_received, 3);
    assert!(manager.close_reason().is_none(), "the stream stays open");
    // A response never reaches the request handler (§5.3 item 1).
    assert!(
        tokio::time::timeout(Duration::ZERO, manager_in.recv())
            .await
            .is_err(),
        "nothing for the handler"
    );

    // A message with both ids set is a response (msg_id ignored, §5.3).
    tunnel
        .send(&TunnelMessage {
            rpc: rpc(5, 98),
            ..start_response(0, "also unmatched")
        })
        .await;
    answered_call(&manager, &mut tunnel, "still works").await;
    assert_eq!(manager.stats().unmatched_responses, 2);
    assert!(manager.close_reason().is_none());
}

#[tokio::test]
async fn duplicate_response_is_delivered_once() {
    let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    let peer = async {
        let req: ManagerMessage = tunnel.msg().await;
        let id = request_id(&req);
        // Both replies in one write: the second must not reach anyone.
        tunnel
            .write(&frames(&[
                start_response(id, "first"),
                start_response(id, "second"),
            ]))
            .await;
        id
    };
    let (reply, id) = within("call", async {
        tokio::join!(manager.call(start_request("dup")), peer)
    })
    .await;
    let reply = reply.expect("call");
    assert_eq!(reply_text(&reply), "first");
    assert_eq!(response_to(&reply), id);

    answered_call(&manager, &mut tunnel, "next").await;
    assert_eq!(manager.stats().unmatched_responses, 1);
    assert_eq!(manager.pending_calls(), 0);
    assert!(manager.close_reason().is_none());
}

// ---------------------------------------------------------------------------
// 5. Time limits
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn call_within_times_out_and_a_late_reply_is_unmatched() {
    let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    let limit = Duration::from_millis(50);
    let start = Instant::now();
    let (result, req) = within("call_within", async {
        tokio::join!(
            manager.call_within(get_peer_update(None), limit),
            tunnel.msg::<ManagerMessage>()
        )
    })
    .await;
    let elapsed = start.elapsed();
    assert!(
        matches!(result, Err(SpeakerError::TimedOut(d)) if d == limit),
        "expected TimedOut(50ms), got {result:?}"
    );
    assert!(
        elapsed >= limit && elapsed < Duration::from_millis(100),
        "timed out after {elapsed:?} of paused time"
    );
    assert_eq!(
        manager.pending_calls(),
        0,
        "the entry is removed (§5.9 item 1)"
    );

    let id = request_id(&req);
    tunnel.send(&start_response(id, "too late")).await;
    answered_call(&manager, &mut tunnel, "sync").await;
    assert_eq!(manager.stats().unmatched_responses, 1);
    assert!(manager.close_reason().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_forgets_its_entry() {
    let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    // The caller gives up by dropping the future (cancellation, §5.9 item 1).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        manager.call_within(get_peer_update(None), Duration::from_secs(60)),
    )
    .await;
    assert!(gave_up.is_err(), "the call cannot have been answered");
    assert_eq!(manager.pending_calls(), 0);
    let req: ManagerMessage = tunnel.msg().await;
    tunnel.send(&start_response(request_id(&req), "late")).await;
    answered_call(&manager, &mut tunnel, "sync").await;
    assert_eq!(manager.stats().unmatched_responses, 1);
}

#[tokio::test(start_paused = true)]
async fn handshake_times_out_against_a_silent_peer_and_closes() {
    let config = SpeakerConfig {
        handshake_timeout: Duration::from_secs(5),
        ..config()
    };
    let (ours, theirs) = duplex(1024);
    let (r, w) = split(ours);
    let (mut pr, _pw) = split(theirs);
    let start = Instant::now();
    let result = within("connect", Speaker::<Manager>::connect(r, w, config)).await;
    match result {
        Err(err @ HeaderError::TimedOut(_)) => assert_eq!(err.category(), Category::Io),
        other => panic!("expected a handshake timeout, got {:?}", other.map(|_| ())),
    }
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert_eq!(read_line(&mut pr).await, "codervpn manager 1.2\n");
    assert!(
        read_to_end(&mut pr).await.is_empty(),
        "EOF after our header"
    );
}

// ---------------------------------------------------------------------------
// 6. Peer closing
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn peer_closing_fails_a_pending_call_promptly() {
    let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    let call = {
        let manager = manager.clone();
        tokio::spawn(async move {
            within(
                "call_within",
                manager.call_within(get_peer_update(None), Duration::from_secs(60)),
            )
            .await
        })
    };
    let _req: ManagerMessage = tunnel.msg().await;
    assert_eq!(manager.pending_calls(), 1);
    let closed_at = Instant::now();
    drop(tunnel);
    let result = within("pending call", call).await.expect("join");
    // On the paused clock no time passes unless every task is stuck: a call
    // released by the close itself returns at once, not at the 60 s limit.
    assert_eq!(closed_at.elapsed(), Duration::ZERO, "not prompt");
    assert!(matches!(
        assert_closed(result, "pending call"),
        CloseReason::PeerClosed
    ));
    assert!(matches!(
        within("closed", manager.closed()).await,
        CloseReason::PeerClosed
    ));
    assert_eq!(manager.pending_calls(), 0);
    assert!(matches!(
        assert_closed(
            within("send", manager.send(get_peer_update(None))).await,
            "send after close"
        ),
        CloseReason::PeerClosed
    ));
    assert!(matches!(
        assert_closed(
            within("call", manager.call(get_peer_update(None))).await,
            "call after close"
        ),
        CloseReason::PeerClosed
    ));
}

#[tokio::test]
async fn peer_half_close_closes_both_directions_and_keeps_earlier_messages() {
    let (manager, mut manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    // A one-way message, then EOF: the message is still handed out, then
    // `recv` ends; and our side closes its write direction too (§2.1 item 3).
    tunnel.send(&log(None, "last words")).await;
    tunnel.shutdown_write().await;
    match within("recv", manager_in.recv()).await {
        Some(Inbound::OneWay(msg)) => assert_eq!(msg, log(None, "last words")),
        other => panic!("expected the log, got {other:?}"),
    }
    assert!(within("recv", manager_in.recv()).await.is_none());
    assert!(matches!(
        within("closed", manager.closed()).await,
        CloseReason::PeerClosed
    ));
    tunnel.expect_eof().await;
}

/// The manager calls Stop; the raw tunnel writes the StopResponse and
/// closes in one go (coder/coder #15863). The reply must reach the caller.
async fn reply_then_eof_round(manager: Speaker<Manager>, mut tunnel: RawPeer) {
    let stop_call = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.call(stop_request(None)).await })
    };
    let req: ManagerMessage = tunnel.msg().await;
    assert_eq!(req.arm(), Some("stop"));
    let id = request_id(&req);
    // Reply bytes and EOF together (coder/coder #15863, §5.9 item 3).
    tunnel
        .write(&frame(&stop_response(rpc(0, id), "bye")))
        .await;
    drop(tunnel);
    let reply = within("stop call", stop_call)
        .await
        .expect("join")
        .expect("the reply read before EOF is delivered");
    assert_eq!(reply_text(&reply), "bye");
    assert_eq!(response_to(&reply), id);
    assert!(matches!(
        within("closed", manager.closed()).await,
        CloseReason::PeerClosed
    ));
}

#[tokio::test]
async fn reply_in_the_same_write_as_eof_is_delivered_200_times() {
    for round in 0..200 {
        let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
        let mut calls = JoinSet::new();
        for tag in ["a", "b"] {
            let manager = manager.clone();
            calls.spawn(async move { (tag, manager.call(start_request(tag)).await) });
        }
        let mut ids = std::collections::HashMap::new();
        for _ in 0..2 {
            let req: ManagerMessage = tunnel.msg().await;
            ids.insert(start_tag(&req), request_id(&req));
        }
        // Answer "a" only; the reply and EOF arrive together.
        tunnel
            .write(&frame(&start_response(ids["a"], "reply a")))
            .await;
        drop(tunnel);
        while let Some(joined) = within("join", calls.join_next()).await {
            match joined.expect("join") {
                ("a", Ok(reply)) => {
                    assert_eq!(reply_text(&reply), "reply a", "round {round}");
                    assert_eq!(response_to(&reply), ids["a"]);
                }
                ("b", result) => assert!(
                    matches!(assert_closed(result, "call b"), CloseReason::PeerClosed),
                    "round {round}"
                ),
                (tag, result) => panic!("round {round}: call {tag} got {result:?}"),
            }
        }
        assert_eq!(manager.pending_calls(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_response_in_the_same_write_as_eof_is_delivered_multi_thread() {
    for _ in 0..200 {
        let (manager, _manager_in, tunnel) = manager_vs_raw(config(), 64 * 1024).await;
        reply_then_eof_round(manager, tunnel).await;
    }
}

#[tokio::test]
async fn stop_response_then_eof_over_os_pipes_is_delivered() {
    for _ in 0..200 {
        let (m_to_t_tx, m_to_t_rx) = tokio::net::unix::pipe::pipe().expect("pipe");
        let (t_to_m_tx, t_to_m_rx) = tokio::net::unix::pipe::pipe().expect("pipe");
        let (connected, (tunnel, line)) = within("handshake", async {
            tokio::join!(
                Speaker::<Manager>::connect(t_to_m_rx, m_to_t_tx, config()),
                RawPeer::handshake(
                    Box::new(m_to_t_rx),
                    Box::new(t_to_m_tx),
                    b"codervpn tunnel 1.2\n"
                ),
            )
        })
        .await;
        assert_eq!(line, "codervpn manager 1.2\n");
        let (manager, _manager_in, _) = connected.expect("handshake");
        reply_then_eof_round(manager, tunnel).await;
    }
}

// ---------------------------------------------------------------------------
// 7. The tunnel's StopResponse is last (§7.1)
// ---------------------------------------------------------------------------

/// Receives until the Stop request and returns its id; only the Stop is
/// expected before it.
async fn recv_stop(incoming: &mut Incoming<Tunnel>) -> u64 {
    match within("tunnel recv", incoming.recv()).await {
        Some(Inbound::Request { id, msg }) => {
            assert_eq!(msg.arm(), Some("stop"));
            id
        }
        other => panic!("expected the Stop request, got {other:?}"),
    }
}

async fn stop_is_last_round() {
    let (tunnel, mut incoming, mut manager) = tunnel_vs_raw(config(), 4096).await;
    let logger = {
        let tunnel = tunnel.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                match tunnel.send(log(rpc(3, 0), &format!("log {sent}"))).await {
                    Ok(()) => sent += 1,
                    Err(err) => return (sent, err),
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut logs_read = 0u64;
    while logs_read < 5 {
        let msg: TunnelMessage = manager.msg().await;
        assert_eq!(msg.arm(), Some("log"));
        assert_eq!(msg.rpc, None);
        logs_read += 1;
    }
    // Stop, and two requests queued behind it in the same write.
    manager
        .write(&frames(&[
            stop_request(rpc(7, 0)),
            get_peer_update(rpc(8, 0)),
            start_request("after stop"),
        ]))
        .await;
    let id = recv_stop(&mut incoming).await;
    assert_eq!(id, 7);
    // The manager keeps reading while the tunnel answers (§5.8 item 3): the
    // logger may have filled the pipe and the outgoing queue meanwhile.
    let reading = async {
        let mut last = None;
        while let Some(payload) = manager.payload().await {
            let msg = decode_payload::<TunnelMessage>(payload).expect("decode");
            if let Some(prev) = last.replace(msg) {
                assert_eq!(prev.arm(), Some("log"), "only logs before the StopResponse");
                assert_eq!(prev.rpc, None);
                logs_read += 1;
            }
        }
        last
    };
    let replying = async {
        within("reply", tunnel.reply(id, stop_response(None, "stopped")))
            .await
            .expect("reply to Stop");
    };
    let (last, ()) = tokio::join!(reading, replying);
    let last = last.expect("at least the StopResponse");
    assert_eq!(
        last.arm(),
        Some("stop"),
        "the final frame is the StopResponse"
    );
    assert_eq!(last.rpc, rpc(0, 7));
    assert_eq!(reply_text(&last), "stopped");

    assert!(matches!(
        within("closed", tunnel.closed()).await,
        CloseReason::FinalFrameWritten
    ));
    assert!(matches!(
        assert_closed(
            within("send", tunnel.send(log(None, "late"))).await,
            "send after Stop"
        ),
        CloseReason::FinalFrameWritten
    ));
    assert!(
        within("reply", tunnel.reply(8, log(None, "late reply")))
            .await
            .is_err()
    );
    assert!(
        within("call", tunnel.call(network_settings_request(None, 1)))
            .await
            .is_err()
    );
    // The requests behind the Stop are never handed out (§7.1 rule 3).
    assert!(within("recv after Stop", incoming.recv()).await.is_none());

    let (sent, err) = within("logger", logger).await.expect("join");
    assert!(
        matches!(
            err,
            SpeakerError::Sealed | SpeakerError::Closed(CloseReason::FinalFrameWritten)
        ),
        "logger ended with {err:?}"
    );
    // Logs queued behind the StopResponse are dropped, never written.
    assert!(logs_read <= sent, "{logs_read} logs read, {sent} sent");
    assert_eq!(tunnel.stats().frames_sent, logs_read + 1);
}

#[tokio::test]
async fn stop_response_is_the_final_frame() {
    for _ in 0..20 {
        stop_is_last_round().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_response_is_the_final_frame_multi_thread() {
    for _ in 0..50 {
        stop_is_last_round().await;
    }
}

/// Regression: at commit 30e1bec `Incoming::recv` checked only a flag the
/// writer set after writing the StopResponse, so a handler that went back to
/// `recv` right after `reply` was given the requests read behind the Stop.
#[tokio::test]
async fn requests_behind_stop_are_not_handed_out_once_the_stop_response_is_queued() {
    let (tunnel, mut incoming, mut manager) = tunnel_vs_raw(config(), 64 * 1024).await;
    manager
        .write(&frames(&[
            stop_request(rpc(7, 0)),
            get_peer_update(rpc(8, 0)),
            start_request("after stop"),
        ]))
        .await;
    let id = recv_stop(&mut incoming).await;
    until("all three frames read", || {
        tunnel.stats().frames_received == 3
    })
    .await;
    within("reply", tunnel.reply(id, stop_response(None, "stopped")))
        .await
        .expect("reply to Stop");
    // A handler goes straight back to its loop after answering Stop. It
    // must not be given the GetPeerUpdate or the Start read after the Stop.
    let next = within("recv after Stop", incoming.recv()).await;
    assert!(
        next.is_none(),
        "handed out {next:?} after the StopResponse was queued"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_response_that_could_not_be_queued_can_still_be_sent() {
    // §7.1 rule 4: the StopResponse comes within 5 s once the manager reads
    // again, even with frames waiting for the writer.
    let config = SpeakerConfig {
        queue_len: 1,
        ..config()
    };
    let (tunnel, mut incoming, mut manager) = tunnel_vs_raw(config, 64).await;
    // The manager stops reading: the writer blocks inside a big frame and
    // the one-slot queue fills up.
    within("big log", tunnel.send(log(None, &"x".repeat(128 * 1024))))
        .await
        .expect("big log");
    within("small log", tunnel.send(log(None, "small")))
        .await
        .expect("small log");
    manager.send(&stop_request(rpc(7, 0))).await;
    assert_eq!(recv_stop(&mut incoming).await, 7);
    // The handler answers; the queue stays full for a long time.
    let first = tokio::time::timeout(
        Duration::from_secs(120),
        tunnel.reply(7, stop_response(None, "stopped")),
    )
    .await;
    let queued = matches!(first, Ok(Ok(())));
    // The manager reads again. A handler whose reply failed tries again.
    let reading = async {
        let mut all = Vec::new();
        while let Some(payload) = manager.payload().await {
            all.push(decode_payload::<TunnelMessage>(payload).expect("decode"));
        }
        all
    };
    let retry = async {
        if !queued {
            let again = within("retry", tunnel.reply(7, stop_response(None, "stopped"))).await;
            assert!(
                again.is_ok(),
                "first attempt {first:?}, retry {again:?}: the StopResponse can never be sent"
            );
        }
    };
    let (all, ()) = tokio::join!(reading, retry);
    let last = all.last().expect("frames");
    assert_eq!(last.arm(), Some("stop"));
    assert_eq!(last.rpc, rpc(0, 7));
}

// ---------------------------------------------------------------------------
// 8. The manager is sealed after Stop (§7.2)
// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn manager_is_sealed_after_stop_but_receives_the_stop_response() {
    let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    answered_call(&manager, &mut tunnel, "before stop").await;
    let stop_call = {
        let manager = manager.clone();
        tokio::spawn(async move {
            within(
                "call_within",
                manager.call_within(stop_request(None), Duration::from_secs(30)),
            )
            .await
        })
    };
    let req: ManagerMessage = tunnel.msg().await;
    assert_eq!(req.arm(), Some("stop"));
    assert_eq!(request_id(&req), 2);

    assert!(matches!(
        within("send", manager.send(get_peer_update(None))).await,
        Err(SpeakerError::Sealed)
    ));
    assert!(matches!(
        within(
            "call_within",
            manager.call_within(start_request("x"), Duration::from_secs(1))
        )
        .await,
        Err(SpeakerError::Sealed)
    ));
    assert!(matches!(
        within("call", manager.call(stop_request(None))).await,
        Err(SpeakerError::Sealed)
    ));
    assert!(matches!(
        within("reply", manager.reply(4, network_settings_response(0))).await,
        Err(SpeakerError::Sealed)
    ));
    assert_eq!(manager.pending_calls(), 1, "only the Stop is pending");
    assert!(manager.close_reason().is_none());

    // The manager writes nothing more and keeps its write direction open
    // while it waits (§7.2 items 1 and 3). On the paused clock this bounded
    // read ends only when every task is idle, so it proves nothing arrived.
    let quiet = tokio::time::timeout(Duration::from_secs(1), tunnel.payload()).await;
    assert!(quiet.is_err(), "manager wrote {quiet:?} after Stop");

    // The tunnel answers and closes; the StopResponse reaches the caller.
    tunnel.send(&stop_response(rpc(0, 2), "stopped")).await;
    tunnel.shutdown_write().await;
    let reply = within("stop call", stop_call)
        .await
        .expect("join")
        .expect("the StopResponse");
    assert_eq!(reply.arm(), Some("stop"));
    assert_eq!(response_to(&reply), 2);
    assert_eq!(reply_text(&reply), "stopped");
    // Nothing was written after the Stop, then our side closed.
    tunnel.expect_eof().await;
    assert!(matches!(
        within("closed", manager.closed()).await,
        CloseReason::PeerClosed
    ));
    assert_eq!(manager.stats().frames_sent, 2);
}

#[tokio::test]
async fn a_one_way_stop_does_not_seal_the_manager() {
    // `send` strips rpc, so this is not a Stop request (§5.5 item 1).
    let (manager, _manager_in, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    within("send", manager.send(stop_request(rpc(1, 0))))
        .await
        .expect("one-way stop");
    let msg: ManagerMessage = tunnel.msg().await;
    assert_eq!(msg, stop_request(None));
    answered_call(&manager, &mut tunnel, "not sealed").await;
}

// ---------------------------------------------------------------------------
// 9. One-way messages carry no rpc field
// ---------------------------------------------------------------------------

#[tokio::test]
async fn one_way_messages_have_no_rpc_field_on_the_wire() {
    let (tunnel, _tunnel_in, mut manager) = tunnel_vs_raw(config(), 64 * 1024).await;
    let variants = [rpc(5, 0), rpc(0, 0), rpc(0, 9), None];
    for (i, rpc_field) in variants.iter().enumerate() {
        within("send", tunnel.send(log(*rpc_field, &format!("log {i}"))))
            .await
            .expect("send log");
    }
    // A StopResponse sent one-way is not a reply: not final either.
    within("send", tunnel.send(stop_response(rpc(0, 3), "not a reply")))
        .await
        .expect("one-way stop response");
    within("send", tunnel.send(log(None, "still open")))
        .await
        .expect("send after one-way stop response");

    for i in 0..variants.len() {
        let payload = manager.payload().await.expect("a log frame");
        let expected = log(None, &format!("log {i}")).encode_to_vec();
        assert_eq!(&payload[..], &expected[..], "log {i} on the wire");
        assert_eq!(
            top_level_fields(&payload),
            [2],
            "only the log arm, no field 1"
        );
        let msg: TunnelMessage = decode_payload(payload).expect("decode");
        assert_eq!(msg.rpc, None);
    }
    let payload = manager.payload().await.expect("stop response frame");
    assert_eq!(top_level_fields(&payload), [6]);
    let payload = manager.payload().await.expect("last log");
    assert_eq!(top_level_fields(&payload), [2]);
    assert!(tunnel.close_reason().is_none());

    // A request and a reply do carry it.
    within("reply", tunnel.reply(4, start_response(0, "r")))
        .await
        .expect("reply");
    let payload = manager.payload().await.expect("reply frame");
    assert_eq!(top_level_fields(&payload), [1, 5]);
    let reply: TunnelMessage = decode_payload(payload).expect("decode");
    assert_eq!(reply.rpc, rpc(0, 4));
    assert!(matches!(
        within("reply", tunnel.reply(0, start_response(0, "r"))).await,
        Err(SpeakerError::ZeroReplyId)
    ));
}

// ---------------------------------------------------------------------------
// 10. Sorting incoming messages
// ---------------------------------------------------------------------------

#[tokio::test]
async fn incoming_messages_are_classified() {
    // The raw tunnel puts its first frame in the same write as its header
    // (§3.3 item 1).
    let mut first = b"codervpn tunnel 1.2\n".to_vec();
    first.extend_from_slice(&frame(&log(None, "with the header")));
    let (ours, theirs) = duplex(64 * 1024);
    let (r, w) = split(ours);
    let (pr, pw) = split(theirs);
    let (connected, (mut tunnel, _)) = within("handshake", async {
        tokio::join!(
            Speaker::<Manager>::connect(r, w, config()),
            RawPeer::handshake(Box::new(pr), Box::new(pw), &first),
        )
    })
    .await;
    let (manager, mut incoming, _) = connected.expect("handshake");

    let mut wire = frames(&[
        network_settings_request(rpc(3, 0), 1400),
        log(None, "no rpc"),
        log(rpc(0, 0), "rpc with both ids 0"),
    ]);
    wire.extend_from_slice(&[0, 0, 0, 0]); // zero-length frame
    wire.extend_from_slice(&frame(&network_settings_request(rpc(0, 0), 1)));
    tunnel.write(&wire).await;

    let mut next = async || within("recv", incoming.recv()).await.expect("a message");
    assert_eq!(next().await, Inbound::OneWay(log(None, "with the header")));
    assert_eq!(
        next().await,
        Inbound::Request {
            id: 3,
            msg: network_settings_request(rpc(3, 0), 1400)
        }
    );
    assert_eq!(next().await, Inbound::OneWay(log(None, "no rpc")));
    assert_eq!(
        next().await,
        Inbound::OneWay(log(rpc(0, 0), "rpc with both ids 0"))
    );
    assert_eq!(next().await, Inbound::OneWay(TunnelMessage::default()));
    assert_eq!(
        next().await,
        Inbound::OneWay(network_settings_request(rpc(0, 0), 1))
    );

    let stats = manager.stats();
    assert_eq!(stats.empty_frames, 1);
    assert_eq!(stats.frames_received, 6);
    assert_eq!(stats.unmatched_responses, 0);
    assert!(manager.close_reason().is_none(), "the stream stays open");
    answered_call(&manager, &mut tunnel, "still open").await;
    // And the request can be answered.
    within("reply", manager.reply(3, network_settings_response(0)))
        .await
        .expect("reply");
    let reply: ManagerMessage = tunnel.msg().await;
    assert_eq!(reply, network_settings_response(3));
}

#[tokio::test]
async fn a_tunnel_stays_open_after_a_zero_length_frame() {
    let (tunnel, mut incoming, mut manager) = tunnel_vs_raw(config(), 64 * 1024).await;
    manager.write(&[0, 0, 0, 0]).await;
    manager.send(&get_peer_update(rpc(1, 0))).await;
    assert_eq!(
        within("recv", incoming.recv()).await,
        Some(Inbound::OneWay(ManagerMessage::default()))
    );
    assert_eq!(
        within("recv", incoming.recv()).await,
        Some(Inbound::Request {
            id: 1,
            msg: get_peer_update(rpc(1, 0))
        })
    );
    assert_eq!(tunnel.stats().empty_frames, 1);
    assert!(tunnel.close_reason().is_none());
}

/// Regression: at commit 30e1bec `empty_frames` counted every frame that
/// decoded to the default message (e.g. only unknown fields), not
/// zero-length frames.
#[tokio::test]
async fn empty_frames_counts_only_zero_length_frames() {
    let (manager, mut incoming, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    // Field 15, varint 1: unknown to TunnelMessage, ignored (§4.5 item 1).
    tunnel.write(&[0, 0, 0, 2, 0x78, 0x01]).await;
    assert_eq!(
        within("recv", incoming.recv()).await,
        Some(Inbound::OneWay(TunnelMessage::default()))
    );
    assert_eq!(manager.stats().frames_received, 1);
    assert_eq!(
        manager.stats().empty_frames,
        0,
        "a 2-byte frame is not a zero-length frame"
    );
}

// ---------------------------------------------------------------------------
// 11. Fatal input
// ---------------------------------------------------------------------------

/// Starts a call, feeds `bad` after the request, and returns how the call
/// and the stream ended. Checks that our side closes and writes nothing.
async fn fatal_input(bad: &[u8]) -> Vec<CloseReason> {
    let (manager, mut incoming, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    let call = {
        let manager = manager.clone();
        tokio::spawn(async move { manager.call(get_peer_update(None)).await })
    };
    let _req: ManagerMessage = tunnel.msg().await;
    tunnel.write(bad).await;
    let call_reason = assert_closed(within("call", call).await.expect("join"), "pending call");
    let closed = within("closed", manager.closed()).await;
    assert_eq!(manager.pending_calls(), 0);
    assert!(within("recv", incoming.recv()).await.is_none());
    let send_reason = assert_closed(
        within("send", manager.send(get_peer_update(None))).await,
        "send",
    );
    // No reply, then EOF: both directions closed (§4.3).
    tunnel.expect_eof().await;
    vec![call_reason, closed, send_reason]
}

#[tokio::test]
async fn an_oversized_length_closes_the_stream() {
    for reason in fatal_input(&[0xFF, 0xFF, 0xFF, 0xFF]).await {
        match reason {
            CloseReason::Receive(err) => assert!(
                matches!(*err, CodecError::TooLong { len: 0xFFFF_FFFF, max } if max == MAX_FRAME_LEN),
                "{err:?}"
            ),
            other => panic!("expected a receive error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn one_byte_over_the_limit_closes_the_stream() {
    let len = u32::try_from(MAX_FRAME_LEN + 1).expect("fits");
    for reason in fatal_input(&len.to_be_bytes()).await {
        assert!(
            matches!(&reason, CloseReason::Receive(err) if matches!(**err, CodecError::TooLong { .. })),
            "{reason:?}"
        );
    }
}

#[tokio::test]
async fn an_invalid_protobuf_payload_closes_the_stream() {
    let mut bad = vec![0, 0, 0, 10];
    bad.extend_from_slice(&[0; 10]);
    for reason in fatal_input(&bad).await {
        match reason {
            CloseReason::Receive(err) => assert!(
                matches!(
                    *err,
                    CodecError::Protobuf {
                        message: "vpn.TunnelMessage",
                        ..
                    }
                ),
                "{err:?}"
            ),
            other => panic!("expected a receive error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_truncated_frame_closes_the_stream() {
    let (manager, _incoming, mut tunnel) = manager_vs_raw(config(), 64 * 1024).await;
    let whole = frame(&log(None, "cut short"));
    tunnel.write(&whole[..whole.len() - 1]).await;
    tunnel.shutdown_write().await;
    match within("closed", manager.closed()).await {
        CloseReason::Receive(err) => {
            assert!(matches!(*err, CodecError::Truncated { .. }), "{err:?}");
        }
        other => panic!("expected a truncation error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// 12. Failed handshake
// ---------------------------------------------------------------------------

/// Our header reaches the peer in full, followed by EOF, and the peer can no
/// longer write to us (both directions closed, §3.7 item 3).
async fn assert_header_then_closed(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    expected: &str,
) {
    assert_eq!(read_line(reader).await, expected, "our full header");
    assert!(read_to_end(reader).await.is_empty(), "no frame, then EOF");
    let write = within("peer write after rejection", async {
        // A socket may accept one write before reporting the close.
        for _ in 0..64 {
            writer.write_all(&[0u8; 1024]).await?;
            writer.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    assert!(write.is_err(), "the read direction is closed as well");
}

#[tokio::test]
async fn a_historical_header_fails_with_e_role_and_closes() {
    let (ours, theirs) = duplex(1024);
    let (r, w) = split(ours);
    let (mut pr, mut pw) = split(theirs);
    let peer = async {
        pw.write_all(b"codervpn 1.0 tunnel\n")
            .await
            .expect("peer header");
    };
    let (result, ()) = within("connect", async {
        tokio::join!(Speaker::<Manager>::connect(r, w, config()), peer)
    })
    .await;
    match result {
        Err(err @ HeaderError::HistoricalHeader { .. }) => {
            assert_eq!(err.category(), Category::Role);
        }
        other => panic!("expected HistoricalHeader, got {:?}", other.map(|_| ())),
    }
    assert_header_then_closed(&mut pr, &mut pw, "codervpn manager 1.2\n").await;
}

#[tokio::test]
async fn a_historical_header_over_a_unix_socket_fails_and_closes() {
    let (ours, theirs) = tokio::net::UnixStream::pair().expect("socket pair");
    let (r, w) = ours.into_split();
    let (mut pr, mut pw) = theirs.into_split();
    let peer = async {
        pw.write_all(b"codervpn 1.0 manager\n")
            .await
            .expect("peer header");
    };
    let (result, ()) = within("connect", async {
        tokio::join!(Speaker::<Tunnel>::connect(r, w, config()), peer)
    })
    .await;
    match result {
        Err(err @ HeaderError::HistoricalHeader { .. }) => {
            assert_eq!(err.category(), Category::Role);
        }
        other => panic!("expected HistoricalHeader, got {:?}", other.map(|_| ())),
    }
    assert_header_then_closed(&mut pr, &mut pw, "codervpn tunnel 1.2\n").await;
}

#[tokio::test]
async fn a_rejected_header_over_os_pipes_still_gets_our_full_header() {
    // The peer's header arrives first; ours is still sent in full (§3.4
    // item 2) through a pipe the peer only reads afterwards.
    let (our_tx, mut their_rx) = tokio::net::unix::pipe::pipe().expect("pipe");
    let (mut their_tx, our_rx) = tokio::net::unix::pipe::pipe().expect("pipe");
    their_tx
        .write_all(b"codervpn tunnel 1.2\n")
        .await
        .expect("peer header");
    let result = within(
        "connect",
        // A tunnel expects `manager`: E-ROLE, unexpected role.
        Speaker::<Tunnel>::connect(our_rx, our_tx, config()),
    )
    .await;
    match result {
        Err(err @ HeaderError::UnexpectedRole { .. }) => {
            assert_eq!(err.category(), Category::Role);
        }
        other => panic!("expected UnexpectedRole, got {:?}", other.map(|_| ())),
    }
    assert_header_then_closed(&mut their_rx, &mut their_tx, "codervpn tunnel 1.2\n").await;
}

// ---------------------------------------------------------------------------
// 13. close()
// ---------------------------------------------------------------------------

#[tokio::test]
async fn close_flushes_queued_frames_then_eof_and_fails_pending_calls() {
    // A 64-byte pipe: the frames are still queued or buffered when close()
    // is called, because the raw manager has not read anything yet.
    let (tunnel, mut incoming, mut manager) = tunnel_vs_raw(config(), 64).await;
    for i in 0..20 {
        within("send", tunnel.send(log(None, &format!("queued log {i}"))))
            .await
            .expect("queue a log");
    }
    let call = {
        let tunnel = tunnel.clone();
        tokio::spawn(async move { tunnel.call(network_settings_request(None, 1500)).await })
    };
    until("the call is pending", || tunnel.pending_calls() == 1).await;
    let closing = {
        let tunnel = tunnel.clone();
        tokio::spawn(async move { tunnel.close().await })
    };
    for i in 0..20 {
        let msg: TunnelMessage = manager.msg().await;
        assert_eq!(msg, log(None, &format!("queued log {i}")));
    }
    let req: TunnelMessage = manager.msg().await;
    assert_eq!(req, network_settings_request(rpc(1, 0), 1500));
    manager.expect_eof().await;

    within("close()", closing).await.expect("join");
    assert!(matches!(
        assert_closed(within("call", call).await.expect("join"), "pending call"),
        CloseReason::Local
    ));
    assert!(matches!(tunnel.close_reason(), Some(CloseReason::Local)));
    assert_eq!(tunnel.pending_calls(), 0);
    assert!(matches!(
        assert_closed(
            within("send", tunnel.send(log(None, "late"))).await,
            "send after close"
        ),
        CloseReason::Local
    ));
    assert!(within("recv", incoming.recv()).await.is_none());
    assert_eq!(tunnel.stats().frames_sent, 21);
    // Closing twice is harmless.
    within("second close", tunnel.close()).await;
}

// ---------------------------------------------------------------------------
// Every wait has a bound (SpeakerConfig docs)
// ---------------------------------------------------------------------------

/// Regression: at commit 30e1bec the limit of `call_within` started only
/// once the request was queued, so with a full outgoing queue (peer not
/// reading) `call_within(msg, 50ms)` never returned.
#[tokio::test(start_paused = true)]
async fn call_within_is_bounded_even_when_the_peer_stops_reading() {
    let config = SpeakerConfig {
        queue_len: 1,
        ..config()
    };
    // The raw tunnel never reads after the handshake.
    let (manager, _incoming, _tunnel) = manager_vs_raw(config, 64).await;
    // Larger than the writer's buffer: the writer blocks inside this frame.
    let big = start_request(&"x".repeat(128 * 1024));
    within("send", manager.send(big))
        .await
        .expect("first send is taken by the writer");
    // Fills the one-slot queue once the writer holds the first frame.
    within("second send", manager.send(get_peer_update(None)))
        .await
        .expect("second send is queued");
    let limit = Duration::from_millis(50);
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        manager.call_within(get_peer_update(None), limit),
    )
    .await;
    assert!(
        matches!(result, Ok(Err(SpeakerError::TimedOut(d))) if d == limit),
        "call_within(50ms) did not return within 5 s: {result:?}"
    );
}
