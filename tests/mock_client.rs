//! `codervpn mock-client` as an app user sees it (protocol.md §8.8): started
//! before the service is up, it connects once the service listens, asks for
//! the status, starts, watches the start's progress and lifecycle, sees the
//! peer state arrive, stops, and comes back after the service restarts;
//! SIGTERM ends it with status 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use codervpn_mock_coder::{MockCoder, MockConfig, Scenario};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
const TOKEN: &str = "client-test-token-7c2";
/// Generous bound on any one wait; nothing asserts an upper bound.
const LIMIT: Duration = Duration::from_secs(60);

fn service(socket: &Path) -> Child {
    Command::new(BIN)
        .args(["mock-service", "--log-level", "warn", "--socket"])
        .arg(socket)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Reads the client's lines until one starts with `wanted`; all lines read.
async fn until(lines: &mut Lines<BufReader<ChildStdout>>, wanted: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with(wanted);
            seen.push(line);
            if done {
                return;
            }
        }
        panic!("the client ended before {wanted:?}");
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .unwrap_or_else(|_| panic!("no {wanted:?} within {LIMIT:?}"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_watches_a_start_and_a_stop_and_comes_back_after_a_service_restart() {
    let mock = MockCoder::start(MockConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: TOKEN.into(),
        scenario: Scenario::demo(),
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let dir = std::env::temp_dir().join(format!("cvpn-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("pipe.sock");

    // The app first: it retries until the service listens (§8.8 item 1).
    let mut client = Command::new(BIN)
        .args(["mock-client", "--socket"])
        .arg(&socket)
        .args(["--coder-url", &mock.url(), "--api-token", TOKEN])
        .args(["--stop-after-ms", "1500", "--reply-timeout-ms", "5000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut svc = service(&socket);

    let seen = until(&mut lines, "stop: success=").await;
    let text = seen.join("\n");
    let position = |prefix: &str| {
        seen.iter()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
    };
    // StatusRequest first, then Start only because the service is STOPPED.
    assert!(
        position("status: STOPPED") < position("start: sending"),
        "{text}"
    );
    // The documented order (§8.3), seen through the app's eyes.
    let order = [
        "start: sending",
        "progress: Initializing",
        "broadcast: STARTING",
        "progress: Downloading",
        "progress: Finalizing",
        "broadcast: STARTED",
        "start: success=true",
        "stop: sending",
        "broadcast: STOPPING",
        "broadcast: STOPPED",
        "stop: success=true",
    ];
    let at: Vec<usize> = order.iter().map(|p| position(p)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "{order:?} at {at:?}\n{text}"
    );
    // The peer state arrives with a Status broadcast: the demo's agents.
    assert!(
        seen.iter().any(|l| l.starts_with("broadcast: STARTED (")
            && !l.starts_with("broadcast: STARTED (0 agents")),
        "{text}"
    );

    // The service restarts; the app reconnects and asks again (§8.8 item 1).
    let _ = svc.start_kill();
    let _ = svc.wait().await;
    until(&mut lines, "link lost").await;
    let _ = std::fs::remove_file(&socket);
    let _svc = service(&socket);
    let again = until(&mut lines, "status: ").await;
    assert!(
        again.iter().any(|l| l.starts_with("connected")),
        "{again:?}"
    );
    assert!(
        !again.iter().any(|l| l.starts_with("start: sending")),
        "{again:?}"
    );

    // SIGTERM ends it cleanly.
    let pid = client.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let status = tokio::time::timeout(LIMIT, client.wait())
        .await
        .expect("the client did not exit")
        .unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
    mock.shutdown().await;
}
