//! Graceful shutdown of the real binary: SIGTERM tells both peers of every session (1001 to
//! the cloud, 1012 to the app), stops accepting, and exits 0 within `--shutdown-grace`; a
//! drain that cannot finish is cut at the grace; a second signal exits at once; readiness
//! fails as soon as shutdown starts.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::SinkExt;
use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Time allowed on top of the grace for process exit and scheduling (a bound, not a target).
const SLACK: Duration = Duration::from_secs(2);

async fn start(grace: &str) -> (Tether, FakeCloud, FakeApp) {
    let cloud = FakeCloud::bind().await;
    let app = FakeApp::start().await;
    let tether = Tether::spawn_with(
        &[
            ("TETHER_APP_URL", app.url()),
            ("TETHER_API_KEY", API_KEY.into()),
        ],
        &["--shutdown-grace", grace],
    )
    .await;
    (tether, cloud, app)
}

/// Makes the session's drain impossible: the cloud stops reading while the app floods it, so
/// Tether's write to the cloud blocks (kernel buffers full) and its session task cannot get
/// to its close. Returns the cloud socket, which the caller must keep (and not read).
async fn wedge_the_cloud_leg(tether: &Tether, c: Connected, id: &str) -> CloudWs {
    let Connected {
        mut app_ws,
        cloud_ws,
        ..
    } = c;
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    // 256 KiB frames, far below the frame limit; 400 of them exceed any loopback buffering.
    let pad = "x".repeat(256 * 1024);
    tokio::spawn(async move {
        for i in 0..400u32 {
            let f = format!(r#"{{"type":"display_event","view":"main","seq":{i},"pad":"{pad}"}}"#);
            if app_ws.send(Message::text(f)).await.is_err() {
                return;
            }
            counter.fetch_add(1, Ordering::Relaxed);
        }
        panic!("400 frames of 256 KiB went through a cloud that reads nothing");
    });
    // Wedged when neither the app's writes nor Tether's relay count move for 500 ms.
    let deadline = Instant::now() + WAIT;
    let mut last = (u64::MAX, u64::MAX);
    let mut still_since = Instant::now();
    loop {
        let up = tether
            .session(id)
            .await
            .and_then(|r| r["frames_up"].as_u64())
            .unwrap_or(0);
        let now = (sent.load(Ordering::Relaxed), up);
        if now != last {
            (last, still_since) = (now, Instant::now());
        } else if now.0 > 0 && still_since.elapsed() >= Duration::from_millis(500) {
            break;
        }
        assert!(Instant::now() < deadline, "the cloud leg never backed up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cloud_ws
}

#[tokio::test]
async fn sigterm_tells_both_peers_and_exits_zero_within_the_grace() {
    let grace = Duration::from_secs(3);
    let (mut tether, cloud, mut app) = start("3s").await;
    let id = "alice@example.com-com.example.notes";
    let Connected {
        mut app_ws,
        mut cloud_ws,
        ..
    } = connect_session(&tether, &cloud, &mut app, id).await;
    tether.wait_state(id, "live").await;
    let (public, local, admin) = (tether.public, tether.local, tether.admin);

    tether.signal("TERM");
    let t0 = Instant::now();
    let (status, to_app, to_cloud) = tokio::join!(
        async {
            let s = tether.wait_exit(grace + SLACK).await;
            (s, t0.elapsed())
        },
        close_of(&mut app_ws),
        close_of(&mut cloud_ws),
    );
    let (status, took) = status;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; logs:\n{}",
        tether.logs().join("\n")
    );
    assert!(took < grace + SLACK, "exit took {took:?}");
    assert_eq!(
        to_cloud.map(|c| c.0),
        Some(1001),
        "the cloud is told Tether is going away"
    );
    assert_eq!(
        to_app.map(|c| c.0),
        Some(1012),
        "the app is told to reconnect later"
    );
    for (name, addr) in [("public", public), ("local", local), ("admin", admin)] {
        assert!(refused(addr).await, "{name} listener {addr} still accepts");
    }
    let logs = tether.logs().join("\n");
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(
        !logs.contains("grace ran out"),
        "a clean drain fits the grace: {logs}"
    );
}

#[tokio::test]
async fn a_session_stuck_on_a_stalled_cloud_does_not_hold_up_the_exit() {
    let grace = Duration::from_secs(5);
    let (mut tether, cloud, mut app) = start("5s").await;
    let id = "bob@example.com-com.example.notes";
    let c = connect_session(&tether, &cloud, &mut app, id).await;
    let _cloud_ws = wedge_the_cloud_leg(&tether, c, id).await;

    tether.signal("TERM");
    let t0 = Instant::now();
    let status = tether.wait_exit(grace + SLACK).await;
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert!(took < grace + SLACK, "exit took {took:?}");
    // The blocked write is abandoned at shutdown, so the session ends inside the grace.
    let logs = tether.logs().join("\n");
    assert!(!logs.contains("shutdown grace ran out"), "{logs}");
}

/// Keeps the drain busy: a public request to an app that accepts and never answers stays
/// in flight, so shutdown waits for it until the grace runs out.
async fn hold_a_request_open() -> (Tether, tokio::task::JoinHandle<()>) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let keeper = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let tether = Tether::spawn_with(
        &[("TETHER_APP_URL", format!("http://{addr}"))],
        &["--shutdown-grace", "30s"],
    )
    .await;
    let url = format!("http://{}/slow", tether.public);
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(60), http::get(&url)).await;
    });
    let public = tether.public;
    eventually("the request to be in flight", || async move {
        // The request holds one connection; the listener still accepts others.
        !refused(public).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    (tether, keeper)
}

#[tokio::test]
async fn a_second_sigterm_during_a_slow_drain_exits_at_once() {
    let (mut tether, keeper) = hold_a_request_open().await;
    tether.signal("TERM");
    let public = tether.public;
    eventually("the public listener to close", || refused(public)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !tether.has_exited(),
        "the drain waits for the request in flight"
    );

    tether.signal("TERM");
    let t0 = Instant::now();
    let status = tether.wait_exit(Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "second signal → exit took {took:?}"
    );
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    // The output reader may still be catching up with the last lines.
    eventually("the second signal to be logged", || {
        let logs = tether.logs().join("\n");
        async move { logs.contains("second signal") }
    })
    .await;
    keeper.abort();
}

#[tokio::test]
async fn readiness_fails_and_new_connections_are_refused_as_soon_as_shutdown_starts() {
    let (mut tether, keeper) = hold_a_request_open().await;
    let readyz = format!("http://{}/readyz", tether.admin);
    assert_eq!(try_get_status(&readyz).await, Ok(200), "ready before");

    tether.signal("TERM");
    let (public, local) = (tether.public, tether.local);
    eventually("the public listener to close", || refused(public)).await;
    assert!(refused(local).await, "the local listener still accepts");
    let during = try_get_status(&readyz).await;
    let still_running = !tether.has_exited();

    tether.signal("TERM");
    let _ = tether.wait_exit(Duration::from_secs(5)).await;
    assert!(
        still_running,
        "tether exited before readiness could be read"
    );
    assert_eq!(
        during,
        Ok(503),
        "while draining, /readyz answers 503 (a refused admin port also hides /metrics and /livez)"
    );
    keeper.abort();
}
