//! The session task: owns the app socket and the cloud socket of one session and drives the
//! [`Session`] machine with their frames. All writes happen in [`Driver::perform`], outside
//! the `select!`, whose branches are all cancel-safe (`StreamExt::next` on a WebSocket).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use url::Url;

use super::machine::{Action, Close, Event, Frame, Session, UrlMap};
use super::registry::{SessionHandle, SessionInfo};
use crate::protocol::Direction;
use crate::runtime::Shared;
use crate::upstream::connect::{self, CloudSocket};

/// The app's socket, accepted on the local listener.
pub type AppSocket = WebSocketStream<TokioIo<Upgraded>>;

/// How long a closing socket may take to answer our close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Everything needed to start a session task.
pub struct Spawn {
    pub session_id: String,
    pub app: AppSocket,
    pub init: Frame,
    pub cloud_url: Url,
    pub urls: UrlMap,
}

/// Starts the task for a session whose app has connected and sent its init. A task already
/// running for the same id is ended first, so the cloud never sees two sockets of one
/// session (a superseded socket that closes later would tear down the new one).
pub fn spawn(shared: &Arc<Shared>, s: Spawn) -> SessionHandle {
    let (phase, _) = watch::channel("starting");
    let (done_tx, done) = watch::channel(false);
    let info = Arc::new(SessionInfo {
        id: s.session_id.clone(),
        cloud: s.cloud_url.origin().ascii_serialization(),
        started: Instant::now(),
        phase,
        frames_up: Default::default(),
        frames_down: Default::default(),
    });
    let handle = SessionHandle {
        info: info.clone(),
        cancel: shared.cancel.child_token(),
        done,
    };
    let previous = shared.sessions.insert(handle.clone());
    shared.metrics.session_state(None, Some("starting"));
    let driver = Driver {
        shared: shared.clone(),
        info,
        cancel: handle.cancel.clone(),
        app: Some(s.app),
        cloud: None,
        cloud_url: s.cloud_url,
    };
    let span = tracing::info_span!("session", session_id = %s.session_id);
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
    cloud: Option<CloudSocket>,
    cloud_url: Url,
}

impl Driver {
    async fn run(mut self, init: Frame, urls: UrlMap) {
        let (mut session, first) = Session::start(init, urls, Instant::now());
        let mut phase = session.phase();
        let mut work: VecDeque<Action> = first.into();
        loop {
            while let Some(action) = work.pop_front() {
                if let Some(ev) = self.perform(action).await {
                    work.extend(session.handle(ev, Instant::now()));
                }
            }
            phase = self.publish(phase, session.phase());
            if let Some(reason) = session.end_reason() {
                self.shared.metrics.session_end(reason.label());
                tracing::info!(reason = reason.label(), "session ended");
                break;
            }
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
            };
            if let Event::TooBig(dir) = &ev {
                self.shared.metrics.oversized(*dir);
            }
            work.extend(session.handle(ev, Instant::now()));
        }
        self.publish(phase, "ended");
        self.shared.metrics.session_state(Some("ended"), None);
        self.shared.sessions.remove(&self.info);
    }

    fn publish(&self, old: &'static str, new: &'static str) -> &'static str {
        if old != new {
            self.shared.metrics.session_state(Some(old), Some(new));
            self.info.phase.send_replace(new);
        }
        new
    }

    /// Performs one action; an I/O failure comes back as the event it amounts to.
    async fn perform(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::DialCloud => Some(self.dial().await),
            Action::SendCloud(frame, kind) => {
                self.shared.metrics.frame(Direction::Up, kind, frame.len());
                self.info.frames_up.fetch_add(1, Ordering::Relaxed);
                let sock = self.cloud.as_mut()?;
                sock.send(to_message(frame)).await.err().map(|e| {
                    tracing::debug!(hop = "cloud", error = %e, "write failed");
                    Event::CloudLost
                })
            }
            Action::SendApp(frame, kind) => {
                self.shared.metrics.frame(Direction::Down, kind, frame.len());
                self.info.frames_down.fetch_add(1, Ordering::Relaxed);
                let sock = self.app.as_mut()?;
                sock.send(to_message(frame)).await.err().map(|e| {
                    tracing::debug!(hop = "app", error = %e, "write failed");
                    Event::AppLost
                })
            }
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
        }
    }

    async fn dial(&mut self) -> Event {
        let cfg = &self.shared.config;
        let ws = connect::ws_config(cfg.limits.max_frame_bytes, cfg.limits.ws_read_buffer_bytes);
        let attempt = connect::dial(&self.cloud_url, self.shared.tls.clone(), ws, cfg.cloud.connect_timeout);
        let result = tokio::select! {
            biased;
            () = self.cancel.cancelled() => return Event::Shutdown,
            r = attempt => r,
        };
        match result {
            Ok(sock) => {
                tracing::debug!(hop = "cloud", url = %self.cloud_url, "cloud socket open");
                self.cloud = Some(sock);
                Event::CloudConnected
            }
            Err(e) => {
                tracing::warn!(hop = "cloud", error = %e, "cannot reach the cloud");
                self.shared.metrics.cloud_connect_failure(e.reason());
                Event::CloudDialFailed { reason: e.reason() }
            }
        }
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

/// What a message read from a socket means; `None` for control frames tungstenite answers.
fn classify(m: Option<Result<Message, WsError>>, dir: Direction) -> Option<Result<Frame, Lost>> {
    match m {
        Some(Ok(Message::Text(t))) => Some(Ok(Frame::Text(t))),
        Some(Ok(Message::Binary(b))) => Some(Ok(Frame::Binary(b))),
        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
        Some(Ok(Message::Close(cf))) => Some(Err(Lost::Closed(cf.map(|cf| Close {
            code: u16::from(cf.code),
            reason: cf.reason.to_string(),
        })))),
        Some(Err(WsError::Capacity(_))) => Some(Err(Lost::TooBig(dir))),
        Some(Err(e)) => {
            tracing::debug!(direction = dir.label(), error = %e, "socket failed");
            Some(Err(Lost::Abrupt))
        }
        None => Some(Err(Lost::Abrupt)),
    }
}

enum Lost {
    Closed(Option<Close>),
    Abrupt,
    TooBig(Direction),
}

fn from_app(m: Option<Result<Message, WsError>>) -> Option<Event> {
    classify(m, Direction::Up).map(|r| match r {
        Ok(frame) => Event::AppFrame(frame),
        Err(Lost::Closed(c)) => Event::AppClosed(c),
        Err(Lost::Abrupt) => Event::AppLost,
        Err(Lost::TooBig(d)) => Event::TooBig(d),
    })
}

fn from_cloud(m: Option<Result<Message, WsError>>) -> Option<Event> {
    classify(m, Direction::Down).map(|r| match r {
        Ok(frame) => Event::CloudFrame(frame),
        Err(Lost::Closed(c)) => Event::CloudClosed(c),
        Err(Lost::Abrupt) => Event::CloudLost,
        Err(Lost::TooBig(d)) => Event::TooBig(d),
    })
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
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = close.map(|c| CloseFrame {
        code: CloseCode::from(c.code),
        reason: c.reason.into(),
    });
    if let Err(e) = sock.close(frame).await {
        tracing::debug!(hop, error = %e, "close failed");
        return;
    }
    let drain = async { while let Some(Ok(_)) = sock.next().await {} };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}
