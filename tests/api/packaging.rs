//! What ships beside the binary: the dashboard, the Dockerfile, docker-compose and the
//! Kubernetes manifests must parse and agree with the exporter's defaults and with each other.

use std::path::Path;

use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use sfb_exporter::DEFAULT_PORT;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub(crate) fn yaml(path: &str) -> Yaml {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub(crate) fn at<'a>(value: &'a Yaml, keys: &[&str]) -> &'a Yaml {
    keys.iter().fold(value, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[*k],
    })
}

fn text<'a>(value: &'a Yaml, keys: &[&str]) -> &'a str {
    at(value, keys)
        .as_str()
        .unwrap_or_else(|| panic!("{keys:?} is not a string"))
}

/// Metric names the exporter exposes (from the exposition of a healthy state) or backfill writes.
fn exposed_metrics() -> Vec<String> {
    use sfb_exporter::{Accepted, Attempt, State};
    let mut state = State::new("t", [sfb_exporter::Period::D7]);
    let d7 = state.periods.values_mut().next().unwrap();
    let report = sfb_exporter::parse_report(
        crate::helpers::ONE_DAY.as_bytes(),
        time::macros::date!(2024 - 03 - 06),
    )
    .unwrap();
    d7.accepted = Some(Accepted::new(&report, None));
    d7.last_attempt = Some(Attempt::Succeeded);
    d7.last_success = Some(std::time::SystemTime::now());
    d7.last_duration = Some(std::time::Duration::from_secs(1));
    let token = (sfb_exporter::Stage::Token, Some(200));
    state.graph_requests.insert(token, 1);
    let body = sfb_exporter::render_metrics(&state, &sfb_exporter::BuildInfo::CURRENT);
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        // Not exposed, but written by backfill for the history panels.
        .chain([sfb_exporter::BACKFILL_METRIC.to_string()])
        .collect()
}

#[test]
fn dashboard_is_importable_and_uses_only_exposed_metrics() {
    let dashboard: Json = serde_json::from_str(&read("dashboards/sfb-exporter.json")).unwrap();
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let names: Vec<&str> = variables
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["datasource", "tenant", "period"]);
    assert_eq!(variables[0]["type"], "datasource");
    assert_eq!(variables[0]["query"], "prometheus");

    let metrics = exposed_metrics();
    let mut stack: Vec<&Json> = dashboard["panels"].as_array().unwrap().iter().collect();
    let mut panels = 0;
    while let Some(panel) = stack.pop() {
        stack.extend(panel["panels"].as_array().into_iter().flatten());
        if panel["type"] == "row" {
            continue;
        }
        panels += 1;
        let title = panel["title"].as_str().unwrap();
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap();
            let used: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("sfb_"))
                .collect();
            assert!(!used.is_empty(), "{title}: {expr}");
            for name in used {
                assert!(
                    metrics.iter().any(|m| m == name),
                    "{title}: {name} is not exposed"
                );
            }
            // Seconds are shown as durations.
            if expr.contains("_seconds") && !expr.contains("_total") {
                let unit = panel["fieldConfig"]["defaults"]["unit"]
                    .as_str()
                    .unwrap_or("");
                assert!(
                    ["s", "dtdurations"].contains(&unit),
                    "{title}: unit {unit:?}"
                );
            }
        }
    }
    assert!(panels >= 8, "{panels} panels");
}

#[test]
fn dockerfile_exposes_the_default_port_as_a_numeric_non_root_user() {
    let dockerfile = read("Dockerfile");
    let line = |prefix: &str| {
        dockerfile
            .lines()
            .rev()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}"))
            .trim_start_matches(prefix)
            .trim()
            .to_string()
    };
    assert_eq!(line("EXPOSE"), DEFAULT_PORT.to_string());
    let user = line("USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    assert_ne!(uid, 0);
    assert!(
        dockerfile.contains("AS build") && line("FROM").starts_with("gcr.io/distroless/static")
    );
    assert!(
        !dockerfile.to_lowercase().contains("secret"),
        "no secrets in the image"
    );
}

