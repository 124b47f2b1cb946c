use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sfb_exporter::config::{Args, Config};
use sfb_exporter::{check_config, start, telemetry};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// How long the server and the refresh loops get to wind down after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// How long tasks that ignore cancellation may hold up the exit after that.
const RUNTIME_GRACE: Duration = Duration::from_millis(300);

fn main() -> ExitCode {
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
    if args.config_check {
        return config_check(args);
    }
    telemetry::init(args.log_level, args.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // Bounded, unlike dropping the runtime, which waits for every blocking task.
    runtime.shutdown_timeout(RUNTIME_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--config.check`: the resolved setup on stdout and exit 0, or each problem on stderr.
fn config_check(args: Args) -> ExitCode {
    match check_config(args, |name| std::env::var(name).ok()) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for problem in problems {
                eprintln!("sfb-exporter: {problem}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Installed first, so that a signal during startup is a clean stop too.
    let mut signals = Signals::install()?;
    let config = Config::resolve(args, |name| std::env::var(name).ok()).context("configuration")?;
    for warning in config.warnings(std::time::SystemTime::now()) {
        tracing::warn!("{warning}");
    }
    let periods: Vec<String> = config.periods.iter().map(|p| p.to_string()).collect();
    let interval = humantime::format_duration(config.refresh_interval).to_string();
    let cancel = CancellationToken::new();
    let running = tokio::select! {
        running = start(config, cancel.clone()) => running?,
        _ = signals.stop() => return Ok(()),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        address = %running.local_addr,
        periods = periods.join(","),
        refresh_interval = interval,
        "sfb-exporter listening"
    );
    loop {
        match signals.recv().await {
            Received::Stop => break,
            Received::Reload => match &running.reloader {
                // The outcome is logged by the reload itself.
                Some(reloader) => drop(reloader.reload().await),
                None => tracing::info!("SIGHUP: nothing to reload without --config.file"),
            },
        }
    }
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

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

enum Received {
    Stop,
    Reload,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    async fn recv(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop,
            _ = self.int.recv() => Received::Stop,
            _ = self.hup.recv() => Received::Reload,
        }
    }

    /// Waits for a stop signal; a SIGHUP during startup has nothing to reload yet.
    async fn stop(&mut self) {
        while let Received::Reload = self.recv().await {}
    }
}
