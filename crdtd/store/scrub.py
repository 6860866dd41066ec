"""Scrub: re-hash the chunks live payloads need, at a bounded pace, and set bad ones aside.

A chunk is hashed once when it is written and never again when it is served (docs/sync.md,
"Serving"), so bytes that rot on disk stay unnoticed until a materialise fails with
DATA_LOSS or a peer refuses them. `Scrubber.run_pass` walks every chunk a live contribution
needs (sorted by digest), reads and hashes it at most `rate` bytes per second, and reports
each one that is missing or does not hash to its name. A corrupt chunk is *quarantined*:
its file is moved to `DATA_DIR/quarantine/` (an inline chunk's row is copied there and
deleted), so the store no longer claims to hold it and a fresh copy can be stored under the
same name. Fetching that copy from a peer is the node's job (crdtd.node.scrub).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crdtd.errors import NotFoundError
from crdtd.state.entry import Kind
from crdtd.store import sqlite as db
from crdtd.store.chunks import Manifest, chunk_digest, fsync_dir
from crdtd.store.store import NodeStore

QUARANTINE_DIR = "quarantine"


@dataclass
class ScrubReport:
    """What one pass found: chunks checked, bytes `hashed`, and those needing a fresh copy
    (digest -> size), split by why."""

    chunks: int = 0
    hashed: int = 0
    corrupt: dict[bytes, int] = field(default_factory=dict)
    missing: dict[bytes, int] = field(default_factory=dict)
    stopped: bool = False

    @property
    def damaged(self) -> dict[bytes, int]:
        """Every chunk to fetch again, corrupt or missing, digest -> size."""
        return {**self.corrupt, **self.missing}


def needed_chunks(store: NodeStore) -> dict[bytes, int]:
    """digest -> size of every chunk a live contribution's payload needs."""
    with store.reading() as c:
        rows = c.execute(
            "SELECT DISTINCT p.manifest FROM entries e JOIN payloads p "
            "ON p.digest = e.payload_digest WHERE e.kind = ? AND e.status = ?",
            (int(Kind.CONTRIBUTION), db.LIVE),
        ).fetchall()
    sizes: dict[bytes, int] = {}
    for (raw,) in rows:
        for ref in Manifest.from_bytes(bytes(raw)).chunks:
            sizes[ref.digest] = ref.size
    return dict(sorted(sizes.items()))


class Scrubber:
    """Re-hashes a store's needed chunks and quarantines the bad ones (thread-safe with the
    daemon's own use of the store: files are read without the store lock, rows with it)."""

    def __init__(self, store: NodeStore) -> None:
        self.store = store
        self.quarantine = store.data_dir / QUARANTINE_DIR

    def check(self, digest: bytes, size: int) -> tuple[str, int]:
        """("ok" | "corrupt" | "missing", bytes hashed) for one chunk; quarantines a
        corrupt one."""
        store = self.store
        path = store.chunks.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with store.reading() as c:
                row = c.execute(
                    "SELECT data FROM small_chunks WHERE digest = ?", (digest,)
                ).fetchone()
            if row is None:
                return ("ok", 0) if not self._still_needed(digest) else ("missing", 0)
            data = bytes(row[0])
            if len(data) == size and chunk_digest(data) == digest:
                return "ok", len(data)
            self._quarantine_row(digest, data)
            return "corrupt", len(data)
        if len(data) == size and chunk_digest(data) == digest:
            return "ok", len(data)
        self._quarantine_file(path)
        return "corrupt", len(data)

    def _still_needed(self, digest: bytes) -> bool:
        """False when an erasure released the chunk since the pass began."""
        with self.store.reading() as c:
            return (
                c.execute(
                    "SELECT 1 FROM payload_chunks WHERE chunk = ? LIMIT 1", (digest,)
                ).fetchone()
                is not None
            )

    def _quarantine_file(self, path: Path) -> None:
        self.quarantine.mkdir(mode=0o700, exist_ok=True)
        target = self.quarantine / f"{path.name}.{time.time_ns()}"
        try:
            os.replace(path, target)
        except FileNotFoundError:  # deleted meanwhile (erased): nothing to set aside
            return
        fsync_dir(path.parent)
        fsync_dir(self.quarantine)

    def _quarantine_row(self, digest: bytes, data: bytes) -> None:
        self.quarantine.mkdir(mode=0o700, exist_ok=True)
        target = self.quarantine / f"{digest.hex()}.inline.{time.time_ns()}"
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        with self.store.transaction() as c:
            c.execute("DELETE FROM small_chunks WHERE digest = ?", (digest,))

    def run_pass(
        self,
        rate: int,
        stop: threading.Event | None = None,
        counted: Callable[[str, int], None] = lambda result, n: None,
        clock: Callable[[], float] = time.monotonic,
        wait: Callable[[float], bool] | None = None,
    ) -> ScrubReport:
        """Check every needed chunk, hashing at most `rate` bytes per second; `counted(result,
        bytes)` hears of each chunk as it is checked. Returns early (`stopped`) when `stop`
        is set. `wait(seconds)` paces the pass (default `stop.wait`: True once stopped)."""
        stop = stop or threading.Event()
        wait = wait or stop.wait
        report = ScrubReport()
        started = clock()
        for digest, size in needed_chunks(self.store).items():
            if stop.is_set():
                report.stopped = True
                break
            try:
                result, hashed = self.check(digest, size)
            except NotFoundError:
                continue
            report.chunks += 1
            report.hashed += hashed
            if result == "corrupt":
                report.corrupt[digest] = size
            elif result == "missing":
                report.missing[digest] = size
            counted(result, hashed)
            ahead = report.hashed / rate - (clock() - started)
            if ahead > 0 and wait(ahead):
                report.stopped = True
                break
        return report


__all__ = ["QUARANTINE_DIR", "ScrubReport", "Scrubber", "needed_chunks"]
