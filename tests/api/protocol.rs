//! The Graph protocol end to end: token, redirect, download and CSV, as seen on /metrics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sfb_exporter::Period;
use wiremock::{Request, Respond, ResponseTemplate};

use crate::helpers::*;

fn activity(period: &str, kind: &str) -> String {
    format!(
        r#"sfb_organizer_activity_seconds{{conference_type="{kind}",period="{period}",tenant="{TENANT}"}}"#
    )
}

fn period_activity(period: &str, kind: &str) -> String {
    format!(
        r#"sfb_organizer_activity_period_seconds{{conference_type="{kind}",period="{period}",tenant="{TENANT}"}}"#
    )
}

const CONFERENCE_TYPES: [&str; 3] = ["audio_video", "dial_in_microsoft", "dial_out_microsoft"];

#[tokio::test]
async fn redirect_is_followed_without_authorization_and_newest_row_published() {
    let csv =
        format!("{HEADER}\n2024-03-05,2024-03-03,7,10,1,0\n2024-03-05,2024-03-04,7,120,30,2\n");
    let app = Scenario::new()
        .await
        .token_ok()
        .expect(1)
        .report(Period::D7, csv)
        .spawn()
        .await;

    let body = app.first_attempt("D7").await;
    assert_sample(&body, &per_period("sfb_refresh_success", "D7"), Some(1.0));
    assert_sample(&body, &activity("D7", "audio_video"), Some(7200.0));
    assert_sample(&body, &activity("D7", "dial_in_microsoft"), Some(1800.0));
    assert_sample(&body, &activity("D7", "dial_out_microsoft"), Some(120.0));
    // 2024-03-04T00:00:00Z and 2024-03-05T00:00:00Z.
    assert_sample(
        &body,
        &per_period("sfb_report_date_timestamp_seconds", "D7"),
        Some(1_709_510_400.0),
    );
    assert_sample(
        &body,
        &per_period("sfb_report_refresh_timestamp_seconds", "D7"),
        Some(1_709_596_800.0),
    );
    assert_sample(&body, &per_period("sfb_report_rows", "D7"), Some(2.0));
    let last = sample(
        &body,
        &per_period("sfb_refresh_last_success_timestamp_seconds", "D7"),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - last).abs() < 60.0, "{last} vs {now}");
    // Every reason's counter exists from the start (the label values are pinned in error.rs).
    for reason in sfb_exporter::Reason::ALL.map(|r| r.as_str()) {
        assert_eq!(
            sample(&body, &failures("D7", reason)),
            Some(0.0),
            "{reason}"
        );
    }

    let reports = app.requests_to(&app.graph, "/v1.0/reports/").await;
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].headers["authorization"],
        format!("Bearer {ACCESS_TOKEN}").as_str()
    );
    let downloads = app.requests_to(&app.download, "/reports/").await;
    assert_eq!(downloads.len(), 1);
    assert!(!downloads[0].headers.contains_key("authorization"));
    assert_eq!(downloads[0].url.query(), Some(DOWNLOAD_SIG));
    app.stop().await;
}

#[tokio::test]
async fn a_direct_200_with_the_csv_is_accepted() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report_answers(
            Period::D30,
            ResponseTemplate::new(200)
                .set_body_string(format!("{HEADER}\n2024-03-05,2024-03-04,30,1,2,3\n")),
        )
        .periods([Period::D30])
        .spawn()
        .await;
    let body = app.first_attempt("D30").await;
    assert_sample(&body, &activity("D30", "dial_out_microsoft"), Some(180.0));
    app.stop().await;
}

