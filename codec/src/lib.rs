//! The CoderVPN wire layer: handshake line, length-prefixed frames and the
//! async RPC speaker, for all four roles (protocol.md §3, §4, §5).
//!
//! The parsing and bookkeeping are sans-IO ([`handshake::HeaderReader`],
//! [`handshake::Header::parse`], [`frame::FrameCodec`], [`rpc::classify`]):
//! bytes in, values or errors out, so they are fuzzable and testable without
//! sockets. [`speaker::Speaker`] is the thin tokio layer that moves bytes.

#![forbid(unsafe_code)]

pub mod frame;
pub mod handshake;
pub mod role;
pub mod rpc;
pub mod speaker;

pub use frame::{CodecError, FrameCodec, MAX_FRAME_LEN, MessageCodec};
pub use handshake::{Category, Header, HeaderError, Role, Version, VersionList};
pub use role::{Client, Manager, Service, Side, Tunnel};
pub use speaker::{CloseReason, Inbound, Incoming, Speaker, SpeakerConfig, SpeakerError, Stats};
