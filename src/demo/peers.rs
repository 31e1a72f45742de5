//! The demo's handles on what it runs and observes over HTTP: the app simulator as a child
//! process (so it can be SIGKILLed like a crashing pod), and small bounded JSON reads of the
//! app's `/sim/stats` and Tether's admin `/sessions`.
//!
//! Every wait here has a time bound; the child is killed by its PID on every exit path
//! (explicitly, and by `kill_on_drop` as a backstop).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::sim::app::AppSimStats;

/// The app simulator prints this, then its address, once it accepts connections.
const READY_PREFIX: &str = "app-sim listening on ";
/// How long a fresh app process may take to print its ready line.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How long a killed process may take to be reaped.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// Bound on one HTTP read of a peer's stats.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest stats body read; the demo's runs produce a few kilobytes.
const MAX_BODY: usize = 8 * 1024 * 1024;
/// Lines of the app's own log forwarded to stderr per process, so a chatty child cannot
/// flood the terminal.
const MAX_FORWARDED_LINES: usize = 200;

/// One run of `tether sim app` as a child process.
pub(super) struct AppProcess {
    child: Child,
    pub pid: u32,
}

/// A loopback HTTP client for the peers' JSON endpoints.
#[derive(Clone)]
pub(super) struct Http {
    client: Client<HttpConnector, Empty<Bytes>>,
}

/// One row of Tether's admin `/sessions` (the fields the demo shows).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Row {
    pub session_id: String,
    pub state: String,
    pub buffered_frames: u64,
    pub oldest_buffered_ms: u64,
    pub recoveries: u64,
}

#[derive(Deserialize)]
struct Sessions {
    sessions: Vec<Row>,
}

// === impl AppProcess ===

impl AppProcess {
    /// Starts `<this exe> sim app` on `listen` and waits for its ready line. The app's own
    /// log (warnings only, or info with `verbose`) goes to stderr, prefixed with its PID.
    ///
    /// # Errors
    /// The process cannot start, exits early (e.g. the port is taken) or is not ready in time.
    pub(super) async fn spawn(
        listen: SocketAddr,
        package: &str,
        api_key: &str,
        verbose: bool,
    ) -> anyhow::Result<AppProcess> {
        let exe = std::env::current_exe().context("cannot find the tether executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(["sim", "app", "--listen", &listen.to_string()])
            .args(["--package-name", package, "--api-key", api_key])
            .env("RUST_LOG", if verbose { "info" } else { "warn" })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("cannot start the app process")?;
        let pid = child.id().unwrap_or(0);
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("the app process has no stdout"))?;
        let mut app = AppProcess { child, pid };
        let mut lines = BufReader::new(stdout).lines();
        match tokio::time::timeout(READY_WAIT, ready(&mut lines, pid)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let status = app.kill().await;
                bail!("the app process (pid {pid}) did not start: {e} ({status})");
            }
            Err(_) => {
                let _ = app.kill().await;
                bail!("the app process (pid {pid}) was not listening after {READY_WAIT:?}");
            }
        }
        // The pipe must keep draining, or a child that logs would block on a full pipe.
        tokio::spawn(forward(lines, pid));
        Ok(app)
    }

    /// SIGKILLs the process (by PID) and reaps it; describes how it ended.
    pub(super) async fn kill(&mut self) -> String {
        if let Err(e) = self.child.start_kill() {
            // Already exited: reaping below still reports its status.
            tracing::debug!(error = %e, "app process kill");
        }
        match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => format!("exit status: {status}"),
            Ok(Err(e)) => format!("cannot reap it: {e}"),
            Err(_) => format!("still not reaped after {EXIT_WAIT:?}"),
        }
    }
}

/// Reads the child's stdout up to its ready line.
async fn ready(lines: &mut Lines<BufReader<ChildStdout>>, pid: u32) -> anyhow::Result<()> {
    // Bounded by the caller's timeout; each line is one log line or the ready line.
    while let Some(line) = lines.next_line().await? {
        if line.starts_with(READY_PREFIX) {
            return Ok(());
        }
        eprintln!("[app pid {pid}] {line}");
    }
    bail!("it exited before listening")
}

/// Forwards the child's remaining output to stderr until it closes (the process ends).
async fn forward(mut lines: Lines<BufReader<ChildStdout>>, pid: u32) {
    let mut forwarded = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if forwarded < MAX_FORWARDED_LINES {
            eprintln!("[app pid {pid}] {line}");
            forwarded += 1;
        }
    }
}

// === impl Http ===

impl Http {
    pub(super) fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        }
    }

    /// `GET url` as JSON, bounded by [`HTTP_TIMEOUT`] and [`MAX_BODY`].
    ///
    /// # Errors
    /// Unreachable peer, non-2xx status, timeout, oversized or malformed body.
    pub(super) async fn get_json<T: DeserializeOwned>(&self, url: &str) -> anyhow::Result<T> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let read = async {
            let resp = self.client.get(uri).await?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| anyhow!("reading the body: {e}"))?
                .to_bytes();
            if !status.is_success() {
                bail!("HTTP {status}");
            }
            Ok::<T, anyhow::Error>(serde_json::from_slice(&body)?)
        };
        tokio::time::timeout(HTTP_TIMEOUT, read)
            .await
            .map_err(|_| anyhow!("no answer within {HTTP_TIMEOUT:?}"))?
            .with_context(|| format!("GET {url}"))
    }

    /// The app simulator's record, from its `/sim/stats`.
    pub(super) async fn app_stats(&self, app: SocketAddr) -> anyhow::Result<AppSimStats> {
        self.get_json(&format!("http://{app}/sim/stats")).await
    }

    /// Tether's row for `session_id` from its admin `/sessions`; `None` when it holds no
    /// such session.
    pub(super) async fn tether_row(
        &self,
        admin: SocketAddr,
        session_id: &str,
    ) -> anyhow::Result<Option<Row>> {
        let all: Sessions = self.get_json(&format!("http://{admin}/sessions")).await?;
        Ok(all
            .sessions
            .into_iter()
            .find(|r| r.session_id == session_id))
    }
}

/// A free loopback port: bound, read, released. Reused for every app process, like a pod's
/// stable address; the tiny window in which another program could take it is acceptable
/// for a demo, and a taken port fails the app's start loudly.
pub(super) fn free_port() -> anyhow::Result<SocketAddr> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?)
}

/// Every transcription `seq` `stats` recorded for `session_id`, across its incarnations in
/// creation order (a re-sent webhook would start a second one).
pub(super) fn transcriptions(stats: &AppSimStats, session_id: &str) -> Vec<u64> {
    stats
        .sessions
        .iter()
        .filter(|s| s.session_id == session_id)
        .flat_map(|s| s.transcriptions.iter().copied())
        .collect()
}
