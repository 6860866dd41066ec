"""The numba kernels behind `_kernels` (imported on first use: numba and LLVM cost ~0.2 s
and ~100 MB, which merges that never run a kernel should not pay)."""

from __future__ import annotations

import sys
from typing import Any

import llvmlite.binding
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
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


def _has_compress() -> bool:
    """Whether numba compiles for this machine's CPU and it has AVX-512F (its compress
    instructions pack the selected lanes of a vector in order)."""
    if getattr(config, "CPU_NAME", None) is not None:
        return False  # (a named target, e.g. a portable cache: its features are not ours)
    return bool(llvmlite.binding.get_host_cpu_features().get("avx512f", False))


COMPRESS = _has_compress()
_F32, _I8, _I16 = ir.FloatType(), ir.IntType(8), ir.IntType(16)
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_V16F, _V16B, _V8I = ir.VectorType(_F32, 16), ir.VectorType(_I8, 16), ir.VectorType(_I64, 8)
_V16M = ir.VectorType(ir.IntType(1), 16)
_V16H, _V16I = ir.VectorType(_I16, 16), ir.VectorType(_I32, 16)


def _ptr(builder: Any, base: Any, index: Any, vector: Any) -> Any:
    """A pointer to the `vector` starting at entry `index` of the array data `base`."""
    return builder.bitcast(builder.gep(base, [index]), vector.as_pointer())


def _mask_count(builder: Any, mask: Any) -> Any:
    """How many of a `<n x i1>` mask's lanes are set (n = 8 or 16), as an i64."""
    kind = ir.IntType(len(mask.type))
    count = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(kind, [kind]), f"llvm.ctpop.i{len(mask.type)}"
    )
    return builder.zext(builder.call(count, [builder.bitcast(mask, kind)]), _I64)


def _compressed(builder: Any, vector: Any, mask: Any) -> Any:
    """The lanes of `vector` set in `mask`, packed to the front in order (AVX-512F)."""
    lanes, item = len(vector.type), vector.type.element
    name = f"v{lanes}f32" if item == _F32 else f"v{lanes}i{item.width}"
    pack = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vector.type, [vector.type, vector.type, mask.type]),
        f"llvm.x86.avx512.mask.compress.{name}",
    )
    return builder.call(pack, [vector, ir.Constant(vector.type, None), mask])


def _positions(builder: Any, first: Any, kind: Any, lanes: range) -> Any:
    """The vector first + lane for each lane in `lanes`, of integers `kind`."""
    vector = ir.VectorType(kind, len(lanes))
    one = builder.insert_element(ir.Constant(vector, None), first, ir.Constant(_I32, 0))
    same = ir.Constant(ir.VectorType(_I32, len(lanes)), [0] * len(lanes))
    splat = builder.shuffle_vector(one, ir.Constant(vector, None), same)
    return builder.add(splat, ir.Constant(vector, list(lanes)))


def _append_packed(
    builder: Any, values: Any, mask: Any, vv: Any, pv: Any, size: Any, first: Any
) -> Any:
    """Store the lanes of the 16 float32 `values` set in `mask`, in order, at vv[size:],
    and their positions first + lane at pv[size:] (int32 or int64); returns the new size.
    Each store writes whole vectors, so vv and pv need room for 16 past `size`."""
    builder.store(_compressed(builder, values, mask), _ptr(builder, vv, size, _V16F), align=4)
    if pv.type.pointee == _I32:  # one vector of 16 positions
        where = _positions(builder, builder.trunc(first, _I32), _I32, range(16))
        builder.store(_compressed(builder, where, mask), _ptr(builder, pv, size, _V16I), align=4)
        return builder.add(size, _mask_count(builder, mask))
    for half in (range(8), range(8, 16)):  # two of 8 int64 positions
        picks = ir.Constant(ir.VectorType(_I32, 8), list(half))
        part = builder.shuffle_vector(mask, ir.Constant(_V16M, None), picks)
        where = _compressed(builder, _positions(builder, first, _I64, half), part)
        builder.store(where, _ptr(builder, pv, size, _V8I), align=8)
        size = builder.add(size, _mask_count(builder, part))
    return size


