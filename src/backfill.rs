//! `sfb-exporter backfill`: every row of one report per tenant as OpenMetrics text with
//! explicit timestamps, for `promtool tsdb create-blocks-from openmetrics`.
//!
//! The live exporter publishes the newest day only; Graph hands over up to 180 days in one
//! report, and backfilling is how Prometheus takes history (a live exposition never carries
//! timestamps).

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::tenants::Tenant;
use crate::error::{RefreshError, Stage};
use crate::exposition::metrics::CONFERENCE_TYPES;
use crate::exposition::writer::{Family, Format, Kind, EOF};
use crate::graph::{Fetched, GraphClient};
use crate::http::Limits;
use crate::http::RetryPolicy;
use crate::report::{self, Period, Report};

pub const METRIC: &str = "sfb_organizer_activity_daily_seconds";

const HELP: &str = "Conference time organized in the tenant on one day of the Graph report getSkypeForBusinessOrganizerActivityMinuteCounts, by conference type (Graph's minutes x 60), timestamped at the day's UTC midnight. Written by sfb-exporter backfill for promtool, never exposed live.";

/// The report request every tenant makes: which period, over which client, within which
/// limits.
pub(crate) struct ReportRequest {
    pub http: reqwest::Client,
    pub timeout: std::time::Duration,
    pub max_body_bytes: u64,
    pub retry: RetryPolicy,
    pub period: Period,
}

impl ReportRequest {
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
        error: RefreshError,
    },
    #[error("cannot write {path:?}: {error}")]
    Write { path: PathBuf, error: io::Error },
    #[error("cannot write to stdout: {0}")]
    Stdout(io::Error),
}

/// Fetches `request.period`'s report once per tenant, one tenant after the other (Graph
/// throttles per tenant, and a daily job has time), and renders them all, each labelled by
/// its tenant ID as the live metrics are. The first failure ends the run: a partial history
/// would look complete.
pub(crate) async fn collect(
    tenants: Vec<Tenant>,
    request: &ReportRequest,
) -> Result<String, BackfillError> {
    let mut reports = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        let label = tenant.id().to_string();
        let graph = GraphClient::for_identity(
            request.http.clone(),
            tenant.identity,
            &tenant.authority,
            tenant.graph,
            request.limits(),
            request.retry.clone(),
        );
        let report =
            fetch(&graph, request.period)
                .await
                .map_err(|error| BackfillError::Report {
                    tenant: label.clone(),
                    period: request.period,
                    error,
                })?;
        tracing::info!(tenant = %label, period = %request.period, rows = report.rows.len(), "report fetched");
        reports.push((label, report));
    }
    Ok(render(&reports))
}

