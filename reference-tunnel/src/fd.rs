//! The RPC stream's descriptors: `--rpc-read-fd R --rpc-write-fd W` as
//! Coder Desktop passes them to `coder vpn-daemon run` (protocol.md §2.2),
//! or standard input and output.
//!
//! Also the packet device named in StartRequest (`dup_packet_device`).
//!
//! Taking ownership of an inherited descriptor number is the one `unsafe`
//! step; this module is the only place it happens.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::{AsyncRead, AsyncWrite};

/// Reading half of the RPC stream.
pub type RpcReader = Box<dyn AsyncRead + Send + Unpin>;
/// Writing half of the RPC stream.
pub type RpcWriter = Box<dyn AsyncWrite + Send + Unpin>;
/// Both halves.
pub type RpcStream = (RpcReader, RpcWriter);

/// A descriptor that cannot serve as the RPC stream.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    #[error("rpc-read-fd ({read}) and rpc-write-fd ({write}) must be positive")]
    Negative { read: i64, write: i64 },
    #[error("rpc-read-fd and rpc-write-fd must be different (both are {0})")]
    Equal(i64),
    #[error("{flag} ({fd}) is not an open descriptor")]
    NotOpen { flag: &'static str, fd: i64 },
    #[error("{flag} ({fd}): {source}")]
    Unusable {
        flag: &'static str,
        fd: i64,
        #[source]
        source: std::io::Error,
    },
}

/// Checks the pair as the Go daemon does (§2.2 item 1: negative or equal
/// values are refused; 0 is accepted) before touching either descriptor.
pub fn check_pair(read: i64, write: i64) -> Result<(RawFd, RawFd), FdError> {
    if read < 0 || write < 0 || read > i64::from(RawFd::MAX) || write > i64::from(RawFd::MAX) {
        return Err(FdError::Negative { read, write });
    }
    if read == write {
        return Err(FdError::Equal(read));
    }
    Ok((read as RawFd, write as RawFd))
}

/// Opens inherited descriptors `read` and `write` as the RPC stream.
pub fn inherited(read: i64, write: i64) -> Result<(RpcReader, RpcWriter), FdError> {
    let (r, w) = check_pair(read, write)?;
    let reader = take_inherited(r, "rpc-read-fd")?;
    let writer = take_inherited(w, "rpc-write-fd")?;
    Ok((
        async_reader(reader, "rpc-read-fd", read)?,
        async_writer(writer, "rpc-write-fd", write)?,
    ))
}

/// Standard input and output as the RPC stream (duplicated, so closing the
/// stream does not close the process's own stdio).
pub fn stdio() -> Result<(RpcReader, RpcWriter), FdError> {
    let dup = |fd: std::io::Result<OwnedFd>, flag, n| {
        fd.map_err(|source| FdError::Unusable {
            flag,
            fd: n,
            source,
        })
    };
    let reader = dup(std::io::stdin().as_fd().try_clone_to_owned(), "stdin", 0)?;
    let writer = dup(std::io::stdout().as_fd().try_clone_to_owned(), "stdout", 1)?;
    Ok((
        async_reader(reader, "stdin", 0)?,
        async_writer(writer, "stdout", 1)?,
    ))
}

#[allow(unsafe_code)]
fn take_inherited(fd: RawFd, flag: &'static str) -> Result<OwnedFd, FdError> {
    // SAFETY: F_GETFD only reads the descriptor's flags; it touches no
    // memory of ours and is harmless on any number.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(FdError::NotOpen {
            flag,
            fd: i64::from(fd),
        });
    }
    // SAFETY: the descriptor is open (checked above), and the launcher gave
    // it to this process as the RPC stream: nothing else in the process
    // owns it, and `check_pair` made sure the two flags name different
    // descriptors, so each is owned exactly once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A descriptor named in `StartRequest.tunnel_file_descriptor` that cannot
/// serve as the packet device (§6.2 step 6).
#[derive(Debug, thiserror::Error)]
pub enum TunFdError {
    #[error("dup tun fd: {0} is not a valid descriptor number")]
    OutOfRange(i64),
    #[error("dup tun fd: descriptor {0} is not open")]
    NotOpen(i32),
    #[error("dup tun fd: descriptor {fd}: {source}")]
    Io {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "tun fd {fd} is {kind}: a packet device is needed (a TUN device or a datagram socket, one IP packet per read)"
    )]
    NotPackets { fd: i32, kind: &'static str },
}

