//! Registration on the app's behalf (DESIGN.md §6), through the real binary against the cloud
//! emulator's registry: start + refresh, a cloud without the API (404), 5xx with backoff, a
//! hanging cloud, and the recovery workflow after Tether itself is SIGKILLed. Loopback only;
//! every wait is bounded by `support::WAIT`.

mod support;

use serde_json::{json, Value};
use support::*;
use tether::sim::cloud::{
    CloudSim, CloudSimConfig, RegistrationAttempt, RegistrationMode, RegistryStats, StartOutcome,
};

/// An emulator that knows the test package, with short lifecycle timings.
fn cloud_config() -> CloudSimConfig {
    CloudSimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        package_name: PACKAGE.into(),
        api_key: API_KEY.into(),
        grace_ms: 300,
        ..CloudSimConfig::default()
    }
}

async fn start_cloud(cfg: CloudSimConfig) -> CloudSim {
    CloudSim::start(cfg).await.expect("start cloud emulator")
}

/// A `registration:` block pointing at `cloud`, plus `extra` lines (indented by the caller).
fn registration_yaml(cloud: &CloudSim, extra: &str) -> String {
    format!(
        "registration:\n  enabled: true\n  url: http://{}/\n{extra}",
        cloud.addr()
    )
}

/// The environment every Tether here gets: the package and its key.
fn identity() -> Vec<(&'static str, String)> {
    vec![
        ("TETHER_API_KEY", API_KEY.into()),
        ("TETHER_PACKAGE_NAME", PACKAGE.into()),
    ]
}

/// `/readyz` (verbose when asked): status and body.
async fn readyz(tether: &Tether, verbose: bool) -> (u16, String) {
    let query = if verbose { "?verbose" } else { "" };
    let r = http::get(&format!("http://{}/readyz{query}", tether.admin)).await;
    (r.status, r.text())
}

/// Waits until the registry has logged at least `n` attempts; returns them.
async fn wait_attempts(cloud: &CloudSim, n: usize) -> Vec<RegistrationAttempt> {
    eventually(&format!("{n} registration attempts"), || async {
        cloud.registry_stats().attempts.len() >= n
    })
    .await;
    cloud.registry_stats().attempts
}

fn outcomes(attempts: &[RegistrationAttempt]) -> Vec<&str> {
    attempts.iter().map(|a| a.outcome.as_str()).collect()
}

fn gaps_ms(attempts: &[RegistrationAttempt]) -> Vec<u64> {
    attempts
        .windows(2)
        .map(|w| w[1].at_ms.saturating_sub(w[0].at_ms))
        .collect()
}

/// A registration request as Tether sends it, for the emulator-only test.
fn register_body(key: &str, server_url: &str) -> Value {
    json!({"packageName": PACKAGE, "apiKey": key, "serverUrl": server_url,
           "version": "9.9.9", "capabilities": {"sessionRecovery": true}})
}

fn assert_key_never_logged(tether: &Tether) {
    let logs = tether.logs();
    assert!(!logs.is_empty());
    assert!(
        logs.iter().all(|l| !l.contains(API_KEY)),
        "the API key leaked into the logs"
    );
}

