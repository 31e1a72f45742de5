//! The socket under each served connection. It replays the bytes read while telling
//! HTTP/1 from HTTP/2, fails a write the peer has taken nothing of for the send timeout,
//! and holds its listener's connection slot until it is dropped: an upgraded stream owns
//! the socket, so upgraded connections keep counting against the cap. No HTTP here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::Stage;
use crate::admin::metrics::ListenerMetrics;

/// What every HTTP/2 prior-knowledge client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a connection speaks, told from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// One open connection counted against its listener's cap; released when dropped.
#[derive(Debug)]
pub struct Slot {
    open: Arc<AtomicUsize>,
    gauge: Gauge,
}

/// The peer took none of a pending write for the send timeout.
#[derive(Debug, thiserror::Error)]
#[error("peer took nothing written to it for {} ms", .after.as_millis())]
pub struct SendTimeout {
    pub after: Duration,
}

/// A served connection's socket: see the module doc.
pub struct ConnIo {
    stream: TcpStream,
    prefix: Bytes,
    send_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: ListenerMetrics,
    _slot: Slot,
}

/// Reads until the first bytes tell HTTP/2's preface from anything else; returns the bytes
/// read (to be replayed) and the protocol, or `None` when the peer closed without sending.
/// Unbounded: the caller puts it under the header-read timeout.
pub async fn sniff(stream: &mut TcpStream) -> io::Result<Option<(Bytes, Protocol)>> {
    let mut buf = BytesMut::with_capacity(1024);
    // Bounded: each pass reads at least one byte and the loop ends by the preface's length.
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            // A peer that closed mid-way gets hyper's answer to a truncated request.
            return Ok((!buf.is_empty()).then(|| (buf.freeze(), Protocol::Http1)));
        }
        let seen = buf.len().min(H2_PREFACE.len());
        if buf[..seen] != H2_PREFACE[..seen] {
            return Ok(Some((buf.freeze(), Protocol::Http1)));
        }
        if seen == H2_PREFACE.len() {
            return Ok(Some((buf.freeze(), Protocol::Http2)));
        }
    }
}

// === impl Slot ===

impl Slot {
    /// Takes a slot if fewer than `cap` are taken; `gauge` follows the count.
    pub fn take(open: &Arc<AtomicUsize>, cap: usize, gauge: &Gauge) -> Option<Slot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < cap).then_some(n + 1)
        })
        .ok()?;
        gauge.inc();
        Some(Slot {
            open: open.clone(),
            gauge: gauge.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

// === impl ConnIo ===

impl ConnIo {
    /// Wraps an accepted socket whose first bytes `prefix` were already read.
    pub fn new(
        stream: TcpStream,
        prefix: Bytes,
        send_timeout: Duration,
        slot: Slot,
        metrics: ListenerMetrics,
    ) -> Self {
        ConnIo {
            stream,
            prefix,
            send_timeout,
            stalled: None,
            metrics,
            _slot: slot,
        }
    }

    /// Passes a write's outcome on; a write that stays pending starts (or checks) the
    /// send timer, which any progress clears.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let after = self.send_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        self.metrics.timeout(Stage::Send);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            SendTimeout { after },
        )))
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.bound_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.bound_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn the_preface_tells_h2_and_anything_else_is_h1() {
        for (sent, want) in [
            (
                &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"[..],
                Protocol::Http2,
            ),
            (&b"GET / HTTP/1.1\r\n"[..], Protocol::Http1),
            (&b"PRX"[..], Protocol::Http1),
        ] {
            let (mut client, mut server) = pair().await;
            client.write_all(sent).await.expect("write");
            let (prefix, proto) = sniff(&mut server).await.expect("sniff").expect("bytes");
            assert_eq!(proto, want, "{sent:?}");
            assert!(
                sent.starts_with(&prefix),
                "the bytes read are replayed as read"
            );
        }
        let (client, mut server) = pair().await;
        drop(client);
        assert!(sniff(&mut server).await.expect("sniff").is_none());
    }

    #[test]
    fn slots_stop_at_the_cap_and_come_back_when_dropped() {
        let open = Arc::new(AtomicUsize::new(0));
        let gauge = Gauge::default();
        let a = Slot::take(&open, 2, &gauge).expect("first");
        let _b = Slot::take(&open, 2, &gauge).expect("second");
        assert!(Slot::take(&open, 2, &gauge).is_none());
        assert_eq!(gauge.get(), 2);
        drop(a);
        assert!(Slot::take(&open, 2, &gauge).is_some());
    }
}
