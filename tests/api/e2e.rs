//! End to end with a real Prometheus: it scrapes the exporter (itself fed by the fake Graph)
//! with the shipped alert rules loaded; every PromQL expression of the shipped dashboard must
//! return data, no alert may fire while all is well, and SfbRefreshFailing must go pending
//! once Graph fails. Runs where Debian's prometheus package is installed; required in CI.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use sfb_exporter::Period;
use time::{Duration as Days, OffsetDateTime};
use wiremock::matchers::method;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;
use crate::promtool::have;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

pub(crate) struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Scrapes `target` every second, with the shipped alert rules loaded.
    fn start(target: &str) -> Prometheus {
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {ROOT}/dashboards/sfb-exporter-alerts.yml\n\
             scrape_configs:\n  - job_name: sfb-exporter\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        Prometheus::launch(&config, None, &[])
    }

    /// Scrapes nothing and serves the TSDB in `data`, keeping what is within `retention`.
    pub(crate) fn serving(data: &std::path::Path, retention: &str) -> Prometheus {
        Prometheus::launch(
            "global:\n  scrape_interval: 1m\n",
            Some(data),
            &[&format!("--storage.tsdb.retention.time={retention}")],
        )
    }

    /// `data`: the TSDB directory; None: a fresh one.
    fn launch(config: &str, data: Option<&std::path::Path>, args: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let data = data.map_or_else(|| dir.path().join("data"), |d| d.to_path_buf());
        // Prometheus cannot report a port chosen by the kernel, so pick a free one first.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: test_client(),
            _dir: dir,
        }
    }

    pub(crate) async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        let json: Value = serde_json::from_str(&response.text().await.ok()?).ok()?;
        (json["status"] == "success").then(|| json["data"].clone())
    }

    /// The instant vector `expr` evaluates to now (empty on error or before startup).
    pub(crate) async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self.get("/api/v1/query", &[("query", expr)]).await;
        data.and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Whether the rule group has been evaluated `n` more times, as its lastEvaluation says,
    /// before the deadline.
    async fn evaluations(&self, n: usize) -> bool {
        let last = || async {
            let rules = self.get("/api/v1/rules", &[]).await?;
            rules["groups"][0]["lastEvaluation"]
                .as_str()
                .map(str::to_string)
        };
        let before = last().await;
        let seen = std::cell::RefCell::new(std::collections::HashSet::new());
        let (last, before, seen) = (&last, &before, &seen);
        eventually(|| async move {
            if let Some(at) = last().await.filter(|at| Some(at) != before.as_ref()) {
                seen.borrow_mut().insert(at);
            }
            seen.borrow().len() >= n
        })
        .await
    }

    async fn alerts(&self) -> Vec<Value> {
        let data = self.get("/api/v1/alerts", &[]).await;
        data.and_then(|d| d["alerts"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// Every PromQL expression of the shipped dashboard, with template variables set to "All".
pub(crate) fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{ROOT}/dashboards/sfb-exporter.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let expr = expr
                .replace("${tenant}", ".*")
                .replace("$tenant", ".*")
                .replace("${period}", ".*")
                .replace("$period", ".*")
                // What the panels with an explicit interval of 1h get from Grafana.
                .replace("$__interval", "1h");
            assert!(!expr.contains('$'), "unsubstituted variable in {expr}");
            out.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    assert!(out.len() >= 8, "{out:?}");
    out
}

/// A healthy report: refreshed yesterday, newest day the day before.
fn fresh_report() -> String {
    let today = OffsetDateTime::now_utc().date();
    let refreshed = today - Days::days(1);
    let mut csv = String::from(HEADER);
    for lag in 2..9 {
        csv.push_str(&format!(
            "\n{refreshed},{},7,{},3,1",
            today - Days::days(lag),
            100 + lag
        ));
    }
    csv
}

#[tokio::test]
async fn a_real_prometheus_scrapes_evaluates_the_rules_and_answers_every_dashboard_query() {
    if !have("prometheus") {
        return;
    }
    let app = Scenario::new()
        .await
        .token_ok()
        .reports(Period::ALL, &fresh_report())
        .periods(Period::ALL)
        .interval(Duration::from_secs(2))
        .spawn()
        .await;
    let prometheus = Prometheus::start(&app.addr.to_string());

    let scraped =
        eventually(|| async { prometheus.query("sfb_refresh_success == 1").await.len() == 4 })
            .await;
    assert!(scraped, "Prometheus never saw four healthy periods");

    // The history panels show what backfill writes; tests/api/backfill.rs checks them.
    let live = dashboard_expressions()
        .into_iter()
        .filter(|(_, expr)| !expr.contains(sfb_exporter::BACKFILL_METRIC));
    for (title, expr) in live {
        let answered = eventually(|| async { !prometheus.query(&expr).await.is_empty() }).await;
        assert!(answered, "dashboard panel {title:?}: no data for {expr}");
    }
    for variable in ["tenant", "period"] {
        let values = prometheus
            .get(&format!("/api/v1/label/{variable}/values"), &[])
            .await
            .unwrap();
        assert!(
            values.as_array().is_some_and(|v| !v.is_empty()),
            "{variable}: {values}"
        );
    }

    // Let the rules be evaluated a few times over healthy data: nothing may be pending or firing.
    let shipped: serde_norway::Value = serde_norway::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/dashboards/sfb-exporter-alerts.yml"
        ))
        .unwrap(),
    )
    .unwrap();
    let shipped = shipped["groups"][0]["rules"].as_sequence().unwrap().len();
    let evaluated = eventually(|| async {
        let rules = prometheus.get("/api/v1/rules", &[]).await;
        rules.is_some_and(|r| {
            r["groups"][0]["rules"]
                .as_array()
                .is_some_and(|rules| rules.len() == shipped)
        })
    })
    .await;
    assert!(evaluated, "the shipped rules were not loaded");
    assert!(
        prometheus.evaluations(3).await,
        "the rules were not evaluated three times"
    );
    let alerts = prometheus.alerts().await;
    assert!(alerts.is_empty(), "alerts while healthy: {alerts:#?}");

    // Graph starts failing: the next refreshes fail and SfbRefreshFailing goes pending.
    app.graph.reset().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&app.graph)
        .await;
    let pending = eventually(|| async {
        prometheus
            .alerts()
            .await
            .iter()
            .any(|a| a["labels"]["alertname"] == "SfbRefreshFailing" && a["state"] == "pending")
    })
    .await;
    assert!(
        pending,
        "SfbRefreshFailing never went pending: {:#?}",
        prometheus.alerts().await
    );
    app.stop().await;
}
