//! Connection limits for `lanyard serve`: how many connections are open at once, and how long a
//! connection may take to send a request, sit idle, or stall a body.
//!
//! One acceptor ([`Guard`]) wraps the TLS (or, behind a proxy, plain TCP) acceptor. It takes a
//! slot from the connection cap before the handshake, wraps the stream so a connection that
//! overruns its deadline fails its next read or write (and hyper closes it), and wraps the
//! connection's service so the deadlines know when a request is in flight and so every request
//! body has a progress timeout. The rules, the same on HTTP/1.1 and HTTP/2:
//!
//! - **cap**: at most `max_connections` connections (handshakes included); one more is closed at
//!   once, so a flood of connections can exhaust neither file descriptors nor memory;
//! - **header read**: a new connection must deliver a complete request head (its first request)
//!   within `header_read` of being accepted, the TLS handshake included; on an HTTP/1.1
//!   connection with no request in flight, the next request must be complete within
//!   `header_read` of its first byte (HTTP/2 clients send control frames between requests, so
//!   there the idle rule alone bounds a kept-alive connection);
//! - **idle**: a connection with no request in flight is closed `idle` after its last request
//!   ended or its last byte was written: bytes a client sends do not keep it open, requests do;
//! - **body read**: a request body that delivers nothing for `body_read` fails (the request is
//!   answered 400 and the connection closed).
//!
//! While a request is in flight only the body rule applies: handlers are short, and a response
//! the client does not read stalls the connection's writes, which the idle rule then ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower::Service;
use tower_http::timeout::TimeoutBody;

/// The limits, resolved from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub body_read: Duration,
    pub max_connections: usize,
}

impl Limits {
    pub const DEFAULT_HEADER_READ_SECS: u64 = 10;
    pub const DEFAULT_IDLE_SECS: u64 = 60;
    pub const DEFAULT_BODY_READ_SECS: u64 = 30;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
}

/// Wraps an acceptor (`A`) with the connection limits. Cheap to clone: every clone shares the
/// cap.
#[derive(Clone)]
pub struct Guard<A> {
    inner: A,
    limits: Limits,
    slots: Arc<Semaphore>,
    refused: Arc<AtomicU64>,
}

impl<A> Guard<A> {
    pub fn new(inner: A, limits: Limits) -> Self {
        Self {
            inner,
            limits,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            refused: Arc::new(AtomicU64::new(0)),
        }
    }
}

type Accepted<T, S> = Pin<Box<dyn Future<Output = io::Result<(T, S)>> + Send>>;

impl<A, I, S> Accept<I, S> for Guard<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: AsyncRead + AsyncWrite + Negotiated + Unpin + Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = Guarded<A::Stream>;
    type Service = Tracked<A::Service>;
    type Future = Accepted<Self::Stream, Self::Service>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            // Counted, and logged once per 1,000 so a flood cannot flood the log too.
            let n = self.refused.fetch_add(1, Ordering::Relaxed);
            if n % 1000 == 0 {
                tracing::warn!(
                    max_connections = self.limits.max_connections,
                    refused_so_far = n + 1,
                    "connection cap reached: closing new connections until others end"
                );
            }
            drop((stream, service));
            return Box::pin(std::future::ready(Err(io::Error::other(
                "connection cap reached",
            ))));
        };
        let accepted_at = Instant::now();
        let handshake = self.inner.accept(stream, service);
        let limits = self.limits;
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            let activity = Arc::new(Activity::new(accepted_at, !stream.http2()));
            Ok((
                Guarded {
                    inner: stream,
                    activity: Arc::clone(&activity),
                    limits,
                    sleep: Box::pin(tokio::time::sleep_until(accepted_at + limits.header_read)),
                    armed: accepted_at + limits.header_read,
                    _slot: slot,
                },
                Tracked {
                    inner: service,
                    activity,
                    body_read: limits.body_read,
                },
            ))
        })
    }
}

/// Whether a connection negotiated HTTP/2.
pub trait Negotiated {
    fn http2(&self) -> bool;
}

/// Plain TCP (behind a proxy): HTTP/1.1.
impl Negotiated for tokio::net::TcpStream {
    fn http2(&self) -> bool {
        false
    }
}

/// TLS: as negotiated by ALPN.
impl<T> Negotiated for tokio_rustls::server::TlsStream<T> {
    fn http2(&self) -> bool {
        self.get_ref().1.alpn_protocol() == Some(b"h2")
    }
}

/// What the deadlines of one connection depend on.
struct Activity {
    state: Mutex<State>,
    /// Whether a byte read with no request in flight starts the header-read clock (HTTP/1.1).
    head_clock_on_read: bool,
}

struct State {
    /// Requests whose response future has not finished.
    in_flight: usize,
    /// When the connection was accepted, its last request ended, or it last wrote a byte.
    idle_since: Instant,
    /// When the request being received (with none in flight) started: the connection's
    /// acceptance for its first request, else the first byte read after the last one ended.
    head_started: Option<Instant>,
}

impl Activity {
    fn new(accepted_at: Instant, head_clock_on_read: bool) -> Self {
        Self {
            state: Mutex::new(State {
                in_flight: 0,
                idle_since: accepted_at,
                head_started: Some(accepted_at),
            }),
            head_clock_on_read,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data: one poisoned update leaves nothing inconsistent to fear.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the connection must be closed if it is still waiting for I/O; `None` while a
    /// request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let s = self.state();
        if s.in_flight > 0 {
            return None;
        }
        let idle = s.idle_since + limits.idle;
        Some(match s.head_started {
            Some(t) => idle.min(t + limits.header_read),
            None => idle,
        })
    }

    fn read_some(&self, now: Instant) {
        let mut s = self.state();
        if self.head_clock_on_read && s.in_flight == 0 && s.head_started.is_none() {
            s.head_started = Some(now);
        }
    }

    fn wrote_some(&self, now: Instant) {
        let mut s = self.state();
        if s.in_flight == 0 {
            s.idle_since = now;
        }
    }

    fn begin(&self) {
        let mut s = self.state();
        s.in_flight += 1;
        s.head_started = None;
    }

    fn end(&self, now: Instant) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        s.idle_since = now;
    }
}

