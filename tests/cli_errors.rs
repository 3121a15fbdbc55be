//! Every kind of CLI input, malformed (issue 7 item 4): flags (bad
//! numbers, unknown values, missing, conflicting), scenario files,
//! transcript files, capture files, known-failures files and inherited
//! descriptors. Each must be refused with the right exit status (2 for
//! usage errors where the subcommand uses it) and a message that names
//! what was wrong: the flag, the file, the line, the value. None may hang:
//! every run is bounded.
//!
//! `tests/cli.rs` and `tests/conform.rs` cover more malformed captures and
//! known-failures files; this file goes through the subcommands one by one.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
/// Hang guard on one refused command: none of them should start anything.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs `codervpn ARGS` with `env` set and no input, killing it if it
/// outlives [`RUN_LIMIT`].
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("codervpn {args:?} hung for more than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Refusals print a few lines: the pipes cannot have filled up.
    child.wait_with_output().unwrap()
}

/// `codervpn ARGS` must exit with `code` and say each of `says` on stderr.
fn refused(args: &[&str], code: i32, says: &[&str]) {
    refused_env(args, &[], code, says);
}

fn refused_env(args: &[&str], env: &[(&str, &str)], code: i32, says: &[&str]) {
    let out = run_env(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "codervpn {args:?}: stderr: {stderr}"
    );
    for needle in says {
        assert!(
            stderr.contains(needle),
            "codervpn {args:?}: expected {needle:?} in stderr: {stderr}"
        );
    }
}

/// A scratch folder of files for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cli-errors-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, body: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A transcript that loads, for the flags around it.
const GOOD_TRANSCRIPT: &str =
    r#"{"id":"X-1","title":"t","spec":"s","level":"must","tier":"wire","events":[]}"#;

/// Malformed transcripts -> what the error must name.
const BAD_TRANSCRIPTS: &[(&str, &str, &[&str])] = &[
    ("syntax.json", "{bad", &["syntax.json", "line 1 column 2"]),
    (
        "array.json",
        "[]",
        &["array.json", "expected struct Transcript"],
    ),
    (
        "missing.json",
        r#"{"id":"X-1"}"#,
        &["missing.json", "missing field `title`"],
    ),
    (
        "level.json",
        r#"{"id":"X-1","title":"t","spec":"s","level":"maybe","tier":"wire","events":[]}"#,
        &["level.json", "unknown variant `maybe`", "line 1"],
    ),
    (
        "event.json",
        r#"{"id":"X-1","title":"t","spec":"s","level":"must","tier":"wire","events":[{"dance":{}}]}"#,
        &["event.json", "unknown variant `dance`", "line 1"],
    ),
];

#[test]
fn top_level_usage_errors() {
    refused(&[], 2, &["Usage: codervpn <COMMAND>"]);
    refused(
        &["frobnicate"],
        2,
        &["unrecognized subcommand 'frobnicate'"],
    );
}

