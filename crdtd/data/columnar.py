"""polars building blocks shared by the vectorised merge paths: fresh names and the pair rule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl


def fresh_name(base: str, taken: Sequence[str]) -> str:
    """A column name starting like `base` that is not in `taken`."""
    name = base
    while name in taken:
        name = "_" + name
    return name


def larger_is_b(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """True where `b` holds the larger value of the pair; null (missing) never wins."""
    return (b > a).fill_null(a.is_null() & b.is_not_null())
