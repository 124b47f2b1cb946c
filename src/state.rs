//! The snapshot the refresher publishes and every handler reads: immutable once published.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::error::{Reason, Stage};
use crate::report::Period;
use crate::report::Row;

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
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Succeeded,
    Failed { reason: Reason, message: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub rows: usize,
    pub newest: Option<Row>,
    /// ETag of the download this report came from, sent back as If-None-Match.
    pub etag: Option<String>,
}

#[derive(Debug, Clone)]
pub struct State {
    pub tenant: String,
    pub periods: BTreeMap<Period, PeriodState>,
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
            graph_requests: BTreeMap::new(),
        }
    }

    /// Ready once every configured period has had one successful refresh.
    pub fn ready(&self) -> bool {
        self.periods.values().all(|p| p.last_success.is_some())
    }
}

/// A state and its exposition, rendered (and compressed) together so that a scrape only copies
/// bytes.
#[derive(Debug)]
pub struct Published {
    pub state: State,
    pub metrics: Bytes,
    /// `metrics`, gzip-compressed.
    pub metrics_gzip: Bytes,
}

impl Published {
    pub fn new(state: State, metrics: Bytes) -> Published {
        let metrics_gzip = gzip(&metrics);
        Published {
            state,
            metrics,
            metrics_gzip,
        }
    }
}

/// One gzip member of `body`.
pub fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::default(),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default().into()
}
