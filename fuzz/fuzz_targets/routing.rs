//! The local listener's routing: local paths, cloud origins, joins, WebSocket paths.
//! The harness and its invariants: `tether::fuzzing::routing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::routing(data));
