"""A transfer cut mid-way resumes without re-sending the chunks that completed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crdtd.errors import PeerError, PeerUnavailableError
from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.store.chunks import CHUNK_SIZE, chunk_bytes, manifest_of
from tests.sync_support import (
    SyncFederation,
    async_test,
    federation_of,
    make_node,
    push_contribution,
    snapshot,
)

PIECES_PER_CHUNK = CHUNK_SIZE // (1024 * 1024)


@pytest.fixture
def tf() -> SyncFederation:
    return federation_of("a", "b")


@async_test
async def test_pull_cut_by_a_dying_server_resumes_from_the_first_missing_chunk(
    tf, tmp_path: Path
) -> None:
    a = make_node(tf, "a", tmp_path / "a")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    address = b.address
    entry, payload = tf.contribution("b", 5 * CHUNK_SIZE)
    await push_contribution(b, entry, payload)
    all_chunks = [c.digest for c in manifest_of(chunk_bytes(payload)).chunks]

    client = a._connection(address).client
    original = client.fetch_chunks
    asked: list[list[bytes]] = []
    cut_after = 2 * PIECES_PER_CHUNK + 1  # two whole chunks and one piece of the third

    async def cutting_fetch(req: pb.FetchChunksRequest) -> AsyncIterator[pb.ChunkPiece]:
        asked.append([bytes(d) for d in req.digests])
        seen = 0
        async for piece in original(req):
            yield piece
            seen += 1
            if len(asked) == 1 and seen == cut_after:
                await b.listener.stop(None)  # the server dies mid-stream
                raise PeerUnavailableError("connection lost")

    client.fetch_chunks = cutting_fetch
    try:
        with pytest.raises(PeerError):
            await a.sync_with(address)
        assert not a.state.store.has_entry(entry.id)
        completed = [d for d in all_chunks if a.state.store.has_chunk(d)]
        assert completed == all_chunks[:2]

        await b.start(address, gossip=False)  # back on the same port, same store
        served_before = b.local.stats.chunks_served
        client = a._connection(address).client
        original = client.fetch_chunks
        client.fetch_chunks = cutting_fetch
        result = await a.sync_with(address)
        assert result.pulled == [entry.id]
        assert asked[0] == all_chunks
        assert asked[1] == all_chunks[2:]  # nothing already stored is asked for again
        assert b.local.stats.chunks_served - served_before == 3
        assert a.state.store.read_payload(entry.as_contribution().payload_digest) == payload
        assert snapshot(a) == snapshot(b)
    finally:
        await a.stop()
        await b.stop()


@async_test
async def test_push_cut_mid_stream_resumes_with_only_missing_chunks(tf, tmp_path: Path) -> None:
    a = make_node(tf, "a", tmp_path / "a")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    entry, payload = tf.contribution("a", 4 * CHUNK_SIZE)
    await push_contribution(a, entry, payload)
    all_chunks = [c.digest for c in manifest_of(chunk_bytes(payload)).chunks]

    client = a._connection(b.address).client
    original_push, original_offer = client.push, client.offer
    pushes = 0
    offered_missing: list[list[bytes]] = []

    async def offer(req: pb.OfferRequest) -> pb.OfferResponse:
        reply = await original_offer(req)
        offered_missing.append([bytes(d) for d in reply.missing_chunks])
        return reply

    async def cutting_push(messages: AsyncIterator[pb.PushMessage]) -> pb.PushResponse:
        nonlocal pushes
        pushes += 1
        if pushes > 1:
            return await original_push(messages)

        async def cut() -> AsyncIterator[pb.PushMessage]:
            pieces = 0
            async for m in messages:
                yield m
                if m.WhichOneof("item") == "piece":
                    pieces += 1
                    if pieces == PIECES_PER_CHUNK + 2:
                        for _ in range(200):  # let the first whole chunk land, then drop
                            if b.state.store.has_chunk(all_chunks[0]):
                                break
                            await asyncio.sleep(0.05)
                        raise ConnectionResetError("link dropped")

        return await original_push(cut())

    client.push, client.offer = cutting_push, offer
    try:
        with pytest.raises((PeerError, ConnectionResetError)):
            await a.sync_with(b.address)
        assert not b.state.store.has_entry(entry.id)
        client = a._connection(b.address).client  # a failed session redials
        original_push, original_offer = client.push, client.offer
        client.push, client.offer = cutting_push, offer
        result = await a.sync_with(b.address)
        assert result.pushed == [entry.id]
        assert offered_missing[0] == all_chunks
        assert offered_missing[1] == all_chunks[1:]  # the completed chunk is not sent again
        assert b.state.store.read_payload(entry.as_contribution().payload_digest) == payload
    finally:
        await a.stop()
        await b.stop()
