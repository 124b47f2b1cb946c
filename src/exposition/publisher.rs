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
use crate::exposition::metrics::{
    assemble, render_globals, render_tenant, BuildInfo, Fragment, Globals,
};
use crate::state::{ReloadStatus, State};

const MIN_GAP: Duration = Duration::from_millis(250);
const MAX_GAP: Duration = Duration::from_secs(1);

pub struct Publisher {
    inner: Mutex<Inner>,
    stale: Notify,
    published: Arc<ArcSwap<Published>>,
    per_tenant: bool,
}

#[derive(Default)]
struct Inner {
    tenants: BTreeMap<String, Entry>,
    reload: Option<ReloadStatus>,
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
    /// `per_tenant`: readiness and /readyz as with --config.file.
    pub fn new(per_tenant: bool) -> Arc<Publisher> {
        let publisher = Arc::new(Publisher {
            inner: Mutex::new(Inner::default()),
            stale: Notify::new(),
            published: Arc::new(ArcSwap::from_pointee(Published::assembled(
                BTreeMap::new(),
                per_tenant,
                Default::default(),
            ))),
            per_tenant,
        });
        publisher.assemble();
        publisher
    }

    /// The handle handlers read snapshots from.
    pub fn published(&self) -> Arc<ArcSwap<Published>> {
        Arc::clone(&self.published)
    }

    /// Adds or replaces a tenant, owned from now on by `generation`.
    pub fn insert(&self, generation: u64, name: Option<String>, state: State) {
        let Some(fragment) = fragment(&state) else {
            return;
        };
        let tenant = state.tenant.clone();
        let entry = Entry {
            generation,
            view: TenantView {
                name,
                state: Arc::new(state),
            },
            fragment,
        };
        self.lock().tenants.insert(tenant, entry);
        self.stale.notify_one();
    }

    /// Replaces a tenant's state, if `generation` still owns it.
    pub fn update(&self, generation: u64, state: State) {
        // Rendered before taking the lock, so that tenants refreshing together render in
        // parallel.
        let Some(fragment) = fragment(&state) else {
            return;
        };
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
    pub fn rename(&self, tenant: &str, generation: u64, name: Option<String>) {
        let mut inner = self.lock();
        let Some(entry) = inner
            .tenants
            .get_mut(tenant)
            .filter(|e| e.generation == generation)
        else {
            return;
        };
        entry.view.name = name;
        drop(inner);
        self.stale.notify_one();
    }

    /// Drops a tenant and its series, if `generation` still owns it.
    pub fn remove(&self, tenant: &str, generation: u64) {
        let mut inner = self.lock();
        if inner
            .tenants
            .get(tenant)
            .is_some_and(|e| e.generation == generation)
        {
            inner.tenants.remove(tenant);
            drop(inner);
            self.stale.notify_one();
        }
    }

    pub fn set_reload(&self, status: ReloadStatus) {
        self.lock().reload = Some(status);
        self.stale.notify_one();
    }

    /// Assembles whenever something changed, at most once per gap, until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
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
    pub fn assemble(&self) {
        if let Some((number, published)) = self.build() {
            self.store(number, published);
        }
    }

    /// A snapshot of the current fragments, assembled and compressed, and its number.
    fn build(&self) -> Option<(u64, Published)> {
        let (number, tenants, fragments, reload) = {
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
            (inner.taken, tenants, fragments, inner.reload)
        };
        let globals = Globals {
            tenant_names: tenants
                .iter()
                .filter_map(|(id, t)| Some((id.as_str(), t.name.as_deref()?)))
                .collect(),
            reload,
        };
        let globals = match render_globals(&BuildInfo::CURRENT, &globals) {
            Ok(globals) => globals,
            Err(e) => {
                tracing::error!("cannot render metrics, keeping the previous exposition: {e}");
                return None;
            }
        };
        let body = assemble(std::iter::once(&globals).chain(fragments.iter().map(|f| &**f)));
        Some((
            number,
            Published::assembled(tenants, self.per_tenant, body.into()),
        ))
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

fn fragment(state: &State) -> Option<Arc<Fragment>> {
    match render_tenant(state) {
        Ok(f) => Some(Arc::new(f)),
        Err(e) => {
            tracing::error!(tenant = %state.tenant, "cannot render metrics, keeping the previous exposition: {e}");
            None
        }
    }
}

/// One tenant as published.
#[derive(Debug, Clone)]
pub struct TenantView {
    pub name: Option<String>,
    pub state: Arc<State>,
}

/// The states and their exposition, rendered (and compressed) together so that a scrape only
/// copies bytes.
#[derive(Debug)]
pub struct Published {
    /// By tenant ID.
    pub tenants: BTreeMap<String, TenantView>,
    /// With --config.file: readiness needs a first attempt, not a success, of every tenant's
    /// periods, and /readyz lists tenants.
    pub per_tenant: bool,
    pub metrics: Bytes,
    /// `metrics`, gzip-compressed, open to appending (the process_* series at scrape time).
    pub metrics_gzip: Gzip,
}

impl Published {
    /// A single tenant, as without --config.file.
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
        Published::assembled(tenants, false, metrics)
    }

    pub fn assembled(
        tenants: BTreeMap<String, TenantView>,
        per_tenant: bool,
        metrics: Bytes,
    ) -> Published {
        let metrics_gzip = Gzip::new(&metrics);
        Published {
            tenants,
            per_tenant,
            metrics,
            metrics_gzip,
        }
    }

    /// Without --config.file: every period has succeeded once. With it: every (tenant, period)
    /// has finished its first attempt, so that one tenant that lost its consent does not take
    /// the others off the scrape.
    pub fn ready(&self) -> bool {
        let mut states = self.tenants.values().map(|t| &t.state);
        if self.per_tenant {
            states.all(|s| s.periods.values().all(|p| p.last_attempt.is_some()))
        } else {
            states.all(|s| s.ready())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Period;

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let publisher = Publisher::new(true);
        let (older, older_snapshot) = publisher.build().unwrap();
        publisher.insert(1, None, State::new("a", [Period::D7]));
        let (newer, newer_snapshot) = publisher.build().unwrap();
        publisher.store(newer, newer_snapshot);
        // The publishing task finishes compressing its (older) snapshot only now.
        publisher.store(older, older_snapshot);
        assert!(publisher.published().load().tenants.contains_key("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_generations_cannot_touch_a_restarted_tenant() {
        let publisher = Publisher::new(true);
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
