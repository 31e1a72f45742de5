//! Hardening of a session's public surface, through the real binary over loopback. Each
//! case is one a direct connection to the cloud would have survived, and each also shows
//! the legitimate path still working: the session keeps (or starts) streaming.

mod support;

use futures_util::{SinkExt, Stream, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

fn tx(n: u32) -> String {
    format!(
        r#"{{"type":"data_stream","streamType":"transcription:en-US","data":{{"type":"transcription","isFinal":true,"seq":{n}}}}}"#
    )
}

fn display(n: u32) -> String {
    format!(r#"{{"type":"display_event","view":"main","n":{n}}}"#)
}

async fn tether(env: &[(&str, String)], app: &FakeApp) -> Tether {
    let mut all = vec![
        ("TETHER_APP_URL", app.url()),
        ("TETHER_API_KEY", API_KEY.to_string()),
    ];
    all.extend(env.iter().cloned());
    Tether::spawn(&all).await
}

fn local_url(c: &Connected) -> String {
    c.webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string()
}

/// Opens a new app socket on `url` (reading frames up to `max` bytes) and sends the init.
async fn open_app(url: &str, session_id: &str, max: usize) -> AppWs {
    let cfg = WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let (mut ws, _) = within(
        "app connect",
        tokio_tungstenite::connect_async_with_config(url, Some(cfg), false),
    )
    .await
    .expect("connect");
    ws.send(Message::text(init_frame(session_id)))
        .await
        .expect("init");
    ws
}

/// The ack the fake cloud sends for `id`.
fn ack(id: &str) -> String {
    serde_json::json!({"type": "tpa_connection_ack", "sessionId": id, "settings": [],
        "mentraosSettings": {}, "capabilities": null})
    .to_string()
}

/// Like `connect_session`, with an app socket that reads frames up to `max` bytes.
async fn connect_with(
    tether: &Tether,
    cloud: &FakeCloud,
    app: &mut FakeApp,
    id: &str,
    max: usize,
) -> (AppWs, CloudWs, String) {
    let resp = http::post_json(
        &format!("http://{}/webhook", tether.public),
        &session_request(id, cloud),
    )
    .await;
    assert_eq!(resp.status, 200, "webhook answer: {}", resp.text());
    let webhook = app.webhook().await;
    let url = webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    let mut app_ws = open_app(&url, id, max).await;
    let (_, mut cloud_ws) = cloud.accept().await;
    assert_eq!(text(&mut cloud_ws).await, init_frame(id));
    cloud_ws.send(Message::text(ack(id))).await.expect("ack");
    assert_eq!(text(&mut app_ws).await, ack(id));
    (app_ws, cloud_ws, url)
}

/// Reads a stream until its close frame; `None` when it ends without one (or without a
/// code). The whole wait is bounded, however many pings arrive meanwhile.
async fn closed<S>(stream: &mut S) -> Option<(u16, String)>
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    within("a close", async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(cf))) => {
                    return cf.map(|c| (u16::from(c.code), c.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
}

/// The next data frame, skipping control frames; the whole wait is bounded.
async fn data<S>(stream: &mut S) -> Message
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    within("a frame", async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(m)) => return m,
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
}

/// The next text frame's content; the whole wait is bounded.
async fn text<S>(stream: &mut S) -> String
where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    match data(stream).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Asserts the ack answered locally, then returns the socket.
async fn expect_local_ack(ws: &mut AppWs) {
    let ack = text(ws).await;
    assert!(ack.contains("tpa_connection_ack"), "{ack}");
}

/// The cloud's next frame is `want`: nothing (no init, no close) came before it.
async fn cloud_sees_next(cloud_ws: &mut CloudWs, want: &str) {
    assert_eq!(text(cloud_ws).await, want);
}

// === frame limits per leg ===

#[tokio::test]
async fn a_17_mib_cloud_frame_reaches_the_app_intact_and_the_session_streams_on() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether(&[], &app).await;
    let id = "ada@example.com-com.example.notes";
    // The SDK's `ws` client takes frames up to 100 MiB: so does this app socket.
    let (app_ws, cloud_ws, _) = connect_with(&tether, &cloud, &mut app, id, 100 << 20).await;
    let mut c = (app_ws, cloud_ws);

    let photo = format!(
        r#"{{"type":"photo_response","requestId":"r1","photoData":"{}"}}"#,
        "A".repeat(17 << 20)
    );
    c.1.send(Message::text(photo.clone()))
        .await
        .expect("send photo");
    match data(&mut c.0).await {
        Message::Text(t) => assert!(t.as_str() == photo, "the frame arrives byte for byte"),
        other => panic!("expected the photo, got {other:?}"),
    }
    let audio = vec![7u8; (17 << 20) + 3];
    c.1.send(Message::binary(audio.clone()))
        .await
        .expect("send audio");
    assert_eq!(data(&mut c.0).await, Message::binary(audio));

    // Streaming goes on both ways over the same sockets.
    c.1.send(Message::text(tx(1))).await.expect("send");
    assert_eq!(text(&mut c.0).await, tx(1));
    c.0.send(Message::text(display(1))).await.expect("send");
    cloud_sees_next(&mut c.1, &display(1)).await;
    assert_eq!(
        tether
            .metric(r#"tether_oversized_frames_total{direction="cloud_to_app"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn an_app_frame_over_16_mib_closes_only_the_app_leg_with_1009() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether(&[], &app).await;
    let id = "bea@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    let url = local_url(&c);

    // Over the cloud's own 16 MiB limit: the cloud would have closed this socket with 1009.
    let (mut sink, mut stream) = c.app_ws.split();
    let big = Message::binary(vec![1u8; (16 << 20) + 1]);
    let (_, close) = tokio::join!(sink.send(big), closed(&mut stream));
    assert_eq!(close, Some((1009, "Message too big".to_string())));

    // The SDK reconnects after 1009 and is answered locally; the cloud link was kept.
    c.cloud_ws.send(Message::text(tx(2))).await.expect("send");
    let mut app_ws = open_app(&url, id, 16 << 20).await;
    expect_local_ack(&mut app_ws).await;
    assert_eq!(text(&mut app_ws).await, tx(2), "what it missed");
    c.cloud_ws.send(Message::text(tx(3))).await.expect("send");
    assert_eq!(text(&mut app_ws).await, tx(3));
    app_ws.send(Message::text(display(1))).await.expect("send");
    cloud_sees_next(&mut c.cloud_ws, &display(1)).await;
    assert_eq!(
        tether
            .metric(r#"tether_oversized_frames_total{direction="app_to_cloud"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_old_frame_limit_variable_still_sets_both_legs() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether(&[("TETHER_MAX_FRAME_BYTES", "4096".into())], &app).await;
    let id = "cal@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    // A cloud frame over the limit: the cloud socket is closed with 1009 and healed.
    c.cloud_ws
        .send(Message::binary(vec![0u8; 8192]))
        .await
        .expect("send");
    assert_eq!(
        closed(&mut c.cloud_ws).await,
        Some((1009, "Message too big".to_string()))
    );
    let (_, mut healed) = cloud.accept().await;
    assert_eq!(text(&mut healed).await, init_frame(id), "re-init");
    healed.send(Message::text(ack(id))).await.expect("ack");
    healed.send(Message::text(tx(1))).await.expect("send");
    assert_eq!(
        text(&mut c.app_ws).await,
        tx(1),
        "the app saw nothing but the frame's absence"
    );
    assert_eq!(
        tether
            .metric(r#"tether_oversized_frames_total{direction="cloud_to_app"}"#)
            .await,
        1.0
    );
}

// === a second app socket ===

/// The close a displaced app socket receives.
const DISPLACED: (u16, &str) = (1000, "Replaced by a newer connection");

#[tokio::test]
async fn a_second_app_socket_displaces_the_first_with_a_clean_close_and_gets_its_unproven_frames() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether(&[], &app).await;
    let id = "dee@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    // The first socket is not read from now on: it answers no delivery ping.
    for n in 1..=2 {
        c.cloud_ws.send(Message::text(tx(n))).await.expect("send");
    }
    eventually("both frames written to the first socket", || async {
        tether
            .session(id)
            .await
            .is_some_and(|r| r["frames_down"].as_u64() == Some(3))
    })
    .await;

    let mut second = open_app(&local_url(&c), id, 16 << 20).await;
    expect_local_ack(&mut second).await;
    assert_eq!(
        closed(&mut c.app_ws).await,
        Some((DISPLACED.0, DISPLACED.1.to_string())),
        "the displaced SDK stops reconnecting and cleans its session up"
    );
    for n in 1..=2 {
        assert_eq!(text(&mut second).await, tx(n), "unproven frames replayed");
    }
    c.cloud_ws.send(Message::text(tx(3))).await.expect("send");
    assert_eq!(text(&mut second).await, tx(3));
    second.send(Message::text(display(1))).await.expect("send");
    cloud_sees_next(&mut c.cloud_ws, &display(1)).await;
    assert_eq!(
        tether
            .metric(r#"tether_app_takeovers_total{outcome="displaced"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn two_clients_taking_a_session_over_in_turn_stop_at_the_bound() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether(&[], &app).await;
    let id = "eve@example.com-com.example.notes";
    let c = connect_session(&tether, &cloud, &mut app, id).await;
    let (url, mut cloud_ws) = (local_url(&c), c.cloud_ws);
    let mut current = c.app_ws;
    // Two SDK processes that reconnect over each other: three takeovers are let through.
    for _ in 0..3 {
        let mut newcomer = open_app(&url, id, 16 << 20).await;
        expect_local_ack(&mut newcomer).await;
        assert_eq!(
            closed(&mut current).await,
            Some((DISPLACED.0, DISPLACED.1.to_string()))
        );
        current = newcomer;
    }
    // The fourth is refused the way the cloud refuses an init.
    let mut refused = open_app(&url, id, 16 << 20).await;
    let err: serde_json::Value = serde_json::from_str(&text(&mut refused).await).expect("json");
    assert_eq!(err["type"], "tpa_connection_error");
    assert_eq!(err["code"], "TOO_MANY_TAKEOVERS");
    let (code, reason) = closed(&mut refused).await.expect("close code");
    assert_eq!(code, 1008);
    assert_eq!(Some(reason.as_str()), err["message"].as_str());

    // The socket that holds the session keeps streaming; the cloud saw none of it.
    cloud_ws.send(Message::text(tx(1))).await.expect("send");
    assert_eq!(text(&mut current).await, tx(1));
    current.send(Message::text(display(1))).await.expect("send");
    cloud_sees_next(&mut cloud_ws, &display(1)).await;
    let m = tether.metrics().await;
    assert_eq!(
        metric_value(&m, r#"tether_app_takeovers_total{outcome="displaced"}"#),
        3.0
    );
    assert_eq!(
        metric_value(&m, r#"tether_app_takeovers_total{outcome="refused"}"#),
        1.0
    );
}

// === ownership_release ===

/// A close frame with `code` and `reason`.
fn close_frame(code: u16, reason: &str) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: code.into(),
        reason: reason.to_string().into(),
    }
}

fn release(id: &str) -> String {
    serde_json::json!({"type": "ownership_release", "packageName": "com.example.notes",
        "sessionId": id, "reason": "clean_shutdown", "timestamp": "2026-01-10T09:20:00.000Z"})
    .to_string()
}

/// Reads the cloud socket until it ends; its close code and reason, if it sent one.
async fn cloud_link_end(ws: &mut CloudWs) -> Option<(u16, String)> {
    closed(ws).await
}

#[tokio::test]
async fn after_ownership_release_an_app_socket_loss_closes_the_cloud_link() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether(&[], &app).await;
    let id = "fox@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    let url = local_url(&c);
    c.app_ws
        .send(Message::text(release(id)))
        .await
        .expect("send");
    cloud_sees_next(&mut c.cloud_ws, &release(id)).await;

    // The socket drops as the process exits: not held, the cloud link ends at once.
    drop(c.app_ws);
    assert_eq!(
        cloud_link_end(&mut c.cloud_ws).await,
        None,
        "ended like the app's socket"
    );
    eventually("the session to end", || async {
        tether.session(id).await.is_none()
    })
    .await;
    assert_eq!(
        tether
            .metric(r#"tether_session_ends_total{reason="app_lost"}"#)
            .await,
        1.0
    );

    // A new init starts a new session that streams.
    let mut app_ws = open_app(&url, id, 16 << 20).await;
    let (_, mut cloud_ws) = cloud.accept().await;
    assert_eq!(text(&mut cloud_ws).await, init_frame(id));
    cloud_ws.send(Message::text(ack(id))).await.expect("ack");
    assert_eq!(text(&mut app_ws).await, ack(id));
    cloud_ws.send(Message::text(tx(1))).await.expect("send");
    assert_eq!(text(&mut app_ws).await, tx(1));
}

#[tokio::test]
async fn after_ownership_release_a_clean_app_close_and_a_cloud_close_pass_through() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    // A long intent window: only the release can make the close pass at once.
    let tether = Tether::spawn_yaml(
        "session:\n  intent_window_ms: 30000\n",
        &[("TETHER_APP_URL", app.url())],
    )
    .await;
    let id = "gil@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    c.app_ws
        .send(Message::text(release(id)))
        .await
        .expect("send");
    cloud_sees_next(&mut c.cloud_ws, &release(id)).await;
    c.app_ws
        .close(Some(close_frame(1000, "switching clouds")))
        .await
        .expect("close");
    assert_eq!(
        cloud_link_end(&mut c.cloud_ws).await,
        Some((1000, "switching clouds".to_string()))
    );

    // A cloud close Tether would otherwise heal reaches a releasing app exactly.
    let id = "hal@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    c.app_ws
        .send(Message::text(release(id)))
        .await
        .expect("send");
    cloud_sees_next(&mut c.cloud_ws, &release(id)).await;
    c.cloud_ws
        .close(Some(close_frame(1011, "Internal server error")))
        .await
        .expect("close");
    assert_eq!(
        closed(&mut c.app_ws).await,
        Some((1011, "Internal server error".to_string()))
    );
}

// === configuration bounds ===

/// `yaml` is either refused by `check-config` (exit 64, naming `key` and its bounds) or
/// accepted; then `run` starts with it and a session streams.
async fn accepted_means_it_runs(yaml: &str, key: &str) -> bool {
    let path = config_file(yaml);
    let path = path.to_str().expect("utf-8 path").to_string();
    let out = run_tether(&["check-config", &path], &[]).await;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(
            err.contains(key) && err.contains("must be between"),
            "{err}"
        );
        return false;
    }
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = Tether::spawn_yaml(yaml, &[("TETHER_APP_URL", app.url())]).await;
    let id = "ivy@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    c.cloud_ws.send(Message::text(tx(1))).await.expect("send");
    assert_eq!(text(&mut c.app_ws).await, tx(1));
    true
}

#[tokio::test]
async fn what_check_config_accepts_run_starts_with() {
    // Past the bounds: values that once passed the check and then failed at start
    // (a semaphore of 2^61 permits panics).
    for (yaml, key) in [
        (
            "session:\n  refire_concurrency: 2305843009213693952\n",
            "session.refire_concurrency",
        ),
        (
            "session:\n  app_ping_misses: 4294967295\n",
            "session.app_ping_misses",
        ),
        (
            "buffer:\n  global_max_bytes: 18446744073709551615\n",
            "buffer.global_max_bytes",
        ),
    ] {
        assert!(
            !accepted_means_it_runs(yaml, key).await,
            "{yaml} is refused"
        );
    }
    // At the bounds: accepted, and it runs.
    let at_bounds = "session:\n  refire_concurrency: 1024\n  app_ping_misses: 100\n\
        buffer:\n  down_max_frames: 1000000\n  up_max_frames: 1000000\n  \
        down_max_bytes: 1073741824\n  up_max_bytes: 1073741824\n  \
        global_max_bytes: 68719476736\n\
        limits:\n  max_frame_bytes_up: 268435456\n  max_frame_bytes_down: 268435456\n";
    assert!(accepted_means_it_runs(at_bounds, "-").await);
}
