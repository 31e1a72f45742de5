//! The per-session state machine. Pure: it takes events and the current instant and returns
//! the I/O its driver ([`super::task`]) must perform, in order. It never reads a clock or a
//! socket, so every transition is unit-tested with explicit instants.
//!
//! States (DESIGN §2): `Starting` (the app's init is held until the cloud socket is up),
//! `Live` (frames relayed both ways in order), `Ended`.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::protocol::{Direction, Kind, CLOSE_GOING_AWAY, CLOSE_INTERNAL, CLOSE_TOO_BIG};

/// Frames the app may send before the cloud socket is up; the SDK sends none (it waits for
/// the ack), so this only bounds a misbehaving client.
pub const MAX_PENDING_UP: usize = 256;

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

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// A data frame from the app.
    AppFrame(Frame),
    /// A data frame from the cloud.
    CloudFrame(Frame),
    /// The cloud socket is open.
    CloudConnected,
    /// Dialling the cloud failed.
    CloudDialFailed { reason: &'static str },
    /// The cloud sent a close frame.
    CloudClosed(Option<Close>),
    /// The cloud socket ended without a close frame, or failed.
    CloudLost,
    /// The app sent a close frame.
    AppClosed(Option<Close>),
    /// The app socket ended without a close frame, or failed.
    AppLost,
    /// A peer sent a frame over the size limit; `Up` means the app did.
    TooBig(Direction),
    /// Tether is shutting down, or a newer connection for the same session superseded this one.
    Shutdown,
}

/// I/O for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    DialCloud,
    SendCloud(Frame, Kind),
    SendApp(Frame, Kind),
    CloseApp(Option<Close>),
    CloseCloud(Option<Close>),
    /// Drop the app socket without a close frame (the app sees 1006, as it would have).
    AbortApp,
    /// Drop the cloud socket without a close frame.
    AbortCloud,
}

/// Why a session ended (a bounded metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    CloudClosed,
    CloudLost,
    CloudUnreachable,
    AppClosed,
    AppLost,
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
            EndReason::Oversized => "oversized",
            EndReason::Shutdown => "shutdown",
        }
    }
}

/// The session's state; each carries its own data.
#[derive(Debug)]
pub enum State {
    Starting { since: Instant, pending: VecDeque<Frame> },
    Live { since: Instant },
    Ended { reason: EndReason },
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

/// One session's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    init: Frame,
    ack: Option<Frame>,
    urls: UrlMap,
    frames_up: u64,
    frames_down: u64,
}

impl Session {
    /// A session whose app has sent `init`; the first action dials the cloud.
    pub fn start(init: Frame, urls: UrlMap, now: Instant) -> (Session, Vec<Action>) {
        let s = Session {
            state: State::Starting {
                since: now,
                pending: VecDeque::new(),
            },
            init,
            ack: None,
            urls,
            frames_up: 0,
            frames_down: 0,
        };
        (s, vec![Action::DialCloud])
    }

    /// Applies one event; returns the I/O to perform, in order.
    pub fn handle(&mut self, ev: Event, now: Instant) -> Vec<Action> {
        if matches!(self.state, State::Ended { .. }) {
            return Vec::new();
        }
        match ev {
            Event::CloudConnected => self.on_cloud_connected(now),
            Event::CloudDialFailed { .. } => self.end(
                EndReason::CloudUnreachable,
                vec![Action::CloseApp(Some(Close::new(CLOSE_INTERNAL, "Cloud unreachable")))],
            ),
            Event::AppFrame(frame) => self.on_app_frame(frame),
            Event::CloudFrame(frame) => self.on_cloud_frame(frame),
            Event::CloudClosed(close) => self.end(EndReason::CloudClosed, vec![Action::CloseApp(close)]),
            Event::CloudLost => self.end(EndReason::CloudLost, vec![Action::AbortApp]),
            Event::AppClosed(close) => self.end(EndReason::AppClosed, vec![Action::CloseCloud(close)]),
            Event::AppLost => self.end(EndReason::AppLost, vec![Action::AbortCloud]),
            Event::TooBig(_) => {
                let close = Close::new(CLOSE_TOO_BIG, "Message too big");
                self.end(
                    EndReason::Oversized,
                    vec![Action::CloseApp(Some(close.clone())), Action::CloseCloud(Some(close))],
                )
            }
            Event::Shutdown => self.end(
                EndReason::Shutdown,
                vec![
                    Action::CloseCloud(Some(Close::new(CLOSE_GOING_AWAY, "Tether shutting down"))),
                    // 1012 (service restart) lets the SDK reconnect to a restarted Tether.
                    Action::CloseApp(Some(Close::new(1012, "Tether restarting"))),
                ],
            ),
        }
    }

