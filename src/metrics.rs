//! The published state to the Prometheus text exposition, rendered once per refresh.
//!
//! A fresh registry per render keeps this a pure function of the state: no series outlives
//! the state it came from, and nothing global is touched.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use time::Date;

use crate::error::Reason;
use crate::state::{Attempt, State};

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `sfb_build_info` labels.
#[derive(Debug, Clone)]
pub struct BuildInfo {
    pub version: &'static str,
    pub revision: &'static str,
}

impl BuildInfo {
    pub const CURRENT: BuildInfo = BuildInfo {
        version: env!("CARGO_PKG_VERSION"),
        revision: env!("SFB_REVISION"),
    };
}

const ACTIVITY_HELP: &str = "Conference time organized in the tenant on the newest day of the Graph report getSkypeForBusinessOrganizerActivityMinuteCounts, by conference type (Graph's minutes x 60). Values come from a background refresh of the report, not from the scrape: see sfb_refresh_last_success_timestamp_seconds.";

pub fn render(state: &State, build: &BuildInfo) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let per_period = ["tenant", "period"];

    let activity = gauge(
        &registry,
        "sfb_organizer_activity_seconds",
        ACTIVITY_HELP,
        &["tenant", "period", "conference_type"],
    )?;
    let report_date = gauge(
        &registry,
        "sfb_report_date_timestamp_seconds",
        "Report Date of the newest row of the last accepted report, as the Unix time of its UTC midnight.",
        &per_period,
    )?;
    let refresh_date = gauge(
        &registry,
        "sfb_report_refresh_timestamp_seconds",
        "Report Refresh Date of the newest row of the last accepted report (when Graph last refreshed its data), as the Unix time of its UTC midnight.",
        &per_period,
    )?;
    let rows = gauge(
        &registry,
        "sfb_report_rows",
        "Data rows in the last accepted report; 0 for a header-only report.",
        &per_period,
    )?;
    let success = gauge(
        &registry,
        "sfb_refresh_success",
        "1 if the last refresh of the report succeeded, else 0.",
        &per_period,
    )?;
    let last_success = gauge(
        &registry,
        "sfb_refresh_last_success_timestamp_seconds",
        "Unix time of the last successful refresh of the report.",
        &per_period,
    )?;
    let failures = IntCounterVec::new(
        Opts::new(
            "sfb_refresh_failures_total",
            "Failed refreshes of the report, by reason: auth, forbidden, throttled, http, timeout, parse, too_large, network.",
        ),
        &["tenant", "period", "reason"],
    )?;
    registry.register(Box::new(failures.clone()))?;
    let graph_requests = IntCounterVec::new(
        Opts::new(
            "sfb_graph_requests_total",
            "HTTP exchanges with the identity platform and Graph, retries included, by stage (token, report, download) and HTTP status code (error: no answer came back).",
        ),
        &["tenant", "stage", "code"],
    )?;
    registry.register(Box::new(graph_requests.clone()))?;
    let duration = gauge(
        &registry,
        "sfb_refresh_duration_seconds",
        "How long the last refresh of the report took, retry waits included.",
        &per_period,
    )?;
    let build_info = gauge(
        &registry,
        "sfb_build_info",
        "A metric with a constant 1 value labelled by the version and the source revision of the exporter.",
        &["version", "revision"],
    )?;

    build_info
        .with_label_values(&[build.version, build.revision])
        .set(1.0);
    let tenant = state.tenant.as_str();
    for ((stage, status), count) in &state.graph_requests {
        let code = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        graph_requests
            .with_label_values(&[tenant, stage.label(), code.as_str()])
            .inc_by(*count);
    }
    for (period, p) in &state.periods {
        let labels = [tenant, period.as_str()];
        if let Some(took) = p.last_duration {
            duration.with_label_values(&labels).set(took.as_secs_f64());
        }
        for reason in Reason::ALL {
            let count = p.failures.get(&reason).copied().unwrap_or(0);
            failures
                .with_label_values(&[tenant, period.as_str(), reason.as_str()])
                .inc_by(count);
        }
        if let Some(attempt) = &p.last_attempt {
            let ok = matches!(attempt, Attempt::Succeeded);
            success
                .with_label_values(&labels)
                .set(if ok { 1.0 } else { 0.0 });
        }
        if let Some(at) = p.last_success {
            last_success
                .with_label_values(&labels)
                .set(unix_seconds(at));
        }
        let Some(accepted) = &p.accepted else {
            continue;
        };
        rows.with_label_values(&labels).set(accepted.rows as f64);
        let Some(row) = &accepted.newest else {
            continue;
        };
        report_date
            .with_label_values(&labels)
            .set(midnight_utc(row.report_date));
        refresh_date
            .with_label_values(&labels)
            .set(midnight_utc(row.report_refresh_date));
        for (kind, minutes) in [
            ("audio_video", row.audio_video_minutes),
            ("dial_in_microsoft", row.dial_in_microsoft_minutes),
            ("dial_out_microsoft", row.dial_out_microsoft_minutes),
        ] {
            activity
                .with_label_values(&[tenant, period.as_str(), kind])
                .set(minutes * 60.0);
        }
    }

    let mut out = Vec::with_capacity(4096);
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}

