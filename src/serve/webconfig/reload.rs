//! Reading the web configuration again while serving, as exporter-toolkit picks up changes
//! without a restart: when the content of one of its files changes (rotated certificates, new
//! users), or on demand (SIGHUP). A new configuration is applied whole or not at all, and
//! never when it would loosen what a client must show (basic auth, client certificates).
//!
//! Files are read, and YAML and PEM parsed, on blocking threads: the runtime may have one
//! thread, and scrapes must not wait on a reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::tls::ClientCertPolicy;
use super::{Security, Sources, WebConfig, WebConfigError};
use crate::serve::server::TlsConfig;

/// Asks a running reload loop to read the configuration now.
#[derive(Clone, Default)]
pub(crate) struct ReloadTrigger(Arc<Notify>);

impl ReloadTrigger {
    pub(crate) fn reload(&self) {
        self.0.notify_one();
    }
}

pub(crate) struct WebConfigReload {
    path: PathBuf,
    sources: Sources,
    security: Arc<ArcSwap<Security>>,
    /// A new ServerConfig is stored here only when `tls_fingerprint` changes, so a new Arc
    /// in it means new certificate, client certificate or other TLS settings.
    tls: Option<TlsConfig>,
    tls_fingerprint: Option<[u8; 32]>,
    client_certs: ClientCertPolicy,
    /// What ALPN offered at startup: as in Go, HTTP/2 is decided once, at startup.
    alpn: Vec<Vec<u8>>,
    trigger: ReloadTrigger,
    /// WebConfig::load; a test puts one in that it can hold.
    load: fn(&Path) -> Result<WebConfig, WebConfigError>,
}

impl WebConfigReload {
    /// `web` is the configuration being served, read from `path`.
    pub(crate) fn new(
        path: PathBuf,
        web: &WebConfig,
        security: Arc<ArcSwap<Security>>,
        tls: Option<TlsConfig>,
    ) -> WebConfigReload {
        WebConfigReload {
            path,
            sources: web.sources.clone(),
            security,
            tls,
            tls_fingerprint: web.tls_fingerprint,
            client_certs: web.client_certs.clone(),
            alpn: web
                .tls
                .as_ref()
                .map(|t| t.alpn_protocols.clone())
                .unwrap_or_default(),
            trigger: ReloadTrigger::default(),
            load: WebConfig::load,
        }
    }

    pub(crate) fn trigger(&self) -> ReloadTrigger {
        self.trigger.clone()
    }

