//! Transitions of the session machine, with explicit instants.

use std::time::Duration;

use super::*;

const ACK: &str = r#"{"type":"tpa_connection_ack","sessionId":"s","settings":[]}"#;
const SUB_EMPTY: &str = r#"{"type":"subscription_update","subscriptions":[]}"#;
const SUB_TX: &str = r#"{"type":"subscription_update","subscriptions":["transcription:en-US"]}"#;

fn text(s: &str) -> Frame {
    Frame::Text(s.into())
}

fn init(key: &str) -> Frame {
    text(&format!(
        r#"{{"type":"tpa_connection_init","sessionId":"s","packageName":"p","apiKey":"{key}"}}"#
    ))
}

fn tx(n: u32) -> Frame {
    text(&format!(
        r#"{{"type":"data_stream","streamType":"transcription:en-US","data":{{"isFinal":true,"seq":{n}}}}}"#
    ))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn new_session(now: Instant) -> Session {
    let (s, actions) = Session::start(
        "s".into(),
        init("k"),
        UrlMap::default(),
        Settings::default(),
        GlobalBytes::new(1 << 30),
        now,
    );
    assert_eq!(actions, vec![Action::DialCloud]);
    s
}

/// A session that is live, acked, and whose app subscribed to transcriptions.
fn live(now: Instant) -> Session {
    let mut s = new_session(now);
    assert_eq!(
        s.handle(Event::CloudConnected, now),
        vec![Action::SendCloud(init("k"), Kind::ConnectionInit)]
    );
    s.handle(Event::CloudFrame(text(ACK)), now);
    assert_eq!(
        s.handle(Event::AppFrame(text(SUB_TX)), now),
        vec![Action::SendCloud(text(SUB_TX), Kind::SubscriptionUpdate)]
    );
    assert_eq!(s.phase(), "live");
    s
}

fn sent_to_app(actions: &[Action]) -> Vec<Frame> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendApp(f, _) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn sent_to_cloud(actions: &[Action]) -> Vec<Frame> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendCloud(f, _) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

fn pong(n: u64) -> Event {
    Event::AppPong(Bytes::copy_from_slice(&n.to_be_bytes()))
}

#[test]
fn init_goes_first_then_held_frames_in_order() {
    let now = Instant::now();
    let mut s = new_session(now);
    assert!(s
        .handle(Event::AppFrame(text(r#"{"type":"a"}"#)), now)
        .is_empty());
    let actions = s.handle(Event::CloudConnected, now);
    assert_eq!(
        sent_to_cloud(&actions),
        vec![init("k"), text(r#"{"type":"a"}"#)]
    );
}

#[test]
fn cloud_close_passes_through_exactly() {
    let now = Instant::now();
    let mut s = live(now);
    let close = Close::new(1000, "App stopped");
    assert_eq!(
        s.handle(Event::CloudClosed(Some(close.clone())), now),
        vec![Action::CloseApp(Some(close))]
    );
    assert_eq!(s.end_reason(), Some(EndReason::CloudClosed));
    assert!(
        s.handle(Event::CloudFrame(tx(1)), now).is_empty(),
        "nothing after the end"
    );
}

#[test]
fn frames_are_pinged_and_pongs_release_them() {
    let now = Instant::now();
    let mut s = live(now); // the ack went out as frame 1, with ping 1
    assert_eq!(
        s.handle(Event::CloudFrame(tx(1)), now),
        vec![Action::SendApp(tx(1), Kind::DataStream)]
    );
    // One ping in flight at a time: its pong asks for the next one.
    assert_eq!(
        s.handle(pong(1), now),
        vec![Action::PingApp(Bytes::copy_from_slice(&2u64.to_be_bytes()))]
    );
    assert!(s.handle(pong(2), now).is_empty());
    let a = s.handle(Event::CloudFrame(tx(2)), now);
    assert_eq!(
        a,
        vec![
            Action::SendApp(tx(2), Kind::DataStream),
            Action::PingApp(Bytes::copy_from_slice(&3u64.to_be_bytes()))
        ]
    );
    // A stale or foreign pong changes nothing.
    assert!(s.handle(pong(99), now).is_empty());
}

#[test]
fn a_crashed_app_is_held_refired_answered_locally_and_replayed_in_order() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::CloudFrame(tx(1)), t0);
    s.handle(pong(1), t0);
    s.handle(pong(2), t0); // the app proved it processed the ack and frame 1
    s.handle(Event::CloudFrame(tx(2)), t0); // sent, never proven
    assert_eq!(s.handle(Event::AppLost, t0 + ms(1)), vec![Action::AbortApp]);
    assert_eq!(s.phase(), "app_down");
    assert!(s.is_holding());
    // The cloud keeps streaming; the cloud link is untouched.
    for n in 3..=5 {
        assert!(s.handle(Event::CloudFrame(tx(n)), t0 + ms(10)).is_empty());
    }
    assert!(s.handle(Event::AppHealth(false), t0 + ms(100)).is_empty());
    assert_eq!(
        s.handle(Event::AppHealth(true), t0 + ms(2000)),
        vec![Action::RefireWebhook]
    );
    // The restarted app connects with the same init: answered from the cache.
    let a = s.handle(Event::AppAttach(init("k")), t0 + ms(2050));
    assert_eq!(a[0], Action::AcceptApp);
    assert_eq!(sent_to_app(&a), vec![text(ACK)]);
    assert!(sent_to_cloud(&a).is_empty(), "the cloud sees no init");
    assert_eq!(s.phase(), "replaying");
    // The SDK's first, empty list is not forwarded and does not flush.
    assert!(s
        .handle(Event::AppFrame(text(SUB_EMPTY)), t0 + ms(2060))
        .is_empty());
    // Its handlers re-subscribe to the same set: nothing goes up, the buffer flushes.
    let a = s.handle(Event::AppFrame(text(SUB_TX)), t0 + ms(2070));
    assert!(sent_to_cloud(&a).is_empty());
    assert_eq!(
        sent_to_app(&a),
        vec![tx(2), tx(3), tx(4), tx(5)],
        "unproven frame first, then the buffer"
    );
    assert!(a.contains(&Action::Recovered {
        replayed: 4,
        latency: ms(70)
    }));
    assert_eq!(s.phase(), "live");
}

#[test]
fn a_new_init_with_another_key_is_refused_and_the_hold_goes_on() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::AppLost, t0);
    let a = s.handle(Event::AppAttach(init("wrong")), t0 + ms(5));
    assert_eq!(
        a,
        vec![Action::RejectApp {
            code: "INVALID_API_KEY",
            message: "Invalid API key"
        }]
    );
    assert_eq!(s.phase(), "app_down");
}

#[test]
fn the_hold_window_ends_the_session_honestly() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::AppLost, t0);
    s.handle(Event::AppHealth(false), t0 + ms(100));
    s.handle(Event::CloudFrame(tx(1)), t0 + ms(200));
    assert!(s.next_deadline() <= Some(t0 + Duration::from_secs(60)));
    s.handle(Event::CloudPong, t0 + ms(58_000));
    let a = s.handle(Event::Tick, t0 + ms(59_000));
    assert!(
        !a.iter().any(|a| matches!(a, Action::CloseCloud(_))),
        "{a:?}"
    );
    let a = s.handle(Event::Tick, t0 + Duration::from_secs(60));
    assert_eq!(
        a,
        vec![
            Action::CloseCloud(Some(Close::new(1001, "App unavailable"))),
            Action::Dropped(Dropped {
                stream: "transcription",
                reason: "hold_expired"
            }),
        ]
    );
    assert_eq!(s.end_reason(), Some(EndReason::HoldExpired));
}

