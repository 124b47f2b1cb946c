//! The background loop of one tenant: one task per period, each on its own clock, so that a
//! slow or failing period never holds up another. Each outcome updates the tenant's state and
//! hands it to the publisher.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{RefreshError, Stage};
use crate::exposition::publisher::Publisher;
use crate::graph::{Fetched, GraphClient};
use crate::report;
use crate::report::Period;
use crate::state::{Accepted, Attempt, State};
use crate::text::one_line;

/// The wait before a panicked refresh task is restarted; it doubles while the task panics
/// again before finishing an attempt, up to the maximum.
const PANIC_BACKOFF_MIN: Duration = Duration::from_secs(1);
const PANIC_BACKOFF_MAX: Duration = Duration::from_secs(300);

pub(crate) struct Refresher {
    graph: GraphClient,
    interval: Duration,
    /// Only the refresher writes; the lock orders publications so an older state never
    /// replaces a newer one.
    state: Mutex<State>,
    publisher: Arc<Publisher>,
    /// This start of the tenant, as the publisher knows it.
    generation: u64,
    /// Test hook: how many times each period's next refreshes panic.
    #[cfg(test)]
    inject_panics: Mutex<std::collections::BTreeMap<Period, u32>>,
}

impl Refresher {
    /// One tenant's refresher; its (empty) state is published at once.
    pub(crate) fn new(
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
            #[cfg(test)]
            inject_panics: Mutex::default(),
        }
    }

    /// Starts one loop per period; they end when `cancel` fires, abandoning any request in flight.
    pub(crate) fn spawn(self: Arc<Self>, cancel: CancellationToken) -> JoinSet<()> {
        let periods: Vec<Period> = self.lock().periods.keys().copied().collect();
        let mut tasks = JoinSet::new();
        for period in periods {
            let this = Arc::clone(&self);
            let cancel = cancel.clone();
            tasks.spawn(async move {
                cancel.run_until_cancelled(this.supervise(period)).await;
            });
        }
        tasks
    }

    /// Runs the period's loop in a task of its own, so that a panic (a bug, or a library that
    /// gives up, such as a random number generator without /dev/urandom) unwinds that task
    /// alone. The panic is logged, counted and shown in /readyz, and the loop restarts after
    /// a backoff; the other periods, tenants and the server go on.
    async fn supervise(self: Arc<Self>, period: Period) {
        let mut backoff = PANIC_BACKOFF_MIN;
        loop {
            // Dropping the set, when this task is cancelled, aborts the loop.
            let mut run = JoinSet::new();
            let this = Arc::clone(&self);
            run.spawn(async move { this.run_period(period).await });
            let Some(Err(ended)) = run.join_next().await else {
                return;
            };
            let Ok(payload) = ended.try_into_panic() else {
                // Aborted: the runtime is shutting down.
                return;
            };
            let panic = panic_message(payload.as_ref());
            if !self.panicked_again(period) {
                backoff = PANIC_BACKOFF_MIN;
            }
            let message = format!(
                "the refresh task panicked ({panic}); restarting it in {}",
                humantime::format_duration(backoff)
            );
            let tenant = self.record_panic(period, message.clone());
            tracing::error!(%tenant, %period, "{message}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(PANIC_BACKOFF_MAX);
        }
    }

    /// Whether the period's last outcome was a panic too: no attempt finished in between.
    fn panicked_again(&self, period: Period) -> bool {
        self.lock()
            .periods
            .get(&period)
            .is_some_and(|p| matches!(p.last_attempt, Some(Attempt::Panicked { .. })))
    }

    /// Counts and publishes a panic of the period's task; returns the tenant, for the log.
    fn record_panic(&self, period: Period, message: String) -> String {
        let mut state = self.lock();
        let tenant = state.tenant.clone();
        if let Some(p) = state.periods.get_mut(&period) {
            p.panics += 1;
            p.last_attempt = Some(Attempt::Panicked { message });
        }
        self.publisher.update(self.generation, state.clone());
        tenant
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
    async fn refresh(&self, period: Period) -> Result<Option<Accepted>, RefreshError> {
        #[cfg(test)]
        self.maybe_panic(period);
        let etag = self.lock().periods[&period]
            .accepted
            .as_ref()
            .and_then(|a| a.etag.clone());
        match self.graph.fetch(period, etag.as_deref()).await? {
            Fetched::NotModified if etag.is_some() => Ok(None),
            Fetched::NotModified => Err(RefreshError::Http {
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
                    .map_err(|e| RefreshError::from(e).after_report(&request_id))?;
                Ok(Some(Accepted::new(&report, etag)))
            }
        }
    }

    fn record(
        &self,
        period: Period,
        outcome: Result<Option<Accepted>, RefreshError>,
        took: Duration,
    ) {
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

    #[cfg(test)]
    fn maybe_panic(&self, period: Period) {
        let mut left = self.inject_panics.lock().unwrap();
        if let Some(n) = left.get_mut(&period).filter(|n| **n > 0) {
            *n -= 1;
            drop(left);
            panic!("injected by a test");
        }
    }
}

/// A panic's message, on one line; panics carry a `&str` or a `String` (from `panic!` with
/// arguments), anything else has none to offer.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    one_line(text, 300)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Identity, TokenSource};
    use crate::http::Limits;
    use crate::http::RetryPolicy;
    use secrecy::SecretString;
    use url::Url;

    /// A refresher of tenant `t` whose identity platform and Graph are a closed loopback port:
    /// every attempt that gets that far fails at once.
    fn refresher(publisher: &Arc<Publisher>, periods: [Period; 2]) -> Arc<Refresher> {
        let http = crate::http::test_client();
        let nowhere = Url::parse("http://127.0.0.1:1").unwrap();
        let limits = || Limits {
            timeout: Duration::from_secs(5),
            max_body_bytes: 1024,
            in_flight: None,
            requests: Default::default(),
        };
        let identity = Identity::with_secret("t", "c", SecretString::from("s"));
        let tokens = TokenSource::new(http.clone(), &nowhere, &nowhere, identity, limits());
        let retry = RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        };
        let graph = GraphClient::new(http, nowhere, tokens, limits(), retry);
        let state = State::new("t", periods);
        Arc::new(Refresher::new(
            graph,
            state,
            None,
            Duration::from_secs(3600),
            Arc::clone(publisher),
            1,
        ))
    }

    /// Polls the tenant's published state until `done` holds for it; returns when (on the
    /// paused clock).
    async fn when(publisher: &Publisher, done: impl Fn(&State) -> bool) -> Instant {
        for _ in 0..100_000 {
            publisher.assemble();
            if publisher
                .published()
                .load()
                .tenants
                .get("t")
                .is_some_and(|t| done(&t.state))
            {
                return Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_period_is_counted_published_and_restarted_with_backoff() {
        let publisher = Publisher::new(crate::exposition::publisher::TenantMode::File);
        let refresher = refresher(&publisher, [Period::D7, Period::D30]);
        refresher
            .inject_panics
            .lock()
            .unwrap()
            .insert(Period::D7, 2);
        let cancel = CancellationToken::new();
        let _tasks = Arc::clone(&refresher).spawn(cancel.clone());
        let panics = |n: u64| move |s: &State| s.periods[&Period::D7].panics == n;

        let first = when(&publisher, panics(1)).await;
        let published = publisher.published().load_full();
        let state = &published.tenants["t"].state;
        let Some(Attempt::Panicked { message }) = &state.periods[&Period::D7].last_attempt else {
            panic!("{state:?}");
        };
        assert_eq!(
            message,
            "the refresh task panicked (injected by a test); restarting it in 1s"
        );
        // /readyz shows this message as the period's error (see web.rs).
        // Restarted after 1 s, it panics again: the next wait is 2 s, then it runs for real.
        let second = when(&publisher, panics(2)).await;
        assert!(
            second - first >= Duration::from_secs(1),
            "{:?}",
            second - first
        );
        let attempted = when(&publisher, |s| {
            matches!(
                s.periods[&Period::D7].last_attempt,
                Some(Attempt::Failed { .. })
            )
        })
        .await;
        assert!(
            attempted - second >= Duration::from_secs(2),
            "{:?}",
            attempted - second
        );
        let published = publisher.published().load_full();
        let state = &published.tenants["t"].state;
        // The other period never stopped, and never panicked.
        let d30 = &state.periods[&Period::D30];
        assert!(
            matches!(d30.last_attempt, Some(Attempt::Failed { .. })),
            "{d30:?}"
        );
        assert_eq!(d30.panics, 0);
        let body = String::from_utf8(published.metrics.to_vec()).unwrap();
        for line in [
            r#"sfb_refresh_panics_total{period="D7",tenant="t"} 2"#,
            r#"sfb_refresh_panics_total{period="D30",tenant="t"} 0"#,
        ] {
            assert!(body.contains(line), "{line} not in\n{body}");
        }
        cancel.cancel();
    }
}