    /// Checks the files every `every`; reads them at once when triggered.
    pub(crate) async fn run(mut self, every: Duration) {
        loop {
            let requested = tokio::select! {
                () = tokio::time::sleep(every) => false,
                () = self.trigger.0.notified() => true,
            };
            let sources = self.sources.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || sources.now()).await else {
                continue;
            };
            if now == self.sources && !requested {
                continue;
            }
            // Remembered even when the new files fail to load, so the failure is logged once.
            self.sources = now;
            let (path, load) = (self.path.clone(), self.load);
            let outcome = match tokio::task::spawn_blocking(move || load(&path)).await {
                Ok(loaded) => loaded
                    .map_err(|e| e.to_string())
                    .and_then(|web| self.apply(web)),
                Err(e) => Err(format!("reading it failed: {e}")),
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(path = %self.path.display(), requested, "web configuration reloaded")
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), requested, "{e}; keeping the previous web configuration")
                }
            }
        }
    }

    /// Every check first, then everything installed: a new certificate never goes live with
    /// a user list that is then refused.
    fn apply(&mut self, web: WebConfig) -> Result<(), String> {
        let tls = match (&self.tls, web.tls) {
            (Some(current), Some(new)) => {
                let changed = web.tls_fingerprint != self.tls_fingerprint;
                changed.then(|| {
                    let mut new = Arc::unwrap_or_clone(new);
                    new.alpn_protocols = self.alpn.clone();
                    (current, Arc::new(new))
                })
            }
            (None, None) => None,
            _ => return Err("TLS cannot be turned on or off without a restart".into()),
        };
        // Fail closed: a file emptied or cut short must not silently switch basic auth off,
        // nor client certificate checks.
        let current = self.security.load_full();
        if current.requires_auth() && !web.security.requires_auth() {
            return Err(
                "the new web configuration has no basic_auth_users; removing basic auth needs a restart".into(),
            );
        }
        if let Some(why) = self.client_certs.loosened_by(&web.client_certs) {
            return Err(format!(
                "the new web configuration {why}; loosening client certificate checks needs a restart"
            ));
        }
        if let Some((current, new)) = tls {
            // Connections accepted from now on handshake with it.
            current.store(new);
        }
        self.security
            .store(Security::keeping_slots_of(web.security, &current));
        self.sources = web.sources;
        self.tls_fingerprint = web.tls_fingerprint;
        self.client_certs = web.client_certs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Mutex};

    const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    const VERIFY: &str =
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n";

    struct Served {
        _dir: tempfile::TempDir,
        path: std::path::PathBuf,
        tls: TlsConfig,
        security: Arc<ArcSwap<Security>>,
        reload: WebConfigReload,
    }

    /// A reload loop's state, serving `yaml` as start() would, without the loop.
    fn serving(yaml: &str) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webconfig");
        for (from, to) in [
            ("server.crt", "server.crt"),
            ("server.key", "server.key"),
            ("client_selfsigned.pem", "ca.pem"),
        ] {
            std::fs::copy(fixtures.join(from), dir.path().join(to)).unwrap();
        }
        let path = dir.path().join("web.yml");
        std::fs::write(&path, yaml).unwrap();
        let web = WebConfig::load(&path).unwrap();
        let tls = TlsConfig::new(web.tls.clone().unwrap());
        let security = Arc::new(ArcSwap::new(Arc::clone(&web.security)));
        let reload =
            WebConfigReload::new(path.clone(), &web, Arc::clone(&security), Some(tls.clone()));
        Served {
            _dir: dir,
            path,
            tls,
            security,
            reload,
        }
    }

    impl Served {
        fn reload_with(&mut self, yaml: &str) -> Result<(), String> {
            std::fs::write(&self.path, yaml).unwrap();
            let web = WebConfig::load(&self.path).map_err(|e| e.to_string())?;
            self.reload.apply(web)
        }
    }

    #[test]
    fn a_new_tls_configuration_is_stored_only_when_tls_changed() {
        let users = "basic_auth_users:\n  u: $2y$04$0bxMa9LVrBAk6tB7xjU8sOUAEM1SHLnuDtzZN4sgq9GVmOVTNPLCS\n";
        let mut served = serving(&format!("{TLS}{users}"));
        let first = served.tls.current();
        let security = served.security.load_full();
        served
            .reload_with(&format!(
                "{TLS}{users}rate_limit:\n  interval: 1s\n  burst: 5\n"
            ))
            .unwrap();
        assert!(
            !Arc::ptr_eq(&security, &served.security.load_full()),
            "applied"
        );
        assert!(Arc::ptr_eq(&first, &served.tls.current()), "TLS untouched");
        served
            .reload_with(&format!("{TLS}{VERIFY}{users}"))
            .unwrap();
        let verifying = served.tls.current();
        assert!(!Arc::ptr_eq(&first, &verifying), "client auth changed");
        assert_eq!(
            verifying.alpn_protocols, first.alpn_protocols,
            "ALPN as at startup"
        );
    }

    #[test]
    fn a_reload_that_loosens_client_certificate_checks_is_refused() {
        let strict = format!("{TLS}{VERIFY}  client_allowed_sans: [a, b]\n");
        let mut served = serving(&strict);
        let tls = served.tls.current();
        let security = served.security.load_full();
        for (yaml, needle) in [
            (TLS.to_string(), "sets client_auth_type NoClientCert, which does not require a client certificate as RequireAndVerifyClientCert did"),
            (format!("{TLS}{VERIFY}"), "has no client_allowed_sans"),
            (format!("{TLS}{VERIFY}  client_allowed_sans: [a, b, c]\n"), "adds [\"c\"] to client_allowed_sans"),
            (format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n  client_allowed_sans: [a]\n"), "has no client_ca_file or client_ca"),
            (format!("{TLS}  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [a]\n"), "does not verify client certificates"),
        ] {
            let err = served.reload_with(&yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml}: {err}");
            assert!(err.ends_with("; loosening client certificate checks needs a restart"), "{err}");
            assert!(Arc::ptr_eq(&tls, &served.tls.current()), "{yaml}: TLS stored");
            assert!(Arc::ptr_eq(&security, &served.security.load_full()), "{yaml}: applied");
        }
        // Tightening applies, and is then what a loosening is measured against.
        served
            .reload_with(&format!("{TLS}{VERIFY}  client_allowed_sans: [a]\n"))
            .unwrap();
        assert!(!Arc::ptr_eq(&tls, &served.tls.current()));
        let err = served.reload_with(&strict).unwrap_err();
        assert!(err.contains("adds [\"b\"]"), "{err}");
    }

    #[test]
    fn tightening_from_plain_tls_applies_at_once() {
        let mut served = serving(TLS);
        let tls = served.tls.current();
        served
            .reload_with(&format!("{TLS}{VERIFY}  client_allowed_sans: [a]\n"))
            .unwrap();
        assert!(!Arc::ptr_eq(&tls, &served.tls.current()));
    }

    /// Set when held_load starts, and when it is done.
    static ENTERED: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicBool = AtomicBool::new(false);
    static RELEASE: Mutex<Option<mpsc::Receiver<()>>> = Mutex::new(None);

    /// WebConfig::load, held until the test releases it (or 10 s have passed, so a test that
    /// fails does not hang).
    fn held_load(path: &Path) -> Result<WebConfig, WebConfigError> {
        ENTERED.store(true, Ordering::SeqCst);
        let release = RELEASE.lock().unwrap().take();
        if let Some(release) = release {
            let _ = release.recv_timeout(Duration::from_secs(10));
        }
        DONE.store(true, Ordering::SeqCst);
        WebConfig::load(path)
    }

    /// On a runtime of one thread, scrapes go on while a reload reads its files: the reload
    /// reads them elsewhere.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reload_reads_its_files_off_the_runtime() {
        let (release, held) = mpsc::channel();
        *RELEASE.lock().unwrap() = Some(held);
        let mut served = serving(TLS);
        served.reload.load = held_load;
        let trigger = served.reload.trigger();
        let reload = tokio::spawn(served.reload.run(Duration::from_secs(3600)));
        trigger.reload();
        // Runs on the runtime's one thread: had the load run there, this would get its turn
        // only once the load was done.
        while !ENTERED.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            !DONE.load(Ordering::SeqCst),
            "the runtime was held while the files were read"
        );
        release.send(()).unwrap();
        while !DONE.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        reload.abort();
    }
}
