//! Embedded mock agents, driven the way a tunnel drives them: announce a
//! key on a real coordination stream, read the agent's node from the
//! update, shake hands over real UDP with an in-test boringtun peer, then
//! ping, UDP echo, spoofed echo, discard, TCP echo (a smoltcp client), and
//! garbage; deletion, re-adding and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use codervpn_mock_coder::{
    AGENTS_PATH, Action, AgentSpec, AgentStats, MockCoder, NODES_PATH, SPOOFED_SOURCE, Scenario,
    WorkspaceSpec,
};
use codervpn_proto::ids;
use codervpn_reference_tunnel::control::api::{
    AgentInfo, ClientMessage, Node, TunnelNode, User, WorkspaceStatus,
};
use codervpn_reference_tunnel::dataplane::keys;
use common::{WAIT, Ws, dial, eventually, next_update, send_text, start};
use etherparse::{Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use tokio::net::UdpSocket;
use uuid::Uuid;

const WORKSPACE: Uuid = Uuid::from_u128(0x0100_0000_0000_0000_0000);
const AGENT: Uuid = Uuid::from_u128(0x0101_0000_0000_0000_0000);
const OFFLINE: Uuid = Uuid::from_u128(0x0102_0000_0000_0000_0000);
const SCENARIO_KEY: &str = "ERERERERERERERERERERERERERERERERERERERERERE=";
/// How long a test waits to be sure that no answer comes.
const QUIET: Duration = Duration::from_millis(400);

fn scenario() -> Scenario {
    Scenario {
        user: User {
            id: Uuid::from_u128(1),
            username: "u".into(),
        },
        hostname_suffix: "coder".into(),
        version: "v2.24.3".into(),
        disable_direct_connections: false,
        workspaces: vec![WorkspaceSpec {
            id: WORKSPACE,
            name: "wrk".into(),
            status: WorkspaceStatus::Running,
            agents: vec![
                AgentSpec {
                    id: AGENT,
                    name: "agnt".into(),
                    node: Some(Node {
                        public_key: SCENARIO_KEY.into(),
                        endpoint: None,
                    }),
                    external_node: None,
                },
                AgentSpec {
                    id: OFFLINE,
                    name: "off".into(),
                    node: None,
                    external_node: None,
                },
            ],
        }],
        timeline: Vec::new(),
    }
}

/// The tunnel's own inner address.
fn tunnel_address() -> Ipv6Addr {
    ids::agent_address(Uuid::from_u128(0xabcd_0000_0000_1234_5678_9abc))
}

/// A tunnel as far as an agent can tell: a key, a UDP socket, a session.
struct Client {
    tunn: Tunn,
    socket: UdpSocket,
    agent: SocketAddr,
    buffer: Vec<u8>,
    out: Vec<u8>,
}

impl Client {
    async fn new(secret: StaticSecret, agent: &Node) -> Client {
        let public = keys::parse(&agent.public_key).unwrap();
        Client {
            tunn: Tunn::new(secret, public, None, None, 7, None),
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            agent: agent.endpoint.unwrap(),
            buffer: vec![0; 65_536],
            out: vec![0; 65_536 + 256],
        }
    }

    async fn send_datagram(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.agent).await.unwrap();
    }

    /// Sends one inner packet (starting a handshake if there is no session).
    async fn send(&mut self, inner: &[u8]) {
        match self.tunn.encapsulate(inner, &mut self.out) {
            TunnResult::WriteToNetwork(bytes) => {
                let bytes = bytes.to_vec();
                self.send_datagram(&bytes).await;
            }
            TunnResult::Done => {}
            other => panic!("encapsulate: {other:?}"),
        }
    }

    /// The next inner packet from the agent, within `wait`; handshake
    /// traffic is handled on the way.
    async fn recv_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let received =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.buffer)).await;
            let Ok(received) = received else {
                return None;
            };
            let (len, _) = received.unwrap();
            let datagram = self.buffer[..len].to_vec();
            let mut result = self.tunn.decapsulate(None, &datagram, &mut self.out);
            loop {
                match result {
                    TunnResult::WriteToNetwork(bytes) => {
                        let bytes = bytes.to_vec();
                        self.socket.send_to(&bytes, self.agent).await.unwrap();
                        result = self.tunn.decapsulate(None, &[], &mut self.out);
                    }
                    TunnResult::WriteToTunnelV6(bytes, _) => return Some(bytes.to_vec()),
                    TunnResult::Done => break,
                    other => panic!("decapsulate: {other:?}"),
                }
            }
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        self.recv_within(WAIT)
            .await
            .expect("no answer from the agent")
    }
}

