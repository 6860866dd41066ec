"""The vectorised merge's key order: numpy sorts codes, and the order must be Python's.

Keys of every scalar type the vectorised path takes (text with shared prefixes, NUL bytes and
multi-byte characters, bytes, extreme integers, floats with infinities, dates and times,
composites of them) are ordered by `key_order` and checked against Python's sort of the same
values; `same_next` must say exactly which neighbours hold equal keys.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crdtd.data.keyorder as keyorder
from crdtd.data.keyorder import key_order

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

text_keys = st.one_of(
    st.text(alphabet=st.sampled_from(["a", "b", "\x00", "é", "字", "\U0001f600"]), max_size=20),
    st.sampled_from(
        ["", "a", "a\x00", "abcdefg", "abcdefgh", "abcdefg\x00", "prefix-000000"]
    ).flatmap(lambda p: st.integers(0, 30).map(lambda i: p + str(i))),
)
COLUMN_KINDS: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "int": (pl.Int64, st.integers(-(2**63), 2**63 - 1)),
    "small_int": (pl.Int16, st.integers(-5, 5)),
    "uint": (pl.UInt64, st.integers(0, 2**64 - 1)),
    "float": (pl.Float64, st.floats(allow_nan=False).map(lambda x: x + 0.0)),
    "bool": (pl.Boolean, st.booleans()),
    "text": (pl.String, text_keys),
    "bytes": (pl.Binary, st.binary(max_size=12)),
    "date": (pl.Date, st.dates()),
    "datetime": (pl.Datetime("us"), st.datetimes(min_value=dt.datetime(1900, 1, 1))),
    "decimal": (pl.Decimal(10, 2), st.decimals(-(10**6), 10**6, places=2)),
}


@st.composite
def keyed_frames(draw: st.DrawFn) -> tuple[pl.DataFrame, list[str], list[int]]:
    kinds = draw(st.lists(st.sampled_from(sorted(COLUMN_KINDS)), min_size=1, max_size=3))
    names = [f"k{i}" for i in range(len(kinds))]
    segments = draw(st.lists(st.integers(0, 12), min_size=1, max_size=3))
    n = sum(segments)
    pools = {
        name: draw(st.lists(COLUMN_KINDS[kind][1], min_size=1, max_size=6))
        for name, kind in zip(names, kinds)
    }
    data = {name: [draw(st.sampled_from(pools[name])) for _ in range(n)] for name in names}
    schema = {name: COLUMN_KINDS[kind][0] for name, kind in zip(names, kinds)}
    frame = pl.DataFrame(data, schema=schema)
    if draw(st.booleans()):  # inputs already in key order, as merge results are
        start, parts = 0, []
        for h in segments:
            parts.append(frame.slice(start, h).sort(names))
            start += h
        frame = pl.concat(parts)
    return frame, names, segments


def assert_python_order(frame: pl.DataFrame, names: list[str], ko: keyorder.KeyOrder) -> None:
    """`ko` puts the rows in the order Python's sort gives their keys, and `same_next` says
    exactly which neighbours hold equal keys."""
    rows = frame.select(names).rows()
    ordered = [rows[i] for i in ko.order]
    assert ordered == sorted(rows)
    assert ko.same_next.tolist() == [x == y for x, y in itertools.pairwise(ordered)]


@SETTINGS
@given(keyed_frames())
def test_rows_come_in_python_key_order_and_ties_are_exact(
    case: tuple[pl.DataFrame, list[str], list[int]],
) -> None:
    frame, names, segments = case
    ko = key_order(frame, names, segments)
    assert sorted(ko.order.tolist()) == list(range(frame.height))
    assert_python_order(frame, names, ko)


def test_uuid_like_text_with_shared_prefixes_and_duplicates_sorts_exactly() -> None:
    rng = np.random.default_rng(3)
    hexes = [f"{x:032x}" for x in rng.integers(0, 2**62, 3000)]
    keys = [h[:3] + "-" + h[3:] for h in hexes] + ["0000000-x", "0000000-y", "0000000"] * 2
    frame = pl.DataFrame({"k": keys + keys[:1000]})
    ko = key_order(frame, ["k"], [len(keys), 1000])
    ordered = [frame["k"][int(i)] for i in ko.order]
    assert ordered == sorted(keys + keys[:1000])
    assert ko.same_next.tolist() == [x == y for x, y in itertools.pairwise(ordered)]


@pytest.mark.parametrize(
    "way", ["ranked-by-lookup", "ranked-by-search", "sorted-prefixes"], ids=str
)
@SETTINGS
@given(keyed_frames())
def test_text_keys_order_alike_by_value_rank_and_by_prefixes(
    way: str, case: tuple[pl.DataFrame, list[str], list[int]]
) -> None:
    frame, names, segments = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keyorder, "_few_distinct", lambda s: way.startswith("ranked"))
        if way == "ranked-by-search":
            mp.setattr(keyorder, "_slot_shift", lambda hashes, bits: None)
        ko = key_order(frame, names, segments)
    assert_python_order(frame, names, ko)


@pytest.mark.parametrize("parts", [2, 3])
@SETTINGS
@given(keyed_frames())
def test_text_read_in_parts_on_threads_orders_like_python(
    parts: int, case: tuple[pl.DataFrame, list[str], list[int]]
) -> None:
    frame, names, segments = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keyorder, "_few_distinct", lambda s: False)  # text ordered by its bytes
        mp.setattr(keyorder, "_PART_ROWS", 1)
        mp.setattr(keyorder.threads, "CORES", parts)
        ko = key_order(frame, names, segments)
    assert_python_order(frame, names, ko)


def test_uuid_like_text_read_in_parts_sorts_exactly() -> None:
    rng = np.random.default_rng(5)
    keys = [f"{x:032x}"[:9] + "-" + f"{x:032x}"[9:] for x in rng.integers(0, 2**40, 4000)]
    keys += [k[:7] for k in keys[:50]] + keys[:700]  # prefixes of others, and duplicates
    frame = pl.DataFrame({"k": keys})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keyorder, "_PART_ROWS", 1000)
        parts = keyorder._Bytes(frame["k"]).parts
        ko = key_order(frame, ["k"], [3000, len(keys) - 3000])
    assert len(parts) == min(keyorder.threads.CORES, len(keys) // 1000)
    ordered = [keys[int(i)] for i in ko.order]
    assert ordered == sorted(keys)
    assert ko.same_next.tolist() == [x == y for x, y in itertools.pairwise(ordered)]
