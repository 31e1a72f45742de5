//! Prometheus metrics. Labels are bounded enums (direction, frame kind, outcome), never
//! session or user ids. Per-frame counters are resolved once at start, so the relay's hot
//! path increments an atomic and does no label lookup.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::protocol::{Direction, Kind};
use crate::serve::{Listener, Reject, Stage};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirKindLabels {
    direction: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    r#type: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    stream: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProxyLabels {
    route: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    listener: &'static str,
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    listener: &'static str,
    reason: &'static str,
}

/// The connection metrics of one listener, handed to its accept loop and to the handlers
/// that see its timeouts; cheap to clone.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    listener: &'static str,
    /// Connections open now, upgraded ones included.
    pub open: Gauge,
    /// Connections accepted and closed at once because the listener was at its cap.
    pub refused: Counter,
    timeouts: Family<TimeoutLabels, Counter>,
    rejected: Family<RejectLabels, Counter>,
}

/// HTTP status class (`2xx`, `5xx`, ...), a bounded label.
pub fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Every metric Tether exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    frames: Vec<Counter>,
    bytes: [Counter; 2],
    malformed: [Counter; 2],
    oversized: [Counter; 2],
    sessions: Family<StateLabels, Gauge>,
    webhooks: Family<WebhookLabels, Counter>,
    cloud_connect_failures: Family<ReasonLabels, Counter>,
    session_ends: Family<ReasonLabels, Counter>,
    proxy_requests: Family<ProxyLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    recoveries: Family<OutcomeLabels, Counter>,
    refires: Family<OutcomeLabels, Counter>,
    app_disconnects: Family<CauseLabels, Counter>,
    recovery_seconds: Histogram,
    config_reloads: Family<OutcomeLabels, Counter>,
    cloud_disconnects: Family<CauseLabels, Counter>,
    cloud_reconnect_attempts: Counter,
    cloud_reacked_seconds: Histogram,
    resurrections_healed: Counter,
    duplicate_webhooks: Counter,
    app_takeovers: Family<OutcomeLabels, Counter>,
    heartbeat_bytes: [Counter; 2],
    admin_denied: Family<ReasonLabels, Counter>,
    connections_open: Family<ListenerLabels, Gauge>,
    connections_refused: Family<ListenerLabels, Counter>,
    http_timeouts: Family<TimeoutLabels, Counter>,
    http_rejected: Family<RejectLabels, Counter>,
    /// Frames and bytes buffered across sessions; set when scraped.
    pub buffered_frames: Gauge,
    pub buffered_bytes: Gauge,
    /// 1 while the app server's health probe passes.
    pub app_healthy: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tether");
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let frames_family = Family::<DirKindLabels, Counter>::default();
        let mut frames = Vec::with_capacity(2 * Kind::ALL.len());
        for dir in Direction::ALL {
            for kind in Kind::ALL {
                frames.push(
                    frames_family
                        .get_or_create(&DirKindLabels {
                            direction: dir.label(),
                            kind: kind.label(),
                        })
                        .clone(),
                );
            }
        }
        registry.register(
            "frames",
            "WebSocket frames relayed, by direction and kind",
            frames_family,
        );
        let per_dir = |registry: &mut Registry, name: &str, help: &str| -> [Counter; 2] {
            let family = Family::<DirLabels, Counter>::default();
            let counters = Direction::ALL.map(|d| {
                family
                    .get_or_create(&DirLabels {
                        direction: d.label(),
                    })
                    .clone()
            });
            registry.register(name, help, family);
            counters
        };
        let bytes = per_dir(
            &mut registry,
            "bytes",
            "WebSocket payload bytes relayed, by direction",
        );
        let malformed = per_dir(
            &mut registry,
            "malformed_frames",
            "Text frames that are not JSON objects with a type; relayed untouched",
        );
        let oversized = per_dir(
            &mut registry,
            "oversized_frames",
            "Frames over the reading leg's limit (limits.max_frame_bytes_up for app frames, _down for cloud frames); that leg is closed with 1009",
        );
        let sessions = Family::<StateLabels, Gauge>::default();
        registry.register("sessions", "Sessions by state", sessions.clone());
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhooks received from the cloud, by type and outcome",
            webhooks.clone(),
        );
        let cloud_connect_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "cloud_connect_failures",
            "Failed dials of a cloud WebSocket, by reason",
            cloud_connect_failures.clone(),
        );
        let session_ends = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "session_ends",
            "Sessions ended, by reason",
            session_ends.clone(),
        );
        let proxy_requests = Family::<ProxyLabels, Counter>::default();
        registry.register(
            "proxy_requests",
            "HTTP requests reverse-proxied, by route class and status class",
            proxy_requests.clone(),
        );
        let dropped = Family::<DropLabels, Counter>::default();
        registry.register(
            "frames_dropped",
            "Buffered frames given up, by stream class and reason",
            dropped.clone(),
        );
        let recoveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "recoveries",
            "App reconnections after a loss, by outcome",
            recoveries.clone(),
        );
        let refires = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "webhook_refires",
            "Webhooks re-sent to a restarted app, by outcome",
            refires.clone(),
        );
        let app_disconnects = Family::<CauseLabels, Counter>::default();
        registry.register(
            "app_disconnects",
            "App sockets lost while their session was held, by cause",
            app_disconnects.clone(),
        );
        let recovery_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "recovery_seconds",
            "From the app being seen healthy again (or reconnecting) to its first replayed frame",
            recovery_seconds.clone(),
        );
        let buffered_frames = Gauge::default();
        registry.register(
            "buffered_frames",
            "Frames buffered for apps that are away",
            buffered_frames.clone(),
        );
        let buffered_bytes = Gauge::default();
        registry.register(
            "buffered_bytes",
            "Bytes buffered for apps that are away",
            buffered_bytes.clone(),
        );
        let app_healthy = Gauge::default();
        registry.register(
            "app_healthy",
            "1 while the app server's health probe passes",
            app_healthy.clone(),
        );
        let cloud_disconnects = Family::<CauseLabels, Counter>::default();
        registry.register(
            "cloud_disconnects",
            "Cloud links lost and being healed, by cause (closed, lost, silent, oversized)",
            cloud_disconnects.clone(),
        );
        let cloud_reconnect_attempts = Counter::default();
        registry.register(
            "cloud_reconnect_attempts",
            "Dials of a cloud link being healed",
            cloud_reconnect_attempts.clone(),
        );
        let cloud_reacked_seconds = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        registry.register(
            "cloud_reacked_seconds",
            "From a cloud link lost to the re-init acknowledged",
            cloud_reacked_seconds.clone(),
        );
        let resurrections_healed = Counter::default();
        registry.register(
            "resurrections_healed",
            "Sessions the cloud dropped and resurrected, healed under the same app connection",
            resurrections_healed.clone(),
        );
        let duplicate_webhooks = Counter::default();
        registry.register(
            "duplicate_webhooks_absorbed",
            "session_request webhooks for a session Tether already holds, answered without the app",
            duplicate_webhooks.clone(),
        );
        let app_takeovers = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "app_takeovers",
            "Second app sockets for a live session: displaced (the first was closed, the newcomer adopted) or refused (past the per-session bound)",
            app_takeovers.clone(),
        );
        let hb = Family::<DirLabels, Counter>::default();
        let heartbeat_bytes = Direction::ALL.map(|d| {
            hb.get_or_create(&DirLabels {
                direction: d.label(),
            })
            .clone()
        });
        registry.register(
            "heartbeat_bytes",
            "Bytes of Tether's own cloud heartbeats, by direction",
            hb,
        );
        let config_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by outcome (ok, error)",
            config_reloads.clone(),
        );
        let admin_denied = Family::<ReasonLabels, Counter>::default();
        // Present at zero from the start, so an alert on the rate has a series to watch.
        for d in crate::admin::auth::Denial::ALL {
            let _ = admin_denied.get_or_create(&ReasonLabels { reason: d.label() });
        }
        registry.register(
            "admin_denied",
            "Admin data-route requests refused (no_token_configured, missing_token, wrong_token)",
            admin_denied.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "connections_open",
            "Open connections per listener, upgraded ones included",
            connections_open.clone(),
        );
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections accepted and closed at once because their listener was at its cap",
            connections_refused.clone(),
        );
        let http_timeouts = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "http_timeouts",
            "Connections or requests cut because a peer stalled, by listener and stage",
            http_timeouts.clone(),
        );
        let http_rejected = Family::<RejectLabels, Counter>::default();
        registry.register(
            "http_rejected",
            "Requests refused as bad input, by listener and reason",
            http_rejected.clone(),
        );
        // Every listener shows up at 0 before its first connection.
        for which in Listener::ALL {
            let labels = ListenerLabels {
                listener: which.label(),
            };
            let _ = connections_open.get_or_create(&labels);
            let _ = connections_refused.get_or_create(&labels);
        }
        Metrics {
            admin_denied,
            connections_open,
            connections_refused,
            http_timeouts,
            http_rejected,
            config_reloads,
            cloud_disconnects,
            cloud_reconnect_attempts,
            cloud_reacked_seconds,
            resurrections_healed,
            duplicate_webhooks,
            app_takeovers,
            heartbeat_bytes,
            dropped,
            recoveries,
            refires,
            app_disconnects,
            recovery_seconds,
            buffered_frames,
            buffered_bytes,
            app_healthy,
            registry,
            frames,
            bytes,
            malformed,
            oversized,
            sessions,
            webhooks,
            cloud_connect_failures,
            session_ends,
            proxy_requests,
        }
    }

    /// Counts one relayed frame of `len` payload bytes.
    pub fn frame(&self, dir: Direction, kind: Kind, len: usize) {
        let d = dir_index(dir);
        if let Some(c) = self.frames.get(d * Kind::ALL.len() + kind.index()) {
            c.inc();
        }
        self.bytes[d].inc_by(len as u64);
        if kind == Kind::Malformed {
            self.malformed[d].inc();
        }
    }

    /// Counts a frame over the size limit.
    pub fn oversized(&self, dir: Direction) {
        self.oversized[dir_index(dir)].inc();
    }

    /// Moves one session between states (`None` = absent).
    pub fn session_state(&self, from: Option<&'static str>, to: Option<&'static str>) {
        if let Some(s) = from {
            self.sessions.get_or_create(&StateLabels { state: s }).dec();
        }
        if let Some(s) = to {
            self.sessions.get_or_create(&StateLabels { state: s }).inc();
        }
    }

    /// Counts a webhook by type and outcome.
    pub fn webhook(&self, ty: &'static str, outcome: &'static str) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                r#type: ty,
                outcome,
            })
            .inc();
    }

    /// Counts a failed cloud dial.
    pub fn cloud_connect_failure(&self, reason: &'static str) {
        self.cloud_connect_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an ended session.
    pub fn session_end(&self, reason: &'static str) {
        self.session_ends
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts a proxied HTTP request.
    pub fn proxy_request(&self, route: &'static str, status: u16) {
        self.proxy_requests
            .get_or_create(&ProxyLabels {
                route,
                code: code_class(status),
            })
            .inc();
    }

    /// Counts a frame given up.
    pub fn dropped(&self, stream: &'static str, reason: &'static str) {
        self.dropped
            .get_or_create(&DropLabels { stream, reason })
            .inc();
    }

    /// Counts a recovery outcome, with its latency when it succeeded.
    pub fn recovery(&self, outcome: &'static str, latency: Option<std::time::Duration>) {
        self.recoveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
        if let Some(l) = latency {
            self.recovery_seconds.observe(l.as_secs_f64());
        }
    }

    /// Counts a re-sent webhook.
    pub fn refire(&self, outcome: &'static str) {
        self.refires.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts an app socket lost by a held session.
    pub fn app_disconnect(&self, cause: &'static str) {
        self.app_disconnects
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    /// Counts a configuration reload.
    pub fn config_reload(&self, outcome: &'static str) {
        self.config_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts a cloud link lost.
    pub fn cloud_disconnect(&self, cause: &'static str) {
        self.cloud_disconnects
            .get_or_create(&CauseLabels { cause })
            .inc();
    }

    /// Counts a reconnect dial.
    pub fn cloud_reconnect_attempt(&self) {
        self.cloud_reconnect_attempts.inc();
    }

    /// Records a healed cloud link.
    pub fn cloud_reacked(&self, outage: std::time::Duration, resurrected: bool) {
        self.cloud_reacked_seconds.observe(outage.as_secs_f64());
        if resurrected {
            self.resurrections_healed.inc();
        }
    }

    /// Counts a duplicate webhook answered without the app.
    pub fn duplicate_webhook(&self) {
        self.duplicate_webhooks.inc();
    }

    /// Counts a second app socket for a live session (`displaced` or `refused`).
    pub fn app_takeover(&self, outcome: &'static str) {
        self.app_takeovers
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// Counts heartbeat bytes (`Up` = sent to the cloud).
    pub fn heartbeat_bytes(&self, dir: Direction, n: usize) {
        self.heartbeat_bytes[dir_index(dir)].inc_by(n as u64);
    }

    /// Counts a refused admin data-route request.
    pub fn admin_denied(&self, denial: crate::admin::auth::Denial) {
        self.admin_denied
            .get_or_create(&ReasonLabels {
                reason: denial.label(),
            })
            .inc();
    }

    /// The connection metrics of one listener.
    pub fn listener(&self, which: Listener) -> ListenerMetrics {
        let labels = ListenerLabels {
            listener: which.label(),
        };
        ListenerMetrics {
            listener: which.label(),
            open: self.connections_open.get_or_create(&labels).clone(),
            refused: self.connections_refused.get_or_create(&labels).clone(),
            timeouts: self.http_timeouts.clone(),
            rejected: self.http_rejected.clone(),
        }
    }

    /// The registry, for metrics other modules own (registration).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The exposition text (OpenMetrics).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

// === impl ListenerMetrics ===

impl ListenerMetrics {
    /// Counts a connection or request cut because its peer stalled at `stage`.
    pub fn timeout(&self, stage: Stage) {
        self.timeouts
            .get_or_create(&TimeoutLabels {
                listener: self.listener,
                stage: stage.label(),
            })
            .inc();
    }

    /// Counts a request refused as bad input.
    pub fn rejected(&self, reason: Reject) {
        self.rejected
            .get_or_create(&RejectLabels {
                listener: self.listener,
                reason: reason.label(),
            })
            .inc();
    }
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Down => 0,
        Direction::Up => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_counted_under_their_labels() {
        let m = Metrics::new();
        m.frame(Direction::Up, Kind::DisplayEvent, 10);
        m.frame(Direction::Up, Kind::DisplayEvent, 5);
        m.frame(Direction::Down, Kind::Malformed, 3);
        m.webhook("session_request", "ok");
        m.session_state(None, Some("live"));
        let text = m.encode();
        assert!(
            text.contains(
                r#"tether_frames_total{direction="app_to_cloud",kind="display_event"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_bytes_total{direction="app_to_cloud"} 15"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_malformed_frames_total{direction="cloud_to_app"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_webhooks_total{type="session_request",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tether_sessions{state="live"} 1"#),
            "{text}"
        );
    }
}
