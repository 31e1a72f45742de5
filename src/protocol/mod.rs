//! The MentraOS app wire protocol as Tether needs it: message kinds, the few messages it
//! parses in full (init, ack, subscriptions), and frames it writes itself. Pure data and
//! parsing: no tokio, no sockets.

pub mod peek;

use serde::{Deserialize, Serialize};

pub use peek::{top_level_str, Malformed};

/// Close code for a normal closure: the connection has done its job.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code the cloud uses for rejected inits and request-level failures (policy violation).
pub const CLOSE_POLICY: u16 = 1008;
/// Close code for an internal error.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code for a frame over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for "going away", used when Tether shuts down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the cloud towards the app.
    Down,
    /// From the app towards the cloud.
    Up,
}

impl Direction {
    /// Both directions, for pre-building per-direction metrics.
    pub const ALL: [Direction; 2] = [Direction::Down, Direction::Up];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Down => "cloud_to_app",
            Direction::Up => "app_to_cloud",
        }
    }
}

macro_rules! kinds {
    ($($variant:ident => $wire:literal),* $(,)?) => {
        /// The kind of a frame, a bounded set fit for metric labels. Wire types Tether does
        /// not list are `Unknown` and are forwarded untouched.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Kind {
            $($variant,)*
            /// A JSON object whose `type` is not in the list above.
            Unknown,
            /// A text frame that is not a JSON object with a string `type`.
            Malformed,
            /// A binary frame (audio).
            Binary,
        }

        impl Kind {
            /// Every kind, for pre-building per-kind metrics.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)* Kind::Unknown, Kind::Malformed, Kind::Binary];

            /// Maps a wire `type` string to its kind.
            pub fn from_wire(ty: &str) -> Kind {
                match ty {
                    $($wire => Kind::$variant,)*
                    _ => Kind::Unknown,
                }
            }

            /// Metric label (the wire type, or `unknown` / `malformed` / `binary`).
            pub fn label(self) -> &'static str {
                match self {
                    $(Kind::$variant => $wire,)*
                    Kind::Unknown => "unknown",
                    Kind::Malformed => "malformed",
                    Kind::Binary => "binary",
                }
            }

            /// Position in [`Kind::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

kinds! {
    ConnectionInit => "tpa_connection_init",
    ConnectionAck => "tpa_connection_ack",
    ConnectionError => "tpa_connection_error",
    ConnectionErrorBare => "connection_error",
    SubscriptionUpdate => "subscription_update",
    DataStream => "data_stream",
    DisplayEvent => "display_event",
    DashboardContentUpdate => "dashboard_content_update",
    DashboardModeChange => "dashboard_mode_change",
    DashboardSystemUpdate => "dashboard_system_update",
    AppStopped => "app_stopped",
    SettingsUpdate => "settings_update",
    AugmentosSettingsUpdate => "augmentos_settings_update",
    CapabilitiesUpdate => "capabilities_update",
    DeviceStateUpdate => "device_state_update",
    DashboardModeChanged => "dashboard_mode_changed",
    DashboardAlwaysOnChanged => "dashboard_always_on_changed",
    CustomMessage => "custom_message",
    PermissionError => "permission_error",
    PhotoRequest => "photo_request",
    PhotoResponse => "photo_response",
    AudioPlayRequest => "audio_play_request",
    AudioStopRequest => "audio_stop_request",
    AudioPlayResponse => "audio_play_response",
    RtmpStreamRequest => "rtmp_stream_request",
    RtmpStreamStop => "rtmp_stream_stop",
    RtmpStreamStatus => "rtmp_stream_status",
    ManagedStreamRequest => "managed_stream_request",
    ManagedStreamStop => "managed_stream_stop",
    ManagedStreamStatus => "managed_stream_status",
    StreamStatusCheck => "stream_status_check",
    StreamStatusCheckResponse => "stream_status_check_response",
    LocationPollRequest => "location_poll_request",
    RgbLedControl => "rgb_led_control",
    RgbLedControlResponse => "rgb_led_control_response",
    RequestWifiSetup => "request_wifi_setup",
    OwnershipRelease => "ownership_release",
    Ping => "ping",
    Heartbeat => "heartbeat",
    HeartbeatAck => "heartbeat_ack",
    Pong => "pong",
    Reconnect => "reconnect",
    ReconnectAck => "reconnect_ack",
    ReconnectRejected => "reconnect_rejected",
    ReconnectDeferred => "reconnect_deferred",
}

impl Kind {
    /// Classifies a text frame by its top-level `type`, reading no further than that key.
    pub fn of_text(text: &str) -> Kind {
        match peek::top_level_str(text, "type") {
            Ok(Some(ty)) => Kind::from_wire(&ty),
            Ok(None) => Kind::Unknown,
            Err(_) => Kind::Malformed,
        }
    }
}

/// The fields of `tpa_connection_init` Tether needs. The frame itself is forwarded as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInit {
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub package_name: Option<String>,
}

