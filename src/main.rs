//! The `tether` command: run the sidecar, check a config file, run the simulators or the demo.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use tether::config::{Config, LogFormat};

/// Exit code for an unusable configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "tether",
    version,
    about = "Keeps MentraOS app sessions alive across app restarts and cloud link faults"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the sidecar.
    Run {
        /// YAML config file; without it, built-in defaults plus TETHER_* environment overrides.
        #[arg(long, short, env = "TETHER_CONFIG")]
        config: Option<PathBuf>,
        /// How long shutdown may take after SIGTERM before remaining work is abandoned.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        shutdown_grace: Duration,
    },
    /// Validate a config file (with the environment applied) and print the result.
    CheckConfig {
        /// The YAML file to check.
        file: PathBuf,
        /// Also print what reloading this file into the Tether whose admin listener is here
        /// (host:port) would change.
        #[arg(long)]
        against: Option<String>,
        /// The admin token of the Tether named by --against, sent as `Authorization: Bearer`.
        #[arg(
            long,
            env = "TETHER_ADMIN_TOKEN",
            hide_env_values = true,
            value_parser = tether::status::parse_secret
        )]
        token: Option<tether::config::Secret>,
    },
    /// Show a running Tether's readiness and sessions (asks its admin listener).
    Status(tether::status::StatusArgs),
    /// Run a simulator of one of Tether's peers.
    #[command(subcommand)]
    Sim(SimCommand),
    /// Run the cloud emulator, an SDK-like app and Tether together, and narrate what happens.
    Demo(tether::demo::DemoArgs),
    /// Measure Tether (figures printed, ratios against a baseline measured in the same run).
    #[command(subcommand)]
    Bench(tether::bench::BenchCommand),
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// The MentraOS cloud's app-facing side: webhooks, /app-ws, streams, and a control API.
    Cloud(tether::sim::cloud::CloudSimArgs),
    /// An app server that behaves like one built on @mentra/sdk 2.1.29.
    App(tether::sim::app::AppSimArgs),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 20s or 500ms, got {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("expected a duration like 20s or 500ms, got {s:?}")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig {
            file,
            against,
            token,
        } => match Config::load(Some(&file)) {
            Ok(cfg) => {
                // A closed stdout (`| head`) is not an error worth a panic.
                let mut out = std::io::stdout();
                let _ = writeln!(out, "{}: ok", file.display());
                let Some(admin) = against else {
                    for (k, v) in cfg.entries() {
                        let _ = writeln!(out, "  {k} = {v}");
                    }
                    return ExitCode::SUCCESS;
                };
                runtime(async move {
                    let running = tether::status::running_config(&admin, token.as_ref()).await?;
                    let changes = tether::config::reload::diff(&running, &cfg.entries());
                    if changes.is_empty() {
                        let _ = writeln!(out, "a reload would change nothing");
                    }
                    for c in changes {
                        let note = if c.needs_restart {
                            " (needs a restart)"
                        } else {
                            ""
                        };
                        let _ = writeln!(out, "  {}: {} -> {}{note}", c.key, c.old, c.new);
                    }
                    Ok(())
                })
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Sim(SimCommand::Cloud(args)) => {
            tether::logging::init("info", LogFormat::Auto);
            runtime(tether::sim::cloud::run_cli(args))
        }
        Command::Sim(SimCommand::App(args)) => {
            tether::logging::init("info", LogFormat::Auto);
            runtime(tether::sim::app::run_cli(args))
        }
        Command::Demo(args) => runtime(tether::demo::run(args)),
        Command::Status(args) => runtime(tether::status::run(args)),
        Command::Bench(cmd) => runtime(tether::bench::run(cmd)),
        Command::Run {
            config,
            shutdown_grace,
        } => {
            let cfg = match Config::load(config.as_deref()) {
                Ok(cfg) => cfg,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            tether::logging::init(&cfg.log.level, cfg.log.format);
            runtime(run(cfg, shutdown_grace, config))
        }
    }
}

fn runtime(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config, grace: Duration, path: Option<PathBuf>) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    #[cfg(unix)]
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let running = tether::runtime::start(cfg, cancel.clone()).await?;
    #[cfg(unix)]
    tether::runtime::spawn_reloader(&running, path, hangup);
    #[cfg(not(unix))]
    let _ = path;
    let shutdown = signal().await;
    tracing::info!(signal = shutdown, ?grace, "shutting down");
    // A second signal during the drain exits at once.
    tokio::select! {
        () = running.shutdown(grace) => {}
        s = signal() => tracing::warn!(signal = s, "second signal: exiting now"),
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