/// The mock, a stream with the tunnel's node announced, and a client whose
/// key is that node's.
async fn setup() -> (MockCoder, Ws, Client, AgentInfo) {
    let mock = start(scenario()).await;
    let mut ws = dial(&mock).await;
    let snapshot = next_update(&mut ws).await;
    let agent = snapshot
        .upserted_agents
        .iter()
        .find(|a| a.id == AGENT)
        .unwrap()
        .clone();
    let secret = keys::generate();
    announce(&mock, &mut ws, &secret, Some(tunnel_address())).await;
    let client = Client::new(secret, agent.node.as_ref().unwrap()).await;
    (mock, ws, client, agent)
}

async fn announce(mock: &MockCoder, ws: &mut Ws, secret: &StaticSecret, address: Option<Ipv6Addr>) {
    let before = mock.tunnel_nodes().len();
    let node = TunnelNode {
        public_key: keys::to_base64(&PublicKey::from(secret)),
        endpoint: None,
        addresses: address.map(|a| format!("{a}/128")).into_iter().collect(),
    };
    let text = serde_json::to_string(&ClientMessage::Node(node)).unwrap();
    send_text(ws, &text).await;
    eventually(|| mock.tunnel_nodes().len() > before).await;
}

fn stats(mock: &MockCoder) -> AgentStats {
    mock.agent_stats()
        .into_iter()
        .find(|a| a.id == AGENT)
        .expect("agent running")
}

fn ping(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).icmpv6_echo_request(id, seq);
    let mut packet = Vec::new();
    builder.write(&mut packet, payload).unwrap();
    packet
}

fn udp(src: Ipv6Addr, dst: Ipv6Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(50000, port);
    let mut packet = Vec::new();
    builder.write(&mut packet, payload).unwrap();
    packet
}

fn addresses(packet: &[u8]) -> (Ipv6Addr, Ipv6Addr) {
    let sliced = SlicedPacket::from_ip(packet).unwrap();
    let Some(NetSlice::Ipv6(ip)) = sliced.net else {
        panic!("not IPv6")
    };
    (ip.header().source_addr(), ip.header().destination_addr())
}

