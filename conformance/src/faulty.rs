//! A deliberately broken tunnel for testing the suite itself: it runs a
//! real tunnel (the built-in one) as a child on stdin/stdout and relays
//! between it and the harness, breaking exactly one rule on the way. Every
//! case must fail against the fault that breaks its rule (tests/faults.rs).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codervpn_codec::FrameCodec;
use codervpn_proto::{Log, ManagerMessage, Rpc, TunnelMessage, tunnel_message};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

/// One broken rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The tunnel's header names the wrong role (§3.1).
    WrongRole,
    /// The tunnel's header has an incompatible version (§3.6).
    WrongVersion,
    /// Every manager header is accepted, bad ones included (§3.5, §3.7).
    AcceptAnyHeader,
    /// A Log frame follows the StopResponse (§7.1 rule 2).
    FrameAfterStop,
    /// The stream stays open after the StopResponse (§7.1 rule 2).
    NoEofAfterStop,
    /// The StopResponse comes 6 s late (§7.1 rule 4).
    SlowStop,
    /// Arm-less replies to unknown requests are not sent (§5.5).
    DropArmlessReplies,
    /// One-way messages carry `rpc{}` (§5.7 item 2).
    RpcOnOneWay,
    /// Replies carry the wrong `response_to` (§5.4 item 1).
    ShiftResponseTo,
    /// PeerUpdate ids are UUID text, not 16 bytes (§6.7).
    TextIds,
    /// FQDNs lack the trailing dot (§6.7).
    NoTrailingDot,
    /// Replies to GetPeerUpdate have no peer_update arm (§6.6 item 1).
    ArmlessPeerUpdate,
    /// A zero-length frame from the manager closes the stream (§4.3).
    CloseOnEmptyFrame,
    /// StartResponse is never sent (§6.2 rule 1).
    DropStartResponse,
    /// Bad frames from the manager are skipped instead of ending the
    /// stream (§4.2 item 1, §4.3).
    SurviveBadInput,
    /// The manager's EOF never reaches the tunnel (§2.1 item 3, §7.4 item 2).
    IgnoreEof,
    /// Each read is taken as whole frames; a frame split across reads is
    /// lost (§2.1 item 1, §3.3 item 2).
    WholeReads,
    /// The header is read until LF with no limit and no time bound (§3.3
    /// item 3, §3.8).
    UnboundedHeader,
    /// The header is read in bulk and the rest of that read is dropped
    /// (§3.3 item 1).
    DropBytesAfterHeader,
    /// Headers over 200 bytes are refused (§3.3 item 3).
    ShortHeaderLimit,
    /// A frame of exactly MaxLength is refused (§4.2).
    OffByOneCap,
    /// One-way manager messages and `msg_id` 0 are treated as requests
    /// (§5.5 items 1 and 2).
    AnswerOneWay,
    /// Legal but non-canonical encodings (unknown fields, field order,
    /// repeated fields) end the stream (§1.5 item 2, §4.5 item 1).
    RejectNoncanonical,
}

impl Fault {
    pub const ALL: [Fault; 23] = [
        Fault::WrongRole,
        Fault::WrongVersion,
        Fault::AcceptAnyHeader,
        Fault::FrameAfterStop,
        Fault::NoEofAfterStop,
        Fault::SlowStop,
        Fault::DropArmlessReplies,
        Fault::RpcOnOneWay,
        Fault::ShiftResponseTo,
        Fault::TextIds,
        Fault::NoTrailingDot,
        Fault::ArmlessPeerUpdate,
        Fault::CloseOnEmptyFrame,
        Fault::DropStartResponse,
        Fault::SurviveBadInput,
        Fault::IgnoreEof,
        Fault::WholeReads,
        Fault::UnboundedHeader,
        Fault::DropBytesAfterHeader,
        Fault::ShortHeaderLimit,
        Fault::OffByOneCap,
        Fault::AnswerOneWay,
        Fault::RejectNoncanonical,
    ];