#[test]
fn a_clean_close_by_a_healthy_app_that_stays_away_is_meant() {
    let t0 = Instant::now();
    let mut s = live(t0);
    assert_eq!(s.handle(Event::AppClosed(None), t0), vec![Action::AbortApp]);
    assert_eq!(s.next_deadline(), Some(t0 + ms(2000)));
    assert!(s.handle(Event::Tick, t0 + ms(1999)).is_empty());
    assert_eq!(
        s.handle(Event::Tick, t0 + ms(2000)),
        vec![Action::CloseCloud(None)]
    );
    assert_eq!(s.end_reason(), Some(EndReason::AppClosed));
}

#[test]
fn a_clean_close_followed_by_a_failing_probe_is_a_restart() {
    let t0 = Instant::now();
    let mut s = live(t0);
    // SIGTERM: the SDK closes its sockets, then the process exits.
    s.handle(Event::AppClosed(None), t0);
    s.handle(Event::AppHealth(false), t0 + ms(150));
    assert!(
        s.handle(Event::Tick, t0 + ms(3000)).is_empty(),
        "no end at the intent window"
    );
    assert_eq!(s.phase(), "app_down");
    assert_eq!(
        s.handle(Event::AppHealth(true), t0 + ms(4000)),
        vec![Action::RefireWebhook]
    );
}

#[test]
fn a_stop_request_lets_the_app_close_through_at_once() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::StopRequested, t0);
    assert_eq!(
        s.handle(Event::AppClosed(None), t0),
        vec![Action::CloseCloud(None)]
    );
    assert_eq!(s.end_reason(), Some(EndReason::AppClosed));
}

