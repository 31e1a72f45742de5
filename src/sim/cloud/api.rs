//! Cloud HTTP routes the SDK calls (PROTOCOL.md §3), enough to prove that a proxy forwards
//! them: TTS, app settings, simple storage (in memory), permissions, SDK version. Every hit
//! is counted by route name for the control API.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::engine::{lock, Engine};
use super::server::{self, Resp};
use super::wire;

/// A few bytes that start like an MP3 file (ID3v2 header), as the TTS answer.
const FAKE_MP3: &[u8] = b"ID3\x03\x00\x00\x00\x00\x00\x0ftether-cloud-sim-tts";

/// The SDK version the cloud advertises as latest (§0).
const LATEST_SDK: &str = "2.1.29";

/// Routes one request that is neither a websocket nor a control call.
pub(crate) async fn handle(engine: &Engine, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let Some(segments) = server::path_segments(parts.uri.path()) else {
        return server::error(StatusCode::BAD_REQUEST, "malformed path");
    };
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&parts.method, segs.as_slice()) {
        (&Method::GET, ["api", "tts"]) => tts(engine, &parts.uri),
        (&Method::GET, ["appsettings", "user", package]) => {
            app_settings(engine, &parts.headers, package)
        }
        (&Method::GET, ["api", "public", "permissions", package]) => permissions(engine, package),
        (&Method::GET, ["api", "sdk", "version"]) => {
            engine.hit("sdk_version");
            server::json(
                StatusCode::OK,
                &json!({"success": true, "data": {"latest": LATEST_SDK}}),
            )
        }
        (method, ["api", "sdk", "simple-storage", user, rest @ ..]) if rest.len() <= 1 => {
            engine.hit("simple_storage");
            if !storage_authorized(engine, &parts.headers) {
                return server::json(
                    StatusCode::UNAUTHORIZED,
                    &json!({"success": false, "error": "Invalid authorization"}),
                );
            }
            let body = match method {
                &Method::PUT => match server::read_json(body).await {
                    Ok(v) => v,
                    Err(resp) => return resp,
                },
                _ => Value::Null,
            };
            simple_storage(engine, method, user, rest.first().copied(), &body)
        }
        _ => {
            engine.hit("not_found");
            server::error(StatusCode::NOT_FOUND, "not found")
        }
    }
}

/// `GET /api/tts?text=..` -> a small `audio/mpeg` body (the phone fetches this URL, §3).
fn tts(engine: &Engine, uri: &Uri) -> Resp {
    engine.hit("tts");
    let query = uri.query().unwrap_or_default();
    let has_text =
        url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "text" && !v.is_empty());
    if !has_text {
        return server::error(StatusCode::BAD_REQUEST, "text is required");
    }
    server::respond(StatusCode::OK, "audio/mpeg", Bytes::from_static(FAKE_MP3))
}

/// `GET /appsettings/user/<pkg>` with `Authorization: Bearer <sessionId>` -> the user's
/// settings for the app (the same array the ack carries).
fn app_settings(engine: &Engine, headers: &HeaderMap, package: &str) -> Resp {
    engine.hit("app_settings");
    let known = server::bearer(headers).is_some_and(|sid| engine.stats(sid).is_some());
    if !known {
        return server::error(StatusCode::UNAUTHORIZED, "unknown session token");
    }
    if package != engine.cfg.package_name {
        return server::error(StatusCode::NOT_FOUND, "unknown app");
    }
    server::json(StatusCode::OK, &wire::app_settings())
}

/// `GET /api/public/permissions/<pkg>` -> the app's declared permissions.
fn permissions(engine: &Engine, package: &str) -> Resp {
    engine.hit("permissions");
    if package != engine.cfg.package_name {
        return server::error(StatusCode::NOT_FOUND, "unknown app");
    }
    let body = json!({"packageName": package,
                      "permissions": [{"type": "MICROPHONE", "description": "Live transcription"}]});
    server::json(StatusCode::OK, &body)
}

/// Simple storage authenticates with `Bearer <pkg>:<apiKey>` (§3).
fn storage_authorized(engine: &Engine, headers: &HeaderMap) -> bool {
    server::bearer(headers).is_some_and(|token| {
        token.split_once(':')
            == Some((
                engine.cfg.package_name.as_str(),
                engine.cfg.api_key.as_str(),
            ))
    })
}

/// `GET/PUT/DELETE /api/sdk/simple-storage/<userId>[/<key>]` on the in-memory store.
fn simple_storage(
    engine: &Engine,
    method: &Method,
    user: &str,
    key: Option<&str>,
    body: &Value,
) -> Resp {
    let mut storage = lock(&engine.storage);
    let store = storage.entry(user.to_owned()).or_default();
    let ok = |data: Value| server::json(StatusCode::OK, &json!({"success": true, "data": data}));
    match (method, key) {
        (&Method::GET, None) => ok(Value::Object(store.clone().into_iter().collect())),
        (&Method::GET, Some(key)) => match store.get(key) {
            Some(value) => ok(json!({"value": value})),
            None => server::json(
                StatusCode::NOT_FOUND,
                &json!({"success": false, "error": "Key not found"}),
            ),
        },
        (&Method::PUT, Some(key)) => match body.get("value") {
            Some(value) => {
                store.insert(key.to_owned(), value.clone());
                ok(Value::Null)
            }
            None => server::error(StatusCode::BAD_REQUEST, "body must be {\"value\": ..}"),
        },
        (&Method::PUT, None) => match body.get("data").and_then(Value::as_object) {
            Some(data) => {
                store.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
                ok(Value::Null)
            }
            None => server::error(StatusCode::BAD_REQUEST, "body must be {\"data\": {..}}"),
        },
        (&Method::DELETE, Some(key)) => ok(json!({"deleted": store.remove(key).is_some()})),
        (&Method::DELETE, None) => {
            store.clear();
            ok(Value::Null)
        }
        _ => server::error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}
