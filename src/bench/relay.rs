//! `tether bench relay`: the latency and throughput Tether adds to one session, against a
//! direct connection to the same echo peer measured in the same run.
//!
//! Both paths end at one [`EchoPeer`]; the Tether path is set up the way the cloud and the
//! SDK do it (webhook through Tether's public listener, the rewritten URL dialled, init,
//! ack). Round trips alternate between the paths in chunks, so drift on a shared machine
//! hits both alike. Figures are printed, never asserted.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::echo::{self, EchoPeer};
use super::http::{DummyApp, HttpClient};
use super::stats::{median, ratio, round3, Summary};
use super::{start_tether, BENCH_API_KEY, PACKAGE};
use crate::runtime::Running;

/// Longest wait for any one frame or handshake.
const WAIT: Duration = Duration::from_secs(10);

/// Frames fed between flushes when sending a burst up.
const FLUSH_EVERY: u64 = 64;

/// Upper bounds on the knobs, so a typo cannot make a run endless.
const MAX_ITERATIONS: u32 = 1_000_000;
const MAX_BURST: u64 = 1_000_000;
const MAX_MEM_SESSIONS: u32 = 2_000;

/// Whole-run bound: checked between measurement steps.
const RUN_LIMIT: Duration = Duration::from_secs(900);

/// Flags of `tether bench relay`.
#[derive(clap::Args, Debug, Clone)]
pub struct RelayArgs {
    /// Measured round trips per path.
    #[arg(long, default_value_t = 5_000)]
    pub iterations: u32,
    /// Unmeasured round trips per path before measuring.
    #[arg(long, default_value_t = 500)]
    pub warmup: u32,
    /// Chunks the round trips are split into, alternating direct and Tether.
    #[arg(long, default_value_t = 10)]
    pub chunks: u32,
    /// Frames per one-way throughput burst.
    #[arg(long, default_value_t = 20_000)]
    pub burst: u64,
    /// Bursts per path and kind, alternating paths; the median rate is reported.
    #[arg(long, default_value_t = 3)]
    pub burst_rounds: u32,
    /// Size of the binary frames in the throughput runs (an audio chunk is 640 B).
    #[arg(long, default_value_t = 640)]
    pub binary_bytes: usize,
    /// Sessions opened per path to estimate memory per session (VmRSS); 0 skips.
    #[arg(long, default_value_t = 200)]
    pub mem_sessions: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Which path a measurement went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Tether,
}

/// One throughput kind: direction and frame type.
#[derive(Clone, Copy, Debug)]
struct Kind {
    name: &'static str,
    down: bool,
    binary: bool,
}

const KINDS: [Kind; 4] = [
    Kind {
        name: "down_text",
        down: true,
        binary: false,
    },
    Kind {
        name: "down_binary",
        down: true,
        binary: true,
    },
    Kind {
        name: "up_text",
        down: false,
        binary: false,
    },
    Kind {
        name: "up_binary",
        down: false,
        binary: true,
    },
];

/// Everything one run measured; serialised as the `--json` output.
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    iterations: u32,
    warmup: u32,
    chunks: u32,
    text_frame_bytes: usize,
    binary_frame_bytes: usize,
    rtt_us: Paths<Summary>,
    added_us: Added,
    ratio: Added,
    throughput_fps: Vec<Throughput>,
    memory: Option<Memory>,
    runtime_s: f64,
}

#[derive(Debug, Serialize)]
struct Paths<T> {
    direct: T,
    tether: T,
}

/// Tether minus direct (or Tether over direct, for the ratio).
#[derive(Debug, Serialize)]
struct Added {
    p50: f64,
    p99: f64,
}

#[derive(Debug, Serialize)]
struct Throughput {
    kind: &'static str,
    frame_bytes: usize,
    burst: u64,
    rounds: u32,
    direct: f64,
    tether: f64,
    /// Tether's rate over the direct rate.
    ratio: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    sessions: u32,
    /// VmRSS growth per direct session (client + echo peer sides).
    direct_kib_per_session: f64,
    /// VmRSS growth per session through Tether (client, Tether, echo peer).
    tether_kib_per_session: f64,
    /// The difference: Tether's own share.
    tether_added_kib_per_session: f64,
}

/// The peers both paths share, plus Tether.
struct Rig {
    echo: EchoPeer,
    app: DummyApp,
    running: Running,
    http: HttpClient,
    drains: TaskTracker,
    stop_drains: CancellationToken,
}

