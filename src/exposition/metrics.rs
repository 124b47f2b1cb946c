//! The published state to the Prometheus text exposition.
//!
//! Each tenant's series are rendered once per refresh of that tenant into a [`Fragment`], cut
//! into metric families; the body is assembled from the fragments so that each family stays
//! contiguous under one HELP and TYPE, and a refresh of one tenant never re-renders the others.
//! A tenant's fragment is a pure function of its state, written by [`crate::exposition::writer`]
//! in the order the `prometheus` crate's registry would gather it (series by label values,
//! label names in order); the exporter's own series are a registry of their own ([`Globals`]).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{GaugeVec, Opts, Registry};
use time::Date;

use crate::error::Reason;
use crate::exposition::writer::{Family, Format, Kind};
use crate::state::{Attempt, PeriodState, ReloadStatus, State};

/// `conference_type` label values, in the order of Graph's columns Audio/Video, Dial-in
/// Microsoft, Dial-out Microsoft.
pub(crate) const CONFERENCE_TYPES: [&str; 3] =
    ["audio_video", "dial_in_microsoft", "dial_out_microsoft"];

pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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

const PERIOD_ACTIVITY_HELP: &str = "Conference time organized in the tenant over every day of the period's Graph report getSkypeForBusinessOrganizerActivityMinuteCounts, by conference type (the sum of Graph's minutes x 60 over all rows). Values come from a background refresh of the report, not from the scrape: see sfb_refresh_last_success_timestamp_seconds.";

/// Rendered series cut into families, in name order; a family without samples is left out.
pub(crate) type Fragment = Vec<Family>;

/// The whole exposition for a single tenant, as served without --config.file.
pub fn render(state: &State, build: &BuildInfo) -> String {
    assemble([&Globals::new(build).render(), &render_tenant(state)])
}

/// What the exporter says about itself and its configuration, outside any one tenant: build
/// and tenant info, reload status. Registered once and kept up to date as things change, so
/// that an assembly only gathers them.
pub(crate) struct Globals {
    registry: Registry,
    tenant_info: GaugeVec,
    reload_successful: GaugeVec,
    reload_success_timestamp: GaugeVec,
}

impl Globals {
    pub(crate) fn new(build: &BuildInfo) -> Globals {
        let registry = Registry::new();
        let build_info = gauge(
            &registry,
            "sfb_build_info",
            "A metric with a constant 1 value labelled by the version and the source revision of the exporter.",
            &["version", "revision"],
        );
        build_info
            .with_label_values(&[build.version, build.revision])
            .set(1.0);
        // The reload series have no labels; as vectors they stay out of the exposition until
        // the first load of --config.file sets them.
        Globals {
            tenant_info: gauge(
                &registry,
                "sfb_tenant_info",
                "A metric with a constant 1 value for each tenant of --config.file that has a name; join on tenant to label series with it.",
                &["tenant", "name"],
            ),
            reload_successful: gauge(
                &registry,
                "sfb_config_last_reload_successful",
                "1 if the last load of --config.file succeeded, else 0.",
                &[],
            ),
            reload_success_timestamp: gauge(
                &registry,
                "sfb_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful load of --config.file.",
                &[],
            ),
            registry,
        }
    }

    pub(crate) fn set_reload(&self, status: ReloadStatus) {
        let successful = if status.successful { 1.0 } else { 0.0 };
        let at = status.last_success.map_or(0.0, unix_seconds);
        self.reload_successful
            .with_label_values::<&str>(&[])
            .set(successful);
        self.reload_success_timestamp
            .with_label_values::<&str>(&[])
            .set(at);
    }

    /// `tenant` was named `old` in sfb_tenant_info and is named `new` from now on.
    pub(crate) fn rename(&self, tenant: &str, old: Option<&str>, new: Option<&str>) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            // Set when the tenant took that name; an error would only say it is gone already.
            let _ = self.tenant_info.remove_label_values(&[tenant, old]);
        }
        if let Some(new) = new {
            self.tenant_info.with_label_values(&[tenant, new]).set(1.0);
        }
    }

    /// The series as they are now.
    pub(crate) fn render(&self) -> Fragment {
        self.registry
            .gather()
            .iter()
            .map(|gathered| {
                // Globals registers gauges only.
                let mut family =
                    Family::new(Format::Text, gathered.name(), gathered.help(), Kind::Gauge);
                for metric in gathered.get_metric() {
                    let labels: Vec<(&str, &str)> = metric
                        .get_label()
                        .iter()
                        .map(|pair| (pair.name(), pair.value()))
                        .collect();
                    family.sample(&labels, metric.get_gauge().get_value());
                }
                family
            })
            .collect()
    }
}

