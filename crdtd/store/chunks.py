"""Payload chunking, manifests and the content-addressed chunk directory.

A safetensors payload is cut at tensor boundaries (the header is its own chunk, every tensor's
bytes start a new chunk, pieces larger than CHUNK_SIZE are split into fixed pieces), so the
unchanged tensors of a fine-tune give byte-identical chunks to its base and are stored once.
Any other payload is cut into fixed CHUNK_SIZE pieces. A chunk is named by sha256 of its bytes;
a payload by the Merkle root over its (chunk digest, size) list, so a manifest verifies against
the payload digest and every chunk verifies alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import msgpack

from crdtd.errors import (
    CorruptionError,
    DigestMismatchError,
    MalformedManifestError,
    NotFoundError,
    OversizedPayloadError,
    StorageError,
)

CHUNK_SIZE = 4 * 1024 * 1024
DIGEST_SIZE = 32
MANIFEST_VERSION = 1
_LEAF = b"\x00"
_NODE = b"\x01"
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
_FSYNC_THREADS = 8


def chunk_digest(data: bytes | memoryview) -> bytes:
    """The content address of one chunk: sha256 of its bytes."""
    return hashlib.sha256(data).digest()


@dataclass(frozen=True, order=True)
class ChunkRef:
    """One chunk of a payload: its sha256 digest and its length in bytes."""

    digest: bytes
    size: int


def _leaf(ref: ChunkRef) -> bytes:
    return hashlib.sha256(_LEAF + ref.digest + ref.size.to_bytes(8, "big")).digest()


def _root(level: Sequence[bytes]) -> bytes:
    """RFC 6962-style binary Merkle root: split at the largest power of two below n."""
    if len(level) == 1:
        return level[0]
    k = 1 << ((len(level) - 1).bit_length() - 1)
    return hashlib.sha256(_NODE + _root(level[:k]) + _root(level[k:])).digest()


def payload_digest(chunks: Iterable[ChunkRef]) -> bytes:
    """Merkle root over the chunk list (digest and size of each); sha256(b'') for no chunks."""
    leaves = [_leaf(c) for c in chunks]
    if not leaves:
        return hashlib.sha256(b"").digest()
    return _root(leaves)


@dataclass(frozen=True)
class Manifest:
    """The ordered chunk list of one payload; `digest` is what contributions name."""

    chunks: tuple[ChunkRef, ...]

    @cached_property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)

    @cached_property
    def digest(self) -> bytes:
        """The payload digest (computed once per manifest: it hashes every chunk ref)."""
        return payload_digest(self.chunks)

    def to_bytes(self) -> bytes:
        """Canonical msgpack: [version, [[digest, size], ...]]."""
        body = [[c.digest, c.size] for c in self.chunks]
        return msgpack.packb([MANIFEST_VERSION, body], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Strict decode; raises MalformedManifestError naming the bad field."""
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, use_list=True, strict_map_key=True)
        except Exception as exc:
            raise MalformedManifestError(f"manifest: malformed msgpack ({exc})") from None
        if not (isinstance(obj, list) and len(obj) == 2 and obj[0] == MANIFEST_VERSION):
            raise MalformedManifestError("manifest: expected [1, chunks]")
        if not isinstance(obj[1], list):
            raise MalformedManifestError("manifest: chunk list is not an array")
        refs = []
        for i, item in enumerate(obj[1]):
            ok = (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], bytes)
                and len(item[0]) == DIGEST_SIZE
                and type(item[1]) is int
                and 0 < item[1] <= CHUNK_SIZE
            )
            if not ok:
                raise MalformedManifestError(f"manifest: chunk {i} is not [32-byte digest, size]")
            refs.append(ChunkRef(item[0], item[1]))
        manifest = cls(tuple(refs))
        if manifest.to_bytes() != bytes(data):
            raise MalformedManifestError("manifest: encoding is not canonical")
        return manifest

    def verify(self, expected_digest: bytes, expected_size: int | None = None) -> None:
        """Raise DigestMismatchError unless this manifest is the one the digest names."""
        if self.digest != expected_digest:
            raise DigestMismatchError(
                f"manifest root {self.digest.hex()} != payload digest {expected_digest.hex()}"
            )
        if expected_size is not None and self.size != expected_size:
            raise DigestMismatchError(
                f"manifest size {self.size} != declared payload size {expected_size} "
                f"(payload {expected_digest.hex()})"
            )


# -- chunk boundaries ------------------------------------------------------------------------


