"""Key order for the vectorised merge: each key as one unsigned 64-bit code, sorted.

polars sorts text and multi-column keys slowly (an arg_sort of two million UUID strings takes
seconds), while 64-bit integers sort in milliseconds (`sort_codes`). So every key column becomes an
order-preserving code: integer and temporal values (their physical integers) less the
column's minimum, floats by their IEEE bits with the sign folded, booleans as 0 / 1. Text and
bytes are ordered by their first 7 bytes plus a count of the bytes left (exact for short
values); where those tie and the values go on, the tied values are compared whole, and only
runs holding different values are sorted again by the next bytes. The codes of a composite
key are packed into one integer, a column's code replaced by its dense rank where the bits
would not fit. The order is the one polars and `resolve.value_rank` use within a type (text by
code point, which UTF-8 bytes preserve).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from crdtd.data import sort_codes, threads

if TYPE_CHECKING:
    import polars as pl

_U64 = np.uint64
_TOP = _U64(1 << 63)


@dataclass(frozen=True)
class KeyOrder:
    """Row indices in ascending key order (unsigned 32-bit where they fit), and for each row
    in that order whether the next row holds the same key."""

    order: np.ndarray
    same_next: np.ndarray


@dataclass(frozen=True)
class Code:
    values: np.ndarray  # uint64, one per row, order-preserving and exact
    bits: int  # every value is below 2**bits


def key_code(frame: pl.DataFrame, keys: Sequence[str], segments: Sequence[int]) -> Code | None:
    """The exact order-preserving code of each row's key (inputs stacked, `segments` their
    heights); None for a single text key that is ordered by its prefixes instead."""
    if len(keys) == 1 and _is_text(frame[keys[0]]):
        return _text_code(frame[keys[0]])
    return _pack([_column_code(frame[k], segments) for k in keys])


def key_order(frame: pl.DataFrame, keys: Sequence[str], segments: Sequence[int]) -> KeyOrder:
    """Order the rows of `frame` (inputs stacked, `segments` their heights) by `keys`.

    When every input is already sorted by key a stable sort merges the sorted runs in about
    linear time; otherwise polars or numpy sorts them (`sort_codes`)."""
    code = key_code(frame, keys, segments) if frame.height else None
    return order_by_code(frame, keys, segments, code)


def order_by_code(
    frame: pl.DataFrame, keys: Sequence[str], segments: Sequence[int], code: Code | None
) -> KeyOrder:
    """`key_order` from the keys' `code` (`key_code`, packed in its place), or by the single
    text key's prefixes where `code` is None."""
    if frame.height == 0:
        return KeyOrder(np.zeros(0, dtype=np.intp), np.zeros(0, dtype=bool))
    if code is None:
        return _text_order(frame[keys[0]], segments)
    return _sorted(code, segments)


def _sorted(code: Code, segments: Sequence[int], owned: bool = True) -> KeyOrder:
    """The order of rows by an exact code.

    Code and row number are packed into one 64-bit word and sorted (a plain sort is several
    times faster than an argsort; `sort_codes`: polars from 65,536 codes, numpy below), in
    the place of the code's array when the caller `owned` it, and the order is read off the
    low bits. A code too wide for that is arg-sorted whole from 65,536 codes on (polars), and
    below that sorted by its high bits first, the rows tied on them sorted again, together
    with the rank of their tie, by the low bits. An input of sorted runs is merged (numpy's
    stable sort)."""
    n = len(code.values)
    row_bits = max(1, (n - 1).bit_length())
    stable = runs_sorted(code.values, segments)
    if code.bits + row_bits <= 64:
        return _packed_sort(code.values if owned else code.values.copy(), row_bits, stable)
    low_bits = code.bits + row_bits - 64
    if low_bits + 2 * row_bits > 64 or (not stable and sort_codes.by_polars(code.values)):
        order, ordered = _argsort(code.values, segments)
        return KeyOrder(order, ordered[1:] == ordered[:-1])
    ko = _packed_sort(code.values >> _U64(low_bits), row_bits, stable)
    tied = ko.same_next
    if not tied.any():
        return ko
    member = np.zeros(n, dtype=bool)
    member[:-1] = tied
    member[1:] |= tied
    pos = np.flatnonzero(member)  # positions in runs of rows tied on the high bits
    run = np.zeros(len(pos), dtype=_U64)
    np.cumsum(~tied[pos[:-1]] | (pos[1:] != pos[:-1] + 1), out=run[1:])
    rows = ko.order[pos]
    low = code.values[rows] & _U64((1 << low_bits) - 1)
    sub = _packed_sort((run << _U64(low_bits)) | low, max(1, (len(pos) - 1).bit_length()), False)
    ko.order[pos] = rows[sub.order]  # each run keeps its place: run numbers ascend
    inner = pos[1:] == pos[:-1] + 1
    ko.same_next[pos[:-1][inner]] = sub.same_next[inner]
    return ko


