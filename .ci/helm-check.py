#!/usr/bin/env python3
"""The Helm chart deploy/helm/sfb-exporter, checked offline, without a cluster or a helm binary.

Helm's own Go SDK (PyPI helm-python-sdk, a library build of it) lints the chart and renders it
as `helm template` does (an install with --dry-run=client); PyPI kubernetes-validate checks
every rendered object, strictly (an unknown field fails), against the oldest and the newest
Kubernetes version it ships schemas for. ServiceMonitor and PrometheusRule have no schema
there: they are checked against the fields of the Prometheus Operator's CRDs below.

For every ci/*-values.yaml: lint, render, validate, and check what that shape promises. Then:
a mistyped key fails lint and render, the PrometheusRule's rules are those of
dashboards/sfb-exporter-alerts.yml, the dashboards are dashboards/*.json, the Secrets the chart
creates are checksummed onto the pod template, and appVersion is Cargo.toml's version. With
SFB_EXPORTER_BIN naming a built exporter, the exporter itself takes what each shape renders.

    python3 -m pip install helm-python-sdk kubernetes-validate
    SFB_EXPORTER_BIN=target/debug/sfb-exporter python3 .ci/helm-check.py
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/sfb-exporter"
NAMESPACE = "monitoring"
RELEASE = "sfb-exporter"

# The values files outside checks rely on, by name (the issue's contract).
SHAPES = [
    "secret",
    "certificate",
    "workload-identity",
    "managed-identity",
    "tenants",
    "sharded",
    "webconfig",
    "backfill",
    "reports",
]

KUBE_VERSIONS = [kv.all_versions()[0], kv.all_versions()[-1]]
EXPORTER_UID = 65532

# --- the Prometheus Operator's CRDs, as far as the chart uses them ------------------------------
# Field names, types and required fields of monitoring.coreos.com/v1 ServiceMonitor and
# PrometheusRule (their openAPIV3Schema); unknown fields are refused, as kubernetes-validate's
# strict schemas refuse them for built-in kinds.

DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
    r"(([0-9]+)ms)?)$",
}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
KEY_SELECTOR = {
    "type": "object",
    "required": ["key"],
    "additionalProperties": False,
    "properties": {
        "key": {"type": "string"},
        "name": {"type": "string"},
        "optional": {"type": "boolean"},
    },
}
SECRET_OR_CONFIGMAP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"secret": KEY_SELECTOR, "configMap": KEY_SELECTOR},
}
TLS_VERSION = {"type": "string", "enum": ["TLS10", "TLS11", "TLS12", "TLS13"]}
RELABEL_ACTIONS = [
    "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
    "lowercase", "uppercase", "keepequal", "dropequal",
]
RELABEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "action": {
            "type": "string",
            "enum": RELABEL_ACTIONS + [a.capitalize() for a in RELABEL_ACTIONS]
            + ["HashMod", "LabelMap", "LabelDrop", "LabelKeep", "KeepEqual", "DropEqual"],
        },
        "modulus": {"type": "integer"},
        "regex": {"type": "string"},
        "replacement": {"type": "string"},
        "separator": {"type": "string"},
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "targetLabel": {"type": "string"},
    },
}
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
}
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "required": ["endpoints", "selector"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": STRING_MAP,
                        "matchExpressions": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string"},
                            "scheme": {"type": "string", "enum": ["http", "https"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "tlsConfig": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "ca": SECRET_OR_CONFIGMAP,
                                    "caFile": {"type": "string"},
                                    "cert": SECRET_OR_CONFIGMAP,
                                    "certFile": {"type": "string"},
                                    "insecureSkipVerify": {"type": "boolean"},
                                    "keyFile": {"type": "string"},
                                    "keySecret": KEY_SELECTOR,
                                    "maxVersion": TLS_VERSION,
                                    "minVersion": TLS_VERSION,
                                    "serverName": {"type": "string"},
                                },
                            },
                            "basicAuth": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"username": KEY_SELECTOR, "password": KEY_SELECTOR},
                            },
                            "relabelings": {"type": "array", "items": RELABEL},
                            "metricRelabelings": {"type": "array", "items": RELABEL},
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": OBJECT_META,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "query_offset": DURATION,
                            "labels": STRING_MAP,
                            "limit": {"type": "integer"},
                            "partial_response_strategy": {"type": "string"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    # Only one of record and alert.
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "additionalProperties": False,
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["integer", "string"]},
                                        "for": DURATION,
                                        "keep_firing_for": {**DURATION, "minLength": 1},
                                        "labels": STRING_MAP,
                                        "annotations": STRING_MAP,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
CRDS = {"ServiceMonitor": SERVICE_MONITOR, "PrometheusRule": PROMETHEUS_RULE}


# --- rendering ---------------------------------------------------------------------------------


def values_of(shape: str) -> dict:
    return yaml.safe_load((CHART / "ci" / f"{shape}-values.yaml").read_text()) or {}


@contextlib.contextmanager
def symlink_notes_dropped():
    """Helm logs to stderr, at info, every symbolic link it follows, and dashboards/ is one:
    keep the rest of what it says."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if "found symbolic link in path" not in line:
                    print(line, file=sys.stderr)


