//! Admin routes: `/livez` (the process answers), `/readyz` (listeners bound and not draining;
//! `?verbose` lists the checks), `/metrics` (Prometheus text) and `/sessions` (JSON, no
//! secrets). Served on their own listener, never on the public port.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::runtime::Shared;
use crate::serve::{full, json, text, Body};

/// Handles one admin request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    let verbose = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "verbose"));
    match req.uri().path() {
        "/livez" | "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(&shared, verbose),
        "/metrics" => {
            let rows = shared.sessions.rows(Instant::now());
            let frames: u64 = rows.iter().map(|r| r.buffered_frames).sum();
            shared.metrics.buffered_frames.set(frames as i64);
            shared
                .metrics
                .buffered_bytes
                .set(shared.buffers.used() as i64);
            let mut resp = Response::new(full(shared.metrics.encode()));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/config" => json(
            StatusCode::OK,
            &serde_json::json!(shared.config().entries()),
        ),
        "/sessions" => json(
            StatusCode::OK,
            &serde_json::json!({ "sessions": shared.sessions.rows(Instant::now()) }),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn readyz(shared: &Shared, verbose: bool) -> Response<Body> {
    let draining = shared.draining.load(Ordering::Relaxed);
    // Readiness never waits on the cloud unless registration is configured as required.
    let registered = !shared.config().registration.required || shared.registration.is_registered();
    let checks = [
        ("listeners", true),
        ("not-draining", !draining),
        ("registration", registered),
    ];
    let ok = checks.iter().all(|(_, pass)| *pass);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if !verbose {
        return text(status, if ok { "ok\n" } else { "not ready\n" });
    }
    let mut body = String::new();
    for (name, pass) in checks {
        body.push_str(&format!(
            "[{}]{name} {}\n",
            if pass { "+" } else { "-" },
            if pass { "ok" } else { "failed" }
        ));
    }
    body.push_str(&format!("sessions {}\n", shared.sessions.len()));
    text(status, body)
}
