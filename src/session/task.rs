//! The session task: owns the app socket and the cloud socket of one session and drives the
//! [`Session`] machine with their frames, the app's health, commands from the listeners and
//! its own timer. All writes happen in [`Driver::perform`], outside the `select!`, whose
//! branches are all cancel-safe (`StreamExt::next`, `mpsc::Receiver::recv`,
//! `watch::Receiver::changed`, a re-armed `Sleep`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FusedStream;
use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use super::buffer::Limits;
use super::machine::{Action, Close, EndReason, Event, Frame, Session, Settings, UrlMap};
use super::registry::{SessionHandle, SessionInfo};
use crate::protocol::{now_iso8601, ConnectionError, Direction, CLOSE_POLICY};
use crate::runtime::Shared;
use crate::serve::full;
use crate::upstream::connect::{self, CloudSocket};

/// The app's socket, accepted on the local listener.
pub type AppSocket = WebSocketStream<TokioIo<Upgraded>>;

/// How long a closing socket may take to answer our close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// A peer that takes longer than this to take a write is treated as gone: a session must
/// never wedge on one stalled socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Frames read in one go from a socket that has more ready, before their writes are
/// flushed together (one flush per batch instead of per frame).
const READ_BATCH: usize = 64;

/// Commands from outside the task.
pub enum Command {
    /// A new app socket sent this init for the session.
    Attach(Box<AppSocket>, Frame),
    /// The cloud sent `stop_request` for the session.
    StopRequested,
    /// The webhook re-sent to the app was answered (`true` = 2xx).
    RefireDone(bool),
    /// A dial finished (`generation` tells stale results apart).
    Dialed {
        generation: u64,
        result: Result<Box<CloudSocket>, &'static str>,
    },
    /// The cloud resurrected the session with this WebSocket URL: heal the link in place.
    Resurrect(Url),
}

/// Everything needed to start a session task.
pub struct Spawn {
    pub session_id: String,
    pub app: AppSocket,
    pub init: Frame,
    pub cloud_url: Url,
    pub urls: UrlMap,
}

/// The machine's settings from the configuration.
pub fn settings(shared: &Shared) -> Settings {
    let s = &shared.config().session;
    let b = &shared.config().buffer;
    let c = &shared.config().cloud;
    Settings {
        up_buffer: Limits {
            max_frames: b.up_max_frames,
            max_bytes: b.up_max_bytes,
            max_age: b.up_max_age,
        },
        heartbeat: c.heartbeat,
        heartbeat_interval: c.heartbeat_interval,
        heartbeat_misses: c.heartbeat_misses,
        reconnect_base: c.reconnect_base,
        reconnect_max: c.reconnect_max,
        resurrection_wait: c.resurrection_wait,
        seed: rand::random(),
        hold_window: s.hold_window,
        intent_window: s.intent_window,
        replay_wait: s.replay_wait,
        app_ping_interval: s.app_ping_interval,
        app_ping_misses: s.app_ping_misses,
        down_buffer: Limits {
            max_frames: b.down_max_frames,
            max_bytes: b.down_max_bytes,
            max_age: b.down_max_age,
        },
    }
}

