//! Configuration: YAML, with an optional block of `TETHER_*` overrides after a NUL byte.
//! The harness and its invariants: `tether::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::config(data));
