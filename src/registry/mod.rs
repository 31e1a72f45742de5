//! Registering the app server with the cloud on the app's behalf (the seed design; DESIGN.md
//! §6, PROTOCOL.md §12): `POST <cloud>/api/tpa/register` at start, then on every
//! `registration.refresh_interval`, with full-jitter backoff after failures.
//!
//! It owns the registration task and its [`Status`] (read by `/readyz` and the metrics). It
//! must not block anything else: one attempt at a time, each bounded by
//! `registration.timeout`, and the task ends on `shared.cancel`. The request carries the API
//! key, so neither the body nor the key is ever logged.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Limited};
use hyper::{header, Method, Request};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use crate::runtime::Shared;
use crate::upstream::http::{forward, ForwardError};

use self::backoff::Backoff;

mod backoff;
mod wire;

pub use wire::Outcome;

/// Ceiling of the first retry after a failure; later ones double up to `backoff_max`.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// A floor under retry delays, so full jitter's zero never makes a tight loop.
const MIN_RETRY: Duration = Duration::from_millis(10);

/// Largest answer body read; a registration answer is a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Upper bounds (seconds) of the attempt latency histogram.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Registration state and counters, shared by the task, `/readyz` and `/metrics`.
///
/// The Prometheus handles are registered by [`Status::register_metrics`]; [`Status::snapshot`]
/// gives the same figures (and a few more) as JSON.
#[derive(Debug)]
pub struct Status {
    /// Latched by the first success (STYLE §6: readiness is a latch).
    registered: AtomicBool,
    attempts: Family<ResultLabels, Counter>,
    /// Per outcome, in [`Outcome::ALL`] order (the family's counters, resolved once).
    by_outcome: [Counter; 5],
    /// 1 while the latest attempt succeeded.
    current: Gauge,
    latency: Histogram,
    last_latency_us: AtomicU64,
    /// Unix time of the latest success in ms; 0 = never.
    last_success_unix_ms: AtomicU64,
    /// `activeSessions` of the latest success, `u64::MAX` = not reported.
    active_sessions: AtomicU64,
    registration_id: Mutex<Option<String>>,
    last_outcome: Mutex<Option<Outcome>>,
}

impl Default for Status {
    fn default() -> Self {
        let attempts = Family::<ResultLabels, Counter>::default();
        let by_outcome = Outcome::ALL.map(|o| {
            attempts
                .get_or_create(&ResultLabels { result: o.label() })
                .clone()
        });
        Self {
            registered: AtomicBool::new(false),
            attempts,
            by_outcome,
            current: Gauge::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            last_latency_us: AtomicU64::new(0),
            last_success_unix_ms: AtomicU64::new(0),
            active_sessions: AtomicU64::new(u64::MAX),
            registration_id: Mutex::new(None),
            last_outcome: Mutex::new(None),
        }
    }
}

// === impl Status ===

impl Status {
    /// Whether a registration has succeeded since start. It is a latch: a later failed refresh
    /// does not take the pod out of its Service (see `snapshot()["current"]` for the latest).
    pub fn is_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Attempts that ended with `outcome`.
    pub fn attempts(&self, outcome: Outcome) -> u64 {
        self.by_outcome[outcome.index()].get()
    }

