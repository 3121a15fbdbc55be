//! A client's Start and Stop, step by step as the Windows service runs
//! them (protocol.md §8.3, §8.4), with the rules of §8.6.
//!
//! One operation at a time: Start and Stop wait at most `--lock-wait-ms`
//! (500 ms) for the operation lock, which also owns the tunnel link, then
//! give up with [`LOCK_ERROR`] (§8.6 rule 2). Every step is bounded, so
//! every request is answered in bounded time (§8.6 rule 1).
//!
//! Where the Windows service leaves the lifecycle unchanged after an
//! exception in the middle of a Start (e.g. a failed download), this one
//! stops the tunnel and reports STOPPED before it answers, so a client
//! never sees STARTING with nothing behind it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use codervpn_proto::vpn::StartProgressStage;
use codervpn_proto::vpn::status::Lifecycle;
use codervpn_proto::{ServiceMessage, StartRequest, StartResponse, StopResponse, service_message};

use super::Service;
use super::control::{self, Deployment};
use super::download::Fetched;
use super::tunnel::TunnelLink;

/// The answer to an operation that could not get the lock in time (§8.6
/// rule 2, the Windows text).
pub const LOCK_ERROR: &str =
    "Could not acquire tunnel operation lock, another operation is in progress";
const SHUTTING_DOWN: &str = "the service is shutting down";

fn start_failed(error: impl Into<String>) -> StartResponse {
    StartResponse {
        success: false,
        error_message: error.into(),
    }
}

pub(crate) fn start_message(response: StartResponse) -> ServiceMessage {
    ServiceMessage {
        rpc: None,
        msg: Some(service_message::Msg::Start(response)),
    }
}

pub(crate) fn stop_message(response: StopResponse) -> ServiceMessage {
    ServiceMessage {
        rpc: None,
        msg: Some(service_message::Msg::Stop(response)),
    }
}

impl Service {
    /// The StartRequest sent to the tunnel: the client's URL, token and
    /// headers, `tunnel_file_descriptor` 0 and the service's telemetry
    /// fields (§8.2, §6.2 "Windows service" column).
    fn forwarded(&self, request: &StartRequest) -> StartRequest {
        StartRequest {
            tunnel_file_descriptor: 0,
            coder_url: request.coder_url.clone(),
            api_token: request.api_token.clone(),
            headers: request.headers.clone(),
            device_id: self.telemetry.device_id.clone(),
            device_os: self.telemetry.device_os.clone(),
            coder_desktop_version: self.telemetry.version.clone(),
        }
    }

    /// Client `client`'s Start, answered as request `request` (§8.3).
    pub(crate) async fn start(self: Arc<Self>, client: u64, request: u64, start: StartRequest) {
        let began = tokio::time::Instant::now();
        let response = self.run_start(start).await;
        tracing::info!(
            client,
            success = response.success,
            error = %response.error_message,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "Start answered"
        );
        self.hub.reply(client, request, start_message(response));
    }

    async fn run_start(&self, start: StartRequest) -> StartResponse {
        let Ok(mut tunnel) = tokio::time::timeout(self.config.lock_wait, self.op.lock()).await
        else {
            return start_failed(LOCK_ERROR);
        };
        // 1. Initializing.
        self.hub.progress(StartProgressStage::Initializing, None);
        // 2. buildinfo and users/me.
        let forwarded = self.forwarded(&start);
        let deployment = tokio::select! {
            () = self.closing.cancelled() => Err(SHUTTING_DOWN.to_owned()),
            checked = control::check(&forwarded) => checked,
        };
        let deployment = match deployment {
            Ok(deployment) => deployment,
            Err(err) => return start_failed(err),
        };
        // 3. Already running with the same request and server version.
        if self
            .hub
            .with_state(|state| state.already_started(&start, &deployment.version))
        {
            tracing::info!("already started with the same request: nothing to do");
            return StartResponse {
                success: true,
                error_message: String::new(),
            };
        }
        // 4. STARTING, no peers; remember the request.
        self.hub.update(|state| {
            state.peers.clear();
            state.lifecycle = Lifecycle::Starting;
            state.last_start = Some((start.clone(), deployment.version.clone()));
        });
        // 5. Stop a running tunnel.
        if let Some(old) = tunnel.take() {
            old.teardown().await;
        }
        // 6-9.
        match self.bring_up(&deployment, forwarded).await {
            Ok((link, response)) if response.success => {
                *tunnel = Some(link);
                self.hub.set_lifecycle(Lifecycle::Started, false);
                response
            }
            Ok((link, response)) => {
                // §6.2 item 5: a failed Start means the tunnel is stopped.
                link.teardown().await;
                self.hub.set_lifecycle(Lifecycle::Stopped, true);
                response
            }
            Err(err) => {
                self.hub.set_lifecycle(Lifecycle::Stopped, true);
                start_failed(err)
            }
        }
    }

