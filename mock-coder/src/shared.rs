//! What the server's handlers, the streams and the timeline share: the
//! workspace state, the injected faults, the record and the update channel.
//!
//! One lock per concern, never held across an `.await`. Diffs are computed
//! and broadcast while the state lock is held, and a new stream subscribes
//! and takes its snapshot under the same lock, so every stream sees its
//! snapshot followed by exactly the diffs made after it (protocol.md §6.8).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use codervpn_reference_tunnel::control::api::{
    ConnectionInfo, ServerMessage, TunnelNode, User, WorkspaceUpdate,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

use crate::agents::Agents;
use crate::download::Downloads;
use crate::faults::{Faults, Plan};
use crate::record::{RecordedRequest, Recorder};
use crate::scenario::{Action, Scenario};
use crate::state::State;

/// Updates a stream may fall behind by before it is closed (the tunnel then
/// reconnects and gets a snapshot) rather than buffering without bound.
pub const STREAM_BACKLOG: usize = 1024;

/// What every open stream is told.
#[derive(Debug, Clone)]
pub(crate) enum StreamEvent {
    /// A serialized [`ServerMessage`], sent as one text message.
    Send(Utf8Bytes),
    /// `DropStreams`: close now.
    Drop,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) token: String,
    pub(crate) user: User,
    pub(crate) version: String,
    pub(crate) connection: ConnectionInfo,
    state: Mutex<State>,
    faults: Mutex<Faults>,
    recorder: Mutex<Recorder>,
    events: broadcast::Sender<StreamEvent>,
    dials: AtomicUsize,
    shutdown: watch::Sender<bool>,
    /// The embedded agents; published nodes come from here.
    pub(crate) agents: Agents,
    /// What `/bin/{name}` serves (§9.2).
    pub(crate) downloads: Downloads,
    /// Each open stream holds a clone; shutdown takes this one and waits for
    /// the clones to go, i.e. for the streams to end.
    stream_guard: Mutex<Option<mpsc::Sender<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the mock down with it.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The scenario must be valid (its workspaces build a state).
    pub(crate) fn new(
        token: String,
        scenario: &Scenario,
        state: State,
        agents: Agents,
        downloads: Downloads,
    ) -> (Shared, mpsc::Receiver<()>) {
        let (guard, guard_rx) = mpsc::channel(1);
        let shared = Shared {
            token,
            user: scenario.user.clone(),
            version: scenario.version.clone(),
            connection: ConnectionInfo {
                hostname_suffix: scenario.hostname_suffix.clone(),
                disable_direct_connections: scenario.disable_direct_connections,
            },
            state: Mutex::new(state),
            faults: Mutex::new(Faults::default()),
            recorder: Mutex::new(Recorder::default()),
            events: broadcast::channel(STREAM_BACKLOG).0,
            dials: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
            stream_guard: Mutex::new(Some(guard)),
            agents,
            downloads,
        };
        (shared, guard_rx)
    }

    /// Runs one timeline action now.
    pub(crate) fn apply(&self, action: &Action) {
        tracing::debug!(action = action.name(), "mock control plane action");
        if action.change().is_some() {
            // Under the state lock, so agents start and stop in the order
            // the changes are made. Publishing may start an agent for a
            // change that then fails; `retain` stops it again.
            let mut state = lock(&self.state);
            let published = self.agents.publish_action(action);
            if let Some(change) = published.change() {
                match state.apply(change) {
                    Ok(update) => self.broadcast(&update),
                    Err(err) => {
                        tracing::warn!(action = action.name(), %err, "action ignored");
                    }
                }
            }
            if let Action::DeleteAgent {
                id,
                keep_running: true,
            } = action
            {
                self.agents.orphan(*id);
            }
            self.agents.retain(|id| state.agent_node(id).cloned());
            return;
        }
        match action {
            Action::DropStreams { reconnect_after_ms } => {
                // Refuse first, so a tunnel that redials at once is refused.
                lock(&self.faults).refuse_streams_until(after_ms(*reconnect_after_ms));
                let _ = self.events.send(StreamEvent::Drop);
            }
            Action::FailRequests {
                count,
                status,
                path,
            } => lock(&self.faults).fail(*count, *status, path.clone()),
            Action::DelayResponses { ms, count, path } => {
                lock(&self.faults).delay(*ms, *count, path.clone());
            }
            Action::CorruptResponses { count, path } => {
                lock(&self.faults).corrupt(*count, path.clone());
            }
            Action::SendSnapshot => {
                let state = lock(&self.state);
                self.broadcast(&state.snapshot());
            }
            Action::UpsertWorkspace { .. }
            | Action::DeleteWorkspace { .. }
            | Action::UpsertAgent { .. }
            | Action::DeleteAgent { .. } => {}
        }
    }

    /// Sends `update` to every open stream. Called with the state locked.
    fn broadcast(&self, update: &WorkspaceUpdate) {
        if let Some(text) = encode(update) {
            // An error only means that no stream is open.
            let _ = self.events.send(StreamEvent::Send(text));
        }
    }

    /// A new stream: its receiver and its first message, the snapshot.
    pub(crate) fn subscribe(&self) -> Option<(broadcast::Receiver<StreamEvent>, Utf8Bytes)> {
        let state = lock(&self.state);
        let receiver = self.events.subscribe();
        encode(&state.snapshot()).map(|snapshot| (receiver, snapshot))
    }

    /// The current full state.
    pub(crate) fn snapshot(&self) -> WorkspaceUpdate {
        lock(&self.state).snapshot()
    }

    pub(crate) fn plan(&self, path: &str) -> Plan {
        lock(&self.faults).plan(path)
    }

    pub(crate) fn streams_refused(&self) -> Option<Duration> {
        lock(&self.faults).streams_refused(Instant::now())
    }

    pub(crate) fn begin_request(&self, request: RecordedRequest) -> Option<usize> {
        lock(&self.recorder).begin(request)
    }

    pub(crate) fn finish_request(&self, index: Option<usize>, status: u16) {
        lock(&self.recorder).finish(index, status);
    }

    pub(crate) fn record_node(&self, node: TunnelNode) {
        self.agents.announce(&node);
        lock(&self.recorder).node(node);
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.recorder).requests()
    }

    pub(crate) fn nodes(&self) -> Vec<TunnelNode> {
        lock(&self.recorder).nodes()
    }

    pub(crate) fn count_dial(&self) {
        self.dials.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }

    /// A guard an open stream holds; `None` once shutting down.
    pub(crate) fn stream_guard(&self) -> Option<mpsc::Sender<()>> {
        lock(&self.stream_guard).clone()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells the server, the streams and the timeline to stop.
    pub(crate) fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        lock(&self.stream_guard).take();
        self.agents.cancel_all();
    }
}

/// `ms` from now, saturating far in the future instead of overflowing.
pub(crate) fn after_ms(ms: u64) -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_millis(ms))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn encode(update: &WorkspaceUpdate) -> Option<Utf8Bytes> {
    match serde_json::to_string(&ServerMessage::Update(update.clone())) {
        Ok(text) => Some(text.into()),
        Err(err) => {
            tracing::error!(%err, "cannot encode a workspace update");
            None
        }
    }
}

/// Resolves once shutdown has begun (or the mock is gone).
pub(crate) async fn stopped(signal: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here.
    let _ = signal.wait_for(|stop| *stop).await.map(|_| ());
}
