//! `sfb-exporter backfill`: every row of one report per tenant as OpenMetrics text with
//! explicit timestamps, for `promtool tsdb create-blocks-from openmetrics`.
//!
//! The live exporter publishes the newest day only; Graph hands over up to 180 days in one
//! report, and backfilling is how Prometheus takes history (a live exposition never carries
//! timestamps).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use url::Url;

use crate::auth::{Identity, TokenSource};
use crate::error::{Error, Stage};
use crate::graph::{Fetched, GraphClient, RetryPolicy};
use crate::http::Limits;
use crate::metrics::CONFERENCE_TYPES;
use crate::report::{self, Period, Report};

pub const METRIC: &str = "sfb_organizer_activity_daily_seconds";

const HELP: &str = "Conference time organized in the tenant on one day of the Graph report getSkypeForBusinessOrganizerActivityMinuteCounts, by conference type (Graph's minutes x 60), timestamped at the day's UTC midnight. Written by sfb-exporter backfill for promtool, never exposed live.";

/// One tenant to backfill: its `tenant` label and how to reach its Graph.
#[derive(Debug)]
pub struct Tenant {
    pub label: String,
    pub identity: Identity,
    pub authority: Url,
    pub graph: Url,
}

/// What every tenant's report request shares.
pub struct Settings {
    pub http: reqwest::Client,
    pub timeout: std::time::Duration,
    pub max_body_bytes: u64,
    pub retry: RetryPolicy,
    pub period: Period,
}

impl Settings {
    fn limits(&self) -> Limits {
        Limits {
            timeout: self.timeout,
            max_body_bytes: self.max_body_bytes,
            // One tenant after the other: nothing to bound.
            in_flight: None,
            // Counted for nobody: backfill publishes no metrics.
            requests: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("tenant {tenant}: {period} report: {error}")]
    Report {
        tenant: String,
        period: Period,
        error: Error,
    },
    #[error("cannot write {path:?}: {error}")]
    Write {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
}

/// Fetches `settings.period`'s report once per tenant, one tenant after the other (Graph
/// throttles per tenant, and a daily job has time), and renders them all. The first failure
/// ends the run: a partial history would look complete.
pub async fn collect(tenants: Vec<Tenant>, settings: &Settings) -> Result<String, BackfillError> {
    let mut reports = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let tokens = TokenSource::new(
            settings.http.clone(),
            &tenant.authority,
            &tenant.graph,
            tenant.identity,
            settings.limits(),
        );
        let graph = GraphClient::new(
            settings.http.clone(),
            tenant.graph,
            tokens,
            settings.limits(),
            settings.retry.clone(),
        );
        let report =
            fetch(&graph, settings.period)
                .await
                .map_err(|error| BackfillError::Report {
                    tenant: tenant.label.clone(),
                    period: settings.period,
                    error,
                })?;
        tracing::info!(tenant = %tenant.label, period = %settings.period, rows = report.rows.len(), "report fetched");
        reports.push((tenant.label, report));
    }
    Ok(render(&reports))
}

async fn fetch(graph: &GraphClient, period: Period) -> Result<Report, Error> {
    match graph.fetch(period, None).await? {
        Fetched::Body {
            csv, request_id, ..
        } => {
            let today = time::OffsetDateTime::now_utc().date();
            report::parse(&csv, today).map_err(|e| Error::from(e).after_report(&request_id))
        }
        Fetched::NotModified => Err(Error::Http {
            stage: Stage::Report,
            status: Some(304),
            request_id: Default::default(),
            detail: "HTTP 304 Not Modified to a request that sent no ETag".into(),
        }),
    }
}

/// The OpenMetrics text of `reports` (tenant label, report): one series per tenant and
/// conference type, each contiguous and in time order, one sample per row at the Report
/// Date's UTC midnight; HELP, TYPE and the closing `# EOF` that promtool requires.
pub fn render(reports: &[(String, Report)]) -> String {
    let mut out = format!("# HELP {METRIC} {HELP}\n# TYPE {METRIC} gauge\n");
    for (tenant, report) in reports {
        let mut rows: Vec<_> = report.rows.iter().collect();
        rows.sort_by_key(|row| row.report_date);
        for (i, kind) in CONFERENCE_TYPES.into_iter().enumerate() {
            let series = format!(
                "{METRIC}{{tenant=\"{}\",conference_type=\"{kind}\"}}",
                escape(tenant)
            );
            for row in &rows {
                let minutes = [
                    row.audio_video_minutes,
                    row.dial_in_microsoft_minutes,
                    row.dial_out_microsoft_minutes,
                ][i];
                let seconds = u128::from(minutes) * 60;
                let at = row.report_date.midnight().assume_utc().unix_timestamp();
                // Writing to a String cannot fail.
                let _ = writeln!(out, "{series} {seconds} {at}");
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// A label value as OpenMetrics quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// Writes `text` to `path` through a temporary file in the same directory, renamed over it
/// once complete: a reader (or promtool) never sees half a file, and a failure leaves the
/// previous file as it was.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), BackfillError> {
    let error = |error| BackfillError::Write {
        path: path.to_path_buf(),
        error,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Readable by others, as a file written plainly would be: promtool often runs as another
    // user (another container) than the one that writes.
    use std::os::unix::fs::PermissionsExt;
    let mut file = tempfile::Builder::new()
        .prefix(".sfb-backfill-")
        .permissions(std::fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)?;
    file.as_file().sync_all().map_err(error)?;
    file.persist(path).map_err(|e| error(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const HEADER: &str = "Report Refresh Date,Report Date,Report Period,Audio/Video,Dial-in Microsoft,Dial-out Microsoft";

    fn report(rows: &str) -> Report {
        report::parse(
            format!("{HEADER}\n{rows}").as_bytes(),
            date!(2024 - 03 - 10),
        )
        .unwrap()
    }

    #[test]
    fn openmetrics_snapshot() {
        // Rows out of order, an empty cell, a label value that needs escaping, a header-only
        // report (no series at all).
        let reports = vec![
            (
                "tenant-1".to_string(),
                report("2024-03-06,2024-03-05,3,10,,1\n2024-03-06,2024-03-03,3,7,2,0\n2024-03-06,2024-03-04,3,0,1,2"),
            ),
            ("we\"ird\\".to_string(), report("2024-03-06,2024-03-05,3,1,2,3")),
            ("empty".to_string(), report("")),
        ];
        insta::assert_snapshot!(render(&reports));
    }

    #[test]
    fn large_counts_and_dates_stay_exact() {
        let text = render(&[(
            "t".into(),
            report(&format!("2024-03-06,2024-03-05,1,{},0,0", u64::MAX)),
        )]);
        let expected = u128::from(u64::MAX) * 60;
        assert!(
            text.contains(&format!(
                "conference_type=\"audio_video\"}} {expected} 1709596800\n"
            )),
            "{text}"
        );
    }

    #[test]
    fn nothing_to_write_is_still_valid_openmetrics() {
        assert_eq!(
            render(&[]),
            format!("# HELP {METRIC} {HELP}\n# TYPE {METRIC} gauge\n# EOF\n")
        );
    }

    #[test]
    fn atomic_write_replaces_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.om");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o644);
        // A directory that does not exist: an error naming the path, nothing left behind.
        let missing = dir.path().join("no/such/dir/history.om");
        let err = write_atomically(&missing, "x").unwrap_err().to_string();
        assert!(err.contains("no/such/dir/history.om"), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
