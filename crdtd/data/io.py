"""Read and write CSV, JSON Lines and Parquet tables, chosen by file suffix."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crdtd.errors import InputReadError, OutputWriteError, SchemaError

if TYPE_CHECKING:
    import polars as pl

FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def require_polars(error: type[Exception], action: str) -> Any:
    """The polars module, or `error` saying which extra to install (it is optional)."""
    try:
        import polars
    except ImportError:
        raise error(f"{action} needs polars: pip install 'crdtd[data]'") from None
    return polars


def is_csv(obj: Any) -> bool:
    """Whether an input is a path to a CSV file."""
    return isinstance(obj, (str, os.PathLike)) and table_format(Path(obj)) == "csv"


def table_format(path: Path) -> str | None:
    """Format name for a path's suffix ('csv', 'jsonl', 'parquet'), or None if unknown."""
    return FORMATS.get(path.suffix.lower())


def csv_schema(keys: Sequence[str], declared: Mapping[str, Any] | None) -> dict[str, Any]:
    """Column types to read CSV files with: the declared ones, and text for every other key
    column (inferring "01" and "1" as the number 1 would merge distinct keys)."""
    out: dict[str, Any] = {}
    if not declared and not keys:
        return out
    pl = require_polars(InputReadError, "reading CSV files")
    for name, t in (declared or {}).items():
        if not isinstance(name, str):
            raise SchemaError(f"csv_types names columns by string, got {name!r}")
        if isinstance(t, pl.DataType) or (isinstance(t, type) and issubclass(t, pl.DataType)):
            out[name] = t
            continue
        try:
            out[name] = pl.DataType.from_python(t)
        except Exception:
            raise SchemaError(
                f"csv_types[{name!r}] = {t!r} is not a column type (use int, float, str, bool, "
                "datetime.date, datetime.datetime or a polars type)"
            ) from None
    for k in keys:
        out.setdefault(k, pl.String)
    return out


def read_table(
    path: str | os.PathLike[str], csv_schema: Mapping[str, Any] | None = None
) -> pl.DataFrame:
    """Read a table file into a polars DataFrame; InputReadError names the file and the cause.

    `csv_schema` gives the types of CSV columns (see `csv_schema`); others are inferred."""
    p = Path(path)
    pl = require_polars(InputReadError, f"reading {str(p)!r}")
    fmt = table_format(p)
    if fmt is None:
        raise InputReadError(
            f"cannot read {str(p)!r}: unknown table format {p.suffix!r} "
            f"(expected one of {', '.join(sorted(FORMATS))})"
        )
    if not p.is_file():
        raise InputReadError(f"cannot read {str(p)!r}: no such file")
    try:
        if fmt == "csv":
            _check_csv_fields(p, pl)
            df = pl.read_csv(p, infer_schema_length=None, schema_overrides=dict(csv_schema or {}))
            # An empty CSV column says nothing about its type: read it as all-null, not text.
            empty = [
                c
                for c, s in df.schema.items()
                if s == pl.String and df[c].null_count() == df.height
            ]
            return df.with_columns(pl.col(c).cast(pl.Null) for c in empty) if empty else df
        if fmt == "jsonl":
            if _blank(p):  # an empty table written as JSON Lines is an empty file
                return pl.DataFrame()
            return pl.read_ndjson(p, infer_schema_length=None)
        return pl.read_parquet(p)
    except InputReadError:
        raise
    # polars raises many types (ComputeError, OSError, ...), and panics on some damaged files
    except (Exception, pl.exceptions.PanicException) as e:
        raise InputReadError(f"cannot read {str(p)!r} as {fmt}: {_brief(e)}") from None


def _brief(e: BaseException, limit: int = 300) -> str:
    """A library's error message, cut to `limit` characters (some quote whole inputs)."""
    text = str(e)
    return text if len(text) <= limit else text[:limit] + "..."


def _blank(p: Path) -> bool:
    """Whether a file holds nothing but white space."""
    with p.open("rb") as f:
        return not f.read(1 << 16).strip() and not f.read(1)


def _check_csv_fields(p: Path, pl: Any) -> None:
    """InputReadError naming the line of the first CSV row whose field count differs from the
    header's (polars pads short rows with nulls silently and refuses long ones without a line).

    Only the row structure is checked here, by pyarrow's parser (one column kept, as bytes);
    anything else it objects to is left for polars to judge."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = pl.read_csv(p, n_rows=0).columns
    if not header:
        return
    bad: list[tuple[int, int, int | None]] = []

    def invalid(row: Any) -> str:
        bad.append((row.expected_columns, row.actual_columns, row.number))
        return "error"

    try:
        pacsv.read_csv(
            p,
            read_options=pacsv.ReadOptions(use_threads=False),  # so rows carry their number
            parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(
                include_columns=header[:1], column_types={header[0]: pa.binary()}
            ),
        )
    except Exception:
        if not bad:
            return
    if bad:
        expected, actual, line = bad[0]
        where = f"line {line}" if line is not None else "a row"
        raise InputReadError(
            f"cannot read {str(p)!r} as csv: {where} has {actual} fields but the header has "
            f"{expected} (lines counted from 1 with the header, a quoted line break inside a "
            "field not counted)"
        )


def write_table(df: pl.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a table by suffix, atomically (temp file, then rename); return the path."""
    p = Path(path)
    fmt = table_format(p)
    if fmt is None:
        raise OutputWriteError(
            f"cannot write {str(p)!r}: unknown table format {p.suffix!r} "
            f"(expected one of {', '.join(sorted(FORMATS))})"
        )
    if not p.parent.is_dir():
        raise OutputWriteError(
            f"cannot write {str(p)!r}: directory {str(p.parent)!r} does not exist"
        )
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
        if fmt == "csv":
            df.write_csv(tmp)
        elif fmt == "jsonl":
            df.write_ndjson(tmp)
        else:
            df.write_parquet(tmp)
        os.replace(tmp, p)
    except Exception as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise OutputWriteError(f"cannot write {str(p)!r} as {fmt}: {e}") from None
    return p