#[test]
fn docker_compose_mounts_existing_files_and_scrapes_the_default_port() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = &compose["services"];
    let named = at(&compose, &["volumes"]).as_mapping().unwrap();
    for service in [
        "sfb-exporter",
        "prometheus",
        "grafana",
        "backfill",
        "blocks",
    ] {
        for volume in at(services, &[service, "volumes"])
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if !source.contains('/') {
                assert!(named.contains_key(source), "{service}: no volume {source}");
                continue;
            }
            let path = Path::new(ROOT).join("deploy").join(source);
            assert!(path.exists(), "{service} mounts missing {}", path.display());
        }
    }
    assert_eq!(
        text(services, &["sfb-exporter", "ports", "0"]),
        format!("{DEFAULT_PORT}:{DEFAULT_PORT}")
    );

    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let job = at(&prometheus, &["scrape_configs", "0"]);
    assert_eq!(
        text(job, &["job_name"]),
        "sfb-exporter",
        "the alert rules expect this job"
    );
    assert_eq!(
        text(job, &["static_configs", "0", "targets", "0"]),
        format!("sfb-exporter:{DEFAULT_PORT}")
    );
    // The rule file Prometheus loads is the one compose mounts.
    let rules = text(&prometheus, &["rule_files", "0"]);
    let mounts: Vec<&str> = at(services, &["prometheus", "volumes"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        mounts.iter().any(|m| m.contains(&format!(":{rules}"))),
        "{rules} not mounted: {mounts:?}"
    );

    let provider = yaml("deploy/grafana/provisioning/dashboards/sfb-exporter.yml");
    let dir = text(&provider, &["providers", "0", "options", "path"]);
    let grafana_mounts = at(services, &["grafana", "volumes"]).as_sequence().unwrap();
    assert!(grafana_mounts
        .iter()
        .any(|m| m.as_str().unwrap().contains(&format!(":{dir}/"))));
}

#[test]
fn kubernetes_manifests_agree_with_the_exporter_and_each_other() {
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let pod = at(&deployment, &["spec", "template", "spec"]);
    let container = at(pod, &["containers", "0"]);
    assert_eq!(
        at(container, &["ports", "0", "containerPort"]).as_u64(),
        Some(u64::from(DEFAULT_PORT))
    );
    let port_name = text(container, &["ports", "0", "name"]);
    assert_eq!(
        text(container, &["livenessProbe", "httpGet", "path"]),
        "/healthz"
    );
    assert_eq!(
        text(container, &["readinessProbe", "httpGet", "path"]),
        "/readyz"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(text(container, &[probe, "httpGet", "port"]), port_name);
    }
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );

    // The secret file the exporter reads is the mounted Secret's key.
    let secret = yaml("deploy/kubernetes/secret.yaml");
    let secret_name = text(&secret, &["metadata", "name"]);
    let key = at(&secret, &["stringData"])
        .as_mapping()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    let volume = at(pod, &["volumes", "0"]);
    assert_eq!(text(volume, &["secret", "secretName"]), secret_name);
    let mount = at(container, &["volumeMounts", "0"]);
    assert_eq!(text(mount, &["name"]), text(volume, &["name"]));
    let expected = format!(
        "--azure.client-secret-file={}/{key}",
        text(mount, &["mountPath"])
    );
    let args: Vec<&str> = strings(container, &["args"]);
    assert!(
        args.contains(&expected.as_str()),
        "{args:?} lacks {expected}"
    );
    let env: Vec<&str> = at(container, &["env"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| text(e, &["name"]))
        .collect();
    assert_eq!(env, ["AZURE_TENANT_ID", "AZURE_CLIENT_ID"]);

    let service = yaml("deploy/kubernetes/service.yaml");
    assert_eq!(
        text(&service, &["metadata", "name"]),
        "sfb-exporter",
        "the job name the alerts expect"
    );
    assert_eq!(
        at(&service, &["spec", "ports", "0", "port"]).as_u64(),
        Some(u64::from(DEFAULT_PORT))
    );
    assert_eq!(
        text(&service, &["spec", "ports", "0", "targetPort"]),
        port_name
    );
    let service_port = text(&service, &["spec", "ports", "0", "name"]);

    let monitor = yaml("deploy/kubernetes/servicemonitor.yaml");
    assert_eq!(
        text(&monitor, &["spec", "endpoints", "0", "port"]),
        service_port
    );
    assert_eq!(
        text(&monitor, &["spec", "endpoints", "0", "path"]),
        "/metrics"
    );
    let labels = at(&deployment, &["spec", "template", "metadata", "labels"]);
    assert_eq!(
        at(&monitor, &["spec", "selector", "matchLabels"]),
        at(&service, &["metadata", "labels"])
    );
    assert_eq!(at(&service, &["spec", "selector"]), labels);

    let rule = yaml("deploy/kubernetes/prometheusrule.yaml");
    let alerts = yaml("dashboards/sfb-exporter-alerts.yml");
    assert_eq!(
        at(&rule, &["spec", "groups"]),
        at(&alerts, &["groups"]),
        "PrometheusRule drifted from the rules file"
    );

    let kustomization = yaml("deploy/kubernetes/kustomization.yaml");
    for resource in at(&kustomization, &["resources"]).as_sequence().unwrap() {
        let path = Path::new(ROOT)
            .join("deploy/kubernetes")
            .join(resource.as_str().unwrap());
        assert!(path.exists(), "{}", path.display());
    }
}

