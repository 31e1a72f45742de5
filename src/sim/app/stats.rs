//! The observable record of the simulated app: what each session incarnation sent and
//! received. Plain data, serialisable both ways so a test can read `/sim/stats` from a
//! separately running process.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Lifecycle of one app session incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    /// First socket being opened, init sent, waiting for the ack.
    Connecting,
    /// Acked; frames flow.
    Connected,
    /// Lost the socket; waiting for or running a reconnect attempt.
    Reconnecting,
    /// Ended: stopped by the cloud, by a webhook, by shutdown, or permanently lost.
    Stopped,
    /// Ended by a close whose reason contains "User session ended" (§11.2).
    Terminated,
}

/// A close received from the cloud; 1005 = close frame without a code, 1006 = no close
/// frame at all (abrupt loss), as the `ws` library reports them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseRecord {
    /// Close code as the SDK's `ws` library reports it.
    pub code: u16,
    /// Close reason text, verbatim.
    pub reason: String,
}

/// Counts of HTTP requests the simulator served.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCounters {
    /// `session_request` webhooks received.
    pub session_requests: u64,
    /// `stop_request` webhooks received.
    pub stop_requests: u64,
    /// Webhooks answered 400 (malformed body or unknown type).
    pub rejected_webhooks: u64,
    /// `POST /settings` calls.
    pub settings_posts: u64,
    /// `POST /tool` calls.
    pub tool_calls: u64,
    /// `POST /photo-upload` calls.
    pub photo_uploads: u64,
}

/// Everything one session incarnation did. A `session_request` for an existing `sessionId`
/// starts a new incarnation (higher `generation`); the old record stays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    /// `<userId>-<packageName>` from the webhook.
    pub session_id: String,
    /// 1-based incarnation number, unique across the simulator.
    pub generation: u64,
    /// `userId` from the webhook.
    pub user_id: String,
    /// The websocket URL taken from the webhook.
    pub ws_url: String,
    /// Where the incarnation is in its lifecycle.
    pub state: SessionState,
    /// Subscriptions registered so far (what the next `subscription_update` carries).
    pub subscriptions: Vec<String>,
    /// `tpa_connection_init` frames sent (one per socket).
    pub inits_sent: u64,
    /// `tpa_connection_ack` frames received.
    pub acks_received: u64,
    /// The last `tpa_connection_ack`, as received.
    pub ack: Option<Value>,
    /// Latest app settings, from the ack or a `settings_update` / `POST /settings`.
    pub settings: Option<Value>,
    /// `code` of every `tpa_connection_error` / `connection_error` (the message if no code).
    pub connection_errors: Vec<String>,
    /// Every socket end, in order (1006 when there was no close frame).
    pub closes: Vec<CloseRecord>,
    /// `seq` of every dispatched transcription `data_stream`, in arrival order.
    pub transcriptions: Vec<u64>,
    /// Dispatched transcriptions that carried no numeric `seq`.
    pub transcriptions_without_seq: u64,
    /// Dispatched `data_stream` frames by `streamType`.
    pub dispatched: BTreeMap<String, u64>,
    /// `data_stream` frames dropped because `streamType` matched no registered key.
    pub undispatched: BTreeMap<String, u64>,
    /// Binary frames received.
    pub audio_chunks: u64,
    /// First 4 bytes of each binary frame, big-endian (frames shorter than 4 bytes skipped).
    pub audio_seqs: Vec<u32>,
    /// Other known cloud frames by `type` (ack, settings_update, app_stopped, ...).
    pub other_frames: BTreeMap<String, u64>,
    /// Text frames that are not JSON objects with a string `type`, or of an unknown type.
    pub unknown_or_malformed: u64,
    /// Every `display_event` sent (numbered ones and `seen <seq>` ones).
    pub displays_sent: u64,
    /// `subscription_update` frames sent (after each ack and per registration).
    pub subscription_updates_sent: u64,
    /// `ownership_release` frames sent (when a new `session_request` replaced this one).
    pub ownership_releases_sent: u64,
    /// Reconnect attempts started, over the incarnation's life.
    pub reconnect_attempts: u64,
    /// 4000 once reconnecting gave up (the SDK's permanent-loss code, not a wire close).
    pub stop_code: Option<u16>,
}

/// Snapshot of the whole simulator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppSimStats {
    /// The simulated app's package name.
    pub package_name: String,
    /// Sessions the app server currently tracks (the `/health` `activeSessions`).
    pub active_sessions: usize,
    /// Requests served per route.
    pub http: HttpCounters,
    /// Session incarnations in creation order.
    pub sessions: Vec<SessionStats>,
}

// === impl SessionStats ===

impl SessionStats {
    pub(super) fn new(session_id: &str, generation: u64, user_id: &str, ws_url: &str) -> Self {
        SessionStats {
            session_id: session_id.to_owned(),
            generation,
            user_id: user_id.to_owned(),
            ws_url: ws_url.to_owned(),
            state: SessionState::Connecting,
            subscriptions: Vec::new(),
            inits_sent: 0,
            acks_received: 0,
            ack: None,
            settings: None,
            connection_errors: Vec::new(),
            closes: Vec::new(),
            transcriptions: Vec::new(),
            transcriptions_without_seq: 0,
            dispatched: BTreeMap::new(),
            undispatched: BTreeMap::new(),
            audio_chunks: 0,
            audio_seqs: Vec::new(),
            other_frames: BTreeMap::new(),
            unknown_or_malformed: 0,
            displays_sent: 0,
            subscription_updates_sent: 0,
            ownership_releases_sent: 0,
            reconnect_attempts: 0,
            stop_code: None,
        }
    }
}

// === impl AppSimStats ===

impl AppSimStats {
    /// The newest incarnation of `session_id`.
    pub fn session(&self, session_id: &str) -> Option<&SessionStats> {
        self.sessions
            .iter()
            .rev()
            .find(|s| s.session_id == session_id)
    }
}
