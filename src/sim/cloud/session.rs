//! Per-session state of the emulated cloud: the app's lifecycle state, its current socket,
//! subscriptions, counters and the app->cloud frame log, plus the registry of user sessions.
//!
//! Everything here is synchronous and runs under the engine's registry lock; nothing awaits.
//! Decisions that need timers or webhooks are returned to the caller as values.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::{subscriptions, wire, ReceivedFrame, StartOutcome};

/// Oldest received frames are discarded beyond this, so a long run cannot grow without bound.
const MAX_RECEIVED: usize = 100_000;

/// The app's state as the cloud tracks it (C-Later names; §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppState {
    /// Webhook sent, waiting for a valid init (§2.1).
    Connecting,
    Running,
    /// App socket closed; resurrection pending (§10.2).
    Grace,
    /// The cloud is running the stop sequence (§10.4); closes are not healed.
    Stopping,
    Stopped,
    /// Closed after `ownership_release`: no resurrection (§10.2, C-Later).
    Dormant,
    /// The user session was disposed (§10.4); inits now get `SESSION_NOT_FOUND`.
    Ended,
}

/// Counters and a snapshot of one session, as the control API reports them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SessionStats {
    /// `<userId>-<packageName>`.
    pub session_id: String,
    /// The user (an e-mail).
    pub user_id: String,
    /// `connecting` | `running` | `grace` | `stopping` | `stopped` | `dormant` | `ended`.
    pub state: String,
    /// Whether the cloud currently has a socket registered for the app.
    pub socket_open: bool,
    /// Successful `tpa_connection_init`s (re-inits included, §10.5).
    pub inits: u32,
    /// Inits refused with an error or a close.
    pub init_rejections: u32,
    /// `tpa_connection_ack`s sent.
    pub acks_sent: u32,
    /// Webhook POST attempts of any type.
    pub webhooks_sent: u32,
    /// `session_request` POST attempts (retries included).
    pub session_webhooks: u32,
    /// `stop_request` POSTs (stops and resurrections).
    pub stop_webhooks: u32,
    /// HTTP status of the latest webhook answer, if any arrived.
    pub last_webhook_status: Option<u16>,
    /// Generated data frames (transcription, audio) written to an open app socket.
    pub frames_sent: u64,
    /// Generated data frames discarded because no app socket was open (§10.2).
    pub frames_dropped: u64,
    /// Frames injected with `send_raw`.
    pub raw_sent: u64,
    /// App -> cloud data frames (text and binary) on any socket of this session.
    pub frames_received: u64,
    /// App socket closes the cloud saw, any cause.
    pub app_disconnects: u32,
    /// Grace expiries that restarted the app (§10.3).
    pub resurrections: u32,
    /// Closes of superseded sockets that the cloud applied to the package (§10.5 hazard).
    pub superseded_close_hazards: u32,
    /// `ownership_release` messages received.
    pub ownership_releases: u32,
    /// The stored subscription list (latest full replacement, §6).
    pub subscriptions: Vec<Value>,
    /// Sequence number of the latest generated transcription (sent or dropped).
    pub last_transcription_seq: u64,
    /// Sequence number of the latest generated audio chunk (sent or dropped).
    pub last_audio_seq: u32,
    /// WebSocket pings written to the current socket (§9).
    pub pings_sent: u64,
    /// WebSocket pongs received on any socket of the session.
    pub pongs_received: u64,
    /// `session_request` webhooks re-sent because an app server registered (the seed
    /// design's recovery workflow).
    pub recovery_attempts: u32,
    /// Recovery webhooks followed by a valid init.
    pub recovery_successes: u32,
}

/// Where a start attempt stands; published on the session's watch channel.
#[derive(Clone, Debug, Default)]
pub(crate) struct StartSignal {
    pub epoch: u64,
    pub outcome: Option<StartOutcome>,
}

/// Instructions for one socket task; sent over its unbounded channel so writes keep the
/// order in which the registry decided them.
#[derive(Debug)]
pub(crate) enum SocketCmd {
    Send(Message),
    Close(u16, String),
    /// Shut the TCP connection without a close frame.
    Drop,
    /// Stop reading and writing; keep the connection.
    Blackhole,
}

/// The registry's handle on one accepted app socket.
#[derive(Clone, Debug)]
pub(crate) struct SocketRef {
    pub id: u64,
    pub tx: tokio::sync::mpsc::UnboundedSender<SocketCmd>,
}

/// A grace period the caller must time: expiry is checked against `epoch`.
#[derive(Debug)]
pub(crate) struct GraceTicket {
    pub session_id: String,
    pub epoch: u64,
}

