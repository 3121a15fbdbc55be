//! The `--rpc-read-fd R --rpc-write-fd W` pair every tunnel-like command
//! takes, as Coder Desktop passes it to `coder vpn-daemon run` (protocol.md
//! §2.2), with the environment equivalents.

use clap::Args;

#[derive(Debug, Args)]
pub struct RpcFds {
    /// Descriptor to read the manager's frames from (with --rpc-write-fd;
    /// both absent: standard input and output).
    #[arg(
        long,
        env = "CODER_VPN_DAEMON_RPC_READ_FD",
        allow_negative_numbers = true
    )]
    pub rpc_read_fd: Option<i64>,
    /// Descriptor to write frames to the manager.
    #[arg(
        long,
        env = "CODER_VPN_DAEMON_RPC_WRITE_FD",
        allow_negative_numbers = true
    )]
    pub rpc_write_fd: Option<i64>,
}

impl RpcFds {
    /// Both descriptors, none (stdio), or an error when only one is given.
    pub fn pair(&self) -> Result<Option<(i64, i64)>, &'static str> {
        match (self.rpc_read_fd, self.rpc_write_fd) {
            (Some(read), Some(write)) => Ok(Some((read, write))),
            (None, None) => Ok(None),
            _ => Err("--rpc-read-fd and --rpc-write-fd go together"),
        }
    }

    /// Opens the stream they name (standard input and output when absent).
    pub fn open(
        &self,
    ) -> Result<codervpn_reference_tunnel::fd::RpcStream, codervpn_reference_tunnel::fd::FdError>
    {
        match self.pair() {
            Ok(Some((read, write))) => codervpn_reference_tunnel::fd::inherited(read, write),
            _ => codervpn_reference_tunnel::fd::stdio(),
        }
    }
}
