//! Configuration: one YAML file, `TETHER_*` environment overrides on top, validated into a
//! typed [`Config`]. Only [`Config::from_sources`] builds a `Config`, so every value a caller
//! sees has been checked. This module reads files and the environment only when asked to by
//! [`Config::load`]; it starts nothing.

pub mod reload;
mod secret;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::upstream::origins::{AllowList, DEFAULT_ALLOWED};

pub use secret::Secret;

/// The environment variables that override the file, and the key each one replaces.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("TETHER_PUBLIC_LISTEN", "listen.public"),
    ("TETHER_LOCAL_LISTEN", "listen.local"),
    ("TETHER_ADMIN_LISTEN", "listen.admin"),
    ("TETHER_LOCAL_ADVERTISE", "listen.local_advertise"),
    ("TETHER_APP_URL", "app.url"),
    ("TETHER_PACKAGE_NAME", "app.package_name"),
    ("TETHER_API_KEY", "app.api_key (secret)"),
    ("TETHER_API_KEY_FILE", "app.api_key_file"),
    ("TETHER_CLOUD_WS_URL", "cloud.ws_url"),
    (
        "TETHER_CLOUD_ALLOWED_ORIGINS",
        "cloud.allowed_origins (comma-separated)",
    ),
    ("TETHER_STATE_DIR", "state.dir"),
    (
        "TETHER_MAX_FRAME_BYTES",
        "limits.max_frame_bytes (both legs)",
    ),
    ("TETHER_MAX_FRAME_BYTES_UP", "limits.max_frame_bytes_up"),
    ("TETHER_MAX_FRAME_BYTES_DOWN", "limits.max_frame_bytes_down"),
    ("TETHER_ADMIN_TOKEN", "admin.token (secret)"),
    ("TETHER_ADMIN_TOKEN_FILE", "admin.token_file"),
    ("TETHER_ADMIN_SHOW_USER_IDS", "admin.show_user_ids"),
    ("TETHER_LOG_LEVEL", "log.level"),
    ("TETHER_LOG_FORMAT", "log.format"),
];

/// Largest frame read from the app (app -> cloud) by default: the cloud's own limit (16 MiB),
/// so Tether refuses nothing the cloud would take.
pub const DEFAULT_MAX_FRAME_BYTES_UP: usize = 16 * 1024 * 1024;

/// Largest frame read from the cloud (cloud -> app) by default: the SDK's own limit (its `ws`
/// client accepts up to 100 MiB), so Tether refuses nothing the app would take.
pub const DEFAULT_MAX_FRAME_BYTES_DOWN: usize = 100 * 1024 * 1024;

/// Bounds of every frame limit.
const FRAME_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=256 * 1024 * 1024;

/// Upper bounds of the `session:` and `buffer:` counts: far above any sane setting, and low
/// enough that nothing built from them (a semaphore, a product of durations) can fail.
const MAX_REFIRE_CONCURRENCY: usize = 1024;
const MAX_PING_MISSES: u32 = 100;
const MAX_BUFFER_FRAMES: usize = 1_000_000;
/// A session's buffer, per direction.
const MAX_BUFFER_BYTES: usize = 1 << 30;
/// Every buffer together.
const MAX_GLOBAL_BUFFER_BYTES: usize = 64 << 30;

/// Shortest admin token accepted: a short token is guessable over the network.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// Errors found while loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// How Tether keeps the cloud link alive and notices it dying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeartbeatMode {
    /// WebSocket protocol pings (every cloud answers them).
    WsPing,
    /// JSON `{"type":"ping"}`, answered with `pong` by newer clouds.
    JsonPing,
    /// The seed design's `heartbeat` / `heartbeat_ack` messages.
    Seed,
    /// No heartbeat of Tether's own; a dead link is noticed only when it closes.
    Off,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, text otherwise.
    Auto,
    Json,
    Text,
}

/// The file as written: every field optional, unknown keys rejected with their position.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: Option<u32>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    app: RawApp,
    #[serde(default)]
    cloud: RawCloud,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    buffer: RawBuffer,
    #[serde(default)]
    registration: RawRegistration,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    state: RawState,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// Accepted by the parser only to be refused with a message that names the right place:
    /// the token comes from the environment or a file, never from this file.
    token: Option<serde::de::IgnoredAny>,
    token_file: Option<String>,
    show_user_ids: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSession {
    hold_window_ms: Option<u64>,
    intent_window_ms: Option<u64>,
    replay_wait_ms: Option<u64>,
    app_ping_interval_ms: Option<u64>,
    app_ping_misses: Option<u32>,
    probe_interval_ms: Option<u64>,
    webhook_hold_ms: Option<u64>,
    refire_concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    up_max_frames: Option<usize>,
    up_max_bytes: Option<usize>,
    up_max_age_ms: Option<u64>,
    down_max_frames: Option<usize>,
    down_max_bytes: Option<usize>,
    down_max_age_ms: Option<u64>,
    global_max_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    public: Option<String>,
    local: Option<String>,
    admin: Option<String>,
    local_advertise: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    url: Option<String>,
    package_name: Option<String>,
    api_key_file: Option<String>,
    health_path: Option<String>,
    webhook_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    ws_url: Option<String>,
    connect_timeout_ms: Option<u64>,
    http_timeout_ms: Option<u64>,
    heartbeat: Option<HeartbeatMode>,
    heartbeat_interval_ms: Option<u64>,
    heartbeat_misses: Option<u32>,
    reconnect_base_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
    resurrection_wait_ms: Option<u64>,
    stop_hold_ms: Option<u64>,
    allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    enabled: Option<bool>,
    url: Option<String>,
    server_url: Option<String>,
    required: Option<bool>,
    refresh_interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    /// Sets both legs; the per-leg keys win over it.
    max_frame_bytes: Option<usize>,
    max_frame_bytes_up: Option<usize>,
    max_frame_bytes_down: Option<usize>,
    max_webhook_body_bytes: Option<usize>,
    ws_read_buffer_bytes: Option<usize>,
    init_timeout_ms: Option<u64>,
    /// Accepted for older files; cloud ids no longer need a table.
    max_clouds: Option<usize>,
    max_webhook_record_bytes: Option<usize>,
    webhooks_in_flight: Option<usize>,
    webhook_rate_per_source: Option<u32>,
    webhook_burst_per_source: Option<u32>,
    webhook_rate: Option<u32>,
    webhook_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    send_timeout_ms: Option<u64>,
    upgrade_timeout_ms: Option<u64>,
    h2_keepalive_interval_ms: Option<u64>,
    h2_keepalive_timeout_ms: Option<u64>,
    h2_max_concurrent_streams: Option<u32>,
    max_header_bytes: Option<usize>,
    max_connections_public: Option<usize>,
    max_connections_local: Option<usize>,
    max_connections_admin: Option<usize>,
    max_proxied_in_flight: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<LogFormat>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub app: AppConfig,
    pub cloud: CloudConfig,
    pub limits: Limits,
    pub session: SessionConfig,
    pub buffer: BufferConfig,
    pub registration: RegistrationConfig,
    pub log: LogConfig,
    pub state: StateConfig,
    pub admin: AdminConfig,
    pub http: HttpConfig,
}

