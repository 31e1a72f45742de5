//! The local listener: the app's "cloud". The webhook Tether forwards hands the app a URL
//! `ws://<local>/c/<cloud-id>/app-ws`; the app's WebSocket arrives here and joins a session.
//! Plain HTTP requests are the SDK's own cloud calls (settings, storage, TTS, permissions),
//! derived from that URL, and are forwarded to the session's real cloud.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use url::Url;

use crate::protocol::ConnectionInit;
use crate::runtime::Shared;
use crate::serve::{is_upgrade, json_error, relay, strip_hop_headers, Body};
use crate::session::machine::{Frame, UrlMap};
use crate::session::task::{self, AppSocket, Command, Spawn};
use crate::upstream::{clouds, connect, http};
use tokio::sync::mpsc;

/// WebSocket paths of the app endpoint across cloud eras (PROTOCOL §4).
pub const APP_WS_PATHS: &[&str] = &["/app-ws", "/tpa-ws", "/ws/miniapp"];

/// The cloud a local request belongs to, and the path to use there.
struct Target {
    origin: Url,
    cloud_id: Option<String>,
    path_and_query: String,
}

/// Handles one request on the local listener.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let target = match resolve(&shared, &req) {
        Ok(t) => t,
        Err(msg) => return json_error(StatusCode::BAD_GATEWAY, &msg),
    };
    if is_upgrade(&req) {
        let path = target.path_and_query.split('?').next().unwrap_or_default();
        if !APP_WS_PATHS.contains(&path) {
            return json_error(StatusCode::NOT_FOUND, "Unknown WebSocket path");
        }
        return accept(shared, req, target);
    }
    forward(&shared, req, &target).await
}

/// Finds the cloud of a local request: by the `/c/<id>` prefix of the URL Tether handed out;
/// for the SDK's host-only settings call, by the session id it sends as a bearer token; else
/// the configured cloud.
fn resolve(shared: &Shared, req: &Request<Incoming>) -> Result<Target, String> {
    let path = req.uri().path();
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    if let Some((id, rest)) = clouds::split_local_path(path) {
        let origin = shared
            .clouds
            .get(id)
            .ok_or_else(|| format!("unknown cloud id {id:?}"))?;
        return Ok(Target {
            origin,
            cloud_id: Some(id.to_string()),
            path_and_query: format!("{rest}{query}"),
        });
    }
    let by_session = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|sid| shared.sessions.webhook(sid.trim()))
        .and_then(|w| shared.clouds.get(&w.cloud_id).map(|o| (o, w.cloud_id)));
    if let Some((origin, id)) = by_session {
        return Ok(Target {
            origin,
            cloud_id: Some(id),
            path_and_query: format!("{path}{query}"),
        });
    }
    let origin = shared
        .config()
        .cloud
        .ws_url
        .as_ref()
        .and_then(clouds::origin_of)
        .ok_or_else(|| "cannot tell which cloud this request belongs to (no /c/<id> prefix and no cloud.ws_url)".to_string())?;
    Ok(Target {
        origin,
        cloud_id: None,
        path_and_query: format!("{path}{query}"),
    })
}

/// Forwards a plain HTTP request to the cloud.
async fn forward(shared: &Shared, req: Request<Incoming>, target: &Target) -> Response<Body> {
    let Some(url) = clouds::join(&target.origin, &target.path_and_query, true) else {
        return json_error(StatusCode::BAD_REQUEST, "cannot build the cloud URL");
    };
    let mut req = req.map(relay);
    strip_hop_headers(req.headers_mut(), false);
    match http::forward(
        req,
        &url,
        shared.tls.clone(),
        shared.config().cloud.http_timeout,
    )
    .await
    {
        Ok(resp) => {
            shared
                .metrics
                .proxy_request("cloud_http", resp.status().as_u16());
            let (mut parts, body) = resp.into_parts();
            strip_hop_headers(&mut parts.headers, false);
            Response::from_parts(parts, relay(body))
        }
        Err(e) => {
            tracing::warn!(hop = "cloud", error = %e, "cloud HTTP call failed");
            shared.metrics.proxy_request("cloud_http", 502);
            json_error(StatusCode::BAD_GATEWAY, &format!("cloud unreachable: {e}"))
        }
    }
}

