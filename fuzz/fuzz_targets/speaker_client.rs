//! Fuzz target `speaker_client`: see `codervpn_conformance::fuzz_entries::speaker_client`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::speaker_client(data);
});