/// The value at a JSON-pointer-like path of a patch operation (`~1` is `/`), if present.
fn at_pointer<'a>(value: &'a Yaml, pointer: &str) -> Option<&'a Yaml> {
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|k| k.replace("~1", "/"))
        .try_fold(value, |v, k| match k.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(k.as_str()),
        })
}

#[test]
fn kubernetes_workload_identity_variant_patches_the_base_and_has_no_secret() {
    use clap::Parser;
    let dir = "deploy/kubernetes-workload-identity";
    let kustomization = yaml(&format!("{dir}/kustomization.yaml"));
    let resources: Vec<&str> = at(&kustomization, &["resources"])
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(resources, ["../kubernetes", "serviceaccount.yaml"]);

    let account = yaml(&format!("{dir}/serviceaccount.yaml"));
    assert_eq!(text(&account, &["kind"]), "ServiceAccount");
    let client_id = text(
        &account,
        &[
            "metadata",
            "annotations",
            "azure.workload.identity/client-id",
        ],
    );
    assert_eq!(client_id.len(), 36, "a client ID placeholder");

    let patch = at(&kustomization, &["patches", "0"]);
    assert_eq!(text(patch, &["target", "kind"]), "Deployment");
    let ops: Yaml = serde_norway::from_str(text(patch, &["patch"])).unwrap();
    let ops = ops.as_sequence().unwrap();
    let op = |kind: &str, pointer: &str| {
        ops.iter()
            .find(|o| text(o, &["op"]) == kind && text(o, &["path"]) == pointer)
            .unwrap_or_else(|| panic!("no {kind} of {pointer}"))
    };
    let label = op(
        "add",
        "/spec/template/metadata/labels/azure.workload.identity~1use",
    );
    assert_eq!(
        text(label, &["value"]),
        "true",
        "the label value is the string \"true\""
    );
    let account_name = op("add", "/spec/template/spec/serviceAccountName");
    assert_eq!(
        text(account_name, &["value"]),
        text(&account, &["metadata", "name"])
    );
    let args = op("replace", "/spec/template/spec/containers/0/args");
    let args: Vec<&str> = strings(args, &["value"]);
    let parsed = sfb_exporter::Args::try_parse_from(
        std::iter::once("sfb-exporter").chain(args.iter().copied()),
    )
    .unwrap();
    assert_eq!(
        parsed.credential,
        sfb_exporter::CredentialKind::WorkloadIdentity
    );
    assert!(parsed.client_secret_file.is_none());

    // Every removal names something the base has (kustomize fails otherwise), and the secret
    // volume is among them.
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let removed: Vec<&str> = ops
        .iter()
        .filter(|o| text(o, &["op"]) == "remove")
        .map(|o| text(o, &["path"]))
        .collect();
    for pointer in &removed {
        assert!(
            at_pointer(&deployment, pointer).is_some(),
            "{pointer} not in the base"
        );
    }
    assert!(removed.contains(&"/spec/template/spec/volumes"));
    assert!(removed.contains(&"/spec/template/spec/containers/0/env"));
    for file in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
        let body = std::fs::read_to_string(file.unwrap().path()).unwrap();
        assert!(!body.contains("kind: Secret"));
    }
}