    /// The id the cloud gave the latest successful registration.
    pub fn registration_id(&self) -> Option<String> {
        self.registration_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Registers `tether_registration_attempts_total{result}`, `tether_registered` and
    /// `tether_registration_latency_seconds` in `registry` (which is expected to carry the
    /// `tether` prefix).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "registration_attempts",
            "Registration attempts with the cloud, by result (ok, not_found, unauthorized, error, timeout)",
            self.attempts.clone(),
        );
        registry.register(
            "registered",
            "1 while the latest registration attempt with the cloud succeeded",
            self.current.clone(),
        );
        registry.register(
            "registration_latency_seconds",
            "Duration of registration attempts, answered or not",
            self.latency.clone(),
        );
    }

    /// Every figure as JSON, for `/metrics` wiring, logs and tests.
    pub fn snapshot(&self) -> Value {
        let attempts: serde_json::Map<String, Value> = Outcome::ALL
            .iter()
            .map(|o| (o.label().to_string(), json!(self.attempts(*o))))
            .collect();
        let last_success = self.last_success_unix_ms.load(Ordering::Relaxed);
        let active = self.active_sessions.load(Ordering::Relaxed);
        json!({
            "registered": self.is_registered(),
            "current": self.current.get() == 1,
            "attempts": attempts,
            "last_outcome": self.lock_outcome().map(Outcome::label),
            "last_latency_us": self.last_latency_us.load(Ordering::Relaxed),
            "last_success_unix_ms": (last_success > 0).then_some(last_success),
            "active_sessions": (active != u64::MAX).then_some(active),
            "registration_id": self.registration_id(),
        })
    }

    fn lock_outcome(&self) -> Option<Outcome> {
        *self
            .last_outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records one attempt; returns the previous attempt's outcome.
    fn record(&self, outcome: Outcome, took: Duration) -> Option<Outcome> {
        self.by_outcome[outcome.index()].inc();
        self.latency.observe(took.as_secs_f64());
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.last_latency_us.store(us, Ordering::Relaxed);
        self.current.set(i64::from(outcome == Outcome::Ok));
        if outcome == Outcome::Ok {
            self.registered.store(true, Ordering::Relaxed);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            self.last_success_unix_ms.store(now, Ordering::Relaxed);
        }
        self.last_outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(outcome)
    }

    fn accepted(&self, accepted: &wire::Accepted) {
        if let Some(n) = accepted.active_sessions {
            self.active_sessions.store(n, Ordering::Relaxed);
        }
        if let Some(id) = &accepted.registration_id {
            *self
                .registration_id
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(id.clone());
        }
    }
}

/// Why an attempt failed, for the log line.
#[derive(Debug)]
struct Failure {
    outcome: Outcome,
    /// The HTTP status, when an answer arrived.
    status: Option<u16>,
    /// The transport error, when none did.
    error: Option<String>,
}

