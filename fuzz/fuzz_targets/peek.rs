//! Frame peeking: `protocol::top_level_str` and `Kind::of_text` on any text frame.
//! The harness and its invariants: `tether::fuzzing::peek`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::peek(data));
