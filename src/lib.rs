//! Tether: a sidecar that owns the cloud-facing side of a MentraOS app server.
//!
//! Module map:
//! - [`config`]: YAML + environment configuration, validated into typed values.
//! - [`protocol`]: pure wire types and frame inspection (no I/O).
//! - [`session`]: the per-session state machine, the registry, and the task driving sockets.
//! - [`upstream`]: the cloud side (dialling, HTTP forwarding, known clouds).
//! - [`downstream`]: the app side (local listener, reverse proxy to the app).
//! - [`webhook`]: the cloud's `POST /webhook` intake.
//! - [`registry`]: registering the app server with the cloud on its behalf.
//! - [`admin`]: health, readiness, metrics and the session list, and who may read the list.
//! - [`logging`]: the subscriber, its filter (swappable by a reload) and the cap that keeps
//!   secrets out of every level.
//! - [`runtime`]: binds listeners and wires the shared state.
//! - [`sim`]: a cloud emulator and an SDK-like app, used by tests, benchmarks and the demo.
//! - [`status`]: `tether status`, a running Tether's sessions for an operator.
//! - [`demo`]: `tether demo`, everything wired together with a narrated timeline.
//! - [`bench`]: `tether bench`, latency and recovery figures against in-run baselines.

pub mod admin;
pub mod bench;
pub mod config;
pub mod demo;
pub mod downstream;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod protocol;
pub mod registry;
pub mod runtime;
pub mod serve;
pub mod session;
pub mod sim;
pub mod status;
pub mod upstream;
pub mod webhook;