@intrinsic
def _compress16(
    typingctx: Any, a: Any, inside: Any, q: Any, vj: Any, pj: Any, size: Any, at: Any
) -> Any:
    """Append a[q:q+16] where inside[q:q+16] is set to vj[size:] and their positions
    at + q + lane to pj[size:], in order; returns the new size. AVX-512F only; it stores 16
    lanes each time, so vj and pj need 16 entries of room past `size`."""
    sig = types.intp(a, inside, types.intp, vj, pj, types.intp, types.intp)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        a_, inside_, q_, vj_, pj_, size_, at_ = args
        arrays = [
            context.make_array(t)(context, builder, v)
            for t, v in zip(signature.args[:2] + signature.args[3:5], (a_, inside_, vj_, pj_))
        ]
        av, fv, vv, pv = (arr.data for arr in arrays)
        x = builder.load(_ptr(builder, av, q_, _V16F), align=4)
        flags = builder.load(_ptr(builder, fv, q_, _V16B), align=1)
        mask = builder.icmp_unsigned("!=", flags, ir.Constant(_V16B, [0] * 16))
        return _append_packed(builder, x, mask, vv, pv, size_, builder.add(at_, q_))

    return sig, codegen


@intrinsic
def _scan16(
    typingctx: Any,
    xs: Any,
    bt: Any,
    q: Any,
    low: Any,
    high: Any,
    vj: Any,
    pj: Any,
    size: Any,
    at: Any,
) -> Any:
    """`_flags` and the gather of entries [q, q+16) in registers: v = |xs − bt| (xs: bf16
    bits or float32, bt float32), the v with low ≤ v ≤ high appended to vj[size:] and their
    positions at + q + lane to pj[size:] (16 lanes stored: room for 16 past `size`);
    returns (new size, how many v ≥ low, how many v < inf). The same float operations and
    ordered comparisons as `_flags` (NaN is in no count). AVX-512F only."""
    sig = types.UniTuple(types.intp, 3)(
        xs, bt, types.intp, types.float32, types.float32, vj, pj, types.intp, types.intp
    )
    bits = xs.dtype == types.uint16

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        q_, low_, high_, size_, at_ = (args[i] for i in (2, 3, 4, 7, 8))
        arrays = [
            context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 1, 5, 6)
        ]
        xp, bp, vv, pv = (arr.data for arr in arrays)
        if bits:
            raw = builder.load(_ptr(builder, xp, q_, _V16H), align=2)
            wide = builder.shl(builder.zext(raw, _V16I), ir.Constant(_V16I, [16] * 16))
            x = builder.bitcast(wide, _V16F)
        else:
            x = builder.load(_ptr(builder, xp, q_, _V16F), align=4)
        b = builder.load(_ptr(builder, bp, q_, _V16F), align=4)
        fabs = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16F, [_V16F]), "llvm.fabs.v16f32"
        )
        v = builder.call(fabs, [builder.fsub(x, b)])

        def splat(value: Any) -> Any:
            one = builder.insert_element(ir.Constant(_V16F, None), value, ir.Constant(_I32, 0))
            return builder.shuffle_vector(
                one, ir.Constant(_V16F, None), ir.Constant(_V16I, [0] * 16)
            )

        ge = builder.fcmp_ordered(">=", v, splat(low_))
        inside = builder.and_(ge, builder.fcmp_ordered("<=", v, splat(high_)))
        bounded = builder.fcmp_ordered("<", v, ir.Constant(_V16F, [float("inf")] * 16))
        size = _append_packed(builder, v, inside, vv, pv, size_, builder.add(at_, q_))
        counts = [size, _mask_count(builder, ge), _mask_count(builder, bounded)]
        return context.make_tuple(builder, signature.return_type, counts)

    return sig, codegen


