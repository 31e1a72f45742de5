//! Loopback HTTP for the benchmarks: a small client (admin API, webhooks, the app
//! simulator's stats) and a stand-in app server that takes webhooks and answers health
//! probes. Nothing here is measured; it only drives and observes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bound on any one request, so a wedged peer fails the run instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A keep-alive HTTP/1 client for loopback peers.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

/// A stand-in app server: answers `POST /webhook` with `{"status":"success"}` and hands the
/// body over, and answers everything else (the health probe) with 200.
pub struct DummyApp {
    /// The bound address.
    pub addr: SocketAddr,
    webhooks: mpsc::UnboundedReceiver<Value>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

// === impl HttpClient ===

impl HttpClient {
    /// A client with Nagle off (the admin polls are tiny and latency matters to them).
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// `GET url`; returns the status and the whole body.
    ///
    /// # Errors
    /// Connection failure, timeout, or an unreadable body.
    pub async fn get(&self, url: &str) -> anyhow::Result<(u16, Bytes)> {
        let req = Request::get(url).body(Full::new(Bytes::new()))?;
        self.send(req, url).await
    }

    /// `GET url` and parse the body as JSON; a non-2xx status is an error.
    pub async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(url).await?;
        anyhow::ensure!((200..300).contains(&status), "GET {url}: HTTP {status}");
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: body is not JSON"))
    }

    /// `GET url` as text; a non-2xx status is an error.
    pub async fn get_text(&self, url: &str) -> anyhow::Result<String> {
        let (status, body) = self.get(url).await?;
        anyhow::ensure!((200..300).contains(&status), "GET {url}: HTTP {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST url` with a JSON body; returns the status and the body.
    pub async fn post_json(&self, url: &str, body: &Value) -> anyhow::Result<(u16, Bytes)> {
        let req = Request::post(url)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))?;
        self.send(req, url).await
    }

    async fn send(&self, req: Request<Full<Bytes>>, url: &str) -> anyhow::Result<(u16, Bytes)> {
        let exchange = async {
            let resp = self.inner.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| format!("{url}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("{url}: request failed"))
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

// === impl DummyApp ===

impl DummyApp {
    /// Binds 127.0.0.1:0 and serves until [`DummyApp::shutdown`].
    pub async fn start() -> anyhow::Result<DummyApp> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind dummy app")?;
        let addr = listener.local_addr()?;
        let (tx, webhooks) = mpsc::unbounded_channel();
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let tcp = tokio::select! {
                    biased;
                    () = c.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let _ = tcp.set_nodelay(true);
                let tx = tx.clone();
                let svc = hyper::service::service_fn(move |req| answer(req, tx.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc);
                let c = c.clone();
                t.spawn(async move {
                    tokio::select! {
                        () = c.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
        Ok(DummyApp {
            addr,
            webhooks,
            cancel,
            tracker,
        })
    }

    /// The app's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next webhook body whose `sessionId` is `session_id` (others are discarded).
    ///
    /// # Errors
    /// None arrives within the request timeout.
    pub async fn webhook_for(&mut self, session_id: &str) -> anyhow::Result<Value> {
        let wait = async {
            while let Some(body) = self.webhooks.recv().await {
                if body.get("sessionId").and_then(Value::as_str) == Some(session_id) {
                    return Some(body);
                }
            }
            None
        };
        tokio::time::timeout(REQUEST_TIMEOUT, wait)
            .await
            .ok()
            .flatten()
            .with_context(|| format!("no webhook for {session_id} reached the dummy app"))
    }

    /// Stops serving and waits for the connection tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

async fn answer(
    req: Request<Incoming>,
    tx: mpsc::UnboundedSender<Value>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_webhook = req.method() == Method::POST && req.uri().path() == "/webhook";
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let reply = if is_webhook {
        // A body that is not JSON is still answered; the bench then times out waiting for it.
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            let _ = tx.send(v);
        }
        Bytes::from_static(br#"{"status":"success"}"#)
    } else {
        Bytes::from_static(b"ok")
    };
    let mut resp = Response::new(Full::new(reply));
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}
