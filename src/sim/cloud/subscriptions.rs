//! Subscription entries: validation as the cloud does it (PROTOCOL.md §6) and stream routing
//! (§7.1, §7.2). Pure functions; no session state.

use serde_json::Value;

/// Plain stream names S-2.1.29 can send, plus C-June's `notification_dismissed` spelling.
const STREAMS: &[&str] = &[
    "button_press",
    "head_position",
    "touch_event",
    "glasses_battery_update",
    "phone_battery_update",
    "glasses_connection_state",
    "location_update",
    "location_stream",
    "vps_coordinates",
    "transcription",
    "translation",
    "VAD",
    "audio_chunk",
    "phone_notification",
    "phone_notification_dismissed",
    "notification_dismissed",
    "calendar_event",
    "start_app",
    "stop_app",
    "open_dashboard",
    "core_status_update",
    "video",
    "photo_request",
    "photo_response",
    "rtmp_stream_status",
    "managed_stream_status",
    "all",
    "*",
    "settings_update_request",
    "custom_message",
    "photo_taken",
];

const TOUCH_GESTURES: &[&str] = &[
    "single_tap",
    "double_tap",
    "triple_tap",
    "long_press",
    "forward_swipe",
    "backward_swipe",
    "up_swipe",
    "down_swipe",
];

const LOCATION_RATES: &[&str] = &[
    "standard",
    "high",
    "realtime",
    "tenMeters",
    "hundredMeters",
    "kilometer",
    "threeKilometers",
    "reduced",
];

/// The language the emulator "hears"; a bare `transcription` means this one (§6).
pub(crate) const TRANSCRIPTION_KEY: &str = "transcription:en-US";

/// Checks one `subscriptions` entry. `Err` carries the text for
/// "Invalid subscription type: <text>" (§6).
pub(crate) fn validate(entry: &Value) -> Result<(), String> {
    let valid = match entry {
        Value::String(name) => valid_name(name),
        Value::Object(obj) => {
            obj.get("stream").and_then(Value::as_str) == Some("location_stream")
                && obj
                    .get("rate")
                    .and_then(Value::as_str)
                    .is_some_and(|r| LOCATION_RATES.contains(&r))
        }
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(entry
            .as_str()
            .map_or_else(|| entry.to_string(), str::to_owned))
    }
}

fn valid_name(name: &str) -> bool {
    if STREAMS.contains(&name) {
        return true;
    }
    let Some((base, spec)) = name.split_once(':') else {
        return false;
    };
    match base {
        "transcription" => without_query(spec).is_some_and(|l| l == "auto" || is_lang(l)),
        "translation" => without_query(spec).is_some_and(is_translation_pair),
        "touch_event" => TOUCH_GESTURES.contains(&spec),
        "augmentos" => !spec.is_empty(),
        _ => false,
    }
}

/// Strips the optional `?no-language-identification=..&hints=..` query (§6).
fn without_query(spec: &str) -> Option<&str> {
    let head = spec.split_once('?').map_or(spec, |(head, _)| head);
    (!head.is_empty()).then_some(head)
}

/// `xx-XX` or `xxx-XX`.
fn is_lang(tag: &str) -> bool {
    let Some((lang, region)) = tag.split_once('-') else {
        return false;
    };
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && region.len() == 2
        && region.bytes().all(|b| b.is_ascii_uppercase())
}

/// `<src>-to-<dst>` or `all-to-<dst>`.
fn is_translation_pair(pair: &str) -> bool {
    pair.split_once("-to-")
        .is_some_and(|(src, dst)| (src == "all" || is_lang(src)) && is_lang(dst))
}

fn is_wildcard(entry: &Value) -> bool {
    matches!(entry.as_str(), Some("all" | "*"))
}

/// The `streamType` an en-US transcription carries for this subscriber, or `None` if it
/// does not receive transcriptions. C-Later sends the language-qualified key (§7.1); we send
/// the app's own en-US entry (query included) so an exact-match SDK dispatches it.
pub(crate) fn transcription_key(subscriptions: &[Value]) -> Option<String> {
    let own = subscriptions
        .iter()
        .filter_map(Value::as_str)
        .find_map(|s| {
            let qualified = s
                .strip_prefix(TRANSCRIPTION_KEY)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('?'));
            if s == "transcription" {
                Some(TRANSCRIPTION_KEY.to_owned())
            } else {
                qualified.then(|| s.to_owned())
            }
        });
    own.or_else(|| {
        subscriptions
            .iter()
            .any(is_wildcard)
            .then(|| TRANSCRIPTION_KEY.to_owned())
    })
}

/// Whether binary audio goes to this subscriber (§7.2).
pub(crate) fn wants_audio(subscriptions: &[Value]) -> bool {
    subscriptions
        .iter()
        .any(|s| is_wildcard(s) || s.as_str() == Some("audio_chunk"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn accepts_every_documented_form() {
        for ok in [
            json!("button_press"),
            json!("VAD"),
            json!("*"),
            json!("transcription:en-US"),
            json!("transcription:auto"),
            json!("transcription:fil-PH?no-language-identification=true&hints=ja,fr"),
            json!("translation:es-ES-to-en-US"),
            json!("translation:all-to-en-US"),
            json!("touch_event:double_tap"),
            json!("augmentos:brightness"),
            json!({"stream": "location_stream", "rate": "tenMeters"}),
        ] {
            assert_eq!(validate(&ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_unknown_forms_with_their_text() {
        assert_eq!(validate(&json!("bogus")), Err("bogus".to_owned()));
        for bad in [
            json!("vad"),
            json!("transcription:english"),
            json!("translation:en-US"),
            json!("touch_event:wiggle"),
            json!("augmentos:"),
            json!({"stream": "location_stream", "rate": "warp"}),
            json!(7),
        ] {
            assert!(validate(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_transcriptions_by_key_then_wildcard() {
        assert_eq!(
            transcription_key(&[json!("transcription")]).as_deref(),
            Some(TRANSCRIPTION_KEY)
        );
        assert_eq!(
            transcription_key(&[json!("*"), json!("transcription:en-US?hints=ja")]).as_deref(),
            Some("transcription:en-US?hints=ja")
        );
        assert_eq!(
            transcription_key(&[json!("all")]).as_deref(),
            Some(TRANSCRIPTION_KEY)
        );
        assert_eq!(transcription_key(&[json!("transcription:fr-FR")]), None);
        assert_eq!(transcription_key(&[json!("transcription:en-USX")]), None);
        assert!(wants_audio(&[json!("audio_chunk")]) && !wants_audio(&[json!("VAD")]));
    }
}
