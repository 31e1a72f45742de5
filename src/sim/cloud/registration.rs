//! The seed design's app-server registry (DESIGN.md §6; PROTOCOL.md §12 describes the C-TPA
//! API it grew from): `POST /api/tpa/register`, `GET /api/tpa/sessions`, and the recovery
//! workflow a registration triggers — a fresh `session_request` webhook for every session of
//! the package whose app socket is gone.
//!
//! State lives in [`RegistrationState`] behind its own mutex, taken after (never while
//! awaiting, never around) the session registry lock. Answers can be faulted for tests with
//! [`RegistrationMode`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::engine::{lock, Engine};
use super::server::{self, Resp};
use super::session::{AppState, Session};

/// How long a `hang` answer is held before giving up with 504 (the client times out first).
const HANG_FOR: Duration = Duration::from_secs(30);

/// Registration attempts kept in [`RegistryStats::attempts`], oldest dropped first.
const MAX_ATTEMPTS_LOGGED: usize = 1_000;

/// How the emulator answers `POST /api/tpa/register`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMode {
    /// Validate and register (201).
    #[default]
    Ok,
    /// 404, as the production cloud does since the API was removed (§12).
    NotFound,
    /// 500 `{success:false}`.
    Error,
    /// Read the request, then answer nothing for 30 s (then 504).
    Hang,
}

/// One `POST /api/tpa/register` as the emulator saw it.
#[derive(Clone, Debug, Serialize)]
pub struct RegistrationAttempt {
    /// Milliseconds since the emulator started.
    pub at_ms: u64,
    /// `ok` | `refresh` | `restart` are successes; else `not_found` | `error` | `hang` |
    /// `unauthorized` | `bad_request`.
    pub outcome: String,
    /// The `serverUrl` sent, if the body had one.
    pub server_url: Option<String>,
}

/// One registered app server (package + `serverUrl`).
#[derive(Clone, Debug, Serialize)]
pub struct RegisteredServer {
    pub package_name: String,
    pub server_url: String,
    /// Current id; a new one is issued at every restart.
    pub registration_id: String,
    /// `version` and `capabilities` of the latest registration.
    pub version: Option<String>,
    pub capabilities: Value,
    /// Accepted registrations, refreshes included.
    pub registrations: u64,
    /// Registrations that did not renew the current id: the server process started again.
    pub restarts: u64,
    /// Registrations that renewed the current id.
    pub refreshes: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
}

/// The registry view of `GET /control/registry` and [`super::CloudSim::registry_stats`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegistryStats {
    /// Whether the API is mounted at all (`CloudSimConfig::registration_api`).
    pub api_enabled: bool,
    pub mode: RegistrationMode,
    /// Answers left in `mode` before it reverts to `ok`; `None` = until changed.
    pub mode_remaining: Option<u32>,
    /// `POST /api/tpa/register` requests, any outcome.
    pub requests: u64,
    /// Accepted registrations (first ones, restarts and refreshes).
    pub registrations: u64,
    pub restarts: u64,
    pub refreshes: u64,
    /// 401 answers (wrong package or API key).
    pub unauthorized: u64,
    /// 400 answers (body not a registration).
    pub bad_requests: u64,
    /// `GET /api/tpa/sessions` answered with 200.
    pub session_queries: u64,
    /// `session_request` webhooks re-sent by the recovery workflow.
    pub recovery_attempts: u64,
    /// Recovery webhooks followed by a valid init.
    pub recovery_successes: u64,
    pub servers: Vec<RegisteredServer>,
    /// The latest attempts, oldest first.
    pub attempts: Vec<RegistrationAttempt>,
}

/// The registry's mutable state.
#[derive(Debug, Default)]
pub(crate) struct RegistrationState {
    mode: RegistrationMode,
    mode_remaining: Option<u32>,
    next_id: u64,
    stats: RegistryStats,
    attempts: VecDeque<RegistrationAttempt>,
}

/// A validated registration body.
#[derive(Debug, Clone, PartialEq)]
struct Registration {
    package_name: String,
    api_key: String,
    server_url: String,
    version: Option<String>,
    capabilities: Value,
    registration_id: Option<String>,
}

/// What an accepted registration was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Restart,
    Refresh,
}

// === impl RegistrationState ===

