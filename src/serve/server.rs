//! The HTTP server: accepts connections and serves the router, with limits that keep clients
//! which never finish a request from holding the scrape path hostage. Plain HTTP is HTTP/1.1
//! only, as exporter-toolkit serves it; over TLS (through a configuration that a reload can
//! swap) a connection speaks HTTP/2 when ALPN chose `h2`, which the web config offers unless
//! `http2: false`, and HTTP/1.1 otherwise.
//!
//! - The request head (the TLS handshake included, for the first request) must arrive within
//!   `header_read_timeout` of its first byte (of the accept, for the first request); a
//!   connection kept alive between requests may stay quiet for `idle_timeout`.
//! - At most `max_connections` connections are open; more are closed at once, so the process
//!   keeps file descriptors for the scrape, Graph and its own files.
//! - Accept errors (EMFILE) are logged once per burst and retried with a growing pause.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::config::ServerLimits;

/// The TLS configuration connections are accepted with; a reload stores a new one, which
/// applies to the connections accepted from then on.
pub type TlsConfig = Arc<ArcSwap<ServerConfig>>;

/// How long open connections get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Pauses after a failed accept, doubling from the first to the last.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// A burst of refused connections or failed accepts is logged once; a new line after this
/// much quiet.
const BURST_QUIET: Duration = Duration::from_secs(10);
/// Open connections beyond which, once most have closed, freed memory is handed back.
const TRIM_AFTER: usize = 512;

/// Open connections at most, whatever the fd limit: each costs some 25 KiB while it is open
/// (hyper's read and write buffers, the task), and a scrape target needs a handful.
const MAX_CONNECTIONS: usize = 1024;

/// The connection cap below the soft RLIMIT_NOFILE: a reserve stays for the listener, the
/// Graph client, the web config's files and /proc.
pub fn connection_cap() -> usize {
    let soft = crate::exposition::process::open_files_limit().unwrap_or(1024);
    let reserve = (soft / 4).clamp(16, 64);
    soft.saturating_sub(reserve).clamp(1, MAX_CONNECTIONS)
}

/// Middleware for --web.max-requests: a request beyond the limit gets 503 at once instead of
/// queueing, as promhttp's MaxRequestsInFlight does for node_exporter.
pub fn limit_in_flight<S>(router: Router<S>, max_requests: usize) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    if max_requests == 0 {
        return router;
    }
    let slots = Arc::new(Semaphore::new(max_requests));
    router.layer(axum::middleware::from_fn_with_state(slots, shed))
}

async fn shed(State(slots): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    match slots.try_acquire() {
        Ok(_slot) => next.run(request).await,
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many requests in flight (--web.max-requests); try again\n",
        )
            .into_response(),
    }
}

/// Serves `app` on `listener` until `cancel` fires; open connections then get
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsConfig>,
    limits: ServerLimits,
    cancel: CancellationToken,
) {
    let cap = limits.max_connections.unwrap_or_else(connection_cap);
    tracing::debug!(max_connections = cap, "serving");
    let slots = Arc::new(Semaphore::new(cap));
    let builders = Arc::new(Builders {
        http1: Builder::new(TokioExecutor::new()).http1_only(),
        http2: Builder::new(TokioExecutor::new()).http2_only(),
    });
    let limits = Arc::new(limits);
    let mut connections = JoinSet::new();
    let mut refused = Burst::default();
    let mut failed = Burst::default();
    let mut pause = ACCEPT_PAUSE.0;
    let mut peak = 0;
    let mut census = tokio::time::interval(BURST_QUIET);
    census.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = census.tick() => {
                let open = cap - slots.available_permits();
                if peak >= TRIM_AFTER && open <= peak / 4 {
                    release_freed_memory();
                    peak = open;
                }
                continue;
            }
            () = cancel.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => {
                pause = ACCEPT_PAUSE.0;
                failed.end("accepting connections again");
                stream
            }
            Err(e) => {
                if failed.hit() {
                    tracing::warn!(
                        open = cap - slots.available_permits(),
                        "cannot accept a connection: {e}; retrying, and logging no more of this burst"
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = cancel.cancelled() => break,
                }
                pause = (pause * 2).min(ACCEPT_PAUSE.1);
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if refused.hit() {
                tracing::warn!(
                    max_connections = cap,
                    "too many open connections: closing new ones until some end"
                );
            }
            drop(stream);
            continue;
        };
        refused.end("taking new connections again");
        peak = peak.max(cap - slots.available_permits());
        let tls = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.load_full()));
        let (builders, app, limits, cancel) = (
            Arc::clone(&builders),
            app.clone(),
            Arc::clone(&limits),
            cancel.clone(),
        );
        connections.spawn(async move {
            connection(stream, tls, &builders, app, &limits, &cancel).await;
            drop(slot);
        });
    }
    drop(listener);
    // Each connection closes itself within the grace; this bounds the wait for all of them.
    let all = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE * 2, all).await.is_err() {
        connections.shutdown().await;
    }
}

