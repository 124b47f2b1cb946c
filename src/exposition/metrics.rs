//! The published state to the Prometheus text exposition.
//!
//! Each tenant's series are rendered once per refresh of that tenant into a [`Fragment`], cut
//! into metric families; the body is assembled from the fragments so that each family stays
//! contiguous under one HELP and TYPE, and a refresh of one tenant never re-renders the others.
//! A fresh registry per render keeps this a pure function of the state: no series outlives
//! the state it came from, and nothing global is touched.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{Encoder, GaugeVec, IntCounterVec, Opts, Registry, TextEncoder};
use time::Date;

use crate::error::Reason;
use crate::state::{Attempt, ReloadStatus, State};

/// `conference_type` label values, in the order of Graph's columns Audio/Video, Dial-in
/// Microsoft, Dial-out Microsoft.
pub const CONFERENCE_TYPES: [&str; 3] = ["audio_video", "dial_in_microsoft", "dial_out_microsoft"];

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

/// One metric family of a rendered text: its HELP and TYPE lines, and its sample lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub head: String,
    pub samples: String,
}

/// Rendered series cut into families, in name order.
pub type Fragment = Vec<Family>;

/// What the exporter says about itself and its configuration, outside any one tenant.
#[derive(Debug, Clone, Default)]
pub struct Globals<'a> {
    /// `sfb_tenant_info`: tenants that have a name, as (tenant, name).
    pub tenant_names: Vec<(&'a str, &'a str)>,
    pub reload: Option<ReloadStatus>,
}

const PERIOD_ACTIVITY_HELP: &str = "Conference time organized in the tenant over every day of the period's Graph report getSkypeForBusinessOrganizerActivityMinuteCounts, by conference type (the sum of Graph's minutes x 60 over all rows). Values come from a background refresh of the report, not from the scrape: see sfb_refresh_last_success_timestamp_seconds.";

/// The whole exposition for a single tenant, as served without --config.file.
pub fn render(state: &State, build: &BuildInfo) -> Result<String, prometheus::Error> {
    let globals = render_globals(build, &Globals::default())?;
    let tenant = render_tenant(state)?;
    Ok(assemble([&globals, &tenant]))
}

/// The series of the exporter itself: build and tenant info, reload status.
pub fn render_globals(build: &BuildInfo, globals: &Globals) -> Result<Fragment, prometheus::Error> {
    let registry = Registry::new();
    let build_info = gauge(
        &registry,
        "sfb_build_info",
        "A metric with a constant 1 value labelled by the version and the source revision of the exporter.",
        &["version", "revision"],
    )?;
    build_info
        .with_label_values(&[build.version, build.revision])
        .set(1.0);
    let tenant_info = gauge(
        &registry,
        "sfb_tenant_info",
        "A metric with a constant 1 value for each tenant of --config.file that has a name; join on tenant to label series with it.",
        &["tenant", "name"],
    )?;
    for (tenant, name) in &globals.tenant_names {
        tenant_info.with_label_values(&[tenant, name]).set(1.0);
    }
    if let Some(reload) = globals.reload {
        let ok = gauge(
            &registry,
            "sfb_config_last_reload_successful",
            "1 if the last load of --config.file succeeded, else 0.",
            &[],
        )?;
        ok.with_label_values::<&str>(&[])
            .set(if reload.successful { 1.0 } else { 0.0 });
        let at = gauge(
            &registry,
            "sfb_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of --config.file.",
            &[],
        )?;
        at.with_label_values::<&str>(&[])
            .set(reload.last_success.map_or(0.0, unix_seconds));
    }
    encode(&registry)
}

