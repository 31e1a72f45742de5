//! `POST /webhook` on the public listener. A `session_request` is recorded, its WebSocket
//! URLs rewritten to Tether's local listener, and it is forwarded to the app, whose answer
//! goes back to the cloud. Other types go to the app untouched. The cloud waits 10 s per
//! attempt, so the app gets a little less (`app.webhook_timeout_ms`) and the cloud always
//! hears back in time.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::{local_url, parse_session_request, WebhookError};
use crate::downstream::proxy;
use crate::runtime::Shared;
use crate::serve::{full, json, json_error, Body};
use crate::session::registry::{Registry, WebhookRecord};
use crate::session::task::Command;
use std::sync::atomic::Ordering;

/// Handles one webhook POST.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let limit = shared.config().limits.max_webhook_body_bytes;
    let bytes = match crate::serve::read_within(
        Limited::new(body, limit).collect(),
        shared.config().http.body_read_timeout,
    )
    .await
    {
        Ok(b) => b.to_bytes(),
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
    if let Some(resp) = absorb(&shared, &obj).await {
        return resp;
    }
    let session_id = match rewrite(&shared, &mut obj) {
        Ok(id) => id,
        Err(e) => {
            shared.metrics.webhook("session_request", "rejected");
            tracing::warn!(error = %e, "session_request rejected");
            return json_error(StatusCode::BAD_REQUEST, &e.to_string());
        }
    };
    let body = Bytes::from(serde_json::to_vec(&Value::Object(obj)).unwrap_or_default());
    shared.sessions.set_webhook_body(&session_id, body.clone());
    wait_for_app(&shared).await;
    relay(&shared, parts, body, "session_request").await
}

/// A `session_request` for a session Tether already holds never reaches the app: a
/// cloud retry of a slow webhook is answered here (the SDK would tear its socket down for
/// it), and a resurrection of a session whose cloud link is down heals that link in place.
async fn absorb(shared: &Shared, obj: &serde_json::Map<String, Value>) -> Option<Response<Body>> {
    let req = parse_session_request(obj).ok()?;
    let handle = shared.sessions.get(&req.session_id)?;
    if handle.info.stopping.load(Ordering::Relaxed) {
        return None;
    }
    let success = || json(StatusCode::OK, &serde_json::json!({"status": "success"}));
    let after_held_stop = handle.info.stop_held.swap(false, Ordering::Relaxed);
    if after_held_stop || *handle.info.phase.borrow() == "cloud_down" {
        // The URL a v2 SDK would dial (§2.1): mentraOS first, then the legacy field.
        let preferred = [
            "mentraOSWebsocketUrl",
            "augmentOSWebsocketUrl",
            "websocketUrl",
        ];
        let url = preferred
            .iter()
            .find_map(|f| {
                req.urls
                    .iter()
                    .find(|(name, _)| name == f)
                    .map(|(_, u)| u.clone())
            })
            .or_else(|| shared.config().cloud.ws_url.clone())?;
        if shared.clouds.register(&url).is_err() {
            return None;
        }
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

/// A `stop_request`: normally passed to the app, which then closes its socket (a meant
/// end). While the session's cloud link is down it may be the first half of a resurrection
/// (stop, then start, §10.3): it is answered here and held; if no start follows within
/// `cloud.stop_hold_ms` it goes to the app after all.
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
    // A stop may open a resurrection while the link is down, and also just after a heal:
    // a cloud that handled the old socket's close after the new init dropped the session
    // over a link that looks healthy (PROTOCOL §10.5).
    let recently_healed = Registry::healed_within(
        &handle.info,
        shared.config().cloud.resurrection_wait,
        Instant::now(),
    );
    if *handle.info.phase.borrow() != "cloud_down" && !recently_healed {
        handle.info.stopping.store(true, Ordering::Relaxed);
        let _ = handle.mailbox.send(Command::StopRequested).await;
        return relay(&shared, parts, bytes, "stop_request").await;
    }
    shared.metrics.webhook("stop_request", "held");
    handle.info.stop_held.store(true, Ordering::Relaxed);
    let before = handle.info.resurrections.load(Ordering::Relaxed);
    let hold = shared.config().cloud.stop_hold;
    let tracker = shared.tracker.clone();
    tracker.spawn(async move {
        tokio::time::sleep(hold).await;
        if handle.info.resurrections.load(Ordering::Relaxed) != before {
            return;
        }
        handle.info.stop_held.store(false, Ordering::Relaxed);
        tracing::info!(session_id = %handle.info.id, "no resurrection followed the stop; passing it on");
        handle.info.stopping.store(true, Ordering::Relaxed);
        let _ = handle.mailbox.send(Command::StopRequested).await;
        let _ = relay(&shared, parts, bytes, "stop_request").await;
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

/// Records the session and points every WebSocket URL field at the local listener; returns
/// the session id.
fn rewrite(
    shared: &Shared,
    obj: &mut serde_json::Map<String, Value>,
) -> Result<String, RewriteError> {
    let req = parse_session_request(obj)?;
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
    tracing::info!(session_id = %req.session_id, hop = "cloud", cloud = %cloud_id, "session_request");
    shared.sessions.note_webhook(
        &req.session_id,
        WebhookRecord {
            user_id: req.user_id,
            cloud_id,
            at: Instant::now(),
            body: Bytes::new(),
        },
    );
    Ok(req.session_id)
}

#[derive(Debug, thiserror::Error)]
enum RewriteError {
    #[error(transparent)]
    Parse(#[from] WebhookError),
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
