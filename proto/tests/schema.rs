//! The schema is wire-identical to the team's reference copy, and the JSON
//! mapping of representative messages is pinned by snapshots.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bytes::Bytes;
use codervpn_proto::ids::{Uuid, agent_address, uuid_to_wire};
use codervpn_proto::json::{from_json, json_to_payload, payload_to_json, to_json};
use codervpn_proto::vpn::*;
use prost::Message;
use prost_types::FileDescriptorProto;

fn compile(dir: &Path) -> FileDescriptorProto {
    let mut compiler = protox::Compiler::new([dir]).unwrap();
    compiler.include_source_info(false);
    compiler.open_file("vpn.proto").unwrap();
    let set = compiler.file_descriptor_set();
    set.file
        .into_iter()
        .find(|f| f.name() == "vpn.proto")
        .unwrap()
}

/// Same package, messages, enums, field numbers, types and options as
/// `../shared/spec/vpn.proto`; only comments may differ.
#[test]
fn schema_is_wire_identical_to_the_spec() {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/spec");
    if !spec.join("vpn.proto").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have ../shared/spec/vpn.proto beside the clone"
        );
        eprintln!("SKIP: {} not found", spec.display());
        return;
    }
    let ours = compile(Path::new(env!("CARGO_MANIFEST_DIR")));
    let theirs = compile(&spec);
    assert_eq!(ours, theirs);
}

fn id(text: &str) -> Bytes {
    uuid_to_wire(Uuid::parse_str(text).unwrap())
}

fn snapshot<M: codervpn_proto::Envelope>(msg: &M) -> String {
    let json = to_json(msg);
    // Every snapshot is also a round trip.
    assert_eq!(&from_json::<M>(&json).unwrap(), msg);
    serde_json::to_string_pretty(&json).unwrap()
}

#[test]
fn json_of_a_start_request() {
    let start = ManagerMessage {
        rpc: Some(Rpc {
            msg_id: 1,
            response_to: 0,
        }),
        msg: Some(manager_message::Msg::Start(StartRequest {
            tunnel_file_descriptor: 2,
            coder_url: "https://coder.example.com".into(),
            api_token: "fakeToken".into(),
            headers: vec![start_request::Header {
                name: "X-Test-Header".into(),
                value: "test".into(),
            }],
            device_id: "device001".into(),
            device_os: "macOS".into(),
            coder_desktop_version: "0.24.8".into(),
        })),
    };
    insta::assert_snapshot!(snapshot(&start));
}

#[test]
fn json_of_a_peer_update() {
    let ws = id("a0000000-0000-4000-8000-000000000001");
    let agent_id = Uuid::parse_str("01020304-0506-0708-090a-0b0c0d0e0f10").unwrap();
    let update = TunnelMessage {
        rpc: Some(Rpc {
            msg_id: 0,
            response_to: 2,
        }),
        msg: Some(tunnel_message::Msg::PeerUpdate(PeerUpdate {
            upserted_workspaces: vec![Workspace {
                id: ws.clone(),
                name: "wrk".into(),
                status: workspace::Status::Running.into(),
            }],
            upserted_agents: vec![Agent {
                id: uuid_to_wire(agent_id),
                name: "agnt".into(),
                workspace_id: ws.clone(),
                fqdn: vec![
                    "wrk.coder.".into(),
                    "agnt.wrk.me.coder.".into(),
                    "agnt.wrk.rootbeer.coder.".into(),
                ],
                ip_addrs: vec![agent_address(agent_id).to_string()],
                last_handshake: Some(prost_types::Timestamp {
                    seconds: 1_764_000_000,
                    nanos: 500_000_000,
                }),
                last_ping: Some(LastPing {
                    latency: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 100_000_000,
                    }),
                    did_p2p: true,
                    preferred_derp: "Coder Region".into(),
                    preferred_derp_latency: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 500_000_000,
                    }),
                }),
            }],
            deleted_workspaces: vec![],
            deleted_agents: vec![Agent {
                id: id("00000000-0000-0101-0000-000000000000"),
                name: "gone".into(),
                workspace_id: ws,
                // Never handshaked: Go's zero time (§6.7).
                last_handshake: Some(prost_types::Timestamp {
                    seconds: -62_135_596_800,
                    nanos: 0,
                }),
                ..Default::default()
            }],
        })),
    };
    insta::assert_snapshot!(snapshot(&update));
}