def lint_errors(values: dict | None, kube_version: str) -> list[str]:
    """helm lint --strict: warnings count as errors; info (e.g. "icon is recommended") not."""
    with symlink_notes_dropped():
        report = helm.lint(
            CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}"
        )
    found = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    return found + [e for e in report["errors"] if e not in found]


_config = None


def render(values: dict | None, chart: Path = CHART) -> list[dict]:
    """helm template: an install with --dry-run=client, against no cluster at all."""
    global _config
    if _config is None:
        _config = helm.Config(
            namespace=NAMESPACE,
            storage_driver="memory",
            # No cluster, no context: nothing to contact.
            kubeconfig_content="apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\n",
        )
    with symlink_notes_dropped():
        release = _config.install(
            str(chart), RELEASE, values or {}, namespace=NAMESPACE, dry_run="client"
        )
    return [d for d in yaml.safe_load_all(release["manifest"]) if d]


def with_values(shape: str, **changes) -> dict:
    """The shape's values with dotted keys set, e.g. with_values("secret", **{"a.b": 1})."""
    values = copy.deepcopy(values_of(shape))
    for dotted, value in changes.items():
        node = values
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return values


# --- what the objects say ----------------------------------------------------------------------


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workload(objects: list[dict]) -> dict:
    found = of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet")
    assert len(found) == 1, f"expected one Deployment or StatefulSet, found {len(found)}"
    return found[0]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(what, pod spec) of every pod template: workloads and CronJobs."""
    specs = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            specs.append((o["kind"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "CronJob":
            specs.append((o["kind"], o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return specs


def exporter_container(objects: list[dict]) -> dict:
    containers = workload(objects)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "sfb-exporter")


def flag(args: list[str], name: str) -> str | None:
    prefix = f"{name}="
    values = [a[len(prefix):] for a in args if a.startswith(prefix)]
    assert len(values) <= 1, f"{name} given {len(values)} times: {args}"
    return values[0] if values else None


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def secret_file(pod: dict, container: dict, path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path`, which must come from a mounted Secret."""
    for mount in container.get("volumeMounts", []):
        base = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(base):
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert "secret" in volume, f"{path} is mounted from {volume}, not a Secret"
            assert "subPath" not in mount, f"{path}: a subPath mount is never updated"
            return volume["secret"]["secretName"], path[len(base):]
    raise AssertionError(f"{path} is not in any volume mounted into {container['name']}")


def secret_data(objects: list[dict], name: str, raw: bool = False) -> dict | None:
    """The decoded data of the Secret the chart renders under `name`, None if it renders none."""
    for o in of_kind(objects, "Secret"):
        if o["metadata"]["name"] == name:
            data = {k: base64.b64decode(v) for k, v in o.get("data", {}).items()}
            return data if raw else {k: v.decode() for k, v in data.items()}
    return None


# The exporter's flags, from its source: a rendered flag the exporter does not have would stop it.
CONFIG_RS = "\n".join(p.read_text() for p in sorted((ROOT / "src/config").glob("*.rs")))


def _struct(name: str) -> str:
    start = CONFIG_RS.index(f"pub struct {name} {{")
    return CONFIG_RS[start:CONFIG_RS.index("\n}", start)]


def _flags(struct: str, global_only: bool = False) -> set[str]:
    attrs = re.findall(r"#\[arg\((.*?)\)\]\s*pub (\w+):", struct, re.S)
    found = set()
    for attr, field in attrs:
        if global_only and "global = true" not in attr:
            continue
        named = re.search(r'long = "([^"]+)"', attr)
        if named:
            found.add("--" + named.group(1))
        elif re.search(r"\blong\b", attr):
            found.add("--" + field.replace("_", "-"))
    return found


EXPORTER_FLAGS = _flags(_struct("Args"))
GLOBAL_FLAGS = _flags(_struct("Args"), global_only=True)
BACKFILL_FLAGS = _flags(_struct("BackfillArgs"))
# Issue 17 adds --reports; until the exporter has it, the chart renders it only when asked to.
PENDING_FLAGS = {"--reports"} - EXPORTER_FLAGS


def check_flags(args: list[str], known: set[str], what: str) -> None:
    for arg in args:
        name = arg.split("=", 1)[0]
        assert name.startswith("--"), f"{what}: {arg!r} is not a --flag"
        assert name in known | PENDING_FLAGS, f"{what}: the exporter has no flag {name}"


# --- checks that hold for every shape ----------------------------------------------------------


def check_objects_validate(objects: list[dict]) -> None:
    for o in objects:
        what = f"{o['kind']} {o['metadata']['name']}"
        if o["kind"] in CRDS:
            try:
                jsonschema.validate(o, CRDS[o["kind"]])
            except jsonschema.ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path)
                raise AssertionError(f"{what} against its CRD: {path}: {e.message}") from None
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                message = f"{what} on Kubernetes {version}: {path}: {e.message}"
                raise AssertionError(message) from None
            except kv.SchemaNotFoundError as e:
                raise AssertionError(f"{what}: {e.message}") from None


