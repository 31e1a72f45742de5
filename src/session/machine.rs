//! The per-session state machine. Pure: it takes events and the current instant and returns
//! the I/O its driver ([`super::task`]) must perform, in order. It never reads a clock or a
//! socket, so every transition is unit-tested with explicit instants.
//!
//! A session has an app link and a cloud link (DESIGN §2):
//! - app link `Up` (relaying), `Down` (the app is gone: cloud frames are buffered, the
//!   webhook is re-sent once the app is healthy again), `Replaying` (a new app socket was
//!   answered from the cache; the buffer is held until the app has re-subscribed, then
//!   flushed in order before any live frame);
//! - cloud link `Dialing` (the app's first init is held until the socket is up) or `Up`.
//!
//! Delivery acks: after frames go to the app, the machine sends a WebSocket ping carrying
//! the count of frames sent. The app's WebSocket library answers it only after it has
//! processed every frame before it, so a pong proves delivery. Frames without that proof
//! when the app dies are replayed to its successor: nothing the app never processed is
//! lost, and nothing it did process is sent twice. The same holds when a second app socket
//! takes over a live session: the first is closed and its unproven frames go to the second.
//!
//! After the app sent `ownership_release` (PROTOCOL §13 item 8), the machine stops acting on
//! the session's behalf: losing either link ends the session as it would without Tether,
//! until a new init is accepted.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::buffer::{Dropped, Entry, GlobalBytes, Limits, ReplayBuffer};
use super::cache::{AckCache, InitAuth, SubSet};
use crate::config::HeartbeatMode;
use crate::protocol::{
    Direction, Kind, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_TOO_BIG,
};

/// Frames the app may send before the cloud socket is up; the SDK sends none (it waits for
/// the ack), so this only bounds a misbehaving client.
pub const MAX_PENDING_UP: usize = 256;

/// Bytes of those frames: one frame of the cloud's own limit.
pub const MAX_PENDING_UP_BYTES: usize = 16 << 20;

/// Frames sent to the app and not yet proven delivered; past this the oldest lose their
/// replay guarantee (an app library that never answers pings). Their payloads are also kept
/// within the cloud->app buffer's byte bound, which is all a successor could be replayed.
pub const MAX_UNACKED: usize = 4096;

/// Takeovers of a live session (a second app socket displacing the first) allowed within
/// [`TAKEOVER_WINDOW`]; past that the newcomer is refused, so two clients that keep
/// reconnecting over each other cannot ping-pong a session for ever.
pub const MAX_TAKEOVERS: usize = 3;

/// The sliding window [`MAX_TAKEOVERS`] counts in.
pub const TAKEOVER_WINDOW: Duration = Duration::from_secs(60);

/// Close sent to an app socket displaced by a newer one for the same session. S-2.1.29
/// (PROTOCOL §11.2) does not reconnect on 1000, 1001 or 1008, and its `AppServer` (§11.4)
/// calls `onStop` and forgets the session only on a clean close (1000/1001); after 1008 the
/// session object lingers. So 1000, normal closure: the displaced client stops reconnecting
/// (no ping-pong with the newcomer) and cleans its session up, with the reason in its
/// `onStop` ("Clean disconnect: ..."). Its maps drop the session only if it is still the
/// current one for that id, so a newer session in the same process is untouched. 1001 would
/// say the server is going away, which is not true of Tether. The reason avoids "App
/// stopped" and "User session ended", which would tell the SDK the user's session is over.
pub const DISPLACED_CLOSE: (u16, &str) = (CLOSE_NORMAL, "Replaced by a newer connection");

/// What a newcomer past [`MAX_TAKEOVERS`] is refused with (`tpa_connection_error` code and
/// message, then close 1008, as the cloud refuses an init).
pub const TAKEOVER_REFUSAL: (&str, &str) = (
    "TOO_MANY_TAKEOVERS",
    "Too many connections for this session; the current one is kept",
);

/// How long after an abrupt loss, with the app still healthy, Tether waits for the SDK to
/// reconnect by itself (it retries after 1 s) before re-sending the webhook.
pub const RECONNECT_GRACE: Duration = Duration::from_millis(1500);

/// Pause before re-sending a webhook the app did not take.
pub const REFIRE_RETRY: Duration = Duration::from_millis(500);

/// One WebSocket data frame. Text stays as received (no re-encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Frame {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's protocol kind (peeks the `type` of text frames).
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Text(t) => Kind::of_text(t.as_str()),
            Frame::Binary(_) => Kind::Binary,
        }
    }
}

/// A close frame's contents; `None` where used means "close without a status code".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    pub code: u16,
    pub reason: String,
}

impl Close {
    /// A close with `code` and `reason`.
    pub fn new(code: u16, reason: &str) -> Close {
        Close {
            code,
            reason: reason.to_string(),
        }
    }
}

