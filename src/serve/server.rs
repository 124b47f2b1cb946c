//! The HTTP server: accepts connections and serves the router, with limits that keep clients
//! which never finish a request from holding the scrape path hostage. Plain HTTP is HTTP/1.1
//! only, as exporter-toolkit serves it; over TLS (through a configuration that a reload can
//! swap) a connection speaks HTTP/2 when ALPN chose `h2`, which the web config offers unless
//! `http2: false`, and HTTP/1.1 otherwise.
//!
//! - The request head (the TLS handshake included, for the first request) must arrive within
//!   `header_read_timeout` of its first byte (of the accept, for the first request); a
//!   connection kept alive between requests may stay quiet for `idle_timeout`.
//! - At most `max_connections` connections are open. A new one beyond that makes room as nginx
//!   does when it runs out of connections: the longest idle keep-alive connection is closed,
//!   else the oldest that has not sent a complete request head; only when every connection is
//!   answering a request is the new one closed. So the process keeps file descriptors for the
//!   scrape, Graph and its own files, and idle or silent clients cannot lock a scrape out.
//! - A TLS connection takes the configuration current when its ClientHello arrives; one that
//!   a reload has since replaced serves no more requests, and its connection is closed once
//!   the request in flight is answered.
//! - Accept errors (EMFILE) are logged once per burst and retried with a growing pause.
//! - A scrape is answered before the router sees it when nothing but headers stands between
//!   the two ([`crate::serve::routes::Scrape`]): the router's routing, layers and boxing cost
//!   more than the rest of the request. hyper does all the HTTP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service;

use crate::config::ServerLimits;
use crate::serve::routes::Scrape;

/// The TLS configuration connections handshake with. A reload stores a new one: a connection
/// takes the one current when its ClientHello arrives, and a connection that handshook under
/// one since replaced is answered no more and closed after its in-flight request.
#[derive(Clone)]
pub struct TlsConfig(Arc<TlsRules>);

struct TlsRules {
    current: ArcSwap<ServerConfig>,
    /// Counts the stores; a connection remembers the count its handshake was made under.
    generation: AtomicU64,
    /// Wakes the accept loop to close the connections under a replaced configuration.
    replaced: Notify,
}

impl TlsConfig {
    pub fn new(config: Arc<ServerConfig>) -> TlsConfig {
        TlsConfig(Arc::new(TlsRules {
            current: ArcSwap::new(config),
            generation: AtomicU64::new(0),
            replaced: Notify::new(),
        }))
    }

    /// Installs `config` for every ClientHello from now on. When this returns, no request is
    /// answered any more on a connection that handshook under an earlier configuration; those
    /// connections close once their in-flight request is answered.
    pub fn store(&self, config: Arc<ServerConfig>) {
        self.0.current.store(config);
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        self.0.replaced.notify_one();
    }

    /// The configuration a ClientHello arriving now gets.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.0.current.load_full()
    }

    /// The configuration for a ClientHello arriving now, with its generation. The generation
    /// is read first: a store between the two reads makes the connection look older than its
    /// configuration (so it is closed needlessly), never newer.
    fn for_client_hello(&self) -> (u64, Arc<ServerConfig>) {
        let generation = self.0.generation.load(Ordering::SeqCst);
        (generation, self.0.current.load_full())
    }

    fn is_current(&self, generation: u64) -> bool {
        self.0.generation.load(Ordering::SeqCst) == generation
    }
}

/// How long open connections get to finish after shutdown begins, and an idle connection
/// closed to make room or after a reload (HTTP/2: the GOAWAY exchange).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Pauses after a failed accept, doubling from the first to the last.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// A burst of refused connections or failed accepts is logged once; a new line after this
/// much quiet.
const BURST_QUIET: Duration = Duration::from_secs(10);
/// Open connections beyond which, once most have closed, freed memory is handed back.
const TRIM_AFTER: usize = 512;
/// How long a new connection waits for the one closed to make room for it. That one closes
/// at its next poll unless a request began on it meanwhile, which it then answers first:
/// after this, the next one in line is asked too.
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// Open connections at most, whatever the fd limit: each costs some 25 KiB while it is open
/// (hyper's read and write buffers, the task), and a scrape target needs a handful.
const MAX_CONNECTIONS: usize = 1024;

