"""Node keys: files are 0600, ids are sha256 of the public key, signatures verify."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from crdtd.crypto import pq
from crdtd.crypto.keys import NodeKey, verify_ed25519
from crdtd.crypto.schemes import HYBRID, SignaturePolicy
from crdtd.errors import ConfigError, KeyFileError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_is_written_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        NodeKey.generate().save(tmp_path / "node.key")
    finally:
        os.umask(old)
    assert mode(tmp_path / "node.key") == 0o600


def test_saved_key_loads_with_the_same_id(tmp_path: Path) -> None:
    key = NodeKey.generate()
    key.save(tmp_path / "k")
    loaded = NodeKey.load(tmp_path / "k")
    assert loaded.key_id == key.key_id == hashlib.sha256(key.public_bytes).digest()
    assert len(key.key_id) == 32 and len(key.public_bytes) == 32
    assert b"BEGIN PRIVATE KEY" in (tmp_path / "k").read_bytes()


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    NodeKey.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="too open"):
        NodeKey.load(path)


def test_existing_key_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first = NodeKey.generate()
    first.save(path)
    with pytest.raises(KeyFileError, match="already exists"):
        NodeKey.generate().save(path)
    assert NodeKey.load(path).key_id == first.key_id
    second = NodeKey.generate()
    second.save(path, overwrite=True)
    assert NodeKey.load(path).key_id == second.key_id and mode(path) == 0o600


def test_garbage_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=str(path)):
        NodeKey.load(path)
    with pytest.raises(KeyFileError, match="not found"):
        NodeKey.load(tmp_path / "missing")


def test_ed25519_sign_and_verify() -> None:
    key = NodeKey.generate()
    sig = key.sign(b"hello")
    assert verify_ed25519(key.public_bytes, b"hello", sig)
    assert not verify_ed25519(key.public_bytes, b"hellO", sig)
    assert not verify_ed25519(NodeKey.generate().public_bytes, b"hello", sig)
    assert not verify_ed25519(key.public_bytes, b"hello", sig[:63])


def test_hybrid_key_round_trips_and_signs_with_both_schemes(tmp_path: Path) -> None:
    key = NodeKey.generate(pq_enabled=True)
    key.save(tmp_path / "k")
    loaded = NodeKey.load(tmp_path / "k")
    assert loaded.public_keys == key.public_keys and loaded.has_pq
    sigs = dict(loaded.sign_all(b"m"))
    assert len(sigs["ed25519"]) == 64 and len(sigs["ml-dsa-65"]) == pq.SIGNATURE_SIZE
    assert pq.verify(key.public_keys.ml_dsa_65 or b"", b"m", sigs["ml-dsa-65"])


def test_plain_key_cannot_satisfy_a_hybrid_policy() -> None:
    with pytest.raises(KeyFileError, match="no ML-DSA-65"):
        NodeKey.generate().sign_all(b"m", HYBRID)


def test_signature_policy_parses_and_rejects() -> None:
    assert str(SignaturePolicy.parse("ml-dsa-65+ed25519")) == "ed25519+ml-dsa-65"
    assert SignaturePolicy.parse("ed25519+ml-dsa-65").hybrid
    for bad in ("ml-dsa-65", "ed25519+rsa", "ed25519+", "ed25519+ed25519"):
        with pytest.raises(ConfigError):
            SignaturePolicy.parse(bad)


def test_repr_never_shows_secret_material() -> None:
    key = NodeKey.generate(pq_enabled=True)
    assert "PRIVATE" not in repr(key) and key.key_id.hex()[:16] in repr(key)
