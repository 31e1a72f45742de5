//! A simulated app server that behaves like an app written on `@mentra/sdk` 2.1.29
//! (PROTOCOL.md §2, §5, §6, §7, §9, §11): it answers the cloud's webhooks, opens one
//! websocket per app session, re-connects the way the SDK does, and records everything it
//! sees in [`AppSimStats`] so tests can assert on order, duplicates and reconnects.
//!
//! It runs embedded ([`AppSim::start`]) or as its own process ([`run_cli`], `tether sim app`),
//! so tests can SIGKILL it. It owns its HTTP listener and its session sockets; it must not
//! depend on the sidecar's own modules beyond pure protocol helpers.
//!
//! Layout: `http` serves the routes, `webhook` handles `session_request`/`stop_request`,
//! `session` drives one app session's websocket, `wire` builds and inspects frames (no I/O),
//! `stats` is the observable record.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use session::{Command, SessionHandle};

mod http;
mod session;
mod stats;
mod webhook;
mod wire;

pub use session::SessionError;
pub use stats::{AppSimStats, CloseRecord, HttpCounters, SessionState, SessionStats};

/// How long [`AppSim::shutdown`] waits for sessions to close their sockets.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Behaviour of the simulated app. Defaults follow the SDK (§11.1).
#[derive(Clone, Debug)]
pub struct AppSimConfig {
    /// HTTP listen address (the app's `publicUrl`); `127.0.0.1:0` picks a free port.
    pub listen: SocketAddr,
    /// Package name sent in `tpa_connection_init` and every app message.
    pub package_name: String,
    /// Plaintext API key sent in `tpa_connection_init`.
    pub api_key: String,
    /// Subscriptions registered in onSession, one `subscription_update` per registration,
    /// each carrying the full list so far (e.g. `["transcription:en-US"]`).
    pub subscriptions: Vec<String>,
    /// On each dispatched final transcription, send a `display_event` text_wall `seen <seq>`.
    pub display_every_transcription: bool,
    /// Reconnect after an unexpected close (§11.2).
    pub auto_reconnect: bool,
    /// Reconnect attempts before the session is lost for good (SDK: 3).
    pub max_reconnect_attempts: u32,
    /// Base reconnect delay, doubled after every attempt (SDK: 1 000 ms).
    pub reconnect_delay_ms: u64,
    /// Time allowed from opening the socket to `tpa_connection_ack` (SDK: 5 000 ms).
    pub ack_timeout_ms: u64,
    /// Simulated slow onSession, before the subscriptions are registered.
    pub on_session_delay_ms: u64,
}

/// A running simulated app server. Dropping it cancels every task; [`AppSim::shutdown`]
/// also waits for them.
pub struct AppSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

/// Command-line form of [`AppSimConfig`] for `tether sim app`.
#[derive(clap::Args, Debug, Clone)]
pub struct AppSimArgs {
    /// HTTP listen address (the app's publicUrl).
    #[arg(long, default_value = "127.0.0.1:7010")]
    pub listen: SocketAddr,
    /// Package name of the simulated app.
    #[arg(long, env = "TETHER_PACKAGE_NAME")]
    pub package_name: String,
    /// API key sent in tpa_connection_init.
    #[arg(long, env = "TETHER_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Stream to subscribe to in onSession; repeat for several.
    #[arg(
        long = "subscribe",
        value_name = "STREAM",
        default_value = "transcription:en-US"
    )]
    pub subscriptions: Vec<String>,
    /// Do not answer final transcriptions with a `seen <seq>` display.
    #[arg(long)]
    pub no_display: bool,
    /// Do not reconnect after an unexpected close.
    #[arg(long)]
    pub no_reconnect: bool,
    /// Reconnect attempts before giving up.
    #[arg(long, default_value_t = 3)]
    pub max_reconnect_attempts: u32,
    /// Base reconnect delay in milliseconds (doubled per attempt).
    #[arg(long, default_value_t = 1000)]
    pub reconnect_delay_ms: u64,
    /// Time allowed for tpa_connection_ack, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub ack_timeout_ms: u64,
    /// Extra time spent in onSession, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub on_session_delay_ms: u64,
}

/// State shared by the HTTP handlers and the session drivers.
struct Shared {
    cfg: AppSimConfig,
    inner: Mutex<Inner>,
    /// Root token: cancelling it ends the listener, every connection and every session.
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Everything behind the one lock. It is never held across an `.await`.
#[derive(Default)]
struct Inner {
    /// Live sessions by `sessionId` (the SDK's `activeSessions`).
    sessions: HashMap<String, SessionHandle>,
    /// One record per session incarnation, in creation order.
    records: Vec<SessionStats>,
    http: HttpCounters,
    next_generation: u64,
}

// === impl AppSimConfig ===

impl Default for AppSimConfig {
    fn default() -> Self {
        AppSimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            package_name: String::from("com.example.tether-sim"),
            api_key: String::new(),
            subscriptions: vec![String::from("transcription:en-US")],
            display_every_transcription: true,
            auto_reconnect: true,
            max_reconnect_attempts: 3,
            reconnect_delay_ms: 1_000,
            ack_timeout_ms: 5_000,
            on_session_delay_ms: 0,
        }
    }
}

impl From<AppSimArgs> for AppSimConfig {
    fn from(args: AppSimArgs) -> Self {
        AppSimConfig {
            listen: args.listen,
            package_name: args.package_name,
            api_key: args.api_key,
            subscriptions: args.subscriptions,
            display_every_transcription: !args.no_display,
            auto_reconnect: !args.no_reconnect,
            max_reconnect_attempts: args.max_reconnect_attempts,
            reconnect_delay_ms: args.reconnect_delay_ms,
            ack_timeout_ms: args.ack_timeout_ms,
            on_session_delay_ms: args.on_session_delay_ms,
        }
    }
}