impl RegistrationState {
    /// The mode for the next answer, consuming one of its remaining uses.
    fn take_mode(&mut self) -> RegistrationMode {
        let mode = self.mode;
        if let Some(left) = self.mode_remaining.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.mode = RegistrationMode::Ok;
                self.mode_remaining = None;
            }
        }
        mode
    }

    fn log(&mut self, at_ms: u64, outcome: &str, server_url: Option<&str>) {
        if self.attempts.len() == MAX_ATTEMPTS_LOGGED {
            self.attempts.pop_front();
        }
        self.attempts.push_back(RegistrationAttempt {
            at_ms,
            outcome: outcome.to_owned(),
            server_url: server_url.map(str::to_owned),
        });
    }

    /// Records an accepted registration; returns its kind and the id to answer with.
    fn accept(&mut self, reg: &Registration, at_ms: u64) -> (Kind, String) {
        self.stats.registrations += 1;
        let existing = self
            .stats
            .servers
            .iter_mut()
            .find(|s| s.package_name == reg.package_name && s.server_url == reg.server_url);
        let kind = match &existing {
            None => Kind::First,
            Some(s) if reg.registration_id.as_deref() == Some(s.registration_id.as_str()) => {
                Kind::Refresh
            }
            Some(_) => Kind::Restart,
        };
        let fresh_id = match kind {
            Kind::Refresh => None,
            Kind::First | Kind::Restart => {
                self.next_id += 1;
                Some(format!("reg-{}", self.next_id))
            }
        };
        let id = match existing {
            Some(server) => {
                server.registrations += 1;
                server.last_at_ms = at_ms;
                server.version.clone_from(&reg.version);
                server.capabilities = reg.capabilities.clone();
                match kind {
                    Kind::Refresh => server.refreshes += 1,
                    _ => server.restarts += 1,
                }
                if let Some(id) = fresh_id {
                    server.registration_id = id;
                }
                server.registration_id.clone()
            }
            None => {
                let id = fresh_id.unwrap_or_default();
                self.stats.servers.push(RegisteredServer {
                    package_name: reg.package_name.clone(),
                    server_url: reg.server_url.clone(),
                    registration_id: id.clone(),
                    version: reg.version.clone(),
                    capabilities: reg.capabilities.clone(),
                    registrations: 1,
                    restarts: 0,
                    refreshes: 0,
                    first_at_ms: at_ms,
                    last_at_ms: at_ms,
                });
                id
            }
        };
        match kind {
            Kind::Refresh => self.stats.refreshes += 1,
            Kind::Restart => self.stats.restarts += 1,
            Kind::First => {}
        }
        let label = match kind {
            Kind::First => "ok",
            Kind::Restart => "restart",
            Kind::Refresh => "refresh",
        };
        self.log(at_ms, label, Some(&reg.server_url));
        (kind, id)
    }
}

// === impl Registration ===

impl Registration {
    /// Checks the body's shape; the error is the 400 message.
    fn parse(body: &Value) -> Result<Self, String> {
        let text = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .filter(|s| !s.trim().is_empty())
                .map(str::to_owned)
        };
        let (Some(package_name), Some(api_key), Some(server_url)) =
            (text("packageName"), text("apiKey"), text("serverUrl"))
        else {
            return Err(
                "body must be {packageName, apiKey, serverUrl, version?, capabilities?}".to_owned(),
            );
        };
        Ok(Self {
            package_name,
            api_key,
            server_url,
            version: text("version"),
            capabilities: body.get("capabilities").cloned().unwrap_or(Value::Null),
            registration_id: text("registrationId"),
        })
    }
}

/// Whether the registry counts `session` as one of the package's active sessions: its user
/// session lives and the cloud still means the app to run (or lost it without a stop).
fn is_active(session: &Session) -> bool {
    match session.state {
        AppState::Connecting | AppState::Running | AppState::Grace | AppState::Dormant => true,
        AppState::Stopped => session.lost,
        AppState::Stopping | AppState::Ended => false,
    }
}

/// Whether a registration should re-send this session's webhook: its app socket is gone.
fn needs_recovery(session: &Session) -> bool {
    match session.state {
        AppState::Grace | AppState::Dormant => true,
        AppState::Stopped => session.lost,
        _ => false,
    }
}

// === impl Engine ===

impl Engine {
    pub(crate) fn registration(&self) -> std::sync::MutexGuard<'_, RegistrationState> {
        lock(&self.registration)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Sets how the next registrations are answered: `times` answers in `mode`, then `ok`
    /// (`None` = until changed).
    pub(crate) fn set_registration_mode(&self, mode: RegistrationMode, times: Option<u32>) {
        let mut state = self.registration();
        state.mode = mode;
        state.mode_remaining = times.filter(|n| *n > 0);
        if times == Some(0) {
            state.mode = RegistrationMode::Ok;
        }
    }

