//! The fake Graph and identity platform of every test, and the exporter started against them.
//!
//! One builder, [`Scenario`], sets up both: the answers of the token endpoint, the report
//! requests and the download host, the tenants of a --config.file, and how the exporter is
//! configured (web config, credential, exporter metrics, limits). It starts the exporter in
//! this process ([`Scenario::spawn`]) or hands the fakes to a child process
//! ([`Scenario::servers`]).

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use sfb_exporter::ManagedEndpoint;
use sfb_exporter::RetryPolicy;
use sfb_exporter::ServerLimits;
use sfb_exporter::{Cloud, Config, Shard, Source, TenantDefaults};
use sfb_exporter::{Credential, Identity, Origin};
use sfb_exporter::{Period, Periods};
use tokio_util::sync::CancellationToken;
use url::Url;
use wiremock::matchers::{body_string_contains, header, method, path};
use wiremock::{Match, Mock, MockServer, Request, Respond, ResponseTemplate};

pub(crate) const TENANT: &str = "tenant-1";
pub(crate) const CLIENT_ID: &str = "client-1";
pub(crate) const CLIENT_SECRET: &str = "client-secret-value-Q7x";
pub(crate) const ACCESS_TOKEN: &str = "access-token-value-Z9k";
/// The query that makes a download URL a credential; it must never leak.
pub(crate) const DOWNLOAD_SIG: &str = "sig=download-signature-W3m";

/// The report's header, as a literal, so that [`ONE_DAY`] can be built from it at compile time.
macro_rules! header {
    () => {
        "Report Refresh Date,Report Date,Report Period,Audio/Video,Dial-in Microsoft,Dial-out Microsoft"
    };
}

pub(crate) const HEADER: &str = header!();

/// The report most tests serve: refreshed 2024-03-05, one row for 2024-03-04 of D7 with 1, 2
/// and 3 minutes of audio/video, dial-in and dial-out.
pub(crate) const ONE_DAY: &str = concat!(header!(), "\n2024-03-05,2024-03-04,7,1,2,3\n");

/// How many times slower than a developer's machine a loaded CI runner may be. An upper bound
/// on real time is written as what an idle machine needs times this factor, and only where the
/// exporter runs as a child process, whose clock a test cannot pause (in this process, bounds
/// use tokio's paused clock). Raise it here, in one place, if a slow machine trips such a bound.
pub(crate) const SLOWNESS: u32 = 3;

/// A generous bound on waiting for something that must happen: it stops a hang and is not a
/// performance target.
const DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);

/// The exporter started in this process by [`Scenario::spawn`], with the fakes it talks to.
/// Dropped, it is cancelled; [`TestApp::stop`] also waits for it to wind down.
pub(crate) struct TestApp {
    pub addr: SocketAddr,
    /// Serves the token endpoint and the report requests.
    pub graph: MockServer,
    /// Another host, standing in for the pre-authenticated download.
    pub download: MockServer,
    pub http: reqwest::Client,
    /// Where the tenants file and its secrets are written.
    files: tempfile::TempDir,
    logs: Logs,
    cancel: CancellationToken,
    running: Option<sfb_exporter::Running>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl TestApp {
    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .expect("exporter answers")
    }

    /// GET /metrics asking for gzip, as Prometheus does.
    pub(crate) async fn get_metrics_gzip(&self) -> reqwest::Response {
        self.http
            .get(format!("http://{}/metrics", self.addr))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("exporter answers")
    }

    pub(crate) async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Polls /metrics until `done` holds, as `eventually` does.
    pub(crate) async fn metrics_when(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
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
    pub(crate) async fn first_attempt(&self, period: impl Display) -> String {
        let series = success(period);
        self.metrics_when("the first attempt", |b| sample(b, &series).is_some())
            .await
    }

    /// /metrics once `periods` periods have finished their first attempt.
    pub(crate) async fn after_first_attempts(&self, periods: usize) -> String {
        self.metrics_when("the first attempt of every period", |b| {
            b.matches("sfb_refresh_success{").count() == periods
        })
        .await
    }

    pub(crate) async fn readyz(&self) -> (u16, serde_json::Value) {
        let response = self.get("/readyz").await;
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_str(&response.text().await.unwrap()).unwrap(),
        )
    }

