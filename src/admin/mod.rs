//! The admin listener's concerns: metrics, the health, readiness and session endpoints, who
//! may read the data routes, and how user ids are masked in them.

pub mod auth;
pub mod mask;
pub mod metrics;
pub mod server;
