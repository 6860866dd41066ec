"""Tabular merge: a CRDT join of tables keyed by one or more columns.

`merge(a, b, key="id")` accepts lists of dicts, pandas / polars DataFrames, pyarrow Tables
and CSV / JSON Lines / Parquet paths. See docs/tabular.md.
"""

from crdtd.data.api import FAST_PATH_MIN_ROWS, merge
from crdtd.data.resolve import join_values, value_rank

__all__ = ["FAST_PATH_MIN_ROWS", "join_values", "merge", "value_rank"]