/// One tenant's series.
pub fn render_tenant(state: &State) -> Result<Fragment, prometheus::Error> {
    let registry = Registry::new();
    let per_period = ["tenant", "period"];

    let activity = gauge(
        &registry,
        "sfb_organizer_activity_seconds",
        ACTIVITY_HELP,
        &["tenant", "period", "conference_type"],
    )?;
    let period_activity = gauge(
        &registry,
        "sfb_organizer_activity_period_seconds",
        PERIOD_ACTIVITY_HELP,
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
    let failures = counter(
        &registry,
        "sfb_refresh_failures_total",
        "Failed refreshes of the report, by reason: auth, forbidden, throttled, http, timeout, parse, too_large, network.",
        &["tenant", "period", "reason"],
    )?;
    let graph_requests = counter(
        &registry,
        "sfb_graph_requests_total",
        "HTTP exchanges with the identity platform and Graph, retries included, by stage (token, report, download) and HTTP status code (error: no answer came back).",
        &["tenant", "stage", "code"],
    )?;
    let panics = counter(
        &registry,
        "sfb_refresh_panics_total",
        "Times the refresh task of the report panicked; each is logged as an error, shown in /readyz and followed by a restart after a backoff.",
        &per_period,
    )?;
    let duration = gauge(
        &registry,
        "sfb_refresh_duration_seconds",
        "How long the last refresh of the report took, retry waits included.",
        &per_period,
    )?;

    let tenant = state.tenant.as_str();
    if let Some(not_after) = state.client_certificate_not_after {
        gauge(
            &registry,
            "sfb_client_certificate_expiry_timestamp_seconds",
            "notAfter of the client certificate the exporter signs in with, as a Unix time.",
            &["tenant"],
        )?
        .with_label_values(&[tenant])
        .set(unix_seconds(not_after));
    }
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
        panics.with_label_values(&labels).inc_by(p.panics);
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
        if let Some(t) = &accepted.totals {
            let minutes = [
                t.audio_video_minutes,
                t.dial_in_microsoft_minutes,
                t.dial_out_microsoft_minutes,
            ];
            set_seconds(&period_activity, &labels, minutes.map(|m| m as f64));
        }
        let Some(row) = &accepted.newest else {
            continue;
        };
        report_date
            .with_label_values(&labels)
            .set(midnight_utc(row.report_date));
        refresh_date
            .with_label_values(&labels)
            .set(midnight_utc(row.report_refresh_date));
        let minutes = [
            row.audio_video_minutes,
            row.dial_in_microsoft_minutes,
            row.dial_out_microsoft_minutes,
        ];
        set_seconds(&activity, &labels, minutes.map(|m| m as f64));
    }

    encode(&registry)
}

fn encode(registry: &Registry) -> Result<Fragment, prometheus::Error> {
    let mut out = Vec::with_capacity(4096);
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    let text = String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
    Ok(families(&text))
}

/// Cuts a text exposition into its families; each begins at its `# HELP` line.
fn families(text: &str) -> Fragment {
    let mut out: Fragment = Vec::new();
    for line in text.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().trim_end();
            out.push(Family {
                name: name.to_string(),
                head: String::new(),
                samples: String::new(),
            });
        }
        let Some(family) = out.last_mut() else {
            continue;
        };
        if line.starts_with('#') {
            family.head.push_str(line);
        } else {
            family.samples.push_str(line);
        }
    }
    out
}

/// The exposition from fragments: families in name order, each under one HELP and TYPE with
/// the samples of every fragment in the order given.
pub fn assemble<'a>(fragments: impl IntoIterator<Item = &'a Fragment>) -> String {
    let mut by_name: BTreeMap<&str, (&str, Vec<&str>)> = BTreeMap::new();
    let mut len = 0;
    for family in fragments.into_iter().flatten() {
        len += family.samples.len();
        by_name
            .entry(&family.name)
            .or_insert_with(|| (&family.head, Vec::new()))
            .1
            .push(&family.samples);
    }
    let mut out = String::with_capacity(len + by_name.len() * 256);
    for (head, samples) in by_name.values() {
        out.push_str(head);
        for s in samples {
            out.push_str(s);
        }
    }
    out
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

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()) as Box<dyn Collector>)?;
    Ok(c)
}

