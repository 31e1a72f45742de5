//! Shared test support: start the real `tether` binary on loopback port 0, a scriptable fake
//! cloud (raw WebSocket accept), a fake app webhook receiver, and a minimal HTTP client.
#![allow(dead_code)]

pub mod http;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A 64-hex API key used by tests; never expected in any output.
pub const API_KEY: &str = "5f1d3c0e9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";

/// Bounds a future by [`WAIT`], failing the test with `what` on expiry.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// A running `tether run` process.
pub struct Tether {
    child: Child,
    pub public: SocketAddr,
    pub local: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Tether {
    /// Starts the binary with every listener on 127.0.0.1:0 plus `env`, and waits until it
    /// reports its bound addresses.
    pub async fn spawn(env: &[(&str, String)]) -> Tether {
        Self::spawn_with(env, &[]).await
    }

    /// Like [`Tether::spawn`], with extra command-line arguments after `run`.
    pub async fn spawn_with(env: &[(&str, String)], args: &[&str]) -> Tether {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.arg("run").args(args);
        cmd.env_clear()
            .env("TETHER_PUBLIC_LISTEN", "127.0.0.1:0")
            .env("TETHER_LOCAL_LISTEN", "127.0.0.1:0")
            .env("TETHER_ADMIN_LISTEN", "127.0.0.1:0")
            .env("TETHER_LOG_FORMAT", "json")
            // The fake clouds listen on loopback ports chosen at run time; tests of the
            // allowlist itself override this.
            .env("TETHER_CLOUD_ALLOWED_ORIGINS", "ws://127.0.0.1:*")
            .env("RUST_LOG", "tether=debug,info")
            // Tests find their sessions in /sessions by id; a test of the masking overrides it.
            .env("TETHER_ADMIN_SHOW_USER_IDS", "true");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start tether");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = oneshot::channel::<serde_json::Value>();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "tether listening" {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(v);
                        }
                    }
                }
                sink.lock().expect("logs").push(line);
            }
        });
        let sink = logs.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("logs").push(line);
            }
        });
        let listening = match tokio::time::timeout(WAIT, rx).await {
            Ok(Ok(v)) => v,
            _ => panic!(
                "tether did not start; output:\n{}",
                logs.lock().expect("logs").join("\n")
            ),
        };
        let addr = |k: &str| -> SocketAddr {
            listening[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {k} in {listening}"))
        };
        Tether {
            public: addr("public"),
            local: addr("local"),
            admin: addr("admin"),
            child,
            logs,
        }
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("logs").clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The Prometheus exposition.
    pub async fn metrics(&self) -> String {
        let r = http::get(&format!("http://{}/metrics", self.admin)).await;
        r.text()
    }

    /// The value of one metric sample line (`name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        within("tether to exit", self.child.wait())
            .await
            .expect("wait")
    }
}

/// Reads one sample from Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A cloud socket as the fake cloud sees it.
pub type CloudWs = WebSocketStream<TcpStream>;
/// An app socket as the fake app sees it.
pub type AppWs = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A fake cloud: accepts WebSocket connections and hands them to the test with their path.
pub struct FakeCloud {
    listener: TcpListener,
    pub addr: SocketAddr,
}

impl FakeCloud {
    /// Binds on 127.0.0.1:0.
    pub async fn bind() -> FakeCloud {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake cloud");
        let addr = listener.local_addr().expect("addr");
        FakeCloud { listener, addr }
    }

    /// Whether anything connects within `d` (the connection is dropped).
    pub async fn connected_within(&self, d: Duration) -> bool {
        tokio::time::timeout(d, self.listener.accept())
            .await
            .is_ok()
    }

    /// The cloud's app WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/app-ws", self.addr)
    }

    /// Accepts the next WebSocket; returns the request path and the socket.
    #[allow(clippy::result_large_err)] // the handshake callback's error type is tungstenite's
    pub async fn accept(&self) -> (String, CloudWs) {
        let (tcp, _) = within("a cloud connection", self.listener.accept())
            .await
            .expect("accept");
        let (tx, rx) = std::sync::mpsc::channel();
        let ws = tokio_tungstenite::accept_hdr_async(tcp, move |req: &Request, resp: Response| {
            let _ = tx.send(req.uri().to_string());
            Ok(resp)
        })
        .await
        .expect("ws handshake");
        (rx.recv().unwrap_or_default(), ws)
    }
}

/// A fake app server: records webhook bodies and answers 200 `{"status":"success"}`.
pub struct FakeApp {
    pub addr: SocketAddr,
    webhooks: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl FakeApp {
    /// Starts on 127.0.0.1:0.
    pub async fn start() -> FakeApp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake app");
        let addr = listener.local_addr().expect("addr");
        let (tx, webhooks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let tx = tx.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let is_webhook = req.uri().path() == "/webhook";
                                let body = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                if is_webhook {
                                    let _ = tx.send(
                                        serde_json::from_slice(&body)
                                            .unwrap_or(serde_json::Value::Null),
                                    );
                                }
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from_static(
                                        br#"{"status":"success"}"#,
                                    )),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FakeApp { addr, webhooks }
    }

