//! A connection's socket with a write deadline: a client that accepts no bytes for
//! `serve.write_timeout_ms` (it stopped reading a large listing, or its network died) gets its
//! connection closed, which drops the response being written and everything it holds (a
//! PostgreSQL connection, a listing slot). Reads pass through: hyper times the request head.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The error a stalled write ends with (told apart from other IO errors by
/// [`is_write_stall`]).
const STALLED: &str = "the client accepted no response bytes within serve.write_timeout_ms";

pub struct WriteDeadline<IO> {
    io: IO,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    /// A write is waiting and the deadline runs.
    armed: bool,
}

impl<IO> WriteDeadline<IO> {
    pub fn new(io: IO, limit: Duration) -> WriteDeadline<IO> {
        WriteDeadline {
            io,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            armed: false,
        }
    }

    /// What a write that made progress (`Ready`) or waits (`Pending`) means for the deadline.
    fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.armed {
                    self.armed = true;
                    self.deadline.as_mut().reset(Instant::now() + self.limit);
                }
                match self.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, STALLED)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// Whether an error (or one of its sources) is a [`WriteDeadline`] expiring.
pub fn is_write_stall(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut && io.to_string() == STALLED {
                return true;
            }
        }
        current = e.source();
    }
    false
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.guard(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.guard(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.guard(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_reader_that_stops_reading_gets_a_timed_out_write() {
        // A 64 KiB pipe nobody reads: the writes fill it, then wait.
        let (a, _b) = tokio::io::duplex(64 * 1024);
        let mut guarded = WriteDeadline::new(a, Duration::from_millis(200));
        let started = std::time::Instant::now();
        let chunk = vec![0u8; 16 * 1024];
        let err = loop {
            if let Err(e) = guarded.write_all(&chunk).await {
                break e;
            }
        };
        assert!(is_write_stall(&err), "{err}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
