"""Durable node store: SQLite (WAL) for entries and the Merkle cache, a chunk directory for payloads.

Public API (the sync layer codes against these names):

- `NodeStore.open(data_dir) -> NodeStore`, `.close()`.
- Merkle, 256-ary over 32-byte entry ids, leaves at depth `merkle.LEAF_DEPTH`:
  `.merkle_root()`, `.merkle_children(prefix)` (256 hashes; empty subtree = 32 zero bytes),
  `.ids_under(prefix)` (sorted), `.count_under(prefix)`; `merkle.node_hash(children)` and
  `merkle.leaf_hash(ids)` let a peer check children against their parent.
- Entries: `.has_entry(id)`, `.get_entry(id)` (raises NotFoundError), `.all_ids()`.
- Payloads: `.get_manifest(payload_digest)`, `.has_chunk(d)`, `.missing_chunks(ds)`,
  `.read_chunk(d)`, `.put_chunk(data, expected_digest)`, `.ingest_file(path)`;
  `chunks.payload_digest(refs)`, `chunks.Manifest`, `chunks.ChunkRef`,
  `chunks.chunk_file(path)` / `chunks.chunk_bytes(b)`, sources `BytesSource` / `FileSource`.

See docs/store.md.
"""

from __future__ import annotations

from crdtd.store.chunks import (
    CHUNK_SIZE,
    BytesSource,
    ChunkDir,
    ChunkRef,
    FileSource,
    Manifest,
    chunk_bytes,
    chunk_file,
    payload_digest,
)
from crdtd.store.merkle import EMPTY_HASH, LEAF_DEPTH
from crdtd.store.store import INLINE_MAX, NodeStore, PayloadSource

__all__ = [
    "CHUNK_SIZE",
    "EMPTY_HASH",
    "INLINE_MAX",
    "LEAF_DEPTH",
    "BytesSource",
    "ChunkDir",
    "ChunkRef",
    "FileSource",
    "Manifest",
    "NodeStore",
    "PayloadSource",
    "chunk_bytes",
    "chunk_file",
    "payload_digest",
]
