//! Tether: a sidecar that owns the cloud-facing side of a MentraOS app server.
//!
//! Module map:
//! - [`config`]: YAML + environment configuration, validated into typed values.
//! - [`protocol`]: pure wire types and frame inspection (no I/O).
//! - [`sim`]: a cloud emulator and an SDK-like app, used by tests, benchmarks and the demo.

pub mod config;
pub mod protocol;
pub mod sim;
