"""The gossip state machine on its own: timers, choices, failure detection, nudges.

No I/O: time is a number passed in, and outcomes are reported the way the Gossiper (gRPC)
and the simulator report them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from crdtd.sync.config import SyncConfig
from crdtd.sync.membership import PeerState
from crdtd.sync.protocol import Act, Action, GossipProtocol

CFG = SyncConfig(
    gossip_interval=0.2,
    fanout=3,
    probe_interval=1.0,
    suspicion_mult=4,
    push_pull_interval=30.0,
    notify_min_interval=0.05,
    max_peers_exchanged=8,
)


@dataclass(frozen=True)
class Peer:
    key_id: bytes
    advertise: str = ""
    peers: tuple[tuple[str, bytes], ...] = ()


def addr(i: int) -> str:
    return f"10.0.0.{i}:7000"


def key(i: int) -> bytes:
    return i.to_bytes(32, "big")


def protocol(n: int = 10, seed: int = 1, config: SyncConfig = CFG) -> GossipProtocol:
    p = GossipProtocol(config, random.Random(seed), addr(0), key(0))
    p.add_peers([addr(i) for i in range(1, n + 1)], now=0.0)
    return p


def kinds(actions: list[Action]) -> list[tuple[Act, str]]:
    return [(a.act, a.address) for a in actions]


def test_timers_fire_a_round_every_gossip_interval_and_a_probe_every_probe_interval() -> None:
    p = protocol()
    p.start(now=0.0)
    now, probes = 0.0, 0
    while now < 10.0:
        deadline = p.next_deadline()
        assert deadline is not None and deadline >= now
        now = deadline
        actions = p.tick(now)
        probes += sum(a.act is Act.PROBE for a in actions)
        for a in actions:
            if a.act is Act.SYNC:
                p.sync_ended(a.address, now)
    assert 49 <= p.rounds <= 51  # 10 s / 0.2 s
    assert 9 <= probes <= 11  # 10 s / 1 s


def test_a_round_syncs_with_fanout_distinct_live_peers_and_never_twice_at_once() -> None:
    p = protocol(n=10)
    first = p.round(now=0.0)
    assert len(first) == CFG.fanout and all(a.act is Act.SYNC for a in first)
    assert len({a.address for a in first}) == CFG.fanout
    busy = {a.address for a in first}
    for _ in range(20):  # sessions still running: never started again
        assert not busy & {a.address for a in p.round(now=0.0)}


def test_a_nudge_during_a_session_queues_one_more_and_a_fast_second_nudge_waits() -> None:
    p = protocol(n=2)
    assert kinds(p.nudge(addr(1), now=0.0)) == [(Act.SYNC, addr(1))]
    for _ in range(5):
        assert p.nudge(addr(1), now=0.01) == []
    assert kinds(p.sync_ended(addr(1), now=0.02)) == [(Act.SYNC, addr(1))]
    assert p.sync_ended(addr(1), now=0.03) == []
    # rate limit: a nudge 10 ms after the last one is deferred to 50 ms after it, not lost
    assert p.nudge(addr(1), now=0.01) == []
    assert p.next_deadline() == CFG.notify_min_interval
    assert kinds(p.tick(now=0.05)) == [(Act.SYNC, addr(1))]


def test_a_notify_from_an_unknown_address_is_not_followed() -> None:
    p = protocol(n=2)
    assert p.notified("10.9.9.9:7000", now=0.0) == (False, [])
    will, actions = p.notified(addr(2), now=0.0)
    assert will and kinds(actions) == [(Act.SYNC, addr(2))]


def test_entries_pulled_from_a_peer_are_announced_to_others_not_back_to_it() -> None:
    p = protocol(n=4)
    actions = p.session_ok(addr(1), key(1), now=1.0, in_sync=False, pulled=True)
    assert len(actions) == CFG.fanout and all(a.act is Act.NOTIFY for a in actions)
    assert addr(1) not in {a.address for a in actions}
    assert p.session_ok(addr(2), key(2), now=1.0, in_sync=True, pulled=False) == []
    assert addr(1) not in {a.address for a in p.received(addr(1), now=1.0)}


def test_a_probe_that_finds_a_different_root_starts_a_session() -> None:
    p = protocol(n=3)
    assert p.probe_ok(addr(1), key(1), now=0.0, in_sync=True) == []
    assert kinds(p.probe_ok(addr(2), key(2), now=0.0, in_sync=False)) == [(Act.SYNC, addr(2))]


def test_probes_go_to_suspects_first_so_a_lost_message_is_cleared_not_fatal() -> None:
    p = protocol(n=50)
    p.contact_failed(addr(7), now=10.0, error="lost")
    assert p.table.get(addr(7)).state is PeerState.SUSPECT
    assert addr(7) not in [a.address for a in p.probe(now=10.5)]  # not due yet
    assert kinds(p.probe(now=11.0)) == [(Act.PROBE, addr(7))]
    p.probe_ok(addr(7), key(7), now=11.1, in_sync=True)
    assert p.table.get(addr(7)).state is PeerState.ALIVE


def test_a_crashed_peer_is_declared_dead_one_suspicion_timeout_after_the_first_failure() -> None:
    p = protocol(n=50)
    timeout = CFG.suspicion_timeout(len(p.table))
    now = 100.0
    p.contact_failed(addr(9), now, "refused")
    declared = None
    while declared is None:
        now += CFG.probe_interval
        for a in p.probe(now):
            if a.address == addr(9):
                p.contact_failed(addr(9), now, "refused")
            else:
                p.probe_ok(a.address, b"", now, in_sync=True)
        if p.table.get(addr(9)).state is PeerState.DEAD:
            declared = now - 100.0
    assert timeout <= declared <= timeout + CFG.probe_interval
    assert addr(9) not in p.pick(50, now)


def test_a_dead_peer_is_retried_by_rounds_once_its_backoff_expires() -> None:
    p = protocol(n=3)
    p.contact_failed(addr(1), now=0.0)
    p.contact_failed(addr(1), now=100.0)
    rec = p.table.get(addr(1))
    assert rec.state is PeerState.DEAD
    started = p.round(now=100.0)
    assert addr(1) not in {a.address for a in started}
    for a in started:
        p.sync_ended(a.address, 100.0)
    retried = p.round(now=rec.retry_at)
    assert (Act.SYNC, addr(1)) in kinds(retried)


def test_handshakes_list_a_random_sample_of_peers_not_the_lowest_addresses() -> None:
    p = protocol(n=40)
    for i in range(1, 41):
        p.table.success(addr(i), key(i), now=0.0)
    samples = [p.exchange() for _ in range(20)]
    assert all(len(s) == CFG.max_peers_exchanged for s in samples)
    listed = {a for s in samples for a, _ in s}
    assert len(listed) > 30  # spread over the federation
    p.contact_failed(addr(5), 0.0)
    p.contact_failed(addr(5), 1e3)  # dead peers are not advertised
    assert all(addr(5) not in dict(p.exchange()) for _ in range(20))


def test_the_same_seed_replays_the_same_choices() -> None:
    def run(seed: int) -> list[list[tuple[Act, str]]]:
        p = protocol(n=30, seed=seed)
        p.start(now=0.0)
        out = []
        now = 0.0
        for _ in range(40):
            now = p.next_deadline() or now
            acts = p.tick(now)
            out.append(kinds(acts))
            for a in acts:
                if a.act is Act.SYNC:
                    p.sync_ended(a.address, now)
        return out

    assert run(3) == run(3) and run(3) != run(4)


def test_learning_peers_never_adds_ourselves_and_a_moved_node_keeps_one_record() -> None:
    p = protocol(n=2)
    p.peer_seen(Peer(key(5), addr(5), ((addr(0), key(0)), (addr(6), key(6)))), now=0.0)
    assert addr(0) not in p.table.addresses() and addr(6) in p.table.addresses()
    p.session_ok("10.0.1.5:7000", key(5), now=1.0, in_sync=True, pulled=False)
    assert addr(5) not in p.table.addresses() and "10.0.1.5:7000" in p.table.addresses()
