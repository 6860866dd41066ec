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
    """Indices that sort uint64 `values` (ties by index; uint32 or int64, writable), and the
    values in that order. polars sorts each value and its index packed into one 128-bit
    integer (a plain sort: 1.2-1.3x faster than its argsort and a gather of the values)."""
    if not by_polars(values):
        order = np.argsort(values, kind="stable")
        return order, values[order]
    import polars as pl

    n = len(values)
    scale = 1 << max(1, (n - 1).bit_length())
    wide = pl.lit(pl.Series(values, dtype=pl.UInt64)).cast(pl.UInt128) * scale
    packed = pl.select(wide + pl.int_range(0, n, dtype=pl.UInt64).cast(pl.UInt128)).to_series()
    ordered = pl.lit(packed.sort())
    index_type = pl.UInt32 if n <= 2**32 else pl.Int64
    split = pl.select(
        (ordered % scale).cast(index_type).alias("row"),
        (ordered // scale).cast(pl.UInt64).alias("value"),
    )
    return split[:, 0].to_numpy(writable=True), split[:, 1].to_numpy()
