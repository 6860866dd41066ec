"""Payload chunking, manifests and the content-addressed chunk directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from crdtd.errors import DigestMismatchError, MalformedManifestError, OversizedPayloadError
from crdtd.store.chunks import (
    CHUNK_SIZE,
    ChunkDir,
    ChunkRef,
    FileSource,
    Manifest,
    chunk_bytes,
    chunk_file,
    manifest_of,
    payload_digest,
    safetensors_boundaries,
)


def model(seed: int, n: int = 10, size: int = 1000, changed: tuple[int, ...] = ()) -> bytes:
    """A safetensors file of n float32 tensors; tensors in `changed` get other values."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(n):
        t = rng.standard_normal(size).astype(np.float32)
        if i in changed:
            t = t + 1.0
        tensors[f"layer.{i:02d}.weight"] = t
    return save(tensors)


def test_safetensors_header_and_each_tensor_are_separate_chunks() -> None:
    data = model(1, n=4, size=100)
    pieces = chunk_bytes(data)
    assert len(pieces) == 5
    n = int.from_bytes(data[:8], "little")
    assert pieces[0] == data[: 8 + n]
    assert all(len(p) == 400 for p in pieces[1:])
    assert b"".join(pieces) == data


def test_tensor_larger_than_chunk_size_is_split_into_fixed_pieces() -> None:
    big = np.arange(CHUNK_SIZE // 4 * 2 + 10, dtype=np.float32)  # 2 chunks and 40 bytes
    data = save({"big": big, "small": np.ones(3, dtype=np.float32)})
    sizes = [len(p) for p in chunk_bytes(data)]
    assert sizes[1:] == [CHUNK_SIZE, CHUNK_SIZE, 40, 12]
    assert max(sizes) <= CHUNK_SIZE


def test_fine_tune_shares_the_chunks_of_every_unchanged_tensor() -> None:
    base = manifest_of(chunk_bytes(model(7)))
    tuned = manifest_of(chunk_bytes(model(7, changed=(3,))))
    shared = {c.digest for c in base.chunks} & {c.digest for c in tuned.chunks}
    assert len(tuned.chunks) == 11
    assert len(shared) == 10  # header + 9 unchanged tensors
    assert base.digest != tuned.digest


def test_other_payloads_use_fixed_chunks() -> None:
    data = b"\xff" * (CHUNK_SIZE * 2 + 5)
    assert [len(p) for p in chunk_bytes(data)] == [CHUNK_SIZE, CHUNK_SIZE, 5]
    assert safetensors_boundaries(b"not a safetensors file", 22) is None
    assert chunk_bytes(b"") == []


def test_a_lying_safetensors_header_falls_back_to_fixed_chunks() -> None:
    data = bytearray(model(2, n=2, size=10))
    data[-1:] = b""  # the header now promises more bytes than the file has
    assert [len(p) for p in chunk_bytes(bytes(data))] == [len(data)]


def test_file_and_bytes_chunk_identically(tmp_path: Path) -> None:
    data = model(3, n=6, size=50_000)
    p = tmp_path / "m.safetensors"
    p.write_bytes(data)
    assert list(chunk_file(p)) == chunk_bytes(data)
    assert FileSource(p).manifest == manifest_of(chunk_bytes(data))


def test_manifest_round_trips_and_verifies_against_the_payload_digest() -> None:
    m = manifest_of(chunk_bytes(model(4)))
    again = Manifest.from_bytes(m.to_bytes())
    assert again == m
    again.verify(m.digest, m.size)
    with pytest.raises(DigestMismatchError):
        again.verify(m.digest, m.size + 1)
    reordered = Manifest(tuple(reversed(m.chunks)))
    with pytest.raises(DigestMismatchError):
        reordered.verify(m.digest)


def test_each_chunk_can_be_checked_alone_against_its_manifest() -> None:
    pieces = chunk_bytes(model(5))
    m = manifest_of(pieces)
    for ref, piece in zip(m.chunks, pieces):
        assert hashlib.sha256(piece).digest() == ref.digest and len(piece) == ref.size


def test_payload_digest_commits_to_chunk_sizes() -> None:
    d = hashlib.sha256(b"x").digest()
    assert payload_digest([ChunkRef(d, 1)]) != payload_digest([ChunkRef(d, 2)])
    assert payload_digest([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize(
    "bad",
    [
        b"\xc1",
        b"\x92\x02\x90",  # wrong version
        b"\x92\x01\x91\x92\xc4\x01a\x01",  # 1-byte digest
        b"\x92\x01\x91\x92\xc4\x20" + b"a" * 32 + b"\x00",  # zero-size chunk
        b"\x92\x01\x90extra",
    ],
)
def test_malformed_manifests_are_refused(bad: bytes) -> None:
    with pytest.raises(MalformedManifestError):
        Manifest.from_bytes(bad)


def test_chunk_dir_stores_each_chunk_once_under_two_level_fanout(tmp_path: Path) -> None:
    cd = ChunkDir(tmp_path / "chunks")
    d1 = cd.put(b"hello")
    d2 = cd.put(b"hello")
    assert d1 == d2 == hashlib.sha256(b"hello").digest()
    h = d1.hex()
    assert cd.path(d1) == tmp_path / "chunks" / h[:2] / h[2:4] / h
    assert cd.read(d1) == b"hello"
    assert list(cd.iter_digests()) == [d1]
    assert list((tmp_path / "chunks" / "tmp").iterdir()) == []


def test_chunk_with_the_wrong_digest_is_not_written(tmp_path: Path) -> None:
    cd = ChunkDir(tmp_path / "chunks")
    with pytest.raises(DigestMismatchError):
        cd.put(b"hello", expected_digest=hashlib.sha256(b"other").digest())
    assert list(cd.iter_digests()) == []
    with pytest.raises(OversizedPayloadError):
        cd.put(b"x" * (CHUNK_SIZE + 1))


def test_stale_temp_files_are_cleared_on_open(tmp_path: Path) -> None:
    cd = ChunkDir(tmp_path / "chunks")
    (cd.tmp / "12345-0").write_bytes(b"half a chunk")
    ChunkDir(tmp_path / "chunks")
    assert list(cd.tmp.iterdir()) == []
