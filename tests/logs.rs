//! Structured logs of the real binary (`TETHER_LOG_FORMAT=json`) over a whole session life:
//! webhook, init, ack, frames both ways, an app that vanishes, the cloud's close, SIGTERM.
//! Every line is a JSON object with `timestamp`, `level` and `message`; lines emitted inside a
//! session carry its `session_id`, lines about a peer carry `hop`; the API key never appears.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::Value;
use support::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const RELAYED: &str = "alice@example.com-com.example.notes";
const HELD: &str = "bob@example.com-com.example.notes";

/// Session-wide lines that are about neither peer in particular, so carry no `hop`.
const SESSION_LEVEL: [&str; 3] = [
    "session state",
    "session ended",
    "app recovered; buffer replayed",
];

/// Runs one Tether through both sessions and a SIGTERM; every line it printed, in order.
async fn drive() -> Vec<String> {
    let cloud = FakeCloud::bind().await;
    let mut app = FakeApp::start().await;
    let mut tether = Tether::spawn(&[
        ("TETHER_APP_URL", app.url()),
        ("TETHER_API_KEY", API_KEY.into()),
        ("TETHER_LOG_FORMAT", "json".into()),
    ])
    .await;

    // A session relayed both ways, then ended by the cloud.
    let mut a = connect_session(&tether, &cloud, &mut app, RELAYED).await;
    for i in 0..3 {
        let down =
            format!(r#"{{"type":"data_stream","streamType":"transcription:en-US","seq":{i}}}"#);
        a.cloud_ws
            .send(Message::text(down.clone()))
            .await
            .expect("down");
        assert_eq!(next_text(&mut a.app_ws).await, down);
        let up = format!(r#"{{"type":"display_event","view":"main","seq":{i}}}"#);
        a.app_ws.send(Message::text(up.clone())).await.expect("up");
        assert_eq!(next_text(&mut a.cloud_ws).await, up);
    }
    a.cloud_ws
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "App stopped".into(),
        }))
        .await
        .expect("cloud close");
    assert_eq!(close_of(&mut a.app_ws).await.map(|c| c.0), Some(1000));

    // A session whose app vanishes without a close; the cloud's frames are held for it.
    let b = connect_session(&tether, &cloud, &mut app, HELD).await;
    let mut b_cloud = b.cloud_ws;
    drop(b.app_ws);
    tether.wait_state(HELD, "app_down").await;
    b_cloud
        .send(Message::text(
            r#"{"type":"data_stream","streamType":"transcription:en-US"}"#,
        ))
        .await
        .expect("down while held");

    tether.signal("TERM");
    let (status, close) = tokio::join!(
        tether.wait_exit(Duration::from_secs(10)),
        close_of(&mut b_cloud)
    );
    assert_eq!(status.code(), Some(0));
    assert_eq!(close.map(|c| c.0), Some(1001));
    // The pipes are read by background tasks: wait for the held session's last line.
    eventually("the held session's end to be logged", || async {
        tether
            .logs()
            .iter()
            .any(|l| l.contains(HELD) && l.contains(r#""reason":"shutdown""#))
    })
    .await;
    tether.logs()
}

/// The session a line belongs to: a `session_id` field, or the enclosing span's.
fn session_of(v: &Value) -> Option<&str> {
    v["session_id"]
        .as_str()
        .or_else(|| v["span"]["session_id"].as_str())
}

#[tokio::test]
async fn every_line_is_json_with_timestamp_level_and_message_and_no_api_key() {
    let lines = drive().await;
    assert!(lines.len() > 10, "too few lines to judge: {lines:#?}");
    let mut bad = Vec::new();
    for line in &lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            bad.push(format!("not JSON: {line}"));
            continue;
        };
        for key in ["timestamp", "level", "message"] {
            if !v[key].is_string() {
                bad.push(format!("no {key}: {line}"));
            }
        }
    }
    assert!(bad.is_empty(), "malformed log lines:\n{}", bad.join("\n"));
    // The whole key, and its first 12 characters (a truncated or partly masked leak).
    for needle in [API_KEY, &API_KEY[..12]] {
        let leaks: Vec<&String> = lines.iter().filter(|l| l.contains(needle)).collect();
        assert!(leaks.is_empty(), "API key in the logs:\n{leaks:#?}");
    }
}

#[tokio::test]
async fn session_lines_carry_session_id_and_peer_lines_carry_hop() {
    let lines = drive().await;
    let parsed: Vec<(Value, &String)> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok().map(|v| (v, l)))
        .collect();
    let mut bad = Vec::new();
    for (v, line) in &parsed {
        let sid = session_of(v);
        let in_session = v["span"]["name"] == "session"
            || v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("tether::session"));
        let named = [RELAYED, HELD].into_iter().find(|id| line.contains(id));
        if (in_session || named.is_some()) && sid.is_none() {
            bad.push(format!("no session_id: {line}"));
        }
        if let (Some(id), Some(sid)) = (named, sid) {
            if id != sid {
                bad.push(format!("names {id} but is attributed to {sid}: {line}"));
            }
        }
        if v["span"]["name"] == "session" && v["span"]["package"].as_str().is_none_or(str::is_empty)
        {
            bad.push(format!("session line without its package: {line}"));
        }
        match v.get("hop").map(|h| h.as_str()) {
            None => {
                let message = v["message"].as_str().unwrap_or_default();
                if sid.is_some() && !SESSION_LEVEL.contains(&message) {
                    bad.push(format!("session line about a peer without hop: {line}"));
                }
            }
            Some(Some("cloud" | "app")) => {}
            Some(other) => bad.push(format!("hop {other:?} is neither cloud nor app: {line}")),
        }
    }
    // The checks above must have had something to check.
    for id in [RELAYED, HELD] {
        for hop in ["cloud", "app"] {
            assert!(
                parsed
                    .iter()
                    .any(|(v, _)| session_of(v) == Some(id) && v["hop"] == hop),
                "no {hop} line for {id}"
            );
        }
        assert!(
            parsed
                .iter()
                .any(|(v, _)| session_of(v) == Some(id) && v["message"] == "session ended"),
            "no end line for {id}"
        );
    }
    assert!(
        bad.is_empty(),
        "unattributed log lines:\n{}",
        bad.join("\n")
    );
}
