//! A simulated identity platform and Graph on loopback, so that `--demo` runs the real pipeline
//! (token, report request, 302, download without Authorization, CSV parsing) without a tenant.
//!
//! The data is a deterministic function of the date: weekday peaks, quiet weekends, a slow
//! seasonal swing and some noise, 180 days of it, lagging two days behind today as Graph does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use secrecy::SecretString;
use serde::Deserialize;
use time::{Date, Duration, OffsetDateTime, Weekday};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::auth::Identity;
use crate::report::Period;

pub(crate) const TENANT: &str = "demo";
const CLIENT_ID: &str = "demo-client";
const CLIENT_SECRET: &str = "demo-secret";
const TOKEN_PREFIX: &str = "demo-token-";

pub fn identity() -> Identity {
    Identity::with_secret(TENANT, CLIENT_ID, SecretString::from(CLIENT_SECRET))
}

pub struct Demo {
    pub address: SocketAddr,
    pub authority: Url,
    pub graph: Url,
    pub server: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// How many tokens the fake identity platform has handed out: each is distinct.
#[derive(Clone, Default)]
struct IssuedTokens {
    issued: Arc<AtomicU64>,
}

pub async fn start(cancel: CancellationToken) -> std::io::Result<Demo> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let base = Url::parse(&format!("http://{address}/")).expect("loopback URL is valid");
    let app = router();
    let server = Box::pin(async move {
        let shutdown = cancel.cancelled_owned();
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("demo Graph failed: {e}");
        }
    });
    Ok(Demo {
        address,
        authority: base.clone(),
        graph: base,
        server,
    })
}

fn router() -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/v1.0/reports/{function}", get(report))
        .route("/download/{period}", get(download))
        .with_state(IssuedTokens::default())
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    client_id: String,
    client_secret: String,
    scope: String,
}

async fn token(
    State(s): State<IssuedTokens>,
    Path(tenant): Path<String>,
    Form(f): Form<TokenForm>,
) -> Response {
    // Any tenant with the demo secret, so that benches/tenants.rs can run a thousand of them.
    let ok = !tenant.is_empty()
        && f.grant_type == "client_credentials"
        && f.client_id == CLIENT_ID
        && f.client_secret == CLIENT_SECRET
        && f.scope.ends_with("/.default");
    if !ok {
        let body = serde_json::json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.",
            "error_codes": [7000215],
        });
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    let n = s.issued.fetch_add(1, Ordering::Relaxed);
    Json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": format!("{TOKEN_PREFIX}{n}"),
    }))
    .into_response()
}

async fn report(Path(function): Path<String>, headers: HeaderMap) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(&format!("Bearer {TOKEN_PREFIX}")));
    if !authorized {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        );
    }
    let period = function
        .strip_prefix("getSkypeForBusinessOrganizerActivityMinuteCounts(period='")
        .and_then(|rest| rest.strip_suffix("')"))
        .and_then(|p| p.parse::<Period>().ok());
    let Some(period) = period else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid function or period.",
        );
    };
    // A stand-in for the pre-authenticated URL: its query is what makes it a credential.
    let location = format!("/download/{period}?sig=demo-{}", today().to_julian_day());
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

#[derive(Deserialize)]
struct Signature {
    sig: Option<String>,
}

async fn download(
    Path(period): Path<String>,
    Query(q): Query<Signature>,
    headers: HeaderMap,
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        // The real download host refuses a bearer token it did not issue.
        return (StatusCode::BAD_REQUEST, "unexpected Authorization header").into_response();
    }
    let (Ok(period), Some(_)) = (period.parse::<Period>(), q.sig) else {
        return (StatusCode::FORBIDDEN, "bad signature").into_response();
    };
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        csv(period, today()),
    )
        .into_response()
}

fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message,
        "innerError": {"request-id": "00000000-0000-0000-0000-000000000000"}}});
    (status, Json(body)).into_response()
}

fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

/// The report as Graph shapes it: BOM, CRLF, and rows newest first for some periods and oldest
/// first for others.
pub(crate) fn csv(period: Period, today: Date) -> String {
    let refreshed = today - Duration::days(1);
    let newest = today - Duration::days(2);
    let mut out = String::from(
        "\u{FEFF}Report Refresh Date,Report Date,Report Period,Audio/Video,Dial-in Microsoft,Dial-out Microsoft\r\n",
    );
    let days = i64::from(period.days());
    let offsets: Vec<i64> = match period {
        Period::D7 | Period::D90 => (0..days).collect(),
        Period::D30 | Period::D180 => (0..days).rev().collect(),
    };
    for offset in offsets {
        let day = newest - Duration::days(offset);
        let (av, dial_in, dial_out) = minutes(day);
        out.push_str(&format!(
            "{refreshed},{day},{},{av},{dial_in},{dial_out}\r\n",
            period.days()
        ));
    }
    out
}

/// Minutes for one day: (Audio/Video, Dial-in Microsoft, Dial-out Microsoft).
fn minutes(day: Date) -> (u64, u64, u64) {
    let n = day.to_julian_day() as u64;
    let noise = |salt: u64| {
        (splitmix64(n.wrapping_mul(4).wrapping_add(salt)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let weekday = match day.weekday() {
        Weekday::Saturday => 0.15,
        Weekday::Sunday => 0.08,
        _ => 1.0,
    };
    let season = 1.0 + 0.2 * (n as f64 * std::f64::consts::TAU / 91.0).sin();
    let av = 1400.0 * weekday * season * (0.8 + 0.4 * noise(1));
    let dial_in = av * (0.10 + 0.08 * noise(2));
    let dial_out = av * (0.01 + 0.03 * noise(3));
    (
        av.round() as u64,
        dial_in.round() as u64,
        dial_out.round() as u64,
    )
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn demo_reports_parse_and_cover_the_period() {
        let today = date!(2026 - 11 - 27);
        for period in Period::ALL {
            let report = crate::report::parse(csv(period, today).as_bytes(), today).unwrap();
            assert_eq!(report.rows.len(), period.days() as usize);
            let newest = report.newest().unwrap();
            assert_eq!(newest.report_date, date!(2026 - 11 - 25));
            assert_eq!(newest.report_refresh_date, date!(2026 - 11 - 26));
        }
    }

    #[test]
    fn data_is_plausible() {
        let weekday = minutes(date!(2026 - 11 - 25));
        let sunday = minutes(date!(2026 - 11 - 22));
        assert!(
            weekday.0 > 500 && weekday.0 > 5 * sunday.0,
            "{weekday:?} {sunday:?}"
        );
        assert!(weekday.1 < weekday.0 && weekday.2 < weekday.1);
        assert_eq!(minutes(date!(2026 - 11 - 25)), weekday, "deterministic");
    }
}
