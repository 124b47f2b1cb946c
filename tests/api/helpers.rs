use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::SecretString;
use sfb_exporter::auth::managed::ManagedEndpoint;
use sfb_exporter::auth::{Credential, Identity, Origin};
use sfb_exporter::config::ServerLimits;
use sfb_exporter::config::{Cloud, Config, Shard, Source, TenantDefaults};
use sfb_exporter::http::RetryPolicy;
use sfb_exporter::report::{Period, Periods};
use tokio_util::sync::CancellationToken;
use url::Url;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Match, Mock, MockServer, Request, Respond, ResponseTemplate};

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
    /// How the exporter signs in; None: the client secret the token mock expects.
    pub credential: Option<Credential>,
    /// --config.file; its tenants default to the fake Graph as authority and Graph.
    pub tenants_file: Option<std::path::PathBuf>,
    pub enable_lifecycle: bool,
    pub max_concurrency: usize,
    pub shard: Shard,
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
            credential: None,
            tenants_file: None,
            enable_lifecycle: false,
            max_concurrency: 8,
            shard: Shard::default(),
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
        periods: Periods::new(options.periods.clone()).unwrap(),
        refresh_interval: options.interval,
        graph_timeout: options.timeout,
        max_body_bytes: options.max_body_bytes,
        retry: options.retry,
        source: match options.tenants_file {
            Some(path) => Source::File {
                path,
                defaults: TenantDefaults {
                    cloud: Cloud::Global,
                    authority_host: Some(base.clone()),
                    graph_url: Some(base.clone()),
                    periods: Periods::new(options.periods).unwrap(),
                    managed_identity: Ok(ManagedEndpoint::Imds { host: base }),
                },
            },
            None => Source::Azure {
                identity: Identity {
                    tenant_id: TENANT.into(),
                    credential: options.credential.unwrap_or_else(|| Credential::Secret {
                        client_id: CLIENT_ID.into(),
                        secret: SecretString::from(CLIENT_SECRET),
                    }),
                    origin: Origin::Environment,
                },
                authority: base.clone(),
                graph: base,
            },
        },
        max_concurrency: options.max_concurrency,
        shard: options.shard,
        enable_lifecycle: options.enable_lifecycle,
    };
    let cancel = CancellationToken::new();
    let running = sfb_exporter::start(config, cancel.clone())
        .await
        .expect("exporter starts");
    TestApp {
        addr: running.local_addr,
        graph,
        download,
        http: test_client(),
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

    /// GET /metrics asking for gzip, as Prometheus does.
    pub async fn get_metrics_gzip(&self) -> reqwest::Response {
        self.http
            .get(format!("http://{}/metrics", self.addr))
            .header("accept-encoding", "gzip")
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

/// reqwest for the tests' own requests. It is built without a crypto provider of its own (the
/// exporter hands it aws-lc-rs explicitly), so the tests make aws-lc-rs the process default.
pub fn test_client_builder() -> reqwest::ClientBuilder {
    // Err only when a provider is installed already: then it is this one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
}

pub fn test_client() -> reqwest::Client {
    test_client_builder().build().unwrap()
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

/// The fake Graph of one test, set up in one expression: which answers the identity platform,
/// the report requests and the download host give, and how the exporter is configured.
///
/// `Scenario::new().await.token_ok().report(Period::D7, csv).spawn().await`. Answers are mounted
/// in the order given; `first(n)` makes the last one answer only the first `n` matching
/// requests, ahead of those without it, so sequences read top to bottom.
pub struct Scenario {
    graph: MockServer,
    download: MockServer,
    mocks: Vec<(Host, Mock)>,
    /// Priority of the next `first(n)` answer: 1, 2, ... ahead of wiremock's default 5.
    next_priority: u8,
    options: Options,
}

#[derive(Clone, Copy)]
enum Host {
    Graph,
    Download,
}

impl Scenario {
    pub async fn new() -> Scenario {
        let (graph, download) = mock_servers().await;
        Scenario {
            graph,
            download,
            mocks: Vec::new(),
            next_priority: 1,
            options: Options::default(),
        }
    }

    /// The token endpoint issues a one-hour token for the exact client credentials form.
    pub fn token_ok(self) -> Scenario {
        self.on(Host::Graph, token_mock(3599))
    }

    /// The token endpoint (any form) answers `answer`.
    pub fn token_answers(self, answer: impl Respond + 'static) -> Scenario {
        let mock = Mock::given(method("POST"))
            .and(path(format!("/{TENANT}/oauth2/v2.0/token")))
            .respond_with(answer);
        self.on(Host::Graph, mock)
    }

    /// The complete happy path for `period`: the report request redirects (with the bearer
    /// token only) and the download (without it) serves `csv`.
    pub fn report(self, period: Period, csv: impl Into<Vec<u8>>) -> Scenario {
        self.redirect(period).download(period, csv)
    }

    /// `report` for each of `periods`, serving the same `csv`.
    pub fn reports(self, periods: impl IntoIterator<Item = Period>, csv: &str) -> Scenario {
        periods
            .into_iter()
            .fold(self, |scenario, period| scenario.report(period, csv))
    }

    /// The report request for `period` (with any token) answers `answer`.
    pub fn report_answers(self, period: Period, answer: impl Respond + 'static) -> Scenario {
        let mock = Mock::given(method("GET"))
            .and(path(report_path(period)))
            .respond_with(answer);
        self.on(Host::Graph, mock)
    }

    /// The report request for `period` redirects to `location`, wherever that is.
    pub fn report_redirects_to(self, period: Period, location: &str) -> Scenario {
        self.report_answers(
            period,
            ResponseTemplate::new(302).insert_header("location", location),
        )
    }

    /// The report request for `period` that sends `If-None-Match: etag` answers 304.
    pub fn report_not_modified(self, period: Period, etag: &str) -> Scenario {
        let mock = Mock::given(method("GET"))
            .and(path(report_path(period)))
            .and(header("if-none-match", etag))
            .respond_with(ResponseTemplate::new(304));
        self.on(Host::Graph, mock).first_of_all()
    }

    /// The report request for `period` with the bearer token redirects to the download host.
    pub fn redirect(self, period: Period) -> Scenario {
        let mock = redirect_mock(period, &self.download);
        self.on(Host::Graph, mock)
    }

    /// The download of `period`, asked without an Authorization header, answers `answer`.
    pub fn download_answers(self, period: Period, answer: impl Respond + 'static) -> Scenario {
        let mock = Mock::given(method("GET"))
            .and(path(format!("/reports/{period}.csv")))
            .and(NoAuthorization)
            .respond_with(answer);
        self.on(Host::Download, mock)
    }

    /// The download of `period`, asked without an Authorization header, serves `body`.
    pub fn download(self, period: Period, body: impl Into<Vec<u8>>) -> Scenario {
        self.download_answers(
            period,
            ResponseTemplate::new(200).set_body_bytes(body.into()),
        )
    }

    /// The last answer given serves only the first `n` requests it matches, before the answers
    /// given without `first`.
    pub fn first(mut self, n: u64) -> Scenario {
        let priority = self.next_priority;
        assert!(priority < 5, "more sequenced answers than priorities");
        self.next_priority += 1;
        self.last(|mock| mock.up_to_n_times(n).with_priority(priority))
    }

    /// The last answer given must be asked exactly `n` times by the end of the test.
    pub fn expect(self, n: u64) -> Scenario {
        self.last(|mock| mock.expect(n))
    }

    pub fn periods(mut self, periods: impl IntoIterator<Item = Period>) -> Scenario {
        self.options.periods = periods.into_iter().collect();
        self
    }

    pub fn interval(mut self, interval: Duration) -> Scenario {
        self.options.interval = interval;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Scenario {
        self.options.timeout = timeout;
        self
    }

    pub fn max_body_bytes(mut self, max_body_bytes: u64) -> Scenario {
        self.options.max_body_bytes = max_body_bytes;
        self
    }

    /// Where the redirect for `period` points, for answers built by hand.
    pub fn download_url(&self, period: Period) -> String {
        download_url(&self.download, period)
    }

    /// Mounts the answers and starts the exporter against them.
    pub async fn spawn(mut self) -> TestApp {
        let options = std::mem::take(&mut self.options);
        let (graph, download) = self.servers().await;
        spawn_app(graph, download, options).await
    }

    /// Mounts the answers and hands over the servers, for an exporter started another way.
    pub async fn servers(self) -> (MockServer, MockServer) {
        for (host, mock) in self.mocks {
            match host {
                Host::Graph => mock.mount(&self.graph).await,
                Host::Download => mock.mount(&self.download).await,
            }
        }
        (self.graph, self.download)
    }

    fn on(mut self, host: Host, mock: Mock) -> Scenario {
        self.mocks.push((host, mock));
        self
    }

    fn last(mut self, change: impl FnOnce(Mock) -> Mock) -> Scenario {
        let (host, mock) = self.mocks.pop().expect("an answer to change");
        self.mocks.push((host, change(mock)));
        self
    }

    /// Ahead of every other answer, sequenced or not.
    fn first_of_all(self) -> Scenario {
        self.last(|mock| mock.with_priority(1))
    }
}

/// Asserts the value of the one sample of `series` in the exposition `body` (`None`: absent).
#[track_caller]
pub fn assert_sample(body: &str, series: &str, expected: Option<f64>) {
    assert_eq!(sample(body, series), expected, "{series} in:\n{body}");
}

/// An HTTP/2 client connection over a stream that negotiated `h2` (ALPN): requests, and
/// whether the server has closed the connection.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl H2 {
    pub async fn handshake<S>(io: S) -> Result<H2, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(H2 {
            sender,
            connection: tokio::spawn(connection),
        })
    }

    /// GET `path`: the status and the head as `name: value` lines.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let mut request = hyper::Request::get(format!("https://localhost{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(http_body_util::Empty::new()).unwrap();
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let mut head = format!("HTTP/2 {}\r\n", response.status());
        for (name, value) in response.headers() {
            head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap_or("?")));
        }
        Ok((response.status().as_u16(), head))
    }

    /// Whether the server has ended the connection.
    pub fn closed(&self) -> bool {
        self.connection.is_finished()
    }
}
