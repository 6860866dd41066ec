"""Generated files for the tabular readers: a merge either succeeds or raises a MergeError.

CSV and JSON Lines texts are drawn from their structural characters and from JSON values of
every kind; Parquet files are valid ones with bytes flipped or cut. Whatever comes in, only a
typed error comes out and no output file is left behind.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtd.data import merge
from crdtd.errors import MergeError, SchemaError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TRICKY_FIELDS = [
    "",
    "01",
    "1",
    "007",
    "7",
    "-0",
    "1e400",
    "nan",
    "inf",
    "1180591620717411303424",
    "9007199254740993",
    "true",
    "False",
    "2024-01-01",
    "2024-01-01T00:00:00",
    '"a,b"',
    '"x""y"',
    '"line\nbreak"',
    '"unclosed',
    "é",
    " 1",
    "\x00",
]
csv_fields = st.one_of(
    st.sampled_from(TRICKY_FIELDS),
    st.text(alphabet=st.sampled_from(list('iv,"\r 019.-eE:TN\x00é\t')), max_size=5),
)
csv_rows = st.lists(csv_fields, min_size=1, max_size=4).map(",".join)
csv_files = st.one_of(
    st.text(alphabet=st.sampled_from(list('id,v"\n\r 0123456789.-eE:T\x00é\t;')), max_size=60),
    st.tuples(
        st.sampled_from(["id,v", "id", "id,v,w", "v,id", "id,id", "v", "id,"]),
        st.lists(csv_rows, max_size=6),
        st.sampled_from(["", "\n", "\r\n"]),
    ).map(lambda t: "\n".join([t[0], *t[1]]) + t[2]),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
json_rows = st.dictionaries(st.sampled_from(["id", "v", "w", ""]), json_values, max_size=3).map(
    lambda row: json.dumps(row, allow_nan=True)
)
keyed_rows = st.fixed_dictionaries(
    {"id": json_values}, optional={"v": json_values, "w": json_scalars}
).map(lambda row: json.dumps(row, allow_nan=True))
jsonl_files = st.lists(
    st.one_of(keyed_rows, keyed_rows, json_rows, st.text(max_size=10), json_values.map(json.dumps)),
    max_size=6,
).map("\n".join)


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"id": [1, 2, 3], "v": ["a", None, "c"]}).write_parquet(buf)
    return buf.getvalue()


PARQUET = _parquet_bytes()


@st.composite
def damaged_parquet(draw: st.DrawFn) -> bytes:
    data = bytearray(PARQUET)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut] if draw(st.booleans()) else data)


def _merge_only_typed_errors(contents: list[tuple[str, bytes]], **kw: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = []
        for i, (suffix, data) in enumerate(contents):
            path = folder / f"in{i}{suffix}"
            path.write_bytes(data)
            paths.append(path)
        out = folder / "out.parquet"
        try:
            result = merge(*paths, key="id", out=out, **kw)
        except MergeError:
            assert not out.exists()
            assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in paths)
            return
        assert result == out and out.exists()


@FUZZ
@given(st.lists(csv_files, min_size=1, max_size=2), st.sampled_from([0, 10**9]))
def test_generated_csv_files_merge_or_raise_a_typed_error(texts: list[str], threshold: int) -> None:
    _merge_only_typed_errors([(".csv", t.encode()) for t in texts], fast_threshold=threshold)


@FUZZ
@given(st.lists(jsonl_files, min_size=1, max_size=2), st.sampled_from([0, 10**9]))
def test_generated_json_lines_merge_or_raise_a_typed_error(
    texts: list[str], threshold: int
) -> None:
    _merge_only_typed_errors([(".jsonl", t.encode()) for t in texts], fast_threshold=threshold)


@FUZZ
@given(damaged_parquet())
def test_damaged_parquet_files_merge_or_raise_a_typed_error(data: bytes) -> None:
    _merge_only_typed_errors([(".parquet", data)])


@FUZZ
@given(st.sampled_from([".csv", ".jsonl", ".parquet"]), st.binary(max_size=64))
def test_arbitrary_bytes_in_any_table_file_raise_only_typed_errors(
    suffix: str, data: bytes
) -> None:
    _merge_only_typed_errors([(suffix, data)])


def test_a_csv_column_with_an_empty_name_is_a_typed_error(tmp_path: Path) -> None:
    """Found by the CSV fuzz test: polars cannot select a column named "" by name."""
    path = tmp_path / "in.csv"
    path.write_bytes(b"id,\n0,")
    for threshold in (0, 10**9):
        with pytest.raises(SchemaError, match="empty name"):
            merge(path, key="id", out=tmp_path / "out.parquet", fast_threshold=threshold)
        assert not (tmp_path / "out.parquet").exists()
