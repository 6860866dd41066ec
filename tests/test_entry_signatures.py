"""Entry signatures (Ed25519, hybrid ML-DSA-65) and equivocation proofs."""

from __future__ import annotations

import functools
import hashlib

import msgpack
import pytest

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import ED25519, HYBRID, ML_DSA_65, PublicKeys
from crdtd.errors import MalformedEntryError, SignatureError
from crdtd.state.entry import (
    Entry,
    EquivocationProof,
    Signature,
    make_evidence,
    make_membership,
    make_revocation,
)
from tests.entry_generators import contribution, fixed_keys


@functools.cache
def pq_key() -> NodeKey:
    return NodeKey.generate(pq_enabled=True)


def with_header(entry: Entry, **changes: object) -> Entry:
    """`entry` with a re-encoded header field but the ORIGINAL signatures."""
    header = msgpack.unpackb(entry.header_bytes)
    body = header[5]
    for index, value in changes.items():
        body[int(index.lstrip("b"))] = value
    return Entry.from_parts(msgpack.packb(header), entry.signatures)


def flip(sig: bytes) -> bytes:
    return bytes([sig[0] ^ 1]) + sig[1:]


def test_signed_entry_verifies_under_its_author_key() -> None:
    key = fixed_keys()[0]
    contribution(key, 1, None).verify_signatures(key.public_keys)


def test_tampered_header_fails_signature_check() -> None:
    key = fixed_keys()[0]
    e = contribution(key, 1, None, b"abc")
    forged = with_header(e, b3=e.payload_size + 1)
    assert forged.id != e.id
    with pytest.raises(SignatureError, match="ed25519 signature does not verify"):
        forged.verify_signatures(key.public_keys)


def test_tampered_signature_fails_signature_check() -> None:
    key = fixed_keys()[0]
    e = contribution(key, 1, None)
    bad = Entry.from_parts(e.header_bytes, [Signature(ED25519, flip(e.signatures[0].value))])
    with pytest.raises(SignatureError):
        bad.verify_signatures(key.public_keys)


def test_another_members_key_is_not_the_author() -> None:
    a, b = fixed_keys()[:2]
    with pytest.raises(SignatureError, match="is not the author"):
        contribution(a, 1, None).verify_signatures(b.public_keys)


def test_hybrid_entry_verifies_under_hybrid_policy() -> None:
    key = pq_key()
    e = contribution(key, 1, None)
    assert [s.scheme for s in e.signatures] == [ED25519, ML_DSA_65]
    e.verify_signatures(key.public_keys, HYBRID)
    e.verify_signatures(key.public_keys, "ed25519")
    assert Entry.from_bytes(e.to_bytes()) == e


def test_stripped_pq_signature_is_refused_when_policy_requires_it() -> None:
    key = pq_key()
    e = contribution(key, 1, None)
    stripped = Entry.from_parts(e.header_bytes, e.signatures[:1])
    stripped.verify_signatures(key.public_keys, "ed25519")
    with pytest.raises(SignatureError, match="missing required ml-dsa-65"):
        stripped.verify_signatures(key.public_keys, HYBRID)


def test_tampered_pq_signature_is_refused() -> None:
    key = pq_key()
    e = contribution(key, 1, None)
    bad_sigs = [e.signatures[0], Signature(ML_DSA_65, flip(e.signatures[1].value))]
    bad = Entry.from_parts(e.header_bytes, bad_sigs)
    with pytest.raises(SignatureError, match="ml-dsa-65 signature does not verify"):
        bad.verify_signatures(key.public_keys, HYBRID)


def test_hybrid_policy_needs_the_authors_pq_public_key() -> None:
    key = fixed_keys()[0]
    e = contribution(key, 1, None)
    with pytest.raises(SignatureError, match="ml-dsa-65"):
        e.verify_signatures(key.public_keys, HYBRID)


