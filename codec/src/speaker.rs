//! The async speaker: one type for all four roles (protocol.md §5, §7).
//!
//! A [`Speaker`] owns two tasks. The writer task is the only writer of the
//! stream, so every frame goes out whole and in queue order (§4.4); it
//! enforces the role's write rules (after the tunnel's StopResponse nothing
//! more is written and the stream closes, §7.1). The reader task decodes
//! frames, hands replies to their callers through the pending table and
//! queues requests and one-way messages for the [`Incoming`] side. Both
//! queues are bounded, so a slow consumer slows the peer down instead of
//! growing memory.
//!
//! When either task stops (peer EOF, a fatal frame, a write failure, a local
//! close or the final frame) the stream is closed in both directions
//! (§2.1 item 3, §4.3), every pending call fails at once (§5.9 item 2), and
//! later sends fail instead of hanging. Replies read before EOF are delivered
//! before pending calls are failed (§5.9 item 3), since the reader handles
//! frames strictly in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use codervpn_proto::{Envelope, Rpc};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::frame::{CodecError, FrameCodec, MAX_FRAME_LEN, decode_payload, encode_frame};
use crate::handshake::{Header, HeaderError, Negotiated, VersionList, handshake};
use crate::role::{AfterWrite, Side};
use crate::rpc::{Delivery, IdCounter, Kind, Pending, classify};

/// Limits and timeouts of a speaker. Every wait has a bound.
#[derive(Debug, Clone)]
pub struct SpeakerConfig {
    /// The version list to advertise (default `1.2`).
    pub versions: VersionList,
    /// Bound on the whole handshake (§3.8 recommends 5 s).
    pub handshake_timeout: Duration,
    /// Default bound on a call's reply.
    pub call_timeout: Duration,
    /// Bound on waiting for room in the outgoing queue (a peer that stops
    /// reading, §5.8 item 3).
    pub send_timeout: Duration,
    /// Bound on flushing and closing in [`Speaker::close`].
    pub close_timeout: Duration,
    /// Payload cap for both directions (§4.2).
    pub max_frame_len: usize,
    /// Capacity of the outgoing and incoming queues.
    pub queue_len: usize,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        SpeakerConfig {
            versions: VersionList::default(),
            handshake_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            close_timeout: Duration::from_secs(5),
            max_frame_len: MAX_FRAME_LEN,
            queue_len: 64,
        }
    }
}

/// A message for this side's handler (§5.3 item 2).
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound<M> {
    /// A request: answer it with [`Speaker::reply`] and this `id`.
    Request { id: u64, msg: M },
    /// A one-way message, or one with `msg_id` 0, or an empty frame.
    OneWay(M),
}

/// Why the stream ended. The first cause wins.
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// [`Speaker::close`] was called or every handle was dropped.
    Local,
    /// The tunnel wrote its StopResponse (§7.1).
    FinalFrameWritten,
    /// The peer closed the stream at a frame boundary.
    PeerClosed,
    /// A fatal receive error (§4.3).
    Receive(Arc<CodecError>),
    /// Writing to the stream failed.
    Write(Arc<std::io::Error>),
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed locally"),
            CloseReason::FinalFrameWritten => f.write_str("closed after the StopResponse"),
            CloseReason::PeerClosed => f.write_str("peer closed the stream"),
            CloseReason::Receive(err) => write!(f, "receive failed: {err}"),
            CloseReason::Write(err) => write!(f, "write failed: {err}"),
        }
    }
}

/// Why a send or call failed.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error("cannot encode message: {0}")]
    Encode(#[from] CodecError),
    #[error("nothing may be sent after Stop (protocol.md §7.1, §7.2)")]
    Sealed,
    #[error("a reply needs the non-zero id of the request it answers")]
    ZeroReplyId,
    #[error("stream closed: {0}")]
    Closed(CloseReason),
    #[error("no reply within {0:?}")]
    TimedOut(Duration),
    #[error("outgoing queue still full after {0:?}: the peer is not reading")]
    QueueFull(Duration),
}

/// Counters for diagnostics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub frames_received: u64,
    pub frames_sent: u64,
    /// Responses matching no pending call, dropped (§5.3 item 1).
    pub unmatched_responses: u64,
    /// Zero-length frames received (§4.3).
    pub empty_frames: u64,
}

