//! `tether demo`: the cloud emulator, an SDK-like app and Tether wired together on free
//! loopback ports, with a readable timeline of what happens when the app is SIGKILLed
//! mid-stream and restarted.
//!
//! The cloud emulator and Tether run in this process; the app runs as a child process
//! (`tether sim app`) so that it can really be killed. Nothing leaves 127.0.0.1, every wait
//! is bounded, and the whole run has a deadline. The exit status is 0 only when the run
//! showed what the summary claims: the cloud never noticed, nothing sent after the kill was
//! lost or duplicated, and Tether replayed what it buffered.
//!
//! Layout: `narrate` prints the timeline (and narrates Tether's own events), `peers` runs
//! the app process and reads the peers' JSON, `report` is the pure accounting.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::time::{sleep, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::{self, Running};
use crate::sim::app::SessionState;
use crate::sim::cloud::{
    CloudSim, CloudSimConfig, SessionStats as CloudStats, StartOutcome, DEFAULT_API_KEY,
    DEFAULT_PACKAGE,
};

mod narrate;
mod peers;
mod report;

use narrate::{Facts, Narrator, TetherFacts, Who};
use peers::{transcriptions, AppProcess, Http, Row};
use report::{runs, Accounting, Observed};

/// The demo's user; the session id is `<user>-<package>` (PROTOCOL §1).
const USER: &str = "alice@example.com";
/// Admin and stats polling period while waiting for a transition.
const POLL: Duration = Duration::from_millis(25);
/// Bound on the cloud's `startApp` (its own start timeout is 5 s; retries add a little).
const START_WAIT: Duration = Duration::from_secs(15);
/// Bound on small transitions: subscriptions arriving, Tether seeing the app gone, a close.
const STEP_WAIT: Duration = Duration::from_secs(5);
/// Bound on the restarted app being live again (process start, probe, webhook, replay).
const RECOVER_WAIT: Duration = Duration::from_secs(15);
/// Time given to Tether's tasks when the demo shuts it down.
const TEARDOWN_GRACE: Duration = Duration::from_secs(3);
/// Slack on top of the planned phases before the whole run is abandoned.
const RUN_SLACK: Duration = Duration::from_secs(90);

/// Options of `tether demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// A shorter run (about 10 s instead of about 20 s).
    #[arg(long)]
    pub quick: bool,
    /// How long the app stays down after the SIGKILL, in seconds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub down_secs: u64,
    /// Period of the cloud's numbered transcriptions, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(20..=1000))]
    pub interval_ms: u64,
    /// Also print Tether's and the simulators' own logs (info, or RUST_LOG) on stderr.
    #[arg(long)]
    pub verbose: bool,
}

/// The run's timings and the Tether settings that follow from them.
#[derive(Debug, Clone)]
struct Plan {
    live_secs: u64,
    down_secs: u64,
    after_secs: u64,
    interval_ms: u64,
    verbose: bool,
}

/// Everything the demo started; each part is stopped by [`Demo::teardown`] on every path.
#[derive(Default)]
struct Stack {
    tether: Option<Running>,
    cloud: Option<CloudSim>,
    app: Option<AppProcess>,
}

/// Addresses fixed once the stack is up.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    app: SocketAddr,
    admin: SocketAddr,
}

/// The demo's state across its phases.
struct Demo {
    n: Arc<Narrator>,
    facts: Facts,
    narrated: bool,
    http: Http,
    plan: Plan,
    session_id: String,
    stack: Stack,
}

/// What the run showed, for the summary.
struct Outcome {
    cloud_during: CloudStats,
    cloud_final: CloudStats,
    tether: TetherFacts,
    recoveries: u64,
    /// Tether's buffer at the last look before the restart: frames, oldest in ms.
    buffered: (u64, u64),
    observed: Observed,
    accounting: Accounting,
    stop: Stop,
}

