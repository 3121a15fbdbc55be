//! Fuzz target `speaker_tunnel`: see `codervpn_conformance::fuzz_entries::speaker_tunnel`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::speaker_tunnel(data);
});
