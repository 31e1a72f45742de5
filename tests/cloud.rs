//! Surviving the cloud: a dropped or blackholed cloud socket is healed before the cloud's
//! grace runs out, a refused re-init is healed by the cloud's own resurrection, and
//! duplicate webhooks never reach the app. The app sees none of it.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tether::sim::cloud::StartOutcome;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Seqs missing from a strictly increasing list between its first and last element.
fn gaps(seqs: &[u64]) -> u64 {
    match (seqs.first(), seqs.last()) {
        (Some(a), Some(b)) => b - a + 1 - seqs.len() as u64,
        _ => 0,
    }
}

async fn stack(yaml: &str) -> (AppProc, Tether, tether::sim::cloud::CloudSim) {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn_yaml(yaml, &[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, Some(20)).await;
    (app, tether, cloud)
}

/// The app simulator's view must show one connection, never closed, never re-inited.
async fn assert_app_saw_nothing(app: &AppProc, id: &str) {
    let s = app.session(id).await.expect("session");
    assert_eq!(s["inits_sent"], 1, "{s}");
    assert_eq!(s["reconnect_attempts"], 0, "{s}");
    assert_eq!(s["closes"], serde_json::json!([]), "{s}");
    assert_eq!(s["state"], "connected", "{s}");
}

#[tokio::test]
async fn a_dropped_cloud_socket_heals_inside_the_grace_and_the_app_sees_nothing() {
    let (app, tether, cloud) = stack("").await;
    let user = "dan@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    eventually("the stream to flow", || async {
        app.transcriptions(&id).await.len() >= 10
    })
    .await;

    cloud.drop_socket(&id).await.expect("drop");
    eventually("Tether to re-init", || async {
        cloud.stats(&id).is_some_and(|s| s.inits == 2)
    })
    .await;
    let healed_at = cloud.stats(&id).expect("stats").last_transcription_seq;
    eventually("the stream to go on", || async {
        app.transcriptions(&id)
            .await
            .last()
            .is_some_and(|s| *s >= healed_at + 10)
    })
    .await;

    let got = app.transcriptions(&id).await;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates: {got:?}"
    );
    let stats = cloud.stats(&id).expect("stats");
    assert_eq!(
        gaps(&got),
        stats.frames_dropped,
        "only what the cloud itself dropped is missing"
    );
    assert_eq!(stats.resurrections, 0, "healed inside the 5 s grace");
    assert_eq!(stats.app_disconnects, 1);
    assert_app_saw_nothing(&app, &id).await;
    assert_eq!(
        tether
            .metric(r#"tether_cloud_disconnects_total{cause="lost"}"#)
            .await,
        1.0
    );
    assert_eq!(
        tether.metric("tether_cloud_reacked_seconds_count").await,
        1.0
    );
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_blackholed_cloud_socket_is_noticed_by_the_heartbeat_and_replaced() {
    let (app, tether, cloud) =
        stack("cloud:\n  heartbeat_interval_ms: 100\n  heartbeat_misses: 3\n").await;
    let user = "eve@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    eventually("the stream to flow", || async {
        app.transcriptions(&id).await.len() >= 10
    })
    .await;

    let before = cloud.stats(&id).expect("stats").last_transcription_seq;
    cloud.blackhole_socket(&id).await.expect("blackhole");
    eventually("Tether to re-init on a new socket", || async {
        cloud.stats(&id).is_some_and(|s| s.inits == 2)
    })
    .await;
    let after = cloud.stats(&id).expect("stats").last_transcription_seq;
    eventually("the stream to go on", || async {
        app.transcriptions(&id)
            .await
            .last()
            .is_some_and(|s| *s >= after + 10)
    })
    .await;

    let got = app.transcriptions(&id).await;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    // Frames the cloud wrote into the blackhole are gone; everything outside that window arrived.
    let outside: Vec<u64> = got
        .iter()
        .copied()
        .filter(|s| *s <= before || *s > after)
        .collect();
    let first = got[0];
    let last = *got.last().expect("frames");
    let expected: Vec<u64> = (first..=last)
        .filter(|s| *s <= before || *s > after)
        .collect();
    assert_eq!(outside, expected);
    let stats = cloud.stats(&id).expect("stats");
    assert_eq!(stats.resurrections, 0);
    assert_eq!(
        stats.superseded_close_hazards, 0,
        "the dead socket never closed over the new one"
    );
    assert_app_saw_nothing(&app, &id).await;
    assert_eq!(
        tether
            .metric(r#"tether_cloud_disconnects_total{cause="silent"}"#)
            .await,
        1.0
    );
    assert!(
        tether
            .metric(r#"tether_heartbeat_bytes_total{direction="app_to_cloud"}"#)
            .await
            > 0.0
    );
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_refused_re_init_is_healed_by_the_clouds_resurrection_pair() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let id = "fox@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    // A cloud deploy: the socket closes with a code the SDK would reconnect on.
    c.cloud_ws
        .close(Some(CloseFrame {
            code: CloseCode::Error,
            reason: "Internal server error".into(),
        }))
        .await
        .expect("close");
    // Tether re-inits at once; this cloud has dropped the session and refuses.
    let (_, mut second) = cloud.accept().await;
    assert_eq!(next_text(&mut second).await, init_frame(id));
    let refusal = r#"{"type":"tpa_connection_error","code":"APP_NOT_STARTED","message":"App not started for this session"}"#;
    second.send(Message::text(refusal)).await.expect("refuse");
    let _ = second
        .close(Some(CloseFrame {
            code: CloseCode::Policy,
            reason: "App not started for this session".into(),
        }))
        .await;
    tether.wait_state(id, "cloud_down").await;
    // The cloud's resurrection: stop, then start, for the same session.
    let stop = serde_json::json!({"type":"stop_request","sessionId":id,"userId":"fox@example.com","reason":"user_disabled"});
    let r = http::post_json(&format!("http://{}/webhook", tether.public), &stop).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = http::post_json(
        &format!("http://{}/webhook", tether.public),
        &session_request(id, &cloud),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, mut third) = cloud.accept().await;
    assert_eq!(
        next_text(&mut third).await,
        init_frame(id),
        "the same init, under the same app connection"
    );
    third
        .send(Message::text(
            r#"{"type":"tpa_connection_ack","sessionId":"x","settings":[]}"#,
        ))
        .await
        .expect("ack");
    third
        .send(Message::text(r#"{"type":"data_stream","n":1}"#))
        .await
        .expect("data");
    // The app saw none of it: its next frame is the data.
    assert_eq!(
        next_text(&mut c.app_ws).await,
        r#"{"type":"data_stream","n":1}"#
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        app.try_webhook().is_none(),
        "neither the stop nor the start reached the app"
    );
    assert_eq!(
        tether.metric("tether_resurrections_healed_total").await,
        1.0
    );
    assert_eq!(
        tether
            .metric(r#"tether_webhooks_total{type="stop_request",outcome="held"}"#)
            .await,
        1.0
    );
    assert_eq!(
        tether.session(id).await.map(|r| r["state"].clone()),
        Some(serde_json::json!("live"))
    );
}

#[tokio::test]
async fn a_duplicate_session_request_is_absorbed() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let id = "gil@example.com-com.example.notes";
    let mut c = connect_session(&tether, &cloud, &mut app, id).await;
    // The cloud's retry of a slow webhook, one second later (§2.1).
    let r = http::post_json(
        &format!("http://{}/webhook", tether.public),
        &session_request(id, &cloud),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "success");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        app.try_webhook().is_none(),
        "the app never saw the duplicate"
    );
    assert_eq!(
        tether
            .metric("tether_duplicate_webhooks_absorbed_total")
            .await,
        1.0
    );
    // The session is untouched.
    c.cloud_ws
        .send(Message::text(r#"{"type":"data_stream","n":2}"#))
        .await
        .expect("send");
    assert_eq!(
        next_text(&mut c.app_ws).await,
        r#"{"type":"data_stream","n":2}"#
    );
}
