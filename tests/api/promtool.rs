//! promtool on what the project ships: the exposition, the alert rules and their unit tests.
//! Runs wherever promtool is installed and is required where SFB_REQUIRE_PROMETHEUS=1 (CI).

use std::io::Write;
use std::process::{Command, Stdio};

use sfb_exporter::Period;
use wiremock::ResponseTemplate;

use crate::helpers::*;

/// Whether a Prometheus tool can run here; panics where it is required but missing.
pub(crate) fn have(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found || std::env::var_os("SFB_REQUIRE_PROMETHEUS").is_none(),
        "SFB_REQUIRE_PROMETHEUS is set but {tool} cannot run (install Debian's prometheus package)"
    );
    if !found {
        eprintln!("{tool} not found, skipping (install Debian's prometheus package)");
    }
    found
}

/// Runs `promtool` with `args` in the repository root and asserts it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    if have("promtool") {
        promtool(&["check", "rules", "dashboards/sfb-exporter-alerts.yml"]);
        promtool(&["test", "rules", "dashboards/sfb-exporter-alerts.test.yml"]);
    }
}

/// Runs promtool on `body`; `false` when promtool is absent and not required.
pub(crate) fn promtool_check(body: &str) -> bool {
    if !have("promtool") {
        return false;
    }
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = child.expect("promtool runs");
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
    // D7 healthy, D30 header-only, D90 failing; D180 healthy.
    let app = Scenario::healthy()
        .await
        .report(Period::D180, ONE_DAY)
        .report(Period::D30, HEADER)
        .report_answers(Period::D90, ResponseTemplate::new(503))
        .periods(Period::ALL)
        .spawn()
        .await;
    let body = app.after_first_attempts(4).await;
    assert!(
        body.contains(
            r#"sfb_refresh_failures_total{period="D90",reason="http",tenant="tenant-1"} 1"#
        ),
        "{body}"
    );
    promtool_check(&body);
    app.stop().await;
}
