//! `codervpn mock-service` as a client sees it (protocol.md §8): the real
//! binary on a Unix socket, the mock control plane serving the daemon
//! download, the reference tunnel behind it. The test client reads raw
//! frames, so the order of broadcasts and replies on the wire is checked
//! exactly (§8.3, §8.4, §8.6 rules 3 and 4).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use codervpn_codec::frame::{MessageCodec, encode_frame};
use codervpn_codec::handshake::{Header, handshake};
use codervpn_codec::{MAX_FRAME_LEN, Role};
use codervpn_mock_coder::{DownloadConfig, MockCoder, MockConfig, Scenario};
use codervpn_proto::vpn::status::Lifecycle;
use codervpn_proto::vpn::{StartProgressStage, service_message::Msg};
use codervpn_proto::{
    ClientMessage, Envelope, Rpc, ServiceMessage, StartRequest, Status, StatusRequest, StopRequest,
    client_message,
};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::process::{Child, Command};
use tokio_util::codec::FramedRead;

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
const TOKEN: &str = "svc-test-token-5e1";
/// Generous bound on any one wait; nothing asserts an upper bound.
const LIMIT: Duration = Duration::from_secs(60);
const LOCK_ERROR: &str =
    "Could not acquire tunnel operation lock, another operation is in progress";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cvpn-svc-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The mock service's download directories in `dir`.
fn download_dirs(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("codervpn-mock-service-")
        })
        .count()
}