fn gauge(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    let g = GaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()) as Box<dyn Collector>)?;
    Ok(g)
}

fn midnight_utc(date: Date) -> f64 {
    date.midnight().assume_utc().unix_timestamp() as f64
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Stage;
    use crate::report::Period;
    use crate::state::{Accepted, PeriodState};
    use std::time::Duration;
    use time::macros::date;

    const BUILD: BuildInfo = BuildInfo {
        version: "1.2.3",
        revision: "abc123",
    };

    fn sample_state() -> State {
        let mut state = State::new(
            "tenant-1",
            [Period::D7, Period::D30, Period::D90, Period::D180],
        );
        let at = UNIX_EPOCH + Duration::from_secs(1_709_700_000);
        let row = crate::report::Row {
            report_refresh_date: date!(2024 - 03 - 05),
            report_date: date!(2024 - 03 - 04),
            audio_video_minutes: 120.0,
            dial_in_microsoft_minutes: 30.5,
            dial_out_microsoft_minutes: 0.0,
        };
        // D7: healthy.
        *state.periods.get_mut(&Period::D7).unwrap() = PeriodState {
            last_attempt: Some(Attempt::Succeeded),
            last_success: Some(at),
            accepted: Some(Accepted {
                rows: 7,
                newest: Some(row),
                etag: None,
            }),
            failures: Default::default(),
            last_duration: Some(Duration::from_millis(120)),
        };
        // D30: accepted once, then failing: last values kept, success 0.
        *state.periods.get_mut(&Period::D30).unwrap() = PeriodState {
            last_attempt: Some(Attempt::Failed {
                reason: Reason::Parse,
                message: "x".into(),
            }),
            last_success: Some(at),
            accepted: Some(Accepted {
                rows: 30,
                newest: Some(row),
                etag: None,
            }),
            failures: [(Reason::Parse, 2), (Reason::Throttled, 1)]
                .into_iter()
                .collect(),
            last_duration: Some(Duration::from_millis(2500)),
        };
        // D90: header-only report.
        *state.periods.get_mut(&Period::D90).unwrap() = PeriodState {
            last_attempt: Some(Attempt::Succeeded),
            last_success: Some(at),
            accepted: Some(Accepted {
                rows: 0,
                newest: None,
                etag: None,
            }),
            failures: Default::default(),
            last_duration: Some(Duration::from_millis(120)),
        };
        // D180: never refreshed.
        state.graph_requests = [
            ((Stage::Token, Some(200)), 1),
            ((Stage::Report, Some(302)), 3),
            ((Stage::Report, Some(429)), 1),
            ((Stage::Download, None), 1),
        ]
        .into_iter()
        .collect();
        state
    }

    #[test]
    fn exposition_snapshot() {
        insta::assert_snapshot!(render(&sample_state(), &BUILD).unwrap());
    }

    #[test]
    fn fresh_state_has_no_made_up_values() {
        let body = render(&State::new("t", [Period::D7]), &BUILD).unwrap();
        for absent in [
            "sfb_organizer_activity_seconds{",
            "sfb_report_rows{",
            "sfb_refresh_success{",
            "sfb_refresh_last_success_timestamp_seconds{",
        ] {
            assert!(!body.contains(absent), "{absent} in\n{body}");
        }
        assert!(
            body.contains(r#"sfb_refresh_failures_total{period="D7",reason="auth",tenant="t"} 0"#),
            "{body}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let body = render(&State::new("a\"b\\c\nd", [Period::D7]), &BUILD).unwrap();
        assert!(body.contains(r#"tenant="a\"b\\c\nd""#), "{body}");
    }
}
