use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use sfb_exporter::auth::Identity;
use sfb_exporter::config::{Config, Source};
use sfb_exporter::graph::RetryPolicy;
use sfb_exporter::report::{Period, Periods};
use sfb_exporter::server::ServerLimits;
use tokio_util::sync::CancellationToken;
use url::Url;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

pub const TENANT: &str = "tenant-1";
pub const CLIENT_ID: &str = "client-1";
pub const CLIENT_SECRET: &str = "client-secret-value-Q7x";
pub const ACCESS_TOKEN: &str = "access-token-value-Z9k";
/// The query that makes a download URL a credential; it must never leak.
pub const DOWNLOAD_SIG: &str = "sig=download-signature-W3m";

pub const HEADER: &str =
    "Report Refresh Date,Report Date,Report Period,Audio/Video,Dial-in Microsoft,Dial-out Microsoft";

pub struct TestApp {
    pub addr: SocketAddr,
    /// Serves the token endpoint and the report requests.
    pub graph: MockServer,
    /// Another host, standing in for the pre-authenticated download.
    pub download: MockServer,
    pub http: reqwest::Client,
    cancel: CancellationToken,
    running: Option<sfb_exporter::Running>,
}

pub struct Options {
    pub periods: Vec<Period>,
    pub interval: Duration,
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub retry: RetryPolicy,
    pub web_config: Option<std::path::PathBuf>,
    pub server: ServerLimits,
    pub exporter_metrics: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            periods: vec![Period::D7],
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            max_body_bytes: 4 * 1024 * 1024,
            // The production schedule, compressed so retries take milliseconds.
            retry: RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_secs(2),
                max_retry_after: Duration::from_secs(2),
            },
            web_config: None,
            server: ServerLimits::default(),
            exporter_metrics: true,
        }
    }
}

/// Starts the mock servers; call `start` once their mocks are mounted.
pub async fn mock_servers() -> (MockServer, MockServer) {
    (MockServer::start().await, MockServer::start().await)
}

pub async fn spawn_app(graph: MockServer, download: MockServer, options: Options) -> TestApp {
    let base = Url::parse(&graph.uri()).unwrap();
    let config = Config {
        listen_address: "127.0.0.1:0".parse().unwrap(),
        web_config_file: options.web_config,
        web_config_check_interval: Duration::from_millis(100),
        telemetry_path: "/metrics".into(),
        server: options.server,
        exporter_metrics: options.exporter_metrics,
        periods: Periods::new(options.periods).unwrap(),
        refresh_interval: options.interval,
        graph_timeout: options.timeout,
        max_body_bytes: options.max_body_bytes,
        retry: options.retry,
        source: Source::Azure {
            identity: Identity {
                tenant_id: TENANT.into(),
                client_id: CLIENT_ID.into(),
                client_secret: SecretString::from(CLIENT_SECRET),
            },
            authority: base.clone(),
            graph: base,
        },
    };
    let cancel = CancellationToken::new();
    let running = sfb_exporter::start(config, cancel.clone())
        .await
        .expect("exporter starts");
    TestApp {
        addr: running.local_addr,
        graph,
        download,
        http: reqwest::Client::new(),
        cancel,
        running: Some(running),
    }
}

impl TestApp {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .expect("exporter answers")
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Polls /metrics until `done` holds, as `eventually` does.
    pub async fn metrics_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let body = self.metrics().await;
            if done(&body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; last /metrics:\n{body}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// /metrics once `period` has finished its first attempt, successful or not.
    pub async fn first_attempt(&self, period: impl Display) -> String {
        let series = success(period);
        self.metrics_when("the first attempt", |b| sample(b, &series).is_some())
            .await
    }

    /// /metrics once `periods` periods have finished their first attempt.
    pub async fn after_first_attempts(&self, periods: usize) -> String {
        self.metrics_when("the first attempt of every period", |b| {
            b.matches("sfb_refresh_success{").count() == periods
        })
        .await
    }

    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = self.get("/readyz").await;
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }

    pub async fn requests_to(&self, server: &MockServer, path_part: &str) -> Vec<Request> {
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path().contains(path_part))
            .collect()
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(5), running.wait())
                .await
                .expect("exporter stops within 5s of cancellation");
        }
    }
}

const DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);

/// Retries `check` until it holds or a generous deadline passes; the deadline bounds a hang
/// and is not a performance target.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    false
}

pub fn report_path(period: Period) -> String {
    format!("/v1.0/reports/getSkypeForBusinessOrganizerActivityMinuteCounts(period='{period}')")
}

pub fn token_response(expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": ACCESS_TOKEN,
    }))
}

/// The token endpoint, answering only the exact client credentials form.
pub fn token_mock(expires_in: u64) -> Mock {
    Mock::given(method("POST"))
        .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains(format!("client_id={CLIENT_ID}")))
        .and(body_string_contains(format!(
            "client_secret={CLIENT_SECRET}"
        )))
        .and(body_string_contains("scope=http%3A%2F%2F127.0.0.1"))
        .and(body_string_contains("%2F.default"))
        .respond_with(token_response(expires_in))
}

/// The report request with the bearer token, redirected to the download host.
pub fn redirect_mock(period: Period, download: &MockServer) -> Mock {
    Mock::given(method("GET"))
        .and(path(report_path(period)))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}").as_str(),
        ))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", download_url(download, period).as_str()),
        )
}

pub fn download_url(download: &MockServer, period: Period) -> String {
    format!("{}/reports/{period}.csv?{DOWNLOAD_SIG}", download.uri())
}

/// The download, served only to requests without an Authorization header.
pub fn download_mock(period: Period, body: impl Into<Vec<u8>>) -> Mock {
    Mock::given(method("GET"))
        .and(path(format!("/reports/{period}.csv")))
        .and(NoAuthorization)
        .respond_with(ResponseTemplate::new(200).set_body_bytes(body.into()))
}

pub struct NoAuthorization;

impl Match for NoAuthorization {
    fn matches(&self, request: &Request) -> bool {
        !request.headers.contains_key("authorization")
    }
}

/// Mounts a complete happy path for `period` serving `csv`.
pub async fn mount_report(graph: &MockServer, download: &MockServer, period: Period, csv: &str) {
    redirect_mock(period, download).mount(graph).await;
    download_mock(period, csv.as_bytes().to_vec())
        .mount(download)
        .await;
}

/// The value of the one sample of `series` (name and labels exactly as exposed), if present.
pub fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An address that accepts connections and drops them at once: a dependable connection error
/// (a closed port could be reused by another test's server).
pub fn dropping_server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    addr
}

/// A per-period series of the test tenant, as exposed: `name{period="..",tenant=".."}`.
pub fn per_period(name: &str, period: impl Display) -> String {
    format!(r#"{name}{{period="{period}",tenant="{TENANT}"}}"#)
}

pub fn success(period: impl Display) -> String {
    per_period("sfb_refresh_success", period)
}

pub fn failures(period: impl Display, reason: &str) -> String {
    format!(
        r#"sfb_refresh_failures_total{{period="{period}",reason="{reason}",tenant="{TENANT}"}}"#
    )
}
