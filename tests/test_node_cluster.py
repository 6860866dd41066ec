"""Three real daemons (subprocesses, mutual TLS between peers): what one node is told, every
node knows; materialised bytes are identical everywhere; erasure reaches every disk; a
kill -9 loses nothing that was acknowledged."""

from __future__ import annotations

import hashlib
import signal
import threading
from pathlib import Path

import grpc
import pytest

from crdtd.errors import CrdtdError
from crdtd.node.config import load_daemon_config
from crdtd.store import NodeStore
from tests.node_support import (
    NAMESPACE,
    Daemon,
    checkpoint,
    converged,
    federation,
    running,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cluster")
    configs = federation(root, 3)
    with running(configs) as daemons:
        yield root, daemons


def _held_chunks(config: Path, digests: list[bytes]) -> list[bool]:
    """Which chunks the node's store still holds (a second, read-only opener, as fsck)."""
    data_dir = load_daemon_config(config, check_strategies=False).node.data_dir
    store = NodeStore.open(data_dir, maintenance=False)
    try:
        return [store.has_chunk(d) for d in digests]
    finally:
        store.close()


def test_push_at_one_node_and_materialise_at_another_gives_one_sha256(cluster) -> None:
    root, (a, b, c) = cluster
    with a.client() as ca:
        ra = ca.push(
            NAMESPACE,
            checkpoint(root / "a.safetensors", 1.0, seed=1),
            metadata={"num_examples": 100},
        )
    with b.client() as cb:
        rb = cb.push(
            NAMESPACE,
            checkpoint(root / "b.safetensors", 3.0, seed=2),
            metadata={"num_examples": 50},
        )
    wait_for(lambda: converged([a, b, c]), 60, "three equal state roots")
    results = []
    for node in (c, b, a):
        with node.client() as cl:
            out = root / f"merged-{node.config.stem}.safetensors"
            results.append(cl.materialise(NAMESPACE, out=out))
            assert hashlib.sha256(out.read_bytes()).hexdigest() == results[-1].output_sha256
    assert len({r.output_sha256 for r in results}) == 1
    assert len({r.input_set_digest for r in results}) == 1
    assert set(results[0].inputs) == {ra.entry_id, rb.entry_id}
    with c.client() as cc:
        peers = cc.status().peers
    assert {p.name for p in peers} == {"site-a", "site-b"} and all(p.alive for p in peers)


def test_erase_removes_the_payload_on_every_node(cluster) -> None:
    _, daemons = cluster
    b = daemons[1]
    secret = b"patient 42: do not keep me " * 20000  # several chunk files, not inline
    with b.client() as cb:
        r = cb.push("blobs/raw", secret)
    wait_for(lambda: converged(daemons), 60, "the blob on every node")
    for node in daemons:
        with node.client() as cl:
            assert cl.get(r.entry_id)[1] == secret
    from crdtd.store.chunks import chunk_bytes, chunk_digest

    digests = [chunk_digest(piece) for piece in chunk_bytes(secret)]
    assert all(all(_held_chunks(n.config, digests)) for n in daemons)

    with b.client() as cb:
        _, erased = cb.erase([r.entry_id], reason="right to be forgotten")
    assert erased == 1
    wait_for(lambda: converged(daemons), 60, "the removal on every node")
    for node in daemons:
        with node.client() as cl, pytest.raises(CrdtdError) as exc:
            cl.get(r.entry_id)
        assert exc.value.code is grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
        assert not any(_held_chunks(node.config, digests)), node.config.stem
        with node.client() as cl:
            listed = {e.id: e for e in cl.list("blobs/raw", include_removed=True)}
        assert listed[r.entry_id].removed


def test_a_node_that_was_down_catches_up_when_it_returns(cluster) -> None:
    root, daemons = cluster
    a, c = daemons[0], daemons[2]
    assert c.stop() == 0
    with a.client() as ca:
        r = ca.push(NAMESPACE, checkpoint(root / "late.safetensors", 7.0, seed=7))
    c.start()
    wait_for(lambda: converged(daemons), 60, "the returning node to catch up")
    with c.client() as cc:
        assert r.entry_id in {e.id for e in cc.list(NAMESPACE)}


def test_kill_9_during_pushes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1, limits={"max_payload": "64MiB"})
    node = Daemon(config).start()
    acked: list[tuple[bytes, bytes]] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def pusher(k: int) -> None:
        i = 0
        with node.client(timeout=30) as cl:
            while not stop.is_set():
                payload = f"push {k}-{i} ".encode() * (1000 + 5000 * (i % 4))
                try:
                    r = cl.push("blobs/raw", payload)
                except CrdtdError as exc:
                    failures.append(exc)
                    return
                acked.append((r.entry_id, hashlib.sha256(payload).digest()))
                i += 1

    threads = [threading.Thread(target=pusher, args=(k,), daemon=True) for k in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 30, 60, "some acknowledged pushes")
    node.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join(30)
    assert failures, "the pushes in flight at the kill must fail"
    snapshot = list(acked)

    node.start()
    with node.client() as cl:
        held = {e.id for e in cl.list("blobs/raw")}
        for entry_id, digest in snapshot:
            assert entry_id in held
            _, payload = cl.get(entry_id)
            assert hashlib.sha256(payload).digest() == digest
    assert node.stop() == 0
    data_dir = load_daemon_config(config, check_strategies=False).node.data_dir
    assert not any((data_dir / "tmp").iterdir()), "partial uploads are cleared at start"
