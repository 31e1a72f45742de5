//! Reverse proxy from the public listener to the app server: method, path, query, headers
//! (bar hop-by-hop ones) and streamed bodies pass unchanged; protocol upgrades (WebSocket)
//! are relayed by splicing the two upgraded connections.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::runtime::Shared;
use crate::serve::{is_upgrade, json_error, relay, strip_hop_headers, Body};

/// Why the app could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("bad target URI {0}")]
    Uri(String),
    #[error("{0}")]
    Client(#[from] hyper_util::client::legacy::Error),
}

/// Sends `req` to the app at the same path and query; returns its response head (the body
/// streams). `peer` is added to `X-Forwarded-For`.
pub async fn send_to_app(
    shared: &Shared,
    mut req: Request<Body>,
    peer: Option<SocketAddr>,
) -> Result<Response<Body>, AppError> {
    let config = shared.config();
    let base = config.app.url.as_str().trim_end_matches('/');
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = format!("{base}{pq}");
    *req.uri_mut() = target.parse().map_err(|_| AppError::Uri(target.clone()))?;
    let upgrade = is_upgrade(&req);
    strip_hop_headers(req.headers_mut(), upgrade);
    if let Some(peer) = peer {
        let forwarded = match req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = forwarded.parse() {
            req.headers_mut().insert("x-forwarded-for", v);
        }
    }
    let resp = shared.app_client.request(req).await?;
    let (mut parts, body) = resp.into_parts();
    strip_hop_headers(
        &mut parts.headers,
        parts.status == StatusCode::SWITCHING_PROTOCOLS,
    );
    Ok(Response::from_parts(parts, relay(body)))
}

/// Proxies one public request to the app, upgrades included.
pub async fn handle(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let req = req.map(relay);
    let route = if upgrade { "upgrade" } else { "proxy" };
    let mut resp = match send_to_app(&shared, req, Some(peer)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(hop = "app", error = %e, "app unreachable");
            shared.metrics.proxy_request(route, 502);
            return json_error(StatusCode::BAD_GATEWAY, &format!("app unreachable: {e}"));
        }
    };
    shared.metrics.proxy_request(route, resp.status().as_u16());
    if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status())
    {
        let app_upgrade = hyper::upgrade::on(&mut resp);
        let cancel = shared.cancel.clone();
        shared.tracker.spawn(async move {
            let (client, app) = match tokio::try_join!(client_upgrade, app_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
            tokio::select! {
                () = cancel.cancelled() => {}
                r = tokio::io::copy_bidirectional(&mut client, &mut app) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "upgraded connection ended");
                    }
                }
            }
        });
    }
    resp
}
