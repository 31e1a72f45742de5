//! `tether status`: asks a running Tether's admin listener for its readiness and sessions and
//! prints them for an operator at a terminal (or as raw JSON for scripts). Read-only: it sends
//! two GETs and changes nothing in the process it asks. The admin token, when the Tether asks
//! for one, goes in an `Authorization: Bearer` header and nowhere else.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

use crate::config::Secret;

/// How long each admin request (connect, request, whole body) may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Arguments of `tether status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Tether's admin listener, `host:port` (an `http://` prefix is accepted).
    #[arg(long, env = "TETHER_ADMIN_URL", default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Print the `/sessions` JSON as served instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The admin token, sent as `Authorization: Bearer` (needed when Tether has one).
    #[arg(long, env = "TETHER_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,
}

/// Reads a secret argument; its value never reaches `Debug` output.
pub fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s.trim()))
}

/// One `/sessions` row, as much of it as the table shows; missing fields read as zero so an
/// older or newer Tether still prints.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Row {
    session_id: String,
    state: String,
    age_ms: u64,
    frames_up: u64,
    frames_down: u64,
    buffered_frames: u64,
    buffered_bytes: u64,
    oldest_buffered_ms: u64,
    recoveries: u64,
    last_recovery_ago_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct Sessions {
    #[serde(default)]
    sessions: Vec<Row>,
}

/// `/readyz?verbose` read back: the verdict and the names of failed checks.
#[derive(Debug, PartialEq)]
struct Readiness {
    ready: bool,
    failed: Vec<String>,
}

/// Prints the status of the Tether whose admin listener is `args.admin`.
///
/// Errors when Tether cannot be reached within 3 s or answers `/sessions` with anything but
/// 200 and JSON; the message names the address.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let addr = admin_authority(&args.admin);
    let token = args.token.as_ref().filter(|t| !t.is_empty());
    let (code, body) = get(&addr, "/sessions", token).await?;
    refused(&addr, "/sessions", code, &body, token.is_some())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        // A closed stdout (`| head`) is not worth an error.
        let _ = out.write_all(&body);
        if !body.ends_with(b"\n") {
            let _ = out.write_all(b"\n");
        }
        return Ok(());
    }
    let sessions: Sessions = serde_json::from_slice(&body)
        .with_context(|| format!("{addr}/sessions did not answer with session JSON"))?;
    let (code, body) = get(&addr, "/readyz?verbose", None).await?;
    let readiness = parse_readyz(code, &String::from_utf8_lossy(&body));
    let _ = out.write_all(render(&addr, &readiness, &sessions.sessions).as_bytes());
    Ok(())
}

/// `host:port` from what the operator typed; a wildcard listen address is dialled on loopback.
fn admin_authority(admin: &str) -> String {
    let a = admin.trim();
    let a = a.strip_prefix("http://").unwrap_or(a);
    let a = a.split('/').next().unwrap_or(a);
    match a.parse::<SocketAddr>() {
        Ok(mut sa) if sa.ip().is_unspecified() => {
            sa.set_ip(if sa.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
            sa.to_string()
        }
        _ => a.to_string(),
    }
}

/// Fails with what to do when a data route was not answered with 200. `sent` says whether
/// a token went with the request.
fn refused(addr: &str, path: &str, code: u16, body: &[u8], sent: bool) -> anyhow::Result<()> {
    match code {
        200 => Ok(()),
        401 if sent => bail!(
            "Tether's admin listener at {addr} refused the admin token for {path} (HTTP 401); \
             check --token or TETHER_ADMIN_TOKEN"
        ),
        401 => bail!(
            "Tether's admin listener at {addr} wants the admin token for {path} (HTTP 401): \
             pass --token or set TETHER_ADMIN_TOKEN"
        ),
        403 => bail!(
            "Tether's admin listener at {addr} refused {path} (HTTP 403): {}",
            String::from_utf8_lossy(body).trim()
        ),
        _ => bail!("Tether's admin listener at {addr} answered {path} with HTTP {code}"),
    }
}

/// One HTTP/1.1 GET on a fresh connection, bounded by [`TIMEOUT`]; the status and body.
/// `token`, when given, is sent as a bearer token.
async fn get(addr: &str, path: &str, token: Option<&Secret>) -> anyhow::Result<(u16, Bytes)> {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        // The connection task ends when the response is read and `sender` is dropped.
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr)
            .header(hyper::header::USER_AGENT, "tether-status")
            .body(Empty::<Bytes>::new())?;
        if let Some(token) = token {
            let mut value =
                hyper::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .context("the admin token cannot be sent in an HTTP header")?;
            value.set_sensitive(true);
            req.headers_mut()
                .insert(hyper::header::AUTHORIZATION, value);
        }
        let resp = sender.send_request(req).await?;
        let code = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((code, body))
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.context(format!(
            "cannot reach Tether's admin listener at {addr} (GET {path}); is `tether run` up, \
             and is --admin (or TETHER_ADMIN_URL) its listen.admin address?"
        ))),
        Err(_) => {
            bail!("Tether's admin listener at {addr} did not answer GET {path} within {TIMEOUT:?}")
        }
    }
}

/// Reads `/readyz?verbose`: `[+]name ok` / `[-]name failed` lines; the status code decides.
fn parse_readyz(code: u16, body: &str) -> Readiness {
    let failed = body
        .lines()
        .filter_map(|l| l.strip_prefix("[-]"))
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
        .collect();
    Readiness {
        ready: code == 200,
        failed,
    }
}

