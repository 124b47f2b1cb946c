//! Command line and environment, resolved once at startup into an immutable [`Config`].

pub mod tenants;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use secrecy::SecretString;
use url::Url;

use crate::auth::certificate::{self, CertificateError, ClientCertificate};
use crate::auth::credential::read_federated_token;
use crate::auth::managed::{ManagedEndpoint, IMDS_HOST};
use crate::auth::{Credential, Identity};
use crate::http::RetryPolicy;
use crate::report::{Period, Periods};
use crate::telemetry::{LogFormat, LogLevel};

/// Port from the 9xxx range that the Prometheus default-port-allocations list leaves unused:
/// 9100-9999 is fully allocated to exporters, 9090-9094 to Prometheus' own components.
pub const DEFAULT_PORT: u16 = 9065;

/// Graph allows 14 CSV report requests per 10 minutes per app and tenant.
const GRAPH_REQUESTS_PER_WINDOW: u32 = 14;
const GRAPH_WINDOW: Duration = Duration::from_secs(600);

/// Identity variables that --config.file replaces.
const IGNORED_WITH_FILE: [&str; 7] = [
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
    "AZURE_FEDERATED_TOKEN_FILE",
];

const AFTER_HELP: &str = "\
Identity (ignored with --demo), read from the environment variables the Azure SDKs use:
  AZURE_TENANT_ID                     directory (tenant) ID, required
  AZURE_CLIENT_ID                     application (client) ID; for managed identity, a user-assigned one
  AZURE_CLIENT_SECRET                 client secret value (or use --azure.client-secret-file)
  AZURE_CLIENT_CERTIFICATE_PATH       PEM (certificate and RSA key) or PKCS#12 file
  AZURE_CLIENT_CERTIFICATE_PASSWORD   PKCS#12 password (or use --azure.client-certificate-password-file)
  AZURE_CLIENT_SEND_CERTIFICATE_CHAIN true or 1: send the chain (x5c) for subject name/issuer auth
  AZURE_FEDERATED_TOKEN_FILE          workload identity: file holding the federated token
  IDENTITY_ENDPOINT, IDENTITY_HEADER  managed identity on App Service, Container Apps, Functions
  AZURE_POD_IDENTITY_AUTHORITY_HOST   managed identity: replaces http://169.254.169.254 (IMDS)
  AZURE_AUTHORITY_HOST                identity platform host (default: per --azure.cloud)

--azure.credential auto takes the first configured of: client secret, certificate, workload
identity, managed identity (App Service variables only; IMDS needs --azure.credential
managed-identity). The app registration or managed identity needs the Reports.Read.All
application permission with admin consent.";

#[derive(Debug, Parser)]
#[command(
    name = "sfb-exporter",
    version,
    about = "Prometheus exporter for the Microsoft Graph report getSkypeForBusinessOrganizerActivityMinuteCounts",
    after_help = AFTER_HELP
)]
pub struct Args {
    /// Address to listen on: :PORT, HOST:PORT or [IPv6]:PORT.
    #[arg(long = "web.listen-address", value_name = "ADDR", default_value_t = ListenAddress::default())]
    pub listen_address: ListenAddress,

    /// Path to a web configuration file (TLS, basic auth, headers) in the format of Prometheus'
    /// exporter-toolkit.
    #[arg(long = "web.config.file", value_name = "PATH")]
    pub web_config_file: Option<PathBuf>,

    /// Maximum number of parallel scrape requests; more get 503 at once. 0 means no limit.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40)]
    pub max_requests: usize,

    /// Leave out the exporter's own process_* metrics.
    #[arg(long = "web.disable-exporter-metrics")]
    pub disable_exporter_metrics: bool,

    /// Path under which to expose metrics.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics", value_parser = parse_telemetry_path)]
    pub telemetry_path: String,

    /// Microsoft Graph root URL; the token scope is <graph.url>/.default [default: per --azure.cloud].
    #[arg(long = "graph.url", global = true, value_name = "URL", value_parser = parse_base_url)]
    pub graph_url: Option<Url>,

    /// Microsoft cloud: global (also GCC), china (21Vianet), usgov (GCC High) or usgov-dod (DoD).
    #[arg(long = "azure.cloud", global = true, value_enum, default_value_t = Cloud::Global)]
    pub cloud: Cloud,

    /// How to sign in: auto, secret, certificate, workload-identity or managed-identity.
    #[arg(long = "azure.credential", global = true, value_enum, default_value_t = CredentialKind::Auto)]
    pub credential: CredentialKind,

    /// Comma-separated report periods to keep: any of D7, D30, D90, D180.
    #[arg(long = "report.periods", value_name = "LIST", default_value = "D7,D30,D90,D180", value_parser = parse_periods)]
    pub periods: Periods,

    /// How often to refresh each period's report (e.g. 30s, 15m, 1h).
    #[arg(long = "refresh.interval", value_name = "DURATION", default_value = "1h", value_parser = parse_interval)]
    pub refresh_interval: Duration,

    /// Upper bound on each HTTP exchange with Graph or the identity platform.
    #[arg(long = "graph.timeout", global = true, value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub graph_timeout: Duration,

    /// Largest response body accepted from Graph or the identity platform, in bytes.
    #[arg(long = "graph.max-body-bytes", global = true, value_name = "BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_body_bytes: u64,

    /// Retries within one refresh after 429, 502-504 or a connection error.
    #[arg(long = "graph.max-retries", global = true, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub max_retries: u32,

    /// File holding the client secret (Docker and Kubernetes secrets); overrides AZURE_CLIENT_SECRET.
    #[arg(long = "azure.client-secret-file", global = true, value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,

