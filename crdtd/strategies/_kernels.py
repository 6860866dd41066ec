"""Fused CPU kernels (numba) for the task-arithmetic engine's two hot loops.

`combine` and the magnitude scan of `_gta` run a dozen torch passes over chunks of
`[k, 2¹⁸]` float32 that do not fit in cache; these kernels do the same float operations in
the same order over tiles that do, in one call per block with the GIL released. Each
operation is the one torch performs (f32 subtract, hardshrink, multiply by a 0/1 flag or an
f32 factor, sums in row order, `clamp(min=0)` keeping −0.0, `sign` giving +0.0, f32 division,
and a fused multiply-add for `torch.add(base, mixed, alpha=λ)`), so the bytes are those of
the torch path (tests compare the two). Without numba, or off the CPU, `_gta` keeps its
torch path.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from types import ModuleType

import numpy as np

ENABLED = True  # tests switch the kernels off to compare with the torch path
AVAILABLE = importlib.util.find_spec("numba") is not None
UNIT, POSITIVE, ANY = 0, 1, 2  # weight modes of the consensus divisor (`elect_and_mix`)
# one model's keep: (threshold, tie_from, the float32 below the threshold, draws' `below`,
# scale), None where that part is absent
FusedKeep = tuple[float | None, int | None, float | None, int | None, float | None]


def enabled() -> bool:
    """Whether the fused kernels run (numba installed and not switched off)."""
    return AVAILABLE and ENABLED


def _kernels() -> ModuleType:
    from crdtd.strategies import _numba_kernels

    return _numba_kernels


def preload() -> None:
    """Import numba and load (or compile, the first time on a machine) the kernels for the
    engine's argument types (float32 blocks, and bf16 bits as uint16): what a process pays
    once, before its first merge otherwise (0.4-0.6 s here, see docs/model_merge.md)."""
    if not enabled():
        return
    keeps: list[FusedKeep] = [(0.5, None, 0.25, None, None), (None, None, None, 1, 2.0)]
    for dtype in (np.float32, np.uint16):
        x = np.zeros((2, 4), dtype)
        base = np.zeros(4, dtype)
        combine_block(
            x,
            base,
            0,
            keeps,
            np.zeros((2, 4), np.uint16),
            np.ones(2),
            unit=True,
            consensus=True,
            normalize=True,
            wmode=UNIT,
            wfloor=0.0,
            divide=False,
            total=2.0,
            lam=1.0,
            out=np.empty(4, np.float32),
        )
        scan_block(
            x, base, [0], [(0.0, 1.0)], np.empty((1, 4), np.float32), np.empty((1, 4), np.int32)
        )
        weighted_sum_block(x, np.ones(2), np.empty(4, np.float32))
    pcg64_raw(0, 5)
    order_stats(np.zeros(2, np.float32), [1])


def combine_block(
    x: np.ndarray,
    base: np.ndarray,
    offset: int,
    keeps: Sequence[FusedKeep],
    words: np.ndarray,
    weights: np.ndarray,
    *,
    streams: np.ndarray | None = None,
    grid: int = 1,
    unit: bool,
    consensus: bool,
    normalize: bool,
    wmode: int,
    wfloor: float,
    divide: bool,
    total: float,
    lam: float,
    out: np.ndarray,
) -> None:
    """`_gta.combine` of a flat block (x `[k, n]`, base `[n]`: float32, or bf16 bits as
    uint16) into `out` (float32).

    `keeps` is one `FusedKeep` per model, `words` `[k, n]` the 16-bit draw words of the
    models with draws; or, for a block starting on the draws' chunk grid (`grid` entries per
    chunk), `streams` `[k, chunks, 10]`: each drawing model's `pcg64_lanes` for each chunk
    the block touches, from which the kernel draws the words tile by tile itself.
    """
    k = x.shape[0]
    has_thr = np.zeros(k, np.bool_)
    thr = np.zeros(k, np.float32)
    tie = np.full(k, np.iinfo(np.int64).max, np.int64)
    lim = np.zeros(k, np.float32)
    has_draws = np.zeros(k, np.bool_)
    below16 = np.zeros(k, np.uint16)
    has_scale = np.zeros(k, np.bool_)
    scale = np.ones(k, np.float32)
    for i, (threshold, tie_from, below, draws_below, factor) in enumerate(keeps):
        if threshold is not None:
            has_thr[i] = True
            thr[i] = threshold
            lim[i] = below
            if tie_from is not None:
                tie[i] = tie_from
        if draws_below is not None:
            has_draws[i] = True
            below16[i] = draws_below
        if factor is not None:
            has_scale[i] = True
            scale[i] = factor
    _kernels()._combine(
        x,
        base,
        offset,
        has_thr,
        thr,
        tie,
        lim,
        has_draws,
        words,
        np.empty((0, 0, 10), np.uint64) if streams is None else streams,
        grid,
        *_PCG_MULT4_WORDS,
        below16,
        has_scale,
        scale,
        weights.astype(np.float32),
        unit,
        consensus,
        normalize,
        wmode,
        np.float32(wfloor),
        divide,
        np.float32(total),
        np.float32(lam),
        out,
    )


def scan_block(
    x: np.ndarray,
    base: np.ndarray,
    models: list[int],
    bounds: list[tuple[float | None, float | None]],
    values: np.ndarray,
    where: np.ndarray,
) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], bool]:
    """Per model in `models`: (#entries with |τ| < lo, the |τ| in [lo, hi] in order, their
    positions) over a flat block, τ = x[i] − base (None: unbounded), and whether every |τ|
    was finite (the counts assume it). x and base are float32, or bf16 bits as uint16;
    `values`/`where` `[len(models), ≥ n]` (float32, int32 or int64: positions in the block)
    are scratch the results are copied out of."""
    m = len(models)
    has_lo = np.array([lo is not None for lo, _ in bounds], np.bool_)
    lo = np.array([-np.inf if lo is None else lo for lo, _ in bounds], np.float32)
    hi = np.array([np.inf if hi is None else hi for _, hi in bounds], np.float32)
    below = np.zeros(m, np.int64)
    sizes = np.zeros(m, np.int64)
    models_ = np.array(models, np.int64)
    finite = _kernels()._scan(x, base, models_, has_lo, lo, hi, below, sizes, values, where)
    found = [
        (int(below[j]), values[j, : sizes[j]].copy(), where[j, : sizes[j]].copy()) for j in range(m)
    ]
    return found, bool(finite)


def weighted_sum_block(x: np.ndarray, weights: np.ndarray, out: np.ndarray) -> None:
    """`_common.weighted_sum` of a flat block (x `[k, n]`: float32, or bf16 bits as uint16)
    into `out` (float32)."""
    _kernels()._weighted_sum(x, weights.astype(np.float32), out)


def order_stats(a: np.ndarray, ranks: Sequence[int]) -> list[tuple[float, int]]:
    """Per rank m (1-based): the m-th smallest of the 1-D array `a` as `np.sort` orders it,
    and how many entries sort at or before it (`searchsorted(side="right")`).

    Float32 goes to a counting select in linear time; numpy's sort costs n·log n, and its
    AVX-512 quicksort is 6-7x slower than its AVX2 one on AMD Zen 4
    (`benchmarks/bench_kernels.py` prints both, and the select against the sort). Other
    dtypes, or kernels off: the sort.
    """
    if not len(ranks):
        return []
    if enabled() and a.dtype == np.float32 and a.ndim == 1:
        ms = np.asarray(ranks, np.int64)
        values = np.empty(len(ms), np.float32)
        n_le = np.empty(len(ms), np.int64)
        _kernels()._order_stats(np.ascontiguousarray(a), ms, values, n_le)
        return [(float(v), int(c)) for v, c in zip(values, n_le)]
    ordered = np.sort(a)
    return [
        (float(ordered[m - 1]), int(np.searchsorted(ordered, ordered[m - 1], side="right")))
        for m in ranks
    ]


_PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645  # PCG64's 128-bit LCG multiplier
_U128 = (1 << 128) - 1
_U64 = (1 << 64) - 1


_PCG_MULT4 = pow(_PCG_MULT, 4, 1 << 128)  # four steps at once: s ↦ s·m⁴ + c·(1 + m + m² + m³)
_PCG_SUM4 = (1 + _PCG_MULT + _PCG_MULT**2 + _PCG_MULT**3) & _U128
_PCG_MULT4_WORDS = (np.uint64(_PCG_MULT4 & _U64), np.uint64(_PCG_MULT4 >> 64))


def pcg64_raw(seed: int, count: int, out: np.ndarray | None = None) -> np.ndarray:
    """`np.random.PCG64(seed).random_raw(count)`: the same uint64 draws (numpy documents
    them fixed across versions), into `out` (`[count]` uint64) when given. Where the kernels
    run, numpy's seeding is redone here (SeedSequence's four words; the state stepped as
    `pcg64_set_seed` does) and the draws come from four interleaved lanes (`_pcg64_fill`):
    1.2-2x numpy's into a reused row, seeding included (`benchmarks/bench_kernels.py`)."""
    if out is None:
        out = np.empty(count, np.uint64)
    if not enabled():
        out[:] = np.random.PCG64(seed).random_raw(count)
        return out
    lanes = pcg64_lanes(seed)
    _kernels()._pcg64_fill(lanes, *_PCG_MULT4_WORDS, lanes[8], lanes[9], out)
    return out


def pcg64_lanes(seed: int, out: np.ndarray | None = None) -> np.ndarray:
    """The four-lane state of `PCG64(seed)` before its first draw, as `_pcg64_fill` steps
    it: `[10]` uint64, lane j's (low, high) state at 2j, 2j + 1 (the state of draw j), and
    the four-step increment's low and high words at 8, 9. numpy's seeding, redone:
    SeedSequence's four words, the state stepped as `pcg64_set_seed` does."""
    words = [int(w) for w in np.random.SeedSequence(seed).generate_state(4, np.uint64)]
    inc = ((((words[2] << 64) | words[3]) << 1) | 1) & _U128
    state = (inc + ((words[0] << 64) | words[1])) & _U128  # one step from 0, plus the seed
    state = (state * _PCG_MULT + inc) & _U128  # the state before the first draw's step
    lanes = []
    for _ in range(4):
        state = (state * _PCG_MULT + inc) & _U128
        lanes += [state & _U64, state >> 64]
    c4 = (inc * _PCG_SUM4) & _U128
    if out is None:
        out = np.empty(10, np.uint64)
    out[:] = [*lanes, c4 & _U64, c4 >> 64]
    return out
