//! Reverse proxy from the public listener to the app server: method, path, query, headers
//! (bar hop-by-hop ones) and streamed bodies pass unchanged; protocol upgrades (WebSocket)
//! are relayed by splicing the two upgraded connections. The app speaks HTTP/1.1, so a
//! request that arrived over HTTP/2 is re-versioned on the way.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, COOKIE, HOST};
use hyper::http::uri::Authority;
use hyper::{Request, Response, StatusCode, Version};
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
/// streams). `peer` is added to `X-Forwarded-For`. A request that arrived over HTTP/2 goes
/// out as HTTP/1.1 with its authority as `Host`. Unbounded in time: callers bound it.
pub async fn send_to_app(
    shared: &Shared,
    mut req: Request<Body>,
    peer: Option<SocketAddr>,
) -> Result<Response<Body>, AppError> {
    let config = shared.config();
    let base = config.app.url.as_str().trim_end_matches('/');
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = format!("{base}{pq}");
    let authority = req.uri().authority().cloned();
    *req.uri_mut() = target.parse().map_err(|_| AppError::Uri(target.clone()))?;
    if !matches!(req.version(), Version::HTTP_10 | Version::HTTP_11) {
        to_http11(&mut req, authority);
    }
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

/// Makes a request that arrived over HTTP/2 (or later) fit for the HTTP/1.1 app client,
/// which refuses any other version: version 1.1, `:authority` as `Host` (what an HTTP/1.1
/// client would have sent), and the cookie crumbs HTTP/2 allows joined into the one
/// header HTTP/1.1 allows (RFC 9113 §8.2.3).
fn to_http11<B>(req: &mut Request<B>, authority: Option<Authority>) {
    *req.version_mut() = Version::HTTP_11;
    if !req.headers().contains_key(HOST) {
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    let crumbs: Vec<&[u8]> = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if crumbs.len() > 1 {
        if let Ok(joined) = HeaderValue::from_bytes(&crumbs.join(&b"; "[..])) {
            req.headers_mut().insert(COOKIE, joined);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http2_request_goes_out_as_http11_with_host_and_one_cookie_header() {
        let mut req = Request::get("http://tether.example:8080/settings?x=1")
            .version(Version::HTTP_2)
            .header(COOKIE, "a=1")
            .header(COOKIE, "b=2")
            .body(())
            .expect("request");
        let authority = req.uri().authority().cloned();
        to_http11(&mut req, authority);
        assert_eq!(req.version(), Version::HTTP_11);
        assert_eq!(req.headers()[HOST], "tether.example:8080");
        let cookies: Vec<_> = req.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    #[test]
    fn a_host_the_client_sent_is_kept() {
        let mut req = Request::get("http://inner:1/")
            .version(Version::HTTP_2)
            .header(HOST, "outer.example")
            .body(())
            .expect("request");
        to_http11(&mut req, Some(Authority::from_static("inner:1")));
        assert_eq!(req.headers()[HOST], "outer.example");
    }
}
