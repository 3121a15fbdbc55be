//! The tunnel's dataplane (protocol.md §6.9, §9.3-§9.5): WireGuard
//! sessions to the agents over one UDP socket, the packet device the manager
//! gave, the resolver at `[fd60:627a:a42b::53]:53`, and the pings behind
//! `last_ping`.
//!
//! Three tasks share one [`Engine`]: packets from the device go out
//! encrypted (`outbound`), datagrams from the socket come in decrypted
//! (`inbound`), and `timers` drives handshakes, keepalives and rekeys. The
//! hot paths allocate nothing: each task owns its buffers, and sessions are
//! locked one packet at a time.

pub mod device;
pub mod dns;
pub mod keys;
pub mod packet;
pub mod wg;

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use codervpn_proto::ids::DNS_SERVER;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;

pub use device::{Framing, PacketDevice};
use dns::HostTable;
pub use wg::{Observation, PeerSpec};
use wg::{Peer, PeerTable};

/// The dataplane's launch options.
#[derive(Debug, Clone, Copy)]
pub struct DataplaneConfig {
    /// Packet framing on the device (§9.5).
    pub framing: Framing,
    /// UDP port of the WireGuard socket; 0 picks one.
    pub listen_port: u16,
    /// Largest packet forwarded from the device; announced to the manager
    /// in the router NetworkSettingsRequest (§6.10).
    pub mtu: u32,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            framing: Framing::Raw,
            listen_port: 0,
            mtu: 1280,
        }
    }
}

/// WireGuard's largest overhead per packet: header, counter, tag, padding.
const WG_OVERHEAD: usize = 32 + 16;
/// Room for any packet the device or the socket can hand over.
const BUF_LEN: usize = 65_535 + WG_OVERHEAD + 4;
/// How often boringtun's timers run (its own device uses 250 ms).
const TIMER_TICK: Duration = Duration::from_millis(100);
/// A handshake-flood limit shared by every session (boringtun's default).
const HANDSHAKES_PER_SECOND: u64 = 100;