def safetensors_boundaries(head: bytes, total_size: int) -> list[int] | None:
    """Tensor-start offsets of a safetensors file from its first bytes, or None if it is not one.

    `head` must hold at least the 8-byte length prefix and the JSON header.
    """
    if total_size < 8 or len(head) < 8:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if n == 0 or n > _MAX_SAFETENSORS_HEADER or 8 + n > total_size or len(head) < 8 + n:
        return None
    try:
        header = json.loads(head[8 : 8 + n])
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting: not safetensors
        return None
    if not isinstance(header, dict):
        return None
    data_start = 8 + n
    cuts = {0, data_start, total_size}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
            return None
        begin, end = offs
        if not 0 <= begin <= end or data_start + end > total_size:
            return None
        cuts.add(data_start + begin)
        cuts.add(data_start + end)
    return sorted(cuts)


def _pieces(boundaries: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(offset, length) of every chunk: each segment split into CHUNK_SIZE pieces."""
    for start, end in itertools.pairwise(boundaries):
        pos = start
        while pos < end:
            n = min(CHUNK_SIZE, end - pos)
            yield pos, n
            pos += n


def _safetensors_head_size(first: bytes) -> int:
    if len(first) < 8:
        return 0
    (n,) = struct.unpack("<Q", first[:8])
    return 8 + n if n <= _MAX_SAFETENSORS_HEADER else 0


def chunk_plan(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of the file at `path` (tensor-aware when safetensors)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        first = f.read(8)
        need = _safetensors_head_size(first)
        head = first + f.read(need - 8) if 8 < need <= size else first
    cuts = safetensors_boundaries(head, size) or [0, size]
    return list(_pieces(cuts))


def chunk_file(path: Path | str) -> Iterator[bytes]:
    """Yield the chunks of a file in order, reading one chunk at a time."""
    p = Path(path)
    plan = chunk_plan(p)
    with p.open("rb", buffering=0) as f:
        for offset, length in plan:
            f.seek(offset)
            data = f.read(length)
            if len(data) != length:
                raise StorageError(f"{p}: file shrank while chunking (offset {offset})")
            yield data


def chunk_bytes(data: bytes) -> list[bytes]:
    """The chunks of an in-memory payload (tensor-aware when it is safetensors)."""
    mv = memoryview(data)
    cuts = safetensors_boundaries(data[: 8 + _safetensors_head_size(data[:8])], len(data))
    return [bytes(mv[o : o + n]) for o, n in _pieces(cuts or [0, len(data)])]


def manifest_of(chunks: Iterable[bytes]) -> Manifest:
    """The manifest of already-cut chunks."""
    return Manifest(tuple(ChunkRef(chunk_digest(c), len(c)) for c in chunks))


# -- the chunk directory ---------------------------------------------------------------------


def fsync_file(path: Path) -> None:
    """Flush a written file's bytes to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, creations) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ChunkDir:
    """Chunks stored once each as `root/ab/cd/<hex digest>`, written atomically.

    A write goes to `root/tmp/`, is fsynced, renamed into place and the directory fsynced, so a
    chunk file is either absent or complete after a crash. A deferred put (`sync=False`) only
    writes the temp file; `flush()` then fsyncs the whole batch, renames it and fsyncs the
    directories, letting the kernel write one chunk back while the next is hashed. Batches are
    per thread, so one thread's rollback never discards another's chunks.
    """

    MAX_DEFERRED = 64

    def __init__(self, root: Path, clean_tmp: bool = True) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        if clean_tmp:
            for stale in self.tmp.iterdir():
                stale.unlink(missing_ok=True)
        self._seq = itertools.count()
        self._local = threading.local()

    @property
    def _deferred(self) -> dict[bytes, Path]:
        """This thread's unflushed chunks (each writer thread batches on its own)."""
        batch: dict[bytes, Path] | None = getattr(self._local, "batch", None)
        if batch is None:
            batch = self._local.batch = {}
        return batch

    def path(self, digest: bytes) -> Path:
        h = digest.hex()
        return self.root / h[:2] / h[2:4] / h

    def has(self, digest: bytes) -> bool:
        if digest in self._deferred:
            return True
        h = digest.hex()  # a plain string, not pathlib: asked once per chunk of every entry applied
        return os.path.isfile(f"{self._root}{os.sep}{h[:2]}{os.sep}{h[2:4]}{os.sep}{h}")

    def read(self, digest: bytes, verify: bool = True) -> bytes:
        """The chunk's bytes; raises NotFoundError, or CorruptionError if they no longer match."""
        p = self._deferred.get(digest, self.path(digest))
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"chunk {digest.hex()} is not in the store") from None
        if verify and chunk_digest(data) != digest:
            raise CorruptionError(f"chunk file {p} does not hash to its name")
        return data

    def put(self, data: bytes, expected_digest: bytes | None = None, sync: bool = True) -> bytes:
        """Store a chunk (once); returns its digest. Raises DigestMismatchError on a wrong digest.

        With sync=False the chunk becomes durable (and visible under its name) at `flush()`.
        """
        if len(data) > CHUNK_SIZE:
            raise OversizedPayloadError(f"chunk of {len(data)} bytes exceeds {CHUNK_SIZE}")
        digest = chunk_digest(data)
        if expected_digest is not None and digest != expected_digest:
            raise DigestMismatchError(
                f"chunk hashes to {digest.hex()}, expected {expected_digest.hex()}"
            )
        if self.has(digest):
            return digest
        tmp = self.tmp / f"{os.getpid()}-{next(self._seq)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if sync:
            final = self.path(digest)
            self._ensure_dir(final.parent)
            os.replace(tmp, final)
            fsync_dir(final.parent)
        else:
            self._deferred[digest] = tmp
            if len(self._deferred) >= self.MAX_DEFERRED:
                self.flush()
        return digest

    def flush(self) -> None:
        """Make every deferred chunk durable: fsync the files, rename, fsync the directories."""
        if not self._deferred:
            return
        batch = sorted(self._deferred.items())
        with ThreadPoolExecutor(_FSYNC_THREADS) as pool:  # fsync waits on the disk, not the GIL
            list(pool.map(fsync_file, [tmp for _, tmp in batch]))
            dirs: set[Path] = set()
            for digest, tmp in batch:
                final = self.path(digest)
                dirs |= self._make_dirs(final.parent)
                os.replace(tmp, final)
                dirs.add(final.parent)
            list(pool.map(fsync_dir, sorted(dirs)))
        self._deferred.clear()

    def discard(self) -> None:
        """Drop deferred chunks that were never flushed (their transaction rolled back)."""
        for tmp in self._deferred.values():
            tmp.unlink(missing_ok=True)
        self._deferred.clear()

    def delete(self, digest: bytes) -> bool:
        """Remove a chunk file (durably); True if it existed."""
        p = self.path(digest)
        try:
            p.unlink()
        except FileNotFoundError:
            return False
        fsync_dir(p.parent)
        return True

    def iter_digests(self) -> Iterator[bytes]:
        """Every chunk digest on disk, in sorted order (names that are not digests are skipped)."""
        for d1 in sorted(self.root.iterdir()):
            if len(d1.name) != 2 or not d1.is_dir():
                continue
            for d2 in sorted(d1.iterdir()):
                for f in sorted(d2.iterdir()):
                    try:
                        digest = bytes.fromhex(f.name)
                    except ValueError:
                        continue
                    if len(digest) == DIGEST_SIZE:
                        yield digest

    def _make_dirs(self, d: Path) -> set[Path]:
        """Create the fan-out directories for `d`; returns the parents to fsync."""
        if d.is_dir():
            return set()
        touched = {d.parent}
        if not d.parent.is_dir():
            d.parent.mkdir(exist_ok=True)
            touched.add(self.root)
        d.mkdir(exist_ok=True)
        return touched

    def _ensure_dir(self, d: Path) -> None:
        for parent in sorted(self._make_dirs(d)):
            fsync_dir(parent)


