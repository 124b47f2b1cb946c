//! sfb-exporter: the Microsoft Graph report getSkypeForBusinessOrganizerActivityMinuteCounts
//! as Prometheus gauges.
//!
//! Data flows one way: `config` (flags and environment, resolved once) → `auth` (tokens) →
//! `graph` (report requests over `http`) → `report` (CSV, pure) → `state` + `metrics`
//! (exposition, pure) → `refresher` (publishes an immutable snapshot) → `web` (reads it).
//! Each domain type lives in the module that owns it (`Period` in `report`, `Identity` in
//! `auth`), so `config` imports them and no two modules import each other
//! (tests/api/layout.rs checks that no import cycle creeps back).

pub mod auth;
pub mod config;
pub mod demo;
pub mod error;
pub mod graph;
pub mod http;
pub mod metrics;
pub mod process;
pub mod refresher;
pub mod report;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod text;
pub mod web;
pub mod webconfig;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::TokenSource;
use crate::config::{Config, Source};
use crate::graph::GraphClient;
use crate::http::Limits;
use crate::refresher::Refresher;
use crate::server::TlsConfig;
use crate::state::State;
use crate::webconfig::{Security, Sources, WebConfig};
use arc_swap::ArcSwap;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(String),
    #[error("cannot listen on {address}: {error}")]
    Bind {
        address: String,
        error: std::io::Error,
    },
    #[error("cannot start the demo Graph: {0}")]
    Demo(std::io::Error),
    #[error(transparent)]
    WebConfig(#[from] webconfig::WebConfigError),
}

/// A started exporter: serving, refreshing, until its cancellation token fires.
pub struct Running {
    pub local_addr: SocketAddr,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits for the server and the refresher to wind down after cancellation.
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds, starts the refresher and the server, and returns once both are running.
pub async fn start(config: Config, cancel: CancellationToken) -> Result<Running, StartError> {
    let web = match &config.web_config_file {
        Some(path) => WebConfig::load(path)?,
        None => WebConfig::plain(),
    };
    // Bind first, so that a busy port fails before anything else starts.
    let address = config.listen_address.bind_target();
    let bind_error = |error| StartError::Bind {
        address: config.listen_address.to_string(),
        error,
    };
    let listener = TcpListener::bind(&address)
        .await
        .map_err(|error| StartError::Bind { address, error })?;
    let local_addr = listener.local_addr().map_err(bind_error)?;

    let http =
        http::client(config.graph_timeout).map_err(|e| StartError::HttpClient(e.to_string()))?;
    let mut tasks = JoinSet::new();

    let (tenant, identity, authority, graph) = match config.source {
        Source::Azure {
            identity,
            authority,
            graph,
        } => (identity.tenant_id.clone(), identity, authority, graph),
        Source::Demo => {
            let demo = demo::start(cancel.clone())
                .await
                .map_err(StartError::Demo)?;
            tracing::info!(address = %demo.address, "demo mode: serving simulated Graph data from loopback");
            tasks.spawn(demo.server);
            (
                demo::TENANT.to_string(),
                demo::identity(),
                demo.authority,
                demo.graph,
            )
        }
    };
    let requests = Arc::new(http::RequestCounts::default());
    let limits = || Limits {
        timeout: config.graph_timeout,
        max_body_bytes: config.max_body_bytes,
        requests: Arc::clone(&requests),
    };
    let tokens = TokenSource::new(http.clone(), &authority, &graph, identity, limits());
    let graph = GraphClient::new(http, graph, tokens, limits(), config.retry);
    let state = State::new(tenant, config.periods.iter());
    let refresher = Arc::new(Refresher::new(graph, state, config.refresh_interval));

    tracing::info!(
        tls = web.tls.is_some(),
        basic_auth = web.security.requires_auth(),
        "web configuration"
    );
    let security = config
        .web_config_file
        .as_ref()
        .map(|_| Arc::new(ArcSwap::new(Arc::clone(&web.security))));
    let app = web::app(
        refresher.published(),
        &config.telemetry_path,
        security.clone(),
        config.server.max_requests,
        config.exporter_metrics,
    );
    let tls: Option<TlsConfig> = web.tls.clone().map(|t| Arc::new(ArcSwap::new(t)));
    if let (Some(path), Some(security)) = (config.web_config_file.clone(), security) {
        let reload = WebConfigReload {
            path,
            sources: web.sources,
            security,
            tls: tls.clone(),
        };
        let cancel = cancel.clone();
        let every = config.web_config_check_interval;
        tasks.spawn(async move {
            cancel.run_until_cancelled(reload.run(every)).await;
        });
    }
    tasks.spawn(server::serve(
        listener,
        app,
        tls,
        config.server.clone(),
        cancel.clone(),
    ));
    let mut refreshers = refresher.spawn(cancel);
    tasks.spawn(async move { while refreshers.join_next().await.is_some() {} });

    Ok(Running { local_addr, tasks })
}

/// Reads the web configuration again when one of its files changes, as exporter-toolkit picks
/// up changes without a restart: rotated certificates, new users. A configuration that no
/// longer loads is logged and the previous one kept.
struct WebConfigReload {
    path: std::path::PathBuf,
    sources: Sources,
    security: Arc<ArcSwap<Security>>,
    tls: Option<TlsConfig>,
}

impl WebConfigReload {
    async fn run(mut self, every: std::time::Duration) {
        loop {
            tokio::time::sleep(every).await;
            let now = self.sources.now();
            if now == self.sources {
                continue;
            }
            // Remembered even when the new files fail to load, so the failure is logged once.
            self.sources = now;
            match WebConfig::load(&self.path) {
                Ok(web) => self.apply(web),
                Err(e) => tracing::warn!("{e}; keeping the previous web configuration"),
            }
        }
    }

    fn apply(&mut self, web: WebConfig) {
        match (&self.tls, web.tls) {
            (Some(current), Some(new)) => current.store(new),
            (None, None) => {}
            _ => {
                tracing::warn!(
                    path = %self.path.display(),
                    "TLS cannot be turned on or off without a restart; keeping the previous web configuration"
                );
                return;
            }
        }
        // Fail closed: a file emptied or cut short must not silently switch basic auth off.
        if self.security.load().requires_auth() && !web.security.requires_auth() {
            tracing::warn!(
                path = %self.path.display(),
                "the new web configuration has no basic_auth_users; removing basic auth needs a restart, keeping the previous web configuration"
            );
            return;
        }
        self.security.store(web.security);
        self.sources = web.sources;
        tracing::info!(path = %self.path.display(), "web configuration reloaded");
    }
}
