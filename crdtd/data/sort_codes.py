"""Sorting the unsigned 64-bit key codes with polars where numpy's sort is slow.

numpy sorts uint64 with x86-simd-sort where the CPU has AVX-512, and on AMD Zen 4 that path
is several times slower than its AVX2 one; polars sorts 2M such codes 3.5-3.7x faster there,
and arg-sorts them as much faster (`benchmarks/bench_sort_codes.py`). polars is already loaded
for the tables, so codes from `SORT_MIN` on go through it (numpy keeps the short arrays,
where crossing into polars costs more than it saves).
"""

from __future__ import annotations

import numpy as np

SORT_MIN = 1 << 16  # codes below this many: numpy's sort
ENABLED = True  # tests switch polars' sort off to compare with numpy's


def by_polars(values: np.ndarray) -> bool:
    """Whether `values` are long enough to be sorted by polars (and polars' sort is on)."""
    return ENABLED and len(values) >= SORT_MIN


def sorted_u64(values: np.ndarray) -> np.ndarray:
    """uint64 `values` in ascending order (a new array; it may be read-only)."""
    if not by_polars(values):
        return np.sort(values)
    import polars as pl

    return pl.Series(values, dtype=pl.UInt64).sort().to_numpy()


def argsort_u64(values: np.ndarray) -> np.ndarray:
    """Indices that sort uint64 `values` (int64 or uint32, writable; ties in no promised
    order)."""
    if not by_polars(values):
        return np.argsort(values)
    import polars as pl

    return pl.Series(values, dtype=pl.UInt64).arg_sort().to_numpy(writable=True)


def argsort_sorted_u64(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`argsort_u64` of `values` and the values in that order (polars gathers them faster
    than numpy does by uint32 indices). Sorting each value packed with its index into one
    128-bit integer instead saved 7-9 ms of 150 on 2M UUIDs but raised the merge's peak
    memory by 46 MB, to polars' own."""
    if not by_polars(values):
        order = np.argsort(values)
        return order, values[order]
    import polars as pl

    series = pl.Series(values, dtype=pl.UInt64)
    indices = series.arg_sort()
    return indices.to_numpy(writable=True), series.gather(indices).to_numpy()