#[test]
fn app_stopped_then_close_reaches_the_app() {
    let t0 = Instant::now();
    let mut s = live(t0);
    let stopped = text(r#"{"type":"app_stopped"}"#);
    assert_eq!(
        sent_to_app(&s.handle(Event::CloudFrame(stopped.clone()), t0)),
        vec![stopped]
    );
    let close = Close::new(1000, "User session ended");
    assert_eq!(
        s.handle(Event::CloudClosed(Some(close.clone())), t0),
        vec![Action::CloseApp(Some(close))]
    );
}

#[test]
fn an_sdk_reconnect_is_answered_locally() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::AppLost, t0);
    assert!(s.handle(Event::Tick, t0 + ms(1000)).is_empty());
    let a = s.handle(Event::AppAttach(init("k")), t0 + ms(1005));
    assert_eq!(sent_to_app(&a), vec![text(ACK)]);
    // The SDK re-sends its full list once after a reconnect.
    let a = s.handle(Event::AppFrame(text(SUB_TX)), t0 + ms(1010));
    assert!(sent_to_cloud(&a).is_empty());
    assert_eq!(s.phase(), "live");
    // Live traffic flows again.
    assert_eq!(
        sent_to_cloud(&s.handle(
            Event::AppFrame(text(r#"{"type":"display_event"}"#)),
            t0 + ms(1020)
        ))
        .len(),
        1
    );
}

#[test]
fn an_abrupt_loss_with_a_healthy_app_and_no_reconnect_refires() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::AppLost, t0);
    assert_eq!(s.next_deadline(), Some(t0 + RECONNECT_GRACE));
    assert_eq!(
        s.handle(Event::Tick, t0 + RECONNECT_GRACE),
        vec![Action::RefireWebhook]
    );
    // A failed re-fire is retried.
    s.handle(Event::RefireDone(false), t0 + ms(1600));
    assert_eq!(
        s.handle(Event::Tick, t0 + ms(1600) + REFIRE_RETRY),
        vec![Action::RefireWebhook]
    );
}

#[test]
fn a_hung_app_is_detected_by_missed_pongs() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::CloudFrame(tx(1)), t0);
    s.handle(pong(1), t0);
    s.handle(pong(2), t0);
    let mut now = t0;
    let mut pings = 0;
    for _ in 0..4 {
        now += Duration::from_secs(5);
        let a = s.handle(Event::Tick, now);
        pings += a.iter().filter(|a| matches!(a, Action::PingApp(_))).count();
        if a.contains(&Action::AbortApp) {
            break;
        }
    }
    assert_eq!(
        pings, 1,
        "a keep-alive ping at 5 s, unanswered; given up at 15 s"
    );
    assert_eq!(now, t0 + Duration::from_secs(15));
    assert_eq!(s.phase(), "app_down");
}

#[test]
fn a_changed_subscription_set_after_restart_is_forwarded() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::AppLost, t0);
    s.handle(Event::AppAttach(init("k")), t0 + ms(10));
    let more =
        r#"{"type":"subscription_update","subscriptions":["transcription:en-US","button_press"]}"#;
    let a = s.handle(Event::AppFrame(text(more)), t0 + ms(20));
    assert_eq!(sent_to_cloud(&a), vec![text(more)]);
    assert_eq!(s.phase(), "live", "the new set covers the old one: flushed");
}

#[test]
fn the_replay_flushes_after_the_wait_when_the_app_never_resubscribes() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::AppLost, t0);
    s.handle(Event::CloudFrame(tx(1)), t0 + ms(1));
    s.handle(Event::AppAttach(init("k")), t0 + ms(10));
    assert_eq!(s.next_deadline(), Some(t0 + ms(1010)));
    let a = s.handle(Event::Tick, t0 + ms(1010));
    assert_eq!(sent_to_app(&a), vec![tx(1)]);
}

#[test]
fn updates_after_the_ack_are_folded_into_the_local_answer() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(
        Event::CloudFrame(text(
            r#"{"type":"settings_update","settings":[{"key":"k","value":2}]}"#,
        )),
        t0,
    );
    s.handle(Event::AppLost, t0);
    let a = s.handle(Event::AppAttach(init("k")), t0 + ms(5));
    let Some(Frame::Text(ack)) = sent_to_app(&a).into_iter().next() else {
        panic!("no ack");
    };
    let v: serde_json::Value = serde_json::from_str(ack.as_str()).expect("json");
    assert_eq!(v["settings"][0]["value"], 2);
}

#[test]
fn audio_urls_on_the_local_base_are_sent_to_the_cloud_base() {
    let now = Instant::now();
    let urls = UrlMap {
        local_prefixes: vec!["https://127.0.0.1:8081/c/ab12cd34".into()],
        cloud_base: "https://api.example.net".into(),
    };
    let (mut s, _) = Session::start(
        "s".into(),
        text("{}"),
        urls,
        Settings::default(),
        GlobalBytes::new(1 << 20),
        now,
    );
    s.handle(Event::CloudConnected, now);
    let req = r#"{"type":"audio_play_request","requestId":"r1","audioUrl":"https://127.0.0.1:8081/c/ab12cd34/api/tts?text=hi"}"#;
    let a = s.handle(Event::AppFrame(text(req)), now);
    let Some(Action::SendCloud(Frame::Text(out), Kind::AudioPlayRequest)) = a.first() else {
        panic!("{a:?}");
    };
    let v: serde_json::Value = serde_json::from_str(out.as_str()).expect("json");
    assert_eq!(v["audioUrl"], "https://api.example.net/api/tts?text=hi");
    assert_eq!(v["requestId"], "r1");
}

fn too_big() -> Close {
    Close::new(1009, "Message too big")
}

