//! Assembles the published snapshot from each tenant's pre-rendered fragment.
//!
//! Refreshes pour in at startup (a thousand tenants, four periods each); assembling and
//! compressing the whole body after each of them would be quadratic. A refresh therefore only
//! renders its own tenant and marks the body stale; one task assembles and compresses it, at
//! most once per gap (four times the last assembly's duration, between 250 ms and 1 s).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exposition::gzip::Gzip;
use crate::exposition::metrics::{assemble, render_tenant, BuildInfo, Fragment, Globals};
use crate::state::{ReloadStatus, State};

const MIN_GAP: Duration = Duration::from_millis(250);
const MAX_GAP: Duration = Duration::from_secs(1);

pub(crate) struct Publisher {
    inner: Mutex<Inner>,
    stale: Notify,
    published: Arc<ArcSwap<Published>>,
    mode: TenantMode,
}

struct Inner {
    tenants: BTreeMap<String, Entry>,
    /// Changed under the lock with `tenants`, so that sfb_tenant_info names what they hold.
    globals: Globals,
    /// Counts the snapshots taken of the entries, so that of two assemblies running at once
    /// (the publishing task's and a reload's) the older cannot replace the newer.
    taken: u64,
    /// The number of the snapshot published last.
    stored: u64,
}

struct Entry {
    /// Which start of the tenant owns this entry: a stopped tenant's last refresh must not
    /// bring its series back.
    generation: u64,
    view: TenantView,
    fragment: Arc<Fragment>,
}

impl Publisher {
    /// `mode` sets what readiness means and what /readyz lists.
    pub(crate) fn new(mode: TenantMode) -> Arc<Publisher> {
        let publisher = Arc::new(Publisher {
            inner: Mutex::new(Inner {
                tenants: BTreeMap::new(),
                globals: Globals::new(&BuildInfo::CURRENT),
                taken: 0,
                stored: 0,
            }),
            stale: Notify::new(),
            published: Arc::new(ArcSwap::from_pointee(Published::assembled(
                BTreeMap::new(),
                mode,
                Default::default(),
            ))),
            mode,
        });
        publisher.assemble();
        publisher
    }

    /// The handle handlers read snapshots from.
    pub(crate) fn published(&self) -> Arc<ArcSwap<Published>> {
        Arc::clone(&self.published)
    }

    /// Adds or replaces a tenant, owned from now on by `generation`.
    pub(crate) fn insert(&self, generation: u64, name: Option<String>, state: State) {
        let fragment = Arc::new(render_tenant(&state));
        let tenant = state.tenant.clone();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let old = inner
            .tenants
            .get(&tenant)
            .and_then(|e| e.view.name.as_deref());
        inner.globals.rename(&tenant, old, name.as_deref());
        let entry = Entry {
            generation,
            view: TenantView {
                name,
                state: Arc::new(state),
            },
            fragment,
        };
        inner.tenants.insert(tenant, entry);
        drop(guard);
        self.stale.notify_one();
    }

    /// Replaces a tenant's state, if `generation` still owns it.
    pub(crate) fn update(&self, generation: u64, state: State) {
        // Rendered before taking the lock, so that tenants refreshing together render in
        // parallel.
        let fragment = Arc::new(render_tenant(&state));
        let mut inner = self.lock();
        let Some(entry) = inner
            .tenants
            .get_mut(&state.tenant)
            .filter(|e| e.generation == generation)
        else {
            return;
        };
        entry.view.state = Arc::new(state);
        entry.fragment = fragment;
        drop(inner);
        self.stale.notify_one();
    }

    /// Gives a tenant a new name (its sfb_tenant_info series), if `generation` still owns it;
    /// its values stay as they are.
    pub(crate) fn rename(&self, tenant: &str, generation: u64, name: Option<String>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let Some(entry) = inner
            .tenants
            .get_mut(tenant)
            .filter(|e| e.generation == generation)
        else {
            return;
        };
        let old = std::mem::replace(&mut entry.view.name, name);
        inner
            .globals
            .rename(tenant, old.as_deref(), entry.view.name.as_deref());
        drop(guard);
        self.stale.notify_one();
    }

    /// Drops a tenant and its series, if `generation` still owns it.
    pub(crate) fn remove(&self, tenant: &str, generation: u64) {
        let mut inner = self.lock();
        if inner
            .tenants
            .get(tenant)
            .is_none_or(|e| e.generation != generation)
        {
            return;
        }
        let old = inner.tenants.remove(tenant).and_then(|e| e.view.name);
        inner.globals.rename(tenant, old.as_deref(), None);
        drop(inner);
        self.stale.notify_one();
    }

    pub(crate) fn set_reload(&self, status: ReloadStatus) {
        self.lock().globals.set_reload(status);
        self.stale.notify_one();
    }

