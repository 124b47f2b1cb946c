//! `sfb-exporter backfill` through the real binary: its OpenMetrics goes through a real promtool
//! into blocks that a real Prometheus serves to the dashboard's history query; a failed run
//! says why in one line and leaves an existing --output as it was.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use sfb_exporter::Period;
use sfb_exporter::BACKFILL_METRIC as METRIC;
use time::{Date, Duration as Days, OffsetDateTime};
use wiremock::ResponseTemplate;

use crate::e2e::{dashboard_expressions, Prometheus};
use crate::helpers::*;
use crate::process::{assert_one_line, exporter, exporter_against, run};
use crate::promtool::have;

/// 180 days of Graph's rows, newest first, the day before yesterday the newest: (day, minutes
/// by conference type). Day 5 has an empty Dial-in cell, which counts 0.
fn history(today: Date) -> (String, Vec<(Date, [u64; 3])>) {
    let refreshed = today - Days::days(1);
    let mut csv = String::from(HEADER);
    let mut rows = Vec::new();
    for i in 0..180u64 {
        let day = today - Days::days(2 + i as i64);
        let minutes = [1000 + 7 * i, i % 13, (i * 5) % 17];
        let dial_in = if i == 5 {
            String::new()
        } else {
            minutes[1].to_string()
        };
        csv.push_str(&format!(
            "\n{refreshed},{day},180,{},{dial_in},{}",
            minutes[0], minutes[2]
        ));
        rows.push((
            day,
            if i == 5 {
                [minutes[0], 0, minutes[2]]
            } else {
                minutes
            },
        ));
    }
    (csv, rows)
}

fn midnight(day: Date) -> i64 {
    day.midnight().assume_utc().unix_timestamp()
}

