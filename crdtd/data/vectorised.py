"""Vectorised merge with polars and numpy: the same join as `records`, on sorted runs.

All input rows are put in key order (an argsort of the key columns only), so the rows of one
key form a run. Each round joins every even-positioned row of a run with the row after it,
halving the longest run; since the join is associative and commutative, any pairing gives the
result the row-by-row path gives. Rounds work on row indices: per column only the values of
the paired rows are compared, and each output column is gathered once at the end. Polars
orders booleans, numbers, text (by code point), bytes, dates and times exactly like
`resolve.value_rank` does within one type family.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from crdtd.data.columnar import (
    fresh_name,
    key_order,
    larger_is_b,
    same_as_next,
    sorted_numeric_keys,
)
from crdtd.data.schema import UnifiedSchema
from crdtd.data.spec import MergeSpec
from crdtd.data.twoway import merge_two

if TYPE_CHECKING:
    import polars as pl

# Threads building the per-column row choices after each round, for rounds this large.
_WORKERS = min(4, os.cpu_count() or 1)
_THREADED_MIN_ROWS = 100_000

# Names of the timestamp flags next to the per-column decisions (NUL cannot clash with them).
NEWER, OLDER = "\x00newer", "\x00older"


def _pair_decisions(
    big: pl.DataFrame, pairs: list[tuple[list[str], np.ndarray, np.ndarray]], ts: str | None
) -> pl.DataFrame:
    """For each column, whether the second row of each pair wins; with a timestamp also
    whether that row is newer / older. `pairs` groups columns sharing the same row pairs."""
    import polars as pl

    if not pairs:
        return pl.DataFrame()
    gathers, second_name = [], {}
    for cols, wa, wb in pairs:
        first, second = pl.Series(wa), pl.Series(wb)
        for c in cols:
            second_name[c] = fresh_name(f"__crdtd_b__{c}", big.columns)
            gathers += [pl.col(c).gather(first), pl.col(c).gather(second).alias(second_name[c])]
    both = big.select(gathers)
    exprs = [larger_is_b(pl.col(c), pl.col(b)).alias(c) for c, b in second_name.items()]
    if ts is not None:
        t_a, t_b = pl.col(ts), pl.col(second_name[ts])
        newer = (t_b > t_a).fill_null(t_a.is_null() & t_b.is_not_null())
        older = (t_b < t_a).fill_null(t_b.is_null() & t_a.is_not_null())
        exprs += [newer.alias(NEWER), older.alias(OLDER)]
    return both.select(exprs)


def _positions(same_next: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Rows kept this round (even position in their run), the absorbing rows among them,
    where those land once the absorbed rows are dropped, and whether a run has > 2 rows."""
    m = len(same_next) + 1
    same_prev = np.zeros(m, dtype=bool)
    same_prev[1:] = same_next
    if not (same_next[1:] & same_next[:-1]).any():  # every run has at most two rows
        absorbing = np.flatnonzero(same_next)
        # Each earlier absorbing row dropped exactly one row (its partner) before this one.
        return ~same_prev, absorbing, absorbing - np.arange(len(absorbing)), False
    at = np.arange(m)
    pos = at - np.maximum.accumulate(np.where(same_prev, 0, at))
    keep = (pos & 1) == 0
    absorbing = np.flatnonzero(same_next & keep[:-1])
    return keep, absorbing, np.cumsum(keep)[absorbing] - 1, True


def _chosen_rows(
    kept_base: np.ndarray, a_kept: np.ndarray, take_b: np.ndarray, wa: np.ndarray, wb: np.ndarray
) -> np.ndarray:
    """Source rows of one column after a round: the kept rows, each absorbing row replaced by
    the winner of its pair."""
    w = kept_base.copy()
    w[a_kept] = np.where(take_b, wb, wa)
    return w


def _aligned_column(df: pl.DataFrame, c: str, spec: MergeSpec, schema: UnifiedSchema) -> pl.Expr:
    """Column `c` of `df`, typed nulls where `df` lacks it; a missing tombstone is False."""
    import polars as pl

    col = pl.col(c) if c in df.columns else pl.lit(None, dtype=schema.dtypes[c]).alias(c)
    return col.fill_null(False) if c == spec.tombstone else col


