//! The packet device the manager hands over (protocol.md §9.5): a TUN
//! device or a datagram socket, one IP packet per read and per write,
//! optionally behind macOS utun's 4-byte address-family header.

use std::fs::File;
use std::io::{IoSlice, Read, Write};
use std::os::fd::OwnedFd;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// How packets are framed on the device (a launch option, §9.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Bare IP packets (Linux TUN with IFF_NO_PI, datagram sockets).
    #[default]
    Raw,
    /// macOS utun: the protocol family as u32 big-endian, then the packet.
    Utun,
}

impl std::str::FromStr for Framing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Framing::Raw),
            "utun" => Ok(Framing::Utun),
            other => Err(format!(
                "unknown tun framing {other:?}: expected raw or utun"
            )),
        }
    }
}

/// utun's family numbers (Darwin values).
const AF_INET: [u8; 4] = [0, 0, 0, 2];
const AF_INET6: [u8; 4] = [0, 0, 0, 30];
const UTUN_HEADER: usize = 4;

/// The device, shared by the reading and the writing task.
#[derive(Debug)]
pub struct PacketDevice {
    fd: AsyncFd<File>,
    framing: Framing,
}

/// A datagram the device gave that is not a packet of this framing.
#[derive(Debug, thiserror::Error)]
#[error("utun frame with family {0:02x?}: neither AF_INET (2) nor AF_INET6 (30)")]
pub struct BadFamily(pub [u8; 4]);

impl PacketDevice {
    /// Wraps a non-blocking descriptor (see `fd::dup_packet_device`).
    pub fn new(fd: OwnedFd, framing: Framing) -> std::io::Result<Self> {
        Ok(PacketDevice {
            fd: crate::fd::register_packet_device(fd)?,
            framing,
        })
    }

    /// Waits for the next datagram and returns the IP packet's range in
    /// `buf`. A utun frame with an unknown family is an error for that one
    /// datagram only.
    pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<Result<(usize, usize), BadFamily>> {
        let n = self
            .fd
            .async_io(Interest::READABLE, |mut file| file.read(buf))
            .await?;
        Ok(match self.framing {
            Framing::Raw => Ok((0, n)),
            Framing::Utun => {
                let header = &buf[..n.min(UTUN_HEADER)];
                if header == AF_INET || header == AF_INET6 {
                    Ok((UTUN_HEADER, n))
                } else {
                    let mut family = [0u8; 4];
                    family[..header.len()].copy_from_slice(header);
                    Err(BadFamily(family))
                }
            }
        })
    }

    /// Writes one packet without waiting: a device that cannot take it now
    /// drops it, as a full interface queue would (`Ok(false)`), so that a
    /// reader that stalls never stalls the WireGuard side.
    pub fn try_send(&self, packet: &[u8]) -> std::io::Result<bool> {
        let result = match self.framing {
            Framing::Raw => self.fd.get_ref().write(packet),
            Framing::Utun => {
                let family = if packet.first().is_some_and(|b| b >> 4 == 4) {
                    AF_INET
                } else {
                    AF_INET6
                };
                self.fd
                    .get_ref()
                    .write_vectored(&[IoSlice::new(&family), IoSlice::new(packet)])
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(false),
            Err(err) => Err(err),
        }
    }
}
