//! `tether bench recovery`: how fast held sessions come back when the app process is
//! SIGKILLed and restarted on the same port (as a pod's container is), and whether any frame
//! is lost or duplicated on the way.
//!
//! The cloud emulator and Tether run in this process; the app simulator runs as a child
//! process (`tether sim app`) so it can be killed for real. Per cycle: read the app's
//! received sequence numbers, SIGKILL it, note the emulator's last sequence number, wait
//! the down time, restart it, time "app listening" (its port accepts or it prints its
//! listening line, whichever is seen first), then poll Tether's `/sessions` until every
//! session's `recoveries` counter moves. Loss is judged only where it is decidable: every
//! frame the emulator numbered after the kill must reach the new process exactly once, and
//! every frame a process received while live must be contiguous.
//!
//! A session that does not recover, or a frame that goes missing, is reported in the
//! figures as seen; nothing here retries around Tether.

use super::exposition::{bucket_quantile, label, sample};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng as _;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::http::HttpClient;
use super::stats::{round3, Summary};
use super::{start_tether, BENCH_API_KEY, PACKAGE, TETHER_GRACE};
use crate::runtime::Running;
use crate::sim::cloud::{CloudSim, CloudSimConfig, StartOutcome};

/// The figure the printout compares against (not asserted): p95 of app listening → replayed.
const TARGET_P95_MS: f64 = 250.0;

/// Bounds on single waits.
const SPAWN_WAIT: Duration = Duration::from_secs(10);
const EXIT_WAIT: Duration = Duration::from_secs(5);
const SETUP_WAIT: Duration = Duration::from_secs(15);
/// How long after recovery the new process may take to receive the frames numbered so far.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// Whole-run bound: the cycle loop stops (and says so) past it.
const RUN_LIMIT: Duration = Duration::from_secs(1800);