#[derive(Debug, Default)]
struct Counters {
    frames_received: AtomicU64,
    frames_sent: AtomicU64,
    unmatched_responses: AtomicU64,
    empty_frames: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
enum Outgoing {
    Frame { bytes: Bytes, after: AfterWrite },
    Close,
}

struct Shared<S: Side> {
    config: SpeakerConfig,
    pending: Pending<S::In>,
    ids: IdCounter,
    /// Set once a sealing message is queued: later sends fail early. The
    /// writer enforces the rule itself as well.
    sealed: AtomicBool,
    /// The tunnel's StopResponse is queued: the handler gets nothing more
    /// (§7.1 rule 3), even before the writer has reached it.
    final_queued: AtomicBool,
    reason: watch::Sender<Option<CloseReason>>,
    cancel: CancellationToken,
    counters: Counters,
}

impl<S: Side> Shared<S> {
    /// Records why the stream ended (first cause wins) and releases every
    /// waiter: pending calls fail, both tasks stop.
    fn finish(&self, reason: CloseReason) {
        self.reason.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(reason);
                true
            } else {
                false
            }
        });
        self.sealed.store(true, Ordering::SeqCst);
        self.pending.close();
        self.cancel.cancel();
    }

    fn closed_error(&self) -> SpeakerError {
        SpeakerError::Closed(self.reason.borrow().clone().unwrap_or(CloseReason::Local))
    }
}

/// The sending half and RPC caller; cheap to clone, usable from many tasks.
pub struct Speaker<S: Side> {
    shared: Arc<Shared<S>>,
    out: mpsc::Sender<Outgoing>,
}

impl<S: Side> Clone for Speaker<S> {
    fn clone(&self) -> Self {
        Speaker {
            shared: self.shared.clone(),
            out: self.out.clone(),
        }
    }
}

impl<S: Side> std::fmt::Debug for Speaker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("role", &S::ROLE)
            .field("stats", &self.stats())
            .field("closed", &self.close_reason())
            .finish()
    }
}

/// Requests and one-way messages from the peer, in arrival order.
pub struct Incoming<S: Side> {
    rx: mpsc::Receiver<Inbound<S::In>>,
    shared: Arc<Shared<S>>,
}

impl<S: Side> std::fmt::Debug for Incoming<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").field("role", &S::ROLE).finish()
    }
}

impl<S: Side> Incoming<S> {
    /// The next request or one-way message; `None` once the stream has ended
    /// and everything read before the end has been taken. After the tunnel's
    /// StopResponse nothing more is handed out (§7.1 rule 3).
    pub async fn recv(&mut self) -> Option<Inbound<S::In>> {
        if self.shared.final_queued.load(Ordering::SeqCst) {
            return None;
        }
        let next = self.rx.recv().await;
        if self.shared.final_queued.load(Ordering::SeqCst) {
            return None;
        }
        next
    }
}

