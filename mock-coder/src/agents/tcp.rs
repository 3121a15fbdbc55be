//! The agent's TCP echo service on port 7: a smoltcp stack per agent, fed
//! with decrypted packets, whose output goes back through WireGuard.
//!
//! A real TCP stack (rather than canned SYN-ACKs) is what lets a test open
//! a connection through the tunnel, move some kilobytes both ways and close
//! it, exercising the tunnel's MTU and ordering for real.
//!
//! A fixed pool of listening sockets serves several connections at once; a
//! socket that closes listens again. Buffers and queues are bounded; a
//! connection whose peer vanished is aborted by smoltcp's timeout.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv6Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use super::responder::{Addresses, TCP_ECHO_PORT};

/// Connections served at once; more get a RST until one closes.
pub const TCP_POOL: usize = 8;
/// Receive and send buffer of each connection.
const BUFFER: usize = 32 * 1024;
/// Inner MTU the stack assumes: Coder's tunnel MTU, so segments always fit.
const MTU: usize = 1280;
/// Packets queued for the stack between polls; more are dropped (TCP
/// retransmits them).
const QUEUE: usize = 256;
/// An idle connection is probed this often, and aborted after
/// [`IDLE_TIMEOUT`] without an answer.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A smoltcp device that is two packet queues: `rx` is what the stack
/// reads next, `tx` what it wrote. The agent's stack uses it, and so can
/// a test that wants a real TCP client on the other end of the tunnel.
#[derive(Debug, Default)]
pub struct PacketQueues {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
}

#[derive(Debug)]
pub struct Rx(Vec<u8>);
#[derive(Debug)]
pub struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let result = f(&mut packet);
        self.0.push(packet);
        result
    }
}

impl Device for PacketQueues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

/// One agent's TCP stack.
pub(crate) struct TcpEcho {
    iface: Interface,
    queues: PacketQueues,
    sockets: SocketSet<'static>,
    handles: Vec<SocketHandle>,
    epoch: std::time::Instant,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for TcpEcho {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEcho")
            .field("queued", &self.queues.rx.len())
            .finish_non_exhaustive()
    }
}

impl TcpEcho {
    pub(crate) fn new(addresses: Addresses) -> TcpEcho {
        let epoch = std::time::Instant::now();
        let mut queues = PacketQueues::default();
        let mut config = Config::new(HardwareAddress::Ip);
        // Initial sequence numbers need not be secret here, only varied.
        config.random_seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let mut iface = Interface::new(config, &mut queues, Instant::ZERO);
        iface.update_ip_addrs(|ips| {
            for address in [addresses.coder, addresses.tailscale] {
                if ips
                    .push(IpCidr::new(IpAddress::Ipv6(address), 128))
                    .is_err()
                {
                    tracing::warn!(%address, "smoltcp address table full");
                }
            }
        });
        // Everything goes back into the tunnel: one default route.
        if iface
            .routes_mut()
            .add_default_ipv6_route(addresses.coder)
            .is_err()
        {
            tracing::warn!("smoltcp route table full");
        }
        let mut sockets = SocketSet::new(Vec::new());
        let handles = (0..TCP_POOL)
            .map(|_| {
                let socket = tcp::Socket::new(
                    tcp::SocketBuffer::new(vec![0; BUFFER]),
                    tcp::SocketBuffer::new(vec![0; BUFFER]),
                );
                sockets.add(socket)
            })
            .collect();
        let mut echo = TcpEcho {
            iface,
            queues,
            sockets,
            handles,
            epoch,
            scratch: vec![0; BUFFER],
        };
        echo.listen_all();
        echo
    }

    fn now(&self) -> Instant {
        let elapsed = self.epoch.elapsed();
        Instant::from_micros(i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
    }

    /// Queues one inbound packet; false if the queue is full (dropped).
    pub(crate) fn receive(&mut self, packet: &[u8]) -> bool {
        if self.queues.rx.len() >= QUEUE {
            return false;
        }
        self.queues.rx.push_back(packet.to_vec());
        true
    }

    /// Runs the stack: takes queued input, echoes what arrived, and returns
    /// the packets to send.
    pub(crate) fn poll(&mut self) -> Vec<Vec<u8>> {
        // A few rounds: input, echo, then the output the echo produced.
        for _ in 0..4 {
            let now = self.now();
            self.iface.poll(now, &mut self.queues, &mut self.sockets);
            let echoed = self.echo();
            self.listen_all();
            if !echoed && self.queues.rx.is_empty() {
                break;
            }
        }
        std::mem::take(&mut self.queues.tx)
    }

    /// How long until the stack needs [`TcpEcho::poll`] again (timers).
    pub(crate) fn delay(&mut self) -> Option<std::time::Duration> {
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| std::time::Duration::from_micros(d.total_micros()))
    }

    /// Moves received bytes to the send side; closes connections whose
    /// peer has finished sending once everything went back.
    fn echo(&mut self) -> bool {
        let mut moved = false;
        for handle in &self.handles {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            while socket.can_recv() && socket.can_send() {
                let room = socket.send_capacity() - socket.send_queue();
                let want = room.min(self.scratch.len());
                if want == 0 {
                    break;
                }
                let read = match socket.recv_slice(&mut self.scratch[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => read,
                };
                // `read` fits: it was limited to the free send space.
                let _ = socket.send_slice(&self.scratch[..read]);
                moved = true;
            }
            if socket.state() == tcp::State::CloseWait
                && !socket.can_recv()
                && socket.send_queue() == 0
            {
                socket.close();
                moved = true;
            }
        }
        moved
    }

    /// Every closed socket of the pool listens again.
    fn listen_all(&mut self) {
        for handle in &self.handles {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            if socket.state() == tcp::State::Closed {
                socket.set_keep_alive(Some(KEEP_ALIVE));
                socket.set_timeout(Some(IDLE_TIMEOUT));
                if let Err(err) = socket.listen(TCP_ECHO_PORT) {
                    tracing::warn!(?err, "smoltcp listen failed");
                }
            }
        }
    }
}

/// The destination of a packet the stack produced.
pub(crate) fn destination(packet: &[u8]) -> Option<Ipv6Addr> {
    super::responder::destination(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, TcpHeaderSlice};

    #[test]
    fn syn_gets_syn_ack_and_other_ports_rst() {
        let agent = Addresses {
            coder: Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 0x101, 0, 0, 0, 0),
            tailscale: Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0x101, 0, 0, 0, 0),
        };
        let tunnel = Ipv6Addr::new(0xfd60, 0x627a, 0xa42b, 1, 2, 3, 4, 5);
        let mut echo = TcpEcho::new(agent);
        for (port, syn_ack) in [(7, true), (80, false)] {
            let builder = PacketBuilder::ipv6(tunnel.octets(), agent.tailscale.octets(), 64)
                .tcp(40000, port, 1000, 65535)
                .syn();
            let mut syn = Vec::new();
            builder.write(&mut syn, &[]).unwrap();
            assert!(echo.receive(&syn));
            let out = echo.poll();
            assert_eq!(out.len(), 1, "port {port}");
            assert_eq!(destination(&out[0]), Some(tunnel));
            let tcp = TcpHeaderSlice::from_slice(&out[0][40..]).unwrap();
            assert_eq!(tcp.source_port(), port);
            assert_eq!(tcp.syn() && tcp.ack(), syn_ack, "port {port}");
            assert_eq!(tcp.rst(), !syn_ack, "port {port}");
        }
    }
}
