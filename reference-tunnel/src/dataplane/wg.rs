//! One WireGuard session per agent (boringtun's `Tunn`), and the table
//! that routes to them: cryptokey routing, keyed by the agent's inner
//! addresses one way and by session index and public key the other.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::x25519::{PublicKey, StaticSecret};
use codervpn_proto::LastPing;
use codervpn_proto::ids::{agent_address, ping_address};
use uuid::Uuid;

/// An agent as the dataplane needs it: who, which key, where.
#[derive(Debug, Clone)]
pub struct PeerSpec {
    pub agent: Uuid,
    pub public_key: PublicKey,
    pub endpoint: Option<SocketAddr>,
}

/// Pings awaiting a reply, per peer; the oldest are forgotten first.
const MAX_OUTSTANDING_PINGS: usize = 8;

/// One agent's session.
pub struct Peer {
    pub agent: Uuid,
    key: [u8; 32],
    /// The session index boringtun puts (shifted) in every packet to us.
    index: u32,
    /// Coder-prefix address (routes, DNS) and Tailscale-prefix address
    /// (pings), the only inner sources accepted from this agent (§9.3).
    pub addrs: [Ipv6Addr; 2],
    tunn: Mutex<Tunn>,
    endpoint: Mutex<Option<SocketAddr>>,
    pings: Mutex<Pings>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("agent", &self.agent)
            .field("index", &self.index)
            .field("endpoint", &self.endpoint())
            .finish()
    }
}

#[derive(Default)]
struct Pings {
    outstanding: VecDeque<(u16, Instant)>,
    last: Option<LastPing>,
}

/// A poisoned lock only means another task panicked mid-update; the data
/// (a session, an address) is still usable, so carry on with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Peer {
    fn new(spec: &PeerSpec, secret: &StaticSecret, index: u32, limiter: &Arc<RateLimiter>) -> Self {
        let tunn = Tunn::new(
            secret.clone(),
            spec.public_key,
            None,
            None,
            index,
            Some(limiter.clone()),
        );
        Peer {
            agent: spec.agent,
            key: *spec.public_key.as_bytes(),
            index,
            addrs: [agent_address(spec.agent), ping_address(spec.agent)],
            tunn: Mutex::new(tunn),
            endpoint: Mutex::new(spec.endpoint),
            pings: Mutex::new(Pings::default()),
        }
    }

    /// The session, locked for one packet's work.
    pub fn tunn(&self) -> MutexGuard<'_, Tunn> {
        lock(&self.tunn)
    }

    pub fn endpoint(&self) -> Option<SocketAddr> {
        *lock(&self.endpoint)
    }

    /// Roaming: authenticated packets from a new address move the peer.
    pub fn set_endpoint(&self, addr: SocketAddr) {
        let mut endpoint = lock(&self.endpoint);
        if *endpoint != Some(addr) {
            *endpoint = Some(addr);
        }
    }

    /// Is `src` one of this agent's addresses (cryptokey routing)?
    pub fn owns(&self, src: Ipv6Addr) -> bool {
        self.addrs.contains(&src)
    }

    pub fn ping_sent(&self, seq: u16) {
        let mut pings = lock(&self.pings);
        if pings.outstanding.len() == MAX_OUTSTANDING_PINGS {
            pings.outstanding.pop_front();
        }
        pings.outstanding.push_back((seq, Instant::now()));
    }

    /// Records the reply to ping `seq`; false if no such ping is waiting.
    pub fn ping_answered(&self, seq: u16) -> bool {
        let mut pings = lock(&self.pings);
        let Some(at) = pings.outstanding.iter().position(|(s, _)| *s == seq) else {
            return false;
        };
        let Some((_, sent)) = pings.outstanding.remove(at) else {
            return false;
        };
        let latency = sent.elapsed();
        pings.last = Some(LastPing {
            latency: prost_types::Duration::try_from(latency).ok(),
            // Every path is a direct UDP path: the dataplane has no relay.
            did_p2p: true,
            preferred_derp: String::new(),
            preferred_derp_latency: None,
        });
        true
    }

    /// What the periodic update reports (§6.9): the latest ping, and when
    /// the last handshake completed.
    pub fn observation(&self) -> Observation {
        let since = self.tunn().time_since_last_handshake();
        Observation {
            agent: self.agent,
            last_handshake: since.and_then(|d| SystemTime::now().checked_sub(d)),
            last_ping: lock(&self.pings).last.clone(),
        }
    }
}

/// One agent's measured state.
#[derive(Debug, Clone)]
pub struct Observation {
    pub agent: Uuid,
    pub last_handshake: Option<SystemTime>,
    pub last_ping: Option<LastPing>,
}

/// Every session, by each key a packet can be routed by.
#[derive(Debug, Default)]
pub struct PeerTable {
    by_addr: HashMap<Ipv6Addr, Arc<Peer>>,
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    by_agent: HashMap<Uuid, Arc<Peer>>,
}

/// boringtun keeps 24 bits of the index (it shifts it left by 8).
const INDEX_MASK: u32 = 0x00ff_ffff;

impl PeerTable {
    /// The table for `specs`, keeping the session of every agent whose key
    /// is unchanged (so a control-plane reconnect or a repeated snapshot
    /// does not break flows). Returns the table and the peers that are new.
    pub fn rebuild(
        &self,
        specs: &[PeerSpec],
        secret: &StaticSecret,
        next_index: &AtomicU32,
        limiter: &Arc<RateLimiter>,
    ) -> (PeerTable, Vec<Arc<Peer>>) {
        let mut table = PeerTable::default();
        let mut added = Vec::new();
        for spec in specs {
            let peer = match self.by_agent.get(&spec.agent) {
                Some(old) if old.key == *spec.public_key.as_bytes() => {
                    if let Some(endpoint) = spec.endpoint {
                        old.set_endpoint(endpoint);
                    }
                    old.clone()
                }
                _ => {
                    let index = next_index.fetch_add(1, Ordering::Relaxed) & INDEX_MASK;
                    let peer = Arc::new(Peer::new(spec, secret, index, limiter));
                    added.push(peer.clone());
                    peer
                }
            };
            for addr in peer.addrs {
                table.by_addr.insert(addr, peer.clone());
            }
            table.by_index.insert(peer.index, peer.clone());
            table.by_key.insert(peer.key, peer.clone());
            table.by_agent.insert(peer.agent, peer);
        }
        (table, added)
    }

    /// The peer that owns inner address `dst`.
    pub fn route(&self, dst: &Ipv6Addr) -> Option<&Arc<Peer>> {
        self.by_addr.get(dst)
    }

    /// The peer a data packet, handshake response or cookie is for.
    pub fn by_receiver(&self, receiver_idx: u32) -> Option<&Arc<Peer>> {
        self.by_index.get(&(receiver_idx >> 8))
    }

    /// The peer a handshake initiation comes from.
    pub fn by_key(&self, key: &[u8; 32]) -> Option<&Arc<Peer>> {
        self.by_key.get(key)
    }

    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.by_agent.values()
    }

    pub fn len(&self) -> usize {
        self.by_agent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_agent.is_empty()
    }
}
