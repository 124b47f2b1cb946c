//! `promtool check metrics` on real exposition output. Runs wherever promtool is installed and
//! is required where SFB_REQUIRE_PROMTOOL=1 (CI sets it).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use sfb_exporter::config::Period;
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

/// Runs promtool on `body`; `false` when promtool is absent and not required.
pub fn promtool_check(body: &str) -> bool {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("SFB_REQUIRE_PROMTOOL").is_none(),
                "SFB_REQUIRE_PROMTOOL is set but promtool cannot run: {e}"
            );
            eprintln!(
                "promtool not found, skipping the check (install Debian's prometheus package)"
            );
            return false;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}\n{body}"
    );
    true
}

#[tokio::test]
async fn exposition_passes_promtool_in_every_state() {
    let (graph, download) = mock_servers().await;
    token_mock(3599).mount(&graph).await;
    // D7 healthy, D30 header-only, D90 failing; D180 healthy.
    let csv = format!("{HEADER}\n2024-03-05,2024-03-04,7,1,2,3\n");
    mount_report(&graph, &download, Period::D7, &csv).await;
    mount_report(&graph, &download, Period::D180, &csv).await;
    mount_report(&graph, &download, Period::D30, HEADER).await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(10)
        .mount(&graph)
        .await;
    let options = Options {
        periods: Period::ALL.to_vec(),
        interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let app = spawn_app(graph, download, options).await;
    let body = app
        .metrics_when("every period's first refresh", |b| {
            b.matches("sfb_refresh_success{").count() == 4
        })
        .await;
    assert!(
        body.contains(
            r#"sfb_refresh_failures_total{period="D90",reason="http",tenant="tenant-1"} 1"#
        ),
        "{body}"
    );
    promtool_check(&body);
    app.stop().await;
}