/// Flags of `tether bench recovery`.
#[derive(clap::Args, Debug, Clone)]
pub struct RecoveryArgs {
    /// Sessions held across every restart.
    #[arg(long, default_value_t = 5)]
    pub sessions: u32,
    /// Kill/restart cycles.
    #[arg(long, default_value_t = 100)]
    pub cycles: u32,
    /// Time the app stays dead before it is restarted, in ms.
    #[arg(long, default_value_t = 200)]
    pub down_ms: u64,
    /// Up to this much (uniform random) is added to each down time, in ms. With 0, a down
    /// time that is a multiple of the probe period meets the probe at the same phase every
    /// cycle; jitter samples every phase.
    #[arg(long, default_value_t = 0)]
    pub down_jitter_ms: u64,
    /// Period of the emulator's numbered transcriptions per session, in ms.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
    /// Tether's `session.probe_interval_ms` (health probe period while sessions are held).
    #[arg(long, default_value_t = 100)]
    pub probe_ms: u64,
    /// Period of this bench's `/sessions` polls, in ms.
    #[arg(long, default_value_t = 3)]
    pub poll_ms: u64,
    /// A cycle whose sessions have not all recovered by then stops the run, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub recover_timeout_ms: u64,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The app simulator as a child process.
struct AppProcess {
    child: Child,
}

/// Everything one run measured; serialised as the `--json` output.
#[derive(Debug, Serialize)]
struct Report {
    bench: &'static str,
    sessions: u32,
    cycles: u32,
    completed_cycles: u32,
    down_ms: u64,
    down_jitter_ms: u64,
    interval_ms: u64,
    probe_ms: u64,
    poll_ms: u64,
    /// App process listening → each session's recovery seen in `/sessions`, per session and cycle.
    listen_to_replayed_ms: Summary,
    /// SIGKILL → the last session of the cycle seen recovered, per cycle.
    kill_to_all_replayed_ms: Summary,
    /// App process spawned → listening, per cycle (the restart's own cost).
    spawn_to_listen_ms: Summary,
    /// Tether's `tether_recovery_seconds` over the run.
    tether_recovery: TetherRecovery,
    target_p95_ms: f64,
    target_met: bool,
    frames: Frames,
    cloud: CloudTotals,
    tether_frames_dropped: f64,
    /// Why the cycles stopped early, if they did.
    failure: Option<String>,
    runtime_s: f64,
}

/// Tether's own recovery latency: from the app seen healthy again to its first replayed frame.
#[derive(Debug, Default, Serialize)]
struct TetherRecovery {
    count: f64,
    mean_ms: f64,
    /// Histogram bucket bounds at or below which half / 95% of recoveries fell.
    p50_le_ms: Option<f64>,
    p95_le_ms: Option<f64>,
    /// Per-cycle means (sum/count deltas), summarised.
    per_cycle_mean_ms: Summary,
}

/// Frame accounting; see the module doc for what each counts.
#[derive(Debug, Default, Serialize)]
struct Frames {
    /// Sequence numbers whose delivery was verified.
    checked: u64,
    /// `lost_after_kill + lost_live`.
    lost: u64,
    /// Numbered after the kill, never received by the new process.
    lost_after_kill: u64,
    /// Missing from a process's run while it was live.
    lost_live: u64,
    /// Received more than once by one process.
    duplicated: u64,
    /// Received by the old process before the last read and again by the new one.
    redelivered: u64,
    /// Numbered between the last read of the old process and the kill, and not received by
    /// the new one: the old process may or may not have processed them.
    unknown_fate: u64,
}

#[derive(Debug, Default, Serialize)]
struct CloudTotals {
    app_disconnects: u64,
    resurrections: u64,
    frames_dropped: u64,
    inits: u64,
    session_webhooks: u64,
}

/// Per-session bookkeeping across cycles.
struct Tracked {
    id: String,
    /// Every sequence number up to here is known delivered.
    verified_upto: u64,
}

/// What the polls of one cycle saw.
struct Cycle {
    listen_to_replayed: Vec<f64>,
    kill_to_all: f64,
    spawn_to_listen: f64,
}

/// The peers of a run.
struct Rig {
    running: Running,
    cloud: CloudSim,
    app: Option<AppProcess>,
    port: u16,
    http: HttpClient,
    admin: String,
    poll: Duration,
}

/// Runs the recovery benchmark and prints its report.
///
/// # Errors
/// A peer cannot start or the setup does not complete; problems during the cycles are
/// reported in the output instead.
pub async fn run(args: RecoveryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=200).contains(&args.sessions),
        "--sessions must be 1..=200"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.cycles),
        "--cycles must be 1..=10000"
    );
    anyhow::ensure!(args.down_ms <= 30_000, "--down-ms must be at most 30000");
    anyhow::ensure!(
        args.down_jitter_ms <= 30_000,
        "--down-jitter-ms must be at most 30000"
    );
    anyhow::ensure!(
        (1..=10_000).contains(&args.interval_ms),
        "--interval-ms must be 1..=10000"
    );
    anyhow::ensure!(
        (1..=5_000).contains(&args.probe_ms),
        "--probe-ms must be 1..=5000"
    );
    anyhow::ensure!(
        (1..=1_000).contains(&args.poll_ms),
        "--poll-ms must be 1..=1000"
    );
    anyhow::ensure!(
        (100..=120_000).contains(&args.recover_timeout_ms),
        "--recover-timeout-ms must be 100..=120000"
    );
    let started = Instant::now();
    let mut rig = Rig::start(&args).await?;
    let outcome = cycles(&mut rig, &args, started + RUN_LIMIT).await;
    let cloud = cloud_totals(&rig.cloud);
    let scrape = rig.scrape().await;
    rig.shutdown().await;
    let (done, mut report) = outcome?;
    report.cloud = cloud;
    if let Ok(s) = scrape {
        report.tether_frames_dropped = s.dropped;
    }
    report.completed_cycles = done;
    report.runtime_s = round3(started.elapsed().as_secs_f64());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// Sets the sessions up, then runs the cycles. Returns cycles completed and the report