async fn mock_coder(download: DownloadConfig) -> MockCoder {
    MockCoder::start(MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        scenario: Scenario::demo(),
        download,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

/// A tunnel command that records its pid in `pidfile`, then is the
/// reference tunnel.
fn recording_tunnel(pidfile: &Path) -> String {
    format!(
        "sh -c 'echo $$ > {}; exec {BIN} tunnel --log-level error --rpc-read-fd {{rpc_read_fd}} --rpc-write-fd {{rpc_write_fd}}'",
        pidfile.display()
    )
}

/// The service process.
struct Svc {
    child: Child,
}

impl Svc {
    async fn start(socket: &Path, extra: &[&str]) -> Svc {
        let mut child = Command::new(BIN)
            .args(["mock-service", "--log-level", "warn", "--socket"])
            .arg(socket)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(LIMIT, BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("no listening line")
            .unwrap();
        assert_eq!(line.trim_end(), format!("listening: {}", socket.display()));
        Svc { child }
    }

    /// SIGTERM, then the exit status.
    async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().await;
        assert!(killed.unwrap().success());
        tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("the service did not exit")
            .unwrap()
    }
}

/// A client reading raw frames in wire order.
struct Wire {
    frames: FramedRead<OwnedReadHalf, MessageCodec<ServiceMessage, ClientMessage>>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Wire {
    async fn connect(socket: &Path) -> Wire {
        let stream = UnixStream::connect(socket).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let ours = Header::new(Role::Client, "1.3".parse().unwrap());
        let negotiated = handshake(&mut reader, &mut writer, &ours, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(negotiated.peer.to_line(), "codervpn service 1.3\n");
        Wire {
            frames: FramedRead::new(reader, MessageCodec::new(MAX_FRAME_LEN)),
            writer,
            next_id: 0,
        }
    }

    /// Sends `msg` as a request; its id.
    async fn send(&mut self, msg: Option<client_message::Msg>) -> u64 {
        self.next_id += 1;
        let mut request = ClientMessage { rpc: None, msg };
        request.set_rpc(Some(Rpc {
            msg_id: self.next_id,
            response_to: 0,
        }));
        let frame = encode_frame(&request, MAX_FRAME_LEN).unwrap();
        self.writer.write_all(&frame).await.unwrap();
        self.next_id
    }

    async fn next(&mut self) -> Option<ServiceMessage> {
        tokio::time::timeout(LIMIT, self.frames.next())
            .await
            .expect("nothing from the service in time")
            .map(|frame| frame.unwrap())
    }

    /// Everything up to the reply to `id`, and the reply.
    async fn until_reply(&mut self, id: u64) -> (Vec<ServiceMessage>, ServiceMessage) {
        let mut before = Vec::new();
        loop {
            let msg = self.next().await.expect("stream ended before the reply");
            match &msg.rpc {
                Some(rpc) if rpc.response_to == id => return (before, msg),
                Some(rpc) => panic!("unexpected rpc {rpc:?} in {msg:?}"),
                None => before.push(msg),
            }
        }
    }

    /// Broadcasts until one is a Status that satisfies `check`.
    async fn until_status(&mut self, check: impl Fn(&Status) -> bool) -> Status {
        loop {
            let msg = self.next().await.expect("stream ended");
            assert!(msg.rpc.is_none(), "unexpected reply {msg:?}");
            if let Some(Msg::Status(status)) = msg.msg
                && check(&status)
            {
                return status;
            }
        }
    }

    async fn request(&mut self, msg: client_message::Msg) -> (Vec<ServiceMessage>, ServiceMessage) {
        let id = self.send(Some(msg)).await;
        self.until_reply(id).await
    }
}

fn start_msg(mock: &MockCoder, token: &str) -> client_message::Msg {
    client_message::Msg::Start(StartRequest {
        // The .NET app sends the URI text, which ends in `/` (§6.2).
        coder_url: format!("{}/", mock.url()),
        api_token: token.into(),
        ..StartRequest::default()
    })
}

fn stop_msg() -> client_message::Msg {
    client_message::Msg::Stop(StopRequest {})
}

fn status_msg() -> client_message::Msg {
    client_message::Msg::Status(StatusRequest {})
}

/// A compact name for each broadcast, for order checks.
fn label(msg: &ServiceMessage) -> String {
    match &msg.msg {
        Some(Msg::StartProgress(p)) => match StartProgressStage::try_from(p.stage) {
            Ok(StartProgressStage::Downloading) => "Downloading".into(),
            Ok(stage) => format!("{stage:?}"),
            Err(_) => "stage?".into(),
        },
        Some(Msg::Status(s)) => lifecycle(s).into(),
        Some(Msg::Start(r)) => format!("StartResponse({})", r.success),
        Some(Msg::Stop(r)) => format!("StopResponse({})", r.success),
        None => "armless".into(),
    }
}

fn lifecycle(status: &Status) -> &'static str {
    match Lifecycle::try_from(status.lifecycle) {
        Ok(Lifecycle::Starting) => "STARTING",
        Ok(Lifecycle::Started) => "STARTED",
        Ok(Lifecycle::Stopping) => "STOPPING",
        Ok(Lifecycle::Stopped) => "STOPPED",
        _ => "UNKNOWN",
    }
}

/// Labels with runs of the same label folded: `Downloading×N` → one.
fn folded(msgs: &[ServiceMessage]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for msg in msgs {
        let l = label(msg);
        if out.last() != Some(&l) {
            out.push(l);
        }
    }
    out
}

fn start_response(reply: &ServiceMessage) -> (bool, String) {
    match &reply.msg {
        Some(Msg::Start(r)) => (r.success, r.error_message.clone()),
        other => panic!("not a StartResponse: {other:?}"),
    }
}

fn agents(status: &Status) -> usize {
    status
        .peer_update
        .as_ref()
        .map_or(0, |p| p.upserted_agents.len())
}

fn peers_empty(status: &Status) -> bool {
    status
        .peer_update
        .as_ref()
        .is_none_or(|p| p.upserted_agents.is_empty() && p.upserted_workspaces.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_start_progress_peers_status_stop_and_a_cached_restart() {
    let mock = mock_coder(DownloadConfig::default()).await;
    let dir = scratch();
    let socket = dir.join("svc.sock");
    let svc = Svc::start(&socket, &[]).await;
    let mut a = Wire::connect(&socket).await;
    let mut b = Wire::connect(&socket).await;

    // Initial state: STOPPED, no peers.
    let (before, reply) = a.request(status_msg()).await;
    assert!(before.is_empty());
    let Some(Msg::Status(status)) = &reply.msg else {
        panic!("{reply:?}")
    };
    assert_eq!(lifecycle(status), "STOPPED");

    // A full Start (§8.3).
    let began = Instant::now();
    let (seen, reply) = a.request(start_msg(&mock, TOKEN)).await;
    let took = began.elapsed();
    assert_eq!(start_response(&reply), (true, String::new()));
    let order = folded(&seen);
    // Status broadcasts of peer updates may come while STARTING.
    let order: Vec<&str> = order.iter().map(String::as_str).collect();
    assert_eq!(
        &order[..4],
        ["Initializing", "STARTING", "Downloading", "Finalizing"],
        "{order:?}"
    );
    assert!(
        order[4..]
            .iter()
            .all(|l| *l == "STARTING" || *l == "STARTED")
            && order.last() == Some(&"STARTED"),
        "{order:?}"
    );
    // Downloading×N, monotonic, total known, ending at the total.
    let progress: Vec<(u64, Option<u64>)> = seen
        .iter()
        .filter_map(|m| match &m.msg {
            Some(Msg::StartProgress(p)) => p
                .download_progress
                .as_ref()
                .map(|d| (d.bytes_written, d.bytes_total)),
            _ => None,
        })
        .collect();
    let total = DownloadConfig::default().size;
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "{progress:?}"
    );
    assert!(progress.iter().all(|p| p.1 == Some(total)), "{progress:?}");
    assert_eq!(progress.last().unwrap().0, total);
    eprintln!(
        "full Start through the mock service: {took:?}, {} Downloading messages; {order:?}",
        progress.len()
    );

    // The other client saw the same broadcasts.
    let b_seen = b.until_status(|s| lifecycle(s) == "STARTED").await;
    assert_eq!(lifecycle(&b_seen), "STARTED");

    // Peer state arrives (demo: 4 agents), names sorted.
    let status = a.until_status(|s| agents(s) == 4).await;
    let update = status.peer_update.unwrap();
    let names: Vec<&str> = update
        .upserted_workspaces
        .iter()
        .map(|w| w.name.as_str())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 3);
    b.until_status(|s| agents(s) == 4).await;

    // StatusRequest: STARTED with the full state.
    let id = a.send(Some(status_msg())).await;
    let (_, reply) = a.until_reply(id).await;
    let Some(Msg::Status(status)) = &reply.msg else {
        panic!("{reply:?}")
    };
    assert_eq!(lifecycle(status), "STARTED");
    assert_eq!(agents(status), 4);

    // The same Start again: success at once, no lifecycle change (§8.3 step 3).
    let (seen, reply) = a.request(start_msg(&mock, TOKEN)).await;
    assert!(start_response(&reply).0);
    assert!(
        folded(&seen)
            .iter()
            .all(|l| l == "Initializing" || l == "STARTED"),
        "{:?}",
        folded(&seen)
    );

    // Stop (§8.4): STOPPING, STOPPED, StopResponse, Status.
    let (seen, reply) = a.request(stop_msg()).await;
    let order = folded(&seen);
    let tail: Vec<&str> = order
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "STARTED")
        .collect();
    assert_eq!(tail, ["STOPPING", "STOPPED"], "{order:?}");
    assert_eq!(label(&reply), "StopResponse(true)");
    let after = a.next().await.unwrap();
    assert_eq!(label(&after), "STOPPED");
    let Some(Msg::Status(after)) = &after.msg else {
        unreachable!()
    };
    assert!(peers_empty(after));

    // Start again: the kept binary is current (304), so no Downloading.
    let (seen, reply) = a.request(start_msg(&mock, TOKEN)).await;
    assert!(start_response(&reply).0);
    let order = folded(&seen);
    assert_eq!(
        &order[..3],
        ["Initializing", "STARTING", "Finalizing"],
        "{order:?}"
    );
    assert!(!order.iter().any(|l| l == "Downloading"), "{order:?}");
    let statuses: Vec<u16> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/bin/coder-linux-amd64")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 304]);
    // The download directory is beside the socket (where a killed service
    // leaves it for whoever owns that place), not in the system temp dir.
    assert_eq!(download_dirs(&dir), 1);

    // Ending the service stops the tunnel, removes its files and exits 0.
    let status = svc.terminate().await;
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists());
    assert_eq!(download_dirs(&dir), 0);
    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_operations_get_the_lock_error() {
    // A slow download (about 2 s) keeps the Start busy.
    let mock = mock_coder(DownloadConfig {
        rate: 2 * 1024 * 1024,
        ..DownloadConfig::default()
    })
    .await;
    let dir = scratch();
    let socket = dir.join("svc.sock");
    let svc = Svc::start(&socket, &[]).await;
    let mut a = Wire::connect(&socket).await;
    let mut b = Wire::connect(&socket).await;
    let first = a.send(Some(start_msg(&mock, TOKEN))).await;
    b.until_status(|s| lifecycle(s) == "STARTING").await;
    let (_, reply) = b.request(start_msg(&mock, TOKEN)).await;
    assert_eq!(start_response(&reply), (false, LOCK_ERROR.to_owned()));
    let (_, reply) = b.request(stop_msg()).await;
    match &reply.msg {
        Some(Msg::Stop(r)) => {
            assert_eq!((r.success, r.error_message.as_str()), (false, LOCK_ERROR))
        }
        other => panic!("{other:?}"),
    }
    let (_, reply) = a.until_reply(first).await;
    assert!(start_response(&reply).0);
    assert!(svc.terminate().await.success());
    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_fails_the_start_naming_the_401() {
    let mock = mock_coder(DownloadConfig::default()).await;
    let dir = scratch();
    let socket = dir.join("svc.sock");
    let svc = Svc::start(&socket, &[]).await;
    let mut a = Wire::connect(&socket).await;
    let (seen, reply) = a.request(start_msg(&mock, "wrong-token")).await;
    let (success, error) = start_response(&reply);
    assert!(!success);
    assert!(
        error.contains("401") && error.contains("users/me"),
        "{error}"
    );
    assert!(!error.contains("wrong-token"), "{error}");
    // Only Initializing: the lifecycle never left STOPPED.
    assert_eq!(folded(&seen), ["Initializing"]);
    let (_, reply) = a.request(status_msg()).await;
    assert_eq!(label(&reply), "STOPPED");

    // A request without an arm gets an arm-less reply (documented choice).
    let id = a.send(None).await;
    let (_, reply) = a.until_reply(id).await;
    assert!(reply.msg.is_none());
    assert!(svc.terminate().await.success());
    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_tunnel_is_reported_stopped_and_a_new_start_works() {
    let mock = mock_coder(DownloadConfig {
        rate: 0,
        ..DownloadConfig::default()
    })
    .await;
    let dir = scratch();
    let socket = dir.join("svc.sock");
    let pidfile = dir.join("tunnel.pid");
    let tunnel = recording_tunnel(&pidfile);
    let svc = Svc::start(&socket, &["--tunnel-cmd", &tunnel]).await;
    let mut a = Wire::connect(&socket).await;
    let (_, reply) = a.request(start_msg(&mock, TOKEN)).await;
    assert!(start_response(&reply).0, "{reply:?}");
    a.until_status(|s| agents(s) > 0).await;

    let pid = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    let killed = Command::new("kill").args(["-KILL", &pid]).status().await;
    assert!(killed.unwrap().success());
    // §8.6 rule 5: STOPPED with no peers.
    let status = a.until_status(|s| lifecycle(s) != "STARTED").await;
    assert_eq!(lifecycle(&status), "STOPPED");
    assert!(peers_empty(&status));

    let (_, reply) = a.request(start_msg(&mock, TOKEN)).await;
    assert!(start_response(&reply).0, "{reply:?}");
    let second = std::fs::read_to_string(&pidfile).unwrap().trim().to_owned();
    assert_ne!(pid, second);

    // SIGTERM ends the tunnel too.
    assert!(svc.terminate().await.success());
    let alive = Command::new("kill")
        .args(["-0", &second])
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(!alive.success(), "tunnel {second} still running");
    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_after_the_service_restarts() {
    let dir = scratch();
    let socket = dir.join("svc.sock");
    let svc = Svc::start(&socket, &[]).await;
    let mut a = Wire::connect(&socket).await;
    let (_, reply) = a.request(status_msg()).await;
    assert_eq!(label(&reply), "STOPPED");
    assert!(svc.terminate().await.success());
    // The link ends.
    assert!(a.next().await.is_none());

    // A stale socket file is replaced by the new process.
    std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let svc = Svc::start(&socket, &["--versions", "1.3"]).await;
    let mut a = Wire::connect(&socket).await;
    let (_, reply) = a.request(status_msg()).await;
    assert_eq!(label(&reply), "STOPPED");
    assert!(svc.terminate().await.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_tunnel_and_a_download_of_unknown_length() {
    let size = 512 * 1024;
    let mock = mock_coder(DownloadConfig {
        size,
        rate: 1024 * 1024,
        omit_length: true,
    })
    .await;
    let dir = scratch();
    let socket = dir.join("svc.sock");
    let tunnel = format!("{BIN} tunnel --log-level error --no-network-settings");
    let svc = Svc::start(&socket, &["--tunnel-stdio-cmd", &tunnel]).await;
    let mut a = Wire::connect(&socket).await;
    let (seen, reply) = a.request(start_msg(&mock, TOKEN)).await;
    assert_eq!(start_response(&reply), (true, String::new()));
    let progress: Vec<(u64, Option<u64>)> = seen
        .iter()
        .filter_map(|m| match &m.msg {
            Some(Msg::StartProgress(p)) => p
                .download_progress
                .as_ref()
                .map(|d| (d.bytes_written, d.bytes_total)),
            _ => None,
        })
        .collect();
    // §8.2: bytes_total unset when the server gives no length.
    assert!(progress.iter().all(|p| p.1.is_none()), "{progress:?}");
    assert_eq!(progress.last().unwrap().0, size);
    assert!(svc.terminate().await.success());
    mock.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
