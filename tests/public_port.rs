//! The public port under attack, through the real binary over loopback: forged webhooks
//! (foreign origins, forged cloud ids, hijack attempts on a healing session, stops nothing
//! confirms), floods and oversized bodies. Each attack is followed by the legitimate path:
//! a real session starts (or keeps) streaming.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

/// How long a test watches for something that must not happen.
const QUIET: Duration = Duration::from_millis(600);

/// Tether whose only allowed cloud is `cloud` (its `cloud.ws_url`), plus `yaml`.
async fn tether_for(cloud: &FakeCloud, app: &FakeApp, yaml: &str) -> Tether {
    Tether::spawn_yaml(
        yaml,
        &[
            ("TETHER_APP_URL", app.url()),
            ("TETHER_API_KEY", API_KEY.into()),
            ("TETHER_CLOUD_WS_URL", cloud.ws_url()),
            // Nothing but the configured cloud.
            ("TETHER_CLOUD_ALLOWED_ORIGINS", String::new()),
        ],
    )
    .await
}

/// Frames both ways on a connected session, numbered from `from`.
async fn streams(c: &mut Connected, from: u32) {
    stream_on(&mut c.app_ws, &mut c.cloud_ws, from).await;
}

/// Frames both ways between two sockets of one session, numbered from `from`.
async fn stream_on(app_ws: &mut AppWs, cloud_ws: &mut CloudWs, from: u32) {
    for i in from..from + 5 {
        let down = format!(r#"{{"type":"data_stream","streamType":"button_press","seq":{i}}}"#);
        cloud_ws
            .send(Message::text(down.clone()))
            .await
            .expect("down");
        assert_eq!(next_text(app_ws).await, down);
        let up = format!(r#"{{"type":"display_event","seq":{i}}}"#);
        app_ws.send(Message::text(up.clone())).await.expect("up");
        assert_eq!(next_text(cloud_ws).await, up);
    }
}

/// The legitimate path: a real session starts and streams both ways.
async fn real_session_streams(tether: &Tether, cloud: &FakeCloud, app: &mut FakeApp) {
    let mut c = connect_session(tether, cloud, app, "alice@example.com-com.example.notes").await;
    streams(&mut c, 0).await;
}

fn webhook_url(t: &Tether) -> String {
    format!("http://{}/webhook", t.public)
}

/// The body of a forged `session_request` naming `origin`'s socket.
fn forged_start(session_id: &str, ws: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "session_request", "sessionId": session_id,
        "userId": session_id.split('-').next().unwrap_or_default(),
        "timestamp": "2026-01-10T09:15:00.000Z",
        "mentraOSWebsocketUrl": ws, "augmentOSWebsocketUrl": ws,
    })
}

fn stop_request(session_id: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "stop_request", "sessionId": session_id,
        "userId": session_id.split('-').next().unwrap_or_default(),
        "reason": "user_disabled", "timestamp": "2026-01-10T09:20:00.000Z",
    })
}

/// POSTs `body`; the status, or `None` when the connection failed.
async fn try_post(url: &str, body: Bytes) -> Option<u16> {
    let uri: hyper::Uri = url.parse().ok()?;
    let authority = uri.authority()?.to_string();
    let tcp = tokio::net::TcpStream::connect(&authority).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    let req = hyper::Request::post(uri.path())
        .header("host", authority)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(body))
        .ok()?;
    let resp = within("a webhook answer", sender.send_request(req))
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

