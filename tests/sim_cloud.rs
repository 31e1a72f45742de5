//! Loopback tests of the cloud emulator (`tether::sim::cloud`): handshake, subscriptions,
//! generated data, lifecycle (grace, resurrection, stop, user-session end), webhooks and
//! the control/cloud HTTP APIs. Real sockets on 127.0.0.1:0, millisecond timings, and
//! bounded polling instead of sleeps wherever a condition can be observed. Multi-thread
//! runtimes, so the emulator's locks and socket tasks really run concurrently.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tether::sim::cloud::{
    AckStyle, CloudSim, CloudSimConfig, RawFrame, ReceivedFrame, StartOutcome, DEFAULT_API_KEY,
    DEFAULT_PACKAGE,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for any single wait in these tests.
const WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);
const USER: &str = "alice@example.com";

fn session_id(user: &str) -> String {
    format!("{user}-{DEFAULT_PACKAGE}")
}

/// Short timings so lifecycle tests finish in well under a second each.
fn test_config() -> CloudSimConfig {
    CloudSimConfig {
        grace_ms: 300,
        app_start_timeout_ms: 1_500,
        webhook_timeout_ms: 1_000,
        webhook_retry_pause_ms: 100,
        ping_interval_ms: 60_000,
        ..CloudSimConfig::default()
    }
}

async fn start_sim(cfg: CloudSimConfig) -> CloudSim {
    CloudSim::start(cfg).await.expect("cloud sim starts")
}

/// Polls `f` until it yields a value; fails after `WAIT`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_state(sim: &CloudSim, sid: &str, state: &str) {
    eventually(&format!("state {state}"), || {
        sim.stats(sid).filter(|s| s.state == state).map(|_| ())
    })
    .await;
}

// === test app: a minimal SDK-like websocket client ===

struct App {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl App {
    async fn connect(url: &str) -> App {
        let (ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket handshake");
        App { ws }
    }

    async fn send(&mut self, value: Value) {
        self.ws
            .send(Message::text(value.to_string()))
            .await
            .expect("send");
    }

    async fn init_with(&mut self, sid: &str, package: &str, key: &str) {
        self.send(json!({"type": "tpa_connection_init", "sessionId": sid,
                         "packageName": package, "apiKey": key,
                         "timestamp": "2025-06-27T17:02:11.655Z"}))
            .await;
    }

    async fn init(&mut self, sid: &str) {
        self.init_with(sid, DEFAULT_PACKAGE, DEFAULT_API_KEY).await;
    }

    async fn subscribe(&mut self, sid: &str, subs: Value) {
        self.send(
            json!({"type": "subscription_update", "packageName": DEFAULT_PACKAGE,
                         "sessionId": sid, "subscriptions": subs}),
        )
        .await;
    }

    /// Next data message (text, binary or close), skipping pings and pongs.
    async fn next(&mut self) -> Message {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = timeout(left, self.ws.next())
                .await
                .expect("a message in time")
                .expect("socket still open")
                .expect("no socket error");
            if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
                return msg;
            }
        }
    }

