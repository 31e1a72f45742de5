//! `tether status` against a running binary: the header (readiness, sessions by state), one
//! row per session with its figures, `--json`, and a clear failure when nothing answers.

mod support;

use futures_util::SinkExt;
use support::*;
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

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test]
async fn status_prints_readiness_and_one_row_per_session() {
    let (tether, cloud, mut app) = setup().await;
    let live = "alice@example.com-com.example.notes";
    let held = "bob@example.com-com.example.notes";
    let mut a = connect_session(&tether, &cloud, &mut app, live).await;
    a.app_ws
        .send(Message::text(r#"{"type":"display_event","view":"main"}"#))
        .await
        .expect("send up");
    assert_eq!(
        next_text(&mut a.cloud_ws).await,
        r#"{"type":"display_event","view":"main"}"#
    );
    // The second session's app goes away without a close; the cloud's frames are buffered.
    let b = connect_session(&tether, &cloud, &mut app, held).await;
    let mut b_cloud = b.cloud_ws;
    drop(b.app_ws);
    tether.wait_state(held, "app_down").await;
    for i in 0..3 {
        let f = format!(r#"{{"type":"data_stream","streamType":"transcription:en-US","seq":{i}}}"#);
        b_cloud.send(Message::text(f)).await.expect("send down");
    }
    eventually("three frames buffered", || async {
        tether
            .session(held)
            .await
            .is_some_and(|r| r["buffered_frames"] == 3)
    })
    .await;

    let admin = tether.admin.to_string();
    let out = run_tether(&["status", "--admin", &admin], &[]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "status failed: {stderr}{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("Tether at {admin}: ready; 2 sessions (1 live, 1 app_down)").as_str()),
        "{stdout}"
    );
    assert!(
        lines.get(1).is_some_and(|l| l.starts_with("SESSION")),
        "{stdout}"
    );
    let row = |id: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no row for {id}:\n{stdout}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    // SESSION STATE AGE UP DOWN BUFFERED [(bytes)] OLDEST RECOVERIES LAST-RECOVERY
    let r = row(live);
    assert_eq!(r[1], "live", "{stdout}");
    assert!(r[2].ends_with('s'), "age humanised: {stdout}");
    assert_eq!(
        (r[3], r[4]),
        ("2", "1"),
        "init + one frame up, ack down: {stdout}"
    );
    assert_eq!(&r[5..], ["-", "-", "0", "-"], "{stdout}");
    let r = row(held);
    assert_eq!(r[1], "app_down", "{stdout}");
    assert_eq!(r[5], "3", "three frames buffered: {stdout}");
    assert!(
        r[6].starts_with('(') && r[7].ends_with("B)"),
        "bytes: {stdout}"
    );
    assert!(r[8].ends_with('s'), "oldest buffered age: {stdout}");
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(!stdout.contains(API_KEY) && !stderr.contains(API_KEY));
}

#[tokio::test]
async fn status_json_prints_the_sessions_document() {
    let (tether, cloud, mut app) = setup().await;
    let id = "carol@example.com-com.example.notes";
    let _c = connect_session(&tether, &cloud, &mut app, id).await;
    tether.wait_state(id, "live").await;
    // The address may come from the environment, with a scheme.
    let out = run_tether(
        &["status", "--json"],
        &[("TETHER_ADMIN_URL", format!("http://{}", tether.admin))],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("status --json is JSON");
    let rows = v["sessions"].as_array().expect("sessions array");
    assert_eq!(rows.len(), 1, "{v}");
    assert_eq!(rows[0]["session_id"], id);
    assert_eq!(rows[0]["state"], "live");
    assert!(!stdout.contains(API_KEY));
}

#[tokio::test]
async fn status_fails_clearly_when_tether_is_not_there() {
    let addr = format!("127.0.0.1:{}", free_port());
    let t0 = tokio::time::Instant::now();
    let out = run_tether(&["status", "--admin", &addr], &[]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "status succeeded against nothing");
    assert!(
        stderr.contains(&addr) && stderr.contains("cannot reach"),
        "the error names the address: {stderr}"
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[tokio::test]
async fn status_gives_up_on_an_admin_port_that_never_answers() {
    // Accepts and never answers: the 3 s timeout, not the test's, ends the wait.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let t0 = tokio::time::Instant::now();
    let out = run_tether(&["status", "--admin", &addr], &[]).await;
    let took = t0.elapsed();
    hold.abort();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&addr) && stderr.contains("within"),
        "{stderr}"
    );
    assert!(took < std::time::Duration::from_secs(6), "took {took:?}");
}
