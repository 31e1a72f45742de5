//! `tether bench cloud`: how fast Tether heals a dropped cloud link, whether the app sees
//! anything of it, and what Tether's own cloud heartbeat costs.
//!
//! The cloud emulator and Tether run in this process; the app simulator runs as a child
//! process (`tether sim app`), as in `bench recovery`.
//!
//! - **Drops.** Sessions stream numbered transcriptions. Round-robin over them, the
//!   emulator shuts a session's socket without a close frame (`drop_socket`); the bench
//!   then polls the emulator until that session's `inits` moves (Tether's re-init on a new
//!   socket) and times it, reads Tether's own `tether_cloud_reacked_seconds` delta, and
//!   waits `--gap-ms` before the next drop. At the end every session's received sequence
//!   numbers must be strictly increasing, and the numbers missing must be exactly the frames
//!   the emulator generated while no socket was up (`frames_dropped`): anything beyond is
//!   lost by Tether. The app must never reconnect and the cloud must never resurrect.
//! - **Heartbeat.** One session per heartbeat interval (Tether's default, and a short one
//!   so a short window sees several beats), each through its own Tether and emulator,
//!   streaming at a typical rate for a measured window; the heartbeat's bytes and the
//!   stream's bytes are read from `/metrics` and extrapolated to a session-hour.
//!
//! A heal that never happens or a frame that goes missing is reported in the figures;
//! nothing here retries around Tether.

use super::exposition::{bucket_quantile, label, sample};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::http::HttpClient;
use super::stats::{ratio, round3, Summary};
use super::{start_tether, BENCH_API_KEY, PACKAGE, TETHER_GRACE};
use crate::runtime::Running;
use crate::sim::cloud::{CloudSim, CloudSimConfig, StartOutcome};

/// The figure the printout compares against (not asserted): p95 of drop → re-init seen.
const TARGET_P95_MS: f64 = 250.0;
/// Heartbeat bytes as a share of the stream at Tether's default interval, in percent.
const TARGET_SHARE_PCT: f64 = 0.1;

/// Tether's default `cloud.heartbeat_interval_ms` (the heartbeat run that sets nothing).
const DEFAULT_HEARTBEAT_MS: u64 = 10_000;
/// On the wire: an empty ping from Tether (a client, so masked: 2 header + 4 mask bytes),
/// and the cloud's empty pong (a server, unmasked: 2 header bytes).
const PING_WIRE_BYTES: f64 = 6.0;
const PONG_WIRE_BYTES: f64 = 2.0;

/// Bounds on single waits.
const SPAWN_WAIT: Duration = Duration::from_secs(10);
const EXIT_WAIT: Duration = Duration::from_secs(5);
const SETUP_WAIT: Duration = Duration::from_secs(15);
/// How long the app may take to receive the frames numbered before the final count.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);
/// After the drops: the cloud's grace (5 s) plus a resurrection's webhooks and init.
const SETTLE_WAIT: Duration = Duration::from_secs(12);
/// Polls of Tether's `/metrics` while waiting for its own re-ack figure.
const METRICS_POLL: Duration = Duration::from_millis(2);

/// Whole-run bound on the drop loop: it stops (and says so) past it.
const RUN_LIMIT: Duration = Duration::from_secs(1800);

/// Flags of `tether bench cloud`.
#[derive(clap::Args, Debug, Clone)]
pub struct CloudArgs {
    /// Sessions the drops go round-robin over.
    #[arg(long, default_value_t = 5)]
    pub sessions: u32,
    /// Cloud socket drops in total.
    #[arg(long, default_value_t = 100)]
    pub drops: u32,
    /// Period of the emulator's numbered transcriptions per session during the drops, in ms.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Pause after a heal is seen (by the emulator and in Tether's metrics) before the next
    /// drop, in ms.
    #[arg(long, default_value_t = 100)]
    pub gap_ms: u64,
    /// Period of this bench's polls of the emulator's `inits` after a drop, in ms.
    #[arg(long, default_value_t = 1)]
    pub poll_ms: u64,
    /// A drop not healed by then stops the drop loop, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub heal_timeout_ms: u64,
    /// Measured window of the heartbeat runs, in seconds.
    #[arg(long, default_value_t = 20)]
    pub hb_secs: u64,
    /// Period of the transcriptions streamed during the heartbeat runs, in ms.
    #[arg(long, default_value_t = 250)]
    pub hb_stream_ms: u64,
    /// The short heartbeat interval measured beside Tether's default, in ms.
    #[arg(long, default_value_t = 1000)]
    pub hb_short_ms: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Everything one run measured; serialised as the `--json` output.
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    sessions: u32,
    drops: u32,
    completed_drops: u32,
    /// Round-robin turns passed over because the emulator had no open socket for that
    /// session (it was in grace or being resurrected).
    skipped_no_socket: u32,
    /// Drops after which the emulator counted a superseded-close hazard for the session.
    hazard_after_drops: Vec<u32>,
    interval_ms: u64,
    gap_ms: u64,
    poll_ms: u64,
    /// Client side: `drop_socket` called → the emulator counted the session's new init.
    drop_to_reinit_ms: Summary,
    /// Tether's own `tether_cloud_reacked_seconds` (link lost → re-init acked).
    tether_reacked: TetherReacked,
    target_p95_ms: f64,
    target_met: bool,
    frames: Frames,
    cloud: CloudTotals,
    app: AppTotals,
    tether: TetherTotals,
    heartbeat: Heartbeat,
    /// Why the drops stopped early, if they did.
    failure: Option<String>,
    runtime_s: f64,
}

