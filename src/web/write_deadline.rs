//! A write deadline for HTTP connections: a client that stops reading its answers (its
//! receive window full, the daemon's send buffer full) does not keep its connection place
//! for ever. Writes that make no progress for the time limit fail, and hyper closes the
//! connection; a slow client whose reads make progress, however slowly, is never cut.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` whose writes fail once they have been stuck for `limit`.
pub struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    peer: SocketAddr,
    /// Armed at the first write that had to wait, disarmed by any write that went through.
    stuck_since: Option<Pin<Box<Sleep>>>,
    /// The deadline passed: every write fails from then on.
    cut: bool,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, limit: Duration, peer: SocketAddr) -> Self {
        WriteDeadline {
            inner,
            limit,
            peer,
            stuck_since: None,
            cut: false,
        }
    }

    /// The outcome of a write-side poll: progress disarms the deadline, waiting arms it (and
    /// fails once it has passed).
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.cut {
            return Poll::Ready(Err(Self::stuck()));
        }
        if polled.is_ready() {
            self.stuck_since = None;
            return polled;
        }
        let limit = self.limit;
        let deadline = self
            .stuck_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        ready!(deadline.as_mut().poll(cx));
        self.cut = true;
        self.stuck_since = None;
        tracing::debug!(peer = %self.peer,
            "HTTP connection closed: its client read nothing for the time limit");
        Poll::Ready(Err(Self::stuck()))
    }

    fn stuck() -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the time limit",
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_stuck_for_the_limit_fails() {
        let (near, _far) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(near, Duration::from_secs(1), peer());
        w.write_all(&[0; 64]).await.unwrap();
        let started = Instant::now();
        let e = w.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_progresses_is_never_cut() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(near, Duration::from_secs(1), peer());
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0; 16];
            loop {
                // 16 bytes every 0.9 s: a 4 KiB download takes about 4 minutes.
                tokio::time::sleep(Duration::from_millis(900)).await;
                match far.read(&mut buf).await.unwrap() {
                    0 => return got,
                    n => got += n,
                }
            }
        });
        w.write_all(&[7; 4096]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