    /// The app's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next webhook body the app receives within `d`, if any.
    pub async fn webhook_within(&mut self, d: Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(d, self.webhooks.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next webhook body the app received.
    pub async fn webhook(&mut self) -> serde_json::Value {
        within("a webhook at the app", self.webhooks.recv())
            .await
            .expect("webhook")
    }
}

/// A `session_request` body in the latest cloud's shape, with every URL field.
pub fn session_request(session_id: &str, cloud: &FakeCloud) -> serde_json::Value {
    serde_json::json!({
        "type": "session_request",
        "sessionId": session_id,
        "userId": session_id.split('-').next().unwrap_or_default(),
        "timestamp": "2026-01-10T09:15:00.000Z",
        "websocketUrl": format!("ws://{}/ws/miniapp", cloud.addr),
        "mentraOSWebsocketUrl": cloud.ws_url(),
        "augmentOSWebsocketUrl": cloud.ws_url(),
    })
}

/// The init an SDK 2.1.29 app sends.
pub fn init_frame(session_id: &str) -> String {
    serde_json::json!({
        "type": "tpa_connection_init", "sessionId": session_id, "packageName": "com.example.notes",
        "apiKey": API_KEY, "timestamp": "2026-01-10T09:15:00.100Z"
    })
    .to_string()
}

/// A fully connected session: webhook relayed, app socket up, init seen by the cloud, ack seen by the app.
pub struct Connected {
    pub app_ws: AppWs,
    pub cloud_ws: CloudWs,
    pub cloud_path: String,
    pub webhook: serde_json::Value,
}

/// Drives one session through webhook, init and ack.
pub async fn connect_session(
    tether: &Tether,
    cloud: &FakeCloud,
    app: &mut FakeApp,
    session_id: &str,
) -> Connected {
    let resp = http::post_json(
        &format!("http://{}/webhook", tether.public),
        &session_request(session_id, cloud),
    )
    .await;
    assert_eq!(resp.status, 200, "webhook answer: {}", resp.text());
    let webhook = app.webhook().await;
    let url = webhook["mentraOSWebsocketUrl"]
        .as_str()
        .expect("url")
        .to_string();
    let (mut app_ws, _) = within(
        "app connect",
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .expect("app ws connect");
    app_ws
        .send(Message::text(init_frame(session_id)))
        .await
        .expect("send init");
    let (cloud_path, mut cloud_ws) = cloud.accept().await;
    let first = next_text(&mut cloud_ws).await;
    assert_eq!(
        first,
        init_frame(session_id),
        "the cloud sees the init byte for byte"
    );
    let ack = serde_json::json!({"type":"tpa_connection_ack","sessionId":session_id,"settings":[],"mentraosSettings":{},"capabilities":null}).to_string();
    cloud_ws
        .send(Message::text(ack.clone()))
        .await
        .expect("send ack");
    assert_eq!(next_text(&mut app_ws).await, ack);
    Connected {
        app_ws,
        cloud_ws,
        cloud_path,
        webhook,
    }
}

/// The next data frame of a socket, skipping control frames; panics on close or timeout.
pub async fn next_msg<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within("a frame", ws.next()).await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// The next text frame's content.
pub async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match next_msg(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Reads until the socket closes; returns the close code and reason (`None` = no status).
pub async fn close_of<S>(ws: &mut WebSocketStream<S>) -> Option<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        match within("a close", ws.next()).await {
            Some(Ok(Message::Close(cf))) => {
                return cf.map(|c| (u16::from(c.code), c.reason.to_string()))
            }
            Some(Ok(_)) => continue,
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    }
}

/// Polls `check` every 20 ms until it holds, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Writes `yaml` to a fresh temporary file and returns its path.
pub fn config_file(yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tether-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("tether.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

impl Tether {
    /// Starts the binary with a config file holding `yaml`, plus `env`.
    pub async fn spawn_yaml(yaml: &str, env: &[(&str, String)]) -> Tether {
        let path = config_file(yaml);
        let path = path.to_str().expect("utf-8 path").to_string();
        Self::spawn_with(env, &["--config", &path]).await
    }

    /// `/sessions` rows.
    pub async fn sessions(&self) -> Vec<serde_json::Value> {
        let v = http::get(&format!("http://{}/sessions", self.admin))
            .await
            .json();
        v["sessions"].as_array().cloned().unwrap_or_default()
    }

    /// The `/sessions` row of `id`, if live.
    pub async fn session(&self, id: &str) -> Option<serde_json::Value> {
        self.sessions()
            .await
            .into_iter()
            .find(|r| r["session_id"] == id)
    }

    /// Waits until session `id` is in `state`.
    pub async fn wait_state(&self, id: &str, state: &str) {
        eventually(&format!("{id} to be {state}"), || async {
            self.session(id).await.is_some_and(|r| r["state"] == state)
        })
        .await;
    }
}

/// The package and key the simulators and Tether agree on in tests.
pub const PACKAGE: &str = "com.example.tether.test";

/// An app simulator running as its own process (`tether sim app`), so it can be killed.
pub struct AppProc {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
}

impl AppProc {
    /// Starts `tether sim app` on a free port with `extra` arguments.
    pub async fn start(extra: &[&str]) -> AppProc {
        let mut app = AppProc {
            child: None,
            port: free_port(),
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        app.restart().await;
        app
    }

    /// The app's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and waits until it listens.
    pub async fn restart(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
        cmd.args([
            "sim",
            "app",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
            "--package-name",
            PACKAGE,
        ]);
        if !self.args.iter().any(|a| a == "--api-key") {
            cmd.args(["--api-key", API_KEY]);
        }
        cmd.args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("start sim app");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        within("the app to listen", async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("app-sim listening") {
                    return;
                }
            }
            panic!("sim app exited before listening");
        })
        .await;
        // Keep draining so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    /// SIGKILLs the process and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = within("the app to die", child.wait()).await;
        }
    }

    /// `/sim/stats` of the running process.
    pub async fn stats(&self) -> serde_json::Value {
        http::get(&format!("{}/sim/stats", self.url())).await.json()
    }

    /// The newest stats entry of session `id`.
    pub async fn session(&self, id: &str) -> Option<serde_json::Value> {
        let stats = self.stats().await;
        stats["sessions"]
            .as_array()?
            .iter()
            .filter(|s| s["session_id"] == id)
            .max_by_key(|s| s["generation"].as_u64().unwrap_or(0))
            .cloned()
    }

    /// Transcription seq numbers session `id` received, in order.
    pub async fn transcriptions(&self, id: &str) -> Vec<u64> {
        self.session(id)
            .await
            .and_then(|s| s["transcriptions"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(serde_json::Value::as_u64)
            .collect()
    }
}

/// A cloud emulator wired to `tether`'s public webhook, streaming transcriptions every
/// `interval_ms` when given.
pub async fn cloud_for(
    tether_public: SocketAddr,
    interval_ms: Option<u64>,
) -> tether::sim::cloud::CloudSim {
    let cfg = tether::sim::cloud::CloudSimConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        webhook_url: Some(format!("http://{tether_public}/webhook")),
        package_name: PACKAGE.into(),
        api_key: API_KEY.into(),
        transcription_interval_ms: interval_ms,
        ..Default::default()
    };
    tether::sim::cloud::CloudSim::start(cfg)
        .await
        .expect("start cloud emulator")
}

/// The session id the cloud gives `user`.
pub fn sid(user: &str) -> String {
    format!("{user}-{PACKAGE}")
}

impl Tether {
    /// Sends `sig` (`"TERM"`, `"INT"`, ...) to the process and returns at once.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid();
        assert!(pid != 0, "tether has already exited");
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {pid} failed");
    }

    /// Waits for the process to exit, failing after `limit`; the logs stay readable.
    pub async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("tether did not exit within {limit:?}"),
        }
    }
}

/// Runs `tether <args>` with only `env` set, to completion within [`WAIT`].
pub async fn run_tether(args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tether"));
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    within(&format!("tether {}", args.join(" ")), cmd.output())
        .await
        .expect("run tether")
}

/// The status code of GET `url`, or the connection error (refused, reset) as text.
pub async fn try_get_status(url: &str) -> Result<u16, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().expect("authority").to_string();
    let attempt = async {
        let tcp = TcpStream::connect(&authority)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let req = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header("host", &authority)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        Ok(resp.status().as_u16())
    };
    within(&format!("GET {url}"), attempt).await
}

/// Whether a TCP connection to `addr` is refused (nothing listening).
pub async fn refused(addr: SocketAddr) -> bool {
    matches!(
        within("a connect attempt", TcpStream::connect(addr)).await,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

impl Tether {
    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl FakeApp {
    /// A webhook the app received, if any is waiting.
    pub fn try_webhook(&mut self) -> Option<serde_json::Value> {
        self.webhooks.try_recv().ok()
    }
}

impl Tether {
    /// SIGKILLs the process and waits until it is gone: no shutdown path runs, so its
    /// sockets just drop (as on an OOM kill or a node loss).
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = within("tether to die", self.child.wait()).await;
    }
}
