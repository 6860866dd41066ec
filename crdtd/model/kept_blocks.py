"""Raw blocks that a two-phase strategy's `prepare` scan read, kept for its merge pass.

TIES reads every block twice: once to find its thresholds, once to merge. A block whose
bits the scan read into a slab of this arena is merged from that slab instead of being read
from its files again. The arena is fixed (`KEPT_BYTES`, taken from the kernel in one
mapping with huge pages advised, so its first touch costs little); a scan takes a slab only
while one is free and never waits, so a block that found none is simply read again.
"""

from __future__ import annotations

import contextlib
import mmap
import threading

import numpy as np

KEPT_BYTES = 256 << 20  # the arena of one merge; 0 turns keeping off


class KeptBlocks:
    """Slabs of `[rows, n]` uint16 (one block's bf16 inputs and base), keyed by (tensor,
    block start) from the scan that filled them to the merge that consumes them."""

    def __init__(self, rows: int, n: int, budget: int = KEPT_BYTES) -> None:
        self.rows, self.n = rows, n
        slab = rows * n * 2
        count = budget // slab if slab else 0
        self._map: mmap.mmap | None = None
        self._slabs: list[np.ndarray] = []
        if count:
            self._map = mmap.mmap(-1, count * slab)
            with contextlib.suppress(AttributeError, OSError):  # (not every platform)
                self._map.madvise(mmap.MADV_HUGEPAGE)
            whole = np.frombuffer(self._map, np.uint16)
            self._slabs = [whole[i * rows * n : (i + 1) * rows * n] for i in range(count)]
        self._free = list(range(count - 1, -1, -1))
        self._held: dict[tuple[str, int], tuple[int, np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, rows: int, n: int) -> tuple[int, np.ndarray] | None:
        """A free slab and its `[rows, n]` view, for a block the caller is about to read and
        then `keep`; None when every slab is held or the block does not fit one."""
        if rows > self.rows or n > self.n:
            return None
        with self._lock:
            if not self._free:
                return None
            slab = self._free.pop()
        return slab, self._slabs[slab][: rows * n].reshape(rows, n)

    def keep(self, name: str, start: int, taken: tuple[int, np.ndarray]) -> None:
        """Hold a `taken` slab, now filled with block `start` of tensor `name`, for its merge."""
        with self._lock:
            self._held[(name, start)] = taken

    def get(self, name: str, start: int) -> np.ndarray | None:
        """The rows of block `start` of tensor `name` while it is held, or None."""
        with self._lock:
            held = self._held.get((name, start))
        return None if held is None else held[1]

    def pop(self, name: str, start: int) -> tuple[int, np.ndarray] | None:
        """The slab and rows of a held block, held no longer: the caller `free`s the slab
        when done with the rows."""
        with self._lock:
            return self._held.pop((name, start), None)

    def free(self, slab: int) -> None:
        """Slab `slab` may be taken again."""
        with self._lock:
            self._free.append(slab)

    def close(self) -> None:
        """Unmap the arena (no view of it may be in use)."""
        self._slabs = []
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
                self._map.close()
            self._map = None
