"""A pull commits every group of records checked while its previous commit ran, up to
`apply_batch_max` entries per durable transaction (fewer, larger commits write fewer B-tree
pages per entry), and still applies exactly what one group per commit would."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from crdtd.state.e4 import E4State
from crdtd.store.chunks import BytesSource
from crdtd.sync.receive import Checked, Incoming
from crdtd.sync.session import _checked_so_far
from tests.sync_support import FAST, async_test, federation_of, make_node, snapshot


def _group(state: E4State, count: int) -> Checked:
    """A checked group of `count` verified entries (the state's own, for their ids)."""
    entries = [e for e, _ in state.store.iter_entries()][:count]
    return Checked(verified=[Incoming(e, None) for e in entries])


@async_test
async def test_a_commit_takes_every_group_checked_so_far_up_to_the_limit(tmp_path: Path) -> None:
    tf = federation_of("a")
    node = make_node(tf, "a", tmp_path / "a")
    for _ in range(3):
        e, payload = tf.contribution("a", 16)
        node.state.apply(e, BytesSource(payload))
    queue: asyncio.Queue[Checked | None] = asyncio.Queue(maxsize=8)
    for size in (3, 3, 3, 3):
        queue.put_nowait(_group(node.state, size))
    queue.put_nowait(None)
    try:
        first = await _checked_so_far(queue, 5)  # 3, then 3 more reaches the limit
        assert [len(p.verified) for p in first] == [3, 3]
        second = await _checked_so_far(queue, 100)  # the rest; the end stays queued
        assert [len(p.verified) for p in second] == [3, 3]
        assert await _checked_so_far(queue, 100) == []
        assert queue.empty()
    finally:
        await node.stop()


@async_test
async def test_a_chain_pulled_in_small_groups_arrives_whole_in_fewer_commits(
    tmp_path: Path,
) -> None:
    tf = federation_of("a", "b")
    small = replace(FAST, apply_batch=4, apply_batch_max=24)
    a = make_node(tf, "a", tmp_path / "a", config=small)
    b = make_node(tf, "b", tmp_path / "b", config=small)
    await b.start("127.0.0.1:0", gossip=False)
    try:
        for _ in range(60):
            e, payload = tf.contribution("b", 64)
            b.state.apply(e, BytesSource(payload))
        before = a.state.store.generation
        result = await a.sync_with(b.address)
        commits = a.state.store.generation - before
        assert len(result.pulled) == 60 and result.rejected == [] and result.refused == []
        assert snapshot(a) == snapshot(b)
        assert 3 <= commits <= 60 // 4  # at most one group per commit, at most 24 entries
    finally:
        await a.stop()
        await b.stop()
