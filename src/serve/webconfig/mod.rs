//! `--web.config.file`: the TLS, basic auth, header and rate limit settings that Prometheus'
//! Go exporters take (prometheus/exporter-toolkit), validated whole with one-line errors.
//!
//! `file` reads and checks the YAML, `tls` builds the TLS configuration from it, `auth` holds
//! what every request meets, `reload` swaps in a new configuration while serving.

mod auth;
mod client_certs;
mod file;
mod p521;
mod reload;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;

pub(crate) use auth::{guard, Security};
pub use p521::ECDH_P521;
pub(crate) use reload::{ReloadTrigger, WebConfigReload};

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
    /// What `tls` was built from, digested: a reload stores a new TLS configuration only when
    /// this differs.
    tls_fingerprint: Option<[u8; 32]>,
    client_certs: tls::ClientCertPolicy,
}

/// The content (SHA-256) of every file a configuration was read from, None where it could
/// not be read, to tell when it must be read again: certificates get rotated, Kubernetes
/// swaps mounted secrets by symlink, and a file copied with `cp -p` keeps its size and
/// modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources(Vec<(PathBuf, Option<[u8; 32]>)>);

impl Sources {
    /// Reads every file: call it off the async runtime.
    fn of(paths: Vec<PathBuf>) -> Sources {
        Sources(
            paths
                .into_iter()
                .map(|path| {
                    let digest = crate::files::read_bounded(&path, file::MAX_FILE)
                        .ok()
                        .map(|bytes| sha256(&bytes));
                    (path, digest)
                })
                .collect(),
        )
    }

    /// The same files as they are now; reads them, so call it off the async runtime.
    pub fn now(&self) -> Sources {
        Sources::of(self.0.iter().map(|(path, _)| path.clone()).collect())
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    digest
}

impl WebConfig {
    /// No TLS, no auth, no extra headers: what runs without --web.config.file.
    pub fn plain() -> WebConfig {
        WebConfig {
            tls: None,
            http2: false,
            security: Security::none(),
            sources: Sources(Vec::new()),
            tls_fingerprint: None,
            client_certs: tls::ClientCertPolicy::default(),
        }
    }

    /// Reads and checks the whole file, and every file it names, before returning anything.
    /// It reads files and may load the system's roots: while serving, call it off the async
    /// runtime.
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
            .map(|t| tls::server_config(t, dir, http2))
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
            tls_fingerprint: tls.as_ref().map(|t| t.fingerprint),
            client_certs: tls
                .as_ref()
                .map(|t| t.client_certs.clone())
                .unwrap_or_default(),
            tls: tls.map(|t| Arc::new(t.config)),
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

    /// A directory holding exporter-toolkit's server certificate and key and a client CA, and
    /// the path of a web config in it.
    fn with_certs() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webconfig");
        for file in [
            "server.crt",
            "server.key",
            "client_selfsigned.pem",
            "client2_selfsigned.pem",
        ] {
            std::fs::copy(fixtures.join(file), dir.path().join(file)).unwrap();
        }
        let path = dir.path().join("web.yml");
        (dir, path)
    }

    const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

    #[test]
    fn client_allowed_sans_needs_a_certificate_every_client_must_show() {
        let (_dir, path) = with_certs();
        for auth in [
            "",
            "  client_auth_type: NoClientCert\n",
            "  client_auth_type: RequestClientCert\n",
            "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: client_selfsigned.pem\n",
        ] {
            std::fs::write(&path, format!("{TLS}{auth}  client_allowed_sans: [one]\n")).unwrap();
            let err = WebConfig::load(&path).err().unwrap_or_else(|| panic!("{auth:?} accepted")).to_string();
            assert!(
                err.contains("client_allowed_sans requires client_auth_type to be one of RequireAnyClientCert or RequireAndVerifyClientCert"),
                "{auth:?}: {err}"
            );
            assert!(!err.contains('\n'), "{err:?}");
        }
        for auth in [
            "  client_auth_type: RequireAnyClientCert\n",
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client_selfsigned.pem\n",
        ] {
            std::fs::write(&path, format!("{TLS}{auth}  client_allowed_sans: [one]\n")).unwrap();
            assert!(WebConfig::load(&path).is_ok(), "{auth:?}");
        }
    }

    #[test]
    fn the_tls_fingerprint_changes_with_tls_settings_and_files_only() {
        let (dir, path) = with_certs();
        let fingerprint = |yaml: &str| {
            std::fs::write(&path, yaml).unwrap();
            WebConfig::load(&path).unwrap().tls_fingerprint.unwrap()
        };
        let users = "basic_auth_users:\n  u: $2y$04$0bxMa9LVrBAk6tB7xjU8sOUAEM1SHLnuDtzZN4sgq9GVmOVTNPLCS\n";
        let first = fingerprint(TLS);
        assert_eq!(
            fingerprint(TLS),
            first,
            "the same files, the same fingerprint"
        );
        assert_eq!(
            fingerprint(&format!("{TLS}{users}")),
            first,
            "users are not TLS"
        );
        assert_ne!(fingerprint(&format!("{TLS}  min_version: TLS13\n")), first);
        let client_auth = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: client_selfsigned.pem\n";
        let with_ca = fingerprint(&format!("{TLS}{client_auth}"));
        assert_ne!(with_ca, first);
        // The client CA's content, not its name.
        std::fs::copy(
            dir.path().join("client2_selfsigned.pem"),
            dir.path().join("client_selfsigned.pem"),
        )
        .unwrap();
        assert_ne!(fingerprint(&format!("{TLS}{client_auth}")), with_ca);
    }

    #[test]
    fn a_file_swapped_with_the_same_size_and_time_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "aaaa").unwrap();
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        let before = Sources::of(vec![path.clone()]);
        assert_eq!(before.now(), before);
        std::fs::write(&path, "bbbb").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
        assert_ne!(before.now(), before, "as cp -p leaves it");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(before.now().0[0].1, None, "gone");
    }

    #[test]
    fn a_deeply_nested_file_is_refused_on_one_line() {
        let deep = format!(
            "tls_server_config: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = load(&deep).err().unwrap();
        assert!(
            err.contains("not a web config: brackets nested more than 32 deep"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn rate_limit_zero_interval_means_none() {
        assert!(load("rate_limit:\n  interval: 0\n  burst: 0\n").is_ok());
        assert!(load("rate_limit:\n  interval: 1s\n  burst: 0\n").is_ok());
    }
}
