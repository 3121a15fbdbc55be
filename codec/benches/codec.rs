//! Codec throughput: `cargo bench -p codervpn-codec --bench codec`.
//!
//! The decoder should run close to prost's own decode speed and never copy a
//! payload twice: [`FrameCodec`](codervpn_codec::FrameCodec) splits each
//! payload off the read buffer without copying, and prost decodes `bytes`
//! fields by sharing that buffer. The benches check both claims:
//!
//! * `small_frames`: 10,000 tiny RPC frames per iteration, i.e. the fixed
//!   per-frame cost (frames/s). `whole` decodes a buffer already holding the
//!   stream; `chunked_4k` appends it 4 KiB at a time, as socket reads do, and
//!   decodes what is complete, so frames straddle reads (this variant also
//!   pays the copy into the read buffer).
//! * `peer_update`: a 1,000-agent `PeerUpdate` reply (bytes/s of payload).
//!   `codec_decode` against `prost_decode` of the same payload from a `Bytes`
//!   is the framing overhead; `codec_encode` (into a reused buffer) against
//!   `prost_encode_to_vec` the same for encoding. Before measuring, the bench
//!   asserts that decoded agent ids point into the frame buffer (no copy).
//!
//! Decoded messages are dropped outside the timed section in both decode
//! benches, so the codec/prost ratio compares like with like.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use codervpn_codec::frame::encode_frame;
use codervpn_codec::{MAX_FRAME_LEN, MessageCodec};
use codervpn_proto::sample::peer_update_reply;
use codervpn_proto::{
    GetPeerUpdate, ManagerMessage, Rpc, StopResponse, TunnelMessage, manager_message,
    tunnel_message,
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use tokio_util::codec::{Decoder, Encoder as _};

const SMALL_FRAMES: u64 = 10_000;
const CHUNK: usize = 4 * 1024;

/// `SMALL_FRAMES` frames of `make(n)` back to back.
fn stream<M: prost::Message>(make: impl Fn(u64) -> M) -> Bytes {
    let mut buf = BytesMut::new();
    for n in 1..=SMALL_FRAMES {
        buf.extend_from_slice(&encode_frame(&make(n), MAX_FRAME_LEN).expect("frame encodes"));
    }
    buf.freeze()
}

/// Decodes every complete frame in `buf`; returns how many.
fn drain<D: Decoder<Error: std::fmt::Debug>>(codec: &mut D, buf: &mut BytesMut) -> u64 {
    let mut n = 0;
    while let Some(msg) = codec.decode(buf).expect("frame decodes") {
        black_box(msg);
        n += 1;
    }
    n
}

fn small_frames<D: Decoder<Error: std::fmt::Debug>>(
    c: &mut Criterion,
    name: &str,
    stream: &Bytes,
    codec: impl Fn() -> D,
) {
    let mut group = c.benchmark_group(format!("small_frames/{name}"));
    group.throughput(Throughput::Elements(SMALL_FRAMES));
    group.bench_function("whole", |b| {
        b.iter_batched(
            || BytesMut::from(&stream[..]),
            |mut buf| assert_eq!(drain(&mut codec(), &mut buf), SMALL_FRAMES),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("chunked_4k", |b| {
        b.iter(|| {
            let (mut codec, mut buf, mut n) = (codec(), BytesMut::with_capacity(2 * CHUNK), 0);
            for chunk in stream.chunks(CHUNK) {
                buf.extend_from_slice(chunk);
                n += drain(&mut codec, &mut buf);
            }
            assert_eq!(n, SMALL_FRAMES);
        });
    });
    group.finish();
}

fn bench_small_frames(c: &mut Criterion) {
    // Manager -> tunnel: get_peer_update requests, decoded on the tunnel side.
    let requests = stream(|n| ManagerMessage {
        rpc: Some(Rpc {
            msg_id: n,
            response_to: 0,
        }),
        msg: Some(manager_message::Msg::GetPeerUpdate(GetPeerUpdate {})),
    });
    small_frames(c, "manager_get_peer_update", &requests, || {
        MessageCodec::<ManagerMessage, TunnelMessage>::default()
    });
    // Tunnel -> manager: stop replies, decoded on the manager side.
    let replies = stream(|n| TunnelMessage {
        rpc: Some(Rpc {
            msg_id: 0,
            response_to: n,
        }),
        msg: Some(tunnel_message::Msg::Stop(StopResponse {
            success: true,
            error_message: String::new(),
        })),
    });
    small_frames(c, "tunnel_stop", &replies, || {
        MessageCodec::<TunnelMessage, ManagerMessage>::default()
    });
}

fn bench_peer_update(c: &mut Criterion) {
    let msg = peer_update_reply(1000, 100);
    let payload = Bytes::from(msg.encode_to_vec());
    let frame = encode_frame(&msg, MAX_FRAME_LEN).expect("frame encodes");

    // Zero copy: agent ids share the buffer the frame was read into.
    let mut buf = BytesMut::from(&frame[..]);
    let read_buffer = buf.as_ptr_range();
    let decoded = MessageCodec::<TunnelMessage, ManagerMessage>::default()
        .decode(&mut buf)
        .expect("frame decodes")
        .expect("frame is complete");
    assert_eq!(decoded, msg);
    let Some(tunnel_message::Msg::PeerUpdate(update)) = &decoded.msg else {
        unreachable!("decoded as a peer update")
    };
    assert!(read_buffer.contains(&update.upserted_agents[0].id.as_ptr()));

    let mut group = c.benchmark_group("peer_update_1000_agents");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("codec_decode", |b| {
        let mut codec = MessageCodec::<TunnelMessage, ManagerMessage>::default();
        b.iter_batched(
            || BytesMut::from(&frame[..]),
            |mut buf| codec.decode(&mut buf).expect("frame decodes"),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("prost_decode", |b| {
        b.iter_batched(
            || payload.clone(),
            |payload| TunnelMessage::decode(payload).expect("payload decodes"),
            BatchSize::LargeInput,
        );
    });
    group.bench_function("codec_encode", |b| {
        let mut codec = MessageCodec::<ManagerMessage, TunnelMessage>::default();
        let mut dst = BytesMut::with_capacity(frame.len());
        b.iter(|| {
            dst.clear();
            codec
                .encode(black_box(&msg), &mut dst)
                .expect("message encodes");
            black_box(&dst);
        });
    });
    group.bench_function("prost_encode_to_vec", |b| {
        b.iter(|| black_box(&msg).encode_to_vec());
    });
    group.finish();
}

criterion_group!(benches, bench_small_frames, bench_peer_update);
criterion_main!(benches);
