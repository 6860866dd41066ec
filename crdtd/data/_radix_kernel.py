"""The numba kernel behind `crdtd.data.radix` (imported on first use: numba and LLVM cost a
process ~0.4 s to load, which merges of small tables should not pay)."""

from __future__ import annotations

import numpy as np
from numba import njit

DIGIT = 11  # bits per pass: 2,048 counters stay in the L1 cache


@njit(nogil=True, cache=True)
def radix_sort(values: np.ndarray, order: np.ndarray, bits: int) -> None:
    """Sort uint64 `values` (all below 2**bits) in place, least significant digit first,
    moving `order` (int64, same length, or empty) along: a stable sort. A digit that every
    value shares is skipped; passes alternate between the arrays and a scratch copy."""
    n = values.shape[0]
    carry = order.shape[0] > 0
    src, dst = values, np.empty_like(values)
    osrc = order
    odst = np.empty_like(order)
    counts = np.zeros(1 << DIGIT, np.int64)
    mask = np.uint64((1 << DIGIT) - 1)
    moved = False
    for shift in range(0, bits, DIGIT):
        s = np.uint64(shift)
        counts[:] = 0
        for i in range(n):
            counts[(src[i] >> s) & mask] += 1
        if counts.max() == n:
            continue
        total = 0
        for d in range(1 << DIGIT):
            c = counts[d]
            counts[d] = total
            total += c
        if carry:
            for i in range(n):
                d = (src[i] >> s) & mask
                p = counts[d]
                dst[p] = src[i]
                odst[p] = osrc[i]
                counts[d] = p + 1
            osrc, odst = odst, osrc
        else:
            for i in range(n):
                d = (src[i] >> s) & mask
                p = counts[d]
                dst[p] = src[i]
                counts[d] = p + 1
        src, dst = dst, src
        moved = not moved
    if moved:
        values[:] = src
        if carry:
            order[:] = osrc
