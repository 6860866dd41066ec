"""polars building blocks shared by the vectorised merge paths: key order and the pair rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import polars as pl


def fresh_name(base: str, taken: Sequence[str]) -> str:
    """A column name starting like `base` that is not in `taken`."""
    name = base
    while name in taken:
        name = "_" + name
    return name


def sorted_numeric_keys(big: pl.DataFrame, keys: list[str]) -> np.ndarray | None:
    """The single key column as numbers numpy can sort (temporal types by their physical
    integer), or None when the key is composite, text or otherwise not plain numbers."""
    if len(keys) != 1:
        return None
    s = big[keys[0]]
    if not (s.dtype.is_numeric() or s.dtype.is_temporal()) or s.dtype.is_decimal():
        return None
    physical = s.to_physical()
    return physical.to_numpy() if physical.dtype.is_numeric() else None


def key_order(
    big: pl.DataFrame, keys: list[str], numeric: np.ndarray | None, presorted: bool
) -> np.ndarray:
    """Row indices of `big` in ascending key order."""
    import polars as pl

    if numeric is not None and presorted:  # timsort merges the already sorted runs in O(n)
        order = np.argsort(numeric, kind="stable")
        return order.astype(np.uint32) if len(order) < 2**32 else order
    if len(keys) == 1:
        return big[keys[0]].arg_sort().to_numpy()
    return big.select(pl.arg_sort_by(keys)).to_series().to_numpy()


def same_as_next(
    big: pl.DataFrame, keys: list[str], order: np.ndarray, numeric: np.ndarray | None
) -> np.ndarray:
    """For rows in key order, whether each row has the same key as the row after it."""
    n = len(order)
    if n < 2:
        return np.zeros(0, dtype=bool)
    if numeric is not None:
        ordered = numeric[order]
        return ordered[1:] == ordered[:-1]
    same = np.ones(n - 1, dtype=bool)
    for k in keys:
        s = big[k].gather(order)
        same &= (s.slice(1) == s.slice(0, n - 1)).fill_null(False).to_numpy()
    return same


def larger_is_b(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """True where `b` holds the larger value of the pair; null (missing) never wins."""
    return (b > a).fill_null(a.is_null() & b.is_not_null())
