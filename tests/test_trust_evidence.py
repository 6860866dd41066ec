"""Evidence entries and proofs: every node can check a proof from its bytes alone."""

from __future__ import annotations

import msgpack
import pytest

from crdtd.crypto.schemes import ED25519
from crdtd.errors import EvidenceError
from crdtd.state.entry import SIGNING_DOMAIN, Entry, Signature, make_contribution
from crdtd.store.chunks import ChunkRef, Manifest, chunk_bytes, manifest_of
from crdtd.trust.evidence import (
    WEIGHT_UNIT,
    Evidence,
    ProofKind,
    Verdict,
    check_proof,
    decode_envelope,
    encode_envelope,
    evidence_entry,
    proof_for_bad_signature,
    proof_for_chain_fork,
    proof_for_equivocation,
    proof_for_manifest_mismatch,
    proof_for_signed_malformed,
)
from tests.trust_generators import Fed

FED = Fed(4)


def _ev(kind: ProofKind, data: bytes, subject: int = 1, dim: str = "integrity") -> Evidence:
    return FED.ev(0, subject, dim, -WEIGHT_UNIT, proof_kind=kind, proof_data=data)


def test_envelope_round_trips_and_carries_the_epoch():
    raw = encode_envelope(42, ProofKind.BAD_SIGNATURE, b"xyz")
    assert decode_envelope(raw) == (42, ProofKind.BAD_SIGNATURE, b"xyz")
    assert decode_envelope(b"") == (0, ProofKind.NONE, b"")


@pytest.mark.parametrize(
    "raw, what",
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([2, 0, 0, b""]), r"\[1, epoch, kind, data\]"),
        (msgpack.packb([1, -1, 0, b""]), r"\[1, epoch, kind, data\]"),
        (msgpack.packb([1, 0, 99, b""]), "unknown proof kind 99"),
    ],
)
def test_malformed_envelopes_are_refused_with_the_reason(raw, what):
    with pytest.raises(EvidenceError, match=what):
        decode_envelope(raw, "entry ab12")


def test_an_evidence_entry_decodes_into_its_observation():
    e = FED.entry(2, 3, "gossip", -250, epoch=7, reason="timed out")
    ev = Evidence.from_entry(e)
    assert (ev.observer, ev.subject, ev.dimension, ev.weight, ev.epoch, ev.reason) == (
        FED.kid(2),
        FED.kid(3),
        "gossip",
        -250,
        7,
        "timed out",
    )
    assert ev.id == e.id and not ev.self_proving


def test_a_contribution_is_not_evidence():
    c = make_contribution(FED.keys[0], 1, None, "model/x", b"\x00" * 32, 1)
    with pytest.raises(EvidenceError, match="contribution entry, not evidence"):
        Evidence.from_entry(c)


def test_a_proof_must_be_filed_under_its_own_dimension():
    with pytest.raises(EvidenceError, match="causality"):
        evidence_entry(
            FED.keys[0],
            1,
            None,
            FED.kid(1),
            "gossip",
            -1,
            epoch=0,
            proof_kind=ProofKind.CHAIN_FORK,
            proof_data=b"",
        )


def test_an_equivocation_proof_is_carried_bare_so_the_state_can_quarantine_it():
    ev = FED.equivocation(0, 1)
    assert ev.proof_kind is ProofKind.EQUIVOCATION and ev.epoch == 0
    finding = check_proof(ev, FED.members)
    assert finding.verdict is Verdict.PROVEN and finding.dimension == "causality"


def test_not_an_equivocation_cannot_be_packed_as_one():
    a, _ = FED.equivocation_pair(1)
    with pytest.raises(EvidenceError, match="not an equivocation"):
        proof_for_equivocation(a, a)


