"""Corrupted evidence envelopes, proofs of every kind and handshake messages: only typed
errors (or, for proofs, a verdict) come out, and a refused handshake leaves no challenge."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.errors import EvidenceError, PeerError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.state.entry import EquivocationProof
from crdtd.state.testing import Federation
from crdtd.store.chunks import chunk_bytes, manifest_of
from crdtd.sync.config import SyncConfig
from crdtd.sync.handshake import NONCE_SIZE, HandshakeServer, client_hello, verify_server_hello
from crdtd.trust.evidence import (
    Evidence,
    ProofKind,
    Verdict,
    check_proof,
    decode_envelope,
    encode_envelope,
    proof_for_bad_signature,
    proof_for_chain_fork,
    proof_for_equivocation,
    proof_for_manifest_mismatch,
    proof_for_signed_malformed,
)
from tests.mutations import QUICK_AND_DEEP, corrupted, mutations
from tests.sync_support import SyncFederation

FUZZ = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


def _proofs() -> tuple[Federation, dict[ProofKind, bytes]]:
    """One genuine proof of each kind against `alice`."""
    fed = Federation()
    fed.add_member("alice")
    a1 = fed.contribute("alice", b"one")
    a2 = fed.contribute("alice", b"two")
    key = fed.keys["alice"]
    from crdtd.state.entry import make_contribution

    twin = make_contribution(key, a1.seq, a1.prev, "test/ns", a2.payload_digest, a2.payload_size)
    skip = make_contribution(key, a2.seq, twin.id, "test/ns", a1.payload_digest, 3)
    wrong = manifest_of(chunk_bytes(b"not the payload"))
    return fed, {
        ProofKind.EQUIVOCATION: proof_for_equivocation(a1, twin),
        ProofKind.CHAIN_FORK: proof_for_chain_fork(a1, skip),
        ProofKind.SIGNED_MALFORMED: proof_for_signed_malformed(b"\x93\x01", key.sign(b"x")),
        ProofKind.MANIFEST_MISMATCH: proof_for_manifest_mismatch(a2, wrong, b"chunk"),
        ProofKind.BAD_SIGNATURE: proof_for_bad_signature(a1.to_bytes()),
        ProofKind.NONE: b"",
    }


FED, PROOFS = _proofs()
ALICE = FED.keys["alice"]


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_corrupted_evidence_envelopes_raise_only_evidence_errors(examples: int) -> None:
    envelopes = [
        encode_envelope(7, kind, data)
        for kind, data in PROOFS.items()
        if kind is not ProofKind.EQUIVOCATION
    ] + [PROOFS[ProofKind.EQUIVOCATION]]

    @settings(max_examples=examples, **FUZZ)
    @given(corrupted(st.sampled_from(envelopes)))
    def check(data: bytes) -> None:
        try:
            epoch, kind, proof = decode_envelope(data)
        except EvidenceError:
            return
        if kind is not ProofKind.EQUIVOCATION or data[:1] != b"\x94":
            assert isinstance(epoch, int) and isinstance(proof, bytes)

    check()


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_corrupted_proofs_of_every_kind_get_a_verdict_not_an_exception(examples: int) -> None:
    keys = {ALICE.key_id: ALICE.public_keys}
    observer = FED.admin.key_id

    @settings(max_examples=examples, **FUZZ)
    @given(st.sampled_from(sorted(PROOFS)), st.data())
    def check(kind: ProofKind, data: st.DataObject) -> None:
        proof = data.draw(corrupted(st.just(PROOFS[kind])))
        ev = Evidence(
            observer, 1, secrets.token_bytes(32), ALICE.key_id, "integrity", -1000, 1, kind, proof
        )
        finding = check_proof(ev, keys)
        assert finding.verdict in set(Verdict)

    check()


def test_genuine_proofs_of_every_kind_are_proven_or_subjective() -> None:
    keys = {ALICE.key_id: ALICE.public_keys}
    verdicts = {}
    for kind, proof in PROOFS.items():
        ev = Evidence(FED.admin.key_id, 1, bytes(32), ALICE.key_id, "integrity", -1, 1, kind, proof)
        verdicts[kind] = check_proof(ev, keys).verdict
    assert verdicts[ProofKind.EQUIVOCATION] is Verdict.PROVEN
    assert verdicts[ProofKind.CHAIN_FORK] is Verdict.PROVEN
    assert verdicts[ProofKind.NONE] is Verdict.SUBJECTIVE
    assert EquivocationProof.from_bytes(PROOFS[ProofKind.EQUIVOCATION]).author == ALICE.key_id


@pytest.fixture
def handshake(tmp_path: Path):
    tf = SyncFederation()
    for name in ("server", "client"):
        tf.add(name)
    s_state = tf.open_state(tmp_path / "s")
    c_state = tf.open_state(tmp_path / "c")
    server = HandshakeServer(tf.identity("server"), s_state, SyncConfig())
    yield tf, server, c_state
    s_state.close()
    c_state.close()


def _mutate_message(data: st.DataObject, msg, fields: dict) -> None:
    """Replace one to three fields of `msg` with hostile values of the field's type."""
    for name in data.draw(st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3)):
        kind = fields[name]
        current = getattr(msg, name)
        if kind == "bytes":
            damage = _blind_damage(bytes(current), structured=name == "membership")
            value = data.draw(st.one_of(st.binary(max_size=80), damage))
        elif kind == "str":
            value = data.draw(st.text(max_size=300))
        elif kind == "int":
            value = data.draw(st.integers(0, 2**32 - 1))
        else:  # repeated str
            value = data.draw(st.lists(st.text(max_size=20), max_size=5))
            del getattr(msg, name)[:]
            getattr(msg, name).extend(value)
            continue
        setattr(msg, name, value)