def _packed_sort(values: np.ndarray, row_bits: int, stable: bool) -> KeyOrder:
    """Sort values below 2**(64 - row_bits) packed with their row numbers, packed in the
    place of `values` (a code array the caller does not read again)."""
    packed = np.left_shift(values, _U64(row_bits), out=values)
    packed |= np.arange(len(values), dtype=_U64)
    if stable:
        packed.sort(kind="stable")  # merges the inputs' sorted runs
    else:  # (packed values are distinct: every sort gives this order)
        packed = sort_codes.sorted_u64(packed)
    differ = packed[1:] ^ packed[:-1]
    differ >>= _U64(row_bits)
    same_next = differ == 0
    del differ
    rows = packed & _U64((1 << row_bits) - 1)
    del packed
    if row_bits <= 32:
        return KeyOrder(rows.astype(np.uint32), same_next)
    return KeyOrder(rows.view(np.int64), same_next)  # row numbers are below 2**63


def _is_text(s: pl.Series) -> bool:
    import polars as pl

    return s.dtype in (pl.String, pl.Binary)


def _argsort(values: np.ndarray, segments: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices that sort `values`, and the values in that order: a stable merge of the
    inputs' runs when each is sorted."""
    if runs_sorted(values, segments):
        order = np.argsort(values, kind="stable")
        return order, values[order]
    return sort_codes.argsort_sorted_u64(values)


def runs_sorted(values: np.ndarray, segments: Sequence[int]) -> bool:
    """Whether each input's rows are in ascending order already."""
    start = 0
    for height in segments:
        part = values[start : start + height]
        if height > 1 and not bool((part[1:] >= part[:-1]).all()):
            return False
        start += height
    return True


def _column_code(s: pl.Series, segments: Sequence[int]) -> Code:
    """An exact order-preserving code of one key column."""
    import polars as pl

    dtype = s.dtype
    if dtype == pl.Boolean:
        return Code(s.cast(pl.UInt8).to_numpy().astype(_U64), 1)
    if dtype.is_integer() or dtype.is_temporal():
        physical = s.to_physical()
        if physical.dtype.is_integer() and physical.dtype not in (pl.Int128, pl.UInt128):
            lo, hi = int(physical.min()), int(physical.max())  # type: ignore[arg-type]
            values = physical.to_numpy().astype(_U64)
            values -= _U64(lo % (1 << 64))  # wraps exactly
            return Code(values, (hi - lo).bit_length())
    if dtype.is_float():
        bits = s.cast(pl.Float64).to_numpy().view(_U64)  # -0.0 was read as 0.0, NaN as null
        return Code(np.where(bits >= _TOP, ~bits, bits | _TOP), 64)
    if _is_text(s):
        code = _text_code(s)
        return code if code is not None else _rank(_text_order(s, segments))
    # Decimals, 128-bit integers: polars ranks them (rare as keys, so its speed is enough).
    ranks = s.rank("dense").to_numpy().astype(_U64) - _U64(1)
    return Code(ranks, int(ranks.max()).bit_length())


def _rank(ko: KeyOrder) -> Code:
    """Dense rank of each row (0 for the smallest key) from its order."""
    n = len(ko.order)
    in_order = np.zeros(n, dtype=_U64)
    np.cumsum(~ko.same_next, out=in_order[1:])
    ranks = np.empty(n, dtype=_U64)
    ranks[ko.order] = in_order
    return Code(ranks, int(in_order[-1]).bit_length())


def _pack(codes: list[Code]) -> Code:
    """One code ordering rows like the columns' codes compared in turn (lexicographically)."""
    acc = codes[0]
    for code in codes[1:]:
        if acc.bits + code.bits > 64:
            code = _rank_of(code)
        if acc.bits + code.bits > 64:
            acc = _rank_of(acc)
        values = np.left_shift(acc.values, _U64(code.bits))
        values |= code.values
        acc = Code(values, acc.bits + code.bits)
    return acc


def _rank_of(code: Code) -> Code:
    return _rank(_sorted(code, ()))


# -- text and bytes -------------------------------------------------------------------------

# Text whose sampled values repeat (at most 1 in 8 distinct) and that holds at most this many
# distinct values is coded by each value's rank among them: typical of the leading columns of
# composite keys (site, region, tenant).
_DICTIONARY_MAX = 1 << 16
_SAMPLE = 4096


def _few_distinct(s: pl.Series) -> bool:
    """Whether a sample of the column suggests few distinct values."""
    n = len(s)
    if n < 64:
        return False
    sample = s.gather_every(max(1, n // _SAMPLE))
    return sample.n_unique() <= len(sample) // 8


def _dictionary_code(s: pl.Series) -> Code | None:
    """Each value's rank among the column's distinct values, found by its 64-bit hash in the
    sorted hashes of the distinct values (exact: it is used only if those hashes differ);
    None if there are too many distinct values or two of them share a hash."""
    distinct = s.unique()
    if len(distinct) > _DICTIONARY_MAX:
        return None
    hashes = distinct.hash(seed=0).to_numpy()
    by_hash = np.argsort(hashes)
    sorted_hashes = hashes[by_hash]
    if (sorted_hashes[1:] == sorted_hashes[:-1]).any():
        return None
    text_rank = distinct.arg_sort().arg_sort().to_numpy()  # by bytes: code-point order for text
    bits = (len(distinct) - 1).bit_length()
    all_hashes = s.hash(seed=0).to_numpy()
    table_bits = min(bits + 4, 22)
    shift = _slot_shift(hashes, table_bits)
    if shift is not None:  # a direct lookup by a slice of the hash bits
        mask = _U64((1 << table_bits) - 1)
        table = np.zeros(1 << table_bits, dtype=_U64)
        table[(hashes >> _U64(shift)) & mask] = text_rank
        return Code(table[(all_hashes >> _U64(shift)) & mask], bits)
    rank_of = text_rank[by_hash].astype(_U64)
    return Code(rank_of[np.searchsorted(sorted_hashes, all_hashes)], bits)


def _slot_shift(hashes: np.ndarray, table_bits: int) -> int | None:
    """A shift such that `table_bits` bits of the hashes from there differ for every hash
    (tried at a few places); None if none does."""
    mask = _U64((1 << table_bits) - 1)
    for shift in range(0, 64 - table_bits + 1, 7):
        slots = (hashes >> _U64(shift)) & mask
        if len(np.unique(slots)) == len(slots):
            return shift
    return None


def _text_code(s: pl.Series) -> Code | None:
    """An exact code for text that has few distinct values or is at most 7 bytes long; None
    for other text (its order comes from sorting prefixes, `_text_order`)."""
    import polars as pl

    if _few_distinct(s):
        code = _dictionary_code(s)
        if code is not None:
            return code
    width = int(s.cast(pl.Binary).bin.size().max() or 0)  # type: ignore[arg-type]
    if width <= _FIRST_WIDTH:
        return Code(_Bytes(s).chunk(None, 0, width), 8 * width + 4)
    return None


# Text columns of at least twice this many rows are converted and read in row ranges, one
# per core, on the merge's threads (Arrow's conversion of polars' string views is serial).
_PART_ROWS = 1 << 18


class _Bytes:
    """The UTF-8 bytes of a text (or binary) column, read 8 at a time from any offset; a
    large column in parts (row ranges), each converted and read on its own thread."""

    def __init__(self, s: pl.Series) -> None:
        n = len(s)
        count = max(1, min(threads.CORES, n // _PART_ROWS))
        self.bounds = np.array([n * i // count for i in range(count + 1)], dtype=np.int64)
        spans = list(zip(self.bounds[:-1].tolist(), self.bounds[1:].tolist()))
        self.parts = threads.map_threaded(
            lambda ab: _BytesPart(s.slice(ab[0], ab[1] - ab[0])), spans
        )

    @property
    def shortest(self) -> int:
        """The length of the column's shortest value, in bytes."""
        return min(p.shortest for p in self.parts)

    def chunk(self, rows: np.ndarray | None, offset: int, width: int) -> np.ndarray:
        """`_BytesPart.chunk` over the whole column."""
        if len(self.parts) == 1:
            return self.parts[0].chunk(rows, offset, width)
        if rows is None:
            read = threads.map_threaded(lambda p: p.chunk(None, offset, width), self.parts)
            return np.concatenate(read)
        out = np.empty(len(rows), dtype=_U64)
        part = np.searchsorted(self.bounds[1:-1], rows, side="right")
        for i, p in enumerate(self.parts):
            at = np.flatnonzero(part == i)
            out[at] = p.chunk(rows[at] - self.bounds[i], offset, width)
        return out


class _BytesPart:
    """The UTF-8 bytes of one row range of a `_Bytes` column, read 8 at a time from any
    offset."""

    def __init__(self, s: pl.Series) -> None:
        import pyarrow as pa

        arr = s.to_arrow()
        t = arr.type
        binary = pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
        want = pa.large_binary() if binary else pa.large_string()
        if t != want:
            arr = arr.cast(want)
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)
        offsets = offsets[arr.offset : arr.offset + len(arr) + 1]
        data = arr.buffers()[2]
        raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
        raw = raw[: int(offsets[-1])]
        # Overlapping big-endian 8-byte words starting at every byte that has 7 after it; the
        # last bytes are read from a copy padded with zeros.
        if len(raw) >= 8:
            self.words = _words(raw[: len(raw) - 7], raw)
        else:  # every read comes from the tail
            self.words = np.zeros(1, dtype=">u8")
        self.tail_from = max(0, len(raw) - 7)
        tail = np.zeros(16, dtype=np.uint8)
        tail[: len(raw) - self.tail_from] = raw[self.tail_from :]
        self.tail = _words(tail[:8], tail)
        self.starts = offsets[:-1]
        self.lengths = offsets[1:] - offsets[:-1]
        self.shortest = int(self.lengths.min()) if len(self.lengths) else 0

    def chunk(self, rows: np.ndarray | None, offset: int, width: int) -> np.ndarray:
        """For each row, bytes [offset, offset + width) as a number (zero past the end), times
        16, plus how many of them exist, or width + 1 if the value goes on beyond them: an
        order-preserving code of the value's remainder that is exact when it ends here."""
        starts = self.starts if rows is None else self.starts[rows]
        at = starts + offset
        late = at >= self.tail_from
        word = self.words[np.where(late, 0, at)].astype(_U64)
        if late.any():
            word[late] = self.tail[np.minimum(at[late] - self.tail_from, 8)].astype(_U64)
        value = word >> _U64(64 - 8 * width) if width else np.zeros(len(at), dtype=_U64)
        if self.shortest > offset + width:  # every value goes on past these bytes
            return (value << _U64(4)) | _U64(width + 1)
        left = (self.lengths if rows is None else self.lengths[rows]) - offset
        present = np.clip(left, 0, width)
        keep = _KEEP[width][present]  # the `present` leading bytes of the `width`
        count = np.where(left > width, width + 1, present).astype(_U64)
        return ((value & keep) << _U64(4)) | count


def _words(base: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Big-endian 8-byte words starting at each byte of `base` (which `owner` extends by at
    least 7 bytes): overlapping views, no copy."""
    return np.ndarray(shape=(max(len(base), 1),), dtype=">u8", buffer=owner, strides=(1,))


# _KEEP[w][k]: mask of the k leading bytes of a w-byte number.
_KEEP = [
    np.array([((1 << (8 * k)) - 1) << (8 * (w - k)) for k in range(w + 1)], dtype=_U64)
    for w in range(8)
]
_FIRST_WIDTH = 7  # bytes per code at the first level: 7 * 8 + 4 = 60 bits


def _text_order(s: pl.Series, segments: Sequence[int]) -> KeyOrder:
    """Order of a text or binary column (see the module doc)."""
    text = _Bytes(s)
    first = text.chunk(None, 0, _FIRST_WIDTH)
    ko = _sorted(Code(first, 8 * _FIRST_WIDTH + 4), segments, owned=False)
    order, same = ko.order, ko.same_next
    # Tied and going on beyond the bytes compared so far (all tied ones where every value
    # is longer than those bytes).
    open_ = same.copy()
    if text.shortest <= _FIRST_WIDTH:
        at = np.flatnonzero(same)
        open_[at] = (first[order[at]] & _U64(15)) == _U64(_FIRST_WIDTH + 1)
    offset = _FIRST_WIDTH
    while open_.any():
        at = np.flatnonzero(open_)
        differ = _neighbours_differ(s, order, at)
        if not differ.any():
            break
        # Runs of tied rows holding some different values are sorted again, whole.
        pos, local = _runs_around(same, at[differ])
        run_bits = int(local[-1]).bit_length()
        width = max(1, min(_FIRST_WIDTH, (64 - run_bits - 4) // 8))
        rows = order[pos]
        code = (local.astype(_U64) << _U64(8 * width + 4)) | text.chunk(rows, offset, width)
        sub = sort_codes.argsort_u64(code)
        order[pos] = rows[sub]  # runs keep their place: local run ids ascend with position
        sorted_code = code[sub]
        tied = sorted_code[1:] == sorted_code[:-1]
        goes_on = (sorted_code[:-1] & _U64(15)) == _U64(width + 1)
        inner = pos[1:] == pos[:-1] + 1
        same[pos[:-1][inner]] = tied[inner]
        open_ = np.zeros_like(same)
        open_[pos[:-1][inner]] = (tied & goes_on)[inner]
        offset += width
    return KeyOrder(order, same)


def _neighbours_differ(s: pl.Series, order: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Whether the values of rows order[at] and order[at + 1] differ, compared whole (in one
    polars query, which gathers both sides at once without the GIL)."""
    import polars as pl

    rows = pl.LazyFrame({"left": order[at], "right": order[at + 1]})
    values = pl.lit(s)
    differ = values.gather(pl.col("left")) != values.gather(pl.col("right"))
    return rows.select(differ).collect().to_series().to_numpy()


def _runs_around(same: np.ndarray, links: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the runs of tied rows (`same`: whether each row ties with the next)
    that hold any of the ascending positions `links`, in order, and the number of each one's
    run among them (from 0)."""
    ends = np.flatnonzero(~same)  # a run ends at each of these, and at the last row
    which = np.unique(np.searchsorted(ends, links))
    bounds = np.append(ends, len(same))
    first = np.where(which > 0, bounds[which - 1] + 1, 0)
    lengths = bounds[which] + 1 - first
    local = np.repeat(np.arange(len(which), dtype=np.int64), lengths)
    starts_in_pos = np.cumsum(lengths) - lengths
    pos = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(first - starts_in_pos, lengths)
    return pos, local
