//! Shared state of one running emulator ([`Engine`]) and its synchronous operations: data
//! generation, raw injection, socket control, stats, HTTP hit counters, task spawning.
//!
//! The registry sits behind a std `Mutex` that is never held across an `.await`; socket
//! writes are queued on per-socket channels while it is held, which fixes their order.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registration::RegistrationState;
use super::session::{Registry, Session, SessionStats, SocketCmd, SocketRef};
use super::webhook::WebhookClient;
use super::{server, CloudSimConfig, CloudSimError, RawFrame, ReceivedFrame, UrlStyle};

/// Upper bound for one `push_*` call, so a bad control request cannot stall the registry.
pub(crate) const MAX_PUSH: u32 = 1_000_000;

/// Which generated stream a push or a generator produces.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Stream {
    Transcription,
    Audio,
}

/// Everything the emulator's tasks share.
#[derive(Debug)]
pub(crate) struct Engine {
    pub cfg: CloudSimConfig,
    pub addr: SocketAddr,
    /// `ws://host:port` put in webhooks.
    pub ws_base: String,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    pub webhook: Option<WebhookClient>,
    /// In-memory simple storage (§3): user id -> key -> value.
    pub storage: Mutex<HashMap<String, BTreeMap<String, Value>>>,
    registry: Mutex<Registry>,
    /// The app-server registry (`registration`); locked after `registry`, never around it.
    pub(crate) registration: Mutex<RegistrationState>,
    /// When the emulator started; registration attempts are timed from here.
    pub(crate) started: tokio::time::Instant,
    hits: Mutex<BTreeMap<String, u64>>,
    next_socket: AtomicU64,
}

/// Locks a mutex, recovering from poisoning: our critical sections do not panic, and a
/// test helper must keep answering even if one did.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl Engine ===

