//! Property tests: arbitrary messages survive encode -> arbitrary chunking ->
//! decode, and the proto3 JSON mapping, unchanged.

#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use codervpn_codec::MessageCodec;
use codervpn_codec::frame::{MAX_FRAME_LEN, encode_frame};
use codervpn_proto::json::{from_json, to_json};
use codervpn_proto::vpn::{log, network_settings_request as ns, start_request};
use codervpn_proto::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tokio_util::codec::Decoder;

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._:/\u{e9}\u{4e2d}-]{0,24}"
}

fn uuid() -> impl Strategy<Value = Bytes> {
    any::<[u8; 16]>().prop_map(|b| Bytes::copy_from_slice(&b))
}

fn rpc() -> impl Strategy<Value = Option<Rpc>> {
    option::of(
        (any::<u64>(), any::<u64>()).prop_map(|(msg_id, response_to)| Rpc {
            msg_id,
            response_to,
        }),
    )
}

fn timestamp() -> impl Strategy<Value = prost_types::Timestamp> {
    // The range proto3 JSON can express (years 1 to 9999).
    (-62_135_596_800i64..253_402_300_799, 0i32..1_000_000_000)
        .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
}

fn duration() -> impl Strategy<Value = prost_types::Duration> {
    (0i64..315_576_000_000, 0i32..1_000_000_000)
        .prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos })
}

fn agent() -> impl Strategy<Value = Agent> {
    (
        uuid(),
        text(),
        uuid(),
        vec(text(), 0..4),
        vec(text(), 0..2),
        option::of(timestamp()),
        option::of((
            option::of(duration()),
            any::<bool>(),
            text(),
            option::of(duration()),
        )),
    )
        .prop_map(
            |(id, name, workspace_id, fqdn, ip_addrs, last_handshake, ping)| Agent {
                id,
                name,
                workspace_id,
                fqdn,
                ip_addrs,
                last_handshake,
                last_ping: ping.map(
                    |(latency, did_p2p, preferred_derp, preferred_derp_latency)| LastPing {
                        latency,
                        did_p2p,
                        preferred_derp,
                        preferred_derp_latency,
                    },
                ),
            },
        )
}

fn workspace() -> impl Strategy<Value = Workspace> {
    (uuid(), text(), 0i32..=10).prop_map(|(id, name, status)| Workspace { id, name, status })
}

fn peer_update() -> impl Strategy<Value = PeerUpdate> {
    (
        vec(workspace(), 0..3),
        vec(agent(), 0..3),
        vec(workspace(), 0..2),
        vec(agent(), 0..2),
    )
        .prop_map(|(uw, ua, dw, da)| PeerUpdate {
            upserted_workspaces: uw,
            upserted_agents: ua,
            deleted_workspaces: dw,
            deleted_agents: da,
        })
}

fn network_settings() -> impl Strategy<Value = NetworkSettingsRequest> {
    let dns = (
        vec(text(), 0..2),
        vec(text(), 0..2),
        text(),
        vec(text(), 0..2),
        any::<bool>(),
    )
        .prop_map(
            |(servers, search_domains, domain_name, match_domains, no_search)| ns::DnsSettings {
                servers,
                search_domains,
                domain_name,
                match_domains,
                match_domains_no_search: no_search,
            },
        );
    let v4route = || {
        (text(), text(), text()).prop_map(|(destination, mask, router)| {
            ns::i_pv4_settings::IPv4Route {
                destination,
                mask,
                router,
            }
        })
    };
    let v4 = (
        vec(text(), 0..2),
        vec(text(), 0..2),
        text(),
        vec(v4route(), 0..2),
        vec(v4route(), 0..2),
    )
        .prop_map(
            |(addrs, subnet_masks, router, included_routes, excluded_routes)| ns::IPv4Settings {
                addrs,
                subnet_masks,
                router,
                included_routes,
                excluded_routes,
            },
        );
    let v6route = || {
        (text(), any::<u32>(), text()).prop_map(|(destination, prefix_length, router)| {
            ns::i_pv6_settings::IPv6Route {
                destination,
                prefix_length,
                router,
            }
        })
    };
    let v6 = (
        vec(text(), 0..2),
        vec(any::<u32>(), 0..3),
        vec(v6route(), 0..2),
        vec(v6route(), 0..2),
    )
        .prop_map(
            |(addrs, prefix_lengths, included_routes, excluded_routes)| ns::IPv6Settings {
                addrs,
                prefix_lengths,
                included_routes,
                excluded_routes,
            },
        );
    (
        any::<u32>(),
        any::<u32>(),
        option::of(dns),
        text(),
        option::of(v4),
        option::of(v6),
    )
        .prop_map(
            |(
                tunnel_overhead_bytes,
                mtu,
                dns_settings,
                tunnel_remote_address,
                ipv4_settings,
                ipv6_settings,
            )| {
                NetworkSettingsRequest {
                    tunnel_overhead_bytes,
                    mtu,
                    dns_settings,
                    tunnel_remote_address,
                    ipv4_settings,
                    ipv6_settings,
                }
            },
        )
}

fn start_request() -> impl Strategy<Value = StartRequest> {
    let header = (text(), text()).prop_map(|(name, value)| start_request::Header { name, value });
    (
        any::<i32>(),
        text(),
        text(),
        vec(header, 0..3),
        text(),
        text(),
        text(),
    )
        .prop_map(
            |(fd, coder_url, api_token, headers, device_id, device_os, version)| StartRequest {
                tunnel_file_descriptor: fd,
                coder_url,
                api_token,
                headers,
                device_id,
                device_os,
                coder_desktop_version: version,
            },
        )
}

