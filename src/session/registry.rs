//! Sessions by id: the live ones (each a task, reachable through its handle) and the recent
//! webhooks that announced them. Shared by the listeners, the admin API and the tasks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Webhook records kept for routing the SDK's HTTP calls and for re-sending; webhooks are
/// unauthenticated, so the records are bounded in count and in bytes (the caller passes the
/// byte budget) and the oldest go first, sparing those of live sessions while it can.
pub const MAX_WEBHOOK_RECORDS: usize = 10_000;

/// Bodies larger than this are not kept: a re-sent webhook is then rebuilt from the
/// session's own fields. A real `session_request` is well under 1 KiB.
pub const MAX_KEPT_BODY: usize = 16 * 1024;

/// Bookkeeping bytes charged per record on top of its strings.
const RECORD_OVERHEAD: usize = 128;

/// What a `session_request` told Tether about a session.
#[derive(Debug, Clone)]
pub struct WebhookRecord {
    pub user_id: Option<String>,
    pub cloud_id: String,
    pub at: Instant,
    /// The body as forwarded to the app (URLs rewritten), for re-sending after a restart;
    /// empty when it was too large to keep.
    pub body: Bytes,
}

impl WebhookRecord {
    fn cost(&self, session_id: &str) -> usize {
        RECORD_OVERHEAD
            + session_id.len()
            + self.user_id.as_ref().map_or(0, String::len)
            + self.cloud_id.len()
            + self.body.len()
    }
}

/// Webhook records in arrival order.
#[derive(Debug, Default)]
struct Records {
    by_id: HashMap<String, (u64, WebhookRecord)>,
    order: BTreeMap<u64, String>,
    next: u64,
    bytes: usize,
}

impl Records {
    fn remove(&mut self, id: &str) {
        if let Some((seq, rec)) = self.by_id.remove(id) {
            self.order.remove(&seq);
            self.bytes = self.bytes.saturating_sub(rec.cost(id));
        }
    }

    /// Evicts until `extra` more bytes and one more record fit; records whose session is
    /// live (per `live`) go last.
    fn make_room(&mut self, extra: usize, max_bytes: usize, live: &dyn Fn(&str) -> bool) {
        let over =
            |r: &Records| r.by_id.len() >= MAX_WEBHOOK_RECORDS || r.bytes + extra > max_bytes;
        while over(self) && !self.order.is_empty() {
            let victim = self
                .order
                .values()
                .find(|id| !live(id))
                .or_else(|| self.order.values().next())
                .cloned();
            match victim {
                Some(id) => self.remove(&id),
                None => break,
            }
        }
    }
}
/// Live figures of one session, written by its task and read by the admin API.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: String,
    pub cloud: String,
    pub started: Instant,
    pub phase: watch::Sender<&'static str>,
    pub frames_up: AtomicU64,
    pub frames_down: AtomicU64,
    pub buffered_frames: AtomicU64,
    pub buffered_bytes: AtomicU64,
    /// When the oldest buffered frame arrived, in ms since `started` plus one (0 = none).
    pub oldest_buffered_at: AtomicU64,
    pub recoveries: AtomicU64,
    /// Milliseconds since `started` of the last recovery (0 = none).
    pub last_recovery_ms: AtomicU64,
    /// Resurrection webhooks the cloud sent for this session (healed in place).
    pub resurrections: AtomicU64,
    /// A `stop_request` is being held to see whether a resurrection's start follows.
    pub stop_held: AtomicBool,
    /// When the cloud link was last healed, in ms since `started` plus one (0 = never).
    pub last_cloud_heal: AtomicU64,
}

impl SessionInfo {
    /// Fresh figures for a session started now.
    pub fn new(id: String, cloud: String, phase: watch::Sender<&'static str>) -> SessionInfo {
        SessionInfo {
            id,
            cloud,
            started: Instant::now(),
            phase,
            frames_up: AtomicU64::new(0),
            frames_down: AtomicU64::new(0),
            buffered_frames: AtomicU64::new(0),
            buffered_bytes: AtomicU64::new(0),
            oldest_buffered_at: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            last_recovery_ms: AtomicU64::new(0),
            resurrections: AtomicU64::new(0),
            stop_held: AtomicBool::new(false),
            last_cloud_heal: AtomicU64::new(0),
        }
    }
}

