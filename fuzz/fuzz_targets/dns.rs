//! Fuzz target `dns`: see `codervpn_conformance::fuzz_entries::dns`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::dns(data);
});
