//! App websocket I/O: the upgrade on `/app-ws`, `/tpa-ws`, `/ws/miniapp` (§4, message auth
//! only) and one task per accepted socket that writes queued commands, reads app frames,
//! and pings (§9). Message meaning is decided in `inbound`; lifecycle effects in `lifecycle`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::engine::Engine;
use super::server;
use super::session::{SocketCmd, SocketRef};

/// Paths the emulator upgrades; all share one handler, as in C-Later (§4).
pub(crate) const WS_PATHS: [&str; 3] = ["/app-ws", "/tpa-ws", "/ws/miniapp"];

/// Small read buffer: many idle app sockets in benchmarks should not cost 128 KiB each.
const READ_BUFFER_BYTES: usize = 16 * 1024;

/// How long a cloud-initiated close waits for the app's close reply.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

type AppSocket = WebSocketStream<TokioIo<Upgraded>>;

/// Why a socket's main loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Closed,
    Blackholed,
}

/// Answers a websocket upgrade with 101 and spawns the socket task, or 400 if the request
/// is not a valid upgrade.
pub(crate) fn upgrade(engine: &Arc<Engine>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(accept) = accept_key(req.method(), req.headers()) else {
        let body =
            json!({"error": "expected a websocket upgrade (GET, Upgrade: websocket, version 13)"});
        return server::json(StatusCode::BAD_REQUEST, &body);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(engine.cfg.max_frame_bytes))
        .max_frame_size(Some(engine.cfg.max_frame_bytes));
    let task_engine = engine.clone();
    engine.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                run_socket(task_engine, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "app websocket upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// `Sec-WebSocket-Accept` for a well-formed RFC 6455 upgrade request, else `None`.
fn accept_key(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let valid = method == Method::GET
        && version_ok
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade");
    let key = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| valid)?;
    HeaderValue::from_str(&derive_accept_key(key.as_bytes())).ok()
}

/// One app socket, from upgrade to close. Cancel-safety: every `select!` branch is
/// (`mpsc::recv`, `StreamExt::next`, `Interval::tick`); writes happen in the handlers.
async fn run_socket(engine: Arc<Engine>, mut ws: AppSocket) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let me = SocketRef {
        id: engine.next_socket_id(),
        tx,
    };
    let mut bound: Option<String> = None;
    let period = Duration::from_millis(engine.cfg.ping_interval_ms);
    let mut ping = interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let exit = loop {
        // Commands first, so queued replies and closes go out before more input is read.
        let step = tokio::select! {
            biased;
            Some(cmd) = rx.recv() => apply(&mut ws, cmd).await,
            frame = ws.next() => on_frame(&engine, &me, &mut bound, &mut ping, frame),
            _ = ping.tick() => send_ping(&engine, &me, bound.as_deref(), &mut ws).await,
        };
        if let Some(exit) = step {
            break exit;
        }
    };
    if exit == Exit::Blackholed {
        blackhole(&mut rx).await;
    }
    drop(ws);
    engine.socket_closed(me.id, bound.as_deref());
}

async fn apply(ws: &mut AppSocket, cmd: SocketCmd) -> Option<Exit> {
    match cmd {
        SocketCmd::Send(msg) => ws.send(msg).await.err().map(|_| Exit::Closed),
        SocketCmd::Close(code, reason) => {
            close_and_linger(ws, code, reason).await;
            Some(Exit::Closed)
        }
        SocketCmd::Drop => Some(Exit::Closed),
        SocketCmd::Blackhole => Some(Exit::Blackholed),
    }
}

/// Sends a close frame, then reads (and discards) until the app's reply or `CLOSE_LINGER`.
async fn close_and_linger(ws: &mut AppSocket, code: u16, reason: String) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_ok() {
        let drain = async { while let Some(Ok(_)) = ws.next().await {} };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    }
}

fn on_frame(
    engine: &Engine,
    me: &SocketRef,
    bound: &mut Option<String>,
    ping: &mut Interval,
    frame: Option<Result<Message, WsError>>,
) -> Option<Exit> {
    // End of stream: the close handshake finished or the peer vanished.
    let Some(frame) = frame else {
        return Some(Exit::Closed);
    };
    match frame {
        Ok(Message::Text(text)) => {
            let before = bound.clone();
            engine.on_app_text(me, bound, text.as_str());
            if *bound != before {
                // The cloud restarts the ping timer on init (§9).
                ping.reset();
            }
        }
        Ok(Message::Binary(data)) => engine.on_app_binary(me, bound.as_deref(), data.len()),
        Ok(Message::Pong(_)) => engine.on_pong(bound.as_deref()),
        // Pings are answered by tungstenite; a close ends the stream on the next read.
        Ok(Message::Ping(_) | Message::Close(_) | Message::Frame(_)) => {}
        Err(WsError::Capacity(e)) => {
            tracing::debug!(error = %e, socket = me.id, "app frame over max_frame_bytes");
            me.close(1009, "Message too big");
        }
        Err(e) => {
            tracing::debug!(error = %e, socket = me.id, "app socket read ended");
            return Some(Exit::Closed);
        }
    }
    None
}

async fn send_ping(
    engine: &Engine,
    me: &SocketRef,
    bound: Option<&str>,
    ws: &mut AppSocket,
) -> Option<Exit> {
    if !engine.should_ping(me.id, bound) {
        return None;
    }
    ws.send(Message::Ping(Bytes::new()))
        .await
        .err()
        .map(|_| Exit::Closed)
}

/// Holds the connection without touching it until a drop or close command arrives (both
/// end it without a close frame, like a dead path would).
async fn blackhole(rx: &mut mpsc::UnboundedReceiver<SocketCmd>) {
    while let Some(cmd) = rx.recv().await {
        if matches!(cmd, SocketCmd::Drop | SocketCmd::Close(..)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_requires_a_real_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        let accept = accept_key(&Method::GET, &headers);
        assert_eq!(
            accept.as_ref().and_then(|v| v.to_str().ok()),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert!(accept_key(&Method::POST, &headers).is_none());
        headers.remove(header::SEC_WEBSOCKET_KEY);
        assert!(accept_key(&Method::GET, &headers).is_none());
    }
}