/// A gauge vector registered in `registry`. The names are constants, so an error here is a
/// bug every test shows at once, never something input can cause.
fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let gauge = GaugeVec::new(Opts::new(name, help), labels).expect("a valid metric definition");
    registry
        .register(Box::new(gauge.clone()))
        .expect("each metric registered once");
    gauge
}

/// One tenant's series.
pub(crate) fn render_tenant(state: &State) -> Fragment {
    let tenant = state.tenant.as_str();
    let family = |name, help, kind| Family::new(Format::Text, name, help, kind);
    // Series go out sorted by their label values, label names in order, as a registry gathers
    // them: "D180" < "D30" < "D7" < "D90", "200" < "error", "auth" < "forbidden" < ...
    let mut periods: Vec<(&str, &PeriodState)> =
        state.periods.iter().map(|(p, s)| (p.as_str(), s)).collect();
    periods.sort_unstable_by_key(|(period, _)| *period);
    let mut reasons = Reason::ALL;
    reasons.sort_unstable_by_key(|r| r.as_str());

    let mut certificate = family(
        "sfb_client_certificate_expiry_timestamp_seconds",
        "notAfter of the client certificate the exporter signs in with, as a Unix time.",
        Kind::Gauge,
    );
    if let Some(not_after) = state.client_certificate_not_after {
        certificate.sample(&[("tenant", tenant)], unix_seconds(not_after));
    }

    let mut graph_requests = family(
        "sfb_graph_requests_total",
        "HTTP exchanges with the identity platform and Graph, retries included, by stage (token, report, download) and HTTP status code (error: no answer came back).",
        Kind::Counter,
    );
    let mut requests: Vec<(String, &str, u64)> = state
        .graph_requests
        .iter()
        .map(|((stage, status), count)| {
            let code = status.map_or_else(|| "error".to_string(), |s| s.to_string());
            (code, stage.label(), *count)
        })
        .collect();
    requests.sort_unstable();
    for (code, stage, count) in requests {
        graph_requests.sample(
            &[("code", &code), ("stage", stage), ("tenant", tenant)],
            count,
        );
    }

    let mut period_activity = family(
        "sfb_organizer_activity_period_seconds",
        PERIOD_ACTIVITY_HELP,
        Kind::Gauge,
    );
    let mut activity = family("sfb_organizer_activity_seconds", ACTIVITY_HELP, Kind::Gauge);
    for (i, kind) in CONFERENCE_TYPES.into_iter().enumerate() {
        for (period, p) in &periods {
            let Some(accepted) = &p.accepted else {
                continue;
            };
            let labels = [
                ("conference_type", kind),
                ("period", period),
                ("tenant", tenant),
            ];
            if let Some(totals) = &accepted.totals {
                period_activity.sample(&labels, totals.minutes()[i] as f64 * 60.0);
            }
            if let Some(row) = &accepted.newest {
                activity.sample(&labels, row.minutes()[i] as f64 * 60.0);
            }
        }
    }

    let mut duration = family(
        "sfb_refresh_duration_seconds",
        "How long the last refresh of the report took, retry waits included.",
        Kind::Gauge,
    );
    let mut failures = family(
        "sfb_refresh_failures_total",
        "Failed refreshes of the report, by reason: auth, forbidden, throttled, http, timeout, parse, too_large, network.",
        Kind::Counter,
    );
    let mut last_success = family(
        "sfb_refresh_last_success_timestamp_seconds",
        "Unix time of the last successful refresh of the report.",
        Kind::Gauge,
    );
    let mut panics = family(
        "sfb_refresh_panics_total",
        "Times the refresh task of the report panicked; each is logged as an error, shown in /readyz and followed by a restart after a backoff.",
        Kind::Counter,
    );
    let mut success = family(
        "sfb_refresh_success",
        "1 if the last refresh of the report succeeded, else 0.",
        Kind::Gauge,
    );
    let mut report_date = family(
        "sfb_report_date_timestamp_seconds",
        "Report Date of the newest row of the last accepted report, as the Unix time of its UTC midnight.",
        Kind::Gauge,
    );
    let mut refresh_date = family(
        "sfb_report_refresh_timestamp_seconds",
        "Report Refresh Date of the newest row of the last accepted report (when Graph last refreshed its data), as the Unix time of its UTC midnight.",
        Kind::Gauge,
    );
    let mut rows = family(
        "sfb_report_rows",
        "Data rows in the last accepted report; 0 for a header-only report.",
        Kind::Gauge,
    );
    for (period, p) in &periods {
        let labels = [("period", *period), ("tenant", tenant)];
        if let Some(took) = p.last_duration {
            duration.sample(&labels, took.as_secs_f64());
        }
        for reason in reasons {
            let count = p.failures.get(&reason).copied().unwrap_or(0);
            let labels = [
                ("period", *period),
                ("reason", reason.as_str()),
                ("tenant", tenant),
            ];
            failures.sample(&labels, count);
        }
        if let Some(at) = p.last_success {
            last_success.sample(&labels, unix_seconds(at));
        }
        panics.sample(&labels, p.panics);
        if let Some(attempt) = &p.last_attempt {
            let ok = matches!(attempt, Attempt::Succeeded);
            success.sample(&labels, if ok { 1.0 } else { 0.0 });
        }
        let Some(accepted) = &p.accepted else {
            continue;
        };
        if let Some(row) = &accepted.newest {
            report_date.sample(&labels, midnight_utc(row.report_date));
            refresh_date.sample(&labels, midnight_utc(row.report_refresh_date));
        }
        rows.sample(&labels, accepted.rows as u64);
    }

    [
        certificate,
        graph_requests,
        period_activity,
        activity,
        duration,
        failures,
        last_success,
        panics,
        success,
        report_date,
        refresh_date,
        rows,
    ]
    .into_iter()
    .filter(|f| !f.is_empty())
    .collect()
}