// === impl AppSim ===

impl AppSim {
    /// Binds the HTTP listener and spawns the server; returns as soon as it accepts.
    ///
    /// # Errors
    /// The listen address cannot be bound.
    pub async fn start(cfg: AppSimConfig) -> anyhow::Result<AppSim> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| anyhow::anyhow!("app-sim: cannot bind {}: {e}", cfg.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            inner: Mutex::new(Inner::default()),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        shared
            .tracker
            .spawn(http::serve(Arc::clone(&shared), listener));
        tracing::info!(%addr, package = %shared.cfg.package_name, "app-sim listening");
        Ok(AppSim { addr, shared })
    }

    /// The bound HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A snapshot of everything recorded so far.
    pub fn stats(&self) -> AppSimStats {
        self.shared.stats()
    }

    /// Sends `n` numbered `display_event` frames (text_wall `display <i>`, field `seq` = i) on
    /// the session's socket, in order. Numbers continue across calls, starting at 1.
    ///
    /// # Errors
    /// No such session, or it is not connected (like the SDK throwing on a closed socket).
    pub async fn send_display(&self, session_id: &str, n: u32) -> anyhow::Result<()> {
        let handle = self.shared.session(session_id)?;
        Ok(handle
            .request(|done| Command::Display { count: n, done })
            .await?)
    }

    /// Sends `text` as one text frame on the session's socket, unmodified.
    ///
    /// # Errors
    /// No such session, or it is not connected.
    pub async fn send_raw(&self, session_id: &str, text: String) -> anyhow::Result<()> {
        let handle = self.shared.session(session_id)?;
        Ok(handle.request(|done| Command::Raw { text, done }).await?)
    }

    /// Closes every session socket (no code, like the SDK on SIGTERM: the cloud sees 1005,
    /// no `ownership_release`), stops the server and waits for every task.
    pub async fn shutdown(self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("app-sim: tasks still running after the shutdown grace");
        }
    }
}

impl Drop for AppSim {
    fn drop(&mut self) {
        // A test that forgets `shutdown` must not leave sockets open behind it.
        self.shared.cancel.cancel();
    }
}

// === impl Shared ===

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not wedge the simulator; the data stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> AppSimStats {
        let inner = self.lock();
        AppSimStats {
            package_name: self.cfg.package_name.clone(),
            active_sessions: inner.sessions.len(),
            http: inner.http.clone(),
            sessions: inner.records.clone(),
        }
    }

    /// Applies `f` to one session record.
    fn update(&self, record: usize, f: impl FnOnce(&mut SessionStats)) {
        if let Some(stats) = self.lock().records.get_mut(record) {
            f(stats);
        }
    }

    fn count(&self, f: impl FnOnce(&mut HttpCounters)) {
        f(&mut self.lock().http);
    }

    fn session(&self, session_id: &str) -> Result<SessionHandle, SessionError> {
        self.lock()
            .sessions
            .get(session_id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(session_id.to_owned()))
    }

    /// Removes a session from the live map and returns it.
    fn take_session(&self, session_id: &str) -> Option<SessionHandle> {
        self.lock().sessions.remove(session_id)
    }

    /// Removes `session_id` only if it is still incarnation `generation`, so a finished
    /// driver never evicts its replacement.
    fn forget(&self, session_id: &str, generation: u64) {
        let mut inner = self.lock();
        if inner
            .sessions
            .get(session_id)
            .is_some_and(|h| h.generation == generation)
        {
            inner.sessions.remove(session_id);
        }
    }
}

/// Runs the simulator until SIGTERM or SIGINT, after printing `app-sim listening on ADDR`
/// on stdout (flushed, so a parent process can read the port).
///
/// # Errors
/// The listener cannot be bound, stdout is closed, or signals cannot be installed.
pub async fn run_cli(args: AppSimArgs) -> anyhow::Result<()> {
    let sim = AppSim::start(args.into()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "app-sim listening on {}", sim.addr())?;
        out.flush()?;
    }
    let signalled = wait_for_signal().await;
    sim.shutdown().await;
    Ok(signalled?)
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        r = tokio::signal::ctrl_c() => r,
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        app: AppSimArgs,
    }

    #[test]
    fn cli_defaults_match_the_sdk() {
        let cli =
            Cli::try_parse_from(["t", "--package-name", "com.x", "--api-key", "k"]).expect("parse");
        let cfg = AppSimConfig::from(cli.app);
        assert_eq!(cfg.listen, SocketAddr::from(([127, 0, 0, 1], 7010)));
        assert_eq!(cfg.subscriptions, ["transcription:en-US"]);
        assert!(cfg.display_every_transcription && cfg.auto_reconnect);
        assert_eq!(
            (
                cfg.max_reconnect_attempts,
                cfg.reconnect_delay_ms,
                cfg.ack_timeout_ms
            ),
            (3, 1000, 5000)
        );
    }

    #[test]
    fn cli_flags_override() {
        let argv = [
            "t",
            "--package-name",
            "com.x",
            "--api-key",
            "k",
            "--listen",
            "127.0.0.1:0",
            "--subscribe",
            "a",
            "--subscribe",
            "b",
            "--no-display",
            "--no-reconnect",
            "--on-session-delay-ms",
            "7",
        ];
        let cfg = AppSimConfig::from(Cli::try_parse_from(argv).expect("parse").app);
        assert_eq!(cfg.subscriptions, ["a", "b"]);
        assert!(!cfg.display_every_transcription && !cfg.auto_reconnect);
        assert_eq!(cfg.on_session_delay_ms, 7);
    }
}
