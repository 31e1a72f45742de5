//! Anything `tether check-config` accepts, `tether run` accepts: every cloud, app, limits
//! and registration key at the top of its range, then a real session through it.

mod support;

use support::*;

/// The keys at the largest value validation accepts.
const AT_THE_TOP: &str = "\
version: 1
app:
  webhook_timeout_ms: 60000
  connect_timeout_ms: 60000
cloud:
  connect_timeout_ms: 60000
  http_timeout_ms: 300000
  heartbeat_interval_ms: 600000
  heartbeat_misses: 100
  reconnect_base_ms: 60000
  reconnect_max_ms: 300000
  resurrection_wait_ms: 300000
  stop_hold_ms: 60000
  allowed_origins: [\"ws://127.0.0.1:*\", \"wss://*.example.net\", \"[::1]:*\"]
limits:
  max_webhook_body_bytes: 16777216
  init_timeout_ms: 120000
  max_webhook_record_bytes: 1073741824
  webhooks_in_flight: 4096
  webhook_rate_per_source: 1000000
  webhook_burst_per_source: 1000000
  webhook_rate: 1000000
  webhook_burst: 1000000
  max_clouds: 18446744073709551615
registration:
  refresh_interval_ms: 86400000
  timeout_ms: 60000
  backoff_max_ms: 3600000
";

#[tokio::test]
async fn every_key_at_its_bound_runs() {
    let path = config_file(AT_THE_TOP);
    let path = path.to_str().expect("utf-8 path");
    let out = run_tether(&["check-config", path], &[]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = Tether::spawn_yaml(
        AT_THE_TOP,
        &[
            ("TETHER_APP_URL", app.url()),
            ("TETHER_API_KEY", API_KEY.into()),
        ],
    )
    .await;
    let _c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "alice@example.com-com.example.notes",
    )
    .await;
}

#[tokio::test]
async fn one_past_a_bound_is_refused_with_its_key() {
    for (yaml, key) in [
        (
            "cloud:\n  heartbeat_misses: 101\n",
            "cloud.heartbeat_misses",
        ),
        (
            "limits:\n  webhooks_in_flight: 0\n",
            "limits.webhooks_in_flight",
        ),
        (
            "limits:\n  max_webhook_body_bytes: 16777217\n",
            "limits.max_webhook_body_bytes",
        ),
        (
            "cloud:\n  allowed_origins: [\"https://x\"]\n",
            "cloud.allowed_origins",
        ),
        (
            "session:\n  webhook_hold_ms: 9501\n",
            "session.webhook_hold_ms",
        ),
    ] {
        let path = config_file(yaml);
        let out = run_tether(&["check-config", path.to_str().expect("path")], &[]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{yaml}: {err}");
        assert!(err.contains(key), "{yaml}: {err}");
    }
}
