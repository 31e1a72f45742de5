//! Fuzz harnesses for the code that reads bytes Tether does not write itself: frame peeking
//! and the handshake frames ([`crate::protocol`]), the cloud's `session_request` and its URL
//! rewrite ([`crate::webhook`]), the local listener's routing ([`crate::upstream::clouds`] and
//! [`APP_WS_PATHS`]) and the configuration ([`crate::config`]).
//!
//! Each `pub fn` takes the fuzzer's bytes, runs one parser and panics when one of its
//! invariants breaks: round trips, outputs that must parse again, inputs a parser must never
//! accept, agreement with serde_json. The targets in `fuzz/fuzz_targets/` only call these,
//! and `tests/fuzz_corpus.rs` replays the committed corpora through them on stable.
//!
//! No I/O: nothing here opens a socket, and the config harness never lets a file path reach
//! the loader (a fuzzed `api_key_file: /dev/zero` would read forever).
//!
//! Known findings in the code under test are carved out by name (see [`known`]) so the
//! fuzzer can keep looking past them; each carve-out is to go when its bug is fixed.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use url::Url;

use crate::config::{Config, ConfigError, ENV_OVERRIDES};
use crate::downstream::listener::APP_WS_PATHS;
use crate::protocol::{iso8601, top_level_str, ConnectionError, ConnectionInit, Kind};
use crate::upstream::clouds::{self, CloudIds};
use crate::webhook::{self, WebhookError, URL_FIELDS};

/// JSON's whitespace (RFC 8259), which is all the frame scanner skips.
const JSON_WS: [char; 4] = [' ', '\t', '\n', '\r'];

/// Clouds a running Tether has usually seen before a forged webhook arrives; the webhook
/// harness registers them first, so an id collision with one of them is caught.
const KNOWN_CLOUDS: &[&str] = &[
    "wss://api.mentra.glass/app-ws",
    "wss://prod.augmentos.cloud/app-ws",
    "ws://localhost:8002/app-ws",
];

/// `listen.local_advertise` values the webhook harness writes into local URLs.
const ADVERTISE: &[&str] = &[
    "127.0.0.1:8081",
    "localhost:8081",
    "[::1]:8081",
    "tether.internal",
];

/// Cloud origin the routing harness uses when its input names none.
const DEFAULT_CLOUD: &str = "wss://api.example-cloud.net/app-ws";

/// Separates the YAML from the environment block in a config input (YAML text has no NUL).
const ENV_SEPARATOR: u8 = 0;

/// The API key the config harness always supplies, so `api_key_file` is never read.
const FUZZ_API_KEY: &str = "fuzz-key";

// === frames ===

/// Frame peeking: `protocol::top_level_str` and `Kind::of_text` on one text frame.
///
/// Where serde_json reads the frame as an object, the scanner returns the first member whose
/// key is written without escapes (its value if a string, else `None`); a frame that does
/// not open with `{` is never given a value; `Kind::of_text` follows `top_level_str`.
pub fn peek(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let members = Members::of(text);
    let mut keys = vec!["type", "view", "section", "sessionId", "no-such-key"];
    if let Some(members) = &members {
        let unescaped = members.iter().filter(|m| !m.escaped);
        keys.extend(unescaped.take(8).map(|m| m.key.as_str()));
    }
    for key in keys {
        check_peek(text, key, members.as_deref());
    }

    let kind = Kind::of_text(text);
    let want = match top_level_str(text, "type") {
        Ok(Some(ty)) => Kind::from_wire(&ty),
        Ok(None) => Kind::Unknown,
        Err(_) => Kind::Malformed,
    };
    assert_eq!(
        kind, want,
        "of_text disagrees with top_level_str on {text:?}"
    );
    assert_ne!(kind, Kind::Binary, "a text frame is never binary");
    assert_eq!(Kind::ALL[kind.index()], kind);
    if !matches!(kind, Kind::Unknown | Kind::Malformed) {
        assert_eq!(Kind::from_wire(kind.label()), kind, "label of {kind:?}");
    }
}

fn check_peek(text: &str, key: &str, members: Option<&[Member]>) {
    let got = top_level_str(text, key).map(|v| v.map(Cow::into_owned));
    let opens_object = text.trim_start_matches(JSON_WS).starts_with('{');
    match &got {
        Ok(Some(_)) => assert!(opens_object, "a value found outside an object: {text:?}"),
        Err(e) => assert!(
            e.at <= text.len() + known::MALFORMED_AT_SLACK,
            "error offset {} past the end of {text:?}",
            e.at
        ),
        Ok(None) => {}
    }
    if !opens_object {
        assert!(
            got.is_err(),
            "{text:?} is not an object but peeks as {got:?}"
        );
    }
    if let Some(members) = members {
        let want = members
            .iter()
            .find(|m| !m.escaped && m.key == key)
            .and_then(|m| m.value.as_str().map(str::to_string));
        assert_eq!(got, Ok(want), "key {key:?} of {text:?}");
    }
}

