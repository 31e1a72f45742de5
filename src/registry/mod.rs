//! Registering the app server with the cloud on the app's behalf (the seed design).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::runtime::Shared;

/// Registration state, read by `/readyz`.
#[derive(Debug, Default)]
pub struct Status {
    registered: AtomicBool,
}

impl Status {
    /// Whether the last registration or refresh succeeded.
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }
}

/// Registers at start and refreshes until Tether shuts down.
pub async fn run(shared: Arc<Shared>) {
    let _ = shared;
}
