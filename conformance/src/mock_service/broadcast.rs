//! The connected clients and everything the service sends them
//! (protocol.md §8.6 rules 3, 4 and 6, §8.7).
//!
//! Each client has an outbox, a bounded queue drained by its own forwarder
//! task into the client's speaker. Broadcasts, replies and the Status that
//! answers a StatusRequest all go through the outbox, so one client sees
//! them in the order the service produced them (STARTED before the
//! StartResponse, §8.3; STOPPED before the StopResponse, §8.4). Putting a
//! message in an outbox never waits: a slow client cannot hold up the
//! lifecycle or the other clients.
//!
//! The Windows service gives each broadcast a 30 ms budget and may cancel a
//! write half-way and go on writing, leaving a cut frame in the middle of
//! the pipe (§8.7 hazard). Here the speaker's writer writes whole frames,
//! and a client that has not made room for a frame within
//! [`CLIENT_WRITE_TIMEOUT`] (or whose outbox overflows) is dropped: its
//! stream is closed and nothing more is ever written to it (§4.4 item 2,
//! §8.6 rule 6). The only frame that can end up cut is the one the stalled
//! writer was in, as the very last bytes before EOF, which a receiver
//! discards (§4.3: a truncated frame is never acted on). Avoiding even that
//! would mean waiting for the stalled client without a bound.
//!
//! State changes and their broadcast happen under one lock, so every client
//! sees the lifecycle changes in the order they were made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use codervpn_codec::{Service, Speaker, SpeakerError};
use codervpn_proto::vpn::status::Lifecycle;
use codervpn_proto::vpn::{StartProgressDownloadProgress, StartProgressStage};
use codervpn_proto::{PeerUpdate, ServiceMessage, StartProgress, service_message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::ServiceState;

/// How long one client may keep a frame waiting (§8.7: at most 2 s per
/// client) before it is dropped.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Messages an outbox holds; a client this far behind is dropped.
pub const OUTBOX_LEN: usize = 256;

/// One message for one client, in outbox order.
#[derive(Debug)]
enum Out {
    /// A broadcast (no `rpc`, §5.7 item 2).
    OneWay(ServiceMessage),
    /// The reply to request `id`.
    Reply(u64, ServiceMessage),
}

#[derive(Debug)]
struct Entry {
    outbox: mpsc::Sender<Out>,
    /// Cancelled when the client is dropped; its forwarder closes the
    /// stream at once instead of draining the outbox.
    dropped: CancellationToken,
    forwarder: tokio::task::JoinHandle<()>,
}

/// Lifecycle state plus the connected clients.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<ServiceState>,
    clients: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn status_message(state: &ServiceState) -> ServiceMessage {
    ServiceMessage {
        rpc: None,
        msg: Some(service_message::Msg::Status(state.status())),
    }
}

impl Hub {
    /// Registers a client whose handshake is done and starts its forwarder.
    /// Ids count from 1 (§8.1).
    pub(crate) fn join(&self, speaker: Speaker<Service>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let (outbox, rx) = mpsc::channel(OUTBOX_LEN);
        let dropped = CancellationToken::new();
        let forwarder = tokio::spawn(forward(id, speaker, rx, dropped.clone()));
        lock(&self.clients).insert(
            id,
            Entry {
                outbox,
                dropped,
                forwarder,
            },
        );
        id
    }

    /// Forgets a client (its stream ended); its forwarder stops.
    pub(crate) fn leave(&self, id: u64) {
        if let Some(entry) = lock(&self.clients).remove(&id) {
            entry.dropped.cancel();
        }
    }

    /// Clients currently connected.
    pub fn client_count(&self) -> usize {
        lock(&self.clients).len()
    }

    fn push(&self, clients: &mut HashMap<u64, Entry>, id: u64, out: Out) {
        let Some(entry) = clients.get(&id) else {
            return;
        };
        match entry.outbox.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(client = id, "client is not reading: dropped");
                entry.dropped.cancel();
                clients.remove(&id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                clients.remove(&id);
            }
        }
    }

    fn broadcast_locked(&self, msg: &ServiceMessage) {
        let mut clients = lock(&self.clients);
        let ids: Vec<u64> = clients.keys().copied().collect();
        for id in ids {
            self.push(&mut clients, id, Out::OneWay(msg.clone()));
        }
    }

    /// Sends `msg` to every connected client (best effort, §8.7).
    pub(crate) fn broadcast(&self, msg: ServiceMessage) {
        let _state = lock(&self.state);
        self.broadcast_locked(&msg);
    }

    /// Answers request `request` of client `client`, after everything
    /// already in its outbox.
    pub(crate) fn reply(&self, client: u64, request: u64, msg: ServiceMessage) {
        let _state = lock(&self.state);
        let mut clients = lock(&self.clients);
        self.push(&mut clients, client, Out::Reply(request, msg));
    }

    /// Answers a StatusRequest with the current Status (§8.2).
    pub(crate) fn reply_status(&self, client: u64, request: u64) {
        let state = lock(&self.state);
        let mut clients = lock(&self.clients);
        self.push(
            &mut clients,
            client,
            Out::Reply(request, status_message(&state)),
        );
    }

    /// Changes the state with `change`, then broadcasts the Status, under
    /// one lock (§8.6 rule 4).
    pub(crate) fn update(&self, change: impl FnOnce(&mut ServiceState)) {
        let mut state = lock(&self.state);
        change(&mut state);
        self.broadcast_locked(&status_message(&state));
    }

    /// Sets the lifecycle (clearing the peers if asked) and broadcasts.
    pub(crate) fn set_lifecycle(&self, lifecycle: Lifecycle, clear_peers: bool) {
        self.update(|state| {
            state.lifecycle = lifecycle;
            if clear_peers {
                state.peers.clear();
            }
        });
    }

    /// Broadcasts the Status as it is (§8.4 step 5).
    pub(crate) fn broadcast_status(&self) {
        self.update(|_| {});
    }

    /// Reads the state.
    pub(crate) fn with_state<T>(&self, read: impl FnOnce(&ServiceState) -> T) -> T {
        read(&lock(&self.state))
    }

    /// Changes the state without a broadcast.
    pub(crate) fn modify<T>(&self, change: impl FnOnce(&mut ServiceState) -> T) -> T {
        change(&mut lock(&self.state))
    }

    /// Broadcasts a StartProgress (§8.2, §8.3).
    pub(crate) fn progress(
        &self,
        stage: StartProgressStage,
        download: Option<StartProgressDownloadProgress>,
    ) {
        self.broadcast(ServiceMessage {
            rpc: None,
            msg: Some(service_message::Msg::StartProgress(StartProgress {
                stage: stage as i32,
                download_progress: download,
            })),
        });
    }

    /// Merges a PeerUpdate from tunnel `generation` and broadcasts the full
    /// state (§8.5); ignored when it comes from an older tunnel or while
    /// stopping.
    pub(crate) fn peer_update(&self, generation: u64, update: &PeerUpdate) {
        let mut state = lock(&self.state);
        if !state.accepts_updates_from(generation) {
            tracing::debug!(
                generation,
                "ignored a PeerUpdate from a tunnel no longer current"
            );
            return;
        }
        state.peers.apply(update);
        self.broadcast_locked(&status_message(&state));
    }

    /// Tunnel `generation`'s stream ended. When it is the current tunnel
    /// and it was STARTED, that is a death: STOPPED with no peers is
    /// broadcast (§8.6 rule 5; the Windows service keeps STARTED, the
    /// hazard of coder-desktop-windows #178). Returns whether it counted.
    pub(crate) fn tunnel_ended(&self, generation: u64) -> bool {
        let mut state = lock(&self.state);
        if !state.death_counts(generation) {
            return false;
        }
        state.lifecycle = Lifecycle::Stopped;
        state.peers.clear();
        self.broadcast_locked(&status_message(&state));
        true
    }

    /// Service shutdown: lets every client take what is in its outbox
    /// (within `flush`), then closes them all.
    pub(crate) async fn close_all(&self, flush: Duration) {
        let entries: Vec<Entry> = lock(&self.clients).drain().map(|(_, e)| e).collect();
        let mut forwarders = Vec::new();
        for Entry {
            outbox,
            dropped,
            forwarder,
        } in entries
        {
            // Without a sender the forwarder drains the outbox and closes.
            drop(outbox);
            forwarders.push((dropped, forwarder));
        }
        let deadline = tokio::time::Instant::now() + flush;
        for (dropped, mut forwarder) in forwarders {
            if tokio::time::timeout_at(deadline, &mut forwarder)
                .await
                .is_err()
            {
                dropped.cancel();
                let _ = tokio::time::timeout(CLIENT_WRITE_TIMEOUT, forwarder).await;
            }
        }
    }
}

