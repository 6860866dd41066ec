"""Rounds namespaces on a real NodeCore: per-round globals from the replicated set."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load, save

from crdtd.crypto import federation as fed
from crdtd.crypto.keys import NodeKey
from crdtd.errors import MergeError
from crdtd.fl.optimisers import ServerOptimiser, server_step
from crdtd.kinds.base import MaterialiseRequest
from crdtd.node.config import load_daemon_config
from crdtd.node.core import NodeCore
from crdtd.node.materialise import materialise
from crdtd.state.entry import make_contribution
from crdtd.store import sqlite as db
from crdtd.store.chunks import FileSource
from tests.node_support import federation

NS = "model/rounds"
SHAPES = {"w": (6, 5), "b": (5,)}


class Site:
    """A member without a daemon: signs its own contributions and pushes them at the node."""

    def __init__(self, node: NodeCore, key: NodeKey, tmp: Path) -> None:
        self.node, self.key, self.tmp = node, key, tmp
        self.pushed = 0

    def push(self, params: dict[str, np.ndarray], **meta: object) -> bytes:
        self.pushed += 1
        path = self.tmp / f"{self.key.key_id.hex()[:8]}-{self.pushed}.safetensors"
        path.write_bytes(save({k: params[k] for k in sorted(params)}))
        src = FileSource(path)
        seq, prev = self.node.state.chain_next(self.key.key_id)
        e = make_contribution(
            self.key,
            seq,
            prev,
            NS,
            src.manifest.digest,
            src.manifest.size,
            payload_kind="safetensors",
            metadata=meta,
        )
        self.node.push_file(path, NS, "safetensors", signed_entry=e.to_bytes())
        return e.id


def tensors(seed: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(seed * 1000))
    return {k: rng.normal(0, 1, s).astype(np.float32) for k, s in SHAPES.items()}


def near(base: dict[str, np.ndarray], seed: int, scale: float = 0.1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, scale, v.shape)).astype(np.float32) for k, v in base.items()}


def start(tmp_path: Path, n_sites: int, **table: object) -> tuple[NodeCore, list[Site]]:
    ns = {"rounds": True, "example_weighted": True, **table}
    (config,) = federation(tmp_path, 1, namespaces={NS: ns})
    node = NodeCore.open(load_daemon_config(config))
    sites = []
    for i in range(n_sites):
        member = fed.add_node(config.parent, f"lab-{i}")
        node.submit(member.membership_bytes())
        sites.append(Site(node, member.load_key(), tmp_path))
    return node, sites


@pytest.fixture
def four(tmp_path: Path) -> Iterator[tuple[NodeCore, list[Site]]]:
    node, sites = start(tmp_path, 4)
    try:
        yield node, sites
    finally:
        node.close()


def build(node: NodeCore, tmp: Path, round_: int | None) -> tuple[dict[str, np.ndarray], object]:
    ns = node.namespace(NS)
    m = materialise(node, ns, MaterialiseRequest(round=round_), tmp / f"m-{round_}-{id(ns)}")
    data = m.path.read_bytes()
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    return {k: np.asarray(v) for k, v in load(data).items()}, m


def fedavg(updates: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    w = np.array(weights, dtype=np.float64) / sum(weights)
    return {k: sum(wi * u[k].astype(np.float64) for wi, u in zip(w, updates)) for k in SHAPES}


def test_round_one_is_fedavg_of_the_round_and_names_its_participants(four, tmp_path) -> None:
    node, sites = four
    g0 = tensors(0.5)
    sites[0].push(g0, role="global", round=0)
    got0, _ = build(node, tmp_path, 0)
    assert all(np.array_equal(got0[k], g0[k]) for k in SHAPES)
    ups = [near(g0, i) for i in range(4)]
    for i, s in enumerate(sites):
        s.push(ups[i], round=1, num_examples=10 * (i + 1))
    g1, m = build(node, tmp_path, 1)
    want = fedavg(ups, [10, 20, 30, 40])
    for k in SHAPES:
        np.testing.assert_allclose(g1[k], want[k], rtol=1e-5, atol=1e-6)
    assert m.summary["participants"] == 4 and m.summary["round"] == 1
    assert len(m.inputs) == 4 and m.kind == "model"
    _latest, m_latest = build(node, tmp_path, None)
    assert m_latest.sha256 == m.sha256  # no round given: the latest one


def test_updates_supersede_without_removals_and_old_rounds_stay_buildable(four, tmp_path) -> None:
    node, sites = four
    g0 = tensors(0.1)
    sites[0].push(g0, role="global", round=0)
    first: list[bytes] = []
    for r in (1, 2, 3):
        for i, s in enumerate(sites):
            eid = s.push(near(g0, 10 * r + i), round=r, num_examples=5)
            if r == 1:
                first.append(eid)
        if r == 1:
            _, m1 = build(node, tmp_path, 1)
    visible = node.state.visible(NS)
    assert len([e for e in visible if e.body.metadata.get("role") != "global"]) == 4
    assert {node.state.store.entry_status(i) for i in first} == {db.RETIRED}
    assert node.entry_counts().get(("removal", "live"), 0) == 0
    _, again = build(node, tmp_path, 1)  # bytes reclaimed; the node merged it before
    assert again.sha256 == m1.sha256


def test_a_stale_update_counts_at_half_weight_and_a_missing_round_is_refused(
    four, tmp_path
) -> None:
    node, sites = four
    g0 = tensors(0.2)
    sites[0].push(g0, role="global", round=0)
    ups1 = [near(g0, i) for i in range(4)]
    for i, s in enumerate(sites):
        s.push(ups1[i], round=1, num_examples=10)
    ups2 = [near(g0, 50 + i) for i in range(3)]
    for i, s in enumerate(sites[:3]):
        s.push(ups2[i], round=2, num_examples=10)
    g2, m2 = build(node, tmp_path, 2)
    want = fedavg([*ups2, ups1[3]], [10, 10, 10, 5])
    for k in SHAPES:
        np.testing.assert_allclose(g2[k], want[k], rtol=1e-5, atol=1e-6)
    assert m2.summary["stale"] == 1
    with pytest.raises(MergeError, match="round 4 has no updates"):
        build(node, tmp_path, 5)


def test_the_round_screen_leaves_a_poisoned_update_out(tmp_path: Path) -> None:
    node, sites = start(tmp_path, 8)
    try:
        g0 = tensors(0.3)
        sites[0].push(g0, role="global", round=0)
        ups = [near(g0, i, 0.05) for i in range(8)]
        poison = {k: g0[k] - 5 * (ups[7][k] - g0[k]) + 3.0 for k in SHAPES}
        for i, s in enumerate(sites[:7]):
            s.push(ups[i], round=1, num_examples=10)
        bad = sites[7].push(poison, round=1, num_examples=10)
        g1, m = build(node, tmp_path, 1)
        assert bad not in m.inputs and m.summary["screened"] == [bad.hex()]
        assert [x.reason for x in m.excluded] == ["screened: outlier this round"]
        want = fedavg(ups[:7], [10] * 7)
        for k in SHAPES:
            np.testing.assert_allclose(g1[k], want[k], rtol=1e-5, atol=1e-6)
    finally:
        node.close()


def test_fedadam_namespace_applies_the_server_step_to_the_rounds_fedavg(tmp_path: Path) -> None:
    node, sites = start(tmp_path, 3, server_optimizer="fedadam", screen=False)
    try:
        g0 = tensors(0.4)
        sites[0].push(g0, role="global", round=0)
        ups = [near(g0, i) for i in range(3)]
        for i, s in enumerate(sites):
            s.push(ups[i], round=1, num_examples=1)
        g1, _ = build(node, tmp_path, 1)
        avg = {k: v.astype(np.float32) for k, v in fedavg(ups, [1, 1, 1]).items()}
        want, _ = server_step(ServerOptimiser("fedadam"), g0, avg, {}, 1)
        for k in SHAPES:
            np.testing.assert_allclose(g1[k], want[k], rtol=1e-4, atol=1e-6)
    finally:
        node.close()


def test_a_rounds_global_is_the_same_bytes_whoever_signed_its_inputs(tmp_path: Path) -> None:
    """Two federations (other keys, so other entry ids) pushing the same updates build
    byte-identical globals: what --daemon compares against the in-process run."""
    shas = []
    for name in ("one", "two"):
        node, sites = start(tmp_path / name, 3)
        try:
            g0 = tensors(0.6)
            sites[0].push(g0, role="global", round=0)
            for i, s in enumerate(sites):
                s.push(near(g0, i), round=1, num_examples=10 + i)
            shas.append(build(node, tmp_path / name, 1)[1].sha256)
        finally:
            node.close()
    assert shas[0] == shas[1]