    pub(crate) async fn requests_to(&self, server: &MockServer, path_part: &str) -> Vec<Request> {
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.url.path().contains(path_part))
            .collect()
    }

    /// The first log line (JSON, as `--log.format json` writes it) after the last one this
    /// returned that `matches`; waits for it until the deadline.
    pub(crate) async fn log_line(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.logs.next_matching(&matches) {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for a log line: {what}; logged:\n{}",
                self.logs.text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The tenants file [`Scenario::tenants_file`] wrote.
    pub(crate) fn tenants_file(&self) -> PathBuf {
        self.files.path().join(TENANTS_FILE)
    }

    /// Rewrites the tenants file to list `tenants`, as [`Scenario::tenants_file`] wrote it.
    pub(crate) fn write_tenants(&self, tenants: &[&FakeTenant]) -> PathBuf {
        write_tenants(self.files.path(), tenants)
    }

    pub(crate) async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(5), running.wait())
                .await
                .expect("exporter stops within 5s of cancellation");
        }
    }
}

/// The fakes of a [`Scenario`] for an exporter started another way (a child process).
pub(crate) struct Fakes {
    pub graph: MockServer,
    pub download: MockServer,
    files: tempfile::TempDir,
}

impl Fakes {
    /// Writes a tenants file listing `tenants`, as [`Scenario::tenants_file`] does.
    pub(crate) fn write_tenants(&self, tenants: &[&FakeTenant]) -> PathBuf {
        write_tenants(self.files.path(), tenants)
    }
}

/// What the exporter writes, caught on the test's thread. A `#[tokio::test]` runs the exporter
/// in this process on a current-thread runtime, so every task logs there (what runs on
/// blocking threads is not caught). The latest `TestApp` of a test catches them until dropped.
struct Logs {
    buffer: LogBuffer,
    /// Lines already returned by `next_matching`, or passed over by it.
    read: Mutex<usize>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    fn capture() -> Logs {
        let buffer = LogBuffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        Logs {
            buffer,
            read: Mutex::new(0),
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.0.lock().unwrap()).into_owned()
    }

    fn next_matching(
        &self,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let text = self.text();
        let mut read = self.read.lock().unwrap();
        // Only whole lines: the last may be cut short while it is written.
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for (i, line) in lines.iter().enumerate().skip(*read) {
            if !line.ends_with('\n') {
                break;
            }
            let json =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            *read = i + 1;
            if matches(&json) {
                return Some(json);
            }
        }
        None
    }
}

/// Where the subscriber of [`Logs`] writes.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A certificate authority made for one test, and what it signs: certificates for servers, by
/// name, and for clients.
pub(crate) struct TestCa {
    pub cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
        use rcgen::{BasicConstraints, DnType, IsCa, KeyUsagePurpose};
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), and its key.
    pub(crate) fn server(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert, key)
    }

    /// A client certificate, CN=prometheus, and its key.
    pub(crate) fn client(&self) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "prometheus");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert, key)
    }
}

/// How a fake tenant of a --config.file behaves.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Behaviour {
    Healthy,
    /// The identity platform refuses its secret.
    BadSecret,
    /// Its token request never answers.
    Hung,
}

/// A tenant of a --config.file, with its own secret, token and download, so that one tenant's
/// data can only come from its own exchanges.
pub(crate) struct FakeTenant {
    pub id: String,
    pub name: Option<&'static str>,
    pub behaviour: Behaviour,
}

pub(crate) fn tenant(id: &str, behaviour: Behaviour) -> FakeTenant {
    FakeTenant {
        id: id.to_string(),
        name: None,
        behaviour,
    }
}