/// One request in flight; its end (the response future finished or dropped) makes the
/// connection idle again once none is left.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.begin();
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end(Instant::now());
    }
}

/// A connection's stream: reads and writes that wait past the connection's deadline fail with
/// [`io::ErrorKind::TimedOut`]. Holds the connection's slot under the cap until dropped.
pub struct Guarded<T> {
    inner: T,
    activity: Arc<Activity>,
    limits: Limits,
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
    _slot: OwnedSemaphorePermit,
}

impl<T> Guarded<T> {
    /// Called when the inner stream is not ready: fails once the deadline has passed, else
    /// arranges to be woken at it.
    fn pending(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = self.activity.deadline(&self.limits) else {
            return Ok(());
        };
        if deadline != self.armed {
            self.sleep.as_mut().reset(deadline);
            self.armed = deadline;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: no request in time",
            )),
            Poll::Pending => Ok(()),
        }
    }

    fn wait<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match self.pending(cx) {
            Ok(()) => Poll::Pending,
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// What a write returned: bytes written count as activity; a write that cannot go on
    /// waits under the connection's deadline.
    fn after_write(
        &mut self,
        written: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.activity.wrote_some(Instant::now());
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.wait(cx),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.activity.read_some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.wait(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(written, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(written, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.wait(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.wait(cx),
            ready => ready,
        }
    }
}

/// A connection's service: marks requests in flight for the deadlines and gives every request
/// body a progress timeout.
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    body_read: Duration,
}

impl<S, B> Service<Request<B>> for Tracked<S>
where
    S: Service<Request<TimeoutBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Responding<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity);
        let body_read = self.body_read;
        let req = req.map(|body| TimeoutBody::new(body_read, body));
        Responding {
            inner: Box::pin(self.inner.call(req)),
            _in_flight: in_flight,
        }
    }
}

/// A response being produced; the request counts as in flight until this is finished or
/// dropped.
pub struct Responding<F> {
    inner: Pin<Box<F>>,
    _in_flight: InFlight,
}

impl<F: Future> Future for Responding<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The soft limit on open files of this process, where the platform says (Linux).
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// File descriptors kept free beside the connections: the database pool, log and data files,
/// outgoing connections to APNs, Apple Business Manager and identity providers.
pub const RESERVED_FILES: u64 = 256;

/// The connection cap to use: the configured one, lowered (with a warning) so connections
/// cannot use up the process's file descriptors, which would stall everything else.
pub fn effective_max_connections(configured: usize, open_files: Option<u64>) -> usize {
    let Some(limit) = open_files else {
        return configured;
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_FILES))
        .unwrap_or(usize::MAX)
        .max(1);
    if configured > room {
        tracing::warn!(
            configured,
            open_file_limit = limit,
            using = room,
            "--max-connections is above what the open-file limit leaves room for; raise the \
             limit (ulimit -n, systemd LimitNOFILE=) to allow more"
        );
        room
    } else {
        configured
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LIMITS: Limits = Limits {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        body_read: Duration::from_secs(30),
        max_connections: 8,
    };

    #[test]
    fn deadlines_follow_requests_not_bytes() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let a = Activity::new(t0, true);
        // A new connection has header_read for its first request, whatever it sends.
        assert_eq!(a.deadline(&LIMITS), Some(at(10)));
        a.read_some(at(3));
        assert_eq!(a.deadline(&LIMITS), Some(at(10)));
        // In flight: no connection deadline, whatever moves.
        a.begin();
        a.read_some(at(4));
        a.wrote_some(at(5));
        assert_eq!(a.deadline(&LIMITS), None);
        a.begin();
        a.end(at(50));
        assert_eq!(a.deadline(&LIMITS), None);
        a.end(at(100));
        // Idle: closed `idle` after the last request ended; writing extends it, reading does
        // not.
        assert_eq!(a.deadline(&LIMITS), Some(at(160)));
        a.wrote_some(at(105));
        assert_eq!(a.deadline(&LIMITS), Some(at(165)));
        // The next request's first byte starts its header_read clock; later bytes do not move it.
        a.read_some(at(110));
        a.read_some(at(111));
        assert_eq!(a.deadline(&LIMITS), Some(at(120)));
        // Near the end of idle, header_read cannot extend past idle.
        a.begin();
        a.end(at(200));
        a.read_some(at(255));
        assert_eq!(a.deadline(&LIMITS), Some(at(260)));

        // HTTP/2: the first request has header_read; later, frames between requests (window
        // updates, pings) do not start a clock, and idle alone applies.
        let h2 = Activity::new(t0, false);
        h2.read_some(at(1));
        assert_eq!(h2.deadline(&LIMITS), Some(at(10)));
        h2.begin();
        h2.end(at(20));
        h2.read_some(at(21));
        assert_eq!(h2.deadline(&LIMITS), Some(at(80)));
    }

    #[test]
    fn the_cap_leaves_room_for_other_files() {
        assert_eq!(effective_max_connections(4096, None), 4096);
        assert_eq!(effective_max_connections(4096, Some(100_000)), 4096);
        assert_eq!(effective_max_connections(4096, Some(1024)), 768);
        assert_eq!(effective_max_connections(4096, Some(10)), 1);
    }
}
