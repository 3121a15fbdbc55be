//! Entry points for the fuzz targets (`fuzz/`, issue 7) and for the stable
//! replay of their corpora (`tests/fuzz_corpus.rs`).
//!
//! A conformance tool is run against broken implementations by design, so
//! nothing that parses peer, file or packet input may panic, hang or grow
//! without bound. Each function here takes arbitrary bytes, drives one
//! parser or one speaker with them, and checks with `assert!` the
//! invariants that hold for every input (round trips, caps, chunking
//! independence, error categories). They live in the workspace rather than
//! in `fuzz/` so that `cargo test` on the stable toolchain replays every
//! corpus and crash file through exactly the code the fuzzers ran.
//!
//! A panic here is a finding: either in the code under test or in the
//! invariant, and both are worth a regression file.

mod control;
mod frames;
mod handshake;
mod packets;
mod speaker;
mod transcript;
mod tunnel;

pub use control::control_updates;
pub use frames::frame_decoder;
pub use handshake::handshake;
pub use packets::{dns, packet};
pub use speaker::{speaker_client, speaker_manager, speaker_service, speaker_tunnel};
pub use transcript::transcript;
pub use tunnel::tunnel_requests;

/// One entry point: arbitrary bytes in, a panic on a finding.
pub type Entry = fn(&[u8]);

/// Every target by its `fuzz/fuzz_targets/<name>.rs` name, for the replay
/// test.
pub const TARGETS: &[(&str, Entry)] = &[
    ("frame_decoder", frame_decoder),
    ("handshake", handshake),
    ("transcript", transcript),
    ("speaker_tunnel", speaker_tunnel),
    ("speaker_manager", speaker_manager),
    ("speaker_client", speaker_client),
    ("speaker_service", speaker_service),
    ("tunnel_requests", tunnel_requests),
    ("control_updates", control_updates),
    ("packet", packet),
    ("dns", dns),
];

/// Splits a leading control byte off the input: targets derive structure
/// (chunk sizes, switches) from it so that the fuzzer can explore it along
/// with the data.
fn control(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, data),
    }
}

/// Chunk lengths for feeding `len` bytes, cycling through `sizes` (each
/// 1..=256), so every chunking of a stream is reachable; no sizes: one
/// chunk.
fn chunks(len: usize, sizes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < len {
        let size = sizes
            .get(i % sizes.len().max(1))
            .map_or(len, |&s| usize::from(s) + 1);
        let end = (at + size).min(len);
        out.push(at..end);
        at = end;
        i += 1;
    }
    out
}

/// A single-threaded runtime with timers and I/O: one per input, so that
/// nothing a previous input spawned survives into the next.
fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        // Out of file descriptors or memory: not a finding about the input.
        Err(err) => panic!("cannot build a tokio runtime: {err}"),
    }
}
