"""Self-repair on three real daemons: a byte flipped in a chunk file, or a chunk file deleted,
on one node is found by the next scrub pass, quarantined, fetched again from a peer and
verified; the node materialises the same bytes as the others again, `crdtd fsck` is clean,
and the metrics and the log show the repair. Default run: three daemons in this process
(real gRPC, mutual TLS, real stores); `-m slow`: three `crdtd start` subprocesses."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from crdtd.cli import main
from crdtd.node.config import load_daemon_config
from crdtd.store.store import INLINE_MAX, NodeStore
from tests.node_support import NAMESPACE, InProcessNode, federation, running, wait_for

INTERVAL_S = 3.0
GRACE_S = 15.0
"""Time a pass and a fetch may take beyond the interval on two shared, loaded cores."""


def big_checkpoint(path: Path) -> Path:
    """Two tensors of 256 KiB each: chunk files, not inline rows."""
    g = torch.Generator().manual_seed(7)
    save_file(
        {"a": torch.randn(256, 256, generator=g), "b": torch.randn(256, 256, generator=g)}, path
    )
    return path


def data_dir(config: Path) -> Path:
    return load_daemon_config(config, check_strategies=False).node.data_dir


def metric(config: Path, name: str) -> float:
    port = load_daemon_config(config, check_strategies=False).node.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def chunk_files(config: Path, payload_digest: bytes) -> list[Path]:
    """The payload's chunk files on the node's disk (a second, read-only opener, as fsck)."""
    store = NodeStore.open(data_dir(config), maintenance=False)
    try:
        refs = store.get_manifest(payload_digest).chunks
        return [store.chunks.path(r.digest) for r in refs if r.size > INLINE_MAX]
    finally:
        store.close()


def fsck_ok(config: Path) -> bool:
    return main(["fsck", "--data-dir", str(data_dir(config))]) == 0


def repaired(config: Path) -> float:
    return metric(config, 'crdtd_scrub_repairs_total{result="repaired"}')


def scenario(nodes: list[Any], root: Path, logs: Any) -> None:
    """Push, converge, damage one node per way, and watch each repair itself."""
    a, b, c = nodes
    configs = [n.config for n in nodes]
    with a.client() as client:
        pushed = client.push(NAMESPACE, big_checkpoint(root / "big.safetensors"))
    for n in nodes:
        wait_for(lambda n=n: entry_held(n, pushed.entry_id), 90, "the push to reach every node")
    want = {materialised(n, root) for n in nodes}
    assert len(want) == 1

    for node, damage in ((b, "flip"), (c, "delete")):
        (victim, *_) = chunk_files(node.config, pushed.payload_digest)
        before = repaired(node.config)
        if damage == "flip":
            raw = bytearray(victim.read_bytes())
            raw[len(raw) // 2] ^= 0x01
            victim.write_bytes(bytes(raw))
        else:
            victim.unlink()
        started = time.monotonic()
        wait_for(lambda n=node, b0=before: repaired(n.config) > b0, INTERVAL_S + GRACE_S, damage)
        took = time.monotonic() - started
        print(f"{damage}: repaired {took:.1f} s after the damage (scrub interval {INTERVAL_S} s)")
        assert took <= INTERVAL_S + GRACE_S
        result = "corrupt" if damage == "flip" else "missing"
        assert metric(node.config, f'crdtd_scrub_chunks_total{{result="{result}"}}') >= 1
        assert victim.is_file()
        assert fsck_ok(node.config)
        assert materialised(node, root) in want
        assert "scrub.repaired" in logs(node)
    assert all(fsck_ok(c) for c in configs)
    assert metric(a.config, "crdtd_scrub_passes_total") >= 1
    assert metric(a.config, "crdtd_scrub_bytes_total") > 0


def entry_held(node: Any, entry_id: bytes) -> bool:
    with node.client(timeout=10) as c:
        return any(e.id == entry_id for e in c.list(NAMESPACE))


def materialised(node: Any, root: Path) -> str:
    with node.client(timeout=60) as c:
        return c.materialise(
            NAMESPACE, out=root / f"{node.config.stem}.out.safetensors"
        ).output_sha256


SCRUB = {"interval_ms": int(INTERVAL_S * 1000)}


def test_a_flipped_byte_and_a_deleted_chunk_are_repaired_from_peers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    configs = federation(tmp_path, 3, scrub=SCRUB)
    nodes = [InProcessNode(c) for c in configs]

    def logs(node: InProcessNode) -> str:
        return "\n".join(r.getMessage() for r in caplog.records if r.name == "crdtd.node.scrub")

    try:
        scenario(nodes, tmp_path, logs)
    finally:
        for n in nodes:
            n.stop()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_subprocess_daemons_repair_a_flipped_byte_and_a_deleted_chunk(tmp_path: Path) -> None:
    configs = federation(tmp_path, 3, scrub=SCRUB)
    with running(configs) as daemons:
        scenario(daemons, tmp_path, lambda d: d.log())


@pytest.fixture(autouse=True)
def _scrub_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("INFO", logger="crdtd.node.scrub")
    yield