/// One app session (`<userId>-<packageName>`).
#[derive(Debug)]
pub(crate) struct Session {
    pub state: AppState,
    pub socket: Option<SocketRef>,
    pub ownership_released: bool,
    /// Bumped whenever a pending grace timer must be ignored.
    pub grace_epoch: u64,
    pub start: watch::Sender<StartSignal>,
    /// The app became unreachable (grace expired without resurrection, or a start failed)
    /// and nobody stopped it on purpose: a registering app server gets its webhook again.
    pub lost: bool,
    /// Start epoch of a pending recovery webhook; an init in that epoch is a recovery.
    pub recovery_epoch: Option<u64>,
    pub stats: SessionStats,
    pub received: VecDeque<ReceivedFrame>,
}

/// All sessions plus the set of users whose user session is alive.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub sessions: HashMap<String, Session>,
    pub active_users: HashSet<String>,
}

// === impl AppState ===

impl AppState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Running => "running",
            Self::Grace => "grace",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Dormant => "dormant",
            Self::Ended => "ended",
        }
    }

    /// States in which an init is accepted (§5.2 step 4; C-Later set, DORMANT included).
    pub(crate) fn expects_init(self) -> bool {
        matches!(
            self,
            Self::Connecting | Self::Running | Self::Grace | Self::Dormant
        )
    }
}

// === impl SocketRef ===

impl SocketRef {
    /// Queues a frame; `false` if the socket task is gone.
    pub(crate) fn send(&self, msg: Message) -> bool {
        self.tx.send(SocketCmd::Send(msg)).is_ok()
    }

    pub(crate) fn send_json(&self, value: &Value) -> bool {
        self.send(Message::text(value.to_string()))
    }

    /// Queues a close frame. Reasons longer than the 123-byte limit are cut at a char boundary.
    pub(crate) fn close(&self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self
            .tx
            .send(SocketCmd::Close(code, reason[..end].to_owned()));
    }

    /// `tpa_connection_error` + close 1008 with the message as the reason (§5.3).
    pub(crate) fn reject(&self, code: &str, message: &str) {
        self.send_json(&wire::connection_error(code, message));
        self.close(1008, message);
    }
}

// === impl Session ===

impl Session {
    pub(crate) fn new(session_id: &str, user_id: &str) -> Self {
        Self {
            state: AppState::Stopped,
            socket: None,
            ownership_released: false,
            grace_epoch: 0,
            start: watch::channel(StartSignal::default()).0,
            lost: false,
            recovery_epoch: None,
            stats: SessionStats {
                session_id: session_id.to_owned(),
                user_id: user_id.to_owned(),
                ..SessionStats::default()
            },
            received: VecDeque::new(),
        }
    }

    pub(crate) fn id(&self) -> &str {
        &self.stats.session_id
    }

    pub(crate) fn snapshot(&self) -> SessionStats {
        SessionStats {
            state: self.state.as_str().to_owned(),
            socket_open: self.socket.is_some(),
            ..self.stats.clone()
        }
    }

    pub(crate) fn record(&mut self, frame: ReceivedFrame) {
        self.stats.frames_received += 1;
        if self.received.len() == MAX_RECEIVED {
            self.received.pop_front();
        }
        self.received.push_back(frame);
    }

    /// Resolves the pending start attempt, if it is still unresolved.
    pub(crate) fn resolve_start(&mut self, outcome: StartOutcome) {
        self.start.send_if_modified(|signal| {
            let pending = signal.outcome.is_none();
            if pending {
                signal.outcome = Some(outcome);
            }
            pending
        });
    }

    /// Adopts `socket` as THE app socket after a valid init (§5.2 step 5) and queues the ack.
    /// A previous, different socket is neither closed nor forgotten by its task (§10.5).
    pub(crate) fn accept_init(&mut self, socket: &SocketRef, style: super::AckStyle) {
        self.socket = Some(socket.clone());
        self.state = AppState::Running;
        self.ownership_released = false;
        self.grace_epoch += 1;
        self.stats.inits += 1;
        self.lost = false;
        let epoch = self.start.borrow().epoch;
        if self.recovery_epoch.take() == Some(epoch) {
            self.stats.recovery_successes += 1;
        }
        self.resolve_start(StartOutcome::Running);
        let ack = wire::ack(
            style,
            self.id(),
            &self.stats.user_id,
            &self.stats.subscriptions,
        );
        socket.send_json(&ack);
        self.stats.acks_sent += 1;
        if style == super::AckStyle::Mentraos {
            socket.send_json(&wire::device_state_snapshot());
        }
    }

    /// The cloud's close handler (§10.2). It acts on the package, not on the socket that
    /// closed: a superseded socket closing clears the current one too (§10.5 hazard).
    pub(crate) fn on_socket_closed(&mut self, socket_id: u64) -> Option<GraceTicket> {
        self.stats.app_disconnects += 1;
        let was_current = self.socket.as_ref().is_some_and(|s| s.id == socket_id);
        if !matches!(self.state, AppState::Running | AppState::Grace) {
            if was_current {
                self.socket = None;
            }
            return None;
        }
        if !was_current {
            self.stats.superseded_close_hazards += 1;
        }
        self.socket = None;
        if self.ownership_released {
            self.state = AppState::Dormant;
            self.stats.subscriptions.clear();
            return None;
        }
        self.state = AppState::Grace;
        self.grace_epoch += 1;
        Some(GraceTicket {
            session_id: self.id().to_owned(),
            epoch: self.grace_epoch,
        })
    }