#[tokio::test]
async fn online_agents_are_published_with_their_own_key_and_socket() {
    let mock = start(scenario()).await;
    let mut ws = dial(&mock).await;
    let snapshot = next_update(&mut ws).await;
    let agent = snapshot
        .upserted_agents
        .iter()
        .find(|a| a.id == AGENT)
        .unwrap();
    let node = agent.node.as_ref().unwrap();
    assert_ne!(node.public_key, SCENARIO_KEY);
    keys::parse(&node.public_key).unwrap();
    let endpoint = node.endpoint.unwrap();
    assert_eq!(endpoint.ip().to_string(), "127.0.0.1");
    assert_ne!(endpoint.port(), 0);
    let offline = snapshot
        .upserted_agents
        .iter()
        .find(|a| a.id == OFFLINE)
        .unwrap();
    assert!(offline.node.is_none());

    let all = mock.agent_stats();
    assert_eq!(all.len(), 1, "only the online agent runs");
    assert_eq!(all[0].public_key, node.public_key);
    assert_eq!(all[0].endpoint, endpoint);
    assert_eq!(all[0].name, "agnt");
    assert_eq!(all[0].address, ids::agent_address(AGENT));
    assert_eq!(all[0].ping_address, ids::ping_address(AGENT));

    // The same over HTTP.
    let body: Vec<AgentStats> = common::client()
        .get(format!("{}{AGENTS_PATH}", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, all);
    // A snapshot carries the same node.
    mock.apply(Action::SendSnapshot);
    let again = next_update(&mut ws).await;
    assert_eq!(again.upserted_agents, snapshot.upserted_agents);
    mock.shutdown().await;
}

#[tokio::test]
async fn pings_and_udp_services_answer_through_wireguard() {
    let (mock, _ws, mut client, _agent) = setup().await;
    let me = tunnel_address();
    let coder = ids::agent_address(AGENT);
    let tailscale = ids::ping_address(AGENT);

    // ICMPv6 echo on both addresses, answered from the pinged address.
    for (seq, dst) in [(1u16, coder), (2, tailscale)] {
        client
            .send(&ping(me, dst, 0x4242, seq, b"codervpn ping"))
            .await;
        let reply = client.recv().await;
        assert_eq!(addresses(&reply), (dst, me));
        let sliced = SlicedPacket::from_ip(&reply).unwrap();
        let Some(TransportSlice::Icmpv6(icmp)) = sliced.transport else {
            panic!("not ICMPv6")
        };
        assert!(icmp.is_checksum_valid(dst.octets(), me.octets()));
        let Icmpv6Type::EchoReply(echo) = icmp.icmp_type() else {
            panic!("not an echo reply")
        };
        assert_eq!((echo.id, echo.seq), (0x4242, seq));
        assert_eq!(icmp.payload(), b"codervpn ping");
    }
    assert_eq!(stats(&mock).handshakes, 1);

    // UDP echo.
    client.send(&udp(me, coder, 7, b"echo me")).await;
    let reply = client.recv().await;
    assert_eq!(addresses(&reply), (coder, me));
    let sliced = SlicedPacket::from_ip(&reply).unwrap();
    let Some(TransportSlice::Udp(datagram)) = sliced.transport else {
        panic!("not UDP")
    };
    assert_eq!(
        (datagram.source_port(), datagram.destination_port()),
        (7, 50000)
    );
    assert_eq!(datagram.payload(), b"echo me");

    // Spoofed echo: same, but from an address that is not the agent's.
    client.send(&udp(me, coder, 8, b"spoof")).await;
    let reply = client.recv().await;
    assert_eq!(addresses(&reply), (SPOOFED_SOURCE, me));
    assert_eq!(SPOOFED_SOURCE.to_string(), "fd60:627a:a42b::bad");

    // Discard: no answer, counted.
    client.send(&udp(me, tailscale, 9, &[0; 100])).await;
    assert_eq!(client.recv_within(QUIET).await, None);
    let stats = stats(&mock);
    assert_eq!(stats.discarded_packets, 1);
    assert_eq!(stats.discarded_bytes, 100);
    assert_eq!(stats.rx_packets, 5);
    assert_eq!(stats.tx_packets, 4);
    assert_eq!(stats.last_inner_source, Some(me));
    assert_eq!(stats.dropped.total(), 0, "{:?}", stats.dropped);
    assert_eq!(stats.peers.len(), 1);
    assert_eq!(
        stats.peers[0].endpoint,
        Some(client.socket.local_addr().unwrap())
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn replies_follow_a_roaming_tunnel() {
    let (mock, _ws, mut client, _agent) = setup().await;
    let me = tunnel_address();
    let coder = ids::agent_address(AGENT);
    client.send(&ping(me, coder, 1, 1, b"a")).await;
    client.recv().await;
    // Same session, new socket: the agent answers at the new address.
    client.socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send(&ping(me, coder, 1, 2, b"b")).await;
    let reply = client.recv().await;
    assert_eq!(addresses(&reply), (coder, me));
    assert_eq!(
        stats(&mock).peers[0].endpoint,
        Some(client.socket.local_addr().unwrap())
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn bad_inner_packets_are_dropped_with_their_reason() {
    let (mock, _ws, mut client, _agent) = setup().await;
    let me = tunnel_address();
    let coder = ids::agent_address(AGENT);
    client.send(&ping(me, coder, 1, 1, b"a")).await;
    client.recv().await;

    // A source the tunnel did not announce.
    let stranger = ids::agent_address(Uuid::from_u128(99));
    client.send(&ping(stranger, coder, 1, 2, b"a")).await;
    // Another agent's address as destination.
    client
        .send(&ping(me, ids::agent_address(OFFLINE), 1, 3, b"a"))
        .await;
    // A closed UDP port, and IPv4.
    client.send(&udp(me, coder, 1234, b"x")).await;
    let v4 = {
        let builder = PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64).udp(1, 7);
        let mut packet = Vec::new();
        builder.write(&mut packet, b"v4").unwrap();
        packet
    };
    client.send(&v4).await;
    assert_eq!(client.recv_within(QUIET).await, None);
    let dropped = stats(&mock).dropped;
    assert_eq!(dropped.bad_source, 1, "{dropped:?}");
    assert_eq!(dropped.bad_destination, 1, "{dropped:?}");
    assert_eq!(dropped.unknown_port, 1, "{dropped:?}");
    assert_eq!(dropped.not_ipv6, 1, "{dropped:?}");
    assert_eq!(stats(&mock).last_inner_source, Some(me));
    mock.shutdown().await;
}

#[tokio::test]
async fn garbage_datagrams_are_dropped_and_counted() {
    let (mock, _ws, mut client, _agent) = setup().await;
    let mut sent = 0u64;
    // Lengths around every WireGuard message size, each message type.
    for len in [0usize, 1, 3, 4, 16, 32, 33, 64, 92, 148, 149, 1500] {
        for kind in 0u8..=5 {
            let mut junk: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ kind)
                .collect();
            if len >= 4 {
                junk[..4].copy_from_slice(&[kind, 0, 0, 0]);
            }
            client.send_datagram(&junk).await;
            sent += 1;
        }
    }
    eventually(|| stats(&mock).dropped.invalid_datagram == sent).await;
    // Still healthy: the real tunnel gets its answer.
    let me = tunnel_address();
    let coder = ids::agent_address(AGENT);
    client.send(&ping(me, coder, 5, 5, b"still there")).await;
    let reply = client.recv().await;
    assert_eq!(addresses(&reply), (coder, me));
    mock.shutdown().await;
}

#[tokio::test]
async fn only_announced_tunnels_get_a_handshake() {
    let (mock, mut ws, _client, agent) = setup().await;
    let node = agent.node.as_ref().unwrap();
    let me = tunnel_address();
    let coder = ids::agent_address(AGENT);

    let stranger = keys::generate();
    let mut outsider = Client::new(stranger.clone(), node).await;
    outsider.send(&ping(me, coder, 1, 1, b"a")).await;
    assert_eq!(outsider.recv_within(QUIET).await, None);
    // Held for a while, in case the announcement is still on its way.
    assert_eq!(stats(&mock).dropped.unknown_peer, 0);

    // A node with an unusable key is recorded and changes nothing.
    let text = r#"{"type":"node","public_key":"","addresses":[]}"#;
    send_text(&mut ws, text).await;
    eventually(|| mock.tunnel_nodes().len() == 2).await;
    assert_eq!(outsider.recv_within(QUIET).await, None);
    // Announced nodes are served over HTTP too, for external peers.
    let nodes: Vec<codervpn_reference_tunnel::control::api::TunnelNode> = common::client()
        .get(format!("{}{NODES_PATH}", mock.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nodes, mock.tunnel_nodes());
    assert_eq!(nodes[1].public_key, "");

    // Once announced (with no address: any source), the held handshake is
    // answered at once, without WireGuard's 5 s retry, and the ping too.
    announce(&mock, &mut ws, &stranger, None).await;
    let reply = tokio::time::timeout(Duration::from_secs(2), outsider.recv())
        .await
        .expect("the held handshake was not answered");
    assert_eq!(addresses(&reply), (coder, me));
    let other = ids::agent_address(Uuid::from_u128(77));
    let mut elsewhere = Client::new(stranger, node).await;
    elsewhere.send(&ping(other, coder, 1, 2, b"a")).await;
    assert_eq!(addresses(&elsewhere.recv().await), (coder, other));
    mock.shutdown().await;
}

#[tokio::test]
async fn handshakes_from_keys_never_announced_are_dropped_and_counted() {
    let (mock, _ws, _client, agent) = setup().await;
    let node = agent.node.as_ref().unwrap();
    let mut outsider = Client::new(keys::generate(), node).await;
    outsider
        .send(&ping(
            tunnel_address(),
            ids::agent_address(AGENT),
            1,
            1,
            b"a",
        ))
        .await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    // The next datagram finds the held one expired.
    outsider.send_datagram(b"junk").await;
    eventually(|| stats(&mock).dropped.unknown_peer == 1).await;
    assert_eq!(outsider.recv_within(QUIET).await, None);
    mock.shutdown().await;
}

#[tokio::test]
async fn agents_deleted_with_keep_running_still_answer_until_upserted_again() {
    let (mock, mut ws, mut client, agent) = setup().await;
    let node = agent.node.clone().unwrap();
    let me = tunnel_address();
    let coder = ids::agent_address(AGENT);
    client.send(&ping(me, coder, 1, 1, b"a")).await;
    client.recv().await;

    mock.apply(Action::DeleteAgent {
        id: AGENT,
        keep_running: true,
    });
    assert_eq!(next_update(&mut ws).await.deleted_agents, [AGENT]);
    // Unpublished, but the WireGuard peer still answers on its socket.
    client.send(&ping(me, coder, 1, 2, b"a")).await;
    assert_eq!(addresses(&client.recv().await), (coder, me));
    assert_eq!(mock.agent_stats().len(), 1);

    // Published again: the same agent, same socket, same session.
    mock.apply(Action::UpsertAgent {
        id: AGENT,
        name: "agnt".into(),
        workspace_id: WORKSPACE,
        node: Some(Node {
            public_key: SCENARIO_KEY.into(),
            endpoint: None,
        }),
    });
    let back = next_update(&mut ws).await.upserted_agents[0]
        .node
        .clone()
        .unwrap();
    assert_eq!(back, node);
    client.send(&ping(me, coder, 1, 3, b"a")).await;
    assert_eq!(addresses(&client.recv().await), (coder, me));
    mock.shutdown().await;
}

#[tokio::test]
async fn deleted_agents_stop_and_come_back_with_the_same_key() {
    let (mock, mut ws, mut client, agent) = setup().await;
    let node = agent.node.clone().unwrap();
    let me = tunnel_address();
    let coder = ids::agent_address(AGENT);
    client.send(&ping(me, coder, 1, 1, b"a")).await;
    client.recv().await;

    mock.apply(Action::DeleteAgent {
        id: AGENT,
        keep_running: false,
    });
    assert_eq!(next_update(&mut ws).await.deleted_agents, [AGENT]);
    assert!(mock.agent_stats().is_empty());
    // Its socket is closed: the port can be bound again.
    let endpoint = node.endpoint.unwrap();
    eventually(|| std::net::UdpSocket::bind(endpoint).is_ok()).await;
    client.send(&ping(me, coder, 1, 2, b"a")).await;
    assert_eq!(client.recv_within(QUIET).await, None);

    mock.apply(Action::UpsertAgent {
        id: AGENT,
        name: "agnt".into(),
        workspace_id: WORKSPACE,
        node: Some(Node {
            public_key: SCENARIO_KEY.into(),
            endpoint: None,
        }),
    });
    let update = next_update(&mut ws).await;
    let back = update.upserted_agents[0].node.clone().unwrap();
    assert_eq!(back.public_key, node.public_key);
    // Same key, new socket: a fresh session answers.
    assert_ne!(back.endpoint, node.endpoint);
    let secret = keys::generate();
    announce(&mock, &mut ws, &secret, Some(me)).await;
    let mut client = Client::new(secret, &back).await;
    client.send(&ping(me, coder, 1, 3, b"a")).await;
    assert_eq!(addresses(&client.recv().await), (coder, me));

    // Taking it offline stops it too.
    mock.apply(Action::UpsertAgent {
        id: AGENT,
        name: "agnt".into(),
        workspace_id: WORKSPACE,
        node: None,
    });
    next_update(&mut ws).await;
    assert!(mock.agent_stats().is_empty());
    mock.shutdown().await;
}

#[tokio::test]
async fn external_nodes_get_no_embedded_agent() {
    let mut scenario = scenario();
    let external = Node {
        public_key: "MTExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTE=".into(),
        endpoint: Some("10.0.0.2:51820".parse().unwrap()),
    };
    scenario.workspaces[0].agents[0].node = None;
    scenario.workspaces[0].agents[0].external_node = Some(external.clone());
    let mock = start(scenario).await;
    let mut ws = dial(&mock).await;
    let snapshot = next_update(&mut ws).await;
    let agent = snapshot
        .upserted_agents
        .iter()
        .find(|a| a.id == AGENT)
        .unwrap();
    assert_eq!(agent.node.as_ref(), Some(&external));
    assert!(mock.agent_stats().is_empty());
    mock.shutdown().await;
}

#[tokio::test]
async fn shutdown_stops_every_agent() {
    let (mock, _ws, _client, agent) = setup().await;
    let endpoint = agent.node.unwrap().endpoint.unwrap();
    assert!(std::net::UdpSocket::bind(endpoint).is_err());
    tokio::time::timeout(WAIT, mock.shutdown()).await.unwrap();
    std::net::UdpSocket::bind(endpoint).unwrap();
}

/// TCP echo through the tunnel with a real TCP client (smoltcp).
#[tokio::test]
async fn tcp_echo_moves_kilobytes_both_ways() {
    use codervpn_mock_coder::agents::PacketQueues;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::socket::tcp;
    use smoltcp::time::Instant;
    use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

    let (mock, _ws, mut client, _agent) = setup().await;
    let me = tunnel_address();
    let agent = ids::ping_address(AGENT);
    let epoch = std::time::Instant::now();
    let now = || Instant::from_millis(epoch.elapsed().as_millis() as i64);
    let mut queues = PacketQueues::default();
    let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut queues, now());
    iface.update_ip_addrs(|ips| ips.push(IpCidr::new(IpAddress::Ipv6(me), 128)).unwrap());
    iface.routes_mut().add_default_ipv6_route(me).unwrap();
    let mut sockets = SocketSet::new(Vec::new());

    // Two connections at once, each echoing 20 KB.
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let mut handles = Vec::new();
    for port in [49152u16, 49153] {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65_536]),
            tcp::SocketBuffer::new(vec![0; 65_536]),
        );
        let handle = sockets.add(socket);
        sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(iface.context(), (IpAddress::Ipv6(agent), 7), port)
            .unwrap();
        handles.push((handle, 0usize, Vec::new()));
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "TCP echo timed out");
        iface.poll(now(), &mut queues, &mut sockets);
        let mut done = true;
        for (handle, sent, received) in &mut handles {
            let socket = sockets.get_mut::<tcp::Socket>(*handle);
            if socket.can_send() && *sent < payload.len() {
                *sent += socket.send_slice(&payload[*sent..]).unwrap();
            }
            if socket.can_recv() {
                socket
                    .recv(|data| {
                        received.extend_from_slice(data);
                        (data.len(), ())
                    })
                    .unwrap();
            }
            if received.len() == payload.len() && socket.state() == tcp::State::Established {
                socket.close();
            }
            if received.len() < payload.len()
                || !matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait)
            {
                done = false;
            }
        }
        iface.poll(now(), &mut queues, &mut sockets);
        for packet in std::mem::take(&mut queues.tx) {
            client.send(&packet).await;
        }
        if done {
            break;
        }
        if let Some(packet) = client.recv_within(Duration::from_millis(10)).await {
            queues.rx.push_back(packet);
        }
    }
    for (_, _, received) in &handles {
        assert_eq!(received, &payload);
    }
    let stats = stats(&mock);
    assert_eq!(stats.dropped.total(), 0, "{:?}", stats.dropped);
    mock.shutdown().await;
}
