//! The echo peer: a stand-in for the cloud's `/app-ws` that acks the first text frame (the
//! init) and then echoes every data frame back. A few `bench_*` control frames switch it to
//! one-way modes for the throughput runs (a burst sent down; a sink counting frames sent
//! up), so a one-way stream never has to be echoed into a socket nobody reads.
//!
//! It must answer a direct client and Tether alike: the two paths of every measurement go
//! through this same code.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every control frame starts with this, so telling them from data is a prefix test.
pub const CONTROL_PREFIX: &str = r#"{"type":"bench_"#;

/// Frames written between flushes in a burst: batches like a busy cloud would.
const BURST_FLUSH_EVERY: u64 = 64;

/// A running echo peer.
pub struct EchoPeer {
    /// The bound address.
    pub addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

// === impl EchoPeer ===

impl EchoPeer {
    /// Binds 127.0.0.1:0 and accepts until [`EchoPeer::shutdown`].
    pub async fn start() -> anyhow::Result<EchoPeer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind echo peer")?;
        let addr = listener.local_addr()?;
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                let tcp = tokio::select! {
                    biased;
                    () = c.cancelled() => return,
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                t.spawn(connection(tcp, c.clone()));
            }
        });
        Ok(EchoPeer {
            addr,
            cancel,
            tracker,
        })
    }

    /// The `/app-ws` URL a client or a webhook names.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/app-ws", self.addr)
    }

    /// Closes every connection and waits for their tasks.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
    }
}

/// The `tpa_connection_ack` answering `init` (its `sessionId` echoed when it has one).
fn ack_for(init: &str) -> String {
    let session_id = serde_json::from_str::<Value>(init)
        .ok()
        .and_then(|v| {
            v.get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    json!({
        "type": "tpa_connection_ack",
        "sessionId": session_id,
        "settings": [],
        "mentraosSettings": {},
        "capabilities": null,
        "timestamp": "2026-01-10T09:15:00.000Z",
    })
    .to_string()
}

/// A control frame asking the peer to send `count` frames down: text data frames, or
/// binary frames of `size` bytes.
pub fn burst_request(count: u64, binary: bool, size: usize) -> String {
    json!({"type": "bench_burst", "count": count, "binary": binary, "size": size}).to_string()
}

/// Control frames opening and closing a sink: frames in between are counted, not echoed,
/// and the close is answered with `{"type":"bench_sink_count","n":N}`.
pub const SINK_START: &str = r#"{"type":"bench_sink_start"}"#;
pub const SINK_END: &str = r#"{"type":"bench_sink_end"}"#;

/// Reads the `n` of a sink count answer.
pub fn sink_count(text: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(text).ok()?;
    (v.get("type")?.as_str()? == "bench_sink_count").then(|| v.get("n")?.as_u64())?
}

/// A `data_stream` transcription frame of about 200 bytes, numbered `seq`.
pub fn data_frame(seq: u64) -> String {
    format!(
        r#"{{"type":"data_stream","sessionId":"bench@example.com-com.example.bench","streamType":"transcription:en-US","data":{{"type":"transcription","text":"the quick brown fox jumps","isFinal":true,"seq":{seq:08}}}}}"#
    )
}

async fn connection(tcp: TcpStream, cancel: CancellationToken) {
    // Small frames must not wait for Nagle on either path.
    let _ = tcp.set_nodelay(true);
    #[allow(clippy::result_large_err)] // tungstenite's callback signature
    let only_app_ws = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == "/app-ws" {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some("not found".into()));
            *err.status_mut() = StatusCode::NOT_FOUND;
            Err(err)
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, only_app_ws).await else {
        return;
    };
    let mut acked = false;
    let mut sunk: Option<u64> = None;
    loop {
        let msg = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            m = ws.next() => match m {
                Some(Ok(m)) => m,
                _ => break,
            },
        };
        let result = match msg {
            Message::Text(t) if !acked => {
                acked = true;
                ws.send(Message::text(ack_for(t.as_str()))).await
            }
            Message::Text(t) if t.as_str().starts_with(CONTROL_PREFIX) => {
                control(&mut ws, t.as_str(), &mut sunk).await
            }
            m @ (Message::Text(_) | Message::Binary(_)) => match sunk.as_mut() {
                Some(n) => {
                    *n += 1;
                    Ok(())
                }
                None => ws.send(m).await,
            },
            Message::Close(_) => break,
            // tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        };
        if result.is_err() {
            break;
        }
    }
    let _ = ws.close(None).await;
}

/// Runs one control frame; unknown ones are ignored.
async fn control(
    ws: &mut WebSocketStream<TcpStream>,
    text: &str,
    sunk: &mut Option<u64>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Ok(());
    };
    match v.get("type").and_then(Value::as_str) {
        Some("bench_sink_start") => *sunk = Some(0),
        Some("bench_sink_end") => {
            let n = sunk.take().unwrap_or(0);
            ws.send(Message::text(
                json!({"type": "bench_sink_count", "n": n}).to_string(),
            ))
            .await?;
        }
        Some("bench_burst") => {
            let count = v.get("count").and_then(Value::as_u64).unwrap_or(0);
            let binary = v.get("binary").and_then(Value::as_bool).unwrap_or(false);
            // Bounded: a bad request cannot make the peer allocate without limit.
            let size = v
                .get("size")
                .and_then(Value::as_u64)
                .unwrap_or(640)
                .min(1 << 20) as usize;
            let text = Utf8Bytes::from(data_frame(0));
            let bin = Bytes::from(vec![0x5a_u8; size]);
            for i in 1..=count {
                let m = if binary {
                    Message::Binary(bin.clone())
                } else {
                    Message::Text(text.clone())
                };
                ws.feed(m).await?;
                if i % BURST_FLUSH_EVERY == 0 {
                    ws.flush().await?;
                }
            }
            ws.flush().await?;
        }
        _ => {}
    }
    Ok(())
}
