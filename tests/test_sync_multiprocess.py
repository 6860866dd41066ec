"""Real node processes (crdtd.sync.node_runner) from `federation add-node` configs converge,
survive SIGTERM, and a restarted node catches up. Select with `-m multiprocess`."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crdtd.crypto import federation
from crdtd.crypto.node_config import NodeConfig, load_node_config
from crdtd.state.e4 import E4State
from crdtd.state.entry import make_contribution
from crdtd.store.chunks import BytesSource, chunk_bytes, manifest_of
from crdtd.store.store import NodeStore

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def contribute(cfg: NodeConfig, text: str) -> bytes:
    """Write a contribution signed by the node's key straight into its store (the node is
    not running: a store has one writer)."""
    store = NodeStore.open(cfg.data_dir)
    state = E4State(store, cfg.federation.admin, cfg.federation.policy)
    try:
        key = cfg.load_key()
        seq, prev = state.chain_next(key.key_id)
        payload = (text * 2000).encode()
        m = manifest_of(chunk_bytes(payload))
        e = make_contribution(key, seq, prev, "mp/test", m.digest, m.size)
        state.apply(e, BytesSource(payload))
        return e.id
    finally:
        state.close()


def seed(fed_dir: Path, cfg: NodeConfig) -> None:
    state = E4State.open(cfg.data_dir, cfg.federation.admin, cfg.federation.policy)
    try:
        for e in federation.Federation.load(fed_dir).admin_entries():
            state.apply(e)
    finally:
        state.close()


def start(cfg: NodeConfig, fed_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crdtd.sync.node_runner",
            "--config",
            str(cfg.path),
            "--seed",
            str(fed_dir / "admin-entries"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("READY "):
                return proc
        if proc.poll() is not None:
            raise AssertionError(f"node exited {proc.returncode}: {proc.stderr.read()}")
    proc.kill()
    raise AssertionError("node did not print READY within 60 s")


def state_of(cfg: NodeConfig) -> tuple[bytes, list[bytes]]:
    store = NodeStore.open(cfg.data_dir, maintenance=False)
    try:
        return store.merkle_root(), store.all_ids()
    finally:
        store.close()


def wait_converged(cfgs: list[NodeConfig], timeout: float = 120) -> tuple[bytes, list[bytes]]:
    deadline = time.monotonic() + timeout
    while True:
        states = [state_of(c) for c in cfgs]
        if all(s == states[0] for s in states):
            return states[0]
        if time.monotonic() > deadline:
            raise AssertionError(
                f"roots differ after {timeout} s: {[s[0].hex()[:12] for s in states]}"
            )
        time.sleep(0.3)


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_node_processes_converge_and_a_restarted_node_catches_up(tmp_path: Path) -> None:
    fed_dir = tmp_path / "fed"
    federation.init(fed_dir, "fed-mp")
    cfgs = [federation.add_node(fed_dir, f"n{i}") for i in range(3)]
    for cfg in cfgs:
        seed(fed_dir, cfg)
    first = [contribute(cfg, cfg.name) for cfg in cfgs]
    procs = [start(cfg, fed_dir) for cfg in cfgs]
    try:
        _, ids = wait_converged(cfgs)
        assert set(first) <= set(ids)

        assert stop(procs[2]) == 0  # SIGTERM: clean exit
        # a store has one writer, its node: n0 takes its new entry at its restart (a write
        # behind a running node's back is not what the node serves from)
        assert stop(procs[0]) == 0
        live = contribute(cfgs[0], "written while n2 is down")
        procs[0] = start(cfgs[0], fed_dir)
        offline = contribute(cfgs[2], "written on n2 while it is down")
        procs[2] = start(cfgs[2], fed_dir)
        _, ids = wait_converged(cfgs)
        assert {live, offline, *first} <= set(ids)
    finally:
        codes = [stop(p) for p in procs if p.poll() is None]
    assert all(code == 0 for code in codes)


def test_node_runner_rejects_plain_text_on_a_non_loopback_address(tmp_path: Path) -> None:
    fed_dir = tmp_path / "fed"
    federation.init(fed_dir, "fed-pt")
    cfg = federation.add_node(fed_dir, "n0")
    text = cfg.path.read_text().replace("plaintext_loopback = false", "plaintext_loopback = true")
    text = text.replace("bootstrap = []", 'bootstrap = ["10.9.8.7:7000"]')
    cfg.path.write_text(text)
    loaded = load_node_config(cfg.path)
    assert loaded.plaintext_loopback and loaded.bootstrap == ("10.9.8.7:7000",)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "crdtd.sync.node_runner", "--config", str(cfg.path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "10.9.8.7:7000" in done.stderr and "loopback" in done.stderr
