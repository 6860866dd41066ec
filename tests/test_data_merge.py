"""What a user sees from `merge`: resolution rules, result types, files, both merge paths."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

import crdtd.data.api as api
import crdtd.data.vectorised as vectorised
from crdtd.data import merge, value_rank


def test_seed_example_prints_the_union_sorted_by_key() -> None:
    out = merge(
        [{"id": 1, "name": "Alice"}, {"id": 2, "name": "Bob"}],
        [{"id": 2, "name": "Bob"}, {"id": 3, "name": "Carol"}],
        key="id",
    )
    assert repr(out) == (
        "[{'id': 1, 'name': 'Alice'}, {'id': 2, 'name': 'Bob'}, {'id': 3, 'name': 'Carol'}]"
    )


def test_conflicting_fields_resolve_independently_to_the_larger_value() -> None:
    a = [{"id": 1, "name": "Ann", "visits": 9}]
    b = [{"id": 1, "name": "Anne", "visits": 4}]
    assert merge(a, b, key="id") == [{"id": 1, "name": "Anne", "visits": 9}]


def test_a_missing_column_or_null_never_overwrites_a_value() -> None:
    a = [{"id": 1, "email": "a@x.org", "phone": None}]
    b = [{"id": 1, "phone": "555"}]
    assert merge(a, b, key="id") == [{"id": 1, "email": "a@x.org", "phone": "555"}]


def test_result_has_the_union_of_columns_keys_first_then_sorted() -> None:
    a = [{"zeta": 1, "id": 1}]
    b = [{"id": 2, "alpha": "x"}]
    out = merge(a, b, key="id")
    assert [list(r) for r in out] == [["id", "alpha", "zeta"]] * 2
    assert out == [{"id": 1, "alpha": None, "zeta": 1}, {"id": 2, "alpha": "x", "zeta": None}]


def test_values_of_different_types_are_ranked_by_type_then_value() -> None:
    ladder = [None, False, True, -5, 2.5, 3, "", "a", b"", dt.date(2020, 1, 1)]
    ranks = [value_rank(v) for v in ladder]
    assert ranks == sorted(ranks)
    rows = [{"id": 0, "v": v} for v in ladder]
    assert merge(rows, key="id") == [{"id": 0, "v": dt.date(2020, 1, 1)}]
    assert merge([{"id": 0, "v": 1}], [{"id": 0, "v": 1.0}], key="id") == merge(
        [{"id": 0, "v": 1.0}], [{"id": 0, "v": 1}], key="id"
    )


def test_nan_is_missing_and_negative_zero_is_zero() -> None:
    out = merge([{"id": 1, "x": float("nan"), "y": -0.0}], [{"id": 1, "x": -7.0}], key="id")
    assert out == [{"id": 1, "x": -7.0, "y": 0.0}]
    assert str(out[0]["y"]) == "0.0"


def test_duplicate_keys_inside_one_input_resolve_by_the_same_rule() -> None:
    rows = [{"id": 1, "v": 3, "w": None}, {"id": 1, "v": 5, "w": "b"}, {"id": 1, "v": 4}]
    assert merge(rows, key="id") == [{"id": 1, "v": 5, "w": "b"}]


def test_composite_keys_keep_rows_apart_and_sort_by_each_column() -> None:
    a = [{"site": "b", "id": 1, "v": 1}, {"site": "a", "id": 2, "v": 2}]
    b = [{"site": "a", "id": 1, "v": 3}, {"site": "b", "id": 1, "v": 0}]
    assert merge(a, b, key=["site", "id"]) == [
        {"site": "a", "id": 1, "v": 3},
        {"site": "a", "id": 2, "v": 2},
        {"site": "b", "id": 1, "v": 1},
    ]


def test_newest_timestamp_wins_the_whole_row() -> None:
    old = [{"id": 1, "ts": 1, "name": "Zed", "email": "z@x.org"}]
    new = [{"id": 1, "ts": 2, "name": "Ada", "email": None}]
    assert merge(old, new, key="id", timestamp="ts") == [
        {"id": 1, "email": None, "name": "Ada", "ts": 2}
    ]


def test_equal_timestamps_join_field_by_field() -> None:
    a = [{"id": 1, "ts": 5, "name": "Ada", "email": None}]
    b = [{"id": 1, "ts": 5, "name": "Ace", "email": "a@x.org"}]
    assert merge(a, b, key="id", timestamp="ts") == [
        {"id": 1, "email": "a@x.org", "name": "Ada", "ts": 5}
    ]


def test_tombstone_deletes_for_good_without_timestamps() -> None:
    live = [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Bo"}]
    gone = [{"id": 1, "deleted": True}]
    merged = merge(live, gone, key="id", tombstone="deleted")
    assert merged == [
        {"id": 1, "deleted": True, "name": "Ada"},
        {"id": 2, "deleted": False, "name": "Bo"},
    ]
    assert merge(merged, live, key="id", tombstone="deleted") == merged
    visible = merge(live, gone, key="id", tombstone="deleted", drop_deleted=True)
    assert visible == [{"id": 2, "deleted": False, "name": "Bo"}]


def test_with_timestamps_a_newer_row_can_undelete() -> None:
    added = [{"id": 1, "ts": 1, "name": "Ada"}]
    deleted = [{"id": 1, "ts": 2, "deleted": True}]
    readded = [{"id": 1, "ts": 3, "name": "Ada L."}]
    kw: dict[str, Any] = {"key": "id", "timestamp": "ts", "tombstone": "deleted"}
    assert merge(added, deleted, **kw) == [{"id": 1, "deleted": True, "name": None, "ts": 2}]
    assert merge(deleted, readded, added, **kw) == [
        {"id": 1, "deleted": False, "name": "Ada L.", "ts": 3}
    ]


def test_polars_in_polars_out_with_types_kept() -> None:
    a = pl.DataFrame({"id": [2, 1], "when": [dt.date(2024, 1, 2), dt.date(2024, 1, 1)]})
    b = pl.DataFrame({"id": [2], "score": [0.5]})
    out = merge(a, b, key="id")
    assert isinstance(out, pl.DataFrame)
    assert out.schema == pl.Schema({"id": pl.Int64, "score": pl.Float64, "when": pl.Date})
    assert out.to_dicts() == [
        {"id": 1, "score": None, "when": dt.date(2024, 1, 1)},
        {"id": 2, "score": 0.5, "when": dt.date(2024, 1, 2)},
    ]


def test_pandas_in_pandas_out_integers_stay_integers() -> None:
    a = pd.DataFrame({"id": [1, 2], "n": [10, 20]})
    b = pd.DataFrame({"id": [3], "label": ["c"]})
    out = merge(a, b, key="id")
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["id", "label", "n"]
    assert str(out["n"].dtype) == "Int64"
    assert out["n"].tolist()[:2] == [10, 20] and out["n"].isna().tolist() == [False, False, True]


def test_arrow_in_arrow_out_keeps_the_input_column_types() -> None:
    a = pa.table({"id": pa.array([1, 2], pa.int32()), "s": pa.array(["x", "y"], pa.string())})
    b = pa.table({"id": pa.array([2], pa.int32()), "s": pa.array(["z"], pa.string())})
    out = merge(a, b, key="id")
    assert isinstance(out, pa.Table)
    assert out.schema == pa.schema([("id", pa.int32()), ("s", pa.string())])
    assert out.to_pylist() == [{"id": 1, "s": "x"}, {"id": 2, "s": "z"}]


def test_mixed_input_types_give_the_first_inputs_type() -> None:
    rows = [{"id": 1, "s": "q"}]
    frame = pl.DataFrame({"id": [1], "s": ["r"]})
    assert merge(rows, frame, key="id") == [{"id": 1, "s": "r"}]
    assert_frame_equal(merge(frame, rows, key="id"), frame)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_files_merge_to_rows_or_to_an_out_file(tmp_path: Path, suffix: str) -> None:
    a = pl.DataFrame({"id": [1, 2], "name": ["Alice", "Bob"]})
    b = pl.DataFrame({"id": [2, 3], "name": ["Bob", "Carol"]})
    pa_, pb_ = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    for df, p in ((a, pa_), (b, pb_)):
        {".csv": df.write_csv, ".jsonl": df.write_ndjson, ".parquet": df.write_parquet}[suffix](p)
    expected = [
        {"id": 1, "name": "Alice"},
        {"id": 2, "name": "Bob"},
        {"id": 3, "name": "Carol"},
    ]
    typed = {"csv_types": {"id": int}} if suffix == ".csv" else {}  # CSV keys are text
    assert merge(str(pa_), pb_, key="id", **typed) == expected
    out = tmp_path / f"merged{suffix}"
    assert merge(pa_, pb_, key="id", out=out, **typed) == out
    assert merge(out, key="id", **typed) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([pa_.name, pb_.name, out.name])


def test_out_can_change_the_format(tmp_path: Path) -> None:
    src = tmp_path / "a.csv"
    src.write_text("id,name\n2,Bob\n1,Alice\n")
    out = merge(src, key="id", out=tmp_path / "a.parquet")
    assert pl.read_parquet(out).to_dicts() == [
        {"id": "1", "name": "Alice"},
        {"id": "2", "name": "Bob"},
    ]


def test_an_empty_csv_column_fits_any_type(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,score\n1,\n2,\n")
    (tmp_path / "b.csv").write_text("id,score\n2,7\n")
    assert merge(tmp_path / "a.csv", tmp_path / "b.csv", key="id", csv_types={"id": int}) == [
        {"id": 1, "score": None},
        {"id": 2, "score": 7},
    ]


def test_nested_values_take_the_row_by_row_path_even_when_large() -> None:
    a = pl.DataFrame({"id": [1, 2], "tags": [["a"], ["b", "c"]]})
    b = pl.DataFrame({"id": [2], "tags": [["b", "d"]]})
    out = merge(a, b, key="id", fast_threshold=0)
    assert out.to_dicts() == [{"id": 1, "tags": ["a"]}, {"id": 2, "tags": ["b", "d"]}]


def test_large_tables_take_the_vectorised_path_small_ones_the_row_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real_frames, real_records = api.merge_frames, api.merge_records

    def spy_frames(*args: Any, **kw: Any) -> Any:
        calls.append("vectorised")
        return real_frames(*args, **kw)

    def spy_records(*args: Any, **kw: Any) -> Any:
        calls.append("rows")
        return real_records(*args, **kw)

    monkeypatch.setattr(api, "merge_frames", spy_frames)
    monkeypatch.setattr(api, "merge_records", spy_records)
    big = pl.DataFrame({"id": list(range(30)), "v": list(range(30))})
    merge(big, big, key="id", fast_threshold=50)
    merge(big, key="id", fast_threshold=50)
    merge(big.to_dicts(), key="id", fast_threshold=0)
    assert calls == ["vectorised", "rows", "rows"]


def test_default_threshold_sends_a_large_merge_down_the_vectorised_path() -> None:
    n = api.FAST_PATH_MIN_ROWS
    a = pl.DataFrame({"id": range(n), "v": [i % 7 for i in range(n)]})
    b = pl.DataFrame({"id": range(n // 2, n + n // 2), "v": [i % 5 for i in range(n)]})
    fast = merge(a, b, key="id")
    slow = merge(a, b, key="id", fast_threshold=10 * n)
    assert_frame_equal(fast, slow)
    assert fast.height == n + n // 2


@pytest.mark.parametrize("threshold", [0, 10**9])
def test_tables_of_keys_only_merge_on_both_paths(threshold: int) -> None:
    a = pl.DataFrame({"site": ["n", "n"], "id": [1, 0]})
    out = merge(a, a, key=["site", "id"], fast_threshold=threshold)
    assert out.to_dicts() == [{"site": "n", "id": 0}, {"site": "n", "id": 1}]


def test_threaded_rounds_give_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    frames = [
        pl.DataFrame(
            {
                "id": [rng.randrange(50) for _ in range(80)],
                "n": [rng.choice([None, 1, 2, 3]) for _ in range(80)],
                "s": [rng.choice([None, "a", "b"]) for _ in range(80)],
                "ts": [rng.randrange(3) for _ in range(80)],
            }
        )
        for _ in range(3)
    ]
    monkeypatch.setattr(vectorised, "_THREADED_MIN_ROWS", 0)
    for kw in ({}, {"timestamp": "ts"}):
        fast = merge(*frames, key="id", fast_threshold=0, **kw)
        assert_frame_equal(fast, merge(*frames, key="id", fast_threshold=10**9, **kw))


def test_older_versions_lose_even_with_larger_values_across_many_inputs() -> None:
    """Keys held by ten inputs, the older versions holding the larger values, the newest
    ones tied (some timestamps null, one key stamped only with nulls): the vectorised path
    joins only the newest versions, like the row path."""
    rng = random.Random(11)
    frames = []
    for i in range(10):
        ids = rng.sample(range(300), 120)
        frames.append(
            pl.DataFrame(
                {
                    "id": [*ids, 999],
                    "ts": [rng.choice([None, 0, 1, 2, 9, 9]) for _ in ids] + [None],
                    "n": [rng.choice([None, 10 - i, 100 - i]) for _ in ids] + [i],
                    "s": [rng.choice([None, "a", "z"]) for _ in ids] + [None],
                }
            )
        )
    fast = merge(*frames, key="id", timestamp="ts", fast_threshold=0)
    assert_frame_equal(fast, merge(*frames, key="id", timestamp="ts", fast_threshold=10**9))
    assert fast.filter(pl.col("id") == 999).row(0, named=True) == {
        "id": 999,
        "n": 9,
        "s": None,
        "ts": None,
    }


@pytest.mark.parametrize("layout", ["ranges", "interleaved", "shuffled"])
@pytest.mark.parametrize(
    "kw", [{}, {"timestamp": "ts"}, {"tombstone": "gone"}], ids=["values", "ts", "tombstone"]
)
def test_merging_two_states_gives_the_row_by_row_result(layout: str, kw: dict[str, Any]) -> None:
    n, rng = 12_000, random.Random(3)
    ids_a = list(range(n))
    ids_b = [i + n // 2 for i in range(n)] if layout == "ranges" else [2 * i for i in range(n)]

    def state(ids: list[int]) -> pl.DataFrame:
        df = pl.DataFrame(
            {
                "id": ids,
                "v": [rng.choice([None, 1, 2, 3]) for _ in ids],
                "s": [rng.choice([None, "a", "b"]) for _ in ids],
                "ts": [rng.randrange(3) for _ in ids],
                "gone": [rng.random() < 0.1 for _ in ids],
                "empty": [None] * len(ids),
            }
        )
        if layout == "shuffled":
            return df.sample(fraction=1.0, shuffle=True, seed=rng.randrange(99))
        return df

    a, b = state(ids_a), state(ids_b).drop("gone" if kw.get("tombstone") else "v")
    fast = merge(a, b, key="id", fast_threshold=0, **kw)
    assert_frame_equal(fast, merge(a, b, key="id", fast_threshold=10**9, **kw))
    assert fast["id"].to_list() == sorted(set(ids_a) | set(ids_b))
