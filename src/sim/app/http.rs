//! The app's HTTP server: the routes of S-2.1.29's `AppServer` (§2.3) plus test routes
//! (`/echo/*`, `/ws-echo`, `/sim/*`). Accepts HTTP/1.1 and h2c; ends every connection on
//! shutdown after a short graceful drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::session::Command;
use super::{webhook, wire, Shared};

/// Largest request body read (photo uploads are up to 10 MB, multipart adds a little).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
/// How long open connections get to finish after shutdown starts.
const CONN_DRAIN: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

type Reply = Response<Full<Bytes>>;

/// Accepts connections until the root token is cancelled.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                shared
                    .tracker
                    .spawn(connection(Arc::clone(&shared), stream));
            }
            Err(e) => {
                tracing::warn!(error = %e, "app-sim: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let svc_shared = Arc::clone(&shared);
    let svc = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&svc_shared);
        async move { Ok::<_, Infallible>(route(&shared, req).await) }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "app-sim: http connection ended");
            }
        }
        () = shared.cancel.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CONN_DRAIN, conn).await;
        }
    }
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Reply {
    let path = req.uri().path().to_owned();
    match (req.method(), path.as_str()) {
        (_, p) if p == "/echo" || p.starts_with("/echo/") => echo(req).await,
        (&Method::GET, "/ws-echo") => ws_echo(shared, req),
        (&Method::GET, "/health") => {
            let active = shared.lock().sessions.len();
            reply(
                StatusCode::OK,
                &json!({"status": "healthy", "app": shared.cfg.package_name, "activeSessions": active}),
            )
        }
        (&Method::GET, "/tool") => reply(
            StatusCode::OK,
            &json!({"status": "success", "reply": "Hello, world!"}),
        ),
        (&Method::GET, "/sim/stats") => match serde_json::to_value(shared.stats()) {
            Ok(stats) => reply(StatusCode::OK, &stats),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        (&Method::POST, _) => post(shared, req, &path).await,
        _ => error(StatusCode::NOT_FOUND, "Not found"),
    }
}

async fn post(shared: &Arc<Shared>, req: Request<Incoming>, path: &str) -> Reply {
    let query = req.uri().query().map(str::to_owned);
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    match path {
        "/webhook" => {
            let (status, body) = webhook::handle(shared, &body).await;
            reply(status, &body)
        }
        "/settings" => settings(shared, &body),
        "/tool" => {
            shared.count(|c| c.tool_calls += 1);
            reply(StatusCode::OK, &json!({"status": "success", "reply": null}))
        }
        "/photo-upload" => {
            shared.count(|c| c.photo_uploads += 1);
            let request_id = query
                .as_deref()
                .and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "requestId")
                })
                .map(|(_, v)| v.into_owned())
                .or_else(|| multipart_field(&body, "requestId"));
            reply(
                StatusCode::OK,
                &json!({"success": true, "requestId": request_id, "bytes": body.len()}),
            )
        }
        _ => sim_session(shared, path, &body).await,
    }
}

/// `POST /settings` (§2.3): applies the settings to every live session of that user.
fn settings(shared: &Arc<Shared>, body: &[u8]) -> Reply {
    shared.count(|c| c.settings_posts += 1);
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let user = parsed
        .as_ref()
        .and_then(|v| v.get("userIdForSettings")?.as_str());
    let new = parsed
        .as_ref()
        .and_then(|v| v.get("settings"))
        .filter(|s| s.is_array());
    let (Some(user), Some(new)) = (user, new) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Missing userId or settings array in payload",
        );
    };
    let mut updated = 0u64;
    {
        let mut inner = shared.lock();
        let live: Vec<u64> = inner.sessions.values().map(|h| h.generation).collect();
        for rec in inner
            .records
            .iter_mut()
            .filter(|r| r.user_id == user && live.contains(&r.generation))
        {
            rec.settings = Some(new.clone());
            updated += 1;
        }
    }
    reply(
        StatusCode::OK,
        &json!({"status": "success", "message": "Settings updated successfully", "sessionsUpdated": updated}),
    )
}

