//! `POST /webhook` on the public listener. A `session_request` is recorded, its WebSocket
//! URLs rewritten to Tether's local listener, and it is forwarded to the app, whose answer
//! goes back to the cloud. Other types go to the app untouched. The cloud waits 10 s per
//! attempt, so the app gets a little less (`app.webhook_timeout_ms`) and the cloud always
//! hears back in time.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::limit::Refusal;
use super::{local_url, parse_session_request};
use crate::downstream::proxy;
use crate::runtime::Shared;
use crate::serve::{full, json, json_error, Body};
use crate::session::registry::WebhookRecord;
use crate::session::task::Command;
use std::sync::atomic::Ordering;

/// Handles one webhook POST from `peer`.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    // Admission first, before a byte of the body is read.
    let _permit = match shared.webhook_gate.admit(peer.ip()) {
        Ok(p) => p,
        Err(refusal) => return refused(refusal, peer),
    };
    let (parts, body) = req.into_parts();
    let limit = shared.config().limits.max_webhook_body_bytes;
    let bytes = match crate::serve::read_within(
        Limited::new(body, limit).collect(),
        shared.config().http.body_read_timeout,
    )
    .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is_timeout() => {
            shared.metrics.webhook("unreadable", "rejected");
            return json_error(StatusCode::REQUEST_TIMEOUT, &format!("webhook body {e}"));
        }
        Err(e) => {
            shared.metrics.webhook("unreadable", "rejected");
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("webhook body unreadable or over {limit} bytes: {e}"),
            );
        }
    };
    let parsed: Option<serde_json::Map<String, Value>> = match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    };
    let Some(mut obj) = parsed else {
        // Not ours to judge: the app answers malformed webhooks itself.
        return relay(&shared, parts, bytes, "malformed").await;
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("session_request") => {}
        Some("stop_request") => return stop(shared, parts, bytes, &obj).await,
        _ => return relay(&shared, parts, bytes, "other").await,
    }
    let req = match parse_session_request(&obj) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.webhook("session_request", "rejected");
            tracing::warn!(error = %e, "session_request rejected");
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    // A webhook is a claim, not an order: nothing naming an origin off the allowlist reaches
    // the app, so nothing can make Tether dial there with the app's init.
    if let Some((_, url)) = req
        .urls
        .iter()
        .find(|(_, u)| !shared.config().cloud.allowed_origins.admits(u))
    {
        return forbidden_origin(&shared, url, peer);
    }
    if let Some(resp) = absorb(&shared, &req).await {
        return resp;
    }
    let (session_id, record) = match rewrite(&shared, &req, &mut obj) {
        Ok(r) => r,
        Err(e) => {
            shared.metrics.webhook("session_request", "rejected");
            tracing::warn!(error = %e, "session_request rejected");
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let body = Bytes::from(serde_json::to_vec(&Value::Object(obj)).unwrap_or_default());
    shared.sessions.note_webhook(
        &session_id,
        WebhookRecord {
            body: body.clone(),
            ..record
        },
        shared.config().limits.max_webhook_record_bytes,
    );
    wait_for_app(&shared).await;
    relay(&shared, parts, body, "session_request").await
}

/// 429 (rate) or 503 (busy), with `Retry-After`, counted.
fn refused(refusal: Refusal, peer: SocketAddr) -> Response<Body> {
    tracing::debug!(%peer, limiter = refusal.label(), "webhook refused");
    let (status, message) = match refusal {
        Refusal::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many webhooks in progress; retry shortly",
        ),
        _ => (StatusCode::TOO_MANY_REQUESTS, "webhook rate limit exceeded"),
    };
    crate::serve::retry_after(json_error(status, message), refusal.retry_after_secs())
}

/// 403 for a webhook naming an origin off the allowlist: counted, and logged once per origin
/// with how to allow it.
fn forbidden_origin(shared: &Shared, url: &url::Url, peer: SocketAddr) -> Response<Body> {
    shared
        .metrics
        .webhook("session_request", "forbidden_origin");
    let origin = crate::upstream::clouds::origin_of(url)
        .map(|o| o.as_str().trim_end_matches('/').to_string())
        .unwrap_or_else(|| url.to_string());
    if shared.refused_origins.first_time(&origin) {
        tracing::warn!(
            %origin, %peer,
            "session_request names a cloud origin that is not allowed; refused. If this is \
             your cloud, add it to cloud.allowed_origins (or TETHER_CLOUD_ALLOWED_ORIGINS)"
        );
    }
    json_error(
        StatusCode::FORBIDDEN,
        &format!("cloud origin {origin} is not allowed"),
    )
}

