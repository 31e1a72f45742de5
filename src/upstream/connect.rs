//! Dialling a cloud WebSocket: TCP, TLS for `wss://`, and the WebSocket handshake, all under
//! one deadline, with an error that names the address and says which step failed.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use url::Url;

/// A connected cloud socket.
pub type CloudSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connecting to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("cloud at {url} answered the upgrade with HTTP {status}")]
    Rejected { url: String, status: u16 },
    #[error("connecting to {url} failed: {source}")]
    Failed {
        url: String,
        #[source]
        source: tokio_tungstenite::tungstenite::Error,
    },
}

impl DialError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        use tokio_tungstenite::tungstenite::Error as E;
        match self {
            DialError::Timeout { .. } => "timeout",
            DialError::Rejected { .. } => "rejected",
            DialError::Failed { source, .. } => match source {
                E::Io(_) => "io",
                E::Tls(_) => "tls",
                E::Url(_) => "url",
                _ => "handshake",
            },
        }
    }
}

/// WebSocket settings of one leg: a deliberate read buffer (tungstenite's 128 KiB default
/// is zero-filled on every read) and the largest frame read from that leg's peer (a limit
/// on reads only; what Tether writes is bounded by the other leg's read limit). Each leg
/// takes its receiver's own limit: the cloud's for app frames, the SDK's for cloud frames.
pub fn ws_config(max_frame_bytes: usize, read_buffer_bytes: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_bytes)
        .max_message_size(Some(max_frame_bytes))
        .max_frame_size(Some(max_frame_bytes))
}

/// Opens a WebSocket to `url` within `timeout`.
pub async fn dial(
    url: &Url,
    tls: Arc<rustls::ClientConfig>,
    config: WebSocketConfig,
    timeout: Duration,
) -> Result<CloudSocket, DialError> {
    let connector = tokio_tungstenite::Connector::Rustls(tls);
    let attempt = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        Some(config),
        true,
        Some(connector),
    );
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(DialError::Timeout {
            url: url.to_string(),
            after: timeout,
        }),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => Err(DialError::Rejected {
            url: url.to_string(),
            status: resp.status().as_u16(),
        }),
        Ok(Err(source)) => Err(DialError::Failed {
            url: url.to_string(),
            source,
        }),
    }
}
