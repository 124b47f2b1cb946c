//! One connection: the TLS handshake under the rules of its ClientHello, hyper's HTTP/1.1 or
//! HTTP/2 over it, and the clock that holds it to the head deadline, the idle timeout, and to
//! being closed for room, after a TLS reload, or at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_service::Service;

use crate::config::ServerLimits;

use super::server::*;

pub(super) async fn connection(
    stream: TcpStream,
    clock: Arc<Clock>,
    builders: &Builders,
    app: App,
) {
    // Responses go out in one write; without this, Nagle's algorithm holds back whatever a
    // write leaves over until the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let Some(tls) = clock.tls.clone() else {
        let io = TokioIo::new(Timed::new(stream, &clock));
        let service = requests(&clock, app);
        return drive(builders.http1.serve_connection(io, service), &clock).await;
    };
    // The handshake counts against the first request head's time. Its configuration is the
    // one current when the ClientHello arrives, however long after the accept that is.
    let handshake = async {
        let hello =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await?;
        hello.into_stream(clock.rules_for_handshake(&tls)).await
    };
    let stream = tokio::select! {
        done = tokio::time::timeout_at(clock.deadline(), handshake) => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!("TLS handshake not finished in time; closing"),
        },
        () = clock.close.notified() => return,
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(Timed::new(stream, &clock));
    let service = requests(&clock, app);
    if h2 {
        clock.lock().multiplexed = true;
        drive(builders.http2.serve_connection(io, service), &clock).await
    } else {
        drive(builders.http1.serve_connection(io, service), &clock).await
    }
}

/// The answer to a request on a connection whose TLS handshake was made under a web
/// configuration that a reload has replaced since: nothing is served under the old rules.
pub(super) fn under_replaced_rules() -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        "The web configuration this connection was opened under has been reloaded; reconnect\n",
    )
        .into_response()
}

/// The body of a response: the scrape's bytes, or whatever the router answered.
pub(super) type Reply = Either<Full<Bytes>, axum::body::Body>;

/// The service for a connection's requests: each marks the connection busy while it is
/// answered, by the scrape when it can, else by the router.
pub(super) fn requests(
    clock: &Arc<Clock>,
    app: App,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Reply>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<Reply>, Infallible>> + Send + 'static,
> + Clone {
    let clock = Arc::clone(clock);
    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::begin(&clock);
        // The answer, when there is one at once; else the request and the router to ask.
        // An answered request is dropped here, before hyper reads on: the request holds on
        // to hyper's read buffer, which would otherwise be allocated anew for that read.
        let answer = if busy.under_replaced_rules {
            Ok(under_replaced_rules().map(Either::Right))
        } else {
            app.shortcut(request)
                .map(|response| response.map(Either::Left))
                .map_err(|request| (request, app.router.clone()))
        };
        async move {
            let response = match answer {
                Ok(response) => response,
                Err((request, mut router)) => {
                    let response = router.call(request).await;
                    response
                        .unwrap_or_else(|never| match never {})
                        .map(Either::Right)
                }
            };
            drop(busy);
            Ok(response)
        }
    })
}

/// A connection hyper serves, HTTP/1.1 or HTTP/2.
pub(super) trait Connection: Future<Output = hyper::Result<()>> {
    /// HTTP/1.1: no more requests after the one in flight; HTTP/2: GOAWAY.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Connection for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = Reply>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S> Connection for http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = Reply>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, Reply>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self);
    }
}

pub(super) async fn drive(conn: impl Connection, clock: &Clock) {
    tokio::pin!(conn);
    // Once asked to close, hyper is told to finish (HTTP/1.1: after the response in flight;
    // HTTP/2: GOAWAY), and the connection is dropped at `hard` if it has not finished by then.
    let mut finishing = false;
    let mut hard: Option<Instant> = None;
    loop {
        let (closing, phase) = clock.closing();
        if let Some(why) = closing {
            if !finishing {
                // Nothing is in flight before a complete head: no reason to wait for one.
                if phase == Phase::Head && why != Closing::Shutdown {
                    return tracing::debug!("closing a connection: {}", why.reason());
                }
                conn.as_mut().graceful_shutdown();
                finishing = true;
            }
            // A request being answered is let finish; the grace starts once it has.
            if hard.is_none() && (why == Closing::Shutdown || phase != Phase::Busy) {
                hard = Some(Instant::now() + SHUTDOWN_GRACE);
            }
        }
        let wake = hard.unwrap_or_else(|| clock.deadline());
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if hard.is_some_and(|at| now >= at) {
                    return tracing::debug!("closing a connection that did not finish in time");
                }
                if let Some(what) = clock.expired(now) {
                    return tracing::debug!("closing a connection: {what}");
                }
            }
            () = clock.close.notified(), if !finishing => {}
        }
    }
}

/// Why a connection is asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Closing {
    Shutdown,
    /// To make room for a new connection.
    Evicted,
    /// Its TLS handshake was made under a configuration a reload has replaced.
    Retired,
}

impl Closing {
    fn reason(self) -> &'static str {
        match self {
            Closing::Shutdown => "shutting down",
            Closing::Evicted => "too many open connections, and this one the first to go",
            Closing::Retired => "opened under a web configuration that a reload replaced",
        }
    }
}

