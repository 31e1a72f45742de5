//! The admin listener's exposure, through the real binary: the probes and metrics stay open,
//! the data routes (`/sessions`, `/config`) take the admin token as a bearer token when one
//! is configured (401 with a `Bearer` challenge otherwise, counted by reason), user ids in
//! `/sessions` are masked unless `admin.show_user_ids`, a token file and the masking switch
//! reload hot, and `tether status` / `check-config --against` send the token. (Off loopback
//! with no token the routes answer 403; that needs a non-loopback bind, so it is covered by
//! the unit tests of `admin::auth` and `admin::server`.)

mod support;

use bytes::Bytes;
use support::*;

const TOKEN: &str = "tether-admin-test-token-0123456789";
const ALICE: &str = "alice@example.com-com.example.notes";

/// GET `path` on the admin listener with `token` as a bearer token, if any.
async fn admin_get(tether: &Tether, path: &str, token: Option<&str>) -> http::Resp {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    http::request(
        "GET",
        &format!("http://{}{path}", tether.admin),
        &headers,
        Bytes::new(),
    )
    .await
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[tokio::test]
async fn probes_and_metrics_stay_open_and_data_routes_need_the_token() {
    let tether = Tether::spawn(&[("TETHER_ADMIN_TOKEN", TOKEN.into())]).await;
    for open in ["/livez", "/readyz", "/readyz?verbose", "/metrics"] {
        let r = admin_get(&tether, open, None).await;
        assert_eq!(r.status, 200, "{open}: {}", r.text());
    }
    for route in ["/sessions", "/config"] {
        let r = admin_get(&tether, route, None).await;
        assert_eq!(r.status, 401, "{route} without a token: {}", r.text());
        let challenge = r
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok());
        assert_eq!(challenge, Some(r#"Bearer realm="tether-admin""#), "{route}");
        let r = admin_get(&tether, route, Some("not-the-token-at-all")).await;
        assert_eq!(r.status, 401, "{route} with a wrong token");
        let challenge = r
            .headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok());
        assert!(
            challenge.is_some_and(|c| c.contains(r#"error="invalid_token""#)),
            "{route}: {challenge:?}"
        );
        let r = admin_get(&tether, route, Some(TOKEN)).await;
        assert_eq!(r.status, 200, "{route} with the token: {}", r.text());
        assert!(!r.text().contains(TOKEN), "{route} shows the token");
    }
    let config = admin_get(&tether, "/config", Some(TOKEN)).await.json();
    assert_eq!(config["admin.token"], "***");
    assert_eq!(config["admin.show_user_ids"], "true");
    let metrics = tether.metrics().await;
    for (reason, n) in [
        ("missing_token", 2.0),
        ("wrong_token", 2.0),
        ("no_token_configured", 0.0),
    ] {
        let sample = format!(r#"tether_admin_denied_total{{reason="{reason}"}}"#);
        assert!(
            metrics.contains(&sample),
            "{sample} not exported:\n{metrics}"
        );
        assert_eq!(metric_value(&metrics, &sample), n, "{sample}");
    }
    assert!(tether.logs().iter().all(|l| !l.contains(TOKEN)));
}

#[tokio::test]
async fn sessions_mask_user_ids_until_show_user_ids_is_reloaded_on() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let path = config_file("admin:\n  show_user_ids: false\n");
    let path_arg = path.to_str().expect("utf-8 path").to_string();
    let tether = Tether::spawn_with(
        &[
            ("TETHER_APP_URL", app.url()),
            ("TETHER_API_KEY", API_KEY.into()),
            // Clear the harness's unmasking: the file decides here.
            ("TETHER_ADMIN_SHOW_USER_IDS", String::new()),
        ],
        &["--config", &path_arg],
    )
    .await;
    let _session = connect_session(&tether, &cloud, &mut app, ALICE).await;
    let body = admin_get(&tether, "/sessions", None).await;
    assert_eq!(body.status, 200, "loopback without a token is open");
    let rows = body.json()["sessions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rows.len(), 1, "{}", body.text());
    assert_eq!(rows[0]["session_id"], "a***@e***.com-com.example.notes");
    assert_eq!(rows[0]["user_id"], "a***@e***.com");
    assert_eq!(rows[0]["state"], "live");
    for part in ["alice", "example.com-"] {
        assert!(!body.text().contains(part), "{part} in {}", body.text());
    }

    // Hot: the next /sessions after the reload shows the ids as they are.
    std::fs::write(&path, "admin:\n  show_user_ids: true\n").expect("rewrite config");
    tether.signal("HUP");
    eventually("the unmasked row", || async {
        tether.session(ALICE).await.is_some()
    })
    .await;
    let row = tether.session(ALICE).await.expect("row");
    assert_eq!(row["user_id"], "alice@example.com");
}

#[tokio::test]
async fn a_token_file_is_read_at_start_and_again_on_reload() {
    let dir = std::env::temp_dir().join(format!(
        "tether-admin-token-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let yaml = format!("admin:\n  token_file: \"{}\"\n", token_file.display());
    let tether = Tether::spawn_yaml(&yaml, &[]).await;
    assert_eq!(
        admin_get(&tether, "/sessions", Some(TOKEN)).await.status,
        200
    );

    let rotated = "rotated-admin-token-abcdefghijklmnop";
    std::fs::write(&token_file, rotated).expect("rotate");
    tether.signal("HUP");
    eventually("the rotated token to be in force", || async {
        admin_get(&tether, "/sessions", Some(rotated)).await.status == 200
    })
    .await;
    assert_eq!(
        admin_get(&tether, "/sessions", Some(TOKEN)).await.status,
        401
    );
    let logs = tether.logs();
    assert!(
        logs.iter()
            .any(|l| l.contains("the admin token was replaced")),
        "the rotation is logged"
    );
    assert!(logs
        .iter()
        .all(|l| !l.contains(TOKEN) && !l.contains(rotated)));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn status_and_check_config_send_the_token() {
    let tether = Tether::spawn(&[("TETHER_ADMIN_TOKEN", TOKEN.into())]).await;
    let admin = tether.admin.to_string();

    let out = run_tether(&["status", "--admin", &admin], &[]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "status without a token succeeded");
    assert!(
        stderr.contains("401")
            && stderr.contains("--token")
            && stderr.contains("TETHER_ADMIN_TOKEN"),
        "says how to pass the token: {stderr}"
    );

    let out = run_tether(
        &[
            "status",
            "--admin",
            &admin,
            "--token",
            "wrong-token-of-length",
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("refused the admin token"),
        "{}",
        text(&out.stderr)
    );

    let out = run_tether(
        &["status", "--admin", &admin],
        &[("TETHER_ADMIN_TOKEN", TOKEN.into())],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ready; 0 sessions"),
        "{}",
        text(&out.stdout)
    );

    let out = run_tether(
        &["status", "--admin", &admin, "--json", "--token", TOKEN],
        &[],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(r#""sessions""#));

    let file = config_file("session:\n  hold_window_ms: 30000\n");
    let file = file.to_str().expect("utf-8 path");
    let out = run_tether(
        &["check-config", file, "--against", &admin],
        &[("TETHER_ADMIN_TOKEN", TOKEN.into())],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", text(&out.stderr));
    assert!(
        stdout.contains("session.hold_window_ms: 60000 -> 30000"),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN), "{stdout}");

    // The environment's value is not shown in the help.
    let out = run_tether(
        &["status", "--help"],
        &[("TETHER_ADMIN_TOKEN", TOKEN.into())],
    )
    .await;
    let help = text(&out.stdout);
    assert!(help.contains("--token"), "{help}");
    assert!(!help.contains(TOKEN), "{help}");
}