    /// The kebab-case name used on the command line.
    pub fn name(self) -> String {
        crate::kebab_case(&format!("{self:?}"))
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Relays between the harness (`outer`) and the real tunnel (`inner`),
/// applying `fault`, until either side ends.
pub async fn relay(fault: Fault, outer: (Reader, Writer), inner: (Reader, Writer)) {
    let (outer_r, outer_w) = outer;
    let (inner_r, inner_w) = inner;
    // The manager's EOF reaches the tunnel (its stdin closes); the relay
    // ends when the tunnel's side does.
    let down = tokio::spawn(downstream(fault, outer_r, inner_w));
    upstream(fault, inner_r, outer_w).await;
    down.abort();
}

/// The header line, or what came of it before EOF (`complete` false).
async fn read_line(reader: &mut Reader) -> (Vec<u8>, bool) {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        match reader.read(&mut byte).await {
            Ok(1) => line.push(byte[0]),
            _ => return (line, false),
        }
        if byte[0] == b'\n' {
            return (line, true);
        }
    }
    (line, true)
}

/// Reads the manager's header the way `fault` says a broken tunnel would;
/// `None` ends the relay.
async fn header_from_manager(fault: Fault, from: &mut Reader) -> Option<(Vec<u8>, bool)> {
    match fault {
        Fault::UnboundedHeader => {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            loop {
                match from.read(&mut byte).await {
                    Ok(1) => line.push(byte[0]),
                    _ => return Some((line, false)),
                }
                if byte[0] == b'\n' {
                    return Some((line, true));
                }
            }
        }
        Fault::WholeReads | Fault::DropBytesAfterHeader => {
            let mut chunk = vec![0u8; 4096];
            let n = from.read(&mut chunk).await.ok()?;
            let lf = chunk[..n].iter().position(|&b| b == b'\n')?;
            chunk.truncate(lf + 1);
            Some((chunk, true))
        }
        _ => Some(read_line(from).await),
    }
}

/// Manager -> tunnel.
async fn downstream(fault: Fault, mut from: Reader, mut to: Writer) {
    let Some((header, complete)) = header_from_manager(fault, &mut from).await else {
        return;
    };
    if fault == Fault::ShortHeaderLimit && header.len() > 200 {
        return;
    }
    let header = if fault == Fault::AcceptAnyHeader && complete {
        b"codervpn manager 1.2\n".to_vec()
    } else {
        header
    };
    if to.write_all(&header).await.is_err() {
        return;
    }
    if !complete {
        return park(fault).await;
    }
    let mut buf = BytesMut::new();
    let cap = if fault == Fault::OffByOneCap {
        codervpn_codec::MAX_FRAME_LEN - 1
    } else {
        codervpn_codec::MAX_FRAME_LEN
    };
    let mut codec = FrameCodec::new(cap);
    let mut invented = 9_000;
    loop {
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return park(fault).await,
            Ok(_) => {}
        }
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) if fault == Fault::SurviveBadInput => {
                    buf.clear();
                    codec = FrameCodec::new(cap);
                    break;
                }
                Err(_) if fault == Fault::OffByOneCap => return,
                Err(_) => {
                    // Let the real tunnel see the bad bytes and react.
                    let _ = to.write_all(&buf).await;
                    buf.clear();
                    break;
                }
            };
            let decoded = ManagerMessage::decode(frame.clone());
            let frame = match (fault, decoded) {
                (Fault::CloseOnEmptyFrame, _) if frame.is_empty() => return,
                (Fault::SurviveBadInput, Err(_)) => continue,
                (Fault::RejectNoncanonical, Ok(msg)) if msg.encode_to_vec() != frame[..] => return,
                (Fault::AnswerOneWay, Ok(mut msg))
                    if msg
                        .rpc
                        .as_ref()
                        .is_none_or(|r| r.msg_id == 0 && r.response_to == 0) =>
                {
                    invented += 1;
                    msg.rpc = Some(Rpc {
                        msg_id: invented,
                        response_to: 0,
                    });
                    Bytes::from(msg.encode_to_vec())
                }
                _ => frame,
            };
            let mut out = BytesMut::new();
            if codec.encode(&frame[..], &mut out).is_err() || to.write_all(&out).await.is_err() {
                return;
            }
        }
        if fault == Fault::WholeReads {
            // Whatever did not form whole frames in this read is lost.
            buf.clear();
            codec = FrameCodec::new(cap);
        }
    }
}