/// Packets the dataplane did not deliver, by reason; for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub from_device: AtomicU64,
    pub to_device: AtomicU64,
    pub no_route: AtomicU64,
    pub spoofed: AtomicU64,
    pub too_big: AtomicU64,
    pub not_ipv6: AtomicU64,
    pub device_full: AtomicU64,
    pub bad_datagrams: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValues {
    pub from_device: u64,
    pub to_device: u64,
    pub no_route: u64,
    pub spoofed: u64,
    pub too_big: u64,
    pub not_ipv6: u64,
    pub device_full: u64,
    pub bad_datagrams: u64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The running dataplane. Dropping it stops every task.
#[derive(Debug)]
pub struct Dataplane {
    engine: Arc<Engine>,
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    _stop_on_drop: DropGuard,
}

struct Engine {
    secret: StaticSecret,
    public: PublicKey,
    /// The tunnel's own address, source of its pings and DNS answers' peer.
    address: Ipv6Addr,
    socket: UdpSocket,
    /// Whether `socket` is IPv6 (IPv4 endpoints then go as mapped
    /// addresses); known once, not asked of the kernel per packet.
    socket_is_v6: bool,
    device: Option<PacketDevice>,
    peers: RwLock<Arc<PeerTable>>,
    hosts: RwLock<Arc<HostTable>>,
    limiter: Arc<RateLimiter>,
    next_index: AtomicU32,
    ping_id: u16,
    ping_seq: AtomicU16,
    mtu: usize,
    counters: Counters,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("address", &self.address)
            .field("socket", &self.socket.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Binds the WireGuard socket and starts the tasks. `device` is the
    /// manager's packet device, if it gave one (without it WireGuard and
    /// pings still run, so `last_handshake` and `last_ping` are real).
    pub fn start(
        device: Option<PacketDevice>,
        address: Ipv6Addr,
        config: DataplaneConfig,
    ) -> std::io::Result<Dataplane> {
        let socket = bind(config.listen_port)?;
        let socket_is_v6 = socket.local_addr()?.is_ipv6();
        let secret = keys::generate();
        let public = PublicKey::from(&secret);
        let mut seed = [0u8; 6];
        let _ = getrandom::fill(&mut seed);
        let engine = Arc::new(Engine {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SECOND)),
            secret,
            public,
            address,
            socket,
            socket_is_v6,
            device,
            peers: RwLock::default(),
            hosts: RwLock::default(),
            next_index: AtomicU32::new(u32::from_le_bytes([seed[0], seed[1], 0, 0]) | 1),
            ping_id: u16::from_le_bytes([seed[2], seed[3]]),
            ping_seq: AtomicU16::new(u16::from_le_bytes([seed[4], seed[5]])),
            mtu: config.mtu as usize,
            counters: Counters::default(),
        });
        let cancel = CancellationToken::new();
        let span = tracing::Span::current();
        let mut tasks = vec![
            tokio::spawn(
                engine
                    .clone()
                    .inbound(cancel.clone())
                    .instrument(span.clone()),
            ),
            tokio::spawn(
                engine
                    .clone()
                    .timers(cancel.clone())
                    .instrument(span.clone()),
            ),
        ];
        if engine.device.is_some() {
            tasks.push(tokio::spawn(
                engine.clone().outbound(cancel.clone()).instrument(span),
            ));
        }
        Ok(Dataplane {
            engine,
            tasks,
            _stop_on_drop: cancel.clone().drop_guard(),
            cancel,
        })
    }

    /// Our public key, as the control plane carries it.
    pub fn public_key(&self) -> String {
        keys::to_base64(&self.engine.public)
    }

    /// The WireGuard socket's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.engine.socket.local_addr()
    }

    /// The tunnel's own address (§9.3).
    pub fn address(&self) -> Ipv6Addr {
        self.engine.address
    }

    /// Makes the sessions match the agent list: new agents get a session
    /// (and a first ping at once), gone agents lose theirs and their traffic
    /// stops, unchanged agents keep theirs.
    pub async fn set_peers(&self, specs: &[PeerSpec]) {
        let added = {
            let mut peers = self.engine.peers.write().unwrap_or_else(|p| p.into_inner());
            let (table, added) = peers.rebuild(
                specs,
                &self.engine.secret,
                &self.engine.next_index,
                &self.engine.limiter,
            );
            *peers = Arc::new(table);
            added
        };
        for peer in added {
            tracing::debug!(agent = %peer.agent, endpoint = ?peer.endpoint(), "WireGuard peer added");
            self.engine.ping(&peer).await;
        }
    }

    /// The names the resolver answers for (§9.4).
    pub fn set_hosts(&self, hosts: HostTable) {
        *self.engine.hosts.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(hosts);
    }

    /// Pings every agent once (§6.9 step 1); replies update the
    /// observations as they arrive, so slow agents never hold anyone up.
    pub async fn ping_all(&self) {
        let peers = self.engine.table();
        for peer in peers.peers() {
            self.engine.ping(peer).await;
        }
    }

    /// Every agent's latest handshake and ping.
    pub fn observations(&self) -> Vec<Observation> {
        self.engine
            .table()
            .peers()
            .map(|p| p.observation())
            .collect()
    }

    pub fn counters(&self) -> CounterValues {
        let c = &self.engine.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterValues {
            from_device: get(&c.from_device),
            to_device: get(&c.to_device),
            no_route: get(&c.no_route),
            spoofed: get(&c.spoofed),
            too_big: get(&c.too_big),
            not_ipv6: get(&c.not_ipv6),
            device_full: get(&c.device_full),
            bad_datagrams: get(&c.bad_datagrams),
        }
    }

    /// Stops the tasks and waits (bounded) for them.
    pub async fn close(self) {
        self.cancel.cancel();
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

/// One dual-stack socket reaches IPv4 and IPv6 endpoints alike; where IPv6
/// is disabled, an IPv4 socket.
fn bind(port: u16) -> std::io::Result<UdpSocket> {
    let v6 = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, port)))?;
    v6.set_nonblocking(true)?;
    UdpSocket::from_std(v6)
}

impl Engine {
    fn table(&self) -> Arc<PeerTable> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// An endpoint in the socket's address family.
    fn socket_addr(&self, addr: SocketAddr) -> SocketAddr {
        match addr {
            SocketAddr::V4(v4) if self.socket_is_v6 => {
                SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
            }
            _ => addr,
        }
    }