/// Where Tether keeps what must outlive its process.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateConfig {
    /// `None`: nothing is kept (cloud ids change with every restart).
    pub dir: Option<PathBuf>,
}

/// Who may read the admin listener's data routes (`/sessions`, `/config`) and what they show.
/// `/livez`, `/readyz` and `/metrics` are always open.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Bearer token the data routes require; empty when none is configured (then they are
    /// open on a loopback admin listener and refused elsewhere).
    pub token: Secret,
    /// Where the token was read from, when it came from a file (a mounted Secret).
    pub token_file: Option<String>,
    /// Show user ids in `/sessions` as they are; masked otherwise.
    pub show_user_ids: bool,
}

/// Where Tether listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Reached by the cloud, phones and browsers: `/webhook` and every app route.
    pub public: SocketAddr,
    /// Reached by the app only: its WebSocket and the HTTP calls its SDK derives from it.
    pub local: SocketAddr,
    /// Health, readiness, metrics and the session list.
    pub admin: SocketAddr,
    /// `host:port` written into the webhook URLs handed to the app; `None` = the bound local address.
    pub local_advertise: Option<String>,
}

/// The app server Tether fronts.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The app server's own base URL (scheme, host, port).
    pub url: Url,
    pub package_name: Option<String>,
    pub api_key: Secret,
    pub health_path: String,
    pub webhook_timeout: Duration,
    pub connect_timeout: Duration,
    /// A request proxied to the app gets its response head within this; the body then
    /// streams without a bound.
    pub request_timeout: Duration,
}

/// The cloud side.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Used when a webhook carries no WebSocket URL, and for app calls that name no cloud.
    pub ws_url: Option<Url>,
    pub connect_timeout: Duration,
    pub http_timeout: Duration,
    pub heartbeat: HeartbeatMode,
    pub heartbeat_interval: Duration,
    /// Silent intervals before the link counts as dead.
    pub heartbeat_misses: u32,
    /// Full-jitter exponential backoff between reconnect attempts (the first is immediate).
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// After the cloud refuses a re-init, how long to wait for its resurrection webhooks.
    pub resurrection_wait: Duration,
    /// A `stop_request` for a session whose cloud link is down is held this long to see
    /// whether the `session_request` of a resurrection follows, or the session's own cloud
    /// socket confirms it (`app_stopped`, a final close); unconfirmed, it is dropped.
    pub stop_hold: Duration,
    /// The only cloud origins Tether dials (and sends the app's init to).
    pub allowed_origins: AllowList,
}

/// Registering the app server with the cloud (the seed design; the production cloud removed
/// this API, so a 404 is tolerated unless `required`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    pub enabled: bool,
    /// The cloud's HTTP base; default: `cloud.ws_url` with an http(s) scheme.
    pub url: Option<Url>,
    /// Tether's public URL, sent as `serverUrl`; default `http://<listen.public>`.
    pub server_url: Option<String>,
    /// `/readyz` fails until registered.
    pub required: bool,
    pub refresh_interval: Duration,
    pub timeout: Duration,
    pub backoff_max: Duration,
}

/// Size and time limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest frame read from the app socket (app -> cloud).
    pub max_frame_bytes_up: usize,
    /// Largest frame read from the cloud socket (cloud -> app).
    pub max_frame_bytes_down: usize,
    pub max_webhook_body_bytes: usize,
    pub ws_read_buffer_bytes: usize,
    pub init_timeout: Duration,
    /// Bytes of webhook bodies kept for re-sending, across every session.
    pub max_webhook_record_bytes: usize,
    /// Webhooks read or relayed at once; past this a webhook is answered 503.
    pub webhooks_in_flight: usize,
    /// Webhooks per second (sustained, burst) from one source address (IPv6: one /64).
    pub webhook_rate_per_source: u32,
    pub webhook_burst_per_source: u32,
    /// Webhooks per second (sustained, burst) from everyone together.
    pub webhook_rate: u32,
    pub webhook_burst: u32,
}

/// How sessions are held while the app is away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// How long a session is held for an app that is away (max 300 s, Kubernetes' restart back-off cap).
    pub hold_window: Duration,
    /// How long an app that closed a session cleanly while healthy has to come back.
    pub intent_window: Duration,
    /// How long a replay waits for the restarted app to re-subscribe.
    pub replay_wait: Duration,
    pub app_ping_interval: Duration,
    pub app_ping_misses: u32,
    /// App health probe period while any session is held.
    pub probe_interval: Duration,
    /// How long a new `session_request` waits for an app that is down (below the cloud's 10 s).
    pub webhook_hold: Duration,
    /// Webhooks re-sent to a restarted app at once.
    pub refire_concurrency: usize,
}