def test_membership_entry_carries_member_keys_and_verifies_under_admin() -> None:
    admin, member = pq_key(), NodeKey.generate(pq_enabled=True)
    m = make_membership(admin, 1, None, member.public_keys, "site-a", policy=HYBRID)
    m.verify_signatures(admin.public_keys, HYBRID)
    assert m.member == member.key_id and m.issued_by == admin.key_id
    assert m.as_membership().public_keys == member.public_keys
    with pytest.raises(SignatureError):
        m.verify_signatures(member.public_keys, HYBRID)


def test_revocation_may_name_a_successor() -> None:
    old, new = fixed_keys()[:2]
    r = make_revocation(old, 3, hashlib.sha256(b"p").digest(), old.key_id, successor=new.key_id)
    r.verify_signatures(old.public_keys)
    assert (r.revoked, r.successor) == (old.key_id, new.key_id)
    with pytest.raises(MalformedEntryError, match="successor"):
        make_revocation(old, 1, None, old.key_id, successor=old.key_id)


# -- equivocation -----------------------------------------------------------------------------


def forked_pair(key: NodeKey) -> tuple[Entry, Entry]:
    return contribution(key, 5, b"\x01" * 32, b"one"), contribution(key, 5, b"\x01" * 32, b"two")


def test_equivocation_proof_verifies_with_the_authors_public_key() -> None:
    key = fixed_keys()[2]
    a, b = forked_pair(key)
    proof = EquivocationProof.detect(a, b, key.public_bytes)
    assert proof is not None and proof.author == key.key_id
    proof.verify()
    proof.verify(key.public_keys)
    again = EquivocationProof.from_bytes(proof.to_bytes())
    assert again.to_bytes() == proof.to_bytes()
    again.verify()
    assert EquivocationProof(b, a, key.public_bytes).to_bytes() == proof.to_bytes()


def test_equivocation_proof_travels_inside_an_evidence_entry() -> None:
    accused, observer = fixed_keys()[2], fixed_keys()[0]
    proof = EquivocationProof(*forked_pair(accused), author_public=accused.public_bytes)
    ev = make_evidence(
        observer, 1, None, accused.key_id, "integrity", -1000, proof=proof.to_bytes()
    )
    EquivocationProof.from_bytes(Entry.from_bytes(ev.to_bytes()).proof).verify()


def test_same_entry_twice_or_different_seq_is_no_equivocation() -> None:
    key = fixed_keys()[2]
    a, _ = forked_pair(key)
    later = contribution(key, 6, a.id, b"three")
    assert EquivocationProof.detect(a, a) is None
    assert EquivocationProof.detect(a, later) is None
    with pytest.raises(MalformedEntryError, match="different seq"):
        EquivocationProof(a, later, key.public_bytes).verify()


def test_forged_equivocation_proof_does_not_verify() -> None:
    key, other = fixed_keys()[2], fixed_keys()[1]
    a, b = forked_pair(key)
    forged_b = Entry.from_parts(b.header_bytes, [Signature(ED25519, flip(b.signatures[0].value))])
    assert not EquivocationProof(a, forged_b, key.public_bytes).is_valid()
    # a header "by" key, but signed by another key: the signature cannot verify
    fake = contribution(other, 5, b"\x01" * 32, b"two")
    fake_header = msgpack.unpackb(fake.header_bytes)
    fake_header[2] = key.key_id
    impostor = Entry.from_parts(msgpack.packb(fake_header), fake.signatures)
    with pytest.raises(SignatureError, match="signature fails"):
        EquivocationProof(a, impostor, key.public_bytes).verify()
    with pytest.raises(SignatureError, match="not the author"):
        EquivocationProof(a, b, other.public_bytes).verify()
    with pytest.raises(SignatureError, match="no author public key"):
        EquivocationProof(a, b).verify()


def test_public_keys_reject_wrong_sizes() -> None:
    with pytest.raises(ValueError):
        PublicKeys(b"x" * 31)
    with pytest.raises(ValueError):
        PublicKeys(b"x" * 32, b"y" * 10)
