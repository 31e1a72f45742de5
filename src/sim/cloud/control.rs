//! The JSON control API under `/control`: drive sessions (start, stop, end, push data,
//! inject frames, fault the socket), fault the registry (`POST /control/registration`), and
//! read stats, received frames, HTTP hit counts and the registry (`GET /control/registry`).
//! Session and user ids may appear raw or percent-encoded in paths. Unknown session or
//! user -> 404, bad body -> 400, no open socket -> 409; never a panic.

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::engine::{Engine, Stream, MAX_PUSH};
use super::server::{self, Resp};
use super::session::SocketCmd;
use super::{CloudSimError, RawFrame, RegistrationMode};

/// Largest `binary_len` a raw injection may ask for.
const MAX_RAW_BINARY: u64 = 64 * 1024 * 1024;

/// Routes one `/control...` request.
pub(crate) async fn handle(engine: &Arc<Engine>, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    let Some(segments) = server::path_segments(parts.uri.path()) else {
        return server::error(StatusCode::BAD_REQUEST, "malformed path");
    };
    // segments[0] is "control".
    let segs: Vec<&str> = segments.iter().skip(1).map(String::as_str).collect();
    match (&parts.method, segs.as_slice()) {
        (&Method::GET, []) => server::json(StatusCode::OK, &describe(engine)),
        (&Method::GET, ["sessions"]) => to_json(&engine.all_stats()),
        (&Method::GET, ["sessions", id]) => match engine.stats(id) {
            Some(stats) => to_json(&stats),
            None => failure(&CloudSimError::UnknownSession((*id).to_owned())),
        },
        (&Method::GET, ["sessions", id, "received"]) => match engine.received(id) {
            Ok(frames) => to_json(&frames),
            Err(e) => failure(&e),
        },
        (&Method::GET, ["http-hits"]) => to_json(&engine.http_hits()),
        (&Method::GET, ["registry"]) => to_json(&engine.registry_stats()),
        (&Method::POST, ["registration"]) => match server::read_json(body).await {
            Ok(body) => done(registration_mode(&body).map(|(mode, times)| {
                engine.set_registration_mode(mode, times);
            })),
            Err(resp) => resp,
        },
        (&Method::POST, ["sessions"]) => match server::read_json(body).await {
            Ok(body) => start(engine, &body).await,
            Err(resp) => resp,
        },
        (&Method::POST, ["users", user, "end"]) => done(engine.end_user_session(user)),
        (&Method::POST, ["sessions", id, action]) => match server::read_json(body).await {
            Ok(body) => session_action(engine, id, action, &body).await,
            Err(resp) => resp,
        },
        _ => server::error(StatusCode::NOT_FOUND, "no such control route"),
    }
}

fn describe(engine: &Engine) -> Value {
    json!({"addr": engine.addr.to_string(),
           "wsUrl": format!("ws://{}{}", engine.addr, engine.app_ws_path()),
           "packageName": engine.cfg.package_name,
           "ackStyle": engine.cfg.ack_style,
           "urlStyle": engine.cfg.url_style,
           "registrationApi": engine.cfg.registration_api})
}

/// `POST /control/sessions {"userId": ..}` -> `{"sessionId": .., "outcome": ..}`.
async fn start(engine: &Arc<Engine>, body: &Value) -> Resp {
    let Some(user) = body.get("userId").and_then(Value::as_str) else {
        return server::error(StatusCode::BAD_REQUEST, "body must be {\"userId\": \"..\"}");
    };
    match engine.start_session(user).await {
        Ok(outcome) => {
            let mut reply = serde_json::to_value(&outcome).unwrap_or(Value::Null);
            reply["sessionId"] = json!(format!("{user}-{}", engine.cfg.package_name));
            server::json(StatusCode::OK, &reply)
        }
        Err(e) => failure(&e),
    }
}

async fn session_action(engine: &Arc<Engine>, id: &str, action: &str, body: &Value) -> Resp {
    let result = match action {
        "stop" => engine.stop_session(id).await,
        "transcriptions" => count(body).and_then(|n| engine.push(id, n, Stream::Transcription)),
        "audio" => count(body).and_then(|n| engine.push(id, n, Stream::Audio)),
        "raw" => raw_frame(body).and_then(|frame| engine.send_raw(id, frame)),
        "drop" => engine.socket_cmd(id, SocketCmd::Drop),
        "blackhole" => engine.socket_cmd(id, SocketCmd::Blackhole),
        "close" => {
            close_args(body).and_then(|(code, reason)| engine.close_socket(id, code, reason))
        }
        _ => return server::error(StatusCode::NOT_FOUND, "no such control route"),
    };
    done(result)
}

