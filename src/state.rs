//! The snapshot the refresher publishes and every handler reads: immutable once published.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::error::{Reason, Stage};
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

/// Outcome of loading --config.file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ReloadStatus {
    pub successful: bool,
    pub last_success: Option<SystemTime>,
}
