"""Pairing the rows of two tables by direct addressing when their key codes are dense.

Integer keys are usually dense (row ids, auto-increment keys, a (site, id) pair over a few
sites): their codes fall in a range not much wider than the number of rows. Then each
table's rows are placed in a table indexed by code (one random write per row), and reading
those tables in code order gives, without sorting, each key's first row in key order and
the pairs of rows holding the same key. `vectorised` asks for this first for two tables that
are not both in key order (sorted inputs merge faster by copying slices, `twoway`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Direct addressing is used while the codes span at most this many slots per row.
SLOTS_PER_ROW = 2


@dataclass(frozen=True)
class Pairs:
    """Rows of a and b stacked, in key order: each key's first row (a's where a holds it),
    the positions among those of the keys both hold, and b's row of each such key."""

    kept: np.ndarray
    landing: np.ndarray
    second: np.ndarray


def pair_rows(codes: np.ndarray, a_rows: int) -> Pairs | None:
    """Pair the rows of two stacked tables (the first `a_rows` are a's) by their exact,
    order-preserving uint64 key `codes`; None if the codes are not dense enough or a table
    holds a key twice (the sort path handles those)."""
    n = len(codes)
    if n == 0 or a_rows in (0, n) or n >= 2**31:
        return None
    span = int(codes.max()) + 1
    if span > SLOTS_PER_ROW * n:
        return None
    slots_a = _slots(codes[:a_rows], 0, span)
    slots_b = _slots(codes[a_rows:], a_rows, span)
    if slots_a is None or slots_b is None:
        return None
    # As unsigned numbers an empty slot is the largest, and a's rows come before b's, so the
    # smaller of a key's two slots is its first row.
    first = np.minimum(slots_a, slots_b)
    second = slots_b
    present = first != _EMPTY
    if not present.all():  # codes missing from the range
        first, second = first[present], second[present]
    landing = np.flatnonzero((second != _EMPTY) & (first < np.uint32(a_rows))).astype(np.uint32)
    return Pairs(first, landing, second[landing])


_EMPTY = np.uint32(0xFFFFFFFF)


def _slots(codes: np.ndarray, first_row: int, span: int) -> np.ndarray | None:
    """For each code in [0, span), the row holding it (numbered from `first_row`), else
    `_EMPTY`; None if two rows hold the same code."""
    slots = np.full(span, _EMPTY, dtype=np.uint32)
    # As signed indices (the codes are below 2 * 2**31): numpy converts uint64 ones first.
    slots[codes.view(np.int64)] = np.arange(first_row, first_row + len(codes), dtype=np.uint32)
    if span - np.count_nonzero(slots == _EMPTY) != len(codes):
        return None
    return slots
