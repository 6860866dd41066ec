"""Corrupted entries, proofs, manifests and payloads against a real E4State on a real SQLite
file: only typed errors come out, and a refused input leaves the state exactly as it was."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.errors import CrdtdError, MalformedEntryError, MalformedManifestError
from crdtd.state import E4State
from crdtd.state.entry import Entry, EquivocationProof, make_contribution, make_evidence
from crdtd.state.testing import Federation, fingerprint
from crdtd.store.chunks import BytesSource, Manifest, chunk_bytes, manifest_of
from crdtd.trust.evidence import check_proof, proof_for_equivocation
from crdtd.trust.scores import compute_scores, decode_evidence
from tests.entry_generators import entries
from tests.mutations import QUICK_AND_DEEP, corrupted

PAYLOAD = bytes(range(256)) * 300
FUZZ = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


class World:
    """A federation with two members and some history, and entries that would apply next."""

    def __init__(self, root: Path) -> None:
        self.fed = Federation()
        self.state = E4State.open(root / "node", self.fed.admin.public_keys)
        for name in ("alice", "bob"):
            self.state.apply(self.fed.add_member(name))
        self.old = self.fed.contribute("bob", b"bob's data")
        self.state.apply(self.old, BytesSource(b"bob's data"))
        alice = self.fed.keys["alice"]
        seq, prev = self.state.chain_next(alice.key_id)
        manifest = manifest_of(chunk_bytes(PAYLOAD))
        fork = manifest_of(chunk_bytes(PAYLOAD[:-1]))
        self.contribution = make_contribution(
            alice, seq, prev, "model/x", manifest.digest, manifest.size, metadata={"n": 3}
        )
        self.twin = make_contribution(alice, seq, prev, "model/x", fork.digest, fork.size)
        self.proof = EquivocationProof.detect(self.contribution, self.twin)
        assert self.proof is not None
        self.next_ones = [
            self.contribution,
            self.fed.remove("bob", [self.old.id]),
            self.fed.add_member("carol"),
            self.fed.evidence("alice", self.old.author, weight=-5),
        ]
        self.source = BytesSource(PAYLOAD)


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    yield w
    w.state.close()


def _refused_unchanged(state: E4State, data: bytes, source: BytesSource) -> None:
    before = fingerprint(state)
    with pytest.raises(CrdtdError):
        state.apply(data, source)
    assert fingerprint(state) == before


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_corrupted_entry_bytes_are_refused_with_typed_errors_and_change_nothing(
    world: World, examples: int
) -> None:
    originals = [e.to_bytes() for e in world.next_ones]

    @settings(max_examples=examples, **FUZZ)
    @given(corrupted(st.sampled_from(originals)))
    def check(data: bytes) -> None:
        if data in originals:
            return
        _refused_unchanged(world.state, data, world.source)

    check()


@settings(max_examples=150, deadline=None, database=None)
@given(corrupted(entries().map(Entry.to_bytes)))
def test_corrupted_entries_of_every_kind_decode_strictly_or_raise_malformed(data: bytes) -> None:
    try:
        entry = Entry.from_bytes(data)
    except MalformedEntryError:
        return
    assert entry.to_bytes() == data
    with contextlib.suppress(MalformedEntryError):
        EquivocationProof.from_bytes(data)


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_corrupted_equivocation_proofs_raise_only_malformed_entry_errors(
    world: World, examples: int
) -> None:
    valid = world.proof.to_bytes()
    bare = proof_for_equivocation(world.contribution, world.twin)

    @settings(max_examples=examples, **FUZZ)
    @given(corrupted(st.sampled_from([valid, bare])))
    def check(data: bytes) -> None:
        try:
            proof = EquivocationProof.from_bytes(data)
        except MalformedEntryError:
            return
        assert proof.to_bytes() == data
        proof.is_valid(world.fed.keys["alice"].public_keys)

    check()


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_evidence_carrying_corrupted_proofs_is_checked_without_untyped_errors(
    world: World, examples: int
) -> None:
    bob = world.fed.keys["bob"]
    alice = world.fed.keys["alice"].key_id
    bare = proof_for_equivocation(world.contribution, world.twin)

    @settings(max_examples=examples, **FUZZ)
    @given(corrupted(st.just(bare)), st.sampled_from(["causality", "integrity"]))
    def check(proof: bytes, dimension: str) -> None:
        seq, prev = world.state.chain_next(bob.key_id)
        try:
            entry = make_evidence(bob, seq, prev, alice, dimension, -1000, proof=proof)
        except MalformedEntryError:
            return  # an oversized proof cannot even be signed
        before = fingerprint(world.state)
        try:
            world.state.apply(entry)
        except CrdtdError:
            assert fingerprint(world.state) == before
        members = world.state.members()
        evidence, _ignored = decode_evidence([entry])  # its proof envelope, however broken
        for ev in evidence:
            check_proof(ev, members)
        compute_scores(evidence, members)

    check()


class _CorruptSource:
    """A peer that serves a corrupted manifest or corrupted chunks for a valid entry."""

    def __init__(self, manifest: bytes, chunks: dict[bytes, bytes]) -> None:
        self.manifest, self.chunks = manifest, chunks

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        return Manifest.from_bytes(self.manifest)

    def read_chunk(self, digest: bytes) -> bytes:
        return self.chunks.get(digest, b"")


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_corrupted_manifests_and_chunks_from_a_peer_are_refused_and_change_nothing(
    world: World, examples: int
) -> None:
    chunks = chunk_bytes(PAYLOAD)
    manifest = manifest_of(chunks).to_bytes()
    by_digest = {ref.digest: c for ref, c in zip(manifest_of(chunks).chunks, chunks, strict=True)}
    wire = world.contribution.to_bytes()

    @settings(max_examples=examples, **FUZZ)
    @given(corrupted(st.just(manifest)), st.integers(0, len(chunks) - 1), st.booleans())
    def check(bad_manifest: bytes, which: int, corrupt_chunk: bool) -> None:
        served = dict(by_digest)
        if corrupt_chunk:
            digest = manifest_of(chunks).chunks[which].digest
            served[digest] = served[digest][:-1] + bytes([served[digest][-1] ^ 1])
            source = _CorruptSource(manifest, served)
        else:
            if bad_manifest == manifest:
                return
            source = _CorruptSource(bad_manifest, served)
        _refused_unchanged(world.state, wire, source)  # type: ignore[arg-type]

    check()


@settings(max_examples=300, deadline=None, database=None)
@given(
    corrupted(
        st.lists(st.binary(min_size=1, max_size=64), max_size=5).map(
            lambda cs: manifest_of(cs).to_bytes()
        )
    )
)
def test_corrupted_manifest_bytes_raise_only_malformed_manifest_errors(data: bytes) -> None:
    try:
        m = Manifest.from_bytes(data)
    except MalformedManifestError:
        return
    assert m.to_bytes() == data