/// Drains one client's outbox into its speaker. A frame that cannot be
/// queued within [`CLIENT_WRITE_TIMEOUT`] (the speaker's send bound) ends
/// the client; so does being dropped.
async fn forward(
    id: u64,
    speaker: Speaker<Service>,
    mut outbox: mpsc::Receiver<Out>,
    dropped: CancellationToken,
) {
    loop {
        let out = tokio::select! {
            biased;
            () = dropped.cancelled() => break,
            out = outbox.recv() => out,
        };
        let Some(out) = out else { break };
        let sent = tokio::select! {
            biased;
            () = dropped.cancelled() => break,
            sent = async {
                match out {
                    Out::OneWay(msg) => speaker.send(msg).await,
                    Out::Reply(request, msg) => speaker.reply(request, msg).await,
                }
            } => sent,
        };
        match sent {
            Ok(()) => {}
            Err(SpeakerError::QueueFull(bound)) => {
                tracing::warn!(client = id, ?bound, "client did not read in time: dropped");
                break;
            }
            Err(err) => {
                tracing::debug!(client = id, %err, "client gone");
                break;
            }
        }
    }
    // Closing the stream (bounded) is what guarantees that no frame is left
    // half-written with more to follow (§4.4 item 2).
    speaker.close().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use codervpn_codec::frame::MessageCodec;
    use codervpn_codec::{MAX_FRAME_LEN, SpeakerConfig};
    use codervpn_proto::{ClientMessage, Workspace};
    use futures_util::StreamExt;
    use tokio_util::codec::FramedRead;

    /// A client whose stream holds `buffer` bytes and is never read.
    fn stalled_client(hub: &Hub, buffer: usize, send_timeout: Duration) -> tokio::io::DuplexStream {
        let (ours, theirs) = tokio::io::duplex(buffer);
        let (reader, writer) = tokio::io::split(ours);
        let config = SpeakerConfig {
            send_timeout,
            close_timeout: send_timeout,
            queue_len: 8,
            ..SpeakerConfig::default()
        };
        let (speaker, _incoming) = Speaker::<Service>::start(reader, writer, config);
        hub.join(speaker);
        theirs
    }

    /// Whole frames the client can read before EOF. The frame a stalled
    /// writer was in may be cut, but only as the last bytes before EOF.
    async fn whole_frames(theirs: tokio::io::DuplexStream) -> usize {
        let mut frames = FramedRead::new(
            theirs,
            MessageCodec::<ServiceMessage, ClientMessage>::new(MAX_FRAME_LEN),
        );
        let mut count = 0;
        while let Some(frame) = tokio::time::timeout(Duration::from_secs(5), frames.next())
            .await
            .unwrap()
        {
            match frame {
                Ok(_) => count += 1,
                Err(codervpn_codec::CodecError::Truncated { .. }) => {
                    let after = tokio::time::timeout(Duration::from_secs(5), frames.next());
                    assert!(after.await.unwrap().is_none(), "bytes after a cut frame");
                    break;
                }
                Err(err) => panic!("{err}"),
            }
        }
        count
    }

    fn big_state(hub: &Hub) {
        hub.modify(|state| {
            state.peers.apply(&PeerUpdate {
                upserted_workspaces: (0..20u8)
                    .map(|i| Workspace {
                        id: vec![i; 16].into(),
                        name: format!("workspace-{i}"),
                        status: 3,
                    })
                    .collect(),
                ..PeerUpdate::default()
            });
        });
    }

    #[tokio::test]
    async fn a_client_that_overflows_its_outbox_is_dropped_without_cut_frames() {
        let hub = Hub::default();
        big_state(&hub);
        let stalled = stalled_client(&hub, 1000, Duration::from_secs(30));
        let (healthy_ours, healthy) = tokio::io::duplex(64 * 1024 * 1024);
        let (r, w) = tokio::io::split(healthy_ours);
        let (speaker, _incoming) = Speaker::<Service>::start(r, w, SpeakerConfig::default());
        hub.join(speaker);
        // Never blocks, however far behind the stalled client is.
        for _ in 0..OUTBOX_LEN + 100 {
            hub.broadcast_status();
            tokio::task::yield_now().await;
        }
        assert_eq!(hub.client_count(), 1, "the stalled client is dropped");
        let frames = whole_frames(stalled).await;
        assert!(frames < OUTBOX_LEN, "{frames}");
        // The healthy client got every broadcast.
        hub.close_all(Duration::from_secs(5)).await;
        assert_eq!(whole_frames(healthy).await, OUTBOX_LEN + 100);
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_in_time_is_closed_between_frames() {
        let hub = Hub::default();
        big_state(&hub);
        let stalled = stalled_client(&hub, 1000, Duration::from_millis(200));
        for _ in 0..40 {
            hub.broadcast_status();
        }
        // The forwarder gives up after the send bound and closes the stream.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let frames = whole_frames(stalled).await;
        assert!(frames < 40, "{frames}");
        hub.broadcast_status();
        assert_eq!(hub.client_count(), 0);
    }
}
