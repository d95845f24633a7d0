#![no_main]
//! See corelb::checks::request_head for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| corelb::checks::request_head(data));
