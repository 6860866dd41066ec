"""Generalised task arithmetic engine shared by task_arithmetic and the TIES/DARE family.

Per-model masks are decided once over whole task vectors (magnitude order statistics need the
whole tensor); the combination then streams over cache-sized chunks of the flattened tensor,
recomputing τ = θ_i − θ_base there, so no `[k, n]` temporary is ever materialised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from crdtd.strategies._select import bracket, sample_stride
from crdtd.strategies.base import TensorMerge

CHUNK = 1 << 18


@dataclass(frozen=True)
class Keep:
    """What survives of one task vector, and how it is scaled.

    `mask` (bool, flat) keeps its True entries; `threshold` keeps entries with |τ| > threshold
    plus the sorted flat positions in `extra` (entries tied at the threshold); neither keeps
    all. `scale` is a scalar or a flat per-entry factor applied to the kept entries.
    """

    mask: torch.Tensor | None = None
    scale: torch.Tensor | float = 1.0
    threshold: float | None = None
    extra: torch.Tensor | None = None


KEEP_ALL = Keep()

Sparsifier = Callable[[TensorMerge, torch.Tensor, int], Keep]


def chunks(n: int) -> Iterator[tuple[int, int]]:
    """(start, stop) bounds of the fixed-size chunks covering range(n)."""
    for c0 in range(0, n, CHUNK):
        yield c0, min(n, c0 + CHUNK)


def task_vector_chunk(tm: TensorMerge, base: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """τ[:, c0:c1] = θ_i − θ_base over the flattened tensor, as a fresh `[k, c1−c0]` tensor."""
    return tm.inputs.reshape(tm.k, -1)[:, c0:c1] - base.reshape(-1)[c0:c1]


def decide_keeps(tm: TensorMerge, base: torch.Tensor, sparsify: Sparsifier | None) -> list[Keep]:
    """Run `sparsify` on each whole task vector (given as a scratch flat float32 tensor)."""
    if sparsify is None:
        return [KEEP_ALL] * tm.k
    flat_base = base.reshape(-1)
    scratch = torch.empty_like(flat_base)
    keeps = []
    for i in range(tm.k):
        torch.sub(tm.inputs[i].reshape(-1), flat_base, out=scratch)
        keeps.append(sparsify(tm, scratch, i))
    return keeps


def top_magnitude_keeps(tm: TensorMerge, base: torch.Tensor, counts: list[int]) -> list[Keep]:
    """Keep(threshold) per model retaining its `counts[i]` largest |τ_i| (ties: later positions).

    Exact order statistics in two streamed passes: a strided sample brackets each threshold,
    one chunked pass counts the entries below the bracket and gathers those inside it, and
    `kthvalue` on that small set gives the exact value. Ties at the threshold are resolved
    from one more pass only when they occur.
    """
    n = base.numel()
    flat_x = tm.inputs.reshape(tm.k, -1)
    flat_b = base.reshape(-1)
    keeps: list[Keep] = [KEEP_ALL] * tm.k
    active = []
    for i, c in enumerate(counts):
        if c <= 0:
            keeps[i] = Keep(torch.zeros(n, dtype=torch.bool, device=base.device))
        elif c < n:
            active.append(i)
    if not active:
        return keeps
    stride = sample_stride(n)
    sample = (flat_x[:, ::stride] - flat_b[::stride]).abs_()
    bounds = {i: bracket(sample[i], n - counts[i], n) for i in active}
    below = dict.fromkeys(active, 0)
    values: dict[int, list[torch.Tensor]] = {i: [] for i in active}
    places: dict[int, list[torch.Tensor]] = {i: [] for i in active}
    scan = _scan_numpy if base.device.type == "cpu" else _scan_torch
    for c0, c1 in chunks(n):
        a = (flat_x[:, c0:c1] - flat_b[c0:c1]).abs_()
        for i in active:
            lo, hi = bounds[i]
            count_below, idx = scan(a[i], lo, hi)
            below[i] += count_below
            values[i].append(a[i][idx])
            places[i].append(idx + c0)
    for i in active:
        m = n - counts[i]
        cand = torch.cat(values[i])
        where = torch.cat(places[i])
        if not below[i] < m <= below[i] + cand.numel():  # the sample missed: use everything
            cand = (flat_x[i] - flat_b).abs_()
            where = torch.arange(n, device=cand.device)
            below[i] = 0
        v = torch.kthvalue(cand, m - below[i]).values
        n_le = below[i] + int(torch.count_nonzero(cand <= v))
        tied_kept = counts[i] - (n - n_le)
        extra = None
        if tied_kept > 0 and float(v) != 0.0:  # tied zeros add nothing when kept
            extra = where[cand == v][-tied_kept:].contiguous()  # positions ascend
        keeps[i] = Keep(threshold=float(v), extra=extra)
    return keeps


def _scan_torch(a: torch.Tensor, lo: float | None, hi: float | None) -> tuple[int, torch.Tensor]:
    """(#entries < lo, positions of entries in [lo, hi]) of a 1-D chunk."""
    sel = torch.ones_like(a, dtype=torch.bool) if lo is None else a >= lo
    count_below = a.numel() - int(torch.count_nonzero(sel))
    if hi is not None:
        sel &= a <= hi
    return count_below, torch.nonzero(sel).flatten()


def _scan_numpy(a: torch.Tensor, lo: float | None, hi: float | None) -> tuple[int, torch.Tensor]:
    """`_scan_torch` for CPU tensors through numpy, whose boolean kernels are much faster."""
    x = a.numpy()
    sel = np.ones(x.shape, dtype=np.bool_) if lo is None else x >= np.float32(lo)
    count_below = x.size - int(np.count_nonzero(sel))
    if hi is not None:
        np.logical_and(sel, x <= np.float32(hi), out=sel)
    return count_below, torch.from_numpy(np.flatnonzero(sel))


def l1_rescaled(tm: TensorMerge, base: torch.Tensor, keeps: list[Keep]) -> list[Keep]:
    """`keeps` with scalar scales restoring each task vector's L1 norm after pruning."""
    n = base.numel()
    before = torch.zeros(tm.k, dtype=torch.float64)
    after = torch.zeros(tm.k, dtype=torch.float64)
    for c0, c1 in chunks(n):
        a = task_vector_chunk(tm, base, c0, c1).abs_()
        before += a.sum(dim=1, dtype=torch.float64).cpu()
        for i, keep in enumerate(keeps):
            apply_keep(a[i], keep, c0, c1)
        after += a.sum(dim=1, dtype=torch.float64).cpu()
    out = []
    for i, keep in enumerate(keeps):
        l1_before, l1_after = float(before[i]), float(after[i])
        if keep is KEEP_ALL or l1_before < 1e-8 or l1_after < 1e-8:
            out.append(keep)
        else:
            out.append(Keep(keep.mask, l1_before / l1_after, keep.threshold, keep.extra))
    return out


def apply_keep(t: torch.Tensor, keep: Keep, c0: int, c1: int) -> None:
    """Mask and scale one model's chunk `t` in place."""
    if keep.threshold is not None:
        tied = None
        if keep.extra is not None:
            edges = torch.tensor([c0, c1], device=keep.extra.device)
            lo, hi = (int(x) for x in torch.searchsorted(keep.extra, edges))
            if hi > lo:
                tied = keep.extra[lo:hi] - c0
                values = t[tied]
        t.copy_(torch.nn.functional.hardshrink(t, keep.threshold))
        if tied is not None:
            t[tied] = values
    if keep.mask is not None:
        t.mul_(keep.mask[c0:c1])
    if isinstance(keep.scale, torch.Tensor):
        t.mul_(keep.scale[c0:c1])
    elif keep.scale != 1.0:
        t.mul_(keep.scale)


def rowsum(t: torch.Tensor) -> torch.Tensor:
    """Σ over dim 0 of a `[k, c]` tensor as k−1 contiguous adds (faster than sum(0) for small k)."""
    out = t[0].clone()
    for i in range(1, t.shape[0]):
        out += t[i]
    return out


def elect_and_mix(t: torch.Tensor, weights: torch.Tensor | None, normalize: bool) -> torch.Tensor:
    """TIES elect + disjoint merge of a weighted chunk `[k, c]` (modifies `t`).

    γ = sgn(Σ_i t_i) (0 counts as +); A = {i : sgn t_i = γ}; returns Σ_A t_i, divided by
    Σ_A w_i (1 where A is empty) when `normalize` (`weights` None means all ones).
    Written with float ops only: agreeing magnitudes are max(γ·t_i, 0).
    """
    gamma = torch.copysign(torch.ones_like(t[0]), rowsum(t))
    t.mul_(gamma).clamp_(min=0.0)
    mixed = rowsum(t)
    if normalize:
        t.sign_()
        if weights is not None:
            t.mul_(weights.view(-1, 1))
        divisor = rowsum(t)
        if weights is None:
            divisor.clamp_(min=1.0)  # agreeing counts: 0 (nothing to divide) becomes 1
        elif bool((weights > 0).all()):
            divisor.clamp_(min=0.5 * float(weights.min()))  # only exact zeros are moved
        else:
            divisor.masked_fill_(divisor == 0, 1.0)
        mixed /= divisor
    return mixed.mul_(gamma)


def combine(
    tm: TensorMerge,
    base: torch.Tensor,
    keeps: list[Keep],
    weights: torch.Tensor,
    *,
    consensus: bool,
    normalize: bool,
    lam: float,
) -> torch.Tensor:
    """θ = θ_base + λ · mix(w_i · keep_i(τ_i)); mix is the disjoint mean or the plain sum.

    Without consensus, `normalize` divides by Σ w_i (skipped when that is ~0).
    """
    n = base.numel()
    flat_base = base.reshape(-1)
    out = torch.empty_like(flat_base)
    w32 = weights.to(torch.float32).to(base.device)
    unit = bool((weights == 1.0).all())
    total = float(weights.sum())
    divide = normalize and not consensus and abs(total) >= 1e-8
    for c0, c1 in chunks(n):
        t = task_vector_chunk(tm, base, c0, c1)
        for i, keep in enumerate(keeps):
            if keep is not KEEP_ALL:
                apply_keep(t[i], keep, c0, c1)
        if not unit:
            t.mul_(w32.view(-1, 1))
        if consensus:
            mixed = elect_and_mix(t, None if unit else w32, normalize)
        else:
            mixed = rowsum(t)
            if divide:
                mixed /= total
        torch.add(flat_base[c0:c1], mixed, alpha=lam, out=out[c0:c1])
    return out.reshape(base.shape)
