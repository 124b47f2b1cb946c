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
use http_body_util::Full;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{connection, Clock, Closing, Phase};

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
    pub(super) fn for_client_hello(&self) -> (u64, Arc<ServerConfig>) {
        let generation = self.0.generation.load(Ordering::SeqCst);
        (generation, self.0.current.load_full())
    }

    pub(super) fn is_current(&self, generation: u64) -> bool {
        self.0.generation.load(Ordering::SeqCst) == generation
    }
}

/// How long open connections get to finish after shutdown begins, and an idle connection
/// closed to make room or after a reload (HTTP/2: the GOAWAY exchange).
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
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
    pub(super) router: Router,
    pub(super) scrape: Option<Arc<Scrape>>,
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
pub(super) struct Builders {
    pub(super) http1: http1::Builder,
    pub(super) http2: http2::Builder<TokioExecutor>,
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
