//! `speaker_<role>`: a [`Speaker`] in one role, its peer played by the
//! fuzzer's bytes over an in-memory duplex stream. Invariants: the speaker
//! always ends (handshake refused, peer EOF or a fatal frame) within its
//! bounds, a refused handshake has a §3.5 category, an accepted one a
//! version both sides list, and it never counts more frames than the input
//! could hold.

use std::time::Duration;

use codervpn_codec::handshake::HeaderError;
use codervpn_codec::{
    Client, Inbound, Manager, Service, Side, Speaker, SpeakerConfig, Tunnel, VersionList,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{control, runtime};

/// Wall-clock bound on one input. Every wait inside is bounded far below
/// it; reaching it means a wait is not.
const BOUND: Duration = Duration::from_secs(10);
/// The bounds the speaker gets: short, since the peer is in memory.
const SHORT: Duration = Duration::from_millis(500);

pub fn speaker_tunnel(data: &[u8]) {
    speak::<Tunnel>(data);
}

pub fn speaker_manager(data: &[u8]) {
    speak::<Manager>(data);
}

pub fn speaker_client(data: &[u8]) {
    speak::<Client>(data);
}

pub fn speaker_service(data: &[u8]) {
    speak::<Service>(data);
}

/// Control byte: bit 0 prepends the peer's valid header (so the fuzzer
/// spends its time on frames), bit 1 makes one outgoing call first, bits
/// 2-7 the peer's write size.
fn speak<S: Side>(data: &[u8]) {
    let (ctl, rest) = control(data);
    let mut peer = Vec::new();
    if ctl & 1 != 0 {
        peer.extend_from_slice(format!("codervpn {} 1.2\n", S::ROLE.peer()).as_bytes());
    }
    peer.extend_from_slice(rest);
    let write_size = usize::from(ctl >> 2) * 16 + 1;
    let call = ctl & 2 != 0;
    let ended = runtime().block_on(async {
        tokio::time::timeout(BOUND, session::<S>(peer, write_size, call)).await
    });
    assert!(ended.is_ok(), "the {} speaker did not end", S::ROLE);
}

async fn session<S: Side>(peer: Vec<u8>, write_size: usize, call: bool) {
    let (ours, theirs) = tokio::io::duplex(16 * 1024);
    let (our_read, our_write) = tokio::io::split(ours);
    let (mut their_read, mut their_write) = tokio::io::split(theirs);
    let input_len = peer.len();
    // The peer writes its bytes, then closes; and reads whatever we say.
    tokio::spawn(async move {
        for piece in peer.chunks(write_size) {
            if their_write.write_all(piece).await.is_err() {
                return;
            }
        }
        let _ = their_write.shutdown().await;
    });
    tokio::spawn(async move {
        let mut sink = [0u8; 4096];
        while matches!(their_read.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    let config = SpeakerConfig {
        handshake_timeout: BOUND / 2,
        call_timeout: SHORT,
        send_timeout: SHORT,
        close_timeout: SHORT,
        ..SpeakerConfig::default()
    };
    let ours = config.versions.clone();
    let (speaker, mut incoming, negotiated) =
        match Speaker::<S>::connect(our_read, our_write, config).await {
            Ok(connected) => connected,
            Err(err) => {
                // The peer always finishes writing and keeps reading, so
                // the failure is about its line, never a stalled exchange.
                assert!(
                    !matches!(err, HeaderError::TimedOut(_) | HeaderError::Write(_)),
                    "{err}"
                );
                let _ = err.category();
                return;
            }
        };
    assert_eq!(negotiated.peer.role, S::ROLE.peer());
    assert_eq!(
        Some(negotiated.version),
        ours.negotiate(&negotiated.peer.versions)
    );
    assert!(listed(&ours, negotiated.version.major));
    let caller = call.then(|| {
        let speaker = speaker.clone();
        tokio::spawn(async move { speaker.call(S::Out::default()).await })
    });
    while let Some(inbound) = incoming.recv().await {
        if let Inbound::Request { id, .. } = inbound {
            // An arm-less reply (§5.5): the speaker sets `response_to`.
            let _ = speaker.reply(id, S::Out::default()).await;
        }
    }
    // The stream has ended: the reason is recorded and the call released.
    let reason = speaker.closed().await;
    let _ = reason.to_string();
    if let Some(caller) = caller {
        let _ = caller.await;
    }
    let stats = speaker.stats();
    assert!(stats.frames_received.saturating_mul(4) <= input_len as u64);
    assert!(stats.empty_frames <= stats.frames_received);
    speaker.close().await;
    assert_eq!(speaker.pending_calls(), 0);
}

fn listed(list: &VersionList, major: u64) -> bool {
    list.versions().iter().any(|v| v.major == major)
}
