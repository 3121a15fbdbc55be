//! The tunnel's side of the control plane: the API types shared with the
//! mock ([`api`]) and the HTTP/WebSocket client ([`client`]).

pub mod api;
pub mod client;
pub mod session;