/// The value of `--name=value` among `args`.
fn flag<'a>(args: &[&'a str], name: &str) -> &'a str {
    let prefix = format!("{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {args:?}"))
}

/// The list of strings at `keys`, such as a container's args.
pub(crate) fn strings<'a>(value: &'a Yaml, keys: &[&str]) -> Vec<&'a str> {
    at(value, keys)
        .as_sequence()
        .unwrap_or_else(|| panic!("{keys:?} is not a list"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// `args` (without the program name) as the binary parses them: the backfill options.
fn backfill_args(args: &[&str]) -> (sfb_exporter::Args, sfb_exporter::BackfillArgs) {
    use clap::Parser;
    let mut parsed = sfb_exporter::Args::try_parse_from(
        std::iter::once("sfb-exporter").chain(args.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    match parsed.command.take() {
        Some(sfb_exporter::Command::Backfill(options)) => (parsed, options),
        None => panic!("{args:?} is not a backfill"),
    }
}

/// A container's mount of the volume `name`.
fn mount_of<'a>(container: &'a Yaml, name: &str) -> &'a Yaml {
    at(container, &["volumeMounts"])
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| text(m, &["name"]) == name)
        .unwrap_or_else(|| panic!("volume {name} not mounted"))
}

/// Prometheus' retention, in days, from a duration such as 400d or 2y.
fn retention_days(args: &[&str]) -> f64 {
    let value = flag(args, "--storage.tsdb.retention.time");
    humantime::parse_duration(value).unwrap().as_secs_f64() / 86400.0
}

#[test]
fn docker_compose_backfills_180_days_before_prometheus_starts() {
    let compose = yaml("deploy/docker-compose.yml");
    let services = &compose["services"];
    let completed = |service: &str, on: &str| {
        assert_eq!(
            text(services, &[service, "depends_on", on, "condition"]),
            "service_completed_successfully",
            "{service} must wait for {on}"
        );
    };
    let mounts = |service: &str| strings(services, &[service, "volumes"]);
    let target_of = |service: &str, volume: &str| -> String {
        mounts(service)
            .iter()
            .find_map(|m| m.strip_prefix(&format!("{volume}:")))
            .unwrap_or_else(|| panic!("{service} does not mount {volume}"))
            .trim_end_matches(":ro")
            .to_string()
    };

    // backfill: the demo's D180 report, into a file on a volume it shares with blocks.
    let (args, options) = backfill_args(&strings(services, &["backfill", "command"]));
    assert!(args.demo);
    assert_eq!(options.period, sfb_exporter::Period::D180);
    let output = options.output.unwrap();
    let shared = target_of("backfill", "backfill");
    assert_eq!(output.parent().unwrap(), Path::new(&shared));
    assert_eq!(
        text(services, &["backfill", "image"]),
        text(services, &["sfb-exporter", "image"])
    );

    // blocks: promtool from that file into Prometheus' data volume, once backfill is done.
    assert_eq!(
        strings(services, &["blocks", "entrypoint"]),
        ["/bin/promtool"]
    );
    let command = strings(services, &["blocks", "command"]);
    assert_eq!(command[..3], ["tsdb", "create-blocks-from", "openmetrics"]);
    assert_eq!(Path::new(command[3]), output);
    assert_eq!(target_of("blocks", "backfill"), shared);
    assert_eq!(command[4], target_of("blocks", "prometheus-data"));
    assert_eq!(
        text(services, &["blocks", "image"]),
        text(services, &["prometheus", "image"])
    );
    completed("blocks", "backfill");

    // prometheus: started after blocks, on that volume, keeping more than 180 days.
    completed("prometheus", "blocks");
    let prometheus = strings(services, &["prometheus", "command"]);
    assert_eq!(
        flag(&prometheus, "--storage.tsdb.path"),
        target_of("prometheus", "prometheus-data")
    );
    let days = retention_days(&prometheus);
    assert!(days > 180.0, "retention of {days} days deletes the history");
}

#[test]
fn kubernetes_backfill_cronjob_feeds_prometheus_daily() {
    let cronjob = yaml("deploy/kubernetes/backfill-cronjob.yaml");
    assert_eq!(text(&cronjob, &["kind"]), "CronJob");
    let schedule: Vec<&str> = text(&cronjob, &["spec", "schedule"]).split(' ').collect();
    assert_eq!(schedule.len(), 5, "{schedule:?}");
    assert_eq!(schedule[2..], ["*", "*", "*"], "daily");
    assert_eq!(text(&cronjob, &["spec", "concurrencyPolicy"]), "Forbid");
    let pod = at(
        &cronjob,
        &["spec", "jobTemplate", "spec", "template", "spec"],
    );
    assert_eq!(
        at(pod, &["securityContext", "runAsNonRoot"]).as_bool(),
        Some(true)
    );
    let volume = |name: &str| {
        at(pod, &["volumes"])
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| text(v, &["name"]) == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };

    // The backfill runs first, as the Deployment's exporter: same image, identity and secret.
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let exporter = at(
        &deployment,
        &["spec", "template", "spec", "containers", "0"],
    );
    let backfill = at(pod, &["initContainers", "0"]);
    assert_eq!(text(backfill, &["image"]), text(exporter, &["image"]));
    assert_eq!(at(backfill, &["env"]), at(exporter, &["env"]));
    let args = strings(backfill, &["args"]);
    let (parsed, options) = backfill_args(&args);
    assert!(!parsed.demo);
    let deployment_args = strings(exporter, &["args"]);
    assert_eq!(
        flag(&args, "--azure.client-secret-file"),
        flag(&deployment_args, "--azure.client-secret-file")
    );
    let secret_mount = mount_of(backfill, "azure-secret");
    assert_eq!(
        text(secret_mount, &["mountPath"]),
        text(mount_of(exporter, "azure-secret"), &["mountPath"])
    );
    assert_eq!(
        text(volume("azure-secret"), &["secret", "secretName"]),
        "sfb-exporter-azure"
    );

    // Then promtool turns its output into blocks in Prometheus' data volume.
    let output = options.output.unwrap();
    let promtool = at(pod, &["containers", "0"]);
    assert_eq!(strings(promtool, &["command"]), ["/bin/promtool"]);
    let promtool_args = strings(promtool, &["args"]);
    assert_eq!(
        promtool_args[..3],
        ["tsdb", "create-blocks-from", "openmetrics"]
    );
    assert_eq!(Path::new(promtool_args[3]), output);
    let staged = text(mount_of(backfill, "backfill"), &["mountPath"]);
    assert_eq!(output.parent().unwrap(), Path::new(staged));
    assert_eq!(text(mount_of(promtool, "backfill"), &["mountPath"]), staged);
    assert!(at(volume("backfill"), &["emptyDir"]).is_mapping());
    assert_eq!(
        text(mount_of(promtool, "prometheus-data"), &["mountPath"]),
        promtool_args[4]
    );
    assert!(at(
        volume("prometheus-data"),
        &["persistentVolumeClaim", "claimName"]
    )
    .is_string());

    // Not applied with the base: it needs the claim of the user's own Prometheus.
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    assert!(!kustomization.contains("backfill-cronjob.yaml"));
}