#[tokio::test]
async fn csv_quirks_bom_crlf_column_order_row_order_empty_cells() {
    let csv = "\u{FEFF}Dial-out Microsoft,Report Date,Audio/Video,New Column,Dial-in Microsoft,Report Period,Report Refresh Date\r\n\
               ,2024-03-02,5,x,,180,2024-03-05\r\n\
               4,2024-03-04,,y,9,180,2024-03-05\r\n\
               1,2024-03-03,7,z,1,180,2024-03-05\r\n";
    let app = Scenario::new()
        .await
        .token_ok()
        .report(Period::D180, csv)
        .periods([Period::D180])
        .spawn()
        .await;
    let body = app.first_attempt("D180").await;
    assert_sample(&body, &per_period("sfb_refresh_success", "D180"), Some(1.0));
    assert_sample(&body, &per_period("sfb_report_rows", "D180"), Some(3.0));
    assert_sample(
        &body,
        &per_period("sfb_report_date_timestamp_seconds", "D180"),
        Some(1_709_510_400.0),
    );
    assert_sample(&body, &activity("D180", "audio_video"), Some(0.0));
    assert_sample(&body, &activity("D180", "dial_in_microsoft"), Some(540.0));
    assert_sample(&body, &activity("D180", "dial_out_microsoft"), Some(240.0));
    app.stop().await;
}

#[tokio::test]
async fn header_only_report_is_a_success_without_activity_series() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report(Period::D90, format!("\u{FEFF}{HEADER}\r\n"))
        .periods([Period::D90])
        .spawn()
        .await;
    let body = app.first_attempt("D90").await;
    assert_sample(&body, &per_period("sfb_refresh_success", "D90"), Some(1.0));
    assert_sample(&body, &per_period("sfb_report_rows", "D90"), Some(0.0));
    assert!(!body.contains("sfb_organizer_activity_seconds{"), "{body}");
    assert!(
        !body.contains("sfb_report_date_timestamp_seconds{"),
        "{body}"
    );
    assert_eq!(app.get("/readyz").await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn window_totals_add_up_every_row_and_a_header_only_report_has_none() {
    // Graph's rows for D7, in no order, with empty cells; D30 is header-only.
    let rows: [(&str, [&str; 3]); 4] = [
        ("2024-03-03", ["10", "", "1"]),
        ("2024-03-05", ["120", "30", ""]),
        ("2024-02-28", ["", "", ""]),
        ("2024-03-04", ["5", "2", "3"]),
    ];
    let mut csv = HEADER.to_string();
    for (day, cells) in rows {
        csv.push_str(&format!("\n2024-03-06,{day},7,{}", cells.join(",")));
    }
    let app = Scenario::new()
        .await
        .token_ok()
        .report(Period::D7, csv)
        .report(Period::D30, format!("{HEADER}\n"))
        .periods([Period::D7, Period::D30])
        .spawn()
        .await;
    let body = app.after_first_attempts(2).await;
    for (i, kind) in CONFERENCE_TYPES.into_iter().enumerate() {
        let minutes: u64 = rows
            .iter()
            .map(|(_, cells)| cells[i].parse::<u64>().unwrap_or(0))
            .sum();
        assert_sample(
            &body,
            &period_activity("D7", kind),
            Some(minutes as f64 * 60.0),
        );
        assert_sample(&body, &period_activity("D30", kind), None);
    }
    // The sums above, by hand: 135, 32 and 4 minutes.
    assert_sample(&body, &period_activity("D7", "audio_video"), Some(8100.0));
    assert_sample(&body, &success("D30"), Some(1.0));
    assert_sample(&body, &per_period("sfb_report_rows", "D30"), Some(0.0));
    app.stop().await;
}

#[tokio::test]
async fn one_token_serves_every_period_and_cycle() {
    let app = Scenario::new()
        .await
        .token_ok()
        .expect(1)
        .reports(Period::ALL, ONE_DAY)
        .periods(Period::ALL)
        .interval(Duration::from_secs(1))
        .spawn()
        .await;
    // Three cycles of four periods.
    assert!(
        eventually(|| async { app.requests_to(&app.download, "/reports/").await.len() >= 12 })
            .await
    );
    assert_eq!(
        app.requests_to(&app.graph, "/oauth2/v2.0/token")
            .await
            .len(),
        1
    );
    app.stop().await;
}

/// Issues numbered tokens valid for `lifetime` and records when each was issued.
struct NumberedTokens {
    lifetime: Duration,
    issued: Arc<Mutex<Vec<Instant>>>,
}

impl Respond for NumberedTokens {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut issued = self.issued.lock().unwrap();
        issued.push(Instant::now());
        issued_token(
            &format!("token-{}", issued.len() - 1),
            self.lifetime.as_secs(),
        )
    }
}