/// The connection cap below the soft RLIMIT_NOFILE: a reserve stays for the listener, the
/// Graph client, the web config's files and /proc.
pub(crate) fn connection_cap() -> usize {
    let soft = crate::exposition::process::open_files_limit().unwrap_or(1024);
    let reserve = (soft / 4).clamp(16, 64);
    soft.saturating_sub(reserve).clamp(1, MAX_CONNECTIONS)
}

/// --web.max-requests: requests beyond the limit get 503 at once instead of queueing, as
/// promhttp's MaxRequestsInFlight does for node_exporter. Nothing ever waits for a slot, so a
/// count does what a semaphore would, with one atomic operation each way. Clones share it.
#[derive(Clone, Default)]
pub(crate) struct InFlight(Option<Arc<Slots>>);

struct Slots {
    max: usize,
    taken: AtomicUsize,
}

/// A slot under [`InFlight`], given back when dropped.
pub(crate) struct Slot<'a>(Option<&'a Slots>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(slots) = self.0 {
            slots.taken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl InFlight {
    /// `max_requests` slots; 0 means no limit.
    pub(crate) fn new(max_requests: usize) -> InFlight {
        InFlight((max_requests > 0).then(|| {
            Arc::new(Slots {
                max: max_requests,
                taken: AtomicUsize::new(0),
            })
        }))
    }

    /// A slot, held until dropped; None when every slot is taken.
    pub(crate) fn try_begin(&self) -> Option<Slot<'_>> {
        let Some(slots) = &self.0 else {
            return Some(Slot(None));
        };
        // Taken first and given back when there was none: no check-then-take race between
        // two requests.
        if slots.taken.fetch_add(1, Ordering::AcqRel) < slots.max {
            Some(Slot(Some(slots)))
        } else {
            slots.taken.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }

    /// `router`, whose requests beyond the limit get 503.
    pub(crate) fn layer<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        if self.0.is_none() {
            return router;
        }
        router.layer(axum::middleware::from_fn_with_state(self.clone(), shed))
    }
}

/// Middleware for --web.max-requests over `router`; see [`InFlight`].
pub fn limit_in_flight<S>(router: Router<S>, max_requests: usize) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    InFlight::new(max_requests).layer(router)
}

async fn shed(State(in_flight): State<InFlight>, request: Request, next: Next) -> Response {
    match in_flight.try_begin() {
        Some(_slot) => next.run(request).await,
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many requests in flight (--web.max-requests); try again\n",
        )
            .into_response(),
    }
}

/// What connections are answered with: the router, and the scrape, which answers what it
/// can before the router sees it.
#[derive(Clone)]
pub struct App {
    router: Router,
    scrape: Option<Arc<Scrape>>,
}

impl App {
    pub fn new(router: Router, scrape: Option<Arc<Scrape>>) -> App {
        App { router, scrape }
    }

    /// The router alone, without the scrape's shortcut: it answers everything, the scrape
    /// as the shortcut does.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The response to `request` when the scrape has it at once; else `request`, for the
    /// router.
    #[allow(
        clippy::result_large_err,
        reason = "the request goes back by value: boxing it would allocate for every request the router answers"
    )]
    pub fn shortcut<B>(
        &self,
        request: hyper::Request<B>,
    ) -> Result<hyper::Response<Full<Bytes>>, hyper::Request<B>> {
        match &self.scrape {
            Some(scrape) => scrape.answer(request),
            None => Err(request),
        }
    }
}

impl From<Router> for App {
    fn from(router: Router) -> App {
        App::new(router, None)
    }
}

