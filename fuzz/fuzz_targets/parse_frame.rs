#![no_main]
//! Fuzz target `parse_frame`: see `fuzz/harness.rs` for what it checks.

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::parse_frame(data));