#[derive(Debug, Default, Serialize)]
struct TetherReacked {
    count: f64,
    mean_ms: f64,
    /// Histogram bucket bounds at or below which half / 95 % of the heals fell.
    p50_le_ms: Option<f64>,
    p95_le_ms: Option<f64>,
    /// Per-drop values (sum/count deltas), summarised.
    per_drop_ms: Summary,
}

/// Transcription accounting over every session, for sequence numbers `1..=last` where
/// `last` is the emulator's latest number when the count was taken.
#[derive(Debug, Default, Serialize)]
struct Frames {
    /// Numbered by the emulator (sent or dropped).
    numbered: u64,
    /// Distinct numbers received by the app.
    received: u64,
    /// Numbered, never received.
    missing: u64,
    /// Generated by the emulator while no socket was up (`frames_dropped`).
    dropped_by_cloud: u64,
    /// `missing - dropped_by_cloud`: should be 0.
    lost_by_tether: i64,
    /// Received more than once.
    duplicates: u64,
    /// Received after a higher number (a break of strict increase that is not a duplicate).
    out_of_order: u64,
}

/// The emulator's counters over the drop sessions, taken with the frame count.
#[derive(Debug, Default, Serialize)]
struct CloudTotals {
    inits: u64,
    app_disconnects: u64,
    /// Grace expiries that restarted the app (stop + session webhooks): should be 0.
    resurrections: u64,
    /// Closes of a superseded socket that the cloud applied to the session's current one
    /// (PROTOCOL §10.5): should be 0.
    superseded_close_hazards: u64,
    frames_sent: u64,
    frames_dropped: u64,
}

#[derive(Debug, Default, Serialize)]
struct AppTotals {
    /// Reconnect attempts the app's SDK started: should be 0.
    reconnect_attempts: u64,
    /// Session incarnations (one per session unless the cloud re-sent a webhook).
    incarnations: u64,
    /// Socket ends the app saw.
    closes: u64,
    /// `tpa_connection_init`s the app sent (one per session).
    inits_sent: u64,
}

/// Deltas of Tether's counters over the drop loop.
#[derive(Debug, Default, Serialize)]
struct TetherTotals {
    cloud_disconnects: f64,
    reconnect_dials: f64,
    app_disconnects: f64,
    resurrections_healed: f64,
    frames_dropped: f64,
}

#[derive(Debug, Default, Serialize)]
struct Heartbeat {
    window_s: f64,
    stream_interval_ms: u64,
    runs: Vec<HeartbeatRun>,
    /// How pong bytes are accounted (see `pong_bytes_added`).
    note: String,
    target_share_pct: f64,
    target_met: bool,
}

#[derive(Debug, Default, Serialize)]
struct HeartbeatRun {
    heartbeat_interval_ms: u64,
    /// Measured window of this run.
    window_s: f64,
    /// `tether_heartbeat_bytes_total{direction="app_to_cloud"}` delta.
    sent_bytes: f64,
    /// `sent_bytes / 6`: Tether counts 6 bytes per empty masked ping.
    pings: f64,
    /// `tether_heartbeat_bytes_total{direction="cloud_to_app"}` delta.
    received_bytes_metric: f64,
    /// 2 bytes per pong, added by this bench when the metric counted none.
    pong_bytes_added: f64,
    /// `sent + received (metric or added)`.
    heartbeat_bytes: f64,
    /// `tether_bytes_total{direction="cloud_to_app"}` delta (payload bytes).
    stream_bytes: f64,
    stream_frames: f64,
    heartbeat_bytes_per_session_hour: f64,
    stream_bytes_per_session_hour: f64,
    /// Heartbeat bytes as a share of the stream's, in percent.
    share_pct: f64,
    /// `3600 s / interval × (6 + 2)` bytes: what a whole hour costs, free of the window's
    /// rounding to whole beats.
    nominal_heartbeat_bytes_per_session_hour: f64,
    nominal_share_pct: f64,
}

/// The app simulator as a child process.
struct AppProcess {
    child: Child,
    addr: SocketAddr,
}

/// One Tether and its emulator.
struct Rig {
    running: Running,
    cloud: CloudSim,
    admin: String,
}