#[tokio::test]
async fn registers_at_start_then_refreshes_and_is_ready() {
    let cloud = start_cloud(cloud_config()).await;
    let port = free_port();
    let mut env = identity();
    env.push(("TETHER_PUBLIC_LISTEN", format!("127.0.0.1:{port}")));
    let yaml = registration_yaml(&cloud, "  required: true\n  refresh_interval_ms: 300\n");
    let tether = Tether::spawn_yaml(&yaml, &env).await;

    eventually("a first registration and two refreshes", || async {
        cloud.registry_stats().refreshes >= 2
    })
    .await;
    let stats: RegistryStats = cloud.registry_stats();
    assert_eq!(stats.restarts, 0, "one process, one registration id");
    assert_eq!(stats.unauthorized + stats.bad_requests, 0);
    assert_eq!(stats.servers.len(), 1);
    let server = &stats.servers[0];
    assert_eq!(server.package_name, PACKAGE);
    assert_eq!(server.server_url, format!("http://127.0.0.1:{port}"));
    assert_eq!(server.registration_id, "reg-1");
    assert_eq!(server.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(server.capabilities["sessionRecovery"], true);
    assert_eq!(server.registrations, 1 + server.refreshes);
    let attempts = stats.attempts;
    assert_eq!(outcomes(&attempts[..3]), ["ok", "refresh", "refresh"]);
    // Refreshes follow the refresh interval, not a retry backoff.
    for gap in gaps_ms(&attempts) {
        assert!((250..2_000).contains(&gap), "refresh gap {gap} ms");
    }
    assert_eq!(readyz(&tether, false).await, (200, "ok\n".into()));
    assert!(readyz(&tether, true).await.1.contains("[+]registration ok"));
    assert!(
        tether
            .logs()
            .iter()
            .any(|l| l.contains("registered with the cloud") && l.contains("\"reg-1\"")),
        "the first success is logged with its id"
    );
    assert_key_never_logged(&tether);
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_cloud_without_the_api_is_tolerated_unless_registration_is_required() {
    let cloud = start_cloud(CloudSimConfig {
        registration_api: false,
        ..cloud_config()
    })
    .await;
    let optional = Tether::spawn_yaml(
        &registration_yaml(&cloud, "  refresh_interval_ms: 300\n"),
        &identity(),
    )
    .await;
    let attempts = wait_attempts(&cloud, 3).await;
    assert_eq!(outcomes(&attempts[..3]), ["not_found"; 3]);
    // A 404 is not retried with backoff: only at the refresh interval.
    for gap in gaps_ms(&attempts) {
        assert!(gap >= 250, "404 retried after {gap} ms");
    }
    assert_eq!(readyz(&optional, false).await.0, 200);
    let live = http::get(&format!("http://{}/livez", optional.admin)).await;
    assert_eq!(live.status, 200);
    let reports = optional
        .logs()
        .iter()
        .filter(|l| l.contains("no registration API (404)"))
        .count();
    assert_eq!(reports, 1, "the 404 is reported once");
    let unknown = cloud.http_hits().get("not_found").copied().unwrap_or(0);
    assert!(
        unknown >= 3,
        "answered like any unknown route: {unknown} hits"
    );
    drop(optional);

    // The same cloud with the API mounted but answering 404 (the control API's mode).
    let cloud2 = start_cloud(cloud_config()).await;
    cloud2.set_registration_mode(RegistrationMode::NotFound, None);
    let required = Tether::spawn_yaml(
        &registration_yaml(&cloud2, "  required: true\n  refresh_interval_ms: 300\n"),
        &identity(),
    )
    .await;
    wait_attempts(&cloud2, 2).await;
    assert_eq!(readyz(&required, false).await, (503, "not ready\n".into()));
    let (status, body) = readyz(&required, true).await;
    assert_eq!(status, 503);
    assert!(body.contains("[-]registration failed"), "{body}");
    assert!(body.contains("[+]listeners ok"), "{body}");
    assert_eq!(cloud2.registry_stats().registrations, 0);

    // Once the API answers, the next refresh registers and readiness follows.
    cloud2.set_registration_mode(RegistrationMode::Ok, None);
    eventually("readiness after the API appears", || async {
        readyz(&required, false).await.0 == 200
    })
    .await;
    assert_eq!(cloud2.registry_stats().registrations, 1);
    assert_key_never_logged(&required);
    cloud.shutdown().await;
    cloud2.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_registered() {
    let cloud = start_cloud(cloud_config()).await;
    cloud.set_registration_mode(RegistrationMode::Error, Some(4));
    let tether = Tether::spawn_yaml(
        &registration_yaml(
            &cloud,
            "  required: true\n  refresh_interval_ms: 60000\n  backoff_max_ms: 1000\n",
        ),
        &identity(),
    )
    .await;
    eventually("registered after the failures", || async {
        readyz(&tether, false).await.0 == 200
    })
    .await;
    let stats = cloud.registry_stats();
    assert_eq!(stats.registrations, 1);
    assert_eq!(
        stats.requests, 5,
        "four failures, one success, no refresh yet"
    );
    assert_eq!(
        outcomes(&stats.attempts),
        ["error", "error", "error", "error", "ok"]
    );
    // Full jitter: the n-th retry waits U[0, min(1000, 500 * 2^n)] ms. Each gap stays under its
    // ceiling (plus slack for the request itself), the first retry comes soon, and the
    // retries are not a tight loop (four near-zero draws together are ~1e-6 likely).
    let gaps = gaps_ms(&stats.attempts);
    let ceilings = [500, 1_000, 1_000, 1_000];
    for (gap, ceiling) in gaps.iter().zip(ceilings) {
        assert!(*gap <= ceiling + 300, "gaps {gaps:?} exceed {ceilings:?}");
    }
    let span: u64 = gaps.iter().sum();
    assert!(span >= 100, "retries were not spaced: {gaps:?}");
    assert!(
        tether
            .logs()
            .iter()
            .filter(|l| l.contains("registration attempt failed; retrying with backoff"))
            .count()
            == 1,
        "the failure streak is reported once"
    );
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_hanging_cloud_times_out_and_is_retried() {
    let cloud = start_cloud(cloud_config()).await;
    cloud.set_registration_mode(RegistrationMode::Hang, Some(2));
    let tether = Tether::spawn_yaml(
        &registration_yaml(
            &cloud,
            "  required: true\n  timeout_ms: 200\n  backoff_max_ms: 500\n  refresh_interval_ms: 60000\n",
        ),
        &identity(),
    )
    .await;
    eventually("registered after two timeouts", || async {
        readyz(&tether, false).await.0 == 200
    })
    .await;
    let stats = cloud.registry_stats();
    assert_eq!(outcomes(&stats.attempts), ["hang", "hang", "ok"]);
    // Each hung attempt holds Tether for its whole timeout before the (bounded) retry.
    for gap in gaps_ms(&stats.attempts) {
        assert!((150..=1_200).contains(&gap), "gap {gap} ms");
    }
    assert_eq!(
        tether
            .logs()
            .iter()
            .filter(|l| l.contains("registration attempt timed out"))
            .count(),
        1,
        "the timeout streak is reported once"
    );
    cloud.shutdown().await;
}

#[tokio::test]
async fn the_registry_validates_and_answers_session_queries() {
    let cloud = start_cloud(cloud_config()).await;
    let base = format!("http://{}", cloud.addr());
    let register = format!("{base}/api/tpa/register");

    let r = http::post_json(&register, &register_body("wrong", "http://app:1")).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json(),
        json!({"success": false, "error": "Invalid API key"})
    );
    let r = http::post_json(&register, &json!({"packageName": PACKAGE})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["success"], false);

    let r = http::post_json(&register, &register_body(API_KEY, "http://app:1")).await;
    assert_eq!(r.status, 201);
    let answer = r.json();
    assert_eq!(answer["success"], true);
    assert_eq!(answer["registrationId"], "reg-1");
    assert_eq!(answer["activeSessions"], 0);

    // Renewing with the id is a refresh; without it, a restart with a new id.
    let mut renew = register_body(API_KEY, "http://app:1");
    renew["registrationId"] = json!("reg-1");
    let r = http::post_json(&register, &renew).await;
    assert_eq!(
        (r.status, r.json()["registrationId"].clone()),
        (201, json!("reg-1"))
    );
    let r = http::post_json(&register, &register_body(API_KEY, "http://app:1")).await;
    assert_eq!(r.json()["registrationId"], "reg-2");

    // The control API faults the next answer only.
    let control = format!("{}/registration", cloud.control_url());
    let r = http::post_json(&control, &json!({"mode": "error", "times": 1})).await;
    assert_eq!(r.status, 200);
    let r = http::post_json(&control, &json!({"mode": "sometimes"})).await;
    assert_eq!(r.status, 400);
    let r = http::post_json(&register, &register_body(API_KEY, "http://app:1")).await;
    assert_eq!(r.status, 500);
    let r = http::post_json(&register, &register_body(API_KEY, "http://app:1")).await;
    assert_eq!(r.status, 201);

    let sessions = format!("{base}/api/tpa/sessions?packageName={PACKAGE}");
    assert_eq!(http::get(&sessions).await.status, 401, "no bearer key");
    let bearer = format!("Bearer {API_KEY}");
    let auth = [("authorization", bearer.as_str())];
    let r = http::request("GET", &sessions, &auth, Default::default()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"], 0);
    let r = http::request(
        "GET",
        &format!("{base}/api/tpa/sessions"),
        &auth,
        Default::default(),
    )
    .await;
    assert_eq!(r.status, 400, "packageName is required");

    let view = http::get(&format!("{}/registry", cloud.control_url()))
        .await
        .json();
    assert_eq!(view["requests"], 7);
    assert_eq!(view["registrations"], 4);
    assert_eq!(view["restarts"], 2);
    assert_eq!(view["refreshes"], 1);
    assert_eq!(view["unauthorized"], 1);
    assert_eq!(view["bad_requests"], 1);
    assert_eq!(view["session_queries"], 1);
    assert_eq!(view["servers"][0]["registrations"], 4);
    assert_eq!(view["servers"][0]["version"], "9.9.9");
    cloud.shutdown().await;
}

#[tokio::test]
async fn a_restarted_tether_registers_and_the_cloud_recovers_its_sessions() {
    let port = free_port();
    let cloud = start_cloud(CloudSimConfig {
        webhook_url: Some(format!("http://127.0.0.1:{port}/webhook")),
        // Only the registration workflow may bring the sessions back.
        resurrect: false,
        ..cloud_config()
    })
    .await;
    let app = AppProc::start(&[]).await;
    let mut env = identity();
    env.push(("TETHER_PUBLIC_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("TETHER_APP_URL", app.url()));
    let yaml = registration_yaml(&cloud, "  refresh_interval_ms: 60000\n");
    let first = Tether::spawn_yaml(&yaml, &env).await;
    eventually("the first registration", || async {
        cloud.registry_stats().registrations == 1
    })
    .await;

    let users = ["alice@example.com", "bob@example.com"];
    for user in users {
        let outcome = cloud.start_session(user).await.expect("start");
        assert_eq!(outcome, StartOutcome::Running);
        first.wait_state(&sid(user), "live").await;
    }
    first.kill().await;
    for user in users {
        eventually(&format!("{user}'s app to be lost"), || async {
            cloud
                .stats(&sid(user))
                .is_some_and(|s| s.state == "stopped" && !s.socket_open)
        })
        .await;
    }

    let second = Tether::spawn_yaml(&yaml, &env).await;
    eventually("both sessions to be recovered", || async {
        cloud.registry_stats().recovery_successes == 2
    })
    .await;
    let stats = cloud.registry_stats();
    assert_eq!(stats.restarts, 1, "the second process is a restart");
    assert_eq!(stats.recovery_attempts, 2);
    assert_eq!(
        stats.servers[0].server_url,
        format!("http://127.0.0.1:{port}")
    );
    assert_eq!(stats.servers[0].registration_id, "reg-2");
    for user in users {
        let id = sid(user);
        second.wait_state(&id, "live").await;
        let s = cloud.stats(&id).expect("stats");
        assert_eq!(s.state, "running");
        assert_eq!(s.inits, 2, "a new init through the new Tether");
        assert_eq!((s.recovery_attempts, s.recovery_successes), (1, 1));
        assert_eq!(s.session_webhooks, 2, "the start and the recovery");
        assert_eq!(s.resurrections, 0);
        // Data flows again, end to end.
        eventually(&format!("{user}'s app to re-subscribe"), || async {
            cloud
                .stats(&id)
                .is_some_and(|s| !s.subscriptions.is_empty())
        })
        .await;
        cloud.push_transcriptions(&id, 3).await.expect("push");
        let last = cloud.stats(&id).expect("stats").last_transcription_seq;
        eventually(
            &format!("{user}'s app to get transcription {last}"),
            || async { app.transcriptions(&id).await.contains(&last) },
        )
        .await;
    }
    assert!(
        second
            .logs()
            .iter()
            .any(|l| l.contains("registered with the cloud") && l.contains("\"active_sessions\":2")),
        "the cloud reported both sessions as active"
    );
    assert_key_never_logged(&second);
    cloud.shutdown().await;
}
