//! The bounded, stream-aware buffer of frames waiting for a peer that is away.
//!
//! Bounded per session by count, bytes and age, and across sessions by a shared byte
//! budget. When a bound is hit, the oldest *droppable* frame goes first (binary audio,
//! interim transcriptions); frames worth keeping (final transcriptions, button and touch
//! events, notifications, settings) are dropped only when nothing droppable is left. Every
//! drop is reported with its stream class and reason. Order out equals order in.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::machine::Frame;
use crate::protocol::{top_level_str, Kind};

/// Bounds of one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frames: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
}

/// Whether a frame may be sacrificed first when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Droppable,
    Keep,
}

/// One buffered frame.
#[derive(Debug, Clone)]
pub struct Entry {
    pub frame: Frame,
    pub kind: Kind,
    pub stream: &'static str,
    pub class: Class,
    pub at: Instant,
}

/// A frame the buffer gave up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub stream: &'static str,
    pub reason: &'static str,
}

/// Bytes buffered across every session, against one global cap.
#[derive(Debug)]
pub struct GlobalBytes {
    used: AtomicUsize,
    cap: usize,
}

impl GlobalBytes {
    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> Arc<GlobalBytes> {
        Arc::new(GlobalBytes {
            used: AtomicUsize::new(0),
            cap,
        })
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self, extra: usize) -> bool {
        self.used().saturating_add(extra) > self.cap
    }
}

/// The buffer.
#[derive(Debug)]
pub struct ReplayBuffer {
    q: VecDeque<Entry>,
    bytes: usize,
    limits: Limits,
    global: Arc<GlobalBytes>,
}

impl ReplayBuffer {
    /// An empty buffer with `limits`, drawing on `global`.
    pub fn new(limits: Limits, global: Arc<GlobalBytes>) -> ReplayBuffer {
        ReplayBuffer {
            q: VecDeque::new(),
            bytes: 0,
            limits,
            global,
        }
    }

    /// Changes the bounds (a config reload); takes effect at the next push or expiry.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Appends a frame, first making room by the overflow policy; returns what was dropped
    /// (possibly the new frame itself, when it alone exceeds the byte bound).
    pub fn push(&mut self, frame: Frame, kind: Kind, now: Instant) -> Vec<Dropped> {
        let (stream, class) = classify(&frame, kind);
        let mut dropped = self.expire(now);
        let len = frame.len();
        if self.too_big(len) {
            dropped.push(Dropped {
                stream,
                reason: "too_big",
            });
            return dropped;
        }
        self.make_room(1, len, &mut dropped);
        if self.global.over(len) || self.limits.max_frames == 0 {
            // Other sessions hold the whole global budget: this frame cannot be kept.
            dropped.push(Dropped {
                stream,
                reason: "global_cap",
            });
            return dropped;
        }
        self.bytes += len;
        self.global.used.fetch_add(len, Ordering::Relaxed);
        self.q.push_back(Entry {
            frame,
            kind,
            stream,
            class,
            at: now,
        });
        dropped
    }

    /// Whether a frame of `len` bytes can never be held, however empty the buffer.
    fn too_big(&self, len: usize) -> bool {
        len > self.limits.max_bytes || len > self.global.cap
    }

    /// Drops frames by the overflow policy until `frames` more frames of `len` bytes in all
    /// fit the bounds (with `0, 0`: until what is held fits them).
    fn make_room(&mut self, frames: usize, len: usize, dropped: &mut Vec<Dropped>) {
        loop {
            let count_over = self.q.len() + frames > self.limits.max_frames;
            let bytes_over = self.bytes.saturating_add(len) > self.limits.max_bytes;
            let global_over = self.global.over(len);
            if self.q.is_empty() || !(count_over || bytes_over || global_over) {
                return;
            }
            let reason = if count_over || bytes_over {
                "overflow"
            } else {
                "global_cap"
            };
            let victim = self
                .q
                .iter()
                .position(|e| e.class == Class::Droppable)
                .unwrap_or(0);
            if let Some(e) = self.remove(victim) {
                dropped.push(Dropped {
                    stream: e.stream,
                    reason,
                });
            }
        }
    }

