//! HTTP from the emulated cloud to the app: `POST <publicUrl>/webhook` with `session_request`
//! (§2.1) and `stop_request` (§2.2) bodies. One POST per call; retry policy lives in
//! `lifecycle`, because counting and state changes happen between attempts.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::{wire, CloudSimError, UrlStyle};

/// Why one POST attempt produced no HTTP status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookError {
    #[error("webhook POST timed out after {0:?}")]
    Timeout(Duration),
    #[error("webhook POST failed")]
    Http(#[source] hyper_util::client::legacy::Error),
}

/// A plain-HTTP client bound to the app's webhook URL.
#[derive(Debug)]
pub(crate) struct WebhookClient {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    timeout: Duration,
}

// === impl WebhookClient ===

impl WebhookClient {
    /// Errors if `url` is not an absolute `http://` URL (the emulator speaks no TLS).
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<Self, CloudSimError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| CloudSimError::InvalidInput(format!("webhook url {url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(CloudSimError::InvalidInput(format!(
                "webhook url {url:?} must be http://host[:port]/path"
            )));
        }
        // No idle pooling: an app server that restarts must not see a stale keep-alive
        // connection, and shutdown leaves no idle connection task behind.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        Ok(Self {
            client,
            uri,
            timeout,
        })
    }

    /// One POST of `body` as JSON, bounded by the per-attempt timeout (response body
    /// included). Returns the HTTP status; the body is ignored, as the cloud does.
    pub(crate) async fn post(&self, body: &Value) -> Result<u16, WebhookError> {
        let mut req = Request::new(Full::new(Bytes::from(body.to_string())));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uri.clone();
        req.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        let attempt = async {
            let resp = self.client.request(req).await.map_err(WebhookError::Http)?;
            let status = resp.status().as_u16();
            // Read the answer out so the connection completes; its content does not matter.
            let _ = resp.into_body().collect().await;
            Ok(status)
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| WebhookError::Timeout(self.timeout))?
    }
}

/// `session_request` with the URL fields of the selected era (§2.1).
pub(crate) fn session_request(
    style: UrlStyle,
    ws_base: &str,
    session_id: &str,
    user_id: &str,
) -> Value {
    let app_ws = format!("{ws_base}/app-ws");
    let mut body = json!({"type": "session_request", "sessionId": session_id, "userId": user_id,
                          "timestamp": wire::iso_now()});
    match style {
        UrlStyle::June => body["augmentOSWebsocketUrl"] = json!(app_ws),
        UrlStyle::Tpa => body["augmentOSWebsocketUrl"] = json!(format!("{ws_base}/tpa-ws")),
        UrlStyle::Later => {
            body["websocketUrl"] = json!(format!("{ws_base}/ws/miniapp"));
            body["mentraOSWebsocketUrl"] = json!(app_ws);
            body["augmentOSWebsocketUrl"] = json!(app_ws);
        }
    }
    body
}

/// `stop_request`; the reason is always `user_disabled` in cloud code, restarts included (§2.2).
pub(crate) fn stop_request(session_id: &str, user_id: &str) -> Value {
    json!({"type": "stop_request", "sessionId": session_id, "userId": user_id,
           "reason": "user_disabled", "timestamp": wire::iso_now()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_fields_follow_the_era() {
        let later = session_request(UrlStyle::Later, "ws://h:1", "u-p", "u");
        assert_eq!(later["websocketUrl"], "ws://h:1/ws/miniapp");
        assert_eq!(later["mentraOSWebsocketUrl"], "ws://h:1/app-ws");
        assert_eq!(later["augmentOSWebsocketUrl"], "ws://h:1/app-ws");
        let june = session_request(UrlStyle::June, "ws://h:1", "u-p", "u");
        assert_eq!(june["augmentOSWebsocketUrl"], "ws://h:1/app-ws");
        assert!(june.get("mentraOSWebsocketUrl").is_none() && june.get("websocketUrl").is_none());
        let tpa = session_request(UrlStyle::Tpa, "ws://h:1", "u-p", "u");
        assert_eq!(tpa["augmentOSWebsocketUrl"], "ws://h:1/tpa-ws");
    }

    #[test]
    fn rejects_non_http_urls() {
        let t = Duration::from_secs(1);
        assert!(WebhookClient::new("https://127.0.0.1/webhook", t).is_err());
        assert!(WebhookClient::new("not a url", t).is_err());
        assert!(WebhookClient::new("http://127.0.0.1:9/webhook", t).is_ok());
    }
}
