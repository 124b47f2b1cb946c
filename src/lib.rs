//! sfb-exporter: the Microsoft Graph report getSkypeForBusinessOrganizerActivityMinuteCounts
//! as Prometheus gauges.
//!
//! A folder per stage, and imports go one way along the flow (tests/api/layout.rs holds the
//! order; README.md's Design section draws it). Every module is private: what main.rs, the
//! integration tests and the benchmarks use is re-exported below, and everything else is
//! `pub(crate)`, so that the `unreachable_pub` lint and dead-code warnings see all of it.

mod auth;
mod backfill;
mod config;
mod demo;
mod dns;
mod error;
mod exposition;
mod files;
mod graph;
mod http;
mod refresh;
mod report;
mod serve;
mod state;
mod telemetry;
mod text;

pub use auth::certificate::{ClientCertificate, Settings as CertificateSettings};
pub use auth::managed::ManagedEndpoint;
pub use auth::{Credential, Identity, Origin};
pub use backfill::{write_output, METRIC as BACKFILL_METRIC};
pub use config::tenants::{parse as parse_tenants, shard_of};
pub use config::{
    Args, BackfillArgs, Cloud, Command, Config, CredentialKind, ServerLimits, Shard, Source,
    TenantDefaults, DEFAULT_PORT,
};
pub use demo::{identity as demo_identity, start as start_demo};
pub use error::{Reason, Stage};
pub use exposition::metrics::{render as render_metrics, BuildInfo};
pub use exposition::publisher::Published;
pub use http::RetryPolicy;
pub use refresh::refresher::panic_message;
pub use report::{parse as parse_report, Period, Periods};
pub use serve::routes::{app, Lifecycle};
pub use serve::server::{limit_in_flight, serve, TlsConfig};
pub use serve::webconfig::{WebConfig, ECDH_P521};
pub use state::{Accepted, Attempt, State};
pub use telemetry::init as init_logging;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::tenants;
use crate::config::tenants::Tenant;

use crate::exposition::publisher::{Publisher, TenantMode};
use crate::refresh::fleet;
use crate::refresh::fleet::{FileSource, Fleet, Reloader};

use crate::serve::webconfig::{ReloadTrigger, WebConfigReload};
use crate::serve::{routes, server, webconfig};
use crate::state::ReloadStatus;
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
    #[error("{0}")]
    Tenants(String),
}

/// `--config.check`: everything [`start`] would use, validated without binding a port or
/// contacting anything. The resolved setup as `name: value` lines (warnings last), or every
/// problem found. No secret is ever part of either.
pub fn check_config(
    args: config::Args,
    env: impl Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    // The web config warns through the log (once per process), which --config.check does not
    // set up: its warnings are caught and printed with the others.
    let (web, web_warnings) = telemetry::capture_warnings(|| {
        args.web_config_file.clone().map(|path| {
            let loaded = WebConfig::load(&path);
            (path, loaded)
        })
    });
    let mut problems: Vec<String> = Vec::new();
    let roots = http::trusted_roots(&env, http::system_store);
    let proxy = http::outbound_proxy(&env);
    let config = Config::check(args, env)
        .map_err(|e| problems.extend(e.iter().map(|e| e.to_string())))
        .ok();
    let now = std::time::SystemTime::now();
    let mut lines = config.as_ref().map(Config::describe).unwrap_or_default();
    let mut warnings = web_warnings;
    // An expired certificate fails every token request: a problem, not a warning.
    problems.extend(config.as_ref().and_then(|c| c.certificate_problem(now)));
    if let Some(Config {
        source: Source::File { path, defaults },
        shard,
        ..
    }) = &config
    {
        match tenants::load(path, defaults, *shard) {
            Ok(tenants) => {
                lines.push(("tenants in this shard", tenants.len().to_string()));
                for tenant in &tenants {
                    let Some(certificate) = tenant.identity.credential.certificate() else {
                        continue;
                    };
                    let Some(warning) = certificate.expiry_warning(now) else {
                        continue;
                    };
                    let line = format!("tenant {}: {warning}", tenant.id());
                    if certificate.expired(now) {
                        problems.push(line);
                    } else {
                        warnings.push(line);
                    }
                }
            }
            Err(e) => problems.push(e),
        }
    }
    match web {
        None => lines.push(("web config", "none (plain HTTP, no basic auth)".into())),
        Some((path, Ok(web))) => lines.push((
            "web config",
            format!(
                "{} (TLS: {}, basic auth: {})",
                path.display(),
                web.tls.is_some(),
                web.security.requires_auth()
            ),
        )),
        Some((_, Err(e))) => problems.push(e.to_string()),
    }
    let roots_warning = match roots {
        Ok(roots) => {
            lines.push(("outbound TLS roots", roots.origin));
            roots.warning
        }
        Err(e) => {
            problems.push(e);
            None
        }
    };
    match proxy {
        Ok(proxy) => lines.push(("outbound proxy", proxy.describe())),
        Err(e) => problems.push(e),
    }
    let Some(config) = config.filter(|_| problems.is_empty()) else {
        return Err(problems);
    };
    let mut report = String::from("configuration OK\n");
    for (name, value) in lines {
        report.push_str(&format!("{name}: {value}\n"));
    }
    for warning in config.warnings(now).into_iter().chain(warnings) {
        report.push_str(&format!("warning: {warning}\n"));
    }
    if let Some(warning) = roots_warning {
        report.push_str(&format!("warning: {warning}\n"));
    }
    Ok(report)
}

