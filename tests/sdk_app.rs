//! The real `@mentra/sdk` 2.1.29 app of `examples/sdk-app`, unmodified, behind the real
//! binary and against the cloud emulator. Needs `npm ci` in `examples/sdk-app` (the README's
//! test command does it). The SDK's start-up version check is pointed at a closed loopback
//! port through the proxy variables, so nothing leaves the machine.

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::*;
use tether::sim::cloud::{ReceivedFrame, StartOutcome};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The SDK app as a child process on a fixed port, restartable.
struct SdkApp {
    child: Option<Child>,
    port: u16,
}

impl SdkApp {
    async fn start() -> SdkApp {
        let mut app = SdkApp {
            child: None,
            port: free_port(),
        };
        app.restart().await;
        app
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/sdk-app");
        assert!(
            dir.join("node_modules/@mentra/sdk").exists(),
            "examples/sdk-app has no node_modules: run `npm ci` there (scripts/test.sh does)"
        );
        let blackhole = "http://127.0.0.1:9";
        let mut cmd = Command::new("node");
        cmd.arg("app.js")
            .current_dir(&dir)
            .env("PORT", self.port.to_string())
            .env("PACKAGE_NAME", PACKAGE)
            .env("MENTRAOS_API_KEY", API_KEY)
            .env("HTTPS_PROXY", blackhole)
            .env("HTTP_PROXY", blackhole)
            .env("https_proxy", blackhole)
            .env("http_proxy", blackhole)
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start node (is Node.js installed?)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        within("the SDK app to listen", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("sdk-app listening") {
                    return;
                }
            }
            panic!("the SDK app exited before listening");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = within("the SDK app to die", child.wait()).await;
        }
    }

    /// Transcription seqs session `id` received in this process, in order.
    async fn transcriptions(&self, id: &str) -> Vec<u64> {
        let v = http::get(&format!("{}/received", self.url())).await.json();
        v["sessions"][id]["transcriptions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect()
    }
}

/// The "seen N" displays the cloud received for session `id`, in order.
fn displays(cloud: &tether::sim::cloud::CloudSim, id: &str) -> Vec<u64> {
    cloud
        .received(id)
        .into_iter()
        .filter_map(|f| match f {
            ReceivedFrame::Json { value, .. } if value["type"] == "display_event" => value
                ["layout"]["text"]
                .as_str()
                .and_then(|t| t.strip_prefix("seen "))
                .and_then(|n| n.parse().ok()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn every_transcription_arrives_in_order_and_every_display_reaches_the_cloud() {
    let app = SdkApp::start().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, Some(20)).await;
    let user = "sdk1@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    eventually("100 transcriptions at the app", || async {
        app.transcriptions(&id).await.len() >= 100
    })
    .await;
    let got = app.transcriptions(&id).await;
    let first = got[0];
    assert_eq!(
        got,
        (first..first + got.len() as u64).collect::<Vec<_>>(),
        "every event, in order"
    );
    let last = *got.last().expect("frames");
    eventually("the displays to reach the cloud", || async {
        displays(&cloud, &id).contains(&last)
    })
    .await;
    let shown = displays(&cloud, &id);
    let upto: Vec<u64> = shown.iter().copied().take_while(|n| *n <= last).collect();
    assert_eq!(
        upto, got,
        "one display per transcription, in order, at the cloud"
    );
    let stats = cloud.stats(&id).expect("stats");
    assert_eq!(stats.frames_dropped, 0);
    assert_eq!(stats.inits, 1);
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_killed_sdk_app_restarted_two_seconds_later_misses_nothing() {
    let mut app = SdkApp::start().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, Some(20)).await;
    let user = "sdk2@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    eventually("the stream to flow", || async {
        app.transcriptions(&id).await.len() >= 20
    })
    .await;

    app.kill().await;
    let kill_seq = cloud.stats(&id).expect("stats").last_transcription_seq;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    app.restart().await;
    let target = kill_seq + 150;
    eventually("the stream to go on after the restart", || async {
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
    let after_kill: Vec<u64> = got.iter().copied().filter(|s| *s > kill_seq).collect();
    let last = *got.last().expect("frames");
    assert_eq!(
        after_kill,
        (kill_seq + 1..=last).collect::<Vec<_>>(),
        "nothing sent after the kill is lost"
    );
    let stats = cloud.stats(&id).expect("stats");
    assert_eq!(stats.app_disconnects, 0, "the cloud never saw the app go");
    assert_eq!(stats.resurrections, 0);
    assert_eq!(
        stats.session_webhooks, 1,
        "no webhook from the cloud was needed"
    );
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_dropped_cloud_link_is_invisible_to_the_sdk_app() {
    let app = SdkApp::start().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, Some(20)).await;
    let user = "sdk3@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    eventually("the stream to flow", || async {
        app.transcriptions(&id).await.len() >= 20
    })
    .await;

    cloud.drop_socket(&id).await.expect("drop");
    eventually("Tether to re-init", || async {
        cloud.stats(&id).is_some_and(|s| s.inits == 2)
    })
    .await;
    let healed = cloud.stats(&id).expect("stats").last_transcription_seq;
    eventually("the stream to go on", || async {
        app.transcriptions(&id)
            .await
            .last()
            .is_some_and(|s| *s >= healed + 20)
    })
    .await;

    let got = app.transcriptions(&id).await;
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicates"
    );
    let missing = got.last().copied().unwrap_or(0) - got[0] + 1 - got.len() as u64;
    let stats = cloud.stats(&id).expect("stats");
    assert_eq!(
        missing, stats.frames_dropped,
        "only the cloud's own drops are missing"
    );
    assert_eq!(stats.resurrections, 0);
    let received = http::get(&format!("{}/received", app.url())).await.json();
    let rec = &received["sessions"][id.as_str()];
    assert_eq!(
        rec["starts"], 1,
        "onSession ran once: the SDK never reconnected"
    );
    assert_eq!(rec["stops"], serde_json::json!([]), "onStop never ran");
    cloud.shutdown().await;
}

