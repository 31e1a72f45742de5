//! Serving HTTP on a bound listener (HTTP/1.1 with upgrades, and HTTP/2 with prior
//! knowledge, told apart by the first bytes), and the response builders every listener
//! shares. This module owns what a peer may hold: a connection cap per listener, and a
//! bound on every phase where a peer can stall (first bytes and request heads, request
//! bodies, idle keep-alive, writes it does not take, HTTP/2 PINGs). Connections drain
//! gracefully when the token is cancelled; upgraded connections are not drained here: their
//! owners watch the token themselves, and no idle bound applies to them.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::metrics::ListenerMetrics;
use crate::config::HttpConfig;

mod body;
mod io;

pub use body::{is_body_timeout, read_within, relay_within, BodyReadError, BodyTimeout, TimedBody};
pub use io::SendTimeout;

/// Any error a body may carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response Tether writes or relays.
pub type Body = BoxBody<Bytes, BoxError>;

/// A complete body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// A streamed body relayed from a peer.
pub fn relay(body: Incoming) -> Body {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let text = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON error in the shape the SDK's own server uses: `{"status":"error","message":..}`.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &serde_json::json!({"status": "error", "message": message}),
    )
}

/// `resp` with `Retry-After: secs`, for a refusal the client should retry.
pub fn retry_after(mut resp: Response<Body>, secs: u64) -> Response<Body> {
    if let Ok(v) = hyper::header::HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Which listener a connection came in on: its cap, and its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    Local,
    Admin,
}

/// Where a peer stalled, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No first bytes, or no complete request head, within the header read timeout.
    Header,
    /// A request body went silent.
    Body,
    /// A connection with nothing in flight outlived the idle timeout.
    Idle,
    /// The peer stopped taking what Tether wrote to it.
    Send,
    /// A protocol upgrade did not complete.
    Upgrade,
    /// The app did not send a response head in time.
    AppResponse,
    /// An HTTP/2 peer did not answer a keep-alive PING.
    H2Ping,
}

/// HTTP/2 flow-control windows: request body bytes a peer may send ahead of Tether's reading.
pub const H2_CONN_WINDOW: u32 = 128 * 1024;
pub const H2_STREAM_WINDOW: u32 = 64 * 1024;
/// Response bytes buffered per HTTP/2 stream before the writer waits.
pub const H2_MAX_SEND_BUF: usize = 64 * 1024;

/// Why a request was refused as bad input, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not HTTP (hyper answered 400 and closed).
    Malformed,
    /// A request head over hyper's limits (hyper answered 431 and closed).
    TooLarge,
    /// `CONNECT`, or WebSocket over HTTP/2 (RFC 8441): Tether is no tunnel.
    Connect,
    /// A request target that cannot be aimed at the app (`OPTIONS *` and the like).
    BadTarget,
    /// Too many requests were already waiting on the app (503).
    Busy,
}

/// The bounds a connection is served under, read from the configuration as it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimits {
    pub header_read: Duration,
    pub idle: Duration,
    pub send: Duration,
    pub h2_keepalive_interval: Duration,
    pub h2_keepalive_timeout: Duration,
    pub h2_max_streams: u32,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

/// What a listener is served with besides its socket and handler.
pub struct Serving {
    pub which: Listener,
    /// Called at every accepted connection, so a reload applies to new connections.
    pub limits: Arc<dyn Fn() -> ConnLimits + Send + Sync>,
    pub metrics: ListenerMetrics,
    pub cancel: CancellationToken,
    /// Connection tasks are spawned here, so a shutdown waits for them.
    pub tracker: TaskTracker,
    /// After `cancel`, how long open requests may run on before their connection is dropped.
    pub drain: Duration,
}

