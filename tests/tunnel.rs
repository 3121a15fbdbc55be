//! The reference tunnel as a user runs it: the `codervpn tunnel` process on
//! real pipes, driven by the codec's manager speaker, against the mock
//! control plane (protocol.md §5-§7, §9).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::{Duration, Instant};

use codervpn_codec::{Inbound, Manager, Speaker, SpeakerConfig, SpeakerError};
use codervpn_mock_coder::{Action, MockCoder, MockConfig, Scenario, fingerprint};
use codervpn_proto::vpn::start_request::Header;
use codervpn_proto::{
    GetPeerUpdate, Log, ManagerMessage, NetworkSettingsRequest, NetworkSettingsResponse,
    PeerUpdate, StartRequest, StartResponse, StopRequest, StopResponse, TunnelMessage,
    manager_message, tunnel_message,
};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
const TOKEN: &str = "test-token-123";
const LIMIT: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {LIMIT:?}"))
}

/// What the manager saw that was not a reply.
#[derive(Debug)]
enum Seen {
    PeerUpdate(PeerUpdate),
    Log(Log),
    NetworkSettings(Box<NetworkSettingsRequest>),
}

/// A tunnel process with a manager speaker on its stdio.
struct Tunnel {
    child: Child,
    speaker: Speaker<Manager>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Tunnel {
    async fn launch(extra: &[&str]) -> Tunnel {
        let mut child = Command::new(BIN)
            .arg("tunnel")
            .args(["--log-level", "error"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let to_tunnel = child.stdin.take().unwrap();
        let from_tunnel = child.stdout.take().unwrap();
        let (speaker, mut incoming, negotiated) = within(
            "handshake",
            Speaker::<Manager>::connect(from_tunnel, to_tunnel, SpeakerConfig::default()),
        )
        .await
        .unwrap();
        assert_eq!(negotiated.version.to_string(), "1.2");
        let (tx, seen) = mpsc::unbounded_channel();
        let answer = speaker.clone();
        // The manager's read loop: answer NetworkSettings (§6.4 item 1),
        // record everything else.
        tokio::spawn(async move {
            while let Some(inbound) = incoming.recv().await {
                match inbound {
                    Inbound::Request { id, msg } => {
                        if let Some(tunnel_message::Msg::NetworkSettings(req)) = msg.msg {
                            let _ = tx.send(Seen::NetworkSettings(Box::new(req)));
                            let reply = ManagerMessage {
                                rpc: None,
                                msg: Some(manager_message::Msg::NetworkSettings(
                                    NetworkSettingsResponse {
                                        success: true,
                                        error_message: String::new(),
                                    },
                                )),
                            };
                            let _ = answer.reply(id, reply).await;
                        }
                    }
                    Inbound::OneWay(msg) => match msg.msg {
                        Some(tunnel_message::Msg::PeerUpdate(update)) => {
                            let _ = tx.send(Seen::PeerUpdate(update));
                        }
                        Some(tunnel_message::Msg::Log(log)) => {
                            let _ = tx.send(Seen::Log(log));
                        }
                        _ => {}
                    },
                }
            }
        });
        Tunnel {
            child,
            speaker,
            seen,
        }
    }

    async fn call(&self, msg: manager_message::Msg) -> TunnelMessage {
        within(
            "call",
            self.speaker.call(ManagerMessage {
                rpc: None,
                msg: Some(msg),
            }),
        )
        .await
        .unwrap()
    }

    async fn start(&self, req: StartRequest) -> StartResponse {
        match self.call(manager_message::Msg::Start(req)).await.msg {
            Some(tunnel_message::Msg::Start(resp)) => resp,
            other => panic!("not a StartResponse: {other:?}"),
        }
    }

    async fn peers(&self) -> PeerUpdate {
        match self
            .call(manager_message::Msg::GetPeerUpdate(GetPeerUpdate {}))
            .await
            .msg
        {
            Some(tunnel_message::Msg::PeerUpdate(update)) => update,
            other => panic!("not a PeerUpdate: {other:?}"),
        }
    }

    async fn stop(mut self) -> StopResponse {
        let reply = self.call(manager_message::Msg::Stop(StopRequest {})).await;
        let Some(tunnel_message::Msg::Stop(resp)) = reply.msg else {
            panic!("not a StopResponse: {reply:?}");
        };
        // §7.1: EOF follows; the process may exit (§2.2 item 7).
        let reason = within("EOF after Stop", self.speaker.closed()).await;
        assert!(
            matches!(reason, codervpn_codec::CloseReason::PeerClosed),
            "{reason}"
        );
        let status = within("exit", self.child.wait()).await.unwrap();
        assert!(status.success(), "{status}");
        resp
    }

    /// The next non-reply message matching `pick`, skipping others.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(Seen) -> Option<T>) -> T {
        within(what, async {
            loop {
                let seen = self.seen.recv().await.expect("stream ended");
                if let Some(found) = pick(seen) {
                    return found;
                }
            }
        })
        .await
    }

    async fn next_update(
        &mut self,
        what: &str,
        mut accept: impl FnMut(&PeerUpdate) -> bool,
    ) -> PeerUpdate {
        self.next(what, |seen| match seen {
            Seen::PeerUpdate(u) if accept(&u) => Some(u),
            _ => None,
        })
        .await
    }
}

async fn mock(scenario: Scenario) -> MockCoder {
    MockCoder::start(MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        scenario,
        ..MockConfig::default()
    })
    .await
    .unwrap()
}

fn start_request(url: &str) -> StartRequest {
    StartRequest {
        coder_url: url.into(),
        api_token: TOKEN.into(),
        headers: vec![Header {
            name: "X-Test-Header".into(),
            value: "test-value".into(),
        }],
        device_id: "device001".into(),
        device_os: "Linux".into(),
        coder_desktop_version: "0.24.8".into(),
        ..StartRequest::default()
    }
}

fn ids(list: &[codervpn_proto::Agent]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = list
        .iter()
        .map(|a| Uuid::from_slice(&a.id).unwrap())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn start_full_state_network_settings_and_clean_stop() {
    let mock = mock(Scenario::demo()).await;
    let mut tunnel = Tunnel::launch(&[]).await;

    let started = Instant::now();
    let resp = tunnel.start(start_request(&mock.url())).await;
    eprintln!("Start -> StartResponse: {:?}", started.elapsed());
    assert!(resp.success, "{resp:?}");

    // §6.10: router kind then DNS kind, both before StartResponse.
    let router = tunnel
        .next("router settings", |s| match s {
            Seen::NetworkSettings(r) if r.ipv6_settings.is_some() => Some(r),
            _ => None,
        })
        .await;
    let v6 = router.ipv6_settings.unwrap();
    let own: std::net::Ipv6Addr = v6.addrs[0].parse().unwrap();
    assert_eq!(own.octets()[..6], [0xfd, 0x60, 0x62, 0x7a, 0xa4, 0x2b]);
    assert_eq!(v6.prefix_lengths, [128]);
    assert_eq!(v6.included_routes[0].destination, "fd60:627a:a42b::");
    assert_eq!(v6.included_routes[0].prefix_length, 48);
    assert_eq!(router.mtu, 1280);
    let dns = tunnel
        .next("dns settings", |s| match s {
            Seen::NetworkSettings(r) if r.dns_settings.is_some() => r.dns_settings,
            _ => None,
        })
        .await;
    assert_eq!(dns.servers, ["fd60:627a:a42b::53"]);
    assert_eq!(dns.match_domains, ["coder"]);

    // §6.6: the full demo state, well formed (§6.7).
    let state = tunnel.peers().await;
    assert_eq!(state.upserted_workspaces.len(), 3);
    assert_eq!(state.upserted_agents.len(), 4);
    assert!(state.deleted_agents.is_empty() && state.deleted_workspaces.is_empty());
    for agent in &state.upserted_agents {
        assert_eq!(agent.id.len(), 16);
        assert_eq!(agent.workspace_id.len(), 16);
        assert!(
            agent
                .fqdn
                .iter()
                .all(|n| n.ends_with(".coder.") && *n == n.to_lowercase())
        );
        assert!(agent.fqdn.windows(2).all(|w| w[0].len() <= w[1].len()));
        let id = Uuid::from_slice(&agent.id).unwrap();
        assert_eq!(
            agent.ip_addrs,
            [codervpn_proto::ids::agent_address(id).to_string()]
        );
        assert_eq!(agent.last_handshake.unwrap().seconds, -62_135_596_800);
    }
    let names: usize = state.upserted_agents.iter().map(|a| a.fqdn.len()).sum();
    // Two single-agent workspaces (3 names each), one with two agents (2 each).
    assert_eq!(names, 3 + 3 + 2 + 2);

    let stop = tunnel.stop().await;
    assert!(stop.success);
    mock.shutdown().await;
}

#[tokio::test]
async fn start_request_headers_and_telemetry_reach_every_request() {
    let mock = mock(Scenario::demo()).await;
    let tunnel = Tunnel::launch(&[]).await;
    assert!(tunnel.start(start_request(&mock.url())).await.success);
    let requests = mock.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    for path in [
        "/api/v2/users/me",
        "/api/v2/workspaceagents/connection",
        "/api/v2/tailnet",
    ] {
        assert!(paths.contains(&path), "{path} not called: {paths:?}");
    }
    for request in &requests {
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            header("coder-session-token"),
            Some("<redacted>"),
            "{}",
            request.path
        );
        let expected = format!("<redacted:{}>", fingerprint("test-value"));
        assert_eq!(
            header("x-test-header"),
            Some(expected.as_str()),
            "{}",
            request.path
        );
        assert_eq!(
            header("coder-desktop-telemetry"),
            Some(
                r#"{"device_id":"device001","device_os":"Linux","coder_desktop_version":"0.24.8"}"#
            ),
            "{}",
            request.path
        );
        assert!(request.headers.iter().all(|(_, v)| !v.contains(TOKEN)));
    }
    tunnel.stop().await;
}

#[tokio::test]
async fn bad_token_and_unreachable_server_fail_start_promptly() {
    let mock = mock(Scenario::demo()).await;
    let tunnel = Tunnel::launch(&[]).await;
    let mut req = start_request(&mock.url());
    req.api_token = "wrong".into();
    let started = Instant::now();
    let resp = tunnel.start(req).await;
    eprintln!("401 StartResponse after {:?}", started.elapsed());
    assert!(!resp.success);
    assert!(
        resp.error_message
            .starts_with("failed to start connection: get user: 401"),
        "{}",
        resp.error_message
    );
    // A free port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let started = Instant::now();
    let resp = tunnel
        .start(start_request(&format!("http://{closed}")))
        .await;
    eprintln!("refused StartResponse after {:?}", started.elapsed());
    assert!(!resp.success);
    assert!(
        resp.error_message.contains("get user")
            && resp.error_message.to_lowercase().contains("refused"),
        "{}",
        resp.error_message
    );
    // The stream stays usable: after a failed Start the state is empty.
    assert_eq!(tunnel.peers().await, PeerUpdate::default());
    assert!(tunnel.stop().await.success);
    mock.shutdown().await;
}

#[tokio::test]
async fn slow_control_plane_is_bounded_by_the_start_timeout() {
    let mock = mock(Scenario::demo()).await;
    mock.apply(Action::DelayResponses {
        ms: 60_000,
        count: None,
        path: Some("/api/v2/users/me".into()),
    });
    let tunnel = Tunnel::launch(&["--start-timeout-ms", "500"]).await;
    let resp = tunnel.start(start_request(&mock.url())).await;
    assert!(!resp.success);
    assert!(
        resp.error_message.contains("timed out"),
        "{}",
        resp.error_message
    );
    tunnel.stop().await;
}

#[tokio::test]
async fn start_checks_in_order_and_stream_stays_usable() {
    let tunnel = Tunnel::launch(&[]).await;
    // §6.6 item 2: before Start, an empty PeerUpdate.
    assert_eq!(tunnel.peers().await, PeerUpdate::default());
    let cases = [
        ("", "", "missing coder url"),
        ("", "t", "missing coder url"),
        ("https://coder.example", "", "missing api token"),
    ];
    for (url, token, text) in cases {
        let resp = tunnel
            .start(StartRequest {
                coder_url: url.into(),
                api_token: token.into(),
                ..StartRequest::default()
            })
            .await;
        assert_eq!((resp.success, resp.error_message.as_str()), (false, text));
    }
    let resp = tunnel
        .start(StartRequest {
            coder_url: "not a url".into(),
            api_token: "t".into(),
            ..StartRequest::default()
        })
        .await;
    assert!(
        resp.error_message.starts_with("parse url \"not a url\": "),
        "{}",
        resp.error_message
    );
    assert!(tunnel.stop().await.success);
}

#[tokio::test]
async fn stop_before_start_succeeds_and_closes() {
    let tunnel = Tunnel::launch(&[]).await;
    let resp = tunnel.stop().await;
    assert!(resp.success && resp.error_message.is_empty());
}

#[tokio::test]
async fn second_start_builds_no_second_connection() {
    let mock = mock(Scenario::demo()).await;
    let tunnel = Tunnel::launch(&[]).await;
    assert!(tunnel.start(start_request(&mock.url())).await.success);
    let users = |m: &MockCoder| {
        m.requests()
            .iter()
            .filter(|r| r.path == "/api/v2/users/me")
            .count()
    };
    assert_eq!((users(&mock), mock.stream_dials()), (1, 1));
    let mut other = start_request("http://127.0.0.1:1");
    other.api_token = "other".into();
    assert!(
        tunnel.start(other).await.success,
        "§6.5: success, parameters ignored"
    );
    assert_eq!((users(&mock), mock.stream_dials()), (1, 1));
    tunnel.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn timeline_diffs_and_reconnect_snapshot_deletions() {
    let scenario = Scenario::demo();
    let mock = mock(scenario.clone()).await;
    let mut tunnel = Tunnel::launch(&[]).await;
    assert!(tunnel.start(start_request(&mock.url())).await.success);
    let ws = scenario.workspaces[0].id;

    // A new agent in the first (single-agent) workspace: upserted, and the
    // existing agent re-upserted because it loses `<workspace>.coder.`.
    let new_agent = Uuid::from_u128(0xabc);
    mock.apply(Action::UpsertAgent {
        id: new_agent,
        name: "second".into(),
        workspace_id: ws,
        node: None,
    });
    let update = tunnel
        .next_update("diff with the new agent", |u| {
            ids(&u.upserted_agents).contains(&new_agent)
        })
        .await;
    assert_eq!(update.upserted_agents.len(), 2);
    assert!(update.upserted_agents.iter().all(|a| a.fqdn.len() == 2));

    mock.apply(Action::DeleteAgent {
        id: new_agent,
        keep_running: false,
    });
    let update = tunnel
        .next_update("diff deleting the agent", |u| !u.deleted_agents.is_empty())
        .await;
    assert_eq!(ids(&update.deleted_agents), [new_agent]);

    // An agentless workspace, then a drop: while away, it and a whole
    // workspace with agents are deleted; the snapshot after the reconnect
    // yields the deletions (§6.8, K6).
    let empty_ws = Uuid::from_u128(0xe111);
    mock.apply(Action::UpsertWorkspace {
        id: empty_ws,
        name: "empty".into(),
        status: Default::default(),
        agents: vec![],
    });
    tunnel
        .next_update("agentless workspace upserted", |u| {
            u.upserted_workspaces
                .iter()
                .any(|w| w.id.as_ref() == empty_ws.as_bytes())
        })
        .await;
    mock.apply(Action::DropStreams {
        reconnect_after_ms: 300,
    });
    mock.apply(Action::DeleteWorkspace { id: empty_ws });
    mock.apply(Action::DeleteWorkspace { id: ws });
    let update = tunnel
        .next_update("snapshot deletions", |u| !u.deleted_workspaces.is_empty())
        .await;
    let deleted: Vec<&[u8]> = update
        .deleted_workspaces
        .iter()
        .map(|w| w.id.as_ref())
        .collect();
    assert!(deleted.contains(&empty_ws.as_bytes().as_slice()));
    assert!(deleted.contains(&ws.as_bytes().as_slice()));
    assert_eq!(
        update.deleted_agents.len(),
        1,
        "the first workspace's agent"
    );
    assert!(mock.stream_dials() >= 2);
    // GetPeerUpdate equals the accumulated diffs (K16).
    let state = tunnel.peers().await;
    assert_eq!(state.upserted_workspaces.len(), 2);
    assert_eq!(state.upserted_agents.len(), 3);
    tunnel.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn periodic_updates_and_forwarded_logs() {
    let mock = mock(Scenario::demo()).await;
    let mut tunnel = Tunnel::launch(&["--update-interval-ms", "200"]).await;
    assert!(tunnel.start(start_request(&mock.url())).await.success);
    // §6.12: the control-plane client's INFO line reaches the manager.
    let log = tunnel
        .next("log line", |s| match s {
            Seen::Log(log) if log.message == "connected to the control plane" => Some(log),
            _ => None,
        })
        .await;
    assert_eq!(log.logger_names[0], "vpn");
    assert!(
        log.fields
            .iter()
            .any(|f| f.name == "user" && f.value == "rootbeer")
    );
    // §6.9: only upserted agents, all of them.
    let periodic = tunnel
        .next_update("periodic update", |u| {
            u.upserted_workspaces.is_empty() && u.upserted_agents.len() == 4
        })
        .await;
    assert!(periodic.deleted_agents.is_empty() && periodic.deleted_workspaces.is_empty());
    tunnel.stop().await;
    mock.shutdown().await;
}

#[tokio::test]
async fn stop_under_load_is_answered_and_closes() {
    let mock = mock(Scenario::demo()).await;
    let tunnel = Tunnel::launch(&["--update-interval-ms", "1"]).await;
    assert!(tunnel.start(start_request(&mock.url())).await.success);
    for n in 0..200u128 {
        mock.apply(Action::UpsertAgent {
            id: Uuid::from_u128(0x1000 + n),
            name: format!("load-{n}"),
            workspace_id: Scenario::demo().workspaces[1].id,
            node: None,
        });
    }
    let stop = tunnel.stop().await;
    assert!(stop.success);
    mock.shutdown().await;
}

#[tokio::test]
async fn closing_the_stream_ends_the_process() {
    let mut tunnel = Tunnel::launch(&[]).await;
    tunnel.speaker.close().await;
    let status = within("exit after EOF", tunnel.child.wait()).await.unwrap();
    assert!(status.success());
    let err = tunnel
        .speaker
        .send(ManagerMessage::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        SpeakerError::Closed(_) | SpeakerError::Encode(_)
    ));
}

#[tokio::test]
async fn descriptor_flags_are_checked_before_use() {
    for (args, needle) in [
        (
            vec!["--rpc-read-fd", "3", "--rpc-write-fd", "3"],
            "must be different",
        ),
        (
            vec!["--rpc-read-fd", "-1", "--rpc-write-fd", "4"],
            "must be positive",
        ),
        (vec!["--rpc-read-fd", "3"], "go together"),
        (
            vec!["--rpc-read-fd", "97", "--rpc-write-fd", "98"],
            "not an open descriptor",
        ),
    ] {
        let out = Command::new(BIN)
            .arg("tunnel")
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

/// Done means of the control-path issue: an independent manager (Python,
/// no code from this repository) launches the tunnel on inherited pipe
/// descriptors and drives Start, GetPeerUpdate, a timeline diff and Stop.
#[tokio::test]
async fn an_independent_manager_drives_the_tunnel_over_inherited_fds() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(std::env::var_os("CI").is_none(), "CI needs python3");
        eprintln!("SKIP: python3 not found");
        return;
    }
    let mut scenario = Scenario::demo();
    scenario.timeline = vec![codervpn_mock_coder::Step {
        at_ms: 1500,
        action: Action::UpsertAgent {
            id: Uuid::from_u128(0x7171),
            name: "timeline-agent".into(),
            workspace_id: scenario.workspaces[1].id,
            node: None,
        },
    }];
    let mock = mock(scenario).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_manager.py");
    let out = within(
        "python manager",
        Command::new("python3")
            .args([script, BIN, &mock.url(), TOKEN])
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("full state: 3 workspaces, 4 agents"),
        "{stdout}"
    );
    assert!(
        stdout.contains("StopResponse was the last frame, then EOF"),
        "{stdout}"
    );
    mock.shutdown().await;
}