/// Duplicates the packet device the manager named by number, as Coder's
/// tunnel does (`dup tun fd`, §9.5), and makes the copy non-blocking. The
/// manager keeps its own number; the copy is ours and closes with the
/// session. Pipes, stream sockets and regular files are refused: one read
/// must be one IP packet.
#[allow(unsafe_code)]
pub fn dup_packet_device(number: i64) -> Result<OwnedFd, TunFdError> {
    let fd = RawFd::try_from(number)
        .ok()
        .filter(|fd| *fd > 0)
        .ok_or(TunFdError::OutOfRange(number))?;
    let io = |source| TunFdError::Io { fd, source };
    // SAFETY: F_GETFD only reads the descriptor's flags; harmless on any
    // number.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(TunFdError::NotOpen(fd));
    }
    // SAFETY: the descriptor is open (checked above) and only borrowed for
    // the duplication; the borrow ends before this function returns.
    let owned = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .map_err(io)?;
    let kind = {
        use std::os::unix::fs::FileTypeExt;
        let file = std::fs::File::from(owned.try_clone().map_err(io)?);
        let file_type = file.metadata().map_err(io)?.file_type();
        if file_type.is_char_device() {
            None
        } else if file_type.is_socket() {
            socket_kind(&owned)
        } else if file_type.is_fifo() {
            Some("a pipe")
        } else if file_type.is_dir() {
            Some("a directory")
        } else {
            Some("a regular file")
        }
    };
    if let Some(kind) = kind {
        return Err(TunFdError::NotPackets { fd, kind });
    }
    // SAFETY: plain flag calls on a descriptor we own.
    let flags = unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_GETFL) };
    if flags == -1
        || unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } == -1
    {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(owned)
}

/// Registers the packet device with tokio's reactor.
#[allow(unsafe_code)]
pub fn register_packet_device(
    fd: OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::fs::File>> {
    // SAFETY: the `File` owns the descriptor, so it stays open and refers to
    // the same file description until the `AsyncFd` drops the `File`, and
    // `File::as_raw_fd` always returns that descriptor.
    unsafe { tokio::io::unix::AsyncFd::register(std::fs::File::from(fd)) }
        .map_err(|err| err.into_parts().1)
}

/// `None` for a datagram or seqpacket socket, else what it is.
#[allow(unsafe_code)]
fn socket_kind(fd: &OwnedFd) -> Option<&'static str> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one c_int into `kind`, whose size is in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &raw mut len,
        )
    };
    match (rc, kind) {
        (0, libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) => None,
        (0, libc::SOCK_STREAM) => Some("a stream socket"),
        _ => Some("a socket of unknown type"),
    }
}

fn is_fifo(fd: &OwnedFd) -> std::io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    let file = std::fs::File::from(fd.try_clone()?);
    Ok(file.metadata()?.file_type().is_fifo())
}

fn async_reader(fd: OwnedFd, flag: &'static str, n: i64) -> Result<RpcReader, FdError> {
    let unusable = |source| FdError::Unusable {
        flag,
        fd: n,
        source,
    };
    if is_fifo(&fd).map_err(unusable)? {
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).map_err(unusable)?;
        return Ok(Box::new(pipe));
    }
    Ok(Box::new(socket_or_file(fd).map_err(unusable)?))
}

fn async_writer(fd: OwnedFd, flag: &'static str, n: i64) -> Result<RpcWriter, FdError> {
    let unusable = |source| FdError::Unusable {
        flag,
        fd: n,
        source,
    };
    if is_fifo(&fd).map_err(unusable)? {
        let pipe = tokio::net::unix::pipe::Sender::from_owned_fd(fd).map_err(unusable)?;
        return Ok(Box::new(pipe));
    }
    Ok(Box::new(socket_or_file(fd).map_err(unusable)?))
}

/// A Unix socket (socketpair) when it is one, else a plain file handle
/// served by tokio's blocking pool.
fn socket_or_file(fd: OwnedFd) -> std::io::Result<SocketOrFile> {
    let probe = std::os::unix::net::UnixStream::from(fd.try_clone()?);
    if probe.peer_addr().is_ok() || probe.local_addr().is_ok() {
        probe.set_nonblocking(true)?;
        drop(fd);
        return Ok(SocketOrFile::Socket(tokio::net::UnixStream::from_std(
            probe,
        )?));
    }
    drop(probe);
    Ok(SocketOrFile::File(tokio::fs::File::from_std(
        std::fs::File::from(fd),
    )))
}

enum SocketOrFile {
    Socket(tokio::net::UnixStream),
    File(tokio::fs::File),
}

impl AsyncRead for SocketOrFile {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            SocketOrFile::Socket(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            SocketOrFile::File(f) => std::pin::Pin::new(f).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SocketOrFile {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SocketOrFile::Socket(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            SocketOrFile::File(f) => std::pin::Pin::new(f).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            SocketOrFile::Socket(s) => std::pin::Pin::new(s).poll_flush(cx),
            SocketOrFile::File(f) => std::pin::Pin::new(f).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            SocketOrFile::Socket(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            SocketOrFile::File(f) => std::pin::Pin::new(f).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_checked_before_use() {
        assert!(matches!(check_pair(-1, 4), Err(FdError::Negative { .. })));
        assert!(matches!(check_pair(3, 3), Err(FdError::Equal(3))));
        assert_eq!(check_pair(0, 1).unwrap(), (0, 1));
        let err = inherited(3, 3).err().unwrap().to_string();
        assert!(err.contains("must be different"), "{err}");
        let err = inherited(-2, 5).err().unwrap().to_string();
        assert!(
            err.contains("rpc-read-fd (-2) and rpc-write-fd (5) must be positive"),
            "{err}"
        );
    }
}
