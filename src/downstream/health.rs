//! Watches the app server's health. While any session is held for an app that is away it
//! probes every `session.probe_interval_ms` (100 ms by default), so a restarted app is
//! noticed at once; otherwise once a second. A probe is `GET <app>/<health_path>`: any
//! answer below 500 means the process is up and serving; a refused or timed-out connection
//! means it is not.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Request;
use tokio::sync::{watch, Notify};

use crate::runtime::Shared;
use crate::serve::full;

/// Probe period when no session is held.
const IDLE_PERIOD: Duration = Duration::from_secs(1);

/// Health as last probed, and the count of sessions that want fast probing.
#[derive(Debug)]
pub struct AppHealth {
    tx: watch::Sender<bool>,
    held: AtomicUsize,
    wake: Notify,
}

impl Default for AppHealth {
    fn default() -> Self {
        AppHealth {
            tx: watch::channel(true).0,
            held: AtomicUsize::new(0),
            wake: Notify::new(),
        }
    }
}

impl AppHealth {
    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// The last probe's verdict.
    pub fn healthy(&self) -> bool {
        *self.tx.borrow()
    }

    /// A session started holding: probe now, and fast until it stops.
    pub fn hold(&self) {
        self.held.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// A session stopped holding.
    pub fn release(&self) {
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Asks for an immediate probe (a webhook found the app unreachable).
    pub fn probe_now(&self) {
        self.wake.notify_one();
    }
}

/// Probes until Tether shuts down.
pub async fn run(shared: Arc<Shared>) {
    let health = &shared.health;
    loop {
        let ok = probe(&shared).await;
        health.tx.send_if_modified(|cur| {
            let changed = *cur != ok;
            *cur = ok;
            changed
        });
        shared.metrics.app_healthy.set(i64::from(ok));
        let period = if health.held.load(Ordering::Relaxed) > 0 {
            shared.config().session.probe_interval
        } else {
            IDLE_PERIOD
        };
        tokio::select! {
            () = shared.cancel.cancelled() => return,
            () = tokio::time::sleep(period) => {}
            () = health.wake.notified() => {}
        }
    }
}

async fn probe(shared: &Shared) -> bool {
    let url = format!(
        "{}{}",
        shared.config().app.url.as_str().trim_end_matches('/'),
        shared.config().app.health_path
    );
    let Ok(req) = Request::get(url).body(full("")) else {
        return false;
    };
    let timeout = shared
        .config()
        .session
        .probe_interval
        .max(Duration::from_millis(500));
    match tokio::time::timeout(timeout, shared.app_client.request(req)).await {
        Ok(Ok(resp)) => resp.status().as_u16() < 500,
        _ => false,
    }
}
