"""Laws of the tabular merge, for every input type, and the fast path against the row path.

One Hypothesis strategy builds random tables (conflicting values, nulls, missing columns,
duplicate keys); adapters turn them into each input type. Results are compared as rows.
"""

from __future__ import annotations

import datetime as dt
import math
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import crdtd.data.twoway as twoway
import crdtd.data.vectorised as vectorised
from crdtd.data import merge
from crdtd.data.io import read_table

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Typed columns: each holds one type, so every input type can carry it.
COLUMN_VALUES: dict[str, list[Any]] = {
    "n": [-3, 0, 5, 2**40],
    "x": [-1.5, 0.0, -0.0, 2.25, 1e9],
    "s": ["a", "b", "Z", "é", "ab"],
    "flag": [True, False],
    "ts": [0, 1, 2],
    "deleted": [True, False],
}
COLUMN_TYPES = {
    "n": pl.Int64,
    "x": pl.Float64,
    "s": pl.String,
    "flag": pl.Boolean,
    "ts": pl.Int64,
    "deleted": pl.Boolean,
}
KEY_TYPES = {"site": pl.String, "id": pl.Int64}


@st.composite
def tables(draw: st.DrawFn, *, need: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A table as rows: a random subset of columns, nulls, and keys drawn from a small range."""
    cols = [c for c in COLUMN_VALUES if c in need or draw(st.booleans())]
    n = draw(st.integers(min_value=1, max_value=6))
    rows = []
    for _ in range(n):
        row: dict[str, Any] = {
            "site": draw(st.sampled_from(["north", "south"])),
            "id": draw(st.integers(min_value=0, max_value=3)),
        }
        for c in cols:
            row[c] = draw(st.one_of(st.none(), st.sampled_from(COLUMN_VALUES[c])))
        rows.append(row)
    return rows


# Values of mixed types in one column: only lists of dicts can hold these.
wild_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-2, max_value=2),
    st.sampled_from([0.5, -0.0, 2.0, float("nan")]),
    st.sampled_from(["", "a", "é"]),
    st.sampled_from([b"", b"a"]),
    st.tuples(st.integers(0, 1)),
)


@st.composite
def wild_tables(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        row: dict[str, Any] = {"id": draw(st.integers(min_value=0, max_value=3))}
        for c in ("p", "q"):
            if draw(st.booleans()):
                row[c] = draw(wild_values)
        rows.append(row)
    return rows


def to_polars(rows: list[dict[str, Any]]) -> pl.DataFrame:
    present = {c for r in rows for c in r}
    schema = {c: t for c, t in {**KEY_TYPES, **COLUMN_TYPES}.items() if c in present}
    return pl.DataFrame(rows, schema=schema, orient="row")


def to_input(rows: list[dict[str, Any]], kind: str, folder: Path, name: str) -> Any:
    if kind == "records":
        return rows
    df = to_polars(rows)
    if kind == "polars":
        return df
    if kind == "pandas":
        return df.to_pandas()
    if kind == "arrow":
        return df.to_arrow()
    path = folder / f"{name}.{kind}"
    {"csv": df.write_csv, "jsonl": df.write_ndjson, "parquet": df.write_parquet}[kind](path)
    return path


def as_rows(result: Any) -> list[dict[str, Any]]:
    """Any merge result as a list of dicts, with pandas' NaN/NA read as None."""
    if isinstance(result, list):
        return result
    if isinstance(result, pl.DataFrame):
        return result.to_dicts()
    if isinstance(result, pa.Table):
        return result.to_pylist()
    if isinstance(result, pd.DataFrame):
        rows = result.astype(object).to_dict("records")
        return [
            {
                k: None if v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
                for k, v in r.items()
            }
            for r in rows
        ]
    if isinstance(result, Path):
        return read_table(result).to_dicts()
    raise TypeError(type(result))


def columns_of(result: Any) -> list[str]:
    rows = as_rows(result)
    return list(rows[0]) if rows else []


KINDS = ["records", "polars", "pandas", "arrow", "csv", "jsonl", "parquet"]
MODES = [
    {"key": ["site", "id"]},
    {"key": "id"},
    {"key": ["site", "id"], "timestamp": "ts"},
    {"key": "id", "timestamp": "ts", "tombstone": "deleted"},
    {"key": ["site", "id"], "tombstone": "deleted"},
]


def _merge_files(kind: str, folder: Path, name: str, *inputs: Any, **kw: Any) -> Any:
    """Merge; for file inputs write the result as a file of the same format to chain merges."""
    if kind in ("csv", "jsonl", "parquet"):
        return merge(*inputs, out=folder / f"{name}.{kind}", **kw)
    return merge(*inputs, **kw)


def _check_laws(kind: str, mode: dict[str, Any], data: st.DataObject) -> None:
    need = tuple(c for c in ("ts",) if c == mode.get("timestamp"))
    a, b, c = (data.draw(tables(need=need)) for _ in range(3))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ta, tb, tc = (to_input(t, kind, folder, n) for t, n in ((a, "a"), (b, "b"), (c, "c")))

        def m(name: str, *inputs: Any) -> Any:
            return _merge_files(kind, folder, name, *inputs, **mode)

        assert as_rows(m("ab", ta, tb)) == as_rows(m("ba", tb, ta))
        left = m("left", m("ab2", ta, tb), tc)
        right = m("right", ta, m("bc", tb, tc))
        assert as_rows(left) == as_rows(right)
        assert as_rows(m("aa", ta, ta)) == as_rows(m("a1", ta))
        assert as_rows(m("abc", ta, tb, tc)) == as_rows(left)


MODE_IDS = {"ids": lambda m: "-".join(f"{k}={v}" for k, v in m.items())}


@pytest.mark.parametrize("kind", ["records", "polars", "pandas", "arrow"])
@pytest.mark.parametrize("mode", MODES, **MODE_IDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_merge_is_commutative_associative_and_idempotent(
    kind: str, mode: dict[str, Any], data: st.DataObject
) -> None:
    _check_laws(kind, mode, data)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("mode", [MODES[0], MODES[3]], **MODE_IDS)
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_merging_files_is_commutative_associative_and_idempotent(
    kind: str, mode: dict[str, Any], data: st.DataObject
) -> None:
    _check_laws(kind, mode, data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", MODES, **MODE_IDS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_merge_laws_hold_on_many_more_tables(
    kind: str, mode: dict[str, Any], data: st.DataObject
) -> None:
    _check_laws(kind, mode, data)


@SETTINGS
@given(a=wild_tables(), b=wild_tables(), c=wild_tables())
def test_lists_of_dicts_with_mixed_value_types_obey_the_laws(
    a: list[dict[str, Any]], b: list[dict[str, Any]], c: list[dict[str, Any]]
) -> None:
    ab = merge(a, b, key="id")
    assert ab == merge(b, a, key="id")
    assert merge(ab, c, key="id") == merge(a, merge(b, c, key="id"), key="id")
    assert merge(a, a, key="id") == merge(a, key="id")


@pytest.mark.parametrize("mode", MODES, **MODE_IDS)
@SETTINGS
@given(data=st.data())
def test_vectorised_path_gives_the_row_by_row_result(
    mode: dict[str, Any], data: st.DataObject
) -> None:
    need = tuple(c for c in ("ts",) if c == mode.get("timestamp"))
    inputs = [to_polars(data.draw(tables(need=need))) for _ in range(data.draw(st.integers(1, 4)))]
    fast = merge(*inputs, fast_threshold=0, **mode)
    slow = merge(*inputs, fast_threshold=10**9, **mode)
    assert_frame_equal(fast, slow)


@pytest.mark.parametrize("kind", ["polars", "pandas", "arrow"])
@SETTINGS
@given(a=tables(), b=tables())
def test_frames_give_the_rows_a_list_of_dicts_gives(
    kind: str, a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        frames = [to_input(t, kind, Path(tmp), n) for t, n in ((a, "a"), (b, "b"))]
    expected = merge(a, b, key=["site", "id"])
    assert as_rows(merge(*frames, key=["site", "id"])) == expected


@pytest.mark.parametrize("mode", MODES, **MODE_IDS)
@pytest.mark.parametrize("slices", [False, True], ids=["gather", "slices"])
@SETTINGS
@given(data=st.data())
def test_two_tables_with_unique_keys_merge_like_the_row_path(
    mode: dict[str, Any], slices: bool, data: st.DataObject
) -> None:
    need = tuple(c for c in ("ts",) if c == mode.get("timestamp"))
    states = []
    for _ in range(2):  # merge results: unique keys, sorted; then maybe shuffled
        state = merge(to_polars(data.draw(tables(need=need))), fast_threshold=10**9, **mode)
        order = data.draw(st.permutations(range(state.height)))
        states.append(state[list(order)] if data.draw(st.booleans()) else state)
    taken: list[str] = []

    def spy(*args: Any) -> Any:
        result = real(*args)
        taken.append("slices" if result is not None else "rounds")
        return result

    def spy_pairs(*args: Any) -> Any:
        result = real_pairs(*args)
        taken.append("pairs" if result is not None else "sort")
        return result

    real, real_pairs = vectorised.merge_slices, vectorised.pair_rows
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vectorised, "merge_slices", spy)
        mp.setattr(vectorised, "pair_rows", spy_pairs)
        if slices:  # copy slices whatever the run lengths
            mp.setattr(twoway, "_MIN_RUN", 1)
            mp.setattr(twoway, "_MAX_SLICES", 10**6)
        fast = merge(*states, fast_threshold=0, **mode)
    # Inputs not both in key order may be paired directly (dense int ids, no timestamp); the
    # others are offered to the slice copy, which takes them when its limits allow.
    if "pairs" not in taken:
        assert taken[-1] == ("slices" if slices else "rounds")
    assert_frame_equal(fast, merge(*states, fast_threshold=10**9, **mode))


# Key layouts the vectorised path orders by code: text whose first bytes tie (UUID-like, with
# shared prefixes, NUL and multi-byte characters), composite (text, int) keys, timestamps with
# ties inside an input, floats with infinities.
KEY_LAYOUTS: dict[str, dict[str, tuple[Any, list[Any]]]] = {
    "uuid": {
        "id": (
            pl.String,
            [
                "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f1",
                "0f1e2d3",
                "0f1e2d3\x00",
                "0f1e2d",
                "0f1e2d3é",
                "ffffffff-0000-0000-0000-000000000000",
                "7c9e6679-7425-40de-944b-e07fc1f90ae7",
            ],
        )
    },
    "composite": {
        "site": (pl.String, ["eu-west-1", "eu-west-2", "eu-central-1", "us", ""]),
        "id": (pl.Int64, [-(2**62), -1, 0, 7, 2**40]),
    },
    "timestamp": {
        "id": (
            pl.Datetime("us"),
            [
                dt.datetime(2024, 1, 1),
                dt.datetime(2024, 1, 1, 0, 0, 0, 1),
                dt.datetime(1999, 12, 31),
            ],
        )
    },
    "float": {"id": (pl.Float64, [float("-inf"), -1.5, 0.0, 2.5, 1e300, float("inf")])},
}
LAYOUT_MODES = [{}, {"timestamp": "ts"}, {"tombstone": "deleted"}]


@st.composite
def layout_frames(draw: st.DrawFn, layout: str, mode: dict[str, Any]) -> pl.DataFrame:
    """A frame keyed as `layout` says, with duplicate keys, nulls and conflicting values."""
    keys = KEY_LAYOUTS[layout]
    need = tuple(c for c in ("ts", "deleted") if c in mode.values())
    cols = [c for c in COLUMN_VALUES if c in need or draw(st.booleans())]
    n = draw(st.integers(min_value=1, max_value=8))
    data: dict[str, list[Any]] = {
        k: [draw(st.sampled_from(pool)) for _ in range(n)] for k, (_, pool) in keys.items()
    }
    for c in cols:
        data[c] = [draw(st.one_of(st.none(), st.sampled_from(COLUMN_VALUES[c]))) for _ in range(n)]
    schema = {**{k: t for k, (t, _) in keys.items()}, **{c: COLUMN_TYPES[c] for c in cols}}
    if draw(st.booleans()):  # a temporal value column with nulls
        days = [None, dt.date(1999, 12, 31), dt.date(2024, 1, 1), dt.date(2024, 1, 2)]
        data["day"] = [draw(st.sampled_from(days)) for _ in range(n)]
        schema["day"] = pl.Date
    return pl.DataFrame(data, schema=schema)


@pytest.mark.parametrize("layout", sorted(KEY_LAYOUTS))
@pytest.mark.parametrize("mode", LAYOUT_MODES, ids=["values", "timestamp", "tombstone"])
@SETTINGS
@given(data=st.data())
def test_every_key_layout_merges_vectorised_like_the_row_path(
    layout: str, mode: dict[str, Any], data: st.DataObject
) -> None:
    key = list(KEY_LAYOUTS[layout])
    inputs = [data.draw(layout_frames(layout, mode)) for _ in range(data.draw(st.integers(1, 4)))]
    fast = merge(*inputs, key=key, fast_threshold=0, **mode)
    assert_frame_equal(fast, merge(*inputs, key=key, fast_threshold=10**9, **mode))
    # Two states (unique keys, in any row order): the pairwise path.
    states = [merge(df, key=key, fast_threshold=10**9, **mode) for df in inputs[:2]]
    states = [
        s.sample(fraction=1.0, shuffle=True, seed=data.draw(st.integers(0, 9))) for s in states
    ]
    fast = merge(*states, key=key, fast_threshold=0, **mode)
    assert_frame_equal(fast, merge(*states, key=key, fast_threshold=10**9, **mode))


# Value columns whose nulls the one-round path replaces by a value below all of theirs, with
# the values that rule that out (the type's minimum, -inf) and NaN, which polars orders last.
EDGE_VALUES: dict[str, tuple[Any, list[Any]]] = {
    "i64": (pl.Int64, [-(2**63), -1, 0, 2**62]),
    "i8": (pl.Int8, [-128, -1, 0, 127]),
    "u8": (pl.UInt8, [0, 1, 255]),
    "f64": (pl.Float64, [float("-inf"), -1.5, -0.0, 0.0, float("inf"), float("nan")]),
    "f32": (pl.Float32, [-2.5, 0.0, float("nan")]),
    "when": (pl.Datetime("ms"), [dt.datetime(1970, 1, 1), dt.datetime(2024, 5, 6, 7, 8, 9)]),
    "gap": (pl.Duration("us"), [dt.timedelta(0), dt.timedelta(seconds=-3), dt.timedelta(days=2)]),
}


@st.composite
def edge_state(draw: st.DrawFn) -> pl.DataFrame:
    """A table with unique int keys and edge values (nulls included) in some columns."""
    ids = draw(st.lists(st.integers(0, 12), min_size=1, max_size=10, unique=True))
    cols = [c for c in EDGE_VALUES if draw(st.booleans())]
    data: dict[str, list[Any]] = {"id": ids}
    for c in cols:
        pool = EDGE_VALUES[c][1]
        data[c] = [draw(st.one_of(st.none(), st.sampled_from(pool))) for _ in ids]
    return pl.DataFrame(data, schema={"id": pl.Int64, **{c: EDGE_VALUES[c][0] for c in cols}})


@SETTINGS
@given(a=edge_state(), b=edge_state())
def test_two_states_with_edge_values_merge_in_one_round_like_the_row_path(
    a: pl.DataFrame, b: pl.DataFrame
) -> None:
    calls: list[str] = []
    real = vectorised._one_round_column

    def spy(stacked: pl.Series, first: Any) -> pl.Series:
        calls.append(stacked.name)
        return real(stacked, first)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vectorised, "_one_round_column", spy)
        fast = merge(a, b, key="id", fast_threshold=0)
    assert_frame_equal(fast, merge(a, b, key="id", fast_threshold=10**9))
    values = (set(a.columns) | set(b.columns)) - {"id"}
    if set(a["id"]) & set(b["id"]) and values:
        assert calls
