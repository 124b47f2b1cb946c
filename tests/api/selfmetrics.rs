//! The exporter reports on itself: process_* series, Graph exchanges by status, refresh
//! durations.

use std::io::Read;
use std::time::Duration;

use sfb_exporter::Period;

use crate::helpers::*;
use crate::promtool::promtool_check;

const PROCESS_SERIES: [&str; 6] = [
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
];

fn requests(stage: &str, code: &str) -> String {
    format!(r#"sfb_graph_requests_total{{code="{code}",stage="{stage}",tenant="{TENANT}"}}"#)
}

/// `scenario` started, once D7 has had its first attempt.
async fn started(scenario: Scenario) -> TestApp {
    let app = scenario.spawn().await;
    app.first_attempt(Period::D7).await;
    app
}

#[tokio::test]
async fn process_series_are_on_plain_and_gzip_scrapes_and_pass_promtool() {
    let app = started(Scenario::healthy().await).await;
    let plain = app.metrics().await;
    for name in PROCESS_SERIES {
        let value = sample(&plain, name).unwrap_or_else(|| panic!("{name} missing:\n{plain}"));
        assert!(value >= 0.0, "{name} {value}");
    }
    assert!(sample(&plain, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(sample(&plain, "process_open_fds").unwrap() >= 3.0);
    promtool_check(&plain);

    let zipped = app.get_metrics_gzip().await;
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let bytes = zipped.bytes().await.unwrap();
    let mut unzipped = String::new();
    // One gzip member: curl --compressed and zlib read no further.
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut unzipped)
        .unwrap();
    assert!(unzipped.starts_with("# HELP sfb_"), "{unzipped}");
    for name in PROCESS_SERIES {
        assert!(
            sample(&unzipped, name).is_some(),
            "{name} missing from gzip"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn disable_exporter_metrics_hides_the_process_series() {
    let app = started(Scenario::healthy().await.without_exporter_metrics()).await;
    let body = app.metrics().await;
    assert!(!body.contains("process_"), "{body}");
    assert!(sample(&body, &requests("token", "200")).is_some(), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn every_exchange_is_counted_by_stage_and_code_retries_included() {
    // D30's download host drops the connection: no status came back.
    let dropped = format!("http://{}/reports/D30.csv", dropping_server());
    let app = Scenario::new()
        .await
        .token_ok()
        // One 429 that a retry absorbs, after a Retry-After of one second.
        .report_answers(Period::D7, throttled(Some("1")))
        .first(1)
        .report(Period::D7, ONE_DAY)
        .report_redirects_to(Period::D30, &dropped)
        .periods([Period::D7, Period::D30])
        .max_retries(1)
        .spawn()
        .await;
    let body = app.after_first_attempts(2).await;
    let count = |stage, code| sample(&body, &requests(stage, code));
    assert_eq!(
        count("token", "200"),
        Some(1.0),
        "one token serves both:\n{body}"
    );
    assert_eq!(count("report", "429"), Some(1.0), "{body}");
    // D7's retry and D30's first try and retry.
    assert_eq!(count("report", "302"), Some(3.0), "{body}");
    assert_eq!(count("download", "200"), Some(1.0), "{body}");
    assert_eq!(count("download", "error"), Some(2.0), "{body}");
    assert_eq!(sample(&body, &success(Period::D7)), Some(1.0), "{body}");

    // The retry wait is part of the attempt's duration.
    let d7 = sample(
        &body,
        &per_period("sfb_refresh_duration_seconds", Period::D7),
    )
    .unwrap();
    assert!(d7 >= 1.0, "D7 waited a second for its retry, but took {d7}");
    let d30 = sample(
        &body,
        &per_period("sfb_refresh_duration_seconds", Period::D30),
    );
    assert!(d30.is_some_and(|d| d > 0.0), "{body}");
    promtool_check(&body);
    app.stop().await;
}

#[tokio::test]
async fn a_token_request_that_times_out_counts_as_error() {
    let app = Scenario::new()
        .await
        .token_hangs()
        .timeout(Duration::from_millis(200))
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_eq!(
        sample(&body, &requests("token", "error")),
        Some(1.0),
        "{body}"
    );
    app.stop().await;
}