def test_a_chain_fork_is_proven_by_two_signed_links():
    k = FED.keys[1]
    first = make_contribution(k, 1, None, "model/x", b"\x01" * 32, 1)
    elsewhere = make_contribution(k, 1, None, "model/x", b"\x09" * 32, 1)
    second = make_contribution(k, 2, elsewhere.id, "model/x", b"\x02" * 32, 1)
    ev = _ev(ProofKind.CHAIN_FORK, proof_for_chain_fork(first, second), dim="causality")
    assert check_proof(ev, FED.members).verdict is Verdict.PROVEN
    honest_next = make_contribution(k, 2, first.id, "model/x", b"\x02" * 32, 1)
    with pytest.raises(EvidenceError, match="not a chain fork"):
        proof_for_chain_fork(first, honest_next)
    fake = msgpack.packb([first.to_bytes(), honest_next.to_bytes()], use_bin_type=True)
    assert check_proof(_ev(ProofKind.CHAIN_FORK, fake, dim="causality"), FED.members).verdict is (
        Verdict.FALSE
    )


def test_a_signed_malformed_header_convicts_its_signer():
    header = msgpack.packb([1, 1, FED.kid(1), 1, None, ["bad namespace!"]], use_bin_type=True)
    sig = FED.keys[1].sign(SIGNING_DOMAIN + header)
    ev = _ev(ProofKind.SIGNED_MALFORMED, proof_for_signed_malformed(header, sig))
    assert check_proof(ev, FED.members).verdict is Verdict.PROVEN
    wrong_signer = FED.keys[2].sign(SIGNING_DOMAIN + header)
    ev2 = _ev(ProofKind.SIGNED_MALFORMED, proof_for_signed_malformed(header, wrong_signer))
    assert check_proof(ev2, FED.members).verdict is Verdict.FALSE


def test_a_manifest_that_contradicts_the_signed_size_convicts_the_author():
    payload = b"x" * 1000
    m = manifest_of(chunk_bytes(payload))
    lying = make_contribution(FED.keys[1], 1, None, "model/x", m.digest, 999)
    ev = _ev(ProofKind.MANIFEST_MISMATCH, proof_for_manifest_mismatch(lying, m))
    assert check_proof(ev, FED.members).verdict is Verdict.PROVEN
    honest = make_contribution(FED.keys[1], 1, None, "model/x", m.digest, 1000)
    ev2 = _ev(ProofKind.MANIFEST_MISMATCH, proof_for_manifest_mismatch(honest, m))
    assert check_proof(ev2, FED.members).verdict is Verdict.FALSE


def test_a_chunk_whose_size_contradicts_the_manifest_convicts_the_author():
    chunk = b"y" * 10
    bogus = Manifest((ChunkRef(manifest_of([chunk]).chunks[0].digest, 11),))
    e = make_contribution(FED.keys[1], 1, None, "model/x", bogus.digest, 11)
    ev = _ev(ProofKind.MANIFEST_MISMATCH, proof_for_manifest_mismatch(e, bogus, chunk))
    assert check_proof(ev, FED.members).verdict is Verdict.PROVEN


def test_a_relayed_bad_signature_is_checked_but_counts_as_the_observers_word():
    good = make_contribution(FED.keys[2], 1, None, "model/x", b"\x05" * 32, 1)
    sig = bytes([good.signatures[0].value[0] ^ 1]) + good.signatures[0].value[1:]
    forged = Entry.from_parts(good.header_bytes, [Signature(ED25519, sig)])
    ev = _ev(ProofKind.BAD_SIGNATURE, proof_for_bad_signature(forged.to_bytes()))
    assert check_proof(ev, FED.members).verdict is Verdict.SUBJECTIVE
    ev_garbage = _ev(ProofKind.BAD_SIGNATURE, b"\x93\x01\x02")
    assert check_proof(ev_garbage, FED.members).verdict is Verdict.SUBJECTIVE
    ev_false = _ev(ProofKind.BAD_SIGNATURE, proof_for_bad_signature(good.to_bytes()))
    assert check_proof(ev_false, FED.members).verdict is Verdict.FALSE


def test_a_proof_about_an_unknown_key_waits():
    ev = FED.equivocation(0, 1)
    members = {k: v for k, v in FED.members.items() if k != FED.kid(1)}
    assert check_proof(ev, members).verdict is Verdict.PENDING


def test_an_equivocation_proof_about_someone_else_is_false():
    a, b = FED.equivocation_pair(2)
    ev = _ev(ProofKind.EQUIVOCATION, proof_for_equivocation(a, b), subject=1, dim="causality")
    assert check_proof(ev, FED.members).verdict is Verdict.FALSE