/// The init an app opens with: `ConnectionInit::parse`, and the error frame Tether answers a
/// bad one with (`ConnectionError::frame`, stamped by `iso8601`).
///
/// `parse` accepts exactly the frames whose `type` (as the scanner reads it) is
/// `tpa_connection_init` and whose `sessionId` / `packageName` are absent, null or strings
/// written once; the fields it returns are serde_json's. The error frame is JSON carrying the
/// code, message and stamp given, classified `tpa_connection_error`; the stamp is a valid
/// ISO-8601 UTC instant that reads back to the same millisecond.
pub fn connection_init(data: &[u8]) {
    let stamp = stamp_of(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_init(text);
    let (code, message) = text.split_once('\n').unwrap_or(("MALFORMED_MESSAGE", text));
    check_error_frame(code, message, stamp);
}

fn check_init(text: &str) {
    let init = ConnectionInit::parse(text);
    if init.is_some() {
        assert_eq!(Kind::of_text(text), Kind::ConnectionInit, "{text:?}");
    }
    let Some(members) = Members::of(text) else {
        return;
    };
    let is_init = members
        .iter()
        .find(|m| !m.escaped && m.key == "type")
        .is_some_and(|m| m.value.as_str() == Some("tpa_connection_init"));
    let want = if is_init {
        match (
            init_field(&members, "sessionId"),
            init_field(&members, "packageName"),
        ) {
            (Some(session_id), Some(package_name)) => Some((session_id, package_name)),
            _ => None,
        }
    } else {
        None
    };
    let got = init.map(|i| (i.session_id, i.package_name));
    assert_eq!(got, want, "init fields of {text:?}");
}

/// How serde reads one optional string field of the init: `Some(value)` when the frame is
/// accepted (absent or null: `Some(None)`), `None` when the field refuses it.
fn init_field(members: &[Member], name: &str) -> Option<Option<String>> {
    let mut found = members.iter().filter(|m| m.key == name);
    let first = found.next();
    if found.next().is_some() {
        return None; // serde refuses a field given twice
    }
    match first.map(|m| &m.value) {
        None | Some(Scalar::Null) => Some(None),
        Some(Scalar::Str(s)) => Some(Some(s.clone())),
        Some(Scalar::Other) => None,
    }
}

/// A millisecond instant from the first 8 bytes, formatted and checked to read back.
fn stamp_of(data: &[u8]) -> String {
    let mut raw = [0u8; 8];
    for (slot, b) in raw.iter_mut().zip(data) {
        *slot = *b;
    }
    let ms = u64::from_le_bytes(raw);
    let stamp = iso8601(u128::from(ms));
    assert_eq!(unix_ms_of(&stamp), Some(ms), "iso8601({ms}) = {stamp:?}");
    stamp
}

fn check_error_frame(code: &str, message: &str, stamp: String) {
    let frame = ConnectionError::frame(code, message, stamp.clone());
    assert_eq!(Kind::of_text(&frame), Kind::ConnectionError, "{frame}");
    let v: Value = serde_json::from_str(&frame).expect("Tether's error frame is JSON");
    assert_eq!(v["type"], "tpa_connection_error");
    assert_eq!(v["code"], code);
    assert_eq!(v["message"], message);
    assert_eq!(v["timestamp"], stamp.as_str());
}

/// Reads `YYYY-MM-DDTHH:MM:SS.mmmZ` (four or more year digits) back to UNIX milliseconds,
/// refusing any field out of its calendar range.
fn unix_ms_of(stamp: &str) -> Option<u64> {
    let body = stamp.strip_suffix('Z')?;
    let (date, time) = body.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day) = (d.next()?, d.next()?, d.next()?);
    let mut t = time.split([':', '.']);
    let (h, mi, s, ms) = (t.next()?, t.next()?, t.next()?, t.next()?);
    if d.next().is_some() || t.next().is_some() || y.len() < 4 {
        return None;
    }
    let digits = |f: &str, width: usize| -> Option<i128> {
        (f.len() == width && f.bytes().all(|b| b.is_ascii_digit()))
            .then(|| f.parse().ok())
            .flatten()
    };
    let year = digits(y, y.len())?;
    let (month, day) = (digits(m, 2)?, digits(day, 2)?);
    let (hour, min, sec, milli) = (digits(h, 2)?, digits(mi, 2)?, digits(s, 2)?, digits(ms, 3)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let in_month = usize::try_from(month - 1)
        .ok()
        .and_then(|i| month_days.get(i))?;
    if !(1..=*in_month).contains(&day) || hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    // Days from civil (proleptic Gregorian), the inverse of the formatter's civil-from-days.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec;
    u64::try_from(secs * 1000 + milli).ok()
}

// === webhook ===

/// The cloud's `session_request`: `webhook::parse_session_request` on any JSON object, then
/// the rewrite the intake does and the way back through the local listener.
///
/// The parse refuses exactly the bodies without a non-empty string `sessionId` and those
/// whose first bad URL field it names; it keeps every URL field holding a non-empty string.
/// Each URL becomes a `ws://` URL on the local listener that `split_local_path` splits back
/// into the cloud's id and the original path, that dials the original URL again, and the
/// rewritten body parses again with the same session.
pub fn webhook(data: &[u8]) {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(data) else {
        return; // the intake relays anything else to the app untouched
    };
    let session_id = obj
        .get("sessionId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let req = match webhook::parse_session_request(&obj) {
        Ok(req) => req,
        Err(WebhookError::MissingSessionId) => {
            assert!(session_id.is_none(), "sessionId {session_id:?} not seen");
            return;
        }
        Err(WebhookError::BadUrl { field, value }) => {
            assert!(session_id.is_some(), "BadUrl before MissingSessionId");
            assert!(
                URL_FIELDS.contains(&field.as_str()),
                "{field} is no URL field"
            );
            assert_eq!(
                obj.get(&field).and_then(Value::as_str),
                Some(value.as_str())
            );
            assert!(
                !value.is_empty(),
                "an empty URL field is skipped, not refused"
            );
            assert!(
                cloud_ws_url(&value).is_none(),
                "{value:?} refused but valid"
            );
            // It is the first bad one: every URL field before it is valid or empty.
            for f in URL_FIELDS.iter().take_while(|f| **f != field) {
                let text = obj.get(*f).and_then(Value::as_str).unwrap_or_default();
                assert!(
                    text.is_empty() || cloud_ws_url(text).is_some(),
                    "{f} before {field}"
                );
            }
            return;
        }
    };
    assert_eq!(Some(req.session_id.as_str()), session_id);
    let user_id = obj.get("userId").and_then(Value::as_str);
    assert_eq!(req.user_id.as_deref(), user_id);
    let given: Vec<&str> = URL_FIELDS
        .iter()
        .copied()
        .filter(|f| {
            obj.get(*f)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
        .collect();
    let kept: Vec<&str> = req.urls.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(kept, given, "URL fields kept");
    for (field, url) in &req.urls {
        let text = obj.get(field).and_then(Value::as_str).unwrap_or_default();
        assert_eq!(cloud_ws_url(text).as_ref(), Some(url), "{field}");
    }

    let table = CloudIds::ephemeral().expect("a key");
    for known in KNOWN_CLOUDS {
        let url = Url::parse(known).expect("known cloud URL");
        table.register(&url).expect("a known cloud gets an id");
    }
    // An origin too long for an id makes the intake refuse the whole webhook (400).
    if req.urls.iter().any(|(_, u)| table.register(u).is_err()) {
        return;
    }
    let advertise = ADVERTISE[data.len() % ADVERTISE.len()];
    let mut rewritten = obj.clone();
    for (field, url) in &req.urls {
        let local = check_local_url(&table, advertise, url);
        rewritten.insert(field.clone(), Value::String(local));
    }

    // The app's SDK reads the rewritten body: same session, every URL on the local listener.
    let body = serde_json::to_vec(&Value::Object(rewritten)).expect("serialise the body");
    let again: Map<String, Value> = serde_json::from_slice(&body).expect("rewritten body");
    let req2 = webhook::parse_session_request(&again).expect("rewritten request parses");
    assert_eq!(req2.session_id, req.session_id);
    assert_eq!(req2.user_id, req.user_id);
    let fields2: Vec<&str> = req2.urls.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields2, kept);
    for (_, url) in &req2.urls {
        assert_eq!(url.scheme(), "ws");
        assert_eq!(authority(url), advertise);
    }
}

/// A URL the webhook parser must accept: ws:// or wss:// with a host.
fn cloud_ws_url(text: &str) -> Option<Url> {
    let url = Url::parse(text).ok()?;
    (matches!(url.scheme(), "ws" | "wss") && url.host_str().is_some()).then_some(url)
}

/// `host[:port]` of a URL.
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Registers a cloud URL, rewrites it as the intake does, and follows the local URL back the
/// way the listener does; returns the local URL.
fn check_local_url(table: &CloudIds, advertise: &str, url: &Url) -> String {
    let id = table.register(url).expect("checked by the caller");
    assert!(
        id.len() > 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "cloud id {id:?}"
    );
    let origin = clouds::origin_of(url).expect("an accepted URL has an origin");
    assert_eq!(
        table.get(&id),
        Some(origin.clone()),
        "id {id} names another cloud"
    );

    let local = webhook::local_url(advertise, &id, url);
    let parsed = Url::parse(&local).unwrap_or_else(|e| panic!("{local:?}: {e}"));
    assert_eq!(parsed.scheme(), "ws", "{local}");
    assert_eq!(authority(&parsed), advertise, "{local}");
    assert_eq!(parsed.fragment(), None, "{local}");
    let (got_id, rest) =
        clouds::split_local_path(parsed.path()).unwrap_or_else(|| panic!("no prefix: {local}"));
    assert_eq!(got_id, id, "{local}");
    assert_eq!(rest, url.path(), "{local}");
    assert_eq!(parsed.query(), url.query(), "{local}");
    if APP_WS_PATHS.contains(&url.path()) {
        assert!(
            APP_WS_PATHS.contains(&rest),
            "{local}: refused by the listener"
        );
    }

    // The listener dials the cloud at the origin the id names, with the local path and query.
    let path_and_query = match parsed.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let dialled = clouds::join(&origin, &path_and_query, false)
        .unwrap_or_else(|| panic!("cannot dial {local}"));
    let mut want = url.clone();
    want.set_fragment(None);
    // The origin keeps no credentials, so neither does the URL dialled.
    let _ = want.set_username("");
    let _ = want.set_password(None);
    assert_eq!(dialled, want, "{local} dials another URL");
    local
}

// === local listener ===

/// The local listener's routing: `clouds::split_local_path`, `clouds::join` (ws and http
/// forms), `clouds::origin_of`, and the `APP_WS_PATHS` check `downstream::listener` makes.
///
/// Input: `<cloud URL>\n<request target>`, or a request target alone (the cloud is then
/// `wss://api.example-cloud.net/`). An origin is the URL's scheme, host and port and nothing else, and is
/// its own origin; a local path splits back into what it was joined from; a request target
/// hyper accepts resolves on the session's cloud and nowhere else, in both forms, and a
/// WebSocket upgrade is sent on only for one of the app paths, which reaches the cloud as is.
pub fn routing(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (cloud, target) = text.split_once('\n').unwrap_or((DEFAULT_CLOUD, text));
    check_split(target);
    let Ok(url) = Url::parse(cloud) else {
        return;
    };
    let Some(origin) = check_origin(&url) else {
        return;
    };
    // Arbitrary text must not panic the joiner; only what hyper accepts reaches it.
    let _ = clouds::join(&origin, target, false);
    let _ = clouds::join(&origin, target, true);
    // The listener routes on the path and query of what hyper accepts as a request target
    // (absolute-form included).
    let Ok(uri) = target.parse::<http::Uri>() else {
        return;
    };
    let path = uri.path();
    check_split(path);
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let path_and_query = match clouds::split_local_path(path) {
        Some((_, rest)) => format!("{rest}{query}"),
        None => format!("{path}{query}"),
    };
    check_join(&origin, &path_and_query);
}

fn check_split(path: &str) {
    match clouds::split_local_path(path) {
        None => assert!(!path.starts_with(clouds::PREFIX), "{path:?} not split"),
        Some((id, rest)) => {
            assert!(!id.contains('/'), "id {id:?} of {path:?}");
            assert!(rest.starts_with('/'), "rest {rest:?} of {path:?}");
            let joined = format!("{}{id}{rest}", clouds::PREFIX);
            let bare = format!("{}{id}", clouds::PREFIX);
            assert!(
                joined == path || (rest == "/" && bare == path),
                "{path:?} split into {id:?} + {rest:?}"
            );
        }
    }
}

fn check_origin(url: &Url) -> Option<Url> {
    let Some(origin) = clouds::origin_of(url) else {
        assert!(!matches!(url.scheme(), "ws" | "wss"), "{url} has no origin");
        return None;
    };
    assert_eq!(origin.scheme(), url.scheme(), "{url}");
    assert_eq!(origin.host_str(), url.host_str(), "{url}");
    assert_eq!(
        origin.port_or_known_default(),
        url.port_or_known_default(),
        "{url}"
    );
    assert_eq!(origin.path(), "/", "{url}");
    assert_eq!((origin.query(), origin.fragment()), (None, None), "{url}");
    assert_eq!((origin.username(), origin.password()), ("", None), "{url}");
    assert_eq!(clouds::origin_of(&origin).as_ref(), Some(&origin), "{url}");
    let table = CloudIds::ephemeral().expect("a key");
    let Ok(id) = table.register(url) else {
        // Only an origin too long for an id is refused.
        assert!(origin.as_str().len() > 200, "{url} refused an id");
        return Some(origin);
    };
    assert_eq!(
        table.register(&origin),
        Ok(id),
        "{url} and its origin differ"
    );
    Some(origin)
}

fn check_join(origin: &Url, path_and_query: &str) {
    let ws = clouds::join(origin, path_and_query, false);
    let http = clouds::join(origin, path_and_query, true);
    let at = || format!("{origin} + {path_and_query:?}");
    // Whatever the target, the result is on the origin or there is none.
    let (ws, http) = match (ws, http) {
        (Some(ws), Some(http)) => (ws, http),
        (None, None) => return,
        (ws, http) => panic!("ws {ws:?} and http {http:?} disagree for {}", at()),
    };
    assert_eq!(ws.scheme(), origin.scheme(), "{}", at());
    assert_eq!(authority(&ws), authority(origin), "{}", at());
    let http_scheme = if origin.scheme() == "wss" {
        "https"
    } else {
        "http"
    };
    assert_eq!(http.scheme(), http_scheme, "{}", at());
    assert_eq!(authority(&http), authority(origin), "{}", at());
    assert_eq!(http.path(), ws.path(), "{}", at());
    assert_eq!(http.query(), ws.query(), "{}", at());
    // The listener's upgrade check, as `downstream::listener::handle` makes it.
    let ws_path = path_and_query.split('?').next().unwrap_or_default();
    if APP_WS_PATHS.contains(&ws_path) {
        assert_eq!(ws.path(), ws_path, "{}", at());
    }
}

// === config ===

/// Configuration: `Config::from_yaml`, and `Config::from_sources` with an environment map.
///
/// Input: YAML, optionally followed by a NUL byte and `NAME=value` lines for the
/// `TETHER_*` overrides. A config that parses honours every documented bound and renders
/// back to YAML that parses to the same config; with overrides it carries each one given,
/// and an override can break only the key it overrides.
pub fn config(data: &[u8]) {
    let (yaml_bytes, env_bytes) = match data.iter().position(|b| *b == ENV_SEPARATOR) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(yaml) = std::str::from_utf8(yaml_bytes) else {
        return;
    };
    let key_only = |name: &str| (name == "TETHER_API_KEY").then(|| FUZZ_API_KEY.to_string());
    let parsed = if known::may_name_a_file(yaml) {
        // `from_yaml` would read that file; with a key in the environment nothing is read.
        Config::from_sources(Some(yaml), "<inline>", &key_only)
    } else {
        Config::from_yaml(yaml)
    };
    if let Ok(cfg) = &parsed {
        check_config(cfg);
        check_rendering(cfg);
    }

    let env = env_bytes.map(env_of).unwrap_or_default();
    if env.is_empty() {
        return;
    }
    let lookup = |name: &str| -> Option<String> {
        if name == "TETHER_API_KEY" {
            return Some(FUZZ_API_KEY.to_string());
        }
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    };
    match (
        &parsed,
        Config::from_sources(Some(yaml), "<inline>", &lookup),
    ) {
        (_, Ok(cfg)) => {
            check_config(&cfg);
            check_overrides(&cfg, &env);
        }
        // YAML is parsed before any override applies.
        (Err(ConfigError::Parse { .. }), Err(e)) => {
            assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
        }
        (Err(_), Err(_)) => {}
        // An override can break only the key it overrides.
        (Ok(_), Err(e)) => {
            let ConfigError::Invalid { key, .. } = &e else {
                panic!("an override made {e}");
            };
            // A slot is the key, perhaps with a note ("limits.max_frame_bytes (both legs)");
            // a shared key's error may name the per-leg key it set.
            let named = ENV_OVERRIDES.iter().any(|(var, slot)| {
                let slot = slot.split(' ').next().unwrap_or_default();
                env.iter().any(|(name, _)| name == var)
                    && (key == var || key == slot || key.starts_with(&format!("{slot}_")))
            });
            assert!(named, "{e}, from overrides {env:?}");
        }
    }
}

/// `NAME=value` lines naming a known override (the API key and its file excepted: the
/// harness supplies the key, and files are never read).
fn env_of(bytes: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(bytes);
    let mut env: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let known = ENV_OVERRIDES.iter().any(|(n, _)| *n == name);
        if known && !matches!(name, "TETHER_API_KEY" | "TETHER_API_KEY_FILE") {
            env.retain(|(n, _)| n != name);
            env.push((name.to_string(), value.to_string()));
        }
    }
    env
}

/// What validation promises of every `Config`.
fn check_config(cfg: &Config) {
    let c = &cfg.cloud;
    let app = &cfg.app;
    assert_eq!(app.url.scheme(), "http", "app.url {}", app.url);
    assert!(app.url.host_str().is_some(), "app.url {}", app.url);
    assert!(app.health_path.starts_with('/'), "{:?}", app.health_path);
    if let Some(ws) = &c.ws_url {
        assert!(
            matches!(ws.scheme(), "ws" | "wss") && ws.host_str().is_some(),
            "{ws}"
        );
        assert!(clouds::origin_of(ws).is_some(), "{ws}");
    }
    if let Some(url) = &cfg.registration.url {
        assert!(matches!(url.scheme(), "http" | "https"), "{url}");
    }
    for (name, value) in [
        ("listen.local_advertise", &cfg.listen.local_advertise),
        ("app.package_name", &app.package_name),
        ("registration.server_url", &cfg.registration.server_url),
    ] {
        if let Some(v) = value {
            assert!(!v.trim().is_empty(), "{name} {v:?}");
        }
    }
    let s = &cfg.session;
    let r = &cfg.registration;
    let l = &cfg.limits;
    let b = &cfg.buffer;
    for (name, d) in [
        ("app.webhook_timeout", app.webhook_timeout),
        ("app.connect_timeout", app.connect_timeout),
        ("cloud.connect_timeout", c.connect_timeout),
        ("cloud.http_timeout", c.http_timeout),
        ("cloud.heartbeat_interval", c.heartbeat_interval),
        ("cloud.reconnect_base", c.reconnect_base),
        ("cloud.reconnect_max", c.reconnect_max),
        ("cloud.resurrection_wait", c.resurrection_wait),
        ("cloud.stop_hold", c.stop_hold),
        ("registration.refresh_interval", r.refresh_interval),
        ("registration.timeout", r.timeout),
        ("registration.backoff_max", r.backoff_max),
        ("limits.init_timeout", l.init_timeout),
        ("session.hold_window", s.hold_window),
        ("session.intent_window", s.intent_window),
        ("session.replay_wait", s.replay_wait),
        ("session.app_ping_interval", s.app_ping_interval),
        ("session.probe_interval", s.probe_interval),
        ("session.webhook_hold", s.webhook_hold),
        ("buffer.up_max_age", b.up_max_age),
        ("buffer.down_max_age", b.down_max_age),
    ] {
        assert!(!d.is_zero(), "{name} is zero");
    }
    assert!(c.reconnect_base <= c.reconnect_max, "reconnect bounds");
    assert!(
        r.enabled || !r.required,
        "registration required but disabled"
    );
    assert!(
        s.hold_window.as_millis() <= 300_000,
        "hold window {:?}",
        s.hold_window
    );
    assert!(
        s.webhook_hold.as_millis() < 10_000,
        "webhook hold {:?}",
        s.webhook_hold
    );
    assert!(
        (1024..=256 << 20).contains(&l.max_frame_bytes_up),
        "max frame up"
    );
    assert!(
        (1024..=256 << 20).contains(&l.max_frame_bytes_down),
        "max frame down"
    );
    assert!(
        (1024..=1 << 20).contains(&l.ws_read_buffer_bytes),
        "read buffer"
    );
    for (name, n) in [
        ("cloud.heartbeat_misses", c.heartbeat_misses as usize),
        ("session.app_ping_misses", s.app_ping_misses as usize),
        ("session.refire_concurrency", s.refire_concurrency),
        ("buffer.up_max_frames", b.up_max_frames),
        ("buffer.down_max_frames", b.down_max_frames),
    ] {
        assert!(n >= 1, "{name} is zero");
    }
    for (name, n) in [
        ("buffer.up_max_bytes", b.up_max_bytes),
        ("buffer.down_max_bytes", b.down_max_bytes),
        ("buffer.global_max_bytes", b.global_max_bytes),
    ] {
        assert!(n >= 1024, "{name} below 1 KiB");
    }
}

/// A config written out as YAML reads back to itself.
fn check_rendering(cfg: &Config) {
    let text = render(cfg);
    let again = Config::from_sources(Some(&text), "<rendered>", &|name| {
        (name == "TETHER_API_KEY").then(|| cfg.app.api_key.expose().to_string())
    })
    .unwrap_or_else(|e| panic!("rendered config refused: {e}\n{text}"));
    assert_eq!(render(&again), text, "rendered config changed on reading");
    assert_eq!(again.app.api_key, cfg.app.api_key);
}

/// Every override given is what the config holds.
fn check_overrides(cfg: &Config, env: &[(String, String)]) {
    for (name, v) in env {
        let t = v.trim();
        let shown = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
        match name.as_str() {
            "TETHER_PUBLIC_LISTEN" => assert_eq!(Ok(cfg.listen.public), t.parse()),
            "TETHER_LOCAL_LISTEN" => assert_eq!(Ok(cfg.listen.local), t.parse()),
            "TETHER_ADMIN_LISTEN" => assert_eq!(Ok(cfg.listen.admin), t.parse()),
            "TETHER_LOCAL_ADVERTISE" => {
                assert_eq!(cfg.listen.local_advertise, shown(&Some(v.clone())));
            }
            "TETHER_APP_URL" => assert_eq!(Ok(cfg.app.url.clone()), Url::parse(t)),
            "TETHER_PACKAGE_NAME" => {
                assert_eq!(cfg.app.package_name, shown(&Some(v.clone())));
            }
            "TETHER_CLOUD_WS_URL" if t.is_empty() => assert_eq!(cfg.cloud.ws_url, None),
            "TETHER_CLOUD_WS_URL" => assert_eq!(cfg.cloud.ws_url, Url::parse(t).ok()),
            "TETHER_MAX_FRAME_BYTES" => {
                // The per-leg variables win over the shared one.
                let given = |n: &str| env.iter().any(|(k, _)| k == n);
                if !given("TETHER_MAX_FRAME_BYTES_UP") {
                    assert_eq!(Ok(cfg.limits.max_frame_bytes_up), t.parse());
                }
                if !given("TETHER_MAX_FRAME_BYTES_DOWN") {
                    assert_eq!(Ok(cfg.limits.max_frame_bytes_down), t.parse());
                }
            }
            "TETHER_LOG_LEVEL" => assert_eq!(&cfg.log.level, v),
            "TETHER_LOG_FORMAT" => {
                let format = serde_json::to_value(cfg.log.format).expect("format");
                assert_eq!(format.as_str(), Some(t), "TETHER_LOG_FORMAT");
            }
            _ => {}
        }
    }
}

/// Writes a config as YAML, every key spelled out.
fn render(cfg: &Config) -> String {
    use std::fmt::Write as _;
    let q = |s: &str| yaml_quote(s);
    let ms = |d: std::time::Duration| d.as_millis();
    let label = |v: Value| v.as_str().map(yaml_quote).unwrap_or_default();
    let (listen, app, c, l, s, b, r) = (
        &cfg.listen,
        &cfg.app,
        &cfg.cloud,
        &cfg.limits,
        &cfg.session,
        &cfg.buffer,
        &cfg.registration,
    );
    let mut out = String::from("version: 1\nlisten:\n");
    let _ = writeln!(out, "  public: {}", q(&listen.public.to_string()));
    let _ = writeln!(out, "  local: {}", q(&listen.local.to_string()));
    let _ = writeln!(out, "  admin: {}", q(&listen.admin.to_string()));
    if let Some(a) = &listen.local_advertise {
        let _ = writeln!(out, "  local_advertise: {}", q(a));
    }
    let _ = writeln!(out, "app:\n  url: {}", q(app.url.as_str()));
    if let Some(p) = &app.package_name {
        let _ = writeln!(out, "  package_name: {}", q(p));
    }
    let _ = writeln!(out, "  health_path: {}", q(&app.health_path));
    let _ = writeln!(out, "  webhook_timeout_ms: {}", ms(app.webhook_timeout));
    let _ = writeln!(out, "  connect_timeout_ms: {}", ms(app.connect_timeout));
    out.push_str("cloud:\n");
    if let Some(u) = &c.ws_url {
        let _ = writeln!(out, "  ws_url: {}", q(u.as_str()));
    }
    let heartbeat = label(serde_json::to_value(c.heartbeat).unwrap_or_default());
    let _ = writeln!(out, "  connect_timeout_ms: {}", ms(c.connect_timeout));
    let _ = writeln!(out, "  http_timeout_ms: {}", ms(c.http_timeout));
    let _ = writeln!(out, "  heartbeat: {heartbeat}");
    let _ = writeln!(out, "  heartbeat_interval_ms: {}", ms(c.heartbeat_interval));
    let _ = writeln!(out, "  heartbeat_misses: {}", c.heartbeat_misses);
    let _ = writeln!(out, "  reconnect_base_ms: {}", ms(c.reconnect_base));
    let _ = writeln!(out, "  reconnect_max_ms: {}", ms(c.reconnect_max));
    let _ = writeln!(out, "  resurrection_wait_ms: {}", ms(c.resurrection_wait));
    let _ = writeln!(out, "  stop_hold_ms: {}", ms(c.stop_hold));
    out.push_str("limits:\n");
    let _ = writeln!(out, "  max_frame_bytes_up: {}", l.max_frame_bytes_up);
    let _ = writeln!(out, "  max_frame_bytes_down: {}", l.max_frame_bytes_down);
    let _ = writeln!(
        out,
        "  max_webhook_body_bytes: {}",
        l.max_webhook_body_bytes
    );
    let _ = writeln!(out, "  ws_read_buffer_bytes: {}", l.ws_read_buffer_bytes);
    let _ = writeln!(out, "  init_timeout_ms: {}", ms(l.init_timeout));
    out.push_str("session:\n");
    let _ = writeln!(out, "  hold_window_ms: {}", ms(s.hold_window));
    let _ = writeln!(out, "  intent_window_ms: {}", ms(s.intent_window));
    let _ = writeln!(out, "  replay_wait_ms: {}", ms(s.replay_wait));
    let _ = writeln!(out, "  app_ping_interval_ms: {}", ms(s.app_ping_interval));
    let _ = writeln!(out, "  app_ping_misses: {}", s.app_ping_misses);
    let _ = writeln!(out, "  probe_interval_ms: {}", ms(s.probe_interval));
    let _ = writeln!(out, "  webhook_hold_ms: {}", ms(s.webhook_hold));
    let _ = writeln!(out, "  refire_concurrency: {}", s.refire_concurrency);
    out.push_str("buffer:\n");
    let _ = writeln!(out, "  up_max_frames: {}", b.up_max_frames);
    let _ = writeln!(out, "  up_max_bytes: {}", b.up_max_bytes);
    let _ = writeln!(out, "  up_max_age_ms: {}", ms(b.up_max_age));
    let _ = writeln!(out, "  down_max_frames: {}", b.down_max_frames);
    let _ = writeln!(out, "  down_max_bytes: {}", b.down_max_bytes);
    let _ = writeln!(out, "  down_max_age_ms: {}", ms(b.down_max_age));
    let _ = writeln!(out, "  global_max_bytes: {}", b.global_max_bytes);
    let _ = writeln!(out, "registration:\n  enabled: {}", r.enabled);
    if let Some(u) = &r.url {
        let _ = writeln!(out, "  url: {}", q(u.as_str()));
    }
    if let Some(u) = &r.server_url {
        let _ = writeln!(out, "  server_url: {}", q(u));
    }
    let _ = writeln!(out, "  required: {}", r.required);
    let _ = writeln!(out, "  refresh_interval_ms: {}", ms(r.refresh_interval));
    let _ = writeln!(out, "  timeout_ms: {}", ms(r.timeout));
    let _ = writeln!(out, "  backoff_max_ms: {}", ms(r.backoff_max));
    let format = label(serde_json::to_value(cfg.log.format).unwrap_or_default());
    let _ = writeln!(
        out,
        "log:\n  level: {}\n  format: {format}",
        q(&cfg.log.level)
    );
    out
}

/// A YAML double-quoted scalar: printable ASCII as is, everything else escaped.
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\U{:08x}", u32::from(c))),
        }
    }
    out.push('"');
    out
}