/// Serves `app` on `listener` until `cancel` fires; open connections then get
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    app: impl Into<App>,
    tls: Option<TlsConfig>,
    limits: ServerLimits,
    cancel: CancellationToken,
) {
    let app = app.into();
    let cap = limits.max_connections.unwrap_or_else(connection_cap);
    tracing::debug!(max_connections = cap, "serving");
    let slots = Arc::new(Semaphore::new(cap));
    let registry = Arc::new(Registry::default());
    let builders = Arc::new(Builders {
        http1: http1::Builder::new(),
        http2: http2::Builder::new(TokioExecutor::new()),
    });
    let mut connections = JoinSet::new();
    let mut next_id: u64 = 0;
    let mut refused = Burst::default();
    let mut evicting = Burst::default();
    let mut failed = Burst::default();
    let mut pause = ACCEPT_PAUSE.0;
    let mut peak = 0;
    let mut census = tokio::time::interval(BURST_QUIET);
    census.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = census.tick() => {
                // Ended by quiet only: a slot that frees up between evictions does not end
                // the flood, so that it is logged once.
                evicting.end_if_quiet("no connection closed to make room for a while");
                refused.end_if_quiet("taking new connections again");
                failed.end_if_quiet("accepting connections again");
                let open = cap - slots.available_permits();
                if peak >= TRIM_AFTER && open <= peak / 4 {
                    release_freed_memory();
                    peak = open;
                }
                continue;
            }
            () = replaced(tls.as_ref()) => {
                if let Some(tls) = &tls {
                    registry.retire_replaced(tls);
                }
                continue;
            }
            () = cancel.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => {
                pause = ACCEPT_PAUSE.0;
                stream
            }
            Err(e) => {
                if failed.hit() {
                    tracing::warn!(
                        open = cap - slots.available_permits(),
                        "cannot accept a connection: {e}; retrying, and logging no more of this burst"
                    );
                }
                // Out of file descriptors below the cap (the process's own files and sockets
                // took more than the reserve): a connection makes room, as at the cap.
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    let room = make_room(&registry, &mut evicting, cap);
                    tokio::select! {
                        made = room => if made { continue },
                        () = cancel.cancelled() => break,
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = cancel.cancelled() => break,
                }
                pause = (pause * 2).min(ACCEPT_PAUSE.1);
                continue;
            }
        };
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                let room = async {
                    if !make_room(&registry, &mut evicting, cap).await {
                        return None;
                    }
                    // Given back just after the connection left the registry.
                    Arc::clone(&slots).acquire_owned().await.ok()
                };
                tokio::select! {
                    slot = room => slot,
                    () = cancel.cancelled() => break,
                }
            }
        };
        let Some(slot) = slot else {
            if refused.hit() {
                tracing::warn!(
                    max_connections = cap,
                    "too many open connections: closing new ones until some end"
                );
            }
            drop(stream);
            continue;
        };
        peak = peak.max(cap - slots.available_permits());
        let clock = Arc::new(Clock::new(&limits, tls.clone()));
        let open = registry.add(next_id, &clock, slot);
        next_id += 1;
        let (builders, app) = (Arc::clone(&builders), app.clone());
        connections.spawn(async move {
            connection(stream, clock, &builders, app).await;
            drop(open);
        });
    }
    drop(listener);
    registry.close_all();
    // Each connection closes itself within the grace; this bounds the wait for all of them.
    let all = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE * 2, all).await.is_err() {
        connections.shutdown().await;
    }
}

/// Returns when a reload has replaced the TLS configuration.
async fn replaced(tls: Option<&TlsConfig>) {
    match tls {
        Some(tls) => tls.0.replaced.notified().await,
        None => std::future::pending().await,
    }
}

