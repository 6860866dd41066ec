"""Gossip convergence: in-process rounds driven one by one, and five real gRPC nodes."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from crdtd.sync.config import SyncConfig
from crdtd.sync.node import SyncNode
from crdtd.sync.transport import InProcessNetwork
from tests.sync_support import (
    FAST,
    SyncFederation,
    async_test,
    converged,
    make_node,
    push_contribution,
    snapshot,
)


def all_equal(nodes: list[SyncNode]) -> bool:
    snaps = [snapshot(n) for n in nodes]
    return all(s == snaps[0] for s in snaps)


@async_test
async def test_in_process_nodes_converge_within_a_few_driven_rounds(tmp_path: Path) -> None:
    n = 12
    tf = SyncFederation()
    names = [f"n{i}" for i in range(n)]
    for name in names:
        tf.add(name)
    net = InProcessNetwork()
    nodes: list[SyncNode] = []
    for i, name in enumerate(names):
        cfg = SyncConfig(seed=i)
        node = SyncNode(
            tf.open_state(tmp_path / name),
            tf.identity(name),
            net.transport(tf.members[name].key.key_id, cfg),
            cfg,
            bootstrap=[f"sim:{1 + (i + 1) % n}"] if i else [],
        )
        await node.start(f"sim:{i + 1}", gossip=False)
        nodes.append(node)
    rng = random.Random(42)
    for _ in range(10):
        who = rng.choice(names)
        e, payload = tf.contribution(who, rng.randrange(100, 5000))
        await push_contribution(nodes[names.index(who)], e, payload)
    rounds = 0
    while not all_equal(nodes):
        rounds += 1
        assert rounds <= 8, "no convergence within 8 rounds"
        tasks = [t for node in nodes for t in node.gossip.round()]
        await asyncio.gather(*tasks, return_exceptions=True)
    assert len(nodes[0].state.visible()) == 10
    for node in nodes:
        await node.stop()
        node.state.close()


@async_test
async def test_five_grpc_nodes_converge_and_a_stopped_node_catches_up(tmp_path: Path) -> None:
    tf = SyncFederation()
    names = [f"n{i}" for i in range(5)]
    for name in names:
        tf.add(name)
    nodes: list[SyncNode] = []
    for name in names:
        boot = [nodes[0].address] if nodes else []
        node = make_node(tf, name, tmp_path / name, config=FAST, bootstrap=boot)
        await node.start("127.0.0.1:0")
        nodes.append(node)
    rng = random.Random(5)
    stopped = nodes[3]
    stopped_address = stopped.address
    try:
        for k in range(12):
            if k == 4:
                await stopped.stop()  # a node goes down in the middle of the pushes
                stopped.state.close()
            live = [n for n in nodes if n is not stopped or k < 4]
            target = rng.choice(live)
            e, payload = tf.contribution(names[nodes.index(target)], rng.randrange(1000, 50_000))
            await push_contribution(target, e, payload)
        running = [n for n in nodes if n is not stopped]
        start_rounds = [n.gossip.rounds for n in running]
        await converged(running, timeout=90)
        used = max(n.gossip.rounds - r for n, r in zip(running, start_rounds))
        assert used <= 100, f"{used} gossip rounds"

        revived = make_node(tf, "n3", tmp_path / "n3", config=FAST, bootstrap=[nodes[0].address])
        await revived.start(stopped_address)
        nodes[3] = revived
        await converged(nodes, timeout=90)
        assert snapshot(revived) == snapshot(nodes[0])
        assert len(revived.state.visible()) == 12
    finally:
        for node in nodes:
            await node.stop()
            node.state.close()


@async_test
async def test_a_push_spreads_by_notify_without_waiting_for_a_round(tmp_path: Path) -> None:
    tf = SyncFederation()
    tf.add("a")
    tf.add("b")
    b = make_node(tf, "b", tmp_path / "b")
    await b.start("127.0.0.1:0", gossip=False)
    a = make_node(tf, "a", tmp_path / "a", bootstrap=[b.address])
    await a.start("127.0.0.1:0", gossip=False)  # no gossip loops: only the notify path
    try:
        await a.sync_with(b.address)  # b learns a's address from the handshake
        e, payload = tf.contribution("a", 2000)
        await push_contribution(a, e, payload)
        await converged([a, b], timeout=30)
        assert b.state.store.has_entry(e.id)
        assert a.gossip.rounds == 0 and b.gossip.rounds == 0
    finally:
        for node in (a, b):
            await node.stop()
            node.state.close()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@async_test
async def test_an_unreachable_peer_is_suspected_declared_dead_and_readmitted(
    tmp_path: Path,
) -> None:
    tf = SyncFederation()
    tf.add("a")
    tf.add("b")
    net = InProcessNetwork()
    clock = Clock()
    cfg = SyncConfig(seed=1, probe_interval=1.0, backoff_base=2.0)
    nodes = {}
    for name in ("a", "b"):
        node = SyncNode(
            tf.open_state(tmp_path / name),
            tf.identity(name),
            net.transport(tf.members[name].key.key_id, cfg),
            cfg,
            bootstrap=["sim:2"] if name == "a" else [],
            clock=clock,
        )
        await node.start(f"sim:{1 if name == 'a' else 2}", gossip=False)
        nodes[name] = node
    a = nodes["a"]
    rec = a.table.get("sim:2")
    net.down.add("sim:2")
    await asyncio.gather(*a.gossip.round())
    assert rec.state.value == "suspect"
    clock.now += cfg.suspicion_timeout(1) + 1
    await asyncio.gather(*a.gossip.round())
    assert rec.state.value == "dead" and rec.retry_at > clock.now
    assert a.gossip.pick(3) == []  # dead peers are not gossiped with
    net.down.discard("sim:2")
    clock.now = rec.retry_at
    await asyncio.gather(*a.gossip.round())  # the round retries the dead peer: re-admitted
    assert rec.state.value == "alive" and rec.key_id == tf.members["b"].key.key_id
    for node in nodes.values():
        await node.stop()
        node.state.close()
