//! The binary as an operator meets it: bad configuration, demo mode, signals.

use crate::helpers::{eventually, test_client};
use crate::process::{assert_one_line, demo_json, exporter, run, Process};
use crate::promtool::promtool_check;

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
    assert_one_line(
        &stderr,
        &["no credential configured", "AZURE_CLIENT_SECRET"],
    );

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

#[tokio::test]
async fn demo_mode_serves_real_series_and_stops_cleanly_on_signals() {
    for signal in ["TERM", "INT"] {
        let mut process = Process::spawn(&mut demo_json());
        let listening = process.log_line(|l| l["message"] == "sfb-exporter listening");
        let base = format!("http://{}", listening["address"].as_str().unwrap());
        let http = test_client();
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

/// Values of AZURE_TENANT_ID and tenant_id that are not a directory ID or a domain name: dot
/// segments that resolve out of the token URL, URL syntax, a newline.
pub(crate) const BAD_TENANT_IDS: [&str; 6] = ["..", ".", "x?y", "a/../../b", "t#frag", "a\nb"];

#[test]
fn a_tenant_id_that_is_no_directory_id_or_domain_is_refused_at_startup_and_by_config_check() {
    for bad in BAD_TENANT_IDS {
        let mut cmd = exporter();
        cmd.env("AZURE_TENANT_ID", bad)
            .env("AZURE_CLIENT_ID", "c")
            .env("AZURE_CLIENT_SECRET", "s");
        let (code, stderr) = run(&mut cmd);
        assert_eq!(code, 1, "{bad:?}: {stderr}");
        assert_one_line(
            &stderr,
            &["AZURE_TENANT_ID: expected a directory ID (GUID)"],
        );
        let (code, stderr) = run(cmd.arg("--config.check"));
        assert_eq!(code, 1, "{bad:?}: {stderr}");
        assert_one_line(
            &stderr,
            &["AZURE_TENANT_ID: expected a directory ID (GUID)"],
        );
    }
    let out = exporter()
        .env("AZURE_TENANT_ID", "contoso.onmicrosoft.com")
        .env("AZURE_CLIENT_ID", "c")
        .env("AZURE_CLIENT_SECRET", "s")
        .arg("--config.check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("tenant: contoso.onmicrosoft.com\n"));
}

#[test]
fn shard_flags_without_a_config_file_are_refused() {
    for args in [
        &["--demo", "--shard.count", "2"][..],
        &["--demo", "--shard.index", "1", "--shard.count", "2"],
        &["--config.check", "--demo", "--shard.count", "2"],
    ] {
        let (code, stderr) = run(exporter().args(args));
        assert_eq!(code, 1, "{args:?}: {stderr}");
        assert_one_line(
            &stderr,
            &["--shard.count shares out the tenants of --config.file"],
        );
    }
}