/// Answers the WebSocket handshake and hands the socket to a session once the upgrade is done.
fn accept(shared: Arc<Shared>, mut req: Request<Incoming>, target: Target) -> Response<Body> {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return json_error(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    // Frames read here go to the cloud: the app->cloud limit applies.
    let config = shared.config();
    let cfg = connect::ws_config(
        config.limits.max_frame_bytes_up,
        config.limits.ws_read_buffer_bytes,
    );
    let tracker = shared.tracker.clone();
    let wait = shared.config().http.upgrade_timeout;
    tracker.spawn(async move {
        // hyper hands the socket over only once the request is fully read and the 101
        // written: a client that never finishes its request would park this task for good.
        let upgraded = match tokio::time::timeout(wait, upgrade).await {
            Ok(Ok(u)) => u,
            Ok(Err(e)) => {
                tracing::debug!(hop = "app", error = %e, "upgrade failed");
                return;
            }
            Err(_) => {
                shared
                    .metrics
                    .listener(crate::serve::Listener::Local)
                    .timeout(crate::serve::Stage::Upgrade);
                tracing::debug!(hop = "app", "WebSocket upgrade did not complete in time");
                return;
            }
        };
        let sock =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
        on_app_socket(shared, sock, target).await;
    });
    let mut resp = Response::new(crate::serve::full(""));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept_key) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// Waits for the app's first frame (its init) and starts the session.
async fn on_app_socket(shared: Arc<Shared>, mut sock: AppSocket, target: Target) {
    use futures_util::StreamExt;
    let timeout = shared.config().limits.init_timeout;
    let first = tokio::select! {
        () = shared.cancel.cancelled() => return,
        r = tokio::time::timeout(timeout, sock.next()) => r,
    };
    let text = match first {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(_))) => {
            task::reject(
                sock,
                "MALFORMED_MESSAGE",
                "expected tpa_connection_init as the first frame",
            )
            .await;
            return;
        }
        Err(_) => {
            task::reject(
                sock,
                "MALFORMED_MESSAGE",
                "no tpa_connection_init within the init timeout",
            )
            .await;
            return;
        }
        Ok(_) => return,
    };
    let init = ConnectionInit::parse(text.as_str());
    let session_id = match init.as_ref().and_then(|i| i.session_id.clone()) {
        Some(id) if !id.is_empty() => id,
        // Not an init Tether understands: relay it anyway under a connection-local id, so
        // a newer SDK's handshake still reaches the cloud untouched.
        _ => format!("conn-{}", rand::random::<u64>()),
    };
    let Some(cloud_url) = clouds::join(&target.origin, &target.path_and_query, false) else {
        task::reject(sock, "SESSION_NOT_FOUND", "cannot build the cloud URL").await;
        return;
    };
    let init = Frame::Text(text);
    // A session Tether is holding (or relaying) takes the new socket: the app restarted or
    // its SDK reconnected, and the task answers the init from its cache.
    let sock = match shared.sessions.get(&session_id) {
        Some(handle) => match handle
            .mailbox
            .send(Command::Attach(Box::new(sock), init.clone()))
            .await
        {
            Ok(()) => return,
            Err(mpsc::error::SendError(Command::Attach(sock, _))) => *sock,
            Err(_) => return,
        },
        None => sock,
    };
    let urls = url_map(&shared, &target);
    tracing::info!(session_id = %session_id, hop = "app", "app connected");
    task::spawn(
        &shared,
        Spawn {
            session_id,
            app: sock,
            init,
            cloud_url,
            urls,
        },
    );
}

/// Local prefixes the SDK builds its HTTP URLs on (it forces `https://` for TTS), mapped to
/// the cloud's HTTP base.
fn url_map(shared: &Shared, target: &Target) -> UrlMap {
    let prefix = match &target.cloud_id {
        Some(id) => format!("{}{}{id}", shared.local_advertise, clouds::PREFIX),
        None => shared.local_advertise.clone(),
    };
    let cloud_base = clouds::join(&target.origin, "/", true)
        .map(|u| u.as_str().trim_end_matches('/').to_string())
        .unwrap_or_default();
    UrlMap {
        local_prefixes: vec![format!("https://{prefix}"), format!("http://{prefix}")],
        cloud_base,
    }
}
