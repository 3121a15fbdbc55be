//! Fuzz target `control_updates`: see
//! `codervpn_conformance::fuzz_entries::control_updates`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::control_updates(data);
});