/// The (timestamp, value) points of each conference type's series in a matrix result.
fn points(result: &[Value]) -> Vec<(String, Vec<(i64, f64)>)> {
    let mut series: Vec<_> = result
        .iter()
        .map(|s| {
            assert_eq!(s["metric"]["tenant"], TENANT, "{s}");
            let kind = s["metric"]["conference_type"].as_str().unwrap().to_string();
            let values = s["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let at = p[0].as_f64().unwrap() as i64;
                    (at, p[1].as_str().unwrap().parse::<f64>().unwrap())
                })
                .collect();
            (kind, values)
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

fn promtool_blocks(input: &Path, output: &Path) {
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(input)
        .arg(output)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool tsdb create-blocks-from openmetrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn backfilled_history_reaches_prometheus_and_the_history_panel() {
    if !have("promtool") || !have("prometheus") {
        return;
    }
    let today = OffsetDateTime::now_utc().date();
    let (csv, rows) = history(today);
    // One report request, for D180 only.
    let fakes = Scenario::new()
        .await
        .token_ok()
        .redirect(Period::D180)
        .expect(1)
        .download(Period::D180, csv)
        .servers()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let om = dir.path().join("history.om");
    std::fs::write(&om, "yesterday's history\n").unwrap();
    let (code, stderr) = run(&mut exporter_against(
        &fakes.graph.uri(),
        &["backfill", "--output", om.to_str().unwrap()],
    ));
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&om).unwrap();
    assert!(text.ends_with("\n# EOF\n"), "{text}");

    let data = dir.path().join("data");
    promtool_blocks(&om, &data);
    let prometheus = Prometheus::serving(&data, "1y");

    // Every raw sample of the last 200 days: 180 per series, the report's values at the days'
    // UTC midnights.
    let raw = format!("{METRIC}[200d]");
    let loaded = eventually(|| async { prometheus.query(&raw).await.len() == 3 }).await;
    assert!(loaded, "Prometheus does not serve the blocks: {raw}");
    let kinds = ["audio_video", "dial_in_microsoft", "dial_out_microsoft"];
    let series = points(&prometheus.query(&raw).await);
    for (i, (kind, values)) in series.iter().enumerate() {
        assert_eq!(kind, kinds[i]);
        let mut expected: Vec<(i64, f64)> = rows
            .iter()
            .map(|(day, minutes)| (midnight(*day), (minutes[i] * 60) as f64))
            .collect();
        expected.sort_by_key(|p| p.0);
        assert_eq!(values, &expected, "{kind}");
    }

    // The dashboard's history query as Grafana runs it: a range query stepping one day.
    let history: Vec<_> = dashboard_expressions()
        .into_iter()
        .filter(|(_, expr)| expr.contains(METRIC))
        .collect();
    assert!(!history.is_empty(), "no dashboard panel shows {METRIC}");
    let start = midnight(today - Days::days(200)).to_string();
    let end = midnight(today).to_string();
    for (title, expr) in history {
        let query = [
            ("query", expr.as_str()),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", "86400"),
        ];
        let data = prometheus.get("/api/v1/query_range", &query).await;
        let result = data.and_then(|d| d["result"].as_array().cloned());
        let series = points(&result.unwrap_or_default());
        assert_eq!(series.len(), 3, "{title}: {expr}");
        for (i, (kind, values)) in series.iter().enumerate() {
            // One bar per reported day with its value, and none on a day without a row.
            let mut expected: Vec<(i64, f64)> = rows
                .iter()
                .map(|(day, minutes)| (midnight(*day), (minutes[i] * 60) as f64))
                .collect();
            expected.sort_by_key(|p| p.0);
            assert_eq!(values, &expected, "{title}: {kind}");
        }
    }
}

#[tokio::test]
async fn a_failed_backfill_says_why_in_one_line_and_leaves_the_output_untouched() {
    let forbidden = ResponseTemplate::new(403).set_body_json(serde_json::json!({
        "error": {"code": "S2SUnauthorized", "message": "Invalid scope claims/roles."}
    }));
    let fakes = Scenario::new()
        .await
        .token_ok()
        .report_answers(Period::D180, forbidden)
        .expect(1)
        .servers()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let om = dir.path().join("history.om");
    std::fs::write(&om, "yesterday's history\n").unwrap();
    let output = ["backfill", "--output", om.to_str().unwrap()];

    let (code, stderr) = run(&mut exporter_against(&fakes.graph.uri(), &output));
    assert_ne!(code, 0);
    assert_one_line(&stderr, &[TENANT, "D180", "403", "Reports.Read.All"]);
    assert!(!stderr.contains(CLIENT_SECRET) && !stderr.contains(ACCESS_TOKEN));

    // A configuration problem fails the same way, before any request.
    let (code, stderr) = run(exporter().args(output));
    assert_ne!(code, 0);
    assert_one_line(&stderr, &["AZURE_TENANT_ID is not set"]);

    assert_eq!(
        std::fs::read_to_string(&om).unwrap(),
        "yesterday's history\n"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
}

#[test]
fn demo_backfill_writes_every_day_to_stdout_and_starts_no_server() {
    // The exporter's port is taken: backfill does not need it.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    for (args, days) in [
        (vec!["backfill", "--demo"], 180),
        (vec!["--demo", "backfill", "--backfill.period", "d7"], 7),
    ] {
        let out = exporter()
            .args(["--web.listen-address", &busy])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        let text = String::from_utf8(out.stdout).unwrap();
        for kind in ["audio_video", "dial_in_microsoft", "dial_out_microsoft"] {
            let series = format!(r#"{METRIC}{{tenant="demo",conference_type="{kind}"}} "#);
            assert_eq!(text.matches(&series).count(), days, "{args:?}: {kind}");
        }
        assert!(text.starts_with(&format!("# HELP {METRIC} ")), "{text}");
        assert!(text.ends_with("\n# EOF\n"), "{text}");
    }
}

#[tokio::test]
async fn every_tenant_of_the_config_file_goes_into_one_output() {
    let ids = ["tenant-a", "tenant-b", "tenant-c"];
    let healthy = ids.map(|id| tenant(id, Behaviour::Healthy));
    let broken = tenant("tenant-x", Behaviour::BadSecret);
    let fakes = Scenario::new()
        .await
        .tenants(&healthy)
        .tenant(&broken)
        .servers()
        .await;
    let base = fakes.graph.uri();
    let dir = tempfile::tempdir().unwrap();
    let om = dir.path().join("history.om");
    let backfill = |file: &Path| {
        run(exporter().env("AZURE_AUTHORITY_HOST", &base).args([
            "--graph.url",
            &base,
            // Progress is logged per tenant at info; the failure alone at error.
            "--log.level",
            "warn",
            "backfill",
            "--config.file",
            file.to_str().unwrap(),
            "--output",
            om.to_str().unwrap(),
        ]))
    };

    let (code, stderr) = backfill(&fakes.write_tenants(&healthy.iter().collect::<Vec<_>>()));
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&om).unwrap();
    // The fake's one row: 2024-03-04, each tenant's own minutes.
    for id in ids {
        let sample = format!(
            "{METRIC}{{tenant=\"{id}\",conference_type=\"audio_video\"}} {} 1709510400\n",
            minutes(id) * 60
        );
        assert!(text.contains(&sample), "{sample} not in:\n{text}");
    }
    assert_eq!(text.matches(&format!("{METRIC}{{")).count(), 3 * ids.len());
    let reports: Vec<_> = fakes
        .graph
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.url.path().contains("/reports/"))
        .collect();
    for id in ids {
        let token = format!("Bearer token-{id}");
        let asked = reports
            .iter()
            .filter(|r| {
                r.headers
                    .get("authorization")
                    .is_some_and(|v| v == token.as_str())
            })
            .count();
        assert_eq!(asked, 1, "report requests of {id}");
    }
    assert_eq!(reports.len(), ids.len());

    // One tenant the identity platform refuses: the run fails naming it, the history stays.
    let mut with_broken: Vec<_> = healthy.iter().collect();
    with_broken.insert(1, &broken);
    let (code, stderr) = backfill(&fakes.write_tenants(&with_broken));
    assert_ne!(code, 0);
    assert_one_line(&stderr, &["tenant-x", "AADSTS7000215"]);
    assert_eq!(std::fs::read_to_string(&om).unwrap(), text);
}

/// `--output` names what it writes to: `-` is stdout, a FIFO's reader and a symlink to
/// /proc/self/fd/1 get the text, and a full device fails the run in one line. Devices are
/// reached through links in the test's own directory, so that nothing in /dev could be
/// replaced if this regressed.
#[test]
fn backfill_output_writes_through_devices_fifos_and_links() {
    use std::os::unix::fs::{symlink, FileTypeExt};
    let dir = tempfile::tempdir().unwrap();
    let backfill = |output: &Path| {
        let mut cmd = exporter();
        cmd.current_dir(dir.path())
            .args(["--demo", "backfill", "--backfill.period", "D7", "--output"])
            .arg(output);
        cmd
    };
    let complete = |text: &str| text.starts_with("# HELP ") && text.ends_with("\n# EOF\n");

    // `-`: stdout, and no file of that name.
    let out = backfill(Path::new("-")).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(complete(&String::from_utf8_lossy(&out.stdout)));
    assert!(!dir.path().join("-").exists());

    // A link to the process's own stdout, a pipe here.
    let stdout_link = dir.path().join("stdout");
    symlink("/proc/self/fd/1", &stdout_link).unwrap();
    let out = backfill(&stdout_link).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(complete(&String::from_utf8_lossy(&out.stdout)));
    assert!(std::fs::symlink_metadata(&stdout_link)
        .unwrap()
        .file_type()
        .is_symlink());

    // A FIFO, read by another thread: it gets the text and stays a FIFO.
    let fifo = dir.path().join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let reading = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::read_to_string(reading).unwrap());
    let out = backfill(&fifo).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(complete(&reader.join().unwrap()));
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());

    // A full disk: non-zero, one line naming the path and the reason.
    let full = dir.path().join("full");
    symlink("/dev/full", &full).unwrap();
    let (code, stderr) = run(backfill(&full).args(["--log.level", "warn"]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(
        &stderr,
        &["cannot write", "full", "No space left on device"],
    );

    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["fifo", "full", "stdout"],
        "temporary files left behind"
    );
}