/// Bounds of the buffers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferConfig {
    pub up_max_frames: usize,
    pub up_max_bytes: usize,
    pub up_max_age: Duration,
    pub down_max_frames: usize,
    pub down_max_bytes: usize,
    pub down_max_age: Duration,
    /// Across every session.
    pub global_max_bytes: usize,
}

/// What a peer of any listener may hold: time (each phase of a connection where it can
/// stall) and connections (a cap per listener, so one listener never starves another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// A new connection's first bytes, then each complete request head (HTTP/1), must
    /// arrive within this. hyper re-arms the same timer when an HTTP/1 connection goes
    /// idle, so it also bounds HTTP/1 keep-alive idle time.
    pub header_read_timeout: Duration,
    /// Longest silence inside a request body being relayed; a webhook body (read whole)
    /// must be complete within it.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight is closed after this (HTTP/2 with GOAWAY;
    /// HTTP/1 is closed sooner by the header timer).
    pub idle_timeout: Duration,
    /// A peer that takes none of the bytes Tether is writing to it for this long is cut.
    pub send_timeout: Duration,
    /// A protocol upgrade (WebSocket) must complete within this after its request.
    pub upgrade_timeout: Duration,
    /// HTTP/2: a PING goes out after this much silence; no answer within the timeout
    /// closes the connection.
    pub h2_keepalive_interval: Duration,
    pub h2_keepalive_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// Largest request head (HTTP/1: the per-connection read buffer; HTTP/2: the header
    /// list); larger ones get 431. Bounds what a half-sent head can pin.
    pub max_header_bytes: usize,
    /// Open connections per listener, upgraded ones included; more are accepted and
    /// closed at once.
    pub max_connections_public: usize,
    pub max_connections_local: usize,
    pub max_connections_admin: usize,
    /// Requests proxied to the app at once, across connections (HTTP/2 multiplexes many
    /// on one, and each holds a connection to the app); more are answered 503.
    pub max_proxied_in_flight: usize,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

// === impl Config ===

impl Config {
    /// Reads `path` (when given) and the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
            ),
            None => None,
        };
        let origin = path.map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
        Self::from_sources(text.as_deref(), &origin, &|k| std::env::var(k).ok())
    }

    /// Parses YAML text (or defaults when `None`), applies overrides read through `env`, and
    /// validates. `origin` names the text in errors.
    pub fn from_sources(
        yaml: Option<&str>,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = match yaml {
            Some(text) if !text.trim().is_empty() => serde_saphyr::from_str::<RawConfig>(text)
                .map_err(|e| ConfigError::Parse {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?,
            _ => RawConfig::default(),
        };
        apply_env(&mut raw, env)?;
        let api_key = match env("TETHER_API_KEY") {
            Some(k) if !k.trim().is_empty() => Secret::new(k.trim()),
            _ => match &raw.app.api_key_file {
                Some(path) => read_secret_file(path)?,
                None => Secret::default(),
            },
        };
        if raw.admin.token.is_some() {
            return Err(invalid(
                "admin.token",
                "the admin token never sits in the config file; set TETHER_ADMIN_TOKEN or \
                 admin.token_file (a mounted Secret)",
            ));
        }
        let admin_token = match env("TETHER_ADMIN_TOKEN") {
            Some(t) if !t.trim().is_empty() => admin_token("TETHER_ADMIN_TOKEN", t.trim())?,
            _ => match raw
                .admin
                .token_file
                .as_deref()
                .filter(|p| !p.trim().is_empty())
            {
                Some(path) => {
                    admin_token("admin.token_file", read_secret_file(path.trim())?.expose())?
                }
                None => Secret::default(),
            },
        };
        validate(raw, api_key, admin_token)
    }

    /// Parses YAML text with no environment, for tests and `check-config` of inline text.
    pub fn from_yaml(yaml: &str) -> Result<Config, ConfigError> {
        Self::from_sources(Some(yaml), "<inline>", &|_| None)
    }
}

fn apply_env(raw: &mut RawConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
    let set = |slot: &mut Option<String>, var: &str| {
        if let Some(v) = env(var) {
            *slot = Some(v);
        }
    };
    set(&mut raw.listen.public, "TETHER_PUBLIC_LISTEN");
    set(&mut raw.listen.local, "TETHER_LOCAL_LISTEN");
    set(&mut raw.listen.admin, "TETHER_ADMIN_LISTEN");
    set(&mut raw.listen.local_advertise, "TETHER_LOCAL_ADVERTISE");
    set(&mut raw.app.url, "TETHER_APP_URL");
    set(&mut raw.app.package_name, "TETHER_PACKAGE_NAME");
    set(&mut raw.app.api_key_file, "TETHER_API_KEY_FILE");
    set(&mut raw.cloud.ws_url, "TETHER_CLOUD_WS_URL");
    set(&mut raw.state.dir, "TETHER_STATE_DIR");
    if let Some(v) = env("TETHER_CLOUD_ALLOWED_ORIGINS") {
        raw.cloud.allowed_origins = Some(
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect(),
        );
    }
    set(&mut raw.log.level, "TETHER_LOG_LEVEL");
    set(&mut raw.admin.token_file, "TETHER_ADMIN_TOKEN_FILE");
    // Empty counts as unset, so a wrapper can clear what an outer environment set.
    if let Some(v) = env("TETHER_ADMIN_SHOW_USER_IDS").filter(|v| !v.trim().is_empty()) {
        raw.admin.show_user_ids = Some(match v.trim() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(invalid(
                    "TETHER_ADMIN_SHOW_USER_IDS",
                    format!("expected true or false, got {other:?}"),
                ))
            }
        });
    }
    let bytes = |var: &str| -> Result<Option<usize>, ConfigError> {
        env(var)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| invalid(var, format!("expected a byte count, got {v:?}")))
            })
            .transpose()
    };
    if let Some(n) = bytes("TETHER_MAX_FRAME_BYTES")? {
        // The environment wins over the file, the per-leg keys included.
        raw.limits.max_frame_bytes = Some(n);
        raw.limits.max_frame_bytes_up = Some(n);
        raw.limits.max_frame_bytes_down = Some(n);
    }
    if let Some(n) = bytes("TETHER_MAX_FRAME_BYTES_UP")? {
        raw.limits.max_frame_bytes_up = Some(n);
    }
    if let Some(n) = bytes("TETHER_MAX_FRAME_BYTES_DOWN")? {
        raw.limits.max_frame_bytes_down = Some(n);
    }
    if let Some(v) = env("TETHER_LOG_FORMAT") {
        raw.log.format = Some(match v.trim() {
            "auto" => LogFormat::Auto,
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(invalid(
                    "TETHER_LOG_FORMAT",
                    format!("expected auto, json or text, got {other:?}"),
                ))
            }
        });
    }
    Ok(())
}