/// Sets the `conference_type` series of `gauge` for `[tenant, period]` to Graph's minutes
/// (Audio/Video, Dial-in Microsoft, Dial-out Microsoft) in seconds.
fn set_seconds(gauge: &GaugeVec, [tenant, period]: &[&str; 2], minutes: [f64; 3]) {
    for (kind, minutes) in CONFERENCE_TYPES.into_iter().zip(minutes) {
        gauge
            .with_label_values(&[tenant, period, kind])
            .set(minutes * 60.0);
    }
}

fn midnight_utc(date: Date) -> f64 {
    date.midnight().assume_utc().unix_timestamp() as f64
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Stage;
    use crate::report::Period;
    use crate::report::Totals;
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
            audio_video_minutes: 120,
            dial_in_microsoft_minutes: 30,
            dial_out_microsoft_minutes: 0,
        };
        // D7: healthy.
        *state.periods.get_mut(&Period::D7).unwrap() = PeriodState {
            last_attempt: Some(Attempt::Succeeded),
            last_success: Some(at),
            accepted: Some(Accepted {
                rows: 7,
                newest: Some(row),
                totals: Some(Totals {
                    audio_video_minutes: 840,
                    dial_in_microsoft_minutes: 61,
                    dial_out_microsoft_minutes: 0,
                }),
                etag: None,
            }),
            failures: Default::default(),
            last_duration: Some(Duration::from_millis(120)),
            panics: 0,
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
                totals: Some(Totals {
                    audio_video_minutes: 3600,
                    dial_in_microsoft_minutes: 915,
                    dial_out_microsoft_minutes: 2,
                }),
                etag: None,
            }),
            failures: [(Reason::Parse, 2), (Reason::Throttled, 1)]
                .into_iter()
                .collect(),
            last_duration: Some(Duration::from_millis(2500)),
            panics: 1,
        };
        // D90: header-only report.
        *state.periods.get_mut(&Period::D90).unwrap() = PeriodState {
            last_attempt: Some(Attempt::Succeeded),
            last_success: Some(at),
            accepted: Some(Accepted {
                rows: 0,
                newest: None,
                totals: None,
                etag: None,
            }),
            failures: Default::default(),
            last_duration: Some(Duration::from_millis(120)),
            panics: 0,
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
            "sfb_organizer_activity_period_seconds{",
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
    fn fragments_assemble_into_contiguous_families() {
        let a = render_tenant(&sample_state()).unwrap();
        let b = render_tenant(&State::new("tenant-2", [Period::D7])).unwrap();
        let globals = Globals {
            tenant_names: vec![("tenant-2", "Fabrikam")],
            reload: Some(ReloadStatus {
                successful: true,
                last_success: Some(UNIX_EPOCH + Duration::from_secs(7)),
            }),
        };
        let globals = render_globals(&BUILD, &globals).unwrap();
        let body = assemble([&globals, &a, &b]);
        let helps: Vec<&str> = body.lines().filter(|l| l.starts_with("# HELP")).collect();
        let mut unique = helps.clone();
        unique.dedup();
        assert_eq!(helps, unique, "one HELP per family");
        let failures = body.find("# HELP sfb_refresh_failures_total").unwrap();
        let tenant_2 = body
            .find(r#"sfb_refresh_failures_total{period="D7",reason="auth",tenant="tenant-2"}"#)
            .unwrap();
        let next = body[failures + 1..].find("# HELP").unwrap() + failures + 1;
        assert!(failures < tenant_2 && tenant_2 < next, "{body}");
        assert!(body.contains(r#"sfb_tenant_info{name="Fabrikam",tenant="tenant-2"} 1"#));
        assert!(body.contains("sfb_config_last_reload_successful 1\n"));
        assert!(body.contains("sfb_config_last_reload_success_timestamp_seconds 7\n"));
        assert_eq!(
            render(&sample_state(), &BUILD).unwrap(),
            assemble([&render_globals(&BUILD, &Globals::default()).unwrap(), &a])
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let body = render(&State::new("a\"b\\c\nd", [Period::D7]), &BUILD).unwrap();
        assert!(body.contains(r#"tenant="a\"b\\c\nd""#), "{body}");
    }
}
