//! The background loop of one tenant: one task per period, each on its own clock, so that a
//! slow or failing period never holds up another. Each outcome updates the tenant's state and
//! hands it to the publisher.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Stage};
use crate::graph::{Fetched, GraphClient};
use crate::publisher::Publisher;
use crate::report;
use crate::report::Period;
use crate::state::{Accepted, Attempt, State};

pub struct Refresher {
    graph: GraphClient,
    interval: Duration,
    /// Only the refresher writes; the lock orders publications so an older state never
    /// replaces a newer one.
    state: Mutex<State>,
    publisher: Arc<Publisher>,
    /// This start of the tenant, as the publisher knows it.
    generation: u64,
}

impl Refresher {
    /// One tenant's refresher; its (empty) state is published at once.
    pub fn new(
        graph: GraphClient,
        state: State,
        name: Option<String>,
        interval: Duration,
        publisher: Arc<Publisher>,
        generation: u64,
    ) -> Refresher {
        publisher.insert(generation, name, state.clone());
        Refresher {
            graph,
            interval,
            state: Mutex::new(state),
            publisher,
            generation,
        }
    }

    /// Starts one loop per period; they end when `cancel` fires, abandoning any request in flight.
    pub fn spawn(self: Arc<Self>, cancel: CancellationToken) -> JoinSet<()> {
        let periods: Vec<Period> = self.lock().periods.keys().copied().collect();
        let mut tasks = JoinSet::new();
        for period in periods {
            let this = Arc::clone(&self);
            let cancel = cancel.clone();
            tasks.spawn(async move {
                cancel.run_until_cancelled(this.run_period(period)).await;
            });
        }
        tasks
    }

    async fn run_period(&self, period: Period) {
        loop {
            // The interval runs from the start of each attempt, so a slow attempt does not
            // shift the schedule; an attempt longer than the interval is followed at once by
            // the next, never by a burst of missed ones that Graph would throttle.
            let started = Instant::now();
            let outcome = self.refresh(period).await;
            self.record(period, outcome, started.elapsed());
            match started.checked_add(self.interval) {
                Some(next) => tokio::time::sleep_until(next).await,
                // An interval beyond the clock's range: refresh once.
                None => std::future::pending().await,
            }
        }
    }

    /// `Ok(None)`: Graph says the report is unchanged.
    async fn refresh(&self, period: Period) -> Result<Option<Accepted>, Error> {
        let etag = self.lock().periods[&period]
            .accepted
            .as_ref()
            .and_then(|a| a.etag.clone());
        match self.graph.fetch(period, etag.as_deref()).await? {
            Fetched::NotModified if etag.is_some() => Ok(None),
            Fetched::NotModified => Err(Error::Http {
                stage: Stage::Report,
                status: Some(304),
                request_id: Default::default(),
                detail: "HTTP 304 Not Modified to a request that sent no ETag".into(),
            }),
            Fetched::Body {
                csv,
                etag,
                request_id,
            } => {
                let today = time::OffsetDateTime::now_utc().date();
                let report = report::parse(&csv, today)
                    .map_err(|e| Error::from(e).after_report(&request_id))?;
                Ok(Some(Accepted::new(&report, etag)))
            }
        }
    }

    fn record(&self, period: Period, outcome: Result<Option<Accepted>, Error>, took: Duration) {
        let mut state = self.lock();
        let tenant = state.tenant.clone();
        state.graph_requests = self.graph.requests().snapshot();
        let Some(p) = state.periods.get_mut(&period) else {
            return;
        };
        p.last_duration = Some(took);
        match outcome {
            Ok(accepted) => {
                match &accepted {
                    Some(a) => tracing::info!(
                        %tenant, %period, rows = a.rows,
                        report_date = a.newest.map(|r| r.report_date.to_string()),
                        "report refreshed"
                    ),
                    None => {
                        tracing::info!(%tenant, %period, "report unchanged since the last download")
                    }
                }
                if let Some(a) = accepted {
                    p.accepted = Some(a);
                }
                p.last_attempt = Some(Attempt::Succeeded);
                p.last_success = Some(SystemTime::now());
            }
            Err(e) => {
                let reason = e.reason();
                tracing::warn!(%tenant, %period, %reason, "refresh failed: {e}");
                *p.failures.entry(reason).or_default() += 1;
                p.last_attempt = Some(Attempt::Failed {
                    reason,
                    message: e.to_string(),
                });
            }
        }
        self.publisher.update(self.generation, state.clone());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced whole under the lock, so it is consistent even after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
