"""Metric names a dashboard can guess, bounded labels, and docs/dashboard that match them."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import pytest

from crdtd import errors
from crdtd.node.metrics import (
    REJECT_REASONS,
    REPAIR_RESULTS,
    SCRUB_RESULTS,
    NodeMetrics,
    PeerSnapshot,
    StateSnapshot,
    fingerprint,
    reject_reason,
    serve_metrics,
)

REPO = Path(__file__).resolve().parents[1]
ROOT = bytes.fromhex("0a1b2c3d4e5f") + bytes(26)


def snapshot() -> StateSnapshot:
    return StateSnapshot(
        entries={("contribution", "live"): 3, ("membership", "live"): 2, ("removal", "live"): 1},
        state_root=ROOT,
        peers=(
            PeerSnapshot("site-b", True, True, 1.5, {"integrity": 1.0, "overall": 0.9}),
            PeerSnapshot("site-c", False, False, None),
        ),
        served_bytes=4096,
    )


def samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def exported_names(m: NodeMetrics) -> set[str]:
    """Family names as exposed (counters carry their _total suffix)."""
    text = m.render().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_names_follow_prometheus_conventions() -> None:
    m = NodeMetrics(snapshot)
    text = m.render().decode()
    types = {
        line.split()[2]: line.split()[3] for line in text.splitlines() if line.startswith("# TYPE ")
    }
    ours = {n: t for n, t in types.items() if not n.startswith("process_")}
    assert ours and all(n.startswith("crdtd_") for n in ours)
    for name, kind in ours.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        else:
            assert not name.endswith(("_total", "_created")), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        if "seconds" in name:
            assert kind in ("histogram", "gauge"), name
    assert "crdtd_build_info" in ours


def test_labels_take_bounded_values_only() -> None:
    m = NodeMetrics(snapshot)
    m.sync_session("outbound", "ok", 0.2, sent=10, received=20)
    m.sync_session("sideways", "exploded", 0.1)  # unknown values fold into known ones
    m.rejected(errors.SignatureError("x"))
    labels: dict[str, set[str]] = {}
    for key in samples(m.render().decode()):
        for pair in re.findall(r'(\w+)="([^"]*)"', key):
            labels.setdefault(pair[0], set()).add(pair[1])
    assert labels["direction"] <= {"inbound", "outbound", "sent", "received"}
    assert labels["result"] <= {"ok", "error", "refused", *SCRUB_RESULTS, *REPAIR_RESULTS}
    assert labels["reason"] <= set(REJECT_REASONS)
    assert labels["peer"] == {"site-b", "site-c"}
    assert not {"id", "entry", "entry_id", "payload", "digest"} & set(labels)


def test_state_gauges_come_from_the_snapshot_at_scrape_time() -> None:
    m = NodeMetrics(snapshot)
    s = samples(m.render().decode())
    assert s["crdtd_state_root_fingerprint"] == fingerprint(ROOT) == 0x0A1B2C3D4E5F
    assert s['crdtd_entries{kind="contribution",state="live"}'] == 3
    assert s['crdtd_entries{kind="evidence",state="held"}'] == 0
    assert s["crdtd_peers_known"] == 2 and s["crdtd_peers_alive"] == 1
    assert s['crdtd_peer_in_sync{peer="site-b"}'] == 1
    assert s["crdtd_sync_converged"] == 1  # the one live peer is in sync
    assert s['crdtd_peer_last_sync_age_seconds{peer="site-b"}'] == 1.5
    assert 'crdtd_peer_last_sync_age_seconds{peer="site-c"}' not in s
    assert s['crdtd_peer_trust{dimension="overall",peer="site-b"}'] == 0.9
    assert s["crdtd_sync_served_bytes_total"] == 4096


def test_rejections_are_counted_under_their_reason() -> None:
    cases = {
        errors.EquivocationError("e"): "equivocation",
        errors.ChainError("c"): "chain",
        errors.NotMemberError("n"): "not_member",
        errors.OversizedPayloadError("o"): "oversized",
        errors.DigestMismatchError("d"): "payload",
        errors.UnknownNamespaceError("u"): "unknown_namespace",
        RuntimeError("boom"): "other",
    }
    for exc, reason in cases.items():
        assert reject_reason(exc) == reason


def test_metrics_endpoint_serves_text_and_healthz() -> None:
    m = NodeMetrics(snapshot)

    async def scenario() -> tuple[bytes, bytes, int]:
        async def render() -> bytes:
            return m.render()

        server = await serve_metrics("127.0.0.1", 0, render)
        port = server.sockets[0].getsockname()[1]

        def get(path: str) -> tuple[int, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as err:
                return err.code, b""

        _, metrics = await asyncio.to_thread(get, "/metrics")
        _, health = await asyncio.to_thread(get, "/healthz")
        missing, _ = await asyncio.to_thread(get, "/nope")
        server.close()
        await server.wait_closed()
        return metrics, health, missing

    metrics, health, missing = asyncio.run(scenario())
    assert b"crdtd_state_root_fingerprint" in metrics
    assert health == b"ok\n" and missing == 404


def test_docs_list_every_metric() -> None:
    doc = (REPO / "docs" / "daemon.md").read_text()
    for name in exported_names(NodeMetrics(snapshot)):
        if not name.startswith("process_"):
            assert f"`{name}`" in doc, name


@pytest.mark.parametrize(
    "path", ["deploy/grafana/dashboards/crdtd.json", "deploy/prometheus/rules.yml"]
)
def test_dashboard_and_alerts_only_query_metrics_that_exist(path: str) -> None:
    text = (REPO / path).read_text()
    if path.endswith(".json"):
        doc = json.loads(text)
        text = " ".join(t["expr"] for p in doc["panels"] for t in p.get("targets", []))
    names = exported_names(NodeMetrics(snapshot))
    used = set(re.findall(r"\bcrdtd_[a-z_]+", text))
    assert used, path
    for name in used:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in names or base in names, f"{path} uses unknown metric {name}"
