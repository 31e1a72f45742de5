//! The app's `tpa_connection_init`, and the error frame Tether answers a bad one with.
//! The harness and its invariants: `tether::fuzzing::connection_init`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::connection_init(data));