fn read_secret_file(path: &str) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: PathBuf::from(path),
        source,
    })?;
    Ok(Secret::new(text.trim()))
}

/// Checks an admin token read from `key`; the error never quotes the token.
fn admin_token(key: &str, token: &str) -> Result<Secret, ConfigError> {
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        return Err(invalid(
            key,
            format!("the admin token must be at least {MIN_ADMIN_TOKEN_CHARS} characters"),
        ));
    }
    // It travels in an HTTP header: anything but visible ASCII could never be sent intact.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            key,
            "the admin token must be visible ASCII characters only (no spaces)",
        ));
    }
    Ok(Secret::new(token))
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

fn addr(key: &str, value: Option<String>, default: &str) -> Result<SocketAddr, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    text.trim().parse().map_err(|_| {
        invalid(
            key,
            format!("expected host:port with a numeric IP, got {text:?}"),
        )
    })
}

fn millis(key: &str, value: Option<u64>, default: u64, max: u64) -> Result<Duration, ConfigError> {
    let ms = value.unwrap_or(default);
    if ms == 0 || ms > max {
        return Err(invalid(
            key,
            format!("must be between 1 and {max} ms, got {ms}"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A value in `min..=max` (default `default`), with an error naming the key and the bounds.
fn bounded<T>(key: &str, value: Option<T>, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(invalid(
            key,
            format!("must be between {min} and {max}, got {v}"),
        ));
    }
    Ok(v)
}

fn ws_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim()).map_err(|e| invalid(key, format!("{e}: {text:?}")))?;
    match url.scheme() {
        "ws" | "wss" if url.host_str().is_some() => Ok(url),
        _ => Err(invalid(
            key,
            format!("expected a ws:// or wss:// URL, got {text:?}"),
        )),
    }
}

fn validate(raw: RawConfig, api_key: Secret, admin_token: Secret) -> Result<Config, ConfigError> {
    if let Some(v) = raw.version {
        if v != 1 {
            return Err(invalid(
                "version",
                format!("only version 1 is known, got {v}"),
            ));
        }
    }
    let listen = ListenConfig {
        public: addr("listen.public", raw.listen.public, "0.0.0.0:8080")?,
        local: addr("listen.local", raw.listen.local, "127.0.0.1:8081")?,
        admin: addr("listen.admin", raw.listen.admin, "0.0.0.0:9090")?,
        local_advertise: raw.listen.local_advertise.filter(|s| !s.trim().is_empty()),
    };
    let app_url_text = raw
        .app
        .url
        .unwrap_or_else(|| "http://127.0.0.1:7010".into());
    let app_url = Url::parse(app_url_text.trim())
        .map_err(|e| invalid("app.url", format!("{e}: {app_url_text:?}")))?;
    if !matches!(app_url.scheme(), "http") || app_url.host_str().is_none() {
        return Err(invalid(
            "app.url",
            format!("expected an http:// URL of the app server, got {app_url_text:?}"),
        ));
    }
    let health_path = raw.app.health_path.unwrap_or_else(|| "/health".into());
    if !health_path.starts_with('/') {
        return Err(invalid("app.health_path", "must start with '/'"));
    }
    let app = AppConfig {
        url: app_url,
        package_name: raw.app.package_name.filter(|s| !s.trim().is_empty()),
        api_key,
        health_path,
        webhook_timeout: millis(
            "app.webhook_timeout_ms",
            raw.app.webhook_timeout_ms,
            9_000,
            60_000,
        )?,
        connect_timeout: millis(
            "app.connect_timeout_ms",
            raw.app.connect_timeout_ms,
            2_000,
            60_000,
        )?,
        request_timeout: millis(
            "app.request_timeout_ms",
            raw.app.request_timeout_ms,
            60_000,
            3_600_000,
        )?,
    };
    let mut cloud = CloudConfig {
        ws_url: match raw.cloud.ws_url.filter(|s| !s.trim().is_empty()) {
            Some(text) => Some(ws_url("cloud.ws_url", &text)?),
            None => None,
        },
        connect_timeout: millis(
            "cloud.connect_timeout_ms",
            raw.cloud.connect_timeout_ms,
            5_000,
            60_000,
        )?,
        http_timeout: millis(
            "cloud.http_timeout_ms",
            raw.cloud.http_timeout_ms,
            20_000,
            300_000,
        )?,
        heartbeat: raw.cloud.heartbeat.unwrap_or(HeartbeatMode::WsPing),
        heartbeat_interval: millis(
            "cloud.heartbeat_interval_ms",
            raw.cloud.heartbeat_interval_ms,
            10_000,
            600_000,
        )?,
        heartbeat_misses: bounded(
            "cloud.heartbeat_misses",
            raw.cloud.heartbeat_misses,
            3,
            1,
            100,
        )?,
        reconnect_base: millis(
            "cloud.reconnect_base_ms",
            raw.cloud.reconnect_base_ms,
            100,
            60_000,
        )?,
        reconnect_max: millis(
            "cloud.reconnect_max_ms",
            raw.cloud.reconnect_max_ms,
            5_000,
            300_000,
        )?,
        resurrection_wait: millis(
            "cloud.resurrection_wait_ms",
            raw.cloud.resurrection_wait_ms,
            15_000,
            300_000,
        )?,
        stop_hold: millis("cloud.stop_hold_ms", raw.cloud.stop_hold_ms, 3_000, 60_000)?,
        allowed_origins: AllowList::default(),
    };
    // The configured cloud is always allowed: it is the operator's own statement.
    let mut patterns: Vec<String> = match raw.cloud.allowed_origins {
        Some(list) => list,
        None => DEFAULT_ALLOWED.iter().map(|s| s.to_string()).collect(),
    };
    if let Some(origin) = cloud
        .ws_url
        .as_ref()
        .and_then(crate::upstream::clouds::origin_of)
    {
        let text = origin.as_str().trim_end_matches('/').to_string();
        // A URL whose host no pattern can name (e.g. `*`) is the ws_url's fault.
        AllowList::parse(&[&text])
            .map_err(|e| invalid("cloud.ws_url", format!("its origin cannot be allowed: {e}")))?;
        if !patterns.contains(&text) {
            patterns.push(text);
        }
    }
    cloud.allowed_origins =
        AllowList::parse(&patterns).map_err(|e| invalid("cloud.allowed_origins", e.to_string()))?;
    if cloud.reconnect_max < cloud.reconnect_base {
        return Err(invalid(
            "cloud.reconnect_max_ms",
            "must not be below cloud.reconnect_base_ms",
        ));
    }
    let rr = raw.registration;
    let registration = RegistrationConfig {
        enabled: rr.enabled.unwrap_or(false),
        url: match rr.url.filter(|s| !s.trim().is_empty()) {
            Some(text) => {
                let url = Url::parse(text.trim())
                    .map_err(|e| invalid("registration.url", format!("{e}: {text:?}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid(
                        "registration.url",
                        format!("expected an http(s) URL, got {text:?}"),
                    ));
                }
                Some(url)
            }
            None => None,
        },
        server_url: rr.server_url.filter(|s| !s.trim().is_empty()),
        required: rr.required.unwrap_or(false),
        refresh_interval: millis(
            "registration.refresh_interval_ms",
            rr.refresh_interval_ms,
            60_000,
            86_400_000,
        )?,
        timeout: millis("registration.timeout_ms", rr.timeout_ms, 5_000, 60_000)?,
        backoff_max: millis(
            "registration.backoff_max_ms",
            rr.backoff_max_ms,
            30_000,
            3_600_000,
        )?,
    };
    if registration.required && !registration.enabled {
        return Err(invalid(
            "registration.required",
            "needs registration.enabled: true",
        ));
    }
    let frame_limit = |key: &str, value: Option<usize>| -> Result<Option<usize>, ConfigError> {
        match value {
            Some(n) if !FRAME_BYTES_RANGE.contains(&n) => Err(invalid(
                key,
                format!("must be between 1 KiB and 256 MiB (1024 to 268435456), got {n}"),
            )),
            v => Ok(v),
        }
    };
    let both = frame_limit("limits.max_frame_bytes", raw.limits.max_frame_bytes)?;
    let max_frame_bytes_up =
        frame_limit("limits.max_frame_bytes_up", raw.limits.max_frame_bytes_up)?
            .or(both)
            .unwrap_or(DEFAULT_MAX_FRAME_BYTES_UP);
    let max_frame_bytes_down = frame_limit(
        "limits.max_frame_bytes_down",
        raw.limits.max_frame_bytes_down,
    )?
    .or(both)
    .unwrap_or(DEFAULT_MAX_FRAME_BYTES_DOWN);
    let ws_read_buffer_bytes = raw.limits.ws_read_buffer_bytes.unwrap_or(16 * 1024);
    if !(1024..=1024 * 1024).contains(&ws_read_buffer_bytes) {
        return Err(invalid(
            "limits.ws_read_buffer_bytes",
            "must be between 1 KiB and 1 MiB",
        ));
    }
    let limits = Limits {
        max_frame_bytes_up,
        max_frame_bytes_down,
        max_webhook_body_bytes: bounded(
            "limits.max_webhook_body_bytes",
            raw.limits.max_webhook_body_bytes,
            64 << 10,
            1024,
            16 << 20,
        )?,
        ws_read_buffer_bytes,
        init_timeout: millis(
            "limits.init_timeout_ms",
            raw.limits.init_timeout_ms,
            10_000,
            120_000,
        )?,
        max_webhook_record_bytes: bounded(
            "limits.max_webhook_record_bytes",
            raw.limits.max_webhook_record_bytes,
            4 << 20,
            1024,
            1 << 30,
        )?,
        webhooks_in_flight: bounded(
            "limits.webhooks_in_flight",
            raw.limits.webhooks_in_flight,
            64,
            1,
            4096,
        )?,
        webhook_rate_per_source: bounded(
            "limits.webhook_rate_per_source",
            raw.limits.webhook_rate_per_source,
            100,
            1,
            1_000_000,
        )?,
        webhook_burst_per_source: bounded(
            "limits.webhook_burst_per_source",
            raw.limits.webhook_burst_per_source,
            500,
            1,
            1_000_000,
        )?,
        webhook_rate: bounded(
            "limits.webhook_rate",
            raw.limits.webhook_rate,
            200,
            1,
            1_000_000,
        )?,
        webhook_burst: bounded(
            "limits.webhook_burst",
            raw.limits.webhook_burst,
            1_000,
            1,
            1_000_000,
        )?,
    };
    if let Some(n) = raw.limits.max_clouds {
        // Kept only so older files still load; say it does nothing now.
        if n == 0 {
            return Err(invalid("limits.max_clouds", "must be at least 1"));
        }
    }
    let rs = raw.session;
    let session = SessionConfig {
        hold_window: millis("session.hold_window_ms", rs.hold_window_ms, 60_000, 300_000)?,
        intent_window: millis(
            "session.intent_window_ms",
            rs.intent_window_ms,
            2_000,
            60_000,
        )?,
        replay_wait: millis("session.replay_wait_ms", rs.replay_wait_ms, 1_000, 30_000)?,
        app_ping_interval: millis(
            "session.app_ping_interval_ms",
            rs.app_ping_interval_ms,
            5_000,
            60_000,
        )?,
        app_ping_misses: bounded(
            "session.app_ping_misses",
            rs.app_ping_misses,
            3,
            1,
            MAX_PING_MISSES,
        )?,
        probe_interval: millis(
            "session.probe_interval_ms",
            rs.probe_interval_ms,
            100,
            5_000,
        )?,
        webhook_hold: millis("session.webhook_hold_ms", rs.webhook_hold_ms, 4_000, 9_500)?,
        refire_concurrency: bounded(
            "session.refire_concurrency",
            rs.refire_concurrency,
            16,
            1,
            MAX_REFIRE_CONCURRENCY,
        )?,
    };
    let rb = raw.buffer;
    let frames = |key: &str, v: Option<usize>, default: usize| {
        bounded(key, v, default, 1, MAX_BUFFER_FRAMES)
    };
    let bytes = |key: &str, v: Option<usize>, default: usize| {
        bounded(key, v, default, 1024, MAX_BUFFER_BYTES)
    };
    let buffer = BufferConfig {
        up_max_frames: frames("buffer.up_max_frames", rb.up_max_frames, 256)?,
        up_max_bytes: bytes("buffer.up_max_bytes", rb.up_max_bytes, 256 << 10)?,
        up_max_age: millis("buffer.up_max_age_ms", rb.up_max_age_ms, 30_000, 600_000)?,
        down_max_frames: frames("buffer.down_max_frames", rb.down_max_frames, 1_000)?,
        down_max_bytes: bytes("buffer.down_max_bytes", rb.down_max_bytes, 1 << 20)?,
        down_max_age: millis(
            "buffer.down_max_age_ms",
            rb.down_max_age_ms,
            60_000,
            600_000,
        )?,
        global_max_bytes: bounded(
            "buffer.global_max_bytes",
            rb.global_max_bytes,
            64 << 20,
            1024,
            MAX_GLOBAL_BUFFER_BYTES,
        )?,
    };
    let log = LogConfig {
        level: raw.log.level.unwrap_or_else(|| "info".into()),
        format: raw.log.format.unwrap_or(LogFormat::Auto),
    };
    let state = StateConfig {
        dir: raw
            .state
            .dir
            .filter(|s| !s.trim().is_empty())
            .map(|s| PathBuf::from(s.trim())),
    };
    let admin = AdminConfig {
        token: admin_token,
        token_file: raw
            .admin
            .token_file
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty()),
        show_user_ids: raw.admin.show_user_ids.unwrap_or(false),
    };
    let http = validate_http(raw.http)?;
    Ok(Config {
        listen,
        app,
        cloud,
        limits,
        session,
        buffer,
        registration,
        log,
        state,
        admin,
        http,
    })
}

/// Most connections (or requests) a listener may be given: what one process could hold.
const MAX_CONNECTIONS: usize = 1_000_000;

fn validate_http(rh: RawHttp) -> Result<HttpConfig, ConfigError> {
    let streams = bounded(
        "http.h2_max_concurrent_streams",
        rh.h2_max_concurrent_streams,
        100,
        1,
        10_000,
    )?;
    Ok(HttpConfig {
        header_read_timeout: millis(
            "http.header_read_timeout_ms",
            rh.header_read_timeout_ms,
            10_000,
            600_000,
        )?,
        body_read_timeout: millis(
            "http.body_read_timeout_ms",
            rh.body_read_timeout_ms,
            30_000,
            600_000,
        )?,
        idle_timeout: millis(
            "http.idle_timeout_ms",
            rh.idle_timeout_ms,
            60_000,
            3_600_000,
        )?,
        send_timeout: millis("http.send_timeout_ms", rh.send_timeout_ms, 30_000, 600_000)?,
        upgrade_timeout: millis(
            "http.upgrade_timeout_ms",
            rh.upgrade_timeout_ms,
            10_000,
            600_000,
        )?,
        h2_keepalive_interval: millis(
            "http.h2_keepalive_interval_ms",
            rh.h2_keepalive_interval_ms,
            20_000,
            3_600_000,
        )?,
        h2_keepalive_timeout: millis(
            "http.h2_keepalive_timeout_ms",
            rh.h2_keepalive_timeout_ms,
            10_000,
            600_000,
        )?,
        h2_max_concurrent_streams: streams,
        // hyper needs at least 8 KiB of read buffer.
        max_header_bytes: bounded(
            "http.max_header_bytes",
            rh.max_header_bytes,
            16 * 1024,
            8 * 1024,
            1024 * 1024,
        )?,
        max_connections_public: bounded(
            "http.max_connections_public",
            rh.max_connections_public,
            2048,
            1,
            MAX_CONNECTIONS,
        )?,
        // The app's own sockets, one per session: trusted, so generous.
        max_connections_local: bounded(
            "http.max_connections_local",
            rh.max_connections_local,
            4096,
            1,
            MAX_CONNECTIONS,
        )?,
        max_connections_admin: bounded(
            "http.max_connections_admin",
            rh.max_connections_admin,
            64,
            1,
            MAX_CONNECTIONS,
        )?,
        max_proxied_in_flight: bounded(
            "http.max_proxied_in_flight",
            rh.max_proxied_in_flight,
            1024,
            1,
            MAX_CONNECTIONS,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_yaml("").expect("defaults");
        assert_eq!(c.listen.public.to_string(), "0.0.0.0:8080");
        assert_eq!(c.listen.local.to_string(), "127.0.0.1:8081");
        assert_eq!(c.app.url.as_str(), "http://127.0.0.1:7010/");
        assert_eq!(c.limits.max_frame_bytes_up, DEFAULT_MAX_FRAME_BYTES_UP);
        assert_eq!(c.limits.max_frame_bytes_down, DEFAULT_MAX_FRAME_BYTES_DOWN);
        // A held webhook must still leave the app time inside the cloud's 5 s start window.
        assert!(c.session.webhook_hold < Duration::from_secs(5));
        assert!(c
            .cloud
            .allowed_origins
            .admits(&Url::parse("wss://api.mentra.glass/app-ws").expect("url")));
        assert!(!c
            .cloud
            .allowed_origins
            .admits(&Url::parse("ws://127.0.0.1:1/app-ws").expect("url")));
    }

    #[test]
    fn unknown_key_is_reported_with_line_and_column() {
        let err = Config::from_yaml("version: 1\nlisten:\n  public: 0.0.0.0:1\n  pubic: x\n")
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("line 4 column 3"), "{text}");
        assert!(text.contains("pubic"), "{text}");
    }

    #[test]
    fn env_overrides_win_over_the_file() {
        let env = env_of(&[
            ("TETHER_PUBLIC_LISTEN", "127.0.0.1:0"),
            ("TETHER_APP_URL", "http://127.0.0.1:9999"),
            ("TETHER_CLOUD_WS_URL", "wss://cloud.example/app-ws"),
            ("TETHER_API_KEY", "abc123"),
            ("TETHER_PACKAGE_NAME", "com.example.x"),
        ]);
        let c =
            Config::from_sources(Some("listen:\n  public: 0.0.0.0:1\n"), "t", &env).expect("cfg");
        assert_eq!(c.listen.public.to_string(), "127.0.0.1:0");
        assert_eq!(c.app.url.port(), Some(9999));
        assert_eq!(
            c.cloud.ws_url.as_ref().map(Url::as_str),
            Some("wss://cloud.example/app-ws")
        );
        assert_eq!(c.app.api_key.expose(), "abc123");
        assert!(!format!("{c:?}").contains("abc123"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (yaml, key) in [
            ("listen:\n  admin: nowhere\n", "listen.admin"),
            ("app:\n  url: ftp://x\n", "app.url"),
            ("cloud:\n  ws_url: http://x/app-ws\n", "cloud.ws_url"),
            ("limits:\n  max_frame_bytes: 10\n", "limits.max_frame_bytes"),
            ("version: 2\n", "version"),
        ] {
            let err = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.starts_with(key), "{yaml:?} -> {err}");
        }
    }

    #[test]
    fn http_bounds_default_sanely_and_refuse_nonsense() {
        let c = Config::from_yaml("").expect("defaults");
        assert_eq!(c.http.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.app.request_timeout, Duration::from_secs(60));
        assert_eq!(
            (
                c.http.max_connections_public,
                c.http.max_connections_local,
                c.http.max_connections_admin
            ),
            (2048, 4096, 64)
        );
        let c = Config::from_yaml("http:\n  idle_timeout_ms: 250\n  max_connections_admin: 3\n")
            .expect("cfg");
        assert_eq!(c.http.idle_timeout, Duration::from_millis(250));
        assert_eq!(c.http.max_connections_admin, 3);
        for (yaml, key) in [
            (
                "http:\n  header_read_timeout_ms: 0\n",
                "http.header_read_timeout_ms",
            ),
            (
                "http:\n  max_connections_public: 0\n",
                "http.max_connections_public",
            ),
            (
                "http:\n  h2_max_concurrent_streams: 0\n",
                "http.h2_max_concurrent_streams",
            ),
            ("app:\n  request_timeout_ms: 0\n", "app.request_timeout_ms"),
        ] {
            let err = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.starts_with(key), "{yaml:?} -> {err}");
        }
    }

    #[test]
    fn frame_limits_are_per_leg_and_the_old_key_sets_both() {
        let c = Config::from_yaml("limits:\n  max_frame_bytes: 4096\n").expect("cfg");
        assert_eq!(
            (c.limits.max_frame_bytes_up, c.limits.max_frame_bytes_down),
            (4096, 4096)
        );
        let c =
            Config::from_yaml("limits:\n  max_frame_bytes: 4096\n  max_frame_bytes_down: 8192\n")
                .expect("cfg");
        assert_eq!(
            (c.limits.max_frame_bytes_up, c.limits.max_frame_bytes_down),
            (4096, 8192)
        );
        // The environment wins over the file; its per-leg variables over its shared one.
        let env = env_of(&[
            ("TETHER_MAX_FRAME_BYTES", "2048"),
            ("TETHER_MAX_FRAME_BYTES_UP", "3072"),
        ]);
        let yaml = "limits:\n  max_frame_bytes_up: 9999\n  max_frame_bytes_down: 9999\n";
        let c = Config::from_sources(Some(yaml), "t", &env).expect("cfg");
        assert_eq!(
            (c.limits.max_frame_bytes_up, c.limits.max_frame_bytes_down),
            (3072, 2048)
        );
        let env = env_of(&[("TETHER_MAX_FRAME_BYTES_DOWN", "lots")]);
        let err = Config::from_sources(None, "t", &env).expect_err("not a number");
        assert!(
            err.to_string().starts_with("TETHER_MAX_FRAME_BYTES_DOWN"),
            "{err}"
        );
        for key in ["max_frame_bytes_up", "max_frame_bytes_down"] {
            let err = Config::from_yaml(&format!("limits:\n  {key}: 268435457\n"))
                .expect_err(key)
                .to_string();
            assert!(err.starts_with(&format!("limits.{key}")), "{err}");
        }
    }

    #[test]
    fn session_and_buffer_counts_are_bounded_with_a_clear_error() {
        for (yaml, key) in [
            (
                "session:\n  refire_concurrency: 0\n",
                "session.refire_concurrency",
            ),
            (
                "session:\n  refire_concurrency: 18446744073709551615\n",
                "session.refire_concurrency",
            ),
            (
                "session:\n  app_ping_misses: 4294967295\n",
                "session.app_ping_misses",
            ),
            ("buffer:\n  down_max_frames: 0\n", "buffer.down_max_frames"),
            (
                "buffer:\n  up_max_frames: 1000001\n",
                "buffer.up_max_frames",
            ),
            (
                "buffer:\n  down_max_bytes: 1073741825\n",
                "buffer.down_max_bytes",
            ),
            ("buffer:\n  up_max_bytes: 10\n", "buffer.up_max_bytes"),
            (
                "buffer:\n  global_max_bytes: 68719476737\n",
                "buffer.global_max_bytes",
            ),
        ] {
            let err = Config::from_yaml(yaml).expect_err(yaml).to_string();
            assert!(err.starts_with(key), "{yaml:?} -> {err}");
            assert!(err.contains("must be between"), "{yaml:?} -> {err}");
        }
        let at_bounds = "session:\n  refire_concurrency: 1024\n  app_ping_misses: 100\n\
            buffer:\n  down_max_frames: 1000000\n  up_max_frames: 1000000\n  \
            down_max_bytes: 1073741824\n  up_max_bytes: 1073741824\n  \
            global_max_bytes: 68719476736\n";
        let c = Config::from_yaml(at_bounds).expect("the bounds themselves are valid");
        assert_eq!(c.session.refire_concurrency, 1024);
        assert!(c.session.refire_concurrency <= tokio::sync::Semaphore::MAX_PERMITS);
    }

    #[test]
    fn api_key_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("tether-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("key");
        std::fs::write(&file, "s3cret\n").expect("write");
        let yaml = format!("app:\n  api_key_file: {}\n", file.display());
        let c = Config::from_yaml(&yaml).expect("cfg");
        assert_eq!(c.app.api_key.expose(), "s3cret");
        let _ = std::fs::remove_dir_all(&dir);
    }

    const TOKEN: &str = "adm1n-t0ken-0123456789";

    #[test]
    fn admin_defaults_mask_user_ids_and_need_no_token() {
        let c = Config::from_yaml("").expect("defaults");
        assert!(c.admin.token.is_empty());
        assert!(!c.admin.show_user_ids);
        assert_eq!(c.admin.token_file, None);
    }

    #[test]
    fn admin_token_comes_from_the_environment_and_is_never_printed() {
        let env = env_of(&[
            ("TETHER_ADMIN_TOKEN", " adm1n-t0ken-0123456789\n"),
            ("TETHER_ADMIN_SHOW_USER_IDS", "true"),
        ]);
        let c = Config::from_sources(None, "t", &env).expect("cfg");
        assert_eq!(c.admin.token.expose(), TOKEN);
        assert!(c.admin.show_user_ids);
        assert!(!format!("{c:?}").contains(TOKEN));
    }

    #[test]
    fn admin_token_file_is_read_and_trimmed_and_the_environment_wins() {
        let dir = std::env::temp_dir().join(format!("tether-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, format!("{TOKEN}\n")).expect("write");
        let yaml = format!("admin:\n  token_file: {}\n", file.display());
        let c = Config::from_yaml(&yaml).expect("cfg");
        assert_eq!(c.admin.token.expose(), TOKEN);
        assert_eq!(c.admin.token_file.as_deref(), file.to_str());
        let env = env_of(&[("TETHER_ADMIN_TOKEN", "another-token-of-enough-length")]);
        let c = Config::from_sources(Some(&yaml), "t", &env).expect("cfg");
        assert_eq!(c.admin.token.expose(), "another-token-of-enough-length");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_token_in_the_file_is_refused_without_echoing_it() {
        let err = Config::from_yaml("admin:\n  token: hunter2-hunter2-hunter2\n")
            .expect_err("token in yaml")
            .to_string();
        assert!(err.starts_with("admin.token:"), "{err}");
        assert!(err.contains("TETHER_ADMIN_TOKEN"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn weak_or_unsendable_admin_tokens_are_refused() {
        for (token, why) in [
            ("short", "at least"),
            ("has a space in the middle", "visible ASCII"),
        ] {
            let env = move |k: &str| (k == "TETHER_ADMIN_TOKEN").then(|| token.to_string());
            let err = Config::from_sources(None, "t", &env)
                .expect_err(token)
                .to_string();
            assert!(err.starts_with("TETHER_ADMIN_TOKEN:"), "{err}");
            assert!(err.contains(why) && !err.contains(token), "{err}");
        }
        let env = env_of(&[("TETHER_ADMIN_SHOW_USER_IDS", "yes")]);
        let err = Config::from_sources(None, "t", &env).expect_err("bad bool");
        assert!(err.to_string().starts_with("TETHER_ADMIN_SHOW_USER_IDS"));
    }
}
