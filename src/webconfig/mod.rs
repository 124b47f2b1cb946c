//! `--web.config.file`: the TLS, basic auth, header and rate limit settings that Prometheus'
//! Go exporters take (prometheus/exporter-toolkit), validated whole with one-line errors.
//!
//! `file` reads and checks the YAML, `tls` builds the TLS configuration from it, `auth` holds
//! what every request meets, `reload` swaps in a new configuration while serving.

mod auth;
mod file;
mod reload;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

pub use auth::{guard, Security};
pub use reload::{ReloadTrigger, WebConfigReload};
pub use tls::ECDH_P521;

#[derive(Debug, thiserror::Error)]
#[error("--web.config.file {path:?}: {message}")]
pub struct WebConfigError {
    path: PathBuf,
    message: String,
}

/// What the web config asks of the server.
pub struct WebConfig {
    pub tls: Option<Arc<ServerConfig>>,
    /// HTTP/2 over TLS; plain HTTP is HTTP/1.1 only, as in the toolkit.
    pub http2: bool,
    pub security: Arc<Security>,
    /// The files this configuration was read from, as they were then.
    pub sources: Sources,
}

/// Size and modification time of every file a configuration was read from, to tell when it
/// must be read again (certificates get rotated; Kubernetes swaps mounted secrets by symlink,
/// which the metadata, following links, sees).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(Vec<(PathBuf, Option<(std::time::SystemTime, u64)>)>);

impl Sources {
    fn of(paths: Vec<PathBuf>) -> Sources {
        Sources(
            paths
                .into_iter()
                .map(|path| {
                    let meta = std::fs::metadata(&path)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len())));
                    (path, meta)
                })
                .collect(),
        )
    }

    /// The same files as they are now.
    pub fn now(&self) -> Sources {
        Sources::of(self.0.iter().map(|(path, _)| path.clone()).collect())
    }
}

impl WebConfig {
    /// No TLS, no auth, no extra headers: what runs without --web.config.file.
    pub fn plain() -> WebConfig {
        WebConfig {
            tls: None,
            http2: false,
            security: Security::none(),
            sources: Sources(Vec::new()),
        }
    }

    /// Reads and checks the whole file, and every file it names, before returning anything.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let fail = |message: String| WebConfigError {
            path: path.to_path_buf(),
            message: crate::text::one_line(&message, 400),
        };
        // Taken before reading, so that a change made while reading is seen next time.
        let sources = Sources::of(vec![path.to_path_buf()]);
        let file = file::read(path).map_err(fail)?;
        // Relative file names in the config are relative to the config file, as in the toolkit.
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls_file = file.tls_server_config.map(file::TlsFile::without_empty);
        let sources = Sources(
            sources
                .0
                .into_iter()
                .chain(Sources::of(tls_file.iter().flat_map(|t| t.files(dir)).collect()).0)
                .collect(),
        );
        // As in the toolkit, user hashes are checked before anything else is built.
        let users = file
            .basic_auth_users
            .filter(|u| !u.is_empty())
            .map(auth::Users::new)
            .transpose()
            .map_err(fail)?;
        let http = file.http_server_config.unwrap_or_default();
        let http2 = http.http2.unwrap_or(true);
        let headers = file::headers(http.headers.unwrap_or_default()).map_err(fail)?;
        // A tls_server_config that sets none of certificate, key, client CA or client auth
        // means plain HTTP, as there; setting any of them asks for TLS, and a missing
        // certificate is then an error, never a silent fall-back to plain HTTP.
        let tls = tls_file
            .filter(file::TlsFile::is_enabled)
            .map(|t| tls::server_config(t, dir, http2).map(Arc::new))
            .transpose()
            .map_err(fail)?;
        let limiter = match file.rate_limit {
            Some(limit) => {
                let every = limit
                    .interval
                    .map(|i| i.to_duration())
                    .transpose()
                    .map_err(fail)?
                    .unwrap_or_default();
                // An interval of 0 means no limit, as in the toolkit.
                (!every.is_zero()).then(|| auth::RateLimiter::new(every, limit.burst.unwrap_or(0)))
            }
            None => None,
        };
        Ok(WebConfig {
            http2: http2 && tls.is_some(),
            tls,
            security: Arc::new(Security::new(users, headers, limiter)),
            sources,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<WebConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        WebConfig::load(&path).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_is_plain_http() {
        let c = load("").unwrap();
        assert!(c.tls.is_none() && !c.security.requires_auth());
        let c = load(
            "basic_auth_users: {}
tls_server_config:
  min_version: TLS13
",
        )
        .unwrap();
        assert!(
            !c.security.requires_auth(),
            "an empty user list means no auth, as in the toolkit"
        );
        assert!(
            c.tls.is_none(),
            "no certificate and no key means plain HTTP, as in the toolkit"
        );
    }

    #[test]
    fn client_auth_without_a_certificate_is_refused_not_plain_http() {
        for tls in [
            "client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt",
            "client_auth_type: RequireAnyClientCert",
            "client_ca_file: ca.crt",
            "client_ca: x",
            "key_file: server.key",
            "cert_file: \"\"\n  key_file: server.key",
        ] {
            let err = load(&format!("tls_server_config:\n  {tls}\n"))
                .err()
                .unwrap_or_else(|| panic!("{tls:?} accepted"));
            assert!(err.contains("missing one of cert or cert_file"), "{err}");
        }
        let err = load("tls_server_config:\n  cert_file: server.crt\n  key: \"\"\n")
            .err()
            .unwrap();
        assert!(err.contains("missing one of key or key_file"), "{err}");
    }

    #[test]
    fn bad_configurations_name_what_is_wrong() {
        let cases = [
            (
                "tls_server_config:\n  key_file: k\n",
                "missing one of cert or cert_file",
            ),
            (
                "tls_server_config:\n  cert_file: /nonexistent/c\n  key_file: k\n",
                "/nonexistent/c",
            ),
            (
                "tls_server_config:\n  key_file: k\n  min_version: TLS10\n",
                "missing one of cert or cert_file",
            ),
            ("unknown_key: 1\n", "unknown field `unknown_key`"),
            (
                "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_NOPE]\n",
                "unknown cipher",
            ),
            (
                "basic_auth_users:\n  alice: plaintext\n",
                "the password of \"alice\" is not a bcrypt hash",
            ),
            (
                "http_server_config:\n  headers:\n    Server: x\n",
                "\"Server\" can not be configured",
            ),
            (
                "http_server_config:\n  headers:\n    X-XSS-Protection: \"a\\nb\"\n",
                "invalid value for X-XSS-Protection",
            ),
            ("rate_limit:\n  interval: soon\n", "rate_limit.interval"),
            ("tls_server_config: [\n", "invalid YAML"),
            ("basic_auth_users: \"hunter2secret\"\n", "invalid YAML"),
        ];
        for (yaml, expected) in cases {
            let err = load(yaml)
                .err()
                .unwrap_or_else(|| panic!("{yaml:?} accepted"));
            assert!(err.contains(expected), "{yaml:?}: {err}");
            assert!(!err.contains('\n'), "{err:?}");
            assert!(!err.contains("hunter2secret"), "{err:?}");
        }
    }

    #[test]
    fn rate_limit_zero_interval_means_none() {
        assert!(load("rate_limit:\n  interval: 0\n  burst: 0\n").is_ok());
        assert!(load("rate_limit:\n  interval: 1s\n  burst: 0\n").is_ok());
    }
}
