//! A deadline on a connection's first request.
//!
//! Without one, a client that sends part of a request line and then nothing
//! (or a byte a minute: slowloris) holds a socket and a task for as long as
//! it likes; enough of them exhaust the process's file descriptors and no
//! new peer can connect, while the per-address WebSocket limit never sees
//! them because no request completes. hyper has a header timeout, but
//! `axum::serve` runs it without the timer it needs, so the deadline is
//! kept here, under HTTP: reads fail once it passes, unless the bytes read
//! so far contain the blank line that ends a request's headers. After that
//! the connection is HTTP's own (a WebSocket then lives by its pings).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The whole first request head (request line and headers) must arrive in
/// this time: a WebSocket upgrade is a few hundred bytes.
pub(crate) const FIRST_REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// An accepted connection with the first-request deadline, holding `T`
/// (the connection's share of a per-address count) until it closes.
pub(crate) struct Guarded<IO, T> {
    io: IO,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The last four bytes read, to find `\r\n\r\n` across reads.
    tail: u32,
    _held: T,
}

impl<IO, T> Guarded<IO, T> {
    pub(crate) fn new(io: IO, held: T, deadline: Duration) -> Self {
        Guarded {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(deadline))),
            tail: 0,
            _held: held,
        }
    }

    /// Feeds bytes read; true once the end of a request head went by.
    fn saw_head_end(&mut self, bytes: &[u8]) -> bool {
        const END: u32 = u32::from_be_bytes(*b"\r\n\r\n");
        for &b in bytes {
            self.tail = (self.tail << 8) | u32::from(b);
            if self.tail == END {
                return true;
            }
        }
        false
    }
}

impl<IO: AsyncRead + Unpin, T: Unpin> AsyncRead for Guarded<IO, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(d) = this.deadline.as_mut() {
            // Polled first, so that a read left pending still wakes at the
            // deadline.
            if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the first request did not arrive in time",
                )));
            }
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.deadline.is_some() && polled.is_ready() {
            let fresh = buf.filled()[before..].to_vec();
            if this.saw_head_end(&fresh) {
                this.deadline = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin, T: Unpin> AsyncWrite for Guarded<IO, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_ends_fails_at_the_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, (), Duration::from_secs(10));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = g.read(&mut buf).await.unwrap();
        assert_eq!(n, 25);
        let t0 = tokio::time::Instant::now();
        let e = g.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_head_lifts_the_deadline_even_split_across_reads() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut g = Guarded::new(server, (), Duration::from_secs(10));
        let mut buf = [0u8; 64];
        for part in [&b"GET / HTTP/1.1\r\nHost: x\r"[..], b"\n", b"\r", b"\nbody"] {
            client.write_all(part).await.unwrap();
            assert_eq!(g.read(&mut buf).await.unwrap(), part.len());
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"later").await.unwrap();
        let n = g.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"later");
    }
}
