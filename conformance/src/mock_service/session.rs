//! One client's link (protocol.md §8.1, §8.2): the handshake as `service`
//! within 5 s, then its requests until the stream ends. Start and Stop run
//! in tasks of their own, so a StatusRequest is answered while they run;
//! everything sent back goes through the client's outbox
//! ([`super::broadcast`]).

use std::sync::Arc;

use codervpn_codec::{Inbound, Service as ServiceSide, Speaker, SpeakerConfig};
use codervpn_proto::{ServiceMessage, client_message};
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

use super::broadcast::CLIENT_WRITE_TIMEOUT;
use super::{CLIENT_HANDSHAKE_TIMEOUT, CLIENT_REQUESTS_IN_FLIGHT, Service};

/// One client: handshake, then requests until its stream ends.
pub(super) async fn serve(service: Arc<Service>, stream: UnixStream) {
    let (reader, writer) = stream.into_split();
    let config = SpeakerConfig {
        versions: service.config.versions.clone(),
        handshake_timeout: CLIENT_HANDSHAKE_TIMEOUT,
        send_timeout: CLIENT_WRITE_TIMEOUT,
        close_timeout: CLIENT_WRITE_TIMEOUT,
        ..SpeakerConfig::default()
    };
    let (speaker, mut incoming, negotiated) =
        match Speaker::<ServiceSide>::connect(reader, writer, config).await {
            Ok(connected) => connected,
            Err(err) => {
                tracing::info!(%err, "client handshake failed");
                return;
            }
        };
    let client = service.hub.join(speaker);
    tracing::info!(client, version = %negotiated.version, "client connected");
    let in_flight = Arc::new(Semaphore::new(CLIENT_REQUESTS_IN_FLIGHT));
    while let Some(inbound) = incoming.recv().await {
        let (request, msg) = match inbound {
            Inbound::Request { id, msg } => (id, msg),
            Inbound::OneWay(_) => {
                tracing::warn!(client, "ignored a client message without a request id");
                continue;
            }
        };
        match msg.msg {
            Some(client_message::Msg::Status(_)) => service.hub.reply_status(client, request),
            Some(client_message::Msg::Start(start)) => {
                tracing::info!(client, request, "Start requested");
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    service.start(client, request, start).await;
                    drop(permit);
                });
            }
            Some(client_message::Msg::Stop(_)) => {
                tracing::info!(client, request, "Stop requested");
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    service.stop(client, request).await;
                    drop(permit);
                });
            }
            None => {
                tracing::warn!(
                    client,
                    request,
                    "request without a known arm: arm-less reply"
                );
                service.hub.reply(
                    client,
                    request,
                    ServiceMessage {
                        rpc: None,
                        msg: None,
                    },
                );
            }
        }
    }
    service.hub.leave(client);
    tracing::info!(client, "client disconnected");
}
