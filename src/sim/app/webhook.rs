//! The cloud's `POST /webhook` as S-2.1.29's `AppServer` handles it (§2.1, §2.2): a
//! `session_request` answers only after the socket is acked and onSession has run.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};

use super::session::{self, Command, SessionHandle};
use super::Shared;

/// S-2.1.29 waits this long after `ownership_release` before closing the old socket.
const RELEASE_SETTLE: Duration = Duration::from_millis(100);
/// Bound on waiting for an old session's driver to write its `ownership_release`.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(1);

/// A webhook answer: status and JSON body.
pub(super) type Answer = (StatusCode, Value);

/// Handles one webhook body.
pub(super) async fn handle(shared: &Arc<Shared>, body: &[u8]) -> Answer {
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        shared.count(|c| c.rejected_webhooks += 1);
        return error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    match msg.get("type").and_then(Value::as_str) {
        Some("session_request") => {
            shared.count(|c| c.session_requests += 1);
            session_request(shared, &msg).await
        }
        Some("stop_request") => {
            shared.count(|c| c.stop_requests += 1);
            stop_request(shared, &msg)
        }
        _ => {
            shared.count(|c| c.rejected_webhooks += 1);
            error(StatusCode::BAD_REQUEST, "Unknown webhook request type")
        }
    }
}

async fn session_request(shared: &Arc<Shared>, msg: &Value) -> Answer {
    let Some(session_id) = non_empty(msg, "sessionId") else {
        shared.count(|c| c.rejected_webhooks += 1);
        return error(StatusCode::BAD_REQUEST, "Missing sessionId");
    };
    let user_id = non_empty(msg, "userId").unwrap_or_default();
    if let Some(old) = shared.take_session(session_id) {
        release(old).await;
    }
    // S-2.1.29 precedence; `websocketUrl` (the v3 path) is ignored.
    let Some(url) =
        non_empty(msg, "mentraOSWebsocketUrl").or_else(|| non_empty(msg, "augmentOSWebsocketUrl"))
    else {
        return failed();
    };
    let (handle, ready) = session::spawn(shared, session_id, user_id, url);
    match ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::info!(session_id, error = %e, "app-sim: session connect failed");
            return failed();
        }
        Err(_) => return failed(),
    }
    // onSession runs as its own task: a cloud that gives up on the HTTP answer does not
    // cancel the app's handler registration.
    let on_session = shared.tracker.spawn(on_session(Arc::clone(shared), handle));
    match on_session.await {
        Ok(Ok(())) => (StatusCode::OK, json!({"status": "success"})),
        _ => failed(),
    }
}

/// Default `onStop`: disconnect that session and forget it; 200 even if unknown.
fn stop_request(shared: &Arc<Shared>, msg: &Value) -> Answer {
    if let Some(session) = non_empty(msg, "sessionId").and_then(|id| shared.take_session(id)) {
        session.stop.cancel();
    }
    (StatusCode::OK, json!({"status": "success"}))
}

/// The developer's onSession: optional delay, then one registration per subscription.
async fn on_session(shared: Arc<Shared>, handle: SessionHandle) -> Result<(), super::SessionError> {
    let delay = Duration::from_millis(shared.cfg.on_session_delay_ms);
    if !delay.is_zero() {
        tokio::select! {
            () = handle.stop.cancelled() => return Err(super::SessionError::Gone),
            () = tokio::time::sleep(delay) => {}
        }
    }
    for key in &shared.cfg.subscriptions {
        let key = key.clone();
        handle
            .request(|done| Command::Register { key, done })
            .await?;
    }
    Ok(())
}

/// §2.1: `ownership_release` on the old socket, ~100 ms, then close it.
async fn release(old: SessionHandle) {
    let sent = tokio::time::timeout(
        RELEASE_TIMEOUT,
        old.request(|done| Command::Release { done }),
    )
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!("app-sim: old session could not send ownership_release");
    }
    tokio::time::sleep(RELEASE_SETTLE).await;
    old.stop.cancel();
}

fn non_empty<'a>(msg: &'a Value, key: &str) -> Option<&'a str> {
    msg.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn failed() -> Answer {
    error(StatusCode::INTERNAL_SERVER_ERROR, "Failed to connect")
}

fn error(status: StatusCode, message: &str) -> Answer {
    (status, json!({"status": "error", "message": message}))
}
