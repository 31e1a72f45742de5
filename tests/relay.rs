//! The relay through the real binary over loopback: webhook rewrite, init/ack, frames both
//! ways in order, close codes, malformed and oversized frames.

mod support;

use bytes::Bytes;
use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

async fn setup() -> (Tether, FakeCloud, FakeApp) {
    let cloud = FakeCloud::bind().await;
    let app = FakeApp::start().await;
    let tether = Tether::spawn(&[
        ("TETHER_APP_URL", app.url()),
        ("TETHER_API_KEY", API_KEY.into()),
    ])
    .await;
    (tether, cloud, app)
}

#[tokio::test]
async fn every_url_field_is_rewritten_to_the_local_listener() {
    let (tether, cloud, mut app) = setup().await;
    let c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "alice@example.com-com.example.notes",
    )
    .await;
    let local = format!("ws://{}/c/", tether.local);
    for field in ["mentraOSWebsocketUrl", "augmentOSWebsocketUrl"] {
        let v = c.webhook[field].as_str().expect(field);
        assert!(
            v.starts_with(&local) && v.ends_with("/app-ws"),
            "{field} = {v}"
        );
    }
    let v3 = c.webhook["websocketUrl"].as_str().expect("websocketUrl");
    assert!(
        v3.starts_with(&local) && v3.ends_with("/ws/miniapp"),
        "{v3}"
    );
    assert_eq!(
        c.webhook["sessionId"],
        "alice@example.com-com.example.notes"
    );
    assert_eq!(c.webhook["userId"], "alice@example.com");
    assert_eq!(
        c.cloud_path, "/app-ws",
        "the cloud is dialled on the path it handed out"
    );
}

#[tokio::test]
async fn thousand_numbered_frames_each_way_arrive_in_order() {
    let (tether, cloud, mut app) = setup().await;
    let Connected {
        mut app_ws,
        mut cloud_ws,
        ..
    } = connect_session(
        &tether,
        &cloud,
        &mut app,
        "bob@example.com-com.example.notes",
    )
    .await;
    const N: u32 = 1000;
    let down = |i: u32| {
        format!(
            r#"{{"type":"data_stream","streamType":"transcription:en-US","data":{{"type":"transcription","seq":{i}}}}}"#
        )
    };
    let up = |i: u32| format!(r#"{{"type":"display_event","view":"main","seq":{i}}}"#);
    let cloud_side = async {
        for i in 0..N {
            cloud_ws
                .send(Message::text(down(i)))
                .await
                .expect("cloud send");
            cloud_ws
                .send(Message::binary(i.to_be_bytes().to_vec()))
                .await
                .expect("cloud send bin");
        }
        let mut got = Vec::new();
        while got.len() < (2 * N) as usize {
            got.push(next_msg(&mut cloud_ws).await);
        }
        (cloud_ws, got)
    };
    let app_side = async {
        for i in 0..N {
            app_ws.send(Message::text(up(i))).await.expect("app send");
            app_ws
                .send(Message::binary((N + i).to_be_bytes().to_vec()))
                .await
                .expect("app send bin");
        }
        let mut got = Vec::new();
        while got.len() < (2 * N) as usize {
            got.push(next_msg(&mut app_ws).await);
        }
        (app_ws, got)
    };
    let ((_, at_cloud), (_, at_app)) = tokio::join!(cloud_side, app_side);
    for i in 0..N {
        let k = (2 * i) as usize;
        assert_eq!(at_app[k], Message::text(down(i)), "cloud->app text #{i}");
        assert_eq!(
            at_app[k + 1],
            Message::binary(i.to_be_bytes().to_vec()),
            "cloud->app binary #{i}"
        );
        assert_eq!(at_cloud[k], Message::text(up(i)), "app->cloud text #{i}");
        assert_eq!(
            at_cloud[k + 1],
            Message::binary((N + i).to_be_bytes().to_vec()),
            "app->cloud binary #{i}"
        );
    }
    let m = tether.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"tether_frames_total{direction="cloud_to_app",kind="data_stream"}"#
        ),
        f64::from(N)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tether_frames_total{direction="app_to_cloud",kind="binary"}"#
        ),
        f64::from(N)
    );
}

#[tokio::test]
async fn cloud_stop_reaches_the_app_with_the_exact_code_and_reason() {
    let (tether, cloud, mut app) = setup().await;
    let mut c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "carol@example.com-com.example.notes",
    )
    .await;
    c.cloud_ws
        .send(Message::text(r#"{"type":"app_stopped","timestamp":"t"}"#))
        .await
        .expect("send");
    c.cloud_ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "App stopped".into(),
        }))
        .await
        .expect("close");
    assert_eq!(
        next_text(&mut c.app_ws).await,
        r#"{"type":"app_stopped","timestamp":"t"}"#
    );
    assert_eq!(
        close_of(&mut c.app_ws).await,
        Some((1000, "App stopped".to_string()))
    );
    eventually("the session to leave /sessions", || async {
        http::get(&format!("http://{}/sessions", tether.admin))
            .await
            .json()["sessions"]
            == serde_json::json!([])
    })
    .await;
}

#[tokio::test]
async fn policy_close_and_session_end_pass_through() {
    let (tether, cloud, mut app) = setup().await;
    for (i, (code, reason)) in [(1008u16, "Invalid API key"), (1001, "User session ended")]
        .into_iter()
        .enumerate()
    {
        let mut c = connect_session(
            &tether,
            &cloud,
            &mut app,
            &format!("d{i}@example.com-com.example.notes"),
        )
        .await;
        c.cloud_ws
            .close(Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            }))
            .await
            .expect("close");
        assert_eq!(
            close_of(&mut c.app_ws).await,
            Some((code, reason.to_string()))
        );
    }
}

