use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sfb_exporter::config::{Args, Config};
use sfb_exporter::{start, telemetry};
use tokio_util::sync::CancellationToken;

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            // clap's own rendering spans several lines; keep the one that names the problem.
            let rendered = e.to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("sfb-exporter: {line} (see --help)");
            return ExitCode::from(2);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    telemetry::init(args.log_level, args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::resolve(args, |name| std::env::var(name).ok()).context("configuration")?;
    if let Some(warning) = config.throttling_warning() {
        tracing::warn!("{warning}");
    }
    let periods: Vec<String> = config.periods.iter().map(|p| p.to_string()).collect();
    let interval = humantime::format_duration(config.refresh_interval).to_string();
    let cancel = CancellationToken::new();
    let running = start(config, cancel.clone()).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        address = %running.local_addr,
        periods = periods.join(","),
        refresh_interval = interval,
        "sfb-exporter listening"
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    cancel.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, running.wait())
        .await
        .is_err()
    {
        tracing::warn!("shutdown took longer than {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
