"""Vectorised merge with polars and numpy: the same join as `records`, on sorted runs.

All input rows are put in key order (`keyorder`: numpy sorts one integer code per row), so
the rows of one key form a run. Each round joins every even-positioned row of a run with the
row after it, halving the longest run; since the join is associative and commutative, any
pairing gives the result the row-by-row path gives. Rounds work on row indices, one column at
a time (columns on a small thread pool): a column's values are stacked once, only the paired
rows' values are compared, and the column is gathered once at the end. With a timestamp, the
timestamp column goes first (the newest is the largest, a null the oldest); then only the
rows holding their key's newest timestamp are kept, and the other columns are joined among
those (usually one row per key, so few rounds). polars
orders booleans, numbers, text (by code point), bytes, dates and times exactly like
`resolve.value_rank` does within one type family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from crdtd.data import threads
from crdtd.data.columnar import larger_is_b
from crdtd.data.dense import Pairs, pair_rows
from crdtd.data.keyorder import KeyOrder, key_code, order_by_code, runs_sorted
from crdtd.data.schema import UnifiedSchema
from crdtd.data.spec import MergeSpec
from crdtd.data.twoway import merge_slices

if TYPE_CHECKING:
    import polars as pl

# Columns are resolved on threads (`threads`) for merges of at least this many rows.
_THREADED_MIN_ROWS = 100_000


@dataclass(frozen=True)
class _Round:
    """One round over the current rows: which are kept, which absorb their successor, and
    where those land among the kept rows."""

    keep: np.ndarray
    absorbing: np.ndarray
    landing: np.ndarray


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
    key_frame = pl.concat([df.select(keys) for df in aligned], rechunk=True)
    segments = [df.height for df in aligned]
    arranged = _pairs_or_order(key_frame, keys, segments)
    if isinstance(arranged, Pairs):
        out = _merge_pairs(aligned, key_frame, arranged, columns, schema, ts)
    else:
        sliced = None
        if len(aligned) == 2 and aligned[0].height and aligned[1].height:
            sliced = merge_slices(aligned[0], aligned[1], arranged, keys, columns, ts)
        out = (
            sliced
            if sliced is not None
            else _merge_runs(aligned, key_frame, arranged, columns, schema, ts)
        )
    if spec.drop_deleted and spec.tombstone is not None:
        out = out.filter(~pl.col(spec.tombstone))
    return out.select(columns).cast(pl.Schema(schema.dtypes))


def _pairs_or_order(
    key_frame: pl.DataFrame, keys: list[str], segments: list[int]
) -> Pairs | KeyOrder:
    """Two inputs not both in key order (those merge by slices, `twoway`) pair up directly
    where their key codes are dense (`dense`); other inputs are put in key order. (The codes
    are dropped on return: the order is packed in their place.)"""
    code = key_code(key_frame, keys, segments) if key_frame.height else None
    if code is not None and len(segments) == 2 and not runs_sorted(code.values, segments):
        pairs = pair_rows(code.values, segments[0])
        if pairs is not None:
            return pairs
    return order_by_code(key_frame, keys, segments, code)


def _rounds(same_next: np.ndarray) -> list[_Round]:
    """The rounds that reduce every run of equal keys to one row.

    In each round the rows at even positions of a run are kept and each absorbs the row after
    it, if any; a run of length L becomes one of ceil(L / 2). Everything is derived from the
    run lengths with byte-sized arrays: every dropped row is the partner of the absorbing row
    before it, so an absorbing row lands where it was, less the absorbing rows before it."""
    rounds: list[_Round] = []
    m = len(same_next) + 1
    if not (same_next[1:] & same_next[:-1]).any():  # every run has at most two rows
        absorbing = np.flatnonzero(same_next)
        if len(absorbing):
            keep = np.ones(m, dtype=bool)
            keep[absorbing + 1] = False
            rounds.append(_Round(keep, absorbing, absorbing - np.arange(len(absorbing))))
        return rounds
    starts = np.flatnonzero(np.concatenate(([True], ~same_next)))
    lengths = np.diff(np.append(starts, m))
    while (lengths > 1).any():
        alternate = np.zeros(m + 1, dtype=np.uint8)
        alternate[1::2] = 1  # parity of the row's position overall
        odd_start = np.repeat((starts & 1).astype(np.uint8), lengths)
        keep = alternate[:m] == odd_start  # even position within the run
        absorbing = np.flatnonzero(same_next & keep[:-1])
        rounds.append(_Round(keep, absorbing, absorbing - np.arange(len(absorbing))))
        lengths = (lengths + 1) // 2
        m = int(lengths.sum())
        starts = np.cumsum(lengths) - lengths
        same_next = np.ones(m, dtype=bool)
        same_next[starts[1:] - 1] = False
        same_next = same_next[:-1]
    return rounds


def _without_nulls(s: pl.Series) -> pl.Series:
    """The column's values with its validity dropped (what sits under a null is arbitrary):
    the same buffers without the validity bitmap, else the nulls filled with zeros."""
    import polars as pl
    import pyarrow as pa

    try:
        arr = s.to_arrow()
        bare = pa.Array.from_buffers(arr.type, len(arr), [None, *arr.buffers()[1:]], arr.offset)
        out = pl.Series(s.name, bare)
        if out.dtype == s.dtype and out.null_count() == 0:
            return out
    except Exception:  # another buffer layout: fill instead
        pass
    return s.fill_null(strategy="zero")


class _Column:
    """A stacked column ready for gathers. polars gathers a column with nulls several times
    slower than one without, so numbers, booleans and temporal values with nulls are held as
    their values (nulls filled with zeros) and a validity mask, gathered separately."""

    def __init__(self, stacked: pl.Series) -> None:
        import polars as pl

        self.name = stacked.name
        self.valid: pl.Series | None = None
        self.values = stacked
        dtype = stacked.dtype
        plain = dtype.is_numeric() or dtype.is_temporal() or dtype == pl.Boolean
        if plain and not dtype.is_decimal() and stacked.null_count():
            self.values = _without_nulls(stacked)
            self.valid = stacked.is_not_null()

    def gather(self, rows: pl.Series) -> tuple[pl.Series, pl.Series | None]:
        """Values and validity (None: all valid, or nulls kept in the values) at `rows`."""
        valid = self.valid.gather(rows) if self.valid is not None else None
        return self.values.gather(rows), valid

    def result(self, rows: pl.Series) -> pl.Series:
        """The column at `rows`, nulls restored."""
        import polars as pl

        values, valid = self.gather(rows)
        if valid is None:
            return values
        return pl.select(pl.when(valid).then(values).alias(self.name)).to_series()

    def decide(self, a_rows: pl.Series, b_rows: pl.Series) -> np.ndarray:
        """Per pair (a_rows[i], b_rows[i]): whether b holds the larger value (null never
        wins)."""
        import polars as pl

        (x, vx), (y, vy) = self.gather(a_rows), self.gather(b_rows)
        a, b = pl.col("a"), pl.col("b")
        if vx is None or vy is None:
            frame = pl.DataFrame({"a": x, "b": y})
            larger = larger_is_b(a, b)
        else:
            frame = pl.DataFrame({"a": x, "b": y, "va": vx, "vb": vy})
            va, vb = pl.col("va"), pl.col("vb")
            larger = vb & (~va | (b > a))
        return frame.select(larger.alias("larger")).to_series().to_numpy()


@dataclass(frozen=True)
class _FirstRound:
    """The first round's row indices, the same for every column (computed once): the rows
    kept (each key's first), the pairs' second rows, and where the pairs land among the kept
    (so their first rows are `kept[landing_rows]`). The polars copies are made when first
    asked for: a merge of one round and one of several need different ones."""

    kept: np.ndarray
    b_rows: np.ndarray
    landing_rows: np.ndarray

    @classmethod
    def of(cls, order: np.ndarray, r: _Round) -> _FirstRound:
        return cls(order[r.keep], order[r.absorbing + 1], r.landing)

    @cached_property
    def a_rows(self) -> np.ndarray:
        return self.kept[self.landing_rows]

    @cached_property
    def a_series(self) -> pl.Series:
        import polars as pl

        return pl.Series(self.a_rows)

    @cached_property
    def b_series(self) -> pl.Series:
        import polars as pl

        return pl.Series(self.b_rows)

    @cached_property
    def kept_series(self) -> pl.Series:
        import polars as pl

        return pl.Series(self.kept)

    @cached_property
    def landing(self) -> pl.Series:
        """`landing_rows` for polars, typed like the kept rows."""
        import polars as pl

        return pl.Series(self.landing_rows.astype(self.kept.dtype, copy=False))


def _below_all(s: pl.Series) -> tuple[pl.Series, object] | None:
    """The column's physical values with nulls replaced by a value below every value in it,
    and that value; None where there is no such value or the column has no nulls (booleans,
    text and decimals keep their nulls: polars gathers a column with nulls several times slower
    than one without)."""
    import polars as pl
    from polars.datatypes import IntegerType

    dtype = s.dtype
    if not s.null_count() or dtype.is_decimal() or not (dtype.is_numeric() or dtype.is_temporal()):
        return None
    physical = s.to_physical()
    low: object
    if physical.dtype.is_float():
        low = float("-inf")
    elif isinstance(physical.dtype, IntegerType) and physical.dtype not in (pl.Int128, pl.UInt128):
        low = pl.select(physical.dtype.min()).item()  # the type's minimum, as a literal
    else:
        return None
    smallest = physical.min()
    if smallest is None or smallest <= low:  # type: ignore[operator]
        return None
    return physical.fill_null(low), low


def _one_round_column(stacked: pl.Series, first: _FirstRound) -> pl.Series:
    """The merged column when every key is in at most two rows: each key's first row in key
    order, gathered once, then patched where the second row's value is larger (null never
    wins). Only the second rows are gathered besides, which halves the random reads of
    gathering both rows of every pair."""
    import polars as pl

    filled = _below_all(stacked)
    values = stacked if filled is None else filled[0]
    out = values.gather(first.kept_series)
    second = values.gather(first.b_series)
    if len(second):
        x, y = pl.col("x"), pl.col("y")
        larger = (y > x) if filled is not None else larger_is_b(x, y)
        pair = pl.DataFrame({"x": out.gather(first.landing), "y": second})
        take_b = pair.select(larger.alias("b")).to_series()
        out = out.scatter(first.landing.filter(take_b), second.filter(take_b))
    if filled is None:
        return out
    low = pl.lit(filled[1], dtype=out.dtype)
    restored = pl.select(pl.when(pl.lit(out) != low).then(pl.lit(out))).to_series()
    return restored.cast(stacked.dtype).alias(stacked.name)


def _resolve_column(
    stacked: pl.Series, order: np.ndarray, rounds: list[_Round], first: _FirstRound | None
) -> pl.Series:
    """The merged column: round by round, each pair keeps the larger value (null never
    wins)."""
    import polars as pl

    if len(rounds) == 1 and first is not None:
        return _one_round_column(stacked, first)
    column = _Column(stacked)
    w = order
    for i, r in enumerate(rounds):
        if i == 0 and first is not None:
            wa, wb, sa, sb, kept = (
                first.a_rows,
                first.b_rows,
                first.a_series,
                first.b_series,
                first.kept,
            )
        else:
            wa, wb = w[r.absorbing], w[r.absorbing + 1]
            sa, sb, kept = pl.Series(wa), pl.Series(wb), w[r.keep]
        take_b = column.decide(sa, sb)
        w = kept.copy() if kept is not w else kept
        w[r.landing] = np.where(take_b, wb, wa)
    return column.result(pl.Series(w))


def _merge_runs(
    aligned: list[pl.DataFrame],
    key_frame: pl.DataFrame,
    ko: KeyOrder,
    columns: list[str],
    schema: UnifiedSchema,
    ts: str | None,
) -> pl.DataFrame:
    """Merge any number of frames laid out as `columns`, in rounds over sorted key runs
    (`key_frame`: their key columns stacked, `ko`: its order)."""
    import polars as pl

    n = key_frame.height
    if n == 0:
        return pl.concat(aligned)
    order = ko.order.astype(np.uint32 if n < 2**32 else np.uint64, copy=False)
    rounds = _rounds(ko.same_next)

    first = _FirstRound.of(order, rounds[0]) if rounds else None
    done: dict[str, pl.Series] = {}
    if ts is not None and rounds:
        stamps = _stacked(aligned, ts)
        done[ts] = _resolve_column(stamps, order, rounds, first)
        order, same_next = _newest_rows(order, ko.same_next, stamps, done[ts])
        rounds = _rounds(same_next)
        first = _FirstRound.of(order, rounds[0]) if rounds else None
    src = first.kept if first is not None else order  # a row of each key, for the keys
    for r in rounds[1:]:
        src = src[r.keep]

    def column(c: str) -> pl.Series:
        if c in done:
            return done[c]
        return _resolve_column(_stacked(aligned, c), order, rounds, first)

    return _assemble(key_frame, src, column, columns, schema)


def _merge_pairs(
    aligned: list[pl.DataFrame],
    key_frame: pl.DataFrame,
    pairs: Pairs,
    columns: list[str],
    schema: UnifiedSchema,
    ts: str | None,
) -> pl.DataFrame:
    """Merge two frames whose rows `pairs` pairs by key (`dense`): one round. With a
    timestamp, a pair whose rows differ in it is its newer row; only tied pairs are joined."""

    done: dict[str, pl.Series] = {}
    if ts is not None:
        pairs, done[ts] = _newest_pairs(_stacked(aligned, ts), pairs)
    first = _FirstRound(pairs.kept, pairs.second, pairs.landing)
    return _assemble(
        key_frame,
        pairs.kept,
        lambda c: done[c] if c in done else _one_round_column(_stacked(aligned, c), first),
        columns,
        schema,
    )


def _newest_pairs(stamps: pl.Series, pairs: Pairs) -> tuple[Pairs, pl.Series]:
    """The pairs whose two rows hold the same timestamp (a null the oldest), each key's
    first row replaced by its second where that is newer; and each key's newest timestamp."""
    import polars as pl

    first, second = stamps.gather(pairs.kept[pairs.landing]), stamps.gather(pairs.second)
    both = pl.DataFrame({"a": first, "b": second})
    newer_b, tied = both.select(
        larger_is_b(pl.col("a"), pl.col("b")).alias("newer"),
        pl.col("a").eq_missing(pl.col("b")).alias("tied"),
    )
    newer, same = newer_b.to_numpy(), tied.to_numpy()
    kept = pairs.kept.copy()
    kept[pairs.landing[newer]] = pairs.second[newer]
    newest = stamps.gather(pl.Series(kept))
    return Pairs(kept, pairs.landing[same], pairs.second[same]), newest


