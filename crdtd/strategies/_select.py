"""Magnitude selection by order statistics: exact k-th values without sorting whole tensors.

The popular merge tools argsort every flattened task vector to keep its top-k entries; an
order statistic does the same job in linear time. `kth_smallest` brackets the k-th value
from a strided sample, counts, and selects (`kth_value`) only among the few candidates inside
the bracket (falling back to the whole tensor when the bracket misses). Ties at the
threshold are broken by position (earlier index ranks lower), so masks are exact and
deterministic.
"""

from __future__ import annotations

import math

import torch

from crdtd.strategies._kernels import order_stats

_SAMPLE = 65_536
_DIRECT = 262_144
_CHUNK = 1 << 20


def kth_value(a: torch.Tensor, m: int) -> float:
    """The m-th smallest value (1-based) of the 1-D tensor `a`.

    On the CPU from a counting select (`_kernels.order_stats`): introselect
    (`np.partition`) is about 15× slower on long runs of equal values, which task vectors
    of bf16 checkpoints are full of; elsewhere `torch.kthvalue`. An order statistic is one
    value, so both agree.
    """
    if a.device.type == "cpu":
        return order_stats(a.detach().numpy(), [m])[0][0]
    return float(torch.kthvalue(a, m).values)


def bracket(sample: torch.Tensor, m: int, n: int) -> tuple[float | None, float | None]:
    """Values (lo, hi) that, with high probability, enclose the m-th smallest of n values.

    `sample` is a strided sample of those values; None means unbounded on that side.
    """
    s = sample.numel()
    p = (m - 0.5) / n
    margin = 6.0 * math.sqrt(max(p * (1.0 - p), 1.0 / s) / s) + 2.0 / s
    ranks: dict[str, int] = {}
    if p - margin > 0:
        ranks["lo"] = max(1, math.floor((p - margin) * s))
    if p + margin < 1:
        ranks["hi"] = min(s, math.ceil((p + margin) * s))
    if sample.device.type == "cpu":
        found = order_stats(sample.detach().numpy(), list(ranks.values()))
        at = {side: v for side, (v, _) in zip(ranks, found)}
    else:
        at = {side: kth_value(sample, r) for side, r in ranks.items()}
    lo, hi = at.get("lo"), at.get("hi")
    return lo, hi


def sample_stride(n: int) -> int:
    """Stride of the deterministic sample `x[::stride]` used to bracket order statistics."""
    return max(1, n // _SAMPLE)


def kth_smallest(a: torch.Tensor, m: int) -> torch.Tensor:
    """The m-th smallest value (1-based) of the 1-D tensor `a`, as a 0-d tensor."""
    n = a.numel()
    if not 1 <= m <= n:
        raise ValueError(f"order statistic {m} out of range for {n} elements")
    if n <= _DIRECT:
        return torch.kthvalue(a, m).values
    lo, hi = bracket(a[:: sample_stride(n)], m, n)
    inside = torch.ones_like(a, dtype=torch.bool) if lo is None else a >= lo
    below = n - int(torch.count_nonzero(inside))
    if hi is not None:
        inside &= a <= hi
    candidates = a[inside]
    if below < m <= below + candidates.numel() and candidates.numel() <= n // 4:
        return torch.kthvalue(candidates, m - below).values
    return torch.kthvalue(a, m).values


def _first_true_position(mask: torch.Tensor, count: int) -> int:
    """Index of the `count`-th True (1-based) in a 1-D bool tensor, scanning in chunks."""
    seen = 0
    for start in range(0, mask.numel(), _CHUNK):
        chunk = mask[start : start + _CHUNK]
        c = int(torch.count_nonzero(chunk))
        if seen + c >= count:
            idx = torch.nonzero(chunk).flatten()
            return start + int(idx[count - seen - 1])
        seen += c
    raise ValueError("mask holds fewer True entries than requested")


def bottom_mask(a: torch.Tensor, m: int) -> torch.Tensor:
    """Bool mask of the m entries of 1-D `a` with the lowest (value, position) rank."""
    n = a.numel()
    if m <= 0:
        return torch.zeros_like(a, dtype=torch.bool)
    if m >= n:
        return torch.ones_like(a, dtype=torch.bool)
    v = kth_smallest(a, m)
    mask = a <= v
    extra = int(torch.count_nonzero(mask)) - m
    if extra == 0:
        return mask
    eq = a == v
    need = int(torch.count_nonzero(eq)) - extra
    cut = _first_true_position(eq, need)
    mask[cut + 1 :] &= ~eq[cut + 1 :]
    return mask


def top_mask(a: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k entries of 1-D `a` with the highest (value, position) rank."""
    n = a.numel()
    return ~bottom_mask(a, n - max(0, min(k, n)))


def band_mask(a: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Bool mask of entries of 1-D `a` whose ascending (value, position) rank is in [lo, hi)."""
    if hi <= lo:
        return torch.zeros_like(a, dtype=torch.bool)
    return bottom_mask(a, hi) & ~bottom_mask(a, lo)


def keep_count(density: float, n: int) -> int:
    """How many of n entries a `density` keeps: ⌊density·n⌋, at least 1 when density > 0."""
    if density <= 0 or n == 0:
        return 0
    if density >= 1:
        return n
    return max(1, min(n, math.floor(density * n + 1e-9)))
