#![no_main]
//! See corelb::checks::chunked for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| corelb::checks::chunked(data));
