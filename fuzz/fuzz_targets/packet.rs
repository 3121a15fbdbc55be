//! Fuzz target `packet`: see `codervpn_conformance::fuzz_entries::packet`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::packet(data);
});