def merge_frames(
    frames: Sequence[pl.DataFrame], spec: MergeSpec, schema: UnifiedSchema
) -> pl.DataFrame:
    """Merge frames already cast to `schema`; one row per key, sorted by key."""
    import polars as pl

    keys = list(spec.keys)
    columns = schema.columns
    aligned = [df.select(_aligned_column(df, c, spec, schema) for c in columns) for df in frames]
    stamped = spec.timestamp is not None and schema.dtypes[spec.timestamp] != pl.Null
    ts = spec.timestamp if stamped else None
    out = None
    if len(aligned) == 2 and aligned[0].height and aligned[1].height:
        out = merge_two(aligned[0], aligned[1], keys, columns, ts)
    if out is None:
        out = _merge_runs(aligned, keys, columns, schema, ts)
    if spec.drop_deleted and spec.tombstone is not None:
        out = out.filter(~pl.col(spec.tombstone))
    return out.select(columns).cast(pl.Schema(schema.dtypes))


def _merge_runs(
    aligned: list[pl.DataFrame],
    keys: list[str],
    columns: list[str],
    schema: UnifiedSchema,
    ts: str | None,
) -> pl.DataFrame:
    """Merge any number of frames laid out as `columns`, in rounds over sorted key runs."""
    import polars as pl

    big = pl.concat(aligned, how="vertical", rechunk=True)
    if big.height == 0:
        return big
    numeric = sorted_numeric_keys(big, keys)
    presorted = numeric is not None and all(df[keys[0]].is_sorted() for df in aligned)
    order = key_order(big, keys, numeric, presorted)
    same_next = same_as_next(big, keys, order, numeric)
    run_ids: np.ndarray | None = None  # needed only when some key has more than two rows
    src = order  # for each current row, a source row holding its key
    values = [c for c in columns[len(keys) :] if schema.dtypes[c] != pl.Null]
    winners = dict.fromkeys(values, order)  # for each column, the source row of its value
    while same_next.any():
        keep, a, a_kept, longer = _positions(same_next)
        b = a + 1
        # Columns often share one index array: gather its pairs once (entries keep it alive).
        groups: dict[int, tuple[list[str], np.ndarray, np.ndarray, np.ndarray]] = {}
        for c, w in winners.items():
            if id(w) not in groups:
                groups[id(w)] = ([], w, w[a], w[b])
            groups[id(w)][0].append(c)
        decided = _pair_decisions(big, [(g[0], g[2], g[3]) for g in groups.values()], ts)
        if ts is not None:
            newer_np = decided[NEWER].to_numpy()
            older_np = decided[OLDER].to_numpy()
        kept_of: dict[int, tuple[np.ndarray, np.ndarray]] = {id(src): (src, src[keep])}
        jobs = []
        for c in values:
            take_b = decided[c].to_numpy()
            if ts is not None:
                take_b = newer_np | (~older_np & take_b)
            _, base, wa, wb = groups[id(winners[c])]
            if id(base) not in kept_of:
                kept_of[id(base)] = (base, base[keep])
            jobs.append((c, (kept_of[id(base)][1], a_kept, take_b, wa, wb)))
        if len(src) < _THREADED_MIN_ROWS:
            winners.update((c, _chosen_rows(*args)) for c, args in jobs)
        else:
            with ThreadPoolExecutor(max_workers=_WORKERS) as pool:  # numpy releases the GIL
                done = pool.map(lambda job: _chosen_rows(*job[1]), jobs)
                winners.update(zip((c for c, _ in jobs), done))
        src = kept_of[id(src)][1]
        if not longer:
            break
        if run_ids is None:
            run_ids = np.cumsum(np.concatenate(([True], ~same_next)))
        run_ids = run_ids[keep]
        same_next = run_ids[1:] == run_ids[:-1]
    return big.select(
        [pl.col(k).gather(pl.Series(src)) for k in keys]
        + [
            pl.col(c).gather(pl.Series(winners[c]))
            if c in winners
            else pl.lit(None, dtype=pl.Null).alias(c)
            for c in columns[len(keys) :]
        ]
    )
