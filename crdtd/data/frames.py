"""Adapters between the accepted input types and the two merge paths.

Inputs are lists of dicts, pandas / polars DataFrames, pyarrow Tables and table file paths.
Columnar inputs become polars frames (NaN read as null, -0.0 as 0.0, categoricals as text);
anything polars cannot hold goes the row-by-row way as Python dicts. The merged result is
converted back to the type of the first input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crdtd.data.io import read_table, require_polars
from crdtd.data.resolve import UnsupportedValueError, value_rank
from crdtd.errors import InputReadError, OutputWriteError, SchemaError

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl
    import pyarrow as pa

RECORDS, PANDAS, POLARS, ARROW, PATH = "records", "pandas", "polars", "arrow", "path"


def input_kind(obj: Any, index: int) -> str:
    """Which adapter an input needs; InputReadError for types merge does not accept."""
    if isinstance(obj, (str, os.PathLike)):
        return PATH
    t = type(obj)
    top = t.__module__.split(".")[0]
    if top == "pandas" and t.__name__ == "DataFrame":
        return PANDAS
    if top == "polars" and t.__name__ == "DataFrame":
        return POLARS
    if top == "pyarrow" and t.__name__ == "Table":
        return ARROW
    if isinstance(obj, Mapping):
        raise InputReadError(
            f"input {index} is a single mapping; pass a list of row dicts (one per row)"
        )
    if isinstance(obj, Iterable) and not isinstance(obj, (bytes, bytearray)):
        return RECORDS
    raise InputReadError(
        f"input {index} has unsupported type {t.__name__}; expected a list of dicts, a pandas, "
        "polars or pyarrow table, or a CSV / JSON Lines / Parquet path"
    )


def input_label(obj: Any, kind: str, index: int) -> str:
    """How error messages name an input: its path, else its position."""
    if kind == PATH:
        return f"input {os.fspath(obj)!r}"
    return f"input {index}"


def _check_column_names(names: Iterable[Any], label: str) -> None:
    seen: set[Any] = set()
    for c in names:
        if not isinstance(c, str):
            raise SchemaError(f"column names must be strings; {label} has column {c!r}")
        if not c:  # polars cannot select it by name (`pl.col("")` finds nothing)
            raise SchemaError(f"{label} has a column with an empty name")
        if c in seen:
            raise SchemaError(f"{label} has two columns named {c!r}")
        seen.add(c)


def normalise_frame(df: pl.DataFrame) -> pl.DataFrame | None:
    """Canonical polars frame (see module doc), or None if a column needs the Python path."""
    import polars as pl

    exprs = []
    for c, dtype in df.schema.items():
        if dtype == pl.Object:
            return None
        if isinstance(dtype, (pl.Categorical, pl.Enum)):
            exprs.append(pl.col(c).cast(pl.String))
        elif dtype.is_float():
            s = df[c]
            if s.is_nan().any() or (s == 0.0).any():  # rewrite only columns that need it
                exprs.append(pl.col(c).fill_nan(None) + 0.0)
    return df.with_columns(exprs) if exprs else df


# What pandas.api.types.infer_dtype calls object columns of plain, ordered scalars.
_SCALAR_OBJECTS = frozenset(
    {
        "empty",
        "string",
        "bytes",
        "integer",
        "floating",
        "mixed-integer-float",
        "decimal",
        "boolean",
        "datetime",
        "datetime64",
        "date",
        "time",
        "timedelta",
        "timedelta64",
    }
)


def _refuse_values_without_order(obj: pd.DataFrame, label: str) -> None:
    """SchemaError for a value the total order does not cover (a set would otherwise become an
    array on the way to polars), as the row-by-row path refuses it."""
    import pandas as pd

    for c in obj.columns:
        col = obj[c]
        if col.dtype != object or pd.api.types.infer_dtype(col, skipna=True) in _SCALAR_OBJECTS:
            continue
        for i, v in enumerate(col):
            if v is None or v is pd.NA or v is pd.NaT or isinstance(v, float):
                continue
            try:
                value_rank(v)
            except UnsupportedValueError as e:
                raise SchemaError(
                    f"column {c!r} in {label}, row {i} holds a {type(v).__name__}, which has no "
                    f"defined order: {e}"
                ) from None


def to_polars(
    obj: Any, kind: str, label: str, csv_schema: Mapping[str, Any] | None = None
) -> pl.DataFrame | None:
    """A columnar input as a normalised polars frame, or None if polars cannot represent it
    (or is not installed: then the row-by-row path serves pandas and arrow inputs)."""
    if kind == PATH:
        table = read_table(obj, csv_schema)
        _check_column_names(table.columns, label)
        return normalise_frame(table)
    try:
        import polars as pl
    except ImportError:
        return None
    if kind == POLARS:
        _check_column_names(obj.columns, label)
        return normalise_frame(obj)
    if kind == ARROW:
        _check_column_names(obj.column_names, label)
        try:
            df = pl.from_arrow(obj)
        except Exception:
            return None
        return normalise_frame(df) if isinstance(df, pl.DataFrame) else None
    if kind == PANDAS:
        _check_column_names(obj.columns, label)
        _refuse_values_without_order(obj, label)
        try:
            df = pl.from_pandas(obj)
        except Exception:
            return None
        # pandas stores an all-missing column as objects; it says nothing about the type.
        empty = [
            c
            for c in df.columns
            if df.schema[c] == pl.String
            and str(obj[c].dtype) == "object"
            and df[c].null_count() == df.height
        ]
        df = df.with_columns(pl.col(c).cast(pl.Null) for c in empty) if empty else df
        return normalise_frame(df)
    return None


def drop_schemaless(
    frames: list[tuple[str, pl.DataFrame]], keys: Sequence[str]
) -> list[tuple[str, pl.DataFrame]]:
    """The labelled frames without those that have no columns and no rows (an empty JSON Lines
    file): they add nothing. If none is left, one empty frame of the key columns."""
    import polars as pl

    kept = [(lab, df) for lab, df in frames if df.width or df.height]
    return kept or [(frames[0][0], pl.DataFrame(schema=dict.fromkeys(keys, pl.Null)))]


def to_records(
    obj: Any, kind: str, label: str, csv_schema: Mapping[str, Any] | None = None
) -> Iterable[Mapping[str, Any]]:
    """Any input as an iterable of row mappings for the row-by-row path."""
    if kind == RECORDS:
        return obj  # type: ignore[no-any-return]
    if kind == PATH:
        table = read_table(obj, csv_schema)
        _check_column_names(table.columns, label)
        return table.to_dicts()
    if kind == POLARS:
        _check_column_names(obj.columns, label)
        return obj.to_dicts()  # type: ignore[no-any-return]
    if kind == ARROW:
        _check_column_names(obj.column_names, label)
        return obj.to_pylist()  # type: ignore[no-any-return]
    import pandas as pd

    _check_column_names(obj.columns, label)
    clean = obj.astype(object).where(pd.notna(obj), None)
    return clean.to_dict("records")  # type: ignore[no-any-return]


_NULLABLE_PANDAS = {
    "int8": "Int8",
    "int16": "Int16",
    "int32": "Int32",
    "int64": "Int64",
    "uint8": "UInt8",
    "uint16": "UInt16",
    "uint32": "UInt32",
    "uint64": "UInt64",
    "bool": "boolean",
}


def arrow_to_pandas(tbl: pa.Table) -> pd.DataFrame:
    """pandas frame from arrow; integer and boolean columns with nulls stay integer/boolean."""
    import pandas as pd

    df = tbl.to_pandas()
    for name, col in zip(tbl.column_names, tbl.columns):
        nullable = _NULLABLE_PANDAS.get(str(col.type))
        if nullable is not None and col.null_count:
            df[name] = pd.array(col.to_pylist(), dtype=nullable)
    return df


def restore_arrow_types(tbl: pa.Table, inputs: list[pa.Table]) -> pa.Table:
    """Cast output columns back to the arrow type every arrow input agreed on, where it casts."""
    for i, name in enumerate(tbl.column_names):
        types = {
            str(t.schema.field(name).type): t.schema.field(name).type
            for t in inputs
            if name in t.column_names
        }
        if len(types) != 1:
            continue
        (want,) = types.values()
        if tbl.schema.field(name).type == want:
            continue
        try:
            tbl = tbl.set_column(i, name, tbl.column(i).cast(want))
        except Exception:
            continue
    return tbl


def _check_one_type_per_column(columns: list[str], rows: list[dict[str, Any]]) -> None:
    """SchemaError if a column mixes kinds of value a typed table cannot hold in one column."""
    for c in columns:
        first: tuple[int, int, Any] | None = None
        for i, row in enumerate(rows):
            v = row.get(c)
            if v is None:
                continue
            rank = value_rank(v)[0]
            if first is None:
                first = (rank, i, v)
            elif rank != first[0]:
                raise SchemaError(
                    f"column {c!r} of the merged rows holds {type(first[2]).__name__} "
                    f"(row {first[1]}) and {type(v).__name__} (row {i}); a typed table needs "
                    "one kind per column (merge into a list of dicts instead)"
                )


def frame_from_records(columns: list[str], rows: list[dict[str, Any]]) -> pl.DataFrame:
    """polars frame from merged rows; SchemaError if a column's values do not fit one type."""
    pl = require_polars(OutputWriteError, "writing a merged table")
    _check_one_type_per_column(columns, rows)
    try:
        if not rows:
            return pl.DataFrame(schema=dict.fromkeys(columns, pl.Null))
        return pl.from_dicts(rows, schema=columns, infer_schema_length=None)
    except Exception as e:
        raise SchemaError(f"the merged rows do not fit a polars table: {e}") from None


def frame_with_schema(rows: list[dict[str, Any]], dtypes: Mapping[str, Any]) -> pl.DataFrame:
    """polars frame of merged rows with the column types agreed for the inputs."""
    import polars as pl

    if not rows:
        return pl.DataFrame(schema=dict(dtypes))
    return pl.from_dicts(rows, schema=dict(dtypes))


def records_to_kind(columns: list[str], rows: list[dict[str, Any]], kind: str) -> Any:
    """Rows merged by the Python path, as the requested output type."""
    if kind in (RECORDS, PATH):
        return rows
    if kind == PANDAS:
        import pandas as pd

        return pd.DataFrame(rows, columns=columns)
    if kind == POLARS:
        return frame_from_records(columns, rows)
    import pyarrow as pa

    _check_one_type_per_column(columns, rows)
    try:
        names = pa.schema([(c, pa.null()) for c in columns]) if not rows else None
        return pa.Table.from_pylist(rows, schema=names) if names else pa.Table.from_pylist(rows)
    except Exception as e:
        raise SchemaError(f"the merged rows do not fit an arrow table: {e}") from None