    /// Drops frames older than the age bound.
    pub fn expire(&mut self, now: Instant) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        while self
            .q
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > self.limits.max_age)
        {
            if let Some(e) = self.remove(0) {
                dropped.push(Dropped {
                    stream: e.stream,
                    reason: "expired",
                });
            }
        }
        dropped
    }

    /// Takes every frame out, oldest first.
    pub fn drain(&mut self) -> Vec<Entry> {
        self.global.used.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.q.drain(..).collect()
    }

    /// Puts frames back at the front, keeping their order (they go out before anything
    /// buffered later), then applies the bounds by the overflow policy; returns what was
    /// dropped. A frame that alone exceeds the byte bound is dropped as `too_big`, so a
    /// large frame in flight when the app died never holds more than the bounds allow.
    pub fn prepend(&mut self, entries: Vec<Entry>) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        for e in entries.into_iter().rev() {
            let len = e.frame.len();
            if self.too_big(len) {
                dropped.push(Dropped {
                    stream: e.stream,
                    reason: "too_big",
                });
                continue;
            }
            self.bytes += len;
            self.global.used.fetch_add(len, Ordering::Relaxed);
            self.q.push_front(e);
        }
        self.make_room(0, 0, &mut dropped);
        dropped
    }

    /// Removes every frame matching `pred`, reporting each as dropped for `reason`.
    pub fn remove_where(
        &mut self,
        pred: impl Fn(&Entry) -> bool,
        reason: &'static str,
    ) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        let mut i = 0;
        while i < self.q.len() {
            if pred(&self.q[i]) {
                if let Some(e) = self.remove(i) {
                    dropped.push(Dropped {
                        stream: e.stream,
                        reason,
                    });
                }
            } else {
                i += 1;
            }
        }
        dropped
    }

    /// Empties the buffer, reporting every frame as dropped for `reason`.
    pub fn discard(&mut self, reason: &'static str) -> Vec<Dropped> {
        self.drain()
            .into_iter()
            .map(|e| Dropped {
                stream: e.stream,
                reason,
            })
            .collect()
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.q.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Age of the oldest frame.
    pub fn oldest_age(&self, now: Instant) -> Option<Duration> {
        self.q.front().map(|e| now.saturating_duration_since(e.at))
    }

    /// When the oldest frame expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.q.front().map(|e| e.at + self.limits.max_age)
    }

    fn remove(&mut self, i: usize) -> Option<Entry> {
        let e = self.q.remove(i)?;
        self.bytes -= e.frame.len();
        self.global.used.fetch_sub(e.frame.len(), Ordering::Relaxed);
        Some(e)
    }
}

