//! `tether bench`: measurements printed as figures, each against a baseline measured in the
//! same run.
//!
//! - [`relay`]: the latency and throughput Tether adds to a session, against a direct
//!   connection to the same echo peer, alternated in chunks.
//! - [`recovery`]: how fast sessions come back when the app process is SIGKILLed and
//!   restarted, and whether any frame is lost or duplicated on the way.
//! - [`cloud`]: how fast a dropped cloud link is healed, whether the app sees any of it, and
//!   what Tether's cloud heartbeat costs against a transcription stream.
//!
//! The machine these run on is shared and noisy, so nothing here asserts a timing: figures
//! and ratios are printed (a table, or `--json` for machines). Every peer listens on
//! 127.0.0.1 port 0 (the app process excepted: a restarted pod keeps its port), every
//! loop is bounded in count and time, and every process started is stopped by its PID.

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::runtime::Running;

mod cloud;
mod echo;
mod exposition;
mod http;
mod recovery;
mod relay;
mod stats;

pub use cloud::CloudArgs;
pub use recovery::RecoveryArgs;
pub use relay::RelayArgs;

/// API key the bench's apps present and Tether is configured with. Not a secret: it only
/// exists inside one benchmark run.
const BENCH_API_KEY: &str = "b3e7a0c1d9f24e6a8c5d0b7f3a1e9c2d4b6f8a0c2e4d6b8f0a1c3e5d7b9f1a2c";

/// Package name of the bench's app, in every init, webhook and config.
const PACKAGE: &str = "com.example.bench";

/// Which benchmark to run.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Round-trip latency and one-way throughput through Tether versus direct.
    Relay(RelayArgs),
    /// Recovery time and frame loss across repeated SIGKILLs of the app process.
    Recovery(RecoveryArgs),
    /// Cloud-link heal time and frame accounting across repeated cloud socket drops, and
    /// the heartbeat's cost.
    Cloud(CloudArgs),
}

/// Runs a benchmark and prints its report on stdout.
///
/// # Errors
/// A peer cannot start, or the run breaks down (a handshake or wait exceeds its bound).
/// Misbehaviour being measured (a session that never recovers, frames lost) is reported in
/// the figures, not as an error.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    // `tether run` sets up logging from its config; a bench has none, so RUST_LOG opts in
    // (on stderr, to keep stdout for the report), under the same secret cap as `tether run`.
    if std::env::var_os("RUST_LOG").is_some() {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::EnvFilter::from_default_env())
            .with(crate::logging::cap())
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init();
    }
    let bench = async {
        match cmd {
            BenchCommand::Relay(args) => relay::run(args).await,
            BenchCommand::Recovery(args) => recovery::run(args).await,
            BenchCommand::Cloud(args) => cloud::run(args).await,
        }
    };
    // On a signal the bench future is dropped, and with it every child process
    // (kill_on_drop), so an interrupted run leaves no app simulator behind.
    // Every wait inside is bounded; this catches whatever is not.
    tokio::select! {
        r = tokio::time::timeout(HARD_LIMIT, bench) => match r {
            Ok(r) => r,
            Err(_) => anyhow::bail!("the bench ran past {HARD_LIMIT:?}"),
        },
        s = signal() => anyhow::bail!("interrupted by {s}"),
    }
}

/// Waits for SIGINT or SIGTERM; returns its name.
async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}

/// The origins of clouds emulated in this process: loopback, any port.
pub const LOOPBACK_CLOUDS: &str = "ws://127.0.0.1:*";

/// Starts Tether in this process with every listener on 127.0.0.1:0, the app at `app_url`
/// (package [`PACKAGE`]), and `extra_yaml` (whole top-level sections other than `listen`,
/// `app` and `admin`) appended to the config. `/sessions` shows user ids as they are: the
/// benches find their sessions there by id, on loopback.
async fn start_tether(app_url: &str, extra_yaml: &str) -> anyhow::Result<Running> {
    let yaml = format!(
        "version: 1\nlisten:\n  public: 127.0.0.1:0\n  local: 127.0.0.1:0\n  admin: 127.0.0.1:0\napp:\n  url: {app_url}\n  package_name: {PACKAGE}\nadmin:\n  show_user_ids: true\n{extra_yaml}"
    );
    // The key comes through the same override a deployment uses, never from this
    // process's environment.
    let env = |k: &str| match k {
        "TETHER_API_KEY" => Some(BENCH_API_KEY.to_string()),
        // The emulated clouds listen on loopback ports chosen at run time.
        "TETHER_CLOUD_ALLOWED_ORIGINS" => Some(LOOPBACK_CLOUDS.to_string()),
        _ => None,
    };
    let config = Config::from_sources(Some(&yaml), "bench", &env).context("bench config")?;
    let running = crate::runtime::start(config, CancellationToken::new()).await?;
    Ok(running)
}

/// Outer bound on one bench run.
const HARD_LIMIT: Duration = Duration::from_secs(3600);

/// How long Tether gets to close its sessions at the end of a run.
const TETHER_GRACE: Duration = Duration::from_secs(10);