/// Runs the relay benchmark and prints its report.
///
/// # Errors
/// A peer cannot start, a handshake or frame times out, or a bound is exceeded.
pub async fn run(args: RelayArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.iterations >= 1 && args.iterations <= MAX_ITERATIONS,
        "--iterations must be 1..={MAX_ITERATIONS}"
    );
    anyhow::ensure!(
        args.warmup <= MAX_ITERATIONS,
        "--warmup must be at most {MAX_ITERATIONS}"
    );
    anyhow::ensure!(
        args.burst >= 1 && args.burst <= MAX_BURST,
        "--burst must be 1..={MAX_BURST}"
    );
    anyhow::ensure!(
        (1..=100).contains(&args.burst_rounds),
        "--burst-rounds must be 1..=100"
    );
    anyhow::ensure!(
        (1..=1 << 20).contains(&args.binary_bytes),
        "--binary-bytes must be 1..=1048576"
    );
    anyhow::ensure!(
        args.mem_sessions <= MAX_MEM_SESSIONS,
        "--mem-sessions must be at most {MAX_MEM_SESSIONS}"
    );
    let chunks = args.chunks.clamp(1, args.iterations);
    let started = Instant::now();
    let deadline = started + RUN_LIMIT;

    let echo = EchoPeer::start().await?;
    let app = DummyApp::start().await?;
    let running = start_tether(&app.url(), "").await?;
    let mut rig = Rig {
        echo,
        app,
        running,
        http: HttpClient::new(),
        drains: TaskTracker::new(),
        stop_drains: CancellationToken::new(),
    };
    let outcome = measure(&mut rig, &args, chunks, deadline).await;
    rig.shutdown().await;
    let (rtt, throughput, memory) = outcome?;

    let added = Added {
        p50: round3(rtt.tether.p50 - rtt.direct.p50),
        p99: round3(rtt.tether.p99 - rtt.direct.p99),
    };
    let rtt_ratio = Added {
        p50: round3(ratio(rtt.tether.p50, rtt.direct.p50)),
        p99: round3(ratio(rtt.tether.p99, rtt.direct.p99)),
    };
    let report = Report {
        bench: "relay",
        iterations: args.iterations,
        warmup: args.warmup,
        chunks,
        text_frame_bytes: echo::data_frame(0).len(),
        binary_frame_bytes: args.binary_bytes,
        rtt_us: rtt,
        added_us: added,
        ratio: rtt_ratio,
        throughput_fps: throughput,
        memory,
        runtime_s: round3(started.elapsed().as_secs_f64()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report, &args));
    }
    Ok(())
}

type Measured = (Paths<Summary>, Vec<Throughput>, Option<Memory>);

async fn measure(
    rig: &mut Rig,
    args: &RelayArgs,
    chunks: u32,
    deadline: Instant,
) -> anyhow::Result<Measured> {
    let mut direct = rig
        .direct("bench@example.com-com.example.bench")
        .await
        .context("direct session")?;
    let mut tether = rig
        .via_tether("bench@example.com")
        .await
        .context("session through Tether")?;
    let mut seq = 0u64;

    round_trips(&mut direct, args.warmup, &mut seq).await?;
    round_trips(&mut tether, args.warmup, &mut seq).await?;
    let (mut d_rtt, mut t_rtt) = (Vec::new(), Vec::new());
    for c in 0..chunks {
        check_deadline(deadline)?;
        let n = args.iterations / chunks + u32::from(c < args.iterations % chunks);
        // ABBA order: whichever path runs second in a chunk gets the warmer caches.
        for path in order(c) {
            match path {
                Path::Direct => d_rtt.extend(round_trips(&mut direct, n, &mut seq).await?),
                Path::Tether => t_rtt.extend(round_trips(&mut tether, n, &mut seq).await?),
            }
        }
    }
    let rtt = Paths {
        direct: rounded(Summary::of(&d_rtt)),
        tether: rounded(Summary::of(&t_rtt)),
    };

    let mut throughput = Vec::new();
    for kind in KINDS {
        let size = if kind.binary {
            args.binary_bytes
        } else {
            echo::data_frame(0).len()
        };
        let (mut d, mut t) = (Vec::new(), Vec::new());
        for r in 0..args.burst_rounds {
            check_deadline(deadline)?;
            for path in order(r) {
                let ws = match path {
                    Path::Direct => &mut direct,
                    Path::Tether => &mut tether,
                };
                let fps = if kind.down {
                    burst_down(ws, args.burst, kind.binary, size).await
                } else {
                    burst_up(ws, args.burst, kind.binary, size).await
                }
                .with_context(|| format!("{} burst {:?}", kind.name, path))?;
                match path {
                    Path::Direct => d.push(fps),
                    Path::Tether => t.push(fps),
                }
            }
        }
        let (direct, tether) = (median(&d), median(&t));
        throughput.push(Throughput {
            kind: kind.name,
            frame_bytes: size,
            burst: args.burst,
            rounds: args.burst_rounds,
            direct: direct.round(),
            tether: tether.round(),
            ratio: round3(ratio(tether, direct)),
        });
    }
    rig.drain(direct);
    rig.drain(tether);

    let memory = if args.mem_sessions > 0 {
        check_deadline(deadline)?;
        rig.memory(args.mem_sessions).await?
    } else {
        None
    };
    Ok((rtt, throughput, memory))
}