/// `POST /sim/sessions/{sessionId}/display` `{"count":n}` and `.../raw` (body = frame text).
async fn sim_session(shared: &Arc<Shared>, path: &str, body: &[u8]) -> Reply {
    let Some((id, action)) = path
        .strip_prefix("/sim/sessions/")
        .and_then(|rest| rest.rsplit_once('/'))
    else {
        return error(StatusCode::NOT_FOUND, "Not found");
    };
    let handle = match shared.session(&percent_decode(id)) {
        Ok(handle) => handle,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let outcome = match action {
        "display" => {
            let count = serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v.get("count")?.as_u64())
                .and_then(|c| u32::try_from(c).ok());
            let Some(count) = count else {
                return error(StatusCode::BAD_REQUEST, "Expected {\"count\": n}");
            };
            handle
                .request(|done| Command::Display { count, done })
                .await
        }
        "raw" => {
            let Ok(text) = String::from_utf8(body.to_vec()) else {
                return error(StatusCode::BAD_REQUEST, "Body is not UTF-8");
            };
            handle.request(|done| Command::Raw { text, done }).await
        }
        _ => return error(StatusCode::NOT_FOUND, "Not found"),
    };
    match outcome {
        Ok(()) => reply(StatusCode::OK, &json!({"status": "success"})),
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// `ANY /echo/*`: everything a reverse proxy should have preserved.
async fn echo(req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let mut headers = serde_json::Map::new();
    let mut header_list = Vec::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        header_list.push(json!([name.as_str(), value]));
        match headers.get_mut(name.as_str()) {
            // Repeated headers are joined the way HTTP allows folding them.
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    reply(
        StatusCode::OK,
        &json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query(),
            "version": format!("{:?}", parts.version),
            "headers": headers,
            "header_list": header_list,
            "body_len": body.len(),
        }),
    )
}

/// `GET /ws-echo`: accepts a websocket upgrade and echoes text and binary messages.
fn ws_echo(shared: &Arc<Shared>, mut req: Request<Incoming>) -> Reply {
    let wants_ws = req
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let accept = req
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
        .and_then(|accept| HeaderValue::from_str(&accept).ok());
    let (true, Some(accept)) = (wants_ws, accept) else {
        return error(StatusCode::BAD_REQUEST, "Expected a websocket upgrade");
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let cancel = shared.cancel.clone();
    shared.tracker.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(wire::ws_config()))
                        .await;
                echo_ws(ws, cancel).await;
            }
            Err(e) => tracing::debug!(error = %e, "app-sim: ws-echo upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

async fn echo_ws<S>(mut ws: WebSocketStream<S>, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::select! {
            biased;
            () = cancel.cancelled() => {
                let away = CloseFrame { code: CloseCode::Away, reason: "".into() };
                let _ = tokio::time::timeout(CONN_DRAIN, ws.close(Some(away))).await;
                return;
            }
            msg = ws.next() => msg,
        };
        let sent = match msg {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => ws.send(m).await,
            // Push the queued pong out now.
            Some(Ok(Message::Ping(_))) => ws.flush().await,
            // A close is answered by tungstenite; the stream then ends.
            Some(Ok(_)) => Ok(()),
            Some(Err(_)) | None => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, Reply> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(error(StatusCode::PAYLOAD_TOO_LARGE, "Body too large"))
        }
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "Cannot read body")),
    }
}

/// The value of a simple multipart form field (`Content-Disposition: form-data; name="…"`).
fn multipart_field(body: &[u8], name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\"");
    let at = find(body, marker.as_bytes())? + marker.len();
    let rest = body.get(at..)?;
    let start = find(rest, b"\r\n\r\n")? + 4;
    let value = rest.get(start..)?;
    let end = find(value, b"\r\n").unwrap_or(value.len());
    Some(String::from_utf8_lossy(value.get(..end)?).into_owned())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes `%XX` escapes (but not `+`, which e-mail addresses may contain).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reply(status: StatusCode, body: &Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str) -> Reply {
    reply(status, &json!({"status": "error", "message": message}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_plus_and_bad_escapes() {
        assert_eq!(
            percent_decode("alice%40example.com-com.x"),
            "alice@example.com-com.x"
        );
        assert_eq!(percent_decode("a+b%2"), "a+b%2");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }

    #[test]
    fn multipart_field_is_found_anywhere() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.jpg\"\r\n\r\n\xff\xd8\r\n--b\r\nContent-Disposition: form-data; name=\"requestId\"\r\n\r\nreq-42\r\n--b--\r\n";
        assert_eq!(
            multipart_field(body, "requestId").as_deref(),
            Some("req-42")
        );
        assert_eq!(multipart_field(body, "missing"), None);
        assert_eq!(multipart_field(b"name=\"requestId\"", "requestId"), None);
    }
}