/// How often a listener at its cap says so in the log (every refusal is counted).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// After an idle connection is asked to close, how long it gets before it is dropped:
/// an HTTP/2 GOAWAY waits for a PING answer, and a stalled peer never gives one.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Accepts connections on `listener` and serves each with `handler` until `cancel` fires;
/// then stops accepting and gives open requests up to `drain` to finish. Over the cap a
/// connection is accepted and closed at once, so the backlog never fills and other
/// listeners are never held up. Each connection must send its first bytes, and each request
/// head, within the header read timeout; see [`ConnLimits`] for the other bounds.
pub async fn serve<H, F>(listener: TcpListener, handler: H, ctx: Serving)
where
    H: Fn(Request<Incoming>, std::net::SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let open = Arc::new(AtomicUsize::new(0));
    let conns = TaskTracker::new();
    let mut refused = 0u64;
    let mut last_warned: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly, keep serving.
                    tracing::warn!(listener = ctx.which.label(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let limits = (ctx.limits)();
        let Some(slot) = io::Slot::take(&open, limits.max_connections, &ctx.metrics.open) else {
            ctx.metrics.refused.inc();
            drop(stream);
            refused += 1;
            if last_warned.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
                tracing::warn!(
                    listener = ctx.which.label(),
                    cap = limits.max_connections,
                    refused,
                    "connection cap reached; closing new connections at once"
                );
                refused = 0;
                last_warned = Some(Instant::now());
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = connection(
            stream,
            peer,
            slot,
            handler.clone(),
            limits,
            ctx.metrics.clone(),
            ctx.cancel.clone(),
            ctx.drain,
        );
        ctx.tracker.spawn(conns.track_future(conn));
    }
    drop(listener);
    conns.close();
    // Each connection drops itself once `drain` has passed; the slack covers the last writes.
    if tokio::time::timeout(ctx.drain + IDLE_CLOSE_GRACE, conns.wait())
        .await
        .is_err()
    {
        tracing::warn!(listener = ctx.which.label(), drain = ?ctx.drain, "HTTP connections still open after the drain period");
    }
}

/// Serves one accepted connection: tells HTTP/1 from HTTP/2 under the header timeout, then
/// drives hyper's connection under the idle and drain bounds.
#[allow(clippy::too_many_arguments)] // one call site, each argument a different concern
async fn connection<H, F>(
    mut stream: TcpStream,
    peer: std::net::SocketAddr,
    slot: io::Slot,
    handler: Arc<H>,
    limits: ConnLimits,
    metrics: ListenerMetrics,
    cancel: CancellationToken,
    drain: Duration,
) where
    H: Fn(Request<Incoming>, std::net::SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    // hyper's auto-detection reads the first bytes with no deadline at all; read them here.
    let sniffed = tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        r = tokio::time::timeout(limits.header_read, io::sniff(&mut stream)) => r,
    };
    let (prefix, protocol) = match sniffed {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "connection failed before its first request");
            return;
        }
        Err(_) => {
            metrics.timeout(Stage::Header);
            tracing::debug!(%peer, "no request bytes within the header read timeout");
            return;
        }
    };
    let io = TokioIo::new(io::ConnIo::new(
        stream,
        prefix,
        limits.send,
        slot,
        metrics.clone(),
    ));
    let (in_flight, watch_in_flight) = body::InFlight::channel();
    let svc_metrics = metrics.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let guard = in_flight.enter();
        let handler = handler.clone();
        let metrics = svc_metrics.clone();
        async move {
            let resp = match refuse_tunnel(&req) {
                Some(resp) => {
                    metrics.rejected(Reject::Connect);
                    resp
                }
                None => handler(req, peer).await,
            };
            Ok::<_, Infallible>(resp.map(|b| body::Tracked::new(b, guard)))
        }
    });
    let ended = match protocol {
        io::Protocol::Http1 => {
            let mut b = hyper::server::conn::http1::Builder::new();
            // Without a timer hyper ignores header_read_timeout (it only logs a warning).
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                // hyper's default read buffer is ~400 KiB: bound what each half-sent head
                // may pin, so the connection cap bounds memory too.
                .max_buf_size(limits.max_header_bytes);
            let conn = b.serve_connection(io, service).with_upgrades();
            drive(conn, watch_in_flight, &limits, &cancel, drain, &metrics).await
        }
        io::Protocol::Http2 => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .keep_alive_interval(limits.h2_keepalive_interval)
                .keep_alive_timeout(limits.h2_keepalive_timeout)
                .max_concurrent_streams(limits.h2_max_streams)
                // Small windows and header lists: what a peer can make Tether hold per
                // connection and stream stays small (hyper's defaults are 1 MiB windows and
                // a 16 MiB header list).
                .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
                .initial_connection_window_size(H2_CONN_WINDOW)
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .max_send_buf_size(H2_MAX_SEND_BUF)
                // Lets an RFC 8441 WebSocket request reach us, to be refused with a status
                // rather than a stream reset.
                .enable_connect_protocol();
            let conn = b.serve_connection(io, service);
            drive(conn, watch_in_flight, &limits, &cancel, drain, &metrics).await
        }
    };
    if let Err(e) = ended {
        classify(&e, &metrics);
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// A hyper server connection that can be asked to finish what it is doing and close.
trait Graceful: Future<Output = Result<(), hyper::Error>> {
    fn begin_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn begin_shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Polls `conn` to its end. With nothing in flight for `limits.idle` it is asked to close
/// (HTTP/2: GOAWAY); on `cancel` too, and after `drain` it is dropped. An upgrade ends
/// hyper's part (the future resolves), so upgraded streams are never subject to these.
async fn drive<C: Graceful>(
    conn: C,
    mut in_flight: watch::Receiver<usize>,
    limits: &ConnLimits,
    cancel: &CancellationToken,
    drain: Duration,
    metrics: &ListenerMetrics,
) -> Result<(), hyper::Error> {
    tokio::pin!(conn);
    let mut idle_since = Instant::now();
    let mut close_by: Option<Instant> = None;
    let mut watching = true;
    loop {
        let busy = watching && *in_flight.borrow_and_update() > 0;
        let idle_at = (!busy && close_by.is_none()).then(|| idle_since + limits.idle);
        // Every branch is cancel-safe: sleeps, a token, a watch, and the pinned connection.
        tokio::select! {
            biased;
            ended = conn.as_mut() => return ended,
            () = cancel.cancelled(), if close_by.is_none() => {
                conn.as_mut().begin_shutdown();
                close_by = Some(Instant::now() + drain);
            }
            () = sleep_until(close_by), if close_by.is_some() => {
                tracing::debug!("connection did not close in time; dropping it");
                return Ok(());
            }
            () = sleep_until(idle_at), if idle_at.is_some() => {
                metrics.timeout(Stage::Idle);
                conn.as_mut().begin_shutdown();
                close_by = Some(Instant::now() + IDLE_CLOSE_GRACE.min(limits.header_read));
            }
            changed = in_flight.changed(), if watching => {
                // The sender lives in the service, inside `conn`: an error cannot happen
                // while we poll it, but never spin on one.
                watching = changed.is_ok();
                if *in_flight.borrow() == 0 {
                    idle_since = Instant::now();
                }
            }
        }
    }
}

/// Sleeps until `at`; forever when `None` (its select branch is disabled then anyway).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Counts what a connection's error says about its peer.
fn classify(e: &hyper::Error, metrics: &ListenerMetrics) {
    if e.is_timeout() {
        // hyper's header read timer (HTTP/1): a head that never completed, or an idle
        // keep-alive connection, which hyper bounds with the same timer.
        metrics.timeout(Stage::Header);
    } else if e.is_parse_too_large() {
        metrics.rejected(Reject::TooLarge);
    } else if e.is_parse() {
        metrics.rejected(Reject::Malformed);
    } else if chain_mentions(e, "keep-alive timed out") {
        // hyper's HTTP/2 keep-alive error type is private; its message is what we can see.
        metrics.timeout(Stage::H2Ping);
    }
}

fn chain_mentions(e: &(dyn std::error::Error + 'static), needle: &str) -> bool {
    let mut cur = Some(e);
    for _ in 0..16 {
        match cur {
            Some(err) if err.to_string().contains(needle) => return true,
            Some(err) => cur = err.source(),
            None => return false,
        }
    }
    false
}

/// `CONNECT` asks for a tunnel, and over HTTP/2 with `:protocol` (RFC 8441) for a WebSocket;
/// Tether relays WebSockets only over HTTP/1.1 upgrades.
fn refuse_tunnel<B>(req: &Request<B>) -> Option<Response<Body>> {
    if req.method() != hyper::Method::CONNECT {
        return None;
    }
    if let Some(protocol) = req.extensions().get::<hyper::ext::Protocol>() {
        return Some(json_error(
            StatusCode::NOT_IMPLEMENTED,
            &format!(
                "{} over HTTP/2 (RFC 8441 extended CONNECT) is not supported; connect over HTTP/1.1",
                protocol.as_str()
            ),
        ));
    }
    let mut resp = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "CONNECT is not supported: this is not a forward proxy",
    );
    resp.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    Some(resp)
}

/// The soft limit on open files (`ulimit -n`), where the platform says (Linux).
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Descriptors the caps may need at once: a public connection can hold one to the app as
/// well, an app socket holds its session's cloud socket, plus room for listeners, probes,
/// registration and logs.
pub fn descriptors_needed(http: &HttpConfig) -> u64 {
    const SPARE: u64 = 64;
    2 * http.max_connections_public as u64
        + 2 * http.max_connections_local as u64
        + http.max_connections_admin as u64
        + SPARE
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1); a proxy drops them.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named by `Connection`. With `keep_upgrade`
/// the `Connection`/`Upgrade` pair survives, for relaying a protocol upgrade.
pub fn strip_hop_headers(headers: &mut hyper::HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_HEADERS.iter().copied().map(String::from).chain(named) {
        if keep_upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        headers.remove(name.as_str());
    }
}

/// Whether a request asks to switch protocols (WebSocket or other). `Upgrade: h2c` alone
/// (curl's `--http2` on `http://`) is not: RFC 9113 dropped that upgrade, the request is
/// answered over HTTP/1.1, and the hop-by-hop headers naming it are stripped.
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    let only_h2c = req
        .headers()
        .get_all(hyper::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .all(|t| t.trim().eq_ignore_ascii_case("h2c"));
    if only_h2c {
        return false;
    }
    let connection_upgrade = req
        .headers()
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    connection_upgrade && req.headers().contains_key(hyper::header::UPGRADE)
}

// === impl Listener ===

impl Listener {
    /// Every listener, for metrics that should show all three from the start.
    pub const ALL: [Listener; 3] = [Listener::Public, Listener::Local, Listener::Admin];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Listener::Public => "public",
            Listener::Local => "local",
            Listener::Admin => "admin",
        }
    }
}

