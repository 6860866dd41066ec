"""`crdtd federation revoke` on a running federation: the admin-signed revocation reaches
every node, and Status, `crdtd status` and the metrics show the peer as revoked, neither
alive nor in sync. Three real daemons (in-process: real gRPC, mutual TLS, real stores)."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtd.cli import main
from crdtd.crypto.federation import Federation
from crdtd.errors import ConfigError
from tests.node_support import InProcessNode, federation, wait_for


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[InProcessNode]]]:
    root = tmp_path_factory.mktemp("revoke")
    configs = federation(root, 3)
    nodes = [InProcessNode(c) for c in configs]
    try:
        yield root / "fed", nodes
    finally:
        for n in nodes:
            n.stop()


def peer_row(node: InProcessNode, name: str):  # type: ignore[no-untyped-def]
    with node.client(timeout=10) as c:
        return next((p for p in c.status().peers if p.name == name), None)


def metric(node: InProcessNode, line_start: str) -> float | None:
    port = node.daemon.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_revoked_peer_is_shown_revoked_everywhere_not_alive_in_sync(
    fed: tuple[Path, list[InProcessNode]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fed_dir, (a, b, c) = fed

    def everyone_in_sync() -> bool:
        rows = [peer_row(n, m) for n, m in ((a, "site-c"), (b, "site-c"), (c, "site-a"))]
        return all(r is not None and r.alive and r.in_sync for r in rows)

    wait_for(everyone_in_sync, 90, "three nodes in sync")
    assert metric(a, 'crdtd_peer_revoked{peer="site-c"}') == 0.0

    argv = ["federation", "revoke", "site-c", "--dir", str(fed_dir), "--reason", "left"]
    assert main([*argv, "--successor", "site-b", "--config", str(a.config), "--json"]) == 0
    out = capsys.readouterr().out
    c_key = Federation.load(fed_dir).member_key_id("site-c")
    assert c_key.hex() in out and '"reason": "left"' in out

    for node in (a, b):  # b learns it by sync
        wait_for(lambda n=node: n.core.state.is_revoked(c_key), 60, "the revocation to spread")
        row = wait_for(lambda n=node: peer_row(n, "site-c"), 30, "site-c in the peer table")
        assert row.revoked and not row.alive and not row.in_sync
        assert metric(node, 'crdtd_peer_revoked{peer="site-c"}') == 1.0
        assert metric(node, 'crdtd_peer_in_sync{peer="site-c"}') == 0.0
    assert main(["status", "--config", str(b.config)]) == 0
    shown = [line for line in capsys.readouterr().out.splitlines() if "site-c" in line]
    assert shown and "REVOKED" in shown[0] and "in sync" not in shown[0]
    with a.client() as client:
        (score,) = [s for s in client.trust().scores if s.name == "site-c"]
        assert score.revoked
    # nothing new reaches the revoked node: no one dials it, its calls are refused
    with a.client() as client:
        pushed = client.push("blobs/raw", b"after the revocation").entry_id
    wait_for(lambda: b.core.state.store.has_entry(pushed), 60, "the push to reach site-b")
    with b.client() as client:
        client.push("blobs/raw", b"also after it")
    with caplog.at_level(logging.INFO, logger="crdtd"):
        time.sleep(3)  # several gossip rounds and push-pull intervals of the fast test settings
    assert not c.core.state.store.has_entry(pushed)
    # the cut-off node says so once per peer (sync.failed), not again at every gossip round
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refused == [], [r.getMessage() for r in refused[:3]]
    assert not peer_row(a, "site-c").in_sync


def test_revoke_names_unknown_nodes_and_refuses_a_key_succeeding_itself(
    fed: tuple[Path, list[InProcessNode]],
) -> None:
    fed_dir, _ = fed
    federation_ = Federation.load(fed_dir)
    with pytest.raises(ConfigError, match="'site-z' is neither a node"):
        federation_.revoke("site-z")
    with pytest.raises(ConfigError, match="cannot succeed itself"):
        federation_.revoke("site-b", successor="site-b")
