//! Loopback tests of the SDK-like app simulator (`tether::sim::app`) against a small
//! scripted cloud built on tokio-tungstenite, with real sockets and millisecond timings.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{accept_async, WebSocketStream};
use tokio_util::sync::CancellationToken;

use tether::sim::app::{AppSim, AppSimConfig, AppSimStats, SessionState, SessionStats};

const SESSION: &str = "alice@example.com-com.example.notes";
const USER: &str = "alice@example.com";
const PKG: &str = "com.example.notes";
const API_KEY: &str = "3f9a0000000000000000000000000000000000000000000000000000000c21d";
const SUB: &str = "transcription:en-US";
/// Upper bound for every "eventually" in this file.
const DEADLINE: Duration = Duration::from_secs(5);
/// Long enough for several reconnect delays (50 ms base) to have fired if they were due.
const QUIET: Duration = Duration::from_millis(350);

/// What the fake cloud saw on one socket, in order.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Text(Value),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Ended,
}

/// What the test asks one fake-cloud socket to do.
enum Out {
    Send(Message),
    /// Drop the TCP connection without a close frame.
    Drop,
}

struct Conn {
    seen: Vec<Seen>,
    tx: mpsc::UnboundedSender<Out>,
}

/// A cloud that records every socket and (optionally) acks every init.
struct FakeCloud {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    accepting: CancellationToken,
}

impl FakeCloud {
    async fn start(auto_ack: bool) -> FakeCloud {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind cloud");
        let addr = listener.local_addr().expect("cloud addr");
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepting = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            Arc::clone(&conns),
            accepting.clone(),
            auto_ack,
        ));
        FakeCloud {
            addr,
            conns,
            accepting,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/app-ws", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.conns.lock().expect("cloud lock")
    }

    fn conn_count(&self) -> usize {
        self.lock().len()
    }

    fn seen(&self, i: usize) -> Vec<Seen> {
        self.lock()
            .get(i)
            .map(|c| c.seen.clone())
            .unwrap_or_default()
    }

    fn texts(&self, i: usize) -> Vec<Value> {
        self.seen(i)
            .into_iter()
            .filter_map(|s| match s {
                Seen::Text(v) => Some(v),
                _ => None,
            })
            .collect()
    }

    fn of_type(&self, i: usize, ty: &str) -> Vec<Value> {
        self.texts(i)
            .into_iter()
            .filter(|v| v["type"] == ty)
            .collect()
    }

    fn push(&self, i: usize, out: Out) {
        let sent = self.lock().get(i).map(|c| c.tx.send(out).is_ok());
        assert_eq!(sent, Some(true), "cloud socket {i} is gone");
    }

    fn send(&self, i: usize, frame: Value) {
        self.push(i, Out::Send(Message::text(frame.to_string())));
    }

    fn close(&self, i: usize, code: Option<u16>, reason: &str) {
        let frame = code.map(|c| CloseFrame {
            code: CloseCode::from(c),
            reason: reason.into(),
        });
        self.push(i, Out::Send(Message::Close(frame)));
    }

    /// Waits until socket `i` has seen at least `n` text frames; returns them.
    async fn wait_texts(&self, i: usize, n: usize) -> Vec<Value> {
        eventually(&format!("{n} text frames on cloud socket {i}"), || {
            let t = self.texts(i);
            (t.len() >= n).then_some(t)
        })
        .await
    }
}

async fn accept_loop(
    listener: TcpListener,
    conns: Arc<Mutex<Vec<Conn>>>,
    accepting: CancellationToken,
    auto_ack: bool,
) {
    loop {
        let stream = tokio::select! {
            () = accepting.cancelled() => return, // dropping the listener refuses new connects
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let Ok(ws) = accept_async(stream).await else {
            continue;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let idx = {
            let mut c = conns.lock().expect("cloud lock");
            c.push(Conn {
                seen: Vec::new(),
                tx,
            });
            c.len() - 1
        };
        tokio::spawn(serve_conn(ws, rx, Arc::clone(&conns), idx, auto_ack));
    }
}

async fn serve_conn(
    mut ws: WebSocketStream<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    conns: Arc<Mutex<Vec<Conn>>>,
    idx: usize,
    auto_ack: bool,
) {
    let record = |s: Seen| conns.lock().expect("cloud lock")[idx].seen.push(s);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Send(m)) => {
                    if ws.send(m).await.is_err() {
                        record(Seen::Ended);
                        return;
                    }
                }
                Some(Out::Drop) | None => return,
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or_else(|_| Value::String(t.to_string()));
                    let is_init = v["type"] == "tpa_connection_init";
                    record(Seen::Text(v));
                    if is_init && auto_ack {
                        let _ = ws.send(Message::text(ack().to_string())).await;
                    }
                }
                Some(Ok(Message::Pong(p))) => record(Seen::Pong(p.to_vec())),
                Some(Ok(Message::Close(f))) => record(Seen::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    record(Seen::Ended);
                    return;
                }
            },
        }
    }
}

