"""A real Prometheus server scrapes three daemons; its HTTP API shows their state roots agree.

Needs the `prometheus` binary (Debian: `apt-get install prometheus`); skipped with that
reason when it is absent.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from crdtd.node.metrics import fingerprint
from tests.node_support import NAMESPACE, checkpoint, converged, federation, running, wait_for

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.multiprocess,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="the prometheus binary is not installed (apt-get install -y prometheus)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.load(r)
    except OSError:
        return []
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_prometheus_sees_equal_state_root_fingerprints_on_three_nodes(tmp_path: Path) -> None:
    configs = federation(tmp_path, 3)
    with running(configs) as daemons:
        with daemons[0].client() as c:
            c.push(NAMESPACE, checkpoint(tmp_path / "a.safetensors", 2.0))
        wait_for(lambda: converged(daemons), 60, "equal state roots")
        targets, root = [], b""
        for d in daemons:
            with d.client() as c:
                s = c.status()
            targets.append(s.metrics_address)
            root = s.state_root
        port = _free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: crdtd\n    static_configs:\n"
            f"      - targets: {json.dumps(targets)}\n"
        )
        check = subprocess.run(
            ["promtool", "check", "config", str(config)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
        prom = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "prometheus.log").open("wb"),
        )
        try:
            series = wait_for(
                lambda: (r := _query(port, "crdtd_state_root_fingerprint")) and len(r) == 3 and r,
                90,
                "three scraped fingerprints",
            )
            values = {float(s["value"][1]) for s in series}
            assert values == {float(fingerprint(root))}
            assert {s["metric"]["instance"] for s in series} == set(targets)
            distinct = _query(port, 'count(count_values("root", crdtd_state_root_fingerprint))')
            assert float(distinct[0]["value"][1]) == 1.0
            alive = _query(port, "min(crdtd_peers_alive)")
            assert float(alive[0]["value"][1]) == 2.0
            synced = _query(
                port, 'sum(crdtd_sync_sessions_total{direction="outbound",result="ok"})'
            )
            moved = _query(port, 'sum(crdtd_sync_bytes_total{direction="received"})')
            assert float(synced[0]["value"][1]) > 0 and float(moved[0]["value"][1]) > 0
        finally:
            prom.terminate()
            prom.wait(30)
