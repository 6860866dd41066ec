"""Sorting unsigned 64-bit key codes in linear time where numpy's sort is slow.

numpy sorts uint64 with x86-simd-sort where the CPU has AVX-512, and on AMD Zen 4 that path
is several times slower than its AVX2 one (2M codes: 115 ms against about 25 ms). A
least-significant-digit radix sort (11-bit digits, only over the bits the codes use, a digit
every code shares skipped) sorts them in about 38 ms wherever it runs, and is stable. It is
numba-compiled (`crdtd/data/_radix_kernel.py`), so it is used only where numba is installed
and for arrays long enough to repay its first load in a process; elsewhere numpy sorts.
"""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np

RADIX_MIN = 1 << 18  # codes below this many: numpy's sort (the radix passes' fixed cost)
AVAILABLE = importlib.util.find_spec("numba") is not None
ENABLED = True  # tests switch the radix sort off to compare with numpy's


def _kernel() -> ModuleType:
    from crdtd.data import _radix_kernel

    return _radix_kernel


def _radix(values: np.ndarray) -> bool:
    return AVAILABLE and ENABLED and len(values) >= RADIX_MIN


def sort_u64(values: np.ndarray, bits: int = 64) -> None:
    """Sort uint64 `values` in place; every value is below 2**bits."""
    if not _radix(values):
        values.sort()
        return
    _kernel().radix_sort(values, np.empty(0, np.int64), bits)


def argsort_u64(values: np.ndarray) -> np.ndarray:
    """Indices (int64) that sort uint64 `values` stably (ties keep their order)."""
    if not _radix(values):
        return np.argsort(values, kind="stable")
    keys = values.copy()
    order = np.arange(len(values), dtype=np.int64)
    _kernel().radix_sort(keys, order, int(keys.max()).bit_length() if len(keys) else 0)
    return order
