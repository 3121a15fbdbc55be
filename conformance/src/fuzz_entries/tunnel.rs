//! `tunnel_requests`: the reference tunnel's request loop
//! ([`codervpn_reference_tunnel::serve`]) after a valid handshake, fed
//! arbitrary frames. Start requests are checked by the pure §6.2
//! validation first, then sent with their `coder_url` emptied so that the
//! Start fails at once: no network, no packet device from a fuzzed fd.
//! Invariant: the tunnel always ends, by Stop or by the stream's end,
//! within its bounds; every reply it writes is a well-framed
//! TunnelMessage.

use std::time::Duration;

use bytes::BytesMut;
use codervpn_codec::frame::{CodecError, FrameCodec, decode_payload};
use codervpn_codec::{MessageCodec, VersionList};
use codervpn_proto::{ManagerMessage, TunnelMessage, manager_message::Msg};
use codervpn_reference_tunnel::{TunnelConfig, serve, start::validate};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

use super::runtime;

const BOUND: Duration = Duration::from_secs(10);

/// The input as frames, each Start rewritten; bytes after the last whole
/// frame are passed on as they are (a truncated or oversized tail).
fn manager_stream(data: &[u8]) -> Vec<u8> {
    let mut out = b"codervpn manager 1.2\n".to_vec();
    let mut buf = BytesMut::from(data);
    let mut frames = FrameCodec::default();
    let mut dst = BytesMut::new();
    while let Ok(Some(payload)) = frames.decode(&mut buf) {
        match decode_payload::<ManagerMessage>(payload.clone()) {
            Ok(mut msg) => {
                if let Some(Msg::Start(start)) = &mut msg.msg {
                    let _ = validate(start);
                    start.coder_url.clear();
                    start.tunnel_file_descriptor = 0;
                }
                let _ = frames.encode(&msg.encode_to_vec()[..], &mut dst);
            }
            Err(_) => {
                let _ = frames.encode(&payload[..], &mut dst);
            }
        }
    }
    out.extend_from_slice(&dst);
    out.extend_from_slice(&buf);
    out
}

/// Control-free: the whole input is the manager's frame stream.
pub fn tunnel_requests(data: &[u8]) {
    let stream = manager_stream(data);
    let ended = runtime().block_on(async { tokio::time::timeout(BOUND, run(stream)).await });
    assert!(ended.is_ok(), "the reference tunnel did not end");
}

async fn run(stream: Vec<u8>) {
    let (tunnel_side, manager_side) = tokio::io::duplex(16 * 1024);
    let (tunnel_read, tunnel_write) = tokio::io::split(tunnel_side);
    let (mut manager_read, mut manager_write) = tokio::io::split(manager_side);
    tokio::spawn(async move {
        if manager_write.write_all(&stream).await.is_ok() {
            let _ = manager_write.shutdown().await;
        }
    });
    let reader = tokio::spawn(async move {
        let mut received = Vec::new();
        let _ = manager_read.read_to_end(&mut received).await;
        received
    });
    let config = TunnelConfig {
        versions: VersionList::default(),
        handshake_timeout: BOUND / 2,
        start_timeout: Duration::from_millis(500),
        ..TunnelConfig::default()
    };
    let served = serve(tunnel_read, tunnel_write, config, None).await;
    assert!(served.is_ok(), "our handshake is valid: {served:?}");
    let Ok(received) = reader.await else {
        return;
    };
    check_replies(&received);
}

/// The tunnel's side: its header, then TunnelMessage frames. The last one
/// may be cut short: a fatal frame from the manager ends the stream at
/// once, even in the middle of a write (§4.3).
fn check_replies(received: &[u8]) {
    let header = b"codervpn tunnel 1.2\n";
    assert!(received.starts_with(header), "tunnel header");
    let mut buf = BytesMut::from(&received[header.len()..]);
    let mut codec = MessageCodec::<TunnelMessage, TunnelMessage>::default();
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) | Err(CodecError::Truncated { .. }) => break,
            Err(err) => panic!("the tunnel wrote a bad frame: {err}"),
        }
    }
}