def check_pods_are_locked_down(objects: list[dict]) -> None:
    exporter_image = exporter_container(objects)["image"]
    for what, pod in pod_specs(objects):
        context = pod.get("securityContext", {})
        assert context.get("runAsNonRoot") is True, f"{what}: runAsNonRoot"
        assert context.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{what}: seccomp"
        assert pod.get("automountServiceAccountToken") is False, f"{what}: service account token"
        for c in pod.get("initContainers", []) + pod["containers"]:
            sc = c.get("securityContext", {})
            name = f"{what} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation"
            assert sc.get("readOnlyRootFilesystem") is True, f"{name}: read-only root filesystem"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities"
            assert not sc.get("privileged"), f"{name}: privileged"
            uid = sc.get("runAsUser", context.get("runAsUser"))
            assert isinstance(uid, int) and uid > 0, f"{name}: runs as uid {uid}"
            if c["image"] == exporter_image:
                assert uid == EXPORTER_UID, f"{name}: runs as {uid}, not {EXPORTER_UID}"
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resources.get(kind, {}).get(resource), f"{name}: no {kind}.{resource}"


def check_exporter_serves(objects: list[dict]) -> None:
    kind_of = workload(objects)
    container = exporter_container(objects)
    args = container["args"]
    check_flags(args, EXPORTER_FLAGS, "exporter")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert list(ports) == ["metrics"], ports
    assert flag(args, "--web.listen-address") == f":{ports['metrics']}"
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "metrics"), f"{probe}: {get}"

    service = one(objects, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod_labels = kind_of["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items(), "the Service does not select the pods"
    assert kind_of["spec"]["selector"]["matchLabels"] == selector
    for cronjob in of_kind(objects, "CronJob"):
        labels = cronjob["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert not selector.items() <= labels.items(), "the Service selects the backfill's pods"

    # No secret in the environment: Secrets are mounted as files.
    for name, env in env_of(container).items():
        assert "valueFrom" not in env or "secretKeyRef" not in env["valueFrom"], name
        assert name not in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD"), name

    # A PodDisruptionBudget exactly when there is more than one replica.
    replicas = kind_of["spec"]["replicas"]
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert len(budgets) == (1 if replicas > 1 else 0), f"{replicas} replicas, {len(budgets)} PDBs"
    for pdb in budgets:
        assert pdb["spec"]["selector"]["matchLabels"] == selector

    for monitor in of_kind(objects, "ServiceMonitor"):
        selected = monitor["spec"]["selector"]["matchLabels"]
        assert selected.items() <= service["metadata"]["labels"].items()
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["port"] == "metrics"
        assert endpoint["path"] == flag(args, "--web.telemetry-path")
        # The alert rules select job="sfb-exporter": the job label is the Service's label.
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "sfb-exporter"

    if of_kind(objects, "NetworkPolicy"):
        policy = one(objects, "NetworkPolicy")
        assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert policy["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]
        egress = [p for rule in policy["spec"]["egress"] for p in rule["ports"]]
        assert {"port": 443, "protocol": "TCP"} in egress
        assert {"port": 53, "protocol": "UDP"} in egress


# --- the shapes --------------------------------------------------------------------------------


def shape_secret(objects, values):
    pod = workload(objects)["spec"]["template"]["spec"]
    container = exporter_container(objects)
    args = container["args"]
    assert flag(args, "--azure.credential") == "secret"
    path = flag(args, "--azure.client-secret-file")
    expected = values["azure"]["clientSecret"]
    assert secret_file(pod, container, path) == (expected["existingSecret"], expected["key"])
    existing = expected["existingSecret"]
    assert secret_data(objects, existing) is None, f"the existing Secret {existing} is rendered"
    env = env_of(container)
    assert env["AZURE_TENANT_ID"]["value"] == values["azure"]["tenantId"]
    assert env["AZURE_CLIENT_ID"]["value"] == values["azure"]["clientId"]
    # The optional objects this shape turns on.
    for kind in ("ServiceMonitor", "PrometheusRule", "NetworkPolicy"):
        one(objects, kind)
    assert of_kind(objects, "ConfigMap"), "no dashboards"


def shape_certificate(objects, values):
    pod = workload(objects)["spec"]["template"]["spec"]
    container = exporter_container(objects)
    args, env = container["args"], env_of(container)
    certificate = values["azure"]["certificate"]
    assert flag(args, "--azure.credential") == "certificate"
    assert flag(args, "--azure.client-secret-file") is None
    path = env["AZURE_CLIENT_CERTIFICATE_PATH"]["value"]
    assert secret_file(pod, container, path) == (certificate["existingSecret"], certificate["key"])
    password = flag(args, "--azure.client-certificate-password-file")
    assert secret_file(pod, container, password) == (
        certificate["existingSecret"],
        certificate["passwordKey"],
    )
    assert env["AZURE_CLIENT_SEND_CERTIFICATE_CHAIN"]["value"] == "true"
    assert not of_kind(objects, "Secret")


def no_secret_at_all(objects):
    assert not of_kind(objects, "Secret"), "a Secret is rendered"
    for what, pod in pod_specs(objects):
        for volume in pod.get("volumes", []):
            assert "secret" not in volume, f"{what} mounts {volume}"


def shape_workload_identity(objects, values):
    no_secret_at_all(objects)
    template = workload(objects)["spec"]["template"]
    container = exporter_container(objects)
    assert flag(container["args"], "--azure.credential") == "workload-identity"
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = one(objects, "ServiceAccount")
    assert template["spec"]["serviceAccountName"] == account["metadata"]["name"]
    annotations = account["metadata"]["annotations"]
    assert annotations["azure.workload.identity/client-id"] == values["azure"]["clientId"]
    # The webhook sets the identity's variables; the chart's would take precedence over them.
    assert not [n for n in env_of(container) if n.startswith("AZURE_")], env_of(container)


def shape_managed_identity(objects, values):
    no_secret_at_all(objects)
    container = exporter_container(objects)
    assert flag(container["args"], "--azure.credential") == "managed-identity"
    env = env_of(container)
    assert env["AZURE_TENANT_ID"]["value"] == values["azure"]["tenantId"]
    assert env["AZURE_CLIENT_ID"]["value"] == values["azure"]["clientId"]
    egress = one(objects, "NetworkPolicy")["spec"]["egress"]
    assert {
        "to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}],
        "ports": [{"port": 80, "protocol": "TCP"}],
    } in egress, "the metadata service is not reachable"


def uses_config_file(objects, values):
    pod = workload(objects)["spec"]["template"]["spec"]
    container = exporter_container(objects)
    args = container["args"]
    path = flag(args, "--config.file")
    expected = values["configFile"]
    assert secret_file(pod, container, path) == (expected["existingSecret"], expected["key"])
    assert flag(args, "--azure.credential") is None
    assert not [n for n in env_of(container) if n.startswith("AZURE_")]
    assert [v["name"] for v in pod["volumes"]] == ["config"], pod["volumes"]
    assert "--web.enable-lifecycle" in args


def shape_tenants(objects, values):
    uses_config_file(objects, values)
    assert workload(objects)["kind"] == "Deployment"
    assert flag(exporter_container(objects)["args"], "--shard.count") is None


def shape_sharded(objects, values):
    uses_config_file(objects, values)
    shards = values["sharding"]["shards"]
    set_ = workload(objects)
    assert set_["kind"] == "StatefulSet"
    assert set_["spec"]["replicas"] == shards
    container = exporter_container(objects)
    args = container["args"]
    assert flag(args, "--shard.count") == str(shards)
    assert flag(args, "--shard.index") == "$(SHARD_INDEX)"
    field = env_of(container)["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['apps.kubernetes.io/pod-index']"
    service = one(objects, "Service")
    assert service["spec"]["clusterIP"] == "None", "the governing Service must be headless"
    assert set_["spec"]["serviceName"] == service["metadata"]["name"]
    one(objects, "PodDisruptionBudget")


def shape_webconfig(objects, values):
    pod = workload(objects)["spec"]["template"]["spec"]
    container = exporter_container(objects)
    web = values["webConfig"]
    path = flag(container["args"], "--web.config.file")
    assert secret_file(pod, container, path) == (web["existingSecret"], web["key"])
    auth = web["probeAuth"]
    login = "Basic " + base64.b64encode(f"{auth['username']}:{auth['password']}".encode()).decode()
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["scheme"] == "HTTPS", f"{probe} over {get.get('scheme', 'HTTP')}"
        assert get["httpHeaders"] == [{"name": "Authorization", "value": login}], probe
    endpoint = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == values["serviceMonitor"]["tlsConfig"]
    basic = values["serviceMonitor"]["basicAuth"]
    assert endpoint["basicAuth"] == {
        "username": {"name": basic["existingSecret"], "key": basic["usernameKey"]},
        "password": {"name": basic["existingSecret"], "key": basic["passwordKey"]},
    }
    assert not of_kind(objects, "Secret")


def shape_backfill(objects, values):
    cronjob = one(objects, "CronJob")
    backfill = values["backfill"]
    assert cronjob["spec"]["schedule"] == backfill["schedule"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    [promtool] = pod["containers"]
    args = init["args"]
    split = args.index("backfill")
    check_flags(args[:split], GLOBAL_FLAGS, "backfill, before the subcommand")
    check_flags(args[split + 1:], BACKFILL_FLAGS, "backfill")
    # The same identity as the exporter: its global flags, variables and Secrets.
    exporter = exporter_container(objects)
    shared = GLOBAL_FLAGS | PENDING_FLAGS
    assert args[:split] == [a for a in exporter["args"] if a.split("=")[0] in shared]
    assert init["image"] == exporter["image"]
    assert init.get("env") == exporter.get("env")
    path = flag(args, "--azure.client-secret-file")
    assert secret_file(pod, init, path) == secret_file(
        workload(objects)["spec"]["template"]["spec"], exporter, path
    )
    assert flag(args, "--backfill.period") == backfill["period"]
    # promtool turns the file into blocks in Prometheus' volume, as Prometheus' user.
    output = flag(args, "--output")
    assert promtool["command"] == ["/bin/promtool"]
    assert promtool["args"][:4] == ["tsdb", "create-blocks-from", "openmetrics", output]
    mounts = {m["name"]: m for m in promtool["volumeMounts"]}
    assert mounts["prometheus-data"]["mountPath"] == promtool["args"][4]
    assert mounts["prometheus-data"]["subPath"] == backfill["prometheus"]["subPath"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["prometheus-data"]["persistentVolumeClaim"]["claimName"]
    assert claim == backfill["prometheus"]["claimName"]
    assert pod["securityContext"]["runAsUser"] == backfill["prometheus"]["runAsUser"]
    staged = {m["name"]: m for m in init["volumeMounts"]}["backfill"]["mountPath"]
    assert output.startswith(staged + "/")
    assert "emptyDir" in volumes["backfill"]


def shape_reports(objects, values):
    expected = ",".join(values["exporter"]["reports"])
    assert flag(exporter_container(objects)["args"], "--reports") == expected


SHAPE_CHECKS = {
    "secret": shape_secret,
    "certificate": shape_certificate,
    "workload-identity": shape_workload_identity,
    "managed-identity": shape_managed_identity,
    "tenants": shape_tenants,
    "sharded": shape_sharded,
    "webconfig": shape_webconfig,
    "backfill": shape_backfill,
    "reports": shape_reports,
}


def check_shape(shape: str) -> None:
    values = values_of(shape)
    for version in KUBE_VERSIONS:
        errors = lint_errors(values, version)
        assert not errors, f"helm lint on Kubernetes {version}: {errors}"
    objects = render(values)
    check_objects_validate(objects)
    check_pods_are_locked_down(objects)
    check_exporter_serves(objects)
    if shape != "reports":
        assert flag(exporter_container(objects)["args"], "--reports") is None
    SHAPE_CHECKS[shape](objects, values)


# --- checks across shapes ----------------------------------------------------------------------


def check_the_values_files_are_the_contract():
    found = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
    assert found == sorted(f"{s}-values.yaml" for s in SHAPES), found


def check_app_version_is_cargo_version():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == cargo, f"appVersion {chart['appVersion']}, Cargo.toml {cargo}"
    assert exporter_container(render(values_of("secret")))["image"] == f"sfb-exporter:{cargo}"


def check_mistyped_keys_fail():
    typos = {
        "top level": ("replicaCont", {"replicaCont": 2}),
        "nested": ("enabeld", {"serviceMonitor": {"enabled": True, "enabeld": True}}),
        "in the web config": (
            "cert_fiel",
            {"webConfig": {"config": {"tls_server_config": {"cert_fiel": "x"}}}},
        ),
        "in a tenant": (
            "client_secert",
            {"configFile": {"tenants": [{"tenant_id": "t", "client_secert": "x"}]}},
        ),
    }
    for where, (misspelled, typo) in typos.items():
        values = {**values_of("secret"), **typo}
        for version in KUBE_VERSIONS:
            errors = lint_errors(values, version)
            assert any(misspelled in e for e in errors), f"{where}: lint passed {misspelled}"
        try:
            render(values)
        except helm.HelmError as e:
            assert misspelled in str(e), f"{where}: {e}"
        else:
            raise AssertionError(f"{where}: {misspelled} rendered")


def check_values_that_cannot_work_fail_with_one_line():
    for values, words in (
        ({}, "azure.tenantId is required"),
        ({"azure": {"tenantId": "t", "clientId": "c"}}, "azure.clientSecret.existingSecret"),
        ({"sharding": {"enabled": True}, "demo": True}, "sharding splits the tenants"),
        (with_values("webconfig", **{"webConfig.probeAuth": None}), "webConfig.probeAuth"),
        (with_values("backfill", **{"backfill.prometheus.claimName": ""}), "claimName is required"),
    ):
        try:
            render(values)
        except helm.HelmError as e:
            assert words in str(e) and "\n" not in str(e).strip(), f"{values}: {e}"
        else:
            raise AssertionError(f"{values} rendered")


def check_demo_needs_no_identity():
    objects = render({"demo": True})
    check_objects_validate(objects)
    args = exporter_container(objects)["args"]
    assert "--demo" in args and flag(args, "--azure.credential") is None
    no_secret_at_all(objects)


def check_rules_are_the_rules_file():
    rules = yaml.safe_load((ROOT / "dashboards/sfb-exporter-alerts.yml").read_text())
    rendered = one(render(values_of("secret")), "PrometheusRule")
    assert rendered["spec"]["groups"] == rules["groups"], "the PrometheusRule drifted from the file"
    # SfbExporterDown's job is the ServiceMonitor's (check_exporter_serves).
    assert 'up{job="sfb-exporter"}' in rules["groups"][0]["rules"][0]["expr"]


def check_dashboards_are_the_dashboard_files():
    files = sorted((ROOT / "dashboards").glob("*.json"))
    maps = of_kind(render(values_of("secret")), "ConfigMap")
    assert len(maps) == len(files), f"{len(files)} dashboards, {len(maps)} ConfigMaps"
    by_key = {key: (m, text) for m in maps for key, text in m["data"].items()}
    for path in files:
        config_map, text = by_key[path.name]
        assert text == path.read_text(), f"{path.name} differs"
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        json.loads(text)


def check_the_packaged_chart_carries_the_files():
    """helm package copies in what dashboards/ links to, less the rules' unit tests."""
    with tempfile.TemporaryDirectory() as tmp:
        with symlink_notes_dropped():
            archive = Path(helm.package(CHART, destination=tmp))
        with tarfile.open(archive) as tar:
            names = {n.split("/", 1)[1] for n in tar.getnames()}
        shipped = {f"dashboards/{p.name}" for p in (ROOT / "dashboards").iterdir()}
        assert {n for n in names if n.startswith("dashboards/")} == {
            n for n in shipped if not n.endswith(".test.yml")
        }, names
        objects = render(values_of("secret"), chart=archive)
        assert one(objects, "PrometheusRule")["spec"]["groups"], "no rules in the package"
        assert of_kind(objects, "ConfigMap"), "no dashboards in the package"


def annotations(objects):
    return workload(objects)["spec"]["template"]["metadata"].get("annotations", {})


def check_created_secrets_are_mounted_and_roll_the_pods():
    """Each Secret the chart creates from values: mounted where the flag points, and its
    checksum on the pod template changes with the value."""
    cases = [
        (
            "azure",
            {"azure.clientSecret.existingSecret": "", "azure.clientSecret.value": "s3cret"},
            "azure.clientSecret.value",
            "other",
            lambda objects: flag(exporter_container(objects)["args"], "--azure.client-secret-file"),
            lambda data: data == {"client-secret": "s3cret"},
        ),
        (
            "azure",
            {
                "azure.credential": "certificate",
                "azure.certificate.value": "-----BEGIN CERTIFICATE-----\n",
                "azure.certificate.password": "pw",
            },
            "azure.certificate.password",
            "other",
            lambda objects: flag(
                exporter_container(objects)["args"], "--azure.client-certificate-password-file"
            ),
            lambda data: data["client-certificate-password"] == "pw",
        ),
        (
            "config-file",
            {
                "configFile.existingSecret": "",
                "configFile.tenants": [
                    {"tenant_id": "00000000-0000-0000-0000-000000000000",
                     "client_id": "c", "client_secret_file": "contoso"}
                ],
                "configFile.files": {"contoso": "s3cret"},
            },
            "configFile.files",
            {"contoso": "other"},
            lambda objects: flag(exporter_container(objects)["args"], "--config.file"),
            lambda data: yaml.safe_load(data["tenants.yml"])["tenants"][0]["client_secret_file"]
            == "contoso" and data["contoso"] == "s3cret",
        ),
        (
            "web-config",
            {
                "webConfig.existingSecret": "",
                "webConfig.tls": False,
                "webConfig.basicAuth": False,
                "webConfig.config": {
                    "tls_server_config": {"cert_file": "server.crt", "key_file": "server.key"},
                    "basic_auth_users": {"kubelet": "$2y$10$x", "prometheus": "$2y$10$y"},
                },
                "webConfig.files": {"server.crt": "crt", "server.key": "key"},
            },
            "webConfig.files",
            {"server.crt": "crt", "server.key": "rotated"},
            lambda objects: flag(exporter_container(objects)["args"], "--web.config.file"),
            lambda data: yaml.safe_load(data["web-config.yml"])["tls_server_config"]["cert_file"]
            in data,
        ),
    ]
    shapes = {"azure": "secret", "config-file": "tenants", "web-config": "webconfig"}
    for name, changes, changed_key, changed_value, path_of, holds in cases:
        values = with_values(shapes[name], **changes)
        objects = render(values)
        check_objects_validate(objects)
        check_pods_are_locked_down(objects)
        pod = workload(objects)["spec"]["template"]["spec"]
        secret, key = secret_file(pod, exporter_container(objects), path_of(objects))
        data = secret_data(objects, secret)
        assert data is not None and key in data, f"{name}: {secret} has no {key}"
        assert holds(data), f"{name}: {data}"
        checksum = annotations(objects).get(f"checksum/{name}")
        assert checksum, f"{name}: no checksum on the pod template"
        changed = with_values(shapes[name], **{**changes, changed_key: changed_value})
        again = annotations(render(changed))
        assert again[f"checksum/{name}"] != checksum, f"{name}: a changed value keeps the pods"
    # A web config the chart renders: it sees TLS and basic auth for itself.
    web = with_values("webconfig", **cases[3][1])
    container = exporter_container(render(web))
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["livenessProbe"]["httpGet"]["httpHeaders"]
    # Existing Secrets are only referenced: nothing for the chart to checksum.
    assert not [k for k in annotations(render(values_of("secret"))) if k.startswith("checksum/")]


def check_deployment_replicas_get_a_budget():
    objects = render(with_values("secret", replicaCount=2))
    check_exporter_serves(objects)
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def check_tenant_keys_are_the_exporters():
    """The schema's tenant keys are those src/config/tenants.rs allows (and `reports`, issue 17's)."""
    source = (ROOT / "src/config/tenants.rs").read_text()
    block = re.search(r"const KEYS: \[&str; \d+\] = \[(.*?)\];", source, re.S).group(1)
    keys = set(re.findall(r'"(\w+)"', block))
    schema = json.loads((CHART / "values.schema.json").read_text())
    tenant = schema["properties"]["configFile"]["properties"]["tenants"]["items"]
    assert keys <= set(tenant["properties"]), keys - set(tenant["properties"])
    assert set(tenant["properties"]) - keys <= {"reports"}, set(tenant["properties"]) - keys

# --- the real exporter, with what the chart renders --------------------------------------------
# With SFB_EXPORTER_BIN (.ci/run sets it to the binary `cargo test` built), each shape's containers
# run with their rendered arguments and variables and with test files where their mounts put
# them: --config.check, which contacts no network, and a TLS and basic auth exporter in demo
# mode, which serves on loopback only, for the probes.

EXPORTER_BIN = os.environ.get("SFB_EXPORTER_BIN")
FIXTURES = ROOT / "tests/fixtures"
IDS = ["00000000-0000-0000-0000-000000000000", "22222222-2222-2222-2222-222222222222"]
APP = "11111111-1111-1111-1111-111111111111"


def existing_secrets() -> dict[str, dict[str, bytes]]:
    """Stand-ins, from the repository's test fixtures, for the Secrets the values files name."""
    web = FIXTURES / "webconfig"
    tenants = {
        "tenants": [
            {"tenant_id": IDS[0], "client_id": APP, "client_secret_file": "contoso"},
            {"tenant_id": IDS[1], "client_id": APP, "client_secret_file": "fabrikam"},
        ]
    }
    return {
        "sfb-exporter-azure": {"client-secret": b"test-client-secret\n"},
        "sfb-exporter-certificate": {
            "client-certificate.pfx": (FIXTURES / "identity/aes.p12").read_bytes(),
            "password": b"test-p12-password",
        },
        "sfb-exporter-tenants": {
            "tenants.yml": yaml.safe_dump(tenants).encode(),
            "contoso": b"test-secret-1\n",
            "fabrikam": b"test-secret-2\n",
        },
        "sfb-exporter-web-config": {
            "web-config.yml": (web / "web_config_users.good.yml").read_bytes(),
            "server.crt": (web / "server.crt").read_bytes(),
            "server.key": (web / "server.key").read_bytes(),
        },
    }


def lay_out(objects: list[dict], pod: dict, container: dict, root: Path):
    """The container's arguments and environment as the kubelet would give them, with each
    mounted Secret's files written under root and the paths moved there."""
    stand_ins = existing_secrets()
    moves = {}
    for mount in container.get("volumeMounts", []):
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        target = root / mount["mountPath"].lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        moves[mount["mountPath"]] = str(target)
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            rendered = secret_data(objects, name, raw=True)
            for key, content in (stand_ins[name] if rendered is None else rendered).items():
                (target / key).write_bytes(content)

    def moved(text: str) -> str:
        for source in sorted(moves, key=len, reverse=True):
            text = re.sub(re.escape(source) + "(?=/|$)", moves[source], text)
        return text

    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = moved(variable["value"])
        else:
            # The downward API's pod-index label: the first pod of the StatefulSet.
            assert "apps.kubernetes.io/pod-index" in variable["valueFrom"]["fieldRef"]["fieldPath"]
            env[variable["name"]] = "0"
    # $(VAR) in arguments, as the kubelet expands it.
    args = [
        re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), moved(a))
        for a in container["args"]
    ]
    return args, env


def workload_identity_webhook(objects: list[dict], env: dict, root: Path) -> None:
    """What azure-workload-identity's webhook adds to a labelled pod, from the service account."""
    annotations = one(objects, "ServiceAccount")["metadata"]["annotations"]
    token = root / "azure-identity-token"
    token.write_text("a.federated.token")
    env.update(
        AZURE_CLIENT_ID=annotations["azure.workload.identity/client-id"],
        AZURE_TENANT_ID=annotations["azure.workload.identity/tenant-id"],
        AZURE_FEDERATED_TOKEN_FILE=str(token),
        AZURE_AUTHORITY_HOST="https://login.microsoftonline.com/",
    )


def run_exporter(args: list[str], env: dict, *more: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [EXPORTER_BIN, *args, *more],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def check_the_exporter_takes_every_shape():
    for shape in SHAPES:
        objects = render(values_of(shape))
        template = workload(objects)["spec"]["template"]
        container = exporter_container(objects)
        with tempfile.TemporaryDirectory() as tmp:
            args, env = lay_out(objects, template["spec"], container, Path(tmp))
            if template["metadata"]["labels"].get("azure.workload.identity/use") == "true":
                workload_identity_webhook(objects, env, Path(tmp))
            result = run_exporter(args, env, "--config.check")
            said = (result.stdout + result.stderr).strip()
            if flag(args, "--reports") and "--reports" in PENDING_FLAGS:
                # Until the exporter has the flag (issue 17) it refuses it, and nothing else.
                assert result.returncode == 2 and "'--reports'" in said, f"{shape}: {said}"
                continue
            assert result.returncode == 0 and "configuration OK" in said, f"{shape}: {said}"
            for cronjob in of_kind(objects, "CronJob"):
                pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                [init] = pod["initContainers"]
                args, env = lay_out(objects, pod, init, Path(tmp) / "backfill-pod")
                # Clap parses every argument before it answers --help.
                result = run_exporter(args, env, "--help")
                said = (result.stdout + result.stderr).strip()
                assert result.returncode == 0, f"{shape}, backfill: {said}"


def status(url: str, headers: dict) -> int | None:
    """The HTTP status, None when nothing answers; certificates unchecked, as the kubelet."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), context=context, timeout=5
        ) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError):
        return None


def check_probes_log_in_over_tls():
    """ci/webconfig-values.yaml's probes against the real exporter (in demo mode, so that it
    talks to loopback only), with a user of the fixture's web config."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = with_values(
        "webconfig",
        demo=True,
        **{
            "exporter.port": port,
            "webConfig.probeAuth": {"username": "dave", "password": "dave123"},
        },
    )
    objects = render(values)
    pod = workload(objects)["spec"]["template"]["spec"]
    container = exporter_container(objects)
    with tempfile.TemporaryDirectory() as tmp:
        args, env = lay_out(objects, pod, container, Path(tmp))
        exporter = subprocess.Popen(
            [EXPORTER_BIN, *args], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for probe in ("livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                assert get["port"] == "metrics" and container["ports"][0]["containerPort"] == port
                url = f"{get['scheme'].lower()}://127.0.0.1:{port}{get['path']}"
                headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
                # Until it listens, and (readiness) until the demo's first refresh.
                deadline = time.monotonic() + 30
                while (answer := status(url, headers)) != 200 and time.monotonic() < deadline:
                    assert exporter.poll() is None, f"the exporter exited: {exporter.returncode}"
                    time.sleep(0.1)
                assert answer == 200, f"{probe}: {url} answered {answer}"
                assert status(url, {}) == 401, f"{probe}: {url} without a login"
        finally:
            exporter.terminate()
            exporter.wait(timeout=10)


def main() -> int:
    checks = [("ci/ holds the contract's values files", check_the_values_files_are_the_contract)]
    checks += [(f"ci/{s}-values.yaml", lambda s=s: check_shape(s)) for s in SHAPES]
    checks += [
        ("appVersion is Cargo.toml's version", check_app_version_is_cargo_version),
        ("a mistyped key fails lint and template", check_mistyped_keys_fail),
        (
            "values that cannot work fail with one line",
            check_values_that_cannot_work_fail_with_one_line,
        ),
        ("demo needs no identity", check_demo_needs_no_identity),
        ("PrometheusRule is dashboards/sfb-exporter-alerts.yml", check_rules_are_the_rules_file),
        ("dashboard ConfigMaps are dashboards/*.json", check_dashboards_are_the_dashboard_files),
        ("the packaged chart carries the files", check_the_packaged_chart_carries_the_files),
        (
            "created Secrets are mounted and roll the pods",
            check_created_secrets_are_mounted_and_roll_the_pods,
        ),
        ("replicas > 1 get a PodDisruptionBudget", check_deployment_replicas_get_a_budget),
        ("schema's tenant keys are the exporter's", check_tenant_keys_are_the_exporters),
    ]
    live = [
        ("the exporter takes every shape's arguments", check_the_exporter_takes_every_shape),
        ("probes log in over TLS", check_probes_log_in_over_tls),
    ]
    skipped = ""
    if EXPORTER_BIN:
        assert Path(EXPORTER_BIN).is_file(), f"SFB_EXPORTER_BIN: no file {EXPORTER_BIN}"
        checks += live
    else:
        skipped = f", {len(live)} skipped"
        print("skipped: the checks with the exporter itself (set SFB_EXPORTER_BIN to run them)")
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {' and '.join(KUBE_VERSIONS)}")
    if PENDING_FLAGS:
        pending = ", ".join(sorted(PENDING_FLAGS))
        print(f"not yet in src/config/, rendered only when asked for: {pending}")
    failed = 0
    for name, check in checks:
        try:
            check()
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
            failed += 1
            # A bare assert says nothing: show its line.
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(f"FAIL {name}: {e or where.line} (line {where.lineno})")
            if not isinstance(e, (AssertionError, helm.HelmError)):
                traceback.print_exc()
    print(f"helm-check: {len(checks) - failed} passed, {failed} failed{skipped}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
