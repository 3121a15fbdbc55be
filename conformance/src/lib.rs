//! The CoderVPN conformance suite: transcripts ([`transcript`]), partial
//! matching with symbolic ids ([`matcher`]), the case catalogue
//! ([`catalogue`]), launching the implementation under test ([`target`]),
//! running a case over its raw stream ([`engine`]), selecting and grading
//! ([`runner`]) and the checks every PeerUpdate gets ([`checks`]); packets
//! on the tun for the dataplane tier ([`packet`], [`tun`]); a real TUN
//! device for the mock manager ([`os_tun`]); the mock Windows service
//! ([`mock_service`]); the Windows client/service cases ([`link_side`],
//! the order checks every service message gets in [`service_watch`]) and
//! the mock client ([`mock_client`]).

pub mod catalogue;
pub mod checks;
pub mod engine;
pub mod expect_fail;
pub mod faulty;
#[doc(hidden)]
pub mod fuzz_entries;
pub mod link_side;
pub mod manager_side;
pub mod matcher;
pub mod mock_client;
pub mod mock_manager;
pub mod mock_service;
pub mod mock_tunnel;
pub mod os_tun;
pub mod packet;
pub mod replay;
pub mod report;
pub mod runner;
pub mod service_watch;
pub mod target;
pub mod transcript;
pub mod tun;

/// `CamelCase` as `camel-case`: how the fault enums' variants are named on
/// the command line.
pub(crate) fn kebab_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}
