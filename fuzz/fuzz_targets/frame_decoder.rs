//! Fuzz target `frame_decoder`: see `codervpn_conformance::fuzz_entries::frame_decoder`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    codervpn_conformance::fuzz_entries::frame_decoder(data);
});