/// Starts the task for a session whose app has connected and sent its init. A task still
/// registered under the same id is ended first, so the cloud never sees two sockets of one
/// session (a superseded socket that closes later would tear down the new one).
pub fn spawn(shared: &Arc<Shared>, s: Spawn) -> SessionHandle {
    let (phase, _) = watch::channel("starting");
    let (done_tx, done) = watch::channel(false);
    let (mailbox, commands) = mpsc::channel(8);
    let info = Arc::new(SessionInfo::new(
        s.session_id.clone(),
        s.cloud_url.origin().ascii_serialization(),
        phase,
    ));
    let handle = SessionHandle {
        info: info.clone(),
        cancel: shared.cancel.child_token(),
        done,
        mailbox,
    };
    let previous = shared.sessions.insert(handle.clone());
    shared.metrics.session_state(None, Some("starting"));
    let driver = Driver {
        shared: shared.clone(),
        info,
        cancel: handle.cancel.clone(),
        app: Some(s.app),
        pending_app: None,
        cloud: None,
        cloud_url: s.cloud_url,
        commands,
        mailbox: handle.mailbox.clone(),
        health: shared.health.subscribe(),
        dial_generation: 0,
        app_dirty: false,
        cloud_dirty: false,
    };
    let package = crate::protocol::ConnectionInit::parse(match &s.init {
        Frame::Text(t) => t.as_str(),
        Frame::Binary(_) => "",
    })
    .and_then(|i| i.package_name)
    .unwrap_or_default();
    let span = tracing::info_span!("session", session_id = %s.session_id, package = %package);
    let (init, urls) = (s.init, s.urls);
    shared.tracker.spawn(
        async move {
            if let Some(prev) = previous {
                prev.cancel.cancel();
                let mut prev_done = prev.done.clone();
                let _ = tokio::time::timeout(CLOSE_LINGER * 2, prev_done.wait_for(|d| *d)).await;
            }
            driver.run(init, urls).await;
            let _ = done_tx.send(true);
        }
        .instrument(span),
    );
    handle
}

struct Driver {
    shared: Arc<Shared>,
    info: Arc<SessionInfo>,
    cancel: CancellationToken,
    app: Option<AppSocket>,
    /// The socket of an `Attach` while the machine decides on it.
    pending_app: Option<AppSocket>,
    cloud: Option<CloudSocket>,
    cloud_url: Url,
    commands: mpsc::Receiver<Command>,
    mailbox: mpsc::Sender<Command>,
    health: watch::Receiver<bool>,
    /// Counts dials, so the result of a superseded one is ignored.
    dial_generation: u64,
    /// Frames were fed to a socket and await a flush.
    app_dirty: bool,
    cloud_dirty: bool,
}

impl Driver {
    async fn run(mut self, init: Frame, urls: UrlMap) {
        let start = Instant::now();
        let (mut session, first) = Session::start(
            self.info.id.clone(),
            init,
            urls,
            settings(&self.shared),
            self.shared.buffers.clone(),
            start,
        );
        session.handle(Event::AppHealth(*self.health.borrow_and_update()), start);
        let mut phase = session.phase();
        let mut settings_generation = self.shared.config_generation.load(Ordering::Relaxed);
        let mut work: VecDeque<Action> = first.into();
        let far = || Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        loop {
            while let Some(action) = work.pop_front() {
                if let Some(ev) = self.perform(action).await {
                    work.extend(session.handle(ev, Instant::now()));
                }
                if work.is_empty() {
                    if let Some(ev) = self.flush().await {
                        work.extend(session.handle(ev, Instant::now()));
                    }
                }
            }
            if let Some(sock) = self.pending_app.take() {
                // The machine neither accepted nor refused it (the session had ended): say so.
                linger_close(sock, Some(Close::new(CLOSE_POLICY, "Session ended")), "app").await;
            }
            phase = self.publish(phase, session.phase());
            self.report_buffer(&session);
            if let Some(reason) = session.end_reason() {
                self.shared.metrics.session_end(reason.label());
                if reason == EndReason::HoldExpired {
                    self.shared.metrics.recovery("expired", None);
                }
                tracing::info!(reason = reason.label(), "session ended");
                break;
            }
            timer
                .as_mut()
                .reset(session.next_deadline().unwrap_or_else(far));
            let ev = tokio::select! {
                biased;
                () = self.cancel.cancelled() => Event::Shutdown,
                m = next(&mut self.app) => match from_app(m) {
                    Some(ev) => ev,
                    None => continue,
                },
                m = next(&mut self.cloud) => match from_cloud(m) {
                    Some(ev) => ev,
                    None => continue,
                },
                c = self.commands.recv() => match c {
                    Some(Command::Attach(sock, init)) => {
                        self.pending_app = Some(*sock);
                        Event::AppAttach(init)
                    }
                    Some(Command::StopRequested) => Event::StopRequested,
                    Some(Command::RefireDone(ok)) => Event::RefireDone(ok),
                    Some(Command::Dialed { generation, result }) => {
                        if generation != self.dial_generation {
                            continue;
                        }
                        match result {
                            Ok(sock) => {
                                tracing::debug!(hop = "cloud", url = %self.cloud_url, "cloud socket open");
                                self.cloud = Some(*sock);
                                Event::CloudConnected
                            }
                            Err(_) => Event::CloudDialFailed,
                        }
                    }
                    Some(Command::Resurrect(url)) => {
                        tracing::info!(hop = "cloud", url = %url, "cloud resurrected the session; healing in place");
                        self.cloud_url = url;
                        Event::CloudResurrect
                    }
                    None => continue,
                },
                r = self.health.changed() => match r {
                    Ok(()) => Event::AppHealth(*self.health.borrow_and_update()),
                    Err(_) => continue,
                },
                () = &mut timer => Event::Tick,
            };
            let from_socket = matches!(
                ev,
                Event::AppFrame(_) | Event::AppPong(_) | Event::CloudFrame(_) | Event::CloudPong
            );
            let from_app = matches!(ev, Event::AppFrame(_) | Event::AppPong(_));
            let generation = self.shared.config_generation.load(Ordering::Relaxed);
            if generation != settings_generation {
                // A reload: new limits and timeouts apply from this event on.
                settings_generation = generation;
                session.set_settings(settings(&self.shared));
            }
            self.note(&ev);
            work.extend(session.handle(ev, Instant::now()));
            if from_socket {
                self.read_more(from_app, &mut session, &mut work);
            }
        }
        self.publish(phase, "ended");
        self.shared.metrics.session_state(Some("ended"), None);
        self.shared.sessions.remove(&self.info);
    }