/// Makes room for a new connection, as nginx does when it runs out of connections
/// (ngx_drain_connections): closes connections on which no request is being answered until
/// one has closed. False when every open connection is answering a request.
async fn make_room(registry: &Registry, evicting: &mut Burst, cap: usize) -> bool {
    loop {
        let closed = registry.closed.notified();
        tokio::pin!(closed);
        // Listening before asking, so that a connection closing at once is not missed.
        closed.as_mut().enable();
        if !registry.evict_one() {
            return false;
        }
        if evicting.hit() {
            tracing::warn!(
                max_connections = cap,
                "too many open connections: closing the longest idle ones, then those without a complete request head, to make room for new ones; logging no more of this burst"
            );
        }
        if tokio::time::timeout(EVICTION_WAIT, closed).await.is_ok() {
            return true;
        }
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
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

/// The open connections, by the id the accept loop gave them: touched on accept and close,
/// and when connections are to be closed (room, reload, shutdown), never per request.
#[derive(Default)]
struct Registry {
    open: Mutex<HashMap<u64, Arc<Clock>>>,
    /// Wakes whoever waits for room each time a connection has closed.
    closed: Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Clock>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a connection until the returned guard is dropped, which then frees `slot`.
    fn add(self: &Arc<Self>, id: u64, clock: &Arc<Clock>, slot: OwnedSemaphorePermit) -> Open {
        self.lock().insert(id, Arc::clone(clock));
        Open {
            registry: Arc::clone(self),
            id,
            _slot: slot,
        }
    }

    /// Asks the longest idle connection to close, else the one that has waited longest for a
    /// complete request head; false when every connection is answering a request (or already
    /// closing).
    fn evict_one(&self) -> bool {
        let open = self.lock();
        let victim = open
            .values()
            .filter_map(|clock| {
                let state = clock.lock();
                let rank = match (state.closing, state.phase) {
                    (None, Phase::Idle) => 0,
                    (None, Phase::Head) => 1,
                    _ => return None,
                };
                Some(((rank, state.since), clock))
            })
            .min_by_key(|(order, _)| *order);
        victim.is_some_and(|(_, clock)| clock.ask_to_close(Closing::Evicted, |_| true))
    }

    /// Asks every TLS connection whose handshake a reload has made stale to close.
    fn retire_replaced(&self, tls: &TlsConfig) {
        for clock in self.lock().values() {
            clock.ask_to_close(Closing::Retired, |state| {
                state.generation.is_some_and(|g| !tls.is_current(g))
            });
        }
    }

    fn close_all(&self) {
        for clock in self.lock().values() {
            clock.ask_to_close(Closing::Shutdown, |_| true);
        }
    }
}

/// An open connection's place in the registry and its slot under the cap.
struct Open {
    registry: Arc<Registry>,
    id: u64,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        // The slot is given back right after this, the socket was closed before.
        self.registry.lock().remove(&self.id);
        self.registry.closed.notify_waiters();
    }
}

async fn connection(stream: TcpStream, clock: Arc<Clock>, builders: &Builders, app: App) {
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
fn under_replaced_rules() -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        "The web configuration this connection was opened under has been reloaded; reconnect\n",
    )
        .into_response()
}

/// The body of a response: the scrape's bytes, or whatever the router answered.
type Reply = Either<Full<Bytes>, axum::body::Body>;

/// The service for a connection's requests: each marks the connection busy while it is
/// answered, by the scrape when it can, else by the router.
fn requests(
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
trait Connection: Future<Output = hyper::Result<()>> {
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

async fn drive(conn: impl Connection, clock: &Clock) {
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
enum Closing {
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
struct Clock {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// The TLS configuration it is served under; None for plain HTTP.
    tls: Option<TlsConfig>,
    /// Wakes the connection once `closing` is set.
    close: Notify,
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
    /// Set once, when the connection is asked to close.
    closing: Option<Closing>,
    /// The TLS configuration generation its handshake was made under.
    generation: Option<u64>,
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
    fn new(limits: &ServerLimits, tls: Option<TlsConfig>) -> Clock {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
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
    fn ask_to_close(&self, why: Closing, when: impl FnOnce(&ClockState) -> bool) -> bool {
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
struct Busy {
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

    /// Ends a burst that has seen no event for [`BURST_QUIET`].
    fn end_if_quiet(&mut self, what: &str) {
        if self.last.is_some_and(|last| last.elapsed() >= BURST_QUIET) {
            self.end(what);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_slots_and_gets_them_back() {
        let in_flight = InFlight::new(2);
        let other = in_flight.clone();
        let first = in_flight.try_begin().unwrap();
        let second = other.try_begin().unwrap();
        assert!(
            in_flight.try_begin().is_none(),
            "clones share the two slots"
        );
        assert!(other.try_begin().is_none());
        drop(first);
        let third = other.try_begin().expect("a slot given back is free again");
        drop((second, third));
        // The refusals above took nothing: both slots are free.
        let both: Vec<_> = (0..3).filter_map(|_| in_flight.try_begin()).collect();
        assert_eq!(both.len(), 2);
        let unlimited = InFlight::new(0);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.try_begin()).collect();
        assert_eq!(held.len(), 1000);
    }
}