impl<S: Side> Speaker<S> {
    /// Handshakes as `S::ROLE` over `reader`/`writer`, then starts the
    /// speaker. On a failed handshake both halves are closed (§3.7 item 3).
    pub async fn connect<R, W>(
        mut reader: R,
        mut writer: W,
        config: SpeakerConfig,
    ) -> Result<(Speaker<S>, Incoming<S>, Negotiated), HeaderError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let ours = Header::new(S::ROLE, config.versions.clone());
        match handshake(&mut reader, &mut writer, &ours, config.handshake_timeout).await {
            Ok(negotiated) => {
                let (speaker, incoming) = Speaker::start(reader, writer, config);
                Ok((speaker, incoming, negotiated))
            }
            Err(err) => {
                drop(reader);
                let _ = tokio::time::timeout(config.close_timeout, writer.shutdown()).await;
                Err(err)
            }
        }
    }

    /// Starts the speaker on a stream whose handshake is done. Must be called
    /// inside a tokio runtime.
    pub fn start<R, W>(reader: R, writer: W, config: SpeakerConfig) -> (Speaker<S>, Incoming<S>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::channel(config.queue_len.max(1));
        let (in_tx, in_rx) = mpsc::channel(config.queue_len.max(1));
        let shared = Arc::new(Shared {
            config,
            pending: Pending::default(),
            ids: IdCounter::default(),
            sealed: AtomicBool::new(false),
            final_queued: AtomicBool::new(false),
            reason: watch::Sender::new(None),
            cancel: CancellationToken::new(),
            counters: Counters::default(),
        });
        tokio::spawn(write_loop(writer, out_rx, shared.clone()));
        tokio::spawn(read_loop(reader, in_tx, shared.clone()));
        (
            Speaker {
                shared: shared.clone(),
                out: out_tx,
            },
            Incoming { rx: in_rx, shared },
        )
    }

    /// Sends a request and waits for its reply, bounded by the configured
    /// call timeout. The `rpc` field is set here (fresh `msg_id`).
    pub async fn call(&self, msg: S::Out) -> Result<S::In, SpeakerError> {
        self.call_within(msg, self.shared.config.call_timeout).await
    }

    /// [`Speaker::call`] with an explicit bound.
    pub async fn call_within(
        &self,
        mut msg: S::Out,
        timeout: Duration,
    ) -> Result<S::In, SpeakerError> {
        let id = self.shared.ids.next();
        msg.set_rpc(Some(Rpc {
            msg_id: id,
            response_to: 0,
        }));
        let reply = self
            .shared
            .pending
            .register(id)
            .ok_or_else(|| self.shared.closed_error())?;
        // Forget the call if this future is dropped or times out, so a late
        // reply counts as unmatched instead of lingering.
        let _guard = CancelOnDrop {
            pending: &self.shared.pending,
            id,
        };
        let exchange = async {
            self.enqueue(&msg).await?;
            reply.await.map_err(|_| self.shared.closed_error())
        };
        // The bound covers waiting for room in the queue as well.
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(SpeakerError::TimedOut(timeout)))
    }

    /// Sends a one-way message: the `rpc` field is removed (§5.7 item 2).
    pub async fn send(&self, mut msg: S::Out) -> Result<(), SpeakerError> {
        msg.set_rpc(None);
        self.enqueue(&msg).await
    }

    /// Answers request `id` with `msg` (`rpc{response_to: id}`, §5.4).
    pub async fn reply(&self, id: u64, mut msg: S::Out) -> Result<(), SpeakerError> {
        if id == 0 {
            return Err(SpeakerError::ZeroReplyId);
        }
        msg.set_rpc(Some(Rpc {
            msg_id: 0,
            response_to: id,
        }));
        self.enqueue(&msg).await
    }

    /// Writes bytes verbatim, in order with the frames: for test harnesses
    /// that must send malformed input. Write rules do not apply.
    pub async fn send_raw(&self, bytes: Bytes) -> Result<(), SpeakerError> {
        self.reserve().await?.send(Outgoing::Frame {
            bytes,
            after: AfterWrite::Continue,
        });
        Ok(())
    }

    async fn enqueue(&self, msg: &S::Out) -> Result<(), SpeakerError> {
        let after = S::after_write(msg);
        let bytes = encode_frame(msg, self.shared.config.max_frame_len)?;
        // Take the queue slot first: a message that seals the stream must
        // only seal it once it is certain to be queued, or a failed attempt
        // would leave a StopResponse that can never be sent.
        let slot = self.reserve().await?;
        let already_sealed = if after == AfterWrite::Continue {
            self.shared.sealed.load(Ordering::SeqCst)
        } else {
            self.shared.sealed.swap(true, Ordering::SeqCst)
        };
        if already_sealed {
            return Err(match self.close_reason() {
                Some(reason) => SpeakerError::Closed(reason),
                None => SpeakerError::Sealed,
            });
        }
        if after == AfterWrite::SealAndClose {
            self.shared.final_queued.store(true, Ordering::SeqCst);
        }
        slot.send(Outgoing::Frame { bytes, after });
        Ok(())
    }

    /// Waits, within the send timeout, for room in the outgoing queue.
    async fn reserve(&self) -> Result<mpsc::Permit<'_, Outgoing>, SpeakerError> {
        let bound = self.shared.config.send_timeout;
        match tokio::time::timeout(bound, self.out.reserve()).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Err(_) => Err(SpeakerError::QueueFull(bound)),
        }
    }

    /// Flushes what is queued, closes the stream in both directions and
    /// fails pending calls. Bounded by the configured close timeout.
    pub async fn close(&self) {
        let bound = self.shared.config.close_timeout;
        let _ = tokio::time::timeout(bound, async {
            let _ = self.out.send(Outgoing::Close).await;
            self.closed().await
        })
        .await;
        self.shared.finish(CloseReason::Local);
    }

    /// Waits until the stream has ended and says why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.reason.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(CloseReason::Local),
            Err(_) => CloseReason::Local,
        }
    }

    /// Why the stream ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason.borrow().clone()
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            frames_received: c.frames_received.load(Ordering::Relaxed),
            frames_sent: c.frames_sent.load(Ordering::Relaxed),
            unmatched_responses: c.unmatched_responses.load(Ordering::Relaxed),
            empty_frames: c.empty_frames.load(Ordering::Relaxed),
        }
    }

    /// Calls waiting for a reply.
    pub fn pending_calls(&self) -> usize {
        self.shared.pending.len()
    }
}

