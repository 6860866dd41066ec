"""Gossip on the event loop: perform a GossipProtocol's actions as asyncio tasks.

Every decision (which peers a round picks, whom to probe, when a nudge queues another
session, whom to notify) is made by `crdtd.sync.protocol.GossipProtocol`; this adapter runs
its timers on the event loop (one task sleeping until `next_deadline`) and turns each
`Action` into a task: SYNC -> `sync(address)` then `sync_ended`, PROBE -> `ping(address)`,
NOTIFY -> `notify(address)`. The callees (SyncNode's methods) report outcomes back to the
protocol; a failing callee never stops the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from crdtd.sync.membership import PeerTable
from crdtd.sync.protocol import Act, Action, GossipProtocol

log = logging.getLogger("crdtd.sync.gossip")


class Gossiper:
    """Runs a GossipProtocol's timers and actions on the asyncio event loop."""

    def __init__(
        self,
        protocol: GossipProtocol,
        sync: Callable[[str], Awaitable[object]],
        ping: Callable[[str], Awaitable[object]],
        notify: Callable[[str], Awaitable[object]],
        clock: Callable[[], float] = time.monotonic,
        on_round: Callable[[], None] | None = None,
    ) -> None:
        self.protocol = protocol
        self.sync = sync
        self.ping = ping
        self.notify = notify
        self.clock = clock
        self.on_round = on_round
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def table(self) -> PeerTable:
        """The protocol's peer table."""
        return self.protocol.table

    @property
    def rounds(self) -> int:
        """Gossip rounds run so far."""
        return self.protocol.rounds

    # -- performing actions ------------------------------------------------------------------

    def run(self, actions: Sequence[Action]) -> list[asyncio.Task[None]]:
        """Start a task per action; returns them (sessions already running are not
        restarted: the protocol only asks for a session when none is in flight)."""
        tasks = []
        for action in actions:
            if action.act is Act.SYNC:
                task = asyncio.create_task(self._sync(action.address))
                self._inflight[action.address] = task
            elif action.act is Act.PROBE:
                task = self._spawn(self.ping, action.address, "probe")
            else:
                task = self._spawn(self.notify, action.address, "notify")
            tasks.append(task)
        return tasks

    async def _sync(self, address: str) -> None:
        try:
            await self._guard(self.sync, address, "sync with")
        finally:
            if self._inflight.get(address) is asyncio.current_task():
                del self._inflight[address]
            self.run(self.protocol.sync_ended(address, self.clock()))

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

    # -- asking the protocol -----------------------------------------------------------------

    def pick(self, k: int, exclude: Iterable[str] = ()) -> list[str]:
        """Up to k random candidates (alive or suspect, not backing off), none in `exclude`."""
        return self.protocol.pick(k, self.clock(), exclude)

    def round(self) -> list[asyncio.Task[None]]:
        """One gossip round now (sessions with `fanout` random peers and one due dead peer)."""
        tasks = self.run(self.protocol.round(self.clock()))
        if self.on_round is not None:
            self.on_round()
        return tasks

    def start_sync(self, address: str) -> asyncio.Task[None] | None:
        """A session with `address` now, or the one already running."""
        running = self._inflight.get(address)
        if running is not None and not running.done():
            return running
        tasks = self.run(self.protocol.sync(address, "asked"))
        return tasks[0] if tasks else self._inflight.get(address)

    def nudge(self, address: str) -> bool:
        """A peer at `address` notified us of new entries: sync with it now (rate-limited
        per peer); False when we do not know that address (we will not sync)."""
        will_sync, actions = self.protocol.notified(address, self.clock())
        self.run(actions)
        deadline = self.protocol.next_deadline()
        if self._timer is not None:
            self._wake.set()  # a deferred nudge may be due before the next timer
        elif deadline is not None:  # no timer task: fire the deferred nudge on its own
            delay = max(0.0, deadline - self.clock())
            asyncio.get_running_loop().call_later(delay, self._fire_deferred)
        return will_sync

    def _fire_deferred(self) -> None:
        if self._timer is None:
            self.run(self.protocol.tick(self.clock()))

    def probe_once(self) -> asyncio.Task[None] | None:
        """Probe one peer now (the longest suspected, else a random one)."""
        tasks = self.run(self.protocol.probe(self.clock()))
        return tasks[0] if tasks else None

    def push_pull_once(self) -> asyncio.Task[None] | None:
        """A full session with one random known peer, whatever its state."""
        tasks = self.run(self.protocol.push_pull(self.clock()))
        return tasks[0] if tasks else None

    def notify_peers(self, exclude: Iterable[str] = ()) -> list[asyncio.Task[None]]:
        """Tell `fanout` random live peers we have new entries (push-notify)."""
        return self.run(self.protocol.notify_peers(self.clock(), exclude))

    # -- timers ------------------------------------------------------------------------------

    def start(self) -> None:
        """Arm the protocol's timers and run them in the background."""
        if self._timer is not None:
            return
        self.protocol.start(self.clock())
        self._timer = asyncio.create_task(self._timers())

    async def _timers(self) -> None:
        while True:
            deadline = self.protocol.next_deadline()
            delay = 1.0 if deadline is None else max(0.0, deadline - self.clock())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                rounds = self.protocol.rounds
                self.run(self.protocol.tick(self.clock()))
                if self.on_round is not None:
                    for _ in range(self.protocol.rounds - rounds):
                        self.on_round()
            except Exception as exc:
                log.warning("gossip action failed: %s", exc)

    async def stop(self) -> None:
        """Cancel the timers and every session, probe and notify in flight."""
        tasks = [*self._inflight.values(), *self._background]
        if self._timer is not None:
            tasks.append(self._timer)
            self._timer = None
        self.protocol.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
        self._background.clear()