impl Drop for ReplayBuffer {
    fn drop(&mut self) {
        self.global.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The stream class (a bounded metric label) and drop class of a frame. Reads the frame
/// only as far as needed: `streamType` for data streams, and `isFinal` for transcriptions.
pub fn classify(frame: &Frame, kind: Kind) -> (&'static str, Class) {
    let text = match frame {
        Frame::Binary(_) => return ("audio", Class::Droppable),
        Frame::Text(t) if kind == Kind::DataStream => t.as_str(),
        Frame::Text(_) => return (kind.label(), Class::Keep),
    };
    let stream_type = top_level_str(text, "streamType").ok().flatten();
    let base = stream_type
        .as_deref()
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("");
    let stream = match base {
        "transcription" => "transcription",
        "translation" => "translation",
        "button_press" => "button_press",
        "touch_event" => "touch_event",
        "head_position" => "head_position",
        "phone_notification" | "phone_notification_dismissed" | "notification_dismissed" => {
            "notification"
        }
        "location_update" | "location_stream" => "location",
        "glasses_battery_update" | "phone_battery_update" => "battery",
        "VAD" => "vad",
        "calendar_event" => "calendar_event",
        _ => "other",
    };
    if matches!(stream, "transcription" | "translation") {
        let is_final = serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.pointer("/data/isFinal")
                    .and_then(serde_json::Value::as_bool)
            })
            .unwrap_or(true);
        if !is_final {
            return ("transcription_interim", Class::Droppable);
        }
    }
    (stream, Class::Keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(max_frames: usize, max_bytes: usize) -> Limits {
        Limits {
            max_frames,
            max_bytes,
            max_age: Duration::from_secs(60),
        }
    }

    fn final_tx(n: u32) -> Frame {
        Frame::Text(
            format!(r#"{{"type":"data_stream","streamType":"transcription:en-US","data":{{"isFinal":true,"seq":{n}}}}}"#)
                .into(),
        )
    }

    fn interim_tx(n: u32) -> Frame {
        Frame::Text(
            format!(r#"{{"type":"data_stream","streamType":"transcription:en-US","data":{{"isFinal":false,"seq":{n}}}}}"#)
                .into(),
        )
    }

    fn audio(n: u8) -> Frame {
        Frame::Binary(vec![n; 10].into())
    }

    #[test]
    fn classifies_streams() {
        assert_eq!(
            classify(&audio(1), Kind::Binary),
            ("audio", Class::Droppable)
        );
        assert_eq!(
            classify(&final_tx(1), Kind::DataStream),
            ("transcription", Class::Keep)
        );
        assert_eq!(
            classify(&interim_tx(1), Kind::DataStream),
            ("transcription_interim", Class::Droppable)
        );
        let button =
            Frame::Text(r#"{"type":"data_stream","streamType":"button_press","data":{}}"#.into());
        assert_eq!(
            classify(&button, Kind::DataStream),
            ("button_press", Class::Keep)
        );
        let settings = Frame::Text(r#"{"type":"settings_update"}"#.into());
        assert_eq!(
            classify(&settings, Kind::SettingsUpdate),
            ("settings_update", Class::Keep)
        );
    }

    #[test]
    fn overflow_drops_the_oldest_audio_before_any_kept_frame() {
        let now = Instant::now();
        let mut b = ReplayBuffer::new(limits(4, 1 << 20), GlobalBytes::new(1 << 30));
        assert!(b.push(final_tx(1), Kind::DataStream, now).is_empty());
        assert!(b.push(audio(1), Kind::Binary, now).is_empty());
        assert!(b.push(final_tx(2), Kind::DataStream, now).is_empty());
        assert!(b.push(audio(2), Kind::Binary, now).is_empty());
        let d = b.push(final_tx(3), Kind::DataStream, now);
        assert_eq!(
            d,
            vec![Dropped {
                stream: "audio",
                reason: "overflow"
            }]
        );
        let d = b.push(final_tx(4), Kind::DataStream, now);
        assert_eq!(
            d,
            vec![Dropped {
                stream: "audio",
                reason: "overflow"
            }]
        );
        let out: Vec<Frame> = b.drain().into_iter().map(|e| e.frame).collect();
        assert_eq!(
            out,
            vec![final_tx(1), final_tx(2), final_tx(3), final_tx(4)]
        );
    }

    #[test]
    fn kept_frames_go_oldest_first_when_nothing_droppable_is_left() {
        let now = Instant::now();
        let mut b = ReplayBuffer::new(limits(2, 1 << 20), GlobalBytes::new(1 << 30));
        b.push(final_tx(1), Kind::DataStream, now);
        b.push(final_tx(2), Kind::DataStream, now);
        let d = b.push(final_tx(3), Kind::DataStream, now);
        assert_eq!(
            d,
            vec![Dropped {
                stream: "transcription",
                reason: "overflow"
            }]
        );
        let out: Vec<Frame> = b.drain().into_iter().map(|e| e.frame).collect();
        assert_eq!(out, vec![final_tx(2), final_tx(3)]);
    }

    #[test]
    fn byte_bound_and_too_big_frames() {
        let now = Instant::now();
        let mut b = ReplayBuffer::new(limits(100, 25), GlobalBytes::new(1 << 30));
        b.push(audio(1), Kind::Binary, now);
        b.push(audio(2), Kind::Binary, now);
        assert_eq!(
            b.push(audio(3), Kind::Binary, now).len(),
            1,
            "third 10-byte chunk evicts one"
        );
        assert_eq!(b.bytes(), 20);
        let big = Frame::Binary(vec![0; 106].into());
        assert_eq!(
            b.push(big, Kind::Binary, now),
            vec![Dropped {
                stream: "audio",
                reason: "too_big"
            }]
        );
    }

    #[test]
    fn age_bound_expires_old_frames() {
        let t0 = Instant::now();
        let mut b = ReplayBuffer::new(limits(100, 1 << 20), GlobalBytes::new(1 << 30));
        b.push(final_tx(1), Kind::DataStream, t0);
        b.push(final_tx(2), Kind::DataStream, t0 + Duration::from_secs(30));
        let d = b.expire(t0 + Duration::from_secs(61));
        assert_eq!(
            d,
            vec![Dropped {
                stream: "transcription",
                reason: "expired"
            }]
        );
        assert_eq!(b.len(), 1);
        assert_eq!(b.next_expiry(), Some(t0 + Duration::from_secs(90)));
    }

    #[test]
    fn the_global_budget_is_shared_and_released() {
        let now = Instant::now();
        let global = GlobalBytes::new(25);
        let mut a = ReplayBuffer::new(limits(100, 1 << 20), global.clone());
        let mut b = ReplayBuffer::new(limits(100, 1 << 20), global.clone());
        a.push(audio(1), Kind::Binary, now);
        a.push(audio(2), Kind::Binary, now);
        assert_eq!(
            b.push(audio(3), Kind::Binary, now),
            vec![Dropped {
                stream: "audio",
                reason: "global_cap"
            }]
        );
        drop(a);
        assert_eq!(global.used(), 0);
        assert!(b.push(audio(3), Kind::Binary, now).is_empty());
        assert_eq!(global.used(), 10);
    }

    #[test]
    fn prepended_frames_are_held_to_the_bounds_and_the_rest_counted() {
        let now = Instant::now();
        let global = GlobalBytes::new(1 << 30);
        // Room for the transcription (91 bytes) and one 10-byte audio chunk.
        let mut b = ReplayBuffer::new(limits(3, 105), global.clone());
        assert!(b.push(final_tx(9), Kind::DataStream, now).is_empty());
        let entry = |frame: Frame, kind: Kind| {
            let (stream, class) = classify(&frame, kind);
            Entry {
                frame,
                kind,
                stream,
                class,
                at: now,
            }
        };
        let big = Frame::Binary(vec![0; 106].into());
        let d = b.prepend(vec![
            entry(big, Kind::Binary),
            entry(audio(1), Kind::Binary),
            entry(audio(2), Kind::Binary),
        ]);
        // The 106-byte frame can never fit 105 bytes; both chunks do not fit beside the
        // transcription, so the oldest audio goes.
        assert_eq!(
            d,
            vec![
                Dropped {
                    stream: "audio",
                    reason: "too_big"
                },
                Dropped {
                    stream: "audio",
                    reason: "overflow"
                }
            ]
        );
        assert_eq!(global.used(), b.bytes());
        let out: Vec<Frame> = b.drain().into_iter().map(|e| e.frame).collect();
        assert_eq!(out, vec![audio(2), final_tx(9)], "order kept");
        assert_eq!(global.used(), 0);
    }

    proptest! {
        /// Bounds always hold, nothing is lost unreported, and order is kept.
        #[test]
        fn invariants(ops in proptest::collection::vec((0u8..3, 1usize..40), 1..200), max_frames in 1usize..20, max_bytes in 40usize..400) {
            let now = Instant::now();
            let global = GlobalBytes::new(1 << 30);
            let mut b = ReplayBuffer::new(limits(max_frames, max_bytes), global.clone());
            let mut pushed = 0usize;
            let mut dropped = 0usize;
            for (i, (k, len)) in ops.iter().enumerate() {
                let frame = match k {
                    0 => Frame::Binary(vec![0u8; *len].into()),
                    1 => final_tx(i as u32),
                    _ => interim_tx(i as u32),
                };
                let kind = if *k == 0 { Kind::Binary } else { Kind::DataStream };
                pushed += 1;
                dropped += b.push(frame, kind, now).len();
                prop_assert!(b.len() <= max_frames);
                prop_assert!(b.bytes() <= max_bytes);
                prop_assert_eq!(global.used(), b.bytes());
            }
            let out = b.drain();
            prop_assert_eq!(pushed, out.len() + dropped);
            // Kept frames come out in push order: their seq numbers increase.
            let seqs: Vec<u64> = out.iter().filter_map(|e| match &e.frame {
                Frame::Text(t) => serde_json::from_str::<serde_json::Value>(t.as_str()).ok()?.pointer("/data/seq")?.as_u64(),
                Frame::Binary(_) => None,
            }).collect();
            prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(global.used(), 0);
        }
    }
}
