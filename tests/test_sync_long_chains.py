"""A chain longer than one session's pull limit still arrives: each session pulls what is not
already waiting for its predecessor (regression: the same first ids were pulled forever)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from crdtd.store.chunks import BytesSource
from tests.sync_support import FAST, async_test, federation_of, make_node, snapshot


@async_test
async def test_a_chain_longer_than_the_pull_limit_arrives_over_a_few_sessions(
    tmp_path: Path,
) -> None:
    tf = federation_of("a", "b")
    small = replace(FAST, max_entries_per_session=20)
    a = make_node(tf, "a", tmp_path / "a", config=small)
    b = make_node(tf, "b", tmp_path / "b", config=small)
    await b.start("127.0.0.1:0", gossip=False)
    try:
        for _ in range(60):
            e, payload = tf.contribution("b", 64)
            b.state.apply(e, BytesSource(payload))
        sessions = 0
        while snapshot(a) != snapshot(b):
            sessions += 1
            assert sessions <= 6, f"{len(a.state.visible())} of 60 after {sessions - 1} sessions"
            await a.sync_with(b.address)
        assert len(a.state.visible()) == 60 and a.state.held_ids() == []
    finally:
        await a.stop()
        await b.stop()