/// What the clean stop showed.
#[derive(Debug, Default)]
struct Stop {
    /// `stop_request` webhooks the restarted app received.
    app_stop_requests: u64,
    /// The app's session reached a final state (no reconnect).
    app_stopped: bool,
    /// Tether no longer lists the session.
    tether_ended: bool,
    /// The emulator's state for the session afterwards.
    cloud_state: String,
}

/// Runs the demo. `Ok` only when the run showed what it claims.
///
/// # Errors
/// A part failed to start, a step did not happen in time, the run was interrupted, or the
/// summary found a loss, a duplicate or a cloud-visible disconnect.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let n = Arc::new(Narrator::new());
    let facts: Facts = Arc::new(Mutex::new(TetherFacts::default()));
    let narrated = narrate::install(n.clone(), facts.clone(), args.verbose);
    let plan = Plan::from(&args);
    let mut demo = Demo {
        n: n.clone(),
        facts,
        narrated,
        http: Http::new(),
        session_id: format!("{USER}-{DEFAULT_PACKAGE}"),
        plan: plan.clone(),
        stack: Stack::default(),
    };
    n.plain(&format!(
        "tether demo: an app server is SIGKILLed mid-stream and restarted while Tether keeps \
         the cloud's session alive.\nEverything runs on 127.0.0.1 (free ports); about {} s; \
         Ctrl-C stops it.",
        plan.expected_secs()
    ));
    let limit = Duration::from_secs(plan.live_secs + plan.down_secs + plan.after_secs) + RUN_SLACK;
    let result = tokio::select! {
        r = tokio::time::timeout(limit, demo.scenario()) => {
            r.unwrap_or_else(|_| Err(anyhow!("the demo overran its {limit:?} bound")))
        }
        signal = interrupted() => Err(anyhow!("interrupted by {signal}")),
    };
    if let Err(e) = &result {
        n.say(Who::Demo, format!("stopping early: {e:#}"));
    }
    demo.teardown().await;
    let outcome = result?;
    let failures = demo.summary(&outcome);
    if failures.is_empty() {
        Ok(())
    } else {
        bail!(
            "the demo did not show what it claims: {}",
            failures.join("; ")
        )
    }
}

/// Waits for Ctrl-C (or SIGTERM on Unix); returns its name. Never resolves if signals
/// cannot be installed, so a missing handler is not mistaken for an interrupt.
async fn interrupted() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                r = tokio::signal::ctrl_c() => match r {
                    Ok(()) => "Ctrl-C",
                    Err(_) => { term.recv().await; "SIGTERM" }
                },
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
    "Ctrl-C"
}

// === impl Plan ===

impl From<&DemoArgs> for Plan {
    fn from(args: &DemoArgs) -> Plan {
        let (live_secs, after_secs) = if args.quick { (3, 3) } else { (9, 7) };
        Plan {
            live_secs,
            down_secs: args.down_secs,
            after_secs,
            interval_ms: args.interval_ms,
            verbose: args.verbose,
        }
    }
}

impl Plan {
    /// Rough wall-clock length: the phases plus start, recovery and stop.
    fn expected_secs(&self) -> u64 {
        self.live_secs + self.down_secs + self.after_secs + 1
    }

    /// Hold long enough that the planned outage never reaches the hold window.
    fn hold_window_ms(&self) -> u64 {
        ((self.down_secs + 30) * 1000).min(300_000)
    }

    /// Room for every frame sent while the app is down, plus the restart, so the buffer's
    /// overflow policy never decides the demo's outcome.
    fn buffer_frames(&self) -> u64 {
        (self.down_secs + 20) * 1000 / self.interval_ms + 100
    }

    /// Tether's configuration: every listener on a free loopback port, and user ids shown
    /// in `/sessions` (the demo reads its session's row there by id).
    fn tether_yaml(&self, app: SocketAddr) -> String {
        let frames = self.buffer_frames();
        format!(
            "version: 1\n\
             listen:\n  public: \"127.0.0.1:0\"\n  local: \"127.0.0.1:0\"\n  admin: \"127.0.0.1:0\"\n\
             app:\n  url: \"http://{app}\"\n  package_name: \"{DEFAULT_PACKAGE}\"\n\
             admin:\n  show_user_ids: true\n\
             session:\n  hold_window_ms: {hold}\n\
             buffer:\n  down_max_frames: {frames}\n  down_max_bytes: {bytes}\n  down_max_age_ms: {hold}\n",
            hold = self.hold_window_ms(),
            bytes = frames * 1024,
        )
    }
}