@njit(nogil=True, cache=True)
def _gather_from(
    a: np.ndarray,
    inside: np.ndarray,
    first: int,
    c: int,
    s: int,
    vj: np.ndarray,
    pj: np.ndarray,
    size: int,
) -> int:
    """Append a[q] and s + q for each set flag q in [first, c), flag by flag: the gathers'
    tails, and all of `_gather_each`."""
    for q in range(first, c):
        if inside[q]:
            vj[size] = a[q]
            pj[size] = s + q
            size += 1
    return size


@njit(nogil=True, cache=True)
def _gather_each(
    a: np.ndarray, inside: np.ndarray, c: int, s: int, vj: np.ndarray, pj: np.ndarray, size: int
) -> int:
    """`_scan`'s gather flag by flag (big-endian machines, where `_gather_words`'s byte
    order does not hold)."""
    return _gather_from(a, inside, 0, c, s, vj, pj, size)


@njit(nogil=True, cache=True)
def _gather_packed(
    a: np.ndarray, inside: np.ndarray, c: int, s: int, vj: np.ndarray, pj: np.ndarray, size: int
) -> int:
    """`_scan`'s gather with the compress instructions, 16 flags at a time."""
    room = vj.shape[0] - 16
    g = 0
    while g + 16 <= c and size <= room:
        size = _compress16(a, inside, g, vj, pj, size, s)  # type: ignore[call-arg]
        g += 16
    return _gather_from(a, inside, g, c, s, vj, pj, size)


@njit(nogil=True, cache=True)
def _gather_words(
    a: np.ndarray, inside: np.ndarray, c: int, s: int, vj: np.ndarray, pj: np.ndarray, size: int
) -> int:
    """`_scan`'s gather anywhere: the flags eight to a word, set ones by trailing zeros (a
    flag is 0 or 1, so a set byte's lowest bit; little-endian)."""
    flag_words = inside.view(np.uint64)
    for w in range(c >> 3):
        word = flag_words[w]
        while word:
            q = (w << 3) + (trailing_zeros(word) >> 3)  # type: ignore[call-arg]
            vj[size] = a[q]
            pj[size] = s + q
            size += 1
            word &= word - np.uint64(1)
    return _gather_from(a, inside, c & ~7, c, s, vj, pj, size)


if COMPRESS:
    _gather = _gather_packed
elif sys.byteorder == "little":
    _gather = _gather_words
else:
    _gather = _gather_each


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


@intrinsic
def _bf16(typingctx: Any, bits: Any) -> Any:
    """The float32 of bf16 bits (a uint16): the bits shifted into its top half, exact."""
    sig = types.float32(types.uint16)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        wide = builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16))
        return builder.bitcast(wide, _F32)

    return sig, codegen


def _at(src: np.ndarray, q: int) -> np.float32:
    """src[q] as float32: bf16 bits (uint16) widened exactly, float32 as it is (so a pass
    reads the file's bits with no widened copy of them)."""
    raise NotImplementedError  # compiled only, through the overload below


@overload(_at, jit_options={"nogil": True}, inline="always")
def _at_impl(src, q):  # type: ignore[no-untyped-def]
    if src.dtype == types.uint16:
        return lambda src, q: _bf16(src[q])  # type: ignore[call-arg]
    return lambda src, q: src[q]


@njit(nogil=True, cache=True)
def _shrunk(xs: np.ndarray, bt: np.ndarray, lim: np.float32, out: np.ndarray) -> None:
    """out ← torch.hardshrink(xs − bt, lim): |v| ≤ lim becomes +0.0 (xs: bf16 bits or
    float32, read as `_at`)."""
    zero = np.float32(0.0)
    for j in range(out.shape[0]):
        v = _at(xs, j) - bt[j]
        out[j] = zero if (v >= -lim) & (v <= lim) else v


@njit(nogil=True, cache=True)
def _minus(xs: np.ndarray, bt: np.ndarray, out: np.ndarray) -> None:
    """out ← xs − bt (xs: bf16 bits or float32, read as `_at`)."""
    for j in range(out.shape[0]):
        out[j] = _at(xs, j) - bt[j]


