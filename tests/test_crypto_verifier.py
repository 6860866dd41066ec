"""Signatures checked in worker processes answer exactly what checking here answers, and only
what passed every check is remembered (the rest is checked again, and refused, on apply)."""

from __future__ import annotations

import os

import pytest

from crdtd.crypto import verifier
from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import ED25519_ONLY, HYBRID
from crdtd.errors import SignatureError
from crdtd.state.e4 import VerifiedSignatures
from crdtd.state.entry import Entry, make_contribution


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
