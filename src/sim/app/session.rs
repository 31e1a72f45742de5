//! One app session's websocket, driven like S-2.1.29's `AppSession` (§5, §9, §11): open,
//! init, wait for the ack, send the subscription list, dispatch frames strictly in arrival
//! order, reconnect with doubling delays after an unexpected close.
//!
//! The driver task owns the socket; everyone else talks to it through [`SessionHandle`]'s
//! mailbox, so writes never race reads. Each `select!` below polls only cancel-safe
//! futures (token, `mpsc::recv`, stream `next`, timers); writes happen in branch bodies.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{connect_async_with_config, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::stats::{CloseRecord, SessionState, SessionStats};
use super::wire::{self, CloseVerdict, Inbound, StreamFrame};
use super::Shared;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Received = Option<Result<Message, tungstenite::Error>>;

/// Pending commands per session; callers wait when it is full.
const MAILBOX: usize = 64;
/// A peer that stops reading must not wedge the driver forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the peer's side of a closing handshake.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);
/// The SDK's local "permanently lost" code (§11.3), never sent on the wire.
const PERMANENT_LOSS_CODE: u16 = 4000;
/// What the `ws` library reports for a close frame without a code.
const NO_STATUS: u16 = 1005;
/// What the `ws` library reports when the socket ends without a close frame.
const ABNORMAL: u16 = 1006;
/// Close code after which the SDK neither reconnects nor forgets the session (§11.4 gap).
const POLICY: u16 = 1008;

/// Where a command's outcome goes.
pub(super) type Reply = oneshot::Sender<Result<(), SessionError>>;

/// Work the driver does on behalf of HTTP handlers and [`super::AppSim`].
pub(super) enum Command {
    /// `count` numbered text_wall displays.
    Display { count: u32, done: Reply },
    /// One text frame, as given.
    Raw { text: String, done: Reply },
    /// Register a subscription (an SDK handler) and send the full list.
    Register { key: String, done: Reply },
    /// Send `ownership_release` (`switching_clouds`).
    Release { done: Reply },
}

/// Why a command on a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No live session has this id.
    #[error("no app session {0:?}")]
    NotFound(String),
    /// The session exists but has no open socket (reconnecting or lingering).
    #[error("app session is not connected")]
    NotConnected,
    /// The socket failed while writing; the session will reconnect or end.
    #[error("websocket write failed: {0}")]
    Write(String),
    /// The session's task has ended.
    #[error("app session task ended")]
    Gone,
}

/// Why opening a socket up to its ack failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnectError {
    #[error("cancelled")]
    Cancelled,
    #[error("no tpa_connection_ack within {0:?}")]
    AckTimeout(Duration),
    #[error("cannot open {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: Box<tungstenite::Error>,
    },
    #[error("socket closed before the ack ({})", .0.code)]
    Closed(CloseRecord),
}

/// Cloneable front of one session incarnation.
#[derive(Clone)]
pub(super) struct SessionHandle {
    pub(super) generation: u64,
    tx: mpsc::Sender<Command>,
    /// Cancelling it closes the socket without a code and ends the driver.
    pub(super) stop: CancellationToken,
}

/// The driver's per-socket outcome of one received message.
enum Step {
    Continue,
    Acked,
    Ended(CloseRecord),
}

/// How a connected socket ended.
enum Ended {
    /// Our own stop token: close politely and end.
    Stopped,
    /// The peer closed or the socket broke.
    Closed(CloseRecord),
}

/// Task state of one session incarnation.
struct Driver {
    shared: Arc<Shared>,
    session_id: String,
    ws_url: String,
    generation: u64,
    record: usize,
    rx: mpsc::Receiver<Command>,
    stop: CancellationToken,
    /// Registered handler keys, in registration order (the SDK derives its list from them).
    registered: Vec<String>,
    /// Reconnect attempts since the last ack (reset by ack and by `app_stopped`).
    attempts: u32,
    /// Last number used by [`Command::Display`].
    display_seq: u64,
}

