"""deploy/: what can be checked without Docker or a cluster is checked here."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def test_compose_runs_three_nodes_prometheus_and_grafana() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"init", "node-a", "node-b", "node-c", "prometheus", "grafana"} <= set(services)
    for name in ("node-a", "node-b", "node-c"):
        s = services[name]
        assert s["command"] == ["start", "--config", f"/federation/{name}.toml"]
        assert s["depends_on"]["init"]["condition"] == "service_completed_successfully"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    ports = {
        name: services[name]["environment"]["CRDTD_METRICS_PORT"]
        for name in services
        if name.startswith("node-")
    }
    assert sorted(targets) == sorted(f"{n}:{p}" for n, p in ports.items())


def test_init_script_ports_match_the_compose_metrics_ports() -> None:
    script = (DEPLOY / "compose" / "init-federation.sh").read_text()
    assert "--metrics-port $((port + 2001))" in script and "port=$((port + 10))" in script
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    ports = [
        int(doc["services"][n]["environment"]["CRDTD_METRICS_PORT"])
        for n in ("node-a", "node-b", "node-c")
    ]
    assert ports == [7400 + 2001 + 10 * i for i in range(3)]


def test_compose_daemon_sections_are_a_valid_config(tmp_path: Path) -> None:
    from crdtd.node.config import load_daemon_config
    from tests.node_support import federation

    (config,) = federation(tmp_path, 1, namespaces={}, limits=None)
    config.write_text(
        config.read_text() + (DEPLOY / "compose" / "daemon-sections.toml").read_text()
    )
    cfg = load_daemon_config(config, env={})
    assert cfg.namespace("model/breast-cancer-mlp") is not None and cfg.log_format == "json"


def test_kubernetes_statefulset_has_volumes_and_a_headless_peer_service() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "crdtd.yaml").read_text()))
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    peers = by_kind[("Service", "crdtd-peers")]
    assert peers["spec"]["clusterIP"] == "None"
    sts = by_kind[("StatefulSet", "crdtd")]
    assert sts["spec"]["serviceName"] == "crdtd-peers"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CRDTD_NODE_DATA_DIR"] == "/var/lib/crdtd/data"
    assert {m["name"] for m in container["volumeMounts"]} == {"config", "data"}
    assert container["args"][:2] == ["start", "--config"]
    for key in env:
        if key.startswith("CRDTD_"):
            section, _, _ = key[6:].lower().partition("_")
            assert section in {"node", "peer", "client", "metrics", "log"}, key


def test_systemd_unit_runs_crdtd_start_and_stops_with_sigterm() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "crdtd.service").read_text())
    service = unit["Service"]
    assert service["ExecStart"].endswith("crdtd start --config /etc/crdtd/node.toml")
    assert service["KillSignal"] == "SIGTERM" and service["RestartPreventExitStatus"] == "2"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_dockerfile_copies_files_that_exist() -> None:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "crdtd.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("state root", "sync", "trust"):
        assert topic in titles
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "crdtd.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install -y prometheus)",
)
def test_prometheus_config_and_rules_pass_promtool() -> None:
    for args in (("config", "prometheus.yml"), ("rules", "rules.yml")):
        proc = subprocess.run(
            ["promtool", "check", args[0], str(DEPLOY / "prometheus" / args[1])],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
