"""Vectorised merge of two tables whose keys are unique in each: the join of two CRDT states.

Only the key columns of both inputs are put in order together, so a key that both tables
hold forms a pair of neighbouring rows. Each column of the paired rows is resolved once,
by value, and the result is assembled in key order from three sources (input a, input b,
the resolved pairs): by copying contiguous slices when the two key ranges meet in long runs
(appended tables, shards of key ranges), otherwise by one gather whose row index all
columns share. Merge results always have unique keys, so merging states takes this path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crdtd.data.columnar import (
    fresh_name,
    key_order,
    larger_is_b,
    same_as_next,
    sorted_numeric_keys,
)

if TYPE_CHECKING:
    import polars as pl

# Assemble by copying slices when there are at most this many runs, each this long on average.
_MAX_SLICES = 256
_MIN_RUN = 4096


def merge_two(
    a: pl.DataFrame, b: pl.DataFrame, keys: list[str], columns: list[str], timestamp: str | None
) -> pl.DataFrame | None:
    """Merge two non-empty frames laid out as `columns`, one row per key, sorted by key; None
    when a key repeats inside one input (the general path handles that)."""
    import polars as pl

    na, nb = a.height, b.height
    key_frame = pl.concat([a.select(keys), b.select(keys)], rechunk=True)
    numeric = sorted_numeric_keys(key_frame, keys)
    presorted = numeric is not None and a[keys[0]].is_sorted() and b[keys[0]].is_sorted()
    order = key_order(key_frame, keys, numeric, presorted)
    same_next = same_as_next(key_frame, keys, order, numeric)
    starts = np.flatnonzero(same_next)
    first, second = order[starts], order[starts + 1]
    in_a, in_b = np.minimum(first, second), np.maximum(first, second)
    if (same_next[1:] & same_next[:-1]).any() or (in_a >= na).any() or (in_b < na).any():
        return None
    pairs = _resolve_pairs(a, b, in_a, in_b - na, presorted, keys, columns, timestamp)
    total = na + nb + len(starts)
    source = order.astype(np.uint32 if total < 2**32 else np.uint64)
    source[starts] = na + nb + np.arange(len(starts), dtype=source.dtype)
    keep = np.ones(len(order), dtype=bool)
    keep[starts + 1] = False
    return _assemble([a, b, pairs], source[keep])


def _resolve_pairs(
    a: pl.DataFrame,
    b: pl.DataFrame,
    in_a: np.ndarray,
    in_b: np.ndarray,
    increasing: bool,
    keys: list[str],
    columns: list[str],
    timestamp: str | None,
) -> pl.DataFrame:
    """One row per pair (row `in_a[i]` of a, row `in_b[i]` of b): each field the larger present
    value, or with a timestamp the newer row's, the field join at equal timestamps."""
    import polars as pl

    if increasing:  # both inputs sorted by key: a mask picks the pair rows, cheaper than a gather
        rows_a, rows_b = a.filter(_mask(in_a, a.height)), b.filter(_mask(in_b, b.height))
    else:
        rows_a, rows_b = a.gather(pl.Series(in_a)), b.gather(pl.Series(in_b))
    values = [c for c in columns[len(keys) :] if a.schema[c] != pl.Null]
    taken = list(columns)
    second: dict[str, str] = {}
    for c in values:
        second[c] = fresh_name(f"__crdtd_b__{c}", taken)
        taken.append(second[c])
    both = pl.concat(
        [rows_a, rows_b.select(pl.col(c).alias(second[c]) for c in values)], how="horizontal"
    )
    newer = older = None
    if timestamp is not None and timestamp in second:
        newer, older = fresh_name("__crdtd_newer", taken), fresh_name("__crdtd_older", taken)
        t_a, t_b = pl.col(timestamp), pl.col(second[timestamp])
        both = both.with_columns(
            (t_b > t_a).fill_null(t_a.is_null() & t_b.is_not_null()).alias(newer),
            (t_b < t_a).fill_null(t_b.is_null() & t_a.is_not_null()).alias(older),
        )
    exprs = [pl.col(k) for k in keys]
    for c in columns[len(keys) :]:
        if c not in second:
            exprs.append(pl.col(c))
            continue
        take_b = larger_is_b(pl.col(c), pl.col(second[c]))
        if newer is not None and older is not None:
            take_b = pl.col(newer) | (~pl.col(older) & take_b)
        exprs.append(pl.when(take_b).then(pl.col(second[c])).otherwise(pl.col(c)).alias(c))
    return both.select(exprs)


def _mask(rows: np.ndarray, height: int) -> pl.Series:
    import polars as pl

    mask = np.zeros(height, dtype=bool)
    mask[rows] = True
    return pl.Series(mask)


def _assemble(parts: list[pl.DataFrame], source: np.ndarray) -> pl.DataFrame:
    """Rows `source` (indices into the parts stacked in order) of the stacked parts."""
    import polars as pl

    n = len(source)
    breaks = np.count_nonzero(source[1:] - source[:-1] != 1) if n > 1 else 0
    if breaks + 1 > min(_MAX_SLICES, n // _MIN_RUN):
        return pl.concat(parts, rechunk=True).gather(pl.Series(source))
    bounds = np.cumsum([0] + [p.height for p in parts])
    run_starts = np.concatenate(([0], np.flatnonzero(source[1:] - source[:-1] != 1) + 1, [n]))
    pieces = []
    for start, end in zip(run_starts[:-1].tolist(), run_starts[1:].tolist()):
        row, left = int(source[start]), end - start
        while left:  # a run of consecutive indices can cross from one part into the next
            p = int(np.searchsorted(bounds, row, side="right")) - 1
            take = min(left, int(bounds[p + 1]) - row)
            pieces.append(parts[p].slice(row - int(bounds[p]), take))
            row, left = row + take, left - take
    return pl.concat(pieces, rechunk=True)
