"""Batched apply: entries validated one by one, committed together; a refused entry is rolled
back alone (its savepoint), any other failure rolls back the whole batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from crdtd.crypto.keys import NodeKey
from crdtd.errors import DigestMismatchError, EquivocationError, SignatureError, ValidationError
from crdtd.state import ApplyStatus, E4State
from crdtd.state.entry import Entry, make_contribution
from crdtd.state.testing import Federation, fingerprint
from crdtd.store.chunks import Manifest, chunk_bytes, chunk_digest, manifest_of
from crdtd.store.merkle import root_from_ids

ADMIN = NodeKey.generate()


class Source:
    """Payloads by digest; `spoil` names chunk digests answered with wrong bytes."""

    def __init__(self, *payloads: bytes) -> None:
        self.manifests: dict[bytes, Manifest] = {}
        self.chunks: dict[bytes, bytes] = {}
        self.spoil: set[bytes] = set()
        self.broken = False
        for p in payloads:
            pieces = chunk_bytes(p)
            m = manifest_of(pieces)
            self.manifests[m.digest] = m
            self.chunks.update({chunk_digest(c): c for c in pieces})

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        return self.manifests[payload_digest]

    def read_chunk(self, digest: bytes) -> bytes:
        if self.broken:
            raise RuntimeError("disk on fire")  # not a validation error
        data = self.chunks[digest]
        return bytes(len(data)) if digest in self.spoil else data


def model(seed: int, floats: int) -> bytes:
    """A safetensors payload of two tensors: three chunks (header, one per tensor)."""
    rng = np.random.default_rng(seed)
    return bytes(save({f"t{i}": rng.standard_normal(floats, dtype=np.float32) for i in range(2)}))


@pytest.fixture
def fed() -> Federation:
    return Federation(admin=ADMIN)


def fresh(fed: Federation, path: Path) -> E4State:
    """A state where alice and bob are members."""
    state = E4State.open(path, ADMIN.public_keys)
    for name in ("alice", "bob"):
        state.apply(fed.add_member(name))
    return state


@pytest.mark.parametrize("floats", [200, 40_000], ids=["inline-chunks", "chunk-files"])
def test_an_entry_refused_midway_through_its_payload_is_rolled_back_alone(
    fed: Federation, tmp_path: Path, floats: int
) -> None:
    payloads = [model(i, floats) for i in range(3)]
    state = fresh(fed, tmp_path / "n")
    good_a = fed.contribute("alice", payloads[0])
    bad = fed.contribute("bob", payloads[1])
    good_b = fed.contribute("alice", payloads[2])
    source = Source(*payloads)
    last = source.manifests[bad.body.payload_digest].chunks[-1].digest
    source.spoil.add(last)  # the first chunks are stored before this one fails
    results = state.apply_many([good_a, bad, good_b], source)
    assert [getattr(r, "status", None) for r in results] == [
        ApplyStatus.APPLIED,
        None,
        ApplyStatus.APPLIED,
    ]
    assert isinstance(results[1], DigestMismatchError)
    assert {e.id for e in state.visible()} == {good_a.id, good_b.id}
    assert state.merkle_root() == root_from_ids(state.store.all_ids())
    kept = set(state.store.iter_chunk_digests())
    wanted = {
        r.digest for e in (good_a, good_b) for r in source.manifests[e.body.payload_digest].chunks
    }
    assert kept == wanted  # nothing of the refused payload stays, inline or as a file
    source.spoil.clear()
    assert state.apply(bad, source).status is ApplyStatus.APPLIED
    state.close()


def test_a_failure_that_is_not_a_refusal_rolls_back_the_whole_batch(
    fed: Federation, tmp_path: Path
) -> None:
    payloads = [model(i, 40_000) for i in range(2)]
    state = fresh(fed, tmp_path / "n")
    first = fed.contribute("alice", payloads[0])
    second = fed.contribute("bob", payloads[1])
    root, count = state.merkle_root(), state.store.entry_count()
    source = Source(*payloads)
    calls = 0

    def flaky(digest: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls > 3:  # first entry's chunks are written, then the second one fails
            raise RuntimeError("disk on fire")
        return source.chunks[digest]

    source.read_chunk = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        state.apply_many([first, second], source)
    assert state.merkle_root() == root and state.store.entry_count() == count
    assert state.store.iter_chunk_digests() == []
    state.close()
    reopened = E4State.open(tmp_path / "n")
    assert reopened.store.entry_count() == count
    reopened.close()


def test_duplicates_and_chains_inside_one_batch(fed: Federation, tmp_path: Path) -> None:
    state = fresh(fed, tmp_path / "n")
    entries: list[Entry] = [fed.contribute("alice", bytes([i]) * 50) for i in range(4)]
    source = Source(*[bytes([i]) * 50 for i in range(4)])
    batch = [entries[3], entries[1], entries[0], entries[0], entries[2]]
    results = state.apply_many(batch, source)
    statuses = [r.status for r in results]  # type: ignore[union-attr]
    assert statuses[:2] == [ApplyStatus.HELD, ApplyStatus.HELD]
    assert statuses[2] is ApplyStatus.APPLIED and statuses[3] is ApplyStatus.DUPLICATE
    assert set(results[2].released) == {entries[1].id}  # type: ignore[union-attr]
    assert {e.id for e in state.visible()} == {e.id for e in entries}
    assert state.held_ids() == []
    state.close()


def test_a_run_of_contributions_ends_as_one_entry_at_a_time_would_leave_it(
    fed: Federation, tmp_path: Path
) -> None:
    """Bulk runs (lookups once per run, one write per table) against the reference path,
    with everything that must leave a run: duplicates, a forged signature, an equivocation,
    a missing predecessor, a spoiled chunk, a payload the source lacks, a chunk file."""
    members = [fed.add_member(name) for name in ("alice", "bob")]
    small = [bytes([i]) * 60 for i in range(40)]
    chain = [fed.contribute("alice", p) for p in small[:30]]
    bobs = [fed.contribute("bob", p) for p in small[30:36]]
    big = model(7, 40_000)  # two chunk files
    with_file = fed.contribute("bob", big)
    after_file = fed.contribute("bob", small[36])
    key = fed.key("alice")
    twin = make_contribution(key, 5, chain[3].id, "test/ns", *_digest(small[37]))
    gap = fed.contribute("alice", small[38])  # its predecessor never comes
    orphan = fed.contribute("alice", small[39])
    lacking = make_contribution(key, 1, None, "test/other", *_digest(b"never offered" * 9))
    source = Source(*small[:37], small[37], small[38], small[39], big)
    source.spoil.add(chunk_digest(small[33]))  # bobs[3]
    items = [
        *chain[:10],
        *(chain[4], forged(chain[10]), twin),
        *chain[10:20],
        *bobs,
        *(with_file, after_file, chain[20], orphan, lacking),
        *chain[21:],
    ]
    del gap
    one = E4State.open(tmp_path / "one", ADMIN.public_keys)
    many = E4State.open(tmp_path / "many", ADMIN.public_keys)
    for m in members:
        one.apply(m)
        many.apply(m)
    one.bulk = False
    singly = []
    for e in items:
        try:
            singly.append(one.apply(e, source).status)
        except ValidationError as exc:
            singly.append(type(exc))
    batched = [
        type(r) if isinstance(r, ValidationError) else r.status
        for r in many.apply_many(items, source)
    ]
    assert batched == singly
    assert ApplyStatus.HELD in singly and EquivocationError in singly
    assert SignatureError in singly and DigestMismatchError in singly
    assert fingerprint(many) == fingerprint(one)
    assert many.merkle_root() == root_from_ids(many.store.all_ids())
    one.close()
    many.close()


def _digest(payload: bytes) -> tuple[bytes, int]:
    m = manifest_of(chunk_bytes(payload))
    return m.digest, m.size


def forged(e: Entry) -> Entry:
    """The same header with a signature that does not verify."""
    return Entry.from_parts(e.header_bytes, [[s.scheme, bytes(64)] for s in e.signatures])
