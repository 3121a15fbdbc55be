//! The CoderVPN conformance suite: transcripts ([`transcript`]), partial
//! matching with symbolic ids ([`matcher`]), the case catalogue
//! ([`catalogue`]), launching the implementation under test ([`target`]),
//! running a case over its raw stream ([`engine`]), selecting and grading
//! ([`runner`]) and the checks every PeerUpdate gets ([`checks`]); packets
//! on the tun for the dataplane tier ([`packet`], [`tun`]); a real TUN
//! device for the mock manager ([`os_tun`]).

pub mod catalogue;
pub mod checks;
pub mod engine;
pub mod expect_fail;
pub mod faulty;
pub mod manager_side;
pub mod matcher;
pub mod mock_manager;
pub mod mock_tunnel;
pub mod os_tun;
pub mod packet;
pub mod replay;
pub mod report;
pub mod runner;
pub mod target;
pub mod transcript;
pub mod tun;