    /// Metrics for events that are worth counting before the machine sees them.
    fn note(&self, ev: &Event) {
        match ev {
            Event::TooBig(dir) => self.shared.metrics.oversized(*dir),
            Event::AppLost => self.shared.metrics.app_disconnect("lost"),
            Event::AppClosed(_) => self.shared.metrics.app_disconnect("closed"),
            _ => {}
        }
    }

    fn publish(&self, old: &'static str, new: &'static str) -> &'static str {
        if old != new {
            self.shared.metrics.session_state(Some(old), Some(new));
            self.info.phase.send_replace(new);
            if new == "app_down" {
                self.shared.health.hold();
            } else if old == "app_down" {
                self.shared.health.release();
            }
            tracing::info!(from = old, to = new, "session state");
        }
        new
    }

    fn report_buffer(&self, session: &Session) {
        let (frames, bytes, oldest) = session.buffered(Instant::now());

        self.info
            .buffered_frames
            .store(frames as u64, Ordering::Relaxed);
        self.info
            .buffered_bytes
            .store(bytes as u64, Ordering::Relaxed);
        // Stored as a point in time, so readers compute a current age between wake-ups.
        let now = Instant::now();
        let at = oldest.map_or(0, |age| {
            (now.saturating_duration_since(self.info.started)
                .saturating_sub(age))
            .as_millis() as u64
                + 1
        });
        self.info.oldest_buffered_at.store(at, Ordering::Relaxed);
    }

    /// Performs one action; an I/O failure comes back as the event it amounts to.
    async fn perform(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::DialCloud => {
                self.dial();
                None
            }
            Action::PingCloud => {
                // A masked client frame with an empty payload is 6 bytes on the wire.
                self.shared.metrics.heartbeat_bytes(Direction::Up, 6);
                self.send_cloud(Message::Ping(Bytes::new())).await
            }
            Action::BeatCloud(frame) => {
                self.shared
                    .metrics
                    .heartbeat_bytes(Direction::Up, frame.len() + 6);
                self.send_cloud(to_message(frame)).await
            }
            Action::CloudLinkLost { cause } => {
                self.shared.metrics.cloud_disconnect(cause);
                tracing::warn!(hop = "cloud", cause, "cloud link lost; reconnecting");
                None
            }
            Action::CloudReacked {
                outage,
                resurrected,
            } => {
                self.shared.metrics.cloud_reacked(outage, resurrected);
                let at = Instant::now()
                    .saturating_duration_since(self.info.started)
                    .as_millis() as u64;
                self.info.last_cloud_heal.store(at + 1, Ordering::Relaxed);
                tracing::info!(
                    hop = "cloud",
                    outage_ms = outage.as_millis() as u64,
                    resurrected,
                    "cloud link healed"
                );
                None
            }
            Action::SendCloud(frame, kind) => {
                self.shared.metrics.frame(Direction::Up, kind, frame.len());
                self.info.frames_up.fetch_add(1, Ordering::Relaxed);
                self.send_cloud(to_message(frame)).await
            }
            Action::SendApp(frame, kind) => {
                self.shared
                    .metrics
                    .frame(Direction::Down, kind, frame.len());
                self.info.frames_down.fetch_add(1, Ordering::Relaxed);
                self.send_app(to_message(frame)).await
            }
            Action::PingApp(payload) => self.send_app(Message::Ping(payload)).await,
            Action::CloseApp(close) => {
                if let Some(sock) = self.app.take() {
                    linger_close(sock, close, "app").await;
                }
                None
            }
            Action::CloseCloud(close) => {
                if let Some(sock) = self.cloud.take() {
                    linger_close(sock, close, "cloud").await;
                }
                None
            }
            Action::AbortApp => {
                self.app = None;
                None
            }
            Action::AbortCloud => {
                self.cloud = None;
                None
            }
            Action::DisplaceApp(close) => {
                self.shared.metrics.app_takeover("displaced");
                tracing::warn!(
                    hop = "app",
                    code = close.code,
                    "a newer app socket takes the session over; closing the old one"
                );
                if let Some(sock) = self.app.take() {
                    linger_close(sock, Some(close), "app").await;
                }
                None
            }
            Action::RefuseTakeover { code, message } => {
                self.shared.metrics.app_takeover("refused");
                tracing::warn!(
                    hop = "app",
                    code,
                    "too many takeovers of this session; newcomer refused"
                );
                if let Some(sock) = self.pending_app.take() {
                    reject(sock, code, message).await;
                }
                None
            }
            Action::AcceptApp => {
                tracing::info!(hop = "app", "app reconnected; answered locally");
                self.app = self.pending_app.take();
                None
            }
            Action::RejectApp { code, message } => {
                self.shared.metrics.recovery("refused", None);
                tracing::warn!(hop = "app", code, "app re-init refused");
                if let Some(sock) = self.pending_app.take() {
                    reject(sock, code, message).await;
                }
                None
            }
            Action::RefireWebhook => {
                self.refire();
                None
            }
            Action::Dropped(d) => {
                self.shared.metrics.dropped(d.stream, d.reason);
                None
            }
            Action::Recovered { replayed, latency } => {
                self.shared.metrics.recovery("replayed", Some(latency));
                self.info.recoveries.fetch_add(1, Ordering::Relaxed);
                let at = Instant::now()
                    .saturating_duration_since(self.info.started)
                    .as_millis() as u64;
                self.info
                    .last_recovery_ms
                    .store(at.max(1), Ordering::Relaxed);
                tracing::info!(
                    replayed,
                    latency_ms = latency.as_millis() as u64,
                    "app recovered; buffer replayed"
                );
                None
            }
        }
    }

    /// Takes the frames a socket already has ready (without waiting) into the machine, so
    /// their writes go out as one batch.
    fn read_more(&mut self, app: bool, session: &mut Session, work: &mut VecDeque<Action>) {
        use futures_util::FutureExt;
        for _ in 0..READ_BATCH {
            let ev = if app {
                match next(&mut self.app).now_or_never() {
                    Some(m) => from_app(m),
                    None => return,
                }
            } else {
                match next(&mut self.cloud).now_or_never() {
                    Some(m) => from_cloud(m),
                    None => return,
                }
            };
            let Some(ev) = ev else { continue };
            let last = !matches!(
                ev,
                Event::AppFrame(_) | Event::AppPong(_) | Event::CloudFrame(_) | Event::CloudPong
            );
            self.note(&ev);
            work.extend(session.handle(ev, Instant::now()));
            if last {
                return;
            }
        }
    }

    async fn send_app(&mut self, msg: Message) -> Option<Event> {
        let sock = self.app.as_mut()?;
        self.app_dirty = true;
        let lost = write(sock, msg, &self.cancel, "app").await.err()?;
        Some(match lost {
            Lost::Cancelled => Event::Shutdown,
            Lost::Failed => {
                // Drop the socket now, so the writes still queued fail at once instead of
                // each waiting out the timeout on a dead peer.
                self.app = None;
                Event::AppLost
            }
        })
    }

    async fn send_cloud(&mut self, msg: Message) -> Option<Event> {
        let sock = self.cloud.as_mut()?;
        self.cloud_dirty = true;
        let lost = write(sock, msg, &self.cancel, "cloud").await.err()?;
        Some(match lost {
            Lost::Cancelled => Event::Shutdown,
            Lost::Failed => {
                self.cloud = None;
                Event::CloudLost
            }
        })
    }

    /// Flushes what the last batch fed to each socket.
    async fn flush(&mut self) -> Option<Event> {
        if std::mem::take(&mut self.app_dirty) {
            if let Some(sock) = self.app.as_mut() {
                match flush(sock, &self.cancel, "app").await {
                    Err(Lost::Cancelled) => return Some(Event::Shutdown),
                    Err(Lost::Failed) => {
                        self.app = None;
                        return Some(Event::AppLost);
                    }
                    Ok(()) => {}
                }
            }
        }
        if std::mem::take(&mut self.cloud_dirty) {
            if let Some(sock) = self.cloud.as_mut() {
                match flush(sock, &self.cancel, "cloud").await {
                    Err(Lost::Cancelled) => return Some(Event::Shutdown),
                    Err(Lost::Failed) => {
                        self.cloud = None;
                        return Some(Event::CloudLost);
                    }
                    Ok(()) => {}
                }
            }
        }
        None
    }

    /// Re-sends the session's webhook to the app in the background; the answer comes back
    /// as a command. Bounded across sessions by `session.refire_concurrency`.
    fn refire(&self) {
        let shared = self.shared.clone();
        let id = self.info.id.clone();
        let mailbox = self.mailbox.clone();
        let body = self.webhook_body();
        let cancel = self.cancel.clone();
        self.shared.tracker.spawn(async move {
            let ok = tokio::select! {
                () = cancel.cancelled() => return,
                ok = post_webhook(&shared, body) => ok,
            };
            shared
                .metrics
                .refire(if ok { "accepted" } else { "failed" });
            tracing::info!(session_id = %id, ok, hop = "app", "webhook re-sent to the app");
            let _ = mailbox.send(Command::RefireDone(ok)).await;
        });
    }

    /// The webhook as first forwarded; for a session whose webhook Tether never saw (it
    /// restarted), one rebuilt from what the session knows.
    fn webhook_body(&self) -> Bytes {
        if let Some(rec) = self.shared.sessions.webhook(&self.info.id) {
            if !rec.body.is_empty() {
                return rec.body;
            }
        }
        let local = self.app_url_for_refire();
        let user = self
            .info
            .id
            .rsplit_once('-')
            .map(|(u, _)| u.to_string())
            .unwrap_or_default();
        let body = serde_json::json!({
            "type": "session_request", "sessionId": self.info.id, "userId": user,
            "timestamp": now_iso8601(), "augmentOSWebsocketUrl": local, "mentraOSWebsocketUrl": local,
        });
        Bytes::from(body.to_string())
    }

    fn app_url_for_refire(&self) -> String {
        let id = self
            .shared
            .clouds
            .register(&self.cloud_url)
            .unwrap_or_default();
        crate::webhook::local_url(&self.shared.local_advertise, &id, &self.cloud_url)
    }

    /// Dials the cloud in the background; the result comes back as a command, so the
    /// session keeps serving the app while a dial waits on a slow or dead cloud.
    fn dial(&mut self) {
        self.dial_generation += 1;
        let generation = self.dial_generation;
        if generation > 1 {
            self.shared.metrics.cloud_reconnect_attempt();
        }
        let shared = self.shared.clone();
        let url = self.cloud_url.clone();
        let mailbox = self.mailbox.clone();
        let cancel = self.cancel.clone();
        self.shared.tracker.spawn(async move {
            let cfg = shared.config();
            // Frames read here go to the app: the cloud->app limit applies.
            let ws = connect::ws_config(
                cfg.limits.max_frame_bytes_down,
                cfg.limits.ws_read_buffer_bytes,
            );
            let attempt = connect::dial(&url, shared.tls.clone(), ws, cfg.cloud.connect_timeout);
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = attempt => r,
            };
            let result = result.map(Box::new).map_err(|e| {
                tracing::warn!(hop = "cloud", error = %e, "cannot reach the cloud");
                shared.metrics.cloud_connect_failure(e.reason());
                e.reason()
            });
            let _ = mailbox.send(Command::Dialed { generation, result }).await;
        });
    }
}

