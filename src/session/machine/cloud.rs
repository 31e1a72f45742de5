//! The cloud link of the session machine: keep-alive, noticing a dead link, reconnecting
//! with full-jitter backoff, re-initialising the same session from the cached init, and
//! healing a session the cloud dropped and resurrected — all without the app noticing.

use std::time::Duration;

use super::*;

/// Pause before re-dialling a link the cloud's side ended (see `on_cloud_lost`).
pub const CLOSE_SETTLE: Duration = Duration::from_millis(50);

/// A cloud close that ends the session rather than a link to heal: the codes and reasons the
/// SDK keys its own decisions on (PROTOCOL §11.2).
pub(super) fn is_terminal(close: &Option<Close>) -> bool {
    match close {
        Some(c) => {
            matches!(c.code, 1000 | 1001 | 1008)
                || c.reason.contains("App stopped")
                || c.reason.contains("User session ended")
        }
        None => false,
    }
}

impl Session {
    pub(super) fn cloud_is_up(&self) -> bool {
        matches!(self.cloud, CloudLink::Up { .. })
    }

    pub(super) fn on_cloud_seen(&mut self, now: Instant) {
        if let CloudLink::Up { last_seen, .. } = &mut self.cloud {
            *last_seen = now;
        }
    }

    pub(super) fn on_cloud_connected(&mut self, now: Instant, out: &mut Vec<Action>) {
        match &mut self.cloud {
            CloudLink::Dialing { pending } => {
                let pending = std::mem::take(pending);
                self.cloud = self.up_link(now);
                out.push(Action::SendCloud(self.init.clone(), Kind::ConnectionInit));
                for frame in pending {
                    self.up(frame, now, out);
                }
            }
            CloudLink::Down { since, .. } => {
                // The cached init goes first on the new socket; the app's own init is never
                // re-sent by the app, which still thinks it is connected.
                let since = *since;
                self.cloud = CloudLink::Reinit { since };
                out.push(Action::SendCloud(self.init.clone(), Kind::ConnectionInit));
            }
            CloudLink::Up { .. } | CloudLink::Reinit { .. } => {}
        }
    }

    pub(super) fn on_dial_failed(&mut self, now: Instant, out: &mut Vec<Action>) {
        match &mut self.cloud {
            CloudLink::Dialing { .. } => {
                let close = Close::new(CLOSE_INTERNAL, "Cloud unreachable");
                self.end(EndReason::CloudUnreachable, Some(Some(close)), None, out);
            }
            CloudLink::Down { attempt, .. } => {
                *attempt += 1;
                let attempt = *attempt;
                let delay = self.backoff(attempt);
                if let CloudLink::Down { retry_at, .. } = &mut self.cloud {
                    *retry_at = Some(now + delay);
                }
            }
            _ => {}
        }
    }