/// Runs the cloud benchmark and prints its report.
///
/// # Errors
/// A peer cannot start or a setup does not complete; problems during the drops are
/// reported in the output instead.
pub async fn run(args: CloudArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=200).contains(&args.sessions),
        "--sessions must be 1..=200"
    );
    anyhow::ensure!(
        (1..=100_000).contains(&args.drops),
        "--drops must be 1..=100000"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.interval_ms),
        "--interval-ms must be 1..=10000"
    );
    anyhow::ensure!(args.gap_ms <= 60_000, "--gap-ms must be at most 60000");
    anyhow::ensure!(
        (1..=100).contains(&args.poll_ms),
        "--poll-ms must be 1..=100"
    );
    anyhow::ensure!(
        (100..=120_000).contains(&args.heal_timeout_ms),
        "--heal-timeout-ms must be 100..=120000"
    );
    anyhow::ensure!(
        (1..=3_600).contains(&args.hb_secs),
        "--hb-secs must be 1..=3600"
    );
    anyhow::ensure!(
        (1..=60_000).contains(&args.hb_stream_ms),
        "--hb-stream-ms must be 1..=60000"
    );
    anyhow::ensure!(
        (1..=600_000).contains(&args.hb_short_ms),
        "--hb-short-ms must be 1..=600000"
    );
    let started = Instant::now();
    let app = AppProcess::spawn().await?;
    let http = HttpClient::new();
    let outcome = async {
        let mut report = drops(&app, &http, &args, started + RUN_LIMIT).await?;
        report.heartbeat = heartbeat(&app, &http, &args).await?;
        anyhow::Ok(report)
    }
    .await;
    app.kill().await;
    let mut report = outcome?;
    report.runtime_s = round3(started.elapsed().as_secs_f64());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Part 1: the drops, with its own Tether and emulator (stopped before returning).
async fn drops(
    app: &AppProcess,
    http: &HttpClient,
    args: &CloudArgs,
    deadline: Instant,
) -> anyhow::Result<Report> {
    let rig = Rig::start(app, "", args.interval_ms).await?;
    let outcome = drop_loop(&rig, app, http, args, deadline).await;
    rig.shutdown().await;
    outcome
}

