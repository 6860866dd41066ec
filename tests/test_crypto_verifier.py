"""Signatures checked in worker processes answer exactly what checking here answers, and only
what passed every check is remembered (the rest is checked again, and refused, on apply)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crdtd.crypto import verifier
from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import ED25519_ONLY, HYBRID
from crdtd.errors import SignatureError
from crdtd.state.e4 import VerifiedSignatures
from crdtd.state.entry import Entry, make_contribution
from tests.node_support import InProcessNode, federation


@pytest.fixture(scope="module")
def workers() -> verifier.SignatureWorkers:
    w = verifier.SignatureWorkers(2)
    yield w
    w.close()


def test_worker_processes_answer_as_verifying_here_does(
    workers: verifier.SignatureWorkers,
) -> None:
    key, other = NodeKey.generate(), NodeKey.generate()
    triples = []
    for i in range(verifier.POOL_MIN + 40):
        msg = os.urandom(64 + i % 7)
        triples.append((key.public_bytes, msg, key.sign(msg)))
    triples[3] = (other.public_bytes, *triples[3][1:])  # someone else's key
    triples[7] = (*triples[7][:2], bytes(64))  # a signature of zeros
    triples[9] = (triples[9][0], triples[9][1] + b"x", triples[9][2])  # another message
    triples[11] = (triples[11][0][:31], *triples[11][1:])  # a key of the wrong size
    answers = workers.verify_many(triples)
    assert answers == verifier.check_here(triples)
    assert [i for i, ok in enumerate(answers) if not ok] == [3, 7, 9, 11]
    assert workers._procs  # the list was long enough to go to the workers


def test_only_entries_that_pass_every_check_are_remembered() -> None:
    key = NodeKey.generate()
    good = [
        make_contribution(key, 1 + i, None if i == 0 else b"\1" * 32, "t/x", os.urandom(32), 9)
        for i in range(2)
    ]
    forged = Entry.from_parts(good[1].header_bytes, [["ed25519", bytes(64)]])
    known = VerifiedSignatures()
    known.verify_all([(e, [key.public_keys]) for e in [*good, forged]], ED25519_ONLY)
    known.verify(good[0], key.public_keys, ED25519_ONLY)  # remembered: no error
    with pytest.raises(SignatureError):
        known.verify(forged, key.public_keys, ED25519_ONLY)
    # a hybrid policy still needs the ML-DSA signature, checked in this process
    hybrid = VerifiedSignatures()
    hybrid.verify_all([(good[0], [key.public_keys])], HYBRID)
    with pytest.raises(SignatureError):
        hybrid.verify(good[0], key.public_keys, HYBRID)


def signed_triples(n: int) -> list[tuple[bytes, bytes, bytes]]:
    key = NodeKey.generate()
    return [(key.public_bytes, b"m%d" % i, key.sign(b"m%d" % i)) for i in range(n)]


def gone(pids: list[int], within: float = 20.0) -> bool:
    """True once none of `pids` is a live (not zombie) process."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.append(pid)
        if not alive:
            return True
        time.sleep(0.05)
    return False


WORKER_OWNER = """
import sys
from crdtd.crypto import verifier
from tests.test_crypto_verifier import signed_triples
w = verifier.SignatureWorkers(2)
assert all(w.verify_many(signed_triples(verifier.POOL_MIN)))
print(*[p.pid for p in w._procs], flush=True)
sys.stdin.read()
"""


def test_workers_exit_when_their_daemon_is_killed() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", WORKER_OWNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert owner.stdout is not None
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 2 and not gone(pids, within=0.2)
    owner.send_signal(signal.SIGKILL)  # no atexit, no close: the pipes close with it
    owner.wait(timeout=30)
    assert gone(pids)


def test_stopping_a_daemon_stops_the_signature_workers(tmp_path: Path) -> None:
    (config,) = federation(tmp_path, 1)
    node = InProcessNode(config)
    try:
        workers = verifier.shared()
        assert all(workers.verify_many(signed_triples(verifier.POOL_MIN)))
        pids = [p.pid for p in workers._procs]
        assert pids
    finally:
        node.stop()
    assert workers._procs == []
    assert gone(pids)
    # a later check (another node in this process) starts them again
    assert all(workers.verify_many(signed_triples(verifier.POOL_MIN)))
    workers.close()