/// Where a connection is in its exchange, and since when.
pub(super) struct Clock {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// The TLS configuration it is served under; None for plain HTTP.
    tls: Option<TlsConfig>,
    /// Wakes the connection once `closing` is set.
    close: Notify,
    state: Mutex<ClockState>,
}

pub(super) struct ClockState {
    pub(super) phase: Phase,
    pub(super) since: Instant,
    in_flight: usize,
    /// Bytes came in while a request was being answered: the next head has begun.
    read_while_busy: bool,
    /// HTTP/2: bytes between requests (PING, SETTINGS) do not start a request head.
    multiplexed: bool,
    /// Set once, when the connection is asked to close.
    pub(super) closing: Option<Closing>,
    /// The TLS configuration generation its handshake was made under.
    pub(super) generation: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Receiving a request head (or, first, the TLS handshake).
    Head,
    /// Answering.
    Busy,
    /// Kept alive, waiting for the next request.
    Idle,
}

impl Clock {
    pub(super) fn new(limits: &ServerLimits, tls: Option<TlsConfig>) -> Clock {
        Clock {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            tls,
            close: Notify::new(),
            state: Mutex::new(ClockState {
                phase: Phase::Head,
                since: Instant::now(),
                in_flight: 0,
                read_while_busy: false,
                multiplexed: false,
                closing: None,
                generation: None,
            }),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The TLS configuration for the ClientHello that just came. Taken and recorded under the
    /// lock that [`Registry::retire_replaced`] reads it under: a reload either sees this
    /// connection's generation, or happened before it was read.
    fn rules_for_handshake(&self, tls: &TlsConfig) -> Arc<ServerConfig> {
        let mut state = self.lock();
        let (generation, config) = tls.for_client_hello();
        state.generation = Some(generation);
        config
    }

    /// Asks the connection to close for `why` when `when` holds of it and it has not been
    /// asked before; true when it was asked now.
    pub(super) fn ask_to_close(
        &self,
        why: Closing,
        when: impl FnOnce(&ClockState) -> bool,
    ) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() || !when(&state) {
            return false;
        }
        state.closing = Some(why);
        drop(state);
        self.close.notify_one();
        true
    }

    fn closing(&self) -> (Option<Closing>, Phase) {
        let state = self.lock();
        (state.closing, state.phase)
    }

    /// When the connection's time is up, or when to look again. An idle connection is looked
    /// at at least once per header read timeout: a head that began since then is caught by
    /// that look, which then sleeps until the head's own deadline. So a request costs the
    /// watchdog nothing (no wake-up, no timer reset), and the head deadline stays exact.
    fn deadline(&self) -> Instant {
        let state = self.lock();
        match state.phase {
            Phase::Head => state.since + self.header_read_timeout,
            Phase::Idle => {
                (state.since + self.idle_timeout).min(Instant::now() + self.header_read_timeout)
            }
            Phase::Busy => Instant::now() + self.header_read_timeout,
        }
    }

    /// Why the connection is to be closed at `now`, if it is.
    fn expired(&self, now: Instant) -> Option<&'static str> {
        let phase = self.lock().phase;
        (phase != Phase::Busy && now >= self.deadline()).then_some(match phase {
            Phase::Idle => "idle for longer than the keep-alive timeout",
            _ => "no complete request head within the header read timeout",
        })
    }

    fn on_read(&self) {
        let mut state = self.lock();
        match state.phase {
            Phase::Idle if !state.multiplexed => {
                state.phase = Phase::Head;
                state.since = Instant::now();
            }
            Phase::Busy => state.read_while_busy = true,
            _ => {}
        }
    }
}

/// A request being answered; the connection is idle again once none is.
pub(super) struct Busy {
    clock: Arc<Clock>,
    /// The connection's TLS configuration has been replaced: the request is refused.
    under_replaced_rules: bool,
}

impl Busy {
    fn begin(clock: &Arc<Clock>) -> Busy {
        let mut state = clock.lock();
        state.in_flight += 1;
        state.phase = Phase::Busy;
        // One atomic load per request over TLS; nothing for plain HTTP.
        let under_replaced_rules = state.closing == Some(Closing::Retired)
            || match (&clock.tls, state.generation) {
                (Some(tls), Some(generation)) => !tls.is_current(generation),
                _ => false,
            };
        Busy {
            clock: Arc::clone(clock),
            under_replaced_rules,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.clock.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.in_flight == 0 {
            let next_head = state.read_while_busy && !state.multiplexed;
            state.phase = if next_head { Phase::Head } else { Phase::Idle };
            state.since = Instant::now();
            state.read_while_busy = false;
        }
    }
}

/// A stream that tells its clock when bytes arrive.
pub(super) struct Timed<S> {
    inner: S,
    clock: Arc<Clock>,
}

impl<S> Timed<S> {
    fn new(inner: S, clock: &Arc<Clock>) -> Timed<S> {
        Timed {
            inner,
            clock: Arc::clone(clock),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.on_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    /// Forwarded, so that hyper hands head and body over in one vectored write, which TLS
    /// seals into one record.
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
