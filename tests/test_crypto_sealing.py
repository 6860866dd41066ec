"""Encrypted-namespace primitives: X25519 keys derived from members' Ed25519 keys, key
envelopes only named members open, and sealed payloads that open only whole and untouched."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.crypto.keys import NodeKey
from crdtd.crypto.sealing import (
    HEADER_SIZE,
    SEGMENT,
    KeyEnvelope,
    key_id_of,
    new_namespace_key,
    open_sealed,
    seal_file,
    sealed_key_id,
    x25519_private,
    x25519_public,
)
from crdtd.errors import NamespaceKeyError, SealedPayloadError


def test_the_x25519_key_from_the_public_ed25519_key_matches_the_private_one() -> None:
    for _ in range(8):
        key = NodeKey.generate()
        derived = x25519_private(key).public_key().public_bytes_raw()
        assert x25519_public(key.public_bytes) == derived


def test_only_named_members_open_an_envelope() -> None:
    a, b, c = (NodeKey.generate() for _ in range(3))
    key = new_namespace_key()
    env = KeyEnvelope.seal("model/x", 1, key, {a.key_id: a.public_bytes, b.key_id: b.public_bytes})
    again = KeyEnvelope.from_bytes(env.to_bytes())
    assert again == env and set(env.members) == {a.key_id, b.key_id}
    assert again.open(a) == key and again.open(b) == key and again.key_id == key_id_of(key)
    assert again.open(c) is None


def test_a_tampered_envelope_is_refused() -> None:
    a = NodeKey.generate()
    env = KeyEnvelope.seal("model/x", 2, new_namespace_key(), {a.key_id: a.public_bytes})
    raw = bytearray(env.to_bytes())
    raw[-3] ^= 1  # inside the wrapped key
    with pytest.raises(NamespaceKeyError, match="does not open"):
        KeyEnvelope.from_bytes(bytes(raw)).open(a)
    with pytest.raises(NamespaceKeyError, match="does not decode"):
        KeyEnvelope.from_bytes(b"\x93\x01\x02")


def sealed(tmp_path: Path, data: bytes, key: bytes, name: str = "p") -> bytes:
    src, dst = tmp_path / f"{name}.plain", tmp_path / f"{name}.sealed"
    src.write_bytes(data)
    seal_file(src, dst, key)
    return dst.read_bytes()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in itertools.pairwise(points)]


@pytest.mark.parametrize("size", [1, 1000, SEGMENT, SEGMENT + 1, 3 * SEGMENT - 5])
def test_sealed_payloads_open_to_the_plaintext_and_hide_it(tmp_path: Path, size: int) -> None:
    key = new_namespace_key()
    data = random.Random(size).randbytes(size)
    blob = sealed(tmp_path, data, key)
    assert sealed_key_id(blob) == key_id_of(key)
    if size >= 16:  # a byte or two of plaintext turns up in any blob by chance
        assert data[:64] not in blob
    pieces = split(blob, [7, HEADER_SIZE + 3, SEGMENT, SEGMENT + 99, 2 * SEGMENT])
    assert b"".join(open_sealed(pieces, lambda kid: key)) == data


@settings(max_examples=40, deadline=None)
@given(data=st.binary(min_size=1, max_size=2000), cuts=st.lists(st.integers(0, 4000)))
def test_any_split_of_a_sealed_payload_opens(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, cuts: list[int]
) -> None:
    key = new_namespace_key()
    blob = sealed(tmp_path_factory.mktemp("s"), data, key)
    assert b"".join(open_sealed(split(blob, cuts), lambda kid: key)) == data


def test_sealing_is_deterministic_per_plaintext(tmp_path: Path) -> None:
    key = new_namespace_key()
    assert sealed(tmp_path, b"same", key, "a") == sealed(tmp_path, b"same", key, "b")
    assert sealed(tmp_path, b"same", key, "c") != sealed(tmp_path, b"other", key, "d")


def test_tampered_truncated_or_foreign_sealed_payloads_are_refused(tmp_path: Path) -> None:
    key = new_namespace_key()
    blob = sealed(tmp_path, os.urandom(2 * SEGMENT + 10), key)
    flipped = bytearray(blob)
    flipped[HEADER_SIZE + 5] ^= 1
    cut = blob[: HEADER_SIZE + SEGMENT + 16]  # drops the last segments at a boundary
    for bad in (bytes(flipped), cut):
        with pytest.raises(SealedPayloadError):
            b"".join(open_sealed([bad], lambda kid: key))
    with pytest.raises(SealedPayloadError):
        b"".join(open_sealed([blob], lambda kid: new_namespace_key()))

    def no_key(kid: bytes) -> bytes:
        raise NamespaceKeyError("this node holds no key")

    with pytest.raises(NamespaceKeyError):
        b"".join(open_sealed([blob], no_key))
