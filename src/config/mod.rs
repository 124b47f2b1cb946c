//! Command line and environment, resolved once at startup into an immutable [`Config`]: the
//! arguments ([`cli`]), the clouds ([`cloud`]), the identity of the environment
//! (`environment`) and the tenants of --config.file ([`tenants`]).

pub(crate) mod cli;
pub(crate) mod cloud;
mod environment;
pub(crate) mod tenants;

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::auth::load::CredentialError;
use crate::auth::{Credential, Identity};
use crate::http::RetryPolicy;
use crate::report::Periods;

pub(crate) use self::cli::ListenAddress;
pub use self::cli::{Args, BackfillArgs, Command, CredentialKind, DEFAULT_PORT};
pub use self::cloud::Cloud;
pub use self::tenants::{Shard, TenantDefaults};

/// Graph allows 14 CSV report requests per 10 minutes per app and tenant.
const GRAPH_REQUESTS_PER_WINDOW: u32 = 14;
const GRAPH_WINDOW: Duration = Duration::from_secs(600);

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
    #[error(transparent)]
    Credential(#[from] CredentialError),
    #[error("--shard.index {index} is out of range for --shard.count {count}: give 0 to {}", count - 1)]
    ShardIndex { index: u64, count: u64 },
    #[error("{0} shares out the tenants of --config.file, and there is none: give --config.file, or drop the --shard.* flags (every replica would export the same tenant)")]
    ShardWithoutFile(&'static str),
}

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
            environment::file_source(path, &args, &env).map_err(|e| vec![e])?
        } else if args.demo {
            Source::Demo
        } else {
            environment::azure_source(&args, &env)?
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::report::Period;
    use clap::Parser;
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