/// The header line and the session table.
fn render(addr: &str, readiness: &Readiness, rows: &[Row]) -> String {
    let mut out = String::new();
    let verdict = match (readiness.ready, readiness.failed.is_empty()) {
        (true, _) => "ready".to_string(),
        (false, true) => "NOT READY".to_string(),
        (false, false) => format!("NOT READY ({} failed)", readiness.failed.join(", ")),
    };
    let n = rows.len();
    out.push_str(&format!(
        "Tether at {addr}: {verdict}; {n} session{}",
        if n == 1 { "" } else { "s" }
    ));
    let counts = state_counts(rows);
    if !counts.is_empty() {
        let parts: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
        out.push_str(&format!(" ({})", parts.join(", ")));
    }
    out.push('\n');
    if rows.is_empty() {
        return out;
    }
    let header = [
        "SESSION",
        "STATE",
        "AGE",
        "UP",
        "DOWN",
        "BUFFERED",
        "OLDEST",
        "RECOVERIES",
        "LAST RECOVERY",
    ];
    let mut table: Vec<[String; 9]> = vec![header.map(String::from)];
    for r in rows {
        let (buffered, oldest) = if r.buffered_frames == 0 {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{} ({})", r.buffered_frames, human_bytes(r.buffered_bytes)),
                human_ms(r.oldest_buffered_ms),
            )
        };
        table.push([
            r.session_id.clone(),
            r.state.clone(),
            human_ms(r.age_ms),
            r.frames_up.to_string(),
            r.frames_down.to_string(),
            buffered,
            oldest,
            r.recoveries.to_string(),
            r.last_recovery_ago_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{} ago", human_ms(ms))),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    // Text columns align left, figures right.
    let right = [false, false, true, true, true, true, true, true, true];
    for row in &table {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if right[c] {
                    format!("{cell:>w$}", w = widths[c])
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Sessions per state: the machine's states in their lifecycle order, then any other.
fn state_counts(rows: &[Row]) -> Vec<(String, usize)> {
    const ORDER: [&str; 4] = ["starting", "live", "app_down", "replaying"];
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in rows {
        match counts.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, c)) => *c += 1,
            None => counts.push((r.state.clone(), 1)),
        }
    }
    let rank = |s: &str| ORDER.iter().position(|o| *o == s).unwrap_or(ORDER.len());
    counts.sort_by(|a, b| rank(&a.0).cmp(&rank(&b.0)).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// A duration for a person: `850ms`, `12s`, `3m04s`, `2h01m`, `3d04h`.
fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A byte count for a person: `512 B`, `3.4 KiB`, `1.0 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The configuration a running Tether has in force (`GET /config`, secrets masked); `token`
/// is the admin token, when that Tether has one.
pub async fn running_config(
    admin: &str,
    token: Option<&Secret>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let addr = admin_authority(admin);
    let token = token.filter(|t| !t.is_empty());
    let (code, body) = get(&addr, "/config", token).await?;
    refused(&addr, "/config", code, &body, token.is_some())?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(12_400), "12s");
        assert_eq!(human_ms(184_000), "3m04s");
        assert_eq!(human_ms(7_260_000), "2h01m");
        assert_eq!(human_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn byte_counts_use_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 20), "1.0 MiB");
        assert_eq!(human_bytes(64 << 30), "64.0 GiB");
    }

    #[test]
    fn admin_address_forms() {
        assert_eq!(admin_authority("127.0.0.1:9090"), "127.0.0.1:9090");
        assert_eq!(admin_authority("http://127.0.0.1:9090/"), "127.0.0.1:9090");
        assert_eq!(admin_authority("0.0.0.0:9090"), "127.0.0.1:9090");
        assert_eq!(admin_authority("[::]:9090"), "[::1]:9090");
        assert_eq!(admin_authority("tether:9090"), "tether:9090");
    }

    #[test]
    fn readyz_failures_are_named() {
        let body = "[+]listeners ok\n[-]not-draining failed\n[+]registration ok\nsessions 2\n";
        assert_eq!(
            parse_readyz(503, body),
            Readiness {
                ready: false,
                failed: vec!["not-draining".into()]
            }
        );
        assert!(parse_readyz(200, "[+]listeners ok\n").ready);
    }

    #[test]
    fn table_has_a_header_line_and_one_row_per_session() {
        let rows = vec![
            Row {
                session_id: "alice-com.example".into(),
                state: "live".into(),
                age_ms: 184_000,
                frames_up: 12,
                frames_down: 3400,
                ..Row::default()
            },
            Row {
                session_id: "bob-com.example".into(),
                state: "app_down".into(),
                age_ms: 7_260_000,
                buffered_frames: 40,
                buffered_bytes: 3 * 1024 + 512,
                oldest_buffered_ms: 850,
                recoveries: 2,
                last_recovery_ago_ms: Some(65_000),
                ..Row::default()
            },
        ];
        let ready = Readiness {
            ready: true,
            failed: vec![],
        };
        let text = render("127.0.0.1:9090", &ready, &rows);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "Tether at 127.0.0.1:9090: ready; 2 sessions (1 live, 1 app_down)"
        );
        assert!(lines[1].starts_with("SESSION "), "{text}");
        assert!(
            lines[2].starts_with("alice-com.example  live ") && lines[2].contains("3m04s"),
            "{text}"
        );
        for want in ["2h01m", "40 (3.5 KiB)", "850ms", "1m05s ago"] {
            assert!(lines[3].contains(want), "{want} in {text}");
        }
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn an_empty_tether_prints_only_the_header() {
        let text = render(
            "a:1",
            &Readiness {
                ready: false,
                failed: vec!["not-draining".into()],
            },
            &[],
        );
        assert_eq!(
            text,
            "Tether at a:1: NOT READY (not-draining failed); 0 sessions\n"
        );
    }
}