/// POSTs a webhook body to the app; `true` on a 2xx within the webhook timeout.
pub async fn post_webhook(shared: &Shared, body: Bytes) -> bool {
    let _permit = shared.refire_slots.acquire().await;
    let req = Request::post("/webhook")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(full(body));
    let Ok(req) = req else { return false };
    let send = crate::downstream::proxy::send_to_app(shared, req, None);
    match tokio::time::timeout(shared.config().app.webhook_timeout, send).await {
        Ok(Ok(resp)) => resp.status().is_success(),
        _ => false,
    }
}

/// Reads the next message of an optional socket; pends forever when there is none.
async fn next<S>(sock: &mut Option<WebSocketStream<S>>) -> Option<Result<Message, WsError>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match sock {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// What a message read from a socket means.
enum Read {
    Frame(Frame),
    Pong(Bytes),
    Closed(Option<Close>),
    Lost,
    TooBig(Direction),
}

/// Classifies a read; `None` for control frames tungstenite answers by itself.
fn classify(m: Option<Result<Message, WsError>>, dir: Direction) -> Option<Read> {
    match m {
        Some(Ok(Message::Text(t))) => Some(Read::Frame(Frame::Text(t))),
        Some(Ok(Message::Binary(b))) => Some(Read::Frame(Frame::Binary(b))),
        Some(Ok(Message::Pong(p))) => Some(Read::Pong(p)),
        Some(Ok(Message::Ping(_) | Message::Frame(_))) => None,
        Some(Ok(Message::Close(cf))) => Some(Read::Closed(cf.map(|cf| Close {
            code: u16::from(cf.code),
            reason: cf.reason.to_string(),
        }))),
        Some(Err(WsError::Capacity(_))) => Some(Read::TooBig(dir)),
        Some(Err(e)) => {
            let hop = if dir == Direction::Up { "app" } else { "cloud" };
            tracing::debug!(hop, error = %e, "socket failed");
            Some(Read::Lost)
        }
        None => Some(Read::Lost),
    }
}

fn from_app(m: Option<Result<Message, WsError>>) -> Option<Event> {
    classify(m, Direction::Up).map(|r| match r {
        Read::Frame(frame) => Event::AppFrame(frame),
        Read::Pong(p) => Event::AppPong(p),
        Read::Closed(c) => Event::AppClosed(c),
        Read::Lost => Event::AppLost,
        Read::TooBig(d) => Event::TooBig(d),
    })
}

fn from_cloud(m: Option<Result<Message, WsError>>) -> Option<Event> {
    classify(m, Direction::Down).map(|r| match r {
        Read::Frame(frame) => Event::CloudFrame(frame),
        Read::Pong(_) => Event::CloudPong,
        Read::Closed(c) => Event::CloudClosed(c),
        Read::Lost => Event::CloudLost,
        Read::TooBig(d) => Event::TooBig(d),
    })
}

/// Why a write did not complete.
enum Lost {
    /// The session is shutting down.
    Cancelled,
    /// The peer failed or stalled past [`WRITE_TIMEOUT`].
    Failed,
}

/// Queues one message on a socket (sent at the next flush, or sooner when the write
/// buffer fills), giving up on a stalled peer and on shutdown.
async fn write<S>(
    sock: &mut WebSocketStream<S>,
    msg: Message,
    cancel: &CancellationToken,
    hop: &'static str,
) -> Result<(), Lost>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    bounded(sock.feed(msg), cancel, hop).await
}

