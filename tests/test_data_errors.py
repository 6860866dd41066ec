"""Bad input to `merge` raises a typed MergeError naming the column and a row; nothing is lost."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtd.data import merge
from crdtd.errors import (
    InputReadError,
    KeyColumnError,
    KeyTypeError,
    MergeError,
    NullKeyError,
    OutputWriteError,
    SchemaError,
)


@pytest.mark.parametrize(
    ("tables", "fragments"),
    [
        (([{"id": 1}], [{"name": "x"}]), ["'id'", "input 1", "row 0"]),
        ((pl.DataFrame({"id": [1]}), pl.DataFrame({"name": ["x"]})), ["'id'", "input 1"]),
    ],
)
def test_missing_key_column_names_the_column_and_where(
    tables: tuple[Any, ...], fragments: list[str]
) -> None:
    with pytest.raises(KeyColumnError) as e:
        merge(*tables, key="id")
    for f in fragments:
        assert f in str(e.value)


@pytest.mark.parametrize(
    "table",
    [
        [{"id": 1}, {"id": None}],
        [{"id": 1}, {"id": float("nan")}],
        pd.DataFrame({"id": [1.0, float("nan")]}),
        pl.DataFrame({"id": [1, None]}),
    ],
    ids=["dict-none", "dict-nan", "pandas-nan", "polars-null"],
)
def test_null_key_names_the_column_and_row(table: Any) -> None:
    with pytest.raises(NullKeyError, match=r"key column 'id' is null .* input 0, row 1"):
        merge(table, key="id")


def test_null_key_in_a_csv_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "people.csv"
    path.write_text("id,name\n1,a\n,b\n")
    with pytest.raises(NullKeyError, match=r"'id' .*people\.csv.*row 1"):
        merge(path, key="id")


def test_unhashable_key_is_a_key_type_error() -> None:
    with pytest.raises(KeyTypeError, match=r"'id' holds a list in input 0, row 2"):
        merge([{"id": 1}, {"id": 2}, {"id": [3]}], key="id")


@pytest.mark.parametrize(
    ("tables", "pattern"),
    [
        (([{"id": 1}], [{"id": "1"}]), r"mixes int \(input 0, row 0\) and str \(input 1, row 0\)"),
        (([{"id": True}, {"id": 1}],), r"mixes bool .* and int"),
        ((pd.DataFrame({"id": [1, "a"]}),), r"mixes int \(input 0, row 0\) and str"),
        (
            (pl.DataFrame({"id": [1]}), pl.DataFrame({"id": ["1"]})),
            r"key column 'id' is Int64 in input 0 \(row 0: 1\) but String in input 1",
        ),
    ],
)
def test_mixed_key_types_are_refused(tables: tuple[Any, ...], pattern: str) -> None:
    with pytest.raises(KeyTypeError, match=pattern):
        merge(*tables, key="id")


def test_one_column_with_two_kinds_of_value_across_frames_is_a_schema_error() -> None:
    a = pl.DataFrame({"id": [1], "v": [1]})
    b = pl.DataFrame({"id": [2, 3], "v": [None, "x"]})
    with pytest.raises(SchemaError, match=r"'v' is Int64 in input 0 .* String in input 1 \(row 1"):
        merge(a, b, key="id")


def test_value_without_an_order_names_column_row_and_key() -> None:
    with pytest.raises(SchemaError, match=r"'v' in input 0, row 1 \(key \(2,\)\) holds a set"):
        merge([{"id": 1, "v": 1}, {"id": 2, "v": {1}}], key="id")


@pytest.mark.parametrize(
    "table", [[{"id": 1, "gone": "yes"}], pl.DataFrame({"id": [1], "gone": [1]})]
)
def test_tombstone_must_be_boolean(table: Any) -> None:
    with pytest.raises(SchemaError, match=r"tombstone column 'gone' must be boolean"):
        merge(table, key="id", tombstone="gone")


def test_timestamp_column_must_exist_in_every_input() -> None:
    with pytest.raises(SchemaError, match=r"timestamp column 'ts' is missing from input 1"):
        merge([{"id": 1, "ts": 1}], [{"id": 1}], key="id", timestamp="ts")


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{oops\n')
    for path in (tmp_path / "missing.csv", tmp_path / "bad.parquet", tmp_path / "bad.jsonl"):
        with pytest.raises(InputReadError, match=path.name):
            merge(path, key="id")
    with pytest.raises(InputReadError, match=r"unknown table format '\.txt'"):
        merge(tmp_path / "notes.txt", key="id")


def test_unwritable_out_is_an_output_error_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(OutputWriteError, match="does not exist"):
        merge([{"id": 1}], key="id", out=tmp_path / "nope" / "x.csv")
    with pytest.raises(OutputWriteError, match=r"unknown table format '\.xlsx'"):
        merge([{"id": 1}], key="id", out=tmp_path / "x.xlsx")
    nested = pl.DataFrame({"id": [1], "tags": [["a"]]})
    with pytest.raises(OutputWriteError, match=r"x\.csv"):
        merge(nested, key="id", out=tmp_path / "x.csv")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: merge(key="id"), MergeError),
        (lambda: merge([], key=[]), KeyColumnError),
        (lambda: merge([], key=["id", "id"]), KeyColumnError),
        (lambda: merge([], key="id", timestamp="id"), SchemaError),
        (lambda: merge([], key="id", drop_deleted=True), SchemaError),
        (lambda: merge({"id": 1}, key="id"), InputReadError),
        (lambda: merge(5, key="id"), InputReadError),
        (lambda: merge([{"id": 1}, [1, 2]], key="id"), SchemaError),
        (lambda: merge([{"id": 1, 5: "x"}], key="id"), SchemaError),
    ],
)
def test_misuse_raises_a_merge_error(call: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        call()


def test_a_failed_merge_leaves_its_inputs_unchanged() -> None:
    a = [{"id": 1, "v": 2}]
    b = [{"id": 1, "v": 3}, {"id": None}]
    with pytest.raises(NullKeyError):
        merge(a, b, key="id")
    assert a == [{"id": 1, "v": 2}] and b == [{"id": 1, "v": 3}, {"id": None}]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.fixed_dictionaries(
                {"id": st.integers(0, 9)}, optional={"v": st.integers(), "w": st.text(max_size=2)}
            ),
            max_size=8,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_no_row_is_silently_dropped(tables: list[list[dict[str, Any]]]) -> None:
    out = merge(*tables, key="id")
    assert [r["id"] for r in out] == sorted({r["id"] for t in tables for r in t})
    for t in tables:
        for row in t:
            merged = next(r for r in out if r["id"] == row["id"])
            for col, value in row.items():
                assert merged[col] is not None or value is None


@pytest.mark.parametrize("first", [pl.DataFrame({"id": [1]}), pl.DataFrame({"id": [1]}).to_arrow()])
def test_mixed_values_cannot_silently_become_text_in_a_typed_result(first: Any) -> None:
    rows = [{"id": 2, "v": 1}, {"id": 3, "v": "a"}]
    with pytest.raises(SchemaError, match=r"column 'v' .* int \(row 1\) and str \(row 2\)"):
        merge(first, rows, key="id")


def test_without_polars_dicts_still_merge_and_files_say_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "polars", None)
    assert merge([{"id": 2}], [{"id": 1}], key="id") == [{"id": 1}, {"id": 2}]
    with pytest.raises(InputReadError, match=r"needs polars: pip install 'crdtd\[data\]'"):
        merge(tmp_path / "a.csv", key="id")
    with pytest.raises(OutputWriteError, match="needs polars"):
        merge([{"id": 1}], key="id", out=tmp_path / "a.csv")


BIG = 2**53


@pytest.mark.parametrize(
    "convert", [lambda df: df, lambda df: df.to_pandas(), lambda df: df.to_arrow()]
)
@pytest.mark.parametrize("threshold", [0, 10**9], ids=["vectorised", "rows"])
def test_integer_and_float_keys_are_refused_not_collapsed(convert: Any, threshold: int) -> None:
    ints = convert(pl.DataFrame({"id": [BIG + 1], "v": [1]}))
    floats = convert(pl.DataFrame({"id": [float(BIG)], "v": [2]}))
    with pytest.raises(KeyTypeError, match=r"key column 'id' .*Int64.* float"):
        merge(ints, floats, key="id", fast_threshold=threshold)


def test_an_integer_value_a_float_column_cannot_hold_is_refused() -> None:
    ints = pl.DataFrame({"id": [1, 2], "v": [3, BIG + 1]})
    floats = pl.DataFrame({"id": [3], "v": [0.5]})
    with pytest.raises(SchemaError, match=r"column 'v' is Int64 in input 0 .*row 1 holds 9007"):
        merge(ints, floats, key="id")
    small = pl.DataFrame({"id": [1], "v": [BIG]})
    assert merge(small, floats, key="id").to_dicts() == [
        {"id": 1, "v": float(BIG)},
        {"id": 3, "v": 0.5},
    ]


def test_csv_keys_keep_their_text_unless_a_type_is_declared(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n01,1\n007,2\n")
    (tmp_path / "b.csv").write_text("id,v\n1,3\n7,4\n")
    files = (tmp_path / "a.csv", tmp_path / "b.csv")
    assert [r["id"] for r in merge(*files, key="id")] == ["007", "01", "1", "7"]
    assert [r["id"] for r in merge(*files, key="id", fast_threshold=0)] == ["007", "01", "1", "7"]
    declared = merge(*files, key="id", csv_types={"id": int})
    assert declared == [{"id": 1, "v": 3}, {"id": 7, "v": 4}]


def test_csv_keys_read_as_text_do_not_silently_meet_typed_keys(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,3\n")
    with pytest.raises(KeyTypeError, match=r"key column 'id' is String in input .*a\.csv"):
        merge(tmp_path / "a.csv", pl.DataFrame({"id": [1]}), key="id")
    assert merge(tmp_path / "a.csv", [{"id": 1, "w": 2}], key="id", csv_types={"id": pl.Int64}) == [
        {"id": 1, "v": 3, "w": 2}
    ]


def test_a_csv_type_that_is_not_a_type_is_a_schema_error(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,v\n1,3\n")
    with pytest.raises(SchemaError, match=r"csv_types\['id'\] = 'integer' is not a column type"):
        merge(tmp_path / "a.csv", key="id", csv_types={"id": "integer"})


@pytest.mark.parametrize(
    "value", [{1, 2}, frozenset({3}), [1, {2}]], ids=["set", "frozenset", "nested"]
)
def test_a_set_in_a_pandas_column_is_refused_like_in_a_list_of_dicts(value: Any) -> None:
    frame = pd.DataFrame({"id": [1, 2], "v": [[0], value]})
    with pytest.raises(
        SchemaError, match=r"column 'v' in input 0, row 1 holds a .*no defined order"
    ):
        merge(frame, key="id")
    with pytest.raises(SchemaError, match=r"column 'v' in input 0, row 1 .*no defined order"):
        merge(frame.to_dict("records"), key="id")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("id,v,w\n1,2,3\n2,3\n3,4,5\n", "line 3 has 2 fields but the header has 3"),
        ("id,v\n1,2\n2,3\n3,4,5\n", "line 4 has 3 fields but the header has 2"),
        ('id,v\n1,"a\nb"\n2,3,4\n', "line 3 has 3 fields but the header has 2"),
    ],
    ids=["too-few", "too-many", "quoted-line-break"],
)
@pytest.mark.parametrize("threshold", [0, 10**9], ids=["vectorised", "rows"])
def test_a_csv_row_with_the_wrong_field_count_names_file_line_and_counts(
    tmp_path: Path, text: str, fragment: str, threshold: int
) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text(text)
    with pytest.raises(InputReadError, match=r"ragged\.csv") as e:
        merge(path, key="id", fast_threshold=threshold)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "empty", [[], pl.DataFrame({"id": [1], "v": ["x"]}).head(0)], ids=["rows", "frame"]
)
def test_an_empty_result_written_as_json_lines_merges_again(tmp_path: Path, empty: Any) -> None:
    out = merge(empty, key="id", out=tmp_path / "empty.jsonl")
    assert merge(out, key="id") == []
    assert merge(out, [{"id": 2, "v": "y"}], key="id") == [{"id": 2, "v": "y"}]
    assert merge(out, pl.DataFrame({"id": [3]}), key="id", fast_threshold=0) == [{"id": 3}]
    again = merge(out, out, key="id", out=tmp_path / "again.jsonl")
    assert merge(again, key="id") == []