    fn on_cloud_connected(&mut self, now: Instant) -> Vec<Action> {
        let State::Starting { pending, .. } = &mut self.state else {
            return Vec::new();
        };
        let pending = std::mem::take(pending);
        let mut actions = Vec::with_capacity(pending.len() + 1);
        actions.push(Action::SendCloud(self.init.clone(), Kind::ConnectionInit));
        for frame in pending {
            actions.push(self.up(frame));
        }
        self.state = State::Live { since: now };
        actions
    }

    fn on_app_frame(&mut self, frame: Frame) -> Vec<Action> {
        match &mut self.state {
            State::Starting { pending, .. } => {
                if pending.len() >= MAX_PENDING_UP {
                    return self.end(
                        EndReason::Oversized,
                        vec![Action::CloseApp(Some(Close::new(CLOSE_TOO_BIG, "Too many frames before ack")))],
                    );
                }
                pending.push_back(frame);
                Vec::new()
            }
            State::Live { .. } => vec![self.up(frame)],
            State::Ended { .. } => Vec::new(),
        }
    }

    fn up(&mut self, frame: Frame) -> Action {
        self.frames_up += 1;
        let kind = frame.kind();
        let frame = match (&frame, kind) {
            (Frame::Text(text), Kind::AudioPlayRequest) => self.rewrite_audio_url(text.as_str()).unwrap_or(frame),
            _ => frame,
        };
        Action::SendCloud(frame, kind)
    }

    /// `audio_play_request.audioUrl` built on the local base (`speak()`) must point at the
    /// real cloud, because the phone fetches it.
    fn rewrite_audio_url(&self, text: &str) -> Option<Frame> {
        let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
        let url = value.get("audioUrl")?.as_str()?;
        let rewritten = self.urls.rewrite(url)?;
        value["audioUrl"] = serde_json::Value::String(rewritten);
        serde_json::to_string(&value).ok().map(|t| Frame::Text(t.into()))
    }

    fn on_cloud_frame(&mut self, frame: Frame) -> Vec<Action> {
        self.frames_down += 1;
        let kind = frame.kind();
        if kind == Kind::ConnectionAck {
            self.ack = Some(frame.clone());
        }
        vec![Action::SendApp(frame, kind)]
    }

    fn end(&mut self, reason: EndReason, actions: Vec<Action>) -> Vec<Action> {
        self.state = State::Ended { reason };
        actions
    }

