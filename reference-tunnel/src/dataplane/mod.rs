//! The tunnel's dataplane (protocol.md §9.4, §9.5). So far: the DNS
//! resolver's answers; the WireGuard sessions and the tun loop come next.

pub mod dns;