/// Timing and bounds of one session.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a session is held for an app that is away before it ends.
    pub hold_window: Duration,
    /// How long an app that closed its socket cleanly while healthy has to come back before
    /// the close is taken as meant.
    pub intent_window: Duration,
    /// How long a replay waits for the app to re-subscribe before flushing anyway.
    pub replay_wait: Duration,
    /// Keep-alive ping to the app, and misses before it counts as hung.
    pub app_ping_interval: Duration,
    pub app_ping_misses: u32,
    /// Bounds of the cloud->app buffer.
    pub down_buffer: Limits,
    /// Bounds of the app->cloud buffer (used while the cloud link is down).
    pub up_buffer: Limits,
    pub heartbeat: HeartbeatMode,
    pub heartbeat_interval: Duration,
    pub heartbeat_misses: u32,
    pub reconnect_base: Duration,
    pub reconnect_max: Duration,
    /// After a refused re-init, how long to wait for the cloud's resurrection.
    pub resurrection_wait: Duration,
    /// Seed of the reconnect jitter.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hold_window: Duration::from_secs(60),
            intent_window: Duration::from_secs(2),
            replay_wait: Duration::from_secs(1),
            app_ping_interval: Duration::from_secs(5),
            app_ping_misses: 3,
            down_buffer: Limits {
                max_frames: 1000,
                max_bytes: 1 << 20,
                max_age: Duration::from_secs(60),
            },
            up_buffer: Limits {
                max_frames: 256,
                max_bytes: 256 << 10,
                max_age: Duration::from_secs(30),
            },
            heartbeat: HeartbeatMode::WsPing,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_misses: 3,
            reconnect_base: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            resurrection_wait: Duration::from_secs(15),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// A data frame from the app.
    AppFrame(Frame),
    /// A pong from the app, with its payload.
    AppPong(Bytes),
    /// The app sent a close frame.
    AppClosed(Option<Close>),
    /// The app socket ended without a close frame, or failed.
    AppLost,
    /// A new app socket sent this init for this session.
    AppAttach(Frame),
    /// The app server's health probe result.
    AppHealth(bool),
    /// The webhook re-sent to the app was answered (`true` = 2xx).
    RefireDone(bool),
    /// The cloud sent `stop_request` for this session.
    StopRequested,
    /// A data frame from the cloud.
    CloudFrame(Frame),
    /// The cloud socket is open.
    CloudConnected,
    /// Dialling the cloud failed.
    CloudDialFailed,
    /// A pong from the cloud.
    CloudPong,
    /// The cloud resurrected the session (a new `session_request` while the link is down):
    /// dial again now.
    CloudResurrect,
    /// The cloud sent a close frame.
    CloudClosed(Option<Close>),
    /// The cloud socket ended without a close frame, or failed.
    CloudLost,
    /// A peer sent a frame over the size limit; `Up` means the app did.
    TooBig(Direction),
    /// A deadline from [`Session::next_deadline`] passed.
    Tick,
    /// Tether is shutting down.
    Shutdown,
}

/// I/O and reports for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    DialCloud,
    SendCloud(Frame, Kind),
    SendApp(Frame, Kind),
    /// WebSocket ping to the app with this payload.
    PingApp(Bytes),
    /// WebSocket ping to the cloud (heartbeat).
    PingCloud,
    /// A heartbeat frame of Tether's own to the cloud (JSON modes), counted apart.
    BeatCloud(Frame),
    /// The cloud link was lost and reconnecting starts (metrics, logs).
    CloudLinkLost {
        cause: &'static str,
    },
    /// The cloud acknowledged the re-init after `outage`.
    CloudReacked {
        outage: Duration,
        resurrected: bool,
    },
    CloseApp(Option<Close>),
    CloseCloud(Option<Close>),
    /// Drop the app socket without a close frame (the app sees 1006, as it would have).
    AbortApp,
    /// Drop the cloud socket without a close frame.
    AbortCloud,
    /// Close the current app socket with this close: a newer one is taking the session over
    /// (the `AcceptApp` that follows adopts it). Counted as a takeover.
    DisplaceApp(Close),
    /// Refuse the socket that sent the last `AppAttach`, which tried to take over a live
    /// session past [`MAX_TAKEOVERS`]: `tpa_connection_error`, then 1008. Counted.
    RefuseTakeover {
        code: &'static str,
        message: &'static str,
    },
    /// Adopt the socket that sent the last `AppAttach` (dropping any previous one).
    AcceptApp,
    /// Refuse that socket: `tpa_connection_error` with this code and message, then 1008.
    RejectApp {
        code: &'static str,
        message: &'static str,
    },
    /// POST the session's webhook to the app again.
    RefireWebhook,
    /// A frame was given up (metrics).
    Dropped(Dropped),
    /// The app came back and the buffer was flushed: `latency` from the app being seen
    /// healthy (or reconnecting) to the first replayed frame.
    Recovered {
        replayed: usize,
        latency: Duration,
    },
}