/// (cloud totals and the final scrape are filled in by the caller).
async fn cycles(
    rig: &mut Rig,
    args: &RecoveryArgs,
    deadline: Instant,
) -> anyhow::Result<(u32, Report)> {
    let ids: Vec<String> = (0..args.sessions)
        .map(|i| format!("bench{i}@example.com-{PACKAGE}"))
        .collect();
    for i in 0..args.sessions {
        let user = format!("bench{i}@example.com");
        let outcome = rig.cloud.start_session(&user).await?;
        anyhow::ensure!(
            outcome == StartOutcome::Running,
            "session of {user} did not start: {outcome:?}"
        );
    }
    tracing::info!("bench: sessions started");
    rig.wait_live(&ids).await?;
    tracing::info!("bench: sessions live");
    let mut tracked = rig.wait_first_frames(&ids).await?;

    let mut frames = Frames::default();
    let (mut listen_to, mut kill_to, mut spawn_to, mut tether_means) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let first = rig.scrape().await?;
    let mut failure = None;
    let mut done = 0;
    for c in 1..=args.cycles {
        if Instant::now() >= deadline {
            failure = Some(format!(
                "stopped before cycle {c}: the run exceeded {RUN_LIMIT:?}"
            ));
            break;
        }
        tracing::info!(cycle = c, "bench: killing the app");
        let before = rig.scrape().await?;
        match rig.cycle(args, &mut tracked, &mut frames).await {
            Ok(cycle) => {
                listen_to.extend(cycle.listen_to_replayed);
                kill_to.push(cycle.kill_to_all);
                spawn_to.push(cycle.spawn_to_listen);
                let after = rig.scrape().await?;
                let n = after.rec_count - before.rec_count;
                if n > 0.0 {
                    tether_means.push((after.rec_sum - before.rec_sum) / n * 1e3);
                }
                done = c;
            }
            Err(e) => {
                failure = Some(format!("cycle {c}: {e:#}"));
                break;
            }
        }
    }
    if failure.is_none() {
        // The last process's own run: contiguous and without duplicates.
        let stats = rig.app_stats().await?;
        let seqs = seqs_by_session(&stats);
        for t in &mut tracked {
            let got = seqs.get(&t.id).map(Vec::as_slice).unwrap_or_default();
            check_live(t, got, &mut frames);
        }
    }
    let last = rig.scrape().await?;
    let listen = Summary::of(&listen_to);
    let tether_recovery = TetherRecovery {
        count: last.rec_count - first.rec_count,
        mean_ms: round3(
            ratio_or_zero(
                last.rec_sum - first.rec_sum,
                last.rec_count - first.rec_count,
            ) * 1e3,
        ),
        p50_le_ms: bucket_quantile(&first.buckets, &last.buckets, 0.50),
        p95_le_ms: bucket_quantile(&first.buckets, &last.buckets, 0.95),
        per_cycle_mean_ms: rounded(Summary::of(&tether_means)),
    };
    frames.lost = frames.lost_after_kill + frames.lost_live;
    let report = Report {
        bench: "recovery",
        sessions: args.sessions,
        cycles: args.cycles,
        completed_cycles: done,
        down_ms: args.down_ms,
        down_jitter_ms: args.down_jitter_ms,
        interval_ms: args.interval_ms,
        probe_ms: args.probe_ms,
        poll_ms: args.poll_ms,
        listen_to_replayed_ms: rounded(listen),
        kill_to_all_replayed_ms: rounded(Summary::of(&kill_to)),
        spawn_to_listen_ms: rounded(Summary::of(&spawn_to)),
        tether_recovery,
        target_p95_ms: TARGET_P95_MS,
        target_met: listen.n > 0 && listen.p95 <= TARGET_P95_MS,
        frames,
        cloud: CloudTotals::default(),
        tether_frames_dropped: 0.0,
        failure,
        runtime_s: 0.0,
    };
    Ok((done, report))
}

// === impl Rig ===

