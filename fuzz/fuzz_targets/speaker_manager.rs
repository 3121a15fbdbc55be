//! Fuzz target `speaker_manager`: see `codervpn_conformance::fuzz_entries::speaker_manager`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::speaker_manager(data);
});
