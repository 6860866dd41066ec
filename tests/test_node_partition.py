"""A network partition between real daemons (mutual TLS, every peer link through a proxy that
can cut it): both sides keep accepting pushes, the minority keeps serving reads, and after
healing every node holds the same set and materialises the same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import tomllib

from tests.link_proxy import Links
from tests.node_support import (
    NAMESPACE,
    Daemon,
    checkpoint,
    converged,
    federation,
    roots,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

NAMES = ["a", "b", "c", "d", "e"]


def _advertise(config: Path) -> str:
    return tomllib.loads(config.read_text())["peer"]["advertise"]


def _holds(daemon: Daemon, entry_id: bytes) -> bool:
    with daemon.client(timeout=10) as c:
        return entry_id in {e.id for e in c.list(NAMESPACE)}


def _materialised(daemon: Daemon, out: Path) -> tuple[str, list[bytes]]:
    with daemon.client() as c:
        r = c.materialise(NAMESPACE, out=out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == r.output_sha256
    return r.output_sha256, sorted(r.inputs)


def test_a_split_federation_keeps_working_on_both_sides_and_converges_after_healing(
    tmp_path: Path,
) -> None:
    configs = federation(tmp_path, len(NAMES))
    links = Links(NAMES)
    daemons = []
    try:
        for name, config in zip(NAMES, configs):
            links.serve_at(name, _advertise(config))
            daemons.append(Daemon(config, env=links.env(name)))
        for d in daemons:
            d.start(wait=False)
        for d in daemons:
            d.wait_ready()
        wait_for(lambda: converged(daemons), 60, "the federation to settle")
        assert links.tunnels() > 0, "peer traffic must go through the proxies"
        majority, minority = daemons[:3], daemons[3:]
        a, d, e = daemons[0], daemons[3], daemons[4]

        links.split(NAMES[:3], NAMES[3:])
        with a.client() as ca:  # both sides accept pushes while split
            ra = ca.push(
                NAMESPACE,
                checkpoint(tmp_path / "a.safetensors", 1.0, seed=1),
                metadata={"num_examples": 30},
            )
        with d.client() as cd:
            rd = cd.push(
                NAMESPACE,
                checkpoint(tmp_path / "d.safetensors", 5.0, seed=2),
                metadata={"num_examples": 10},
            )
        wait_for(lambda: all(_holds(n, ra.entry_id) for n in majority), 60, "majority spread")
        wait_for(lambda: all(_holds(n, rd.entry_id) for n in minority), 60, "minority spread")
        wait_for(lambda: converged(majority) and converged(minority), 60, "each side settled")
        assert set(roots(majority)).isdisjoint(roots(minority))
        assert not _holds(e, ra.entry_id) and not _holds(a, rd.entry_id)

        # the minority side keeps serving reads: list, get, status, materialise
        with e.client() as ce:
            assert ce.status().state_root == roots([d])[0]
            _, payload = ce.get(rd.entry_id)
            assert payload == (tmp_path / "d.safetensors").read_bytes()
        minority_merge, inputs = _materialised(e, tmp_path / "minority.safetensors")
        assert inputs == [rd.entry_id]

        links.heal()
        wait_for(lambda: converged(daemons), 90, "every node after healing")
        merged = [
            _materialised(n, tmp_path / f"merged-{i}.safetensors") for i, n in enumerate(daemons)
        ]
        assert len({sha for sha, _ in merged}) == 1, merged
        assert merged[0][1] == sorted([ra.entry_id, rd.entry_id])
        assert merged[0][0] != minority_merge
    finally:
        for daemon in daemons:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.stop()
        links.close()