#[test]
fn an_oversized_app_frame_closes_only_the_app_leg_and_the_reconnect_is_answered_locally() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::CloudFrame(tx(1)), t0); // sent, never proven
    let a = s.handle(Event::TooBig(Direction::Up), t0 + ms(1));
    assert_eq!(
        a,
        vec![Action::CloseApp(Some(too_big()))],
        "the cloud leg is kept"
    );
    assert_eq!(s.phase(), "app_down");
    // The SDK reconnects after 1009 (it is not one of its final codes): answered here.
    let a = s.handle(Event::AppAttach(init("k")), t0 + ms(1000));
    assert_eq!(a[0], Action::AcceptApp);
    assert!(sent_to_cloud(&a).is_empty(), "the cloud sees no init");
    let a = s.handle(Event::AppFrame(text(SUB_TX)), t0 + ms(1010));
    assert!(sent_to_cloud(&a).is_empty());
    assert_eq!(
        sent_to_app(&a),
        vec![tx(1)],
        "the unproven frame is replayed"
    );
    assert_eq!(s.phase(), "live");
}

#[test]
fn an_oversized_frame_before_the_first_ack_closes_both_legs() {
    let t0 = Instant::now();
    let mut s = new_session(t0);
    s.handle(Event::CloudConnected, t0);
    assert_eq!(
        s.handle(Event::TooBig(Direction::Up), t0),
        vec![
            Action::CloseApp(Some(too_big())),
            Action::CloseCloud(Some(too_big()))
        ],
        "nothing cached to answer a reconnect with"
    );
    assert_eq!(s.end_reason(), Some(EndReason::Oversized));
}

#[test]
fn an_oversized_cloud_frame_heals_the_cloud_link_without_the_app_noticing() {
    let t0 = Instant::now();
    let mut s = live(t0);
    let a = s.handle(Event::TooBig(Direction::Down), t0);
    assert_eq!(
        a,
        vec![
            Action::CloseCloud(Some(too_big())),
            Action::CloudLinkLost { cause: "oversized" }
        ],
        "the app hears nothing"
    );
    assert_eq!(s.phase(), "cloud_down");
    // Tether's own close settles before the re-init, like a close from the cloud's side.
    assert_eq!(s.next_deadline(), Some(t0 + cloud::CLOSE_SETTLE));
    assert_eq!(
        s.handle(Event::Tick, t0 + cloud::CLOSE_SETTLE),
        vec![Action::DialCloud]
    );
    assert_eq!(
        s.handle(Event::CloudConnected, t0 + ms(60)),
        vec![Action::SendCloud(init("k"), Kind::ConnectionInit)]
    );
    let a = s.handle(Event::CloudFrame(text(ACK)), t0 + ms(70));
    assert!(sent_to_app(&a).is_empty(), "{a:?}");
    assert_eq!(s.phase(), "live");
}

#[test]
fn an_oversized_cloud_frame_during_a_stop_closes_both_legs() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::StopRequested, t0);
    assert_eq!(
        s.handle(Event::TooBig(Direction::Down), t0),
        vec![
            Action::CloseApp(Some(too_big())),
            Action::CloseCloud(Some(too_big()))
        ]
    );
}

#[test]
fn frames_before_the_cloud_socket_is_up_are_bounded_by_bytes_too() {
    let t0 = Instant::now();
    let mut s = new_session(t0);
    let half = Frame::Binary(vec![0; MAX_PENDING_UP_BYTES / 2].into());
    assert!(s.handle(Event::AppFrame(half.clone()), t0).is_empty());
    assert!(s.handle(Event::AppFrame(half), t0).is_empty());
    let a = s.handle(Event::AppFrame(Frame::Binary(vec![0; 1].into())), t0);
    assert_eq!(
        a,
        vec![Action::CloseApp(Some(Close::new(
            1009,
            "Too many frames before ack"
        )))]
    );
}

fn small_buffer_session(now: Instant, max_bytes: usize) -> Session {
    let settings = Settings {
        down_buffer: super::super::buffer::Limits {
            max_frames: 1000,
            max_bytes,
            max_age: Duration::from_secs(60),
        },
        ..Settings::default()
    };
    let (mut s, _) = Session::start(
        "s".into(),
        init("k"),
        UrlMap::default(),
        settings,
        GlobalBytes::new(1 << 30),
        now,
    );
    s.handle(Event::CloudConnected, now);
    s.handle(Event::CloudFrame(text(ACK)), now);
    s.handle(Event::AppFrame(text(SUB_TX)), now);
    s
}

fn dropped(actions: &[Action]) -> Vec<Dropped> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dropped(d) => Some(*d),
            _ => None,
        })
        .collect()
}

