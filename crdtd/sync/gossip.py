"""Gossip scheduling: which peers to sync with, and when.

Every `gossip_interval` a round picks `fanout` peers at random (a seeded `random.Random`,
from the sorted candidate list, so a seed replays the same choices) and starts an
anti-entropy session with each, plus one retry of a dead peer whose backoff expired. Every
`probe_interval` one random peer is probed (a root comparison) so liveness is known for
peers gossip has not picked lately; every `push_pull_interval` one random known peer, dead
or alive, gets a full session. A push-notify (`nudge`) starts a session with the notifier
at once. The scheduler never runs two sessions with one peer at a time; a nudge that lands
during a session queues exactly one more.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable

from crdtd.sync.config import SyncConfig
from crdtd.sync.membership import PeerTable

log = logging.getLogger("crdtd.sync.gossip")


class Gossiper:
    """Drives sessions, probes and notifies over a PeerTable."""

    def __init__(
        self,
        table: PeerTable,
        sync: Callable[[str], Awaitable[object]],
        ping: Callable[[str], Awaitable[object]],
        notify: Callable[[str], Awaitable[object]],
        config: SyncConfig,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.sync = sync
        self.ping = ping
        self.notify = notify
        self.config = config
        self.rng = rng
        self.clock = clock
        self.rounds = 0
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._last_nudge: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    # -- choosing ----------------------------------------------------------------------------

    def pick(self, k: int, exclude: Iterable[str] = ()) -> list[str]:
        """Up to k random candidates (alive or suspect, not backing off), none in `exclude`."""
        skip = set(exclude)
        pool = [a for a in self.table.candidates(self.clock()) if a not in skip]
        return self.rng.sample(pool, min(k, len(pool)))

    # -- actions -----------------------------------------------------------------------------

    def round(self) -> list[asyncio.Task[None]]:
        """One gossip round: sessions with `fanout` random peers and one due dead peer."""
        self.rounds += 1
        targets = self.pick(self.config.fanout)
        targets.extend(self.table.due_dead(self.clock())[:1])
        return [self.start_sync(a) for a in dict.fromkeys(targets)]

    def start_sync(self, address: str) -> asyncio.Task[None]:
        """A session with `address`, or the one already running."""
        task = self._inflight.get(address)
        if task is not None and not task.done():
            return task
        task = asyncio.create_task(self._sync(address))
        self._inflight[address] = task
        return task

    async def _sync(self, address: str) -> None:
        try:
            await self._guard(self.sync, address, "sync with")
        finally:
            if self._inflight.get(address) is asyncio.current_task():
                del self._inflight[address]
            if address in self._again:
                self._again.discard(address)
                self.start_sync(address)

    def nudge(self, address: str) -> bool:
        """A peer notified us of new entries: sync with it now (rate-limited per peer)."""
        now = self.clock()
        last = self._last_nudge.get(address)
        running = self._inflight.get(address)
        if running is not None and not running.done():
            self._again.add(address)
            return True
        if last is not None and now - last < self.config.notify_min_interval:
            self._again.add(address)
            return True
        self._last_nudge[address] = now
        self.start_sync(address)
        return True

    def probe_once(self) -> asyncio.Task[None] | None:
        """Probe one random peer (candidates and dead peers due a retry)."""
        now = self.clock()
        pool = sorted(set(self.table.candidates(now)) | set(self.table.due_dead(now)))
        if not pool:
            return None
        address = self.rng.choice(pool)
        return self._spawn(self.ping, address, "probe")

    def push_pull_once(self) -> asyncio.Task[None] | None:
        """A full session with one random known peer, whatever its state."""
        pool = [r.address for r in self.table.records()]
        if not pool:
            return None
        return self.start_sync(self.rng.choice(pool))

    def notify_peers(self, exclude: Iterable[str] = ()) -> list[asyncio.Task[None]]:
        """Tell `fanout` random live peers we have new entries (push-notify)."""
        return [
            self._spawn(self.notify, a, "notify") for a in self.pick(self.config.fanout, exclude)
        ]

    def _spawn(
        self, action: Callable[[str], Awaitable[object]], address: str, what: str
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._guard(action, address, what))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    @staticmethod
    async def _guard(action: Callable[[str], Awaitable[object]], address: str, what: str) -> None:
        try:
            await action(address)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the callee recorded the failure; keep the scheduler alive
            log.debug("%s %s failed: %s", what, address, exc)

    # -- loops -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the gossip, probe and push-pull loops in the background."""
        if self._loops:
            return
        self._loops = [
            asyncio.create_task(self._every(self.config.gossip_interval, self.round)),
            asyncio.create_task(self._every(self.config.probe_interval, self.probe_once)),
            asyncio.create_task(self._every(self.config.push_pull_interval, self.push_pull_once)),
        ]

    async def _every(self, interval: float, action: Callable[[], object]) -> None:
        jitter = self.rng.random() * interval
        await asyncio.sleep(jitter)
        while True:
            try:
                action()
            except Exception as exc:
                log.warning("gossip action failed: %s", exc)
            await asyncio.sleep(interval)

    async def stop(self) -> None:
        """Cancel the loops and every session, probe and notify in flight."""
        tasks = [*self._loops, *self._inflight.values(), *self._background]
        self._loops = []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        self._background.clear()
        self._again.clear()
