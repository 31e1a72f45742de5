//! The emulator's one listener: accepts TCP, serves HTTP/1.1 with upgrades, and dispatches
//! by path to the app websockets (`ws`), the control API (`control`) or the cloud HTTP
//! routes (`api`). Also the small response and body helpers those modules share.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use super::engine::Engine;
use super::{api, control, registration, ws};

/// Largest request body the control API and cloud routes read.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Our responses: whole bodies, never streamed.
pub(crate) type Resp = Response<Full<Bytes>>;

/// Accepts connections until the emulator is cancelled (the caller's `spawn` drops it).
pub(crate) async fn accept_loop(engine: Arc<Engine>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => engine.spawn(serve_connection(engine.clone(), stream)),
            Err(e) => {
                tracing::warn!(error = %e, "cloud-sim accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve_connection(engine: Arc<Engine>, stream: TcpStream) {
    // Small frames (acks, transcriptions) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| {
        let engine = engine.clone();
        async move { Ok::<_, Infallible>(route(&engine, req).await) }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "cloud-sim HTTP connection ended with an error");
    }
}

async fn route(engine: &Arc<Engine>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if ws::WS_PATHS.contains(&path) {
        return ws::upgrade(engine, req);
    }
    if path == "/control" || path.starts_with("/control/") {
        return control::handle(engine, req).await;
    }
    if registration::claims(engine, &req) {
        return registration::handle(engine, req).await;
    }
    api::handle(engine, req).await
}

/// A response with `body` and `content_type`.
pub(crate) fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: &Value) -> Resp {
    respond(status, "application/json", Bytes::from(body.to_string()))
}

/// A JSON `{"error": message}` response.
pub(crate) fn error(status: StatusCode, message: &str) -> Resp {
    json(status, &json!({"error": message}))
}

/// Reads a JSON request body; an empty body is `null`. Errors are ready 400 responses.
pub(crate) async fn read_json(body: Incoming) -> Result<Value, Resp> {
    let bytes = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("cannot read body: {e}")))?
        .to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body is not JSON: {e}")))
}

/// Splits a path into percent-decoded segments (empty ones dropped), so ids containing
/// `@` work raw or encoded. `None` if an escape is malformed or not UTF-8.
pub(crate) fn path_segments(path: &str) -> Option<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect()
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_decode_percent_escapes() {
        assert_eq!(
            path_segments("/control/sessions/a%40b.com-pkg/stop"),
            Some(vec![
                "control".into(),
                "sessions".into(),
                "a@b.com-pkg".into(),
                "stop".into()
            ])
        );
        assert_eq!(
            path_segments("/x/a@b/"),
            Some(vec!["x".into(), "a@b".into()])
        );
        assert_eq!(path_segments("/bad%4"), None);
        assert_eq!(path_segments("/bad%zz"), None);
        assert_eq!(path_segments("/bad%ff"), None);
        assert_eq!(path_segments("/bad%+1"), None);
    }
}
