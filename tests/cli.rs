//! `codervpn decode` / `encode` as a user runs them.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_codervpn");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/captures");

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn decodes_the_spec_captures_and_encodes_them_back_exactly() {
    for role in ["manager", "tunnel", "client", "service"] {
        let capture = std::fs::read(format!("{FIXTURES}/spec-{role}.bin")).unwrap();
        let expected = std::fs::read_to_string(format!("{FIXTURES}/spec-{role}.jsonl")).unwrap();
        let decoded = run(&["decode", "--from", role], &capture);
        assert!(decoded.status.success(), "{role}: {}", stderr(&decoded));
        assert_eq!(String::from_utf8(decoded.stdout.clone()).unwrap(), expected);
        let encoded = run(&["encode", "--from", role], &decoded.stdout);
        assert!(encoded.status.success(), "{role}: {}", stderr(&encoded));
        assert_eq!(encoded.stdout, capture, "{role}: decode | encode differs");
    }
}

#[test]
fn reads_a_file_argument() {
    let path = format!("{FIXTURES}/spec-tunnel.bin");
    let out = run(&["decode", "--from", "tunnel", &path], b"");
    assert!(out.status.success());
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .starts_with("codervpn tunnel 1.2\n{")
    );
    let out = run(&["decode", "--from", "tunnel", "/nonexistent/capture"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot open /nonexistent/capture"));
}

/// Legal but non-canonical encodings (unknown fields, unpacked repeated
/// scalars, fields out of order) keep their exact bytes in `@wire`.
#[test]
fn non_canonical_frames_round_trip_through_wire() {
    let mut capture = b"codervpn manager 1.2\n".to_vec();
    // R1: id 11 plus unknown field 9.
    capture.extend([0, 0, 0, 6, 0x0a, 0x02, 0x08, 0x0b, 0x4a, 0x00]);
    // get_peer_update before rpc (field order reversed).
    capture.extend([0, 0, 0, 6, 0x12, 0x00, 0x0a, 0x02, 0x08, 0x02]);
    // A zero-length frame.
    capture.extend([0, 0, 0, 0]);
    let decoded = run(&["decode", "--from", "manager"], &capture);
    assert!(decoded.status.success(), "{}", stderr(&decoded));
    let text = String::from_utf8(decoded.stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], r#"{"rpc":{"msgId":"11"},"@wire":"CgIIC0oA"}"#);
    assert!(lines[2].contains(r#""getPeerUpdate":{}"#) && lines[2].contains("@wire"));
    assert_eq!(lines[3], "{}");
    let encoded = run(&["encode", "--from", "manager"], &decoded.stdout);
    assert_eq!(encoded.stdout, capture);

    // Unpacked repeated scalar: prefix_lengths [128] as a plain varint.
    let mut capture = b"codervpn tunnel 1.2\n".to_vec();
    let payload = [0x22, 0x05, 0x32, 0x03, 0x10, 0x80, 0x01];
    capture.extend([0, 0, 0, payload.len() as u8]);
    capture.extend(payload);
    let decoded = run(&["decode", "--from", "tunnel"], &capture);
    let text = String::from_utf8(decoded.stdout.clone()).unwrap();
    assert!(text.contains(r#""prefixLengths":[128]"#), "{text}");
    assert_eq!(
        run(&["encode", "--from", "tunnel"], &decoded.stdout).stdout,
        capture
    );
}

#[test]
fn an_edited_message_with_stale_wire_bytes_is_refused() {
    let input = "codervpn manager 1.2\n{\"rpc\":{\"msgId\":\"12\"},\"@wire\":\"CgIIC0oA\"}\n";
    let out = run(&["encode", "--from", "manager"], input.as_bytes());
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("line 2") && err.contains("@wire"), "{err}");
}

/// A stream announcing a 4 GiB frame is refused as soon as the 4 length
/// bytes are in, with the input still open and nothing allocated for it.
#[test]
fn a_4_gib_frame_is_refused_at_once() {
    let mut child = Command::new(BIN)
        .args(["decode", "--from", "tunnel"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"codervpn tunnel 1.2\n\0\0\0\x04\x0a\x02\x10\x07\xff\xff\xff\xff")
        .unwrap();
    stdin.flush().unwrap();
    // stdin stays open: the decoder must not wait for the payload.
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "decode waited for a refused payload"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "codervpn tunnel 1.2\n{\"rpc\":{\"responseTo\":\"7\"}}\n"
    );
    let err = stderr(&out);
    assert!(
        err.contains("frame 1 at byte offset 28")
            && err.contains("4294967295")
            && err.contains("§4.2"),
        "{err}"
    );
}

#[test]
fn bad_input_is_named_with_its_offset_and_rule() {
    let cases: [(&str, &[u8], &str); 6] = [
        ("tunnel", b"codervpn manager 1.2\n", "E-ROLE"),
        ("tunnel", b"codervpn 1.0 tunnel\n", "historical header"),
        (
            "manager",
            b"codervpn manager 1.2",
            "stream ended after 20 bytes",
        ),
        ("manager", &[b'x'; 300], "E-OVERSIZE"),
        (
            "manager",
            b"codervpn manager 1.2\n\0\0\0\x06\x0a\x02\x08\x01\x2a",
            "frame 0 at byte offset 21: stream ended inside a frame: 5 of 6 payload bytes",
        ),
        (
            "manager",
            b"codervpn manager 1.2\n\0\0\0\x0a\0\0\0\0\0\0\0\0\0\0",
            "frame 0 at byte offset 21: payload is not a valid vpn.ManagerMessage",
        ),
    ];
    for (role, input, needle) in cases {
        let out = run(&["decode", "--from", role], input);
        assert_eq!(out.status.code(), Some(1), "{needle}");
        let err = stderr(&out);
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    }
}

#[test]
fn encode_names_the_bad_line() {
    let cases: [(&[u8], &str); 5] = [
        (b"", "empty input"),
        (b"codervpn client 1.2\n", "line 1: handshake line"),
        (b"codervpn manager 1.2\n{not json}\n", "line 2: not JSON"),
        (
            b"codervpn manager 1.2\n\n{\"stop\":{},\"bogus\":1}\n",
            "line 3",
        ),
        (b"codervpn manager 1.2\n{\"@wire\":\"%%%\"}\n", "base64"),
    ];
    for (input, needle) in cases {
        let out = run(&["encode", "--from", "manager"], input);
        assert_eq!(out.status.code(), Some(1), "{needle}");
        let err = stderr(&out);
        assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    }
    let out = run(&["decode", "--from", "supervisor"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown role"));
}
