//! Hot reload of the real binary: SIGHUP and a changed file apply new limits to live
//! sessions without disturbing them; a bad file is reported and the old config kept;
//! `check-config --against` says what a reload would change.

mod support;

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const SUB: &str = r#"{"type":"subscription_update","subscriptions":["audio_chunk"]}"#;

/// A session held for an app that went away, with `n` audio frames buffered.
async fn held_session(
    yaml: &str,
    id: &str,
) -> (Tether, FakeCloud, FakeApp, Connected, std::path::PathBuf) {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let path = config_file(yaml);
    let tether = Tether::spawn_with(
        &[("TETHER_APP_URL", app.url())],
        &["--config", path.to_str().expect("path")],
    )
    .await;
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    c.app_ws.send(Message::text(SUB)).await.expect("sub");
    assert_eq!(next_text(&mut c.cloud_ws).await, SUB);
    (tether, cloud, app, c, path)
}

async fn config_value(tether: &Tether, key: &str) -> String {
    let v = http::get(&format!("http://{}/config", tether.admin))
        .await
        .json();
    v[key].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn sighup_applies_a_new_buffer_limit_to_a_live_session_without_disturbing_it() {
    let id = "ida@example.com-com.example.notes";
    let (tether, _cloud, _app, mut c, path) =
        held_session("buffer:\n  down_max_frames: 100\n", id).await;
    let url = c.webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    drop(c.app_ws);
    tether.wait_state(id, "app_down").await;
    for i in 0..20u32 {
        c.cloud_ws
            .send(Message::binary(i.to_be_bytes().to_vec()))
            .await
            .expect("send");
    }
    eventually("20 frames buffered", || async {
        tether
            .session(id)
            .await
            .is_some_and(|r| r["buffered_frames"] == 20)
    })
    .await;

    std::fs::write(&path, "buffer:\n  down_max_frames: 5\n").expect("write");
    tether.signal("HUP");
    eventually("the reload to apply", || async {
        tether
            .metric(r#"tether_config_reloads_total{outcome="ok"}"#)
            .await
            >= 1.0
    })
    .await;
    assert_eq!(config_value(&tether, "buffer.down_max_frames").await, "5");
    c.cloud_ws
        .send(Message::binary(20u32.to_be_bytes().to_vec()))
        .await
        .expect("send");
    eventually("the new bound to hold", || async {
        tether
            .session(id)
            .await
            .is_some_and(|r| r["buffered_frames"] == 5)
    })
    .await;
    assert_eq!(
        tether
            .metric(r#"tether_frames_dropped_total{stream="audio",reason="overflow"}"#)
            .await,
        16.0
    );
    // Undisturbed: the session is still held, and the app gets the newest five.
    let (mut back, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("reconnect");
    back.send(Message::text(init_frame(id)))
        .await
        .expect("init");
    assert!(next_text(&mut back).await.contains("tpa_connection_ack"));
    back.send(Message::text(SUB)).await.expect("sub");
    let mut got = Vec::new();
    for _ in 0..5 {
        match next_msg(&mut back).await {
            Message::Binary(b) => got.push(u32::from_be_bytes(b[..4].try_into().expect("4"))),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, vec![16, 17, 18, 19, 20]);
}

#[tokio::test]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let path = config_file("session:\n  hold_window_ms: 60000\n");
    let tether = Tether::spawn_with(&[], &["--config", path.to_str().expect("path")]).await;
    std::fs::write(&path, "session:\n  hold_window_ms: 120000\n").expect("write");
    eventually("the file change to apply", || async {
        config_value(&tether, "session.hold_window_ms").await == "120000"
    })
    .await;
}

#[tokio::test]
async fn a_bad_reload_keeps_the_running_config() {
    let path = config_file("buffer:\n  down_max_frames: 50\n");
    let tether = Tether::spawn_with(&[], &["--config", path.to_str().expect("path")]).await;
    std::fs::write(&path, "buffer:\n  down_max_frames: [oops\n").expect("write");
    tether.signal("HUP");
    eventually("the reload to be rejected", || async {
        tether
            .metric(r#"tether_config_reloads_total{outcome="error"}"#)
            .await
            >= 1.0
    })
    .await;
    assert_eq!(config_value(&tether, "buffer.down_max_frames").await, "50");
    eventually("the rejection to be logged with its position", || {
        let logs = tether.logs().join("\n");
        async move { logs.contains("config reload rejected") && logs.contains("line 2") }
    })
    .await;
    // A listener change is reported, not applied.
    std::fs::write(
        &path,
        "listen:\n  admin: 127.0.0.1:1\nbuffer:\n  down_max_frames: 60\n",
    )
    .expect("write");
    tether.signal("HUP");
    eventually("the good part to apply", || async {
        config_value(&tether, "buffer.down_max_frames").await == "60"
    })
    .await;
    assert_eq!(
        config_value(&tether, "listen.admin").await,
        tether.admin.ip().to_string() + ":0"
    );
}

#[tokio::test]
async fn check_config_says_what_a_reload_would_change() {
    let tether = Tether::spawn(&[]).await;
    let path = config_file("buffer:\n  down_max_frames: 7\nlisten:\n  public: 127.0.0.1:1\n");
    let out = run_tether(
        &[
            "check-config",
            path.to_str().expect("path"),
            "--against",
            &tether.admin.to_string(),
        ],
        &[],
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("buffer.down_max_frames: 1000 -> 7"), "{text}");
    assert!(
        text.contains("listen.public: 127.0.0.1:0 -> 127.0.0.1:1 (needs a restart)"),
        "{text}"
    );
}
