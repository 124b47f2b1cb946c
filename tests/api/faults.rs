//! Fault injection: what Graph and the identity platform do in practice, and what the exporter
//! makes of it, asserted on /metrics, on logs and on time.

use std::time::{Duration, Instant};

use sfb_exporter::Period;
use wiremock::ResponseTemplate;

use crate::helpers::*;
use crate::process::{exporter_against, Process};

async fn report_requests(app: &TestApp) -> usize {
    app.requests_to(&app.graph, "/v1.0/reports/").await.len()
}

#[tokio::test]
async fn throttling_waits_retry_after_then_succeeds_within_the_cycle() {
    let scenario = Scenario::new()
        .await
        .token_ok()
        .report_answers(Period::D7, throttled(Some("1")))
        .first(2)
        .report(Period::D7, ONE_DAY);
    let started = Instant::now();
    let app = scenario.spawn().await;
    let body = app.first_attempt(Period::D7).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After not honoured"
    );
    assert_sample(&body, &success(Period::D7), Some(1.0));
    assert_sample(&body, &failures(Period::D7, "throttled"), Some(0.0));
    assert_eq!(report_requests(&app).await, 3);
    app.stop().await;
}

#[tokio::test]
async fn persistent_throttling_is_counted_once_when_the_cycle_gives_up() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report_answers(Period::D7, throttled(Some("0")))
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &failures(Period::D7, "throttled"), Some(1.0));
    assert_eq!(report_requests(&app).await, 4, "one try and three retries");
    app.stop().await;
}

#[tokio::test]
async fn throttling_without_retry_after_backs_off_and_a_long_retry_after_gives_up() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report_answers(Period::D7, throttled(None))
        .first(1)
        .report(Period::D7, ONE_DAY)
        .report_answers(Period::D30, throttled(Some("3600")))
        .periods([Period::D7, Period::D30])
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &success(Period::D7), Some(1.0));
    let body = app.first_attempt(Period::D30).await;
    assert_sample(&body, &failures(Period::D30, "throttled"), Some(1.0));
    let d30 = app.requests_to(&app.graph, "(period='D30')").await.len();
    assert_eq!(
        d30, 1,
        "a Retry-After beyond the policy's limit ends the cycle at once"
    );
    app.stop().await;
}

#[tokio::test]
async fn transient_server_errors_are_retried_with_backoff() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report_answers(Period::D7, ResponseTemplate::new(503))
        .first(1)
        .report_answers(Period::D7, ResponseTemplate::new(504))
        .first(1)
        .report(Period::D7, ONE_DAY)
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &success(Period::D7), Some(1.0));
    assert_sample(&body, &failures(Period::D7, "http"), Some(0.0));
    assert_eq!(report_requests(&app).await, 3);
    app.stop().await;
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report_answers(Period::D7, ResponseTemplate::new(400))
        .report_answers(Period::D30, ResponseTemplate::new(403))
        .periods([Period::D7, Period::D30])
        .spawn()
        .await;
    let body = app.after_first_attempts(2).await;
    assert_sample(&body, &failures(Period::D7, "http"), Some(1.0));
    assert_sample(&body, &failures(Period::D30, "forbidden"), Some(1.0));
    // An attempt's retries all come before its outcome is published: a wrong retry has been
    // asked for by now, and the exporter counted each answer it had.
    assert_eq!(report_requests(&app).await, 2);
    for code in ["400", "403"] {
        let answers = format!(
            r#"sfb_graph_requests_total{{code="{code}",stage="report",tenant="{TENANT}"}}"#
        );
        assert_sample(&body, &answers, Some(1.0));
    }
    app.stop().await;
}

