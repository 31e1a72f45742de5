//! Admin routes: `/livez` (the process answers), `/readyz` (listeners bound and not draining;
//! `?verbose` lists the checks), `/metrics` (Prometheus text), and the data routes
//! `/sessions` (JSON, no secrets, user ids masked unless `admin.show_user_ids`) and `/config`
//! (secrets masked). Served on their own listener, never on the public port. The probes and
//! metrics are open (the kubelet and Prometheus reach them); the data routes pass
//! [`auth::authorize`] first.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::admin::auth::{self, Denial};
use crate::admin::mask;
use crate::config::Config;
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
        "/config" | "/sessions" => {
            // One snapshot for the decision and the answer: a reload may swap it meanwhile.
            let config = shared.config();
            let authorization = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.as_bytes());
            if let Err(denial) =
                auth::authorize(config.listen.admin.ip(), &config.admin.token, authorization)
            {
                shared.metrics.admin_denied(denial);
                return refuse(denial);
            }
            if req.uri().path() == "/config" {
                json(StatusCode::OK, &serde_json::json!(config.entries()))
            } else {
                sessions(&shared, &config)
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/sessions`, with user ids masked unless the config says to show them.
fn sessions(shared: &Shared, config: &Config) -> Response<Body> {
    let mut rows = shared.sessions.rows(Instant::now());
    if !config.admin.show_user_ids {
        for row in &mut rows {
            row.session_id = mask::mask_session_id(&row.session_id, row.user_id.as_deref());
            row.user_id = row.user_id.as_deref().map(mask::mask_user_id);
        }
    }
    json(StatusCode::OK, &serde_json::json!({ "sessions": rows }))
}

/// What a refused data-route request is told: 403 when the routes are disabled (saying how
/// to enable them), 401 with a `Bearer` challenge when the token is missing or wrong.
fn refuse(denial: Denial) -> Response<Body> {
    match denial {
        Denial::NoTokenConfigured => text(StatusCode::FORBIDDEN, NO_TOKEN_MESSAGE),
        Denial::MissingToken | Denial::WrongToken => {
            let mut resp = text(
                StatusCode::UNAUTHORIZED,
                "this route needs the admin token: send `Authorization: Bearer <token>` \
                 (tether status: --token or TETHER_ADMIN_TOKEN)\n",
            );
            let challenge = if denial == Denial::WrongToken {
                r#"Bearer realm="tether-admin", error="invalid_token""#
            } else {
                r#"Bearer realm="tether-admin""#
            };
            resp.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static(challenge),
            );
            resp
        }
    }
}

/// Why the data routes are off, and the three ways to turn them on; also logged at start.
pub const NO_TOKEN_MESSAGE: &str = "/sessions and /config are disabled: the admin listener is \
     not bound to loopback and no admin token is configured. Set TETHER_ADMIN_TOKEN (or \
     admin.token_file, a mounted Secret) and send `Authorization: Bearer <token>`, or bind \
     listen.admin to 127.0.0.1.\n";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_routes_say_how_to_enable_them() {
        let resp = refuse(Denial::NoTokenConfigured);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(!resp.headers().contains_key(hyper::header::WWW_AUTHENTICATE));
        for how in ["TETHER_ADMIN_TOKEN", "admin.token_file", "listen.admin"] {
            assert!(NO_TOKEN_MESSAGE.contains(how), "{how}");
        }
    }

    #[test]
    fn a_missing_or_wrong_token_gets_a_bearer_challenge() {
        for (denial, challenge) in [
            (Denial::MissingToken, r#"Bearer realm="tether-admin""#),
            (
                Denial::WrongToken,
                r#"Bearer realm="tether-admin", error="invalid_token""#,
            ),
        ] {
            let resp = refuse(denial);
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                resp.headers()
                    .get(hyper::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok()),
                Some(challenge)
            );
        }
    }
}
