//! The demo's voice: timestamped lines naming who speaks (`cloud`, `tether`, `app`, or the
//! `demo` itself), plain text unless stdout is a terminal. Also turns Tether's own `tracing`
//! events into `tether` lines, so what Tether says it did is printed as it happens, in its
//! words' meaning rather than as raw logs.
//!
//! Printing never fails the demo: a closed stdout (`| head`) just stops the narration.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{IsTerminal, Write as _};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Who a line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Who {
    Cloud,
    Tether,
    App,
    /// The demo's own actions (killing and restarting the app) and its verdicts.
    Demo,
    /// The once-a-second counters.
    Status,
}

/// Writes the timeline. Cheap to share; every line is written under the stdout lock, so
/// lines from Tether's tasks and from the scenario never interleave mid-line.
#[derive(Debug)]
pub(super) struct Narrator {
    start: Instant,
    colour: bool,
}

/// What Tether reported about itself through its events, for the summary.
#[derive(Debug, Default, Clone)]
pub(super) struct TetherFacts {
    /// Phases in the order Tether entered them.
    pub states: Vec<String>,
    /// Frames replayed at the last recovery, by Tether's own count.
    pub replayed: Option<u64>,
    /// From the app being seen healthy again to the first replayed frame.
    pub recovery_latency_ms: Option<u64>,
    /// Outcome of each webhook re-sent to a restarted app.
    pub refires: Vec<bool>,
    /// Warnings Tether logged; any of them is worth showing.
    pub warnings: u64,
}

/// Shared handle on [`TetherFacts`].
pub(super) type Facts = Arc<Mutex<TetherFacts>>;

/// Tether's events worth narrating, and the target prefixes they come from. The simulators
/// live under `tether::sim` and are narrated from their stats instead.
const TETHER_TARGETS: &[&str] = &["tether::session", "tether::webhook", "tether::downstream"];

/// A [`tracing_subscriber::Layer`] that narrates Tether's events and records [`TetherFacts`].
struct Capture {
    narrator: Arc<Narrator>,
    facts: Facts,
}

/// The fields of one event, as text.
#[derive(Default)]
struct Fields {
    message: String,
    values: BTreeMap<&'static str, String>,
}

// === impl Who ===

impl Who {
    fn label(self) -> &'static str {
        match self {
            Who::Cloud => "cloud",
            Who::Tether => "tether",
            Who::App => "app",
            Who::Demo => "demo",
            Who::Status => "status",
        }
    }

    /// ANSI SGR parameters for the speaker column.
    fn sgr(self) -> &'static str {
        match self {
            Who::Cloud => "36",
            Who::Tether => "35",
            Who::App => "32",
            Who::Demo => "1;33",
            Who::Status => "2",
        }
    }
}

// === impl Narrator ===

impl Narrator {
    /// Colour only on a terminal, and never when `NO_COLOR` is set (no-color.org).
    pub(super) fn new() -> Narrator {
        let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Narrator {
            start: Instant::now(),
            colour,
        }
    }

    /// Time since the demo started.
    pub(super) fn elapsed(&self) -> std::time::Duration {
        self.start.elapsed()
    }

    /// One timeline line: `[ 1.234s] who     text`.
    pub(super) fn say(&self, who: Who, text: impl fmt::Display) {
        self.say_at(self.elapsed(), who, &text.to_string());
    }

    fn say_at(&self, at: std::time::Duration, who: Who, text: &str) {
        let label = self.paint(who.sgr(), &format!("{:<6}", who.label()));
        let text = if who == Who::Status {
            self.paint(who.sgr(), text)
        } else {
            text.to_owned()
        };
        self.line(&format!("[{:>6.3}s] {label} {text}", at.as_secs_f64()));
    }

    /// A section heading, set apart by a blank line.
    pub(super) fn heading(&self, text: &str) {
        let bar = "─".repeat(60usize.saturating_sub(text.chars().count() + 4));
        self.line("");
        self.line(&self.paint("1", &format!("── {text} {bar}")));
    }

    /// An untimed line (the summary).
    pub(super) fn plain(&self, text: &str) {
        self.line(text);
    }

    /// Green or red emphasis for a verdict.
    pub(super) fn verdict(&self, ok: bool, text: &str) -> String {
        self.paint(if ok { "1;32" } else { "1;31" }, text)
    }

    fn paint(&self, sgr: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn line(&self, text: &str) {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the demo from cleaning up its child process.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

// === impl Capture ===

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let at = self.narrator.elapsed();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = *event.metadata().level();
        let line = {
            let mut facts = lock(&self.facts);
            describe(level, &fields, &mut facts)
        };
        if let Some(line) = line {
            self.narrator.say_at(at, Who::Tether, &line);
        }
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.values.insert(field.name(), value);
        }
    }

    fn get(&self, name: &str) -> &str {
        self.values.get(name).map_or("?", String::as_str)
    }
}