    /// Assembles whenever something changed, at most once per gap, until `cancel` fires.
    pub(crate) async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let work = async {
            loop {
                self.stale.notified().await;
                let started = Instant::now();
                // Off the async workers: at a thousand tenants, compressing takes long enough
                // to hold up scrapes on the worker that does it.
                let this = Arc::clone(&self);
                let _ = tokio::task::spawn_blocking(move || this.assemble()).await;
                let gap = (started.elapsed() * 4).clamp(MIN_GAP, MAX_GAP);
                tokio::time::sleep(gap).await;
            }
        };
        cancel.run_until_cancelled(work).await;
    }

    /// Builds and stores a new snapshot from the current fragments.
    pub(crate) fn assemble(&self) {
        let (number, published) = self.build();
        self.store(number, published);
    }

    /// A snapshot of the current fragments, assembled and compressed, and its number.
    fn build(&self) -> (u64, Published) {
        let (number, tenants, fragments, globals) = {
            let mut inner = self.lock();
            inner.taken += 1;
            let tenants: BTreeMap<String, TenantView> = inner
                .tenants
                .iter()
                .map(|(id, e)| (id.clone(), e.view.clone()))
                .collect();
            let fragments: Vec<Arc<Fragment>> = inner
                .tenants
                .values()
                .map(|e| Arc::clone(&e.fragment))
                .collect();
            (inner.taken, tenants, fragments, inner.globals.render())
        };
        let body = assemble(std::iter::once(&globals).chain(fragments.iter().map(|f| &**f)));
        (
            number,
            Published::assembled(tenants, self.mode, body.into()),
        )
    }

    /// Publishes snapshot `number` unless a newer one already is.
    fn store(&self, number: u64, published: Published) {
        let mut inner = self.lock();
        if number > inner.stored {
            inner.stored = number;
            self.published.store(Arc::new(published));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Entries are replaced whole under the lock, so the map is consistent even after a panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the tenants come from, which decides what ready means and what /readyz lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TenantMode {
    /// The environment's one tenant: ready once every period has succeeded.
    Single,
    /// --config.file: ready once every tenant's periods have had a first attempt, not a
    /// success, so that one tenant that lost its consent does not take the others off the
    /// scrape; /readyz lists the tenants.
    File,
}

/// One tenant as published.
#[derive(Debug, Clone)]
pub(crate) struct TenantView {
    pub name: Option<String>,
    pub state: Arc<State>,
}

/// The states and their exposition, rendered (and compressed) together so that a scrape only
/// copies bytes.
#[derive(Debug)]
pub struct Published {
    /// By tenant ID.
    pub(crate) tenants: BTreeMap<String, TenantView>,
    pub(crate) mode: TenantMode,
    pub(crate) metrics: Bytes,
    /// `metrics`, gzip-compressed, open to appending (the process_* series at scrape time).
    pub(crate) metrics_gzip: Gzip,
}

impl Published {
    /// A single tenant, as without --config.file (for tests: the exporter assembles).
    pub fn new(state: State, metrics: Bytes) -> Published {
        let tenants = [(
            state.tenant.clone(),
            TenantView {
                name: None,
                state: Arc::new(state),
            },
        )]
        .into_iter()
        .collect();
        Published::assembled(tenants, TenantMode::Single, metrics)
    }

    pub(crate) fn assembled(
        tenants: BTreeMap<String, TenantView>,
        mode: TenantMode,
        metrics: Bytes,
    ) -> Published {
        let metrics_gzip = Gzip::new(&metrics);
        Published {
            tenants,
            mode,
            metrics,
            metrics_gzip,
        }
    }

    /// Without --config.file: every period has succeeded once. With it: every (tenant, period)
    /// has finished its first attempt, so that one tenant that lost its consent does not take
    /// the others off the scrape.
    pub(crate) fn ready(&self) -> bool {
        let mut states = self.tenants.values().map(|t| &t.state);
        match self.mode {
            TenantMode::File => {
                states.all(|s| s.periods.values().all(|p| p.last_attempt.is_some()))
            }
            TenantMode::Single => states.all(|s| s.ready()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Period;

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let publisher = Publisher::new(TenantMode::File);
        let (older, older_snapshot) = publisher.build();
        publisher.insert(1, None, State::new("a", [Period::D7]));
        let (newer, newer_snapshot) = publisher.build();
        publisher.store(newer, newer_snapshot);
        // The publishing task finishes compressing its (older) snapshot only now.
        publisher.store(older, older_snapshot);
        assert!(publisher.published().load().tenants.contains_key("a"));
    }

    #[test]
    fn tenant_info_names_the_tenants_the_publisher_holds() {
        let publisher = Publisher::new(TenantMode::File);
        let body = || {
            let (_, published) = publisher.build();
            String::from_utf8(published.metrics.to_vec()).unwrap()
        };
        publisher.insert(1, Some("A".into()), State::new("a", [Period::D7]));
        publisher.insert(1, Some("B".into()), State::new("b", [Period::D7]));
        publisher.rename("a", 1, Some("A2".into()));
        publisher.rename("b", 0, Some("stale".into()));
        let names = body();
        assert!(
            names.contains("sfb_tenant_info{name=\"A2\",tenant=\"a\"} 1\nsfb_tenant_info{name=\"B\",tenant=\"b\"} 1\n"),
            "{names}"
        );
        assert!(
            !names.contains("name=\"A\"") && !names.contains("stale"),
            "{names}"
        );
        publisher.remove("b", 1);
        publisher.insert(2, None, State::new("a", [Period::D7]));
        assert!(!body().contains("sfb_tenant_info"), "{}", body());
    }

    #[tokio::test(start_paused = true)]
    async fn stale_generations_cannot_touch_a_restarted_tenant() {
        let publisher = Publisher::new(TenantMode::File);
        let cancel = CancellationToken::new();
        tokio::spawn(Arc::clone(&publisher).run(cancel.clone()));
        publisher.insert(1, Some("A".into()), State::new("a", [Period::D7]));
        publisher.insert(2, None, State::new("a", [Period::D30]));
        publisher.update(1, State::new("a", [Period::D90]));
        publisher.remove("a", 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let body = publisher.published().load().metrics.clone();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.contains(r#"period="D30""#), "{body}");
        assert!(!body.contains(r#"period="D90""#) && !body.contains("sfb_tenant_info{"));
        publisher.remove("a", 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let published = publisher.published().load_full();
        assert!(published.tenants.is_empty());
        assert!(published.ready(), "no tenants: nothing to wait for");
        cancel.cancel();
    }
}
