//! Embedded mock agents: for every online agent of the scenario, a real
//! WireGuard peer (boringtun) on its own UDP socket, answering on the
//! agent's two addresses (protocol.md §9.3), so a tunnel's dataplane can be
//! tested end to end — handshakes, pings (§6.9), UDP and TCP — with no
//! kernel WireGuard and no privileges.
//!
//! * `wg`: the agent's task (socket, sessions, timers).
//! * `responder`: ICMPv6 echo, UDP echo / spoofed echo / discard.
//! * `tcp`: TCP echo through a smoltcp stack.
//! * [`stats`]: what each agent counts.
//!
//! This module is the registry: it starts an agent when the scenario makes
//! it online, stops it when it goes away (deleted, offline, or pointed at
//! an external node), keeps each agent's key for the life of the mock so a
//! re-added agent comes back with the same key, and tells every agent which
//! tunnel keys were announced on the coordination stream.

pub mod responder;
pub mod stats;
mod tcp;
mod wg;

pub use tcp::PacketQueues;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use boringtun::x25519::{PublicKey, StaticSecret};
use codervpn_proto::ids;
use codervpn_reference_tunnel::control::api::{Node, TunnelNode};
use codervpn_reference_tunnel::dataplane::keys;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::scenario::{Action, AgentSpec};
use responder::Addresses;
use stats::{AgentStats, Counters};

pub use wg::TIMER_TICK;

/// A Curve25519 public key's bytes.
pub(crate) type KeyBytes = [u8; 32];

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tunnel keys announced to this mock, each with the inner source
/// prefixes it announced (its WireGuard "allowed IPs" as an agent sees it).
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    keys: HashMap<KeyBytes, Vec<(Ipv6Addr, u8)>>,
}

impl Tunnels {
    pub(crate) fn contains(&self, key: &KeyBytes) -> bool {
        self.keys.contains_key(key)
    }

    /// Whether tunnel `key` may send from `source`. A tunnel that announced
    /// no usable address may send from any.
    pub(crate) fn allows(&self, key: &KeyBytes, source: Ipv6Addr) -> bool {
        match self.keys.get(key) {
            None => false,
            Some(prefixes) if prefixes.is_empty() => true,
            Some(prefixes) => prefixes
                .iter()
                .any(|(net, len)| in_prefix(source, *net, *len)),
        }
    }
}

fn in_prefix(address: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(address) & mask == u128::from(net) & mask
}

/// `addr/len` or a bare address (`/128`); IPv4 and junk give `None`.
fn parse_prefix(text: &str) -> Option<(Ipv6Addr, u8)> {
    let (address, len) = match text.split_once('/') {
        Some((address, len)) => (address, len.parse::<u8>().ok()?),
        None => (text, 128),
    };
    let address: Ipv6Addr = address.trim().parse().ok()?;
    (len <= 128).then_some((address, len))
}