/// The client secret of tenant `id`, in its secret file.
pub(crate) fn secret(id: &str) -> String {
    format!("secret-of-{id}")
}

/// Audio/video minutes of a tenant's report, distinct per tenant so a mix-up shows.
pub(crate) fn minutes(id: &str) -> u64 {
    10 + id.bytes().map(u64::from).sum::<u64>() % 1000
}

const TENANTS_FILE: &str = "tenants.yml";

/// Writes the config file listing `tenants` in `dir`, their secrets in files next to it (a
/// relative path, resolved against the file's directory).
fn write_tenants(dir: &Path, tenants: &[&FakeTenant]) -> PathBuf {
    std::fs::create_dir_all(dir.join("secrets")).unwrap();
    let mut yaml = String::from("tenants:\n");
    for t in tenants {
        std::fs::write(dir.join("secrets").join(&t.id), secret(&t.id) + "\n").unwrap();
        yaml.push_str(&format!(
            "  - tenant_id: {}\n    client_id: client-{}\n    client_secret_file: secrets/{}\n",
            t.id, t.id, t.id
        ));
        if let Some(name) = t.name {
            yaml.push_str(&format!("    name: {name}\n"));
        }
    }
    let file = dir.join(TENANTS_FILE);
    std::fs::write(&file, yaml).unwrap();
    file
}

/// Sends `request` (a whole HTTP/1.1 request) on a new connection to `addr` and reads one
/// response with a Content-Length, keeping the connection open: the response, lowercased,
/// and the connection; None if the server closed it first.
pub(crate) async fn raw_exchange(
    addr: SocketAddr,
    request: &str,
) -> Option<(String, tokio::net::TcpStream)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&response).to_lowercase();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.parse::<usize>().ok())?;
            if body.len() >= length {
                return Some((text, stream));
            }
        }
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 => response.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// reqwest for the tests' own requests. It is built without a crypto provider of its own (the
/// exporter hands it aws-lc-rs explicitly), so the tests make aws-lc-rs the process default.
pub(crate) fn test_client_builder() -> reqwest::ClientBuilder {
    // Err only when a provider is installed already: then it is this one.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::builder()
}

pub(crate) fn test_client() -> reqwest::Client {
    test_client_builder().build().unwrap()
}

/// Retries `check` until it holds or the deadline passes.
pub(crate) async fn eventually<F, Fut>(mut check: F) -> bool
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

fn report_path(period: Period) -> String {
    format!("/v1.0/reports/getSkypeForBusinessOrganizerActivityMinuteCounts(period='{period}')")
}

/// The token endpoint's path for tenant `id`.
fn token_path(id: &str) -> String {
    format!("/{id}/oauth2/v2.0/token")
}

/// The identity platform issuing [`ACCESS_TOKEN`] for `expires_in` seconds.
pub(crate) fn token_response(expires_in: u64) -> ResponseTemplate {
    issued_token(ACCESS_TOKEN, expires_in)
}

/// The identity platform issuing `access_token` for `expires_in` seconds.
pub(crate) fn issued_token(access_token: &str, expires_in: u64) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": access_token,
    }))
}

/// The identity platform refusing a client secret, as Entra ID words it.
pub(crate) fn invalid_client_secret() -> ResponseTemplate {
    ResponseTemplate::new(401).set_body_json(serde_json::json!({
        "error": "invalid_client",
        "error_description": "AADSTS7000215: Invalid client secret provided.",
        "error_codes": [7000215],
    }))
}

/// Graph throttling: 429 with `Retry-After: retry_after` (seconds), or without one.
pub(crate) fn throttled(retry_after: Option<&str>) -> ResponseTemplate {
    let answer = ResponseTemplate::new(429);
    match retry_after {
        Some(seconds) => answer.insert_header("retry-after", seconds),
        None => answer,
    }
}

