"""deploy/prometheus, deploy/grafana, deploy/kubernetes and deploy/systemd, validated with the tools their
users run (promtool, systemd-analyze) and against the daemon itself: every metric a rule or a panel
names is one the daemon exports, every probe a route it serves, every setting one it reads."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrator.app import create_app
from orchestrator.cli import build_parser
from orchestrator.metrics import Metrics
from orchestrator.settings import iter_fields, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SETTING_ENV_VARS = {env for _, env, _, _ in iter_fields()}
PROFILE_ENV_RE = re.compile(r"^ORCH_METASTUDIO__CALLBACK_PROFILES__\w+__(PUBLIC_URL|AUTH_TYPE|KEYS)$")
PROMQL_KEYWORDS = {
    "by",
    "without",
    "and",
    "or",
    "unless",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
}


def _exported_series() -> set[str]:
    """Every series name the daemon's /metrics can hold (counters' _total, histograms' parts)."""
    names = {"up"}
    exposition = Metrics().exposition().decode()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "counter":
                names |= {f"{name}_total", f"{name}_created"}
            elif kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    return names


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_labels)
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b(?!\s*\()", without_ranges))
    grouped = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", without_labels):
        grouped |= {w.strip() for w in clause.split(",")}
    return {w for w in words if w.startswith(("orch_", "up")) and w not in PROMQL_KEYWORDS | grouped}


# -- Prometheus ----------------------------------------------------------------------------------


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (scripts/test.sh does)"
    return subprocess.run(
        [promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=60
    )


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = _promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = _promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


def test_the_alerts_an_operator_needs_are_there_and_name_real_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    for needed in (
        "OrchestratorRoomNotLive",
        "OrchestratorRoomCircuitOpen",
        "OrchestratorCallbacksRefused",
        "OrchestratorReportLag",
        "OrchestratorRedisDown",
    ):
        assert needed in alerts
    exported = _exported_series()
    for name, rule in alerts.items():
        used = _metric_names(rule["expr"])
        assert used, name
        assert used <= exported, (name, used - exported)
        assert rule["labels"]["severity"] in ("critical", "warning") and rule["annotations"]["summary"]


def test_the_metric_name_parser_sees_what_a_query_names() -> None:
    assert _metric_names('sum by (room) (rate(orch_x_total{a="b"}[5m])) / max(orch_y) and up') == {
        "orch_x_total",
        "orch_y",
        "up",
    }


# -- Grafana -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rooms-overview", "room", "daemon"])
def test_dashboards_parse_and_name_real_metrics(name: str) -> None:
    dashboard = json.loads((DEPLOY / "grafana" / f"{name}.json").read_text())
    assert dashboard["uid"].startswith("orch-") and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 6
    exported = _exported_series()
    for panel in panels:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"][
            "w"
        ] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = _metric_names(target["expr"])
            assert used and used <= exported, (panel["title"], used - exported)
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables, (panel["title"], var)


# -- Kubernetes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, Any]:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    found: dict[str, Any] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / resource).read_text()):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], resource
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    listed = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(kustomization["resources"])  # nothing shipped that is not applied
    return found


def _container(manifests: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifests["Deployment/orchestrator"]["spec"]["template"]["spec"]["containers"]
    return dict(container)


#: The oldest Kubernetes release the manifests are written for (still supported by the big clouds).
KUBERNETES = "1.30.0"


def test_kubernetes_manifests_follow_the_api_schemas_strictly(manifests: dict[str, Any]) -> None:
    for doc in manifests.values():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises, naming the field
    misspelt = json.loads(json.dumps(manifests["Deployment/orchestrator"]))
    misspelt["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES, strict=True)


def test_kubernetes_kinds_and_api_versions(manifests: dict[str, Any]) -> None:
    expected = {
        "ConfigMap/orchestrator-config": "v1",
        "Secret/orchestrator-secrets": "v1",
        "Deployment/orchestrator": "apps/v1",
        "Service/orchestrator-public": "v1",
        "Service/orchestrator-admin": "v1",
        "PodDisruptionBudget/orchestrator": "policy/v1",
    }
    assert {k: v["apiVersion"] for k, v in manifests.items()} == expected


def test_the_deployment_runs_the_daemon_hardened(
    manifests: dict[str, Any], make_settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = manifests["Deployment/orchestrator"]
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = _container(manifests)
    build_parser().parse_args(container["args"][1:])  # a command the CLI has
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    # Probes on routes the daemon serves, on the admin port.
    routes = {r.resource.canonical for r in create_app(make_settings()).router.routes() if r.resource}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path and path in routes
        assert container[probe]["httpGet"]["port"] == "admin"
    # The configuration file the args name is the ConfigMap's, mounted there; it and the Secret's variables
    # are settings the daemon accepts, its ports the container's.
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[str(config_path.parent)]["readOnly"] is True
    toml_text = manifests["ConfigMap/orchestrator-config"]["data"][config_path.name]
    config = tomllib.loads(toml_text)
    assert (ports["admin"], ports["public"]) == (config["server"]["port"], config["server"]["public_port"])
    journal = Path(config["callbacks"]["journal_path"])
    assert str(journal.parent) in mounts and "/tmp" in mounts  # noqa: S108 -- writable places, read-only root
    secret = manifests["Secret/orchestrator-secrets"]["stringData"]
    for name in secret:
        assert name in SETTING_ENV_VARS or PROFILE_ENV_RE.match(name), name
    settings_file = tmp_path / "orchestrator.toml"
    settings_file.write_text(toml_text)
    for name, value in secret.items():
        if value:
            monkeypatch.setenv(name, value)
    settings = load_settings(settings_file)
    assert pod["terminationGracePeriodSeconds"] > settings.server.shutdown_timeout_s


def test_services_and_the_budget_select_the_pods(manifests: dict[str, Any]) -> None:
    deployment = manifests["Deployment/orchestrator"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in _container(manifests)["ports"]}
    public, admin = manifests["Service/orchestrator-public"], manifests["Service/orchestrator-admin"]
    for service in (public, admin):
        assert service["spec"]["selector"].items() <= labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["public"]  # never the admin port
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]
    assert admin["spec"]["type"] == "ClusterIP"
    budget = manifests["PodDisruptionBudget/orchestrator"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= budget["minAvailable"] < deployment["spec"]["replicas"]


# -- systemd -------------------------------------------------------------------------------------


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with /opt/orchestrator's command replaced by this environment's (verify checks it exists)."""
    text = (DEPLOY / "systemd" / "orchestrator.service").read_text()
    here = str(Path(sys.executable).parent / "orchestrator")
    unit = tmp_path / "orchestrator.service"
    unit.write_text(text.replace("/opt/orchestrator/bin/orchestrator", here))
    return unit


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd (scripts/test.sh does)"
    unit = _unit_for_this_machine(tmp_path)
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert level and float(level.group(1)) <= 2.0, security.stdout[-500:]
    service = dict(
        line.split("=", 1)
        for line in unit.read_text().split("[Service]")[1].split("[Install]")[0].splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert service["User"] == "orchestrator" and service["Restart"] == "always"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    for line in ("ExecStart", "ExecStartPre"):
        argv = shlex.split(service[line])
        build_parser().parse_args(argv[1:])
    assert service["StateDirectory"] == "orchestrator"
    assert service["Environment"].endswith("/var/lib/orchestrator/callback-journal.jsonl")