#[test]
fn unproven_frames_are_kept_within_the_buffer_byte_bound_and_the_rest_counted() {
    let t0 = Instant::now();
    let mut s = small_buffer_session(t0, 100);
    let big = Frame::Binary(vec![1; 150].into());
    let a = s.handle(Event::CloudFrame(big.clone()), t0);
    assert_eq!(sent_to_app(&a), vec![big], "delivered whatever its size");
    let chunk = |n: u8| Frame::Binary(vec![n; 40].into());
    for n in 1..=3 {
        s.handle(Event::CloudFrame(chunk(n)), t0);
    }
    // The app dies before proving any of it: only what the buffer could hold comes back.
    let a = s.handle(Event::AppLost, t0 + ms(1));
    let mut d = dropped(&a);
    d.sort_by_key(|d| d.reason);
    assert_eq!(
        d,
        vec![
            Dropped {
                stream: "audio",
                reason: "overflow"
            },
            Dropped {
                stream: "audio",
                reason: "too_big"
            },
        ]
    );
    assert_eq!(s.buffered(t0).1, 80, "two 40-byte chunks held of 100 bytes");
    s.handle(Event::AppAttach(init("k")), t0 + ms(10));
    let a = s.handle(Event::AppFrame(text(SUB_TX)), t0 + ms(20));
    assert_eq!(
        sent_to_app(&a),
        vec![chunk(2), chunk(3)],
        "newest kept, in order"
    );
}

// === a second app socket ===

fn displaced() -> Action {
    let (code, reason) = DISPLACED_CLOSE;
    Action::DisplaceApp(Close::new(code, reason))
}

#[test]
fn a_second_socket_displaces_the_first_cleanly_and_gets_its_unproven_frames() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::CloudFrame(tx(1)), t0);
    s.handle(pong(1), t0);
    s.handle(pong(2), t0); // frame 1 proven
    s.handle(Event::CloudFrame(tx(2)), t0); // sent, never proven
    let a = s.handle(Event::AppAttach(init("k")), t0 + ms(5));
    assert_eq!(&a[..2], &[displaced(), Action::AcceptApp]);
    assert_eq!(sent_to_app(&a), vec![text(ACK)], "answered from the cache");
    assert!(sent_to_cloud(&a).is_empty(), "the cloud sees no init");
    assert!(!a
        .iter()
        .any(|a| matches!(a, Action::CloseCloud(_) | Action::AbortCloud)));
    // Frames that arrive meanwhile wait behind the unproven one.
    assert!(s.handle(Event::CloudFrame(tx(3)), t0 + ms(6)).is_empty());
    let a = s.handle(Event::AppFrame(text(SUB_TX)), t0 + ms(10));
    assert!(sent_to_cloud(&a).is_empty());
    assert_eq!(
        sent_to_app(&a),
        vec![tx(2), tx(3)],
        "frame 1 is not sent twice"
    );
    assert_eq!(s.phase(), "live");
}

#[test]
fn the_displaced_close_stops_the_sdk_and_lets_it_clean_up() {
    // PROTOCOL §11.2: no reconnect on 1000/1001/1008; §11.4: onStop only on 1000/1001.
    let (code, reason) = DISPLACED_CLOSE;
    assert!(matches!(code, 1000 | 1001));
    assert!(!reason.contains("App stopped") && !reason.contains("User session ended"));
    assert!(reason.len() <= 123);
}

