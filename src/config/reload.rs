//! What a new configuration changes, key by key, and which changes a running Tether can
//! apply at once (limits, timeouts, buffer bounds, log level, the admin token and user-id
//! masking) or only after a restart (the listeners it has bound). The `http.*` timeouts and
//! connection caps are hot: each listener reads them per accepted connection, so they apply
//! to new connections. Pure: the reload loop itself lives with the runtime.

use std::collections::BTreeMap;

use super::Config;

/// Keys whose change needs a restart: sockets are bound once.
pub const RESTART_KEYS: &[&str] = &[
    "listen.public",
    "listen.local",
    "listen.admin",
    "listen.local_advertise",
    "registration.enabled",
    // Read once, when the limiters and the id key are made.
    "limits.webhooks_in_flight",
    "limits.webhook_rate_per_source",
    "limits.webhook_burst_per_source",
    "limits.webhook_rate",
    "limits.webhook_burst",
    "state.dir",
    // Each sizes a semaphore made at start.
    "session.refire_concurrency",
    "http.max_proxied_in_flight",
];

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub key: String,
    pub old: String,
    pub new: String,
    pub needs_restart: bool,
}

impl Config {
    /// Every key with its value as text, secrets masked: for diffs and `GET /config`.
    pub fn entries(&self) -> BTreeMap<String, String> {
        let ms = |d: std::time::Duration| d.as_millis().to_string();
        let opt = |o: Option<String>| o.unwrap_or_else(|| "-".into());
        let c = self;
        [
            ("listen.public", c.listen.public.to_string()),
            ("listen.local", c.listen.local.to_string()),
            ("listen.admin", c.listen.admin.to_string()),
            (
                "listen.local_advertise",
                opt(c.listen.local_advertise.clone()),
            ),
            ("app.url", c.app.url.to_string()),
            ("app.package_name", opt(c.app.package_name.clone())),
            ("app.api_key", c.app.api_key.to_string()),
            ("app.health_path", c.app.health_path.clone()),
            ("app.webhook_timeout_ms", ms(c.app.webhook_timeout)),
            ("app.connect_timeout_ms", ms(c.app.connect_timeout)),
            ("app.request_timeout_ms", ms(c.app.request_timeout)),
            (
                "cloud.ws_url",
                opt(c.cloud.ws_url.as_ref().map(|u| u.to_string())),
            ),
            ("cloud.connect_timeout_ms", ms(c.cloud.connect_timeout)),
            ("cloud.http_timeout_ms", ms(c.cloud.http_timeout)),
            ("cloud.heartbeat", format!("{:?}", c.cloud.heartbeat)),
            (
                "cloud.heartbeat_interval_ms",
                ms(c.cloud.heartbeat_interval),
            ),
            (
                "cloud.heartbeat_misses",
                c.cloud.heartbeat_misses.to_string(),
            ),
            ("cloud.reconnect_base_ms", ms(c.cloud.reconnect_base)),
            ("cloud.reconnect_max_ms", ms(c.cloud.reconnect_max)),
            ("cloud.resurrection_wait_ms", ms(c.cloud.resurrection_wait)),
            ("cloud.stop_hold_ms", ms(c.cloud.stop_hold)),
            (
                "cloud.allowed_origins",
                c.cloud.allowed_origins.patterns().join(","),
            ),
            (
                "limits.max_frame_bytes_up",
                c.limits.max_frame_bytes_up.to_string(),
            ),
            (
                "limits.max_frame_bytes_down",
                c.limits.max_frame_bytes_down.to_string(),
            ),
            (
                "limits.max_webhook_body_bytes",
                c.limits.max_webhook_body_bytes.to_string(),
            ),
            (
                "limits.ws_read_buffer_bytes",
                c.limits.ws_read_buffer_bytes.to_string(),
            ),
            ("limits.init_timeout_ms", ms(c.limits.init_timeout)),
            (
                "limits.max_webhook_record_bytes",
                c.limits.max_webhook_record_bytes.to_string(),
            ),
            (
                "limits.webhooks_in_flight",
                c.limits.webhooks_in_flight.to_string(),
            ),
            (
                "limits.webhook_rate_per_source",
                c.limits.webhook_rate_per_source.to_string(),
            ),
            (
                "limits.webhook_burst_per_source",
                c.limits.webhook_burst_per_source.to_string(),
            ),
            ("limits.webhook_rate", c.limits.webhook_rate.to_string()),
            ("limits.webhook_burst", c.limits.webhook_burst.to_string()),
            (
                "state.dir",
                opt(c.state.dir.as_ref().map(|d| d.display().to_string())),
            ),
            ("session.hold_window_ms", ms(c.session.hold_window)),
            ("session.intent_window_ms", ms(c.session.intent_window)),
            ("session.replay_wait_ms", ms(c.session.replay_wait)),
            (
                "session.app_ping_interval_ms",
                ms(c.session.app_ping_interval),
            ),
            (
                "session.app_ping_misses",
                c.session.app_ping_misses.to_string(),
            ),
            ("session.probe_interval_ms", ms(c.session.probe_interval)),
            ("session.webhook_hold_ms", ms(c.session.webhook_hold)),
            (
                "session.refire_concurrency",
                c.session.refire_concurrency.to_string(),
            ),
            ("buffer.up_max_frames", c.buffer.up_max_frames.to_string()),
            ("buffer.up_max_bytes", c.buffer.up_max_bytes.to_string()),
            ("buffer.up_max_age_ms", ms(c.buffer.up_max_age)),
            (
                "buffer.down_max_frames",
                c.buffer.down_max_frames.to_string(),
            ),
            ("buffer.down_max_bytes", c.buffer.down_max_bytes.to_string()),
            ("buffer.down_max_age_ms", ms(c.buffer.down_max_age)),
            (
                "buffer.global_max_bytes",
                c.buffer.global_max_bytes.to_string(),
            ),
            ("registration.enabled", c.registration.enabled.to_string()),
            (
                "registration.url",
                opt(c.registration.url.as_ref().map(|u| u.to_string())),
            ),
            (
                "registration.server_url",
                opt(c.registration.server_url.clone()),
            ),
            ("registration.required", c.registration.required.to_string()),
            (
                "registration.refresh_interval_ms",
                ms(c.registration.refresh_interval),
            ),
            ("registration.timeout_ms", ms(c.registration.timeout)),
            (
                "registration.backoff_max_ms",
                ms(c.registration.backoff_max),
            ),
            (
                "http.header_read_timeout_ms",
                ms(c.http.header_read_timeout),
            ),
            ("http.body_read_timeout_ms", ms(c.http.body_read_timeout)),
            ("http.idle_timeout_ms", ms(c.http.idle_timeout)),
            ("http.send_timeout_ms", ms(c.http.send_timeout)),
            ("http.upgrade_timeout_ms", ms(c.http.upgrade_timeout)),
            (
                "http.h2_keepalive_interval_ms",
                ms(c.http.h2_keepalive_interval),
            ),
            (
                "http.h2_keepalive_timeout_ms",
                ms(c.http.h2_keepalive_timeout),
            ),
            (
                "http.h2_max_concurrent_streams",
                c.http.h2_max_concurrent_streams.to_string(),
            ),
            (
                "http.max_connections_public",
                c.http.max_connections_public.to_string(),
            ),
            (
                "http.max_connections_local",
                c.http.max_connections_local.to_string(),
            ),
            (
                "http.max_connections_admin",
                c.http.max_connections_admin.to_string(),
            ),
            ("http.max_header_bytes", c.http.max_header_bytes.to_string()),
            (
                "http.max_proxied_in_flight",
                c.http.max_proxied_in_flight.to_string(),
            ),
            ("log.level", c.log.level.clone()),
            ("log.format", format!("{:?}", c.log.format).to_lowercase()),
            ("admin.token", c.admin.token.to_string()),
            ("admin.token_file", opt(c.admin.token_file.clone())),
            ("admin.show_user_ids", c.admin.show_user_ids.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// The keys that differ between two sets of entries.
pub fn diff(old: &BTreeMap<String, String>, new: &BTreeMap<String, String>) -> Vec<Change> {
    new.iter()
        .filter_map(|(key, value)| {
            let before = old.get(key).cloned().unwrap_or_default();
            (before != *value).then(|| Change {
                key: key.clone(),
                old: before,
                new: value.clone(),
                needs_restart: RESTART_KEYS.contains(&key.as_str()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_hot_and_listeners_need_a_restart() {
        let old = Config::from_yaml("").expect("old");
        let new =
            Config::from_yaml("buffer:\n  down_max_frames: 10\nlisten:\n  admin: 127.0.0.1:9999\n")
                .expect("new");
        let changes = diff(&old.entries(), &new.entries());
        assert_eq!(changes.len(), 2, "{changes:?}");
        let frames = changes
            .iter()
            .find(|c| c.key == "buffer.down_max_frames")
            .expect("frames");
        assert_eq!(
            (
                frames.old.as_str(),
                frames.new.as_str(),
                frames.needs_restart
            ),
            ("1000", "10", false)
        );
        assert!(changes
            .iter()
            .any(|c| c.key == "listen.admin" && c.needs_restart));
    }

    #[test]
    fn entries_mask_the_api_key() {
        let c = Config::from_sources(None, "t", &|k| {
            (k == "TETHER_API_KEY").then(|| "supersecret".to_string())
        })
        .expect("cfg");
        let e = c.entries();
        assert_eq!(e.get("app.api_key").map(String::as_str), Some("***"));
        assert!(!format!("{e:?}").contains("supersecret"));
    }

    #[test]
    fn admin_keys_are_listed_masked_and_hot() {
        let old = Config::from_yaml("").expect("old");
        let new = Config::from_sources(Some("admin:\n  show_user_ids: true\n"), "t", &|k| {
            (k == "TETHER_ADMIN_TOKEN").then(|| "a-token-of-enough-length".to_string())
        })
        .expect("new");
        let (before, after) = (old.entries(), new.entries());
        assert_eq!(
            before.get("admin.token").map(String::as_str),
            Some("<unset>")
        );
        assert_eq!(after.get("admin.token").map(String::as_str), Some("***"));
        assert_eq!(after.get("admin.token_file").map(String::as_str), Some("-"));
        assert!(!format!("{after:?}").contains("a-token-of-enough-length"));
        let changes = diff(&before, &after);
        let keys: Vec<&str> = changes.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["admin.show_user_ids", "admin.token"], "{changes:?}");
        assert!(changes.iter().all(|c| !c.needs_restart), "{changes:?}");
    }
}
