//! The CoderVPN reference tunnel: what a well-behaved tunnel does, rule by
//! rule (protocol.md §5-§7, §9, §11), without the known bugs of Coder's.
//!
//! * [`tunnel`]: the request loop over a [`codervpn_codec::Speaker`].
//! * [`start`]: StartRequest checks, headers and telemetry.
//! * [`control`]: the control-plane API, client and held session.
//! * [`peers`]: workspace/agent state and the PeerUpdates it produces.
//! * [`dataplane`]: WireGuard to the agents, the packet device, DNS, pings.
//! * [`logs`]: forwarding the tunnel's tracing events as Log messages.
//! * [`fd`]: opening the inherited pipe descriptors.

pub mod control;
pub mod dataplane;
pub mod fd;
pub mod logs;
pub mod peers;
pub mod start;
pub mod tunnel;

pub use tunnel::{Ending, TunnelConfig, serve};