fn order(i: u32) -> [Path; 2] {
    if i.is_multiple_of(2) {
        [Path::Direct, Path::Tether]
    } else {
        [Path::Tether, Path::Direct]
    }
}

fn check_deadline(deadline: Instant) -> anyhow::Result<()> {
    anyhow::ensure!(
        Instant::now() < deadline,
        "run exceeded {RUN_LIMIT:?}; stopping"
    );
    Ok(())
}

fn rounded(s: Summary) -> Summary {
    Summary {
        p50: round3(s.p50),
        p95: round3(s.p95),
        p99: round3(s.p99),
        max: round3(s.max),
        mean: round3(s.mean),
        ..s
    }
}

// === impl Rig ===

impl Rig {
    /// A session straight to the echo peer.
    async fn direct(&self, session_id: &str) -> anyhow::Result<Ws> {
        handshake(&self.echo.ws_url(), session_id).await
    }

    /// A session through Tether, set up as the cloud and the SDK do: webhook to Tether's
    /// public listener, the URL Tether rewrote taken from what the app received.
    async fn via_tether(&mut self, user_id: &str) -> anyhow::Result<Ws> {
        let session_id = format!("{user_id}-{PACKAGE}");
        let cloud = self.echo.ws_url();
        let body = json!({
            "type": "session_request",
            "sessionId": session_id,
            "userId": user_id,
            "timestamp": "2026-01-10T09:15:00.000Z",
            "mentraOSWebsocketUrl": cloud,
            "augmentOSWebsocketUrl": cloud,
        });
        let url = format!("http://{}/webhook", self.running.public);
        let (status, answer) = self.http.post_json(&url, &body).await?;
        anyhow::ensure!(
            status == 200,
            "Tether answered the webhook with HTTP {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        let forwarded = self.app.webhook_for(&session_id).await?;
        let local = forwarded
            .get("mentraOSWebsocketUrl")
            .and_then(Value::as_str)
            .context("the forwarded webhook has no mentraOSWebsocketUrl")?;
        anyhow::ensure!(local != cloud, "Tether did not rewrite the websocket URL");
        handshake(local, &session_id).await
    }

    /// Keeps reading `ws` in the background (answering pings and closes) until the run ends.
    fn drain(&self, mut ws: Ws) {
        let stop = self.stop_drains.clone();
        self.drains.spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    m = ws.next() => if !matches!(m, Some(Ok(_))) { return },
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        });
    }

    /// VmRSS growth per session, direct then through Tether; `None` without `/proc`.
    async fn memory(&mut self, n: u32) -> anyhow::Result<Option<Memory>> {
        let Some(before) = vm_rss_kib() else {
            return Ok(None);
        };
        for i in 0..n {
            let ws = self
                .direct(&format!("mem-direct-{i}@example.com-{PACKAGE}"))
                .await?;
            self.drain(ws);
        }
        settle().await;
        let Some(after_direct) = vm_rss_kib() else {
            return Ok(None);
        };
        for i in 0..n {
            let ws = self
                .via_tether(&format!("mem-tether-{i}@example.com"))
                .await?;
            self.drain(ws);
        }
        settle().await;
        let Some(after_tether) = vm_rss_kib() else {
            return Ok(None);
        };
        let per = |a: u64, b: u64| round3((b as f64 - a as f64) / f64::from(n));
        let direct = per(before, after_direct);
        let tether = per(after_direct, after_tether);
        Ok(Some(Memory {
            sessions: n,
            direct_kib_per_session: direct,
            tether_kib_per_session: tether,
            tether_added_kib_per_session: round3(tether - direct),
        }))
    }

    /// Stops Tether first (it closes its sessions on both sides, which the drains answer),
    /// then the drains and the peers.
    async fn shutdown(self) {
        self.running.shutdown(super::TETHER_GRACE).await;
        self.stop_drains.cancel();
        self.drains.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.drains.wait()).await;
        self.echo.shutdown().await;
        self.app.shutdown().await;
    }
}