#[tokio::test]
async fn connection_errors_are_retried_then_counted_as_network() {
    let closed = dropping_server();
    let app = Scenario::new()
        .await
        .token_ok()
        .report_redirects_to(Period::D7, &format!("http://{closed}/r.csv?{DOWNLOAD_SIG}"))
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &failures(Period::D7, "network"), Some(1.0));
    assert_eq!(
        report_requests(&app).await,
        4,
        "each retry asks for a fresh download URL"
    );
    let (_, readyz) = app.readyz().await;
    let error = readyz["periods"]["D7"]["last_error"].as_str().unwrap();
    assert!(
        !error.contains(DOWNLOAD_SIG) && !error.contains(&closed.to_string()),
        "{error}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refused_download_is_retried_with_a_fresh_url() {
    let app = Scenario::healthy()
        .await
        .download_answers(
            Period::D7,
            ResponseTemplate::new(403).set_body_string("AuthenticationFailed: signature expired"),
        )
        .first(1)
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &success(Period::D7), Some(1.0));
    assert_sample(&body, &failures(Period::D7, "forbidden"), Some(0.0));
    assert_eq!(
        report_requests(&app).await,
        2,
        "the retry asked Graph for a new URL"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_missing_permission_reported_as_401_is_forbidden_not_a_token_problem() {
    let app = Scenario::new()
        .await
        .token_ok()
        .expect(1)
        .report_answers(
            Period::D7,
            ResponseTemplate::new(401).set_body_json(serde_json::json!(
                {"error": {"code": "S2SUnauthorized", "message": "Invalid scope claims/roles."}})),
        )
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &failures(Period::D7, "forbidden"), Some(1.0));
    assert_eq!(report_requests(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn failures_after_the_redirect_carry_the_report_request_id() {
    let scenario = Scenario::new().await;
    let location = scenario.download_url(Period::D7);
    let app = scenario
        .token_ok()
        .report_answers(
            Period::D7,
            ResponseTemplate::new(302)
                .insert_header("location", location.as_str())
                .insert_header("request-id", "rid-302"),
        )
        .download(Period::D7, "<html>not a report</html>")
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &failures(Period::D7, "parse"), Some(1.0));
    let (_, readyz) = app.readyz().await;
    let error = readyz["periods"]["D7"]["last_error"].as_str().unwrap();
    assert!(error.contains("report request-id rid-302"), "{error}");
    app.stop().await;
}

#[tokio::test]
async fn one_failed_token_request_answers_every_period_waiting_for_it() {
    let app = Scenario::new()
        .await
        .token_hangs()
        .periods(Period::ALL)
        .timeout(Duration::from_secs(1))
        .spawn()
        .await;
    let body = app.after_first_attempts(4).await;
    for period in Period::ALL {
        assert_eq!(
            sample(&body, &failures(period, "timeout")),
            Some(1.0),
            "{period}: {body}"
        );
    }
    assert_eq!(
        app.requests_to(&app.graph, "/oauth2/v2.0/token")
            .await
            .len(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn a_second_401_is_an_auth_failure() {
    let app = Scenario::new()
        .await
        .token_ok()
        .expect(2)
        .report_answers(Period::D7, ResponseTemplate::new(401))
        .spawn()
        .await;
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &failures(Period::D7, "auth"), Some(1.0));
    assert_eq!(report_requests(&app).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_hung_graph_times_out_without_delaying_scrapes_or_other_periods() {
    let scenario = Scenario::new()
        .await
        .token_ok()
        .report(Period::D30, ONE_DAY)
        .redirect(Period::D7)
        .download_answers(
            Period::D7,
            ResponseTemplate::new(200)
                .set_body_string(ONE_DAY)
                .set_delay(Duration::from_secs(60)),
        )
        .periods([Period::D7, Period::D30])
        .timeout(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let app = scenario.spawn().await;

    let body = app.first_attempt(Period::D30).await;
    assert_sample(&body, &success(Period::D30), Some(1.0));
    assert_eq!(
        sample(&body, &success(Period::D7)),
        None,
        "D7 is still hanging: {body}"
    );
    let hanging = eventually(|| async {
        !app.requests_to(&app.download, "/reports/D7.csv")
            .await
            .is_empty()
    })
    .await;
    assert!(hanging, "D7's download never started");
    // From here on only D7's download is out, and it hangs on the fake's own (real) clock: the
    // exporter's time is paused, so it moves only while the exporter and the test wait on
    // timers, and what these bounds measure is waiting, however slow the machine.
    tokio::time::pause();
    let paused = tokio::time::Instant::now();
    // Scrapes and health checks answer at once while D7 hangs.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let asked = tokio::time::Instant::now();
        app.get(path).await;
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            asked.elapsed()
        );
    }
    let (_, readyz) = app.readyz().await;
    assert_eq!(
        readyz["periods"]["D7"]["state"], "pending",
        "answered only once D7 was done: {readyz}"
    );
    let body = app.first_attempt(Period::D7).await;
    assert_sample(&body, &failures(Period::D7, "timeout"), Some(1.0));
    // At least the timeout after D7 began, and within the timeout (and a poll) of the pause,
    // since D7 began before it: the 60 s hang was cut short.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(5), "{elapsed:?}");
    let waited = paused.elapsed();
    assert!(waited < Duration::from_secs(6), "{waited:?}");
    app.stop().await;
}

#[tokio::test]
async fn bodies_past_the_size_cap_are_refused() {
    let big = format!("{ONE_DAY}{}", "2024-03-05,2024-03-03,7,1,2,3\n".repeat(200));
    let app = Scenario::new()
        .await
        .token_ok()
        .report(Period::D7, big.clone())
        .report_answers(Period::D30, ResponseTemplate::new(200).set_body_string(big))
        .periods([Period::D7, Period::D30])
        .max_body_bytes(2048)
        .spawn()
        .await;
    let body = app.after_first_attempts(2).await;
    assert_sample(&body, &failures(Period::D7, "too_large"), Some(1.0));
    assert_sample(&body, &failures(Period::D30, "too_large"), Some(1.0));
    app.stop().await;
}

#[tokio::test]
async fn only_one_redirect_hop_is_followed() {
    let scenario = Scenario::new().await;
    let itself = scenario.download_url(Period::D7);
    let app = scenario
        .token_ok()
        // D7: the download redirects again, to itself.
        .redirect(Period::D7)
        .download_answers(
            Period::D7,
            ResponseTemplate::new(302).insert_header("location", itself.as_str()),
        )
        // D30: a redirect without Location.
        .report_answers(Period::D30, ResponseTemplate::new(302))
        .periods([Period::D7, Period::D30])
        .spawn()
        .await;
    let body = app.after_first_attempts(2).await;
    assert_sample(&body, &failures(Period::D7, "http"), Some(1.0));
    assert_sample(&body, &failures(Period::D30, "http"), Some(1.0));
    assert_eq!(
        app.requests_to(&app.download, "/reports/").await.len(),
        1,
        "no loop"
    );
    let (_, readyz) = app.readyz().await;
    let d7 = readyz["periods"]["D7"]["last_error"].as_str().unwrap();
    assert!(d7.contains("second redirect"), "{d7}");
    let d30 = readyz["periods"]["D30"]["last_error"].as_str().unwrap();
    assert!(d30.contains("without a usable Location"), "{d30}");
    app.stop().await;
}

#[tokio::test]
async fn bad_bodies_are_rejected_whole_and_leave_other_periods_alone() {
    let sign_in = "<!DOCTYPE html><html><head><title>Sign in to your account</title></head></html>";
    let garbage: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let missing_column = "Report Refresh Date,Report Date,Audio/Video,Dial-in Microsoft\n2024-03-05,2024-03-04,1,2\n";
    let app = Scenario::new()
        .await
        .token_ok()
        .report(Period::D7, sign_in)
        .report(Period::D30, garbage)
        .report(Period::D90, missing_column)
        .report(Period::D180, ONE_DAY)
        .periods(Period::ALL)
        .spawn()
        .await;
    let body = app.after_first_attempts(4).await;
    for period in [Period::D7, Period::D30, Period::D90] {
        assert_eq!(
            sample(&body, &failures(period, "parse")),
            Some(1.0),
            "{period}: {body}"
        );
        assert_sample(&body, &per_period("sfb_report_rows", period), None);
    }
    assert_sample(&body, &success(Period::D180), Some(1.0));
    assert_sample(
        &body,
        &per_period("sfb_report_rows", Period::D180),
        Some(1.0),
    );
    app.stop().await;
}

#[tokio::test]
async fn impossible_reports_are_rejected_naming_row_column_and_value() {
    let cases = [
        (
            Period::D7,
            format!("{ONE_DAY}2099-01-02,2099-01-01,7,1,2,3\n"),
            "line 3: Report Date \"2099-01-01\" is more than one day after today",
        ),
        (
            Period::D30,
            format!("{ONE_DAY}2024-03-05,2024-03-04,7,9,2,3\n"),
            "line 3: Report Date \"2024-03-04\" repeats the Report Date of line 2",
        ),
        (
            Period::D90,
            format!("{HEADER}\n2024-03-05,2024-03-04,7,-0,2,3\n"),
            "line 2: Audio/Video \"-0\" is not an unsigned decimal integer of minutes",
        ),
        (
            Period::D180,
            format!("{HEADER},Audio/Video\n2024-03-05,2024-03-04,7,1,2,3,4\n"),
            "line 1: column \"Audio/Video\" is named twice in the header (fields 4 and 7)",
        ),
    ];
    let scenario = Scenario::new().await.token_ok().periods(Period::ALL);
    let app = cases
        .iter()
        .fold(scenario, |s, (period, csv, _)| {
            s.report(*period, csv.as_str())
        })
        .spawn()
        .await;
    let body = app.after_first_attempts(4).await;
    let (_, readyz) = app.readyz().await;
    for (period, _, message) in &cases {
        assert_eq!(
            sample(&body, &failures(period, "parse")),
            Some(1.0),
            "{period}: {body}"
        );
        assert_sample(&body, &per_period("sfb_report_rows", period), None);
        let error = readyz["periods"][period.as_str()]["last_error"]
            .as_str()
            .unwrap();
        assert!(error.contains(message), "{period}: {error}");
    }
    app.stop().await;
}

fn count(lines: &[serde_json::Value], message: &str) -> usize {
    lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
        })
        .count()
}

#[tokio::test]
async fn secrets_never_appear_in_logs_even_at_debug_level() {
    // D7: the download fails; D30: the download host refuses connections; D90: it hangs past
    // the timeout; D180: all good. Each error path sees the token or the download URL.
    let closed = dropping_server();
    let fakes = Scenario::new()
        .await
        .token_ok()
        .redirect(Period::D7)
        .download_answers(Period::D7, ResponseTemplate::new(500))
        .report_redirects_to(
            Period::D30,
            &format!("http://{closed}/r.csv?{DOWNLOAD_SIG}"),
        )
        .redirect(Period::D90)
        .download_answers(
            Period::D90,
            ResponseTemplate::new(200).set_delay(Duration::from_secs(30)),
        )
        .report(Period::D180, ONE_DAY)
        .servers()
        .await;

    let mut process = Process::spawn(&mut exporter_against(
        &fakes.graph.uri(),
        &[
            "--log.level",
            "debug",
            "--graph.timeout",
            "1s",
            "--graph.max-retries",
            "0",
        ],
    ));
    let mut log =
        process.log_until(|l| count(l, "refresh failed") + count(l, "report refreshed") == 4);
    process.signal("TERM");
    assert_eq!(process.wait_exit().code(), Some(0));
    log.extend(process.rest_of_log());

    let all = log.join("\n");
    for secret in [
        CLIENT_SECRET,
        ACCESS_TOKEN,
        DOWNLOAD_SIG,
        "download-signature",
    ] {
        assert!(!all.contains(secret), "{secret} logged:\n{all}");
    }
    for reason in [
        "\"reason\":\"http\"",
        "\"reason\":\"network\"",
        "\"reason\":\"timeout\"",
    ] {
        assert!(all.contains(reason), "{reason} not logged:\n{all}");
    }
}

#[tokio::test]
async fn a_refused_token_is_logged_with_its_code_and_what_to_do() {
    let fakes = Scenario::new()
        .await
        .token_answers(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'.\r\nTrace ID: 0c5c\r\nCorrelation ID: 9a2e\r\nTimestamp: 2024-03-05 10:00:00Z"),
            "error_codes": [7000215],
            "trace_id": "0c5c",
            "correlation_id": "9a2e"})))
        .servers()
        .await;
    let mut process = Process::spawn(&mut exporter_against(
        &fakes.graph.uri(),
        &["--report.periods", "D7"],
    ));
    let log = process.log_until(|l| count(l, "refresh failed") == 1);
    process.signal("TERM");
    assert_eq!(process.wait_exit().code(), Some(0));
    let line = log.iter().find(|l| l.contains("refresh failed")).unwrap();
    for needle in [
        "AADSTS7000215",
        "AZURE_CLIENT_SECRET to the secret's value",
        "\"reason\":\"auth\"",
        "trace_id 0c5c",
    ] {
        assert!(line.contains(needle), "{needle} missing from {line}");
    }
    assert!(!line.contains(CLIENT_SECRET));
}

#[tokio::test]
async fn sigterm_during_a_hung_fetch_exits_promptly() {
    let fakes = Scenario::new()
        .await
        .token_ok()
        .redirect(Period::D7)
        .download_answers(
            Period::D7,
            ResponseTemplate::new(200).set_delay(Duration::from_secs(120)),
        )
        .servers()
        .await;
    let mut process = Process::spawn(&mut exporter_against(
        &fakes.graph.uri(),
        &["--report.periods", "D7", "--graph.timeout", "100s"],
    ));
    process.log_line(|l| l["message"] == "sfb-exporter listening");
    let in_flight = eventually(|| async {
        !fakes
            .download
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    })
    .await;
    assert!(in_flight, "the download never started");
    let signalled = Instant::now();
    process.signal("TERM");
    let status = process.wait_exit();
    assert_eq!(status.code(), Some(0));
    // Cancellation is immediate (milliseconds), far within the 100 s the fetch could wait.
    assert!(
        signalled.elapsed() < Duration::from_secs(1) * SLOWNESS,
        "exit took {:?}",
        signalled.elapsed()
    );
}