async fn flush<S>(
    sock: &mut WebSocketStream<S>,
    cancel: &CancellationToken,
    hop: &'static str,
) -> Result<(), Lost>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    bounded(sock.flush(), cancel, hop).await
}

async fn bounded<F>(io: F, cancel: &CancellationToken, hop: &'static str) -> Result<(), Lost>
where
    F: std::future::Future<Output = Result<(), WsError>>,
{
    tokio::select! {
        () = cancel.cancelled() => Err(Lost::Cancelled),
        r = tokio::time::timeout(WRITE_TIMEOUT, io) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::debug!(hop, error = %e, "write failed");
                Err(Lost::Failed)
            }
            Err(_) => {
                tracing::warn!(hop, after = ?WRITE_TIMEOUT, "peer stopped taking writes");
                Err(Lost::Failed)
            }
        },
    }
}

fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(t) => Message::Text(t),
        Frame::Binary(b) => Message::Binary(b),
    }
}

/// Sends a close frame (or one without status when `close` is `None`) and waits briefly for
/// the peer's answer, so the peer reads our code and reason rather than a reset.
async fn linger_close<S>(mut sock: WebSocketStream<S>, close: Option<Close>, hop: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let frame = close.map(|c| CloseFrame {
        code: CloseCode::from(c.code),
        reason: c.reason.into(),
    });
    match tokio::time::timeout(CLOSE_LINGER, sock.close(frame)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(hop, error = %e, "close failed");
            return;
        }
        Err(_) => return,
    }
    // Waiting for the peer's answer happens aside, so the session (and a shutdown) need
    // not wait for a slow peer; the socket is dropped after at most CLOSE_LINGER.
    tokio::spawn(async move {
        let drain = async {
            if sock.is_terminated() {
                // A read failed (a frame over the limit): the WebSocket stream is done, but
                // bytes left unread would make the kernel answer our close with a reset that
                // discards the close frame itself. Read them raw until the peer is done.
                use tokio::io::AsyncReadExt;
                let mut scratch = vec![0u8; 16 * 1024];
                while let Ok(n) = sock.get_mut().read(&mut scratch).await {
                    if n == 0 {
                        break;
                    }
                }
            } else {
                while let Some(Ok(_)) = sock.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
    });
}

/// Refuses an app socket the way the cloud does: `tpa_connection_error`, then close 1008.
pub async fn reject<S>(mut sock: WebSocketStream<S>, code: &str, message: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let frame = ConnectionError::frame(code, message, now_iso8601());
    let _ = sock.send(Message::Text(frame.into())).await;
    // Close reasons are capped at 123 bytes on the wire.
    let reason: String = message.chars().take(120).collect();
    linger_close(sock, Some(Close::new(CLOSE_POLICY, &reason)), "app").await;
}
