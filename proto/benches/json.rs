//! proto3 JSON mapping throughput: `cargo bench -p codervpn-proto --bench json`.
//!
//! Transcripts and `codervpn decode`/`encode` go through the JSON mapping
//! (prost-reflect), so its cost next to the binary codec matters for large
//! messages. Each bench maps the same 1,000-agent `PeerUpdate` reply as the
//! codec bench, and throughput is the size of its JSON text:
//!
//! * `to_json_text`: message to JSON text (`to_json`, then `serde_json::to_vec`).
//! * `payload_to_json`: protobuf payload to a JSON value.
//! * `json_to_payload`: JSON value to a protobuf payload.
//! * `from_json`: JSON value to the message (`json_to_payload`, then prost).
//!
//! Outputs are dropped outside the timed section.

use std::hint::black_box;

use codervpn_proto::TunnelMessage;
use codervpn_proto::json::{from_json, json_to_payload, payload_to_json, to_json};
use codervpn_proto::sample::peer_update_reply;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;

fn bench_json(c: &mut Criterion) {
    let msg = peer_update_reply(1000, 100);
    let payload = msg.encode_to_vec();
    let value = to_json(&msg);
    let text = serde_json::to_vec(&value).expect("JSON value serializes");
    assert_eq!(
        from_json::<TunnelMessage>(&value).expect("JSON maps back"),
        msg
    );

    let mut group = c.benchmark_group("json_peer_update_1000_agents");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(20);
    group.bench_function("to_json_text", |b| {
        b.iter_with_large_drop(|| {
            serde_json::to_vec(&to_json(black_box(&msg))).expect("JSON value serializes")
        });
    });
    group.bench_function("payload_to_json", |b| {
        b.iter_with_large_drop(|| {
            payload_to_json::<TunnelMessage>(black_box(&payload)).expect("payload maps")
        });
    });
    group.bench_function("json_to_payload", |b| {
        b.iter_with_large_drop(|| {
            json_to_payload::<TunnelMessage>(black_box(&value)).expect("JSON maps")
        });
    });
    group.bench_function("from_json", |b| {
        b.iter_with_large_drop(|| {
            from_json::<TunnelMessage>(black_box(&value)).expect("JSON maps")
        });
    });
    group.finish();
}

criterion_group!(benches, bench_json);
criterion_main!(benches);
