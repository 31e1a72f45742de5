//! Frames the simulated app writes and the SDK rules it applies to frames it reads:
//! exact-key dispatch (§7.1) and close classification (§11.2). Pure: no I/O, no clock
//! other than the timestamp helper.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::protocol::{now_iso8601, Kind};

/// Read buffer of the app's websocket (the brief's 16 KiB).
const READ_BUFFER_BYTES: usize = 16 * 1024;
/// Largest message accepted, the C-Later cloud's own `maxPayloadLength`.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// What the SDK does after its socket closed (§11.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CloseVerdict {
    /// Unexpected close: reconnect with backoff.
    Reconnect,
    /// Final close (1000, 1001, 1008, "App stopped").
    Stop,
    /// "User session ended": final, and the session is marked terminated.
    Terminate,
}

/// A text frame from the cloud, as far as the simulator cares.
#[derive(Debug)]
pub(super) enum Inbound {
    /// Not a JSON object with a string `type`, or a type nobody defines.
    Unrecognised,
    DataStream(StreamFrame),
    /// `tpa_connection_ack`, kept whole for the stats.
    Ack(Value),
    /// `tpa_connection_error` / `connection_error`: its code (or message).
    ConnectionError(String),
    /// `settings_update`: the new settings array.
    SettingsUpdate(Value),
    AppStopped,
    /// Any other known type.
    Other(String),
}

/// The parts of a `data_stream` the simulator records.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct StreamFrame {
    pub stream_type: String,
    /// `streamType` equals a registered subscription exactly.
    pub dispatched: bool,
    pub transcription: bool,
    /// `data.seq`, else top-level `seq`.
    pub seq: Option<u64>,
    pub is_final: bool,
}

/// Websocket settings for every socket the simulator opens or accepts.
pub(super) fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// `tpa_connection_init` exactly as S-2.1.29 writes it (§5.1).
pub(super) fn connection_init(session_id: &str, package: &str, api_key: &str) -> String {
    json!({
        "type": "tpa_connection_init",
        "sessionId": session_id,
        "packageName": package,
        "apiKey": api_key,
        "timestamp": now_iso8601(),
    })
    .to_string()
}

/// A full-replacement `subscription_update` (§6).
pub(super) fn subscription_update(package: &str, session_id: &str, subs: &[String]) -> String {
    json!({
        "type": "subscription_update",
        "packageName": package,
        "sessionId": session_id,
        "subscriptions": subs,
        "timestamp": now_iso8601(),
    })
    .to_string()
}

/// A text_wall `display_event`; S-2.1.29 sends `sessionId: ""` (§8). `seq` numbers the
/// simulator's own test displays.
pub(super) fn display_text(package: &str, text: &str, seq: Option<u64>) -> String {
    let mut frame = json!({
        "type": "display_event",
        "packageName": package,
        "sessionId": "",
        "view": "main",
        "layout": {"layoutType": "text_wall", "text": text},
        "timestamp": now_iso8601(),
    });
    if let (Some(seq), Some(obj)) = (seq, frame.as_object_mut()) {
        obj.insert(String::from("seq"), Value::from(seq));
    }
    frame.to_string()
}

/// `ownership_release` with reason `switching_clouds`, sent before dropping a session that a
/// new `session_request` replaces (§2.1).
pub(super) fn ownership_release(package: &str, session_id: &str) -> String {
    json!({
        "type": "ownership_release",
        "packageName": package,
        "sessionId": session_id,
        "reason": "switching_clouds",
        "timestamp": now_iso8601(),
    })
    .to_string()
}

/// §11.2: the reason text wins over the code, so a 4xxx close saying "User session ended"
/// is final.
pub(super) fn classify_close(code: u16, reason: &str) -> CloseVerdict {
    if reason.contains("User session ended") {
        CloseVerdict::Terminate
    } else if matches!(code, 1000 | 1001 | 1008) || reason.contains("App stopped") {
        CloseVerdict::Stop
    } else {
        CloseVerdict::Reconnect
    }
}

/// Classifies one text frame from the cloud against the registered subscription keys.
pub(super) fn inspect(text: &str, registered: &[String]) -> Inbound {
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(text) else {
        return Inbound::Unrecognised;
    };
    let Some(kind) = obj.get("type").and_then(Value::as_str).map(str::to_owned) else {
        return Inbound::Unrecognised;
    };
    match kind.as_str() {
        "data_stream" => Inbound::DataStream(stream_frame(&obj, registered)),
        "tpa_connection_ack" => Inbound::Ack(Value::Object(obj)),
        "tpa_connection_error" | "connection_error" => {
            let code = ["code", "message"]
                .iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_str))
                .unwrap_or("UNKNOWN");
            Inbound::ConnectionError(code.to_owned())
        }
        "settings_update" => Inbound::SettingsUpdate(obj.remove("settings").unwrap_or(Value::Null)),
        "app_stopped" => Inbound::AppStopped,
        _ if Kind::from_wire(&kind) == Kind::Unknown => Inbound::Unrecognised,
        _ => Inbound::Other(kind),
    }
}