    /// The phase name, for `/sessions` and the sessions gauge.
    pub fn phase(&self) -> &'static str {
        match self.state {
            State::Starting { .. } => "starting",
            State::Live { .. } => "live",
            State::Ended { .. } => "ended",
        }
    }

    /// Why the session ended, once it has.
    pub fn end_reason(&self) -> Option<EndReason> {
        match self.state {
            State::Ended { reason } => Some(reason),
            _ => None,
        }
    }

    /// Whether the cloud has acknowledged the app's init.
    pub fn acked(&self) -> bool {
        self.ack.is_some()
    }

    /// Frames relayed (up, down).
    pub fn frame_counts(&self) -> (u64, u64) {
        (self.frames_up, self.frames_down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::Text(s.into())
    }

    fn started() -> (Session, Instant) {
        let now = Instant::now();
        let (s, actions) = Session::start(text(r#"{"type":"tpa_connection_init"}"#), UrlMap::default(), now);
        assert_eq!(actions, vec![Action::DialCloud]);
        (s, now)
    }

    #[test]
    fn init_goes_first_then_held_frames_in_order() {
        let (mut s, now) = started();
        assert!(s.handle(Event::AppFrame(text(r#"{"type":"a"}"#)), now).is_empty());
        assert!(s.handle(Event::AppFrame(text(r#"{"type":"b"}"#)), now).is_empty());
        let actions = s.handle(Event::CloudConnected, now);
        let sent: Vec<_> = actions
            .iter()
            .map(|a| match a {
                Action::SendCloud(Frame::Text(t), _) => t.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, [r#"{"type":"tpa_connection_init"}"#, r#"{"type":"a"}"#, r#"{"type":"b"}"#]);
        assert_eq!(s.phase(), "live");
    }

    #[test]
    fn close_codes_pass_through_exactly() {
        let (mut s, now) = started();
        s.handle(Event::CloudConnected, now);
        let close = Close::new(1000, "App stopped");
        assert_eq!(
            s.handle(Event::CloudClosed(Some(close.clone())), now),
            vec![Action::CloseApp(Some(close))]
        );
        assert_eq!(s.end_reason(), Some(EndReason::CloudClosed));
        assert!(s.handle(Event::CloudFrame(text("{}")), now).is_empty(), "nothing after the end");
    }

    #[test]
    fn abrupt_loss_is_mirrored_as_abrupt() {
        let (mut s, now) = started();
        s.handle(Event::CloudConnected, now);
        assert_eq!(s.handle(Event::AppLost, now), vec![Action::AbortCloud]);
        let (mut s, now) = started();
        s.handle(Event::CloudConnected, now);
        assert_eq!(s.handle(Event::AppClosed(None), now), vec![Action::CloseCloud(None)]);
    }

    #[test]
    fn unreachable_cloud_closes_the_app_with_a_reason() {
        let (mut s, now) = started();
        let actions = s.handle(Event::CloudDialFailed { reason: "io" }, now);
        assert_eq!(actions, vec![Action::CloseApp(Some(Close::new(1011, "Cloud unreachable")))]);
    }

    #[test]
    fn ack_is_cached_and_frames_keep_their_bytes() {
        let (mut s, now) = started();
        s.handle(Event::CloudConnected, now);
        let raw = r#"{"type":"tpa_connection_ack","settings":[] }"#;
        let actions = s.handle(Event::CloudFrame(text(raw)), now);
        assert_eq!(actions, vec![Action::SendApp(text(raw), Kind::ConnectionAck)]);
        assert!(s.acked());
        let junk = "{not json";
        assert_eq!(
            s.handle(Event::AppFrame(text(junk)), now),
            vec![Action::SendCloud(text(junk), Kind::Malformed)]
        );
    }

    #[test]
    fn audio_urls_on_the_local_base_are_sent_to_the_cloud_base() {
        let now = Instant::now();
        let urls = UrlMap {
            local_prefixes: vec!["https://127.0.0.1:8081/c/ab12cd34".into()],
            cloud_base: "https://api.example.net".into(),
        };
        let (mut s, _) = Session::start(text("{}"), urls, now);
        s.handle(Event::CloudConnected, now);
        let req = r#"{"type":"audio_play_request","requestId":"r1","audioUrl":"https://127.0.0.1:8081/c/ab12cd34/api/tts?text=hi"}"#;
        let actions = s.handle(Event::AppFrame(text(req)), now);
        let Some(Action::SendCloud(Frame::Text(out), Kind::AudioPlayRequest)) = actions.first() else {
            panic!("{actions:?}");
        };
        let v: serde_json::Value = serde_json::from_str(out.as_str()).expect("json");
        assert_eq!(v["audioUrl"], "https://api.example.net/api/tts?text=hi");
        assert_eq!(v["requestId"], "r1");
        let other = r#"{"type":"audio_play_request","audioUrl":"https://cdn.example/x.mp3"}"#;
        assert_eq!(
            s.handle(Event::AppFrame(text(other)), now),
            vec![Action::SendCloud(text(other), Kind::AudioPlayRequest)]
        );
    }
}