    /// Download, Finalizing, launch and handshake, Start (§8.3 steps 6-8).
    /// On an error the tunnel, if launched, has been torn down.
    async fn bring_up(
        &self,
        deployment: &Deployment,
        forwarded: StartRequest,
    ) -> Result<(TunnelLink, StartResponse), String> {
        let fetched = self
            .downloads
            .fetch(
                deployment,
                &self.config.download_path,
                &self.hub,
                &self.closing,
            )
            .await?;
        match &fetched {
            Fetched::NotModified(path) => {
                tracing::info!(path = %path.display(), "daemon binary not modified (304)");
            }
            Fetched::Downloaded { path, bytes } => {
                tracing::info!(path = %path.display(), bytes, "daemon binary downloaded");
            }
        }
        self.hub.progress(StartProgressStage::Finalizing, None);
        // PeerUpdates from this launch count from here on (§8.6 rule 5).
        let generation = self.generations.fetch_add(1, Ordering::SeqCst) + 1;
        self.hub.modify(|state| state.generation = generation);
        let launch = TunnelLink::launch(
            &self.config.tunnel,
            self.config.versions.clone(),
            generation,
            self.hub.clone(),
            self.deaths.clone(),
        );
        let link = tokio::select! {
            () = self.closing.cancelled() => return Err(SHUTTING_DOWN.into()),
            link = launch => link?,
        };
        let response = tokio::select! {
            () = self.closing.cancelled() => Err(SHUTTING_DOWN.to_owned()),
            response = link.start(forwarded) => response,
        };
        match response {
            Ok(response) => Ok((link, response)),
            Err(err) => {
                link.teardown().await;
                Err(err)
            }
        }
    }

    /// Client `client`'s Stop, answered as request `request` (§8.4):
    /// STOPPING, teardown, STOPPED, StopResponse, Status once more.
    pub(crate) async fn stop(self: Arc<Self>, client: u64, request: u64) {
        let Ok(mut tunnel) = tokio::time::timeout(self.config.lock_wait, self.op.lock()).await
        else {
            let refused = StopResponse {
                success: false,
                error_message: LOCK_ERROR.into(),
            };
            self.hub.reply(client, request, stop_message(refused));
            return;
        };
        self.hub.set_lifecycle(Lifecycle::Stopping, true);
        if let Some(link) = tunnel.take() {
            link.teardown().await;
        }
        self.hub.set_lifecycle(Lifecycle::Stopped, true);
        let done = StopResponse {
            success: true,
            error_message: String::new(),
        };
        self.hub.reply(client, request, stop_message(done));
        self.hub.broadcast_status();
        tracing::info!(client, "Stop answered");
    }

    /// Tears down the tunnel of `generation` after its stream ended, if it
    /// is still the current one (the process may linger; it is reaped).
    pub(crate) async fn reap(&self, generation: u64) {
        let Ok(mut tunnel) = tokio::time::timeout(super::REAP_LOCK_WAIT, self.op.lock()).await
        else {
            // An operation holds the lock; it replaces or stops the tunnel.
            return;
        };
        if tunnel
            .as_ref()
            .is_some_and(|link| link.generation == generation)
            && let Some(link) = tunnel.take()
        {
            link.teardown().await;
        }
    }

    /// Service shutdown: stop the tunnel (Stop, bounded wait, kill).
    pub(crate) async fn shut_down_tunnel(&self) {
        let Ok(mut tunnel) = tokio::time::timeout(super::SHUTDOWN_LOCK_WAIT, self.op.lock()).await
        else {
            tracing::warn!("an operation did not end in time; its tunnel is killed on exit");
            return;
        };
        if let Some(link) = tunnel.take() {
            self.hub.set_lifecycle(Lifecycle::Stopping, true);
            link.teardown().await;
            self.hub.set_lifecycle(Lifecycle::Stopped, true);
        }
    }
}
