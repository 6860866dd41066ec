"""Merging two tables whose key ranges meet in long runs, by copying slices.

When two tables with unique keys are appended ranges or shards of key ranges (a merge result
and a table of later rows, say), the merged table in key order is a few long runs of rows of
a, of b and of the pairs both hold. Then only the pairs are resolved, and the result is
copied slice by slice instead of gathered row by row. `vectorised` tries this first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from crdtd.data.columnar import fresh_name, larger_is_b

if TYPE_CHECKING:
    import polars as pl

    from crdtd.data.keyorder import KeyOrder

# Assemble by copying slices when there are at most this many runs, each this long on average.
_MAX_SLICES = 256
_MIN_RUN = 4096
# Rows in key order checked first for long runs.
_HEAD = 1 << 16


def merge_slices(
    a: pl.DataFrame,
    b: pl.DataFrame,
    ko: KeyOrder,
    keys: list[str],
    columns: list[str],
    timestamp: str | None,
) -> pl.DataFrame | None:
    """Merge two non-empty frames laid out as `columns` (rows of a then b in `ko`'s key
    order) by copying slices; None unless each key is in each input at most once and the
    result falls into few long runs."""
    na = a.height
    order, same_next = ko.order, ko.same_next
    at = np.flatnonzero(same_next)  # where a pair starts, in key order
    first, second = order[at], order[at + 1]
    in_a, in_b = np.minimum(first, second), np.maximum(first, second)
    if (same_next[1:] & same_next[:-1]).any() or (in_a >= na).any() or (in_b < na).any():
        return None
    limit = min(_MAX_SLICES, (len(order) - len(at)) // _MIN_RUN)
    head = _source(order[: _HEAD + 1], at[at < _HEAD], len(order))  # most fail here, cheaply
    if _runs(head[:_HEAD]) > limit:
        return None
    source = _source(order, at, len(order))
    if _runs(source) > limit:
        return None
    in_b -= na
    increasing = bool((in_a[1:] > in_a[:-1]).all() and (in_b[1:] > in_b[:-1]).all())
    pairs = _resolve_pairs(a, b, in_a, in_b, increasing, keys, columns, timestamp)
    return _assemble_slices([a, b, pairs], source)


def _source(order: np.ndarray, at: np.ndarray, rows: int) -> np.ndarray:
    """For each merged row in key order, its row in a, b and the resolved pairs stacked
    (`rows` in a and b): rows in `order`, the pair starting at `at[i]` replaced by pair i,
    its second row dropped."""
    index_type = np.uint32 if rows + len(at) < 2**32 else np.uint64
    source = order.astype(index_type)
    source[at] = rows + np.arange(len(at), dtype=index_type)
    keep = np.ones(len(order), dtype=bool)
    keep[at + 1] = False
    return source[keep]


def _runs(source: np.ndarray) -> int:
    """How many runs of consecutive indices `source` holds."""
    return 1 + int(np.count_nonzero(source[1:] != source[:-1] + 1)) if len(source) else 0


def _pair_rows(
    a: pl.DataFrame, b: pl.DataFrame, in_a: np.ndarray, in_b: np.ndarray, increasing: bool
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows of a and of b that form the pairs, pair by pair."""
    import polars as pl

    if increasing:  # both inputs sorted by key: a mask picks the pair rows, cheaper than a gather
        return a.filter(_mask(in_a, a.height)), b.filter(_mask(in_b, b.height))
    return a.gather(pl.Series(in_a)), b.gather(pl.Series(in_b))


def _decisions(
    a: pl.DataFrame,
    b: pl.DataFrame,
    in_a: np.ndarray,
    in_b: np.ndarray,
    increasing: bool,
    values: list[str],
    timestamp: str | None,
) -> dict[str, np.ndarray]:
    """For each value column, whether b's value wins each pair: the larger present value, or
    with a timestamp the newer row's, the field join at equal timestamps."""
    import polars as pl

    if not values:
        return {}
    rows_a, rows_b = _pair_rows(a.select(values), b.select(values), in_a, in_b, increasing)
    taken = list(values)
    second: dict[str, str] = {}
    for c in values:
        second[c] = fresh_name(f"__crdtd_b__{c}", taken)
        taken.append(second[c])
    both = pl.concat([rows_a, rows_b.rename(second)], how="horizontal")
    exprs = [larger_is_b(pl.col(c), pl.col(second[c])).alias(c) for c in values]
    if timestamp is not None and timestamp in second:
        t_a, t_b = pl.col(timestamp), pl.col(second[timestamp])
        newer = (t_b > t_a).fill_null(t_a.is_null() & t_b.is_not_null())
        older = (t_b < t_a).fill_null(t_b.is_null() & t_a.is_not_null())
        flags = both.select(newer.alias("newer"), older.alias("older"))
        exprs = [
            (pl.lit(flags["newer"]) | (~pl.lit(flags["older"]) & e)).alias(c)
            for c, e in zip(values, exprs)
        ]
    decided = both.select(exprs)
    return {c: decided[c].to_numpy() for c in values}


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
    """One row per pair (row `in_a[i]` of a, row `in_b[i]` of b), each field the winner."""
    import polars as pl

    values = [c for c in columns[len(keys) :] if a.schema[c] != pl.Null]
    take_b = _decisions(a, b, in_a, in_b, increasing, values, timestamp)
    rows_a, rows_b = _pair_rows(a, b, in_a, in_b, increasing)
    return rows_a.with_columns(
        pl.when(pl.Series(take_b[c])).then(rows_b[c]).otherwise(pl.col(c)).alias(c) for c in values
    )


def _mask(rows: np.ndarray, height: int) -> pl.Series:
    import polars as pl

    mask = np.zeros(height, dtype=bool)
    mask[rows] = True
    return pl.Series(mask)


def _assemble_slices(parts: list[pl.DataFrame], source: np.ndarray) -> pl.DataFrame:
    """Rows `source` (indices into the parts stacked in order, in long runs) of the parts."""
    import polars as pl

    n = len(source)
    bounds = np.cumsum([0] + [p.height for p in parts])
    run_starts = np.concatenate(
        ([0], np.flatnonzero(np.diff(source.astype(np.int64)) != 1) + 1, [n])
    )
    pieces = []
    for start, end in zip(run_starts[:-1].tolist(), run_starts[1:].tolist()):
        row, left = int(source[start]), end - start
        while left:  # a run of consecutive indices can cross from one part into the next
            p = int(np.searchsorted(bounds, row, side="right")) - 1
            take = min(left, int(bounds[p + 1]) - row)
            pieces.append(parts[p].slice(row - int(bounds[p]), take))
            row, left = row + take, left - take
    return pl.concat(pieces, rechunk=True)
