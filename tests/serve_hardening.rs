//! The public, local and admin listeners under peers that stall or flood them, through the
//! real binary: half-sent requests are cut after the header timeout, connections over a
//! listener's cap are refused and counted without touching the other listeners, stalled
//! bodies and an app that never answers get a status, HTTP/2 prior knowledge reaches the
//! HTTP/1.1 app, and upgraded WebSockets outlive every idle bound. Each test also shows the
//! legitimate path working during or after the attack. Timeouts are milliseconds set by
//! config; every wait is bounded, and nothing asserts how fast anything happened.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type H2Body = BoxBody<Bytes, BoxError>;

/// A request head cut off before its final blank line.
const HALF_HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: slow";
/// A WebSocket upgrade cut off the same way.
const HALF_UPGRADE: &[u8] =
    b"GET /app-ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n";
/// The start of HTTP/2's preface, and no more.
const HALF_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// Opens `n` connections to `addr`, each sending `first` (possibly nothing) and then stalling.
async fn stall(addr: SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = within("an attack connection", TcpStream::connect(addr))
            .await
            .expect("connect");
        if !first.is_empty() {
            // A refused connection may already be closed; that is for the caller to judge.
            let _ = s.write_all(first).await;
        }
        out.push(s);
    }
    out
}

/// Whether the peer closed `s` (EOF or reset) within [`WAIT`]; anything it wrote first is
/// read and dropped.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Asserts every connection in `conns` is closed by Tether within a bounded wait.
async fn assert_all_closed(what: &str, conns: &mut [TcpStream]) {
    for (i, s) in conns.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s).await,
            "{what}: connection {i} was never closed"
        );
    }
}

async fn open(tether: &Tether, listener: &str) -> f64 {
    tether
        .metric(&format!(
            r#"tether_connections_open{{listener="{listener}"}}"#
        ))
        .await
}

async fn refused(tether: &Tether, listener: &str) -> f64 {
    tether
        .metric(&format!(
            r#"tether_connections_refused_total{{listener="{listener}"}}"#
        ))
        .await
}

async fn timeouts(tether: &Tether, listener: &str, stage: &str) -> f64 {
    tether
        .metric(&format!(
            r#"tether_http_timeouts_total{{listener="{listener}",stage="{stage}"}}"#
        ))
        .await
}

