//! Command line and environment, resolved once at startup into an immutable [`Config`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use secrecy::SecretString;
use url::Url;

use crate::auth::Identity;
use crate::graph::RetryPolicy;
use crate::report::{Period, Periods};
use crate::server::ServerLimits;
use crate::telemetry::{LogFormat, LogLevel};

/// Port from the 9xxx range that the Prometheus default-port-allocations list leaves unused:
/// 9100-9999 is fully allocated to exporters, 9090-9094 to Prometheus' own components.
pub const DEFAULT_PORT: u16 = 9065;

/// Graph allows 14 CSV report requests per 10 minutes per app and tenant.
const GRAPH_REQUESTS_PER_WINDOW: u32 = 14;
const GRAPH_WINDOW: Duration = Duration::from_secs(600);

const AFTER_HELP: &str = "\
Identity (ignored with --demo), read from the environment variables the Azure SDKs use:
  AZURE_TENANT_ID       directory (tenant) ID of the app registration
  AZURE_CLIENT_ID       application (client) ID
  AZURE_CLIENT_SECRET   client secret value (or use --azure.client-secret-file)
  AZURE_AUTHORITY_HOST  identity platform host (default: per --azure.cloud)

The app registration needs the Reports.Read.All application permission with admin consent.";

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
    #[arg(long = "graph.url", value_name = "URL", value_parser = parse_base_url)]
    pub graph_url: Option<Url>,

    /// Microsoft cloud: global, or china (Microsoft 365 operated by 21Vianet).
    #[arg(long = "azure.cloud", value_enum, default_value_t = Cloud::Global)]
    pub cloud: Cloud,

    /// Comma-separated report periods to keep: any of D7, D30, D90, D180.
    #[arg(long = "report.periods", value_name = "LIST", default_value = "D7,D30,D90,D180", value_parser = parse_periods)]
    pub periods: Periods,

    /// How often to refresh each period's report (e.g. 30s, 15m, 1h).
    #[arg(long = "refresh.interval", value_name = "DURATION", default_value = "1h", value_parser = parse_interval)]
    pub refresh_interval: Duration,

    /// Upper bound on each HTTP exchange with Graph or the identity platform.
    #[arg(long = "graph.timeout", value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub graph_timeout: Duration,

    /// Largest response body accepted from Graph or the identity platform, in bytes.
    #[arg(long = "graph.max-body-bytes", value_name = "BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_body_bytes: u64,

    /// Retries within one refresh after 429, 502-504 or a connection error.
    #[arg(long = "graph.max-retries", value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub max_retries: u32,

    /// File holding the client secret (Docker and Kubernetes secrets); overrides AZURE_CLIENT_SECRET.
    #[arg(long = "azure.client-secret-file", value_name = "PATH")]
    pub client_secret_file: Option<PathBuf>,

    /// Serve simulated data from a built-in fake Graph on loopback; no Azure credentials needed.
    #[arg(long)]
    pub demo: bool,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cloud {
    Global,
    China,
}

impl Cloud {
    fn authority(self) -> &'static str {
        match self {
            Cloud::Global => "https://login.microsoftonline.com",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    fn graph(self) -> &'static str {
        match self {
            Cloud::Global => "https://graph.microsoft.com",
            Cloud::China => "https://microsoftgraph.chinacloudapi.cn",
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
    if ["/healthz", "/readyz"].contains(&path) {
        return Err(format!(
            "telemetry path {s:?} collides with a health endpoint"
        ));
    }
    Ok(path.to_string())
}

fn parse_base_url(s: &str) -> Result<Url, String> {
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
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set: export it (see --help), or run with --demo to try the exporter without Azure credentials")]
    MissingVariable(&'static str),
    #[error("{0} is set but empty: give it a value")]
    EmptyVariable(&'static str),
    #[error("AZURE_AUTHORITY_HOST: {0}")]
    AuthorityHost(String),
    #[error("cannot read --azure.client-secret-file {path:?}: {error}")]
    SecretFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--azure.client-secret-file {0:?} is empty: write the client secret value into it")]
    EmptySecretFile(PathBuf),
    #[error("--azure.client-secret-file {0:?} is larger than 64 KiB: is it the right file?")]
    SecretFileTooLarge(PathBuf),
}

impl Config {
    /// Resolves the arguments against the environment; `env` is a lookup so tests need not
    /// touch the process environment.
    pub fn resolve(
        args: Args,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let source = if args.demo {
            Source::Demo
        } else {
            let required = |name: &'static str| match env(name) {
                None => Err(ConfigError::MissingVariable(name)),
                Some(v) if v.trim().is_empty() => Err(ConfigError::EmptyVariable(name)),
                Some(v) => Ok(v.trim().to_string()),
            };
            let tenant_id = required("AZURE_TENANT_ID")?;
            let client_id = required("AZURE_CLIENT_ID")?;
            let client_secret = match &args.client_secret_file {
                Some(path) => read_secret_file(path)?,
                None => required("AZURE_CLIENT_SECRET")?,
            };
            let authority = match env("AZURE_AUTHORITY_HOST").filter(|v| !v.trim().is_empty()) {
                Some(v) => parse_base_url(v.trim()).map_err(ConfigError::AuthorityHost)?,
                None => Url::parse(args.cloud.authority()).expect("preset URL is valid"),
            };
            let graph = args
                .graph_url
                .clone()
                .unwrap_or_else(|| Url::parse(args.cloud.graph()).expect("preset URL is valid"));
            Source::Azure {
                identity: Identity {
                    tenant_id,
                    client_id,
                    client_secret: SecretString::from(client_secret),
                },
                authority,
                graph,
            }
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
        })
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

fn read_secret_file(path: &PathBuf) -> Result<String, ConfigError> {
    use std::io::Read;
    // A client secret is some 40 characters; the cap keeps a wrong path such as /dev/zero from
    // eating memory.
    const MAX_SECRET_FILE: u64 = 64 * 1024;
    let io = |error| ConfigError::SecretFile {
        path: path.clone(),
        error,
    };
    let mut raw = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_SECRET_FILE + 1)
        .read_to_string(&mut raw)
        .map_err(io)?;
    if raw.len() as u64 > MAX_SECRET_FILE {
        return Err(ConfigError::SecretFileTooLarge(path.clone()));
    }
    // Kubernetes and Docker secrets usually end with a newline the secret does not contain.
    let secret = raw.trim_end_matches(['\r', '\n']);
    if secret.trim().is_empty() {
        return Err(ConfigError::EmptySecretFile(path.clone()));
    }
    Ok(secret.to_string())
}

#[cfg(test)]
mod tests {
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
        assert_eq!(identity.client_secret.expose_secret(), "s3cret");
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
            err.to_string()
                .starts_with("AZURE_CLIENT_SECRET is not set"),
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
        assert_eq!(identity.client_secret.expose_secret(), "from-file");
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
