//! The running tenants: started, kept or stopped as the tenant list changes on reload.
//!
//! Each tenant has its own token cache, its own refresh tasks (one per period) and its own
//! cancellation token, a child of the process's, so that stopping one tenant leaves the others
//! untouched and shutdown stops them all. Only the in-flight bound is shared.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::tenants::{self, Tenant};
use crate::config::{Shard, TenantDefaults};
use crate::exposition::publisher::Publisher;
use crate::graph::GraphClient;
use crate::http::RetryPolicy;
use crate::http::{Limits, RequestCounts};
use crate::refresh::refresher::Refresher;
use crate::state::ReloadStatus;
use crate::state::State;

/// What every tenant shares.
pub(crate) struct Shared {
    pub http: reqwest::Client,
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub in_flight: Arc<Semaphore>,
    pub retry: RetryPolicy,
    pub interval: Duration,
    pub publisher: Arc<Publisher>,
    /// The process's token; each tenant runs under a child of it.
    pub cancel: CancellationToken,
}

pub(crate) struct Fleet {
    shared: Shared,
    /// By lowercased tenant ID.
    members: HashMap<String, Member>,
    next_generation: u64,
}

struct Member {
    tenant_id: String,
    /// As loaded from --config.file, to compare on reload; None for the environment's single
    /// tenant, which is never reloaded.
    loaded: Option<Tenant>,
    cancel: CancellationToken,
    generation: u64,
    /// Dropping the set aborts the tenant's tasks.
    _tasks: JoinSet<()>,
}

/// What a change of the tenant list did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: usize,
    pub removed: usize,
    pub restarted: usize,
    /// Kept running under a new name.
    pub renamed: usize,
    pub unchanged: usize,
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Changes {
            added,
            removed,
            restarted,
            renamed,
            unchanged,
        } = self;
        write!(
            f,
            "{added} added, {removed} removed, {restarted} restarted, {renamed} renamed, {unchanged} unchanged"
        )
    }
}

impl Fleet {
    pub(crate) fn new(shared: Shared) -> Fleet {
        Fleet {
            shared,
            members: HashMap::new(),
            next_generation: 1,
        }
    }

    /// Makes the running tenants those of `tenants`: new ones start, missing ones stop (their
    /// series vanish), changed ones restart, equal ones keep their token, schedule and values,
    /// and so do ones whose name alone changed (their sfb_tenant_info series follows).
    /// The tenants come from a file that loaded, which checked everything, so this cannot
    /// fail half way.
    pub(crate) fn apply(&mut self, tenants: Vec<Tenant>) -> Changes {
        let mut wanted: HashMap<String, Tenant> = HashMap::with_capacity(tenants.len());
        for tenant in tenants {
            wanted.insert(tenant.id().to_lowercase(), tenant);
        }
        let mut unchanged: HashSet<String> = HashSet::new();
        let mut renamed = 0;
        let publisher = &self.shared.publisher;
        wanted.retain(|key, tenant| {
            let Some(member) = self.members.get_mut(key) else {
                return true;
            };
            let Some(running) = member.loaded.as_mut().filter(|r| r.same_but_name(tenant)) else {
                return true;
            };
            // A new name alone keeps the token, the schedule and the values.
            if running.name != tenant.name {
                running.name = tenant.name.clone();
                publisher.rename(&member.tenant_id, member.generation, tenant.name.clone());
                renamed += 1;
            }
            unchanged.insert(key.clone());
            false
        });
        let mut changes = Changes {
            renamed,
            unchanged: unchanged.len() - renamed,
            ..Changes::default()
        };
        let starting: HashSet<String> = wanted.keys().cloned().collect();
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|key| !unchanged.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            if starting.contains(&key) {
                changes.restarted += 1;
            } else {
                changes.removed += 1;
            }
            self.stop(&key);
        }
        changes.added = wanted.len() - changes.restarted;
        for (key, tenant) in wanted {
            // One copy runs, the other is kept to compare with on the next reload.
            let loaded = tenant.clone();
            self.launch(key, tenant, Some(loaded));
        }
        changes
    }

    /// Starts the one tenant of the environment (or demo) configuration.
    pub(crate) fn start_single(&mut self, tenant: Tenant) {
        let key = tenant.id().to_lowercase();
        self.launch(key, tenant, None);
    }

    fn stop(&mut self, key: &str) {
        if let Some(member) = self.members.remove(key) {
            member.cancel.cancel();
            self.shared
                .publisher
                .remove(&member.tenant_id, member.generation);
            tracing::info!(tenant = %member.tenant_id, "tenant stopped");
        }
    }

    fn launch(&mut self, key: String, tenant: Tenant, loaded: Option<Tenant>) {
        let s = &self.shared;
        // One count per tenant, its token and report exchanges together.
        let limits = Limits {
            timeout: s.timeout,
            max_body_bytes: s.max_body_bytes,
            in_flight: Some(Arc::clone(&s.in_flight)),
            requests: Arc::new(RequestCounts::default()),
        };
        let tenant_id = tenant.id().to_string();
        let mut state = State::new(tenant_id.clone(), tenant.periods.iter());
        state.client_certificate_not_after = tenant
            .identity
            .credential
            .certificate()
            .map(|c| c.not_after());
        let graph = GraphClient::for_identity(
            s.http.clone(),
            tenant.identity,
            &tenant.authority,
            tenant.graph,
            limits,
            s.retry.clone(),
        );
        let generation = self.next_generation;
        self.next_generation += 1;
        let refresher = Arc::new(Refresher::new(
            graph,
            state,
            tenant.name,
            s.interval,
            Arc::clone(&s.publisher),
            generation,
        ));
        let cancel = s.cancel.child_token();
        let tasks = refresher.spawn(cancel.clone());
        self.members.insert(
            key,
            Member {
                tenant_id,
                loaded,
                cancel,
                generation,
                _tasks: tasks,
            },
        );
    }
}