/// Why a session ended (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    CloudClosed,
    CloudLost,
    CloudUnreachable,
    AppClosed,
    AppLost,
    HoldExpired,
    Oversized,
    Shutdown,
}

impl EndReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            EndReason::CloudClosed => "cloud_closed",
            EndReason::CloudLost => "cloud_lost",
            EndReason::CloudUnreachable => "cloud_unreachable",
            EndReason::AppClosed => "app_closed",
            EndReason::AppLost => "app_lost",
            EndReason::HoldExpired => "hold_expired",
            EndReason::Oversized => "oversized",
            EndReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refire {
    Idle,
    InFlight,
    At(Instant),
}

#[derive(Debug)]
enum AppLink {
    Up {
        last_seen: Instant,
        next_ping: Instant,
    },
    Down {
        since: Instant,
        /// The app server was seen unhealthy since the loss: a crash or restart.
        crashed: bool,
        /// The app's close frame when it closed cleanly (`Some(None)` = no status code).
        close: Option<Option<Close>>,
        /// When the app was seen healthy again after a crash.
        healthy_at: Option<Instant>,
        refire: Refire,
    },
    Replaying {
        flush_at: Instant,
        saw_empty: bool,
        since: Instant,
    },
}

#[derive(Debug)]
enum CloudLink {
    /// The first dial, before any ack; the app's init and frames are held.
    Dialing { pending: VecDeque<Frame> },
    Up {
        last_seen: Instant,
        next_beat: Instant,
    },
    /// Lost; reconnecting with backoff. `retry_at` is `None` while a dial is in flight.
    Down {
        since: Instant,
        attempt: u32,
        retry_at: Option<Instant>,
        /// The cloud refused the re-init: it dropped the session and will resurrect it.
        refused: bool,
    },
    /// A new socket is open and the cached init sent; the ack is awaited.
    Reinit { since: Instant },
}

/// One session's protocol state.
#[derive(Debug)]
pub struct Session {
    settings: Settings,
    app: AppLink,
    cloud: CloudLink,
    ended: Option<EndReason>,
    init: Frame,
    auth: Option<InitAuth>,
    cache: AckCache,
    /// The set the cloud holds (the last `subscription_update` sent up).
    cloud_subs: Option<SubSet>,
    buffer: ReplayBuffer,
    /// Frames sent to the app, not yet covered by a pong, oldest first.
    unacked: VecDeque<Unproven>,
    /// Payload bytes held in `unacked`.
    unacked_bytes: usize,
    sent: u64,
    ping_outstanding: Option<u64>,
    pong_seen: bool,
    app_healthy: bool,
    stopping: bool,
    terminal: bool,
    urls: UrlMap,
    session_id: String,
    /// App frames waiting for the cloud link.
    up_buffer: ReplayBuffer,
    /// The app's latest `subscription_update`, re-sent after every re-init.
    last_subs: Option<Frame>,
    /// Tether's own JSON pings the cloud has not answered yet.
    json_pings: u32,
    /// Jitter source (xorshift), seeded by the driver.
    rng: u64,
    /// The current heal answers the cloud's resurrection of the session.
    resurrecting: bool,
    /// When the cloud last refused a re-init (the resurrection wait runs from here).
    refused_at: Option<Instant>,
    /// When live sessions were taken over by a newer app socket, within the window.
    takeovers: VecDeque<Instant>,
    /// The app sent `ownership_release` since its last accepted init: nothing is held,
    /// healed or resurrected on its behalf.
    released: bool,
}

/// A frame sent to the app and not yet covered by a pong.
#[derive(Debug)]
struct Unproven {
    seq: u64,
    kind: Kind,
    stream: &'static str,
    len: usize,
    /// What a successor would be replayed; `None` once let go to keep the unproven bytes
    /// within the cloud->app buffer's byte bound (the buffer could not have held it).
    entry: Option<Entry>,
}

/// Rewrites URLs the app built on Tether's local base back to the cloud's base.
#[derive(Debug, Clone, Default)]
pub struct UrlMap {
    /// Local prefixes as the SDK builds them, e.g. `https://127.0.0.1:8081/c/ab12cd34`.
    pub local_prefixes: Vec<String>,
    /// The cloud's HTTP base, e.g. `https://api.example.net`.
    pub cloud_base: String,
}

impl UrlMap {
    fn rewrite(&self, url: &str) -> Option<String> {
        self.local_prefixes
            .iter()
            .find(|p| url.starts_with(p.as_str()))
            .map(|p| format!("{}{}", self.cloud_base, &url[p.len()..]))
    }
}