/// A `session_request` for a session Tether already holds never reaches the app: a
/// cloud retry of a slow webhook is answered here (the SDK would tear its socket down for
/// it), and a resurrection (a start after a held stop, or while the cloud link is down)
/// heals that link in place. The caller has checked that every URL in it is allowed.
async fn absorb(shared: &Shared, req: &super::SessionRequest) -> Option<Response<Body>> {
    let handle = shared.sessions.get(&req.session_id)?;
    let success = || json(StatusCode::OK, &serde_json::json!({"status": "success"}));
    let after_held_stop = handle.info.stop_held.swap(false, Ordering::Relaxed);
    if after_held_stop || *handle.info.phase.borrow() == "cloud_down" {
        let url = preferred_url(&req.urls).or_else(|| shared.config().cloud.ws_url.clone())?;
        handle.info.resurrections.fetch_add(1, Ordering::Relaxed);
        let _ = handle.mailbox.send(Command::Resurrect(url)).await;
        shared.metrics.webhook("session_request", "healed");
        tracing::info!(session_id = %req.session_id, hop = "cloud", "resurrection healed in place");
        return Some(success());
    }
    shared.metrics.webhook("session_request", "absorbed");
    shared.metrics.duplicate_webhook();
    tracing::info!(session_id = %req.session_id, hop = "cloud", "duplicate session_request absorbed");
    Some(success())
}

/// The URL a v2 SDK would dial (§2.1): mentraOS first, then the legacy field.
fn preferred_url(urls: &[(String, url::Url)]) -> Option<url::Url> {
    [
        "mentraOSWebsocketUrl",
        "augmentOSWebsocketUrl",
        "websocketUrl",
    ]
    .iter()
    .find_map(|f| {
        urls.iter()
            .find(|(name, _)| name == f)
            .map(|(_, u)| u.clone())
    })
}

/// A `stop_request` for a session Tether holds. The webhook is unauthenticated, so it is a
/// claim: the cloud answers its own stop on the session's socket (`app_stopped`, then close
/// 1000 "App stopped", PROTOCOL §10.4), and a resurrection follows it with a start (§10.3).
/// So the stop is answered here at once and held: it goes to the app only once the session
/// has ended (its cloud confirmed, or refused it); a start that follows heals the session in
/// place; a stop nothing confirms within `cloud.stop_hold_ms` is dropped and counted.
async fn stop(
    shared: Arc<Shared>,
    parts: http::request::Parts,
    bytes: Bytes,
    obj: &serde_json::Map<String, Value>,
) -> Response<Body> {
    let handle = obj
        .get("sessionId")
        .and_then(Value::as_str)
        .and_then(|id| shared.sessions.get(id));
    let Some(handle) = handle else {
        return relay(&shared, parts, bytes, "stop_request").await;
    };
    shared.metrics.webhook("stop_request", "held");
    handle.info.stop_held.store(true, Ordering::Relaxed);
    let before = handle.info.resurrections.load(Ordering::Relaxed);
    let held_at = Instant::now();
    let hold = shared.config().cloud.stop_hold;
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        let mut done = handle.done.clone();
        let ended = tokio::select! {
            () = shared.cancel.cancelled() => return,
            r = tokio::time::timeout(hold, done.wait_for(|d| *d)) => r.is_ok(),
        };
        if handle.info.resurrections.load(Ordering::Relaxed) != before {
            // A start followed: the session was healed in place, the stop was its first half.
            return;
        }
        handle.info.stop_held.store(false, Ordering::Relaxed);
        // A start for the same session after this stop (the user switched the app off and
        // on) belongs to a new session the stop must not end.
        let restarted = shared
            .sessions
            .webhook(&handle.info.id)
            .is_some_and(|r| r.at > held_at);
        if ended && restarted {
            shared.metrics.webhook("stop_request", "superseded");
        } else if ended {
            tracing::info!(session_id = %handle.info.id, "stop confirmed by the session's end; passing it on");
            shared.metrics.webhook("stop_request", "confirmed");
            let _ = relay(&shared, parts, bytes, "stop_request").await;
        } else {
            tracing::warn!(
                session_id = %handle.info.id,
                "stop_request not confirmed by the session's cloud; dropped (forged or stale)"
            );
            shared.metrics.webhook("stop_request", "unconfirmed");
        }
    });
    json(StatusCode::OK, &serde_json::json!({"status": "success"}))
}