/// Registers at start and refreshes until Tether shuts down.
///
/// Spawned once by the runtime when `registration.enabled`. The configuration is read again
/// before every attempt, so a reload changes timings, URL and identity at the next attempt.
/// Ends (with an error logged) when the configuration gives no cloud URL or no package name.
/// Cancel-safe: it only awaits the attempt and the pause, both dropped on `shared.cancel`.
pub async fn run(shared: Arc<Shared>) {
    let mut backoff: Option<Backoff> = None;
    let mut announced: Option<(Url, String)> = None;
    loop {
        let config = shared.config();
        let cfg = &config.registration;
        let Some(endpoint) = wire::endpoint(&config) else {
            tracing::error!(
                "registration is enabled but neither registration.url nor cloud.ws_url is set; not registering"
            );
            return;
        };
        let Some(package) = config.app.package_name.as_deref() else {
            tracing::error!(
                "registration is enabled but app.package_name is not set; not registering"
            );
            return;
        };
        let server_url = wire::server_url(&config);
        if announced.as_ref() != Some(&(endpoint.clone(), server_url.clone())) {
            tracing::info!(url = %endpoint, server_url, package, "registering with the cloud");
            announced = Some((endpoint.clone(), server_url.clone()));
        }
        let backoff = backoff.get_or_insert_with(|| Backoff::new(FIRST_RETRY, cfg.backoff_max));
        backoff.set_max(cfg.backoff_max);
        let started = Instant::now();
        let id = shared.registration.registration_id();
        let body = wire::body(&config, package, &server_url, id.as_deref());
        let result = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            r = attempt(&shared, &endpoint, body, cfg.timeout) => r,
        };
        let took = started.elapsed();
        let outcome = result.as_ref().map_or_else(|f| f.outcome, |_| Outcome::Ok);
        let previous = shared.registration.record(outcome, took);
        let wait = match &result {
            Ok(accepted) => {
                shared.registration.accepted(accepted);
                log_success(accepted, previous, took);
                backoff.reset();
                cfg.refresh_interval
            }
            Err(failure) => {
                let first = previous != Some(failure.outcome);
                log_failure(&shared.registration, failure, first, &endpoint);
                if failure.outcome == Outcome::NotFound {
                    // Nothing to back off from: the API is absent, not failing.
                    backoff.reset();
                    cfg.refresh_interval
                } else {
                    backoff.next_delay().max(MIN_RETRY)
                }
            }
        };
        // Drop the config guard before sleeping, so a reload is never held back.
        drop(config);
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn log_success(accepted: &wire::Accepted, previous: Option<Outcome>, took: Duration) {
    // An `Option` field is recorded only when present.
    let active_sessions = accepted.active_sessions;
    let registration_id = accepted.registration_id.as_deref().unwrap_or("");
    let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
    if previous == Some(Outcome::Ok) {
        tracing::debug!(
            registration_id,
            active_sessions,
            took_ms,
            "registration refreshed"
        );
    } else {
        tracing::info!(
            registration_id,
            active_sessions,
            took_ms,
            "registered with the cloud"
        );
    }
}

/// The first failure of a streak is logged at warn (error for a refused key), repeats at
/// debug; a 404 is reported once per process.
fn log_failure(status: &Status, f: &Failure, first: bool, url: &Url) {
    let (code, error) = (f.status, f.error.as_deref());
    match f.outcome {
        Outcome::NotFound if status.attempts(Outcome::NotFound) == 1 => tracing::warn!(
            %url,
            "the cloud has no registration API (404); retrying only every refresh interval"
        ),
        Outcome::Unauthorized if first => tracing::error!(
            %url, status = code,
            "the cloud refused the registration: wrong app.package_name or API key"
        ),
        Outcome::Timeout if first => {
            tracing::warn!(%url, "registration attempt timed out; retrying with backoff")
        }
        Outcome::Error if first => tracing::warn!(
            %url, status = code, error,
            "registration attempt failed; retrying with backoff"
        ),
        outcome => tracing::debug!(
            %url, status = code, error, result = outcome.label(),
            "registration attempt failed again"
        ),
    }
}

/// One POST, answer read in full.
async fn attempt(
    shared: &Shared,
    endpoint: &Url,
    body: Value,
    timeout: Duration,
) -> Result<wire::Accepted, Failure> {
    let exchange = async {
        let mut req = Request::new(crate::serve::full(body.to_string()));
        *req.method_mut() = Method::POST;
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        let resp = forward(req, endpoint, shared.tls.clone(), timeout).await?;
        let status = resp.status().as_u16();
        // A body cut short still classifies by status; a 2xx then fails to parse.
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok::<_, ForwardError>((status, bytes))
    };
    // `forward` bounds connect + head; this bounds the body too.
    let (status, bytes) = match tokio::time::timeout(timeout, exchange).await {
        Err(_) | Ok(Err(ForwardError::Timeout { .. })) => {
            return Err(Failure {
                outcome: Outcome::Timeout,
                status: None,
                error: None,
            })
        }
        Ok(Err(e)) => {
            return Err(Failure {
                outcome: Outcome::Error,
                status: None,
                error: Some(e.to_string()),
            })
        }
        Ok(Ok(answer)) => answer,
    };
    wire::classify(status, &bytes).map_err(|outcome| Failure {
        outcome,
        status: Some(status),
        error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_latches_and_counts_by_outcome() {
        let s = Status::default();
        assert!(!s.is_registered());
        s.record(Outcome::NotFound, Duration::from_millis(3));
        assert!(!s.is_registered());
        let prev = s.record(Outcome::Ok, Duration::from_micros(1_500));
        assert_eq!(prev, Some(Outcome::NotFound));
        s.accepted(&wire::Accepted {
            registration_id: Some("reg-7".into()),
            active_sessions: Some(2),
        });
        s.record(Outcome::Timeout, Duration::from_millis(200));
        assert!(s.is_registered(), "readiness is a latch");
        let snap = s.snapshot();
        assert_eq!(snap["registered"], true);
        assert_eq!(snap["current"], false);
        assert_eq!(snap["attempts"]["ok"], 1);
        assert_eq!(snap["attempts"]["not_found"], 1);
        assert_eq!(snap["attempts"]["timeout"], 1);
        assert_eq!(snap["attempts"]["error"], 0);
        assert_eq!(snap["last_outcome"], "timeout");
        assert_eq!(snap["last_latency_us"], 200_000);
        assert_eq!(snap["active_sessions"], 2);
        assert_eq!(snap["registration_id"], "reg-7");
        assert!(snap["last_success_unix_ms"].as_u64().is_some());
    }

    #[test]
    fn metrics_use_the_proposed_names() {
        let s = Status::default();
        s.record(Outcome::Unauthorized, Duration::from_millis(5));
        let mut registry = Registry::with_prefix("tether");
        s.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(text.contains("tether_registration_attempts_total{result=\"unauthorized\"} 1"));
        assert!(text.contains("tether_registration_attempts_total{result=\"ok\"} 0"));
        assert!(text.contains("tether_registered 0"));
        assert!(text.contains("tether_registration_latency_seconds_count 1"));
    }
}
