//! App -> cloud message handling: init validation in the cloud's order (PROTOCOL.md §5.2),
//! `subscription_update` (§6), `ownership_release` (§8), pongs and binary frames.
//!
//! Runs under the registry lock and never awaits: replies and closes are queued on the
//! socket's channel. Socket I/O lives in `ws`.

use serde_json::Value;

use super::engine::Engine;
use super::session::{Registry, Session, SocketRef};
use super::{subscriptions, ReceivedFrame};

/// Close reason C-June uses for a frame it cannot parse (§5.2 step 1).
const INTERNAL_ERROR: &str = "Internal server error";
const SESSION_NOT_FOUND: &str = "Session not found";
const INVALID_API_KEY: &str = "Invalid API key";
const APP_NOT_STARTED: &str = "App not started for this session";

/// Why an init was refused (§5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    /// Close 1008 without an error message.
    BadFormat,
    /// `tpa_connection_error` with `code` + close 1008 with `message`.
    Error {
        code: &'static str,
        message: &'static str,
    },
}

// === impl Rejection ===

impl Rejection {
    const fn error(code: &'static str, message: &'static str) -> Self {
        Self::Error { code, message }
    }

    fn send(self, socket: &SocketRef) {
        match self {
            Self::BadFormat => socket.close(1008, "Invalid session ID format"),
            Self::Error { code, message } => socket.reject(code, message),
        }
    }
}

// === impl Engine ===

impl Engine {
    /// One text frame from app socket `me`. `bound` is the session this socket has
    /// initialised for; frames are logged against it (after handling, so a binding init is
    /// logged too).
    pub(crate) fn on_app_text(&self, me: &SocketRef, bound: &mut Option<String>, text: &str) {
        let mut reg = self.registry();
        let frame = match serde_json::from_str::<Value>(text) {
            Ok(msg) => {
                self.dispatch(&mut reg, me, bound, &msg);
                ReceivedFrame::Json {
                    socket: me.id,
                    value: msg,
                }
            }
            Err(_) => {
                me.close(1011, INTERNAL_ERROR);
                ReceivedFrame::Text {
                    socket: me.id,
                    text: text.to_owned(),
                }
            }
        };
        record(&mut reg, bound.as_deref(), frame);
    }

    /// A binary app frame: C-June parses every frame as JSON, so this closes 1011 (§8).
    pub(crate) fn on_app_binary(&self, me: &SocketRef, bound: Option<&str>, len: usize) {
        me.close(1011, INTERNAL_ERROR);
        let frame = ReceivedFrame::Binary { socket: me.id, len };
        record(&mut self.registry(), bound, frame);
    }

    pub(crate) fn on_pong(&self, bound: Option<&str>) {
        let mut reg = self.registry();
        if let Some(session) = bound.and_then(|sid| reg.get_mut(sid)) {
            session.stats.pongs_received += 1;
        }
    }

    /// Whether socket `id` should ping now: only THE socket of its session pings, since
    /// the cloud moves the ping timer on each init (§9, §10.5). Counts the ping.
    pub(crate) fn should_ping(&self, id: u64, bound: Option<&str>) -> bool {
        let mut reg = self.registry();
        let Some(session) = bound.and_then(|sid| reg.get_mut(sid)) else {
            return false;
        };
        let current = session.socket.as_ref().is_some_and(|s| s.id == id);
        session.stats.pings_sent += u64::from(current);
        current
    }

    fn dispatch(
        &self,
        reg: &mut Registry,
        me: &SocketRef,
        bound: &mut Option<String>,
        msg: &Value,
    ) {
        if msg.get("type").and_then(Value::as_str) == Some("tpa_connection_init") {
            if let Some(session_id) = self.init(reg, me, msg) {
                *bound = Some(session_id);
            }
            return;
        }
        match bound.as_deref().and_then(|sid| reg.get_mut(sid)) {
            Some(session) => on_session_message(session, me, msg),
            // §5.2: anything before a successful init has no resolvable session.
            None => me.reject("SESSION_NOT_FOUND", SESSION_NOT_FOUND),
        }
    }

    /// Validates an init and, if valid, adopts `me` as the app's socket (§5.2, §10.5).
    /// Returns the session id the socket is now bound to.
    fn init(&self, reg: &mut Registry, me: &SocketRef, msg: &Value) -> Option<String> {
        let field = |key: &str| msg.get(key).and_then(Value::as_str).unwrap_or_default();
        let claimed = field("sessionId");
        match self.check_init(reg, claimed, field("packageName"), field("apiKey")) {
            Ok(session_id) => {
                let session = reg.get_mut(&session_id)?;
                session.accept_init(me, self.cfg.ack_style);
                Some(session_id)
            }
            Err(rejection) => {
                rejection.send(me);
                if let Some(session) = reg.get_mut(claimed) {
                    session.stats.init_rejections += 1;
                }
                None
            }
        }
    }

    /// The checks of §5.2 steps 2-4, in order. Returns the session to bind.
    fn check_init(
        &self,
        reg: &Registry,
        claimed: &str,
        package: &str,
        key: &str,
    ) -> Result<String, Rejection> {
        if !claimed.contains('-') {
            return Err(Rejection::BadFormat);
        }
        let user = reg
            .user_for(claimed)
            .ok_or(Rejection::error("SESSION_NOT_FOUND", SESSION_NOT_FOUND))?;
        if package != self.cfg.package_name || key != self.cfg.api_key {
            return Err(Rejection::error("INVALID_API_KEY", INVALID_API_KEY));
        }
        let session_id = format!("{user}-{package}");
        let expected = reg
            .sessions
            .get(&session_id)
            .is_some_and(|s| s.state.expects_init());
        if expected {
            Ok(session_id)
        } else {
            Err(Rejection::error("APP_NOT_STARTED", APP_NOT_STARTED))
        }
    }
}

fn record(reg: &mut Registry, bound: Option<&str>, frame: ReceivedFrame) {
    if let Some(session) = bound.and_then(|sid| reg.get_mut(sid)) {
        session.record(frame);
    }
}

/// Post-init messages. Superseded sockets still get here: the cloud keeps processing
/// them, so a late `subscription_update` from an old socket overwrites the set (§10.5).
fn on_session_message(session: &mut Session, me: &SocketRef, msg: &Value) {
    match msg.get("type").and_then(Value::as_str) {
        Some("subscription_update") if session.state.expects_init() => {
            on_subscription_update(session, me, msg);
        }
        Some("ownership_release") => {
            // C-Later: "no resurrection" for the package until the next connect (§8, §10.2).
            session.ownership_released = true;
            session.stats.ownership_releases += 1;
        }
        _ => {}
    }
}

/// Full replacement of the set; any unknown entry is fatal for the socket (§6).
fn on_subscription_update(session: &mut Session, me: &SocketRef, msg: &Value) {
    let Some(entries) = msg.get("subscriptions").and_then(Value::as_array) else {
        me.reject(
            "MALFORMED_MESSAGE",
            "Invalid subscription_update: no subscriptions array",
        );
        return;
    };
    if let Some(bad) = entries
        .iter()
        .find_map(|e| subscriptions::validate(e).err())
    {
        me.reject(
            "MALFORMED_MESSAGE",
            &format!("Invalid subscription type: {bad}"),
        );
        return;
    }
    session.stats.subscriptions.clone_from(entries);
}
