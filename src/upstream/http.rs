//! Forwarding one HTTP request to a cloud (the SDK's settings, storage and TTS calls, which it
//! derives from the WebSocket URL Tether handed it). These calls are rare, so each opens its
//! own HTTP/1.1 connection (TLS for `https`) and no pool is kept.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use url::Url;

use crate::serve::Body;

/// Why a forward failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{url}: no host")]
    NoHost { url: String },
    #[error("{url}: timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
}

/// Sends `req` to `target` (scheme, host, port, path and query all taken from it) and returns
/// the response head once it arrives; the body then streams. `timeout` bounds connecting and
/// waiting for the head.
pub async fn forward(
    mut req: Request<Body>,
    target: &Url,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Response<Incoming>, ForwardError> {
    let url = target.to_string();
    let host = target
        .host_str()
        .ok_or_else(|| ForwardError::NoHost { url: url.clone() })?
        .to_string();
    let port = target.port_or_known_default().unwrap_or(80);
    let path = match target.query() {
        Some(q) => format!("{}?{q}", target.path()),
        None => target.path().to_string(),
    };
    if let Ok(uri) = path.parse() {
        *req.uri_mut() = uri;
    }
    let authority = match target.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    if let Ok(v) = hyper::header::HeaderValue::from_str(&authority) {
        req.headers_mut().insert(hyper::header::HOST, v);
    }
    let https = target.scheme() == "https";
    let exchange = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| ForwardError::Io {
                url: url.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if https {
            let name = ServerName::try_from(host.clone()).map_err(|e| ForwardError::Io {
                url: url.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|source| ForwardError::Io {
                    url: url.clone(),
                    source,
                })?;
            send(TokioIo::new(tls), req, &url).await
        } else {
            send(TokioIo::new(tcp), req, &url).await
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ForwardError::Timeout {
            url: url.clone(),
            after: timeout,
        })?
}

async fn send<IO>(io: IO, req: Request<Body>, url: &str) -> Result<Response<Incoming>, ForwardError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|source| ForwardError::Http {
            url: url.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "cloud HTTP connection ended with an error");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|source| ForwardError::Http {
            url: url.to_string(),
            source,
        })
}