    async fn send_datagram(&self, datagram: &[u8], to: SocketAddr) {
        if let Err(err) = self.socket.send_to(datagram, self.socket_addr(to)).await {
            tracing::debug!(error = %err, %to, "WireGuard datagram not sent");
        }
    }

    /// Hands one packet to the device, or drops it if there is none or it
    /// is full.
    fn deliver(&self, packet: &[u8]) {
        let Some(device) = &self.device else {
            return;
        };
        match device.try_send(packet) {
            Ok(true) => bump(&self.counters.to_device),
            Ok(false) => bump(&self.counters.device_full),
            Err(err) => tracing::debug!(error = %err, "packet device write failed"),
        }
    }

    async fn ping(&self, peer: &Peer) {
        let seq = self.ping_seq.fetch_add(1, Ordering::Relaxed);
        let request =
            packet::build_echo_request(self.address, peer.addrs[1], self.ping_id, seq, b"codervpn");
        peer.ping_sent(seq);
        self.encrypt_and_send(
            peer,
            &request,
            &mut vec![0u8; request.len() + WG_OVERHEAD + 148],
        )
        .await;
    }

    async fn encrypt_and_send(&self, peer: &Peer, packet: &[u8], out: &mut [u8]) {
        let Some(endpoint) = peer.endpoint() else {
            bump(&self.counters.no_route);
            return;
        };
        let len = match peer.tunn().encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram) => datagram.len(),
            TunnResult::Err(err) => {
                tracing::debug!(?err, agent = %peer.agent, "encapsulation failed");
                return;
            }
            _ => return,
        };
        self.send_datagram(&out[..len], endpoint).await;
    }

    /// Device -> agents: route by destination, answer DNS and oversize
    /// packets locally.
    async fn outbound(self: Arc<Self>, cancel: CancellationToken) {
        let Some(device) = &self.device else {
            return;
        };
        let mut buf = vec![0u8; BUF_LEN];
        let mut out = vec![0u8; BUF_LEN];
        loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => return,
                received = device.recv(&mut buf) => received,
            };
            let (start, end) = match received {
                Ok(Ok(range)) => range,
                Ok(Err(bad)) => {
                    tracing::debug!(%bad, "dropped a frame from the packet device");
                    bump(&self.counters.not_ipv6);
                    continue;
                }
                Err(err) => {
                    tracing::error!(error = %err, "packet device read failed; the dataplane stops reading it");
                    return;
                }
            };
            bump(&self.counters.from_device);
            self.route_outbound(&buf[start..end], &mut out).await;
        }
    }

    async fn route_outbound(&self, packet: &[u8], out: &mut [u8]) {
        let Some((_, dst)) = packet::ipv6_addresses(packet) else {
            // Agents have IPv6 addresses only (§9.3): nothing else routes.
            bump(&self.counters.not_ipv6);
            return;
        };
        if packet.len() > self.mtu {
            bump(&self.counters.too_big);
            if let Some(reply) = packet::build_packet_too_big(packet, self.mtu as u32) {
                self.deliver(&reply);
            }
            return;
        }
        if dst == DNS_SERVER {
            self.answer_dns(packet);
            return;
        }
        let peer = self.table().route(&dst).cloned();
        match peer {
            Some(peer) => self.encrypt_and_send(&peer, packet, out).await,
            None => bump(&self.counters.no_route),
        }
    }

    /// The resolver (§9.4): UDP port 53 at the DNS address.
    fn answer_dns(&self, packet: &[u8]) {
        let Some(query) = packet::udp(packet).filter(|u| u.dst_port == 53) else {
            bump(&self.counters.no_route);
            return;
        };
        let hosts = self.hosts.read().unwrap_or_else(|p| p.into_inner()).clone();
        match dns::answer(&hosts, query.payload) {
            Ok(response) => {
                let reply = packet::build_udp(DNS_SERVER, query.src, 53, query.src_port, &response);
                self.deliver(&reply);
            }
            Err(err) => tracing::debug!(error = %err, "DNS query not answered"),
        }
    }

    /// Socket -> device: find the session, decrypt, check the inner source
    /// against the agent's addresses, deliver.
    async fn inbound(self: Arc<Self>, cancel: CancellationToken) {
        let mut buf = vec![0u8; BUF_LEN];
        let mut out = vec![0u8; BUF_LEN];
        let mut replies: Vec<Vec<u8>> = Vec::new();
        loop {
            let received = tokio::select! {
                _ = cancel.cancelled() => return,
                received = self.socket.recv_from(&mut buf) => received,
            };
            let (len, from) = match received {
                Ok(received) => received,
                Err(err) => {
                    // ICMP errors from earlier sends surface here; they do
                    // not end the socket.
                    tracing::trace!(error = %err, "WireGuard socket receive error");
                    continue;
                }
            };
            let from = SocketAddr::new(from.ip().to_canonical(), from.port());
            let Some(peer) = self.peer_for(&buf[..len], from) else {
                bump(&self.counters.bad_datagrams);
                continue;
            };
            self.decrypt(&peer, &buf[..len], from, &mut out, &mut replies);
            for reply in replies.drain(..) {
                self.send_datagram(&reply, from).await;
            }
        }
    }

    /// The session a datagram belongs to, without decrypting it.
    fn peer_for(&self, datagram: &[u8], from: SocketAddr) -> Option<Arc<Peer>> {
        let table = self.table();
        match Tunn::parse_incoming_packet(datagram).ok()? {
            Packet::HandshakeInit(init) => {
                let mut cookie = [0u8; 64];
                // Check the MAC (and the load) before spending a DH on it.
                self.limiter
                    .verify_packet(Some(from.ip()), datagram, &mut cookie)
                    .ok()?;
                let half = parse_handshake_anon(&self.secret, &self.public, &init).ok()?;
                table.by_key(&half.peer_static_public).cloned()
            }
            Packet::HandshakeResponse(p) => table.by_receiver(p.receiver_idx).cloned(),
            Packet::PacketCookieReply(p) => table.by_receiver(p.receiver_idx).cloned(),
            Packet::PacketData(p) => table.by_receiver(p.receiver_idx).cloned(),
        }
    }

    fn decrypt(
        &self,
        peer: &Peer,
        datagram: &[u8],
        from: SocketAddr,
        out: &mut [u8],
        replies: &mut Vec<Vec<u8>>,
    ) {
        let mut tunn = peer.tunn();
        let mut result = tunn.decapsulate(Some(from.ip()), datagram, out);
        loop {
            match result {
                TunnResult::Done => return,
                TunnResult::Err(err) => {
                    tracing::trace!(?err, agent = %peer.agent, "datagram rejected");
                    bump(&self.counters.bad_datagrams);
                    return;
                }
                TunnResult::WriteToNetwork(datagram) => {
                    peer.set_endpoint(from);
                    replies.push(datagram.to_vec());
                    // boringtun may have queued packets for this session.
                    result = tunn.decapsulate(None, &[], out);
                }
                TunnResult::WriteToTunnelV6(packet, src) => {
                    peer.set_endpoint(from);
                    self.arrived(peer, packet, src);
                    return;
                }
                TunnResult::WriteToTunnelV4(..) => {
                    bump(&self.counters.spoofed);
                    return;
                }
            }
        }
    }

    /// A decrypted packet from `peer`: its own pings' replies end here,
    /// anything with a source that is not the agent's is dropped.
    fn arrived(&self, peer: &Peer, packet: &[u8], src: Ipv6Addr) {
        if !peer.owns(src) {
            bump(&self.counters.spoofed);
            tracing::debug!(agent = %peer.agent, %src, "dropped a packet with a source that is not the agent's");
            return;
        }
        if src == peer.addrs[1]
            && let Some(reply) = packet::echo_reply(packet)
            && reply.id == self.ping_id
            && peer.ping_answered(reply.seq)
        {
            return;
        }
        self.deliver(packet);
    }

    /// Handshakes, keepalives, rekeys and expiry for every session.
    async fn timers(self: Arc<Self>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(TIMER_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = vec![0u8; 256];
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            ticks += 1;
            if ticks.is_multiple_of(10) {
                self.limiter.reset_count();
            }
            let table = self.table();
            for peer in table.peers() {
                let len = match peer.tunn().update_timers(&mut out) {
                    TunnResult::WriteToNetwork(datagram) => datagram.len(),
                    _ => continue,
                };
                if let Some(endpoint) = peer.endpoint() {
                    self.send_datagram(&out[..len], endpoint).await;
                }
            }
        }
    }
}