impl ConnectionInit {
    /// Parses an init frame; `None` when it is not one.
    pub fn parse(text: &str) -> Option<ConnectionInit> {
        if Kind::of_text(text) != Kind::ConnectionInit {
            return None;
        }
        serde_json::from_str(text).ok()
    }
}

/// A `tpa_connection_error` written by Tether itself (§5.3 of the protocol notes).
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionError<'a> {
    #[serde(rename = "type")]
    pub ty: &'static str,
    pub code: &'a str,
    pub message: &'a str,
    pub timestamp: String,
}

impl<'a> ConnectionError<'a> {
    /// Builds the frame text for `code` and `message`, stamped with `timestamp` (ISO-8601).
    pub fn frame(code: &'a str, message: &'a str, timestamp: String) -> String {
        let err = ConnectionError {
            ty: "tpa_connection_error",
            code,
            message,
            timestamp,
        };
        serde_json::to_string(&err)
            .unwrap_or_else(|_| String::from(r#"{"type":"tpa_connection_error"}"#))
    }
}

/// Formats a UNIX time in milliseconds as ISO-8601 UTC (`2025-06-27T17:02:11.402Z`), the
/// form `Date.toISOString()` gives.
pub fn iso8601(unix_ms: u128) -> String {
    let secs = (unix_ms / 1000) as i64;
    let ms = (unix_ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), valid for every date after 1970.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The current time as ISO-8601.
pub fn now_iso8601() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    iso8601(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_labels() {
        for kind in Kind::ALL {
            if !matches!(kind, Kind::Unknown | Kind::Malformed | Kind::Binary) {
                assert_eq!(Kind::from_wire(kind.label()), *kind);
            }
            assert_eq!(Kind::ALL[kind.index()], *kind);
        }
    }

    #[test]
    fn classifies_text_frames() {
        assert_eq!(
            Kind::of_text(r#"{"type":"data_stream","data":{"type":"x"}}"#),
            Kind::DataStream
        );
        assert_eq!(
            Kind::of_text(r#"{"type":"brand_new_thing"}"#),
            Kind::Unknown
        );
        assert_eq!(Kind::of_text(r#"{"no_type":1}"#), Kind::Unknown);
        assert_eq!(Kind::of_text("{oops"), Kind::Malformed);
    }

    #[test]
    fn parses_init() {
        let init = ConnectionInit::parse(
            r#"{"type":"tpa_connection_init","sessionId":"a@b.c-com.x","packageName":"com.x","apiKey":"k"}"#,
        )
        .expect("init");
        assert_eq!(init.session_id.as_deref(), Some("a@b.c-com.x"));
        assert_eq!(init.package_name.as_deref(), Some("com.x"));
        assert!(ConnectionInit::parse(r#"{"type":"display_event"}"#).is_none());
    }

    #[test]
    fn iso8601_matches_known_instants() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_751_043_731_402), "2025-06-27T17:02:11.402Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn error_frame_is_json() {
        let f = ConnectionError::frame("SESSION_NOT_FOUND", "no \"cloud\"", "t".into());
        let v: serde_json::Value = serde_json::from_str(&f).expect("json");
        assert_eq!(v["type"], "tpa_connection_error");
        assert_eq!(v["message"], "no \"cloud\"");
    }
}