/// The exposition from fragments: families in name order, each under one HELP and TYPE with
/// the samples of every fragment in the order given.
pub(crate) fn assemble<'a>(fragments: impl IntoIterator<Item = &'a Fragment>) -> String {
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
        insta::assert_snapshot!(render(&sample_state(), &BUILD));
    }

    #[test]
    fn fresh_state_has_no_made_up_values() {
        let body = render(&State::new("t", [Period::D7]), &BUILD);
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
        let a = render_tenant(&sample_state());
        let b = render_tenant(&State::new("tenant-2", [Period::D7]));
        let globals = Globals::new(&BUILD);
        globals.rename("tenant-2", None, Some("Fabrikam"));
        globals.set_reload(ReloadStatus {
            successful: true,
            last_success: Some(UNIX_EPOCH + Duration::from_secs(7)),
        });
        let body = assemble([&globals.render(), &a, &b]);
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
            render(&sample_state(), &BUILD),
            assemble([&Globals::new(&BUILD).render(), &a])
        );
    }

    #[test]
    fn tenant_info_follows_renames_and_a_reload_shows_once_set() {
        let globals = Globals::new(&BUILD);
        let body = assemble([&globals.render()]);
        assert!(
            !body.contains("sfb_tenant_info") && !body.contains("reload"),
            "{body}"
        );
        globals.rename("t", None, Some("Fabrikam"));
        globals.rename("t", Some("Fabrikam"), Some("Contoso"));
        globals.rename("u", None, Some("Contoso"));
        let body = assemble([&globals.render()]);
        assert!(!body.contains("Fabrikam"), "{body}");
        assert!(
            body.contains("sfb_tenant_info{name=\"Contoso\",tenant=\"t\"} 1\nsfb_tenant_info{name=\"Contoso\",tenant=\"u\"} 1\n"),
            "{body}"
        );
        globals.rename("t", Some("Contoso"), None);
        globals.rename("u", Some("Contoso"), None);
        globals.set_reload(ReloadStatus {
            successful: false,
            last_success: None,
        });
        let body = assemble([&globals.render()]);
        assert!(!body.contains("sfb_tenant_info"), "{body}");
        assert!(
            body.contains("sfb_config_last_reload_successful 0\n"),
            "{body}"
        );
        assert!(
            body.contains("sfb_config_last_reload_success_timestamp_seconds 0\n"),
            "{body}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let body = render(&State::new("a\"b\\c\nd", [Period::D7]), &BUILD);
        assert!(body.contains(r#"tenant="a\"b\\c\nd""#), "{body}");
    }
}
