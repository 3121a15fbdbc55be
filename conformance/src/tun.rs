//! The harness's end of the tunnel's tun descriptor (protocol.md §9.5).
//!
//! Every launched tunnel inherits one end of a datagram socket pair as its
//! tun (`$tun_fd`, [`crate::target::Running::tun`]): one IP packet per
//! datagram, as on a real TUN device. On macOS the descriptor is a utun,
//! where each packet starts with a 4-byte address family; a tunnel built
//! for macOS expects that, so the harness can add and strip it
//! ([`Framing::Utun`], `codervpn conform --tun-framing utun`). A datagram
//! whose framing is wrong is still delivered, described with an `error`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

use crate::packet::parse::hex;
use crate::packet::{describe, parse::for_record};
use crate::transcript::{Direction, RecordedItem};

/// `AF_INET` on the utun header.
const AF_INET: u32 = 2;
/// `AF_INET6` on Darwin (§9.5).
const AF_INET6_DARWIN: u32 = 30;
/// Largest datagram read.
const MAX_DATAGRAM: usize = 65_536;
/// Packets held for the engine before the oldest unread ones are dropped
/// (a flood must not grow memory without bound).
const QUEUE: usize = 4_096;
/// Bound on one write to the tun.
pub const SEND_LIMIT: Duration = Duration::from_secs(2);

/// How packets are framed on the descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Bare IP packets (Linux, Windows, the socket pair default).
    #[default]
    Raw,
    /// The macOS utun header: the address family as u32be, then the packet.
    Utun,
}

impl Framing {
    /// The datagram carrying `packet`; with utun, the family comes from the
    /// IP version nibble (anything not 4 is sent as IPv6, so that raw test
    /// bytes still go out).
    pub fn frame(self, packet: &[u8]) -> Vec<u8> {
        match self {
            Framing::Raw => packet.to_vec(),
            Framing::Utun => {
                let family = match packet.first().map(|b| b >> 4) {
                    Some(4) => AF_INET,
                    _ => AF_INET6_DARWIN,
                };
                let mut out = family.to_be_bytes().to_vec();
                out.extend_from_slice(packet);
                out
            }
        }
    }

    /// The packet in `datagram`, or why its framing is wrong (with the
    /// bytes after any header, to describe them anyway).
    pub fn unframe(self, datagram: &[u8]) -> Result<&[u8], (String, &[u8])> {
        match self {
            Framing::Raw => Ok(datagram),
            Framing::Utun => {
                let Some((head, packet)) = datagram.split_first_chunk::<4>() else {
                    return Err((
                        format!("a {}-byte datagram has no utun header", datagram.len()),
                        datagram,
                    ));
                };
                let family = u32::from_be_bytes(*head);
                let expected = match packet.first().map(|b| b >> 4) {
                    Some(4) => AF_INET,
                    Some(6) => AF_INET6_DARWIN,
                    _ => return Err((format!("utun family {family}, not an IP packet"), packet)),
                };
                if family == expected {
                    Ok(packet)
                } else {
                    Err((
                        format!(
                            "utun family {family} on an IPv{} packet (protocol.md §9.5)",
                            packet[0] >> 4
                        ),
                        packet,
                    ))
                }
            }
        }
    }
}

/// A packet the tunnel wrote, as the engine sees it.
#[derive(Debug, Clone)]
pub struct TunPacket {
    /// The IP packet (framing removed).
    pub bytes: Vec<u8>,
    /// Its description ([`crate::packet`]).
    pub description: Value,
}

/// Our end of the tun: the socket and its framing.
#[derive(Debug)]
pub struct TunPort {
    socket: UnixDatagram,
    framing: Framing,
}

/// Something for the recording, as the engine's recorder takes it.
pub type Record = Arc<dyn Fn(Direction, RecordedItem) + Send + Sync>;

impl TunPort {
    /// Wraps our end of the socket pair (needs a tokio runtime).
    pub fn new(
        socket: std::os::unix::net::UnixDatagram,
        framing: Framing,
    ) -> std::io::Result<TunPort> {
        socket.set_nonblocking(true)?;
        Ok(TunPort {
            socket: UnixDatagram::from_std(socket)?,
            framing,
        })
    }

