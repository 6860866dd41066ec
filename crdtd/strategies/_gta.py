"""Generalised task arithmetic engine shared by task_arithmetic and the TIES/DARE family.

Per-model masks are decided once over whole task vectors (magnitude order statistics need the
whole tensor, streamed block by block from a `TensorBlocks`); the combination then streams
over cache-sized chunks of the flattened tensor, recomputing τ = θ_i − θ_base there, so no
`[k, n]` temporary is ever materialised. Chunks lie on one grid of the *whole* flattened
tensor, so a block of it (`TensorMerge.offset`) is processed exactly as inside the whole.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from crdtd.strategies._select import bracket, kth_value, sample_stride
from crdtd.strategies.base import BLOCK_ALIGN, TensorBlocks, TensorMerge

CHUNK = BLOCK_ALIGN


@dataclass(frozen=True)
class Keep:
    """What survives of one task vector, and how it is scaled.

    `mask` (bool, flat) keeps its True entries; `threshold` keeps entries with |τ| > threshold
    plus those with |τ| = threshold at flat positions ≥ `tie_from` (ties keep the later
    positions); neither keeps all. `scale` is a scalar or a flat per-entry factor applied to the kept entries. A flat
    `mask` or `scale` starts at flat position `origin` of the whole tensor (a block's start).
    """

    mask: torch.Tensor | None = None
    scale: torch.Tensor | float = 1.0
    threshold: float | None = None
    tie_from: int | None = None
    origin: int = 0


KEEP_ALL = Keep()

Sparsifier = Callable[[TensorMerge, torch.Tensor, int], Keep]


def chunks(n: int, offset: int = 0) -> Iterator[tuple[int, int]]:
    """(start, stop) of the pieces of the global `CHUNK` grid covering range(offset, offset+n)."""
    c0, end = offset, offset + n
    while c0 < end:
        c1 = min(end, (c0 // CHUNK + 1) * CHUNK)
        yield c0, c1
        c0 = c1


def task_vector_chunk(
    tm: TensorMerge, base: torch.Tensor, c0: int, c1: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """τ[:, c0:c1] = θ_i − θ_base over the flattened tensor, as a `[k, c1−c0]` tensor: a fresh
    one, or the leading columns of the reused scratch `out` (`[k, ≥ c1−c0]`)."""
    x = tm.inputs.reshape(tm.k, -1)[:, c0:c1]
    b = base.reshape(-1)[c0:c1]
    if out is None:
        return x - b
    return torch.sub(x, b, out=out[:, : c1 - c0])


_THREAD = threading.local()


def scratch_for(k: int, n: int, device: torch.device) -> torch.Tensor:
    """A `[k, min(n, CHUNK)]` float32 scratch for `task_vector_chunk`, reused across chunks.

    On the CPU it is a view of one buffer per thread, kept between calls: a block merge
    would otherwise take fresh pages for it every time. A caller uses it only until it
    returns and never hands it out.
    """
    cols = min(n, CHUNK)
    if device.type != "cpu":
        return torch.empty(k, cols, dtype=torch.float32, device=device)
    buf: torch.Tensor | None = getattr(_THREAD, "scratch", None)
    if buf is None or buf.numel() < k * cols:
        buf = _THREAD.scratch = torch.empty(max(k, 4) * CHUNK, dtype=torch.float32)
    return buf[: k * cols].view(k, cols)


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


def top_magnitude_keeps(blocks: TensorBlocks, counts: list[int]) -> list[Keep]:
    """Keep(threshold) per model retaining its `counts[i]` largest |τ_i| (ties: later positions).

    Exact order statistics in one streamed pass over the blocks (`TensorBlocks.map`, so the
    engine scans blocks side by side): a strided sample brackets each threshold, the pass
    counts the entries below the bracket and gathers those inside it, and an order statistic
    (`kth_value`) of that small set gives the exact value. Ties at the threshold are
    counted per chunk in the gathered values and the one chunk holding the first kept tie is
    read again for its position; a model whose bracket missed takes one more pass.
    """
    n = blocks.numel
    keeps: list[Keep] = [KEEP_ALL] * blocks.k
    active = []
    for i, c in enumerate(counts):
        if c <= 0:
            keeps[i] = Keep(torch.zeros(n, dtype=torch.bool, device=blocks.device))
        elif c < n:
            active.append(i)
    if not active:
        return keeps
    stride = sample_stride(n)
    sample_x, sample_b = blocks.sample(stride)
    assert sample_b is not None
    sample = (sample_x - sample_b).abs_()
    bounds = {i: bracket(sample[i], n - counts[i], n) for i in active}
    scan = _scan_numpy if blocks.device.type == "cpu" else _scan_torch

    def scan_block(block: TensorMerge) -> tuple[list[int], list[int], list[list[torch.Tensor]]]:
        """Chunk starts, and per active model: entries below its bracket, those inside it."""
        base = block.base
        assert base is not None
        off = block.offset
        scratch = scratch_for(block.k, base.numel(), base.device)
        starts: list[int] = []
        below = [0] * len(active)
        inside: list[list[torch.Tensor]] = [[] for _ in active]
        for c0, c1 in chunks(base.numel(), off):
            starts.append(c0)
            a = task_vector_chunk(block, base, c0 - off, c1 - off, scratch).abs_()
            for j, i in enumerate(active):
                count_below, values = scan(a[i], *bounds[i])
                below[j] += count_below
                inside[j].append(values)
        return starts, below, inside

    parts = blocks.map(scan_block)
    starts = [c0 for p in parts for c0 in p[0]]
    below = {i: sum(p[1][j] for p in parts) for j, i in enumerate(active)}
    values = {i: [v for p in parts for v in p[2][j]] for j, i in enumerate(active)}
    del parts
    missed = [i for i in active if not below[i] < n - counts[i] <= below[i] + _total(values[i])]
    if missed:  # the sample missed: use every entry of those models
        full = _magnitudes(blocks, missed)
        sizes = [b - a for a, b in zip(starts, [*starts[1:], n])]
        for i in missed:
            values[i] = list(full[i].split(sizes))
            below[i] = 0
    for i in active:
        m = n - counts[i]
        cand = torch.cat(values[i])
        v = kth_value(cand, m - below[i])
        n_le = below[i] + int(torch.count_nonzero(cand <= v))
        del cand
        tied_kept = counts[i] - (n - n_le)
        tie_from = None
        if tied_kept > 0 and v != 0.0:  # tied zeros add nothing when kept
            tie_from = _tie_position(blocks, i, values[i], starts, v, tied_kept)
        values[i] = []
        keeps[i] = Keep(threshold=v, tie_from=tie_from)
    return keeps


def _tie_position(
    blocks: TensorBlocks,
    i: int,
    values: list[torch.Tensor],
    starts: list[int],
    v: float,
    keep: int,
) -> int:
    """Flat position of the first of the last `keep` entries with |τ_i| = v.

    `values[c]` holds, in order, the gathered candidates of the chunk starting at `starts[c]`;
    only the chunk holding that entry is read again, to find its position.
    """
    here = [int(torch.count_nonzero(part == v)) for part in values]
    need = sum(here) - keep + 1
    c = 0
    while need > here[c]:
        need -= here[c]
        c += 1
    c0 = starts[c]
    c1 = min(blocks.numel, (c0 // CHUNK + 1) * CHUNK)
    chunk = blocks.load(c0, c1)  # that chunk alone, not its whole block
    assert chunk.base is not None
    a = (chunk.inputs[i] - chunk.base).abs_()
    return c0 + int(torch.nonzero(a == v).flatten()[need - 1])


def _total(parts: list[torch.Tensor]) -> int:
    return sum(int(p.numel()) for p in parts)


def _magnitudes(blocks: TensorBlocks, models: list[int]) -> dict[int, torch.Tensor]:
    """|τ_i| over the whole flattened tensor for each model in `models` (one streamed pass)."""
    parts: dict[int, list[torch.Tensor]] = {i: [] for i in models}
    for block in blocks.blocks():
        assert block.base is not None
        for i in models:
            parts[i].append((block.inputs[i] - block.base).abs_())
    return {i: torch.cat(parts[i]) for i in models}


def _scan_torch(a: torch.Tensor, lo: float | None, hi: float | None) -> tuple[int, torch.Tensor]:
    """(#entries < lo, the entries in [lo, hi] in order) of a 1-D chunk."""
    sel = torch.ones_like(a, dtype=torch.bool) if lo is None else a >= lo
    count_below = a.numel() - int(torch.count_nonzero(sel))
    if hi is not None:
        sel &= a <= hi
    return count_below, a[sel]


def _scan_numpy(a: torch.Tensor, lo: float | None, hi: float | None) -> tuple[int, torch.Tensor]:
    """`_scan_torch` for CPU tensors through numpy, whose boolean kernels are much faster."""
    x = a.numpy()
    if lo is None and hi is None:
        return 0, torch.from_numpy(x.copy())
    if lo is None:
        return 0, torch.from_numpy(x[x <= np.float32(hi)])
    sel = x >= np.float32(lo)
    count_below = x.size - int(np.count_nonzero(sel))
    if hi is not None:
        np.logical_and(sel, x <= np.float32(hi), out=sel)
    return count_below, torch.from_numpy(x[sel])


def l1_rescaled(blocks: TensorBlocks, keeps: list[Keep]) -> list[Keep]:
    """`keeps` with scalar scales restoring each task vector's L1 norm after pruning."""
    before = torch.zeros(blocks.k, dtype=torch.float64)
    after = torch.zeros(blocks.k, dtype=torch.float64)
    scratch = scratch_for(blocks.k, blocks.numel, blocks.device)
    for block in blocks.blocks():
        base = block.base
        assert base is not None
        off = block.offset
        for c0, c1 in chunks(base.numel(), off):
            a = task_vector_chunk(block, base, c0 - off, c1 - off, scratch).abs_()
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
            out.append(Keep(keep.mask, l1_before / l1_after, keep.threshold, keep.tie_from))
    return out


def apply_keep(t: torch.Tensor, keep: Keep, c0: int, c1: int) -> None:
    """Mask and scale in place one model's chunk `t`, entries [c0, c1) of the whole tensor."""
    if keep.threshold is not None:  # zero |τ| ≤ threshold; from `tie_from` on, only < threshold
        cut = t.numel() if keep.tie_from is None else min(t.numel(), max(0, keep.tie_from - c0))
        if cut > 0:
            torch.hardshrink(t[:cut], keep.threshold, out=t[:cut])
        if cut < t.numel():  # |τ| < v ⇔ |τ| ≤ the float32 just below v
            below = float(np.nextafter(np.float32(keep.threshold), np.float32(0.0)))
            torch.hardshrink(t[cut:], below, out=t[cut:])
    r0, r1 = c0 - keep.origin, c1 - keep.origin
    if keep.mask is not None:
        t.mul_(keep.mask[r0:r1])
    if isinstance(keep.scale, torch.Tensor):
        t.mul_(keep.scale[r0:r1])
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

    Without consensus, `normalize` divides by Σ w_i (skipped when that is ~0). `tm` may be a
    block: `keeps` index the whole tensor, the block starts at `tm.offset`.
    """
    n = base.numel()
    off = tm.offset
    flat_base = base.reshape(-1)
    out = tm.out.reshape(-1) if tm.out is not None else torch.empty_like(flat_base)
    w32 = weights.to(torch.float32).to(base.device)
    unit = bool((weights == 1.0).all())
    total = float(weights.sum())
    divide = normalize and not consensus and abs(total) >= 1e-8
    scratch = scratch_for(tm.k, n, base.device)
    for c0, c1 in chunks(n, off):
        t = task_vector_chunk(tm, base, c0 - off, c1 - off, scratch)
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
        torch.add(flat_base[c0 - off : c1 - off], mixed, alpha=lam, out=out[c0 - off : c1 - off])
    return out.reshape(base.shape)