# -- payload sources (what `E4State.apply` reads a payload from) ------------------------------


class BytesSource:
    """A payload held in memory, offered chunk by chunk (for small payloads and tests)."""

    def __init__(self, data: bytes) -> None:
        pieces = chunk_bytes(data)
        self.manifest = manifest_of(pieces)
        self._chunks = {chunk_digest(p): p for p in pieces}

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        return self.manifest

    def read_chunk(self, digest: bytes) -> bytes:
        try:
            return self._chunks[digest]
        except KeyError:
            raise NotFoundError(f"chunk {digest.hex()} is not in this payload") from None


class FileSource:
    """A payload file on disk; hashes it once to build the manifest, then serves chunks by offset."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._where: dict[bytes, tuple[int, int]] = {}
        refs = []
        plan = chunk_plan(self.path)
        for (offset, length), data in zip(plan, chunk_file(self.path)):
            d = chunk_digest(data)
            self._where.setdefault(d, (offset, length))
            refs.append(ChunkRef(d, length))
        self.manifest = Manifest(tuple(refs))

    def get_manifest(self, payload_digest: bytes) -> Manifest:
        return self.manifest

    def read_chunk(self, digest: bytes) -> bytes:
        try:
            offset, length = self._where[digest]
        except KeyError:
            raise NotFoundError(f"chunk {digest.hex()} is not in {self.path}") from None
        with self.path.open("rb") as f:
            f.seek(offset)
            return f.read(length)
