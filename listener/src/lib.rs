//! What both flashsale binaries need to serve HTTP: the acceptor (connection timeouts, and
//! no busy loop when the process runs out of file descriptors) and the shutdown signal.
//!
//! poem's `Server` does not expose hyper's `header_read_timeout` and retries a failed
//! `accept` at once; so the acceptor does both jobs: every accepted connection is wrapped
//! in a [`TimedIo`], and an `accept` that fails for lack of descriptors waits a moment.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use poem::{
    http::uri::Scheme,
    listener::Acceptor,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};

/// How long `accept` waits after the process ran out of file descriptors: long enough not
/// to spin on the connection still waiting in the backlog, short enough to serve it soon.
const FD_EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);

/// Default of `HTTP_IDLE_TIMEOUT_SECS`.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
/// Default of `HTTP_REQUEST_TIMEOUT_SECS`.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;

/// How long a connection may take.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    /// A connection that sends nothing (before its first request or between two) for
    /// this long is closed.
    pub idle: Duration,
    /// From a request's first byte until its answer starts; a client that sends its head
    /// or body slower is cut off.
    pub request: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            request: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
        }
    }
}

/// An acceptor that applies [`ConnectionTimeouts`] and survives descriptor exhaustion.
pub struct TimedAcceptor<A> {
    inner: A,
    timeouts: ConnectionTimeouts,
}

impl<A> TimedAcceptor<A> {
    /// Wraps `inner`, applying `timeouts` to every connection it accepts.
    pub fn new(inner: A, timeouts: ConnectionTimeouts) -> Self {
        Self { inner, timeouts }
    }
}

/// `true` for the errors of `accept` that last until some descriptor is closed.
fn out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM on Linux.
    matches!(e.raw_os_error(), Some(24 | 23 | 105 | 12))
}

impl<A: Acceptor> Acceptor for TimedAcceptor<A> {
    type Io = TimedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let mut exhausted = false;
        loop {
            match self.inner.accept().await {
                Ok((io, local, remote, scheme)) => {
                    if exhausted {
                        tracing::info!("accepting connections again");
                    }
                    return Ok((TimedIo::new(io, self.timeouts), local, remote, scheme));
                }
                Err(e) if out_of_descriptors(&e) => {
                    // Once per episode: the pause repeats ten times a second.
                    if !exhausted {
                        tracing::warn!(error = %e, "cannot accept connections: out of file descriptors");
                    }
                    exhausted = true;
                    tokio::time::sleep(FD_EXHAUSTED_PAUSE).await;
                }
                // A connection reset before it was accepted, and the like: try the next.
                Err(e) => tracing::debug!(error = %e, "accept failed"),
            }
        }
    }
}

/// A connection that fails its pending read once the current deadline passes: the idle
/// deadline while no request is under way, the request deadline from a request's first
/// byte until the server writes its answer. A write that cannot go out for the request
/// timeout fails too: a client that stops reading (a live stock stream it never reads)
/// does not hold its connection forever.
pub struct TimedIo<S> {
    inner: S,
    timeouts: ConnectionTimeouts,
    /// Bytes came in since the last write: a request is under way.
    receiving: bool,
    /// Armed by the first read that has to wait, reset by a request's first byte and by
    /// every write.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Armed by the first write that has to wait, reset by any write that goes out.
    write_deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> TimedIo<S> {
    fn new(inner: S, timeouts: ConnectionTimeouts) -> Self {
        Self {
            inner,
            timeouts,
            receiving: false,
            deadline: None,
            write_deadline: None,
        }
    }

    /// What a write that returned `result` means: progress clears both deadlines (the
    /// answer is going out, so what comes in next is a new request); a write that has to
    /// wait fails once it has waited for the request timeout.
    fn after_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => {
                let after = self.timeouts.request;
                let stall = self.write_deadline.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + after))
                });
                match stall.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client stopped taking the answer",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready => {
                self.write_deadline = None;
                ready
            }
        }
    }

    fn arm(&mut self, after: Duration) {
        self.deadline = Some(Box::pin(tokio::time::sleep_until(Instant::now() + after)));
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !this.receiving {
                    this.receiving = true;
                    this.arm(this.timeouts.request);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.deadline.is_none() {
                    let after = if this.receiving {
                        this.timeouts.request
                    } else {
                        this.timeouts.idle
                    };
                    this.arm(after);
                }
                let deadline = this.deadline.as_mut().expect("armed above");
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        if this.receiving {
                            "request not received in time"
                        } else {
                            "idle connection"
                        },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            // The answer is going out: what comes in next is a new request.
            this.receiving = false;
            this.deadline = None;
        }
        this.after_write(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.receiving = false;
            this.deadline = None;
        }
        this.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.after_write(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn timeouts(request: Duration) -> ConnectionTimeouts {
        ConnectionTimeouts {
            idle: Duration::from_secs(60),
            request,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_takes_fails_after_the_request_timeout() {
        let (server, _client) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, timeouts(Duration::from_secs(30)));
        let started = Instant::now();
        let chunk = [b'x'; 64];
        let stalled = async {
            loop {
                if let Err(e) = io.write_all(&chunk).await {
                    break e;
                }
            }
        };
        let err = tokio::time::timeout(Duration::from_secs(120), stalled)
            .await
            .expect("the stalled write never failed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_taking_the_answer_is_not_cut_off() {
        let (server, mut client) = tokio::io::duplex(64);
        let mut io = TimedIo::new(server, timeouts(Duration::from_secs(30)));
        let reader = tokio::spawn(async move {
            let mut buf = [0; 64];
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let _ = client.read(&mut buf).await;
            }
        });
        // Each 64-byte write waits 20 s for the reader: under the timeout every time.
        for _ in 0..10 {
            io.write_all(&[b'x'; 64])
                .await
                .expect("a write that makes progress");
        }
        reader.abort();
    }
}
