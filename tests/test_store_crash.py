"""kill -9 a writer at random moments: every insert it acknowledged is there, fsck is clean."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from crdtd.crypto.keys import NodeKey
from crdtd.state import E4State
from crdtd.state.entry import make_contribution, make_membership
from crdtd.store import sqlite as db
from crdtd.store.chunks import BytesSource
from crdtd.store.fsck import fsck

REPO = Path(__file__).resolve().parents[1]


def payload_for(seq: int) -> bytes:
    """Mostly small payloads, every fifth one ~1.5 MB so kills also land mid chunk write."""
    size = 1_500_000 if seq % 5 == 0 else 200 + seq % 300
    return random.Random(seq).randbytes(size)


def writer_main(data_dir: str, key_file: str, count: int) -> None:
    """The victim: insert `count` contributions, printing each id once its commit returned."""
    key = NodeKey.load(key_file)
    state = E4State.open(data_dir)
    out = sys.stdout.fileno()
    os.write(out, b"ready\n")
    for _ in range(count):
        seq, prev = state.chain_next(key.key_id)
        data = payload_for(seq)
        src = BytesSource(data)
        m = src.manifest
        e = make_contribution(key, seq, prev, "crash/test", m.digest, m.size)
        state.apply(e, src)
        os.write(out, e.id.hex().encode() + b"\n")  # one write: a line is whole or absent


def setup(tmp_path: Path) -> tuple[Path, Path]:
    admin, member = NodeKey.generate(), NodeKey.generate()
    key_file = tmp_path / "member.key"
    member.save(key_file)
    data_dir = tmp_path / "data"
    with E4State.open(data_dir, admin.public_keys) as s:
        s.apply(make_membership(admin, 1, None, member.public_keys, "victim"))
    return data_dir, key_file


def run_and_kill(data_dir: Path, key_file: Path, rng: random.Random, count: int) -> list[str]:
    """Start the writer, kill -9 it a random time after it is ready; return the acked ids."""
    code = "import sys; from tests.test_store_crash import writer_main; writer_main(*sys.argv[1:3], int(sys.argv[3]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(data_dir), str(key_file), str(count)],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    lines: list[bytes] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line == b"ready\n":
                ready.set()
            else:
                lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert ready.wait(60), "writer did not start"
    time.sleep(rng.uniform(0.05, 0.8))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader.join(10)
    return [ln.decode().strip() for ln in lines if ln.endswith(b"\n")]


def crash_rounds(tmp_path: Path, rounds: int, seed: int) -> int:
    data_dir, key_file = setup(tmp_path)
    rng = random.Random(seed)
    acked: list[str] = []
    for _ in range(rounds):
        acked += run_and_kill(data_dir, key_file, rng, count=400)
        with E4State.open(data_dir) as s:
            for hex_id in acked:
                eid = bytes.fromhex(hex_id)
                assert s.store.entry_status(eid) == db.LIVE, f"acknowledged {hex_id} lost"
                e = s.store.get_entry(eid)
                assert s.store.read_payload(e.body.payload_digest) == payload_for(e.seq)
            assert len(s.visible()) >= len(acked)
        report = fsck(data_dir)
        assert report.ok, [str(p) for p in report.problems]
    return len(acked)


def test_acknowledged_inserts_survive_kill_9(tmp_path: Path) -> None:
    assert crash_rounds(tmp_path, rounds=4, seed=1) > 20


@pytest.mark.slow
def test_acknowledged_inserts_survive_many_kill_9s(tmp_path: Path) -> None:
    assert crash_rounds(tmp_path, rounds=20, seed=2) > 200