#[tokio::test]
async fn forged_webhooks_change_nothing_for_a_real_sdk_session() {
    let app = SdkApp::start().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let cloud = cloud_for(tether.public, Some(20)).await;
    let user = "sdk4@example.com";
    let id = sid(user);
    assert_eq!(
        cloud.start_session(user).await.expect("start"),
        StartOutcome::Running
    );
    eventually("the stream to flow", || async {
        app.transcriptions(&id).await.len() >= 20
    })
    .await;
    // A stranger on loopback but off the allowlist (127.0.0.2), claiming the live session:
    // a stop, a resurrection's start naming itself, random starts, and malformed bodies.
    let attacker = tokio::net::TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let evil = format!("ws://{}/app-ws", attacker.local_addr().expect("addr"));
    let hook = format!("http://{}/webhook", tether.public);
    let stop = serde_json::json!({"type":"stop_request","sessionId":id,"userId":user,"reason":"user_disabled"});
    let start = |sid: &str| {
        serde_json::json!({"type":"session_request","sessionId":sid,"userId":user,
            "mentraOSWebsocketUrl":evil,"augmentOSWebsocketUrl":evil,"websocketUrl":evil})
    };
    assert_eq!(http::post_json(&hook, &stop).await.status, 200);
    assert_eq!(http::post_json(&hook, &start(&id)).await.status, 403);
    for i in 0..50 {
        let r = http::post_json(&hook, &start(&format!("x{i}@evil.example-{PACKAGE}"))).await;
        assert_eq!(r.status, 403);
    }
    for junk in [
        &b"{"[..],
        b"[]",
        b"{\"type\":\"session_request\"}",
        b"\xff\xfe",
    ] {
        let r = http::request(
            "POST",
            &hook,
            &[("content-type", "application/json")],
            bytes::Bytes::from_static(junk),
        )
        .await;
        assert!(
            r.status < 500 || r.status == 502,
            "{}: {}",
            r.status,
            r.text()
        );
    }
    let before = app.transcriptions(&id).await.last().copied().unwrap_or(0);
    eventually("the stream to go on", || async {
        app.transcriptions(&id)
            .await
            .last()
            .is_some_and(|s| *s >= before + 100)
    })
    .await;
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), attacker.accept())
            .await
            .is_err(),
        "the stranger was dialled"
    );
    let got = app.transcriptions(&id).await;
    assert!(
        got.windows(2).all(|w| w[0] + 1 == w[1]),
        "every event, in order"
    );
    let received = http::get(&format!("{}/received", app.url())).await.json();
    let rec = &received["sessions"][id.as_str()];
    assert_eq!(rec["starts"], 1, "onSession ran once");
    assert_eq!(
        rec["stops"],
        serde_json::json!([]),
        "the forged stop never reached onStop"
    );
    let stats = cloud.stats(&id).expect("stats");
    assert_eq!((stats.inits, stats.app_disconnects), (1, 0));
    // The cloud's own stop still ends it, and the app's onStop runs.
    cloud.stop_session(&id).await.expect("stop");
    eventually("onStop to run", || async {
        let v = http::get(&format!("{}/received", app.url())).await.json();
        v["sessions"][id.as_str()]["stops"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    })
    .await;
    cloud.shutdown().await;
}
