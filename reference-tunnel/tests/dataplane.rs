//! The dataplane against a WireGuard peer written here with boringtun, over
//! real UDP on loopback, with a datagram socket pair as the packet device
//! (protocol.md §6.9, §9.3-§9.5).

#![allow(clippy::unwrap_used)]

use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use codervpn_proto::ids::{DNS_SERVER, agent_address};
use codervpn_reference_tunnel::dataplane::dns::HostTable;
use codervpn_reference_tunnel::dataplane::{
    Dataplane, DataplaneConfig, Framing, PacketDevice, PeerSpec, keys,
};
use etherparse::{Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use tokio::net::{UdpSocket, UnixDatagram};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(5);

/// A WireGuard agent: answers echo requests and UDP port 7, and can be
/// told to lie about its source.
struct Agent {
    id: Uuid,
    public: PublicKey,
    addr: SocketAddr,
    /// Handshake initiations received: a new session means a new one.
    inits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Agent {
    async fn start(tunnel_key: PublicKey, spoof: Option<Ipv6Addr>) -> Agent {
        let secret = keys::generate();
        let public = PublicKey::from(&secret);
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let id = Uuid::new_v4();
        let inits = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve_agent(
            socket,
            secret,
            tunnel_key,
            spoof,
            inits.clone(),
        ));
        Agent {
            id,
            public,
            addr,
            inits,
            task,
        }
    }

    fn spec(&self) -> PeerSpec {
        PeerSpec {
            agent: self.id,
            public_key: self.public,
            endpoint: Some(self.addr),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_agent(
    socket: UdpSocket,
    secret: StaticSecret,
    tunnel_key: PublicKey,
    spoof: Option<Ipv6Addr>,
    inits: Arc<AtomicUsize>,
) {
    let mut tunn = Tunn::new(secret, tunnel_key, None, None, 7, None);
    let mut buf = vec![0u8; 65_536];
    let mut out = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        // WireGuard message type 1: handshake initiation.
        if buf[..n].first() == Some(&1) {
            inits.fetch_add(1, Ordering::SeqCst);
        }
        let mut to_send = Vec::new();
        let mut answer = None;
        match tunn.decapsulate(Some(from.ip()), &buf[..n], &mut out) {
            TunnResult::WriteToNetwork(d) => {
                to_send.push(d.to_vec());
                while let TunnResult::WriteToNetwork(d) = tunn.decapsulate(None, &[], &mut out) {
                    to_send.push(d.to_vec());
                }
            }
            TunnResult::WriteToTunnelV6(packet, _) => answer = respond(packet, spoof),
            _ => {}
        }
        if let Some(reply) = answer
            && let TunnResult::WriteToNetwork(d) = tunn.encapsulate(&reply, &mut out)
        {
            to_send.push(d.to_vec());
        }
        for d in to_send {
            socket.send_to(&d, from).await.unwrap();
        }
    }
}

fn respond(packet: &[u8], spoof: Option<Ipv6Addr>) -> Option<Vec<u8>> {
    let sliced = SlicedPacket::from_ip(packet).ok()?;
    let Some(NetSlice::Ipv6(ip)) = sliced.net else {
        return None;
    };
    let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
    let from = spoof.unwrap_or(dst).octets();
    let mut out = Vec::new();
    match sliced.transport? {
        TransportSlice::Icmpv6(icmp) => {
            let Icmpv6Type::EchoRequest(echo) = icmp.icmp_type() else {
                return None;
            };
            PacketBuilder::ipv6(from, src.octets(), 64)
                .icmpv6_echo_reply(echo.id, echo.seq)
                .write(&mut out, icmp.payload())
                .ok()?;
        }
        TransportSlice::Udp(udp) if udp.destination_port() == 7 => {
            PacketBuilder::ipv6(from, src.octets(), 64)
                .udp(7, udp.source_port())
                .write(&mut out, udp.payload())
                .ok()?;
        }
        _ => return None,
    }
    Some(out)
}

struct Harness {
    dataplane: Dataplane,
    tun: UnixDatagram,
    address: Ipv6Addr,
}

fn harness(framing: Framing) -> Harness {
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    ours.set_nonblocking(true).unwrap();
    let device = PacketDevice::new(OwnedFd::from(theirs), framing).unwrap();
    let address = agent_address(Uuid::new_v4());
    let config = DataplaneConfig {
        framing,
        ..DataplaneConfig::default()
    };
    let dataplane = Dataplane::start(Some(device), address, config).unwrap();
    Harness {
        dataplane,
        tun: UnixDatagram::from_std(ours).unwrap(),
        address,
    }
}

impl Harness {
    fn tunnel_key(&self) -> PublicKey {
        keys::parse(&self.dataplane.public_key()).unwrap()
    }

    async fn send(&self, packet: &[u8]) {
        self.tun.send(packet).await.unwrap();
    }

    /// The next packet from the device, or None after `within`.
    async fn recv_within(&self, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_536];
        let n = tokio::time::timeout(within, self.tun.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(buf[..n].to_vec())
    }

    fn echo_request(&self, dst: Ipv6Addr, seq: u16, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(self.address.octets(), dst.octets(), 64)
            .icmpv6_echo_request(42, seq)
            .write(&mut out, &vec![0xab; len])
            .unwrap();
        out
    }

    fn udp(&self, dst: Ipv6Addr, port: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv6(self.address.octets(), dst.octets(), 64)
            .udp(40000, port)
            .write(&mut out, payload)
            .unwrap();
        out
    }
}

fn parsed(packet: &[u8]) -> (Ipv6Addr, Ipv6Addr, TransportSlice<'_>) {
    let sliced = SlicedPacket::from_ip(packet).unwrap();
    let Some(NetSlice::Ipv6(ip)) = sliced.net else {
        panic!("not IPv6")
    };
    (
        ip.header().source_addr(),
        ip.header().destination_addr(),
        sliced.transport.unwrap(),
    )
}

#[tokio::test]
async fn echo_flows_both_ways_through_wireguard() {
    let h = harness(Framing::Raw);
    let agent = Agent::start(h.tunnel_key(), None).await;
    h.dataplane.set_peers(&[agent.spec()]).await;
    let dst = agent_address(agent.id);
    h.send(&h.echo_request(dst, 1, 100)).await;
    let reply = h.recv_within(WAIT).await.expect("no echo reply");
    let (src, to, transport) = parsed(&reply);
    assert_eq!((src, to), (dst, h.address));
    let TransportSlice::Icmpv6(icmp) = transport else {
        panic!()
    };
    assert!(matches!(icmp.icmp_type(), Icmpv6Type::EchoReply(e) if e.id == 42 && e.seq == 1));
    assert_eq!(icmp.payload(), &[0xab; 100][..]);

    // UDP too, and many packets in a row arrive in full.
    for i in 0..200u16 {
        h.send(&h.udp(dst, 7, &i.to_be_bytes())).await;
        let reply = h.recv_within(WAIT).await.expect("no UDP echo");
        let (_, _, transport) = parsed(&reply);
        let TransportSlice::Udp(udp) = transport else {
            panic!()
        };
        assert_eq!(udp.payload(), &i.to_be_bytes()[..]);
    }
    assert_eq!(h.dataplane.counters().spoofed, 0);
}

#[tokio::test]
async fn utun_framing_adds_and_strips_the_family_header() {
    let h = harness(Framing::Utun);
    let agent = Agent::start(h.tunnel_key(), None).await;
    h.dataplane.set_peers(&[agent.spec()]).await;
    let mut framed = vec![0, 0, 0, 30];
    framed.extend(h.echo_request(agent_address(agent.id), 3, 8));
    h.send(&framed).await;
    let reply = h.recv_within(WAIT).await.expect("no echo reply");
    assert_eq!(&reply[..4], &[0, 0, 0, 30]);
    parsed(&reply[4..]);
    // An unknown family is dropped and counted, not forwarded.
    let mut bad = vec![0, 0, 0, 99];
    bad.extend(h.echo_request(agent_address(agent.id), 4, 8));
    h.send(&bad).await;
    assert!(h.recv_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(h.dataplane.counters().not_ipv6, 1);
}

#[tokio::test]
async fn inner_sources_other_than_the_agents_are_dropped() {
    let h = harness(Framing::Raw);
    let liar = Agent::start(h.tunnel_key(), Some("fd60:627a:a42b::bad".parse().unwrap())).await;
    h.dataplane.set_peers(&[liar.spec()]).await;
    h.send(&h.echo_request(agent_address(liar.id), 1, 8)).await;
    assert!(h.recv_within(Duration::from_millis(700)).await.is_none());
    assert!(h.dataplane.counters().spoofed >= 1);
}

#[tokio::test]
async fn unknown_destinations_removed_agents_and_ipv4_go_nowhere() {
    let h = harness(Framing::Raw);
    let agent = Agent::start(h.tunnel_key(), None).await;
    h.dataplane.set_peers(&[agent.spec()]).await;
    let dst = agent_address(agent.id);
    h.send(&h.echo_request(agent_address(Uuid::new_v4()), 1, 8))
        .await;
    let mut v4 = Vec::new();
    PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(1, 7)
        .write(&mut v4, b"x")
        .unwrap();
    h.send(&v4).await;
    assert!(h.recv_within(Duration::from_millis(300)).await.is_none());
    let counters = h.dataplane.counters();
    assert_eq!((counters.no_route, counters.not_ipv6), (1, 1));

    // Works, then the agent goes: its traffic stops.
    h.send(&h.echo_request(dst, 2, 8)).await;
    assert!(h.recv_within(WAIT).await.is_some());
    h.dataplane.set_peers(&[]).await;
    h.send(&h.echo_request(dst, 3, 8)).await;
    assert!(h.recv_within(Duration::from_millis(500)).await.is_none());
    assert!(h.dataplane.observations().is_empty());
}

#[tokio::test]
async fn a_repeated_agent_list_keeps_the_session() {
    let h = harness(Framing::Raw);
    let agent = Agent::start(h.tunnel_key(), None).await;
    h.dataplane.set_peers(&[agent.spec()]).await;
    h.send(&h.echo_request(agent_address(agent.id), 1, 8)).await;
    assert!(h.recv_within(WAIT).await.is_some());
    assert_eq!(agent.inits.load(Ordering::SeqCst), 1);
    h.dataplane.set_peers(&[agent.spec()]).await;
    h.send(&h.echo_request(agent_address(agent.id), 2, 8)).await;
    assert!(h.recv_within(WAIT).await.is_some());
    // The same session: no new handshake was needed.
    assert_eq!(agent.inits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn mtu_is_enforced_with_packet_too_big() {
    let h = harness(Framing::Raw);
    let agent = Agent::start(h.tunnel_key(), None).await;
    h.dataplane.set_peers(&[agent.spec()]).await;
    let dst = agent_address(agent.id);
    // 40 + 8 + 1232 = 1280 bytes: exactly the MTU, forwarded.
    let fits = h.echo_request(dst, 1, 1232);
    assert_eq!(fits.len(), 1280);
    h.send(&fits).await;
    let reply = h.recv_within(WAIT).await.expect("a 1280-byte echo passes");
    assert_eq!(reply.len(), 1280);
    h.send(&h.echo_request(dst, 2, 1233)).await;
    let ptb = h.recv_within(WAIT).await.expect("packet too big");
    let (src, to, transport) = parsed(&ptb);
    assert_eq!((src, to), (dst, h.address));
    let TransportSlice::Icmpv6(icmp) = transport else {
        panic!()
    };
    assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1280 });
    assert!(
        h.recv_within(Duration::from_millis(300)).await.is_none(),
        "the big one went through"
    );
}

#[tokio::test]
async fn the_resolver_answers_for_published_names() {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};

    let h = harness(Framing::Raw);
    let agent_ip = agent_address(Uuid::new_v4());
    h.dataplane
        .set_hosts(HostTable::new([("dev.ws.me.coder.".to_string(), agent_ip)]));
    for (name, code) in [
        ("dev.ws.me.coder.", ResponseCode::NoError),
        ("nope.coder.", ResponseCode::NXDomain),
    ] {
        let mut query = Message::new();
        query.set_id(77).set_recursion_desired(true);
        query.add_query(Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::AAAA,
        ));
        h.send(&h.udp(DNS_SERVER, 53, &query.to_vec().unwrap()))
            .await;
        let reply = h.recv_within(WAIT).await.expect("no DNS answer");
        let (src, to, transport) = parsed(&reply);
        assert_eq!((src, to), (DNS_SERVER, h.address));
        let TransportSlice::Udp(udp) = transport else {
            panic!()
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
        let answer = Message::from_vec(udp.payload()).unwrap();
        assert_eq!((answer.id(), answer.response_code()), (77, code));
        if code == ResponseCode::NoError {
            assert!(matches!(answer.answers()[0].data(), RData::AAAA(a) if a.0 == agent_ip));
        }
    }
}

#[tokio::test]
async fn pings_go_to_the_tailscale_address_and_feed_observations() {
    let h = harness(Framing::Raw);
    let agent = Agent::start(h.tunnel_key(), None).await;
    // Adding the agent pings it at once.
    h.dataplane.set_peers(&[agent.spec()]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let seen = loop {
        let seen = h.dataplane.observations().remove(0);
        if seen.last_ping.is_some() || tokio::time::Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ping = seen.last_ping.expect("no ping answered");
    assert!(ping.did_p2p);
    assert!(ping.latency.is_some());
    assert!(seen.last_handshake.is_some());
    // The ping replies were the tunnel's own: none reached the device.
    assert!(h.recv_within(Duration::from_millis(200)).await.is_none());
    // Another round is answered too, and still nothing reaches the device.
    h.dataplane.ping_all().await;
    assert!(h.recv_within(Duration::from_millis(300)).await.is_none());
}
