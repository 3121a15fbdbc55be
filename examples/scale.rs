//! Scale check of the reference tunnel (issue: GetPeerUpdate with 10,000
//! agents): runs `codervpn tunnel` against an in-process mock control plane
//! holding N agents, then reports the Start latency, the GetPeerUpdate round
//! trip (median and worst of 20) and the tunnel process's memory.
//!
//! `cargo build --release && cargo run --release --example scale -- 10000`

use std::process::Stdio;
use std::time::{Duration, Instant};

use codervpn_codec::{Inbound, Manager, Speaker, SpeakerConfig};
use codervpn_mock_coder::{AgentSpec, MockCoder, MockConfig, Scenario, WorkspaceSpec};
use codervpn_proto::{
    GetPeerUpdate, ManagerMessage, NetworkSettingsResponse, StartRequest, manager_message,
    tunnel_message,
};
use uuid::Uuid;

fn scenario(agents: u128) -> Scenario {
    let mut scenario = Scenario::demo();
    let workspaces = (agents / 10).max(1);
    scenario.workspaces = (0..workspaces)
        .map(|w| WorkspaceSpec {
            id: Uuid::from_u128(w + 1),
            name: format!("workspace-{w}"),
            status: Default::default(),
            agents: (0..agents)
                .filter(|a| a % workspaces == w)
                .map(|a| AgentSpec {
                    id: Uuid::from_u128((1 << 64) + a),
                    name: format!("agent-{a}"),
                    node: None,
                    external_node: None,
                })
                .collect(),
        })
        .collect();
    scenario.timeline.clear();
    scenario
}

fn rss_kib(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let agents: u128 = std::env::args().nth(1).map_or(Ok(10_000), |a| a.parse())?;
    let mock = MockCoder::start(MockConfig {
        listen: "127.0.0.1:0".parse()?,
        token: "scale-token".into(),
        scenario: scenario(agents),
        ..MockConfig::default()
    })
    .await?;
    let bin = std::env::var("CODERVPN_BIN").unwrap_or_else(|_| "target/release/codervpn".into());
    let mut child = tokio::process::Command::new(&bin)
        .args([
            "tunnel",
            "--log-level",
            "error",
            "--update-interval-ms",
            "3600000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let (to, from) = (
        child.stdin.take().ok_or("stdin")?,
        child.stdout.take().ok_or("stdout")?,
    );
    let config = SpeakerConfig {
        call_timeout: Duration::from_secs(60),
        ..SpeakerConfig::default()
    };
    let (speaker, mut incoming, _) = Speaker::<Manager>::connect(from, to, config).await?;
    let answer = speaker.clone();
    tokio::spawn(async move {
        while let Some(inbound) = incoming.recv().await {
            if let Inbound::Request { id, .. } = inbound {
                let ok = NetworkSettingsResponse {
                    success: true,
                    error_message: String::new(),
                };
                let reply = ManagerMessage {
                    rpc: None,
                    msg: Some(manager_message::Msg::NetworkSettings(ok)),
                };
                let _ = answer.reply(id, reply).await;
            }
        }
    });
    let call = |msg| {
        speaker.call(ManagerMessage {
            rpc: None,
            msg: Some(msg),
        })
    };
    let rss_before = rss_kib(pid, "VmRSS:");
    let started = Instant::now();
    let start = call(manager_message::Msg::Start(StartRequest {
        coder_url: mock.url(),
        api_token: "scale-token".into(),
        ..StartRequest::default()
    }))
    .await?;
    let start_latency = started.elapsed();
    assert!(
        matches!(start.msg, Some(tunnel_message::Msg::Start(ref r)) if r.success),
        "{start:?}"
    );
    let mut rounds = Vec::new();
    let mut size = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let reply = call(manager_message::Msg::GetPeerUpdate(GetPeerUpdate {})).await?;
        rounds.push(t.elapsed());
        if let Some(tunnel_message::Msg::PeerUpdate(update)) = reply.msg {
            size = update.upserted_agents.len();
        }
    }
    rounds.sort();
    println!("agents in reply:            {size}");
    println!("Start -> StartResponse:     {start_latency:?}");
    println!(
        "GetPeerUpdate round trip:   median {:?}, worst {:?}",
        rounds[rounds.len() / 2],
        rounds[rounds.len() - 1]
    );
    println!("tunnel memory before Start: VmRSS {rss_before}");
    println!(
        "tunnel memory after:        VmRSS {}, peak VmHWM {}",
        rss_kib(pid, "VmRSS:"),
        rss_kib(pid, "VmHWM:")
    );
    speaker.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    mock.shutdown().await;
    Ok(())
}
