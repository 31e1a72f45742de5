//! The registration exchange as data (DESIGN.md §6): where to POST, what to send, and what an
//! answer means. Pure functions; no I/O, no clock.

use serde_json::{json, Value};
use url::Url;

use crate::config::Config;

/// Path of the seed design's registration route, relative to the cloud's HTTP base.
pub(crate) const REGISTER_PATH: &str = "api/tpa/register";

/// What Tether advertises besides the app's own identity.
const CAPABILITIES: &str = r#"{"sessionRecovery":true,"webhookRewrite":true}"#;

/// How one attempt ended; also the `result` label of the attempts counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx with `success: true`.
    Ok,
    /// 404: the cloud has no such API (the production cloud removed it).
    NotFound,
    /// 401/403: the cloud refused the package or API key.
    Unauthorized,
    /// Any other status, a refusal in the body, or a connection failure.
    Error,
    /// No complete answer within `registration.timeout_ms`.
    Timeout,
}

/// A successful answer's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub registration_id: Option<String>,
    /// `activeSessions`, given as a count or as a list.
    pub active_sessions: Option<u64>,
}

// === impl Outcome ===

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Unauthorized,
        Outcome::Error,
        Outcome::Timeout,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Outcome::Ok => 0,
            Outcome::NotFound => 1,
            Outcome::Unauthorized => 2,
            Outcome::Error => 3,
            Outcome::Timeout => 4,
        }
    }
}

/// The registration URL: `registration.url`, else `cloud.ws_url` with `ws`→`http` and
/// `wss`→`https` and its path dropped, then [`REGISTER_PATH`] appended. `None` when neither
/// is configured.
pub(crate) fn endpoint(config: &Config) -> Option<Url> {
    let mut base = match (&config.registration.url, &config.cloud.ws_url) {
        (Some(url), _) => url.clone(),
        (None, Some(ws)) => {
            let mut url = ws.clone();
            let scheme = if ws.scheme() == "wss" {
                "https"
            } else {
                "http"
            };
            // ws→http and wss→https are allowed by `Url::set_scheme` (both are special schemes).
            url.set_scheme(scheme).ok()?;
            url.set_path("/");
            url.set_query(None);
            url.set_fragment(None);
            url
        }
        (None, None) => return None,
    };
    // `join` replaces the last segment unless the base ends with '/'.
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    base.set_query(None);
    base.set_fragment(None);
    base.join(REGISTER_PATH).ok()
}

/// The `serverUrl` Tether registers: `registration.server_url`, else `http://<listen.public>`
/// as configured.
pub(crate) fn server_url(config: &Config) -> String {
    config
        .registration
        .server_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen.public))
}

/// The request body. It holds the API key: never log it.
pub(crate) fn body(
    config: &Config,
    package_name: &str,
    server_url: &str,
    registration_id: Option<&str>,
) -> Value {
    let capabilities: Value = serde_json::from_str(CAPABILITIES).unwrap_or(Value::Null);
    let mut body = json!({
        "packageName": package_name,
        "apiKey": config.app.api_key.expose(),
        "serverUrl": server_url,
        "version": env!("CARGO_PKG_VERSION"),
        "capabilities": capabilities,
    });
    // A refresh names the registration it renews, so the cloud can tell it from a restart.
    if let Some(id) = registration_id {
        body["registrationId"] = json!(id);
    }
    body
}

/// Classifies an answer by status, then by body for a 2xx.
pub(crate) fn classify(status: u16, body: &[u8]) -> Result<Accepted, Outcome> {
    match status {
        200..=299 => {}
        404 => return Err(Outcome::NotFound),
        401 | 403 => return Err(Outcome::Unauthorized),
        _ => return Err(Outcome::Error),
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| Outcome::Error)?;
    if value.get("success").and_then(Value::as_bool) != Some(true) {
        return Err(Outcome::Error);
    }
    let registration_id = value.get("registrationId").and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let active_sessions = match value.get("activeSessions") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::Array(list)) => Some(list.len() as u64),
        _ => None,
    };
    Ok(Accepted {
        registration_id,
        active_sessions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        Config::from_yaml(yaml).expect("config")
    }

    #[test]
    fn endpoint_prefers_the_registration_url_and_keeps_its_path() {
        let c = config(
            "registration:\n  enabled: true\n  url: http://cloud.example:8002/base\n\
             cloud:\n  ws_url: wss://other.example/app-ws\n",
        );
        assert_eq!(
            endpoint(&c).map(String::from).as_deref(),
            Some("http://cloud.example:8002/base/api/tpa/register")
        );
        let c = config("registration:\n  url: https://cloud.example/\n");
        assert_eq!(
            endpoint(&c).map(String::from).as_deref(),
            Some("https://cloud.example/api/tpa/register")
        );
    }

    #[test]
    fn endpoint_derives_http_from_the_ws_url() {
        let c = config("cloud:\n  ws_url: wss://prod.example/app-ws?x=1\n");
        assert_eq!(
            endpoint(&c).map(String::from).as_deref(),
            Some("https://prod.example/api/tpa/register")
        );
        let c = config("cloud:\n  ws_url: ws://127.0.0.1:7002/tpa-ws\n");
        assert_eq!(
            endpoint(&c).map(String::from).as_deref(),
            Some("http://127.0.0.1:7002/api/tpa/register")
        );
        assert_eq!(endpoint(&config("")), None);
    }

    #[test]
    fn body_carries_identity_and_defaults_the_server_url() {
        let c = Config::from_sources(Some("listen:\n  public: 10.0.0.5:8080\n"), "t", &|k| {
            (k == "TETHER_API_KEY").then(|| "k3y".to_string())
        })
        .expect("config");
        let url = server_url(&c);
        assert_eq!(url, "http://10.0.0.5:8080");
        let b = body(&c, "com.example.x", &url, None);
        assert_eq!(b["packageName"], "com.example.x");
        assert_eq!(b["apiKey"], "k3y");
        assert_eq!(b["serverUrl"], "http://10.0.0.5:8080");
        assert_eq!(b["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(b["capabilities"]["sessionRecovery"], true);
        assert!(b.get("registrationId").is_none());
        assert_eq!(
            body(&c, "p", &url, Some("r-1"))["registrationId"],
            json!("r-1")
        );
        let c = config("registration:\n  server_url: https://app.example\n");
        assert_eq!(server_url(&c), "https://app.example");
    }

    #[test]
    fn answers_are_classified() {
        let ok = br#"{"success":true,"registrationId":"r-9","activeSessions":3}"#;
        assert_eq!(
            classify(201, ok),
            Ok(Accepted {
                registration_id: Some("r-9".into()),
                active_sessions: Some(3)
            })
        );
        let list = br#"{"success":true,"registrationId":7,"activeSessions":["a","b"]}"#;
        assert_eq!(
            classify(200, list),
            Ok(Accepted {
                registration_id: Some("7".into()),
                active_sessions: Some(2)
            })
        );
        assert_eq!(classify(404, b""), Err(Outcome::NotFound));
        assert_eq!(classify(401, b"{}"), Err(Outcome::Unauthorized));
        assert_eq!(classify(403, b"{}"), Err(Outcome::Unauthorized));
        assert_eq!(classify(503, b"{}"), Err(Outcome::Error));
        assert_eq!(classify(400, b"{}"), Err(Outcome::Error));
        assert_eq!(classify(200, b"not json"), Err(Outcome::Error));
        assert_eq!(
            classify(200, br#"{"success":false,"error":"x"}"#),
            Err(Outcome::Error)
        );
    }
}