fn ack() -> Value {
    json!({
        "type": "tpa_connection_ack",
        "sessionId": SESSION,
        "settings": [{"key": "lang", "value": "en-US"}],
        "mentraosSettings": {"brightness": 50},
        "capabilities": null,
        "timestamp": "2025-06-27T17:02:11.780Z",
    })
}

fn transcription(stream_type: &str, seq: u64, is_final: bool) -> Value {
    json!({
        "type": "data_stream",
        "sessionId": SESSION,
        "streamType": stream_type,
        "data": {"type": "transcription", "text": format!("t{seq}"), "isFinal": is_final, "seq": seq},
        "timestamp": "2025-06-27T17:05:00.010Z",
    })
}

fn config() -> AppSimConfig {
    AppSimConfig {
        package_name: PKG.into(),
        api_key: API_KEY.into(),
        subscriptions: vec![SUB.into()],
        reconnect_delay_ms: 50,
        ack_timeout_ms: 1_000,
        ..AppSimConfig::default()
    }
}

/// Polls `probe` every 10 ms until it yields, or panics after [`DEADLINE`].
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_session(
    app: &AppSim,
    what: &str,
    cond: impl Fn(&SessionStats) -> bool,
) -> SessionStats {
    eventually(what, || {
        app.stats().session(SESSION).filter(|s| cond(s)).cloned()
    })
    .await
}

/// One HTTP/1.1 request over a fresh connection; the body is parsed as JSON when it is.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let stream = TcpStream::connect(addr).await.expect("connect app");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body))).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn webhook(app: &AppSim, body: Value) -> (StatusCode, Value) {
    let headers = [("content-type", "application/json")];
    http(
        app.addr(),
        "POST",
        "/webhook",
        &headers,
        body.to_string().into_bytes(),
    )
    .await
}

fn session_request(url: &str) -> Value {
    json!({
        "type": "session_request",
        "sessionId": SESSION,
        "userId": USER,
        "timestamp": "2025-06-27T17:02:11.402Z",
        "mentraOSWebsocketUrl": url,
    })
}

/// Starts an app with `cfg`, runs one session_request against `cloud`, expects 200.
async fn connected(cloud: &FakeCloud, cfg: AppSimConfig) -> AppSim {
    let app = AppSim::start(cfg).await.expect("start app");
    let (status, body) = webhook(&app, session_request(&cloud.url())).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "success"}))
    );
    app
}

async fn health(app: &AppSim) -> Value {
    http(app.addr(), "GET", "/health", &[], Vec::new()).await.1
}