// === impl Demo ===

impl Demo {
    /// The timeline. Each step either happens within its bound or ends the run with an error.
    async fn scenario(&mut self) -> anyhow::Result<Outcome> {
        let addrs = self.start().await?;
        self.open_session(addrs).await?;

        self.n.heading(&format!(
            "steady stream ({} s): counters once a second",
            self.plan.live_secs
        ));
        self.watch(addrs, self.plan.live_secs, true, None).await;

        self.n.heading(&format!(
            "the crash: SIGKILL the app, keep it down {} s",
            self.plan.down_secs
        ));
        let (old_seen, kill_seq, killed_at) = self.crash(addrs).await?;
        let buffered = self
            .watch(addrs, self.plan.down_secs, false, Some(killed_at))
            .await
            .map_or((0, 0), |r| (r.buffered_frames, r.oldest_buffered_ms));
        let cloud = self.cloud_stats()?;
        self.n.say(
            Who::Cloud,
            format!(
                "meanwhile sent #{}..#{} into the same socket and saw app disconnects: {}, \
                 resurrections: {} (nothing to notice)",
                kill_seq + 1,
                cloud.last_transcription_seq,
                cloud.app_disconnects,
                cloud.resurrections
            ),
        );

        self.n.heading("restart on the same port");
        self.restart(addrs).await?;

        self.n
            .heading(&format!("streaming on ({} s)", self.plan.after_secs));
        self.watch(addrs, self.plan.after_secs, true, None).await;

        let (observed, cloud_during, recoveries) = self.account(addrs, old_seen, kill_seq).await?;
        self.n.heading("clean stop");
        let stop = self.stop(addrs).await?;
        let cloud_final = self.cloud_stats()?;
        let accounting = observed.account();
        Ok(Outcome {
            cloud_during,
            cloud_final,
            tether: narrate::snapshot(&self.facts),
            recoveries,
            buffered,
            observed,
            accounting,
            stop,
        })
    }