/// A new session arriving while the app is down waits for it (bounded below the cloud's
/// webhook timeout) instead of failing at once: a restart is usually over in seconds.
async fn wait_for_app(shared: &Shared) {
    if shared.health.healthy() {
        return;
    }
    let mut health = shared.health.subscribe();
    shared.health.hold();
    let waited = tokio::time::timeout(
        shared.config().session.webhook_hold,
        health.wait_for(|ok| *ok),
    )
    .await;
    shared.health.release();
    if waited.is_ok() {
        shared.metrics.webhook("session_request", "held");
    }
}

/// Points every WebSocket URL field at the local listener; returns the session id and the
/// record to keep (its body is set by the caller).
fn rewrite(
    shared: &Shared,
    req: &super::SessionRequest,
    obj: &mut serde_json::Map<String, Value>,
) -> Result<(String, WebhookRecord), RewriteError> {
    let mut urls = req.urls.clone();
    if urls.is_empty() {
        // An era or emulator that names no URL: use the configured cloud, and fill both
        // fields v2 SDKs read.
        let url = shared
            .config()
            .cloud
            .ws_url
            .clone()
            .ok_or(RewriteError::NoCloud)?;
        urls = vec![
            ("augmentOSWebsocketUrl".to_string(), url.clone()),
            ("mentraOSWebsocketUrl".to_string(), url),
        ];
    }
    let mut cloud_id = String::new();
    for (field, url) in &urls {
        let id = shared.clouds.register(url).map_err(RewriteError::Cloud)?;
        obj.insert(
            field.clone(),
            Value::String(local_url(&shared.local_advertise, &id, url)),
        );
        // The URL a v2 SDK will dial decides the session's cloud.
        if cloud_id.is_empty() || field != "websocketUrl" {
            cloud_id = id;
        }
    }
    tracing::info!(session_id = %req.session_id, hop = "cloud", "session_request");
    Ok((
        req.session_id.clone(),
        WebhookRecord {
            user_id: req.user_id.clone(),
            cloud_id,
            at: Instant::now(),
            body: Bytes::new(),
        },
    ))
}

#[derive(Debug, thiserror::Error)]
enum RewriteError {
    #[error("session_request carries no WebSocket URL and cloud.ws_url is not configured")]
    NoCloud,
    #[error("{0}")]
    Cloud(crate::upstream::clouds::CloudError),
}

/// Forwards a webhook body to the app's `/webhook` and relays its answer.
async fn relay(
    shared: &Shared,
    parts: http::request::Parts,
    body: Bytes,
    ty: &'static str,
) -> Response<Body> {
    let timeout = shared.config().app.webhook_timeout;
    let mut req = Request::from_parts(parts, full(body));
    req.headers_mut().remove(hyper::header::CONTENT_LENGTH);
    let (resp, outcome) =
        match tokio::time::timeout(timeout, proxy::send_to_app(shared, req, None)).await {
            Err(_) => (
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!(
                        "app did not answer the webhook within {} ms",
                        timeout.as_millis()
                    ),
                ),
                "timeout",
            ),
            Ok(Err(e)) => (
                json_error(StatusCode::BAD_GATEWAY, &format!("app unreachable: {e}")),
                "app_unreachable",
            ),
            Ok(Ok(resp)) if resp.status().is_success() => (resp, "forwarded"),
            Ok(Ok(resp)) => (resp, "app_error"),
        };
    shared.metrics.webhook(ty, outcome);
    if outcome != "forwarded" {
        tracing::warn!(
            r#type = ty,
            outcome,
            status = resp.status().as_u16(),
            hop = "app",
            "webhook not accepted"
        );
    }
    resp
}
