//! `codervpn record` and `codervpn replay` as a user runs them.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
const CASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/conformance/cases/STOP-002.json"
);

fn tunnel_cmd() -> String {
    format!(
        "{BIN} tunnel --log-level error --rpc-read-fd {{rpc_read_fd}} --rpc-write-fd {{rpc_write_fd}}"
    )
}

#[test]
fn record_then_replay_against_the_same_and_a_broken_tunnel() {
    let dir = std::env::temp_dir().join(format!("codervpn-record-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("stop.json");
    let record = Command::new(BIN)
        .args([
            "record",
            "--tunnel-cmd",
            &tunnel_cmd(),
            "--script",
            CASE,
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        record.status.success(),
        "{}",
        String::from_utf8_lossy(&record.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    let recording: serde_json::Value = serde_json::from_str(&text).unwrap();
    let recorded = recording["recorded"].as_array().unwrap();
    assert!(
        recorded
            .iter()
            .any(|r| r["dir"] == "received" && r.get("eof").is_some())
    );
    assert!(text.contains("<redacted>") && !text.contains("codervpn-conformance-token"));

    let replay = Command::new(BIN)
        .arg("replay")
        .arg(&out)
        .args(["--tunnel-cmd", &tunnel_cmd()])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stdout)
    );
    let broken = Command::new(BIN)
        .arg("replay")
        .arg(&out)
        .args(["--tunnel-stdio-cmd", "cat"])
        .output()
        .unwrap();
    assert_eq!(broken.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&broken.stdout).contains("E-ROLE"));

    // A script is not a recording.
    let script = Command::new(BIN)
        .args(["replay", CASE, "--tunnel-cmd", &tunnel_cmd()])
        .output()
        .unwrap();
    assert_eq!(script.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&script.stderr).contains("no recorded section"));
    let _ = std::fs::remove_dir_all(&dir);
}
