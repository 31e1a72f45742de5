//! App lifecycle as the cloud drives it: start with webhook retry and start timeout (§2.1,
//! §10.1), the stop sequence (§10.4), user-session end, and grace -> resurrection (§10.2,
//! §10.3). The async orchestration lives here; state changes are made in `session` under
//! the registry lock, re-checked by epoch after every await.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::engine::Engine;
use super::session::{AppState, GraceTicket, Session, StartSignal};
use super::webhook::{self, WebhookError};
use super::{CloudSimError, StartOutcome};

/// Extra time a caller waits beyond the start timeout for the supervisor's verdict.
const START_WAIT_SLACK: Duration = Duration::from_secs(1);

/// Which webhook a POST attempt is, for the counters.
#[derive(Debug, Clone, Copy)]
enum Hook {
    Session,
    Stop,
}

// === impl Engine ===

impl Engine {
    /// `startApp` (§10.1). See [`super::CloudSim::start_session`].
    pub(crate) async fn start_session(
        self: &Arc<Self>,
        user_id: &str,
    ) -> Result<StartOutcome, CloudSimError> {
        if user_id.is_empty() || user_id.chars().any(char::is_control) {
            return Err(CloudSimError::InvalidInput(format!(
                "bad user id {user_id:?}"
            )));
        }
        let session_id = format!("{user_id}-{}", self.cfg.package_name);
        let (epoch, rx) = {
            let mut reg = self.registry();
            reg.active_users.insert(user_id.to_owned());
            let session = reg
                .sessions
                .entry(session_id.clone())
                .or_insert_with(|| Session::new(&session_id, user_id));
            match session.state {
                AppState::Running | AppState::Grace => return Ok(StartOutcome::Running),
                // A start in progress is joined, not repeated (§10.1).
                AppState::Connecting => (session.start.borrow().epoch, session.start.subscribe()),
                _ => self.begin_start(session),
            }
        };
        Ok(self.wait_start(epoch, rx).await)
    }

    /// Marks the session CONNECTING, then spawns the webhook and the start timer (§2.1).
    pub(crate) fn begin_start(
        self: &Arc<Self>,
        session: &mut Session,
    ) -> (u64, watch::Receiver<StartSignal>) {
        let epoch = session.start.borrow().epoch + 1;
        session.start.send_replace(StartSignal {
            epoch,
            outcome: None,
        });
        session.state = AppState::Connecting;
        let id = session.id().to_owned();
        let user = session.stats.user_id.clone();
        if self.webhook.is_some() {
            self.spawn(
                self.clone()
                    .deliver_session_webhook(id.clone(), user, epoch),
            );
        }
        let rx = session.start.subscribe();
        self.spawn(self.clone().start_timer(id, epoch, rx.clone()));
        (epoch, rx)
    }

    async fn wait_start(&self, epoch: u64, mut rx: watch::Receiver<StartSignal>) -> StartOutcome {
        let limit = Duration::from_millis(self.cfg.app_start_timeout_ms) + START_WAIT_SLACK;
        let verdict = rx.wait_for(|s| s.epoch != epoch || s.outcome.is_some());
        match tokio::time::timeout(limit, verdict).await {
            Ok(Ok(signal)) if signal.epoch == epoch => {
                signal.outcome.clone().unwrap_or(StartOutcome::Timeout)
            }
            _ => StartOutcome::Timeout,
        }
    }

    /// No valid init within the start timeout: stopped, result TIMEOUT (§2.1).
    async fn start_timer(
        self: Arc<Self>,
        session_id: String,
        epoch: u64,
        mut rx: watch::Receiver<StartSignal>,
    ) {
        let limit = Duration::from_millis(self.cfg.app_start_timeout_ms);
        let settled = rx.wait_for(|s| s.epoch != epoch || s.outcome.is_some());
        if tokio::time::timeout(limit, settled).await.is_ok() {
            return;
        }
        let _ = self.with_session(&session_id, |s| {
            if s.start.borrow().epoch == epoch {
                if s.state == AppState::Connecting {
                    s.state = AppState::Stopped;
                    s.lost = true;
                }
                s.resolve_start(StartOutcome::Timeout);
            }
        });
    }