/// Callers that may wait for the queued reload. Each holds a connection busy, and a busy
/// connection is never closed to make room for a new one: so few that a flood of reload
/// requests cannot fill the connection cap.
const MAX_WAITING_RELOADS: usize = 4;

/// Why a reload did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load; nothing changed.
    #[error("{0}")]
    Failed(String),
    /// As many callers as may wait already wait for the queued reload; nothing was done.
    #[error("a reload is already in progress; try again")]
    Busy,
    #[error("shutting down")]
    ShuttingDown,
}

type Outcome = Result<Changes, ReloadError>;

/// The reload asked for and not started yet. Reloads run one at a time; everyone who asks
/// while one is queued joins it, as its reading of the file starts after they asked. Who
/// asks while one runs (it may have read the file already) waits for the next.
#[derive(Default)]
struct Queued {
    wanted: bool,
    callers: Vec<oneshot::Sender<Outcome>>,
    /// The task that runs reloads has stopped.
    closed: bool,
}

#[derive(Default)]
struct Queue {
    next: Mutex<Queued>,
    wake: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.next.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a reload is wanted, and takes who waits for it: later callers queue the
    /// next one.
    async fn next_batch(&self) -> Vec<oneshot::Sender<Outcome>> {
        loop {
            self.wake.notified().await;
            let mut next = self.lock();
            if std::mem::take(&mut next.wanted) {
                return std::mem::take(&mut next.callers);
            }
        }
    }
}

/// Answers every waiting caller when the task that runs reloads stops.
struct CloseOnDrop(Arc<Queue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut next = self.0.lock();
        next.closed = true;
        // Dropping their senders answers them "shutting down".
        next.callers.clear();
    }
}

/// Asks the task that owns the fleet to re-read --config.file.
#[derive(Clone)]
pub struct Reloader(Arc<Queue>);

impl Reloader {
    /// Ok: what changed; Err: why the file did not load (nothing changed), or that as many
    /// callers as may wait already wait for the queued reload (answered at once).
    pub async fn reload(&self) -> Outcome {
        let answer = {
            let mut next = self.0.lock();
            if next.closed {
                return Err(ReloadError::ShuttingDown);
            }
            // Callers that went away (their connection closed) leave room.
            next.callers.retain(|caller| !caller.is_closed());
            if next.callers.len() >= MAX_WAITING_RELOADS {
                return Err(ReloadError::Busy);
            }
            let (reply, answer) = oneshot::channel();
            next.callers.push(reply);
            next.wanted = true;
            answer
        };
        self.0.wake.notify_one();
        answer.await.unwrap_or(Err(ReloadError::ShuttingDown))
    }

    /// A reload nobody waits for (SIGHUP): joins the queued one, or queues one; never
    /// refused, as it holds no connection.
    pub fn reload_in_background(&self) {
        let mut next = self.0.lock();
        if next.closed {
            return;
        }
        next.wanted = true;
        drop(next);
        self.0.wake.notify_one();
    }
}

/// The tenants of --config.file, and how to read it again.
#[derive(Clone)]
pub(crate) struct FileSource {
    pub path: PathBuf,
    pub defaults: TenantDefaults,
    pub shard: Shard,
}

impl FileSource {
    /// On a blocking thread: every certificate of the file is loaded (a PKCS#12 key derivation
    /// each), and a file on a slow network filesystem must not stall a runtime worker and the
    /// scrapes it serves.
    pub(crate) async fn load(&self) -> Result<Vec<Tenant>, String> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || tenants::load(&this.path, &this.defaults, this.shard))
            .await
            .unwrap_or_else(|_| Err("loading --config.file failed unexpectedly".into()))
    }
}

