//! The `cloud-sim` command: flags mapped onto [`CloudSimConfig`], run until Ctrl-C/SIGTERM.

use std::net::SocketAddr;

use super::{AckStyle, CloudSim, CloudSimConfig, UrlStyle, DEFAULT_API_KEY, DEFAULT_PACKAGE};

/// Flags of the cloud emulator command. Defaults are the cloud's real timings (§15).
#[derive(clap::Args, Debug, Clone)]
pub struct CloudSimArgs {
    /// Listen address for the app websockets, the cloud HTTP routes and /control.
    #[arg(long, default_value = "127.0.0.1:7002")]
    pub listen: SocketAddr,
    /// The app's webhook URL (http only), e.g. http://127.0.0.1:8080/webhook.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The one app package the emulator knows.
    #[arg(long, default_value = DEFAULT_PACKAGE)]
    pub package_name: String,
    /// The package's API key.
    #[arg(long, env = "TETHER_SIM_API_KEY", default_value = DEFAULT_API_KEY, hide_env_values = true)]
    pub api_key: String,
    /// Ack shape: mentraos (latest cloud) or augmentos (June 2025 cloud).
    #[arg(long, value_enum, default_value_t = AckStyle::Mentraos)]
    pub ack_style: AckStyle,
    /// Webhook URL fields: june, later or tpa.
    #[arg(long, value_enum, default_value_t = UrlStyle::Later)]
    pub url_style: UrlStyle,
    /// Websocket base put in webhooks (default `ws://<listen address>`).
    #[arg(long)]
    pub public_ws_base: Option<String>,
    /// Send a numbered transcription to subscribed sessions every N ms.
    #[arg(long)]
    pub transcription_interval_ms: Option<u64>,
    /// Send a binary audio chunk to audio subscribers every N ms.
    #[arg(long)]
    pub audio_interval_ms: Option<u64>,
    /// Bytes per audio chunk (the first 4 are a big-endian sequence number).
    #[arg(long, default_value_t = 640)]
    pub audio_chunk_bytes: usize,
    /// WebSocket ping period per app socket.
    #[arg(long, default_value_t = 10_000)]
    pub ping_interval_ms: u64,
    /// Grace after an app socket closes before resurrection.
    #[arg(long, default_value_t = 5_000)]
    pub grace_ms: u64,
    /// Do not resurrect apps after the grace period; stop them instead.
    #[arg(long)]
    pub no_resurrect: bool,
    /// Limit from webhook to a valid init.
    #[arg(long, default_value_t = 5_000)]
    pub app_start_timeout_ms: u64,
    /// Per webhook POST attempt.
    #[arg(long, default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// `session_request` POST attempts.
    #[arg(long, default_value_t = 2)]
    pub webhook_attempts: u32,
    /// Pause before the first webhook retry (doubles after).
    #[arg(long, default_value_t = 1_000)]
    pub webhook_retry_pause_ms: u64,
    /// Largest app -> cloud message; bigger ones get close 1009.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_frame_bytes: usize,
    /// Answer 404 on /api/tpa/* like the production cloud (no registration API).
    #[arg(long)]
    pub no_registration_api: bool,
}

impl From<CloudSimArgs> for CloudSimConfig {
    fn from(a: CloudSimArgs) -> Self {
        Self {
            listen: a.listen,
            webhook_url: a.webhook_url,
            package_name: a.package_name,
            api_key: a.api_key,
            ack_style: a.ack_style,
            url_style: a.url_style,
            public_ws_base: a.public_ws_base,
            transcription_interval_ms: a.transcription_interval_ms,
            audio_interval_ms: a.audio_interval_ms,
            audio_chunk_bytes: a.audio_chunk_bytes,
            ping_interval_ms: a.ping_interval_ms,
            grace_ms: a.grace_ms,
            resurrect: !a.no_resurrect,
            app_start_timeout_ms: a.app_start_timeout_ms,
            webhook_timeout_ms: a.webhook_timeout_ms,
            webhook_attempts: a.webhook_attempts,
            webhook_retry_pause_ms: a.webhook_retry_pause_ms,
            max_frame_bytes: a.max_frame_bytes,
            registration_api: !a.no_registration_api,
        }
    }
}

/// Starts the emulator, prints `cloud-sim listening on <addr> control <url>` on stdout,
/// and runs until Ctrl-C or SIGTERM, then shuts down.
///
/// Errors: invalid flags, or the listen address cannot be bound.
pub async fn run_cli(args: CloudSimArgs) -> anyhow::Result<()> {
    let sim = CloudSim::start(args.into()).await?;
    // The one line scripts wait for; stdout on purpose.
    println!(
        "cloud-sim listening on {} control {}",
        sim.addr(),
        sim.control_url()
    );
    wait_for_signal().await?;
    tracing::info!("cloud-sim shutting down");
    sim.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    Ok(tokio::signal::ctrl_c().await?)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: CloudSimArgs,
    }

    #[test]
    fn flags_map_onto_config() {
        let cli = Cli::parse_from([
            "cloud-sim",
            "--ack-style",
            "augmentos",
            "--url-style",
            "tpa",
            "--no-resurrect",
            "--transcription-interval-ms",
            "250",
        ]);
        let cfg = CloudSimConfig::from(cli.sim);
        assert_eq!(cfg.listen, SocketAddr::from(([127, 0, 0, 1], 7002)));
        assert_eq!(
            (cfg.ack_style, cfg.url_style),
            (AckStyle::Augmentos, UrlStyle::Tpa)
        );
        assert!(!cfg.resurrect);
        assert_eq!(cfg.transcription_interval_ms, Some(250));
        assert_eq!(cfg.grace_ms, CloudSimConfig::default().grace_ms);
    }
}
