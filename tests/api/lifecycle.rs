//! The binary as an operator meets it: bad configuration, demo mode, signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::helpers::eventually;
use crate::promtool::promtool_check;

fn exporter() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sfb-exporter"));
    cmd.env_clear().stdin(Stdio::null());
    cmd
}

/// Runs to completion and returns (exit code, stderr).
fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line(stderr: &str, needles: &[&str]) {
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr:?}"
    );
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{needle:?} missing from {stderr:?}"
        );
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bad_flags_fail_with_one_clear_line() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--report.periods", "D7,D14"],
            &["D14", "D7, D30, D90, D180"],
        ),
        (&["--refresh.interval", "soon"], &["soon", "30s, 15m, 1h"]),
        (&["--refresh.interval", "100ms"], &["minimum of 1s"]),
        (
            &["--web.listen-address", "9065"],
            &[":PORT, HOST:PORT or [IPv6]:PORT"],
        ),
        (&["--azure.cloud", "mars"], &["mars"]),
        (&["--no-such-flag"], &["--no-such-flag"]),
    ];
    for (args, needles) in cases {
        let (code, stderr) = run(exporter().arg("--demo").args(*args));
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_one_line(&stderr, needles);
    }
}

#[test]
fn missing_identity_names_the_variable() {
    let (code, stderr) = run(&mut exporter());
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, &["AZURE_TENANT_ID is not set", "--demo"]);

    let (code, stderr) = run(exporter()
        .env("AZURE_TENANT_ID", "t")
        .env("AZURE_CLIENT_ID", "c"));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, &["AZURE_CLIENT_SECRET is not set"]);

    let (code, stderr) = run(exporter()
        .env("AZURE_TENANT_ID", "t")
        .env("AZURE_CLIENT_ID", "c")
        .args(["--azure.client-secret-file", "/nonexistent/secret"]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, &["/nonexistent/secret"]);
}

#[test]
fn help_and_version_exit_zero() {
    let out = exporter().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--web.listen-address",
        "--web.telemetry-path",
        "--graph.url",
        "--azure.cloud",
        "--report.periods",
        "--refresh.interval",
        "--graph.timeout",
        "--azure.client-secret-file",
        "--demo",
        "--log.level",
        "--log.format",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_AUTHORITY_HOST",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(exporter()
        .arg("--version")
        .output()
        .unwrap()
        .status
        .success());
}

/// A running exporter process, killed if the test fails before it stops it.
struct Process {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn spawn(cmd: &mut Command) -> Process {
        let mut child = cmd
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pipe = child.stderr.take().unwrap();
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, stderr }
    }

    /// The first log line (JSON) that `matches`, or a panic after a generous deadline.
    fn log_line(&self, matches: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(15))
                .expect("expected log line within 15s");
            let json: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if matches(&json) {
                return json;
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no exit within 10s of the signal"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn demo_mode_serves_real_series_and_stops_cleanly_on_signals() {
    for signal in ["TERM", "INT"] {
        let mut process = Process::spawn(exporter().args([
            "--demo",
            "--web.listen-address",
            "127.0.0.1:0",
            "--log.format",
            "json",
        ]));
        let listening = process.log_line(|l| l["message"] == "sfb-exporter listening");
        let base = format!("http://{}", listening["address"].as_str().unwrap());
        let http = reqwest::Client::new();
        let ready = eventually(|| async {
            let r = http.get(format!("{base}/readyz")).send().await;
            r.is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(ready, "demo mode did not become ready");
        let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(
            metrics.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let body = metrics.text().await.unwrap();
        for period in ["D7", "D30", "D90", "D180"] {
            let series = format!(
                r#"sfb_organizer_activity_seconds{{conference_type="audio_video",period="{period}",tenant="demo"}} "#
            );
            let line = body.lines().find(|l| l.starts_with(&series));
            assert!(line.is_some(), "{series} missing:\n{body}");
            let rows = format!(r#"sfb_report_rows{{period="{period}",tenant="demo"}} "#);
            assert!(body.contains(&rows), "{rows} missing");
        }
        promtool_check(&body);

        process.signal(signal);
        let status = process.wait_exit();
        assert_eq!(status.code(), Some(0), "exit after SIG{signal}");
    }
}

#[tokio::test]
async fn a_busy_port_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run(exporter().args(["--demo", "--web.listen-address", &address]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, &["cannot listen on", &address]);
}
