//! The cloud's `session_request`: parsing, the URL rewrite, and the way back to the cloud.
//! The harness and its invariants: `tether::fuzzing::webhook`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::webhook(data));
