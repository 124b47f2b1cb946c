//! Many tenants from one --config.file: isolation, readiness, reload, sharding, config errors.

use std::time::Duration;

use sfb_exporter::shard_of;
use sfb_exporter::Period;
use sfb_exporter::Shard;

use crate::helpers::*;
use crate::process::{assert_one_line, exporter, run, Process};

fn series(name: &str, tenant: &str, period: Period) -> String {
    format!(r#"{name}{{period="{period}",tenant="{tenant}"}}"#)
}

fn activity(tenant: &str, period: Period) -> String {
    format!(
        r#"sfb_organizer_activity_seconds{{conference_type="audio_video",period="{period}",tenant="{tenant}"}}"#
    )
}

async fn token_requests(app: &TestApp, id: &str) -> usize {
    app.requests_to(&app.graph, &format!("/{id}/oauth2"))
        .await
        .len()
}

/// The exporter with `t` the only tenant of its --config.file, and --web.enable-lifecycle.
async fn alone_with_lifecycle(t: &FakeTenant) -> TestApp {
    Scenario::new()
        .await
        .tenant(t)
        .tenants_file(&[t])
        .enable_lifecycle()
        .spawn()
        .await
}

/// PUT /-/reload: its status and text.
async fn reload(app: &TestApp) -> (u16, String) {
    let response = app
        .http
        .put(format!("http://{}/-/reload", app.addr))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn a_hung_tenant_and_a_bad_secret_leave_the_others_alone() {
    let periods = [Period::D7, Period::D30];
    let mut contoso = tenant("contoso-id", Behaviour::Healthy);
    contoso.name = Some("Contoso");
    let tenants = [
        contoso,
        tenant("fabrikam-id", Behaviour::Healthy),
        tenant("revoked-id", Behaviour::BadSecret),
        tenant("hung-id", Behaviour::Hung),
    ];
    let app = Scenario::new()
        .await
        .tenants(&tenants)
        .tenants_file(&tenants.iter().collect::<Vec<_>>())
        .periods(periods)
        // The hung tenant holds one slot (its periods share one token request): the others
        // must get by with the other.
        .max_concurrency(2)
        .timeout(Duration::from_secs(3))
        .spawn()
        .await;

    let body = app
        .metrics_when("the healthy tenants' values", |b| {
            ["contoso-id", "fabrikam-id"].iter().all(|id| {
                periods
                    .iter()
                    .all(|&p| sample(b, &activity(id, p)).is_some())
            })
        })
        .await;
    for id in ["contoso-id", "fabrikam-id"] {
        for p in periods {
            assert_eq!(
                sample(&body, &activity(id, p)),
                Some(minutes(id) as f64 * 60.0)
            );
            assert_eq!(
                sample(&body, &series("sfb_refresh_success", id, p)),
                Some(1.0)
            );
        }
    }
    assert_eq!(
        sample(
            &body,
            r#"sfb_tenant_info{name="Contoso",tenant="contoso-id"}"#
        ),
        Some(1.0)
    );
    assert_eq!(body.matches("sfb_tenant_info{").count(), 1, "{body}");

    // The hung tenant is still pending: not ready yet, whatever the others do.
    let (status, json) = app.readyz().await;
    if json["tenants"]["hung-id"]["periods"]["D7"]["state"] == "pending" {
        assert_eq!(status, 503, "{json}");
    }
    assert_eq!(json["tenants"]["contoso-id"]["name"], "Contoso");
    assert_eq!(
        json["tenants"]["contoso-id"]["periods"]["D7"]["state"],
        "ok"
    );

    // Once every (tenant, period) has had its first attempt, the exporter is ready, though two
    // tenants fail.
    assert!(eventually(|| async { app.readyz().await.0 == 200 }).await);
    let (_, json) = app.readyz().await;
    assert_eq!(json["ready"], true);
    for p in ["D7", "D30"] {
        assert_eq!(
            json["tenants"]["revoked-id"]["periods"][p]["state"],
            "failing"
        );
        assert_eq!(json["tenants"]["hung-id"]["periods"][p]["state"], "failing");
    }
    let body = app.metrics().await;
    let failures = |id: &str, reason: &str| {
        format!(r#"sfb_refresh_failures_total{{period="D7",reason="{reason}",tenant="{id}"}}"#)
    };
    assert_eq!(sample(&body, &failures("revoked-id", "auth")), Some(1.0));
    assert_eq!(sample(&body, &failures("hung-id", "timeout")), Some(1.0));
    assert!(!body.contains(&secret("revoked-id")), "a secret leaked");
    // Each tenant's exchanges and refresh durations under its own label, from its own counts.
    let requests = |id: &str, stage: &str, code: &str| {
        format!(r#"sfb_graph_requests_total{{code="{code}",stage="{stage}",tenant="{id}"}}"#)
    };
    for id in ["contoso-id", "fabrikam-id"] {
        assert_eq!(
            sample(&body, &requests(id, "token", "200")),
            Some(1.0),
            "{body}"
        );
        assert_eq!(sample(&body, &requests(id, "report", "302")), Some(2.0));
        assert_eq!(sample(&body, &requests(id, "download", "200")), Some(2.0));
        for p in periods {
            let took = sample(&body, &series("sfb_refresh_duration_seconds", id, p));
            assert!(took.is_some_and(|s| s >= 0.0), "{id} {p}: {took:?}");
        }
    }
    assert!(sample(&body, &requests("revoked-id", "token", "401")) >= Some(1.0));
    assert_eq!(
        sample(&body, &requests("revoked-id", "report", "302")),
        None
    );
    assert!(sample(&body, &requests("hung-id", "token", "error")) >= Some(1.0));
    assert_eq!(sample(&body, &requests("hung-id", "token", "200")), None);

    // Without --web.enable-lifecycle the reload endpoint is refused, as Prometheus refuses
    // it: 403 to POST and PUT, 405 to GET, with its words.
    let url = format!("http://{}/-/reload", app.addr);
    for (request, status, text) in [
        (app.http.post(&url), 403, "Lifecycle API is not enabled."),
        (app.http.put(&url), 403, "Lifecycle API is not enabled."),
        (app.http.get(&url), 405, "Only POST or PUT requests allowed"),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(response.text().await.unwrap(), text);
    }
    app.stop().await;
}

#[tokio::test]
async fn reload_adds_removes_and_keeps_tenants() {
    let (kept, removed, added) = (
        tenant("kept-id", Behaviour::Healthy),
        tenant("removed-id", Behaviour::Healthy),
        tenant("added-id", Behaviour::Healthy),
    );
    let app = Scenario::new()
        .await
        .tenants([&kept, &removed, &added])
        .tenants_file(&[&kept, &removed])
        .enable_lifecycle()
        .spawn()
        .await;
    app.after_first_attempts(2).await;
    let reload = || reload(&app);
    let body = app.metrics().await;
    assert_eq!(
        sample(&body, "sfb_config_last_reload_successful"),
        Some(1.0)
    );
    let first_load = sample(&body, "sfb_config_last_reload_success_timestamp_seconds").unwrap();
    assert!(first_load > 1.7e9, "{first_load}");

    // The rewritten file: same secret for kept, removed gone, added new.
    let file = app.write_tenants(&[&kept, &added]);
    let yaml = std::fs::read_to_string(&file).unwrap();
    assert_eq!(reload().await.0, 200);
    let body = app
        .metrics_when("the added tenant's first attempt", |b| {
            sample(b, &series("sfb_refresh_success", "added-id", Period::D7)).is_some()
                && !b.contains("removed-id")
        })
        .await;
    assert_eq!(
        sample(&body, &series("sfb_refresh_success", "kept-id", Period::D7)),
        Some(1.0)
    );
    // The kept tenant kept its token and its schedule: no new exchange at all.
    assert_eq!(token_requests(&app, "kept-id").await, 1);
    assert_eq!(
        app.requests_to(&app.download, "/kept-id/").await.len(),
        1,
        "kept tenant refreshed again"
    );
    let (status, json) = app.readyz().await;
    assert_eq!(status, 200, "{json}");
    assert!(json["tenants"].get("removed-id").is_none(), "{json}");

    // A file that does not load changes nothing and says why.
    std::fs::write(&file, yaml.replace("client_id:", "clientid:")).unwrap();
    let (status, text) = reload().await;
    assert_eq!(status, 500);
    assert!(text.contains("unknown key \"clientid\""), "{text}");
    let body = app.metrics().await;
    assert_eq!(
        sample(&body, "sfb_config_last_reload_successful"),
        Some(0.0)
    );
    assert!(
        sample(&body, "sfb_config_last_reload_success_timestamp_seconds").unwrap() >= first_load
    );
    for id in ["kept-id", "added-id"] {
        assert!(sample(&body, &activity(id, Period::D7)).is_some(), "{id}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_reload_without_tenants_or_with_a_bad_tenant_id_changes_nothing() {
    let steady = tenant("steady-id", Behaviour::Healthy);
    let app = alone_with_lifecycle(&steady).await;
    app.after_first_attempts(1).await;
    let stamp = |body: &str| {
        body.lines()
            .find(|l| l.starts_with("sfb_config_last_reload_success_timestamp_seconds "))
            .map(str::to_string)
    };
    let loaded = stamp(&app.metrics().await).expect("the load's timestamp");
    let good = std::fs::read_to_string(app.tenants_file()).unwrap();
    let mut refused: Vec<(String, &str)> = vec![
        (String::new(), "no tenants"),
        ("tenants:\n".into(), "no tenants"),
        ("tenants: []\n".into(), "no tenants"),
    ];
    for id in crate::lifecycle::BAD_TENANT_IDS {
        let entry = format!(
            "  - {{tenant_id: {}, client_id: c, client_secret: s}}\n",
            serde_json::to_string(id).unwrap()
        );
        refused.push((good.clone() + &entry, "tenant #2: tenant_id: expected"));
    }
    // The first of them is the first reload: the load's timestamp must stay exactly as it is.
    for (yaml, needle) in refused {
        std::fs::write(app.tenants_file(), &yaml).unwrap();
        let (status, text) = reload(&app).await;
        assert_eq!(status, 500, "{yaml:?}: {text}");
        assert!(text.contains(needle), "{yaml:?}: {text}");
        let body = app.metrics().await;
        assert_eq!(
            sample(&body, "sfb_config_last_reload_successful"),
            Some(0.0),
            "{yaml:?}"
        );
        assert_eq!(stamp(&body).as_ref(), Some(&loaded), "{yaml:?}");
        assert_eq!(
            sample(&body, &activity("steady-id", Period::D7)),
            Some(minutes("steady-id") as f64 * 60.0),
            "{yaml:?}: the running tenant is gone"
        );
    }
    let (status, json) = app.readyz().await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tenants"]["steady-id"]["periods"]["D7"]["state"], "ok");
    assert_eq!(token_requests(&app, "steady-id").await, 1, "restarted");
    app.stop().await;
}

#[tokio::test]
async fn a_renamed_tenant_keeps_its_token_schedule_and_values() {
    let mut renamed = tenant("renamed-id", Behaviour::Healthy);
    renamed.name = Some("Old name");
    let app = alone_with_lifecycle(&renamed).await;
    app.after_first_attempts(1).await;
    let info = |name: &str| format!(r#"sfb_tenant_info{{name="{name}",tenant="renamed-id"}}"#);
    assert_eq!(sample(&app.metrics().await, &info("Old name")), Some(1.0));

    renamed.name = Some("New name");
    app.write_tenants(&[&renamed]);
    let (status, text) = reload(&app).await;
    assert_eq!(status, 200, "{text}");
    // Published before the reload answers: no wait, and no moment without values.
    let body = app.metrics().await;
    assert_eq!(sample(&body, &info("New name")), Some(1.0), "{body}");
    assert_eq!(body.matches("sfb_tenant_info{").count(), 1, "{body}");
    assert_eq!(
        sample(&body, &activity("renamed-id", Period::D7)),
        Some(minutes("renamed-id") as f64 * 60.0)
    );
    let (status, json) = app.readyz().await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["tenants"]["renamed-id"]["name"], "New name");
    assert_eq!(token_requests(&app, "renamed-id").await, 1, "a new token");
    assert_eq!(
        app.requests_to(&app.download, "/renamed-id/").await.len(),
        1,
        "refreshed again"
    );
    app.stop().await;
}

#[tokio::test]
async fn shards_keep_only_their_tenants() {
    let tenants: Vec<FakeTenant> = (0..8)
        .map(|i| tenant(&format!("Tenant-{i}"), Behaviour::Healthy))
        .collect();
    let app = Scenario::new()
        .await
        .tenants(&tenants)
        .tenants_file(&tenants.iter().collect::<Vec<_>>())
        .shard(Shard { count: 3, index: 1 })
        .spawn()
        .await;
    let expected: Vec<&str> = tenants
        .iter()
        .map(|t| t.id.as_str())
        .filter(|id| shard_of(id, 3) == 1)
        .collect();
    assert!(!expected.is_empty() && expected.len() < tenants.len());
    assert!(eventually(|| async { app.readyz().await.0 == 200 }).await);
    let (_, json) = app.readyz().await;
    let held: Vec<&str> = json["tenants"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(held, expected_sorted);
    app.stop().await;
}

#[test]
fn config_file_errors_are_one_line_and_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.yml");
    let cases: &[(&str, &[&str])] = &[
        (
            "tenants:\n  - {tenant_id: t1, client_id: c, client_secret: hunter2, colour: red}\n",
            &["tenant t1", "unknown key \"colour\""],
        ),
        (
            "tenants:\n  - {tenant_id: t1, client_id: c, client_secret_file: missing}\n",
            &["tenant t1", "client_secret_file", "missing"],
        ),
        (
            "tenants:\n  - {client_id: c, client_secret: hunter2}\n",
            &["tenant #1", "tenant_id: missing"],
        ),
        ("", &["no tenants: list at least one under tenants"]),
        (
            "tenants: []\n",
            &["no tenants: list at least one under tenants"],
        ),
    ];
    // A JSON string is a YAML double-quoted scalar, escapes included.
    let bad_ids: Vec<String> = crate::lifecycle::BAD_TENANT_IDS
        .iter()
        .map(|id| {
            format!(
                "tenants:\n  - {{tenant_id: {}, client_id: c, client_secret: hunter2}}\n",
                serde_json::to_string(id).unwrap()
            )
        })
        .collect();
    let bad_id: &[&str] = &["tenant #1: tenant_id: expected a directory ID (GUID)"];
    let cases = cases
        .iter()
        .copied()
        .chain(bad_ids.iter().map(|yaml| (yaml.as_str(), bad_id)));
    for (yaml, needles) in cases {
        std::fs::write(&file, yaml).unwrap();
        let (code, stderr) = run(exporter().args(["--config.file", file.to_str().unwrap()]));
        assert_eq!(code, 1, "{stderr}");
        assert_one_line(&stderr, needles);
        assert!(!stderr.contains("hunter2"), "{stderr}");
        let (code, stderr) =
            run(exporter().args(["--config.check", "--config.file", file.to_str().unwrap()]));
        assert_ne!(code, 0, "{stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "--config.check: {needle:?} not in {stderr}"
            );
        }
    }
    let (code, stderr) = run(exporter().args(["--config.file", "/nonexistent/tenants.yml"]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(
        &stderr,
        &["cannot read --config.file", "/nonexistent/tenants.yml"],
    );
    let (code, stderr) = run(exporter().args([
        "--config.file",
        file.to_str().unwrap(),
        "--shard.count",
        "2",
        "--shard.index",
        "2",
    ]));
    assert_eq!(code, 1, "{stderr}");
    assert_one_line(&stderr, &["--shard.index 2", "0 to 1"]);
}

#[tokio::test]
async fn sighup_reloads_the_file() {
    let (first, second) = (
        tenant("first-id", Behaviour::Healthy),
        tenant("second-id", Behaviour::Healthy),
    );
    let fakes = Scenario::new()
        .await
        .tenants([&first, &second])
        .servers()
        .await;
    let file = fakes.write_tenants(&[&first]);
    let base = fakes.graph.uri();
    let process = Process::spawn(exporter().env("AZURE_AUTHORITY_HOST", &base).args([
        "--config.file",
        file.to_str().unwrap(),
        "--graph.url",
        &base,
        "--report.periods",
        "D7",
        "--web.listen-address",
        "127.0.0.1:0",
        "--log.format",
        "json",
    ]));
    process.log_line(|l| l["message"] == "tenants loaded" && l["tenants"] == 1);
    fakes.write_tenants(&[&first, &second]);
    process.signal("HUP");
    let line = process.log_line(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("tenants reloaded"))
    });
    assert_eq!(line["added"], 1, "{line}");
    assert_eq!(line["unchanged"], 1, "{line}");
    assert_eq!(
        line["message"],
        "tenants reloaded: 1 added, 0 removed, 0 restarted, 0 renamed, 1 unchanged",
        "{line}"
    );
    process.log_line(|l| l["message"] == "report refreshed" && l["tenant"] == "second-id");
}

#[test]
fn the_environment_identity_is_ignored_with_one_info_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenants.yml");
    // A managed identity tenant, its endpoint on a closed loopback port: nothing leaves the
    // machine.
    std::fs::write(
        &file,
        "tenants:\n  - {tenant_id: t1, managed_identity: true}\n",
    )
    .unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hunter2").unwrap();
    let process = Process::spawn(
        exporter()
            .env("AZURE_POD_IDENTITY_AUTHORITY_HOST", "http://127.0.0.1:1")
            .env("AZURE_TENANT_ID", "t")
            .env("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", "true")
            .args([
                "--config.file",
                file.to_str().unwrap(),
                "--azure.client-secret-file",
                secret.to_str().unwrap(),
                "--azure.credential",
                "secret",
                "--web.listen-address",
                "127.0.0.1:0",
                "--log.format",
                "json",
            ]),
    );
    let line = process.log_line(|l| l["ignored"].is_string());
    let ignored = line["ignored"].as_str().unwrap();
    assert_eq!(
        ignored,
        "AZURE_TENANT_ID,AZURE_CLIENT_SEND_CERTIFICATE_CHAIN,--azure.credential,--azure.client-secret-file",
        "{line}"
    );
    assert_eq!(line["level"], "INFO", "{line}");
}

#[test]
fn the_sharded_statefulset_agrees_with_itself_and_the_exporter() {
    use crate::packaging::{at, strings, yaml};
    let set = yaml("deploy/kubernetes/sharded/statefulset.yaml");
    let container = at(&set, &["spec", "template", "spec", "containers", "0"]);
    let args: Vec<&str> = strings(container, &["args"]);
    let replicas = at(&set, &["spec", "replicas"]).as_u64().unwrap();
    assert!(
        args.contains(&format!("--shard.count={replicas}").as_str()),
        "{args:?}"
    );
    assert!(args.contains(&"--shard.index=$(SHARD_INDEX)"), "{args:?}");
    assert_eq!(
        at(
            container,
            &["env", "0", "valueFrom", "fieldRef", "fieldPath"]
        )
        .as_str(),
        Some("metadata.labels['apps.kubernetes.io/pod-index']")
    );
    let service = yaml("deploy/kubernetes/sharded/service.yaml");
    assert_eq!(
        at(&set, &["spec", "serviceName"]),
        at(&service, &["metadata", "name"])
    );
    // The ConfigMap's file loads with the exporter's own reader, secrets where the pod
    // mounts them.
    let config = yaml("deploy/kubernetes/sharded/tenants.yaml");
    let text = at(&config, &["data", "tenants.yml"]).as_str().unwrap();
    let root = tempfile::tempdir().unwrap();
    let (config_dir, secrets) = (root.path().join("config"), root.path().join("secrets"));
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&secrets).unwrap();
    for name in ["contoso", "fabrikam"] {
        std::fs::write(secrets.join(name), "s").unwrap();
    }
    let mounts = at(container, &["volumeMounts"]).as_sequence().unwrap();
    let mounted: Vec<&str> = mounts
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert_eq!(
        mounted,
        ["/etc/sfb-exporter/config", "/etc/sfb-exporter/secrets"]
    );
    let defaults = sfb_exporter::TenantDefaults {
        cloud: sfb_exporter::Cloud::Global,
        authority_host: None,
        graph_url: None,
        periods: sfb_exporter::Periods::new([Period::D7]).unwrap(),
        managed_identity: Err("not on Azure".into()),
    };
    let specs = sfb_exporter::parse_tenants(text, &config_dir, &defaults).unwrap();
    assert_eq!(specs.len(), 2);
}

/// Reload requests from more connections than the cap, each asking again once answered:
/// beyond the few that wait for the queued reload they are answered 503 at once, so their
/// connections can be closed to make room, and a scrape is answered meanwhile.
#[tokio::test]
async fn a_flood_of_reload_requests_never_locks_a_scrape_out() {
    const CAP: usize = 12;
    let t = tenant("contoso-id", Behaviour::Healthy);
    let app = Scenario::new()
        .await
        .tenant(&t)
        .tenants_file(&[&t])
        .enable_lifecycle()
        .max_connections(CAP)
        .spawn()
        .await;
    const RELOAD: &str = "POST /-/reload HTTP/1.1\r\nHost: exporter\r\nContent-Length: 0\r\n\r\n";
    let (tx, mut answers) = tokio::sync::mpsc::unbounded_channel();
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..3 * CAP {
        let (tx, addr) = (tx.clone(), app.addr);
        flood.spawn(async move {
            loop {
                // Closed to make room (None): the attacker comes back.
                if let Some((answer, _)) = raw_exchange(addr, RELOAD).await {
                    let _ = tx.send(answer);
                }
            }
        });
    }
    for round in 0..5 {
        let answer = loop {
            let answer = tokio::time::timeout(Duration::from_secs(30), answers.recv())
                .await
                .expect("reload requests beyond the waiting ones are answered at once")
                .unwrap();
            if answer.starts_with("http/1.1 503") {
                break answer;
            }
            assert!(answer.starts_with("http/1.1 200"), "{answer}");
        };
        assert!(
            answer.ends_with("\r\n\r\na reload is already in progress; try again\n")
                && answer.contains("\r\nretry-after: 1\r\n"),
            "{answer}"
        );
        let scrape =
            raw_exchange(app.addr, "GET /metrics HTTP/1.1\r\nHost: exporter\r\n\r\n").await;
        assert!(
            scrape
                .as_ref()
                .is_some_and(|(a, _)| a.starts_with("http/1.1 200")),
            "round {round}: {scrape:?}"
        );
    }
    flood.abort_all();
    app.stop().await;
}
