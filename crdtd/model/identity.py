"""Content identity of checkpoints: what makes a merge a pure function of a *set* of inputs.

A checkpoint's content id is sha256 over its canonical tensor list (name, dtype, shape and the
BLAKE3 digest of each tensor's bytes, by name): file layout, sharding and path do not change it.
The input-set digest hashes the sorted unique content ids, so order and duplication do not
either. Tensor bytes are hashed with BLAKE3, several times faster than SHA-256 even with
SHA-NI (figures and command in docs/model_merge.md): a merge hashes every byte it reads
before it starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import blake3
import msgpack

CHECKPOINT_DOMAIN = "crdtd.checkpoint/2"  # /1 hashed tensor bytes with sha256
INPUT_SET_DOMAIN = b"crdtd.input-set/1\x00"
HASH_PIECE = 64 << 20  # hash large tensors in 64 MiB pieces


def tensor_hasher() -> blake3.blake3:
    """A fresh hasher of one tensor's bytes: BLAKE3-256, single-threaded (callers hash many
    tensors side by side; the binding releases the GIL while hashing)."""
    return blake3.blake3(max_threads=1)


def tensor_digest(data: memoryview, after_piece: Callable[[], None] | None = None) -> bytes:
    """BLAKE3-256 of one tensor's raw little-endian bytes.

    `after_piece` runs after each 64 MiB piece (the reader drops pages it no longer needs).
    """
    h = tensor_hasher()
    n = len(data)
    for start in range(0, n, HASH_PIECE):
        h.update(data[start : start + HASH_PIECE])
        if after_piece is not None:
            after_piece()
    return h.digest()


def content_id(entries: Iterable[tuple[str, str, Sequence[int], bytes]]) -> bytes:
    """sha256 of the canonical tensor list: `(name, dtype, shape, tensor digest)` sorted by name."""
    rows = sorted((str(n), str(d), [int(x) for x in s], bytes(g)) for n, d, s, g in entries)
    names = [r[0] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in one checkpoint")
    packed = msgpack.packb([CHECKPOINT_DOMAIN, [list(r) for r in rows]], use_bin_type=True)
    return hashlib.sha256(packed).digest()


def keyed_content_id(weights_id: bytes, extra: bytes) -> bytes:
    """A content id that also covers `extra` canonical bytes (e.g. a LoRA adapter's config)."""
    h = hashlib.sha256()
    h.update(weights_id)
    h.update(b"\x00")
    h.update(extra)
    return h.digest()


def input_set_digest(ids: Iterable[bytes]) -> bytes:
    """sha256 over the sorted unique content ids: the identity of the input *set*."""
    h = hashlib.sha256(INPUT_SET_DOMAIN)
    for cid in sorted(set(ids)):
        h.update(cid)
    return h.digest()