/// The front of a running session task.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    pub info: Arc<SessionInfo>,
    /// Cancelling ends the task (shutdown, or a newer connection supersedes it).
    pub cancel: CancellationToken,
    /// Becomes `true` when the task has closed its sockets.
    pub done: watch::Receiver<bool>,
    /// Commands to the task: a new app socket, a stop notice.
    pub mailbox: mpsc::Sender<super::task::Command>,
}

/// One row of `/sessions`. Never carries the API key.
#[derive(Debug, Serialize)]
pub struct SessionRow {
    pub session_id: String,
    pub user_id: Option<String>,
    pub state: &'static str,
    pub cloud: String,
    pub age_ms: u64,
    pub frames_up: u64,
    pub frames_down: u64,
    pub buffered_frames: u64,
    pub buffered_bytes: u64,
    pub oldest_buffered_ms: u64,
    pub recoveries: u64,
    /// How long ago the last recovery was, in ms.
    pub last_recovery_ago_ms: Option<u64>,
}

/// Sessions by id.
#[derive(Debug, Default)]
pub struct Registry {
    live: Mutex<HashMap<String, SessionHandle>>,
    webhooks: Mutex<Records>,
}

impl Registry {
    /// Records a webhook for `session_id` (replacing its previous one), within
    /// `max_bytes` for all records together: the oldest records go first, those of live
    /// sessions last. A body over [`MAX_KEPT_BODY`] is not kept.
    pub fn note_webhook(&self, session_id: &str, mut record: WebhookRecord, max_bytes: usize) {
        if record.body.len() > MAX_KEPT_BODY {
            record.body = Bytes::new();
        }
        let cost = record.cost(session_id);
        let mut table = lock(&self.webhooks);
        table.remove(session_id);
        let live = |id: &str| lock(&self.live).contains_key(id);
        table.make_room(cost, max_bytes, &live);
        let seq = table.next;
        table.next += 1;
        table.order.insert(seq, session_id.to_string());
        table.bytes += cost;
        table.by_id.insert(session_id.to_string(), (seq, record));
    }

    /// The webhook record of `session_id`.
    pub fn webhook(&self, session_id: &str) -> Option<WebhookRecord> {
        lock(&self.webhooks)
            .by_id
            .get(session_id)
            .map(|(_, r)| r.clone())
    }

    /// Records kept, and the bytes they are charged.
    pub fn webhook_usage(&self) -> (usize, usize) {
        let t = lock(&self.webhooks);
        (t.by_id.len(), t.bytes)
    }

    /// Installs `handle` as the live task of its session; returns the one it replaces.
    pub fn insert(&self, handle: SessionHandle) -> Option<SessionHandle> {
        lock(&self.live).insert(handle.info.id.clone(), handle)
    }

    /// Removes the live task of `id` if it is still `info`'s.
    pub fn remove(&self, info: &Arc<SessionInfo>) {
        let mut live = lock(&self.live);
        if live
            .get(&info.id)
            .is_some_and(|h| Arc::ptr_eq(&h.info, info))
        {
            live.remove(&info.id);
        }
    }

    /// The live task of `id`.
    pub fn get(&self, id: &str) -> Option<SessionHandle> {
        lock(&self.live).get(id).cloned()
    }

