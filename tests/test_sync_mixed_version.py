"""Nodes with and without set reconciliation ("riblt/1") sync over real gRPC (mutual TLS):
the capability is used only when both sides offer it, else the Merkle descent runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from crdtd.store.chunks import BytesSource
from crdtd.sync.config import RIBLT_CAPABILITY
from tests.sync_support import (
    FAST,
    SyncFederation,
    async_test,
    federation_of,
    make_node,
    snapshot,
)

MERKLE_ONLY = replace(FAST, set_reconciliation=False)
"""A node of the previous version: offers no "riblt/1" and refuses riblt requests."""


@pytest.fixture
def tf() -> SyncFederation:
    return federation_of("new", "old", "other")


async def _push_some(tf: SyncFederation, who: str, node, count: int) -> None:
    """Entries written straight into the node's state: no push-notify, so only the session
    under test moves them."""
    for _ in range(count):
        e, payload = tf.contribution(who, 300)
        node.state.apply(e, BytesSource(payload))


@async_test
async def test_two_current_nodes_reconcile_with_rateless_symbols(tf, tmp_path: Path) -> None:
    a = make_node(tf, "new", tmp_path / "a")
    b = make_node(tf, "other", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    try:
        await _push_some(tf, "new", a, 3)
        await _push_some(tf, "other", b, 2)
        result = await a.sync_with(b.address)
        assert RIBLT_CAPABILITY in result.peer.capabilities
        assert result.digest_method == "riblt" and result.digest_rounds == 1
        assert len(result.pulled) == 2 and len(result.pushed) == 3
        assert snapshot(a) == snapshot(b)
    finally:
        await a.stop()
        await b.stop()


@async_test
async def test_a_current_node_and_a_merkle_only_node_sync_both_ways(tf, tmp_path: Path) -> None:
    new = make_node(tf, "new", tmp_path / "new")
    old = make_node(tf, "old", tmp_path / "old", config=MERKLE_ONLY)
    await new.start("127.0.0.1:0", gossip=False)
    await old.start("127.0.0.1:0", gossip=False)
    try:
        await _push_some(tf, "new", new, 3)
        await _push_some(tf, "old", old, 2)
        forward = await new.sync_with(old.address)  # the new node calls the old one
        assert RIBLT_CAPABILITY not in forward.peer.capabilities
        assert forward.digest_method == "merkle"
        assert len(forward.pulled) == 2 and len(forward.pushed) == 3
        assert snapshot(new) == snapshot(old)

        await _push_some(tf, "new", new, 1)
        await _push_some(tf, "old", old, 4)
        backward = await old.sync_with(new.address)  # the old node calls the new one
        assert RIBLT_CAPABILITY not in backward.peer.capabilities
        assert backward.digest_method == "merkle"
        assert len(backward.pulled) == 1 and len(backward.pushed) == 4
        assert snapshot(new) == snapshot(old)
        assert len(new.state.visible()) == 10
    finally:
        await new.stop()
        await old.stop()


def test_the_node_config_turns_set_reconciliation_off(tmp_path: Path) -> None:
    from crdtd.crypto.node_config import GossipSettings
    from crdtd.sync.config import SyncConfig

    on = SyncConfig.from_gossip_settings(GossipSettings())
    off = SyncConfig.from_gossip_settings(GossipSettings(set_reconciliation=False))
    assert RIBLT_CAPABILITY in on.capabilities
    assert RIBLT_CAPABILITY not in off.capabilities and "merkle/1" in off.capabilities
