"""Check columnar inputs against a merge spec and agree one output type per column.

A column must hold one family of values in every input (integers and floats count as one
numeric family, an all-null column fits any); within a family the widest type wins. No value
changes on the way: a key column may not mix integers and floats (2**53 + 1 would become
2**53), and an integer value column widened to float must hold only integers a float keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crdtd.data.spec import MergeSpec
from crdtd.errors import KeyColumnError, KeyTypeError, NullKeyError, SchemaError

if TYPE_CHECKING:
    import polars as pl

# Families the vectorised path can order exactly like `resolve.value_rank` does.
SCALAR_FAMILIES = frozenset(
    {
        "null",
        "bool",
        "number",
        "decimal",
        "str",
        "bytes",
        "date",
        "datetime",
        "datetime-tz",
        "time",
        "timedelta",
    }
)


def family(dtype: pl.DataType) -> str:
    """Family name of a polars dtype (see module doc)."""
    import polars as pl

    if dtype == pl.Null:
        return "null"
    if dtype == pl.Boolean:
        return "bool"
    if isinstance(dtype, pl.Decimal):
        return "decimal"
    if dtype.is_numeric():
        return "number"
    if dtype == pl.String:
        return "str"
    if dtype == pl.Binary:
        return "bytes"
    if dtype == pl.Date:
        return "date"
    if isinstance(dtype, pl.Datetime):
        return "datetime" if dtype.time_zone is None else "datetime-tz"
    if dtype == pl.Time:
        return "time"
    if isinstance(dtype, pl.Duration):
        return "timedelta"
    return str(dtype.base_type()).lower()


@dataclass(frozen=True)
class UnifiedSchema:
    """Output columns in order with their polars types, and whether polars can merge them."""

    columns: list[str]
    dtypes: dict[str, pl.DataType]
    vectorisable: bool


def _first_value(df: pl.DataFrame, col: str) -> str:
    s = df[col]
    if s.null_count() == s.len():
        return "all null"
    i = int(s.is_not_null().arg_max() or 0)
    return f"row {i}: {s[i]!r}"


def _check_keys(df: pl.DataFrame, label: str, spec: MergeSpec) -> None:
    for k in spec.keys:
        if k not in df.columns:
            raise KeyColumnError(
                f"key column {k!r} is missing from {label} (columns: {df.columns!r})"
            )
        s = df[k]
        if s.null_count():
            i = int(s.is_null().arg_max() or 0)
            raise NullKeyError(f"key column {k!r} is null (or NaN) in {label}, row {i}")
        fam = family(s.dtype)
        if fam not in SCALAR_FAMILIES or (fam == "null" and df.height):
            raise KeyTypeError(
                f"key column {k!r} in {label} has type {s.dtype}, "
                f"{_first_value(df, k)}; keys must be scalars"
            )
    if spec.timestamp is not None and df.height and spec.timestamp not in df.columns:
        raise SchemaError(f"timestamp column {spec.timestamp!r} is missing from {label}")
    t = spec.tombstone
    if t is not None and t in df.columns and family(df.schema[t]) not in ("bool", "null"):
        raise SchemaError(
            f"tombstone column {t!r} must be boolean; {label} has {df.schema[t]} "
            f"({_first_value(df, t)})"
        )


def unify(frames: Sequence[tuple[str, pl.DataFrame]], spec: MergeSpec) -> UnifiedSchema:
    """Validate every frame and pick one type per column; raise a MergeError naming the column."""
    import polars as pl

    first: dict[str, tuple[str, str, pl.DataFrame]] = {}
    names: set[str] = set()
    for label, df in frames:
        _check_keys(df, label, spec)
        for c, dtype in df.schema.items():
            names.add(c)
            fam = family(dtype)
            if fam == "null":
                continue
            seen = first.get(c)
            if seen is None:
                first[c] = (fam, label, df)
            elif seen[0] != fam:
                err = KeyTypeError if c in spec.keys else SchemaError
                role = "key column" if c in spec.keys else "column"
                other = seen[2]
                raise err(
                    f"{role} {c!r} is {other.schema[c]} in {seen[1]} ({_first_value(other, c)}) "
                    f"but {dtype} in {label} ({_first_value(df, c)}); a column must hold one "
                    "kind of value in every input"
                )
    try:
        merged: dict[str, Any] = dict(
            pl.concat([df.head(0) for _, df in frames], how="diagonal_relaxed").schema
        )
    except Exception as e:
        raise SchemaError(f"the inputs' column types cannot be combined: {e}") from None
    if spec.tombstone is not None:
        merged[spec.tombstone] = pl.Boolean
    for label, df in frames:
        _check_exact_cast(df, label, merged, spec)
    columns = spec.column_order(names - set(spec.keys))
    dtypes = {c: merged.get(c, pl.Null) for c in columns}
    vectorisable = all(family(d) in SCALAR_FAMILIES for d in dtypes.values())
    return UnifiedSchema(columns, dtypes, vectorisable)


def _check_exact_cast(
    df: pl.DataFrame, label: str, merged: dict[str, Any], spec: MergeSpec
) -> None:
    """KeyTypeError for an integer key that would be compared as a float; SchemaError for an
    integer value the unified float type cannot hold exactly."""
    for c, dtype in df.schema.items():
        target = merged.get(c)
        if target is None or not dtype.is_integer() or not target.is_float():
            continue
        if c in spec.keys:
            raise KeyTypeError(
                f"key column {c!r} is {dtype} in {label} ({_first_value(df, c)}) but floating "
                "point in another input; integer and float keys would be compared as floats "
                "(2**53 + 1 would equal 2**53): convert the keys to one type"
            )
        s = df[c]
        lossy = (s.cast(target).cast(dtype, strict=False) != s).fill_null(True) & s.is_not_null()
        if lossy.any():
            i = int(lossy.arg_max() or 0)
            raise SchemaError(
                f"column {c!r} is {dtype} in {label} but floating point in another input, and "
                f"row {i} holds {s[i]!r}, which a {target} cannot hold exactly; cast the column "
                "to one type"
            )


def cast_to(df: pl.DataFrame, schema: UnifiedSchema) -> pl.DataFrame:
    """Cast a frame's columns to the unified types (columns it lacks stay absent)."""
    casts: dict[Any, Any] = {
        c: schema.dtypes[c] for c, d in df.schema.items() if d != schema.dtypes[c]
    }
    return df.cast(casts) if casts else df