#[test]
fn json_of_network_settings_log_and_progress() {
    let settings = TunnelMessage {
        rpc: Some(Rpc {
            msg_id: 1,
            response_to: 0,
        }),
        msg: Some(tunnel_message::Msg::NetworkSettings(
            NetworkSettingsRequest {
                mtu: 1280,
                ipv6_settings: Some(network_settings_request::IPv6Settings {
                    addrs: vec!["fd60:627a:a42b:1a2b:3c4d:5e6f:7a8b:9c0d".into()],
                    prefix_lengths: vec![128],
                    included_routes: vec![network_settings_request::i_pv6_settings::IPv6Route {
                        destination: "fd60:627a:a42b::".into(),
                        prefix_length: 48,
                        router: String::new(),
                    }],
                    excluded_routes: vec![],
                }),
                ..Default::default()
            },
        )),
    };
    insta::assert_snapshot!("network_settings", snapshot(&settings));
    let log = TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::Log(Log {
            level: log::Level::Warn.into(),
            message: "hello".into(),
            logger_names: vec!["vpn".into(), "net".into()],
            fields: vec![log::Field {
                name: "k".into(),
                value: "v".into(),
            }],
        })),
    };
    insta::assert_snapshot!("log", snapshot(&log));
    let progress = ServiceMessage {
        rpc: None,
        msg: Some(service_message::Msg::StartProgress(StartProgress {
            stage: StartProgressStage::Downloading.into(),
            download_progress: Some(StartProgressDownloadProgress {
                bytes_written: 1024,
                bytes_total: Some(4096),
            }),
        })),
    };
    insta::assert_snapshot!("start_progress", snapshot(&progress));
}

/// Input accepts proto field names as well as lowerCamelCase, enums by
/// number as well as by name, and rejects unknown fields.
#[test]
fn json_input_accepts_both_spellings() {
    let camel =
        serde_json::json!({"rpc": {"msgId": "7"}, "start": {"coderUrl": "u", "apiToken": "t"}});
    let snake =
        serde_json::json!({"rpc": {"msg_id": 7}, "start": {"coder_url": "u", "api_token": "t"}});
    let a = from_json::<ManagerMessage>(&camel).unwrap();
    assert_eq!(a, from_json::<ManagerMessage>(&snake).unwrap());
    assert_eq!(a.rpc.unwrap().msg_id, 7);
    let status = serde_json::json!({"status": {"lifecycle": 2}});
    let by_name = serde_json::json!({"status": {"lifecycle": "STARTED"}});
    assert_eq!(
        from_json::<ServiceMessage>(&status).unwrap(),
        from_json::<ServiceMessage>(&by_name).unwrap()
    );
    let typo = serde_json::json!({"start": {"coderURL": "u"}});
    let err = from_json::<ManagerMessage>(&typo).unwrap_err().to_string();
    assert!(err.contains("coderURL"), "{err}");
}

/// Open enums: a level outside 0-5 survives the mapping as a number.
#[test]
fn unknown_enum_values_survive() {
    let payload = TunnelMessage {
        rpc: None,
        msg: Some(tunnel_message::Msg::Log(Log {
            level: 9,
            ..Default::default()
        })),
    }
    .encode_to_vec();
    let json = payload_to_json::<TunnelMessage>(&payload).unwrap();
    assert_eq!(json["log"]["level"], 9);
    assert_eq!(json_to_payload::<TunnelMessage>(&json).unwrap(), payload);
}