fn invalid(what: &str) -> CloudSimError {
    CloudSimError::InvalidInput(what.to_owned())
}

/// `{"count": n}` with `n <= MAX_PUSH`.
fn count(body: &Value) -> Result<u32, CloudSimError> {
    body.get("count")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n <= MAX_PUSH)
        .ok_or_else(|| invalid("body must be {\"count\": n} with 0 <= n <= 1000000"))
}

/// `{"text": ".."}` or `{"binary_len": n}` (n zero bytes).
fn raw_frame(body: &Value) -> Result<RawFrame, CloudSimError> {
    if let Some(text) = body.get("text").and_then(Value::as_str) {
        return Ok(RawFrame::Text(text.to_owned()));
    }
    body.get("binary_len")
        .and_then(Value::as_u64)
        .filter(|n| *n <= MAX_RAW_BINARY)
        .and_then(|n| usize::try_from(n).ok())
        .map(|n| RawFrame::Binary(vec![0; n]))
        .ok_or_else(|| invalid("body must be {\"text\": \"..\"} or {\"binary_len\": n <= 64 MiB}"))
}

/// `{"mode": "ok"|"not_found"|"error"|"hang", "times": n?}`.
fn registration_mode(body: &Value) -> Result<(RegistrationMode, Option<u32>), CloudSimError> {
    let usage = "body must be {\"mode\": \"ok\"|\"not_found\"|\"error\"|\"hang\", \"times\": n?}";
    let mode = body
        .get("mode")
        .cloned()
        .and_then(|m| serde_json::from_value::<RegistrationMode>(m).ok())
        .ok_or_else(|| invalid(usage))?;
    let times = match body.get("times") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid(usage))?,
        ),
    };
    Ok((mode, times))
}

/// `{"code": n, "reason": ".."}`; the reason defaults to empty.
fn close_args(body: &Value) -> Result<(u16, &str), CloudSimError> {
    let code = body
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .ok_or_else(|| invalid("body must be {\"code\": n, \"reason\": \"..\"}"))?;
    Ok((
        code,
        body.get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    ))
}

fn to_json<T: serde::Serialize>(value: &T) -> Resp {
    match serde_json::to_value(value) {
        Ok(v) => server::json(StatusCode::OK, &v),
        Err(e) => server::error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn done(result: Result<(), CloudSimError>) -> Resp {
    match result {
        Ok(()) => server::json(StatusCode::OK, &json!({"ok": true})),
        Err(e) => failure(&e),
    }
}

fn failure(e: &CloudSimError) -> Resp {
    let status = match e {
        CloudSimError::UnknownSession(_) | CloudSimError::UnknownUser(_) => StatusCode::NOT_FOUND,
        CloudSimError::NoSocket(_) => StatusCode::CONFLICT,
        CloudSimError::InvalidInput(_) => StatusCode::BAD_REQUEST,
        CloudSimError::Bind { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    server::error(status, &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_validated() {
        assert_eq!(count(&json!({"count": 3})).ok(), Some(3));
        assert!(count(&json!({"count": -1})).is_err());
        assert!(count(&json!({"count": 2_000_000})).is_err());
        assert!(count(&Value::Null).is_err());
        assert_eq!(
            raw_frame(&json!({"text": "x"})).ok(),
            Some(RawFrame::Text("x".into()))
        );
        assert_eq!(
            raw_frame(&json!({"binary_len": 2})).ok(),
            Some(RawFrame::Binary(vec![0, 0]))
        );
        assert!(raw_frame(&json!({"binary_len": "2"})).is_err());
        assert_eq!(close_args(&json!({"code": 4000})).ok(), Some((4000, "")));
        assert_eq!(
            registration_mode(&json!({"mode": "not_found"})).ok(),
            Some((RegistrationMode::NotFound, None))
        );
        assert_eq!(
            registration_mode(&json!({"mode": "error", "times": 3})).ok(),
            Some((RegistrationMode::Error, Some(3)))
        );
        assert!(registration_mode(&json!({"mode": "sometimes"})).is_err());
        assert!(registration_mode(&json!({"mode": "hang", "times": -1})).is_err());
        assert!(close_args(&json!({"code": 70000})).is_err());
    }
}
