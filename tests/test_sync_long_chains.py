"""A chain longer than one session's pull limit still arrives: each session pulls what is not
already waiting for its predecessor (regression: the same first ids were pulled forever).
With "chain-order/1" the peer answers in apply order, so each session applies the next part
of the chain and nothing waits for a predecessor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from crdtd.proto_gen.crdtd.v1 import peer_pb2 as pb
from crdtd.store.chunks import BytesSource
from crdtd.sync.config import CHAIN_ORDER_CAPABILITY
from tests.sync_support import FAST, async_test, federation_of, make_node, snapshot

PREVIOUS = replace(FAST, max_entries_per_session=20, chain_order=False)
"""A node of the previous version: answers FetchEntries in request order, without limit."""


@pytest.mark.parametrize("puller_chain_order", [True, False], ids=["current", "previous"])
@pytest.mark.parametrize("server_chain_order", [True, False], ids=["current", "previous"])
@async_test
async def test_a_chain_longer_than_the_pull_limit_arrives_over_a_few_sessions(
    tmp_path: Path, puller_chain_order: bool, server_chain_order: bool
) -> None:
    tf = federation_of("a", "b")
    small = replace(FAST, max_entries_per_session=20)
    a = make_node(tf, "a", tmp_path / "a", config=replace(small, chain_order=puller_chain_order))
    b = make_node(tf, "b", tmp_path / "b", config=replace(small, chain_order=server_chain_order))
    await b.start("127.0.0.1:0", gossip=False)
    ordered = puller_chain_order and server_chain_order
    try:
        for _ in range(60):
            e, payload = tf.contribution("b", 64)
            b.state.apply(e, BytesSource(payload))
        sessions = 0
        while snapshot(a) != snapshot(b):
            sessions += 1
            assert sessions <= 6, f"{len(a.state.visible())} of 60 after {sessions - 1} sessions"
            result = await a.sync_with(b.address)
            assert (CHAIN_ORDER_CAPABILITY in result.peer.capabilities) is ordered
            if ordered:  # the next 20 of the chain, applied as they come, none held
                assert len(result.pulled) == 20 and result.held == []
                assert result.unserved == []
        assert len(a.state.visible()) == 60 and a.state.held_ids() == []
        assert sessions == 3 or not ordered
    finally:
        await a.stop()
        await b.stop()


@async_test
async def test_ids_the_peer_does_not_hold_are_reported_unserved_in_chain_order(
    tmp_path: Path,
) -> None:
    tf = federation_of("a", "b")
    a = make_node(tf, "a", tmp_path / "a")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    try:
        for _ in range(5):
            e, payload = tf.contribution("b", 64)
            b.state.apply(e, BytesSource(payload))
        conn = a._connection(b.address)  # a raw FetchEntries over a's session with b
        await conn.ensure()
        ids = [e.id for e in b.state.visible()]
        ghost = bytes(32)
        batches = [
            x
            async for x in conn.client.fetch_entries(
                pb.FetchEntriesRequest(ids=[ghost, *reversed(ids)], chain_order=True, limit=3)
            )
        ]
        got = [bytes(r.entry) for x in batches for r in x.records]
        unknown = [bytes(i) for x in batches for i in x.unknown]
        seqs = [b.state.store.get_entry(i).seq for i in ids]
        first = [b.state.store.get_entry_bytes(i) for _, i in sorted(zip(seqs, ids))]
        assert unknown == [ghost]
        assert got == first[:3]
    finally:
        await a.stop()
        await b.stop()
