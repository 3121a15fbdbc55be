//! The CoderVPN schema (`vpn.proto`, protocol version 1.2) as Rust types.
//!
//! * [`vpn`]: the prost types, generated at build time by protox + prost-build
//!   (no `protoc` needed). `bytes` fields are [`bytes::Bytes`], so decoding a
//!   frame shares its buffer instead of copying.
//! * [`Envelope`]: what the four top-level messages have in common (the `rpc`
//!   field and the `msg` oneof), which the codec's speaker is generic over.
//! * [`json`]: the proto3 canonical JSON mapping used in transcripts and by
//!   `codervpn decode`/`encode`.
//! * [`ids`]: UUID and address helpers (protocol.md §6.7, §9.3).

#![forbid(unsafe_code)]

pub mod envelope;
pub mod ids;
pub mod json;
pub mod sample;

/// Generated prost types of package `vpn`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod vpn {
    include!(concat!(env!("OUT_DIR"), "/vpn.rs"));
}

pub use envelope::Envelope;
pub use vpn::{
    Agent, ClientMessage, GetPeerUpdate, LastPing, Log, ManagerMessage, NetworkSettingsRequest,
    NetworkSettingsResponse, PeerUpdate, Rpc, ServiceMessage, StartProgress, StartRequest,
    StartResponse, Status, StatusRequest, StopRequest, StopResponse, TunnelMessage, Workspace,
    client_message, manager_message, service_message, tunnel_message,
};

/// The compiled descriptor set of `vpn.proto` and the well-known types it
/// imports, as produced by protox at build time.
pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vpn.descriptor.bin"));

/// The highest protocol version this schema describes (protocol.md §14).
pub const SCHEMA_VERSION: (u64, u64) = (1, 2);
