//! No secret in any log at any level: the real binary at `RUST_LOG=trace` and
//! `TETHER_LOG_LEVEL=trace` runs a whole session — registration (its body carries the key),
//! webhook, the app's init with its API key, the cloud's ack, frames both ways, the SDK's
//! HTTP call through the local listener with `Authorization: Bearer <pkg>:<key>`, a public
//! request with `X-App-API-Key`, SIGTERM — and the key appears nowhere in stdout or stderr,
//! in plain text or in the encodings a library would print it in (hex of the frame payload,
//! base64, a byte list). The run must also have produced trace lines, so the filter really
//! was at trace and the test can fail.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const SESSION: &str = "alice@example.com-com.example.notes";
const PACKAGE_OF_INIT: &str = "com.example.notes";

/// A cloud socket accepted by [`Cloud`].
type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// One plain HTTP request the cloud received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    body: Bytes,
}

/// A cloud serving its WebSocket and its HTTP API on one origin, as the real one does: the
/// SDK's HTTP calls through the local listener go to the session's cloud origin.
struct Cloud {
    addr: std::net::SocketAddr,
    sockets: mpsc::UnboundedReceiver<Ws>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Cloud {
    async fn start() -> Cloud {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind cloud");
        let addr = listener.local_addr().expect("addr");
        let (tx, sockets) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (tx, record) = (tx.clone(), record.clone());
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (tx, record) = (tx.clone(), record.clone());
                    async move { Ok::<_, std::convert::Infallible>(serve(req, tx, record).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Cloud {
            addr,
            sockets,
            seen,
        }
    }

    async fn accept(&mut self) -> Ws {
        within("a cloud socket", self.sockets.recv())
            .await
            .expect("cloud socket")
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

/// Upgrades WebSocket requests and hands the socket over; answers anything else with a
/// registration-style success, recording it.
async fn serve(
    mut req: Request<Incoming>,
    sockets: mpsc::UnboundedSender<Ws>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Response<Full<Bytes>> {
    if let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) {
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = upgrade.await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                let _ = sockets.send(ws);
            }
        });
        return Response::builder()
            .status(101)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_ACCEPT, accept)
            .body(Full::new(Bytes::new()))
            .expect("101");
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().expect("seen").push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        authorization: parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body,
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"success":true,"registrationId":"reg-1","activeSessions":0}"#,
        )))
        .expect("200")
}

/// Standard base64 with padding (enough for needles; no crate needed).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The key as a log line could carry it: plainly (also inside JSON, whose escaping leaves
/// hex alone), cut short, as frame-payload hex (tungstenite's frame `Display`), as base64
/// (alone, and in `<pkg>:<key>`), and as a `Debug` byte list.
fn needles() -> Vec<(String, String)> {
    let hex: String = API_KEY.bytes().map(|b| format!("{b:02x}")).collect();
    let list: Vec<String> = API_KEY.bytes().take(12).map(|b| b.to_string()).collect();
    let bearer = format!("{PACKAGE_OF_INIT}:{API_KEY}");
    vec![
        ("the key".into(), API_KEY.into()),
        ("its first 16 characters".into(), API_KEY[..16].into()),
        (
            "its last 16 characters".into(),
            API_KEY[API_KEY.len() - 16..].into(),
        ),
        ("its bytes in hex".into(), hex[..32].into()),
        (
            "its bytes in upper-case hex".into(),
            hex[..32].to_uppercase(),
        ),
        ("its base64".into(), base64(API_KEY.as_bytes())[..24].into()),
        (
            "<pkg>:<key> in base64".into(),
            base64(bearer.as_bytes())[24..48].into(),
        ),
        ("its bytes as a list".into(), list.join(", ")),
    ]
}

#[test]
fn the_base64_helper_is_standard() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"pkg:key"), "cGtnOmtleQ==");
}

