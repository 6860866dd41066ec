"""What every sketch lattice shares: the DataSketches import, estimates, and value checks."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from crdtd.errors import LatticeValueError

try:
    import datasketches as ds
except ImportError as exc:  # pragma: no cover - the `sketch` extra is installed in dev
    raise ImportError(
        "sketch lattices need Apache DataSketches: pip install 'crdtd[sketch]'"
    ) from exc

__all__ = ["Estimate", "check_param", "ds", "hashable_value"]

STD_DEV_CONFIDENCE = {1: 0.6827, 2: 0.9545, 3: 0.9973}
"""Two-sided confidence of `k` standard deviations (what DataSketches' bounds mean)."""


@dataclass(frozen=True)
class Estimate:
    """A sketch's answer with its error bounds: `lower <= true value <= upper` holds with
    probability `confidence` (1.0 where the bound is deterministic)."""

    value: float
    lower: float
    upper: float
    confidence: float


def check_param(value: Any, name: str, lo: int, hi: int, where: str) -> int:
    """A sketch size parameter: an int in [lo, hi], else LatticeValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise LatticeValueError(
            f"{where}: {name} must be an integer in [{lo}, {hi}], got {value!r}"
        )
    return value


def check_std_devs(std_devs: Any, where: str) -> int:
    """DataSketches' bounds are given for 1, 2 or 3 standard deviations."""
    return check_param(std_devs, "std_devs", 1, 3, where)


def hashable_value(v: Any, where: str) -> int | float | str | bytes:
    """A value DataSketches hashes on the site: int (64-bit), float (not NaN), str or bytes.

    `1`, `1.0` and `"1"` hash differently; bools are refused rather than hashed as 0/1.
    """
    if isinstance(v, bool):
        raise LatticeValueError(f"{where}: bool values are ambiguous; convert to int or str")
    if isinstance(v, str | bytes):
        return v
    if isinstance(v, numbers.Integral):
        i = int(v)
        if not -(2**63) <= i < 2**63:
            raise LatticeValueError(f"{where}: integer {i} does not fit in 64 bits")
        return i
    if isinstance(v, numbers.Real):
        f = float(v)
        if math.isnan(f):
            raise LatticeValueError(f"{where}: NaN cannot be counted")
        return f
    raise LatticeValueError(
        f"{where}: cannot hash {type(v).__name__} (use int, float, str or bytes)"
    )
