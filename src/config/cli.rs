//! The command line: clap's arguments, their help texts and the parsers of their values.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use url::Url;

use super::cloud::{parse_base_url, Cloud};
use crate::report::{Period, Periods};
use crate::telemetry::{LogFormat, LogLevel};

/// Port from the 9xxx range that the Prometheus default-port-allocations list leaves unused:
/// 9100-9999 is fully allocated to exporters, 9090-9094 to Prometheus' own components.
pub const DEFAULT_PORT: u16 = 9065;
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
/// `--azure.credential`: which kind of credential to sign in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CredentialKind {
    Auto,
    Secret,
    Certificate,
    WorkloadIdentity,
    ManagedIdentity,
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
            "telemetry path {s:?} collides with the exporter's own endpoint {path}: choose another, such as /metrics"
        ));
    }
    Ok(path.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("sfb-exporter").chain(extra.iter().copied()))
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
}
