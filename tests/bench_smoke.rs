//! Smoke test of `tether bench`: every benchmark runs end to end through the real binary on
//! loopback, with small counts, and prints JSON with the expected keys. Timing figures are
//! only checked for being present and non-negative: the machine is shared, so no timing
//! is asserted. The recovery and cloud runs must lose no frame and never make the cloud
//! resurrect.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::process::Command;

/// Bound on each bench run.
const RUN_BOUND: Duration = Duration::from_secs(120);

/// Runs `tether bench <args>` and parses its stdout as one JSON object.
async fn bench(args: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.arg("bench")
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("start tether bench");
    let out = match tokio::time::timeout(RUN_BOUND, child.wait_with_output()).await {
        Ok(out) => out.expect("bench output"),
        Err(_) => panic!("tether bench {args:?} ran past {RUN_BOUND:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tether bench {args:?} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

/// The number at `path` (JSON pointer), which must exist and be >= 0.
fn non_negative(v: &Value, path: &str) -> f64 {
    let x = v
        .pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path} in {v:#}"));
    assert!(x >= 0.0, "{path} = {x} is negative");
    x
}

#[tokio::test]
async fn relay_bench_reports_both_paths() {
    let v = bench(&["relay", "--iterations", "200", "--json"]).await;
    assert_eq!(v["bench"], "relay");
    for path in ["direct", "tether"] {
        for stat in ["p50", "p95", "p99", "max", "mean"] {
            non_negative(&v, &format!("/rtt_us/{path}/{stat}"));
        }
        assert_eq!(non_negative(&v, &format!("/rtt_us/{path}/n")), 200.0);
    }
    for key in ["/added_us/p50", "/added_us/p99"] {
        assert!(v.pointer(key).and_then(Value::as_f64).is_some(), "no {key}");
    }
    non_negative(&v, "/ratio/p50");
    non_negative(&v, "/ratio/p99");
    let kinds = v["throughput_fps"]
        .as_array()
        .expect("throughput_fps array");
    let names: Vec<&str> = kinds.iter().filter_map(|k| k["kind"].as_str()).collect();
    assert_eq!(names, ["down_text", "down_binary", "up_text", "up_binary"]);
    for k in kinds {
        for key in ["direct", "tether", "ratio"] {
            assert!(k[key].as_f64().is_some_and(|x| x > 0.0), "{key} of {k}");
        }
    }
    if !v["memory"].is_null() {
        assert!(v["memory"]["sessions"].as_u64().is_some_and(|n| n > 0));
        for key in [
            "direct_kib_per_session",
            "tether_kib_per_session",
            "tether_added_kib_per_session",
        ] {
            assert!(v["memory"][key].as_f64().is_some(), "memory.{key}");
        }
    }
    non_negative(&v, "/runtime_s");
}

#[tokio::test]
async fn recovery_bench_loses_nothing() {
    let v = bench(&["recovery", "--cycles", "2", "--sessions", "2", "--json"]).await;
    assert_eq!(v["bench"], "recovery");
    assert!(
        v["failure"].is_null(),
        "the run stopped early: {}",
        v["failure"]
    );
    assert_eq!(v["completed_cycles"], 2);
    // Two sessions, each recovered once per cycle.
    assert_eq!(non_negative(&v, "/listen_to_replayed_ms/n"), 4.0);
    assert_eq!(non_negative(&v, "/kill_to_all_replayed_ms/n"), 2.0);
    for m in [
        "listen_to_replayed_ms",
        "kill_to_all_replayed_ms",
        "spawn_to_listen_ms",
    ] {
        for stat in ["p50", "p95", "p99", "max"] {
            non_negative(&v, &format!("/{m}/{stat}"));
        }
    }
    assert_eq!(non_negative(&v, "/tether_recovery/count"), 4.0);
    non_negative(&v, "/tether_recovery/mean_ms");
    non_negative(&v, "/target_p95_ms");
    assert!(
        non_negative(&v, "/frames/checked") > 0.0,
        "no frame was verified: {v:#}"
    );
    assert_eq!(v["frames"]["lost"], 0, "{v:#}");
    assert_eq!(v["frames"]["duplicated"], 0, "{v:#}");
    assert_eq!(v["cloud"]["resurrections"], 0, "{v:#}");
    assert_eq!(v["cloud"]["app_disconnects"], 0, "{v:#}");
    non_negative(&v, "/tether_frames_dropped");
    non_negative(&v, "/runtime_s");
}

#[tokio::test]
async fn cloud_bench_heals_without_loss() {
    let v = bench(&[
        "cloud",
        "--drops",
        "3",
        "--sessions",
        "2",
        "--hb-secs",
        "2",
        "--json",
    ])
    .await;
    assert_eq!(v["bench"], "cloud");
    assert!(
        v["failure"].is_null(),
        "the drops stopped early: {}",
        v["failure"]
    );
    assert_eq!(v["completed_drops"], 3, "{v:#}");
    assert_eq!(non_negative(&v, "/drop_to_reinit_ms/n"), 3.0);
    for stat in ["p50", "p95", "p99", "max", "mean"] {
        non_negative(&v, &format!("/drop_to_reinit_ms/{stat}"));
        non_negative(&v, &format!("/tether_reacked/per_drop_ms/{stat}"));
    }
    non_negative(&v, "/tether_reacked/count");
    non_negative(&v, "/tether_reacked/mean_ms");
    non_negative(&v, "/target_p95_ms");
    assert!(
        non_negative(&v, "/frames/numbered") > 0.0,
        "no frame was numbered: {v:#}"
    );
    for key in [
        "received",
        "missing",
        "dropped_by_cloud",
        "duplicates",
        "out_of_order",
    ] {
        non_negative(&v, &format!("/frames/{key}"));
    }
    assert_eq!(v["frames"]["lost_by_tether"], 0, "{v:#}");
    assert_eq!(v["cloud"]["resurrections"], 0, "{v:#}");
    for key in ["superseded_close_hazards", "inits", "frames_dropped"] {
        non_negative(&v, &format!("/cloud/{key}"));
    }
    non_negative(&v, "/app/reconnect_attempts");
    let runs = v["heartbeat"]["runs"].as_array().expect("heartbeat runs");
    assert_eq!(runs.len(), 2, "{v:#}");
    for (i, run) in runs.iter().enumerate() {
        for key in [
            "heartbeat_interval_ms",
            "sent_bytes",
            "heartbeat_bytes",
            "stream_bytes",
            "heartbeat_bytes_per_session_hour",
            "stream_bytes_per_session_hour",
            "share_pct",
            "nominal_share_pct",
        ] {
            non_negative(&v, &format!("/heartbeat/runs/{i}/{key}"));
        }
        assert!(
            run["stream_bytes"].as_f64().is_some_and(|b| b > 0.0),
            "no stream measured: {run:#}"
        );
    }
    non_negative(&v, "/heartbeat/target_share_pct");
    non_negative(&v, "/runtime_s");
}