    pub(crate) fn registry_stats(&self) -> RegistryStats {
        let (attempts, successes) = self.registry().sessions.values().fold((0, 0), |acc, s| {
            (
                acc.0 + u64::from(s.stats.recovery_attempts),
                acc.1 + u64::from(s.stats.recovery_successes),
            )
        });
        let state = self.registration();
        RegistryStats {
            api_enabled: self.cfg.registration_api,
            mode: state.mode,
            mode_remaining: state.mode_remaining,
            recovery_attempts: attempts,
            recovery_successes: successes,
            attempts: state.attempts.iter().cloned().collect(),
            ..state.stats.clone()
        }
    }

    /// Active sessions of `package` (the emulator knows one package).
    fn active_sessions(&self, package: &str) -> Vec<Value> {
        if package != self.cfg.package_name {
            return Vec::new();
        }
        let reg = self.registry();
        let mut rows: Vec<Value> = reg
            .sessions
            .values()
            .filter(|s| reg.active_users.contains(&s.stats.user_id) && is_active(s))
            .map(|s| {
                json!({"sessionId": s.id(), "userId": s.stats.user_id,
                       "state": s.state.as_str(), "socketOpen": s.socket.is_some()})
            })
            .collect();
        rows.sort_by(|a, b| a["sessionId"].as_str().cmp(&b["sessionId"].as_str()));
        rows
    }

    /// The recovery workflow: a fresh `session_request` for every session of the package whose
    /// app socket is gone and whose user is still connected. Returns how many were sent.
    fn recover_sessions(self: &Arc<Self>) -> u64 {
        if self.webhook.is_none() {
            return 0;
        }
        let mut reg = self.registry();
        let users = reg.active_users.clone();
        let mut sent = 0;
        for session in reg.sessions.values_mut() {
            if !users.contains(&session.stats.user_id) || !needs_recovery(session) {
                continue;
            }
            // Outdates a pending grace timer, so it cannot stop the restarted app.
            session.grace_epoch += 1;
            let (epoch, _) = self.begin_start(session);
            session.recovery_epoch = Some(epoch);
            session.stats.recovery_attempts += 1;
            sent += 1;
            tracing::debug!(session_id = session.id(), "cloud-sim: recovery webhook");
        }
        sent
    }
}

const REGISTER_PATH: &str = "/api/tpa/register";
const SESSIONS_PATH: &str = "/api/tpa/sessions";

/// Whether [`handle`] answers this request. With the API off, a registration attempt is
/// still logged (as `not_found`) and left to the unknown-route answer, like production.
pub(crate) fn claims(engine: &Engine, req: &Request<Incoming>) -> bool {
    let register = req.method() == Method::POST && req.uri().path() == REGISTER_PATH;
    let sessions = req.method() == Method::GET && req.uri().path() == SESSIONS_PATH;
    if register && !engine.cfg.registration_api {
        let at = engine.elapsed_ms();
        let mut state = engine.registration();
        state.stats.requests += 1;
        state.log(at, "not_found", None);
    }
    (register || sessions) && engine.cfg.registration_api
}

/// Answers a request [`claims`] accepted.
pub(crate) async fn handle(engine: &Arc<Engine>, req: Request<Incoming>) -> Resp {
    if req.method() == Method::POST {
        register(engine, req.into_body()).await
    } else {
        sessions(engine, &req)
    }
}

fn refusal(status: StatusCode, error: &str) -> Resp {
    server::json(status, &json!({"success": false, "error": error}))
}

