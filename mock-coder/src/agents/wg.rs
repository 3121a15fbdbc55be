//! One embedded agent's WireGuard side: its UDP socket, one boringtun
//! [`Tunn`] per tunnel that shook hands with it, and the loop that moves
//! datagrams between the socket, the sessions, the responder and the TCP
//! stack.
//!
//! A Coder agent accepts every client the control plane introduced to it;
//! here that is every tunnel key announced on a coordination stream of this
//! mock. The initiator's static key is learned from the handshake itself
//! ([`parse_handshake_anon`]), after a cheap MAC check so that garbage
//! never costs a Diffie-Hellman. Later packets find their session by the
//! receiver index, whose top 24 bits are the session's own index. Replies
//! go to the source of the peer's last authenticated datagram (roaming).
//!
//! Nothing from the network can panic this task: every parse is checked,
//! every drop counted (see [`super::stats`]).

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use codervpn_reference_tunnel::dataplane::keys;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::responder::{self, Addresses, Verdict};
use super::stats::{Counters, DropReason};
use super::tcp::{self, TcpEcho};
use super::{KeyBytes, Tunnels, lock};

/// How often boringtun's timers run (it needs 100-250 ms).
pub const TIMER_TICK: Duration = Duration::from_millis(100);
/// The largest UDP datagram.
const MAX_DATAGRAM: usize = 65_535;
/// Room for an inner packet of a full datagram plus WireGuard's overhead
/// (boringtun panics on a short buffer, so the size is checked before use).
const WG_OVERHEAD: usize = 32;
const OUT_BUFFER: usize = MAX_DATAGRAM + WG_OVERHEAD + 148;
/// Handshakes per second the agent takes before it asks for cookies.
const HANDSHAKE_LIMIT: u64 = 1000;
/// How many inner source addresses the TCP route table remembers.
const MAX_ROUTES: usize = 1024;
/// WireGuard's cookie reply message type.
const COOKIE_REPLY: u8 = 3;
/// A datagram that cannot go out within this is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Everything an agent task needs; the socket is already bound.
pub(crate) struct AgentTask {
    pub(crate) secret: StaticSecret,
    pub(crate) addresses: Addresses,
    pub(crate) socket: std::net::UdpSocket,
    pub(crate) tunnels: Arc<RwLock<Tunnels>>,
    pub(crate) announced: watch::Receiver<u64>,
    pub(crate) counters: Arc<Mutex<Counters>>,
    pub(crate) cancel: CancellationToken,
}

/// Handshakes from keys not (yet) announced are held this long: a tunnel
/// announces its node and starts handshaking at about the same time, and
/// the mock may read the announcement second. Without the hold the first
/// packets would wait for WireGuard's 5 s handshake retry.
const HOLD: Duration = Duration::from_secs(3);
/// At most this many handshakes are held per agent.
const MAX_HELD: usize = 8;

/// The agent's loop; ends when `cancel` fires (dropping the socket).
pub(crate) async fn run(task: AgentTask) {
    let AgentTask {
        secret,
        addresses,
        socket,
        tunnels,
        mut announced,
        counters,
        cancel,
    } = task;
    let socket = match UdpSocket::from_std(socket) {
        Ok(socket) => socket,
        Err(err) => {
            tracing::warn!(%err, "embedded agent cannot use its socket");
            return;
        }
    };
    let mut agent = Wg::new(secret, addresses, tunnels, counters);
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut tick = tokio::time::interval(TIMER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // An idle agent (no session, no TCP timer) sleeps until a datagram
        // comes, so a paused test clock can jump ahead past it.
        let timers = !agent.peers.is_empty();
        let tcp_delay = agent.tcp.delay();
        tokio::select! {
            () = cancel.cancelled() => break,
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => agent.datagram(from, buffer.get(..len).unwrap_or_default()),
                // e.g. an ICMP error for an earlier send; the socket is fine.
                Err(err) => tracing::debug!(%err, "embedded agent receive error"),
            },
            _ = tick.tick(), if timers => agent.timers(),
            changed = announced.changed(), if !agent.held.is_empty() => {
                if changed.is_ok() {
                    agent.retry_held();
                }
            }
            () = tokio::time::sleep(tcp_delay.unwrap_or_default().min(TIMER_TICK)), if tcp_delay.is_some() => {
                agent.poll_tcp();
            }
        }
        for (to, datagram) in agent.outbox.drain(..) {
            match tokio::time::timeout(SEND_TIMEOUT, socket.send_to(&datagram, to)).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::debug!(%err, %to, "embedded agent send error"),
                Err(_) => tracing::debug!(%to, "embedded agent send timed out"),
            }
        }
    }
    tracing::debug!(address = %addresses.coder, "embedded agent stopped");
}

