"""Membership bookkeeping and peer choice: suspicion, death, backoff, re-admission, seeding."""

from __future__ import annotations

import asyncio
import random

from crdtd.sync.config import SyncConfig
from crdtd.sync.gossip import Gossiper
from crdtd.sync.handshake import PeerIdentity
from crdtd.sync.membership import PeerState, PeerTable, is_loopback
from crdtd.sync.protocol import GossipProtocol

CFG = SyncConfig(probe_interval=1.0, suspicion_mult=4, backoff_base=1.0, backoff_max=8.0)


def table(n: int = 4, seed: int = 1) -> PeerTable:
    t = PeerTable(CFG, random.Random(seed), own_address="127.0.0.1:7000", own_key_id=b"\x00" * 32)
    for i in range(1, n + 1):
        t.add(f"127.0.0.1:{7000 + i}", None, "bootstrap")
    return t


def test_a_silent_peer_goes_suspect_then_dead_then_back_alive() -> None:
    t = table()
    a = "127.0.0.1:7001"
    t.failure(a, now=10.0)
    assert t.get(a).state is PeerState.SUSPECT
    assert a not in t.candidates(10.5) and a in t.candidates(11.0)  # one probe interval later
    timeout = CFG.suspicion_timeout(len(t))
    t.failure(a, now=10.0 + timeout / 2)
    assert t.get(a).state is PeerState.SUSPECT
    t.failure(a, now=10.0 + timeout + 0.1)
    assert t.get(a).state is PeerState.DEAD
    assert a not in t.candidates(1e9)
    t.success(a, b"\x05" * 32, now=100.0, in_sync=True)
    rec = t.get(a)
    assert rec.state is PeerState.ALIVE and rec.failures == 0 and rec.key_id == b"\x05" * 32


def test_dead_peers_back_off_exponentially_up_to_the_cap() -> None:
    t = table()
    delays = [t.backoff(k) for k in range(1, 8)]
    assert all(0.75 <= d <= 1.25 for d in delays[:1])
    assert all(
        0.75 * min(8.0, 2 ** (k - 1)) <= d <= 1.25 * min(8.0, 2 ** (k - 1))
        for k, d in enumerate(delays, 1)
    )
    a = "127.0.0.1:7002"
    t.get(a).state = PeerState.DEAD
    t.failure(a, now=50.0)
    assert t.due_dead(50.0) == [] and t.due_dead(50.0 + 1.25 * 2) == [a]


def test_suspicion_timeout_follows_memberlist() -> None:
    assert CFG.suspicion_timeout(1) == 4.0
    assert CFG.suspicion_timeout(99) == 4.0 * 2  # log10(100) = 2 probe intervals per mult


def test_peer_exchange_learns_addresses_but_never_ourselves() -> None:
    t = table(n=1)
    peer = PeerIdentity(
        b"\x09" * 32,
        None,  # type: ignore[arg-type]
        "127.0.0.1:7009",
        (),
        (("127.0.0.1:7000", b"\x11" * 32), ("127.0.0.1:7010", b"\x10" * 32), ("bad", b"\x01" * 32)),
    )
    t.learn(peer, now=0.0)
    assert [r.address for r in t.records()] == [
        "127.0.0.1:7001",
        "127.0.0.1:7009",
        "127.0.0.1:7010",
    ]
    t.add("127.0.0.1:7011", b"\x00" * 32)  # our own key id at another address
    assert t.get("127.0.0.1:7011") is None


def test_a_node_that_moved_keeps_one_record() -> None:
    t = table(n=2)
    kid = b"\x07" * 32
    t.success("127.0.0.1:7001", kid, now=1.0)
    t.success("127.0.0.1:7099", kid, now=2.0)
    assert [r.address for r in t.records()] == ["127.0.0.1:7002", "127.0.0.1:7099"]


def test_plain_text_tables_only_accept_loopback_peers() -> None:
    t = PeerTable(CFG, random.Random(0), loopback_only=True)
    assert t.add("10.1.2.3:7000") is None
    assert t.add("localhost:7000") is not None
    assert is_loopback("[::1]:7000") and not is_loopback("example.org:7000")


def protocol(n: int = 4, seed: int = 1) -> GossipProtocol:
    p = GossipProtocol(CFG, random.Random(seed), "127.0.0.1:7000", b"\x00" * 32)
    p.add_peers([f"127.0.0.1:{7000 + i}" for i in range(1, n + 1)], now=0.0)
    return p


def test_gossip_picks_fanout_live_peers_reproducibly_from_a_seed() -> None:
    def picks(seed: int) -> list[list[str]]:
        p = protocol(n=10, seed=seed)
        p.table.failure("127.0.0.1:7003", now=0.0)
        p.table.failure("127.0.0.1:7003", now=1e3)  # dead, backing off
        rounds = []
        for _ in range(5):
            chosen = sorted(a.address for a in p.round(now=1e3))
            for address in chosen:
                p.sync_ended(address, now=1e3)
            rounds.append(chosen)
        return rounds

    first, again, other = picks(7), picks(7), picks(8)
    assert first == again and first != other
    for chosen in first:
        assert len(chosen) == CFG.fanout and "127.0.0.1:7003" not in chosen


def test_a_nudge_during_a_session_queues_exactly_one_more() -> None:
    async def scenario() -> int:
        gate = asyncio.Event()
        calls = 0

        async def sync(address: str) -> None:
            nonlocal calls
            calls += 1
            await gate.wait()

        g = Gossiper(protocol(n=1), sync, sync, sync, clock=lambda: 0.0)
        first = g.start_sync("127.0.0.1:7001")
        await asyncio.sleep(0)
        for _ in range(5):
            g.nudge("127.0.0.1:7001")
        gate.set()
        await first
        for _ in range(20):
            await asyncio.sleep(0.01)
        await g.stop()
        return calls

    assert asyncio.run(scenario()) == 2
