use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sfb_exporter::{check_config, init_logging, start};
use sfb_exporter::{Args, BackfillArgs, Command, Config};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// How long the server and the refresh loops get to wind down after a signal.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// How long tasks that ignore cancellation may hold up the exit after that.
const RUNTIME_GRACE: Duration = Duration::from_millis(300);

fn main() -> ExitCode {
    let mut args = match Args::try_parse() {
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
    init_logging(args.log_level, args.log_format);
    // A panic is one error event in the log's own format, not the default hook's lines on
    // stderr; a refresh task that panics is restarted (see refresher.rs).
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = sfb_exporter::panic_message(info.payload());
        tracing::error!("panic{location}: {message}");
    }));
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command.take() {
        Some(Command::Backfill(options)) => runtime.block_on(backfill(args, options)),
        None => runtime.block_on(run(args)),
    };
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

/// As many workers as CPUs this process may run on (its affinity mask and cgroup quota, which
/// available_parallelism reads); on one CPU a single-threaded runtime, so that no second
/// worker time-slices against the first and no wakeup crosses threads.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(cpus);
        builder
    };
    builder.enable_all().build()
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Installed first, so that a signal during startup is a clean stop too.
    let mut signals = Signals::install()?;
    // Off the runtime and raced against the signals: a secret file that blocks on open or read
    // (a FIFO nobody writes to) must not keep SIGTERM from stopping the process.
    let resolving =
        tokio::task::spawn_blocking(move || Config::resolve(args, |name| std::env::var(name).ok()));
    let config = tokio::select! {
        resolved = resolving => resolved.context("configuration")?.context("configuration")?,
        () = signals.until_stop(|| tracing::info!("SIGHUP received while reading the configuration: it is being read now")) => {
            tracing::info!("stopped while reading the configuration");
            return Ok(());
        }
    };
    for warning in config.warnings(std::time::SystemTime::now()) {
        tracing::warn!("{warning}");
    }
    let periods: Vec<String> = config.periods.iter().map(|p| p.to_string()).collect();
    let interval = humantime::format_duration(config.refresh_interval).to_string();
    let cancel = CancellationToken::new();
    let running = tokio::select! {
        running = start(config, cancel.clone()) => running?,
        () = signals.until_stop(|| tracing::info!("SIGHUP received while starting: the configuration is being read now")) => return Ok(()),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        address = %running.local_addr,
        periods = periods.join(","),
        refresh_interval = interval,
        "sfb-exporter listening"
    );
    signals
        .until_stop(|| {
            if running.reload() {
                tracing::info!("SIGHUP received: reloading the configuration");
            } else {
                tracing::info!(
                    "SIGHUP received: nothing to reload (no --web.config.file or --config.file)"
                );
            }
        })
        .await;
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

/// `sfb-exporter backfill`: no server, one report request per tenant, then the OpenMetrics
/// text on stdout or, whole or not at all, in `--output`.
async fn backfill(args: Args, options: BackfillArgs) -> anyhow::Result<()> {
    let config = Config::resolve(args, |name| std::env::var(name).ok()).context("configuration")?;
    if let Some(warning) = config.certificate_warning(std::time::SystemTime::now()) {
        tracing::warn!("{warning}");
    }
    let text = sfb_exporter::backfill(config, options.period).await?;
    // Off the runtime: opening a FIFO waits for its reader.
    tokio::task::spawn_blocking(move || {
        sfb_exporter::write_output(options.output.as_deref(), &text)
    })
    .await
    .context("writing the output")??;
    Ok(())
}

/// SIGTERM and SIGINT stop; SIGHUP reloads what can be reloaded; SIGUSR1 and SIGUSR2 are
/// logged and ignored (their default action would end the process).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    usr1: Signal,
    usr2: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).with_context(|| format!("installing the {name} handler"))
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
            usr1: install(SignalKind::user_defined1(), "SIGUSR1")?,
            usr2: install(SignalKind::user_defined2(), "SIGUSR2")?,
        })
    }

    /// Returns on SIGTERM or SIGINT; calls `reload` on each SIGHUP meanwhile.
    async fn until_stop(&mut self, reload: impl Fn()) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => reload(),
                _ = self.usr1.recv() => tracing::info!("SIGUSR1 received: ignored"),
                _ = self.usr2.recv() => tracing::info!("SIGUSR2 received: ignored"),
            }
        }
    }
}
