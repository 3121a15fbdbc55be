//! Fuzz target `transcript`: see `codervpn_conformance::fuzz_entries::transcript`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::transcript(data);
});