    /// File holding the PKCS#12 password; overrides AZURE_CLIENT_CERTIFICATE_PASSWORD.
    #[arg(
        long = "azure.client-certificate-password-file",
        global = true,
        value_name = "PATH"
    )]
    pub client_certificate_password_file: Option<PathBuf>,

    /// Validate flags, environment, files and certificates, print the resolved setup and
    /// exit (non-zero on problems); contacts no network.
    #[arg(long = "config.check")]
    pub config_check: bool,

    /// Serve simulated data from a built-in fake Graph on loopback; no Azure credentials needed.
    #[arg(long, global = true)]
    pub demo: bool,

    /// YAML file listing the tenants to export (see README, "Many tenants"); the AZURE_*
    /// identity variables are then ignored. Re-read on SIGHUP and POST /-/reload.
    #[arg(
        long = "config.file",
        global = true,
        value_name = "PATH",
        conflicts_with = "demo"
    )]
    pub config_file: Option<PathBuf>,

    /// Enable POST /-/reload, which re-reads --config.file.
    #[arg(long = "web.enable-lifecycle")]
    pub enable_lifecycle: bool,

    /// Most exchanges with Graph and the identity platform in flight at once, across all tenants.
    #[arg(long = "graph.max-concurrency", value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_concurrency: u32,

    /// Replicas sharing the tenants of --config.file [default: 1].
    // No clap default: given without --config.file, it is refused rather than ignored.
    #[arg(long = "shard.count", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_count: Option<u64>,

    /// This replica's shard, 0 to --shard.count minus 1: it keeps the tenants whose FNV-1a 64
    /// hash of the lowercased tenant_id, modulo --shard.count, equals this index [default: 0].
    #[arg(long = "shard.index", value_name = "I")]
    pub shard_index: Option<u64>,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", global = true, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write the daily rows of a report (D180 by default) as OpenMetrics text for
    /// `promtool tsdb create-blocks-from openmetrics`, then exit; starts no web server.
    #[command(after_help = BACKFILL_AFTER_HELP)]
    Backfill(BackfillArgs),
}

