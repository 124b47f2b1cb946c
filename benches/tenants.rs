//! Scale benchmark: one exporter process, TENANTS tenants (default 1,000) x 4 periods, against
//! the demo Graph on loopback.
//!
//!   cargo build --release && cargo bench --bench tenants
//!   TENANTS=200 cargo bench --bench tenants
//!
//! Measures, for the release binary (target/release/sfb-exporter) as a child process: the time
//! until every (tenant, period) has been refreshed, the exporter's own CPU time (user + system,
//! from /proc) for that first cycle, its peak RSS, and the latency of gzip scrapes of /metrics
//! taken back to back while the refreshes run. The exposition is checked with `promtool check
//! metrics` when promtool is installed. Targets: within 4 minutes, at most 60 s of CPU, at
//! most 200 MiB, p99 at most 100 ms. A benchmark, not a test: it reports against the targets
//! and exits non-zero only when something broke.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use sfb_exporter::{demo_identity, start_demo};
use tokio_util::sync::CancellationToken;

const PERIODS: usize = 4;
const DEADLINE: Duration = Duration::from_secs(240);

#[tokio::main]
async fn main() {
    let tenants: usize = std::env::var("TENANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let root = env!("CARGO_MANIFEST_DIR");
    let binary = format!("{root}/target/release/sfb-exporter");
    assert!(
        std::path::Path::new(&binary).exists(),
        "{binary} is missing: run cargo build --release first"
    );

    let cancel = CancellationToken::new();
    let fake = start_demo(cancel.clone()).await.expect("demo Graph starts");
    let graph_base = fake.graph.to_string();
    tokio::spawn(fake.server);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.yml");
    let sfb_exporter::Credential::Secret { client_id, secret } = demo_identity().credential else {
        unreachable!("the demo signs in with a client secret")
    };
    let mut yaml = String::from("tenants:\n");
    for i in 0..tenants {
        yaml.push_str(&format!(
            "  - tenant_id: {:08x}-0000-4000-8000-{:012x}\n    client_id: {}\n    client_secret: {}\n    name: Customer {i}\n",
            i,
            i,
            client_id,
            secret.expose_secret()
        ));
    }
    std::fs::write(&file, yaml).unwrap();

    let port = free_port();
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args([
            "--config.file",
            file.to_str().unwrap(),
            "--graph.url",
            &graph_base,
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
            "--log.level",
            "warn",
        ])
        .env("AZURE_AUTHORITY_HOST", &graph_base)
        .stdout(Stdio::null())
        .spawn()
        .expect("exporter starts");
    let pid = child.id();
    let base = format!("http://127.0.0.1:{port}");
    // reqwest brings no crypto provider of its own (the exporter hands it aws-lc-rs).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let http = reqwest::Client::new();

    // Back-to-back gzip scrapes, as a Prometheus with a short interval would, while the first
    // cycle runs.
    let mut latencies = Vec::new();
    let mut done_at = None;
    let mut last_check = Instant::now() - Duration::from_secs(1);
    while started.elapsed() < DEADLINE + Duration::from_secs(30) {
        let t = Instant::now();
        let Ok(response) = http
            .get(format!("{base}/metrics"))
            .header("accept-encoding", "gzip")
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let ok = response.status().is_success();
        let _ = response.bytes().await;
        if ok {
            latencies.push(t.elapsed());
        }
        if last_check.elapsed() >= Duration::from_millis(200) {
            last_check = Instant::now();
            if http
                .get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                done_at = Some(started.elapsed());
                break;
            }
        }
    }
    let cpu = cpu_seconds(pid);
    let body = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rss = peak_rss_mib(pid);
    let _ = child.kill();
    let _ = child.wait();
    cancel.cancel();

    let refreshed = body
        .lines()
        .filter(|l| l.starts_with("sfb_refresh_success{") && l.ends_with(" 1"))
        .count();
    latencies.sort();
    let p = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    let promtool = promtool_check(&body);
    let target = |ok: bool| if ok { "ok" } else { "MISSED" };
    let all = refreshed == tenants * PERIODS;
    println!("tenants x periods:            {tenants} x {PERIODS}");
    println!(
        "refreshed successfully:       {refreshed} of {}  [{}]",
        tenants * PERIODS,
        target(all)
    );
    match done_at {
        Some(d) => println!(
            "first cycle done after:       {:.1} s  (target <= 240 s) [{}]",
            d.as_secs_f64(),
            target(d <= DEADLINE)
        ),
        None => println!("first cycle done after:       not within the deadline [MISSED]"),
    }
    println!(
        "exporter CPU, first cycle:    {cpu:.1} s  (target <= 60 s) [{}]",
        target(cpu <= 60.0)
    );
    println!(
        "exporter peak RSS:            {rss:.1} MiB  (target <= 200 MiB) [{}]",
        target(rss <= 200.0)
    );
    println!(
        "gzip /metrics during refresh: {} scrapes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms  (target p99 <= 100 ms) [{}]",
        latencies.len(),
        p(0.5),
        p(0.99),
        p(1.0),
        target(p(0.99) <= 100.0)
    );
    println!(
        "exposition:                   {:.1} MiB, promtool check metrics: {promtool}",
        body.len() as f64 / (1024.0 * 1024.0)
    );
    if !all || done_at.is_none() {
        std::process::exit(1);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// User plus system time of `pid`, from /proc/PID/stat (fields 14 and 15, in clock ticks).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Field 14 is the 12th after the parenthesis (state is field 3, index 0).
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// VmHWM of `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn promtool_check(body: &str) -> String {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return "not run (promtool not installed)".into();
    };
    let _ = child.stdin.take().unwrap().write_all(body.as_bytes());
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        "clean".into()
    } else {
        format!(
            "FAILED: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .chain(String::from_utf8_lossy(&out.stdout).lines())
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        )
    }
}