#[tokio::test]
async fn webhook_answers_after_init_ack_and_subscriptions() {
    let cloud = FakeCloud::start(true).await;
    let cfg = AppSimConfig {
        subscriptions: vec![SUB.into(), "button_press".into()],
        on_session_delay_ms: 150,
        ..config()
    };
    let app = AppSim::start(cfg).await.expect("start app");
    let mut req = session_request(&cloud.url());
    // mentraOSWebsocketUrl must win over the legacy field (S-2.1.29 precedence).
    req["augmentOSWebsocketUrl"] = json!("ws://127.0.0.1:9/dead");
    let started = Instant::now();
    let (status, body) = webhook(&app, req).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "success"}))
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "answered before onSession finished"
    );

    let t = cloud.wait_texts(0, 4).await;
    let init = t[0].as_object().expect("init object");
    let mut keys: Vec<&str> = init.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["apiKey", "packageName", "sessionId", "timestamp", "type"]
    );
    assert_eq!(t[0]["type"], "tpa_connection_init");
    assert_eq!(t[0]["sessionId"], SESSION);
    assert_eq!(t[0]["packageName"], PKG);
    assert_eq!(t[0]["apiKey"], API_KEY);
    assert!(t[0]["timestamp"].as_str().is_some_and(|s| s.ends_with('Z')));
    let lists: Vec<&Value> = t[1..].iter().map(|v| &v["subscriptions"]).collect();
    assert_eq!(
        lists,
        [&json!([]), &json!([SUB]), &json!([SUB, "button_press"])]
    );
    assert!(t[1..].iter().all(|v| v["type"] == "subscription_update"
        && v["packageName"] == PKG
        && v["sessionId"] == SESSION));

    let s = app
        .stats()
        .session(SESSION)
        .cloned()
        .expect("session stats");
    assert_eq!(s.state, SessionState::Connected);
    assert_eq!(
        (s.inits_sent, s.acks_received, s.subscription_updates_sent),
        (1, 1, 3)
    );
    assert_eq!(s.ws_url, cloud.url());
    assert_eq!(s.user_id, USER);
    assert_eq!(s.settings, Some(json!([{"key": "lang", "value": "en-US"}])));
    assert_eq!(
        s.ack.as_ref().map(|a| &a["mentraosSettings"]),
        Some(&json!({"brightness": 50}))
    );
    assert_eq!(cloud.texts(0).len(), 4);
    assert_eq!(cloud.conn_count(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn ack_timeout_and_bad_webhooks_are_rejected() {
    let cloud = FakeCloud::start(false).await;
    let app = AppSim::start(AppSimConfig {
        ack_timeout_ms: 200,
        ..config()
    })
    .await
    .expect("start app");
    // Only the legacy field: the fallback must be used (the init proves it).
    let mut req = session_request(&cloud.url());
    req["augmentOSWebsocketUrl"] = req["mentraOSWebsocketUrl"].take();
    let started = Instant::now();
    let (status, body) = webhook(&app, req).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        body,
        json!({"status": "error", "message": "Failed to connect"})
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(cloud.texts(0)[0]["type"], "tpa_connection_init");
    assert_eq!(health(&app).await["activeSessions"], 0);
    assert_eq!(
        app.stats().session(SESSION).map(|s| s.state),
        Some(SessionState::Stopped)
    );

    let (status, body) = webhook(&app, json!({"type": "server_registration"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"status": "error", "message": "Unknown webhook request type"})
    );
    let (status, _) = http(app.addr(), "POST", "/webhook", &[], b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(app.stats().http.rejected_webhooks, 2);
    app.shutdown().await;
}

#[tokio::test]
async fn transcriptions_dispatch_only_on_exact_key() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(&cloud, config()).await;
    cloud.wait_texts(0, 3).await;
    cloud.send(0, transcription("transcription", 1, true));
    cloud.send(0, transcription(SUB, 2, true));
    cloud.send(0, transcription("transcription:fr-FR", 3, true));
    cloud.send(0, transcription(SUB, 4, false));
    cloud.send(0, transcription(SUB, 5, true));
    cloud.push(
        0,
        Out::Send(Message::binary(vec![0u8, 0, 0, 9, 0xAA, 0xBB])),
    );
    cloud.push(0, Out::Send(Message::text("not json")));
    cloud.send(0, json!({"type": "brand_new_type"}));
    cloud.send(0, json!({"type": "settings_update", "packageName": PKG, "settings": [{"key": "lang", "value": "fr-FR"}]}));
    cloud.send(
        0,
        json!({"type": "capabilities_update", "capabilities": {}}),
    );

    // Frames are processed in order, so the last one being counted means all were.
    let s = wait_session(&app, "capabilities_update processed", |s| {
        s.other_frames.contains_key("capabilities_update")
    })
    .await;
    assert_eq!(s.transcriptions, [2, 4, 5]);
    assert_eq!(s.dispatched.get(SUB), Some(&3));
    assert_eq!(s.undispatched.get("transcription"), Some(&1));
    assert_eq!(s.undispatched.get("transcription:fr-FR"), Some(&1));
    assert_eq!((s.audio_chunks, s.audio_seqs.clone()), (1, vec![9]));
    assert_eq!(s.unknown_or_malformed, 2);
    assert_eq!(s.settings, Some(json!([{"key": "lang", "value": "fr-FR"}])));
    assert_eq!(s.displays_sent, 2);

    let shown = eventually("two caption displays", || {
        let d = cloud.of_type(0, "display_event");
        (d.len() >= 2).then_some(d)
    })
    .await;
    let texts: Vec<&Value> = shown.iter().map(|d| &d["layout"]["text"]).collect();
    assert_eq!(texts, [&json!("seen 2"), &json!("seen 5")]);
    assert!(shown
        .iter()
        .all(|d| d["layout"]["layoutType"] == "text_wall"
            && d["sessionId"] == ""
            && d["packageName"] == PKG));
    app.shutdown().await;
}

#[tokio::test]
async fn unexpected_closes_reconnect_with_fresh_init_and_full_list() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(&cloud, config()).await;
    cloud.wait_texts(0, 3).await;

    // Abrupt TCP loss (1006), then an error close (1011), then a close without a code (1005).
    cloud.push(0, Out::Drop);
    cloud.wait_texts(1, 2).await;
    cloud.close(1, Some(1011), "Internal server error");
    cloud.wait_texts(2, 2).await;
    cloud.close(2, None, "");
    let t = cloud.wait_texts(3, 2).await;

    sleep(QUIET).await;
    for i in 1..=3 {
        let t = cloud.texts(i);
        assert_eq!(
            t.len(),
            2,
            "socket {i}: exactly init + one subscription_update, got {t:?}"
        );
        assert_eq!(t[0]["type"], "tpa_connection_init");
        assert_eq!(t[0]["sessionId"], SESSION);
        assert_eq!(t[1]["type"], "subscription_update");
        assert_eq!(t[1]["subscriptions"], json!([SUB]));
    }
    assert_eq!(t[0]["apiKey"], API_KEY);
    let s = app
        .stats()
        .session(SESSION)
        .cloned()
        .expect("session stats");
    let codes: Vec<u16> = s.closes.iter().map(|c| c.code).collect();
    assert_eq!(codes, [1006, 1011, 1005]);
    assert_eq!(s.closes[1].reason, "Internal server error");
    assert_eq!(
        (s.reconnect_attempts, s.inits_sent, s.acks_received),
        (3, 4, 4)
    );
    assert_eq!(s.state, SessionState::Connected);
    assert_eq!(cloud.conn_count(), 4);

    // Handlers survive reconnects.
    cloud.send(3, transcription(SUB, 11, false));
    let s = wait_session(&app, "transcription after reconnect", |s| {
        !s.transcriptions.is_empty()
    })
    .await;
    assert_eq!(s.transcriptions, [11]);
    app.shutdown().await;
}

#[tokio::test]
async fn final_closes_do_not_reconnect() {
    // (frame before the close, code, reason, final state, sessions the server still tracks)
    let cases = [
        (
            Some(json!({"type": "app_stopped"})),
            1000,
            "App stopped",
            SessionState::Stopped,
            0,
        ),
        (None, 1001, "", SessionState::Stopped, 0),
        (
            Some(
                json!({"type": "tpa_connection_error", "code": "MALFORMED_MESSAGE", "message": "Invalid subscription type"}),
            ),
            1008,
            "Invalid subscription type",
            SessionState::Stopped,
            1, // the SDK neither reconnects nor forgets on 1008 (§11.4)
        ),
        (
            None,
            4000,
            "User session ended",
            SessionState::Terminated,
            0,
        ),
    ];
    for (before, code, reason, state, active) in cases {
        let cloud = FakeCloud::start(true).await;
        let app = connected(&cloud, config()).await;
        cloud.wait_texts(0, 3).await;
        if let Some(frame) = before.clone() {
            cloud.send(0, frame);
        }
        cloud.close(0, Some(code), reason);
        let s = wait_session(&app, "session ended", |s| s.state == state).await;
        sleep(QUIET).await;
        assert_eq!(cloud.conn_count(), 1, "close {code} {reason:?} reconnected");
        assert_eq!(
            s.closes.first().map(|c| (c.code, c.reason.as_str())),
            Some((code, reason))
        );
        assert_eq!(health(&app).await["activeSessions"], active, "close {code}");
        if code == 1008 {
            assert_eq!(s.connection_errors, ["MALFORMED_MESSAGE"]);
            assert!(
                app.send_display(SESSION, 1).await.is_err(),
                "lingering session has no socket"
            );
        }
        if code == 1000 {
            assert_eq!(s.other_frames.get("app_stopped"), Some(&1));
        }
        app.shutdown().await;
    }
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(
        &cloud,
        AppSimConfig {
            max_reconnect_attempts: 2,
            reconnect_delay_ms: 30,
            ..config()
        },
    )
    .await;
    cloud.wait_texts(0, 3).await;
    cloud.accepting.cancel();
    cloud.push(0, Out::Drop);
    let s = wait_session(&app, "permanent loss", |s| s.state == SessionState::Stopped).await;
    assert_eq!(s.stop_code, Some(4000));
    assert_eq!(s.reconnect_attempts, 2);
    assert_eq!(s.inits_sent, 1);
    assert_eq!(health(&app).await["activeSessions"], 0);
    app.shutdown().await;
}

#[tokio::test]
async fn duplicate_session_request_releases_the_old_socket() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(&cloud, config()).await;
    cloud.wait_texts(0, 3).await;
    let (status, _) = webhook(&app, session_request(&cloud.url())).await;
    assert_eq!(status, StatusCode::OK);

    let old = eventually("old socket closed", || {
        let seen = cloud.seen(0);
        seen.contains(&Seen::Ended).then_some(seen)
    })
    .await;
    let tail: Vec<&Seen> = old.iter().skip(3).collect();
    let Seen::Text(release) = tail[0] else {
        panic!("expected ownership_release, got {tail:?}")
    };
    assert_eq!(release["type"], "ownership_release");
    assert_eq!(release["reason"], "switching_clouds");
    assert_eq!(release["sessionId"], SESSION);
    assert_eq!(release["packageName"], PKG);
    assert_eq!(
        tail[1..],
        [&Seen::Close(None), &Seen::Ended],
        "closed without a code (1005)"
    );
    assert_eq!(cloud.texts(1)[0]["type"], "tpa_connection_init");

    let stats = app.stats();
    let gens: Vec<(u64, SessionState, u64)> = stats
        .sessions
        .iter()
        .map(|s| (s.generation, s.state, s.ownership_releases_sent))
        .collect();
    assert_eq!(
        gens,
        [
            (1, SessionState::Stopped, 1),
            (2, SessionState::Connected, 0)
        ]
    );
    assert_eq!(stats.active_sessions, 1);
    app.shutdown().await;
}

