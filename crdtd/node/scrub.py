"""Self-repair: the daemon's background scrub, and fetching bad chunks again from peers.

Every `[scrub] interval_ms` a pass (crdtd.store.scrub) re-hashes the chunks live payloads
need, at most `[scrub] rate` bytes per second, in a worker thread. A chunk that does not
hash to its name is quarantined; one that is gone is noted. Both are then fetched again
from peers with the Peer service's FetchChunks (the stream sessions use), each verified
against its digest before it is stored; peers are tried in turn until every chunk is back.
What no reachable peer had is tried again after the next pass. Everything is logged
(`scrub.corrupt`, `scrub.missing`, `scrub.repaired`, `scrub.repair_failed`, `scrub.pass`)
and counted (`crdtd_scrub_*`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable

from crdtd.errors import CrdtdError
from crdtd.node.core import NodeCore
from crdtd.node.logs import event, get_logger
from crdtd.store.scrub import Scrubber, ScrubReport

log = get_logger("crdtd.node.scrub")

Fetch = Callable[[str, dict[bytes, int]], Awaitable[set[bytes]]]
"""fetch(peer address, digest -> size) -> digests stored (crdtd.sync.SyncNode.fetch_chunks)."""


class ScrubTask:
    """The background scrub of one node: passes, quarantine, repair from peers."""

    def __init__(
        self,
        core: NodeCore,
        peers: Callable[[], list[str]] = list,
        fetch: Fetch | None = None,
    ) -> None:
        cfg = core.config
        self.core = core
        self.metrics = core.metrics
        self.interval = cfg.scrub_interval_ms / 1000
        self.rate = cfg.scrub_rate
        self.peers = peers
        self.fetch = fetch
        self.scrubber = Scrubber(core.state.store)
        self.pending: dict[bytes, int] = {}
        self._stop = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Run passes on the current event loop until `stop`."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """End the pass under way (between two chunks) and the loop."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            await self.run_once()
            wait = self.interval - (time.monotonic() - started)
            if wait > 0:
                await asyncio.sleep(wait)

    async def run_once(self) -> ScrubReport:
        """One pass, then the repair of what it (and earlier passes) found."""
        started = time.monotonic()
        report = await asyncio.to_thread(
            self.scrubber.run_pass, self.rate, self._stop, self._counted
        )
        if report.stopped:
            return report
        self.metrics.scrub_passes.inc()
        for digest in report.corrupt:
            event(log, "scrub.corrupt", level=30, chunk=digest, action="quarantined")
        for digest in report.missing:
            event(log, "scrub.missing", level=30, chunk=digest)
        self.pending.update(report.damaged)
        if self.pending:
            await self.repair()
        event(
            log,
            "scrub.pass",
            chunks=report.chunks,
            bytes=report.hashed,
            corrupt=len(report.corrupt),
            missing=len(report.missing),
            unrepaired=len(self.pending),
            seconds=round(time.monotonic() - started, 3),
        )
        return report

    def _counted(self, result: str, hashed: int) -> None:
        self.metrics.scrub_chunks.labels(result).inc()
        if hashed:
            self.metrics.scrub_bytes.inc(hashed)

    async def repair(self) -> None:
        """Fetch every pending chunk from the first peers that serve a good copy."""
        if self.fetch is not None:
            for address in self.peers():
                if not self.pending:
                    break
                try:
                    stored = await self.fetch(address, dict(self.pending))
                except CrdtdError as exc:
                    event(log, "scrub.peer_failed", level=30, peer=address, error=str(exc))
                    continue
                for digest in sorted(stored):
                    self.pending.pop(digest, None)
                    self.metrics.scrub_repairs.labels("repaired").inc()
                    event(log, "scrub.repaired", level=30, chunk=digest, peer=address)
        for digest in sorted(self.pending):
            self.metrics.scrub_repairs.labels("failed").inc()
            event(log, "scrub.repair_failed", level=40, chunk=digest, peers=len(self.peers()))


__all__ = ["ScrubTask"]