struct Peer {
    tunn: Tunn,
    key: String,
    endpoint: Option<SocketAddr>,
}

/// Which message a datagram was, for counting handshakes and roaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Response,
    Cookie,
    Data,
}

/// The agent's state, driven by [`run`]; it queues datagrams in `outbox`
/// rather than sending, so the logic has no I/O in it.
struct Wg {
    secret: StaticSecret,
    public: PublicKey,
    addresses: Addresses,
    limiter: RateLimiter,
    peers: HashMap<KeyBytes, Peer>,
    by_index: HashMap<u32, KeyBytes>,
    next_index: u32,
    /// Inner tunnel address -> the tunnel it came through, for TCP output.
    routes: HashMap<Ipv6Addr, KeyBytes>,
    tcp: TcpEcho,
    tunnels: Arc<RwLock<Tunnels>>,
    counters: Arc<Mutex<Counters>>,
    out: Vec<u8>,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    /// Handshake initiations from unannounced keys, oldest first.
    held: VecDeque<(Instant, SocketAddr, Vec<u8>)>,
}

impl Wg {
    fn new(
        secret: StaticSecret,
        addresses: Addresses,
        tunnels: Arc<RwLock<Tunnels>>,
        counters: Arc<Mutex<Counters>>,
    ) -> Wg {
        let public = PublicKey::from(&secret);
        Wg {
            limiter: RateLimiter::new(&public, HANDSHAKE_LIMIT),
            secret,
            public,
            addresses,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            next_index: 1,
            routes: HashMap::new(),
            tcp: TcpEcho::new(addresses),
            tunnels,
            counters,
            out: vec![0; OUT_BUFFER],
            outbox: Vec::new(),
            held: VecDeque::new(),
        }
    }

    fn drop_counted(&self, reason: DropReason) {
        lock(&self.counters).dropped.count(reason);
    }