def _stacked(aligned: list[pl.DataFrame], c: str) -> pl.Series:
    """Column `c` of every input, one after another in one chunk (polars gathers from a
    column of several chunks many times slower)."""
    import polars as pl

    return pl.concat([df[c] for df in aligned], rechunk=True)


def _assemble(
    key_frame: pl.DataFrame,
    src: np.ndarray,
    column: Callable[[str], pl.Series],
    columns: list[str],
    schema: UnifiedSchema,
) -> pl.DataFrame:
    """The merged frame: the keys of rows `src` (one per key, in key order) and each value
    column from `column` (columns of nulls only stay so), resolved on a thread pool for large
    merges."""
    import polars as pl

    keys = key_frame.columns
    others = columns[key_frame.width :]

    def one(c: str) -> pl.Series:
        if c in keys:
            return key_frame[c].gather(pl.Series(src))
        if schema.dtypes[c] == pl.Null:
            return pl.repeat(None, len(src), dtype=pl.Null, eager=True).alias(c)
        return column(c)

    threaded = key_frame.height >= _THREADED_MIN_ROWS
    return pl.DataFrame(threads.map_threaded(one, keys + others, threaded))


def _newest_rows(
    order: np.ndarray, same_next: np.ndarray, stamps: pl.Series, newest: pl.Series
) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `order` whose timestamp is their key's newest (`newest`: one per run of
    equal keys; null only if all of the run's are), and for each of those rows whether the
    next one holds the same key. Only these rows' values can win: the field join among them
    is the merged row."""
    import polars as pl

    run = np.zeros(len(order), dtype=order.dtype)
    np.cumsum(~same_next, out=run[1:])
    row_stamp = stamps.gather(pl.Series(order))
    is_newest = row_stamp.eq_missing(newest.gather(pl.Series(run))).to_numpy()
    run = run[is_newest]
    return order[is_newest], run[1:] == run[:-1]
