"""`merge`: one CRDT join for lists of dicts, DataFrames, Arrow tables and table files."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from crdtd.data import frames as fr
from crdtd.data.io import csv_schema, is_csv, write_table
from crdtd.data.records import RecordsResult, merge_records
from crdtd.data.schema import cast_to, unify
from crdtd.data.spec import MergeSpec
from crdtd.data.vectorised import merge_frames
from crdtd.errors import MergeError

# Columnar inputs with at least this many rows in total merge vectorised with polars.
FAST_PATH_MIN_ROWS = 20_000


def merge(
    *tables: Any,
    key: str | Sequence[str],
    timestamp: str | None = None,
    tombstone: str | None = None,
    drop_deleted: bool = False,
    out: str | os.PathLike[str] | None = None,
    fast_threshold: int | None = None,
    csv_types: Mapping[str, Any] | None = None,
) -> Any:
    """Join tables into one row per key; commutative, associative and idempotent.

    Each field resolves to the largest value under a total order on values, or, when
    `timestamp` names a column, the row versions with the newest timestamp win. The result
    has the type of the first input (a list of dicts for paths), or is written to `out`.
    CSV key columns are read as text unless `csv_types` gives their type ({"id": int}).
    See docs/tabular.md for the full rules.
    """
    spec = MergeSpec.build(key, timestamp, tombstone, drop_deleted)
    if not tables:
        raise MergeError("merge needs at least one table")
    kinds = [fr.input_kind(t, i) for i, t in enumerate(tables)]
    labels = [fr.input_label(t, k, i) for i, (t, k) in enumerate(zip(tables, kinds))]
    threshold = FAST_PATH_MIN_ROWS if fast_threshold is None else fast_threshold
    csv = csv_schema(spec.keys, csv_types) if any(is_csv(t) for t in tables) else None

    polars_frames = None
    if fr.RECORDS not in kinds:
        converted = [fr.to_polars(t, k, lab, csv) for t, k, lab in zip(tables, kinds, labels)]
        if all(df is not None for df in converted):
            polars_frames = [df for df in converted if df is not None]

    if polars_frames is None:
        inputs = [(lab, fr.to_records(t, k, lab, csv)) for t, k, lab in zip(tables, kinds, labels)]
        return _finish_records(merge_records(inputs, spec), kinds[0], out)

    labelled = fr.drop_schemaless(list(zip(labels, polars_frames)), spec.keys)
    schema = unify(labelled, spec)
    cast = [cast_to(df, schema) for _, df in labelled]
    if schema.vectorisable and sum(df.height for df in cast) >= threshold:
        result = merge_frames(cast, spec, schema)
    else:
        merged = merge_records([(lab, df.to_dicts()) for (lab, _), df in zip(labelled, cast)], spec)
        result = fr.frame_with_schema(merged.rows, schema.dtypes)
    if out is not None:
        return write_table(result, out)
    kind = kinds[0]
    if kind == fr.POLARS:
        return result
    if kind == fr.ARROW:
        arrow_inputs = [t for t, k in zip(tables, kinds) if k == fr.ARROW]
        return fr.restore_arrow_types(result.to_arrow(), arrow_inputs)
    if kind == fr.PANDAS:
        return fr.arrow_to_pandas(result.to_arrow())
    return result.to_dicts()


def _finish_records(merged: RecordsResult, kind: str, out: str | os.PathLike[str] | None) -> Any:
    if out is not None:
        return write_table(fr.frame_from_records(merged.columns, merged.rows), Path(out))
    return fr.records_to_kind(merged.columns, merged.rows, kind)
