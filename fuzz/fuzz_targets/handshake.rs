//! Fuzz target `handshake`: see `codervpn_conformance::fuzz_entries::handshake`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::handshake(data);
});