#[tokio::test]
async fn stop_request_closes_without_code_and_forgets() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(&cloud, config()).await;
    cloud.wait_texts(0, 3).await;
    let stop = json!({"type": "stop_request", "sessionId": SESSION, "userId": USER, "reason": "user_disabled", "timestamp": "t"});
    assert_eq!(
        webhook(&app, stop).await,
        (StatusCode::OK, json!({"status": "success"}))
    );
    eventually("close seen by cloud", || {
        cloud.seen(0).contains(&Seen::Close(None)).then_some(())
    })
    .await;
    sleep(QUIET).await;
    assert_eq!(cloud.conn_count(), 1);
    assert_eq!(cloud.of_type(0, "ownership_release").len(), 0);
    assert_eq!(health(&app).await["activeSessions"], 0);
    assert_eq!(
        app.stats().session(SESSION).map(|s| s.state),
        Some(SessionState::Stopped)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn http_routes_behave_like_the_app_server() {
    let app = AppSim::start(config()).await.expect("start app");
    assert_eq!(
        health(&app).await,
        json!({"status": "healthy", "app": PKG, "activeSessions": 0})
    );

    let headers = [
        ("x-custom", "v1"),
        ("cookie", "aos_session=abc"),
        ("authorization", "Bearer tok"),
    ];
    let (status, echo) = http(
        app.addr(),
        "PUT",
        "/echo/a/b?aos_temp_token=t1&x=2",
        &headers,
        b"hello".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["path"], "/echo/a/b");
    assert_eq!(echo["query"], "aos_temp_token=t1&x=2");
    assert_eq!(echo["headers"]["x-custom"], "v1");
    assert_eq!(echo["headers"]["cookie"], "aos_session=abc");
    assert_eq!(echo["headers"]["authorization"], "Bearer tok");
    assert_eq!(echo["body_len"], 5);

    let mut photo = b"--XyZ\r\nContent-Disposition: form-data; name=\"requestId\"\r\n\r\nreq-7\r\n--XyZ\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".to_vec();
    photo.extend(std::iter::repeat_n(0xABu8, 10 * 1024 * 1024));
    photo.extend_from_slice(b"\r\n--XyZ--\r\n");
    let len = photo.len();
    let (status, body) = http(
        app.addr(),
        "POST",
        "/photo-upload",
        &[("content-type", "multipart/form-data; boundary=XyZ")],
        photo,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"success": true, "requestId": "req-7", "bytes": len})
    );

    let tool =
        json!({"toolId": "t", "toolParameters": {}, "timestamp": "t", "userId": USER}).to_string();
    let (status, body) = http(
        app.addr(),
        "POST",
        "/tool",
        &[("x-app-api-key", "abc")],
        tool.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"status": "success", "reply": null}))
    );
    let settings = json!({"userIdForSettings": USER, "settings": []}).to_string();
    let (status, body) = http(app.addr(), "POST", "/settings", &[], settings.into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sessionsUpdated"], 0);
    let (status, _) = http(app.addr(), "POST", "/settings", &[], b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = http(app.addr(), "GET", "/nope", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, stats) = http(app.addr(), "GET", "/sim/stats", &[], Vec::new()).await;
    let stats: AppSimStats = serde_json::from_value(stats).expect("stats json");
    assert_eq!(
        (
            stats.http.photo_uploads,
            stats.http.tool_calls,
            stats.http.settings_posts
        ),
        (1, 1, 2)
    );
    app.shutdown().await;
}

#[tokio::test]
async fn sim_routes_send_numbered_displays_and_raw_frames() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(
        &cloud,
        AppSimConfig {
            display_every_transcription: false,
            ..config()
        },
    )
    .await;
    cloud.wait_texts(0, 3).await;
    let path = "/sim/sessions/alice%40example.com-com.example.notes/display";
    let (status, _) = http(app.addr(), "POST", path, &[], br#"{"count":3}"#.to_vec()).await;
    assert_eq!(status, StatusCode::OK);
    app.send_display(SESSION, 2).await.expect("send_display");
    app.send_raw(SESSION, r#"{"type":"custom_thing","n":1}"#.into())
        .await
        .expect("send_raw");
    assert!(app.send_display("nobody", 1).await.is_err());

    let t = cloud.wait_texts(0, 9).await;
    let seqs: Vec<&Value> = t[3..8].iter().map(|d| &d["seq"]).collect();
    assert_eq!(
        seqs,
        [&json!(1), &json!(2), &json!(3), &json!(4), &json!(5)]
    );
    assert_eq!(
        t[7]["layout"],
        json!({"layoutType": "text_wall", "text": "display 5"})
    );
    assert_eq!(t[8], json!({"type": "custom_thing", "n": 1}));

    let (_, stats) = http(app.addr(), "GET", "/sim/stats", &[], Vec::new()).await;
    let stats: AppSimStats = serde_json::from_value(stats).expect("stats json");
    assert_eq!(stats.session(SESSION).map(|s| s.displays_sent), Some(5));
    app.shutdown().await;
}

#[tokio::test]
async fn answers_pings_and_echoes_websockets() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(&cloud, config()).await;
    cloud.wait_texts(0, 3).await;
    cloud.push(0, Out::Send(Message::Ping(Bytes::from_static(b"hb"))));
    eventually("pong", || {
        cloud
            .seen(0)
            .contains(&Seen::Pong(b"hb".to_vec()))
            .then_some(())
    })
    .await;

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws-echo", app.addr()))
        .await
        .expect("ws-echo");
    ws.send(Message::text("hi")).await.expect("send text");
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send binary");
    let echoed: Vec<Message> = ws
        .by_ref()
        .take(2)
        .map(|m| m.expect("echo"))
        .collect()
        .await;
    assert_eq!(
        echoed,
        [Message::text("hi"), Message::binary(vec![1u8, 2, 3])]
    );
    ws.close(None).await.expect("close");
    app.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_sessions_like_sigterm() {
    let cloud = FakeCloud::start(true).await;
    let app = connected(&cloud, config()).await;
    cloud.wait_texts(0, 3).await;
    app.shutdown().await;
    let seen = eventually("socket ended", || {
        let s = cloud.seen(0);
        s.contains(&Seen::Ended).then_some(s)
    })
    .await;
    // S-2.1.29 sends no ownership_release on SIGTERM; the cloud sees a close without a code.
    assert_eq!(seen[3..], [Seen::Close(None), Seen::Ended]);
}