    /// Full jitter: uniform in `[0, min(max, base * 2^attempt))`.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let cap = self
            .settings
            .reconnect_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.settings.reconnect_max);
        // xorshift64: deterministic for a given seed, so tests can pin it.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(frac)
    }

    fn up_link(&self, now: Instant) -> CloudLink {
        CloudLink::Up {
            last_seen: now,
            next_beat: now + self.settings.heartbeat_interval,
        }
    }

    pub(super) fn on_cloud_closed(
        &mut self,
        close: Option<Close>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let reinit = matches!(self.cloud, CloudLink::Reinit { .. });
        if reinit && close.as_ref().is_some_and(|c| c.code == 1008) {
            // A refused re-init (§5.2 closes those with 1008): the cloud dropped the
            // session and will resurrect it.
            out.push(Action::AbortCloud);
            self.refused(now);
            return;
        }
        if self.terminal
            || self.stopping
            || self.released
            || is_terminal(&close)
            || !self.cache.has_ack()
        {
            // Passed to the app exactly: the SDK decides on the code and reason (§11.2).
            // After an `ownership_release` no close is healed: the app decides.
            self.end(EndReason::CloudClosed, Some(close), None, out);
            return;
        }
        self.on_cloud_lost("closed", now, out);
    }

    /// The link is gone (reset, silent, or closed without meaning it): reconnect at once.
    pub(super) fn on_cloud_lost(
        &mut self,
        cause: &'static str,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        self.drop_link(cause, Action::AbortCloud, now, out);
    }

    /// A cloud frame over the cloud->app limit (the SDK's own, whose `ws` client would have
    /// closed with 1009 and reconnected). Tether closes the cloud socket with 1009 and heals
    /// the link as for any other loss, so the app sees nothing but the frame's absence.
    /// Without an ack to re-init from, or when the session is ending anyway, both legs
    /// close with 1009.
    pub(super) fn on_cloud_too_big(&mut self, now: Instant, out: &mut Vec<Action>) {
        let close = Close::new(CLOSE_TOO_BIG, "Message too big");
        let healable = !self.stopping && !self.terminal && !self.released && self.cache.has_ack();
        match self.cloud {
            CloudLink::Up { .. } | CloudLink::Reinit { .. } if healable => {
                self.drop_link("oversized", Action::CloseCloud(Some(close)), now, out);
            }
            _ => self.end(
                EndReason::Oversized,
                Some(Some(close.clone())),
                Some(Some(close)),
                out,
            ),
        }
    }

    /// Drops the cloud socket with `drop` (an abort, or a close of Tether's own) and heals
    /// the link, or ends the session when there is nothing to heal it with.
    fn drop_link(
        &mut self,
        cause: &'static str,
        drop: Action,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        match self.cloud {
            CloudLink::Dialing { .. } => {
                if self.app_is_connected() {
                    out.push(Action::AbortApp);
                }
                self.end(EndReason::CloudLost, None, None, out);
            }
            CloudLink::Up { .. } if !self.cache.has_ack() || self.released => {
                // Nothing to re-init from yet, or the app released the session: behave as
                // the direct connection would (the app's socket ends as the cloud's did).
                out.push(drop);
                if self.app_is_connected() {
                    out.push(Action::AbortApp);
                }
                self.end(EndReason::CloudLost, None, None, out);
            }
            CloudLink::Up { .. } => {
                out.push(drop);
                out.push(Action::CloudLinkLost { cause });
                self.json_pings = 0;
                // The first try is immediate when Tether found the link dead (silent). When
                // the cloud's side ended it, a short settle lets the cloud finish its own
                // close first: a close it handles after the new init would clear the new
                // socket and resurrect the app 5 s later (PROTOCOL §10.5).
                let retry_at = (cause != "silent").then(|| now + CLOSE_SETTLE);
                self.cloud = CloudLink::Down {
                    since: now,
                    attempt: 0,
                    retry_at,
                    refused: false,
                };
                if retry_at.is_none() {
                    out.push(Action::DialCloud);
                }
            }
            CloudLink::Reinit { since } => {
                out.push(drop);
                self.cloud = CloudLink::Down {
                    since,
                    attempt: 1,
                    retry_at: None,
                    refused: false,
                };
                self.on_dial_failed(now, out);
            }
            CloudLink::Down { .. } => {}
        }
    }

    /// When a link that is down is given up: the hold window from the loss, or after a
    /// refusal the resurrection wait from the refusal.
    fn give_up_at(&self, since: Instant, refused: bool) -> Instant {
        match (refused, self.refused_at) {
            (true, Some(at)) => at + self.settings.resurrection_wait,
            _ => since + self.settings.hold_window,
        }
    }

    fn refused(&mut self, now: Instant) {
        self.refused_at = Some(now);
        let since = match self.cloud {
            CloudLink::Reinit { since } | CloudLink::Down { since, .. } => since,
            _ => now,
        };
        // No more dials of our own: the cloud resurrects the session with a new webhook
        // (stop + session request), which comes back as `CloudResurrect`.
        self.cloud = CloudLink::Down {
            since,
            attempt: 0,
            retry_at: None,
            refused: true,
        };
    }

    pub(super) fn on_resurrect(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.released {
            // The cloud dropped a session the app has released: not healed under the app.
            // It hears the link is gone, as it would have without Tether.
            out.push(Action::AbortCloud);
            let close = Close::new(CLOSE_GOING_AWAY, "Cloud link lost");
            self.end(EndReason::CloudLost, Some(Some(close)), None, out);
            return;
        }
        if matches!(self.cloud, CloudLink::Up { .. } | CloudLink::Reinit { .. }) {
            // The cloud dropped the session although the link looked healthy (it handled a
            // superseded close over the new socket): it now waits for a new init.
            out.push(Action::AbortCloud);
            self.cloud = CloudLink::Down {
                since: now,
                attempt: 0,
                retry_at: None,
                refused: false,
            };
            self.resurrecting = true;
            out.push(Action::DialCloud);
            return;
        }
        if let CloudLink::Down {
            since,
            refused,
            retry_at,
            ..
        } = self.cloud
        {
            let in_flight = retry_at.is_none() && !refused;
            self.resurrecting = true;
            self.cloud = CloudLink::Down {
                since,
                attempt: 0,
                retry_at: None,
                refused: false,
            };
            if !in_flight {
                out.push(Action::DialCloud);
            }
        }
    }

    /// A frame from the cloud while re-initialising: the ack completes the heal, an error
    /// means the cloud dropped the session. Returns `true` when the frame was consumed.
    pub(super) fn on_reinit_frame(
        &mut self,
        frame: &Frame,
        kind: Kind,
        now: Instant,
        out: &mut Vec<Action>,
    ) -> bool {
        let CloudLink::Reinit { since } = self.cloud else {
            return false;
        };
        match kind {
            Kind::ConnectionAck => {
                // The app already has an ack: it gets only what changed, as the updates it
                // would have received.
                for (update, k) in self.cache.diff(frame) {
                    self.deliver(update, k, now, out);
                }
                self.cache.fold(kind, frame);
                self.cloud = self.up_link(now);
                if let Some(subs) = self.last_subs.clone() {
                    out.push(Action::SendCloud(subs, Kind::SubscriptionUpdate));
                }
                for e in self.up_buffer.drain() {
                    out.push(Action::SendCloud(e.frame, e.kind));
                }
                out.push(Action::CloudReacked {
                    outage: now.saturating_duration_since(since),
                    resurrected: std::mem::take(&mut self.resurrecting),
                });
                true
            }
            Kind::ConnectionError | Kind::ConnectionErrorBare => {
                self.refused(now);
                out.push(Action::AbortCloud);
                true
            }
            _ => false,
        }
    }

    /// Sends a cloud->app frame now, or buffers it while the app is away.
    pub(super) fn deliver(
        &mut self,
        frame: Frame,
        kind: Kind,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if matches!(self.app, AppLink::Up { .. }) {
            self.send_app(frame, kind, now, out);
            self.ping_if_idle(out);
        } else {
            self.buffer_down(frame, kind, now, out);
        }
    }

    /// App->cloud frames while the link is down. Display and dashboard updates are
    /// latest-wins: only the newest of a kind (and view) is worth showing when it heals.
    pub(super) fn buffer_up(
        &mut self,
        frame: Frame,
        kind: Kind,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        if matches!(
            kind,
            Kind::DisplayEvent
                | Kind::DashboardContentUpdate
                | Kind::DashboardModeChange
                | Kind::DashboardSystemUpdate
        ) {
            let key = display_key(&frame);
            let superseded = self.up_buffer.remove_where(
                |e| e.kind == kind && display_key(&e.frame) == key,
                "superseded",
            );
            out.extend(superseded.into_iter().map(Action::Dropped));
        }
        out.extend(
            self.up_buffer
                .push(frame, kind, now)
                .into_iter()
                .map(Action::Dropped),
        );
    }

    /// Heartbeat, silence detection, reconnect timers and the give-up deadline.
    pub(super) fn cloud_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        match self.cloud {
            CloudLink::Up {
                last_seen,
                next_beat,
            } => {
                if self.settings.heartbeat == HeartbeatMode::Off {
                    return;
                }
                let patience = self.settings.heartbeat_interval * self.settings.heartbeat_misses;
                if now.saturating_duration_since(last_seen) >= patience {
                    self.on_cloud_lost("silent", now, out);
                } else if now >= next_beat {
                    self.cloud = CloudLink::Up {
                        last_seen,
                        next_beat: now + self.settings.heartbeat_interval,
                    };
                    self.beat(out);
                }
            }
            CloudLink::Down {
                since,
                retry_at,
                refused,
                ..
            } => {
                let give_up = self.give_up_at(since, refused);
                if now >= give_up {
                    // Give up honestly: the SDK hears the session ended and reports it.
                    let close = Close::new(CLOSE_GOING_AWAY, "Cloud link lost");
                    self.end(EndReason::CloudLost, Some(Some(close)), None, out);
                } else if retry_at.is_some_and(|t| now >= t) {
                    if let CloudLink::Down { retry_at, .. } = &mut self.cloud {
                        *retry_at = None;
                    }
                    out.push(Action::DialCloud);
                }
            }
            CloudLink::Reinit { since } => {
                if now >= since + self.settings.hold_window {
                    let close = Close::new(CLOSE_GOING_AWAY, "Cloud link lost");
                    self.end(EndReason::CloudLost, Some(Some(close)), Some(None), out);
                }
            }
            CloudLink::Dialing { .. } => {}
        }
    }

    fn beat(&mut self, out: &mut Vec<Action>) {
        let ts = crate::protocol::now_iso8601();
        match self.settings.heartbeat {
            HeartbeatMode::WsPing => out.push(Action::PingCloud),
            HeartbeatMode::JsonPing => {
                self.json_pings += 1;
                let f = serde_json::json!({"type": "ping", "timestamp": ts});
                out.push(Action::BeatCloud(Frame::Text(f.to_string().into())));
            }
            HeartbeatMode::Seed => {
                let f = serde_json::json!({
                    "type": "heartbeat", "sessionId": self.session_id, "timestamp": ts,
                    "stats": {"framesToApp": self.sent, "bufferedToApp": self.buffer.len(), "bufferedToCloud": self.up_buffer.len()}
                });
                out.push(Action::BeatCloud(Frame::Text(f.to_string().into())));
            }
            HeartbeatMode::Off => {}
        }
    }

    /// Whether a cloud frame answers Tether's own heartbeat (and so stays here).
    pub(super) fn is_own_beat_answer(&mut self, kind: Kind) -> bool {
        match (self.settings.heartbeat, kind) {
            (HeartbeatMode::JsonPing, Kind::Pong) if self.json_pings > 0 => {
                self.json_pings -= 1;
                true
            }
            (HeartbeatMode::Seed, Kind::HeartbeatAck) => true,
            _ => false,
        }
    }

    pub(super) fn cloud_deadline(&self) -> Option<Instant> {
        match self.cloud {
            CloudLink::Up {
                last_seen,
                next_beat,
            } if self.settings.heartbeat != HeartbeatMode::Off => {
                let dead =
                    last_seen + self.settings.heartbeat_interval * self.settings.heartbeat_misses;
                Some(next_beat.min(dead))
            }
            CloudLink::Down {
                since,
                retry_at,
                refused,
                ..
            } => {
                let give_up = self.give_up_at(since, refused);
                Some(retry_at.map_or(give_up, |t| t.min(give_up)))
            }
            CloudLink::Reinit { since } => Some(since + self.settings.hold_window),
            _ => None,
        }
    }
}

/// What makes two display or dashboard updates the same slot: the kind's `view` or
/// `section` (only the newest per slot is kept while the cloud is away).
fn display_key(frame: &Frame) -> Option<String> {
    let Frame::Text(t) = frame else { return None };
    let text = t.as_str();
    crate::protocol::top_level_str(text, "view")
        .ok()
        .flatten()
        .or_else(|| {
            crate::protocol::top_level_str(text, "section")
                .ok()
                .flatten()
        })
        .map(|c| c.into_owned())
}
