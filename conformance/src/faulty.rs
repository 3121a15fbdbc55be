//! A deliberately broken tunnel for testing the suite itself: it runs a
//! real tunnel (the built-in one) as a child on stdin/stdout and relays
//! between it and the harness, breaking exactly one rule on the way. Every
//! case must fail against the fault that breaks its rule (tests/faults.rs).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use codervpn_codec::FrameCodec;
use codervpn_proto::{Log, Rpc, TunnelMessage, tunnel_message};
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
}

impl Fault {
    pub const ALL: [Fault; 14] = [
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
    ];

    /// The kebab-case name used on the command line.
    pub fn name(self) -> String {
        let debug = format!("{self:?}");
        let mut out = String::new();
        for (i, c) in debug.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
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
    let down = downstream(fault, outer_r, inner_w);
    let up = upstream(fault, inner_r, outer_w);
    tokio::select! {
        () = down => {}
        () = up => {}
    }
}

async fn read_line(reader: &mut Reader) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        if reader.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        line.push(byte[0]);
        if byte[0] == b'\n' {
            return Some(line);
        }
    }
    Some(line)
}

/// Manager -> tunnel.
async fn downstream(fault: Fault, mut from: Reader, mut to: Writer) {
    let Some(header) = read_line(&mut from).await else {
        return;
    };
    let header = if fault == Fault::AcceptAnyHeader {
        b"codervpn manager 1.2\n".to_vec()
    } else {
        header
    };
    if to.write_all(&header).await.is_err() {
        return;
    }
    let mut buf = BytesMut::new();
    let mut codec = FrameCodec::default();
    loop {
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if frame.is_empty() && fault == Fault::CloseOnEmptyFrame {
                        return;
                    }
                    let mut out = BytesMut::new();
                    if codec.encode(&frame[..], &mut out).is_err()
                        || to.write_all(&out).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    // Let the real tunnel see the bad bytes and react.
                    let _ = to.write_all(&buf).await;
                    buf.clear();
                    break;
                }
            }
        }
    }
}

/// Tunnel -> manager.
async fn upstream(fault: Fault, mut from: Reader, mut to: Writer) {
    let Some(header) = read_line(&mut from).await else {
        return;
    };
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