async fn fetch(graph: &GraphClient, period: Period) -> Result<Report, RefreshError> {
    match graph.fetch(period, None).await? {
        Fetched::Body {
            csv, request_id, ..
        } => {
            let today = time::OffsetDateTime::now_utc().date();
            report::parse(&csv, today).map_err(|e| RefreshError::from(e).after_report(&request_id))
        }
        Fetched::NotModified => Err(RefreshError::Http {
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
pub(crate) fn render(reports: &[(String, Report)]) -> String {
    let mut family = Family::new(Format::OpenMetrics, METRIC, HELP, Kind::Gauge);
    for (tenant, report) in reports {
        let mut rows: Vec<_> = report.rows.iter().collect();
        rows.sort_by_key(|row| row.report_date);
        for (i, kind) in CONFERENCE_TYPES.into_iter().enumerate() {
            let labels = [("tenant", tenant.as_str()), ("conference_type", kind)];
            for row in &rows {
                let at = row.report_date.midnight().assume_utc().unix_timestamp();
                family.sample_at(&labels, u128::from(row.minutes()[i]) * 60, at);
            }
        }
    }
    let mut out = String::with_capacity(family.head.len() + family.samples.len() + EOF.len());
    family.write_to(&mut out);
    out.push_str(EOF);
    out
}

/// Writes `text` where `--output` says: standard output without it or for `-`; a FIFO or a
/// character device (a terminal, /dev/null, a pipe named by /proc/self/fd/1) is written to
/// as it is, never replaced; a file is replaced whole (see [`replace`]), through any symlink
/// to it, which stays a link. Every write, flush and close error is reported: a full disk
/// must not look like a finished backfill.
pub fn write_output(output: Option<&Path>, text: &str) -> Result<(), BackfillError> {
    let path = match output {
        Some(path) if path.as_os_str() != "-" => path,
        _ => {
            let mut stdout = std::io::stdout().lock();
            return stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(BackfillError::Stdout);
        }
    };
    let error = |error| BackfillError::Write {
        path: path.to_path_buf(),
        error,
    };
    let write = |file: &mut File| file.write_all(text.as_bytes());
    // metadata follows symlinks: this is the kind of what the path finally names.
    match std::fs::metadata(path) {
        Ok(meta) => {
            let kind = meta.file_type();
            if kind.is_fifo() || kind.is_char_device() {
                write_through(path, write).map_err(error)
            } else if kind.is_file() {
                // The file itself is replaced, in its own directory: a rename over the link
                // would turn the link into a file.
                let target = std::fs::canonicalize(path).map_err(error)?;
                // The file it replaces keeps its permissions: a 0600 file stays private.
                let mode = meta.permissions().mode() & 0o7777;
                replace(&target, mode, write).map_err(error)
            } else if kind.is_dir() {
                Err(error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a directory: name the file to write",
                )))
            } else {
                Err(error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "is a socket or a block device: name a file, a FIFO or a character device",
                )))
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Readable by others, as a file written plainly would be: promtool often runs as
            // another user (another container) than the one that writes.
            replace(&end_of_links(path).map_err(error)?, 0o644, write).map_err(error)
        }
        Err(e) => Err(error(e)),
    }
}

/// Opens what `path` names for writing, as a shell redirection does (a FIFO waits for its
/// reader), and writes; the close is checked too.
fn write_through(path: &Path, write: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut file = OpenOptions::new()
        .write(true)
        // A terminal must not become the controlling terminal of a process that has none.
        .custom_flags(libc::O_NOCTTY)
        .open(path)?;
    write(&mut file)?;
    file.flush()?;
    let fd = file.into_raw_fd();
    // SAFETY: fd was just taken out of the File, so it is open and closed exactly once here.
    if unsafe { libc::close(fd) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `path` through a temporary file in the same directory, renamed over it once
/// complete and on disk: a reader (or promtool) never sees half a file, and a failure leaves
/// the previous file as it was and no temporary file behind. The new file has `mode`; being a
/// new file, it has the writer's owner and no other hard links.
fn replace(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".sfb-backfill-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    // On any error the temporary file is dropped, which deletes it.
    write(file.as_file_mut())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    // The rename is on disk only once the directory is: until then a crash could bring the
    // old file back after the command reported success.
    File::open(dir)?.sync_all()
}

/// Where a path that names nothing yet leads: itself, or the end of the chain of symlinks
/// that starts there and points at nothing (the file to create).
fn end_of_links(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    // As many links as the kernel follows before it says ELOOP.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = std::fs::read_link(&path)?;
                // A relative target is relative to the link's directory.
                path = match path.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            _ => return Ok(path),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
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

    /// The names in `dir`, sorted: a temporary file left behind shows here.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_file_or_a_new_path_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.om");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_output(Some(&path), "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            mode.mode() & 0o777,
            0o600,
            "the replaced file keeps its mode"
        );
        let fresh = dir.path().join("fresh.om");
        write_output(Some(&fresh), "fresh\n").unwrap();
        assert_eq!(std::fs::read_to_string(&fresh).unwrap(), "fresh\n");
        let mode = std::fs::metadata(&fresh).unwrap().permissions();
        assert_eq!(
            mode.mode() & 0o777,
            0o644,
            "a new file is readable by promtool's user"
        );
        // A directory that does not exist: an error naming the path, nothing left behind.
        let missing = dir.path().join("no/such/dir/history.om");
        let err = write_output(Some(&missing), "x").unwrap_err().to_string();
        assert!(err.contains("no/such/dir/history.om"), "{err}");
        assert_eq!(names(dir.path()), ["fresh.om", "history.om"]);
        let err = write_output(Some(dir.path()), "x").unwrap_err().to_string();
        assert!(
            err.ends_with("is a directory: name the file to write"),
            "{err}"
        );
    }

    #[test]
    fn a_write_error_keeps_the_old_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.om");
        std::fs::write(&path, "old").unwrap();
        let full = replace(&path, 0o644, |file| {
            file.write_all(b"half of it")?;
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        })
        .unwrap_err();
        assert_eq!(full.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        assert_eq!(names(dir.path()), ["history.om"]);
    }

    #[test]
    fn a_symlink_stays_a_link_and_its_file_is_replaced_in_its_own_directory() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("history.om"), "old").unwrap();
        // A chain of two links, the last one relative to its own directory.
        symlink("data/history.om", dir.path().join("link")).unwrap();
        symlink(dir.path().join("link"), dir.path().join("link-to-link")).unwrap();
        write_output(Some(&dir.path().join("link-to-link")), "new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join("history.om")).unwrap(),
            "new\n"
        );
        for (link, target) in [
            ("link", PathBuf::from("data/history.om")),
            ("link-to-link", dir.path().join("link")),
        ] {
            assert_eq!(std::fs::read_link(dir.path().join(link)).unwrap(), target);
        }
        assert_eq!(names(&data), ["history.om"]);
        assert_eq!(names(dir.path()), ["data", "link", "link-to-link"]);
        // A link to nothing yet: the file it names is created, the link kept.
        symlink("data/new.om", dir.path().join("dangling")).unwrap();
        write_output(Some(&dir.path().join("dangling")), "created\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(data.join("new.om")).unwrap(),
            "created\n"
        );
        assert!(std::fs::symlink_metadata(dir.path().join("dangling"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_fifo_is_written_to_and_stays_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        crate::files::make_fifo(&fifo);
        let reading = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read_to_string(reading).unwrap());
        write_output(Some(&fifo), "through the pipe\n").unwrap();
        assert_eq!(reader.join().unwrap(), "through the pipe\n");
        let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(kind.is_fifo());
        assert_eq!(names(dir.path()), ["fifo"]);
    }

    #[test]
    fn a_full_device_is_an_error_and_stays_a_device() {
        // Through a link in a directory of the test's own, so that nothing in /dev could be
        // touched if this ever regressed.
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("full");
        std::os::unix::fs::symlink("/dev/full", &link).unwrap();
        let err = write_output(Some(&link), "no room\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("No space left on device"), "{err}");
        assert_eq!(err.lines().count(), 1);
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/full"));
        assert_eq!(names(dir.path()), ["full"]);
    }
}
