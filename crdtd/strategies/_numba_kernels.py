"""The numba kernels behind `_kernels` (imported on first use: numba and LLVM cost ~0.2 s
and ~100 MB, which merges that never run a kernel should not pay)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic, overload

TILE = 2048  # entries per tile: k + 3 float32 rows of it stay in the L1/L2 cache
UNIT, POSITIVE, ANY = 0, 1, 2  # weight modes of the consensus divisor (`elect_and_mix`)


@intrinsic
def _fma(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
    """a·b + c rounded once (IEEE fused multiply-add), as torch's `add(alpha=)` does."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.fma(*args)

    return sig, codegen


def _widen(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """dst[:n] ← src as float32 (n = len(src)), returned: bf16 bits (uint16) are widened
    exactly (the bits shifted into a float32's top half), float32 copied."""
    raise NotImplementedError  # compiled only, through the overload below


@overload(_widen, jit_options={"nogil": True})
def _widen_impl(src, dst):  # type: ignore[no-untyped-def]
    if src.dtype == types.uint16:

        def widen_bf16(src, dst):  # type: ignore[no-untyped-def]
            n = src.shape[0]
            bits = dst[:n].view(np.uint32)
            for q in range(n):
                bits[q] = np.uint32(src[q]) << np.uint32(16)
            return dst[:n]

        return widen_bf16

    def copy(src, dst):  # type: ignore[no-untyped-def]
        n = src.shape[0]
        out = dst[:n]
        for q in range(n):
            out[q] = src[q]
        return out

    return copy


@njit(nogil=True, cache=True)
def _shrink(t: np.ndarray, lim: np.float32) -> None:
    """torch.hardshrink(t, lim) in place: |v| ≤ lim becomes +0.0."""
    zero = np.float32(0.0)
    for j in range(t.shape[0]):
        v = t[j]
        t[j] = zero if (v >= -lim) & (v <= lim) else v


@njit(nogil=True, cache=True)
def _rowsum(t: np.ndarray, c: int, out: np.ndarray) -> None:
    """out[:c] = Σ_i t[i, :c] in row order, as `_gta.rowsum`."""
    k = t.shape[0]
    t0 = t[0, :c]
    if k == 1:
        for j in range(c):
            out[j] = t0[j]
        return
    t1 = t[1, :c]
    for j in range(c):
        out[j] = t0[j] + t1[j]
    for i in range(2, k):
        ti = t[i, :c]
        for j in range(c):
            out[j] = out[j] + ti[j]


@njit(nogil=True, cache=True)
def _combine(
    x: np.ndarray,
    base: np.ndarray,
    offset: int,
    has_thr: np.ndarray,
    thr: np.ndarray,
    tie_from: np.ndarray,
    below: np.ndarray,
    has_draws: np.ndarray,
    words: np.ndarray,
    below16: np.ndarray,
    has_scale: np.ndarray,
    scale: np.ndarray,
    w: np.ndarray,
    unit: bool,
    consensus: bool,
    normalize: bool,
    wmode: int,
    wfloor: np.float32,
    divide: bool,
    total: np.float32,
    lam: np.float32,
    out: np.ndarray,
) -> None:
    k, n = x.shape
    t = np.empty((k, TILE), np.float32)
    xw = np.empty(TILE, np.float32)
    bw = np.empty(TILE, np.float32)
    gamma = np.empty(TILE, np.float32)
    mixed = np.empty(TILE, np.float32)
    divisor = np.empty(TILE, np.float32)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    # every loop indexes tile slices by its own range variable: numba then knows the
    # index is not negative and LLVM vectorises (an index like `a + j` is not)
    for a in range(0, n, TILE):
        c = min(TILE, n - a)
        bt = _widen(base[a : a + c], bw)
        for i in range(k):
            ti = t[i, :c]
            xt = _widen(x[i, a : a + c], xw)
            for j in range(c):
                ti[j] = xt[j] - bt[j]
            if has_thr[i]:
                cut = min(c, max(0, tie_from[i] - offset - a))
                _shrink(ti[:cut], thr[i])
                _shrink(ti[cut:], below[i])
            if has_draws[i]:
                wt = words[i, a : a + c]
                b16 = below16[i]
                for j in range(c):
                    ti[j] = ti[j] * (one if wt[j] < b16 else zero)
            if has_scale[i]:
                f = scale[i]
                for j in range(c):
                    ti[j] = ti[j] * f
            if not unit:
                f = w[i]
                for j in range(c):
                    ti[j] = ti[j] * f
        g = gamma[:c]
        m = mixed[:c]
        if consensus:
            _rowsum(t, c, g)
            for j in range(c):
                g[j] = -one if g[j] < zero else one
            for i in range(k):
                ti = t[i, :c]
                for j in range(c):
                    v = ti[j] * g[j]
                    ti[j] = zero if v < zero else v
            _rowsum(t, c, m)
            if normalize:
                for i in range(k):
                    ti = t[i, :c]
                    f = one if unit else w[i]
                    for j in range(c):
                        ti[j] = (one if ti[j] > zero else zero) * f
                d = divisor[:c]
                _rowsum(t, c, d)
                if wmode == UNIT:
                    for j in range(c):
                        m[j] = m[j] / (one if d[j] < one else d[j])
                elif wmode == POSITIVE:
                    for j in range(c):
                        m[j] = m[j] / (wfloor if d[j] < wfloor else d[j])
                else:
                    for j in range(c):
                        m[j] = m[j] / (one if d[j] == zero else d[j])
            for j in range(c):
                m[j] = m[j] * g[j]
        else:
            _rowsum(t, c, m)
            if divide:
                for j in range(c):
                    m[j] = m[j] / total
        ot = out[a : a + c]
        for j in range(c):
            ot[j] = _fma(m[j], lam, bt[j])  # type: ignore[call-arg]


@njit(nogil=True, cache=True)
def _flags(
    xt: np.ndarray,
    bt: np.ndarray,
    low: np.float32,
    high: np.float32,
    a: np.ndarray,
    inside: np.ndarray,
) -> tuple[int, int, int]:
    """One pass over a tile: a ← |xt − bt|, inside ← lo ≤ a ≤ hi; the counts of entries
    ≥ lo, inside, and finite (a function of its own: inline in the scan's body the same
    loop ran slower, measured, not explained)."""
    inf = np.float32(np.inf)
    above = 0
    seen = 0
    bounded = 0
    for q in range(xt.shape[0]):
        v = abs(xt[q] - bt[q])
        a[q] = v
        ge = v >= low
        above += ge
        inside[q] = ge & (v <= high)
        seen += inside[q]
        bounded += v < inf
    return above, seen, bounded


@njit(nogil=True, cache=True)
def _scan(
    x: np.ndarray,
    base: np.ndarray,
    models: np.ndarray,
    has_lo: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    below: np.ndarray,
    sizes: np.ndarray,
    values: np.ndarray,
    where: np.ndarray,
) -> bool:
    """See `_kernels.scan_block`; returns whether some |τ| was NaN or infinite."""
    n = base.shape[0]
    a = np.empty(TILE, np.float32)
    xw = np.empty(TILE, np.float32)
    bw = np.empty(TILE, np.float32)
    inside = np.empty(TILE, np.uint8)
    flag_words = inside.view(np.uint64)  # (a flag is 0 or 1: a set byte's lowest bit)
    finite = True
    for j in range(models.shape[0]):
        below[j] = 0
        sizes[j] = 0
    # tiles outside, models inside: a tile of the base is read once for all models
    for s in range(0, n, TILE):
        c = min(TILE, n - s)
        bt = _widen(base[s : s + c], bw)
        for j in range(models.shape[0]):
            xt = _widen(x[models[j], s : s + c], xw)
            low, high = lo[j], hi[j]
            # one vectorised pass: |τ|, how many reach lo, and the bracket flags; then a
            # gather that visits only the set flags (a branch on the comparisons themselves
            # is mispredicted half the time, one per flag still once per entry inside)
            above, seen, bounded = _flags(xt, bt, low, high, a, inside)
            finite &= bounded == c
            if has_lo[j]:
                below[j] += c - above
            size = sizes[j]
            vj = values[j]
            pj = where[j]
            if seen * 16 > c:  # many inside: write every entry, advance past kept ones
                for q in range(c):
                    vj[size] = a[q]
                    pj[size] = s + q
                    size += inside[q]
            elif seen:  # few inside: the flags eight to a word, set ones by trailing zeros
                for w in range(c >> 3):
                    word = flag_words[w]
                    while word:
                        q = (w << 3) + (trailing_zeros(word) >> 3)  # type: ignore[call-arg]
                        vj[size] = a[q]
                        pj[size] = s + q
                        size += 1
                        word &= word - np.uint64(1)
                for q in range(c & ~7, c):
                    if inside[q]:
                        vj[size] = a[q]
                        pj[size] = s + q
                        size += 1
            sizes[j] = size
    return finite


@njit(nogil=True, cache=True)
def _weighted_sum(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """out = Σ_i w_i·x_i as `_common.weighted_sum` does it: x_0·w_0, then one FMA per
    further input in input order (torch's `add_(alpha=)`), tile by tile."""
    k, n = x.shape
    xw = np.empty(TILE, np.float32)
    for a in range(0, n, TILE):
        c = min(TILE, n - a)
        ot = out[a : a + c]
        xt = _widen(x[0, a : a + c], xw)
        f = w[0]
        for j in range(c):
            ot[j] = xt[j] * f
        for i in range(1, k):
            xt = _widen(x[i, a : a + c], xw)
            f = w[i]
            for j in range(c):
                ot[j] = _fma(xt[j], f, ot[j])  # type: ignore[call-arg]
