#![no_main]
//! See corelb::checks::response_head for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| corelb::checks::response_head(data));