/// Creates session incarnation, makes it THE live session for `session_id` and spawns
/// its driver. The receiver resolves once the first socket is acked (and `[]` was sent).
pub(super) fn spawn(
    shared: &Arc<Shared>,
    session_id: &str,
    user_id: &str,
    ws_url: &str,
) -> (SessionHandle, oneshot::Receiver<Result<(), ConnectError>>) {
    let (tx, rx) = mpsc::channel(MAILBOX);
    let stop = shared.cancel.child_token();
    let (handle, record) = {
        let mut inner = shared.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let record = inner.records.len();
        inner
            .records
            .push(SessionStats::new(session_id, generation, user_id, ws_url));
        let handle = SessionHandle {
            generation,
            tx,
            stop: stop.clone(),
        };
        if let Some(prev) = inner.sessions.insert(session_id.to_owned(), handle.clone()) {
            // Two concurrent requests for one id: the later one owns it.
            prev.stop.cancel();
        }
        (handle, record)
    };
    let driver = Driver {
        shared: Arc::clone(shared),
        session_id: session_id.to_owned(),
        ws_url: ws_url.to_owned(),
        generation: handle.generation,
        record,
        rx,
        stop,
        registered: Vec::new(),
        attempts: 0,
        display_seq: 0,
    };
    let (ready_tx, ready_rx) = oneshot::channel();
    let span = tracing::info_span!("app_session", session_id, generation = handle.generation);
    shared.tracker.spawn(driver.run(ready_tx).instrument(span));
    (handle, ready_rx)
}

// === impl SessionHandle ===

impl SessionHandle {
    /// Sends one command and waits for its outcome.
    pub(super) async fn request(
        &self,
        make: impl FnOnce(Reply) -> Command,
    ) -> Result<(), SessionError> {
        let (done, outcome) = oneshot::channel();
        self.tx
            .send(make(done))
            .await
            .map_err(|_| SessionError::Gone)?;
        outcome.await.map_err(|_| SessionError::Gone)?
    }
}

// === impl Driver ===

impl Driver {
    async fn run(mut self, ready: oneshot::Sender<Result<(), ConnectError>>) {
        let mut ws = match self.connect().await {
            Ok(ws) => {
                let _ = ready.send(Ok(()));
                ws
            }
            Err(e) => {
                tracing::debug!(error = %e, "app-sim: first connect failed");
                self.finish(SessionState::Stopped, true);
                let _ = ready.send(Err(e));
                return;
            }
        };
        loop {
            let close = match self.serve(&mut ws).await {
                Ended::Stopped => {
                    close_politely(ws).await;
                    self.finish(SessionState::Stopped, true);
                    return;
                }
                Ended::Closed(close) => close,
            };
            drop(ws);
            tracing::debug!(code = close.code, reason = %close.reason, "app-sim: socket closed");
            if self.end_if_final(&close) {
                return;
            }
            if !self.shared.cfg.auto_reconnect {
                // Like the SDK without autoReconnect: the session lingers without a socket.
                self.finish(SessionState::Stopped, false);
                return;
            }
            ws = match self.reconnect().await {
                Some(ws) => ws,
                None => return,
            };
        }
    }