#[tokio::test]
async fn the_api_key_never_reaches_the_output_even_at_trace() {
    let mut cloud = Cloud::start().await;
    let mut app = FakeApp::start().await;
    let yaml = format!(
        "registration:\n  enabled: true\n  url: \"http://{}/\"\n  server_url: \"http://127.0.0.1:1\"\n\
         app:\n  package_name: \"{PACKAGE_OF_INIT}\"\n",
        cloud.addr
    );
    let mut tether = Tether::spawn_yaml(
        &yaml,
        &[
            ("TETHER_APP_URL", app.url()),
            ("TETHER_API_KEY", API_KEY.into()),
            ("RUST_LOG", "trace".into()),
            ("TETHER_LOG_LEVEL", "trace".into()),
            ("TETHER_LOG_FORMAT", "json".into()),
        ],
    )
    .await;

    // Registration: its body carries the key.
    eventually("the registration at the cloud", || async {
        cloud.seen().iter().any(|s| s.path == "/api/tpa/register")
    })
    .await;
    let register = cloud
        .seen()
        .into_iter()
        .find(|s| s.path == "/api/tpa/register")
        .expect("registration");
    assert!(String::from_utf8_lossy(&register.body).contains(API_KEY));

    // Webhook, then the app's init with its key, the cloud's ack, frames both ways.
    let ws = format!("ws://{}/app-ws", cloud.addr);
    let webhook = serde_json::json!({
        "type": "session_request", "sessionId": SESSION, "userId": "alice@example.com",
        "timestamp": "2026-01-10T09:15:00.000Z",
        "websocketUrl": ws, "mentraOSWebsocketUrl": ws, "augmentOSWebsocketUrl": ws,
    });
    let resp = http::post_json(&format!("http://{}/webhook", tether.public), &webhook).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let forwarded = app.webhook().await;
    let local_url = forwarded["mentraOSWebsocketUrl"]
        .as_str()
        .expect("rewritten url")
        .to_string();
    let (mut app_ws, _) = within(
        "the app's socket",
        tokio_tungstenite::connect_async(local_url.as_str()),
    )
    .await
    .expect("app connect");
    app_ws
        .send(Message::text(init_frame(SESSION)))
        .await
        .expect("init");
    let mut cloud_ws = cloud.accept().await;
    assert_eq!(next_text(&mut cloud_ws).await, init_frame(SESSION));
    let ack = serde_json::json!({"type":"tpa_connection_ack","sessionId":SESSION,"settings":[]})
        .to_string();
    cloud_ws
        .send(Message::text(ack.clone()))
        .await
        .expect("ack");
    assert_eq!(next_text(&mut app_ws).await, ack);
    for i in 0..3 {
        let down =
            format!(r#"{{"type":"data_stream","streamType":"transcription:en-US","seq":{i}}}"#);
        cloud_ws
            .send(Message::text(down.clone()))
            .await
            .expect("down");
        assert_eq!(next_text(&mut app_ws).await, down);
        let up = format!(r#"{{"type":"display_event","view":"main","seq":{i}}}"#);
        app_ws.send(Message::text(up.clone())).await.expect("up");
        assert_eq!(next_text(&mut cloud_ws).await, up);
    }

    // The SDK's HTTP call through the local listener, with the key in its bearer token.
    let base = local_url
        .replacen("ws://", "http://", 1)
        .trim_end_matches("/app-ws")
        .to_string();
    let bearer = format!("Bearer {PACKAGE_OF_INIT}:{API_KEY}");
    let storage = http::request(
        "PUT",
        &format!("{base}/api/sdk/simple-storage/alice@example.com/color"),
        &[
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(br#"{"value":"teal"}"#),
    )
    .await;
    assert_eq!(storage.status, 200, "{}", storage.text());
    let call = cloud
        .seen()
        .into_iter()
        .find(|s| s.path.ends_with("/simple-storage/alice@example.com/color"))
        .expect("the storage call at the cloud");
    assert_eq!(call.method, "PUT");
    assert_eq!(call.authorization.as_deref(), Some(bearer.as_str()));

    // A public-port call to the app, as the cloud's /tool calls carry the key.
    let tool = http::request(
        "POST",
        &format!("http://{}/tool", tether.public),
        &[
            ("x-app-api-key", API_KEY),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(br#"{"toolId":"t1"}"#),
    )
    .await;
    assert_eq!(tool.status, 200, "{}", tool.text());

    tether.signal("TERM");
    let status = tether.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0));
    eventually("the session's end to be logged", || async {
        tether
            .logs()
            .iter()
            .any(|l| l.contains(r#""message":"session ended""#))
    })
    .await;

    let lines = tether.logs();
    let trace: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["level"] == "TRACE")
        .collect();
    assert!(
        !trace.is_empty(),
        "no trace line at all: the filter was not at trace, so this run proves nothing \
         ({} lines)",
        lines.len()
    );
    for (what, needle) in needles() {
        let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(&needle)).collect();
        assert!(
            leaks.is_empty(),
            "{what} ({needle}) is in the output:\n{:#?}",
            &leaks[..leaks.len().min(5)]
        );
    }
    // The WebSocket library printed frames at trace; none of it may pass the cap.
    let websocket: Vec<&String> = lines
        .iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| {
                let target = v["target"].as_str().unwrap_or_default();
                (target.starts_with("tungstenite") || target.starts_with("tokio_tungstenite"))
                    && matches!(v["level"].as_str(), Some("DEBUG" | "TRACE"))
            })
        })
        .collect();
    assert!(
        websocket.is_empty(),
        "WebSocket library lines below info:\n{websocket:#?}"
    );
}
