"""Strategy kernel speed: TIES by order statistics vs TIES by full sort, and vs linear.

Prints per-kernel wall times on synthetic float32 task vectors of one tensor shape, the
sort-based baseline measured in the same run, and the ratios:
  selection_speedup_vs_sort: time(sort-based top-k mask) / time(crdtd top-k mask)
  ties_vs_linear_kernel:     time(ties) / time(linear) on the same inputs
Usage: python benchmarks/bench_strategies.py [--rows 11008 --cols 4096 --models 3 --threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from crdtd.strategies import TensorMerge, get
from crdtd.strategies._select import keep_count, top_mask


def best_of(fn: Callable[[], object], repeats: int = 5) -> float:
    """Minimum wall time of `repeats` calls (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def sort_top_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """The popular tools' selection: argsort |τ| descending and keep the first k."""
    mask = torch.zeros_like(a, dtype=torch.bool)
    mask[torch.argsort(a, descending=True)[:k]] = True
    return mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=11008)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (args.rows, args.cols)
    base = torch.randn(shape, generator=g).to(dev)
    inputs = (base + 0.01 * torch.randn((args.models, *shape), generator=g).to(dev)).contiguous()
    n = base.numel()
    print(
        f"tensor {shape} x {args.models} models, {n * args.models / 1e6:.1f} M values, device {dev}"
    )

    def run(name: str, params: Mapping[str, Any]) -> Callable[[], object]:
        s = get(name)
        p, mp = s.validate(params, [{}] * args.models)

        def go() -> object:
            tm = TensorMerge("w", inputs, base, p, mp, torch.Generator().manual_seed(1))
            out = s.fn(tm)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out

        return go

    a = (inputs[0] - base).reshape(-1).abs()
    k = keep_count(args.density, n)
    ours = best_of(lambda: top_mask(a, k), args.repeats)
    naive = best_of(lambda: sort_top_mask(a, k), args.repeats)
    mine, theirs = top_mask(a, k), sort_top_mask(a, k)
    assert int(mine.sum()) == int(theirs.sum()) == k  # same set up to ties at the threshold
    assert float(a[mine].min()) == float(a[theirs].min())
    print(f"top-k mask, order statistics: {ours:.3f} s")
    print(f"top-k mask, full argsort:     {naive:.3f} s")
    times = {}
    for name, params in (
        ("linear", {}),
        ("task_arithmetic", {}),
        ("ties", {"density": args.density}),
        ("dare_ties", {"density": args.density}),
        ("breadcrumbs", {"density": 0.9, "gamma": 0.01}),
        ("della", {"density": 0.5, "epsilon": 0.1}),
        ("sce", {"select_topk": args.density}),
    ):
        times[name] = best_of(run(name, params), args.repeats)
        print(
            f"{name:>16}: {times[name]:.3f} s  ({n * args.models * 4 / times[name] / 1e9:.2f} GB/s)"
        )
    print(f"selection_speedup_vs_sort: {naive / ours:.2f}")
    print(f"ties_vs_linear_kernel: {times['ties'] / times['linear']:.2f}")


if __name__ == "__main__":
    main()