/// Sends `head` (which should ask for `Connection: close`) and reads until Tether closes.
async fn raw_exchange(addr: SocketAddr, head: &[u8]) -> String {
    let mut s = within("connect", TcpStream::connect(addr))
        .await
        .expect("connect");
    s.write_all(head).await.expect("write");
    let mut answer = Vec::new();
    let _ = within("an answer and a close", s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Waits until the only admin connection is the scrape asking. Tether closes that one itself
/// (`Connection: close`), releasing its slot before the close is seen here, so afterwards
/// the admin listener holds no connection at all.
async fn admin_alone(tether: &Tether) {
    let addr = tether.admin;
    eventually(
        "the admin listener to hold only our scrape",
        || async move {
            let text = raw_exchange(
                addr,
                b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            metric_value(&text, r#"tether_connections_open{listener="admin"}"#) == 1.0
        },
    )
    .await;
}

/// A frame goes each way over a connected session.
async fn session_relays(c: &mut Connected, tag: &str) {
    let down = format!(r#"{{"type":"data_stream","streamType":"x","data":"{tag}-down"}}"#);
    c.cloud_ws
        .send(Message::text(down.clone()))
        .await
        .expect("cloud send");
    assert_eq!(next_text(&mut c.app_ws).await, down);
    let up = format!(r#"{{"type":"display_event","tag":"{tag}-up"}}"#);
    c.app_ws
        .send(Message::text(up.clone()))
        .await
        .expect("app send");
    assert_eq!(next_text(&mut c.cloud_ws).await, up);
}

/// An HTTP/2 prior-knowledge client (h2c), as an ingress speaking h2 upstream would be.
fn h2_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, H2Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn full_body(b: impl Into<Bytes>) -> H2Body {
    Full::new(b.into())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// Sends `req` over `client` and reads the whole answer.
async fn h2_send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, H2Body>,
    req: hyper::Request<H2Body>,
) -> (hyper::http::response::Parts, Bytes) {
    let resp = within("an HTTP/2 response", client.request(req))
        .await
        .expect("h2 response");
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let (parts, body) = resp.into_parts();
    let body = within("an HTTP/2 body", body.collect())
        .await
        .expect("h2 body")
        .to_bytes();
    (parts, body)
}

/// An app that answers `/ok`, never answers `/hang`, and streams `/big` without end.
async fn odd_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body: H2Body = match req.uri().path() {
                            "/hang" => std::future::pending().await,
                            "/big" => {
                                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                                let endless = futures_util::stream::repeat_with(move || {
                                    Ok::<_, BoxError>(Frame::data(chunk.clone()))
                                });
                                StreamBody::new(endless).boxed()
                            }
                            _ => full_body(&b"ok"[..]),
                        };
                        Ok::<_, Infallible>(hyper::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout_on_every_listener() {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let tether = Tether::spawn_yaml(
        "http:\n  header_read_timeout_ms: 300\n",
        &[("TETHER_APP_URL", app.url())],
    )
    .await;
    for (name, addr) in [
        ("public", tether.public),
        ("local", tether.local),
        ("admin", tether.admin),
    ] {
        let mut conns = stall(addr, 20, HALF_HEAD).await;
        conns.extend(stall(addr, 10, b"").await);
        conns.extend(stall(addr, 10, HALF_PREFACE).await);
        if name == "local" {
            conns.extend(stall(addr, 10, HALF_UPGRADE).await);
        }
        assert_all_closed(name, &mut conns).await;
        let n = conns.len() as f64;
        eventually(&format!("{name}: header timeouts counted"), || async {
            timeouts(&tether, name, "header").await >= n
        })
        .await;
        eventually(&format!("{name}: the slots freed"), || async {
            // The metrics scrape itself holds one admin slot.
            open(&tether, name).await <= f64::from(name == "admin")
        })
        .await;
    }
    // Every listener still serves: a proxied request, the admin, and a whole session.
    assert_eq!(
        http::get(&format!("http://{}/tool", tether.public))
            .await
            .status,
        200
    );
    assert_eq!(
        http::get(&format!("http://{}/livez", tether.admin))
            .await
            .status,
        200
    );
    let mut c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "sl@example.com-com.example.notes",
    )
    .await;
    session_relays(&mut c, "after").await;
}

#[tokio::test]
async fn connections_over_a_listeners_cap_are_refused_and_counted_while_the_rest_carries_on() {
    const CAP: usize = 12;
    const EXTRA: usize = 6;
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    // A long header timeout, so the attack holds its slots for the whole test.
    let yaml = format!(
        "http:\n  header_read_timeout_ms: 60000\n  max_connections_public: {CAP}\n  max_connections_local: {CAP}\n  max_connections_admin: {CAP}\n"
    );
    let tether = Tether::spawn_yaml(&yaml, &[("TETHER_APP_URL", app.url())]).await;
    let mut c = connect_session(
        &tether,
        &cloud,
        &mut app,
        "cap@example.com-com.example.notes",
    )
    .await;

    // Public full: the admin answers and the session relays.
    eventually("the webhook's connection closed", || async {
        open(&tether, "public").await == 0.0
    })
    .await;
    let attack = stall(tether.public, CAP, HALF_HEAD).await;
    eventually("the public cap filled", || async {
        open(&tether, "public").await == CAP as f64
    })
    .await;
    let mut extra = stall(tether.public, EXTRA, HALF_HEAD).await;
    assert_all_closed("public over the cap", &mut extra).await;
    assert!(refused(&tether, "public").await >= EXTRA as f64);
    assert_eq!(
        http::get(&format!("http://{}/livez", tether.admin))
            .await
            .status,
        200
    );
    session_relays(&mut c, "public-full").await;
    drop(attack);
    eventually("the public slots freed", || async {
        open(&tether, "public").await == 0.0
    })
    .await;
    assert_eq!(
        http::get(&format!("http://{}/tool", tether.public))
            .await
            .status,
        200
    );

    // Local full (the session's app socket holds one slot): the public port and the
    // session carry on; the app's socket is never refused for what strangers do elsewhere.
    let attack = stall(tether.local, CAP - 1, HALF_UPGRADE).await;
    eventually("the local cap filled", || async {
        open(&tether, "local").await == CAP as f64
    })
    .await;
    let mut extra = stall(tether.local, EXTRA, HALF_UPGRADE).await;
    assert_all_closed("local over the cap", &mut extra).await;
    assert!(refused(&tether, "local").await >= EXTRA as f64);
    assert_eq!(
        http::get(&format!("http://{}/tool", tether.public))
            .await
            .status,
        200
    );
    session_relays(&mut c, "local-full").await;
    drop(attack);
    eventually("the local slots freed", || async {
        open(&tether, "local").await == 1.0
    })
    .await;

    // Admin full: nothing to scrape meanwhile, but the public port and the session work.
    admin_alone(&tether).await;
    let attack = stall(tether.admin, CAP, HALF_HEAD).await;
    let mut extra = stall(tether.admin, EXTRA, HALF_HEAD).await;
    assert_all_closed("admin over the cap", &mut extra).await;
    assert_eq!(
        http::get(&format!("http://{}/tool", tether.public))
            .await
            .status,
        200
    );
    session_relays(&mut c, "admin-full").await;
    drop(attack);
    eventually("the admin answers again", || async {
        try_get_status(&format!("http://{}/livez", tether.admin)).await == Ok(200)
    })
    .await;
    assert!(refused(&tether, "admin").await >= EXTRA as f64);

    // After it all, a second session starts from scratch.
    let mut c2 = connect_session(
        &tether,
        &cloud,
        &mut app,
        "cap2@example.com-com.example.notes",
    )
    .await;
    session_relays(&mut c2, "second").await;
    session_relays(&mut c, "first").await;
}

#[tokio::test]
async fn a_stalled_request_body_is_cut_with_408_and_a_stalled_webhook_is_refused() {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn_yaml(
        "http:\n  body_read_timeout_ms: 300\n",
        &[("TETHER_APP_URL", app.url())],
    )
    .await;
    for path in ["/echo", "/webhook"] {
        let mut s = within("connect", TcpStream::connect(tether.public))
            .await
            .expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"type\":"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let mut answer = Vec::new();
        within("the answer to a stalled body", s.read_to_end(&mut answer))
            .await
            .expect("read");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{path}: {text}");
        assert!(text.contains("ms"), "{path}: the answer says why: {text}");
    }
    assert!(timeouts(&tether, "public", "body").await >= 1.0);
    assert!(
        tether
            .metric(r#"tether_webhooks_total{type="unreadable",outcome="rejected"}"#)
            .await
            >= 1.0
    );
    // A stalled HTTP/2 stream is cut the same way, and its connection keeps serving.
    let client = h2_client();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
        .await
        .expect("send");
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let req = hyper::Request::post(format!("http://{}/echo", tether.public))
        .body(StreamBody::new(stream).boxed())
        .expect("request");
    let (parts, _) = h2_send(&client, req).await;
    assert_eq!(parts.status, 408);
    drop(tx);
    // The legitimate path, over both protocols.
    let r = http::request(
        "POST",
        &format!("http://{}/echo", tether.public),
        &[],
        Bytes::from(vec![7u8; 100_000]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 100_000);
    let req = hyper::Request::post(format!("http://{}/echo", tether.public))
        .body(full_body(vec![7u8; 1000]))
        .expect("request");
    let (parts, body) = h2_send(&client, req).await;
    assert_eq!(parts.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["body_len"], 1000);
}

#[tokio::test]
async fn an_app_that_never_answers_gets_a_504_within_the_request_timeout() {
    let app = odd_app().await;
    let tether = Tether::spawn_yaml(
        "app:\n  request_timeout_ms: 400\n",
        &[("TETHER_APP_URL", format!("http://{app}"))],
    )
    .await;
    let r = http::get(&format!("http://{}/hang", tether.public)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("400 ms"), "{}", r.text());
    assert_eq!(timeouts(&tether, "public", "app_response").await, 1.0);
    assert_eq!(
        tether
            .metric(r#"tether_proxy_requests_total{route="proxy",code="5xx"}"#)
            .await,
        1.0
    );
    // The same app's other routes still pass, one after the other and during a hang.
    let hung = tokio::spawn({
        let url = format!("http://{}/hang", tether.public);
        async move { http::get(&url).await.status }
    });
    let ok = http::get(&format!("http://{}/ok", tether.public)).await;
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok"));
    assert_eq!(within("the second hang", hung).await.expect("join"), 504);
}

#[tokio::test]
async fn h2c_webhooks_and_proxied_requests_reach_an_http1_app_and_the_answers_come_back() {
    let app = AppProc::start(&[]).await;
    let cloud = FakeCloud::bind().await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let client = h2_client();
    let base = format!("http://{}", tether.public);

    // GET: the app sees HTTP/1.1 with the authority as Host, the cookie crumbs joined.
    let req = hyper::Request::get(format!("{base}/echo/a?x=1"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("x-custom", "kept")
        .body(full_body(Bytes::new()))
        .expect("request");
    let (parts, body) = h2_send(&client, req).await;
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    for hop in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        assert!(
            !parts.headers.contains_key(hop),
            "{hop} in an HTTP/2 answer"
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/echo/a");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"]["host"], tether.public.to_string());
    assert_eq!(v["headers"]["cookie"], "a=1; b=2");
    assert_eq!(v["headers"]["x-custom"], "kept");

    // POST with a streamed body of unknown length: every byte arrives.
    let chunks = futures_util::stream::iter(
        (0..64).map(|i| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![i as u8; 16 * 1024])))),
    );
    let req = hyper::Request::post(format!("{base}/echo"))
        .body(StreamBody::new(chunks).boxed())
        .expect("request");
    let (parts, body) = h2_send(&client, req).await;
    assert_eq!(parts.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["body_len"], 64 * 16 * 1024);
    assert_eq!(v["method"], "POST");

    // A webhook over HTTP/2 starts a real session: the app dials the local listener, the
    // init reaches the cloud, and the app's answer comes back over HTTP/2.
    let id = "hh@example.com-com.example.tether.test";
    let req = hyper::Request::post(format!("{base}/webhook"))
        .header("content-type", "application/json")
        .body(full_body(
            serde_json::to_vec(&session_request(id, &cloud)).expect("json"),
        ))
        .expect("request");
    let webhook = h2_send(&client, req);
    let cloud_side = async {
        let (_path, mut ws) = cloud.accept().await;
        let init: serde_json::Value =
            serde_json::from_str(&next_text(&mut ws).await).expect("init json");
        assert_eq!(init["sessionId"], id);
        let ack = serde_json::json!({"type":"tpa_connection_ack","sessionId":id,"settings":[],"mentraosSettings":{},"capabilities":null});
        ws.send(Message::text(ack.to_string())).await.expect("ack");
        ws
    };
    let ((parts, body), _cloud_ws) = tokio::join!(webhook, cloud_side);
    assert_eq!(parts.status, 200, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["status"], "success");
    assert_eq!(
        tether
            .metric(r#"tether_webhooks_total{type="session_request",outcome="forwarded"}"#)
            .await,
        1.0
    );

    // WebSocket over HTTP/2 (RFC 8441) is refused with a status that says so.
    let mut req = hyper::Request::connect(format!("{base}/ws-echo"))
        .body(full_body(Bytes::new()))
        .expect("request");
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let (parts, body) = h2_send(&client, req).await;
    assert_eq!(parts.status, 501);
    assert!(String::from_utf8_lossy(&body).contains("HTTP/1.1"));
    assert_eq!(
        tether
            .metric(r#"tether_http_rejected_total{listener="public",reason="connect"}"#)
            .await,
        1.0
    );
    // The same connection keeps serving afterwards.
    let req = hyper::Request::get(format!("{base}/tool"))
        .body(full_body(Bytes::new()))
        .expect("request");
    assert_eq!(h2_send(&client, req).await.0.status, 200);
}

#[tokio::test]
async fn upgraded_websockets_outlive_every_idle_bound() {
    const YAML: &str = "http:\n  header_read_timeout_ms: 200\n  idle_timeout_ms: 300\n  body_read_timeout_ms: 200\n  upgrade_timeout_ms: 300\n  h2_keepalive_interval_ms: 200\n  h2_keepalive_timeout_ms: 200\n";
    // A WebSocket proxied on a public route to the app.
    let app = AppProc::start(&[]).await;
    let proxying = Tether::spawn_yaml(YAML, &[("TETHER_APP_URL", app.url())]).await;
    let url = format!("ws://{}/ws-echo", proxying.public);
    let (mut ws, _) = within("upgrade", tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect");
    ws.send(Message::text("before")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "before");
    // An app socket on the local listener, in a real session.
    let cloud = FakeCloud::bind().await;
    let mut fake_app = FakeApp::start().await;
    let sessions = Tether::spawn_yaml(YAML, &[("TETHER_APP_URL", fake_app.url())]).await;
    let mut c = connect_session(
        &sessions,
        &cloud,
        &mut fake_app,
        "ws@example.com-com.example.notes",
    )
    .await;

    // The bounds do act: an idle HTTP/1 keep-alive connection and an idle HTTP/2
    // connection are both closed.
    let mut keep_alive = within("connect", TcpStream::connect(proxying.public))
        .await
        .expect("connect");
    keep_alive
        .write_all(b"GET /tool HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_by_peer(&mut keep_alive).await,
        "idle keep-alive kept"
    );
    let tcp = within("connect", TcpStream::connect(proxying.public))
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let h2_conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{}/tool", proxying.public))
        .body(full_body(Bytes::new()))
        .expect("request");
    let resp = within("h2 answer", sender.send_request(req))
        .await
        .expect("h2 response");
    assert_eq!(resp.status(), 200);
    drop(resp);
    let _ = within("the idle HTTP/2 connection to close", h2_conn).await;
    eventually("idle closes counted", || async {
        timeouts(&proxying, "public", "idle").await >= 1.0
    })
    .await;
    // One more full idle period on top, for good measure.
    tokio::time::sleep(Duration::from_millis(600)).await;

    ws.send(Message::text("after")).await.expect("send");
    assert_eq!(next_text(&mut ws).await, "after");
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(next_msg(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    session_relays(&mut c, "idle").await;
    assert_eq!(
        open(&proxying, "public").await,
        1.0,
        "the WebSocket still counts"
    );
    assert_eq!(
        open(&sessions, "local").await,
        1.0,
        "the app socket still counts"
    );
    ws.close(None).await.expect("close");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_by_the_send_timeout() {
    let app = odd_app().await;
    let tether = Tether::spawn_yaml(
        "http:\n  send_timeout_ms: 300\n",
        &[("TETHER_APP_URL", format!("http://{app}"))],
    )
    .await;
    let mut s = within("connect", TcpStream::connect(tether.public))
        .await
        .expect("connect");
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // Never read: the socket buffers fill, Tether's write stalls, and the bound cuts it.
    eventually("the stalled write cut", || async {
        timeouts(&tether, "public", "send").await >= 1.0
    })
    .await;
    eventually("the slot freed", || async {
        open(&tether, "public").await == 0.0
    })
    .await;
    drop(s);
    let ok = http::get(&format!("http://{}/ok", tether.public)).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_a_count() {
    let app = AppProc::start(&[]).await;
    let tether = Tether::spawn(&[("TETHER_APP_URL", app.url())]).await;
    let addr = tether.public;
    let garbage = raw_exchange(addr, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(garbage.starts_with("HTTP/1.1 400"), "{garbage}");
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "y".repeat(64)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let too_many = raw_exchange(addr, &huge).await;
    assert!(too_many.starts_with("HTTP/1.1 431"), "{too_many}");
    let connect = raw_exchange(
        addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    let star = raw_exchange(
        addr,
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(star.starts_with("HTTP/1.1 400"), "{star}");
    // curl --http2 on http:// asks for h2c by Upgrade; that is answered over HTTP/1.1.
    let h2c = raw_exchange(
        addr,
        b"GET /tool HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(h2c.starts_with("HTTP/1.1 200"), "{h2c}");
    for (reason, at_least) in [
        ("malformed", 1.0),
        ("too_large", 1.0),
        ("connect", 1.0),
        ("bad_target", 1.0),
    ] {
        let got = tether
            .metric(&format!(
                r#"tether_http_rejected_total{{listener="public",reason="{reason}"}}"#
            ))
            .await;
        assert!(got >= at_least, "{reason}: {got}");
    }
    assert_eq!(
        http::get(&format!("http://{}/tool", tether.public))
            .await
            .status,
        200
    );
}
