//! MentraOS cloud emulator: the app-facing side of the cloud, as a library API plus an HTTP
//! control API, on one loopback listener.
//!
//! It owns: the app websocket endpoints (`/app-ws`, `/tpa-ws`, `/ws/miniapp`), the
//! `session_request`/`stop_request` webhooks it POSTs to the app, the cloud HTTP routes the
//! SDK calls (`/api/*`, `/appsettings/*`), the seed design's app-server registry
//! (`/api/tpa/register`, `/api/tpa/sessions`, recovery webhooks), and the `/control/*` JSON API. Behaviour follows
//! `PROTOCOL.md` (cited by section), including the hazards Tether must avoid (§10.5).
//!
//! It must not panic on anything a peer sends, and every task it spawns ends on
//! [`CloudSim::shutdown`] (one `CancellationToken`, one `TaskTracker`).
//!
//! Module map: `session` state and counters · `engine` shared state and operations ·
//! `lifecycle` start/stop/grace/resurrection · `ws` app sockets · `webhook` HTTP to the app ·
//! `server` listener and dispatch · `api` cloud HTTP routes · `registration` app-server
//! registry and recovery · `control` control API ·
//! `subscriptions`, `wire` pure helpers · `cli` the `cloud-sim` command.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

mod api;
mod cli;
mod control;
mod engine;
mod inbound;
mod lifecycle;
mod registration;
mod server;
mod session;
mod subscriptions;
mod webhook;
mod wire;
mod ws;

pub use cli::{run_cli, CloudSimArgs};
pub use registration::{RegisteredServer, RegistrationAttempt, RegistrationMode, RegistryStats};
pub use session::SessionStats;

use engine::Engine;

/// Package the emulator knows by default.
pub const DEFAULT_PACKAGE: &str = "com.example.tether.demo";
/// API key of [`DEFAULT_PACKAGE`] (64 hex chars like a real key, §1). Not a secret.
pub const DEFAULT_API_KEY: &str =
    "5e7a0c1d9b3f4e2a8c6d0b1f3a5e7c9d2b4f6a8c0e1d3b5f7a9c2e4d6b8f0a1c";

/// How long [`CloudSim::shutdown`] waits for tasks before giving up.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Which era's `tpa_connection_ack` the emulator sends (§5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckStyle {
    /// Latest C-Later: `mentraosSettings`, `subscriptions`, `userId`, then a
    /// `device_state_update` full snapshot.
    Mentraos,
    /// C-June: `augmentosSettings`.
    Augmentos,
}

/// Which era's websocket URL fields the `session_request` webhook carries (§2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UrlStyle {
    /// C-June: only `augmentOSWebsocketUrl` = `/app-ws`.
    June,
    /// Latest C-Later: `websocketUrl` (`/ws/miniapp`), `mentraOSWebsocketUrl` and
    /// `augmentOSWebsocketUrl` (both `/app-ws`).
    Later,
    /// C-TPA: only `augmentOSWebsocketUrl` = `/tpa-ws`.
    Tpa,
}

/// Emulator settings. Timings default to the cloud's real values (§15).
#[derive(Clone, Debug)]
pub struct CloudSimConfig {
    /// One listener for the websockets, the cloud HTTP routes and the control API.
    pub listen: SocketAddr,
    /// The app's webhook, e.g. `http://127.0.0.1:8080/webhook`; `None` = no webhooks sent.
    pub webhook_url: Option<String>,
    /// The one app package the emulator knows.
    pub package_name: String,
    /// Its API key, checked on init (§5.2 step 3).
    pub api_key: String,
    /// Shape of the ack (§5.4).
    pub ack_style: AckStyle,
    /// URL fields of the `session_request` webhook (§2.1) and the path of [`CloudSim::ws_url`].
    pub url_style: UrlStyle,
    /// Base put in webhooks; default `ws://<bound listen addr>`.
    pub public_ws_base: Option<String>,
    /// Period of automatic numbered transcriptions to subscribed sessions; `None` = off.
    pub transcription_interval_ms: Option<u64>,
    /// Period of automatic binary audio chunks to `audio_chunk` subscribers; `None` = off.
    pub audio_interval_ms: Option<u64>,
    /// Size of each audio chunk (at least 4: the sequence number).
    pub audio_chunk_bytes: usize,
    /// WebSocket ping period per app socket (§9).
    pub ping_interval_ms: u64,
    /// App-socket grace before resurrection (§10.2).
    pub grace_ms: u64,
    /// Whether grace expiry resurrects the app (§10.3); otherwise it is stopped.
    pub resurrect: bool,
    /// Webhook -> valid init limit (§2.1, C-June 5 000 ms).
    pub app_start_timeout_ms: u64,
    /// Per webhook POST attempt.
    pub webhook_timeout_ms: u64,
    /// `session_request` attempts (§2.1).
    pub webhook_attempts: u32,
    /// Pause before the first retry; doubles for later ones (`1000 * 2^attempt`).
    pub webhook_retry_pause_ms: u64,
    /// Largest app -> cloud message; bigger ones are closed with 1009.
    pub max_frame_bytes: usize,
    /// Whether the seed design's registry (`/api/tpa/register`, `/api/tpa/sessions`) is
    /// mounted; off = 404 like the production cloud (§12).
    pub registration_api: bool,
}

