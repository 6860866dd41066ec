"""Gossip, membership and failure detection of one node, as a state machine with no I/O.

memberlist keeps its protocol (`state.go`: probe, suspect, gossip) apart from its
`Transport`; this module is crdtd's `state.go`. `GossipProtocol` is driven by two kinds of
input, always with the current time passed in:

- **timers**: `tick(now)` fires what is due (a gossip round every `gossip_interval`, a
  probe every `probe_interval`, a full push-pull every `push_pull_interval`, deferred
  nudges); `next_deadline()` says when to call it again;
- **events**: what came of an action (`session_ok`, `probe_ok`, `contact_failed`,
  `sync_ended`) and what peers or the node did (`peer_seen`, `notified`, `received`,
  `wrote`).

Every call returns the `Action`s to perform: run an anti-entropy session with a peer, probe
a peer (a root comparison), or notify a peer that we have new entries. The daemon's
`crdtd.sync.gossip.Gossiper` performs them over gRPC; `simulations/convergence.py` performs
them over a simulated network. Neither decides anything itself, so the simulator measures
the code the daemon runs.

Decisions, with memberlist's LAN defaults (`SyncConfig`):

- a round syncs with `fanout` random candidates (alive or suspect, not waiting for a retry)
  plus one random dead peer whose backoff expired;
- a probe goes to the longest-suspected peer due a contact, else to a random peer (dead ones
  due a retry included): suspects are confirmed or cleared within a probe interval or two,
  so a lost message does not turn into a death, and a crashed peer is declared dead by a
  failed contact once the suspicion timeout (`4 * max(1, log10(N+1))` probe intervals) has
  passed;
- never two sessions with one peer at a time; a nudge (a peer notified us) during a session
  queues exactly one more, and nudges closer than `notify_min_interval` are deferred, not
  dropped;
- a session that pulled entries, entries pushed to us, and local writes notify `fanout`
  random live peers (never the one the entries came from);
- peer exchange: a handshake lists a random sample of up to `max_peers_exchanged` known
  live peers, so membership spreads over the whole federation, not the lowest addresses;
  both sides learn from it once, when it completes (`peer_seen`).

All randomness comes from one seeded `random.Random`, so a seed replays the same choices.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from crdtd.sync.config import SyncConfig
from crdtd.sync.membership import Introduction, PeerState, PeerTable


class Act(enum.Enum):
    """What an action asks the transport adapter to do."""

    SYNC = "sync"
    """Run one push-pull anti-entropy session with the peer, then call `sync_ended`."""
    PROBE = "probe"
    """Compare roots with the peer within `probe_timeout`; report `probe_ok` or a failure."""
    NOTIFY = "notify"
    """Tell the peer we have new entries; report a failure with `contact_failed`."""


@dataclass(frozen=True, slots=True)
class Action:
    """One thing to do now, and why (for logs and the simulator's accounting)."""

    act: Act
    address: str
    why: str = ""


class Timer(enum.Enum):
    """The periodic duties of a node."""

    ROUND = "round"
    PROBE = "probe"
    PUSH_PULL = "push_pull"


class GossipProtocol:
    """One node's gossip decisions over its PeerTable; every method returns Actions."""

    def __init__(
        self,
        config: SyncConfig,
        rng: random.Random,
        own_address: str = "",
        own_key_id: bytes | None = None,
        loopback_only: bool = False,
    ) -> None:
        self.config = config
        self.rng = rng
        self.table = PeerTable(config, rng, own_address, own_key_id, loopback_only)
        self.rounds = 0
        self._syncing: set[str] = set()
        self._again: set[str] = set()
        self._last_nudge: dict[str, float] = {}
        self._deferred: dict[str, float] = {}
        self._due: dict[Timer, float] = {}

    # -- membership --------------------------------------------------------------------------

    def add_peers(self, addresses: Iterable[str], now: float, source: str = "bootstrap") -> None:
        """Learn addresses (bootstrap peers, or peers named by an operator)."""
        for address in addresses:
            self.table.add(address, None, source, now)

    def set_address(self, address: str) -> None:
        """Our own advertised address became known (never gossip with ourselves)."""
        self.table.own_address = address
        self.table.forget([address])

    def exchange(self) -> list[tuple[str, bytes]]:
        """Peers to list in a handshake: a random sample of known live peers with key ids."""
        table = self.table

        def listable(address: str) -> bool:
            rec = table.get(address)
            return rec is not None and rec.state is not PeerState.DEAD and rec.key_id is not None

        chosen = self._sample(self.config.max_peers_exchanged, listable)
        return [(a, table.key_of(a)) for a in sorted(chosen)]

    # -- timers ------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Arm the periodic timers, each at a random phase of its interval."""
        if self._due:
            return
        for timer in Timer:
            self._due[timer] = now + self.rng.random() * self._interval(timer)

    def stop(self) -> None:
        """Disarm the timers and forget sessions in flight and queued nudges."""
        self._due.clear()
        self._deferred.clear()
        self._syncing.clear()
        self._again.clear()

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return bool(self._due)

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (None when stopped and nothing is deferred)."""
        times = [*self._due.values(), *self._deferred.values()]
        return min(times) if times else None

    def tick(self, now: float) -> list[Action]:
        """Fire every timer and deferred nudge that is due at `now`."""
        out: list[Action] = []
        duties: dict[Timer, Callable[[float], list[Action]]] = {
            Timer.ROUND: self.round,
            Timer.PROBE: self.probe,
            Timer.PUSH_PULL: self.push_pull,
        }
        for timer, duty in duties.items():
            due = self._due.get(timer)
            if due is None or due > now:
                continue
            interval = self._interval(timer)
            nxt = due + interval
            self._due[timer] = nxt if nxt > now else now + interval
            out.extend(duty(now))
        for address in sorted(a for a, t in self._deferred.items() if t <= now):
            del self._deferred[address]
            out.extend(self.nudge(address, now))
        return out

    def _interval(self, timer: Timer) -> float:
        if timer is Timer.ROUND:
            return self.config.gossip_interval
        if timer is Timer.PROBE:
            return self.config.probe_interval
        return self.config.push_pull_interval

    # -- choosing ----------------------------------------------------------------------------

    def pick(self, k: int, now: float, exclude: Iterable[str] = ()) -> list[str]:
        """Up to k distinct random candidates (alive or suspect, not waiting), none excluded."""
        skip = set(exclude)
        table = self.table
        return self._sample(k, lambda a: a not in skip and table.is_candidate(a, now))

    def _sample(self, k: int, accept: Callable[[str], bool]) -> list[str]:
        """A uniformly random k-subset of the accepted addresses, in draw order.

        Draws from all known addresses and keeps accepted ones (cheap when most are
        accepted, as in a healthy federation); after a few misses it samples the accepted
        ones directly. Same seed, same table: same answer.
        """
        order = self.table.addresses()
        chosen: list[str] = []
        if k <= 0 or not order:
            return chosen
        seen: set[str] = set()
        for _ in range(4 * k + 8):
            if len(chosen) >= k:
                return chosen
            address = order[self.rng.randrange(len(order))]
            if address in seen:
                continue
            seen.add(address)
            if accept(address):
                chosen.append(address)
        if len(chosen) < k:
            pool = [a for a in order if a not in seen and accept(a)]
            chosen.extend(self.rng.sample(pool, min(k - len(chosen), len(pool))))
        return chosen

    # -- periodic duties ---------------------------------------------------------------------

    def round(self, now: float) -> list[Action]:
        """One gossip round: sessions with `fanout` random peers and one due dead peer."""
        self.rounds += 1
        targets = self.pick(self.config.fanout, now)
        dead = self.table.due_dead(now)
        if dead:
            targets.append(self.rng.choice(dead))
        out: list[Action] = []
        for address in targets:
            out.extend(self.sync(address, "round"))
        return out

    def probe(self, now: float) -> list[Action]:
        """Probe the longest-suspected peer due a contact, else one random peer."""
        suspects = self.table.due_suspects(now)
        if suspects:
            return [Action(Act.PROBE, suspects[0], "suspect")]
        table = self.table

        def probeable(address: str) -> bool:
            rec = table.get(address)
            return rec is not None and rec.retry_at <= now

        chosen = self._sample(1, probeable)
        return [Action(Act.PROBE, chosen[0], "probe")] if chosen else []

    def push_pull(self, now: float) -> list[Action]:
        """A full session with one random known peer, whatever its state (heals partitions)."""
        chosen = self._sample(1, lambda a: True)
        return self.sync(chosen[0], "push_pull") if chosen else []

    # -- sessions ----------------------------------------------------------------------------

    def sync(self, address: str, why: str = "") -> list[Action]:
        """A session with `address` unless one is running (its outcome serves this too)."""
        if address in self._syncing:
            return []
        self._syncing.add(address)
        return [Action(Act.SYNC, address, why)]

    def sync_ended(self, address: str, now: float) -> list[Action]:
        """A SYNC action finished (either way): run the one queued meanwhile, if any."""
        self._syncing.discard(address)
        if address in self._again:
            self._again.discard(address)
            return self.sync(address, "again")
        return []

    def nudge(self, address: str, now: float) -> list[Action]:
        """A peer has new entries: sync with it now, after the running session, or (rate
        limit) `notify_min_interval` after the last nudge."""
        if address in self._syncing:
            self._again.add(address)
            return []
        last = self._last_nudge.get(address)
        if last is not None and now - last < self.config.notify_min_interval:
            self._deferred.setdefault(address, last + self.config.notify_min_interval)
            return []
        self._last_nudge[address] = now
        return self.sync(address, "nudge")

    def notify_peers(self, now: float, exclude: Iterable[str] = ()) -> list[Action]:
        """Push-notify `fanout` random live peers (never those in `exclude`)."""
        return [Action(Act.NOTIFY, a, "new") for a in self.pick(self.config.fanout, now, exclude)]

    # -- outcomes ----------------------------------------------------------------------------

    def session_ok(
        self, address: str, key_id: bytes, now: float, in_sync: bool, pulled: bool
    ) -> list[Action]:
        """A session we started succeeded: the peer is alive, and entries we pulled are
        announced to others."""
        self.table.success(address, key_id, now, in_sync)
        return self.notify_peers(now, exclude=[address]) if pulled else []

    def probe_ok(self, address: str, key_id: bytes, now: float, in_sync: bool) -> list[Action]:
        """A probe answered in time: alive; a differing root starts a session."""
        self.table.success(address, key_id, now, in_sync)
        return [] if in_sync else self.sync(address, "diverged")

    def contact_failed(self, address: str, now: float, error: str = "") -> None:
        """A session, probe or notify failed or timed out: alive -> suspect -> dead."""
        self.table.failure(address, now, error)

    # -- what peers and the node did ---------------------------------------------------------

    def peer_seen(self, peer: Introduction, now: float) -> None:
        """A handshake completed (either side started it): the peer's address and the peers
        it listed are news."""
        self.table.learn(peer, now)

    def notified(self, address: str, now: float) -> tuple[bool, list[Action]]:
        """A peer at `address` says it has new entries; (will we sync, actions)."""
        if not address or self.table.get(address) is None:
            return False, []
        return True, self.nudge(address, now)

    def received(self, source: str, now: float) -> list[Action]:
        """A peer pushed entries that went into our state: tell others (not the source)."""
        return self.notify_peers(now, exclude=[source] if source else [])

    def wrote(self, now: float) -> list[Action]:
        """Entries were written here: tell `fanout` peers at once."""
        return self.notify_peers(now)
