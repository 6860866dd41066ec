"""Served chunks are not re-hashed by the sender; the receiver's check keeps corruption out."""

from __future__ import annotations

from pathlib import Path

import pytest

from crdtd.errors import CrdtdError
from crdtd.store.chunks import CHUNK_SIZE, chunk_bytes, manifest_of
from tests.sync_support import (
    SyncFederation,
    async_test,
    federation_of,
    make_node,
    push_contribution,
)


@pytest.fixture
def tf() -> SyncFederation:
    return federation_of("a", "b")


@async_test
async def test_chunk_rotted_on_the_server_is_refused_and_the_pull_resumes_once_repaired(
    tf, tmp_path: Path
) -> None:
    a = make_node(tf, "a", tmp_path / "a")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    entry, payload = tf.contribution("b", 3 * CHUNK_SIZE)
    await push_contribution(b, entry, payload)
    chunks = [c.digest for c in manifest_of(chunk_bytes(payload)).chunks]
    rotted = b.state.store.chunks.path(chunks[1])
    good = rotted.read_bytes()
    rotted.write_bytes(bytes([good[0] ^ 1]) + good[1:])  # same length, one bit flipped
    try:
        with pytest.raises(CrdtdError, match=chunks[1].hex()):
            await a.sync_with(b.address)
        assert not a.state.store.has_entry(entry.id)
        assert not a.state.store.has_chunk(chunks[1])
        assert a.state.store.has_chunk(chunks[0])
        missing = [d for d in chunks if not a.state.store.has_chunk(d)]

        rotted.write_bytes(good)  # repaired (e.g. from a backup after fsck reported it)
        served_before = b.local.stats.chunks_served
        result = await a.sync_with(b.address)
        assert result.pulled == [entry.id]
        assert b.local.stats.chunks_served - served_before == len(missing)
        assert a.state.store.read_payload(entry.body.payload_digest) == payload  # type: ignore[union-attr]
    finally:
        for node in (a, b):
            await node.stop()
            node.state.close()