@njit(nogil=True, cache=True)
def _dropped(
    xs: np.ndarray,
    bt: np.ndarray,
    wt: np.ndarray,
    b16: np.uint16,
    f: np.float32,
    scaled: bool,
    out: np.ndarray,
) -> None:
    """out ← ((xs − bt)·keep)·f, keep = 1 where the draw word wt < b16 else 0 (multiplied,
    so a dropped entry keeps its sign), the ·f only when `scaled`: DARE's τ, drop and
    rescale, the same float operations `_combine` made in three passes, in one."""
    one = np.float32(1.0)
    zero = np.float32(0.0)
    if scaled:
        for j in range(out.shape[0]):
            out[j] = ((_at(xs, j) - bt[j]) * (one if wt[j] < b16 else zero)) * f
    else:
        for j in range(out.shape[0]):
            out[j] = (_at(xs, j) - bt[j]) * (one if wt[j] < b16 else zero)


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
    streams: np.ndarray,
    grid: int,
    m_lo: np.uint64,
    m_hi: np.uint64,
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
    bw = np.empty(TILE, np.float32)
    gamma = np.empty(TILE, np.float32)
    mixed = np.empty(TILE, np.float32)
    divisor = np.empty(TILE, np.float32)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    # with `streams`, each drawing model's 16-bit words come from its chunk's PCG64 lanes
    # tile by tile (four per 64-bit draw, low first), so no words row is written and read
    drawn = np.empty((k, TILE // 4), np.uint64)
    lanes = np.empty((k, 10), np.uint64)
    m0, m1 = np.uint64(m_lo), np.uint64(m_hi)  # (the four-step multiplier)
    # every loop indexes tile slices by its own range variable: numba then knows the
    # index is not negative and LLVM vectorises (an index like `a + j` is not)
    for a in range(0, n, TILE):
        c = min(TILE, n - a)
        bt = _widen(base[a : a + c], bw)
        for i in range(k):
            ti = t[i, :c]
            xs = x[i, a : a + c]
            fused = has_draws[i] and not has_thr[i]  # τ, drop and rescale in one pass
            if has_thr[i]:  # τ and its hardshrink in one pass (the threshold, then below it)
                cut = min(c, max(0, tie_from[i] - offset - a))
                _shrunk(xs[:cut], bt[:cut], thr[i], ti[:cut])
                _shrunk(xs[cut:c], bt[cut:c], below[i], ti[cut:])
            elif not fused:
                _minus(xs, bt, ti)
            if has_draws[i]:
                if streams.shape[0]:
                    if a % grid == 0:  # a chunk starts: its stream's lanes
                        lanes[i, :] = streams[i, a // grid]
                    li = lanes[i]
                    _pcg64_fill(li, m0, m1, li[8], li[9], drawn[i, : (c + 3) // 4])
                    wt = drawn[i].view(np.uint16)[:c]
                else:
                    wt = words[i, a : a + c]
                b16 = below16[i]
                if fused:
                    _dropped(xs, bt, wt, b16, scale[i], has_scale[i], ti)
                else:
                    for j in range(c):
                        ti[j] = ti[j] * (one if wt[j] < b16 else zero)
            if has_scale[i] and not fused:
                f = scale[i]
                for j in range(c):
                    ti[j] = ti[j] * f
            if not unit:
                f = w[i]
                for j in range(c):
                    ti[j] = ti[j] * f
        g = gamma[:c]
        m = mixed[:c]
        if consensus and unit and normalize and wmode == UNIT and (k == 2 or k == 3):
            if k == 2:
                _elect2(t, c, lam, bt, out[a : a + c])
            else:
                _elect3(t, c, lam, bt, out[a : a + c])
            continue
        if consensus:
            _rowsum(t, c, g)
            for j in range(c):
                g[j] = -one if g[j] < zero else one
            # per model in row order: its part agreeing with the elected sign (clamped at
            # 0, keeping −0.0), summed into m, and its weight where that part is > 0 into d
            # (the first row copied, the rest added: `_rowsum`'s order)
            d = divisor[:c]
            t0 = t[0, :c]
            f = one if unit else w[0]
            for j in range(c):
                v = t0[j] * g[j]
                v = zero if v < zero else v
                m[j] = v
                d[j] = (one if v > zero else zero) * f
            for i in range(1, k):
                ti = t[i, :c]
                f = one if unit else w[i]
                for j in range(c):
                    v = ti[j] * g[j]
                    v = zero if v < zero else v
                    m[j] = m[j] + v
                    d[j] = d[j] + (one if v > zero else zero) * f
            if normalize:
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
def _agreeing(v: np.float32, g: np.float32) -> tuple[np.float32, np.float32]:
    """(max(v·g, 0) keeping −0.0, 1 where that is > 0 else 0): one model's part that agrees
    with the elected sign g, and its unit weight in the divisor."""
    zero = np.float32(0.0)
    part = v * g
    part = zero if part < zero else part
    return part, np.float32(1.0) if part > zero else zero


@njit(nogil=True, cache=True, error_model="numpy")
def _elect2(t: np.ndarray, c: int, lam: np.float32, bt: np.ndarray, out: np.ndarray) -> None:
    """`_elect3` for two models."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    t0 = t[0, :c]
    t1 = t[1, :c]
    for j in range(c):
        g = -one if t0[j] + t1[j] < zero else one
        m, d = _agreeing(t0[j], g)
        v, f = _agreeing(t1[j], g)
        m = m + v
        d = d + f
        out[j] = _fma((m / (one if d < one else d)) * g, lam, bt[j])  # type: ignore[call-arg]


@njit(nogil=True, cache=True, error_model="numpy")
def _elect3(t: np.ndarray, c: int, lam: np.float32, bt: np.ndarray, out: np.ndarray) -> None:
    """`_combine`'s consensus for three models of unit weight, normalised (TIES's and
    DARE's usual case), in one pass over the tile where the general loop makes ten: the
    same float operations in the same order per entry, so the same bytes. (numpy's error
    model: the divisor is at least 1, and Python's zero-division check would stop LLVM
    vectorising the loop.)"""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    t0 = t[0, :c]
    t1 = t[1, :c]
    t2 = t[2, :c]
    for j in range(c):
        g = -one if (t0[j] + t1[j]) + t2[j] < zero else one
        m, d = _agreeing(t0[j], g)
        v, f = _agreeing(t1[j], g)
        m = m + v
        d = d + f
        v, f = _agreeing(t2[j], g)
        m = m + v
        d = d + f
        out[j] = _fma((m / (one if d < one else d)) * g, lam, bt[j])  # type: ignore[call-arg]


@njit(nogil=True, cache=True)
def _flags(
    xs: np.ndarray,
    bt: np.ndarray,
    low: np.float32,
    high: np.float32,
    a: np.ndarray,
    inside: np.ndarray,
) -> tuple[int, int, int]:
    """One pass over a tile: a ← |xs − bt| (xs: bf16 bits or float32, read as `_at`),
    inside ← lo ≤ a ≤ hi; the counts of entries ≥ lo, inside, and finite (a function of
    its own: inline in the scan's body the same loop ran slower, measured, not explained)."""
    inf = np.float32(np.inf)
    above = 0
    seen = 0
    bounded = 0
    for q in range(xs.shape[0]):
        v = abs(_at(xs, q) - bt[q])
        a[q] = v
        ge = v >= low
        above += ge
        inside[q] = ge & (v <= high)
        seen += inside[q]
        bounded += v < inf
    return above, seen, bounded


@njit(nogil=True, cache=True)
def _scan_flags(
    xs: np.ndarray,
    bt: np.ndarray,
    low: np.float32,
    high: np.float32,
    a: np.ndarray,
    inside: np.ndarray,
    vj: np.ndarray,
    pj: np.ndarray,
    size: int,
    s: int,
) -> tuple[int, int, int]:
    """One model's scan of a tile starting at s: (how many |τ| ≥ low, the new size of
    vj/pj after appending the |τ| in [low, high] and their positions, how many |τ| are
    finite). One vectorised pass makes |τ| and the bracket flags (in the scratch `a`,
    `inside`), then the flagged entries are gathered (a branch per entry on the
    comparisons themselves is mispredicted half the time)."""
    above, seen, bounded = _flags(xs, bt, low, high, a, inside)
    if seen:
        size = _gather(a, inside, xs.shape[0], s, vj, pj, size)
    return above, size, bounded


@njit(nogil=True, cache=True)
def _scan_packed(
    xs: np.ndarray,
    bt: np.ndarray,
    low: np.float32,
    high: np.float32,
    a: np.ndarray,
    inside: np.ndarray,
    vj: np.ndarray,
    pj: np.ndarray,
    size: int,
    s: int,
) -> tuple[int, int, int]:
    """`_scan_flags` sixteen entries at a time in registers (`_scan16`: no |τ| or flag
    is stored, the compress instructions append the entries inside); the last few
    entries, or all once vj has no room for a 16-lane store, go through `_scan_flags`."""
    c = xs.shape[0]
    room = vj.shape[0] - 16
    above = 0
    bounded = 0
    g = 0
    while g + 16 <= c and size <= room:
        counts = _scan16(xs, bt, g, low, high, vj, pj, size, s)  # type: ignore[call-arg,var-annotated]
        size = counts[0]
        above += counts[1]
        bounded += counts[2]
        g += 16
    if g < c:
        rest = _scan_flags(xs[g:], bt[g:c], low, high, a, inside, vj, pj, size, s + g)
        above += rest[0]
        size = rest[1]
        bounded += rest[2]
    return above, size, bounded


_scan_tile = _scan_packed if COMPRESS else _scan_flags


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
    """See `_kernels.scan_block`; returns whether every |τ| was finite."""
    n = base.shape[0]
    a = np.empty(TILE, np.float32)
    bw = np.empty(TILE, np.float32)
    inside = np.empty(TILE, np.uint8)
    finite = True
    for j in range(models.shape[0]):
        below[j] = 0
        sizes[j] = 0
    # tiles outside, models inside: a tile of the base is read once for all models
    for s in range(0, n, TILE):
        c = min(TILE, n - s)
        bt = _widen(base[s : s + c], bw)
        for j in range(models.shape[0]):
            xs = x[models[j], s : s + c]
            low, high = lo[j], hi[j]
            above, size, bounded = _scan_tile(
                xs, bt, low, high, a, inside, values[j], where[j], sizes[j], s
            )
            finite &= bounded == c
            if has_lo[j]:
                below[j] += c - above
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


@njit(nogil=True, cache=True)
def _order_key(bits: np.uint32) -> np.uint32:
    """A uint32 that orders float32 values (given as their bits) as `np.sort` does: −0.0
    keyed as +0.0 (they compare equal), every NaN last."""
    magnitude = bits & np.uint32(0x7FFFFFFF)
    if magnitude > np.uint32(0x7F800000):
        return np.uint32(0xFFFFFFFF)
    if magnitude == np.uint32(0) or not bits >> np.uint32(31):
        return magnitude | np.uint32(0x80000000)
    return ~bits


@njit(nogil=True, cache=True)
def _order_stats(a: np.ndarray, ranks: np.ndarray, values: np.ndarray, n_le: np.ndarray) -> None:
    """values[r] ← the ranks[r]-th smallest (1-based) of float32 `a` as `np.sort` orders
    it, n_le[r] ← how many entries sort at or before it (`searchsorted(side="right")` on the
    sorted array): a counting pass over the order keys' high 16 bits, then one per rank over
    the low 16 bits of the keys in its bucket, where a sort takes n·log n."""
    n = a.shape[0]
    bits = a.view(np.uint32)
    keys = np.empty(n, np.uint32)
    high = np.zeros(65536, np.int64)
    for q in range(n):
        k = _order_key(bits[q])
        keys[q] = k
        high[k >> np.uint32(16)] += 1
    low = np.zeros(65536, np.int64)
    out = values.view(np.uint32)
    for r in range(ranks.shape[0]):
        m = ranks[r]
        below = 0
        top = 0
        while below + high[top] < m:
            below += high[top]
            top += 1
        low[:] = 0
        t = np.uint32(top)
        for q in range(n):
            if keys[q] >> np.uint32(16) == t:
                low[keys[q] & np.uint32(0xFFFF)] += 1
        rest = m - below
        under = 0
        bottom = 0
        while under + low[bottom] < rest:
            under += low[bottom]
            bottom += 1
        key = (t << np.uint32(16)) | np.uint32(bottom)
        n_le[r] = below + under + low[bottom]
        if key == np.uint32(0xFFFFFFFF):
            out[r] = np.uint32(0x7FC00000)
        elif key >> np.uint32(31):
            out[r] = key & np.uint32(0x7FFFFFFF)
        else:
            out[r] = ~key


_I128 = ir.IntType(128)


@intrinsic
def _pcg_draw(typingctx: Any, lo: Any, hi: Any, m_lo: Any, m_hi: Any, c_lo: Any, c_hi: Any) -> Any:
    """(PCG64's output of the 128-bit state (lo, hi), the low and high words of s·m + c mod
    2¹²⁸): numpy's PCG64 (XSL-RR output of a 128-bit LCG) with LLVM's 128-bit integers,
    which numba lacks."""
    u64 = types.uint64
    sig = types.UniTuple(u64, 3)(u64, u64, u64, u64, u64, u64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        lo_, hi_, mlo, mhi, clo, chi = args
        sixty_four = ir.Constant(_I128, 64)

        def wide(low: Any, high: Any) -> Any:
            return builder.or_(
                builder.shl(builder.zext(high, _I128), sixty_four), builder.zext(low, _I128)
            )

        mixed = builder.xor(hi_, lo_)
        turn = builder.lshr(hi_, ir.Constant(_I64, 58))
        rotr = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I64, [_I64, _I64, _I64]), "llvm.fshr.i64"
        )
        out = builder.call(rotr, [mixed, mixed, turn])
        nxt = builder.add(builder.mul(wide(lo_, hi_), wide(mlo, mhi)), wide(clo, chi))
        low = builder.trunc(nxt, _I64)
        high = builder.trunc(builder.lshr(nxt, sixty_four), _I64)
        return context.make_tuple(builder, signature.return_type, [out, low, high])

    return sig, codegen


@njit(nogil=True, cache=True)
def _pcg64_fill(
    states: np.ndarray,
    m_lo: np.uint64,
    m_hi: np.uint64,
    c_lo: np.uint64,
    c_hi: np.uint64,
    out: np.ndarray,
) -> None:
    """out ← consecutive PCG64 draws from four interleaved lanes: lane j (states[2j],
    states[2j + 1]: low, high) holds the state of draw j, 4 + j, …, each stepped by the
    four-step multiplier and increment, so four independent multiply chains overlap where
    one would wait on each product. The lanes live in registers while they run, and go
    back to `states` after the last whole round of four (so a stream goes on where a call
    of a multiple of four draws left it)."""
    a0, a1, b0, b1 = states[0], states[1], states[2], states[3]
    e0, e1, d0, d1 = states[4], states[5], states[6], states[7]
    m0, m1, k0, k1 = np.uint64(m_lo), np.uint64(m_hi), np.uint64(c_lo), np.uint64(c_hi)
    n = out.shape[0]
    q = 0
    while q + 4 <= n:
        out[q], a0, a1 = _pcg_draw(a0, a1, m0, m1, k0, k1)  # type: ignore[call-arg]
        out[q + 1], b0, b1 = _pcg_draw(b0, b1, m0, m1, k0, k1)  # type: ignore[call-arg]
        out[q + 2], e0, e1 = _pcg_draw(e0, e1, m0, m1, k0, k1)  # type: ignore[call-arg]
        out[q + 3], d0, d1 = _pcg_draw(d0, d1, m0, m1, k0, k1)  # type: ignore[call-arg]
        q += 4
    states[0], states[1], states[2], states[3] = a0, a1, b0, b1
    states[4], states[5], states[6], states[7] = e0, e1, d0, d1
    left = ((a0, a1), (b0, b1), (e0, e1))
    for j in range(n - q):
        out[q + j] = _pcg_draw(left[j][0], left[j][1], m0, m1, k0, k1)[0]  # type: ignore[call-arg]
