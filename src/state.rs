//! The snapshot the refresher publishes and every handler reads: immutable once published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::error::{Reason, Stage};
use crate::gzip::Gzip;
use crate::report::Period;
use crate::report::{Report, Row, Totals};

/// What is known of one period's report.
#[derive(Debug, Clone, Default)]
pub struct PeriodState {
    /// None until the first attempt has finished.
    pub last_attempt: Option<Attempt>,
    pub last_success: Option<SystemTime>,
    /// The last report accepted; kept through failures so its values stay published.
    pub accepted: Option<Accepted>,
    pub failures: BTreeMap<Reason, u64>,
    /// How long the last attempt took, retry waits included.
    pub last_duration: Option<Duration>,
    /// Times the period's refresh task panicked (and was restarted).
    pub panics: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Succeeded,
    Failed {
        reason: Reason,
        message: String,
    },
    /// The refresh task panicked; `message` says so, and when it restarts.
    Panicked {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub rows: usize,
    pub newest: Option<Row>,
    /// Every row's minutes added up; None for a header-only report.
    pub totals: Option<Totals>,
    /// ETag of the download this report came from, sent back as If-None-Match.
    pub etag: Option<String>,
}

impl Accepted {
    /// What is kept of a report once it is accepted: computed here once, not per render.
    pub fn new(report: &Report, etag: Option<String>) -> Accepted {
        Accepted {
            rows: report.rows.len(),
            newest: report.newest().copied(),
            totals: report.totals(),
            etag,
        }
    }
}

#[derive(Debug, Clone)]
pub struct State {
    pub tenant: String,
    pub periods: BTreeMap<Period, PeriodState>,
    /// notAfter of the client certificate, when the exporter signs in with one.
    pub client_certificate_not_after: Option<SystemTime>,
    /// HTTP exchanges with the identity platform and Graph, by stage and status (None: no
    /// answer came back).
    pub graph_requests: BTreeMap<(Stage, Option<u16>), u64>,
}

impl State {
    pub fn new(tenant: impl Into<String>, periods: impl IntoIterator<Item = Period>) -> State {
        State {
            tenant: tenant.into(),
            periods: periods
                .into_iter()
                .map(|p| (p, PeriodState::default()))
                .collect(),
            client_certificate_not_after: None,
            graph_requests: BTreeMap::new(),
        }
    }

    /// Ready once every configured period has had one successful refresh.
    pub fn ready(&self) -> bool {
        self.periods.values().all(|p| p.last_success.is_some())
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
