"""The task-vector engine's numba kernels against what they replace, measured in one run.

* order statistics: `_kernels.order_stats` (a counting select) against `np.sort` and
  `searchsorted`, on bf16 task-vector magnitudes (long runs of equal values) and on
  distinct float32 values; prints `select_speedup_vs_sort` for each, and numpy's sort
  with its AVX-512 and AVX2 paths where numpy can switch (`NPY_DISABLE_CPU_FEATURES`, in a
  child process: numpy reads it at import);
* DARE's draws: `_kernels.pcg64_raw` (four lanes, numpy's words) against
  `np.random.PCG64(seed).random_raw`, per 65,536-draw chunk with its seeding, as DARE
  draws them; prints `pcg64_speedup_vs_numpy`;
* TIES's scan: one 1 Mi-entry block of bf16 bits, three models, a bracket holding about 4 %
  of each model's |τ| (bench_model_merge's TIES gathers 2.8 %), through the 16-lane scan (AVX-512F,
  int32 positions) and through the flag pass and gather it replaces on such CPUs; prints
  `scan_speedup_vs_flags`;
* DARE's combine of such a block (three models, density 0.5, rescaled): its words drawn
  ahead into a `[k, n]` row (`_gta._draw_words`) then combined, against the words drawn
  inside the combine tile by tile from each chunk's PCG64 lanes (`_gta._draw_streams`);
  prints `dare_combine_speedup_vs_words`.

  python benchmarks/bench_kernels.py [--n 4194304]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

import numpy as np
from bench_strategies import best_of  # (this script's folder is on sys.path)
from numba import njit

from crdtd.strategies import _kernels
from crdtd.strategies import _numba_kernels as nk


def sort_child(n: int) -> None:
    """Print the best time of np.sort on n normal float32 (for the parent, per CPU path)."""
    a = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    print(best_of(lambda: np.sort(a)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 22, help="values per order statistic")
    ap.add_argument("--chunks", type=int, default=64, help="65,536-draw chunks per timing")
    ap.add_argument("--sort-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sort_child:
        sort_child(args.sort_child)
        return
    if not _kernels.enabled():
        sys.exit("numba is not installed: the kernels do not run")
    _kernels.preload()
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.02, args.n).astype(np.float32)
    bf16 = ((x.view(np.uint32) >> 16) << 16).view(np.float32)
    inputs = {
        "bf16 |tau|": np.abs(bf16 - np.float32(0.001)),
        "distinct float32": rng.standard_normal(args.n).astype(np.float32),
    }
    m = args.n // 2
    for label, a in inputs.items():

        def by_sort(a: np.ndarray = a) -> tuple[float, int]:
            ordered = np.sort(a)
            return float(ordered[m - 1]), int(np.searchsorted(ordered, ordered[m - 1], "right"))

        assert _kernels.order_stats(a, [m])[0] == by_sort()
        sort = best_of(by_sort)
        select = best_of(lambda a=a: _kernels.order_stats(a, [m]))
        print(
            f"{label:17s} n={args.n}: np.sort {sort * 1e3:7.1f} ms, counting select "
            f"{select * 1e3:6.1f} ms, select_speedup_vs_sort {sort / select:.1f}"
        )
    paths = {"default": "", "AVX2 (X86_V4 off)": "AVX512_ICL AVX512_SPR X86_V4"}
    times = {}
    for label, off in paths.items():
        env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=off)
        cmd = [sys.executable, __file__, "--sort-child", str(args.n)]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode == 0:
            times[label] = float(res.stdout.strip().splitlines()[-1])
    if len(times) == 2:
        print(
            f"np.sort of {args.n} normal float32 by numpy's path: default "
            f"{times['default'] * 1e3:.1f} ms, AVX2 {times['AVX2 (X86_V4 off)'] * 1e3:.1f} ms "
            f"(default_vs_avx2 {times['default'] / times['AVX2 (X86_V4 off)']:.2f})"
        )
    seeds = range(1000, 1000 + args.chunks)
    for s in seeds:  # the same words, before timing either
        assert np.array_equal(_kernels.pcg64_raw(s, 8), np.random.PCG64(s).random_raw(8)), (
            "pcg64_raw differs from numpy's PCG64"
        )
    row = np.empty(65_536, np.uint64)  # DARE's reused word row, as `Draws.fill` has it

    def by_numpy() -> None:
        for s in seeds:
            row[:] = np.random.PCG64(s).random_raw(65_536)

    def by_kernel() -> None:
        for s in seeds:
            _kernels.pcg64_raw(s, 65_536, row)

    numpy_t, mine_t = best_of(by_numpy), best_of(by_kernel)
    per = 65_536 * args.chunks
    print(
        f"PCG64, {args.chunks} chunks of 65,536 draws into a row, with seeding: numpy "
        f"{numpy_t / per * 1e9:.2f} ns/draw, kernel {mine_t / per * 1e9:.2f} ns/draw, "
        f"pcg64_speedup_vs_numpy {numpy_t / mine_t:.2f}"
    )

    scan_timing()
    dare_timing()


def dare_timing() -> None:
    """`dare_combine_speedup_vs_words`: DARE's combine with its draws made inside the
    kernel against the draws written to a words row first, on one 1 Mi-entry bf16 block."""
    import functools

    import torch

    from crdtd.strategies import _gta
    from crdtd.strategies.base import BLOCK_ALIGN, chunk_seed

    rng = np.random.default_rng(3)
    n, k = 1 << 20, 3
    base = rng.normal(0, 0.02, n).astype(np.float32)
    x = base + rng.normal(0, 0.002, (k, n)).astype(np.float32)
    bits = [(a.view(np.uint32) >> 16).astype(np.uint16) for a in (x, base)]
    gen = torch.Generator().manual_seed(5)
    keeps = [
        _gta.Keep(draws=_gta.Draws(functools.partial(chunk_seed, gen, i), 1 << 15), scale=2.0)
        for i in range(k)
    ]
    fused = _gta._fused_keeps(keeps)
    assert fused is not None
    out = np.empty(n, np.float32)
    rule = dict(unit=True, consensus=True, normalize=True, wmode=_kernels.UNIT, wfloor=0.0)
    rule |= dict(divide=False, total=3.0, lam=1.0, out=out)

    def ahead() -> bytes:
        words = _gta._draw_words(keeps, n, 0)
        _kernels.combine_block(bits[0], bits[1], 0, fused, words, np.ones(k), **rule)
        return out.tobytes()

    def inside() -> bytes:
        streams = _gta._draw_streams(keeps, n, 0)
        _kernels.combine_block(
            bits[0],
            bits[1],
            0,
            fused,
            _gta._NO_WORDS,
            np.ones(k),
            streams=streams,
            grid=BLOCK_ALIGN,
            **rule,
        )
        return out.tobytes()

    assert ahead() == inside(), "the draws made inside the combine differ"
    words_t, inside_t = best_of(ahead), best_of(inside)
    print(
        f"DARE combine of a 1 Mi-entry bf16 block, 3 models: words drawn ahead "
        f"{words_t / (k * n) * 1e9:.2f} ns/entry, drawn inside {inside_t / (k * n) * 1e9:.2f} "
        f"ns/entry, dare_combine_speedup_vs_words {words_t / inside_t:.2f}"
    )


@njit(nogil=True)
def scan_with(
    tile: Any,
    x: np.ndarray,
    base: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    values: np.ndarray,
    where: np.ndarray,
) -> np.ndarray:
    """`_numba_kernels._scan`'s loop over tiles and models, with the tile scan given."""
    n = base.shape[0]
    a = np.empty(nk.TILE, np.float32)
    bw = np.empty(nk.TILE, np.float32)
    flags = np.empty(nk.TILE, np.uint8)
    sizes = np.zeros(x.shape[0], np.int64)
    for s in range(0, n, nk.TILE):
        c = min(nk.TILE, n - s)
        bt = nk._widen(base[s : s + c], bw)
        for j in range(x.shape[0]):
            sizes[j] = tile(
                x[j, s : s + c], bt, lo[j], hi[j], a, flags, values[j], where[j], sizes[j], s
            )[1]
    return sizes


