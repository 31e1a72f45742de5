//! Reverse proxy from the public listener to the app server: method, path, query, headers
//! (bar hop-by-hop ones) and streamed bodies pass unchanged; protocol upgrades (WebSocket)
//! are relayed by splicing the two upgraded connections. The app speaks HTTP/1.1, so a
//! request that arrived over HTTP/2 is re-versioned on the way.
//!
//! Bounds: a request body that goes silent for `http.body_read_timeout_ms` is cut (408);
//! the app has `app.request_timeout_ms` to send its response head (504), after which the
//! body streams unbounded (downloads, server-sent events; a client that stops reading is cut
//! by the send timeout); an upgrade must complete within `http.upgrade_timeout_ms`, and the
//! spliced connection then lives as long as both ends keep it.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, COOKIE, HOST};
use hyper::http::uri::Authority;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use crate::runtime::Shared;
use crate::serve::{
    is_body_timeout, is_upgrade, json_error, relay, relay_within, strip_hop_headers, Body,
    Listener, Reject, Stage,
};

/// Why the app could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("bad target URI {0}")]
    Uri(String),
    // The client's error is the source (not folded into the message), so a stalled request
    // body under it can be found by walking the chain.
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
    if !pq.starts_with('/') {
        // `OPTIONS *` (asterisk form) names the server, not a resource the app has.
        return Err(AppError::Uri(pq.to_string()));
    }
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
    let config = shared.config();
    let metrics = shared.metrics.listener(Listener::Public);
    // Held until the app's response head is in: each waiting request holds a connection
    // to the app, and HTTP/2 lets one client open many.
    let Ok(_slot) = shared.proxy_slots.clone().try_acquire_owned() else {
        metrics.rejected(Reject::Busy);
        shared.metrics.proxy_request("proxy", 503);
        let resp = json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests waiting on the app; retry shortly",
        );
        return crate::serve::retry_after(resp, 1);
    };
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let version = req.version();
    let req = req.map(|b| relay_within(b, config.http.body_read_timeout));
    let route = if upgrade { "upgrade" } else { "proxy" };
    let sent = tokio::time::timeout(
        config.app.request_timeout,
        send_to_app(&shared, req, Some(peer)),
    )
    .await;
    let mut resp = match sent {
        Ok(Ok(r)) => r,
        Err(_) => {
            let ms = config.app.request_timeout.as_millis();
            tracing::warn!(hop = "app", timeout_ms = ms, "app sent no response in time");
            metrics.timeout(Stage::AppResponse);
            shared.metrics.proxy_request(route, 504);
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("app did not answer within {ms} ms"),
            );
        }
        Ok(Err(AppError::Uri(target))) => {
            metrics.rejected(Reject::BadTarget);
            shared.metrics.proxy_request(route, 400);
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("request target cannot be proxied: {target}"),
            );
        }
        Ok(Err(e)) if is_body_timeout(&e) => {
            tracing::debug!(%peer, error = %e, "request body stalled");
            metrics.timeout(Stage::Body);
            shared.metrics.proxy_request(route, 408);
            let ms = config.http.body_read_timeout.as_millis();
            let mut resp = json_error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("request body stalled: nothing received for {ms} ms"),
            );
            if version < Version::HTTP_2 {
                // The rest of the body will never be read; the connection cannot be reused.
                resp.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            return resp;
        }
        Ok(Err(e)) => {
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
        let wait = config.http.upgrade_timeout;
        shared.tracker.spawn(async move {
            let both = async { tokio::try_join!(client_upgrade, app_upgrade) };
            let (client, app) = match tokio::time::timeout(wait, both).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
                Err(_) => {
                    metrics.timeout(Stage::Upgrade);
                    tracing::debug!(%peer, "upgrade did not complete in time");
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