// === known findings ===

/// Findings in the code under test that the harnesses step around until they are fixed.
/// Each names the input that shows it; remove the carve-out with the fix.
///
/// Not carved out but stated as the contract, since the scanner is meant to stop early:
/// `top_level_str` reads the *first* of duplicate keys and skips keys written with escapes,
/// where `JSON.parse` (the cloud and the SDK) takes the last and decodes escapes; so
/// `{"type":"display_event","type":"tpa_connection_init"}` is a display event to Tether and
/// an init to the cloud.
pub mod known {
    /// `peek::Scanner::string` reports a string cut short at one past the end
    /// (`{"` gives `at: 3` for a 2-byte text).
    pub const MALFORMED_AT_SLACK: usize = 1;

    /// Whether YAML text may set `app.api_key_file` (plainly or through escapes), which
    /// `Config::from_yaml` would read.
    pub fn may_name_a_file(yaml: &str) -> bool {
        yaml.contains("api_key_file") || yaml.contains('\\')
    }
}

// === serde_json's reading of an object, member by member ===

/// One top-level member of a JSON object as serde_json reads it.
struct Member {
    /// The decoded key.
    key: String,
    /// Whether the key is written with an escape.
    escaped: bool,
    value: Scalar,
}

/// What a member's value is, as far as the harnesses care.
enum Scalar {
    Str(String),
    Null,
    Other,
}

impl Scalar {
    fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The members of a JSON object in order, duplicates kept.
struct Members(Vec<Member>);

impl Members {
    /// The members when serde_json reads the whole text as one object.
    fn of(text: &str) -> Option<Vec<Member>> {
        serde_json::from_str::<Members>(text).ok().map(|m| m.0)
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<Key>()? {
                    let value = map.next_value::<Scalar>()?;
                    out.push(Member {
                        key: key.text,
                        escaped: key.escaped,
                        value,
                    });
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key, and whether serde_json had to decode escapes in it (it lends the input's own
/// bytes only when there were none).
struct Key {
    text: String,
    escaped: bool,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key, E> {
                Ok(Key {
                    text: v.to_string(),
                    escaped: false,
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    text: v.to_string(),
                    escaped: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}
