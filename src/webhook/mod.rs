//! The cloud's `POST /webhook`: parsing `session_request` and rewriting its WebSocket URLs to
//! Tether's local listener (pure, here), and the intake that forwards it to the app
//! ([`intake`]).

pub mod intake;
pub mod limit;

use serde_json::{Map, Value};
use url::Url;

/// Every field a cloud era uses for the app's WebSocket URL (PROTOCOL §2.1, §14).
pub const URL_FIELDS: &[&str] = &[
    "augmentOSWebsocketUrl",
    "mentraOSWebsocketUrl",
    "websocketUrl",
];

/// A parsed `session_request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRequest {
    pub session_id: String,
    pub user_id: Option<String>,
    /// Field name and parsed URL, for each URL field present.
    pub urls: Vec<(String, Url)>,
}

/// Why a `session_request` cannot be relayed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WebhookError {
    #[error("session_request has no sessionId")]
    MissingSessionId,
    #[error("{field} is not a ws:// or wss:// URL: {value}")]
    BadUrl { field: String, value: String },
}

/// Reads the fields Tether needs from a `session_request` object.
pub fn parse_session_request(obj: &Map<String, Value>) -> Result<SessionRequest, WebhookError> {
    let session_id = obj
        .get("sessionId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(WebhookError::MissingSessionId)?
        .to_string();
    let user_id = obj
        .get("userId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut urls = Vec::new();
    for field in URL_FIELDS {
        let Some(v) = obj.get(*field) else { continue };
        let text = v.as_str().unwrap_or_default();
        if text.is_empty() {
            continue;
        }
        let bad = || WebhookError::BadUrl {
            field: field.to_string(),
            value: text.to_string(),
        };
        let url = Url::parse(text).map_err(|_| bad())?;
        if !matches!(url.scheme(), "ws" | "wss") || url.host_str().is_none() {
            return Err(bad());
        }
        urls.push((field.to_string(), url));
    }
    Ok(SessionRequest {
        session_id,
        user_id,
        urls,
    })
}

/// The local URL that stands for `cloud_url`: same path and query, under `/c/<cloud_id>` on
/// Tether's local listener.
pub fn local_url(advertise: &str, cloud_id: &str, cloud_url: &Url) -> String {
    let mut out = format!(
        "ws://{advertise}{}{cloud_id}{}",
        crate::upstream::clouds::PREFIX,
        cloud_url.path()
    );
    if let Some(q) = cloud_url.query() {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn reads_every_url_spelling() {
        let req = parse_session_request(&obj(serde_json::json!({
            "type": "session_request", "sessionId": "a@b.c-com.x", "userId": "a@b.c",
            "websocketUrl": "wss://api.x/ws/miniapp",
            "mentraOSWebsocketUrl": "wss://api.x/app-ws",
            "augmentOSWebsocketUrl": "wss://api.x/app-ws"
        })))
        .expect("parse");
        assert_eq!(req.session_id, "a@b.c-com.x");
        let fields: Vec<_> = req.urls.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "augmentOSWebsocketUrl",
                "mentraOSWebsocketUrl",
                "websocketUrl"
            ]
        );
    }

    #[test]
    fn rejects_what_cannot_be_relayed() {
        assert_eq!(
            parse_session_request(&obj(serde_json::json!({"type": "session_request"}))),
            Err(WebhookError::MissingSessionId)
        );
        let bad = parse_session_request(&obj(serde_json::json!({
            "sessionId": "s", "augmentOSWebsocketUrl": "https://api.x/app-ws"
        })));
        assert!(matches!(bad, Err(WebhookError::BadUrl { .. })));
    }

    #[test]
    fn local_url_keeps_path_and_query() {
        let u = Url::parse("wss://api.x/tpa-ws?region=eu").expect("url");
        assert_eq!(
            local_url("127.0.0.1:8081", "ab12cd34", &u),
            "ws://127.0.0.1:8081/c/ab12cd34/tpa-ws?region=eu"
        );
    }
}
