//! Everything besides the session socket: the public routes reverse-proxied to the app, the
//! SDK's own HTTP calls to the cloud through the local listener, and the cloud's refusal of
//! a wrong API key reaching the app unchanged.

mod support;

use bytes::Bytes;
use futures_util::SinkExt;
use support::*;
use tether::sim::cloud::{ReceivedFrame, StartOutcome};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn public_routes_reach_the_app_with_method_path_query_headers_and_body() {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let r = http::request(
        "PATCH",
        &format!("http://{}/echo/a/b?x=1&y=two%20words", tether.public),
        &[
            ("cookie", "aos_session=u|1|sig"),
            ("authorization", "Bearer alice@example.com:abc"),
            ("x-app-api-key", "5e4d"),
            ("content-type", "text/plain"),
        ],
        Bytes::from_static(b"hello"),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["method"], "PATCH");
    assert_eq!(v["path"], "/echo/a/b");
    assert_eq!(v["query"], "x=1&y=two%20words");
    assert_eq!(v["headers"]["cookie"], "aos_session=u|1|sig");
    assert_eq!(
        v["headers"]["authorization"],
        "Bearer alice@example.com:abc"
    );
    assert_eq!(v["headers"]["x-app-api-key"], "5e4d");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(v["body_len"], 5);
}

#[tokio::test]
async fn a_ten_megabyte_multipart_upload_passes_whole() {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let boundary = "tetherboundary7d1f";
    let mut body = Vec::with_capacity(10 * 1024 * 1024 + 512);
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"requestId\"\r\n\r\nreq-42\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n")
            .as_bytes(),
    );
    body.extend((0..10 * 1024 * 1024).map(|i| (i % 251) as u8));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let len = body.len();
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = http::request(
        "POST",
        &format!("http://{}/photo-upload", tether.public),
        &[("content-type", &ct)],
        Bytes::from(body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["bytes"], len, "every byte arrived");
    assert_eq!(r.json()["requestId"], "req-42");
}

#[tokio::test]
async fn a_websocket_upgrade_on_a_public_route_is_relayed() {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let url = format!("ws://{}/ws-echo", tether.public);
    let (mut ws, resp) = within("upgrade", tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("ping me")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "ping me");
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(next_msg(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.expect("close");
    assert_eq!(
        tether
            .metric(r#"tether_proxy_requests_total{route="upgrade",code="1xx"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn the_sdks_cloud_calls_reach_the_sessions_cloud() {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, None).await;
    let user = "ann@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    let local_url = app.session(&id).await.expect("session")["ws_url"]
        .as_str()
        .expect("ws url")
        .to_string();
    // Simple storage: the SDK swaps the ws scheme for http and keeps the path prefix (§3).
    let base = local_url
        .replacen("ws://", "http://", 1)
        .trim_end_matches("/app-ws")
        .to_string();
    let auth = format!("Bearer {PACKAGE}:{API_KEY}");
    let put = http::request(
        "PUT",
        &format!("{base}/api/sdk/simple-storage/{user}/color"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(br#"{"value":"teal"}"#),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text());
    let get = http::request(
        "GET",
        &format!("{base}/api/sdk/simple-storage/{user}/color"),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(get.json()["data"]["value"], "teal");
    // Settings: the SDK keeps only the host and names the session in the bearer token.
    let host_only = format!("http://{}", tether.local);
    let settings = http::request(
        "GET",
        &format!("{host_only}/appsettings/user/{PACKAGE}"),
        &[("authorization", &format!("Bearer {id}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(settings.status, 200, "{}", settings.text());
    assert_eq!(cloud.http_hits().get("app_settings").copied(), Some(1));
    assert_eq!(cloud.http_hits().get("simple_storage").copied(), Some(2));
    cloud.shutdown().await;
}

#[tokio::test]
async fn speak_urls_built_on_the_local_base_reach_the_phone_as_cloud_urls() {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, None).await;
    let user = "bo@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    let local_url = app.session(&id).await.expect("session")["ws_url"]
        .as_str()
        .expect("ws url")
        .to_string();
    // What speak() builds: forced https, the ws URL minus its scheme and /app-ws (§3).
    let tts = format!(
        "https://{}/api/tts?text=hi",
        local_url
            .trim_start_matches("ws://")
            .trim_end_matches("/app-ws")
    );
    let frame = serde_json::json!({"type":"audio_play_request","requestId":"r1","audioUrl":tts,"packageName":PACKAGE});
    let r = http::post_json(&format!("{}/sim/sessions/{}/raw", app.url(), id), &frame).await;
    assert!(r.status < 300, "{}", r.text());
    eventually("the request at the cloud", || async {
        cloud.received(&id).iter().any(|f| matches!(f, ReceivedFrame::Json { value, .. } if value["type"] == "audio_play_request"))
    })
    .await;
    let got = cloud
        .received(&id)
        .into_iter()
        .find_map(|f| match f {
            ReceivedFrame::Json { value, .. } if value["type"] == "audio_play_request" => {
                Some(value)
            }
            _ => None,
        })
        .expect("frame");
    assert_eq!(
        got["audioUrl"],
        format!("http://{}/api/tts?text=hi", cloud.addr())
    );
    assert_eq!(got["requestId"], "r1");
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_wrong_api_key_reaches_the_app_as_the_clouds_error_and_1008() {
    let app = AppProc::start(&["--api-key", &"0".repeat(64)]).await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, None).await;
    let user = "cy@example.com";
    let id = sid(user);
    let outcome = cloud.start_session(user).await.expect("start");
    assert_ne!(outcome, StartOutcome::Running);
    eventually("the app to record the refusal", || async {
        app.session(&id)
            .await
            .is_some_and(|s| s["closes"].as_array().is_some_and(|c| !c.is_empty()))
    })
    .await;
    let s = app.session(&id).await.expect("session");
    assert_eq!(s["connection_errors"][0], "INVALID_API_KEY");
    assert_eq!(s["closes"][0]["code"], 1008);
    assert_eq!(s["closes"][0]["reason"], "Invalid API key");
    cloud.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_on_an_unknown_local_path_is_refused() {
    let tether = Tether::spawn(&[]).await;
    let url = format!("ws://{}/c/00000000/app-ws", tether.local);
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect_err("unknown cloud id");
    assert!(err.to_string().contains("502"), "{err}");
}