@st.composite
def _blind_damage(draw: st.DrawFn, current: bytes, structured: bool) -> bytes:
    """Damage to a value that may differ run to run (a fresh nonce, a signature over it): the
    draws never depend on its content, as Hypothesis needs to replay them. Only a
    `structured` value (a membership entry: deterministic for the test's keys) gets the
    content-aware `mutations`; telling it by its first byte failed when a nonce began so."""
    kind = draw(st.sampled_from(["flip", "truncate", "extend", "msgpack"]))
    pos = draw(st.integers(0, 1 << 16)) % max(1, len(current))
    if kind == "flip" and current:
        return (
            current[:pos]
            + bytes([current[pos] ^ (1 << draw(st.integers(0, 7)))])
            + current[pos + 1 :]
        )
    if kind == "truncate":
        return current[:pos]
    if kind == "extend":
        return current + draw(st.binary(min_size=1, max_size=8))
    return draw(mutations(current)) if structured else current[:pos]


HELLO_FIELDS = {
    "federation_id": "str",
    "protocol_version": "int",
    "key_id": "bytes",
    "membership": "bytes",
    "nonce": "bytes",
    "advertise": "str",
    "capabilities": "strs",
}


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_hostile_hellos_and_proofs_are_refused_with_peer_errors(handshake, examples) -> None:
    tf, server, _ = handshake
    client = tf.identity("client")

    @settings(max_examples=examples, **FUZZ)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        hello = client_hello(client, bytes(range(NONCE_SIZE)), [])
        valid = hello.SerializeToString()
        _mutate_message(data, hello, HELLO_FIELDS)
        pending = len(server._challenges)
        try:
            server.hello(hello, None)
        except PeerError:
            assert len(server._challenges) == pending
        if hello.SerializeToString() != valid:
            proof = pb.ProveRequest(
                server_nonce=data.draw(st.binary(max_size=40)),
                signature=data.draw(st.binary(max_size=70)),
            )
            with pytest.raises(PeerError):
                server.prove(proof, None)

    check()


SIGNED_REPLY_FIELDS = ("federation_id", "protocol_version", "key_id", "nonce", "signature")


@pytest.mark.parametrize("examples", QUICK_AND_DEEP)
def test_hostile_server_replies_are_refused_with_peer_errors(handshake, examples) -> None:
    tf, server, c_state = handshake
    client = tf.identity("client")
    reply_fields = {**HELLO_FIELDS, "signature": "bytes"}

    @settings(max_examples=examples, **FUZZ)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        hello = client_hello(client, secrets.token_bytes(NONCE_SIZE), [])
        reply = server.hello(hello, None)
        signed = [getattr(reply, f) for f in SIGNED_REPLY_FIELDS]
        _mutate_message(data, reply, reply_fields)
        try:
            verify_server_hello(client, hello, reply, c_state, "server:1")
        except PeerError:
            return
        # advertise, capabilities and an omitted membership are not signed: they may change
        assert [getattr(reply, f) for f in SIGNED_REPLY_FIELDS] == signed

    check()
