//! Reading the web configuration again while serving, as exporter-toolkit picks up changes
//! without a restart: when one of its files changes (rotated certificates, new users), or on
//! demand (SIGHUP). A new configuration is applied whole or not at all.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::{Security, Sources, WebConfig};
use crate::server::TlsConfig;

/// Asks a running reload loop to read the configuration now.
#[derive(Clone, Default)]
pub struct ReloadTrigger(Arc<Notify>);

impl ReloadTrigger {
    pub fn reload(&self) {
        self.0.notify_one();
    }
}

pub struct WebConfigReload {
    path: PathBuf,
    sources: Sources,
    security: Arc<ArcSwap<Security>>,
    tls: Option<TlsConfig>,
    /// What ALPN offered at startup: as in Go, HTTP/2 is decided once, at startup.
    alpn: Vec<Vec<u8>>,
    trigger: ReloadTrigger,
}

impl WebConfigReload {
    /// `web` is the configuration being served, read from `path`.
    pub fn new(
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
            alpn: web
                .tls
                .as_ref()
                .map(|t| t.alpn_protocols.clone())
                .unwrap_or_default(),
            trigger: ReloadTrigger::default(),
        }
    }

    pub fn trigger(&self) -> ReloadTrigger {
        self.trigger.clone()
    }

    /// Checks the files every `every`; reads them at once when triggered.
    pub async fn run(mut self, every: Duration) {
        loop {
            let requested = tokio::select! {
                () = tokio::time::sleep(every) => false,
                () = self.trigger.0.notified() => true,
            };
            let now = self.sources.now();
            if now == self.sources && !requested {
                continue;
            }
            // Remembered even when the new files fail to load, so the failure is logged once.
            self.sources = now;
            let outcome = WebConfig::load(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|web| self.apply(web));
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
                let mut new = Arc::unwrap_or_clone(new);
                new.alpn_protocols = self.alpn.clone();
                Some((current, Arc::new(new)))
            }
            (None, None) => None,
            _ => return Err("TLS cannot be turned on or off without a restart".into()),
        };
        // Fail closed: a file emptied or cut short must not silently switch basic auth off.
        if self.security.load().requires_auth() && !web.security.requires_auth() {
            return Err(
                "the new web configuration has no basic_auth_users; removing basic auth needs a restart".into(),
            );
        }
        if let Some((current, new)) = tls {
            // Connections accepted from now on handshake with it.
            current.store(new);
        }
        self.security.store(web.security);
        self.sources = web.sources;
        Ok(())
    }
}