    /// Opens the socket, sends init and processes frames until the ack (§5.1, §11.1).
    async fn connect(&mut self) -> Result<Ws, ConnectError> {
        let limit = Duration::from_millis(self.shared.cfg.ack_timeout_ms);
        let deadline = Instant::now() + limit;
        // The SDK's `new WebSocket(url)`: no headers, no subprotocol.
        let open = connect_async_with_config(self.ws_url.as_str(), Some(wire::ws_config()), true);
        let opened = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(ConnectError::Cancelled),
            r = timeout_at(deadline, open) => r,
        };
        let mut ws = match opened {
            Err(_) => return Err(ConnectError::AckTimeout(limit)),
            Ok(Err(e)) => {
                return Err(ConnectError::Open {
                    url: self.ws_url.clone(),
                    source: Box::new(e),
                })
            }
            Ok(Ok((ws, _response))) => ws,
        };
        let cfg = &self.shared.cfg;
        let init = wire::connection_init(&self.session_id, &cfg.package_name, &cfg.api_key);
        if write_frames(&mut ws, vec![init]).await.is_err() {
            return Err(ConnectError::Closed(self.record_loss()));
        }
        self.update(|s| s.inits_sent += 1);
        loop {
            let msg = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Err(ConnectError::Cancelled),
                () = sleep_until(deadline) => return Err(ConnectError::AckTimeout(limit)),
                Some(cmd) = self.rx.recv() => {
                    self.refuse(cmd);
                    continue;
                }
                msg = ws.next() => msg,
            };
            match self.on_message(&mut ws, msg).await {
                Step::Continue => {}
                Step::Acked => return Ok(ws),
                Step::Ended(close) => return Err(ConnectError::Closed(close)),
            }
        }
    }

    /// Runs a connected socket until it ends.
    async fn serve(&mut self, ws: &mut Ws) -> Ended {
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ended::Stopped,
                Some(cmd) = self.rx.recv() => {
                    if let Err(close) = self.command(ws, cmd).await {
                        return Ended::Closed(close);
                    }
                }
                msg = ws.next() => match self.on_message(ws, msg).await {
                    Step::Continue | Step::Acked => {}
                    Step::Ended(close) => return Ended::Closed(close),
                },
            }
        }
    }

    /// §11.3: `reconnect_delay * 2^n` before attempt n+1, each a full connect; `None` when
    /// the session ended instead.
    async fn reconnect(&mut self) -> Option<Ws> {
        loop {
            if self.attempts >= self.shared.cfg.max_reconnect_attempts {
                tracing::info!(
                    attempts = self.attempts,
                    "app-sim: connection permanently lost"
                );
                self.update(|s| s.stop_code = Some(PERMANENT_LOSS_CODE));
                self.finish(SessionState::Stopped, true);
                return None;
            }
            let factor = 1u64 << self.attempts.min(20);
            let delay =
                Duration::from_millis(self.shared.cfg.reconnect_delay_ms.saturating_mul(factor));
            self.attempts += 1;
            self.update(|s| {
                s.reconnect_attempts += 1;
                s.state = SessionState::Reconnecting;
            });
            if !self.idle(delay).await {
                self.finish(SessionState::Stopped, true);
                return None;
            }
            match self.connect().await {
                Ok(ws) => return Some(ws),
                Err(ConnectError::Cancelled) => {
                    self.finish(SessionState::Stopped, true);
                    return None;
                }
                Err(ConnectError::Closed(close)) if self.end_if_final(&close) => return None,
                Err(e) => {
                    tracing::debug!(error = %e, attempt = self.attempts, "app-sim: reconnect failed")
                }
            }
        }
    }

    /// Waits `delay` while refusing commands; false if the session was stopped meanwhile.
    async fn idle(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return false,
                () = sleep_until(deadline) => return true,
                Some(cmd) = self.rx.recv() => self.refuse(cmd),
            }
        }
    }

    /// Handles one received message (or the end of the stream).
    async fn on_message(&mut self, ws: &mut Ws, msg: Received) -> Step {
        match msg {
            Some(Ok(Message::Text(text))) => {
                let (acked, out) = self.on_text(text.as_str());
                if !out.is_empty() && write_frames(ws, out).await.is_err() {
                    return Step::Ended(self.record_loss());
                }
                if !acked {
                    return Step::Continue;
                }
                match self.on_connected(ws).await {
                    Ok(()) => Step::Acked,
                    Err(_) => Step::Ended(self.record_loss()),
                }
            }
            Some(Ok(Message::Binary(chunk))) => {
                let seq = wire::audio_seq(&chunk);
                self.update(|s| {
                    s.audio_chunks += 1;
                    s.audio_seqs.extend(seq);
                });
                Step::Continue
            }
            Some(Ok(Message::Ping(_))) => {
                // tungstenite queued the pong; push it out now instead of on the next read.
                match ws.flush().await {
                    Ok(()) => Step::Continue,
                    Err(_) => Step::Ended(self.record_loss()),
                }
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => Step::Continue,
            Some(Ok(Message::Close(frame))) => {
                let close = frame.map_or(
                    CloseRecord {
                        code: NO_STATUS,
                        reason: String::new(),
                    },
                    |f| CloseRecord {
                        code: f.code.into(),
                        reason: f.reason.as_str().to_owned(),
                    },
                );
                self.update(|s| s.closes.push(close.clone()));
                // Lets tungstenite send its close reply and see the TCP end.
                drain(ws).await;
                Step::Ended(close)
            }
            Some(Err(_)) | None => Step::Ended(self.record_loss()),
        }
    }

    /// Records one text frame; returns whether it was an ack and any frames to send back.
    fn on_text(&mut self, text: &str) -> (bool, Vec<String>) {
        let mut out = Vec::new();
        let mut acked = false;
        match wire::inspect(text, &self.registered) {
            Inbound::Unrecognised => self.update(|s| s.unknown_or_malformed += 1),
            Inbound::DataStream(frame) => self.on_stream(frame, &mut out),
            Inbound::Ack(ack) => {
                acked = true;
                self.update(|s| {
                    s.acks_received += 1;
                    s.settings = ack.get("settings").cloned();
                    s.ack = Some(ack);
                });
            }
            Inbound::ConnectionError(code) => self.update(|s| s.connection_errors.push(code)),
            Inbound::SettingsUpdate(settings) => self.update(|s| {
                bump(&mut s.other_frames, "settings_update");
                s.settings = Some(settings);
            }),
            Inbound::AppStopped => {
                // §11.2: only resets the counter; the close that follows decides.
                self.attempts = 0;
                self.update(|s| bump(&mut s.other_frames, "app_stopped"));
            }
            Inbound::Other(kind) => self.update(|s| bump(&mut s.other_frames, &kind)),
        }
        (acked, out)
    }

    /// §7.1: dispatch only on an exact key match; captions answer final transcriptions.
    fn on_stream(&mut self, frame: StreamFrame, out: &mut Vec<String>) {
        if !frame.dispatched {
            self.update(|s| bump(&mut s.undispatched, &frame.stream_type));
            return;
        }
        let caption =
            frame.transcription && frame.is_final && self.shared.cfg.display_every_transcription;
        self.update(|s| {
            bump(&mut s.dispatched, &frame.stream_type);
            if frame.transcription {
                match frame.seq {
                    Some(seq) => s.transcriptions.push(seq),
                    None => s.transcriptions_without_seq += 1,
                }
            }
            if caption {
                s.displays_sent += 1;
            }
        });
        if caption {
            let text = frame
                .seq
                .map_or_else(|| String::from("seen ?"), |seq| format!("seen {seq}"));
            out.push(wire::display_text(
                &self.shared.cfg.package_name,
                &text,
                None,
            ));
        }
    }

    /// After an ack: reset the backoff and send the full handler-derived list (`[]` on the
    /// first connect, before onSession registered anything).
    async fn on_connected(&mut self, ws: &mut Ws) -> Result<(), tungstenite::Error> {
        self.attempts = 0;
        self.update(|s| s.state = SessionState::Connected);
        write_frames(ws, vec![self.subscription_frame()]).await?;
        self.update(|s| s.subscription_updates_sent += 1);
        Ok(())
    }

    /// Executes a command on the open socket; `Err` means the socket broke.
    async fn command(&mut self, ws: &mut Ws, cmd: Command) -> Result<(), CloseRecord> {
        let package = self.shared.cfg.package_name.clone();
        match cmd {
            Command::Display { count, done } => {
                let frames = (0..count)
                    .map(|_| {
                        self.display_seq += 1;
                        let text = format!("display {}", self.display_seq);
                        wire::display_text(&package, &text, Some(self.display_seq))
                    })
                    .collect();
                self.send(ws, frames, done, |s| s.displays_sent += u64::from(count))
                    .await
            }
            Command::Raw { text, done } => self.send(ws, vec![text], done, |_| {}).await,
            Command::Register { key, done } => {
                self.register(key);
                let frame = self.subscription_frame();
                self.send(ws, vec![frame], done, |s| s.subscription_updates_sent += 1)
                    .await
            }
            Command::Release { done } => {
                let frame = wire::ownership_release(&package, &self.session_id);
                self.send(ws, vec![frame], done, |s| s.ownership_releases_sent += 1)
                    .await
            }
        }
    }

    async fn send(
        &mut self,
        ws: &mut Ws,
        frames: Vec<String>,
        done: Reply,
        count: impl FnOnce(&mut SessionStats),
    ) -> Result<(), CloseRecord> {
        match write_frames(ws, frames).await {
            Ok(()) => {
                self.update(count);
                let _ = done.send(Ok(()));
                Ok(())
            }
            Err(e) => {
                let _ = done.send(Err(SessionError::Write(e.to_string())));
                Err(self.record_loss())
            }
        }
    }

    /// A command while there is no open socket: registrations still count (the SDK keeps
    /// handlers and sends them after the next ack), sends fail like on a closed `ws`.
    fn refuse(&mut self, cmd: Command) {
        let done = match cmd {
            Command::Register { key, done } => {
                self.register(key);
                let _ = done.send(Ok(()));
                return;
            }
            Command::Display { done, .. }
            | Command::Raw { done, .. }
            | Command::Release { done } => done,
        };
        let _ = done.send(Err(SessionError::NotConnected));
    }

    fn register(&mut self, key: String) {
        if !self.registered.contains(&key) {
            self.registered.push(key);
        }
        let subs = self.registered.clone();
        self.update(|s| s.subscriptions = subs);
    }

    fn subscription_frame(&self) -> String {
        wire::subscription_update(
            &self.shared.cfg.package_name,
            &self.session_id,
            &self.registered,
        )
    }

    /// Ends the session if `close` is final per §11.2; returns whether it did.
    fn end_if_final(&self, close: &CloseRecord) -> bool {
        match wire::classify_close(close.code, &close.reason) {
            CloseVerdict::Reconnect => false,
            CloseVerdict::Stop => {
                self.finish(SessionState::Stopped, close.code != POLICY);
                true
            }
            CloseVerdict::Terminate => {
                self.finish(SessionState::Terminated, true);
                true
            }
        }
    }

    /// Records a socket that ended without a close frame (what `ws` reports as 1006).
    fn record_loss(&self) -> CloseRecord {
        let close = CloseRecord {
            code: ABNORMAL,
            reason: String::new(),
        };
        self.update(|s| s.closes.push(close.clone()));
        close
    }

    /// Sets the final state; `forget` removes the session from the live map like the
    /// AppServer's `onStop`.
    fn finish(&self, state: SessionState, forget: bool) {
        self.update(|s| s.state = state);
        if forget {
            self.shared.forget(&self.session_id, self.generation);
        }
    }

    fn update(&self, f: impl FnOnce(&mut SessionStats)) {
        self.shared.update(self.record, f);
    }
}

fn bump(map: &mut std::collections::BTreeMap<String, u64>, key: &str) {
    *map.entry(key.to_owned()).or_default() += 1;
}

/// Writes `frames` in order and flushes, bounded by [`WRITE_TIMEOUT`].
async fn write_frames(ws: &mut Ws, frames: Vec<String>) -> Result<(), tungstenite::Error> {
    let write = async {
        for frame in frames {
            ws.feed(Message::text(frame)).await?;
        }
        ws.flush().await
    };
    timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()))
}

/// Reads until the peer ends the socket, bounded by [`CLOSE_DRAIN`].
async fn drain(ws: &mut Ws) {
    let _ = timeout(CLOSE_DRAIN, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The SDK's `disconnect()`: `ws.close()` without a code, so the cloud sees 1005.
async fn close_politely(mut ws: Ws) {
    if timeout(CLOSE_DRAIN, ws.close(None)).await.is_ok() {
        drain(&mut ws).await;
    }
}