fn stream_frame(obj: &serde_json::Map<String, Value>, registered: &[String]) -> StreamFrame {
    let stream_type = obj
        .get("streamType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let data = obj.get("data");
    let seq = data
        .and_then(|d| d.get("seq"))
        .or_else(|| obj.get("seq"))
        .and_then(Value::as_u64);
    let is_final = data
        .and_then(|d| d.get("isFinal"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    StreamFrame {
        dispatched: registered.contains(&stream_type),
        transcription: stream_type.split(':').next() == Some("transcription"),
        stream_type,
        seq,
        is_final,
    }
}

/// Sequence number of an audio chunk: its first four bytes, big-endian.
pub(super) fn audio_seq(chunk: &[u8]) -> Option<u32> {
    let head: [u8; 4] = chunk.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_classification_follows_the_sdk() {
        let cases = [
            (1000, "", CloseVerdict::Stop),
            (1001, "", CloseVerdict::Stop),
            (1008, "Invalid API key", CloseVerdict::Stop),
            (1000, "App stopped", CloseVerdict::Stop),
            (4001, "App stopped by user", CloseVerdict::Stop),
            (1000, "User session ended", CloseVerdict::Terminate),
            (4000, "User session ended", CloseVerdict::Terminate),
            (1005, "", CloseVerdict::Reconnect),
            (1006, "", CloseVerdict::Reconnect),
            (1011, "Internal server error", CloseVerdict::Reconnect),
            (4002, "", CloseVerdict::Reconnect),
        ];
        for (code, reason, want) in cases {
            assert_eq!(classify_close(code, reason), want, "{code} {reason:?}");
        }
    }

    #[test]
    fn dispatch_needs_the_exact_key() {
        let registered = vec![String::from("transcription:en-US")];
        let frame = |st: &str| {
            format!(
                r#"{{"type":"data_stream","streamType":"{st}","data":{{"seq":7,"isFinal":true}}}}"#
            )
        };
        let Inbound::DataStream(hit) = inspect(&frame("transcription:en-US"), &registered) else {
            panic!("not a stream");
        };
        assert_eq!(
            hit,
            StreamFrame {
                stream_type: "transcription:en-US".into(),
                dispatched: true,
                transcription: true,
                seq: Some(7),
                is_final: true,
            }
        );
        for miss in [
            "transcription",
            "transcription:fr-FR",
            "transcription:en-US?hints=ja",
        ] {
            let Inbound::DataStream(s) = inspect(&frame(miss), &registered) else {
                panic!("not a stream");
            };
            assert!(!s.dispatched, "{miss}");
        }
    }

    #[test]
    fn seq_falls_back_to_top_level() {
        let t = r#"{"type":"data_stream","streamType":"x","seq":3,"data":{}}"#;
        let Inbound::DataStream(s) = inspect(t, &[]) else {
            panic!("not a stream")
        };
        assert_eq!(s.seq, Some(3));
        assert!(!s.is_final);
    }

    #[test]
    fn odd_frames_are_unrecognised_not_fatal() {
        for t in [
            "",
            "nope",
            "[1,2]",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"brand_new"}"#,
        ] {
            assert!(matches!(inspect(t, &[]), Inbound::Unrecognised), "{t}");
        }
        assert!(matches!(
            inspect(r#"{"type":"tpa_connection_error","message":"m"}"#, &[]),
            Inbound::ConnectionError(c) if c == "m"
        ));
        assert!(
            matches!(inspect(r#"{"type":"capabilities_update"}"#, &[]), Inbound::Other(k) if k == "capabilities_update")
        );
    }

    #[test]
    fn audio_seq_reads_four_bytes() {
        assert_eq!(audio_seq(&[0, 0, 1, 2, 9]), Some(258));
        assert_eq!(audio_seq(&[1, 2, 3]), None);
    }

    #[test]
    fn display_carries_seq_only_when_numbered() {
        let v: Value =
            serde_json::from_str(&display_text("p", "display 1", Some(1))).expect("json");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["layout"]["text"], "display 1");
        let v: Value = serde_json::from_str(&display_text("p", "seen 4", None)).expect("json");
        assert!(v.get("seq").is_none());
    }
}
