//! Fuzz target `tunnel_requests`: see `codervpn_conformance::fuzz_entries::tunnel_requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::tunnel_requests(data);
});