// === impl Stage ===

impl Stage {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Header => "header",
            Stage::Body => "body",
            Stage::Idle => "idle",
            Stage::Send => "send",
            Stage::Upgrade => "upgrade",
            Stage::AppResponse => "app_response",
            Stage::H2Ping => "h2_ping",
        }
    }
}

// === impl Reject ===

impl Reject {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::TooLarge => "too_large",
            Reject::Connect => "connect",
            Reject::BadTarget => "bad_target",
            Reject::Busy => "busy",
        }
    }
}

// === impl ConnLimits ===

impl ConnLimits {
    /// The bounds of `which` in `http`.
    pub fn of(http: &HttpConfig, which: Listener) -> ConnLimits {
        ConnLimits {
            header_read: http.header_read_timeout,
            idle: http.idle_timeout,
            send: http.send_timeout,
            h2_keepalive_interval: http.h2_keepalive_interval,
            h2_keepalive_timeout: http.h2_keepalive_timeout,
            h2_max_streams: http.h2_max_concurrent_streams,
            max_header_bytes: http.max_header_bytes,
            max_connections: match which {
                Listener::Public => http.max_connections_public,
                Listener::Local => http.max_connections_local,
                Listener::Admin => http.max_connections_admin,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_headers_go_and_end_to_end_headers_stay() {
        let mut h = hyper::HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("authorization", "Bearer t"),
            ("cookie", "a=b"),
            ("x-app-api-key", "h"),
        ] {
            h.insert(k, v.parse().expect("value"));
        }
        strip_hop_headers(&mut h, false);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "cookie", "x-app-api-key"]);
    }
}