/// `POST /api/tpa/register`.
async fn register(engine: &Arc<Engine>, body: Incoming) -> Resp {
    // The body is read first in every mode, so a client's write never races the answer.
    let body = server::read_json(body).await;
    let at = engine.elapsed_ms();
    let mode = {
        let mut state = engine.registration();
        state.stats.requests += 1;
        state.take_mode()
    };
    let parsed = match &body {
        Ok(v) => Registration::parse(v),
        Err(_) => Err("body is not JSON".to_owned()),
    };
    let server_url = parsed.as_ref().ok().map(|r| r.server_url.clone());
    let log = |outcome: &str| {
        engine
            .registration()
            .log(at, outcome, server_url.as_deref())
    };
    match mode {
        RegistrationMode::Ok => {}
        RegistrationMode::NotFound => {
            log("not_found");
            return server::error(StatusCode::NOT_FOUND, "not found");
        }
        RegistrationMode::Error => {
            log("error");
            return refusal(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
        }
        RegistrationMode::Hang => {
            log("hang");
            tokio::time::sleep(HANG_FOR).await;
            return refusal(StatusCode::GATEWAY_TIMEOUT, "Gave up");
        }
    }
    let reg = match parsed {
        Ok(reg) => reg,
        Err(message) => {
            let mut state = engine.registration();
            state.stats.bad_requests += 1;
            state.log(at, "bad_request", None);
            return refusal(StatusCode::BAD_REQUEST, &message);
        }
    };
    if reg.package_name != engine.cfg.package_name || reg.api_key != engine.cfg.api_key {
        let mut state = engine.registration();
        state.stats.unauthorized += 1;
        state.log(at, "unauthorized", Some(&reg.server_url));
        return refusal(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let active = engine.active_sessions(&reg.package_name).len();
    let (kind, id) = engine.registration().accept(&reg, at);
    // A refresh only renews; a first registration or a restart is a (re)started server whose
    // lost sessions are worth a webhook.
    let recovered = if kind == Kind::Refresh {
        0
    } else {
        engine.recover_sessions()
    };
    tracing::debug!(
        server_url = reg.server_url,
        ?kind,
        recovered,
        "cloud-sim: registration"
    );
    server::json(
        StatusCode::CREATED,
        &json!({"success": true, "registrationId": id, "activeSessions": active,
                "recoveredSessions": recovered}),
    )
}

/// `GET /api/tpa/sessions?packageName=..` with `Authorization: Bearer <apiKey>`.
fn sessions(engine: &Engine, req: &Request<Incoming>) -> Resp {
    if server::bearer(req.headers()) != Some(engine.cfg.api_key.as_str()) {
        return refusal(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let query = req.uri().query().unwrap_or_default();
    let package = url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "packageName")
        .map(|(_, v)| v.into_owned())
        .filter(|p| !p.is_empty());
    let Some(package) = package else {
        return refusal(StatusCode::BAD_REQUEST, "packageName is required");
    };
    if package != engine.cfg.package_name {
        return refusal(StatusCode::UNAUTHORIZED, "Invalid API key");
    }
    let rows = engine.active_sessions(&package);
    engine.registration().stats.session_queries += 1;
    server::json(
        StatusCode::OK,
        &json!({"success": true, "packageName": package, "count": rows.len(), "sessions": rows}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(server_url: &str, id: Option<&str>) -> Registration {
        Registration {
            package_name: "p".into(),
            api_key: "k".into(),
            server_url: server_url.into(),
            version: Some("0.1.0".into()),
            capabilities: Value::Null,
            registration_id: id.map(str::to_owned),
        }
    }

    #[test]
    fn first_restart_and_refresh_are_told_apart() {
        let mut state = RegistrationState::default();
        let (kind, id1) = state.accept(&reg("http://a", None), 1);
        assert_eq!((kind, id1.as_str()), (Kind::First, "reg-1"));
        let (kind, id) = state.accept(&reg("http://a", Some(&id1)), 2);
        assert_eq!((kind, id.as_str()), (Kind::Refresh, "reg-1"));
        let (kind, id2) = state.accept(&reg("http://a", None), 3);
        assert_eq!((kind, id2.as_str()), (Kind::Restart, "reg-2"));
        let (kind, _) = state.accept(&reg("http://a", Some("reg-1")), 4);
        assert_eq!(kind, Kind::Restart, "a stale id is a restart");
        let (kind, _) = state.accept(&reg("http://b", None), 5);
        assert_eq!(kind, Kind::First);
        let s = &state.stats;
        assert_eq!((s.registrations, s.restarts, s.refreshes), (5, 2, 1));
        assert_eq!(s.servers.len(), 2);
        assert_eq!(s.servers[0].registrations, 4);
        assert_eq!(s.servers[0].restarts, 2);
        let outcomes: Vec<_> = state.attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["ok", "refresh", "restart", "restart", "ok"]);
    }

    #[test]
    fn modes_revert_after_their_count() {
        let mut state = RegistrationState {
            mode: RegistrationMode::Error,
            mode_remaining: Some(2),
            ..RegistrationState::default()
        };
        assert_eq!(state.take_mode(), RegistrationMode::Error);
        assert_eq!(state.take_mode(), RegistrationMode::Error);
        assert_eq!(state.take_mode(), RegistrationMode::Ok);
        state.mode = RegistrationMode::NotFound;
        assert_eq!(state.take_mode(), RegistrationMode::NotFound);
        assert_eq!(state.take_mode(), RegistrationMode::NotFound);
    }

    #[test]
    fn bodies_are_validated() {
        let ok = json!({"packageName": "p", "apiKey": "k", "serverUrl": "http://a",
                        "version": "1", "capabilities": {"x": true}, "registrationId": "reg-3"});
        let r = Registration::parse(&ok).expect("valid");
        assert_eq!(r.registration_id.as_deref(), Some("reg-3"));
        assert_eq!(r.capabilities, json!({"x": true}));
        assert!(Registration::parse(&json!({"packageName": "p", "apiKey": "k"})).is_err());
        assert!(
            Registration::parse(&json!({"packageName": "", "apiKey": "k", "serverUrl": "u"}))
                .is_err()
        );
        assert!(Registration::parse(&Value::Null).is_err());
    }
}
