//! Request bodies read under a deadline, and response bodies that tell their connection
//! when they are done. A body timer runs only while its reader waits on the peer, so a
//! reader that is slow itself (an app applying backpressure) never makes the peer look
//! stalled. No sockets here.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::sync::watch;
use tokio::time::Sleep;

use super::{Body, BoxError};

/// A request body's peer sent nothing for too long.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled: nothing received for {} ms", .after.as_millis())]
pub struct BodyTimeout {
    /// The silence that was allowed.
    pub after: Duration,
}

/// Why a whole body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyReadError {
    #[error("request body not complete within {} ms", .after.as_millis())]
    Timeout { after: Duration },
    #[error("{0}")]
    Read(BoxError),
}

impl BodyReadError {
    /// Whether the peer was too slow (rather than the body bad or too large).
    pub fn is_timeout(&self) -> bool {
        matches!(self, BodyReadError::Timeout { .. })
    }
}

/// A body that fails with [`BodyTimeout`] when its reader has waited `idle` for the next
/// frame. The wait starts when a poll finds nothing ready, not when the previous frame was
/// returned: time the reader spends elsewhere is not the peer's.
pub struct TimedBody<B> {
    inner: B,
    idle: Duration,
    waiting: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
}

/// Counts requests in flight on one connection, so it can tell when it is idle.
#[derive(Clone)]
pub(super) struct InFlight(Arc<watch::Sender<usize>>);

/// One request in flight; dropped when its response body is done (or abandoned).
pub(super) struct InFlightGuard(Arc<watch::Sender<usize>>);

/// A response body carrying its request's [`InFlightGuard`].
pub(super) struct Tracked<B> {
    inner: B,
    _guard: InFlightGuard,
}

/// A streamed request body relayed from a peer, failing after `idle` of silence.
pub fn relay_within(body: Incoming, idle: Duration) -> Body {
    TimedBody::new(body, idle).boxed()
}

/// Bounds the reading of a whole body (a webhook): `read` is the collecting future, e.g.
/// `Limited::new(body, limit).collect()`, and must finish within `within`.
///
/// Errors: [`BodyReadError::Timeout`] when the peer is too slow, else the body's own error.
/// Dropping the future drops the body.
pub async fn read_within<T, E>(
    read: impl Future<Output = Result<T, E>>,
    within: Duration,
) -> Result<T, BodyReadError>
where
    E: Into<BoxError>,
{
    match tokio::time::timeout(within, read).await {
        Ok(Ok(whole)) => Ok(whole),
        Ok(Err(e)) => Err(BodyReadError::Read(e.into())),
        Err(_) => Err(BodyReadError::Timeout { after: within }),
    }
}

/// Whether `err`, or any error under it, is a [`BodyTimeout`]: the hyper client reports a
/// failed request body as its own error with ours as the source.
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    // Bounded: error chains are short, and a cycle would need a self-referencing source.
    for _ in 0..16 {
        match cur {
            Some(e) if e.is::<BodyTimeout>() => return true,
            Some(e) => cur = e.source(),
            None => return false,
        }
    }
    false
}

// === impl TimedBody ===

impl<B> TimedBody<B> {
    /// Wraps `inner`; see the type's doc for when the timer runs.
    pub fn new(inner: B, idle: Duration) -> Self {
        TimedBody {
            inner,
            idle,
            waiting: None,
            timed_out: false,
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if this.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = None;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timed_out = true;
                Poll::Ready(Some(Err(Box::new(BodyTimeout { after: idle }))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl InFlight ===

impl InFlight {
    /// A counter at 0 and the receiver that watches it.
    pub(super) fn channel() -> (InFlight, watch::Receiver<usize>) {
        let (tx, rx) = watch::channel(0);
        (InFlight(Arc::new(tx)), rx)
    }

    /// Counts one more request until the guard drops.
    pub(super) fn enter(&self) -> InFlightGuard {
        self.0.send_modify(|n| *n += 1);
        InFlightGuard(self.0.clone())
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

// === impl Tracked ===

impl<B> Tracked<B> {
    pub(super) fn new(inner: B, guard: InFlightGuard) -> Self {
        Tracked {
            inner,
            _guard: guard,
        }
    }
}

impl<B> HttpBody for Tracked<B>
where
    B: HttpBody + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_bound_and_a_flowing_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<bytes::Bytes>, BoxError>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let mut body = TimedBody::new(StreamBody::new(Box::pin(stream)), Duration::from_secs(5));
        tx.send(Ok(Frame::data(bytes::Bytes::from_static(b"a"))))
            .await
            .expect("send");
        let first = body.frame().await.expect("frame").expect("data");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"a"[..]));
        // Time the reader spends away does not count against the peer.
        tokio::time::sleep(Duration::from_secs(60)).await;
        tx.send(Ok(Frame::data(bytes::Bytes::from_static(b"b"))))
            .await
            .expect("send");
        assert!(body.frame().await.expect("frame").is_ok());
        let err = body.frame().await.expect("an error").expect_err("timeout");
        assert!(is_body_timeout(&*err), "{err}");
        assert!(body.frame().await.is_none(), "nothing after the timeout");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn read_within_names_a_timeout() {
        let body = http_body_util::StreamBody::new(futures_util::stream::pending::<
            Result<Frame<bytes::Bytes>, BoxError>,
        >());
        let err = read_within(body.collect(), Duration::from_secs(1))
            .await
            .expect_err("timeout");
        assert!(err.is_timeout(), "{err}");
        assert!(err.to_string().contains("1000 ms"), "{err}");
    }
}