/// Matches requests without an Authorization header: the download must not carry the token.
struct NoAuthorization;

impl Match for NoAuthorization {
    fn matches(&self, request: &Request) -> bool {
        !request.headers.contains_key("authorization")
    }
}

/// The value of the one sample of `series` (name and labels exactly as exposed), if present.
pub(crate) fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Asserts the value of the one sample of `series` in the exposition `body` (`None`: absent).
#[track_caller]
pub(crate) fn assert_sample(body: &str, series: &str, expected: Option<f64>) {
    assert_eq!(sample(body, series), expected, "{series} in:\n{body}");
}

/// An address that accepts connections and drops them at once: a dependable connection error
/// (a closed port could be reused by another test's server).
pub(crate) fn dropping_server() -> SocketAddr {
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
pub(crate) fn per_period(name: &str, period: impl Display) -> String {
    format!(r#"{name}{{period="{period}",tenant="{TENANT}"}}"#)
}

pub(crate) fn success(period: impl Display) -> String {
    per_period("sfb_refresh_success", period)
}

pub(crate) fn failures(period: impl Display, reason: &str) -> String {
    format!(
        r#"sfb_refresh_failures_total{{period="{period}",reason="{reason}",tenant="{TENANT}"}}"#
    )
}

/// How the exporter is configured; [`Scenario`]'s methods change it.
struct Options {
    periods: Vec<Period>,
    interval: Duration,
    timeout: Duration,
    max_body_bytes: u64,
    retry: RetryPolicy,
    web_config: Option<PathBuf>,
    /// How the exporter signs in; None: the client secret the token mock expects.
    credential: Option<Credential>,
    /// --config.file; its tenants default to the fake Graph as authority and Graph.
    tenants_file: Option<PathBuf>,
    enable_lifecycle: bool,
    max_concurrency: usize,
    shard: Shard,
    server: ServerLimits,
    exporter_metrics: bool,
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

impl Options {
    fn config(self, graph: &MockServer) -> Config {
        let base = Url::parse(&graph.uri()).unwrap();
        Config {
            listen_address: "127.0.0.1:0".parse().unwrap(),
            web_config_file: self.web_config,
            web_config_check_interval: Duration::from_millis(100),
            telemetry_path: "/metrics".into(),
            server: self.server,
            exporter_metrics: self.exporter_metrics,
            periods: Periods::new(self.periods.clone()).unwrap(),
            refresh_interval: self.interval,
            graph_timeout: self.timeout,
            max_body_bytes: self.max_body_bytes,
            retry: self.retry,
            source: match self.tenants_file {
                Some(path) => Source::File {
                    path,
                    defaults: TenantDefaults {
                        cloud: Cloud::Global,
                        authority_host: Some(base.clone()),
                        graph_url: Some(base.clone()),
                        periods: Periods::new(self.periods).unwrap(),
                        managed_identity: Ok(ManagedEndpoint::Imds { host: base }),
                    },
                },
                None => Source::Azure {
                    identity: Identity {
                        tenant_id: TENANT.into(),
                        credential: self.credential.unwrap_or_else(|| Credential::Secret {
                            client_id: CLIENT_ID.into(),
                            secret: SecretString::from(CLIENT_SECRET),
                        }),
                        origin: Origin::Environment,
                    },
                    authority: base.clone(),
                    graph: base,
                },
            },
            max_concurrency: self.max_concurrency,
            shard: self.shard,
            enable_lifecycle: self.enable_lifecycle,
        }
    }
}

/// The fake Graph of one test, set up in one expression: which answers the identity platform,
/// the report requests and the download host give, and how the exporter is configured.
///
/// `Scenario::new().await.token_ok().report(Period::D7, ONE_DAY).spawn().await`. Answers are
/// mounted in the order given; `first(n)` makes the last one answer only the first `n` matching
/// requests, ahead of those without it, so sequences read top to bottom.
pub(crate) struct Scenario {
    graph: MockServer,
    download: MockServer,
    mocks: Vec<(Host, Mock)>,
    /// Priority of the next `first(n)` answer: 1, 2, ... ahead of wiremock's default 5.
    next_priority: u8,
    options: Options,
    files: tempfile::TempDir,
}

#[derive(Clone, Copy)]
enum Host {
    Graph,
    Download,
}

impl Scenario {
    pub(crate) async fn new() -> Scenario {
        Scenario {
            graph: MockServer::start().await,
            download: MockServer::start().await,
            mocks: Vec::new(),
            next_priority: 1,
            options: Options::default(),
            files: tempfile::tempdir().unwrap(),
        }
    }

    /// What most tests need: a token, and D7 serving [`ONE_DAY`].
    pub(crate) async fn healthy() -> Scenario {
        Scenario::new().await.token_ok().report(Period::D7, ONE_DAY)
    }

    /// The token endpoint issues a one-hour token for the exact client credentials form.
    pub(crate) fn token_ok(self) -> Scenario {
        let mock = Mock::given(method("POST"))
            .and(path(token_path(TENANT)))
            .and(body_string_contains("grant_type=client_credentials"))
            .and(body_string_contains(format!("client_id={CLIENT_ID}")))
            .and(body_string_contains(format!(
                "client_secret={CLIENT_SECRET}"
            )))
            .and(body_string_contains("scope=http%3A%2F%2F127.0.0.1"))
            .and(body_string_contains("%2F.default"))
            .respond_with(token_response(3599));
        self.on(Host::Graph, mock)
    }

    /// The token endpoint answers only after 30 s, past any timeout of the tests.
    pub(crate) fn token_hangs(self) -> Scenario {
        self.token_answers(token_response(3599).set_delay(Duration::from_secs(30)))
    }

    /// The token endpoint (any form) answers `answer`.
    pub(crate) fn token_answers(self, answer: impl Respond + 'static) -> Scenario {
        let mock = Mock::given(method("POST"))
            .and(path(token_path(TENANT)))
            .respond_with(answer);
        self.on(Host::Graph, mock)
    }

    /// The complete happy path for `period`: the report request redirects (with the bearer
    /// token only) and the download (without it) serves `csv`.
    pub(crate) fn report(self, period: Period, csv: impl Into<Vec<u8>>) -> Scenario {
        self.redirect(period).download(period, csv)
    }

    /// `report` for each of `periods`, serving the same `csv`.
    pub(crate) fn reports(self, periods: impl IntoIterator<Item = Period>, csv: &str) -> Scenario {
        periods
            .into_iter()
            .fold(self, |scenario, period| scenario.report(period, csv))
    }

    /// The report request for `period` (with any token) answers `answer`.
    pub(crate) fn report_answers(self, period: Period, answer: impl Respond + 'static) -> Scenario {
        let mock = Mock::given(method("GET"))
            .and(path(report_path(period)))
            .respond_with(answer);
        self.on(Host::Graph, mock)
    }

    /// The report request for `period` redirects to `location`, wherever that is.
    pub(crate) fn report_redirects_to(self, period: Period, location: &str) -> Scenario {
        self.report_answers(
            period,
            ResponseTemplate::new(302).insert_header("location", location),
        )
    }

    /// The report request for `period` that sends `If-None-Match: etag` answers 304.
    pub(crate) fn report_not_modified(self, period: Period, etag: &str) -> Scenario {
        let mock = Mock::given(method("GET"))
            .and(path(report_path(period)))
            .and(header("if-none-match", etag))
            .respond_with(ResponseTemplate::new(304));
        self.on(Host::Graph, mock).first_of_all()
    }

    /// The report request for `period` with the bearer token redirects to the download host.
    pub(crate) fn redirect(self, period: Period) -> Scenario {
        let mock = Mock::given(method("GET"))
            .and(path(report_path(period)))
            .and(header(
                "authorization",
                format!("Bearer {ACCESS_TOKEN}").as_str(),
            ))
            .respond_with(
                ResponseTemplate::new(302)
                    .insert_header("location", self.download_url(period).as_str()),
            );
        self.on(Host::Graph, mock)
    }

    /// The download of `period`, asked without an Authorization header, answers `answer`.
    pub(crate) fn download_answers(
        self,
        period: Period,
        answer: impl Respond + 'static,
    ) -> Scenario {
        let mock = Mock::given(method("GET"))
            .and(path(format!("/reports/{period}.csv")))
            .and(NoAuthorization)
            .respond_with(answer);
        self.on(Host::Download, mock)
    }

    /// The download of `period`, asked without an Authorization header, serves `body`.
    pub(crate) fn download(self, period: Period, body: impl Into<Vec<u8>>) -> Scenario {
        self.download_answers(
            period,
            ResponseTemplate::new(200).set_body_bytes(body.into()),
        )
    }

    /// A tenant of a --config.file, answered for every period: its token for its own secret
    /// only (or as its behaviour says), its report for its own token, and its own download.
    pub(crate) fn tenant(self, t: &FakeTenant) -> Scenario {
        let token = Mock::given(method("POST"))
            .and(path(token_path(&t.id)))
            .and(body_string_contains(format!(
                "client_secret={}",
                secret(&t.id)
            )));
        let answer = match t.behaviour {
            Behaviour::Healthy => issued_token(&format!("token-{}", t.id), 3599),
            Behaviour::BadSecret => invalid_client_secret(),
            Behaviour::Hung => ResponseTemplate::new(200).set_delay(Duration::from_secs(600)),
        };
        let mut scenario = self.on(Host::Graph, token.respond_with(answer));
        for period in Period::ALL {
            let file = format!("/{}/{period}.csv", t.id);
            let location = format!("{}{file}?{DOWNLOAD_SIG}", scenario.download.uri());
            let redirect = Mock::given(method("GET"))
                .and(path(report_path(period)))
                .and(header(
                    "authorization",
                    format!("Bearer token-{}", t.id).as_str(),
                ))
                .respond_with(
                    ResponseTemplate::new(302).insert_header("location", location.as_str()),
                );
            let csv = format!(
                "{HEADER}\n2024-03-05,2024-03-04,{},{},1,0\n",
                period.days(),
                minutes(&t.id)
            );
            let download = Mock::given(method("GET"))
                .and(path(file))
                .and(NoAuthorization)
                .respond_with(ResponseTemplate::new(200).set_body_string(csv));
            scenario = scenario
                .on(Host::Graph, redirect)
                .on(Host::Download, download);
        }
        scenario
    }

    /// `tenant` for each of `tenants`.
    pub(crate) fn tenants<'a>(self, tenants: impl IntoIterator<Item = &'a FakeTenant>) -> Scenario {
        tenants
            .into_iter()
            .fold(self, |scenario, t| scenario.tenant(t))
    }

    /// The exporter reads its tenants from a --config.file listing `tenants`, their secrets
    /// in files next to it; [`TestApp::write_tenants`] rewrites it.
    pub(crate) fn tenants_file(mut self, tenants: &[&FakeTenant]) -> Scenario {
        self.options.tenants_file = Some(write_tenants(self.files.path(), tenants));
        self
    }

    /// The last answer given serves only the first `n` requests it matches, before the answers
    /// given without `first`.
    pub(crate) fn first(mut self, n: u64) -> Scenario {
        let priority = self.next_priority;
        assert!(priority < 5, "more sequenced answers than priorities");
        self.next_priority += 1;
        self.last(|mock| mock.up_to_n_times(n).with_priority(priority))
    }

    /// The last answer given must be asked exactly `n` times by the end of the test.
    pub(crate) fn expect(self, n: u64) -> Scenario {
        self.last(|mock| mock.expect(n))
    }

    pub(crate) fn periods(mut self, periods: impl IntoIterator<Item = Period>) -> Scenario {
        self.options.periods = periods.into_iter().collect();
        self
    }

    pub(crate) fn interval(mut self, interval: Duration) -> Scenario {
        self.options.interval = interval;
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Scenario {
        self.options.timeout = timeout;
        self
    }

    pub(crate) fn max_body_bytes(mut self, max_body_bytes: u64) -> Scenario {
        self.options.max_body_bytes = max_body_bytes;
        self
    }

    /// Retries after the first try of a Graph exchange (3 unless set).
    pub(crate) fn max_retries(mut self, max_retries: u32) -> Scenario {
        self.options.retry.max_retries = max_retries;
        self
    }

    /// --web.config.file.
    pub(crate) fn web_config(mut self, path: PathBuf) -> Scenario {
        self.options.web_config = Some(path);
        self
    }

    /// How the exporter signs in, instead of the client secret `token_ok` expects.
    pub(crate) fn credential(mut self, credential: Credential) -> Scenario {
        self.options.credential = Some(credential);
        self
    }

    /// --web.disable-exporter-metrics.
    pub(crate) fn without_exporter_metrics(mut self) -> Scenario {
        self.options.exporter_metrics = false;
        self
    }

    /// --web.enable-lifecycle.
    pub(crate) fn enable_lifecycle(mut self) -> Scenario {
        self.options.enable_lifecycle = true;
        self
    }

    /// The connection cap, instead of the one the fd limit gives.
    pub(crate) fn max_connections(mut self, max_connections: usize) -> Scenario {
        self.options.server.max_connections = Some(max_connections);
        self
    }

    /// --graph.max-concurrency.
    pub(crate) fn max_concurrency(mut self, max_concurrency: usize) -> Scenario {
        self.options.max_concurrency = max_concurrency;
        self
    }

    /// --shard.count and --shard.index.
    pub(crate) fn shard(mut self, shard: Shard) -> Scenario {
        self.options.shard = shard;
        self
    }

    /// The fake Graph's base URL, for answers built by hand.
    pub(crate) fn graph_uri(&self) -> String {
        self.graph.uri()
    }

    /// Where the redirect for `period` points, for answers built by hand.
    pub(crate) fn download_url(&self, period: Period) -> String {
        format!(
            "{}/reports/{period}.csv?{DOWNLOAD_SIG}",
            self.download.uri()
        )
    }

    /// Mounts the answers and starts the exporter against them, its log caught.
    pub(crate) async fn spawn(mut self) -> TestApp {
        let logs = Logs::capture();
        let config = std::mem::take(&mut self.options).config(&self.graph);
        let fakes = self.servers().await;
        let cancel = CancellationToken::new();
        let running = sfb_exporter::start(config, cancel.clone())
            .await
            .expect("exporter starts");
        TestApp {
            addr: running.local_addr,
            graph: fakes.graph,
            download: fakes.download,
            http: test_client(),
            files: fakes.files,
            logs,
            cancel,
            running: Some(running),
        }
    }

    /// Mounts the answers and hands over the fakes, for an exporter started another way.
    pub(crate) async fn servers(self) -> Fakes {
        for (host, mock) in self.mocks {
            match host {
                Host::Graph => mock.mount(&self.graph).await,
                Host::Download => mock.mount(&self.download).await,
            }
        }
        Fakes {
            graph: self.graph,
            download: self.download,
            files: self.files,
        }
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

/// An HTTP/2 client connection over a stream that negotiated `h2` (ALPN): requests, and
/// whether the server has closed the connection.
pub(crate) struct H2 {
    sender: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    connection: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl H2 {
    pub(crate) async fn handshake<S>(io: S) -> Result<H2, String>
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
    pub(crate) async fn get(
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
    pub(crate) fn closed(&self) -> bool {
        self.connection.is_finished()
    }
}
