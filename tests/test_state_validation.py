"""Bad input is refused with a distinct typed error and leaves the state exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.schemes import ED25519
from crdtd.errors import (
    ChainError,
    DigestMismatchError,
    EquivocationError,
    MalformedEntryError,
    MissingPayloadError,
    NotMemberError,
    OversizedPayloadError,
    RevokedKeyError,
    SeqReuseError,
    SignatureError,
    TruncatedPayloadError,
    UnauthorizedError,
)
from crdtd.state import ApplyStatus, E4State
from crdtd.state.entry import Entry, EquivocationProof, Signature, make_contribution
from crdtd.state.testing import Federation, fingerprint
from crdtd.store.chunks import BytesSource, chunk_bytes, manifest_of

PAYLOAD = bytes(range(256)) * 400


@pytest.fixture
def fed() -> Federation:
    return Federation()


@pytest.fixture
def state(tmp_path: Path, fed: Federation) -> E4State:
    s = E4State.open(tmp_path / "node", fed.admin.public_keys, max_payload_size=1 << 20)
    for name in ("alice", "bob"):
        s.apply(fed.add_member(name))
    first = fed.contribute("alice", b"already here")
    s.apply(first, BytesSource(b"already here"))
    yield s
    s.close()


def refused(state: E4State, error: type[Exception], entry: Entry | bytes, source=None) -> Exception:
    before = fingerprint(state)
    with pytest.raises(error) as info:
        state.apply(entry, source)
    assert type(info.value) is error, f"expected exactly {error.__name__}, got {info.value!r}"
    assert fingerprint(state) == before
    return info.value


def test_forged_signature_is_refused(state: E4State, fed: Federation) -> None:
    good = fed.contribute("alice", PAYLOAD)
    forged_sig = NodeKey.generate().sign(good.signing_message)
    forged = Entry.from_parts(good.header_bytes, [Signature(ED25519, forged_sig)])
    err = refused(state, SignatureError, forged, BytesSource(PAYLOAD))
    assert good.id.hex()[:16] in str(err)


def test_header_tampered_after_signing_is_refused(state: E4State, fed: Federation) -> None:
    good = fed.contribute("alice", PAYLOAD, metadata={"num_examples": 10})
    tampered_header = good.header_bytes.replace(b"num_examples\x0a", b"num_examples\x0b")
    assert tampered_header != good.header_bytes
    tampered = Entry.from_parts(tampered_header, good.signatures)
    refused(state, SignatureError, tampered, BytesSource(PAYLOAD))


def test_non_member_key_is_refused(state: E4State, fed: Federation) -> None:
    stranger = NodeKey.generate()
    m = manifest_of(chunk_bytes(PAYLOAD))
    e = make_contribution(stranger, 1, None, "test/ns", m.digest, m.size)
    err = refused(state, NotMemberError, e, BytesSource(PAYLOAD))
    assert stranger.key_id.hex() in str(err)


def test_revoked_key_is_refused(state: E4State, fed: Federation) -> None:
    state.apply(fed.revoke("admin", fed.keys["bob"].key_id))
    e = fed.contribute("bob", PAYLOAD)
    refused(state, RevokedKeyError, e, BytesSource(PAYLOAD))


def test_truncated_payload_is_refused(state: E4State, fed: Federation) -> None:
    e = fed.contribute("alice", PAYLOAD)
    refused(state, TruncatedPayloadError, e, BytesSource(PAYLOAD[:-7]))


def test_payload_larger_than_declared_is_refused(state: E4State, fed: Federation) -> None:
    e = fed.contribute("alice", PAYLOAD)
    refused(state, OversizedPayloadError, e, BytesSource(PAYLOAD + b"extra"))


def test_payload_over_the_configured_maximum_is_refused(state: E4State, fed: Federation) -> None:
    big = b"x" * ((1 << 20) + 1)
    e = fed.contribute("alice", big)
    err = refused(state, OversizedPayloadError, e, BytesSource(big))
    assert "limit" in str(err)


def test_payload_with_wrong_bytes_is_a_digest_mismatch(state: E4State, fed: Federation) -> None:
    e = fed.contribute("alice", PAYLOAD)
    wrong = bytearray(PAYLOAD)
    wrong[1234] ^= 0x01
    refused(state, DigestMismatchError, e, BytesSource(bytes(wrong)))


def test_payload_that_is_nowhere_is_missing(state: E4State, fed: Federation) -> None:
    e = fed.contribute("alice", PAYLOAD)
    refused(state, MissingPayloadError, e, None)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\xc1", b"\x93\x01", b"\x93\x01\xc4\x03abc\x90trailing", b"not bytes" * 3],
)
def test_malformed_msgpack_is_refused(state: E4State, garbage: bytes) -> None:
    refused(state, MalformedEntryError, garbage)


def test_seq_reuse_is_refused_with_a_verifiable_proof(state: E4State, fed: Federation) -> None:
    seq, _ = fed.next_link(fed.keys["alice"])
    other = manifest_of(chunk_bytes(b"something else"))
    twin = make_contribution(fed.keys["alice"], seq - 1, None, "test/ns", other.digest, other.size)
    err = refused(state, EquivocationError, twin, BytesSource(b"something else"))
    assert isinstance(err, SeqReuseError)
    proof = err.proof
    assert isinstance(proof, EquivocationProof)
    proof.verify(fed.keys["alice"].public_keys)
    assert twin.id in (proof.a.id, proof.b.id)


def test_broken_chain_link_is_refused(state: E4State, fed: Federation) -> None:
    alice = fed.keys["alice"]
    state.apply(fed.contribute("alice", b"two"), BytesSource(b"two"))
    first = state.visible()[0]
    m = manifest_of(chunk_bytes(PAYLOAD))
    skip = make_contribution(alice, 5, first.id, "test/ns", m.digest, m.size)
    err = refused(state, ChainError, skip, BytesSource(PAYLOAD))
    assert "expected seq 4" in str(err)


def test_member_may_not_revoke_another_member(state: E4State, fed: Federation) -> None:
    refused(state, UnauthorizedError, fed.revoke("alice", fed.keys["bob"].key_id))


def test_member_may_not_erase_everything_of_another_author(state: E4State, fed: Federation) -> None:
    e = fed.remove("alice", target_author=fed.keys["bob"].key_id)
    refused(state, UnauthorizedError, e)


def test_only_the_admin_admits_members(state: E4State, fed: Federation) -> None:
    from crdtd.state.entry import make_membership

    seq, prev = fed.next_link(fed.keys["alice"])
    e = make_membership(fed.keys["alice"], seq, prev, NodeKey.generate().public_keys, "eve")
    refused(state, UnauthorizedError, e)


def test_every_refusal_has_its_own_error_type() -> None:
    kinds = [
        SignatureError,
        NotMemberError,
        RevokedKeyError,
        TruncatedPayloadError,
        OversizedPayloadError,
        DigestMismatchError,
        MalformedEntryError,
        EquivocationError,
        ChainError,
        UnauthorizedError,
        MissingPayloadError,
    ]
    assert len(set(kinds)) == len(kinds)


def test_a_good_entry_is_applied_and_a_replay_changes_nothing(
    state: E4State, fed: Federation
) -> None:
    e = fed.contribute("alice", PAYLOAD)
    assert state.apply(e, BytesSource(PAYLOAD)).status is ApplyStatus.APPLIED
    before = fingerprint(state)
    assert state.apply(e.to_bytes()).status is ApplyStatus.DUPLICATE
    assert fingerprint(state) == before
    assert state.store.read_payload(e.body.payload_digest) == PAYLOAD


class LyingSource:
    """The right manifest, but every chunk it sends is altered by `mangle` (a bad peer)."""

    def __init__(self, data: bytes, mangle) -> None:
        self.inner = BytesSource(data)
        self.mangle = mangle

    def get_manifest(self, payload_digest: bytes):
        return self.inner.get_manifest(payload_digest)

    def read_chunk(self, digest: bytes) -> bytes:
        return self.mangle(self.inner.read_chunk(digest))


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda c: c[:-1], TruncatedPayloadError),
        (lambda c: c + b"\x00", OversizedPayloadError),
        (lambda c: bytes([c[0] ^ 1]) + c[1:], DigestMismatchError),
    ],
)
def test_chunks_from_a_lying_source_are_refused(
    state: E4State, fed: Federation, mangle, error: type[Exception]
) -> None:
    big = bytes(range(256)) * 2000  # > 64 KiB: a chunk file, not an inline chunk
    e = fed.contribute("alice", big)
    refused(state, error, e, LyingSource(big, mangle))
    assert not (state.store.data_dir / "chunks" / "tmp").exists() or not any(
        (state.store.data_dir / "chunks" / "tmp").iterdir()
    )