/// Result of a `startApp` (§2.1, §10.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum StartOutcome {
    /// A valid init arrived (or the app was already running).
    Running,
    /// No valid init within `app_start_timeout_ms`; the session is stopped.
    Timeout,
    /// Every webhook attempt failed first; `status` is the last HTTP status seen, if any.
    WebhookFailed { status: Option<u16> },
}

/// A frame injected with [`CloudSim::send_raw`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawFrame {
    /// A text frame; need not be JSON or valid for the protocol.
    Text(String),
    /// A binary frame of these bytes.
    Binary(Vec<u8>),
}

/// One app -> cloud data frame, as logged by [`CloudSim::received`]. `socket` numbers the
/// app socket it came on (in accept order), so re-inits on new sockets are visible.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReceivedFrame {
    /// A text frame that parsed as JSON.
    Json { socket: u64, value: Value },
    /// A text frame that did not parse.
    Text { socket: u64, text: String },
    /// A binary frame (C-June closes the socket with 1011 after it).
    Binary { socket: u64, len: usize },
}

/// Operations the control API and the library API reject.
#[derive(Debug, thiserror::Error)]
pub enum CloudSimError {
    /// No session with this id.
    #[error("unknown session {0}")]
    UnknownSession(String),
    /// No live user session for this user.
    #[error("unknown user {0}")]
    UnknownUser(String),
    /// The operation needs an open app socket and there is none.
    #[error("session {0} has no open app socket")]
    NoSocket(String),
    /// A config value, count, close code or id was out of range.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running emulator. Dropping it cancels its tasks; [`CloudSim::shutdown`] also waits.
pub struct CloudSim {
    engine: Arc<Engine>,
}

// === impl CloudSimConfig ===

impl Default for CloudSimConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_url: None,
            package_name: DEFAULT_PACKAGE.to_owned(),
            api_key: DEFAULT_API_KEY.to_owned(),
            ack_style: AckStyle::Mentraos,
            url_style: UrlStyle::Later,
            public_ws_base: None,
            transcription_interval_ms: None,
            audio_interval_ms: None,
            audio_chunk_bytes: 640,
            ping_interval_ms: 10_000,
            grace_ms: 5_000,
            resurrect: true,
            app_start_timeout_ms: 5_000,
            webhook_timeout_ms: 10_000,
            webhook_attempts: 2,
            webhook_retry_pause_ms: 1_000,
            max_frame_bytes: 16 * 1024 * 1024,
            registration_api: true,
        }
    }
}

