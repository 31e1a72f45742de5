//! The admin listener's concerns: metrics and the health, readiness and session endpoints.

pub mod metrics;
pub mod server;