fn result() -> impl Strategy<Value = (bool, String)> {
    (any::<bool>(), text())
}

fn tunnel_message() -> impl Strategy<Value = TunnelMessage> {
    use tunnel_message::Msg;
    let log = (
        -1i32..7,
        text(),
        vec(text(), 0..3),
        vec((text(), text()), 0..3),
    )
        .prop_map(|(level, message, logger_names, fields)| Log {
            level,
            message,
            logger_names,
            fields: fields
                .into_iter()
                .map(|(name, value)| log::Field { name, value })
                .collect(),
        });
    let arm = prop_oneof![
        log.prop_map(Msg::Log),
        peer_update().prop_map(Msg::PeerUpdate),
        network_settings().prop_map(Msg::NetworkSettings),
        result().prop_map(|(success, error_message)| Msg::Start(StartResponse {
            success,
            error_message
        })),
        result().prop_map(|(success, error_message)| Msg::Stop(StopResponse {
            success,
            error_message
        })),
    ];
    (rpc(), option::of(arm)).prop_map(|(rpc, msg)| TunnelMessage { rpc, msg })
}

fn manager_message() -> impl Strategy<Value = ManagerMessage> {
    use manager_message::Msg;
    let arm = prop_oneof![
        Just(Msg::GetPeerUpdate(GetPeerUpdate {})),
        result().prop_map(|(success, error_message)| Msg::NetworkSettings(
            NetworkSettingsResponse {
                success,
                error_message
            }
        )),
        start_request().prop_map(Msg::Start),
        Just(Msg::Stop(StopRequest {})),
    ];
    (rpc(), option::of(arm)).prop_map(|(rpc, msg)| ManagerMessage { rpc, msg })
}

fn service_message() -> impl Strategy<Value = ServiceMessage> {
    use service_message::Msg;
    let progress = (
        0i32..3,
        option::of((any::<u64>(), option::of(any::<u64>()))),
    )
        .prop_map(|(stage, download)| StartProgress {
            stage,
            download_progress: download.map(|(bytes_written, bytes_total)| {
                vpn::StartProgressDownloadProgress {
                    bytes_written,
                    bytes_total,
                }
            }),
        });
    let status = (0i32..5, text(), option::of(peer_update())).prop_map(
        |(lifecycle, error_message, peer_update)| Status {
            lifecycle,
            error_message,
            peer_update,
        },
    );
    let arm = prop_oneof![
        result().prop_map(|(success, error_message)| Msg::Start(StartResponse {
            success,
            error_message
        })),
        result().prop_map(|(success, error_message)| Msg::Stop(StopResponse {
            success,
            error_message
        })),
        status.prop_map(Msg::Status),
        progress.prop_map(Msg::StartProgress),
    ];
    (rpc(), option::of(arm)).prop_map(|(rpc, msg)| ServiceMessage { rpc, msg })
}

fn client_message() -> impl Strategy<Value = ClientMessage> {
    use client_message::Msg;
    let arm = prop_oneof![
        start_request().prop_map(Msg::Start),
        Just(Msg::Stop(StopRequest {})),
        Just(Msg::Status(StatusRequest {})),
    ];
    (rpc(), option::of(arm)).prop_map(|(rpc, msg)| ClientMessage { rpc, msg })
}

/// Encodes `msgs` (empty ones as zero-length frames), cuts the stream at
/// `cuts`, feeds the pieces one by one and collects what comes out.
fn through_chunks<M: Envelope>(msgs: &[M], cuts: &[usize]) -> Vec<M> {
    let mut stream = Vec::new();
    for msg in msgs {
        match encode_frame(msg, MAX_FRAME_LEN) {
            Ok(frame) => stream.extend_from_slice(&frame),
            Err(_) => stream.extend_from_slice(&[0, 0, 0, 0]),
        }
    }
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut codec = MessageCodec::<M, M>::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for point in points {
        buf.extend_from_slice(&stream[at..point]);
        at = point;
        while let Some(msg) = codec.decode(&mut buf).unwrap() {
            out.push(msg);
        }
    }
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    out
}

fn msg_types<M: Envelope>(
    strategy: impl Strategy<Value = M>,
) -> impl Strategy<Value = (Vec<M>, Vec<usize>)> {
    (vec(strategy, 1..6), vec(any::<usize>(), 0..12))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn tunnel_messages_survive_any_chunking((msgs, cuts) in msg_types(tunnel_message())) {
        prop_assert_eq!(through_chunks(&msgs, &cuts), msgs);
    }

    #[test]
    fn manager_messages_survive_any_chunking((msgs, cuts) in msg_types(manager_message())) {
        prop_assert_eq!(through_chunks(&msgs, &cuts), msgs);
    }

    #[test]
    fn service_and_client_messages_survive_any_chunking(
        (svc, cuts) in msg_types(service_message()),
        (cli, cuts2) in msg_types(client_message()),
    ) {
        prop_assert_eq!(through_chunks(&svc, &cuts), svc);
        prop_assert_eq!(through_chunks(&cli, &cuts2), cli);
    }

    #[test]
    fn json_mapping_round_trips(
        t in tunnel_message(),
        m in manager_message(),
        s in service_message(),
        c in client_message(),
    ) {
        prop_assert_eq!(from_json::<TunnelMessage>(&to_json(&t)).unwrap(), t);
        prop_assert_eq!(from_json::<ManagerMessage>(&to_json(&m)).unwrap(), m);
        prop_assert_eq!(from_json::<ServiceMessage>(&to_json(&s)).unwrap(), s);
        prop_assert_eq!(from_json::<ClientMessage>(&to_json(&c)).unwrap(), c);
    }
}
