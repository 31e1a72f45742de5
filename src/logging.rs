//! Logging: the subscriber every `tether` command installs, its filter (changeable at run
//! time: a config reload may change `log.level`), and the cap that keeps secrets out of the
//! output at every level.
//!
//! The cap sits beside the filter, and an event must pass both, so no `RUST_LOG` or
//! `log.level` can lift it. Tether's own events may go down to `trace` (they never carry
//! frames, headers or keys). A dependency may go below `info` only where its debug and trace
//! output was read and found to hold no payload or header values (see [`level_cap`]): the
//! WebSocket library, for one, prints whole frames at `trace` — the app's
//! `tpa_connection_init` carries the API key — and its handshake request with every header.
//! A crate not named there is capped at `info`, so a new dependency is quiet until read.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;
use tracing::Metadata;
use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter};

use crate::config::LogFormat;

type SetLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Installs the global subscriber: JSON or text lines on stdout, filtered by `RUST_LOG` when
/// set (else `level`), and capped by [`level_cap`]. Call once, before anything logs;
/// later calls leave the first subscriber in place.
pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    // A reload may change the level; RUST_LOG, when set, keeps winning.
    let from_env = std::env::var_os("RUST_LOG").is_some();
    install(Box::new(move |level: &str| {
        if from_env {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    let subscriber = tracing_subscriber::registry().with(filter).with(cap());
    let _ = if json {
        subscriber
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    } else {
        subscriber.with(fmt).try_init()
    };
}

/// The cap as a filter (or a global layer): passes what [`level_cap`] allows. Every
/// subscriber in this crate includes it.
pub fn cap() -> FilterFn<fn(&Metadata<'_>) -> bool> {
    FilterFn::new(|meta| *meta.level() <= level_cap(meta.target()))
}

/// The most verbose level at which events of `target` may be written, whatever the filter
/// says. Keyed by the crate, the first segment of the target.
pub fn level_cap(target: &str) -> LevelFilter {
    let krate = target.split("::").next().unwrap_or(target);
    match krate {
        // Tether's own lines name sessions, hops and causes, never payloads or secrets.
        "tether" => LevelFilter::TRACE,
        // h2's frame `Debug` leaves out header fields and data by design; hyper compiles no
        // logging (its tracing feature is unstable and off); hyper-util's client logs pool
        // keys (scheme and authority) and socket addresses.
        "h2" | "hyper" | "hyper_util" => LevelFilter::TRACE,
        // At trace rustls prints whole handshake messages (certificates, session tickets):
        // no application data, but nothing an operator needs either.
        "rustls" => LevelFilter::DEBUG,
        // tungstenite and tokio-tungstenite: every frame (the app's init with its API key),
        // the handshake request with its headers, close frames. And every crate not read.
        _ => LevelFilter::INFO,
    }
}

/// Installs the function that swaps the log filter (called once, where logging is set up).
pub fn install(set: SetLevel) {
    let _ = SET_LEVEL.set(set);
}

/// Applies a new filter (`RUST_LOG` syntax); an error names what is wrong with it.
pub fn set_level(level: &str) -> Result<(), String> {
    match SET_LEVEL.get() {
        Some(set) => set(level),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_library_and_unread_crates_stop_at_info() {
        for target in [
            "tungstenite::protocol",
            "tungstenite::handshake::client",
            "tokio_tungstenite",
            "tokio_tungstenite::compat",
            "reqwest::connect",
            "log",
            "some_future_dependency",
            "",
        ] {
            assert_eq!(level_cap(target), LevelFilter::INFO, "{target:?}");
        }
    }

    #[test]
    fn tether_and_read_crates_keep_their_detail() {
        assert_eq!(level_cap("tether"), LevelFilter::TRACE);
        assert_eq!(level_cap("tether::session::task"), LevelFilter::TRACE);
        assert_eq!(level_cap("h2::codec::framed_read"), LevelFilter::TRACE);
        assert_eq!(
            level_cap("hyper_util::client::legacy::pool"),
            LevelFilter::TRACE
        );
        assert_eq!(level_cap("rustls::client::hs"), LevelFilter::DEBUG);
        // Only the crate segment counts: a look-alike prefix gets no exemption.
        assert_eq!(level_cap("tethered::x"), LevelFilter::INFO);
        assert_eq!(level_cap("h2c::x"), LevelFilter::INFO);
    }
}
