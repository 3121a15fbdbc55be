//! The RPC stream's descriptors: `--rpc-read-fd R --rpc-write-fd W` as
//! Coder Desktop passes them to `coder vpn-daemon run` (protocol.md §2.2),
//! or standard input and output.
//!
//! Taking ownership of an inherited descriptor number is the one `unsafe`
//! step; it is confined to [`take_inherited`].

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

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