    /// One datagram from the network.
    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        // Once a second at most; here too because idle agents run no timers.
        self.limiter.reset_count();
        self.expire_held();
        let mut cookie = [0u8; 64];
        let packet = match self
            .limiter
            .verify_packet(Some(from.ip()), data, &mut cookie)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(reply)) => {
                self.outbox.push((from, reply.to_vec()));
                return;
            }
            Err(_) => return self.drop_counted(DropReason::InvalidDatagram),
        };
        let (key, kind) = match packet {
            Packet::HandshakeInit(ref init) => {
                match parse_handshake_anon(&self.secret, &self.public, init) {
                    Ok(half) => (half.peer_static_public, Kind::Init),
                    Err(_) => return self.drop_counted(DropReason::InvalidDatagram),
                }
            }
            Packet::HandshakeResponse(ref p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(key) => (*key, Kind::Response),
                None => return self.drop_counted(DropReason::InvalidDatagram),
            },
            Packet::PacketCookieReply(ref p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(key) => (*key, Kind::Cookie),
                None => return self.drop_counted(DropReason::InvalidDatagram),
            },
            Packet::PacketData(ref p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(key) => (*key, Kind::Data),
                None => return self.drop_counted(DropReason::InvalidDatagram),
            },
        };
        if kind == Kind::Init && !self.ensure_peer(key) {
            return self.hold(from, data);
        }
        self.decapsulate(key, kind, from, data);
    }

    /// Keeps a handshake from an unannounced key for [`HOLD`]; what falls
    /// out of the bounded queue is counted as from an unknown peer.
    fn hold(&mut self, from: SocketAddr, data: &[u8]) {
        self.expire_held();
        if self.held.len() == MAX_HELD {
            self.held.pop_front();
            self.drop_counted(DropReason::UnknownPeer);
        }
        self.held.push_back((Instant::now(), from, data.to_vec()));
    }

    fn expire_held(&mut self) {
        while self
            .held
            .front()
            .is_some_and(|(at, _, _)| at.elapsed() > HOLD)
        {
            self.held.pop_front();
            self.drop_counted(DropReason::UnknownPeer);
        }
    }

    /// A key was announced: handshakes held for it go through now.
    fn retry_held(&mut self) {
        self.expire_held();
        let held: Vec<_> = self.held.drain(..).collect();
        for (at, from, data) in held {
            let before = self.held.len();
            self.datagram(from, &data);
            // Still unknown: keep its original arrival time.
            if self.held.len() > before
                && let Some(entry) = self.held.back_mut()
            {
                entry.0 = at;
            }
        }
    }

    /// A session object for `key` if a tunnel announced it; false if not.
    fn ensure_peer(&mut self, key: KeyBytes) -> bool {
        if self.peers.contains_key(&key) {
            return true;
        }
        let announced = self
            .tunnels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&key);
        if !announced {
            return false;
        }
        let index = self.next_index;
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let public = PublicKey::from(key);
        let tunn = Tunn::new(self.secret.clone(), public, None, None, index, None);
        self.by_index.insert(index, key);
        self.peers.insert(
            key,
            Peer {
                tunn,
                key: keys::to_base64(&public),
                endpoint: None,
            },
        );
        true
    }

    fn decapsulate(&mut self, key: KeyBytes, kind: Kind, from: SocketAddr, data: &[u8]) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let mut authenticated = false;
        let mut handshake = false;
        let mut inner = None;
        let mut failure = None;
        let mut result = peer.tunn.decapsulate(Some(from.ip()), data, &mut self.out);
        loop {
            match result {
                TunnResult::WriteToNetwork(bytes) => {
                    // A cookie reply (type 3) means "under load", not proof.
                    if bytes.first() != Some(&COOKIE_REPLY) {
                        authenticated = true;
                        handshake |= matches!(kind, Kind::Init | Kind::Response);
                    }
                    self.outbox.push((from, bytes.to_vec()));
                    // boringtun: repeat with an empty datagram until Done,
                    // to flush packets queued behind the handshake.
                    result = peer.tunn.decapsulate(None, &[], &mut self.out);
                }
                TunnResult::WriteToTunnelV6(bytes, _) => {
                    authenticated = true;
                    inner = Some(bytes.to_vec());
                    break;
                }
                TunnResult::WriteToTunnelV4(bytes, _) => {
                    authenticated = true;
                    lock(&self.counters).received(bytes.len());
                    failure = Some(DropReason::NotIpv6);
                    break;
                }
                TunnResult::Done => {
                    // A keepalive or a cookie: authenticated, nothing to do.
                    authenticated |= matches!(kind, Kind::Data | Kind::Cookie);
                    break;
                }
                // Decrypted, but not a whole IP packet.
                TunnResult::Err(WireGuardError::InvalidPacket) if kind == Kind::Data => {
                    authenticated = true;
                    lock(&self.counters).received(0);
                    failure = Some(DropReason::NotIpv6);
                    break;
                }
                TunnResult::Err(err) => {
                    tracing::debug!(?err, "embedded agent: datagram rejected");
                    failure = Some(DropReason::InvalidDatagram);
                    break;
                }
            }
        }
        if authenticated && peer.endpoint != Some(from) {
            peer.endpoint = Some(from);
            lock(&self.counters).peer_endpoint(&peer.key, from);
        }
        if handshake {
            let mut counters = lock(&self.counters);
            counters.handshakes = counters.handshakes.saturating_add(1);
        }
        if let Some(reason) = failure {
            self.drop_counted(reason);
        }
        if let Some(packet) = inner {
            self.inner_packet(key, &packet);
        }
    }

    /// One decrypted IPv6 packet from tunnel `key`.
    fn inner_packet(&mut self, key: KeyBytes, packet: &[u8]) {
        let source = responder::source(packet);
        {
            let mut counters = lock(&self.counters);
            counters.received(packet.len());
            if source.is_some() {
                counters.last_inner_source = source;
            }
        }
        let Some(source) = source else {
            return self.drop_counted(DropReason::Malformed);
        };
        if !self.allowed_source(&key, source) {
            return self.drop_counted(DropReason::BadSource);
        }
        match responder::respond(&self.addresses, packet) {
            Verdict::Reply(reply) => self.send_inner(&key, &reply),
            Verdict::Tcp { unknown_port } => {
                if unknown_port {
                    self.drop_counted(DropReason::UnknownPort);
                }
                if self.routes.len() >= MAX_ROUTES && !self.routes.contains_key(&source) {
                    self.routes.clear();
                }
                self.routes.insert(source, key);
                if self.tcp.receive(packet) {
                    self.poll_tcp();
                } else {
                    self.drop_counted(DropReason::Overload);
                }
            }
            Verdict::Discarded(len) => lock(&self.counters).discarded(len),
            Verdict::Drop(reason) => self.drop_counted(reason),
        }
    }

    /// Whether `source` lies in an address tunnel `key` announced; a
    /// tunnel that announced none may use any.
    fn allowed_source(&self, key: &KeyBytes, source: Ipv6Addr) -> bool {
        self.tunnels
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allows(key, source)
    }

    /// Encrypts `packet` to tunnel `key` and queues it for its endpoint.
    fn send_inner(&mut self, key: &KeyBytes, packet: &[u8]) {
        let Some(peer) = self.peers.get_mut(key) else {
            return;
        };
        if packet.len() + WG_OVERHEAD + 148 > self.out.len() {
            lock(&self.counters).dropped.count(DropReason::Malformed);
            return;
        }
        lock(&self.counters).sent(packet.len());
        match peer.tunn.encapsulate(packet, &mut self.out) {
            TunnResult::WriteToNetwork(bytes) => {
                if let Some(endpoint) = peer.endpoint {
                    self.outbox.push((endpoint, bytes.to_vec()));
                }
            }
            TunnResult::Err(err) => tracing::debug!(?err, "embedded agent: encapsulate failed"),
            // Queued behind a handshake.
            _ => {}
        }
    }

    /// Runs the TCP stack and sends what it produced to the tunnel each
    /// destination was last seen through.
    fn poll_tcp(&mut self) {
        for packet in self.tcp.poll() {
            let route = tcp::destination(&packet).and_then(|dst| self.routes.get(&dst).copied());
            match route {
                Some(key) => self.send_inner(&key, &packet),
                None => tracing::debug!("embedded agent: TCP output with no route; dropped"),
            }
        }
    }

    /// boringtun's timers for every session: rekeys, keepalives, expiry.
    fn timers(&mut self) {
        self.limiter.reset_count();
        for peer in self.peers.values_mut() {
            match peer.tunn.update_timers(&mut self.out) {
                TunnResult::WriteToNetwork(bytes) => {
                    if let Some(endpoint) = peer.endpoint {
                        self.outbox.push((endpoint, bytes.to_vec()));
                    }
                }
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(err) => tracing::debug!(?err, "embedded agent: timer error"),
                _ => {}
            }
        }
        self.poll_tcp();
    }
}