/// Serves the report only to a token that has not expired yet, and records any that had.
struct RequireLiveToken {
    lifetime: Duration,
    issued: Arc<Mutex<Vec<Instant>>>,
    expired_uses: Arc<Mutex<Vec<String>>>,
    csv: String,
}

impl Respond for RequireLiveToken {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let token = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let n: Option<usize> = token
            .strip_prefix("Bearer token-")
            .and_then(|n| n.parse().ok());
        let issued = n.and_then(|n| self.issued.lock().unwrap().get(n).copied());
        match issued {
            Some(at) if at.elapsed() < self.lifetime => {
                ResponseTemplate::new(200).set_body_string(self.csv.clone())
            }
            _ => {
                self.expired_uses.lock().unwrap().push(token.to_string());
                ResponseTemplate::new(401)
            }
        }
    }
}

#[tokio::test]
async fn tokens_are_reused_and_renewed_before_they_expire() {
    let lifetime = Duration::from_secs(4);
    let issued = Arc::new(Mutex::new(Vec::new()));
    let expired_uses = Arc::new(Mutex::new(Vec::new()));
    let app = Scenario::new()
        .await
        .token_answers(NumberedTokens {
            lifetime,
            issued: Arc::clone(&issued),
        })
        .report_answers(
            Period::D7,
            RequireLiveToken {
                lifetime,
                issued: Arc::clone(&issued),
                expired_uses: Arc::clone(&expired_uses),
                csv: format!("{HEADER}\n"),
            },
        )
        .interval(Duration::from_secs(1))
        .spawn()
        .await;
    // A 4 s token is renewed after 2 s: over 7 refreshes, 2 to 4 tokens, none used expired.
    assert!(
        eventually(|| async { app.requests_to(&app.graph, "/v1.0/reports/").await.len() >= 7 })
            .await
    );
    app.stop().await;
    let tokens = issued.lock().unwrap().len();
    assert!((2..=4).contains(&tokens), "{tokens} tokens for 7 refreshes");
    assert!(
        expired_uses.lock().unwrap().is_empty(),
        "{:?}",
        expired_uses.lock().unwrap()
    );
}