impl Session {
    /// A session whose app has sent `init`; the first action dials the cloud.
    pub fn start(
        session_id: String,
        init: Frame,
        urls: UrlMap,
        settings: Settings,
        global: std::sync::Arc<GlobalBytes>,
        now: Instant,
    ) -> (Session, Vec<Action>) {
        let buffer = ReplayBuffer::new(settings.down_buffer, global.clone());
        let up_buffer = ReplayBuffer::new(settings.up_buffer, global);
        let s = Session {
            app: AppLink::Up {
                last_seen: now,
                next_ping: now + settings.app_ping_interval,
            },
            cloud: CloudLink::Dialing {
                pending: VecDeque::new(),
            },
            ended: None,
            auth: InitAuth::of(&init),
            init,
            cache: AckCache::default(),
            cloud_subs: None,
            buffer,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            sent: 0,
            ping_outstanding: None,
            pong_seen: false,
            app_healthy: true,
            stopping: false,
            terminal: false,
            urls,
            session_id,
            up_buffer,
            last_subs: None,
            json_pings: 0,
            rng: settings.seed | 1,
            resurrecting: false,
            refused_at: None,
            takeovers: VecDeque::new(),
            released: false,
            settings,
        };
        (s, vec![Action::DialCloud])
    }

    /// Applies one event; returns the I/O to perform, in order.
    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        if self.ended.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        match ev {
            Event::CloudConnected => self.on_cloud_connected(now, &mut out),
            Event::CloudDialFailed => self.on_dial_failed(now, &mut out),
            Event::CloudPong => self.on_cloud_seen(now),
            Event::CloudResurrect => self.on_resurrect(now, &mut out),
            Event::AppFrame(frame) => self.on_app_frame(frame, now, &mut out),
            Event::AppPong(payload) => self.on_pong(&payload, now, &mut out),
            Event::CloudFrame(frame) => self.on_cloud_frame(frame, now, &mut out),
            Event::CloudClosed(close) => self.on_cloud_closed(close, now, &mut out),
            Event::CloudLost => self.on_cloud_lost("lost", now, &mut out),
            Event::AppClosed(close) => self.on_app_gone(Some(close), now, &mut out),
            Event::AppLost => self.on_app_gone(None, now, &mut out),
            Event::AppAttach(init) => self.on_attach(init, now, &mut out),
            Event::AppHealth(healthy) => self.on_health(healthy, now, &mut out),
            Event::RefireDone(ok) => {
                if let AppLink::Down { refire, .. } = &mut self.app {
                    // A 2xx means the app took the session; it connects before answering,
                    // so if it has not, try again shortly.
                    let pause = if ok { REFIRE_RETRY * 2 } else { REFIRE_RETRY };
                    *refire = Refire::At(now + pause);
                }
            }
            Event::StopRequested => self.stopping = true,
            Event::TooBig(Direction::Up) => self.on_app_too_big(now, &mut out),
            Event::TooBig(Direction::Down) => self.on_cloud_too_big(now, &mut out),
            Event::Tick => self.on_tick(now, &mut out),
            Event::Shutdown => {
                let to_cloud = Close::new(CLOSE_GOING_AWAY, "Tether shutting down");
                // 1012 (service restart) lets the SDK reconnect to a restarted Tether.
                let to_app = Close::new(1012, "Tether restarting");
                self.end(
                    EndReason::Shutdown,
                    Some(Some(to_app)),
                    Some(Some(to_cloud)),
                    &mut out,
                );
            }
        }
        out
    }

    fn app_is_connected(&self) -> bool {
        matches!(self.app, AppLink::Up { .. } | AppLink::Replaying { .. })
    }

    fn on_app_frame(&mut self, frame: Frame, now: Instant, out: &mut Vec<Action>) {
        match &mut self.app {
            AppLink::Up { last_seen, .. } => *last_seen = now,
            AppLink::Replaying { .. } => {}
            AppLink::Down { .. } => return,
        }
        let kind = frame.kind();
        if kind == Kind::OwnershipRelease {
            self.released = true;
            if matches!(
                self.cloud,
                CloudLink::Down { .. } | CloudLink::Reinit { .. }
            ) {
                // The app gives the session up while its cloud link is being healed: healing
                // on would re-init a session the app released. It hears the link is gone.
                out.push(Action::Dropped(Dropped {
                    stream: kind.label(),
                    reason: "session_ended",
                }));
                let close = Close::new(CLOSE_GOING_AWAY, "Cloud link lost");
                self.end(EndReason::CloudLost, Some(Some(close)), Some(None), out);
                return;
            }
        }
        if let CloudLink::Dialing { pending } = &mut self.cloud {
            let held: usize = pending.iter().map(Frame::len).sum();
            if pending.len() >= MAX_PENDING_UP || held + frame.len() > MAX_PENDING_UP_BYTES {
                let close = Close::new(CLOSE_TOO_BIG, "Too many frames before ack");
                self.end(EndReason::Oversized, Some(Some(close)), None, out);
            } else {
                pending.push_back(frame);
            }
            return;
        }
        match kind {
            Kind::SubscriptionUpdate => self.on_subscriptions(frame, now, out),
            // A newer SDK's JSON ping, answered here unless the cloud is known to speak it,
            // so an older cloud never sees a type it does not know.
            Kind::Ping if self.settings.heartbeat != HeartbeatMode::JsonPing => {
                let pong = serde_json::json!({"type": "pong", "timestamp": crate::protocol::now_iso8601()});
                self.send_app(Frame::Text(pong.to_string().into()), Kind::Pong, now, out);
            }
            _ => self.up(frame, now, out),
        }
    }

    /// A `subscription_update` is a full replacement (§6). Only a real change goes up; after
    /// a local re-init the SDK's first, empty list is not forwarded (it would wipe the set
    /// the cloud holds); and the held buffer is flushed once the app's handlers cover what
    /// the cloud was sending.
    fn on_subscriptions(&mut self, frame: Frame, now: Instant, out: &mut Vec<Action>) {
        let Some(set) = SubSet::of(&frame) else {
            self.up(frame, now, out);
            return;
        };
        let before = self.cloud_subs.clone();
        if let AppLink::Replaying { saw_empty, .. } = &mut self.app {
            if set.is_empty() && !*saw_empty {
                *saw_empty = true;
                return;
            }
        }
        self.last_subs = Some(frame.clone());
        if before.as_ref() != Some(&set) {
            self.cloud_subs = Some(set.clone());
            // While the cloud link is down the list waits: it is re-sent after the re-init.
            if self.cloud_is_up() {
                self.up(frame, now, out);
            }
        }
        if matches!(self.app, AppLink::Replaying { .. }) && before.is_none_or(|b| set.covers(&b)) {
            self.flush(now, out);
        }
    }

    fn up(&mut self, frame: Frame, now: Instant, out: &mut Vec<Action>) {
        let kind = frame.kind();
        let frame = match (&frame, kind) {
            (Frame::Text(text), Kind::AudioPlayRequest) => {
                self.rewrite_audio_url(text.as_str()).unwrap_or(frame)
            }
            _ => frame,
        };
        if self.cloud_is_up() {
            out.push(Action::SendCloud(frame, kind));
        } else {
            self.buffer_up(frame, kind, now, out);
        }
    }

    /// `audio_play_request.audioUrl` built on the local base (`speak()`) must point at the
    /// real cloud, because the phone fetches it.
    fn rewrite_audio_url(&self, text: &str) -> Option<Frame> {
        let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
        let url = value.get("audioUrl")?.as_str()?;
        let rewritten = self.urls.rewrite(url)?;
        value["audioUrl"] = serde_json::Value::String(rewritten);
        serde_json::to_string(&value)
            .ok()
            .map(|t| Frame::Text(t.into()))
    }

    fn on_cloud_frame(&mut self, frame: Frame, now: Instant, out: &mut Vec<Action>) {
        let kind = frame.kind();
        self.on_cloud_seen(now);
        if self.is_own_beat_answer(kind) || self.on_reinit_frame(&frame, kind, now, out) {
            return;
        }
        self.cache.fold(kind, &frame);
        if kind == Kind::AppStopped {
            self.terminal = true;
        }
        self.deliver(frame, kind, now, out);
    }

    fn buffer_down(&mut self, frame: Frame, kind: Kind, now: Instant, out: &mut Vec<Action>) {
        out.extend(
            self.buffer
                .push(frame, kind, now)
                .into_iter()
                .map(Action::Dropped),
        );
    }

    fn send_app(&mut self, frame: Frame, kind: Kind, now: Instant, out: &mut Vec<Action>) {
        self.sent += 1;
        if self.unacked.len() >= MAX_UNACKED {
            if let Some(u) = self.unacked.pop_front() {
                self.unacked_bytes -= u.entry.map_or(0, |e| e.frame.len());
            }
        }
        let (stream, class) = super::buffer::classify(&frame, kind);
        let len = frame.len();
        // A frame the buffer could never hold is not kept for a replay either: a large
        // frame must not stay in memory after it was written. Nor is the handshake: the
        // next socket gets its own answer.
        let replayable = kind != Kind::ConnectionAck;
        let entry = (replayable && len <= self.settings.down_buffer.max_bytes).then(|| Entry {
            frame: frame.clone(),
            kind,
            stream,
            class,
            at: now,
        });
        if entry.is_some() {
            self.unacked_bytes += len;
        }
        self.unacked.push_back(Unproven {
            seq: self.sent,
            kind,
            stream,
            len,
            entry,
        });
        self.trim_unacked();
        out.push(Action::SendApp(frame, kind));
    }

    /// Lets payloads go until the unproven bytes fit the cloud->app buffer's byte bound,
    /// by the buffer's own policy: droppable streams first, then the oldest.
    fn trim_unacked(&mut self) {
        while self.unacked_bytes > self.settings.down_buffer.max_bytes {
            let held = |u: &Unproven| u.entry.as_ref().map(|e| e.class);
            let victim = self
                .unacked
                .iter()
                .position(|u| held(u) == Some(super::buffer::Class::Droppable))
                .or_else(|| self.unacked.iter().position(|u| held(u).is_some()));
            let Some(entry) = victim.and_then(|i| self.unacked[i].entry.take()) else {
                return;
            };
            self.unacked_bytes -= entry.frame.len();
        }
    }

    /// One ping in flight at a time, carrying the count of frames sent before it.
    fn ping_if_idle(&mut self, out: &mut Vec<Action>) {
        if self.ping_outstanding.is_none() && !self.unacked.is_empty() {
            self.ping_outstanding = Some(self.sent);
            out.push(Action::PingApp(Bytes::copy_from_slice(
                &self.sent.to_be_bytes(),
            )));
        }
    }

    fn on_pong(&mut self, payload: &[u8], now: Instant, out: &mut Vec<Action>) {
        if let AppLink::Up { last_seen, .. } = &mut self.app {
            *last_seen = now;
        }
        self.pong_seen = true;
        let Ok(bytes) = <[u8; 8]>::try_from(payload) else {
            return;
        };
        let acked = u64::from_be_bytes(bytes);
        if self.ping_outstanding != Some(acked) {
            return;
        }
        self.ping_outstanding = None;
        while self.unacked.front().is_some_and(|u| u.seq <= acked) {
            if let Some(u) = self.unacked.pop_front() {
                self.unacked_bytes -= u.entry.map_or(0, |e| e.frame.len());
            }
        }
        if matches!(self.app, AppLink::Up { .. }) {
            self.ping_if_idle(out);
        }
    }

    /// The app socket closed (`Some(close)`) or was lost (`None`).
    fn on_app_gone(&mut self, close: Option<Option<Close>>, now: Instant, out: &mut Vec<Action>) {
        if matches!(self.app, AppLink::Down { .. }) {
            return;
        }
        if self.stopping || self.terminal || self.released || !self.cache.has_ack() {
            // Meant (a stop is under way, or the app released the session), or nothing
            // cached to answer a new init with: behave as the direct connection would have.
            match close {
                Some(c) => self.end(EndReason::AppClosed, None, Some(c), out),
                None => {
                    out.push(Action::AbortCloud);
                    self.end(EndReason::AppLost, None, None, out);
                }
            }
            return;
        }
        out.push(Action::AbortApp);
        self.hold_app(close, now, out);
    }

    /// The app socket is gone (already closed or dropped) and the session is held for it:
    /// unproven frames go back to the buffer, which takes cloud frames until it returns.
    fn hold_app(&mut self, close: Option<Option<Close>>, now: Instant, out: &mut Vec<Action>) {
        self.requeue_unacked(out);
        self.app = AppLink::Down {
            since: now,
            crashed: !self.app_healthy,
            close,
            healthy_at: None,
            refire: Refire::Idle,
        };
    }

    /// The app sent a frame over the app->cloud limit (the cloud's own, which would have
    /// closed its socket with 1009). Its socket is closed with 1009; the SDK reconnects
    /// after that code (PROTOCOL §11.2) and is answered from the cache, so the cloud sees
    /// nothing. Without an ack to answer with, or when the session is ending anyway, both
    /// legs close with 1009.
    fn on_app_too_big(&mut self, now: Instant, out: &mut Vec<Action>) {
        let close = Close::new(CLOSE_TOO_BIG, "Message too big");
        if !self.app_is_connected() {
            return;
        }
        if self.stopping || self.terminal || self.released || !self.cache.has_ack() {
            self.end(
                EndReason::Oversized,
                Some(Some(close.clone())),
                Some(Some(close)),
                out,
            );
            return;
        }
        out.push(Action::CloseApp(Some(close)));
        self.hold_app(None, now, out);
    }

    /// Frames without a delivery proof go back to the front of the buffer, in order, within
    /// its bounds; those it cannot hold are counted as dropped. The handshake is not among
    /// them: the next socket gets its own answer.
    fn requeue_unacked(&mut self, out: &mut Vec<Action>) {
        let max_bytes = self.settings.down_buffer.max_bytes;
        let mut entries = Vec::with_capacity(self.unacked.len());
        for u in self.unacked.drain(..) {
            if u.kind == Kind::ConnectionAck {
                continue;
            }
            match u.entry {
                Some(e) => entries.push(e),
                None => out.push(Action::Dropped(Dropped {
                    stream: u.stream,
                    reason: if u.len > max_bytes {
                        "too_big"
                    } else {
                        "overflow"
                    },
                })),
            }
        }
        self.unacked_bytes = 0;
        out.extend(
            self.buffer
                .prepend(entries)
                .into_iter()
                .map(Action::Dropped),
        );
        self.ping_outstanding = None;
    }

    fn on_health(&mut self, healthy: bool, now: Instant, out: &mut Vec<Action>) {
        self.app_healthy = healthy;
        let AppLink::Down {
            crashed,
            healthy_at,
            refire,
            ..
        } = &mut self.app
        else {
            return;
        };
        if !healthy {
            *crashed = true;
            *healthy_at = None;
        } else if *crashed && *refire == Refire::Idle {
            *healthy_at = Some(now);
            *refire = Refire::InFlight;
            out.push(Action::RefireWebhook);
        }
    }

    fn on_attach(&mut self, init: Frame, now: Instant, out: &mut Vec<Action>) {
        let auth = InitAuth::of(&init);
        if let (Some(cached), Some(new)) = (&self.auth, &auth) {
            if cached != new {
                out.push(Action::RejectApp {
                    code: "INVALID_API_KEY",
                    message: "Invalid API key",
                });
                return;
            }
        }
        let takeover = self.app_is_connected();
        if takeover {
            // A second socket for a session whose app socket is up: another client (or
            // the same SDK over a link Tether has not seen die) takes the session over.
            self.takeovers
                .retain(|at| now.saturating_duration_since(*at) < TAKEOVER_WINDOW);
            if self.takeovers.len() >= MAX_TAKEOVERS {
                let (code, message) = TAKEOVER_REFUSAL;
                out.push(Action::RefuseTakeover { code, message });
                return;
            }
            self.takeovers.push_back(now);
            let (code, reason) = DISPLACED_CLOSE;
            out.push(Action::DisplaceApp(Close::new(code, reason)));
            // What the displaced socket never proved it processed goes to the newcomer.
            self.requeue_unacked(out);
        }
        out.push(Action::AcceptApp);
        // A new init is a new connect: the app owns the session again (PROTOCOL §14.17).
        self.released = false;
        if !self.cache.has_ack() {
            // The first handshake is still in flight: the cloud answers this init itself.
            self.init = init.clone();
            self.app = AppLink::Up {
                last_seen: now,
                next_ping: now + self.settings.app_ping_interval,
            };
            if self.cloud_is_up() {
                out.push(Action::SendCloud(init, Kind::ConnectionInit));
            }
            return;
        }
        let since = match &self.app {
            AppLink::Down {
                healthy_at, since, ..
            } => healthy_at.unwrap_or(*since).max(*since),
            _ => now,
        };
        for (frame, kind) in self.cache.replay(&crate::protocol::now_iso8601()) {
            out.push(Action::SendApp(frame, kind));
        }
        self.app = AppLink::Replaying {
            flush_at: now + self.settings.replay_wait,
            saw_empty: false,
            since,
        };
        if self.cloud_subs.as_ref().is_none_or(SubSet::is_empty) {
            self.flush(now, out);
        }
    }

    fn flush(&mut self, now: Instant, out: &mut Vec<Action>) {
        let AppLink::Replaying { since, .. } = self.app else {
            return;
        };
        self.app = AppLink::Up {
            last_seen: now,
            next_ping: now + self.settings.app_ping_interval,
        };
        let entries = self.buffer.drain();
        let replayed = entries.len();
        for e in entries {
            self.send_app(e.frame, e.kind, now, out);
        }
        self.ping_if_idle(out);
        out.push(Action::Recovered {
            replayed,
            latency: now.saturating_duration_since(since),
        });
    }

    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.extend(self.buffer.expire(now).into_iter().map(Action::Dropped));
        out.extend(self.up_buffer.expire(now).into_iter().map(Action::Dropped));
        self.cloud_tick(now, out);
        if self.ended.is_some() {
            return;
        }
        match self.app {
            AppLink::Up {
                last_seen,
                next_ping,
            } => {
                let patience = self.settings.app_ping_interval * self.settings.app_ping_misses;
                if self.pong_seen && now.saturating_duration_since(last_seen) >= patience {
                    // Hung: the socket is open but nothing, not even a pong, comes back.
                    self.app_healthy = false;
                    self.on_app_gone(None, now, out);
                } else if now >= next_ping {
                    self.app = AppLink::Up {
                        last_seen,
                        next_ping: now + self.settings.app_ping_interval,
                    };
                    if self.ping_outstanding.is_none() {
                        self.ping_outstanding = Some(self.sent);
                        out.push(Action::PingApp(Bytes::copy_from_slice(
                            &self.sent.to_be_bytes(),
                        )));
                    }
                }
            }
            AppLink::Replaying { flush_at, .. } => {
                if now >= flush_at {
                    self.flush(now, out);
                }
            }
            AppLink::Down {
                since,
                crashed,
                ref close,
                refire,
                ..
            } => {
                if now >= since + self.settings.hold_window {
                    let close = Close::new(CLOSE_GOING_AWAY, "App unavailable");
                    self.end(EndReason::HoldExpired, None, Some(Some(close)), out);
                    return;
                }
                if let (Some(c), false) = (close, crashed) {
                    if now >= since + self.settings.intent_window {
                        // Closed cleanly by a healthy app that did not come back: meant.
                        let c = c.clone();
                        self.end(EndReason::AppClosed, None, Some(c), out);
                        return;
                    }
                }
                let due = match refire {
                    Refire::At(t) => now >= t,
                    // Lost abruptly, app healthy all along: the SDK did not reconnect by
                    // itself (a fast restart the probe never saw down), so ask it to.
                    Refire::Idle => !crashed && close.is_none() && now >= since + RECONNECT_GRACE,
                    Refire::InFlight => false,
                };
                if due && self.app_healthy {
                    if let AppLink::Down { refire, .. } = &mut self.app {
                        *refire = Refire::InFlight;
                    }
                    out.push(Action::RefireWebhook);
                }
            }
        }
    }

    /// Ends the session, closing each connected peer that is given a close (the inner
    /// `None` closes without a status code).
    fn end(
        &mut self,
        reason: EndReason,
        to_app: Option<Option<Close>>,
        to_cloud: Option<Option<Close>>,
        out: &mut Vec<Action>,
    ) {
        if let (Some(c), true) = (to_app, self.app_is_connected()) {
            out.push(Action::CloseApp(c));
        }
        if let (Some(c), CloudLink::Up { .. } | CloudLink::Reinit { .. }) = (to_cloud, &self.cloud)
        {
            out.push(Action::CloseCloud(c));
        }
        let reason_label = match reason {
            EndReason::HoldExpired => "hold_expired",
            EndReason::Shutdown => "shutdown",
            _ => "session_ended",
        };
        for buffer in [&mut self.buffer, &mut self.up_buffer] {
            out.extend(
                buffer
                    .discard(reason_label)
                    .into_iter()
                    .map(Action::Dropped),
            );
        }
        self.ended = Some(reason);
    }

    /// Earliest instant at which [`Event::Tick`] must be delivered (extra ticks are harmless).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let link = match &self.app {
            AppLink::Up { next_ping, .. } => Some(*next_ping),
            AppLink::Replaying { flush_at, .. } => Some(*flush_at),
            AppLink::Down {
                since,
                crashed,
                close,
                refire,
                ..
            } => {
                let mut t = *since + self.settings.hold_window;
                if close.is_some() && !crashed {
                    t = t.min(*since + self.settings.intent_window);
                }
                match refire {
                    Refire::At(at) => t = t.min(*at),
                    Refire::Idle if !crashed && close.is_none() => {
                        t = t.min(*since + RECONNECT_GRACE)
                    }
                    _ => {}
                }
                Some(t)
            }
        };
        [
            link,
            self.cloud_deadline(),
            self.buffer.next_expiry(),
            self.up_buffer.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The phase name, for `/sessions` and the sessions gauge.
    pub fn phase(&self) -> &'static str {
        if self.ended.is_some() {
            return "ended";
        }
        match (&self.cloud, &self.app) {
            (CloudLink::Dialing { .. }, _) => "starting",
            (CloudLink::Down { .. } | CloudLink::Reinit { .. }, _) => "cloud_down",
            (_, AppLink::Down { .. }) => "app_down",
            (_, AppLink::Replaying { .. }) => "replaying",
            (_, AppLink::Up { .. }) => "live",
        }
    }

    /// Whether the session holds the cloud link for an app that is away.
    pub fn is_holding(&self) -> bool {
        self.ended.is_none() && matches!(self.app, AppLink::Down { .. })
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.ended
    }

    /// Frames and bytes waiting in the buffer, and the age of the oldest.
    pub fn buffered(&self, now: Instant) -> (usize, usize, Option<Duration>) {
        (
            self.buffer.len(),
            self.buffer.bytes(),
            self.buffer.oldest_age(now),
        )
    }

    /// Applies new bounds to the buffer (a config reload).
    pub fn set_settings(&mut self, settings: Settings) {
        self.buffer.set_limits(settings.down_buffer);
        self.up_buffer.set_limits(settings.up_buffer);
        // The jitter source keeps its state: a reload must not replay the same delays.
        let seed = self.settings.seed;
        self.settings = Settings { seed, ..settings };
    }
}

mod cloud;
#[cfg(test)]
mod tests;