#[test]
fn decode_and_encode_refuse_bad_flags_and_bad_captures() {
    let dir = scratch("capture");
    refused(&["decode"], 2, &["--from <FROM>"]);
    refused(&["encode", "--from"], 2, &["--from <FROM>"]);
    refused(&["decode", "--from", "supervisor"], 2, &["unknown role"]);
    refused(
        &["decode", "--from", "tunnel", "/nonexistent/x"],
        1,
        &["cannot open /nonexistent/x"],
    );
    let folder = dir.to_str().unwrap();
    for command in ["decode", "encode"] {
        refused(
            &[command, "--from", "tunnel", folder],
            1,
            &[folder, "directory"],
        );
    }
    // A capture cut inside a frame, and one of random bytes.
    let cut = write(&dir, "cut.bin", b"codervpn tunnel 1.2\n\0\0\0\x06\x0a\x02");
    refused(
        &["decode", "--from", "tunnel", &cut],
        1,
        &["frame 0 at byte offset 20", "stream ended inside a frame"],
    );
    let garbage: Vec<u8> = (0u32..300).map(|i| (i * 97 % 251) as u8).collect();
    let garbage = write(&dir, "garbage.bin", &garbage);
    refused(
        &["decode", "--from", "manager", &garbage],
        1,
        &["handshake line at byte offset 0", "protocol.md §3"],
    );
    // JSON lines: a bad line, a wrong header, a message of the wrong role.
    let lines = write(
        &dir,
        "bad.jsonl",
        b"codervpn manager 1.2\n{\"stop\":{}}\n{oops\n",
    );
    refused(
        &["encode", "--from", "manager", &lines],
        1,
        &["line 3: not JSON"],
    );
    let header = write(&dir, "header.jsonl", b"codervpn tunnel 1.2\n");
    refused(
        &["encode", "--from", "manager", &header],
        1,
        &["line 1: handshake line"],
    );
    let role = write(
        &dir,
        "role.jsonl",
        b"codervpn manager 1.2\n{\"peerUpdate\":{}}\n",
    );
    refused(&["encode", "--from", "manager", &role], 1, &["line 2"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn conform_refuses_bad_flags_before_running_anything() {
    refused(
        &["conform", "--jobs", "x"],
        2,
        &["'--jobs <JOBS>'", "invalid digit"],
    );
    refused(
        &["conform", "--jobs", "0"],
        2,
        &["'--jobs <JOBS>'", "at least 1"],
    );
    refused(
        &["conform", "--timeout-ms", "0"],
        2,
        &["'--timeout-ms <TIMEOUT_MS>'"],
    );
    refused(&["conform", "--timeout-ms", "-5"], 2, &["'-5'"]);
    refused(
        &["conform", "--timeout-ms", "99999999999999999999"],
        2,
        &["'--timeout-ms <TIMEOUT_MS>'", "too large"],
    );
    refused(
        &["conform", "--tier", "foo"],
        2,
        &["'foo'", "--tier", "wire, control, dataplane"],
    );
    refused(
        &["conform", "--level", "maybe"],
        2,
        &["'maybe'", "must, should"],
    );
    refused(
        &["conform", "--format", "xml"],
        2,
        &["'xml'", "human, json, junit"],
    );
    refused(
        &["conform", "--tun-framing", "ethernet"],
        2,
        &["'ethernet'", "raw, utun"],
    );
    refused(&["conform", "--bogus"], 2, &["'--bogus'"]);
    refused(
        &[
            "conform",
            "--tunnel-cmd",
            "a {rpc_read_fd} {rpc_write_fd}",
            "--tunnel-stdio-cmd",
            "b",
        ],
        2,
        &["'--tunnel-cmd <TUNNEL_CMD>' cannot be used with '--tunnel-stdio-cmd"],
    );
    refused(&["conform", "--only", "["], 2, &["bad pattern \"[\""]);
    refused(
        &["conform", "--skip", "HS-[", "--list"],
        2,
        &["bad pattern \"HS-[\""],
    );
    refused(&["conform", "--only", "NOPE-001"], 2, &["no case selected"]);
    refused(
        &["conform", "--tunnel-stdio-cmd", ""],
        2,
        &["the command line is empty"],
    );
    refused(
        &["conform", "--tunnel-cmd", "t --fd 3"],
        2,
        &["{rpc_read_fd}", "\"t --fd 3\""],
    );
    refused(
        &["conform", "--manager-cmd", ""],
        2,
        &["--manager-cmd: the command line is empty"],
    );
    refused(
        &["conform", "--manager-cmd", "mgr"],
        2,
        &["--manager-cmd needs {tunnel_cmd}"],
    );
    refused(
        &["conform", "--service-cmd", "svc 'x"],
        2,
        &["unbalanced quotes"],
    );
    refused(
        &["conform", "--client-cmd", "app"],
        2,
        &["--client-cmd needs {socket}"],
    );
}

#[test]
fn conform_refuses_unusable_files() {
    let dir = scratch("conform");
    let folder = dir.to_str().unwrap();
    refused(
        &["conform", "--expect-fail", folder],
        2,
        &["known-failures file", folder],
    );
    let binary = write(&dir, "known.bin", &[0xff, 0xfe, 0x00, 0x80]);
    refused(
        &["conform", "--expect-fail", &binary],
        2,
        &["known.bin", "UTF-8"],
    );
    let bad = write(&dir, "known.txt", b"HS-001  ok\nHS-002\n");
    refused(
        &["conform", "--expect-fail", &bad],
        2,
        &["known.txt, line 2", "no reason"],
    );
    // Unwritable outputs: found once the (one, quick) case has run.
    let output = dir.join("missing").join("report.json");
    refused(
        &[
            "conform",
            "--only",
            "HS-001",
            "--output",
            output.to_str().unwrap(),
        ],
        2,
        &["cannot write", "report.json"],
    );
    let artifacts = write(&dir, "a-file", b"");
    refused(
        &["conform", "--only", "HS-001", "--artifacts", &artifacts],
        2,
        &["cannot create", "a-file"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tunnel_refuses_bad_descriptors_and_flags() {
    for command in [&["tunnel"][..], &["vpn-daemon", "run"][..]] {
        let with = |extra: &[&'static str]| [command, extra].concat();
        refused(
            &with(&["--rpc-read-fd", "3"]),
            2,
            &["--rpc-read-fd and --rpc-write-fd go together"],
        );
        refused(
            &with(&["--rpc-read-fd", "3", "--rpc-write-fd", "3"]),
            2,
            &["must be different (both are 3)"],
        );
        refused(
            &with(&["--rpc-read-fd", "-1", "--rpc-write-fd", "4"]),
            2,
            &["rpc-read-fd (-1)", "must be positive"],
        );
        refused(
            &with(&["--rpc-read-fd", "100", "--rpc-write-fd", "101"]),
            2,
            &["rpc-read-fd (100) is not an open descriptor"],
        );
        refused(
            &with(&["--rpc-read-fd", "three", "--rpc-write-fd", "4"]),
            2,
            &["'three'", "--rpc-read-fd"],
        );
    }
    refused_env(
        &["tunnel"],
        &[("CODER_VPN_DAEMON_RPC_READ_FD", "abc")],
        2,
        &["'abc'", "--rpc-read-fd"],
    );
    refused_env(
        &["tunnel"],
        &[("CODER_VPN_DAEMON_RPC_WRITE_FD", "7")],
        2,
        &["--rpc-read-fd and --rpc-write-fd go together"],
    );
    refused(
        &["tunnel", "--tun-framing", "eth"],
        2,
        &["'eth'", "expected raw or utun"],
    );
    refused(
        &["tunnel", "--mtu", "100"],
        2,
        &["'--mtu <MTU>'", "1280..=65535"],
    );
    refused(
        &["tunnel", "--versions", "abc"],
        2,
        &["'--versions <VERSIONS>'", "\"abc\""],
    );
    refused(
        &["tunnel", "--log-level", "loud"],
        2,
        &["'--log-level <LOG_LEVEL>'"],
    );
    refused(
        &["tunnel", "--manager-log-level", "x"],
        2,
        &["'--manager-log-level <MANAGER_LOG_LEVEL>'"],
    );
    refused(
        &["tunnel", "--update-interval-ms", "soon"],
        2,
        &["'--update-interval-ms <UPDATE_INTERVAL_MS>'"],
    );
    refused(
        &["tunnel", "--wg-listen-port", "70000"],
        2,
        &["'--wg-listen-port <WG_LISTEN_PORT>'"],
    );
}

/// Scenario files: bad JSON, a bad field, a bad type, a missing file.
/// `mock-coder` reports them with exit 1 like its other start-up errors.
#[test]
fn mock_coder_refuses_bad_scenarios_and_flags() {
    let dir = scratch("scenario");
    let syntax = write(&dir, "syntax.json", b"{\"workspaces\": [");
    refused(
        &["mock-coder", "--scenario", &syntax],
        1,
        &["scenario file", "syntax.json", "line 1"],
    );
    let field = write(
        &dir,
        "field.json",
        br#"{"workspaces":[{"name":"w","agents":[{"name":"a","bogus":1}]}]}"#,
    );
    refused(
        &["mock-coder", "--scenario", &field],
        1,
        &["field.json", "unknown field `bogus`", "column"],
    );
    let typed = write(&dir, "type.json", br#"{"workspaces":[{"name":1}]}"#);
    refused(
        &["mock-coder", "--scenario", &typed],
        1,
        &["type.json", "expected a string"],
    );
    refused(
        &["mock-coder", "--scenario", "/nonexistent/s.json"],
        1,
        &["cannot read scenario file /nonexistent/s.json"],
    );
    refused(
        &["mock-coder", "--listen", "nowhere"],
        2,
        &["'nowhere'", "--listen"],
    );
    refused(
        &["mock-coder", "--agent-bind", "1.2.3"],
        2,
        &["'1.2.3'", "--agent-bind"],
    );
    refused(
        &["mock-coder", "--download-size", "999999999999"],
        2,
        &["--download-size", "0..="],
    );
    refused(
        &["mock-coder", "--download-rate", "fast"],
        2,
        &["'fast'", "--download-rate"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Transcript files wherever one is read: record's script, replay's
/// recording, mock-client's and fake-service's transcript.
#[test]
fn transcript_files_are_refused_naming_file_and_position() {
    let dir = scratch("transcripts");
    let out = dir.join("out.json");
    let out = out.to_str().unwrap();
    let socket = dir.join("s.sock");
    let socket = socket.to_str().unwrap();
    for (name, body, says) in BAD_TRANSCRIPTS {
        let path = write(&dir, name, body.as_bytes());
        refused(
            &[
                "record",
                "--script",
                &path,
                "--out",
                out,
                "--tunnel-stdio-cmd",
                "cat",
            ],
            2,
            says,
        );
        refused(&["replay", &path, "--tunnel-stdio-cmd", "cat"], 2, says);
        refused(
            &["mock-client", "--socket", socket, "--transcript", &path],
            2,
            says,
        );
        refused(
            &["fake-service", "--socket", socket, "--transcript", &path],
            2,
            says,
        );
    }
    assert!(!Path::new(out).exists(), "a recording was written");
    let good = write(&dir, "good.json", GOOD_TRANSCRIPT.as_bytes());
    refused(
        &["replay", &good, "--tunnel-stdio-cmd", "cat"],
        2,
        &["good.json has no recorded section"],
    );
    refused(
        &[
            "record",
            "--script",
            "/nonexistent/s.json",
            "--out",
            out,
            "--tunnel-stdio-cmd",
            "cat",
        ],
        2,
        &["cannot read /nonexistent/s.json"],
    );
    refused(
        &["replay", "/nonexistent/r.json", "--tunnel-stdio-cmd", "cat"],
        2,
        &["cannot read /nonexistent/r.json"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn record_and_replay_refuse_bad_targets() {
    let dir = scratch("targets");
    let good = write(&dir, "good.json", GOOD_TRANSCRIPT.as_bytes());
    refused(
        &["record", "--script", &good, "--out", "o.json"],
        2,
        &["--tunnel-cmd <TUNNEL_CMD>"],
    );
    refused(
        &[
            "record",
            "--script",
            &good,
            "--out",
            "o.json",
            "--tunnel-cmd",
            "a",
            "--tunnel-stdio-cmd",
            "b",
        ],
        2,
        &["cannot be used with"],
    );
    refused(
        &["replay", "--tunnel-stdio-cmd", "cat"],
        2,
        &["<TRANSCRIPT>"],
    );
    refused(
        &[
            "record",
            "--script",
            &good,
            "--out",
            "o.json",
            "--tunnel-cmd",
            "t",
        ],
        2,
        &["{rpc_read_fd}"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mock_tunnel_and_faulty_tunnel_refuse_bad_input() {
    let report = "/nonexistent/report.sock";
    let base = ["mock-tunnel", "--case", "HS-001", "--report", report];
    refused(
        &[
            "mock-tunnel",
            "--case",
            "NOPE-1",
            "--report",
            report,
            "--rpc-read-fd",
            "0",
            "--rpc-write-fd",
            "1",
        ],
        2,
        &["no case \"NOPE-1\" in the catalogue"],
    );
    refused(
        &[&base[..], &["--rpc-read-fd", "3", "--rpc-write-fd", "3"]].concat(),
        2,
        &["must be different"],
    );
    refused(
        &[&base[..], &["--rpc-read-fd", "3"]].concat(),
        2,
        &["go together"],
    );
    refused(
        &[&base[..], &["extra"]].concat(),
        2,
        &["unexpected arguments [\"extra\"]"],
    );
    refused(&["mock-tunnel", "--report", report], 2, &["--case <CASE>"]);
    refused(
        &["faulty-tunnel", "--fault", "nope"],
        2,
        &["unknown fault \"nope\"", "wrong-role"],
    );
    refused(
        &[
            "faulty-tunnel",
            "--fault",
            "wrong-role",
            "--rpc-read-fd",
            "5",
        ],
        2,
        &["go together"],
    );
}

#[test]
fn mock_manager_refuses_bad_input() {
    refused(&["mock-manager"], 2, &["--tunnel-cmd <TUNNEL_CMD>"]);
    refused(
        &["mock-manager", "--tunnel-cmd", "t", "--fault", "nope"],
        2,
        &["unknown fault \"nope\"", "first-id-five"],
    );
    refused(
        &["mock-manager", "--tunnel-cmd", "t", "--hold-ms", "x"],
        2,
        &["'--hold-ms <HOLD_MS>'"],
    );
    refused(
        &[
            "mock-manager",
            "--tunnel-cmd",
            "t",
            "--reply-timeout-ms",
            "-1",
        ],
        2,
        &["'-1'"],
    );
    refused(
        &["mock-manager", "--tunnel-cmd", "'t"],
        1,
        &["unbalanced quotes"],
    );
    refused(
        &["mock-manager", "--tunnel-cmd", "/nonexistent/t"],
        1,
        &["cannot start \"/nonexistent/t\""],
    );
}

#[test]
fn mock_service_refuses_bad_input() {
    let dir = scratch("service");
    let socket = dir.join("s.sock");
    let socket = socket.to_str().unwrap();
    let base = ["mock-service", "--log-level", "error", "--socket", socket];
    refused(&["mock-service"], 2, &["--socket <PATH>"]);
    refused(
        &[&base[..], &["--download-path", "bin/x"]].concat(),
        2,
        &["--download-path must start with '/'"],
    );
    refused(
        &[&base[..], &["--versions", "q"]].concat(),
        2,
        &["'q'", "--versions"],
    );
    refused(
        &[&base[..], &["--lock-wait-ms", "x"]].concat(),
        2,
        &["'--lock-wait-ms <MS>'"],
    );
    refused(
        &["mock-service", "--log-level", "x", "--socket", socket],
        2,
        &["'--log-level <LOG_LEVEL>'"],
    );
    refused(
        &[&base[..], &["--tunnel-cmd", "t"]].concat(),
        2,
        &["{rpc_read_fd}", "\"t\""],
    );
    refused(
        &[&base[..], &["--tunnel-cmd", "'t"]].concat(),
        2,
        &["unbalanced quotes"],
    );
    refused(
        &[
            &base[..],
            &[
                "--tunnel-cmd",
                "a {rpc_read_fd} {rpc_write_fd}",
                "--tunnel-stdio-cmd",
                "b",
            ],
        ]
        .concat(),
        2,
        &["cannot be used with"],
    );
    refused(
        &[
            "mock-service",
            "--log-level",
            "error",
            "--socket",
            "/nonexistent/dir/s.sock",
        ],
        2,
        &["cannot listen on /nonexistent/dir/s.sock"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mock_client_refuses_bad_input() {
    let socket = "/nonexistent/s.sock";
    refused(&["mock-client"], 2, &["--socket <SOCKET>"]);
    refused(
        &["mock-client", "--socket", socket, "--versions", "zz"],
        2,
        &["--versions", "\"zz\""],
    );
    refused(
        &["mock-client", "--socket", socket, "--fault", "nope"],
        2,
        &["unknown fault \"nope\"", "no-reconnect"],
    );
    refused(
        &["mock-client", "--socket", socket, "--record", "r.json"],
        2,
        &["--transcript <FILE>"],
    );
    refused(
        &["mock-client", "--socket", socket, "--stop-after-ms", "soon"],
        2,
        &["'--stop-after-ms <MS>'"],
    );
    refused(
        &["fake-service", "--socket", socket],
        2,
        &["--transcript <FILE>"],
    );
}