/// How long [`Agents::shutdown`] waits for agent tasks before aborting them.
const STOP_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Running {
    name: String,
    node: Node,
    addresses: Addresses,
    counters: Arc<Mutex<Counters>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Registry {
    /// Every agent's key, kept after it stops so it returns with it.
    keys: HashMap<Uuid, StaticSecret>,
    running: BTreeMap<Uuid, Running>,
    /// Agents deleted with `keep_running`: left running, unpublished.
    orphans: HashSet<Uuid>,
    /// Tasks told to stop; awaited at shutdown.
    stopping: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Registry {
    // Keys are secrets: only their count is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("keys", &self.keys.len())
            .field("running", &self.running)
            .field("stopping", &self.stopping.len())
            .finish()
    }
}

/// The embedded agents of one mock.
#[derive(Debug)]
pub(crate) struct Agents {
    bind_ip: IpAddr,
    runtime: tokio::runtime::Handle,
    root: CancellationToken,
    tunnels: Arc<RwLock<Tunnels>>,
    /// Bumped on every announcement, so agents retry held handshakes.
    announced: tokio::sync::watch::Sender<u64>,
    registry: Mutex<Registry>,
}

impl Agents {
    /// Agents bind `bind_ip:0`; tasks run on the current tokio runtime.
    pub(crate) fn new(bind_ip: IpAddr) -> Agents {
        Agents {
            bind_ip,
            runtime: tokio::runtime::Handle::current(),
            root: CancellationToken::new(),
            tunnels: Arc::default(),
            announced: tokio::sync::watch::Sender::new(0),
            registry: Mutex::default(),
        }
    }

    /// The node to publish for agent `id`, starting its embedded agent if
    /// it is not running. `None` (published as offline) if its socket
    /// cannot be bound, or after shutdown.
    pub(crate) fn ensure(&self, id: Uuid, name: &str) -> Option<Node> {
        let mut registry = lock(&self.registry);
        if let Some(running) = registry.running.get_mut(&id) {
            name.clone_into(&mut running.name);
            return Some(running.node.clone());
        }
        if self.root.is_cancelled() {
            return None;
        }
        let socket = match std::net::UdpSocket::bind(SocketAddr::new(self.bind_ip, 0))
            .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
        {
            Ok(socket) => socket,
            Err(err) => {
                tracing::warn!(%err, bind = %self.bind_ip, agent = %id, "cannot bind an embedded agent; publishing it offline");
                return None;
            }
        };
        let endpoint = match socket.local_addr() {
            Ok(endpoint) => endpoint,
            Err(err) => {
                tracing::warn!(%err, agent = %id, "embedded agent socket has no address");
                return None;
            }
        };
        let secret = registry
            .keys
            .entry(id)
            .or_insert_with(keys::generate)
            .clone();
        let node = Node {
            public_key: keys::to_base64(&PublicKey::from(&secret)),
            endpoint: Some(endpoint),
        };
        let addresses = Addresses {
            coder: ids::agent_address(id),
            tailscale: ids::ping_address(id),
        };
        let counters = Arc::new(Mutex::new(Counters::default()));
        let cancel = self.root.child_token();
        let task = self.runtime.spawn(wg::run(wg::AgentTask {
            secret,
            addresses,
            socket,
            tunnels: self.tunnels.clone(),
            announced: self.announced.subscribe(),
            counters: counters.clone(),
            cancel: cancel.clone(),
        }));
        tracing::debug!(agent = %id, %endpoint, "embedded agent started");
        registry.running.insert(
            id,
            Running {
                name: name.to_owned(),
                node: node.clone(),
                addresses,
                counters,
                cancel,
                task,
            },
        );
        Some(node)
    }

    /// `spec` as published: `node` replaced by the embedded agent's (started
    /// if needed), or by `external_node`, which no agent is started for.
    pub(crate) fn publish(&self, spec: &AgentSpec) -> AgentSpec {
        AgentSpec {
            id: spec.id,
            name: spec.name.clone(),
            node: self.published_node(
                spec.id,
                &spec.name,
                spec.node.as_ref(),
                spec.external_node.as_ref(),
            ),
            external_node: None,
        }
    }

    /// `action` with every agent's node as published (see [`Agents::publish`]).
    pub(crate) fn publish_action(&self, action: &Action) -> Action {
        match action {
            Action::UpsertWorkspace {
                id,
                name,
                status,
                agents,
            } => Action::UpsertWorkspace {
                id: *id,
                name: name.clone(),
                status: *status,
                agents: agents.iter().map(|spec| self.publish(spec)).collect(),
            },
            Action::UpsertAgent {
                id,
                name,
                workspace_id,
                node,
            } => Action::UpsertAgent {
                id: *id,
                name: name.clone(),
                workspace_id: *workspace_id,
                node: self.published_node(*id, name, node.as_ref(), None),
            },
            other => other.clone(),
        }
    }

    fn published_node(
        &self,
        id: Uuid,
        name: &str,
        node: Option<&Node>,
        external: Option<&Node>,
    ) -> Option<Node> {
        match (external, node) {
            (Some(external), _) => Some(external.clone()),
            (None, Some(_)) => self.ensure(id, name),
            (None, None) => None,
        }
    }

    /// Keeps agent `id` running after the control plane deletes it (see
    /// `Action::DeleteAgent::keep_running`); publishing it again ends that.
    pub(crate) fn orphan(&self, id: Uuid) {
        lock(&self.registry).orphans.insert(id);
    }

    /// Stops every running agent for which `published` (the node the state
    /// now publishes for that id) is not its own node, except orphans.
    pub(crate) fn retain(&self, published: impl Fn(Uuid) -> Option<Node>) {
        let mut registry = lock(&self.registry);
        let Registry {
            running, orphans, ..
        } = &mut *registry;
        orphans.retain(|id| published(*id).is_none());
        let gone: Vec<Uuid> = running
            .iter()
            .filter(|(id, _)| !orphans.contains(id))
            .filter(|(id, running)| published(**id).as_ref() != Some(&running.node))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(running) = registry.running.remove(&id) {
                tracing::debug!(agent = %id, "embedded agent stopping");
                running.cancel.cancel();
                registry.stopping.retain(|task| !task.is_finished());
                registry.stopping.push(running.task);
            }
        }
    }

    /// A tunnel announced its node: every agent accepts its key from now
    /// on, from the inner addresses it announced.
    pub(crate) fn announce(&self, node: &TunnelNode) {
        let key = match keys::parse(&node.public_key) {
            Ok(key) => *key.as_bytes(),
            Err(err) => {
                tracing::warn!(%err, "tunnel node with an unusable public key; agents ignore it");
                return;
            }
        };
        let prefixes = node
            .addresses
            .iter()
            .filter_map(|text| {
                let prefix = parse_prefix(text);
                if prefix.is_none() {
                    tracing::debug!(address = %text, "tunnel address ignored (not IPv6)");
                }
                prefix
            })
            .collect();
        self.tunnels
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .insert(key, prefixes);
        self.announced.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn stats(&self) -> Vec<AgentStats> {
        let registry = lock(&self.registry);
        registry
            .running
            .iter()
            .filter_map(|(id, running)| {
                let counters = lock(&running.counters).clone();
                Some(AgentStats {
                    id: *id,
                    name: running.name.clone(),
                    public_key: running.node.public_key.clone(),
                    endpoint: running.node.endpoint?,
                    address: running.addresses.coder,
                    ping_address: running.addresses.tailscale,
                    handshakes: counters.handshakes,
                    rx_packets: counters.rx_packets,
                    rx_bytes: counters.rx_bytes,
                    tx_packets: counters.tx_packets,
                    tx_bytes: counters.tx_bytes,
                    discarded_packets: counters.discarded_packets,
                    discarded_bytes: counters.discarded_bytes,
                    dropped: counters.dropped,
                    last_inner_source: counters.last_inner_source,
                    peers: counters.peers,
                })
            })
            .collect()
    }

    /// Tells every agent to stop; no new ones start after this.
    pub(crate) fn cancel_all(&self) {
        self.root.cancel();
    }

    /// Stops every agent and waits (bounded) for their tasks to end.
    pub(crate) async fn shutdown(&self) {
        self.cancel_all();
        let tasks: Vec<JoinHandle<()>> = {
            let mut registry = lock(&self.registry);
            let running = std::mem::take(&mut registry.running);
            let mut tasks = std::mem::take(&mut registry.stopping);
            tasks.extend(running.into_values().map(|running| running.task));
            tasks
        };
        for mut task in tasks {
            if tokio::time::timeout(STOP_GRACE, &mut task).await.is_err() {
                tracing::warn!("embedded agent did not stop in time; aborting it");
                task.abort();
            }
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        self.root.cancel();
        let registry = lock(&self.registry);
        for running in registry.running.values() {
            running.task.abort();
        }
        for task in &registry.stopping {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes() {
        let tunnel: Ipv6Addr = "fd60:627a:a42b:1:2:3:4:5".parse().unwrap();
        assert_eq!(
            parse_prefix("fd60:627a:a42b:1:2:3:4:5/128"),
            Some((tunnel, 128))
        );
        assert_eq!(
            parse_prefix("fd60:627a:a42b:1:2:3:4:5"),
            Some((tunnel, 128))
        );
        assert_eq!(parse_prefix("10.0.0.1/32"), None);
        assert_eq!(parse_prefix("fd60::/129"), None);
        assert_eq!(parse_prefix("junk"), None);
        let mut tunnels = Tunnels::default();
        tunnels.keys.insert([1; 32], vec![(tunnel, 128)]);
        tunnels.keys.insert([2; 32], vec![]);
        tunnels
            .keys
            .insert([3; 32], vec![("fd60:627a:a42b::".parse().unwrap(), 48)]);
        assert!(tunnels.allows(&[1; 32], tunnel));
        assert!(!tunnels.allows(&[1; 32], responder::SPOOFED_SOURCE));
        assert!(tunnels.allows(&[2; 32], responder::SPOOFED_SOURCE));
        assert!(tunnels.allows(&[3; 32], responder::SPOOFED_SOURCE));
        assert!(!tunnels.allows(&[3; 32], "fd7a:115c:a1e0::1".parse().unwrap()));
        assert!(!tunnels.allows(&[4; 32], tunnel));
        assert!(in_prefix(tunnel, Ipv6Addr::UNSPECIFIED, 0));
    }
}
