//! Surviving app restarts, through the real binaries: the app simulator is a process that
//! is SIGKILLed and restarted; the cloud emulator runs in the test.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tether::sim::cloud::StartOutcome;
use tokio_tungstenite::tungstenite::Message;

async fn stack(
    yaml: &str,
    interval_ms: Option<u64>,
) -> (AppProc, Tether, tether::sim::cloud::CloudSim) {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn_yaml(
        yaml,
        &[
            ("TETHER_APP_URL", app.url()),
            ("TETHER_API_KEY", API_KEY.into()),
        ],
    )
    .await;
    let cloud = cloud_for(tether.public, interval_ms).await;
    (app, tether, cloud)
}

/// Waits until the app has received at least `n` transcriptions on session `id`.
async fn wait_received(app: &AppProc, id: &str, n: usize) {
    eventually(&format!("{n} transcriptions at the app"), || async {
        app.transcriptions(id).await.len() >= n
    })
    .await;
}

#[tokio::test]
async fn a_killed_app_gets_every_frame_sent_after_the_kill_once_and_in_order() {
    let (mut app, tether, cloud) = stack("", Some(20)).await;
    let id = sid("alice@example.com");
    assert_eq!(
        cloud
            .start_session("alice@example.com")
            .await
            .expect("start"),
        StartOutcome::Running
    );
    tether.wait_state(&id, "live").await;
    wait_received(&app, &id, 10).await;

    app.kill().await;
    let kill_seq = cloud.stats(&id).expect("stats").last_transcription_seq;
    tether.wait_state(&id, "app_down").await;
    eventually("frames to be buffered", || async {
        tether
            .session(&id)
            .await
            .is_some_and(|r| r["buffered_frames"].as_u64().unwrap_or(0) >= 10)
    })
    .await;

    app.restart().await;
    tether.wait_state(&id, "live").await;
    let target = cloud.stats(&id).expect("stats").last_transcription_seq + 10;
    eventually("the stream to go on past the replay", || async {
        app.transcriptions(&id)
            .await
            .last()
            .is_some_and(|s| *s >= target)
    })
    .await;

    let got = app.transcriptions(&id).await;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {got:?}"
    );
    let last = *got.last().expect("frames");
    let after_kill: Vec<u64> = got.iter().copied().filter(|s| *s > kill_seq).collect();
    let expected: Vec<u64> = (kill_seq + 1..=last).collect();
    assert_eq!(
        after_kill, expected,
        "every frame sent after the kill, exactly once"
    );

    let stats = cloud.stats(&id).expect("stats");
    assert_eq!(stats.app_disconnects, 0, "the cloud never saw the app go");
    assert_eq!(stats.resurrections, 0);
    assert_eq!(
        stats.inits, 1,
        "the restarted app's init was answered locally"
    );
    assert_eq!(
        stats.session_webhooks, 1,
        "the cloud sent no second webhook"
    );
    let row = tether.session(&id).await.expect("row");
    assert_eq!(row["recoveries"], 1);
    assert_eq!(
        tether
            .metric(r#"tether_recoveries_total{outcome="replayed"}"#)
            .await,
        1.0
    );
    assert_eq!(
        tether
            .metric(r#"tether_webhook_refires_total{outcome="accepted"}"#)
            .await,
        1.0
    );
    cloud.shutdown().await;
}

#[tokio::test]
async fn the_hold_window_expires_and_the_cloud_takes_over() {
    let (mut app, tether, cloud) = stack("session:\n  hold_window_ms: 800\n", Some(50)).await;
    let id = sid("bob@example.com");
    assert_eq!(
        cloud.start_session("bob@example.com").await.expect("start"),
        StartOutcome::Running
    );
    tether.wait_state(&id, "live").await;
    wait_received(&app, &id, 2).await;
    app.kill().await;
    tether.wait_state(&id, "app_down").await;
    eventually("the session to end", || async {
        tether.session(&id).await.is_none()
    })
    .await;
    eventually("the cloud to see the link close", || async {
        cloud.stats(&id).is_some_and(|s| s.app_disconnects == 1)
    })
    .await;
    assert_eq!(
        tether
            .metric(r#"tether_session_ends_total{reason="hold_expired"}"#)
            .await,
        1.0
    );
    assert_eq!(
        tether
            .metric(r#"tether_recoveries_total{outcome="expired"}"#)
            .await,
        1.0
    );
    let m = tether.metrics().await;
    let dropped = metric_value(
        &m,
        r#"tether_frames_dropped_total{stream="transcription",reason="hold_expired"}"#,
    );
    assert!(
        dropped >= 1.0,
        "buffered frames are counted when the hold gives up:\n{m}"
    );
    cloud.shutdown().await;
}

#[tokio::test]
async fn an_intentional_stop_passes_straight_through() {
    // A long intent window: only the stop_request can end the session quickly.
    let (app, tether, cloud) = stack("session:\n  intent_window_ms: 30000\n", None).await;
    let id = sid("carol@example.com");
    assert_eq!(
        cloud
            .start_session("carol@example.com")
            .await
            .expect("start"),
        StartOutcome::Running
    );
    tether.wait_state(&id, "live").await;
    cloud.stop_session(&id).await.expect("stop");
    eventually("the session to end at once", || async {
        tether.session(&id).await.is_none()
    })
    .await;
    let s = cloud.stats(&id).expect("stats");
    assert_eq!(s.stop_webhooks, 1);
    assert_eq!(s.resurrections, 0);
    eventually("the app to stop the session", || async {
        app.session(&id)
            .await
            .is_some_and(|s| s["state"] == "stopped")
    })
    .await;
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_user_session_end_reaches_the_app_exactly() {
    let (app, tether, cloud) = stack("", None).await;
    let id = sid("dave@example.com");
    assert_eq!(
        cloud
            .start_session("dave@example.com")
            .await
            .expect("start"),
        StartOutcome::Running
    );
    tether.wait_state(&id, "live").await;
    cloud
        .end_user_session("dave@example.com")
        .await
        .expect("end");
    eventually("the app to record the close", || async {
        app.session(&id)
            .await
            .is_some_and(|s| s["closes"].as_array().is_some_and(|c| !c.is_empty()))
    })
    .await;
    let s = app.session(&id).await.expect("session");
    assert_eq!(s["closes"][0]["code"], 1000);
    assert_eq!(s["closes"][0]["reason"], "User session ended");
    assert_eq!(
        s["state"], "terminated",
        "the SDK does not reconnect after a session end"
    );
    eventually("the session to end", || async {
        tether.session(&id).await.is_none()
    })
    .await;
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_webhook_that_arrives_while_the_app_is_down_waits_for_it() {
    let (mut app, tether, cloud) = stack("", None).await;
    app.kill().await;
    eventually("Tether to see the app down", || async {
        tether.metric("tether_app_healthy").await == 0.0
    })
    .await;
    let restart = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        app.restart().await;
    };
    let (outcome, ()) = tokio::join!(cloud.start_session("erin@example.com"), restart);
    assert_eq!(outcome.expect("start"), StartOutcome::Running);
    let s = cloud.stats(&sid("erin@example.com")).expect("stats");
    assert_eq!(
        s.webhooks_sent, 1,
        "one POST, held by Tether until the app was back"
    );
    assert_eq!(
        tether
            .metric(r#"tether_webhooks_total{type="session_request",outcome="held"}"#)
            .await,
        1.0
    );
    cloud.shutdown().await;
}

/// Raw peers for the frame-level cases below.
async fn raw_stack(yaml: &str) -> (Tether, FakeCloud, FakeApp) {
    let cloud = FakeCloud::bind().await;
    let app = FakeApp::start().await;
    let tether = Tether::spawn_yaml(yaml, &[("TETHER_APP_URL", app.url())]).await;
    (tether, cloud, app)
}

const SUB: &str =
    r#"{"type":"subscription_update","subscriptions":["transcription:en-US","audio_chunk"]}"#;

fn tx(n: u32) -> String {
    format!(
        r#"{{"type":"data_stream","streamType":"transcription:en-US","data":{{"type":"transcription","isFinal":true,"seq":{n}}}}}"#
    )
}

/// Opens a new app socket to the same local URL and sends the same (or another) init.
async fn reconnect(url: &str, session_id: &str, key: &str) -> AppWs {
    let (mut ws, _) = within("reconnect", tokio_tungstenite::connect_async(url))
        .await
        .expect("connect");
    let init = init_frame(session_id).replace(API_KEY, key);
    ws.send(Message::text(init)).await.expect("init");
    ws
}

#[tokio::test]
async fn an_sdk_reconnect_is_answered_locally_and_gets_what_it_missed() {
    let (tether, cloud, mut app) = raw_stack("").await;
    let id = "fay@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    let url = c.webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    c.app_ws.send(Message::text(SUB)).await.expect("sub");
    assert_eq!(next_text(&mut c.cloud_ws).await, SUB);
    // The app's socket breaks (the process lives on, as when the SDK's link drops).
    drop(c.app_ws);
    tether.wait_state(id, "app_down").await;
    for n in 1..=3 {
        c.cloud_ws.send(Message::text(tx(n))).await.expect("send");
    }
    eventually("3 frames buffered", || async {
        tether
            .session(id)
            .await
            .is_some_and(|r| r["buffered_frames"] == 3)
    })
    .await;
    c.app_ws = reconnect(&url, id, API_KEY).await;
    let ack = next_text(&mut c.app_ws).await;
    assert!(ack.contains("tpa_connection_ack"), "{ack}");
    // The SDK re-sends its full list after a reconnect; unchanged, so the cloud gets nothing.
    c.app_ws.send(Message::text(SUB)).await.expect("sub");
    for n in 1..=3 {
        assert_eq!(next_text(&mut c.app_ws).await, tx(n));
    }
    // Live again both ways; the first thing the cloud sees since is this display.
    c.app_ws
        .send(Message::text(r#"{"type":"display_event","n":1}"#))
        .await
        .expect("send");
    assert_eq!(
        next_text(&mut c.cloud_ws).await,
        r#"{"type":"display_event","n":1}"#
    );
}

#[tokio::test]
async fn a_re_init_with_another_api_key_is_refused_and_the_cloud_link_kept() {
    let (tether, cloud, mut app) = raw_stack("").await;
    let id = "gus@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    let url = c.webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    drop(c.app_ws);
    tether.wait_state(id, "app_down").await;
    let other_key = "0".repeat(64);
    let mut bad = reconnect(&url, id, &other_key).await;
    let err: serde_json::Value = serde_json::from_str(&next_text(&mut bad).await).expect("json");
    assert_eq!(err["type"], "tpa_connection_error");
    assert_eq!(err["code"], "INVALID_API_KEY");
    assert_eq!(
        close_of(&mut bad).await,
        Some((1008, "Invalid API key".to_string()))
    );
    assert_eq!(
        tether.session(id).await.map(|r| r["state"].clone()),
        Some(serde_json::json!("app_down"))
    );
    // The cloud link is untouched: a frame sent now reaches the right app later.
    c.cloud_ws.send(Message::text(tx(7))).await.expect("send");
    c.app_ws = reconnect(&url, id, API_KEY).await;
    assert!(next_text(&mut c.app_ws)
        .await
        .contains("tpa_connection_ack"));
    assert_eq!(next_text(&mut c.app_ws).await, tx(7));
}

#[tokio::test]
async fn a_full_buffer_drops_the_oldest_audio_first_and_counts_it() {
    let (tether, cloud, mut app) = raw_stack("buffer:\n  down_max_frames: 10\n").await;
    let id = "hal@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    let url = c.webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    c.app_ws.send(Message::text(SUB)).await.expect("sub");
    assert_eq!(next_text(&mut c.cloud_ws).await, SUB);
    drop(c.app_ws);
    tether.wait_state(id, "app_down").await;
    // 5 final transcriptions among 20 audio chunks: 25 frames into a 10-frame buffer.
    for i in 0..20u32 {
        c.cloud_ws
            .send(Message::binary(i.to_be_bytes().to_vec()))
            .await
            .expect("audio");
        if i % 4 == 3 {
            c.cloud_ws.send(Message::text(tx(i / 4))).await.expect("tx");
        }
    }
    eventually("the buffer to fill", || async {
        tether
            .metric(r#"tether_frames_dropped_total{stream="audio",reason="overflow"}"#)
            .await
            == 15.0
    })
    .await;
    c.app_ws = reconnect(&url, id, API_KEY).await;
    assert!(next_text(&mut c.app_ws)
        .await
        .contains("tpa_connection_ack"));
    c.app_ws.send(Message::text(SUB)).await.expect("sub");
    let mut texts = Vec::new();
    let mut audio = Vec::new();
    for _ in 0..10 {
        match next_msg(&mut c.app_ws).await {
            Message::Text(t) => texts.push(t.to_string()),
            Message::Binary(b) => {
                audio.push(u32::from_be_bytes(b[..4].try_into().expect("4 bytes")))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        texts,
        (0..5).map(tx).collect::<Vec<_>>(),
        "every final transcription kept, in order"
    );
    assert_eq!(
        audio,
        vec![15, 16, 17, 18, 19],
        "only the newest audio survived"
    );
}