/// Each connection costs hyper some 16 KiB of buffers; glibc keeps what a burst of them freed
/// in its arenas unless asked to hand it back.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// One connection builder per protocol: which one serves a connection is settled before its
/// first byte is read (ALPN over TLS), never guessed from what the client sends.
struct Builders {
    http1: Builder<TokioExecutor>,
    http2: Builder<TokioExecutor>,
}

async fn connection(
    stream: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builders: &Builders,
    app: Router,
    limits: &ServerLimits,
    cancel: &CancellationToken,
) {
    // Responses go out in one write; without this, Nagle's algorithm holds back whatever a
    // write leaves over until the client's delayed ACK.
    let _ = stream.set_nodelay(true);
    let clock = Arc::new(Clock::new(limits));
    let Some(acceptor) = tls else {
        return drive(
            Timed::new(stream, &clock),
            clock,
            &builders.http1,
            app,
            cancel,
        )
        .await;
    };
    // The handshake counts against the first request head's time.
    let handshake = tokio::time::timeout_at(clock.deadline(), acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
            Err(_) => return tracing::debug!("TLS handshake not finished in time; closing"),
        },
        () = cancel.cancelled() => return,
    };
    let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
        clock.lock().multiplexed = true;
        &builders.http2
    } else {
        &builders.http1
    };
    drive(Timed::new(stream, &clock), clock, builder, app, cancel).await
}

async fn drive<S>(
    io: Timed<S>,
    clock: Arc<Clock>,
    builder: &Builder<TokioExecutor>,
    app: Router,
    cancel: &CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requests = Arc::clone(&clock);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = Busy::begin(&requests);
        let mut app = app.clone();
        async move {
            let response = app.call(request).await;
            drop(busy);
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let wake = closing.unwrap_or_else(|| clock.deadline());
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {
                if closing.is_some() {
                    return;
                }
                if let Some(what) = clock.expired(Instant::now()) {
                    return tracing::debug!("closing a connection: {what}");
                }
            }
            () = cancel.cancelled(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + SHUTDOWN_GRACE);
            }
        }
    }
}

/// Where a connection is in its exchange, and since when.
struct Clock {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    state: Mutex<ClockState>,
}

struct ClockState {
    phase: Phase,
    since: Instant,
    in_flight: usize,
    /// Bytes came in while a request was being answered: the next head has begun.
    read_while_busy: bool,
    /// HTTP/2: bytes between requests (PING, SETTINGS) do not start a request head.
    multiplexed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving a request head (or, first, the TLS handshake).
    Head,
    /// Answering.
    Busy,
    /// Kept alive, waiting for the next request.
    Idle,
}

impl Clock {
    fn new(limits: &ServerLimits) -> Clock {
        Clock {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            state: Mutex::new(ClockState {
                phase: Phase::Head,
                since: Instant::now(),
                in_flight: 0,
                read_while_busy: false,
                multiplexed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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
struct Busy(Arc<Clock>);

impl Busy {
    fn begin(clock: &Arc<Clock>) -> Busy {
        let mut state = clock.lock();
        state.in_flight += 1;
        state.phase = Phase::Busy;
        Busy(Arc::clone(clock))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
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
struct Timed<S> {
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

/// Logs the first of a burst of like events, and the burst's size once it is over.
#[derive(Default)]
struct Burst {
    started: Option<Instant>,
    last: Option<Instant>,
    count: u64,
}

impl Burst {
    /// Records one event; true when it starts a burst and should be logged.
    fn hit(&mut self) -> bool {
        let now = Instant::now();
        let quiet = self.last.is_none_or(|last| now - last >= BURST_QUIET);
        self.last = Some(now);
        if quiet {
            self.started = Some(now);
            self.count = 0;
        }
        self.count += 1;
        quiet
    }

    /// Ends a burst, if one is going on.
    fn end(&mut self, what: &str) {
        if let (Some(started), Some(_)) = (self.started.take(), self.last.take()) {
            tracing::info!(
                events = self.count,
                lasted = ?started.elapsed(),
                "{what}"
            );
        }
    }
}