    /// Starts reading: every packet is recorded as it arrives and queued
    /// for the engine. Returns the writer half and the queue.
    pub fn start(self, record: Record) -> (TunWriter, mpsc::Receiver<TunPacket>) {
        let socket = Arc::new(self.socket);
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(read_loop(socket.clone(), self.framing, tx, record));
        (
            TunWriter {
                socket,
                framing: self.framing,
            },
            rx,
        )
    }
}

async fn read_loop(
    socket: Arc<UnixDatagram>,
    framing: Framing,
    tx: mpsc::Sender<TunPacket>,
    record: Record,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut dropped = 0u64;
    let mut empty_in_a_row = 0u32;
    loop {
        let n = match socket.recv(&mut buf).await {
            Ok(n) => n,
            Err(err) => {
                record(
                    Direction::Received,
                    RecordedItem::Error(format!("tun read failed: {err}")),
                );
                return;
            }
        };
        // A closed peer may read as endless empty datagrams: stop then.
        empty_in_a_row = if n == 0 { empty_in_a_row + 1 } else { 0 };
        if empty_in_a_row > 100 {
            record(
                Direction::Received,
                RecordedItem::Error("tun: the tunnel's end is closed".into()),
            );
            return;
        }
        let datagram = &buf[..n];
        let (bytes, description) = match framing.unframe(datagram) {
            Ok(packet) => (packet.to_vec(), describe(packet)),
            Err((why, rest)) => {
                let mut description = describe(rest);
                description["error"] = json!(why);
                description["raw"] = json!(hex(datagram));
                (rest.to_vec(), description)
            }
        };
        record(
            Direction::Received,
            RecordedItem::Packet(for_record(&description)),
        );
        match tx.try_send(TunPacket { bytes, description }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                if dropped.is_power_of_two() {
                    record(
                        Direction::Received,
                        RecordedItem::Error(format!("tun: {dropped} packets dropped unread")),
                    );
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Writes packets to the tunnel.
#[derive(Debug, Clone)]
pub struct TunWriter {
    socket: Arc<UnixDatagram>,
    framing: Framing,
}

impl TunWriter {
    /// Writes one packet, framed; bounded by [`SEND_LIMIT`].
    pub async fn send(&self, packet: &[u8]) -> Result<(), String> {
        let datagram = self.framing.frame(packet);
        let started = Instant::now();
        match tokio::time::timeout(SEND_LIMIT, self.socket.send(&datagram)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(format!("writing to the tun failed: {err}")),
            Err(_) => Err(format!(
                "the tunnel did not read its tun for {:?} (writing a packet stalled)",
                started.elapsed()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utun_framing_follows_the_ip_version() {
        let v6 = [0x60, 0, 0, 0];
        let v4 = [0x45, 0, 0, 0];
        assert_eq!(Framing::Utun.frame(&v6)[..4], [0, 0, 0, 0x1e]);
        assert_eq!(Framing::Utun.frame(&v4)[..4], [0, 0, 0, 2]);
        assert_eq!(Framing::Raw.frame(&v6), v6);
        assert_eq!(
            Framing::Utun.unframe(&Framing::Utun.frame(&v6)),
            Ok(&v6[..])
        );
        assert_eq!(Framing::Raw.unframe(&v6), Ok(&v6[..]));
        let (why, rest) = Framing::Utun.unframe(&[0, 0, 0, 2, 0x60, 0]).unwrap_err();
        assert!(why.contains("utun family 2 on an IPv6 packet"), "{why}");
        assert_eq!(rest, [0x60, 0]);
        assert!(
            Framing::Utun
                .unframe(&[0, 0])
                .unwrap_err()
                .0
                .contains("no utun header")
        );
    }

    #[tokio::test]
    async fn packets_go_both_ways_and_are_recorded() {
        let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let port = TunPort::new(ours, Framing::Utun).unwrap();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = log.clone();
        let (writer, mut rx) = port.start(Arc::new(move |dir, item| {
            keep.lock().unwrap().push((dir, item));
        }));
        writer.send(&[0x60, 1, 2]).await.unwrap();
        let mut buf = [0u8; 16];
        let n = theirs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], [0, 0, 0, 0x1e, 0x60, 1, 2]);
        theirs.send(&[0, 0, 0, 2, 0x45]).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.bytes, [0x45]);
        assert!(
            got.description["error"]
                .as_str()
                .unwrap()
                .contains("not an IP packet")
        );
        assert_eq!(got.description["raw"], "45");
        assert!(matches!(
            log.lock().unwrap()[0],
            (Direction::Received, RecordedItem::Packet(_))
        ));
    }
}