fn vm_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn a_webhook_naming_a_foreign_origin_never_reaches_the_app_nor_dials_it() {
    let cloud = FakeCloud::bind().await;
    let attacker = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether_for(&cloud, &app, "").await;
    for ws in [
        attacker.ws_url(),
        format!("ws://localhost:{}/app-ws", attacker.addr.port()),
        "wss://api.mentra.glass.evil.example/app-ws".to_string(),
    ] {
        for _ in 0..2 {
            let resp = http::post_json(
                &webhook_url(&tether),
                &forged_start("eve@x.com-com.example.notes", &ws),
            )
            .await;
            assert_eq!(resp.status, 403, "{ws}: {}", resp.text());
            assert!(resp.text().contains("not allowed"), "{}", resp.text());
        }
    }
    assert!(
        app.webhook_within(QUIET).await.is_none(),
        "a refused webhook reached the app"
    );
    assert!(
        !attacker.connected_within(QUIET).await,
        "the attacker was dialled"
    );
    assert_eq!(
        tether
            .metric(r#"tether_webhooks_total{type="session_request",outcome="forbidden_origin"}"#)
            .await,
        6.0
    );
    let told = tether
        .logs()
        .iter()
        .filter(|l| l.contains("cloud.allowed_origins"))
        .count();
    assert_eq!(
        told, 3,
        "one line per refused origin, saying how to allow it"
    );
    // The real cloud's sessions are untouched.
    real_session_streams(&tether, &cloud, &mut app).await;
}

#[tokio::test]
async fn a_cloud_id_cannot_be_forged_or_guessed() {
    let cloud = FakeCloud::bind().await;
    let attacker = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether_for(&cloud, &app, "").await;
    let mut c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "alice@example.com-com.example.notes",
    )
    .await;
    let url = c.webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    let id = url
        .split("/c/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("id")
        .to_string();
    assert!(id.len() > 32, "a sealed id carries a 128-bit tag: {id}");
    // The same tag over the attacker's origin, a flipped tag, and the old 8-digit form.
    let attacker_origin: String = format!("ws://{}/", attacker.addr)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    let flipped = format!(
        "{}{}",
        if id.starts_with('0') { "1" } else { "0" },
        &id[1..]
    );
    for forged in [
        format!("{}{attacker_origin}", &id[..32]),
        flipped,
        "811c9dc5".into(),
    ] {
        let url = format!("ws://{}/c/{forged}/app-ws", tether.local);
        let r = tokio_tungstenite::connect_async(url.as_str()).await;
        assert!(
            r.is_err(),
            "an app socket on a forged id was accepted: {forged}"
        );
        let resp = http::get(&format!(
            "http://{}/c/{forged}/api/tts?text=x",
            tether.local
        ))
        .await;
        assert_eq!(resp.status, 502, "{}", resp.text());
    }
    assert!(
        !attacker.connected_within(QUIET).await,
        "the attacker was reached"
    );
    streams(&mut c, 0).await;
}

#[tokio::test]
async fn a_forged_stop_and_start_cannot_hijack_a_healing_session() {
    let cloud = FakeCloud::bind().await;
    let attacker = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether_for(&cloud, &app, "cloud:\n  stop_hold_ms: 400\n").await;
    let id = "alice@example.com-com.example.notes";
    let Connected {
        mut app_ws,
        cloud_ws,
        ..
    } = connect_session(&tether, &cloud, &mut app, id).await;
    // The cloud socket drops; while the link heals, and again just after, an attacker
    // sends the stop + start pair of a resurrection naming itself.
    drop(cloud_ws);
    let mut healed = None;
    for round in 0..2 {
        let stop = http::post_json(&webhook_url(&tether), &stop_request(id)).await;
        assert_eq!(stop.status, 200, "a stop is answered, not obeyed");
        let start =
            http::post_json(&webhook_url(&tether), &forged_start(id, &attacker.ws_url())).await;
        assert_eq!(start.status, 403, "round {round}: {}", start.text());
        if round == 0 {
            let (_, mut ws) = cloud.accept().await;
            assert_eq!(
                next_text(&mut ws).await,
                init_frame(id),
                "re-init at the real cloud"
            );
            ws.send(Message::text(
                r#"{"type":"tpa_connection_ack","settings":[]}"#,
            ))
            .await
            .expect("ack");
            healed = Some(ws);
        }
    }
    let mut cloud_ws = healed.expect("healed");
    assert!(
        !attacker.connected_within(QUIET).await,
        "the init went to the attacker"
    );
    assert!(
        app.webhook_within(QUIET).await.is_none(),
        "the app saw the forged webhooks"
    );
    stream_on(&mut app_ws, &mut cloud_ws, 10).await;
    eventually("the unconfirmed stops are counted", || async {
        tether
            .metric(r#"tether_webhooks_total{type="stop_request",outcome="unconfirmed"}"#)
            .await
            == 2.0
    })
    .await;
}

#[tokio::test]
async fn a_stop_nothing_confirms_is_dropped_and_a_confirmed_one_passed_on() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether_for(&cloud, &app, "cloud:\n  stop_hold_ms: 400\n").await;
    let id = "alice@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    let forged = http::post_json(&webhook_url(&tether), &stop_request(id)).await;
    assert_eq!(forged.status, 200);
    assert!(
        app.webhook_within(Duration::from_millis(900))
            .await
            .is_none(),
        "a forged stop reached the app"
    );
    streams(&mut c, 0).await;
    assert_eq!(
        tether.session(id).await.map(|s| s["state"].clone()),
        Some("live".into())
    );
    // The real cloud: stop webhook, then app_stopped and close 1000 on the session's socket.
    let real = http::post_json(&webhook_url(&tether), &stop_request(id)).await;
    assert_eq!(real.status, 200);
    c.cloud_ws
        .send(Message::text(r#"{"type":"app_stopped"}"#))
        .await
        .expect("app_stopped");
    c.cloud_ws
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "App stopped".into(),
            },
        )))
        .await
        .expect("close");
    assert_eq!(next_text(&mut c.app_ws).await, r#"{"type":"app_stopped"}"#);
    assert_eq!(
        close_of(&mut c.app_ws).await,
        Some((1000, "App stopped".into()))
    );
    let stop = app.webhook().await;
    assert_eq!(
        stop["type"], "stop_request",
        "the confirmed stop reaches the app"
    );
    assert_eq!(
        tether
            .metric(r#"tether_webhooks_total{type="stop_request",outcome="confirmed"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn forged_webhooks_cannot_grow_memory_and_big_bodies_are_refused() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether_for(&cloud, &app, "").await;
    let before = vm_rss_kib(tether.pid());
    assert!(before > 0, "VmRSS readable");
    // 150 bodies of 1 MiB (each once kept whole) and 300 of 60 KiB naming the real cloud.
    let big = Bytes::from(vec![b' '; 1 << 20]);
    for _ in 0..150 {
        // Refused before it is read whole; the server may close before the client has
        // written it all, so a reset counts as refused too.
        if let Some(status) = try_post(&webhook_url(&tether), big.clone()).await {
            assert_eq!(status, 413);
        }
    }
    let pad = "x".repeat(60 * 1024);
    for i in 0..300 {
        let mut body = forged_start(&format!("u{i}@x.com-com.example.notes"), &cloud.ws_url());
        body["padding"] = pad.clone().into();
        let r = http::post_json(&webhook_url(&tether), &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let _ = app.webhook().await;
    }
    let grown_mib = vm_rss_kib(tether.pid()).saturating_sub(before) / 1024;
    assert!(grown_mib < 48, "memory grew {grown_mib} MiB");
    real_session_streams(&tether, &cloud, &mut app).await;
}

#[tokio::test]
async fn many_origins_do_not_lock_out_a_new_real_one() {
    // Any loopback port is allowed here: a hundred distinct origins, each accepted.
    let mut app = FakeApp::start().await;
    let tether = Tether::spawn(&[
        ("TETHER_APP_URL", app.url()),
        ("TETHER_API_KEY", API_KEY.into()),
    ])
    .await;
    for port in 20_000..20_100u16 {
        let ws = format!("ws://127.0.0.1:{port}/app-ws");
        let r = http::post_json(
            &webhook_url(&tether),
            &forged_start("eve@x.com-com.example.notes", &ws),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let _ = app.webhook().await;
    }
    let cloud = FakeCloud::bind().await;
    real_session_streams(&tether, &cloud, &mut app).await;
}

#[tokio::test]
async fn a_webhook_flood_is_answered_429_with_retry_after() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = tether_for(
        &cloud,
        &app,
        "limits:\n  webhook_rate_per_source: 2\n  webhook_burst_per_source: 5\n",
    )
    .await;
    let mut limited = 0;
    for i in 0..40 {
        let r = http::post_json(
            &webhook_url(&tether),
            &forged_start(&format!("u{i}@x.com-p"), &cloud.ws_url()),
        )
        .await;
        match r.status {
            200 => {
                let _ = app.webhook().await;
            }
            429 => {
                limited += 1;
                let after: u64 = r
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("Retry-After");
                assert!((1..=5).contains(&after), "Retry-After {after}");
            }
            other => panic!("unexpected {other}: {}", r.text()),
        }
    }
    assert!(limited >= 30, "only {limited} of 40 limited");
    assert_eq!(
        tether
            .metric(r#"tether_rate_limited_total{limiter="webhook_source"}"#)
            .await,
        f64::from(limited)
    );
    // The allowance refills: the real cloud's next start goes through.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    real_session_streams(&tether, &cloud, &mut app).await;
}

#[tokio::test]
async fn requests_waiting_on_the_app_are_bounded_and_the_rest_answered_503() {
    // An app that accepts and reads but never answers.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let app_addr = app.local_addr().expect("addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = app.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(tcp);
        }
    });
    let tether = Tether::spawn_yaml(
        "http:\n  max_proxied_in_flight: 2\n",
        &[("TETHER_APP_URL", format!("http://{app_addr}"))],
    )
    .await;
    let url = format!("http://{}/slow", tether.public);
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { http::get(&url).await })
        })
        .collect();
    eventually("both requests to wait on the app", || async {
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    let r = http::get(&url).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    // The admin and local listeners are not affected.
    assert_eq!(
        http::get(&format!("http://{}/livez", tether.admin))
            .await
            .status,
        200
    );
    for w in waiting {
        w.abort();
    }
}

#[tokio::test]
async fn a_local_path_cannot_steer_the_sdk_calls_to_another_host() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    // The fake cloud speaks no HTTP: calls that do go to it give up quickly.
    let tether = tether_for(&cloud, &app, "cloud:\n  http_timeout_ms: 300\n").await;
    let mut c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "alice@example.com-com.example.notes",
    )
    .await;
    let url = c.webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    let prefix = url.trim_end_matches("/app-ws").to_string();
    let stranger = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let at = stranger.local_addr().expect("addr");
    let bearer = format!("Bearer com.example.notes:{API_KEY}");
    for tail in [
        format!("/ws://{at}/api/sdk/simple-storage/alice"),
        format!("/wss:{at}/api/sdk/simple-storage/alice"),
        format!("/\\\\{at}/api/sdk/simple-storage/alice"),
        format!("//{at}/api/sdk/simple-storage/alice"),
    ] {
        let target = format!("{}{tail}", prefix.replacen("ws://", "http://", 1));
        let _ = http::request("GET", &target, &[("authorization", &bearer)], Bytes::new()).await;
    }
    assert!(
        tokio::time::timeout(QUIET, stranger.accept())
            .await
            .is_err(),
        "an SDK call with the API key reached another host"
    );
    streams(&mut c, 0).await;
}