    /// `session_request` with up to `webhook_attempts` POSTs, pausing `pause * 2^n` between
    /// them; any 2xx ends it (§2.1). The cloud keeps retrying even if the init already
    /// arrived, which is what makes the duplicate POST a hazard (§14.13).
    async fn deliver_session_webhook(
        self: Arc<Self>,
        session_id: String,
        user_id: String,
        epoch: u64,
    ) {
        let body =
            webhook::session_request(self.cfg.url_style, &self.ws_base, &session_id, &user_id);
        let mut last_status = None;
        for attempt in 0..self.cfg.webhook_attempts {
            if attempt > 0 {
                let pause = self
                    .cfg
                    .webhook_retry_pause_ms
                    .saturating_mul(1u64 << (attempt - 1).min(16));
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            match self.post_counted(&session_id, Hook::Session, &body).await {
                Ok(status) if (200..300).contains(&status) => return,
                Ok(status) => last_status = Some(status),
                Err(e) => tracing::debug!(error = %e, session_id, "session webhook attempt failed"),
            }
        }
        let _ = self.with_session(&session_id, |s| {
            if s.start.borrow().epoch == epoch && s.state == AppState::Connecting {
                s.state = AppState::Stopped;
                s.lost = true;
                s.resolve_start(StartOutcome::WebhookFailed {
                    status: last_status,
                });
            }
        });
    }

    /// One webhook POST, counted before it is sent and its status recorded after.
    async fn post_counted(
        &self,
        session_id: &str,
        hook: Hook,
        body: &serde_json::Value,
    ) -> Result<u16, WebhookError> {
        let _ = self.with_session(session_id, |s| {
            s.stats.webhooks_sent += 1;
            match hook {
                Hook::Session => s.stats.session_webhooks += 1,
                Hook::Stop => s.stats.stop_webhooks += 1,
            }
        });
        let Some(client) = &self.webhook else {
            return Ok(200);
        };
        let result = client.post(body).await;
        if let Ok(status) = result {
            let _ = self.with_session(session_id, |s| s.stats.last_webhook_status = Some(status));
        }
        result
    }

    /// The stop sequence (§10.4). See [`super::CloudSim::stop_session`].
    pub(crate) async fn stop_session(&self, session_id: &str) -> Result<(), CloudSimError> {
        let stoppable = self.with_session(session_id, |s| {
            let stoppable = !matches!(
                s.state,
                AppState::Stopping | AppState::Stopped | AppState::Ended
            );
            if stoppable {
                s.state = AppState::Stopping;
                s.grace_epoch += 1;
            }
            // A deliberate stop is not a loss: no recovery webhook for it.
            s.lost = false;
            stoppable
        })?;
        if stoppable {
            self.stop_webhook_then_close(session_id).await;
            self.with_session(session_id, |s| {
                // A user-session end during the webhook keeps its `Ended`.
                if s.state == AppState::Stopping {
                    s.state = AppState::Stopped;
                }
            })?;
        }
        Ok(())
    }

    /// `stop_request` (awaited, no retry, §2.2), then subscriptions removed, `app_stopped`
    /// and close 1000 "App stopped" on the socket if one is open. C-June POSTs without a
    /// timeout; we bound it by `webhook_timeout_ms` so a hung app cannot hang the emulator.
    async fn stop_webhook_then_close(&self, session_id: &str) {
        let user_id = self.with_session(session_id, |s| s.stats.user_id.clone());
        if let (Ok(user_id), Some(_)) = (user_id, &self.webhook) {
            let body = webhook::stop_request(session_id, &user_id);
            if let Err(e) = self.post_counted(session_id, Hook::Stop, &body).await {
                tracing::debug!(error = %e, session_id, "stop webhook failed");
            }
        }
        let _ = self.with_session(session_id, |s| s.send_stopped("App stopped"));
    }

    /// User session disposal (§10.4): `app_stopped` + close 1000 "User session ended" to
    /// every app of the user, no webhook.
    pub(crate) fn end_user_session(&self, user_id: &str) -> Result<(), CloudSimError> {
        let mut reg = self.registry();
        if !reg.active_users.remove(user_id) {
            return Err(CloudSimError::UnknownUser(user_id.to_owned()));
        }
        for session in reg.of_user(user_id) {
            session.send_stopped("User session ended");
            session.state = AppState::Ended;
            session.lost = false;
            session.grace_epoch += 1;
            session.resolve_start(StartOutcome::Timeout);
        }
        Ok(())
    }

    /// A socket task ended. Runs the cloud's close handler for the session the socket was
    /// bound to and times the grace period it may start (§10.2).
    pub(crate) fn socket_closed(self: &Arc<Self>, socket_id: u64, bound: Option<&str>) {
        let ticket = bound.and_then(|sid| {
            self.with_session(sid, |s| s.on_socket_closed(socket_id))
                .ok()
                .flatten()
        });
        if let Some(ticket) = ticket {
            self.spawn(self.clone().grace(ticket));
        }
    }

    /// Grace expiry without a re-init: resurrect (stop + start webhooks, §10.3), or stop if
    /// resurrection is disabled.
    async fn grace(self: Arc<Self>, ticket: GraceTicket) {
        tokio::time::sleep(Duration::from_millis(self.cfg.grace_ms)).await;
        let resurrect = self.cfg.resurrect;
        let expired = self.with_session(&ticket.session_id, |s| {
            let expired = s.state == AppState::Grace && s.grace_epoch == ticket.epoch;
            if expired {
                s.state = if resurrect {
                    AppState::Stopping
                } else {
                    AppState::Stopped
                };
                s.lost = !resurrect;
                s.stats.resurrections += u32::from(resurrect);
            }
            expired
        });
        if expired.unwrap_or(false) && resurrect {
            self.resurrect(&ticket.session_id).await;
        }
    }

    /// `stopApp(restart)` then `startApp` with the same session id (§10.3).
    async fn resurrect(self: &Arc<Self>, session_id: &str) {
        self.stop_webhook_then_close(session_id).await;
        let _ = self.with_session(session_id, |s| {
            // A stop or user-session end during the stop webhook wins over the restart.
            if s.state == AppState::Stopping {
                let _ = self.begin_start(s);
            }
        });
    }
}