    /// Writes a generated data frame if a socket is open, else counts it dropped (§10.2).
    fn deliver(&mut self, msg: Message) {
        match &self.socket {
            Some(socket) if socket.send(msg) => self.stats.frames_sent += 1,
            _ => self.stats.frames_dropped += 1,
        }
    }

    /// Generates the next numbered transcription if the app subscribes to one.
    pub(crate) fn emit_transcription(&mut self) {
        let Some(key) = subscriptions::transcription_key(&self.stats.subscriptions) else {
            return;
        };
        self.stats.last_transcription_seq += 1;
        let frame = wire::transcription(self.id(), &key, self.stats.last_transcription_seq);
        self.deliver(Message::text(frame.to_string()));
    }

    /// Generates the next numbered audio chunk if the app subscribes to audio.
    pub(crate) fn emit_audio(&mut self, chunk_bytes: usize) {
        if !subscriptions::wants_audio(&self.stats.subscriptions) {
            return;
        }
        self.stats.last_audio_seq = self.stats.last_audio_seq.wrapping_add(1);
        let chunk = wire::audio_chunk(self.stats.last_audio_seq, chunk_bytes);
        self.deliver(Message::binary(chunk));
    }

    /// Sends `app_stopped` and closes 1000 with `reason` if a socket is open (§10.4), and
    /// forgets the socket so its close is not healed.
    pub(crate) fn send_stopped(&mut self, reason: &str) {
        self.stats.subscriptions.clear();
        if let Some(socket) = self.socket.take() {
            socket.send_json(&wire::app_stopped());
            socket.close(1000, reason);
        }
    }
}

// === impl Registry ===

impl Registry {
    /// Finds the live user an init's `sessionId` names. Users are e-mails that may contain
    /// hyphens, so like C-Later we try the full id first, then every hyphen split (§1).
    pub(crate) fn user_for(&self, session_id: &str) -> Option<String> {
        if let Some(s) = self.sessions.get(session_id) {
            if self.active_users.contains(&s.stats.user_id) {
                return Some(s.stats.user_id.clone());
            }
        }
        session_id
            .match_indices('-')
            .map(|(i, _)| &session_id[..i])
            .find(|user| self.active_users.contains(*user))
            .map(str::to_owned)
    }

    pub(crate) fn get_mut(&mut self, session_id: &str) -> Option<&mut Session> {
        self.sessions.get_mut(session_id)
    }

    /// Sessions of one user (the emulator knows one package, so at most one).
    pub(crate) fn of_user<'a>(
        &'a mut self,
        user_id: &'a str,
    ) -> impl Iterator<Item = &'a mut Session> {
        self.sessions
            .values_mut()
            .filter(move |s| s.stats.user_id == user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket(id: u64) -> (SocketRef, tokio::sync::mpsc::UnboundedReceiver<SocketCmd>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (SocketRef { id, tx }, rx)
    }

    #[test]
    fn superseded_close_clears_current_socket_and_starts_grace() {
        let mut s = Session::new("a@x-y.com-pkg", "a@x-y.com");
        let (one, _rx1) = socket(1);
        let (two, _rx2) = socket(2);
        s.accept_init(&one, super::super::AckStyle::Augmentos);
        s.accept_init(&two, super::super::AckStyle::Augmentos);
        let ticket = s.on_socket_closed(1).map(|t| t.epoch);
        assert_eq!(ticket, Some(s.grace_epoch));
        assert_eq!(s.state, AppState::Grace);
        assert!(s.socket.is_none());
        assert_eq!(s.stats.superseded_close_hazards, 1);
    }

    #[test]
    fn release_then_close_is_dormant() {
        let mut s = Session::new("u-pkg", "u");
        let (one, _rx) = socket(1);
        s.accept_init(&one, super::super::AckStyle::Mentraos);
        s.ownership_released = true;
        assert!(s.on_socket_closed(1).is_none());
        assert_eq!(s.state, AppState::Dormant);
    }

    #[test]
    fn hyphenated_users_are_found_by_trying_splits() {
        let mut reg = Registry::default();
        reg.active_users.insert("jean-luc@ex-ample.com".to_owned());
        assert_eq!(
            reg.user_for("jean-luc@ex-ample.com-com.example.app")
                .as_deref(),
            Some("jean-luc@ex-ample.com")
        );
        assert_eq!(reg.user_for("nobody@x.com-com.example.app"), None);
    }
}