/// Installs the process-wide subscriber: the narrating layer for Tether's info events, plus,
/// with `verbose`, a text log of everything at info (or `RUST_LOG`) on stderr. Returns
/// `false` if a subscriber was already installed (then Tether's events are not narrated).
pub(super) fn install(narrator: Arc<Narrator>, facts: Facts, verbose: bool) -> bool {
    let targets = TETHER_TARGETS.iter().fold(Targets::new(), |t, target| {
        t.with_target(*target, Level::INFO)
    });
    let capture = Capture { narrator, facts }.with_filter(targets);
    let log = verbose.then(|| {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
    });
    // The secret cap first: no filter of the verbose log can lift it.
    tracing_subscriber::registry()
        .with(crate::logging::cap())
        .with(capture)
        .with(log)
        .try_init()
        .is_ok()
}

/// Turns one Tether event into a timeline line (or `None` for events the timeline skips),
/// recording what the summary needs. Keyed on Tether's event messages; an unknown info
/// event is skipped, an unknown warning is shown as is.
fn describe(level: Level, f: &Fields, facts: &mut TetherFacts) -> Option<String> {
    let line = match f.message.as_str() {
        "session_request" => "intercepted POST /webhook (session_request); forwarding it to the \
             app with the websocket URL rewritten to Tether's local listener"
            .to_owned(),
        "app connected" => "the app opened its websocket and sent tpa_connection_init; Tether \
             dials the cloud and holds the init until the cloud's ack"
            .to_owned(),
        "session state" => {
            let (from, to) = (f.get("from"), f.get("to"));
            facts.states.push(to.to_owned());
            format!("state {from} → {to}: {}", meaning(from, to))
        }
        "app reconnected; answered locally" => "the restarted app's tpa_connection_init was \
             answered locally from the cached ack (the cloud sees nothing)"
            .to_owned(),
        "app recovered; buffer replayed" => {
            let replayed = f.get("replayed");
            facts.replayed = replayed.parse().ok();
            facts.recovery_latency_ms = f.get("latency_ms").parse().ok();
            format!(
                "replayed {replayed} buffered frames, in order ({} ms from the app being seen \
                 healthy to the first replayed frame)",
                f.get("latency_ms")
            )
        }
        "webhook re-sent to the app" => {
            let ok = f.get("ok") == "true";
            facts.refires.push(ok);
            if ok {
                "the session_request webhook Tether re-sent to the restarted app was answered \
                 OK (the cloud sent no second webhook)"
                    .to_owned()
            } else {
                "the session_request webhook Tether re-sent to the restarted app failed".to_owned()
            }
        }
        "session ended" => format!("session ended (reason: {})", f.get("reason")),
        _ if level <= Level::WARN => {
            facts.warnings += 1;
            let mut line = format!("{}: {}", level.as_str().to_lowercase(), f.message);
            for (k, v) in &f.values {
                let _ = write!(line, " {k}={v}");
            }
            line
        }
        _ => return None,
    };
    Some(line)
}

/// What entering `to` (from `from`) means, in a few words.
fn meaning(from: &str, to: &str) -> &'static str {
    match (from, to) {
        ("starting", "live") => "the cloud acked; relaying both ways",
        ("replaying", "live") => "buffer flushed; relaying live again",
        (_, "live") => "relaying both ways",
        (_, "app_down") => {
            "the app's socket is gone: holding the cloud link, buffering cloud → app frames"
        }
        (_, "replaying") => "a new app socket; flushing the buffer to it before live traffic",
        (_, "ended") => "both sides have been told",
        _ => "",
    }
}

fn lock(facts: &Facts) -> MutexGuard<'_, TetherFacts> {
    // Facts are plain counters; a panic mid-update cannot leave them unusable.
    facts.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A copy of the facts recorded so far.
pub(super) fn snapshot(facts: &Facts) -> TetherFacts {
    lock(facts).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(message: &str, values: &[(&'static str, &str)]) -> Fields {
        Fields {
            message: message.to_owned(),
            values: values.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        }
    }

    #[test]
    fn a_recovery_event_records_the_replayed_count() {
        let mut facts = TetherFacts::default();
        let f = fields(
            "app recovered; buffer replayed",
            &[("replayed", "31"), ("latency_ms", "4")],
        );
        let line = describe(Level::INFO, &f, &mut facts).expect("narrated");
        assert!(line.contains("replayed 31"), "{line}");
        assert_eq!(
            (facts.replayed, facts.recovery_latency_ms),
            (Some(31), Some(4))
        );
    }

    #[test]
    fn state_changes_are_recorded_in_order() {
        let mut facts = TetherFacts::default();
        for (from, to) in [("starting", "live"), ("live", "app_down")] {
            let f = fields("session state", &[("from", from), ("to", to)]);
            assert!(describe(Level::INFO, &f, &mut facts).is_some());
        }
        assert_eq!(facts.states, ["live", "app_down"]);
    }

    #[test]
    fn unknown_info_is_skipped_and_unknown_warnings_are_shown() {
        let mut facts = TetherFacts::default();
        assert!(describe(Level::INFO, &fields("something new", &[]), &mut facts).is_none());
        let warn = fields("cannot reach the cloud", &[("hop", "cloud")]);
        let line = describe(Level::WARN, &warn, &mut facts).expect("shown");
        assert_eq!(line, "warn: cannot reach the cloud hop=cloud");
        assert_eq!(facts.warnings, 1);
    }
}
