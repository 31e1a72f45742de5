//! Cloud -> app message builders (PROTOCOL.md §5.3, §5.4, §7) and ISO-8601 timestamps.
//!
//! Pure functions over `serde_json::Value`: no sockets, no session state, no clock other
//! than the wall clock read by [`iso_now`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::AckStyle;

/// Glasses model reported in acks and device snapshots.
const MODEL_NAME: &str = "Even Realities G1";

/// Spacing of the fake utterance clock: utterance `n` covers `[n*1000, n*1000+900)` ms.
const UTTERANCE_SPACING_MS: u64 = 1_000;

/// Milliseconds since the Unix epoch (0 if the wall clock is before 1970).
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Current wall-clock time as `Date.toISOString()` prints it, e.g. `2025-06-27T17:02:11.402Z`.
pub(crate) fn iso_now() -> String {
    iso_from_unix_ms(unix_ms_now())
}

/// Formats milliseconds since the epoch as ISO-8601 UTC with millisecond precision.
pub(crate) fn iso_from_unix_ms(ms: u64) -> String {
    let secs = ms / 1_000;
    let millis = ms % 1_000;
    let rem = secs % 86_400;
    // u64 seconds / 86 400 always fits an i64 day count.
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3_600, rem % 3_600 / 60, rem % 60);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
}

/// Days since 1970-01-01 -> (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`), so we need no date crate.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `tpa_connection_error` (§5.3). The caller decides the close that follows.
pub(crate) fn connection_error(code: &str, message: &str) -> Value {
    json!({"type": "tpa_connection_error", "code": code, "message": message, "timestamp": iso_now()})
}

/// The user's saved settings for the app: the §5.4 example, also served by
/// `GET /appsettings/user/<pkg>`.
pub(crate) fn app_settings() -> Value {
    json!([{"key": "lang", "label": "Language", "type": "select", "value": "en-US",
            "defaultValue": "en-US", "options": [{"label": "English", "value": "en-US"}]}])
}

fn system_settings() -> Value {
    json!({"useOnboardMic": false, "contextualDashboard": true, "headUpAngle": 20, "brightness": 50,
           "autoBrightness": false, "sensingEnabled": true, "alwaysOnStatusBar": false,
           "bypassVad": false, "bypassAudioEncoding": false, "metricSystemEnabled": false})
}

fn capabilities() -> Value {
    json!({"modelName": MODEL_NAME, "hasCamera": false, "hasDisplay": true, "hasMicrophone": true,
           "hasSpeaker": false, "hasIMU": true})
}

/// `tpa_connection_ack` in the selected era's shape (§5.4).
pub(crate) fn ack(
    style: AckStyle,
    session_id: &str,
    user_id: &str,
    subscriptions: &[Value],
) -> Value {
    let mut ack = json!({"type": "tpa_connection_ack", "sessionId": session_id,
                         "settings": app_settings(), "capabilities": capabilities(),
                         "timestamp": iso_now()});
    match style {
        AckStyle::Augmentos => ack["augmentosSettings"] = system_settings(),
        AckStyle::Mentraos => {
            ack["mentraosSettings"] = system_settings();
            ack["subscriptions"] = Value::Array(subscriptions.to_vec());
            ack["userId"] = Value::String(user_id.to_owned());
        }
    }
    ack
}

/// The `device_state_update` full snapshot latest C-Later sends right after every ack (§5.4).
pub(crate) fn device_state_snapshot() -> Value {
    json!({"type": "device_state_update", "fullSnapshot": true, "timestamp": iso_now(),
           "state": {"connected": true, "modelName": MODEL_NAME, "batteryLevel": 80,
                     "charging": false, "wifiConnected": false}})
}

/// `app_stopped`: only `type` + `timestamp`, as C-June/C-Later send it (§7.3).
pub(crate) fn app_stopped() -> Value {
    json!({"type": "app_stopped", "timestamp": iso_now()})
}

/// Numbered final transcription `data_stream` (§7.1). `seq` is also a top-level field of
/// `data` so tests and benchmarks can detect gaps and reordering.
pub(crate) fn transcription(session_id: &str, stream_type: &str, seq: u64) -> Value {
    let start = seq.saturating_mul(UTTERANCE_SPACING_MS);
    json!({"type": "data_stream", "sessionId": session_id, "streamType": stream_type,
           "data": {"type": "transcription", "text": format!("utterance {seq}"), "isFinal": true,
                    "transcribeLanguage": "en-US", "startTime": start,
                    "endTime": start + UTTERANCE_SPACING_MS - 100, "seq": seq},
           "timestamp": iso_now()})
}

/// One binary audio chunk (§7.2): `len` bytes, the first four a big-endian sequence number,
/// the rest a deterministic filler so corruption is detectable.
pub(crate) fn audio_chunk(seq: u32, len: usize) -> Vec<u8> {
    // At least 4 bytes, so the slice below is in bounds; `i % 251` fits a u8.
    let mut chunk: Vec<u8> = (0..len.max(4)).map(|i| (i % 251) as u8).collect();
    chunk[..4].copy_from_slice(&seq.to_be_bytes());
    chunk
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_formats_known_instants() {
        assert_eq!(iso_from_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            iso_from_unix_ms(1_751_043_731_402),
            "2025-06-27T17:02:11.402Z"
        );
        assert_eq!(
            iso_from_unix_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn acks_differ_by_style() {
        let subs = [json!("transcription:en-US")];
        let later = ack(AckStyle::Mentraos, "a@b.c-pkg", "a@b.c", &subs);
        assert_eq!(later["userId"], "a@b.c");
        assert_eq!(later["subscriptions"][0], "transcription:en-US");
        assert!(later.get("augmentosSettings").is_none());
        let june = ack(AckStyle::Augmentos, "a@b.c-pkg", "a@b.c", &subs);
        assert_eq!(june["augmentosSettings"]["headUpAngle"], 20);
        assert!(june.get("userId").is_none() && june.get("mentraosSettings").is_none());
    }

    #[test]
    fn audio_chunk_starts_with_big_endian_seq() {
        let chunk = audio_chunk(0x0102_0304, 640);
        assert_eq!(chunk.len(), 640);
        assert_eq!(&chunk[..4], &[1, 2, 3, 4]);
    }
}