const BACKFILL_AFTER_HELP: &str = "\
Identity, --demo and the --graph.* flags work as for the exporter (see sfb-exporter --help).
Then, with Prometheus stopped or running:
  promtool tsdb create-blocks-from openmetrics history.om ./blocks
  move ./blocks/* into Prometheus' data directory (--storage.tsdb.path)
Prometheus' --storage.tsdb.retention.time must exceed the period (15d by default): blocks
older than the retention are deleted at once.";

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// Report period to fetch: D7, D30, D90 or D180 (the days of history written).
    #[arg(long = "backfill.period", value_name = "PERIOD", default_value = "D180", value_parser = Period::from_str)]
    pub period: Period,

    /// File to write, replaced whole and only on success (through a symlink, the file it
    /// points to); a FIFO or a character device is written to; - is stdout [default: stdout].
    #[arg(long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    Global,
    China,
    /// US Government L4 (GCC High).
    Usgov,
    /// US Government L5 (DoD).
    UsgovDod,
}

impl Cloud {
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::China => "https://login.chinacloudapi.cn",
            Cloud::Usgov | Cloud::UsgovDod => "https://login.microsoftonline.us",
        }
    }

    pub fn graph(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
            Cloud::Usgov => "https://graph.microsoft.us",
            Cloud::UsgovDod => "https://dod-graph.microsoft.us",
        }
    }
}

/// `--azure.credential`: which kind of credential to sign in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialKind {
    Auto,
    Secret,
    Certificate,
    WorkloadIdentity,
    ManagedIdentity,
}

impl CredentialKind {
    fn name(self) -> &'static str {
        match self {
            CredentialKind::Auto => "auto",
            CredentialKind::Secret => "secret",
            CredentialKind::Certificate => "certificate",
            CredentialKind::WorkloadIdentity => "workload-identity",
            CredentialKind::ManagedIdentity => "managed-identity",
        }
    }
}

fn parse_periods(s: &str) -> Result<Periods, String> {
    let periods = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(Period::from_str)
        .collect::<Result<Vec<_>, _>>()?;
    Periods::new(periods)
        .ok_or_else(|| "no period given: allowed values are D7, D30, D90, D180".to_string())
}

/// Where to listen. A host name is kept as given and resolved when binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddress {
    pub host: String,
    pub port: u16,
}

impl Default for ListenAddress {
    fn default() -> Self {
        ListenAddress {
            host: String::new(),
            port: DEFAULT_PORT,
        }
    }
}

impl ListenAddress {
    /// The string to hand to `TcpListener::bind`; an empty host means every IPv4 interface,
    /// as `:PORT` does for Go exporters on hosts without IPv6.
    pub fn bind_target(&self) -> String {
        match self.host.as_str() {
            "" => format!("0.0.0.0:{}", self.port),
            h if h.contains(':') => format!("[{h}]:{}", self.port),
            h => format!("{h}:{}", self.port),
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.as_str() {
            "" => write!(f, ":{}", self.port),
            h if h.contains(':') => write!(f, "[{h}]:{}", self.port),
            h => write!(f, "{h}:{}", self.port),
        }
    }
}

impl FromStr for ListenAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid listen address {s:?}: expected :PORT, HOST:PORT or [IPv6]:PORT");
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(bad)?;
            inner.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            inner
        } else {
            // A bare IPv6 address without brackets is ambiguous with the port separator.
            if host.contains(':') || host.contains(char::is_whitespace) || host.contains('/') {
                return Err(bad());
            }
            host
        };
        Ok(ListenAddress {
            host: host.to_string(),
            port,
        })
    }
}

pub(crate) fn parse_telemetry_path(s: &str) -> Result<String, String> {
    let bad =
        || format!("invalid telemetry path {s:?}: expected an absolute path such as /metrics");
    let path = s.strip_suffix('/').unwrap_or(s);
    let segments: Vec<&str> = path.strip_prefix('/').ok_or_else(bad)?.split('/').collect();
    // Empty segments, and the route syntax of the router (`:x`, `*x`, `{x}`), are not paths.
    let plain = |seg: &&str| {
        !seg.is_empty()
            && !seg.starts_with([':', '*'])
            && !seg.contains(['{', '}', '?', '#', '%'])
            && !seg.contains(|c: char| c.is_whitespace() || c.is_control())
    };
    if !segments.iter().all(plain) {
        return Err(bad());
    }
    if ["/healthz", "/readyz", "/-/reload"].contains(&path) {
        return Err(format!(
            "telemetry path {s:?} collides with a health endpoint"
        ));
    }
    Ok(path.to_string())
}

pub(crate) fn parse_base_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("invalid URL {s:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("invalid URL {s:?}: expected http(s)://host[:port]"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "invalid URL {s:?}: a base URL takes no query or fragment"
        ));
    }
    Ok(url)
}

/// The longest domain name DNS carries, and so the longest tenant ID.
const MAX_DOMAIN_NAME: usize = 253;
const MAX_DOMAIN_LABEL: usize = 63;

/// The sign-in aliases of the identity platform: they name no tenant, and a token for the
/// client credentials grant needs one.
const TENANT_ALIASES: [&str; 3] = ["common", "organizations", "consumers"];

/// Checks a tenant ID, from AZURE_TENANT_ID or a `tenant_id` of --config.file, before it goes
/// into the token URL's path, the `tenant` label and log lines as it is. The identity
/// platform takes a directory ID (a GUID, which is itself one DNS label) or a domain name of
/// the tenant, so anything that is not a DNS name is refused: a dot segment (`..`) would
/// resolve out of the URL, and `?`, `#`, `/` or a newline would change what it names.
/// The problem is returned without the value: a value in the wrong variable may be a secret.
pub(crate) fn check_tenant_id(id: &str) -> Result<(), &'static str> {
    const EXPECTED: &str = "expected a directory ID (GUID) or a domain name such as contoso.onmicrosoft.com (letters, digits and hyphens in dot-separated labels)";
    if id.len() > MAX_DOMAIN_NAME {
        return Err("longer than the 253 characters of a domain name: expected a directory ID (GUID) or a domain name such as contoso.onmicrosoft.com");
    }
    let label = |l: &str| {
        (1..=MAX_DOMAIN_LABEL).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !id.split('.').all(label) {
        return Err(EXPECTED);
    }
    // 10.0.0.1 has the shape of a domain name, but no top-level domain is all digits.
    let top = id.rsplit('.').next().unwrap_or_default();
    if top.bytes().all(|b| b.is_ascii_digit()) {
        return Err(EXPECTED);
    }
    if TENANT_ALIASES
        .iter()
        .any(|alias| id.eq_ignore_ascii_case(alias))
    {
        return Err("common, organizations and consumers name no tenant, and client credentials need one: give the directory ID (GUID) or a domain name of the tenant");
    }
    Ok(())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}): expected e.g. 30s, 15m, 1h"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err(format!("refresh interval {s:?} is below the minimum of 1s"));
    }
    Ok(d)
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("a timeout of 0 would fail every request: give e.g. 30s".to_string());
    }

    Ok(d)
}

/// Which tenants of --config.file this replica keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub count: u64,
    pub index: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { count: 1, index: 0 }
    }
}

/// What a tenant of --config.file takes from the flags and the environment when the file
/// leaves it out.
#[derive(Debug, Clone)]
pub struct TenantDefaults {
    pub cloud: Cloud,
    /// AZURE_AUTHORITY_HOST.
    pub authority_host: Option<Url>,
    /// --graph.url.
    pub graph_url: Option<Url>,
    pub periods: Periods,
    /// Where managed_identity tenants get tokens: chosen from the environment as for
    /// `--azure.credential managed-identity`. Err says why there is none, for the tenants
    /// that need one.
    pub managed_identity: Result<ManagedEndpoint, String>,
}

impl TenantDefaults {
    /// The identity platform for a tenant of `cloud` without an authority_host of its own.
    pub fn authority(&self, cloud: Cloud) -> Url {
        self.authority_host
            .clone()
            .unwrap_or_else(|| Url::parse(cloud.authority()).expect("preset URL is valid"))
    }

    /// Graph for a tenant of `cloud` without a graph_url of its own.
    pub fn graph(&self, cloud: Cloud) -> Url {
        self.graph_url
            .clone()
            .unwrap_or_else(|| Url::parse(cloud.graph()).expect("preset URL is valid"))
    }
}

/// Where reports come from.
// Built once at startup; boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Source {
    /// A real (or test) Graph and identity platform.
    Azure {
        identity: Identity,
        authority: Url,
        graph: Url,
    },
    /// The built-in simulation, started on loopback by the exporter itself.
    Demo,
    /// The tenants listed in --config.file, read at startup and on reload.
    File {
        path: PathBuf,
        defaults: TenantDefaults,
    },
}

/// How the HTTP server treats connections and requests.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// The whole request head, within this of its first byte.
    pub header_read_timeout: Duration,
    /// A kept-alive connection between requests: longer than any scrape interval.
    pub idle_timeout: Duration,
    /// Open connections; None derives it from the file descriptor limit.
    pub max_connections: Option<usize>,
    /// Requests in flight on the telemetry path (--web.max-requests); 0 means no limit.
    pub max_requests: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_connections: None,
            max_requests: 40,
        }
    }
}

#[derive(Debug)]
pub struct Config {
    pub listen_address: ListenAddress,
    pub web_config_file: Option<PathBuf>,
    /// How often the web config's files are checked for changes.
    pub web_config_check_interval: Duration,
    pub telemetry_path: String,
    pub server: ServerLimits,
    /// The process_* series on /metrics (off with --web.disable-exporter-metrics).
    pub exporter_metrics: bool,
    pub periods: Periods,
    pub refresh_interval: Duration,
    pub graph_timeout: Duration,
    pub max_body_bytes: u64,
    pub retry: RetryPolicy,
    pub source: Source,
    /// Bound on Graph exchanges in flight across all tenants.
    pub max_concurrency: usize,
    pub shard: Shard,
    /// POST /-/reload.
    pub enable_lifecycle: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set: export it (see --help), or run with --demo to try the exporter without Azure credentials")]
    MissingVariable(&'static str),
    #[error("{0} is set but empty: give it a value")]
    EmptyVariable(&'static str),
    #[error("{name} is not set, and --azure.credential {kind} needs it (see --help)")]
    MissingFor {
        name: &'static str,
        kind: &'static str,
    },
    #[error("no credential configured: set AZURE_CLIENT_SECRET (or --azure.client-secret-file), AZURE_CLIENT_CERTIFICATE_PATH or AZURE_FEDERATED_TOKEN_FILE, or use --azure.credential managed-identity; --demo runs without Azure")]
    NoCredential,
    #[error("AZURE_AUTHORITY_HOST: {0}")]
    AuthorityHost(String),
    #[error("AZURE_TENANT_ID: {0}")]
    TenantId(&'static str),
    #[error("{name}: {problem}")]
    Endpoint { name: &'static str, problem: String },
    #[error("{flag} {path:?} {error}: it should hold the {what}")]
    SecretFile {
        flag: &'static str,
        path: PathBuf,
        what: &'static str,
        error: crate::files::SecretFileError,
    },
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error("{0}")]
    FederatedToken(String),
    #[error("--shard.index {index} is out of range for --shard.count {count}: give 0 to {}", count - 1)]
    ShardIndex { index: u64, count: u64 },
    #[error("{0} shares out the tenants of --config.file, and there is none: give --config.file, or drop the --shard.* flags (every replica would export the same tenant)")]
    ShardWithoutFile(&'static str),
}

const SECRET_FILE: &str = "--azure.client-secret-file";
const PASSWORD_FILE: &str = "--azure.client-certificate-password-file";

impl Config {
    /// Resolves the arguments against the environment; `env` is a lookup so tests need not
    /// touch the process environment. Fails with the first problem; see [`Config::check`].
    pub fn resolve(
        args: Args,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::check(args, env).map_err(|mut problems| problems.swap_remove(0))
    }

    /// Like [`Config::resolve`], but reports every problem it finds, for `--config.check`.
    pub fn check(
        args: Args,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, Vec<ConfigError>> {
        if args.config_file.is_none() {
            let given = [
                ("--shard.count", args.shard_count.is_some()),
                ("--shard.index", args.shard_index.is_some()),
            ];
            if let Some((flag, _)) = given.into_iter().find(|(_, given)| *given) {
                return Err(vec![ConfigError::ShardWithoutFile(flag)]);
            }
        }
        let shard = Shard {
            count: args.shard_count.unwrap_or(1),
            index: args.shard_index.unwrap_or(0),
        };
        if shard.index >= shard.count {
            return Err(vec![ConfigError::ShardIndex {
                index: shard.index,
                count: shard.count,
            }]);
        }
        let source = if let Some(path) = &args.config_file {
            file_source(path, &args, &env).map_err(|e| vec![e])?
        } else if args.demo {
            Source::Demo
        } else {
            azure_source(&args, &env)?
        };
        Ok(Config {
            listen_address: args.listen_address,
            web_config_file: args.web_config_file,
            web_config_check_interval: Duration::from_secs(10),
            telemetry_path: args.telemetry_path,
            server: ServerLimits {
                max_requests: args.max_requests,
                ..ServerLimits::default()
            },
            exporter_metrics: !args.disable_exporter_metrics,
            periods: args.periods,
            refresh_interval: args.refresh_interval,
            graph_timeout: args.graph_timeout,
            max_body_bytes: args.max_body_bytes,
            retry: RetryPolicy {
                max_retries: args.max_retries,
                ..RetryPolicy::default()
            },
            source,
            max_concurrency: args.max_concurrency as usize,
            shard,
            enable_lifecycle: args.enable_lifecycle,
        })
    }

    /// Warnings to log at startup: an expired client certificate, a refresh rate that Graph
    /// would throttle.
    pub fn warnings(&self, now: std::time::SystemTime) -> Vec<String> {
        self.certificate_warning(now)
            .into_iter()
            .chain(self.throttling_warning())
            .collect()
    }

    /// For `--config.check`: the client certificate has expired, so every token request
    /// would fail. It names the date.
    pub fn certificate_problem(&self, now: std::time::SystemTime) -> Option<String> {
        match &self.source {
            Source::Azure { identity, .. } => {
                let certificate = identity.credential.certificate()?;
                certificate
                    .expired(now)
                    .then(|| certificate.expiry_warning(now))
                    .flatten()
            }
            Source::Demo | Source::File { .. } => None,
        }
    }

    /// A warning when the client certificate has expired or expires soon.
    pub fn certificate_warning(&self, now: std::time::SystemTime) -> Option<String> {
        match &self.source {
            Source::Azure { identity, .. } => {
                identity.credential.certificate()?.expiry_warning(now)
            }
            Source::Demo | Source::File { .. } => None,
        }
    }

    /// The resolved setup as `name: value` lines, free of secrets, for `--config.check`.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mut lines = Vec::new();
        match &self.source {
            Source::Demo => lines.push(("source", "demo (built-in simulated Graph)".into())),
            Source::File { path, .. } => {
                lines.push(("source", format!("--config.file {}", path.display())));
                lines.push((
                    "shard",
                    format!("{} of {}", self.shard.index, self.shard.count),
                ));
            }
            Source::Azure {
                identity,
                authority,
                graph,
            } => {
                let credential = &identity.credential;
                lines.push(("credential", credential.kind().into()));
                lines.push(("tenant", identity.tenant_id.clone()));
                let client = credential.client_id().map_or_else(
                    || "none (system-assigned identity)".to_string(),
                    str::to_string,
                );
                lines.push(("client id", client));
                lines.push(("authority", authority.to_string()));
                lines.push(("graph", graph.to_string()));
                match credential {
                    Credential::Certificate {
                        certificate,
                        send_chain,
                        ..
                    } => {
                        lines.push(("certificate file", certificate.path().display().to_string()));
                        lines.push(("certificate subject", certificate.subject().into()));
                        lines.push(("certificate notAfter", certificate.not_after_text()));
                        lines.push(("certificate x5t#S256", certificate.thumbprint().into()));
                        lines.push(("send certificate chain", send_chain.to_string()));
                    }
                    Credential::WorkloadIdentity { token_file, .. } => {
                        lines.push(("federated token file", token_file.display().to_string()));
                    }
                    Credential::ManagedIdentity { endpoint, .. } => {
                        lines.push(("managed identity endpoint", endpoint.describe()));
                    }
                    Credential::Secret { .. } => {}
                }
            }
        }
        let periods: Vec<String> = self.periods.iter().map(|p| p.to_string()).collect();
        lines.push(("periods", periods.join(",")));
        lines.push((
            "refresh interval",
            humantime::format_duration(self.refresh_interval).to_string(),
        ));
        lines.push(("listen address", self.listen_address.to_string()));
        lines.push(("telemetry path", self.telemetry_path.clone()));
        lines
    }

    /// Requests per Graph throttling window this configuration makes in steady state.
    pub fn requests_per_window(&self) -> f64 {
        self.periods.len() as f64 * GRAPH_WINDOW.as_secs_f64() / self.refresh_interval.as_secs_f64()
    }

    /// A warning to log when the configuration would exceed Graph's report throttling limit.
    pub fn throttling_warning(&self) -> Option<String> {
        let rate = self.requests_per_window();
        (rate > f64::from(GRAPH_REQUESTS_PER_WINDOW)).then(|| {
            format!(
                "--refresh.interval {} with {} period(s) makes {rate:.0} report requests per 10 minutes, above Graph's limit of {GRAPH_REQUESTS_PER_WINDOW}: expect 429 throttling; raise --refresh.interval",
                humantime::format_duration(self.refresh_interval),
                self.periods.len()
            )
        })
    }
}

/// --config.file: the tenants come from the file, the environment's identity is ignored.
fn file_source(
    path: &Path,
    args: &Args,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Source, ConfigError> {
    // The identity flags too: given with the file, they would otherwise do nothing silently.
    let flags = [
        (
            "--azure.credential",
            args.credential != CredentialKind::Auto,
        ),
        (
            "--azure.client-secret-file",
            args.client_secret_file.is_some(),
        ),
        (
            "--azure.client-certificate-password-file",
            args.client_certificate_password_file.is_some(),
        ),
    ];
    let ignored: Vec<&str> = IGNORED_WITH_FILE
        .into_iter()
        .filter(|name| env(name).is_some())
        .chain(
            flags
                .into_iter()
                .filter(|(_, given)| *given)
                .map(|(flag, _)| flag),
        )
        .collect();
    if !ignored.is_empty() {
        tracing::info!(
            ignored = ignored.join(","),
            "--config.file lists the tenants; the identity variables of the environment are ignored"
        );
    }
    let authority_host = match set(env, "AZURE_AUTHORITY_HOST") {
        Some(v) => Some(parse_base_url(&v).map_err(ConfigError::AuthorityHost)?),
        None => None,
    };
    let managed_identity = managed_endpoint(env).map_err(|problems| {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        problems.join("; ")
    });
    Ok(Source::File {
        path: path.to_path_buf(),
        defaults: TenantDefaults {
            cloud: args.cloud,
            authority_host,
            graph_url: args.graph_url.clone(),
            periods: args.periods.clone(),
            managed_identity,
        },
    })
}

/// The Azure source, or every problem found on the way.
fn azure_source(
    args: &Args,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Source, Vec<ConfigError>> {
    let mut problems = Vec::new();
    let tenant_id = required(env, "AZURE_TENANT_ID")
        .and_then(|id| {
            check_tenant_id(&id).map_err(ConfigError::TenantId)?;
            Ok(id)
        })
        .map_err(|e| problems.push(e))
        .ok();
    let authority = match set(env, "AZURE_AUTHORITY_HOST") {
        Some(v) => parse_base_url(&v)
            .map_err(|e| problems.push(ConfigError::AuthorityHost(e)))
            .ok(),
        None => Some(Url::parse(args.cloud.authority()).expect("preset URL is valid")),
    };
    let graph = args
        .graph_url
        .clone()
        .unwrap_or_else(|| Url::parse(args.cloud.graph()).expect("preset URL is valid"));
    let credential = credential(args, env, &mut problems);
    match (tenant_id, authority, credential) {
        (Some(tenant_id), Some(authority), Some(credential)) if problems.is_empty() => {
            Ok(Source::Azure {
                identity: Identity {
                    tenant_id,
                    credential,
                },
                authority,
                graph,
            })
        }
        _ => Err(problems),
    }
}

/// A variable's trimmed value; None when unset or blank.
fn set(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn required(
    env: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<String, ConfigError> {
    match env(name) {
        None => Err(ConfigError::MissingVariable(name)),
        Some(v) if v.trim().is_empty() => Err(ConfigError::EmptyVariable(name)),
        Some(v) => Ok(v.trim().to_string()),
    }
}

/// The kind `auto` picks: the first one configured, in the Azure SDKs' order. IMDS is never
/// picked: on a host that is not an Azure VM, probing it hangs or reaches something else.
fn auto_kind(args: &Args, env: &impl Fn(&str) -> Option<String>) -> Option<CredentialKind> {
    if args.client_secret_file.is_some() || set(env, "AZURE_CLIENT_SECRET").is_some() {
        Some(CredentialKind::Secret)
    } else if set(env, "AZURE_CLIENT_CERTIFICATE_PATH").is_some() {
        Some(CredentialKind::Certificate)
    } else if set(env, "AZURE_FEDERATED_TOKEN_FILE").is_some() {
        Some(CredentialKind::WorkloadIdentity)
    } else if set(env, "IDENTITY_ENDPOINT").is_some() && set(env, "IDENTITY_HEADER").is_some() {
        Some(CredentialKind::ManagedIdentity)
    } else {
        None
    }
}

fn credential(
    args: &Args,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<ConfigError>,
) -> Option<Credential> {
    let kind = match args.credential {
        CredentialKind::Auto => auto_kind(args, env),
        explicit => Some(explicit),
    };
    let Some(kind) = kind else {
        problems.push(ConfigError::NoCredential);
        return None;
    };
    let input = |name: &'static str| {
        set(env, name).ok_or(ConfigError::MissingFor {
            name,
            kind: kind.name(),
        })
    };
    let client_id = || required(env, "AZURE_CLIENT_ID");
    let resolved = match kind {
        CredentialKind::Auto => unreachable!("auto resolves to a kind"),
        CredentialKind::Secret => {
            let secret = match &args.client_secret_file {
                Some(path) => read_secret_file(SECRET_FILE, path, "client secret value"),
                None => input("AZURE_CLIENT_SECRET"),
            };
            both(client_id(), secret).map(|(client_id, secret)| Credential::Secret {
                client_id,
                secret: SecretString::from(secret),
            })
        }
        CredentialKind::Certificate => {
            let certificate = input("AZURE_CLIENT_CERTIFICATE_PATH").and_then(|path| {
                let password = match &args.client_certificate_password_file {
                    Some(file) => Some(read_secret_file(PASSWORD_FILE, file, "PKCS#12 password")?),
                    // A password may legitimately start or end with spaces: taken as given.
                    None => env("AZURE_CLIENT_CERTIFICATE_PASSWORD").filter(|p| !p.is_empty()),
                };
                let password = password.map(SecretString::from);
                Ok(ClientCertificate::load(
                    Path::new(&path),
                    password.as_ref(),
                    certificate::Settings::ENVIRONMENT,
                )?)
            });
            let send_chain = set(env, "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN")
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
            both(client_id(), certificate).map(|(client_id, certificate)| Credential::Certificate {
                client_id,
                certificate: Arc::new(certificate),
                send_chain,
            })
        }
        CredentialKind::WorkloadIdentity => {
            const TOKEN_FILE: &str = "AZURE_FEDERATED_TOKEN_FILE";
            let token_file = input(TOKEN_FILE).and_then(|file| {
                // Read once now so that a missing mount fails at startup, not at the first
                // refresh; it is read again at every token request.
                let file = PathBuf::from(file);
                read_federated_token(&file, TOKEN_FILE).map_err(ConfigError::FederatedToken)?;
                Ok(file)
            });
            both(client_id(), token_file).map(|(client_id, token_file)| {
                Credential::WorkloadIdentity {
                    client_id,
                    token_file,
                    token_file_setting: TOKEN_FILE,
                }
            })
        }
        CredentialKind::ManagedIdentity => {
            managed_endpoint(env).map(|endpoint| Credential::ManagedIdentity {
                client_id: set(env, "AZURE_CLIENT_ID"),
                endpoint,
            })
        }
    };
    resolved.map_err(|e| problems.extend(e)).ok()
}

/// Both results, or every error of the two.
fn both<A, B>(
    a: Result<A, ConfigError>,
    b: Result<B, ConfigError>,
) -> Result<(A, B), Vec<ConfigError>> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => Err(a.err().into_iter().chain(b.err()).collect()),
    }
}

fn managed_endpoint(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ManagedEndpoint, Vec<ConfigError>> {
    let url = |name: &'static str, value: &str| {
        parse_base_url(value).map_err(|problem| vec![ConfigError::Endpoint { name, problem }])
    };
    match (set(env, "IDENTITY_ENDPOINT"), env("IDENTITY_HEADER")) {
        (Some(endpoint), Some(header)) if !header.trim().is_empty() => {
            let header = header.trim();
            // Checked here, or every token request would fail as an unclear builder error.
            if reqwest::header::HeaderValue::from_str(header).is_err() {
                return Err(vec![ConfigError::Endpoint {
                    name: "IDENTITY_HEADER",
                    problem: "holds characters an HTTP header cannot carry: check how it is set"
                        .into(),
                }]);
            }
            Ok(ManagedEndpoint::AppService {
                endpoint: url("IDENTITY_ENDPOINT", &endpoint)?,
                header: SecretString::from(header.to_string()),
            })
        }
        (Some(_), _) => Err(vec![ConfigError::MissingFor {
            name: "IDENTITY_HEADER",
            kind: "managed-identity with IDENTITY_ENDPOINT",
        }]),
        (None, _) => {
            let host = set(env, "AZURE_POD_IDENTITY_AUTHORITY_HOST");
            Ok(ManagedEndpoint::Imds {
                host: url(
                    "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                    host.as_deref().unwrap_or(IMDS_HOST),
                )?,
            })
        }
    }
}

fn read_secret_file(
    flag: &'static str,
    path: &Path,
    what: &'static str,
) -> Result<String, ConfigError> {
    crate::files::read_secret(path).map_err(|error| ConfigError::SecretFile {
        flag,
        path: path.to_path_buf(),
        what,
        error,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("sfb-exporter").chain(extra.iter().copied()))
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    const IDENTITY: [(&str, &str); 3] = [
        ("AZURE_TENANT_ID", "tenant-1"),
        ("AZURE_CLIENT_ID", "client-1"),
        ("AZURE_CLIENT_SECRET", "s3cret"),
    ];

    fn secret(identity: &Identity) -> &str {
        match &identity.credential {
            Credential::Secret { secret, .. } => secret.expose_secret(),
            other => panic!("expected a client secret, got {other:?}"),
        }
    }

    fn resolved(extra: &[&str], vars: &[(&str, &str)]) -> Result<Identity, Vec<String>> {
        match Config::check(args(extra).unwrap(), env(vars)) {
            Ok(Config {
                source: Source::Azure { identity, .. },
                ..
            }) => Ok(identity),
            Ok(_) => panic!("expected an Azure source"),
            Err(problems) => Err(problems.iter().map(|p| p.to_string()).collect()),
        }
    }

    fn fixture(name: &str) -> String {
        format!(
            "{}/tests/fixtures/identity/{name}",
            env!("CARGO_MANIFEST_DIR")
        )
    }

    #[test]
    fn auto_takes_the_first_configured_credential_in_the_sdk_order() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "federated").unwrap();
        let token = token.to_str().unwrap();
        let base = [("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c")];
        let all = [
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/cert.pem"),
            ("AZURE_FEDERATED_TOKEN_FILE", token),
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi/token"),
            ("IDENTITY_HEADER", "h"),
        ];
        let kinds = [
            "secret",
            "certificate",
            "workload-identity",
            "managed-identity",
        ];
        // Drop the earlier kinds one by one: each time the next one is chosen.
        for (skip, kind) in [0, 1, 2, 3].into_iter().zip(kinds) {
            let vars: Vec<_> = base.iter().chain(&all[skip..]).copied().collect();
            match resolved(&[], &vars) {
                Ok(identity) => assert_eq!(identity.credential.kind(), kind),
                // The certificate path does not exist: chosen, and reported.
                Err(problems) => {
                    assert_eq!(kind, "certificate");
                    assert!(
                        problems[0].contains("/nonexistent/cert.pem"),
                        "{problems:?}"
                    );
                }
            }
        }
        // IMDS is never chosen by auto, and IDENTITY_ENDPOINT alone is not App Service.
        let vars = [base[0], base[1], all[3]];
        let problems = resolved(&[], &vars).unwrap_err();
        assert_eq!(problems.len(), 1);
        for name in [
            "AZURE_CLIENT_SECRET",
            "AZURE_CLIENT_CERTIFICATE_PATH",
            "AZURE_FEDERATED_TOKEN_FILE",
            "--azure.credential managed-identity",
        ] {
            assert!(problems[0].contains(name), "{problems:?}");
        }
    }

    #[test]
    fn explicit_kinds_use_their_inputs_alone() {
        let vars = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:5"),
        ];
        let problems = resolved(&["--azure.credential", "certificate"], &vars).unwrap_err();
        assert_eq!(
            problems,
            [
                "AZURE_CLIENT_ID is not set: export it (see --help), or run with --demo to try the exporter without Azure credentials",
                "AZURE_CLIENT_CERTIFICATE_PATH is not set, and --azure.credential certificate needs it (see --help)",
            ]
        );
        let problems = resolved(&["--azure.credential", "workload-identity"], &vars).unwrap_err();
        assert!(
            problems[1].contains("AZURE_FEDERATED_TOKEN_FILE"),
            "{problems:?}"
        );

        // Managed identity: IMDS at the override, system-assigned without AZURE_CLIENT_ID.
        let identity = resolved(&["--azure.credential", "managed-identity"], &vars).unwrap();
        let Credential::ManagedIdentity {
            client_id,
            endpoint,
        } = &identity.credential
        else {
            panic!("{identity:?}")
        };
        assert_eq!(client_id, &None);
        assert_eq!(
            endpoint.describe(),
            "IMDS http://127.0.0.1:5/metadata/identity/oauth2/token"
        );
        let mut with_header = vars.to_vec();
        with_header.push(("IDENTITY_ENDPOINT", "http://127.0.0.1:6/msi/token"));
        let problems =
            resolved(&["--azure.credential", "managed-identity"], &with_header).unwrap_err();
        assert!(problems[0].contains("IDENTITY_HEADER"), "{problems:?}");
        with_header.push(("IDENTITY_HEADER", "hdr\u{7}secret"));
        let problems =
            resolved(&["--azure.credential", "managed-identity"], &with_header).unwrap_err();
        assert_eq!(
            problems,
            ["IDENTITY_HEADER: holds characters an HTTP header cannot carry: check how it is set"]
        );
    }

    /// Tenant IDs that are no DNS name, or name no tenant; also used by tenants.rs.
    pub(crate) const BAD_TENANT_IDS: [&str; 20] = [
        "..",
        ".",
        "x?y",
        "a/../../b",
        "t#frag",
        "a\nb",
        "a b",
        "a..b",
        ".contoso.com",
        "contoso.com.",
        "-contoso.com",
        "contoso-.com",
        "con_toso.com",
        "contoso%2ecom",
        "c\u{f6}ntoso.com",
        "10.0.0.1",
        "common",
        "Organizations",
        "consumers",
        "{00000000-0000-0000-0000-000000000000}",
    ];

    fn tenant_id_from_env(id: &str) -> Result<String, Vec<String>> {
        let mut vars = IDENTITY.to_vec();
        vars[0] = ("AZURE_TENANT_ID", id);
        resolved(&[], &vars).map(|identity| identity.tenant_id)
    }

    #[test]
    fn tenant_ids_are_directory_ids_or_domain_names() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = ["a".repeat(63).as_str(); 4].join(".") + ".com";
        for bad in BAD_TENANT_IDS
            .iter()
            .copied()
            .chain([long_label.as_str(), long_name.as_str()])
        {
            let problems = tenant_id_from_env(bad).unwrap_err();
            assert_eq!(problems.len(), 1, "{bad:?}: {problems:?}");
            let problem = &problems[0];
            assert!(
                problem.starts_with("AZURE_TENANT_ID: "),
                "{bad:?}: {problem}"
            );
            assert_eq!(problem.lines().count(), 1, "{bad:?}: {problem}");
        }
        // The value is not repeated: it could be a secret set in the wrong variable.
        let swapped = "Q7x8Q~client.secret_value";
        assert!(!tenant_id_from_env(swapped).unwrap_err()[0].contains("secret"));
        assert!(tenant_id_from_env("common").unwrap_err()[0].contains("name no tenant"));
        let longest = ["a".repeat(63).as_str(); 3].join(".")
            + ".abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghi";
        assert_eq!(longest.len(), 253);
        for good in [
            "00000000-0000-0000-0000-000000000000",
            "72F988BF-86F1-41AF-91AB-2D7CD011DB47",
            "contoso.onmicrosoft.com",
            "contoso.partner.onmschina.cn",
            "xn--cntoso-jua.com",
            "tenant-1",
            longest.as_str(),
        ] {
            assert_eq!(tenant_id_from_env(good).as_deref(), Ok(good));
        }
        // Surrounding white space is trimmed, as for every variable.
        assert_eq!(
            tenant_id_from_env(" contoso.com\n").as_deref(),
            Ok("contoso.com")
        );
    }

    #[test]
    fn shard_flags_need_the_config_file() {
        for (extra, flag) in [
            (&["--shard.count", "2"][..], "--shard.count"),
            (&["--shard.index", "0"], "--shard.index"),
            (
                &["--demo", "--shard.count", "1", "--shard.index", "0"],
                "--shard.count",
            ),
        ] {
            let problems = Config::check(args(extra).unwrap(), env(&IDENTITY)).unwrap_err();
            assert_eq!(problems.len(), 1, "{extra:?}: {problems:?}");
            let problem = problems[0].to_string();
            assert!(
                problem.starts_with(&format!("{flag} shares out the tenants of --config.file")),
                "{problem}"
            );
        }
        let c = Config::resolve(args(&[]).unwrap(), env(&IDENTITY)).unwrap();
        assert_eq!(c.shard, Shard::default());
        let file = ["--config.file", "/etc/sfb/tenants.yml"];
        let c = Config::resolve(
            args(&[&file[..], &["--shard.count", "3", "--shard.index", "2"]].concat()).unwrap(),
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.shard, Shard { count: 3, index: 2 });
        let e = Config::resolve(
            args(&[&file[..], &["--shard.index", "1"]].concat()).unwrap(),
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "--shard.index 1 is out of range for --shard.count 1: give 0 to 0"
        );
    }

    #[test]
    fn certificate_inputs() {
        let password_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(password_file.path(), "test-p12-password\n").unwrap();
        let p12 = fixture("aes.p12");
        let vars = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", p12.as_str()),
            ("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "TRUE"),
        ];
        let flag = [
            "--azure.client-certificate-password-file",
            password_file.path().to_str().unwrap(),
        ];
        let identity = resolved(&flag, &vars).unwrap();
        let Credential::Certificate { send_chain, .. } = &identity.credential else {
            panic!("{identity:?}")
        };
        assert!(send_chain);
        let mut env_password = vars.to_vec();
        env_password.push(("AZURE_CLIENT_CERTIFICATE_PASSWORD", "nope-secret-9"));
        let problems = resolved(&[], &env_password).unwrap_err();
        assert!(
            problems[0].contains("wrong PKCS#12 password"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("nope-secret-9"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let vars = [
            ("AZURE_AUTHORITY_HOST", "ftp://x"),
            ("AZURE_CLIENT_CERTIFICATE_PATH", "/nonexistent/c.pem"),
        ];
        let problems = resolved(&[], &vars).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("AZURE_TENANT_ID is not set"));
        assert!(problems[1].starts_with("AZURE_AUTHORITY_HOST"));
        assert!(problems[2].starts_with("AZURE_CLIENT_ID is not set"));
        assert!(problems[3].contains("/nonexistent/c.pem"));
    }

    #[test]
    fn us_government_clouds() {
        for (cloud, graph) in [
            ("usgov", "graph.microsoft.us"),
            ("usgov-dod", "dod-graph.microsoft.us"),
        ] {
            let c =
                Config::resolve(args(&["--azure.cloud", cloud]).unwrap(), env(&IDENTITY)).unwrap();
            let Source::Azure {
                authority,
                graph: g,
                ..
            } = c.source
            else {
                panic!()
            };
            assert_eq!(authority.as_str(), "https://login.microsoftonline.us/");
            assert_eq!(g.host_str(), Some(graph));
        }
    }

    #[test]
    fn defaults() {
        let a = args(&[]).unwrap();
        assert_eq!(a.listen_address.to_string(), format!(":{DEFAULT_PORT}"));
        assert_eq!(a.telemetry_path, "/metrics");
        assert_eq!(a.periods, Periods::new(Period::ALL).unwrap());
        assert_eq!(a.refresh_interval, Duration::from_secs(3600));
        assert_eq!(a.graph_timeout, Duration::from_secs(30));
        let c = Config::resolve(a, env(&IDENTITY)).unwrap();
        let Source::Azure {
            identity,
            authority,
            graph,
        } = c.source
        else {
            panic!("expected Azure source")
        };
        assert_eq!(authority.as_str(), "https://login.microsoftonline.com/");
        assert_eq!(graph.as_str(), "https://graph.microsoft.com/");
        assert_eq!(secret(&identity), "s3cret");
    }

    #[test]
    fn listen_addresses() {
        let cases = [
            (":9065", "", 9065, "0.0.0.0:9065"),
            ("127.0.0.1:80", "127.0.0.1", 80, "127.0.0.1:80"),
            ("[::]:9065", "::", 9065, "[::]:9065"),
            ("[::1]:1", "::1", 1, "[::1]:1"),
            ("localhost:9065", "localhost", 9065, "localhost:9065"),
        ];
        for (input, host, port, bind) in cases {
            let a: ListenAddress = input.parse().unwrap();
            assert_eq!((a.host.as_str(), a.port), (host, port), "{input}");
            assert_eq!(a.bind_target(), bind);
            assert_eq!(a.to_string(), input);
        }
        for bad in [
            "9065",
            ":",
            ":99999",
            "::1:80",
            "[::1:80",
            "[nothost]:80",
            "a b:1",
            "",
        ] {
            assert!(bad.parse::<ListenAddress>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn periods_are_validated_and_deduplicated() {
        let a = args(&["--report.periods", "d30, D7,D30"]).unwrap();
        assert_eq!(
            a.periods.iter().collect::<Vec<_>>(),
            vec![Period::D7, Period::D30]
        );
        let err = args(&["--report.periods", "D7,D14"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("D14") && err.contains("D7, D30, D90, D180"),
            "{err}"
        );
        assert!(args(&["--report.periods", ","]).is_err());
    }

    #[test]
    fn durations() {
        // Any interval of 1s or more is accepted, however long: timers never overflow.
        let a = args(&["--refresh.interval", "100000years"]).unwrap();
        assert!(a.refresh_interval > Duration::from_secs(3_000_000_000_000));
        let a = args(&["--refresh.interval", "1s", "--graph.timeout", "250ms"]).unwrap();
        assert_eq!(a.refresh_interval, Duration::from_secs(1));
        assert_eq!(a.graph_timeout, Duration::from_millis(250));
        for bad in [
            vec!["--refresh.interval", "500ms"],
            vec!["--refresh.interval", "soon"],
            vec!["--graph.timeout", "0s"],
        ] {
            assert!(args(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn telemetry_path() {
        assert_eq!(
            args(&["--web.telemetry-path", "/x/"])
                .unwrap()
                .telemetry_path,
            "/x"
        );
        assert_eq!(
            args(&["--web.telemetry-path", "/a/b-c_d.e"])
                .unwrap()
                .telemetry_path,
            "/a/b-c_d.e"
        );
        for bad in [
            "metrics", "/", "//", "/a//b", "/:id", "/*x", "/{x}", "/a{b", "/healthz", "/readyz/",
            "/a?b", "/a b", "/%20",
        ] {
            assert!(args(&["--web.telemetry-path", bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn missing_identity_names_the_variable() {
        let err = Config::resolve(args(&[]).unwrap(), env(&IDENTITY[..2])).unwrap_err();
        assert!(
            err.to_string().starts_with("no credential configured"),
            "{err}"
        );
        let err = Config::resolve(args(&[]).unwrap(), env(&[])).unwrap_err();
        assert!(
            err.to_string().starts_with("AZURE_TENANT_ID is not set"),
            "{err}"
        );
        assert!(Config::resolve(args(&["--demo"]).unwrap(), env(&[])).is_ok());
    }

    #[test]
    fn china_cloud_and_overrides() {
        let c =
            Config::resolve(args(&["--azure.cloud", "china"]).unwrap(), env(&IDENTITY)).unwrap();
        let Source::Azure {
            authority, graph, ..
        } = c.source
        else {
            panic!()
        };
        assert_eq!(authority.host_str(), Some("login.chinacloudapi.cn"));
        assert_eq!(graph.host_str(), Some("microsoftgraph.chinacloudapi.cn"));

        let mut vars = IDENTITY.to_vec();
        vars.push(("AZURE_AUTHORITY_HOST", "https://login.example.test"));
        let a = args(&[
            "--azure.cloud",
            "china",
            "--graph.url",
            "https://graph.example.test",
        ])
        .unwrap();
        let c = Config::resolve(a, env(&vars)).unwrap();
        let Source::Azure {
            authority, graph, ..
        } = c.source
        else {
            panic!()
        };
        assert_eq!(authority.host_str(), Some("login.example.test"));
        assert_eq!(graph.host_str(), Some("graph.example.test"));
    }

    #[test]
    fn secret_file_wins_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("sfb-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let a = args(&["--azure.client-secret-file", dir.to_str().unwrap()]).unwrap();
        let c = Config::resolve(a, env(&IDENTITY)).unwrap();
        let Source::Azure { identity, .. } = c.source else {
            panic!()
        };
        assert_eq!(secret(&identity), "from-file");
        assert!(!format!("{identity:?}").contains("from-file"));
        std::fs::remove_file(&dir).unwrap();
        let a = args(&["--azure.client-secret-file", "/dev/zero"]).unwrap();
        let err = Config::resolve(a, env(&IDENTITY)).unwrap_err();
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");
    }

    #[test]
    fn throttling_warning() {
        let warn = |interval: &str| {
            let a = args(&["--demo", "--refresh.interval", interval]).unwrap();
            Config::resolve(a, env(&[])).unwrap().throttling_warning()
        };
        assert!(warn("1h").is_none());
        // 4 periods every 3 minutes is 13.3 requests per 10 minutes: still within the limit.
        assert!(warn("3m").is_none());
        assert!(warn("2m")
            .unwrap()
            .contains("20 report requests per 10 minutes"));
    }
}