impl Rig {
    async fn start(args: &RecoveryArgs) -> anyhow::Result<Rig> {
        let port = free_port()?;
        // The app first, so Tether's first health probe finds it up.
        let (app, _, _) = AppProcess::spawn(port).await?;
        let extra = format!(
            "session:\n  hold_window_ms: 60000\n  probe_interval_ms: {}\n",
            args.probe_ms
        );
        let running = match start_tether(&format!("http://127.0.0.1:{port}"), &extra).await {
            Ok(r) => r,
            Err(e) => {
                app.kill().await;
                return Err(e);
            }
        };
        let cfg = CloudSimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_url: Some(format!("http://{}/webhook", running.public)),
            package_name: PACKAGE.to_owned(),
            api_key: BENCH_API_KEY.to_owned(),
            transcription_interval_ms: Some(args.interval_ms),
            resurrect: true,
            ..Default::default()
        };
        let cloud = match CloudSim::start(cfg).await {
            Ok(c) => c,
            Err(e) => {
                running.shutdown(TETHER_GRACE).await;
                app.kill().await;
                return Err(e);
            }
        };
        let admin = format!("http://{}", running.admin);
        Ok(Rig {
            running,
            cloud,
            app: Some(app),
            port,
            http: HttpClient::new(),
            admin,
            poll: Duration::from_millis(args.poll_ms),
        })
    }

    /// One kill/restart cycle; errors end the run (a session that never recovered).
    async fn cycle(
        &mut self,
        args: &RecoveryArgs,
        tracked: &mut [Tracked],
        frames: &mut Frames,
    ) -> anyhow::Result<Cycle> {
        // The old process's record, as late as possible before the kill.
        let old = seqs_by_session(&self.app_stats().await?);
        let before = self.recoveries().await?;
        let t_kill = Instant::now();
        if let Some(app) = self.app.take() {
            app.kill().await;
        }
        // Everything numbered after this reached no process yet: the new one must get it.
        let at_kill: Vec<u64> = tracked.iter().map(|t| self.last_seq(&t.id)).collect();
        for t in tracked.iter_mut() {
            let got = old.get(&t.id).map(Vec::as_slice).unwrap_or_default();
            check_live(t, got, frames);
        }
        let jitter = if args.down_jitter_ms > 0 {
            rand::rng().random_range(0..=args.down_jitter_ms)
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(args.down_ms + jitter)).await;

        let (app, t_spawn, t_listen) = AppProcess::spawn(self.port).await?;
        self.app = Some(app);
        let mut seen: HashMap<String, Instant> = HashMap::new();
        let limit = t_listen + Duration::from_millis(args.recover_timeout_ms);
        while seen.len() < tracked.len() {
            if Instant::now() >= limit {
                let rows = self.rows().await.unwrap_or_default();
                let stuck: Vec<String> = tracked
                    .iter()
                    .filter(|t| !seen.contains_key(&t.id))
                    .map(|t| match rows.get(&t.id) {
                        Some((state, n)) => format!("{} (state {state}, recoveries {n})", t.id),
                        None => format!("{} (not in /sessions)", t.id),
                    })
                    .collect();
                anyhow::bail!(
                    "not recovered {} ms after the app listened: {}",
                    args.recover_timeout_ms,
                    stuck.join(", ")
                );
            }
            let rows = self.recoveries().await?;
            let now = Instant::now();
            for t in tracked.iter() {
                let moved =
                    rows.get(&t.id).copied().unwrap_or(0) > before.get(&t.id).copied().unwrap_or(0);
                if moved {
                    seen.entry(t.id.clone()).or_insert(now);
                }
            }
            tokio::time::sleep(self.poll).await;
        }
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let listen_to_replayed: Vec<f64> = seen.values().map(|t| ms(t_listen, *t)).collect();
        let last = seen.values().copied().max().unwrap_or(t_listen);

        // Every frame numbered up to now must reach the new process; wait for it (bounded).
        let targets: Vec<u64> = tracked.iter().map(|t| self.last_seq(&t.id)).collect();
        let new = self.catch_up(tracked, &targets).await?;
        for (i, t) in tracked.iter_mut().enumerate() {
            let got: HashSet<u64> = new
                .get(&t.id)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            let prior: HashSet<u64> = old
                .get(&t.id)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            let old_max = prior.iter().copied().max().unwrap_or(t.verified_upto);
            let (k, target) = (at_kill[i], targets[i]);
            frames.lost_after_kill += (k + 1..=target).filter(|s| !got.contains(s)).count() as u64;
            frames.checked += target.saturating_sub(k);
            frames.unknown_fate += (old_max + 1..=k).filter(|s| !got.contains(s)).count() as u64;
            frames.redelivered += got.intersection(&prior).count() as u64;
            t.verified_upto = t.verified_upto.max(target);
        }
        Ok(Cycle {
            listen_to_replayed,
            kill_to_all: ms(t_kill, last),
            spawn_to_listen: ms(t_spawn, t_listen),
        })
    }

    /// The emulator's last numbered transcription of a session (0 if unknown).
    fn last_seq(&self, id: &str) -> u64 {
        self.cloud.stats(id).map_or(0, |s| s.last_transcription_seq)
    }

    /// Polls the app until each session has received up to its target; returns what it
    /// received. A session that never gets there is left for the loss count to report.
    async fn catch_up(
        &self,
        tracked: &[Tracked],
        targets: &[u64],
    ) -> anyhow::Result<HashMap<String, Vec<u64>>> {
        let limit = Instant::now() + CATCH_UP_WAIT;
        loop {
            let seqs = seqs_by_session(&self.app_stats().await?);
            let caught = tracked.iter().zip(targets).all(|(t, target)| {
                seqs.get(&t.id)
                    .and_then(|v| v.iter().copied().max())
                    .is_some_and(|m| m >= *target)
            });
            if caught || Instant::now() >= limit {
                return Ok(seqs);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_live(&self, ids: &[String]) -> anyhow::Result<()> {
        let limit = Instant::now() + SETUP_WAIT;
        loop {
            let rows = self.rows().await?;
            if ids
                .iter()
                .all(|id| rows.get(id).is_some_and(|(state, _)| state == "live"))
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < limit,
                "sessions not live in Tether after {SETUP_WAIT:?}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every session has received a transcription; its first one starts the
    /// verified range.
    async fn wait_first_frames(&self, ids: &[String]) -> anyhow::Result<Vec<Tracked>> {
        let limit = Instant::now() + SETUP_WAIT;
        loop {
            let seqs = seqs_by_session(&self.app_stats().await?);
            let firsts: Vec<Option<u64>> = ids
                .iter()
                .map(|id| seqs.get(id).and_then(|v| v.iter().copied().min()))
                .collect();
            if firsts.iter().all(Option::is_some) {
                return Ok(ids
                    .iter()
                    .zip(firsts)
                    .map(|(id, first)| Tracked {
                        id: id.clone(),
                        verified_upto: first.unwrap_or(1).saturating_sub(1),
                    })
                    .collect());
            }
            anyhow::ensure!(
                Instant::now() < limit,
                "no transcription reached the app within {SETUP_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn app_stats(&self) -> anyhow::Result<Value> {
        self.http
            .get_json(&format!("http://127.0.0.1:{}/sim/stats", self.port))
            .await
    }

    /// `/sessions`: state and recoveries by session id.
    async fn rows(&self) -> anyhow::Result<BTreeMap<String, (String, u64)>> {
        let v = self
            .http
            .get_json(&format!("{}/sessions", self.admin))
            .await?;
        let rows = v
            .get("sessions")
            .and_then(Value::as_array)
            .context("/sessions has no sessions array")?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let id = r.get("session_id")?.as_str()?.to_owned();
                let state = r
                    .get("state")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let n = r.get("recoveries").and_then(Value::as_u64).unwrap_or(0);
                Some((id, (state, n)))
            })
            .collect())
    }

    async fn recoveries(&self) -> anyhow::Result<HashMap<String, u64>> {
        Ok(self
            .rows()
            .await?
            .into_iter()
            .map(|(id, (_, n))| (id, n))
            .collect())
    }

    async fn scrape(&self) -> anyhow::Result<Scrape> {
        Ok(Scrape::parse(
            &self
                .http
                .get_text(&format!("{}/metrics", self.admin))
                .await?,
        ))
    }

    /// Tether first (it tells both sides), then the app process, then the emulator.
    async fn shutdown(self) {
        self.running.shutdown(TETHER_GRACE).await;
        if let Some(app) = self.app {
            app.kill().await;
        }
        self.cloud.shutdown().await;
    }
}

/// Checks a process's own run: every number in `(verified_upto, max]` received, none twice.
fn check_live(t: &mut Tracked, got: &[u64], frames: &mut Frames) {
    let mut sorted = got.to_vec();
    sorted.sort_unstable();
    let unique = {
        let mut u = sorted.clone();
        u.dedup();
        u
    };
    frames.duplicated += (sorted.len() - unique.len()) as u64;
    let Some(&max) = unique.last() else {
        return;
    };
    if max > t.verified_upto {
        let set: HashSet<u64> = unique.iter().copied().collect();
        frames.lost_live += (t.verified_upto + 1..=max)
            .filter(|s| !set.contains(s))
            .count() as u64;
        frames.checked += max - t.verified_upto;
        t.verified_upto = max;
    }
}

/// Transcription sequence numbers per session id, across every incarnation the app
/// process recorded, in arrival order.
fn seqs_by_session(stats: &Value) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    let sessions = stats
        .get("sessions")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for s in sessions {
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

fn cloud_totals(cloud: &CloudSim) -> CloudTotals {
    let mut t = CloudTotals::default();
    for s in cloud.all_stats() {
        t.app_disconnects += u64::from(s.app_disconnects);
        t.resurrections += u64::from(s.resurrections);
        t.frames_dropped += s.frames_dropped;
        t.inits += u64::from(s.inits);
        t.session_webhooks += u64::from(s.session_webhooks);
    }
    t
}

/// A loopback port free a moment ago; the app keeps it across restarts, like a pod.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

fn ratio_or_zero(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
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

// === impl AppProcess ===

impl AppProcess {
    /// Starts `tether sim app` on `port`; returns it with the spawn instant and the instant
    /// it was first seen listening (port accepts, or listening line printed).
    async fn spawn(port: u16) -> anyhow::Result<(AppProcess, Instant, Instant)> {
        let exe = std::env::current_exe().context("locating the tether binary")?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "sim",
            "app",
            "--listen",
            &format!("127.0.0.1:{port}"),
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
        let t_spawn = Instant::now();
        let mut child = cmd.spawn().context("starting the app simulator")?;
        let stdout = child.stdout.take().context("app simulator stdout")?;
        let (tx, printed) = oneshot::channel::<Instant>();
        // Reads to the end so the child never blocks on a full pipe; ends when it dies.
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("app-sim listening on") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Instant::now());
                    }
                }
            }
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let accepts = async {
            loop {
                if TcpStream::connect(addr).await.is_ok() {
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let seen = tokio::time::timeout(SPAWN_WAIT, async {
            tokio::select! {
                t = accepts => Ok(t),
                r = printed => r.map_err(|_| anyhow::anyhow!("the app simulator exited before listening")),
            }
        })
        .await;
        let app = AppProcess { child };
        match seen {
            Ok(Ok(t)) => Ok((app, t_spawn, t)),
            Ok(Err(e)) => {
                app.kill().await;
                Err(e)
            }
            Err(_) => {
                app.kill().await;
                anyhow::bail!("the app simulator did not listen on {addr} within {SPAWN_WAIT:?}")
            }
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
    rec_sum: f64,
    rec_count: f64,
    /// `(le, cumulative count)` of `tether_recovery_seconds`.
    buckets: Vec<(f64, f64)>,
    dropped: f64,
}

// === impl Scrape ===

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            match name {
                "tether_recovery_seconds_sum" => s.rec_sum = value,
                "tether_recovery_seconds_count" => s.rec_count = value,
                "tether_recovery_seconds_bucket" => {
                    if let Some(le) = label(labels, "le").and_then(|v| v.parse::<f64>().ok()) {
                        s.buckets.push((le, value));
                    }
                }
                "tether_frames_dropped_total" => s.dropped += value,
                _ => {}
            }
        }
        s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        s
    }
}

fn table(r: &Report) -> String {
    let what = format!("{} sessions, {} cycles", r.sessions, r.cycles);
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!(
        "tether bench recovery: {what}: SIGKILL, {} ms down (+ up to {} ms jitter), restart on the same port; transcriptions every {} ms; Tether probe {} ms; /sessions polled every {} ms",
        r.down_ms, r.down_jitter_ms, r.interval_ms, r.probe_ms, r.poll_ms
    ));
    line(format!(
        "{:<34}{:>6}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "(ms)", "n", "p50", "p95", "p99", "max", "mean"
    ));
    for (name, x) in [
        ("app listening → replayed", &r.listen_to_replayed_ms),
        ("kill → all sessions replayed", &r.kill_to_all_replayed_ms),
        ("app spawn → listening", &r.spawn_to_listen_ms),
        (
            "tether's own, per-cycle mean",
            &r.tether_recovery.per_cycle_mean_ms,
        ),
    ] {
        line(format!(
            "{name:<34}{:>6}{:>9.1}{:>9.1}{:>9.1}{:>9.1}{:>9.1}",
            x.n, x.p50, x.p95, x.p99, x.max, x.mean
        ));
    }
    let le = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("≤ {v:.0}"));
    line(format!(
        "target: p95 app listening → replayed ≤ {:.0} ms: {} (p95 {:.1} ms)",
        r.target_p95_ms,
        if r.target_met { "met" } else { "NOT met" },
        r.listen_to_replayed_ms.p95
    ));
    line(format!(
        "tether_recovery_seconds: {} recoveries, mean {:.1} ms, p50 {} ms, p95 {} ms (bucket bounds; from the app seen healthy)",
        r.tether_recovery.count,
        r.tether_recovery.mean_ms,
        le(r.tether_recovery.p50_le_ms),
        le(r.tether_recovery.p95_le_ms)
    ));
    let f = &r.frames;
    line(format!(
        "frames: {} verified; lost {} (after kill {}, while live {}); duplicated {}; redelivered across processes {}; unknown fate {}",
        f.checked, f.lost, f.lost_after_kill, f.lost_live, f.duplicated, f.redelivered, f.unknown_fate
    ));
    line(format!(
        "cloud emulator: app_disconnects {}, resurrections {}, frames dropped {}, inits {}, session webhooks {}; tether_frames_dropped_total {}",
        r.cloud.app_disconnects, r.cloud.resurrections, r.cloud.frames_dropped, r.cloud.inits, r.cloud.session_webhooks, r.tether_frames_dropped
    ));
    line(format!(
        "completed {}/{} cycles in {:.1} s",
        r.completed_cycles, r.cycles, r.runtime_s
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
            tether_recovery_seconds_sum 0.5\n\
            tether_recovery_seconds_count 4\n\
            tether_recovery_seconds_bucket{le=\"0.1\"} 1\n\
            tether_recovery_seconds_bucket{le=\"0.25\"} 4\n\
            tether_recovery_seconds_bucket{le=\"+Inf\"} 4\n\
            tether_frames_dropped_total{stream=\"audio\",reason=\"overflow\"} 3\n\
            tether_frames_dropped_total{stream=\"transcription\",reason=\"hold_expired\"} 2\n";
        let s = Scrape::parse(text);
        assert_eq!((s.rec_sum, s.rec_count, s.dropped), (0.5, 4.0, 5.0));
        assert_eq!(s.buckets.len(), 3);
        assert_eq!(bucket_quantile(&[], &s.buckets, 0.5), Some(250.0));
        assert_eq!(bucket_quantile(&[], &s.buckets, 0.25), Some(100.0));
        assert_eq!(bucket_quantile(&s.buckets, &s.buckets, 0.5), None);
    }

    #[test]
    fn live_check_counts_gaps_and_duplicates() {
        let mut t = Tracked {
            id: "s".into(),
            verified_upto: 2,
        };
        let mut f = Frames::default();
        check_live(&mut t, &[1, 2, 3, 5, 5, 6], &mut f);
        assert_eq!(
            (f.lost_live, f.duplicated, f.checked, t.verified_upto),
            (1, 1, 4, 6)
        );
    }
}