#[tokio::test]
async fn an_app_close_without_status_reaches_the_cloud_without_status() {
    let (tether, cloud, mut app) = setup().await;
    let mut c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "erin@example.com-com.example.notes",
    )
    .await;
    // What the SDK's disconnect() does: ws.close() with no code (the cloud sees 1005).
    c.app_ws.close(None).await.expect("close");
    assert_eq!(close_of(&mut c.cloud_ws).await, None);
}

#[tokio::test]
async fn malformed_and_unknown_frames_pass_untouched_and_are_counted() {
    let (tether, cloud, mut app) = setup().await;
    let mut c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "frank@example.com-com.example.notes",
    )
    .await;
    let odd = [
        "{not json at all",
        r#"{"type":"from_the_future","x":1}"#,
        "[1,2,3]",
        "",
    ];
    for f in odd {
        c.cloud_ws.send(Message::text(f)).await.expect("send");
        c.app_ws.send(Message::text(f)).await.expect("send");
    }
    for f in odd {
        assert_eq!(next_text(&mut c.app_ws).await, f);
        assert_eq!(next_text(&mut c.cloud_ws).await, f);
    }
    let m = tether.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"tether_malformed_frames_total{direction="cloud_to_app"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tether_malformed_frames_total{direction="app_to_cloud"}"#
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            r#"tether_frames_total{direction="app_to_cloud",kind="unknown"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn an_oversized_app_frame_closes_its_app_leg_with_1009_and_spares_others() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = Tether::spawn(&[
        ("TETHER_APP_URL", app.url()),
        ("TETHER_MAX_FRAME_BYTES", "4096".into()),
    ])
    .await;
    let mut big = connect_session(
        &tether,
        &cloud,
        &mut app,
        "gina@example.com-com.example.notes",
    )
    .await;
    let mut ok = connect_session(
        &tether,
        &cloud,
        &mut app,
        "hank@example.com-com.example.notes",
    )
    .await;
    big.app_ws
        .send(Message::binary(vec![7u8; 8192]))
        .await
        .expect("send");
    assert_eq!(close_of(&mut big.app_ws).await.map(|c| c.0), Some(1009));
    // Only the app's leg closes (the cloud would have closed it): the session is held for
    // the SDK's reconnect, and the cloud link is kept.
    tether
        .wait_state("gina@example.com-com.example.notes", "app_down")
        .await;
    ok.cloud_ws
        .send(Message::text(r#"{"type":"data_stream","n":1}"#))
        .await
        .expect("send");
    assert_eq!(
        next_text(&mut ok.app_ws).await,
        r#"{"type":"data_stream","n":1}"#
    );
    assert_eq!(
        tether
            .metric(r#"tether_oversized_frames_total{direction="app_to_cloud"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn webhook_without_session_id_gets_a_clear_error() {
    let (tether, _cloud, _app) = setup().await;
    let r = http::post_json(
        &format!("http://{}/webhook", tether.public),
        &serde_json::json!({"type":"session_request","userId":"x@y.z"}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["status"], "error");
    assert!(r.text().contains("sessionId"), "{}", r.text());
    assert_eq!(
        tether
            .metric(r#"tether_webhooks_total{type="session_request",outcome="rejected"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_unreachable_app_gets_the_cloud_a_json_error_at_once() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let cloud = FakeCloud::bind().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", format!("http://127.0.0.1:{port}"))]).await;
    let started = std::time::Instant::now();
    let r = http::post_json(
        &format!("http://{}/webhook", tether.public),
        &session_request("ivy@example.com-com.example.notes", &cloud),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["status"], "error");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "answered inside the cloud's timeout"
    );
    let r = http::request(
        "GET",
        &format!("http://{}/anything", tether.public),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn an_app_that_never_answers_gets_the_cloud_a_timeout_before_its_own() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let cloud = FakeCloud::bind().await;
    let dir = std::env::temp_dir().join(format!("tether-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("slow.yaml");
    std::fs::write(&cfg, "app:\n  webhook_timeout_ms: 400\n").expect("write");
    let tether = Tether::spawn_with(
        &[("TETHER_APP_URL", format!("http://{addr}"))],
        &["--config", cfg.to_str().expect("path")],
    )
    .await;
    let r = http::post_json(
        &format!("http://{}/webhook", tether.public),
        &session_request("jack@example.com-com.example.notes", &cloud),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("400 ms"), "{}", r.text());
    assert_eq!(
        tether
            .metric(r#"tether_webhooks_total{type="session_request",outcome="timeout"}"#)
            .await,
        1.0
    );
    hold.abort();
}

#[tokio::test]
async fn the_api_key_never_reaches_logs_or_admin_output() {
    let (tether, cloud, mut app) = setup().await;
    let _c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "kim@example.com-com.example.notes",
    )
    .await;
    let sessions = http::get(&format!("http://{}/sessions", tether.admin))
        .await
        .text();
    assert!(
        sessions.contains("kim@example.com-com.example.notes"),
        "{sessions}"
    );
    assert!(!sessions.contains(API_KEY));
    assert!(!tether.metrics().await.contains(API_KEY));
    assert!(!tether.logs().join("\n").contains(API_KEY));
}