/// Lets allocations and socket buffers settle before a VmRSS reading.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// This process's resident set in KiB, from `/proc/self/status`.
fn vm_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Connects to `url`, sends an init and waits for the ack.
async fn handshake(url: &str, session_id: &str) -> anyhow::Result<Ws> {
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_with_config(url, None, true),
    )
    .await
    .with_context(|| format!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    let init = json!({
        "type": "tpa_connection_init",
        "sessionId": session_id,
        "packageName": PACKAGE,
        "apiKey": BENCH_API_KEY,
    });
    ws.send(Message::text(init.to_string())).await?;
    match next_data(&mut ws).await? {
        Message::Text(t) if t.as_str().contains(r#""tpa_connection_ack""#) => Ok(ws),
        other => anyhow::bail!("expected tpa_connection_ack from {url}, got {other:?}"),
    }
}

/// The next data frame, skipping control frames; a close, an error or [`WAIT`] without a
/// frame is an error.
async fn next_data(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => anyhow::bail!("no frame within {WAIT:?}"),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Close(c)))) => anyhow::bail!("socket closed: {c:?}"),
            Ok(Some(Ok(m))) => return Ok(m),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => anyhow::bail!("socket ended"),
        }
    }
}

/// `n` round trips of a numbered data frame; each time in microseconds.
async fn round_trips(ws: &mut Ws, n: u32, seq: &mut u64) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        *seq += 1;
        let frame = echo::data_frame(*seq);
        let len = frame.len();
        let t0 = Instant::now();
        ws.send(Message::text(frame)).await?;
        let back = next_data(ws).await?;
        let dt = t0.elapsed();
        match back {
            Message::Text(t) if t.len() == len => {}
            other => anyhow::bail!("echo did not match the frame sent: {other:?}"),
        }
        out.push(dt.as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Asks the peer for `n` frames and times their arrival; frames per second.
async fn burst_down(ws: &mut Ws, n: u64, binary: bool, size: usize) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    ws.send(Message::text(echo::burst_request(n, binary, size)))
        .await?;
    for got in 0..n {
        match next_data(ws).await? {
            Message::Binary(_) if binary => {}
            Message::Text(_) if !binary => {}
            other => anyhow::bail!("unexpected frame {got} of a burst: {other:?}"),
        }
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Sends `n` frames into the peer's sink and times until the peer has counted them all;
/// frames per second.
async fn burst_up(ws: &mut Ws, n: u64, binary: bool, size: usize) -> anyhow::Result<f64> {
    ws.send(Message::text(echo::SINK_START)).await?;
    let text = Utf8Bytes::from(echo::data_frame(0));
    let bin = Bytes::from(vec![0xa5_u8; size]);
    let t0 = Instant::now();
    for i in 1..=n {
        let m = if binary {
            Message::Binary(bin.clone())
        } else {
            Message::Text(text.clone())
        };
        ws.feed(m).await?;
        if i % FLUSH_EVERY == 0 {
            ws.flush().await?;
        }
    }
    ws.send(Message::text(echo::SINK_END)).await?;
    let answer = next_data(ws).await?;
    let elapsed = t0.elapsed();
    let counted = match &answer {
        Message::Text(t) => echo::sink_count(t.as_str()),
        _ => None,
    };
    anyhow::ensure!(
        counted == Some(n),
        "the peer counted {counted:?} of {n} frames sent up"
    );
    Ok(n as f64 / elapsed.as_secs_f64())
}

fn table(r: &Report, args: &RelayArgs) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "tether bench relay: {} round trips per path after {} warm-up, {} alternating chunks, {} B text frames",
        r.iterations, r.warmup, r.chunks, r.text_frame_bytes
    ));
    line(format!(
        "{:<18}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "round trip (µs)", "p50", "p95", "p99", "max", "mean"
    ));
    for (name, x) in [
        ("direct", &r.rtt_us.direct),
        ("via tether", &r.rtt_us.tether),
    ] {
        line(format!(
            "{name:<18}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
            x.p50, x.p95, x.p99, x.max, x.mean
        ));
    }
    line(format!(
        "{:<18}{:>10.1}{:>10}{:>10.1}",
        "added", r.added_us.p50, "", r.added_us.p99
    ));
    line(format!(
        "{:<18}{:>9.2}x{:>10}{:>9.2}x",
        "ratio", r.ratio.p50, "", r.ratio.p99
    ));
    line(format!(
        "{:<26}{:>12}{:>12}{:>8}   (frames/s, median of {} bursts of {})",
        "throughput", "direct", "tether", "ratio", args.burst_rounds, args.burst
    ));
    for t in &r.throughput_fps {
        let name = format!("{} ({} B)", t.kind.replace('_', " "), t.frame_bytes);
        line(format!(
            "{name:<26}{:>12.0}{:>12.0}{:>7.2}x",
            t.direct, t.tether, t.ratio
        ));
    }
    match &r.memory {
        Some(m) => line(format!(
            "memory ({} sessions per path, VmRSS growth): direct {:.1} KiB/session, via tether {:.1} KiB/session, tether's share {:.1} KiB/session",
            m.sessions, m.direct_kib_per_session, m.tether_kib_per_session, m.tether_added_kib_per_session
        )),
        None => line("memory: not measured".to_string()),
    }
    line(format!("runtime {:.1} s", r.runtime_s));
    s
}