impl Engine {
    /// Binds, then spawns the accept loop and the configured generators.
    pub(crate) async fn start(cfg: CloudSimConfig) -> Result<Arc<Self>, CloudSimError> {
        let bind_err = |source| CloudSimError::Bind {
            addr: cfg.listen,
            source,
        };
        let listener = TcpListener::bind(cfg.listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let webhook = cfg
            .webhook_url
            .as_deref()
            .map(|url| WebhookClient::new(url, Duration::from_millis(cfg.webhook_timeout_ms)))
            .transpose()?;
        let ws_base = cfg.public_ws_base.clone().map_or_else(
            || format!("ws://{addr}"),
            |b| b.trim_end_matches('/').to_owned(),
        );
        let engine = Arc::new(Self {
            cfg,
            addr,
            ws_base,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            webhook,
            storage: Mutex::default(),
            registry: Mutex::default(),
            registration: Mutex::default(),
            started: tokio::time::Instant::now(),
            hits: Mutex::default(),
            next_socket: AtomicU64::new(1),
        });
        engine.spawn(server::accept_loop(engine.clone(), listener));
        let generators = [
            (engine.cfg.transcription_interval_ms, Stream::Transcription),
            (engine.cfg.audio_interval_ms, Stream::Audio),
        ];
        for (period, stream) in generators {
            if let Some(ms) = period {
                engine.spawn(generate(engine.clone(), Duration::from_millis(ms), stream));
            }
        }
        Ok(engine)
    }

    /// Spawns `fut` on the tracker; it is dropped when the emulator shuts down.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = fut => {}
            }
        });
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// Runs `f` on one session under the registry lock.
    pub(crate) fn with_session<T>(
        &self,
        session_id: &str,
        f: impl FnOnce(&mut Session) -> T,
    ) -> Result<T, CloudSimError> {
        let mut reg = self.registry();
        let session = reg
            .get_mut(session_id)
            .ok_or_else(|| CloudSimError::UnknownSession(session_id.to_owned()))?;
        Ok(f(session))
    }

    /// Runs `f` on the session's current socket, or fails with `NoSocket`.
    fn with_socket(
        &self,
        session_id: &str,
        f: impl FnOnce(&SocketRef),
    ) -> Result<(), CloudSimError> {
        self.with_session(session_id, |s| s.socket.as_ref().map(f))?
            .ok_or_else(|| CloudSimError::NoSocket(session_id.to_owned()))
    }

    /// Path of the v2 app websocket for the configured era (§4).
    pub(crate) fn app_ws_path(&self) -> &'static str {
        match self.cfg.url_style {
            UrlStyle::Tpa => "/tpa-ws",
            UrlStyle::June | UrlStyle::Later => "/app-ws",
        }
    }

    pub(crate) fn next_socket_id(&self) -> u64 {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    /// Generates `n` frames of `stream` for one session, in order.
    pub(crate) fn push(
        &self,
        session_id: &str,
        n: u32,
        stream: Stream,
    ) -> Result<(), CloudSimError> {
        if n > MAX_PUSH {
            return Err(CloudSimError::InvalidInput(format!(
                "count {n} > {MAX_PUSH}"
            )));
        }
        let chunk_bytes = self.cfg.audio_chunk_bytes;
        self.with_session(session_id, |s| {
            for _ in 0..n {
                emit(s, stream, chunk_bytes);
            }
        })
    }

    /// One frame of `stream` to every session (the interval generators).
    fn tick(&self, stream: Stream) {
        let mut reg = self.registry();
        for session in reg.sessions.values_mut() {
            emit(session, stream, self.cfg.audio_chunk_bytes);
        }
    }

    pub(crate) fn send_raw(&self, session_id: &str, frame: RawFrame) -> Result<(), CloudSimError> {
        let msg = match frame {
            RawFrame::Text(text) => Message::text(text),
            RawFrame::Binary(bytes) => Message::binary(bytes),
        };
        self.with_session(session_id, |s| {
            let sent = s.socket.as_ref().is_some_and(|sock| sock.send(msg));
            s.stats.raw_sent += u64::from(sent);
            sent
        })?
        .then_some(())
        .ok_or_else(|| CloudSimError::NoSocket(session_id.to_owned()))
    }

    /// Sends a control command (drop, blackhole) to the current app socket.
    pub(crate) fn socket_cmd(&self, session_id: &str, cmd: SocketCmd) -> Result<(), CloudSimError> {
        self.with_socket(session_id, |sock| {
            let _ = sock.tx.send(cmd);
        })
    }

    /// Closes the current app socket. Only codes a peer may send are accepted (RFC 6455
    /// §7.4: 1005/1006/1015 are never sent on the wire).
    pub(crate) fn close_socket(
        &self,
        session_id: &str,
        code: u16,
        reason: &str,
    ) -> Result<(), CloudSimError> {
        if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
            return Err(CloudSimError::InvalidInput(format!(
                "close code {code} cannot be sent"
            )));
        }
        self.with_socket(session_id, |sock| sock.close(code, reason))
    }

    pub(crate) fn stats(&self, session_id: &str) -> Option<SessionStats> {
        self.with_session(session_id, |s| s.snapshot()).ok()
    }

    pub(crate) fn all_stats(&self) -> Vec<SessionStats> {
        let mut all: Vec<_> = self
            .registry()
            .sessions
            .values()
            .map(Session::snapshot)
            .collect();
        all.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        all
    }

    pub(crate) fn received(&self, session_id: &str) -> Result<Vec<ReceivedFrame>, CloudSimError> {
        self.with_session(session_id, |s| s.received.iter().cloned().collect())
    }

    /// Counts one hit on a cloud HTTP route.
    pub(crate) fn hit(&self, route: &str) {
        *lock(&self.hits).entry(route.to_owned()).or_default() += 1;
    }

    pub(crate) fn http_hits(&self) -> BTreeMap<String, u64> {
        lock(&self.hits).clone()
    }
}

fn emit(session: &mut Session, stream: Stream, chunk_bytes: usize) {
    match stream {
        Stream::Transcription => session.emit_transcription(),
        Stream::Audio => session.emit_audio(chunk_bytes),
    }
}

/// Interval generator: one frame per period to every subscribed session.
async fn generate(engine: Arc<Engine>, period: Duration, stream: Stream) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        engine.tick(stream);
    }
}