#[tokio::test]
async fn a_rejected_token_is_replaced_and_the_request_retried_once() {
    let app = Scenario::new()
        .await
        .token_ok()
        .expect(2)
        .report_answers(Period::D7, ResponseTemplate::new(401).set_body_json(serde_json::json!(
            {"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired."}})))
        .first(1)
        .report(Period::D7, ONE_DAY)
        .spawn()
        .await;
    let body = app.first_attempt("D7").await;
    assert_sample(&body, &per_period("sfb_refresh_success", "D7"), Some(1.0));
    assert_sample(&body, &failures("D7", "auth"), Some(0.0));
    assert_eq!(app.requests_to(&app.graph, "/v1.0/reports/").await.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_last_values_and_recovers() {
    let good = format!("{HEADER}\n2024-03-05,2024-03-04,7,120,30,2\n");
    // First cycle good, second a server error, third an unparsable body, then good again.
    let app = Scenario::new()
        .await
        .token_ok()
        .redirect(Period::D7)
        .download(Period::D7, good.clone())
        .first(1)
        .download_answers(Period::D7, ResponseTemplate::new(500))
        .first(1)
        .download(
            Period::D7,
            "<html><body>Sign in to your account</body></html>",
        )
        .first(1)
        .download(Period::D7, good)
        .interval(Duration::from_secs(1))
        .spawn()
        .await;

    let body = app
        .metrics_when("the server error", |b| {
            sample(b, &failures("D7", "http")) == Some(1.0)
        })
        .await;
    assert_sample(&body, &per_period("sfb_refresh_success", "D7"), Some(0.0));
    assert_eq!(
        sample(&body, &activity("D7", "audio_video")),
        Some(7200.0),
        "last values kept"
    );
    assert_eq!(
        sample(&body, &period_activity("D7", "audio_video")),
        Some(7200.0),
        "last totals kept"
    );
    assert_sample(&body, &per_period("sfb_report_rows", "D7"), Some(1.0));
    let body = app
        .metrics_when("the parse failure", |b| {
            sample(b, &failures("D7", "parse")) == Some(1.0)
        })
        .await;
    assert_eq!(
        sample(&body, &activity("D7", "audio_video")),
        Some(7200.0),
        "last values kept"
    );
    assert_eq!(
        sample(&body, &period_activity("D7", "audio_video")),
        Some(7200.0),
        "last totals kept"
    );
    let (_, readyz) = app.readyz().await;
    assert_eq!(
        readyz["ready"], true,
        "readiness needs one success, which stays"
    );
    app.metrics_when("recovery", |b| {
        sample(b, &per_period("sfb_refresh_success", "D7")) == Some(1.0)
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_bad_report_publishes_nothing_partial() {
    let csv = format!("{ONE_DAY}2024-03-05,2024-03-03,7,1,two,3\n");
    let app = Scenario::new()
        .await
        .token_ok()
        .report(Period::D7, csv)
        .spawn()
        .await;
    let body = app.first_attempt("D7").await;
    assert_sample(&body, &per_period("sfb_refresh_success", "D7"), Some(0.0));
    assert_sample(&body, &failures("D7", "parse"), Some(1.0));
    assert!(!body.contains("sfb_organizer_activity_seconds{"), "{body}");
    assert!(!body.contains("sfb_report_rows{"), "{body}");
    let (status, readyz) = app.readyz().await;
    assert_eq!(status, 503);
    let error = readyz["periods"]["D7"]["last_error"].as_str().unwrap();
    assert!(
        error.starts_with("parse: report rejected: line 3: Dial-in Microsoft \"two\""),
        "{error}"
    );
    app.stop().await;
}

#[tokio::test]
async fn forbidden_is_its_own_reason() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report_answers(
            Period::D7,
            ResponseTemplate::new(403).set_body_json(serde_json::json!(
            {"error": {"code": "S2SUnauthorized", "message": "Invalid scope claims/roles.",
                       "innerError": {"request-id": "req-123"}}})),
        )
        .spawn()
        .await;
    let body = app.first_attempt("D7").await;
    assert_sample(&body, &failures("D7", "forbidden"), Some(1.0));
    let (_, readyz) = app.readyz().await;
    let error = readyz["periods"]["D7"]["last_error"].as_str().unwrap();
    assert!(
        error.contains("Reports.Read.All") && error.contains("request-id req-123"),
        "{error}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_refused_token_is_an_auth_failure() {
    let app = Scenario::new()
        .await
        .token_answers(invalid_client_secret())
        .spawn()
        .await;
    let body = app.first_attempt("D7").await;
    assert_sample(&body, &failures("D7", "auth"), Some(1.0));
    assert!(app
        .requests_to(&app.graph, "/v1.0/reports/")
        .await
        .is_empty());
    app.stop().await;
}

#[tokio::test]
async fn an_unchanged_report_answers_304_and_keeps_its_values() {
    let app = Scenario::new()
        .await
        .token_ok()
        .report_not_modified(Period::D7, "\"v1\"")
        .redirect(Period::D7)
        .download_answers(
            Period::D7,
            ResponseTemplate::new(200)
                .insert_header("etag", "\"v1\"")
                .set_body_string(ONE_DAY),
        )
        .expect(1)
        .interval(Duration::from_secs(1))
        .spawn()
        .await;
    assert!(
        eventually(|| async { app.requests_to(&app.graph, "/v1.0/reports/").await.len() >= 3 })
            .await
    );
    let body = app.metrics().await;
    assert_sample(&body, &per_period("sfb_refresh_success", "D7"), Some(1.0));
    assert_sample(&body, &activity("D7", "audio_video"), Some(60.0));
    assert_sample(&body, &failures("D7", "http"), Some(0.0));
    app.stop().await;
}

#[tokio::test]
async fn secrets_never_reach_metrics_or_readiness() {
    let app = Scenario::new()
        .await
        .token_ok()
        .redirect(Period::D7)
        .download_answers(Period::D7, ResponseTemplate::new(500))
        .spawn()
        .await;
    app.first_attempt("D7").await;
    for path in ["/metrics", "/readyz", "/"] {
        let body = app.get(path).await.text().await.unwrap();
        for secret in [CLIENT_SECRET, ACCESS_TOKEN, DOWNLOAD_SIG] {
            assert!(!body.contains(secret), "{secret} in {path}: {body}");
        }
    }
    app.stop().await;
}
