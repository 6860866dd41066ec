"""Node events for `Watch`: published from any thread, delivered to async subscribers.

A subscriber gets its own bounded queue; a subscriber that falls behind loses the oldest
events and is told so with one `events_dropped` event, so a slow watcher never blocks
pushes, sync or merges.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeEvent:
    """One thing that happened: an entry applied, erased or refused, a peer seen or lost."""

    kind: str
    entry_id: bytes = b""
    namespace: str = ""
    author: bytes = b""
    entry_kind: str = ""
    detail: str = ""


class EventBus:
    """Fan-out of NodeEvents to async subscribers (thread-safe `publish`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, depth: int = 1024) -> None:
        self.loop = loop
        self.depth = depth
        self._subs: set[asyncio.Queue[NodeEvent | None]] = set()
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on `loop` (the daemon's event loop)."""
        self.loop = loop

    def publish(self, event: NodeEvent) -> None:
        """Queue `event` for every subscriber; callable from any thread."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(event)
        else:
            loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: NodeEvent | None) -> None:
        with self._lock:
            subs = list(self._subs)
        for q in subs:
            if q.full():
                q.get_nowait()
                if event is not None:
                    q.put_nowait(NodeEvent("events_dropped", detail="watcher fell behind"))
                    if q.full():
                        q.get_nowait()
            q.put_nowait(event)

    def close(self) -> None:
        """End every subscription (the daemon is stopping)."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, None)

    async def subscribe(self) -> AsyncIterator[NodeEvent]:
        """Events from now on, until the bus closes or the caller stops iterating."""
        q: asyncio.Queue[NodeEvent | None] = asyncio.Queue(self.depth)
        with self._lock:
            self._subs.add(q)
        try:
            while True:
                event = await q.get()
                if event is None:
                    return
                yield event
        finally:
            with self._lock:
                self._subs.discard(q)