async fn drop_loop(
    rig: &Rig,
    app: &AppProcess,
    http: &HttpClient,
    args: &CloudArgs,
    deadline: Instant,
) -> anyhow::Result<Report> {
    let users: Vec<String> = (0..args.sessions)
        .map(|i| format!("cloud{i}@example.com"))
        .collect();
    let ids: Vec<String> = users.iter().map(|u| format!("{u}-{PACKAGE}")).collect();
    rig.start_sessions(&users).await?;
    rig.wait_live(http, &ids).await?;
    app.wait_first_frames(http, &ids).await?;
    tracing::info!("bench: sessions live and streaming");

    let first = rig.scrape(http).await?;
    let (mut client_ms, mut tether_ms) = (Vec::new(), Vec::new());
    let (mut skipped, mut hazard_after) = (0, Vec::new());
    let mut failure = None;
    let mut done = 0;
    let poll = Duration::from_millis(args.poll_ms);
    let heal_timeout = Duration::from_millis(args.heal_timeout_ms);
    let hazards = |id: &str| {
        rig.cloud
            .stats(id)
            .map_or(0, |s| s.superseded_close_hazards)
    };
    let mut turn = 0usize;
    let mut idle_since = None;
    let mut d = 1;
    while d <= args.drops {
        if Instant::now() >= deadline {
            failure = Some(format!(
                "stopped before drop {d}: the run exceeded {RUN_LIMIT:?}"
            ));
            break;
        }
        let id = &ids[turn % ids.len()];
        turn += 1;
        // A session the emulator holds no socket for (grace, resurrection) cannot be
        // dropped: its turn passes, and the figures say how often.
        let droppable = rig
            .cloud
            .stats(id)
            .is_some_and(|s| s.socket_open && s.state == "running");
        if !droppable {
            skipped += 1;
            tracing::warn!(session = %id, "bench: no cloud socket to drop; turn skipped");
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= heal_timeout {
                failure = Some(format!(
                    "before drop {d}: no session had a cloud socket for {heal_timeout:?}"
                ));
                break;
            }
            if turn.is_multiple_of(ids.len()) {
                tokio::time::sleep(Duration::from_millis(args.gap_ms.max(10))).await;
            }
            continue;
        }
        idle_since = None;
        let hazards_before = hazards(id);
        match one_drop(rig, http, id, poll, heal_timeout).await {
            Ok((client, tether)) => {
                client_ms.push(client);
                if let Some(t) = tether {
                    tether_ms.push(t);
                }
                done = d;
            }
            Err(e) => {
                failure = Some(format!("drop {d} ({id}): {e:#}"));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(args.gap_ms)).await;
        if hazards(id) > hazards_before {
            tracing::warn!(session = %id, drop = d, "bench: superseded-close hazard after this drop");
            hazard_after.push(d);
        }
        d += 1;
    }
    // A session the cloud put in grace (a hazard) is resurrected or stopped when its grace
    // ends; the count waits for that (bounded), so the totals include it.
    rig.settle(&ids).await;
    let last = rig.scrape(http).await?;
    let (frames, cloud) = rig.count_frames(app, http, &ids).await?;
    let app_totals = app_totals(&app.stats(http).await?, &ids);
    let client = Summary::of(&client_ms);
    let n = last.reacked_count - first.reacked_count;
    Ok(Report {
        bench: "cloud",
        sessions: args.sessions,
        drops: args.drops,
        completed_drops: done,
        skipped_no_socket: skipped,
        hazard_after_drops: hazard_after,
        interval_ms: args.interval_ms,
        gap_ms: args.gap_ms,
        poll_ms: args.poll_ms,
        drop_to_reinit_ms: rounded(client),
        tether_reacked: TetherReacked {
            count: n,
            mean_ms: round3(ratio(last.reacked_sum - first.reacked_sum, n) * 1e3),
            p50_le_ms: bucket_quantile(&first.reacked_buckets, &last.reacked_buckets, 0.50),
            p95_le_ms: bucket_quantile(&first.reacked_buckets, &last.reacked_buckets, 0.95),
            per_drop_ms: rounded(Summary::of(&tether_ms)),
        },
        target_p95_ms: TARGET_P95_MS,
        target_met: client.n > 0 && client.p95 <= TARGET_P95_MS,
        frames,
        cloud,
        app: app_totals,
        tether: TetherTotals {
            cloud_disconnects: last.cloud_disconnects - first.cloud_disconnects,
            reconnect_dials: last.reconnect_dials - first.reconnect_dials,
            app_disconnects: last.app_disconnects - first.app_disconnects,
            resurrections_healed: last.resurrections_healed - first.resurrections_healed,
            frames_dropped: last.frames_dropped - first.frames_dropped,
        },
        heartbeat: Heartbeat::default(),
        failure,
        runtime_s: 0.0,
    })
}

/// Drops `id`'s cloud socket and waits for the heal. Returns drop → new init seen by the
/// emulator (ms), and Tether's own figure for this heal (ms) if its metrics showed one.
async fn one_drop(
    rig: &Rig,
    http: &HttpClient,
    id: &str,
    poll: Duration,
    heal_timeout: Duration,
) -> anyhow::Result<(f64, Option<f64>)> {
    let inits = |cloud: &CloudSim| cloud.stats(id).map_or(0, |s| s.inits);
    let before = rig.scrape(http).await?;
    let inits_before = inits(&rig.cloud);
    let t_drop = Instant::now();
    rig.cloud.drop_socket(id).await?;
    let limit = t_drop + heal_timeout;
    let t_init = loop {
        if inits(&rig.cloud) > inits_before {
            break Instant::now();
        }
        if Instant::now() >= limit {
            let state = rig
                .cloud
                .stats(id)
                .map(|s| format!("state {}, socket_open {}", s.state, s.socket_open));
            anyhow::bail!(
                "no new init within {heal_timeout:?} ({})",
                state.unwrap_or_else(|| "unknown to the emulator".into())
            );
        }
        tokio::time::sleep(poll).await;
    };
    let client = t_init.saturating_duration_since(t_drop).as_secs_f64() * 1e3;
    // Tether records the heal when the ack reaches it, just after the emulator's init.
    loop {
        let now = rig.scrape(http).await?;
        let n = now.reacked_count - before.reacked_count;
        if n > 0.0 {
            return Ok((
                client,
                Some((now.reacked_sum - before.reacked_sum) / n * 1e3),
            ));
        }
        if Instant::now() >= limit {
            // The emulator saw the init; Tether never counted a heal. Reported, not fatal.
            tracing::warn!(
                session = id,
                "re-init seen, but no tether_cloud_reacked_seconds observation"
            );
            return Ok((client, None));
        }
        tokio::time::sleep(METRICS_POLL).await;
    }
}

/// Part 2: one session per heartbeat interval, each through its own Tether and emulator,
/// measured over the same window.
async fn heartbeat(
    app: &AppProcess,
    http: &HttpClient,
    args: &CloudArgs,
) -> anyhow::Result<Heartbeat> {
    let intervals = [DEFAULT_HEARTBEAT_MS, args.hb_short_ms];
    let mut rigs = Vec::new();
    for (i, ms) in intervals.iter().enumerate() {
        // The default run sets nothing, so it measures whatever Tether defaults to.
        let extra = if i == 0 {
            String::new()
        } else {
            format!("cloud:\n  heartbeat_interval_ms: {ms}\n")
        };
        match Rig::start(app, &extra, args.hb_stream_ms).await {
            Ok(r) => rigs.push(r),
            Err(e) => {
                for r in rigs {
                    r.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    let outcome = heartbeat_window(&rigs, &intervals, app, http, args).await;
    for r in rigs {
        r.shutdown().await;
    }
    outcome
}

async fn heartbeat_window(
    rigs: &[Rig],
    intervals: &[u64],
    app: &AppProcess,
    http: &HttpClient,
    args: &CloudArgs,
) -> anyhow::Result<Heartbeat> {
    let mut ids = Vec::new();
    for (rig, ms) in rigs.iter().zip(intervals) {
        let user = format!("hb{ms}@example.com");
        rig.start_sessions(std::slice::from_ref(&user)).await?;
        let id = format!("{user}-{PACKAGE}");
        rig.wait_live(http, std::slice::from_ref(&id)).await?;
        ids.push(id);
    }
    app.wait_first_frames(http, &ids).await?;
    let mut before = Vec::new();
    for rig in rigs {
        before.push((rig.scrape(http).await?, Instant::now()));
    }
    tokio::time::sleep(Duration::from_secs(args.hb_secs)).await;
    let mut runs = Vec::new();
    for ((rig, ms), (b, t0)) in rigs.iter().zip(intervals).zip(before) {
        let a = rig.scrape(http).await?;
        let window = t0.elapsed().as_secs_f64();
        let sent = a.hb_sent - b.hb_sent;
        let received = a.hb_received - b.hb_received;
        let pings = sent / PING_WIRE_BYTES;
        let pong_added = if received > 0.0 {
            0.0
        } else {
            pings * PONG_WIRE_BYTES
        };
        let hb = sent + received + pong_added;
        let stream = a.bytes_down - b.bytes_down;
        let per_hour = |x: f64| round3(ratio(x * 3600.0, window));
        let nominal = 3600.0 / (*ms as f64 / 1e3) * (PING_WIRE_BYTES + PONG_WIRE_BYTES);
        runs.push(HeartbeatRun {
            heartbeat_interval_ms: *ms,
            window_s: round3(window),
            sent_bytes: sent,
            pings,
            received_bytes_metric: received,
            pong_bytes_added: pong_added,
            heartbeat_bytes: hb,
            stream_bytes: stream,
            stream_frames: a.frames_down - b.frames_down,
            heartbeat_bytes_per_session_hour: per_hour(hb),
            stream_bytes_per_session_hour: per_hour(stream),
            share_pct: round_share(ratio(hb, stream) * 100.0),
            nominal_heartbeat_bytes_per_session_hour: round3(nominal),
            nominal_share_pct: round_share(ratio(nominal, per_hour(stream)) * 100.0),
        });
    }
    let counted = runs.iter().any(|r| r.received_bytes_metric > 0.0);
    let note = if counted {
        "tether_heartbeat_bytes_total counts pongs received (cloud_to_app); used as is".to_owned()
    } else {
        "tether_heartbeat_bytes_total counts only what Tether sends (6 B per empty masked ping); \
         pongs received are not counted (cloud_to_app stays 0), so 2 B per pong (empty unmasked \
         frame) are added here, one per ping. Stream bytes are payload only (tether_bytes_total \
         cloud_to_app, no framing), so the share is slightly overstated. The cloud's own pings \
         (every 10 s) and Tether's answers are not Tether's heartbeat and are not counted."
            .to_owned()
    };
    let default_share = runs.first().map(|r| r.nominal_share_pct.max(r.share_pct));
    Ok(Heartbeat {
        window_s: args.hb_secs as f64,
        stream_interval_ms: args.hb_stream_ms,
        target_met: default_share.is_some_and(|s| s <= TARGET_SHARE_PCT),
        runs,
        note,
        target_share_pct: TARGET_SHARE_PCT,
    })
}

// === impl Rig ===

impl Rig {
    /// Tether (with `extra_yaml`) pointed at the app, and an emulator streaming a
    /// transcription every `interval_ms` and webhooking Tether.
    async fn start(app: &AppProcess, extra_yaml: &str, interval_ms: u64) -> anyhow::Result<Rig> {
        let running = start_tether(&format!("http://{}", app.addr), extra_yaml).await?;
        let cfg = CloudSimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_url: Some(format!("http://{}/webhook", running.public)),
            package_name: PACKAGE.to_owned(),
            api_key: BENCH_API_KEY.to_owned(),
            transcription_interval_ms: Some(interval_ms),
            resurrect: true,
            ..Default::default()
        };
        let cloud = match CloudSim::start(cfg).await {
            Ok(c) => c,
            Err(e) => {
                running.shutdown(TETHER_GRACE).await;
                return Err(e);
            }
        };
        let admin = format!("http://{}", running.admin);
        Ok(Rig {
            running,
            cloud,
            admin,
        })
    }

    async fn start_sessions(&self, users: &[String]) -> anyhow::Result<()> {
        for user in users {
            let outcome = self.cloud.start_session(user).await?;
            anyhow::ensure!(
                outcome == StartOutcome::Running,
                "session of {user} did not start: {outcome:?}"
            );
        }
        Ok(())
    }

    /// Waits until Tether lists every session as live.
    async fn wait_live(&self, http: &HttpClient, ids: &[String]) -> anyhow::Result<()> {
        let limit = Instant::now() + SETUP_WAIT;
        loop {
            let v = http.get_json(&format!("{}/sessions", self.admin)).await?;
            let live: HashSet<&str> = v
                .get("sessions")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|r| r.get("state").and_then(Value::as_str) == Some("live"))
                .filter_map(|r| r.get("session_id").and_then(Value::as_str))
                .collect();
            if ids.iter().all(|id| live.contains(id.as_str())) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < limit,
                "sessions not live in Tether after {SETUP_WAIT:?}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (up to [`SETTLE_WAIT`]) until the emulator has every session running on an
    /// open socket.
    async fn settle(&self, ids: &[String]) {
        let limit = Instant::now() + SETTLE_WAIT;
        while Instant::now() < limit {
            let settled = ids.iter().all(|id| {
                self.cloud
                    .stats(id)
                    .is_some_and(|s| s.socket_open && s.state == "running")
            });
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("bench: sessions not all running on the emulator after {SETTLE_WAIT:?}");
    }

    /// Takes the emulator's count (and its totals, at the same moment), lets the app catch
    /// up to it (bounded), then compares.
    async fn count_frames(
        &self,
        app: &AppProcess,
        http: &HttpClient,
        ids: &[String],
    ) -> anyhow::Result<(Frames, CloudTotals)> {
        let mut cloud = CloudTotals::default();
        let mut snapshot = Vec::new();
        for id in ids {
            let s = self.cloud.stats(id).unwrap_or_default();
            cloud.inits += u64::from(s.inits);
            cloud.app_disconnects += u64::from(s.app_disconnects);
            cloud.resurrections += u64::from(s.resurrections);
            cloud.superseded_close_hazards += u64::from(s.superseded_close_hazards);
            cloud.frames_sent += s.frames_sent;
            cloud.frames_dropped += s.frames_dropped;
            snapshot.push((s.last_transcription_seq, s.frames_dropped));
        }
        let limit = Instant::now() + CATCH_UP_WAIT;
        let seqs = loop {
            let seqs = seqs_by_session(&app.stats(http).await?);
            let caught = ids.iter().zip(&snapshot).all(|(id, (last, _))| {
                seqs.get(id)
                    .and_then(|v| v.iter().copied().max())
                    .is_some_and(|m| m >= *last)
            });
            if caught || Instant::now() >= limit {
                break seqs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut f = Frames::default();
        for (id, (last, dropped)) in ids.iter().zip(snapshot) {
            let got = seqs.get(id).map(Vec::as_slice).unwrap_or_default();
            count_session(got, last, dropped, &mut f);
        }
        f.lost_by_tether = f.missing as i64 - f.dropped_by_cloud as i64;
        Ok((f, cloud))
    }

    async fn scrape(&self, http: &HttpClient) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(
            &http.get_text(&format!("{}/metrics", self.admin)).await?,
        ))
    }

    /// Tether first (it tells both sides), then the emulator.
    async fn shutdown(self) {
        self.running.shutdown(TETHER_GRACE).await;
        self.cloud.shutdown().await;
    }
}

/// Adds one session's record: `got` in arrival order, the emulator's `last` number and
/// its `dropped` count at the time of the count.
fn count_session(got: &[u64], last: u64, dropped: u64, f: &mut Frames) {
    let mut seen = HashSet::new();
    let mut high = 0;
    for &s in got {
        if !seen.insert(s) {
            f.duplicates += 1;
        } else if s < high {
            f.out_of_order += 1;
        }
        high = high.max(s);
    }
    let received = (1..=last).filter(|s| seen.contains(s)).count() as u64;
    f.numbered += last;
    f.received += received;
    f.missing += last - received;
    f.dropped_by_cloud += dropped;
}

/// Transcription sequence numbers per session id, across every incarnation the app
/// recorded, in arrival order.
fn seqs_by_session(stats: &Value) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in sessions(stats) {
        let Some(id) = s.get("session_id").and_then(Value::as_str) else {
            continue;
        };
        let seqs = s
            .get("transcriptions")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        out.entry(id.to_owned())
            .or_default()
            .extend(seqs.iter().filter_map(Value::as_u64));
    }
    out
}

fn sessions(stats: &Value) -> &[Value] {
    stats
        .get("sessions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// What the app saw of the sessions `ids`, over every incarnation.
fn app_totals(stats: &Value, ids: &[String]) -> AppTotals {
    let mut t = AppTotals::default();
    let count = |s: &Value, key: &str| s.get(key).and_then(Value::as_u64).unwrap_or(0);
    for s in sessions(stats) {
        let ours = s
            .get("session_id")
            .and_then(Value::as_str)
            .is_some_and(|id| ids.iter().any(|i| i == id));
        if !ours {
            continue;
        }
        t.incarnations += 1;
        t.reconnect_attempts += count(s, "reconnect_attempts");
        t.inits_sent += count(s, "inits_sent");
        t.closes += s
            .get("closes")
            .and_then(Value::as_array)
            .map_or(0, |c| c.len() as u64);
    }
    t
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

/// Shares are small: 5 decimals of a percent.
fn round_share(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

// === impl AppProcess ===

impl AppProcess {
    /// Starts `tether sim app` on 127.0.0.1:0 and reads its address from the line it prints.
    async fn spawn() -> anyhow::Result<AppProcess> {
        let exe = std::env::current_exe().context("locating the tether binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "sim",
            "app",
            "--listen",
            "127.0.0.1:0",
            "--package-name",
            PACKAGE,
        ])
        // The key goes by environment, not argv, where `ps` would show it.
        .env("TETHER_API_KEY", BENCH_API_KEY)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting the app simulator")?;
        let stdout = child.stdout.take().context("app simulator stdout")?;
        let (tx, printed) = oneshot::channel::<String>();
        // Reads to the end so the child never blocks on a full pipe; ends when it dies.
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("app-sim listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
            }
        });
        let seen = tokio::time::timeout(SPAWN_WAIT, printed).await;
        let addr = match seen {
            Ok(Ok(a)) => a.parse::<SocketAddr>().ok(),
            _ => None,
        };
        match addr {
            Some(addr) => Ok(AppProcess { child, addr }),
            None => {
                let mut app = AppProcess {
                    child,
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                };
                let _ = app.child.start_kill();
                let _ = tokio::time::timeout(EXIT_WAIT, app.child.wait()).await;
                anyhow::bail!(
                    "the app simulator printed no listening address within {SPAWN_WAIT:?}"
                )
            }
        }
    }

    async fn stats(&self, http: &HttpClient) -> anyhow::Result<Value> {
        http.get_json(&format!("http://{}/sim/stats", self.addr))
            .await
    }

    /// Waits until every session in `ids` has received a transcription.
    async fn wait_first_frames(&self, http: &HttpClient, ids: &[String]) -> anyhow::Result<()> {
        let limit = Instant::now() + SETUP_WAIT;
        loop {
            let seqs = seqs_by_session(&self.stats(http).await?);
            if ids
                .iter()
                .all(|id| seqs.get(id).is_some_and(|v| !v.is_empty()))
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < limit,
                "no transcription reached the app within {SETUP_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the process by its PID and reaps it.
    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(EXIT_WAIT, self.child.wait()).await;
    }
}

/// The parts of Tether's `/metrics` this bench reads.
#[derive(Debug, Default)]
struct Scrape {
    reacked_sum: f64,
    reacked_count: f64,
    /// `(le, cumulative count)` of `tether_cloud_reacked_seconds`.
    reacked_buckets: Vec<(f64, f64)>,
    cloud_disconnects: f64,
    reconnect_dials: f64,
    app_disconnects: f64,
    resurrections_healed: f64,
    frames_dropped: f64,
    /// `tether_heartbeat_bytes_total`, sent to the cloud / received from it.
    hb_sent: f64,
    hb_received: f64,
    /// `tether_bytes_total` and `tether_frames_total` (all kinds), cloud to app.
    bytes_down: f64,
    frames_down: f64,
}

// === impl Scrape ===

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            let dir = label(labels, "direction");
            match name {
                "tether_cloud_reacked_seconds_sum" => s.reacked_sum = value,
                "tether_cloud_reacked_seconds_count" => s.reacked_count = value,
                "tether_cloud_reacked_seconds_bucket" => {
                    if let Some(le) = label(labels, "le").and_then(|v| v.parse::<f64>().ok()) {
                        s.reacked_buckets.push((le, value));
                    }
                }
                "tether_cloud_disconnects_total" => s.cloud_disconnects += value,
                "tether_cloud_reconnect_attempts_total" => s.reconnect_dials = value,
                "tether_app_disconnects_total" => s.app_disconnects += value,
                "tether_resurrections_healed_total" => s.resurrections_healed = value,
                "tether_frames_dropped_total" => s.frames_dropped += value,
                "tether_heartbeat_bytes_total" => match dir {
                    Some("app_to_cloud") => s.hb_sent = value,
                    Some("cloud_to_app") => s.hb_received = value,
                    _ => {}
                },
                "tether_bytes_total" if dir == Some("cloud_to_app") => s.bytes_down = value,
                "tether_frames_total" if dir == Some("cloud_to_app") => s.frames_down += value,
                _ => {}
            }
        }
        s.reacked_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        s
    }
}

fn table(r: &Report) -> String {
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "tether bench cloud: {} sessions, {} cloud socket drops round-robin (TCP shut, no close frame); transcriptions every {} ms; {} ms after each heal; emulator polled every {} ms",
        r.sessions, r.drops, r.interval_ms, r.gap_ms, r.poll_ms
    ));
    line(format!(
        "{:<40}{:>6}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "(ms)", "n", "p50", "p95", "p99", "max", "mean"
    ));
    for (name, x) in [
        ("drop → re-init seen by the cloud", &r.drop_to_reinit_ms),
        (
            "tether's own (lost → re-acked), per drop",
            &r.tether_reacked.per_drop_ms,
        ),
    ] {
        line(format!(
            "{name:<40}{:>6}{:>9.1}{:>9.1}{:>9.1}{:>9.1}{:>9.1}",
            x.n, x.p50, x.p95, x.p99, x.max, x.mean
        ));
    }
    line(format!(
        "target: p95 drop → re-init ≤ {:.0} ms on loopback: {} (p95 {:.1} ms)",
        r.target_p95_ms,
        if r.target_met { "met" } else { "NOT met" },
        r.drop_to_reinit_ms.p95
    ));
    let le = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("≤ {v:.0}"));
    line(format!(
        "tether_cloud_reacked_seconds: {} heals, mean {:.1} ms, p50 {} ms, p95 {} ms (bucket bounds)",
        r.tether_reacked.count,
        r.tether_reacked.mean_ms,
        le(r.tether_reacked.p50_le_ms),
        le(r.tether_reacked.p95_le_ms)
    ));
    let f = &r.frames;
    line(format!(
        "frames: {} numbered, {} received; missing {} = dropped by the cloud with no socket up {} + lost by Tether {}; duplicates {}; out of order {}",
        f.numbered, f.received, f.missing, f.dropped_by_cloud, f.lost_by_tether, f.duplicates, f.out_of_order
    ));
    line(format!(
        "cloud emulator: inits {}, app_disconnects {}, resurrections {}, superseded-close hazards {} (after drops {:?}), frames sent {}, dropped {}",
        r.cloud.inits, r.cloud.app_disconnects, r.cloud.resurrections, r.cloud.superseded_close_hazards, r.hazard_after_drops, r.cloud.frames_sent, r.cloud.frames_dropped
    ));
    line(format!(
        "app: reconnect attempts {}, socket closes {}, inits sent {}, session incarnations {}",
        r.app.reconnect_attempts, r.app.closes, r.app.inits_sent, r.app.incarnations
    ));
    line(format!(
        "tether: cloud_disconnects {}, reconnect dials {}, resurrections healed {}, app disconnects {}, frames dropped {}",
        r.tether.cloud_disconnects, r.tether.reconnect_dials, r.tether.resurrections_healed, r.tether.app_disconnects, r.tether.frames_dropped
    ));
    let h = &r.heartbeat;
    line(format!(
        "heartbeat (ws ping): 1 session per interval, a transcription every {} ms, {} s window",
        h.stream_interval_ms, h.window_s
    ));
    line(format!(
        "{:<12}{:>7}{:>10}{:>12}{:>14}{:>14}{:>10}{:>14}{:>10}",
        "interval",
        "pings",
        "hb B",
        "stream B",
        "hb B/sess-h",
        "stream B/h",
        "share %",
        "nominal B/h",
        "nom. %"
    ));
    for run in &h.runs {
        line(format!(
            "{:<12}{:>7}{:>10}{:>12}{:>14.0}{:>14.0}{:>10.4}{:>14.0}{:>10.4}",
            format!("{} ms", run.heartbeat_interval_ms),
            run.pings,
            run.heartbeat_bytes,
            run.stream_bytes,
            run.heartbeat_bytes_per_session_hour,
            run.stream_bytes_per_session_hour,
            run.share_pct,
            run.nominal_heartbeat_bytes_per_session_hour,
            run.nominal_share_pct
        ));
    }
    if let Some(d) = h.runs.first() {
        line(format!(
            "target: heartbeat share ≤ {} % at the default interval: {} ({:.4} % measured, {:.4} % nominal)",
            h.target_share_pct,
            if h.target_met { "met" } else { "NOT met" },
            d.share_pct,
            d.nominal_share_pct
        ));
    }
    line(format!("note: {}", h.note));
    line(format!(
        "completed {}/{} drops ({} turns skipped: no cloud socket to drop); run took {:.1} s",
        r.completed_drops, r.drops, r.skipped_no_socket, r.runtime_s
    ));
    if let Some(why) = &r.failure {
        line(format!("STOPPED EARLY: {why}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_exposition() {
        let text = "# TYPE x counter\n\
            tether_cloud_reacked_seconds_sum 0.02\n\
            tether_cloud_reacked_seconds_count 4\n\
            tether_cloud_reacked_seconds_bucket{le=\"0.005\"} 1\n\
            tether_cloud_reacked_seconds_bucket{le=\"0.01\"} 4\n\
            tether_cloud_reacked_seconds_bucket{le=\"+Inf\"} 4\n\
            tether_heartbeat_bytes_total{direction=\"app_to_cloud\"} 12\n\
            tether_heartbeat_bytes_total{direction=\"cloud_to_app\"} 0\n\
            tether_bytes_total{direction=\"cloud_to_app\"} 5000\n\
            tether_bytes_total{direction=\"app_to_cloud\"} 700\n\
            tether_frames_total{direction=\"cloud_to_app\",kind=\"data_stream\"} 20\n\
            tether_frames_total{direction=\"cloud_to_app\",kind=\"binary\"} 3\n\
            tether_cloud_disconnects_total{cause=\"lost\"} 2\n\
            tether_cloud_disconnects_total{cause=\"closed\"} 1\n";
        let s = Scrape::parse(text);
        assert_eq!((s.reacked_sum, s.reacked_count), (0.02, 4.0));
        assert_eq!((s.hb_sent, s.hb_received), (12.0, 0.0));
        assert_eq!((s.bytes_down, s.frames_down), (5000.0, 23.0));
        assert_eq!(s.cloud_disconnects, 3.0);
        assert_eq!(bucket_quantile(&[], &s.reacked_buckets, 0.95), Some(10.0));
    }

    #[test]
    fn counts_gaps_duplicates_and_order() {
        let mut f = Frames::default();
        // 4 never arrived (the cloud dropped it), 6 came twice, 8 after 9.
        count_session(&[1, 2, 3, 5, 6, 6, 7, 9, 8, 10, 11], 10, 1, &mut f);
        assert_eq!(
            (f.numbered, f.received, f.missing, f.dropped_by_cloud),
            (10, 9, 1, 1)
        );
        assert_eq!((f.duplicates, f.out_of_order), (1, 1));
    }
}
