#![no_main]
//! See corelb::checks::proxy_header for the invariants.
libfuzzer_sys::fuzz_target!(|data: &[u8]| corelb::checks::proxy_header(data));