def scan_timing() -> None:
    """`scan_speedup_vs_flags`: `_scan` with the 16-lane tile scan against the flag one."""
    if not nk.COMPRESS:
        print("TIES scan: this CPU has no AVX-512F, so only the flag scan runs here")
        return
    rng = np.random.default_rng(2)
    n = 1 << 20
    base = rng.normal(0, 0.02, n).astype(np.float32)
    x = base + rng.normal(0, 0.002, (3, n)).astype(np.float32)
    bits = [(a.view(np.uint32) >> 16).astype(np.uint16) for a in (x, base)]
    wide = [(b.astype(np.uint32) << 16).view(np.float32) for b in bits]
    tau = np.abs(wide[0] - wide[1])
    lo = np.quantile(tau, 0.485, axis=1).astype(np.float32)
    hi = np.quantile(tau, 0.515, axis=1).astype(np.float32)
    values = np.empty((3, n), np.float32)
    timed = {}
    for label, tile, kind in (
        ("flags", nk._scan_flags, np.int64),
        ("16-lane", nk._scan_packed, np.int32),
    ):
        where = np.empty((3, n), kind)
        args = (tile, bits[0], bits[1], lo, hi, values, where)
        inside = scan_with(*args)
        timed[label] = best_of(lambda args=args: scan_with(*args))
        share = inside.sum() / (3 * n)
    flags, packed = timed["flags"], timed["16-lane"]
    print(
        f"TIES scan of a 1 Mi-entry bf16 block, 3 models, {share:.1%} inside: flag pass and gather "
        f"{flags / (3 * n) * 1e9:.2f} ns/entry, 16-lane {packed / (3 * n) * 1e9:.2f} ns/entry, "
        f"scan_speedup_vs_flags {flags / packed:.2f}"
    )


if __name__ == "__main__":
    main()