    /// Handles of every live session.
    pub fn handles(&self) -> Vec<SessionHandle> {
        lock(&self.live).values().cloned().collect()
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        lock(&self.live).len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows for `/sessions`, sorted by id.
    pub fn rows(&self, now: Instant) -> Vec<SessionRow> {
        let handles = self.handles();
        let mut rows: Vec<SessionRow> = handles
            .iter()
            .map(|h| {
                let info = &h.info;
                SessionRow {
                    session_id: info.id.clone(),
                    user_id: self.webhook(&info.id).and_then(|w| w.user_id),
                    state: *info.phase.borrow(),
                    cloud: info.cloud.clone(),
                    age_ms: now.saturating_duration_since(info.started).as_millis() as u64,
                    frames_up: info.frames_up.load(Ordering::Relaxed),
                    frames_down: info.frames_down.load(Ordering::Relaxed),
                    buffered_frames: info.buffered_frames.load(Ordering::Relaxed),
                    buffered_bytes: info.buffered_bytes.load(Ordering::Relaxed),
                    oldest_buffered_ms: match info.oldest_buffered_at.load(Ordering::Relaxed) {
                        0 => 0,
                        at => (now.saturating_duration_since(info.started).as_millis() as u64)
                            .saturating_sub(at - 1),
                    },
                    recoveries: info.recoveries.load(Ordering::Relaxed),
                    last_recovery_ago_ms: match info.last_recovery_ms.load(Ordering::Relaxed) {
                        0 => None,
                        at => Some(
                            (now.saturating_duration_since(info.started).as_millis() as u64)
                                .saturating_sub(at),
                        ),
                    },
                }
            })
            .collect();
        rows.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        rows
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave the maps half-updated (single inserts
    // and removes), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: &str) -> SessionHandle {
        let (phase, _) = watch::channel("live");
        let (_, done) = watch::channel(false);
        let (mailbox, _) = mpsc::channel(1);
        SessionHandle {
            info: Arc::new(SessionInfo::new(id.into(), "ws://c/".into(), phase)),
            cancel: CancellationToken::new(),
            done,
            mailbox,
        }
    }

    #[test]
    fn a_replaced_task_does_not_remove_its_successor() {
        let r = Registry::default();
        let old = handle("s");
        assert!(r.insert(old.clone()).is_none());
        let new = handle("s");
        assert!(r.insert(new.clone()).is_some());
        r.remove(&old.info);
        assert_eq!(r.len(), 1);
        r.remove(&new.info);
        assert!(r.is_empty());
    }

    fn record(at: Instant, body: usize) -> WebhookRecord {
        WebhookRecord {
            user_id: None,
            cloud_id: "x".into(),
            at,
            body: Bytes::from(vec![b'a'; body]),
        }
    }

    #[test]
    fn webhook_records_are_bounded_in_count() {
        let r = Registry::default();
        let t0 = Instant::now();
        for i in 0..=MAX_WEBHOOK_RECORDS {
            r.note_webhook(&format!("s{i}"), record(t0, 0), usize::MAX);
        }
        assert!(r.webhook("s0").is_none(), "oldest evicted");
        assert!(r.webhook(&format!("s{MAX_WEBHOOK_RECORDS}")).is_some());
        assert_eq!(r.webhook_usage().0, MAX_WEBHOOK_RECORDS);
    }

    #[test]
    fn webhook_records_are_bounded_in_bytes_and_spare_live_sessions() {
        let r = Registry::default();
        let t0 = Instant::now();
        let budget = 64 * 1024;
        r.note_webhook("live", record(t0, 1000), budget);
        r.insert(handle("live"));
        for i in 0..500 {
            r.note_webhook(&format!("forged{i}"), record(t0, 1000), budget);
            assert!(r.webhook_usage().1 <= budget);
        }
        assert!(
            r.webhook("live").is_some(),
            "a live session's record is spared"
        );
        assert!(r.webhook("forged0").is_none());
        // An oversized body is not kept, the record is.
        r.note_webhook("big", record(t0, MAX_KEPT_BODY + 1), budget);
        assert_eq!(r.webhook("big").map(|w| w.body.len()), Some(0));
        // Replacing a record does not leak its old cost.
        let before = r.webhook_usage().1;
        r.note_webhook("big", record(t0, 0), budget);
        assert_eq!(r.webhook_usage().1, before);
    }
}