/// Serves reload requests until `cancel` fires; the fleet (and every tenant) stops with it.
/// `loaded_at` is when the file last loaded, as already published: a failed reload keeps it.
pub(crate) fn serve_reloads(
    mut fleet: Fleet,
    source: FileSource,
    loaded_at: SystemTime,
    cancel: CancellationToken,
) -> (Reloader, impl std::future::Future<Output = ()>) {
    let queue = Arc::new(Queue::default());
    let closing = CloseOnDrop(Arc::clone(&queue));
    let mut last_success = Some(loaded_at);
    let work = async move {
        loop {
            let callers = closing.0.next_batch().await;
            let outcome = source.load().await.map(|tenants| fleet.apply(tenants));
            let publisher = &fleet.shared.publisher;
            let answer = match outcome {
                Ok(changes) => {
                    last_success = Some(SystemTime::now());
                    tracing::info!(
                        path = %source.path.display(),
                        added = changes.added,
                        removed = changes.removed,
                        restarted = changes.restarted,
                        renamed = changes.renamed,
                        unchanged = changes.unchanged,
                        "tenants reloaded: {changes}"
                    );
                    Ok(changes)
                }
                Err(e) => {
                    tracing::error!("{e}; keeping the previous tenants");
                    Err(ReloadError::Failed(e))
                }
            };
            publisher.set_reload(ReloadStatus {
                successful: answer.is_ok(),
                last_success,
            });
            // Published before answering, so that whoever asked sees the outcome at once.
            publisher.assemble();
            for caller in callers {
                let _ = caller.send(answer.clone());
            }
        }
    };
    let work = async move {
        cancel.run_until_cancelled(work).await;
    };
    (Reloader(queue), work)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn changed(added: usize) -> Outcome {
        Ok(Changes {
            added,
            ..Changes::default()
        })
    }

    fn answer(callers: Vec<oneshot::Sender<Outcome>>, outcome: &Outcome) {
        for caller in callers {
            caller.send(outcome.clone()).unwrap();
        }
    }

    /// Callers of a queued reload share it; one that arrives while it runs (it may have read
    /// the file already) gets a reload of its own, started after it asked.
    #[tokio::test]
    async fn callers_join_the_queued_reload_never_the_running_one() {
        let queue = Arc::new(Queue::default());
        let reloader = Reloader(Arc::clone(&queue));
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = pin!(reloader.reload());
        let mut second = pin!(reloader.reload());
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());

        let running = queue.next_batch().await;
        assert_eq!(running.len(), 2, "both joined the queued reload");
        let mut late = pin!(reloader.reload());
        assert!(late.as_mut().poll(&mut cx).is_pending());
        answer(running, &changed(1));
        assert_eq!(first.await, changed(1));
        assert_eq!(second.await, changed(1));
        assert!(
            late.as_mut().poll(&mut cx).is_pending(),
            "not answered by the reload that ran when it asked"
        );

        let next = queue.next_batch().await;
        assert_eq!(next.len(), 1);
        answer(next, &changed(2));
        assert_eq!(late.await, changed(2));
    }

    /// Beyond the callers that may wait, a caller is answered at once and nothing piles up;
    /// SIGHUP's reload holds no connection and is never refused.
    #[tokio::test]
    async fn callers_beyond_the_bound_are_answered_at_once() {
        let queue = Arc::new(Queue::default());
        let reloader = Reloader(Arc::clone(&queue));
        let mut cx = Context::from_waker(Waker::noop());
        let mut waiting: Vec<_> = (0..MAX_WAITING_RELOADS)
            .map(|_| Box::pin(reloader.reload()))
            .collect();
        for caller in &mut waiting {
            assert!(caller.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            pin!(reloader.reload()).poll(&mut cx),
            Poll::Ready(Err(ReloadError::Busy))
        );
        // One that went away leaves room for another.
        waiting.pop();
        let mut another = pin!(reloader.reload());
        assert!(another.as_mut().poll(&mut cx).is_pending());
        assert_eq!(queue.lock().callers.len(), MAX_WAITING_RELOADS);

        let batch = queue.next_batch().await;
        assert_eq!(batch.len(), MAX_WAITING_RELOADS);
        reloader.reload_in_background();
        let unwatched = queue.next_batch().await;
        assert!(unwatched.is_empty(), "SIGHUP's reload runs, nobody waits");
        answer(batch, &changed(0));
        assert_eq!(another.await, changed(0));
    }

    #[tokio::test]
    async fn callers_are_answered_when_reloads_stop() {
        let queue = Arc::new(Queue::default());
        let reloader = Reloader(Arc::clone(&queue));
        let closing = CloseOnDrop(Arc::clone(&queue));
        let mut cx = Context::from_waker(Waker::noop());
        let mut waiting = pin!(reloader.reload());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        drop(closing);
        assert_eq!(waiting.await, Err(ReloadError::ShuttingDown));
        assert_eq!(reloader.reload().await, Err(ReloadError::ShuttingDown));
    }
}