/// After the manager's EOF: a tunnel that ignores it keeps its side open.
async fn park(fault: Fault) {
    if fault == Fault::IgnoreEof {
        std::future::pending::<()>().await;
    }
}

/// Tunnel -> manager.
async fn upstream(fault: Fault, mut from: Reader, mut to: Writer) {
    let (header, complete) = read_line(&mut from).await;
    if !complete {
        let _ = to.write_all(&header).await;
        return;
    }
    let header: &[u8] = match fault {
        Fault::WrongRole => b"codervpn manager 1.2\n",
        Fault::WrongVersion => b"codervpn tunnel 9.0\n",
        _ => &header,
    };
    if to.write_all(header).await.is_err() {
        return;
    }
    let mut buf = BytesMut::new();
    let mut codec = FrameCodec::default();
    loop {
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            let Ok(msg) = TunnelMessage::decode(frame.clone()) else {
                return;
            };
            let is_stop = matches!(msg.msg, Some(tunnel_message::Msg::Stop(_)));
            if is_stop && fault == Fault::SlowStop {
                tokio::time::sleep(Duration::from_secs(6)).await;
            }
            for out in rewrite(fault, msg, frame) {
                let mut bytes = BytesMut::new();
                if codec.encode(&out[..], &mut bytes).is_err()
                    || to.write_all(&bytes).await.is_err()
                {
                    return;
                }
            }
            if is_stop && fault == Fault::NoEofAfterStop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// The payloads to send in place of one tunnel frame.
fn rewrite(fault: Fault, mut msg: TunnelMessage, original: Bytes) -> Vec<Vec<u8>> {
    let reply_to = msg.rpc.as_ref().map_or(0, |r| r.response_to);
    match fault {
        Fault::FrameAfterStop if matches!(msg.msg, Some(tunnel_message::Msg::Stop(_))) => {
            let log = TunnelMessage {
                rpc: None,
                msg: Some(tunnel_message::Msg::Log(Log {
                    message: "after stop".into(),
                    ..Log::default()
                })),
            };
            vec![original.to_vec(), log.encode_to_vec()]
        }
        Fault::DropArmlessReplies if reply_to != 0 && msg.msg.is_none() => vec![],
        Fault::DropStartResponse if matches!(msg.msg, Some(tunnel_message::Msg::Start(_))) => {
            vec![]
        }
        Fault::RpcOnOneWay if msg.rpc.is_none() => {
            msg.rpc = Some(Rpc::default());
            // prost leaves out an all-default sub-message's fields but
            // keeps its presence: `0a 00` goes on the wire.
            vec![msg.encode_to_vec()]
        }
        Fault::ShiftResponseTo if reply_to != 0 => {
            msg.rpc = Some(Rpc {
                msg_id: 0,
                response_to: reply_to + 1000,
            });
            vec![msg.encode_to_vec()]
        }
        Fault::ArmlessPeerUpdate
            if reply_to != 0 && matches!(msg.msg, Some(tunnel_message::Msg::PeerUpdate(_))) =>
        {
            msg.msg = None;
            vec![msg.encode_to_vec()]
        }
        Fault::TextIds | Fault::NoTrailingDot => {
            if let Some(tunnel_message::Msg::PeerUpdate(update)) = &mut msg.msg {
                for agent in update
                    .upserted_agents
                    .iter_mut()
                    .chain(update.deleted_agents.iter_mut())
                {
                    if fault == Fault::TextIds {
                        agent.id = Bytes::from(uuid_text(&agent.id));
                    } else {
                        for name in &mut agent.fqdn {
                            name.truncate(name.trim_end_matches('.').len());
                        }
                    }
                }
                for ws in update.upserted_workspaces.iter_mut() {
                    if fault == Fault::TextIds {
                        ws.id = Bytes::from(uuid_text(&ws.id));
                    }
                }
            }
            vec![msg.encode_to_vec()]
        }
        _ => vec![original.to_vec()],
    }
}

/// The UUID's 36-character text, the mistake §6.7 rules out.
fn uuid_text(bytes: &[u8]) -> Vec<u8> {
    codervpn_proto::ids::uuid_from_wire(bytes)
        .map_or_else(|_| "not-a-uuid".into(), |u| u.to_string())
        .into_bytes()
}