#[test]
fn takeovers_past_the_bound_are_refused_until_the_window_moves_on() {
    let t0 = Instant::now();
    let mut s = live(t0);
    for i in 0..MAX_TAKEOVERS as u64 {
        let a = s.handle(Event::AppAttach(init("k")), t0 + ms(i * 100));
        assert_eq!(a[0], displaced(), "takeover {i}");
    }
    let (code, message) = TAKEOVER_REFUSAL;
    let refused = vec![Action::RefuseTakeover { code, message }];
    assert_eq!(s.handle(Event::AppAttach(init("k")), t0 + ms(500)), refused);
    // The current socket keeps the session: it is still relayed.
    assert_eq!(
        sent_to_cloud(&s.handle(
            Event::AppFrame(text(r#"{"type":"display_event"}"#)),
            t0 + ms(600)
        ))
        .len(),
        1
    );
    assert_eq!(
        s.handle(Event::AppAttach(init("k")), t0 + TAKEOVER_WINDOW - ms(1)),
        refused,
        "the oldest takeover is still in the window"
    );
    let a = s.handle(Event::AppAttach(init("k")), t0 + TAKEOVER_WINDOW);
    assert_eq!(a[0], displaced(), "the oldest takeover left the window");
}

#[test]
fn reconnects_after_a_loss_are_not_takeovers() {
    let t0 = Instant::now();
    let mut s = live(t0);
    for i in 0..(MAX_TAKEOVERS as u64 + 2) {
        let at = t0 + ms(i * 100);
        assert_eq!(s.handle(Event::AppLost, at), vec![Action::AbortApp]);
        let a = s.handle(Event::AppAttach(init("k")), at + ms(10));
        assert_eq!(a[0], Action::AcceptApp, "reconnect {i}");
        s.handle(Event::AppFrame(text(SUB_TX)), at + ms(20));
    }
}

#[test]
fn a_takeover_with_another_key_is_refused_and_the_first_socket_kept() {
    let t0 = Instant::now();
    let mut s = live(t0);
    let a = s.handle(Event::AppAttach(init("wrong")), t0);
    assert_eq!(
        a,
        vec![Action::RejectApp {
            code: "INVALID_API_KEY",
            message: "Invalid API key"
        }]
    );
    assert_eq!(s.phase(), "live");
}

// === ownership_release ===

const RELEASE: &str =
    r#"{"type":"ownership_release","packageName":"p","sessionId":"s","reason":"clean_shutdown"}"#;

fn released(now: Instant) -> Session {
    let mut s = live(now);
    assert_eq!(
        s.handle(Event::AppFrame(text(RELEASE)), now),
        vec![Action::SendCloud(text(RELEASE), Kind::OwnershipRelease)],
        "forwarded as is"
    );
    s
}

#[test]
fn after_a_release_an_app_loss_ends_the_session_toward_the_cloud() {
    let t0 = Instant::now();
    let mut s = released(t0);
    assert_eq!(
        s.handle(Event::AppLost, t0 + ms(1)),
        vec![Action::AbortCloud]
    );
    assert_eq!(s.end_reason(), Some(EndReason::AppLost));
    assert!(!s.is_holding());
    // A close is passed on exactly, without the intent window.
    let mut s = released(t0);
    let close = Close::new(1000, "bye");
    assert_eq!(
        s.handle(Event::AppClosed(Some(close.clone())), t0 + ms(1)),
        vec![Action::CloseCloud(Some(close))]
    );
    assert_eq!(s.end_reason(), Some(EndReason::AppClosed));
}

#[test]
fn after_a_release_a_hung_app_is_not_held_either() {
    let t0 = Instant::now();
    let mut s = released(t0);
    s.handle(pong(1), t0);
    let mut now = t0;
    let mut a = Vec::new();
    while s.end_reason().is_none() && now < t0 + Duration::from_secs(30) {
        now += Duration::from_secs(5);
        a = s.handle(Event::Tick, now);
    }
    assert_eq!(a, vec![Action::AbortCloud]);
    assert_eq!(s.end_reason(), Some(EndReason::AppLost));
}

#[test]
fn after_a_release_a_cloud_loss_is_not_healed() {
    let t0 = Instant::now();
    let mut s = released(t0);
    assert_eq!(
        s.handle(Event::CloudLost, t0 + ms(1)),
        vec![Action::AbortCloud, Action::AbortApp],
        "the app's socket ends as the cloud's did"
    );
    assert_eq!(s.end_reason(), Some(EndReason::CloudLost));
    // A close the SDK would reconnect after reaches it exactly instead of being healed.
    let mut s = released(t0);
    let close = Close::new(1011, "Internal server error");
    assert_eq!(
        s.handle(Event::CloudClosed(Some(close.clone())), t0 + ms(1)),
        vec![Action::CloseApp(Some(close))]
    );
    // Nor is a resurrection healed under the app.
    let mut s = released(t0);
    assert_eq!(
        s.handle(Event::CloudResurrect, t0 + ms(1)),
        vec![
            Action::AbortCloud,
            Action::CloseApp(Some(Close::new(1001, "Cloud link lost")))
        ]
    );
}

#[test]
fn a_release_while_the_cloud_link_is_healing_stops_the_heal() {
    let t0 = Instant::now();
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    let a = s.handle(Event::AppFrame(text(RELEASE)), t0 + ms(60));
    assert_eq!(
        a,
        vec![
            Action::Dropped(Dropped {
                stream: "ownership_release",
                reason: "session_ended"
            }),
            Action::CloseApp(Some(Close::new(1001, "Cloud link lost")))
        ]
    );
    assert_eq!(s.end_reason(), Some(EndReason::CloudLost));
}

#[test]
fn a_new_accepted_init_clears_the_release() {
    let t0 = Instant::now();
    let mut s = released(t0);
    // Another socket takes over with a fresh init: the app owns the session again.
    let a = s.handle(Event::AppAttach(init("k")), t0 + ms(5));
    assert_eq!(a[0], displaced());
    s.handle(Event::AppFrame(text(SUB_TX)), t0 + ms(10));
    assert_eq!(
        s.handle(Event::AppLost, t0 + ms(20)),
        vec![Action::AbortApp]
    );
    assert!(s.is_holding(), "held again");
    // A refused init does not clear it.
    let mut s = released(t0);
    for i in 0..MAX_TAKEOVERS as u64 {
        s.handle(Event::AppFrame(text(RELEASE)), t0 + ms(i));
        s.handle(Event::AppAttach(init("k")), t0 + ms(i));
    }
    s.handle(Event::AppFrame(text(RELEASE)), t0 + ms(10));
    let a = s.handle(Event::AppAttach(init("k")), t0 + ms(11));
    assert!(matches!(a[..], [Action::RefuseTakeover { .. }]), "{a:?}");
    assert_eq!(
        s.handle(Event::AppLost, t0 + ms(20)),
        vec![Action::AbortCloud]
    );
}

// === the cloud link ===

fn display(view: &str, n: u32) -> Frame {
    text(&format!(
        r#"{{"type":"display_event","view":"{view}","n":{n}}}"#
    ))
}

fn lose_cloud(s: &mut Session, now: Instant) {
    let a = s.handle(Event::CloudLost, now);
    assert_eq!(
        a,
        vec![Action::AbortCloud, Action::CloudLinkLost { cause: "lost" }]
    );
    assert_eq!(s.phase(), "cloud_down");
    // The cloud's side ended it: a short settle, then the first try.
    assert_eq!(s.next_deadline(), Some(now + cloud::CLOSE_SETTLE));
    assert_eq!(
        s.handle(Event::Tick, now + cloud::CLOSE_SETTLE),
        vec![Action::DialCloud]
    );
}

#[test]
fn a_dropped_cloud_link_is_healed_without_the_app_noticing() {
    let t0 = Instant::now();
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    // The app keeps talking; its frames wait, and it hears nothing.
    let mut superseded = 0;
    for (n, view) in [
        (1, "dashboard"),
        (2, "dashboard"),
        (3, "dashboard"),
        (1, "main"),
    ] {
        let a = s.handle(Event::AppFrame(display(view, n)), t0 + ms(1));
        assert!(
            sent_to_app(&a).is_empty() && sent_to_cloud(&a).is_empty(),
            "{a:?}"
        );
        superseded += a
            .iter()
            .filter(|a| matches!(a, Action::Dropped(d) if d.reason == "superseded"))
            .count();
    }
    assert_eq!(superseded, 2, "older dashboard updates are superseded");
    let a = s.handle(Event::CloudConnected, t0 + ms(60));
    assert_eq!(
        a,
        vec![Action::SendCloud(init("k"), Kind::ConnectionInit)],
        "the cached init goes first"
    );
    let a = s.handle(Event::CloudFrame(text(ACK)), t0 + ms(30));
    assert!(sent_to_app(&a).is_empty(), "no second ack for the app");
    assert_eq!(
        sent_to_cloud(&a),
        vec![text(SUB_TX), display("dashboard", 3), display("main", 1)],
        "subscriptions restored, then the newest display per view"
    );
    assert!(a.contains(&Action::CloudReacked {
        outage: ms(30),
        resurrected: false
    }));
    assert_eq!(s.phase(), "live");
}

#[test]
fn a_changed_ack_reaches_the_app_as_updates() {
    let t0 = Instant::now();
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    s.handle(Event::CloudConnected, t0);
    let new_ack =
        r#"{"type":"tpa_connection_ack","sessionId":"s","settings":[{"key":"k","value":9}]}"#;
    let a = s.handle(Event::CloudFrame(text(new_ack)), t0 + ms(5));
    let got = sent_to_app(&a);
    assert_eq!(got.len(), 1);
    let Frame::Text(t) = &got[0] else { panic!() };
    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
    assert_eq!(v["type"], "settings_update");
    assert_eq!(v["settings"][0]["value"], 9);
}

#[test]
fn only_meant_cloud_closes_end_the_session() {
    for (code, reason, ends) in [
        (1000, "", true),
        (1001, "", true),
        (1008, "Invalid API key", true),
        (4000, "User session ended", true),
        (1011, "Internal server error", false),
        (1012, "", false),
        (4000, "", false),
    ] {
        let t0 = Instant::now();
        let mut s = live(t0);
        let close = Close::new(code, reason);
        let a = s.handle(Event::CloudClosed(Some(close.clone())), t0);
        if ends {
            assert_eq!(a, vec![Action::CloseApp(Some(close))], "{code} {reason}");
        } else {
            assert!(
                a.contains(&Action::CloudLinkLost { cause: "closed" }),
                "{code} {reason}: {a:?}"
            );
            assert_eq!(s.phase(), "cloud_down");
        }
    }
}

#[test]
fn a_silent_cloud_is_declared_dead_after_three_intervals() {
    let t0 = Instant::now();
    let mut s = live(t0);
    let every = Duration::from_secs(10);
    assert_eq!(s.handle(Event::Tick, t0 + every), vec![Action::PingCloud]);
    // A pong keeps it alive.
    s.handle(Event::CloudPong, t0 + every + ms(1));
    assert_eq!(
        s.handle(Event::Tick, t0 + every * 2),
        vec![Action::PingCloud]
    );
    assert_eq!(
        s.handle(Event::Tick, t0 + every * 3),
        vec![Action::PingCloud]
    );
    // Nothing since 10 s: silent at 40 s.
    let a = s.handle(Event::Tick, t0 + every * 4 + ms(1));
    assert!(
        a.contains(&Action::CloudLinkLost { cause: "silent" }),
        "{a:?}"
    );
}

#[test]
fn failed_dials_back_off_with_jitter_under_the_cap() {
    let t0 = Instant::now();
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    let mut now = t0;
    for attempt in 1..=6u32 {
        assert!(s.handle(Event::CloudDialFailed, now).is_empty());
        let due = s.next_deadline().expect("retry");
        let cap = (ms(100) * 2u32.pow(attempt)).min(Duration::from_secs(5));
        assert!(
            due >= now && due <= now + cap,
            "attempt {attempt}: {:?} > {cap:?}",
            due - now
        );
        assert_eq!(s.handle(Event::Tick, due), vec![Action::DialCloud]);
        now = due;
    }
}

#[test]
fn a_refused_re_init_waits_for_the_resurrection_and_heals_in_place() {
    let t0 = Instant::now();
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    s.handle(Event::CloudConnected, t0 + ms(10));
    let refusal = text(
        r#"{"type":"tpa_connection_error","code":"APP_NOT_STARTED","message":"App not started for this session"}"#,
    );
    let a = s.handle(Event::CloudFrame(refusal), t0 + ms(20));
    assert_eq!(a, vec![Action::AbortCloud], "the app hears nothing of it");
    assert_eq!(s.phase(), "cloud_down");
    assert!(
        s.handle(Event::Tick, t0 + Duration::from_secs(5))
            .is_empty(),
        "no dials of its own"
    );
    assert_eq!(
        s.handle(Event::CloudResurrect, t0 + Duration::from_secs(6)),
        vec![Action::DialCloud]
    );
    s.handle(Event::CloudConnected, t0 + Duration::from_secs(6));
    let a = s.handle(Event::CloudFrame(text(ACK)), t0 + Duration::from_secs(6));
    assert!(a.contains(&Action::CloudReacked {
        outage: Duration::from_secs(6),
        resurrected: true
    }));
    assert_eq!(s.phase(), "live");
}

#[test]
fn a_refused_session_that_is_never_resurrected_ends_towards_the_app() {
    let t0 = Instant::now();
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    s.handle(Event::CloudConnected, t0);
    s.handle(
        Event::CloudClosed(Some(Close::new(1008, "App not started for this session"))),
        t0,
    );
    let a = s.handle(Event::Tick, t0 + Duration::from_secs(15));
    assert_eq!(
        a,
        vec![Action::CloseApp(Some(Close::new(1001, "Cloud link lost")))]
    );
    assert_eq!(s.end_reason(), Some(EndReason::CloudLost));
}

#[test]
fn an_sdk_json_ping_is_answered_locally() {
    let t0 = Instant::now();
    let mut s = live(t0);
    let a = s.handle(Event::AppFrame(text(r#"{"type":"ping"}"#)), t0);
    assert!(sent_to_cloud(&a).is_empty());
    let got = sent_to_app(&a);
    let Some(Frame::Text(t)) = got.first() else {
        panic!("{a:?}")
    };
    assert!(t.as_str().starts_with(r#"{"type":"pong""#));
}

#[test]
fn a_resurrection_of_a_link_that_looked_healthy_re_dials() {
    let t0 = Instant::now();
    let mut s = live(t0);
    let a = s.handle(Event::CloudResurrect, t0);
    assert_eq!(a, vec![Action::AbortCloud, Action::DialCloud]);
    s.handle(Event::CloudConnected, t0 + ms(5));
    let a = s.handle(Event::CloudFrame(text(ACK)), t0 + ms(10));
    assert!(a.contains(&Action::CloudReacked {
        outage: ms(10),
        resurrected: true
    }));
}

#[test]
fn a_silent_link_is_re_dialled_at_once() {
    let t0 = Instant::now();
    let mut s = live(t0);
    s.handle(Event::CloudPong, t0);
    let a = s.handle(Event::Tick, t0 + Duration::from_secs(31));
    assert!(
        a.ends_with(&[Action::CloudLinkLost { cause: "silent" }, Action::DialCloud]),
        "{a:?}"
    );
}

#[test]
fn a_close_during_the_re_init_is_judged_like_any_other() {
    // A session end reaches the app exactly, even while re-initialising.
    let t0 = Instant::now();
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    s.handle(Event::CloudConnected, t0 + ms(60));
    let end = Close::new(1000, "User session ended");
    let a = s.handle(Event::CloudClosed(Some(end.clone())), t0 + ms(70));
    assert_eq!(a, vec![Action::CloseApp(Some(end))]);
    // A server error is just another lost link: dial again.
    let mut s = live(t0);
    lose_cloud(&mut s, t0);
    s.handle(Event::CloudConnected, t0 + ms(60));
    let a = s.handle(
        Event::CloudClosed(Some(Close::new(1011, "Internal server error"))),
        t0 + ms(70),
    );
    assert!(a.contains(&Action::AbortCloud), "{a:?}");
    assert_eq!(s.phase(), "cloud_down");
    assert!(
        s.next_deadline() <= Some(t0 + ms(70) + Duration::from_millis(400)),
        "a retry is due soon"
    );
}

#[test]
fn a_link_lost_before_the_first_ack_ends_the_session() {
    let t0 = Instant::now();
    let mut s = new_session(t0);
    s.handle(Event::CloudConnected, t0);
    let a = s.handle(Event::CloudLost, t0 + ms(5));
    assert_eq!(a, vec![Action::AbortCloud, Action::AbortApp]);
    assert_eq!(s.end_reason(), Some(EndReason::CloudLost));
}