/// `sfb-exporter backfill`: `period`'s report of every configured tenant as OpenMetrics text.
/// The demo Graph, when asked for, runs only for the duration of the call.
pub async fn backfill(config: Config, period: report::Period) -> anyhow::Result<String> {
    let http = http::client(config.graph_timeout).map_err(StartError::HttpClient)?;
    let cancel = CancellationToken::new();
    // Cancels the demo Graph on every way out, errors included.
    let _stop_demo = cancel.clone().drop_guard();
    let tenants = match config.source {
        Source::Azure {
            identity,
            authority,
            graph,
        } => vec![Tenant::single(identity, authority, graph, config.periods)],
        Source::Demo => {
            let demo = demo::start(cancel).await.map_err(StartError::Demo)?;
            tokio::spawn(demo.server);
            vec![Tenant::single(
                demo::identity(),
                demo.authority,
                demo.graph,
                config.periods,
            )]
        }
        // Every tenant of the file (of this shard, with --shard.*).
        Source::File { path, defaults } => {
            tenants::load(&path, &defaults, config.shard).map_err(StartError::Tenants)?
        }
    };
    let request = backfill::ReportRequest {
        http,
        timeout: config.graph_timeout,
        max_body_bytes: config.max_body_bytes,
        retry: config.retry,
        period,
    };
    Ok(backfill::collect(tenants, &request).await?)
}

/// A started exporter: serving, refreshing, until its cancellation token fires.
pub struct Running {
    pub local_addr: SocketAddr,
    /// Re-reads --config.file; None without one.
    pub reloader: Option<Reloader>,
    tasks: JoinSet<()>,
    web_config: Option<ReloadTrigger>,
}

impl Running {
    /// Reads the web configuration and --config.file again now (SIGHUP); false when there is
    /// neither to read.
    pub fn reload(&self) -> bool {
        if let Some(reloader) = &self.reloader {
            // The outcome is logged by the reload itself.
            reloader.reload_in_background();
        }
        let web = self.web_config.as_ref().inspect(|t| t.reload()).is_some();
        web || self.reloader.is_some()
    }

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

    let http = http::client(config.graph_timeout).map_err(StartError::HttpClient)?;
    let mut tasks = JoinSet::new();

    let mode = match config.source {
        Source::File { .. } => TenantMode::File,
        Source::Azure { .. } | Source::Demo => TenantMode::Single,
    };
    let publisher = Publisher::new(mode);
    tasks.spawn(Arc::clone(&publisher).run(cancel.clone()));
    let mut fleet = Fleet::new(fleet::Shared {
        http,
        timeout: config.graph_timeout,
        max_body_bytes: config.max_body_bytes,
        in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_concurrency)),
        retry: config.retry,
        interval: config.refresh_interval,
        publisher: Arc::clone(&publisher),
        cancel: cancel.clone(),
    });
    let single = |identity, authority, graph| {
        Tenant::single(identity, authority, graph, config.periods.clone())
    };
    let mut reloader = None;
    match config.source {
        Source::Azure {
            identity,
            authority,
            graph,
        } => {
            fleet.start_single(single(identity, authority, graph));
            tasks.spawn(hold_until(fleet, cancel.clone()));
        }
        Source::Demo => {
            let demo = demo::start(cancel.clone())
                .await
                .map_err(StartError::Demo)?;
            tracing::info!(address = %demo.address, "demo mode: serving simulated Graph data from loopback");
            tasks.spawn(demo.server);
            fleet.start_single(single(demo::identity(), demo.authority, demo.graph));
            tasks.spawn(hold_until(fleet, cancel.clone()));
        }
        Source::File { path, defaults } => {
            let source = FileSource {
                path,
                defaults,
                shard: config.shard,
            };
            let tenants = source.load().await.map_err(StartError::Tenants)?;
            let count = tenants.len();
            fleet.apply(tenants);
            // One reading, published now and kept by reloads that fail.
            let loaded_at = std::time::SystemTime::now();
            publisher.set_reload(ReloadStatus {
                successful: true,
                last_success: Some(loaded_at),
            });
            tracing::info!(
                path = %source.path.display(),
                tenants = count,
                shard = format!("{} of {}", config.shard.index, config.shard.count),
                "tenants loaded"
            );
            let (handle, work) = fleet::serve_reloads(fleet, source, loaded_at, cancel.clone());
            tasks.spawn(work);
            reloader = Some(handle);
        }
    }

    tracing::info!(
        tls = web.tls.is_some(),
        http2 = web.http2,
        basic_auth = web.security.requires_auth(),
        "web configuration"
    );
    let security = config
        .web_config_file
        .as_ref()
        .map(|_| Arc::new(ArcSwap::new(Arc::clone(&web.security))));
    // Published before serving, so that no snapshot lacks a configured tenant (and so looks
    // ready with nothing to wait for).
    publisher.assemble();
    let lifecycle = match (config.enable_lifecycle, &reloader) {
        (false, _) => Lifecycle::Disabled,
        (true, None) => Lifecycle::NothingToReload,
        (true, Some(reloader)) => Lifecycle::Reload(reloader.clone()),
    };
    let app = routes::app(
        publisher.published(),
        &config.telemetry_path,
        security.clone(),
        lifecycle,
        config.server.max_requests,
        config.exporter_metrics,
    );
    // Connections accepted after a reload use the configuration it stored.
    let tls: Option<TlsConfig> = web.tls.clone().map(TlsConfig::new);
    let mut web_config = None;
    if let (Some(path), Some(security)) = (config.web_config_file.clone(), security) {
        let reload = WebConfigReload::new(path, &web, security, tls.clone());
        web_config = Some(reload.trigger());
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

    Ok(Running {
        local_addr,
        reloader,
        tasks,
        web_config,
    })
}

/// Keeps a fleet that has no reloads running until shutdown.
async fn hold_until(fleet: Fleet, cancel: CancellationToken) {
    cancel.cancelled().await;
    drop(fleet);
}