    async fn next_json(&mut self) -> Value {
        match self.next().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).expect("JSON from the cloud"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Reads until the cloud's close frame; returns (code, reason).
    async fn expect_close(&mut self) -> (u16, String) {
        match self.next().await {
            Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// Reads until the stream ends; true if it ended without a close frame (1006).
    async fn ends_abruptly(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.ws.next())
                .await
                .expect("socket ends in time")
            {
                None | Some(Err(_)) => return true,
                Some(Ok(Message::Close(_))) => return false,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// `start_session` joined with an app that connects and inits at once; returns the app
/// after reading the ack (and the Mentraos snapshot that follows it).
async fn start_running(sim: &CloudSim, user: &str) -> (App, Value) {
    let sid = session_id(user);
    let (outcome, mut app) = tokio::join!(sim.start_session(user), async {
        let mut app = App::connect(&sim.ws_url()).await;
        app.init(&sid).await;
        app
    });
    assert_eq!(outcome.expect("start"), StartOutcome::Running);
    let ack = app.next_json().await;
    assert_eq!(ack["type"], "tpa_connection_ack");
    if ack.get("mentraosSettings").is_some() {
        let snapshot = app.next_json().await;
        assert_eq!(snapshot["type"], "device_state_update");
        assert_eq!(snapshot["fullSnapshot"], true);
    }
    (app, ack)
}

/// Sends a `subscription_update` and waits until the cloud has stored exactly that list.
async fn subscribe_and_wait(sim: &CloudSim, app: &mut App, sid: &str, subs: Value) {
    app.subscribe(sid, subs.clone()).await;
    let want = subs.as_array().cloned().unwrap_or_default();
    eventually("subscriptions stored", || {
        sim.stats(sid).filter(|s| s.subscriptions == want)
    })
    .await;
}

// === test webhook receiver: records bodies, answers scripted statuses ===

#[derive(Clone, Default)]
struct Receiver {
    bodies: Arc<Mutex<Vec<Value>>>,
    statuses: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    /// Serves `POST /webhook` on 127.0.0.1:0; answers `statuses` in order, then 200.
    async fn start(statuses: &[u16]) -> (Receiver, String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let rx = Receiver::default();
        rx.statuses.lock().unwrap().extend(statuses);
        let served = rx.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let rx = served.clone();
                let svc = hyper::service::service_fn(move |req| rx.clone().answer(req));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (rx, format!("http://{addr}/webhook"), task)
    }

    async fn answer(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let value = body.ok().and_then(|b| serde_json::from_slice(&b).ok());
        self.bodies
            .lock()
            .unwrap()
            .push(value.unwrap_or(Value::Null));
        let status = self.statuses.lock().unwrap().pop_front().unwrap_or(200);
        let mut resp = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"success\"}")));
        *resp.status_mut() = StatusCode::from_u16(status).expect("valid status");
        Ok(resp)
    }

    fn types(&self) -> Vec<String> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .map(|b| b["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    async fn wait_count(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} webhooks"), || {
            let bodies = self.bodies.lock().unwrap();
            (bodies.len() >= n).then(|| bodies.clone())
        })
        .await
    }
}

async fn webhook_sim(statuses: &[u16]) -> (CloudSim, Receiver, tokio::task::JoinHandle<()>) {
    let (rx, url, task) = Receiver::start(statuses).await;
    let sim = start_sim(CloudSimConfig {
        webhook_url: Some(url),
        ..test_config()
    })
    .await;
    (sim, rx, task)
}

// === plain HTTP client for the control and cloud APIs ===

async fn http(
    method: Method,
    url: &str,
    body: Option<Value>,
    auth: Option<&str>,
) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    if let Some(token) = auth {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let resp = timeout(
        WAIT,
        client.request(req.body(Full::new(body)).expect("request")),
    )
    .await
    .expect("answer in time")
    .expect("HTTP answer");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (status, bytes)
}

async fn http_json(method: Method, url: &str, body: Option<Value>) -> (StatusCode, Value) {
    let (status, bytes) = http(method, url, body, None).await;
    (status, serde_json::from_slice(&bytes).expect("JSON answer"))
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_ack_latest_style_carries_user_subscriptions_and_snapshot() {
    let sim = start_sim(test_config()).await;
    let (mut app, ack) = start_running(&sim, USER).await;
    assert_eq!(ack["sessionId"], session_id(USER));
    assert_eq!(ack["userId"], USER);
    assert_eq!(ack["subscriptions"], json!([]));
    assert_eq!(ack["mentraosSettings"]["brightness"], 50);
    assert_eq!(ack["settings"][0]["key"], "lang");
    assert_eq!(ack["capabilities"]["hasDisplay"], true);
    assert!(ack.get("augmentosSettings").is_none());
    let stats = sim.stats(&session_id(USER)).expect("stats");
    assert_eq!(
        (stats.state.as_str(), stats.inits, stats.acks_sent),
        ("running", 1, 1)
    );
    assert!(stats.socket_open);
    // A re-init on the same socket is accepted and re-acked (§10.5).
    app.init(&session_id(USER)).await;
    assert_eq!(app.next_json().await["type"], "tpa_connection_ack");
    assert_eq!(app.next_json().await["type"], "device_state_update");
    let stats = sim.stats(&session_id(USER)).expect("stats");
    assert_eq!(
        (stats.inits, stats.acks_sent, stats.superseded_close_hazards),
        (2, 2, 0)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_ack_june_style_and_hyphenated_email() {
    let sim = start_sim(CloudSimConfig {
        ack_style: AckStyle::Augmentos,
        ..test_config()
    })
    .await;
    let user = "jean-luc@star-fleet.example";
    let sid = session_id(user);
    let (mut app, ack) = start_running(&sim, user).await;
    assert_eq!(ack["sessionId"], sid);
    assert_eq!(ack["augmentosSettings"]["headUpAngle"], 20);
    assert!(ack.get("userId").is_none() && ack.get("mentraosSettings").is_none());
    // No device_state_update follows a June ack: the next frame is our transcription.
    subscribe_and_wait(&sim, &mut app, &sid, json!(["transcription:en-US"])).await;
    sim.push_transcriptions(&sid, 1).await.expect("push");
    assert_eq!(app.next_json().await["type"], "data_stream");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_api_key_gets_error_and_1008() {
    let sim = start_sim(CloudSimConfig {
        app_start_timeout_ms: 300,
        ..test_config()
    })
    .await;
    let sid = session_id(USER);
    let (outcome, (err, close)) = tokio::join!(sim.start_session(USER), async {
        let mut app = App::connect(&sim.ws_url()).await;
        app.init_with(&sid, DEFAULT_PACKAGE, &"0".repeat(64)).await;
        (app.next_json().await, app.expect_close().await)
    });
    assert_eq!(err["type"], "tpa_connection_error");
    assert_eq!(err["code"], "INVALID_API_KEY");
    assert_eq!(err["message"], "Invalid API key");
    assert_eq!(close, (1008, "Invalid API key".to_owned()));
    // Nothing valid arrived, so the start times out and the session is stopped.
    assert_eq!(outcome.expect("start"), StartOutcome::Timeout);
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!(
        (stats.init_rejections, stats.inits, stats.state.as_str()),
        (1, 0, "stopped")
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_and_bad_format_are_refused() {
    let sim = start_sim(test_config()).await;
    let mut app = App::connect(&sim.ws_url()).await;
    app.init(&session_id("nobody@example.com")).await;
    let err = app.next_json().await;
    assert_eq!(
        (err["code"].as_str(), err["type"].as_str()),
        (Some("SESSION_NOT_FOUND"), Some("tpa_connection_error"))
    );
    assert_eq!(app.expect_close().await.0, 1008);

    // Anything but an init before a successful init has no session (§5.2).
    let mut app = App::connect(&sim.ws_url()).await;
    app.subscribe(&session_id(USER), json!(["VAD"])).await;
    assert_eq!(app.next_json().await["code"], "SESSION_NOT_FOUND");
    assert_eq!(app.expect_close().await.0, 1008);

    let mut app = App::connect(&sim.ws_url()).await;
    app.init("nohyphen").await;
    assert_eq!(
        app.expect_close().await,
        (1008, "Invalid session ID format".to_owned())
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_init_after_start_timeout_is_app_not_started() {
    let sim = start_sim(CloudSimConfig {
        app_start_timeout_ms: 200,
        ..test_config()
    })
    .await;
    assert_eq!(
        sim.start_session(USER).await.expect("start"),
        StartOutcome::Timeout
    );
    let mut app = App::connect(&sim.ws_url()).await;
    app.init(&session_id(USER)).await;
    let err = app.next_json().await;
    assert_eq!(err["code"], "APP_NOT_STARTED");
    assert_eq!(
        app.expect_close().await,
        (1008, "App not started for this session".to_owned())
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_transcriptions_and_audio_arrive_in_order() {
    let sim = start_sim(test_config()).await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    subscribe_and_wait(
        &sim,
        &mut app,
        &sid,
        json!(["transcription", "audio_chunk"]),
    )
    .await;
    sim.push_transcriptions(&sid, 5).await.expect("push");
    for seq in 1..=5u64 {
        let frame = app.next_json().await;
        assert_eq!(frame["type"], "data_stream");
        assert_eq!(frame["sessionId"], sid);
        // Bare `transcription` is served as the en-US key (PROTOCOL §6).
        assert_eq!(frame["streamType"], "transcription:en-US");
        assert_eq!(frame["data"]["seq"], seq);
        assert_eq!(frame["data"]["text"], format!("utterance {seq}"));
        assert_eq!(frame["data"]["isFinal"], true);
    }
    sim.push_audio(&sid, 3).await.expect("push audio");
    for seq in 1..=3u32 {
        match app.next().await {
            Message::Binary(b) => {
                assert_eq!(b.len(), 640);
                assert_eq!(b[..4], seq.to_be_bytes());
            }
            other => panic!("expected audio, got {other:?}"),
        }
    }
    sim.send_raw(&sid, RawFrame::Binary(vec![9; 3]))
        .await
        .expect("raw");
    assert_eq!(app.next().await, Message::binary(vec![9u8; 3]));
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!(
        (
            stats.frames_sent,
            stats.frames_dropped,
            stats.last_transcription_seq
        ),
        (8, 0, 5)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_subscription_is_malformed_and_closes_1008() {
    let sim = start_sim(test_config()).await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    app.subscribe(&sid, json!(["button_press", "bogus_stream"]))
        .await;
    let err = app.next_json().await;
    assert_eq!(err["code"], "MALFORMED_MESSAGE");
    assert_eq!(err["message"], "Invalid subscription type: bogus_stream");
    assert_eq!(
        app.expect_close().await,
        (1008, "Invalid subscription type: bogus_stream".to_owned())
    );
    // The rejected list was not stored.
    assert!(sim.stats(&sid).expect("stats").subscriptions.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_then_grace_then_resurrection_via_webhooks() {
    let (sim, hooks, _server) = webhook_sim(&[]).await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    subscribe_and_wait(&sim, &mut app, &sid, json!(["transcription:en-US"])).await;

    sim.drop_socket(&sid).await.expect("drop");
    assert!(
        app.ends_abruptly().await,
        "drop must not send a close frame"
    );
    wait_state(&sim, &sid, "grace").await;
    // During the grace, data is dropped, not queued (§10.2).
    sim.push_transcriptions(&sid, 2).await.expect("push");
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!((stats.frames_dropped, stats.app_disconnects), (2, 1));

    let bodies = hooks.wait_count(3).await;
    assert_eq!(
        hooks.types(),
        ["session_request", "stop_request", "session_request"]
    );
    assert!(bodies.iter().all(|b| b["sessionId"] == sid.as_str()));
    assert_eq!(bodies[1]["reason"], "user_disabled");
    assert_eq!(bodies[2]["mentraOSWebsocketUrl"], sim.ws_url());

    // The app answers the resurrection with a fresh init and runs again.
    wait_state(&sim, &sid, "connecting").await;
    let mut again = App::connect(&sim.ws_url()).await;
    again.init(&sid).await;
    assert_eq!(again.next_json().await["type"], "tpa_connection_ack");
    wait_state(&sim, &sid, "running").await;
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!(
        (
            stats.resurrections,
            stats.inits,
            stats.stop_webhooks,
            stats.session_webhooks
        ),
        (1, 2, 1, 2)
    );
    // Resurrection removed the subscriptions (§10.3).
    assert!(stats.subscriptions.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinit_within_grace_cancels_resurrection() {
    let (sim, hooks, _server) = webhook_sim(&[]).await;
    let sid = session_id(USER);
    let (app, _) = start_running(&sim, USER).await;
    drop(app);
    wait_state(&sim, &sid, "grace").await;
    let mut again = App::connect(&sim.ws_url()).await;
    again.init(&sid).await;
    assert_eq!(again.next_json().await["type"], "tpa_connection_ack");
    // Absence can only be shown by waiting past the grace period.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hooks.types(), ["session_request"]);
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!((stats.state.as_str(), stats.resurrections), ("running", 0));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_release_prevents_resurrection() {
    let (sim, hooks, _server) = webhook_sim(&[]).await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    app.send(
        json!({"type": "ownership_release", "packageName": DEFAULT_PACKAGE,
                    "sessionId": sid, "reason": "clean_shutdown"}),
    )
    .await;
    eventually("release seen", || {
        sim.stats(&sid).filter(|s| s.ownership_releases == 1)
    })
    .await;
    app.ws.close(None).await.expect("close");
    wait_state(&sim, &sid, "dormant").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(hooks.types(), ["session_request"]);
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!((stats.state.as_str(), stats.resurrections), ("dormant", 0));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_socket_close_hits_the_current_one() {
    let sim = start_sim(CloudSimConfig {
        resurrect: false,
        ..test_config()
    })
    .await;
    let sid = session_id(USER);
    let (mut old, _) = start_running(&sim, USER).await;
    let mut new = App::connect(&sim.ws_url()).await;
    new.init(&sid).await;
    assert_eq!(new.next_json().await["type"], "tpa_connection_ack");
    old.ws.close(None).await.expect("close old");
    // §10.5: the cloud applies the old socket's close to the package.
    wait_state(&sim, &sid, "grace").await;
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!(
        (
            stats.superseded_close_hazards,
            stats.inits,
            stats.socket_open
        ),
        (1, 2, false)
    );
    wait_state(&sim, &sid, "stopped").await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequence_sends_webhook_app_stopped_and_1000() {
    let (sim, hooks, _server) = webhook_sim(&[]).await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    sim.stop_session(&sid).await.expect("stop");
    assert_eq!(hooks.types(), ["session_request", "stop_request"]);
    let stopped = app.next_json().await;
    assert_eq!(stopped["type"], "app_stopped");
    let mut keys: Vec<&str> = stopped
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["timestamp", "type"]);
    assert_eq!(app.expect_close().await, (1000, "App stopped".to_owned()));
    wait_state(&sim, &sid, "stopped").await;
    assert_eq!(sim.stats(&sid).expect("stats").stop_webhooks, 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_session_end_closes_without_webhook() {
    let (sim, hooks, _server) = webhook_sim(&[]).await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    sim.end_user_session(USER).await.expect("end");
    assert_eq!(app.next_json().await["type"], "app_stopped");
    assert_eq!(
        app.expect_close().await,
        (1000, "User session ended".to_owned())
    );
    assert_eq!(hooks.types(), ["session_request"]);
    let mut late = App::connect(&sim.ws_url()).await;
    late.init(&sid).await;
    assert_eq!(late.next_json().await["code"], "SESSION_NOT_FOUND");
    assert_eq!(sim.stats(&sid).expect("stats").state, "ended");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_500_is_retried_once_then_succeeds() {
    let (sim, hooks, _server) = webhook_sim(&[500]).await;
    let sid = session_id(USER);
    let (outcome, mut app) = tokio::join!(sim.start_session(USER), async {
        // Like the SDK, connect when the (second) webhook arrives.
        hooks.wait_count(2).await;
        let mut app = App::connect(&sim.ws_url()).await;
        app.init(&sid).await;
        app
    });
    assert_eq!(outcome.expect("start"), StartOutcome::Running);
    assert_eq!(app.next_json().await["type"], "tpa_connection_ack");
    let bodies = hooks.wait_count(2).await;
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0], bodies[1], "the retry is an identical POST");
    let stats = sim.stats(&sid).expect("stats");
    assert_eq!(
        (
            stats.webhooks_sent,
            stats.session_webhooks,
            stats.last_webhook_status
        ),
        (2, 2, Some(200))
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_failing_twice_fails_the_start() {
    let (sim, hooks, _server) = webhook_sim(&[500, 503]).await;
    let outcome = sim.start_session(USER).await.expect("start");
    assert_eq!(outcome, StartOutcome::WebhookFailed { status: Some(503) });
    assert_eq!(hooks.types().len(), 2);
    assert_eq!(
        sim.stats(&session_id(USER)).expect("stats").state,
        "stopped"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_and_oversized_frames_close_without_panic() {
    let sim = start_sim(CloudSimConfig {
        max_frame_bytes: 1_024,
        ..test_config()
    })
    .await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    app.ws.send(Message::text("{not json")).await.expect("send");
    assert_eq!(
        app.expect_close().await,
        (1011, "Internal server error".to_owned())
    );

    let (mut app, _) = start_running(&sim, USER).await;
    app.ws
        .send(Message::binary(vec![1u8; 16]))
        .await
        .expect("send");
    assert_eq!(
        app.expect_close().await,
        (1011, "Internal server error".to_owned())
    );

    let (mut app, _) = start_running(&sim, USER).await;
    app.ws
        .send(Message::text("x".repeat(4_096)))
        .await
        .expect("send");
    assert_eq!(app.expect_close().await.0, 1009);

    // Still serving, and the bad frames were logged against the session.
    let (_app, _) = start_running(&sim, USER).await;
    let received = sim.received(&sid);
    assert!(received.contains(&ReceivedFrame::Text {
        socket: 1,
        text: "{not json".to_owned()
    }));
    assert!(received
        .iter()
        .any(|f| matches!(f, ReceivedFrame::Binary { len: 16, .. })));
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_sent_and_pongs_counted() {
    let sim = start_sim(CloudSimConfig {
        ping_interval_ms: 50,
        ..test_config()
    })
    .await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    let deadline = Instant::now() + WAIT;
    // The client answers pings while it reads, so read in short slices until counted.
    while sim.stats(&sid).is_some_and(|s| s.pongs_received < 2) {
        assert!(Instant::now() < deadline, "no pongs counted");
        let _ = timeout(Duration::from_millis(20), app.ws.next()).await;
    }
    assert!(sim.stats(&sid).expect("stats").pings_sent >= 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_api_round_trip() {
    let sim = start_sim(test_config()).await;
    let base = sim.control_url();
    let sid = session_id(USER);
    let encoded = sid.replace('@', "%40");
    let sessions_url = format!("{base}/sessions");
    let ((status, started), mut app) = tokio::join!(
        http_json(Method::POST, &sessions_url, Some(json!({"userId": USER}))),
        async {
            // The POST travels over HTTP, so wait until the start has begun.
            wait_state(&sim, &sid, "connecting").await;
            let mut app = App::connect(&sim.ws_url()).await;
            app.init(&sid).await;
            app
        }
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(started, json!({"outcome": "running", "sessionId": sid}));
    assert_eq!(app.next_json().await["type"], "tpa_connection_ack");
    assert_eq!(app.next_json().await["type"], "device_state_update");
    subscribe_and_wait(&sim, &mut app, &sid, json!(["*"])).await;

    let url = format!("{base}/sessions/{encoded}/transcriptions");
    let (status, _) = http_json(Method::POST, &url, Some(json!({"count": 2}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.next_json().await["data"]["seq"], 1);
    assert_eq!(app.next_json().await["data"]["seq"], 2);

    let url = format!("{base}/sessions/{sid}/raw");
    let (status, _) = http_json(
        Method::POST,
        &url,
        Some(json!({"text": "{\"type\":\"mystery\"}"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.next_json().await["type"], "mystery");

    let (status, stats) = http_json(Method::GET, &format!("{base}/sessions/{encoded}"), None).await;
    assert_eq!(
        (
            status,
            stats["state"].as_str(),
            stats["frames_sent"].as_u64()
        ),
        (StatusCode::OK, Some("running"), Some(2))
    );
    let (_, all) = http_json(Method::GET, &format!("{base}/sessions"), None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(1));
    let (_, received) = http_json(
        Method::GET,
        &format!("{base}/sessions/{encoded}/received"),
        None,
    )
    .await;
    assert_eq!(received[0]["value"]["type"], "tpa_connection_init");
    assert_eq!(received[1]["value"]["type"], "subscription_update");

    let url = format!("{base}/sessions/{encoded}/close");
    let (status, _) = http_json(
        Method::POST,
        &url,
        Some(json!({"code": 4001, "reason": "by control"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.expect_close().await, (4001, "by control".to_owned()));

    let (status, _) = http_json(Method::GET, &format!("{base}/sessions/nobody-x"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = http_json(
        Method::POST,
        &format!("{base}/sessions/{encoded}/audio"),
        Some(json!({"count": "x"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = http(
        Method::POST,
        &format!("{base}/sessions"),
        Some(json!("not an object")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = http_json(Method::POST, &format!("{base}/users/nobody/end"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_http_routes_answer_and_are_counted() {
    let sim = start_sim(test_config()).await;
    let (_app, _) = start_running(&sim, USER).await;
    let root = format!("http://{}", sim.addr());
    let (status, body) = http(
        Method::GET,
        &format!("{root}/api/tts?text=hi&voice_id=v"),
        None,
        None,
    )
    .await;
    assert_eq!((status, &body[..3]), (StatusCode::OK, &b"ID3"[..]));

    let (status, version) = http_json(Method::GET, &format!("{root}/api/sdk/version"), None).await;
    assert_eq!(
        (status, version),
        (
            StatusCode::OK,
            json!({"success": true, "data": {"latest": "2.1.29"}})
        )
    );

    let settings = format!("{root}/appsettings/user/{DEFAULT_PACKAGE}");
    let (status, body) = http(Method::GET, &settings, None, Some(&session_id(USER))).await;
    let settings_json: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (status, &settings_json[0]["key"]),
        (StatusCode::OK, &json!("lang"))
    );
    let (status, _) = http(Method::GET, &settings, None, Some("bogus")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let auth = format!("{DEFAULT_PACKAGE}:{DEFAULT_API_KEY}");
    let key_url = format!("{root}/api/sdk/simple-storage/{USER}/color");
    let (status, _) = http(
        Method::PUT,
        &key_url,
        Some(json!({"value": "blue"})),
        Some(&auth),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = http(Method::GET, &key_url, None, Some(&auth)).await;
    let stored: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        (status, &stored["data"]["value"]),
        (StatusCode::OK, &json!("blue"))
    );
    let (status, _) = http(Method::GET, &key_url, None, Some("com.other:key")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = http(Method::DELETE, &key_url, None, Some(&auth)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = http(Method::GET, &key_url, None, Some(&auth)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let perms = format!("{root}/api/public/permissions/{DEFAULT_PACKAGE}");
    let (status, perms) = http_json(Method::GET, &perms, None).await;
    assert_eq!(
        (status, &perms["permissions"][0]["type"]),
        (StatusCode::OK, &json!("MICROPHONE"))
    );

    let hits = sim.http_hits();
    let count = |k: &str| hits.get(k).copied().unwrap_or(0);
    assert_eq!(
        (
            count("tts"),
            count("sdk_version"),
            count("app_settings"),
            count("simple_storage"),
            count("permissions")
        ),
        (1, 1, 2, 5, 1)
    );
    let (_, via_control) = http_json(
        Method::GET,
        &format!("{}/http-hits", sim.control_url()),
        None,
    )
    .await;
    assert_eq!(via_control["simple_storage"], 5);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_socket_gets_nothing_until_dropped() {
    let sim = start_sim(CloudSimConfig {
        ping_interval_ms: 30,
        ..test_config()
    })
    .await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    subscribe_and_wait(&sim, &mut app, &sid, json!(["transcription:en-US"])).await;
    sim.blackhole_socket(&sid).await.expect("blackhole");
    // Commands are processed in order, so everything after this is never written; the
    // pause only lets an in-flight ping tick finish before we take the count.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pings = sim.stats(&sid).expect("stats").pings_sent;
    sim.push_transcriptions(&sid, 3).await.expect("push");
    // The cloud still believes the socket is open: counted as sent, never written.
    assert_eq!(sim.stats(&sid).expect("stats").frames_sent, 3);
    let window = Instant::now() + Duration::from_millis(300);
    while let Ok(got) = tokio::time::timeout_at(window, app.ws.next()).await {
        // Pings sent before the switch may still be buffered; nothing else may arrive.
        assert!(
            matches!(got, Some(Ok(Message::Ping(_)))),
            "blackholed socket wrote {got:?}"
        );
    }
    assert_eq!(sim.stats(&sid).expect("stats").pings_sent, pings);
    sim.drop_socket(&sid).await.expect("drop");
    assert!(app.ends_abruptly().await);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_generator_streams_numbered_transcriptions() {
    let sim = start_sim(CloudSimConfig {
        transcription_interval_ms: Some(20),
        ..test_config()
    })
    .await;
    let sid = session_id(USER);
    let (mut app, _) = start_running(&sim, USER).await;
    subscribe_and_wait(&sim, &mut app, &sid, json!(["transcription:en-US"])).await;
    let first = app.next_json().await["data"]["seq"].as_u64().expect("seq");
    for expected in first + 1..first + 4 {
        assert_eq!(app.next_json().await["data"]["seq"], expected);
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_task_promptly() {
    let (sim, _hooks, _server) = webhook_sim(&[]).await;
    let (mut app, _) = start_running(&sim, USER).await;
    let addr = sim.addr();
    // Open sockets, a pending grace timer and an idle HTTP connection must not hold it up.
    let _idle_http = TcpStream::connect(addr).await.expect("connect");
    sim.drop_socket(&session_id(USER)).await.expect("drop");
    assert!(app.ends_abruptly().await);
    let (_second, _) = start_running(&sim, "bob@example.com").await;
    timeout(Duration::from_secs(1), sim.shutdown())
        .await
        .expect("shutdown within 1 s");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