struct CancelOnDrop<'a, M> {
    pending: &'a Pending<M>,
    id: u64,
}

impl<M> Drop for CancelOnDrop<'_, M> {
    fn drop(&mut self) {
        self.pending.cancel(self.id);
    }
}

/// The only writer of the stream.
async fn write_loop<S: Side, W: AsyncWrite + Unpin>(
    writer: W,
    mut queue: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared<S>>,
) {
    let mut writer = BufWriter::with_capacity(64 * 1024, writer);
    let mut sealed = false;
    let reason = loop {
        let item = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break None,
            item = queue.recv() => item,
        };
        let (bytes, after) = match item {
            None | Some(Outgoing::Close) => break Some(CloseReason::Local),
            Some(Outgoing::Frame { bytes, after }) => (bytes, after),
        };
        if sealed {
            // Queued behind Stop: never written (§7.2 item 1).
            continue;
        }
        let write = async {
            writer.write_all(&bytes).await?;
            if after != AfterWrite::Continue || queue.is_empty() {
                writer.flush().await?;
            }
            Ok::<(), std::io::Error>(())
        };
        // A frame abandoned half-way ends the stream (§4.4 item 2).
        let written = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break None,
            written = write => written,
        };
        if let Err(err) = written {
            break Some(CloseReason::Write(Arc::new(err)));
        }
        bump(&shared.counters.frames_sent);
        match after {
            AfterWrite::Continue => {}
            AfterWrite::Seal => sealed = true,
            AfterWrite::SealAndClose => break Some(CloseReason::FinalFrameWritten),
        }
    };
    if let Some(reason) = reason {
        let closing = async {
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
        };
        let _ = tokio::time::timeout(shared.config.close_timeout, closing).await;
        shared.finish(reason);
    }
    // Dropping the writer closes the write direction.
}

/// Reads frames in order, routes replies, queues everything else.
async fn read_loop<S: Side, R: AsyncRead + Unpin>(
    reader: R,
    handler: mpsc::Sender<Inbound<S::In>>,
    shared: Arc<Shared<S>>,
) {
    let codec = FrameCodec::new(shared.config.max_frame_len);
    let mut frames = FramedRead::with_capacity(reader, codec, 16 * 1024);
    let reason = loop {
        let next = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break None,
            next = frames.next() => next,
        };
        let payload = match next {
            None => break Some(CloseReason::PeerClosed),
            Some(Err(err)) => break Some(CloseReason::Receive(Arc::new(err))),
            Some(Ok(payload)) => payload,
        };
        bump(&shared.counters.frames_received);
        if payload.is_empty() {
            bump(&shared.counters.empty_frames);
        }
        let msg = match decode_payload::<S::In>(payload) {
            Ok(msg) => msg,
            Err(err) => break Some(CloseReason::Receive(Arc::new(err))),
        };
        let inbound = match classify(msg.rpc()) {
            Kind::Response(id) => {
                if shared.pending.deliver(id, msg) == Delivery::Unmatched {
                    bump(&shared.counters.unmatched_responses);
                    tracing::debug!(response_to = id, "dropped a response that matches no call");
                }
                continue;
            }
            Kind::Request(id) => Inbound::Request { id, msg },
            Kind::OneWay => Inbound::OneWay(msg),
        };
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break None,
            // A dropped `Incoming` means nobody handles requests; replies
            // still flow, so keep reading.
            _ = handler.send(inbound) => {}
        }
    };
    if let Some(reason) = reason {
        shared.finish(reason);
    }
    // Dropping the reader closes the read direction.
}
