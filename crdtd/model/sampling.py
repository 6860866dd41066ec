"""Strided samples of tensors, taken from their bytes while the plan hashes them.

A two-phase strategy's `prepare` (TIES's magnitude selection) starts from a sample of runs
spread over each tensor. Read from the maps later, each run costs a page fault, and those
faults contend with every other thread's; taken while hashing maps the pages anyway, they
cost a copy of a few bytes.
"""

from __future__ import annotations

import numpy as np
import torch

SAMPLE_RUN = 64  # consecutive entries a sample takes together

_BITS = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def sample_positions(n: int, stride: int) -> np.ndarray:
    """Flat positions of the sample of an n-entry tensor at `stride`: runs of `SAMPLE_RUN`
    entries, one run every `stride · SAMPLE_RUN` (one entry every stride would touch every
    page of a large tensor)."""
    run = max(1, min(SAMPLE_RUN, stride))
    starts = np.arange(0, n, stride * run, dtype=np.int64)
    where = (starts[:, None] + np.arange(run, dtype=np.int64)[None, :]).reshape(-1)
    return where[where < n]


class PieceSampler:
    """Collects the entries at `sample_positions(n, stride)` of one tensor from the pieces
    of its bytes handed to `visit` (in any order, each byte once), without building the
    positions: run r of the sample covers entries [r·step, r·step + run), step = stride·run."""

    def __init__(self, n: int, stride: int, dtype: torch.dtype) -> None:
        self.n, self.stride, self.dtype = n, stride, dtype
        self.item = dtype.itemsize
        self.run = max(1, min(SAMPLE_RUN, stride))
        self.step = stride * self.run
        runs = -(-n // self.step)  # the last one may be cut short by the tensor's end
        self.size = (runs - 1) * self.run + min(self.run, n - (runs - 1) * self.step) if n else 0
        self.bits = np.empty(self.size, _BITS[self.item])
        self._filled = 0

    def visit(self, piece: memoryview, offset: int) -> None:
        """Take the sampled entries inside `piece`, which starts `offset` bytes in."""
        if offset % self.item or len(piece) % self.item:
            return  # (pieces split at entry boundaries; anything else is left to `complete`)
        first = offset // self.item
        last = min(self.n, first + len(piece) // self.item)
        entries = np.frombuffer(piece, self.bits.dtype)
        # runs wholly inside the piece, copied through a strided view (no index arrays)
        r0 = -(-first // self.step)
        r1 = (last - self.run) // self.step + 1 if last >= self.run else 0
        if r1 > r0:
            whole = np.lib.stride_tricks.as_strided(
                entries[r0 * self.step - first :],
                shape=(r1 - r0, self.run),
                strides=(self.step * self.item, self.item),
                writeable=False,
            )
            self.bits[r0 * self.run : r1 * self.run].reshape(r1 - r0, self.run)[:] = whole
            self._filled += (r1 - r0) * self.run
        # and the parts of runs cut by the piece's edges (or the tensor's end)
        for r in {(first - 1) // self.step if first else -1, (last - 1) // self.step}:
            if r < 0 or r0 <= r < r1:
                continue
            lo, hi = max(first, r * self.step), min(last, r * self.step + self.run)
            if hi > lo:
                at = r * self.run + lo - r * self.step
                self.bits[at : at + hi - lo] = entries[lo - first : hi - first]
                self._filled += hi - lo

    @property
    def complete(self) -> bool:
        return self._filled == self.size

    def values(self) -> torch.Tensor:
        """The sample as float32 (exact for every float dtype a checkpoint holds)."""
        return torch.from_numpy(self.bits).view(self.dtype).to(torch.float32)
