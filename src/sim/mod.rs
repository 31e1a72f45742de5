//! Simulators of Tether's two peers: the MentraOS cloud ([`cloud`]) and an app built on the
//! published SDK ([`app`]). They are product features (developers run apps against the cloud
//! emulator without glasses) and the peers of every end-to-end test, benchmark and the demo.

pub mod app;
pub mod cloud;
