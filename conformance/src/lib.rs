//! The CoderVPN conformance suite: transcripts ([`transcript`]), partial
//! matching with symbolic ids ([`matcher`]), the case catalogue
//! ([`catalogue`]), launching the implementation under test ([`target`]),
//! running a case over its raw stream ([`engine`]), selecting and grading
//! ([`runner`]) and the checks every PeerUpdate gets ([`checks`]).

pub mod catalogue;
pub mod checks;
pub mod engine;
pub mod matcher;
pub mod report;
pub mod runner;
pub mod target;
pub mod transcript;
