//! Fuzz target `speaker_service`: see `codervpn_conformance::fuzz_entries::speaker_service`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::speaker_service(data);
});