    /// Starts Tether, the app process and the cloud emulator, in that order: the emulator's
    /// webhook URL is Tether's public address, known only once Tether has bound port 0.
    async fn start(&mut self) -> anyhow::Result<Addrs> {
        self.n.heading("start: Tether, the app, the cloud emulator");
        let app = peers::free_port()?;
        let yaml = self.plan.tether_yaml(app);
        // The emulated cloud listens on a loopback port chosen at run time.
        let env = |k: &str| {
            (k == "TETHER_CLOUD_ALLOWED_ORIGINS").then(|| crate::bench::LOOPBACK_CLOUDS.to_string())
        };
        let cfg = Config::from_sources(Some(&yaml), "demo", &env)
            .context("the demo's Tether configuration is invalid")?;
        let running = runtime::start(cfg, CancellationToken::new())
            .await
            .context("Tether did not start")?;
        let (public, local, admin) = (running.public, running.local, running.admin);
        self.stack.tether = Some(running);
        self.n.say(
            Who::Tether,
            format!(
                "listening: public {public} (the cloud's side: /webhook, and a proxy to the app), \
                 local {local} (the app's \"cloud\"), admin {admin} (/sessions, /metrics)"
            ),
        );
        self.n.say(
            Who::Tether,
            format!(
                "will hold a session up to {} s while its app is away, buffering up to {} frames",
                self.plan.hold_window_ms() / 1000,
                self.plan.buffer_frames()
            ),
        );
        if !self.narrated {
            self.n.say(
                Who::Demo,
                "(a tracing subscriber was already installed: Tether's own events are not \
                 narrated; its state is read from /sessions)",
            );
        }

        let proc =
            AppProcess::spawn(app, DEFAULT_PACKAGE, DEFAULT_API_KEY, self.plan.verbose).await?;
        self.n.say(
            Who::App,
            format!(
                "process pid {} listening on {app}: an app server that behaves like one built on \
                 @mentra/sdk 2.1.29, subscribing to transcription:en-US",
                proc.pid
            ),
        );
        self.stack.app = Some(proc);

        let cloud = CloudSim::start(CloudSimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            webhook_url: Some(format!("http://{public}/webhook")),
            package_name: DEFAULT_PACKAGE.to_owned(),
            api_key: DEFAULT_API_KEY.to_owned(),
            transcription_interval_ms: Some(self.plan.interval_ms),
            ..CloudSimConfig::default()
        })
        .await
        .context("the cloud emulator did not start")?;
        self.n.say(
            Who::Cloud,
            format!(
                "emulator on {}; the app's webhook URL it knows is http://{public}/webhook \
                 (Tether's, not the app's)",
                cloud.addr()
            ),
        );
        self.stack.cloud = Some(cloud);
        Ok(Addrs { app, admin })
    }

    /// The cloud starts the app for the user; waits for the subscription that starts the stream.
    async fn open_session(&self, addrs: Addrs) -> anyhow::Result<()> {
        self.n.heading("session start");
        let cloud = self.cloud()?;
        self.n.say(
            Who::Cloud,
            format!(
                "{USER} opens the app: POST session_request to the webhook, websocket URL {}",
                cloud.ws_url()
            ),
        );
        let outcome = tokio::time::timeout(START_WAIT, cloud.start_session(USER))
            .await
            .map_err(|_| anyhow!("the cloud's start did not finish within {START_WAIT:?}"))??;
        if outcome != StartOutcome::Running {
            bail!("the cloud's start ended with {outcome:?}, expected Running");
        }
        self.n.say(
            Who::Cloud,
            "a valid tpa_connection_init arrived (through Tether): tpa_connection_ack sent, the \
             app is running",
        );
        // The cloud's start resolves on the init; the ack reaches the app a moment later.
        let connected = self
            .poll(STEP_WAIT, || async {
                let stats = self.http.app_stats(addrs.app).await.ok()?;
                let s = stats.session(&self.session_id)?;
                (s.acks_received >= 1).then(|| s.ws_url.clone())
            })
            .await
            .ok_or_else(|| anyhow!("the app did not receive its ack within {STEP_WAIT:?}"))?;
        self.n.say(
            Who::App,
            format!(
                "got the webhook with websocket URL {connected} (Tether's local listener, not \
                 the cloud); connected and acked"
            ),
        );
        let subscribed = self
            .poll(STEP_WAIT, || async {
                self.cloud_stats()
                    .ok()
                    .filter(|s| !s.subscriptions.is_empty())
            })
            .await
            .ok_or_else(|| anyhow!("the app did not subscribe within {STEP_WAIT:?}"))?;
        let subs: Vec<String> = subscribed
            .subscriptions
            .iter()
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
            .collect();
        self.n.say(
            Who::Cloud,
            format!(
                "the app subscribed to [{}]: streaming a numbered final transcription every {} ms",
                subs.join(", "),
                self.plan.interval_ms
            ),
        );
        Ok(())
    }

    /// SIGKILLs the app right after reading what it has received; returns that record, the
    /// cloud's last seq once the process is gone, and when that was.
    async fn crash(&mut self, addrs: Addrs) -> anyhow::Result<(Vec<u64>, u64, Instant)> {
        let before = self
            .http
            .app_stats(addrs.app)
            .await
            .context("reading the app's stats before the kill")?;
        let old_seen = transcriptions(&before, &self.session_id);
        let mut proc = self
            .stack
            .app
            .take()
            .ok_or_else(|| anyhow!("no app process to kill"))?;
        self.n.say(
            Who::Demo,
            format!(
                "SIGKILL app pid {} (at our last look, a moment ago, it had received {} \
                 transcriptions, last #{})",
                proc.pid,
                old_seen.len(),
                old_seen.last().copied().unwrap_or(0)
            ),
        );
        let status = proc.kill().await;
        let killed_at = Instant::now();
        let kill_seq = self.cloud_stats()?.last_transcription_seq;
        self.n.say(
            Who::Demo,
            format!("the process is gone ({status}); the cloud had sent up to #{kill_seq}"),
        );
        self.poll(STEP_WAIT, || async {
            self.row(addrs).await.filter(|r| r.state == "app_down")
        })
        .await
        .ok_or_else(|| {
            anyhow!("Tether did not report app_down within {STEP_WAIT:?} of the kill")
        })?;
        Ok((old_seen, kill_seq, killed_at))
    }

    /// Starts a new app process on the same address and waits for Tether to be live again.
    async fn restart(&mut self, addrs: Addrs) -> anyhow::Result<()> {
        let proc = AppProcess::spawn(
            addrs.app,
            DEFAULT_PACKAGE,
            DEFAULT_API_KEY,
            self.plan.verbose,
        )
        .await?;
        let up_at = Instant::now();
        self.n.say(
            Who::App,
            format!(
                "new process pid {} listening on {} (the same address, like a restarted \
                 container); it knows no session",
                proc.pid, addrs.app
            ),
        );
        self.stack.app = Some(proc);
        let row = self
            .poll(RECOVER_WAIT, || async {
                self.row(addrs)
                    .await
                    .filter(|r| r.state == "live" && r.recoveries >= 1)
            })
            .await
            .ok_or_else(|| {
                anyhow!("Tether was not live again within {RECOVER_WAIT:?} of the app's restart")
            })?;
        self.n.say(
            Who::Tether,
            format!(
                "/sessions: {}, recoveries {}, {} ms after the new process was listening",
                row.state,
                row.recoveries,
                up_at.elapsed().as_millis()
            ),
        );
        match self.http.app_stats(addrs.app).await {
            Ok(stats) => {
                let got = transcriptions(&stats, &self.session_id);
                self.n.say(
                    Who::App,
                    format!(
                        "session_request webhooks received: {} (re-sent by Tether; the cloud sent \
                         none); acks: {}; first transcription since the restart: #{}",
                        stats.http.session_requests,
                        stats
                            .session(&self.session_id)
                            .map_or(0, |s| s.acks_received),
                        got.first().copied().unwrap_or(0)
                    ),
                );
            }
            Err(e) => self.n.say(Who::App, format!("stats unavailable: {e:#}")),
        }
        Ok(())
    }

    /// Reads everything the loss accounting needs while the stream still runs: the cloud's
    /// last seq, then what the new process received once it caught up with it (bounded).
    async fn account(
        &self,
        addrs: Addrs,
        old_seen: Vec<u64>,
        kill_seq: u64,
    ) -> anyhow::Result<(Observed, CloudStats, u64)> {
        let cloud_during = self.cloud_stats()?;
        let last_sent = cloud_during.last_transcription_seq;
        let caught_up = self
            .poll(STEP_WAIT, || async {
                let stats = self.http.app_stats(addrs.app).await.ok()?;
                let got = transcriptions(&stats, &self.session_id);
                got.iter().any(|s| *s >= last_sent).then_some(got)
            })
            .await;
        let new_seen = match caught_up {
            Some(got) => got,
            // Account with what arrived; the missing tail shows up as lost.
            None => transcriptions(&self.http.app_stats(addrs.app).await?, &self.session_id),
        };
        let recoveries = self.row(addrs).await.map_or(0, |r| r.recoveries);
        let observed = Observed {
            old_seen,
            kill_seq,
            new_seen,
            last_sent,
        };
        Ok((observed, cloud_during, recoveries))
    }

    /// The user stops the app: the stop must reach the app, the app must not reconnect, and
    /// Tether must end the session rather than hold it.
    async fn stop(&self, addrs: Addrs) -> anyhow::Result<Stop> {
        self.n.say(
            Who::Cloud,
            "the user stops the app: POST stop_request (awaited), then app_stopped and close \
             1000 \"App stopped\" on its socket",
        );
        tokio::time::timeout(STEP_WAIT, self.cloud()?.stop_session(&self.session_id))
            .await
            .map_err(|_| anyhow!("the cloud's stop did not finish within {STEP_WAIT:?}"))??;
        let ended = self
            .poll(STEP_WAIT, || async {
                let stats = self.http.app_stats(addrs.app).await.ok()?;
                let s = stats.session(&self.session_id)?;
                let done = matches!(s.state, SessionState::Stopped | SessionState::Terminated);
                done.then(|| (stats.http.stop_requests, s.clone()))
            })
            .await;
        let mut stop = Stop::default();
        match ended {
            Some((stop_requests, s)) => {
                stop.app_stop_requests = stop_requests;
                stop.app_stopped = true;
                let close = s.closes.last().map_or_else(
                    // The SDK's default onStop disconnects on the webhook, before the cloud's
                    // close can arrive; then there is no close frame to record.
                    || {
                        "it closed its own socket first, as the SDK's default onStop does"
                            .to_owned()
                    },
                    |c| format!("its socket got close {} \"{}\"", c.code, c.reason),
                );
                self.n.say(
                    Who::App,
                    format!(
                        "stop_request webhooks received: {stop_requests} (forwarded by Tether); \
                         {close}; session {}, no reconnect",
                        format!("{:?}", s.state).to_lowercase()
                    ),
                );
            }
            None => self.n.say(
                Who::App,
                format!("the session was not stopped within {STEP_WAIT:?}"),
            ),
        }
        stop.tether_ended = self
            .poll(STEP_WAIT, || async {
                let row = self.http.tether_row(addrs.admin, &self.session_id).await;
                matches!(row, Ok(None)).then_some(())
            })
            .await
            .is_some();
        if stop.tether_ended {
            self.n.say(
                Who::Tether,
                "/sessions: the session is gone (ended, not held)",
            );
        }
        let cloud = self.cloud_stats()?;
        stop.cloud_state = cloud.state.clone();
        self.n.say(
            Who::Cloud,
            format!(
                "session {}; stop webhooks sent: {}, resurrections: {}",
                cloud.state, cloud.stop_webhooks, cloud.resurrections
            ),
        );
        Ok(stop)
    }

    /// Prints counters once a second for `secs` seconds; returns Tether's last row.
    /// `since` labels an outage's length.
    async fn watch(
        &self,
        addrs: Addrs,
        secs: u64,
        app_up: bool,
        since: Option<Instant>,
    ) -> Option<Row> {
        let period = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last = None;
        for _ in 0..secs {
            tick.tick().await;
            let row = self.row(addrs).await;
            let cloud = match self.cloud_stats() {
                Ok(c) if app_up => format!("cloud sent #{}", c.last_transcription_seq),
                Ok(c) => format!(
                    "cloud sent #{} (socket open: {}, app disconnects: {}, resurrections: {})",
                    c.last_transcription_seq,
                    if c.socket_open { "yes" } else { "no" },
                    c.app_disconnects,
                    c.resurrections
                ),
                Err(_) => "cloud ?".to_owned(),
            };
            let app = if app_up {
                match self.http.app_stats(addrs.app).await {
                    Ok(s) => {
                        let got = transcriptions(&s, &self.session_id);
                        format!(
                            "app got {} (last #{})",
                            got.len(),
                            got.last().copied().unwrap_or(0)
                        )
                    }
                    Err(_) => "app ?".to_owned(),
                }
            } else {
                let down = since.map_or(0.0, |t| t.elapsed().as_secs_f64());
                format!("app down {down:.1} s")
            };
            let tether = match &row {
                Some(r) if r.buffered_frames > 0 => format!(
                    "tether {}, {} buffered (oldest {:.1} s)",
                    r.state,
                    r.buffered_frames,
                    r.oldest_buffered_ms as f64 / 1000.0
                ),
                Some(r) => format!("tether {}, 0 buffered", r.state),
                None => "tether: no session".to_owned(),
            };
            self.n
                .say(Who::Status, format!("{cloud} · {app} · {tether}"));
            last = row.or(last);
        }
        last
    }

    /// Stops whatever was started: the app first (so nothing reconnects), then Tether, then
    /// the emulator. Bounded by the parts' own shutdown waits.
    async fn teardown(&mut self) {
        if let Some(mut proc) = self.stack.app.take() {
            proc.kill().await;
        }
        if let Some(tether) = self.stack.tether.take() {
            tether.shutdown(TEARDOWN_GRACE).await;
        }
        if let Some(cloud) = self.stack.cloud.take() {
            cloud.shutdown().await;
        }
    }

    /// Prints the summary; returns the claims the run did not show (empty = success).
    fn summary(&self, o: &Outcome) -> Vec<String> {
        let n = &self.n;
        let a = &o.accounting;
        let seen = &o.observed;
        let mut failures = Vec::new();
        let mut check = |ok: bool, claim: &str| {
            if !ok {
                failures.push(claim.to_owned());
            }
        };
        n.heading("summary");
        let during = &o.cloud_during;
        n.plain(&format!(
            "  cloud:      sent transcriptions #1..#{}; while the app was down and back it saw \
             app_disconnects: {}, resurrections: {}; inits: {}, session webhooks: {}",
            seen.last_sent,
            during.app_disconnects,
            o.cloud_final.resurrections,
            during.inits,
            during.session_webhooks
        ));
        if during.frames_dropped > 0 {
            n.plain(&format!(
                "              (it dropped {} frames for want of an open socket)",
                during.frames_dropped
            ));
        }
        check(
            during.app_disconnects == 0,
            "the cloud saw the app disconnect",
        );
        check(
            o.cloud_final.resurrections == 0,
            "the cloud resurrected the app",
        );
        check(during.inits == 1, "the cloud saw a second init");
        check(
            during.session_webhooks == 1,
            "the cloud sent a second webhook",
        );

        let replayed = o.tether.replayed;
        n.plain(&format!(
            "  tether:     path {}; buffered {} frames (oldest {:.1} s) at the last look before \
             the restart; replayed: {}{}; recoveries: {}",
            if o.tether.states.is_empty() {
                "(not narrated)".to_owned()
            } else {
                format!("starting → {}", o.tether.states.join(" → "))
            },
            o.buffered.0,
            o.buffered.1 as f64 / 1000.0,
            replayed.map_or_else(|| "unknown".to_owned(), |r| r.to_string()),
            o.tether
                .recovery_latency_ms
                .map_or(String::new(), |ms| format!(" ({ms} ms to the first one)")),
            o.recoveries
        ));
        check(o.recoveries >= 1, "Tether recorded no recovery");
        // Tether's own count when its events were narrated; otherwise its /sessions buffer.
        check(
            replayed.unwrap_or(o.buffered.0) >= 1,
            "Tether replayed nothing",
        );

        n.plain(&format!(
            "  old app:    received {} transcriptions (last #{}) by our last look, just before \
             the SIGKILL; the cloud had sent up to #{} when the process was gone",
            seen.old_seen.len(),
            a.old_last,
            seen.kill_seq
        ));
        n.plain(&format!(
            "  new app:    received {} transcriptions{}{}",
            seen.new_seen.len(),
            a.new_span
                .map_or(String::new(), |(f, l)| format!(" (#{f}..#{l})")),
            if a.out_of_order == 0 {
                ", in order".to_owned()
            } else {
                format!(", {} out of order", a.out_of_order)
            }
        ));
        n.plain(&format!(
            "  lost: {} of the {} frames sent after the kill{}{}",
            a.lost.len(),
            a.after_kill,
            if a.after_kill > 0 {
                format!(" (#{}..#{})", seen.kill_seq + 1, seen.last_sent)
            } else {
                String::new()
            },
            if a.lost.is_empty() {
                String::new()
            } else {
                format!(": {}", runs(&a.lost, 8))
            }
        ));
        n.plain(&format!(
            "  duplicated: {} (seqs the new process received twice){}",
            a.duplicated.len(),
            if a.duplicated.is_empty() {
                String::new()
            } else {
                format!(": {}", runs(&a.duplicated, 8))
            }
        ));
        check(a.after_kill >= 1, "the cloud sent nothing after the kill");
        check(a.lost.is_empty(), "frames sent after the kill were lost");
        check(a.duplicated.is_empty(), "the new process got duplicates");
        check(
            a.out_of_order == 0,
            "the new process got frames out of order",
        );
        if let Some((from, to)) = a.unknown_window {
            let count = to - from + 1;
            let rest = count - a.unknown_recovered;
            n.plain(&format!(
                "  unknown:    {} ({count} frame{}) went out between our last look at the old \
                 process and its death; the new process got {} of them from Tether's buffer{}",
                if from == to {
                    format!("#{from}")
                } else {
                    format!("#{from}..#{to}")
                },
                if count == 1 { "" } else { "s" },
                a.unknown_recovered,
                if rest == 0 {
                    String::new()
                } else {
                    format!(
                        "; the other {rest} were written to the old socket before it died, and \
                         whether the old process handled them cannot be known (no \
                         application-level ack on the wire)"
                    )
                }
            ));
        }
        if a.received_twice_across > 0 {
            n.plain(&format!(
                "  note:       {} seqs reached both the old process (by our last look) and the \
                 new one",
                a.received_twice_across
            ));
        }
        let st = &o.stop;
        n.plain(&format!(
            "  clean stop: the app got {} stop_request and {}; Tether {}; the cloud's session is {}",
            st.app_stop_requests,
            if st.app_stopped {
                "stopped without reconnecting"
            } else {
                "did not stop"
            },
            if st.tether_ended {
                "ended the session"
            } else {
                "still holds the session"
            },
            st.cloud_state
        ));
        check(
            st.app_stop_requests == 1 && st.app_stopped,
            "the stop did not reach the app",
        );
        check(st.tether_ended, "Tether did not end the stopped session");
        check(
            st.cloud_state == "stopped",
            "the cloud's session did not stop",
        );
        if o.tether.warnings > 0 {
            n.plain(&format!(
                "  warnings:   Tether logged {} (shown in the timeline)",
                o.tether.warnings
            ));
        }
        let result = if failures.is_empty() {
            n.verdict(
                true,
                "result: PASS — the app was SIGKILLed and restarted; the cloud never noticed, \
                 and every frame sent after the kill reached the new process once, in order",
            )
        } else {
            n.verdict(false, &format!("result: FAIL — {}", failures.join("; ")))
        };
        n.plain("");
        n.plain(&result);
        failures
    }

    fn cloud(&self) -> anyhow::Result<&CloudSim> {
        self.stack
            .cloud
            .as_ref()
            .ok_or_else(|| anyhow!("the cloud emulator is not running"))
    }

    fn cloud_stats(&self) -> anyhow::Result<CloudStats> {
        self.cloud()?
            .stats(&self.session_id)
            .ok_or_else(|| anyhow!("the cloud emulator has no session {}", self.session_id))
    }

    /// Tether's `/sessions` row for the demo's session, if it has one and answers.
    async fn row(&self, addrs: Addrs) -> Option<Row> {
        self.http
            .tether_row(addrs.admin, &self.session_id)
            .await
            .ok()
            .flatten()
    }

    /// Calls `probe` every [`POLL`] until it yields a value or `within` has passed.
    async fn poll<T, F, Fut>(&self, within: Duration, mut probe: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        // Bounded by count too: each round sleeps POLL, and each probe has its own timeout.
        let rounds = within.as_millis() / POLL.as_millis() + 1;
        for _ in 0..rounds {
            if let Some(v) = probe().await {
                return Some(v);
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(POLL).await;
        }
        None
    }
}