impl CloudSimConfig {
    /// Rejects values that would make a timer or a chunk builder misbehave.
    fn validate(&self) -> Result<(), CloudSimError> {
        let periods = [
            ("ping_interval_ms", Some(self.ping_interval_ms)),
            ("transcription_interval_ms", self.transcription_interval_ms),
            ("audio_interval_ms", self.audio_interval_ms),
        ];
        if let Some((name, _)) = periods.iter().find(|(_, v)| *v == Some(0)) {
            return Err(CloudSimError::InvalidInput(format!("{name} must be > 0")));
        }
        if self.audio_chunk_bytes < 4 || self.webhook_attempts == 0 || self.max_frame_bytes == 0 {
            return Err(CloudSimError::InvalidInput(
                "audio_chunk_bytes >= 4, webhook_attempts >= 1 and max_frame_bytes >= 1 required"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

// === impl CloudSim ===

impl CloudSim {
    /// Binds the listener, spawns the accept loop and the data generators, and returns.
    ///
    /// Errors: invalid config, bind failure, or a webhook URL that is not `http://`.
    pub async fn start(cfg: CloudSimConfig) -> anyhow::Result<CloudSim> {
        cfg.validate()?;
        let engine = Engine::start(cfg).await?;
        Ok(CloudSim { engine })
    }

    /// The bound listen address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.engine.addr
    }

    /// The v2 app websocket URL for the configured era, e.g. `ws://127.0.0.1:PORT/app-ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.engine.addr, self.engine.app_ws_path())
    }

    /// Base of the control API, e.g. `http://127.0.0.1:PORT/control`.
    pub fn control_url(&self) -> String {
        format!("http://{}/control", self.engine.addr)
    }

    /// `startApp` for `user_id`: opens the user session, POSTs `session_request` (with
    /// retry) and waits for a valid init, a failed webhook or the start timeout. Already
    /// running (or in grace) returns `Running` without a webhook (§10.1); a start already
    /// in progress is joined rather than repeated.
    pub async fn start_session(&self, user_id: &str) -> anyhow::Result<StartOutcome> {
        Ok(self.engine.start_session(user_id).await?)
    }

    /// Stop sequence (§10.4): `stop_request` webhook (awaited, no retry) -> `app_stopped`
    /// -> close 1000 "App stopped". A session already stopped is left alone.
    pub async fn stop_session(&self, session_id: &str) -> anyhow::Result<()> {
        Ok(self.engine.stop_session(session_id).await?)
    }

    /// Disposes the user session: `app_stopped` + close 1000 "User session ended", no
    /// webhook; later inits for it get `SESSION_NOT_FOUND`.
    pub async fn end_user_session(&self, user_id: &str) -> anyhow::Result<()> {
        Ok(self.engine.end_user_session(user_id)?)
    }

    /// Generates `n` numbered final transcriptions now, in order. Nothing is generated if
    /// the app does not subscribe to en-US transcription (or `all`/`*`); without an open
    /// socket they count as dropped.
    pub async fn push_transcriptions(&self, session_id: &str, n: u32) -> anyhow::Result<()> {
        Ok(self
            .engine
            .push(session_id, n, engine::Stream::Transcription)?)
    }

    /// Generates `n` binary audio chunks, each starting with a big-endian u32 sequence number.
    pub async fn push_audio(&self, session_id: &str, n: u32) -> anyhow::Result<()> {
        Ok(self.engine.push(session_id, n, engine::Stream::Audio)?)
    }

    /// Writes `frame` as is on the current app socket (malformed, unknown, oversized...).
    pub async fn send_raw(&self, session_id: &str, frame: RawFrame) -> anyhow::Result<()> {
        Ok(self.engine.send_raw(session_id, frame)?)
    }

    /// Shuts the current app socket's TCP connection without a close frame (peer sees 1006).
    pub async fn drop_socket(&self, session_id: &str) -> anyhow::Result<()> {
        Ok(self
            .engine
            .socket_cmd(session_id, session::SocketCmd::Drop)?)
    }

    /// Stops reading from and writing to the current app socket, pings included, without
    /// closing it. The cloud still believes it is open. `drop_socket` ends it.
    pub async fn blackhole_socket(&self, session_id: &str) -> anyhow::Result<()> {
        Ok(self
            .engine
            .socket_cmd(session_id, session::SocketCmd::Blackhole)?)
    }

    /// Closes the current app socket with `code`/`reason`. The cloud then runs its normal
    /// close handling (grace), since it ignores close codes (§10.2).
    pub async fn close_socket(
        &self,
        session_id: &str,
        code: u16,
        reason: &str,
    ) -> anyhow::Result<()> {
        Ok(self.engine.close_socket(session_id, code, reason)?)
    }

    /// Counters of one session, if it exists.
    pub fn stats(&self, session_id: &str) -> Option<SessionStats> {
        self.engine.stats(session_id)
    }

    /// Counters of every session, sorted by session id.
    pub fn all_stats(&self) -> Vec<SessionStats> {
        self.engine.all_stats()
    }

    /// App -> cloud frames of a session in arrival order, across all its sockets.
    pub fn received(&self, session_id: &str) -> Vec<ReceivedFrame> {
        self.engine.received(session_id).unwrap_or_default()
    }

    /// Hits on the cloud HTTP routes (§3), keyed by route name (`tts`, `app_settings`,
    /// `simple_storage`, `permissions`, `sdk_version`, `not_found`).
    pub fn http_hits(&self) -> std::collections::BTreeMap<String, u64> {
        self.engine.http_hits()
    }

    /// How the next registrations are answered: `times` answers in `mode`, then `ok` again
    /// (`None` = until changed). Tests use it to fault the registry.
    pub fn set_registration_mode(&self, mode: RegistrationMode, times: Option<u32>) {
        self.engine.set_registration_mode(mode, times);
    }

    /// The registry: registered servers, restarts, attempts (with their times), recovery
    /// counters.
    pub fn registry_stats(&self) -> RegistryStats {
        self.engine.registry_stats()
    }

    /// Cancels every task (listener, sockets, webhooks, timers) and waits for them to end.
    pub async fn shutdown(self) {
        self.engine.cancel.cancel();
        self.engine.tracker.close();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.engine.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("cloud-sim tasks still running after shutdown wait");
        }
    }
}

impl Drop for CloudSim {
    fn drop(&mut self) {
        self.engine.cancel.cancel();
    }
}
